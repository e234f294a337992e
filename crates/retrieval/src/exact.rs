//! Exact top-K: blocked matrix products (the `gemm` crate) and bounded selection, parallel over query
//! blocks with rayon.

use crate::error::{Error, Result};
use crate::matrix::{EmbeddingMatrix, Exclusions, MatrixView, ScoredItem};
use crate::metrics::rank_of_target;
use crate::topk::{BoundedTopK, TopK};
use rayon::prelude::*;

/// Default number of query rows scored together.
pub const DEFAULT_QUERY_BLOCK: usize = 64;
/// Default number of items scored together (the score buffer is `query block x item block`).
pub const DEFAULT_ITEM_BLOCK: usize = 4096;
/// Largest score buffer (in values) used when whole score rows are needed, as in
/// [`ExactIndex::items_ahead_of_targets`].
const FULL_ROW_BUFFER: usize = 1 << 22;

/// Brute-force inner-product search over the whole catalogue.
///
/// The items are kept sorted by id, so catalogue position order is id order and ties (equal scores) go to
/// the lower id everywhere in this crate.
///
/// ```
/// use dssm_retrieval::{EmbeddingMatrix, ExactIndex, Exclusions, MatrixView, TopK};
///
/// let items = EmbeddingMatrix::new(vec![10, 11, 12], 2, vec![1.0, 0.0, 0.0, 1.0, 0.5, 0.5])?;
/// let index = ExactIndex::new(items);
/// let queries = MatrixView::new(&[1.0, 0.2], 2)?;
/// let top = index.top_k(queries, 2, None)?;
/// assert_eq!(top[0].iter().map(|s| s.id).collect::<Vec<_>>(), vec![10, 12]);
/// let seen = Exclusions::from_rows([vec![10]]);
/// let top = index.top_k(queries, 2, Some(&seen))?;
/// assert_eq!(top[0].iter().map(|s| s.id).collect::<Vec<_>>(), vec![12, 11]);
/// # Ok::<(), dssm_retrieval::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ExactIndex {
    items: EmbeddingMatrix,
    query_block: usize,
    item_block: usize,
}

impl ExactIndex {
    /// Indexes `items` (reordered by ascending id).
    pub fn new(items: EmbeddingMatrix) -> Self {
        Self {
            items: items.sorted_by_id(),
            query_block: DEFAULT_QUERY_BLOCK,
            item_block: DEFAULT_ITEM_BLOCK,
        }
    }

    /// Sets the block sizes (defaults [`DEFAULT_QUERY_BLOCK`] and [`DEFAULT_ITEM_BLOCK`]); zero counts as 1.
    pub fn with_block_sizes(mut self, query_block: usize, item_block: usize) -> Self {
        self.query_block = query_block.max(1);
        self.item_block = item_block.max(1);
        self
    }

    /// The indexed items, sorted by id.
    pub fn items(&self) -> &EmbeddingMatrix {
        &self.items
    }

    /// The catalogue position of item `id`, if present.
    pub fn position_of(&self, id: u32) -> Option<usize> {
        self.items.ids().binary_search(&id).ok()
    }

    /// All scores, `queries.rows() x len()` row-major, columns in catalogue (id) order.
    pub fn scores(&self, queries: MatrixView<'_>) -> Result<Vec<f32>> {
        crate::topk::check_queries(self.items.dim(), queries, None)?;
        let n = self.items.len();
        let mut out = vec![0.0; queries.rows() * n];
        if n == 0 {
            return Ok(out);
        }
        let dim = queries.dim();
        out.par_chunks_mut(self.query_block * n)
            .zip(queries.data().par_chunks(self.query_block * dim))
            .for_each(|(dst, q)| score_block(q, self.items.data(), dim, dst));
        Ok(out)
    }

    /// For each query row `i`, how many candidates rank ahead of item `targets[i]` (0 = first), with the
    /// ids in `exclusions.row(i)` removed from the ranking; `None` (a miss) when the target is not in the
    /// catalogue or is excluded. This is the input of [`crate::RankingReport::from_items_ahead`].
    pub fn items_ahead_of_targets(
        &self,
        queries: MatrixView<'_>,
        targets: &[u32],
        exclusions: Option<&Exclusions>,
    ) -> Result<Vec<Option<usize>>> {
        crate::topk::check_queries(self.items.dim(), queries, exclusions)?;
        if targets.len() != queries.rows() {
            return Err(Error::TargetCount {
                targets: targets.len(),
                queries: queries.rows(),
            });
        }
        let n = self.items.len();
        let dim = queries.dim();
        let block = (FULL_ROW_BUFFER / n.max(1)).clamp(1, self.query_block);
        let blocks: Vec<Vec<Option<usize>>> = queries
            .data()
            .par_chunks(block * dim)
            .enumerate()
            .map_init(Vec::new, |buffer: &mut Vec<f32>, (b, q)| {
                let rows = q.len() / dim;
                buffer.resize(rows * n, 0.0);
                score_block(q, self.items.data(), dim, buffer);
                let mut excluded = Vec::new();
                (0..rows)
                    .map(|r| {
                        let row = b * block + r;
                        let target = self.position_of(targets[row])?;
                        excluded.clear();
                        if let Some(ex) = exclusions {
                            excluded
                                .extend(ex.row(row).iter().filter_map(|&id| self.position_of(id)));
                        }
                        rank_of_target(&buffer[r * n..(r + 1) * n], target, &excluded)
                    })
                    .collect()
            })
            .collect();
        Ok(blocks.into_iter().flatten().collect())
    }

    /// Top-k of one block of query rows, scanning the catalogue in item blocks.
    fn top_k_block(
        &self,
        q: &[f32],
        first_row: usize,
        k: usize,
        exclusions: Option<&Exclusions>,
        buffer: &mut Vec<f32>,
    ) -> Vec<Vec<ScoredItem>> {
        let dim = self.items.dim();
        let n = self.items.len();
        let rows = q.len() / dim;
        // Sorted, de-duplicated excluded positions of each row.
        let excluded: Vec<Vec<u32>> = (0..rows)
            .map(|r| {
                let mut pos: Vec<u32> = exclusions
                    .map(|ex| ex.row(first_row + r))
                    .unwrap_or(&[])
                    .iter()
                    .filter_map(|&id| self.position_of(id).map(|p| p as u32))
                    .collect();
                pos.sort_unstable();
                pos.dedup();
                pos
            })
            .collect();
        let mut cursors = vec![0usize; rows];
        let mut tops: Vec<BoundedTopK> = (0..rows).map(|_| BoundedTopK::new(k)).collect();
        let mut start = 0;
        while start < n {
            let width = self.item_block.min(n - start);
            buffer.resize(rows * width, 0.0);
            let items = &self.items.data()[start * dim..(start + width) * dim];
            score_block(q, items, dim, &mut buffer[..rows * width]);
            let end = (start + width) as u32;
            for r in 0..rows {
                let scores = &buffer[r * width..(r + 1) * width];
                // Offer the segments between excluded positions.
                let mut from = start as u32;
                let ex = &excluded[r];
                while cursors[r] < ex.len() && ex[cursors[r]] < end {
                    let skip = ex[cursors[r]];
                    let lo = (from - start as u32) as usize;
                    let hi = (skip - start as u32) as usize;
                    tops[r].offer(&scores[lo..hi], from);
                    from = skip + 1;
                    cursors[r] += 1;
                }
                tops[r].offer(&scores[(from - start as u32) as usize..], from);
            }
            start += width;
        }
        let ids = self.items.ids();
        tops.into_iter()
            .map(|top| {
                top.into_sorted()
                    .map(|(p, score)| ScoredItem {
                        id: ids[p as usize],
                        score,
                    })
                    .collect()
            })
            .collect()
    }
}

impl TopK for ExactIndex {
    fn top_k(
        &self,
        queries: MatrixView<'_>,
        k: usize,
        exclusions: Option<&Exclusions>,
    ) -> Result<Vec<Vec<ScoredItem>>> {
        crate::topk::check_queries(self.items.dim(), queries, exclusions)?;
        let k = k.min(self.items.len());
        if k == 0 {
            return Ok(vec![Vec::new(); queries.rows()]);
        }
        let dim = queries.dim();
        let qb = self.query_block;
        if queries.rows() <= qb {
            // One block (a single query, as a server asks): on the caller's thread, without a
            // hand-off to rayon's pool.
            return Ok(self.top_k_block(queries.data(), 0, k, exclusions, &mut Vec::new()));
        }
        let blocks: Vec<Vec<Vec<ScoredItem>>> = queries
            .data()
            .par_chunks(qb * dim)
            .enumerate()
            .map_init(Vec::new, |buffer, (b, q)| {
                self.top_k_block(q, b * qb, k, exclusions, buffer)
            })
            .collect();
        Ok(blocks.into_iter().flatten().collect())
    }

    fn is_exact(&self) -> bool {
        true
    }

    fn len(&self) -> usize {
        self.items.len()
    }

    fn dim(&self) -> usize {
        self.items.dim()
    }
}

/// `out[r * width + j] = dot(queries row r, items row j)` with `width = items.len() / dim`, single-threaded
/// (the callers parallelise over query blocks).
pub(crate) fn score_block(queries: &[f32], items: &[f32], dim: usize, out: &mut [f32]) {
    let m = queries.len() / dim;
    let n = items.len() / dim;
    debug_assert_eq!(out.len(), m * n);
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: `out` holds m x n values (row stride n, column stride 1), `queries` m x dim (row stride dim),
    // and the right-hand side is items^T, dim x n, read as element (d, j) = items[j * dim + d]: row stride 1,
    // column stride dim. Every index stays inside the slices, and `out` does not alias the inputs.
    unsafe {
        gemm::gemm(
            m,
            n,
            dim,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            queries.as_ptr(),
            1,
            dim as isize,
            items.as_ptr(),
            dim as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::seq::SliceRandom;
    use rand::{RngExt, SeedableRng};

    /// Small integer values: every product and sum is exact in f32, so the blocked kernel and the naive
    /// loop agree bit for bit, and equal scores (ties) are common.
    fn integer_matrix(rng: &mut StdRng, rows: usize, dim: usize) -> Vec<f32> {
        (0..rows * dim)
            .map(|_| rng.random_range(-3i32..=3) as f32)
            .collect()
    }

    fn naive_top_k(
        items: &EmbeddingMatrix,
        query: &[f32],
        k: usize,
        excluded: &[u32],
    ) -> Vec<ScoredItem> {
        let mut all: Vec<ScoredItem> = (0..items.len())
            .filter(|&i| !excluded.contains(&items.ids()[i]))
            .map(|i| ScoredItem {
                id: items.ids()[i],
                score: items.row(i).iter().zip(query).map(|(a, b)| a * b).sum(),
            })
            .collect();
        all.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id)));
        all.truncate(k);
        all
    }

    fn shuffled_ids(rng: &mut StdRng, n: usize) -> Vec<u32> {
        let mut ids: Vec<u32> = (0..n as u32).map(|i| 3 * i + 7).collect();
        ids.shuffle(rng);
        ids
    }

    #[test]
    fn exact_top_k_equals_naive_full_sort() {
        let mut rng = StdRng::seed_from_u64(1);
        for &(n, queries, dim) in &[(1, 1, 1), (7, 3, 4), (100, 70, 8), (5000, 130, 16)] {
            let items = EmbeddingMatrix::new(
                shuffled_ids(&mut rng, n),
                dim,
                integer_matrix(&mut rng, n, dim),
            )
            .unwrap();
            let q = integer_matrix(&mut rng, queries, dim);
            let view = MatrixView::new(&q, dim).unwrap();
            for index in [
                ExactIndex::new(items.clone()),
                ExactIndex::new(items.clone()).with_block_sizes(16, 333),
            ] {
                for k in [1, 10, n + 5] {
                    let got = index.top_k(view, k, None).unwrap();
                    assert_eq!(got.len(), queries);
                    for (r, row) in got.iter().enumerate() {
                        assert_eq!(
                            row,
                            &naive_top_k(&items, view.row(r), k, &[]),
                            "n {n} k {k}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn masked_search_never_returns_excluded_items() {
        let mut rng = StdRng::seed_from_u64(2);
        let (n, queries, dim) = (3000, 90, 8);
        let ids = shuffled_ids(&mut rng, n);
        let items =
            EmbeddingMatrix::new(ids.clone(), dim, integer_matrix(&mut rng, n, dim)).unwrap();
        let q = integer_matrix(&mut rng, queries, dim);
        let view = MatrixView::new(&q, dim).unwrap();
        // Row r excludes a random tenth of the catalogue (with repeats and unknown ids), row 0 all of it.
        let rows: Vec<Vec<u32>> = (0..queries)
            .map(|r| {
                if r == 0 {
                    return ids.clone();
                }
                let mut ex: Vec<u32> = (0..n / 10).map(|_| ids[rng.random_range(0..n)]).collect();
                ex.push(1);
                ex
            })
            .collect();
        let exclusions = Exclusions::from_rows(&rows);
        let index = ExactIndex::new(items.clone()).with_block_sizes(7, 500);
        for k in [1, 10, 100, n] {
            let got = index.top_k(view, k, Some(&exclusions)).unwrap();
            assert!(got[0].is_empty());
            for (r, row) in got.iter().enumerate() {
                assert!(row.iter().all(|s| !rows[r].contains(&s.id)));
                assert_eq!(row, &naive_top_k(&items, view.row(r), k, &rows[r]));
            }
        }
        let wrong_rows = Exclusions::from_rows([vec![1u32]]);
        assert!(matches!(
            index.top_k(view, 5, Some(&wrong_rows)),
            Err(Error::ExclusionRows {
                exclusions: 1,
                expected: 90
            })
        ));
        let bad_dim = MatrixView::new(&q[..dim * 2], dim * 2).unwrap();
        assert!(matches!(
            index.top_k(bad_dim, 5, None),
            Err(Error::DimMismatch {
                queries: 16,
                index: 8
            })
        ));
    }

    #[test]
    fn items_ahead_of_targets_matches_sorted_position() {
        let mut rng = StdRng::seed_from_u64(3);
        let (n, queries, dim) = (800, 40, 6);
        let ids = shuffled_ids(&mut rng, n);
        let items =
            EmbeddingMatrix::new(ids.clone(), dim, integer_matrix(&mut rng, n, dim)).unwrap();
        let q = integer_matrix(&mut rng, queries, dim);
        let view = MatrixView::new(&q, dim).unwrap();
        let targets: Vec<u32> = (0..queries)
            .map(|r| {
                if r == 5 {
                    2
                } else {
                    ids[rng.random_range(0..n)]
                }
            })
            .collect();
        let rows: Vec<Vec<u32>> = (0..queries)
            .map(|r| {
                let mut ex: Vec<u32> = (0..50).map(|_| ids[rng.random_range(0..n)]).collect();
                if r == 7 {
                    ex.push(targets[r]);
                }
                ex
            })
            .collect();
        let exclusions = Exclusions::from_rows(&rows);
        let index = ExactIndex::new(items.clone());
        let ahead = index
            .items_ahead_of_targets(view, &targets, Some(&exclusions))
            .unwrap();
        for r in 0..queries {
            let full = naive_top_k(&items, view.row(r), n, &rows[r]);
            let expected = full.iter().position(|s| s.id == targets[r]);
            assert_eq!(ahead[r], expected, "row {r}");
        }
        assert_eq!(ahead[5], None, "target not in the catalogue");
        assert_eq!(ahead[7], None, "excluded target");
        let scores = index.scores(view).unwrap();
        assert_eq!(scores.len(), queries * n);
        let sorted = index.items();
        assert_eq!(
            scores[n + 3],
            sorted
                .row(3)
                .iter()
                .zip(view.row(1))
                .map(|(a, b)| a * b)
                .sum::<f32>()
        );
    }

    #[test]
    fn float_scores_are_sorted_and_close_to_naive() {
        let mut rng = StdRng::seed_from_u64(4);
        let (n, queries, dim) = (2000, 20, 32);
        let data: Vec<f32> = (0..n * dim)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect();
        let items = EmbeddingMatrix::new((0..n as u32).collect(), dim, data).unwrap();
        let q: Vec<f32> = (0..queries * dim)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect();
        let view = MatrixView::new(&q, dim).unwrap();
        let got = ExactIndex::new(items.clone())
            .top_k(view, 50, None)
            .unwrap();
        for (r, row) in got.iter().enumerate() {
            assert!(row.windows(2).all(|w| w[0].score >= w[1].score));
            let naive = naive_top_k(&items, view.row(r), 50, &[]);
            for (a, b) in row.iter().zip(&naive) {
                assert!((a.score - b.score).abs() < 1e-4);
            }
        }
    }
}
