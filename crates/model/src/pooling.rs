//! Field pooling: each field's embedding is a weighted sum of its slots (a multi-hot field's
//! mean or sum, a single-slot field's one slot). As a batched matmul `[B, F, T] x [B, T, E]`,
//! Candle runs B tiny products one after another, forward and twice backward, which costs more
//! than the rest of an item tower over a whole catalogue; on CPU it is one custom op here, with
//! its own backward.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};

/// `[B, F, E]`: field `f` of row `r` is `sum_t weights[r, f, t] * slots[r, t, :]`, with
/// `slots` `[B, T, E]` and `weights` `B * F * T` values, row-major.
///
/// ```
/// use candle_core::{Device, Tensor};
/// // One row, two slots, one field: the mean of the two slots.
/// let slots = Tensor::new(&[[[1f32, 2.0], [3.0, 4.0]]], &Device::Cpu).unwrap();
/// let pooled = dssm_model::pool_fields(&slots, vec![0.5, 0.5], 1).unwrap();
/// assert_eq!(pooled.to_vec3::<f32>().unwrap(), [[[2.0, 3.0]]]);
/// ```
pub fn pool_fields(
    slots: &Tensor,
    weights: Vec<f32>,
    fields: usize,
) -> candle_core::Result<Tensor> {
    let (b, t, _) = slots.dims3()?;
    if weights.len() != b * fields * t {
        candle_core::bail!(
            "pool_fields: {} weights for {b} rows x {fields} fields x {t} slots",
            weights.len()
        );
    }
    if !slots.device().is_cpu() || slots.dtype() != DType::F32 {
        let pool = Tensor::from_vec(weights, (b, fields, t), slots.device())?;
        return pool.to_dtype(slots.dtype())?.matmul(slots);
    }
    let op = PoolFields {
        weights: Arc::new(weights),
        fields,
        slots: t,
    };
    slots.contiguous()?.apply_op1(op)
}

/// `[B, F, E]`: field `f` of row `r` is `sum_t weights[r, f, t] * table[ids[r, t], :]`, with
/// `table` `[V, E]`, `ids` `B * T` rows of it and `weights` `B * F * T` values, row-major
/// (`(B, F, T)` is `shape`): the gather and [`pool_fields`] in one op, without the `[B, T, E]`
/// slots in between (CPU, f32; elsewhere the two ops).
///
/// ```
/// use candle_core::{Device, Tensor};
/// let table = Tensor::new(&[[1f32, 2.0], [3.0, 4.0], [5.0, 6.0]], &Device::Cpu).unwrap();
/// // One row, two slots (rows 2 and 0 of the table), one field: their sum.
/// let pooled = dssm_model::embedding_bag(&table, vec![2, 0], vec![1.0, 1.0], (1, 1, 2)).unwrap();
/// assert_eq!(pooled.to_vec3::<f32>().unwrap(), [[[6.0, 8.0]]]);
/// ```
pub fn embedding_bag(
    table: &Tensor,
    ids: Vec<u32>,
    weights: Vec<f32>,
    (rows, fields, slots): (usize, usize, usize),
) -> candle_core::Result<Tensor> {
    let (vocab, dim) = table.dims2()?;
    if ids.len() != rows * slots || weights.len() != rows * fields * slots {
        candle_core::bail!(
            "embedding_bag: {} ids and {} weights for {rows} rows x {fields} fields x {slots} slots",
            ids.len(),
            weights.len()
        );
    }
    if let Some(id) = ids.iter().find(|&&id| id as usize >= vocab) {
        candle_core::bail!("embedding_bag: id {id} of a {vocab}-row table");
    }
    if !table.device().is_cpu() || table.dtype() != DType::F32 {
        let index = Tensor::from_vec(ids, rows * slots, table.device())?;
        let gathered = table.index_select(&index, 0)?.reshape((rows, slots, dim))?;
        return pool_fields(&gathered, weights, fields);
    }
    let op = Gather {
        ids: Arc::new(ids),
        pool: PoolFields {
            weights: Arc::new(weights),
            fields,
            slots,
        },
    };
    table.contiguous()?.apply_op1(op)
}

/// [`embedding_bag`]'s op: the ids' rows of the table, pooled.
#[derive(Clone)]
struct Gather {
    ids: Arc<Vec<u32>>,
    pool: PoolFields,
}

impl CustomOp1 for Gather {
    fn name(&self) -> &'static str {
        "dssm-embedding-bag"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let table = crate::ops::contiguous_slice::<f32>(storage, layout)?;
        let dim = layout.shape().dims2()?.1;
        // Slot `j` is row `ids[j]` of the table: no `[B, T, E]` copy.
        let out = self.pool.pool(table, dim, |j| self.ids[j] as usize);
        let shape = (self.pool.rows(), self.pool.fields, dim);
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }

    fn bwd(
        &self,
        table: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let (vocab, dim) = table.dims2()?;
        let d_slots = self.pool.unpool(&host_f32(grad)?, dim);
        let mut d_table = vec![0f32; vocab * dim];
        for (d, &id) in d_slots.chunks_exact(dim).zip(self.ids.iter()) {
            add_scaled(&mut d_table[id as usize * dim..][..dim], 1.0, d);
        }
        Tensor::from_vec(d_table, (vocab, dim), grad.device()).map(Some)
    }
}

/// [`pool_fields`]'s op (slots to fields) and, through [`PoolFields::unpool`], its backward.
#[derive(Clone)]
struct PoolFields {
    /// `B * F * T`, row-major.
    weights: Arc<Vec<f32>>,
    fields: usize,
    slots: usize,
}

impl PoolFields {
    /// `B`.
    fn rows(&self) -> usize {
        self.weights.len() / (self.fields * self.slots).max(1)
    }

    /// Every nonzero weight as (field row `r * F + f`, slot row `r * T + t`, weight), in that
    /// row-major order.
    fn entries(&self) -> impl Iterator<Item = (usize, usize, f32)> + '_ {
        let (f_n, t_n) = (self.fields, self.slots);
        self.weights
            .iter()
            .enumerate()
            .filter(|&(_, &w)| w != 0.0)
            .map(move |(i, &w)| {
                let (field_row, t) = (i / t_n, i % t_n);
                (field_row, field_row / f_n * t_n + t, w)
            })
    }

    /// `out[r, f, :] = sum_t w[r, f, t] * source[slot(r * T + t), :]` (`source` rows of `dim`).
    fn pool(&self, source: &[f32], dim: usize, slot: impl Fn(usize) -> usize) -> Vec<f32> {
        let mut out = vec![0f32; self.rows() * self.fields * dim];
        for (field_row, slot_row, w) in self.entries() {
            let x = &source[slot(slot_row) * dim..][..dim];
            add_scaled(&mut out[field_row * dim..][..dim], w, x);
        }
        out
    }

    /// `d_x[r, t, :] = sum_f w[r, f, t] * d_out[r, f, :]`.
    fn unpool(&self, d_out: &[f32], dim: usize) -> Vec<f32> {
        let mut d_x = vec![0f32; self.rows() * self.slots * dim];
        for (field_row, slot_row, w) in self.entries() {
            let g = &d_out[field_row * dim..][..dim];
            add_scaled(&mut d_x[slot_row * dim..][..dim], w, g);
        }
        d_x
    }
}

/// `out += w * x`.
fn add_scaled(out: &mut [f32], w: f32, x: &[f32]) {
    out.iter_mut().zip(x).for_each(|(o, &x)| *o += w * x);
}

/// A tensor's values as host `f32`s, row-major.
fn host_f32(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
}

impl CustomOp1 for PoolFields {
    fn name(&self) -> &'static str {
        "dssm-pool-fields"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = crate::ops::contiguous_slice::<f32>(storage, layout)?;
        let (b, _, e) = layout.shape().dims3()?;
        let out = self.pool(x, e, |j| j);
        Ok((CpuStorage::F32(out), Shape::from((b, self.fields, e))))
    }

    fn bwd(
        &self,
        _slots: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let (b, _, e) = grad.dims3()?;
        let d_x = self.unpool(&host_f32(grad)?, e);
        Tensor::from_vec(d_x, (b, self.slots, e), grad.device()).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn pooling_matches_the_batched_matmul_in_value_and_gradient() {
        let (b, f, t, e) = (5, 3, 4, 6);
        let values: Vec<f32> = (0..b * t * e)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
            .collect();
        // Each slot in at most one field; some rows leave a slot out.
        let weights: Vec<f32> = (0..b * f * t)
            .map(|i| {
                let (r, field, slot) = (i / (f * t), i / t % f, i % t);
                if slot % f == field && (r + slot) % 3 != 0 {
                    0.5 + r as f32
                } else {
                    0.0
                }
            })
            .collect();
        let slots = Var::from_vec(values, (b, t, e), &Device::Cpu).unwrap();
        let fused = pool_fields(&slots, weights.clone(), f).unwrap();
        let pool = Tensor::from_vec(weights, (b, f, t), &Device::Cpu).unwrap();
        let plain = pool.matmul(&slots).unwrap();
        let close = |x: &Tensor, y: &Tensor| {
            let x: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
            let y: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(x.len(), y.len());
            for (a, b) in x.iter().zip(&y) {
                assert!((a - b).abs() < 1e-5, "{a} vs {b}");
            }
        };
        close(&fused, &plain);
        // A weighting of the outputs so that every field's gradient differs.
        let mix: Vec<f32> = (0..b * f * e).map(|i| (i % 7) as f32 - 3.0).collect();
        let mix = Tensor::from_vec(mix, (b, f, e), &Device::Cpu).unwrap();
        let gf = (fused * &mix)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gp = (plain * &mix)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        close(gf.get(&slots).unwrap(), gp.get(&slots).unwrap());
    }

    #[test]
    fn the_bag_matches_gather_then_pool_in_value_and_table_gradient() {
        let (b, f, t, e, vocab) = (4, 2, 3, 5, 7);
        let values: Vec<f32> = (0..vocab * e)
            .map(|i| ((i * 29 % 17) as f32 - 8.0) / 5.0)
            .collect();
        // Repeated ids, so the table's gradient adds several slots into one row.
        let ids: Vec<u32> = (0..b * t).map(|i| (i * 3 % vocab) as u32).collect();
        let weights: Vec<f32> = (0..b * f * t)
            .map(|i| {
                if (i / t % f) == (i % t) % f {
                    1.0 / (1 + i % 3) as f32
                } else {
                    0.0
                }
            })
            .collect();
        let table = Var::from_vec(values, (vocab, e), &Device::Cpu).unwrap();
        let bag = embedding_bag(&table, ids.clone(), weights.clone(), (b, f, t)).unwrap();
        let index = Tensor::from_vec(ids, b * t, &Device::Cpu).unwrap();
        let slots = table
            .index_select(&index, 0)
            .unwrap()
            .reshape((b, t, e))
            .unwrap();
        let pool = Tensor::from_vec(weights, (b, f, t), &Device::Cpu).unwrap();
        let plain = pool.matmul(&slots).unwrap();
        let mix: Vec<f32> = (0..b * f * e).map(|i| (i % 5) as f32 - 2.0).collect();
        let mix = Tensor::from_vec(mix, (b, f, e), &Device::Cpu).unwrap();
        let values = |x: &Tensor| x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let close = |x: Vec<f32>, y: Vec<f32>| {
            assert_eq!(x.len(), y.len());
            x.iter()
                .zip(&y)
                .for_each(|(a, b)| assert!((a - b).abs() < 1e-5, "{a} vs {b}"));
        };
        close(values(&bag), values(&plain));
        let gb = (bag * &mix).unwrap().sum_all().unwrap().backward().unwrap();
        let gp = (plain * &mix)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        close(
            values(gb.get(&table).unwrap()),
            values(gp.get(&table).unwrap()),
        );
        let err = embedding_bag(&table, vec![7, 0, 0], vec![1.0; 3], (1, 1, 3)).unwrap_err();
        assert!(err.to_string().contains("id 7"), "{err}");
    }

    #[test]
    fn a_weight_count_that_does_not_match_is_refused() {
        let slots = Tensor::zeros((2, 3, 4), DType::F32, &Device::Cpu).unwrap();
        let err = pool_fields(&slots, vec![1.0; 5], 1).unwrap_err();
        assert!(err.to_string().contains("5 weights"), "{err}");
    }
}
