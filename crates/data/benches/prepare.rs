//! End-to-end `prepare` timings: MovieLens-1M from the bench folder (when present) and a
//! synthetic dataset of 1M ratings (files generated outside the timed loop).
//!
//! `cargo bench -p dssm-data --bench prepare`

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use dssm_data::synthetic::{SyntheticConfig, generate};
use dssm_data::{DatasetKind, PrepareRequest, Protocol, Source, prepare};

fn bench_folder() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/datasets/ml-1m-bench")
}

fn prepare_benches(c: &mut Criterion) {
    let scratch = tempfile::tempdir().expect("a temporary folder");
    let mut group = c.benchmark_group("prepare");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8))
        .warm_up_time(Duration::from_secs(1));

    let folder = bench_folder();
    if folder.join("ratings.dat").is_file() {
        for protocol in [Protocol::Seed, Protocol::LeaveLastOut] {
            let mut request = PrepareRequest::new(
                Source::Folder(folder.clone()),
                DatasetKind::Ml1m,
                scratch.path().join(format!("ml-1m-{protocol}")),
            );
            request.protocol = protocol;
            request.overwrite = true;
            group.bench_function(format!("ml-1m/{protocol}"), |b| {
                b.iter(|| black_box(prepare(&request, &|_| {}).expect("prepare ml-1m")))
            });
        }
    } else {
        println!("skipped ml-1m: {} not found", folder.display());
    }

    let config = SyntheticConfig {
        users: 6_040,
        items: 3_700,
        ratings: 1_000_000,
        seed: 7,
        ..SyntheticConfig::default()
    };
    let files_dir = scratch.path().join("synthetic-files");
    generate(&config)
        .expect("generate")
        .write_to(&files_dir)
        .expect("write synthetic files");
    let mut request = PrepareRequest::new(
        Source::Folder(files_dir),
        DatasetKind::Synthetic,
        scratch.path().join("synthetic-1m"),
    );
    request.overwrite = true;
    group.bench_function("synthetic-1m/seed", |b| {
        b.iter(|| black_box(prepare(&request, &|_| {}).expect("prepare synthetic")))
    });
    group.bench_function("generate/synthetic-1m", |b| {
        b.iter(|| black_box(generate(&config).expect("generate")))
    });
    group.finish();
}

criterion_group!(benches, prepare_benches);
criterion_main!(benches);
