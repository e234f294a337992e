//! Pointwise metrics of the `seed` protocol: exact AUC with ties, log loss and GAUC.
//!
//! ```
//! use dssm_trainer::metrics::{auc, log_loss};
//! // One of the four positive/negative pairs is ordered wrongly.
//! let scores = [0.9, 0.4, 0.6, 0.1];
//! let labels = [1, 1, 0, 0];
//! assert_eq!(auc(&scores, &labels), Some(0.75));
//! assert!((log_loss(&[0.5, 0.5], &[1, 0]) - std::f64::consts::LN_2).abs() < 1e-12);
//! ```

use serde::{Deserialize, Serialize};

/// Probabilities are clamped to `[LOG_LOSS_EPS, 1 - LOG_LOSS_EPS]` before the log.
pub const LOG_LOSS_EPS: f64 = 1e-7;

/// The pointwise metrics of one split.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PointwiseMetrics {
    /// Rows evaluated.
    pub rows: usize,
    /// AUC over all rows (ties count one half); NaN when one class is absent.
    pub auc: f64,
    /// Mean binary log loss of the predicted probabilities (clamped).
    pub logloss: f64,
    /// Mean per-user AUC over users with both classes; NaN when there are none.
    pub gauc: f64,
    /// GAUC weighted by each user's row count.
    pub gauc_weighted: f64,
    /// Users with both classes (those GAUC averages over).
    pub gauc_users: usize,
}

impl PointwiseMetrics {
    /// Computes every metric from logits (the model's scores before the sigmoid), 0/1 labels and
    /// the user of each row.
    pub fn from_logits(logits: &[f32], labels: &[u8], users: &[u32]) -> Self {
        let probabilities: Vec<f64> = logits.iter().map(|&x| sigmoid(f64::from(x))).collect();
        let scores: Vec<f64> = logits.iter().map(|&x| f64::from(x)).collect();
        let (gauc, gauc_weighted, gauc_users) = gauc(&scores, labels, users);
        Self {
            rows: labels.len(),
            auc: auc(&scores, labels).unwrap_or(f64::NAN),
            logloss: log_loss(&probabilities, labels),
            gauc: gauc.unwrap_or(f64::NAN),
            gauc_weighted: gauc_weighted.unwrap_or(f64::NAN),
            gauc_users,
        }
    }
}

/// The logistic function.
pub fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// Exact ROC AUC: the probability that a random positive scores above a random negative, ties
/// counting one half (the Mann-Whitney statistic with average ranks). `None` when either class is
/// absent. O(n log n).
pub fn auc(scores: &[f64], labels: &[u8]) -> Option<f64> {
    let mut order: Vec<u32> = (0..scores.len() as u32).collect();
    order.sort_unstable_by(|&a, &b| scores[a as usize].total_cmp(&scores[b as usize]));
    auc_sorted(&order, scores, labels)
}

/// AUC of the rows `order` (already sorted by ascending score).
fn auc_sorted(order: &[u32], scores: &[f64], labels: &[u8]) -> Option<f64> {
    let mut positives = 0u64;
    let mut rank_sum = 0f64;
    let mut i = 0;
    while i < order.len() {
        let mut j = i + 1;
        while j < order.len() && scores[order[j] as usize] == scores[order[i] as usize] {
            j += 1;
        }
        // Ranks i+1..=j share their average.
        let average_rank = (i + 1 + j) as f64 / 2.0;
        let group_positives = order[i..j]
            .iter()
            .filter(|&&r| labels[r as usize] != 0)
            .count() as u64;
        positives += group_positives;
        rank_sum += average_rank * group_positives as f64;
        i = j;
    }
    let negatives = order.len() as u64 - positives;
    if positives == 0 || negatives == 0 {
        return None;
    }
    let p = positives as f64;
    Some((rank_sum - p * (p + 1.0) / 2.0) / (p * negatives as f64))
}

/// Mean binary cross-entropy of probabilities against 0/1 labels, with the probabilities clamped
/// to `[LOG_LOSS_EPS, 1 - LOG_LOSS_EPS]`. NaN for no rows.
pub fn log_loss(probabilities: &[f64], labels: &[u8]) -> f64 {
    if labels.is_empty() {
        return f64::NAN;
    }
    let total: f64 = probabilities
        .iter()
        .zip(labels)
        .map(|(&p, &y)| {
            let p = p.clamp(LOG_LOSS_EPS, 1.0 - LOG_LOSS_EPS);
            if y != 0 { -p.ln() } else { -(1.0 - p).ln() }
        })
        .sum();
    total / labels.len() as f64
}

/// GAUC: per-user AUC averaged over users with both classes. Returns (mean, row-weighted mean,
/// number of users), the means `None` when no user has both classes.
pub fn gauc(scores: &[f64], labels: &[u8], users: &[u32]) -> (Option<f64>, Option<f64>, usize) {
    let mut order: Vec<u32> = (0..scores.len() as u32).collect();
    order.sort_unstable_by(|&a, &b| {
        users[a as usize]
            .cmp(&users[b as usize])
            .then(scores[a as usize].total_cmp(&scores[b as usize]))
    });
    let (mut sum, mut weighted_sum, mut weights, mut count) = (0.0, 0.0, 0.0, 0usize);
    let mut start = 0;
    while start < order.len() {
        let user = users[order[start] as usize];
        let mut end = start + 1;
        while end < order.len() && users[order[end] as usize] == user {
            end += 1;
        }
        if let Some(value) = auc_sorted(&order[start..end], scores, labels) {
            let rows = (end - start) as f64;
            sum += value;
            weighted_sum += value * rows;
            weights += rows;
            count += 1;
        }
        start = end;
    }
    if count == 0 {
        (None, None, 0)
    } else {
        (
            Some(sum / count as f64),
            Some(weighted_sum / weights),
            count,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn auc_perfect_reversed_and_missing_class() {
        assert_eq!(auc(&[0.1, 0.2, 0.8, 0.9], &[0, 0, 1, 1]), Some(1.0));
        assert_eq!(auc(&[0.1, 0.2, 0.8, 0.9], &[1, 1, 0, 0]), Some(0.0));
        assert_eq!(auc(&[0.1, 0.2], &[1, 1]), None);
        assert_eq!(auc(&[], &[]), None);
    }

    #[test]
    fn auc_with_ties_counts_half() {
        // Positives 0.5, 0.7; negatives 0.5, 0.1. Pairs: (0.5 vs 0.5) tie = 0.5, (0.5 vs 0.1) = 1,
        // (0.7 vs 0.5) = 1, (0.7 vs 0.1) = 1 -> 3.5 / 4.
        let value = auc(&[0.5, 0.7, 0.5, 0.1], &[1, 1, 0, 0]).unwrap();
        assert!(close(value, 0.875), "{value}");
        // All scores equal: 0.5.
        assert!(close(auc(&[1.0; 5], &[1, 0, 1, 0, 0]).unwrap(), 0.5));
    }

    #[test]
    fn auc_matches_brute_force() {
        let scores = [0.3, 0.1, 0.3, 0.9, 0.5, 0.5, 0.2, 0.3, 0.7, 0.0];
        let labels = [1, 0, 0, 1, 0, 1, 1, 0, 0, 1];
        let mut wins = 0.0;
        let mut pairs = 0.0;
        for i in 0..scores.len() {
            for j in 0..scores.len() {
                if labels[i] == 1 && labels[j] == 0 {
                    pairs += 1.0;
                    if scores[i] > scores[j] {
                        wins += 1.0;
                    } else if scores[i] == scores[j] {
                        wins += 0.5;
                    }
                }
            }
        }
        assert!(close(auc(&scores, &labels).unwrap(), wins / pairs));
    }

    #[test]
    fn log_loss_hand_values_and_clamp() {
        // -(ln 0.8 + ln 0.6) / 2.
        let expected = -(0.8f64.ln() + 0.6f64.ln()) / 2.0;
        assert!(close(log_loss(&[0.8, 0.4], &[1, 0]), expected));
        // A confident mistake is clamped, not infinite.
        let clamped = log_loss(&[0.0], &[1]);
        assert!(close(clamped, -(LOG_LOSS_EPS).ln()));
        assert!(log_loss(&[], &[]).is_nan());
    }

    #[test]
    fn gauc_averages_users_with_both_classes() {
        // User 1: perfect (1.0), 2 rows. User 2: one tie (0.5), 2 rows... plus a third row making
        // 3 rows: positives 0.4; negatives 0.4, 0.9 -> (0.5 + 0) / 2 = 0.25. User 3: one class only.
        let scores = [0.9, 0.1, 0.4, 0.4, 0.9, 0.3];
        let labels = [1, 0, 1, 0, 0, 1];
        let users = [1, 1, 2, 2, 2, 3];
        let (mean, weighted, count) = gauc(&scores, &labels, &users);
        assert_eq!(count, 2);
        assert!(close(mean.unwrap(), (1.0 + 0.25) / 2.0));
        assert!(close(weighted.unwrap(), (1.0 * 2.0 + 0.25 * 3.0) / 5.0));
        assert_eq!(gauc(&[0.1], &[1], &[7]), (None, None, 0));
    }

    #[test]
    fn pointwise_from_logits() {
        let metrics = PointwiseMetrics::from_logits(&[0.0, 0.0], &[1, 0], &[1, 1]);
        assert_eq!(metrics.rows, 2);
        assert!(close(metrics.auc, 0.5));
        assert!(close(metrics.logloss, std::f64::consts::LN_2));
        assert_eq!(metrics.gauc_users, 1);
    }
}
