//! Ranking metrics for the `leave-last-out` protocol (one held-out target per user): HR@K (= Recall@K),
//! NDCG@K and MRR, plus the popularity baseline.
//!
//! The input per user is the number of candidates ranked ahead of the target (`Some(0)` = ranked first),
//! or `None` for a miss (the target is not a candidate, or it is excluded). With `r = items_ahead + 1`
//! the 1-based rank: HR@K = 1 if r <= K; NDCG@K = 1 / log2(r + 1) if r <= K, else 0 (one relevant item,
//! so the ideal DCG is 1); MRR = 1 / r over the full ranking, **not** cut at any K; a miss scores 0 on
//! every metric. All are averaged over users, misses included.

use crate::error::{Error, Result};
use crate::matrix::{Exclusions, ScoredItem};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// The cut-offs of the `leave-last-out` protocol.
pub const PROTOCOL_CUTOFFS: [usize; 4] = [10, 20, 50, 100];

/// Recall@K of an approximate search against the exact one, query by query: the share of each
/// exact top-`k` that the approximate top-`k` also returns, pooled over queries (a query whose
/// exact list is shorter than `k` counts that many). 1.0 when `exact` holds no items.
///
/// ```
/// use dssm_retrieval::{ScoredItem, recall_at_k};
/// let item = |id| ScoredItem { id, score: 0.0 };
/// let exact = vec![vec![item(1), item(2)], vec![item(3), item(4)]];
/// let approximate = vec![vec![item(2), item(9)], vec![item(4), item(3)]];
/// assert_eq!(recall_at_k(&approximate, &exact, 2), 0.75);
/// ```
pub fn recall_at_k(approximate: &[Vec<ScoredItem>], exact: &[Vec<ScoredItem>], k: usize) -> f64 {
    let (mut found, mut total) = (0usize, 0usize);
    for (got, truth) in approximate.iter().zip(exact) {
        let mut top: Vec<u32> = truth.iter().take(k).map(|s| s.id).collect();
        top.sort_unstable();
        total += top.len();
        found += got
            .iter()
            .take(k)
            .filter(|s| top.binary_search(&s.id).is_ok())
            .count();
    }
    if total == 0 {
        1.0
    } else {
        found as f64 / total as f64
    }
}

/// How many candidates rank ahead of `scores[target]`: those with a strictly greater score, plus those
/// with an equal score at a lower position, leaving out the positions in `excluded` (in any order,
/// repeats allowed, out-of-range ones ignored). No sort of the scores: one pass, O(n).
///
/// Returns `None` (a miss) when `target` is out of range or excluded. Positions are catalogue positions;
/// when the catalogue is sorted by id (as [`crate::ExactIndex`] keeps it), "lower position" is "lower id".
/// Incomparable scores (NaN) never rank ahead.
///
/// ```
/// use dssm_retrieval::rank_of_target;
/// let scores = [0.5, 0.9, 0.5, 0.1];
/// assert_eq!(rank_of_target(&scores, 2, &[]), Some(2)); // 0.9 and the tied 0.5 at position 0
/// assert_eq!(rank_of_target(&scores, 2, &[1]), Some(1));
/// assert_eq!(rank_of_target(&scores, 1, &[1]), None);
/// ```
pub fn rank_of_target<S: PartialOrd + Copy>(
    scores: &[S],
    target: usize,
    excluded: &[usize],
) -> Option<usize> {
    let t = *scores.get(target)?;
    if excluded.contains(&target) {
        return None;
    }
    let ahead_before = scores[..target].iter().filter(|&&s| s >= t).count();
    let ahead_after = scores[target + 1..].iter().filter(|&&s| s > t).count();
    let mut excluded_ahead: Vec<usize> = excluded
        .iter()
        .copied()
        .filter(|&i| i < scores.len() && (scores[i] > t || (i < target && scores[i] >= t)))
        .collect();
    excluded_ahead.sort_unstable();
    excluded_ahead.dedup();
    Some(ahead_before + ahead_after - excluded_ahead.len())
}

/// HR@K and NDCG@K at one cut-off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsAtK {
    /// The cut-off K.
    pub k: usize,
    /// Hit rate at K, equal to Recall@K with one target per user.
    pub hit_rate: f64,
    /// NDCG at K.
    pub ndcg: f64,
}

/// Averaged ranking metrics of one evaluation run (one protocol variant, one model or baseline).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RankingReport {
    /// Which ranking: `unmasked` or `masked` (see [`ProtocolVariant`]), or another label.
    pub variant: String,
    /// Users counted (the denominator of every average).
    pub users: usize,
    /// Users whose target was not ranked (not a candidate, or excluded).
    pub misses: usize,
    /// Mean reciprocal rank over the full ranking (no cut-off).
    pub mrr: f64,
    /// HR and NDCG per cut-off, in the order the cut-offs were given.
    pub at_k: Vec<MetricsAtK>,
}

impl RankingReport {
    /// Averages the metrics over users, from each user's count of candidates ranked ahead of the target
    /// (`None` = miss). See the module documentation for the formulas.
    ///
    /// ```
    /// use dssm_retrieval::RankingReport;
    /// // Ranks 1 and 3 (1-based) and a miss, K = 2.
    /// let report = RankingReport::from_items_ahead("unmasked", &[Some(0), Some(2), None], &[2]);
    /// assert!((report.at_k[0].hit_rate - 1.0 / 3.0).abs() < 1e-12);
    /// assert!((report.mrr - (1.0 + 1.0 / 3.0) / 3.0).abs() < 1e-12);
    /// ```
    pub fn from_items_ahead(
        variant: impl Into<String>,
        items_ahead: &[Option<usize>],
        cutoffs: &[usize],
    ) -> Self {
        let users = items_ahead.len();
        let denominator = users.max(1) as f64;
        let mut hits = vec![0usize; cutoffs.len()];
        let mut dcg = vec![0f64; cutoffs.len()];
        let mut reciprocal = 0f64;
        let mut misses = 0;
        for ahead in items_ahead {
            let Some(ahead) = *ahead else {
                misses += 1;
                continue;
            };
            let rank = ahead + 1;
            reciprocal += 1.0 / rank as f64;
            let gain = 1.0 / ((rank + 1) as f64).log2();
            for (i, &k) in cutoffs.iter().enumerate() {
                if rank <= k {
                    hits[i] += 1;
                    dcg[i] += gain;
                }
            }
        }
        Self {
            variant: variant.into(),
            users,
            misses,
            mrr: reciprocal / denominator,
            at_k: cutoffs
                .iter()
                .zip(hits.iter().zip(&dcg))
                .map(|(&k, (&h, &d))| MetricsAtK {
                    k,
                    hit_rate: h as f64 / denominator,
                    ndcg: d / denominator,
                })
                .collect(),
        }
    }

    /// The metrics at cut-off `k`, if it was computed.
    pub fn at(&self, k: usize) -> Option<&MetricsAtK> {
        self.at_k.iter().find(|m| m.k == k)
    }
}

/// The variants of the `leave-last-out` protocol: which items each user's ranking leaves out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProtocolVariant {
    /// The user's train items stay in the ranking (DeepMatch, torch-rechub).
    Unmasked,
    /// The user's train items are removed before ranking. At test time the validation item stays
    /// in the ranking (PROTOCOLS.md).
    Masked,
    /// Every item the user saw before the held-out one is removed: the train items and, at test
    /// time, the validation item (the query's whole history), as SASRec and HSTU
    /// (generative-recommenders) and RecBole's full-sort test rank. On the validation split it is
    /// `Masked`.
    #[serde(rename = "masked_all")]
    MaskedAll,
}

impl ProtocolVariant {
    /// Every variant, unmasked first.
    pub const ALL: [ProtocolVariant; 3] = [
        ProtocolVariant::Unmasked,
        ProtocolVariant::Masked,
        ProtocolVariant::MaskedAll,
    ];

    /// The name used in reports: `unmasked`, `masked` or `masked_all`.
    pub fn name(self) -> &'static str {
        match self {
            ProtocolVariant::Unmasked => "unmasked",
            ProtocolVariant::Masked => "masked",
            ProtocolVariant::MaskedAll => "masked_all",
        }
    }

    /// The exclusions this variant applies: none, the train items, or the whole history.
    pub fn exclusions(self, seen: &SeenItems) -> Option<&Exclusions> {
        match self {
            ProtocolVariant::Unmasked => None,
            ProtocolVariant::Masked => Some(&seen.train),
            ProtocolVariant::MaskedAll => Some(seen.history()),
        }
    }
}

/// What each held-out user saw before the held-out item, one row per user: the train items, and
/// the whole history (the train items plus the items held out before this split: the validation
/// item at test time). The [`ProtocolVariant`]s remove one or the other.
///
/// ```
/// use dssm_retrieval::{Exclusions, ProtocolVariant, SeenItems};
/// let train = Exclusions::from_rows([vec![3, 5], vec![4]]);
/// // Test time: user 0's validation item was 8; user 1 had none.
/// let validation = Exclusions::from_rows([vec![8], vec![]]);
/// let seen = SeenItems::train_only(train).with_earlier(&validation)?;
/// let all = ProtocolVariant::MaskedAll.exclusions(&seen).unwrap();
/// assert_eq!((all.row(0), all.row(1)), (&[3, 5, 8][..], &[4][..]));
/// assert_eq!(ProtocolVariant::Masked.exclusions(&seen).unwrap().row(0), &[3, 5]);
/// # Ok::<(), dssm_retrieval::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SeenItems {
    train: Exclusions,
    /// `None`: nothing was held out before this split, the history is the train items.
    history: Option<Exclusions>,
}

impl SeenItems {
    /// The validation split's: nothing held out before it, the history is the train items.
    pub fn train_only(train: Exclusions) -> Self {
        Self {
            train,
            history: None,
        }
    }

    /// The test split's: `earlier.row(i)` (the items held out for validation) appended to row
    /// `i`'s history. `earlier` has one row per row.
    pub fn with_earlier(self, earlier: &Exclusions) -> Result<Self> {
        if earlier.rows() != self.rows() {
            return Err(Error::ExclusionRows {
                exclusions: earlier.rows(),
                expected: self.rows(),
            });
        }
        let before = self.history();
        let history = Exclusions::from_rows(
            (0..self.rows()).map(|i| [before.row(i), earlier.row(i)].concat()),
        );
        Ok(Self {
            train: self.train,
            history: Some(history),
        })
    }

    /// Number of rows (held-out users).
    pub fn rows(&self) -> usize {
        self.train.rows()
    }

    /// The train items of each row.
    pub fn train(&self) -> &Exclusions {
        &self.train
    }

    /// Each row's whole history before its held-out item.
    pub fn history(&self) -> &Exclusions {
        self.history.as_ref().unwrap_or(&self.train)
    }
}

/// The popularity baseline: every user gets the same ranking, by train interaction count (descending),
/// equal counts by the lower item id.
///
/// ```
/// use dssm_retrieval::{Exclusions, PopularityBaseline, ProtocolVariant, SeenItems};
/// // Items 1..=4; item 3 seen 3 times, items 1 and 2 twice, item 4 never.
/// let pop = PopularityBaseline::new(&[1, 2, 3, 4], [3, 3, 3, 1, 2, 1, 2]);
/// assert_eq!(pop.ranking(), vec![3, 1, 2, 4]);
/// assert_eq!(pop.items_ahead(2, &[]), Some(2));
/// assert_eq!(pop.items_ahead(2, &[3]), Some(1));
/// let train = SeenItems::train_only(Exclusions::from_rows([vec![3]]));
/// let report = pop.evaluate(&[2], ProtocolVariant::Masked, &train, &[1, 2])?;
/// assert_eq!(report.at(2).unwrap().hit_rate, 1.0);
/// # Ok::<(), dssm_retrieval::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct PopularityBaseline {
    ids: Vec<u32>,
    counts: Vec<u64>,
    /// Position of each item (by catalogue position) in the popularity ranking.
    rank: Vec<usize>,
}

impl PopularityBaseline {
    /// Counts `train_interactions` (one item id per interaction) over the candidate `catalogue`;
    /// interactions with ids outside the catalogue are ignored, repeated catalogue ids count once.
    pub fn new(catalogue: &[u32], train_interactions: impl IntoIterator<Item = u32>) -> Self {
        let mut ids = catalogue.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let mut counts = vec![0u64; ids.len()];
        for id in train_interactions {
            if let Ok(p) = ids.binary_search(&id) {
                counts[p] += 1;
            }
        }
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by(|&a, &b| counts[b].cmp(&counts[a]).then(a.cmp(&b)));
        let mut rank = vec![0; ids.len()];
        for (r, &p) in order.iter().enumerate() {
            rank[p] = r;
        }
        Self { ids, counts, rank }
    }

    /// The catalogue ids (sorted) and their train counts.
    pub fn counts(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.ids.iter().copied().zip(self.counts.iter().copied())
    }

    /// Every catalogue id, most popular first.
    pub fn ranking(&self) -> Vec<u32> {
        let mut out = vec![0; self.ids.len()];
        for (p, &r) in self.rank.iter().enumerate() {
            out[r] = self.ids[p];
        }
        out
    }

    /// Candidates ranked ahead of `target` once the ids in `excluded` are removed; `None` when the
    /// target is not in the catalogue or is excluded. O(|excluded| log n).
    pub fn items_ahead(&self, target: u32, excluded: &[u32]) -> Option<usize> {
        let t = self.ids.binary_search(&target).ok()?;
        if excluded.contains(&target) {
            return None;
        }
        let mut excluded_ahead: Vec<usize> = excluded
            .iter()
            .filter_map(|id| self.ids.binary_search(id).ok())
            .filter(|&p| self.rank[p] < self.rank[t])
            .collect();
        excluded_ahead.sort_unstable();
        excluded_ahead.dedup();
        Some(self.rank[t] - excluded_ahead.len())
    }

    /// The report of this baseline under `variant`, one target per user; `seen` has one row per
    /// user (used by the masked variants).
    pub fn evaluate(
        &self,
        targets: &[u32],
        variant: ProtocolVariant,
        seen: &SeenItems,
        cutoffs: &[usize],
    ) -> Result<RankingReport> {
        if seen.rows() != targets.len() {
            return Err(Error::ExclusionRows {
                exclusions: seen.rows(),
                expected: targets.len(),
            });
        }
        let exclusions = variant.exclusions(seen);
        let ahead: Vec<Option<usize>> = targets
            .par_iter()
            .enumerate()
            .map(|(u, &t)| self.items_ahead(t, exclusions.map_or(&[][..], |e| e.row(u))))
            .collect();
        Ok(RankingReport::from_items_ahead(
            variant.name(),
            &ahead,
            cutoffs,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_match_hand_computed_values() {
        // 1-based ranks 1, 3 and a miss; K = 2 and K = 10.
        let r = RankingReport::from_items_ahead("x", &[Some(0), Some(2), None], &[2, 10]);
        assert_eq!(r.users, 3);
        assert_eq!(r.misses, 1);
        // HR@2: only rank 1 -> 1/3. HR@10: ranks 1 and 3 -> 2/3.
        assert!((r.at(2).unwrap().hit_rate - 0.333_333_333_333_333_3).abs() < 1e-12);
        assert!((r.at(10).unwrap().hit_rate - 0.666_666_666_666_666_6).abs() < 1e-12);
        // NDCG@2: (1/log2(2)) / 3 = 1/3. NDCG@10: (1 + 1/log2(4)) / 3 = 1.5 / 3 = 0.5.
        assert!((r.at(2).unwrap().ndcg - 0.333_333_333_333_333_3).abs() < 1e-12);
        assert!((r.at(10).unwrap().ndcg - 0.5).abs() < 1e-12);
        // MRR: (1 + 1/3 + 0) / 3 = 4/9.
        assert!((r.mrr - 0.444_444_444_444_444_4).abs() < 1e-12);
        // Rank 2 alone: NDCG@2 = 1/log2(3) = 0.6309297535714574.
        let r = RankingReport::from_items_ahead("x", &[Some(1)], &[2]);
        assert!((r.at(2).unwrap().ndcg - 0.630_929_753_571_457_4).abs() < 1e-12);
        assert!((r.mrr - 0.5).abs() < 1e-12);
        // No users: zeros, not NaN.
        let r = RankingReport::from_items_ahead("x", &[], &PROTOCOL_CUTOFFS);
        assert_eq!(r.mrr, 0.0);
        assert_eq!(r.at(100).unwrap().ndcg, 0.0);
    }

    #[test]
    fn report_round_trips_through_json() {
        let r = RankingReport::from_items_ahead("masked", &[Some(4), None], &PROTOCOL_CUTOFFS);
        let json = serde_json::to_string(&r).unwrap();
        let back: RankingReport = serde_json::from_str(&json).unwrap();
        // serde_json's default float parsing may differ in the last bit.
        assert_eq!(
            (back.variant.as_str(), back.users, back.misses),
            ("masked", 2, 1)
        );
        assert_eq!(back.at_k.len(), 4);
        for (a, b) in back.at_k.iter().zip(&r.at_k) {
            assert_eq!(a.k, b.k);
            assert!((a.ndcg - b.ndcg).abs() < 1e-15 && (a.hit_rate - b.hit_rate).abs() < 1e-15);
        }
        assert!(json.contains("\"hit_rate\":0.5"));
        assert_eq!(
            serde_json::to_string(&ProtocolVariant::Masked).unwrap(),
            "\"masked\""
        );
        let all: ProtocolVariant = serde_json::from_str("\"masked_all\"").unwrap();
        assert_eq!(all, ProtocolVariant::MaskedAll);
    }

    #[test]
    fn rank_of_target_agrees_with_sorted_position() {
        // Deliberate ties: scores take few distinct values.
        let mut state = 12345u64;
        for trial in 0..50 {
            let n = 1 + trial * 7;
            let scores: Vec<f32> = (0..n)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((state >> 33) % 5) as f32
                })
                .collect();
            let excluded: Vec<usize> = (0..n).filter(|i| i % 3 == 1).chain([1, n + 5]).collect();
            let mut order: Vec<usize> = (0..n).filter(|i| !excluded.contains(i)).collect();
            order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
            for target in 0..n {
                let expected = order.iter().position(|&p| p == target);
                assert_eq!(rank_of_target(&scores, target, &excluded), expected);
            }
            assert_eq!(rank_of_target(&scores, n, &[]), None);
        }
    }

    #[test]
    fn popularity_ranks_by_count_then_lower_id() {
        let pop = PopularityBaseline::new(&[7, 5, 9, 5], [9, 5, 9, 7, 42]);
        assert_eq!(pop.ranking(), vec![9, 5, 7]);
        assert_eq!(pop.items_ahead(7, &[]), Some(2));
        assert_eq!(pop.items_ahead(7, &[9, 9]), Some(1));
        assert_eq!(pop.items_ahead(7, &[7]), None);
        assert_eq!(pop.items_ahead(42, &[]), None);
        let train = SeenItems::train_only(Exclusions::from_rows([vec![9], vec![]]));
        let unmasked = pop
            .evaluate(&[7, 9], ProtocolVariant::Unmasked, &train, &[1, 3])
            .unwrap();
        // Ranks 3 and 1: HR@1 = 0.5, HR@3 = 1, MRR = (1/3 + 1) / 2.
        assert_eq!(unmasked.variant, "unmasked");
        assert_eq!(unmasked.at(1).unwrap().hit_rate, 0.5);
        assert_eq!(unmasked.at(3).unwrap().hit_rate, 1.0);
        assert!((unmasked.mrr - 2.0 / 3.0).abs() < 1e-12);
        let masked = pop
            .evaluate(&[7, 9], ProtocolVariant::Masked, &train, &[1, 3])
            .unwrap();
        // User 0 loses item 9 ahead: rank 2.
        assert!((masked.mrr - 0.75).abs() < 1e-12);
        // At test time user 1's validation item 5 sits ahead of its target 7: only `masked_all`
        // removes it.
        let train_rows = || Exclusions::from_rows([vec![9], vec![]]);
        let validation = Exclusions::from_rows([vec![], vec![5]]);
        let seen = SeenItems::train_only(train_rows());
        let seen = seen.with_earlier(&validation).unwrap();
        let short = Exclusions::from_rows([vec![5]]);
        assert!(
            SeenItems::train_only(train_rows())
                .with_earlier(&short)
                .is_err()
        );
        let ranks = |variant| {
            let report = pop.evaluate(&[7, 7], variant, &seen, &[1, 3]).unwrap();
            assert_eq!(report.variant, variant.name());
            report.mrr
        };
        assert!((ranks(ProtocolVariant::Masked) - (1.0 / 2.0 + 1.0 / 3.0) / 2.0).abs() < 1e-12);
        assert!((ranks(ProtocolVariant::MaskedAll) - (1.0 / 2.0 + 1.0 / 2.0) / 2.0).abs() < 1e-12);
        assert!(
            pop.evaluate(&[7], ProtocolVariant::Masked, &train, &[1])
                .is_err()
        );
    }
}
