//! Fused CPU kernels (bias + activation + dropout, binary cross-entropy) and their portable fallbacks.
//!
//! Candle's per-op overhead dominates small models on CPU, so the hot elementwise chains are single
//! custom ops there, each with a hand-written backward. On other devices (or other dtypes) the same
//! maths runs as ordinary Candle ops; a unit test checks that both paths agree.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};

use crate::config::{Activation, LEAKY_RELU_SLOPE};

/// Elementwise function applied after the bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Act {
    Identity,
    Relu,
    LeakyRelu,
    Tanh,
    Gelu,
    Sigmoid,
}

impl From<Activation> for Act {
    fn from(a: Activation) -> Self {
        match a {
            Activation::Relu => Act::Relu,
            Activation::LeakyRelu => Act::LeakyRelu,
            Activation::Tanh => Act::Tanh,
            Activation::Gelu => Act::Gelu,
        }
    }
}

const GELU_K: f64 = 0.797_884_560_802_865_4; // sqrt(2 / pi)
const GELU_C: f64 = 0.044_715;

macro_rules! act_impl {
    ($t:ty, $fwd:ident, $bwd:ident) => {
        #[inline(always)]
        pub(crate) fn $fwd(act: Act, z: $t) -> $t {
            match act {
                Act::Identity => z,
                Act::Relu => z.max(0.0),
                Act::LeakyRelu => {
                    if z > 0.0 {
                        z
                    } else {
                        z * LEAKY_RELU_SLOPE as $t
                    }
                }
                Act::Tanh => z.tanh(),
                Act::Gelu => {
                    0.5 * z * (1.0 + (GELU_K as $t * (z + GELU_C as $t * z * z * z)).tanh())
                }
                Act::Sigmoid => 1.0 / (1.0 + (-z).exp()),
            }
        }

        /// Derivative of the activation at `z`.
        #[inline(always)]
        pub(crate) fn $bwd(act: Act, z: $t) -> $t {
            match act {
                Act::Identity => 1.0,
                Act::Relu => {
                    if z > 0.0 {
                        1.0
                    } else {
                        0.0
                    }
                }
                Act::LeakyRelu => {
                    if z > 0.0 {
                        1.0
                    } else {
                        LEAKY_RELU_SLOPE as $t
                    }
                }
                Act::Tanh => {
                    let t = z.tanh();
                    1.0 - t * t
                }
                Act::Gelu => {
                    let k = GELU_K as $t;
                    let c = GELU_C as $t;
                    let t = (k * (z + c * z * z * z)).tanh();
                    0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * k * (1.0 + 3.0 * c * z * z)
                }
                Act::Sigmoid => {
                    let s = 1.0 / (1.0 + (-z).exp());
                    s * (1.0 - s)
                }
            }
        }
    };
}
act_impl!(f32, act_f32, dact_f32);
act_impl!(f64, act_f64, dact_f64);

pub(crate) fn contiguous_slice<'a, T: candle_core::WithDType>(
    s: &'a CpuStorage,
    l: &Layout,
) -> candle_core::Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<T>()?[a..b]),
        None => candle_core::bail!("fused op needs a contiguous input"),
    }
}

/// `act(x + bias) * mask`, with `x: [N, H]`, `bias: [H]`, `mask: [N * H]` (optional).
pub(crate) struct BiasAct {
    pub act: Act,
    pub mask: Option<Arc<Vec<f32>>>,
}

/// Calls `$body` with `$act_var` bound to a compile-time-constant activation, so the per-element
/// `match` in the activation functions folds away.
macro_rules! with_const_act {
    ($act:expr, $body:ident, $($args:tt)*) => {
        match $act {
            Act::Identity => $body!(Act::Identity, $($args)*),
            Act::Relu => $body!(Act::Relu, $($args)*),
            Act::LeakyRelu => $body!(Act::LeakyRelu, $($args)*),
            Act::Tanh => $body!(Act::Tanh, $($args)*),
            Act::Gelu => $body!(Act::Gelu, $($args)*),
            Act::Sigmoid => $body!(Act::Sigmoid, $($args)*),
        }
    };
}

macro_rules! bias_act_fwd {
    ($t:ty, $f:ident, $self:ident, $x:ident, $b:ident, $n_cols:ident) => {
        with_const_act!(
            $self.act,
            bias_act_fwd_const,
            $t,
            $f,
            $self,
            $x,
            $b,
            $n_cols
        )
    };
}

macro_rules! bias_act_fwd_const {
    ($act:expr, $t:ty, $f:ident, $self:ident, $x:ident, $b:ident, $n_cols:ident) => {{
        let mut out: Vec<$t> = Vec::with_capacity($x.len());
        match &$self.mask {
            None => {
                for row in $x.chunks_exact($n_cols) {
                    out.extend(row.iter().zip($b).map(|(&x, &b)| $f($act, x + b)));
                }
            }
            Some(mask) => {
                for (row, m) in $x.chunks_exact($n_cols).zip(mask.chunks_exact($n_cols)) {
                    out.extend(
                        row.iter()
                            .zip($b)
                            .zip(m)
                            .map(|((&x, &b), &m)| $f($act, x + b) * m as $t),
                    );
                }
            }
        }
        out
    }};
}

impl CustomOp2 for BiasAct {
    fn name(&self) -> &'static str {
        "dssm-bias-act"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let n_cols = l2.shape().elem_count();
        if l1.shape().dims().last() != Some(&n_cols) {
            candle_core::bail!(
                "bias-act: bias {:?} does not match input {:?}",
                l2.shape(),
                l1.shape()
            );
        }
        let storage = match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                let (x, b) = (
                    contiguous_slice::<f32>(s1, l1)?,
                    contiguous_slice::<f32>(s2, l2)?,
                );
                CpuStorage::F32(bias_act_fwd!(f32, act_f32, self, x, b, n_cols))
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                let (x, b) = (
                    contiguous_slice::<f64>(s1, l1)?,
                    contiguous_slice::<f64>(s2, l2)?,
                );
                CpuStorage::F64(bias_act_fwd!(f64, act_f64, self, x, b, n_cols))
            }
            _ => candle_core::bail!("bias-act: needs f32 or f64 inputs of one dtype"),
        };
        Ok((storage, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let grad_z = x.apply_op3_no_bwd(
            bias,
            &grad,
            &BiasActBackward {
                act: self.act,
                mask: self.mask.clone(),
            },
        )?;
        let grad_bias = grad_z.apply_op1_no_bwd(&ColumnSum)?;
        Ok((Some(grad_z), Some(grad_bias)))
    }
}

/// Sum over the rows of a contiguous `[N, H]` tensor, `[H]` (Candle's `sum(0)` is slow on CPU).
struct ColumnSum;

impl candle_core::CustomOp1 for ColumnSum {
    fn name(&self) -> &'static str {
        "dssm-column-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = l.shape().dims();
        let n_cols = dims.last().copied().unwrap_or(1).max(1);
        fn sum<T: Copy + std::ops::AddAssign + Default>(x: &[T], n_cols: usize) -> Vec<T> {
            let mut acc = vec![T::default(); n_cols];
            for row in x.chunks_exact(n_cols) {
                for (a, &v) in acc.iter_mut().zip(row) {
                    *a += v;
                }
            }
            acc
        }
        let storage = match s {
            CpuStorage::F32(_) => CpuStorage::F32(sum(contiguous_slice::<f32>(s, l)?, n_cols)),
            CpuStorage::F64(_) => CpuStorage::F64(sum(contiguous_slice::<f64>(s, l)?, n_cols)),
            _ => candle_core::bail!("column sum: needs f32 or f64"),
        };
        Ok((storage, Shape::from(n_cols)))
    }
}

/// Gradient of [`BiasAct`] with respect to its pre-activation input: `grad * mask * act'(x + bias)`.
struct BiasActBackward {
    act: Act,
    mask: Option<Arc<Vec<f32>>>,
}

macro_rules! bias_act_bwd {
    ($t:ty, $df:ident, $self:ident, $x:ident, $b:ident, $g:ident, $n_cols:ident) => {
        with_const_act!(
            $self.act,
            bias_act_bwd_const,
            $t,
            $df,
            $self,
            $x,
            $b,
            $g,
            $n_cols
        )
    };
}

macro_rules! bias_act_bwd_const {
    ($act:expr, $t:ty, $df:ident, $self:ident, $x:ident, $b:ident, $g:ident, $n_cols:ident) => {{
        let mut out: Vec<$t> = Vec::with_capacity($x.len());
        match &$self.mask {
            None => {
                for (row, grow) in $x.chunks_exact($n_cols).zip($g.chunks_exact($n_cols)) {
                    out.extend(
                        row.iter()
                            .zip($b)
                            .zip(grow)
                            .map(|((&x, &b), &g)| g * $df($act, x + b)),
                    );
                }
            }
            Some(mask) => {
                for ((row, grow), m) in $x
                    .chunks_exact($n_cols)
                    .zip($g.chunks_exact($n_cols))
                    .zip(mask.chunks_exact($n_cols))
                {
                    out.extend(
                        row.iter()
                            .zip($b)
                            .zip(grow)
                            .zip(m)
                            .map(|(((&x, &b), &g), &m)| g * m as $t * $df($act, x + b)),
                    );
                }
            }
        }
        out
    }};
}

impl CustomOp3 for BiasActBackward {
    fn name(&self) -> &'static str {
        "dssm-bias-act-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let n_cols = l2.shape().elem_count();
        let storage = match (s1, s2, s3) {
            (CpuStorage::F32(_), CpuStorage::F32(_), CpuStorage::F32(_)) => {
                let x = contiguous_slice::<f32>(s1, l1)?;
                let b = contiguous_slice::<f32>(s2, l2)?;
                let g = contiguous_slice::<f32>(s3, l3)?;
                CpuStorage::F32(bias_act_bwd!(f32, dact_f32, self, x, b, g, n_cols))
            }
            (CpuStorage::F64(_), CpuStorage::F64(_), CpuStorage::F64(_)) => {
                let x = contiguous_slice::<f64>(s1, l1)?;
                let b = contiguous_slice::<f64>(s2, l2)?;
                let g = contiguous_slice::<f64>(s3, l3)?;
                CpuStorage::F64(bias_act_bwd!(f64, dact_f64, self, x, b, g, n_cols))
            }
            _ => candle_core::bail!("bias-act backward: needs f32 or f64 inputs of one dtype"),
        };
        Ok((storage, l1.shape().clone()))
    }
}

/// Whether the fused CPU kernels can run on `t`.
pub(crate) fn fusable(t: &Tensor) -> bool {
    t.device().is_cpu() && matches!(t.dtype(), DType::F32 | DType::F64)
}

/// `act(x + bias) * mask` for `x: [N, H]`; fused on CPU when `fused`, portable Candle ops otherwise.
pub(crate) fn bias_act(
    x: &Tensor,
    bias: &Tensor,
    act: Act,
    mask: Option<&Arc<Vec<f32>>>,
    fused: bool,
) -> candle_core::Result<Tensor> {
    if fused && fusable(x) {
        let x = x.contiguous()?;
        return x.apply_op2(
            bias,
            BiasAct {
                act,
                mask: mask.cloned(),
            },
        );
    }
    let z = x.broadcast_add(bias)?;
    let y = match act {
        Act::Identity => z,
        Act::Relu => z.relu()?,
        Act::LeakyRelu => candle_nn::ops::leaky_relu(&z, LEAKY_RELU_SLOPE)?,
        Act::Tanh => z.tanh()?,
        Act::Gelu => z.gelu()?,
        Act::Sigmoid => candle_nn::ops::sigmoid(&z)?,
    };
    match mask {
        None => Ok(y),
        Some(m) => {
            let m = Tensor::from_slice(m.as_slice(), y.shape(), y.device())?.to_dtype(y.dtype())?;
            y.mul(&m)
        }
    }
}

/// Mean binary cross-entropy of `logits` against `targets` (both `[N]`), numerically stable:
/// `max(x, 0) - x * y + ln(1 + exp(-|x|))` per element, so logits of +/-100 give finite, exact losses.
///
/// `targets` is converted to the dtype of `logits`. On CPU (f32/f64) this is one fused op with a fused
/// backward (`(sigmoid(x) - y) / N`); elsewhere it is built from Candle ops.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let logits = Tensor::new(&[100f32, -100.0, 0.0], &Device::Cpu)?;
/// let targets = Tensor::new(&[1f32, 1.0, 0.0], &Device::Cpu)?;
/// let loss = dssm_model::bce_with_logits(&logits, &targets)?.to_scalar::<f32>()?;
/// assert!((loss - (100.0 + std::f32::consts::LN_2) / 3.0).abs() < 1e-4);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn bce_with_logits(logits: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
    let targets = targets.to_dtype(logits.dtype())?;
    if logits.shape() != targets.shape() {
        candle_core::bail!(
            "bce_with_logits: logits {:?} and targets {:?} differ in shape",
            logits.shape(),
            targets.shape()
        );
    }
    if fusable(logits) {
        let logits = logits.contiguous()?;
        let targets = targets.contiguous()?;
        return logits.apply_op2(&targets, Bce);
    }
    bce_portable(logits, &targets)
}

/// [`bce_with_logits`] from plain Candle ops (any device).
pub(crate) fn bce_portable(logits: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
    let targets = targets.to_dtype(logits.dtype())?;
    let per_example = ((logits.relu()? - (logits * &targets)?)?
        + ((logits.abs()?.neg()?.exp()? + 1.0)?.log()?))?;
    per_example.mean_all()
}

struct Bce;

impl CustomOp2 for Bce {
    fn name(&self) -> &'static str {
        "dssm-bce-with-logits"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let n = l1.shape().elem_count().max(1) as f64;
        let storage = match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                let (x, y) = (
                    contiguous_slice::<f32>(s1, l1)?,
                    contiguous_slice::<f32>(s2, l2)?,
                );
                let sum: f64 = x
                    .iter()
                    .zip(y)
                    .map(|(&x, &y)| {
                        let (x, y) = (x as f64, y as f64);
                        x.max(0.0) - x * y + (-x.abs()).exp().ln_1p()
                    })
                    .sum();
                CpuStorage::F32(vec![(sum / n) as f32])
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                let (x, y) = (
                    contiguous_slice::<f64>(s1, l1)?,
                    contiguous_slice::<f64>(s2, l2)?,
                );
                let sum: f64 = x
                    .iter()
                    .zip(y)
                    .map(|(&x, &y)| x.max(0.0) - x * y + (-x.abs()).exp().ln_1p())
                    .sum();
                CpuStorage::F64(vec![sum / n])
            }
            _ => candle_core::bail!("bce: needs f32 or f64 inputs of one dtype"),
        };
        Ok((storage, Shape::from(())))
    }

    fn bwd(
        &self,
        x: &Tensor,
        y: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        Ok((Some(x.apply_op3_no_bwd(y, &grad, &BceBackward)?), None))
    }
}

/// `(sigmoid(x) - y) * grad / N`.
struct BceBackward;

impl CustomOp3 for BceBackward {
    fn name(&self) -> &'static str {
        "dssm-bce-with-logits-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let n = l1.shape().elem_count().max(1) as f64;
        let storage = match (s1, s2, s3) {
            (CpuStorage::F32(_), CpuStorage::F32(_), CpuStorage::F32(_)) => {
                let x = contiguous_slice::<f32>(s1, l1)?;
                let y = contiguous_slice::<f32>(s2, l2)?;
                let g = contiguous_slice::<f32>(s3, l3)?[0] / n as f32;
                CpuStorage::F32(
                    x.iter()
                        .zip(y)
                        .map(|(&x, &y)| (1.0 / (1.0 + (-x).exp()) - y) * g)
                        .collect(),
                )
            }
            (CpuStorage::F64(_), CpuStorage::F64(_), CpuStorage::F64(_)) => {
                let x = contiguous_slice::<f64>(s1, l1)?;
                let y = contiguous_slice::<f64>(s2, l2)?;
                let g = contiguous_slice::<f64>(s3, l3)?[0] / n;
                CpuStorage::F64(
                    x.iter()
                        .zip(y)
                        .map(|(&x, &y)| (1.0 / (1.0 + (-x).exp()) - y) * g)
                        .collect(),
                )
            }
            _ => candle_core::bail!("bce backward: needs f32 or f64 inputs of one dtype"),
        };
        Ok((storage, l1.shape().clone()))
    }
}
