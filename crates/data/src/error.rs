//! The crate's error type.

use std::fmt;
use std::path::PathBuf;

/// Everything that can go wrong while reading sources, preparing or opening a dataset folder.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// A file or folder could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A line of an input file is not what the format expects.
    #[error("{file}:{line}: {problem}")]
    Line {
        /// The file, e.g. `/data/ml-1m/ratings.dat` or `ml-1m.zip!ml-1m/ratings.dat`.
        file: String,
        /// 1-based line number.
        line: u32,
        /// What was wrong and what was expected.
        problem: LineProblem,
    },
    /// A source file is missing from a folder or an archive.
    #[error("{file}: not found in {container}")]
    MissingFile {
        /// The file that was expected.
        file: String,
        /// The folder or archive searched.
        container: String,
    },
    /// A zip archive is truncated, corrupt or unreadable.
    #[error("{}: not a readable zip archive ({message})", path.display())]
    Zip {
        /// The archive.
        path: PathBuf,
        /// What the zip reader reported.
        message: String,
    },
    /// A file's size or md5 differs from the expected one.
    #[error(
        "{}: checksum mismatch: expected {expected_bytes} bytes with md5 {expected_md5}, found {actual_bytes} bytes with md5 {actual_md5}",
        path.display()
    )]
    Checksum {
        /// The file checked.
        path: PathBuf,
        /// Expected size in bytes.
        expected_bytes: u64,
        /// Expected md5, lowercase hex.
        expected_md5: String,
        /// Actual size in bytes.
        actual_bytes: u64,
        /// Actual md5, lowercase hex.
        actual_md5: String,
    },
    /// A file of a dataset folder no longer has the size and md5 its manifest recorded.
    #[error(
        "{}: size or md5 differs from {} ({expected_bytes} bytes, md5 {expected_md5}; found {actual_bytes} bytes, md5 {actual_md5}): the file or the manifest changed after the dataset was written; prepare it again",
        path.display(),
        manifest.display()
    )]
    ChangedFile {
        /// The file checked.
        path: PathBuf,
        /// The manifest that recorded it.
        manifest: PathBuf,
        /// Recorded size in bytes.
        expected_bytes: u64,
        /// Recorded md5, lowercase hex.
        expected_md5: String,
        /// Actual size in bytes.
        actual_bytes: u64,
        /// Actual md5, lowercase hex.
        actual_md5: String,
    },
    /// The download failed (offline, timeout, HTTP error).
    #[error(
        "could not download {url}: {message}; download it by hand and place it at {}, or use `--dataset synthetic`",
        manual_path.display()
    )]
    Download {
        /// The URL tried.
        url: String,
        /// What went wrong.
        message: String,
        /// Where the zip is looked for when placed by hand.
        manual_path: PathBuf,
    },
    /// The download feature is disabled and no local source was given.
    #[error(
        "no local copy of MovieLens-1M and this build has no `download` feature; place ml-1m.zip at {}, or use `--dataset synthetic`",
        manual_path.display()
    )]
    DownloadDisabled {
        /// Where the zip is looked for when placed by hand.
        manual_path: PathBuf,
    },
    /// The destination dataset folder exists and `overwrite` was not set.
    #[error("{}: a dataset already exists here (set overwrite to replace it)", path.display())]
    DatasetExists {
        /// The destination folder.
        path: PathBuf,
    },
    /// A request or configuration is invalid.
    #[error("invalid configuration: {message}")]
    InvalidConfig {
        /// What is wrong.
        message: String,
    },
    /// A Parquet file could not be written or read, or has an unexpected layout.
    #[error("{}: {message}", path.display())]
    Parquet {
        /// The Parquet file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A JSON file could not be written or read.
    #[error("{}: {message}", path.display())]
    Json {
        /// The JSON file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A feature name is not in the vocabularies.
    #[error("unknown feature {name:?}")]
    UnknownFeature {
        /// The name asked for.
        name: String,
    },
    /// A dataset spec is not valid TOML or has an unknown key or a wrong type.
    #[error("{}:{line}:{column}: {message}", path.display())]
    Spec {
        /// The spec file.
        path: PathBuf,
        /// 1-based line (0 when unknown).
        line: usize,
        /// 1-based column (0 when unknown).
        column: usize,
        /// What the TOML reader reported.
        message: String,
    },
    /// A dataset spec parses but is inconsistent.
    #[error("{}: {message}", path.display())]
    SpecInvalid {
        /// The spec file.
        path: PathBuf,
        /// The key and what is wrong.
        message: String,
    },
    /// A table lacks a column the spec names.
    #[error("{}: no column {column:?} (columns: {})", path.display(), available.join(", "))]
    MissingColumn {
        /// The table file.
        path: PathBuf,
        /// The column asked for.
        column: String,
        /// The columns the file has.
        available: Vec<String>,
    },
    /// One cell of a table is not what its feature or role needs.
    #[error("{}: column {column:?}: {problem}", cell_place(path, *row, *line))]
    Cell {
        /// The table file.
        path: PathBuf,
        /// The column.
        column: String,
        /// 1-based data row (header excluded).
        row: u64,
        /// 1-based line in a CSV file (header included).
        line: Option<u64>,
        /// What was wrong and what was expected.
        problem: String,
    },
    /// A CSV file is malformed (wrong number of fields, not UTF-8).
    #[error("{}:{line}: {message}", path.display())]
    Csv {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: u64,
        /// What the CSV reader reported.
        message: String,
    },
    /// The data leaves nothing to train or evaluate on (no rows, an empty split, no positives).
    #[error("refusing degenerate data: {message}")]
    Degenerate {
        /// What is missing.
        message: String,
    },
}

fn cell_place(path: &std::path::Path, row: u64, line: Option<u64>) -> String {
    match line {
        Some(line) => format!("{}:{line}", path.display()),
        None => format!("{}: row {row}", path.display()),
    }
}

/// What was wrong with one line of an input file.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LineProblem {
    /// The line does not have the expected number of fields.
    FieldCount {
        /// The format expected, e.g. `UserID::MovieID::Rating[::Timestamp]`.
        expected: &'static str,
        /// Fields found.
        found: usize,
    },
    /// A field that must be a non-negative integer is not.
    NotANumber {
        /// The field name.
        field: &'static str,
        /// The raw text.
        value: String,
    },
    /// A rating outside 1..=5.
    RatingOutOfRange {
        /// The rating found.
        value: u32,
    },
    /// A field has a value outside its allowed set.
    InvalidValue {
        /// The field name.
        field: &'static str,
        /// What was expected.
        expected: &'static str,
        /// The raw text.
        value: String,
    },
    /// A rating names a user that is not in the users file.
    UnknownUser {
        /// The user id.
        id: u32,
    },
    /// A rating names a movie that is not in the movies file.
    UnknownMovie {
        /// The movie id.
        id: u32,
    },
    /// An id appears twice in the users or movies file.
    DuplicateId {
        /// `user` or `movie`.
        kind: &'static str,
        /// The id.
        id: u32,
        /// The 1-based line where it first appeared.
        first_line: u32,
    },
    /// The line is not valid text.
    NotUtf8,
}

impl fmt::Display for LineProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::FieldCount { expected, found } => {
                write!(f, "expected {expected}, found {found} field(s)")
            }
            Self::NotANumber { field, value } => {
                write!(
                    f,
                    "expected a non-negative integer {field}, found {value:?}"
                )
            }
            Self::RatingOutOfRange { value } => {
                write!(f, "expected a rating in 1..=5, found {value}")
            }
            Self::InvalidValue {
                field,
                expected,
                value,
            } => write!(f, "expected {field} to be {expected}, found {value:?}"),
            Self::UnknownUser { id } => {
                write!(f, "expected a user id listed in the users file, found {id}")
            }
            Self::UnknownMovie { id } => {
                write!(
                    f,
                    "expected a movie id listed in the movies file, found {id}"
                )
            }
            Self::DuplicateId {
                kind,
                id,
                first_line,
            } => write!(
                f,
                "expected unique {kind} ids, found {id} again (first on line {first_line})"
            ),
            Self::NotUtf8 => write!(f, "expected UTF-8 text"),
        }
    }
}

/// Runs a Parquet read, turning a panic of the Parquet reader on a corrupt file (it asserts on
/// some malformed metadata) into an error naming the file.
pub(crate) fn parquet_guard<T>(
    path: &std::path::Path,
    read: impl FnOnce() -> Result<T, DataError>,
) -> Result<T, DataError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(read)).unwrap_or_else(|panic| {
        let reason = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(DataError::parquet(
            path,
            format!("corrupt Parquet file (the reader failed: {reason})"),
        ))
    })
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn parquet(path: impl Into<PathBuf>, message: impl fmt::Display) -> Self {
        Self::Parquet {
            path: path.into(),
            message: message.to_string(),
        }
    }

    pub(crate) fn json(path: impl Into<PathBuf>, message: impl fmt::Display) -> Self {
        Self::Json {
            path: path.into(),
            message: message.to_string(),
        }
    }
}
