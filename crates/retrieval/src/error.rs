//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong in this crate.
///
/// Foreign errors (Arrow, Parquet, serde) are carried as messages, so that no third-party type leaks
/// into the public API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A matrix was given a dimension of zero.
    #[error("{what}: the dimension must be at least 1")]
    ZeroDim {
        /// Which matrix.
        what: &'static str,
    },
    /// The flat data length is not `rows * dim`.
    #[error("{what}: {len} values is not a multiple of the dimension {dim}")]
    Shape {
        /// Which matrix.
        what: &'static str,
        /// Number of values given.
        len: usize,
        /// Dimension given.
        dim: usize,
    },
    /// The number of ids differs from the number of rows.
    #[error("embedding matrix: {ids} ids for {rows} rows")]
    IdCount {
        /// Number of ids.
        ids: usize,
        /// Number of rows.
        rows: usize,
    },
    /// An item id appears more than once.
    #[error("embedding matrix: item id {id} appears more than once")]
    DuplicateId {
        /// The repeated id.
        id: u32,
    },
    /// A value is NaN or infinite.
    #[error("{what}: value at row {row}, column {col} is not finite ({value})")]
    NotFinite {
        /// Which matrix.
        what: &'static str,
        /// Row of the value.
        row: usize,
        /// Column of the value.
        col: usize,
        /// The value.
        value: f32,
    },
    /// Queries and items have different dimensions.
    #[error("queries have dimension {queries} but the index has dimension {index}")]
    DimMismatch {
        /// Dimension of the queries.
        queries: usize,
        /// Dimension of the indexed items.
        index: usize,
    },
    /// The exclusions do not have one row per query (or per target).
    #[error("exclusions have {exclusions} rows but there are {expected} queries")]
    ExclusionRows {
        /// Rows in the exclusions.
        exclusions: usize,
        /// Rows expected.
        expected: usize,
    },
    /// CSR offsets of the exclusions are malformed.
    #[error("exclusions: {reason}")]
    ExclusionOffsets {
        /// What is wrong with the offsets.
        reason: String,
    },
    /// The number of targets differs from the number of queries.
    #[error("{targets} targets for {queries} queries")]
    TargetCount {
        /// Number of targets.
        targets: usize,
        /// Number of queries.
        queries: usize,
    },
    /// An HNSW parameter is out of range.
    #[error("HNSW parameter {name} = {value}: expected {expected}")]
    HnswParam {
        /// Parameter name.
        name: &'static str,
        /// Value given.
        value: usize,
        /// The allowed range.
        expected: &'static str,
    },
    /// A file system operation failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An embedding file is unreadable or does not have the expected layout.
    #[error("embedding file {path}: {message}")]
    EmbeddingFile {
        /// The file.
        path: PathBuf,
        /// What was expected or what failed.
        message: String,
    },
    /// A file is not an HNSW index this version can read.
    #[error("HNSW index {path}: {message}")]
    HnswFile {
        /// The index file.
        path: PathBuf,
        /// What was expected or what failed.
        message: String,
    },
    /// A saved HNSW index is damaged: its checksum, sizes or links do not match its header.
    #[error("HNSW index {path} is corrupt ({reason}); rebuild it")]
    HnswCorrupt {
        /// The index file.
        path: PathBuf,
        /// What did not match.
        reason: String,
    },
    /// A saved HNSW index was built from other embeddings than the ones it is loaded for.
    #[error(
        "HNSW index {path} is stale: built from embeddings with checksum {built_from}, \
         the current embeddings have {given}; rebuild it"
    )]
    HnswStale {
        /// The index file.
        path: PathBuf,
        /// Checksum of the embeddings the index was built from.
        built_from: String,
        /// Checksum of the embeddings given.
        given: String,
    },
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
