//! The whole pipeline on synthetic data, through the `dssm` command line and the libraries: prepare a
//! dataset, train it with `configs/quickstart.toml`, compare with popularity, interrupt and resume, and reject a
//! bad config by naming its key.

use std::path::{Path, PathBuf};

use dssm_data::{Dataset, Split};
use dssm_trainer::metrics::auc;
use dssm_trainer::{RunConfig, TrainOptions};

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Prepares the quickstart's synthetic dataset (seed protocol) into `dir` through the CLI.
fn prepare_synthetic(dir: &Path) {
    let out = dir.to_str().expect("temp paths are UTF-8");
    dssm_cli::run([
        "dssm",
        "prepare-data",
        "--dataset",
        "synthetic",
        "--protocol",
        "seed",
        "--out",
        out,
        "--seed",
        "7",
    ])
    .expect("prepare-data succeeds on synthetic data");
}

/// The quickstart config pointed at a scratch dataset and run folder, trained for 2 of its 8
/// epochs: enough to beat popularity and to interrupt and resume.
fn quickstart(dataset: &Path, run: &Path) -> RunConfig {
    let mut config = RunConfig::from_file(workspace_root().join("configs/quickstart.toml"))
        .expect("configs/quickstart.toml is valid");
    config.data.path = dataset.to_path_buf();
    config.output.dir = run.to_path_buf();
    config.train.epochs = 2;
    config
}

/// Test AUC of ranking every test row by its movie's train interaction count.
fn popularity_auc(dataset: &Path) -> f64 {
    let dataset = Dataset::open(dataset).unwrap();
    let test = dataset.interactions(Split::Test).unwrap();
    let scores: Vec<f64> = test
        .item_row
        .iter()
        .map(|&row| f64::from(dataset.items.train_count[row as usize]))
        .collect();
    auc(&scores, &test.label).expect("test has both classes")
}

#[test]
fn quickstart_beats_popularity_and_resume_reproduces_the_uninterrupted_run() {
    let scratch = tempfile::tempdir().unwrap();
    let dataset = scratch.path().join("synthetic-seed");
    prepare_synthetic(&dataset);

    let whole_dir = scratch.path().join("whole");
    let config = quickstart(&dataset, &whole_dir);
    let whole = dssm_trainer::train(&config, &TrainOptions::default()).expect("quickstart trains");
    let test = whole
        .metrics
        .test
        .as_ref()
        .expect("a finished run is tested");
    let popularity = popularity_auc(&dataset);
    println!(
        "quickstart test AUC {:.4} (GAUC {:.4}), popularity {:.4}",
        test.auc, test.gauc, popularity
    );
    assert!(
        test.auc > popularity + 0.03,
        "model AUC {} does not clearly beat popularity {}",
        test.auc,
        popularity
    );
    for file in [
        "metrics.json",
        "metrics.jsonl",
        "config.toml",
        "training.svg",
    ] {
        assert!(whole_dir.join(file).exists(), "{file} missing from the run");
    }

    // The same run, interrupted after its first epoch and resumed, trains only the second epoch
    // and ends with the same figures.
    let split_dir = scratch.path().join("interrupted");
    let config = quickstart(&dataset, &split_dir);
    let interrupted = dssm_trainer::train(
        &config,
        &TrainOptions {
            stop_after_epochs: Some(1),
            ..TrainOptions::default()
        },
    )
    .expect("the first epoch trains");
    assert!(interrupted.metrics.test.is_none());
    let resumed = dssm_trainer::train(
        &config,
        &TrainOptions {
            resume: true,
            ..TrainOptions::default()
        },
    )
    .expect("the run resumes");
    assert_eq!(resumed.epochs_trained, 1, "the resumed call restarted");
    assert_eq!(resumed.epochs[0], interrupted.epochs[0]);
    assert_eq!(resumed.metrics.best_epoch, whole.metrics.best_epoch);
    assert_eq!(resumed.metrics.val, whole.metrics.val);
    assert_eq!(resumed.metrics.test, whole.metrics.test);
    let losses = |epochs: &[dssm_trainer::EpochRecord]| -> Vec<f64> {
        epochs.iter().map(|e| e.train_loss).collect()
    };
    assert_eq!(losses(&resumed.epochs), losses(&whole.epochs));

    // `eval` re-evaluates the saved best checkpoint to the same test figures.
    let again = dssm_trainer::evaluate_run(&whole_dir, Split::Test).unwrap();
    assert_eq!(Some(&again.metrics), whole.metrics.test.as_ref());
}

#[test]
fn a_bad_config_is_rejected_naming_the_key() {
    let scratch = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(workspace_root().join("configs/quickstart.toml")).unwrap();

    let misspelt = text.replacen("[model.user_tower]", "[model.user_tower]\ndropuot = 0.1", 1);
    let path = scratch.path().join("misspelt.toml");
    std::fs::write(&path, misspelt).unwrap();
    let error = dssm_cli::run(["dssm", "train", "--config", path.to_str().unwrap()]).unwrap_err();
    let message = format!("{error:#}");
    assert!(message.contains("dropuot"), "{message}");

    let bad_value = text.replacen("lr = 0.003", "lr = -1.0", 1);
    assert_ne!(bad_value, text, "the quickstart's learning rate line moved");
    let path = scratch.path().join("bad-lr.toml");
    std::fs::write(&path, bad_value).unwrap();
    let message = format!(
        "{:#}",
        dssm_cli::run(["dssm", "train", "--config", path.to_str().unwrap()]).unwrap_err()
    );
    assert!(message.contains("optimizer.lr"), "{message}");
}
