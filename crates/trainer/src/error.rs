//! The crate's error type.

use std::path::PathBuf;

use crate::config::ConfigError;

/// Everything that can stop a training or evaluation run. Foreign errors are carried as messages
/// with the context of what was being done.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// The run configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A file or folder could not be read or written.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done (`read`, `write`, `create folder`, ...).
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The dataset folder could not be read or does not fit the config.
    #[error("dataset {path}: {message}")]
    Dataset {
        /// The dataset folder.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The model could not be built, run, saved or loaded.
    #[error("model: {message}")]
    Model {
        /// What went wrong, with the model crate's context.
        message: String,
    },
    /// Negative sampling failed.
    #[error("sampler: {message}")]
    Sampler {
        /// What went wrong.
        message: String,
    },
    /// A tensor operation failed.
    #[error("tensor operation failed while {context}: {message}")]
    Tensor {
        /// What the loop was doing.
        context: &'static str,
        /// Candle's message.
        message: String,
    },
    /// The training loss became NaN or infinite.
    #[error(
        "training loss is {value} at epoch {epoch}, step {step}; stopped, the last good checkpoint is kept in {checkpoint}"
    )]
    NonFiniteLoss {
        /// 1-based epoch.
        epoch: usize,
        /// 0-based step within the epoch.
        step: usize,
        /// The loss value.
        value: f32,
        /// The folder holding the last good checkpoint.
        checkpoint: PathBuf,
    },
    /// A run folder or checkpoint is missing or does not match.
    #[error("run {path}: {message}")]
    Run {
        /// The run folder or checkpoint.
        path: PathBuf,
        /// What is missing or wrong.
        message: String,
    },
    /// A resume was asked for, but the run folder holds no checkpoint to continue from
    /// (neither `checkpoints/last` nor the `.old-last` copy an interrupted rename leaves).
    #[error(
        "cannot resume the run in {path}: it has no checkpoints/last to continue from; train without resume (or overwrite) to start afresh"
    )]
    NoCheckpointToResume {
        /// The run folder.
        path: PathBuf,
    },
    /// The checkpoint a resume would continue from is incomplete or cannot be read.
    #[error("cannot resume from {path}: {message}")]
    CorruptCheckpoint {
        /// The checkpoint folder.
        path: PathBuf,
        /// What is missing or unreadable.
        message: String,
    },
    /// The full-catalogue (`leave-last-out`) evaluation failed.
    #[error("retrieval evaluation: {message}")]
    Retrieval {
        /// What went wrong, with the retrieval crate's context.
        message: String,
    },
    /// The requested feature is not available in this configuration.
    #[error("unsupported: {message}")]
    Unsupported {
        /// What is not supported and what is.
        message: String,
    },
}

impl TrainError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| TrainError::Io {
            action,
            path,
            source,
        }
    }

    pub(crate) fn tensor(context: &'static str) -> impl FnOnce(candle_core::Error) -> Self {
        move |e| TrainError::Tensor {
            context,
            message: e.to_string(),
        }
    }

    pub(crate) fn model(e: impl std::fmt::Display) -> Self {
        TrainError::Model {
            message: e.to_string(),
        }
    }
}
