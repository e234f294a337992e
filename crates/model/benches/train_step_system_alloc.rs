//! Train-step throughput (samples/s) with the system allocator, to compare with `train_step` (mimalloc).

use criterion::{Criterion, criterion_group, criterion_main};

mod common;

fn bench(c: &mut Criterion) {
    common::train_step(c, "system");
}

criterion_group!(benches, bench);
criterion_main!(benches);
