//! The ceiling the matrix products put on a training step of the reference architecture: each
//! product of one 512-row shard (the CPU engine's unit of work) timed alone through `gemm` on one
//! thread, at the shapes the engine runs (towers 32 -> 128 -> 64 -> 32 and 24 -> 128 -> 64 -> 32,
//! forward, input gradient and weight gradient of every layer), beside a large square product.
//! If a step did nothing but these products, one core could not train faster than the printed
//! samples/s; two cores at most twice that.
//!
//! `cargo run --release -p dssm-model --example gemm_ceiling`

use std::time::Instant;

use gemm::Parallelism;

/// `out[m x n] = a[m x k] * b[k x n]`, every matrix row-major, or the transposes the engine uses
/// (`a_t`: `a` stored `[k x m]`; `b_t`: `b` stored `[n x k]`).
fn product(
    (m, n, k): (usize, usize, usize),
    (a_t, b_t): (bool, bool),
    out: &mut [f32],
    a: &[f32],
    b: &[f32],
) {
    let (a_cs, a_rs) = if a_t {
        (m as isize, 1)
    } else {
        (1, k as isize)
    };
    let (b_cs, b_rs) = if b_t {
        (k as isize, 1)
    } else {
        (1, n as isize)
    };
    // SAFETY: every buffer holds at least the m*k, k*n and m*n elements the strides reach.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            0.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

/// Seconds per call of the product `(m, n, k)`, median of 7 batches of calls.
fn seconds_per_call(shape: (usize, usize, usize), transposes: (bool, bool)) -> f64 {
    let (m, n, k) = shape;
    let a: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.01).collect();
    let b: Vec<f32> = (0..k * n).map(|i| (i % 7) as f32 * 0.01).collect();
    let mut out = vec![0f32; m * n];
    let flops = 2.0 * (m * n * k) as f64;
    let calls = ((2e9 / flops) as usize).clamp(3, 100_000);
    let mut times: Vec<f64> = (0..7)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..calls {
                product(shape, transposes, &mut out, &a, &b);
            }
            start.elapsed().as_secs_f64() / calls as f64
        })
        .collect();
    times.sort_by(f64::total_cmp);
    std::hint::black_box(&out);
    times[3]
}

fn main() {
    let square = 1024;
    let t = seconds_per_call((square, square, square), (false, false));
    let peak = 2.0 * (square as f64).powi(3) / t / 1e9;
    println!("{square}^3 product, 1 thread: {peak:.1} GFLOP/s");

    const SHARD: usize = 512;
    let mut total_s = 0.0;
    let mut total_flops = 0.0;
    println!("shard of {SHARD} rows     forward     d_input     d_weight   (GFLOP/s)");
    for (side, widths) in [("user", [32, 128, 64, 32]), ("item", [24, 128, 64, 32])] {
        for layer in widths.windows(2) {
            let (k, n) = (layer[0], layer[1]);
            // Forward x[S x k] * W^T (W [n x k]); d_x = d_z[S x n] * W; d_W = d_z^T * x.
            let products = [
                ((SHARD, n, k), (false, true)),
                ((SHARD, k, n), (false, false)),
                ((n, k, SHARD), (true, false)),
            ];
            let mut rates = Vec::new();
            for (shape, transposes) in products {
                let s = seconds_per_call(shape, transposes);
                let flops = 2.0 * (shape.0 * shape.1 * shape.2) as f64;
                total_s += s;
                total_flops += flops;
                rates.push(flops / s / 1e9);
            }
            println!(
                "{side} {k:>3} -> {n:<3}       {:>8.1}    {:>8.1}     {:>8.1}",
                rates[0], rates[1], rates[2]
            );
        }
    }
    let per_sample = total_flops / SHARD as f64;
    let samples_per_s = SHARD as f64 / total_s;
    println!(
        "all products of a shard: {:.1} kFLOP per sample at {:.1} GFLOP/s ({:.0}% of the square product)",
        per_sample / 1e3,
        total_flops / total_s / 1e9,
        100.0 * total_flops / total_s / 1e9 / peak
    );
    println!(
        "ceiling from the products alone: {:.0}K samples/s on 1 core, {:.0}K on 2",
        samples_per_s / 1e3,
        2.0 * samples_per_s / 1e3
    );
}
