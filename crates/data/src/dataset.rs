//! The dataset folder: manifest, schema, vocabularies and Parquet tables; its writer and reader.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Int64Array, ListArray, RecordBatch, StringArray, UInt8Array, UInt32Array,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Schema as ArrowSchema};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use crate::encode::{EncodedColumn, FeatureKind, ItemTrainStats, MinFrequency, Side, Vocabularies};
use crate::error::DataError;
use crate::raw::{RawData, SourceFile};
use crate::split::{Protocol, Split};
use crate::synthetic::SyntheticConfig;

/// File names inside a dataset folder.
pub mod files {
    /// The manifest.
    pub const MANIFEST: &str = "manifest.json";
    /// The feature schema.
    pub const SCHEMA: &str = "schema.json";
    /// The vocabularies.
    pub const VOCABULARIES: &str = "vocabularies.json";
    /// One row per user.
    pub const USERS: &str = "users.parquet";
    /// One row per movie.
    pub const ITEMS: &str = "items.parquet";
}

/// Rows (or positives) per split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct SplitCounts {
    /// Train.
    pub train: u64,
    /// Validation.
    pub val: u64,
    /// Test.
    pub test: u64,
}

impl SplitCounts {
    /// The count of one split.
    pub fn get(&self, split: Split) -> u64 {
        match split {
            Split::Train => self.train,
            Split::Val => self.val,
            Split::Test => self.test,
        }
    }

    fn add(&mut self, split: Split, n: u64) {
        match split {
            Split::Train => self.train += n,
            Split::Val => self.val += n,
            Split::Test => self.test += n,
        }
    }

    /// Sum over splits.
    pub fn total(&self) -> u64 {
        self.train + self.val + self.test
    }
}

/// manifest.json: where the dataset came from and what it holds.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    /// Layout version of the dataset folder (1).
    pub format_version: u32,
    /// `ml-1m`, `ml-100k` or `synthetic`.
    pub dataset: String,
    /// Split protocol.
    pub protocol: Protocol,
    /// Split seed (unused by `leave-last-out`, recorded anyway).
    pub seed: u64,
    /// Label = rating > this.
    pub label_threshold: u8,
    /// Rare-value rule of the vocabularies.
    pub min_frequency: MinFrequency,
    /// Number of quantile buckets of the per-movie rating mean and count.
    pub rating_buckets: usize,
    /// Rows behind the rating mean/count bucket features (`all_rows` = the reference's leak).
    #[serde(default)]
    pub item_statistics: crate::encode::ItemStatistics,
    /// Source files with md5 and sizes.
    pub source_files: Vec<SourceFile>,
    /// Generator settings when the dataset is synthetic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synthetic: Option<SyntheticConfig>,
    /// Rows per split.
    pub rows: SplitCounts,
    /// Positive rows per split.
    pub positives: SplitCounts,
    /// Users in users.parquet.
    pub users: u64,
    /// Movies in items.parquet.
    pub items: u64,
    /// Movies with at least one rating (any split).
    pub rated_items: u64,
    /// Movies with at least one train rating.
    pub train_items: u64,
    /// Share of positive rows over all splits.
    pub positive_share: f64,
    /// The command that created the dataset, as passed by the caller.
    pub command: String,
    /// Creation time, RFC 3339 UTC.
    pub created_at: String,
    /// Version of dssm-data that wrote it.
    pub crate_version: String,
}

/// One feature in schema.json.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FeatureSpec {
    /// Feature name; its column is `feature.<name>`.
    pub name: String,
    /// Tower.
    pub side: Side,
    /// Single or multi-valued.
    pub kind: FeatureKind,
    /// Number of indices, 0 included.
    pub vocab_size: usize,
    /// Longest list (multi-valued features only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_len: Option<usize>,
}

/// schema.json: the feature list.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Schema {
    /// User features then item features, in column order.
    pub features: Vec<FeatureSpec>,
    /// Label = rating > this.
    pub label_threshold: u8,
}

impl Schema {
    /// Features of one side.
    pub fn side(&self, side: Side) -> impl Iterator<Item = &FeatureSpec> {
        self.features.iter().filter(move |f| f.side == side)
    }
}

/// Encoded features of a table, one column per feature.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FeatureTable {
    /// Number of rows.
    pub rows: usize,
    /// Columns in schema order.
    pub columns: Vec<FeatureColumn>,
}

impl FeatureTable {
    /// The column of a feature.
    pub fn get(&self, name: &str) -> Option<&FeatureColumn> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// One encoded feature column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureColumn {
    /// Feature name (without the `feature.` prefix).
    pub name: String,
    /// Values.
    pub values: FeatureValues,
}

/// Values of an encoded feature column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeatureValues {
    /// One index per row.
    Categorical(Vec<u32>),
    /// `rows * max_len` indices, row-major, padded with 0.
    Multi {
        /// Width of each row.
        max_len: usize,
        /// The padded indices.
        values: Vec<u32>,
    },
}

/// users.parquet in memory.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserTable {
    /// Raw user ids; the position is the user row.
    pub user_id: Vec<u32>,
    /// `M` or `F`.
    pub gender: Vec<String>,
    /// Raw age (group code).
    pub age: Vec<u32>,
    /// Raw occupation code.
    pub occupation: Vec<u32>,
    /// Raw zip code.
    pub zip_code: Vec<String>,
    /// Encoded user features.
    pub features: FeatureTable,
}

/// items.parquet in memory.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ItemTable {
    /// Raw movie ids; the position is the item row.
    pub movie_id: Vec<u32>,
    /// Titles.
    pub title: Vec<String>,
    /// Year from the title.
    pub year: Vec<Option<u32>>,
    /// Raw genres `A|B`.
    pub genres: Vec<String>,
    /// Train interactions per movie.
    pub train_count: Vec<u32>,
    /// Encoded item features.
    pub features: FeatureTable,
}

/// One split's rows, column by column.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Interactions {
    /// Raw user ids.
    pub user_id: Vec<u32>,
    /// Raw movie ids.
    pub movie_id: Vec<u32>,
    /// Rows in the users table.
    pub user_row: Vec<u32>,
    /// Rows in the items table.
    pub item_row: Vec<u32>,
    /// Ratings 1..=5.
    pub rating: Vec<u8>,
    /// Unix seconds, `None` when the line had none.
    pub timestamp: Vec<Option<i64>>,
    /// 1-based line in the ratings file.
    pub line: Vec<u32>,
    /// 1 when rating > threshold.
    pub label: Vec<u8>,
}

impl Interactions {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.user_id.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.user_id.is_empty()
    }
}

/// An opened dataset folder.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// The folder.
    pub dir: PathBuf,
    /// manifest.json.
    pub manifest: Manifest,
    /// schema.json.
    pub schema: Schema,
    /// vocabularies.json.
    pub vocabularies: Vocabularies,
    /// users.parquet.
    pub users: UserTable,
    /// items.parquet.
    pub items: ItemTable,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, DataError> {
    let text = fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| DataError::json(path, e))
}

pub(crate) fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), DataError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| DataError::json(path, e))?;
    fs::write(path, text + "\n").map_err(|e| DataError::io(path, e))
}

impl Dataset {
    /// Opens a dataset folder: reads the JSON files and the users and items tables.
    ///
    /// ```no_run
    /// use dssm_data::{Dataset, Split};
    /// let dataset = Dataset::open("datasets/ml-1m-seed".as_ref())?;
    /// let train = dataset.interactions(Split::Train)?;
    /// println!("{} train rows, {} items", train.len(), dataset.items.movie_id.len());
    /// # Ok::<(), dssm_data::DataError>(())
    /// ```
    pub fn open(dir: &Path) -> Result<Self, DataError> {
        let manifest: Manifest = read_json(&dir.join(files::MANIFEST))?;
        let schema: Schema = read_json(&dir.join(files::SCHEMA))?;
        let vocabularies = Vocabularies::load(&dir.join(files::VOCABULARIES))?;
        let users = read_users(&dir.join(files::USERS), &schema)?;
        let items = read_items(&dir.join(files::ITEMS), &schema)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            manifest,
            schema,
            vocabularies,
            users,
            items,
        })
    }

    /// Reads one split.
    pub fn interactions(&self, split: Split) -> Result<Interactions, DataError> {
        read_interactions(&self.dir.join(format!("{}.parquet", split.name())))
    }
}

// ---- Writing ----

fn write_parquet(path: &Path, batch: &RecordBatch) -> Result<(), DataError> {
    let file = File::create(path).map_err(|e| DataError::io(path, e))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(props))
        .map_err(|e| DataError::parquet(path, e))?;
    writer
        .write(batch)
        .map_err(|e| DataError::parquet(path, e))?;
    writer.close().map_err(|e| DataError::parquet(path, e))?;
    Ok(())
}

fn batch(path: &Path, columns: Vec<(Field, ArrayRef)>) -> Result<RecordBatch, DataError> {
    let (fields, arrays): (Vec<Field>, Vec<ArrayRef>) = columns.into_iter().unzip();
    RecordBatch::try_new(Arc::new(ArrowSchema::new(fields)), arrays)
        .map_err(|e| DataError::parquet(path, e))
}

fn u32_col(name: &str, values: Vec<u32>) -> (Field, ArrayRef) {
    (
        Field::new(name, DataType::UInt32, false),
        Arc::new(UInt32Array::from(values)),
    )
}

fn str_col<S: AsRef<str>>(name: &str, values: impl Iterator<Item = S>) -> (Field, ArrayRef) {
    let array: StringArray = values.map(Some).collect();
    (Field::new(name, DataType::Utf8, false), Arc::new(array))
}

fn list_field(name: &str) -> Field {
    Field::new(
        name,
        DataType::List(Arc::new(Field::new_list_field(DataType::UInt32, false))),
        false,
    )
}

fn encoded_cols(columns: Vec<(String, EncodedColumn)>) -> Vec<(Field, ArrayRef)> {
    columns
        .into_iter()
        .map(|(name, column)| {
            let name = format!("feature.{name}");
            match column {
                EncodedColumn::Categorical(v) => u32_col(&name, v),
                EncodedColumn::Multi(lists) => {
                    let offsets = OffsetBuffer::from_lengths(lists.iter().map(Vec::len));
                    let values: Vec<u32> = lists.into_iter().flatten().collect();
                    let array = ListArray::new(
                        Arc::new(Field::new_list_field(DataType::UInt32, false)),
                        offsets,
                        Arc::new(UInt32Array::from(values)),
                        None,
                    );
                    let array: ArrayRef = Arc::new(array);
                    (list_field(&name), array)
                }
            }
        })
        .collect()
}

/// What [`write_tables`] needs besides the raw data.
pub(crate) struct TablesInput<'a> {
    pub raw: &'a RawData,
    pub splits: &'a [Split],
    pub vocabularies: &'a Vocabularies,
    pub item_stats: &'a [ItemTrainStats],
    /// The statistics the rating mean/count bucket features encode (= `item_stats` unless leaky).
    pub bucket_stats: &'a [ItemTrainStats],
    pub label_threshold: u8,
}

/// Writes schema.json, vocabularies.json and the five Parquet files into `dir`; returns the
/// schema and the rows and positives per split.
pub(crate) fn write_tables(
    dir: &Path,
    input: &TablesInput<'_>,
    mut on_file: impl FnMut(&str),
) -> Result<(Schema, SplitCounts, SplitCounts), DataError> {
    let TablesInput {
        raw,
        splits,
        vocabularies,
        item_stats,
        bucket_stats,
        label_threshold,
    } = *input;

    // Users.
    let user_features = vocabularies.encode_users(&raw.users)?;
    let path = dir.join(files::USERS);
    on_file(files::USERS);
    let mut cols = vec![
        u32_col("user_id", raw.users.iter().map(|u| u.user_id).collect()),
        str_col("gender", raw.users.iter().map(|u| u.gender.as_str())),
        u32_col("age", raw.users.iter().map(|u| u.age).collect()),
        u32_col(
            "occupation",
            raw.users.iter().map(|u| u.occupation).collect(),
        ),
        str_col("zip_code", raw.users.iter().map(|u| u.zip_code.as_str())),
    ];
    cols.extend(encoded_cols(user_features));
    write_parquet(&path, &batch(&path, cols)?)?;

    // Items.
    let item_features = vocabularies.encode_items(&raw.movies, bucket_stats)?;
    let genres_max_len = item_features
        .iter()
        .find_map(|(_, c)| match c {
            EncodedColumn::Multi(lists) => lists.iter().map(Vec::len).max(),
            EncodedColumn::Categorical(_) => None,
        })
        .unwrap_or(0)
        .max(1);
    let path = dir.join(files::ITEMS);
    on_file(files::ITEMS);
    let years: UInt32Array = raw.movies.iter().map(|m| m.year).collect();
    let mut cols = vec![
        u32_col("movie_id", raw.movies.iter().map(|m| m.movie_id).collect()),
        str_col("title", raw.movies.iter().map(|m| m.title.as_str())),
        (
            Field::new("year", DataType::UInt32, true),
            Arc::new(years) as ArrayRef,
        ),
        str_col("genres", raw.movies.iter().map(|m| m.genres.join("|"))),
        u32_col("train_count", item_stats.iter().map(|s| s.count).collect()),
    ];
    cols.extend(encoded_cols(item_features));
    write_parquet(&path, &batch(&path, cols)?)?;

    // Schema and vocabularies.
    let schema = Schema {
        features: vocabularies
            .features
            .iter()
            .map(|v| FeatureSpec {
                name: v.name.clone(),
                side: v.side,
                kind: v.kind,
                vocab_size: v.size(),
                max_len: (v.kind == FeatureKind::MultiCategorical).then_some(genres_max_len),
            })
            .collect(),
        label_threshold,
    };
    on_file(files::SCHEMA);
    write_json(&dir.join(files::SCHEMA), &schema)?;
    on_file(files::VOCABULARIES);
    vocabularies.save(&dir.join(files::VOCABULARIES))?;

    // Splits, each in ratings-file order.
    let mut rows = SplitCounts::default();
    let mut positives = SplitCounts::default();
    for split in Split::ALL {
        let name = format!("{}.parquet", split.name());
        on_file(&name);
        let path = dir.join(&name);
        let chosen: Vec<&crate::raw::RawRating> = raw
            .ratings
            .iter()
            .zip(splits)
            .filter(|(_, s)| **s == split)
            .map(|(r, _)| r)
            .collect();
        let labels: Vec<u8> = chosen
            .iter()
            .map(|r| u8::from(r.rating > label_threshold))
            .collect();
        rows.add(split, chosen.len() as u64);
        positives.add(split, labels.iter().map(|&l| u64::from(l)).sum());
        let timestamps: Int64Array = chosen.iter().map(|r| r.timestamp).collect();
        let cols = vec![
            u32_col("user_id", chosen.iter().map(|r| r.user_id).collect()),
            u32_col("movie_id", chosen.iter().map(|r| r.movie_id).collect()),
            u32_col("user_row", chosen.iter().map(|r| r.user_row).collect()),
            u32_col("item_row", chosen.iter().map(|r| r.item_row).collect()),
            (
                Field::new("rating", DataType::UInt8, false),
                Arc::new(UInt8Array::from(
                    chosen.iter().map(|r| r.rating).collect::<Vec<_>>(),
                )) as ArrayRef,
            ),
            (
                Field::new("timestamp", DataType::Int64, true),
                Arc::new(timestamps) as ArrayRef,
            ),
            u32_col("line", chosen.iter().map(|r| r.line).collect()),
            (
                Field::new("label", DataType::UInt8, false),
                Arc::new(UInt8Array::from(labels)) as ArrayRef,
            ),
        ];
        write_parquet(&path, &batch(&path, cols)?)?;
    }
    Ok((schema, rows, positives))
}

// ---- Reading ----

fn read_batches(path: &Path) -> Result<Vec<RecordBatch>, DataError> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| DataError::parquet(path, e))?
        .with_batch_size(1 << 16)
        .build()
        .map_err(|e| DataError::parquet(path, e))?;
    reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| DataError::parquet(path, e))
}

fn column<'a, T: 'static>(
    path: &Path,
    batch: &'a RecordBatch,
    name: &str,
    expected: &str,
) -> Result<&'a T, DataError> {
    batch
        .column_by_name(name)
        .ok_or_else(|| DataError::parquet(path, format!("missing column {name:?}")))?
        .as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| DataError::parquet(path, format!("column {name:?} is not {expected}")))
}

fn u32s(path: &Path, batches: &[RecordBatch], name: &str) -> Result<Vec<u32>, DataError> {
    let mut out = Vec::with_capacity(batches.iter().map(RecordBatch::num_rows).sum());
    for b in batches {
        let a: &UInt32Array = column(path, b, name, "UInt32")?;
        if a.null_count() > 0 {
            return Err(DataError::parquet(
                path,
                format!("column {name:?} has nulls"),
            ));
        }
        out.extend_from_slice(a.values());
    }
    Ok(out)
}

fn u8s(path: &Path, batches: &[RecordBatch], name: &str) -> Result<Vec<u8>, DataError> {
    let mut out = Vec::with_capacity(batches.iter().map(RecordBatch::num_rows).sum());
    for b in batches {
        let a: &UInt8Array = column(path, b, name, "UInt8")?;
        out.extend_from_slice(a.values());
    }
    Ok(out)
}

fn strings(path: &Path, batches: &[RecordBatch], name: &str) -> Result<Vec<String>, DataError> {
    let mut out = Vec::new();
    for b in batches {
        let a: &StringArray = column(path, b, name, "Utf8")?;
        out.extend(a.iter().map(|s| s.unwrap_or_default().to_string()));
    }
    Ok(out)
}

fn read_features(
    path: &Path,
    batches: &[RecordBatch],
    schema: &Schema,
    side: Side,
) -> Result<FeatureTable, DataError> {
    let rows = batches.iter().map(RecordBatch::num_rows).sum();
    let mut columns = Vec::new();
    for spec in schema.side(side) {
        let name = format!("feature.{}", spec.name);
        let values = match spec.kind {
            FeatureKind::Categorical => FeatureValues::Categorical(u32s(path, batches, &name)?),
            FeatureKind::MultiCategorical => {
                let max_len = spec.max_len.unwrap_or(1).max(1);
                let mut values = vec![0u32; rows * max_len];
                let mut row = 0;
                for b in batches {
                    let list: &ListArray = column(path, b, &name, "List<UInt32>")?;
                    let inner = list
                        .values()
                        .as_any()
                        .downcast_ref::<UInt32Array>()
                        .ok_or_else(|| {
                            DataError::parquet(path, format!("column {name:?} is not List<UInt32>"))
                        })?;
                    let offsets = list.value_offsets();
                    for w in offsets.windows(2) {
                        let (start, end) = (w[0] as usize, w[1] as usize);
                        let n = (end - start).min(max_len);
                        values[row * max_len..row * max_len + n]
                            .copy_from_slice(&inner.values()[start..start + n]);
                        row += 1;
                    }
                }
                FeatureValues::Multi { max_len, values }
            }
        };
        columns.push(FeatureColumn {
            name: spec.name.clone(),
            values,
        });
    }
    Ok(FeatureTable { rows, columns })
}

fn read_users(path: &Path, schema: &Schema) -> Result<UserTable, DataError> {
    let batches = read_batches(path)?;
    Ok(UserTable {
        user_id: u32s(path, &batches, "user_id")?,
        gender: strings(path, &batches, "gender")?,
        age: u32s(path, &batches, "age")?,
        occupation: u32s(path, &batches, "occupation")?,
        zip_code: strings(path, &batches, "zip_code")?,
        features: read_features(path, &batches, schema, Side::User)?,
    })
}

fn read_items(path: &Path, schema: &Schema) -> Result<ItemTable, DataError> {
    let batches = read_batches(path)?;
    let mut year = Vec::new();
    for b in &batches {
        let a: &UInt32Array = column(path, b, "year", "UInt32")?;
        year.extend(a.iter());
    }
    Ok(ItemTable {
        movie_id: u32s(path, &batches, "movie_id")?,
        title: strings(path, &batches, "title")?,
        year,
        genres: strings(path, &batches, "genres")?,
        train_count: u32s(path, &batches, "train_count")?,
        features: read_features(path, &batches, schema, Side::Item)?,
    })
}

fn read_interactions(path: &Path) -> Result<Interactions, DataError> {
    let batches = read_batches(path)?;
    let mut timestamp = Vec::with_capacity(batches.iter().map(RecordBatch::num_rows).sum());
    for b in &batches {
        let a: &Int64Array = column(path, b, "timestamp", "Int64")?;
        if a.null_count() == 0 {
            timestamp.extend(a.values().iter().map(|&t| Some(t)));
        } else {
            timestamp.extend(a.iter());
        }
    }
    Ok(Interactions {
        user_id: u32s(path, &batches, "user_id")?,
        movie_id: u32s(path, &batches, "movie_id")?,
        user_row: u32s(path, &batches, "user_row")?,
        item_row: u32s(path, &batches, "item_row")?,
        rating: u8s(path, &batches, "rating")?,
        timestamp,
        line: u32s(path, &batches, "line")?,
        label: u8s(path, &batches, "label")?,
    })
}
