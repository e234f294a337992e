//! SENet on a shard as small matrix products: squeeze `S = X B / E` (`B` sums each field's
//! block of `E` values), `A = sigmoid(relu(S W1^T + b1) W2^T + b2)`, output `X * expand(A)`;
//! the backward pass runs the same products transposed. Max squeeze runs row by row.

use crate::config::Squeeze;

use super::grow;
use super::kernels::{
    act_backward, bias_act_forward, column_sums, dot, matmul_a_wt, matmul_d_w, matmul_dt_a,
};
use super::plan::SenetPlan;
use crate::ops::Act;

/// SENet's buffers on one shard.
#[derive(Debug, Default)]
pub(crate) struct SenetWork {
    /// `[fields x fields * dim]`: 1 / dim on each field's block (the mean squeeze as `X B^T`).
    blocks: Vec<f32>,
    /// Squeezed fields `[rows x fields]`, hidden pre-activation and activation `[rows x hidden]`,
    /// field weights pre-activation and activation `[rows x fields]`.
    squeezed: Vec<f32>,
    hidden_pre: Vec<f32>,
    hidden: Vec<f32>,
    weights_pre: Vec<f32>,
    pub(crate) weights: Vec<f32>,
    /// Gradients of the weights `[rows x fields]`, the hidden layer `[rows x hidden]` and the
    /// squeezed fields `[rows x fields]`.
    d_weights: Vec<f32>,
    d_hidden: Vec<f32>,
    d_squeezed: Vec<f32>,
}

/// The fields, embedding width and bottleneck of one tower's SENet.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    pub(crate) fields: usize,
    pub(crate) dim: usize,
    pub(crate) rows: usize,
}

impl SenetWork {
    fn prepare(&mut self, plan: &SenetPlan, shape: Shape) {
        let Shape { fields, dim, rows } = shape;
        if self.blocks.len() != fields * fields * dim {
            self.blocks = vec![0.0; fields * fields * dim];
            for f in 0..fields {
                let row = &mut self.blocks[f * fields * dim..(f + 1) * fields * dim];
                row[f * dim..(f + 1) * dim].fill(1.0 / dim as f32);
            }
        }
        for (buffer, width) in [
            (&mut self.squeezed, fields),
            (&mut self.hidden_pre, plan.hidden),
            (&mut self.hidden, plan.hidden),
            (&mut self.weights_pre, fields),
            (&mut self.weights, fields),
            (&mut self.d_weights, fields),
            (&mut self.d_hidden, plan.hidden),
            (&mut self.d_squeezed, fields),
        ] {
            grow(buffer, rows * width);
        }
    }
}

/// SENet's forward pass: `out = x * expand(weights)` for field embeddings `x` `[rows x fields * dim]`.
pub(crate) fn forward(
    plan: &SenetPlan,
    dense: &[f32],
    shape: Shape,
    x: &[f32],
    out: &mut [f32],
    work: &mut SenetWork,
) {
    work.prepare(plan, shape);
    let Shape { fields, dim, rows } = shape;
    let (width, hidden) = (fields * dim, plan.hidden);
    let s = &mut work.squeezed[..rows * fields];
    match plan.squeeze {
        Squeeze::Mean => matmul_a_wt(s, x, &work.blocks, rows, fields, width),
        Squeeze::Max => {
            for (s, field) in s.iter_mut().zip(x.chunks_exact(dim)) {
                *s = field.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            }
        }
    }
    let (w1, b1) = plan.fc1.weights(dense);
    let (w2, b2) = plan.fc2.weights(dense);
    let h_pre = &mut work.hidden_pre[..rows * hidden];
    matmul_a_wt(h_pre, s, w1, rows, hidden, fields);
    let h = &mut work.hidden[..rows * hidden];
    bias_act_forward(h_pre, b1, Act::Relu, &[], h);
    let a_pre = &mut work.weights_pre[..rows * fields];
    matmul_a_wt(a_pre, h, w2, rows, fields, hidden);
    let a = &mut work.weights[..rows * fields];
    bias_act_forward(a_pre, b2, Act::Sigmoid, &[], a);
    scale_fields(out, x, a, dim);
}

/// `out[r, f, e] = x[r, f, e] * a[r, f]`.
fn scale_fields(out: &mut [f32], x: &[f32], a: &[f32], dim: usize) {
    for ((o, x), &a) in out.chunks_exact_mut(dim).zip(x.chunks_exact(dim)).zip(a) {
        o.iter_mut().zip(x).for_each(|(o, &x)| *o = x * a);
    }
}

/// SENet's backward pass from the gradient `dy` of its output: writes `dx` (the gradient of the
/// field embeddings `x`) and SENet's gradients into `grads` (the tower's dense region).
pub(crate) fn backward(
    plan: &SenetPlan,
    dense: &[f32],
    shape: Shape,
    (x, dy): (&[f32], &[f32]),
    dx: &mut [f32],
    grads: &mut [f32],
    work: &mut SenetWork,
) {
    let Shape { fields, dim, rows } = shape;
    let hidden = plan.hidden;
    let a = &work.weights[..rows * fields];
    // dx = dy * expand(a); d(weights)[r, f] = dy[r, f, :] . x[r, f, :].
    let da = &mut work.d_weights[..rows * fields];
    let blocks = dy.chunks_exact(dim).zip(x.chunks_exact(dim));
    for (((d, (dy, x)), dx), &a) in da
        .iter_mut()
        .zip(blocks)
        .zip(dx.chunks_exact_mut(dim))
        .zip(a)
    {
        *d = dot(dy, x);
        dx.iter_mut().zip(dy).for_each(|(o, &g)| *o = g * a);
    }
    act_backward(da, &work.weights_pre[..rows * fields], Act::Sigmoid, &[]);
    let (fc1, fc2) = (&plan.fc1, &plan.fc2);
    let (w1, _) = fc1.weights(dense);
    let (w2, _) = fc2.weights(dense);
    let h = &work.hidden[..rows * hidden];
    matmul_dt_a(
        &mut grads[fc2.weight..fc2.weight + fields * hidden],
        da,
        h,
        rows,
        fields,
        hidden,
    );
    column_sums(&mut grads[fc2.bias..fc2.bias + fields], da);
    let dh = &mut work.d_hidden[..rows * hidden];
    matmul_d_w(dh, da, w2, rows, fields, hidden);
    act_backward(dh, &work.hidden_pre[..rows * hidden], Act::Relu, &[]);
    let s = &work.squeezed[..rows * fields];
    matmul_dt_a(
        &mut grads[fc1.weight..fc1.weight + hidden * fields],
        dh,
        s,
        rows,
        hidden,
        fields,
    );
    column_sums(&mut grads[fc1.bias..fc1.bias + hidden], dh);
    let ds = &mut work.d_squeezed[..rows * fields];
    matmul_d_w(ds, dh, w1, rows, hidden, fields);
    for ((dx, x), (&ds, &s)) in dx
        .chunks_exact_mut(dim)
        .zip(x.chunks_exact(dim))
        .zip(ds.iter().zip(s.iter()))
    {
        match plan.squeeze {
            Squeeze::Mean => dx.iter_mut().for_each(|v| *v += ds / dim as f32),
            // Candle's max backward: every element equal to the maximum gets the gradient.
            Squeeze::Max => dx
                .iter_mut()
                .zip(x)
                .filter(|(_, x)| **x == s)
                .for_each(|(v, _)| *v += ds),
        }
    }
}
