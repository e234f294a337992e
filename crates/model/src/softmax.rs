//! Row-wise softmax cross-entropy over a score matrix, the loss of in-batch and sampled softmax.
//!
//! The logits of a `[B, C]` score matrix pass through a scale (1 / temperature), a subtracted offset
//! (the log-Q correction) and a mask (accidental hits) before the softmax. As Candle ops that chain
//! is about ten passes over `B * C` values forward and as many backward; on CPU (f32) it is one op
//! here, rows in parallel, with the backward `scale * (softmax - onehot) / B` written in one pass.
//! Elsewhere the same maths runs as Candle ops; a unit test checks that both paths agree.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp1, CustomOp2, D, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

/// Mean softmax cross-entropy of the rows of `scores` `[B, C]`.
///
/// Row `i`'s logits are `scores[i, j] * scale - offsets[j]` (`offsets` `[C]`, one per column) or
/// `- offsets[i, j]` (`offsets` `[B, C]`); the entries `(i, j)` listed in `excluded` are left out of
/// row `i`'s softmax; the target of row `i` is column `targets[i]`, which must not be excluded.
///
/// ```
/// use candle_core::{Device, Tensor};
/// // One row, logits [1, 0] at scale 1, target column 0: -ln(e / (e + 1)).
/// let scores = Tensor::new(&[[1f32, 0.0]], &Device::Cpu)?;
/// let loss = dssm_model::softmax_cross_entropy(&scores, 1.0, None, &[], &[0])?;
/// let e = std::f32::consts::E;
/// assert!((loss.to_scalar::<f32>()? + (e / (e + 1.0)).ln()).abs() < 1e-6);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn softmax_cross_entropy(
    scores: &Tensor,
    scale: f64,
    offsets: Option<&Tensor>,
    excluded: &[(u32, u32)],
    targets: &[u32],
) -> candle_core::Result<Tensor> {
    let (rows, columns) = scores.dims2()?;
    if targets.len() != rows {
        candle_core::bail!(
            "softmax_cross_entropy: {} targets for {rows} rows",
            targets.len()
        );
    }
    if let Some(t) = targets.iter().find(|&&t| t as usize >= columns) {
        candle_core::bail!("softmax_cross_entropy: target column {t} of {columns} columns");
    }
    let per_entry = match offsets.map(|o| o.dims().to_vec()) {
        None => false,
        Some(d) if d == [columns] => false,
        Some(d) if d == [rows, columns] => true,
        Some(d) => candle_core::bail!(
            "softmax_cross_entropy: offsets {d:?} fit neither [{columns}] nor [{rows}, {columns}]"
        ),
    };
    if let Err(problem) = check_excluded(rows, columns, excluded, |i| targets[i]) {
        candle_core::bail!("softmax_cross_entropy: {problem}");
    }
    if scores.device().is_cpu() && scores.dtype() == DType::F32 {
        let offsets = match offsets {
            Some(o) => Some(o.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?),
            None => None,
        };
        let rows = SoftmaxRows::new(
            scale as f32,
            (offsets, per_entry),
            excluded,
            targets.to_vec(),
            columns,
        );
        return scores.contiguous()?.apply_op1(SoftmaxXent(Arc::new(rows)));
    }
    softmax_cross_entropy_unfused(scores, scale, offsets, excluded, targets)
}

/// [`softmax_cross_entropy`] from plain Candle ops (any device, any float dtype): the path off
/// CPU, and the baseline the fused kernel is tested and benchmarked against. Arguments are not
/// checked here.
pub fn softmax_cross_entropy_unfused(
    scores: &Tensor,
    scale: f64,
    offsets: Option<&Tensor>,
    excluded: &[(u32, u32)],
    targets: &[u32],
) -> candle_core::Result<Tensor> {
    let (rows, columns) = scores.dims2()?;
    let mut logits = (scores * scale)?;
    if let Some(o) = offsets {
        let o = o.to_dtype(logits.dtype())?;
        logits = if o.rank() == 1 {
            logits.broadcast_sub(&o.unsqueeze(0)?)?
        } else {
            (logits - o)?
        };
    }
    if !excluded.is_empty() {
        let mut mask = vec![0f32; rows * columns];
        for &(i, j) in excluded {
            mask[i as usize * columns + j as usize] = -1e9;
        }
        let mask = Tensor::from_vec(mask, (rows, columns), scores.device())?;
        logits = (logits + mask.to_dtype(scores.dtype())?)?;
    }
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let log_sum = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let log_probabilities = shifted.broadcast_sub(&log_sum)?;
    let targets = Tensor::from_slice(targets, (rows, 1), scores.device())?;
    log_probabilities.gather(&targets, 1)?.neg()?.mean_all()
}

/// Keeps only the target and the `keep` highest other logits of one softmax row: every other
/// finite entry of `logits` becomes `-inf` (left out of the softmax, as an excluded entry is).
/// Online hard negatives for in-batch softmax: the row's softmax then runs over its positive and
/// its `keep` hardest negatives. Ties go to the lower column; entries already `-inf` stay out and
/// do not count.
///
/// ```
/// let mut row = [0.5f32, 3.0, -1.0, 2.0, 1.0];
/// dssm_model::keep_hardest(&mut row, 0, 2);
/// assert_eq!(row, [0.5, 3.0, f32::NEG_INFINITY, 2.0, f32::NEG_INFINITY]);
/// ```
pub fn keep_hardest(logits: &mut [f32], target: usize, keep: usize) {
    let mut others: Vec<(f32, u32)> = logits
        .iter()
        .enumerate()
        .filter(|&(j, z)| j != target && *z > f32::NEG_INFINITY)
        .map(|(j, &z)| (z, j as u32))
        .collect();
    if others.len() <= keep {
        return;
    }
    // Hardest first: descending logit, then ascending column (a total order, so the cut is
    // deterministic).
    let order = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
    let dropped = if keep == 0 {
        &mut others[..]
    } else {
        others.select_nth_unstable_by(keep - 1, order).2
    };
    for &mut (_, j) in dropped {
        logits[j as usize] = f32::NEG_INFINITY;
    }
}

/// A batch's softmax rows: scale, offsets, excluded entries and targets (the CPU engine uses
/// them too).
pub(crate) struct SoftmaxRows {
    pub(crate) scale: f32,
    pub(crate) columns: usize,
    pub(crate) offsets: Option<Vec<f32>>,
    pub(crate) per_entry: bool,
    /// (row, column) pairs left out of the softmax, sorted.
    pub(crate) excluded: Vec<(u32, u32)>,
    pub(crate) targets: Vec<u32>,
    /// Per-row log-sum-exp of the forward pass, reused by the backward.
    pub(crate) log_sum_exp: Mutex<Vec<f32>>,
    /// Leave the target's logit without its offset (log-Q on the negatives only). Default false.
    pub(crate) uncorrected_target: bool,
    /// Keep only the target and this many highest other logits per row ([`keep_hardest`]).
    /// Default `None`: every column.
    pub(crate) keep_hardest: Option<usize>,
}

/// Checks that every excluded `(row, column)` entry lies in a `[rows x columns]` matrix and is
/// not its row's target (`target(row)`).
pub(crate) fn check_excluded(
    rows: usize,
    columns: usize,
    excluded: &[(u32, u32)],
    target: impl Fn(usize) -> u32,
) -> Result<(), String> {
    for &(i, j) in excluded {
        if i as usize >= rows || j as usize >= columns {
            return Err(format!("excluded entry ({i}, {j}) is outside"));
        }
        if target(i as usize) == j {
            return Err(format!("row {i} excludes its own target {j}"));
        }
    }
    Ok(())
}

impl SoftmaxRows {
    /// The rows of a `[targets.len() x columns]` score matrix: `offsets` per column (or per entry
    /// when the flag is set), `excluded` entries in any order (checked by [`check_excluded`]).
    pub(crate) fn new(
        scale: f32,
        (offsets, per_entry): (Option<Vec<f32>>, bool),
        excluded: &[(u32, u32)],
        targets: Vec<u32>,
        columns: usize,
    ) -> Self {
        let mut excluded = excluded.to_vec();
        excluded.sort_unstable();
        SoftmaxRows {
            scale,
            columns,
            offsets,
            per_entry,
            excluded,
            targets,
            log_sum_exp: Mutex::new(Vec::new()),
            uncorrected_target: false,
            keep_hardest: None,
        }
    }

    /// Row `i`'s logits into `z` (excluded entries at -inf).
    pub(crate) fn logits(&self, i: usize, scores: &[f32], z: &mut [f32]) {
        let c = self.columns;
        match (&self.offsets, self.per_entry) {
            (None, _) => z
                .iter_mut()
                .zip(scores)
                .for_each(|(z, &s)| *z = s * self.scale),
            (Some(o), false) => z
                .iter_mut()
                .zip(scores)
                .zip(o)
                .for_each(|((z, &s), &o)| *z = s * self.scale - o),
            (Some(o), true) => z
                .iter_mut()
                .zip(scores)
                .zip(&o[i * c..(i + 1) * c])
                .for_each(|((z, &s), &o)| *z = s * self.scale - o),
        }
        let from = self.excluded.partition_point(|&(r, _)| (r as usize) < i);
        for &(r, j) in &self.excluded[from..] {
            if r as usize != i {
                break;
            }
            z[j as usize] = f32::NEG_INFINITY;
        }
        let t = self.targets[i] as usize;
        if self.uncorrected_target {
            z[t] = scores[t] * self.scale;
        }
        if let Some(keep) = self.keep_hardest {
            keep_hardest(z, t, keep);
        }
    }
}

struct SoftmaxXent(Arc<SoftmaxRows>);

impl CustomOp1 for SoftmaxXent {
    fn name(&self) -> &'static str {
        "dssm-softmax-cross-entropy"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let inner = &self.0;
        let c = inner.columns;
        let scores = crate::ops::contiguous_slice::<f32>(s, l)?;
        let per_row: Vec<(f32, f64)> = scores
            .par_chunks(c)
            .enumerate()
            .map_init(
                || vec![0f32; c],
                |z, (i, row)| {
                    inner.logits(i, row, z);
                    let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let sum: f32 = z.iter().map(|&v| (v - max).exp()).sum();
                    let lse = max + sum.ln();
                    (lse, (lse - z[inner.targets[i] as usize]) as f64)
                },
            )
            .collect();
        let n = per_row.len().max(1) as f64;
        let loss = per_row.iter().map(|&(_, l)| l).sum::<f64>() / n;
        let lse = per_row.into_iter().map(|(lse, _)| lse).collect();
        *inner
            .log_sum_exp
            .lock()
            .map_err(|_| candle_core::Error::Msg("softmax: poisoned lock".into()))? = lse;
        Ok((CpuStorage::F32(vec![loss as f32]), Shape::from(())))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let backward = SoftmaxXentBackward(Arc::clone(&self.0));
        Ok(Some(arg.apply_op2_no_bwd(
            &grad_res.to_dtype(DType::F32)?.reshape(1)?,
            &backward,
        )?))
    }
}

/// `grad * scale * (softmax - onehot(target)) / B`, zero at excluded entries.
struct SoftmaxXentBackward(Arc<SoftmaxRows>);

impl CustomOp2 for SoftmaxXentBackward {
    fn name(&self) -> &'static str {
        "dssm-softmax-cross-entropy-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let inner = &self.0;
        let c = inner.columns;
        let scores = crate::ops::contiguous_slice::<f32>(s1, l1)?;
        let g = crate::ops::contiguous_slice::<f32>(s2, l2)?[0];
        let rows = scores.len() / c.max(1);
        let lse = inner
            .log_sum_exp
            .lock()
            .map_err(|_| candle_core::Error::Msg("softmax: poisoned lock".into()))?
            .clone();
        if lse.len() != rows {
            candle_core::bail!("softmax backward: no forward pass for these scores");
        }
        let factor = g * inner.scale / rows.max(1) as f32;
        let mut out = vec![0f32; scores.len()];
        out.par_chunks_mut(c)
            .zip(scores.par_chunks(c))
            .enumerate()
            .for_each(|(i, (out, row))| {
                inner.logits(i, row, out);
                let lse = lse[i];
                out.iter_mut().for_each(|v| *v = (*v - lse).exp() * factor);
                out[inner.targets[i] as usize] -= factor;
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn random(rows: usize, columns: usize, seed: u64) -> Vec<f32> {
        let mut x = seed;
        (0..rows * columns)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((x >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
            })
            .collect()
    }

    /// Loss and gradient of the fused and the portable path.
    fn both(
        scores: &[f32],
        shape: (usize, usize),
        scale: f64,
        offsets: Option<&Tensor>,
        excluded: &[(u32, u32)],
        targets: &[u32],
    ) -> [(f32, Vec<f32>); 2] {
        let run = |fused: bool| {
            let v = Var::from_vec(scores.to_vec(), shape, &Device::Cpu).unwrap();
            let loss = if fused {
                softmax_cross_entropy(v.as_tensor(), scale, offsets, excluded, targets)
            } else {
                softmax_cross_entropy_unfused(v.as_tensor(), scale, offsets, excluded, targets)
            }
            .unwrap();
            let grads = loss.backward().unwrap();
            let g = grads.get(v.as_tensor()).unwrap();
            (
                loss.to_scalar::<f32>().unwrap(),
                g.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            )
        };
        [run(true), run(false)]
    }

    fn assert_agree([(l1, g1), (l2, g2)]: [(f32, Vec<f32>); 2]) {
        assert!(
            (l1 - l2).abs() < 1e-5 * l2.abs().max(1.0),
            "loss {l1} vs {l2}"
        );
        for (k, (a, b)) in g1.iter().zip(&g2).enumerate() {
            assert!(
                (a - b).abs() < 1e-5 * b.abs().max(1.0),
                "gradient {k}: {a} vs {b}"
            );
        }
    }

    #[test]
    fn fused_matches_candle_ops_with_column_offsets_and_exclusions() {
        let (b, c) = (7, 11);
        let scores = random(b, c, 1);
        let offsets = Tensor::from_vec(random(1, c, 2), c, &Device::Cpu).unwrap();
        let targets: Vec<u32> = (0..b as u32).collect();
        let excluded = [(0, 3), (0, 4), (5, 0), (6, 10)];
        assert_agree(both(
            &scores,
            (b, c),
            20.0,
            Some(&offsets),
            &excluded,
            &targets,
        ));
        assert_agree(both(&scores, (b, c), 1.0, None, &[], &targets));
    }

    #[test]
    fn fused_matches_candle_ops_with_per_entry_offsets() {
        let (b, c) = (5, 9);
        let scores = random(b, c, 3);
        let offsets = Tensor::from_vec(random(b, c, 4), (b, c), &Device::Cpu).unwrap();
        let targets = [0u32, 0, 0, 8, 2];
        assert_agree(both(
            &scores,
            (b, c),
            0.5,
            Some(&offsets),
            &[(1, 1)],
            &targets,
        ));
    }

    #[test]
    fn hand_value_and_extreme_logits() {
        // Row 0: logits [2, 0] (scale 2), target 0; row 1: [0, 4] minus offsets [0, 1], target 0.
        let scores = Tensor::new(&[[1f32, 0.0], [0.0, 2.0]], &Device::Cpu).unwrap();
        let offsets = Tensor::new(&[[0f32, 0.0], [0.0, 1.0]], &Device::Cpu).unwrap();
        let loss = softmax_cross_entropy(&scores, 2.0, Some(&offsets), &[], &[0, 0]).unwrap();
        let row0 = -(2f32.exp() / (2f32.exp() + 1.0)).ln();
        let row1 = -(1.0 / (1.0 + 3f32.exp())).ln();
        let value = loss.to_scalar::<f32>().unwrap();
        assert!((value - (row0 + row1) / 2.0).abs() < 1e-6, "{value}");
        // Logits of +/-1000 stay finite: a confident mistake costs its margin.
        let scores = Tensor::new(&[[1000f32, -1000.0]], &Device::Cpu).unwrap();
        let loss = softmax_cross_entropy(&scores, 1.0, None, &[], &[1]).unwrap();
        assert_eq!(loss.to_scalar::<f32>().unwrap(), 2000.0);
        // Excluding every other column leaves a certain target: loss 0, gradient 0.
        let v = Var::new(&[[3f32, 9.0, -1.0]], &Device::Cpu).unwrap();
        let loss =
            softmax_cross_entropy(v.as_tensor(), 1.0, None, &[(0, 1), (0, 2)], &[0]).unwrap();
        assert_eq!(loss.to_scalar::<f32>().unwrap(), 0.0);
        let g = loss.backward().unwrap();
        let g = g.get(v.as_tensor()).unwrap().flatten_all().unwrap();
        assert_eq!(g.to_vec1::<f32>().unwrap(), [0.0, 0.0, 0.0]);
    }

    #[test]
    fn keep_hardest_breaks_ties_by_column_and_skips_excluded_entries() {
        let ninf = f32::NEG_INFINITY;
        // Target 2; the others 1, 1, ninf, 0.5: keeping 1 keeps column 0 (the tie's lower one).
        let mut row = [1.0f32, 1.0, 9.0, ninf, 0.5];
        keep_hardest(&mut row, 2, 1);
        assert_eq!(row, [1.0, ninf, 9.0, ninf, ninf]);
        // Fewer candidates than `keep`: nothing changes; keep 0: the target alone.
        let mut row = [1.0f32, ninf, 2.0];
        keep_hardest(&mut row, 0, 1);
        assert_eq!(row, [1.0, ninf, 2.0]);
        keep_hardest(&mut row, 0, 0);
        assert_eq!(row, [1.0, ninf, ninf]);
    }

    #[test]
    fn bad_arguments_are_errors() {
        let scores = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
        let message = |r: candle_core::Result<Tensor>| r.unwrap_err().to_string();
        assert!(message(softmax_cross_entropy(&scores, 1.0, None, &[], &[0])).contains("targets"));
        assert!(message(softmax_cross_entropy(&scores, 1.0, None, &[], &[0, 3])).contains("3"));
        assert!(
            message(softmax_cross_entropy(
                &scores,
                1.0,
                None,
                &[(1, 2)],
                &[0, 2]
            ))
            .contains("own target")
        );
        let offsets = Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap();
        assert!(
            message(softmax_cross_entropy(
                &scores,
                1.0,
                Some(&offsets),
                &[],
                &[0, 1]
            ))
            .contains("offsets")
        );
    }
}
