//! What a recommendation query says and what it gets back.

use dssm_retrieval::ScoredItem;

/// The largest `k` a query may ask for.
pub const MAX_K: usize = 1000;
/// The most `recent_items` or `exclude` ids a query may give.
pub const MAX_IDS: usize = 1000;

/// Who the recommendations are for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum User {
    /// A user of the dataset, by key (MovieLens: the user id as text).
    Known(String),
    /// A new user, described by `(feature or source column, raw value)` pairs; every feature not
    /// given is unknown to the model.
    New(Vec<(String, String)>),
}

/// A recommendation (or user-embedding) query.
///
/// ```
/// use dssm_recommend::{Query, User};
/// let query = Query::new(User::Known("42".into()), 10);
/// assert!(query.recent_items.is_empty() && !query.exclude_seen);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// The user.
    pub user: User,
    /// Movie ids the user interacted with lately, in time order: oldest first, newest last.
    /// With history features, those features are the newest of these (in place of a known
    /// user's own history); with a sequence tower, they follow a known user's test-time sequence
    /// (train items, then the validation item) or are a new user's whole sequence, of which the
    /// newest `max_len` are read. Empty: a known user's own history (the precomputed embedding),
    /// none for a new user. Ids not in the catalogue are an error naming them.
    pub recent_items: Vec<u32>,
    /// How many items to return, `1..=MAX_K`.
    pub k: usize,
    /// Hide the items the user has interacted with (a known user: every split; a new user: the
    /// `recent_items`).
    pub exclude_seen: bool,
    /// Movie ids never to return.
    pub exclude: Vec<u32>,
}

impl Query {
    /// A query for the top `k` of `user`, without recent items or exclusions.
    pub fn new(user: User, k: usize) -> Self {
        Self {
            user,
            recent_items: Vec::new(),
            k,
            exclude_seen: false,
            exclude: Vec::new(),
        }
    }
}

/// The answer to a query.
#[derive(Debug, Clone, PartialEq)]
pub struct Recommendation {
    /// The top items, best first (ties by the lower id). Scores are the towers' similarity.
    pub items: Vec<ScoredItem>,
    /// Given values the model could not use (not in the train vocabulary, unused features).
    pub notes: Vec<String>,
    /// How many items the exclusions removed from the candidates.
    pub hidden: usize,
}

/// A user vector (L2-normalised for a cosine model, so inner products with the item vectors are
/// the model's similarity).
#[derive(Debug, Clone, PartialEq)]
pub struct UserVector {
    /// `dim` floats.
    pub vector: Vec<f32>,
    /// As in [`Recommendation::notes`].
    pub notes: Vec<String>,
}
