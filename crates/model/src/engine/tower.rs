//! One tower's forward and backward pass over a shard of rows, on the shard's own buffers.
//!
//! The maths is the Candle model's (see the crate docs): field embeddings (mean or sum pooling
//! for multi-valued fields), per-example SENet, the MLP with inverted dropout, optional L2
//! normalisation. The backward pass leaves the tower's SENet and MLP gradients in
//! [`TowerWork::grads`] (that shard's share) and the gradient of every field embedding in
//! [`TowerWork::d_fields`]; [`scatter_table_grads`] adds the latter into the table's gradient.

use crate::config::{Pooling, Squeeze};
use crate::dropout::dropout_mask_range;
use crate::error::ModelError;

use super::SideIds;
use super::kernels::{
    act_backward, add_scaled, bias_act_forward, column_sums, dot, matmul_a_wt, matmul_d_w,
    matmul_dt_a,
};
use super::plan::{LayerPlan, TowerPlan};

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
    /// SENet: squeezed fields `[rows x fields]`, hidden `[rows x hidden]`, weights `[rows x fields]`.
    squeezed: Vec<f32>,
    senet_hidden: Vec<f32>,
    senet_weights: Vec<f32>,
    /// Per layer: the pre-activation (bias included), the activation after dropout, the mask.
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
    scratch: [Vec<f32>; 2],
    /// Gradient of the field embeddings `[rows x fields * dim]`.
    pub(crate) d_fields: Vec<f32>,
    /// This shard's gradient of the tower's dense region (SENet, MLP), laid out as the region.
    pub(crate) grads: Vec<f32>,
}

fn grow(buffer: &mut Vec<f32>, len: usize) {
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
}

impl TowerWork {
    fn prepare(&mut self, plan: &TowerPlan, rows: usize) {
        self.rows = rows;
        let (width, n_fields) = (plan.input_width(), plan.fields.len());
        let slots = plan.slots();
        if self.table_rows.len() < rows * slots {
            self.table_rows.resize(rows * slots, 0);
        }
        grow(&mut self.slot_weights, rows * slots);
        grow(&mut self.fields, rows * width);
        grow(&mut self.d_fields, rows * width);
        if let Some(senet) = &plan.senet {
            grow(&mut self.reweighted, rows * width);
            grow(&mut self.squeezed, rows * n_fields);
            grow(&mut self.senet_weights, rows * n_fields);
            grow(&mut self.senet_hidden, rows * senet.hidden);
        }
        let n_layers = plan.layers.len();
        self.pre.resize_with(n_layers, Vec::new);
        self.post.resize_with(n_layers, Vec::new);
        self.masks.resize_with(n_layers, Vec::new);
        for (i, layer) in plan.layers.iter().enumerate() {
            grow(&mut self.pre[i], rows * layer.output);
            if i + 1 < n_layers {
                grow(&mut self.post[i], rows * layer.output);
                if plan.dropout > 0.0 {
                    grow(&mut self.masks[i], rows * layer.output);
                }
            }
        }
        let out = plan.output_width();
        grow(&mut self.out, rows * out);
        grow(&mut self.d_out, rows * out);
        grow(&mut self.inv_norm, rows);
        for s in &mut self.scratch {
            grow(s, rows * plan.max_width());
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
    if plan.senet.is_some() {
        senet_forward(plan, dense, work);
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
                out.copy_from_slice(&table[table_row * dim..(table_row + 1) * dim]);
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

fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

/// Per-example SENet: squeeze each field, FC -> ReLU -> FC -> sigmoid, rescale the fields.
fn senet_forward(plan: &TowerPlan, dense: &[f32], work: &mut TowerWork) {
    let Some(senet) = &plan.senet else { return };
    let (n_fields, dim, hidden) = (plan.fields.len(), plan.dim, senet.hidden);
    let width = n_fields * dim;
    let (w1, b1) = weights(dense, &senet.fc1);
    let (w2, b2) = weights(dense, &senet.fc2);
    for r in 0..work.rows {
        let x = &work.fields[r * width..(r + 1) * width];
        let s = &mut work.squeezed[r * n_fields..(r + 1) * n_fields];
        for (f, s) in s.iter_mut().enumerate() {
            let field = &x[f * dim..(f + 1) * dim];
            *s = match senet.squeeze {
                Squeeze::Mean => field.iter().sum::<f32>() / dim as f32,
                Squeeze::Max => field.iter().copied().fold(f32::NEG_INFINITY, f32::max),
            };
        }
        let h = &mut work.senet_hidden[r * hidden..(r + 1) * hidden];
        for (j, h) in h.iter_mut().enumerate() {
            *h = (b1[j] + dot(&w1[j * n_fields..(j + 1) * n_fields], s)).max(0.0);
        }
        let a = &mut work.senet_weights[r * n_fields..(r + 1) * n_fields];
        for (f, a) in a.iter_mut().enumerate() {
            *a = sigmoid(b2[f] + dot(&w2[f * hidden..(f + 1) * hidden], h));
        }
        let y = &mut work.reweighted[r * width..(r + 1) * width];
        for (f, &a) in a.iter().enumerate() {
            for k in f * dim..(f + 1) * dim {
                y[k] = x[k] * a;
            }
        }
    }
}

/// A layer's weight and bias inside the dense region.
fn weights<'a>(dense: &'a [f32], layer: &LayerPlan) -> (&'a [f32], &'a [f32]) {
    (
        &dense[layer.weight..layer.weight + layer.input * layer.output],
        &dense[layer.bias..layer.bias + layer.output],
    )
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
        let (w, b) = weights(dense, layer);
        let n = rows * layer.output;
        let (done, rest) = work.post.split_at_mut(i);
        let input: &[f32] = match (i, &plan.senet) {
            (0, Some(_)) => &work.reweighted[..rows * layer.input],
            (0, None) => &work.fields[..rows * layer.input],
            _ => &done[i - 1][..rows * layer.input],
        };
        let pre = &mut work.pre[i][..n];
        matmul_a_wt(pre, input, w, rows, layer.output, layer.input);
        if i == last {
            bias_act_forward(pre, b, plan.act, &[], &mut []);
            continue;
        }
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
    let (out, pre) = (&mut work.out[..rows * d], &work.pre[last][..rows * d]);
    out.copy_from_slice(pre);
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
    let [mut grad, mut next] = std::mem::take(&mut work.scratch);
    grad[..rows * d].copy_from_slice(&work.d_out[..rows * d]);
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
        let input: &[f32] = match (i, &plan.senet) {
            (0, Some(_)) => &work.reweighted[..rows * layer.input],
            (0, None) => &work.fields[..rows * layer.input],
            _ => &work.post[i - 1][..rows * layer.input],
        };
        let (w, _) = weights(dense, layer);
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
    if plan.senet.is_some() {
        senet_backward(plan, dense, &grad[..rows * width], work);
    } else {
        work.d_fields[..rows * width].copy_from_slice(&grad[..rows * width]);
    }
    work.scratch = [grad, next];
}

/// SENet's backward from the gradient of its output `dy`; writes `d_fields` and SENet's gradients.
fn senet_backward(plan: &TowerPlan, dense: &[f32], dy: &[f32], work: &mut TowerWork) {
    let Some(senet) = &plan.senet else { return };
    let (n_fields, dim, hidden) = (plan.fields.len(), plan.dim, senet.hidden);
    let width = n_fields * dim;
    let (w1, _) = weights(dense, &senet.fc1);
    let (w2, _) = weights(dense, &senet.fc2);
    let (fc1, fc2) = (senet.fc1, senet.fc2);
    for range in [
        fc1.weight..fc1.bias + hidden,
        fc2.weight..fc2.bias + n_fields,
    ] {
        work.grads[range].fill(0.0);
    }
    let mut dz2 = vec![0f32; n_fields];
    let mut dz1 = vec![0f32; hidden];
    for r in 0..work.rows {
        let dy = &dy[r * width..(r + 1) * width];
        let x = &work.fields[r * width..(r + 1) * width];
        let a = &work.senet_weights[r * n_fields..(r + 1) * n_fields];
        let h = &work.senet_hidden[r * hidden..(r + 1) * hidden];
        let s = &work.squeezed[r * n_fields..(r + 1) * n_fields];
        let dx = &mut work.d_fields[r * width..(r + 1) * width];
        for f in 0..n_fields {
            let span = f * dim..(f + 1) * dim;
            let da = dot(&dy[span.clone()], &x[span.clone()]);
            dz2[f] = da * a[f] * (1.0 - a[f]);
            for k in span {
                dx[k] = dy[k] * a[f];
            }
        }
        let g = &mut work.grads;
        for f in 0..n_fields {
            add_scaled(&mut g[fc2.weight + f * hidden..][..hidden], dz2[f], h);
            g[fc2.bias + f] += dz2[f];
        }
        for j in 0..hidden {
            let back: f32 = (0..n_fields).map(|f| dz2[f] * w2[f * hidden + j]).sum();
            dz1[j] = if h[j] > 0.0 { back } else { 0.0 };
            add_scaled(&mut g[fc1.weight + j * n_fields..][..n_fields], dz1[j], s);
            g[fc1.bias + j] += dz1[j];
        }
        for f in 0..n_fields {
            let ds: f32 = (0..hidden).map(|j| dz1[j] * w1[j * n_fields + f]).sum();
            let span = f * dim..(f + 1) * dim;
            match senet.squeeze {
                Squeeze::Mean => dx[span].iter_mut().for_each(|v| *v += ds / dim as f32),
                Squeeze::Max => {
                    for k in span {
                        if x[k] == s[f] {
                            dx[k] += ds;
                        }
                    }
                }
            }
        }
    }
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
