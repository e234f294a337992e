//! Declared features fitted on the train rows of their side and encoded for every row: the
//! vocabulary (or buckets, hash, standardisation) and the encoded column of each feature.
//!
//! Frequencies count train interactions: a user's value counts once per train interaction of
//! that user, an item's once per train interaction of that item; users and items without train
//! interactions contribute nothing. Numeric buckets and standardisation are fitted over the rows
//! with at least one train interaction, each row once.

use std::collections::HashMap;

use crate::encode::{
    EncodedColumn, FeatureKind, ItemTrainStats, MinFrequency, Side, Vocabulary, bucket,
    hash_bucket, quantile_edges, sorted_values,
};
use crate::error::DataError;
use crate::spec::{FeatureDecl, NumericEncoding, Statistic};
use crate::table::{SourceTable, Values};

/// Default number of quantile buckets.
pub const DEFAULT_BUCKETS: usize = 10;

/// One side's rows as the encoders see them.
pub(crate) struct SideData<'a> {
    /// Which tower.
    pub side: Side,
    /// One row per user (item), in dataset row order.
    pub table: &'a SourceTable,
    /// Train interactions per row.
    pub train_rows: &'a [u32],
    /// Train interactions in all.
    pub total_train_rows: u64,
    /// Items: the statistics `train_statistic` features encode (one per row); users: empty.
    pub stats: &'a [ItemTrainStats],
}

/// Fits and encodes every declared feature of a side, in declaration order.
pub(crate) fn encode_side(
    data: &SideData<'_>,
    decls: &[FeatureDecl],
    default: MinFrequency,
) -> Result<Vec<(Vocabulary, EncodedColumn)>, DataError> {
    decls
        .iter()
        .map(|decl| {
            let (mut vocabulary, column) = encode_feature(data, decl, default)?;
            if let Some(column) = decl.column().filter(|c| *c != decl.name()) {
                vocabulary.column = Some(column.to_string());
            }
            Ok((vocabulary, column))
        })
        .collect()
}

fn encode_feature(
    data: &SideData<'_>,
    decl: &FeatureDecl,
    default: MinFrequency,
) -> Result<(Vocabulary, EncodedColumn), DataError> {
    let name = decl.name();
    match decl {
        FeatureDecl::Categorical { prefix, .. } => {
            categorical(data, decl, *prefix, decl.min_frequency(default))
        }
        FeatureDecl::MultiCategorical {
            delimiter, max_len, ..
        } => multi_categorical(
            data,
            decl,
            delimiter.unwrap_or('|'),
            *max_len,
            decl.min_frequency(default),
        ),
        FeatureDecl::Numeric {
            encoding, buckets, ..
        } => {
            let values = numbers(data, decl)?;
            Ok(match encoding {
                NumericEncoding::Buckets => {
                    bucketed(data, name, &values, buckets_or_default(*buckets))
                }
                NumericEncoding::Standardize => standardized(data, name, &values),
            })
        }
        FeatureDecl::Vector { dim, .. } => vector(data, decl, *dim),
        FeatureDecl::Hashed { buckets, .. } => Ok(hashed(data, decl, *buckets)?),
        FeatureDecl::TrainStatistic {
            statistic, buckets, ..
        } => Ok(train_statistic(
            data,
            name,
            *statistic,
            buckets_or_default(*buckets),
        )),
    }
}

fn buckets_or_default(buckets: Option<usize>) -> usize {
    buckets.unwrap_or(DEFAULT_BUCKETS).max(1)
}

fn source<'a>(
    data: &'a SideData<'_>,
    decl: &'a FeatureDecl,
) -> Result<(&'a Values, &'a str), DataError> {
    let column = decl.column().unwrap_or(decl.name());
    Ok((data.table.column(column)?, column))
}

fn keep_rule(rule: MinFrequency, total_train_rows: u64) -> impl Fn(u64) -> bool {
    move |c: u64| match rule {
        MinFrequency::Share(share) => c >= 1 && c as f64 >= share * total_train_rows as f64,
        MinFrequency::Count(min) => c >= min.max(1),
    }
}

fn with_prefix(text: &str, prefix: Option<usize>) -> String {
    match prefix {
        Some(n) => text.chars().take(n).collect(),
        None => text.to_string(),
    }
}

fn categorical(
    data: &SideData<'_>,
    decl: &FeatureDecl,
    prefix: Option<usize>,
    rule: MinFrequency,
) -> Result<(Vocabulary, EncodedColumn), DataError> {
    let (values, _) = source(data, decl)?;
    let texts: Vec<Option<String>> = (0..data.table.rows)
        .map(|row| values.text(row).map(|t| with_prefix(&t, prefix)))
        .collect();
    let mut counts: HashMap<String, u64> = HashMap::new();
    for (text, &c) in texts.iter().zip(data.train_rows) {
        if let (Some(t), true) = (text, c > 0) {
            *counts.entry(t.clone()).or_default() += u64::from(c);
        }
    }
    let kept = sorted_values(counts, keep_rule(rule, data.total_train_rows));
    let mut vocabulary =
        Vocabulary::from_values(decl.name(), data.side, FeatureKind::Categorical, kept);
    let encoded = texts
        .iter()
        .map(|t| t.as_deref().map_or(0, |t| vocabulary.encode(t)))
        .collect();
    vocabulary.prefix = prefix;
    Ok((vocabulary, EncodedColumn::Categorical(encoded)))
}

fn multi_categorical(
    data: &SideData<'_>,
    decl: &FeatureDecl,
    delimiter: char,
    max_len: Option<usize>,
    rule: MinFrequency,
) -> Result<(Vocabulary, EncodedColumn), DataError> {
    let (values, _) = source(data, decl)?;
    let lists: Vec<Vec<String>> = (0..data.table.rows)
        .map(|row| values.list(row, delimiter).unwrap_or_default())
        .collect();
    let mut counts: HashMap<String, u64> = HashMap::new();
    for (list, &c) in lists.iter().zip(data.train_rows) {
        if c > 0 {
            for value in list {
                *counts.entry(value.clone()).or_default() += u64::from(c);
            }
        }
    }
    let kept = sorted_values(counts, keep_rule(rule, data.total_train_rows));
    let vocabulary =
        Vocabulary::from_values(decl.name(), data.side, FeatureKind::MultiCategorical, kept);
    let encoded: Vec<Vec<u32>> = lists
        .iter()
        .map(|list| {
            let mut ids: Vec<u32> = list
                .iter()
                .map(|v| vocabulary.encode(v))
                .filter(|&i| i != 0)
                .collect();
            if let Some(max) = max_len {
                ids.truncate(max);
            }
            ids
        })
        .collect();
    let width = max_len
        .unwrap_or_else(|| encoded.iter().map(Vec::len).max().unwrap_or(0))
        .max(1);
    Ok((
        vocabulary,
        EncodedColumn::Multi {
            width,
            lists: encoded,
        },
    ))
}

fn numbers(data: &SideData<'_>, decl: &FeatureDecl) -> Result<Vec<Option<f64>>, DataError> {
    let (values, column) = source(data, decl)?;
    (0..data.table.rows)
        .map(|row| {
            values
                .number(row)
                .map_err(|m| data.table.cell_error(column, row, m))
        })
        .collect()
}

/// Rows with train interactions: the rows parameters are fitted on.
fn fitted_on<'a>(
    data: &'a SideData<'_>,
    values: &'a [Option<f64>],
) -> impl Iterator<Item = f64> + 'a {
    values
        .iter()
        .zip(data.train_rows)
        .filter(|(_, c)| **c > 0)
        .filter_map(|(v, _)| *v)
}

fn bucketed(
    data: &SideData<'_>,
    name: &str,
    values: &[Option<f64>],
    buckets: usize,
) -> (Vocabulary, EncodedColumn) {
    let edges = quantile_edges(fitted_on(data, values).collect(), buckets);
    let encoded = values
        .iter()
        .map(|v| v.map_or(0, |v| bucket(&edges, v)))
        .collect();
    (
        Vocabulary::buckets(name, data.side, edges),
        EncodedColumn::Categorical(encoded),
    )
}

fn standardized(
    data: &SideData<'_>,
    name: &str,
    values: &[Option<f64>],
) -> (Vocabulary, EncodedColumn) {
    let fit: Vec<f64> = fitted_on(data, values).collect();
    let n = fit.len().max(1) as f64;
    let mean = fit.iter().sum::<f64>() / n;
    let var = fit.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
    let std = if var > 0.0 { var.sqrt() } else { 1.0 };
    let encoded = values
        .iter()
        .map(|v| v.map_or(0.0, |v| ((v - mean) / std) as f32))
        .collect();
    let mut vocabulary = Vocabulary::from_values(name, data.side, FeatureKind::Dense, vec![]);
    vocabulary.standardize = Some([mean, std]);
    vocabulary.dim = Some(1);
    (
        vocabulary,
        EncodedColumn::Dense {
            dim: 1,
            values: encoded,
        },
    )
}

fn vector(
    data: &SideData<'_>,
    decl: &FeatureDecl,
    dim: usize,
) -> Result<(Vocabulary, EncodedColumn), DataError> {
    let (values, column) = source(data, decl)?;
    let mut encoded = Vec::with_capacity(data.table.rows * dim);
    for row in 0..data.table.rows {
        let cell = values
            .vector(row)
            .map_err(|m| data.table.cell_error(column, row, m))?;
        let vector = cell.ok_or_else(|| {
            data.table.cell_error(
                column,
                row,
                format!("expected {dim} floats, found an empty cell"),
            )
        })?;
        if vector.len() != dim {
            return Err(data.table.cell_error(
                column,
                row,
                format!("expected {dim} floats, found {}", vector.len()),
            ));
        }
        if let Some(bad) = vector.iter().find(|x| !x.is_finite()) {
            return Err(data.table.cell_error(
                column,
                row,
                format!("expected finite floats, found {bad}"),
            ));
        }
        encoded.extend_from_slice(&vector);
    }
    let mut vocabulary =
        Vocabulary::from_values(decl.name(), data.side, FeatureKind::Dense, vec![]);
    vocabulary.dim = Some(dim);
    Ok((
        vocabulary,
        EncodedColumn::Dense {
            dim,
            values: encoded,
        },
    ))
}

fn hashed(
    data: &SideData<'_>,
    decl: &FeatureDecl,
    buckets: usize,
) -> Result<(Vocabulary, EncodedColumn), DataError> {
    let (values, _) = source(data, decl)?;
    let encoded = (0..data.table.rows)
        .map(|row| values.text(row).map_or(0, |t| hash_bucket(&t, buckets)))
        .collect();
    let mut vocabulary = Vocabulary::from_values(
        decl.name(),
        data.side,
        FeatureKind::Categorical,
        vec![crate::encode::UNKNOWN.to_string()],
    );
    vocabulary.hash_buckets = Some(buckets);
    vocabulary.build_index();
    Ok((vocabulary, EncodedColumn::Categorical(encoded)))
}

fn train_statistic(
    data: &SideData<'_>,
    name: &str,
    statistic: Statistic,
    buckets: usize,
) -> (Vocabulary, EncodedColumn) {
    let value = |s: &ItemTrainStats| match statistic {
        Statistic::Count => f64::from(s.count),
        Statistic::RatingMean => s.mean,
    };
    let rated: Vec<f64> = data
        .stats
        .iter()
        .filter(|s| s.count > 0)
        .map(value)
        .collect();
    let edges = quantile_edges(rated, buckets);
    let encoded = data
        .stats
        .iter()
        .map(|s| {
            if s.count == 0 {
                0
            } else {
                bucket(&edges, value(s))
            }
        })
        .collect();
    (
        Vocabulary::buckets(name, data.side, edges),
        EncodedColumn::Categorical(encoded),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::FeatureDecl as D;

    fn table(columns: Vec<(&str, Values)>) -> SourceTable {
        SourceTable::in_memory(
            "items.csv".into(),
            columns
                .into_iter()
                .map(|(n, v)| (n.to_string(), v))
                .collect(),
        )
    }

    fn text(values: &[&str]) -> Values {
        Values::Text(
            values
                .iter()
                .map(|v| (!v.is_empty()).then(|| v.to_string()))
                .collect(),
        )
    }

    fn encode(
        t: &SourceTable,
        train_rows: &[u32],
        decl: D,
    ) -> Result<(Vocabulary, EncodedColumn), DataError> {
        let data = SideData {
            side: Side::Item,
            table: t,
            train_rows,
            total_train_rows: train_rows.iter().map(|&c| u64::from(c)).sum(),
            stats: &[],
        };
        encode_feature(&data, &decl, MinFrequency::Count(1))
    }

    fn categorical(name: &str, min_count: Option<u64>) -> D {
        D::Categorical {
            name: name.into(),
            column: None,
            prefix: None,
            min_count,
            min_share: None,
        }
    }

    #[test]
    fn categorical_vocabularies_see_only_rows_with_train_interactions() {
        let t = table(vec![("brand", text(&["b", "a", "c", "", "a"]))]);
        // Row 2 ("c") has no train interactions; row 3 is empty.
        let (v, column) = encode(&t, &[1, 2, 0, 4, 1], categorical("brand", None)).unwrap();
        assert_eq!(v.values, ["<unk>", "a", "b"]);
        assert_eq!(column, EncodedColumn::Categorical(vec![2, 1, 0, 0, 1]));
        // "b" (1 train row) is rare under min_count 2; "a" has 3.
        let (v, column) = encode(&t, &[1, 2, 0, 4, 1], categorical("brand", Some(2))).unwrap();
        assert_eq!(v.values, ["<unk>", "a"]);
        assert_eq!(column, EncodedColumn::Categorical(vec![0, 1, 0, 0, 1]));
    }

    #[test]
    fn multi_categorical_reads_delimited_text_and_truncates() {
        let t = table(vec![("tags", text(&["x|y|z", "['y', 'w']", ""]))]);
        let decl = D::MultiCategorical {
            name: "tags".into(),
            column: None,
            delimiter: None,
            max_len: Some(2),
            min_count: None,
            min_share: None,
        };
        let (v, column) = encode(&t, &[1, 1, 1], decl).unwrap();
        assert_eq!(v.values, ["<unk>", "w", "x", "y", "z"]);
        assert_eq!(
            column,
            EncodedColumn::Multi {
                width: 2,
                lists: vec![vec![2, 3], vec![3, 1], vec![]]
            }
        );
    }

    #[test]
    fn numeric_features_bucket_or_standardise_on_train_rows() {
        let t = table(vec![("price", text(&["1", "2", "3", "100", ""]))]);
        let decl = |encoding| D::Numeric {
            name: "price".into(),
            column: None,
            encoding,
            buckets: Some(2),
        };
        // Row 3 (100) has no train rows: the fit sees 1, 2, 3.
        let train = [1, 1, 1, 0, 1];
        let (v, column) = encode(&t, &train, decl(NumericEncoding::Buckets)).unwrap();
        assert_eq!(v.edges, Some(vec![2.0]));
        assert_eq!(column, EncodedColumn::Categorical(vec![1, 2, 2, 2, 0]));
        let (v, column) = encode(&t, &train, decl(NumericEncoding::Standardize)).unwrap();
        let [mean, std] = v.standardize.unwrap();
        assert!((mean - 2.0).abs() < 1e-12);
        assert!((std - (2.0f64 / 3.0).sqrt()).abs() < 1e-12);
        let EncodedColumn::Dense { dim: 1, values } = column else {
            panic!("dense")
        };
        assert!((values[2] - (1.0 / std) as f32).abs() < 1e-6);
        assert_eq!(values[4], 0.0, "missing -> the mean");
        // A non-number names the row (CSV line = row + 1 for the header).
        let t = table(vec![("price", text(&["1", "cheap"]))]);
        let err = encode(&t, &[1, 1], decl(NumericEncoding::Buckets)).unwrap_err();
        assert!(
            err.to_string().contains("items.csv:3: column \"price\""),
            "{err}"
        );
    }

    #[test]
    fn vectors_of_the_wrong_length_are_refused_naming_the_row() {
        let t = table(vec![("emb", text(&["[0.5, 1]", "0.25 -2", "1 2 3"]))]);
        let decl = D::Vector {
            name: "emb".into(),
            column: None,
            dim: 2,
        };
        let err = encode(&t, &[1, 1, 1], decl.clone())
            .unwrap_err()
            .to_string();
        assert!(err.contains("items.csv:4"), "{err}");
        assert!(err.contains("expected 2 floats, found 3"), "{err}");
        let t = table(vec![("emb", text(&["[0.5, 1]", "0.25 -2"]))]);
        let (v, column) = encode(&t, &[1, 0], decl).unwrap();
        assert_eq!(v.dim, Some(2));
        assert_eq!(
            column,
            EncodedColumn::Dense {
                dim: 2,
                values: vec![0.5, 1.0, 0.25, -2.0]
            }
        );
    }

    #[test]
    fn hashed_features_need_no_vocabulary() {
        let t = table(vec![("brand", text(&["acme", "", "zeta"]))]);
        let decl = D::Hashed {
            name: "brand".into(),
            column: None,
            buckets: 5,
        };
        let (v, column) = encode(&t, &[0, 0, 0], decl).unwrap();
        assert_eq!(v.size(), 6);
        assert_eq!(
            column,
            EncodedColumn::Categorical(vec![hash_bucket("acme", 5), 0, hash_bucket("zeta", 5)])
        );
    }
}
