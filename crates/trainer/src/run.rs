//! Trained runs read back: [`load_run`] (what export, recommend and serving need) and
//! [`evaluate_run`] (the best checkpoint on a split again).

use std::path::{Path, PathBuf};
use std::time::Instant;

use dssm_data::{Dataset, Split};
use dssm_model::{Dssm, Side};

use crate::config::RunConfig;
use crate::error::TrainError;
use crate::history::{Histories, item_of_users};
use crate::inputs::{Inputs, open_dataset, split_rows};
use crate::policy::Slot;
use crate::report::EvalReport;
use crate::retrieval::embed_rows;
use crate::run_folder::{RunFolder, layout};
use crate::tables::SideTable;

/// A trained run loaded back: what export and recommend need.
pub struct LoadedRun {
    /// The run folder.
    pub run_dir: PathBuf,
    /// The run's configuration (`config.toml`).
    pub config: RunConfig,
    /// The dataset it was trained on.
    pub dataset: Dataset,
    /// The best-validation model.
    pub model: Dssm,
}

impl std::fmt::Debug for LoadedRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedRun")
            .field("run_dir", &self.run_dir)
            .field("config", &self.config)
            .field("dataset", &self.dataset.dir)
            .field("model", self.model.config())
            .finish()
    }
}

impl LoadedRun {
    /// Embeddings of every row of the users (or items) table, `[rows, dim]` row-major, in
    /// evaluation mode. With the `history` feature (`features.history_len`), a user's history is
    /// what a test query sees: the validation item, then the last train items.
    pub fn embeddings(
        &self,
        side: Side,
        batch_size: usize,
    ) -> Result<(Vec<f32>, usize), TrainError> {
        let mut table = SideTable::new(&self.dataset, self.model.config(), side)?;
        if let (Side::User, Some(_)) = (side, &self.model.config().sequence) {
            return self.sequence_queries(table, batch_size);
        }
        if let (Side::User, Some(len)) = (side, self.history_len()) {
            table = self.with_test_histories(table, len)?;
        }
        let config = self.model.config();
        let rows: Vec<u32> = (0..table.rows() as u32).collect();
        let out = embed_rows(&self.model, config, &table, side, &rows, batch_size, false)?;
        Ok((out, config.output_dim()))
    }

    /// The sequence tower's test-time queries of every user row: the train items, then the
    /// validation item ([`crate::SequenceEncoder`]'s encoding).
    fn sequence_queries(
        &self,
        users: SideTable,
        batch_size: usize,
    ) -> Result<(Vec<f32>, usize), TrainError> {
        let items = SideTable::new(&self.dataset, self.model.config(), Side::Item)?;
        let encoder = crate::SequenceEncoder::new(self, users, &items)?;
        let vectors = encoder.test_queries(&self.model, batch_size)?;
        Ok((vectors, self.model.config().output_dim()))
    }

    /// The users table as the exported user vectors see it: with the history known at test
    /// time when the model has the history feature.
    pub(crate) fn user_side_table(&self) -> Result<SideTable, TrainError> {
        let table = SideTable::new(&self.dataset, self.model.config(), Side::User)?;
        match self.history_len() {
            Some(len) => self.with_test_histories(table, len),
            None => Ok(table),
        }
    }

    /// The length of the model's history feature, when it has one.
    fn history_len(&self) -> Option<usize> {
        self.model
            .config()
            .side_features(Side::User)
            .find(|f| f.name == crate::history::HISTORY_FEATURE)
            .and_then(|f| match f.kind {
                dssm_model::FeatureKind::MultiCategorical { max_len, .. } => Some(max_len),
                _ => None,
            })
    }

    /// The users table with the history known at test time: the train items, then the
    /// validation item.
    fn with_test_histories(&self, table: SideTable, len: usize) -> Result<SideTable, TrainError> {
        let (n_users, n_items) = (table.rows(), self.dataset.items.movie_id.len());
        let train = split_rows(&self.dataset, Split::Train, n_users, n_items)?;
        let val = split_rows(&self.dataset, Split::Val, n_users, n_items)?;
        let histories = Histories::new(&train.timed(), n_users, len);
        let users: Vec<u32> = (0..n_users as u32).collect();
        let newer = item_of_users(&users, &val.users, &val.items);
        Ok(table.expand(&users, &histories.queries(&users, Some(&newer))))
    }
}

/// Reads a run folder: its config, dataset and best checkpoint.
pub fn load_run(run_dir: &Path) -> Result<LoadedRun, TrainError> {
    let folder = RunFolder::new(run_dir.to_path_buf());
    let config = RunConfig::from_file(run_dir.join(layout::CONFIG))?;
    let info = folder.read_info()?;
    let best = folder
        .find_checkpoint(Slot::Best)
        .ok_or_else(|| TrainError::Run {
            path: run_dir.to_path_buf(),
            message: "no checkpoints/best".to_string(),
        })?;
    let device = dssm_model::parse_device(&config.train.device).map_err(TrainError::model)?;
    let model = Dssm::load(&best, &device).map_err(TrainError::model)?;
    let dataset = open_dataset(&info.dataset.path, config.data.protocol)?;
    Ok(LoadedRun {
        run_dir: run_dir.to_path_buf(),
        config,
        dataset,
        model,
    })
}

/// Re-evaluates the run's best checkpoint on `split` (`Val` or `Test`).
pub fn evaluate_run(run_dir: &Path, split: Split) -> Result<EvalReport, TrainError> {
    let started = Instant::now();
    let loaded = load_run(run_dir)?;
    if loaded.config.data.protocol.is_retrieval() {
        return Err(TrainError::Unsupported {
            message: "evaluate_run computes the pointwise metrics of the seed protocol; a \
                      leave-last-out run's ranking metrics are in its metrics.json (retrieval) \
                      and come from `dssm evaluate-retrieval`"
                .to_string(),
        });
    }
    let folder = RunFolder::new(run_dir.to_path_buf());
    let best = folder
        .find_checkpoint(Slot::Best)
        .unwrap_or_else(|| folder.checkpoint_dir(Slot::Best));
    let state = RunFolder::read_state(&best)?;
    let (best_epoch, _) = state.tracker.best().unwrap_or((state.epoch, f64::NAN));
    let LoadedRun {
        config,
        dataset,
        model,
        ..
    } = loaded;
    let inputs = Inputs::new(&config, Some(model.config().clone()), dataset)?;
    let rows = inputs.split(split)?;
    let batch_size = config.train.eval_batch_size;
    let metrics = crate::task::pointwise::evaluate(&model, &inputs, &rows, batch_size)?;
    Ok(EvalReport {
        run_dir: run_dir.to_path_buf(),
        split: split.name().to_string(),
        metrics,
        checkpoint: RunFolder::checkpoint_id(&best, best_epoch),
        wall_s: started.elapsed().as_secs_f64(),
    })
}
