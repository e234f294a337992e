//! MovieLens ingestion for the DSSM workspace: parsers for MovieLens-1M and MovieLens-100K
//! (folder or zip), the optional download of `ml-1m.zip`, a seeded synthetic generator, the
//! `seed` and `leave-last-out` splits, vocabularies and statistics fitted on the train split only,
//! and the writer and reader of the dataset folder described in ARCHITECTURE.md.
//!
//! The CLI calls [`prepare`]; everything after it opens the folder with [`Dataset::open`].
//!
//! ```
//! use dssm_data::{prepare, Dataset, DatasetKind, PrepareRequest, Protocol, Source, Split,
//!     SyntheticConfig};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let config = SyntheticConfig { users: 80, items: 60, ratings: 2_000, ..Default::default() };
//! let mut request = PrepareRequest::new(
//!     Source::Synthetic(config), DatasetKind::Synthetic, dir.path().join("synthetic-llo"));
//! request.protocol = Protocol::LeaveLastOut;
//! let summary = prepare(&request, &|_stage| {})?;
//! assert_eq!(summary.rows.test, 80); // one test row per user
//!
//! let dataset = Dataset::open(&summary.out_dir)?;
//! let train = dataset.interactions(Split::Train)?;
//! assert_eq!(train.len() as u64, summary.rows.train);
//! // Encode a new user's attributes with the train-fitted vocabularies (0 = unknown).
//! let gender = dataset.vocabularies.encode("gender", "F")?;
//! assert!(gender > 0);
//! # Ok::<(), dssm_data::DataError>(())
//! ```
//!
//! # Crate features
//! - `download` (default): fetch `ml-1m.zip` from GroupLens when no local copy is given
//!   ([`source::ensure_ml1m_zip`]). Without it, [`Source::Download`] fails with a message saying
//!   where to place the zip by hand.
#![deny(missing_docs)]

pub mod dataset;
pub mod encode;
pub mod error;
mod features;
mod log;
pub mod movielens;
pub mod prepare;
pub mod raw;
pub mod source;
pub mod spec;
pub mod split;
pub mod synthetic;
mod table;

pub use dataset::{
    Attributes, Dataset, FeatureColumn, FeatureSpec, FeatureTable, FeatureValues, Interactions,
    ItemTable, Manifest, Schema, SplitCounts, UserTable,
};
pub use encode::{FeatureKind, ItemStatistics, MinFrequency, Side, Vocabularies, Vocabulary};
pub use error::{DataError, LineProblem};
pub use prepare::{
    PrepareRequest, PrepareStage, PrepareSummary, Source, SpecOutput, load_raw, prepare,
    prepare_spec,
};
pub use raw::{RawData, RawMovie, RawRating, RawUser, SourceFile};
pub use source::DatasetKind;
pub use spec::{DatasetSpec, FeatureDecl, LabelRule, SplitSpec};
pub use split::{Protocol, Split, SplitRule};
pub use synthetic::{SyntheticConfig, SyntheticFiles};
pub use table::parse_time;
