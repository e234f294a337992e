//! Robustness of the `dssm` binary: SIGKILL at random moments of `prepare-data`, `train` and
//! `export` never leaves a half-written output, and resuming after a killed training reaches the
//! uninterrupted run's test figures; corrupt run and dataset files are exit-code-1 errors naming
//! the file; a full disk is a named error that leaves the previous output intact.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn dssm() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dssm"));
    command.env("RAYON_NUM_THREADS", "2");
    command
}

fn run_ok(args: &[&str]) -> Output {
    let out = dssm().args(args).output().expect("dssm runs");
    assert!(
        out.status.success(),
        "dssm {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn path(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

/// A deterministic sequence of delays in `0..max`.
struct Delays(u64);

impl Delays {
    fn next(&mut self, max: Duration) -> Duration {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        max.mul_f64((self.0 >> 11) as f64 / (1u64 << 53) as f64)
    }
}

/// Starts `dssm args`, SIGKILLs it after `delay` (if still running); true when it was killed.
fn kill_after(args: &[&str], delay: Duration) -> bool {
    let mut child = dssm()
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("dssm starts");
    let started = Instant::now();
    while started.elapsed() < delay {
        if child.try_wait().expect("wait").is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let killed = child.try_wait().expect("wait").is_none();
    let _ = child.kill(); // SIGKILL on Unix
    let _ = child.wait();
    killed
}

fn timed(args: &[&str]) -> Duration {
    let started = Instant::now();
    run_ok(args);
    started.elapsed()
}

fn test_figures(run: &Path) -> serde_json::Value {
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("metrics.json")).unwrap()).unwrap();
    metrics["test"].clone()
}

#[test]
fn killed_prepare_train_and_export_leave_complete_outputs_and_resume_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let prepare = [
        "prepare-data",
        "--dataset",
        "synthetic",
        "--ratings",
        "300000",
        "--out",
        path(&data),
        "--overwrite",
    ];
    let full = timed(&prepare);
    let reference = dssm_data::Dataset::open(&data).unwrap();
    std::fs::remove_dir_all(&data).unwrap();
    let mut delays = Delays(7);
    let mut kills = [0usize; 3];
    for _ in 0..8 {
        kills[0] += usize::from(kill_after(&prepare, delays.next(full)));
        // Absent, or complete and the same dataset.
        if data.exists() {
            let ds = dssm_data::Dataset::open(&data).expect("a complete dataset folder");
            assert_eq!(ds.manifest.rows, reference.manifest.rows);
            assert_eq!(ds.items, reference.items);
        }
    }

    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/quickstart.toml");
    let run_args = |run: &Path| -> Vec<String> {
        [
            "train",
            "--config",
            path(&config),
            "--data",
            path(&data),
            "--run-dir",
            path(run),
            "--set",
            "train.epochs=4",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    run_ok(&prepare);
    let whole = dir.path().join("whole");
    let args = run_args(&whole);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let full = timed(&args);
    let expected = test_figures(&whole);

    // Three interrupted runs: killed once early, then a second run killed at a random moment (or
    // finishing), then completed; each must reach the whole run's test figures.
    let cut = dir.path().join("cut");
    let base = run_args(&cut);
    let mut resumed = 0;
    for _ in 0..3 {
        let _ = std::fs::remove_dir_all(&cut);
        let early = full.mul_f64(0.1) + delays.next(full.mul_f64(0.8));
        for delay in [Some(early), Some(delays.next(full)), None] {
            let mut args: Vec<&str> = base.iter().map(String::as_str).collect();
            let resumable = cut.join("checkpoints/last/state.json").exists();
            args.push(if resumable { "--resume" } else { "--overwrite" });
            match delay {
                Some(delay) => kills[1] += usize::from(kill_after(&args, delay)),
                None => {
                    run_ok(&args);
                    resumed += usize::from(resumable);
                }
            }
            assert_checkpoints_complete(&cut);
        }
        assert_eq!(
            test_figures(&cut),
            expected,
            "a killed and resumed run equals the whole one"
        );
    }
    assert!(resumed > 0, "at least one run was finished by --resume");

    let export = ["export", "--run", path(&whole)];
    let full = timed(&export);
    let embeddings = whole.join("embeddings");
    let reference =
        dssm_retrieval::read_embeddings(&embeddings.join("item_embeddings.parquet")).unwrap();
    for _ in 0..8 {
        kills[2] += usize::from(kill_after(&export, delays.next(full)));
        for file in ["user_embeddings.parquet", "item_embeddings.parquet"] {
            let file = embeddings.join(file);
            let read = dssm_retrieval::read_embeddings(&file).expect("a complete embedding file");
            if file.ends_with("item_embeddings.parquet") {
                assert_eq!(read.matrix, reference.matrix);
            }
        }
    }
    println!(
        "killed: prepare-data {} of 8, train {} of 6 ({resumed} of 3 runs then finished by --resume), export {} of 8",
        kills[0], kills[1], kills[2]
    );
    assert!(
        kills.iter().all(|&k| k > 0),
        "every command was killed at least once: {kills:?}"
    );
}

/// Every checkpoint folder that has its config has loadable weights.
fn assert_checkpoints_complete(run: &Path) {
    for checkpoint in ["best", "last"] {
        let dir = run.join("checkpoints").join(checkpoint);
        if dir.join("model.json").exists() {
            dssm_model::Dssm::load(&dir, &candle_core::Device::Cpu)
                .unwrap_or_else(|e| panic!("checkpoints/{checkpoint} is incomplete: {e}"));
        }
    }
}

fn failing(args: &[&str]) -> String {
    let out = dssm().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "dssm {args:?} must fail with exit 1: {stderr}"
    );
    stderr
}

#[test]
fn corrupt_run_and_dataset_files_are_named_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    run_ok(&[
        "prepare-data",
        "--dataset",
        "synthetic",
        "--ratings",
        "20000",
        "--users",
        "300",
        "--items",
        "200",
        "--out",
        path(&data),
    ]);
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/quickstart.toml");
    let run = dir.path().join("run");
    run_ok(&[
        "train",
        "--config",
        path(&config),
        "--data",
        path(&data),
        "--run-dir",
        path(&run),
        "--set",
        "train.epochs=1",
    ]);

    let weights = run.join("checkpoints/best/model.safetensors");
    let original = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &original[..original.len() / 2]).unwrap();
    let stderr = failing(&["eval", "--run", path(&run)]);
    assert!(stderr.contains("model.safetensors"), "{stderr}");
    std::fs::write(&weights, &original).unwrap();

    let train = data.join("train.parquet");
    let original = std::fs::read(&train).unwrap();
    std::fs::write(&train, &original[..original.len() - 100]).unwrap();
    let again = dir.path().join("again");
    let stderr = failing(&[
        "train",
        "--config",
        path(&config),
        "--data",
        path(&data),
        "--run-dir",
        path(&again),
    ]);
    assert!(stderr.contains("train.parquet"), "{stderr}");
}

/// A size-limited tmpfs (root only); `None` when it cannot be mounted.
fn small_filesystem(dir: &Path, size: &str) -> Option<PathBuf> {
    let mount = dir.join("small");
    std::fs::create_dir(&mount).ok()?;
    let status = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size}"),
            "tmpfs",
            path(&mount),
        ])
        .stderr(Stdio::null())
        .status()
        .ok()?;
    status.success().then_some(mount)
}

struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_is_a_named_error_and_the_previous_dataset_survives() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mount) = small_filesystem(dir.path(), "3m") else {
        println!("skipped: cannot mount a size-limited tmpfs here (needs root)");
        return;
    };
    let _unmount = Unmount(mount.clone());
    let out = mount.join("ds");
    run_ok(&[
        "prepare-data",
        "--dataset",
        "synthetic",
        "--ratings",
        "5000",
        "--users",
        "200",
        "--items",
        "100",
        "--out",
        path(&out),
    ]);
    let before = dssm_data::Dataset::open(&out).unwrap();
    let stderr = failing(&[
        "prepare-data",
        "--dataset",
        "synthetic",
        "--ratings",
        "400000",
        "--out",
        path(&out),
        "--overwrite",
    ]);
    assert!(stderr.contains("No space left on device"), "{stderr}");
    assert!(stderr.contains(path(&mount)), "names the path: {stderr}");
    let after = dssm_data::Dataset::open(&out).expect("the previous dataset is intact");
    assert_eq!(after.manifest.rows, before.manifest.rows);
    let left: Vec<String> = std::fs::read_dir(&mount)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["ds"], "no temporary folder left behind");
}
