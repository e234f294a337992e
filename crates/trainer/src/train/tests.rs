//! Training runs on synthetic data: resume equals an uninterrupted run, engines agree, the
//! test split is read once, log-Q, history features.

use super::*;
use crate::batches::EpochBuilder;
use crate::config::{LossKind, SamplerStrategy};
use crate::inputs::{Inputs, open_dataset};
use crate::logq::{ItemQ, in_batch_log_q};
use crate::metrics::PointwiseMetrics;
use crate::policy::Slot;
use crate::report::EpochRecord;
use crate::run::{evaluate_run, load_run};
use crate::run_folder::{RunFolder, layout};
use candle_core::{Device, Tensor};
use dssm_data::{Dataset, Split};
use dssm_model::Side;
use dssm_retrieval::{PROTOCOL_CUTOFFS, RankingReport};
use std::path::Path;

/// The checkpoint folder of `slot` in the run folder `run`.
fn checkpoint_dir(run: &Path, slot: Slot) -> PathBuf {
    RunFolder::new(run.to_path_buf()).checkpoint_dir(slot)
}
use dssm_data::{DatasetKind, PrepareRequest, Source, SyntheticConfig};
use dssm_model::FeatureKind;

/// A prepared synthetic dataset folder under `dir`, split by `protocol`.
fn prepared_synthetic(
    dir: &Path,
    protocol: dssm_data::Protocol,
    (users, items, ratings): (u32, u32, u64),
) -> PathBuf {
    let synthetic = SyntheticConfig {
        users,
        items,
        ratings,
        ..SyntheticConfig::default()
    };
    let out = dir.join(format!("synthetic-{}", protocol.name()));
    let mut request =
        PrepareRequest::new(Source::Synthetic(synthetic), DatasetKind::Synthetic, &out);
    request.protocol = protocol;
    dssm_data::prepare(&request, &|_| {}).unwrap();
    out
}

fn synthetic_dataset(dir: &Path) -> PathBuf {
    prepared_synthetic(dir, dssm_data::Protocol::Seed, (300, 200, 15_000))
}

fn small_config(data: &Path, out: &Path) -> RunConfig {
    let text = format!(
        r#"
[data]
path = {data:?}
[features]
embedding_dim = 8
[model.user_tower]
hidden = [32, 16]
dropout = 0.1
[model.item_tower]
hidden = [32, 16]
dropout = 0.1
[model.senet]
enabled = true
reduction = 2
[optimizer]
lr = 0.003
[train]
batch_size = 512
epochs = 3
seed = 7
[output]
dir = {out:?}
"#
    );
    RunConfig::from_toml_str(&text).unwrap()
}

/// Records without the timing fields, for comparing runs.
fn comparable(records: &[EpochRecord]) -> Vec<(usize, f64, usize, Option<PointwiseMetrics>)> {
    records
        .iter()
        .map(|r| (r.epoch, r.train_loss, r.train_rows, r.val))
        .collect()
}

/// A record without its timing fields (`samples_per_sec`, `wall_s`), for comparing runs.
fn untimed(records: &[EpochRecord]) -> Vec<EpochRecord> {
    records
        .iter()
        .map(|r| EpochRecord {
            samples_per_sec: 0.0,
            wall_s: 0.0,
            ..r.clone()
        })
        .collect()
}

/// Trains `config` uninterrupted into `<output.dir>/straight`, and into `<output.dir>/cut`
/// stopped after `cut(&straight)` epochs, then `between` is given the cut run's folder, then
/// it is resumed. Checks that the resumed call trained only the remaining epochs (a silent
/// restart trains them all and writes new records for the first ones), kept the interrupted
/// call's records and `metrics.jsonl` lines, and ended exactly where the uninterrupted run
/// did. Returns (straight, resumed).
fn straight_and_resumed(
    config: &RunConfig,
    cut: impl FnOnce(&TrainReport) -> usize,
    between: impl FnOnce(&Path),
) -> (TrainReport, TrainReport) {
    let base = config.output.dir.clone();
    let mut straight_config = config.clone();
    straight_config.output.dir = base.join("straight");
    let straight = train(&straight_config, &TrainOptions::default()).unwrap();
    let epochs = straight.epochs.len();
    assert_eq!(straight.epochs_trained, epochs);
    let cut = cut(&straight);
    assert!(
        0 < cut && cut < epochs,
        "cut after {cut} of {epochs} epochs"
    );

    let mut cut_config = config.clone();
    cut_config.output.dir = base.join("cut");
    let first = train(
        &cut_config,
        &TrainOptions {
            stop_after_epochs: Some(cut),
            ..TrainOptions::default()
        },
    )
    .unwrap();
    assert_eq!((first.epochs_trained, first.epochs.len()), (cut, cut));
    assert!(first.metrics.test.is_none());
    assert!(
        first
            .metrics
            .retrieval
            .as_ref()
            .is_none_or(|r| r.test.is_empty())
    );
    let jsonl = |dir: &Path| std::fs::read_to_string(dir.join(layout::EPOCHS)).unwrap();
    let interrupted_lines = jsonl(&cut_config.output.dir);
    assert_eq!(interrupted_lines.lines().count(), cut);
    between(&cut_config.output.dir);

    let resumed = train(
        &cut_config,
        &TrainOptions {
            resume: true,
            ..TrainOptions::default()
        },
    )
    .unwrap();
    assert_eq!(
        resumed.epochs_trained,
        epochs - cut,
        "the resumed call trained {} epochs; {} remained after the cut",
        resumed.epochs_trained,
        epochs - cut
    );
    // The first records are the interrupted call's, timing fields included.
    assert_eq!(resumed.epochs[..cut], first.epochs[..]);
    let lines = jsonl(&cut_config.output.dir);
    assert!(lines.starts_with(&interrupted_lines), "{lines}");
    assert_eq!(lines.lines().count(), epochs);
    assert_eq!(untimed(&resumed.epochs), untimed(&straight.epochs));
    let (a, b) = (&resumed.metrics, &straight.metrics);
    assert_eq!(
        (a.best_epoch, a.epochs_completed, a.stopped_early),
        (b.best_epoch, b.epochs_completed, b.stopped_early)
    );
    assert_eq!((a.val, a.test), (b.val, b.test));
    assert_eq!(a.checkpoint, b.checkpoint);
    assert_eq!(a.retrieval, b.retrieval);
    (straight, resumed)
}

#[test]
fn trains_on_synthetic_data_and_resumes_identically() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_dataset(dir.path());

    let straight_dir = dir.path().join("straight");
    let config = small_config(&data, &straight_dir);
    let straight = train(&config, &TrainOptions::default()).unwrap();
    let val = straight.metrics.val.unwrap();
    let test = straight.metrics.test.unwrap();
    assert!(val.auc > 0.6, "val auc {}", val.auc);
    assert!(test.auc > 0.6, "test auc {}", test.auc);
    assert!(test.gauc_users > 0 && test.logloss.is_finite());
    assert_eq!(straight.epochs.len(), 3);
    for file in [
        layout::CONFIG,
        layout::RUN,
        layout::DATASET_MANIFEST,
        layout::EPOCHS,
        layout::METRICS,
        layout::PLOT,
    ] {
        assert!(straight_dir.join(file).exists(), "{file} missing");
    }
    assert!(
        checkpoint_dir(&straight_dir, Slot::Best)
            .join(dssm_model::WEIGHTS_FILE)
            .exists()
    );
    assert!(
        checkpoint_dir(&straight_dir, Slot::Last)
            .join("optimizer.safetensors")
            .exists()
    );
    let jsonl = std::fs::read_to_string(straight_dir.join(layout::EPOCHS)).unwrap();
    assert_eq!(jsonl.lines().count(), 3);

    // Re-evaluation of the saved best checkpoint gives the reported test metrics.
    let again = evaluate_run(&straight_dir, Split::Test).unwrap();
    assert_eq!(Some(again.metrics), straight.metrics.test);
    assert_eq!(again.checkpoint, straight.metrics.checkpoint);
    let loaded = load_run(&straight_dir).unwrap();
    let (embeddings, dim) = loaded.embeddings(Side::Item, 64).unwrap();
    assert_eq!(dim, 16);
    assert_eq!(embeddings.len(), loaded.dataset.items.movie_id.len() * 16);

    // A fresh run into an occupied folder is refused.
    let err = train(&config, &TrainOptions::default()).unwrap_err();
    assert!(err.to_string().contains("already holds a run"), "{err}");
}

/// `resume: true` into a folder where it cannot resume.
fn resume(config: &RunConfig) -> Result<TrainReport, TrainError> {
    train(
        config,
        &TrainOptions {
            resume: true,
            ..TrainOptions::default()
        },
    )
}

#[test]
fn resume_falls_back_to_old_last_refuses_another_config_and_never_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_dataset(dir.path());
    let mut config = small_config(&data, &dir.path().join("run"));
    config.train.epochs = 2;
    let cut_dir = dir.path().join("run").join("cut");
    let (_, resumed) = straight_and_resumed(
        &config,
        |_| 1,
        |run| {
            // Another config (not only train.epochs) is refused, and the folder is untouched.
            let before = std::fs::read(run.join(layout::CONFIG)).unwrap();
            let mut other = config.clone();
            other.output.dir = run.to_path_buf();
            other.optimizer.lr *= 2.0;
            let err = resume(&other).unwrap_err();
            assert!(
                matches!(&err, TrainError::Run { message, .. } if message.contains("config differs")),
                "{err}"
            );
            assert_eq!(std::fs::read(run.join(layout::CONFIG)).unwrap(), before);
            // An interrupted checkpoint rename leaves only `.old-last`: resume reads it.
            let checkpoints = run.join(layout::CHECKPOINTS);
            std::fs::rename(checkpoints.join("last"), checkpoints.join(".old-last")).unwrap();
        },
    );
    assert_eq!(resumed.epochs_trained, 1);
    assert!(
        checkpoint_dir(&cut_dir, Slot::Last)
            .join(layout::STATE)
            .exists()
    );

    // Nothing to resume from: an error, not a fresh start, and nothing is written.
    let mut empty = config.clone();
    empty.output.dir = dir.path().join("never-trained");
    let err = resume(&empty).unwrap_err();
    assert!(
        matches!(err, TrainError::NoCheckpointToResume { .. }),
        "{err}"
    );
    assert!(!empty.output.dir.exists());

    // A checkpoint that cannot be read: an error naming it; the run folder is unchanged.
    let broken = |name: &str, damage: &dyn Fn(&Path)| {
        let mut config = config.clone();
        config.output.dir = dir.path().join(name);
        let options = TrainOptions {
            stop_after_epochs: Some(1),
            ..TrainOptions::default()
        };
        train(&config, &options).unwrap();
        let last = checkpoint_dir(&config.output.dir, Slot::Last);
        damage(&last);
        let jsonl = std::fs::read(config.output.dir.join(layout::EPOCHS)).unwrap();
        let err = resume(&config).unwrap_err();
        assert!(
            matches!(&err, TrainError::CorruptCheckpoint { path, .. } if path == &last),
            "{name}: {err}"
        );
        let after = std::fs::read(config.output.dir.join(layout::EPOCHS)).unwrap();
        assert_eq!(after, jsonl, "{name}: metrics.jsonl was rewritten");
    };
    broken("no-state", &|last| {
        std::fs::remove_file(last.join(layout::STATE)).unwrap()
    });
    broken("bad-state", &|last| {
        std::fs::write(last.join(layout::STATE), b"{\"epoch\": ").unwrap()
    });
    broken("bad-weights", &|last| {
        std::fs::write(last.join(dssm_model::WEIGHTS_FILE), b"not safetensors").unwrap()
    });
    broken("no-optimizer", &|last| {
        std::fs::remove_file(last.join("optimizer.safetensors")).unwrap()
    });
}

/// Copies the files of folder `from` into a new folder `to` (one level deep).
fn copy_files(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
        }
    }
}

#[test]
fn early_stopping_carries_across_a_resume_and_the_test_uses_the_best_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_dataset(dir.path());
    let mut config = small_config(&data, &dir.path().join("run"));
    config.train.epochs = 12;
    config.train.patience = 2;
    config.optimizer.lr = 0.03;
    // Cut between the first validation without improvement and the stop: the tracker's
    // count must survive the resume for the resumed run to stop where the straight one did.
    let (straight, _) = straight_and_resumed(
        &config,
        |straight| {
            let m = &straight.metrics;
            assert!(
                m.stopped_early,
                "no early stop in {} epochs",
                m.epochs_completed
            );
            m.epochs_completed - 1
        },
        |_| {},
    );
    let m = &straight.metrics;
    // Validated every epoch, patience 2: the best epoch is two before the last.
    assert_eq!(m.best_epoch + 2, m.epochs_completed);
    assert!(m.epochs_completed < config.train.epochs);
    assert!(
        m.checkpoint
            .starts_with(&format!("best@epoch{}:", m.best_epoch)),
        "{}",
        m.checkpoint
    );
    let best_val = straight.epochs[m.best_epoch - 1].val;
    assert_eq!(m.val, best_val);

    // The test figures are the best checkpoint's: re-evaluating it gives them, and the last
    // epoch's weights in its place give others.
    let run = dir.path().join("run").join("straight");
    let test = m.test.unwrap();
    assert_eq!(evaluate_run(&run, Split::Test).unwrap().metrics, test);
    let as_last = dir.path().join("as-last");
    copy_files(&run, &as_last);
    copy_files(
        &checkpoint_dir(&run, Slot::Last),
        &checkpoint_dir(&as_last, Slot::Best),
    );
    let last = evaluate_run(&as_last, Split::Test).unwrap().metrics;
    assert_ne!(last, test, "the last and the best epoch score the same");
}

#[test]
fn the_test_split_is_read_only_after_the_last_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_dataset(dir.path());
    let test_file = data.join("test.parquet");
    let aside = dir.path().join("test.parquet.aside");
    std::fs::rename(&test_file, &aside).unwrap();
    let mut config = small_config(&data, &dir.path().join("run"));
    config.train.epochs = 2;
    // Both epochs train, validate and checkpoint without test.parquet; only the final test
    // read fails, naming it.
    let err = train(&config, &TrainOptions::default()).unwrap_err();
    assert!(err.to_string().contains("test.parquet"), "{err}");
    let run = &config.output.dir;
    let jsonl = std::fs::read_to_string(run.join(layout::EPOCHS)).unwrap();
    assert_eq!(jsonl.lines().count(), 2);
    assert!(checkpoint_dir(run, Slot::Best).join(layout::STATE).exists());
    // With the file back, resuming trains nothing and evaluates the best checkpoint once.
    std::fs::rename(&aside, &test_file).unwrap();
    let resumed = resume(&config).unwrap();
    assert_eq!((resumed.epochs_trained, resumed.epochs.len()), (0, 2));
    let test = resumed.metrics.test.expect("the test split is evaluated");
    assert_eq!(evaluate_run(run, Split::Test).unwrap().metrics, test);
}

#[test]
fn resume_restores_the_schedule_and_sgd_momentum_and_adagrad_state() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_dataset(dir.path());
    for kind in [
        crate::config::OptimizerKind::Sgd,
        crate::config::OptimizerKind::Adagrad,
    ] {
        let mut config = small_config(&data, &dir.path().join(format!("{kind:?}")));
        config.train.epochs = 2;
        config.optimizer.kind = kind;
        config.optimizer.lr = 0.05;
        config.optimizer.momentum = 0.9;
        // Step decay every epoch, and a warm-up that runs past the cut.
        config.schedule.step_size = 1;
        config.schedule.gamma = 0.5;
        config.schedule.warmup_steps = 150;
        let (straight, _) = straight_and_resumed(
            &config,
            |straight| {
                let steps = straight.epochs[0].steps;
                assert!((20..150).contains(&steps), "{steps} steps per epoch");
                1
            },
            |_| {},
        );
        // The last step of epoch 1 is step `steps` of the warm-up; epoch 2 is decayed once.
        let steps = straight.epochs[0].steps as f64;
        let (first, second) = (straight.epochs[0].lr, straight.epochs[1].lr);
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert!(close(first, 0.05 * steps / 150.0), "{kind:?}: lr {first}");
        let warm = (2.0 * steps / 150.0).min(1.0);
        assert!(close(second, 0.05 * 0.5 * warm), "{kind:?}: lr {second}");
    }
}

/// The weights of a run's best checkpoint, as bytes.
fn best_weights(run: &TrainReport) -> Vec<u8> {
    let dir = checkpoint_dir(&run.run_dir, Slot::Best);
    std::fs::read(dir.join(dssm_model::WEIGHTS_FILE)).unwrap()
}

#[test]
fn the_fused_engine_and_candle_train_the_same_model() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_dataset(dir.path());
    let run = |engine: &str| {
        let mut config = small_config(&data, &dir.path().join(engine));
        config.train.engine = match engine {
            "fused" => crate::config::EngineKind::Fused,
            _ => crate::config::EngineKind::Candle,
        };
        train(&config, &TrainOptions::default()).unwrap()
    };
    let (fused, candle) = (run("fused"), run("candle"));
    assert_eq!(fused.metrics.engine, "fused");
    assert_eq!(candle.metrics.engine, "candle");
    // Same data, masks and updates: only float rounding differs, so the first epoch's mean
    // loss agrees to ~1e-6 and the runs stay close (a wrong gradient drifts far off).
    let (f, c) = (&fused.epochs, &candle.epochs);
    let loss_gap = (f[0].train_loss - c[0].train_loss).abs() / c[0].train_loss;
    assert!(
        loss_gap < 1e-4,
        "epoch 1 loss {} vs {}",
        f[0].train_loss,
        c[0].train_loss
    );
    for (a, b) in f.iter().zip(c) {
        let (a, b) = (a.val.unwrap().auc, b.val.unwrap().auc);
        assert!((a - b).abs() < 0.005, "val auc {a} vs {b}");
    }
}

#[test]
fn runs_are_identical_on_one_and_two_threads() {
    let dir = tempfile::tempdir().unwrap();
    let seed_data = synthetic_dataset(dir.path());
    let llo_data = leave_last_out_dataset(dir.path());
    let run = |threads: usize, protocol: &str| {
        let out = dir.path().join(format!("{protocol}-{threads}"));
        let mut config = match protocol {
            "seed" => small_config(&seed_data, &out),
            _ => retrieval_config(&llo_data, &out, "in_batch_softmax"),
        };
        config.train.epochs = 2;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| train(&config, &TrainOptions::default()).unwrap())
    };
    for protocol in ["seed", "leave-last-out"] {
        let (one, two) = (run(1, protocol), run(2, protocol));
        assert_eq!(one.metrics.engine, "fused", "{protocol}");
        assert_eq!(
            comparable(&one.epochs),
            comparable(&two.epochs),
            "{protocol}"
        );
        let ranking = |r: &TrainReport| r.epochs.iter().map(|e| e.val_hit_rate).collect::<Vec<_>>();
        assert_eq!(ranking(&one), ranking(&two), "{protocol}");
        assert!(
            best_weights(&one) == best_weights(&two),
            "{protocol}: weights differ"
        );
        assert_eq!(one.metrics.test, two.metrics.test, "{protocol}");
    }
}

fn leave_last_out_dataset(dir: &Path) -> PathBuf {
    prepared_synthetic(dir, dssm_data::Protocol::LeaveLastOut, (400, 300, 20_000))
}

fn retrieval_config(data: &Path, out: &Path, loss: &str) -> RunConfig {
    let text = format!(
        r#"
[data]
path = {data:?}
protocol = "leave-last-out"
[features]
user = ["user_id", "gender", "age", "occupation"]
item = ["movie_id", "genres"]
embedding_dim = 16
[model.user_tower]
hidden = [32, 16]
l2_normalize = true
[model.item_tower]
hidden = [32, 16]
l2_normalize = true
[sampler]
negatives_per_positive = 8
[loss]
kind = "{loss}"
temperature = 0.1
logq_correction = {logq}
[optimizer]
lr = 0.003
[train]
batch_size = 256
epochs = 4
select_metric = "hit_rate"
seed = 3
[output]
dir = {out:?}
"#,
        logq = loss != "bce",
    );
    RunConfig::from_toml_str(&text).unwrap()
}

fn hr(report: &RankingReport, k: usize) -> f64 {
    report.at(k).unwrap().hit_rate
}

#[test]
fn leave_last_out_trains_ranks_and_resumes_identically() {
    let dir = tempfile::tempdir().unwrap();
    let data = leave_last_out_dataset(dir.path());
    // Interrupted after two epochs, then resumed: the same numbers.
    let config = retrieval_config(&data, &dir.path().join("run"), "in_batch_softmax");
    let (straight, _) = straight_and_resumed(&config, |_| 2, |_| {});
    let straight_dir = dir.path().join("run").join("straight");
    let metrics = &straight.metrics;
    assert!(metrics.test.is_none() && metrics.val.is_none());
    let retrieval = metrics.retrieval.as_ref().unwrap();
    let candidates = retrieval.candidates;
    assert!(candidates > 200 && candidates <= 300, "{candidates}");
    // Random ranking expects HR@50 = 50 / candidates.
    let random = 50.0 / candidates as f64;
    let val = retrieval.val.as_ref().unwrap();
    assert_eq!(metrics.val_hit_rate, Some(hr(val, 50)));
    let popularity_val = hr(&retrieval.popularity_val, 50);
    eprintln!(
        "val HR@50 {:.4}, popularity {popularity_val:.4}, random {random:.4}",
        hr(val, 50)
    );
    assert!(hr(val, 50) > 2.0 * random, "val HR@50 {}", hr(val, 50));
    assert_eq!(val.users, 400);
    // Test: every variant for the model and the baseline, every protocol cut-off.
    let names = |r: &[RankingReport]| r.iter().map(|r| r.variant.clone()).collect::<Vec<_>>();
    let variants = ["unmasked", "masked", "masked_all"];
    assert_eq!(names(&retrieval.test), variants);
    assert_eq!(names(&retrieval.popularity_test), variants);
    for report in retrieval.test.iter().chain(&retrieval.popularity_test) {
        assert_eq!(
            report.at_k.iter().map(|m| m.k).collect::<Vec<_>>(),
            PROTOCOL_CUTOFFS
        );
        assert!(report.mrr > 0.0 && report.mrr <= 1.0);
    }
    let (unmasked, masked) = (&retrieval.test[0], &retrieval.test[1]);
    eprintln!(
        "test HR@50 unmasked {:.4} masked {:.4}; popularity {:.4} {:.4}",
        hr(unmasked, 50),
        hr(masked, 50),
        hr(&retrieval.popularity_test[0], 50),
        hr(&retrieval.popularity_test[1], 50)
    );
    assert!(hr(unmasked, 50) > 2.0 * random, "{}", hr(unmasked, 50));
    // Removing the user's train items can only move the target up, and removing the validation
    // item too moves it further for some users.
    let masked_all = &retrieval.test[2];
    for k in PROTOCOL_CUTOFFS {
        assert!(hr(masked, k) >= hr(unmasked, k), "HR@{k}");
        assert!(hr(masked_all, k) >= hr(masked, k), "HR@{k}");
    }
    assert!(
        masked_all.mrr > masked.mrr,
        "{} {}",
        masked_all.mrr,
        masked.mrr
    );
    let records = &straight.epochs;
    assert!(
        records
            .iter()
            .all(|r| r.val_hit_rate.is_some() && r.val_ndcg.is_some())
    );
    let json = std::fs::read_to_string(straight_dir.join(layout::METRICS)).unwrap();
    assert!(json.contains("\"popularity_test\"") && json.contains("\"masked\""));
    // Every interaction is a training row, whatever its rating.
    let train_rows = straight.epochs[0].train_rows;
    let dataset = Dataset::open(&data).unwrap();
    assert_eq!(train_rows as u64, dataset.manifest.rows.train);
    let err = evaluate_run(&straight_dir, Split::Test).unwrap_err();
    assert!(err.to_string().contains("leave-last-out"), "{err}");
}

#[test]
fn leave_last_out_sampled_losses_train() {
    let dir = tempfile::tempdir().unwrap();
    let data = leave_last_out_dataset(dir.path());
    for loss in ["sampled_softmax", "bce", "shared_negatives"] {
        let kind = if loss == "shared_negatives" {
            "in_batch_softmax"
        } else {
            loss
        };
        let mut config = retrieval_config(&data, &dir.path().join(loss), kind);
        config.train.epochs = 2;
        if loss == "shared_negatives" {
            // Mixed negatives: 64 uniform items per batch beside the batch's own.
            config.loss.shared_negatives = 64;
            config.sampler.strategy = SamplerStrategy::Uniform;
        }
        let report = train(&config, &TrainOptions::default()).unwrap();
        // `auto` trains sampled softmax through Candle (the engine does not compute it).
        let engine = if loss == "sampled_softmax" {
            "candle"
        } else {
            "fused"
        };
        assert_eq!(report.metrics.engine, engine, "{loss}");
        let retrieval = report.metrics.retrieval.unwrap();
        let random = 50.0 / retrieval.candidates as f64;
        let val = hr(retrieval.val.as_ref().unwrap(), 50);
        eprintln!("{loss}: val HR@50 {val:.4}, random {random:.4}");
        assert!(val > 1.5 * random, "{loss}: val HR@50 {val}");
        assert_eq!(retrieval.test.len(), 3);
    }
}

#[test]
fn the_fused_engine_refuses_what_it_cannot_compute() {
    let dir = tempfile::tempdir().unwrap();
    let data = leave_last_out_dataset(dir.path());
    let out = dir.path().join("sampled");
    let mut config = retrieval_config(&data, &out, "sampled_softmax");
    config.train.engine = crate::config::EngineKind::Fused;
    let err = train(&config, &TrainOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("train.engine") && err.contains("SampledSoftmax"),
        "{err}"
    );
    // Refused before the run folder is touched.
    assert!(!out.exists(), "{} was created", out.display());
}

#[test]
fn leave_last_out_with_history_feature_trains_resumes_and_exports() {
    let dir = tempfile::tempdir().unwrap();
    let data = leave_last_out_dataset(dir.path());
    let mut config = retrieval_config(&data, &dir.path().join("history"), "in_batch_softmax");
    config.features.history_len = 5;
    config.features.recent_len = 2;
    config.train.epochs = 2;
    // Interrupted after one epoch and resumed: the same run, history rows included.
    let (report, _) = straight_and_resumed(&config, |_| 1, |_| {});
    let out = dir.path().join("history").join("straight");
    let retrieval = report.metrics.retrieval.unwrap();
    let random = 50.0 / retrieval.candidates as f64;
    let val = hr(retrieval.val.as_ref().unwrap(), 50);
    eprintln!("history: val HR@50 {val:.4}, random {random:.4}");
    assert!(val > 1.5 * random, "val HR@50 {val}");
    assert_eq!(retrieval.test.len(), 3);
    let loaded = load_run(&out).unwrap();
    let user_features: Vec<_> = loaded.model.config().side_features(Side::User).collect();
    for (name, len) in [("history", 5), ("recent", 2)] {
        assert!(
            user_features.iter().any(|f| f.name == name
                && matches!(f.kind, FeatureKind::MultiCategorical { max_len, .. } if max_len == len)),
            "{name}"
        );
    }
    let (users, dim) = loaded.embeddings(Side::User, 128).unwrap();
    assert_eq!(users.len(), 400 * dim);
    assert!(users.iter().all(|x| x.is_finite()));
}

#[test]
fn other_losses_train_and_unknown_feature_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_dataset(dir.path());
    // Test AUC of ranking each test row by its movie's train count.
    let popularity = {
        let dataset = Dataset::open(&data).unwrap();
        let test = dataset.interactions(Split::Test).unwrap();
        let counts = &dataset.items.train_count;
        let scores: Vec<f64> = test
            .item_row
            .iter()
            .map(|&row| f64::from(counts[row as usize]))
            .collect();
        crate::metrics::auc(&scores, &test.label).unwrap()
    };
    for (i, loss) in ["bpr", "in_batch_softmax", "sampled_softmax"]
        .iter()
        .enumerate()
    {
        let out = dir.path().join(format!("run{i}"));
        let mut config = small_config(&data, &out);
        config.train.epochs = 1;
        config.loss.kind = match *loss {
            "bpr" => LossKind::Bpr,
            "in_batch_softmax" => LossKind::InBatchSoftmax,
            _ => LossKind::SampledSoftmax,
        };
        config.loss.logq_correction = *loss != "bpr";
        config.loss.temperature = 0.5;
        config.optimizer.kind = crate::config::OptimizerKind::Adagrad;
        config.optimizer.lr = 0.05;
        let report = train(&config, &TrainOptions::default()).unwrap();
        let test = report.metrics.test.unwrap();
        // The synthetic ratings follow planted user and item factors: a model that learnt
        // them ranks the test rows well above chance (AUC 0.5) and above popularity.
        eprintln!(
            "{loss}: test AUC {:.4}, popularity {popularity:.4}",
            test.auc
        );
        assert!(
            test.auc > popularity + 0.02,
            "{loss}: test AUC {}",
            test.auc
        );
    }
    let mut config = small_config(&data, &dir.path().join("bad"));
    config.features.item = Some(vec!["movie_id".into(), "colour".into()]);
    let err = train(&config, &TrainOptions::default()).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("features.item") && message.contains("colour"),
        "{message}"
    );
    assert!(
        message.contains("genres"),
        "lists the available features: {message}"
    );
}

/// The EpochBuilder's q of `config` on its dataset, and the dataset.
fn item_q_of(config: &RunConfig) -> (ItemQ, Dataset) {
    let dataset = open_dataset(&config.data.path, config.data.protocol).unwrap();
    let inputs = Inputs::new(config, None, dataset).unwrap();
    let rows = inputs.split(Split::Train).unwrap();
    let builder = EpochBuilder::new(config, &inputs, rows).unwrap();
    let ItemQ { batch, sampler } = builder.item_q;
    (ItemQ { batch, sampler }, inputs.dataset)
}

#[test]
fn log_q_is_each_items_share_of_the_train_positives() {
    let dir = tempfile::tempdir().unwrap();
    // `seed` protocol: only rated-above-threshold rows are positives, so q is not the
    // item's share of train rows.
    let data = synthetic_dataset(dir.path());
    let mut config = small_config(&data, &dir.path().join("q"));
    config.loss.kind = LossKind::InBatchSoftmax;
    config.loss.logq_correction = true;
    let (q, dataset) = item_q_of(&config);
    let batch = q.batch.expect("in-batch softmax with log-Q has q");
    assert!(q.sampler.is_none(), "no sampler q without shared negatives");
    let train = dataset.interactions(Split::Train).unwrap();
    let mut positives = vec![0u64; dataset.items.movie_id.len()];
    for (&row, &label) in train.item_row.iter().zip(&train.label) {
        positives[row as usize] += u64::from(label);
    }
    let total: u64 = positives.iter().sum();
    assert!(total > 0 && (total as usize) < train.len());
    for (item, (&q, &count)) in batch.iter().zip(&positives).enumerate() {
        assert_eq!(q, count as f64 / total as f64, "item row {item}");
    }

    // Mixed negatives under leave-last-out: a column's q is its expected count in a batch of
    // B rows and K shared items, B q_batch + K q_sampler; q_sampler is uniform here.
    let data = leave_last_out_dataset(dir.path());
    let mut config = retrieval_config(&data, &dir.path().join("mixed"), "in_batch_softmax");
    config.loss.shared_negatives = 64;
    config.sampler.strategy = SamplerStrategy::Uniform;
    let (q, dataset) = item_q_of(&config);
    let counts = &dataset.items.train_count;
    let total: u32 = counts.iter().sum();
    let n = counts.len() as f64;
    let (batch, sampler) = (q.batch.as_ref().unwrap(), q.sampler.as_ref().unwrap());
    let ln_q = in_batch_log_q(&q, 256, 64).unwrap();
    for (item, &count) in counts.iter().enumerate() {
        // Every leave-last-out train row is a positive: q is the train count's share.
        assert_eq!(batch[item], f64::from(count) / f64::from(total));
        assert_eq!(sampler[item], 1.0 / n);
        let expected = (256.0 * batch[item] + 64.0 / n).ln() as f32;
        assert!(
            (ln_q(item as u32) - expected).abs() < 1e-6,
            "item row {item}"
        );
    }
    let off = ItemQ {
        batch: None,
        sampler: None,
    };
    assert!(in_batch_log_q(&off, 256, 64).is_none());
}

#[test]
fn in_batch_softmax_with_the_trainers_log_q_at_temperature_0_05_by_hand() {
    // Three rows, items 0..3 of q = 0.5, 0.3, 0.2; cosine-like scores; temperature 0.05.
    // Row i: -ln( e^(s_ii / T - ln q_i) / sum_j e^(s_ij / T - ln q_j) ).
    let q = ItemQ {
        batch: Some(vec![0.5, 0.3, 0.2]),
        sampler: None,
    };
    let ln_q = in_batch_log_q(&q, 3, 0).unwrap();
    let scores = [[0.9f64, 0.2, -0.1], [0.3, 0.8, 0.5], [0.0, 0.75, 0.7]];
    let t = 0.05;
    let mut expected = 0.0;
    for (i, row) in scores.iter().enumerate() {
        let logits: Vec<f64> = (0..3)
            .map(|j| row[j] / t - [0.5f64, 0.3, 0.2][j].ln())
            .collect();
        let max = logits.iter().cloned().fold(f64::MIN, f64::max);
        let sum: f64 = logits.iter().map(|l| (l - max).exp()).sum();
        expected += -(logits[i] - max - sum.ln()) / 3.0;
    }
    let flat: Vec<f32> = scores.iter().flatten().map(|&s| s as f32).collect();
    let scores = Tensor::from_vec(flat, (3, 3), &Device::Cpu).unwrap();
    let offsets: Vec<f32> = (0..3).map(&ln_q).collect();
    let offsets = Tensor::from_vec(offsets, 3, &Device::Cpu).unwrap();
    let items = [0u32, 1, 2];
    let with = crate::loss::in_batch_softmax(&scores, t, Some(&offsets), Some(&items))
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(
        (f64::from(with) - expected).abs() < 1e-4 * expected.abs(),
        "{with} vs {expected}"
    );
    // Row 2 scores item 1 above its own item; the correction lifts the rarer item 2.
    let without = crate::loss::in_batch_softmax(&scores, t, None, Some(&items))
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!((with - without).abs() > 0.05, "{with} vs {without}");
}

#[test]
fn log_q_changes_training_the_same_way_on_both_engines() {
    let dir = tempfile::tempdir().unwrap();
    let data = leave_last_out_dataset(dir.path());
    let run = |engine: crate::config::EngineKind, logq: bool| {
        let name = format!("{engine:?}-{logq}");
        let mut config = retrieval_config(&data, &dir.path().join(name), "in_batch_softmax");
        config.train.epochs = 1;
        config.train.engine = engine;
        config.loss.logq_correction = logq;
        train(&config, &TrainOptions::default()).unwrap().epochs[0].train_loss
    };
    use crate::config::EngineKind::{Candle, Fused};
    let (fused_on, fused_off) = (run(Fused, true), run(Fused, false));
    let (candle_on, candle_off) = (run(Candle, true), run(Candle, false));
    let gap = |a: f64, b: f64| (a - b).abs() / b.abs();
    // The engines agree to ~1e-8 here; the correction moves the loss by ~1%.
    assert!(gap(fused_on, fused_off) > 1e-3, "{fused_on} vs {fused_off}");
    assert!(gap(fused_on, candle_on) < 1e-4, "{fused_on} vs {candle_on}");
    assert!(
        gap(fused_off, candle_off) < 1e-4,
        "{fused_off} vs {candle_off}"
    );
}

/// `retrieval_config` with the sequence tower and the full softmax.
fn sequence_config(data: &Path, out: &Path) -> RunConfig {
    let mut config = retrieval_config(data, out, "in_batch_softmax");
    config.loss.kind = LossKind::FullSoftmax;
    config.loss.logq_correction = false;
    config.features.user = Some(vec!["gender".into(), "age".into()]);
    let sequence = &mut config.model.sequence;
    sequence.enabled = true;
    (sequence.max_len, sequence.blocks, sequence.heads) = (20, 1, 2);
    sequence.dropout = 0.1;
    config.train.batch_size = 64;
    config.optimizer.lr = 0.005;
    config
}

#[test]
fn the_sequence_task_learns_next_items_resumes_identically_and_checks_its_config() {
    let dir = tempfile::tempdir().unwrap();
    let data = leave_last_out_dataset(dir.path());
    for items in [
        crate::config::SequenceItemsKind::Id,
        crate::config::SequenceItemsKind::Tower,
    ] {
        let mut config = sequence_config(&data, &dir.path().join(format!("{items:?}")));
        config.model.sequence.items = items;
        let (straight, _) = straight_and_resumed(&config, |_| 2, |_| {});
        let retrieval = straight.metrics.retrieval.as_ref().unwrap();
        let random = 50.0 / retrieval.candidates as f64;
        let val = hr(retrieval.val.as_ref().unwrap(), 50);
        assert!(
            val > 2.0 * random,
            "{items:?}: val HR@50 {val}, random {random}"
        );
        assert_eq!(straight.metrics.engine, "candle");
        assert_eq!(retrieval.test.len(), 3);
        // The test query's newest item is the validation item: `masked_all` removes it too.
        for k in PROTOCOL_CUTOFFS {
            assert!(
                hr(&retrieval.test[2], k) >= hr(&retrieval.test[1], k),
                "HR@{k}"
            );
        }
        // Loss falls over the epochs: it learns something from the sequences.
        let losses: Vec<f64> = straight.epochs.iter().map(|e| e.train_loss).collect();
        assert!(
            losses[losses.len() - 1] < losses[0],
            "{items:?}: {losses:?}"
        );
        // The exported user vectors are the test queries: ranking with them gives the test HR@10.
        let loaded = load_run(&straight.run_dir).unwrap();
        let (users, dim) = loaded.embeddings(Side::User, 128).unwrap();
        let (items, _) = loaded.embeddings(Side::Item, 128).unwrap();
        let test = loaded.dataset.interactions(Split::Test).unwrap();
        let counts = &loaded.dataset.items.train_count;
        let score = |u: u32, i: usize| -> f32 {
            let (a, b) = (&users[u as usize * dim..][..dim], &items[i * dim..][..dim]);
            a.iter().zip(b).map(|(x, y)| x * y).sum()
        };
        let hits = test
            .user_row
            .iter()
            .zip(&test.item_row)
            .filter(|&(&u, &t)| {
                let target = score(u, t as usize);
                let ahead = (0..counts.len())
                    .filter(|&i| counts[i] > 0 && score(u, i) > target)
                    .count();
                ahead < 10
            })
            .count();
        let expected = hr(&retrieval.test[0], 10);
        assert_eq!(
            hits as f64 / test.user_row.len() as f64,
            expected,
            "{items:?}"
        );
    }
    let base = sequence_config(&data, &dir.path().join("bad"));
    let refused = |edit: &dyn Fn(&mut RunConfig), key: &str| {
        let mut config = base.clone();
        edit(&mut config);
        let message = train(&config, &TrainOptions::default())
            .unwrap_err()
            .to_string();
        assert!(message.contains(key), "{key}: {message}");
    };
    refused(&|c| c.loss.kind = LossKind::Bce, "loss.kind");
    refused(&|c| c.model.sequence.enabled = false, "loss.kind");
    refused(&|c| c.features.history_len = 3, "features.history_len");
    refused(&|c| c.model.sequence.heads = 3, "heads");
    refused(
        &|c| c.train.engine = crate::config::EngineKind::Fused,
        "train.engine",
    );
}

#[test]
fn replicated_sequence_steps_train_the_model_one_graph_does() {
    let dir = tempfile::tempdir().unwrap();
    let data = leave_last_out_dataset(dir.path());
    // Without dropout the parts' masks do not matter: any difference is in the gradients,
    // and with token tables from the item tower (`tower`) they flow back through the
    // catalogue the parts share.
    let losses = |replicas: usize| {
        let name = format!("replicas-{replicas}");
        let mut config = sequence_config(&data, &dir.path().join(name));
        config.model.sequence.items = crate::config::SequenceItemsKind::Tower;
        config.model.sequence.dropout = 0.0;
        config.train.epochs = 3;
        config.train.replicas = replicas;
        let report = train(&config, &TrainOptions::default()).unwrap();
        let losses: Vec<f64> = report.epochs.iter().map(|e| e.train_loss).collect();
        let val = hr(report.metrics.retrieval.unwrap().val.as_ref().unwrap(), 50);
        (losses, val)
    };
    let (one, val_one) = losses(1);
    for replicas in [2, 3] {
        let (parts, val_parts) = losses(replicas);
        for (a, b) in one.iter().zip(&parts) {
            assert!((a - b).abs() < 1e-4 * a, "{replicas}: {one:?} vs {parts:?}");
        }
        assert!(
            (val_one - val_parts).abs() < 0.02,
            "{val_one} vs {val_parts}"
        );
    }
    assert!(one[2] < one[0] - 0.01, "it learns: {one:?}");
    let mut sampled = sampled_sequence_config(&data, &dir.path().join("sampled"), 4);
    sampled.train.replicas = 2;
    let message = train(&sampled, &TrainOptions::default())
        .unwrap_err()
        .to_string();
    assert!(message.contains("train.replicas"), "{message}");
}

#[test]
fn excluding_seen_items_lowers_the_training_softmax_and_selects_on_the_masked_ranking() {
    let dir = tempfile::tempdir().unwrap();
    let data = leave_last_out_dataset(dir.path());
    let run = |exclude: bool| {
        let mut config = sequence_config(&data, &dir.path().join(format!("exclude-{exclude}")));
        config.train.epochs = 2;
        config.loss.exclude_seen = exclude;
        if exclude {
            config.train.select_ranking = crate::config::SelectRanking::Masked;
        }
        train(&config, &TrainOptions::default()).unwrap()
    };
    let (plain, excluding) = (run(false), run(true));
    // The same first weights, fewer columns in every position's softmax: a lower loss.
    let first = |r: &TrainReport| r.epochs[0].train_loss;
    assert!(
        first(&excluding) < first(&plain) - 1e-3,
        "{} vs {}",
        first(&excluding),
        first(&plain)
    );
    // Validation ranks (and selects on) the masked variant; the test still reports both.
    for (report, variant) in [(&plain, "unmasked"), (&excluding, "masked")] {
        let retrieval = report.metrics.retrieval.as_ref().unwrap();
        let val = retrieval.val.as_ref().unwrap();
        assert_eq!(val.variant, variant);
        assert_eq!(report.metrics.val_hit_rate, Some(hr(val, 50)));
        assert_eq!(retrieval.popularity_val.variant, variant);
        assert_eq!(retrieval.test.len(), 3);
    }
    let mut sampled = sampled_sequence_config(&data, &dir.path().join("sampled-excluding"), 4);
    sampled.loss.exclude_seen = true;
    let message = train(&sampled, &TrainOptions::default())
        .unwrap_err()
        .to_string();
    assert!(message.contains("loss.exclude_seen"), "{message}");
}

/// `sequence_config` with the sampled softmax: the batch's targets and `shared` negatives.
fn sampled_sequence_config(data: &Path, out: &Path, shared: usize) -> RunConfig {
    let mut config = sequence_config(data, out);
    config.loss.kind = LossKind::InBatchSoftmax;
    config.loss.shared_negatives = shared;
    config.sampler.strategy = crate::config::SamplerStrategy::Uniform;
    config
}

#[test]
fn the_sampled_sequence_softmax_is_the_full_one_when_its_columns_cover_the_catalogue() {
    let dir = tempfile::tempdir().unwrap();
    let data = leave_last_out_dataset(dir.path());
    let first_loss = |config: &mut RunConfig| {
        config.train.epochs = 1;
        train(config, &TrainOptions::default()).unwrap().epochs[0].train_loss
    };
    let full = first_loss(&mut sequence_config(&data, &dir.path().join("full")));
    // 6,000 uniform draws per step cover all 300 items: the same columns, the same loss.
    let covered = first_loss(&mut sampled_sequence_config(
        &data,
        &dir.path().join("all"),
        6000,
    ));
    assert!((full - covered).abs() < 1e-4 * full, "{full} vs {covered}");
    // With a few negatives the softmax runs over fewer columns: a smaller loss.
    let few = first_loss(&mut sampled_sequence_config(
        &data,
        &dir.path().join("few"),
        4,
    ));
    assert!(few < full - 0.05, "{few} vs {full}");
}

#[test]
fn the_sampled_sequence_softmax_with_log_q_and_all_windows_learns_and_resumes_identically() {
    let dir = tempfile::tempdir().unwrap();
    let data = leave_last_out_dataset(dir.path());
    let mut config = sampled_sequence_config(&data, &dir.path().join("sampled"), 16);
    config.sampler.strategy = crate::config::SamplerStrategy::Popularity;
    config.loss.logq_correction = true;
    config.model.sequence.windows = crate::config::SequenceWindowsKind::All;
    let (straight, _) = straight_and_resumed(&config, |_| 2, |_| {});
    let retrieval = straight.metrics.retrieval.as_ref().unwrap();
    let random = 50.0 / retrieval.candidates as f64;
    let val = hr(retrieval.val.as_ref().unwrap(), 50);
    assert!(val > 2.0 * random, "val HR@50 {val}, random {random}");
    // `all` trains every train position each epoch: each user's items after the first.
    let train = crate::inputs::open_dataset(&data, crate::config::Protocol::LeaveLastOut)
        .unwrap()
        .interactions(Split::Train)
        .unwrap();
    let mut per_user = std::collections::HashMap::<u32, usize>::new();
    train
        .user_row
        .iter()
        .for_each(|&u| *per_user.entry(u).or_default() += 1);
    let positions: usize = per_user.values().map(|&n| n.saturating_sub(1)).sum();
    assert!(straight.epochs.iter().all(|e| e.train_rows == positions));
    let last = train_rows_of(&sequence_config(&data, &dir.path().join("last")));
    assert!(last < positions, "{last} of {positions}");
}

/// The positions the first epoch of `config` trains.
fn train_rows_of(config: &RunConfig) -> usize {
    let mut config = config.clone();
    config.train.epochs = 1;
    train(&config, &TrainOptions::default()).unwrap().epochs[0].train_rows
}

mod hard;

#[test]
fn parallel_towers_train_through_candle_and_export_vectors_that_score_as_trained() {
    use crate::config::{BranchKind, EngineKind};
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_dataset(dir.path());
    let out = dir.path().join("parallel");
    let mut config = small_config(&data, &out);
    for tower in [&mut config.model.user_tower, &mut config.model.item_tower] {
        tower.branches = vec![BranchKind::Mlp, BranchKind::Cross, BranchKind::Fm];
    }
    config.train.epochs = 2;
    config.check().unwrap();
    // The CPU engine runs the plain tower only: "fused" is refused before anything is written.
    let mut fused = config.clone();
    fused.train.engine = EngineKind::Fused;
    fused.output.dir = dir.path().join("fused");
    let err = train(&fused, &TrainOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("train.engine") && err.contains("parallel"),
        "{err}"
    );
    assert!(!fused.output.dir.exists());
    // "auto" trains through Candle.
    let report = train(&config, &TrainOptions::default()).unwrap();
    assert_eq!(report.metrics.engine, "candle");
    let test = report.metrics.test.unwrap();
    assert!(test.auc > 0.6, "test auc {}", test.auc);
    // The exported vectors (what export, recommend and serving read) are the folded ones:
    // their dot products rank the test rows exactly as the trained scores do.
    let loaded = load_run(&out).unwrap();
    let (users, dim) = loaded.embeddings(Side::User, 64).unwrap();
    let (items, item_dim) = loaded.embeddings(Side::Item, 64).unwrap();
    assert_eq!((dim, item_dim), (3 * 16 + 1, 3 * 16 + 1));
    let n_users = users.len() / dim;
    let rows = crate::inputs::split_rows(&loaded.dataset, Split::Test, n_users, items.len() / dim)
        .unwrap();
    let dots: Vec<f32> = rows
        .users
        .iter()
        .zip(&rows.items)
        .map(|(&u, &i)| {
            let (u, i) = (u as usize * dim, i as usize * dim);
            (0..dim).map(|k| users[u + k] * items[i + k]).sum()
        })
        .collect();
    let from_vectors = PointwiseMetrics::from_logits(&dots, &rows.labels, &rows.users);
    assert!(
        (from_vectors.auc - test.auc).abs() < 1e-4 && (from_vectors.gauc - test.gauc).abs() < 1e-4,
        "{from_vectors:?} vs {test:?}"
    );
}

#[test]
fn explain_summarises_senet_weights_per_field_and_segment() {
    use crate::explain::{ExplainOptions, IMPORTANCE_JSON, IMPORTANCE_SVG, explain_run};
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_dataset(dir.path());
    let out = dir.path().join("senet");
    let mut config = small_config(&data, &out);
    config.train.epochs = 1;
    train(&config, &TrainOptions::default()).unwrap();
    let report = explain_run(&out, &ExplainOptions::default()).unwrap();
    let loaded = load_run(&out).unwrap();
    let val_rows = loaded.dataset.interactions(Split::Val).unwrap().len();
    assert_eq!((report.rows, report.split.as_str()), (val_rows, "val"));
    let sides = [Side::User, Side::Item];
    let defaults = ["age", "rating_count_bucket"];
    assert_eq!(report.towers.len(), 2);
    for ((tower, side), default) in report.towers.iter().zip(sides).zip(defaults) {
        assert_eq!(tower.side, side.as_str());
        let names: Vec<&str> = loaded
            .model
            .config()
            .side_features(side)
            .map(|f| f.name.as_str())
            .collect();
        let fields: Vec<&str> = tower.fields.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, names);
        // Sigmoid excitation: every weight strictly inside (0, 1), quantiles in order.
        for f in &tower.fields {
            assert!(
                0.0 < f.p10 && f.p10 <= f.p50 && f.p50 <= f.p90 && f.p90 < 1.0,
                "{f:?}"
            );
            assert!(
                f.p10 <= f.mean && f.mean <= f.p90 + f.std && f.std >= 0.0,
                "{f:?}"
            );
        }
        // The segments partition the rows: their sizes add up, their values are distinct, and
        // the row-weighted mean of their means is the overall mean.
        assert_eq!(tower.segment_feature.as_deref(), Some(default));
        assert!(tower.segments.len() > 1, "{default}");
        let rows: usize = tower.segments.iter().map(|s| s.rows).sum();
        assert_eq!(rows, report.rows);
        let mut values: Vec<&str> = tower.segments.iter().map(|s| s.value.as_str()).collect();
        values.sort_unstable();
        values.dedup();
        assert_eq!(values.len(), tower.segments.len());
        for (k, f) in tower.fields.iter().enumerate() {
            let weighted: f64 = tower
                .segments
                .iter()
                .map(|s| s.fields[k].mean * s.rows as f64)
                .sum();
            assert!(
                (weighted / rows as f64 - f.mean).abs() < 1e-9,
                "{}",
                f.field
            );
        }
    }
    // The JSON file round-trips; the chart names the towers and fields.
    let text = std::fs::read_to_string(out.join(IMPORTANCE_JSON)).unwrap();
    let read: crate::explain::SenetImportance = serde_json::from_str(&text).unwrap();
    assert_eq!(read, report);
    let svg = std::fs::read_to_string(out.join(IMPORTANCE_SVG)).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("user tower") && svg.contains("movie_id"));
    // Another segment feature; an unknown one is named with the ones there are.
    let by_gender = ExplainOptions {
        segment_user: Some("gender".into()),
        segment_item: None,
    };
    let report = crate::explain::senet_importance(&loaded, &by_gender).unwrap();
    assert_eq!(report.towers[0].segment_feature.as_deref(), Some("gender"));
    let bad = ExplainOptions {
        segment_user: Some("shoe_size".into()),
        segment_item: None,
    };
    let err = crate::explain::senet_importance(&loaded, &bad)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--segment-user") && err.contains("shoe_size") && err.contains("occupation"),
        "{err}"
    );
    // A run without SENet is an error naming the run.
    let plain = dir.path().join("plain");
    let mut config = small_config(&data, &plain);
    config.train.epochs = 1;
    config.model.senet.enabled = false;
    train(&config, &TrainOptions::default()).unwrap();
    let err = explain_run(&plain, &ExplainOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&plain.display().to_string()) && err.contains("no SENet"),
        "{err}"
    );
}
