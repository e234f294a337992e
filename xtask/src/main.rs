//! `cargo xtask`: the project's task runner.
//!
//! It only orchestrates. Every pipeline step is a subcommand of the `dssm` binary (crate `dssm-cli`), which
//! xtask builds in release mode and runs with the arguments given here; `cargo xtask <step> --help` prints
//! that step's own help. The tasks that belong to the repository rather than to the product (`acceptance`,
//! `bench-*`, `ci`) are written here.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

mod bench_train;

/// Pipeline steps forwarded to the `dssm` binary unchanged.
const DSSM_STEPS: &[(&str, &str)] = &[
    (
        "prepare-data",
        "MovieLens, synthetic, or your own files (--spec) -> encoded, split Parquet dataset",
    ),
    ("train", "train a model from a run config (TOML)"),
    (
        "eval",
        "re-evaluate a run's best checkpoint on the test split",
    ),
    (
        "export",
        "write a run's user and item embeddings to Parquet",
    ),
    (
        "recommend",
        "top-K items for a user by key (or a new user by features), optionally after --recent items",
    ),
    (
        "evaluate-retrieval",
        "leave-last-out HR/NDCG/MRR of a run, beside the popularity baseline",
    ),
    (
        "explain",
        "SENet weight of each field per tower over the validation rows, overall and per segment",
    ),
    (
        "serve",
        "serve a run over HTTP (recommend, user vectors, similar items, health, metrics, a page)",
    ),
    (
        "milvus",
        "an export's item embeddings in Milvus: load, check against the exact top-K, search",
    ),
];

fn main() -> Result<()> {
    let root = workspace_root();
    std::env::set_current_dir(&root)
        .with_context(|| format!("cannot enter the workspace root {}", root.display()))?;
    let mut args = std::env::args().skip(1);
    let Some(task) = args.next() else {
        print_help();
        return Ok(());
    };
    let rest: Vec<String> = args.collect();
    match task.as_str() {
        "-h" | "--help" | "help" => {
            print_help();
            Ok(())
        }
        "acceptance" => acceptance(&rest),
        "bench-data" => bench_data(&rest),
        "fuzz" => fuzz(&rest),
        "bench-sampler" => run_cargo(&["bench", "-p", "dssm-sampler"], &rest),
        "bench-model" => run_cargo(&["bench", "-p", "dssm-model"], &rest),
        "bench-train" => bench_train::run(&rest),
        "bench-retrieval" => run_cargo(&["bench", "-p", "dssm-retrieval"], &rest),
        "bench-serve" => bench_serve(&rest),
        "bench-index" => bench_index(&rest),
        step if DSSM_STEPS.iter().any(|(name, _)| *name == step) => {
            let mut forwarded = vec![step.to_string()];
            forwarded.extend(rest);
            dssm(&forwarded)
        }
        other => bail!("unknown task `{other}`; run `cargo xtask --help` for the list"),
    }
}

fn print_help() {
    println!(
        "cargo xtask <task> [args...]\n\nPipeline steps (run the release `dssm` binary; `<step> --help` for options):"
    );
    for (name, about) in DSSM_STEPS {
        println!("  {name:<20} {about}");
    }
    println!(
        "\nRepository tasks:\n  \
         acceptance           real-data checks on ../shared/datasets/ml-1m-bench (skipped, saying so, when absent)\n  \
         fuzz [--cases N]     every parser and loader fed N random and mutated inputs each\n  \
         bench-data [--scale-only] [--rows N]\n                              preparing ML-1M end to end (criterion), then N (default 100M)\n                              synthetic interactions from Parquet: wall time and peak memory\n  \
         bench-sampler        negative sampling draws/s against the RNG alone and a baseline\n  \
         bench-model          forward+backward+step samples/s of the reference architecture\n  \
         bench-train          wall, samples/s and peak memory of the training recipes and one step \
         (--anchors PYTHON: beside TensorFlow, in turn)\n  \
         bench-retrieval      exact and HNSW top-K speed and recall\n  \
         bench-index          our HNSW at catalogue scale (default 1M x 64): build, memory, save/map, queries/s, \
         recall@10/@100;\n                              --faiss PYTHON: then faiss-cpu on the same vectors, in turn \
         (xtask/bench/faiss_index.py)\n  \
         bench-serve          the HTTP server under load on loopback: req/s and p50/p99/p99.9 for known users, \
         new users with 20 recent items, HNSW over a synthetic catalogue (--help for options)"
    );
}

/// The workspace root: the parent of this crate's manifest directory.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string()))
}

/// `fuzz [--cases N]`: every fuzz target of `tests/fuzz.rs` with N cases each (default 100,000);
/// prints the cases tried and the failures per target.
fn fuzz(rest: &[String]) -> Result<()> {
    let cases = match rest {
        [] => "100000".to_string(),
        [flag, n] if flag == "--cases" => n.replace('_', ""),
        _ => bail!("usage: cargo xtask fuzz [--cases N]"),
    };
    let status = cargo()
        .args([
            "test",
            "--release",
            "-p",
            "dssm-e2e",
            "--test",
            "fuzz",
            "--",
            "--nocapture",
        ])
        .env("DSSM_FUZZ_CASES", &cases)
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("fuzzing found a failure (above, with its minimal input)");
    }
    Ok(())
}

/// `bench-data`: the criterion bench of `prepare` (unless `--scale-only`), then the scale bench
/// with the remaining arguments (`--rows N`, `--users N`, `--items N`, `--keep DIR`).
fn bench_data(rest: &[String]) -> Result<()> {
    let scale_only = rest.iter().any(|a| a == "--scale-only");
    let scale_args: Vec<String> = rest
        .iter()
        .filter(|a| *a != "--scale-only")
        .cloned()
        .collect();
    if !scale_only {
        run_cargo(&["bench", "-p", "dssm-data", "--bench", "prepare"], &[])?;
    }
    let mut args = vec!["--".to_string()];
    args.extend(scale_args);
    run_cargo(
        &["bench", "-p", "dssm-data", "--bench", "spec_scale"],
        &args,
    )
}

/// `bench-serve [--run DIR] [--requests N] [--seconds S] [--connections C] [--hnsw-items N]`: the
/// load generator of `dssm-serve` (example `bench_serve`), release build.
fn bench_serve(rest: &[String]) -> Result<()> {
    let mut args = vec!["--".to_string()];
    args.extend(rest.iter().cloned());
    run_cargo(
        &[
            "run",
            "--release",
            "--quiet",
            "-p",
            "dssm-serve",
            "--example",
            "bench_serve",
        ],
        &args,
    )
}

/// `bench-index [--faiss PYTHON] [options of examples/bench_index.rs]`: our index, then (with
/// `--faiss`) faiss-cpu's on the files ours wrote, with the same M, ef_construction and ef values.
fn bench_index(rest: &[String]) -> Result<()> {
    let mut ours = vec!["--".to_string()];
    let mut faiss_python = None;
    let mut faiss_args = vec!["target/bench-index".to_string()];
    for pair in rest.chunks(2) {
        let [flag, value] = pair else {
            bail!(
                "bench-index takes --flag value pairs; see crates/retrieval/examples/bench_index.rs"
            );
        };
        match flag.as_str() {
            "--faiss" => faiss_python = Some(value.clone()),
            "--dir" => faiss_args[0] = value.clone(),
            "--m" | "--ef-construction" | "--ef" => {
                faiss_args.extend([flag.clone(), value.clone()])
            }
            _ => {}
        }
        if flag != "--faiss" {
            ours.extend([flag.clone(), value.clone()]);
        }
    }
    run_cargo(
        &[
            "run",
            "--release",
            "--quiet",
            "-p",
            "dssm-retrieval",
            "--example",
            "bench_index",
        ],
        &ours,
    )?;
    if let Some(python) = faiss_python {
        let status = Command::new(&python)
            .arg("xtask/bench/faiss_index.py")
            .args(&faiss_args)
            .status()
            .with_context(|| format!("cannot run {python}"))?;
        if !status.success() {
            bail!("the faiss benchmark failed ({status}); it needs `pip install faiss-cpu numpy`");
        }
    }
    Ok(())
}

fn run_cargo(base: &[&str], extra: &[String]) -> Result<()> {
    let status = cargo()
        .args(base)
        .args(extra)
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", base.join(" "));
    }
    Ok(())
}

/// Builds (if needed) and runs the release `dssm` binary with `args`.
fn dssm(args: &[String]) -> Result<()> {
    run_cargo(
        &[
            "run",
            "--release",
            "--quiet",
            "-p",
            "dssm-cli",
            "--bin",
            "dssm",
            "--",
        ],
        args,
    )
}

/// The real-data acceptance: the `acceptance` test target of `dssm-e2e`, whose tests are `#[ignore]`d in a
/// plain `cargo test` and run here (`--ignored`). It prepares ML-1M under both protocols from
/// `../shared/datasets/ml-1m-bench`, checks the counts the issues name, then trains the recipes in `configs/`
/// and checks their test figures. Without the data each test says it skipped, or fails when
/// `DSSM_REQUIRE_REAL_DATA=1` (passed through from the environment) says the data must be there.
/// Candle's own thread pool is single-threaded (`CANDLE_NUM_THREADS=1` unless set), as `dssm train`
/// makes it for `configs/sequence.toml`'s replicas: the pool is built once per process, and with two
/// threads it fights the replicas for the cores.
fn acceptance(extra: &[String]) -> Result<()> {
    let candle_threads = std::env::var("CANDLE_NUM_THREADS").unwrap_or_else(|_| "1".to_string());
    let status = cargo()
        .env("CANDLE_NUM_THREADS", candle_threads)
        .args([
            "test",
            "--release",
            "-p",
            "dssm-e2e",
            "--test",
            "acceptance",
            "--",
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .args(extra)
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("the real-data acceptance failed ({status})");
    }
    Ok(())
}
