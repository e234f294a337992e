//! Negative sampling for recommender training over plain `u32` item ids.
//!
//! Items are `0..num_items`; a user's positives are a sorted list ([`Positives`]), usually taken
//! from a CSR store built from `(user, item)` pairs ([`UserItems`]). Two strategies implement the
//! [`NegativeSampler`] trait:
//!
//! - [`UniformSampler`]: every item with probability `1 / num_items`.
//! - [`PopularitySampler`]: item `i` with probability proportional to `count_i^alpha`
//!   (`alpha = 1`: like taking the item of a random training row; `0.75`: word2vec), drawn in
//!   O(1) from a Vose alias table.
//!
//! Both can exclude a user's positives ([`NegativeSampler::sample_excluding`]) and report the
//! probability of any item under the strategy ([`NegativeSampler::probability`]), for the log-Q
//! correction of sampled or in-batch softmax.
//!
//! Hard negatives mined offline (Facebook's embedding-based retrieval): [`BandNegatives`] keeps
//! the items at a band of ranks of each user's ranking by a model (EBR: 101-500, positives left
//! out), [`MixedSampler`] draws a share of the negatives from it and the rest from one of the
//! samplers above, and [`fill_mixed_negatives`] fills a batch as [`fill_negatives`] does.
//!
//! # Exclusion
//!
//! `sample_excluding` draws from the proposal and rejects positives, up to `max_retries` draws
//! (default [`DEFAULT_MAX_RETRIES`], 32). If all are rejected (the user's positives hold most of
//! the mass), it draws exactly from the complement of the positives instead: `O(log k)` for the
//! uniform sampler, `O(k + log n)` for the popularity sampler (`k` positives, `n` items). Either way
//! the result follows the proposal conditioned on not being a positive, so the retry budget only
//! changes speed, not the distribution. Only when the positives hold *all* the mass (every item,
//! or every item of non-zero weight) does it fail, with [`SamplerError::ExclusionImpossible`].
//!
//! [`NegativeSampler::probability`] is always the unconditioned proposal probability, also with
//! exclusion: the conditioned one would be `p(i) / (1 - sum of p over the user's positives)`.
//!
//! # Reproducibility
//!
//! The samplers take the RNG from the caller. The batch helpers [`fill_negatives`] (parallel with
//! the `parallel` feature) and [`fill_negatives_serial`] split the output into chunks of
//! [`FILL_CHUNK_LEN`] slots and give chunk `c` its own RNG, [`chunk_rng`]`(seed, epoch, c)`
//! (a [`SamplerRng`], xoshiro256++, portable across platforms), so the output depends only on
//! `(seed, epoch)` and the inputs, never on the number of threads. Changing `epoch` gives fresh
//! negatives each epoch that are still reproducible.
//!
//! # Example
//!
//! ```
//! use dssm_sampler::{fill_negatives, NegativeSampler, PopularitySampler, SamplerRng, UserItems};
//! use rand::SeedableRng;
//!
//! // Training interactions (user, item) over 6 items and 3 users.
//! let pairs = [(0, 0), (0, 1), (1, 1), (1, 2), (2, 1), (2, 5)];
//! let mut counts = vec![0u32; 6];
//! for &(_, item) in &pairs {
//!     counts[item as usize] += 1;
//! }
//! counts[3] = 1; // every item needs a count > 0 to be drawn when alpha > 0
//! counts[4] = 1;
//! let positives = UserItems::from_pairs(3, 6, &pairs)?;
//! let sampler = PopularitySampler::builder().alpha(0.75).build(&counts)?;
//!
//! // One draw at a time, with your own RNG.
//! let mut rng = SamplerRng::seed_from_u64(7);
//! let negative = sampler.sample_excluding(0, positives.get(0).unwrap(), &mut rng)?;
//! assert!(negative != 0 && negative != 1);
//!
//! // Or a whole batch: 2 negatives for each of the users, epoch 0.
//! let users = [0, 1, 2];
//! let mut negatives = vec![0u32; users.len() * 2];
//! fill_negatives(&sampler, &users, 2, Some(&positives), 42, 0, &mut negatives)?;
//! assert!(negatives[2..4].iter().all(|&item| item != 1 && item != 2));
//!
//! // The proposal probability of each negative, for the log-Q correction.
//! let log_q: Vec<f64> = negatives.iter().map(|&i| sampler.probability(i).ln()).collect();
//! assert!(log_q.iter().all(|q| q.is_finite()));
//! let total: f64 = (0..6).map(|i| sampler.probability(i)).sum();
//! assert!((total - 1.0).abs() < 1e-12);
//! # Ok::<(), dssm_sampler::SamplerError>(())
//! ```
//!
//! # Crate features
//!
//! - `parallel` (default): [`fill_negatives`] runs on rayon's current thread pool. Without it,
//!   `fill_negatives` is [`fill_negatives_serial`]; the output is the same.

#![deny(missing_docs)]

use rand::Rng;

mod band;
mod batch;
mod error;
mod popularity;
mod positives;
mod rng;
#[cfg(test)]
mod test_support;
mod uniform;

pub use band::{BandNegatives, MixedSampler, RankBand, fill_mixed_negatives};
pub use batch::{FILL_CHUNK_LEN, fill_negatives, fill_negatives_serial};
pub use error::SamplerError;
pub use popularity::{DEFAULT_ALPHA, PopularitySampler, PopularitySamplerBuilder};
pub use positives::{Positives, UserItems};
pub use rng::{SamplerRng, chunk_rng};
pub use uniform::{UniformSampler, UniformSamplerBuilder};

/// Default number of rejected draws before [`NegativeSampler::sample_excluding`] draws from the
/// complement of the positives: 32.
pub const DEFAULT_MAX_RETRIES: u32 = 32;

/// A distribution over the items `0..num_items()` to draw negatives from.
///
/// Implement [`num_items`](Self::num_items), [`sample`](Self::sample) and
/// [`probability`](Self::probability); exclusion is provided. `sample` must draw item `i` with
/// probability `probability(i)`, and the probabilities must sum to 1.
pub trait NegativeSampler {
    /// Size of the catalogue: items are `0..num_items()`.
    fn num_items(&self) -> usize;

    /// Draws one item.
    fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> u32;

    /// Probability that [`sample`](Self::sample) draws `item` (0 outside the catalogue).
    ///
    /// With exclusion this is still the unconditioned proposal probability; it is what the log-Q
    /// correction of sampled softmax needs.
    fn probability(&self, item: u32) -> f64;

    /// Rejected draws [`sample_excluding`](Self::sample_excluding) tries before falling back to
    /// [`sample_from_complement`](Self::sample_from_complement) (default
    /// [`DEFAULT_MAX_RETRIES`]).
    fn max_retries(&self) -> u32 {
        DEFAULT_MAX_RETRIES
    }

    /// Draws from the proposal conditioned on not being one of `positives`, without rejection.
    ///
    /// The provided version is exact but `O(num_items)` per draw (it walks the catalogue); the
    /// crate's samplers override it with faster exact versions. `user` only names the user in
    /// [`SamplerError::ExclusionImpossible`], returned when the positives hold all the mass.
    fn sample_from_complement<R: Rng + ?Sized>(
        &self,
        user: u32,
        positives: Positives<'_>,
        rng: &mut R,
    ) -> Result<u32, SamplerError> {
        let num_items = self.num_items() as u32;
        let drawable = |item: &u32| !positives.contains(*item) && self.probability(*item) > 0.0;
        let mass: f64 = (0..num_items)
            .filter(drawable)
            .map(|item| self.probability(item))
            .sum();
        let target = rng::unit_f64(rng) * mass;
        let mut before = 0.0;
        let mut last = None;
        for item in (0..num_items).filter(drawable) {
            before += self.probability(item);
            last = Some(item);
            if target < before {
                break;
            }
        }
        last.ok_or(SamplerError::ExclusionImpossible {
            user,
            num_positives: positives.len(),
            num_items: self.num_items(),
        })
    }

    /// Draws one item that is not one of `user`'s `positives`.
    ///
    /// Rejection sampling for up to [`max_retries`](Self::max_retries) draws, then
    /// [`sample_from_complement`](Self::sample_from_complement); the result follows the proposal
    /// conditioned on the complement of the positives either way. Errors with
    /// [`SamplerError::ExclusionImpossible`] only when the positives hold all the mass.
    #[inline]
    fn sample_excluding<R: Rng + ?Sized>(
        &self,
        user: u32,
        positives: Positives<'_>,
        rng: &mut R,
    ) -> Result<u32, SamplerError> {
        if positives.is_empty() {
            return Ok(self.sample(rng));
        }
        for _ in 0..self.max_retries() {
            let item = self.sample(rng);
            if !positives.contains(item) {
                return Ok(item);
            }
        }
        self.sample_from_complement(user, positives, rng)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// A sampler using only the provided methods, to test the generic complement draw.
    struct ThreeItems;

    impl NegativeSampler for ThreeItems {
        fn num_items(&self) -> usize {
            3
        }
        fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> u32 {
            if rng::unit_f64(rng) < 0.5 {
                0
            } else {
                1 + (rng.next_u32() & 1)
            }
        }
        fn probability(&self, item: u32) -> f64 {
            [0.5, 0.25, 0.25].get(item as usize).copied().unwrap_or(0.0)
        }
    }

    #[test]
    fn provided_complement_draw_is_conditional() {
        let mut rng = SamplerRng::seed_from_u64(4);
        let positives = Positives::new(&[0]).unwrap();
        let mut counts = [0u32; 3];
        for _ in 0..20_000 {
            let item = ThreeItems
                .sample_from_complement(0, positives, &mut rng)
                .unwrap();
            counts[item as usize] += 1;
        }
        // Conditional on not item 0: items 1 and 2 at 1/2 each; 1 degree of freedom.
        let observed = counts.map(u64::from);
        let statistic = crate::test_support::chi_square(&observed, &[0.0, 0.5, 0.5]);
        assert!(
            statistic < crate::test_support::CRITICAL_P001[1],
            "chi-square {statistic}"
        );
        let all = Positives::new(&[0, 1, 2]).unwrap();
        assert!(matches!(
            ThreeItems.sample_excluding(5, all, &mut rng),
            Err(SamplerError::ExclusionImpossible { user: 5, .. })
        ));
    }
}
