//! Fuzzing on the stable toolchain: every parser and loader is fed random bytes and mutations of a
//! valid input (flipped, inserted and deleted bytes, truncations). Each must return, never panic,
//! and an error must name the file it was reading.
//!
//! A short run is part of `cargo test` (`DSSM_FUZZ_CASES`, default 64 cases per target);
//! `cargo xtask fuzz --cases N` runs N per target and prints the cases tried and the failures.

use std::path::{Path, PathBuf};

use candle_core::Device;
use dssm_data::raw::{
    RawMovie, RawUser, parse_movies_100k, parse_movies_ml1m, parse_ratings, parse_users_100k,
    parse_users_ml1m,
};
use dssm_data::{
    Dataset, DatasetKind, DatasetSpec, PrepareRequest, Source, SpecOutput, Split, SyntheticConfig,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

fn cases() -> u32 {
    std::env::var("DSSM_FUZZ_CASES")
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(64)
}

/// One edit of a byte string: `(kind, position, byte)`.
type Edit = (u8, usize, u8);

fn apply(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for &(kind, position, byte) in edits {
        let at = position % (bytes.len() + 1);
        match kind % 5 {
            0 if !bytes.is_empty() => {
                let i = position % bytes.len();
                bytes[i] ^= byte | 1;
            }
            1 => bytes.insert(at, byte),
            2 if at < bytes.len() => {
                bytes.remove(at);
            }
            3 => bytes.truncate(at),
            // A structural character where it hurts most.
            _ => {
                const STRUCTURAL: &[u8] = b":,|\n\t\"[]=#";
                bytes.insert(at, STRUCTURAL[usize::from(byte) % STRUCTURAL.len()]);
            }
        }
    }
    bytes
}

/// Mutations of `seed` (mostly) and random bytes.
fn inputs(seed: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let mutated = prop::collection::vec(any::<Edit>(), 1..12)
        .prop_map(move |edits| apply(seed.clone(), &edits));
    prop_oneof![
        8 => mutated,
        1 => prop::collection::vec(any::<u8>(), 0..400),
    ]
}

/// Runs `check` on `cases()` inputs; prints the count; fails the test on the first panic or
/// unnamed error (proptest shrinks it first).
fn fuzz(
    target: &str,
    strategy: impl Strategy<Value = Vec<u8>>,
    check: impl Fn(&[u8]) -> Result<(), TestCaseError>,
) {
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&strategy, |input| check(&input));
    match result {
        Ok(()) => println!("fuzz {target:<28} {} cases, 0 failures", cases()),
        Err(e) => panic!("fuzz {target}: {e}"),
    }
}

/// An error must name the file (`needle`) it came from.
fn named<T, E: std::fmt::Display>(result: Result<T, E>, needle: &str) -> Result<(), TestCaseError> {
    if let Err(e) = result {
        let message = e.to_string();
        prop_assert!(message.contains(needle), "{needle} not named in: {message}");
    }
    Ok(())
}

fn synthetic_files() -> dssm_data::synthetic::SyntheticFiles {
    let config = SyntheticConfig {
        users: 12,
        items: 10,
        ratings: 40,
        ..SyntheticConfig::default()
    };
    dssm_data::synthetic::generate(&config).unwrap()
}

fn head(bytes: &[u8], lines: usize) -> Vec<u8> {
    let text = String::from_utf8_lossy(bytes);
    let kept: Vec<&str> = text.lines().take(lines).collect();
    (kept.join("\n") + "\n").into_bytes()
}

#[test]
fn movielens_parsers_never_panic_and_name_the_file() {
    let files = synthetic_files();
    let users = parse_users_ml1m("users.dat", &files.users).unwrap();
    let movies = parse_movies_ml1m("movies.dat", &files.movies).unwrap();
    fuzz("ml-1m users.dat", inputs(head(&files.users, 6)), |b| {
        named(parse_users_ml1m("users.dat", b), "users.dat")
    });
    fuzz("ml-1m movies.dat", inputs(head(&files.movies, 6)), |b| {
        named(parse_movies_ml1m("movies.dat", b), "movies.dat")
    });
    fuzz("ml-1m ratings.dat", inputs(head(&files.ratings, 8)), |b| {
        named(
            parse_ratings("ratings.dat", b, b"::", &users, &movies),
            "ratings.dat",
        )
    });
    let u_user = b"1|24|M|technician|85711\n2|53|F|other|94043\n".to_vec();
    let flags = |on: usize| {
        (0..19)
            .map(|i| if i == on { "1" } else { "0" })
            .collect::<Vec<_>>()
            .join("|")
    };
    let u_item = format!(
        "1|Toy Story (1995)|01-Jan-1995||u|{}\n2|GoldenEye (1995)|01-Jan-1995||u|{}\n",
        flags(3),
        flags(1)
    )
    .into_bytes();
    let users_100k: Vec<RawUser> = parse_users_100k("u.user", &u_user).unwrap();
    let movies_100k: Vec<RawMovie> = parse_movies_100k("u.item", &u_item).unwrap();
    fuzz("ml-100k u.user", inputs(u_user), |b| {
        named(parse_users_100k("u.user", b), "u.user")
    });
    fuzz("ml-100k u.item", inputs(u_item), |b| {
        named(parse_movies_100k("u.item", b), "u.item")
    });
    fuzz(
        "ml-100k u.data",
        inputs(b"1\t1\t5\t881250949\n2\t2\t3\t891717742\n".to_vec()),
        |b| {
            named(
                parse_ratings("u.data", b, b"\t", &users_100k, &movies_100k),
                "u.data",
            )
        },
    );
}

const SPEC: &str = r#"name = "fuzz"
[interactions]
path = "log.csv"
user = "user"
item = "item"
timestamp = "t"
[split]
kind = "leave-last-out"
[items]
path = "items.csv"
[[items.features]]
name = "item"
kind = "categorical"
[[items.features]]
name = "tags"
kind = "multi_categorical"
[[items.features]]
name = "price"
kind = "numeric"
[[items.features]]
name = "vec"
kind = "vector"
dim = 2
"#;

fn shop_files(dir: &Path) -> (Vec<u8>, Vec<u8>) {
    let mut log = String::from("user,item,t\n");
    for u in 0..5 {
        for i in 0..4 {
            log += &format!("u{u},i{i},{}\n", 10 * u + i);
        }
    }
    let items = "item,tags,price,vec\ni0,a|b,1.5,\"[0.5, 1]\"\ni1,b,2,\"[0, 0]\"\ni2,,3,1 2\ni3,c,4,\"[1, 1]\"\n";
    std::fs::write(dir.join("log.csv"), &log).unwrap();
    std::fs::write(dir.join("items.csv"), items).unwrap();
    std::fs::write(dir.join("spec.toml"), SPEC).unwrap();
    (log.into_bytes(), items.as_bytes().to_vec())
}

fn prepare_spec_in(dir: &Path) -> Result<(), dssm_data::DataError> {
    let spec = DatasetSpec::load(&dir.join("spec.toml"))?;
    let output = SpecOutput {
        out_dir: dir.join("out"),
        overwrite: true,
        command: String::new(),
    };
    dssm_data::prepare_spec(&spec, &output, &|_| {}).map(|_| ())
}

#[test]
fn dataset_specs_and_their_csv_files_never_panic_and_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (log, items) = shop_files(dir.path());
    prepare_spec_in(dir.path()).expect("the unmutated files prepare");
    fuzz(
        "dataset spec (TOML)",
        inputs(SPEC.as_bytes().to_vec()),
        |b| {
            let text = String::from_utf8_lossy(b);
            named(
                DatasetSpec::from_toml_str(&text, Path::new("fuzz.toml")),
                "fuzz.toml",
            )
        },
    );
    for (file, seed) in [("log.csv", log), ("items.csv", items)] {
        let original = std::fs::read(dir.path().join(file)).unwrap();
        fuzz(&format!("spec source {file}"), inputs(seed), |b| {
            std::fs::write(dir.path().join(file), b).unwrap();
            let result = prepare_spec_in(dir.path());
            // A degenerate log is refused naming the log; anything else names the file read.
            let needle = match &result {
                Err(dssm_data::DataError::Degenerate { .. }) => "log.csv",
                _ => file,
            };
            named(result, needle)
        });
        std::fs::write(dir.path().join(file), original).unwrap();
    }
}

fn parquet_log(path: &Path) -> Vec<u8> {
    use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
    use std::sync::Arc;
    let users: Vec<String> = (0..20).map(|i| format!("u{}", i % 5)).collect();
    let items: Vec<String> = (0..20).map(|i| format!("i{}", i % 4)).collect();
    let batch = RecordBatch::try_from_iter([
        ("user", Arc::new(StringArray::from(users)) as ArrayRef),
        ("item", Arc::new(StringArray::from(items)) as ArrayRef),
        (
            "t",
            Arc::new(Int64Array::from_iter_values(0..20)) as ArrayRef,
        ),
    ])
    .unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    std::fs::read(path).unwrap()
}

#[test]
fn parquet_inputs_never_panic_and_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    shop_files(dir.path());
    let spec = SPEC.replace("log.csv", "log.parquet");
    std::fs::write(dir.path().join("spec.toml"), spec).unwrap();
    let seed = parquet_log(&dir.path().join("log.parquet"));
    prepare_spec_in(dir.path()).expect("the unmutated Parquet log prepares");
    fuzz("spec source log.parquet", inputs(seed), |b| {
        std::fs::write(dir.path().join("log.parquet"), b).unwrap();
        named(prepare_spec_in(dir.path()), "log.parquet")
    });
}

fn prepared_dataset(dir: &Path) -> PathBuf {
    let config = SyntheticConfig {
        users: 30,
        items: 20,
        ratings: 300,
        ..SyntheticConfig::default()
    };
    let out = dir.join("ds");
    let request = PrepareRequest::new(Source::Synthetic(config), DatasetKind::Synthetic, &out);
    dssm_data::prepare(&request, &|_| {}).unwrap();
    out
}

/// Mutates one file of a folder per case, runs `open`, and restores the file. With
/// `manifest`, the manifest's size and md5 of the file are updated to the mutation, so the
/// parser behind the checksum is what gets fuzzed.
fn fuzz_folder_file(
    folder: &Path,
    file: &str,
    manifest: Option<&str>,
    open: &dyn Fn(&Path) -> Result<(), String>,
) {
    let path = folder.join(file);
    let original = std::fs::read(&path).unwrap();
    let original_manifest = manifest.map(|m| std::fs::read(folder.join(m)).unwrap());
    let target = match manifest {
        Some(_) => format!("{file} (checksum updated)"),
        None => file.to_string(),
    };
    fuzz(&target, inputs(original.clone()), |b| {
        std::fs::write(&path, b).unwrap();
        if let Some(m) = manifest {
            record_checksum(&folder.join(m), file, b);
        }
        named(open(folder), file)
    });
    std::fs::write(&path, original).unwrap();
    if let (Some(m), Some(bytes)) = (manifest, original_manifest) {
        std::fs::write(folder.join(m), bytes).unwrap();
    }
}

fn record_checksum(manifest: &Path, file: &str, bytes: &[u8]) {
    use md5::{Digest, Md5};
    let mut value: serde_json::Value =
        serde_json::from_slice(&std::fs::read(manifest).unwrap()).unwrap();
    let md5: String = Md5::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    for entry in value["files"].as_array_mut().unwrap() {
        if entry["name"] == file {
            entry["md5"] = md5.clone().into();
            entry["bytes"] = bytes.len().into();
        }
    }
    std::fs::write(manifest, serde_json::to_vec(&value).unwrap()).unwrap();
}

#[test]
fn dataset_folders_never_panic_and_name_the_corrupt_file() {
    let dir = tempfile::tempdir().unwrap();
    let folder = prepared_dataset(dir.path());
    let open = |folder: &Path| -> Result<(), String> {
        let dataset = Dataset::open(folder).map_err(|e| e.to_string())?;
        for split in Split::ALL {
            dataset.interactions(split).map_err(|e| e.to_string())?;
        }
        Ok(())
    };
    fuzz_folder_file(&folder, "manifest.json", None, &open);
    for file in [
        "schema.json",
        "vocabularies.json",
        "users.parquet",
        "items.parquet",
        "train.parquet",
    ] {
        fuzz_folder_file(&folder, file, Some("manifest.json"), &open);
        // Without the manifest's consent, any change is a checksum error naming the file.
        fuzz_folder_file(&folder, file, None, &open);
    }
}

#[test]
fn run_configs_and_overrides_never_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let quickstart = std::fs::read(root.join("configs/quickstart.toml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fuzz-run.toml");
    fuzz("run config (TOML)", inputs(quickstart), |b| {
        std::fs::write(&file, b).unwrap();
        // Syntax and type errors name the file, line and column; a value the checks refuse names
        // its key (the CLI adds the file).
        match dssm_trainer::RunConfig::from_file(&file) {
            Err(dssm_trainer::config::ConfigError::Invalid { key, .. }) => {
                prop_assert!(!key.is_empty());
                Ok(())
            }
            other => named(other, "fuzz-run.toml"),
        }
    });
    let path = root.join("configs/quickstart.toml");
    fuzz("--set KEY=VALUE", inputs(b"train.epochs=8".to_vec()), |b| {
        let setting = String::from_utf8_lossy(b).into_owned();
        let _ = dssm_trainer::RunConfig::from_file_with_overrides(&path, &[setting]);
        Ok(())
    });
}

#[test]
fn checkpoints_and_embedding_files_never_panic_and_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dssm_model::ModelConfig {
        features: vec![
            dssm_model::FeatureSpec::categorical("user_id", dssm_model::Side::User, 10),
            dssm_model::FeatureSpec::categorical("movie_id", dssm_model::Side::Item, 12),
        ],
        senet: None,
        ..dssm_model::ModelConfig::default()
    };
    let model = dssm_model::Dssm::new(config, 1, &Device::Cpu).unwrap();
    let checkpoint = dir.path().join("ckpt");
    model.save(&checkpoint).unwrap();
    let load = |dir: &Path| {
        dssm_model::Dssm::load(dir, &Device::Cpu)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    for file in ["model.json", "model.safetensors"] {
        fuzz_folder_file(&checkpoint, file, None, &load);
    }

    let matrix = dssm_retrieval::EmbeddingMatrix::new(vec![3, 5, 9], 2, vec![0.5; 6]).unwrap();
    let path = dir.path().join("item_embeddings.parquet");
    dssm_retrieval::write_embeddings(&path, &matrix, "m1").unwrap();
    let read = |dir: &Path| {
        dssm_retrieval::read_embeddings(&dir.join("item_embeddings.parquet"))
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    fuzz_folder_file(dir.path(), "item_embeddings.parquet", None, &read);
}
