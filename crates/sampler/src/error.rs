//! The crate's error type.

/// Everything that can go wrong when building a sampler or drawing negatives.
///
/// Each variant carries the values needed to find the offending input (item, user, position).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SamplerError {
    /// The catalogue has no items, so there is nothing to draw.
    #[error("empty catalogue: a sampler needs at least one item")]
    EmptyCatalogue,

    /// The catalogue has more items than a `u32` id can name.
    #[error("catalogue of {num_items} items is too large: item ids are u32, so at most {max} items", max = u32::MAX as u64 + 1)]
    CatalogueTooLarge {
        /// Number of items asked for.
        num_items: usize,
    },

    /// A count or weight is negative, NaN or infinite.
    #[error("invalid weight {weight} for item {item}: expected a finite number >= 0")]
    InvalidWeight {
        /// Item whose weight is invalid.
        item: u32,
        /// The weight as given.
        weight: f64,
    },

    /// The popularity exponent is negative, NaN or infinite.
    #[error("invalid alpha {alpha}: expected a finite exponent >= 0")]
    InvalidAlpha {
        /// The exponent as given.
        alpha: f64,
    },

    /// Every item has weight 0 (after raising the counts to the power alpha).
    #[error("total weight is zero: all {num_items} items have weight 0")]
    ZeroTotalWeight {
        /// Number of items in the catalogue.
        num_items: usize,
    },

    /// The weights (after raising the counts to the power alpha) add up to more than `f64` can hold.
    #[error(
        "total weight is not finite: the weights of {num_items} items overflow f64 (alpha {alpha})"
    )]
    TotalWeightNotFinite {
        /// Number of items in the catalogue.
        num_items: usize,
        /// The popularity exponent.
        alpha: f64,
    },

    /// The user's positives hold all the sampling mass: there is no item left to draw.
    #[error(
        "cannot exclude the positives of user {user}: its {num_positives} positives hold all the \
         sampling mass of the {num_items}-item catalogue"
    )]
    ExclusionImpossible {
        /// The user whose positives were excluded.
        user: u32,
        /// How many positives the user has.
        num_positives: usize,
        /// Number of items in the catalogue.
        num_items: usize,
    },

    /// A list of positives is not strictly increasing (unsorted or with duplicates).
    #[error("positives are not strictly increasing at position {position}: {previous} then {item}")]
    UnsortedPositives {
        /// Position of the offending item in the list.
        position: usize,
        /// The item before it.
        previous: u32,
        /// The offending item.
        item: u32,
    },

    /// An item id is outside the catalogue.
    #[error("item {item} at position {position} is outside the catalogue 0..{num_items}")]
    ItemOutOfRange {
        /// Position of the offending entry in its input (pair list or item list).
        position: usize,
        /// The item id.
        item: u32,
        /// Number of items in the catalogue.
        num_items: usize,
    },

    /// A user id is outside `0..num_users`.
    #[error("user {user} at position {position} is outside 0..{num_users}")]
    UserOutOfRange {
        /// Position of the offending entry in its input (pair list or user list).
        position: usize,
        /// The user id.
        user: u32,
        /// Number of users.
        num_users: usize,
    },

    /// CSR offsets are malformed.
    #[error("invalid CSR offsets at index {index}: {expected}")]
    InvalidOffsets {
        /// Index into the offsets vector where the problem was found.
        index: usize,
        /// What was expected there.
        expected: &'static str,
    },

    /// The output buffer does not have `users.len() * per_user` slots.
    #[error(
        "output buffer has {actual} slots, expected {expected} ({num_users} users x {per_user} per user)"
    )]
    BufferLength {
        /// `users.len() * per_user` (saturated at `usize::MAX`).
        expected: usize,
        /// Length of the buffer given.
        actual: usize,
        /// Number of users given.
        num_users: usize,
        /// Negatives asked for per user.
        per_user: usize,
    },

    /// The positives were built for a different catalogue size than the sampler's.
    #[error(
        "catalogue mismatch: the sampler has {sampler_items} items but the positives were built for {positives_items}"
    )]
    CatalogueMismatch {
        /// Number of items of the sampler.
        sampler_items: usize,
        /// Number of items the [`UserItems`](crate::UserItems) were built for.
        positives_items: usize,
    },

    /// A band of ranks is not `1 <= first <= last`.
    #[error("invalid band of ranks {first}..={last}: expected 1 <= first <= last")]
    InvalidBand {
        /// The first rank given.
        first: usize,
        /// The last rank given.
        last: usize,
    },

    /// A share of hard negatives is outside `[0, 1]`.
    #[error("invalid hard-negative fraction {fraction}: expected a number in [0, 1]")]
    InvalidFraction {
        /// The fraction given.
        fraction: f64,
    },
}
