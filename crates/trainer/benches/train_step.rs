//! Whole training steps on the CPU engine (forward, backward, gradient reduction and the Adam
//! update), samples/s:
//! - `bce_senet_on|off_b2048`: the reference architecture (4 user and 3 item fields, 8-d
//!   embeddings, 128-64-32 LeakyReLU towers with dropout 0.2), batch 2048;
//! - `in_batch_softmax_b512`: the `configs/retrieval.toml` architecture (32-d embeddings, the
//!   last 3 items and genres mean-pooled, 128-64 L2-normalised towers), 512 x 512 scores, log-Q.
//!
//! `cargo bench -p dssm-trainer --bench train_step` (or `cargo xtask bench-train`); set
//! `RAYON_NUM_THREADS` to pick the threads.

use candle_core::Device;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dssm_model::engine::{CpuEngine, SideIds, SoftmaxLoss};
use dssm_model::{
    Activation, Dssm, FeatureSpec, ModelConfig, Pooling, SenetConfig, Side, Squeeze, TowerConfig,
};
use dssm_trainer::config::{OptimizerConfig, OptimizerKind};
use dssm_trainer::optim::Optimizer;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `rows * width` ids below `vocab` from a fixed LCG stream.
fn ids(rows: usize, vocab: u32, width: usize, seed: u64) -> Vec<u32> {
    let mut state = seed;
    (0..rows * width)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) % vocab as u64) as u32
        })
        .collect()
}

fn tower(hidden: &[usize], dropout: f32, l2_normalize: bool) -> TowerConfig {
    TowerConfig {
        hidden: hidden.to_vec(),
        activation: Activation::LeakyRelu,
        dropout,
        l2_normalize,
        ..TowerConfig::default()
    }
}

fn reference(senet: bool) -> ModelConfig {
    let fields = [
        ("user_id", Side::User, 6041),
        ("gender", Side::User, 3),
        ("age", Side::User, 8),
        ("occupation", Side::User, 22),
        ("movie_id", Side::Item, 3707),
        ("rating_mean_bucket", Side::Item, 11),
        ("rating_count_bucket", Side::Item, 11),
    ];
    ModelConfig {
        features: fields
            .iter()
            .map(|&(name, side, vocab)| FeatureSpec::categorical(name, side, vocab))
            .collect(),
        embedding_dim: 8,
        user_tower: tower(&[128, 64, 32], 0.2, false),
        item_tower: tower(&[128, 64, 32], 0.2, false),
        senet: senet.then_some(SenetConfig {
            reduction: 2,
            squeeze: Squeeze::Mean,
        }),
        ..ModelConfig::default()
    }
}

fn retrieval() -> ModelConfig {
    let mut features: Vec<FeatureSpec> = [
        ("user_id", Side::User, 6041),
        ("gender", Side::User, 3),
        ("age", Side::User, 8),
        ("occupation", Side::User, 22),
        ("zip_prefix", Side::User, 101),
        ("movie_id", Side::Item, 3707),
        ("year", Side::Item, 82),
    ]
    .iter()
    .map(|&(name, side, vocab)| FeatureSpec::categorical(name, side, vocab))
    .collect();
    features.insert(
        5,
        FeatureSpec::multi_categorical("history", Side::User, 3707, 3, Pooling::Mean),
    );
    features.push(FeatureSpec::multi_categorical(
        "genres",
        Side::Item,
        19,
        6,
        Pooling::Mean,
    ));
    ModelConfig {
        features,
        embedding_dim: 32,
        user_tower: tower(&[128, 64], 0.0, true),
        item_tower: tower(&[128, 64], 0.0, true),
        senet: None,
        ..ModelConfig::default()
    }
}

/// The ids of every feature of `side` for `rows` examples.
fn side_ids(config: &ModelConfig, side: Side, rows: usize, seed: u64) -> Vec<Vec<u32>> {
    config
        .side_features(side)
        .enumerate()
        .map(|(k, f)| match f.kind {
            dssm_model::FeatureKind::Categorical { vocab_size } => {
                ids(rows, vocab_size as u32, 1, seed + k as u64)
            }
            dssm_model::FeatureKind::MultiCategorical {
                vocab_size,
                max_len,
                ..
            } => ids(rows, vocab_size as u32, max_len, seed + k as u64),
            dssm_model::FeatureKind::Dense { .. } => unreachable!("no dense features here"),
        })
        .collect()
}

/// A model of `config` with its engine and Adam, and one fixed batch of `rows` examples.
struct Case {
    engine: CpuEngine,
    optimizer: Optimizer,
    users: Vec<Vec<u32>>,
    items: Vec<Vec<u32>>,
    rows: usize,
}

impl Case {
    fn new(config: ModelConfig, rows: usize) -> Self {
        let model = Dssm::new(config.clone(), 1, &Device::Cpu).unwrap();
        let adam = OptimizerConfig {
            kind: OptimizerKind::Adam,
            lr: 1e-3,
            ..OptimizerConfig::default()
        };
        Case {
            engine: CpuEngine::new(&model).unwrap(),
            optimizer: Optimizer::new(&adam, model.named_vars().to_vec()),
            users: side_ids(&config, Side::User, rows, 1),
            items: side_ids(&config, Side::Item, rows, 100),
            rows,
        }
    }

    /// One training step: `loss` runs the engine on the batch, then Adam updates the weights.
    fn step(&mut self, loss: impl FnOnce(&mut CpuEngine, &SideIds<'_>, &SideIds<'_>)) {
        let u: Vec<&[u32]> = self.users.iter().map(Vec::as_slice).collect();
        let i: Vec<&[u32]> = self.items.iter().map(Vec::as_slice).collect();
        let users = SideIds {
            rows: self.rows,
            columns: &u,
        };
        let items = SideIds {
            rows: self.rows,
            columns: &i,
        };
        loss(&mut self.engine, &users, &items);
        let (params, grads) = self.engine.params_mut();
        self.optimizer.step_flat(params, grads, 1e-3).unwrap();
    }
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("train_step");
    group.sample_size(30);
    let b = 2048;
    group.throughput(Throughput::Elements(b as u64));
    let labels: Vec<f32> = ids(b, 5, 1, 7)
        .iter()
        .map(|&v| (v == 0) as u32 as f32)
        .collect();
    for senet in [true, false] {
        let mut case = Case::new(reference(senet), b);
        let mut step = 0u64;
        let name = format!("bce_senet_{}_b{b}", if senet { "on" } else { "off" });
        group.bench_function(name, |bench| {
            bench.iter(|| {
                step += 1;
                case.step(|engine, users, items| {
                    let seeds = (Some(step), Some(step));
                    engine.bce_step(users, items, &labels, seeds).unwrap();
                })
            })
        });
    }
    let b = 512;
    group.throughput(Throughput::Elements(b as u64));
    let log_q: Vec<f32> = ids(b, 1000, 1, 9)
        .iter()
        .map(|&v| -(v as f32) / 100.0)
        .collect();
    let mut case = Case::new(retrieval(), b);
    group.bench_function(format!("in_batch_softmax_b{b}"), |bench| {
        bench.iter(|| {
            case.step(|engine, users, items| {
                let loss = SoftmaxLoss {
                    scale: 20.0,
                    column_offsets: Some(&log_q),
                    excluded: &[],
                    uncorrected_target: false,
                    keep_hardest: None,
                };
                engine
                    .in_batch_softmax_step(users, items, &loss, (None, None))
                    .unwrap();
            })
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
