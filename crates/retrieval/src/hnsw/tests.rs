use super::*;
use crate::exact::ExactIndex;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// Clustered rows of low intrinsic dimension, like learned embeddings: cluster centres and offsets
/// live in an 8-d latent space mapped linearly to `dim`, plus a little noise; rows L2-normalised.
fn clustered(rng: &mut StdRng, rows: usize, dim: usize, clusters: usize) -> Vec<f32> {
    const LATENT: usize = 8;
    let mut rng_map = StdRng::seed_from_u64(99);
    let map: Vec<f32> = (0..LATENT * dim)
        .map(|_| rng_map.random_range(-1.0f32..1.0))
        .collect();
    let centers: Vec<f32> = (0..clusters * LATENT)
        .map(|_| rng_map.random_range(-1.0f32..1.0))
        .collect();
    let mut out = Vec::with_capacity(rows * dim);
    for _ in 0..rows {
        let c = rng.random_range(0..clusters);
        let z: Vec<f32> = (0..LATENT)
            .map(|l| centers[c * LATENT + l] + rng.random_range(-0.3f32..0.3))
            .collect();
        let row: Vec<f32> = (0..dim)
            .map(|d| {
                (0..LATENT).map(|l| map[l * dim + d] * z[l]).sum::<f32>()
                    + rng.random_range(-0.02f32..0.02)
            })
            .collect();
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        out.extend(row.iter().map(|x| x / norm));
    }
    out
}

#[test]
fn hnsw_recall_save_load_and_exclusions() {
    let mut rng = StdRng::seed_from_u64(11);
    // 4,000 items: a graph of several layers (M 16), far more items than ef_search + the
    // exclusions, so the search is approximate.
    let (n, dim, queries) = (4_000, 32, 200);
    let items = EmbeddingMatrix::new(
        (0..n as u32).map(|i| i * 2 + 1).collect(),
        dim,
        clustered(&mut rng, n, dim, 50),
    )
    .unwrap();
    let q = clustered(&mut rng, queries, dim, 50);
    let view = MatrixView::new(&q, dim).unwrap();
    let exact = ExactIndex::new(items.clone());
    let config = HnswConfig {
        max_connections: 16,
        ef_construction: 100,
        ef_search: 64,
        seed: 1,
    };
    let index = HnswIndex::build(items.clone(), config).unwrap();
    assert_eq!(
        (index.len(), index.dim(), index.is_exact()),
        (n, dim, false)
    );
    let truth = exact.top_k(view, 10, None).unwrap();
    let got = index.top_k(view, 10, None).unwrap();
    let r = crate::recall_at_k(&got, &truth, 10);
    assert!(r > 0.95, "recall@10 = {r}");
    for row in &got {
        assert!(row.windows(2).all(|w| w[0].score >= w[1].score));
    }

    // Save, map: same answers.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("items.hnsw");
    index.save(&path).unwrap();
    index.save(&path).unwrap(); // Replaces an existing file.
    let loaded = HnswIndex::load_for(&path, &items).unwrap();
    assert!(loaded.is_mapped() && !index.is_mapped());
    assert_eq!(loaded.config(), index.config());
    assert_eq!(loaded.ids(), index.ids());
    assert_eq!(loaded.row(17), index.row(17));
    assert_eq!(loaded.top_k(view, 10, None).unwrap(), got);
    assert!(HnswIndex::load(dir.path()).is_err());

    // Exclusions: the true top 5 of each query are excluded and never come back.
    let rows: Vec<Vec<u32>> = truth
        .iter()
        .map(|t| t[..5].iter().map(|s| s.id).collect())
        .collect();
    let exclusions = Exclusions::from_rows(&rows);
    let masked = loaded.top_k(view, 10, Some(&exclusions)).unwrap();
    for (row, ex) in masked.iter().zip(&rows) {
        assert_eq!(row.len(), 10);
        assert!(row.iter().all(|s| !ex.contains(&s.id)));
    }
    // ... and what remains is the exact masked search's answer, up to the graph's recall.
    let exact_masked = exact.top_k(view, 10, Some(&exclusions)).unwrap();
    for (row, t) in exact_masked.iter().zip(&truth) {
        assert_eq!(
            row[..5],
            t[5..10],
            "exact: the excluded top 5 make room for the next 5"
        );
    }
    let r = crate::recall_at_k(&masked, &exact_masked, 10);
    assert!(r > 0.95, "masked recall@10 = {r}");

    // k beyond the catalogue: the whole non-excluded catalogue, exactly sorted.
    let small = EmbeddingMatrix::new(vec![5, 3, 9], 2, vec![1.0, 0.0, 1.0, 0.0, 0.0, 1.0]).unwrap();
    let small_index = HnswIndex::build(small, HnswConfig::default()).unwrap();
    let one = MatrixView::new(&[1.0, 0.5], 2).unwrap();
    let all = small_index
        .top_k(one, 10, Some(&Exclusions::from_rows([vec![9]])))
        .unwrap();
    assert_eq!(
        all[0],
        vec![
            ScoredItem { id: 3, score: 1.0 },
            ScoredItem { id: 5, score: 1.0 }
        ]
    );
}

#[test]
fn config_is_checked() {
    let mut c = HnswConfig::default();
    assert!(c.check().is_ok());
    c.max_connections = 300;
    assert!(matches!(
        c.check(),
        Err(Error::HnswParam {
            name: "max_connections",
            ..
        })
    ));
    let c = HnswConfig {
        ef_construction: 4,
        ..HnswConfig::default()
    };
    assert!(c.check().is_err());
    let c: Result<HnswConfig, _> = serde_json::from_str(r#"{"ef_search": 50, "m": 3}"#);
    assert!(c.is_err(), "unknown fields are rejected");
    let c: HnswConfig = serde_json::from_str(r#"{"ef_search": 50}"#).unwrap();
    assert_eq!(
        c,
        HnswConfig {
            ef_search: 50,
            ..HnswConfig::default()
        }
    );
}

fn small_index(n: usize, seed: u64) -> (EmbeddingMatrix, HnswIndex) {
    let mut rng = StdRng::seed_from_u64(seed);
    let items =
        EmbeddingMatrix::new((0..n as u32).collect(), 16, clustered(&mut rng, n, 16, 10)).unwrap();
    let config = HnswConfig {
        ef_construction: 40,
        ..HnswConfig::default()
    };
    let index = HnswIndex::build(items.clone(), config).unwrap();
    (items, index)
}

#[test]
fn a_corrupt_or_truncated_file_is_refused() {
    let (_, index) = small_index(500, 3);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("items.hnsw");
    index.save(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert!(HnswIndex::load(&path).is_ok());

    // One bit flipped in the last section (the links).
    let mut flipped = bytes.clone();
    let last = flipped.len() - 3;
    flipped[last] ^= 0x10;
    std::fs::write(&path, &flipped).unwrap();
    let err = HnswIndex::load(&path).unwrap_err();
    assert!(matches!(err, Error::HnswCorrupt { .. }), "{err}");
    assert!(err.to_string().contains("checksum"), "{err}");

    // Cut short.
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    assert!(matches!(
        HnswIndex::load(&path),
        Err(Error::HnswCorrupt { .. })
    ));

    // Not an index at all.
    std::fs::write(&path, b"PAR1 something else").unwrap();
    assert!(matches!(
        HnswIndex::load(&path),
        Err(Error::HnswFile { .. })
    ));
}

#[test]
fn an_index_of_other_embeddings_is_refused_as_stale() {
    let (items, index) = small_index(300, 4);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("items.hnsw");
    index.save(&path).unwrap();
    assert_eq!(index.embeddings_checksum(), embeddings_checksum(&items));

    // The same embeddings in another row order are the same embeddings.
    let (ids, dim, data) = items.clone().into_parts();
    let reversed_ids: Vec<u32> = ids.iter().rev().copied().collect();
    let reversed_data: Vec<f32> = data.chunks(dim).rev().flatten().copied().collect();
    let reversed = EmbeddingMatrix::new(reversed_ids, dim, reversed_data).unwrap();
    assert!(HnswIndex::load_for(&path, &reversed).is_ok());

    // One value changed in the last place: retrained embeddings, a stale index.
    let mut changed = data.clone();
    changed[5] = f32::from_bits(changed[5].to_bits() + 1);
    let retrained = EmbeddingMatrix::new(ids, dim, changed).unwrap();
    let err = HnswIndex::load_for(&path, &retrained).unwrap_err();
    assert!(matches!(err, Error::HnswStale { .. }), "{err}");
}

#[test]
fn inner_product_search_over_unnormalised_items() {
    // Items of very different norms: the augmentation must order them by inner product, not by angle.
    let mut rng = StdRng::seed_from_u64(5);
    let (n, dim) = (2_000, 16);
    let mut data = clustered(&mut rng, n, dim, 20);
    for (i, row) in data.chunks_mut(dim).enumerate() {
        let scale = 0.2 + (i % 7) as f32 * 0.5;
        row.iter_mut().for_each(|x| *x *= scale);
    }
    let items = EmbeddingMatrix::new((0..n as u32).collect(), dim, data).unwrap();
    let queries = clustered(&mut rng, 100, dim, 20);
    let view = MatrixView::new(&queries, dim).unwrap();
    let truth = ExactIndex::new(items.clone())
        .top_k(view, 10, None)
        .unwrap();
    let index = HnswIndex::build(items, HnswConfig::default()).unwrap();
    let got = index.top_k(view, 10, None).unwrap();
    let r = crate::recall_at_k(&got, &truth, 10);
    assert!(r > 0.95, "recall@10 = {r}");
    // Scores are the exact inner products.
    for (g, t) in got[0].iter().zip(&truth[0]) {
        if g.id == t.id {
            assert!((g.score - t.score).abs() < 1e-5);
        }
    }
}

#[test]
fn an_empty_catalogue_answers_nothing_and_round_trips() {
    let items = EmbeddingMatrix::new(vec![], 4, vec![]).unwrap();
    let index = HnswIndex::build(items.clone(), HnswConfig::default()).unwrap();
    let q = [1.0, 0.0, 0.0, 0.0];
    let view = MatrixView::new(&q, 4).unwrap();
    assert_eq!(index.top_k(view, 5, None).unwrap(), vec![vec![]]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.hnsw");
    index.save(&path).unwrap();
    let loaded = HnswIndex::load_for(&path, &items).unwrap();
    assert_eq!(loaded.len(), 0);
}
