//! The HNSW index at catalogue scale, on vectors written once for other engines to read:
//! build time, peak memory, save and map times, queries/s (a batch over all threads, and one query at a
//! time on one thread) and recall@10/@100 against exact search, for several `ef`.
//!
//! ```text
//! cargo xtask bench-index [--items 1000000] [--queries 2000] [--m 16] [--ef-construction 100]
//!                         [--ef 50,100,200,400] [--dir target/bench-index] [--faiss PYTHON]
//! ```
//!
//! Data: 64-d rows of low intrinsic dimension (500 clusters in a 16-d latent space mapped linearly to
//! 64-d, plus small noise), L2-normalised, fixed seed; queries from the same distribution. The folder
//! gets `items.npy` (f32, items x 64; row i is item id i), `queries.npy`, `truth.npy` (i64, the exact
//! top-100 ids of each query), the saved index `items.hnsw` and `ours.json` (the figures).
//! `xtask/bench/faiss_index.py` reads the same files.
use dssm_retrieval::{
    EmbeddingMatrix, ExactIndex, HnswConfig, HnswIndex, MatrixView, ScoredItem, TopK, recall_at_k,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rayon::prelude::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

const DIM: usize = 64;
const LATENT: usize = 16;
const CLUSTERS: usize = 500;
const TOP: usize = 100;

struct Options {
    items: usize,
    queries: usize,
    config: HnswConfig,
    efs: Vec<usize>,
    dir: PathBuf,
}

fn options() -> Options {
    let mut o = Options {
        items: 1_000_000,
        queries: 2_000,
        config: HnswConfig {
            ef_construction: 100,
            ..HnswConfig::default()
        },
        efs: vec![50, 100, 200, 400],
        dir: PathBuf::from("target/bench-index"),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let value = pair.get(1).map(String::as_str).unwrap_or_default();
        let number = || value.replace('_', "").parse::<usize>().expect("a number");
        match pair[0].as_str() {
            "--items" => o.items = number(),
            "--queries" => o.queries = number(),
            "--m" => o.config.max_connections = number(),
            "--ef-construction" => o.config.ef_construction = number(),
            "--ef" => o.efs = value.split(',').map(|s| s.parse().expect("ef")).collect(),
            "--dir" => o.dir = PathBuf::from(value),
            other => panic!("unknown option {other}; see the example's docs"),
        }
    }
    o
}

/// `n` rows from the generator; row `i` depends only on (seed, i), so rows are made in parallel.
fn rows(seed: u64, map: &[f32], centers: &[f32], n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n * DIM];
    out.par_chunks_mut(DIM).enumerate().for_each(|(i, row)| {
        let mut rng = StdRng::seed_from_u64(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let c = rng.random_range(0..CLUSTERS);
        let z: Vec<f32> = (0..LATENT)
            .map(|l| centers[c * LATENT + l] + rng.random_range(-0.4f32..0.4))
            .collect();
        for (d, v) in row.iter_mut().enumerate() {
            *v = (0..LATENT).map(|l| map[l * DIM + d] * z[l]).sum::<f32>()
                + rng.random_range(-0.05f32..0.05);
        }
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        row.iter_mut().for_each(|x| *x /= norm);
    });
    out
}

/// Writes a 2-d little-endian array in NumPy's `.npy` format (version 1.0).
fn write_npy(path: &Path, descr: &str, shape: [usize; 2], bytes: &[u8]) {
    let mut header = format!(
        "{{'descr': '{descr}', 'fortran_order': False, 'shape': ({}, {}), }}",
        shape[0], shape[1]
    );
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).expect("create .npy"));
    file.write_all(b"\x93NUMPY\x01\x00").unwrap();
    file.write_all(&(header.len() as u16).to_le_bytes())
        .unwrap();
    file.write_all(header.as_bytes()).unwrap();
    file.write_all(bytes).unwrap();
    file.flush().unwrap();
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let t = Instant::now();
    let out = f();
    (out, t.elapsed().as_secs_f64())
}

fn main() -> Result<(), dssm_retrieval::Error> {
    let o = options();
    std::fs::create_dir_all(&o.dir).expect("create the bench folder");
    let mut rng = StdRng::seed_from_u64(2024);
    let map: Vec<f32> = (0..LATENT * DIM)
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    let centers: Vec<f32> = (0..CLUSTERS * LATENT)
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    let (item_rows, gen_s) = timed(|| rows(1, &map, &centers, o.items));
    let query_rows = rows(2, &map, &centers, o.queries);
    let threads = rayon::current_num_threads();
    println!(
        "items {} x {DIM}, queries {}, threads {threads}, {:?}; generated in {gen_s:.1} s",
        o.items, o.queries, o.config
    );
    write_npy(
        &o.dir.join("items.npy"),
        "<f4",
        [o.items, DIM],
        bytemuck::cast_slice(&item_rows),
    );
    write_npy(
        &o.dir.join("queries.npy"),
        "<f4",
        [o.queries, DIM],
        bytemuck::cast_slice(&query_rows),
    );
    let items = EmbeddingMatrix::new((0..o.items as u32).collect(), DIM, item_rows)?;
    let view = MatrixView::new(&query_rows, DIM)?;

    let exact = ExactIndex::new(items.clone());
    let (truth, exact_s) = timed(|| exact.top_k(view, TOP, None));
    let truth = truth?;
    drop(exact);
    let exact_qps = o.queries as f64 / exact_s;
    println!("exact top-{TOP}: {exact_qps:.0} queries/s");
    let truth_ids: Vec<u8> = truth
        .iter()
        .flat_map(|row| row.iter().flat_map(|s| (s.id as i64).to_le_bytes()))
        .collect();
    write_npy(
        &o.dir.join("truth.npy"),
        "<i8",
        [o.queries, TOP],
        &truth_ids,
    );

    let rss_before = peak_rss_mib();
    let progress = |done: usize| {
        if done % (1 << 18) < 1024 {
            eprintln!("  inserted {done}");
        }
    };
    let (index, build_s) = timed(|| HnswIndex::build_with_progress(items, o.config, &progress));
    let mut index = index?;
    let build_rss = peak_rss_mib();
    println!(
        "ours: build {build_s:.1} s, peak RSS {build_rss:.0} MiB (before the build {rss_before:.0})"
    );
    let path = o.dir.join("items.hnsw");
    let ((), save_s) = timed(|| index.save(&path).expect("save"));
    drop(index);
    let (mapped, load_s) = timed(|| HnswIndex::load(&path));
    index = mapped?;
    let file_mib = std::fs::metadata(&path).map_or(0.0, |m| m.len() as f64 / 1048576.0);
    println!("saved in {save_s:.1} s ({file_mib:.0} MiB), mapped and verified in {load_s:.2} s");

    let mut search = Vec::new();
    for &ef in &o.efs {
        index.set_ef_search(ef);
        let (got, batch_s) = timed(|| index.top_k(view, TOP, None));
        let got = got?;
        let (_, single_s) = timed(|| {
            (0..o.queries)
                .map(|q| index.top_k(MatrixView::new(view.row(q), DIM).unwrap(), TOP, None))
                .collect::<Vec<_>>()
        });
        let row = figures(ef, &got, &truth, o.queries, [batch_s, single_s]);
        println!(
            "ef {ef:>4}: {:>7.0} queries/s batched, {:>7.0} one at a time, recall@10 {:.4}, recall@100 {:.4}",
            row["queries_per_s_batch"].as_f64().unwrap(),
            row["queries_per_s_single"].as_f64().unwrap(),
            row["recall_at_10"].as_f64().unwrap(),
            row["recall_at_100"].as_f64().unwrap()
        );
        search.push(row);
    }
    let report = serde_json::json!({
        "engine": "dssm-retrieval HnswIndex",
        "items": o.items, "dim": DIM, "queries": o.queries, "threads": threads,
        "m": o.config.max_connections, "ef_construction": o.config.ef_construction,
        "build_s": build_s, "peak_rss_mib": build_rss, "save_s": save_s, "map_s": load_s,
        "file_mib": file_mib, "exact_queries_per_s": exact_qps, "search": search,
    });
    let out = o.dir.join("ours.json");
    std::fs::write(&out, serde_json::to_string_pretty(&report).unwrap()).expect("write ours.json");
    println!("figures written to {}", out.display());
    Ok(())
}

/// One `ef`'s row of the report; `seconds` = [batched, one at a time].
fn figures(
    ef: usize,
    got: &[Vec<ScoredItem>],
    truth: &[Vec<ScoredItem>],
    queries: usize,
    seconds: [f64; 2],
) -> serde_json::Value {
    serde_json::json!({
        "ef": ef,
        "queries_per_s_batch": queries as f64 / seconds[0],
        "queries_per_s_single": queries as f64 / seconds[1],
        "recall_at_10": recall_at_k(got, truth, 10),
        "recall_at_100": recall_at_k(got, truth, 100),
    })
}
