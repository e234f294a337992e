//! [`Recommender`]: a run folder loaded once, answering queries.

use std::collections::HashMap;
use std::path::Path;

use dssm_data::{Dataset, Split};
use dssm_model::{FeatureSpec, Mode, Side, SideBatch, Similarity};
use dssm_retrieval::{
    EmbeddingMatrix, ExactIndex, Exclusions, HnswConfig, HnswIndex, MatrixView, ScoredItem, TopK,
};
use dssm_trainer::{LoadedRun, SequenceEncoder, load_run};

use crate::encode::{UserColumn, accepted_names, encode_known_user, encode_new_user, is_history};
use crate::error::{Error, Result};
use crate::query::{MAX_IDS, MAX_K, Query, Recommendation, User, UserVector};
use crate::run::{checkpoint_id, l2_normalize_rows, tower_outputs};

/// `(movie id, split)` of a user's interactions, most recent first.
type Timeline = Vec<(u32, Split)>;

/// The search index over the candidates.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum IndexKind {
    /// Brute force over every candidate.
    #[default]
    Exact,
    /// An HNSW graph (approximate): mapped from the run's saved index
    /// (`<run>/embeddings/item_index.hnsw`, written by `dssm export --index hnsw`) when there is
    /// one, built in memory with these parameters otherwise. `ef_search` applies either way.
    Hnsw(HnswConfig),
}

/// Where a run's saved HNSW index is looked for: `<run>/embeddings/item_index.hnsw`.
pub fn saved_index_path(run_dir: &Path) -> std::path::PathBuf {
    run_dir
        .join("embeddings")
        .join(crate::export::export_files::INDEX)
}

/// A run folder loaded once: the best checkpoint, the item and known-user embeddings, the
/// candidates' index, the vocabularies for new users, the item metadata and every user's items.
///
/// Candidates are the items with a train interaction. Scores are the towers' similarity: the
/// inner product of the embeddings, L2-normalised first for a cosine model (the model's logit is
/// that divided by its temperature, so the order is the same).
///
/// ```no_run
/// use dssm_recommend::{IndexKind, Query, Recommender, User};
/// let recommender = Recommender::load("runs/ml-1m-leave-last-out".as_ref(), IndexKind::Exact)?;
/// let mut query = Query::new(User::Known("42".into()), 10);
/// query.exclude_seen = true;
/// for item in recommender.recommend(&query)?.items {
///     let title = recommender.item(item.id).and_then(|i| i.attribute("title"));
///     println!("{} {title:?} {:.3}", item.id, item.score);
/// }
/// # Ok::<(), dssm_recommend::Error>(())
/// ```
pub struct Recommender {
    loaded: LoadedRun,
    model_id: String,
    index_kind: IndexKind,
    /// The saved index file in use, when the HNSW graph was mapped rather than built.
    index_file: Option<std::path::PathBuf>,
    user_specs: Vec<FeatureSpec>,
    accepted: Vec<String>,
    uses_history: bool,
    cosine: bool,
    /// The sequence tower ready per request (its token table computed at load), for a sequence
    /// run.
    sequence: Option<SequenceEncoder>,
    /// One row per users-table row (ids = user ids).
    pub(crate) users: EmbeddingMatrix,
    /// One row per items-table row (ids = movie ids).
    pub(crate) items: EmbeddingMatrix,
    index: Box<dyn TopK + Send + Sync>,
    user_rows: HashMap<String, usize>,
    item_rows: HashMap<u32, usize>,
    /// Per user row: movie ids of every interaction, sorted and de-duplicated.
    seen: Vec<Vec<u32>>,
    /// Per user row: `(movie id, split)` of every interaction, most recent first.
    timeline: Vec<Timeline>,
}

impl std::fmt::Debug for Recommender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recommender")
            .field("run_dir", &self.loaded.run_dir)
            .field("model_id", &self.model_id)
            .field("index", &self.index_kind)
            .field("users", &self.users.len())
            .field("candidates", &self.index.len())
            .finish()
    }
}

/// A catalogue item's metadata.
#[derive(Debug, Clone, Copy)]
pub struct ItemView<'a> {
    items: &'a dssm_data::ItemTable,
    row: usize,
}

impl<'a> ItemView<'a> {
    /// The movie id.
    pub fn id(&self) -> u32 {
        self.items.movie_id[self.row]
    }

    /// The raw item key.
    pub fn key(&self) -> &'a str {
        &self.items.key[self.row]
    }

    /// Train interactions (0: not a candidate).
    pub fn train_count(&self) -> u32 {
        self.items.train_count[self.row]
    }

    /// The display columns (MovieLens: title, year, genres), `None` where empty.
    pub fn attributes(&self) -> impl Iterator<Item = (&'a str, Option<&'a str>)> + 'a {
        let row = self.row;
        self.items
            .attributes
            .columns
            .iter()
            .map(move |(name, values)| (name.as_str(), values[row].as_deref()))
    }

    /// One display column's value.
    pub fn attribute(&self, name: &str) -> Option<&'a str> {
        self.items.attributes.value(name, self.row)
    }
}

/// A known user's data.
#[derive(Debug, Clone)]
pub struct UserView<'a> {
    /// The users-table row.
    pub row: usize,
    /// The user key.
    pub key: &'a str,
    /// The display columns (MovieLens: gender, age, occupation, zip_code).
    pub attributes: Vec<(&'a str, Option<&'a str>)>,
    /// Movie ids of every interaction, most recent first (for display: [`Query::recent_items`]
    /// are oldest first).
    pub recent: Vec<u32>,
}

impl Recommender {
    /// Loads the run's best checkpoint and dataset, embeds every user and item, and builds the
    /// index over the candidates (or, for [`IndexKind::Hnsw`], maps the run's saved index: one
    /// built from other embeddings than today's is refused with
    /// [`dssm_retrieval::Error::HnswStale`], a damaged one with `HnswCorrupt`).
    pub fn load(run_dir: &Path, index_kind: IndexKind) -> Result<Self> {
        let loaded = load_run(run_dir).map_err(|source| Error::Load {
            path: run_dir.to_path_buf(),
            source,
        })?;
        let sequence = loaded.sequence_encoder().map_err(|source| Error::Load {
            path: run_dir.to_path_buf(),
            source,
        })?;
        let (users, items) = tower_outputs(&loaded, sequence.as_ref())?;
        let candidates = crate::run::candidate_matrix(&items, &loaded.dataset.items.train_count)?;
        let saved = saved_index_path(run_dir);
        let (index, index_file): (Box<dyn TopK + Send + Sync>, _) = match index_kind {
            IndexKind::Exact => (Box::new(ExactIndex::new(candidates)), None),
            IndexKind::Hnsw(config) if saved.is_file() => {
                let mut index = HnswIndex::load_for(&saved, &candidates)?;
                index.set_ef_search(config.ef_search);
                (Box::new(index), Some(saved))
            }
            IndexKind::Hnsw(config) => (Box::new(HnswIndex::build(candidates, config)?), None),
        };
        let mut recommender = Self::assemble(loaded, sequence, users, items, index, index_kind)?;
        recommender.index_file = index_file;
        Ok(recommender)
    }

    fn assemble(
        loaded: LoadedRun,
        sequence: Option<SequenceEncoder>,
        users: EmbeddingMatrix,
        items: EmbeddingMatrix,
        index: Box<dyn TopK + Send + Sync>,
        index_kind: IndexKind,
    ) -> Result<Self> {
        let config = loaded.model.config();
        let user_specs: Vec<FeatureSpec> = config.side_features(Side::User).cloned().collect();
        let accepted = accepted_names(&user_specs, &loaded.dataset.vocabularies);
        let dataset = &loaded.dataset;
        let (seen, timeline) = interactions_by_user(dataset)?;
        Ok(Self {
            model_id: checkpoint_id(&loaded.run_dir),
            index_kind,
            index_file: None,
            uses_history: sequence.is_some() || user_specs.iter().any(is_history),
            cosine: config.similarity == Similarity::Cosine,
            sequence,
            accepted,
            user_specs,
            user_rows: (dataset.users.key.iter().cloned().zip(0..)).collect(),
            item_rows: (dataset.items.movie_id.iter().copied().zip(0..)).collect(),
            users,
            items,
            index,
            seen,
            timeline,
            loaded,
        })
    }
}

impl Recommender {
    /// The id of the checkpoint served: `best@epoch<N>:<weights checksum>` (or `best:<checksum>`).
    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    /// The run folder.
    pub fn run_dir(&self) -> &Path {
        &self.loaded.run_dir
    }

    /// The loaded run (config, dataset, model).
    pub fn run(&self) -> &LoadedRun {
        &self.loaded
    }

    /// The index in use.
    pub fn index_kind(&self) -> IndexKind {
        self.index_kind
    }

    /// The saved index file mapped at load, if the HNSW graph came from one.
    pub fn index_file(&self) -> Option<&Path> {
        self.index_file.as_deref()
    }

    /// The candidates' embeddings (the items with a train interaction), as the index holds them.
    pub fn candidate_embeddings(&self) -> Result<EmbeddingMatrix> {
        crate::run::candidate_matrix(&self.items, &self.run().dataset.items.train_count)
    }

    /// Number of candidates (items with a train interaction).
    pub fn candidates(&self) -> usize {
        self.index.len()
    }

    /// The embedding dimension.
    pub fn dim(&self) -> usize {
        self.items.dim()
    }

    /// True for a cosine model: user and item vectors are L2-normalised, so their inner product
    /// is the cosine similarity.
    pub fn normalized(&self) -> bool {
        self.cosine
    }

    /// True when the user tower reads the user's items (history features, or a sequence tower),
    /// so `recent_items` changes the answer.
    pub fn uses_history(&self) -> bool {
        self.uses_history
    }

    /// The names a new user's features may be given by (features and their source columns).
    pub fn feature_names(&self) -> &[String] {
        &self.accepted
    }

    /// Every user key, in table order.
    pub fn user_keys(&self) -> &[String] {
        &self.loaded.dataset.users.key
    }

    /// A catalogue item by movie id (candidates and items without train interactions).
    pub fn item(&self, id: u32) -> Option<ItemView<'_>> {
        let row = *self.item_rows.get(&id)?;
        Some(ItemView {
            items: &self.loaded.dataset.items,
            row,
        })
    }

    /// Items whose key or display values contain `text` (ignoring case), candidates first by
    /// train interactions, at most `limit`.
    pub fn search_items(&self, text: &str, limit: usize) -> Vec<ItemView<'_>> {
        let needle = text.to_lowercase();
        let items = &self.loaded.dataset.items;
        let mut found: Vec<ItemView<'_>> = (0..items.movie_id.len())
            .map(|row| ItemView { items, row })
            .filter(|item| {
                item.key().to_lowercase().contains(&needle)
                    || item
                        .attributes()
                        .any(|(_, v)| v.is_some_and(|v| v.to_lowercase().contains(&needle)))
            })
            .collect();
        found.sort_by_key(|item| std::cmp::Reverse(item.train_count()));
        found.truncate(limit);
        found
    }

    /// A known user by key.
    pub fn user(&self, key: &str) -> Result<UserView<'_>> {
        let row = self.user_row(key)?;
        let users = &self.loaded.dataset.users;
        Ok(UserView {
            row,
            key: &users.key[row],
            attributes: users
                .attributes
                .columns
                .iter()
                .map(|(name, values)| (name.as_str(), values[row].as_deref()))
                .collect(),
            recent: self.timeline[row].iter().map(|&(id, _)| id).collect(),
        })
    }

    /// Movie ids a known user interacted with in any split, sorted.
    pub fn seen(&self, key: &str) -> Result<&[u32]> {
        Ok(&self.seen[self.user_row(key)?])
    }

    /// The history a test query of a known user sees: every interaction but the test ones,
    /// oldest first, newest last (the order of [`Query::recent_items`]). For a model with
    /// history features, `recent_items` equal to this give the precomputed embedding.
    pub fn history(&self, key: &str) -> Result<Vec<u32>> {
        let row = self.user_row(key)?;
        Ok(self.timeline[row]
            .iter()
            .rev()
            .filter(|&&(_, split)| split != Split::Test)
            .map(|&(id, _)| id)
            .collect())
    }

    /// The query's user vector.
    pub fn user_vector(&self, query: &Query) -> Result<UserVector> {
        self.check(query)?;
        let (vector, notes) = self.query_vector(query)?;
        Ok(UserVector { vector, notes })
    }

    /// The top `k` candidates for the query.
    pub fn recommend(&self, query: &Query) -> Result<Recommendation> {
        self.check(query)?;
        let (vector, notes) = self.query_vector(query)?;
        let mut excluded = query.exclude.clone();
        if query.exclude_seen {
            match &query.user {
                User::Known(key) => excluded.extend_from_slice(self.seen(key)?),
                User::New(_) => excluded.extend_from_slice(&query.recent_items),
            }
        }
        excluded.sort_unstable();
        excluded.dedup();
        let hidden = excluded
            .iter()
            .filter(|&&id| self.item(id).is_some_and(|i| i.train_count() > 0))
            .count();
        let items = self.search(&vector, query.k, excluded)?;
        Ok(Recommendation {
            items,
            notes,
            hidden,
        })
    }

    /// The `k` candidates most similar to item `id` (by the inner product of item vectors), the
    /// item itself excluded.
    pub fn similar(&self, id: u32, k: usize) -> Result<Vec<ScoredItem>> {
        check_k(k)?;
        let row = *self.item_rows.get(&id).ok_or(Error::UnknownItems {
            field: "movie_id",
            ids: vec![id],
        })?;
        self.search(self.items.row(row), k, vec![id])
    }

    fn search(&self, vector: &[f32], k: usize, excluded: Vec<u32>) -> Result<Vec<ScoredItem>> {
        let queries = MatrixView::new(vector, self.dim())?;
        let exclusions = Exclusions::from_rows([excluded]);
        let mut top = self.index.top_k(queries, k, Some(&exclusions))?;
        Ok(top.pop().unwrap_or_default())
    }

    fn check(&self, query: &Query) -> Result<()> {
        check_k(query.k)?;
        for (field, ids) in [
            ("recent_items", &query.recent_items),
            ("exclude", &query.exclude),
        ] {
            if ids.len() > MAX_IDS {
                return Err(Error::Invalid {
                    field,
                    message: format!("at most {MAX_IDS} ids, found {}", ids.len()),
                });
            }
            let unknown: Vec<u32> = ids
                .iter()
                .copied()
                .filter(|id| !self.item_rows.contains_key(id))
                .collect();
            if !unknown.is_empty() {
                return Err(Error::UnknownItems {
                    field,
                    ids: unknown,
                });
            }
        }
        Ok(())
    }

    /// The query's vector (normalised for a cosine model) and the notes of its encoding.
    ///
    /// A known user without recent items (or of a model that reads no items) is the precomputed
    /// vector. Otherwise the user tower runs on one row: with history features, those features
    /// from `recent_items` alone; with a sequence tower, over the user's test-time sequence (a
    /// known user's train items then validation item; none for a new user) followed by
    /// `recent_items`. The user features are the stored ones (known) or the given ones (new).
    fn query_vector(&self, query: &Query) -> Result<(Vec<f32>, Vec<String>)> {
        let mut notes = Vec::new();
        if !query.recent_items.is_empty() && !self.uses_history {
            notes.push(
                "the model has no history feature; recent_items has no effect on the user vector"
                    .to_string(),
            );
        }
        // Item-table rows of the recent items, oldest first.
        let recent: Vec<u32> = query
            .recent_items
            .iter()
            .map(|id| self.item_rows[id] as u32)
            .collect();
        if let User::Known(key) = &query.user
            && (recent.is_empty() || !self.uses_history)
        {
            return Ok((self.users.row(self.user_row(key)?).to_vec(), notes));
        }
        let model = &self.loaded.model;
        let vector = match (&self.sequence, &query.user) {
            (Some(encoder), User::Known(key)) => {
                let row = self.user_row(key)?;
                let mut sequence = encoder.sequence(row as u32);
                sequence.extend_from_slice(&recent);
                let users = encoder.user_batch(model, row as u32)?;
                encoder.encode(model, &users, &sequence)?
            }
            (Some(encoder), User::New(given)) => {
                let encoded = self.encode_new(given, &[], &mut notes);
                encoder.encode(model, &self.user_batch(&encoded)?, &recent)?
            }
            (None, User::Known(key)) => {
                let row = self.user_row(key)?;
                let users = &self.loaded.dataset.users;
                let history = history_ids(&recent);
                let columns = encode_known_user(&self.user_specs, users, row, &history).map_err(
                    |message| Error::Run {
                        path: self.loaded.dataset.dir.clone(),
                        message,
                    },
                )?;
                self.tower(&columns)?
            }
            (None, User::New(given)) => {
                let columns = self.encode_new(given, &history_ids(&recent), &mut notes);
                self.tower(&columns)?
            }
        };
        Ok((self.normalized_vector(vector), notes))
    }

    /// A new user's columns (`history`: history ids, oldest first), its notes added to `notes`.
    fn encode_new(
        &self,
        given: &[(String, String)],
        history: &[u32],
        notes: &mut Vec<String>,
    ) -> Vec<UserColumn> {
        let encoded = encode_new_user(
            &self.user_specs,
            given,
            history,
            &self.loaded.dataset.vocabularies,
        );
        notes.extend(encoded.notes);
        encoded.columns
    }

    /// One row of user columns as a user batch.
    fn user_batch(&self, columns: &[UserColumn]) -> Result<SideBatch> {
        let model = &self.loaded.model;
        let host: Vec<_> = columns.iter().map(UserColumn::host).collect();
        Ok(SideBatch::from_host(
            model.config(),
            Side::User,
            1,
            &host,
            model.device(),
        )?)
    }

    /// One row through the user tower (`Mode::Eval`).
    fn tower(&self, columns: &[UserColumn]) -> Result<Vec<f32>> {
        let embedded = self
            .loaded
            .model
            .encode_users(&self.user_batch(columns)?, Mode::Eval)?;
        Ok(embedded
            .flatten_all()?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1::<f32>()?)
    }

    /// `vector` L2-normalised for a cosine model, as the stored vectors are.
    fn normalized_vector(&self, mut vector: Vec<f32>) -> Vec<f32> {
        if self.cosine {
            l2_normalize_rows(&mut vector, self.dim());
        }
        vector
    }

    fn user_row(&self, key: &str) -> Result<usize> {
        self.user_rows.get(key).copied().ok_or_else(|| {
            let keys = &self.loaded.dataset.users.key;
            Error::UnknownUser {
                key: key.to_string(),
                users: keys.len(),
                examples: keys.iter().take(3).cloned().collect(),
            }
        })
    }

    /// Replaces the candidates with `items` (ids need not be in the item metadata) under a new
    /// index: for benchmarks over a larger catalogue, or embeddings computed elsewhere.
    pub fn with_candidates(
        mut self,
        items: EmbeddingMatrix,
        index_kind: IndexKind,
    ) -> Result<Self> {
        if items.dim() != self.dim() {
            return Err(Error::Invalid {
                field: "items",
                message: format!("dimension {}, expected {}", items.dim(), self.dim()),
            });
        }
        self.index = match index_kind {
            IndexKind::Exact => Box::new(ExactIndex::new(items)),
            IndexKind::Hnsw(config) => Box::new(HnswIndex::build(items, config)?),
        };
        self.index_kind = index_kind;
        self.index_file = None;
        Ok(self)
    }
}

/// The history features' ids of item rows: row + 1 (0 is padding).
fn history_ids(rows: &[u32]) -> Vec<u32> {
    rows.iter().map(|&row| row + 1).collect()
}

fn check_k(k: usize) -> Result<()> {
    if (1..=MAX_K).contains(&k) {
        Ok(())
    } else {
        Err(Error::Invalid {
            field: "k",
            message: format!("must be between 1 and {MAX_K}, found {k}"),
        })
    }
}

/// Per user row: the sorted, de-duplicated movie ids of every split, and `(movie id, split)` of
/// every interaction, most recent first (by timestamp, a missing one oldest; then train before
/// val before test; then the line in the ratings file).
fn interactions_by_user(dataset: &Dataset) -> Result<(Vec<Vec<u32>>, Vec<Timeline>)> {
    let n = dataset.users.key.len();
    // Per user: (timestamp, split rank, line, movie id).
    type Event = (Option<i64>, usize, u32, u32);
    let mut events: Vec<Vec<Event>> = vec![Vec::new(); n];
    for (rank, split) in Split::ALL.into_iter().enumerate() {
        let rows = dataset.interactions(split).map_err(|e| Error::Run {
            path: dataset.dir.clone(),
            message: format!("cannot read the {split} split: {e}"),
        })?;
        for i in 0..rows.len() {
            let user = rows.user_row[i] as usize;
            let list = events.get_mut(user).ok_or_else(|| Error::Run {
                path: dataset.dir.clone(),
                message: format!("user row {user} is outside the users table ({n} rows)"),
            })?;
            list.push((rows.timestamp[i], rank, rows.line[i], rows.movie_id[i]));
        }
    }
    let mut seen = Vec::with_capacity(n);
    let mut timeline = Vec::with_capacity(n);
    for mut list in events {
        list.sort_unstable_by_key(|&(ts, rank, line, _)| {
            std::cmp::Reverse((ts.is_some(), ts, rank, line))
        });
        let mut ids: Vec<u32> = list.iter().map(|e| e.3).collect();
        timeline.push(list.iter().map(|e| (e.3, Split::ALL[e.1])).collect());
        ids.sort_unstable();
        ids.dedup();
        seen.push(ids);
    }
    Ok((seen, timeline))
}
