//! Approximate top-K with an HNSW graph (Malkov and Yashunin, 2016), written for this crate, behind the
//! same [`TopK`] interface as the exact index.
//!
//! Inner products are searched as nearest neighbours through the usual augmentation (Bachrach et al.,
//! 2014): item `x` gets the extra coordinate `sqrt(R^2 - |x|^2)` with `R` the largest item norm, and a
//! query `q` gets 0, so every augmented item has norm `R` and `q.x` orders items as the augmented
//! distance does. For L2-normalised items the extra coordinate is 0 and this is plain cosine search.
//! The candidates the graph returns are re-scored and sorted (descending score, then lower id).
//!
//! Layout: vectors row-major, layer-0 link lists in one flat array (a count and `2M` slots per node),
//! upper-layer lists in another; searches keep a per-thread visited set of generation tags and
//! prefetch the vectors of a node's unvisited neighbours before scoring them; inner products use
//! AVX-512 or AVX2 when the CPU has them. Levels come from (seed, node), the insertions run in parallel
//! on rayon's pool (so the graph, though not the levels, depends on thread timing).
//!
//! An index is saved as one file ([`HnswIndex::save`]) and loaded by memory-mapping it
//! ([`HnswIndex::load`]): nothing is rebuilt or copied, the checksum is verified, and
//! [`HnswIndex::load_for`] also refuses an index built from other embeddings than the given ones.
//!
//! Exclusions: the graph is asked for `k + |excluded|` neighbours, the excluded ones are dropped, and the
//! best `k` remain. When that over-fetch reaches the catalogue size, the query is answered by an exact
//! scan instead (so `k >= len()` returns the whole non-excluded catalogue, as the exact index does).

mod build;
mod distance;
mod file;
mod search;

use crate::error::{Error, Result};
use crate::matrix::{EmbeddingMatrix, Exclusions, MatrixView, ScoredItem};
use crate::topk::{BoundedTopK, TopK, result_order};
use build::{Graph, Params, Points};
use distance::{DotFn, dot_kernel};
use rayon::prelude::*;
use search::{Links, Near, Scorer, greedy, search_layer, with_scratch};
use serde::{Deserialize, Serialize};
use std::hash::Hasher;
use std::path::Path;

/// Build and search parameters of an [`HnswIndex`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HnswConfig {
    /// `M`: links per node on the upper layers (layer 0 keeps twice as many). Default 16; 2 to 256.
    pub max_connections: usize,
    /// Candidate list width while building. Default 200; at least `max_connections`.
    pub ef_construction: usize,
    /// Candidate list width while searching (raised to the number of results asked for). Default 100;
    /// at least 1. Can be changed after building with [`HnswIndex::set_ef_search`].
    pub ef_search: usize,
    /// Seed of the nodes' levels. Default 42.
    pub seed: u64,
}

impl Default for HnswConfig {
    fn default() -> Self {
        Self {
            max_connections: 16,
            ef_construction: 200,
            ef_search: 100,
            seed: 42,
        }
    }
}

impl HnswConfig {
    /// Checks the ranges documented on the fields.
    pub fn check(&self) -> Result<()> {
        if !(2..=256).contains(&self.max_connections) {
            return Err(Error::HnswParam {
                name: "max_connections",
                value: self.max_connections,
                expected: "2 to 256",
            });
        }
        if self.ef_construction < self.max_connections {
            return Err(Error::HnswParam {
                name: "ef_construction",
                value: self.ef_construction,
                expected: "at least max_connections",
            });
        }
        if self.ef_search == 0 {
            return Err(Error::HnswParam {
                name: "ef_search",
                value: 0,
                expected: "at least 1",
            });
        }
        Ok(())
    }
}

/// The xxh3-64 checksum of embeddings as an index sees them: the rows in ascending id order, each id
/// followed by its values (little-endian). Equal for equal embeddings whatever their row order.
pub fn embeddings_checksum(items: &EmbeddingMatrix) -> u64 {
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_unstable_by_key(|&i| items.ids()[i]);
    let mut hasher = twox_hash::XxHash3_64::with_seed(0);
    hasher.write(&(items.dim() as u64).to_le_bytes());
    for i in order {
        hasher.write(&items.ids()[i].to_le_bytes());
        hasher.write(bytemuck::cast_slice(items.row(i)));
    }
    hasher.finish()
}

/// An HNSW graph over item embeddings, searched by inner product.
///
/// ```
/// use dssm_retrieval::{EmbeddingMatrix, HnswConfig, HnswIndex, MatrixView, TopK};
/// let items = EmbeddingMatrix::new(vec![1, 2, 3], 2, vec![1.0, 0.0, 0.0, 1.0, 0.6, 0.8])?;
/// let index = HnswIndex::build(items.clone(), HnswConfig::default())?;
/// let top = index.top_k(MatrixView::new(&[0.0, 1.0], 2)?, 2, None)?;
/// assert_eq!(top[0].iter().map(|s| s.id).collect::<Vec<_>>(), vec![2, 3]);
///
/// // Saved once, mapped at start-up, refused if the embeddings have changed since.
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("items.hnsw");
/// index.save(&path)?;
/// let mapped = HnswIndex::load_for(&path, &items)?;
/// assert_eq!(mapped.top_k(MatrixView::new(&[0.0, 1.0], 2)?, 2, None)?, top);
/// # Ok::<(), dssm_retrieval::Error>(())
/// ```
pub struct HnswIndex {
    storage: Storage,
    config: HnswConfig,
    items: usize,
    dim: usize,
    entry: u32,
    max_level: usize,
    max_norm_sq: f32,
    embeddings_xxh3: u64,
    dot: DotFn,
}

/// The arrays of an index: built in memory, or mapped from a file.
enum Storage {
    Owned {
        ids: Vec<u32>,
        vectors: Vec<f32>,
        extra: Vec<f32>,
        graph: Graph,
    },
    Mapped(file::Mapped),
}

/// Borrowed arrays of an index, whichever its storage.
struct Parts<'a> {
    ids: &'a [u32],
    points: Points<'a>,
    links: Links<'a, u32>,
}

impl std::fmt::Debug for HnswIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HnswIndex")
            .field("items", &self.items)
            .field("dim", &self.dim)
            .field("config", &self.config)
            .field("mapped", &self.is_mapped())
            .finish()
    }
}

impl HnswIndex {
    /// Builds the graph over `items` (reordered by ascending id), inserting in parallel on rayon's pool.
    pub fn build(items: EmbeddingMatrix, config: HnswConfig) -> Result<Self> {
        Self::build_with_progress(items, config, &|_| {})
    }

    /// [`HnswIndex::build`], calling `progress` with the number of items inserted so far (about every
    /// 1,024 insertions, from any of the building threads).
    pub fn build_with_progress(
        items: EmbeddingMatrix,
        config: HnswConfig,
        progress: &(dyn Fn(usize) + Sync),
    ) -> Result<Self> {
        config.check()?;
        let embeddings_xxh3 = embeddings_checksum(&items);
        let (ids, dim, vectors) = items.sorted_by_id().into_parts();
        let dot = dot_kernel();
        let norms: Vec<f32> = vectors.par_chunks(dim).map(|r| dot(r, r)).collect();
        let max_norm_sq = norms.iter().copied().fold(0.0f32, f32::max);
        let extra: Vec<f32> = norms
            .iter()
            .map(|&n| (max_norm_sq - n).max(0.0).sqrt())
            .collect();
        let points = Points {
            vectors: &vectors,
            extra: &extra,
            dim,
            dot,
        };
        let params = Params {
            m: config.max_connections,
            ef_construction: config.ef_construction,
            seed: config.seed,
        };
        let graph = build::build(&points, &params, progress)?;
        Ok(Self {
            config,
            items: ids.len(),
            dim,
            entry: graph.entry,
            max_level: graph.max_level,
            max_norm_sq,
            embeddings_xxh3,
            dot,
            storage: Storage::Owned {
                ids,
                vectors,
                extra,
                graph,
            },
        })
    }

    /// The parameters in use.
    pub fn config(&self) -> &HnswConfig {
        &self.config
    }

    /// Changes the search width (at least 1).
    pub fn set_ef_search(&mut self, ef_search: usize) {
        self.config.ef_search = ef_search.max(1);
    }

    /// The indexed item ids, ascending.
    pub fn ids(&self) -> &[u32] {
        self.parts().ids
    }

    /// The embedding of the item at `position` (in [`HnswIndex::ids`] order).
    pub fn row(&self, position: usize) -> &[f32] {
        self.parts().points.row(position as u32)
    }

    /// The checksum ([`embeddings_checksum`]) of the embeddings this index was built from.
    pub fn embeddings_checksum(&self) -> u64 {
        self.embeddings_xxh3
    }

    /// Whether the arrays are mapped from a file rather than held in memory.
    pub fn is_mapped(&self) -> bool {
        matches!(self.storage, Storage::Mapped(_))
    }

    /// Saves the index as one file (format in the module docs of `file`), through a temporary sibling
    /// renamed into place, so a reader never sees half a file.
    pub fn save(&self, path: &Path) -> Result<()> {
        let parts = self.parts();
        let header = file::Header {
            format_version: 0,
            config: self.config,
            items: self.items,
            dim: self.dim,
            entry: self.entry,
            max_level: self.max_level,
            max_norm_sq: self.max_norm_sq,
            embeddings_xxh3: format!("{:016x}", self.embeddings_xxh3),
            payload_xxh3: String::new(),
            sections: Vec::new(),
        };
        let levels = self.levels();
        let sections: [&[u8]; 7] = [
            bytemuck::cast_slice(parts.ids),
            bytemuck::cast_slice(parts.points.vectors),
            bytemuck::cast_slice(parts.points.extra),
            levels,
            bytemuck::cast_slice(parts.links.upper_start),
            bytemuck::cast_slice(parts.links.level0),
            bytemuck::cast_slice(parts.links.upper),
        ];
        file::write(path, header, &sections)
    }

    /// Maps an index file written by [`HnswIndex::save`], verifying its checksum and links.
    pub fn load(path: &Path) -> Result<Self> {
        let mapped = file::map(path)?;
        let h = mapped.header.clone();
        h.config.check()?;
        let corrupt = |reason: String| file::corrupt(path, reason);
        let embeddings_xxh3 = u64::from_str_radix(&h.embeddings_xxh3, 16)
            .map_err(|_| corrupt(format!("embeddings checksum {:?}", h.embeddings_xxh3)))?;
        let index = Self {
            config: h.config,
            items: h.items,
            dim: h.dim,
            entry: h.entry,
            max_level: h.max_level,
            max_norm_sq: h.max_norm_sq,
            embeddings_xxh3,
            dot: dot_kernel(),
            storage: Storage::Mapped(mapped),
        };
        index.check_mapped(path)?;
        Ok(index)
    }

    /// [`HnswIndex::load`], then refuses the index with [`Error::HnswStale`] unless it was built from
    /// exactly `items` (same ids and values, in any row order).
    pub fn load_for(path: &Path, items: &EmbeddingMatrix) -> Result<Self> {
        let index = Self::load(path)?;
        let given = embeddings_checksum(items);
        if given != index.embeddings_xxh3 {
            return Err(Error::HnswStale {
                path: path.to_path_buf(),
                built_from: format!("{:016x}", index.embeddings_xxh3),
                given: format!("{given:016x}"),
            });
        }
        Ok(index)
    }

    /// Checks every section's length and every link of a mapped index.
    fn check_mapped(&self, path: &Path) -> Result<()> {
        let Storage::Mapped(mapped) = &self.storage else {
            return Ok(());
        };
        let (n, m) = (self.items, self.config.max_connections);
        let levels = mapped.section(3);
        file::expect_len(path, "levels", levels, n)?;
        let upper_lists: usize = levels.iter().map(|&l| l as usize).sum();
        let expected = [
            4 * n,
            4 * n * self.dim,
            4 * n,
            n,
            4 * (n + 1),
            4 * n * (2 * m + 1),
            4 * upper_lists * (m + 1),
        ];
        for (i, len) in expected.into_iter().enumerate() {
            let section = mapped.section(i);
            file::expect_len(path, file::SECTIONS[i], section, len)?;
            if !(section.as_ptr() as usize).is_multiple_of(4) {
                return Err(file::corrupt(path, "misaligned section".into()));
            }
        }
        let parts = self.parts();
        let links_ok = parts
            .links
            .level0
            .par_chunks(2 * m + 1)
            .chain(parts.links.upper.par_chunks(m + 1))
            .all(|list| {
                (list[0] as usize) < list.len() && list[1..].iter().all(|&l| (l as usize) < n)
            });
        let levels_ok = self.max_level < 16
            && (n == 0
                || (self.entry as usize) < n
                    && levels[self.entry as usize] as usize == self.max_level)
            && parts
                .links
                .upper_start
                .windows(2)
                .zip(levels)
                .all(|(w, &l)| w[1] - w[0] == l as u32);
        if !links_ok || !levels_ok {
            return Err(file::corrupt(path, "links or levels out of range".into()));
        }
        Ok(())
    }

    fn levels(&self) -> &[u8] {
        match &self.storage {
            Storage::Owned { graph, .. } => &graph.levels,
            Storage::Mapped(mapped) => mapped.section(3),
        }
    }

    fn parts(&self) -> Parts<'_> {
        let (ids, vectors, extra, graph) = match &self.storage {
            Storage::Owned {
                ids,
                vectors,
                extra,
                graph,
            } => (
                &ids[..],
                &vectors[..],
                &extra[..],
                [&graph.upper_start[..], &graph.level0, &graph.upper],
            ),
            Storage::Mapped(mapped) => (
                bytemuck::cast_slice(mapped.section(0)),
                bytemuck::cast_slice(mapped.section(1)),
                bytemuck::cast_slice(mapped.section(2)),
                [4, 5, 6].map(|i| bytemuck::cast_slice(mapped.section(i))),
            ),
        };
        let [upper_start, level0, upper] = graph;
        Parts {
            ids,
            points: Points {
                vectors,
                extra,
                dim: self.dim,
                dot: self.dot,
            },
            links: Links {
                level0,
                upper,
                upper_start,
                m: self.config.max_connections,
                m0: 2 * self.config.max_connections,
            },
        }
    }

    /// The best `fetch` positions for `query` by graph search, best first.
    fn search(&self, parts: &Parts<'_>, query: &[f32], fetch: usize, out: &mut Vec<Near>) {
        let scorer = QueryScorer {
            points: &parts.points,
            query,
        };
        let mut current = Near {
            score: scorer.score(self.entry),
            node: self.entry,
        };
        for level in (1..=self.max_level).rev() {
            current = greedy(&parts.links, current, level, &scorer);
        }
        let ef = self.config.ef_search.max(fetch);
        with_scratch(|scratch| {
            search_layer(&parts.links, current, ef, 0, &scorer, scratch, out);
        });
    }

    fn top_k_row(&self, query: &[f32], k: usize, excluded: &[u32]) -> Vec<ScoredItem> {
        let parts = self.parts();
        let ids = parts.ids;
        let mut excluded_positions: Vec<usize> = excluded
            .iter()
            .filter_map(|id| ids.binary_search(id).ok())
            .collect();
        excluded_positions.sort_unstable();
        excluded_positions.dedup();
        let fetch = k + excluded_positions.len();
        let score = |p: usize| (self.dot)(query, parts.points.row(p as u32));
        if fetch >= self.items {
            // Exact scan: cheaper than a graph search this wide, and complete.
            let scores: Vec<f32> = (0..self.items).map(score).collect();
            let mut top = BoundedTopK::new(k);
            let mut from = 0;
            for &skip in &excluded_positions {
                top.offer(&scores[from..skip], from as u32);
                from = skip + 1;
            }
            top.offer(&scores[from..], from as u32);
            return top
                .into_sorted()
                .map(|(p, score)| ScoredItem {
                    id: ids[p as usize],
                    score,
                })
                .collect();
        }
        let mut found = Vec::new();
        self.search(&parts, query, fetch, &mut found);
        let mut out: Vec<ScoredItem> = found
            .into_iter()
            .map(|near| near.node as usize)
            .filter(|p| excluded_positions.binary_search(p).is_err())
            .map(|p| ScoredItem {
                id: ids[p],
                score: score(p),
            })
            .collect();
        out.sort_unstable_by(result_order);
        out.truncate(k);
        out
    }
}

/// Scores nodes against a query (whose extra coordinate is 0).
struct QueryScorer<'a> {
    points: &'a Points<'a>,
    query: &'a [f32],
}

impl Scorer for QueryScorer<'_> {
    #[inline(always)]
    fn score(&self, node: u32) -> f32 {
        (self.points.dot)(self.query, self.points.row(node))
    }

    #[inline(always)]
    fn prefetch(&self, node: u32) {
        self.points.prefetch(node);
    }
}

impl TopK for HnswIndex {
    /// Approximate: may miss some of the true top `k`, and may return fewer than `k` items.
    fn top_k(
        &self,
        queries: MatrixView<'_>,
        k: usize,
        exclusions: Option<&Exclusions>,
    ) -> Result<Vec<Vec<ScoredItem>>> {
        crate::topk::check_queries(self.dim, queries, exclusions)?;
        let k = k.min(self.items);
        if k == 0 {
            return Ok(vec![Vec::new(); queries.rows()]);
        }
        if queries.rows() == 1 {
            // A single query (as a server asks): on the caller's thread.
            let excluded = exclusions.map_or(&[][..], |e| e.row(0));
            return Ok(vec![self.top_k_row(queries.row(0), k, excluded)]);
        }
        Ok((0..queries.rows())
            .into_par_iter()
            .map(|r| {
                let excluded = exclusions.map_or(&[][..], |e| e.row(r));
                self.top_k_row(queries.row(r), k, excluded)
            })
            .collect())
    }

    fn is_exact(&self) -> bool {
        false
    }

    fn len(&self) -> usize {
        self.items
    }

    fn dim(&self) -> usize {
        self.dim
    }
}

#[cfg(test)]
mod tests;
