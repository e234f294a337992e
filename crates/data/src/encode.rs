//! Vocabularies and bucket edges fitted on the train split only, and the feature encodings.

use std::collections::HashMap;
use std::path::Path;

use crate::error::DataError;

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

/// What an encoded feature column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureKind {
    /// One index per row.
    Categorical,
    /// A list of indices per row (padded with 0 when read).
    MultiCategorical,
    /// `dim` floats per row (a vector, or a standardised number).
    Dense,
}

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
    /// The source column, when it differs from the feature name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    /// Only the first this-many characters of a value are kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<usize>,
    /// Hashed features: the number of buckets (index = 1 + FNV-1a(value) mod buckets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_buckets: Option<usize>,
    /// Standardised numbers: train mean and standard deviation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standardize: Option<[f64; 2]>,
    /// Dense features: floats per row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dim: Option<usize>,
    #[serde(skip)]
    index: HashMap<String, u32>,
}

impl Vocabulary {
    /// A vocabulary whose index `i` is `values[i]` (`values[0]` should be [`UNKNOWN`]).
    ///
    /// ```
    /// use dssm_data::{FeatureKind, Side, Vocabulary};
    /// let v = Vocabulary::new("gender", Side::User, FeatureKind::Categorical, vec!["<unk>".into(), "F".into()]);
    /// assert_eq!((v.encode("F"), v.encode("M")), (1, 0));
    /// ```
    pub fn new(name: &str, side: Side, kind: FeatureKind, values: Vec<String>) -> Self {
        Self::from_values(name, side, kind, values)
    }

    pub(crate) fn from_values(
        name: &str,
        side: Side,
        kind: FeatureKind,
        values: Vec<String>,
    ) -> Self {
        let mut v = Self {
            name: name.to_string(),
            side,
            kind,
            values,
            edges: None,
            column: None,
            prefix: None,
            hash_buckets: None,
            standardize: None,
            dim: None,
            index: HashMap::new(),
        };
        v.build_index();
        v
    }

    /// A bucket vocabulary over ascending `edges`.
    pub(crate) fn buckets(name: &str, side: Side, edges: Vec<f64>) -> Self {
        let mut v = Self::from_values(name, side, FeatureKind::Categorical, bucket_labels(&edges));
        v.edges = Some(edges);
        v.build_index();
        v
    }

    pub(crate) fn build_index(&mut self) {
        self.index = match (&self.edges, self.hash_buckets) {
            (Some(_), _) | (_, Some(_)) => HashMap::new(),
            (None, None) => self
                .values
                .iter()
                .enumerate()
                .skip(1)
                .map(|(i, v)| (v.clone(), i as u32))
                .collect(),
        };
    }

    /// Number of indices, 0 included (0 for dense features).
    pub fn size(&self) -> usize {
        match (self.kind, self.hash_buckets) {
            (FeatureKind::Dense, _) => 0,
            (_, Some(buckets)) => buckets + 1,
            _ => self.values.len(),
        }
    }

    /// The index of a raw value; 0 when unknown, rare or empty. Bucket features parse `raw` as a
    /// number, hashed features hash it, dense features have no index (0).
    pub fn encode(&self, raw: &str) -> u32 {
        if raw.is_empty() || self.kind == FeatureKind::Dense {
            return 0;
        }
        match (&self.edges, self.hash_buckets) {
            (Some(edges), _) => raw.trim().parse::<f64>().map_or(0, |v| bucket(edges, v)),
            (None, Some(buckets)) => hash_bucket(raw, buckets),
            (None, None) => {
                let value = match self.prefix {
                    Some(n) => std::borrow::Cow::Owned(raw.chars().take(n).collect::<String>()),
                    None => std::borrow::Cow::Borrowed(raw),
                };
                self.index.get(value.as_ref()).copied().unwrap_or(0)
            }
        }
    }
}

/// 1 + FNV-1a 64 of the UTF-8 bytes, modulo `buckets`: stable across runs, machines and versions.
pub(crate) fn hash_bucket(value: &str, buckets: usize) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in value.as_bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    1 + (hash % buckets.max(1) as u64) as u32
}

pub(crate) fn bucket(edges: &[f64], value: f64) -> u32 {
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
#[derive(Debug, Clone, PartialEq)]
pub enum EncodedColumn {
    /// One index per row.
    Categorical(Vec<u32>),
    /// A list of indices per row (unknown values dropped), stored `width` wide.
    Multi {
        /// Slots per row.
        width: usize,
        /// The lists.
        lists: Vec<Vec<u32>>,
    },
    /// `dim` floats per row, row-major.
    Dense {
        /// Floats per row.
        dim: usize,
        /// The values.
        values: Vec<f32>,
    },
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

pub(crate) fn sorted_values(
    counts: HashMap<String, u64>,
    keep: impl Fn(u64) -> bool,
) -> Vec<String> {
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

pub(crate) fn quantile_edges(mut values: Vec<f64>, buckets: usize) -> Vec<f64> {
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
    /// # use dssm_data::{prepare, Dataset, DatasetKind, PrepareRequest, Source, SyntheticConfig};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let config = SyntheticConfig { users: 60, items: 50, ratings: 1_000, ..Default::default() };
    /// # let request = PrepareRequest::new(
    /// #     Source::Synthetic(config), DatasetKind::Synthetic, dir.path().join("ds"));
    /// # let dataset = Dataset::open(&prepare(&request, &|_| {})?.out_dir)?;
    /// let vocabularies = &dataset.vocabularies;
    /// assert!(vocabularies.encode("gender", "F")? > 0);
    /// assert_eq!(vocabularies.encode("gender", "X")?, 0); // never seen in train
    /// assert!(vocabularies.encode("no-such-feature", "F").is_err());
    /// # Ok::<(), dssm_data::DataError>(())
    /// ```
    pub fn encode(&self, feature: &str, raw: &str) -> Result<u32, DataError> {
        Ok(self.get(feature)?.encode(raw))
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

    #[test]
    fn buckets_follow_train_quantiles() {
        assert_eq!(
            quantile_edges(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], 4),
            vec![3.0, 5.0, 7.0]
        );
        assert_eq!(quantile_edges(vec![1.0, 1.0, 1.0, 5.0], 4), vec![5.0]);
        let edges = [2.0, 5.0];
        assert_eq!(bucket(&edges, 1.0), 1);
        assert_eq!(bucket(&edges, 2.0), 2);
        assert_eq!(bucket(&edges, 9.0), 3);
        assert_eq!(bucket(&edges, f64::NAN), 0);
        assert_eq!(
            bucket_labels(&edges),
            ["<unk>", "[-inf,2)", "[2,5)", "[5,inf)"]
        );
    }

    #[test]
    fn hashed_values_land_in_stable_buckets() {
        // FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c.
        assert_eq!(
            hash_bucket("a", 1000),
            1 + (0xaf63_dc4c_8601_ec8c_u64 % 1000) as u32
        );
        assert!((1..=7).contains(&hash_bucket("anything", 7)));
        let mut v = Vocabulary::from_values("brand", Side::Item, FeatureKind::Categorical, vec![]);
        v.hash_buckets = Some(7);
        v.build_index();
        assert_eq!(v.size(), 8);
        assert_eq!(v.encode("anything"), hash_bucket("anything", 7));
        assert_eq!(v.encode(""), 0);
    }

    #[test]
    fn prefixes_apply_when_encoding_new_values() {
        let mut v = Vocabulary::from_values(
            "zip_prefix",
            Side::User,
            FeatureKind::Categorical,
            vec![UNKNOWN.into(), "48".into()],
        );
        v.prefix = Some(2);
        v.build_index();
        assert_eq!(v.encode("48067"), 1);
        assert_eq!(v.encode("12345"), 0);
    }

    #[test]
    fn vocabularies_round_trip_through_json() {
        let dir = tempfile::tempdir().unwrap();
        let mut hashed =
            Vocabulary::from_values("brand", Side::Item, FeatureKind::Categorical, vec![]);
        hashed.hash_buckets = Some(16);
        let v = Vocabularies {
            min_frequency: MinFrequency::Share(0.01),
            train_rows: 10,
            features: vec![
                Vocabulary::buckets("price", Side::Item, vec![2.0, 5.0]),
                hashed,
            ],
        };
        let path = dir.path().join("v.json");
        v.save(&path).unwrap();
        let loaded = Vocabularies::load(&path).unwrap();
        assert_eq!(loaded.encode("price", "4.9").unwrap(), 2);
        assert_eq!(loaded.get("brand").unwrap().size(), 17);
        assert_eq!(loaded, v);
    }
}
