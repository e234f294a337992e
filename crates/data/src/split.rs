//! The `seed` and `leave-last-out` splits of PROTOCOLS.md.

use std::fmt;
use std::str::FromStr;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::error::DataError;
use crate::log::InteractionLog;

/// One of the three splits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Split {
    /// Training rows: the only rows any statistic or vocabulary is fitted on.
    Train,
    /// Validation rows (model selection).
    Val,
    /// Test rows, read once at the end.
    Test,
}

impl Split {
    /// All splits in order.
    pub const ALL: [Split; 3] = [Split::Train, Split::Val, Split::Test];

    /// `train`, `val` or `test`: also the Parquet file stem.
    pub fn name(self) -> &'static str {
        match self {
            Self::Train => "train",
            Self::Val => "val",
            Self::Test => "test",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A split protocol by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Protocol {
    /// Random over rows with a seed: 80/20, then 90/10 of the 80 (train 72 / val 8 / test 20).
    #[serde(rename = "seed")]
    Seed,
    /// Per user by (timestamp, line): last -> test, second-last -> val, rest -> train; users with
    /// fewer than 3 ratings keep all in train.
    #[serde(rename = "leave-last-out")]
    LeaveLastOut,
    /// A global time cutoff: train before one time, validation until a second, test after
    /// (evaluated like `leave-last-out`, every held-out row a top-K query).
    #[serde(rename = "time")]
    Time,
}

impl Protocol {
    /// `seed`, `leave-last-out` or `time`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Seed => "seed",
            Self::LeaveLastOut => "leave-last-out",
            Self::Time => "time",
        }
    }

    /// Whether the held-out rows are ranked against the catalogue (top-K metrics) rather than
    /// scored pointwise (AUC).
    pub fn is_retrieval(self) -> bool {
        self != Self::Seed
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Protocol {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "seed" => Ok(Self::Seed),
            "leave-last-out" => Ok(Self::LeaveLastOut),
            "time" => Ok(Self::Time),
            other => Err(DataError::InvalidConfig {
                message: format!(
                    "unknown protocol {other:?}, expected seed, leave-last-out or time"
                ),
            }),
        }
    }
}

/// How rows are assigned to splits, with its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitRule {
    /// A seeded permutation of the rows: the first ceil(20%) go to test, the next ceil(10%) of
    /// the rest to val, the remainder to train.
    Seed(u64),
    /// See [`Protocol::LeaveLastOut`]: a row without a timestamp is older than every timestamped
    /// row of the same user, and the row number breaks ties.
    LeaveLastOut,
    /// Unix seconds: `t < val_from` -> train, `val_from <= t < test_from` -> val, later -> test;
    /// rows without a timestamp -> train.
    Time {
        /// Start of validation.
        val_from: i64,
        /// Start of test.
        test_from: i64,
    },
}

impl SplitRule {
    /// The protocol this rule implements.
    pub fn protocol(self) -> Protocol {
        match self {
            Self::Seed(_) => Protocol::Seed,
            Self::LeaveLastOut => Protocol::LeaveLastOut,
            Self::Time { .. } => Protocol::Time,
        }
    }
}

/// Assigns each row of the log (in its order) to a split.
pub(crate) fn assign_splits(log: &InteractionLog, n_users: usize, rule: SplitRule) -> Vec<Split> {
    match rule {
        SplitRule::Seed(seed) => seed_split(log.len(), seed),
        SplitRule::LeaveLastOut => leave_last_out(log, n_users),
        SplitRule::Time {
            val_from,
            test_from,
        } => log
            .timestamp
            .iter()
            .map(|&t| match t {
                crate::log::NO_TIME => Split::Train,
                t if t >= test_from => Split::Test,
                t if t >= val_from => Split::Val,
                _ => Split::Train,
            })
            .collect(),
    }
}

fn seed_split(n: usize, seed: u64) -> Vec<Split> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut perm: Vec<u32> = (0..n as u32).collect();
    for i in (1..n).rev() {
        let j = rng.random_range(0..=i);
        perm.swap(i, j);
    }
    let n_test = (n * 2).div_ceil(10);
    let n_val = (n - n_test).div_ceil(10);
    let mut splits = vec![Split::Train; n];
    for &row in &perm[..n_test] {
        splits[row as usize] = Split::Test;
    }
    for &row in &perm[n_test..n_test + n_val] {
        splits[row as usize] = Split::Val;
    }
    splits
}

fn leave_last_out(log: &InteractionLog, n_users: usize) -> Vec<Split> {
    // Counting sort of rows by user, then per user sort by (timestamp, line).
    let mut starts = vec![0u32; n_users + 1];
    for &u in &log.user_row {
        starts[u as usize + 1] += 1;
    }
    for u in 0..n_users {
        starts[u + 1] += starts[u];
    }
    let mut fill = starts.clone();
    let mut by_user = vec![0u32; log.len()];
    for (i, &u) in log.user_row.iter().enumerate() {
        let slot = &mut fill[u as usize];
        by_user[*slot as usize] = i as u32;
        *slot += 1;
    }
    let mut splits = vec![Split::Train; log.len()];
    for u in 0..n_users {
        let rows = &mut by_user[starts[u] as usize..starts[u + 1] as usize];
        if rows.len() < 3 {
            continue;
        }
        // NO_TIME is i64::MIN: a row without a timestamp sorts first.
        rows.sort_unstable_by_key(|&i| (log.timestamp[i as usize], log.line[i as usize]));
        splits[rows[rows.len() - 1] as usize] = Split::Test;
        splits[rows[rows.len() - 2] as usize] = Split::Val;
    }
    splits
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(rows: &[(u32, u32, Option<i64>)]) -> InteractionLog {
        let mut log = InteractionLog::default();
        for &(user, line, time) in rows {
            log.user_row.push(user);
            log.item_row.push(line);
            log.timestamp.push(time.unwrap_or(crate::log::NO_TIME));
            log.rating.push(f32::NAN);
            log.label.push(1);
            log.line.push(line);
        }
        log
    }

    fn rating(user_row: u32, line: u32, timestamp: Option<i64>) -> (u32, u32, Option<i64>) {
        (user_row, line, timestamp)
    }

    #[test]
    fn seed_split_proportions_and_determinism() {
        let n = 10_000;
        let a = seed_split(n, 1);
        let count = |s: &[Split], which| s.iter().filter(|&&x| x == which).count();
        assert_eq!(count(&a, Split::Test), 2000);
        assert_eq!(count(&a, Split::Val), 800);
        assert_eq!(count(&a, Split::Train), 7200);
        assert_eq!(a, seed_split(n, 1));
        let b = seed_split(n, 2);
        assert_ne!(a, b);
        // Odd sizes: ceil like scikit-learn's test_size.
        let c = seed_split(11, 3);
        assert_eq!(count(&c, Split::Test), 3);
        assert_eq!(count(&c, Split::Val), 1);
    }

    #[test]
    fn leave_last_out_orders_by_time_then_line_with_missing_first() {
        let ratings = vec![
            rating(0, 1, Some(100)),
            rating(0, 2, None),
            rating(0, 3, Some(100)), // tie with line 1: later line wins
            rating(0, 4, Some(50)),
            rating(0, 5, None),
            rating(1, 6, Some(1)), // user 1 has only two ratings: all train
            rating(1, 7, Some(2)),
            rating(2, 8, None), // user 2: no timestamps at all, lines decide
            rating(2, 9, None),
            rating(2, 10, None),
        ];
        let s = leave_last_out(&log(&ratings), 3);
        use Split::*;
        assert_eq!(
            s,
            vec![
                Val, Train, Test, Train, Train, Train, Train, Train, Val, Test
            ]
        );
    }

    #[test]
    fn leave_last_out_timestamped_beats_missing_even_when_earlier_line() {
        let ratings = vec![
            rating(0, 1, Some(1)),
            rating(0, 2, None),
            rating(0, 3, None),
        ];
        assert_eq!(
            leave_last_out(&log(&ratings), 1),
            vec![Split::Test, Split::Train, Split::Val]
        );
    }

    #[test]
    fn the_time_split_cuts_at_two_instants_and_keeps_untimed_rows_in_train() {
        let rows = log(&[
            rating(0, 1, Some(99)),
            rating(0, 2, Some(100)),
            rating(1, 3, Some(199)),
            rating(1, 4, Some(200)),
            rating(1, 5, None),
        ]);
        let rule = SplitRule::Time {
            val_from: 100,
            test_from: 200,
        };
        use Split::*;
        assert_eq!(
            assign_splits(&rows, 2, rule),
            [Train, Val, Val, Test, Train]
        );
        assert_eq!(rule.protocol(), Protocol::Time);
    }

    #[test]
    fn protocol_names_round_trip() {
        for p in [Protocol::Seed, Protocol::LeaveLastOut, Protocol::Time] {
            assert_eq!(p.name().parse::<Protocol>().unwrap(), p);
            assert_eq!(
                serde_json::to_string(&p).unwrap(),
                format!("\"{}\"", p.name())
            );
        }
        assert!("random".parse::<Protocol>().is_err());
    }
}
