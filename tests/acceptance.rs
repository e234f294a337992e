//! Real-data acceptance on MovieLens-1M, read from `../shared/datasets/ml-1m-bench` beside the checkout
//! (CI and the development machines have it; it is never committed).
//!
//! Every test here is `#[ignore]`d, so `cargo test` lists it as ignored rather than passing it
//! unseen; `cargo xtask acceptance` runs them (`--ignored`), which takes minutes. Without the data
//! each prints that it skipped, unless `DSSM_REQUIRE_REAL_DATA=1` says the data must be there (CI
//! sets it when it is): then a missing folder fails the test.

use std::collections::HashSet;
use std::path::PathBuf;

use dssm_data::{
    Dataset, DatasetKind, ItemStatistics, PrepareRequest, Protocol, Source, Split, prepare,
};

/// The bench copy of ML-1M, or `None` (said so) when it is absent and not required.
fn bench_folder() -> Option<PathBuf> {
    let folder =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/datasets/ml-1m-bench");
    if folder.join("ratings.dat").exists() {
        return Some(folder);
    }
    let required = std::env::var("DSSM_REQUIRE_REAL_DATA").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "DSSM_REQUIRE_REAL_DATA=1 but {} has no ratings.dat",
        folder.display()
    );
    println!(
        "skipped: {} not found, so the real-data acceptance did not run",
        folder.display()
    );
    None
}

fn prepare_ml1m(source: PathBuf, protocol: Protocol, out: PathBuf) -> Dataset {
    let mut request = PrepareRequest::new(Source::Folder(source), DatasetKind::Ml1m, &out);
    request.protocol = protocol;
    request.seed = 42;
    let summary = prepare(&request, &|_| {}).expect("ML-1M prepares");
    println!(
        "{}: {} ratings (train {}, val {}, test {}), {} users, {} rated movies, {:.2}% positive, {:.2} s",
        protocol.name(),
        summary.rows.total(),
        summary.rows.train,
        summary.rows.val,
        summary.rows.test,
        summary.users,
        summary.rated_items,
        summary.positive_share * 100.0,
        summary.elapsed.as_secs_f64()
    );
    Dataset::open(&out).expect("the prepared dataset opens")
}

/// A scratch folder with ML-1M freshly prepared under `protocol` at `<scratch>/ml-1m-<protocol>`
/// (that path and its dataset), or `None`, said, without the bench data.
fn prepared_in_scratch(protocol: Protocol) -> Option<(tempfile::TempDir, PathBuf, Dataset)> {
    let source = bench_folder()?;
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join(format!("ml-1m-{}", protocol.name()));
    let dataset = prepare_ml1m(source, protocol, dir.clone());
    Some((scratch, dir, dataset))
}

#[test]
#[ignore = "needs ../shared/datasets/ml-1m-bench; run by `cargo xtask acceptance`"]
fn ml1m_counts_match_the_published_dataset_under_both_protocols() {
    let Some(source) = bench_folder() else { return };
    let scratch = tempfile::tempdir().unwrap();
    for protocol in [Protocol::Seed, Protocol::LeaveLastOut] {
        let dataset = prepare_ml1m(
            source.clone(),
            protocol,
            scratch.path().join(protocol.name()),
        );
        let manifest = &dataset.manifest;
        assert_eq!(manifest.item_statistics, ItemStatistics::Train);
        assert_eq!(manifest.rows.total(), 1_000_209);
        assert_eq!(manifest.users, 6_040);
        assert_eq!(manifest.rated_items, 3_706);
        assert!(
            (manifest.positive_share - 0.575).abs() < 0.001,
            "positive share {}",
            manifest.positive_share
        );
        let mut rated = HashSet::new();
        let mut rows = 0;
        for split in [Split::Train, Split::Val, Split::Test] {
            let interactions = dataset.interactions(split).unwrap();
            rows += interactions.len();
            rated.extend(interactions.movie_id.iter().copied());
        }
        assert_eq!(rows, 1_000_209);
        assert_eq!(rated.len(), 3_706);
        match protocol {
            Protocol::Seed => {
                assert_eq!(manifest.rows.test, 200_042);
                assert_eq!(manifest.rows.train + manifest.rows.val, 800_167);
            }
            Protocol::LeaveLastOut => {
                assert_eq!(manifest.rows.test, 6_040);
                assert_eq!(manifest.rows.val, 6_040);
            }
            Protocol::Time => unreachable!("only seed and leave-last-out are prepared here"),
        }
    }
}

/// Trains `configs/<name>` on a prepared ML-1M folder and returns the final report.
fn train_recipe(
    name: &str,
    dataset: &std::path::Path,
    runs: &std::path::Path,
) -> dssm_trainer::TrainReport {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut config = dssm_trainer::RunConfig::from_file(root.join("configs").join(name))
        .unwrap_or_else(|e| panic!("configs/{name} is invalid: {e}"));
    config.data.path = dataset.to_path_buf();
    config.output.dir = runs.join(name.trim_end_matches(".toml"));
    dssm_trainer::train(&config, &dssm_trainer::TrainOptions::default())
        .unwrap_or_else(|e| panic!("configs/{name} failed to train: {e}"))
}

/// Prepares ML-1M under `protocol` in a scratch folder and trains `configs/<name>` on it; `None`
/// when the data is absent (the test then says it skipped).
fn train_prepared(protocol: Protocol, name: &str) -> Option<dssm_trainer::TrainReport> {
    let (scratch, dataset, _) = prepared_in_scratch(protocol)?;
    Some(train_recipe(name, &dataset, scratch.path()))
}

/// The reference's (leaky) test AUC on ML-1M under the `seed` protocol.
const REFERENCE_AUC: f64 = 0.73;

#[test]
#[ignore = "needs ../shared/datasets/ml-1m-bench and minutes; run by `cargo xtask acceptance`"]
fn senet_and_dssm_recipes_reach_the_reference_auc_without_leakage() {
    let Some((scratch, dataset, prepared)) = prepared_in_scratch(Protocol::Seed) else {
        return;
    };
    // Without leakage: the movie statistics come from the train rows only, and the runs record
    // that dataset.
    assert_eq!(prepared.manifest.item_statistics, ItemStatistics::Train);
    let mut test_auc = Vec::new();
    for name in ["senet.toml", "dssm.toml"] {
        let report = train_recipe(name, &dataset, scratch.path());
        let m = &report.metrics;
        let test = m.test.as_ref().expect("a finished run is tested");
        let recorded: serde_json::Value = serde_json::from_slice(
            &std::fs::read(report.run_dir.join(dssm_trainer::layout::DATASET_MANIFEST)).unwrap(),
        )
        .unwrap();
        assert_eq!(recorded["item_statistics"], "train", "{name}");
        println!(
            "{name}: test AUC {:.4}, GAUC {:.4} ({} users), log loss {:.4}, best epoch {}, wall {:.0} s, {:.0} samples/s",
            test.auc,
            test.gauc,
            test.gauc_users,
            test.logloss,
            m.best_epoch,
            m.wall_s,
            m.train_samples_per_sec
        );
        test_auc.push(test.auc);
    }
    for (name, auc) in ["senet.toml", "dssm.toml"].iter().zip(&test_auc) {
        assert!(
            *auc >= REFERENCE_AUC,
            "configs/{name} scored test AUC {auc:.4}, below the reference's {REFERENCE_AUC}"
        );
    }
}

/// The target of the parallel-towers issue: the best leak-free seed-protocol test AUC.
const BEST_SEED_AUC_TARGET: f64 = 0.77;

#[test]
#[ignore = "needs ../shared/datasets/ml-1m-bench and minutes; run by `cargo xtask acceptance`"]
fn the_rated_rows_recipe_reaches_the_best_seed_auc_target() {
    let Some(report) = train_prepared(Protocol::Seed, "rated.toml") else {
        return;
    };
    let test = report
        .metrics
        .test
        .as_ref()
        .expect("a finished run is tested");
    println!(
        "rated.toml: test AUC {:.4}, GAUC {:.4}, best epoch {}, wall {:.0} s",
        test.auc, test.gauc, report.metrics.best_epoch, report.metrics.wall_s
    );
    assert!(
        test.auc >= BEST_SEED_AUC_TARGET,
        "configs/rated.toml scored test AUC {:.4}, below {BEST_SEED_AUC_TARGET}",
        test.auc
    );
}

/// The ranking metrics of a `leave-last-out` run (the retrieval and sequence recipes).
fn ranking_metrics(report: &dssm_trainer::TrainReport) -> &dssm_trainer::RetrievalMetrics {
    (report.metrics.retrieval.as_ref()).expect("a leave-last-out run reports ranking metrics")
}

/// DeepMatch's published DSSM test HR@50 on ML-1M under leave-last-out (unmasked).
const DEEPMATCH_DSSM_HR50: f64 = 0.3555;

#[test]
#[ignore = "needs ../shared/datasets/ml-1m-bench and minutes; run by `cargo xtask acceptance`"]
fn retrieval_recipe_beats_popularity_at_every_cutoff() {
    let Some(report) = train_prepared(Protocol::LeaveLastOut, "retrieval.toml") else {
        return;
    };
    let retrieval = ranking_metrics(&report);
    // Every variant for both rankers, every protocol cut-off: nothing is left out of the zips.
    let variants = |reports: &[dssm_retrieval::RankingReport]| -> Vec<String> {
        reports.iter().map(|r| r.variant.clone()).collect()
    };
    let all = ["unmasked", "masked", "masked_all"];
    assert_eq!(variants(&retrieval.test), all);
    assert_eq!(variants(&retrieval.popularity_test), all);
    for (model, popularity) in retrieval.test.iter().zip(&retrieval.popularity_test) {
        let cutoffs = |r: &dssm_retrieval::RankingReport| -> Vec<usize> {
            r.at_k.iter().map(|m| m.k).collect()
        };
        assert_eq!(cutoffs(model), dssm_retrieval::PROTOCOL_CUTOFFS);
        assert_eq!(cutoffs(popularity), dssm_retrieval::PROTOCOL_CUTOFFS);
        for cutoff in &model.at_k {
            let baseline = popularity.at(cutoff.k).expect("same cutoffs");
            println!(
                "{:<10} HR@{:<3} model {:.4} popularity {:.4}   NDCG model {:.4} popularity {:.4}",
                model.variant,
                cutoff.k,
                cutoff.hit_rate,
                baseline.hit_rate,
                cutoff.ndcg,
                baseline.ndcg
            );
            assert!(
                cutoff.hit_rate > baseline.hit_rate,
                "{} HR@{}: model {} does not beat popularity {}",
                model.variant,
                cutoff.k,
                cutoff.hit_rate,
                baseline.hit_rate
            );
        }
    }
    let unmasked_hr50 = retrieval.test[0]
        .at(50)
        .expect("HR@50 is reported")
        .hit_rate;
    println!(
        "test HR@50 (unmasked) {unmasked_hr50:.4}; DeepMatch's published DSSM figure {DEEPMATCH_DSSM_HR50}; \
         best epoch {} of {}, wall {:.0} s, {:.0} samples/s",
        report.metrics.best_epoch,
        report.metrics.epochs_completed,
        report.metrics.wall_s,
        report.metrics.train_samples_per_sec
    );
    assert!(
        unmasked_hr50 > DEEPMATCH_DSSM_HR50,
        "test HR@50 (unmasked) {unmasked_hr50:.4} is not above DeepMatch's DSSM {DEEPMATCH_DSSM_HR50}"
    );
}

/// Published ML-1M figures the sequence tower is measured against (the sequence-tower issue):
/// SDM's unmasked test HR@50 (DeepMatch) and SASRec's HR@10 (generative-recommenders), both
/// selected on test; and the targets. generative-recommenders ranks with the query's whole
/// history removed (`masked_all`); the protocol's `masked` keeps the validation item in the test
/// ranking, so the targets are asserted on `masked_all`, and `masked` is held to SASRec's HR@10
/// and the HR@50 target.
const SDM_UNMASKED_HR50: f64 = 0.4752;
const SASREC_HR10: f64 = 0.2853;
const HR10_TARGET: f64 = 0.30;
const NDCG10_TARGET: f64 = 0.17;
const HR50_TARGET: f64 = 0.56;

#[test]
#[ignore = "needs ../shared/datasets/ml-1m-bench and about 16 minutes; run by `cargo xtask acceptance`"]
fn the_sequence_recipe_beats_sdm_and_sasrec_where_it_claims_to() {
    let Some(report) = train_prepared(Protocol::LeaveLastOut, "sequence.toml") else {
        return;
    };
    let retrieval = ranking_metrics(&report);
    let [unmasked, masked, masked_all] = &retrieval.test[..] else {
        panic!("three test variants, got {}", retrieval.test.len());
    };
    assert_eq!(
        (&*unmasked.variant, &*masked.variant, &*masked_all.variant),
        ("unmasked", "masked", "masked_all")
    );
    fn at(r: &dssm_retrieval::RankingReport, k: usize) -> &dssm_retrieval::MetricsAtK {
        r.at(k).expect("a protocol cut-off")
    }
    println!(
        "sequence.toml: test masked HR@10 {:.4} NDCG@10 {:.4} HR@50 {:.4}; masked_all HR@10 {:.4} \
         NDCG@10 {:.4} HR@50 {:.4}; unmasked HR@50 {:.4}; best epoch {} of {}, wall {:.0} s, \
         {:.0} positions/s",
        at(masked, 10).hit_rate,
        at(masked, 10).ndcg,
        at(masked, 50).hit_rate,
        at(masked_all, 10).hit_rate,
        at(masked_all, 10).ndcg,
        at(masked_all, 50).hit_rate,
        at(unmasked, 50).hit_rate,
        report.metrics.best_epoch,
        report.metrics.epochs_completed,
        report.metrics.wall_s,
        report.metrics.train_samples_per_sec
    );
    assert!(at(unmasked, 50).hit_rate > SDM_UNMASKED_HR50);
    assert!(at(masked, 10).hit_rate > SASREC_HR10);
    assert!(at(masked, 50).hit_rate >= HR50_TARGET);
    assert!(at(masked_all, 10).hit_rate >= HR10_TARGET);
    assert!(at(masked_all, 10).ndcg >= NDCG10_TARGET);
    assert!(at(masked_all, 50).hit_rate >= HR50_TARGET);
}
