//! Checkpoint policy: which validation is the best so far, and when to stop early. The decision is
//! separate from the file IO (burn's strategy/checkpointer split) so it can be tested alone.
//!
//! ```
//! use dssm_trainer::policy::{BestTracker, Decision};
//! let mut tracker = BestTracker::new(true, 1);
//! assert_eq!(tracker.observe(1, 0.70), Decision { save_best: true, stop: false });
//! assert_eq!(tracker.observe(2, 0.69), Decision { save_best: false, stop: true });
//! assert_eq!(tracker.best(), Some((1, 0.70)));
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
}
