//! The engine's dense kernels: row-major matrix products through `gemm` (one thread each: the
//! engine parallelises over shards, not inside a product) and the elementwise passes of the towers,
//! compiled a second time for AVX2 + FMA and chosen at run time.

use gemm::Parallelism;

use crate::ops::{Act, act_f32, dact_f32};

/// A row-major matrix view for [`product`]: element `(i, j)` is at `offset + i * row + j * col`.
#[derive(Clone, Copy)]
struct View {
    row: usize,
    col: usize,
}

/// `out[m x n] = lhs[m x k] * rhs[k x n]` (overwriting `out`, or adding to it when `accumulate`),
/// every operand a strided view; panics when a view reaches past its slice.
#[allow(clippy::too_many_arguments)]
fn product(
    (m, n, k): (usize, usize, usize),
    out: &mut [f32],
    lhs: &[f32],
    lhs_view: View,
    rhs: &[f32],
    rhs_view: View,
    accumulate: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(out.len() >= m * n, "product: output too small");
    if k == 0 {
        if !accumulate {
            out[..m * n].fill(0.0);
        }
        return;
    }
    let last = |v: View, rows: usize, cols: usize| (rows - 1) * v.row + (cols - 1) * v.col;
    assert!(last(lhs_view, m, k) < lhs.len(), "product: lhs too small");
    assert!(last(rhs_view, k, n) < rhs.len(), "product: rhs too small");
    // SAFETY: the asserts above keep every element gemm reads or writes inside its slice, and
    // `out` does not alias the inputs (it is borrowed mutably).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_view.col as isize,
            lhs_view.row as isize,
            rhs.as_ptr(),
            rhs_view.col as isize,
            rhs_view.row as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

/// `out[m x n] = a[m x k] * w^T`, with `w` `[n x k]` (a PyTorch-layout weight): a layer's forward.
pub(crate) fn matmul_a_wt(out: &mut [f32], a: &[f32], w: &[f32], m: usize, n: usize, k: usize) {
    product(
        (m, n, k),
        out,
        a,
        View { row: k, col: 1 },
        w,
        View { row: 1, col: k },
        false,
    );
}

/// `out[m x k] = d[m x n] * w`, with `w` `[n x k]`: the gradient of a layer's input.
pub(crate) fn matmul_d_w(out: &mut [f32], d: &[f32], w: &[f32], m: usize, n: usize, k: usize) {
    product(
        (m, k, n),
        out,
        d,
        View { row: n, col: 1 },
        w,
        View { row: k, col: 1 },
        false,
    );
}

/// `out[n x k] = d[m x n]^T * a[m x k]`: the gradient of a layer's weight (overwriting `out`).
pub(crate) fn matmul_dt_a(out: &mut [f32], d: &[f32], a: &[f32], m: usize, n: usize, k: usize) {
    matmul_dt_a_columns(out, d, n, 0, n, a, m, k);
}

/// As [`matmul_dt_a`] over the columns `first..first + count` of `d` (`[m x d_cols]`):
/// `out[count x k] = d[:, first..first + count]^T * a[m x k]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_dt_a_columns(
    out: &mut [f32],
    d: &[f32],
    d_cols: usize,
    first: usize,
    count: usize,
    a: &[f32],
    m: usize,
    k: usize,
) {
    product(
        (count, k, m),
        out,
        &d[first.min(d.len())..],
        View {
            row: 1,
            col: d_cols,
        },
        a,
        View { row: k, col: 1 },
        false,
    );
}

/// Declares `pub(crate) fn $name($args) $body` plus an AVX2 + FMA copy of the same body, chosen at
/// run time (the body is inlined into both, so the compiler vectorises it for each).
macro_rules! simd_fn {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        simd_fn! { $(#[$doc])* fn $name($($arg: $ty),*) -> () $body }
    };
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty $body:block) => {
        $(#[$doc])*
        pub(crate) fn $name($($arg: $ty),*) -> $ret {
            #[inline(always)]
            fn body($($arg: $ty),*) -> $ret $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn wide($($arg: $ty),*) -> $ret { body($($arg),*) }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU has the features `wide` was compiled for.
                    return unsafe { wide($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

/// Calls `$f!` with the activation as a constant, so its `match` folds out of the inner loop.
macro_rules! for_act {
    ($act:expr, $f:ident) => {
        match $act {
            Act::Identity => $f!(Act::Identity),
            Act::Relu => $f!(Act::Relu),
            Act::LeakyRelu => $f!(Act::LeakyRelu),
            Act::Tanh => $f!(Act::Tanh),
            Act::Gelu => $f!(Act::Gelu),
            Act::Sigmoid => $f!(Act::Sigmoid),
        }
    };
}

simd_fn! {
    /// `z[i, j] += bias[j]` in place and `post = act(z) * mask` (`mask` empty: no dropout), in
    /// one pass; `post` empty: only the bias is added (a last layer).
    fn bias_act_forward(z: &mut [f32], bias: &[f32], act: Act, mask: &[f32], post: &mut [f32]) {
        let width = bias.len();
        if post.is_empty() {
            for row in z.chunks_exact_mut(width) {
                row.iter_mut().zip(bias).for_each(|(v, &b)| *v += b);
            }
            return;
        }
        macro_rules! run {
            ($a:expr) => {
                if mask.is_empty() {
                    for (zr, pr) in z.chunks_exact_mut(width).zip(post.chunks_exact_mut(width)) {
                        for ((v, p), &b) in zr.iter_mut().zip(pr).zip(bias) {
                            *v += b;
                            *p = act_f32($a, *v);
                        }
                    }
                } else {
                    let rows = z.chunks_exact_mut(width).zip(post.chunks_exact_mut(width));
                    for ((zr, pr), mr) in rows.zip(mask.chunks_exact(width)) {
                        for (((v, p), &b), &m) in zr.iter_mut().zip(pr).zip(bias).zip(mr) {
                            *v += b;
                            *p = act_f32($a, *v) * m;
                        }
                    }
                }
            };
        }
        for_act!(act, run)
    }
}

/// `out = src` for one embedding row; the usual widths compile to a few moves, not a call.
#[inline(always)]
pub(crate) fn copy_row(out: &mut [f32], src: &[f32]) {
    #[inline(always)]
    fn fixed<const N: usize>(out: &mut [f32], src: &[f32]) {
        if let (Ok(o), Ok(s)) = (<&mut [f32; N]>::try_from(out), <&[f32; N]>::try_from(src)) {
            *o = *s;
        }
    }
    match out.len() {
        8 => fixed::<8>(out, src),
        16 => fixed::<16>(out, src),
        32 => fixed::<32>(out, src),
        64 => fixed::<64>(out, src),
        _ => out.copy_from_slice(src),
    }
}

simd_fn! {
    /// `d[i] *= mask[i] * act'(z[i])` in place (`mask` empty: no dropout).
    fn act_backward(d: &mut [f32], z: &[f32], act: Act, mask: &[f32]) {
        macro_rules! run {
            ($a:expr) => {
                if mask.is_empty() {
                    for (g, &v) in d.iter_mut().zip(z) {
                        *g *= dact_f32($a, v);
                    }
                } else {
                    for ((g, &v), &m) in d.iter_mut().zip(z).zip(mask) {
                        *g *= m * dact_f32($a, v);
                    }
                }
            };
        }
        for_act!(act, run)
    }
}

simd_fn! {
    /// `out[j] = sum_i d[i, j]` over the rows of `d` (`out.len()` columns): a bias gradient.
    fn column_sums(out: &mut [f32], d: &[f32]) {
        out.fill(0.0);
        for row in d.chunks_exact(out.len()) {
            for (o, &v) in out.iter_mut().zip(row) {
                *o += v;
            }
        }
    }
}

simd_fn! {
    /// `acc[i] += x[i]`.
    fn add_assign(acc: &mut [f32], x: &[f32]) {
        for (a, &v) in acc.iter_mut().zip(x) {
            *a += v;
        }
    }
}

/// `e^x` to about 1 ulp (Cephes' polynomial after reducing by `n ln 2`), in a form the compiler
/// vectorises; 0 below -87.3 (so `-inf` gives exactly 0), `e^88.7` above 88.7.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    let clamped = x.clamp(-87.3, 88.7);
    let shifted = clamped * LOG2_E + ROUND;
    let n = shifted - ROUND;
    // The integer n sits in the low mantissa bits of `shifted` (no float-to-int cast, which
    // would saturate and keep the loop scalar).
    let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    let r = clamped - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_2e-4 * r + 1.398_2e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 0.166_666_65)
        * r
        + 0.5;
    let e = p * r * r + r + 1.0;
    let scale = f32::from_bits(n_bits.wrapping_add(127) << 23);
    if x < -87.3 { 0.0 } else { e * scale }
}

simd_fn! {
    /// One softmax cross-entropy row: `z` holds the row's logits (`-inf` where left out), is
    /// overwritten with `factor * (softmax - onehot(target))`; returns the row's loss
    /// `logsumexp(z) - z[target]`.
    fn softmax_row(z: &mut [f32], target: usize, factor: f32) -> f64 {
        // Eight lanes, so the max and the sum vectorise.
        let mut lanes = [f32::NEG_INFINITY; 8];
        let mut chunks = z.chunks_exact(8);
        for chunk in &mut chunks {
            for (m, &v) in lanes.iter_mut().zip(chunk) {
                *m = if v > *m { v } else { *m };
            }
        }
        let max = chunks
            .remainder()
            .iter()
            .chain(&lanes)
            .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
        let at_target = z[target];
        for v in z.iter_mut() {
            *v = exp(*v - max);
        }
        let mut sums = [0f32; 8];
        let mut chunks = z.chunks_exact(8);
        for chunk in &mut chunks {
            for (s, &v) in sums.iter_mut().zip(chunk) {
                *s += v;
            }
        }
        let sum: f32 = sums.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>();
        let scale = factor / sum;
        z.iter_mut().for_each(|v| *v *= scale);
        z[target] -= factor;
        (max + sum.ln() - at_target) as f64
    }
}

/// Dot product of two equal-length rows, accumulated in eight lanes.
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
        // a [m x k], b [k x n]
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|t| a[i * k + t] * b[t * n + j]).sum();
            }
        }
        out
    }

    fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
        let mut t = vec![0f32; x.len()];
        for i in 0..rows {
            for j in 0..cols {
                t[j * rows + i] = x[i * cols + j];
            }
        }
        t
    }

    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len as u32)
            .map(|i| ((i.wrapping_mul(2654435761) ^ seed) % 17) as f32 / 8.0 - 1.0)
            .collect()
    }

    fn close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-4, "{x} vs {y}");
        }
    }

    #[test]
    fn the_three_products_match_a_naive_loop() {
        let (m, n, k) = (13, 7, 5);
        let a = values(m * k, 1);
        let w = values(n * k, 2);
        let mut out = vec![0f32; m * n];
        matmul_a_wt(&mut out, &a, &w, m, n, k);
        close(&out, &naive(&a, &transpose(&w, n, k), m, n, k));

        let d = values(m * n, 3);
        let mut dx = vec![0f32; m * k];
        matmul_d_w(&mut dx, &d, &w, m, n, k);
        close(&dx, &naive(&d, &w, m, k, n));

        let mut dw = vec![7f32; n * k];
        matmul_dt_a(&mut dw, &d, &a, m, n, k);
        close(&dw, &naive(&transpose(&d, m, n), &a, n, k, m));

        // Columns 2..5 of d only.
        let mut part = vec![0f32; 3 * k];
        matmul_dt_a_columns(&mut part, &d, n, 2, 3, &a, m, k);
        close(&part, &dw[2 * k..5 * k]);
    }

    #[test]
    fn elementwise_passes() {
        let mut z = vec![1.0, -2.0, 0.5, -0.5];
        let mut post = vec![0.0; 4];
        bias_act_forward(
            &mut z,
            &[0.5, 1.0],
            Act::LeakyRelu,
            &[2.0, 0.0, 1.0, 1.0],
            &mut post,
        );
        assert_eq!(z, [1.5, -1.0, 1.0, 0.5]);
        assert_eq!(post, [3.0, 0.0, 1.0, 0.5]);
        let mut d = vec![1.0; 4];
        act_backward(&mut d, &z, Act::LeakyRelu, &[]);
        assert_eq!(d, [1.0, 0.01, 1.0, 1.0]);
        let mut sums = vec![0.0; 2];
        column_sums(&mut sums, &z);
        assert_eq!(sums, [2.5, -0.5]);
        for x in [
            -100.0f32, -87.0, -20.5, -1.0, -1e-3, 0.0, 0.5, 3.7, 40.0, 88.0,
        ] {
            let (fast, exact) = (exp(x), x.exp());
            assert!(
                (fast - exact).abs() <= 2e-7 * exact + f32::MIN_POSITIVE,
                "exp({x})"
            );
        }
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(dot(&values(19, 4), &values(19, 5)), {
            let (a, b) = (values(19, 4), values(19, 5));
            a.iter().zip(&b).map(|(x, y)| x * y).sum::<f32>()
        });
    }
}
