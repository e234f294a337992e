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
    let batch = scores.dim(0)?;
    let excluded = match item_ids {
        Some(ids) => accidental_hits(&ids[..scores.dim(1)?.min(ids.len())], batch),
        None => Vec::new(),
    };
    let targets: Vec<u32> = (0..batch as u32).collect();
    dssm_model::softmax_cross_entropy(scores, 1.0 / temperature, log_q, &excluded, &targets)
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
