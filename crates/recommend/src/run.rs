//! Helpers over a loaded run: the checkpoint id, the tower outputs as matrices, the candidates,
//! and the records written beside the run.

use std::path::{Path, PathBuf};

use dssm_data::Dataset;
use dssm_model::{Side, Similarity};
use dssm_retrieval::EmbeddingMatrix;
use dssm_trainer::{LoadedRun, SequenceEncoder, layout};
use serde::Serialize;

use crate::error::{Error, Result};

/// The same epsilon as the model's cosine similarity (`x / sqrt(|x|^2 + eps)`).
const COSINE_EPS: f32 = 1e-12;

/// The id of the run's best checkpoint: `best@epoch<N>:<weights checksum>` from metrics.json when it
/// matches the weights on disk, else `best:<weights checksum>`.
pub(crate) fn checkpoint_id(run_dir: &Path) -> String {
    let checkpoints = run_dir.join(layout::CHECKPOINTS);
    let weights = [checkpoints.join("best"), checkpoints.join(".old-best")]
        .iter()
        .map(|dir| dir.join(dssm_model::WEIGHTS_FILE))
        .find(|path| path.exists())
        .and_then(|path| std::fs::read(path).ok())
        .map_or_else(
            || "unknown".to_string(),
            |bytes| dssm_trainer::checksum(&bytes),
        );
    let recorded = std::fs::read_to_string(run_dir.join(layout::METRICS))
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|json| json.get("checkpoint")?.as_str().map(str::to_string));
    match recorded {
        Some(id) if id.ends_with(&format!(":{weights}")) => id,
        _ => format!("best:{weights}"),
    }
}

/// User and item embeddings of every table row (ids = raw MovieLens ids), L2-normalised for a cosine
/// model so that inner products are the model's similarity. A sequence run's user vectors come
/// from its `sequence` encoder (what [`LoadedRun::embeddings`] exports, without a second token
/// table).
pub(crate) fn tower_outputs(
    loaded: &LoadedRun,
    sequence: Option<&SequenceEncoder>,
) -> Result<(EmbeddingMatrix, EmbeddingMatrix)> {
    let batch_size = loaded.config.train.eval_batch_size;
    let cosine = loaded.model.config().similarity == Similarity::Cosine;
    let matrix = |side: Side, ids: &[u32]| -> Result<EmbeddingMatrix> {
        let (mut data, dim) = match (side, sequence) {
            (Side::User, Some(encoder)) => (
                encoder.test_queries(&loaded.model, batch_size)?,
                loaded.model.config().output_dim(),
            ),
            _ => loaded.embeddings(side, batch_size)?,
        };
        if cosine {
            l2_normalize_rows(&mut data, dim);
        }
        Ok(EmbeddingMatrix::new(ids.to_vec(), dim, data)?)
    };
    let users = matrix(Side::User, &loaded.dataset.users.user_id)?;
    let items = matrix(Side::Item, &loaded.dataset.items.movie_id)?;
    Ok((users, items))
}

/// Divides each row by `sqrt(|row|^2 + eps)`, as the model's cosine similarity does.
pub(crate) fn l2_normalize_rows(data: &mut [f32], dim: usize) {
    for row in data.chunks_mut(dim.max(1)) {
        let norm = (row.iter().map(|v| v * v).sum::<f32>() + COSINE_EPS).sqrt();
        row.iter_mut().for_each(|v| *v /= norm);
    }
}

/// Item-table rows of the retrieval candidates: movies with at least one train interaction.
pub(crate) fn candidate_rows(train_count: &[u32]) -> Vec<usize> {
    train_count
        .iter()
        .enumerate()
        .filter(|&(_, &count)| count > 0)
        .map(|(row, _)| row)
        .collect()
}

/// The rows of `items` (one per item-table row, in table order) that are candidates.
pub(crate) fn candidate_matrix(
    items: &EmbeddingMatrix,
    train_count: &[u32],
) -> Result<EmbeddingMatrix> {
    if train_count.len() != items.len() {
        return Err(Error::Invalid {
            field: "items",
            message: format!(
                "{} item embeddings for {} rows of items.parquet",
                items.len(),
                train_count.len()
            ),
        });
    }
    let rows = candidate_rows(train_count);
    let mut data = Vec::with_capacity(rows.len() * items.dim());
    let mut ids = Vec::with_capacity(rows.len());
    for &row in &rows {
        ids.push(items.ids()[row]);
        data.extend_from_slice(items.row(row));
    }
    Ok(EmbeddingMatrix::new(ids, items.dim(), data)?)
}

/// The dataset an evaluation or export used.
#[derive(Debug, Clone, Serialize)]
pub struct DatasetRecord {
    /// The dataset folder (absolute).
    pub path: PathBuf,
    /// Its name.
    pub name: String,
    /// Its protocol.
    pub protocol: String,
    /// FNV-1a 64 (hex) of manifest.json's bytes, as the trainer records it in `run.json`.
    pub manifest_checksum: String,
}

pub(crate) fn dataset_record(dataset: &Dataset) -> Result<DatasetRecord> {
    let manifest = dataset.dir.join(dssm_data::dataset::files::MANIFEST);
    let bytes = std::fs::read(&manifest).map_err(|source| Error::Io {
        action: "read",
        path: manifest.clone(),
        source,
    })?;
    Ok(DatasetRecord {
        path: absolute(&dataset.dir),
        name: dataset.manifest.dataset.clone(),
        protocol: dataset.manifest.protocol.name().to_string(),
        manifest_checksum: dssm_trainer::checksum(&bytes),
    })
}

pub(crate) fn similarity_name(similarity: Similarity) -> &'static str {
    match similarity {
        Similarity::Dot => "dot",
        Similarity::Cosine => "cosine",
    }
}

pub(crate) fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Writes pretty JSON to a temporary sibling, then renames it into place.
pub(crate) fn write_json_atomically<T: Serialize>(
    path: &Path,
    value: &T,
    what: &'static str,
) -> Result<()> {
    let mut text =
        serde_json::to_string_pretty(value).map_err(|source| Error::Json { what, source })?;
    text.push('\n');
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp"));
    std::fs::write(&tmp, text).map_err(|source| Error::Io {
        action: "write",
        path: tmp.clone(),
        source,
    })?;
    std::fs::rename(&tmp, path).map_err(|source| Error::Io {
        action: "rename into place",
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_are_the_movies_with_train_interactions() {
        assert_eq!(candidate_rows(&[3, 0, 1, 0, 7]), vec![0, 2, 4]);
        let items =
            EmbeddingMatrix::new(vec![10, 20, 30], 2, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        let candidates = candidate_matrix(&items, &[0, 2, 1]).unwrap();
        assert_eq!(candidates.ids(), &[20, 30]);
        assert_eq!(candidates.data(), &[3.0, 4.0, 5.0, 6.0]);
        let error = candidate_matrix(&items, &[1, 1]).unwrap_err().to_string();
        assert!(error.contains("3 item embeddings for 2 rows"), "{error}");
    }

    #[test]
    fn l2_normalisation_matches_the_model_formula() {
        let mut data = vec![3.0, 4.0, 0.0, 0.0];
        l2_normalize_rows(&mut data, 2);
        assert!((data[0] - 0.6).abs() < 1e-6 && (data[1] - 0.8).abs() < 1e-6);
        // A zero row stays zero (the epsilon keeps it finite).
        assert_eq!(&data[2..], &[0.0, 0.0]);
    }

    #[test]
    fn checkpoint_id_uses_metrics_json_only_when_it_matches_the_weights() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        let best = dir.join(layout::CHECKPOINTS).join("best");
        std::fs::create_dir_all(&best).unwrap();
        std::fs::write(best.join(dssm_model::WEIGHTS_FILE), b"weights").unwrap();
        let checksum = dssm_trainer::checksum(b"weights");
        assert_eq!(checkpoint_id(dir), format!("best:{checksum}"));
        std::fs::write(
            dir.join(layout::METRICS),
            format!(r#"{{"checkpoint": "best@epoch3:{checksum}"}}"#),
        )
        .unwrap();
        assert_eq!(checkpoint_id(dir), format!("best@epoch3:{checksum}"));
        std::fs::write(
            dir.join(layout::METRICS),
            r#"{"checkpoint": "best@epoch3:0000000000000000"}"#,
        )
        .unwrap();
        assert_eq!(checkpoint_id(dir), format!("best:{checksum}"));
    }

    #[test]
    fn json_is_written_whole_and_the_temporary_file_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("retrieval-test.json");
        write_json_atomically(
            &path,
            &serde_json::json!({"protocol": "leave-last-out"}),
            "t",
        )
        .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"protocol\": \"leave-last-out\""), "{text}");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("retrieval-test.json")]);
    }
}
