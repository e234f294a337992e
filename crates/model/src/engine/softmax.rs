//! In-batch softmax on the engine: the `[B x C]` score matrix of the batch's users against its
//! items, row blocks in parallel for the scores, the softmax and the users' gradient, column
//! blocks for the items' gradient. Blocks have a fixed size, so the bits do not depend on threads.

use rayon::prelude::*;

use crate::error::ModelError;
use crate::softmax::{SoftmaxRows, check_excluded};

use super::kernels::{matmul_a_wt, matmul_d_w, matmul_dt_a_columns, softmax_row};
use super::{CpuEngine, SideIds, StepSeeds, grow_work, shards, tower};

/// Rows (or columns) of the score matrix per parallel block.
const BLOCK: usize = 64;

/// The loss of [`CpuEngine::in_batch_softmax_step`]: row `i`'s target is column `i`.
#[derive(Debug, Clone, Copy)]
pub struct SoftmaxLoss<'a> {
    /// Multiplies the scores before the softmax (1 / the loss temperature).
    pub scale: f32,
    /// Subtracted from every row's logit of each column (the log-Q correction), one per item row.
    pub column_offsets: Option<&'a [f32]>,
    /// `(row, column)` entries left out of that row's softmax (accidental hits), in any order.
    pub excluded: &'a [(u32, u32)],
    /// Leave each row's positive (its own column) without the column offset: the log-Q
    /// correction on the negatives only ("Correcting the LogQ Correction", RecSys 2025).
    pub uncorrected_target: bool,
    /// Keep only each row's positive and its `N` highest other logits (after offsets and
    /// exclusions; [`crate::keep_hardest`]): online hard negatives. `None`: every column.
    pub keep_hardest: Option<usize>,
}

/// The step's matrices, kept between steps.
#[derive(Debug, Default)]
pub(crate) struct SoftmaxWork {
    users: Vec<f32>,
    items: Vec<f32>,
    /// Scores, then their gradient, `[B x C]`.
    scores: Vec<f32>,
    d_users: Vec<f32>,
    d_items: Vec<f32>,
}

fn bad(problem: String) -> ModelError {
    ModelError::Shape {
        what: "in-batch softmax step",
        problem,
    }
}

fn check(b: usize, c: usize, loss: &SoftmaxLoss<'_>) -> Result<(), ModelError> {
    if c < b {
        return Err(bad(format!("{c} item rows for {b} user rows")));
    }
    if let Some(o) = loss.column_offsets
        && o.len() != c
    {
        return Err(bad(format!("{} column offsets for {c} columns", o.len())));
    }
    check_excluded(b, c, loss.excluded, |i| i as u32).map_err(bad)
}

impl CpuEngine {
    /// Mean softmax cross-entropy of each user row against all item rows (user `i`'s positive is
    /// item row `i`; rows past the users' count are extra negatives), logits
    /// `score * loss.scale - offset[column]`; leaves its gradient in [`CpuEngine::grads`] and
    /// returns the loss.
    pub fn in_batch_softmax_step(
        &mut self,
        users: &SideIds<'_>,
        items: &SideIds<'_>,
        loss: &SoftmaxLoss<'_>,
        seeds: StepSeeds,
    ) -> Result<f64, ModelError> {
        let (b, c) = (users.rows, items.rows);
        check(b, c, loss)?;
        let (user_shards, item_shards) = (shards(b), shards(c));
        grow_work(&mut self.user_work, user_shards.len());
        grow_work(&mut self.item_work, item_shards.len());
        let (user, item, params) = (&self.user, &self.item, &self.params);
        let user_work = &mut self.user_work[..user_shards.len()];
        let item_work = &mut self.item_work[..item_shards.len()];
        let (ru, ri) =
            rayon::join(
                || {
                    user_work.par_iter_mut().zip(&user_shards).try_for_each(
                        |(w, &(start, rows))| {
                            tower::forward(user, params, users, (start, rows), seeds.0, w)
                        },
                    )
                },
                || {
                    item_work.par_iter_mut().zip(&item_shards).try_for_each(
                        |(w, &(start, rows))| {
                            tower::forward(item, params, items, (start, rows), seeds.1, w)
                        },
                    )
                },
            );
        ru?;
        ri?;
        let d = user.output_width();
        let sw = &mut self.softmax;
        collect_rows(&mut sw.users, user_work, d);
        collect_rows(&mut sw.items, item_work, d);
        let total = score_and_backpropagate(sw, b, c, d, self.inv_temperature, loss);
        for (w, &(start, rows)) in user_work.iter_mut().zip(&user_shards) {
            w.d_out[..rows * d].copy_from_slice(&sw.d_users[start * d..(start + rows) * d]);
        }
        for (w, &(start, rows)) in item_work.iter_mut().zip(&item_shards) {
            w.d_out[..rows * d].copy_from_slice(&sw.d_items[start * d..(start + rows) * d]);
        }
        rayon::join(
            || {
                user_work
                    .par_iter_mut()
                    .for_each(|w| tower::backward(user, params, w))
            },
            || {
                item_work
                    .par_iter_mut()
                    .for_each(|w| tower::backward(item, params, w))
            },
        );
        self.reduce(user_shards.len(), item_shards.len());
        Ok(total / b.max(1) as f64)
    }
}

/// The shards' outputs one after another in `out` (`rows x d`).
fn collect_rows(out: &mut Vec<f32>, work: &[tower::TowerWork], d: usize) {
    out.clear();
    for w in work {
        out.extend_from_slice(&w.out[..w.rows * d]);
    }
}

/// Scores, softmax and the gradients of both sides' outputs; returns the summed row losses.
fn score_and_backpropagate(
    sw: &mut SoftmaxWork,
    b: usize,
    c: usize,
    d: usize,
    inv_temperature: f32,
    loss: &SoftmaxLoss<'_>,
) -> f64 {
    let mut rows = SoftmaxRows::new(
        inv_temperature * loss.scale,
        (loss.column_offsets.map(<[f32]>::to_vec), false),
        loss.excluded,
        (0..b as u32).collect(),
        c,
    );
    rows.uncorrected_target = loss.uncorrected_target;
    rows.keep_hardest = loss.keep_hardest;
    let factor = rows.scale / b.max(1) as f32;
    sw.scores.resize(b * c, 0.0);
    sw.d_users.resize(b * d, 0.0);
    sw.d_items.resize(c * d, 0.0);
    let (users, items) = (&sw.users, &sw.items);
    let block_losses: Vec<f64> = sw
        .scores
        .par_chunks_mut(BLOCK * c)
        .zip(sw.d_users.par_chunks_mut(BLOCK * d))
        .enumerate()
        .map(|(block, (scores, d_users))| {
            let (first, n) = (block * BLOCK, scores.len() / c);
            matmul_a_wt(scores, &users[first * d..(first + n) * d], items, n, c, d);
            let mut z = vec![0f32; c];
            let mut total = 0.0f64;
            for (i, row) in scores.chunks_exact_mut(c).enumerate() {
                let r = first + i;
                rows.logits(r, row, &mut z);
                total += softmax_row(&mut z, r, factor);
                row.copy_from_slice(&z);
            }
            matmul_d_w(d_users, scores, items, n, c, d);
            total
        })
        .collect();
    let scores = &sw.scores;
    sw.d_items
        .par_chunks_mut(BLOCK * d)
        .enumerate()
        .for_each(|(block, d_items)| {
            let n = d_items.len() / d;
            matmul_dt_a_columns(d_items, scores, c, block * BLOCK, n, users, b, d);
        });
    block_losses.iter().sum()
}
