//! The next-item task of the sequence user tower (`model.sequence`, `leave-last-out` / `time`):
//! each user's train items in time order form one sequence; every position is trained to predict
//! the next item with a softmax over the whole catalogue (`loss.kind = "full_softmax"`). A
//! validation query is the user's last `max_len` train items; a test query the same with the
//! validation item appended: exactly the queries of the retrieval task, ranked the same way.

use dssm_data::Split;
use dssm_model::{
    Dssm, Mode, RowExclusions, catalogue_softmax_cross_entropy, softmax_cross_entropy,
};
use dssm_retrieval::{PROTOCOL_CUTOFFS, ProtocolVariant, RankingReport};
use dssm_sampler::NegativeSampler;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};

use crate::batches::{AnySampler, build_sampler};
use crate::config::{LossKind, RunConfig, SequenceWindowsKind};
use crate::error::TrainError;
use crate::inputs::{Inputs, SplitRows};
use crate::logq::{ItemQ, in_batch_log_q};
use crate::report::FinalMetrics;
use crate::retrieval::{HeldOut, RetrievalSetup, describe};
use crate::seeds::{STREAM_SHARED_NEGATIVES, STREAM_SHUFFLE, STREAM_WINDOWS, derive_seed};
use crate::step::{StepLoss, Stepper};
use crate::tables::{GatherBuffers, SideTable};
use crate::task::sampled::{LocalItems, SampledColumns};
use crate::task::{Batches, Task, Validation, record_test, retrieval_section};
use candle_core::Tensor;

mod replicas;

/// Every user's train items (item rows) in time order, in CSR form.
pub(crate) struct UserSequences {
    offsets: Vec<usize>,
    items: Vec<u32>,
}

impl UserSequences {
    /// Orders each user's rows by (timestamp, line), a row without a timestamp first, as the
    /// split and the history feature do.
    pub(crate) fn new(train: &SplitRows, n_users: usize) -> Self {
        let order = crate::history::time_order(&train.timed());
        let mut offsets = vec![0usize; n_users + 1];
        for &u in &train.users {
            offsets[u as usize + 1] += 1;
        }
        for u in 0..n_users {
            offsets[u + 1] += offsets[u];
        }
        let items = order.iter().map(|&r| train.items[r]).collect();
        Self { offsets, items }
    }

    /// The train items of user row `user`, oldest first.
    pub(crate) fn of(&self, user: u32) -> &[u32] {
        let u = user as usize;
        &self.items[self.offsets[u]..self.offsets[u + 1]]
    }
}

/// A slice `start..end` of a user's train sequence: inputs `start..end - 1`, targets
/// `start + 1..end` (at most `max_len` of each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    user: u32,
    start: usize,
    end: usize,
}

impl Window {
    fn targets(&self) -> usize {
        self.end - self.start - 1
    }
}

/// The windows of a sequence of `len` items (`len >= 2`) an epoch trains under `kind`; `draw` is
/// a uniform draw in `0..n` for `random`.
fn windows_of(
    len: usize,
    max_len: usize,
    kind: SequenceWindowsKind,
    draw: &mut impl FnMut(usize) -> usize,
) -> Vec<(usize, usize)> {
    let span = |end: usize| (end.saturating_sub(max_len + 1), end);
    match kind {
        SequenceWindowsKind::Last => vec![span(len)],
        // Ends max_len + 1..=len, each equally likely.
        SequenceWindowsKind::Random if len > max_len + 1 => {
            vec![span(max_len + 1 + draw(len - max_len))]
        }
        SequenceWindowsKind::Random => vec![span(len)],
        SequenceWindowsKind::All => (0..)
            .map(|i| len - (i * max_len).min(len))
            .take_while(|&end| end >= 2)
            .map(span)
            .collect(),
    }
}

/// An epoch: the training windows in a shuffled order (and, for the sampled softmax, each
/// step's shared negatives).
pub(crate) struct SequenceBatches {
    windows: Vec<Window>,
    batch_size: usize,
    positions: usize,
    /// `loss.shared_negatives` items per step, step `s` at `s * K..(s + 1) * K`.
    shared: Vec<u32>,
    shared_per_step: usize,
}

impl Batches for SequenceBatches {
    fn steps(&self) -> usize {
        self.windows.len().div_ceil(self.batch_size)
    }
    fn rows(&self) -> usize {
        self.windows.len()
    }
    fn batch_rows(&self, step: usize) -> usize {
        self.batch(step).len()
    }
    fn samples(&self) -> usize {
        self.positions
    }
}

impl SequenceBatches {
    fn batch(&self, step: usize) -> &[Window] {
        let start = step * self.batch_size;
        &self.windows[start..(start + self.batch_size).min(self.windows.len())]
    }

    fn shared_negatives(&self, step: usize) -> &[u32] {
        let k = self.shared_per_step;
        &self.shared[step * k..(step + 1) * k]
    }
}

/// Host buffers reused from step to step.
#[derive(Default)]
pub(crate) struct SequenceBuffers {
    users: GatherBuffers,
    items: GatherBuffers,
}

/// Sequences of a batch as the tower reads them: `rows` left-padded rows of `len` ids (item
/// row + 1, 0 = padding).
struct Padded {
    ids: Vec<u32>,
    rows: usize,
    len: usize,
}

impl Padded {
    /// The last `max_len` items of each of `sequences`, left-padded to the longest.
    fn new<'s>(
        sequences: impl ExactSizeIterator<Item = &'s [u32]> + Clone,
        max_len: usize,
    ) -> Self {
        let rows = sequences.len();
        let len = sequences
            .clone()
            .map(|s| s.len().min(max_len))
            .max()
            .unwrap_or(0)
            .max(1);
        let mut ids = vec![0u32; rows * len];
        for (r, sequence) in sequences.enumerate() {
            let tail = &sequence[sequence.len().saturating_sub(max_len)..];
            let row = &mut ids[(r + 1) * len - tail.len()..(r + 1) * len];
            for (slot, &item) in row.iter_mut().zip(tail) {
                *slot = item + 1;
            }
        }
        Self { ids, rows, len }
    }
}

/// See the module docs.
pub(crate) struct SequenceTask<'a> {
    config: &'a RunConfig,
    inputs: Inputs,
    sequences: UserSequences,
    /// Users with at least two train items (one input, one target).
    train_users: Vec<u32>,
    /// `loss.kind = "in_batch_softmax"`: the shared negatives' sampler (with
    /// `loss.shared_negatives`) and the log-Q correction's q.
    sampler: Option<AnySampler>,
    item_q: ItemQ,
    setup: RetrievalSetup,
    val: SplitRows,
    val_held_out: HeldOut,
    popularity_val: RankingReport,
    /// `train.replicas` single-threaded pools, built at the first replicated step.
    replica_pools: std::sync::OnceLock<Result<Vec<rayon::ThreadPool>, String>>,
}

impl<'a> SequenceTask<'a> {
    /// The task over `inputs`: reads the train and validation rows.
    pub(crate) fn new(config: &'a RunConfig, inputs: Inputs) -> Result<Self, TrainError> {
        let (n_users, n_items) = (inputs.users.rows(), inputs.items.rows());
        let train = inputs.split(Split::Train)?;
        let val = inputs.split(Split::Val)?;
        let sequences = UserSequences::new(&train, n_users);
        let max_len = config.model.sequence.max_len;
        let train_users: Vec<u32> = (0..n_users as u32)
            .filter(|&u| sequences.of(u).len() >= 2)
            .collect();
        let positions: usize = train_users
            .iter()
            .map(|&u| (sequences.of(u).len() - 1).min(max_len))
            .sum();
        let sampler = match config.loss.shared_negatives {
            0 => None,
            _ => build_sampler(config, &inputs)?,
        };
        let sampler_q = || {
            let s = sampler.as_ref()?;
            Some((0..n_items as u32).map(|i| s.probability(i)).collect())
        };
        let item_q = ItemQ::new(config, n_items, train.items.iter().copied(), sampler_q);
        let setup = RetrievalSetup::new(n_users, n_items, &train.users, &train.items);
        let val_held_out = setup.held_out(&val.users, &val.items);
        let popularity_val = setup
            .popularity(
                &val_held_out,
                &[config.train.select_ranking.variant()],
                &PROTOCOL_CUTOFFS,
            )?
            .remove(0);
        tracing::info!(
            "sequences: {} training users, {positions} positions in their last {max_len}; {} candidates, val popularity {}",
            train_users.len(),
            setup.candidates(),
            describe(&popularity_val)
        );
        Ok(Self {
            config,
            inputs,
            sequences,
            train_users,
            sampler,
            item_q,
            setup,
            val,
            val_held_out,
            popularity_val,
            replica_pools: std::sync::OnceLock::new(),
        })
    }

    /// The tower's queries in evaluation mode over this task's tables.
    fn evaluation<'m>(&'m self, model: &'m Dssm) -> SequenceQueries<'m> {
        SequenceQueries {
            model,
            users: &self.inputs.users,
            sequences: &self.sequences,
            max_len: self.config.model.sequence.max_len,
            batch_size: self.config.train.eval_batch_size,
        }
    }

    /// The item vectors `[C, D]` and the token table of the whole catalogue.
    fn catalogue(
        &self,
        model: &Dssm,
        mode: Mode,
        buffers: &mut GatherBuffers,
    ) -> Result<(Tensor, Tensor), TrainError> {
        catalogue(model, &self.inputs.items, mode, buffers)
    }

    fn user_batch(
        &self,
        users: &[u32],
        buffers: &mut GatherBuffers,
    ) -> Result<dssm_model::SideBatch, TrainError> {
        let (mc, device) = (&self.inputs.model_config, &self.inputs.device);
        self.inputs.users.batch(mc, users, buffers, device)
    }

    /// The model's reports on `held_out`: each user's query from its train sequence plus
    /// `newer[i]` (the validation item of a test query) when given, against the candidates.
    fn rank(
        &self,
        model: &Dssm,
        held_out: &HeldOut,
        newer: Option<&[Option<u32>]>,
        variants: &[ProtocolVariant],
    ) -> Result<Vec<RankingReport>, TrainError> {
        let (vectors, tokens) = self.catalogue(model, Mode::Eval, &mut GatherBuffers::default())?;
        let pools = self.replica_pools()?;
        let queries = self
            .evaluation(model)
            .vectors_on(pools, &tokens, held_out.users(), newer)?;
        let candidates = read_rows(&vectors, self.setup.candidate_rows())?;
        let dim = self.inputs.model_config.output_dim();
        self.setup.rank(
            candidates,
            &queries,
            dim,
            held_out,
            variants,
            &PROTOCOL_CUTOFFS,
        )
    }
}

/// Query vectors of the sequence tower in evaluation mode: what validation, test and the
/// exported user embeddings read.
pub(crate) struct SequenceQueries<'a> {
    pub(crate) model: &'a Dssm,
    pub(crate) users: &'a crate::tables::SideTable,
    pub(crate) sequences: &'a UserSequences,
    pub(crate) max_len: usize,
    pub(crate) batch_size: usize,
}

impl SequenceQueries<'_> {
    /// `[users, D]`, from the token table `tokens` of the whole catalogue ([`catalogue`] in
    /// evaluation mode): each user's train sequence, then `newer[i]` when given, through the
    /// tower; the output at the newest item.
    pub(crate) fn vectors(
        &self,
        tokens: &Tensor,
        users: &[u32],
        newer: Option<&[Option<u32>]>,
    ) -> Result<Vec<f32>, TrainError> {
        self.vectors_on(&[], tokens, users, newer)
    }

    /// As [`vectors`](Self::vectors), the chunks of users spread over `pools` (the replicas'
    /// single-threaded pools; none: this thread), the same chunks either way.
    pub(crate) fn vectors_on(
        &self,
        pools: &[rayon::ThreadPool],
        tokens: &Tensor,
        users: &[u32],
        newer: Option<&[Option<u32>]>,
    ) -> Result<Vec<f32>, TrainError> {
        // Attention holds `users x max_len^2` weights per block: small chunks.
        let size = self.batch_size.clamp(1, 256);
        let chunk = |c: usize| {
            let first = c * size;
            let chunk = &users[first..(first + size).min(users.len())];
            let newer = newer.map(|n| &n[first..first + chunk.len()]);
            self.chunk_vectors(tokens, chunk, newer)
        };
        let mut out = Vec::with_capacity(users.len() * self.model.config().output_dim());
        for vectors in replicas::on_pools(pools, users.len().div_ceil(size), &chunk) {
            out.extend(vectors?);
        }
        Ok(out)
    }

    /// The vectors of one chunk of `users` (`newer`: theirs).
    fn chunk_vectors(
        &self,
        tokens: &Tensor,
        users: &[u32],
        newer: Option<&[Option<u32>]>,
    ) -> Result<Vec<f32>, TrainError> {
        let model = self.model;
        let sequences: Vec<Vec<u32>> = users
            .iter()
            .enumerate()
            .map(|(i, &u)| {
                let mut s = self.sequences.of(u).to_vec();
                s.extend(newer.and_then(|n| n[i]));
                s
            })
            .collect();
        let mut buffers = GatherBuffers::default();
        let user_batch = self
            .users
            .batch(model.config(), users, &mut buffers, model.device())?;
        let sequences = sequences.iter().map(Vec::as_slice);
        encode_queries(model, tokens, sequences, self.max_len, &user_batch)
    }
}

/// Query vectors `[sequences, D]` in evaluation mode: each of `sequences` (item rows, oldest
/// first; the newest `max_len` are read) with its row of `users`, through the tower over the
/// token table `tokens`; the output at the newest item. An empty sequence is all padding: the
/// user features' contribution alone. What validation, test, the exported user embeddings and
/// [`crate::SequenceEncoder`] read.
pub(crate) fn encode_queries<'s>(
    model: &Dssm,
    tokens: &Tensor,
    sequences: impl ExactSizeIterator<Item = &'s [u32]> + Clone,
    max_len: usize,
    users: &dssm_model::SideBatch,
) -> Result<Vec<f32>, TrainError> {
    let padded = Padded::new(sequences, max_len);
    let q = model
        .encode_sequences(tokens, &padded.ids, padded.rows, Some(users), Mode::Eval)
        .map_err(TrainError::model)?;
    let last: Vec<u32> = (0..padded.rows)
        .map(|r| ((r + 1) * padded.len - 1) as u32)
        .collect();
    read_rows(&q, &last)
}

/// The item vectors `[C, D]` and the token table of every row of `items`.
pub(crate) fn catalogue(
    model: &Dssm,
    items: &SideTable,
    mode: Mode,
    buffers: &mut GatherBuffers,
) -> Result<(Tensor, Tensor), TrainError> {
    let all: Vec<u32> = (0..items.rows() as u32).collect();
    vectors_and_tokens(model, items, &all, mode, buffers)
}

/// The item vectors `[rows, D]` and the token table (row 0 padding, row `i + 1` `rows[i]`) of
/// rows `rows` of `items`.
fn vectors_and_tokens(
    model: &Dssm,
    items: &SideTable,
    rows: &[u32],
    mode: Mode,
    buffers: &mut GatherBuffers,
) -> Result<(Tensor, Tensor), TrainError> {
    let batch = items.batch(model.config(), rows, buffers, model.device())?;
    model
        .sequence_items(&batch, mode)
        .map_err(TrainError::model)
}

/// Rows `rows` of a `[n, D]` tensor (differentiable).
fn select_rows(t: &Tensor, rows: &[u32]) -> Result<Tensor, TrainError> {
    let index = Tensor::from_slice(rows, rows.len(), t.device())
        .map_err(TrainError::tensor("indexing rows"))?;
    t.index_select(&index, 0)
        .map_err(TrainError::tensor("gathering rows"))
}

/// Rows `rows` of a `[n, D]` tensor, as host floats.
fn read_rows(t: &Tensor, rows: &[u32]) -> Result<Vec<f32>, TrainError> {
    select_rows(t, rows)?
        .to_dtype(candle_core::DType::F32)
        .and_then(|r| r.flatten_all())
        .and_then(|r| r.to_vec1::<f32>())
        .map_err(TrainError::tensor("reading vectors"))
}

impl Task for SequenceTask<'_> {
    type Batches = SequenceBatches;
    type Buffers = SequenceBuffers;

    fn epoch(&self, epoch: usize) -> Result<SequenceBatches, TrainError> {
        let sequence = &self.config.model.sequence;
        let seed = self.config.train.seed;
        let mut rng = StdRng::seed_from_u64(derive_seed(seed, epoch, STREAM_WINDOWS, 0));
        let mut draw = |n: usize| rng.random_range(0..n);
        let mut windows = Vec::with_capacity(self.train_users.len());
        for &user in &self.train_users {
            let len = self.sequences.of(user).len();
            let spans = windows_of(len, sequence.max_len, sequence.windows, &mut draw);
            windows.extend(
                spans
                    .into_iter()
                    .map(|(start, end)| Window { user, start, end }),
            );
        }
        let shuffle = derive_seed(seed, epoch, STREAM_SHUFFLE, 0);
        windows.shuffle(&mut StdRng::seed_from_u64(shuffle));
        let batch_size = self.config.train.batch_size;
        let (shared, shared_per_step) = match &self.sampler {
            None => (Vec::new(), 0),
            Some(sampler) => {
                let k = self.config.loss.shared_negatives;
                let seed = derive_seed(seed, epoch, STREAM_SHARED_NEGATIVES, 0);
                let mut rng = StdRng::seed_from_u64(seed);
                let draws = windows.len().div_ceil(batch_size) * k;
                ((0..draws).map(|_| sampler.sample(&mut rng)).collect(), k)
            }
        };
        Ok(SequenceBatches {
            positions: windows.iter().map(Window::targets).sum(),
            windows,
            batch_size,
            shared,
            shared_per_step,
        })
    }

    fn loss(
        &self,
        batches: &SequenceBatches,
        step: usize,
        stepper: &mut Stepper<'_>,
        dropout_seed: u64,
        buffers: &mut SequenceBuffers,
    ) -> Result<StepLoss, TrainError> {
        let Stepper::Candle(model) = stepper else {
            return Err(TrainError::Unsupported {
                message: "the sequence tower trains through Candle only".to_string(),
            });
        };
        let windows = batches.batch(step);
        let replicas = self.config.train.replicas;
        if replicas > 1 && self.config.loss.kind == LossKind::FullSoftmax {
            return self.replicated_loss(model, windows, dropout_seed, &mut buffers.items);
        }
        let step_inputs = self.step_inputs(windows, dropout_seed, &mut buffers.users)?;
        let loss = match self.config.loss.kind {
            LossKind::InBatchSoftmax => {
                let shared = batches.shared_negatives(step);
                self.sampled_loss(model, &step_inputs, shared, &mut buffers.items)?
            }
            _ => self.full_loss(model, &step_inputs, &mut buffers.items)?,
        };
        Ok(StepLoss::Graph(loss))
    }

    fn validate(&self, model: &Dssm) -> Result<Validation, TrainError> {
        let variants = [self.config.train.select_ranking.variant()];
        let report = self
            .rank(model, &self.val_held_out, None, &variants)?
            .remove(0);
        Ok(Validation {
            pointwise: None,
            ranking: Some(report),
        })
    }

    fn report(&self, best: &Validation, metrics: &mut FinalMetrics) {
        metrics.retrieval = Some(retrieval_section(&self.setup, &self.popularity_val, best));
    }

    fn test(&self, best: &Dssm, metrics: &mut FinalMetrics) -> Result<(), TrainError> {
        let rows = self.inputs.split(Split::Test)?;
        let newer = crate::history::item_of_users(&rows.users, &self.val.users, &self.val.items);
        let held_out = self.setup.held_out(&rows.users, &rows.items);
        let held_out = (self.setup).with_earlier(held_out, &self.val.users, &self.val.items)?;
        let test = self.rank(best, &held_out, Some(&newer), &ProtocolVariant::ALL)?;
        record_test(&self.setup, &held_out, test, metrics)
    }
}

/// One step's sequences, users and targets.
struct StepInputs {
    users: dssm_model::SideBatch,
    padded: Padded,
    /// The positions of `padded` with a target, flattened, and their target item rows.
    positions: Vec<u32>,
    targets: Vec<u32>,
    /// `loss.exclude_seen`: each position's earlier items (catalogue rows) but the
    /// `loss.recent_seen_negatives` newest, left out of its softmax.
    excluded: Option<std::sync::Arc<RowExclusions>>,
    /// The step's dropout seed.
    seed: u64,
}

impl StepInputs {
    /// The query vector at every position with a target, through `tokens` (ids `ids`).
    fn queries(&self, model: &Dssm, tokens: &Tensor, ids: &[u32]) -> Result<Tensor, TrainError> {
        let mode = Mode::Train { seed: self.seed };
        let rows = self.padded.rows;
        let q = model
            .encode_sequences(tokens, ids, rows, Some(&self.users), mode)
            .map_err(TrainError::model)?;
        select_rows(&q, &self.positions)
    }

    /// The item tower's mode: the same step, another dropout stream.
    fn item_mode(&self) -> Mode {
        Mode::Train {
            seed: self.seed ^ 1,
        }
    }
}

impl SequenceTask<'_> {
    /// The sequences, users and targets of `windows`; dropout masks from `seed`.
    fn step_inputs(
        &self,
        windows: &[Window],
        seed: u64,
        buffers: &mut GatherBuffers,
    ) -> Result<StepInputs, TrainError> {
        // Inputs: every item of the window but the last; targets: every item but the first.
        let inputs = windows
            .iter()
            .map(|w| &self.sequences.of(w.user)[w.start..w.end - 1]);
        let padded = Padded::new(inputs, self.config.model.sequence.max_len);
        let (positions, targets) = self.targets(windows, &padded);
        let excluded = self.config.loss.exclude_seen.then(|| {
            let kept = self.config.loss.recent_seen_negatives;
            std::sync::Arc::new(seen_before_targets(&self.sequences, windows, kept))
        });
        let users: Vec<u32> = windows.iter().map(|w| w.user).collect();
        Ok(StepInputs {
            users: self.user_batch(&users, buffers)?,
            padded,
            positions,
            targets,
            excluded,
            seed,
        })
    }

    fn scale(&self) -> f64 {
        1.0 / (self.config.loss.temperature * self.config.model.temperature)
    }

    /// `full_softmax`: every position against the whole catalogue.
    fn full_loss(
        &self,
        model: &Dssm,
        step: &StepInputs,
        buffers: &mut GatherBuffers,
    ) -> Result<Tensor, TrainError> {
        let (vectors, tokens) = self.catalogue(model, step.item_mode(), buffers)?;
        let q = step.queries(model, &tokens, &step.padded.ids)?;
        let excluded = step.excluded.clone();
        catalogue_softmax_cross_entropy(&q, &vectors, &step.targets, excluded, self.scale())
            .map_err(TrainError::tensor("computing the loss"))
    }

    /// `in_batch_softmax`: every position against the step's targets and shared negatives (see
    /// [`crate::task::sampled`]); only the items the step reads go through the item tower.
    fn sampled_loss(
        &self,
        model: &Dssm,
        step: &StepInputs,
        shared: &[u32],
        buffers: &mut GatherBuffers,
    ) -> Result<Tensor, TrainError> {
        let columns = SampledColumns::new(&step.targets, shared);
        let inputs = step
            .padded
            .ids
            .iter()
            .filter(|&&id| id != 0)
            .map(|&id| id - 1);
        let needed = LocalItems::new(inputs.chain(columns.items.rows().iter().copied()));
        let items = &self.inputs.items;
        let (vectors, tokens) =
            vectors_and_tokens(model, items, needed.rows(), step.item_mode(), buffers)?;
        let q = step.queries(model, &tokens, &needed.remap_ids(&step.padded.ids))?;
        let column_rows = columns.items.rows();
        let local: Vec<u32> = column_rows.iter().map(|&r| needed.local(r)).collect();
        let column_vectors = select_rows(&vectors, &local)?;
        let ln_q = in_batch_log_q(&self.item_q, step.positions.len(), shared.len());
        let offsets = ln_q
            .map(|ln_q| {
                let values: Vec<f32> = column_rows.iter().map(|&r| ln_q(r)).collect();
                Tensor::from_vec(values, column_rows.len(), q.device())
            })
            .transpose()
            .map_err(TrainError::tensor("building log-Q"))?;
        let scores = column_vectors
            .t()
            .and_then(|v| q.matmul(&v))
            .map_err(TrainError::tensor("scoring the columns"))?;
        softmax_cross_entropy(
            &scores,
            self.scale(),
            offsets.as_ref(),
            &[],
            &columns.targets,
        )
        .map_err(TrainError::tensor("computing the loss"))
    }
}

impl SequenceTask<'_> {
    /// The flattened positions of `padded` (the windows' inputs) and each one's target item
    /// row: input position `t` of a window predicts the item after it.
    fn targets(&self, windows: &[Window], padded: &Padded) -> (Vec<u32>, Vec<u32>) {
        let (mut positions, mut targets) = (Vec::new(), Vec::new());
        for (r, w) in windows.iter().enumerate() {
            let n = w.targets();
            let first = (r + 1) * padded.len - n;
            positions.extend((first..(r + 1) * padded.len).map(|p| p as u32));
            targets.extend_from_slice(&self.sequences.of(w.user)[w.start + 1..w.end]);
        }
        (positions, targets)
    }
}

/// One row per target of `windows`, in the order of [`SequenceTask::targets`]: the user's train
/// items before that target (all of them, not only the window's), as the `masked` ranking
/// leaves every train item out, but for the `kept` newest, which stay in as negatives.
fn seen_before_targets(
    sequences: &UserSequences,
    windows: &[Window],
    kept: usize,
) -> RowExclusions {
    let mut excluded = RowExclusions::default();
    for w in windows {
        let sequence = sequences.of(w.user);
        for k in w.start + 1..w.end {
            excluded.push_row(sequence[..k.saturating_sub(kept)].iter().copied());
        }
    }
    excluded
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spans(len: usize, max_len: usize, kind: SequenceWindowsKind) -> Vec<(usize, usize)> {
        let mut next = 0;
        let mut draw = |n: usize| {
            next += 1;
            (next * 7) % n
        };
        windows_of(len, max_len, kind, &mut draw)
    }

    #[test]
    fn each_target_excludes_every_earlier_item_of_its_user() {
        // User 0: items 10, 11, 12, 13; user 1: 20, 21.
        let sequences = UserSequences {
            offsets: vec![0, 4, 6],
            items: vec![10, 11, 12, 13, 20, 21],
        };
        // User 0's window 2..4 (input 12, target 13) still excludes 10 and 11.
        let windows = [
            Window {
                user: 0,
                start: 2,
                end: 4,
            },
            Window {
                user: 1,
                start: 0,
                end: 2,
            },
            Window {
                user: 0,
                start: 0,
                end: 3,
            },
        ];
        let rows = |kept| {
            let excluded = seen_before_targets(&sequences, &windows, kept);
            (0..excluded.rows())
                .map(|i| excluded.row(i).to_vec())
                .collect::<Vec<_>>()
        };
        let expected: [&[u32]; 4] = [&[10, 11, 12], &[20], &[10], &[10, 11]];
        assert_eq!(rows(0), expected);
        // The newest seen item before each target stays in its softmax.
        let expected: [&[u32]; 4] = [&[10, 11], &[], &[], &[10]];
        assert_eq!(rows(1), expected);
    }

    #[test]
    fn the_last_window_holds_the_newest_max_len_targets() {
        // 10 items, 4 per window: inputs 5..9, targets 6..10.
        assert_eq!(spans(10, 4, SequenceWindowsKind::Last), [(5, 10)]);
        assert_eq!(spans(3, 4, SequenceWindowsKind::Last), [(0, 3)]);
    }

    #[test]
    fn all_windows_train_every_target_exactly_once() {
        assert_eq!(
            spans(10, 4, SequenceWindowsKind::All),
            [(5, 10), (1, 6), (0, 2)]
        );
        for len in 2..40 {
            for max_len in 1..12 {
                let mut seen = vec![0; len];
                for (start, end) in spans(len, max_len, SequenceWindowsKind::All) {
                    assert!(end - start - 1 <= max_len && end - start >= 2);
                    (start + 1..end).for_each(|t| seen[t] += 1);
                }
                assert_eq!(seen[0], 0);
                assert!(
                    seen[1..].iter().all(|&n| n == 1),
                    "{len} {max_len}: {seen:?}"
                );
            }
        }
    }

    #[test]
    fn a_random_window_is_full_and_inside_the_sequence() {
        let mut ends = std::collections::BTreeSet::new();
        for draw in 0..6 {
            let got = windows_of(10, 4, SequenceWindowsKind::Random, &mut |n| {
                assert_eq!(n, 6);
                draw
            });
            let [(start, end)] = got[..] else {
                panic!("{got:?}")
            };
            assert_eq!((end - start, end <= 10), (5, true));
            ends.insert(end);
        }
        // Every end from max_len + 1 to len can be drawn.
        assert_eq!(ends.into_iter().collect::<Vec<_>>(), [5, 6, 7, 8, 9, 10]);
        // A short sequence is one whole window.
        assert_eq!(spans(5, 4, SequenceWindowsKind::Random), [(0, 5)]);
    }
}
