//! Vocabularies and bucket edges fitted on the train split only, and the feature encodings.

use std::collections::HashMap;
use std::path::Path;

use crate::error::DataError;
use crate::raw::{RawData, RawMovie, RawUser};
use crate::split::Split;

/// Which values of a categorical feature get their own index; the others map to 0.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum MinFrequency {
    /// Keep a value whose share of the train rows is at least this (the reference's `encode_min`).
    Share(f64),
    /// Keep a value seen in at least this many train rows.
    Count(u64),
}

impl Default for MinFrequency {
    /// `Count(1)`: every value seen in train gets an index.
    fn default() -> Self {
        Self::Count(1)
    }
}

/// Which tower a feature feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// User tower.
    User,
    /// Item tower.
    Item,
}

/// Single- or multi-valued categorical feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureKind {
    /// One index per row.
    Categorical,
    /// A list of indices per row (padded with 0 when read).
    MultiCategorical,
}

/// User feature names, in column order.
pub const USER_FEATURES: [&str; 5] = ["user_id", "gender", "age", "occupation", "zip_prefix"];
/// Item feature names, in column order.
pub const ITEM_FEATURES: [&str; 5] = [
    "movie_id",
    "genres",
    "year",
    "rating_mean_bucket",
    "rating_count_bucket",
];
/// The raw value stored at index 0 of every vocabulary.
pub const UNKNOWN: &str = "<unk>";

/// The vocabulary of one feature: the raw value of each index, index 0 = unknown/rare/missing.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vocabulary {
    /// Feature name.
    pub name: String,
    /// Tower.
    pub side: Side,
    /// Single or multi-valued.
    pub kind: FeatureKind,
    /// Raw value of each index; `values[0]` is [`UNKNOWN`]. For bucket features, a label such as
    /// `[3.5,3.8)`.
    pub values: Vec<String>,
    /// Bucket features only: ascending edges; a value v falls in bucket 1 + #(edges <= v).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edges: Option<Vec<f64>>,
    #[serde(skip)]
    index: HashMap<String, u32>,
}

impl Vocabulary {
    fn from_values(name: &str, side: Side, kind: FeatureKind, values: Vec<String>) -> Self {
        let mut v = Self {
            name: name.to_string(),
            side,
            kind,
            values,
            edges: None,
            index: HashMap::new(),
        };
        v.build_index();
        v
    }

    fn build_index(&mut self) {
        self.index = match self.edges {
            Some(_) => HashMap::new(),
            None => self
                .values
                .iter()
                .enumerate()
                .skip(1)
                .map(|(i, v)| (v.clone(), i as u32))
                .collect(),
        };
    }

    /// Number of indices, 0 included.
    pub fn size(&self) -> usize {
        self.values.len()
    }

    /// The index of a raw value; 0 when unknown or rare. Bucket features parse `raw` as a number.
    pub fn encode(&self, raw: &str) -> u32 {
        match &self.edges {
            Some(edges) => raw.trim().parse::<f64>().map_or(0, |v| bucket(edges, v)),
            None => self.index.get(raw).copied().unwrap_or(0),
        }
    }
}

fn bucket(edges: &[f64], value: f64) -> u32 {
    if value.is_nan() {
        return 0;
    }
    1 + edges.partition_point(|&e| e <= value) as u32
}

/// All vocabularies of a dataset, as saved in vocabularies.json.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vocabularies {
    /// The rule used for rare values.
    pub min_frequency: MinFrequency,
    /// Number of train rows the vocabularies were fitted on.
    pub train_rows: u64,
    /// One vocabulary per feature, user features then item features.
    pub features: Vec<Vocabulary>,
}

/// Per-movie statistics over the train rows.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ItemTrainStats {
    /// Train rows of the movie.
    pub count: u32,
    /// Mean train rating (0 when count is 0).
    pub mean: f64,
}

/// An encoded feature column, one entry per user or item row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncodedColumn {
    /// One index per row.
    Categorical(Vec<u32>),
    /// A list of indices per row (unknown values dropped).
    Multi(Vec<Vec<u32>>),
}

fn zip_prefix(zip: &str) -> String {
    zip.chars().take(2).collect()
}

fn user_values(u: &RawUser) -> [String; 5] {
    [
        u.user_id.to_string(),
        u.gender.clone(),
        u.age.to_string(),
        u.occupation.to_string(),
        zip_prefix(&u.zip_code),
    ]
}

/// Which rows the per-movie rating mean and count features are computed from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemStatistics {
    /// The train rows only: the leak-free default every reported figure uses.
    #[default]
    Train,
    /// Every rating, validation and test included. This reproduces the PyTorch reference's label
    /// leakage (its test AUC 0.73 was measured so) and exists only to report that variant, labelled.
    AllRows,
}

/// Per-movie train statistics and per-user train row counts.
pub fn train_stats(raw: &RawData, splits: &[Split]) -> (Vec<u32>, Vec<ItemTrainStats>) {
    let mut user_rows = vec![0u32; raw.users.len()];
    let mut sums = vec![(0u32, 0u64); raw.movies.len()];
    for (r, s) in raw.ratings.iter().zip(splits) {
        if *s == Split::Train {
            user_rows[r.user_row as usize] += 1;
            let e = &mut sums[r.item_row as usize];
            e.0 += 1;
            e.1 += u64::from(r.rating);
        }
    }
    let items = sums
        .into_iter()
        .map(|(count, sum)| ItemTrainStats {
            count,
            mean: if count == 0 {
                0.0
            } else {
                sum as f64 / f64::from(count)
            },
        })
        .collect();
    (user_rows, items)
}

fn sorted_values(counts: HashMap<String, u64>, keep: impl Fn(u64) -> bool) -> Vec<String> {
    let mut kept: Vec<String> = counts
        .into_iter()
        .filter(|(v, c)| !v.is_empty() && keep(*c))
        .map(|(v, _)| v)
        .collect();
    if kept.iter().all(|v| v.parse::<u64>().is_ok()) {
        kept.sort_unstable_by_key(|v| v.parse::<u64>().unwrap_or(0));
    } else {
        kept.sort_unstable();
    }
    let mut values = Vec::with_capacity(kept.len() + 1);
    values.push(UNKNOWN.to_string());
    values.extend(kept);
    values
}

fn quantile_edges(mut values: Vec<f64>, buckets: usize) -> Vec<f64> {
    values.sort_unstable_by(f64::total_cmp);
    let mut edges: Vec<f64> = Vec::new();
    if values.is_empty() {
        return edges;
    }
    for k in 1..buckets {
        let e = values[(k * values.len() / buckets).min(values.len() - 1)];
        if edges.last().is_none_or(|&last| e > last) && e > values[0] {
            edges.push(e);
        }
    }
    edges
}

fn bucket_labels(edges: &[f64]) -> Vec<String> {
    let mut labels = vec![UNKNOWN.to_string()];
    for i in 0..=edges.len() {
        let lo = if i == 0 {
            "-inf".to_string()
        } else {
            format!("{}", edges[i - 1])
        };
        let hi = edges
            .get(i)
            .map_or_else(|| "inf".to_string(), |e| format!("{e}"));
        labels.push(format!("[{lo},{hi})"));
    }
    labels
}

impl Vocabularies {
    /// Fits every vocabulary and bucket edge on the rows whose split is [`Split::Train`].
    ///
    /// Frequencies count train rows: a user's attributes count once per train rating of that
    /// user, a movie's genres and year once per train rating of that movie. `buckets` is the
    /// number of quantile buckets of the per-movie train mean rating and train count (over
    /// movies with train rows).
    pub fn fit(
        raw: &RawData,
        splits: &[Split],
        min_frequency: MinFrequency,
        buckets: usize,
    ) -> Self {
        Self::fit_with_bucket_stats(raw, splits, None, min_frequency, buckets)
    }

    /// [`Vocabularies::fit`], except that the rating mean and count bucket edges come from
    /// `bucket_stats` when given (one entry per movie) instead of the train rows. Only the leaky
    /// [`ItemStatistics::AllRows`] variant passes statistics here.
    pub fn fit_with_bucket_stats(
        raw: &RawData,
        splits: &[Split],
        bucket_stats: Option<&[ItemTrainStats]>,
        min_frequency: MinFrequency,
        buckets: usize,
    ) -> Self {
        let (user_rows, item_stats) = train_stats(raw, splits);
        let train_rows: u64 = user_rows.iter().map(|&c| u64::from(c)).sum();
        let keep = |c: u64| match min_frequency {
            MinFrequency::Share(share) => c >= 1 && c as f64 >= share * train_rows as f64,
            MinFrequency::Count(min) => c >= min.max(1),
        };
        let mut features = Vec::with_capacity(10);

        let mut user_counts: Vec<HashMap<String, u64>> = vec![HashMap::new(); 5];
        for (u, &c) in raw.users.iter().zip(&user_rows) {
            if c == 0 {
                continue;
            }
            for (counts, value) in user_counts.iter_mut().zip(user_values(u)) {
                *counts.entry(value).or_default() += u64::from(c);
            }
        }
        for (name, counts) in USER_FEATURES.iter().zip(user_counts) {
            features.push(Vocabulary::from_values(
                name,
                Side::User,
                FeatureKind::Categorical,
                sorted_values(counts, keep),
            ));
        }

        let mut movie_counts = HashMap::new();
        let mut genre_counts = HashMap::new();
        let mut year_counts = HashMap::new();
        for (m, s) in raw.movies.iter().zip(&item_stats) {
            if s.count == 0 {
                continue;
            }
            let c = u64::from(s.count);
            *movie_counts.entry(m.movie_id.to_string()).or_default() += c;
            for g in &m.genres {
                *genre_counts.entry(g.clone()).or_default() += c;
            }
            if let Some(y) = m.year {
                *year_counts.entry(y.to_string()).or_default() += c;
            }
        }
        features.push(Vocabulary::from_values(
            "movie_id",
            Side::Item,
            FeatureKind::Categorical,
            sorted_values(movie_counts, keep),
        ));
        features.push(Vocabulary::from_values(
            "genres",
            Side::Item,
            FeatureKind::MultiCategorical,
            sorted_values(genre_counts, keep),
        ));
        features.push(Vocabulary::from_values(
            "year",
            Side::Item,
            FeatureKind::Categorical,
            sorted_values(year_counts, keep),
        ));
        let rated: Vec<&ItemTrainStats> = bucket_stats
            .unwrap_or(&item_stats)
            .iter()
            .filter(|s| s.count > 0)
            .collect();
        for (name, values) in [
            (
                "rating_mean_bucket",
                rated.iter().map(|s| s.mean).collect::<Vec<_>>(),
            ),
            (
                "rating_count_bucket",
                rated.iter().map(|s| f64::from(s.count)).collect(),
            ),
        ] {
            let edges = quantile_edges(values, buckets.max(1));
            let mut v = Vocabulary::from_values(
                name,
                Side::Item,
                FeatureKind::Categorical,
                bucket_labels(&edges),
            );
            v.edges = Some(edges);
            v.build_index();
            features.push(v);
        }
        Self {
            min_frequency,
            train_rows,
            features,
        }
    }

    /// The vocabulary of a feature.
    pub fn get(&self, feature: &str) -> Result<&Vocabulary, DataError> {
        self.features
            .iter()
            .find(|v| v.name == feature)
            .ok_or_else(|| DataError::UnknownFeature {
                name: feature.to_string(),
            })
    }

    /// The index of a raw value of a feature (0 when unknown or rare), e.g. to encode a new
    /// user's attributes at inference time.
    ///
    /// ```
    /// # use dssm_data::encode::{MinFrequency, Vocabularies};
    /// # use dssm_data::raw::{RawData, RawUser};
    /// # use dssm_data::split::Split;
    /// # let raw = RawData { users: vec![RawUser { user_id: 7, gender: "F".into(), age: 25,
    /// #     occupation: 3, zip_code: "12345".into() }], ..Default::default() };
    /// # let vocabularies = Vocabularies::fit(&raw, &[], MinFrequency::Count(1), 10);
    /// // Nothing was in train here, so every value is unknown.
    /// assert_eq!(vocabularies.encode("gender", "F").unwrap(), 0);
    /// assert!(vocabularies.encode("no-such-feature", "F").is_err());
    /// ```
    pub fn encode(&self, feature: &str, raw: &str) -> Result<u32, DataError> {
        Ok(self.get(feature)?.encode(raw))
    }

    /// Encodes the user features of every user, in [`USER_FEATURES`] order.
    pub fn encode_users(
        &self,
        users: &[RawUser],
    ) -> Result<Vec<(String, EncodedColumn)>, DataError> {
        let vocabs: Vec<&Vocabulary> = USER_FEATURES
            .iter()
            .map(|f| self.get(f))
            .collect::<Result<_, _>>()?;
        let mut columns: Vec<Vec<u32>> = (0..5).map(|_| Vec::with_capacity(users.len())).collect();
        for u in users {
            for ((col, vocab), value) in columns.iter_mut().zip(&vocabs).zip(user_values(u)) {
                col.push(vocab.encode(&value));
            }
        }
        Ok(USER_FEATURES
            .iter()
            .zip(columns)
            .map(|(n, c)| (n.to_string(), EncodedColumn::Categorical(c)))
            .collect())
    }

    /// Encodes the item features of every movie, in [`ITEM_FEATURES`] order; `stats` are the
    /// per-movie train statistics (a movie without train rows gets bucket 0).
    pub fn encode_items(
        &self,
        movies: &[RawMovie],
        stats: &[ItemTrainStats],
    ) -> Result<Vec<(String, EncodedColumn)>, DataError> {
        let movie_id = self.get("movie_id")?;
        let genres = self.get("genres")?;
        let year = self.get("year")?;
        let mean_edges = self
            .get("rating_mean_bucket")?
            .edges
            .as_deref()
            .unwrap_or(&[]);
        let count_edges = self
            .get("rating_count_bucket")?
            .edges
            .as_deref()
            .unwrap_or(&[]);
        let mut ids = Vec::with_capacity(movies.len());
        let mut genre_lists = Vec::with_capacity(movies.len());
        let mut years = Vec::with_capacity(movies.len());
        let mut means = Vec::with_capacity(movies.len());
        let mut counts = Vec::with_capacity(movies.len());
        for (m, s) in movies.iter().zip(stats) {
            ids.push(movie_id.encode(&m.movie_id.to_string()));
            genre_lists.push(
                m.genres
                    .iter()
                    .map(|g| genres.encode(g))
                    .filter(|&i| i != 0)
                    .collect(),
            );
            years.push(m.year.map_or(0, |y| year.encode(&y.to_string())));
            if s.count == 0 {
                means.push(0);
                counts.push(0);
            } else {
                means.push(bucket(mean_edges, s.mean));
                counts.push(bucket(count_edges, f64::from(s.count)));
            }
        }
        Ok(vec![
            ("movie_id".into(), EncodedColumn::Categorical(ids)),
            ("genres".into(), EncodedColumn::Multi(genre_lists)),
            ("year".into(), EncodedColumn::Categorical(years)),
            (
                "rating_mean_bucket".into(),
                EncodedColumn::Categorical(means),
            ),
            (
                "rating_count_bucket".into(),
                EncodedColumn::Categorical(counts),
            ),
        ])
    }

    /// Writes vocabularies.json.
    pub fn save(&self, path: &Path) -> Result<(), DataError> {
        let text = serde_json::to_string_pretty(self).map_err(|e| DataError::json(path, e))?;
        std::fs::write(path, text).map_err(|e| DataError::io(path, e))
    }

    /// Reads vocabularies.json.
    pub fn load(path: &Path) -> Result<Self, DataError> {
        let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
        let mut v: Self = serde_json::from_str(&text).map_err(|e| DataError::json(path, e))?;
        for f in &mut v.features {
            f.build_index();
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raw::RawRating;

    fn user(id: u32, gender: &str, age: u32, zip: &str) -> RawUser {
        RawUser {
            user_id: id,
            gender: gender.into(),
            age,
            occupation: id % 3,
            zip_code: zip.into(),
        }
    }

    fn movie(id: u32, genres: &[&str], year: Option<u32>) -> RawMovie {
        RawMovie {
            movie_id: id,
            title: format!("M{id}"),
            year,
            genres: genres.iter().map(|g| g.to_string()).collect(),
        }
    }

    fn data() -> (RawData, Vec<Split>) {
        let users = vec![
            user(1, "F", 25, "12345"),
            user(2, "M", 25, "12999"),
            user(3, "M", 35, "98765"),
            user(4, "F", 56, "55555"), // only in test
        ];
        let movies = vec![
            movie(10, &["Drama"], Some(1995)),
            movie(20, &["Comedy", "Drama"], Some(1990)),
            movie(30, &["Horror"], None), // only in test
        ];
        let mut ratings = Vec::new();
        let mut splits = Vec::new();
        let mut add = |u: u32, m: u32, rating: u8, split: Split| {
            let line = ratings.len() as u32 + 1;
            ratings.push(RawRating {
                user_id: u + 1,
                movie_id: movies_id(m),
                user_row: u,
                item_row: m,
                rating,
                timestamp: Some(i64::from(line)),
                line,
            });
            splits.push(split);
        };
        fn movies_id(row: u32) -> u32 {
            (row + 1) * 10
        }
        for _ in 0..5 {
            add(0, 0, 5, Split::Train);
            add(1, 1, 2, Split::Train);
        }
        add(2, 0, 4, Split::Train);
        add(3, 2, 1, Split::Test);
        add(0, 1, 5, Split::Val);
        (
            RawData {
                users,
                movies,
                ratings,
                sources: vec![],
            },
            splits,
        )
    }

    #[test]
    fn vocabularies_are_fitted_on_train_rows() {
        let (raw, splits) = data();
        let v = Vocabularies::fit(&raw, &splits, MinFrequency::Count(1), 10);
        assert_eq!(v.train_rows, 11);
        assert_eq!(v.get("user_id").unwrap().values, ["<unk>", "1", "2", "3"]);
        assert_eq!(v.encode("user_id", "4").unwrap(), 0);
        assert_eq!(v.encode("age", "56").unwrap(), 0, "test-only age value");
        assert_eq!(v.get("zip_prefix").unwrap().values, ["<unk>", "12", "98"]);
        assert_eq!(
            v.get("genres").unwrap().values,
            ["<unk>", "Comedy", "Drama"]
        );
        assert_eq!(v.encode("genres", "Horror").unwrap(), 0);
        assert_eq!(v.get("year").unwrap().values, ["<unk>", "1990", "1995"]);
        let (_, stats) = train_stats(&raw, &splits);
        assert_eq!(stats[0].count, 6);
        assert_eq!(stats[2].count, 0);
        let items = v.encode_items(&raw.movies, &stats).unwrap();
        assert_eq!(
            items[1].1,
            EncodedColumn::Multi(vec![vec![2], vec![1, 2], vec![]])
        );
        // Movie 30 has no train rows: unknown id, missing year, bucket 0.
        for (name, col) in &items {
            if let EncodedColumn::Categorical(c) = col {
                assert_eq!(c[2], 0, "{name}");
            }
        }
    }

    #[test]
    fn rare_values_map_to_zero() {
        let (raw, splits) = data();
        // Age 35 has 1 of 11 train rows (9%), age 25 has 10.
        let v = Vocabularies::fit(&raw, &splits, MinFrequency::Share(0.1), 10);
        assert_eq!(v.get("age").unwrap().values, ["<unk>", "25"]);
        assert_eq!(v.encode("age", "35").unwrap(), 0);
        let v = Vocabularies::fit(&raw, &splits, MinFrequency::Count(2), 10);
        assert_eq!(v.get("user_id").unwrap().values, ["<unk>", "1", "2"]);
        let v = Vocabularies::fit(&raw, &splits, MinFrequency::Share(0.05), 10);
        assert_eq!(v.encode("user_id", "3").unwrap(), 3);
    }

    #[test]
    fn val_and_test_rows_change_no_statistic() {
        let (raw, splits) = data();
        let fitted = Vocabularies::fit(&raw, &splits, MinFrequency::Count(1), 4);
        let (_, stats) = train_stats(&raw, &splits);
        let items = fitted.encode_items(&raw.movies, &stats).unwrap();

        let mut changed = raw.clone();
        for (r, s) in changed.ratings.iter_mut().zip(&splits) {
            if *s != Split::Train {
                r.rating = if r.rating == 1 { 5 } else { 1 };
                r.item_row = 0;
                r.movie_id = 10;
            }
        }
        changed.users[3].gender = "M".into();
        changed.users[3].age = 25;
        changed.users[3].zip_code = "99999".into();
        let refitted = Vocabularies::fit(&changed, &splits, MinFrequency::Count(1), 4);
        assert_eq!(fitted, refitted);
        let (_, stats2) = train_stats(&changed, &splits);
        assert_eq!(stats, stats2);
        assert_eq!(
            items,
            refitted.encode_items(&changed.movies, &stats2).unwrap()
        );
    }

    #[test]
    fn buckets_follow_train_quantiles() {
        assert_eq!(
            quantile_edges(vec![1.0, 2.0, 3.0, 4.0], 4),
            vec![2.0, 3.0, 4.0]
        );
        assert_eq!(quantile_edges(vec![1.0, 1.0, 1.0, 5.0], 4), vec![5.0]);
        let edges = [2.0, 3.0];
        assert_eq!(bucket(&edges, 1.0), 1);
        assert_eq!(bucket(&edges, 2.0), 2);
        assert_eq!(bucket(&edges, 9.0), 3);
        assert_eq!(
            bucket_labels(&edges),
            ["<unk>", "[-inf,2)", "[2,3)", "[3,inf)"]
        );
    }

    #[test]
    fn vocabularies_round_trip_through_json() {
        let (raw, splits) = data();
        let v = Vocabularies::fit(&raw, &splits, MinFrequency::Share(0.01), 10);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vocabularies.json");
        v.save(&path).unwrap();
        let loaded = Vocabularies::load(&path).unwrap();
        assert_eq!(
            loaded.encode("gender", "M").unwrap(),
            v.encode("gender", "M").unwrap()
        );
        assert_eq!(loaded.encode("rating_mean_bucket", "4.9").unwrap(), 2);
        assert_eq!(loaded, v);
    }
}
