//! Top-K retrieval over plain `f32` embedding matrices, for the DSSM two-tower recommender.
//!
//! - [`TopK`]: one interface (after TFRS's `TopK` layer) for [`ExactIndex`] (blocked matrix products,
//!   bounded selection, rayon) and [`HnswIndex`] (approximate, our own HNSW graph, saved as one memory-mapped file). Scores are inner products;
//!   results are sorted by descending score, equal scores by the lower item id. Per-query
//!   [`Exclusions`] remove already-seen items.
//! - Ranking metrics for the `leave-last-out` protocol: [`rank_of_target`], [`RankingReport`] (HR@K =
//!   Recall@K, NDCG@K, MRR), the [`ProtocolVariant`]s `unmasked`, `masked` and `masked_all` (over [`SeenItems`]), and the
//!   [`PopularityBaseline`].
//! - Embedding files in Parquet: [`write_embeddings`] and [`read_embeddings`].
//!
//! *Invariant:* no Candle and no model code; this crate sees only matrices of embeddings and `u32` ids.
//!
//! ```
//! use dssm_retrieval::{
//!     EmbeddingMatrix, ExactIndex, Exclusions, MatrixView, ProtocolVariant, RankingReport, SeenItems, TopK,
//! };
//!
//! // Three items in 2-d, two users.
//! let items = EmbeddingMatrix::new(vec![1, 2, 3], 2, vec![1.0, 0.0, 0.0, 1.0, 0.7, 0.7])?;
//! let users = [1.0, 0.1, 0.0, 1.0];
//! let index = ExactIndex::new(items);
//! let queries = MatrixView::new(&users, 2)?;
//! let top = index.top_k(queries, 2, None)?;
//! assert_eq!(top[0][0].id, 1);
//! assert_eq!(top[1][0].id, 2);
//!
//! // Leave-last-out: user 0's target is item 3, user 1's is item 3; user 1 trained on item 2.
//! let train = SeenItems::train_only(Exclusions::from_rows([vec![], vec![2]]));
//! let variant = ProtocolVariant::Masked;
//! let ahead = index.items_ahead_of_targets(queries, &[3, 3], variant.exclusions(&train))?;
//! assert_eq!(ahead, vec![Some(1), Some(0)]);
//! let report = RankingReport::from_items_ahead(variant.name(), &ahead, &[1, 10]);
//! assert_eq!(report.at(1).unwrap().hit_rate, 0.5);
//! # Ok::<(), dssm_retrieval::Error>(())
//! ```
#![deny(missing_docs)]

mod embeddings;
mod error;
mod exact;
mod hnsw;
mod matrix;
mod metrics;
mod topk;

pub use embeddings::{EmbeddingFile, META_DIM, META_MODEL_ID, read_embeddings, write_embeddings};
pub use error::{Error, Result};
pub use exact::{DEFAULT_ITEM_BLOCK, DEFAULT_QUERY_BLOCK, ExactIndex};
pub use hnsw::{HnswConfig, HnswIndex, embeddings_checksum};
pub use matrix::{EmbeddingMatrix, Exclusions, MatrixView, ScoredItem};
pub use metrics::{
    MetricsAtK, PROTOCOL_CUTOFFS, PopularityBaseline, ProtocolVariant, RankingReport, SeenItems,
    rank_of_target, recall_at_k,
};
pub use topk::TopK;
