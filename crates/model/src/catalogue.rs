//! Softmax cross-entropy of query vectors against a whole item matrix, without the `[P, C]`
//! score matrix as a tensor: the next-item loss of the sequence tower. On CPU (f32) one op does
//! blocks of rows in parallel: scores of the block (`gemm`), the softmax row in place, and the
//! block's gradients `dQ = G V`, `dV += G^T Q` (partials added in block order, so the result does
//! not depend on the thread count); the backward only scales them by the incoming gradient.
//! Elsewhere the same maths runs as Candle ops (`matmul`, then [`softmax_cross_entropy`]).

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::engine::kernels::{matmul_a_wt, matmul_d_w, matmul_dt_a, softmax_row};
use crate::softmax::softmax_cross_entropy;

/// Rows per block of the fused op.
const BLOCK_ROWS: usize = 256;

/// Catalogue columns left out of each row's softmax, row by row: what the sequence task's
/// `loss.exclude_seen` leaves out (the items a user has already seen before each target). A row's
/// own target is never left out, even when listed.
///
/// ```
/// let mut excluded = dssm_model::RowExclusions::default();
/// excluded.push_row([3, 1]);
/// excluded.push_row([]);
/// assert_eq!((excluded.rows(), excluded.row(0), excluded.row(1)), (2, &[3, 1][..], &[][..]));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowExclusions {
    /// Row `i`'s columns are `columns[offsets[i]..offsets[i + 1]]`.
    offsets: Vec<usize>,
    columns: Vec<u32>,
}

impl Default for RowExclusions {
    fn default() -> Self {
        Self {
            offsets: vec![0],
            columns: Vec::new(),
        }
    }
}

impl RowExclusions {
    /// Appends the next row's excluded columns.
    pub fn push_row(&mut self, columns: impl IntoIterator<Item = u32>) {
        self.columns.extend(columns);
        self.offsets.push(self.columns.len());
    }

    /// Rows pushed so far.
    pub fn rows(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Row `i`'s excluded columns.
    pub fn row(&self, i: usize) -> &[u32] {
        &self.columns[self.offsets[i]..self.offsets[i + 1]]
    }

    /// `(row, column)` pairs, the row's target left out (the form [`softmax_cross_entropy`]
    /// reads).
    fn pairs(&self, targets: &[u32]) -> Vec<(u32, u32)> {
        (0..self.rows())
            .flat_map(|i| {
                let t = targets[i];
                self.row(i)
                    .iter()
                    .filter(move |&&j| j != t)
                    .map(move |&j| (i as u32, j))
            })
            .collect()
    }
}

/// Mean over rows of `-ln softmax(scale * queries items^T)[row, targets[row]]`: `queries`
/// `[P, D]`, `items` `[C, D]`, `targets` `P` columns of `0..C`; with `excluded` (one row per
/// query, shared with the op rather than copied), its columns are left out of each row's
/// softmax. Differentiable in both inputs.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let q = Tensor::new(&[[1f32, 0.0]], &Device::Cpu)?;
/// let items = Tensor::new(&[[1f32, 0.0], [0.0, 1.0]], &Device::Cpu)?;
/// // Scores [1, 0] at scale 1, target 0: -ln(e / (e + 1)).
/// let loss = dssm_model::catalogue_softmax_cross_entropy(&q, &items, &[0], None, 1.0)?;
/// let e = std::f32::consts::E;
/// assert!((loss.to_scalar::<f32>()? + (e / (e + 1.0)).ln()).abs() < 1e-6);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn catalogue_softmax_cross_entropy(
    queries: &Tensor,
    items: &Tensor,
    targets: &[u32],
    excluded: Option<Arc<RowExclusions>>,
    scale: f64,
) -> candle_core::Result<Tensor> {
    let (rows, dim) = queries.dims2()?;
    let (columns, item_dim) = items.dims2()?;
    if dim != item_dim || targets.len() != rows {
        candle_core::bail!(
            "catalogue softmax: queries {:?}, items {:?}, {} targets",
            queries.dims(),
            items.dims(),
            targets.len()
        );
    }
    if let Some(t) = targets.iter().find(|&&t| t as usize >= columns) {
        candle_core::bail!("catalogue softmax: target {t} of {columns} items");
    }
    if let Some(e) = &excluded {
        if e.rows() != rows {
            candle_core::bail!(
                "catalogue softmax: exclusions for {} rows, {rows} queries",
                e.rows()
            );
        }
        if let Some(j) = e.columns.iter().find(|&&j| j as usize >= columns) {
            candle_core::bail!("catalogue softmax: excluded column {j} of {columns} items");
        }
    }
    let fused =
        queries.device().is_cpu() && queries.dtype() == DType::F32 && items.dtype() == DType::F32;
    if !fused {
        let scores = queries.matmul(&items.t()?)?;
        let pairs = excluded.map(|e| e.pairs(targets)).unwrap_or_default();
        return softmax_cross_entropy(&scores, scale, None, &pairs, targets);
    }
    let op = CatalogueXent {
        scale: scale as f32,
        targets: Arc::new(targets.to_vec()),
        excluded,
        grads: Arc::new(Mutex::new(None)),
    };
    queries.contiguous()?.apply_op2(&items.contiguous()?, op)
}

/// The forward pass's gradients of the mean loss, `(dQ, dV)`, for the backward.
type Grads = Arc<Mutex<Option<(Vec<f32>, Vec<f32>)>>>;

struct CatalogueXent {
    scale: f32,
    targets: Arc<Vec<u32>>,
    excluded: Option<Arc<RowExclusions>>,
    grads: Grads,
}

/// One block's loss sum, `dQ` rows and `dV` partial.
struct BlockOut {
    loss: f64,
    d_queries: Vec<f32>,
    d_items: Vec<f32>,
}

impl CatalogueXent {
    /// The loss and gradients of rows `first..first + q.len() / dim`.
    fn block(
        &self,
        first: usize,
        q: &[f32],
        v: &[f32],
        (c, dim, rows): (usize, usize, usize),
    ) -> BlockOut {
        let m = q.len() / dim;
        let mut z = vec![0f32; m * c];
        matmul_a_wt(&mut z, q, v, m, c, dim);
        // d loss / d z = (softmax - onehot) / rows; z = scale * scores.
        let factor = 1.0 / rows as f32;
        let mut loss = 0.0;
        for (i, row) in z.chunks_mut(c).enumerate() {
            row.iter_mut().for_each(|s| *s *= self.scale);
            let target = self.targets[first + i];
            let left_out = self.excluded.as_ref().map_or(&[][..], |e| e.row(first + i));
            for &j in left_out.iter().filter(|&&j| j != target) {
                row[j as usize] = f32::NEG_INFINITY;
            }
            loss += softmax_row(row, target as usize, factor);
            row.iter_mut().for_each(|g| *g *= self.scale);
        }
        let mut d_queries = vec![0f32; m * dim];
        matmul_d_w(&mut d_queries, &z, v, m, c, dim);
        let mut d_items = vec![0f32; c * dim];
        matmul_dt_a(&mut d_items, &z, q, m, c, dim);
        BlockOut {
            loss,
            d_queries,
            d_items,
        }
    }
}

impl CustomOp2 for CatalogueXent {
    fn name(&self) -> &'static str {
        "dssm-catalogue-softmax-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let q = crate::ops::contiguous_slice::<f32>(s1, l1)?;
        let v = crate::ops::contiguous_slice::<f32>(s2, l2)?;
        let (rows, dim) = l1.shape().dims2()?;
        let c = l2.shape().dims2()?.0;
        let blocks: Vec<BlockOut> = q
            .par_chunks(BLOCK_ROWS * dim)
            .enumerate()
            .map(|(b, qb)| self.block(b * BLOCK_ROWS, qb, v, (c, dim, rows)))
            .collect();
        let mut loss = 0.0;
        let mut d_queries = Vec::with_capacity(rows * dim);
        let mut d_items = vec![0f32; c * dim];
        for block in blocks {
            loss += block.loss;
            d_queries.extend_from_slice(&block.d_queries);
            d_items
                .iter_mut()
                .zip(&block.d_items)
                .for_each(|(a, &b)| *a += b);
        }
        *self
            .grads
            .lock()
            .map_err(|_| candle_core::Error::Msg("catalogue softmax: poisoned lock".into()))? =
            Some((d_queries, d_items));
        let mean = (loss / rows.max(1) as f64) as f32;
        Ok((CpuStorage::F32(vec![mean]), Shape::from(())))
    }

    fn bwd(
        &self,
        queries: &Tensor,
        items: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (d_queries, d_items) = self
            .grads
            .lock()
            .map_err(|_| candle_core::Error::Msg("catalogue softmax: poisoned lock".into()))?
            .take()
            .ok_or_else(|| candle_core::Error::Msg("catalogue softmax: backward twice".into()))?;
        let g = grad_res.to_dtype(DType::F32)?.reshape(())?;
        let dq =
            Tensor::from_vec(d_queries, queries.dims(), queries.device())?.broadcast_mul(&g)?;
        let dv = Tensor::from_vec(d_items, items.dims(), items.device())?.broadcast_mul(&g)?;
        Ok((Some(dq), Some(dv)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) % 1000) as f32 / 500.0
                    - 1.0
            })
            .collect()
    }

    /// The fused op against Candle ops (matmul, then the unfused softmax with the same
    /// exclusions as pairs) in loss and both gradients, on `p` rows of `c` items.
    fn assert_fused_matches_candle(p: usize, c: usize, excluded: Option<Arc<RowExclusions>>) {
        let d = 8;
        let device = Device::Cpu;
        let q = Var::from_vec(values(p * d, 1), (p, d), &device).unwrap();
        let v = Var::from_vec(values(c * d, 2), (c, d), &device).unwrap();
        let targets: Vec<u32> = (0..p as u32).map(|i| (i * 7) % c as u32).collect();
        let pairs = excluded
            .as_ref()
            .map(|e| e.pairs(&targets))
            .unwrap_or_default();
        let fused = catalogue_softmax_cross_entropy(&q, &v, &targets, excluded, 20.0).unwrap();
        let scores = q.matmul(&v.t().unwrap()).unwrap();
        let plain =
            crate::softmax::softmax_cross_entropy_unfused(&scores, 20.0, None, &pairs, &targets)
                .unwrap();
        let (a, b) = (
            fused.to_scalar::<f32>().unwrap(),
            plain.to_scalar::<f32>().unwrap(),
        );
        assert!((a - b).abs() < 1e-4 * b.abs(), "{a} vs {b}");
        let (gf, gp) = (
            (fused * 3.0).unwrap().backward().unwrap(),
            (plain * 3.0).unwrap().backward().unwrap(),
        );
        for var in [&q, &v] {
            let read = |g: &candle_core::backprop::GradStore| -> Vec<f32> {
                g.get(var)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap()
            };
            let (x, y) = (read(&gf), read(&gp));
            let worst = x
                .iter()
                .zip(&y)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            let size = y.iter().map(|b| b.abs()).fold(0f32, f32::max);
            assert!(
                worst < 1e-4 * size.max(1e-6),
                "gradient off by {worst} of {size}"
            );
        }
    }

    #[test]
    fn the_fused_op_matches_candle_ops_in_loss_and_both_gradients() {
        // 600 rows: three blocks, the last one partial.
        assert_fused_matches_candle(600, 37, None);
    }

    #[test]
    fn excluded_columns_leave_the_softmax_in_both_paths() {
        // Row i leaves out the columns before its target (a user's earlier items), and lists
        // its own target too every third row (kept: a target is never left out).
        let (p, c) = (600, 37);
        let mut excluded = RowExclusions::default();
        for i in 0..p as u32 {
            let target = (i * 7) % c as u32;
            let listed_target = (i % 3 == 0).then_some(target);
            excluded.push_row((0..target).chain(listed_target));
        }
        assert_fused_matches_candle(p, c, Some(Arc::new(excluded)));
        // The loss of one row with every other column left out is 0 (softmax of one column).
        let device = Device::Cpu;
        let q = Tensor::new(&[[1f32, 2.0]], &device).unwrap();
        let v = Tensor::new(&[[0.5f32, 1.0], [3.0, 3.0], [-1.0, 2.0]], &device).unwrap();
        let mut all_but_target = RowExclusions::default();
        all_but_target.push_row([1, 2]);
        let loss =
            catalogue_softmax_cross_entropy(&q, &v, &[0], Some(Arc::new(all_but_target)), 1.0)
                .and_then(|l| l.to_scalar::<f32>())
                .unwrap();
        assert!(loss.abs() < 1e-6, "{loss}");
        let unmasked = catalogue_softmax_cross_entropy(&q, &v, &[0], None, 1.0)
            .and_then(|l| l.to_scalar::<f32>())
            .unwrap();
        assert!(unmasked > 1.0, "{unmasked}");
    }

    #[test]
    fn bad_shapes_and_targets_are_errors() {
        let device = Device::Cpu;
        let q = Tensor::zeros((2, 3), DType::F32, &device).unwrap();
        let v = Tensor::zeros((4, 3), DType::F32, &device).unwrap();
        assert!(catalogue_softmax_cross_entropy(&q, &v, &[0], None, 1.0).is_err());
        assert!(catalogue_softmax_cross_entropy(&q, &v, &[0, 4], None, 1.0).is_err());
        let w = Tensor::zeros((4, 2), DType::F32, &device).unwrap();
        assert!(catalogue_softmax_cross_entropy(&q, &w, &[0, 1], None, 1.0).is_err());
        let mut one_row = RowExclusions::default();
        one_row.push_row([1]);
        let refused = |e: &RowExclusions| {
            catalogue_softmax_cross_entropy(&q, &v, &[0, 1], Some(Arc::new(e.clone())), 1.0)
                .is_err()
        };
        assert!(refused(&one_row));
        one_row.push_row([4]);
        assert!(refused(&one_row));
    }
}
