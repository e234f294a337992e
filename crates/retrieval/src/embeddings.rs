//! Embedding files: an [`EmbeddingMatrix`] as Parquet.
//!
//! Layout: column `id` (UInt32, not null) and column `embedding` (`FixedSizeList<Float32, dim>`, not null;
//! `List<Float32>` is accepted on reading), plus the key-value metadata entries [`META_DIM`] and
//! [`META_MODEL_ID`]. Files are written to a temporary sibling and renamed, so a reader never sees half a
//! file.

use crate::error::{Error, Result};
use crate::matrix::EmbeddingMatrix;
use arrow::array::{Array, ArrayRef, FixedSizeListArray, Float32Array, ListArray, UInt32Array};
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
    let dim_i32 =
        i32::try_from(dim).map_err(|_| file_error(format!("dimension {dim} too large")))?;
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::UInt32, false),
        Field::new(
            "embedding",
            DataType::FixedSizeList(item.clone(), dim_i32),
            false,
        ),
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
            let ids: ArrayRef = Arc::new(UInt32Array::from(matrix.ids()[start..end].to_vec()));
            let values = Float32Array::from(matrix.data()[start * dim..end * dim].to_vec());
            let lists: ArrayRef = Arc::new(
                FixedSizeListArray::try_new(item.clone(), dim_i32, Arc::new(values), None)
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
        let id_col = id_col
            .as_any()
            .downcast_ref::<UInt32Array>()
            .filter(|a| a.null_count() == 0)
            .ok_or_else(|| {
                file_error(format!(
                    "column `id` is {}, expected UInt32 without nulls",
                    id_col.data_type()
                ))
            })?;
        ids.extend_from_slice(id_col.values());
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

fn temporary_sibling(path: &Path) -> PathBuf {
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
}
