//! Hard negatives from a band of ranks: offline mining as Facebook's embedding-based retrieval
//! does it (Huang et al., KDD 2020, section 4.2).
//!
//! A model ranks the catalogue for each user; the items at ranks `first..=last` of that ranking
//! (EBR: 101-500), the user's positives left out before ranks are counted, are similar enough to
//! the positives to be informative and far enough down to be rarely unlabelled positives. The very
//! top ranks are left alone on purpose: EBR found them full of false negatives and worse for
//! recall than random negatives. [`BandNegatives`] keeps each user's band; [`MixedSampler`] draws a
//! share of a positive's negatives from it and the rest from an ordinary [`NegativeSampler`]; and
//! [`fill_mixed_negatives`] fills a batch reproducibly from `(seed, epoch)`.

use rand::Rng;

use crate::rng::{chunk_rng, uniform_below, unit_f64};
use crate::{FILL_CHUNK_LEN, NegativeSampler, Positives, SamplerError, UserItems};

/// A band of 1-based ranks, `first..=last` of a user's ranking (EBR's default: 101 to 500).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RankBand {
    first: usize,
    last: usize,
}

impl RankBand {
    /// The ranks `first..=last`; errors with [`SamplerError::InvalidBand`] unless
    /// `1 <= first <= last`.
    ///
    /// ```
    /// use dssm_sampler::RankBand;
    ///
    /// let band = RankBand::new(101, 500).unwrap();
    /// assert_eq!(band.len(), 400);
    /// assert!(RankBand::new(0, 10).is_err() && RankBand::new(20, 10).is_err());
    /// ```
    pub fn new(first: usize, last: usize) -> Result<Self, SamplerError> {
        if first == 0 || first > last {
            return Err(SamplerError::InvalidBand { first, last });
        }
        Ok(RankBand { first, last })
    }

    /// The first rank of the band (1-based).
    pub fn first(&self) -> usize {
        self.first
    }

    /// The last rank of the band (1-based, inclusive): a ranking needs this many non-positive
    /// items to fill the band.
    pub fn last(&self) -> usize {
        self.last
    }

    /// Ranks in the band.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.last - self.first + 1
    }
}

/// Every user's band of hard negatives, CSR-style: user `u`'s band items in rank order.
///
/// Built from each user's ranking ([`from_rankings`](Self::from_rankings)); a user whose ranking
/// holds fewer than `band.last()` non-positive items gets a shorter band (possibly empty), and the
/// batch helpers draw that user's negatives from the fallback sampler instead.
#[derive(Clone, Debug)]
pub struct BandNegatives {
    band: RankBand,
    num_items: usize,
    offsets: Vec<usize>,
    items: Vec<u32>,
}

impl BandNegatives {
    /// The bands of `rankings` (one per user, best first, as a top-K search returns them): for
    /// each user, its ranking with the user's `positives` skipped, then ranks `band.first()` to
    /// `band.last()` of what remains (fewer when the ranking is short). Items must lie in
    /// `0..num_items`; an item repeated in a ranking counts once, at its best rank.
    ///
    /// Errors: [`SamplerError::ItemOutOfRange`] (`position` is the index in that user's
    /// ranking), [`SamplerError::CatalogueMismatch`] when `positives` was built for another
    /// catalogue.
    ///
    /// ```
    /// use dssm_sampler::{BandNegatives, RankBand, UserItems};
    ///
    /// // User 0 ranks items 4, 1, 3, 0, 2 (best first) and has positive 1.
    /// let positives = UserItems::from_pairs(1, 5, &[(0, 1)]).unwrap();
    /// let band = RankBand::new(2, 3).unwrap();
    /// let bands = BandNegatives::from_rankings(band, 5, [&[4u32, 1, 3, 0, 2][..]], Some(&positives))?;
    /// // Without the positive the ranking is 4, 3, 0, 2: ranks 2 and 3 are items 3 and 0.
    /// assert_eq!(bands.band_of(0), &[3, 0]);
    /// # Ok::<(), dssm_sampler::SamplerError>(())
    /// ```
    pub fn from_rankings<'r>(
        band: RankBand,
        num_items: usize,
        rankings: impl IntoIterator<Item = &'r [u32]>,
        positives: Option<&UserItems>,
    ) -> Result<Self, SamplerError> {
        if let Some(p) = positives
            && p.num_items() != num_items
        {
            return Err(SamplerError::CatalogueMismatch {
                sampler_items: num_items,
                positives_items: p.num_items(),
            });
        }
        let mut offsets = vec![0usize];
        let mut items = Vec::new();
        let mut seen = vec![false; num_items];
        for (user, ranking) in rankings.into_iter().enumerate() {
            let user_positives = positives
                .and_then(|p| p.get(user as u32))
                .unwrap_or(Positives::empty());
            let start = items.len();
            let mut rank = 0usize;
            for (position, &item) in ranking.iter().enumerate() {
                if item as usize >= num_items {
                    return Err(SamplerError::ItemOutOfRange {
                        position,
                        item,
                        num_items,
                    });
                }
                if user_positives.contains(item) || seen[item as usize] {
                    continue;
                }
                seen[item as usize] = true;
                rank += 1;
                if rank > band.last {
                    break;
                }
                if rank >= band.first {
                    items.push(item);
                }
            }
            // Clear only what this user marked.
            for &item in ranking.iter().take_while(|&&i| (i as usize) < num_items) {
                seen[item as usize] = false;
            }
            debug_assert!(items.len() - start <= band.len());
            offsets.push(items.len());
        }
        Ok(BandNegatives {
            band,
            num_items,
            offsets,
            items,
        })
    }

    /// The band the store was built for.
    pub fn band(&self) -> RankBand {
        self.band
    }

    /// Size of the catalogue the rankings came from.
    pub fn num_items(&self) -> usize {
        self.num_items
    }

    /// Number of users (rankings) in the store.
    pub fn num_users(&self) -> usize {
        self.offsets.len() - 1
    }

    /// User `user`'s band items in rank order (empty for an unknown user or a short ranking).
    pub fn band_of(&self, user: u32) -> &[u32] {
        let u = user as usize;
        if u + 1 >= self.offsets.len() {
            return &[];
        }
        &self.items[self.offsets[u]..self.offsets[u + 1]]
    }

    /// One item of `user`'s band, uniformly; `None` when the band is empty.
    #[inline]
    pub fn sample<R: Rng + ?Sized>(&self, user: u32, rng: &mut R) -> Option<u32> {
        let band = self.band_of(user);
        if band.is_empty() {
            return None;
        }
        Some(band[uniform_below(rng, band.len() as u64) as usize])
    }
}

/// Hard negatives mixed with an ordinary sampler's: each negative comes from the user's band with
/// probability `hard_fraction` (when the band is not empty) and from `fallback` otherwise.
///
/// A per-negative coin rather than a fixed count, so that any fraction works for any number of
/// negatives per positive: with 3 negatives and `hard_fraction = 0.5`, 1.5 of them are hard on
/// average.
#[derive(Clone, Copy, Debug)]
pub struct MixedSampler<'a, S> {
    bands: &'a BandNegatives,
    fallback: &'a S,
    hard_fraction: f64,
}

impl<'a, S: NegativeSampler> MixedSampler<'a, S> {
    /// The mix of `bands` and `fallback`; errors with [`SamplerError::InvalidFraction`] unless
    /// `hard_fraction` is in `[0, 1]`, and [`SamplerError::CatalogueMismatch`] when the bands come
    /// from another catalogue than the fallback's.
    pub fn new(
        bands: &'a BandNegatives,
        fallback: &'a S,
        hard_fraction: f64,
    ) -> Result<Self, SamplerError> {
        if !(0.0..=1.0).contains(&hard_fraction) {
            return Err(SamplerError::InvalidFraction {
                fraction: hard_fraction,
            });
        }
        if bands.num_items() != fallback.num_items() {
            return Err(SamplerError::CatalogueMismatch {
                sampler_items: fallback.num_items(),
                positives_items: bands.num_items(),
            });
        }
        Ok(MixedSampler {
            bands,
            fallback,
            hard_fraction,
        })
    }

    /// One negative for `user`, never one of `positives`: a coin with probability
    /// `hard_fraction`, then a band item (the band holds no positive of the user it was built
    /// with; one of `positives` is redrawn from the fallback), or a fallback draw excluding
    /// `positives`.
    pub fn sample_excluding<R: Rng + ?Sized>(
        &self,
        user: u32,
        positives: Positives<'_>,
        rng: &mut R,
    ) -> Result<u32, SamplerError> {
        if unit_f64(rng) < self.hard_fraction
            && let Some(item) = self.bands.sample(user, rng)
            && !positives.contains(item)
        {
            return Ok(item);
        }
        self.fallback.sample_excluding(user, positives, rng)
    }
}

/// Fills `out` with `per_user` negatives for each of `users` from `mixed`: `out[i * per_user +
/// j]` is the `j`-th negative of `users[i]`, whose ids index both the bands and `exclude`. The
/// same layout, chunking and seeding as [`fill_negatives`](crate::fill_negatives): chunk `c` of
/// [`FILL_CHUNK_LEN`] slots draws from [`chunk_rng`]`(seed, epoch, c)`, so the output depends on
/// `(seed, epoch)` and the inputs only, never on the thread count (rayon with the `parallel`
/// feature).
///
/// With `exclude`, no negative is one of its user's positives. Errors as `fill_negatives`:
/// [`SamplerError::BufferLength`], [`SamplerError::CatalogueMismatch`], per draw
/// [`SamplerError::UserOutOfRange`] or [`SamplerError::ExclusionImpossible`] (the lowest
/// position's).
///
/// ```
/// use dssm_sampler::{fill_mixed_negatives, BandNegatives, MixedSampler, RankBand, UniformSampler};
///
/// let ranking = [9u32, 8, 7, 6, 5, 4, 3, 2, 1, 0];
/// let bands = BandNegatives::from_rankings(RankBand::new(3, 5)?, 10, [&ranking[..]], None)?;
/// let uniform = UniformSampler::new(10)?;
/// let all_hard = MixedSampler::new(&bands, &uniform, 1.0)?;
/// let mut out = vec![0u32; 8];
/// fill_mixed_negatives(&all_hard, &[0, 0], 4, None, 42, 0, &mut out)?;
/// assert!(out.iter().all(|item| [7, 6, 5].contains(item)));
/// # Ok::<(), dssm_sampler::SamplerError>(())
/// ```
pub fn fill_mixed_negatives<S: NegativeSampler + Sync>(
    mixed: &MixedSampler<'_, S>,
    users: &[u32],
    per_user: usize,
    exclude: Option<&UserItems>,
    seed: u64,
    epoch: u64,
    out: &mut [u32],
) -> Result<(), SamplerError> {
    crate::batch::check_layout(mixed.fallback, users, per_user, exclude, out)?;
    let fill = |(chunk, slots): (usize, &mut [u32])| -> Result<(), (usize, SamplerError)> {
        let mut rng = chunk_rng(seed, epoch, chunk as u64);
        let first = chunk * FILL_CHUNK_LEN;
        for (offset, slot) in slots.iter_mut().enumerate() {
            let position = (first + offset) / per_user;
            let user = users[position];
            let positives = match exclude {
                Some(user_items) => user_items.get(user).ok_or(SamplerError::UserOutOfRange {
                    position,
                    user,
                    num_users: user_items.num_users(),
                }),
                None => Ok(Positives::empty()),
            }
            .map_err(|e| (chunk, e))?;
            *slot = mixed
                .sample_excluding(user, positives, &mut rng)
                .map_err(|e| (chunk, e))?;
        }
        Ok(())
    };
    #[cfg(feature = "parallel")]
    let first_error = {
        use rayon::prelude::*;
        out.par_chunks_mut(FILL_CHUNK_LEN)
            .enumerate()
            .filter_map(|c| fill(c).err())
            .min_by_key(|(chunk, _)| *chunk)
    };
    #[cfg(not(feature = "parallel"))]
    let first_error = out
        .chunks_mut(FILL_CHUNK_LEN)
        .enumerate()
        .find_map(|c| fill(c).err());
    match first_error {
        Some((_, error)) => Err(error),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{PopularitySampler, SamplerRng, UniformSampler};
    use rand::SeedableRng;

    /// 50 users over 1,000 items: user u's ranking is r -> (13 r + 31 u) mod 1000 (a permutation:
    /// 13 is coprime to 1000), with 40 positives each.
    fn toy() -> (Vec<Vec<u32>>, UserItems) {
        let users: Vec<u32> = (0..50).collect();
        let mut rankings = Vec::new();
        let mut pairs = Vec::new();
        for &u in &users {
            let ranking: Vec<u32> = (0..1000u32).map(|r| (r * 13 + u * 31) % 1000).collect();
            // Positives: 20 among the band's ranks and 20 near the top.
            for k in 0..20 {
                pairs.push((u, ranking[5 * k]));
                pairs.push((u, ranking[120 + 7 * k]));
            }
            rankings.push(ranking);
        }
        (rankings, UserItems::from_pairs(50, 1000, &pairs).unwrap())
    }

    fn bands(band: RankBand) -> (BandNegatives, UserItems, Vec<Vec<u32>>) {
        let (rankings, positives) = toy();
        let stored = BandNegatives::from_rankings(
            band,
            1000,
            rankings.iter().map(Vec::as_slice),
            Some(&positives),
        )
        .unwrap();
        (stored, positives, rankings)
    }

    #[test]
    fn band_respects_ranks_counted_without_positives() {
        let band = RankBand::new(101, 500).unwrap();
        let (stored, positives, rankings) = bands(band);
        for user in 0..50u32 {
            let p = positives.get(user).unwrap();
            let without: Vec<u32> = rankings[user as usize]
                .iter()
                .copied()
                .filter(|&i| !p.contains(i))
                .collect();
            assert_eq!(stored.band_of(user), &without[100..500], "user {user}");
        }
        assert!(stored.band_of(50).is_empty());
        assert_eq!(stored.num_users(), 50);
    }

    #[test]
    fn band_sampling_never_returns_a_positive_and_stays_in_the_band() {
        let band = RankBand::new(101, 500).unwrap();
        let (stored, positives, _) = bands(band);
        let uniform = UniformSampler::new(1000).unwrap();
        let mixed = MixedSampler::new(&stored, &uniform, 1.0).unwrap();
        let users: Vec<u32> = (0..5000).map(|i| i % 50).collect();
        let mut out = vec![0u32; users.len() * 3];
        fill_mixed_negatives(&mixed, &users, 3, Some(&positives), 7, 0, &mut out).unwrap();
        for (slot, &item) in out.iter().enumerate() {
            let user = users[slot / 3];
            assert!(!positives.get(user).unwrap().contains(item));
            assert!(stored.band_of(user).contains(&item), "slot {slot}");
        }
        // Every band item is reachable: user 0 draws 20,000 times from its 400 items.
        let mut rng = SamplerRng::seed_from_u64(1);
        let mut hit = std::collections::BTreeSet::new();
        for _ in 0..20_000 {
            hit.insert(stored.sample(0, &mut rng).unwrap());
        }
        assert_eq!(hit.len(), 400);
    }

    #[test]
    fn mixing_follows_the_fraction_and_excludes_positives() {
        let band = RankBand::new(101, 500).unwrap();
        let (stored, positives, _) = bands(band);
        let counts: Vec<u32> = (1..=1000).collect();
        let popularity = PopularitySampler::builder().build(&counts).unwrap();
        let mixed = MixedSampler::new(&stored, &popularity, 0.25).unwrap();
        let users: Vec<u32> = (0..20_000).map(|i| i % 50).collect();
        let mut out = vec![0u32; users.len()];
        fill_mixed_negatives(&mixed, &users, 1, Some(&positives), 3, 1, &mut out).unwrap();
        let in_band = out
            .iter()
            .zip(&users)
            .filter(|(item, user)| stored.band_of(**user).contains(item))
            .count() as f64
            / out.len() as f64;
        // 25% hard, plus the popularity draws that land in the band (400 of the 960 items left).
        let expected = 0.25 + 0.75 * 400.0 / 960.0;
        assert!((in_band - expected).abs() < 0.03, "{in_band} vs {expected}");
        assert!(
            out.iter()
                .zip(&users)
                .all(|(item, user)| !positives.get(*user).unwrap().contains(*item))
        );
    }

    #[cfg(feature = "parallel")]
    #[test]
    fn same_seed_same_output_whatever_the_threads() {
        let band = RankBand::new(11, 60).unwrap();
        let (stored, positives, _) = bands(band);
        let uniform = UniformSampler::new(1000).unwrap();
        let mixed = MixedSampler::new(&stored, &uniform, 0.5).unwrap();
        let users: Vec<u32> = (0..9000).map(|i| (i * 7) % 50).collect();
        let run = |threads: usize, seed: u64, epoch: u64| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut out = vec![0u32; users.len() * 2];
            pool.install(|| {
                fill_mixed_negatives(&mixed, &users, 2, Some(&positives), seed, epoch, &mut out)
            })
            .unwrap();
            out
        };
        let one = run(1, 5, 2);
        assert_eq!(one, run(4, 5, 2));
        assert_ne!(one, run(1, 5, 3));
        assert_ne!(one, run(1, 6, 2));
    }

    #[test]
    fn short_rankings_give_short_or_empty_bands_and_fall_back() {
        // User 0 ranks 6 items (one a positive), user 1 ranks 2: the band 3-10 keeps ranks 3-5
        // of user 0 and nothing of user 1, whose negatives all come from the fallback.
        let rankings: [&[u32]; 2] = [&[0, 1, 2, 3, 4, 5], &[6, 7]];
        let positives = UserItems::from_pairs(2, 20, &[(0, 1), (1, 9)]).unwrap();
        let stored = BandNegatives::from_rankings(
            RankBand::new(3, 10).unwrap(),
            20,
            rankings,
            Some(&positives),
        )
        .unwrap();
        assert_eq!(stored.band_of(0), &[3, 4, 5]);
        assert!(stored.band_of(1).is_empty());
        let uniform = UniformSampler::new(20).unwrap();
        let mixed = MixedSampler::new(&stored, &uniform, 1.0).unwrap();
        let mut out = vec![0u32; 2 * 500];
        fill_mixed_negatives(&mixed, &[0, 1], 500, Some(&positives), 1, 0, &mut out).unwrap();
        assert!(out[..500].iter().all(|i| [3, 4, 5].contains(i)));
        assert!(out[500..].iter().all(|&i| i != 9));
        assert!(out[500..].iter().any(|&i| ![3, 4, 5].contains(&i)));
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert_eq!(
            RankBand::new(5, 4),
            Err(SamplerError::InvalidBand { first: 5, last: 4 })
        );
        let band = RankBand::new(1, 2).unwrap();
        let err = BandNegatives::from_rankings(band, 3, [&[0u32, 7][..]], None).unwrap_err();
        assert!(matches!(
            err,
            SamplerError::ItemOutOfRange {
                position: 1,
                item: 7,
                ..
            }
        ));
        let stored = BandNegatives::from_rankings(band, 3, [&[0u32, 1, 0][..]], None).unwrap();
        assert_eq!(stored.band_of(0), &[0, 1]);
        let uniform = UniformSampler::new(3).unwrap();
        assert!(matches!(
            MixedSampler::new(&stored, &uniform, 1.5),
            Err(SamplerError::InvalidFraction { .. })
        ));
        let other = UniformSampler::new(4).unwrap();
        assert!(MixedSampler::new(&stored, &other, 0.5).is_err());
        let mixed = MixedSampler::new(&stored, &uniform, 0.5).unwrap();
        let mut out = vec![0u32; 3];
        assert!(matches!(
            fill_mixed_negatives(&mixed, &[0], 2, None, 0, 0, &mut out),
            Err(SamplerError::BufferLength { .. })
        ));
    }
}
