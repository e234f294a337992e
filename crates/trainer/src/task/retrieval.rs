//! The retrieval task (`leave-last-out`, `time`): every train interaction is a positive; the
//! softmax (or pairwise) losses of [`crate::step`]; each validation ranks every user's
//! validation item against the whole catalogue, `unmasked`, and the test ranks the test item
//! under every variant beside the popularity baseline. With `features.history_len`, the users
//! table is expanded to one row per train interaction (its history before it) and per query.

use dssm_data::Split;
use dssm_model::Dssm;
use dssm_retrieval::{PROTOCOL_CUTOFFS, ProtocolVariant, RankingReport};

use crate::batches::{EpochBuilder, EpochRows};
use crate::config::RunConfig;
use crate::error::TrainError;
use crate::history::{Histories, item_of_users};
use crate::inputs::{Inputs, SplitRows, split_rows};
use crate::report::FinalMetrics;
use crate::retrieval::{HeldOut, RetrievalSetup, describe};
use crate::step::{LossInputs, StepBuffers, StepLoss, Stepper, batch_loss};
use crate::tables::SideTable;
use crate::task::{Task, Validation, record_test, retrieval_section};

/// See the module docs.
pub(crate) struct RetrievalTask<'a> {
    config: &'a RunConfig,
    /// The tables training reads (users expanded with the history feature).
    inputs: Inputs,
    builder: EpochBuilder<'a>,
    /// One row per user, before any expansion.
    base_users: SideTable,
    histories: Option<Histories>,
    setup: RetrievalSetup,
    val: SplitRows,
    val_held_out: HeldOut,
    /// The users table validation queries are embedded from.
    val_users: SideTable,
    popularity_val: RankingReport,
}

impl<'a> RetrievalTask<'a> {
    /// The task over `inputs`: reads the train and validation rows.
    pub(crate) fn new(config: &'a RunConfig, mut inputs: Inputs) -> Result<Self, TrainError> {
        let (n_users, n_items) = (inputs.users.rows(), inputs.items.rows());
        let train = inputs.split(Split::Train)?;
        let val = inputs.split(Split::Val)?;
        let base_users = inputs.users.clone();
        let history_len = config.features.history_len;
        let histories =
            (history_len > 0).then(|| Histories::new(&train.timed(), n_users, history_len));
        let setup = RetrievalSetup::new(n_users, n_items, &train.users, &train.items);
        // Hard-negative mining ranks for each user as a validation query sees it.
        let mining_queries = |histories: Option<&Histories>| match histories {
            Some(h) => {
                let all: Vec<u32> = (0..n_users as u32).collect();
                base_users.expand(&all, &h.queries(&all, None))
            }
            None => base_users.clone(),
        };
        let mining = config.sampler.hard.mine_every > 0;
        let builder = match &histories {
            Some(h) => {
                inputs.users = base_users.expand(&train.users, &h.train);
                let rows = one_user_row_per_interaction(&train);
                let builder = EpochBuilder::new(config, &inputs, rows)?;
                if mining {
                    builder.with_mining(&inputs, mining_queries(Some(h)), train.users.clone())?
                } else {
                    builder
                }
            }
            None => {
                let builder = EpochBuilder::new(config, &inputs, train)?;
                if mining {
                    let identity = (0..n_users as u32).collect();
                    builder.with_mining(&inputs, mining_queries(None), identity)?
                } else {
                    builder
                }
            }
        };
        let val_held_out = held_out(&setup, &val, histories.is_some());
        let popularity_val = setup
            .popularity(
                &val_held_out,
                &[config.train.select_ranking.variant()],
                &PROTOCOL_CUTOFFS,
            )?
            .remove(0);
        tracing::info!(
            "leave-last-out: {} candidates, {} validation users; val popularity {}",
            setup.candidates(),
            val.users.len(),
            describe(&popularity_val)
        );
        let val_users = query_users(&base_users, histories.as_ref(), &val, None);
        Ok(Self {
            config,
            inputs,
            builder,
            base_users,
            histories,
            setup,
            val,
            val_held_out,
            val_users,
            popularity_val,
        })
    }

    /// The model's reports on `held_out`, queries embedded from `users`.
    fn rank(
        &self,
        model: &Dssm,
        users: &SideTable,
        held_out: &HeldOut,
        variants: &[ProtocolVariant],
    ) -> Result<Vec<RankingReport>, TrainError> {
        self.setup.evaluate(
            model,
            &self.inputs.model_config,
            users,
            &self.inputs.items,
            held_out,
            variants,
            &PROTOCOL_CUTOFFS,
            self.config.train.eval_batch_size,
        )
    }
}

/// The train rows with user row `i` for interaction `i` (the expanded users table's rows).
fn one_user_row_per_interaction(train: &SplitRows) -> SplitRows {
    SplitRows {
        users: (0..train.users.len() as u32).collect(),
        items: train.items.clone(),
        labels: train.labels.clone(),
        timestamps: Vec::new(),
        lines: Vec::new(),
    }
}

/// The held-out interactions of `rows`, one query row each with the history feature.
fn held_out(setup: &RetrievalSetup, rows: &SplitRows, per_row: bool) -> HeldOut {
    let held_out = setup.held_out(&rows.users, &rows.items);
    if per_row {
        RetrievalSetup::with_query_per_row(held_out)
    } else {
        held_out
    }
}

/// The users table the queries of `rows` are embedded from: the base table, or with the history
/// feature one row per query, seeing the user's last train items after `newer`'s item.
fn query_users(
    base: &SideTable,
    histories: Option<&Histories>,
    rows: &SplitRows,
    newer: Option<&SplitRows>,
) -> SideTable {
    match histories {
        Some(h) => {
            let newer = newer.map(|n| item_of_users(&rows.users, &n.users, &n.items));
            base.expand(&rows.users, &h.queries(&rows.users, newer.as_deref()))
        }
        None => base.clone(),
    }
}

impl Task for RetrievalTask<'_> {
    type Batches = EpochRows;
    type Buffers = StepBuffers;

    fn prepare_epoch(&self, epoch: usize, model: &Dssm) -> Result<(), TrainError> {
        self.builder.prepare(epoch, model, &self.inputs)
    }

    fn epoch(&self, epoch: usize) -> Result<EpochRows, TrainError> {
        self.builder.rows(epoch)
    }

    fn loss(
        &self,
        batches: &EpochRows,
        step: usize,
        stepper: &mut Stepper<'_>,
        dropout_seed: u64,
        buffers: &mut StepBuffers,
    ) -> Result<StepLoss, TrainError> {
        let context = LossInputs {
            config: self.config,
            inputs: &self.inputs,
            item_q: &self.builder.item_q,
        };
        batch_loss(&context, batches, step, stepper, dropout_seed, buffers)
    }

    fn validate(&self, model: &Dssm) -> Result<Validation, TrainError> {
        let variants = [self.config.train.select_ranking.variant()];
        let report = self
            .rank(model, &self.val_users, &self.val_held_out, &variants)?
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
        let (n_users, n_items) = (self.base_users.rows(), self.inputs.items.rows());
        let rows = split_rows(&self.inputs.dataset, Split::Test, n_users, n_items)?;
        let held_out = held_out(&self.setup, &rows, self.histories.is_some());
        let held_out = (self.setup).with_earlier(held_out, &self.val.users, &self.val.items)?;
        let users = query_users(
            &self.base_users,
            self.histories.as_ref(),
            &rows,
            Some(&self.val),
        );
        let test = self.rank(best, &users, &held_out, &ProtocolVariant::ALL)?;
        record_test(&self.setup, &held_out, test, metrics)
    }
}
