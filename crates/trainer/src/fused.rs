//! Training steps on dssm-model's CPU engine (`train.engine`): the batch's ids go straight to
//! [`CpuEngine`], which leaves the gradient in flat buffers for [`Optimizer::step_flat`]. The
//! engine holds the weights while an epoch trains; [`CpuEngine::store`] writes them back into the
//! model before validation and checkpoints.

use dssm_model::Dssm;
use dssm_model::engine::{CpuEngine, SideIds, SoftmaxLoss};

use crate::config::{EngineKind, LossKind, RunConfig};
use crate::error::TrainError;
use crate::tables::{GatherBuffers, SideTable};

/// The losses the engine computes.
fn engine_loss(kind: LossKind) -> bool {
    matches!(kind, LossKind::Bce | LossKind::InBatchSoftmax)
}

/// The engine for this run, or `None` to train through Candle (see [`EngineKind`]).
pub(crate) fn engine_for(
    config: &RunConfig,
    model: &Dssm,
) -> Result<Option<CpuEngine>, TrainError> {
    let kind = config.train.engine;
    if kind == EngineKind::Candle {
        return Ok(None);
    }
    let refuse = |problem: String| TrainError::Unsupported {
        message: format!("train.engine = \"fused\": {problem}; use \"auto\" or \"candle\""),
    };
    if !engine_loss(config.loss.kind) {
        return match kind {
            EngineKind::Fused => Err(refuse(format!(
                "loss.kind {:?} runs through Candle only",
                config.loss.kind
            ))),
            _ => Ok(None),
        };
    }
    match (CpuEngine::new(model), kind) {
        (Ok(engine), _) => Ok(Some(engine)),
        (Err(e), EngineKind::Fused) => Err(refuse(e.to_string())),
        (Err(e), _) => {
            tracing::info!("training through Candle: {e}");
            Ok(None)
        }
    }
}

/// Reused buffers of the fused steps.
#[derive(Debug, Default)]
pub(crate) struct FusedBuffers {
    users: GatherBuffers,
    items: GatherBuffers,
    offsets: Vec<f32>,
}

/// One batch of the epoch, as the step sees it.
pub(crate) struct FusedBatch<'a> {
    pub(crate) users: &'a [u32],
    /// The batch's items: one per user, then the shared negatives (in-batch softmax).
    pub(crate) items: &'a [u32],
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
    let user_columns = user_table.gather(batch.users, &mut buffers.users);
    let item_columns = item_table.gather(batch.items, &mut buffers.items);
    let users = SideIds {
        rows: batch.users.len(),
        columns: &user_columns,
    };
    let items = SideIds {
        rows: batch.items.len(),
        columns: &item_columns,
    };
    let seed = batch.dropout_seed;
    let result = match config.loss.kind {
        LossKind::Bce => engine.bce_step(&users, &items, batch.labels, (Some(seed), Some(seed))),
        LossKind::InBatchSoftmax => {
            let offsets = match batch.log_q {
                Some(q) => {
                    buffers.offsets.clear();
                    buffers.offsets.extend(batch.items.iter().map(|&i| q(i)));
                    Some(buffers.offsets.as_slice())
                }
                None => None,
            };
            let excluded = crate::loss::accidental_hits(batch.items, batch.users.len());
            let loss = SoftmaxLoss {
                scale: (1.0 / config.loss.temperature) as f32,
                column_offsets: offsets,
                excluded: &excluded,
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
