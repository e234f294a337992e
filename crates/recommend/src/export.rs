//! `dssm export`: the user and item embeddings as Parquet, with a manifest.

use std::path::{Path, PathBuf};

use dssm_model::Similarity;
use dssm_retrieval::{HnswConfig, HnswIndex, TopK, write_embeddings};
use serde::Serialize;

use crate::Recommender;
use crate::error::{Error, Result};
use crate::run::{DatasetRecord, absolute, dataset_record, similarity_name, write_json_atomically};

/// File names written by [`Recommender::export`].
pub mod export_files {
    /// User embeddings (`id` = raw MovieLens user id).
    pub const USERS: &str = "user_embeddings.parquet";
    /// Item embeddings (`id` = raw MovieLens movie id), every movie of movies.dat.
    pub const ITEMS: &str = "item_embeddings.parquet";
    /// What was exported, from which run and dataset, and where the movie metadata is.
    pub const MANIFEST: &str = "export.json";
    /// The HNSW index over the candidates (`dssm export --index hnsw`), mapped by serving.
    pub const INDEX: &str = "item_index.hnsw";
}

/// `export.json`.
#[derive(Debug, Clone, Serialize)]
pub struct ExportManifest {
    /// The checkpoint id.
    pub model_id: String,
    /// The run folder (absolute).
    pub run: PathBuf,
    /// The dataset.
    pub dataset: DatasetRecord,
    /// `dot` or `cosine`.
    pub similarity: &'static str,
    /// True when the rows are L2-normalised: a cosine model, or both towers with `l2_normalize` (the
    /// retrieval recipes). The inner product of a user and an item row is the model's similarity
    /// either way; here it is also their cosine.
    pub normalized: bool,
    /// The model's logit is the similarity divided by this.
    pub temperature: f32,
    /// The embedding dimension.
    pub dim: usize,
    /// The user file.
    pub user_embeddings: ExportedFile,
    /// The item file.
    pub item_embeddings: ExportedFile,
    /// Movies with train interactions (`train_count > 0` in the metadata): the retrieval candidates.
    pub candidates: usize,
    /// The dataset's items.parquet: movie_id, title, year, genres, train_count.
    pub item_metadata: PathBuf,
    /// The saved HNSW index, when one was asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<ExportedIndex>,
}

/// The HNSW index written beside the embeddings.
#[derive(Debug, Clone, Serialize)]
pub struct ExportedIndex {
    /// Its name in the export folder.
    pub file: String,
    /// Always `"hnsw"`.
    pub kind: &'static str,
    /// Its parameters.
    pub config: HnswConfig,
    /// Items in the graph (the candidates).
    pub items: usize,
    /// xxh3-64 of the candidate embeddings it was built from (16 hex digits): serving refuses the
    /// index when today's embeddings differ.
    pub embeddings_xxh3: String,
    /// Seconds spent building it.
    pub build_seconds: f64,
}

/// One exported file.
#[derive(Debug, Clone, Serialize)]
pub struct ExportedFile {
    /// Its name in the export folder.
    pub file: String,
    /// Its rows.
    pub rows: usize,
}

impl Recommender {
    /// Writes `user_embeddings.parquet`, `item_embeddings.parquet` (ids as Int64, vectors as
    /// List<Float32>: see `dssm_retrieval::write_embeddings`) and `export.json` into `out`.
    pub fn export(&self, out: &Path) -> Result<ExportManifest> {
        self.export_with_index(out, None)
    }

    /// [`Recommender::export`], plus (given a configuration) an HNSW graph over the candidates
    /// saved as `item_index.hnsw`, which [`Recommender::load`] maps instead of building when the
    /// export is the run's own (`<run>/embeddings`).
    pub fn export_with_index(
        &self,
        out: &Path,
        index: Option<HnswConfig>,
    ) -> Result<ExportManifest> {
        std::fs::create_dir_all(out).map_err(|source| Error::Io {
            action: "create the folder",
            path: out.to_path_buf(),
            source,
        })?;
        let loaded = self.run();
        let model_id = self.model_id().to_string();
        write_embeddings(&out.join(export_files::USERS), &self.users, &model_id)?;
        write_embeddings(&out.join(export_files::ITEMS), &self.items, &model_id)?;
        let dataset = &loaded.dataset;
        let config = loaded.model.config();
        let similarity = config.similarity;
        let unit_towers = config.user_tower.l2_normalize && config.item_tower.l2_normalize;
        let manifest = ExportManifest {
            model_id,
            run: absolute(&loaded.run_dir),
            dataset: dataset_record(dataset)?,
            similarity: similarity_name(similarity),
            normalized: similarity == Similarity::Cosine || unit_towers,
            temperature: loaded.model.temperature()?,
            dim: self.users.dim(),
            user_embeddings: ExportedFile {
                file: export_files::USERS.to_string(),
                rows: self.users.len(),
            },
            item_embeddings: ExportedFile {
                file: export_files::ITEMS.to_string(),
                rows: self.items.len(),
            },
            candidates: crate::run::candidate_rows(&dataset.items.train_count).len(),
            item_metadata: absolute(&dataset.dir.join(dssm_data::dataset::files::ITEMS)),
            index: index
                .map(|config| self.save_index(&out.join(export_files::INDEX), config))
                .transpose()?,
        };
        write_json_atomically(
            &out.join(export_files::MANIFEST),
            &manifest,
            "the export manifest",
        )?;
        Ok(manifest)
    }

    fn save_index(&self, path: &Path, config: HnswConfig) -> Result<ExportedIndex> {
        let started = std::time::Instant::now();
        let index = HnswIndex::build(self.candidate_embeddings()?, config)?;
        let build_seconds = started.elapsed().as_secs_f64();
        index.save(path)?;
        Ok(ExportedIndex {
            file: export_files::INDEX.to_string(),
            kind: "hnsw",
            config,
            items: index.len(),
            embeddings_xxh3: format!("{:016x}", index.embeddings_checksum()),
            build_seconds,
        })
    }
}
