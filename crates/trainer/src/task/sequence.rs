//! The next-item task of the sequence user tower (`model.sequence`, `leave-last-out` / `time`):
//! each user's train items in time order form one sequence; every position is trained to predict
//! the next item with a softmax over the whole catalogue (`loss.kind = "full_softmax"`). A
//! validation query is the user's last `max_len` train items; a test query the same with the
//! validation item appended: exactly the queries of the retrieval task, ranked the same way.

use dssm_data::Split;
use dssm_model::{Dssm, Mode, catalogue_softmax_cross_entropy};
use dssm_retrieval::{PROTOCOL_CUTOFFS, ProtocolVariant, RankingReport};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::config::RunConfig;
use crate::error::TrainError;
use crate::inputs::{Inputs, SplitRows};
use crate::report::FinalMetrics;
use crate::retrieval::{HeldOut, RetrievalSetup, describe};
use crate::seeds::{STREAM_SHUFFLE, derive_seed};
use crate::step::{StepLoss, Stepper};
use crate::tables::{GatherBuffers, SideTable};
use crate::task::{Batches, Task, Validation, record_test, retrieval_section};
use candle_core::Tensor;

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

/// An epoch: the training users (at least two train items) in a shuffled order.
pub(crate) struct SequenceBatches {
    users: Vec<u32>,
    batch_size: usize,
    positions: usize,
}

impl Batches for SequenceBatches {
    fn steps(&self) -> usize {
        self.users.len().div_ceil(self.batch_size)
    }
    fn rows(&self) -> usize {
        self.users.len()
    }
    fn batch_rows(&self, step: usize) -> usize {
        self.batch(step).len()
    }
    fn samples(&self) -> usize {
        self.positions
    }
}

impl SequenceBatches {
    fn batch(&self, step: usize) -> &[u32] {
        let start = step * self.batch_size;
        &self.users[start..(start + self.batch_size).min(self.users.len())]
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
    /// Trained positions per epoch.
    positions: usize,
    setup: RetrievalSetup,
    val: SplitRows,
    val_held_out: HeldOut,
    popularity_val: RankingReport,
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
        let positions = train_users
            .iter()
            .map(|&u| (sequences.of(u).len() - 1).min(max_len))
            .sum();
        let setup = RetrievalSetup::new(n_users, n_items, &train.users, &train.items);
        let val_held_out = setup.held_out(&val.users, &val.items);
        let popularity_val = setup
            .popularity(
                &val_held_out,
                &[ProtocolVariant::Unmasked],
                &PROTOCOL_CUTOFFS,
            )?
            .remove(0);
        tracing::info!(
            "sequences: {} training users, {positions} positions per epoch; {} candidates, val popularity {}",
            train_users.len(),
            setup.candidates(),
            describe(&popularity_val)
        );
        Ok(Self {
            config,
            inputs,
            sequences,
            train_users,
            positions,
            setup,
            val,
            val_held_out,
            popularity_val,
        })
    }

    /// The tower's queries in evaluation mode over this task's tables.
    fn evaluation<'m>(&'m self, model: &'m Dssm) -> SequenceQueries<'m> {
        SequenceQueries {
            model,
            users: &self.inputs.users,
            items: &self.inputs.items,
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
        let evaluation = self.evaluation(model);
        let (vectors, tokens) = evaluation.catalogue()?;
        let queries = evaluation.vectors(&tokens, held_out.users(), newer)?;
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
    pub(crate) items: &'a crate::tables::SideTable,
    pub(crate) sequences: &'a UserSequences,
    pub(crate) max_len: usize,
    pub(crate) batch_size: usize,
}

impl SequenceQueries<'_> {
    /// The item vectors `[C, D]` and the token table of the whole catalogue, in evaluation mode.
    pub(crate) fn catalogue(&self) -> Result<(Tensor, Tensor), TrainError> {
        catalogue(
            self.model,
            self.items,
            Mode::Eval,
            &mut GatherBuffers::default(),
        )
    }

    /// `[users, D]`, from the token table `tokens` of [`SequenceQueries::catalogue`]: each user's train sequence, then `newer[i]` when given, through the tower;
    /// the output at the newest item.
    pub(crate) fn vectors(
        &self,
        tokens: &Tensor,
        users: &[u32],
        newer: Option<&[Option<u32>]>,
    ) -> Result<Vec<f32>, TrainError> {
        let (model, mc) = (self.model, self.model.config());
        let mut buffers = GatherBuffers::default();
        let mut out = Vec::with_capacity(users.len() * mc.output_dim());
        // Attention holds `users x max_len^2` weights per block: small chunks.
        let batch_size = self.batch_size.clamp(1, 256);
        for (c, chunk) in users.chunks(batch_size).enumerate() {
            let sequences: Vec<Vec<u32>> = chunk
                .iter()
                .enumerate()
                .map(|(i, &u)| {
                    let mut s = self.sequences.of(u).to_vec();
                    s.extend(newer.and_then(|n| n[c * batch_size + i]));
                    s
                })
                .collect();
            let user_batch = self.users.batch(mc, chunk, &mut buffers, model.device())?;
            let sequences = sequences.iter().map(Vec::as_slice);
            out.extend(encode_queries(
                model,
                tokens,
                sequences,
                self.max_len,
                &user_batch,
            )?);
        }
        Ok(out)
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
fn catalogue(
    model: &Dssm,
    items: &SideTable,
    mode: Mode,
    buffers: &mut GatherBuffers,
) -> Result<(Tensor, Tensor), TrainError> {
    let all: Vec<u32> = (0..items.rows() as u32).collect();
    let batch = items.batch(model.config(), &all, buffers, model.device())?;
    model
        .sequence_items(&batch, mode)
        .map_err(TrainError::model)
}

/// Rows `rows` of a `[n, D]` tensor, as host floats.
fn read_rows(t: &candle_core::Tensor, rows: &[u32]) -> Result<Vec<f32>, TrainError> {
    let index = Tensor::from_slice(rows, rows.len(), t.device())
        .map_err(TrainError::tensor("indexing rows"))?;
    t.index_select(&index, 0)
        .and_then(|r| r.to_dtype(candle_core::DType::F32))
        .and_then(|r| r.flatten_all())
        .and_then(|r| r.to_vec1::<f32>())
        .map_err(TrainError::tensor("reading vectors"))
}

impl Task for SequenceTask<'_> {
    type Batches = SequenceBatches;
    type Buffers = SequenceBuffers;

    fn epoch(&self, epoch: usize) -> Result<SequenceBatches, TrainError> {
        let mut users = self.train_users.clone();
        let seed = derive_seed(self.config.train.seed, epoch, STREAM_SHUFFLE, 0);
        users.shuffle(&mut StdRng::seed_from_u64(seed));
        Ok(SequenceBatches {
            users,
            batch_size: self.config.train.batch_size,
            positions: self.positions,
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
        let users = batches.batch(step);
        let max_len = self.config.model.sequence.max_len;
        // Inputs: every item but the last; targets: every item but the first.
        let inputs = users.iter().map(|&u| {
            let s = self.sequences.of(u);
            &s[..s.len() - 1]
        });
        let padded = Padded::new(inputs, max_len);
        let (positions, targets) = self.targets(users, &padded);
        let (vectors, tokens) = self.catalogue(
            model,
            Mode::Train {
                seed: dropout_seed ^ 1,
            },
            &mut buffers.items,
        )?;
        let user_batch = self.user_batch(users, &mut buffers.users)?;
        let mode = Mode::Train { seed: dropout_seed };
        let q = model
            .encode_sequences(&tokens, &padded.ids, padded.rows, Some(&user_batch), mode)
            .map_err(TrainError::model)?;
        let index = Tensor::from_slice(&positions, positions.len(), q.device())
            .map_err(TrainError::tensor("indexing positions"))?;
        let q = q
            .index_select(&index, 0)
            .map_err(TrainError::tensor("gathering positions"))?;
        let scale = 1.0 / (self.config.loss.temperature * self.config.model.temperature);
        catalogue_softmax_cross_entropy(&q, &vectors, &targets, scale)
            .map(StepLoss::Graph)
            .map_err(TrainError::tensor("computing the loss"))
    }

    fn validate(&self, model: &Dssm) -> Result<Validation, TrainError> {
        let variants = [ProtocolVariant::Unmasked];
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
        let held_out = self.setup.held_out(&rows.users, &rows.items);
        let newer = crate::history::item_of_users(&rows.users, &self.val.users, &self.val.items);
        let test = self.rank(best, &held_out, Some(&newer), &ProtocolVariant::ALL)?;
        record_test(&self.setup, &held_out, test, metrics)
    }
}

impl SequenceTask<'_> {
    /// The flattened positions of `padded` that have a target, and each one's target item row:
    /// position `t` of a user's inputs predicts the item after it.
    fn targets(&self, users: &[u32], padded: &Padded) -> (Vec<u32>, Vec<u32>) {
        let (mut positions, mut targets) = (Vec::new(), Vec::new());
        for (r, &u) in users.iter().enumerate() {
            let s = self.sequences.of(u);
            let n = (s.len() - 1).min(padded.len);
            let first = (r + 1) * padded.len - n;
            positions.extend((first..(r + 1) * padded.len).map(|p| p as u32));
            targets.extend_from_slice(&s[s.len() - n..]);
        }
        (positions, targets)
    }
}
