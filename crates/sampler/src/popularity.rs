//! Popularity-weighted sampling, `count^alpha`, with a Vose alias table.

use std::sync::OnceLock;

use rand::Rng;

use crate::rng::unit_f64;
use crate::uniform::check_catalogue_size;
use crate::{DEFAULT_MAX_RETRIES, NegativeSampler, Positives, SamplerError};

/// Default popularity exponent: 0.75, as word2vec's negative sampling.
pub const DEFAULT_ALPHA: f64 = 0.75;

/// Draws item `i` with probability `count_i^alpha / sum_j count_j^alpha`, in O(1) per draw.
///
/// `alpha = 1` draws like picking a random training row's item, `alpha = 0` is uniform over the
/// whole catalogue (`0^0 = 1`, so items never seen are drawn too), and `0.75` is word2vec's
/// choice. With `alpha > 0` an item with count 0 is never drawn.
///
/// A draw takes one `u64` from the RNG: its product with `num_items` gives a column of the alias
/// table (integer part) and a coin (the top 32 bits of the fractional part) choosing between the
/// column's item and its alias. The table realises each probability to within `2^-32 / num_items`
/// per column; [`probability`](NegativeSampler::probability) returns the exact normalised weight.
///
/// Memory: 8 bytes per item for the table and 8 for the weights; the first draw that falls back
/// to the complement of a user's positives builds 8 more bytes per item of cumulative weights.
///
/// ```
/// use dssm_sampler::{NegativeSampler, PopularitySampler, SamplerRng};
/// use rand::SeedableRng;
///
/// let counts = [10u32, 0, 5, 1];
/// let sampler = PopularitySampler::builder().alpha(1.0).build(&counts).unwrap();
/// assert_eq!(sampler.probability(0), 10.0 / 16.0);
/// assert_eq!(sampler.probability(1), 0.0);
/// let mut rng = SamplerRng::seed_from_u64(0);
/// assert_ne!(sampler.sample(&mut rng), 1);
/// ```
#[derive(Debug)]
pub struct PopularitySampler {
    alpha: f64,
    max_retries: u32,
    /// `count^alpha` per item.
    weights: Vec<f64>,
    total_weight: f64,
    /// Per column: coin threshold in the high 32 bits, alias item in the low 32 bits.
    table: Vec<u64>,
    /// `cumulative[i]` = sum of `weights[..i]`; built on the first complement draw.
    cumulative: OnceLock<Vec<f64>>,
}

/// Settings of a [`PopularitySampler`].
#[derive(Clone, Debug)]
pub struct PopularitySamplerBuilder {
    alpha: f64,
    max_retries: u32,
}

impl PopularitySampler {
    /// A builder with the defaults: `alpha` [`DEFAULT_ALPHA`] (0.75), `max_retries`
    /// [`DEFAULT_MAX_RETRIES`] (32).
    pub fn builder() -> PopularitySamplerBuilder {
        PopularitySamplerBuilder {
            alpha: DEFAULT_ALPHA,
            max_retries: DEFAULT_MAX_RETRIES,
        }
    }

    /// The popularity exponent.
    pub fn alpha(&self) -> f64 {
        self.alpha
    }

    /// The unnormalised weight `count^alpha` of `item` (0 outside the catalogue).
    pub fn weight(&self, item: u32) -> f64 {
        self.weights.get(item as usize).copied().unwrap_or(0.0)
    }

    fn cumulative(&self) -> &[f64] {
        self.cumulative.get_or_init(|| {
            let mut cumulative = Vec::with_capacity(self.weights.len() + 1);
            let mut sum = 0.0;
            cumulative.push(sum);
            for &weight in &self.weights {
                sum += weight;
                cumulative.push(sum);
            }
            cumulative
        })
    }
}

impl PopularitySamplerBuilder {
    /// The exponent applied to the counts (default [`DEFAULT_ALPHA`], 0.75); finite and `>= 0`.
    pub fn alpha(mut self, alpha: f64) -> Self {
        self.alpha = alpha;
        self
    }

    /// Rejected draws tried before drawing from the complement of the positives
    /// (default [`DEFAULT_MAX_RETRIES`], 32). The output distribution does not depend on it.
    pub fn max_retries(mut self, max_retries: u32) -> Self {
        self.max_retries = max_retries;
        self
    }

    /// Builds the sampler from per-item counts (item `i` has `counts[i]`); any type that converts
    /// to `f64` losslessly (`u32`, `u16`, `f32`, `f64`, ...).
    ///
    /// Errors: [`SamplerError::EmptyCatalogue`], [`SamplerError::InvalidAlpha`],
    /// [`SamplerError::InvalidWeight`] (negative, NaN or infinite count),
    /// [`SamplerError::ZeroTotalWeight`], [`SamplerError::TotalWeightNotFinite`].
    pub fn build<C: Copy + Into<f64>>(
        self,
        counts: &[C],
    ) -> Result<PopularitySampler, SamplerError> {
        let alpha = self.alpha;
        if !(alpha.is_finite() && alpha >= 0.0) {
            return Err(SamplerError::InvalidAlpha { alpha });
        }
        check_catalogue_size(counts.len())?;
        let mut weights = Vec::with_capacity(counts.len());
        for (item, &count) in counts.iter().enumerate() {
            let count: f64 = count.into();
            if !(count.is_finite() && count >= 0.0) {
                return Err(SamplerError::InvalidWeight {
                    item: item as u32,
                    weight: count,
                });
            }
            let weight = if alpha == 1.0 {
                count
            } else {
                count.powf(alpha)
            };
            weights.push(weight);
        }
        let total_weight: f64 = weights.iter().sum();
        if !total_weight.is_finite() {
            return Err(SamplerError::TotalWeightNotFinite {
                num_items: counts.len(),
                alpha,
            });
        }
        if total_weight == 0.0 {
            return Err(SamplerError::ZeroTotalWeight {
                num_items: counts.len(),
            });
        }
        let table = build_alias_table(&weights, total_weight);
        Ok(PopularitySampler {
            alpha,
            max_retries: self.max_retries,
            weights,
            total_weight,
            table,
            cumulative: OnceLock::new(),
        })
    }
}

/// Vose's alias method: `n` columns of height `1 / n`, each split between its own item (with
/// probability `threshold`) and one alias item.
fn build_alias_table(weights: &[f64], total_weight: f64) -> Vec<u64> {
    let n = weights.len();
    let scale = n as f64 / total_weight;
    let mut scaled: Vec<f64> = weights.iter().map(|&w| w * scale).collect();
    let mut small = Vec::new();
    let mut large = Vec::new();
    for (item, &s) in scaled.iter().enumerate() {
        if s < 1.0 {
            small.push(item as u32);
        } else {
            large.push(item as u32);
        }
    }
    // Full column (threshold 1): the alias is the item itself, so the coin does not matter.
    let mut table: Vec<u64> = (0..n as u64)
        .map(|item| pack(u32::MAX, item as u32))
        .collect();
    while let (Some(&less), Some(&more)) = (small.last(), large.last()) {
        small.pop();
        let threshold = (scaled[less as usize] * 4_294_967_296.0).round();
        table[less as usize] = if threshold >= 4_294_967_296.0 {
            pack(u32::MAX, less)
        } else {
            pack(threshold as u32, more)
        };
        scaled[more as usize] -= 1.0 - scaled[less as usize];
        if scaled[more as usize] < 1.0 {
            large.pop();
            small.push(more);
        }
    }
    // Left-overs are columns of height 1 up to rounding. An item of weight 0 can only be left
    // over through rounding: give its column to the heaviest item so it is never drawn.
    let heaviest = weights
        .iter()
        .enumerate()
        .fold(0, |best, (i, &w)| if w > weights[best] { i } else { best })
        as u32;
    for item in small.into_iter().chain(large) {
        table[item as usize] = if weights[item as usize] > 0.0 {
            pack(u32::MAX, item)
        } else {
            pack(0, heaviest)
        };
    }
    table
}

fn pack(threshold: u32, alias: u32) -> u64 {
    (u64::from(threshold) << 32) | u64::from(alias)
}

impl NegativeSampler for PopularitySampler {
    fn num_items(&self) -> usize {
        self.weights.len()
    }

    #[inline]
    fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> u32 {
        let product = u128::from(rng.next_u64()) * self.table.len() as u128;
        let column = (product >> 64) as usize;
        let coin = (product as u64) >> 32;
        // `column < table.len()` because the random u64 is below 2^64.
        let entry = self.table.get(column).copied().unwrap_or(0);
        if coin < entry >> 32 {
            column as u32
        } else {
            entry as u32
        }
    }

    fn probability(&self, item: u32) -> f64 {
        self.weight(item) / self.total_weight
    }

    fn max_retries(&self) -> u32 {
        self.max_retries
    }

    /// Exact, `O(k + log n)` for `k` positives: picks a gap between consecutive positives by its
    /// weight, then an item in the gap by binary search over cumulative weights.
    fn sample_from_complement<R: Rng + ?Sized>(
        &self,
        user: u32,
        positives: Positives<'_>,
        rng: &mut R,
    ) -> Result<u32, SamplerError> {
        let n = self.weights.len();
        let cumulative = self.cumulative();
        let items = positives.items();
        let items = &items[..items.partition_point(|&item| (item as usize) < n)];
        // Gaps [start, end) between the positives.
        let gaps = || {
            let ends = items.iter().map(|&item| item as usize).chain([n]);
            let starts = [0]
                .into_iter()
                .chain(items.iter().map(|&item| item as usize + 1));
            starts.zip(ends).filter(|(start, end)| end > start)
        };
        let gap_mass = |(start, end): (usize, usize)| cumulative[end] - cumulative[start];
        let complement_mass: f64 = gaps().map(gap_mass).sum();
        let impossible = || SamplerError::ExclusionImpossible {
            user,
            num_positives: positives.len(),
            num_items: n,
        };
        if complement_mass <= 0.0 {
            return Err(impossible());
        }
        let target = unit_f64(rng) * complement_mass;
        let mut before = 0.0;
        let mut chosen = None;
        for gap in gaps() {
            let mass = gap_mass(gap);
            if mass > 0.0 {
                chosen = Some((gap, target - before));
                if target < before + mass {
                    break;
                }
                before += mass;
            }
        }
        let ((start, end), offset) = chosen.ok_or_else(impossible)?;
        let point = cumulative[start] + offset.max(0.0);
        // First item i in the gap with cumulative[i + 1] > point; it has weight > 0.
        let index = start + cumulative[start + 1..=end].partition_point(|&c| c <= point);
        if index < end {
            return Ok(index as u32);
        }
        // Rounding put the point at the gap's end: take the gap's last item of positive weight.
        (start..end)
            .rev()
            .find(|&item| self.weights[item] > 0.0)
            .map(|item| item as u32)
            .ok_or_else(impossible)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SamplerRng;
    use crate::test_support::{CRITICAL_P001, chi_square, zipf_counts};
    use rand::SeedableRng;

    #[test]
    fn rejects_bad_input() {
        let build = |alpha: f64, counts: &[f64]| {
            PopularitySampler::builder()
                .alpha(alpha)
                .build(counts)
                .unwrap_err()
        };
        assert_eq!(build(1.0, &[]), SamplerError::EmptyCatalogue);
        assert_eq!(
            build(1.0, &[0.0, 0.0]),
            SamplerError::ZeroTotalWeight { num_items: 2 }
        );
        assert_eq!(
            build(1.0, &[1.0, -2.0]),
            SamplerError::InvalidWeight {
                item: 1,
                weight: -2.0
            }
        );
        assert!(matches!(
            build(1.0, &[f64::NAN]),
            SamplerError::InvalidWeight { item: 0, .. }
        ));
        assert!(matches!(
            build(f64::NAN, &[1.0]),
            SamplerError::InvalidAlpha { .. }
        ));
        assert_eq!(
            build(-0.5, &[1.0]),
            SamplerError::InvalidAlpha { alpha: -0.5 }
        );
        assert!(matches!(
            build(2.0, &[1e200, 1.0]),
            SamplerError::TotalWeightNotFinite { .. }
        ));
    }

    /// Draws `draws` items and returns the chi-square statistic against `probability`, after
    /// checking that items of probability 0 were never drawn.
    fn chi_square_of_draws(sampler: &PopularitySampler, draws: usize, seed: u64) -> (f64, usize) {
        let n = sampler.num_items();
        let mut rng = SamplerRng::seed_from_u64(seed);
        let mut counts = vec![0u64; n];
        for _ in 0..draws {
            counts[sampler.sample(&mut rng) as usize] += 1;
        }
        let expected: Vec<f64> = (0..n as u32).map(|i| sampler.probability(i)).collect();
        let cells = expected.iter().filter(|&&p| p > 0.0).count();
        (chi_square(&counts, &expected), cells)
    }

    #[test]
    fn frequencies_pass_chi_square_for_each_alpha() {
        // 60 items with Zipf-like counts, the last one 0; 300,000 draws. Significance p = 0.001:
        // the critical value for `cells - 1` degrees of freedom comes from `CRITICAL_P001`
        // (59 df: 98.324 when the zero-count item is drawable, i.e. alpha = 0; 58 df otherwise).
        let mut counts = zipf_counts(60, 1.0, 20_000);
        counts[59] = 0;
        for alpha in [0.0, 0.75, 1.0] {
            let sampler = PopularitySampler::builder()
                .alpha(alpha)
                .build(&counts)
                .unwrap();
            let (statistic, cells) = chi_square_of_draws(&sampler, 300_000, 5);
            assert_eq!(cells, if alpha == 0.0 { 60 } else { 59 });
            let critical = CRITICAL_P001[cells - 1];
            assert!(
                statistic < critical,
                "alpha {alpha}: chi-square {statistic} >= {critical}"
            );
        }
    }

    #[test]
    fn chi_square_detects_a_wrong_distribution() {
        // The test must be able to fail: draws with alpha 1 judged against alpha 0.75.
        let counts = zipf_counts(60, 1.0, 20_000);
        let drawn = PopularitySampler::builder()
            .alpha(1.0)
            .build(&counts)
            .unwrap();
        let judged = PopularitySampler::builder()
            .alpha(0.75)
            .build(&counts)
            .unwrap();
        let mut rng = SamplerRng::seed_from_u64(5);
        let mut observed = vec![0u64; 60];
        for _ in 0..300_000 {
            observed[drawn.sample(&mut rng) as usize] += 1;
        }
        let expected: Vec<f64> = (0..60).map(|i| judged.probability(i)).collect();
        assert!(chi_square(&observed, &expected) > CRITICAL_P001[59]);
    }

    #[test]
    fn probabilities_sum_to_one() {
        for alpha in [0.0, 0.75, 1.0] {
            let counts = zipf_counts(3706, 1.0, 100_000);
            let sampler = PopularitySampler::builder()
                .alpha(alpha)
                .build(&counts)
                .unwrap();
            let total: f64 = (0..3706).map(|i| sampler.probability(i)).sum();
            assert!((total - 1.0).abs() < 1e-12, "alpha {alpha}: {total}");
            assert_eq!(sampler.probability(3706), 0.0);
        }
    }

    #[test]
    fn zero_count_items_are_never_drawn() {
        let mut counts = vec![0u32; 1000];
        counts[17] = 3;
        counts[900] = 1;
        let sampler = PopularitySampler::builder().build(&counts).unwrap();
        let mut rng = SamplerRng::seed_from_u64(9);
        for _ in 0..100_000 {
            let item = sampler.sample(&mut rng);
            assert!(item == 17 || item == 900, "drew {item}");
        }
    }

    #[test]
    fn complement_draw_follows_the_conditional_distribution() {
        // max_retries 0 sends every excluded draw to the complement path.
        let counts = zipf_counts(40, 1.0, 10_000);
        let sampler = PopularitySampler::builder()
            .alpha(1.0)
            .max_retries(0)
            .build(&counts)
            .unwrap();
        let positive_items: Vec<u32> = vec![0, 1, 2, 5, 6, 20, 39];
        let positives = Positives::new(&positive_items).unwrap();
        let complement_mass: f64 = (0..40u32)
            .filter(|&i| !positives.contains(i))
            .map(|i| sampler.probability(i))
            .sum();
        let mut rng = SamplerRng::seed_from_u64(21);
        let mut observed = vec![0u64; 40];
        for _ in 0..200_000 {
            let item = sampler.sample_excluding(0, positives, &mut rng).unwrap();
            observed[item as usize] += 1;
        }
        let expected: Vec<f64> = (0..40u32)
            .map(|i| {
                if positives.contains(i) {
                    0.0
                } else {
                    sampler.probability(i) / complement_mass
                }
            })
            .collect();
        for &item in &positive_items {
            assert_eq!(observed[item as usize], 0);
        }
        // 33 cells, 32 degrees of freedom, p = 0.001.
        let statistic = chi_square(&observed, &expected);
        assert!(statistic < CRITICAL_P001[32], "chi-square {statistic}");
    }

    #[test]
    fn exclusion_of_all_the_mass_is_an_error() {
        let sampler = PopularitySampler::builder()
            .alpha(1.0)
            .build(&[0u32, 4, 0, 2])
            .unwrap();
        let positives = Positives::new(&[1, 3]).unwrap();
        let mut rng = SamplerRng::seed_from_u64(1);
        assert_eq!(
            sampler
                .sample_excluding(4, positives, &mut rng)
                .unwrap_err(),
            SamplerError::ExclusionImpossible {
                user: 4,
                num_positives: 2,
                num_items: 4
            }
        );
        // With alpha 0 the zero-count items are drawable, so exclusion works.
        let uniform_like = PopularitySampler::builder()
            .alpha(0.0)
            .build(&[0u32, 4, 0, 2])
            .unwrap();
        let item = uniform_like
            .sample_excluding(4, positives, &mut rng)
            .unwrap();
        assert!(item == 0 || item == 2);
    }
}
