//! `dssm milvus load | check | search` against Milvus Lite on loopback, over an export folder written
//! here (the same Parquet layout `dssm export` writes). `DSSM_MILVUS_LITE` names the `milvus-lite`
//! script; without it the test says it skipped, and with `DSSM_REQUIRE_MILVUS=1` it fails instead.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use dssm_milvus::lite::LiteServer;
use dssm_retrieval::{EmbeddingMatrix, write_embeddings};

fn dssm(args: &[&str], uri: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dssm"))
        .args(args)
        .env("RUST_LOG", "warn")
        .env("DSSM_MILVUS_URI", uri)
        .output()
        .expect("the dssm binary runs")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn path(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

/// Unit rows from a seeded xorshift stream.
fn unit_rows(seed: u64, rows: usize, dim: usize) -> Vec<f32> {
    let mut state = seed;
    let mut data: Vec<f32> = (0..rows * dim)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect();
    for row in data.chunks_exact_mut(dim) {
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        row.iter_mut().for_each(|x| *x /= norm);
    }
    data
}

#[test]
fn load_check_and_search_an_export() {
    let required = std::env::var("DSSM_REQUIRE_MILVUS").is_ok_and(|v| v == "1");
    let Some(program) = std::env::var_os("DSSM_MILVUS_LITE").map(PathBuf::from) else {
        assert!(
            !required,
            "DSSM_REQUIRE_MILVUS=1 but DSSM_MILVUS_LITE is not set"
        );
        eprintln!("skipped: DSSM_MILVUS_LITE is not set, so no Milvus server was started");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = match LiteServer::start(&program, dir.path(), Duration::from_secs(120)) {
        Ok(server) => server,
        Err(error) if !required => {
            eprintln!("skipped: {error}");
            return;
        }
        Err(error) => panic!("DSSM_REQUIRE_MILVUS=1: {error}"),
    };

    // 300 items in 8-d, of which items 1000..1010 share one vector (ties, as items never seen in
    // train share their features' vector), and 50 users.
    let (n, dim) = (300, 8);
    let mut items = unit_rows(3, n, dim);
    let shared = items[..dim].to_vec();
    for row in 0..10 {
        items[row * dim..(row + 1) * dim].copy_from_slice(&shared);
    }
    let item_ids: Vec<u32> = (0..n as u32).map(|i| 1_000 + i).collect();
    let mut users = unit_rows(5, 50, dim);
    // One user points exactly at the shared vector: its top 10 are all tied.
    users[..dim].copy_from_slice(&shared);
    let user_ids: Vec<u32> = (1..=50).collect();
    let export = dir.path().join("export");
    std::fs::create_dir_all(&export).unwrap();
    write_embeddings(
        &export.join("item_embeddings.parquet"),
        &EmbeddingMatrix::new(item_ids, dim, items).unwrap(),
        "test",
    )
    .unwrap();
    write_embeddings(
        &export.join("user_embeddings.parquet"),
        &EmbeddingMatrix::new(user_ids, dim, users).unwrap(),
        "test",
    )
    .unwrap();

    let uri = server.uri();
    let load = dssm(
        &[
            "milvus",
            "load",
            "--embeddings",
            path(&export),
            "--collection",
            "cli_items",
            "--batch-rows",
            "128",
        ],
        uri,
    );
    assert!(load.status.success(), "{}", text(&load));
    assert!(
        text(&load).contains("items        300 x 8"),
        "{}",
        text(&load)
    );

    // Loading again without --replace is refused, naming the collection.
    let again = dssm(
        &[
            "milvus",
            "load",
            "--embeddings",
            path(&export),
            "--collection",
            "cli_items",
        ],
        uri,
    );
    assert!(!again.status.success());
    assert!(text(&again).contains("--replace"), "{}", text(&again));

    let check = dssm(
        &[
            "milvus",
            "check",
            "--embeddings",
            path(&export),
            "--collection",
            "cli_items",
            "-k",
            "5,20",
            "--queries-per-request",
            "16",
        ],
        uri,
    );
    let out = text(&check);
    assert!(check.status.success(), "{out}");
    // Per k: all 50 users, none different.
    for k in [5, 20] {
        let line = out
            .lines()
            .find(|l| l.split_whitespace().next() == Some(&k.to_string()))
            .unwrap_or_else(|| panic!("no line for k={k}:\n{out}"));
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields[1], "50", "{line}");
        assert_eq!(fields[4], "0", "{line}");
        let agreeing: usize =
            fields[2].parse::<usize>().unwrap() + fields[3].parse::<usize>().unwrap();
        assert_eq!(agreeing, 50, "{line}");
    }

    let search = dssm(
        &[
            "milvus",
            "search",
            "--embeddings",
            path(&export),
            "--collection",
            "cli_items",
            "--user",
            "2",
            "-k",
            "3",
        ],
        uri,
    );
    assert!(search.status.success(), "{}", text(&search));
    let ranks = String::from_utf8_lossy(&search.stdout)
        .lines()
        .filter(|l| l.trim_start().starts_with(char::is_numeric))
        .count();
    assert_eq!(ranks, 3, "{}", text(&search));

    // A collection that is not there is an error naming it.
    let missing = dssm(
        &[
            "milvus",
            "check",
            "--embeddings",
            path(&export),
            "--collection",
            "nope",
        ],
        uri,
    );
    assert!(!missing.status.success());
    assert!(text(&missing).contains("\"nope\""), "{}", text(&missing));
    drop(server);
}
