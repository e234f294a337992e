//! `dssm prepare-data`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use dssm_data::{
    DatasetKind, ItemStatistics, MinFrequency, PrepareRequest, PrepareStage, PrepareSummary,
    Protocol, Source, SyntheticConfig,
};

/// Where `prepare-data` writes when `--out` is not given: `datasets/prepared/<dataset>-<protocol>`.
pub const PREPARED_ROOT: &str = "datasets/prepared";
/// Where a downloaded `ml-1m.zip` is kept.
pub const DOWNLOAD_ZIP: &str = "datasets/downloads/ml-1m.zip";

/// Options of `dssm prepare-data`.
#[derive(Debug, Clone, Args)]
#[command(
    after_help = "Your own data: --spec names a dataset spec (TOML) that declares the \
    interaction log (CSV or Parquet), optional user and item tables, each feature's kind, the label \
    and the split; see README \"Your own data\". --print-spec shows the MovieLens preset as a spec.\n\n\
    Examples:\n  \
    dssm prepare-data --dataset synthetic                      # offline, seconds\n  \
    dssm prepare-data --source ~/ml-1m.zip --protocol leave-last-out\n  \
    dssm prepare-data --dataset ml-1m                          # downloads ml-1m.zip, md5-checked\n  \
    dssm prepare-data --spec my-shop.toml --out datasets/prepared/shop"
)]
pub struct PrepareArgs {
    /// A dataset spec (TOML) for your own interaction log; its settings replace the MovieLens
    /// options below.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with_all = ["source", "dataset", "protocol", "min_count", "min_share",
            "label_threshold", "rating_buckets", "leaky_item_stats", "print_spec"]
    )]
    pub spec: Option<PathBuf>,
    /// Print the MovieLens preset of these options as a dataset spec and exit (nothing is read).
    #[arg(long)]
    pub print_spec: bool,
    /// A MovieLens folder (users.dat/movies.dat/ratings.dat, or u.user/u.item/u.data) or ml-1m.zip. Without
    /// it, ml-1m is read from datasets/downloads/ml-1m.zip, downloaded and verified there first if absent.
    #[arg(long, value_name = "DIR|ZIP")]
    pub source: Option<PathBuf>,
    /// Which dataset; with --source it defaults to what the files are (u.data means ml-100k).
    #[arg(long, value_enum)]
    pub dataset: Option<DatasetArg>,
    /// How rows are split: `seed` (random 72/8/20 over rows) or `leave-last-out` (per user by time).
    #[arg(long, value_enum, default_value_t = ProtocolArg::Seed)]
    pub protocol: ProtocolArg,
    /// The dataset folder to write [default: datasets/prepared/<dataset>-<protocol>].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Seed of the random split (and of the synthetic generator).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Values seen in fewer train rows than this map to index 0 (unknown). Use --min-share for a share.
    #[arg(long, default_value_t = 1, conflicts_with = "min_share")]
    pub min_count: u64,
    /// Values whose share of the train rows is below this map to index 0 (the reference's `encode_min`).
    #[arg(long)]
    pub min_share: Option<f64>,
    /// A rating above this is a positive label.
    #[arg(long, default_value_t = 3)]
    pub label_threshold: u8,
    /// Quantile buckets for the per-movie train rating mean and count features.
    #[arg(long, default_value_t = 10)]
    pub rating_buckets: usize,
    /// Replace an existing dataset folder.
    #[arg(long)]
    pub overwrite: bool,
    /// Compute the movie rating mean/count features over ALL ratings, test included: the PyTorch
    /// reference's label leakage, only to report that variant (labelled so in the manifest).
    #[arg(long)]
    pub leaky_item_stats: bool,
    /// Synthetic data: number of users.
    #[arg(long, default_value_t = 2_000, help_heading = "Synthetic data")]
    pub users: u32,
    /// Synthetic data: number of movies.
    #[arg(long, default_value_t = 1_000, help_heading = "Synthetic data")]
    pub items: u32,
    /// Synthetic data: number of ratings.
    #[arg(long, default_value_t = 150_000, help_heading = "Synthetic data")]
    pub ratings: u64,
}

/// The datasets `prepare-data` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DatasetArg {
    /// MovieLens-1M.
    #[value(name = "ml-1m")]
    Ml1m,
    /// MovieLens-100K.
    #[value(name = "ml-100k")]
    Ml100k,
    /// Generated data in ML-1M's format, from --seed.
    Synthetic,
}

/// The split protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProtocolArg {
    /// Random 72/8/20 over rows (pointwise AUC).
    Seed,
    /// Per user by time: last -> test, second-last -> val (top-K retrieval).
    LeaveLastOut,
}

impl From<ProtocolArg> for Protocol {
    fn from(arg: ProtocolArg) -> Self {
        match arg {
            ProtocolArg::Seed => Protocol::Seed,
            ProtocolArg::LeaveLastOut => Protocol::LeaveLastOut,
        }
    }
}

/// Runs `prepare-data` and prints its summary (or, with `--print-spec`, the preset).
pub fn run(args: &PrepareArgs, command_line: &str) -> Result<Option<PrepareSummary>> {
    if let Some(spec) = &args.spec {
        return run_spec(args, spec, command_line).map(Some);
    }
    let request = request_from_args(args, command_line)?;
    if args.print_spec {
        print!(
            "{}",
            dssm_data::movielens::preset(&request).to_toml_string()
        );
        return Ok(None);
    }
    let bar = crate::progress::spinner();
    let report = |stage: PrepareStage| {
        let message = describe(&stage);
        tracing::debug!("{message}");
        bar.set_message(message);
    };
    let summary = dssm_data::prepare(&request, &report)
        .with_context(|| format!("prepare-data into {} failed", request.out_dir.display()))?;
    bar.finish_and_clear();
    print_summary(&summary, request.protocol, request.item_statistics);
    Ok(Some(summary))
}

/// `prepare-data --spec FILE`.
fn run_spec(args: &PrepareArgs, path: &Path, command_line: &str) -> Result<PrepareSummary> {
    let spec = dssm_data::DatasetSpec::load(path)?;
    let output = dssm_data::SpecOutput {
        out_dir: args
            .out
            .clone()
            .unwrap_or_else(|| Path::new(PREPARED_ROOT).join(&spec.name)),
        overwrite: args.overwrite,
        command: command_line.to_string(),
    };
    let bar = crate::progress::spinner();
    let report = |stage: PrepareStage| {
        let message = describe(&stage);
        tracing::debug!("{message}");
        bar.set_message(message);
    };
    let summary = dssm_data::prepare_spec(&spec, &output, &report)
        .with_context(|| format!("prepare-data into {} failed", output.out_dir.display()))?;
    bar.finish_and_clear();
    let protocol = match spec.split {
        dssm_data::SplitSpec::Seed { .. } => Protocol::Seed,
        dssm_data::SplitSpec::LeaveLastOut => Protocol::LeaveLastOut,
        dssm_data::SplitSpec::Time { .. } => Protocol::Time,
    };
    print_summary(&summary, protocol, spec.item_statistics);
    Ok(summary)
}

/// Builds the library request from the command-line options.
fn request_from_args(args: &PrepareArgs, command_line: &str) -> Result<PrepareRequest> {
    let kind = match (args.dataset, &args.source) {
        (Some(DatasetArg::Ml1m), _) | (None, None) => DatasetKind::Ml1m,
        (Some(DatasetArg::Ml100k), _) => DatasetKind::Ml100k,
        (Some(DatasetArg::Synthetic), _) => DatasetKind::Synthetic,
        (None, Some(path)) if path.join("u.data").exists() => DatasetKind::Ml100k,
        (None, Some(_)) => DatasetKind::Ml1m,
    };
    let source = match (&args.source, kind) {
        (Some(_), DatasetKind::Synthetic) => {
            anyhow::bail!("--source cannot be combined with --dataset synthetic")
        }
        (None, DatasetKind::Synthetic) => Source::Synthetic(SyntheticConfig {
            users: args.users,
            items: args.items,
            ratings: args.ratings,
            seed: args.seed,
            ..SyntheticConfig::default()
        }),
        (Some(path), _) if path.is_dir() => Source::Folder(path.clone()),
        (Some(path), _) if path.is_file() => Source::Zip(path.clone()),
        (Some(path), _) => {
            anyhow::bail!("--source {} is neither a folder nor a file", path.display())
        }
        (None, DatasetKind::Ml1m) => Source::Download {
            zip_path: PathBuf::from(DOWNLOAD_ZIP),
        },
        (None, DatasetKind::Ml100k) => anyhow::bail!(
            "ml-100k is read from a local copy: pass --source path/to/ml-100k (the folder with u.data) or ml-100k.zip"
        ),
    };
    let protocol = Protocol::from(args.protocol);
    let out = args.out.clone().unwrap_or_else(|| {
        Path::new(PREPARED_ROOT).join(format!("{}-{}", kind.name(), protocol.name()))
    });
    let mut request = PrepareRequest::new(source, kind, out);
    request.protocol = protocol;
    request.seed = args.seed;
    request.min_frequency = match args.min_share {
        Some(share) => MinFrequency::Share(share),
        None => MinFrequency::Count(args.min_count),
    };
    request.label_threshold = args.label_threshold;
    request.rating_buckets = args.rating_buckets;
    request.overwrite = args.overwrite;
    request.command = command_line.to_string();
    if args.leaky_item_stats {
        request.item_statistics = ItemStatistics::AllRows;
    }
    Ok(request)
}

fn describe(stage: &PrepareStage) -> String {
    match stage {
        PrepareStage::Downloading { url } => format!("downloading {url}"),
        PrepareStage::Generating { ratings } => format!("generating {ratings} synthetic ratings"),
        PrepareStage::Reading { source } => format!("reading {source}"),
        PrepareStage::ReadingRows { rows } => format!("read {rows} interactions"),
        PrepareStage::Parsed {
            users,
            movies,
            ratings,
        } => format!("parsed {ratings} ratings, {users} users, {movies} movies"),
        PrepareStage::Splitting { protocol } => format!("splitting ({})", protocol.name()),
        PrepareStage::Fitting { train_rows } => {
            format!("fitting vocabularies and statistics on {train_rows} train rows")
        }
        PrepareStage::Writing { file } => format!("writing {file}"),
        PrepareStage::Done => "done".to_string(),
        other => format!("{other:?}"),
    }
}

fn print_summary(summary: &PrepareSummary, protocol: Protocol, item_statistics: ItemStatistics) {
    let rows = &summary.rows;
    println!("dataset      {}", summary.out_dir.display());
    println!("protocol     {}", protocol.name());
    println!(
        "interactions {} (train {}, val {}, test {})",
        rows.total(),
        rows.train,
        rows.val,
        rows.test
    );
    println!(
        "users        {}\nitems        {} ({} with interactions, {} in train)",
        summary.users, summary.items, summary.rated_items, summary.train_items
    );
    if summary.dropped_interactions > 0 {
        println!(
            "dropped      {} interactions whose user or item is not in its table",
            summary.dropped_interactions
        );
    }
    println!("positives    {:.1}%", summary.positive_share * 100.0);
    if item_statistics == ItemStatistics::AllRows {
        println!("LEAKY        movie rating mean/count features use every rating, test included");
    }
    println!("time         {:.2} s", summary.elapsed.as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> PrepareArgs {
        let cli = crate::Cli::try_parse_from(std::iter::once("dssm").chain(args.iter().copied()))
            .expect("arguments parse");
        match cli.command {
            crate::Command::PrepareData(args) => args,
            other => panic!("expected prepare-data, got {other:?}"),
        }
    }

    #[test]
    fn default_output_folder_names_dataset_and_protocol() {
        let args = parse(&[
            "prepare-data",
            "--dataset",
            "synthetic",
            "--protocol",
            "leave-last-out",
        ]);
        let request = request_from_args(&args, "dssm prepare-data").unwrap();
        assert_eq!(
            request.out_dir,
            Path::new("datasets/prepared/synthetic-leave-last-out")
        );
        assert_eq!(request.protocol, Protocol::LeaveLastOut);
        assert!(matches!(request.source, Source::Synthetic(ref c) if c.users == 2_000));
    }

    #[test]
    fn without_a_source_ml_1m_is_downloaded_to_the_downloads_folder() {
        let args = parse(&["prepare-data"]);
        let request = request_from_args(&args, "").unwrap();
        assert_eq!(request.kind, DatasetKind::Ml1m);
        assert_eq!(
            request.source,
            Source::Download {
                zip_path: PathBuf::from(DOWNLOAD_ZIP)
            }
        );
    }

    #[test]
    fn min_share_selects_the_share_rule_and_conflicts_with_min_count() {
        let args = parse(&[
            "prepare-data",
            "--dataset",
            "synthetic",
            "--min-share",
            "0.001",
        ]);
        let request = request_from_args(&args, "").unwrap();
        assert_eq!(request.min_frequency, MinFrequency::Share(0.001));
        let cli = crate::Cli::try_parse_from([
            "dssm",
            "prepare-data",
            "--min-share",
            "0.1",
            "--min-count",
            "3",
        ]);
        assert!(cli.is_err());
    }

    #[test]
    fn a_missing_source_path_is_reported_by_name() {
        let args = parse(&["prepare-data", "--source", "/nonexistent/ml-1m"]);
        let error = request_from_args(&args, "").unwrap_err().to_string();
        assert!(error.contains("/nonexistent/ml-1m"), "{error}");
    }
}
