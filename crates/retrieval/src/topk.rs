//! The [`TopK`] interface and the bounded selection shared by the exact and HNSW indexes.

use crate::error::{Error, Result};
use crate::matrix::{Exclusions, MatrixView, ScoredItem};
use std::cmp::Ordering;

/// Checks a query batch against an index of `dim`-wide items: the same width, and one exclusion row
/// per query when exclusions are given.
pub(crate) fn check_queries(
    dim: usize,
    queries: MatrixView<'_>,
    exclusions: Option<&Exclusions>,
) -> Result<()> {
    if queries.dim() != dim {
        return Err(Error::DimMismatch {
            queries: queries.dim(),
            index: dim,
        });
    }
    match exclusions {
        Some(ex) if ex.rows() != queries.rows() => Err(Error::ExclusionRows {
            exclusions: ex.rows(),
            expected: queries.rows(),
        }),
        _ => Ok(()),
    }
}

/// A searchable catalogue of item embeddings, in the shape of TFRS's `TopK` layer.
///
/// Scores are inner products; L2-normalise both towers' outputs to get cosine similarity. Results are
/// ordered by descending score, equal scores by the lower item id.
pub trait TopK {
    /// The best `k` items for each row of `queries`, best first.
    ///
    /// `exclusions`, when given, has one row per query: those item ids never appear in that query's
    /// results (the user's already-seen items, say). When fewer than `k` items remain, all of them are
    /// returned, sorted.
    fn top_k(
        &self,
        queries: MatrixView<'_>,
        k: usize,
        exclusions: Option<&Exclusions>,
    ) -> Result<Vec<Vec<ScoredItem>>>;

    /// True when the results are the exact top `k`; false for approximate (graph) indexes.
    fn is_exact(&self) -> bool;

    /// Number of items in the catalogue.
    fn len(&self) -> usize;

    /// True when the catalogue is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Dimension of the item embeddings (and of the queries).
    fn dim(&self) -> usize;
}

/// The result order: descending score, then ascending id.
pub(crate) fn result_order(a: &ScoredItem, b: &ScoredItem) -> Ordering {
    b.score.total_cmp(&a.score).then(a.id.cmp(&b.id))
}

/// A candidate kept by [`BoundedTopK`], keyed by catalogue position.
#[derive(Clone, Copy, PartialEq)]
struct Candidate {
    score: f32,
    position: u32,
}

/// Best first: descending score, then ascending position.
fn candidate_order(a: &Candidate, b: &Candidate) -> Ordering {
    b.score
        .total_cmp(&a.score)
        .then(a.position.cmp(&b.position))
}

/// Keeps the best `k` of a stream of scores offered in ascending position order.
///
/// Candidates above the current threshold go into a buffer of up to `2k` entries; when it is full, a
/// partial selection (`select_nth_unstable_by`) keeps the best `k` and raises the threshold to the k-th
/// score. The threshold test runs over chunks with a vector max, so most of a row is skipped cheaply.
/// Because positions arrive in ascending order, a newcomer whose score equals the threshold is never
/// better than the k-th kept candidate (its position is higher), so the test is a plain `>`.
pub(crate) struct BoundedTopK {
    k: usize,
    capacity: usize,
    kept: Vec<Candidate>,
    /// Score of the k-th best after the latest selection; meaningful only once `selected` is set.
    threshold: f32,
    selected: bool,
}

impl BoundedTopK {
    pub(crate) fn new(k: usize) -> Self {
        let capacity = (2 * k).max(k + 64);
        Self {
            k,
            capacity,
            kept: Vec::with_capacity(capacity.min(1 << 16)),
            threshold: f32::NEG_INFINITY,
            selected: false,
        }
    }

    /// Offers `scores[j]` for position `first_position + j`, for every `j`.
    #[inline]
    pub(crate) fn offer(&mut self, scores: &[f32], first_position: u32) {
        const LANES: usize = 16;
        let mut start = 0;
        // Until the first selection every score is kept (there is no threshold yet).
        while !self.selected && start < scores.len() {
            let take = (self.capacity - self.kept.len()).min(scores.len() - start);
            self.kept.extend(
                scores[start..start + take]
                    .iter()
                    .enumerate()
                    .map(|(j, &score)| Candidate {
                        score,
                        position: first_position + (start + j) as u32,
                    }),
            );
            start += take;
            if self.kept.len() == self.capacity {
                self.select();
            }
        }
        let rest = &scores[start..];
        let mut chunks = rest.chunks_exact(LANES);
        let mut offset = start;
        for chunk in &mut chunks {
            let max = chunk
                .iter()
                .fold(f32::NEG_INFINITY, |m, &s| if s > m { s } else { m });
            if max > self.threshold {
                self.offer_each(chunk, first_position + offset as u32);
            }
            offset += LANES;
        }
        self.offer_each(chunks.remainder(), first_position + offset as u32);
    }

    fn offer_each(&mut self, scores: &[f32], first_position: u32) {
        for (j, &score) in scores.iter().enumerate() {
            if score > self.threshold {
                self.kept.push(Candidate {
                    score,
                    position: first_position + j as u32,
                });
                if self.kept.len() == self.capacity {
                    self.select();
                }
            }
        }
    }

    /// Keeps the best `k` and sets the threshold to the k-th score.
    fn select(&mut self) {
        if self.k == 0 {
            self.kept.clear();
            self.threshold = f32::INFINITY;
        } else {
            self.kept
                .select_nth_unstable_by(self.k - 1, candidate_order);
            self.kept.truncate(self.k);
            self.threshold = self.kept[self.k - 1].score;
        }
        self.selected = true;
    }

    /// The kept candidates as `(position, score)`, best first.
    pub(crate) fn into_sorted(mut self) -> impl Iterator<Item = (u32, f32)> {
        self.kept.sort_unstable_by(candidate_order);
        self.kept.truncate(self.k);
        self.kept.into_iter().map(|c| (c.position, c.score))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_top_k_keeps_best_with_lower_position_on_ties() {
        let mut top = BoundedTopK::new(3);
        let scores: Vec<f32> = (0..40).map(|i| (i % 7) as f32).collect();
        top.offer(&scores[..20], 0);
        top.offer(&scores[20..], 20);
        let got: Vec<(u32, f32)> = top.into_sorted().collect();
        // Score 6 is at positions 6, 13, 20, 27, 34.
        assert_eq!(got, vec![(6, 6.0), (13, 6.0), (20, 6.0)]);
        // Long streams go through several selections.
        let scores: Vec<f32> = (0..5000).map(|i| ((i * 7919) % 101) as f32).collect();
        let mut top = BoundedTopK::new(5);
        for (b, block) in scores.chunks(333).enumerate() {
            top.offer(block, (b * 333) as u32);
        }
        let mut all: Vec<(u32, f32)> = scores
            .iter()
            .enumerate()
            .map(|(i, &s)| (i as u32, s))
            .collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        assert_eq!(top.into_sorted().collect::<Vec<_>>(), all[..5].to_vec());
        let mut none = BoundedTopK::new(0);
        none.offer(&scores, 0);
        assert_eq!(none.into_sorted().count(), 0);
    }
}
