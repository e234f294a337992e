//! Against a real server: Milvus Lite (PyPI `milvus-lite`, pinned in `.ci/milvus-lite.txt`) started on a
//! loopback port. `DSSM_MILVUS_LITE` names its `milvus-lite` script or its environment's Python; without
//! it the test says it skipped, and with `DSSM_REQUIRE_MILVUS=1` (set by `.ci/run`) it fails instead.

use std::path::PathBuf;
use std::time::Duration;

use dssm_milvus::lite::LiteServer;
use dssm_milvus::{
    Agreement, BlockingClient, ClientConfig, Error, Hit, IndexKind, SearchParams, compare_top_k,
};

/// The server, or `None` (after saying why) when the test should skip.
fn start_server(data_dir: &std::path::Path) -> Option<LiteServer> {
    let required = std::env::var("DSSM_REQUIRE_MILVUS").is_ok_and(|v| v == "1");
    let Some(program) = std::env::var_os("DSSM_MILVUS_LITE").map(PathBuf::from) else {
        assert!(
            !required,
            "DSSM_REQUIRE_MILVUS=1 but DSSM_MILVUS_LITE is not set (see .ci/run)"
        );
        eprintln!(
            "skipped: DSSM_MILVUS_LITE is not set (the milvus-lite script of a venv with \
             .ci/milvus-lite.txt installed), so no Milvus server was started"
        );
        return None;
    };
    match LiteServer::start(&program, data_dir, Duration::from_secs(120)) {
        Ok(server) => Some(server),
        Err(error) if !required => {
            eprintln!("skipped: {error}");
            None
        }
        Err(error) => panic!("DSSM_REQUIRE_MILVUS=1: {error}"),
    }
}

/// A seeded stream of values in [-1, 1) (xorshift), so the test needs no RNG crate.
fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// Brute force: every item's inner product with the query, best first, ties by lower id.
fn exact_top_k(ids: &[i64], items: &[f32], dim: usize, query: &[f32], k: usize) -> Vec<Hit> {
    let mut hits: Vec<Hit> = ids
        .iter()
        .zip(items.chunks_exact(dim))
        .map(|(&id, row)| Hit {
            id,
            score: row.iter().zip(query).map(|(a, b)| a * b).sum(),
        })
        .collect();
    hits.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id)));
    hits.truncate(k);
    hits
}

#[test]
fn flat_collection_returns_the_exact_top_k_and_hnsw_searches() {
    let dir = tempfile::tempdir().unwrap();
    let Some(server) = start_server(dir.path()) else {
        return;
    };
    let mut milvus = BlockingClient::connect(&ClientConfig::new(server.uri())).unwrap();

    // 1,000 items (ids far from their row numbers, some above u32::MAX) and 40 queries in 16-d.
    let (n, dim, nq, k) = (1_000, 16, 40, 10);
    let ids: Vec<i64> = (0..n as i64)
        .map(|i| i * 7_919 + (i % 3) * (1 << 33))
        .collect();
    let items = values(7, n * dim);
    let queries = values(11, nq * dim);

    let name = "dssm_test_items";
    assert!(!milvus.has_collection(name).unwrap());
    milvus.create_collection(name, dim).unwrap();
    assert!(milvus.has_collection(name).unwrap());
    // Batches of 300: four requests, the last one short.
    let mut seen = Vec::new();
    let inserted = milvus
        .insert_batches(name, &ids, &items, dim, 300, |done| seen.push(done))
        .unwrap();
    assert_eq!(inserted, n as u64);
    assert_eq!(seen, vec![300, 600, 900, 1_000]);
    milvus.create_index(name, IndexKind::Flat).unwrap();
    milvus
        .load_collection(name, Duration::from_secs(60))
        .unwrap();

    let found = milvus
        .search(name, &queries, dim, SearchParams::top(k))
        .unwrap();
    assert_eq!(found.len(), nq);
    for (q, hits) in found.iter().enumerate() {
        let query = &queries[q * dim..(q + 1) * dim];
        let exact = exact_top_k(&ids, &items, dim, query, k);
        let agreement = compare_top_k(&exact, hits, 1e-4);
        assert_ne!(
            agreement,
            Agreement::Different,
            "query {q}: Milvus {hits:?}\nexact {exact:?}"
        );
        // Random vectors have no ties: the very same list, and the server's scores are the inner products.
        assert_eq!(agreement, Agreement::Identical, "query {q}");
        for (a, b) in exact.iter().zip(hits) {
            assert!(
                (a.score - b.score).abs() < 1e-4,
                "query {q}: {a:?} vs {b:?}"
            );
        }
    }

    // A bad request is an error naming the operation and the collection.
    let error = milvus
        .search(
            "no_such_collection",
            &queries[..dim],
            dim,
            SearchParams::top(k),
        )
        .unwrap_err();
    assert!(
        matches!(&error, Error::Milvus { operation: "Search", collection, .. } if collection == "no_such_collection"),
        "{error}"
    );
    let error = milvus
        .search(name, &queries[..dim - 1], dim, SearchParams::top(k))
        .unwrap_err();
    assert!(matches!(error, Error::Input { .. }), "{error}");

    // An HNSW collection of the same items, searched with a generous ef: approximate, but on 1,000
    // items nearly every true neighbour is found.
    let hnsw = "dssm_test_items_hnsw";
    milvus.create_collection(hnsw, dim).unwrap();
    milvus
        .insert_batches(hnsw, &ids, &items, dim, 1_000, |_| {})
        .unwrap();
    milvus.create_index(hnsw, IndexKind::HNSW_DEFAULT).unwrap();
    milvus
        .load_collection(hnsw, Duration::from_secs(60))
        .unwrap();
    let params = SearchParams { k, ef: Some(200) };
    let found = milvus.search(hnsw, &queries, dim, params).unwrap();
    let mut recalled = 0;
    for (q, hits) in found.iter().enumerate() {
        let exact = exact_top_k(&ids, &items, dim, &queries[q * dim..(q + 1) * dim], k);
        recalled += hits
            .iter()
            .filter(|h| exact.iter().any(|e| e.id == h.id))
            .count();
    }
    let recall = recalled as f64 / (nq * k) as f64;
    assert!(recall >= 0.9, "HNSW recall@{k} {recall}");

    for collection in [name, hnsw] {
        milvus.drop_collection(collection).unwrap();
        assert!(!milvus.has_collection(collection).unwrap());
    }
    drop(milvus);
    drop(server);
}
