//! `dssm train` and `dssm eval`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use dssm_trainer::metrics::PointwiseMetrics;
use dssm_trainer::{RunConfig, Split, TrainOptions, TrainReport};

/// Options of `dssm train`.
#[derive(Debug, Clone, Args)]
#[command(
    after_help = "The config is a TOML file (see configs/); unknown keys are rejected and every value is \
    checked before any work starts.\n\nExamples:\n  \
    dssm train --config configs/quickstart.toml\n  \
    dssm train --config configs/senet.toml --resume      # continue an interrupted run\n  \
    dssm train --config configs/retrieval.toml --set features.history_len=10 --set train.epochs=8"
)]
pub struct TrainArgs {
    /// The run config (TOML).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Continue the run in the output folder from its last completed epoch; the result equals an
    /// uninterrupted run with the same seed.
    #[arg(long)]
    pub resume: bool,
    /// Change one config value without editing the file, e.g. `--set train.epochs=8` or
    /// `--set features.history_len=10` (repeatable; the value is TOML, a bare word a string). The
    /// run folder's config.toml records the values used.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Train on this dataset folder instead of the config's `data.path` (it must have the same protocol).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Write the run here instead of the config's `output.dir`.
    #[arg(long, value_name = "DIR")]
    pub run_dir: Option<PathBuf>,
    /// Replace a finished or stale run in the output folder.
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// Stop after this many epochs, as an interruption would (checkpoints kept, no test evaluation).
    #[arg(long, hide = true)]
    pub stop_after_epochs: Option<usize>,
}

/// `train.replicas` runs the parts of a batch side by side, one per core; Candle's own pool,
/// which splits each large elementwise op over the cores, would then fight them for the cores
/// (about 30% fewer positions/s on 2 cores). `CANDLE_NUM_THREADS=1` turns it off; a value the
/// user set is kept. It is read when Candle first splits an op, so it is set before training.
fn single_threaded_candle_ops() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: `dssm train` calls this before the trainer starts any thread (its thread
        // pools are built after), so no other thread reads the environment meanwhile.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
}

/// Options of `dssm eval`.
#[derive(Debug, Clone, Args)]
pub struct EvalArgs {
    /// A run folder written by `dssm train`.
    #[arg(long, value_name = "DIR")]
    pub run: PathBuf,
    /// Which split to evaluate on.
    #[arg(long, default_value = "test", value_parser = ["train", "val", "test"])]
    pub split: String,
}

/// Runs `train` and prints the final figures.
pub fn train(args: &TrainArgs) -> Result<TrainReport> {
    let mut config = RunConfig::from_file_with_overrides(&args.config, &args.set)
        .with_context(|| format!("invalid run config {}", args.config.display()))?;
    if let Some(data) = &args.data {
        config.data.path = data.clone();
    }
    if config.train.replicas > 1 {
        single_threaded_candle_ops();
    }
    let options = TrainOptions {
        resume: args.resume,
        run_dir: args.run_dir.clone(),
        overwrite: args.overwrite,
        stop_after_epochs: args.stop_after_epochs,
        progress: true,
    };
    let report = dssm_trainer::train(&config, &options).context("training failed")?;
    let metrics = &report.metrics;
    println!("run          {}", report.run_dir.display());
    println!(
        "protocol     {} ({}, split seed {})",
        metrics.protocol,
        metrics.dataset.name,
        metrics
            .dataset
            .split_seed
            .map_or_else(|| "-".to_string(), |s| s.to_string())
    );
    println!(
        "best epoch   {} of {} (by val {})",
        metrics.best_epoch, metrics.epochs_completed, metrics.select_metric
    );
    if let Some(val) = &metrics.val {
        print_pointwise("val", val);
    }
    match (&metrics.test, &metrics.retrieval) {
        (Some(test), _) => print_pointwise("test", test),
        (None, Some(retrieval)) if !retrieval.test.is_empty() => {
            println!(
                "test         leave-last-out, {} candidates (unmasked: train movies stay ranked; \
                 masked: removed; masked_all: the validation movie too)",
                retrieval.candidates
            );
            let pairs = retrieval.test.iter().zip(&retrieval.popularity_test);
            let rows = crate::retrieve::model_and_popularity_rows(pairs);
            print!("{}", crate::retrieve::format_table(&rows));
        }
        _ => println!("test         not evaluated (the run stopped before its last epoch)"),
    }
    let memory = metrics
        .peak_rss_mib
        .map(|m| format!(", peak memory {m:.0} MiB"))
        .unwrap_or_default();
    println!(
        "training     {:.0} samples/s ({}), wall {:.1} s{memory}",
        metrics.train_samples_per_sec, metrics.engine, metrics.wall_s
    );
    println!(
        "saved        {}",
        report.run_dir.join(dssm_trainer::layout::METRICS).display()
    );
    Ok(report)
}

/// Runs `eval` and prints the figures.
pub fn eval(args: &EvalArgs) -> Result<()> {
    let split = match args.split.as_str() {
        "train" => Split::Train,
        "val" => Split::Val,
        _ => Split::Test,
    };
    let report = dssm_trainer::evaluate_run(&args.run, split)
        .with_context(|| format!("cannot evaluate the run in {}", args.run.display()))?;
    println!("run          {}", report.run_dir.display());
    println!("checkpoint   {}", report.checkpoint);
    print_pointwise(&report.split, &report.metrics);
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

fn print_pointwise(name: &str, metrics: &PointwiseMetrics) {
    println!(
        "{name:<12} AUC {:.4}  GAUC {:.4}  log loss {:.4}  ({} rows)",
        metrics.auc, metrics.gauc, metrics.logloss, metrics.rows
    );
}
