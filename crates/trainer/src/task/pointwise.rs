//! The pointwise task (`seed` protocol): every rated train row with its label plus sampled
//! negatives; validated and tested by AUC, log loss and GAUC of the model's logits.

use dssm_data::Split;
use dssm_model::{Dssm, Mode};

use crate::batches::{EpochBuilder, EpochRows};
use crate::config::RunConfig;
use crate::error::TrainError;
use crate::inputs::{Inputs, SplitRows};
use crate::metrics::PointwiseMetrics;
use crate::report::FinalMetrics;
use crate::step::{LossInputs, StepBuffers, StepLoss, Stepper, batch_loss};
use crate::tables::GatherBuffers;
use crate::task::{Task, Validation};

/// See the module docs.
pub(crate) struct PointwiseTask<'a> {
    config: &'a RunConfig,
    inputs: Inputs,
    builder: EpochBuilder<'a>,
    val: SplitRows,
}

impl<'a> PointwiseTask<'a> {
    /// The task over `inputs`: reads the train and validation rows.
    pub(crate) fn new(config: &'a RunConfig, inputs: Inputs) -> Result<Self, TrainError> {
        let train = inputs.split(Split::Train)?;
        let val = inputs.split(Split::Val)?;
        let mut builder = EpochBuilder::new(config, &inputs, train)?;
        if config.sampler.hard.mine_every > 0 {
            let identity = (0..inputs.users.rows() as u32).collect();
            builder = builder.with_mining(&inputs, inputs.users.clone(), identity)?;
        }
        Ok(Self {
            config,
            inputs,
            builder,
            val,
        })
    }
}

impl Task for PointwiseTask<'_> {
    type Batches = EpochRows;
    type Buffers = StepBuffers;

    fn prepare_epoch(&self, epoch: usize, model: &Dssm) -> Result<(), TrainError> {
        self.builder.prepare(epoch, model, &self.inputs)
    }

    fn epoch(&self, epoch: usize) -> Result<EpochRows, TrainError> {
        self.builder.rows(epoch)
    }

    fn loss(
        &self,
        batches: &EpochRows,
        step: usize,
        stepper: &mut Stepper<'_>,
        dropout_seed: u64,
        buffers: &mut StepBuffers,
    ) -> Result<StepLoss, TrainError> {
        let context = LossInputs {
            config: self.config,
            inputs: &self.inputs,
            item_q: &self.builder.item_q,
        };
        batch_loss(&context, batches, step, stepper, dropout_seed, buffers)
    }

    fn validate(&self, model: &Dssm) -> Result<Validation, TrainError> {
        let batch_size = self.config.train.eval_batch_size;
        Ok(Validation {
            pointwise: Some(evaluate(model, &self.inputs, &self.val, batch_size)?),
            ranking: None,
        })
    }

    fn report(&self, _best: &Validation, _metrics: &mut FinalMetrics) {}

    fn test(&self, best: &Dssm, metrics: &mut FinalMetrics) -> Result<(), TrainError> {
        let rows = self.inputs.split(Split::Test)?;
        let test = evaluate(best, &self.inputs, &rows, self.config.train.eval_batch_size)?;
        tracing::info!(
            "test (best epoch {}): auc {:.4} logloss {:.4} gauc {:.4} ({} users)",
            metrics.best_epoch,
            test.auc,
            test.logloss,
            test.gauc,
            test.gauc_users
        );
        metrics.test = Some(test);
        Ok(())
    }
}

/// Logits of the model on every row of `rows`, in evaluation mode.
fn predict(
    model: &Dssm,
    inputs: &Inputs,
    rows: &SplitRows,
    batch_size: usize,
) -> Result<Vec<f32>, TrainError> {
    let mut logits = Vec::with_capacity(rows.users.len());
    let (mut user_buffers, mut item_buffers) = (GatherBuffers::default(), GatherBuffers::default());
    let (mc, device) = (&inputs.model_config, &inputs.device);
    for start in (0..rows.users.len()).step_by(batch_size.max(1)) {
        let end = (start + batch_size).min(rows.users.len());
        let users = inputs
            .users
            .batch(mc, &rows.users[start..end], &mut user_buffers, device)?;
        let items = inputs
            .items
            .batch(mc, &rows.items[start..end], &mut item_buffers, device)?;
        let out = model
            .forward(&users, &items, Mode::Eval)
            .map_err(TrainError::model)?;
        logits.extend(
            out.to_dtype(candle_core::DType::F32)
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(TrainError::tensor("reading evaluation logits"))?,
        );
    }
    Ok(logits)
}

/// AUC, log loss and GAUC of `model` on `rows`.
pub(crate) fn evaluate(
    model: &Dssm,
    inputs: &Inputs,
    rows: &SplitRows,
    batch_size: usize,
) -> Result<PointwiseMetrics, TrainError> {
    let logits = predict(model, inputs, rows, batch_size)?;
    Ok(PointwiseMetrics::from_logits(
        &logits,
        &rows.labels,
        &rows.users,
    ))
}
