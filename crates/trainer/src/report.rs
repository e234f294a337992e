//! What a run writes: one [`EpochRecord`] per line of `metrics.jsonl`, the final
//! [`FinalMetrics`] in `metrics.json`, and the values returned to the caller.

use std::path::PathBuf;

use dssm_retrieval::RankingReport;
use serde::{Deserialize, Serialize};

use crate::config::RunConfig;
use crate::metrics::PointwiseMetrics;

/// One line of `metrics.jsonl`: one epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training loss over the epoch's steps.
    pub train_loss: f64,
    /// Training rows seen (rated rows plus sampled negatives).
    pub train_rows: usize,
    /// Optimizer steps in the epoch.
    pub steps: usize,
    /// Learning rate of the epoch's last step.
    pub lr: f64,
    /// Training rows per second of training time (validation excluded).
    pub samples_per_sec: f64,
    /// Seconds since the run (or the resumed run) started, at the end of the epoch.
    pub wall_s: f64,
    /// Validation metrics, when the epoch was validated (`seed` protocol).
    pub val: Option<PointwiseMetrics>,
    /// Validation HR@50, when validated under `leave-last-out`.
    pub val_hit_rate: Option<f64>,
    /// Validation NDCG@50, when validated under `leave-last-out` (absent from `seed` records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_ndcg: Option<f64>,
}

/// The dataset a run used, as recorded in `metrics.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetInfo {
    /// The dataset folder.
    pub path: PathBuf,
    /// The dataset name from its manifest (e.g. `ml-1m`).
    pub name: String,
    /// The protocol it was prepared for.
    pub protocol: String,
    /// The split seed from its manifest.
    pub split_seed: Option<u64>,
    /// FNV-1a 64 checksum (hex) of the manifest file's bytes, which list the source files' md5.
    pub manifest_checksum: String,
}

/// `metrics.json`: the final record of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FinalMetrics {
    /// `seed` or `leave-last-out`.
    pub protocol: String,
    /// The dataset.
    pub dataset: DatasetInfo,
    /// The run's seed (`train.seed`).
    pub seed: u64,
    /// The whole configuration.
    pub config: RunConfig,
    /// Crate version and git commit of the code that trained.
    pub code_version: String,
    /// The validation metric that selected the checkpoint.
    pub select_metric: String,
    /// The epoch of the best validation (the checkpoint evaluated on test).
    pub best_epoch: usize,
    /// Epochs trained.
    pub epochs_completed: usize,
    /// Whether early stopping ended the run.
    pub stopped_early: bool,
    /// Validation metrics of the best checkpoint.
    pub val: Option<PointwiseMetrics>,
    /// Test metrics of the best checkpoint, computed once at the end.
    pub test: Option<PointwiseMetrics>,
    /// Validation HR@50 of the best checkpoint (`leave-last-out`).
    pub val_hit_rate: Option<f64>,
    /// Id of the evaluated checkpoint: `best@epoch<N>:<weights checksum>`.
    pub checkpoint: String,
    /// Wall time of the whole run in seconds (this process only when resumed).
    pub wall_s: f64,
    /// Training rows per second over all epochs (training time only).
    pub train_samples_per_sec: f64,
    /// What ran the training steps: `fused` (the CPU engine) or `candle`.
    #[serde(default)]
    pub engine: String,
    /// Peak resident memory of the process in MiB (Linux `VmHWM`; absent elsewhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rss_mib: Option<f64>,
    /// Full-catalogue retrieval metrics (`leave-last-out` only; absent from `seed` records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retrieval: Option<RetrievalMetrics>,
}

/// The `leave-last-out` section of `metrics.json`: every user's held-out item ranked against all
/// candidates (the items with at least one train interaction), equal scores by the lower item
/// row. Reports at the protocol cut-offs 10, 20, 50, 100 plus MRR. The `unmasked` variant keeps
/// the user's train items in the ranking (DeepMatch, torch-rechub); `masked` removes them (the
/// validation item stays in the ranking at test time, PROTOCOLS.md); `masked_all` removes the
/// query's whole history, the validation item too (SASRec, HSTU, RecBole's full-sort test).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetrievalMetrics {
    /// Number of candidate items.
    pub candidates: usize,
    /// The best checkpoint on the validation split, `unmasked`.
    pub val: Option<RankingReport>,
    /// The popularity baseline on the validation split, `unmasked`.
    pub popularity_val: RankingReport,
    /// The best checkpoint on the test split: `unmasked`, `masked`, then `masked_all`. Empty
    /// until the test split is evaluated.
    pub test: Vec<RankingReport>,
    /// The popularity baseline (train interaction counts) on the test split: `unmasked`,
    /// `masked`, then `masked_all`.
    pub popularity_test: Vec<RankingReport>,
}

/// What [`crate::train`] returns.
#[derive(Debug, Clone)]
pub struct TrainReport {
    /// The run folder.
    pub run_dir: PathBuf,
    /// The final record, as written to `metrics.json`.
    pub metrics: FinalMetrics,
    /// Every epoch's record, as in `metrics.jsonl` (after a resume, the earlier calls' too).
    pub epochs: Vec<EpochRecord>,
    /// Epochs trained by this call: `epochs.len()` for a fresh run, only the remaining ones for
    /// a resumed run.
    pub epochs_trained: usize,
}

/// What [`crate::evaluate_run`] returns.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalReport {
    /// The run folder.
    pub run_dir: PathBuf,
    /// `val` or `test`.
    pub split: String,
    /// The metrics.
    pub metrics: PointwiseMetrics,
    /// The evaluated checkpoint id.
    pub checkpoint: String,
    /// Seconds.
    pub wall_s: f64,
}
