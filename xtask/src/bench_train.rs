//! `cargo xtask bench-train`: wall time, samples/s and peak memory of the two training recipes,
//! the step alone, and optionally the TensorFlow programs of `../shared/anchors` run in turn on
//! the same machine (medians and ratios).
//!
//! Data: ML-1M from `../shared/datasets/ml-1m-bench` when present, the synthetic generator
//! otherwise; prepared under `target/bench-train/`. Recipes: `configs/senet.toml` (10 epochs) and
//! `configs/retrieval.toml` for 2 epochs (the anchors' TFRS comparison), and one epoch of
//! `configs/sequence.toml` (samples: trained positions; no anchor).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;

use crate::run_cargo;

const ML1M: &str = "../shared/datasets/ml-1m-bench";
const ANCHORS: &str = "../shared/anchors";
const OUT: &str = "target/bench-train";

/// Options of `cargo xtask bench-train`.
#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask bench-train",
    about = "Training speed of configs/senet.toml, configs/retrieval.toml (2 epochs) and \
             configs/sequence.toml (1 epoch, positions/s), and of one training step; with \
             --anchors, the TensorFlow reference programs in turn"
)]
struct Args {
    /// Runs of each program (taken in turn: ours, theirs, ours, ...); medians are reported.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Python of the anchors' venv (`bash ../shared/anchors/setup.sh` makes it): also time
    /// `seed_keras.py --senet` and `tfrs_retrieval.py` on ML-1M.
    #[arg(long, value_name = "PYTHON")]
    anchors: Option<PathBuf>,
    /// Skip the step benchmark (criterion, about a minute).
    #[arg(long)]
    skip_step: bool,
    /// Only this recipe: `senet`, `retrieval` or `sequence` (positions/s of the sequence tower).
    #[arg(long, value_parser = ["senet", "retrieval", "sequence"])]
    only: Option<String>,
}

/// One timed run of a program.
#[derive(Debug, Clone, Copy)]
struct Timing {
    wall_s: f64,
    samples_per_s: f64,
    peak_mib: Option<f64>,
    /// Test AUC (seed) or test HR@50 unmasked (leave-last-out).
    quality: Option<f64>,
}

/// A recipe: ours and the matching anchor program.
struct Recipe {
    name: &'static str,
    config: &'static str,
    protocol: &'static str,
    extra: &'static [&'static str],
    anchor: &'static [&'static str],
    anchor_result: &'static str,
    quality: &'static str,
}

const RECIPES: [Recipe; 3] = [
    Recipe {
        name: "senet",
        config: "configs/senet.toml",
        protocol: "seed",
        extra: &[],
        anchor: &["seed_keras.py", "--senet"],
        anchor_result: "seed_keras_senet_leakfree.json",
        quality: "test AUC",
    },
    Recipe {
        name: "retrieval",
        config: "configs/retrieval.toml",
        protocol: "leave-last-out",
        extra: &["--set", "train.epochs=2"],
        anchor: &[
            "tfrs_retrieval.py",
            "--dataset",
            "ml-1m",
            "--epochs",
            "2",
            "--dims",
            "64",
            "--temperatures",
            "0.05",
            "--lrs",
            "0.001",
            "--logq",
            "1",
        ],
        anchor_result: "tfrs_retrieval_ml-1m.json",
        quality: "test HR@50",
    },
    // The sequence tower, one epoch: samples are trained positions (no anchor program).
    Recipe {
        name: "sequence",
        config: "configs/sequence.toml",
        protocol: "leave-last-out",
        extra: &["--set", "train.epochs=1"],
        anchor: &[],
        anchor_result: "",
        quality: "test HR@50",
    },
];

/// Runs the task with its command-line arguments.
pub fn run(args: &[String]) -> Result<()> {
    let args =
        Args::parse_from(std::iter::once("bench-train".to_string()).chain(args.iter().cloned()));
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    run_cargo(&["build", "--release", "--quiet", "-p", "dssm-cli"], &[])?;
    let real = Path::new(ML1M).join("ratings.dat").exists();
    if args.anchors.is_some() && !real {
        bail!("--anchors needs the ML-1M copy at {ML1M}: the anchors read only that");
    }
    println!(
        "data: {}",
        if real {
            "ML-1M (../shared/datasets/ml-1m-bench)"
        } else {
            "synthetic (ML-1M not found)"
        }
    );
    let mut table = Vec::new();
    for recipe in RECIPES
        .iter()
        .filter(|r| args.only.as_deref().is_none_or(|o| o == r.name))
    {
        let data = prepare(recipe.protocol, real)?;
        let (ours, theirs) = time_in_turn(recipe, &data, &args)?;
        table.push((recipe, ours, theirs));
    }
    if !args.skip_step {
        run_cargo(
            &["bench", "-p", "dssm-trainer", "--bench", "train_step"],
            &[],
        )?;
    }
    print_summary(&table);
    Ok(())
}

/// Prepares (again) the dataset folder of `protocol`.
fn prepare(protocol: &str, real: bool) -> Result<PathBuf> {
    let out = PathBuf::from(OUT).join(format!("data-{protocol}"));
    let mut args = vec!["prepare-data", "--protocol", protocol, "--out"];
    let out_str = out.to_str().context("non-UTF-8 output path")?;
    args.push(out_str);
    if real {
        args.extend(["--source", ML1M]);
    } else {
        args.extend(["--dataset", "synthetic"]);
    }
    if out.exists() {
        std::fs::remove_dir_all(&out)
            .with_context(|| format!("cannot remove {}", out.display()))?;
    }
    let status = Command::new(dssm_binary())
        .args(&args)
        .stdout(std::process::Stdio::null())
        .status()
        .context("cannot run dssm")?;
    if !status.success() {
        bail!("`dssm {}` failed ({status})", args.join(" "));
    }
    Ok(out)
}

fn dssm_binary() -> PathBuf {
    PathBuf::from("target/release/dssm")
}

/// Runs ours (and the anchor) `runs` times in turn.
fn time_in_turn(recipe: &Recipe, data: &Path, args: &Args) -> Result<(Vec<Timing>, Vec<Timing>)> {
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for run in 1..=args.runs {
        let t = time_ours(recipe, data)?;
        println!("{} run {run}: ours {}", recipe.name, describe(&t, recipe));
        ours.push(t);
        if let (Some(python), false) = (&args.anchors, recipe.anchor.is_empty()) {
            let t = time_anchor(recipe, python)?;
            println!("{} run {run}: anchor {}", recipe.name, describe(&t, recipe));
            theirs.push(t);
        }
    }
    Ok((ours, theirs))
}

fn describe(t: &Timing, recipe: &Recipe) -> String {
    format!(
        "wall {:.1} s, {:.0} samples/s, peak {}, {} {}",
        t.wall_s,
        t.samples_per_s,
        t.peak_mib
            .map_or("?".to_string(), |m| format!("{m:.0} MiB")),
        recipe.quality,
        t.quality.map_or("?".to_string(), |q| format!("{q:.4}"))
    )
}

/// `dssm train` of the recipe, timed from outside; figures from its `metrics.json`.
fn time_ours(recipe: &Recipe, data: &Path) -> Result<Timing> {
    let run_dir = PathBuf::from(OUT).join(format!("run-{}", recipe.name));
    let mut command = Command::new(dssm_binary());
    command
        .args(["train", "--config", recipe.config, "--overwrite", "--data"])
        .arg(data)
        .arg("--run-dir")
        .arg(&run_dir)
        .args(recipe.extra)
        .stdout(log_file(&format!("{}.log", recipe.name))?)
        .stderr(log_file(&format!("{}.stderr.log", recipe.name))?);
    let wall_s = timed(&mut command)?;
    let metrics = read_json(&run_dir.join("metrics.json"))?;
    let quality = match recipe.protocol {
        "seed" => metrics.pointer("/test/auc"),
        _ => metrics.pointer("/retrieval/test/0/at_k/2/hit_rate"),
    };
    Ok(Timing {
        wall_s,
        samples_per_s: metrics["train_samples_per_sec"]
            .as_f64()
            .unwrap_or(f64::NAN),
        peak_mib: metrics["peak_rss_mib"].as_f64(),
        quality: quality.and_then(|v| v.as_f64()),
    })
}

/// The anchor program of the recipe (2 threads, as its scripts pin), timed from outside; its
/// figures from the JSON it writes. Peak memory through `/usr/bin/time` when that exists.
fn time_anchor(recipe: &Recipe, python: &Path) -> Result<Timing> {
    let results = std::fs::canonicalize(OUT)?.join("anchors");
    std::fs::create_dir_all(&results)?;
    let peak_file = results.join("peak-kib.txt");
    let script = Path::new(ANCHORS).join(recipe.anchor[0]);
    let gnu_time = Path::new("/usr/bin/time");
    let mut command = if gnu_time.exists() {
        let mut c = Command::new(gnu_time);
        c.arg("-f").arg("%M").arg("-o").arg(&peak_file).arg(python);
        c
    } else {
        Command::new(python)
    };
    command
        .arg(&script)
        .args(&recipe.anchor[1..])
        .env("ANCHORS_RESULTS", &results)
        .stdout(log_file(&format!("anchor-{}.log", recipe.name))?)
        .stderr(log_file(&format!("anchor-{}.stderr.log", recipe.name))?);
    let wall_s = timed(&mut command)?;
    let result = read_json(&results.join(recipe.anchor_result))?;
    let quality = match recipe.protocol {
        "seed" => result.pointer("/metrics/test_auc"),
        _ => result.pointer("/metrics/unmasked/test/hr@50"),
    };
    let peak_mib = std::fs::read_to_string(&peak_file)
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .map(|kib| kib / 1024.0);
    Ok(Timing {
        wall_s,
        samples_per_s: result
            .pointer("/timing/train_samples_per_s")
            .and_then(|v| v.as_f64())
            .unwrap_or(f64::NAN),
        peak_mib,
        quality: quality.and_then(|v| v.as_f64()),
    })
}

/// A log file under `target/bench-train/` for a child's output (the last run's is kept).
fn log_file(name: &str) -> Result<std::fs::File> {
    let path = PathBuf::from(OUT).join(name);
    std::fs::File::create(&path).with_context(|| format!("cannot create {}", path.display()))
}

/// Runs `command` to completion; its wall time in seconds.
fn timed(command: &mut Command) -> Result<f64> {
    let started = Instant::now();
    let status = command
        .status()
        .with_context(|| format!("cannot run {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed ({status})");
    }
    Ok(started.elapsed().as_secs_f64())
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn print_summary(table: &[(&Recipe, Vec<Timing>, Vec<Timing>)]) {
    println!(
        "\nmedians ({} runs each, taken in turn)",
        table.first().map_or(0, |t| t.1.len())
    );
    println!(
        "{:<10} {:>8} {:>12} {:>9} | {:>8} {:>12} {:>9} | {:>10} {:>12}",
        "recipe",
        "wall s",
        "samples/s",
        "peak MiB",
        "anchor s",
        "samples/s",
        "peak MiB",
        "wall ratio",
        "speed ratio"
    );
    for (recipe, ours, theirs) in table {
        let m = |t: &[Timing], f: fn(&Timing) -> f64| median(t.iter().map(f).collect());
        let (wall, speed) = (m(ours, |t| t.wall_s), m(ours, |t| t.samples_per_s));
        let peak = m(ours, |t| t.peak_mib.unwrap_or(f64::NAN));
        let (a_wall, a_speed) = (m(theirs, |t| t.wall_s), m(theirs, |t| t.samples_per_s));
        let a_peak = m(theirs, |t| t.peak_mib.unwrap_or(f64::NAN));
        println!(
            "{:<10} {wall:>8.1} {speed:>12.0} {peak:>9.0} | {a_wall:>8.1} {a_speed:>12.0} {a_peak:>9.0} | {:>10.2} {:>12.2}",
            recipe.name,
            a_wall / wall,
            speed / a_speed
        );
    }
    println!("wall ratio = anchor wall / ours; speed ratio = our samples/s / the anchor's");
    println!("logs and run folders: {OUT}/");
}
