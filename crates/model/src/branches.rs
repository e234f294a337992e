//! The branches of a parallel tower beside the MLP (Tencent's parallel two-tower structure): a
//! DCN-v2 cross network and the FM bi-interaction, each projected to the tower's output width,
//! and the scoring layer that weighs the products of each branch's user and item outputs.

use candle_core::Tensor;

use crate::model::Linear;
use crate::ops::Act;

/// One cross layer: `x0 * (W x + b) + x`, all `[B, n]`, `W` `[n, n]` (PyTorch layout).
pub(crate) fn cross_layer(x0: &Tensor, x: &Tensor, layer: &Linear) -> candle_core::Result<Tensor> {
    let z = layer.forward(x, Act::Identity, None, false)?;
    (x0 * z)? + x
}

/// The cross network over `x0` `[B, n]`: every layer in turn, from `x0` itself.
pub(crate) fn cross_network(x0: &Tensor, layers: &[Linear]) -> candle_core::Result<Tensor> {
    let mut x = x0.clone();
    for layer in layers {
        x = cross_layer(x0, &x, layer)?;
    }
    Ok(x)
}

/// The FM bi-interaction of field embeddings `[B, F, E]`: `0.5 * ((sum_f v_f)^2 - sum_f v_f^2)`,
/// `[B, E]` (coordinate `k` is the sum over field pairs `f < g` of `v_f[k] * v_g[k]`).
pub(crate) fn fm_interaction(fields: &Tensor) -> candle_core::Result<Tensor> {
    let sum = fields.sum(1)?;
    let sum_of_squares = fields.sqr()?.sum(1)?;
    (sum.sqr()? - sum_of_squares)?.affine(0.5, 0.0)
}

/// The scoring layer of parallel towers: `score = w . concat_b(u_b * i_b) + c`, with `weight`
/// `[1, branches * D]` and `bias` `[1]`.
pub(crate) struct Combine {
    pub(crate) layer: Linear,
}

impl Combine {
    /// Training-time scores `[B]` of paired branch outputs `[B, branches * D]` (concatenated).
    pub(crate) fn score(&self, users: &Tensor, items: &Tensor) -> candle_core::Result<Tensor> {
        let products = (users * items)?;
        self.layer
            .forward(&products, Act::Identity, None, false)?
            .squeeze(1)
    }

    /// The user vector the weights fold into: `concat_b(w_b * u_b)`, then the bias.
    pub(crate) fn fold_users(&self, users: &Tensor) -> candle_core::Result<Tensor> {
        let b = users.dim(0)?;
        let weighted = users.broadcast_mul(self.layer.weight.as_tensor())?;
        let bias = self
            .layer
            .bias
            .as_tensor()
            .unsqueeze(0)?
            .broadcast_as((b, 1))?;
        Tensor::cat(&[weighted, bias.contiguous()?], 1)
    }

    /// The item vector: `concat_b(i_b)`, then 1.
    pub(crate) fn fold_items(items: &Tensor) -> candle_core::Result<Tensor> {
        let ones = Tensor::ones((items.dim(0)?, 1), items.dtype(), items.device())?;
        Tensor::cat(&[items, &ones], 1)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use super::*;

    fn linear(weight: &[f32], out: usize, bias: &[f32]) -> Linear {
        let dev = Device::Cpu;
        let n = weight.len() / out;
        Linear {
            weight: Var::from_tensor(&Tensor::from_slice(weight, (out, n), &dev).unwrap()).unwrap(),
            bias: Var::from_tensor(&Tensor::from_slice(bias, out, &dev).unwrap()).unwrap(),
        }
    }

    fn rows(t: &Tensor) -> Vec<Vec<f32>> {
        t.to_vec2::<f32>().unwrap()
    }

    #[test]
    fn cross_layer_by_hand() {
        let dev = Device::Cpu;
        // x0 = x = [1, 2]; W = [[1, 0], [1, 1]], b = [0.5, -1].
        // W x + b = [1 + 0.5, 1 + 2 - 1] = [1.5, 2]; x0 * that = [1.5, 4]; + x = [2.5, 6].
        let x0 = Tensor::from_slice(&[1f32, 2.0], (1, 2), &dev).unwrap();
        let layer = linear(&[1.0, 0.0, 1.0, 1.0], 2, &[0.5, -1.0]);
        assert_eq!(rows(&cross_layer(&x0, &x0, &layer).unwrap()), [[2.5, 6.0]]);
        // A second layer from x1 = [2.5, 6] with W = I, b = 0: x0 * x1 + x1 = [2.5 + 2.5, 12 + 6].
        let identity = linear(&[1.0, 0.0, 0.0, 1.0], 2, &[0.0, 0.0]);
        let two = cross_network(&x0, &[layer, identity]).unwrap();
        assert_eq!(rows(&two), [[5.0, 18.0]]);
        // Zero weights and bias leave x unchanged: x0 * 0 + x.
        let zero = linear(&[0.0; 4], 2, &[0.0; 2]);
        assert_eq!(rows(&cross_network(&x0, &[zero]).unwrap()), [[1.0, 2.0]]);
    }

    #[test]
    fn fm_interaction_by_hand() {
        let dev = Device::Cpu;
        // Row 0: fields [1, 2], [3, 4], [5, 6]. Sum [9, 12], squared [81, 144]; sum of squares
        // [1 + 9 + 25, 4 + 16 + 36] = [35, 56]; half the difference [23, 44], which is the sum
        // over pairs: 1*3 + 1*5 + 3*5 = 23 and 2*4 + 2*6 + 4*6 = 44.
        // Row 1: fields [1, 0], [0, 1], [-1, 2]: pairs 1*0 + 1*(-1) + 0*(-1) = -1 and
        // 0*1 + 0*2 + 1*2 = 2.
        let fields = Tensor::from_slice(
            &[1f32, 2.0, 3.0, 4.0, 5.0, 6.0, 1.0, 0.0, 0.0, 1.0, -1.0, 2.0],
            (2, 3, 2),
            &dev,
        )
        .unwrap();
        assert_eq!(
            rows(&fm_interaction(&fields).unwrap()),
            [[23.0, 44.0], [-1.0, 2.0]]
        );
        // One field has no pairs.
        let one = Tensor::from_slice(&[3f32, -2.0], (1, 1, 2), &dev).unwrap();
        assert_eq!(rows(&fm_interaction(&one).unwrap()), [[0.0, 0.0]]);
    }

    #[test]
    fn folded_dot_is_the_score_by_hand() {
        let dev = Device::Cpu;
        // Two branches of width 1: u = [2, 3], i = [5, 7], w = [0.5, -1], c = 4.
        // score = 0.5 * 2 * 5 - 1 * 3 * 7 + 4 = 5 - 21 + 4 = -12; folded user [1, -3, 4],
        // item [5, 7, 1]: 5 - 21 + 4.
        let combine = Combine {
            layer: linear(&[0.5, -1.0], 1, &[4.0]),
        };
        let u = Tensor::from_slice(&[2f32, 3.0], (1, 2), &dev).unwrap();
        let i = Tensor::from_slice(&[5f32, 7.0], (1, 2), &dev).unwrap();
        assert_eq!(
            combine.score(&u, &i).unwrap().to_vec1::<f32>().unwrap(),
            [-12.0]
        );
        let (fu, fi) = (
            combine.fold_users(&u).unwrap(),
            Combine::fold_items(&i).unwrap(),
        );
        assert_eq!(rows(&fu), [[1.0, -3.0, 4.0]]);
        assert_eq!(rows(&fi), [[5.0, 7.0, 1.0]]);
    }
}
