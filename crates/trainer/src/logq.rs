//! The log-Q correction: each item's sampling probability q, fixed for the run, and the ln q
//! offsets a batch's logits are corrected by.

use candle_core::{Device, Tensor};

use crate::config::{LossKind, RunConfig};
use crate::error::TrainError;

/// q(item) for the log-Q correction, fixed for the run (both `None` without the correction).
pub(crate) struct ItemQ {
    /// In-batch softmax: each item's share of the positive train rows (the batch's own sampling).
    pub(crate) batch: Option<Vec<f64>>,
    /// Sampled softmax, and the shared negatives of in-batch softmax: the sampler's probability.
    pub(crate) sampler: Option<Vec<f64>>,
}

impl ItemQ {
    /// The q of `config`'s loss: `positive_items` are the item rows of the positive train rows;
    /// `sampler_q` gives the sampler's probability of every item (`None` without a sampler).
    pub(crate) fn new(
        config: &RunConfig,
        n_items: usize,
        positive_items: impl Iterator<Item = u32>,
        sampler_q: impl Fn() -> Option<Vec<f64>>,
    ) -> Self {
        let loss = &config.loss;
        match (loss.logq_correction, loss.kind) {
            (false, _) => ItemQ {
                batch: None,
                sampler: None,
            },
            (true, LossKind::InBatchSoftmax) => {
                let mut counts = vec![0f64; n_items];
                for item in positive_items {
                    counts[item as usize] += 1.0;
                }
                let total = counts.iter().sum::<f64>().max(1.0);
                ItemQ {
                    batch: Some(counts.iter().map(|c| c / total).collect()),
                    sampler: (loss.shared_negatives > 0).then(sampler_q).flatten(),
                }
            }
            (true, _) => ItemQ {
                batch: None,
                sampler: sampler_q(),
            },
        }
    }
}

/// ln q(item) of each of `items` for the log-Q correction (see [`ItemQ`]), as a `shape` tensor.
pub(crate) fn log_q(
    items: &[u32],
    shape: &[usize],
    q: impl Fn(usize) -> f64,
    device: &Device,
) -> Result<Tensor, TrainError> {
    let values: Vec<f32> = items.iter().map(|&i| ln_q(q(i as usize))).collect();
    Tensor::from_vec(values, shape, device).map_err(TrainError::tensor("building log-Q"))
}

/// ln q(item) of an in-batch softmax column, for a batch of `rows` rows plus `shared` shared
/// negatives; `None` without the correction.
pub(crate) fn in_batch_log_q(
    item_q: &ItemQ,
    rows: usize,
    shared: usize,
) -> Option<impl Fn(u32) -> f32 + '_> {
    let batch = item_q.batch.as_ref()?;
    let sampler = item_q.sampler.as_ref();
    Some(move |item: u32| {
        let i = item as usize;
        // Mixed: a column's q is its expected count in the batch.
        let q = match sampler {
            Some(ps) => rows as f64 * batch[i] + shared as f64 * ps[i],
            None => batch[i],
        };
        ln_q(q)
    })
}

/// The log-Q offset of a probability (or expected count) `q`, floored at 1e-12.
fn ln_q(q: f64) -> f32 {
    q.max(1e-12).ln() as f32
}
