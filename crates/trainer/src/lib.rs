//! Training loop for the DSSM two-tower model: the run config (TOML, validated), batches gathered
//! from the dataset folder, negatives through `dssm-sampler`, losses (BCE, BPR, in-batch and
//! sampled softmax with log-Q), optimizers with saveable state (Adam, AdamW, SGD with momentum,
//! Adagrad) and a step/warm-up schedule, validation (AUC, log loss, GAUC), best-by-validation
//! checkpoints, early stopping and exact resume.
//!
//! *Invariant:* the test split is read once, at the end of [`train`], with the best-validation
//! checkpoint reloaded from disk.
//!
//! # How a run is put together
//! [`train`] builds the run's inputs, the task of its protocol (the pointwise task of `seed`, the
//! retrieval task of `leave-last-out` and `time`) and a learner. The learner owns the loop (epochs,
//! schedule, optimizer steps, validation, early stopping, resume, metrics files) and drives the
//! task, which builds each epoch's batches from (seed, epoch), computes a batch's loss, validates
//! and writes the test figures. Checkpoint decisions are values ([`policy::CheckpointAction`],
//! decided by [`policy::after_epoch`]) that the run folder carries out.
//!
//! # The `seed` protocol recipe
//! Each epoch trains on the rated train rows (label = rating > 3) plus
//! `sampler.negatives_per_positive` sampled negatives per positive train row: items drawn by
//! popularity (`train_count^alpha`), each paired with a uniformly random user, labelled 0. A
//! sampled pair that is a rated train pair is redrawn (`sampler.exclude_positives`). Negatives and
//! the row order depend only on (seed, epoch); dropout masks on (seed, epoch, step).
//!
//! # The `leave-last-out` protocol recipe
//! Every train interaction is a positive training row, whatever its rating. Losses:
//! `in_batch_softmax` (the batch's other items are the negatives; log-Q subtracts ln of the
//! item's share of the train interactions), `sampled_softmax` or `bce` with negatives from the
//! sampler. Each validation ranks every user's validation item against all candidates (items with
//! a train interaction) with `dssm-retrieval`'s exact index, `unmasked`; the best checkpoint is
//! the one with the highest HR@50 (`select_metric = "hit_rate"`). At the end the test item is
//! ranked once, under every variant (`unmasked`, `masked`, `masked_all`), beside the popularity baseline:
//! [`RetrievalMetrics`] in `metrics.json`. `features.history_len` adds a user feature of the
//! items just before each interaction (see [`config::FeaturesConfig::history_len`]), and
//! `features.recent_len` a second one of the most recent of them
//! ([`config::FeaturesConfig::recent_len`]). `loss.shared_negatives` adds sampled items to
//! in-batch softmax ([`config::LossConfig::shared_negatives`]).
//!
//! With `[model.sequence]` the user tower is a causal self-attention tower over the user's train
//! items ([`config::SequenceSection`]), trained on every position of each user's newest
//! `max_len` items (or other windows: [`config::SequenceSection::windows`]) to predict the next
//! item, with `full_softmax` over the catalogue or `in_batch_softmax`: the batch's targets plus
//! `loss.shared_negatives` sampled items, log-Q by expected count, for catalogues too large for a
//! full softmax per step. Validation and test queries are the retrieval task's.
//!
//! # Who computes the steps
//! `train.engine` (default `auto`): dssm-model's CPU engine where it can run the config (CPU,
//! (multi-)categorical features, BCE or in-batch softmax), Candle's autograd otherwise; both give the
//! same results up to float rounding, and neither depends on the thread count. `metrics.json`
//! records which one ran (`engine`) and the process's peak memory (`peak_rss_mib`).
//!
//! # The run folder
//! ```text
//! <run>/config.toml            the config as used
//!       run.json               seed, code version, dataset (absolute path, manifest checksum)
//!       dataset-manifest.json  a copy of the dataset's manifest
//!       metrics.jsonl          one line per epoch (EpochRecord)
//!       metrics.json           the final record (FinalMetrics): val and test of the best epoch
//!                              (leave-last-out: its `retrieval` section)
//!       training.svg           training loss and validation metrics by epoch
//!       checkpoints/best/      model.safetensors, model.json, state.json
//!       checkpoints/last/      the same plus optimizer.safetensors/.json (for resume)
//! ```
//! Checkpoints are written to a temporary folder and renamed into place.
//!
//! # Example
//! ```
//! use dssm_trainer::{RunConfig, TrainOptions};
//! let config = RunConfig::from_toml_str(r#"
//!     [data]
//!     path = "datasets/prepared/synthetic-seed"
//!     [train]
//!     epochs = 2
//!     [output]
//!     dir = "runs/example"
//! "#)?;
//! assert_eq!(config.loss.kind, dssm_trainer::config::LossKind::Bce);
//! let options = TrainOptions { resume: true, ..TrainOptions::default() };
//! // dssm_trainer::train(&config, &options)? trains (needs the dataset folder).
//! # let _ = options;
//! # Ok::<(), dssm_trainer::ConfigError>(())
//! ```
#![deny(missing_docs)]

mod batches;
pub mod config;
mod error;
mod explain;
mod fused;
mod history;
mod inputs;
mod learner;
mod logq;
pub mod loss;
pub mod metrics;
mod mining;
pub mod optim;
mod plot;
pub mod policy;
mod provenance;
pub mod report;
mod retrieval;
mod run;
mod run_folder;
mod seeds;
mod sequence_encoder;
mod step;
mod tables;
mod task;
mod train;

pub use config::{ConfigError, RunConfig};
pub use dssm_data::Split;
pub use error::TrainError;
pub use explain::{
    DEFAULT_ITEM_SEGMENT, DEFAULT_USER_SEGMENT, ExplainOptions, FieldWeights, IMPORTANCE_JSON,
    IMPORTANCE_SVG, SegmentWeights, SenetImportance, TowerImportance, explain_run,
    senet_importance,
};
pub use plot::training_svg;
pub use provenance::checksum;
pub use report::{EpochRecord, EvalReport, FinalMetrics, RetrievalMetrics, TrainReport};
pub use run::{LoadedRun, evaluate_run, load_run};
pub use run_folder::layout;
pub use sequence_encoder::SequenceEncoder;
pub use train::{TrainOptions, train};
