//! Checkpoint policy: which validation is the best so far, when to stop early, and which
//! checkpoints to write or delete, as values ([`CheckpointAction`]) that the run folder carries
//! out. The decisions are separate from the file IO (burn's strategy/checkpointer split) so they
//! are tested alone.
//!
//! ```
//! use dssm_trainer::policy::{BestTracker, CheckpointAction, Decision, Slot, after_epoch};
//! let mut tracker = BestTracker::new(true, 1);
//! assert_eq!(tracker.observe(1, 0.70), Decision { save_best: true, stop: false });
//! assert_eq!(tracker.observe(2, 0.69), Decision { save_best: false, stop: true });
//! assert_eq!(tracker.best(), Some((1, 0.70)));
//!
//! let mut tracker = BestTracker::new(true, 0);
//! let plan = after_epoch(&mut tracker, 1, Some(0.7));
//! assert!(plan.new_best && !plan.stop);
//! assert_eq!(plan.actions, vec![
//!     CheckpointAction::Save { slot: Slot::Best, with_optimizer: false },
//!     CheckpointAction::Save { slot: Slot::Last, with_optimizer: true },
//! ]);
//! ```

use serde::{Deserialize, Serialize};

/// What to do after a validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// This validation is the best so far: save it as the best checkpoint.
    pub save_best: bool,
    /// Patience is exhausted: stop training.
    pub stop: bool,
}

/// Tracks the best validation value and the validations since it improved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BestTracker {
    higher_is_better: bool,
    patience: usize,
    best: Option<(usize, f64)>,
    since_improvement: usize,
}

impl BestTracker {
    /// A tracker; `patience` 0 never stops early.
    pub fn new(higher_is_better: bool, patience: usize) -> Self {
        Self {
            higher_is_better,
            patience,
            best: None,
            since_improvement: 0,
        }
    }

    /// The best (epoch, value) so far.
    pub fn best(&self) -> Option<(usize, f64)> {
        self.best
    }

    /// Validations since the last improvement.
    pub fn since_improvement(&self) -> usize {
        self.since_improvement
    }

    /// Records the validation of `epoch`. A NaN value never improves. Ties keep the earlier
    /// epoch.
    pub fn observe(&mut self, epoch: usize, value: f64) -> Decision {
        let improved = !value.is_nan()
            && match self.best {
                None => true,
                Some((_, best)) => {
                    if self.higher_is_better {
                        value > best
                    } else {
                        value < best
                    }
                }
            };
        if improved {
            self.best = Some((epoch, value));
            self.since_improvement = 0;
        } else {
            self.since_improvement += 1;
        }
        Decision {
            save_best: improved,
            stop: self.patience > 0 && self.since_improvement >= self.patience,
        }
    }
}

/// A checkpoint folder of a run (`checkpoints/<name>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Slot {
    /// The best validation so far: what test, export and serving read.
    Best,
    /// The end of the last completed epoch, with the optimizer state: what a resume reads.
    Last,
}

impl Slot {
    /// The folder name under `checkpoints/`.
    pub fn name(self) -> &'static str {
        match self {
            Slot::Best => "best",
            Slot::Last => "last",
        }
    }
}

/// What the run folder is told to do with its checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointAction {
    /// Write the model and the training state as `slot` (and the optimizer state when
    /// `with_optimizer`), replacing the one there.
    Save {
        /// Which checkpoint.
        slot: Slot,
        /// Also write the optimizer's state (needed to resume).
        with_optimizer: bool,
    },
    /// Remove every checkpoint of the folder.
    DeleteAll,
}

/// What to do at the end of an epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochPlan {
    /// In order.
    pub actions: Vec<CheckpointAction>,
    /// This epoch's validation is the best so far (the caller keeps its metrics as the best).
    pub new_best: bool,
    /// Patience is exhausted: no further epoch.
    pub stop: bool,
}

/// The plan after epoch `epoch` (1-based): `selected` is the value of the selection metric when
/// the epoch was validated (`None` when it was not; NaN when validation gave no value). The best
/// checkpoint is written when it improved, the last one always, with the optimizer.
pub fn after_epoch(tracker: &mut BestTracker, epoch: usize, selected: Option<f64>) -> EpochPlan {
    let decision = selected.map(|value| tracker.observe(epoch, value));
    let new_best = decision.is_some_and(|d| d.save_best);
    let mut actions = Vec::with_capacity(2);
    if new_best {
        actions.push(CheckpointAction::Save {
            slot: Slot::Best,
            with_optimizer: false,
        });
    }
    actions.push(CheckpointAction::Save {
        slot: Slot::Last,
        with_optimizer: true,
    });
    EpochPlan {
        actions,
        new_best,
        stop: decision.is_some_and(|d| d.stop),
    }
}

/// Why a run cannot start in a folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartRefusal {
    /// A fresh run was asked for in a folder that holds one, without overwrite.
    Occupied,
}

/// The actions before a fresh run (no resume) starts: none in an empty folder; in one that holds
/// a run (`occupied`), deleting its checkpoints when `overwrite`, else a refusal.
pub fn before_fresh_start(
    occupied: bool,
    overwrite: bool,
) -> Result<Vec<CheckpointAction>, StartRefusal> {
    match (occupied, overwrite) {
        (false, _) => Ok(Vec::new()),
        (true, true) => Ok(vec![CheckpointAction::DeleteAll]),
        (true, false) => Err(StartRefusal::Occupied),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn higher_is_better_with_patience_two() {
        let mut tracker = BestTracker::new(true, 2);
        assert!(tracker.observe(1, 0.60).save_best);
        assert!(tracker.observe(2, 0.65).save_best);
        let d = tracker.observe(3, 0.65);
        assert_eq!(
            d,
            Decision {
                save_best: false,
                stop: false
            },
            "a tie is no improvement"
        );
        let d = tracker.observe(4, 0.70);
        assert_eq!(
            d,
            Decision {
                save_best: true,
                stop: false
            },
            "patience resets"
        );
        assert!(!tracker.observe(5, 0.5).stop);
        assert!(tracker.observe(6, 0.5).stop);
        assert_eq!(tracker.best(), Some((4, 0.70)));
    }

    #[test]
    fn lower_is_better_and_nan() {
        let mut tracker = BestTracker::new(false, 0);
        assert!(
            tracker.observe(1, f64::NAN)
                == Decision {
                    save_best: false,
                    stop: false
                }
        );
        assert!(tracker.observe(2, 0.6).save_best);
        assert!(tracker.observe(3, 0.5).save_best);
        assert!(!tracker.observe(4, 0.55).save_best);
        for epoch in 5..50 {
            assert!(!tracker.observe(epoch, 1.0).stop, "patience 0 never stops");
        }
        assert_eq!(tracker.best(), Some((3, 0.5)));
    }

    #[test]
    fn serialises_for_resume() {
        let mut tracker = BestTracker::new(true, 3);
        tracker.observe(1, 0.7);
        tracker.observe(2, 0.6);
        let text = serde_json::to_string(&tracker).unwrap();
        let back: BestTracker = serde_json::from_str(&text).unwrap();
        assert_eq!(back, tracker);
        assert_eq!(back.since_improvement(), 1);
    }
    fn save(slot: Slot, with_optimizer: bool) -> CheckpointAction {
        CheckpointAction::Save {
            slot,
            with_optimizer,
        }
    }

    #[test]
    fn every_epoch_saves_last_with_the_optimizer_and_best_only_when_it_improves() {
        let mut tracker = BestTracker::new(true, 2);
        let last = save(Slot::Last, true);
        let best = save(Slot::Best, false);
        // Not validated: last only, the tracker untouched.
        let plan = after_epoch(&mut tracker, 1, None);
        assert_eq!(
            (plan.actions, plan.new_best, plan.stop),
            (vec![last], false, false)
        );
        assert_eq!((tracker.best(), tracker.since_improvement()), (None, 0));
        // Improves: best first (the last checkpoint then holds the same epoch), then last.
        let plan = after_epoch(&mut tracker, 2, Some(0.70));
        assert_eq!((plan.actions, plan.new_best), (vec![best, last], true));
        // A NaN validation never becomes the best, and counts against patience.
        let plan = after_epoch(&mut tracker, 3, Some(f64::NAN));
        assert_eq!(
            (plan.actions, plan.new_best, plan.stop),
            (vec![last], false, false)
        );
        let plan = after_epoch(&mut tracker, 4, Some(0.69));
        assert_eq!(
            (plan.actions, plan.new_best, plan.stop),
            (vec![last], false, true)
        );
        assert_eq!(tracker.best(), Some((2, 0.70)));
    }

    #[test]
    fn a_fresh_start_deletes_old_checkpoints_only_when_told_to_overwrite() {
        assert_eq!(before_fresh_start(false, false), Ok(Vec::new()));
        assert_eq!(before_fresh_start(false, true), Ok(Vec::new()));
        assert_eq!(
            before_fresh_start(true, true),
            Ok(vec![CheckpointAction::DeleteAll])
        );
        assert_eq!(before_fresh_start(true, false), Err(StartRefusal::Occupied));
        assert_eq!((Slot::Best.name(), Slot::Last.name()), ("best", "last"));
    }
}
