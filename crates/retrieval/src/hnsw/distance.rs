//! The inner product of two rows, with the widest vector instructions this CPU has.
//!
//! One portable body (16 independent lanes, then a fixed pairwise reduction) is compiled three times:
//! for AVX-512, for AVX2 with FMA, and for the baseline target. The choice is made once per process
//! ([`dot_kernel`]). The graph only compares scores; returned scores are recomputed by the caller.

/// A function computing the inner product of two equally long rows.
pub(crate) type DotFn = fn(&[f32], &[f32]) -> f32;

const LANES: usize = 16;

/// The fastest inner product this CPU supports, detected once.
pub(crate) fn dot_kernel() -> DotFn {
    static KERNEL: std::sync::OnceLock<DotFn> = std::sync::OnceLock::new();
    *KERNEL.get_or_init(detect)
}

fn detect() -> DotFn {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            return dot_avx512;
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return dot_avx2;
        }
    }
    dot_portable
}

/// Plain multiply and add (no fused multiply-add: without FMA hardware `mul_add` is a slow call).
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    dot_lanes(a, b, |x, y, acc| x * y + acc)
}

#[cfg(target_arch = "x86_64")]
fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: chosen by `detect` only when the CPU has AVX2 and FMA.
    unsafe { dot_avx2_inner(a, b) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dot_avx2_inner(a: &[f32], b: &[f32]) -> f32 {
    dot_lanes(a, b, f32::mul_add)
}

#[cfg(target_arch = "x86_64")]
fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: chosen by `detect` only when the CPU has AVX-512F.
    unsafe { dot_avx512_inner(a, b) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn dot_avx512_inner(a: &[f32], b: &[f32]) -> f32 {
    dot_lanes(a, b, f32::mul_add)
}

#[inline(always)]
fn dot_lanes(a: &[f32], b: &[f32], fma: impl Fn(f32, f32, f32) -> f32) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; LANES];
    let mut ca = a.chunks_exact(LANES);
    let mut cb = b.chunks_exact(LANES);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for j in 0..LANES {
            acc[j] = fma(x[j], y[j], acc[j]);
        }
    }
    for (j, (x, y)) in ca.remainder().iter().zip(cb.remainder()).enumerate() {
        acc[j] = fma(*x, *y, acc[j]);
    }
    let mut width = LANES / 2;
    while width > 0 {
        for j in 0..width {
            acc[j] += acc[j + width];
        }
        width /= 2;
    }
    acc[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_computes_the_inner_product() {
        // 37 values: two full 16-lane chunks and a remainder of 5.
        let a: Vec<f32> = (0..37).map(|i| (i as f32 - 18.0) / 8.0).collect();
        let b: Vec<f32> = (0..37).map(|i| ((i * 7) % 11) as f32 / 4.0).collect();
        let expected: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
        let mut kernels: Vec<DotFn> = vec![dot_portable, dot_kernel()];
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            kernels.push(dot_avx2);
        }
        for kernel in kernels {
            let got = kernel(&a, &b);
            assert!((got as f64 - expected).abs() < 1e-4, "{got} vs {expected}");
        }
        assert_eq!(dot_portable(&[], &[]), 0.0);
        assert_eq!(dot_kernel()(&[2.0, 3.0], &[4.0, 5.0]), 23.0);
    }
}
