//! Leak-freeness through [`prepare`], the public entry point: two MovieLens folders that differ only
//! in their validation and test rows (other ratings, a user seen only in test with attributes no
//! one else has, a movie rated only in test) give the same vocabularies, schema, train rows,
//! encoded feature columns and train counts. The `--leaky-item-stats` variant of the same pair
//! differs, which shows the comparison can see a leak.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use dssm_data::{
    Dataset, DatasetKind, FeatureTable, FeatureValues, ItemStatistics, PrepareRequest, Protocol,
    Source, Split, SyntheticConfig, dataset::files, synthetic,
};

/// A user id and a movie id no synthetic file uses.
const NEW_USER: u32 = 900_001;
const NEW_MOVIE: u32 = 900_002;

fn prepare(source: &Path, out: PathBuf, statistics: ItemStatistics) -> Dataset {
    let mut request = PrepareRequest::new(
        Source::Folder(source.to_path_buf()),
        DatasetKind::Ml1m,
        &out,
    );
    request.protocol = Protocol::Seed;
    request.seed = 5;
    request.item_statistics = statistics;
    dssm_data::prepare(&request, &|_| {}).expect("the folder prepares");
    Dataset::open(&out).expect("the prepared folder opens")
}

/// The first `rows` rows of every column of `table`.
fn first_rows(table: &FeatureTable, rows: usize) -> Vec<(String, Vec<u32>)> {
    table
        .columns
        .iter()
        .map(|c| {
            let values = match &c.values {
                FeatureValues::Categorical(v) => v[..rows].to_vec(),
                FeatureValues::Multi { max_len, values } => values[..rows * max_len].to_vec(),
                // A kind added later (MovieLens has none of them).
                #[allow(unreachable_patterns)]
                other => panic!(
                    "{}: a feature kind this test does not read: {other:?}",
                    c.name
                ),
            };
            (c.name.clone(), values)
        })
        .collect()
}

/// Row `row` of column `name`, when the table has that feature.
fn value(table: &FeatureTable, name: &str, row: usize) -> Option<Vec<u32>> {
    table.get(name).map(|c| match &c.values {
        FeatureValues::Categorical(v) => vec![v[row]],
        FeatureValues::Multi { max_len, values } => values[row * max_len..][..*max_len].to_vec(),
        #[allow(unreachable_patterns)]
        other => panic!("{name}: a feature kind this test does not read: {other:?}"),
    })
}

/// Source B: source A with every validation and test rating changed (r -> 6 - r, or 4 for a 3),
/// one test row given to a new user and another to a new movie, both added to the files.
fn write_variant(a: &Path, b: &Path, held_out: &HashSet<u32>, test: &[u32]) {
    std::fs::create_dir_all(b).unwrap();
    let ratings = std::fs::read_to_string(a.join("ratings.dat")).unwrap();
    let (to_new_user, to_new_movie) = (test[0], test[1]);
    let mut out = String::new();
    for (i, line) in ratings.lines().enumerate() {
        let number = i as u32 + 1;
        let mut fields: Vec<String> = line.split("::").map(str::to_string).collect();
        if held_out.contains(&number) {
            let rating: u8 = fields[2].parse().unwrap();
            fields[2] = if rating == 3 { 4 } else { 6 - rating }.to_string();
        }
        if number == to_new_user {
            fields[0] = NEW_USER.to_string();
        }
        if number == to_new_movie {
            fields[1] = NEW_MOVIE.to_string();
        }
        out.push_str(&fields.join("::"));
        out.push('\n');
    }
    std::fs::write(b.join("ratings.dat"), out).unwrap();
    let mut users = std::fs::read_to_string(a.join("users.dat")).unwrap();
    users.push_str(&format!("{NEW_USER}::F::56::20::00000-test-only\n"));
    std::fs::write(b.join("users.dat"), users).unwrap();
    let mut movies = std::fs::read(a.join("movies.dat")).unwrap();
    movies.extend_from_slice(
        format!("{NEW_MOVIE}::Seen Only In Test (1999)::Film-Noir\n").as_bytes(),
    );
    std::fs::write(b.join("movies.dat"), movies).unwrap();
}

#[test]
fn val_and_test_rows_change_nothing_fitted_on_train() {
    let dir = tempfile::tempdir().unwrap();
    let (source_a, source_b) = (dir.path().join("a"), dir.path().join("b"));
    let config = SyntheticConfig {
        users: 200,
        items: 150,
        ratings: 6_000,
        ..SyntheticConfig::default()
    };
    synthetic::generate(&config)
        .unwrap()
        .write_to(&source_a)
        .unwrap();
    let a = prepare(
        &source_a,
        dir.path().join("prepared-a"),
        ItemStatistics::Train,
    );
    let lines = |dataset: &Dataset, split| dataset.interactions(split).unwrap().line;
    let test = lines(&a, Split::Test);
    let held_out: HashSet<u32> = test.iter().chain(&lines(&a, Split::Val)).copied().collect();
    assert!(test.len() > 100 && held_out.len() > test.len());
    write_variant(&source_a, &source_b, &held_out, &test);
    let b = prepare(
        &source_b,
        dir.path().join("prepared-b"),
        ItemStatistics::Train,
    );

    // The sources really differ where they may: in val and test.
    for split in [Split::Val, Split::Test] {
        let (x, y) = (
            a.interactions(split).unwrap(),
            b.interactions(split).unwrap(),
        );
        assert_eq!(
            x.line, y.line,
            "{split}: the split depends on the row count only"
        );
        assert_ne!(x.rating, y.rating, "{split}");
    }
    // Everything fitted on train is the same.
    for name in [files::VOCABULARIES, files::SCHEMA] {
        let read = |d: &Dataset| std::fs::read(d.dir.join(name)).unwrap();
        assert!(read(&a) == read(&b), "{name} differs");
    }
    assert_eq!(
        a.interactions(Split::Train).unwrap(),
        b.interactions(Split::Train).unwrap()
    );
    assert_eq!(a.manifest.rows, b.manifest.rows);
    for d in [&a, &b] {
        assert_eq!(d.manifest.item_statistics, ItemStatistics::Train);
    }
    let (users, items) = (a.users.user_id.len(), a.items.movie_id.len());
    assert_eq!(b.users.user_id[..users], a.users.user_id[..]);
    assert_eq!(b.users.user_id[users..], [NEW_USER]);
    assert_eq!(b.items.movie_id[..items], a.items.movie_id[..]);
    assert_eq!(b.items.movie_id[items..], [NEW_MOVIE]);
    assert_eq!(
        first_rows(&b.users.features, users),
        first_rows(&a.users.features, users)
    );
    assert_eq!(
        first_rows(&b.items.features, items),
        first_rows(&a.items.features, items)
    );
    assert_eq!(b.items.train_count[..items], a.items.train_count[..]);
    // The test-only user and movie: unknown ids, no train count, a zip code no one has in train.
    assert_eq!(b.items.train_count[items], 0);
    assert_eq!(value(&b.items.features, "movie_id", items), Some(vec![0]));
    assert_eq!(value(&b.users.features, "user_id", users), Some(vec![0]));
    if let Some(zip) = value(&b.users.features, "zip_code", users) {
        assert_eq!(zip, vec![0]);
    }
    assert!(
        b.vocabularies
            .encode("zip_code", "00000-test-only")
            .unwrap_or(0)
            == 0
    );

    // The leaky variant of the same pair fits the movie statistics on every row: it sees the
    // changed test ratings.
    let leaky_a = prepare(
        &source_a,
        dir.path().join("leaky-a"),
        ItemStatistics::AllRows,
    );
    let leaky_b = prepare(
        &source_b,
        dir.path().join("leaky-b"),
        ItemStatistics::AllRows,
    );
    assert_eq!(leaky_a.manifest.item_statistics, ItemStatistics::AllRows);
    assert_ne!(
        first_rows(&leaky_b.items.features, items),
        first_rows(&leaky_a.items.features, items),
        "the leaky statistics did not see the test ratings"
    );
}
