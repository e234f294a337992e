//! Recommendations from a trained run folder, for the `dssm` command line and the HTTP server.
//!
//! [`Recommender::load`] reads a run folder once: the best checkpoint, the dataset's vocabularies
//! (to encode new users), item metadata and every user's interactions; it embeds every item and
//! every known user (as a test query would see them) and builds an exact or HNSW index over the
//! candidates (items with a train interaction). Then it answers:
//!
//! - a known user by key ([`User::Known`]): the precomputed vector, or, with `recent_items`
//!   (oldest first, newest last), the user tower run on the stored features and those items (a
//!   sequence tower: after the user's own train and validation items);
//! - a new user by features ([`User::New`]) and optional recent items: the user tower
//!   (`Mode::Eval`) on one row (a sequence tower: over the recent items alone, through the
//!   token table computed at load);
//! - exclusions (seen items, given ids), item-to-item similarity, the user vector itself, and the
//!   `leave-last-out` evaluation and the Parquet export of the run.
//!
//! Bad queries are [`Error`]s naming the field ([`Error::field`]); they never panic.
//!
//! ```no_run
//! use dssm_recommend::{IndexKind, Query, Recommender, User};
//! let recommender = Recommender::load("runs/ml-1m-leave-last-out".as_ref(), IndexKind::Exact)?;
//! let features = vec![("gender".to_string(), "F".to_string()), ("age".into(), "25".into())];
//! let mut query = Query::new(User::New(features), 10);
//! query.recent_items = vec![1193, 661];
//! let top = recommender.recommend(&query)?;
//! assert!(top.items.len() <= 10);
//! # Ok::<(), dssm_recommend::Error>(())
//! ```
#![deny(missing_docs)]

mod encode;
mod error;
mod evaluate;
mod export;
mod query;
mod recommender;
mod run;

pub use dssm_data::Split;
pub use dssm_retrieval::{HnswConfig, ScoredItem};
pub use encode::{HISTORY_FEATURE, RECENT_FEATURE};
pub use error::{Error, Result};
pub use evaluate::{RetrievalRecord, VariantMetrics};
pub use export::{ExportManifest, ExportedFile, ExportedIndex, export_files};
pub use query::{MAX_IDS, MAX_K, Query, Recommendation, User, UserVector};
pub use recommender::{IndexKind, ItemView, Recommender, UserView, saved_index_path};
pub use run::DatasetRecord;
