//! The errors of loading a run and answering queries.

use std::path::PathBuf;

/// What went wrong. Query errors ([`Error::is_bad_query`]) name the field of the query at fault,
/// so a server can answer them with a 4xx.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The run folder could not be loaded (missing files, a corrupt checkpoint, its dataset gone).
    #[error("cannot load the run in {}", path.display())]
    Load {
        /// The run folder.
        path: PathBuf,
        /// Why.
        source: dssm_trainer::TrainError,
    },
    /// The run folder or its dataset is inconsistent.
    #[error("{}: {message}", path.display())]
    Run {
        /// The file or folder at fault.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A file could not be read or written.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was attempted.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A user key that is not in the dataset.
    #[error(
        "user_id: user {key:?} is not in the dataset ({users} users, e.g. {}); describe a new user \
         by features instead", examples.join(", ")
    )]
    UnknownUser {
        /// The key asked for.
        key: String,
        /// How many users the dataset has.
        users: usize,
        /// A few keys that exist.
        examples: Vec<String>,
    },
    /// Item ids that are not in the catalogue.
    #[error("{field}: unknown movie id(s) {}", join(ids))]
    UnknownItems {
        /// The query field (`recent_items`, `exclude`, `movie_id`).
        field: &'static str,
        /// The ids not found, in the order given.
        ids: Vec<u32>,
    },
    /// A feature name the model's user tower does not use.
    #[error("features.{name}: the model has no user feature {name:?} (it uses: {})", known.join(", "))]
    UnknownFeature {
        /// The name given.
        name: String,
        /// The names it accepts (features and their source columns).
        known: Vec<String>,
    },
    /// A value outside its allowed range.
    #[error("{field}: {message}")]
    Invalid {
        /// The query field.
        field: &'static str,
        /// What is allowed.
        message: String,
    },
    /// The model failed (a bug or a device problem, not the query's fault).
    #[error("model: {0}")]
    Model(#[from] dssm_model::ModelError),
    /// The tensor library failed.
    #[error("model: {0}")]
    Tensor(#[from] candle_core::Error),
    /// The search failed.
    #[error("retrieval: {0}")]
    Retrieval(#[from] dssm_retrieval::Error),
    /// The trainer's machinery failed.
    #[error("{0}")]
    Trainer(#[from] dssm_trainer::TrainError),
    /// A JSON record could not be written.
    #[error("cannot serialise {what}: {source}")]
    Json {
        /// The record.
        what: &'static str,
        /// The cause.
        source: serde_json::Error,
    },
}

impl Error {
    /// True for errors caused by the query (unknown ids or features, out-of-range values), false
    /// for errors of the run or the machinery.
    pub fn is_bad_query(&self) -> bool {
        matches!(
            self,
            Error::UnknownUser { .. }
                | Error::UnknownItems { .. }
                | Error::UnknownFeature { .. }
                | Error::Invalid { .. }
        )
    }

    /// The query field at fault, for [`Error::is_bad_query`] errors.
    pub fn field(&self) -> Option<String> {
        match self {
            Error::UnknownUser { .. } => Some("user_id".into()),
            Error::UnknownItems { field, .. } | Error::Invalid { field, .. } => {
                Some((*field).into())
            }
            Error::UnknownFeature { name, .. } => Some(format!("features.{name}")),
            _ => None,
        }
    }
}

fn join(ids: &[u32]) -> String {
    let shown: Vec<String> = ids.iter().take(20).map(u32::to_string).collect();
    let more = ids.len().saturating_sub(shown.len());
    if more > 0 {
        format!("{} (and {more} more)", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
