//! Exact top-K on an ML-1M-sized problem: 6,040 users x 3,706 items, dim 32, random data (fixed seed).
//!
//! `cargo bench --no-run -p dssm-retrieval`, then run the printed `target/release/deps/topk-*` binary
//! with `--bench`.
use criterion::{Criterion, criterion_group, criterion_main};
use dssm_retrieval::{EmbeddingMatrix, ExactIndex, Exclusions, MatrixView, TopK};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use std::hint::black_box;

const USERS: usize = 6_040;
const ITEMS: usize = 3_706;
const DIM: usize = 32;

fn exact(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(42);
    let items: Vec<f32> = (0..ITEMS * DIM)
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    let users: Vec<f32> = (0..USERS * DIM)
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    let index =
        ExactIndex::new(EmbeddingMatrix::new((1..=ITEMS as u32).collect(), DIM, items).unwrap());
    let view = MatrixView::new(&users, DIM).unwrap();
    // About 165 seen items per user, as in ML-1M's train split.
    let seen = Exclusions::from_rows((0..USERS).map(|_| {
        (0..165)
            .map(|_| rng.random_range(1..=ITEMS as u32))
            .collect::<Vec<u32>>()
    }));
    let targets: Vec<u32> = (0..USERS)
        .map(|_| rng.random_range(1..=ITEMS as u32))
        .collect();

    let mut group = c.benchmark_group("exact_6040x3706x32");
    group.sample_size(20);
    group.bench_function("scores_all", |b| {
        b.iter(|| black_box(index.scores(view).unwrap()))
    });
    for k in [10, 100] {
        group.bench_function(format!("top{k}"), |b| {
            b.iter(|| black_box(index.top_k(view, k, None).unwrap()))
        });
    }
    group.bench_function("top100_masked", |b| {
        b.iter(|| black_box(index.top_k(view, 100, Some(&seen)).unwrap()))
    });
    group.bench_function("items_ahead_of_targets_masked", |b| {
        b.iter(|| {
            black_box(
                index
                    .items_ahead_of_targets(view, &targets, Some(&seen))
                    .unwrap(),
            )
        })
    });
    group.finish();
}

criterion_group!(benches, exact);
criterion_main!(benches);
