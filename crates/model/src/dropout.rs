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
    let s0 = stream_start(seed, side, layer);
    let threshold = (p as f64 * 65536.0).round() as u64;
    let keep = (1.0 / (1.0 - p as f64)) as f32;
    for (k, m) in out.iter_mut().enumerate() {
        let index = start + k;
        let draw = (index / 4) as u64 + 1;
        let bits = mix(s0.wrapping_add(draw.wrapping_mul(GOLDEN_GAMMA)));
        *m = if (bits >> (16 * (index % 4))) & 0xFFFF >= threshold {
            keep
        } else {
            0.0
        };
    }
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
