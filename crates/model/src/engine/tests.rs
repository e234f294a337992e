//! The engine against Candle's autograd on the same weights, batches and dropout masks.

use candle_core::{Device, Tensor};

use super::*;
use crate::config::{
    Activation, FeatureSpec, ModelConfig, Pooling, SenetConfig, Squeeze, TowerConfig,
};
use crate::{HostColumn, Mode, SideBatch, bce_with_logits, softmax_cross_entropy};

/// Two tower layouts: SENet (mean) with dropout and LeakyReLU; SENet (max) with tanh, L2
/// normalisation and three layers. Both mix categorical and multi-valued (mean, sum) fields.
fn config(variant: usize) -> ModelConfig {
    let tower = |hidden: Vec<usize>, activation, dropout, l2_normalize| TowerConfig {
        hidden,
        activation,
        dropout,
        l2_normalize,
        ..TowerConfig::default()
    };
    let (user_tower, item_tower, squeeze) = match variant {
        0 => (
            tower(vec![16, 8], Activation::LeakyRelu, 0.2, false),
            tower(vec![12, 8], Activation::LeakyRelu, 0.2, false),
            Squeeze::Mean,
        ),
        _ => (
            tower(vec![16, 12, 8], Activation::Tanh, 0.0, true),
            tower(vec![8], Activation::Gelu, 0.0, true),
            Squeeze::Max,
        ),
    };
    ModelConfig {
        features: vec![
            FeatureSpec::categorical("user_id", Side::User, 40),
            FeatureSpec::categorical("gender", Side::User, 3),
            FeatureSpec::multi_categorical("history", Side::User, 30, 4, Pooling::Mean),
            FeatureSpec::categorical("movie_id", Side::Item, 30),
            FeatureSpec::multi_categorical("genres", Side::Item, 6, 3, Pooling::Sum),
        ],
        embedding_dim: 4,
        user_tower,
        item_tower,
        senet: Some(SenetConfig {
            reduction: 2,
            squeeze,
        }),
        ..ModelConfig::default()
    }
}

/// Deterministic pseudo-random ids below `vocab`; multi-valued rows get some padding (0).
fn ids(rows: usize, vocab: u32, width: usize, seed: u64) -> Vec<u32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..rows * width)
        .map(|k| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let id = (x % vocab as u64) as u32;
            if width > 1 && k % width == width - 1 && x.is_multiple_of(3) {
                0
            } else {
                id
            }
        })
        .collect()
}

struct Batch {
    users: Vec<Vec<u32>>,
    items: Vec<Vec<u32>>,
    labels: Vec<f32>,
}

fn batch(users: usize, items: usize, seed: u64) -> Batch {
    Batch {
        users: vec![
            ids(users, 40, 1, seed),
            ids(users, 3, 1, seed + 1),
            ids(users, 30, 4, seed + 2),
        ],
        items: vec![ids(items, 30, 1, seed + 3), ids(items, 6, 3, seed + 4)],
        labels: ids(users, 2, 1, seed + 5)
            .into_iter()
            .map(|v| v as f32)
            .collect(),
    }
}

/// A model of `config` whose every weight, biases included, is random in [-0.3, 0.3).
fn random_model(config: ModelConfig, seed: u64) -> Dssm {
    let model = Dssm::new(config, seed, &Device::Cpu).unwrap();
    let mut engine = CpuEngine::new(&model).unwrap();
    let noise = ids(engine.params().len(), 6000, 1, seed);
    let (params, _) = engine.params_mut();
    for (p, &n) in params.iter_mut().zip(&noise) {
        *p = n as f32 / 10_000.0 - 0.3;
    }
    engine.store(&model).unwrap();
    model
}

fn side_ids<'a>(columns: &'a [&'a [u32]], rows: usize) -> SideIds<'a> {
    SideIds { rows, columns }
}

fn side_batch(model: &Dssm, side: Side, rows: usize, columns: &[Vec<u32>]) -> SideBatch {
    let host: Vec<HostColumn<'_>> = columns.iter().map(|c| HostColumn::Ids(c)).collect();
    SideBatch::from_host(model.config(), side, rows, &host, &Device::Cpu).unwrap()
}

/// Candle's gradient of `loss`, flat in the engine's layout (zeros where a variable has none).
fn candle_grads(model: &Dssm, loss: &Tensor) -> Vec<f32> {
    let grads = loss.backward().unwrap();
    let mut flat = Vec::new();
    for (_, var) in model.named_vars() {
        match grads.get(var.as_tensor()) {
            Some(g) => flat.extend(g.flatten_all().unwrap().to_vec1::<f32>().unwrap()),
            None => flat.extend(std::iter::repeat_n(0.0, var.elem_count())),
        }
    }
    flat
}

/// Every gradient within 1e-5 of Candle's relative to the variable's largest gradient, plus
/// 1e-6 of the model's largest (float noise where the exact gradient is zero: the last bias of an
/// in-batch softmax item tower sums softmax rows, which sum to 0).
fn assert_close(engine: &CpuEngine, expected: &[f32], what: &str) {
    let global = expected.iter().fold(0f32, |m, g| m.max(g.abs()));
    assert!(global > 0.0, "{what}: Candle's gradient is zero");
    for slot in engine.slots() {
        let scale = expected[slot.range()]
            .iter()
            .fold(0f32, |m, g| m.max(g.abs()));
        for k in slot.range() {
            let (a, b) = (engine.grads()[k], expected[k]);
            assert!(
                (a - b).abs() <= 1e-5 * scale + 1e-6 * global,
                "{what}: {} [{}]: engine {a} vs Candle {b}",
                slot.name,
                k - slot.offset
            );
        }
    }
}

#[test]
fn bce_step_matches_candle_loss_and_gradients() {
    for variant in [0, 1] {
        let model = random_model(config(variant), 3 + variant as u64);
        let rows = 300; // two shards, the second partial
        let data = batch(rows, rows, 11);
        let seed = 77;
        let logits = model
            .forward(
                &side_batch(&model, Side::User, rows, &data.users),
                &side_batch(&model, Side::Item, rows, &data.items),
                Mode::Train { seed },
            )
            .unwrap();
        let targets = Tensor::from_slice(&data.labels, rows, &Device::Cpu).unwrap();
        let loss = bce_with_logits(&logits, &targets).unwrap();
        let expected_loss = loss.to_scalar::<f32>().unwrap() as f64;
        let expected = candle_grads(&model, &loss);

        let mut engine = CpuEngine::new(&model).unwrap();
        let u: Vec<&[u32]> = data.users.iter().map(Vec::as_slice).collect();
        let i: Vec<&[u32]> = data.items.iter().map(Vec::as_slice).collect();
        let value = engine
            .bce_step(
                &side_ids(&u, rows),
                &side_ids(&i, rows),
                &data.labels,
                (Some(seed), Some(seed)),
            )
            .unwrap();
        assert!(
            (value - expected_loss).abs() < 1e-5,
            "variant {variant}: loss {value} vs {expected_loss}"
        );
        assert_close(&engine, &expected, &format!("bce, variant {variant}"));
    }
}

#[test]
fn in_batch_softmax_step_matches_candle_with_offsets_and_exclusions() {
    for variant in [0, 1] {
        let model = random_model(config(variant), 5);
        // 300 users against their 300 items plus 40 shared negatives.
        let (b, c) = (300, 340);
        let data = batch(b, c, 21);
        let offsets: Vec<f32> = ids(c, 50, 1, 9).iter().map(|&v| v as f32 / 20.0).collect();
        let excluded = [(0u32, 5u32), (17, 320), (299, 0), (140, 141)];
        let scale = 20.0;
        let (su, si) = (31, 32);
        let u = model
            .encode_users(
                &side_batch(&model, Side::User, b, &data.users),
                Mode::Train { seed: su },
            )
            .unwrap();
        let v = model
            .encode_items(
                &side_batch(&model, Side::Item, c, &data.items),
                Mode::Train { seed: si },
            )
            .unwrap();
        let scores = model.score_matrix(&u, &v).unwrap();
        let offsets_t = Tensor::from_slice(&offsets, c, &Device::Cpu).unwrap();
        let targets: Vec<u32> = (0..b as u32).collect();
        let loss =
            softmax_cross_entropy(&scores, scale, Some(&offsets_t), &excluded, &targets).unwrap();
        let expected_loss = loss.to_scalar::<f32>().unwrap() as f64;
        let expected = candle_grads(&model, &loss);

        let mut engine = CpuEngine::new(&model).unwrap();
        let uc: Vec<&[u32]> = data.users.iter().map(Vec::as_slice).collect();
        let ic: Vec<&[u32]> = data.items.iter().map(Vec::as_slice).collect();
        let spec = SoftmaxLoss {
            scale: scale as f32,
            column_offsets: Some(&offsets),
            excluded: &excluded,
            uncorrected_target: false,
            keep_hardest: None,
        };
        let value = engine
            .in_batch_softmax_step(
                &side_ids(&uc, b),
                &side_ids(&ic, c),
                &spec,
                (Some(su), Some(si)),
            )
            .unwrap();
        assert!(
            (value - expected_loss).abs() < 1e-4 * expected_loss.max(1.0),
            "variant {variant}: loss {value} vs {expected_loss}"
        );
        assert_close(&engine, &expected, &format!("softmax, variant {variant}"));
    }
}

#[test]
fn in_batch_softmax_step_matches_candle_with_uncorrected_targets_and_hardest_negatives() {
    let model = random_model(config(0), 6);
    let (b, c) = (200, 230);
    let data = batch(b, c, 22);
    let offsets: Vec<f32> = ids(c, 50, 1, 10).iter().map(|&v| v as f32 / 20.0).collect();
    let excluded = [(0u32, 5u32), (17, 220), (199, 0)];
    let (scale, keep) = (20.0, 12);
    let (su, si) = (41, 42);
    let u = model
        .encode_users(
            &side_batch(&model, Side::User, b, &data.users),
            Mode::Train { seed: su },
        )
        .unwrap();
    let v = model
        .encode_items(
            &side_batch(&model, Side::Item, c, &data.items),
            Mode::Train { seed: si },
        )
        .unwrap();
    let scores = model.score_matrix(&u, &v).unwrap();
    // The reference: per-entry offsets without the diagonal, and every entry but the target and
    // the `keep` highest other logits excluded.
    let host: Vec<Vec<f32>> = scores.to_vec2().unwrap();
    let mut entry_offsets = vec![0f32; b * c];
    let mut all_excluded = excluded.to_vec();
    for (i, row) in host.iter().enumerate() {
        let mut z: Vec<f32> = row
            .iter()
            .zip(&offsets)
            .map(|(&s, &o)| s * scale as f32 - o)
            .collect();
        z[i] = row[i] * scale as f32;
        for &(r, j) in &excluded {
            if r as usize == i {
                z[j as usize] = f32::NEG_INFINITY;
            }
        }
        crate::keep_hardest(&mut z, i, keep);
        for (j, &value) in z.iter().enumerate() {
            entry_offsets[i * c + j] = if j == i { 0.0 } else { offsets[j] };
            if value == f32::NEG_INFINITY && !excluded.contains(&(i as u32, j as u32)) {
                all_excluded.push((i as u32, j as u32));
            }
        }
    }
    let entry_offsets = Tensor::from_vec(entry_offsets, (b, c), &Device::Cpu).unwrap();
    let targets: Vec<u32> = (0..b as u32).collect();
    let loss = softmax_cross_entropy(
        &scores,
        scale,
        Some(&entry_offsets),
        &all_excluded,
        &targets,
    )
    .unwrap();
    let expected_loss = loss.to_scalar::<f32>().unwrap() as f64;
    let expected = candle_grads(&model, &loss);

    let mut engine = CpuEngine::new(&model).unwrap();
    let uc: Vec<&[u32]> = data.users.iter().map(Vec::as_slice).collect();
    let ic: Vec<&[u32]> = data.items.iter().map(Vec::as_slice).collect();
    let spec = SoftmaxLoss {
        scale: scale as f32,
        column_offsets: Some(&offsets),
        excluded: &excluded,
        uncorrected_target: true,
        keep_hardest: Some(keep),
    };
    let value = engine
        .in_batch_softmax_step(
            &side_ids(&uc, b),
            &side_ids(&ic, c),
            &spec,
            (Some(su), Some(si)),
        )
        .unwrap();
    assert!(
        (value - expected_loss).abs() < 1e-4 * expected_loss.max(1.0),
        "loss {value} vs {expected_loss}"
    );
    assert_close(&engine, &expected, "softmax, uncorrected targets, hardest");
}

/// Loss and gradients of a BCE step, then of an in-batch softmax step, on the same batch.
type TwoSteps = (f64, Vec<f32>, f64, Vec<f32>);

fn two_steps(engine: &mut CpuEngine, data: &Batch, rows: usize) -> TwoSteps {
    let u: Vec<&[u32]> = data.users.iter().map(Vec::as_slice).collect();
    let i: Vec<&[u32]> = data.items.iter().map(Vec::as_slice).collect();
    let (users, items) = (side_ids(&u, rows), side_ids(&i, rows));
    let bce = engine
        .bce_step(&users, &items, &data.labels, (Some(4), Some(5)))
        .unwrap();
    let bce_grads = engine.grads().to_vec();
    let spec = SoftmaxLoss {
        scale: 10.0,
        column_offsets: None,
        excluded: &[],
        uncorrected_target: false,
        keep_hardest: None,
    };
    let softmax = engine
        .in_batch_softmax_step(&users, &items, &spec, (None, None))
        .unwrap();
    (bce, bce_grads, softmax, engine.grads().to_vec())
}

fn assert_same_bits(a: &TwoSteps, b: &TwoSteps, what: &str) {
    assert_eq!(a.0.to_bits(), b.0.to_bits(), "{what}: bce loss");
    assert!(a.1 == b.1, "{what}: bce gradients differ");
    assert_eq!(a.2.to_bits(), b.2.to_bits(), "{what}: softmax loss");
    assert!(a.3 == b.3, "{what}: softmax gradients differ");
}

#[test]
fn steps_give_the_same_bits_on_any_number_of_threads() {
    let model = Dssm::new(config(0), 9, &Device::Cpu).unwrap();
    let rows = 1300; // three shards, the last partial
    let data = batch(rows, rows, 3);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let mut engine = CpuEngine::new(&model).unwrap();
        pool.install(|| two_steps(&mut engine, &data, rows))
    };
    let one = run(1);
    for threads in [2, 3] {
        assert_same_bits(&one, &run(threads), &format!("{threads} threads"));
    }
}

#[test]
fn a_smaller_batch_after_a_larger_one_gives_a_fresh_engines_result() {
    // Buffers grown by a large batch must not leak into a later, smaller one (an epoch's last).
    let model = random_model(config(0), 12);
    let (big, small) = (batch(1100, 1100, 1), batch(37, 37, 2));
    let mut reused = CpuEngine::new(&model).unwrap();
    two_steps(&mut reused, &big, 1100);
    let after_big = two_steps(&mut reused, &small, 37);
    let fresh = two_steps(&mut CpuEngine::new(&model).unwrap(), &small, 37);
    assert_same_bits(&after_big, &fresh, "after a larger batch");
}

#[test]
fn encode_matches_candle_and_store_round_trips() {
    let model = random_model(config(1), 4);
    let rows = 270;
    let data = batch(rows, rows, 8);
    let mut engine = CpuEngine::new(&model).unwrap();
    let u: Vec<&[u32]> = data.users.iter().map(Vec::as_slice).collect();
    let mut out = vec![0f32; rows * 8];
    engine
        .encode(Side::User, &side_ids(&u, rows), &mut out)
        .unwrap();
    let expected = model
        .encode_users(
            &side_batch(&model, Side::User, rows, &data.users),
            Mode::Eval,
        )
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    for (a, b) in out.iter().zip(&expected) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
    // Changed weights written back into the model give the model those weights.
    let (params, _) = engine.params_mut();
    params.iter_mut().for_each(|p| *p *= 0.5);
    engine.store(&model).unwrap();
    let reloaded = CpuEngine::new(&model).unwrap();
    assert!(reloaded.params() == engine.params());
}

#[test]
fn bad_ids_name_the_feature_and_other_models_are_unsupported() {
    let model = Dssm::new(config(0), 1, &Device::Cpu).unwrap();
    let mut engine = CpuEngine::new(&model).unwrap();
    let users: [&[u32]; 3] = [&[1, 40], &[0, 1], &[0; 8]];
    let items: [&[u32]; 2] = [&[1, 2], &[0; 6]];
    let err = engine
        .bce_step(
            &side_ids(&users, 2),
            &side_ids(&items, 2),
            &[1.0, 0.0],
            (None, None),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("user_id") && err.contains("40"), "{err}");

    let mut cosine = config(0);
    cosine.similarity = crate::config::Similarity::Cosine;
    assert!(matches!(
        check_supported(&cosine),
        Err(ModelError::Unsupported { .. })
    ));
    let mut dense = config(0);
    dense.senet = None;
    dense
        .features
        .push(FeatureSpec::dense("age", Side::User, 2));
    let err = check_supported(&dense).unwrap_err().to_string();
    assert!(err.contains("dense feature `age`"), "{err}");
}
