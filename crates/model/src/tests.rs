//! Unit tests of the model.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::Optimizer;

use crate::*;

fn reference_config() -> ModelConfig {
    let u = Side::User;
    let i = Side::Item;
    ModelConfig {
        features: vec![
            FeatureSpec::categorical("user_id", u, 6041),
            FeatureSpec::categorical("gender", u, 3),
            FeatureSpec::categorical("age", u, 8),
            FeatureSpec::categorical("occupation", u, 22),
            FeatureSpec::categorical("movie_id", i, 3707),
            FeatureSpec::categorical("rating_mean_bucket", i, 11),
            FeatureSpec::categorical("rating_count_bucket", i, 11),
        ],
        ..ModelConfig::default()
    }
}

/// A small config with every feature kind.
fn mixed_config() -> ModelConfig {
    let u = Side::User;
    let i = Side::Item;
    ModelConfig {
        features: vec![
            FeatureSpec::categorical("user_id", u, 20),
            FeatureSpec::dense("age", u, 2),
            FeatureSpec::categorical("gender", u, 3),
            FeatureSpec::categorical("movie_id", i, 15),
            FeatureSpec::multi_categorical("genres", i, 6, 3, Pooling::Mean),
            FeatureSpec::multi_categorical("tags", i, 5, 2, Pooling::Sum),
        ],
        embedding_dim: 4,
        user_tower: TowerConfig {
            hidden: vec![6, 5],
            activation: Activation::Gelu,
            dropout: 0.3,
            l2_normalize: false,
            ..TowerConfig::default()
        },
        item_tower: TowerConfig {
            hidden: vec![7, 5],
            activation: Activation::Tanh,
            dropout: 0.3,
            l2_normalize: true,
            ..TowerConfig::default()
        },
        senet: Some(SenetConfig {
            reduction: 2,
            squeeze: Squeeze::Mean,
        }),
        similarity: Similarity::Dot,
        temperature: Temperature::Learned { init: 0.5 },
        sequence: None,
    }
}

fn mixed_batches(config: &ModelConfig, b: usize, device: &Device) -> (SideBatch, SideBatch) {
    let user_id: Vec<u32> = (0..b as u32).map(|r| (r * 7 + 1) % 20).collect();
    let age: Vec<f32> = (0..b * 2).map(|k| (k as f32 * 0.37).sin()).collect();
    let gender: Vec<u32> = (0..b as u32).map(|r| r % 3).collect();
    let movie: Vec<u32> = (0..b as u32).map(|r| (r * 5 + 2) % 15).collect();
    let genres: Vec<u32> = (0..b * 3)
        .map(|k| if k % 4 == 3 { 0 } else { (k as u32 * 3) % 6 })
        .collect();
    let mut tags: Vec<u32> = (0..b * 2).map(|k| (k as u32 * 2 + 1) % 5).collect();
    tags[0] = 0;
    tags[1] = 0; // An all-padding row.
    let users = SideBatch::from_host(
        config,
        Side::User,
        b,
        &[
            HostColumn::Ids(&user_id),
            HostColumn::Dense(&age),
            HostColumn::Ids(&gender),
        ],
        device,
    )
    .unwrap();
    let items = SideBatch::from_host(
        config,
        Side::Item,
        b,
        &[
            HostColumn::Ids(&movie),
            HostColumn::Ids(&genres),
            HostColumn::Ids(&tags),
        ],
        device,
    )
    .unwrap();
    (users, items)
}

fn reference_batches(
    config: &ModelConfig,
    b: usize,
    seed: u64,
    device: &Device,
) -> (SideBatch, SideBatch, Tensor) {
    let mut s = seed;
    let mut next = |m: u32| {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 33) % m as u64) as u32
    };
    let cols = |next: &mut dyn FnMut(u32) -> u32, vocabs: &[u32]| -> Vec<Vec<u32>> {
        vocabs
            .iter()
            .map(|&v| (0..b).map(|_| next(v)).collect())
            .collect()
    };
    let u = cols(&mut next, &[6041, 3, 8, 22]);
    let i = cols(&mut next, &[3707, 11, 11]);
    let labels: Vec<f32> = (0..b).map(|_| next(2) as f32).collect();
    (
        SideBatch::from_host(config, Side::User, b, &host(&u), device).unwrap(),
        SideBatch::from_host(config, Side::Item, b, &host(&i), device).unwrap(),
        Tensor::from_vec(labels, b, device).unwrap(),
    )
}

fn host(c: &[Vec<u32>]) -> Vec<HostColumn<'_>> {
    c.iter().map(|v| HostColumn::Ids(v)).collect()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

fn to_vec(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

#[test]
fn output_shapes() {
    let dev = Device::Cpu;
    let model = Dssm::new(reference_config(), 1, &dev).unwrap();
    let (u, i, _) = reference_batches(model.config(), 16, 3, &dev);
    assert_eq!(
        model.encode_users(&u, Mode::Eval).unwrap().dims(),
        &[16, 32]
    );
    assert_eq!(
        model
            .encode_items(&i, Mode::Train { seed: 1 })
            .unwrap()
            .dims(),
        &[16, 32]
    );
    assert_eq!(model.forward(&u, &i, Mode::Eval).unwrap().dims(), &[16]);
    let ue = model.encode_users(&u, Mode::Eval).unwrap();
    let ie = model
        .encode_items(&i, Mode::Eval)
        .unwrap()
        .narrow(0, 0, 5)
        .unwrap();
    assert_eq!(model.score_matrix(&ue, &ie).unwrap().dims(), &[16, 5]);
    assert_eq!(
        model.senet_weights(Side::Item, &i).unwrap().unwrap().dims(),
        &[16, 3]
    );

    let config = mixed_config();
    let model = Dssm::new(config.clone(), 1, &dev).unwrap();
    let (u, i) = mixed_batches(&config, 9, &dev);
    assert_eq!(
        model
            .forward(&u, &i, Mode::Train { seed: 4 })
            .unwrap()
            .dims(),
        &[9]
    );
    let items = model.encode_items(&i, Mode::Eval).unwrap();
    for norm in to_vec(&items.sqr().unwrap().sum(1).unwrap()) {
        assert!(
            (norm - 1.0).abs() < 1e-5,
            "l2-normalised item norm^2 {norm}"
        );
    }
}

#[test]
fn multi_valued_pooling_and_field_order() {
    let dev = Device::Cpu;
    let config = mixed_config();
    let model = Dssm::new(config.clone(), 5, &dev).unwrap();
    let (_, items) = mixed_batches(&config, 4, &dev);
    let fields = &model
        .item
        .field_embeddings(&items, DType::F32, &dev)
        .unwrap()[0];
    assert_eq!(fields.dims(), &[4, 3, 4]);
    let table = model.item.groups[0]
        .table
        .as_ref()
        .unwrap()
        .as_tensor()
        .clone();
    let row = |r: u32| table.get(r as usize).unwrap();
    let genres = to_vec(&items.columns[1]);
    let tags = to_vec(&items.columns[2]);
    for b in 0..4 {
        // Field 0: movie_id, rows 0..15.
        let movie = items.columns[0].get(b).unwrap().to_scalar::<u32>().unwrap();
        assert_eq!(
            to_vec(&fields.get(b).unwrap().get(0).unwrap()),
            to_vec(&row(movie))
        );
        // Field 1: genres, mean over non-zero ids, rows 15..21.
        let ids: Vec<u32> = genres[b * 3..b * 3 + 3]
            .iter()
            .map(|&x| x as u32)
            .filter(|&x| x != 0)
            .collect();
        let mut expected = Tensor::zeros(4, DType::F32, &dev).unwrap();
        for &id in &ids {
            expected = (expected + row(15 + id)).unwrap();
        }
        if !ids.is_empty() {
            expected = (expected / ids.len() as f64).unwrap();
        }
        assert!(max_abs_diff(&fields.get(b).unwrap().get(1).unwrap(), &expected) < 1e-6);
        // Field 2: tags, sum, rows 21..26; example 0 is all padding.
        let ids: Vec<u32> = tags[b * 2..b * 2 + 2]
            .iter()
            .map(|&x| x as u32)
            .filter(|&x| x != 0)
            .collect();
        let mut expected = Tensor::zeros(4, DType::F32, &dev).unwrap();
        for &id in &ids {
            expected = (expected + row(21 + id)).unwrap();
        }
        assert!(max_abs_diff(&fields.get(b).unwrap().get(2).unwrap(), &expected) < 1e-6);
        if b == 0 {
            assert!(
                to_vec(&fields.get(0).unwrap().get(2).unwrap())
                    .iter()
                    .all(|&x| x == 0.0)
            );
        }
    }
}

#[test]
fn senet_weights_are_per_example_and_in_unit_interval() {
    let dev = Device::Cpu;
    let model = Dssm::new(reference_config(), 2, &dev).unwrap();
    let (u, _, _) = reference_batches(model.config(), 8, 9, &dev);
    let w = model.senet_weights(Side::User, &u).unwrap().unwrap();
    assert_eq!(w.dims(), &[8, 4]);
    let values = to_vec(&w);
    assert!(values.iter().all(|&x| x > 0.0 && x < 1.0));
    let first = &values[0..4];
    assert!(
        (1..8).any(|b| values[b * 4..b * 4 + 4] != *first),
        "weights identical across the batch"
    );
    let off = Dssm::new(
        ModelConfig {
            senet: None,
            ..reference_config()
        },
        2,
        &dev,
    )
    .unwrap();
    assert!(off.senet_weights(Side::User, &u).unwrap().is_none());
}

#[test]
fn cosine_scores_lie_in_unit_interval() {
    let dev = Device::Cpu;
    let config = ModelConfig {
        similarity: Similarity::Cosine,
        temperature: Temperature::Fixed(0.1),
        ..reference_config()
    };
    let model = Dssm::new(config, 3, &dev).unwrap();
    let (u, i, _) = reference_batches(model.config(), 64, 1, &dev);
    let ue = model.encode_users(&u, Mode::Eval).unwrap();
    let ie = model.encode_items(&i, Mode::Eval).unwrap();
    let cos = to_vec(&model.similarity_pairs(&ue, &ie).unwrap());
    assert!(cos.iter().all(|&c| (-1.0 - 1e-6..=1.0 + 1e-6).contains(&c)));
    let logits = to_vec(&model.score_pairs(&ue, &ie).unwrap());
    for (c, l) in cos.iter().zip(&logits) {
        assert!((c / 0.1 - l).abs() < 1e-4);
    }
    let m = to_vec(&model.score_matrix(&ue, &ie).unwrap());
    assert!((m[0] - logits[0]).abs() < 1e-4 && (m[65] - logits[1]).abs() < 1e-4);
    assert!(m.iter().all(|&x| x.abs() <= 10.0 + 1e-4));
}

/// Loss of the mixed model on fixed batches (train mode, so dropout masks are part of the function).
fn mixed_loss(model: &Dssm, u: &SideBatch, i: &SideBatch, y: &Tensor) -> Tensor {
    let logits = model.forward(u, i, Mode::Train { seed: 11 }).unwrap();
    bce_with_logits(&logits, y).unwrap()
}

#[test]
fn gradients_match_finite_differences() {
    let dev = Device::Cpu;
    let config = mixed_config();
    for fused in [true, false] {
        let mut model = Dssm::new_with_dtype(config.clone(), 7, &dev, DType::F64).unwrap();
        model.set_fused_kernels(fused);
        let (u, i) = mixed_batches(&config, 6, &dev);
        let y = Tensor::new(&[1f64, 0.0, 1.0, 1.0, 0.0, 0.0], &dev).unwrap();
        let loss = mixed_loss(&model, &u, &i, &y);
        let grads = loss.backward().unwrap();
        let h = 1e-6;
        let mut checked = 0;
        for (name, var) in model.named_vars() {
            let g = grads
                .get(var.as_tensor())
                .map(to_vec)
                .unwrap_or_else(|| vec![0.0; var.elem_count()]);
            let base = to_vec(var.as_tensor());
            // A few elements of each tensor, among them the largest gradient.
            let largest = (0..g.len())
                .max_by(|&a, &b| g[a].abs().total_cmp(&g[b].abs()))
                .unwrap();
            for k in [0, base.len() / 2, base.len() - 1, largest] {
                let at = |delta: f64| {
                    let mut w = base.clone();
                    w[k] += delta;
                    var.set(&Tensor::from_vec(w, var.shape(), &dev).unwrap())
                        .unwrap();
                    mixed_loss(&model, &u, &i, &y).to_scalar::<f64>().unwrap()
                };
                let numeric = (at(h) - at(-h)) / (2.0 * h);
                var.set(&Tensor::from_vec(base.clone(), var.shape(), &dev).unwrap())
                    .unwrap();
                let tol = 1e-6 + 1e-4 * numeric.abs().max(g[k].abs());
                assert!(
                    (numeric - g[k]).abs() < tol,
                    "{name}[{k}] fused={fused}: autograd {} vs numeric {numeric}",
                    g[k]
                );
                checked += 1;
            }
        }
        assert!(checked > 40);
        assert!(
            model
                .named_vars()
                .iter()
                .any(|(n, _)| n == "user.senet.fc1.weight")
        );
    }
}

#[test]
fn fused_and_portable_kernels_agree() {
    let dev = Device::Cpu;
    let config = mixed_config();
    let (u, i) = mixed_batches(&config, 10, &dev);
    let y = Tensor::new(&[1f32, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0], &dev).unwrap();
    let mut results = Vec::new();
    for fused in [true, false] {
        let mut model = Dssm::new(config.clone(), 7, &dev).unwrap();
        model.set_fused_kernels(fused);
        let logits = model.forward(&u, &i, Mode::Train { seed: 3 }).unwrap();
        let loss = if fused {
            bce_with_logits(&logits, &y).unwrap()
        } else {
            crate::ops::bce_portable(&logits, &y).unwrap()
        };
        let grads = loss.backward().unwrap();
        let g: Vec<Tensor> = model
            .vars()
            .iter()
            .map(|v| grads.get(v.as_tensor()).unwrap().clone())
            .collect();
        results.push((logits, g));
    }
    assert!(max_abs_diff(&results[0].0, &results[1].0) < 1e-5);
    for (a, b) in results[0].1.iter().zip(&results[1].1) {
        assert!(max_abs_diff(a, b) < 1e-5);
    }
}

#[test]
fn save_load_round_trip_is_bit_identical() {
    let dev = Device::Cpu;
    let dir = tempfile::tempdir().unwrap();
    for config in [mixed_config(), reference_config()] {
        let model = Dssm::new(config.clone(), 21, &dev).unwrap();
        // Change the weights away from the seeded init so loading must really read them.
        for v in model.vars() {
            v.set(&(v.as_tensor() * 1.5).unwrap()).unwrap();
        }
        model.save(dir.path()).unwrap();
        let loaded = Dssm::load(dir.path(), &dev).unwrap();
        assert_eq!(loaded.config(), &config);
        let (u, i) = if config == mixed_config() {
            mixed_batches(&config, 7, &dev)
        } else {
            let (u, i, _) = reference_batches(&config, 7, 2, &dev);
            (u, i)
        };
        let a = model
            .forward(&u, &i, Mode::Eval)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let b = loaded
            .forward(&u, &i, Mode::Eval)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(
            a.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            b.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
    }
    assert!(dir.path().join(WEIGHTS_FILE).exists() && dir.path().join(CONFIG_FILE).exists());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".tmp")
        })
        .collect();
    assert!(leftovers.is_empty());
    // A weights file of another model is refused.
    let other = dir.path().join("other");
    Dssm::new(reference_config(), 1, &dev)
        .unwrap()
        .save(&other)
        .unwrap();
    std::fs::copy(dir.path().join(WEIGHTS_FILE), other.join(WEIGHTS_FILE)).unwrap();
    std::fs::write(
        other.join(CONFIG_FILE),
        serde_json::to_string(&mixed_config()).unwrap(),
    )
    .unwrap();
    assert!(matches!(
        Dssm::load(&other, &dev),
        Err(ModelError::Checkpoint { .. })
    ));
}

#[test]
fn bce_is_finite_and_exact_at_extreme_logits() {
    let dev = Device::Cpu;
    let x = [30f64, -30.0, 100.0, -100.0, 30.0, -100.0, 0.0];
    let y = [1f64, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0];
    let expected = |x: f64, y: f64| x.max(0.0) - x * y + (-x.abs()).exp().ln_1p();
    for dtype in [DType::F32, DType::F64] {
        for k in 0..x.len() {
            let xt = Tensor::new(&[x[k]], &dev).unwrap().to_dtype(dtype).unwrap();
            let yt = Tensor::new(&[y[k]], &dev).unwrap().to_dtype(dtype).unwrap();
            for loss in [
                bce_with_logits(&xt, &yt).unwrap(),
                crate::ops::bce_portable(&xt, &yt).unwrap(),
            ] {
                let l = loss
                    .to_dtype(DType::F64)
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap();
                assert!(l.is_finite());
                assert!(
                    (l - expected(x[k], y[k])).abs() <= 1e-6 * expected(x[k], y[k]).max(1.0),
                    "x={} y={} loss={l}",
                    x[k],
                    y[k]
                );
            }
        }
        // Gradient: (sigmoid(x) - y) / N, finite.
        let var =
            Var::from_tensor(&Tensor::new(&x, &dev).unwrap().to_dtype(dtype).unwrap()).unwrap();
        let yt = Tensor::new(&y, &dev).unwrap().to_dtype(dtype).unwrap();
        let grads = bce_with_logits(var.as_tensor(), &yt)
            .unwrap()
            .backward()
            .unwrap();
        let g = to_vec(grads.get(var.as_tensor()).unwrap());
        for k in 0..x.len() {
            let expected = (1.0 / (1.0 + (-x[k]).exp()) - y[k]) / x.len() as f64;
            assert!(g[k].is_finite() && (g[k] - expected).abs() < 1e-6);
        }
    }
}

#[test]
fn seeds_fix_weights_and_dropout_masks() {
    let dev = Device::Cpu;
    let a = Dssm::new(mixed_config(), 5, &dev).unwrap();
    let b = Dssm::new(mixed_config(), 5, &dev).unwrap();
    let c = Dssm::new(mixed_config(), 6, &dev).unwrap();
    for ((na, va), ((_, vb), (_, vc))) in a
        .named_vars()
        .iter()
        .zip(b.named_vars().iter().zip(c.named_vars()))
    {
        let (xa, xb, xc) = (to_vec(va), to_vec(vb), to_vec(vc));
        assert_eq!(xa, xb, "{na}");
        if !na.ends_with(".bias") && na != "temperature.log" {
            assert_ne!(xa, xc, "{na}");
        }
    }
    let (u, _) = mixed_batches(&mixed_config(), 32, &dev);
    let run = |seed| to_vec(&a.encode_users(&u, Mode::Train { seed }).unwrap());
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2));
    assert_ne!(run(1), to_vec(&a.encode_users(&u, Mode::Eval).unwrap()));
    assert_eq!(
        to_vec(&a.encode_users(&u, Mode::Eval).unwrap()),
        to_vec(&b.encode_users(&u, Mode::Eval).unwrap())
    );

    let m1 = crate::dropout::dropout_mask(9, Side::User, 0, 100_000, 0.2);
    assert_eq!(
        m1,
        crate::dropout::dropout_mask(9, Side::User, 0, 100_000, 0.2)
    );
    assert_ne!(
        m1,
        crate::dropout::dropout_mask(9, Side::Item, 0, 100_000, 0.2)
    );
    assert_ne!(
        m1,
        crate::dropout::dropout_mask(9, Side::User, 1, 100_000, 0.2)
    );
    let dropped = m1.iter().filter(|&&m| m == 0.0).count() as f64 / m1.len() as f64;
    assert!((dropped - 0.2).abs() < 0.01, "dropped fraction {dropped}");
    assert!(m1.iter().all(|&m| m == 0.0 || m == 1.25));
}

#[test]
fn learns_a_synthetic_task() {
    // Label = 1 when the user's and the item's hidden group agree; the ids alone reveal the group.
    let dev = Device::Cpu;
    let config = ModelConfig {
        features: vec![
            FeatureSpec::categorical("user_id", Side::User, 64),
            FeatureSpec::categorical("user_bucket", Side::User, 8),
            FeatureSpec::categorical("item_id", Side::Item, 64),
            FeatureSpec::categorical("item_bucket", Side::Item, 8),
        ],
        user_tower: TowerConfig {
            hidden: vec![32, 16],
            dropout: 0.1,
            ..TowerConfig::default()
        },
        item_tower: TowerConfig {
            hidden: vec![32, 16],
            dropout: 0.1,
            ..TowerConfig::default()
        },
        ..ModelConfig::default()
    };
    let model = Dssm::new(config.clone(), 1, &dev).unwrap();
    let mut opt = candle_nn::AdamW::new(
        model.vars(),
        candle_nn::ParamsAdamW {
            lr: 0.01,
            weight_decay: 0.0,
            ..Default::default()
        },
    )
    .unwrap();
    let b = 128;
    let mut state = 12345u64;
    let mut batch = |step: u64| {
        let mut next = |m: u64| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) % m
        };
        let (mut uid, mut ub, mut iid, mut ib, mut y) = (vec![], vec![], vec![], vec![], vec![]);
        for _ in 0..b {
            let (u, i) = (next(64) as u32, next(64) as u32);
            uid.push(u);
            ub.push(u % 8);
            iid.push(i);
            ib.push((i / 8) % 8);
            y.push(if u % 4 == i % 4 { 1f32 } else { 0.0 });
        }
        let _ = step;
        (
            SideBatch::from_host(
                &config,
                Side::User,
                b,
                &[HostColumn::Ids(&uid), HostColumn::Ids(&ub)],
                &dev,
            )
            .unwrap(),
            SideBatch::from_host(
                &config,
                Side::Item,
                b,
                &[HostColumn::Ids(&iid), HostColumn::Ids(&ib)],
                &dev,
            )
            .unwrap(),
            Tensor::from_vec(y, b, &dev).unwrap(),
        )
    };
    let mut last = Vec::new();
    for step in 0..400u64 {
        let (u, i, y) = batch(step);
        let logits = model.forward(&u, &i, Mode::Train { seed: step }).unwrap();
        let loss = bce_with_logits(&logits, &y).unwrap();
        opt.backward_step(&loss).unwrap();
        if step >= 380 {
            last.push(loss.to_scalar::<f32>().unwrap());
        }
    }
    let mean = last.iter().sum::<f32>() / last.len() as f32;
    assert!(
        mean < 0.25,
        "final loss {mean} (chance {})",
        std::f32::consts::LN_2
    );
}

#[test]
fn parse_device_specs() {
    assert!(parse_device("cpu").unwrap().is_cpu());
    assert!(matches!(
        parse_device("gpu"),
        Err(ModelError::Device { .. })
    ));
    assert!(
        parse_device("cuda:x")
            .unwrap_err()
            .to_string()
            .contains("not a GPU number")
    );
    #[cfg(not(feature = "cuda"))]
    for spec in ["cuda", "cuda:1"] {
        let err = parse_device(spec).unwrap_err().to_string();
        assert!(
            err.contains("no CUDA support") && err.contains("`cuda` feature"),
            "{err}"
        );
    }
}

#[test]
fn config_check_names_the_field() {
    let field_of = |c: ModelConfig| c.check().unwrap_err().field;
    let mut c = reference_config();
    c.features[1].kind = FeatureKind::Categorical { vocab_size: 0 };
    assert_eq!(field_of(c), "features[1].kind.vocab_size");
    let mut c = reference_config();
    c.user_tower.hidden.clear();
    assert_eq!(field_of(c), "user_tower.hidden");
    let mut c = reference_config();
    c.item_tower.dropout = 1.0;
    assert_eq!(field_of(c), "item_tower.dropout");
    let mut c = reference_config();
    c.senet = Some(SenetConfig {
        reduction: 4,
        squeeze: Squeeze::Max,
    });
    assert_eq!(field_of(c), "senet.reduction"); // 3 item fields.
    let c = ModelConfig {
        temperature: Temperature::Fixed(0.0),
        ..reference_config()
    };
    assert_eq!(field_of(c), "temperature.fixed");
    let c = ModelConfig {
        temperature: Temperature::Learned { init: -1.0 },
        ..reference_config()
    };
    assert_eq!(field_of(c), "temperature.learned.init");
    let mut c = reference_config();
    c.item_tower.hidden = vec![64, 16];
    assert_eq!(field_of(c), "item_tower.hidden");
    let mut c = reference_config();
    c.features[2].embedding_dim = Some(4);
    assert_eq!(field_of(c.clone()), "features.embedding_dim");
    c.senet = None;
    assert!(c.check().is_ok());
    let mut c = reference_config();
    c.features[3].name = "gender".into();
    assert_eq!(field_of(c), "features[3].name");
    let c = ModelConfig {
        features: reference_config().features[..4].to_vec(),
        ..reference_config()
    };
    assert_eq!(field_of(c), "features");
    // The error message names the field too.
    let mut c = reference_config();
    c.user_tower.dropout = -0.5;
    assert!(
        c.check()
            .unwrap_err()
            .to_string()
            .contains("user_tower.dropout")
    );
    assert!(matches!(
        Dssm::new(c, 0, &Device::Cpu),
        Err(ModelError::Config(_))
    ));
}

#[test]
fn config_serde_round_trip_and_unknown_fields() {
    let c = mixed_config();
    let json = serde_json::to_string(&c).unwrap();
    assert_eq!(serde_json::from_str::<ModelConfig>(&json).unwrap(), c);
    assert!(json.contains("\"multi_categorical\"") && json.contains("\"gelu\""));
    let bad = json.replacen(
        "\"embedding_dim\":4",
        "\"embedding_dim\":4,\"embeding_size\":3",
        1,
    );
    assert!(
        serde_json::from_str::<ModelConfig>(&bad)
            .unwrap_err()
            .to_string()
            .contains("embeding_size")
    );
    let minimal = r#"{"features": [{"name": "u", "side": "user", "kind": {"categorical": {"vocab_size": 3}}}],
        "temperature": {"fixed": 0.05}, "similarity": "cosine"}"#;
    let parsed: ModelConfig = serde_json::from_str(minimal).unwrap();
    assert_eq!(parsed.temperature, Temperature::Fixed(0.05));
    assert_eq!(parsed.user_tower, TowerConfig::default());
}

#[test]
fn bad_batches_are_errors() {
    let dev = Device::Cpu;
    let model = Dssm::new(reference_config(), 1, &dev).unwrap();
    let (u, _, _) = reference_batches(model.config(), 4, 1, &dev);
    let mut short = u.clone();
    short.columns.pop();
    assert!(matches!(
        model.encode_users(&short, Mode::Eval),
        Err(ModelError::Batch { .. })
    ));
    let mut out_of_range = u.clone();
    out_of_range.columns[1] = Tensor::new(&[0u32, 1, 3, 2], &dev).unwrap();
    let err = model
        .encode_users(&out_of_range, Mode::Eval)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("gender") && err.contains("vocab_size 3"),
        "{err}"
    );
    let mut wrong_type = u;
    wrong_type.columns[0] = Tensor::zeros(4, DType::F32, &dev).unwrap();
    assert!(
        model
            .encode_users(&wrong_type, Mode::Eval)
            .unwrap_err()
            .to_string()
            .contains("user_id")
    );
    let err = SideBatch::from_host(
        model.config(),
        Side::Item,
        2,
        &[HostColumn::Ids(&[1, 2])],
        &dev,
    )
    .unwrap_err();
    assert!(err.to_string().contains("expected 3 columns"));
}

/// The default towers (`branches = ["mlp"]`) compute what the model computed before parallel
/// towers existed: the logits below were printed by that version (commit 56f00b9) for this seed
/// and batch, so a change to the default path's weights, draws or maths shows up here.
#[test]
fn default_config_keeps_the_outputs_of_before_parallel_towers() {
    let dev = Device::Cpu;
    for (senet, expected) in [(true, GOLDEN_SENET), (false, GOLDEN_PLAIN)] {
        let mut config = reference_config();
        if !senet {
            config.senet = None;
        }
        let model = Dssm::new(config, 7, &dev).unwrap();
        // Scaled up from the small initial weights, so the logits are far from 0.
        for v in model.vars() {
            v.set(&(v.as_tensor() * 4.0).unwrap()).unwrap();
        }
        let (u, i, _) = reference_batches(model.config(), 4, 3, &dev);
        let logits = to_vec(&model.forward(&u, &i, Mode::Eval).unwrap());
        let train = to_vec(&model.forward(&u, &i, Mode::Train { seed: 5 }).unwrap());
        for (got, want) in logits.iter().chain(&train).zip(expected) {
            assert!(
                (got - want).abs() < 1e-5 * want.abs().max(1.0),
                "{got} vs {want}"
            );
        }
    }
}

const GOLDEN_SENET: [f64; 8] = [
    1.616647720336914,
    16.92434310913086,
    -29.776592254638672,
    -72.10111236572266,
    -54.089805603027344,
    -66.56549835205078,
    7.0058135986328125,
    66.45771789550781,
];
const GOLDEN_PLAIN: [f64; 8] = [
    -267.6982421875,
    104.17333984375,
    -5.740684509277344,
    -48.50421142578125,
    -406.39154052734375,
    -305.85687255859375,
    -62.7021484375,
    -175.3125762939453,
];

/// The reference features with small towers of `branches` (cross: 3 user layers, 1 item layer).
fn parallel_config(branches: &[Branch], senet: bool) -> ModelConfig {
    let mut c = reference_config();
    for (tower, layers) in [(&mut c.user_tower, 3), (&mut c.item_tower, 1)] {
        tower.hidden = vec![16, 8];
        tower.branches = branches.to_vec();
        tower.cross_layers = layers;
    }
    if !senet {
        c.senet = None;
    }
    c
}

/// Moves every weight by a deterministic pseudo-random amount in `[-0.5, 0.5)`, so the scoring
/// layer is not its initial ones and zero bias.
fn perturb(model: &Dssm, seed: u64) {
    let mut s = seed;
    for v in model.vars() {
        let values: Vec<f32> = (0..v.elem_count())
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect();
        let delta = Tensor::from_vec(values, v.dims(), &Device::Cpu).unwrap();
        v.set(&(v.as_tensor() + delta).unwrap()).unwrap();
    }
}

#[test]
fn parallel_towers_fold_into_one_dot_product() {
    use Branch::*;
    let dev = Device::Cpu;
    for (branches, senet) in [
        (&[Mlp, Cross, Fm][..], true),
        (&[Mlp, Cross, Fm][..], false),
        (&[Cross][..], true),
        (&[Fm, Mlp][..], false),
    ] {
        let mut config = parallel_config(branches, senet);
        config.temperature = Temperature::Fixed(0.5);
        let model = Dssm::new(config.clone(), 3, &dev).unwrap();
        perturb(&model, 17);
        let (u, i, _) = reference_batches(&config, 6, 4, &dev);
        for mode in [Mode::Eval, Mode::Train { seed: 9 }] {
            // Training's score: w . concat_b(u_b * i_b) + c, over the temperature.
            let score = model.forward(&u, &i, mode).unwrap();
            let (uv, iv) = (
                model.encode_users(&u, mode).unwrap(),
                model.encode_items(&i, mode).unwrap(),
            );
            let width = branches.len() * 8 + 1;
            assert_eq!((uv.dims(), iv.dims()), (&[6, width][..], &[6, width][..]));
            assert_eq!(config.output_dim(), width);
            // The item vector ends with 1, the user vector with the bias.
            assert!(
                to_vec(&iv.narrow(1, width - 1, 1).unwrap())
                    .iter()
                    .all(|&x| x == 1.0)
            );
            let folded = model.score_pairs(&uv, &iv).unwrap();
            let gap = max_abs_diff(&score, &folded);
            assert!(gap < 1e-5, "{branches:?} senet {senet}: {gap}");
            // The all-pairs matrix (in-batch softmax, retrieval) has the scores on its diagonal.
            let matrix = to_vec(&model.score_matrix(&uv, &iv).unwrap());
            for (r, s) in to_vec(&score).iter().enumerate() {
                assert!((matrix[r * 6 + r] - s).abs() < 1e-5);
            }
            // A plain dot product of the exported vectors gives the score times the temperature.
            let dots: Vec<f64> = (0..6)
                .map(|r| {
                    let (a, b) = (to_vec(&uv.get(r).unwrap()), to_vec(&iv.get(r).unwrap()));
                    a.iter().zip(&b).map(|(x, y)| x * y).sum()
                })
                .collect();
            for (d, s) in dots.iter().zip(to_vec(&score)) {
                assert!((d - s * 0.5).abs() < 1e-5, "{d} vs {s}");
            }
        }
    }
}

#[test]
fn parallel_towers_train_every_branch_and_round_trip() {
    let dev = Device::Cpu;
    let config = parallel_config(&[Branch::Mlp, Branch::Cross, Branch::Fm], true);
    let model = Dssm::new(config.clone(), 5, &dev).unwrap();
    let names: Vec<&str> = model.named_vars().iter().map(|(n, _)| n.as_str()).collect();
    for name in [
        "user.cross.0.weight",
        "user.cross.2.weight",
        "user.cross.proj.weight",
        "item.cross.0.weight",
        "item.fm.proj.weight",
        "branches.weight",
        "branches.bias",
    ] {
        assert!(names.contains(&name), "{name} in {names:?}");
    }
    assert!(!names.contains(&"item.cross.1.weight"));
    let (u, i, y) = reference_batches(&config, 16, 5, &dev);
    let logits = model.forward(&u, &i, Mode::Train { seed: 1 }).unwrap();
    let grads = bce_with_logits(&logits, &y).unwrap().backward().unwrap();
    for (name, var) in model.named_vars() {
        if name.ends_with("embedding") {
            continue;
        }
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name}"));
        let norm = g
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(norm > 0.0 && norm.is_finite(), "{name}: {norm}");
    }
    // The engine cannot run it; the trainer goes through Candle.
    let err = engine::check_supported(&config).unwrap_err().to_string();
    assert!(err.contains("parallel"), "{err}");
    // Saved and loaded: the same config and scores, bit for bit.
    let dir = tempfile::tempdir().unwrap();
    perturb(&model, 3);
    model.save(dir.path()).unwrap();
    let loaded = Dssm::load(dir.path(), &dev).unwrap();
    assert_eq!(loaded.config(), &config);
    let bits = |m: &Dssm| -> Vec<u32> {
        let s = m
            .forward(&u, &i, Mode::Eval)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        s.iter().map(|x| x.to_bits()).collect()
    };
    assert_eq!(bits(&model), bits(&loaded));
}

#[test]
fn parallel_tower_configs_are_checked_and_the_default_is_unchanged() {
    use Branch::*;
    let field_of = |c: ModelConfig| c.check().unwrap_err().field;
    let mut c = parallel_config(&[Mlp, Cross], true);
    c.item_tower.branches = vec![Mlp];
    assert_eq!(field_of(c), "item_tower.branches");
    assert_eq!(
        field_of(parallel_config(&[Fm, Mlp, Fm], true)),
        "user_tower.branches"
    );
    assert_eq!(field_of(parallel_config(&[], true)), "user_tower.branches");
    let mut c = parallel_config(&[Cross], true);
    c.user_tower.cross_layers = 0;
    assert_eq!(field_of(c), "user_tower.cross_layers");
    let mut c = parallel_config(&[Mlp, Fm], true);
    c.similarity = Similarity::Cosine;
    assert_eq!(field_of(c), "similarity");
    let mut c = parallel_config(&[Mlp, Fm], true);
    c.item_tower.l2_normalize = true;
    assert_eq!(field_of(c), "item_tower.l2_normalize");
    let mut c = parallel_config(&[Mlp, Fm], false);
    c.features[0].embedding_dim = Some(4);
    assert_eq!(field_of(c.clone()), "features.embedding_dim");
    // Without FM, fields of several widths are fine (the cross network takes them all).
    c.user_tower.branches = vec![Mlp, Cross];
    c.item_tower.branches = vec![Mlp, Cross];
    assert!(c.check().is_ok());
    // The default: the MLP alone, no new keys in model.json, the same width and variables.
    let plain = reference_config();
    assert_eq!(plain.user_tower.branches, [Mlp]);
    assert!(!plain.is_parallel() && plain.output_dim() == 32);
    let json = serde_json::to_string(&plain).unwrap();
    assert!(
        !json.contains("branches") && !json.contains("cross_layers"),
        "{json}"
    );
    let parallel = parallel_config(&[Mlp, Cross], true);
    let json = serde_json::to_string(&parallel).unwrap();
    assert_eq!(
        serde_json::from_str::<ModelConfig>(&json).unwrap(),
        parallel
    );
    let model = Dssm::new(plain, 1, &Device::Cpu).unwrap();
    let names: Vec<&str> = model.named_vars().iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "user.embedding",
            "user.senet.fc1.weight",
            "user.senet.fc1.bias",
            "user.senet.fc2.weight",
            "user.senet.fc2.bias",
            "user.mlp.0.weight",
            "user.mlp.0.bias",
            "user.mlp.1.weight",
            "user.mlp.1.bias",
            "user.mlp.2.weight",
            "user.mlp.2.bias",
            "item.embedding",
            "item.senet.fc1.weight",
            "item.senet.fc1.bias",
            "item.senet.fc2.weight",
            "item.senet.fc2.bias",
            "item.mlp.0.weight",
            "item.mlp.0.bias",
            "item.mlp.1.weight",
            "item.mlp.1.bias",
            "item.mlp.2.weight",
            "item.mlp.2.bias",
        ]
    );
}
