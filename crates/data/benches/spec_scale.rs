//! Preparing an interaction log larger than one would hold as rows of structs: writes N synthetic
//! interactions (string user and item keys, a timestamp) as Parquet in row groups, plus an items
//! table, then times `prepare_spec` on them and prints wall time, rows/s and the process's peak
//! resident memory (VmHWM; generation streams, so the peak is the preparation's).
//!
//! `cargo bench -p dssm-data --bench spec_scale -- [--rows N] [--users N] [--items N] [--keep DIR]`
//! (default 100M rows, 1M users, 200K items; `cargo xtask bench-data` runs it).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use dssm_data::{DatasetSpec, SpecOutput, prepare_spec};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;

struct Args {
    rows: u64,
    users: u64,
    items: u64,
    keep: Option<String>,
}

fn args() -> Args {
    let mut args = Args {
        rows: 100_000_000,
        users: 1_000_000,
        items: 200_000,
        keep: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_default();
        match flag.as_str() {
            "--rows" => args.rows = value().replace('_', "").parse().expect("--rows N"),
            "--users" => args.users = value().parse().expect("--users N"),
            "--items" => args.items = value().parse().expect("--items N"),
            "--keep" => args.keep = Some(value()),
            _ => {} // cargo bench passes --bench
        }
    }
    args
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn write_log(path: &Path, args: &Args) {
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(1 << 20))
        .build();
    let file = std::fs::File::create(path).expect("create the log");
    let mut writer: Option<ArrowWriter<std::fs::File>> = None;
    let mut file = Some(file);
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let chunk = 1u64 << 20;
    let mut written = 0;
    while written < args.rows {
        let n = chunk.min(args.rows - written);
        let mut users = Vec::with_capacity(n as usize);
        let mut items = Vec::with_capacity(n as usize);
        let mut times = Vec::with_capacity(n as usize);
        for i in 0..n {
            let u = xorshift(&mut state) % args.users;
            // Popular items: the square of a uniform draw skews toward low ids.
            let r = (xorshift(&mut state) % 1_000_000) as f64 / 1e6;
            let item = ((r * r) * args.items as f64) as u64;
            users.push(format!("user-{u:07}"));
            items.push(format!("item-{item:06}"));
            times.push(1_600_000_000 + ((written + i) as i64) / 10);
        }
        let batch = RecordBatch::try_from_iter([
            ("user", Arc::new(StringArray::from(users)) as ArrayRef),
            ("item", Arc::new(StringArray::from(items)) as ArrayRef),
            ("ts", Arc::new(Int64Array::from(times)) as ArrayRef),
        ])
        .expect("a batch");
        let w = writer.get_or_insert_with(|| {
            ArrowWriter::try_new(
                file.take().expect("one file"),
                batch.schema(),
                Some(props.clone()),
            )
            .expect("a writer")
        });
        w.write(&batch).expect("write");
        written += n;
    }
    if let Some(w) = writer {
        w.close().expect("close");
    }
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn main() {
    let args = args();
    let scratch = tempfile::tempdir().expect("a temporary folder");
    let dir = args
        .keep
        .as_ref()
        .map_or_else(|| scratch.path().to_path_buf(), Into::into);
    std::fs::create_dir_all(&dir).expect("the folder");
    let started = Instant::now();
    write_log(&dir.join("log.parquet"), &args);
    let generated = started.elapsed().as_secs_f64();
    let bytes = std::fs::metadata(dir.join("log.parquet")).map_or(0, |m| m.len());
    println!(
        "generated    {} interactions ({:.0} MiB Parquet) in {generated:.1} s; peak so far {:.0} MiB",
        args.rows,
        bytes as f64 / (1 << 20) as f64,
        peak_rss_mib()
    );
    let spec_text = r#"
        name = "scale"
        [interactions]
        path = "log.parquet"
        user = "user"
        item = "item"
        timestamp = "ts"
        [split]
        kind = "leave-last-out"
        [[users.features]]
        name = "user"
        kind = "hashed"
        buckets = 65536
        [[items.features]]
        name = "item"
        kind = "categorical"
        min_count = 5
        [[items.features]]
        name = "popularity"
        kind = "train_statistic"
        statistic = "count"
    "#;
    std::fs::write(dir.join("scale.toml"), spec_text).expect("the spec");
    let spec = DatasetSpec::load(&dir.join("scale.toml")).expect("the spec parses");
    let output = SpecOutput {
        out_dir: dir.join("prepared"),
        overwrite: true,
        command: "bench spec_scale".into(),
    };
    let started = Instant::now();
    let summary = prepare_spec(&spec, &output, &|_| {}).expect("prepare_spec");
    let wall = started.elapsed().as_secs_f64();
    println!(
        "prepared     {} interactions, {} users, {} items (leave-last-out, string keys) in {wall:.1} s: {:.2} M rows/s",
        summary.rows.total(),
        summary.users,
        summary.items,
        summary.rows.total() as f64 / wall / 1e6
    );
    println!(
        "peak memory  {:.0} MiB (VmHWM of the whole process)",
        peak_rss_mib()
    );
}
