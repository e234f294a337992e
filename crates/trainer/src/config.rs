//! The run configuration: a TOML file read with serde (`deny_unknown_fields` everywhere) and
//! validated by [`RunConfig::check`] before any work starts.
//!
//! Every section and every key has a default, so an empty file is a valid (if not very useful)
//! configuration. Relative paths (`data.path`, `output.dir`) are resolved against the current
//! working directory of the process that trains, which is the workspace root when the run goes
//! through `cargo xtask`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// An error in a run configuration. Each variant names the file or the key path
/// (`model.user_tower.dropout`) and, for bad values, what is allowed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The TOML did not parse or did not match the expected shape (an unknown key, a wrong type,
    /// an unknown variant).
    #[error("config {path}: at `{key}` (line {line}, column {column}): {message}")]
    Parse {
        /// The config file, or `<string>` for text parsed from memory.
        path: PathBuf,
        /// The key path (table header plus key) nearest to the error, best effort.
        key: String,
        /// 1-based line of the error (0 when unknown).
        line: usize,
        /// 1-based column of the error (0 when unknown).
        column: usize,
        /// The parser's message, which names the offending key or value and the allowed ones.
        message: String,
    },
    /// A `--set KEY=VALUE` override could not be applied.
    #[error("cannot apply --set {setting:?}: {problem}")]
    Override {
        /// The override as given.
        setting: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A value parsed but is out of range or inconsistent with another value.
    #[error("invalid value {value} for `{key}`: expected {expected}")]
    Invalid {
        /// The key path, e.g. `model.user_tower.dropout`.
        key: String,
        /// The value found, as written in TOML.
        value: String,
        /// What is allowed.
        expected: String,
    },
}

/// A whole run: data, features, model, sampler, loss, optimizer, schedule, training and output.
///
/// ```
/// use dssm_trainer::RunConfig;
/// let config = RunConfig::from_toml_str(
///     "[train]\nepochs = 3\nseed = 7\n[model.user_tower]\nhidden = [64, 32]\n",
/// ).unwrap();
/// assert_eq!(config.train.epochs, 3);
/// assert_eq!(config.model.user_tower.hidden, vec![64, 32]);
/// assert!(RunConfig::from_toml_str("[train]\nepochz = 3\n").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// `[data]`: the dataset folder and its protocol.
    pub data: DataConfig,
    /// `[features]`: which dataset features each tower uses.
    pub features: FeaturesConfig,
    /// `[model]`: towers, SENet, similarity.
    pub model: ModelSection,
    /// `[sampler]`: negative sampling.
    pub sampler: SamplerConfig,
    /// `[loss]`: the training objective.
    pub loss: LossConfig,
    /// `[optimizer]`: the update rule.
    pub optimizer: OptimizerConfig,
    /// `[schedule]`: learning-rate step decay and warm-up.
    pub schedule: ScheduleConfig,
    /// `[train]`: batch size, epochs, validation, early stopping, seed, device.
    pub train: TrainConfig,
    /// `[output]`: the run folder.
    pub output: OutputConfig,
}

/// The evaluation protocol a dataset folder was prepared for (see PROTOCOLS.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// Liked vs not liked among rated movies; pointwise; AUC.
    Seed,
    /// Full-catalogue retrieval of each user's last interaction; HR@K.
    LeaveLastOut,
    /// A global time cutoff (a dataset spec's `split.kind = "time"`): full-catalogue retrieval of
    /// every held-out interaction, as under `leave-last-out`.
    Time,
}

impl Protocol {
    /// Whether held-out rows are ranked against the catalogue (HR@K) rather than scored (AUC).
    pub fn is_retrieval(self) -> bool {
        self != Protocol::Seed
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Seed => "seed",
            Protocol::LeaveLastOut => "leave-last-out",
            Protocol::Time => "time",
        })
    }
}

/// `[data]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// The dataset folder written by `dssm prepare-data`. Relative paths are resolved against the
    /// current directory. Default `datasets/prepared/ml-1m-seed`.
    pub path: PathBuf,
    /// The protocol the folder must have been prepared for (checked against its manifest).
    /// Default `seed`.
    pub protocol: Protocol,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("datasets/prepared/ml-1m-seed"),
            protocol: Protocol::Seed,
        }
    }
}

/// Pooling of a multi-valued feature (genres).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolingKind {
    /// Mean over the non-padding values.
    Mean,
    /// Sum over the non-padding values.
    Sum,
}

/// `[features]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeaturesConfig {
    /// User-side features by schema name, in tower order. Default: every user feature of the schema.
    pub user: Option<Vec<String>>,
    /// Item-side features by schema name, in tower order. Default: every item feature of the schema.
    pub item: Option<Vec<String>>,
    /// Embedding size of every feature. Default 8.
    pub embedding_dim: usize,
    /// Per-feature embedding sizes that override `embedding_dim`. Default empty.
    pub embedding_dims: BTreeMap<String, usize>,
    /// Pooling of multi-valued features. Default `mean`.
    pub pooling: PoolingKind,
    /// `leave-last-out` only: adds the user feature `history`, the user's last `history_len`
    /// items before the interaction (time order), mean-pooled through its own item embedding
    /// table. Validation queries see the train items, test queries the validation item too.
    /// 0 turns it off. Default 0.
    pub history_len: usize,
    /// Adds the user feature `recent`: the first `recent_len` items of `history` (the most recent
    /// ones), mean-pooled through their own table, so the tower sees the user's latest taste
    /// beside the longer-term mean. At most `history_len`; 0 turns it off. Default 0.
    pub recent_len: usize,
}

impl Default for FeaturesConfig {
    fn default() -> Self {
        Self {
            user: None,
            item: None,
            embedding_dim: 8,
            embedding_dims: BTreeMap::new(),
            pooling: PoolingKind::Mean,
            history_len: 0,
            recent_len: 0,
        }
    }
}

/// Activation between tower layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActivationKind {
    /// max(x, 0).
    Relu,
    /// x for x >= 0, else 0.01 x (the model crate's slope).
    LeakyRelu,
    /// tanh.
    Tanh,
    /// GELU (tanh approximation).
    Gelu,
}

/// `[model.user_tower]` and `[model.item_tower]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TowerSection {
    /// Hidden sizes; the last one is the output embedding size. Default `[128, 64, 32]`.
    pub hidden: Vec<usize>,
    /// Activation after every hidden layer but the last. Default `leaky_relu`.
    pub activation: ActivationKind,
    /// Dropout probability after each activation, in [0, 1). Default 0.0.
    pub dropout: f64,
    /// L2-normalise the tower output. Default false.
    pub l2_normalize: bool,
    /// Parallel towers: the branches side by side on the field embeddings, the same list on
    /// both towers ([`BranchKind`]). Default `["mlp"]`, the plain tower.
    #[serde(skip_serializing_if = "BranchKind::is_mlp_only")]
    pub branches: Vec<BranchKind>,
    /// Layers of the `cross` branch. Default 2.
    #[serde(skip_serializing_if = "BranchKind::is_default_cross_layers")]
    pub cross_layers: usize,
}

impl Default for TowerSection {
    fn default() -> Self {
        Self {
            hidden: vec![128, 64, 32],
            activation: ActivationKind::LeakyRelu,
            dropout: 0.0,
            l2_normalize: false,
            branches: vec![BranchKind::Mlp],
            cross_layers: dssm_model::DEFAULT_CROSS_LAYERS,
        }
    }
}

/// How SENet squeezes each feature embedding to one number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SqueezeKind {
    /// Mean over the embedding.
    Mean,
    /// Max over the embedding.
    Max,
}

/// `[model.senet]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SenetSection {
    /// Whether the towers reweight their feature embeddings with SENet. `false` builds no SENet
    /// weights at all. Default false.
    pub enabled: bool,
    /// Reduction ratio of the excitation layer (features / reduction, at least 1). Default 3.
    pub reduction: usize,
    /// Squeeze function. Default `mean`.
    pub squeeze: SqueezeKind,
}

impl Default for SenetSection {
    fn default() -> Self {
        Self {
            enabled: false,
            reduction: 3,
            squeeze: SqueezeKind::Mean,
        }
    }
}

/// Similarity between the tower outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SimilarityKind {
    /// Dot product.
    Dot,
    /// Cosine similarity.
    Cosine,
}

/// `[model]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSection {
    /// The user tower.
    pub user_tower: TowerSection,
    /// The item tower.
    pub item_tower: TowerSection,
    /// SENet over each tower's feature embeddings.
    pub senet: SenetSection,
    /// Similarity. Default `dot`.
    pub similarity: SimilarityKind,
    /// The similarity is divided by this temperature (> 0). Default 1.0.
    pub temperature: f64,
    /// Learn the temperature (initialised at `temperature`). Default false.
    pub learn_temperature: bool,
    /// The sequence user tower (self-attention over the user's last items). Default off.
    pub sequence: SequenceSection,
}

/// What the sequence tower's tokens are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SequenceItemsKind {
    /// The item tower's embedding of `id_feature`, projected to the tower width.
    Id,
    /// The item tower's whole output (all item features).
    Tower,
}

/// Which windows of `max_len` items a long train sequence contributes to an epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SequenceWindowsKind {
    /// The newest `max_len` positions only, every epoch (SASRec's practice).
    Last,
    /// One window per user and epoch, its end drawn uniformly from (seed, epoch): over epochs
    /// every position is trained, at the cost of one window per user.
    Random,
    /// Every position, every epoch: the sequence cut into consecutive windows from its end.
    All,
}

/// `[model.sequence]`: a SASRec-style user tower (`leave-last-out` / `time` only): causal
/// self-attention over the user's last `max_len` train items, trained on every position of
/// each user's train sequence (next-item prediction) with `loss.kind = "full_softmax"` (the whole
/// catalogue) or `"in_batch_softmax"` (the batch's target items and `loss.shared_negatives`
/// sampled items: a sampled softmax for catalogues too large for the full one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SequenceSection {
    /// Use the sequence tower. Default false.
    pub enabled: bool,
    /// Items per sequence (the newest last). Default 200.
    pub max_len: usize,
    /// Attention blocks. Default 2.
    pub blocks: usize,
    /// Attention heads (divide the tower width). Default 1.
    pub heads: usize,
    /// Dropout on the embeddings and each residual branch. Default 0.2.
    pub dropout: f64,
    /// Tokens: `id` or `tower`. Default `id`.
    pub items: SequenceItemsKind,
    /// The item feature whose embedding is the token under `items = "id"`. Default `movie_id`.
    pub id_feature: String,
    /// Add the user tower's output (the user's own features) to the sequence output. Default true.
    pub user_features: bool,
    /// Feed-forward width as a multiple of the tower width. Default 1.
    pub ffn_multiple: usize,
    /// Training only: which windows of a sequence longer than `max_len` an epoch trains
    /// (`last`, `random` or `all`). Default `last`.
    pub windows: SequenceWindowsKind,
}

impl Default for SequenceSection {
    fn default() -> Self {
        Self {
            enabled: false,
            max_len: 200,
            blocks: 2,
            heads: 1,
            dropout: 0.2,
            items: SequenceItemsKind::Id,
            id_feature: "movie_id".to_string(),
            user_features: true,
            ffn_multiple: 1,
            windows: SequenceWindowsKind::Last,
        }
    }
}

impl Default for ModelSection {
    fn default() -> Self {
        Self {
            user_tower: TowerSection::default(),
            item_tower: TowerSection::default(),
            senet: SenetSection::default(),
            similarity: SimilarityKind::Dot,
            temperature: 1.0,
            learn_temperature: false,
            sequence: SequenceSection::default(),
        }
    }
}

/// How negatives are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SamplerStrategy {
    /// No sampled negatives (only the dataset's rows).
    None,
    /// Every item equally likely.
    Uniform,
    /// Items in proportion to `train_count^alpha`.
    Popularity,
}

/// `[sampler]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplerConfig {
    /// Strategy. Default `popularity`.
    pub strategy: SamplerStrategy,
    /// Sampled negatives per positive train row. Default 5.
    pub negatives_per_positive: usize,
    /// Popularity exponent (1 = like drawing from the train rows, 0 = uniform). Default 1.0.
    pub alpha: f64,
    /// Drop a sampled (user, item) pair that is a rated train pair. Default true.
    pub exclude_positives: bool,
    /// `[sampler.hard]`: hard negatives, mined offline or picked online. Default off.
    pub hard: HardNegativesConfig,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            strategy: SamplerStrategy::Popularity,
            negatives_per_positive: 5,
            alpha: 1.0,
            exclude_positives: true,
            hard: HardNegativesConfig::default(),
        }
    }
}

/// `[sampler.hard]`: hard negatives (issue 17). Both kinds are off by default.
///
/// Offline (`mine_every > 0`; losses with per-row negatives: `bce`, `bpr`, `sampled_softmax`), as
/// Facebook's embedding-based retrieval does it: before every `mine_every`-th epoch the current
/// model ranks the catalogue for each training user (its train items left out), and each of a
/// positive's `sampler.negatives_per_positive` negatives comes, with probability `fraction`, from
/// the ranks `band[0]..=band[1]` of its user's ranking, otherwise from the `[sampler]` strategy.
/// The first `mine_every` epochs use the strategy alone (the model is still random).
///
/// Online (`online > 0`; `in_batch_softmax`): each row's softmax keeps its positive and only the
/// `online` highest-scoring other columns of the batch (logits after the temperature, log-Q and
/// the accidental-hit mask); the rest are dropped from that row's softmax.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HardNegativesConfig {
    /// Mine hard negatives before every epoch that is a positive multiple of this; 0 turns
    /// offline mining off. Default 0.
    pub mine_every: usize,
    /// The band of ranks (1-based, inclusive) hard negatives come from. Default `[101, 500]`.
    pub band: [usize; 2],
    /// Share of each positive's negatives drawn from the band, in [0, 1]. Default 0.5.
    pub fraction: f64,
    /// In-batch softmax: the hardest other columns each row keeps; 0 keeps all. Default 0.
    pub online: usize,
}

impl Default for HardNegativesConfig {
    fn default() -> Self {
        Self {
            mine_every: 0,
            band: [101, 500],
            fraction: 0.5,
            online: 0,
        }
    }
}

impl HardNegativesConfig {
    /// The `[sampler.hard]` checks; `config` for the combinations.
    fn check(&self, config: &RunConfig) -> Result<(), ConfigError> {
        let [first, last] = self.band;
        if first == 0 || first > last {
            return Err(invalid(
                "sampler.hard.band",
                format!("[{first}, {last}]"),
                "[first, last] ranks with 1 <= first <= last",
            ));
        }
        if !(0.0..=1.0).contains(&self.fraction) {
            return Err(invalid(
                "sampler.hard.fraction",
                self.fraction,
                "a number in [0, 1]",
            ));
        }
        let (loss, sampler) = (config.loss.kind, &config.sampler);
        let sequence = config.model.sequence.enabled;
        if self.mine_every > 0 {
            if !matches!(
                loss,
                LossKind::Bce | LossKind::Bpr | LossKind::SampledSoftmax
            ) || sequence
            {
                return Err(invalid(
                    "sampler.hard.mine_every",
                    self.mine_every,
                    "0 unless loss.kind is bce, bpr or sampled_softmax without model.sequence                      (in-batch softmax: sampler.hard.online)",
                ));
            }
            if sampler.strategy == SamplerStrategy::None || sampler.negatives_per_positive == 0 {
                return Err(invalid(
                    "sampler.hard.mine_every",
                    self.mine_every,
                    "0 unless sampler.strategy is `uniform` or `popularity` with                      negatives_per_positive >= 1 (the hard negatives replace some of them)",
                ));
            }
        }
        if self.online > 0 && (loss != LossKind::InBatchSoftmax || sequence) {
            return Err(invalid(
                "sampler.hard.online",
                self.online,
                "0 unless loss.kind is in_batch_softmax without model.sequence",
            ));
        }
        Ok(())
    }
}

/// The training objective.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    /// Pointwise binary cross-entropy on rated rows plus sampled negatives (the reference).
    Bce,
    /// Pairwise BPR: each positive against sampled negatives of the same user.
    Bpr,
    /// Softmax over the other positives of the batch.
    InBatchSoftmax,
    /// Softmax over the positive and its sampled negatives.
    SampledSoftmax,
    /// Softmax over the whole catalogue (the sequence tower's next-item loss).
    FullSoftmax,
}

/// `[loss]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LossConfig {
    /// Kind. Default `bce`.
    pub kind: LossKind,
    /// Softmax temperature (> 0); softmax losses only. Default 1.0.
    pub temperature: f64,
    /// Subtract ln q(item) from softmax logits, q from the sampler. Default false.
    pub logq_correction: bool,
    /// `in_batch_softmax` only: items drawn from the `[sampler]` once per batch and appended to
    /// the batch's items as negatives of every row (mixed negative sampling, Yang et al. 2020):
    /// in-batch negatives follow popularity, these reach the long tail. With the log-Q correction
    /// a column's q is its expected count, `B q_batch(item) + K q_sampler(item)`. Default 0.
    pub shared_negatives: usize,
    /// With `logq_correction`: which logits are corrected, `all` (every column, the positive's
    /// too) or `negatives_only` (the positive's logit is left as it is: "Correcting the LogQ
    /// Correction", RecSys 2025). Default `all`.
    pub logq: LogQTarget,
    /// `full_softmax` (the sequence task) only: leave out of each position's softmax the items
    /// the user saw before its target (their earlier train items), as the `masked` ranking
    /// leaves a user's train items out. The tower then learns to rank among unseen items only;
    /// pair it with `train.select_ranking = "masked"`. Default false.
    pub exclude_seen: bool,
    /// With `exclude_seen`: the N items the user saw last before each target stay in its
    /// softmax, as negatives, so the tower learns not to return what was just watched (the
    /// `masked` test ranking keeps the validation item, the query's newest). Default 0.
    pub recent_seen_negatives: usize,
}

/// Which logits the log-Q correction subtracts ln q from (`loss.logq`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogQTarget {
    /// Every logit, the positive's included (the sampled-softmax correction of Bengio and
    /// Senecal, and of Yi et al. 2019).
    #[default]
    All,
    /// The negatives' logits only; the positive keeps its raw logit.
    NegativesOnly,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            kind: LossKind::Bce,
            temperature: 1.0,
            logq_correction: false,
            shared_negatives: 0,
            logq: LogQTarget::All,
            exclude_seen: false,
            recent_seen_negatives: 0,
        }
    }
}

/// The update rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    /// Adam with L2 weight decay added to the gradient.
    Adam,
    /// Adam with decoupled weight decay.
    Adamw,
    /// SGD with (optional) momentum.
    Sgd,
    /// Adagrad.
    Adagrad,
}

/// `[optimizer]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimizerConfig {
    /// Kind. Default `adam`.
    pub kind: OptimizerKind,
    /// Learning rate (> 0). Default 1e-3.
    pub lr: f64,
    /// Weight decay (>= 0). Default 0.0.
    pub weight_decay: f64,
    /// SGD momentum in [0, 1). Default 0.0.
    pub momentum: f64,
    /// Adam beta1 in [0, 1). Default 0.9.
    pub beta1: f64,
    /// Adam beta2 in [0, 1). Default 0.999.
    pub beta2: f64,
    /// Adam/Adagrad epsilon (> 0). Default 1e-8 for Adam; Adagrad uses it too.
    pub eps: f64,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self {
            kind: OptimizerKind::Adam,
            lr: 1e-3,
            weight_decay: 0.0,
            momentum: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

/// `[schedule]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleConfig {
    /// Multiply the learning rate by `gamma` every `step_size` epochs; 0 turns decay off. Default 0.
    pub step_size: usize,
    /// Decay factor in (0, 1]. Default 1.0.
    pub gamma: f64,
    /// Linear warm-up over this many optimizer steps; 0 turns it off. Default 0.
    pub warmup_steps: usize,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            step_size: 0,
            gamma: 1.0,
            warmup_steps: 0,
        }
    }
}

/// The validation metric that selects the best checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SelectMetric {
    /// Validation AUC (higher is better).
    Auc,
    /// Validation log loss (lower is better).
    Logloss,
    /// Validation GAUC (higher is better).
    Gauc,
    /// Validation HR@50 (leave-last-out only; higher is better).
    HitRate,
}

impl SelectMetric {
    /// Whether a larger value is better.
    pub fn higher_is_better(self) -> bool {
        !matches!(self, SelectMetric::Logloss)
    }

    /// The name used in metrics files.
    pub fn name(self) -> &'static str {
        match self {
            SelectMetric::Auc => "auc",
            SelectMetric::Logloss => "logloss",
            SelectMetric::Gauc => "gauc",
            SelectMetric::HitRate => "hit_rate",
        }
    }
}

/// Which full-catalogue ranking of the validation item selects the best checkpoint under a
/// retrieval protocol (`train.select_ranking`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SelectRanking {
    /// Every candidate, the user's train items included (DeepMatch, torch-rechub).
    #[default]
    Unmasked,
    /// The user's train items left out of the ranking: on the validation split, everything the
    /// query saw, as RecBole and SASRec rank (`masked` and `masked_all` are the same there).
    Masked,
}

impl SelectRanking {
    /// The protocol variant that ranks this way.
    pub fn variant(self) -> dssm_retrieval::ProtocolVariant {
        match self {
            SelectRanking::Unmasked => dssm_retrieval::ProtocolVariant::Unmasked,
            SelectRanking::Masked => dssm_retrieval::ProtocolVariant::Masked,
        }
    }
}

/// Which code runs the training steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EngineKind {
    /// `fused` when the device, model and loss allow it, `candle` otherwise.
    Auto,
    /// dssm-model's CPU engine (`dssm_model::engine`): no autograd graph, shards over the
    /// threads. CPU, f32, (multi-)categorical features, BCE or in-batch softmax; anything else is
    /// an error.
    Fused,
    /// Candle's autograd, on any device: the GPU path and the reference the engine is tested against.
    Candle,
}

/// `[train]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Rows per optimizer step. Default 2048.
    pub batch_size: usize,
    /// Epochs. Default 10.
    pub epochs: usize,
    /// Validate every this many epochs (the last epoch is always validated). Default 1.
    pub eval_every: usize,
    /// Stop after this many validations without improvement; 0 turns early stopping off. Default 0.
    pub patience: usize,
    /// The validation metric that selects the best checkpoint. Default `auc`.
    pub select_metric: SelectMetric,
    /// Under a retrieval protocol, the ranking whose HR@50 `hit_rate` reads: `unmasked` or
    /// `masked`. Default `unmasked`.
    pub select_ranking: SelectRanking,
    /// Seed of every random draw (weights, negatives, shuffles, dropout). Default 42.
    pub seed: u64,
    /// `cpu`, `cuda` or `cuda:N`. Default `cpu`.
    pub device: String,
    /// Threads of rayon's global pool (the engine's shards, Candle's CPU kernels); 0 keeps
    /// rayon's default (one per core). Default 0. Results do not depend on it.
    pub threads: usize,
    /// Which code trains. Default `auto`. Both give the same results up to float rounding.
    pub engine: EngineKind,
    /// Data-parallel parts of each batch (the sequence task's full softmax through Candle):
    /// the parts' losses and gradients are computed side by side on single-threaded pools, one
    /// per core, and the gradients added in part order, so a result depends on this value but
    /// not on the thread count. 1 computes the batch as one graph. Default 1.
    pub replicas: usize,
    /// Rows per evaluation batch. Default 8192.
    pub eval_batch_size: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            batch_size: 2048,
            epochs: 10,
            eval_every: 1,
            patience: 0,
            select_metric: SelectMetric::Auc,
            select_ranking: SelectRanking::Unmasked,
            seed: 42,
            device: "cpu".to_string(),
            threads: 0,
            engine: EngineKind::Auto,
            replicas: 1,
            eval_batch_size: 8192,
        }
    }
}

/// `[output]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputConfig {
    /// The run folder (created). Relative paths are resolved against the current directory.
    /// Default `runs/dssm`.
    pub dir: PathBuf,
}

impl Default for OutputConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("runs/dssm"),
        }
    }
}

fn invalid(key: &str, value: impl fmt::Display, expected: &str) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        value: value.to_string(),
        expected: expected.to_string(),
    }
}

/// The key path of the table header at or before byte `offset`, plus the key on the error line.
fn key_path_at(text: &str, offset: usize) -> (String, usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    let mut table = String::new();
    for raw in before[..line_start].lines() {
        let trimmed = raw.trim();
        if trimmed.starts_with('[') {
            table = trimmed
                .trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or("")
                .trim()
                .to_string();
        }
    }
    let line_text = text[line_start..].lines().next().unwrap_or("");
    let key = line_text
        .split('=')
        .next()
        .map(str::trim)
        .filter(|k| !k.is_empty() && !k.starts_with('[') && line_text.contains('='))
        .unwrap_or("");
    let path = match (table.is_empty(), key.is_empty()) {
        (true, _) => key.to_string(),
        (false, true) => table,
        (false, false) => format!("{table}.{key}"),
    };
    (path, line, column)
}

impl RunConfig {
    /// Reads and checks a TOML file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        Self::from_file_with_overrides(path, &[])
    }

    /// Reads a config file and changes some of its values before the checks (what
    /// `dssm train --set` does): each override is `dotted.key=value`, the value in TOML syntax
    /// (`8`, `0.1`, `true`, `[64, 32]`, `"uniform"`; a bare word is taken as a string). Missing
    /// tables are created; the result is checked like a file.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("run.toml");
    /// # std::fs::write(&path, "[data]\npath = \"d\"\n[output]\ndir = \"r\"\n").unwrap();
    /// use dssm_trainer::RunConfig;
    /// let config = RunConfig::from_file_with_overrides(
    ///     &path,
    ///     &["train.epochs=3".to_string(), "sampler.strategy=uniform".to_string()],
    /// )?;
    /// assert_eq!(config.train.epochs, 3);
    /// # Ok::<(), dssm_trainer::config::ConfigError>(())
    /// ```
    pub fn from_file_with_overrides(
        path: impl AsRef<Path>,
        overrides: &[String],
    ) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        if overrides.is_empty() {
            return Self::parse(&text, path);
        }
        let mut table: toml::Table =
            text.parse()
                .map_err(|err: toml::de::Error| ConfigError::Override {
                    setting: String::new(),
                    problem: err.message().to_string(),
                })?;
        for setting in overrides {
            set_dotted(&mut table, setting).map_err(|problem| ConfigError::Override {
                setting: setting.clone(),
                problem,
            })?;
        }
        let text = toml::to_string(&table).map_err(|err| ConfigError::Override {
            setting: overrides.join(" "),
            problem: err.to_string(),
        })?;
        Self::parse(&text, path)
    }

    /// Parses and checks TOML text.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        Self::parse(text, Path::new("<string>"))
    }

    fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: RunConfig = toml::from_str(text).map_err(|err| {
            let (key, line, column) = err
                .span()
                .map_or((String::new(), 0, 0), |span| key_path_at(text, span.start));
            ConfigError::Parse {
                path: path.to_path_buf(),
                key,
                line,
                column,
                message: err.message().trim().to_string(),
            }
        })?;
        config.check()?;
        Ok(config)
    }

    /// The configuration as TOML (what the run folder's `config.toml` holds).
    pub fn to_toml_string(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|err| format!("# cannot serialise: {err}\n"))
    }

    /// Validates ranges and combinations. Called by [`RunConfig::from_file`]; call it again after
    /// changing fields in code.
    pub fn check(&self) -> Result<(), ConfigError> {
        let f = &self.features;
        if f.embedding_dim == 0 {
            return Err(invalid("features.embedding_dim", 0, "a positive integer"));
        }
        for (name, dim) in &f.embedding_dims {
            if *dim == 0 {
                return Err(invalid(
                    &format!("features.embedding_dims.{name}"),
                    0,
                    "a positive integer",
                ));
            }
        }
        for (side, list) in [("user", &f.user), ("item", &f.item)] {
            if let Some(list) = list {
                if list.is_empty() {
                    return Err(invalid(
                        &format!("features.{side}"),
                        "[]",
                        "at least one feature name (or leave the key out for all)",
                    ));
                }
                for (i, name) in list.iter().enumerate() {
                    if list[..i].contains(name) {
                        return Err(invalid(
                            &format!("features.{side}"),
                            format!("{name:?} (twice)"),
                            "each feature at most once",
                        ));
                    }
                }
            }
        }
        for (side, tower) in [
            ("user_tower", &self.model.user_tower),
            ("item_tower", &self.model.item_tower),
        ] {
            if tower.hidden.is_empty() || tower.hidden.contains(&0) {
                return Err(invalid(
                    &format!("model.{side}.hidden"),
                    format!("{:?}", tower.hidden),
                    "a non-empty list of positive layer sizes",
                ));
            }
            if !(0.0..1.0).contains(&tower.dropout) {
                return Err(invalid(
                    &format!("model.{side}.dropout"),
                    tower.dropout,
                    "a probability in [0, 1)",
                ));
            }
        }
        if self.model.user_tower.hidden.last() != self.model.item_tower.hidden.last() {
            return Err(invalid(
                "model.item_tower.hidden",
                format!("{:?}", self.model.item_tower.hidden),
                &format!(
                    "the same last size as model.user_tower.hidden ({})",
                    self.model.user_tower.hidden.last().copied().unwrap_or(0)
                ),
            ));
        }
        if self.model.senet.reduction == 0 {
            return Err(invalid("model.senet.reduction", 0, "a positive integer"));
        }
        positive_finite("model.temperature", self.model.temperature)?;
        let s = &self.sampler;
        if !(s.alpha.is_finite() && s.alpha >= 0.0) {
            return Err(invalid("sampler.alpha", s.alpha, "a finite number >= 0"));
        }
        let needs_negatives = matches!(self.loss.kind, LossKind::Bpr | LossKind::SampledSoftmax);
        if needs_negatives && (s.strategy == SamplerStrategy::None || s.negatives_per_positive == 0)
        {
            return Err(invalid(
                "sampler.strategy",
                format!(
                    "{:?} with {} negatives",
                    s.strategy, s.negatives_per_positive
                ),
                "`uniform` or `popularity` with negatives_per_positive >= 1 for loss.kind bpr or sampled_softmax",
            ));
        }
        positive_finite("loss.temperature", self.loss.temperature)?;
        if self.loss.shared_negatives > 0
            && (self.loss.kind != LossKind::InBatchSoftmax || s.strategy == SamplerStrategy::None)
        {
            return Err(invalid(
                "loss.shared_negatives",
                self.loss.shared_negatives,
                "0 unless loss.kind is in_batch_softmax and sampler.strategy is `uniform` or `popularity`",
            ));
        }
        if self.loss.logq_correction
            && !matches!(
                self.loss.kind,
                LossKind::InBatchSoftmax | LossKind::SampledSoftmax
            )
        {
            return Err(invalid(
                "loss.logq_correction",
                true,
                "false unless loss.kind is in_batch_softmax or sampled_softmax",
            ));
        }
        if self.loss.logq == LogQTarget::NegativesOnly
            && (!self.loss.logq_correction || self.model.sequence.enabled)
        {
            return Err(invalid(
                "loss.logq",
                "\"negatives_only\"",
                "\"all\" unless loss.logq_correction is true (and model.sequence is off)",
            ));
        }
        self.sampler.hard.check(self)?;
        let o = &self.optimizer;
        positive_finite("optimizer.lr", o.lr)?;
        if !(o.weight_decay.is_finite() && o.weight_decay >= 0.0) {
            return Err(invalid(
                "optimizer.weight_decay",
                o.weight_decay,
                "a finite number >= 0",
            ));
        }
        for (key, value) in [
            ("optimizer.momentum", o.momentum),
            ("optimizer.beta1", o.beta1),
            ("optimizer.beta2", o.beta2),
        ] {
            if !(0.0..1.0).contains(&value) {
                return Err(invalid(key, value, "a number in [0, 1)"));
            }
        }
        positive_finite("optimizer.eps", o.eps)?;
        if !(self.schedule.gamma > 0.0 && self.schedule.gamma <= 1.0) {
            return Err(invalid(
                "schedule.gamma",
                self.schedule.gamma,
                "a number in (0, 1]",
            ));
        }
        let t = &self.train;
        for (key, value) in [
            ("train.batch_size", t.batch_size),
            ("train.epochs", t.epochs),
            ("train.eval_every", t.eval_every),
            ("train.eval_batch_size", t.eval_batch_size),
            ("train.replicas", t.replicas),
        ] {
            if value == 0 {
                return Err(invalid(key, 0, "a positive integer"));
            }
        }
        if self.loss.kind == LossKind::InBatchSoftmax && t.batch_size < 2 {
            return Err(invalid(
                "train.batch_size",
                t.batch_size,
                "at least 2 for loss.kind in_batch_softmax",
            ));
        }
        if !valid_device(&t.device) {
            return Err(invalid(
                "train.device",
                format!("{:?}", t.device),
                "\"cpu\", \"cuda\" or \"cuda:N\"",
            ));
        }
        match (self.data.protocol, t.select_metric) {
            (Protocol::Seed, SelectMetric::HitRate) => {
                return Err(invalid(
                    "train.select_metric",
                    "\"hit_rate\"",
                    "\"auc\", \"logloss\" or \"gauc\" under data.protocol seed",
                ));
            }
            (Protocol::LeaveLastOut | Protocol::Time, m) if m != SelectMetric::HitRate => {
                return Err(invalid(
                    "train.select_metric",
                    format!("{:?}", m.name()),
                    "\"hit_rate\" under data.protocol leave-last-out or time",
                ));
            }
            _ => {}
        }
        if t.select_ranking == SelectRanking::Masked && !self.data.protocol.is_retrieval() {
            return Err(invalid(
                "train.select_ranking",
                "\"masked\"",
                "\"unmasked\" unless data.protocol is leave-last-out or time",
            ));
        }
        self.check_sequence()?;
        self.check_branches()?;
        if self.features.history_len > 0 && !self.data.protocol.is_retrieval() {
            return Err(invalid(
                "features.history_len",
                self.features.history_len,
                "0 unless data.protocol is leave-last-out or time",
            ));
        }
        if self.features.recent_len > self.features.history_len {
            return Err(invalid(
                "features.recent_len",
                self.features.recent_len,
                "at most features.history_len",
            ));
        }
        if self.data.path.as_os_str().is_empty() {
            return Err(invalid("data.path", "\"\"", "a dataset folder"));
        }
        if self.output.dir.as_os_str().is_empty() {
            return Err(invalid("output.dir", "\"\"", "a run folder"));
        }
        Ok(())
    }
}

impl RunConfig {
    /// The sequence tower and the full softmax go together, under a retrieval protocol.
    fn check_sequence(&self) -> Result<(), ConfigError> {
        let sequence = &self.model.sequence;
        let full = self.loss.kind == LossKind::FullSoftmax;
        if full && !sequence.enabled {
            return Err(invalid(
                "loss.kind",
                "\"full_softmax\"",
                "another loss unless model.sequence.enabled",
            ));
        }
        if self.train.replicas > 1 && !(full && sequence.enabled) {
            return Err(invalid(
                "train.replicas",
                self.train.replicas,
                "1 unless model.sequence.enabled with loss.kind \"full_softmax\"",
            ));
        }
        if self.loss.exclude_seen && !(full && sequence.enabled) {
            return Err(invalid(
                "loss.exclude_seen",
                true,
                "false unless model.sequence.enabled with loss.kind \"full_softmax\"",
            ));
        }
        if self.loss.recent_seen_negatives > 0 && !self.loss.exclude_seen {
            return Err(invalid(
                "loss.recent_seen_negatives",
                self.loss.recent_seen_negatives,
                "0 unless loss.exclude_seen (without it every seen item is a negative)",
            ));
        }
        if !sequence.enabled {
            return Ok(());
        }
        if !full && self.loss.kind != LossKind::InBatchSoftmax {
            return Err(invalid(
                "loss.kind",
                format!("{:?}", self.loss.kind),
                "\"full_softmax\" or \"in_batch_softmax\" (sampled: the batch's targets and \
                 loss.shared_negatives) with model.sequence.enabled",
            ));
        }
        if !self.data.protocol.is_retrieval() {
            return Err(invalid(
                "model.sequence.enabled",
                true,
                "false unless data.protocol is leave-last-out or time",
            ));
        }
        if self.features.history_len > 0 {
            return Err(invalid(
                "features.history_len",
                self.features.history_len,
                "0 with model.sequence.enabled (the sequence is the history)",
            ));
        }
        if self.model.similarity != SimilarityKind::Dot || self.model.learn_temperature {
            return Err(invalid(
                "model.similarity",
                format!("{:?}", self.model.similarity),
                "\"dot\" with a fixed temperature under model.sequence (l2_normalize the towers for the cosine)",
            ));
        }
        if !(0.0..1.0).contains(&sequence.dropout) {
            return Err(invalid(
                "model.sequence.dropout",
                sequence.dropout,
                "in [0, 1)",
            ));
        }
        for (key, value) in [
            ("model.sequence.max_len", sequence.max_len),
            ("model.sequence.blocks", sequence.blocks),
            ("model.sequence.heads", sequence.heads),
            ("model.sequence.ffn_multiple", sequence.ffn_multiple),
        ] {
            if value == 0 {
                return Err(invalid(key, value, "> 0"));
            }
        }
        Ok(())
    }
}

// Parallel towers (`model.*_tower.branches`).

/// A branch of a parallel tower (`model.user_tower.branches`), after Tencent's parallel
/// two-tower structure: each runs on the tower's field embeddings (after SENet), each user
/// branch output meets the same branch's item output in an elementwise product, and a learned
/// linear layer weighs the products into the score. The weights fold into the user vector, so
/// export, recommend and serving still score with one dot product. The CPU engine runs the
/// plain tower only: under `train.engine = "auto"` such a run trains through Candle (a log line
/// says so), and `"fused"` is an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BranchKind {
    /// The MLP of `hidden`.
    Mlp,
    /// A DCN-v2 cross network (`cross_layers` layers), projected to the output size.
    Cross,
    /// The FM bi-interaction of the field embeddings, projected to the output size.
    Fm,
}

impl BranchKind {
    fn is_mlp_only(branches: &[BranchKind]) -> bool {
        branches == [BranchKind::Mlp]
    }

    fn is_default_cross_layers(layers: &usize) -> bool {
        *layers == dssm_model::DEFAULT_CROSS_LAYERS
    }
}

impl RunConfig {
    /// Parallel towers: one branch list on both towers, each branch once, with the dot product
    /// and without L2 normalisation or the sequence tower.
    fn check_branches(&self) -> Result<(), ConfigError> {
        let (user, item) = (&self.model.user_tower, &self.model.item_tower);
        for (side, tower) in [("user_tower", user), ("item_tower", item)] {
            let b = &tower.branches;
            if b.is_empty() || (1..b.len()).any(|i| b[..i].contains(&b[i])) {
                return Err(invalid(
                    &format!("model.{side}.branches"),
                    format!("{b:?}"),
                    "a non-empty list of \"mlp\", \"cross\", \"fm\", each at most once",
                ));
            }
            if b.contains(&BranchKind::Cross) && tower.cross_layers == 0 {
                return Err(invalid(
                    &format!("model.{side}.cross_layers"),
                    0,
                    "a positive integer with a cross branch",
                ));
            }
        }
        if item.branches != user.branches {
            return Err(invalid(
                "model.item_tower.branches",
                format!("{:?}", item.branches),
                &format!(
                    "the same list as model.user_tower.branches ({:?})",
                    user.branches
                ),
            ));
        }
        if BranchKind::is_mlp_only(&user.branches) {
            return Ok(());
        }
        let conflict = if self.model.similarity != SimilarityKind::Dot {
            Some(("model.similarity", format!("{:?}", self.model.similarity)))
        } else if user.l2_normalize {
            Some(("model.user_tower.l2_normalize", "true".to_string()))
        } else if item.l2_normalize {
            Some(("model.item_tower.l2_normalize", "true".to_string()))
        } else if self.model.sequence.enabled {
            Some(("model.sequence.enabled", "true".to_string()))
        } else {
            None
        };
        match conflict {
            Some((key, value)) => Err(invalid(
                key,
                value,
                "\"dot\", no l2_normalize and no sequence tower with parallel towers (model.*_tower.branches)",
            )),
            None => Ok(()),
        }
    }
}

fn positive_finite(key: &str, value: f64) -> Result<(), ConfigError> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(invalid(key, value, "a finite number > 0"))
    }
}

/// Applies one `dotted.key=value` override to a TOML table (see
/// [`RunConfig::from_file_with_overrides`]).
fn set_dotted(table: &mut toml::Table, setting: &str) -> Result<(), String> {
    let (key, raw) = setting
        .split_once('=')
        .ok_or_else(|| "expected KEY=VALUE, e.g. train.epochs=8".to_string())?;
    let (key, raw) = (key.trim(), raw.trim());
    let value = match toml::from_str::<toml::Table>(&format!("value = {raw}")) {
        Ok(mut parsed) => parsed
            .remove("value")
            .unwrap_or_else(|| toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    };
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts
        .pop()
        .filter(|k| !k.is_empty())
        .ok_or_else(|| "an empty key".to_string())?;
    let mut current = table;
    for part in parts {
        current = match current
            .entry(part)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        {
            toml::Value::Table(t) => t,
            _ => return Err(format!("`{part}` in `{key}` is a value, not a table")),
        };
    }
    current.insert(last.to_string(), value);
    Ok(())
}

fn valid_device(device: &str) -> bool {
    device == "cpu"
        || device == "cuda"
        || device
            .strip_prefix("cuda:")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[data]
path = "datasets/prepared/ml-1m-seed"
protocol = "seed"

[features]
user = ["user_id", "gender"]
item = ["movie_id"]
embedding_dim = 8

[model]
similarity = "dot"
temperature = 1.0

[model.user_tower]
hidden = [64, 32]
activation = "leaky_relu"
dropout = 0.1

[model.item_tower]
hidden = [64, 32]

[model.senet]
enabled = false
reduction = 2

[sampler]
strategy = "popularity"
negatives_per_positive = 5
alpha = 1.0

[loss]
kind = "bce"

[optimizer]
kind = "adam"
lr = 0.001

[schedule]
step_size = 2
gamma = 0.5

[train]
batch_size = 2048
epochs = 10
patience = 2
select_metric = "auc"
seed = 42
device = "cpu"

[output]
dir = "runs/x"
"#;

    #[test]
    fn good_file_parses() {
        let config = RunConfig::from_toml_str(GOOD).unwrap();
        assert_eq!(
            config.features.user.as_deref().unwrap(),
            ["user_id", "gender"]
        );
        assert_eq!(config.model.user_tower.dropout, 0.1);
        assert!(!config.model.senet.enabled);
        assert_eq!(config.schedule.step_size, 2);
        assert_eq!(config.train.patience, 2);
        // The serialised form parses back to the same config.
        let again = RunConfig::from_toml_str(&config.to_toml_string()).unwrap();
        assert_eq!(again, config);
    }

    #[test]
    fn unknown_key_is_rejected_with_its_name_and_table() {
        let text = GOOD.replace("dropout = 0.1", "dropout = 0.1\ndropuot = 0.2");
        let err = RunConfig::from_toml_str(&text).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("dropuot"), "{message}");
        assert!(message.contains("model.user_tower"), "{message}");
        assert!(
            message.contains("dropout"),
            "allowed keys listed: {message}"
        );
    }

    #[test]
    fn unknown_section_is_rejected() {
        let err = RunConfig::from_toml_str("[trian]\nepochs = 1\n").unwrap_err();
        assert!(err.to_string().contains("trian"), "{err}");
    }

    #[test]
    fn bad_enum_value_names_key_and_allowed_values() {
        let text = GOOD.replace("similarity = \"dot\"", "similarity = \"euclid\"");
        let message = RunConfig::from_toml_str(&text).unwrap_err().to_string();
        assert!(message.contains("model.similarity"), "{message}");
        assert!(message.contains("euclid"), "{message}");
        assert!(message.contains("cosine"), "{message}");
    }

    #[test]
    fn out_of_range_value_names_key() {
        let text = GOOD.replace("dropout = 0.1", "dropout = 1.5");
        match RunConfig::from_toml_str(&text).unwrap_err() {
            ConfigError::Invalid { key, value, .. } => {
                assert_eq!(key, "model.user_tower.dropout");
                assert_eq!(value, "1.5");
            }
            other => panic!("unexpected error {other}"),
        }
        let text = GOOD.replace("device = \"cpu\"", "device = \"gpu\"");
        let message = RunConfig::from_toml_str(&text).unwrap_err().to_string();
        assert!(message.contains("train.device"), "{message}");
        let text = GOOD.replace("lr = 0.001", "lr = -1.0");
        let message = RunConfig::from_toml_str(&text).unwrap_err().to_string();
        assert!(message.contains("optimizer.lr"), "{message}");
    }

    #[test]
    fn inconsistent_combinations_are_rejected() {
        // Each (replace `from` in GOOD by `to`) is refused with a message naming `key`.
        let cases = [
            (
                "hidden = [64, 32]\n\n[model.senet]",
                "hidden = [64, 16]\n\n[model.senet]",
                "model.item_tower.hidden",
            ),
            (
                "kind = \"bce\"",
                "kind = \"bce\"\nlogq_correction = true",
                "loss.logq_correction",
            ),
            (
                "embedding_dim = 8",
                "embedding_dim = 8\nhistory_len = 10",
                "features.history_len",
            ),
            (
                "select_metric = \"auc\"",
                "select_metric = \"hit_rate\"",
                "train.select_metric",
            ),
            (
                "select_metric = \"auc\"",
                "select_metric = \"auc\"\nselect_ranking = \"masked\"",
                "train.select_ranking",
            ),
            (
                "kind = \"bce\"",
                "kind = \"bce\"\nexclude_seen = true",
                "loss.exclude_seen",
            ),
            (
                "kind = \"bce\"",
                "kind = \"bce\"\nrecent_seen_negatives = 1",
                "loss.recent_seen_negatives",
            ),
        ];
        for (from, to, key) in cases {
            assert!(GOOD.contains(from), "{from}");
            let message = RunConfig::from_toml_str(&GOOD.replace(from, to))
                .unwrap_err()
                .to_string();
            assert!(message.contains(key), "{key}: {message}");
        }
    }

    #[test]
    fn recent_items_come_from_the_history() {
        let text = GOOD
            .replace("protocol = \"seed\"", "protocol = \"leave-last-out\"")
            .replace("select_metric = \"auc\"", "select_metric = \"hit_rate\"")
            .replace(
                "embedding_dim = 8",
                "embedding_dim = 8\nhistory_len = 4\nrecent_len = 5",
            );
        let message = RunConfig::from_toml_str(&text).unwrap_err().to_string();
        assert!(message.contains("features.recent_len"), "{message}");
        let ok = text.replace("recent_len = 5", "recent_len = 4");
        assert_eq!(
            RunConfig::from_toml_str(&ok).unwrap().features.recent_len,
            4
        );
    }

    #[test]
    fn overrides_change_values_create_tables_and_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.toml");
        std::fs::write(&path, GOOD).unwrap();
        let set = |settings: &[&str]| {
            let settings: Vec<String> = settings.iter().map(|s| s.to_string()).collect();
            RunConfig::from_file_with_overrides(&path, &settings)
        };
        let config = set(&[
            "train.epochs = 3",
            "optimizer.lr=0.01",
            "sampler.strategy=uniform",
            "model.user_tower.hidden=[64, 32]",
            "schedule.step_size=2",
        ])
        .unwrap();
        assert_eq!(config.train.epochs, 3);
        assert_eq!(config.optimizer.lr, 0.01);
        assert_eq!(config.sampler.strategy, SamplerStrategy::Uniform);
        assert_eq!(config.model.user_tower.hidden, [64, 32]);
        assert_eq!(config.schedule.step_size, 2);
        // Everything else is the file's.
        assert_eq!(config.features, set(&[]).unwrap().features);
        let message = |settings: &[&str]| set(settings).unwrap_err().to_string();
        assert!(message(&["train.epochs"]).contains("KEY=VALUE"));
        assert!(message(&["train.epochs.x=1"]).contains("not a table"));
        assert!(message(&["train.epochs=0"]).contains("train.epochs"));
        assert!(message(&["train.epoch=3"]).contains("epoch"));
    }

    #[test]
    fn shared_negatives_need_in_batch_softmax() {
        let text = GOOD.replace("kind = \"bce\"", "kind = \"bce\"\nshared_negatives = 16");
        let message = RunConfig::from_toml_str(&text).unwrap_err().to_string();
        assert!(message.contains("loss.shared_negatives"), "{message}");
    }

    #[test]
    fn hard_negative_keys_are_checked_by_name() {
        let message = |text: &str| RunConfig::from_toml_str(text).unwrap_err().to_string();
        let hard = |keys: &str| GOOD.replace("[loss]", &format!("[sampler.hard]\n{keys}\n[loss]"));
        let ok =
            RunConfig::from_toml_str(&hard("mine_every = 2\nband = [11, 50]\nfraction = 0.25"))
                .unwrap();
        assert_eq!(ok.sampler.hard.band, [11, 50]);
        assert!(message(&hard("band = [0, 50]")).contains("sampler.hard.band"));
        assert!(message(&hard("band = [60, 50]")).contains("sampler.hard.band"));
        assert!(message(&hard("fraction = 1.5")).contains("sampler.hard.fraction"));
        assert!(message(&hard("online = 4")).contains("sampler.hard.online"));
        assert!(message(&hard("bnad = [1, 2]")).contains("bnad"));
        let no_sampler = hard("mine_every = 1").replace("\"popularity\"", "\"none\"");
        assert!(message(&no_sampler).contains("sampler.hard.mine_every"));
        let in_batch =
            hard("mine_every = 1").replace("kind = \"bce\"", "kind = \"in_batch_softmax\"");
        assert!(message(&in_batch).contains("sampler.hard.mine_every"));
        let online = hard("online = 4").replace("kind = \"bce\"", "kind = \"in_batch_softmax\"");
        assert_eq!(
            RunConfig::from_toml_str(&online)
                .unwrap()
                .sampler
                .hard
                .online,
            4
        );
        // loss.logq: "all" (the default) or "negatives_only", which needs the correction.
        let logq = |value: &str| {
            GOOD.replace(
                "kind = \"bce\"",
                &format!("kind = \"sampled_softmax\"\n{value}"),
            )
        };
        assert_eq!(
            RunConfig::from_toml_str(&logq("")).unwrap().loss.logq,
            LogQTarget::All
        );
        assert!(message(&logq("logq = \"negatives_only\"")).contains("loss.logq"));
        let both = logq("logq = \"negatives_only\"\nlogq_correction = true");
        assert_eq!(
            RunConfig::from_toml_str(&both).unwrap().loss.logq,
            LogQTarget::NegativesOnly
        );
        assert!(message(&logq("logq = \"positives\"")).contains("negatives_only"));
    }

    #[test]
    fn wrong_type_names_key() {
        let text = GOOD.replace("epochs = 10", "epochs = \"ten\"");
        let message = RunConfig::from_toml_str(&text).unwrap_err().to_string();
        assert!(message.contains("train.epochs"), "{message}");
    }

    #[test]
    fn shipped_configs_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        for name in [
            "dssm.toml",
            "senet.toml",
            "senet-genres.toml",
            "quickstart.toml",
        ] {
            let config = RunConfig::from_file(dir.join(name)).unwrap();
            assert_eq!(config.data.protocol, Protocol::Seed, "{name}");
        }
        let retrieval = RunConfig::from_file(dir.join("retrieval.toml")).unwrap();
        assert_eq!(retrieval.data.protocol, Protocol::LeaveLastOut);
        assert_eq!(retrieval.train.select_metric, SelectMetric::HitRate);
        assert_eq!(retrieval.loss.kind, LossKind::InBatchSoftmax);
        let senet = RunConfig::from_file(dir.join("senet.toml")).unwrap();
        let plain = RunConfig::from_file(dir.join("dssm.toml")).unwrap();
        assert!(senet.model.senet.enabled && !plain.model.senet.enabled);
        // parallel.toml is senet.toml with three branches per tower.
        let mut parallel = RunConfig::from_file(dir.join("parallel.toml")).unwrap();
        assert_eq!(parallel.model.user_tower.branches.len(), 3);
        for tower in [
            &mut parallel.model.user_tower,
            &mut parallel.model.item_tower,
        ] {
            tower.branches = vec![BranchKind::Mlp];
        }
        parallel.output.dir = senet.output.dir.clone();
        assert_eq!(parallel, senet);
        // rated.toml is senet-genres.toml with the parallel branches and no sampled negatives.
        let mut rated = RunConfig::from_file(dir.join("rated.toml")).unwrap();
        let genres = RunConfig::from_file(dir.join("senet-genres.toml")).unwrap();
        assert_eq!(rated.sampler.strategy, SamplerStrategy::None);
        let parallel = RunConfig::from_file(dir.join("parallel.toml")).unwrap();
        for (tower, branched) in [
            (&mut rated.model.user_tower, &parallel.model.user_tower),
            (&mut rated.model.item_tower, &parallel.model.item_tower),
        ] {
            assert_eq!(tower, branched);
            tower.branches = vec![BranchKind::Mlp];
        }
        rated.sampler = genres.sampler.clone();
        rated.output.dir = genres.output.dir.clone();
        assert_eq!(rated, genres);
    }

    #[test]
    fn parallel_tower_keys_are_checked() {
        let key_of = |extra: &str| match RunConfig::from_toml_str(
            &GOOD.replace("dropout = 0.1\n", &format!("dropout = 0.1\n{extra}\n")),
        ) {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("{extra}: {other:?}"),
        };
        // Only the user tower changes: the item tower keeps ["mlp"].
        assert_eq!(
            key_of("branches = [\"mlp\", \"fm\"]"),
            "model.item_tower.branches"
        );
        assert_eq!(key_of("branches = []"), "model.user_tower.branches");
        assert_eq!(
            key_of("branches = [\"fm\", \"fm\"]"),
            "model.user_tower.branches"
        );
        assert_eq!(
            key_of("cross_layers = 0\nbranches = [\"cross\"]"),
            "model.user_tower.cross_layers"
        );
        let both = |extra: &str| {
            GOOD.replace(
                "[model.item_tower]\n",
                "[model.item_tower]\nbranches = [\"mlp\", \"cross\"]\n",
            )
            .replace(
                "dropout = 0.1\n",
                &format!("dropout = 0.1\nbranches = [\"mlp\", \"cross\"]\n{extra}"),
            )
        };
        let config = RunConfig::from_toml_str(&both("")).unwrap();
        assert_eq!(
            config.model.item_tower.branches,
            [BranchKind::Mlp, BranchKind::Cross]
        );
        let err = RunConfig::from_toml_str(&both("l2_normalize = true\n")).unwrap_err();
        assert!(
            err.to_string().contains("model.user_tower.l2_normalize"),
            "{err}"
        );
        let err = RunConfig::from_toml_str(
            &both("").replace("similarity = \"dot\"", "similarity = \"cosine\""),
        )
        .unwrap_err();
        assert!(err.to_string().contains("model.similarity"), "{err}");
        // The default writes no branch keys into a run's config.toml.
        let text = RunConfig::from_toml_str(GOOD).unwrap().to_toml_string();
        assert!(
            !text.contains("branches") && !text.contains("cross_layers"),
            "{text}"
        );
    }

    #[test]
    fn empty_text_is_the_default() {
        assert_eq!(RunConfig::from_toml_str("").unwrap(), RunConfig::default());
    }
}
