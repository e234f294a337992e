//! Trains one run config without the CLI, optionally preparing the dataset first.
//!
//! ```text
//! cargo run --release -p dssm-trainer --example train -- CONFIG.toml \
//!     [--data DATASET_DIR] [--out RUN_DIR] [--resume] [--prepare-from ML1M_FOLDER] [--epochs N]
//! ```
//!
//! `--prepare-from` runs dssm-data's `prepare` (MovieLens-1M folder, the config's `data.protocol`,
//! seed 42) into `--data` when that folder does not exist yet.

use std::path::PathBuf;

use dssm_trainer::{RunConfig, TrainOptions, train};

// Candle allocates per op; mimalloc is ~1.8x faster than the system allocator here (FACTS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let config_path = args.next().ok_or("usage: train CONFIG.toml [options]")?;
    let mut config = RunConfig::from_file(&config_path)?;
    let mut options = TrainOptions {
        progress: true,
        overwrite: true,
        ..TrainOptions::default()
    };
    let mut prepare_from: Option<PathBuf> = None;
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--data" => config.data.path = args.next().ok_or("--data needs a folder")?.into(),
            "--out" => options.run_dir = Some(args.next().ok_or("--out needs a folder")?.into()),
            "--epochs" => config.train.epochs = args.next().ok_or("--epochs needs N")?.parse()?,
            "--resume" => options.resume = true,
            "--prepare-from" => {
                prepare_from = Some(args.next().ok_or("--prepare-from needs a folder")?.into())
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    config.check()?;
    if let Some(source) = prepare_from
        && !config.data.path.exists()
    {
        let mut request = dssm_data::PrepareRequest::new(
            dssm_data::Source::Folder(source),
            dssm_data::DatasetKind::Ml1m,
            &config.data.path,
        );
        request.seed = 42;
        request.protocol = match config.data.protocol {
            dssm_trainer::config::Protocol::Seed => dssm_data::Protocol::Seed,
            dssm_trainer::config::Protocol::LeaveLastOut => dssm_data::Protocol::LeaveLastOut,
        };
        let summary = dssm_data::prepare(&request, &|_| {})?;
        eprintln!(
            "prepared {} ({:?} rows)",
            summary.out_dir.display(),
            summary.rows
        );
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let report = train(&config, &options)?;
    for record in &report.epochs {
        eprintln!("{}", serde_json::to_string(record)?);
    }
    println!("{}", serde_json::to_string_pretty(&report.metrics)?);
    Ok(())
}
