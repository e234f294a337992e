//! Real-data acceptance: prepares MovieLens-1M under both protocols and checks the known counts.
//!
//! Usage: `cargo run --release -p dssm-data --example acceptance -- [FOLDER|ml-1m.zip] [OUT_ROOT]`
//!
//! FOLDER defaults to `../shared/datasets/ml-1m-bench` next to the workspace root; when it is
//! absent the example prints `skipped: ... not found` and exits successfully. Datasets are written
//! under OUT_ROOT (default: a temporary folder, removed at the end).
//!
//! Expected: 1,000,209 ratings, 6,040 users, 3,706 rated movies, 57.5% positives (to 0.1 pt);
//! `leave-last-out` puts exactly one test and one validation row per user.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use dssm_data::{Dataset, DatasetKind, PrepareRequest, PrepareStage, Protocol, Source, Split};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let source = args.next().map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/datasets/ml-1m-bench"),
        PathBuf::from,
    );
    if !source.exists() {
        println!("skipped: {} not found", source.display());
        return ExitCode::SUCCESS;
    }
    let scratch = tempfile::tempdir().expect("a temporary folder");
    let out_root = args
        .next()
        .map_or_else(|| scratch.path().to_path_buf(), PathBuf::from);
    match run(&source, &out_root) {
        Ok(()) => {
            println!("acceptance: all checks passed");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("acceptance FAILED: {message}");
            ExitCode::FAILURE
        }
    }
}

fn check(ok: bool, what: String) -> Result<(), String> {
    if ok {
        println!("  ok: {what}");
        Ok(())
    } else {
        Err(what)
    }
}

fn run(source: &std::path::Path, out_root: &std::path::Path) -> Result<(), String> {
    let src = if source.extension().is_some_and(|e| e == "zip") {
        Source::Zip(source.to_path_buf())
    } else {
        Source::Folder(source.to_path_buf())
    };
    for protocol in [Protocol::Seed, Protocol::LeaveLastOut] {
        let out = out_root.join(format!("ml-1m-{}", protocol.name()));
        let mut request = PrepareRequest::new(src.clone(), DatasetKind::Ml1m, &out);
        request.protocol = protocol;
        request.overwrite = true;
        request.command = format!("acceptance {}", source.display());
        let started = Instant::now();
        let summary = dssm_data::prepare(&request, &|stage| {
            if !matches!(stage, PrepareStage::Writing { .. }) {
                println!("  [{:>6.3} s] {stage:?}", started.elapsed().as_secs_f64());
            }
        })
        .map_err(|e| e.to_string())?;
        println!(
            "{}: prepared in {:.3} s: rows {:?}, users {}, items {}, rated {}, positive {:.4}",
            protocol,
            summary.elapsed.as_secs_f64(),
            summary.rows,
            summary.users,
            summary.items,
            summary.rated_items,
            summary.positive_share
        );
        check(
            summary.rows.total() == 1_000_209,
            format!("{} ratings", summary.rows.total()),
        )?;
        check(summary.users == 6_040, format!("{} users", summary.users))?;
        check(summary.items == 3_883, format!("{} movies", summary.items))?;
        check(
            summary.rated_items == 3_706,
            format!("{} rated movies", summary.rated_items),
        )?;
        check(
            (summary.positive_share - 0.575).abs() < 0.001,
            format!("{:.4} positive", summary.positive_share),
        )?;

        let opened = Instant::now();
        let dataset = Dataset::open(&out).map_err(|e| e.to_string())?;
        let mut rows = 0;
        let mut missing_timestamps = 0;
        for split in Split::ALL {
            let interactions = dataset.interactions(split).map_err(|e| e.to_string())?;
            rows += interactions.len();
            missing_timestamps += interactions
                .timestamp
                .iter()
                .filter(|t| t.is_none())
                .count();
            if protocol == Protocol::LeaveLastOut && split != Split::Train {
                check(
                    interactions.len() == 6_040,
                    format!("{} {split} rows (one per user)", interactions.len()),
                )?;
                check(
                    interactions.timestamp.iter().all(Option::is_some),
                    format!("every {split} row has its timestamp"),
                )?;
            }
        }
        println!(
            "  opened and read all splits in {:.3} s",
            opened.elapsed().as_secs_f64()
        );
        check(rows == 1_000_209, format!("{rows} rows read back"))?;
        check(
            missing_timestamps == 197_309,
            format!("{missing_timestamps} rows without timestamp"),
        )?;
        if protocol == Protocol::Seed {
            let s = &dataset.manifest.rows;
            check(
                s.test == 200_042 && s.val == 80_017,
                format!("seed split sizes {s:?}"),
            )?;
        }
    }
    Ok(())
}
