//! Optimizers with saveable state (Adam, AdamW, SGD with momentum, Adagrad) and the learning-rate
//! schedule (step decay plus linear warm-up).
//!
//! candle-nn's AdamW keeps its moments private, so a resumed run could not continue exactly; these
//! optimizers keep their state in host buffers, update each variable on the host and write it back
//! with one copy. For the sizes of this model (well under a million parameters) that costs little
//! and makes every step bit-reproducible and resumable.
//!
//! ```
//! use candle_core::{Device, Tensor, Var};
//! use dssm_trainer::config::{OptimizerConfig, OptimizerKind};
//! use dssm_trainer::optim::Optimizer;
//! let w = Var::new(&[1.0f32, -2.0], &Device::Cpu).unwrap();
//! let config = OptimizerConfig { kind: OptimizerKind::Sgd, lr: 0.1, ..Default::default() };
//! let mut optimizer = Optimizer::new(&config, vec![("w".to_string(), w.clone())]);
//! // loss = sum(w^2): gradient 2w.
//! let loss = w.as_tensor().sqr().unwrap().sum_all().unwrap();
//! optimizer.step(&loss.backward().unwrap(), 0.1).unwrap();
//! assert_eq!(w.as_tensor().to_vec1::<f32>().unwrap(), vec![0.8, -1.6]);
//! ```

use std::collections::HashMap;
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::config::{OptimizerConfig, OptimizerKind, ScheduleConfig};

/// One optimized variable and its state buffers.
#[derive(Debug)]
struct Param {
    name: String,
    var: Var,
    /// Adam: first moment; SGD: momentum buffer; Adagrad: sum of squared gradients.
    first: Vec<f32>,
    /// Adam: second moment; unused otherwise.
    second: Vec<f32>,
}

/// An optimizer over named variables; see the module docs.
#[derive(Debug)]
pub struct Optimizer {
    config: OptimizerConfig,
    params: Vec<Param>,
    steps: u64,
}

/// Values per parallel chunk of [`Optimizer::step_flat`].
const FLAT_CHUNK: usize = 16 * 1024;

/// One step's update of a variable, the same for the Candle and the flat path.
struct UpdateRule {
    kind: OptimizerKind,
    lr: f32,
    weight_decay: f32,
    momentum: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    /// Adam's bias corrections `1 - beta1^t` and `sqrt(1 - beta2^t)`.
    bias1: f32,
    bias2_sqrt: f32,
}

impl UpdateRule {
    fn new(c: &OptimizerConfig, steps: u64, lr: f64) -> Self {
        let t = steps as i32;
        UpdateRule {
            kind: c.kind,
            lr: lr as f32,
            weight_decay: c.weight_decay as f32,
            momentum: c.momentum as f32,
            beta1: c.beta1 as f32,
            beta2: c.beta2 as f32,
            eps: c.eps as f32,
            bias1: (1.0 - c.beta1.powi(t)) as f32,
            bias2_sqrt: ((1.0 - c.beta2.powi(t)) as f32).sqrt(),
        }
    }

    /// [`UpdateRule::apply`], compiled for AVX2 + FMA when the CPU has them.
    fn apply_fast(&self, theta: &mut [f32], grad: &[f32], first: &mut [f32], second: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx2,fma")]
            unsafe fn wide(
                rule: &UpdateRule,
                theta: &mut [f32],
                grad: &[f32],
                first: &mut [f32],
                second: &mut [f32],
            ) {
                rule.apply(theta, grad, first, second)
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: the CPU has the features `wide` was compiled for.
                return unsafe { wide(self, theta, grad, first, second) };
            }
        }
        self.apply(theta, grad, first, second)
    }

    /// Updates `theta` from `grad` and the state buffers (`second` is empty unless Adam).
    #[inline(always)]
    fn apply(&self, theta: &mut [f32], grad: &[f32], first: &mut [f32], second: &mut [f32]) {
        let (lr, wd) = (self.lr, self.weight_decay);
        match self.kind {
            OptimizerKind::Adam | OptimizerKind::Adamw => {
                let decoupled = self.kind == OptimizerKind::Adamw;
                let (b1, b2, eps) = (self.beta1, self.beta2, self.eps);
                for (((t, &g), m), v) in theta.iter_mut().zip(grad).zip(first).zip(second) {
                    let g = if decoupled {
                        *t -= lr * wd * *t;
                        g
                    } else {
                        g + wd * *t
                    };
                    *m = b1 * *m + (1.0 - b1) * g;
                    *v = b2 * *v + (1.0 - b2) * g * g;
                    let m_hat = *m / self.bias1;
                    let v_hat_sqrt = v.sqrt() / self.bias2_sqrt;
                    *t -= lr * m_hat / (v_hat_sqrt + eps);
                }
            }
            OptimizerKind::Sgd => {
                for ((t, &g), buffer) in theta.iter_mut().zip(grad).zip(first) {
                    let g = g + wd * *t;
                    let update = if self.momentum > 0.0 {
                        *buffer = self.momentum * *buffer + g;
                        *buffer
                    } else {
                        g
                    };
                    *t -= lr * update;
                }
            }
            OptimizerKind::Adagrad => {
                for ((t, &g), sum) in theta.iter_mut().zip(grad).zip(first) {
                    let g = g + wd * *t;
                    *sum += g * g;
                    *t -= lr * g / (sum.sqrt() + self.eps);
                }
            }
        }
    }
}

/// The scalar part of the optimizer state (the buffers go to safetensors).
#[derive(Debug, Serialize, Deserialize)]
struct OptimizerMeta {
    kind: OptimizerKind,
    steps: u64,
    names: Vec<String>,
}

/// [`Optimizer::step_flat`] was given buffers that do not hold its variables.
#[derive(Debug, thiserror::Error)]
#[error(
    "flat optimizer step over {values} values and {grads} gradients; the variables hold {expected}"
)]
pub struct FlatLayoutError {
    /// Length of the values buffer.
    pub values: usize,
    /// Length of the gradient buffer.
    pub grads: usize,
    /// Values the optimizer's variables hold together.
    pub expected: usize,
}

/// Why optimizer state could not be saved or restored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OptimizerStateError {
    /// A file could not be read or written.
    #[error("optimizer state {path}: {message}")]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The saved state does not match these variables.
    #[error("optimizer state {path}: {message}")]
    Mismatch {
        /// The file.
        path: std::path::PathBuf,
        /// What differs.
        message: String,
    },
}

impl Optimizer {
    /// An optimizer over `params` (name, variable); the names key the saved state. Non-float
    /// variables are skipped.
    pub fn new(config: &OptimizerConfig, params: Vec<(String, Var)>) -> Self {
        let params = params
            .into_iter()
            .filter(|(_, var)| var.dtype().is_float())
            .map(|(name, var)| {
                let n = var.elem_count();
                let second = if matches!(config.kind, OptimizerKind::Adam | OptimizerKind::Adamw) {
                    vec![0.0; n]
                } else {
                    Vec::new()
                };
                Param {
                    name,
                    var,
                    first: vec![0.0; n],
                    second,
                }
            })
            .collect();
        Self {
            config: config.clone(),
            params,
            steps: 0,
        }
    }

    /// Optimizer steps taken so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Applies one update with learning rate `lr`. Variables without a gradient are left alone
    /// (their state does not decay).
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> candle_core::Result<()> {
        self.steps += 1;
        let rule = UpdateRule::new(&self.config, self.steps, lr);
        for param in &mut self.params {
            let Some(grad) = grads.get(param.var.as_tensor()) else {
                continue;
            };
            let grad = grad
                .flatten_all()?
                .to_dtype(candle_core::DType::F32)?
                .to_vec1::<f32>()?;
            let tensor = param.var.as_tensor();
            let mut theta = tensor
                .flatten_all()?
                .to_dtype(candle_core::DType::F32)?
                .to_vec1::<f32>()?;
            rule.apply_fast(&mut theta, &grad, &mut param.first, &mut param.second);
            let updated = Tensor::from_vec(theta, tensor.shape(), &Device::Cpu)?
                .to_dtype(tensor.dtype())?
                .to_device(tensor.device())?;
            param.var.set(&updated)?;
        }
        Ok(())
    }

    /// Applies one update to flat buffers: `values` holds every variable one after another in
    /// the order given to [`Optimizer::new`] (`dssm_model::engine::CpuEngine::params`), `grads`
    /// their gradients, laid out the same way. The variables themselves are not touched.
    pub fn step_flat(
        &mut self,
        values: &mut [f32],
        grads: &[f32],
        lr: f64,
    ) -> Result<(), FlatLayoutError> {
        let expected: usize = self.params.iter().map(|p| p.first.len()).sum();
        if values.len() != expected || grads.len() != expected {
            return Err(FlatLayoutError {
                values: values.len(),
                grads: grads.len(),
                expected,
            });
        }
        self.steps += 1;
        let rule = UpdateRule::new(&self.config, self.steps, lr);
        let mut offset = 0;
        for param in &mut self.params {
            let n = param.first.len();
            let (theta, grad) = (&mut values[offset..offset + n], &grads[offset..offset + n]);
            offset += n;
            // Elementwise, so chunks in parallel give the same bits as one pass.
            let chunks = theta
                .par_chunks_mut(FLAT_CHUNK)
                .zip(grad.par_chunks(FLAT_CHUNK))
                .zip(param.first.par_chunks_mut(FLAT_CHUNK));
            if param.second.is_empty() {
                chunks.for_each(|((t, g), f)| rule.apply_fast(t, g, f, &mut []));
            } else {
                chunks
                    .zip(param.second.par_chunks_mut(FLAT_CHUNK))
                    .for_each(|(((t, g), f), s)| rule.apply_fast(t, g, f, s));
            }
        }
        Ok(())
    }

    /// Writes the state to `dir/optimizer.safetensors` and `dir/optimizer.json`.
    pub fn save(&self, dir: &Path) -> Result<(), OptimizerStateError> {
        let mut tensors = HashMap::new();
        for param in &self.params {
            let file_error = |e: candle_core::Error| OptimizerStateError::File {
                path: dir.join("optimizer.safetensors"),
                message: e.to_string(),
            };
            tensors.insert(
                format!("{}.first", param.name),
                Tensor::from_slice(&param.first, param.first.len(), &Device::Cpu)
                    .map_err(file_error)?,
            );
            if !param.second.is_empty() {
                tensors.insert(
                    format!("{}.second", param.name),
                    Tensor::from_slice(&param.second, param.second.len(), &Device::Cpu)
                        .map_err(file_error)?,
                );
            }
        }
        let path = dir.join("optimizer.safetensors");
        candle_core::safetensors::save(&tensors, &path).map_err(|e| OptimizerStateError::File {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let meta = OptimizerMeta {
            kind: self.config.kind,
            steps: self.steps,
            names: self.params.iter().map(|p| p.name.clone()).collect(),
        };
        let path = dir.join("optimizer.json");
        let text = serde_json::to_string_pretty(&meta).unwrap_or_default();
        std::fs::write(&path, text).map_err(|e| OptimizerStateError::File {
            path,
            message: e.to_string(),
        })
    }

    /// Restores the state written by [`Optimizer::save`] for the same variables and kind.
    pub fn load(&mut self, dir: &Path) -> Result<(), OptimizerStateError> {
        let path = dir.join("optimizer.json");
        let text = std::fs::read_to_string(&path).map_err(|e| OptimizerStateError::File {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let meta: OptimizerMeta =
            serde_json::from_str(&text).map_err(|e| OptimizerStateError::File {
                path: path.clone(),
                message: e.to_string(),
            })?;
        if meta.kind != self.config.kind {
            return Err(OptimizerStateError::Mismatch {
                path,
                message: format!(
                    "saved by {:?}, this run uses {:?}",
                    meta.kind, self.config.kind
                ),
            });
        }
        let names: Vec<&str> = self.params.iter().map(|p| p.name.as_str()).collect();
        if meta.names != names {
            return Err(OptimizerStateError::Mismatch {
                path,
                message: format!("saved variables {:?}, model has {:?}", meta.names, names),
            });
        }
        let path = dir.join("optimizer.safetensors");
        let tensors = candle_core::safetensors::load(&path, &Device::Cpu).map_err(|e| {
            OptimizerStateError::File {
                path: path.clone(),
                message: e.to_string(),
            }
        })?;
        for param in &mut self.params {
            for (suffix, buffer) in [("first", &mut param.first), ("second", &mut param.second)] {
                if buffer.is_empty() {
                    continue;
                }
                let key = format!("{}.{suffix}", param.name);
                let values = tensors
                    .get(&key)
                    .and_then(|t| t.to_vec1::<f32>().ok())
                    .filter(|v| v.len() == buffer.len())
                    .ok_or_else(|| OptimizerStateError::Mismatch {
                        path: path.clone(),
                        message: format!("missing or mis-sized buffer {key}"),
                    })?;
                *buffer = values;
            }
        }
        self.steps = meta.steps;
        Ok(())
    }
}

/// The learning rate at global optimizer step `step` (0-based) in epoch `epoch` (0-based):
/// `base * gamma^(epoch / step_size)` (no decay when `step_size` is 0), times
/// `min(1, (step + 1) / warmup_steps)` during warm-up.
///
/// ```
/// use dssm_trainer::config::ScheduleConfig;
/// use dssm_trainer::optim::learning_rate;
/// let schedule = ScheduleConfig { step_size: 2, gamma: 0.5, warmup_steps: 4 };
/// assert_eq!(learning_rate(&schedule, 1.0, 0, 0), 0.25);
/// assert_eq!(learning_rate(&schedule, 1.0, 1, 10), 1.0);
/// assert_eq!(learning_rate(&schedule, 1.0, 4, 100), 0.25);
/// ```
pub fn learning_rate(schedule: &ScheduleConfig, base: f64, epoch: usize, step: u64) -> f64 {
    let decay = epoch
        .checked_div(schedule.step_size)
        .map_or(1.0, |periods| schedule.gamma.powi(periods as i32));
    let warmup = if schedule.warmup_steps == 0 {
        1.0
    } else {
        ((step + 1) as f64 / schedule.warmup_steps as f64).min(1.0)
    };
    base * decay * warmup
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One step on loss = sum(w * g_fixed) so the gradient is exactly `g_fixed`.
    fn one_step(config: &OptimizerConfig, w0: &[f32], g: &[f32], steps: usize) -> Vec<f32> {
        let w = Var::new(w0, &Device::Cpu).unwrap();
        let mut optimizer = Optimizer::new(config, vec![("w".to_string(), w.clone())]);
        let g = Tensor::new(g, &Device::Cpu).unwrap();
        for _ in 0..steps {
            let loss = (w.as_tensor() * &g).unwrap().sum_all().unwrap();
            optimizer
                .step(&loss.backward().unwrap(), config.lr)
                .unwrap();
        }
        w.as_tensor().to_vec1::<f32>().unwrap()
    }

    fn assert_close(a: &[f32], b: &[f32]) {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-5, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn adam_first_step_moves_by_lr_times_sign() {
        // m_hat = g, v_hat = g^2, so the step is lr * g / (|g| + eps) ~ lr * sign(g).
        let config = OptimizerConfig {
            kind: OptimizerKind::Adam,
            lr: 0.1,
            ..Default::default()
        };
        let w = one_step(&config, &[1.0, 1.0], &[0.5, -2.0], 1);
        assert_close(&w, &[0.9, 1.1]);
    }

    /// The textbook update, in f64, of `w0` under gradients `grad(w, step)`: Adam with the L2
    /// term added to the gradient, AdamW with the decay decoupled, SGD with momentum and Adagrad
    /// with the L2 term added to the gradient (PyTorch's definitions).
    fn reference(
        config: &OptimizerConfig,
        w0: &[f64],
        grad: &dyn Fn(&[f64], usize) -> Vec<f64>,
        steps: usize,
    ) -> Vec<f64> {
        let (lr, wd) = (config.lr, config.weight_decay);
        let mut w = w0.to_vec();
        let mut first = vec![0.0; w.len()];
        let mut second = vec![0.0; w.len()];
        for step in 0..steps {
            let g = grad(&w, step);
            let t = (step + 1) as i32;
            for i in 0..w.len() {
                let mut gi = g[i];
                match config.kind {
                    OptimizerKind::Adamw => w[i] -= lr * wd * w[i],
                    _ => gi += wd * w[i],
                }
                match config.kind {
                    OptimizerKind::Adam | OptimizerKind::Adamw => {
                        first[i] = config.beta1 * first[i] + (1.0 - config.beta1) * gi;
                        second[i] = config.beta2 * second[i] + (1.0 - config.beta2) * gi * gi;
                        let m_hat = first[i] / (1.0 - config.beta1.powi(t));
                        let v_hat = second[i] / (1.0 - config.beta2.powi(t));
                        w[i] -= lr * m_hat / (v_hat.sqrt() + config.eps);
                    }
                    OptimizerKind::Sgd => {
                        first[i] = config.momentum * first[i] + gi;
                        w[i] -= lr * first[i];
                    }
                    OptimizerKind::Adagrad => {
                        first[i] += gi * gi;
                        w[i] -= lr * gi / (first[i].sqrt() + config.eps);
                    }
                }
            }
        }
        w
    }

    #[test]
    fn every_kind_follows_the_reference_under_changing_gradients() {
        // loss_t = (t + 1) sum(c w^2) + sum(d w): the gradient 2 (t + 1) c w + d changes with the
        // weights and the step, so the moments' betas, the momentum and the L2 term all show in
        // the weights after 4 steps (a constant gradient hides betas: m_hat = g whatever beta1).
        let (c, d) = ([0.5f64, 2.0, 1.0], [0.3f64, -0.4, 0.0]);
        let grad = |w: &[f64], t: usize| -> Vec<f64> {
            (0..3)
                .map(|i| 2.0 * (t + 1) as f64 * c[i] * w[i] + d[i])
                .collect()
        };
        let w0 = [1.0f64, -0.5, 2.0];
        let ours = |config: &OptimizerConfig| -> Vec<f64> {
            let w = Var::new(&w0.map(|x| x as f32), &Device::Cpu).unwrap();
            let mut optimizer = Optimizer::new(config, vec![("w".to_string(), w.clone())]);
            let c = Tensor::new(&c.map(|x| x as f32), &Device::Cpu).unwrap();
            let d = Tensor::new(&d.map(|x| x as f32), &Device::Cpu).unwrap();
            for t in 0..4 {
                let quadratic = (w.as_tensor().sqr().unwrap() * &c).unwrap().sum_all();
                let linear = (w.as_tensor() * &d).unwrap().sum_all().unwrap();
                let loss = ((quadratic.unwrap() * (t + 1) as f64).unwrap() + linear).unwrap();
                optimizer
                    .step(&loss.backward().unwrap(), config.lr)
                    .unwrap();
            }
            let values = w.as_tensor().to_vec1::<f32>().unwrap();
            values.into_iter().map(f64::from).collect()
        };
        // Ten times the tolerance of the comparison (f32 against f64).
        let far = |a: &[f64], b: &[f64]| a.iter().zip(b).any(|(x, y)| (x - y).abs() > 1e-4);
        for kind in [
            OptimizerKind::Adam,
            OptimizerKind::Adamw,
            OptimizerKind::Sgd,
            OptimizerKind::Adagrad,
        ] {
            let config = OptimizerConfig {
                kind,
                lr: 0.05,
                weight_decay: 0.2,
                momentum: 0.8,
                beta1: 0.7,
                beta2: 0.9,
                ..Default::default()
            };
            let expected = reference(&config, &w0, &grad, 4);
            let got = ours(&config);
            for (x, y) in got.iter().zip(&expected) {
                assert!((x - y).abs() < 1e-5, "{kind:?}: {got:?} vs {expected:?}");
            }
            // The comparison sees each setting: without it the reference lands elsewhere.
            let without_decay = OptimizerConfig {
                weight_decay: 0.0,
                ..config.clone()
            };
            assert!(
                far(&expected, &reference(&without_decay, &w0, &grad, 4)),
                "{kind:?}"
            );
            let other = match kind {
                OptimizerKind::Sgd => OptimizerConfig {
                    momentum: 0.0,
                    ..config.clone()
                },
                OptimizerKind::Adagrad => continue,
                _ => OptimizerConfig {
                    beta1: 0.9,
                    ..config.clone()
                },
            };
            assert!(
                far(&expected, &reference(&other, &w0, &grad, 4)),
                "{kind:?}"
            );
            if matches!(kind, OptimizerKind::Adam | OptimizerKind::Adamw) {
                let beta2 = OptimizerConfig {
                    beta2: 0.999,
                    ..config.clone()
                };
                assert!(
                    far(&expected, &reference(&beta2, &w0, &grad, 4)),
                    "{kind:?}"
                );
            }
        }
    }

    #[test]
    fn sgd_momentum_two_steps() {
        // b1 = g = 1, w = 1 - 0.1 = 0.9; b2 = 0.9 * 1 + 1 = 1.9, w = 0.9 - 0.19 = 0.71.
        let config = OptimizerConfig {
            kind: OptimizerKind::Sgd,
            lr: 0.1,
            momentum: 0.9,
            ..Default::default()
        };
        assert_close(&one_step(&config, &[1.0], &[1.0], 2), &[0.71]);
        // With weight decay 0.5 and no momentum: g = 1 + 0.5 * 2 = 2, w = 2 - 0.2 = 1.8.
        let config = OptimizerConfig {
            kind: OptimizerKind::Sgd,
            lr: 0.1,
            weight_decay: 0.5,
            ..Default::default()
        };
        assert_close(&one_step(&config, &[2.0], &[1.0], 1), &[1.8]);
    }

    #[test]
    fn adagrad_two_steps() {
        // Step 1: sum = 4, w = 1 - 0.1 * 2 / 2 = 0.9. Step 2: sum = 8, w = 0.9 - 0.2 / sqrt 8.
        let config = OptimizerConfig {
            kind: OptimizerKind::Adagrad,
            lr: 0.1,
            eps: 1e-10,
            ..Default::default()
        };
        let expected = 0.9 - 0.2 / 8f32.sqrt();
        assert_close(&one_step(&config, &[1.0], &[2.0], 2), &[expected]);
    }

    #[test]
    fn save_and_load_continue_identically() {
        let config = OptimizerConfig {
            kind: OptimizerKind::Adam,
            lr: 0.05,
            ..Default::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let g = Tensor::new(&[0.3f32, -0.7], &Device::Cpu).unwrap();
        let run = |w: &Var, optimizer: &mut Optimizer, steps: usize| {
            for _ in 0..steps {
                let loss = (w.as_tensor().sqr().unwrap() * &g)
                    .unwrap()
                    .sum_all()
                    .unwrap();
                optimizer.step(&loss.backward().unwrap(), 0.05).unwrap();
            }
        };
        let w = Var::new(&[1.0f32, 2.0], &Device::Cpu).unwrap();
        let mut straight = Optimizer::new(&config, vec![("w".into(), w.clone())]);
        run(&w, &mut straight, 6);

        let w2 = Var::new(&[1.0f32, 2.0], &Device::Cpu).unwrap();
        let mut first = Optimizer::new(&config, vec![("w".into(), w2.clone())]);
        run(&w2, &mut first, 3);
        first.save(dir.path()).unwrap();
        let mut second = Optimizer::new(&config, vec![("w".into(), w2.clone())]);
        second.load(dir.path()).unwrap();
        assert_eq!(second.steps(), 3);
        run(&w2, &mut second, 3);
        assert_eq!(
            w.as_tensor().to_vec1::<f32>().unwrap(),
            w2.as_tensor().to_vec1::<f32>().unwrap()
        );

        let sgd = OptimizerConfig {
            kind: OptimizerKind::Sgd,
            ..config
        };
        let mut other = Optimizer::new(&sgd, vec![("w".into(), w2)]);
        assert!(other.load(dir.path()).is_err());
    }

    #[test]
    fn the_flat_step_updates_exactly_as_the_variable_step() {
        // Two variables, gradients that change with the weights and the step; every kind with
        // weight decay (and momentum for SGD). After 5 steps both paths hold the same bits.
        for kind in [
            OptimizerKind::Adam,
            OptimizerKind::Adamw,
            OptimizerKind::Sgd,
            OptimizerKind::Adagrad,
        ] {
            let config = OptimizerConfig {
                kind,
                lr: 0.05,
                weight_decay: 0.01,
                momentum: 0.9,
                beta1: 0.8,
                beta2: 0.95,
                ..Default::default()
            };
            let a = Var::new(&[1.0f32, -0.5, 2.0], &Device::Cpu).unwrap();
            let b = Var::new(&[0.3f32, -1.2], &Device::Cpu).unwrap();
            let vars = vec![("a".to_string(), a.clone()), ("b".to_string(), b.clone())];
            let mut by_var = Optimizer::new(&config, vars.clone());
            let mut flat_opt = Optimizer::new(&config, vars);
            let mut flat: Vec<f32> = [&a, &b]
                .iter()
                .flat_map(|v| v.as_tensor().to_vec1::<f32>().unwrap())
                .collect();
            for step in 0..5 {
                let s = step as f64 + 1.0;
                let loss = ((a.as_tensor().sqr().unwrap() * s)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    + (b.as_tensor() * (-0.7 * s)).unwrap().sum_all().unwrap())
                .unwrap();
                let grads = loss.backward().unwrap();
                let g: Vec<f32> = [&a, &b]
                    .iter()
                    .flat_map(|v| grads.get(v.as_tensor()).unwrap().to_vec1::<f32>().unwrap())
                    .collect();
                by_var.step(&grads, config.lr).unwrap();
                flat_opt.step_flat(&mut flat, &g, config.lr).unwrap();
            }
            let by_var_values: Vec<f32> = [&a, &b]
                .iter()
                .flat_map(|v| v.as_tensor().to_vec1::<f32>().unwrap())
                .collect();
            assert_eq!(flat, by_var_values, "{kind:?}");
            assert!(flat_opt.step_flat(&mut flat[..4], &[0.0; 4], 0.1).is_err());
        }
    }

    #[test]
    fn schedule_decay_and_warmup() {
        let none = ScheduleConfig::default();
        assert_eq!(learning_rate(&none, 0.01, 7, 1000), 0.01);
        let decay = ScheduleConfig {
            step_size: 3,
            gamma: 0.1,
            warmup_steps: 0,
        };
        assert_eq!(learning_rate(&decay, 1.0, 2, 0), 1.0);
        assert!((learning_rate(&decay, 1.0, 3, 0) - 0.1).abs() < 1e-12);
        assert!((learning_rate(&decay, 1.0, 6, 0) - 0.01).abs() < 1e-12);
        let warm = ScheduleConfig {
            warmup_steps: 10,
            ..ScheduleConfig::default()
        };
        assert!((learning_rate(&warm, 1.0, 0, 4) - 0.5).abs() < 1e-12);
        assert_eq!(learning_rate(&warm, 1.0, 0, 9), 1.0);
    }
}
