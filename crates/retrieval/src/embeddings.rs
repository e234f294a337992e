//! Embedding files: an [`EmbeddingMatrix`] as Parquet.
//!
//! Layout: column `id` (Int64, not null: Spark and most engines read unsigned 64-bit as a decimal,
//! signed 64-bit as a plain long) and column `embedding` (`List<Float32>`, not null, every list `dim`
//! long), plus the key-value metadata entries [`META_DIM`] and [`META_MODEL_ID`]. On reading, `id` may
//! also be UInt32 (files of earlier versions) and `embedding` a `FixedSizeList<Float32, dim>`. Files are written to a temporary sibling and renamed, so a reader never sees half a
//! file.

use crate::error::{Error, Result};
use crate::matrix::EmbeddingMatrix;
use arrow::array::{
    Array, ArrayRef, FixedSizeListArray, Float32Array, Int64Array, ListArray, UInt32Array,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Key-value metadata key holding the embedding dimension (decimal).
pub const META_DIM: &str = "dssm.embedding_dim";
/// Key-value metadata key holding the model or checkpoint id the embeddings came from.
pub const META_MODEL_ID: &str = "dssm.model_id";

/// Rows per Parquet row group.
const ROW_GROUP_ROWS: usize = 65_536;

/// An embedding file's contents.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingFile {
    /// The embeddings.
    pub matrix: EmbeddingMatrix,
    /// The model or checkpoint id stored with them.
    pub model_id: String,
}

/// Writes `matrix` to `path` (temporary sibling, then rename), tagging it with `model_id`.
///
/// ```
/// use dssm_retrieval::{read_embeddings, write_embeddings, EmbeddingMatrix};
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("items.parquet");
/// let m = EmbeddingMatrix::new(vec![3, 1], 2, vec![0.5, 1.0, -1.0, 2.0])?;
/// write_embeddings(&path, &m, "run-7/best")?;
/// let file = read_embeddings(&path)?;
/// assert_eq!(file.matrix, m);
/// assert_eq!(file.model_id, "run-7/best");
/// # Ok::<(), dssm_retrieval::Error>(())
/// ```
pub fn write_embeddings(path: &Path, matrix: &EmbeddingMatrix, model_id: &str) -> Result<()> {
    let file_error = |message: String| Error::EmbeddingFile {
        path: path.to_path_buf(),
        message,
    };
    let dim = matrix.dim();
    i32::try_from(dim).map_err(|_| file_error(format!("dimension {dim} too large")))?;
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("embedding", DataType::List(item.clone()), false),
    ]));
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_key_value_metadata(Some(vec![
            KeyValue::new(META_DIM.to_string(), dim.to_string()),
            KeyValue::new(META_MODEL_ID.to_string(), model_id.to_string()),
        ]))
        .build();
    let tmp = temporary_sibling(path);
    let result = (|| {
        let file = File::create(&tmp).map_err(|source| Error::Io {
            action: "create",
            path: tmp.clone(),
            source,
        })?;
        let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(props))
            .map_err(|e| file_error(e.to_string()))?;
        for start in (0..matrix.len()).step_by(ROW_GROUP_ROWS) {
            let end = (start + ROW_GROUP_ROWS).min(matrix.len());
            let ids: Vec<i64> = matrix.ids()[start..end]
                .iter()
                .map(|&id| id.into())
                .collect();
            let ids: ArrayRef = Arc::new(Int64Array::from(ids));
            let values = Float32Array::from(matrix.data()[start * dim..end * dim].to_vec());
            let offsets = OffsetBuffer::from_lengths(std::iter::repeat_n(dim, end - start));
            let lists: ArrayRef = Arc::new(
                ListArray::try_new(item.clone(), offsets, Arc::new(values), None)
                    .map_err(|e| file_error(e.to_string()))?,
            );
            let batch = RecordBatch::try_new(schema.clone(), vec![ids, lists])
                .map_err(|e| file_error(e.to_string()))?;
            writer
                .write(&batch)
                .map_err(|e| file_error(e.to_string()))?;
        }
        writer.close().map_err(|e| file_error(e.to_string()))?;
        std::fs::rename(&tmp, path).map_err(|source| Error::Io {
            action: "rename into place",
            path: path.to_path_buf(),
            source,
        })
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Reads an embedding file written by [`write_embeddings`] (or any file with the same columns; the dim
/// entry is then taken from the data, and a missing model id reads as empty). A corrupt file is an
/// error naming it, also where the Parquet reader itself would panic.
pub fn read_embeddings(path: &Path) -> Result<EmbeddingFile> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        read_embeddings_unguarded(path)
    }))
    .unwrap_or_else(|panic| {
        let reason = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(Error::EmbeddingFile {
            path: path.to_path_buf(),
            message: format!("corrupt Parquet file (the reader failed: {reason})"),
        })
    })
}

fn read_embeddings_unguarded(path: &Path) -> Result<EmbeddingFile> {
    let file_error = |message: String| Error::EmbeddingFile {
        path: path.to_path_buf(),
        message,
    };
    let file = File::open(path).map_err(|source| Error::Io {
        action: "open",
        path: path.to_path_buf(),
        source,
    })?;
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| file_error(e.to_string()))?;
    let meta = |key: &str| -> Option<String> {
        builder
            .metadata()
            .file_metadata()
            .key_value_metadata()?
            .iter()
            .find(|kv| kv.key == key)?
            .value
            .clone()
    };
    let declared_dim = match meta(META_DIM) {
        Some(v) => Some(v.parse::<usize>().map_err(|_| {
            file_error(format!("metadata {META_DIM} = {v:?}, expected an integer"))
        })?),
        None => None,
    };
    let model_id = meta(META_MODEL_ID).unwrap_or_default();
    let reader = builder.build().map_err(|e| file_error(e.to_string()))?;
    let mut ids = Vec::new();
    let mut data = Vec::new();
    let mut dim = declared_dim;
    for batch in reader {
        let batch = batch.map_err(|e| file_error(e.to_string()))?;
        let id_col = batch
            .column_by_name("id")
            .ok_or_else(|| file_error("no column `id`".into()))?;
        read_ids(id_col.as_ref(), &mut ids).map_err(file_error)?;
        let emb = batch
            .column_by_name("embedding")
            .ok_or_else(|| file_error("no column `embedding`".into()))?;
        if emb.null_count() != 0 {
            return Err(file_error("column `embedding` has nulls".into()));
        }
        // (row length, values) pieces of this batch, in row order.
        let pieces: Vec<(usize, ArrayRef)> =
            if let Some(a) = emb.as_any().downcast_ref::<FixedSizeListArray>() {
                let l = a.value_length() as usize;
                vec![(l, a.values().slice(a.offset() * l, a.len() * l))]
            } else if let Some(a) = emb.as_any().downcast_ref::<ListArray>() {
                (0..a.len())
                    .map(|i| (a.value_length(i) as usize, a.value(i)))
                    .collect()
            } else {
                return Err(file_error(format!(
                    "column `embedding` is {}, expected FixedSizeList<Float32> or List<Float32>",
                    emb.data_type()
                )));
            };
        for (len, values) in pieces {
            match dim {
                Some(d) if d != len => {
                    return Err(file_error(format!(
                        "an embedding has {len} values near row {}, expected {d}",
                        data.len() / d
                    )));
                }
                _ => dim = Some(len),
            }
            let values = values
                .as_any()
                .downcast_ref::<Float32Array>()
                .filter(|v| v.null_count() == 0)
                .ok_or_else(|| {
                    file_error("embedding values are not Float32 without nulls".into())
                })?;
            data.extend_from_slice(values.values());
        }
    }
    let dim = dim.unwrap_or(1);
    let matrix = EmbeddingMatrix::new(ids, dim, data).map_err(|e| file_error(e.to_string()))?;
    Ok(EmbeddingFile { matrix, model_id })
}

/// Appends the ids of an `id` column (Int64 in 0..=u32::MAX, or UInt32; no nulls) to `ids`.
fn read_ids(column: &dyn Array, ids: &mut Vec<u32>) -> std::result::Result<(), String> {
    let expected = || {
        format!(
            "column `id` is {}, expected Int64 or UInt32 without nulls",
            column.data_type()
        )
    };
    if column.null_count() != 0 {
        return Err(expected());
    }
    if let Some(a) = column.as_any().downcast_ref::<UInt32Array>() {
        ids.extend_from_slice(a.values());
        return Ok(());
    }
    let a = column
        .as_any()
        .downcast_ref::<Int64Array>()
        .ok_or_else(expected)?;
    for &id in a.values() {
        let id = u32::try_from(id).map_err(|_| {
            format!(
                "column `id` has {id} near row {}, outside 0..={}",
                ids.len(),
                u32::MAX
            )
        })?;
        ids.push(id);
    }
    Ok(())
}

/// `.<name>.tmp-<pid>` beside `path`: where a file is written before it is renamed into place.
pub(crate) fn temporary_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedding_parquet_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("items.parquet");
        // More rows than one row group, ids not sorted.
        let (n, dim) = (70_001, 8);
        let ids: Vec<u32> = (0..n as u32).rev().map(|i| i * 5).collect();
        let data: Vec<f32> = (0..n * dim).map(|i| (i as f32 * 0.37).sin()).collect();
        let m = EmbeddingMatrix::new(ids, dim, data).unwrap();
        write_embeddings(&path, &m, "ckpt-42").unwrap();
        let back = read_embeddings(&path).unwrap();
        assert_eq!(back.matrix, m);
        assert_eq!(back.model_id, "ckpt-42");
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("items.parquet")]);
        // Empty matrices survive too.
        let empty = EmbeddingMatrix::new(vec![], 4, vec![]).unwrap();
        write_embeddings(&path, &empty, "").unwrap();
        assert_eq!(read_embeddings(&path).unwrap().matrix, empty);
    }

    #[test]
    fn reading_a_bad_file_reports_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.parquet");
        assert!(
            matches!(read_embeddings(&missing), Err(Error::Io { path, .. }) if path == missing)
        );
        let junk = dir.path().join("junk.parquet");
        std::fs::write(&junk, b"not parquet").unwrap();
        let err = read_embeddings(&junk).unwrap_err();
        assert!(err.to_string().contains("junk.parquet"), "{err}");
    }

    #[test]
    fn files_carry_int64_ids_and_float32_lists_and_old_uint32_files_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("items.parquet");
        let m = EmbeddingMatrix::new(vec![u32::MAX, 7], 2, vec![0.5, 1.0, -1.0, 2.0]).unwrap();
        write_embeddings(&path, &m, "m").unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&path).unwrap()).unwrap();
        let schema = reader.schema().clone();
        assert_eq!(
            schema.field_with_name("id").unwrap().data_type(),
            &DataType::Int64
        );
        assert!(matches!(
            schema.field_with_name("embedding").unwrap().data_type(),
            DataType::List(item) if item.data_type() == &DataType::Float32
        ));
        let batch = reader.build().unwrap().next().unwrap().unwrap();
        let ids = batch
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(ids.values(), &[i64::from(u32::MAX), 7]);
        assert_eq!(read_embeddings(&path).unwrap().matrix, m);

        // A file of the previous layout (UInt32 ids, fixed-size lists) reads the same.
        let item = Arc::new(Field::new("item", DataType::Float32, false));
        let old_schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::UInt32, false),
            Field::new("embedding", DataType::FixedSizeList(item.clone(), 2), false),
        ]));
        let values = Arc::new(Float32Array::from(vec![0.5, 1.0, -1.0, 2.0]));
        let lists = FixedSizeListArray::try_new(item, 2, values, None).unwrap();
        let batch = RecordBatch::try_new(
            old_schema.clone(),
            vec![
                Arc::new(UInt32Array::from(vec![u32::MAX, 7])),
                Arc::new(lists),
            ],
        )
        .unwrap();
        let old = dir.path().join("old.parquet");
        let mut writer =
            ArrowWriter::try_new(File::create(&old).unwrap(), old_schema, None).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        assert_eq!(read_embeddings(&old).unwrap().matrix, m);

        // A negative or too large Int64 id is an error naming the column.
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new(
                "embedding",
                DataType::List(Arc::new(Field::new("item", DataType::Float32, false))),
                false,
            ),
        ]));
        let lists = ListArray::try_new(
            Arc::new(Field::new("item", DataType::Float32, false)),
            OffsetBuffer::from_lengths([2]),
            Arc::new(Float32Array::from(vec![1.0, 2.0])),
            None,
        )
        .unwrap();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int64Array::from(vec![-3])), Arc::new(lists)],
        )
        .unwrap();
        let bad = dir.path().join("bad.parquet");
        let mut writer = ArrowWriter::try_new(File::create(&bad).unwrap(), schema, None).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        let error = read_embeddings(&bad).unwrap_err().to_string();
        assert!(error.contains("column `id` has -3"), "{error}");
    }
}
