//! The MovieLens kinds are a preset of the dataset-spec machinery: the same files written as CSV
//! and prepared through `prepare_spec` with the preset (`movielens::preset`) give the same dataset
//! folder as `prepare`, for both protocols.

use std::path::{Path, PathBuf};

use dssm_data::{
    Dataset, DatasetKind, PrepareRequest, Protocol, RawData, Source, SpecOutput, Split,
    SyntheticConfig, load_raw, movielens, prepare, prepare_spec,
};

fn write_csv(path: &Path, header: &[&str], rows: impl Iterator<Item = Vec<String>>) {
    let mut writer = csv::Writer::from_path(path).unwrap();
    writer.write_record(header).unwrap();
    for row in rows {
        writer.write_record(&row).unwrap();
    }
    writer.flush().unwrap();
}

/// users.csv, items.csv and ratings.csv with the preset's column names.
fn write_as_csv(raw: &RawData, dir: &Path) {
    write_csv(
        &dir.join("users.csv"),
        &["user_id", "gender", "age", "occupation", "zip_code"],
        raw.users.iter().map(|u| {
            vec![
                u.user_id.to_string(),
                u.gender.clone(),
                u.age.to_string(),
                u.occupation.to_string(),
                u.zip_code.clone(),
            ]
        }),
    );
    write_csv(
        &dir.join("items.csv"),
        &["movie_id", "title", "year", "genres"],
        raw.movies.iter().map(|m| {
            vec![
                m.movie_id.to_string(),
                m.title.clone(),
                m.year.map_or_else(String::new, |y| y.to_string()),
                m.genres.join("|"),
            ]
        }),
    );
    write_csv(
        &dir.join("ratings.csv"),
        &["user_id", "movie_id", "rating", "timestamp"],
        raw.ratings.iter().map(|r| {
            vec![
                r.user_id.to_string(),
                r.movie_id.to_string(),
                r.rating.to_string(),
                r.timestamp.map_or_else(String::new, |t| t.to_string()),
            ]
        }),
    );
}

fn assert_same_folder(a: &Path, b: &Path) {
    let (a, b) = (Dataset::open(a).unwrap(), Dataset::open(b).unwrap());
    assert_eq!(a.schema, b.schema);
    assert_eq!(a.vocabularies, b.vocabularies);
    assert_eq!(a.users, b.users);
    assert_eq!(a.items, b.items);
    for split in Split::ALL {
        assert_eq!(
            a.interactions(split).unwrap(),
            b.interactions(split).unwrap(),
            "{split}"
        );
    }
    assert_eq!(a.manifest.rows, b.manifest.rows);
    assert_eq!(a.manifest.positives, b.manifest.positives);
    assert_eq!(a.manifest.protocol, b.manifest.protocol);
}

#[test]
fn the_movielens_preset_over_csv_copies_gives_the_same_dataset_folder() {
    let dir = tempfile::tempdir().unwrap();
    let files = dir.path().join("ml");
    std::fs::create_dir(&files).unwrap();
    let config = SyntheticConfig {
        users: 150,
        items: 120,
        ratings: 6_000,
        no_timestamp_share: 0.1,
        ..SyntheticConfig::default()
    };
    dssm_data::synthetic::generate(&config)
        .unwrap()
        .write_to(&files)
        .unwrap();
    let raw = load_raw(&Source::Folder(files.clone()), DatasetKind::Ml1m, &|_| {}).unwrap();
    assert!(
        raw.movies
            .iter()
            .any(|m| m.year.is_none() || m.title.contains(','))
    );
    let csv_dir = dir.path().join("csv");
    std::fs::create_dir(&csv_dir).unwrap();
    write_as_csv(&raw, &csv_dir);

    for protocol in [Protocol::Seed, Protocol::LeaveLastOut] {
        let out = dir.path().join(format!("preset-{protocol}"));
        let mut request =
            PrepareRequest::new(Source::Folder(files.clone()), DatasetKind::Ml1m, &out);
        request.protocol = protocol;
        request.seed = 9;
        prepare(&request, &|_| {}).unwrap();

        // The preset, pointed at the CSV copies (paths relative to the spec's folder).
        let mut spec = movielens::preset(&request);
        let spec_path = csv_dir.join("ml.toml");
        std::fs::write(&spec_path, spec.to_toml_string()).unwrap();
        spec = dssm_data::DatasetSpec::load(&spec_path).unwrap();
        assert_eq!(spec.interactions.path, csv_dir.join("ratings.csv"));
        let from_spec = dir.path().join(format!("spec-{protocol}"));
        let output = SpecOutput {
            out_dir: from_spec.clone(),
            overwrite: false,
            command: String::new(),
        };
        prepare_spec(&spec, &output, &|_| {}).unwrap();
        assert_same_folder(&out, &from_spec);
    }
}

#[test]
fn a_shuffled_copy_of_the_files_gives_the_same_tables() {
    // Rows are put in key order, so the order of the users and items files does not matter.
    let dir = tempfile::tempdir().unwrap();
    let raw = {
        let files = dir.path().join("ml");
        std::fs::create_dir(&files).unwrap();
        let config = SyntheticConfig {
            users: 40,
            items: 30,
            ratings: 500,
            ..SyntheticConfig::default()
        };
        dssm_data::synthetic::generate(&config)
            .unwrap()
            .write_to(&files)
            .unwrap();
        load_raw(&Source::Folder(files), DatasetKind::Ml1m, &|_| {}).unwrap()
    };
    let mut reversed = raw.clone();
    reversed.users.reverse();
    reversed.movies.reverse();
    let prepared = |raw: &RawData, name: &str| -> PathBuf {
        let csv_dir = dir.path().join(format!("csv-{name}"));
        std::fs::create_dir(&csv_dir).unwrap();
        write_as_csv(raw, &csv_dir);
        let request = PrepareRequest::new(Source::Folder(csv_dir.clone()), DatasetKind::Ml1m, "x");
        let spec_path = csv_dir.join("ml.toml");
        std::fs::write(&spec_path, movielens::preset(&request).to_toml_string()).unwrap();
        let spec = dssm_data::DatasetSpec::load(&spec_path).unwrap();
        let out = dir.path().join(format!("out-{name}"));
        let output = SpecOutput {
            out_dir: out.clone(),
            overwrite: false,
            command: String::new(),
        };
        prepare_spec(&spec, &output, &|_| {}).unwrap();
        out
    };
    let (a, b) = (prepared(&raw, "a"), prepared(&reversed, "b"));
    assert_same_folder(&a, &b);
    // Rows ascend with ids: the trainer's tie rule (lower item row) and dssm-retrieval's (lower
    // id, which the CLI's recommend and evaluate-retrieval use) are the same rule.
    let ds = Dataset::open(&b).unwrap();
    assert!(ds.items.movie_id.windows(2).all(|w| w[0] < w[1]));
    assert!(ds.users.user_id.windows(2).all(|w| w[0] < w[1]));
}
