//! Hard negatives (`[sampler.hard]`) and the log-Q variant (`loss.logq`) in whole runs: offline
//! mining resumes identically and does not depend on the thread count; the online variant and
//! `negatives_only` compute the same loss on both engines.

use super::*;
use crate::config::{EngineKind, LogQTarget};

#[test]
fn offline_mining_trains_resumes_identically_and_ignores_the_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_dataset(dir.path());
    let mut config = small_config(&data, &dir.path().join("run"));
    config.sampler.hard.mine_every = 1;
    config.sampler.hard.band = [11, 60];
    config.train.epochs = 3;
    config.check().unwrap();
    // Cut after epoch 1; epoch 2 mines with the weights the resumed run loads.
    let (straight, _) = straight_and_resumed(&config, |_| 1, |_| {});
    // Mining changes the negatives from epoch 2 on, not before.
    let mut plain = small_config(&data, &dir.path().join("plain"));
    plain.train.epochs = 3;
    let plain = train(&plain, &TrainOptions::default()).unwrap();
    assert_eq!(plain.epochs[0].train_loss, straight.epochs[0].train_loss);
    assert_ne!(plain.epochs[1].train_loss, straight.epochs[1].train_loss);
    let auc = straight.metrics.val.unwrap().auc;
    assert!(auc > 0.6, "val auc {auc}");
    let run = |threads: usize| {
        let mut config = config.clone();
        config.output.dir = dir.path().join(format!("threads-{threads}"));
        config.train.epochs = 2;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| train(&config, &TrainOptions::default()).unwrap())
    };
    let (one, two) = (run(1), run(2));
    assert_eq!(comparable(&one.epochs), comparable(&two.epochs));
    assert!(best_weights(&one) == best_weights(&two));
}

#[test]
fn offline_mining_under_leave_last_out_with_history_trains() {
    let dir = tempfile::tempdir().unwrap();
    let data = leave_last_out_dataset(dir.path());
    let mut config = retrieval_config(&data, &dir.path().join("run"), "sampled_softmax");
    config.features.history_len = 3;
    config.sampler.hard.mine_every = 1;
    config.sampler.hard.band = [6, 40];
    config.train.epochs = 2;
    config.check().unwrap();
    let report = train(&config, &TrainOptions::default()).unwrap();
    let retrieval = report.metrics.retrieval.unwrap();
    let random = 50.0 / retrieval.candidates as f64;
    let val = hr(retrieval.val.as_ref().unwrap(), 50);
    assert!(val > 1.5 * random, "val HR@50 {val}, random {random}");
}

#[test]
fn online_hard_negatives_and_negatives_only_log_q_agree_on_both_engines() {
    let dir = tempfile::tempdir().unwrap();
    let data = leave_last_out_dataset(dir.path());
    let run = |engine: EngineKind, online: usize, logq: LogQTarget| {
        let name = format!("{engine:?}-{online}-{logq:?}");
        let mut config = retrieval_config(&data, &dir.path().join(name), "in_batch_softmax");
        config.train.epochs = 1;
        config.train.engine = engine;
        config.sampler.hard.online = online;
        config.loss.logq = logq;
        config.check().unwrap();
        train(&config, &TrainOptions::default()).unwrap().epochs[0].train_loss
    };
    use EngineKind::{Candle, Fused};
    use LogQTarget::{All, NegativesOnly};
    let gap = |a: f64, b: f64| (a - b).abs() / b.abs();
    let base = run(Fused, 0, All);
    for (online, logq) in [(16, All), (0, NegativesOnly), (16, NegativesOnly)] {
        let (fused, candle) = (run(Fused, online, logq), run(Candle, online, logq));
        assert!(
            gap(fused, base) > 1e-3,
            "{online} {logq:?}: {fused} vs {base}"
        );
        assert!(
            gap(fused, candle) < 1e-4,
            "{online} {logq:?}: {fused} vs {candle}"
        );
    }
}
