//! Batch helpers: fill a caller's buffer with negatives, reproducibly, in parallel or not.

use crate::rng::chunk_rng;
use crate::{NegativeSampler, SamplerError, UserItems};

/// Number of output slots per chunk; chunk `c` covers `out[c * FILL_CHUNK_LEN ..]` and draws from
/// [`chunk_rng`]`(seed, epoch, c)`. Fixed, so the output does not depend on the thread count.
pub const FILL_CHUNK_LEN: usize = 4096;

/// Fills `out` with `per_user` negatives for each user of `users`: `out[i * per_user + j]` is the
/// `j`-th negative of `users[i]`. Runs on rayon's current pool with the `parallel` feature (the
/// default); the output is the same as [`fill_negatives_serial`]'s whatever the thread count.
///
/// With `exclude`, no negative of a user is one of its positives (see
/// [`NegativeSampler::sample_excluding`]); without, `users` only sets the layout and its ids are
/// not read. The same `(seed, epoch)` gives the same output; change `epoch` for fresh negatives.
///
/// Each chunk first draws a proposal for every slot, then redraws (with `sample_excluding`) the
/// slots that hit a positive: the same distribution as calling `sample_excluding` per slot, but
/// the independent first draws let the CPU overlap their memory accesses.
///
/// Errors: [`SamplerError::BufferLength`] when `out.len() != users.len() * per_user`,
/// [`SamplerError::CatalogueMismatch`] when `exclude` was built for another catalogue size, and
/// per draw [`SamplerError::UserOutOfRange`] (`position` indexes `users`) or
/// [`SamplerError::ExclusionImpossible`]. On error the error is the one at the lowest position, as
/// in the serial path, and the contents of `out` are unspecified.
///
/// ```
/// use dssm_sampler::{fill_negatives, PopularitySampler, UserItems};
///
/// let sampler = PopularitySampler::builder().build(&[5u32, 3, 8, 1, 2]).unwrap();
/// let positives = UserItems::from_pairs(2, 5, &[(0, 2), (1, 0), (1, 2)]).unwrap();
/// let users = [0, 1, 1];
/// let mut out = vec![0u32; users.len() * 4];
/// fill_negatives(&sampler, &users, 4, Some(&positives), 42, 0, &mut out).unwrap();
/// assert!(out[..4].iter().all(|&item| item != 2));
/// assert!(out[4..].iter().all(|&item| item != 0 && item != 2));
/// ```
pub fn fill_negatives<S: NegativeSampler + Sync>(
    sampler: &S,
    users: &[u32],
    per_user: usize,
    exclude: Option<&UserItems>,
    seed: u64,
    epoch: u64,
    out: &mut [u32],
) -> Result<(), SamplerError> {
    #[cfg(feature = "parallel")]
    {
        use rayon::prelude::*;
        check_layout(sampler, users, per_user, exclude, out)?;
        let first_error = out
            .par_chunks_mut(FILL_CHUNK_LEN)
            .enumerate()
            .filter_map(|(chunk, slots)| {
                fill_chunk(sampler, users, per_user, exclude, seed, epoch, chunk, slots)
                    .err()
                    .map(|error| (chunk, error))
            })
            .min_by_key(|(chunk, _)| *chunk);
        match first_error {
            Some((_, error)) => Err(error),
            None => Ok(()),
        }
    }
    #[cfg(not(feature = "parallel"))]
    {
        fill_negatives_serial(sampler, users, per_user, exclude, seed, epoch, out)
    }
}

/// [`fill_negatives`] on the calling thread only; same arguments, same output.
pub fn fill_negatives_serial<S: NegativeSampler>(
    sampler: &S,
    users: &[u32],
    per_user: usize,
    exclude: Option<&UserItems>,
    seed: u64,
    epoch: u64,
    out: &mut [u32],
) -> Result<(), SamplerError> {
    check_layout(sampler, users, per_user, exclude, out)?;
    for (chunk, slots) in out.chunks_mut(FILL_CHUNK_LEN).enumerate() {
        fill_chunk(sampler, users, per_user, exclude, seed, epoch, chunk, slots)?;
    }
    Ok(())
}

/// Checks that `out` holds `per_user` slots per user and that `exclude` covers the sampler's catalogue.
pub(crate) fn check_layout<S: NegativeSampler>(
    sampler: &S,
    users: &[u32],
    per_user: usize,
    exclude: Option<&UserItems>,
    out: &[u32],
) -> Result<(), SamplerError> {
    let expected = users.len().saturating_mul(per_user);
    if out.len() != expected {
        return Err(SamplerError::BufferLength {
            expected,
            actual: out.len(),
            num_users: users.len(),
            per_user,
        });
    }
    if let Some(user_items) = exclude
        && user_items.num_items() != sampler.num_items()
    {
        return Err(SamplerError::CatalogueMismatch {
            sampler_items: sampler.num_items(),
            positives_items: user_items.num_items(),
        });
    }
    Ok(())
}

/// Fills chunk `chunk` (`slots` = `out[chunk * FILL_CHUNK_LEN ..][..slots.len()]`).
#[allow(clippy::too_many_arguments)]
fn fill_chunk<S: NegativeSampler>(
    sampler: &S,
    users: &[u32],
    per_user: usize,
    exclude: Option<&UserItems>,
    seed: u64,
    epoch: u64,
    chunk: usize,
    slots: &mut [u32],
) -> Result<(), SamplerError> {
    let mut rng = chunk_rng(seed, epoch, chunk as u64);
    let Some(user_items) = exclude else {
        for slot in slots.iter_mut() {
            *slot = sampler.sample(&mut rng);
        }
        return Ok(());
    };
    // Two passes: draw a proposal for every slot first (independent draws, so the memory accesses
    // of the alias table overlap), then check each against its user's positives and redraw the
    // rejected ones with `sample_excluding`. Each slot is still rejection sampling from the
    // proposal, so the distribution is the one `sample_excluding` gives.
    for slot in slots.iter_mut() {
        *slot = sampler.sample(&mut rng);
    }
    let first = chunk * FILL_CHUNK_LEN;
    let mut position = first / per_user;
    let mut left_for_user = per_user - first % per_user;
    let mut slots = slots;
    while !slots.is_empty() {
        let run = left_for_user.min(slots.len());
        let user = users[position];
        let positives = user_items.get(user).ok_or(SamplerError::UserOutOfRange {
            position,
            user,
            num_users: user_items.num_users(),
        })?;
        let (head, tail) = slots.split_at_mut(run);
        for slot in head {
            if positives.contains(*slot) {
                *slot = sampler.sample_excluding(user, positives, &mut rng)?;
            }
        }
        slots = tail;
        position += 1;
        left_for_user = per_user;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{CRITICAL_P001, chi_square, zipf_counts};
    use crate::{PopularitySampler, UniformSampler};

    /// 300 users, 500 items; user u has a Zipf-ish number of positives, user 0 almost all items.
    fn toy_problem() -> (PopularitySampler, UserItems) {
        let counts = zipf_counts(500, 1.0, 50_000);
        let sampler = PopularitySampler::builder()
            .alpha(1.0)
            .build(&counts)
            .unwrap();
        let mut pairs = Vec::new();
        for user in 0..300u32 {
            let size = if user == 0 { 495 } else { 5 + 400 / (user + 1) };
            for k in 0..size {
                pairs.push((user, (k * 7 + user) % 500));
            }
        }
        (sampler, UserItems::from_pairs(300, 500, &pairs).unwrap())
    }

    fn users() -> Vec<u32> {
        (0..3000u32).map(|i| (i * 37) % 300).collect()
    }

    #[test]
    fn exclusion_never_yields_a_positive() {
        let (sampler, user_items) = toy_problem();
        let users = users();
        let per_user = 7;
        let mut out = vec![0u32; users.len() * per_user];
        fill_negatives(
            &sampler,
            &users,
            per_user,
            Some(&user_items),
            1,
            0,
            &mut out,
        )
        .unwrap();
        for (i, &user) in users.iter().enumerate() {
            let positives = user_items.get(user).unwrap();
            for &item in &out[i * per_user..(i + 1) * per_user] {
                assert!(!positives.contains(item), "user {user} got positive {item}");
                assert!((item as usize) < 500);
            }
        }
        let uniform = UniformSampler::new(500).unwrap();
        fill_negatives(
            &uniform,
            &users,
            per_user,
            Some(&user_items),
            1,
            0,
            &mut out,
        )
        .unwrap();
        for (i, &user) in users.iter().enumerate() {
            let positives = user_items.get(user).unwrap();
            assert!(
                out[i * per_user..(i + 1) * per_user]
                    .iter()
                    .all(|&item| !positives.contains(item))
            );
        }
    }

    #[test]
    fn batch_exclusion_follows_the_conditional_distribution() {
        // 40 items, one user whose positives hold about half of the mass; 200,000 negatives.
        let counts = zipf_counts(40, 1.0, 10_000);
        let sampler = PopularitySampler::builder()
            .alpha(1.0)
            .build(&counts)
            .unwrap();
        let positive_items = [0u32, 1, 2, 7, 30];
        let pairs: Vec<(u32, u32)> = positive_items.iter().map(|&item| (0, item)).collect();
        let user_items = UserItems::from_pairs(1, 40, &pairs).unwrap();
        let users = vec![0u32; 1000];
        let mut out = vec![0u32; 200_000];
        fill_negatives(&sampler, &users, 200, Some(&user_items), 17, 0, &mut out).unwrap();
        let mut observed = vec![0u64; 40];
        for &item in &out {
            observed[item as usize] += 1;
        }
        let positives = user_items.get(0).unwrap();
        let complement_mass: f64 = (0..40u32)
            .filter(|&i| !positives.contains(i))
            .map(|i| sampler.probability(i))
            .sum();
        assert!(complement_mass < 0.6);
        let expected: Vec<f64> = (0..40u32)
            .map(|i| {
                if positives.contains(i) {
                    0.0
                } else {
                    sampler.probability(i) / complement_mass
                }
            })
            .collect();
        // 35 cells, 34 degrees of freedom, p = 0.001.
        let statistic = chi_square(&observed, &expected);
        assert!(statistic < CRITICAL_P001[34], "chi-square {statistic}");
    }

    #[test]
    fn same_seed_same_output_and_epochs_differ() {
        let (sampler, user_items) = toy_problem();
        let users = users();
        let run = |seed, epoch, exclude| {
            let mut out = vec![0u32; users.len() * 5];
            fill_negatives(&sampler, &users, 5, exclude, seed, epoch, &mut out).unwrap();
            out
        };
        for exclude in [None, Some(&user_items)] {
            let first = run(3, 0, exclude);
            assert_eq!(first, run(3, 0, exclude));
            let next_epoch = run(3, 1, exclude);
            let differing = first
                .iter()
                .zip(&next_epoch)
                .filter(|(a, b)| a != b)
                .count();
            assert!(differing > first.len() / 2, "only {differing} differ");
            assert_ne!(first, run(4, 0, exclude));
        }
    }

    #[test]
    fn serial_and_parallel_paths_agree() {
        let (sampler, user_items) = toy_problem();
        let all = users();
        // Per user: fewer slots than a chunk, exactly one chunk, and more (a user's slots span
        // chunk boundaries). A few users (several chunks) suffice for the last two; the first,
        // user 0, holds 495 of the 500 items, so most of its draws are redrawn.
        assert_eq!(all[0], 0);
        for (per_user, users) in [
            (1, &all[..]),
            (3, &all[..]),
            (FILL_CHUNK_LEN, &all[..5]),
            (5000, &all[..7]),
        ] {
            let mut serial = vec![0u32; users.len() * per_user];
            let mut parallel = vec![0u32; users.len() * per_user];
            fill_negatives_serial(
                &sampler,
                users,
                per_user,
                Some(&user_items),
                8,
                2,
                &mut serial,
            )
            .unwrap();
            fill_negatives(
                &sampler,
                users,
                per_user,
                Some(&user_items),
                8,
                2,
                &mut parallel,
            )
            .unwrap();
            assert_eq!(serial, parallel, "per_user {per_user}");
        }
    }

    #[cfg(feature = "parallel")]
    #[test]
    fn output_does_not_depend_on_the_thread_count() {
        let (sampler, user_items) = toy_problem();
        let users = users();
        let run_on = |threads: usize, exclude: Option<&UserItems>| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut out = vec![0u32; users.len() * 6];
            pool.install(|| fill_negatives(&sampler, &users, 6, exclude, 99, 4, &mut out))
                .unwrap();
            out
        };
        for exclude in [None, Some(&user_items)] {
            let one = run_on(1, exclude);
            let four = run_on(4, exclude);
            assert_eq!(one, four);
            // More than one chunk, so the threads really split the work.
            assert!(one.len() > 2 * FILL_CHUNK_LEN);
        }
    }

    #[test]
    fn layout_errors() {
        let (sampler, user_items) = toy_problem();
        let mut out = vec![0u32; 5];
        assert_eq!(
            fill_negatives(&sampler, &[1, 2], 3, None, 0, 0, &mut out).unwrap_err(),
            SamplerError::BufferLength {
                expected: 6,
                actual: 5,
                num_users: 2,
                per_user: 3
            }
        );
        let mut out = vec![0u32; 6];
        assert_eq!(
            fill_negatives(&sampler, &[1, 300], 3, Some(&user_items), 0, 0, &mut out).unwrap_err(),
            SamplerError::UserOutOfRange {
                position: 1,
                user: 300,
                num_users: 300
            }
        );
        let other = UserItems::from_pairs(1, 10, &[(0, 1)]).unwrap();
        assert!(matches!(
            fill_negatives(&sampler, &[0, 0], 3, Some(&other), 0, 0, &mut out),
            Err(SamplerError::CatalogueMismatch { .. })
        ));
        // Zero negatives per user is a valid, empty request.
        assert!(fill_negatives(&sampler, &[0, 1], 0, Some(&user_items), 0, 0, &mut []).is_ok());
    }

    #[test]
    fn the_first_error_is_reported_whatever_the_chunking() {
        // Users 0 and 1 hold all the mass of a 2-item catalogue; the error must name the first
        // offending position, as the serial path does.
        let sampler = UniformSampler::new(2).unwrap();
        let user_items = UserItems::from_pairs(3, 2, &[(1, 0), (1, 1), (2, 0), (2, 1)]).unwrap();
        let mut users = vec![0u32; 20_000];
        users[9_000] = 2;
        users[15_000] = 1;
        let mut out = vec![0u32; users.len()];
        let expected = SamplerError::ExclusionImpossible {
            user: 2,
            num_positives: 2,
            num_items: 2,
        };
        assert_eq!(
            fill_negatives(&sampler, &users, 1, Some(&user_items), 0, 0, &mut out).unwrap_err(),
            expected
        );
        assert_eq!(
            fill_negatives_serial(&sampler, &users, 1, Some(&user_items), 0, 0, &mut out)
                .unwrap_err(),
            expected
        );
    }
}
