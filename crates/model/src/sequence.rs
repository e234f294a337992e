//! The sequence user tower ([`SequenceConfig`]): causal multi-head self-attention over the user's
//! last items (SASRec-style, pre-norm blocks), on Candle ops so autograd, the GPU and f64 gradient
//! checks all work.
//!
//! Rows of a batch are sequences of `n <= max_len` item ids (item row + 1; 0 is padding),
//! left-padded so the newest item is at position `n - 1`, which reads the last learned position.
//! Position `t`'s output depends only on positions `<= t` (the causal mask) and never on padding
//! (the key mask); padding positions' outputs are zero.

use std::sync::Arc;

use candle_core::{D, DType, Device, Tensor, Var};

use crate::batch::SideBatch;
use crate::config::{ModelConfig, SequenceConfig, SequenceItems, Side};
use crate::dropout::dropout_mask;
use crate::error::ModelError;
use crate::model::{Init, Linear, Mode, Tower};
use crate::ops::Act;

/// Added to the attention logits of masked keys.
const MASKED: f32 = -1e9;
/// Layer norm epsilon.
const NORM_EPS: f64 = 1e-6;
/// Dropout streams of the sequence tower start here (the MLP layers use 0, 1, ...).
const DROPOUT_STREAM: usize = 1 << 20;

/// Layer norm over the last dimension with a learned gain and bias.
struct Norm {
    gain: Var,
    bias: Var,
}

impl Norm {
    fn build(name: &str, dim: usize, init: &mut Init<'_>) -> Result<Self, ModelError> {
        Ok(Self {
            gain: init.var(format!("{name}.gain"), vec![1.0; dim], &[dim])?,
            bias: init.var(format!("{name}.bias"), vec![0.0; dim], &[dim])?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
        let variance = centred.sqr()?.mean_keepdim(D::Minus1)?;
        centred
            .broadcast_div(&(variance + NORM_EPS)?.sqrt()?)?
            .broadcast_mul(self.gain.as_tensor())?
            .broadcast_add(self.bias.as_tensor())
    }
}

/// One pre-norm block: `x + drop(attention(norm(x)))`, then `x + drop(ffn(norm(x)))`.
struct Block {
    attention_norm: Norm,
    qkv: Linear,
    out: Linear,
    ffn_norm: Norm,
    ffn_in: Linear,
    ffn_out: Linear,
}

/// The shapes of one forward pass.
#[derive(Clone, Copy)]
struct Shape {
    rows: usize,
    len: usize,
    dim: usize,
    heads: usize,
}

/// See the module docs.
pub(crate) struct SequenceTower {
    config: SequenceConfig,
    dim: usize,
    /// `items = "id"`: the id feature's (group, field) in the item tower and its projection.
    id_input: Option<((usize, usize), Linear)>,
    position: Var,
    blocks: Vec<Block>,
    norm: Norm,
}

impl SequenceTower {
    /// The tower of `config.sequence` (which must be set) over the item tower `items`.
    pub(crate) fn build(
        config: &ModelConfig,
        sequence: &SequenceConfig,
        items: &Tower,
        init: &mut Init<'_>,
    ) -> Result<Self, ModelError> {
        let dim = config.output_dim();
        let id_input = match sequence.items {
            SequenceItems::Tower => None,
            SequenceItems::Id => {
                let column = config
                    .side_features(Side::Item)
                    .position(|f| f.name == sequence.id_feature)
                    .ok_or_else(|| unknown_id_feature(sequence))?;
                let (group, field, width) = items
                    .field_of_column(column)
                    .ok_or_else(|| unknown_id_feature(sequence))?;
                let projection = init.linear("sequence.input", width, dim)?;
                Some(((group, field), projection))
            }
        };
        let position = init.embedding("sequence.position".into(), sequence.max_len, dim)?;
        let ffn = dim * sequence.ffn_multiple;
        let blocks = (0..sequence.blocks)
            .map(|i| {
                let name = |part: &str| format!("sequence.block.{i}.{part}");
                Ok(Block {
                    attention_norm: Norm::build(&name("attention_norm"), dim, init)?,
                    qkv: init.linear(&name("qkv"), dim, 3 * dim)?,
                    out: init.linear(&name("out"), dim, dim)?,
                    ffn_norm: Norm::build(&name("ffn_norm"), dim, init)?,
                    ffn_in: init.linear(&name("ffn_in"), dim, ffn)?,
                    ffn_out: init.linear(&name("ffn_out"), ffn, dim)?,
                })
            })
            .collect::<Result<_, ModelError>>()?;
        Ok(Self {
            config: sequence.clone(),
            dim,
            id_input,
            position,
            blocks,
            norm: Norm::build("sequence.norm", dim, init)?,
        })
    }

    /// Whether the user tower's output is added to every position.
    pub(crate) fn adds_user_features(&self) -> bool {
        self.config.user_features
    }

    /// The token table `[C + 1, D]`: row 0 (padding) zeros, row `r + 1` item row `r` of the
    /// batch `items` (the whole catalogue) whose tower outputs are `item_vectors` `[C, D]`.
    pub(crate) fn tokens(
        &self,
        item_tower: &Tower,
        items: &SideBatch,
        item_vectors: &Tensor,
        fused: bool,
    ) -> Result<Tensor, ModelError> {
        let table = match &self.id_input {
            None => item_vectors.clone(),
            Some(((group, field), projection)) => {
                let (dtype, device) = (item_vectors.dtype(), item_vectors.device());
                let fields = item_tower.field_embeddings(items, dtype, device)?;
                let ids = fields[*group].narrow(1, *field, 1)?.squeeze(1)?;
                projection.forward(&ids, Act::Identity, None, fused)?
            }
        };
        let pad = Tensor::zeros((1, self.dim), table.dtype(), table.device())?;
        Ok(Tensor::cat(&[&pad, &table], 0)?)
    }

    /// Outputs at every position, `[rows * n, D]` (row-major by sequence), of the `rows`
    /// sequences in `ids` (`rows * n` values).
    pub(crate) fn forward(
        &self,
        tokens: &Tensor,
        ids: &[u32],
        rows: usize,
        mode: Mode,
        fused: bool,
    ) -> Result<Tensor, ModelError> {
        let len = ids.len().checked_div(rows).unwrap_or(0);
        if rows == 0 || len == 0 || rows * len != ids.len() || len > self.config.max_len {
            return Err(ModelError::Shape {
                what: "sequence batch",
                problem: format!(
                    "{} ids for {rows} sequences of at most {} items",
                    ids.len(),
                    self.config.max_len
                ),
            });
        }
        let shape = Shape {
            rows,
            len,
            dim: self.dim,
            heads: self.config.heads,
        };
        let (dtype, device) = (tokens.dtype(), tokens.device());
        let index = Tensor::from_slice(ids, ids.len(), device)?;
        let positions = self
            .position
            .as_tensor()
            .narrow(0, self.config.max_len - len, len)?;
        let x = tokens
            .index_select(&index, 0)?
            .reshape((rows, len, self.dim))?
            .broadcast_add(&positions)?
            .reshape((rows * len, self.dim))?;
        let valid = valid_mask(ids, dtype, device)?;
        let ids = Arc::new(ids.to_vec());
        let mut x = self.dropout(&x, mode, 0)?.broadcast_mul(&valid)?;
        for (i, block) in self.blocks.iter().enumerate() {
            let h = block.attention_norm.forward(&x)?;
            let a = self.attention(block, &h, &ids, shape, (mode, 1 + 2 * i), fused)?;
            x = (x + a)?;
            let h = block.ffn_norm.forward(&x)?;
            let h = block.ffn_in.forward(&h, Act::Relu, None, fused)?;
            let mask = self.dropout_values(mode, 2 + 2 * i, rows * len)?;
            let f = block
                .ffn_out
                .forward(&h, Act::Identity, mask.as_ref(), fused)?;
            x = (x + f)?.broadcast_mul(&valid)?;
        }
        Ok(self.norm.forward(&x)?.broadcast_mul(&valid)?)
    }

    /// Multi-head attention of `h` `[rows * n, D]` under `masks` (causal, key padding).
    fn attention(
        &self,
        block: &Block,
        h: &Tensor,
        ids: &Arc<Vec<u32>>,
        shape: Shape,
        (mode, stream): (Mode, usize),
        fused: bool,
    ) -> Result<Tensor, ModelError> {
        let Shape {
            rows,
            len,
            dim,
            heads,
        } = shape;
        let head_dim = dim / heads;
        let qkv = block
            .qkv
            .forward(h, Act::Identity, None, fused)?
            .reshape((rows, len, 3, heads, head_dim))?;
        let part = |k: usize| -> candle_core::Result<Tensor> {
            qkv.narrow(2, k, 1)?
                .squeeze(2)?
                .transpose(1, 2)?
                .contiguous()
        };
        let (q, k, v) = (part(0)?, part(1)?, part(2)?);
        let logits = (q * (1.0 / (head_dim as f64).sqrt()))?.matmul(&k.t()?)?;
        let weights = masked_softmax(&logits, ids, shape)?;
        let context = weights
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((rows * len, dim))?;
        let mask = self.dropout_values(mode, stream, rows * len)?;
        Ok(block
            .out
            .forward(&context, Act::Identity, mask.as_ref(), fused)?)
    }

    /// Inverted dropout of `x` `[rows, D]` (stream `stream` of the step's seed) in training.
    fn dropout(&self, x: &Tensor, mode: Mode, stream: usize) -> Result<Tensor, ModelError> {
        match self.dropout_values(mode, stream, x.dim(0)?)? {
            None => Ok(x.clone()),
            Some(mask) => {
                let mask = Tensor::from_slice(mask.as_slice(), x.dims(), x.device())?;
                Ok(x.mul(&mask.to_dtype(x.dtype())?)?)
            }
        }
    }

    /// The dropout mask of `rows` rows of width D, when training with dropout.
    fn dropout_values(
        &self,
        mode: Mode,
        stream: usize,
        rows: usize,
    ) -> Result<Option<Arc<Vec<f32>>>, ModelError> {
        let p = self.config.dropout;
        Ok(match mode {
            Mode::Train { seed } if p > 0.0 => Some(Arc::new(dropout_mask(
                seed,
                Side::User,
                DROPOUT_STREAM + stream,
                rows * self.dim,
                p,
            ))),
            _ => None,
        })
    }
}

fn unknown_id_feature(sequence: &SequenceConfig) -> ModelError {
    ModelError::Shape {
        what: "sequence.id_feature",
        problem: format!(
            "`{}` is not a categorical item feature",
            sequence.id_feature
        ),
    }
}

/// 1 at real items, 0 at padding: `[ids, 1]`.
fn valid_mask(ids: &[u32], dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
    let valid: Vec<f32> = ids.iter().map(|&i| f32::from(u8::from(i != 0))).collect();
    Tensor::from_vec(valid, (ids.len(), 1), device)?.to_dtype(dtype)
}

/// The additive masks of the attention logits: causal `[1, 1, n, n]` and key padding
/// `[rows, 1, 1, n]`.
fn attention_masks(
    ids: &[u32],
    shape: Shape,
    dtype: DType,
    device: &Device,
) -> candle_core::Result<(Tensor, Tensor)> {
    let n = shape.len;
    let causal: Vec<f32> = (0..n * n)
        .map(|c| if c % n <= c / n { 0.0 } else { MASKED })
        .collect();
    let padding: Vec<f32> = ids
        .iter()
        .map(|&i| if i == 0 { MASKED } else { 0.0 })
        .collect();
    let causal = Tensor::from_vec(causal, (1, 1, n, n), device)?.to_dtype(dtype)?;
    let padding = Tensor::from_vec(padding, (shape.rows, 1, 1, n), device)?.to_dtype(dtype)?;
    Ok((causal, padding))
}

/// Softmax over the last dimension (the maximum is subtracted as a constant).
fn softmax_last_dim(x: &Tensor) -> candle_core::Result<Tensor> {
    let shifted = x.broadcast_sub(&x.max_keepdim(D::Minus1)?.detach())?;
    let e = shifted.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// `softmax(logits)` over the keys each query may see (itself and earlier, not padding) of
/// attention logits `[rows, heads, n, n]`; rows whose query sees nothing are zero. One pass
/// forward, one backward on CPU (f32); Candle ops with additive masks elsewhere.
fn masked_softmax(
    logits: &Tensor,
    ids: &Arc<Vec<u32>>,
    shape: Shape,
) -> candle_core::Result<Tensor> {
    if logits.device().is_cpu() && logits.dtype() == DType::F32 {
        let op = MaskedSoftmax {
            ids: Arc::clone(ids),
            len: shape.len,
            heads: shape.heads,
        };
        return logits.contiguous()?.apply_op1(op);
    }
    let (causal, padding) = attention_masks(ids, shape, logits.dtype(), logits.device())?;
    softmax_last_dim(&logits.broadcast_add(&causal)?.broadcast_add(&padding)?)
}

/// See [`masked_softmax`].
struct MaskedSoftmax {
    ids: Arc<Vec<u32>>,
    len: usize,
    heads: usize,
}

impl MaskedSoftmax {
    /// The keys row `r` of the flattened `[rows * heads * n, n]` logits may see: `0..=i` of
    /// sequence `b`, less its padding (a left-padded sequence's padding comes first).
    fn visible(&self, r: usize) -> std::ops::Range<usize> {
        let n = self.len;
        let (b, i) = (r / (self.heads * n), r % n);
        let ids = &self.ids[b * n..(b + 1) * n];
        let first = ids.iter().position(|&id| id != 0).unwrap_or(n);
        first..(i + 1).max(first)
    }
}

impl candle_core::CustomOp1 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "dssm-masked-attention-softmax"
    }

    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use rayon::prelude::*;
        let x = crate::ops::contiguous_slice::<f32>(s, l)?;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(self.len)
            .zip(x.par_chunks(self.len))
            .enumerate()
            .for_each(|(r, (out, row))| {
                let keys = self.visible(r);
                let (out, row) = (&mut out[keys.clone()], &row[keys]);
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0f32;
                for (o, &v) in out.iter_mut().zip(row) {
                    *o = (v - max).exp();
                    sum += *o;
                }
                out.iter_mut().for_each(|o| *o /= sum);
            });
        Ok((candle_core::CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        // dx = y * (dy - sum(dy * y)) over each row (zero where y is).
        let dot = (grad_res * res)?.sum_keepdim(D::Minus1)?;
        Ok(Some((res * grad_res.broadcast_sub(&dot)?)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Dssm, FeatureSpec, HostColumn, TowerConfig};

    const ITEMS: usize = 6;

    fn config(items: SequenceItems, dropout: f32) -> ModelConfig {
        let tower = TowerConfig {
            hidden: vec![8],
            dropout: 0.0,
            ..TowerConfig::default()
        };
        ModelConfig {
            features: vec![
                FeatureSpec::categorical("user_id", Side::User, 4),
                FeatureSpec::categorical("movie_id", Side::Item, ITEMS),
                FeatureSpec::categorical("year", Side::Item, 3),
            ],
            embedding_dim: 4,
            user_tower: tower.clone(),
            item_tower: tower,
            senet: None,
            sequence: Some(SequenceConfig {
                max_len: 5,
                blocks: 2,
                heads: 2,
                dropout,
                items,
                id_feature: "movie_id".into(),
                user_features: true,
                ffn_multiple: 2,
            }),
            ..ModelConfig::default()
        }
    }

    fn items(model: &Dssm) -> SideBatch {
        let ids: Vec<u32> = (0..ITEMS as u32).collect();
        let years: Vec<u32> = (0..ITEMS as u32).map(|i| i % 3).collect();
        let columns = [HostColumn::Ids(&ids), HostColumn::Ids(&years)];
        SideBatch::from_host(model.config(), Side::Item, ITEMS, &columns, model.device()).unwrap()
    }

    fn users(model: &Dssm, rows: usize) -> SideBatch {
        let ids: Vec<u32> = (0..rows as u32).map(|u| u % 4).collect();
        let columns = [HostColumn::Ids(&ids)];
        SideBatch::from_host(model.config(), Side::User, rows, &columns, model.device()).unwrap()
    }

    /// Outputs of `ids` (`rows` sequences) as host rows of width 8.
    fn outputs(model: &Dssm, ids: &[u32], rows: usize, mode: Mode) -> Vec<Vec<f64>> {
        let (_, tokens) = model.sequence_items(&items(model), mode).unwrap();
        let out = model
            .encode_sequences(&tokens, ids, rows, Some(&users(model, rows)), mode)
            .unwrap();
        out.to_dtype(DType::F64).unwrap().to_vec2::<f64>().unwrap()
    }

    fn close(a: &[f64], b: &[f64]) -> bool {
        a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5)
    }

    #[test]
    fn a_position_never_sees_later_items_and_padding_is_invisible() {
        for items in [SequenceItems::Id, SequenceItems::Tower] {
            let model = Dssm::new(config(items, 0.0), 3, &Device::Cpu).unwrap();
            let a = outputs(&model, &[0, 2, 5, 1, 3], 1, Mode::Eval);
            let b = outputs(&model, &[0, 2, 5, 6, 4], 1, Mode::Eval);
            // Positions 1 and 2 (items 2, 5) are the same; position 3 reads a changed item.
            assert!(close(&a[1], &b[1]) && close(&a[2], &b[2]), "{items:?}");
            assert!(!close(&a[3], &b[3]));
            // The same items without the padding (a shorter batch) give the same outputs.
            let c = outputs(&model, &[2, 5, 1, 3], 1, Mode::Eval);
            for p in 0..4 {
                assert!(close(&c[p], &a[p + 1]), "{items:?} position {p}");
            }
            // A padding position's output is the user's own vector alone (no attention output).
            let first = outputs(&model, &[0, 0, 0, 0, 1], 1, Mode::Eval);
            assert!(close(&first[0], &first[1]) && !close(&first[0], &first[4]));
        }
    }

    #[test]
    fn shapes_and_bad_batches() {
        let model = Dssm::new(config(SequenceItems::Id, 0.1), 3, &Device::Cpu).unwrap();
        let (vectors, tokens) = model.sequence_items(&items(&model), Mode::Eval).unwrap();
        assert_eq!(
            (vectors.dims(), tokens.dims()),
            (&[ITEMS, 8][..], &[ITEMS + 1, 8][..])
        );
        let pad: Vec<f32> = tokens.get(0).unwrap().to_vec1().unwrap();
        assert!(pad.iter().all(|&x| x == 0.0));
        let users = users(&model, 2);
        let ok = model.encode_sequences(&tokens, &[1, 2, 3, 4], 2, Some(&users), Mode::Eval);
        assert_eq!(ok.unwrap().dims(), &[4, 8]);
        for (ids, rows) in [(&[1u32, 2, 3][..], 2), (&[1; 12][..], 2), (&[][..], 0)] {
            assert!(
                model
                    .encode_sequences(&tokens, ids, rows, None, Mode::Eval)
                    .is_err()
            );
        }
        // Dropout changes training outputs, deterministically per seed.
        let ids = [0, 1, 2, 3, 4];
        let t1 = outputs(&model, &ids, 1, Mode::Train { seed: 1 });
        assert_eq!(t1, outputs(&model, &ids, 1, Mode::Train { seed: 1 }));
        assert_ne!(t1, outputs(&model, &ids, 1, Mode::Eval));
        let plain = Dssm::new(
            ModelConfig {
                sequence: None,
                ..config(SequenceItems::Id, 0.0)
            },
            3,
            &Device::Cpu,
        )
        .unwrap();
        assert!(plain.sequence_items(&items(&plain), Mode::Eval).is_err());
    }

    #[test]
    fn gradients_match_finite_differences() {
        // f64, so the Candle-op path (additive masks) is checked against central differences.
        let device = Device::Cpu;
        let model =
            Dssm::new_with_dtype(config(SequenceItems::Id, 0.0), 5, &device, DType::F64).unwrap();
        let ids = [0u32, 0, 3, 1, 2, 0, 5, 6, 2, 4];
        let weights: Vec<f64> = (0..80)
            .map(|i| ((i * 37) % 11) as f64 / 11.0 - 0.5)
            .collect();
        let weights = Tensor::from_vec(weights, (10, 8), &device).unwrap();
        let loss = || {
            let (_, tokens) = model.sequence_items(&items(&model), Mode::Eval).unwrap();
            let out = model
                .encode_sequences(&tokens, &ids, 2, Some(&users(&model, 2)), Mode::Eval)
                .unwrap();
            (out * &weights).unwrap().sum_all().unwrap()
        };
        let grads = loss().backward().unwrap();
        let checked = [
            "sequence.block.0.qkv.weight",
            "sequence.block.1.ffn_in.weight",
            "sequence.position",
            "sequence.input.weight",
            "item.embedding",
        ];
        for name in checked {
            let (_, var) = model.named_vars().iter().find(|(n, _)| n == name).unwrap();
            let analytic: Vec<f64> = grads
                .get(var)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let original = var.as_tensor().copy().unwrap();
            let values: Vec<f64> = original.flatten_all().unwrap().to_vec1().unwrap();
            for k in [0, values.len() / 2, values.len() - 1] {
                let at = |delta: f64| {
                    let mut v = values.clone();
                    v[k] += delta;
                    var.set(&Tensor::from_vec(v, original.dims(), &device).unwrap())
                        .unwrap();
                    loss().to_scalar::<f64>().unwrap()
                };
                let numeric = (at(1e-5) - at(-1e-5)) / 2e-5;
                var.set(&original).unwrap();
                assert!(
                    (numeric - analytic[k]).abs() < 1e-5 * (1.0 + numeric.abs()),
                    "{name}[{k}]: {numeric} vs {}",
                    analytic[k]
                );
            }
        }
    }

    #[test]
    fn the_fused_masked_softmax_matches_additive_masks_forward_and_backward() {
        let device = Device::Cpu;
        let shape = Shape {
            rows: 2,
            len: 4,
            dim: 4,
            heads: 2,
        };
        let ids = Arc::new(vec![0u32, 0, 3, 1, 2, 5, 6, 2]);
        let values: Vec<f32> = (0..64)
            .map(|i| ((i * 29) % 13) as f32 / 4.0 - 1.5)
            .collect();
        let x = Var::from_vec(values, (2, 2, 4, 4), &device).unwrap();
        let w = Tensor::from_vec(
            (0..64).map(|i| (i % 7) as f32).collect::<Vec<_>>(),
            (2, 2, 4, 4),
            &device,
        )
        .unwrap();
        let fused = masked_softmax(&x, &ids, shape).unwrap();
        let (causal, padding) = attention_masks(&ids, shape, DType::F32, &device).unwrap();
        let plain = softmax_last_dim(
            &x.broadcast_add(&causal)
                .unwrap()
                .broadcast_add(&padding)
                .unwrap(),
        )
        .unwrap();
        let f: Vec<f32> = fused.flatten_all().unwrap().to_vec1().unwrap();
        let p: Vec<f32> = plain.flatten_all().unwrap().to_vec1().unwrap();
        // Rows of padding queries (sequence 0, queries 0 and 1) are zero in the fused op.
        for (r, (a, b)) in f.chunks(4).zip(p.chunks(4)).enumerate() {
            let padding_query = r / 4 < 2 && r % 4 < 2;
            if padding_query {
                assert!(a.iter().all(|&v| v == 0.0), "row {r}: {a:?}");
            } else {
                assert!(
                    a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6),
                    "row {r}: {a:?} vs {b:?}"
                );
            }
        }
        let valid_rows: Vec<f32> = (0..16)
            .map(|r| if r / 4 < 2 && r % 4 < 2 { 0.0 } else { 1.0 })
            .collect();
        let keep = Tensor::from_vec(valid_rows, (2, 2, 4, 1), &device).unwrap();
        let gf = (fused * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gp = (plain.broadcast_mul(&keep).unwrap() * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let a: Vec<f32> = gf
            .get(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let b: Vec<f32> = gp
            .get(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(
            a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-5),
            "{a:?} vs {b:?}"
        );
    }
}
