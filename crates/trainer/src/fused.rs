//! Training steps on dssm-model's CPU engine (`train.engine`): the batch's ids go straight to
//! [`CpuEngine`], which leaves the gradient in flat buffers for [`Optimizer::step_flat`]. The
//! engine holds the weights while an epoch trains; [`CpuEngine::store`] writes them back into the
//! model before validation and checkpoints.

use candle_core::Device;
use dssm_model::ModelConfig;
use dssm_model::engine::{CpuEngine, SideIds, SoftmaxLoss, check_supported};

use crate::config::{EngineKind, LogQTarget, LossKind, RunConfig};
use crate::error::TrainError;
use crate::tables::{GatherBuffers, SideTable};

/// Whether this run trains on the engine (see [`EngineKind`]): decided from the config, the
/// model config and the device, before anything is written; an error when `train.engine` is
/// `fused` and the engine cannot run it.
pub(crate) fn uses_engine(
    config: &RunConfig,
    model: &ModelConfig,
    device: &Device,
) -> Result<bool, TrainError> {
    let kind = config.train.engine;
    if kind == EngineKind::Candle {
        return Ok(false);
    }
    let problem = if !matches!(config.loss.kind, LossKind::Bce | LossKind::InBatchSoftmax) {
        Some(format!(
            "loss.kind {:?} runs through Candle only",
            config.loss.kind
        ))
    } else if !device.is_cpu() {
        Some(format!("device {:?} is not the CPU", config.train.device))
    } else {
        check_supported(model).err().map(|e| e.to_string())
    };
    match (problem, kind) {
        (None, _) => Ok(true),
        (Some(problem), EngineKind::Fused) => Err(TrainError::Unsupported {
            message: format!("train.engine = \"fused\": {problem}; use \"auto\" or \"candle\""),
        }),
        (Some(problem), _) => {
            tracing::info!("training through Candle: {problem}");
            Ok(false)
        }
    }
}

/// Reused buffers of the fused steps.
#[derive(Debug, Default)]
pub(crate) struct FusedBuffers {
    users: GatherBuffers,
    items: GatherBuffers,
    /// The batch's item rows: its positives, then its shared negatives.
    item_rows: Vec<u32>,
    offsets: Vec<f32>,
}

/// One batch of the epoch, as the step sees it.
pub(crate) struct FusedBatch<'a> {
    pub(crate) users: &'a [u32],
    /// The batch's items: one per user, and the shared negatives (in-batch softmax).
    pub(crate) items: (&'a [u32], &'a [u32]),
    pub(crate) labels: &'a [f32],
    /// ln q of each item (in-batch softmax with the log-Q correction).
    pub(crate) log_q: Option<&'a dyn Fn(u32) -> f32>,
    pub(crate) dropout_seed: u64,
}

/// Runs one batch through the engine: the mean loss, with its gradient in the engine.
pub(crate) fn fused_loss(
    engine: &mut CpuEngine,
    config: &RunConfig,
    tables: (&SideTable, &SideTable),
    batch: &FusedBatch<'_>,
    buffers: &mut FusedBuffers,
) -> Result<f64, TrainError> {
    let (user_table, item_table) = tables;
    let FusedBuffers {
        users: user_buffers,
        items: item_buffers,
        item_rows,
        offsets,
    } = buffers;
    item_rows.clear();
    item_rows.extend_from_slice(batch.items.0);
    item_rows.extend_from_slice(batch.items.1);
    let user_columns = user_table.gather(batch.users, user_buffers);
    let item_columns = item_table.gather(item_rows, item_buffers);
    let users = SideIds {
        rows: batch.users.len(),
        columns: &user_columns,
    };
    let items = SideIds {
        rows: item_rows.len(),
        columns: &item_columns,
    };
    let seed = batch.dropout_seed;
    let result = match config.loss.kind {
        LossKind::Bce => engine.bce_step(&users, &items, batch.labels, (Some(seed), Some(seed))),
        LossKind::InBatchSoftmax => {
            let offsets = match batch.log_q {
                Some(q) => {
                    offsets.clear();
                    offsets.extend(item_rows.iter().map(|&i| q(i)));
                    Some(offsets.as_slice())
                }
                None => None,
            };
            let excluded = crate::loss::accidental_hits(item_rows, batch.users.len());
            let online = config.sampler.hard.online;
            let loss = SoftmaxLoss {
                scale: (1.0 / config.loss.temperature) as f32,
                column_offsets: offsets,
                excluded: &excluded,
                uncorrected_target: config.loss.logq == LogQTarget::NegativesOnly,
                keep_hardest: (online > 0).then_some(online),
            };
            engine.in_batch_softmax_step(&users, &items, &loss, (Some(seed), Some(seed ^ 1)))
        }
        other => {
            return Err(TrainError::Unsupported {
                message: format!("the CPU engine does not compute loss.kind {other:?}"),
            });
        }
    };
    result.map_err(TrainError::model)
}
