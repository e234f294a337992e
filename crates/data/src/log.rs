//! The interaction log in compact columns (25 bytes a row), read from a spec's CSV or
//! Parquet file chunk by chunk with every key resolved to a user and item row.

use foldhash::HashMap;
use std::path::Path;

use crate::error::DataError;
use crate::spec::{DatasetSpec, LabelRule, MissingPolicy};
use crate::table::{self, Keys, SourceTable, TableFile, Values};

/// The timestamp stored for a row without one (older than every real time).
pub(crate) const NO_TIME: i64 = i64::MIN;

/// Interactions, one entry per kept row, in file order.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct InteractionLog {
    /// Row of the user.
    pub user_row: Vec<u32>,
    /// Row of the item.
    pub item_row: Vec<u32>,
    /// Unix seconds, [`NO_TIME`] when absent.
    pub timestamp: Vec<i64>,
    /// Rating, NaN when absent.
    pub rating: Vec<f32>,
    /// 1 for a positive.
    pub label: Vec<u8>,
    /// 1-based record number in the source file (header excluded).
    pub line: Vec<u32>,
    /// Rows dropped by a `missing = "drop"` policy.
    pub dropped: u64,
}

impl InteractionLog {
    /// Number of rows.
    pub(crate) fn len(&self) -> usize {
        self.user_row.len()
    }

    /// The timestamp of a row.
    pub(crate) fn time(&self, row: usize) -> Option<i64> {
        let t = self.timestamp[row];
        (t != NO_TIME).then_some(t)
    }

    /// The rating of a row.
    pub(crate) fn rating(&self, row: usize) -> Option<f32> {
        let r = self.rating[row];
        (!r.is_nan()).then_some(r)
    }

    /// Renumbers the rows of one side: `order[new] = old`.
    pub(crate) fn reorder(rows: &mut [u32], order: &[u32]) {
        let mut new_of_old = vec![0u32; order.len()];
        for (new, &old) in order.iter().enumerate() {
            new_of_old[old as usize] = new as u32;
        }
        for r in rows {
            *r = new_of_old[*r as usize];
        }
    }
}

/// One side's key resolution: the table's keys, or keys discovered while reading.
pub(crate) enum Resolver<'a> {
    /// Keys of a feature table, with the policy for unknown keys.
    Table {
        keys: &'a Keys,
        policy: MissingPolicy,
        table: &'a Path,
    },
    /// No table: every new key gets the next provisional row.
    Discover {
        index: HashMap<String, u32>,
        texts: Vec<String>,
    },
}

impl Resolver<'_> {
    /// A resolver that discovers keys.
    pub(crate) fn discover() -> Self {
        Self::Discover {
            index: HashMap::default(),
            texts: Vec::new(),
        }
    }

    /// The row of a key, `Ok(None)` when it is to be dropped.
    fn resolve(&mut self, key: &str) -> Result<Option<u32>, String> {
        match self {
            Self::Table {
                keys,
                policy,
                table,
            } => match (keys.row(key), policy) {
                (Some(row), _) => Ok(Some(row)),
                (None, MissingPolicy::Drop) => Ok(None),
                (None, MissingPolicy::Error) => Err(format!(
                    "expected a key listed in {}, found {key:?} (set missing = \"drop\" to skip such rows)",
                    table.display()
                )),
            },
            Self::Discover { index, texts } => {
                if let Some(&row) = index.get(key) {
                    return Ok(Some(row));
                }
                let row = texts.len() as u32;
                index.insert(key.to_string(), row);
                texts.push(key.to_string());
                Ok(Some(row))
            }
        }
    }

    /// The discovered keys (canonical order) and the order to renumber rows with.
    pub(crate) fn into_discovered(self) -> Option<(Keys, Vec<u32>)> {
        match self {
            Self::Discover { texts, .. } => Some(Keys::canonical(texts)),
            Self::Table { .. } => None,
        }
    }
}

/// The columns of the interactions file a spec reads, in order: user, item, then the optional
/// timestamp, rating and label columns.
fn wanted(spec: &DatasetSpec) -> Vec<&str> {
    let i = &spec.interactions;
    let mut wanted = vec![i.user.as_str(), i.item.as_str()];
    wanted.extend(i.timestamp.as_deref());
    wanted.extend(i.rating.as_deref());
    if let LabelRule::Column { column } = &spec.label {
        wanted.push(column);
    }
    wanted
}

/// Reads the interactions of a spec in chunks, resolving keys with the two resolvers;
/// `on_rows` is told the rows read so far.
pub(crate) fn read_log(
    spec: &DatasetSpec,
    users: &mut Resolver<'_>,
    items: &mut Resolver<'_>,
    on_rows: &dyn Fn(u64),
) -> Result<InteractionLog, DataError> {
    let i = &spec.interactions;
    let file = TableFile {
        path: &i.path,
        format: i.format,
        delimiter: i.delimiter,
    };
    let mut log = InteractionLog::default();
    let mut read = 0u64;
    table::for_each_chunk(&file, &wanted(spec), |chunk| {
        append_chunk(spec, &chunk, users, items, &mut log)?;
        read += chunk.rows as u64;
        on_rows(read);
        Ok(())
    })?;
    Ok(log)
}

fn append_chunk(
    spec: &DatasetSpec,
    chunk: &SourceTable,
    users: &mut Resolver<'_>,
    items: &mut Resolver<'_>,
    log: &mut InteractionLog,
) -> Result<(), DataError> {
    let i = &spec.interactions;
    let user_keys = chunk.column(&i.user)?;
    let item_keys = chunk.column(&i.item)?;
    let times = i
        .timestamp
        .as_deref()
        .map(|c| chunk.column(c))
        .transpose()?;
    let ratings = i.rating.as_deref().map(|c| chunk.column(c)).transpose()?;
    let labels = match &spec.label {
        LabelRule::Column { column } => Some((column.as_str(), chunk.column(column)?)),
        _ => None,
    };
    for row in 0..chunk.rows {
        let user_key = table::key_text(chunk, user_keys, &i.user, row)?;
        let item_key = table::key_text(chunk, item_keys, &i.item, row)?;
        let user = users
            .resolve(&user_key)
            .map_err(|m| chunk.cell_error(&i.user, row, m))?;
        let item = items
            .resolve(&item_key)
            .map_err(|m| chunk.cell_error(&i.item, row, m))?;
        let (Some(user), Some(item)) = (user, item) else {
            log.dropped += 1;
            continue;
        };
        let time = match (times, i.timestamp.as_deref()) {
            (Some(values), Some(column)) => values
                .seconds(row)
                .map_err(|m| chunk.cell_error(column, row, m))?
                .unwrap_or(NO_TIME),
            _ => NO_TIME,
        };
        let rating = match (ratings, i.rating.as_deref()) {
            (Some(values), Some(column)) => values
                .number(row)
                .map_err(|m| chunk.cell_error(column, row, m))?,
            _ => None,
        };
        let label = match (&spec.label, labels) {
            (LabelRule::Implicit, _) => 1,
            (LabelRule::RatingAbove { threshold }, _) => {
                let column = i.rating.as_deref().unwrap_or_default();
                let r = rating.ok_or_else(|| {
                    chunk.cell_error(column, row, "expected a rating, found an empty cell".into())
                })?;
                u8::from(r > *threshold)
            }
            (LabelRule::Column { .. }, Some((column, values))) => {
                label_of(values, row).map_err(|m| chunk.cell_error(column, row, m))?
            }
            (LabelRule::Column { .. }, None) => 1,
        };
        log.user_row.push(user);
        log.item_row.push(item);
        log.timestamp.push(time);
        log.rating.push(rating.map_or(f32::NAN, |r| r as f32));
        log.label.push(label);
        log.line.push((chunk.first_row + row + 1) as u32);
    }
    Ok(())
}

fn label_of(values: &Values, row: usize) -> Result<u8, String> {
    if let Some(text) = values.text(row) {
        match text.trim().to_ascii_lowercase().as_str() {
            "true" => return Ok(1),
            "false" => return Ok(0),
            _ => {}
        }
    }
    match values.number(row)? {
        Some(x) => Ok(u8::from(x != 0.0)),
        None => Err("expected a label (0/1 or true/false), found an empty cell".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reorder_renumbers_rows() {
        let mut rows = vec![0, 2, 1, 2];
        // New row 0 is old row 2, new 1 is old 0, new 2 is old 1.
        InteractionLog::reorder(&mut rows, &[2, 0, 1]);
        assert_eq!(rows, [1, 0, 2, 0]);
    }

    #[test]
    fn labels_read_numbers_and_booleans() {
        let v = Values::Text(vec![
            Some("1".into()),
            Some("0".into()),
            Some("True".into()),
            None,
        ]);
        assert_eq!(label_of(&v, 0), Ok(1));
        assert_eq!(label_of(&v, 1), Ok(0));
        assert_eq!(label_of(&v, 2), Ok(1));
        assert!(label_of(&v, 3).is_err());
    }
}
