//! The crate's error type.

use std::path::PathBuf;
use std::time::Duration;

/// What went wrong talking to Milvus. Every variant names the operation and, where there is one,
/// the collection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The URI is not one a gRPC channel can use.
    #[error("invalid Milvus URI {uri:?}: {message}")]
    InvalidUri {
        /// The URI as given.
        uri: String,
        /// Why.
        message: String,
    },
    /// No connection could be made.
    #[error("cannot connect to Milvus at {uri}: {message}")]
    Connect {
        /// The URI.
        uri: String,
        /// The transport's reason.
        message: String,
    },
    /// The call failed below Milvus: transport, HTTP/2 or a gRPC status other than OK.
    #[error("Milvus {operation} on collection {collection:?} failed: gRPC {code}: {message}")]
    Rpc {
        /// The RPC (`CreateCollection`, `Search`, ...).
        operation: &'static str,
        /// The collection it was about.
        collection: String,
        /// The gRPC status code, in words.
        code: String,
        /// The gRPC status message.
        message: String,
    },
    /// Milvus answered with a failure status.
    #[error(
        "Milvus {operation} on collection {collection:?} failed: code {code} (error_code {error_code}): {reason}"
    )]
    Milvus {
        /// The RPC.
        operation: &'static str,
        /// The collection it was about.
        collection: String,
        /// `Status.code` (Milvus 2.3 and later).
        code: i32,
        /// `Status.error_code` (the deprecated enum older servers set).
        error_code: i32,
        /// `Status.reason`.
        reason: String,
    },
    /// Milvus answered with something this client cannot read (ids of the wrong type, counts that do
    /// not add up).
    #[error("Milvus {operation} on collection {collection:?}: unexpected answer: {message}")]
    Response {
        /// The RPC.
        operation: &'static str,
        /// The collection.
        collection: String,
        /// What was wrong.
        message: String,
    },
    /// The caller's input does not fit (vector length not a multiple of the dimension, id count
    /// different from the row count, `k` of 0).
    #[error("{operation} on collection {collection:?}: {message}")]
    Input {
        /// The operation.
        operation: &'static str,
        /// The collection.
        collection: String,
        /// What was wrong.
        message: String,
    },
    /// Something did not happen in time (a collection that does not finish loading).
    #[error("{operation} on collection {collection:?} did not finish within {waited:?}")]
    Timeout {
        /// The operation.
        operation: &'static str,
        /// The collection.
        collection: String,
        /// How long we waited.
        waited: Duration,
    },
    /// A local Milvus Lite server could not be started (see [`crate::lite`]).
    #[error("cannot start Milvus Lite ({program}): {message}")]
    Lite {
        /// The program run.
        program: PathBuf,
        /// Why, with the end of its output where there was some.
        message: String,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
