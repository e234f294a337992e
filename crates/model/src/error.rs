//! The crate's error type.

use std::path::PathBuf;

use crate::config::{ConfigError, Side};

/// Everything that can go wrong while building, running, saving or loading a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// The configuration failed [`crate::ModelConfig::check`].
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A batch does not match the configured features of its side.
    #[error("bad {side} batch, feature `{feature}`: {problem}")]
    Batch {
        /// The tower the batch was given to.
        side: Side,
        /// The feature (or `columns` for the whole batch).
        feature: String,
        /// What was expected and what was found.
        problem: String,
    },
    /// Embeddings given to a scoring function have the wrong shape.
    #[error("bad {what}: {problem}")]
    Shape {
        /// Which argument.
        what: &'static str,
        /// What was expected and what was found.
        problem: String,
    },
    /// A Candle operation failed.
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// Reading or writing a file failed.
    #[error("cannot access `{path}`: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// `model.json` could not be written or parsed.
    #[error("bad model config file `{path}`: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
    /// A weights file does not fit the model described by its config.
    #[error("bad weights file `{path}`: {problem}")]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What was expected and what was found.
        problem: String,
    },
    /// A part of the library cannot run this configuration.
    #[error("{what} does not support {problem}")]
    Unsupported {
        /// The part (e.g. `the CPU engine`).
        what: &'static str,
        /// What it cannot run.
        problem: String,
    },
    /// A device specification could not be honoured.
    #[error("cannot use device `{spec}`: {problem}")]
    Device {
        /// The specification as given.
        spec: String,
        /// Why not.
        problem: String,
    },
}
