//! The CPU training engine: the two towers' forward and backward passes and the losses written
//! against `gemm` on flat, preallocated buffers, with no autograd graph.
//!
//! At this model's size (the reference recipe is about 166 kFLOP per example) Candle's op-by-op
//! dispatch, allocation and per-op threading cost more than the arithmetic; this engine runs the
//! same maths as [`crate::Dssm`] (a test checks losses and gradients against Candle's autograd)
//! at close to the speed of the matrix products.
//!
//! # Parallelism and determinism
//! A batch is cut into shards of [`SHARD_ROWS`] rows, whatever the number of threads. Each shard
//! runs both towers on one thread with its own buffers; the shards' gradients are then added in
//! shard order, and the embedding-table gradients row by row in batch order. So a step gives the
//! same bits on 1 thread or 16 (rayon's global pool runs the shards).
//!
//! # What it runs
//! [`check_supported`]: (multi-)categorical features of one embedding width per side, SENet,
//! any activation, dropout, L2-normalised towers, dot similarity with a fixed temperature; losses
//! [`CpuEngine::bce_step`] and [`CpuEngine::in_batch_softmax_step`]. Other configurations train
//! through Candle.
//!
//! # Example
//! ```
//! use candle_core::Device;
//! use dssm_model::engine::{CpuEngine, SideIds};
//! use dssm_model::{Dssm, FeatureSpec, ModelConfig, Side};
//!
//! let config = ModelConfig {
//!     features: vec![
//!         FeatureSpec::categorical("user_id", Side::User, 10),
//!         FeatureSpec::categorical("movie_id", Side::Item, 20),
//!     ],
//!     senet: None,
//!     ..ModelConfig::default()
//! };
//! let model = Dssm::new(config, 7, &Device::Cpu)?;
//! let mut engine = CpuEngine::new(&model)?;
//! let users = SideIds { rows: 2, columns: &[&[1, 2]] };
//! let items = SideIds { rows: 2, columns: &[&[5, 9]] };
//! let loss = engine.bce_step(&users, &items, &[1.0, 0.0], (Some(1), Some(2)))?;
//! assert!(loss > 0.0 && engine.grads().iter().any(|&g| g != 0.0));
//! // An optimizer updates engine.params_mut() from engine.grads(); then:
//! engine.store(&model)?;
//! # Ok::<(), dssm_model::ModelError>(())
//! ```

pub(crate) mod kernels;
mod plan;
mod senet;
mod softmax;
mod tower;

#[cfg(test)]
mod tests;

use candle_core::{DType, Tensor};
use rayon::prelude::*;

use crate::config::Side;
use crate::error::ModelError;
use crate::model::Dssm;

pub use plan::{ParamSlot, check_supported};
pub use softmax::SoftmaxLoss;

use kernels::{add_assign, dot};
use plan::{TowerPlan, unsupported};
use tower::TowerWork;

/// Rows per shard: the unit of parallel work, fixed so results do not depend on the thread count.
pub const SHARD_ROWS: usize = 512;

/// The ids of one side's batch: one slice per feature of the side, in config order; a categorical
/// feature has `rows` ids, a multi-categorical one `rows * max_len` (row-major, 0 = padding).
#[derive(Debug, Clone, Copy)]
pub struct SideIds<'a> {
    /// Examples in the batch.
    pub rows: usize,
    /// One slice per feature.
    pub columns: &'a [&'a [u32]],
}

/// Dropout seeds of a training step, `(user tower, item tower)`; `None` runs that tower without
/// dropout. The masks are those [`crate::Mode::Train`] draws with the same seed.
pub type StepSeeds = (Option<u64>, Option<u64>);

/// The model's weights as flat buffers, with the gradient buffer of the last step; see the module
/// docs.
pub struct CpuEngine {
    user: TowerPlan,
    item: TowerPlan,
    slots: Vec<ParamSlot>,
    params: Vec<f32>,
    grads: Vec<f32>,
    inv_temperature: f32,
    user_work: Vec<TowerWork>,
    item_work: Vec<TowerWork>,
    softmax: softmax::SoftmaxWork,
}

impl std::fmt::Debug for CpuEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuEngine")
            .field("params", &self.params.len())
            .finish_non_exhaustive()
    }
}

/// `(start, rows)` of each shard of a batch of `rows`.
fn shards(rows: usize) -> Vec<(usize, usize)> {
    (0..rows.div_ceil(SHARD_ROWS))
        .map(|s| (s * SHARD_ROWS, SHARD_ROWS.min(rows - s * SHARD_ROWS)))
        .collect()
}

/// Lengthens `buffer` to `len` values when it is shorter (buffers only grow, so steps reuse them).
fn grow(buffer: &mut Vec<f32>, len: usize) {
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
}

fn grow_work(work: &mut Vec<TowerWork>, n: usize) {
    if work.len() < n {
        work.resize_with(n, TowerWork::default);
    }
}

impl CpuEngine {
    /// An engine holding a copy of `model`'s weights (f32, on the CPU); see [`check_supported`].
    pub fn new(model: &Dssm) -> Result<Self, ModelError> {
        check_supported(model.config())?;
        if !model.device().is_cpu() || model.dtype() != DType::F32 {
            return Err(unsupported(format!(
                "a {:?} model on {:?}",
                model.dtype(),
                model.device()
            )));
        }
        let mut slots = Vec::new();
        let mut offset = 0;
        for (name, var) in model.named_vars() {
            let len = var.elem_count();
            slots.push(ParamSlot {
                name: name.clone(),
                offset,
                len,
            });
            offset += len;
        }
        let user = plan::tower_plan(model.config(), Side::User, &slots)?;
        let item = plan::tower_plan(model.config(), Side::Item, &slots)?;
        if user.dense.end != item.table.start || item.dense.end != offset {
            return Err(unsupported(
                "variables besides the two towers' tables, SENet and MLP",
            ));
        }
        let mut engine = CpuEngine {
            user,
            item,
            slots,
            params: vec![0.0; offset],
            grads: vec![0.0; offset],
            inv_temperature: 1.0 / model.temperature()?,
            user_work: Vec::new(),
            item_work: Vec::new(),
            softmax: softmax::SoftmaxWork::default(),
        };
        engine.load(model)?;
        Ok(engine)
    }

    /// Copies `model`'s weights into the engine (the model must have the engine's layout).
    pub fn load(&mut self, model: &Dssm) -> Result<(), ModelError> {
        self.check_layout(model)?;
        for (slot, (_, var)) in self.slots.iter().zip(model.named_vars()) {
            let values = var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
            self.params[slot.range()].copy_from_slice(&values);
        }
        Ok(())
    }

    /// Writes the engine's weights into `model`'s variables.
    pub fn store(&self, model: &Dssm) -> Result<(), ModelError> {
        self.check_layout(model)?;
        for (slot, (_, var)) in self.slots.iter().zip(model.named_vars()) {
            let t = Tensor::from_slice(&self.params[slot.range()], var.shape(), var.device())?;
            var.set(&t)?;
        }
        Ok(())
    }

    fn check_layout(&self, model: &Dssm) -> Result<(), ModelError> {
        let same = self.slots.len() == model.named_vars().len()
            && self
                .slots
                .iter()
                .zip(model.named_vars())
                .all(|(s, (name, var))| &s.name == name && s.len == var.elem_count());
        if same {
            Ok(())
        } else {
            Err(unsupported(
                "a model whose variables differ from the engine's",
            ))
        }
    }

    /// Where each variable lives in [`CpuEngine::params`] and [`CpuEngine::grads`].
    pub fn slots(&self) -> &[ParamSlot] {
        &self.slots
    }

    /// Every weight, variables one after another in [`crate::Dssm::named_vars`] order.
    pub fn params(&self) -> &[f32] {
        &self.params
    }

    /// The weights and the last step's gradient, to update the first from the second.
    pub fn params_mut(&mut self) -> (&mut [f32], &[f32]) {
        (&mut self.params, &self.grads)
    }

    /// The gradient of the last step's mean loss, laid out as [`CpuEngine::params`].
    pub fn grads(&self) -> &[f32] {
        &self.grads
    }

    /// Mean binary cross-entropy of `labels` (0/1) against the logits of user row `i` with item
    /// row `i`; leaves its gradient in [`CpuEngine::grads`] and returns the loss.
    pub fn bce_step(
        &mut self,
        users: &SideIds<'_>,
        items: &SideIds<'_>,
        labels: &[f32],
        seeds: StepSeeds,
    ) -> Result<f64, ModelError> {
        let b = users.rows;
        if items.rows != b || labels.len() != b {
            return Err(ModelError::Shape {
                what: "bce step",
                problem: format!(
                    "{b} user rows, {} item rows, {} labels",
                    items.rows,
                    labels.len()
                ),
            });
        }
        let shards = shards(b);
        grow_work(&mut self.user_work, shards.len());
        grow_work(&mut self.item_work, shards.len());
        let (user, item, params) = (&self.user, &self.item, &self.params);
        let inv_t = self.inv_temperature;
        let losses: Vec<Result<f64, ModelError>> = self.user_work[..shards.len()]
            .par_iter_mut()
            .zip(self.item_work[..shards.len()].par_iter_mut())
            .zip(&shards)
            .map(|((uw, iw), &(start, rows))| {
                tower::forward(user, params, users, (start, rows), seeds.0, uw)?;
                tower::forward(item, params, items, (start, rows), seeds.1, iw)?;
                let d = user.output_width();
                let loss = bce_rows(uw, iw, &labels[start..start + rows], (d, inv_t), b);
                tower::backward(user, params, uw);
                tower::backward(item, params, iw);
                Ok(loss)
            })
            .collect();
        let mut total = 0.0;
        for loss in losses {
            total += loss?;
        }
        self.reduce(shards.len(), shards.len());
        Ok(total / b.max(1) as f64)
    }

    /// Embeds `ids` with one tower in evaluation mode (no dropout) into `out` (`rows x output`).
    pub fn encode(
        &mut self,
        side: Side,
        ids: &SideIds<'_>,
        out: &mut [f32],
    ) -> Result<(), ModelError> {
        let (plan, work) = match side {
            Side::User => (&self.user, &mut self.user_work),
            Side::Item => (&self.item, &mut self.item_work),
        };
        let d = plan.output_width();
        if out.len() != ids.rows * d {
            return Err(ModelError::Shape {
                what: "encode output",
                problem: format!("{} values for {} rows of {d}", out.len(), ids.rows),
            });
        }
        let shards = shards(ids.rows);
        grow_work(work, shards.len());
        let params = &self.params;
        work[..shards.len()]
            .par_iter_mut()
            .zip(out.par_chunks_mut(SHARD_ROWS * d))
            .zip(&shards)
            .try_for_each(|((w, out), &(start, rows))| {
                tower::forward(plan, params, ids, (start, rows), None, w)?;
                out.copy_from_slice(&w.out[..rows * d]);
                Ok(())
            })
    }

    /// Sums the shards' gradients into [`CpuEngine::grads`]: dense regions in shard order,
    /// embedding tables row by row in batch order. The user and item sides run side by side.
    fn reduce(&mut self, user_shards: usize, item_shards: usize) {
        let (user, item) = (&self.user, &self.item);
        let (user_grads, item_grads) = self.grads.split_at_mut(item.table.start);
        let user_work = &self.user_work[..user_shards];
        let item_work = &self.item_work[..item_shards];
        rayon::join(
            || reduce_side(user, user_work, user_grads, 0),
            || reduce_side(item, item_work, item_grads, item.table.start),
        );
    }
}

/// The BCE loss of one shard's rows (summed) and its gradients into the towers' `d_out`.
/// `d` is the towers' output width (the buffers may be longer than this shard needs).
fn bce_rows(
    users: &mut TowerWork,
    items: &mut TowerWork,
    labels: &[f32],
    (d, inv_t): (usize, f32),
    batch: usize,
) -> f64 {
    let scale = inv_t / batch as f32;
    let mut loss = 0.0f64;
    for (r, &y) in labels.iter().enumerate() {
        let (u, v) = (
            &users.out[r * d..(r + 1) * d],
            &items.out[r * d..(r + 1) * d],
        );
        let x = dot(u, v) * inv_t;
        let (xf, yf) = (x as f64, y as f64);
        loss += xf.max(0.0) - xf * yf + (-xf.abs()).exp().ln_1p();
        let g = (1.0 / (1.0 + (-x).exp()) - y) * scale;
        let du = &mut users.d_out[r * d..(r + 1) * d];
        du.iter_mut().zip(v).for_each(|(o, &v)| *o = g * v);
        let dv = &mut items.d_out[r * d..(r + 1) * d];
        dv.iter_mut().zip(u).for_each(|(o, &u)| *o = g * u);
    }
    loss
}

/// One side's gradient: its table zeroed then filled from every shard in order, its dense region
/// the sum of the shards' in order. `grads` starts at flat offset `base`.
fn reduce_side(plan: &TowerPlan, work: &[TowerWork], grads: &mut [f32], base: usize) {
    let table = plan.table.start - base..plan.table.end - base;
    let dense = plan.dense.start - base..plan.dense.end - base;
    let (tables, rest) = grads.split_at_mut(table.end);
    let table_grads = &mut tables[table.clone()];
    table_grads.fill(0.0);
    for w in work {
        tower::scatter_table_grads(plan, w, table_grads);
    }
    let dense_grads = &mut rest[dense.start - table.end..dense.end - table.end];
    match work.split_first() {
        Some((first, others)) => {
            dense_grads.copy_from_slice(&first.grads[..dense_grads.len()]);
            for w in others {
                add_assign(dense_grads, &w.grads[..dense_grads.len()]);
            }
        }
        None => dense_grads.fill(0.0),
    }
}
