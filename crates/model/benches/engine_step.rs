//! CPU-engine throughput (samples/s) on the reference architecture at batch 2048: the BCE step
//! (forward, backward, gradient reduction) with SENet on and off. The optimizer is not included
//! (it lives in the trainer; `cargo xtask bench-train` times whole steps and runs).
//!
//! `cargo bench -p dssm-model --bench engine_step` (set `RAYON_NUM_THREADS` to pick the threads).

use candle_core::Device;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dssm_model::Dssm;
use dssm_model::engine::{CpuEngine, SideIds};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[allow(dead_code)]
mod common;

fn ids(rows: usize, vocabs: &[u32], seed: u64) -> Vec<Vec<u32>> {
    let mut state = seed;
    vocabs
        .iter()
        .map(|&v| {
            (0..rows)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((state >> 33) % v as u64) as u32
                })
                .collect()
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let b = common::BATCH;
    let mut group = c.benchmark_group("engine_bce_step");
    group.throughput(Throughput::Elements(b as u64));
    group.sample_size(50);
    let users = ids(b, &[6041, 3, 8, 22], 1);
    let items = ids(b, &[3707, 11, 11], 2);
    let labels: Vec<f32> = ids(b, &[5], 3)[0]
        .iter()
        .map(|&v| (v == 0) as u32 as f32)
        .collect();
    let u: Vec<&[u32]> = users.iter().map(Vec::as_slice).collect();
    let i: Vec<&[u32]> = items.iter().map(Vec::as_slice).collect();
    for senet in [true, false] {
        let model = Dssm::new(common::reference_config(senet), 1, &Device::Cpu).unwrap();
        let mut engine = CpuEngine::new(&model).unwrap();
        let mut step = 0u64;
        let name = format!("senet_{}_b{b}", if senet { "on" } else { "off" });
        group.bench_function(name, |bench| {
            bench.iter(|| {
                step += 1;
                let users = SideIds {
                    rows: b,
                    columns: &u,
                };
                let items = SideIds {
                    rows: b,
                    columns: &i,
                };
                engine
                    .bce_step(&users, &items, &labels, (Some(step), Some(step ^ 1)))
                    .unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
