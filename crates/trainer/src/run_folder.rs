//! The run folder: every file a run writes goes through [`RunFolder::write`] (a temporary sibling,
//! then a rename) or, for checkpoints, a temporary folder renamed into place; the checkpoint
//! [`CheckpointAction`]s the policy decides are carried out here.

use std::path::{Path, PathBuf};

use dssm_model::Dssm;
use dssm_retrieval::RankingReport;
use serde::{Deserialize, Serialize};

use crate::config::RunConfig;
use crate::error::TrainError;
use crate::metrics::PointwiseMetrics;
use crate::optim::Optimizer;
use crate::policy::{BestTracker, CheckpointAction, Slot, StartRefusal, before_fresh_start};
use crate::provenance::checksum;
use crate::report::{DatasetInfo, EpochRecord};

/// Files of a run folder.
pub mod layout {
    /// The run config as used (TOML).
    pub const CONFIG: &str = "config.toml";
    /// Seed, code version, dataset (absolute path, checksum), start time.
    pub const RUN: &str = "run.json";
    /// A copy of the dataset's manifest.json.
    pub const DATASET_MANIFEST: &str = "dataset-manifest.json";
    /// One JSON line per epoch.
    pub const EPOCHS: &str = "metrics.jsonl";
    /// The final record.
    pub const METRICS: &str = "metrics.json";
    /// Training curves.
    pub const PLOT: &str = "training.svg";
    /// Checkpoints folder; holds `best/` and `last/`.
    pub const CHECKPOINTS: &str = "checkpoints";
    /// Training state inside a checkpoint.
    pub const STATE: &str = "state.json";
}

/// `run.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RunInfo {
    pub(crate) seed: u64,
    pub(crate) code_version: String,
    pub(crate) dataset: DatasetInfo,
    pub(crate) protocol: String,
}

/// `state.json` inside a checkpoint: where the learner stands.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TrainState {
    /// Epochs completed when the checkpoint was written.
    pub(crate) epoch: usize,
    /// Optimizer steps so far.
    pub(crate) global_step: u64,
    pub(crate) tracker: BestTracker,
    pub(crate) records: Vec<EpochRecord>,
    pub(crate) best_val: Option<PointwiseMetrics>,
    pub(crate) train_seconds: f64,
    pub(crate) train_rows: u64,
    pub(crate) stopped_early: bool,
    /// Validation ranking of the best checkpoint (`leave-last-out`).
    #[serde(default)]
    pub(crate) best_val_ranking: Option<RankingReport>,
}

impl TrainState {
    /// The state before the first epoch.
    pub(crate) fn fresh(tracker: BestTracker) -> Self {
        Self {
            epoch: 0,
            global_step: 0,
            tracker,
            records: Vec::new(),
            best_val: None,
            train_seconds: 0.0,
            train_rows: 0,
            stopped_early: false,
            best_val_ranking: None,
        }
    }
}

/// What a checkpoint holds, for [`RunFolder::apply`].
pub(crate) struct CheckpointContents<'a> {
    pub(crate) model: &'a Dssm,
    pub(crate) optimizer: &'a Optimizer,
    pub(crate) state: &'a TrainState,
}

/// A run folder on disk.
#[derive(Debug, Clone)]
pub(crate) struct RunFolder {
    dir: PathBuf,
}

impl RunFolder {
    /// The folder at `dir` (nothing is read or written).
    pub(crate) fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// The folder's path.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Prepares the folder for a fresh run: refused when it holds a run and `overwrite` is
    /// false; with `overwrite`, its checkpoints are deleted.
    pub(crate) fn start_fresh(&self, overwrite: bool) -> Result<(), TrainError> {
        let occupied =
            self.dir.join(layout::EPOCHS).exists() || self.dir.join(layout::CHECKPOINTS).exists();
        let actions = before_fresh_start(occupied, overwrite).map_err(|refusal| match refusal {
            StartRefusal::Occupied => TrainError::Run {
                path: self.dir.clone(),
                message:
                    "already holds a run; resume it, overwrite it or choose another output.dir"
                        .to_string(),
            },
        })?;
        for action in &actions {
            self.apply(action, None)?;
        }
        std::fs::create_dir_all(&self.dir).map_err(TrainError::io("create folder", &self.dir))
    }

    /// The checkpoint a resume continues from: `checkpoints/last`, or the `.old-last` copy an
    /// interrupted rename leaves; an error when neither holds a state.json. `config` must equal
    /// the folder's `config.toml` apart from `train.epochs` and `output`.
    pub(crate) fn resume_point(&self, config: &RunConfig) -> Result<PathBuf, TrainError> {
        let dir = self.find_checkpoint(Slot::Last).ok_or_else(|| {
            let last = self.checkpoint_dir(Slot::Last);
            if last.exists() {
                TrainError::CorruptCheckpoint {
                    message: format!("{} is missing", layout::STATE),
                    path: last,
                }
            } else {
                TrainError::NoCheckpointToResume {
                    path: self.dir.clone(),
                }
            }
        })?;
        let saved = RunConfig::from_file(self.dir.join(layout::CONFIG))?;
        if !resumable_with(&saved, config) {
            return Err(TrainError::Run {
                path: self.dir.clone(),
                message: "cannot resume: the config differs from the run's config.toml in more \
                          than train.epochs"
                    .to_string(),
            });
        }
        Ok(dir)
    }

    /// The checkpoint folder of `slot` (which may not exist).
    pub(crate) fn checkpoint_dir(&self, slot: Slot) -> PathBuf {
        self.dir.join(layout::CHECKPOINTS).join(slot.name())
    }

    /// The checkpoint folder of `slot`, or its `.old-` copy left by an interrupted rename.
    pub(crate) fn find_checkpoint(&self, slot: Slot) -> Option<PathBuf> {
        let dir = self.checkpoint_dir(slot);
        if dir.join(layout::STATE).exists() {
            return Some(dir);
        }
        let old = self.checkpoints().join(format!(".old-{}", slot.name()));
        old.join(layout::STATE).exists().then_some(old)
    }

    fn checkpoints(&self) -> PathBuf {
        self.dir.join(layout::CHECKPOINTS)
    }

    /// Carries out `action`; a save needs the checkpoint's contents.
    pub(crate) fn apply(
        &self,
        action: &CheckpointAction,
        contents: Option<&CheckpointContents<'_>>,
    ) -> Result<(), TrainError> {
        match (*action, contents) {
            (CheckpointAction::DeleteAll, _) => {
                let checkpoints = self.checkpoints();
                if checkpoints.exists() {
                    std::fs::remove_dir_all(&checkpoints)
                        .map_err(TrainError::io("remove", &checkpoints))?;
                }
                Ok(())
            }
            (
                CheckpointAction::Save {
                    slot,
                    with_optimizer,
                },
                Some(contents),
            ) => self.save_checkpoint(slot, with_optimizer, contents),
            (CheckpointAction::Save { slot, .. }, None) => Err(TrainError::Run {
                path: self.checkpoint_dir(slot),
                message: "nothing to save".to_string(),
            }),
        }
    }

    /// Writes a checkpoint to `.tmp-<slot>`, then moves the old one to `.old-<slot>`, renames the
    /// new one into place and removes the old one.
    fn save_checkpoint(
        &self,
        slot: Slot,
        with_optimizer: bool,
        contents: &CheckpointContents<'_>,
    ) -> Result<(), TrainError> {
        let (parent, name) = (self.checkpoints(), slot.name());
        std::fs::create_dir_all(&parent).map_err(TrainError::io("create folder", &parent))?;
        let tmp = parent.join(format!(".tmp-{name}"));
        remove_if_present(&tmp)?;
        contents.model.save(&tmp).map_err(TrainError::model)?;
        if with_optimizer {
            contents.optimizer.save(&tmp).map_err(|e| TrainError::Run {
                path: tmp.clone(),
                message: e.to_string(),
            })?;
        }
        write_atomically(&tmp.join(layout::STATE), &to_json(contents.state))?;
        let target = parent.join(name);
        let old = parent.join(format!(".old-{name}"));
        remove_if_present(&old)?;
        if target.exists() {
            std::fs::rename(&target, &old).map_err(TrainError::io("rename", &target))?;
        }
        std::fs::rename(&tmp, &target).map_err(TrainError::io("rename", &tmp))?;
        remove_if_present(&old)
    }

    /// Writes `bytes` as the folder's file `name`, atomically.
    pub(crate) fn write(&self, name: &str, bytes: &[u8]) -> Result<(), TrainError> {
        write_atomically(&self.dir.join(name), bytes)
    }

    /// Writes `value` as pretty JSON to the folder's file `name`, atomically.
    pub(crate) fn write_json<T: Serialize>(&self, name: &str, value: &T) -> Result<(), TrainError> {
        self.write(name, &to_json(value))
    }

    /// Writes `metrics.jsonl`: one line per completed epoch.
    pub(crate) fn write_epochs(&self, records: &[EpochRecord]) -> Result<(), TrainError> {
        let mut lines = Vec::new();
        for record in records {
            lines.extend(serde_json::to_vec(record).unwrap_or_default());
            lines.push(b'\n');
        }
        self.write(layout::EPOCHS, &lines)
    }

    /// The training state of a checkpoint folder.
    pub(crate) fn read_state(checkpoint: &Path) -> Result<TrainState, TrainError> {
        read_json(&checkpoint.join(layout::STATE))
    }

    /// `run.json`.
    pub(crate) fn read_info(&self) -> Result<RunInfo, TrainError> {
        read_json(&self.dir.join(layout::RUN))
    }

    /// The id of the best checkpoint, `best@epoch<N>:<weights checksum>`.
    pub(crate) fn checkpoint_id(checkpoint: &Path, epoch: usize) -> String {
        let weights = std::fs::read(checkpoint.join(dssm_model::WEIGHTS_FILE)).unwrap_or_default();
        format!("best@epoch{epoch}:{}", checksum(&weights))
    }
}

/// Whether a run saved with `saved` may be resumed with `config`: equal apart from
/// `train.epochs` and `output`.
fn resumable_with(saved: &RunConfig, config: &RunConfig) -> bool {
    let (mut a, mut b) = (saved.clone(), config.clone());
    a.train.epochs = 0;
    b.train.epochs = 0;
    a.output = b.output.clone();
    a == b
}

fn remove_if_present(dir: &Path) -> Result<(), TrainError> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(TrainError::io("remove", dir))?;
    }
    Ok(())
}

/// Writes `bytes` to a temporary sibling of `path`, then renames it into place.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, bytes).map_err(TrainError::io("write", &tmp))?;
    std::fs::rename(&tmp, path).map_err(TrainError::io("rename", path))
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, TrainError> {
    let text = std::fs::read_to_string(path).map_err(TrainError::io("read", path))?;
    serde_json::from_str(&text).map_err(|e| TrainError::Run {
        path: path.to_path_buf(),
        message: format!("bad JSON: {e}"),
    })
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    text.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_start_refuses_an_occupied_folder_and_overwrite_removes_only_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let folder = RunFolder::new(dir.path().join("run"));
        folder.start_fresh(false).unwrap();
        folder.write(layout::CONFIG, b"x").unwrap();
        std::fs::create_dir_all(folder.checkpoint_dir(Slot::Best)).unwrap();
        let err = folder.start_fresh(false).unwrap_err().to_string();
        assert!(err.contains("already holds a run"), "{err}");
        folder.start_fresh(true).unwrap();
        assert!(!folder.dir().join(layout::CHECKPOINTS).exists());
        assert_eq!(
            std::fs::read(folder.dir().join(layout::CONFIG)).unwrap(),
            b"x"
        );
    }

    #[test]
    fn writes_leave_no_temporary_file_and_epochs_are_one_line_each() {
        let dir = tempfile::tempdir().unwrap();
        let folder = RunFolder::new(dir.path().to_path_buf());
        let record = EpochRecord {
            epoch: 1,
            train_loss: 0.5,
            train_rows: 10,
            steps: 1,
            lr: 1e-3,
            samples_per_sec: 1.0,
            wall_s: 1.0,
            val: None,
            val_hit_rate: Some(0.25),
            val_ndcg: None,
        };
        folder
            .write_epochs(&[record.clone(), record.clone()])
            .unwrap();
        folder.write_epochs(std::slice::from_ref(&record)).unwrap();
        let text = std::fs::read_to_string(dir.path().join(layout::EPOCHS)).unwrap();
        let back: EpochRecord = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!((text.lines().count(), back), (1, record));
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec![layout::EPOCHS.to_string()]);
    }

    #[test]
    fn the_old_copy_of_an_interrupted_rename_is_found_and_a_save_needs_contents() {
        let dir = tempfile::tempdir().unwrap();
        let folder = RunFolder::new(dir.path().to_path_buf());
        assert_eq!(folder.find_checkpoint(Slot::Last), None);
        let old = dir.path().join(layout::CHECKPOINTS).join(".old-last");
        std::fs::create_dir_all(&old).unwrap();
        std::fs::write(old.join(layout::STATE), "{}").unwrap();
        assert_eq!(folder.find_checkpoint(Slot::Last), Some(old));
        assert_eq!(folder.find_checkpoint(Slot::Best), None);
        let save = CheckpointAction::Save {
            slot: Slot::Best,
            with_optimizer: false,
        };
        assert!(folder.apply(&save, None).is_err());
    }
}
