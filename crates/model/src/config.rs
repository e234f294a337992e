//! Model configuration: the feature list, the towers, SENet, similarity and temperature.
//!
//! Every type here derives serde with `deny_unknown_fields` and snake_case tags (enums are externally
//! tagged: `"mean"`, `{"categorical": {"vocab_size": 6041}}`, `{"fixed": 0.05}`). [`ModelConfig::check`]
//! validates a whole configuration and names the offending field.

use serde::{Deserialize, Serialize};

/// Which tower a feature feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// The user (query) tower.
    User,
    /// The item (candidate) tower.
    Item,
}

impl Side {
    /// `"user"` or `"item"`, as used in tensor names.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::User => "user",
            Side::Item => "item",
        }
    }
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the embeddings of a multi-valued feature are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// Mean over the non-padding ids (all padding gives zeros).
    Mean,
    /// Sum over the non-padding ids.
    Sum,
}

/// The kind of values a feature holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum FeatureKind {
    /// One id per example, `0..vocab_size`; id 0 is the unknown value and has a learned row like any other.
    Categorical {
        /// Number of ids, index 0 included.
        vocab_size: usize,
    },
    /// Up to `max_len` ids per example, `0` = padding (its row is never used).
    MultiCategorical {
        /// Number of ids, the padding index 0 included.
        vocab_size: usize,
        /// Slots per example.
        max_len: usize,
        /// How the ids' embeddings are combined.
        pooling: Pooling,
    },
    /// `dim` floats per example, projected linearly (weight and bias) to the embedding dimension.
    Dense {
        /// Number of floats per example.
        dim: usize,
    },
}

/// One input feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureSpec {
    /// Unique name (used in error messages and tensor names).
    pub name: String,
    /// The tower it feeds.
    pub side: Side,
    /// What values it holds.
    pub kind: FeatureKind,
    /// Embedding width; `None` = [`ModelConfig::embedding_dim`].
    #[serde(default)]
    pub embedding_dim: Option<usize>,
}

impl FeatureSpec {
    /// A categorical feature with the default embedding width.
    pub fn categorical(name: &str, side: Side, vocab_size: usize) -> Self {
        FeatureSpec {
            name: name.to_owned(),
            side,
            kind: FeatureKind::Categorical { vocab_size },
            embedding_dim: None,
        }
    }

    /// A multi-valued categorical feature with the default embedding width.
    pub fn multi_categorical(
        name: &str,
        side: Side,
        vocab_size: usize,
        max_len: usize,
        pooling: Pooling,
    ) -> Self {
        FeatureSpec {
            name: name.to_owned(),
            side,
            kind: FeatureKind::MultiCategorical {
                vocab_size,
                max_len,
                pooling,
            },
            embedding_dim: None,
        }
    }

    /// A dense feature with the default embedding width.
    pub fn dense(name: &str, side: Side, dim: usize) -> Self {
        FeatureSpec {
            name: name.to_owned(),
            side,
            kind: FeatureKind::Dense { dim },
            embedding_dim: None,
        }
    }
}

/// Activation between the hidden layers of a tower.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `max(x, 0)`.
    Relu,
    /// `x` for `x >= 0`, else [`LEAKY_RELU_SLOPE`]` * x` (PyTorch's default slope).
    LeakyRelu,
    /// `tanh(x)`.
    Tanh,
    /// GELU, tanh approximation (as Candle's `gelu`).
    Gelu,
}

/// Negative slope of [`Activation::LeakyRelu`].
pub const LEAKY_RELU_SLOPE: f64 = 0.01;

/// A branch of a parallel tower: what runs side by side on the tower's field embeddings (after
/// SENet when it is on). Every branch ends at the tower's output width (`hidden`'s last entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Branch {
    /// The MLP of [`TowerConfig::hidden`] on the flattened field embeddings.
    Mlp,
    /// A DCN-v2 cross network on the flattened field embeddings `x0`:
    /// `x_{l+1} = x0 * (W_l x_l + b_l) + x_l` for [`TowerConfig::cross_layers`] layers, then a
    /// linear projection to the output width.
    Cross,
    /// The FM bi-interaction `0.5 * ((sum_f v_f)^2 - sum_f v_f^2)` of the field embeddings `v_f`
    /// (one embedding-wide vector), then a linear projection to the output width.
    Fm,
}

/// One tower's MLP, and the branches that run beside it (parallel towers).
///
/// Layout: `Linear -> activation -> dropout` for every hidden layer but the last, which is a plain linear
/// layer (no activation, no dropout), then optional L2 normalisation.
///
/// With more branches than the MLP alone, the score is a learned linear layer over the products of
/// each branch's user and item outputs (see [`ModelConfig::output_dim`] for how it folds into one
/// dot product).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TowerConfig {
    /// Layer widths; the last is the output (embedding) width. Default `[128, 64, 32]`.
    pub hidden: Vec<usize>,
    /// Activation between layers. Default [`Activation::LeakyRelu`].
    pub activation: Activation,
    /// Inverted-dropout probability after each activation, in `[0, 1)`. Default `0.2`.
    pub dropout: f32,
    /// Divide the output by its L2 norm. Default `false`.
    pub l2_normalize: bool,
    /// Branches side by side, each at most once, the same list on both towers. Default
    /// `[Mlp]`: the plain tower (not written to `model.json`, so older files read the same).
    #[serde(skip_serializing_if = "TowerConfig::is_mlp_only")]
    pub branches: Vec<Branch>,
    /// Layers of the [`Branch::Cross`] network. Default [`DEFAULT_CROSS_LAYERS`].
    #[serde(skip_serializing_if = "TowerConfig::is_default_cross_layers")]
    pub cross_layers: usize,
}

/// Default [`TowerConfig::cross_layers`].
pub const DEFAULT_CROSS_LAYERS: usize = 2;

impl Default for TowerConfig {
    fn default() -> Self {
        TowerConfig {
            hidden: vec![128, 64, 32],
            activation: Activation::LeakyRelu,
            dropout: 0.2,
            l2_normalize: false,
            branches: vec![Branch::Mlp],
            cross_layers: DEFAULT_CROSS_LAYERS,
        }
    }
}

/// How SENet squeezes one field's embedding to a scalar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Squeeze {
    /// Mean over the embedding.
    Mean,
    /// Maximum over the embedding.
    Max,
}

/// SENet field re-weighting, one per tower.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SenetConfig {
    /// Bottleneck width is `max(1, fields / reduction)`. Default `2`.
    pub reduction: usize,
    /// Default [`Squeeze::Mean`].
    pub squeeze: Squeeze,
}

impl Default for SenetConfig {
    fn default() -> Self {
        SenetConfig {
            reduction: 2,
            squeeze: Squeeze::Mean,
        }
    }
}

/// Similarity of a user and an item embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Similarity {
    /// Inner product.
    Dot,
    /// Cosine, in `[-1, 1]`.
    Cosine,
}

/// Score = similarity / temperature.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Temperature {
    /// A constant temperature, `> 0`.
    Fixed(f32),
    /// A learned temperature, stored as the variable `temperature.log` (its natural log).
    Learned {
        /// Initial temperature, `> 0`.
        init: f32,
    },
}

/// The whole model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Features of both sides; each side's features keep this order.
    pub features: Vec<FeatureSpec>,
    /// Default embedding width. Default `8`.
    pub embedding_dim: usize,
    /// Default [`TowerConfig::default`].
    pub user_tower: TowerConfig,
    /// Default [`TowerConfig::default`].
    pub item_tower: TowerConfig,
    /// Default `Some(SenetConfig::default())`.
    pub senet: Option<SenetConfig>,
    /// Default [`Similarity::Dot`].
    pub similarity: Similarity,
    /// Default `Fixed(1.0)`.
    pub temperature: Temperature,
    /// A self-attention user tower over the user's recent items; default none.
    pub sequence: Option<SequenceConfig>,
}

/// What the tokens of the sequence tower are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SequenceItems {
    /// The item tower's embedding of the id feature, projected linearly to the model width.
    Id,
    /// The item tower's whole output (id, genres, year ...) for each item.
    Tower,
}

/// The sequence user tower (SASRec-style): learned positions, `blocks` pre-norm causal
/// self-attention blocks (multi-head attention and a feed-forward layer, each with a residual and
/// dropout), a final layer norm; its width is the towers' output width. The query at a position
/// is the block output there, plus the user tower's output when `user_features`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SequenceConfig {
    /// Items per sequence, the newest last.
    pub max_len: usize,
    /// Attention blocks.
    pub blocks: usize,
    /// Heads per attention; must divide the width.
    pub heads: usize,
    /// Dropout after the embeddings and on each residual branch, `[0, 1)`.
    pub dropout: f32,
    /// The tokens.
    pub items: SequenceItems,
    /// The item feature whose embedding is the token when `items` is `Id`.
    pub id_feature: String,
    /// Add the user tower's output (the user's own features) to every position's output.
    pub user_features: bool,
    /// Width of the feed-forward layer, as a multiple of the model width.
    pub ffn_multiple: usize,
}

impl SequenceConfig {
    /// Checks the sequence settings against the model width `dim` and the item features.
    pub fn check(&self, dim: usize, item_features: &[&str]) -> Result<(), ConfigError> {
        let at = |k: &str| format!("sequence.{k}");
        if self.max_len == 0 || self.blocks == 0 || self.ffn_multiple == 0 {
            return Err(bad(at("max_len, blocks, ffn_multiple"), "must be > 0"));
        }
        if self.heads == 0 || !dim.is_multiple_of(self.heads) {
            return Err(bad(
                at("heads"),
                format!("must divide the tower width {dim}, got {}", self.heads),
            ));
        }
        if !(self.dropout.is_finite() && (0.0..1.0).contains(&self.dropout)) {
            return Err(bad(
                at("dropout"),
                format!("must be in [0, 1), got {}", self.dropout),
            ));
        }
        if self.items == SequenceItems::Id && !item_features.contains(&self.id_feature.as_str()) {
            return Err(bad(
                at("id_feature"),
                format!(
                    "`{}` is not an item feature ({})",
                    self.id_feature,
                    item_features.join(", ")
                ),
            ));
        }
        Ok(())
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            features: Vec::new(),
            embedding_dim: 8,
            user_tower: TowerConfig::default(),
            item_tower: TowerConfig::default(),
            senet: Some(SenetConfig::default()),
            similarity: Similarity::Dot,
            temperature: Temperature::Fixed(1.0),
            sequence: None,
        }
    }
}

/// A configuration value that [`ModelConfig::check`] rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid model config `{field}`: {problem}")]
pub struct ConfigError {
    /// Path of the field, e.g. `features[2].kind.vocab_size` or `user_tower.dropout`.
    pub field: String,
    /// What is wrong with it.
    pub problem: String,
}

fn bad(field: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        problem: problem.into(),
    }
}

impl FeatureSpec {
    /// Embedding width of this feature under `config`.
    pub fn effective_dim(&self, default_dim: usize) -> usize {
        self.embedding_dim.unwrap_or(default_dim)
    }
}

impl TowerConfig {
    fn is_mlp_only(branches: &[Branch]) -> bool {
        branches == [Branch::Mlp]
    }

    fn is_default_cross_layers(layers: &usize) -> bool {
        *layers == DEFAULT_CROSS_LAYERS
    }

    /// Whether the tower has branches beside (or instead of) the MLP alone.
    pub fn is_parallel(&self) -> bool {
        !Self::is_mlp_only(&self.branches)
    }

    /// Checks widths and dropout; `prefix` names the tower in errors.
    pub fn check(&self, prefix: &str) -> Result<(), ConfigError> {
        if self.hidden.is_empty() {
            return Err(bad(
                format!("{prefix}.hidden"),
                "must list at least one layer width",
            ));
        }
        if let Some(i) = self.hidden.iter().position(|&h| h == 0) {
            return Err(bad(
                format!("{prefix}.hidden[{i}]"),
                "layer width must be > 0",
            ));
        }
        if !(self.dropout.is_finite() && (0.0..1.0).contains(&self.dropout)) {
            return Err(bad(
                format!("{prefix}.dropout"),
                format!("must be in [0, 1), got {}", self.dropout),
            ));
        }
        if self.branches.is_empty() {
            return Err(bad(
                format!("{prefix}.branches"),
                "must list at least one branch",
            ));
        }
        for (i, b) in self.branches.iter().enumerate() {
            if self.branches[..i].contains(b) {
                return Err(bad(
                    format!("{prefix}.branches"),
                    format!("{b:?} is listed twice"),
                ));
            }
        }
        if self.branches.contains(&Branch::Cross) && self.cross_layers == 0 {
            return Err(bad(
                format!("{prefix}.cross_layers"),
                "must be > 0 with a cross branch",
            ));
        }
        Ok(())
    }
}

impl ModelConfig {
    /// Features of one side, in config order.
    pub fn side_features(&self, side: Side) -> impl Iterator<Item = &FeatureSpec> + '_ {
        self.features.iter().filter(move |f| f.side == side)
    }

    /// Tower of one side.
    pub fn tower(&self, side: Side) -> &TowerConfig {
        match side {
            Side::User => &self.user_tower,
            Side::Item => &self.item_tower,
        }
    }

    /// Whether the towers are parallel (branches other than the MLP alone).
    pub fn is_parallel(&self) -> bool {
        self.user_tower.is_parallel()
    }

    /// Output width of each branch: the last of `hidden`.
    pub fn branch_dim(&self) -> usize {
        self.user_tower.hidden.last().copied().unwrap_or(0)
    }

    /// Output (embedding) width of the towers: [`ModelConfig::branch_dim`] for the plain towers.
    ///
    /// Parallel towers fold the scoring layer (weights `w_b` per branch `b`, a bias `c`) into the
    /// vectors, so the score stays one dot product: the user vector is `concat_b(w_b * u_b)`
    /// then `c`, the item vector `concat_b(i_b)` then `1`; `branches * branch_dim + 1` wide.
    pub fn output_dim(&self) -> usize {
        if self.is_parallel() {
            self.user_tower.branches.len() * self.branch_dim() + 1
        } else {
            self.branch_dim()
        }
    }

    /// Validates the whole configuration; the error names the first offending field.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.embedding_dim == 0 {
            return Err(bad("embedding_dim", "must be > 0"));
        }
        let mut names = std::collections::HashSet::new();
        for (i, f) in self.features.iter().enumerate() {
            let at = |s: &str| format!("features[{i}].{s}");
            if f.name.is_empty() {
                return Err(bad(at("name"), "must not be empty"));
            }
            if !names.insert(f.name.as_str()) {
                return Err(bad(
                    at("name"),
                    format!("duplicate feature name `{}`", f.name),
                ));
            }
            if f.embedding_dim == Some(0) {
                return Err(bad(
                    at("embedding_dim"),
                    format!("feature `{}`: must be > 0", f.name),
                ));
            }
            match f.kind {
                FeatureKind::Categorical { vocab_size }
                | FeatureKind::MultiCategorical { vocab_size, .. }
                    if vocab_size == 0 =>
                {
                    return Err(bad(
                        at("kind.vocab_size"),
                        format!("feature `{}`: must be > 0", f.name),
                    ));
                }
                FeatureKind::Categorical { vocab_size }
                | FeatureKind::MultiCategorical { vocab_size, .. }
                    if vocab_size > u32::MAX as usize / 2 =>
                {
                    return Err(bad(
                        at("kind.vocab_size"),
                        format!("feature `{}`: too large", f.name),
                    ));
                }
                FeatureKind::MultiCategorical { max_len: 0, .. } => {
                    return Err(bad(
                        at("kind.max_len"),
                        format!("feature `{}`: must be > 0", f.name),
                    ));
                }
                FeatureKind::Dense { dim: 0 } => {
                    return Err(bad(
                        at("kind.dim"),
                        format!("feature `{}`: must be > 0", f.name),
                    ));
                }
                _ => {}
            }
        }
        for side in [Side::User, Side::Item] {
            let n = self.side_features(side).count();
            if n == 0 {
                return Err(bad("features", format!("no {side} feature")));
            }
            let rows: usize = self
                .side_features(side)
                .map(|f| match f.kind {
                    FeatureKind::Categorical { vocab_size }
                    | FeatureKind::MultiCategorical { vocab_size, .. } => vocab_size,
                    FeatureKind::Dense { .. } => 0,
                })
                .sum();
            if rows > u32::MAX as usize {
                return Err(bad(
                    "features",
                    format!("{side} vocabularies exceed u32 ids in total"),
                ));
            }
            if let Some(senet) = &self.senet {
                if senet.reduction == 0 {
                    return Err(bad("senet.reduction", "must be > 0"));
                }
                if senet.reduction > n {
                    return Err(bad(
                        "senet.reduction",
                        format!("{} is larger than the {n} {side} fields", senet.reduction),
                    ));
                }
                let mut dims = self
                    .side_features(side)
                    .map(|f| f.effective_dim(self.embedding_dim));
                let first = dims.next().unwrap_or(self.embedding_dim);
                if dims.any(|d| d != first) {
                    return Err(bad(
                        "features.embedding_dim",
                        format!("SENet needs one embedding width for all {side} fields"),
                    ));
                }
            }
        }
        self.user_tower.check("user_tower")?;
        self.item_tower.check("item_tower")?;
        if self.user_tower.hidden.last() != self.item_tower.hidden.last() {
            return Err(bad(
                "item_tower.hidden",
                format!(
                    "last width {:?} differs from user_tower's {:?}",
                    self.item_tower.hidden.last(),
                    self.user_tower.hidden.last()
                ),
            ));
        }
        match self.temperature {
            Temperature::Fixed(t) if !(t.is_finite() && t > 0.0) => {
                return Err(bad(
                    "temperature.fixed",
                    format!("must be finite and > 0, got {t}"),
                ));
            }
            Temperature::Learned { init } if !(init.is_finite() && init > 0.0) => {
                return Err(bad(
                    "temperature.learned.init",
                    format!("must be finite and > 0, got {init}"),
                ));
            }
            _ => {}
        }
        self.check_branches()?;
        if let Some(sequence) = &self.sequence {
            let items: Vec<&str> = self
                .side_features(Side::Item)
                .map(|f| f.name.as_str())
                .collect();
            sequence.check(self.output_dim(), &items)?;
        }
        Ok(())
    }
}

impl ModelConfig {
    /// Parallel towers: one branch list for both towers, the dot product, no L2 normalisation
    /// or sequence tower (the folded vectors would not score the same), one width for FM.
    fn check_branches(&self) -> Result<(), ConfigError> {
        if self.item_tower.branches != self.user_tower.branches {
            return Err(bad(
                "item_tower.branches",
                format!(
                    "{:?} differs from user_tower's {:?} (each branch pairs a user and an item output)",
                    self.item_tower.branches, self.user_tower.branches
                ),
            ));
        }
        if !self.is_parallel() {
            return Ok(());
        }
        let problem = if self.similarity != Similarity::Dot {
            Some(("similarity", "must be dot with parallel towers"))
        } else if self.user_tower.l2_normalize {
            Some((
                "user_tower.l2_normalize",
                "must be false with parallel towers",
            ))
        } else if self.item_tower.l2_normalize {
            Some((
                "item_tower.l2_normalize",
                "must be false with parallel towers",
            ))
        } else if self.sequence.is_some() {
            Some(("sequence", "does not combine with parallel towers"))
        } else {
            None
        };
        if let Some((field, problem)) = problem {
            return Err(bad(field, problem));
        }
        if self.user_tower.branches.contains(&Branch::Fm) {
            for side in [Side::User, Side::Item] {
                let mut dims = self
                    .side_features(side)
                    .map(|f| f.effective_dim(self.embedding_dim));
                let first = dims.next();
                if dims.any(|d| Some(d) != first) {
                    return Err(bad(
                        "features.embedding_dim",
                        format!("the fm branch needs one embedding width for all {side} fields"),
                    ));
                }
            }
        }
        Ok(())
    }
}
