//! README "Your own data", end to end through the `dssm` binary: a shop-like dataset generated
//! here (string keys, a tag list, a price, a 16-d item vector, a hashed brand), written once as
//! CSV and once as Parquet, its spec, `prepare-data --spec`, `train` and `recommend`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, FixedSizeListArray, Float32Array, Float64Array, ListBuilder, RecordBatch,
    StringArray, StringBuilder, TimestampSecondArray,
};
use arrow::datatypes::{DataType, Field};
use parquet::arrow::ArrowWriter;

const TAGS: [&str; 6] = ["red", "blue", "sale", "new", "eco", "gift"];
const SEGMENTS: [&str; 3] = ["student", "pro", "family"];
const DIM: usize = 16;

/// The generated shop: customers, products and clicks with planted structure (each segment
/// prefers one of three product groups).
struct Shop {
    customers: Vec<(String, &'static str)>,
    products: Vec<Product>,
    clicks: Vec<(String, String, i64)>,
}

struct Product {
    sku: String,
    brand: String,
    tags: Vec<&'static str>,
    price: f64,
    vector: Vec<f32>,
}

fn shop() -> Shop {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    let products: Vec<Product> = (0..60)
        .map(|i| {
            let group = i % 3;
            Product {
                sku: format!("sku-{i:03}"),
                brand: format!("brand{}", i % 7),
                tags: vec![TAGS[group], TAGS[3 + (i / 3) % 3]],
                price: 5.0 + (i as f64) * 0.75,
                vector: (0..DIM)
                    .map(|d| if d % 3 == group { 0.5 } else { -0.125 } + (d as f32) / 64.0)
                    .collect(),
            }
        })
        .collect();
    let customers: Vec<(String, &'static str)> = (0..90)
        .map(|u| (format!("c{u:03}"), SEGMENTS[u % 3]))
        .collect();
    let mut clicks = Vec::new();
    for (u, (customer, _)) in customers.iter().enumerate() {
        for t in 0..12 {
            let group = if next(10) < 8 {
                u % 3
            } else {
                next(3) as usize
            };
            let item = group + 3 * next(20) as usize;
            let time = 1_700_000_000 + (u as i64) * 1_000 + t * 60;
            clicks.push((customer.clone(), products[item].sku.clone(), time));
        }
    }
    Shop {
        customers,
        products,
        clicks,
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` of Unix seconds.
fn iso(t: i64) -> String {
    let (y, m, d) = civil_from_days(t.div_euclid(86_400));
    let secs = t.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

fn write_csv(shop: &Shop, dir: &Path) {
    let mut products = String::from("sku,brand,tags,price,embedding\n");
    for p in &shop.products {
        let vector: Vec<String> = p.vector.iter().map(f32::to_string).collect();
        products += &format!(
            "{},{},{},{},\"[{}]\"\n",
            p.sku,
            p.brand,
            p.tags.join("|"),
            p.price,
            vector.join(", ")
        );
    }
    std::fs::write(dir.join("products.csv"), products).unwrap();
    let mut customers = String::from("customer_id,segment\n");
    for (c, s) in &shop.customers {
        customers += &format!("{c},{s}\n");
    }
    std::fs::write(dir.join("customers.csv"), customers).unwrap();
    // Times as ISO text in the CSV (Unix seconds in the Parquet copy).
    let mut clicks = String::from("customer_id,sku,clicked_at\n");
    for (c, sku, t) in &shop.clicks {
        clicks += &format!("{c},{sku},{}\n", iso(*t));
    }
    std::fs::write(dir.join("clicks.csv"), clicks).unwrap();
}

/// Howard Hinnant's civil-from-days.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

fn write_parquet(path: &Path, columns: Vec<(&str, ArrayRef)>) {
    let batch = RecordBatch::try_from_iter(columns).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut writer = ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

fn strings<'a>(values: impl Iterator<Item = &'a str>) -> ArrayRef {
    Arc::new(values.map(Some).collect::<StringArray>())
}

fn write_parquet_copy(shop: &Shop, dir: &Path) {
    let mut tags = ListBuilder::new(StringBuilder::new());
    for p in &shop.products {
        for t in &p.tags {
            tags.values().append_value(t);
        }
        tags.append(true);
    }
    let item = Arc::new(Field::new_list_field(DataType::Float32, false));
    let vectors: Vec<f32> = shop
        .products
        .iter()
        .flat_map(|p| p.vector.clone())
        .collect();
    let embedding = FixedSizeListArray::new(
        item,
        DIM as i32,
        Arc::new(Float32Array::from(vectors)),
        None,
    );
    write_parquet(
        &dir.join("products.parquet"),
        vec![
            ("sku", strings(shop.products.iter().map(|p| p.sku.as_str()))),
            (
                "brand",
                strings(shop.products.iter().map(|p| p.brand.as_str())),
            ),
            ("tags", Arc::new(tags.finish())),
            (
                "price",
                Arc::new(Float64Array::from_iter_values(
                    shop.products.iter().map(|p| p.price),
                )),
            ),
            ("embedding", Arc::new(embedding)),
        ],
    );
    write_parquet(
        &dir.join("customers.parquet"),
        vec![
            (
                "customer_id",
                strings(shop.customers.iter().map(|c| c.0.as_str())),
            ),
            ("segment", strings(shop.customers.iter().map(|c| c.1))),
        ],
    );
    write_parquet(
        &dir.join("clicks.parquet"),
        vec![
            (
                "customer_id",
                strings(shop.clicks.iter().map(|c| c.0.as_str())),
            ),
            ("sku", strings(shop.clicks.iter().map(|c| c.1.as_str()))),
            (
                "clicked_at",
                Arc::new(TimestampSecondArray::from_iter_values(
                    shop.clicks.iter().map(|c| c.2),
                )),
            ),
        ],
    );
}

/// The README's spec, for either copy.
fn spec(extension: &str) -> String {
    format!(
        r#"name = "shop"

[interactions]
path = "clicks.{extension}"
user = "customer_id"
item = "sku"
timestamp = "clicked_at"

[split]
kind = "leave-last-out"

[users]
path = "customers.{extension}"
display = ["segment"]

[[users.features]]
name = "customer_id"
kind = "categorical"

[[users.features]]
name = "segment"
kind = "categorical"

[items]
path = "products.{extension}"
display = ["brand", "price"]

[[items.features]]
name = "sku"
kind = "categorical"

[[items.features]]
name = "tags"
kind = "multi_categorical"
max_len = 4

[[items.features]]
name = "price"
kind = "numeric"
buckets = 5

[[items.features]]
name = "embedding"
kind = "vector"
dim = {DIM}

[[items.features]]
name = "brand"
kind = "hashed"
buckets = 32
"#
    )
}

fn dssm(args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_dssm"))
        .args(args)
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .expect("the dssm binary runs");
    assert!(
        output.status.success(),
        "dssm {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Runs dssm expecting exit code 1; returns its stderr.
fn dssm_fails(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_dssm"))
        .args(args)
        .output()
        .expect("the dssm binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "dssm {args:?}: {stderr}");
    stderr
}

fn prepare(dir: &Path, extension: &str) -> PathBuf {
    let spec_path = dir.join(format!("shop-{extension}.toml"));
    std::fs::write(&spec_path, spec(extension)).unwrap();
    let out = dir.join(format!("prepared-{extension}"));
    dssm(&[
        "prepare-data",
        "--spec",
        spec_path.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    out
}

fn path(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

#[test]
fn a_shop_log_in_csv_or_parquet_prepares_identically_trains_and_recommends_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let shop = shop();
    write_csv(&shop, dir.path());
    write_parquet_copy(&shop, dir.path());
    let from_csv = prepare(dir.path(), "csv");
    let from_parquet = prepare(dir.path(), "parquet");
    let (a, b) = (
        dssm_data::Dataset::open(&from_csv).unwrap(),
        dssm_data::Dataset::open(&from_parquet).unwrap(),
    );
    assert_eq!(a.users, b.users);
    assert_eq!(a.items, b.items);
    assert_eq!(a.schema, b.schema);
    assert_eq!(a.vocabularies, b.vocabularies);
    for split in dssm_data::Split::ALL {
        assert_eq!(
            a.interactions(split).unwrap(),
            b.interactions(split).unwrap()
        );
    }
    assert_eq!(a.items.key[0], "sku-000");
    assert_eq!((a.manifest.users, a.manifest.items), (90, 60));
    assert_eq!(a.manifest.rows.test, 90, "one test click per customer");
    let kinds: Vec<String> = a
        .schema
        .features
        .iter()
        .map(|f| format!("{:?}", f.kind))
        .collect();
    assert_eq!(
        kinds,
        [
            "Categorical",
            "Categorical",
            "Categorical",
            "MultiCategorical",
            "Categorical",
            "Dense",
            "Categorical"
        ]
    );

    let run = dir.path().join("run");
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/own-data.toml");
    dssm(&[
        "train",
        "--config",
        path(&config),
        "--set",
        &format!("data.path={:?}", path(&from_csv)),
        "--set",
        &format!("output.dir={:?}", path(&run)),
        "--set",
        "train.epochs=12",
        "--set",
        "train.batch_size=128",
    ]);
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("metrics.json")).unwrap()).unwrap();
    // Each segment clicks its own third of the catalogue 80% of the time: the towers must find
    // that, popularity cannot.
    let hit_rate_at_20 = |ranker: &str| {
        let at_k = &metrics["retrieval"][ranker][0]["at_k"];
        let at_20 = at_k
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["k"] == 20)
            .unwrap();
        at_20["hit_rate"].as_f64().unwrap()
    };
    let (model, popularity) = (hit_rate_at_20("test"), hit_rate_at_20("popularity_test"));
    println!("test HR@20 model {model:.3}, popularity {popularity:.3}");
    assert!(
        model > popularity + 0.15,
        "model {model} vs popularity {popularity}"
    );

    // The same log under a global time cutoff, trained as a retrieval task.
    let times: Vec<i64> = shop.clicks.iter().map(|c| c.2).collect();
    let (val_from, test_from) = (times[times.len() * 8 / 10], times[times.len() * 9 / 10]);
    let time_spec = spec("csv").replace(
        "kind = \"leave-last-out\"",
        &format!(
            "kind = \"time\"\nval_from = {val_from}\ntest_from = \"{}\"",
            iso(test_from)
        ),
    );
    let spec_path = dir.path().join("shop-time.toml");
    std::fs::write(&spec_path, time_spec).unwrap();
    let by_time = dir.path().join("prepared-time");
    dssm(&[
        "prepare-data",
        "--spec",
        path(&spec_path),
        "--out",
        path(&by_time),
    ]);
    let timed = dssm_data::Dataset::open(&by_time).unwrap();
    assert_eq!(timed.manifest.protocol, dssm_data::Protocol::Time);
    let test = timed.interactions(dssm_data::Split::Test).unwrap();
    let train = timed.interactions(dssm_data::Split::Train).unwrap();
    assert!(test.timestamp.iter().all(|t| t.unwrap() >= test_from));
    assert!(train.timestamp.iter().all(|t| t.unwrap() < val_from));
    let time_run = dir.path().join("run-time");
    dssm(&[
        "train",
        "--config",
        path(&config),
        "--set",
        &format!("data.path={:?}", path(&by_time)),
        "--set",
        "data.protocol=\"time\"",
        "--set",
        &format!("output.dir={:?}", path(&time_run)),
        "--set",
        "train.epochs=1",
    ]);
    assert!(time_run.join("metrics.json").is_file());

    // A known customer by key: five products, none already clicked.
    let out = dssm(&[
        "recommend",
        "--run",
        path(&run),
        "--user",
        "c007",
        "--exclude-seen",
        "-k",
        "5",
    ]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let recommended: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|k| k.starts_with("sku-"))
        .collect();
    assert_eq!(recommended.len(), 5, "{stdout}");
    let clicked: Vec<&str> = shop
        .clicks
        .iter()
        .filter(|c| c.0 == "c007")
        .map(|c| c.1.as_str())
        .collect();
    assert!(recommended.iter().all(|k| !clicked.contains(k)), "{stdout}");
    assert!(
        stdout.contains("segment"),
        "the user's display columns: {stdout}"
    );

    // A new customer described by a feature.
    let out = dssm(&[
        "recommend",
        "--run",
        path(&run),
        "--feature",
        "segment=student",
        "-k",
        "3",
    ]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        stdout.lines().filter(|l| l.contains("sku-")).count(),
        3,
        "{stdout}"
    );
    assert!(!stdout.contains("not in the train vocabulary"), "{stdout}");
    // An unknown key is an error naming it.
    let stderr = dssm_fails(&["recommend", "--run", path(&run), "--user", "nobody"]);
    assert!(
        stderr.contains("\"nobody\" is not in the dataset"),
        "{stderr}"
    );
}

#[test]
fn bad_shop_data_is_refused_naming_file_column_and_row_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let shop = shop();
    write_csv(&shop, dir.path());
    let products = std::fs::read_to_string(dir.path().join("products.csv")).unwrap();
    let cases = [
        // A vector of the wrong length on the 3rd product (line 4).
        (
            "products.csv",
            products.replacen(
                "sku-002,brand2,sale|new,6.5,\"[",
                "sku-002,brand2,sale|new,6.5,\"[1, ",
                1,
            ),
            "products.csv:4: column \"embedding\": expected 16 floats, found 17",
        ),
        // A duplicate key.
        (
            "products.csv",
            products.replacen("sku-001,", "sku-000,", 1),
            "expected unique keys, found \"sku-000\" again (first at row 1)",
        ),
        // A price that is not a number.
        (
            "products.csv",
            products.replacen(",5.75,", ",cheap,", 1),
            "products.csv:3: column \"price\": expected a number, found \"cheap\"",
        ),
        // A click without a customer.
        (
            "clicks.csv",
            std::fs::read_to_string(dir.path().join("clicks.csv"))
                .unwrap()
                .replacen("\nc000,", "\n,", 1),
            "clicks.csv:2: column \"customer_id\": expected a key, found an empty cell",
        ),
        // A click on a product the table lacks.
        (
            "clicks.csv",
            std::fs::read_to_string(dir.path().join("clicks.csv"))
                .unwrap()
                .replacen(",sku-", ",gone-", 1),
            "clicks.csv:2: column \"sku\": expected a key listed in",
        ),
    ];
    for (file, text, expected) in cases {
        let case = tempfile::tempdir().unwrap();
        for name in ["products.csv", "customers.csv", "clicks.csv"] {
            std::fs::copy(dir.path().join(name), case.path().join(name)).unwrap();
        }
        std::fs::write(case.path().join(file), &text).unwrap();
        let spec_path = case.path().join("shop.toml");
        std::fs::write(&spec_path, spec("csv")).unwrap();
        let out_dir = case.path().join("out");
        let stderr = dssm_fails(&[
            "prepare-data",
            "--spec",
            path(&spec_path),
            "--out",
            path(&out_dir),
        ]);
        assert!(
            stderr.contains(expected),
            "expected {expected:?} in:\n{stderr}"
        );
        assert!(!out_dir.exists());
        let left: Vec<String> = std::fs::read_dir(case.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(left.is_empty(), "temporary folders left: {left:?}");
    }
    // A missing file and a missing column are named.
    let spec_path = dir.path().join("missing.toml");
    let missing_file = spec("csv").replace("customers.csv", "nobody.csv");
    let missing_column = spec("csv").replace("timestamp = \"clicked_at\"", "timestamp = \"when\"");
    for (text, expected) in [
        (missing_file, "nobody.csv"),
        (
            missing_column,
            "clicks.csv: no column \"when\" (columns: customer_id, sku, clicked_at)",
        ),
    ] {
        std::fs::write(&spec_path, text).unwrap();
        let stderr = dssm_fails(&[
            "prepare-data",
            "--spec",
            path(&spec_path),
            "--out",
            path(&dir.path().join("y")),
        ]);
        assert!(
            stderr.contains(expected),
            "expected {expected:?} in:\n{stderr}"
        );
    }
    // A misspelt key in the spec names its line.
    let spec_path = dir.path().join("typo.toml");
    std::fs::write(
        &spec_path,
        spec("csv").replace("display = [\"segment\"]", "dispaly = [\"segment\"]"),
    )
    .unwrap();
    let stderr = dssm_fails(&[
        "prepare-data",
        "--spec",
        path(&spec_path),
        "--out",
        path(&dir.path().join("x")),
    ]);
    assert!(
        stderr.contains("typo.toml:14:") && stderr.contains("dispaly"),
        "{stderr}"
    );
}
