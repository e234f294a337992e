//! Plain row-major `f32` matrices, item ids, scored items and per-query exclusions.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// One retrieved item: its id and its inner-product score with the query.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScoredItem {
    /// The item id (as given in the [`EmbeddingMatrix`]).
    pub id: u32,
    /// The inner product of the query and item embeddings.
    pub score: f32,
}

/// A borrowed row-major matrix of `f32` values (queries, usually), `rows x dim`.
///
/// Every value is checked to be finite on construction.
#[derive(Debug, Clone, Copy)]
pub struct MatrixView<'a> {
    data: &'a [f32],
    dim: usize,
}

impl<'a> MatrixView<'a> {
    /// Wraps `data` (row-major, `rows * dim` values) as a matrix with `dim` columns.
    pub fn new(data: &'a [f32], dim: usize) -> Result<Self> {
        check_shape("queries", data, dim)?;
        Ok(Self { data, dim })
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.data.len() / self.dim
    }

    /// Number of columns.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The flat row-major data.
    pub fn data(&self) -> &'a [f32] {
        self.data
    }

    /// Row `i`; panics when `i >= rows()`, like slice indexing.
    pub fn row(&self, i: usize) -> &'a [f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }
}

/// Item (or user) embeddings: one row of `dim` values per id, row-major.
///
/// Invariants, checked by [`EmbeddingMatrix::new`]: `dim >= 1`, `data.len() == ids.len() * dim`, ids unique,
/// every value finite.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingMatrix {
    ids: Vec<u32>,
    dim: usize,
    data: Vec<f32>,
}

impl EmbeddingMatrix {
    /// Builds a matrix, checking the invariants listed on the type.
    pub fn new(ids: Vec<u32>, dim: usize, data: Vec<f32>) -> Result<Self> {
        check_shape("embedding matrix", &data, dim)?;
        let rows = data.len() / dim;
        if ids.len() != rows {
            return Err(Error::IdCount {
                ids: ids.len(),
                rows,
            });
        }
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        if let Some(pair) = sorted.windows(2).find(|w| w[0] == w[1]) {
            return Err(Error::DuplicateId { id: pair[0] });
        }
        Ok(Self { ids, dim, data })
    }

    /// The ids, one per row.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Number of columns.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Number of rows (items).
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True when the matrix has no rows.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The flat row-major data.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// Row `i`; panics when `i >= len()`, like slice indexing.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    /// The values as a [`MatrixView`] (to use these embeddings as queries).
    pub fn view(&self) -> MatrixView<'_> {
        MatrixView {
            data: &self.data,
            dim: self.dim,
        }
    }

    /// Takes the matrix apart into `(ids, dim, data)`.
    pub fn into_parts(self) -> (Vec<u32>, usize, Vec<f32>) {
        (self.ids, self.dim, self.data)
    }

    /// The same rows reordered by ascending id.
    pub(crate) fn sorted_by_id(self) -> Self {
        if self.ids.windows(2).all(|w| w[0] < w[1]) {
            return self;
        }
        let mut order: Vec<usize> = (0..self.ids.len()).collect();
        order.sort_unstable_by_key(|&i| self.ids[i]);
        let ids = order.iter().map(|&i| self.ids[i]).collect();
        let mut data = Vec::with_capacity(self.data.len());
        for &i in &order {
            data.extend_from_slice(self.row(i));
        }
        Self {
            ids,
            dim: self.dim,
            data,
        }
    }
}

/// Item ids to leave out of each query's results, in compressed-row (CSR) form: the ids of query row `i`
/// are `ids[offsets[i]..offsets[i + 1]]`.
///
/// Ids that are not in the catalogue are ignored; repeated ids are harmless.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Exclusions {
    offsets: Vec<usize>,
    ids: Vec<u32>,
}

impl Exclusions {
    /// Builds exclusions from CSR parts; `offsets` has one entry per row plus one, starts at 0, never
    /// decreases, and ends at `ids.len()`.
    pub fn new(offsets: Vec<usize>, ids: Vec<u32>) -> Result<Self> {
        let bad = |reason: String| Err(Error::ExclusionOffsets { reason });
        match (offsets.first(), offsets.last()) {
            (Some(0), Some(&last)) if last == ids.len() => {}
            (None, _) => return bad("offsets is empty, expected rows + 1 entries".into()),
            (first, last) => {
                return bad(format!(
                    "offsets must start at 0 and end at {} (the number of ids), found {:?} and {:?}",
                    ids.len(),
                    first,
                    last
                ));
            }
        }
        if let Some(i) = offsets.windows(2).position(|w| w[0] > w[1]) {
            return bad(format!("offsets decrease at row {i}"));
        }
        Ok(Self { offsets, ids })
    }

    /// Builds exclusions from one list of ids per row.
    pub fn from_rows<R: AsRef<[u32]>>(rows: impl IntoIterator<Item = R>) -> Self {
        let mut offsets = vec![0];
        let mut ids = Vec::new();
        for row in rows {
            ids.extend_from_slice(row.as_ref());
            offsets.push(ids.len());
        }
        Self { offsets, ids }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    /// The excluded ids of row `i`; panics when `i >= rows()`, like slice indexing.
    pub fn row(&self, i: usize) -> &[u32] {
        &self.ids[self.offsets[i]..self.offsets[i + 1]]
    }
}

fn check_shape(what: &'static str, data: &[f32], dim: usize) -> Result<()> {
    if dim == 0 {
        return Err(Error::ZeroDim { what });
    }
    if !data.len().is_multiple_of(dim) {
        return Err(Error::Shape {
            what,
            len: data.len(),
            dim,
        });
    }
    if let Some(pos) = data.iter().position(|v| !v.is_finite()) {
        return Err(Error::NotFinite {
            what,
            row: pos / dim,
            col: pos % dim,
            value: data[pos],
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedding_matrix_checks_shape_ids_and_values() {
        assert!(matches!(
            EmbeddingMatrix::new(vec![1], 0, vec![]),
            Err(Error::ZeroDim { .. })
        ));
        assert!(matches!(
            EmbeddingMatrix::new(vec![1], 2, vec![1.0, 2.0, 3.0]),
            Err(Error::Shape { len: 3, dim: 2, .. })
        ));
        assert!(matches!(
            EmbeddingMatrix::new(vec![1], 1, vec![1.0, 2.0]),
            Err(Error::IdCount { ids: 1, rows: 2 })
        ));
        assert!(matches!(
            EmbeddingMatrix::new(vec![4, 4], 1, vec![1.0, 2.0]),
            Err(Error::DuplicateId { id: 4 })
        ));
        assert!(matches!(
            EmbeddingMatrix::new(vec![1, 2], 2, vec![1.0, 2.0, f32::NAN, 0.0]),
            Err(Error::NotFinite { row: 1, col: 0, .. })
        ));
        let m = EmbeddingMatrix::new(vec![9, 3], 2, vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(m.row(1), &[3.0, 4.0]);
        let s = m.sorted_by_id();
        assert_eq!(s.ids(), &[3, 9]);
        assert_eq!(s.data(), &[3.0, 4.0, 1.0, 2.0]);
    }

    #[test]
    fn exclusions_check_offsets() {
        assert!(Exclusions::new(vec![], vec![]).is_err());
        assert!(Exclusions::new(vec![1, 1], vec![5]).is_err());
        assert!(Exclusions::new(vec![0, 2, 1, 2], vec![5, 6]).is_err());
        assert!(Exclusions::new(vec![0, 1], vec![5, 6]).is_err());
        let e = Exclusions::new(vec![0, 2, 2, 3], vec![5, 6, 7]).unwrap();
        assert_eq!(e.rows(), 3);
        assert_eq!(e.row(0), &[5, 6]);
        assert!(e.row(1).is_empty());
        assert_eq!(e, Exclusions::from_rows([vec![5, 6], vec![], vec![7]]));
    }
}
