//! An epoch's training rows, built from (seed, epoch) alone: the train rows (or their positives),
//! sampled negatives and a shuffle. Both tasks of today draw their batches here.

use std::ops::Range;

use dssm_sampler::{
    NegativeSampler, PopularitySampler, Positives, SamplerError, UniformSampler, UserItems,
    chunk_rng, fill_negatives,
};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::config::{LossKind, RunConfig, SamplerStrategy};
use crate::error::TrainError;
use crate::inputs::{Inputs, SplitRows};
use crate::logq::ItemQ;
use crate::mining::Mining;
use crate::seeds::{
    STREAM_HARD_NEGATIVES, STREAM_NEGATIVE_ITEMS, STREAM_NEGATIVE_USERS, STREAM_SHARED_NEGATIVES,
    STREAM_SHUFFLE, derive_seed,
};
use crate::tables::SideTable;

/// The training rows of one epoch.
pub(crate) struct EpochRows {
    /// Pointwise: every row; pairwise/softmax: the positives.
    pub(crate) users: Vec<u32>,
    pub(crate) items: Vec<u32>,
    pub(crate) labels: Vec<f32>,
    /// Pairwise/sampled softmax: `k` negatives per row; in-batch softmax with
    /// `loss.shared_negatives` = K: K per batch, batch `s` at `s * K..(s + 1) * K`.
    pub(crate) negatives: Vec<u32>,
    pub(crate) k: usize,
    /// Rows per batch.
    pub(crate) batch_size: usize,
    /// Shared negatives per batch (in-batch softmax; 0 otherwise).
    pub(crate) shared: usize,
}

impl EpochRows {
    /// Batches in the epoch.
    pub(crate) fn steps(&self) -> usize {
        self.users.len().div_ceil(self.batch_size)
    }

    /// The rows of batch `step` and its shared negatives.
    pub(crate) fn batch(&self, step: usize) -> (Range<usize>, &[u32]) {
        let start = step * self.batch_size;
        let end = (start + self.batch_size).min(self.users.len());
        let shared = &self.negatives[step * self.shared..(step + 1) * self.shared];
        (start..end, shared)
    }

    /// Rows seen by the loss: each row with its `k` negatives.
    pub(crate) fn samples(&self) -> usize {
        self.users.len() * (1 + self.k)
    }
}

/// A sampler of either strategy (the sampler trait has generic methods, so no `dyn`).
pub(crate) enum AnySampler {
    Uniform(UniformSampler),
    Popularity(PopularitySampler),
}

impl NegativeSampler for AnySampler {
    fn num_items(&self) -> usize {
        match self {
            AnySampler::Uniform(s) => s.num_items(),
            AnySampler::Popularity(s) => s.num_items(),
        }
    }
    fn sample<R: rand::Rng + ?Sized>(&self, rng: &mut R) -> u32 {
        match self {
            AnySampler::Uniform(s) => s.sample(rng),
            AnySampler::Popularity(s) => s.sample(rng),
        }
    }
    fn probability(&self, item: u32) -> f64 {
        match self {
            AnySampler::Uniform(s) => s.probability(item),
            AnySampler::Popularity(s) => s.probability(item),
        }
    }
    fn max_retries(&self) -> u32 {
        match self {
            AnySampler::Uniform(s) => s.max_retries(),
            AnySampler::Popularity(s) => s.max_retries(),
        }
    }
    fn sample_from_complement<R: rand::Rng + ?Sized>(
        &self,
        user: u32,
        positives: Positives<'_>,
        rng: &mut R,
    ) -> Result<u32, SamplerError> {
        match self {
            AnySampler::Uniform(s) => s.sample_from_complement(user, positives, rng),
            AnySampler::Popularity(s) => s.sample_from_complement(user, positives, rng),
        }
    }
}

fn sampler_error(e: SamplerError) -> TrainError {
    TrainError::Sampler {
        message: e.to_string(),
    }
}

/// The configured sampler over the items of `inputs` (`None` for `sampler.strategy = "none"`).
pub(crate) fn build_sampler(
    config: &RunConfig,
    inputs: &Inputs,
) -> Result<Option<AnySampler>, TrainError> {
    let n_items = inputs.items.rows();
    let counts = &inputs.dataset.items.train_count;
    Ok(match config.sampler.strategy {
        SamplerStrategy::None => None,
        SamplerStrategy::Uniform => Some(AnySampler::Uniform(
            UniformSampler::new(n_items).map_err(sampler_error)?,
        )),
        SamplerStrategy::Popularity => {
            if counts.len() != n_items {
                return Err(TrainError::Dataset {
                    path: inputs.dataset.dir.clone(),
                    message: format!("{} train counts for {n_items} items", counts.len()),
                });
            }
            Some(AnySampler::Popularity(
                PopularitySampler::builder()
                    .alpha(config.sampler.alpha)
                    .build(counts)
                    .map_err(sampler_error)?,
            ))
        }
    })
}

/// Builds each epoch's rows from (seed, epoch).
pub(crate) struct EpochBuilder<'a> {
    config: &'a RunConfig,
    train: SplitRows,
    sampler: Option<AnySampler>,
    pub(crate) item_q: ItemQ,
    exclude: Option<UserItems>,
    /// Positive train rows (label 1) for the pairwise and softmax losses.
    positives: Vec<usize>,
    /// Training label of every train row: rating > threshold (`seed`), or 1 for every
    /// interaction (`leave-last-out`).
    labels: Vec<f32>,
    n_users: u32,
    /// Offline hard negatives (`sampler.hard.mine_every`).
    mining: Option<Mining>,
}

impl<'a> EpochBuilder<'a> {
    /// The builder over `train`, whose users index `inputs.users`.
    pub(crate) fn new(
        config: &'a RunConfig,
        inputs: &Inputs,
        train: SplitRows,
    ) -> Result<Self, TrainError> {
        let n_items = inputs.items.rows();
        let sampler = build_sampler(config, inputs)?;
        let exclude = if config.sampler.exclude_positives && sampler.is_some() {
            let pairs: Vec<(u32, u32)> = train
                .users
                .iter()
                .copied()
                .zip(train.items.iter().copied())
                .collect();
            Some(
                UserItems::from_pairs(inputs.users.rows(), n_items, &pairs)
                    .map_err(sampler_error)?,
            )
        } else {
            None
        };
        // Under leave-last-out every interaction is a positive, whatever its rating.
        let labels: Vec<f32> = if config.data.protocol.is_retrieval() {
            vec![1.0; train.labels.len()]
        } else {
            train.labels.iter().map(|&l| f32::from(l.min(1))).collect()
        };
        let positives: Vec<usize> = labels
            .iter()
            .enumerate()
            .filter(|(_, l)| **l != 0.0)
            .map(|(i, _)| i)
            .collect();
        let sampler_q = || {
            sampler
                .as_ref()
                .map(|s| (0..n_items as u32).map(|i| s.probability(i)).collect())
        };
        let positive_items = positives.iter().map(|&row| train.items[row]);
        let item_q = ItemQ::new(config, n_items, positive_items, sampler_q);
        Ok(Self {
            config,
            train,
            sampler,
            item_q,
            exclude,
            positives,
            labels,
            n_users: inputs.users.rows() as u32,
            mining: None,
        })
    }

    /// The builder with offline hard negatives, built by the task (`None`: off). `queries` has
    /// one row per base user as a query sees it; `base_users[u]` is the base user of the train
    /// rows' user id `u`.
    pub(crate) fn with_mining(
        mut self,
        inputs: &Inputs,
        queries: SideTable,
        base_users: Vec<u32>,
    ) -> Result<Self, TrainError> {
        self.mining = Mining::new(
            self.config,
            queries,
            base_users,
            (&self.train.users, &self.train.items),
            &inputs.dataset.items.train_count,
        )?;
        Ok(self)
    }

    /// Mines hard negatives with `model` before `epoch` when due (see [`Mining::prepare`]).
    pub(crate) fn prepare(
        &self,
        epoch: usize,
        model: &dssm_model::Dssm,
        inputs: &Inputs,
    ) -> Result<(), TrainError> {
        match &self.mining {
            Some(mining) => mining.prepare(epoch, model, &inputs.model_config, &inputs.items),
            None => Ok(()),
        }
    }

    /// `per_user` sampled negatives for each of `users`, without their train items when
    /// `sampler.exclude_positives`.
    fn draw(
        &self,
        sampler: &AnySampler,
        users: &[u32],
        per_user: usize,
        epoch: usize,
    ) -> Result<Vec<u32>, TrainError> {
        if let Some(mining) = &self.mining {
            let seed = derive_seed(self.config.train.seed, epoch, STREAM_HARD_NEGATIVES, 0);
            if let Some(mixed) = mining.draw(sampler, users, per_user, (seed, epoch as u64))? {
                return Ok(mixed);
            }
        }
        let mut negatives = vec![0u32; users.len() * per_user];
        fill_negatives(
            sampler,
            users,
            per_user,
            self.exclude.as_ref(),
            derive_seed(self.config.train.seed, epoch, STREAM_NEGATIVE_ITEMS, 0),
            epoch as u64,
            &mut negatives,
        )
        .map_err(sampler_error)?;
        Ok(negatives)
    }

    /// The rows of `epoch` (0-based), shuffled.
    pub(crate) fn rows(&self, epoch: usize) -> Result<EpochRows, TrainError> {
        let mut rows = if self.config.loss.kind == LossKind::Bce {
            self.pointwise_rows(epoch)?
        } else {
            self.positive_rows(epoch)?
        };
        shuffle(
            &mut rows,
            derive_seed(self.config.train.seed, epoch, STREAM_SHUFFLE, 0),
        );
        Ok(rows)
    }

    /// Every train row, plus `k` negatives per positive: popularity (or uniform) items, each
    /// with a uniformly random user, labelled 0.
    fn pointwise_rows(&self, epoch: usize) -> Result<EpochRows, TrainError> {
        use rand::RngExt;
        let k = self.config.sampler.negatives_per_positive;
        let mut users = self.train.users.clone();
        let mut items = self.train.items.clone();
        let mut labels = self.labels.clone();
        let hard = match &self.mining {
            Some(mining) => mining.active()?,
            None => false,
        };
        if let Some(sampler) = &self.sampler
            && k > 0
            && hard
        {
            // Each positive's k negatives pair its own user with mixed items (hard ones from
            // the user's band, the rest from the strategy).
            let positive_users: Vec<u32> = self
                .positives
                .iter()
                .map(|&i| self.train.users[i])
                .collect();
            let negative_items = self.draw(sampler, &positive_users, k, epoch)?;
            let negative_users = positive_users
                .iter()
                .flat_map(|&u| std::iter::repeat_n(u, k));
            users.extend(negative_users);
            items.extend_from_slice(&negative_items);
            labels.resize(users.len(), 0.0);
        } else if let Some(sampler) = &self.sampler
            && k > 0
        {
            let n = self.positives.len() * k;
            let seed = derive_seed(self.config.train.seed, epoch, STREAM_NEGATIVE_USERS, 0);
            let mut rng = StdRng::seed_from_u64(seed);
            let negative_users: Vec<u32> =
                (0..n).map(|_| rng.random_range(0..self.n_users)).collect();
            let negative_items = self.draw(sampler, &negative_users, 1, epoch)?;
            users.extend_from_slice(&negative_users);
            items.extend_from_slice(&negative_items);
            labels.resize(users.len(), 0.0);
        }
        Ok(self.epoch_rows(users, items, labels, (Vec::new(), 0)))
    }

    /// The positive rows, with `k` negatives each (BPR, sampled softmax) or the shared
    /// negatives of each batch (in-batch softmax).
    fn positive_rows(&self, epoch: usize) -> Result<EpochRows, TrainError> {
        let column = |of: &[u32]| -> Vec<u32> { self.positives.iter().map(|&i| of[i]).collect() };
        let (users, items) = (column(&self.train.users), column(&self.train.items));
        let k = self.config.sampler.negatives_per_positive;
        let negatives = match (&self.sampler, self.config.loss.kind) {
            (Some(sampler), LossKind::Bpr | LossKind::SampledSoftmax) => {
                (self.draw(sampler, &users, k, epoch)?, k)
            }
            (Some(sampler), LossKind::InBatchSoftmax) if self.config.loss.shared_negatives > 0 => {
                (self.shared_negatives(sampler, users.len(), epoch), 0)
            }
            _ => (Vec::new(), 0),
        };
        let labels = vec![1.0; users.len()];
        Ok(self.epoch_rows(users, items, labels, negatives))
    }

    /// K items per batch, shared by its rows (no per-user exclusion).
    fn shared_negatives(&self, sampler: &AnySampler, rows: usize, epoch: usize) -> Vec<u32> {
        let shared = self.config.loss.shared_negatives;
        let batches = rows.div_ceil(self.config.train.batch_size);
        let seed = derive_seed(self.config.train.seed, epoch, STREAM_SHARED_NEGATIVES, 0);
        let mut rng = chunk_rng(seed, epoch as u64, 0);
        (0..batches * shared)
            .map(|_| sampler.sample(&mut rng))
            .collect()
    }

    fn epoch_rows(
        &self,
        users: Vec<u32>,
        items: Vec<u32>,
        labels: Vec<f32>,
        (negatives, k): (Vec<u32>, usize),
    ) -> EpochRows {
        let loss = &self.config.loss;
        EpochRows {
            users,
            items,
            labels,
            negatives,
            k,
            batch_size: self.config.train.batch_size,
            shared: if loss.kind == LossKind::InBatchSoftmax {
                loss.shared_negatives
            } else {
                0
            },
        }
    }
}

/// Shuffles rows (and their negatives) together with the RNG of `seed`.
fn shuffle(rows: &mut EpochRows, seed: u64) {
    let mut order: Vec<u32> = (0..rows.users.len() as u32).collect();
    order.shuffle(&mut StdRng::seed_from_u64(seed));
    let permute_u32 = |v: &[u32]| order.iter().map(|&i| v[i as usize]).collect::<Vec<u32>>();
    rows.users = permute_u32(&rows.users);
    rows.items = permute_u32(&rows.items);
    rows.labels = order.iter().map(|&i| rows.labels[i as usize]).collect();
    if rows.k > 0 {
        let mut negatives = Vec::with_capacity(rows.negatives.len());
        for &i in &order {
            let start = i as usize * rows.k;
            negatives.extend_from_slice(&rows.negatives[start..start + rows.k]);
        }
        rows.negatives = negatives;
    }
}
