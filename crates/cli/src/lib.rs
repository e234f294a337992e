//! The `dssm` command line: a thin layer of argument parsing, logging and progress display over the
//! workspace's libraries. `cargo xtask <step>` runs the same subcommands.
//!
//! ```no_run
//! // What `dssm prepare-data --dataset synthetic --out /tmp/synthetic` does, from Rust:
//! dssm_cli::run(["dssm", "prepare-data", "--dataset", "synthetic", "--out", "/tmp/synthetic"])?;
//! # Ok::<(), anyhow::Error>(())
//! ```
#![deny(missing_docs)]

use std::ffi::OsString;

use clap::{Parser, Subcommand};

mod explain;
mod milvus;
mod prepare;
mod progress;
mod retrieve;
mod serve;
mod train;

pub use explain::ExplainArgs;
pub use milvus::{
    MilvusArgs, MilvusCheckArgs, MilvusCommand, MilvusConnection, MilvusIndexArg, MilvusLoadArgs,
    MilvusSearchArgs,
};
pub use prepare::PrepareArgs;
pub use retrieve::{EvaluateRetrievalArgs, ExportArgs, IndexArg, RecommendArgs, SplitArg};
pub use serve::ServeArgs;
pub use train::{EvalArgs, TrainArgs};

/// DSSM two-tower retrieval on MovieLens: prepare data, train, evaluate, export and recommend.
#[derive(Debug, Parser)]
#[command(name = "dssm", version, about, long_about = None)]
pub struct Cli {
    /// The step to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Parse MovieLens (or synthetic) files, fit vocabularies and statistics on the train split, split by a
    /// protocol and write a Parquet dataset folder.
    PrepareData(PrepareArgs),
    /// Train a model from a run config: negatives resampled each epoch, validation every N epochs, the best
    /// checkpoint by validation kept, the test split evaluated once at the end.
    Train(TrainArgs),
    /// Re-evaluate a run's best checkpoint on a split (test by default).
    Eval(EvalArgs),
    /// Write a run's user and item embeddings as Parquet, with the movie metadata needed to show results.
    Export(ExportArgs),
    /// Rank each user's held-out movie among all movies in train (protocol leave-last-out): HR, NDCG and
    /// MRR at 10/20/50/100, unmasked, masked and masked_all, beside the popularity baseline.
    EvaluateRetrieval(EvaluateRetrievalArgs),
    /// Top-K movies for a known user (by id) or a new one (features), after recent movies if given.
    Recommend(RecommendArgs),
    /// The SENet weight of each field of each tower over the validation rows, overall and per
    /// segment (users by a user feature such as age, items by a popularity bucket); writes
    /// senet-importance.json and senet-importance.svg into the run folder.
    Explain(ExplainArgs),
    /// Serve a run over HTTP: recommendations for known and new users (the user tower per request),
    /// user vectors, similar items, health, metrics, a page to try it; reload and graceful shutdown.
    Serve(ServeArgs),
    /// Item embeddings in Milvus (the distributed vector database): load an export, check Milvus's
    /// top-K against the exact in-process top-K for every user, search for one user.
    Milvus(MilvusArgs),
}

/// Parses `args` (the first one is the program name) and runs the subcommand.
pub fn run<I, T>(args: I) -> anyhow::Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let command_line = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let cli = Cli::try_parse_from(&args).unwrap_or_else(|error| error.exit());
    match cli.command {
        Command::PrepareData(args) => prepare::run(&args, &command_line).map(|_| ()),
        Command::Train(args) => train::train(&args).map(|_| ()),
        Command::Eval(args) => train::eval(&args),
        Command::Export(args) => retrieve::export(&args),
        Command::EvaluateRetrieval(args) => retrieve::evaluate(&args),
        Command::Recommend(args) => retrieve::recommend(&args),
        Command::Explain(args) => explain::explain(&args),
        Command::Serve(args) => serve::serve(&args),
        Command::Milvus(args) => milvus::run(&args),
    }
}

/// Sends `tracing` events to stderr, filtered by `RUST_LOG` (default `info`). Safe to call more than once.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}
