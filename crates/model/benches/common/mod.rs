//! Shared body of the train-step benchmarks (the binaries differ only in the global allocator).

use candle_core::{Device, Tensor};
use candle_nn::Optimizer;
use criterion::{Criterion, Throughput};
use dssm_model::{
    Activation, Dssm, FeatureSpec, HostColumn, Mode, ModelConfig, SenetConfig, Side, SideBatch,
    Similarity, Squeeze, Temperature, TowerConfig, bce_with_logits,
};

pub const BATCH: usize = 2048;

fn cols(c: &[Vec<u32>]) -> Vec<HostColumn<'_>> {
    c.iter().map(|v| HostColumn::Ids(v)).collect()
}

/// The reference architecture: 4 user and 3 item categorical fields, 8-dim embeddings, 128-64-32 LeakyReLU
/// towers with dropout 0.2, dot similarity.
pub fn reference_config(senet: bool) -> ModelConfig {
    let tower = TowerConfig {
        hidden: vec![128, 64, 32],
        activation: Activation::LeakyRelu,
        dropout: 0.2,
        l2_normalize: false,
        ..TowerConfig::default()
    };
    ModelConfig {
        features: vec![
            FeatureSpec::categorical("user_id", Side::User, 6041),
            FeatureSpec::categorical("gender", Side::User, 3),
            FeatureSpec::categorical("age", Side::User, 8),
            FeatureSpec::categorical("occupation", Side::User, 22),
            FeatureSpec::categorical("movie_id", Side::Item, 3707),
            FeatureSpec::categorical("rating_mean_bucket", Side::Item, 11),
            FeatureSpec::categorical("rating_count_bucket", Side::Item, 11),
        ],
        embedding_dim: 8,
        user_tower: tower.clone(),
        item_tower: tower,
        senet: senet.then_some(SenetConfig {
            reduction: 2,
            squeeze: Squeeze::Mean,
        }),
        similarity: Similarity::Dot,
        temperature: Temperature::Fixed(1.0),
        sequence: None,
    }
}

/// Eight fixed batches built outside the timed loop.
pub fn batches(config: &ModelConfig, device: &Device) -> Vec<(SideBatch, SideBatch, Tensor)> {
    let mut state = 42u64;
    let mut next = |m: u32| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) % m as u64) as u32
    };
    (0..8)
        .map(|_| {
            let user: Vec<Vec<u32>> = [6041, 3, 8, 22]
                .iter()
                .map(|&v| (0..BATCH).map(|_| next(v)).collect())
                .collect();
            let item: Vec<Vec<u32>> = [3707, 11, 11]
                .iter()
                .map(|&v| (0..BATCH).map(|_| next(v)).collect())
                .collect();
            let labels: Vec<f32> = (0..BATCH).map(|_| (next(5) == 0) as u32 as f32).collect();
            (
                SideBatch::from_host(config, Side::User, BATCH, &cols(&user), device).unwrap(),
                SideBatch::from_host(config, Side::Item, BATCH, &cols(&item), device).unwrap(),
                Tensor::from_vec(labels, BATCH, device).unwrap(),
            )
        })
        .collect()
}

/// Forward + backward + Adam step at batch 2048, with and without SENet, fused kernels on and off.
pub fn train_step(c: &mut Criterion, allocator: &str) {
    let device = Device::Cpu;
    let mut group = c.benchmark_group(format!("train_step_{allocator}"));
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(30);
    for senet in [true, false] {
        for fused in [true, false] {
            let config = reference_config(senet);
            let data = batches(&config, &device);
            let mut model = Dssm::new(config, 1, &device).unwrap();
            model.set_fused_kernels(fused);
            let params = candle_nn::ParamsAdamW {
                lr: 1e-3,
                weight_decay: 0.0,
                ..Default::default()
            };
            let mut opt = candle_nn::AdamW::new(model.vars(), params).unwrap();
            let mut step = 0u64;
            let name = format!(
                "senet_{}_{}_b{BATCH}",
                if senet { "on" } else { "off" },
                if fused { "fused" } else { "plain" }
            );
            group.bench_function(name, |b| {
                b.iter(|| {
                    let (u, i, y) = &data[(step % 8) as usize];
                    let logits = model.forward(u, i, Mode::Train { seed: step }).unwrap();
                    let loss = bce_with_logits(&logits, y).unwrap();
                    opt.backward_step(&loss).unwrap();
                    step += 1;
                })
            });
        }
    }
    group.finish();
}
