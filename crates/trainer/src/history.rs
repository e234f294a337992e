//! The optional `history` user feature (`features.history_len`, `leave-last-out` only): the
//! items a user interacted with just before the interaction being scored, at most `history_len`
//! of them, mean-pooled through the feature's own item embedding table; and the optional `recent`
//! feature (`features.recent_len`): the first `recent_len` of those, through a table of its own.
//!
//! Ids are item rows + 1 (0 is padding). A user's interactions are ordered by (timestamp, line
//! in the ratings file), a rating without a timestamp first, as the split does.
//! - A train interaction sees the train items before it (never itself or a later one).
//! - A validation query sees the user's last train items.
//! - A test query sees the validation item and the last train items before it.

/// The name of the feature in the model config.
pub(crate) const HISTORY_FEATURE: &str = "history";
/// The name of the feature of the most recent history items (`features.recent_len`).
pub(crate) const RECENT_FEATURE: &str = "recent";

/// One split's interactions with their time order.
pub(crate) struct TimedRows<'a> {
    pub(crate) users: &'a [u32],
    pub(crate) items: &'a [u32],
    pub(crate) timestamps: &'a [Option<i64>],
    pub(crate) lines: &'a [u32],
}

/// The rows' indices by (user, timestamp, line), a row without a timestamp first: each user's
/// interactions in the order the split saw them.
pub(crate) fn time_order(rows: &TimedRows<'_>) -> Vec<usize> {
    let mut order: Vec<usize> = (0..rows.users.len()).collect();
    order.sort_unstable_by_key(|&r| {
        let t = rows.timestamps[r];
        (rows.users[r], t.is_some(), t, rows.lines[r])
    });
    order
}

/// Histories of the train rows and of every user after their train rows.
pub(crate) struct Histories {
    /// `len` ids per train row (in the rows' order).
    pub(crate) train: Vec<u32>,
    /// `len` ids per user row: the user's last train items, most recent first.
    pub(crate) after_train: Vec<u32>,
    pub(crate) len: usize,
}

impl Histories {
    pub(crate) fn new(train: &TimedRows<'_>, n_users: usize, len: usize) -> Self {
        let n = train.users.len();
        let order = time_order(train);
        let mut history = vec![0u32; n * len];
        let mut after_train = vec![0u32; n_users * len];
        let mut start = 0;
        while start < n {
            let user = train.users[order[start]];
            let mut end = start;
            while end < n && train.users[order[end]] == user {
                end += 1;
            }
            let sequence = &order[start..end];
            for (p, &row) in sequence.iter().enumerate() {
                let slots = &mut history[row * len..(row + 1) * len];
                for (slot, &before) in slots.iter_mut().zip(sequence[..p].iter().rev()) {
                    *slot = train.items[before] + 1;
                }
            }
            let slots = &mut after_train[user as usize * len..(user as usize + 1) * len];
            for (slot, &row) in slots.iter_mut().zip(sequence.iter().rev()) {
                *slot = train.items[row] + 1;
            }
            start = end;
        }
        Self {
            train: history,
            after_train,
            len,
        }
    }

    /// Histories of queries by `users`: the user's last train items, after `newer[i]` (the
    /// validation item, for test queries) when given.
    pub(crate) fn queries(&self, users: &[u32], newer: Option<&[Option<u32>]>) -> Vec<u32> {
        let len = self.len;
        let mut out = vec![0u32; users.len() * len];
        for (q, &user) in users.iter().enumerate() {
            let known = &self.after_train[user as usize * len..(user as usize + 1) * len];
            let slots = &mut out[q * len..(q + 1) * len];
            match newer.and_then(|n| n[q]) {
                Some(item) => {
                    slots[0] = item + 1;
                    slots[1..].copy_from_slice(&known[..len - 1]);
                }
                None => slots.copy_from_slice(known),
            }
        }
        out
    }
}

/// For each of `users`, its item in a split with one row per user (`None` when absent).
pub(crate) fn item_of_users(
    users: &[u32],
    split_users: &[u32],
    split_items: &[u32],
) -> Vec<Option<u32>> {
    let mut by_user = std::collections::HashMap::with_capacity(split_users.len());
    for (&u, &i) in split_users.iter().zip(split_items) {
        by_user.insert(u, i);
    }
    users.iter().map(|u| by_user.get(u).copied()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histories_see_only_earlier_items() {
        // User 0: items 5 (t=3), 6 (t=1), 7 (no timestamp, oldest). User 1: item 2.
        let rows = TimedRows {
            users: &[0, 0, 1, 0],
            items: &[5, 6, 2, 7],
            timestamps: &[Some(3), Some(1), Some(9), None],
            lines: &[1, 2, 3, 4],
        };
        let h = Histories::new(&rows, 3, 2);
        // Order of user 0: 7, 6, 5. Ids are item + 1, most recent first.
        assert_eq!(&h.train[0..2], &[7, 8]); // item 5 sees 6, 7
        assert_eq!(&h.train[2..4], &[8, 0]); // item 6 sees 7
        assert_eq!(&h.train[4..6], &[0, 0]); // user 1's first item
        assert_eq!(&h.train[6..8], &[0, 0]); // item 7 is first
        assert_eq!(&h.after_train[0..2], &[6, 7]);
        assert_eq!(&h.after_train[2..4], &[3, 0]);
        assert_eq!(&h.after_train[4..6], &[0, 0]);
        let q = h.queries(&[1, 0], Some(&[Some(9), None]));
        assert_eq!(q, vec![10, 3, 6, 7]);
        assert_eq!(
            item_of_users(&[1, 2], &[2, 1], &[4, 9]),
            vec![Some(9), Some(4)]
        );
    }
}
