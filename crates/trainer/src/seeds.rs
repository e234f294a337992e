//! The run's random streams: every draw depends only on (seed, epoch, stream, step), so a resumed
//! run draws what an uninterrupted one does.

/// Negative rows' users (`seed` protocol BCE negatives).
pub(crate) const STREAM_NEGATIVE_USERS: u64 = 1;
/// Sampled negative items.
pub(crate) const STREAM_NEGATIVE_ITEMS: u64 = 2;
/// The epoch's row order.
pub(crate) const STREAM_SHUFFLE: u64 = 3;
/// Dropout masks, per step.
pub(crate) const STREAM_DROPOUT: u64 = 4;
/// The shared negatives of in-batch softmax (`loss.shared_negatives`).
pub(crate) const STREAM_SHARED_NEGATIVES: u64 = 5;
/// The training windows of long sequences (`model.sequence.windows = "random"`).
pub(crate) const STREAM_WINDOWS: u64 = 6;
/// Negatives mixed from the mined bands and the sampler (`sampler.hard.mine_every`).
pub(crate) const STREAM_HARD_NEGATIVES: u64 = 7;
/// Dropout masks of a data-parallel part of a step (`train.replicas`), per part.
pub(crate) const STREAM_REPLICAS: u64 = 8;

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The seed of stream `stream` at (`epoch`, `step`).
pub(crate) fn derive_seed(seed: u64, epoch: usize, stream: u64, step: u64) -> u64 {
    splitmix(
        splitmix(splitmix(seed ^ stream.wrapping_mul(0xA076_1D64_78BD_642F)) ^ epoch as u64) ^ step,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_epochs_and_steps_draw_apart() {
        let base = derive_seed(7, 0, STREAM_SHUFFLE, 0);
        assert_eq!(base, derive_seed(7, 0, STREAM_SHUFFLE, 0));
        let others = [
            derive_seed(8, 0, STREAM_SHUFFLE, 0),
            derive_seed(7, 1, STREAM_SHUFFLE, 0),
            derive_seed(7, 0, STREAM_DROPOUT, 0),
            derive_seed(7, 0, STREAM_SHUFFLE, 1),
        ];
        assert!(others.iter().all(|&s| s != base), "{others:?} vs {base}");
    }
}
