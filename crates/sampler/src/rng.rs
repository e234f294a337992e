//! Random-number helpers: the crate's RNG type, per-chunk seeding, and exact integer/float draws.

use rand::{Rng, SeedableRng};

/// The RNG the batch helpers use: xoshiro256++ from `rand` 0.10 (`rand::rngs::Xoshiro256PlusPlus`).
///
/// Chosen over `rand::rngs::SmallRng` because `SmallRng` is documented as non-portable (it is
/// xoshiro128++ on 32-bit targets and may change between `rand` versions), while this type names
/// its algorithm, so a seed gives the same stream on every platform. It is fast (one 64-bit output
/// costs about a nanosecond) and needs no extra crate.
pub type SamplerRng = rand::rngs::Xoshiro256PlusPlus;

/// Builds the RNG of one chunk of a batch from `(seed, epoch, chunk)`.
///
/// The three numbers are mixed with the SplitMix64 finaliser, so nearby seeds, epochs or chunk
/// indices give unrelated streams. The batch helpers ([`fill_negatives`](crate::fill_negatives))
/// give chunk `c` (output positions `c * FILL_CHUNK_LEN ..`) the RNG `chunk_rng(seed, epoch, c)`,
/// which is what makes their output independent of the number of threads.
///
/// ```
/// use dssm_sampler::chunk_rng;
/// use rand::Rng;
///
/// let a = chunk_rng(7, 0, 3).next_u64();
/// assert_eq!(a, chunk_rng(7, 0, 3).next_u64());
/// assert_ne!(a, chunk_rng(7, 1, 3).next_u64());
/// ```
pub fn chunk_rng(seed: u64, epoch: u64, chunk: u64) -> SamplerRng {
    let key = splitmix64(splitmix64(splitmix64(seed) ^ epoch) ^ chunk);
    SamplerRng::seed_from_u64(key)
}

/// The SplitMix64 output function of `x + golden gamma`.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// An exactly uniform integer in `0..n` (`n > 0`) by Lemire's multiply-and-reject method.
///
/// One `next_u64` per draw except with probability `n / 2^64`.
#[inline(always)]
pub(crate) fn uniform_below<R: Rng + ?Sized>(rng: &mut R, n: u64) -> u64 {
    let mut product = u128::from(rng.next_u64()) * u128::from(n);
    let mut low = product as u64;
    if low < n {
        let threshold = n.wrapping_neg() % n;
        while low < threshold {
            product = u128::from(rng.next_u64()) * u128::from(n);
            low = product as u64;
        }
    }
    (product >> 64) as u64
}

/// A uniform `f64` in `[0, 1)` with 53 random bits.
#[inline(always)]
pub(crate) fn unit_f64<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_below_stays_in_range_and_hits_every_value() {
        let mut rng = SamplerRng::seed_from_u64(1);
        let mut seen = [false; 7];
        for _ in 0..1000 {
            let x = uniform_below(&mut rng, 7);
            assert!(x < 7);
            seen[x as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
        assert_eq!(uniform_below(&mut rng, 1), 0);
    }

    #[test]
    fn unit_f64_is_in_unit_interval() {
        let mut rng = SamplerRng::seed_from_u64(2);
        for _ in 0..1000 {
            let u = unit_f64(&mut rng);
            assert!((0.0..1.0).contains(&u));
        }
    }

    #[test]
    fn chunk_rng_depends_on_every_input() {
        let base = chunk_rng(1, 2, 3).next_u64();
        assert_eq!(base, chunk_rng(1, 2, 3).next_u64());
        assert_ne!(base, chunk_rng(0, 2, 3).next_u64());
        assert_ne!(base, chunk_rng(1, 0, 3).next_u64());
        assert_ne!(base, chunk_rng(1, 2, 0).next_u64());
        // Swapping epoch and chunk must not give the same stream.
        assert_ne!(base, chunk_rng(1, 3, 2).next_u64());
    }
}
