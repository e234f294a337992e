//! Uniform sampling over the catalogue.

use rand::Rng;

use crate::rng::uniform_below;
use crate::{DEFAULT_MAX_RETRIES, NegativeSampler, Positives, SamplerError};

/// Draws every item of `0..num_items` with probability `1 / num_items`.
///
/// One `u64` from the RNG per draw (Lemire's method, exactly uniform). With exclusion, after
/// [`max_retries`](UniformSamplerBuilder::max_retries) rejected draws it draws exactly from the
/// complement in `O(log k)` for `k` positives, so it never fails unless the user has every item.
///
/// ```
/// use dssm_sampler::{NegativeSampler, SamplerRng, UniformSampler};
/// use rand::SeedableRng;
///
/// let sampler = UniformSampler::new(10).unwrap();
/// let mut rng = SamplerRng::seed_from_u64(0);
/// assert!(sampler.sample(&mut rng) < 10);
/// assert_eq!(sampler.probability(3), 0.1);
/// ```
#[derive(Clone, Debug)]
pub struct UniformSampler {
    num_items: u64,
    max_retries: u32,
}

impl UniformSampler {
    /// A uniform sampler over `0..num_items` with the default settings.
    ///
    /// Errors with [`SamplerError::EmptyCatalogue`] for 0 items and
    /// [`SamplerError::CatalogueTooLarge`] above `2^32` items.
    pub fn new(num_items: usize) -> Result<Self, SamplerError> {
        Self::builder().build(num_items)
    }

    /// A builder to change the defaults.
    pub fn builder() -> UniformSamplerBuilder {
        UniformSamplerBuilder {
            max_retries: DEFAULT_MAX_RETRIES,
        }
    }
}

/// Settings of a [`UniformSampler`].
#[derive(Clone, Debug)]
pub struct UniformSamplerBuilder {
    max_retries: u32,
}

impl UniformSamplerBuilder {
    /// Rejected draws tried before drawing from the complement of the positives
    /// (default [`DEFAULT_MAX_RETRIES`], 32). The output distribution does not depend on it.
    pub fn max_retries(mut self, max_retries: u32) -> Self {
        self.max_retries = max_retries;
        self
    }

    /// Builds the sampler over `0..num_items`.
    pub fn build(self, num_items: usize) -> Result<UniformSampler, SamplerError> {
        check_catalogue_size(num_items)?;
        Ok(UniformSampler {
            num_items: num_items as u64,
            max_retries: self.max_retries,
        })
    }
}

/// Checks `1 <= num_items <= 2^32`.
pub(crate) fn check_catalogue_size(num_items: usize) -> Result<(), SamplerError> {
    if num_items == 0 {
        return Err(SamplerError::EmptyCatalogue);
    }
    if num_items as u64 > u64::from(u32::MAX) + 1 {
        return Err(SamplerError::CatalogueTooLarge { num_items });
    }
    Ok(())
}

impl NegativeSampler for UniformSampler {
    fn num_items(&self) -> usize {
        self.num_items as usize
    }

    #[inline]
    fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> u32 {
        uniform_below(rng, self.num_items) as u32
    }

    fn probability(&self, item: u32) -> f64 {
        if u64::from(item) < self.num_items {
            1.0 / self.num_items as f64
        } else {
            0.0
        }
    }

    fn max_retries(&self) -> u32 {
        self.max_retries
    }

    /// Exact: the `r`-th item not in `positives` for a uniform `r`, found by binary search.
    fn sample_from_complement<R: Rng + ?Sized>(
        &self,
        user: u32,
        positives: Positives<'_>,
        rng: &mut R,
    ) -> Result<u32, SamplerError> {
        let items = positives.items();
        let in_catalogue = items.partition_point(|&item| u64::from(item) < self.num_items);
        let items = &items[..in_catalogue];
        let remaining = self.num_items - items.len() as u64;
        if remaining == 0 {
            return Err(SamplerError::ExclusionImpossible {
                user,
                num_positives: positives.len(),
                num_items: self.num_items as usize,
            });
        }
        let rank = uniform_below(rng, remaining);
        // `items[j] - j` (the number of non-positives below items[j]) never decreases: count the
        // positives whose value is at most `rank` non-positives in; the answer skips over them.
        let (mut low, mut high) = (0usize, items.len());
        while low < high {
            let mid = (low + high) / 2;
            if u64::from(items[mid]) - mid as u64 <= rank {
                low = mid + 1;
            } else {
                high = mid;
            }
        }
        Ok((rank + low as u64) as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SamplerRng;
    use crate::test_support::{CRITICAL_P001, chi_square};
    use rand::SeedableRng;

    #[test]
    fn rejects_empty_catalogue() {
        assert_eq!(
            UniformSampler::new(0).unwrap_err(),
            SamplerError::EmptyCatalogue
        );
    }

    #[test]
    fn frequencies_pass_chi_square() {
        // 50 items, 200,000 draws; chi-square with 49 degrees of freedom, p = 0.001: 85.351.
        let sampler = UniformSampler::new(50).unwrap();
        let mut rng = SamplerRng::seed_from_u64(11);
        let mut counts = vec![0u64; 50];
        for _ in 0..200_000 {
            counts[sampler.sample(&mut rng) as usize] += 1;
        }
        let expected: Vec<f64> = (0..50).map(|i| sampler.probability(i)).collect();
        let statistic = chi_square(&counts, &expected);
        assert!(statistic < CRITICAL_P001[49], "chi-square {statistic}");
    }

    #[test]
    fn probabilities_sum_to_one() {
        let sampler = UniformSampler::new(3706).unwrap();
        let total: f64 = (0..3706).map(|i| sampler.probability(i)).sum();
        assert!((total - 1.0).abs() < 1e-12);
        assert_eq!(sampler.probability(3706), 0.0);
    }

    #[test]
    fn complement_draw_enumerates_the_complement_exactly() {
        let sampler = UniformSampler::new(10).unwrap();
        let positives = Positives::new(&[0, 1, 4, 5, 9]).unwrap();
        let mut rng = SamplerRng::seed_from_u64(3);
        let mut counts = [0u64; 10];
        for _ in 0..50_000 {
            let item = sampler
                .sample_from_complement(0, positives, &mut rng)
                .unwrap();
            counts[item as usize] += 1;
        }
        // Uniform over the 5 items left: chi-square with 4 degrees of freedom (a positive drawn
        // makes it infinite).
        let expected: Vec<f64> = (0..10u32)
            .map(|i| if positives.contains(i) { 0.0 } else { 0.2 })
            .collect();
        let statistic = chi_square(&counts, &expected);
        assert!(statistic < CRITICAL_P001[4], "chi-square {statistic}");
    }

    #[test]
    fn exclusion_of_every_item_is_an_error() {
        let sampler = UniformSampler::new(3).unwrap();
        let positives = Positives::new(&[0, 1, 2]).unwrap();
        let mut rng = SamplerRng::seed_from_u64(3);
        assert_eq!(
            sampler
                .sample_excluding(8, positives, &mut rng)
                .unwrap_err(),
            SamplerError::ExclusionImpossible {
                user: 8,
                num_positives: 3,
                num_items: 3
            }
        );
    }
}
