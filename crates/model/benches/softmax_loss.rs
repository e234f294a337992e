//! In-batch softmax loss, forward + backward, on a `[2048, 2048]` score matrix (the retrieval
//! recipe's batch): the fused CPU kernel against the same maths as plain Candle ops.
//!
//! `cargo bench -p dssm-model --bench softmax_loss`

use candle_core::{Device, Tensor, Var};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dssm_model::{softmax_cross_entropy, softmax_cross_entropy_unfused};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BATCH: usize = 2048;

fn bench(c: &mut Criterion) {
    let device = Device::Cpu;
    let mut state = 7u64;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    };
    let scores: Vec<f32> = (0..BATCH * BATCH).map(|_| next()).collect();
    let log_q: Vec<f32> = (0..BATCH).map(|_| next() * 3.0 - 8.0).collect();
    let scores = Var::from_vec(scores, (BATCH, BATCH), &device).unwrap();
    let log_q = Tensor::from_vec(log_q, BATCH, &device).unwrap();
    let targets: Vec<u32> = (0..BATCH as u32).collect();
    // A few accidental hits, as a popular item repeated in the batch gives.
    let excluded: Vec<(u32, u32)> = (0..64u32).map(|i| (i, (i + 1) % 64)).collect();
    let mut group = c.benchmark_group("in_batch_softmax_b2048");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(20);
    for fused in [true, false] {
        let name = if fused { "fused" } else { "candle_ops" };
        group.bench_function(name, |b| {
            b.iter(|| {
                let loss = if fused {
                    softmax_cross_entropy(
                        scores.as_tensor(),
                        20.0,
                        Some(&log_q),
                        &excluded,
                        &targets,
                    )
                } else {
                    softmax_cross_entropy_unfused(
                        scores.as_tensor(),
                        20.0,
                        Some(&log_q),
                        &excluded,
                        &targets,
                    )
                }
                .unwrap();
                loss.backward().unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
