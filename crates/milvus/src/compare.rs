//! Comparing a server's top-K with the exact top-K, allowing for ties.

use crate::client::Hit;

/// How a found top-K list compares with the exact one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agreement {
    /// The same ids in the same order.
    Identical,
    /// Not the same ids or order, but position by position the same scores (within the tolerance):
    /// the lists differ only by how items of equal score are ordered, or which of several items tied
    /// at the K-th score made the cut.
    TieEquivalent,
    /// A different list: some position has a different score, a list is shorter, or an id repeats.
    Different,
}

/// Compares `found` with `exact` (both best first). Scores are compared position by position with
/// an absolute `tolerance`.
///
/// The scores of `found` should be recomputed by the caller from the same vectors `exact` was
/// computed from (the inner product of the query and each found id's vector), so that the comparison
/// does not depend on how the server rounds or sums.
///
/// ```
/// use dssm_milvus::{Agreement, Hit, compare_top_k};
/// let exact = [Hit { id: 1, score: 0.9 }, Hit { id: 2, score: 0.5 }, Hit { id: 3, score: 0.5 }];
/// let swapped = [exact[0], exact[2], exact[1]];
/// let other = [exact[0], exact[1], Hit { id: 9, score: 0.1 }];
/// assert_eq!(compare_top_k(&exact, &exact, 1e-6), Agreement::Identical);
/// assert_eq!(compare_top_k(&exact, &swapped, 1e-6), Agreement::TieEquivalent);
/// assert_eq!(compare_top_k(&exact, &other, 1e-6), Agreement::Different);
/// ```
pub fn compare_top_k(exact: &[Hit], found: &[Hit], tolerance: f32) -> Agreement {
    if exact.len() != found.len() {
        return Agreement::Different;
    }
    if exact.iter().zip(found).all(|(a, b)| a.id == b.id) {
        return Agreement::Identical;
    }
    let mut ids: Vec<i64> = found.iter().map(|h| h.id).collect();
    ids.sort_unstable();
    if ids.windows(2).any(|w| w[0] == w[1]) {
        return Agreement::Different;
    }
    let same_scores = exact
        .iter()
        .zip(found)
        .all(|(a, b)| (a.score - b.score).abs() <= tolerance);
    if same_scores {
        Agreement::TieEquivalent
    } else {
        Agreement::Different
    }
}

/// Counts of [`Agreement`]s over many queries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AgreementCounts {
    /// Lists with the same ids in the same order.
    pub identical: usize,
    /// Lists equal up to ties.
    pub tie_equivalent: usize,
    /// Lists that differ.
    pub different: usize,
}

impl AgreementCounts {
    /// Counts one more comparison.
    pub fn add(&mut self, agreement: Agreement) {
        match agreement {
            Agreement::Identical => self.identical += 1,
            Agreement::TieEquivalent => self.tie_equivalent += 1,
            Agreement::Different => self.different += 1,
        }
    }

    /// All comparisons counted.
    pub fn total(&self) -> usize {
        self.identical + self.tie_equivalent + self.different
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hits(list: &[(i64, f32)]) -> Vec<Hit> {
        list.iter().map(|&(id, score)| Hit { id, score }).collect()
    }

    #[test]
    fn ties_at_the_cut_are_equivalent_and_real_differences_are_not() {
        let exact = hits(&[(4, 0.9), (2, 0.7), (7, 0.7)]);
        // Another of the items tied at the K-th score made the cut.
        let cut = hits(&[(4, 0.9), (2, 0.7), (8, 0.7)]);
        assert_eq!(compare_top_k(&exact, &cut, 1e-6), Agreement::TieEquivalent);
        // Within the tolerance.
        let close = hits(&[(4, 0.9), (7, 0.700_000_5), (2, 0.7)]);
        assert_eq!(
            compare_top_k(&exact, &close, 1e-6),
            Agreement::TieEquivalent
        );
        assert_eq!(compare_top_k(&exact, &close, 1e-9), Agreement::Different);
        // A missing hit, a repeated id, a lower score.
        assert_eq!(
            compare_top_k(&exact, &exact[..2], 1e-6),
            Agreement::Different
        );
        let repeated = hits(&[(4, 0.9), (2, 0.7), (2, 0.7)]);
        assert_eq!(compare_top_k(&exact, &repeated, 1e-6), Agreement::Different);
        let worse = hits(&[(4, 0.9), (2, 0.7), (5, 0.6)]);
        assert_eq!(compare_top_k(&exact, &worse, 1e-6), Agreement::Different);

        let mut counts = AgreementCounts::default();
        for a in [
            Agreement::Identical,
            Agreement::TieEquivalent,
            Agreement::Different,
            Agreement::Identical,
        ] {
            counts.add(a);
        }
        assert_eq!(
            counts,
            AgreementCounts {
                identical: 2,
                tie_equivalent: 1,
                different: 1
            }
        );
        assert_eq!(counts.total(), 4);
    }
}
