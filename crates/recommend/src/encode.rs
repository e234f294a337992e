//! From a user's description to the user tower's input: feature values through the train-fitted
//! vocabularies, recent items through the history encoding of `dssm-trainer`.
//!
//! Recent items come oldest first, newest last (the order of `Query::recent_items`). The history
//! features (`history`, `recent`: `features.history_len`, `features.recent_len`) hold the newest
//! `max_len` of them as item-table rows + 1, newest first, padded with 0: `recent` is the first
//! `recent_len` of `history`. This mirrors `dssm-trainer`'s private `history` module (its public
//! API does not expose the encoding), and `tests/` check the two agree on known users.

use dssm_data::{FeatureValues, UserTable, Vocabularies, Vocabulary};
use dssm_model::{FeatureKind, FeatureSpec, HostColumn};

/// The model feature of the user's last items (mean-pooled), as the trainer names it.
pub const HISTORY_FEATURE: &str = "history";
/// The model feature of the user's most recent items, as the trainer names it.
pub const RECENT_FEATURE: &str = "recent";

/// One column of a one-row user batch.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum UserColumn {
    Ids(Vec<u32>),
    Dense(Vec<f32>),
}

impl UserColumn {
    pub(crate) fn host(&self) -> HostColumn<'_> {
        match self {
            UserColumn::Ids(ids) => HostColumn::Ids(ids),
            UserColumn::Dense(values) => HostColumn::Dense(values),
        }
    }
}

/// A new user's encoded features, plus notes on values the model cannot use.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct EncodedUser {
    /// One column per user feature of the model, in config order.
    pub(crate) columns: Vec<UserColumn>,
    pub(crate) notes: Vec<String>,
}

/// True for the features filled from the user's recent items.
pub(crate) fn is_history(spec: &FeatureSpec) -> bool {
    spec.name == HISTORY_FEATURE || spec.name == RECENT_FEATURE
}

/// Encodes a new user for the model's user features (`specs`, in config order): each given
/// `(name, value)` names a feature or its source column (e.g. `zip_code` for `zip_prefix`) and is
/// encoded through the train-fitted vocabulary (buckets, hash, prefix, standardisation); the
/// history features come from `recent` (item rows + 1, oldest first); every other feature is
/// the unknown index 0 (all-padding for a multi-valued feature, zeros for a dense one).
pub(crate) fn encode_new_user(
    specs: &[FeatureSpec],
    given: &[(String, String)],
    recent: &[u32],
    vocabularies: &Vocabularies,
) -> EncodedUser {
    let mut notes = Vec::new();
    let mut used = vec![false; given.len()];
    let columns = specs
        .iter()
        .map(|spec| {
            if is_history(spec) {
                return history_column(spec, recent);
            }
            let vocabulary = vocabularies.get(&spec.name).ok();
            let source = vocabulary.and_then(|v| v.column.as_deref());
            let found = given
                .iter()
                .position(|(name, _)| *name == spec.name || Some(name.as_str()) == source);
            let Some(i) = found else {
                return unknown_column(spec);
            };
            used[i] = true;
            let raw = &given[i].1;
            let Some(vocabulary) = vocabulary else {
                notes.push(format!(
                    "the dataset has no vocabulary for {}; it is encoded as unknown",
                    spec.name
                ));
                return unknown_column(spec);
            };
            encode_given(spec, vocabulary, raw, &mut notes)
        })
        .collect();
    for ((name, raw), used) in given.iter().zip(used) {
        if !used {
            notes.push(format!(
                "the model does not use {name}; {name} {raw} has no effect"
            ));
        }
    }
    EncodedUser { columns, notes }
}

/// A known user's stored features (users-table row `row`), with the history features from
/// `recent` (item rows + 1, oldest first).
pub(crate) fn encode_known_user(
    specs: &[FeatureSpec],
    users: &UserTable,
    row: usize,
    recent: &[u32],
) -> Result<Vec<UserColumn>, String> {
    specs
        .iter()
        .map(|spec| {
            if is_history(spec) {
                return Ok(history_column(spec, recent));
            }
            let column = users
                .features
                .get(&spec.name)
                .ok_or_else(|| format!("the users table has no column feature.{}", spec.name))?;
            Ok(match &column.values {
                FeatureValues::Categorical(values) => UserColumn::Ids(vec![values[row]]),
                FeatureValues::Multi { max_len, values } => {
                    UserColumn::Ids(values[row * max_len..(row + 1) * max_len].to_vec())
                }
                FeatureValues::Dense { dim, values } => {
                    UserColumn::Dense(values[row * dim..(row + 1) * dim].to_vec())
                }
            })
        })
        .collect()
}

/// The newest `max_len` of `recent` (history ids, oldest first), newest first as the trainer's
/// history features hold them, padded with 0.
fn history_column(spec: &FeatureSpec, recent: &[u32]) -> UserColumn {
    let FeatureKind::MultiCategorical { max_len, .. } = spec.kind else {
        return unknown_column(spec);
    };
    let mut ids: Vec<u32> = recent.iter().rev().copied().take(max_len).collect();
    ids.resize(max_len, 0);
    UserColumn::Ids(ids)
}

fn unknown_column(spec: &FeatureSpec) -> UserColumn {
    match spec.kind {
        FeatureKind::Categorical { .. } => UserColumn::Ids(vec![0]),
        FeatureKind::MultiCategorical { max_len, .. } => UserColumn::Ids(vec![0; max_len]),
        FeatureKind::Dense { dim } => UserColumn::Dense(vec![0.0; dim]),
    }
}

/// One given value through its feature's vocabulary.
fn encode_given(
    spec: &FeatureSpec,
    vocabulary: &Vocabulary,
    raw: &str,
    notes: &mut Vec<String>,
) -> UserColumn {
    match spec.kind {
        FeatureKind::Dense { dim } => encode_dense(spec, dim, vocabulary, raw, notes),
        FeatureKind::Categorical { .. } => {
            UserColumn::Ids(vec![encode_value(spec, vocabulary, raw, notes)])
        }
        FeatureKind::MultiCategorical { max_len, .. } => {
            let mut ids: Vec<u32> = raw
                .split('|')
                .map(|value| encode_value(spec, vocabulary, value, notes))
                .filter(|&id| id != 0)
                .collect();
            ids.resize(max_len, 0);
            UserColumn::Ids(ids)
        }
    }
}

fn encode_dense(
    spec: &FeatureSpec,
    dim: usize,
    vocabulary: &Vocabulary,
    raw: &str,
    notes: &mut Vec<String>,
) -> UserColumn {
    let parsed: Vec<f32> = raw
        .trim_matches(|c| c == '[' || c == ']')
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse::<f64>().ok())
        .map(|x| match vocabulary.standardize {
            Some([mean, std]) => ((x - mean) / std) as f32,
            None => x as f32,
        })
        .collect();
    if parsed.len() == dim {
        return UserColumn::Dense(parsed);
    }
    notes.push(format!(
        "{} needs {dim} number(s), found {raw:?}; it is encoded as zeros",
        spec.name
    ));
    UserColumn::Dense(vec![0.0; dim])
}

/// The index of one categorical value, 0 (with a note) when train never saw it.
fn encode_value(
    spec: &FeatureSpec,
    vocabulary: &Vocabulary,
    value: &str,
    notes: &mut Vec<String>,
) -> u32 {
    let id = vocabulary.encode(value);
    if id == 0 {
        let known = vocabulary.values.get(1..).unwrap_or_default();
        let known = if known.is_empty() || known.len() > 30 {
            format!("{} values", vocabulary.size().saturating_sub(1))
        } else {
            known.join(", ")
        };
        notes.push(format!(
            "{} {value} is not in the train vocabulary (known: {known}); it is encoded as unknown",
            spec.name
        ));
    }
    id
}

/// The names a new user's features may be given by: the model's user features (history ones
/// excepted) and their source columns (`zip_code` for `zip_prefix`).
pub(crate) fn accepted_names(specs: &[FeatureSpec], vocabularies: &Vocabularies) -> Vec<String> {
    let mut names = Vec::new();
    for spec in specs.iter().filter(|s| !is_history(s)) {
        names.push(spec.name.clone());
        if let Some(column) = vocabularies
            .get(&spec.name)
            .ok()
            .and_then(|v| v.column.clone())
            && column != spec.name
        {
            names.push(column);
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use dssm_data::MinFrequency;
    use dssm_model::{Pooling, Side};

    fn tiny_vocabularies() -> Vocabularies {
        let vocabulary = |name: &str, values: &[&str]| {
            let mut all = vec![dssm_data::encode::UNKNOWN.to_string()];
            all.extend(values.iter().map(|v| v.to_string()));
            Vocabulary::new(
                name,
                dssm_data::Side::User,
                dssm_data::FeatureKind::Categorical,
                all,
            )
        };
        let mut zip = vocabulary("zip_prefix", &["12", "48"]);
        zip.column = Some("zip_code".into());
        zip.prefix = Some(2);
        Vocabularies {
            min_frequency: MinFrequency::Count(1),
            train_rows: 2,
            features: vec![
                vocabulary("user_id", &["1", "2"]),
                vocabulary("gender", &["F", "M"]),
                vocabulary("age", &["25", "35"]),
                vocabulary("occupation", &["4", "7"]),
                zip,
            ],
        }
    }

    fn given(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    fn specs() -> Vec<FeatureSpec> {
        vec![
            FeatureSpec::categorical("user_id", Side::User, 3),
            FeatureSpec::categorical("gender", Side::User, 3),
            FeatureSpec::categorical("age", Side::User, 3),
            FeatureSpec::categorical("occupation", Side::User, 3),
            FeatureSpec::categorical("zip_prefix", Side::User, 2),
        ]
    }

    #[test]
    fn a_new_user_is_encoded_with_the_train_vocabularies_and_unknown_elsewhere() {
        let vocabularies = tiny_vocabularies();
        let specs = specs();
        let user = given(&[("gender", "M"), ("age", "35"), ("occupation", "4")]);
        let encoded = encode_new_user(&specs, &user, &[], &vocabularies);
        let expected = [
            0,
            vocabularies.encode("gender", "M").unwrap(),
            vocabularies.encode("age", "35").unwrap(),
            vocabularies.encode("occupation", "4").unwrap(),
            0,
        ];
        assert!(expected[1..4].iter().all(|&id| id > 0), "{expected:?}");
        let ids: Vec<u32> = encoded
            .columns
            .iter()
            .map(|c| match c {
                UserColumn::Ids(ids) => ids[0],
                UserColumn::Dense(_) => panic!("no dense features here"),
            })
            .collect();
        assert_eq!(ids, expected);
        assert!(encoded.notes.is_empty(), "{:?}", encoded.notes);

        // An age outside the vocabulary is unknown, with a note; features the model lacks are noted.
        let user = given(&[("gender", "F"), ("age", "30"), ("occupation", "7")]);
        let encoded = encode_new_user(&specs[..3], &user, &[], &vocabularies);
        assert_eq!(encoded.columns[2], UserColumn::Ids(vec![0]));
        assert!(
            encoded.notes[0].starts_with("age 30 is not in the train vocabulary (known: "),
            "{:?}",
            encoded.notes
        );
        assert!(encoded.notes[1].contains("does not use occupation"));
    }

    #[test]
    fn a_source_column_reaches_its_feature_through_the_prefix() {
        let vocabularies = tiny_vocabularies();
        let specs = vec![FeatureSpec::categorical("zip_prefix", Side::User, 3)];
        let encoded = encode_new_user(&specs, &given(&[("zip_code", "48067")]), &[], &vocabularies);
        assert_eq!(encoded.columns, [UserColumn::Ids(vec![2])]);
        assert!(encoded.notes.is_empty(), "{:?}", encoded.notes);
        assert_eq!(
            accepted_names(&specs, &vocabularies),
            ["zip_prefix", "zip_code"]
        );
    }

    #[test]
    fn the_newest_recent_items_fill_the_history_features_newest_first() {
        let multi = |name: &str, max_len| FeatureSpec {
            name: name.into(),
            side: Side::User,
            kind: FeatureKind::MultiCategorical {
                vocab_size: 10,
                max_len,
                pooling: Pooling::Mean,
            },
            embedding_dim: None,
        };
        let specs = vec![
            FeatureSpec::categorical("gender", Side::User, 3),
            multi(HISTORY_FEATURE, 3),
            multi(RECENT_FEATURE, 1),
        ];
        // Given oldest first: 4 is the oldest, 7 the newest.
        let encoded = encode_new_user(&specs, &[], &[4, 9, 2, 7], &tiny_vocabularies());
        assert_eq!(
            encoded.columns,
            [
                UserColumn::Ids(vec![0]),
                UserColumn::Ids(vec![7, 2, 9]),
                UserColumn::Ids(vec![7]),
            ]
        );
        let short = encode_new_user(&specs, &[], &[5], &tiny_vocabularies());
        assert_eq!(short.columns[1], UserColumn::Ids(vec![5, 0, 0]));
        assert_eq!(accepted_names(&specs, &tiny_vocabularies()), ["gender"]);
    }
}
