//! Source tables of a dataset spec: CSV and Parquet read column by column (whole, or in chunks for
//! the interaction log), cells read as text, numbers, lists or vectors with errors naming the
//! file, column and row, and the keys of users and items mapped to rows.

use foldhash::HashMap;
use std::borrow::Cow;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, RecordBatch, StringArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, TimeUnit};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::error::DataError;
use crate::spec::FileFormat;

/// Rows per chunk when streaming a table.
pub(crate) const CHUNK_ROWS: usize = 1 << 16;

/// One column's values as read.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Values {
    /// Text cells (every CSV column; Parquet strings).
    Text(Vec<Option<String>>),
    /// Integer cells (Parquet integers, booleans, timestamps in seconds).
    Int(Vec<Option<i64>>),
    /// Float cells.
    Float(Vec<Option<f64>>),
    /// List cells of text (Parquet lists of strings or integers).
    TextList(Vec<Option<Vec<String>>>),
    /// List cells of floats.
    FloatList(Vec<Option<Vec<f64>>>),
}

impl Values {
    fn len(&self) -> usize {
        match self {
            Self::Text(v) => v.len(),
            Self::Int(v) => v.len(),
            Self::Float(v) => v.len(),
            Self::TextList(v) => v.len(),
            Self::FloatList(v) => v.len(),
        }
    }

    fn append(&mut self, other: Values) -> Result<(), String> {
        match (self, other) {
            (Self::Text(a), Self::Text(b)) => a.extend(b),
            (Self::Int(a), Self::Int(b)) => a.extend(b),
            (Self::Float(a), Self::Float(b)) => a.extend(b),
            (Self::TextList(a), Self::TextList(b)) => a.extend(b),
            (Self::FloatList(a), Self::FloatList(b)) => a.extend(b),
            _ => return Err("the column changes type between row groups".into()),
        }
        Ok(())
    }

    fn permute(&mut self, order: &[u32]) {
        fn pick<T: Clone>(v: &mut Vec<T>, order: &[u32]) {
            *v = order.iter().map(|&o| v[o as usize].clone()).collect();
        }
        match self {
            Self::Text(v) => pick(v, order),
            Self::Int(v) => pick(v, order),
            Self::Float(v) => pick(v, order),
            Self::TextList(v) => pick(v, order),
            Self::FloatList(v) => pick(v, order),
        }
    }

    /// A cell as text (`None` when null or empty); lists are joined with `|`.
    pub(crate) fn text(&self, row: usize) -> Option<Cow<'_, str>> {
        let cell = match self {
            Self::Text(v) => v[row].as_deref().map(Cow::Borrowed),
            Self::Int(v) => v[row].map(|x| Cow::Owned(x.to_string())),
            Self::Float(v) => v[row].map(|x| Cow::Owned(x.to_string())),
            Self::TextList(v) => v[row].as_ref().map(|l| Cow::Owned(l.join("|"))),
            Self::FloatList(v) => v[row].as_ref().map(|l| {
                let parts: Vec<String> = l.iter().map(f64::to_string).collect();
                Cow::Owned(parts.join(" "))
            }),
        };
        cell.filter(|s| !s.is_empty())
    }

    /// A cell as a number (`None` when null or empty).
    pub(crate) fn number(&self, row: usize) -> Result<Option<f64>, String> {
        match self {
            Self::Int(v) => Ok(v[row].map(|x| x as f64)),
            Self::Float(v) => Ok(v[row]),
            Self::Text(v) => match v[row].as_deref().map(str::trim) {
                None | Some("") => Ok(None),
                Some(s) => parse_number(s)
                    .map(Some)
                    .ok_or_else(|| format!("expected a number, found {s:?}")),
            },
            _ => Err("expected a number, found a list".into()),
        }
    }

    /// A cell as a list of values: a list cell, a `[a, b]` text or a `delimiter`-separated text.
    pub(crate) fn list(&self, row: usize, delimiter: char) -> Option<Vec<String>> {
        match self {
            Self::TextList(v) => v[row].clone(),
            Self::FloatList(v) => v[row]
                .as_ref()
                .map(|l| l.iter().map(f64::to_string).collect()),
            _ => {
                let text = self.text(row)?;
                let items: Vec<String> = match bracketed(&text) {
                    Some(inner) => inner.split(',').map(unquote).collect(),
                    None => text
                        .split(delimiter)
                        .map(|s| s.trim().to_string())
                        .collect(),
                };
                Some(items.into_iter().filter(|s| !s.is_empty()).collect())
            }
        }
    }

    /// A cell as a float vector: a list cell, or text such as `[0.1, 0.2]` or `0.1 0.2`.
    pub(crate) fn vector(&self, row: usize) -> Result<Option<Vec<f32>>, String> {
        match self {
            Self::FloatList(v) => Ok(v[row]
                .as_ref()
                .map(|l| l.iter().map(|&x| x as f32).collect())),
            Self::Text(_) => {
                let Some(text) = self.text(row) else {
                    return Ok(None);
                };
                let inner = bracketed(&text).unwrap_or(&text);
                inner
                    .split(|c: char| c == ',' || c == ';' || c.is_whitespace())
                    .filter(|s| !s.is_empty())
                    .map(|s| {
                        parse_number(s)
                            .map(|x| x as f32)
                            .ok_or_else(|| format!("expected a list of numbers, found {s:?}"))
                    })
                    .collect::<Result<Vec<f32>, String>>()
                    .map(Some)
            }
            Self::TextList(v) => match &v[row] {
                None => Ok(None),
                Some(l) => l
                    .iter()
                    .map(|s| {
                        parse_number(s)
                            .map(|x| x as f32)
                            .ok_or_else(|| format!("expected a list of numbers, found {s:?}"))
                    })
                    .collect::<Result<Vec<f32>, String>>()
                    .map(Some),
            },
            _ => Err("expected a list of numbers, found a single value".into()),
        }
    }

    /// A cell as Unix seconds: an integer, or a date/time text.
    pub(crate) fn seconds(&self, row: usize) -> Result<Option<i64>, String> {
        match self {
            Self::Int(v) => Ok(v[row]),
            Self::Float(v) => Ok(v[row].map(|x| x as i64)),
            Self::Text(v) => match v[row].as_deref().map(str::trim) {
                None | Some("") => Ok(None),
                Some(s) => parse_time(s).map(Some).ok_or_else(|| {
                    format!("expected Unix seconds or a date/time such as 2024-03-01T12:00:00Z, found {s:?}")
                }),
            },
            _ => Err("expected a time, found a list".into()),
        }
    }
}

fn parse_number(s: &str) -> Option<f64> {
    s.trim().parse::<f64>().ok().filter(|x| !x.is_nan())
}

fn bracketed(text: &str) -> Option<&str> {
    let t = text.trim();
    t.strip_prefix('[')?.strip_suffix(']')
}

fn unquote(s: &str) -> String {
    s.trim().trim_matches(|c| c == '\'' || c == '"').to_string()
}

/// Unix seconds of an integer text or a date/time text (`2024-03-01`, `2024-03-01T12:00:00`,
/// `2024-03-01 12:00:00`, RFC 3339 with `Z` or an offset; fractions of a second dropped).
pub fn parse_time(text: &str) -> Option<i64> {
    use chrono::{DateTime, NaiveDate, NaiveDateTime};
    let t = text.trim();
    if let Ok(s) = t.parse::<i64>() {
        return Some(s);
    }
    if let Ok(d) = DateTime::parse_from_rfc3339(t) {
        return Some(d.timestamp());
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(d) = NaiveDateTime::parse_from_str(t, format) {
            return Some(d.and_utc().timestamp());
        }
    }
    NaiveDate::parse_from_str(t, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|d| d.and_utc().timestamp())
}

/// A source table (or one chunk of it): the wanted columns, in the order asked.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SourceTable {
    /// The file, as shown in errors.
    pub file: PathBuf,
    /// Its format (CSV rows are reported as file lines, header included).
    pub format: FileFormat,
    /// Number of rows.
    pub rows: usize,
    /// Rows of the file before this chunk.
    pub first_row: usize,
    columns: Vec<(String, Values)>,
}

impl SourceTable {
    /// A table built in memory (MovieLens parsers, interaction keys).
    pub(crate) fn in_memory(file: PathBuf, columns: Vec<(String, Values)>) -> Self {
        let rows = columns.first().map_or(0, |(_, v)| v.len());
        Self {
            file,
            format: FileFormat::Csv,
            rows,
            first_row: 0,
            columns,
        }
    }

    /// A column by name.
    pub(crate) fn column(&self, name: &str) -> Result<&Values, DataError> {
        self.columns
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
            .ok_or_else(|| DataError::MissingColumn {
                path: self.file.clone(),
                column: name.to_string(),
                available: self.columns.iter().map(|(n, _)| n.clone()).collect(),
            })
    }

    /// The error for a bad cell; `row` counts data rows from 0 in this table.
    pub(crate) fn cell_error(&self, column: &str, row: usize, problem: String) -> DataError {
        let row = self.first_row + row;
        DataError::Cell {
            path: self.file.clone(),
            column: column.to_string(),
            row: row as u64 + 1,
            line: (self.format == FileFormat::Csv).then_some(row as u64 + 2),
            problem,
        }
    }

    /// Reorders the rows: row `i` becomes old row `order[i]`.
    pub(crate) fn permute(&mut self, order: &[u32]) {
        for (_, values) in &mut self.columns {
            values.permute(order);
        }
        self.rows = order.len();
    }

    fn append(&mut self, chunk: SourceTable) -> Result<(), DataError> {
        self.rows += chunk.rows;
        for ((name, values), (_, more)) in self.columns.iter_mut().zip(chunk.columns) {
            values
                .append(more)
                .map_err(|m| DataError::parquet(&self.file, format!("column {name:?}: {m}")))?;
        }
        Ok(())
    }
}

/// Where and how to read one table.
#[derive(Debug, Clone)]
pub(crate) struct TableFile<'a> {
    pub path: &'a Path,
    pub format: Option<FileFormat>,
    pub delimiter: Option<char>,
}

impl TableFile<'_> {
    fn format(&self) -> FileFormat {
        self.format
            .or_else(|| FileFormat::from_path(self.path))
            .unwrap_or(FileFormat::Csv)
    }

    fn delimiter(&self) -> Result<u8, DataError> {
        let tsv = self.path.extension().is_some_and(|e| e == "tsv");
        let c = self.delimiter.unwrap_or(if tsv { '\t' } else { ',' });
        u8::try_from(c).map_err(|_| DataError::InvalidConfig {
            message: format!(
                "{}: the CSV delimiter must be one ASCII character, not {c:?}",
                self.path.display()
            ),
        })
    }
}

/// Reads a whole table's `wanted` columns.
pub(crate) fn read_table(file: &TableFile<'_>, wanted: &[&str]) -> Result<SourceTable, DataError> {
    let mut whole: Option<SourceTable> = None;
    for_each_chunk(file, wanted, |chunk| {
        match whole.as_mut() {
            None => whole = Some(chunk),
            Some(table) => table.append(chunk)?,
        }
        Ok(())
    })?;
    Ok(whole.unwrap_or_else(|| SourceTable {
        file: file.path.to_path_buf(),
        format: file.format(),
        rows: 0,
        first_row: 0,
        columns: wanted
            .iter()
            .map(|n| (n.to_string(), Values::Text(Vec::new())))
            .collect(),
    }))
}

/// Streams a table's `wanted` columns in chunks of [`CHUNK_ROWS`] rows (CSV records or Parquet
/// batches), so a file larger than memory is read in bounded memory.
pub(crate) fn for_each_chunk(
    file: &TableFile<'_>,
    wanted: &[&str],
    on_chunk: impl FnMut(SourceTable) -> Result<(), DataError>,
) -> Result<(), DataError> {
    match file.format() {
        FileFormat::Csv => csv_chunks(file, wanted, on_chunk),
        FileFormat::Parquet => parquet_chunks(file.path, wanted, on_chunk),
    }
}

fn csv_error(path: &Path, e: csv::Error) -> DataError {
    let line = e.position().map(|p| p.line());
    match (e.kind(), line) {
        (csv::ErrorKind::Io(_), _) | (_, None) => DataError::Csv {
            path: path.to_path_buf(),
            line: line.unwrap_or(0),
            message: e.to_string(),
        },
        (_, Some(line)) => DataError::Csv {
            path: path.to_path_buf(),
            line,
            message: match e.kind() {
                csv::ErrorKind::UnequalLengths {
                    expected_len, len, ..
                } => format!("expected {expected_len} fields as in the header, found {len}"),
                csv::ErrorKind::Utf8 { .. } => "expected UTF-8 text".to_string(),
                _ => e.to_string(),
            },
        },
    }
}

/// The position of each wanted column among a file's columns, or the error naming the first
/// missing one and the columns there are.
fn column_indices(
    path: &Path,
    available: &[String],
    wanted: &[&str],
) -> Result<Vec<usize>, DataError> {
    wanted
        .iter()
        .map(|w| {
            available
                .iter()
                .position(|h| h == w)
                .ok_or_else(|| DataError::MissingColumn {
                    path: path.to_path_buf(),
                    column: w.to_string(),
                    available: available.to_vec(),
                })
        })
        .collect()
}

fn csv_chunks(
    file: &TableFile<'_>,
    wanted: &[&str],
    mut on_chunk: impl FnMut(SourceTable) -> Result<(), DataError>,
) -> Result<(), DataError> {
    let path = file.path;
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(file.delimiter()?)
        .from_path(path)
        .map_err(|e| match e.into_kind() {
            csv::ErrorKind::Io(io) => DataError::io(path, io),
            other => DataError::Csv {
                path: path.to_path_buf(),
                line: 1,
                message: format!("{other:?}"),
            },
        })?;
    let header = reader.headers().map_err(|e| csv_error(path, e))?.clone();
    let available: Vec<String> = header.iter().map(str::to_string).collect();
    let indices = column_indices(path, &available, wanted)?;
    let mut record = csv::StringRecord::new();
    let mut first_row = 0;
    loop {
        let mut columns: Vec<Vec<Option<String>>> = wanted
            .iter()
            .map(|_| Vec::with_capacity(CHUNK_ROWS))
            .collect();
        let mut rows = 0;
        while rows < CHUNK_ROWS
            && reader
                .read_record(&mut record)
                .map_err(|e| csv_error(path, e))?
        {
            for (column, &i) in columns.iter_mut().zip(&indices) {
                let cell = record.get(i).unwrap_or("");
                column.push((!cell.is_empty()).then(|| cell.to_string()));
            }
            rows += 1;
        }
        if rows == 0 {
            return Ok(());
        }
        on_chunk(SourceTable {
            file: path.to_path_buf(),
            format: FileFormat::Csv,
            rows,
            first_row,
            columns: wanted
                .iter()
                .zip(columns)
                .map(|(n, v)| (n.to_string(), Values::Text(v)))
                .collect(),
        })?;
        if rows < CHUNK_ROWS {
            return Ok(());
        }
        first_row += rows;
    }
}

fn parquet_chunks(
    path: &Path,
    wanted: &[&str],
    mut on_chunk: impl FnMut(SourceTable) -> Result<(), DataError>,
) -> Result<(), DataError> {
    let handle = File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut reader = crate::error::parquet_guard(path, || {
        let builder = ParquetRecordBatchReaderBuilder::try_new(handle)
            .map_err(|e| DataError::parquet(path, e))?;
        let available: Vec<String> = builder
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let roots = column_indices(path, &available, wanted)?;
        let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
        builder
            .with_projection(mask)
            .with_batch_size(CHUNK_ROWS)
            .build()
            .map_err(|e| DataError::parquet(path, e))
    })?;
    let mut first_row = 0;
    while let Some(batch) = crate::error::parquet_guard(path, || Ok(reader.next()))? {
        let batch = batch.map_err(|e| DataError::parquet(path, e))?;
        let mut chunk = table_of_batch(path, &batch, wanted)?;
        chunk.first_row = first_row;
        first_row += chunk.rows;
        on_chunk(chunk)?;
    }
    Ok(())
}

fn table_of_batch(
    path: &Path,
    batch: &RecordBatch,
    wanted: &[&str],
) -> Result<SourceTable, DataError> {
    let mut columns = Vec::with_capacity(wanted.len());
    for w in wanted {
        let array = batch
            .column_by_name(w)
            .ok_or_else(|| DataError::parquet(path, format!("missing column {w:?}")))?;
        let values =
            values_of(array).map_err(|m| DataError::parquet(path, format!("column {w:?}: {m}")))?;
        columns.push((w.to_string(), values));
    }
    Ok(SourceTable {
        file: path.to_path_buf(),
        format: FileFormat::Parquet,
        rows: batch.num_rows(),
        first_row: 0,
        columns,
    })
}

fn cast_to(array: &ArrayRef, to: &DataType) -> Result<ArrayRef, String> {
    cast(array, to).map_err(|e| format!("cannot read {} as {to}: {e}", array.data_type()))
}

fn ints(array: &ArrayRef) -> Result<Vec<Option<i64>>, String> {
    let a = cast_to(array, &DataType::Int64)?;
    Ok(a.as_primitive::<Int64Type>().iter().collect())
}

fn floats(array: &ArrayRef) -> Result<Vec<Option<f64>>, String> {
    let a = cast_to(array, &DataType::Float64)?;
    Ok(a.as_primitive::<Float64Type>().iter().collect())
}

fn texts(array: &ArrayRef) -> Result<Vec<Option<String>>, String> {
    let a = cast_to(array, &DataType::Utf8)?;
    let a: &StringArray = a.as_string::<i32>();
    Ok(a.iter().map(|s| s.map(str::to_string)).collect())
}

fn seconds_of(array: &ArrayRef) -> Result<Vec<Option<i64>>, String> {
    let as_seconds = cast_to(array, &DataType::Timestamp(TimeUnit::Second, None))?;
    ints(&as_seconds)
}

/// Converts an Arrow column to [`Values`].
fn values_of(array: &ArrayRef) -> Result<Values, String> {
    use DataType as T;
    Ok(match array.data_type() {
        T::Boolean
        | T::Int8
        | T::Int16
        | T::Int32
        | T::Int64
        | T::UInt8
        | T::UInt16
        | T::UInt32
        | T::UInt64 => Values::Int(ints(array)?),
        T::Float16 | T::Float32 | T::Float64 | T::Decimal128(..) | T::Decimal256(..) => {
            Values::Float(floats(array)?)
        }
        T::Timestamp(..) | T::Date32 | T::Date64 => Values::Int(seconds_of(array)?),
        T::Utf8 | T::LargeUtf8 | T::Utf8View | T::Dictionary(..) => Values::Text(texts(array)?),
        T::List(inner) | T::LargeList(inner) | T::FixedSizeList(inner, _) => {
            list_values(array, inner.data_type())?
        }
        other => return Err(format!("unsupported type {other}")),
    })
}

fn list_values(array: &ArrayRef, inner: &DataType) -> Result<Values, String> {
    let float = matches!(
        inner,
        DataType::Float16 | DataType::Float32 | DataType::Float64
    );
    let element = if float {
        DataType::Float64
    } else {
        DataType::Utf8
    };
    let list = cast_to(
        array,
        &DataType::List(Arc::new(Field::new_list_field(element, true))),
    )?;
    let list = list.as_list::<i32>();
    let mut out_text = Vec::new();
    let mut out_float = Vec::new();
    for i in 0..list.len() {
        let cell = (!list.is_null(i)).then(|| list.value(i));
        if float {
            out_float.push(cell.map(|c| {
                let c: &Float64Array = c.as_primitive();
                c.iter().map(|x| x.unwrap_or(f64::NAN)).collect()
            }));
        } else {
            out_text.push(cell.map(|c| {
                let c: &StringArray = c.as_string::<i32>();
                c.iter().flatten().map(str::to_string).collect()
            }));
        }
    }
    Ok(if float {
        Values::FloatList(out_float)
    } else {
        Values::TextList(out_text)
    })
}

/// The keys of one side mapped to rows, in canonical order: ascending integer when every key is
/// a non-negative integer that fits `u32` (then the id is the key), else ascending text (ids are
/// rows + 1). Canonical order makes the dataset independent of the order of the input rows.
#[derive(Debug, Clone, Default)]
pub(crate) struct Keys {
    /// Raw key text per row.
    pub texts: Vec<String>,
    /// u32 id per row.
    pub ids: Vec<u32>,
    index: HashMap<String, u32>,
}

impl Keys {
    /// Builds the keys from distinct texts; returns them and the order (`order[row]` = position
    /// of that key in `texts`).
    pub(crate) fn canonical(texts: Vec<String>) -> (Self, Vec<u32>) {
        let numeric: Option<Vec<u32>> = texts.iter().map(|t| canonical_u32(t)).collect();
        let mut order: Vec<u32> = (0..texts.len() as u32).collect();
        let ids: Vec<u32> = match &numeric {
            Some(ids) => {
                order.sort_unstable_by_key(|&i| ids[i as usize]);
                order.iter().map(|&i| ids[i as usize]).collect()
            }
            None => {
                order.sort_unstable_by(|&a, &b| texts[a as usize].cmp(&texts[b as usize]));
                (1..=texts.len() as u32).collect()
            }
        };
        let sorted: Vec<String> = order.iter().map(|&i| texts[i as usize].clone()).collect();
        let index = sorted
            .iter()
            .enumerate()
            .map(|(row, t)| (t.clone(), row as u32))
            .collect();
        (
            Self {
                texts: sorted,
                ids,
                index,
            },
            order,
        )
    }

    /// The row of a key text.
    pub(crate) fn row(&self, key: &str) -> Option<u32> {
        self.index.get(key).copied()
    }

    /// Number of keys.
    pub(crate) fn len(&self) -> usize {
        self.texts.len()
    }
}

/// `Some(n)` when the text is the canonical decimal form of a u32 (no sign, no leading zero).
fn canonical_u32(text: &str) -> Option<u32> {
    let n: u32 = text.parse().ok()?;
    (n.to_string() == text).then_some(n)
}

/// A key cell as text, or the error naming the row.
pub(crate) fn key_text<'a>(
    table: &SourceTable,
    values: &'a Values,
    column: &str,
    row: usize,
) -> Result<Cow<'a, str>, DataError> {
    if let Values::Float(_) | Values::FloatList(_) | Values::TextList(_) = values {
        return Err(table.cell_error(
            column,
            row,
            "expected a string or integer key, found a float or list column".into(),
        ));
    }
    values
        .text(row)
        .ok_or_else(|| table.cell_error(column, row, "expected a key, found an empty cell".into()))
}

/// Reads a feature table's keys; refuses empty and duplicate keys naming both rows.
pub(crate) fn table_keys(
    table: &SourceTable,
    key_column: &str,
) -> Result<(Keys, Vec<u32>), DataError> {
    let values = table.column(key_column)?;
    let mut seen: HashMap<String, usize> =
        HashMap::with_capacity_and_hasher(table.rows, Default::default());
    let mut texts = Vec::with_capacity(table.rows);
    for row in 0..table.rows {
        let key = key_text(table, values, key_column, row)?.into_owned();
        if let Some(first) = seen.insert(key.clone(), row) {
            let first_row = first + 1;
            return Err(table.cell_error(
                key_column,
                row,
                format!("expected unique keys, found {key:?} again (first at row {first_row})"),
            ));
        }
        texts.push(key);
    }
    Ok(Keys::canonical(texts))
}

/// A one-column table of keys (a side without a table of its own).
pub(crate) fn keys_only_table(file: PathBuf, column: &str, keys: &Keys) -> SourceTable {
    SourceTable::in_memory(
        file,
        vec![(
            column.to_string(),
            Values::Text(keys.texts.iter().cloned().map(Some).collect()),
        )],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_from_seconds_dates_and_rfc3339() {
        assert_eq!(parse_time("978300760"), Some(978_300_760));
        assert_eq!(parse_time("2000-12-31"), Some(978_220_800));
        assert_eq!(parse_time("2000-12-31T22:12:40Z"), Some(978_300_760));
        assert_eq!(parse_time("2000-12-31 22:12:40.5"), Some(978_300_760));
        assert_eq!(parse_time("2001-01-01T00:12:40+02:00"), Some(978_300_760));
        assert_eq!(parse_time("31/12/2000"), None);
    }

    #[test]
    fn cells_read_as_lists_vectors_and_numbers() {
        let text = Values::Text(vec![
            Some("a|b".into()),
            Some("['x', 'y z']".into()),
            Some("[0.5, -1]".into()),
            None,
        ]);
        assert_eq!(text.list(0, '|').unwrap(), ["a", "b"]);
        assert_eq!(text.list(1, '|').unwrap(), ["x", "y z"]);
        assert_eq!(text.vector(2).unwrap().unwrap(), [0.5, -1.0]);
        assert!(text.vector(0).unwrap_err().contains("\"a|b\""));
        assert_eq!(text.number(3).unwrap(), None);
        assert!(text.number(0).is_err());
        assert_eq!(Values::Int(vec![Some(7)]).text(0).unwrap(), "7");
    }

    #[test]
    fn integer_keys_keep_their_value_as_id_and_text_keys_sort() {
        let (keys, order) = Keys::canonical(vec!["10".into(), "2".into(), "7".into()]);
        assert_eq!(keys.ids, [2, 7, 10]);
        assert_eq!(order, [1, 2, 0]);
        assert_eq!(keys.row("10"), Some(2));
        // "007" is not the canonical form of 7: text keys, ids by rank.
        let (keys, _) = Keys::canonical(vec!["b".into(), "007".into(), "a".into()]);
        assert_eq!(keys.texts, ["007", "a", "b"]);
        assert_eq!(keys.ids, [1, 2, 3]);
    }

    #[test]
    fn duplicate_and_empty_keys_name_the_rows() {
        let table = SourceTable::in_memory(
            "items.csv".into(),
            vec![(
                "sku".into(),
                Values::Text(vec![Some("a".into()), Some("b".into()), Some("a".into())]),
            )],
        );
        let err = table_keys(&table, "sku").unwrap_err().to_string();
        assert!(err.contains("items.csv:4"), "{err}");
        assert!(err.contains("\"sku\""), "{err}");
        assert!(err.contains("first at row 1"), "{err}");
        let err = table_keys(&table, "id").unwrap_err().to_string();
        assert!(err.contains("no column \"id\""), "{err}");
    }
}
