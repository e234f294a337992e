//! The loss of one batch of [`EpochRows`] (BCE, BPR, in-batch or sampled softmax, with log-Q),
//! computed on Candle's autograd or on the CPU engine. Shared by the tasks of today; the learner
//! turns the result into an optimizer step.

use candle_core::Tensor;
use dssm_model::engine::CpuEngine;
use dssm_model::{Dssm, Mode, SideBatch};

use crate::batches::EpochRows;
use crate::config::{LogQTarget, LossKind, RunConfig};
use crate::error::TrainError;
use crate::fused::{FusedBatch, FusedBuffers, fused_loss};
use crate::inputs::Inputs;
use crate::logq::{ItemQ, in_batch_log_q, log_q};
use crate::tables::GatherBuffers;

/// Who computes a step: Candle's autograd on the model, or the CPU engine.
pub(crate) enum Stepper<'a> {
    /// The loss is a graph on the model's variables.
    Candle(&'a Dssm),
    /// The engine holds the weights and leaves the gradient in its flat buffers.
    Fused(&'a mut CpuEngine),
}

/// A batch's loss, as the stepper computed it.
pub(crate) enum StepLoss {
    /// A scalar tensor whose graph is kept for the backward pass.
    Graph(Tensor),
    /// The mean loss; its gradient is in the engine.
    Computed(f64),
    /// The mean loss and its gradients, computed by the task (data-parallel parts).
    Gradients {
        value: f64,
        grads: candle_core::backprop::GradStore,
    },
}

/// What the batch losses read, fixed for the run.
pub(crate) struct LossInputs<'a> {
    pub(crate) config: &'a RunConfig,
    pub(crate) inputs: &'a Inputs,
    pub(crate) item_q: &'a ItemQ,
}

/// Host buffers reused from step to step.
#[derive(Default)]
pub(crate) struct StepBuffers {
    users: GatherBuffers,
    items: GatherBuffers,
    item_rows: Vec<u32>,
    fused: FusedBuffers,
}

/// The loss of batch `step` of `rows`; dropout masks from `dropout_seed`.
pub(crate) fn batch_loss(
    context: &LossInputs<'_>,
    rows: &EpochRows,
    step: usize,
    stepper: &mut Stepper<'_>,
    dropout_seed: u64,
    buffers: &mut StepBuffers,
) -> Result<StepLoss, TrainError> {
    match stepper {
        Stepper::Candle(model) => {
            candle_loss(context, rows, model, step, dropout_seed, buffers).map(StepLoss::Graph)
        }
        Stepper::Fused(engine) => fused_step(
            context,
            rows,
            engine,
            step,
            dropout_seed,
            &mut buffers.fused,
        )
        .map(StepLoss::Computed),
    }
}

/// One step on the CPU engine: the batch's mean loss, its gradient left in the engine.
fn fused_step(
    context: &LossInputs<'_>,
    rows: &EpochRows,
    engine: &mut CpuEngine,
    step: usize,
    dropout_seed: u64,
    buffers: &mut FusedBuffers,
) -> Result<f64, TrainError> {
    let config = context.config;
    let (range, shared) = rows.batch(step);
    let users = &rows.users[range.clone()];
    let log_q = if config.loss.kind == LossKind::InBatchSoftmax {
        in_batch_log_q(context.item_q, users.len(), shared.len())
    } else {
        None
    };
    let batch = FusedBatch {
        users,
        items: (&rows.items[range.clone()], shared),
        labels: &rows.labels[range],
        log_q: log_q.as_ref().map(|q| q as &dyn Fn(u32) -> f32),
        dropout_seed,
    };
    let tables = (&context.inputs.users, &context.inputs.items);
    fused_loss(engine, config, tables, &batch, buffers)
}

/// One step's loss through Candle (the graph is kept for the backward pass).
fn candle_loss(
    context: &LossInputs<'_>,
    rows: &EpochRows,
    model: &Dssm,
    step: usize,
    dropout_seed: u64,
    buffers: &mut StepBuffers,
) -> Result<Tensor, TrainError> {
    let LossInputs {
        config,
        inputs,
        item_q,
    } = *context;
    let (mc, device) = (&inputs.model_config, &inputs.device);
    let (range, shared) = rows.batch(step);
    let b = range.len();
    let users = inputs
        .users
        .batch(mc, &rows.users[range.clone()], &mut buffers.users, device)?;
    let item_rows = &mut buffers.item_rows;
    item_rows.clear();
    item_rows.extend_from_slice(&rows.items[range.clone()]);
    match config.loss.kind {
        LossKind::Bce => {
            let items = inputs
                .items
                .batch(mc, item_rows, &mut buffers.items, device)?;
            let logits = model
                .forward(&users, &items, Mode::Train { seed: dropout_seed })
                .map_err(TrainError::model)?;
            let targets = Tensor::from_slice(&rows.labels[range], b, device)
                .map_err(TrainError::tensor("building targets"))?;
            crate::loss::bce_with_logits(&logits, &targets)
                .map_err(TrainError::tensor("computing the loss"))
        }
        LossKind::InBatchSoftmax => {
            item_rows.extend_from_slice(shared);
            let items = inputs
                .items
                .batch(mc, item_rows, &mut buffers.items, device)?;
            let (u, v) = encode_towers(model, &users, &items, dropout_seed)?;
            let scores = model.score_matrix(&u, &v).map_err(TrainError::model)?;
            let q = in_batch_offsets(item_q, item_rows, b, shared.len(), device)?;
            let online = config.sampler.hard.online;
            let options = crate::loss::InBatchOptions {
                uncorrected_target: config.loss.logq == LogQTarget::NegativesOnly,
                keep_hardest: (online > 0).then_some(online),
            };
            crate::loss::in_batch_softmax_with(
                &scores,
                config.loss.temperature,
                q.as_ref(),
                Some(item_rows),
                options,
            )
            .map_err(TrainError::tensor("computing the loss"))
        }
        LossKind::FullSoftmax => Err(TrainError::Unsupported {
            message: "loss.kind \"full_softmax\" is the sequence tower's loss".to_string(),
        }),
        LossKind::Bpr | LossKind::SampledSoftmax => {
            let k = rows.k;
            item_rows.extend_from_slice(&rows.negatives[range.start * k..range.end * k]);
            let items = inputs
                .items
                .batch(mc, item_rows, &mut buffers.items, device)?;
            let (u, v) = encode_towers(model, &users, &items, dropout_seed)?;
            pairwise_loss(context, rows, model, &u, &v, range)
                .map_err(TrainError::tensor("computing the loss"))
        }
    }
}

/// The ln q offset of each in-batch softmax column (`None` without the correction).
fn in_batch_offsets(
    item_q: &ItemQ,
    item_rows: &[u32],
    rows: usize,
    shared: usize,
    device: &candle_core::Device,
) -> Result<Option<Tensor>, TrainError> {
    let Some(q) = in_batch_log_q(item_q, rows, shared) else {
        return Ok(None);
    };
    let values: Vec<f32> = item_rows.iter().map(|&i| q(i)).collect();
    Tensor::from_vec(values, item_rows.len(), device)
        .map(Some)
        .map_err(TrainError::tensor("building log-Q"))
}

/// Both towers of a training batch; the item tower's dropout masks use a stream apart from the user
/// tower's (`dropout_seed ^ 1`).
fn encode_towers(
    model: &Dssm,
    users: &SideBatch,
    items: &SideBatch,
    dropout_seed: u64,
) -> Result<(Tensor, Tensor), TrainError> {
    let u = model
        .encode_users(users, Mode::Train { seed: dropout_seed })
        .map_err(TrainError::model)?;
    let v = model
        .encode_items(
            items,
            Mode::Train {
                seed: dropout_seed ^ 1,
            },
        )
        .map_err(TrainError::model)?;
    Ok((u, v))
}

/// BPR or sampled softmax of users `u` against their positives then `k` negatives each in `v`.
fn pairwise_loss(
    context: &LossInputs<'_>,
    rows: &EpochRows,
    model: &Dssm,
    u: &Tensor,
    v: &Tensor,
    range: std::ops::Range<usize>,
) -> candle_core::Result<Tensor> {
    let (config, item_q) = (context.config, context.item_q);
    let device = &context.inputs.device;
    let (start, end) = (range.start, range.end);
    let (b, k) = (end - start, rows.k);
    let msg = |e: TrainError| candle_core::Error::Msg(e.to_string());
    let v_pos = v.narrow(0, 0, b)?;
    let v_neg = v.narrow(0, b, b * k)?;
    let d = u.dim(1)?;
    let u_rep = u
        .unsqueeze(1)?
        .broadcast_as((b, k, d))?
        .contiguous()?
        .reshape((b * k, d))?;
    let pos = model
        .score_pairs(u, &v_pos)
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let neg = model
        .score_pairs(&u_rep, &v_neg)
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?
        .reshape((b, k))?;
    if config.loss.kind == LossKind::Bpr {
        return crate::loss::bpr(&pos, &neg);
    }
    let q = match &item_q.sampler {
        Some(p) => {
            let positives = &rows.items[start..end];
            let negatives = &rows.negatives[start * k..end * k];
            // `negatives_only`: the positive's offset is 0 (ln q = 0 for q = 1).
            let qp = match config.loss.logq {
                LogQTarget::All => log_q(positives, &[b], |i| p[i], device).map_err(msg)?,
                LogQTarget::NegativesOnly => {
                    log_q(positives, &[b], |_| 1.0, device).map_err(msg)?
                }
            };
            let qn = log_q(negatives, &[b, k], |i| p[i], device).map_err(msg)?;
            Some((qp, qn))
        }
        None => None,
    };
    crate::loss::sampled_softmax(
        &pos,
        &neg,
        config.loss.temperature,
        q.as_ref().map(|(a, b)| (a, b)),
    )
}
