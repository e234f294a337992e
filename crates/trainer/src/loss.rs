//! Training losses on Candle tensors: pointwise BCE, pairwise BPR, in-batch softmax and sampled
//! softmax (both with a temperature and the optional log-Q correction).
//!
//! All return the mean over the batch as a scalar tensor.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use dssm_trainer::loss::bce_with_logits;
//! let logits = Tensor::new(&[0.0f32, 0.0], &Device::Cpu).unwrap();
//! let targets = Tensor::new(&[1.0f32, 0.0], &Device::Cpu).unwrap();
//! let loss = bce_with_logits(&logits, &targets).unwrap().to_scalar::<f32>().unwrap();
//! assert!((loss - std::f32::consts::LN_2).abs() < 1e-6);
//! ```

use candle_core::{Result, Tensor};

/// ln(1 + exp(x)) without overflow: max(x, 0) + ln(1 + exp(-|x|)).
pub fn softplus(x: &Tensor) -> Result<Tensor> {
    let positive = x.relu()?;
    let tail = ((x.abs()?.neg()?.exp()? + 1.0)?).log()?;
    positive + tail
}

/// Mean binary cross-entropy of `logits` [B] against `targets` [B] (0/1 floats), in the stable
/// form max(x, 0) - x y + ln(1 + exp(-|x|)) (dssm-model's fused kernel on CPU).
pub fn bce_with_logits(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    dssm_model::bce_with_logits(logits, targets)
}

/// Mean BPR loss: -ln sigmoid(s_pos - s_neg) = softplus(s_neg - s_pos), for `positive` [B] and
/// `negative` [B, K] (each positive against its K negatives).
pub fn bpr(positive: &Tensor, negative: &Tensor) -> Result<Tensor> {
    let difference = negative.broadcast_sub(&positive.unsqueeze(1)?)?;
    softplus(&difference)?.mean_all()
}

/// Mean softmax cross-entropy where row i's target is column i: in-batch softmax over a score
/// matrix `scores` [B, C] (user i against the B items of the batch, then C - B shared
/// negatives), divided by `temperature`, with `log_q` [C] (ln of each column item's sampling
/// probability or expected count) subtracted from each column when given. `item_ids` (one per
/// column), when given, masks accidental hits: a column holding the same item as row i's target
/// (other than column i) is removed from row i's softmax.
/// One fused op on CPU ([`dssm_model::softmax_cross_entropy`]).
pub fn in_batch_softmax(
    scores: &Tensor,
    temperature: f64,
    log_q: Option<&Tensor>,
    item_ids: Option<&[u32]>,
) -> Result<Tensor> {
    in_batch_softmax_with(
        scores,
        temperature,
        log_q,
        item_ids,
        InBatchOptions::default(),
    )
}

/// The options of [`in_batch_softmax_with`] beyond [`in_batch_softmax`]'s; the default changes
/// nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InBatchOptions {
    /// Leave each row's positive (column i of row i) without its log-Q offset: the correction
    /// on the negatives only (`loss.logq = "negatives_only"`).
    pub uncorrected_target: bool,
    /// Keep only each row's positive and its N highest other logits, after the temperature,
    /// log-Q and the accidental-hit mask; the other columns leave that row's softmax (online
    /// hard negatives, `sampler.hard.online`). `None` keeps every column.
    pub keep_hardest: Option<usize>,
}

/// [`in_batch_softmax`] with [`InBatchOptions`]. Both options become what the fused kernel
/// already takes: per-entry offsets (the row's own column at 0) and more excluded entries (the
/// columns below each row's N-th hardest, read from the scores on the host; which columns are
/// kept is a step function of the scores, so no gradient flows through the choice). The CPU
/// engine applies the same rules inside its kernel ([`dssm_model::keep_hardest`]).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use dssm_trainer::loss::{InBatchOptions, in_batch_softmax_with};
/// // Row 0 keeps its positive (1) and its hardest negative (column 2, score 3): -ln(e / (e + e^3)).
/// let scores = Tensor::new(&[[1f32, 0.0, 3.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], &Device::Cpu)?;
/// let options = InBatchOptions { keep_hardest: Some(1), ..Default::default() };
/// let loss = in_batch_softmax_with(&scores, 1.0, None, None, options)?.to_scalar::<f32>()?;
/// // Rows 1 and 2: the positive (1) and one of the two zeros: -ln(e / (e + 1)).
/// let (row0, other) = ((1.0 + 2f32.exp()).ln(), (1.0 + (-1f32).exp()).ln());
/// assert!((loss - (row0 + 2.0 * other) / 3.0).abs() < 1e-5);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn in_batch_softmax_with(
    scores: &Tensor,
    temperature: f64,
    log_q: Option<&Tensor>,
    item_ids: Option<&[u32]>,
    options: InBatchOptions,
) -> Result<Tensor> {
    let (batch, columns) = scores.dims2()?;
    let mut excluded = match item_ids {
        Some(ids) => accidental_hits(&ids[..columns.min(ids.len())], batch),
        None => Vec::new(),
    };
    let targets: Vec<u32> = (0..batch as u32).collect();
    let scale = 1.0 / temperature;
    // Per-entry offsets: row i's own column uncorrected.
    let column_offsets = match log_q {
        Some(q) => Some(q.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?),
        None => None,
    };
    let entry_offset = |i: usize, j: usize| match &column_offsets {
        Some(o) if !(options.uncorrected_target && i == j) => o[j],
        _ => 0.0,
    };
    let per_entry = match &column_offsets {
        Some(_) if options.uncorrected_target => {
            let values: Vec<f32> = (0..batch * columns)
                .map(|k| entry_offset(k / columns, k % columns))
                .collect();
            Some(Tensor::from_vec(values, (batch, columns), scores.device())?)
        }
        _ => None,
    };
    let offsets = per_entry.as_ref().or(log_q);
    if let Some(keep) = options.keep_hardest {
        excluded.sort_unstable();
        let host: Vec<Vec<f32>> = scores.to_dtype(candle_core::DType::F32)?.to_vec2()?;
        let mut hardest = Vec::new();
        let mut z = vec![0f32; columns];
        for (i, row) in host.iter().enumerate() {
            for (j, (z, &s)) in z.iter_mut().zip(row).enumerate() {
                *z = s * scale as f32 - entry_offset(i, j);
            }
            let from = excluded.partition_point(|&(r, _)| (r as usize) < i);
            for &(_, j) in excluded[from..]
                .iter()
                .take_while(|&&(r, _)| r as usize == i)
            {
                z[j as usize] = f32::NEG_INFINITY;
            }
            let before: Vec<bool> = z.iter().map(|v| *v == f32::NEG_INFINITY).collect();
            dssm_model::keep_hardest(&mut z, i, keep);
            hardest.extend(
                (0..columns)
                    .filter(|&j| !before[j] && z[j] == f32::NEG_INFINITY)
                    .map(|j| (i as u32, j as u32)),
            );
        }
        excluded.extend(hardest);
    }
    dssm_model::softmax_cross_entropy(scores, scale, offsets, &excluded, &targets)
}

/// The accidental hits of an in-batch softmax whose column `j` holds item `item_ids[j]` and whose
/// row `i < rows` targets column `i`: every `(i, j)`, `j != i`, where column `j` holds row `i`'s
/// item. Only items that occur more than once need masking (sort, then runs of equal ids).
///
/// ```
/// let hits = dssm_trainer::loss::accidental_hits(&[5, 6, 5, 9], 2);
/// assert_eq!(hits, [(0, 2)]);
/// ```
pub fn accidental_hits(item_ids: &[u32], rows: usize) -> Vec<(u32, u32)> {
    let mut excluded = Vec::new();
    let mut order: Vec<u32> = (0..item_ids.len() as u32).collect();
    order.sort_unstable_by_key(|&i| item_ids[i as usize]);
    for group in order.chunk_by(|&a, &b| item_ids[a as usize] == item_ids[b as usize]) {
        if group.len() < 2 {
            continue;
        }
        for &i in group.iter().filter(|&&i| (i as usize) < rows) {
            excluded.extend(group.iter().filter(|&&j| j != i).map(|&j| (i, j)));
        }
    }
    excluded
}

/// Mean sampled-softmax cross-entropy: each row's logits are [positive, negatives...] divided by
/// `temperature`, minus ln q of each item when `log_q_positive` [B] and `log_q_negative` [B, K]
/// are given; the target is the positive.
pub fn sampled_softmax(
    positive: &Tensor,
    negative: &Tensor,
    temperature: f64,
    log_q: Option<(&Tensor, &Tensor)>,
) -> Result<Tensor> {
    let scores = Tensor::cat(&[&positive.unsqueeze(1)?, negative], 1)?;
    let offsets = match log_q {
        Some((q_positive, q_negative)) => {
            Some(Tensor::cat(&[&q_positive.unsqueeze(1)?, q_negative], 1)?)
        }
        None => None,
    };
    let targets = vec![0u32; positive.dim(0)?];
    dssm_model::softmax_cross_entropy(&scores, 1.0 / temperature, offsets.as_ref(), &[], &targets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn t1(values: &[f32]) -> Tensor {
        Tensor::new(values, &Device::Cpu).unwrap()
    }

    fn scalar(t: Tensor) -> f32 {
        t.to_scalar::<f32>().unwrap()
    }

    fn close(a: f32, b: f32) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }

    #[test]
    fn bce_hand_values_and_extreme_logits() {
        // x = 2, y = 1: ln(1 + e^-2); x = -1, y = 0: ln(1 + e^-1).
        let expected = ((1.0 + (-2f32).exp()).ln() + (1.0 + (-1f32).exp()).ln()) / 2.0;
        close(
            scalar(bce_with_logits(&t1(&[2.0, -1.0]), &t1(&[1.0, 0.0])).unwrap()),
            expected,
        );
        // Stable at +/-100: a confident mistake costs ~100, not inf.
        let value = scalar(bce_with_logits(&t1(&[100.0, -100.0]), &t1(&[0.0, 1.0])).unwrap());
        close(value, 100.0);
    }

    #[test]
    fn bce_gradient_is_sigmoid_minus_target() {
        let x = Var::new(&[0.5f32], &Device::Cpu).unwrap();
        let loss = bce_with_logits(x.as_tensor(), &t1(&[1.0])).unwrap();
        let grads = loss.backward().unwrap();
        let g = grads.get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap()[0];
        close(g, 1.0 / (1.0 + (-0.5f32).exp()) - 1.0);
    }

    #[test]
    fn bpr_hand_value() {
        // Row 0: softplus(1 - 2) and softplus(0 - 2); row 1: softplus(3 - 0), softplus(0 - 0).
        let positive = t1(&[2.0, 0.0]);
        let negative = Tensor::new(&[[1.0f32, 0.0], [3.0, 0.0]], &Device::Cpu).unwrap();
        let sp = |x: f32| (1.0 + x.exp()).ln();
        let expected = (sp(-1.0) + sp(-2.0) + sp(3.0) + sp(0.0)) / 4.0;
        close(scalar(bpr(&positive, &negative).unwrap()), expected);
    }

    #[test]
    fn in_batch_softmax_hand_value() {
        // scores [[1, 0], [0, 2]], temperature 1:
        // row 0: -ln(e^1 / (e^1 + e^0)); row 1: -ln(e^2 / (e^0 + e^2)).
        let scores = Tensor::new(&[[1.0f32, 0.0], [0.0, 2.0]], &Device::Cpu).unwrap();
        let row0 = -(1f32.exp() / (1f32.exp() + 1.0)).ln();
        let row1 = -(2f32.exp() / (1.0 + 2f32.exp())).ln();
        let value = scalar(in_batch_softmax(&scores, 1.0, None, None).unwrap());
        close(value, (row0 + row1) / 2.0);
        // Temperature 0.5 doubles the logits.
        let row0 = -(2f32.exp() / (2f32.exp() + 1.0)).ln();
        let row1 = -(4f32.exp() / (1.0 + 4f32.exp())).ln();
        let value = scalar(in_batch_softmax(&scores, 0.5, None, None).unwrap());
        close(value, (row0 + row1) / 2.0);
    }

    #[test]
    fn in_batch_softmax_log_q_and_accidental_hits() {
        // log q = [ln 0.5, ln 0.25]: column logits become s - ln q.
        let scores = Tensor::new(&[[1.0f32, 0.0], [0.0, 2.0]], &Device::Cpu).unwrap();
        let log_q = t1(&[0.5f32.ln(), 0.25f32.ln()]);
        let (a, b) = (1.0 - 0.5f32.ln(), 0.0 - 0.25f32.ln());
        let (c, d) = (0.0 - 0.5f32.ln(), 2.0 - 0.25f32.ln());
        let row0 = -(a.exp() / (a.exp() + b.exp())).ln();
        let row1 = -(d.exp() / (c.exp() + d.exp())).ln();
        let value = scalar(in_batch_softmax(&scores, 1.0, Some(&log_q), None).unwrap());
        close(value, (row0 + row1) / 2.0);
        // Both rows hold the same item: each row's softmax keeps only its own column: loss 0.
        let value = scalar(in_batch_softmax(&scores, 1.0, None, Some(&[7, 7])).unwrap());
        close(value, 0.0);
    }

    #[test]
    fn in_batch_softmax_with_shared_negative_columns() {
        // Two rows (targets: columns 0 and 1, items 5 and 6), then shared columns holding items
        // 6 and 9. Row 0 keeps all four columns; row 1's shared copy of its own item 6 is an
        // accidental hit and leaves its softmax.
        let scores = Tensor::new(
            &[[1.0f32, 0.0, 2.0, 0.5], [0.0, 1.0, 3.0, -1.0]],
            &Device::Cpu,
        )
        .unwrap();
        let e = |x: f32| x.exp();
        let row0 = -(e(1.0) / (e(1.0) + e(0.0) + e(2.0) + e(0.5))).ln();
        let row1 = -(e(1.0) / (e(0.0) + e(1.0) + e(-1.0))).ln();
        let value = scalar(in_batch_softmax(&scores, 1.0, None, Some(&[5, 6, 6, 9])).unwrap());
        close(value, (row0 + row1) / 2.0);
    }

    #[test]
    fn log_q_on_the_negatives_only_hand_value() {
        // log q = [ln 0.5, ln 0.25]; each row's own column keeps its raw score:
        // row 0 logits [1, 0 - ln 0.25], row 1 logits [0 - ln 0.5, 2].
        let scores = Tensor::new(&[[1.0f32, 0.0], [0.0, 2.0]], &Device::Cpu).unwrap();
        let log_q = t1(&[0.5f32.ln(), 0.25f32.ln()]);
        let row0 = -(1f32.exp() / (1f32.exp() + 4f32)).ln();
        let row1 = -(2f32.exp() / (2f32 + 2f32.exp())).ln();
        let options = InBatchOptions {
            uncorrected_target: true,
            keep_hardest: None,
        };
        let value = in_batch_softmax_with(&scores, 1.0, Some(&log_q), None, options).unwrap();
        close(scalar(value), (row0 + row1) / 2.0);
        // The gradient of row 0's positive score is p - 1 over the uncorrected logits (mean over
        // 2 rows): (e / (e + 4) - 1) / 2.
        let v = Var::from_tensor(&scores).unwrap();
        let loss = in_batch_softmax_with(v.as_tensor(), 1.0, Some(&log_q), None, options).unwrap();
        let g = loss.backward().unwrap();
        let g = g.get(v.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        close(g[0][0], (1f32.exp() / (1f32.exp() + 4.0) - 1.0) / 2.0);
        // Without the option it is the correction of every logit (the test above).
        let all = in_batch_softmax_with(&scores, 1.0, Some(&log_q), None, Default::default());
        let every = in_batch_softmax(&scores, 1.0, Some(&log_q), None).unwrap();
        close(scalar(all.unwrap()), scalar(every));
    }

    #[test]
    fn online_hardest_negatives_hand_value() {
        // Three rows, temperature 0.5 (scale 2), keep the 1 hardest other column per row:
        // row 0 logits [2, 4, 0]: keeps columns 0 and 1; row 1 [0, 2, 2]: keeps 1 and 2 (0 is
        // lower); row 2 [6, 0, 1]: keeps 2 and 0.
        let scores = Tensor::new(
            &[[1.0f32, 2.0, 0.0], [0.0, 1.0, 1.0], [3.0, 0.0, 0.5]],
            &Device::Cpu,
        )
        .unwrap();
        let e = |x: f32| x.exp();
        let row0 = -(e(2.0) / (e(2.0) + e(4.0))).ln();
        let row1 = -(e(2.0) / (e(2.0) + e(2.0))).ln();
        let row2 = -(e(1.0) / (e(6.0) + e(1.0))).ln();
        let options = InBatchOptions {
            uncorrected_target: false,
            keep_hardest: Some(1),
        };
        let value = in_batch_softmax_with(&scores, 0.5, None, None, options).unwrap();
        close(scalar(value), (row0 + row1 + row2) / 3.0);
        // An accidental hit leaves first: rows 0 and 2 hold the same item, so row 0 loses column
        // 2 and row 2 column 0; row 2 then keeps column 1 (logit 0).
        let value = in_batch_softmax_with(&scores, 0.5, None, Some(&[7, 8, 7]), options).unwrap();
        let row2 = -(e(1.0) / (e(0.0) + e(1.0))).ln();
        close(scalar(value), (row0 + row1 + row2) / 3.0);
        // Keeping 2 of 2 others is the plain in-batch softmax.
        let options = InBatchOptions {
            keep_hardest: Some(2),
            ..options
        };
        let kept = in_batch_softmax_with(&scores, 0.5, None, None, options).unwrap();
        let plain = in_batch_softmax(&scores, 0.5, None, None).unwrap();
        close(scalar(kept), scalar(plain));
    }

    #[test]
    fn sampled_softmax_hand_value() {
        // One row: positive 1, negatives [0, 1]: -ln(e / (e + 1 + e)).
        let positive = t1(&[1.0]);
        let negative = Tensor::new(&[[0.0f32, 1.0]], &Device::Cpu).unwrap();
        let e = 1f32.exp();
        let expected = -(e / (2.0 * e + 1.0)).ln();
        close(
            scalar(sampled_softmax(&positive, &negative, 1.0, None).unwrap()),
            expected,
        );
        // log-Q: subtract ln 0.5 from the positive, ln 1 from the negatives: positive logit 1 + ln 2.
        let q_pos = t1(&[0.5f32.ln()]);
        let q_neg = Tensor::new(&[[0.0f32, 0.0]], &Device::Cpu).unwrap();
        let p = 1.0 + 2f32.ln();
        let expected = -(p.exp() / (p.exp() + 1.0 + e)).ln();
        close(
            scalar(sampled_softmax(&positive, &negative, 1.0, Some((&q_pos, &q_neg))).unwrap()),
            expected,
        );
    }
}
