//! [`SequenceEncoder`]: the sequence user tower run on one query at a time, for serving.

use candle_core::Tensor;
use dssm_data::Split;
use dssm_model::{Dssm, Mode, Side, SideBatch};

use crate::error::TrainError;
use crate::history::item_of_users;
use crate::inputs::split_rows;
use crate::run::LoadedRun;
use crate::tables::{GatherBuffers, SideTable};
use crate::task::sequence::{SequenceQueries, UserSequences, catalogue, encode_queries};

/// The sequence user tower of a loaded run, ready to encode one query at a time: the token table
/// of the whole catalogue (`Dssm::sequence_items`, `Mode::Eval`, computed once), every user's
/// stored features and every user's test-time sequence (their train items in time order, then
/// their validation item: the query [`LoadedRun::embeddings`] exports).
///
/// Sequences are item-table rows, oldest first, newest last; the newest `max_len` are read. The
/// trainer's validation, test and exported embeddings go through the same encoding.
///
/// ```no_run
/// let run = dssm_trainer::load_run("runs/ml-1m-sequence".as_ref())?;
/// let encoder = run.sequence_encoder()?.expect("a sequence run");
/// // User row 0's test-time sequence, then item rows 12 and 7 (7 the newest).
/// let mut sequence = encoder.sequence(0);
/// sequence.extend([12, 7]);
/// let users = encoder.user_batch(&run.model, 0)?;
/// let vector = encoder.encode(&run.model, &users, &sequence)?;
/// assert_eq!(vector.len(), run.model.config().output_dim());
/// # Ok::<(), dssm_trainer::TrainError>(())
/// ```
pub struct SequenceEncoder {
    tokens: Tensor,
    users: SideTable,
    sequences: UserSequences,
    /// Per user row: the validation item row, when the user has one.
    validation: Vec<Option<u32>>,
    max_len: usize,
    items: usize,
}

impl std::fmt::Debug for SequenceEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SequenceEncoder")
            .field("users", &self.validation.len())
            .field("items", &self.items)
            .field("max_len", &self.max_len)
            .finish()
    }
}

impl LoadedRun {
    /// The run's sequence tower ready to serve ([`SequenceEncoder`]); `None` when the model has
    /// no sequence tower.
    pub fn sequence_encoder(&self) -> Result<Option<SequenceEncoder>, TrainError> {
        if self.model.config().sequence.is_none() {
            return Ok(None);
        }
        let config = self.model.config();
        let users = SideTable::new(&self.dataset, config, Side::User)?;
        let items = SideTable::new(&self.dataset, config, Side::Item)?;
        SequenceEncoder::new(self, users, &items).map(Some)
    }
}

impl SequenceEncoder {
    /// The encoder over the run's tables (`items`: the whole catalogue, for the token table).
    pub(crate) fn new(
        run: &LoadedRun,
        users: SideTable,
        items: &SideTable,
    ) -> Result<Self, TrainError> {
        let model = &run.model;
        let max_len = model
            .config()
            .sequence
            .as_ref()
            .map(|s| s.max_len)
            .ok_or_else(|| TrainError::Unsupported {
                message: "the model has no sequence tower (model.sequence)".to_string(),
            })?;
        let (n_users, n_items) = (users.rows(), items.rows());
        let train = split_rows(&run.dataset, Split::Train, n_users, n_items)?;
        let val = split_rows(&run.dataset, Split::Val, n_users, n_items)?;
        let all: Vec<u32> = (0..n_users as u32).collect();
        let (_, tokens) = catalogue(model, items, Mode::Eval, &mut GatherBuffers::default())?;
        Ok(Self {
            tokens,
            sequences: UserSequences::new(&train, n_users),
            validation: item_of_users(&all, &val.users, &val.items),
            users,
            max_len,
            items: n_items,
        })
    }

    /// Every user's test-time query vector, `[users, D]` row-major (`model`: the run's model),
    /// as [`LoadedRun::embeddings`] exports them: the same encoding as
    /// [`SequenceEncoder::encode`], `batch_size` users at a time.
    pub fn test_queries(&self, model: &Dssm, batch_size: usize) -> Result<Vec<f32>, TrainError> {
        let queries = SequenceQueries {
            model,
            users: &self.users,
            sequences: &self.sequences,
            max_len: self.max_len,
            batch_size,
        };
        let all: Vec<u32> = (0..self.users.rows() as u32).collect();
        queries.vectors(&self.tokens, &all, Some(&self.validation))
    }

    /// The most items a sequence is read to: longer ones keep their newest `max_len`.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The test-time sequence of users-table row `user` (item rows, oldest first): the train
    /// items, then the validation item. Empty for a row outside the table.
    pub fn sequence(&self, user: u32) -> Vec<u32> {
        if user as usize >= self.validation.len() {
            return Vec::new();
        }
        let mut sequence = self.sequences.of(user).to_vec();
        sequence.extend(self.validation[user as usize]);
        sequence
    }

    /// The stored features of users-table row `user` as a one-row user batch.
    pub fn user_batch(&self, model: &Dssm, user: u32) -> Result<SideBatch, TrainError> {
        if user as usize >= self.users.rows() {
            return Err(TrainError::Model {
                message: format!(
                    "user row {user} is outside the users table ({} rows)",
                    self.users.rows()
                ),
            });
        }
        let mut buffers = GatherBuffers::default();
        self.users
            .batch(model.config(), &[user], &mut buffers, model.device())
    }

    /// The query vector of one user (`users`: a one-row user batch of `model`, the run's model)
    /// after `sequence` (item rows, oldest first, newest last; the newest `max_len` are read),
    /// in evaluation mode. An empty sequence is all padding: the user features' contribution
    /// alone. L2-normalised when the user tower is.
    pub fn encode(
        &self,
        model: &Dssm,
        users: &SideBatch,
        sequence: &[u32],
    ) -> Result<Vec<f32>, TrainError> {
        // No columns (a user tower without features) is fine: the tower ignores them then.
        if !matches!(users.batch_size(), Some(1) | None) {
            return Err(TrainError::Model {
                message: format!(
                    "a sequence query takes a one-row user batch, found {} rows",
                    users.batch_size().unwrap_or_default()
                ),
            });
        }
        if let Some(&row) = sequence.iter().find(|&&r| r as usize >= self.items) {
            return Err(TrainError::Model {
                message: format!(
                    "item row {row} is outside the items table ({} rows)",
                    self.items
                ),
            });
        }
        encode_queries(
            model,
            &self.tokens,
            std::iter::once(sequence),
            self.max_len,
            users,
        )
    }
}
