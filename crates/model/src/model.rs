//! The two-tower model.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::batch::SideBatch;
use crate::branches::{Combine, cross_network, fm_interaction};
use crate::config::{
    Branch, FeatureKind, ModelConfig, Pooling, Side, Similarity, Squeeze, Temperature,
};
use crate::dropout::dropout_mask;
use crate::error::ModelError;
use crate::ops::{Act, bias_act};
use crate::sequence::SequenceTower;

/// Whether a forward pass trains (dropout on) or evaluates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Dropout on, masks drawn from a generator seeded with `seed` (and the tower and layer).
    Train {
        /// Seed of this step's dropout masks.
        seed: u64,
    },
    /// No dropout.
    Eval,
}

/// Standard deviation of the normal initialisation of embedding rows.
pub const EMBEDDING_INIT_STD: f64 = 0.05;

/// Name of the weights file written by [`Dssm::save`].
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Name of the config file written by [`Dssm::save`].
pub const CONFIG_FILE: &str = "model.json";

const COSINE_EPS: f64 = 1e-12;

/// A linear layer, PyTorch layout: `weight: [out, in]`, `bias: [out]`.
pub(crate) struct Linear {
    pub(crate) weight: Var,
    pub(crate) bias: Var,
}

impl Linear {
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        act: Act,
        mask: Option<&Arc<Vec<f32>>>,
        fused: bool,
    ) -> candle_core::Result<Tensor> {
        let z = x.matmul(&self.weight.as_tensor().t()?)?;
        bias_act(&z, self.bias.as_tensor(), act, mask, fused)
    }
}

#[derive(Clone, Copy)]
enum SparseKind {
    Categorical,
    Multi { max_len: usize, pooling: Pooling },
}

/// A categorical or multi-categorical field inside a group's shared table.
struct SparseField {
    /// Column index in the side batch.
    column: usize,
    /// Position among the group's fields.
    field: usize,
    /// First row of this field in the group's table.
    offset: u32,
    vocab_size: u32,
    /// First slot of this field in the group's id layout.
    slot: usize,
    kind: SparseKind,
}

struct DenseField {
    column: usize,
    field: usize,
    dim: usize,
    projection: Linear,
}

/// The fields of one side that share one embedding width.
pub(crate) struct FieldGroup {
    dim: usize,
    /// Number of fields (sparse and dense).
    n_fields: usize,
    /// One table for all sparse fields of the group, rows in config order (see [`Dssm::save`]).
    pub(crate) table: Option<Var>,
    sparse: Vec<SparseField>,
    sparse_slots: usize,
    dense: Vec<DenseField>,
    /// False when the gathered rows already are the fields in order (categorical fields only).
    needs_pooling: bool,
}

struct Senet {
    fc1: Linear,
    fc2: Linear,
    squeeze: Squeeze,
}

pub(crate) struct Tower {
    side: Side,
    names: Vec<String>,
    pub(crate) groups: Vec<FieldGroup>,
    senet: Option<Senet>,
    mlp: Vec<Linear>,
    act: Act,
    dropout: f32,
    l2_normalize: bool,
    /// The branches in config order; `[Mlp]` for the plain tower.
    branches: Vec<Branch>,
    /// The cross network's layers, then its projection (empty without a cross branch).
    cross: Vec<Linear>,
    /// The FM branch's projection.
    fm: Option<Linear>,
}

/// The DSSM two-tower model: per-side field embeddings, optional SENet, MLP towers and a scaled similarity.
///
/// See the crate documentation for an example.
pub struct Dssm {
    config: ModelConfig,
    device: Device,
    dtype: DType,
    pub(crate) user: Tower,
    pub(crate) item: Tower,
    log_temperature: Option<Var>,
    sequence: Option<SequenceTower>,
    /// The scoring layer of parallel towers.
    combine: Option<Combine>,
    named_vars: Vec<(String, Var)>,
    fused: bool,
}

/// Deterministic initialisation from our own seeded generator.
pub(crate) struct Init<'a> {
    pub(crate) rng: StdRng,
    device: &'a Device,
    dtype: DType,
    named_vars: Vec<(String, Var)>,
}

impl Init<'_> {
    pub(crate) fn var(
        &mut self,
        name: String,
        values: Vec<f32>,
        shape: &[usize],
    ) -> Result<Var, ModelError> {
        let tensor = Tensor::from_vec(values, shape, self.device)?.to_dtype(self.dtype)?;
        let var = Var::from_tensor(&tensor)?;
        self.named_vars.push((name, var.clone()));
        Ok(var)
    }

    /// Xavier (Glorot) uniform weight, zero bias.
    pub(crate) fn linear(
        &mut self,
        name: &str,
        fan_in: usize,
        fan_out: usize,
    ) -> Result<Linear, ModelError> {
        let a = (6.0 / (fan_in + fan_out) as f64).sqrt();
        let w: Vec<f32> = (0..fan_in * fan_out)
            .map(|_| self.rng.random_range(-a..a) as f32)
            .collect();
        let weight = self.var(format!("{name}.weight"), w, &[fan_out, fan_in])?;
        let bias = self.var(format!("{name}.bias"), vec![0.0; fan_out], &[fan_out])?;
        Ok(Linear { weight, bias })
    }

    /// Normal(0, [`EMBEDDING_INIT_STD`]) rows (Box-Muller).
    pub(crate) fn embedding(
        &mut self,
        name: String,
        rows: usize,
        dim: usize,
    ) -> Result<Var, ModelError> {
        let values: Vec<f32> = (0..rows * dim)
            .map(|_| {
                let u1: f64 = 1.0 - self.rng.random::<f64>();
                let u2: f64 = self.rng.random::<f64>();
                ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos() * EMBEDDING_INIT_STD)
                    as f32
            })
            .collect();
        self.var(name, values, &[rows, dim])
    }
}

impl Tower {
    fn build(config: &ModelConfig, side: Side, init: &mut Init<'_>) -> Result<Self, ModelError> {
        let prefix = side.as_str();
        let mut groups: Vec<FieldGroup> = Vec::new();
        let mut names = Vec::new();
        // Rows of each group's table, filled in config order.
        let mut rows: Vec<usize> = Vec::new();
        for (column, spec) in config.side_features(side).enumerate() {
            names.push(spec.name.clone());
            let dim = spec.effective_dim(config.embedding_dim);
            let g = match groups.iter().position(|g| g.dim == dim) {
                Some(g) => g,
                None => {
                    groups.push(FieldGroup {
                        dim,
                        n_fields: 0,
                        table: None,
                        sparse: Vec::new(),
                        sparse_slots: 0,
                        dense: Vec::new(),
                        needs_pooling: false,
                    });
                    rows.push(0);
                    groups.len() - 1
                }
            };
            let group = &mut groups[g];
            let field = group.n_fields;
            group.n_fields += 1;
            match spec.kind {
                FeatureKind::Categorical { vocab_size }
                | FeatureKind::MultiCategorical { vocab_size, .. } => {
                    let (kind, slots) = match spec.kind {
                        FeatureKind::MultiCategorical {
                            max_len, pooling, ..
                        } => {
                            group.needs_pooling = true;
                            (SparseKind::Multi { max_len, pooling }, max_len)
                        }
                        _ => (SparseKind::Categorical, 1),
                    };
                    group.sparse.push(SparseField {
                        column,
                        field,
                        offset: rows[g] as u32,
                        vocab_size: vocab_size as u32,
                        slot: group.sparse_slots,
                        kind,
                    });
                    group.sparse_slots += slots;
                    rows[g] += vocab_size;
                }
                FeatureKind::Dense { dim: in_dim } => {
                    group.needs_pooling = true;
                    let projection =
                        init.linear(&format!("{prefix}.dense.{}", spec.name), in_dim, dim)?;
                    group.dense.push(DenseField {
                        column,
                        field,
                        dim: in_dim,
                        projection,
                    });
                }
            }
        }
        let single_group = groups.len() == 1;
        for (group, &n_rows) in groups.iter_mut().zip(&rows) {
            if n_rows > 0 {
                let name = if single_group {
                    format!("{prefix}.embedding")
                } else {
                    format!("{prefix}.embedding_dim{}", group.dim)
                };
                group.table = Some(init.embedding(name, n_rows, group.dim)?);
            }
        }
        let n_fields = names.len();
        let senet = match &config.senet {
            Some(s) => {
                let hidden = (n_fields / s.reduction).max(1);
                Some(Senet {
                    fc1: init.linear(&format!("{prefix}.senet.fc1"), n_fields, hidden)?,
                    fc2: init.linear(&format!("{prefix}.senet.fc2"), hidden, n_fields)?,
                    squeeze: s.squeeze,
                })
            }
            None => None,
        };
        let tower = config.tower(side);
        let input_width: usize = groups.iter().map(|g| g.n_fields * g.dim).sum();
        let mut fan_in = input_width;
        let mut mlp = Vec::new();
        if tower.branches.contains(&Branch::Mlp) {
            for (i, &width) in tower.hidden.iter().enumerate() {
                mlp.push(init.linear(&format!("{prefix}.mlp.{i}"), fan_in, width)?);
                fan_in = width;
            }
        }
        // The other branches' weights come after the MLP's, so the plain tower draws as before.
        let out = config.branch_dim();
        let mut cross = Vec::new();
        if tower.branches.contains(&Branch::Cross) {
            for l in 0..tower.cross_layers {
                cross.push(init.linear(
                    &format!("{prefix}.cross.{l}"),
                    input_width,
                    input_width,
                )?);
            }
            cross.push(init.linear(&format!("{prefix}.cross.proj"), input_width, out)?);
        }
        let fm = if tower.branches.contains(&Branch::Fm) {
            Some(init.linear(&format!("{prefix}.fm.proj"), groups[0].dim, out)?)
        } else {
            None
        };
        Ok(Tower {
            side,
            names,
            groups,
            senet,
            mlp,
            act: tower.activation.into(),
            dropout: tower.dropout,
            l2_normalize: tower.l2_normalize,
            branches: tower.branches.clone(),
            cross,
            fm,
        })
    }

    fn bad(&self, column: usize, problem: String) -> ModelError {
        let feature = self
            .names
            .get(column)
            .cloned()
            .unwrap_or_else(|| "columns".into());
        ModelError::Batch {
            side: self.side,
            feature,
            problem,
        }
    }

    /// Batch size, after checking the column count and first dimensions.
    fn batch_size(&self, batch: &SideBatch) -> Result<usize, ModelError> {
        if batch.columns.len() != self.names.len() {
            return Err(ModelError::Batch {
                side: self.side,
                feature: "columns".into(),
                problem: format!(
                    "expected {} columns, got {}",
                    self.names.len(),
                    batch.columns.len()
                ),
            });
        }
        let b = batch.columns[0].dims().first().copied().unwrap_or(0);
        for (i, c) in batch.columns.iter().enumerate() {
            if c.dims().first().copied().unwrap_or(0) != b {
                return Err(self.bad(i, format!("batch size {:?} differs from {b}", c.dims())));
            }
        }
        Ok(b)
    }

    fn host_ids(
        &self,
        batch: &SideBatch,
        column: usize,
        shape: &[usize],
    ) -> Result<Vec<u32>, ModelError> {
        let c = &batch.columns[column];
        if c.dtype() != DType::U32 || c.dims() != shape {
            return Err(self.bad(
                column,
                format!("expected u32 {shape:?}, got {:?} {:?}", c.dtype(), c.dims()),
            ));
        }
        Ok(c.flatten_all()?.to_vec1::<u32>()?)
    }

    /// The (group, field, width) of the categorical feature in batch column `column`.
    pub(crate) fn field_of_column(&self, column: usize) -> Option<(usize, usize, usize)> {
        self.groups.iter().enumerate().find_map(|(g, group)| {
            group
                .sparse
                .iter()
                .find(|f| f.column == column && matches!(f.kind, SparseKind::Categorical))
                .map(|f| (g, f.field, group.dim))
        })
    }

    /// Field embeddings of each group, `[B, fields, dim]`.
    pub(crate) fn field_embeddings(
        &self,
        batch: &SideBatch,
        dtype: DType,
        device: &Device,
    ) -> Result<Vec<Tensor>, ModelError> {
        let b = self.batch_size(batch)?;
        let mut out = Vec::with_capacity(self.groups.len());
        for group in &self.groups {
            let t_sparse = group.sparse_slots;
            let t_all = t_sparse + group.dense.len();
            let f = group.n_fields;
            let mut pool = if group.needs_pooling {
                vec![0f32; b * f * t_all]
            } else {
                Vec::new()
            };
            let mut parts = Vec::with_capacity(1 + group.dense.len());
            if let Some(table) = &group.table {
                let mut ids = vec![0u32; b * t_sparse];
                for sf in &group.sparse {
                    let vocab = sf.vocab_size;
                    let out_of_range = |id: u32| {
                        self.bad(
                            sf.column,
                            format!("id {id} is not below vocab_size {vocab}"),
                        )
                    };
                    match sf.kind {
                        SparseKind::Categorical => {
                            let col = self.host_ids(batch, sf.column, &[b])?;
                            for (r, &id) in col.iter().enumerate() {
                                if id >= vocab {
                                    return Err(out_of_range(id));
                                }
                                ids[r * t_sparse + sf.slot] = id + sf.offset;
                                if group.needs_pooling {
                                    pool[(r * f + sf.field) * t_all + sf.slot] = 1.0;
                                }
                            }
                        }
                        SparseKind::Multi { max_len, pooling } => {
                            let col = self.host_ids(batch, sf.column, &[b, max_len])?;
                            for (r, row) in col.chunks_exact(max_len).enumerate() {
                                let count = row.iter().filter(|&&id| id != 0).count();
                                let weight = match pooling {
                                    Pooling::Mean => 1.0 / count.max(1) as f32,
                                    Pooling::Sum => 1.0,
                                };
                                for (j, &id) in row.iter().enumerate() {
                                    if id >= vocab {
                                        return Err(out_of_range(id));
                                    }
                                    ids[r * t_sparse + sf.slot + j] = id + sf.offset;
                                    if id != 0 {
                                        pool[(r * f + sf.field) * t_all + sf.slot + j] = weight;
                                    }
                                }
                            }
                        }
                    }
                }
                if group.needs_pooling && group.dense.is_empty() && fusable_table(table) {
                    let shape = (b, f, t_sparse);
                    out.push(crate::pooling::embedding_bag(table, ids, pool, shape)?);
                    continue;
                }
                let ids = Tensor::from_vec(ids, b * t_sparse, device)?;
                parts.push(
                    table
                        .as_tensor()
                        .index_select(&ids, 0)?
                        .reshape((b, t_sparse, group.dim))?,
                );
            }
            for (k, df) in group.dense.iter().enumerate() {
                let c = &batch.columns[df.column];
                if !c.dtype().is_float() || c.dims() != [b, df.dim] {
                    return Err(self.bad(
                        df.column,
                        format!(
                            "expected f32 [{b}, {}], got {:?} {:?}",
                            df.dim,
                            c.dtype(),
                            c.dims()
                        ),
                    ));
                }
                let x = c.to_dtype(dtype)?;
                let e = df.projection.forward(&x, Act::Identity, None, false)?;
                parts.push(e.reshape((b, 1, group.dim))?);
                for r in 0..b {
                    pool[(r * f + df.field) * t_all + t_sparse + k] = 1.0;
                }
            }
            let slots = if parts.len() == 1 {
                parts.pop().unwrap_or_else(|| unreachable!())
            } else {
                Tensor::cat(&parts, 1)?
            };
            let fields = if group.needs_pooling {
                crate::pooling::pool_fields(&slots, pool, f)?
            } else {
                slots
            };
            out.push(fields);
        }
        Ok(out)
    }

    /// SENet weights `[B, F]` of field embeddings `[B, F, E]`.
    fn senet_weights(
        &self,
        senet: &Senet,
        fields: &Tensor,
        fused: bool,
    ) -> candle_core::Result<Tensor> {
        let squeezed = match senet.squeeze {
            Squeeze::Mean => fields.mean(2)?,
            Squeeze::Max => fields.max(2)?,
        };
        let hidden = senet.fc1.forward(&squeezed, Act::Relu, None, fused)?;
        senet.fc2.forward(&hidden, Act::Sigmoid, None, fused)
    }

    /// The field embeddings after SENet (when on): flattened `[B, F * E]`, and `[B, F, E]`
    /// for the FM branch (the first width's fields: the config allows FM with one width only).
    fn inputs(
        &self,
        batch: &SideBatch,
        dtype: DType,
        device: &Device,
        fused: bool,
    ) -> Result<(Tensor, Tensor), ModelError> {
        let groups = self.field_embeddings(batch, dtype, device)?;
        let b = groups[0].dim(0)?;
        Ok(match &self.senet {
            Some(senet) => {
                let fields = &groups[0];
                let weights = self.senet_weights(senet, fields, fused)?;
                let width = fields.dim(1)? * fields.dim(2)?;
                let weighted = fields.broadcast_mul(&weights.unsqueeze(2)?)?;
                (weighted.reshape((b, width))?, weighted)
            }
            None => {
                let flat: Vec<Tensor> = groups
                    .iter()
                    .map(|g| g.flatten_from(1))
                    .collect::<candle_core::Result<_>>()?;
                let x = if flat.len() == 1 {
                    flat[0].clone()
                } else {
                    Tensor::cat(&flat, 1)?
                };
                (x, groups[0].clone())
            }
        })
    }

    /// The MLP on the flattened inputs `[B, F * E]`.
    fn mlp(&self, mut x: Tensor, mode: Mode, fused: bool) -> Result<Tensor, ModelError> {
        let b = x.dim(0)?;
        let last = self.mlp.len() - 1;
        for (i, layer) in self.mlp.iter().enumerate() {
            if i == last {
                x = layer.forward(&x, Act::Identity, None, fused)?;
            } else {
                let mask = match mode {
                    Mode::Train { seed } if self.dropout > 0.0 => {
                        let width = layer.bias.dim(0)?;
                        Some(Arc::new(dropout_mask(
                            seed,
                            self.side,
                            i,
                            b * width,
                            self.dropout,
                        )))
                    }
                    _ => None,
                };
                x = layer.forward(&x, self.act, mask.as_ref(), fused)?;
            }
        }
        Ok(x)
    }

    /// The plain tower's output `[B, D]`.
    fn encode(
        &self,
        batch: &SideBatch,
        mode: Mode,
        dtype: DType,
        device: &Device,
        fused: bool,
    ) -> Result<Tensor, ModelError> {
        let (x, _) = self.inputs(batch, dtype, device, fused)?;
        let mut x = self.mlp(x, mode, fused)?;
        if self.l2_normalize {
            x = l2_normalize(&x)?;
        }
        Ok(x)
    }

    /// A parallel tower's branch outputs, concatenated in config order, `[B, branches * D]`.
    fn branch_outputs(
        &self,
        batch: &SideBatch,
        mode: Mode,
        dtype: DType,
        device: &Device,
        fused: bool,
    ) -> Result<Tensor, ModelError> {
        let (x, fields) = self.inputs(batch, dtype, device, fused)?;
        let mut outs = Vec::with_capacity(self.branches.len());
        for branch in &self.branches {
            outs.push(match branch {
                Branch::Mlp => self.mlp(x.clone(), mode, fused)?,
                Branch::Cross => {
                    let (proj, layers) =
                        self.cross
                            .split_last()
                            .ok_or_else(|| ModelError::Unsupported {
                                what: "this tower",
                                problem: "a cross branch without layers".into(),
                            })?;
                    let crossed = cross_network(&x, layers)?;
                    proj.forward(&crossed, Act::Identity, None, false)?
                }
                Branch::Fm => {
                    let proj = self.fm.as_ref().ok_or_else(|| ModelError::Unsupported {
                        what: "this tower",
                        problem: "an fm branch without its projection".into(),
                    })?;
                    proj.forward(&fm_interaction(&fields)?, Act::Identity, None, false)?
                }
            });
        }
        Ok(Tensor::cat(&outs, 1)?)
    }
}

/// Whether a group's embedding table runs through [`crate::pooling::embedding_bag`]'s CPU op.
fn fusable_table(table: &Var) -> bool {
    table.device().is_cpu() && table.dtype() == DType::F32
}

fn l2_normalize(x: &Tensor) -> candle_core::Result<Tensor> {
    x.broadcast_div(&(x.sqr()?.sum_keepdim(1)? + COSINE_EPS)?.sqrt()?)
}

impl Dssm {
    /// Builds a model with weights drawn from a generator seeded with `seed` (same seed, same weights,
    /// bit for bit): Xavier-uniform linear weights, zero biases, normal(0, 0.05) embedding rows. f32.
    pub fn new(config: ModelConfig, seed: u64, device: &Device) -> Result<Self, ModelError> {
        Self::new_with_dtype(config, seed, device, DType::F32)
    }

    /// As [`Dssm::new`] with another float dtype (f64 for gradient checks); inputs stay f32.
    pub fn new_with_dtype(
        config: ModelConfig,
        seed: u64,
        device: &Device,
        dtype: DType,
    ) -> Result<Self, ModelError> {
        config.check()?;
        if !dtype.is_float() {
            return Err(ModelError::Shape {
                what: "dtype",
                problem: format!("{dtype:?} is not a float type"),
            });
        }
        let mut init = Init {
            rng: StdRng::seed_from_u64(seed),
            device,
            dtype,
            named_vars: Vec::new(),
        };
        let user = Tower::build(&config, Side::User, &mut init)?;
        let item = Tower::build(&config, Side::Item, &mut init)?;
        let combine = if config.is_parallel() {
            // Ones and a zero bias: the score starts as the sum of the branches' dot products.
            let width = config.user_tower.branches.len() * config.branch_dim();
            let weight = init.var("branches.weight".into(), vec![1.0; width], &[1, width])?;
            let bias = init.var("branches.bias".into(), vec![0.0], &[1])?;
            Some(Combine {
                layer: Linear { weight, bias },
            })
        } else {
            None
        };
        let log_temperature = match config.temperature {
            Temperature::Learned { init: t } => {
                Some(init.var("temperature.log".into(), vec![t.ln()], &[1])?)
            }
            Temperature::Fixed(_) => None,
        };
        let sequence = match &config.sequence {
            Some(s) => Some(SequenceTower::build(&config, s, &item, &mut init)?),
            None => None,
        };
        Ok(Dssm {
            config,
            device: device.clone(),
            dtype,
            user,
            item,
            log_temperature,
            sequence,
            combine,
            named_vars: init.named_vars,
            fused: true,
        })
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The float dtype of the weights.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// All trainable variables, for the optimizer.
    pub fn vars(&self) -> Vec<Var> {
        self.named_vars.iter().map(|(_, v)| v.clone()).collect()
    }

    /// All trainable variables with their tensor names (as saved), in creation order.
    pub fn named_vars(&self) -> &[(String, Var)] {
        &self.named_vars
    }

    /// Uses the fused CPU kernels (bias + activation + dropout, BCE) where possible. Default `true`;
    /// they only run on CPU with f32/f64. `false` runs the same maths as plain Candle ops.
    pub fn set_fused_kernels(&mut self, on: bool) {
        self.fused = on;
    }

    fn tower(&self, side: Side) -> &Tower {
        match side {
            Side::User => &self.user,
            Side::Item => &self.item,
        }
    }

    /// Embeds a batch of one side, `[B, D]` (`D` = [`ModelConfig::output_dim`]). Parallel
    /// towers give the folded vectors: user `concat_b(w_b * u_b)` then the bias, item
    /// `concat_b(i_b)` then 1, whose dot product is [`Dssm::forward`]'s score before the
    /// temperature.
    pub fn encode(&self, side: Side, batch: &SideBatch, mode: Mode) -> Result<Tensor, ModelError> {
        let tower = self.tower(side);
        let Some(combine) = &self.combine else {
            return tower.encode(batch, mode, self.dtype, &self.device, self.fused);
        };
        let outs = tower.branch_outputs(batch, mode, self.dtype, &self.device, self.fused)?;
        Ok(match side {
            Side::User => combine.fold_users(&outs)?,
            Side::Item => Combine::fold_items(&outs)?,
        })
    }

    /// User embeddings `[B, D]`.
    pub fn encode_users(&self, batch: &SideBatch, mode: Mode) -> Result<Tensor, ModelError> {
        self.encode(Side::User, batch, mode)
    }

    /// Item embeddings `[B, D]`.
    pub fn encode_items(&self, batch: &SideBatch, mode: Mode) -> Result<Tensor, ModelError> {
        self.encode(Side::Item, batch, mode)
    }

    /// The sequence tower's inputs for the whole catalogue in `items` (item row `r` at row `r`):
    /// the item vectors `[C, D]` (the item tower's outputs, what queries are scored against) and
    /// the token table `[C + 1, D]` (row 0 padding) that [`Dssm::encode_sequences`] reads.
    /// An error when the model has no sequence tower.
    pub fn sequence_items(
        &self,
        items: &SideBatch,
        mode: Mode,
    ) -> Result<(Tensor, Tensor), ModelError> {
        let sequence = self.sequence_tower()?;
        let vectors = self.encode_items(items, mode)?;
        let tokens = sequence.tokens(&self.item, items, &vectors, self.fused)?;
        Ok((vectors, tokens))
    }

    /// Query vectors at every position of `rows` sequences, `[rows * n, D]` row-major: `ids`
    /// holds `rows * n` item ids (item row + 1, 0 = padding), each sequence left-padded, its
    /// newest item last; `users` (one row per sequence) adds the user tower's output when
    /// `sequence.user_features`. L2-normalised when the user tower is.
    ///
    /// ```
    /// use candle_core::Device;
    /// use dssm_model::*;
    /// let config = ModelConfig {
    ///     features: vec![
    ///         FeatureSpec::categorical("user_id", Side::User, 10),
    ///         FeatureSpec::categorical("movie_id", Side::Item, 5),
    ///     ],
    ///     senet: None,
    ///     sequence: Some(SequenceConfig {
    ///         max_len: 4, blocks: 1, heads: 2, dropout: 0.0, items: SequenceItems::Tower,
    ///         id_feature: "movie_id".into(), user_features: false, ffn_multiple: 1,
    ///     }),
    ///     ..ModelConfig::default()
    /// };
    /// let model = Dssm::new(config, 1, &Device::Cpu)?;
    /// let items = SideBatch::from_host(model.config(), Side::Item, 5,
    ///     &[HostColumn::Ids(&[0, 1, 2, 3, 4])], &Device::Cpu)?;
    /// let (vectors, tokens) = model.sequence_items(&items, Mode::Eval)?;
    /// // Two sequences of 4: [_, _, 3, 1] and [2, 4, 4, 1] (item rows + 1, newest last).
    /// let queries = model.encode_sequences(&tokens, &[0, 0, 3, 1, 2, 4, 4, 1], 2, None, Mode::Eval)?;
    /// assert_eq!((vectors.dims(), queries.dims()), (&[5, 32][..], &[8, 32][..]));
    /// # Ok::<(), dssm_model::ModelError>(())
    /// ```
    pub fn encode_sequences(
        &self,
        tokens: &Tensor,
        ids: &[u32],
        rows: usize,
        users: Option<&SideBatch>,
        mode: Mode,
    ) -> Result<Tensor, ModelError> {
        let sequence = self.sequence_tower()?;
        let mut out = sequence.forward(tokens, ids, rows, mode, self.fused)?;
        if let (Some(users), true) = (users, sequence.adds_user_features()) {
            let u = self.encode_users(users, mode)?;
            let (n, d) = (ids.len() / rows, u.dim(1)?);
            let per_position = u
                .unsqueeze(1)?
                .broadcast_as((rows, n, d))?
                .reshape((rows * n, d))?;
            out = (out + per_position)?;
        }
        if self.config.user_tower.l2_normalize {
            out = l2_normalize(&out)?;
        }
        Ok(out)
    }

    fn sequence_tower(&self) -> Result<&SequenceTower, ModelError> {
        self.sequence.as_ref().ok_or(ModelError::Unsupported {
            what: "this model",
            problem: "it has no sequence tower (model config `sequence`)".to_string(),
        })
    }

    /// Similarity before the temperature: `[B]` for pairs (`matrix = false`) or `[U, I]`.
    fn similarity(
        &self,
        users: &Tensor,
        items: &Tensor,
        matrix: bool,
    ) -> Result<Tensor, ModelError> {
        let d = self.config.output_dim();
        for (what, t) in [("user embeddings", users), ("item embeddings", items)] {
            if t.rank() != 2 || t.dim(1)? != d {
                return Err(ModelError::Shape {
                    what,
                    problem: format!("expected [N, {d}], got {:?}", t.dims()),
                });
            }
        }
        if !matrix && users.dim(0)? != items.dim(0)? {
            return Err(ModelError::Shape {
                what: "item embeddings",
                problem: format!("{} rows for {} user rows", items.dim(0)?, users.dim(0)?),
            });
        }
        let (u, v) = match self.config.similarity {
            Similarity::Dot => (users.clone(), items.clone()),
            Similarity::Cosine => (l2_normalize(users)?, l2_normalize(items)?),
        };
        Ok(if matrix {
            u.matmul(&v.t()?)?
        } else {
            (u * v)?.sum(1)?
        })
    }

    /// Similarity only (no temperature): dot product, or cosine in `[-1, 1]`. `[B]`.
    pub fn similarity_pairs(&self, users: &Tensor, items: &Tensor) -> Result<Tensor, ModelError> {
        self.similarity(users, items, false)
    }

    fn apply_temperature(&self, s: Tensor) -> Result<Tensor, ModelError> {
        Ok(match (&self.log_temperature, self.config.temperature) {
            (Some(log_t), _) => s.broadcast_div(&log_t.as_tensor().exp()?)?,
            (None, Temperature::Fixed(t)) if t != 1.0 => s.affine(1.0 / t as f64, 0.0)?,
            _ => s,
        })
    }

    /// The current temperature.
    pub fn temperature(&self) -> Result<f32, ModelError> {
        Ok(match (&self.log_temperature, self.config.temperature) {
            (Some(log_t), _) => log_t
                .as_tensor()
                .to_dtype(DType::F32)?
                .exp()?
                .to_vec1::<f32>()?[0],
            (None, Temperature::Fixed(t)) => t,
            (None, Temperature::Learned { init }) => init,
        })
    }

    /// Row-wise logits `[B]`: similarity of user `i` and item `i`, divided by the temperature.
    pub fn score_pairs(&self, users: &Tensor, items: &Tensor) -> Result<Tensor, ModelError> {
        let s = self.similarity(users, items, false)?;
        self.apply_temperature(s)
    }

    /// All-pairs logits `[U, I]` (for in-batch softmax and retrieval).
    pub fn score_matrix(&self, users: &Tensor, items: &Tensor) -> Result<Tensor, ModelError> {
        let s = self.similarity(users, items, true)?;
        self.apply_temperature(s)
    }

    /// Logits `[B]` of user `i` with item `i`. Parallel towers score as trained: each branch's
    /// user output times its item output, concatenated, through the scoring layer
    /// (`w . concat_b(u_b * i_b) + c`), then the temperature.
    pub fn forward(
        &self,
        users: &SideBatch,
        items: &SideBatch,
        mode: Mode,
    ) -> Result<Tensor, ModelError> {
        if let Some(combine) = &self.combine {
            let (dtype, device, fused) = (self.dtype, &self.device, self.fused);
            let u = self
                .user
                .branch_outputs(users, mode, dtype, device, fused)?;
            let v = self
                .item
                .branch_outputs(items, mode, dtype, device, fused)?;
            if u.dim(0)? != v.dim(0)? {
                return Err(ModelError::Shape {
                    what: "item batch",
                    problem: format!("{} rows for {} user rows", v.dim(0)?, u.dim(0)?),
                });
            }
            return self.apply_temperature(combine.score(&u, &v)?);
        }
        let u = self.encode_users(users, mode)?;
        let v = self.encode_items(items, mode)?;
        self.score_pairs(&u, &v)
    }

    /// SENet field weights `[B, fields]` of a batch (fields in config order within one embedding width),
    /// each in `(0, 1)`; `None` when SENet is off.
    pub fn senet_weights(
        &self,
        side: Side,
        batch: &SideBatch,
    ) -> Result<Option<Tensor>, ModelError> {
        let tower = self.tower(side);
        let Some(senet) = &tower.senet else {
            return Ok(None);
        };
        let groups = tower.field_embeddings(batch, self.dtype, &self.device)?;
        Ok(Some(tower.senet_weights(senet, &groups[0], self.fused)?))
    }

    /// Writes `model.safetensors` (every variable under its name, in the model dtype) and `model.json`
    /// (the config) into `dir`, creating it; each file is written to a temporary name and renamed.
    ///
    /// Tensor names: `{side}.embedding` `[rows, E]` holds the rows of all (multi-)categorical fields of
    /// the side, stacked in config order (field `k` starts at the sum of the earlier vocab sizes; when
    /// fields have different widths there is one table per width, `{side}.embedding_dim{E}`);
    /// `{side}.dense.{feature}.weight|bias`, `{side}.senet.fc1|fc2.weight|bias`, `{side}.mlp.{i}.weight|bias`
    /// (PyTorch layout, weight `[out, in]`), `temperature.log` `[1]` when learned.
    pub fn save(&self, dir: &Path) -> Result<(), ModelError> {
        std::fs::create_dir_all(dir).map_err(|source| ModelError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let weights = dir.join(WEIGHTS_FILE);
        let tmp = dir.join(format!(".{WEIGHTS_FILE}.tmp"));
        let tensors: HashMap<String, Tensor> = self
            .named_vars
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect();
        candle_core::safetensors::save(&tensors, &tmp)?;
        std::fs::rename(&tmp, &weights).map_err(|source| ModelError::Io {
            path: weights.clone(),
            source,
        })?;
        let config = dir.join(CONFIG_FILE);
        let tmp = dir.join(format!(".{CONFIG_FILE}.tmp"));
        let json =
            serde_json::to_string_pretty(&self.config).map_err(|source| ModelError::Json {
                path: config.clone(),
                source,
            })?;
        std::fs::write(&tmp, json).map_err(|source| ModelError::Io {
            path: tmp.clone(),
            source,
        })?;
        std::fs::rename(&tmp, &config).map_err(|source| ModelError::Io {
            path: config.clone(),
            source,
        })?;
        Ok(())
    }

    /// Reads a model written by [`Dssm::save`]; outputs are bit-identical to the saved model's.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, ModelError> {
        let config_path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&config_path).map_err(|source| ModelError::Io {
            path: config_path.clone(),
            source,
        })?;
        let config: ModelConfig =
            serde_json::from_str(&text).map_err(|source| ModelError::Json {
                path: config_path.clone(),
                source,
            })?;
        let path = dir.join(WEIGHTS_FILE);
        let mut tensors = candle_core::safetensors::load(&path, device).map_err(|e| match e {
            candle_core::Error::Io(source) => ModelError::Io {
                path: path.clone(),
                source,
            },
            other => ModelError::Checkpoint {
                path: path.clone(),
                problem: other.to_string(),
            },
        })?;
        let dtype = tensors
            .values()
            .next()
            .map(|t| t.dtype())
            .unwrap_or(DType::F32);
        // A config that does not check is the config file's fault.
        let model = Self::new_with_dtype(config, 0, device, dtype).map_err(|e| match e {
            ModelError::Config(e) => ModelError::Checkpoint {
                path: config_path.clone(),
                problem: e.to_string(),
            },
            other => other,
        })?;
        for (name, var) in &model.named_vars {
            let bad = |problem: String| ModelError::Checkpoint {
                path: path.clone(),
                problem,
            };
            let t = tensors.remove(name).ok_or_else(|| {
                bad(format!(
                    "missing tensor `{name}` that {CONFIG_FILE} describes"
                ))
            })?;
            if t.dims() != var.dims() || t.dtype() != dtype {
                return Err(bad(format!(
                    "tensor `{name}` is {:?} {:?}, expected {:?} {:?} as {CONFIG_FILE} describes",
                    t.dtype(),
                    t.dims(),
                    dtype,
                    var.dims()
                )));
            }
            var.set(&t)?;
        }
        if let Some(name) = tensors.keys().next() {
            return Err(ModelError::Checkpoint {
                path,
                problem: format!("unexpected tensor `{name}`"),
            });
        }
        Ok(model)
    }
}

/// Parses `"cpu"`, `"cuda"` (= `"cuda:0"`) or `"cuda:N"`.
///
/// ```
/// assert!(dssm_model::parse_device("cpu")?.is_cpu());
/// assert!(dssm_model::parse_device("tpu").is_err());
/// # Ok::<(), dssm_model::ModelError>(())
/// ```
pub fn parse_device(spec: &str) -> Result<Device, ModelError> {
    let bad = |problem: String| ModelError::Device {
        spec: spec.to_owned(),
        problem,
    };
    let trimmed = spec.trim();
    if trimmed.eq_ignore_ascii_case("cpu") {
        return Ok(Device::Cpu);
    }
    let ordinal = if trimmed.eq_ignore_ascii_case("cuda") {
        0
    } else if let Some(n) = trimmed.strip_prefix("cuda:") {
        n.parse::<usize>()
            .map_err(|_| bad(format!("`{n}` is not a GPU number")))?
    } else {
        return Err(bad("expected `cpu`, `cuda` or `cuda:N`".into()));
    };
    if !cfg!(feature = "cuda") {
        return Err(bad(
            "this build has no CUDA support (rebuild with the `cuda` feature of dssm-model)".into(),
        ));
    }
    Device::new_cuda(ordinal).map_err(|e| bad(e.to_string()))
}
