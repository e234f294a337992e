//! The MovieLens kinds as a preset of the dataset-spec machinery: the parsed files become source
//! tables, and [`preset`] is the spec that encodes them (the reference's features). The same
//! spec over CSV copies of the files (`users.csv`, `items.csv`, `ratings.csv` with these column
//! names) gives the same dataset folder.

use std::path::PathBuf;

use crate::encode::MinFrequency;
use crate::log::{InteractionLog, NO_TIME};
use crate::prepare::{Inputs, PrepareRequest, SideInput};
use crate::raw::RawData;
use crate::spec::{
    DatasetSpec, EntitySpec, FeatureDecl, FileFormat, InteractionsSpec, LabelRule, MissingPolicy,
    SplitSpec, Statistic,
};
use crate::split::Protocol;
use crate::table::{Keys, SourceTable, Values};

fn categorical(name: &str, column: Option<&str>, prefix: Option<usize>) -> FeatureDecl {
    FeatureDecl::Categorical {
        name: name.into(),
        column: column.map(str::to_string),
        prefix,
        min_count: None,
        min_share: None,
    }
}

fn statistic(name: &str, statistic: Statistic, buckets: usize) -> FeatureDecl {
    FeatureDecl::TrainStatistic {
        name: name.into(),
        statistic,
        buckets: Some(buckets),
    }
}

fn entity(path: &str, key: &str, display: &[&str], features: Vec<FeatureDecl>) -> EntitySpec {
    EntitySpec {
        path: Some(PathBuf::from(path)),
        format: Some(FileFormat::Csv),
        delimiter: None,
        key: Some(key.into()),
        missing: MissingPolicy::Error,
        display: display.iter().map(|d| d.to_string()).collect(),
        features,
    }
}

/// The spec the MovieLens kinds are prepared with: user id, gender, age, occupation and zip-code
/// prefix; movie id, genres, year and the per-movie train rating mean and count buckets; label =
/// rating above the threshold; the request's protocol, seed and rare-value rule.
///
/// ```
/// use dssm_data::{movielens, DatasetKind, PrepareRequest, Source};
/// let request = PrepareRequest::new(Source::Folder("ml-1m".into()), DatasetKind::Ml1m, "out");
/// let spec = movielens::preset(&request);
/// let names: Vec<&str> = spec.items.features.iter().map(|f| f.name()).collect();
/// assert_eq!(names, ["movie_id", "genres", "year", "rating_mean_bucket", "rating_count_bucket"]);
/// ```
pub fn preset(request: &PrepareRequest) -> DatasetSpec {
    let (min_count, min_share) = match request.min_frequency {
        MinFrequency::Count(c) => (Some(c), None),
        MinFrequency::Share(s) => (None, Some(s)),
    };
    let buckets = request.rating_buckets;
    DatasetSpec {
        name: request.kind.name().to_string(),
        min_count,
        min_share,
        interactions: InteractionsSpec {
            path: PathBuf::from("ratings.csv"),
            format: Some(FileFormat::Csv),
            delimiter: None,
            user: "user_id".into(),
            item: "movie_id".into(),
            timestamp: Some("timestamp".into()),
            rating: Some("rating".into()),
        },
        label: LabelRule::RatingAbove {
            threshold: f64::from(request.label_threshold),
        },
        split: match request.protocol {
            Protocol::Seed => SplitSpec::Seed { seed: request.seed },
            _ => SplitSpec::LeaveLastOut,
        },
        users: entity(
            "users.csv",
            "user_id",
            &["gender", "age", "occupation", "zip_code"],
            vec![
                categorical("user_id", None, None),
                categorical("gender", None, None),
                categorical("age", None, None),
                categorical("occupation", None, None),
                categorical("zip_prefix", Some("zip_code"), Some(2)),
            ],
        ),
        items: entity(
            "items.csv",
            "movie_id",
            &["title", "year", "genres"],
            vec![
                categorical("movie_id", None, None),
                FeatureDecl::MultiCategorical {
                    name: "genres".into(),
                    column: None,
                    delimiter: Some('|'),
                    max_len: None,
                    min_count: None,
                    min_share: None,
                },
                categorical("year", None, None),
                statistic("rating_mean_bucket", Statistic::RatingMean, buckets),
                statistic("rating_count_bucket", Statistic::Count, buckets),
            ],
        ),
        item_statistics: request.item_statistics,
    }
}

fn ints(values: impl Iterator<Item = Option<i64>>) -> Values {
    Values::Int(values.collect())
}

fn texts<'a>(values: impl Iterator<Item = &'a str>) -> Values {
    Values::Text(values.map(|s| Some(s.to_string())).collect())
}

/// The parsed files as source tables and an interaction log (label = rating > `threshold`).
pub(crate) fn inputs(raw: RawData, threshold: f64) -> Inputs {
    let file = |i: usize| PathBuf::from(raw.sources.get(i).map_or("", |s| s.name.as_str()));
    let users = SourceTable::in_memory(
        file(0),
        vec![
            (
                "user_id".into(),
                ints(raw.users.iter().map(|u| Some(i64::from(u.user_id)))),
            ),
            (
                "gender".into(),
                texts(raw.users.iter().map(|u| u.gender.as_str())),
            ),
            (
                "age".into(),
                ints(raw.users.iter().map(|u| Some(i64::from(u.age)))),
            ),
            (
                "occupation".into(),
                ints(raw.users.iter().map(|u| Some(i64::from(u.occupation)))),
            ),
            (
                "zip_code".into(),
                texts(raw.users.iter().map(|u| u.zip_code.as_str())),
            ),
        ],
    );
    let items = SourceTable::in_memory(
        file(1),
        vec![
            (
                "movie_id".into(),
                ints(raw.movies.iter().map(|m| Some(i64::from(m.movie_id)))),
            ),
            (
                "title".into(),
                texts(raw.movies.iter().map(|m| m.title.as_str())),
            ),
            (
                "year".into(),
                ints(raw.movies.iter().map(|m| m.year.map(i64::from))),
            ),
            (
                "genres".into(),
                Values::TextList(raw.movies.iter().map(|m| Some(m.genres.clone())).collect()),
            ),
        ],
    );
    let mut log = InteractionLog::default();
    for r in &raw.ratings {
        log.user_row.push(r.user_row);
        log.item_row.push(r.item_row);
        log.timestamp.push(r.timestamp.unwrap_or(NO_TIME));
        log.rating.push(f32::from(r.rating));
        log.label.push(u8::from(f64::from(r.rating) > threshold));
        log.line.push(r.line);
    }
    let users = keyed(
        users,
        raw.users.iter().map(|u| u.user_id),
        &mut log.user_row,
    );
    let items = keyed(
        items,
        raw.movies.iter().map(|m| m.movie_id),
        &mut log.item_row,
    );
    Inputs {
        users,
        items,
        log,
        sources: raw.sources,
    }
}

/// Puts a parsed table in key order, renumbering the log's rows to match.
fn keyed(
    mut table: SourceTable,
    ids: impl Iterator<Item = u32>,
    log_rows: &mut [u32],
) -> SideInput {
    let (keys, order) = Keys::canonical(ids.map(|id| id.to_string()).collect());
    table.permute(&order);
    InteractionLog::reorder(log_rows, &order);
    SideInput { keys, table }
}
