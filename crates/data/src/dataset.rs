//! The dataset folder: manifest, schema, vocabularies and Parquet tables; its writer and reader.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, FixedSizeListArray, Float32Array, Int64Array, ListArray, RecordBatch,
    StringArray, UInt8Array, UInt32Array,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Schema as ArrowSchema};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use crate::encode::{EncodedColumn, FeatureKind, MinFrequency, Side, Vocabularies};
use crate::error::DataError;
use crate::log::InteractionLog;
use crate::raw::SourceFile;
use crate::spec::{DatasetSpec, LabelRule};
use crate::split::{Protocol, Split};
use crate::synthetic::SyntheticConfig;
use crate::table::Keys;

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
    /// One row per item.
    pub const ITEMS: &str = "items.parquet";
    /// The files whose size and md5 the manifest records and [`super::Dataset`] verifies.
    pub const CHECKED: [&str; 7] = [
        SCHEMA,
        VOCABULARIES,
        USERS,
        ITEMS,
        "train.parquet",
        "val.parquet",
        "test.parquet",
    ];
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
    /// Layout version of the dataset folder (2).
    pub format_version: u32,
    /// Size and md5 of every other file of the folder ([`files::CHECKED`]), verified when read.
    #[serde(default)]
    pub files: Vec<SourceFile>,
    /// The dataset's name: `ml-1m`, `ml-100k`, `synthetic` or a spec's `name`.
    pub dataset: String,
    /// Split protocol.
    pub protocol: Protocol,
    /// Split seed (used by `seed` only, recorded anyway).
    pub seed: u64,
    /// Which interactions are positives.
    pub label: LabelRule,
    /// Default rare-value rule of the vocabularies.
    pub min_frequency: MinFrequency,
    /// Rows behind the train-statistic features (`all_rows` = the reference's leak).
    #[serde(default)]
    pub item_statistics: crate::encode::ItemStatistics,
    /// The dataset spec as applied (MovieLens kinds: their preset).
    pub spec: DatasetSpec,
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
    /// Items in items.parquet.
    pub items: u64,
    /// Items with at least one interaction (any split).
    pub rated_items: u64,
    /// Items with at least one train interaction.
    pub train_items: u64,
    /// Share of positive rows over all splits.
    pub positive_share: f64,
    /// Interactions dropped because their user or item was not in its table (`missing = "drop"`).
    #[serde(default)]
    pub dropped_interactions: u64,
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
    /// Categorical, multi-valued or dense.
    pub kind: FeatureKind,
    /// Number of indices, 0 included (0 for dense features).
    pub vocab_size: usize,
    /// Slots per row (multi-valued features only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_len: Option<usize>,
    /// Floats per row (dense features only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dim: Option<usize>,
}

/// schema.json: the feature list and the raw columns kept for display.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Schema {
    /// User features then item features, in column order.
    pub features: Vec<FeatureSpec>,
    /// Which interactions are positives.
    pub label: LabelRule,
    /// Raw user columns kept in users.parquet (as text).
    pub user_attributes: Vec<String>,
    /// Raw item columns kept in items.parquet (as text).
    pub item_attributes: Vec<String>,
}

impl Schema {
    /// Features of one side.
    pub fn side(&self, side: Side) -> impl Iterator<Item = &FeatureSpec> {
        self.features.iter().filter(move |f| f.side == side)
    }
}

/// Encoded features of a table, one column per feature.
#[derive(Debug, Clone, PartialEq, Default)]
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
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureColumn {
    /// Feature name (without the `feature.` prefix).
    pub name: String,
    /// Values.
    pub values: FeatureValues,
}

/// Values of an encoded feature column.
#[derive(Debug, Clone, PartialEq)]
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
    /// `rows * dim` floats, row-major.
    Dense {
        /// Floats per row.
        dim: usize,
        /// The values.
        values: Vec<f32>,
    },
}

/// Raw columns kept as text for display, by name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Attributes {
    /// `(name, one value per row)`, in schema order.
    pub columns: Vec<(String, Vec<Option<String>>)>,
}

impl Attributes {
    /// The values of a column.
    pub fn get(&self, name: &str) -> Option<&[Option<String>]> {
        self.columns
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// One row's value of a column (`None` when the column is absent or the cell empty).
    pub fn value(&self, name: &str, row: usize) -> Option<&str> {
        self.get(name)?.get(row)?.as_deref()
    }
}

/// users.parquet in memory.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UserTable {
    /// User ids (the key when every key is an integer, else rank + 1); the position is the row.
    pub user_id: Vec<u32>,
    /// Raw keys as text.
    pub key: Vec<String>,
    /// Raw columns kept for display (MovieLens: gender, age, occupation, zip_code).
    pub attributes: Attributes,
    /// Encoded user features.
    pub features: FeatureTable,
}

/// items.parquet in memory.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ItemTable {
    /// Item ids (the key when every key is an integer, else rank + 1); the position is the row.
    /// Named for MovieLens; any item.
    pub movie_id: Vec<u32>,
    /// Raw keys as text.
    pub key: Vec<String>,
    /// Raw columns kept for display (MovieLens: title, year, genres).
    pub attributes: Attributes,
    /// Train interactions per item.
    pub train_count: Vec<u32>,
    /// Encoded item features.
    pub features: FeatureTable,
}

impl ItemTable {
    /// The row of a raw key.
    pub fn row_of_key(&self, key: &str) -> Option<usize> {
        self.key.iter().position(|k| k == key)
    }
}

impl UserTable {
    /// The row of a raw key.
    pub fn row_of_key(&self, key: &str) -> Option<usize> {
        self.key.iter().position(|k| k == key)
    }
}

/// One split's rows, column by column.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Interactions {
    /// User ids.
    pub user_id: Vec<u32>,
    /// Item ids.
    pub movie_id: Vec<u32>,
    /// Rows in the users table.
    pub user_row: Vec<u32>,
    /// Rows in the items table.
    pub item_row: Vec<u32>,
    /// Ratings, `None` without a rating column.
    pub rating: Vec<Option<f32>>,
    /// Unix seconds, `None` when the row had none.
    pub timestamp: Vec<Option<i64>>,
    /// 1-based record number in the interactions file (header excluded).
    pub line: Vec<u32>,
    /// 1 for a positive.
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
        for file in [
            files::SCHEMA,
            files::VOCABULARIES,
            files::USERS,
            files::ITEMS,
        ] {
            verify(dir, &manifest, file)?;
        }
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
        let name = format!("{}.parquet", split.name());
        verify(&self.dir, &self.manifest, &name)?;
        read_interactions(&self.dir.join(name))
    }
}

/// Checks a file's size and md5 against the manifest (folders written before the manifest
/// recorded them are not checked).
fn verify(dir: &Path, manifest: &Manifest, name: &str) -> Result<(), DataError> {
    let Some(expected) = manifest.files.iter().find(|f| f.name == name) else {
        return Ok(());
    };
    let path = dir.join(name);
    let actual = crate::source::file_source(&path, name.to_string())?;
    if actual.bytes != expected.bytes || actual.md5 != expected.md5 {
        return Err(DataError::ChangedFile {
            path,
            manifest: dir.join(files::MANIFEST),
            expected_bytes: expected.bytes,
            expected_md5: expected.md5.clone(),
            actual_bytes: actual.bytes,
            actual_md5: actual.md5,
        });
    }
    Ok(())
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

fn encoded_col(name: &str, column: EncodedColumn) -> (Field, ArrayRef) {
    let name = format!("feature.{name}");
    match column {
        EncodedColumn::Categorical(v) => u32_col(&name, v),
        EncodedColumn::Multi { lists, .. } => {
            let offsets = OffsetBuffer::from_lengths(lists.iter().map(Vec::len));
            let values: Vec<u32> = lists.into_iter().flatten().collect();
            let array = ListArray::new(
                Arc::new(Field::new_list_field(DataType::UInt32, false)),
                offsets,
                Arc::new(UInt32Array::from(values)),
                None,
            );
            (list_field(&name), Arc::new(array) as ArrayRef)
        }
        EncodedColumn::Dense { dim, values } => {
            let item = Arc::new(Field::new_list_field(DataType::Float32, false));
            let array = FixedSizeListArray::new(
                item.clone(),
                dim as i32,
                Arc::new(Float32Array::from(values)),
                None,
            );
            (
                Field::new(&name, DataType::FixedSizeList(item, dim as i32), false),
                Arc::new(array) as ArrayRef,
            )
        }
    }
}

fn text_col(name: &str, values: &[Option<String>]) -> (Field, ArrayRef) {
    let array: StringArray = values.iter().map(Option::as_deref).collect();
    (Field::new(name, DataType::Utf8, true), Arc::new(array))
}

/// One side of the dataset as written: keys, display columns and encoded features.
pub(crate) struct SideOutput<'a> {
    pub keys: &'a Keys,
    pub attributes: &'a Attributes,
    pub features: Vec<(String, EncodedColumn)>,
}

/// What [`write_tables`] writes besides the JSON files.
pub(crate) struct TablesInput<'a> {
    pub users: SideOutput<'a>,
    pub items: SideOutput<'a>,
    pub train_count: &'a [u32],
    pub log: &'a InteractionLog,
    pub splits: &'a [Split],
}

fn write_side(
    path: &Path,
    id_column: &str,
    key_column: &str,
    side: SideOutput<'_>,
    train_count: Option<&[u32]>,
) -> Result<(), DataError> {
    let mut cols = vec![
        u32_col(id_column, side.keys.ids.clone()),
        str_col(key_column, side.keys.texts.iter()),
    ];
    for (name, values) in &side.attributes.columns {
        cols.push(text_col(name, values));
    }
    if let Some(counts) = train_count {
        cols.push(u32_col("train_count", counts.to_vec()));
    }
    for (name, column) in side.features {
        cols.push(encoded_col(&name, column));
    }
    write_parquet(path, &batch(path, cols)?)
}

/// Writes users.parquet, items.parquet and the three split files into `dir`; returns the rows
/// and positives per split.
pub(crate) fn write_tables(
    dir: &Path,
    input: TablesInput<'_>,
    mut on_file: impl FnMut(&str),
) -> Result<(SplitCounts, SplitCounts), DataError> {
    let TablesInput {
        users,
        items,
        train_count,
        log,
        splits,
    } = input;
    let (user_ids, item_ids) = (users.keys.ids.clone(), items.keys.ids.clone());
    on_file(files::USERS);
    write_side(&dir.join(files::USERS), "user_id", "user_key", users, None)?;
    on_file(files::ITEMS);
    write_side(
        &dir.join(files::ITEMS),
        "movie_id",
        "item_key",
        items,
        Some(train_count),
    )?;
    let mut rows = SplitCounts::default();
    let mut positives = SplitCounts::default();
    for split in Split::ALL {
        let name = format!("{}.parquet", split.name());
        on_file(&name);
        let ids = (user_ids.as_slice(), item_ids.as_slice());
        let (n, p) = write_split(&dir.join(&name), log, splits, split, ids)?;
        rows.add(split, n);
        positives.add(split, p);
    }
    Ok((rows, positives))
}

/// Rows of the log per written batch.
const WRITE_ROWS: usize = 1 << 20;

/// Writes one split's rows in file order, batch by batch; returns rows and positives.
fn write_split(
    path: &Path,
    log: &InteractionLog,
    splits: &[Split],
    split: Split,
    (user_ids, item_ids): (&[u32], &[u32]),
) -> Result<(u64, u64), DataError> {
    let file = File::create(path).map_err(|e| DataError::io(path, e))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let mut writer: Option<ArrowWriter<File>> = None;
    let (mut rows, mut positives) = (0u64, 0u64);
    let mut file = Some(file);
    for start in (0..log.len().max(1)).step_by(WRITE_ROWS) {
        let end = (start + WRITE_ROWS).min(log.len());
        let chosen: Vec<usize> = (start..end).filter(|&i| splits[i] == split).collect();
        if !chosen.is_empty() || writer.is_none() {
            let b = split_batch(path, log, &chosen, user_ids, item_ids)?;
            if writer.is_none() {
                let f = file
                    .take()
                    .ok_or_else(|| DataError::parquet(path, "writer lost"))?;
                writer = Some(
                    ArrowWriter::try_new(f, b.schema(), Some(props.clone()))
                        .map_err(|e| DataError::parquet(path, e))?,
                );
            }
            if let Some(w) = writer.as_mut() {
                w.write(&b).map_err(|e| DataError::parquet(path, e))?;
            }
        }
        rows += chosen.len() as u64;
        positives += chosen.iter().map(|&i| u64::from(log.label[i])).sum::<u64>();
    }
    if let Some(w) = writer {
        w.close().map_err(|e| DataError::parquet(path, e))?;
    }
    Ok((rows, positives))
}

fn split_batch(
    path: &Path,
    log: &InteractionLog,
    chosen: &[usize],
    user_ids: &[u32],
    item_ids: &[u32],
) -> Result<RecordBatch, DataError> {
    let users: Vec<u32> = chosen.iter().map(|&i| log.user_row[i]).collect();
    let items: Vec<u32> = chosen.iter().map(|&i| log.item_row[i]).collect();
    let timestamps: Int64Array = chosen.iter().map(|&i| log.time(i)).collect();
    let ratings: Float32Array = chosen.iter().map(|&i| log.rating(i)).collect();
    let cols = vec![
        u32_col(
            "user_id",
            users.iter().map(|&u| user_ids[u as usize]).collect(),
        ),
        u32_col(
            "movie_id",
            items.iter().map(|&i| item_ids[i as usize]).collect(),
        ),
        u32_col("user_row", users),
        u32_col("item_row", items),
        (
            Field::new("rating", DataType::Float32, true),
            Arc::new(ratings) as ArrayRef,
        ),
        (
            Field::new("timestamp", DataType::Int64, true),
            Arc::new(timestamps) as ArrayRef,
        ),
        u32_col("line", chosen.iter().map(|&i| log.line[i]).collect()),
        (
            Field::new("label", DataType::UInt8, false),
            Arc::new(UInt8Array::from(
                chosen.iter().map(|&i| log.label[i]).collect::<Vec<_>>(),
            )) as ArrayRef,
        ),
    ];
    batch(path, cols)
}

// ---- Reading ----

fn read_batches(path: &Path) -> Result<Vec<RecordBatch>, DataError> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    crate::error::parquet_guard(path, || {
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|e| DataError::parquet(path, e))?
            .with_batch_size(1 << 16)
            .build()
            .map_err(|e| DataError::parquet(path, e))?;
        reader
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| DataError::parquet(path, e))
    })
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
            FeatureKind::Dense => {
                let dim = spec.dim.unwrap_or(1);
                let mut values = Vec::with_capacity(rows * dim);
                for b in batches {
                    let list: &FixedSizeListArray =
                        column(path, b, &name, "FixedSizeList<Float32>")?;
                    let inner: &Float32Array =
                        list.values().as_any().downcast_ref().ok_or_else(|| {
                            DataError::parquet(
                                path,
                                format!("column {name:?} is not FixedSizeList<Float32>"),
                            )
                        })?;
                    if list.value_length() as usize != dim {
                        return Err(DataError::parquet(
                            path,
                            format!(
                                "column {name:?} has {} floats per row, the schema says {dim}",
                                list.value_length()
                            ),
                        ));
                    }
                    values.extend_from_slice(inner.values());
                }
                FeatureValues::Dense { dim, values }
            }
        };
        columns.push(FeatureColumn {
            name: spec.name.clone(),
            values,
        });
    }
    Ok(FeatureTable { rows, columns })
}

fn optional_strings(
    path: &Path,
    batches: &[RecordBatch],
    name: &str,
) -> Result<Vec<Option<String>>, DataError> {
    let mut out = Vec::new();
    for b in batches {
        let a: &StringArray = column(path, b, name, "Utf8")?;
        out.extend(a.iter().map(|s| s.map(str::to_string)));
    }
    Ok(out)
}

fn read_attributes(
    path: &Path,
    batches: &[RecordBatch],
    names: &[String],
) -> Result<Attributes, DataError> {
    let columns = names
        .iter()
        .map(|n| Ok((n.clone(), optional_strings(path, batches, n)?)))
        .collect::<Result<_, DataError>>()?;
    Ok(Attributes { columns })
}

/// A column schema.json lists is not in the table: name both files.
fn listed_in_schema(e: DataError) -> DataError {
    match e {
        DataError::Parquet { path, message } => DataError::Parquet {
            path,
            message: format!("{message} ({} lists it)", files::SCHEMA),
        },
        other => other,
    }
}

fn read_users(path: &Path, schema: &Schema) -> Result<UserTable, DataError> {
    let batches = read_batches(path)?;
    Ok(UserTable {
        user_id: u32s(path, &batches, "user_id")?,
        key: strings(path, &batches, "user_key")?,
        attributes: read_attributes(path, &batches, &schema.user_attributes)
            .map_err(listed_in_schema)?,
        features: read_features(path, &batches, schema, Side::User).map_err(listed_in_schema)?,
    })
}

fn read_items(path: &Path, schema: &Schema) -> Result<ItemTable, DataError> {
    let batches = read_batches(path)?;
    Ok(ItemTable {
        movie_id: u32s(path, &batches, "movie_id")?,
        key: strings(path, &batches, "item_key")?,
        attributes: read_attributes(path, &batches, &schema.item_attributes)
            .map_err(listed_in_schema)?,
        train_count: u32s(path, &batches, "train_count")?,
        features: read_features(path, &batches, schema, Side::Item).map_err(listed_in_schema)?,
    })
}

fn read_interactions(path: &Path) -> Result<Interactions, DataError> {
    let batches = read_batches(path)?;
    let rows = batches.iter().map(RecordBatch::num_rows).sum();
    let mut timestamp = Vec::with_capacity(rows);
    let mut rating = Vec::with_capacity(rows);
    for b in &batches {
        let a: &Int64Array = column(path, b, "timestamp", "Int64")?;
        timestamp.extend(a.iter());
        let a: &Float32Array = column(path, b, "rating", "Float32")?;
        rating.extend(a.iter());
    }
    Ok(Interactions {
        user_id: u32s(path, &batches, "user_id")?,
        movie_id: u32s(path, &batches, "movie_id")?,
        user_row: u32s(path, &batches, "user_row")?,
        item_row: u32s(path, &batches, "item_row")?,
        rating,
        timestamp,
        line: u32s(path, &batches, "line")?,
        label: u8s(path, &batches, "label")?,
    })
}
