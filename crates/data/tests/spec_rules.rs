//! Dataset-spec rules that the worked example does not reach: the `drop` policy for unknown keys,
//! sides without a table, a label column, standardised numbers fitted on train only, and a seed
//! split that depends on nothing but the seed.

use std::path::Path;

use dssm_data::{Dataset, DatasetSpec, FeatureValues, LabelRule, SpecOutput, Split, prepare_spec};

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

fn prepared(dir: &Path, spec: &str, out: &str) -> Result<Dataset, dssm_data::DataError> {
    write(dir, "spec.toml", spec);
    let spec = DatasetSpec::load(&dir.join("spec.toml"))?;
    let output = SpecOutput {
        out_dir: dir.join(out),
        overwrite: false,
        command: String::new(),
    };
    prepare_spec(&spec, &output, &|_| {})?;
    Ok(Dataset::open(&dir.join(out)).unwrap())
}

/// 30 users x 6 items, `liked` = 1 on even items; user u3 and item i9 are not in the tables.
fn log() -> String {
    let mut log = String::from("user,item,t,liked\n");
    for u in 0..30 {
        for i in 0..6 {
            log += &format!("u{u},i{i},{},{}\n", 100 * u + i, u8::from(i % 2 == 0));
        }
    }
    log + "u1,i9,5000,1\n"
}

fn items_table() -> String {
    let mut items = String::from("item,price\n");
    for i in 0..6 {
        items += &format!("i{i},{}\n", 10 * (i + 1));
    }
    items
}

const SPEC: &str = r#"
name = "rules"
[interactions]
path = "log.csv"
user = "user"
item = "item"
timestamp = "t"
[label]
kind = "column"
column = "liked"
[split]
kind = "seed"
seed = 3
[[users.features]]
name = "user"
kind = "categorical"
[items]
path = "items.csv"
MISSING
[[items.features]]
name = "item"
kind = "categorical"
[[items.features]]
name = "price"
kind = "numeric"
encoding = "standardize"
"#;

#[test]
fn unknown_items_are_refused_or_dropped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "log.csv", &log());
    write(dir.path(), "items.csv", &items_table());
    let err = prepared(dir.path(), &SPEC.replace("MISSING", ""), "a").unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("log.csv:182: column \"item\""),
        "{message}"
    );
    assert!(message.contains("\"i9\""), "{message}");
    assert!(!dir.path().join("a").exists());

    let ds = prepared(
        dir.path(),
        &SPEC.replace("MISSING", "missing = \"drop\""),
        "b",
    )
    .unwrap();
    assert_eq!(ds.manifest.dropped_interactions, 1);
    assert_eq!(ds.manifest.rows.total(), 180);
    // No users table: the users are the log's keys, in key order ("u0" < "u1" < "u10" ...).
    assert_eq!(ds.users.key.len(), 30);
    assert_eq!(&ds.users.key[..3], ["u0", "u1", "u10"]);
    assert_eq!(ds.users.user_id[..3], [1, 2, 3]);
    // Text keys too: rows ascend with ids, so "lower row" and "lower id" are one tie rule.
    assert!(ds.items.movie_id.windows(2).all(|w| w[0] < w[1]));
    assert!(ds.users.user_id.windows(2).all(|w| w[0] < w[1]));
    // The label column decides positives: half the rows.
    assert_eq!(
        ds.schema.label,
        LabelRule::Column {
            column: "liked".into()
        }
    );
    assert_eq!(ds.manifest.positives.total(), 90);
    for split in Split::ALL {
        let rows = ds.interactions(split).unwrap();
        for (i, &item) in rows.item_row.iter().enumerate() {
            let even = ds.items.key[item as usize]
                .trim_start_matches('i')
                .parse::<u32>()
                .unwrap()
                % 2
                == 0;
            assert_eq!(rows.label[i], u8::from(even));
        }
    }
}

#[test]
fn standardisation_is_fitted_on_items_with_train_interactions_only() {
    let dir = tempfile::tempdir().unwrap();
    // Every user clicks i0..i4, then i0 and i1 again (validation and test); only u0 clicks i5,
    // last, so i5 is a test item with no train interaction.
    let mut log = String::from("user,item,t,liked\n");
    for u in 0..20 {
        for (k, i) in [0, 1, 2, 3, 4, 0, 1].iter().enumerate() {
            log += &format!("u{u},i{i},{},1\n", 10 * u + k);
        }
    }
    log += "u0,i5,99999,1\n";
    write(dir.path(), "log.csv", &log);
    write(dir.path(), "items.csv", &items_table());
    let spec = SPEC
        .replace("MISSING", "")
        .replace("kind = \"seed\"\nseed = 3", "kind = \"leave-last-out\"");
    let ds = prepared(dir.path(), &spec, "c").unwrap();
    assert_eq!(ds.items.train_count[5], 0);
    let price = ds.vocabularies.get("price").unwrap();
    let [mean, std] = price.standardize.unwrap();
    // Fitted on i0..i4 (10..50); i5 (60) only in test.
    assert!((mean - 30.0).abs() < 1e-9, "{mean}");
    assert!((std - 200f64.sqrt()).abs() < 1e-9, "{std}");
    let FeatureValues::Dense { dim: 1, values } = &ds.items.features.get("price").unwrap().values
    else {
        panic!("price is dense");
    };
    assert!((values[5] - ((60.0 - mean) / std) as f32).abs() < 1e-6);
}

#[test]
fn the_seed_split_depends_on_the_seed_only() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "log.csv", &log());
    write(dir.path(), "items.csv", &items_table());
    let spec = SPEC.replace("MISSING", "missing = \"drop\"");
    let a = prepared(dir.path(), &spec, "s1").unwrap();
    let b = prepared(dir.path(), &spec, "s2").unwrap();
    let c = prepared(dir.path(), &spec.replace("seed = 3", "seed = 4"), "s3").unwrap();
    let lines = |ds: &Dataset| ds.interactions(Split::Test).unwrap().line;
    assert_eq!(lines(&a), lines(&b));
    assert_ne!(lines(&a), lines(&c));
    assert_eq!(a.manifest.rows.test, 36, "ceil(20% of 180)");
}
