//! Inverted-dropout masks from a counter-based stream, so any range of a batch's mask can be made
//! on its own (the CPU engine's shards each make their rows' part).

use crate::config::Side;

const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// The SplitMix64 output function.
#[inline(always)]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The stream's starting state for one step seed, side and layer.
fn stream_start(seed: u64, side: Side, layer: usize) -> u64 {
    let side_key: u64 = match side {
        Side::User => 0x5553_4552,
        Side::Item => 0x4954_454D,
    };
    let key = seed ^ side_key.rotate_left(32) ^ (layer as u64).wrapping_mul(0xA24B_AED4_963E_E407);
    mix(key.wrapping_add(GOLDEN_GAMMA))
}

/// Inverted-dropout mask: each value is 0 with probability `p` (quantised to 1/65536), else `1 / (1 - p)`.
/// The stream depends on the step seed, the side and the layer only.
pub(crate) fn dropout_mask(seed: u64, side: Side, layer: usize, len: usize, p: f32) -> Vec<f32> {
    let mut mask = vec![0f32; len];
    dropout_mask_range(seed, side, layer, 0, p, &mut mask);
    mask
}

/// Values `start..start + out.len()` of the mask [`dropout_mask`] makes, written into `out`.
/// Every 64-bit draw gives four 16-bit values; draw `c` is `mix(s0 + (c + 1) * gamma)`.
pub(crate) fn dropout_mask_range(
    seed: u64,
    side: Side,
    layer: usize,
    start: usize,
    p: f32,
    out: &mut [f32],
) {
    let rule = Rule {
        s0: stream_start(seed, side, layer),
        threshold: (p as f64 * 65536.0).round() as u64,
        keep: (1.0 / (1.0 - p as f64)) as f32,
    };
    // Values up to the first whole draw, the whole draws, then the rest.
    let head = ((4 - start % 4) % 4).min(out.len());
    let (first, rest) = out.split_at_mut(head);
    rule.values(start, first);
    let whole = rest.len() / 4 * 4;
    let (body, tail) = rest.split_at_mut(whole);
    whole_draws(&rule, (start + head) / 4, body);
    rule.values(start + head + whole, tail);
}

/// One mask's stream and its keep/drop rule.
struct Rule {
    s0: u64,
    threshold: u64,
    keep: f32,
}

impl Rule {
    #[inline(always)]
    fn draw(&self, c: u64) -> u64 {
        mix(self.s0.wrapping_add((c + 1).wrapping_mul(GOLDEN_GAMMA)))
    }

    #[inline(always)]
    fn value(&self, bits: u64, k: usize) -> f32 {
        if (bits >> (16 * k)) & 0xFFFF >= self.threshold {
            self.keep
        } else {
            0.0
        }
    }

    /// Values `start..start + out.len()`, one at a time.
    fn values(&self, start: usize, out: &mut [f32]) {
        for (k, m) in out.iter_mut().enumerate() {
            let index = start + k;
            *m = self.value(self.draw((index / 4) as u64), index % 4);
        }
    }
}

/// Four values per draw from draw `first` on (`out.len()` a multiple of 4); vectorised with
/// AVX-512 (64-bit multiplies) or AVX2 when the CPU has them.
fn whole_draws(rule: &Rule, first: usize, out: &mut [f32]) {
    #[inline(always)]
    fn body(rule: &Rule, first: usize, out: &mut [f32]) {
        for (c, chunk) in out.chunks_exact_mut(4).enumerate() {
            let bits = rule.draw((first + c) as u64);
            for (k, m) in chunk.iter_mut().enumerate() {
                *m = rule.value(bits, k);
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512dq,avx512vl")]
        unsafe fn avx512(rule: &Rule, first: usize, out: &mut [f32]) {
            body(rule, first, out)
        }
        #[target_feature(enable = "avx2")]
        unsafe fn avx2(rule: &Rule, first: usize, out: &mut [f32]) {
            body(rule, first, out)
        }
        if std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx512vl")
        {
            // SAFETY: the CPU has the features `avx512` was compiled for.
            return unsafe { avx512(rule, first, out) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: as above, for `avx2`.
            return unsafe { avx2(rule, first, out) };
        }
    }
    body(rule, first, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_agree_with_the_whole_mask() {
        let whole = dropout_mask(5, Side::Item, 2, 1003, 0.3);
        for (start, len) in [(0, 1003), (1, 7), (4, 400), (999, 4), (517, 286)] {
            let mut part = vec![9.0; len];
            dropout_mask_range(5, Side::Item, 2, start, 0.3, &mut part);
            assert_eq!(part, whole[start..start + len], "range {start}+{len}");
        }
    }

    #[test]
    fn the_dropped_share_is_p_and_kept_values_are_rescaled() {
        let mask = dropout_mask(11, Side::User, 0, 200_000, 0.2);
        let dropped = mask.iter().filter(|&&m| m == 0.0).count() as f64 / mask.len() as f64;
        // Binomial standard error at n = 200,000 is 0.0009: 5 of them.
        assert!((dropped - 0.2).abs() < 0.0045, "dropped share {dropped}");
        assert!(mask.iter().all(|&m| m == 0.0 || m == 1.25));
    }
}
