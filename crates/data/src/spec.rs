//! The dataset spec: a TOML file naming a user's own interaction log, its optional user and item
//! tables, each feature's kind, the label rule and the split. [`DatasetSpec::load`] parses and
//! checks it before any data is read; [`crate::prepare_spec`] turns it into a dataset folder.
//!
//! ```
//! use dssm_data::spec::{DatasetSpec, FeatureDecl};
//! let spec = DatasetSpec::from_toml_str(r#"
//!     name = "shop"
//!     [interactions]
//!     path = "clicks.csv"
//!     user = "customer"
//!     item = "sku"
//!     timestamp = "ts"
//!     [split]
//!     kind = "leave-last-out"
//!     [items]
//!     path = "products.parquet"
//!     [[items.features]]
//!     name = "sku"
//!     kind = "categorical"
//!     [[items.features]]
//!     name = "tags"
//!     kind = "multi_categorical"
//!     delimiter = "|"
//!     max_len = 5
//! "#, "shop.toml".as_ref())?;
//! assert_eq!(spec.items.features.len(), 2);
//! assert!(matches!(spec.items.features[1], FeatureDecl::MultiCategorical { .. }));
//! # Ok::<(), dssm_data::DataError>(())
//! ```

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::encode::{ItemStatistics, MinFrequency, Side};
use crate::error::DataError;

/// A dataset spec (see the module docs and README's "Your own data").
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSpec {
    /// The dataset's name, recorded in the manifest.
    pub name: String,
    /// Default rare-value rule of categorical features: keep a value seen in at least this many
    /// train rows. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_count: Option<u64>,
    /// Default rare-value rule as a share of the train rows (instead of `min_count`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_share: Option<f64>,
    /// The interaction log.
    pub interactions: InteractionsSpec,
    /// Which interactions are positives. Default: every one (implicit feedback).
    #[serde(default)]
    pub label: LabelRule,
    /// How rows are split into train, validation and test. Default: `seed` with seed 42.
    #[serde(default)]
    pub split: SplitSpec,
    /// The users: their table (optional) and features.
    #[serde(default)]
    pub users: EntitySpec,
    /// The items: their table (optional) and features.
    #[serde(default)]
    pub items: EntitySpec,
    /// Rows behind `train_statistic` features. Default `train` (leak-free).
    #[serde(default)]
    pub item_statistics: ItemStatistics,
}

/// The interaction log: one row per (user, item) event.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InteractionsSpec {
    /// CSV or Parquet file, relative to the spec file.
    pub path: PathBuf,
    /// File format; default from the extension (`.csv`, `.tsv`, `.parquet`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<FileFormat>,
    /// CSV field delimiter (one character). Default `,` (tab for `.tsv`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delimiter: Option<char>,
    /// Column holding the user key (string or integer).
    pub user: String,
    /// Column holding the item key (string or integer).
    pub item: String,
    /// Optional time column: integer Unix seconds, a Parquet timestamp or date, or text such as
    /// `2024-03-01` / `2024-03-01T12:00:00Z`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    /// Optional numeric rating column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rating: Option<String>,
}

/// A table file's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileFormat {
    /// Comma (or `delimiter`) separated text with a header row.
    Csv,
    /// Apache Parquet.
    Parquet,
}

impl FileFormat {
    /// The format named by a path's extension, if any.
    pub fn from_path(path: &Path) -> Option<Self> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "csv" | "tsv" | "txt" => Some(Self::Csv),
            "parquet" | "pq" => Some(Self::Parquet),
            _ => None,
        }
    }
}

/// Which interactions are positives.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum LabelRule {
    /// Every interaction is a positive (clicks, purchases, plays).
    #[default]
    Implicit,
    /// Positive when the rating is above `threshold` (MovieLens: 3).
    RatingAbove {
        /// The threshold.
        threshold: f64,
    },
    /// Positive when this column of the interactions is non-zero (or `true`).
    Column {
        /// The label column.
        column: String,
    },
}

/// A time point in a spec: Unix seconds or a date/time text.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum TimePoint {
    /// Unix seconds.
    Seconds(i64),
    /// `YYYY-MM-DD`, `YYYY-MM-DDTHH:MM:SS` (optionally with `Z` or an offset) or with a space.
    Text(String),
}

impl TimePoint {
    /// Unix seconds, or `None` when the text is not a date or time.
    pub fn seconds(&self) -> Option<i64> {
        match self {
            Self::Seconds(s) => Some(*s),
            Self::Text(t) => crate::table::parse_time(t),
        }
    }
}

/// How rows are split.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", deny_unknown_fields)]
pub enum SplitSpec {
    /// Random over rows: 20% test, 10% of the rest validation (train 72 / val 8 / test 20).
    #[serde(rename = "seed")]
    Seed {
        /// The split's seed. Default 42.
        #[serde(default = "default_seed")]
        seed: u64,
    },
    /// Per user by (timestamp, row): last -> test, second-last -> validation (users with fewer
    /// than 3 rows keep all in train). Without a timestamp column the file order decides.
    #[serde(rename = "leave-last-out")]
    LeaveLastOut,
    /// A global time cutoff: before `val_from` -> train, from `val_from` -> validation, from
    /// `test_from` -> test. Rows without a timestamp go to train.
    #[serde(rename = "time")]
    Time {
        /// Start of the validation period.
        val_from: TimePoint,
        /// Start of the test period.
        test_from: TimePoint,
    },
}

fn default_seed() -> u64 {
    42
}

impl Default for SplitSpec {
    fn default() -> Self {
        Self::Seed { seed: 42 }
    }
}

/// What to do with interactions whose user or item the feature table lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissingPolicy {
    /// Refuse the data, naming the first such row.
    #[default]
    Error,
    /// Drop those interactions (counted in the manifest).
    Drop,
}

/// One side's table and features.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntitySpec {
    /// CSV or Parquet file with one row per user (item), relative to the spec file. Without it the
    /// users (items) are the distinct keys of the interactions and only the key is a feature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// File format; default from the extension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<FileFormat>,
    /// CSV field delimiter. Default `,` (tab for `.tsv`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delimiter: Option<char>,
    /// Key column of the table. Default: the interactions' user (item) column name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Interactions whose key is not in the table. Default `error`.
    #[serde(default)]
    pub missing: MissingPolicy,
    /// Raw columns kept (as text) in users.parquet / items.parquet for showing results.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub display: Vec<String>,
    /// The features of this side, in tower order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<FeatureDecl>,
}

/// How a `numeric` feature is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NumericEncoding {
    /// Quantile buckets fitted on train (a categorical feature; missing -> 0).
    #[default]
    Buckets,
    /// `(x - mean) / std` fitted on train, as a one-float dense feature (missing -> 0).
    Standardize,
}

/// A per-item statistic over the train interactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Statistic {
    /// Number of train interactions.
    Count,
    /// Mean train rating (needs `interactions.rating`).
    RatingMean,
}

/// One feature: its name (`feature.<name>` in the dataset folder), source column and kind.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum FeatureDecl {
    /// One value per row; values seen in fewer train rows than the rule map to index 0.
    Categorical {
        /// Feature name.
        name: String,
        /// Source column (default: `name`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        column: Option<String>,
        /// Keep only the first this-many characters (e.g. a zip-code prefix).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prefix: Option<usize>,
        /// Overrides the spec's `min_count`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min_count: Option<u64>,
        /// Overrides the spec's `min_share`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min_share: Option<f64>,
    },
    /// A list per row: a list column, a `[a, b]` text or a `delimiter`-separated text.
    MultiCategorical {
        /// Feature name.
        name: String,
        /// Source column (default: `name`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        column: Option<String>,
        /// Separator inside a text cell. Default `|`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        delimiter: Option<char>,
        /// Longest list kept (first values win). Default: the longest list in the table.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_len: Option<usize>,
        /// Overrides the spec's `min_count`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min_count: Option<u64>,
        /// Overrides the spec's `min_share`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min_share: Option<f64>,
    },
    /// A number per row, bucketed or standardised with train-fitted parameters.
    Numeric {
        /// Feature name.
        name: String,
        /// Source column (default: `name`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        column: Option<String>,
        /// Default `buckets`.
        #[serde(default)]
        encoding: NumericEncoding,
        /// Number of quantile buckets. Default 10.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        buckets: Option<usize>,
    },
    /// A fixed-length float vector per row (a precomputed embedding): a list column or a text
    /// `[0.1, 0.2]` / `0.1 0.2`.
    Vector {
        /// Feature name.
        name: String,
        /// Source column (default: `name`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        column: Option<String>,
        /// Number of floats.
        dim: usize,
    },
    /// A categorical value hashed into a fixed number of buckets (no vocabulary; 0 = missing).
    Hashed {
        /// Feature name.
        name: String,
        /// Source column (default: `name`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        column: Option<String>,
        /// Number of hash buckets.
        buckets: usize,
    },
    /// Items only: a train statistic of the item in quantile buckets (0 = no train rows).
    TrainStatistic {
        /// Feature name.
        name: String,
        /// Which statistic.
        statistic: Statistic,
        /// Number of quantile buckets. Default 10.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        buckets: Option<usize>,
    },
}

impl FeatureDecl {
    /// The feature's name.
    pub fn name(&self) -> &str {
        match self {
            Self::Categorical { name, .. }
            | Self::MultiCategorical { name, .. }
            | Self::Numeric { name, .. }
            | Self::Vector { name, .. }
            | Self::Hashed { name, .. }
            | Self::TrainStatistic { name, .. } => name,
        }
    }

    /// The source column, `None` for a train statistic.
    pub fn column(&self) -> Option<&str> {
        match self {
            Self::Categorical { name, column, .. }
            | Self::MultiCategorical { name, column, .. }
            | Self::Numeric { name, column, .. }
            | Self::Vector { name, column, .. }
            | Self::Hashed { name, column, .. } => Some(column.as_deref().unwrap_or(name)),
            Self::TrainStatistic { .. } => None,
        }
    }

    /// The rare-value rule of a (multi-)categorical feature, given the spec's default.
    pub(crate) fn min_frequency(&self, default: MinFrequency) -> MinFrequency {
        match self {
            Self::Categorical {
                min_count,
                min_share,
                ..
            }
            | Self::MultiCategorical {
                min_count,
                min_share,
                ..
            } => frequency_rule(*min_count, *min_share).unwrap_or(default),
            _ => default,
        }
    }
}

fn frequency_rule(min_count: Option<u64>, min_share: Option<f64>) -> Option<MinFrequency> {
    match (min_count, min_share) {
        (_, Some(share)) => Some(MinFrequency::Share(share)),
        (Some(count), None) => Some(MinFrequency::Count(count)),
        (None, None) => None,
    }
}

impl DatasetSpec {
    /// Reads and checks a spec file; relative paths in it are resolved against its folder.
    pub fn load(path: &Path) -> Result<Self, DataError> {
        let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
        let mut spec = Self::from_toml_str(&text, path)?;
        let base = path.parent().unwrap_or(Path::new(""));
        spec.resolve_paths(base);
        Ok(spec)
    }

    /// Parses and checks spec text; `path` names it in errors. Paths are left as written.
    pub fn from_toml_str(text: &str, path: &Path) -> Result<Self, DataError> {
        let spec: Self = toml::from_str(text).map_err(|err| {
            let (line, column) = err
                .span()
                .map_or((0, 0), |span| line_column(text, span.start));
            DataError::Spec {
                path: path.to_path_buf(),
                line,
                column,
                message: err.message().trim().to_string(),
            }
        })?;
        spec.check().map_err(|message| DataError::SpecInvalid {
            path: path.to_path_buf(),
            message,
        })?;
        Ok(spec)
    }

    /// The spec as TOML.
    pub fn to_toml_string(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot serialise: {e}\n"))
    }

    fn resolve_paths(&mut self, base: &Path) {
        let join = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        join(&mut self.interactions.path);
        for side in [&mut self.users, &mut self.items] {
            if let Some(p) = side.path.as_mut() {
                join(p);
            }
        }
    }

    /// The spec-wide rare-value rule.
    pub fn min_frequency(&self) -> MinFrequency {
        frequency_rule(self.min_count, self.min_share).unwrap_or_default()
    }

    /// One side's spec.
    pub fn side(&self, side: Side) -> &EntitySpec {
        match side {
            Side::User => &self.users,
            Side::Item => &self.items,
        }
    }

    /// The interactions' key column of a side.
    pub fn key_column(&self, side: Side) -> &str {
        match side {
            Side::User => &self.interactions.user,
            Side::Item => &self.interactions.item,
        }
    }

    /// Checks everything that does not need the data; the message names the key.
    pub fn check(&self) -> Result<(), String> {
        if self.name.trim().is_empty() {
            return Err("name: must not be empty".into());
        }
        check_share("min_share", self.min_share)?;
        let i = &self.interactions;
        for (key, column) in [
            ("interactions.user", &i.user),
            ("interactions.item", &i.item),
        ] {
            if column.is_empty() {
                return Err(format!("{key}: must name a column"));
            }
        }
        check_format("interactions", &i.path, i.format)?;
        match &self.label {
            LabelRule::RatingAbove { threshold }
                if i.rating.is_none() || !threshold.is_finite() =>
            {
                return Err(
                    "label: kind = \"rating_above\" needs interactions.rating and a finite threshold"
                        .into(),
                );
            }
            LabelRule::Column { column } if column.is_empty() => {
                return Err("label.column: must name a column".into());
            }
            _ => {}
        }
        self.check_split()?;
        let mut names = HashSet::new();
        for side in [Side::User, Side::Item] {
            self.check_side(side, &mut names)?;
        }
        Ok(())
    }

    fn check_split(&self) -> Result<(), String> {
        let SplitSpec::Time {
            val_from,
            test_from,
        } = &self.split
        else {
            return Ok(());
        };
        if self.interactions.timestamp.is_none() {
            return Err("split: kind = \"time\" needs interactions.timestamp".into());
        }
        let parse = |key: &str, t: &TimePoint| {
            t.seconds().ok_or_else(|| {
                format!(
                    "split.{key}: expected Unix seconds or a date such as 2024-03-01, found {t:?}"
                )
            })
        };
        let (val, test) = (parse("val_from", val_from)?, parse("test_from", test_from)?);
        if val > test {
            return Err(format!(
                "split: val_from ({val}) must not be after test_from ({test})"
            ));
        }
        Ok(())
    }

    fn check_side(&self, side: Side, names: &mut HashSet<String>) -> Result<(), String> {
        let spec = self.side(side);
        let section = side_name(side);
        if let Some(path) = &spec.path {
            check_format(section, path, spec.format)?;
        } else if !spec.display.is_empty() {
            return Err(format!("{section}.display: needs {section}.path"));
        }
        for (n, feature) in spec.features.iter().enumerate() {
            let key = format!("{section}.features[{n}] ({:?})", feature.name());
            if feature.name().is_empty() {
                return Err(format!("{key}: name must not be empty"));
            }
            if !names.insert(feature.name().to_string()) {
                return Err(format!("{key}: the name is used twice"));
            }
            self.check_feature(side, feature)
                .map_err(|m| format!("{key}: {m}"))?;
            if let Some(column) = feature.column()
                && spec.path.is_none()
                && column != self.key_column(side)
            {
                return Err(format!(
                    "{key}: column {column:?} needs {section}.path (without a table only the key {:?} is known)",
                    self.key_column(side)
                ));
            }
        }
        Ok(())
    }

    fn check_feature(&self, side: Side, feature: &FeatureDecl) -> Result<(), String> {
        match feature {
            FeatureDecl::Categorical {
                prefix, min_share, ..
            } => {
                if *prefix == Some(0) {
                    return Err("prefix must be at least 1".into());
                }
                check_share("min_share", *min_share)
            }
            FeatureDecl::MultiCategorical {
                max_len, min_share, ..
            } => {
                if *max_len == Some(0) {
                    return Err("max_len must be at least 1".into());
                }
                check_share("min_share", *min_share)
            }
            FeatureDecl::Numeric { buckets, .. } | FeatureDecl::TrainStatistic { buckets, .. }
                if *buckets == Some(0) =>
            {
                Err("buckets must be at least 1".into())
            }
            FeatureDecl::Hashed { buckets: 0, .. } => Err("buckets must be at least 1".into()),
            FeatureDecl::Vector { dim: 0, .. } => Err("dim must be at least 1".into()),
            FeatureDecl::TrainStatistic { .. } if side == Side::User => {
                Err("train_statistic features are item features".into())
            }
            FeatureDecl::TrainStatistic {
                statistic: Statistic::RatingMean,
                ..
            } if self.interactions.rating.is_none() => {
                Err("statistic = \"rating_mean\" needs interactions.rating".into())
            }
            _ => Ok(()),
        }
    }
}

/// `users` or `items`.
pub(crate) fn side_name(side: Side) -> &'static str {
    match side {
        Side::User => "users",
        Side::Item => "items",
    }
}

fn check_share(key: &str, share: Option<f64>) -> Result<(), String> {
    match share {
        Some(s) if !(0.0..=1.0).contains(&s) => Err(format!("{key} must be in 0..=1, not {s}")),
        _ => Ok(()),
    }
}

fn check_format(section: &str, path: &Path, format: Option<FileFormat>) -> Result<(), String> {
    if format.is_none() && FileFormat::from_path(path).is_none() {
        return Err(format!(
            "{section}.path: cannot tell the format of {} from its extension; set {section}.format = \"csv\" or \"parquet\"",
            path.display()
        ));
    }
    Ok(())
}

/// 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |n| before.len() - n - 1)
        + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str =
        "name = \"shop\"\n[interactions]\npath = \"a.csv\"\nuser = \"u\"\nitem = \"i\"\n";

    fn parse(text: &str) -> Result<DatasetSpec, DataError> {
        DatasetSpec::from_toml_str(text, Path::new("shop.toml"))
    }

    #[test]
    fn defaults_are_implicit_labels_and_the_seed_split() {
        let spec = parse(MINIMAL).unwrap();
        assert_eq!(spec.label, LabelRule::Implicit);
        assert_eq!(spec.split, SplitSpec::Seed { seed: 42 });
        assert_eq!(spec.min_frequency(), MinFrequency::Count(1));
        assert!(spec.users.path.is_none());
        // Round trip through TOML.
        assert_eq!(parse(&spec.to_toml_string()).unwrap(), spec);
    }

    #[test]
    fn an_unknown_key_is_named_with_its_line_and_column() {
        let text = format!(
            "{MINIMAL}[[items.features]]\nname = \"x\"\nkind = \"categorical\"\ncolour = 1\n"
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.starts_with("shop.toml:"), "{err}");
        assert!(err.contains("colour"), "{err}");
        let text = format!("{MINIMAL}[[items.features]]\nname = \"x\"\nkind = \"colour\"\n");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("shop.toml:8:"), "{err}");
        assert!(err.contains("colour"), "{err}");
    }

    #[test]
    fn inconsistent_specs_are_refused_naming_the_key() {
        let cases = [
            (
                "[label]\nkind = \"rating_above\"\nthreshold = 3\n",
                "interactions.rating",
            ),
            (
                "[split]\nkind = \"time\"\nval_from = 5\ntest_from = 9\n",
                "interactions.timestamp",
            ),
            (
                "[[items.features]]\nname = \"x\"\nkind = \"vector\"\ndim = 0\n",
                "dim",
            ),
            (
                "[[items.features]]\nname = \"i\"\nkind = \"categorical\"\n[[items.features]]\nname = \"i\"\nkind = \"hashed\"\nbuckets = 4\n",
                "twice",
            ),
            (
                "[[users.features]]\nname = \"p\"\nkind = \"train_statistic\"\nstatistic = \"count\"\n",
                "item features",
            ),
            (
                "[[items.features]]\nname = \"price\"\nkind = \"numeric\"\n",
                "items.path",
            ),
        ];
        for (extra, expected) in cases {
            let err = parse(&format!("{MINIMAL}{extra}")).unwrap_err();
            assert!(matches!(err, DataError::SpecInvalid { .. }), "{err}");
            assert!(err.to_string().contains(expected), "{expected}: {err}");
        }
    }

    #[test]
    fn time_points_accept_seconds_and_dates() {
        assert_eq!(TimePoint::Seconds(5).seconds(), Some(5));
        assert_eq!(TimePoint::Text("1970-01-02".into()).seconds(), Some(86_400));
        assert_eq!(
            TimePoint::Text("1970-01-01T00:01:00Z".into()).seconds(),
            Some(60)
        );
        assert_eq!(TimePoint::Text("soon".into()).seconds(), None);
        let text = format!(
            "{MINIMAL}timestamp = \"t\"\n[split]\nkind = \"time\"\nval_from = \"2024-03-09\"\ntest_from = \"2024-03-01\"\n"
        );
        // `timestamp` landed in [interactions] (the last table before [split]).
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("must not be after"), "{err}");
    }
}
