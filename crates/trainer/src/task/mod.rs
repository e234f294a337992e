//! Tasks: what the learner trains. A task builds an epoch's batches from (seed, epoch), computes
//! the loss of a batch, validates a model and writes the test figures into the final report; the
//! learner ([`crate::learner`]) knows nothing else about the protocol. Three tasks today:
//! [`pointwise::PointwiseTask`] (`seed`: AUC, log loss, GAUC) and [`retrieval::RetrievalTask`]
//! (`leave-last-out` and `time`: full-catalogue HR/NDCG/MRR), and [`sequence::SequenceTask`], the
//! sequence tower's next-item task over the same queries. A new one is a module here and a variant
//! in [`build`].

pub(crate) mod pointwise;
pub(crate) mod retrieval;
pub(crate) mod sampled;
pub(crate) mod sequence;

use dssm_model::Dssm;
use dssm_retrieval::{PROTOCOL_CUTOFFS, ProtocolVariant, RankingReport};

use crate::config::{RunConfig, SelectMetric};
use crate::error::TrainError;
use crate::inputs::Inputs;
use crate::metrics::PointwiseMetrics;
use crate::report::{EpochRecord, FinalMetrics, RetrievalMetrics};
use crate::retrieval::{HeldOut, RetrievalSetup, SELECT_CUTOFF, describe};
use crate::step::{StepLoss, Stepper};

/// An epoch's batches, as the learner sees them.
pub(crate) trait Batches {
    /// Optimizer steps in the epoch.
    fn steps(&self) -> usize;
    /// Training rows in the epoch (the progress bar's length).
    fn rows(&self) -> usize;
    /// Rows of batch `step`.
    fn batch_rows(&self, step: usize) -> usize;
    /// Rows seen by the loss, negatives included (the records' `train_rows`).
    fn samples(&self) -> usize;
}

/// What the learner trains: see the module docs.
pub(crate) trait Task {
    /// One epoch's batches.
    type Batches: Batches;
    /// Host buffers reused from step to step.
    type Buffers: Default;

    /// Called before [`epoch`](Self::epoch) with the model as it stands at the start of
    /// `epoch` (0-based): a task whose batches depend on the model (offline hard-negative
    /// mining) refreshes that state here. Provided: nothing to do.
    fn prepare_epoch(&self, _epoch: usize, _model: &Dssm) -> Result<(), TrainError> {
        Ok(())
    }

    /// The batches of `epoch` (0-based), from (seed, epoch) alone (and what
    /// [`prepare_epoch`](Self::prepare_epoch) mined).
    fn epoch(&self, epoch: usize) -> Result<Self::Batches, TrainError>;

    /// The loss of batch `step`, computed by `stepper`; dropout masks from `dropout_seed`.
    fn loss(
        &self,
        batches: &Self::Batches,
        step: usize,
        stepper: &mut Stepper<'_>,
        dropout_seed: u64,
        buffers: &mut Self::Buffers,
    ) -> Result<StepLoss, TrainError>;

    /// The validation metrics of `model`.
    fn validate(&self, model: &Dssm) -> Result<Validation, TrainError>;

    /// Fills the task's part of the final record before the test (baselines, the best
    /// validation's figures).
    fn report(&self, best: &Validation, metrics: &mut FinalMetrics);

    /// Evaluates the best checkpoint on the test split (read here, once) into `metrics`.
    fn test(&self, best: &Dssm, metrics: &mut FinalMetrics) -> Result<(), TrainError>;
}

/// The metrics of one validation.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Validation {
    /// AUC, log loss, GAUC (pointwise task).
    pub(crate) pointwise: Option<PointwiseMetrics>,
    /// The full-catalogue ranking, `train.select_ranking`'s variant (retrieval task).
    pub(crate) ranking: Option<RankingReport>,
}

impl Validation {
    /// The value of the selection metric (NaN when this validation does not measure it).
    pub(crate) fn value(&self, metric: SelectMetric) -> f64 {
        let at_select = self.ranking.as_ref().and_then(|r| r.at(SELECT_CUTOFF));
        match (metric, self.pointwise, at_select) {
            (SelectMetric::Auc, Some(v), _) => v.auc,
            (SelectMetric::Logloss, Some(v), _) => v.logloss,
            (SelectMetric::Gauc, Some(v), _) => v.gauc,
            (SelectMetric::HitRate, _, Some(m)) => m.hit_rate,
            _ => f64::NAN,
        }
    }

    /// The epoch record's validation fields.
    pub(crate) fn record_into(&self, record: &mut EpochRecord) {
        let at_select = self.ranking.as_ref().and_then(|r| r.at(SELECT_CUTOFF));
        record.val = self.pointwise;
        record.val_hit_rate = at_select.map(|m| m.hit_rate);
        record.val_ndcg = at_select.map(|m| m.ndcg);
    }

    /// The final record's validation fields (`val`, `val_hit_rate`).
    pub(crate) fn final_into(&self, metrics: &mut FinalMetrics) {
        let at_select = self.ranking.as_ref().and_then(|r| r.at(SELECT_CUTOFF));
        metrics.val = self.pointwise;
        metrics.val_hit_rate = at_select.map(|m| m.hit_rate);
    }

    /// The log line's tail: `, val auc .. logloss .. gauc ..` or `, val HR@50 .. NDCG@50 ..`.
    pub(crate) fn summary(&self) -> String {
        let at_select = self.ranking.as_ref().and_then(|r| r.at(SELECT_CUTOFF));
        match (self.pointwise, at_select) {
            (Some(v), _) => format!(
                ", val auc {:.4} logloss {:.4} gauc {:.4}",
                v.auc, v.logloss, v.gauc
            ),
            (None, Some(m)) => format!(
                ", val HR@{SELECT_CUTOFF} {:.4} NDCG@{SELECT_CUTOFF} {:.4} ({})",
                m.hit_rate,
                m.ndcg,
                self.ranking.as_ref().map_or("", |r| r.variant.as_str())
            ),
            (None, None) => String::new(),
        }
    }
}

/// One line per ranking report, for the log.
fn log_rankings(label: &str, reports: &[RankingReport]) {
    for report in reports {
        tracing::info!("  {label:<10} {}", describe(report));
    }
}

/// The `retrieval` section of the final record before the test: candidates, the best
/// validation ranking and the popularity baseline on validation.
pub(crate) fn retrieval_section(
    setup: &RetrievalSetup,
    popularity_val: &RankingReport,
    best: &Validation,
) -> RetrievalMetrics {
    RetrievalMetrics {
        candidates: setup.candidates(),
        val: best.ranking.clone(),
        popularity_val: popularity_val.clone(),
        test: Vec::new(),
        popularity_test: Vec::new(),
    }
}

/// Logs the model's `test` reports beside the popularity baseline's on `held_out` and stores
/// both in the final record's `retrieval` section.
pub(crate) fn record_test(
    setup: &RetrievalSetup,
    held_out: &HeldOut,
    test: Vec<RankingReport>,
    metrics: &mut FinalMetrics,
) -> Result<(), TrainError> {
    let popularity_test = setup.popularity(held_out, &ProtocolVariant::ALL, &PROTOCOL_CUTOFFS)?;
    tracing::info!(
        "test (best epoch {}, {} candidates, full ranking):",
        metrics.best_epoch,
        setup.candidates()
    );
    log_rankings("model", &test);
    log_rankings("popularity", &popularity_test);
    if let Some(section) = metrics.retrieval.as_mut() {
        section.test = test;
        section.popularity_test = popularity_test;
    }
    Ok(())
}

/// The task of `config`'s protocol over `inputs`.
pub(crate) enum AnyTask<'a> {
    /// `seed`.
    Pointwise(Box<pointwise::PointwiseTask<'a>>),
    /// `leave-last-out`, `time`.
    Retrieval(Box<retrieval::RetrievalTask<'a>>),
    /// `model.sequence`: next-item prediction under a retrieval protocol.
    Sequence(Box<sequence::SequenceTask<'a>>),
}

/// Builds the task of `config.data.protocol`.
pub(crate) fn build(config: &RunConfig, inputs: Inputs) -> Result<AnyTask<'_>, TrainError> {
    Ok(if config.model.sequence.enabled {
        AnyTask::Sequence(Box::new(sequence::SequenceTask::new(config, inputs)?))
    } else if config.data.protocol.is_retrieval() {
        AnyTask::Retrieval(Box::new(retrieval::RetrievalTask::new(config, inputs)?))
    } else {
        AnyTask::Pointwise(Box::new(pointwise::PointwiseTask::new(config, inputs)?))
    })
}

impl Batches for crate::batches::EpochRows {
    fn steps(&self) -> usize {
        crate::batches::EpochRows::steps(self)
    }
    fn rows(&self) -> usize {
        self.users.len()
    }
    fn batch_rows(&self, step: usize) -> usize {
        self.batch(step).0.len()
    }
    fn samples(&self) -> usize {
        crate::batches::EpochRows::samples(self)
    }
}
