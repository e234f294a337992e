//! Per-user positive sets: a borrowed sorted list ([`Positives`]) and a CSR store ([`UserItems`]).

use crate::SamplerError;

/// Marks a user without a bitset in [`UserItems::bitset_starts`].
const NO_BITSET: usize = usize::MAX;

/// A user's positive items: a strictly increasing list of item ids, optionally with a bitset.
///
/// Membership ([`contains`](Positives::contains)) is a bit test when a bitset is attached (as
/// [`UserItems`] does for users with many positives) and a binary search otherwise. The sorted
/// order is checked once by [`Positives::new`], so the samplers never see unsorted input.
#[derive(Clone, Copy, Debug)]
pub struct Positives<'a> {
    items: &'a [u32],
    bits: Option<&'a [u64]>,
}

impl<'a> Positives<'a> {
    /// Wraps a list of item ids after checking it is strictly increasing (sorted, no duplicates).
    ///
    /// ```
    /// use dssm_sampler::Positives;
    ///
    /// let positives = Positives::new(&[2, 5, 9]).unwrap();
    /// assert!(positives.contains(5) && !positives.contains(4));
    /// assert!(Positives::new(&[5, 2]).is_err());
    /// ```
    pub fn new(items: &'a [u32]) -> Result<Self, SamplerError> {
        check_strictly_increasing(items, 0)?;
        Ok(Positives { items, bits: None })
    }

    /// No positives: excluding them excludes nothing.
    pub const fn empty() -> Self {
        Positives {
            items: &[],
            bits: None,
        }
    }

    /// The item ids, in increasing order.
    pub fn items(&self) -> &'a [u32] {
        self.items
    }

    /// Number of positives.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether there are no positives.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Whether `item` is one of the positives.
    #[inline]
    pub fn contains(&self, item: u32) -> bool {
        match self.bits {
            Some(bits) => bits
                .get((item >> 6) as usize)
                .is_some_and(|word| (word >> (item & 63)) & 1 == 1),
            None => self.items.binary_search(&item).is_ok(),
        }
    }
}

/// The positive items of every user, CSR-style: user `u`'s items are
/// `items[offsets[u]..offsets[u + 1]]`, strictly increasing.
///
/// Users with at least `num_items / 64` positives also get a bitset (`num_items / 8` bytes each,
/// at most twice the bytes of their item list), so that membership is one bit test for the users
/// where a binary search would be longest; the others use a binary search.
///
/// ```
/// use dssm_sampler::UserItems;
///
/// // (user, item) pairs, in any order; duplicates are kept once.
/// let pairs = [(1, 4), (0, 2), (1, 0), (0, 2)];
/// let user_items = UserItems::from_pairs(2, 5, &pairs).unwrap();
/// assert_eq!(user_items.get(0).unwrap().items(), &[2]);
/// assert_eq!(user_items.get(1).unwrap().items(), &[0, 4]);
/// assert!(user_items.get(2).is_none());
/// ```
#[derive(Clone, Debug)]
pub struct UserItems {
    num_items: usize,
    offsets: Vec<usize>,
    items: Vec<u32>,
    /// Per user, the first word of its bitset in `bits`, or `NO_BITSET`.
    bitset_starts: Vec<usize>,
    bits: Vec<u64>,
}

impl UserItems {
    /// Builds the store from `(user, item)` pairs (any order; duplicate pairs are kept once).
    ///
    /// Errors with [`SamplerError::UserOutOfRange`] or [`SamplerError::ItemOutOfRange`] (with the
    /// pair's position) when an id is outside `0..num_users` or `0..num_items`.
    pub fn from_pairs(
        num_users: usize,
        num_items: usize,
        pairs: &[(u32, u32)],
    ) -> Result<Self, SamplerError> {
        // Counting sort by user.
        let mut offsets = vec![0usize; num_users + 1];
        for (position, &(user, item)) in pairs.iter().enumerate() {
            if user as usize >= num_users {
                return Err(SamplerError::UserOutOfRange {
                    position,
                    user,
                    num_users,
                });
            }
            if item as usize >= num_items {
                return Err(SamplerError::ItemOutOfRange {
                    position,
                    item,
                    num_items,
                });
            }
            offsets[user as usize + 1] += 1;
        }
        for u in 0..num_users {
            offsets[u + 1] += offsets[u];
        }
        let mut cursor = offsets.clone();
        let mut items = vec![0u32; pairs.len()];
        for &(user, item) in pairs {
            items[cursor[user as usize]] = item;
            cursor[user as usize] += 1;
        }
        // Sort and deduplicate each user's list, compacting in place.
        let mut write = 0;
        let mut new_offsets = Vec::with_capacity(num_users + 1);
        new_offsets.push(0);
        for u in 0..num_users {
            let (start, end) = (offsets[u], offsets[u + 1]);
            items[start..end].sort_unstable();
            let mut previous = None;
            for read in start..end {
                let item = items[read];
                if previous != Some(item) {
                    items[write] = item;
                    write += 1;
                    previous = Some(item);
                }
            }
            new_offsets.push(write);
        }
        items.truncate(write);
        Ok(Self::with_bitsets(num_items, new_offsets, items))
    }

    /// Builds the store from ready CSR arrays, checking them: `offsets` starts at 0, never
    /// decreases and ends at `items.len()`; each user's items are strictly increasing and below
    /// `num_items`.
    pub fn from_csr(
        num_items: usize,
        offsets: Vec<usize>,
        items: Vec<u32>,
    ) -> Result<Self, SamplerError> {
        if offsets.first() != Some(&0) {
            return Err(SamplerError::InvalidOffsets {
                index: 0,
                expected: "offsets to start with 0",
            });
        }
        for (index, pair) in offsets.windows(2).enumerate() {
            if pair[1] < pair[0] {
                return Err(SamplerError::InvalidOffsets {
                    index: index + 1,
                    expected: "offsets that never decrease",
                });
            }
        }
        if offsets.last() != Some(&items.len()) {
            return Err(SamplerError::InvalidOffsets {
                index: offsets.len() - 1,
                expected: "the last offset to equal the number of items",
            });
        }
        for pair in offsets.windows(2) {
            check_strictly_increasing(&items[pair[0]..pair[1]], pair[0])?;
        }
        if let Some(position) = items.iter().position(|&item| item as usize >= num_items) {
            return Err(SamplerError::ItemOutOfRange {
                position,
                item: items[position],
                num_items,
            });
        }
        Ok(Self::with_bitsets(num_items, offsets, items))
    }

    fn with_bitsets(num_items: usize, offsets: Vec<usize>, items: Vec<u32>) -> Self {
        let words_per_user = num_items.div_ceil(64);
        let num_users = offsets.len() - 1;
        let mut bitset_starts = vec![NO_BITSET; num_users];
        let mut bits = Vec::new();
        for (u, start) in bitset_starts.iter_mut().enumerate() {
            let user_items = &items[offsets[u]..offsets[u + 1]];
            if !user_items.is_empty() && user_items.len() * 64 >= num_items {
                *start = bits.len();
                bits.resize(bits.len() + words_per_user, 0);
                let words = &mut bits[*start..];
                for &item in user_items {
                    words[(item >> 6) as usize] |= 1 << (item & 63);
                }
            }
        }
        UserItems {
            num_items,
            offsets,
            items,
            bitset_starts,
            bits,
        }
    }

    /// The positives of `user`, or `None` when `user >= num_users()`.
    #[inline]
    pub fn get(&self, user: u32) -> Option<Positives<'_>> {
        let u = user as usize;
        let start = *self.offsets.get(u)?;
        let end = *self.offsets.get(u + 1)?;
        let bits = match self.bitset_starts[u] {
            NO_BITSET => None,
            first => Some(&self.bits[first..first + self.num_items.div_ceil(64)]),
        };
        Some(Positives {
            items: &self.items[start..end],
            bits,
        })
    }

    /// Number of users.
    pub fn num_users(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Size of the catalogue the items belong to.
    pub fn num_items(&self) -> usize {
        self.num_items
    }

    /// Number of distinct (user, item) pairs.
    pub fn num_pairs(&self) -> usize {
        self.items.len()
    }

    /// The CSR offsets (`num_users() + 1` entries).
    pub fn offsets(&self) -> &[usize] {
        &self.offsets
    }

    /// All users' items, concatenated in user order.
    pub fn items(&self) -> &[u32] {
        &self.items
    }
}

/// Checks that `items` is strictly increasing; `base` is added to positions in the error.
fn check_strictly_increasing(items: &[u32], base: usize) -> Result<(), SamplerError> {
    match items.windows(2).position(|pair| pair[1] <= pair[0]) {
        Some(index) => Err(SamplerError::UnsortedPositives {
            position: base + index + 1,
            previous: items[index],
            item: items[index + 1],
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_pairs_sorts_and_deduplicates() {
        let pairs = [(2, 3), (0, 1), (2, 0), (2, 3), (0, 0)];
        let ui = UserItems::from_pairs(3, 4, &pairs).unwrap();
        assert_eq!(ui.offsets(), &[0, 2, 2, 4]);
        assert_eq!(ui.items(), &[0, 1, 0, 3]);
        assert_eq!(ui.num_pairs(), 4);
        assert!(ui.get(1).unwrap().is_empty());
    }

    #[test]
    fn from_pairs_rejects_out_of_range_ids() {
        assert_eq!(
            UserItems::from_pairs(2, 4, &[(0, 1), (2, 1)]).unwrap_err(),
            SamplerError::UserOutOfRange {
                position: 1,
                user: 2,
                num_users: 2
            }
        );
        assert_eq!(
            UserItems::from_pairs(2, 4, &[(0, 4)]).unwrap_err(),
            SamplerError::ItemOutOfRange {
                position: 0,
                item: 4,
                num_items: 4
            }
        );
    }

    #[test]
    fn from_csr_checks_its_input() {
        assert!(UserItems::from_csr(5, vec![0, 2, 3], vec![1, 4, 0]).is_ok());
        assert!(matches!(
            UserItems::from_csr(5, vec![1, 3], vec![1, 4, 0]),
            Err(SamplerError::InvalidOffsets { index: 0, .. })
        ));
        assert!(matches!(
            UserItems::from_csr(5, vec![0, 2, 1, 3], vec![1, 4, 0]),
            Err(SamplerError::InvalidOffsets { index: 2, .. })
        ));
        assert!(matches!(
            UserItems::from_csr(5, vec![0, 2], vec![1, 4, 0]),
            Err(SamplerError::InvalidOffsets { index: 1, .. })
        ));
        assert_eq!(
            UserItems::from_csr(5, vec![0, 3], vec![1, 4, 4]).unwrap_err(),
            SamplerError::UnsortedPositives {
                position: 2,
                previous: 4,
                item: 4
            }
        );
        assert!(matches!(
            UserItems::from_csr(4, vec![0, 2], vec![1, 4]),
            Err(SamplerError::ItemOutOfRange { position: 1, .. })
        ));
    }

    #[test]
    fn bitset_and_binary_search_agree() {
        // 200 items: users with >= 4 positives get a bitset.
        let num_items = 200;
        let mut pairs = Vec::new();
        for item in (0..num_items).step_by(3) {
            pairs.push((0, item));
        }
        pairs.push((1, 7));
        let ui = UserItems::from_pairs(2, num_items as usize, &pairs).unwrap();
        let dense = ui.get(0).unwrap();
        let sparse = ui.get(1).unwrap();
        assert!(dense.bits.is_some());
        assert!(sparse.bits.is_none());
        let plain = Positives::new(dense.items()).unwrap();
        for item in 0..num_items + 70 {
            assert_eq!(dense.contains(item), item < num_items && item % 3 == 0);
            assert_eq!(plain.contains(item), dense.contains(item));
            assert_eq!(sparse.contains(item), item == 7);
        }
    }

    #[test]
    fn positives_new_reports_the_unsorted_position() {
        assert_eq!(
            Positives::new(&[1, 5, 3]).unwrap_err(),
            SamplerError::UnsortedPositives {
                position: 2,
                previous: 5,
                item: 3
            }
        );
        assert!(Positives::empty().is_empty());
    }
}
