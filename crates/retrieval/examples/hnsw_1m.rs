//! HNSW on a large synthetic catalogue: build time, queries/s and recall@10/@100 against exact search.
//!
//! ```text
//! cargo build --release --example hnsw_1m -p dssm-retrieval
//! target/release/examples/hnsw_1m [items=1000000] [queries=2000] [max_connections=16] [ef_construction=100]
//! ```
//!
//! Data: 64-d rows of low intrinsic dimension (500 clusters in a 16-d latent space mapped linearly to 64-d,
//! plus small noise), L2-normalised, fixed seed. Queries come from the same distribution.
use dssm_retrieval::{
    EmbeddingMatrix, ExactIndex, HnswConfig, HnswIndex, MatrixView, TopK, recall_at_k,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use std::time::Instant;

const DIM: usize = 64;
const LATENT: usize = 16;
const CLUSTERS: usize = 500;

fn rows(rng: &mut StdRng, map: &[f32], centers: &[f32], n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n * DIM);
    let mut row = [0f32; DIM];
    for _ in 0..n {
        let c = rng.random_range(0..CLUSTERS);
        let z: Vec<f32> = (0..LATENT)
            .map(|l| centers[c * LATENT + l] + rng.random_range(-0.4f32..0.4))
            .collect();
        for (d, v) in row.iter_mut().enumerate() {
            *v = (0..LATENT).map(|l| map[l * DIM + d] * z[l]).sum::<f32>()
                + rng.random_range(-0.05f32..0.05);
        }
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        out.extend(row.iter().map(|x| x / norm));
    }
    out
}

fn main() -> Result<(), dssm_retrieval::Error> {
    let arg = |i: usize, default: usize| -> usize {
        std::env::args()
            .nth(i)
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    };
    let (n, nq) = (arg(1, 1_000_000), arg(2, 2_000));
    let config = HnswConfig {
        max_connections: arg(3, 16),
        ef_construction: arg(4, 100),
        ef_search: 100,
    };
    let mut rng = StdRng::seed_from_u64(2024);
    let map: Vec<f32> = (0..LATENT * DIM)
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    let centers: Vec<f32> = (0..CLUSTERS * LATENT)
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    let items = EmbeddingMatrix::new(
        (0..n as u32).collect(),
        DIM,
        rows(&mut rng, &map, &centers, n),
    )?;
    let queries = rows(&mut rng, &map, &centers, nq);
    let view = MatrixView::new(&queries, DIM)?;
    println!(
        "items {n} x {DIM}, queries {nq}, rayon threads {}, {config:?}",
        rayon::current_num_threads()
    );

    let exact = ExactIndex::new(items.clone());
    let t = Instant::now();
    let truth = exact.top_k(view, 100, None)?;
    let s = t.elapsed().as_secs_f64();
    println!("exact top-100: {s:.2} s, {:.0} queries/s", nq as f64 / s);

    let t = Instant::now();
    let mut index = HnswIndex::build(items, config)?;
    println!("hnsw build: {:.1} s", t.elapsed().as_secs_f64());
    for ef in [100, 200, 400] {
        index.set_ef_search(ef);
        let t = Instant::now();
        let got = index.top_k(view, 100, None)?;
        let s = t.elapsed().as_secs_f64();
        println!(
            "hnsw ef_search {ef}: {:.0} queries/s (top-100), recall@10 {:.4}, recall@100 {:.4}",
            nq as f64 / s,
            recall_at_k(&got, &truth, 10),
            recall_at_k(&got, &truth, 100)
        );
    }
    Ok(())
}
