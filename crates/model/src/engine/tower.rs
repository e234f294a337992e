//! One tower's forward and backward pass over a shard of rows, on the shard's own buffers.
//!
//! The maths is the Candle model's (see the crate docs): field embeddings (mean or sum pooling
//! for multi-valued fields), per-example SENet, the MLP with inverted dropout, optional L2
//! normalisation. The backward pass leaves the tower's SENet and MLP gradients in
//! [`TowerWork::grads`] (that shard's share) and the gradient of every field embedding in
//! [`TowerWork::d_fields`]; [`scatter_table_grads`] adds the latter into the table's gradient.

use crate::config::Pooling;
use crate::dropout::dropout_mask_range;
use crate::error::ModelError;

use super::kernels::{
    act_backward, bias_act_forward, column_sums, copy_row, dot, matmul_a_wt, matmul_d_w,
    matmul_dt_a,
};
use super::plan::TowerPlan;
use super::senet::{self, SenetWork};
use super::{SideIds, grow};

const L2_EPS: f32 = 1e-12;

/// The buffers of one tower on one shard, kept between steps (they only grow).
#[derive(Debug, Default)]
pub(crate) struct TowerWork {
    /// Rows of the shard in the current step.
    pub(crate) rows: usize,
    /// Table row of every id slot, `[rows x slots]`, and its pooling weight (0: padding).
    table_rows: Vec<u32>,
    slot_weights: Vec<f32>,
    /// Field embeddings `[rows x fields * dim]`, then SENet's output.
    fields: Vec<f32>,
    reweighted: Vec<f32>,
    senet: SenetWork,
    /// Per hidden layer: the pre-activation (bias included), the activation after dropout, the
    /// dropout mask.
    pre: Vec<Vec<f32>>,
    post: Vec<Vec<f32>>,
    masks: Vec<Vec<f32>>,
    /// Whether the last forward pass applied dropout (the masks are this step's).
    masked: bool,
    /// The tower's output `[rows x output]` (normalised when the tower is), and 1 / its norm.
    pub(crate) out: Vec<f32>,
    inv_norm: Vec<f32>,
    /// The loss's gradient with respect to `out`, filled by the caller before [`backward`].
    pub(crate) d_out: Vec<f32>,
    scratch: Vec<f32>,
    /// Gradient of the field embeddings `[rows x fields * dim]`.
    pub(crate) d_fields: Vec<f32>,
    /// This shard's gradient of the tower's dense region (SENet, MLP), laid out as the region.
    pub(crate) grads: Vec<f32>,
}

impl TowerWork {
    fn prepare(&mut self, plan: &TowerPlan, rows: usize) {
        self.rows = rows;
        let width = plan.input_width();
        let slots = plan.slots();
        if self.table_rows.len() < rows * slots {
            self.table_rows.resize(rows * slots, 0);
        }
        grow(&mut self.slot_weights, rows * slots);
        grow(&mut self.fields, rows * width);
        if plan.senet.is_some() {
            grow(&mut self.reweighted, rows * width);
        }
        let n_layers = plan.layers.len();
        self.pre.resize_with(n_layers, Vec::new);
        self.post.resize_with(n_layers, Vec::new);
        self.masks.resize_with(n_layers, Vec::new);
        // Hidden layers only: the last writes `out`.
        for (i, layer) in plan.layers.iter().enumerate().take(n_layers - 1) {
            grow(&mut self.pre[i], rows * layer.output);
            grow(&mut self.post[i], rows * layer.output);
            if plan.dropout > 0.0 {
                grow(&mut self.masks[i], rows * layer.output);
            }
        }
        grow(&mut self.out, rows * plan.output_width());
        grow(&mut self.inv_norm, rows);
        let widest = rows * plan.max_width();
        for buffer in [&mut self.d_out, &mut self.scratch, &mut self.d_fields] {
            grow(buffer, widest);
        }
        grow(&mut self.grads, plan.dense.len());
    }
}

/// Forward pass of rows `start..start + rows` of `ids`; `dropout_seed` `None` is evaluation.
pub(crate) fn forward(
    plan: &TowerPlan,
    params: &[f32],
    ids: &SideIds<'_>,
    (start, rows): (usize, usize),
    dropout_seed: Option<u64>,
    work: &mut TowerWork,
) -> Result<(), ModelError> {
    work.prepare(plan, rows);
    gather(plan, params, ids, start, work)?;
    let dense = &params[plan.dense.clone()];
    if let Some(senet) = &plan.senet {
        let width = plan.input_width();
        let x = &work.fields[..rows * width];
        let out = &mut work.reweighted[..rows * width];
        senet::forward(
            senet,
            dense,
            senet_shape(plan, rows),
            x,
            out,
            &mut work.senet,
        );
    }
    mlp_forward(plan, dense, start, dropout_seed, work);
    Ok(())
}

/// Field embeddings of the shard's rows, remembering each slot's table row and pooling weight.
fn gather(
    plan: &TowerPlan,
    params: &[f32],
    ids: &SideIds<'_>,
    start: usize,
    work: &mut TowerWork,
) -> Result<(), ModelError> {
    let table = &params[plan.table.clone()];
    let (dim, width, slots, rows) = (plan.dim, plan.input_width(), plan.slots(), work.rows);
    let mut slot = 0;
    for (f, field) in plan.fields.iter().enumerate() {
        let w = field.width;
        let bad = |problem: String| ModelError::Batch {
            side: plan.side,
            feature: field.name.clone(),
            problem,
        };
        let column = ids.columns.get(f).copied().unwrap_or_default();
        if column.len() != ids.rows * w {
            return Err(bad(format!(
                "expected {} x {w} ids, got {}",
                ids.rows,
                column.len()
            )));
        }
        for r in 0..rows {
            // The table rows are random: ask for the row a few examples ahead now.
            if let Some(&ahead) = column.get((start + r + PREFETCH_AHEAD) * w) {
                prefetch(table, (field.offset + ahead as usize) * dim);
            }
            let row_ids = &column[(start + r) * w..(start + r + 1) * w];
            if let Some(&id) = row_ids.iter().find(|&&id| id >= field.vocab) {
                return Err(bad(format!(
                    "id {id} is not below vocab_size {}",
                    field.vocab
                )));
            }
            let weight = match field.pooling {
                None | Some(Pooling::Sum) => 1.0,
                Some(Pooling::Mean) => {
                    1.0 / row_ids.iter().filter(|&&id| id != 0).count().max(1) as f32
                }
            };
            let out = &mut work.fields[r * width + f * dim..][..dim];
            let k0 = r * slots + slot;
            if field.pooling.is_none() {
                let table_row = field.offset + row_ids[0] as usize;
                work.table_rows[k0] = table_row as u32;
                work.slot_weights[k0] = 1.0;
                copy_row(out, &table[table_row * dim..(table_row + 1) * dim]);
                continue;
            }
            out.fill(0.0);
            for (j, &id) in row_ids.iter().enumerate() {
                let table_row = field.offset + id as usize;
                work.table_rows[k0 + j] = table_row as u32;
                work.slot_weights[k0 + j] = if id != 0 { weight } else { 0.0 };
                if id != 0 {
                    let source = &table[table_row * dim..(table_row + 1) * dim];
                    out.iter_mut()
                        .zip(source)
                        .for_each(|(o, &v)| *o += weight * v);
                }
            }
        }
        slot += w;
    }
    Ok(())
}

/// Examples between a table row's prefetch and its use.
const PREFETCH_AHEAD: usize = 8;

/// Hints that `values[at..]` will be read soon (a no-op where the CPU has no such hint).
#[inline(always)]
fn prefetch(values: &[f32], at: usize) {
    #[cfg(target_arch = "x86_64")]
    if at < values.len() {
        // SAFETY: the address is inside `values`; a prefetch never faults or changes memory.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                values.as_ptr().add(at).cast(),
            )
        }
    }
}

fn senet_shape(plan: &TowerPlan, rows: usize) -> senet::Shape {
    senet::Shape {
        fields: plan.fields.len(),
        dim: plan.dim,
        rows,
    }
}

/// The input of layer `i` over `rows` rows: the field embeddings (after SENet when the tower has
/// it) for the first layer, the previous hidden layer's activation otherwise.
fn layer_input<'a>(
    plan: &TowerPlan,
    (i, rows): (usize, usize),
    (fields, reweighted): (&'a [f32], &'a [f32]),
    post: &'a [Vec<f32>],
) -> &'a [f32] {
    let len = rows * plan.layers[i].input;
    match (i, &plan.senet) {
        (0, Some(_)) => &reweighted[..len],
        (0, None) => &fields[..len],
        _ => &post[i - 1][..len],
    }
}

fn mlp_forward(
    plan: &TowerPlan,
    dense: &[f32],
    start: usize,
    dropout_seed: Option<u64>,
    work: &mut TowerWork,
) {
    let rows = work.rows;
    let last = plan.layers.len() - 1;
    work.masked = dropout_seed.is_some() && plan.dropout > 0.0;
    for (i, layer) in plan.layers.iter().enumerate() {
        let (w, b) = layer.weights(dense);
        let n = rows * layer.output;
        let (done, rest) = work.post.split_at_mut(i);
        let input = layer_input(plan, (i, rows), (&work.fields, &work.reweighted), done);
        if i == last {
            let out = &mut work.out[..n];
            matmul_a_wt(out, input, w, rows, layer.output, layer.input);
            bias_act_forward(out, b, plan.act, &[], &mut []);
            continue;
        }
        let pre = &mut work.pre[i][..n];
        matmul_a_wt(pre, input, w, rows, layer.output, layer.input);
        let mask: &[f32] = match dropout_seed {
            Some(seed) if plan.dropout > 0.0 => {
                let mask = &mut work.masks[i][..n];
                dropout_mask_range(seed, plan.side, i, start * layer.output, plan.dropout, mask);
                mask
            }
            _ => &[],
        };
        bias_act_forward(pre, b, plan.act, mask, &mut rest[0][..n]);
    }
    let d = plan.output_width();
    let out = &mut work.out[..rows * d];
    if plan.l2_normalize {
        for (row, inv) in out.chunks_exact_mut(d).zip(&mut work.inv_norm) {
            *inv = 1.0 / (dot(row, row) + L2_EPS).sqrt();
            row.iter_mut().for_each(|v| *v *= *inv);
        }
    }
}

/// Backward pass from [`TowerWork::d_out`]: fills [`TowerWork::grads`] and [`TowerWork::d_fields`].
pub(crate) fn backward(plan: &TowerPlan, params: &[f32], work: &mut TowerWork) {
    let dense = &params[plan.dense.clone()];
    let rows = work.rows;
    let d = plan.output_width();
    // d_out, scratch and d_fields all hold rows x max_width: the pass rotates them, no copies.
    let mut grad = std::mem::take(&mut work.d_out);
    let mut next = std::mem::take(&mut work.scratch);
    if plan.l2_normalize {
        // y = x / |x|: dx = (dy - y (y . dy)) / |x|.
        for ((g, y), &inv) in grad[..rows * d]
            .chunks_exact_mut(d)
            .zip(work.out.chunks_exact(d))
            .zip(&work.inv_norm)
        {
            let along = dot(g, y);
            g.iter_mut()
                .zip(y)
                .for_each(|(g, &y)| *g = (*g - y * along) * inv);
        }
    }
    let last = plan.layers.len() - 1;
    for (i, layer) in plan.layers.iter().enumerate().rev() {
        let g = &mut grad[..rows * layer.output];
        if i < last {
            let mask = if work.masked {
                &work.masks[i][..rows * layer.output]
            } else {
                &[][..]
            };
            act_backward(g, &work.pre[i][..rows * layer.output], plan.act, mask);
        }
        let input = layer_input(
            plan,
            (i, rows),
            (&work.fields, &work.reweighted),
            &work.post,
        );
        let (w, _) = layer.weights(dense);
        let grads = &mut work.grads;
        let w_range = layer.weight..layer.weight + layer.input * layer.output;
        matmul_dt_a(
            &mut grads[w_range],
            g,
            input,
            rows,
            layer.output,
            layer.input,
        );
        column_sums(&mut grads[layer.bias..layer.bias + layer.output], g);
        matmul_d_w(
            &mut next[..rows * layer.input],
            g,
            w,
            rows,
            layer.output,
            layer.input,
        );
        std::mem::swap(&mut grad, &mut next);
    }
    let width = plan.input_width();
    if let Some(senet) = &plan.senet {
        let (x, dy) = (&work.fields[..rows * width], &grad[..rows * width]);
        let dx = &mut work.d_fields[..rows * width];
        let shape = senet_shape(plan, rows);
        senet::backward(
            senet,
            dense,
            shape,
            (x, dy),
            dx,
            &mut work.grads,
            &mut work.senet,
        );
    } else {
        std::mem::swap(&mut work.d_fields, &mut grad);
    }
    work.d_out = grad;
    work.scratch = next;
}

/// Adds the shard's field-embedding gradients into the table's gradient `table_grads`, row by
/// row in order (so the sum does not depend on which thread ran the shard).
pub(crate) fn scatter_table_grads(plan: &TowerPlan, work: &TowerWork, table_grads: &mut [f32]) {
    let (dim, width, slots) = (plan.dim, plan.input_width(), plan.slots());
    for r in 0..work.rows {
        let mut slot = r * slots;
        for (f, field) in plan.fields.iter().enumerate() {
            let d = &work.d_fields[r * width + f * dim..][..dim];
            for k in slot..slot + field.width {
                let weight = work.slot_weights[k];
                if weight != 0.0 {
                    let row = work.table_rows[k] as usize;
                    let target = &mut table_grads[row * dim..(row + 1) * dim];
                    target
                        .iter_mut()
                        .zip(d)
                        .for_each(|(t, &v)| *t += weight * v);
                }
            }
            slot += field.width;
        }
    }
}
