//! DSSM two-tower model on Candle: feature embeddings, SENet, MLP towers, dot/cosine similarity with a
//! temperature, a stable BCE with logits, a row-wise softmax cross-entropy ([`softmax_cross_entropy`],
//! the kernel of in-batch and sampled softmax), and safetensors save/load.
//!
//! Built from a [`ModelConfig`] (a list of [`FeatureSpec`]s); it knows nothing of datasets and does no IO
//! besides its own weights and config.
//!
//! # Tower
//! 1. Field embeddings `[B, F, E]`: categorical ids are looked up (id 0, the unknown value, has its own
//!    learned row); multi-categorical ids are looked up and pooled (mean or sum) over the non-zero ids,
//!    all-padding gives zeros; dense features are projected linearly (weight and bias) to `E`. All sparse
//!    fields of a side share one table (per-field row offsets), so a batch needs a single lookup.
//! 2. SENet (optional): squeeze each field by the mean (or max) over `E`, then
//!    `FC(F -> max(1, F / reduction)) -> ReLU -> FC(-> F) -> sigmoid`; the weights are per example and
//!    rescale that example's fields.
//! 3. Flatten to `[B, F * E]` and the MLP: `Linear -> activation -> dropout` between layers, a plain
//!    linear last layer, optional L2 normalisation.
//! 4. Parallel towers (optional, [`TowerConfig::branches`]): beside the MLP, on the same inputs, a
//!    DCN-v2 cross network and an FM bi-interaction, each projected to the output width. The score
//!    is a learned linear layer over the products of each branch's user and item outputs; its
//!    weights fold into the user vector (see [`ModelConfig::output_dim`]), so retrieval stays one
//!    dot product over precomputed item vectors.
//!
//! The score is `similarity(user, item) / temperature`, a logit.
//!
//! # Example
//! ```
//! use candle_core::Device;
//! use dssm_model::{Dssm, FeatureSpec, HostColumn, Mode, ModelConfig, Side, SideBatch};
//!
//! let config = ModelConfig {
//!     features: vec![
//!         FeatureSpec::categorical("user_id", Side::User, 100),
//!         FeatureSpec::categorical("gender", Side::User, 3),
//!         FeatureSpec::categorical("movie_id", Side::Item, 50),
//!         FeatureSpec::categorical("year", Side::Item, 10),
//!     ],
//!     ..ModelConfig::default()
//! };
//! let device = Device::Cpu;
//! let model = Dssm::new(config, 42, &device)?;
//! let users = SideBatch::from_host(model.config(), Side::User, 2,
//!     &[HostColumn::Ids(&[1, 2]), HostColumn::Ids(&[1, 2])], &device)?;
//! let items = SideBatch::from_host(model.config(), Side::Item, 2,
//!     &[HostColumn::Ids(&[7, 9]), HostColumn::Ids(&[0, 3])], &device)?;
//! let logits = model.forward(&users, &items, Mode::Eval)?;
//! assert_eq!(logits.dims(), &[2]);
//! # Ok::<(), dssm_model::ModelError>(())
//! ```
//!
//! # Training on the CPU
//! [`engine::CpuEngine`] runs the same forward and backward pass without Candle's graph, on flat
//! buffers through `gemm`, sharded over rayon's threads with results independent of their number:
//! several times faster than autograd at this model's size. Candle remains the path on other devices.
//!
//! # Crate features
//! - `cuda`: forwards to Candle's CUDA backend ([`parse_device`] accepts `cuda:N`). Off by default.

#![deny(missing_docs)]

mod batch;
mod branches;
mod catalogue;
mod config;
mod dropout;
pub mod engine;
mod error;
mod model;
mod ops;
mod pooling;
mod sequence;
mod softmax;

#[cfg(test)]
mod tests;

pub use batch::{HostColumn, SideBatch};
pub use catalogue::{RowExclusions, catalogue_softmax_cross_entropy};
pub use config::{
    Activation, Branch, ConfigError, DEFAULT_CROSS_LAYERS, FeatureKind, FeatureSpec,
    LEAKY_RELU_SLOPE, ModelConfig, Pooling, SenetConfig, SequenceConfig, SequenceItems, Side,
    Similarity, Squeeze, Temperature, TowerConfig,
};
pub use error::ModelError;
pub use model::{CONFIG_FILE, Dssm, EMBEDDING_INIT_STD, Mode, WEIGHTS_FILE, parse_device};
pub use ops::bce_with_logits;
pub use pooling::{embedding_bag, pool_fields};
pub use softmax::{keep_hardest, softmax_cross_entropy, softmax_cross_entropy_unfused};
