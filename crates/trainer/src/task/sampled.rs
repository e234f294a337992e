//! The sampled next-item softmax of the sequence task (`loss.kind = "in_batch_softmax"`): each
//! position's softmax runs over the batch's target items and `loss.shared_negatives` items drawn
//! from the sampler, each item once, instead of the whole catalogue; only those items and the
//! batch's input items go through the item tower. What catalogues too large for a full softmax
//! per step train with (with `loss.logq_correction`, a column's q is its expected count).

/// Item rows a step needs, each once, sorted: positions in this list are the step's local rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LocalItems {
    rows: Vec<u32>,
}

impl LocalItems {
    /// The distinct rows of `rows`.
    pub(crate) fn new(rows: impl IntoIterator<Item = u32>) -> Self {
        let mut rows: Vec<u32> = rows.into_iter().collect();
        rows.sort_unstable();
        rows.dedup();
        Self { rows }
    }

    /// The item rows, ascending.
    pub(crate) fn rows(&self) -> &[u32] {
        &self.rows
    }

    /// The local index of item row `row`, which must be one of [`LocalItems::rows`].
    pub(crate) fn local(&self, row: u32) -> u32 {
        self.rows
            .binary_search(&row)
            .expect("an item row of the step's items") as u32
    }

    /// Sequence ids (item row + 1, 0 = padding) as ids into the local token table.
    pub(crate) fn remap_ids(&self, ids: &[u32]) -> Vec<u32> {
        ids.iter()
            .map(|&id| if id == 0 { 0 } else { self.local(id - 1) + 1 })
            .collect()
    }
}

/// The softmax columns of a step: its target items and shared negatives, each once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SampledColumns {
    /// The columns' item rows.
    pub(crate) items: LocalItems,
    /// Each position's target as a column index.
    pub(crate) targets: Vec<u32>,
}

impl SampledColumns {
    /// The columns of positions with target item rows `targets`, plus `shared` negatives.
    pub(crate) fn new(targets: &[u32], shared: &[u32]) -> Self {
        let items = LocalItems::new(targets.iter().chain(shared).copied());
        let targets = targets.iter().map(|&t| items.local(t)).collect();
        Self { items, targets }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_hold_each_target_and_negative_once_and_targets_point_at_their_item() {
        let columns = SampledColumns::new(&[7, 3, 7, 9], &[3, 12, 0]);
        assert_eq!(columns.items.rows(), [0, 3, 7, 9, 12]);
        assert_eq!(columns.targets, [2, 1, 2, 3]);
        for (&t, &c) in [7u32, 3, 7, 9].iter().zip(&columns.targets) {
            assert_eq!(columns.items.rows()[c as usize], t);
        }
    }

    #[test]
    fn sequence_ids_map_to_the_local_token_table_and_padding_stays() {
        let items = LocalItems::new([40, 2, 17]);
        // Ids are item rows + 1: 3 is row 2 (local 0), 41 row 40 (local 2).
        assert_eq!(items.remap_ids(&[0, 0, 3, 41, 18]), [0, 0, 1, 3, 2]);
    }
}
