//! Train-step throughput (samples/s) with mimalloc as the global allocator.
//!
//! `cargo bench -p dssm-model --bench train_step` (set `RAYON_NUM_THREADS` to pick the thread count).

use criterion::{Criterion, criterion_group, criterion_main};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod common;

fn bench(c: &mut Criterion) {
    common::train_step(c, "mimalloc");
}

criterion_group!(benches, bench);
criterion_main!(benches);
