//! The `leave-last-out` evaluation of a run (`dssm evaluate-retrieval`): each user's held-out item
//! ranked among all candidates, unmasked, masked and masked_all, beside the popularity baseline.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use dssm_data::{Protocol, Split};
use dssm_retrieval::{
    EmbeddingMatrix, ExactIndex, Exclusions, MatrixView, PROTOCOL_CUTOFFS, PopularityBaseline,
    ProtocolVariant, RankingReport, SeenItems,
};
use dssm_trainer::RunConfig;
use serde::Serialize;

use crate::Recommender;
use crate::error::{Error, Result};
use crate::run::{
    DatasetRecord, absolute, candidate_matrix, dataset_record, similarity_name,
    write_json_atomically,
};

/// `retrieval-<split>.json`.
#[derive(Debug, Clone, Serialize)]
pub struct RetrievalRecord {
    /// Always `leave-last-out`.
    pub protocol: String,
    /// `val` or `test`.
    pub split: String,
    /// The dataset.
    pub dataset: DatasetRecord,
    /// Always null: `leave-last-out` splits by time, not by a seed.
    pub split_seed: Option<u64>,
    /// The run folder (absolute).
    pub run: PathBuf,
    /// The checkpoint id.
    pub checkpoint: String,
    /// The run's config.
    pub config: RunConfig,
    /// `dot` or `cosine`.
    pub similarity: &'static str,
    /// Number of candidates.
    pub candidates: usize,
    /// Number of held-out rows ranked.
    pub users: usize,
    /// The K of HR@K and NDCG@K.
    pub cutoffs: Vec<usize>,
    /// The figures.
    pub metrics: VariantMetrics,
    /// This crate's version.
    pub code_version: String,
    /// Seconds the evaluation took.
    pub wall_s: f64,
}

/// The figures of each ranker by variant (`unmasked`, `masked`, `masked_all`).
#[derive(Debug, Clone, Serialize)]
pub struct VariantMetrics {
    /// The model.
    pub model: BTreeMap<String, RankingReport>,
    /// Train popularity.
    pub popularity: BTreeMap<String, RankingReport>,
}

impl RetrievalRecord {
    /// The report of `ranker` (`model` or `popularity`) under `variant`.
    pub fn report(&self, ranker: &str, variant: ProtocolVariant) -> Option<&RankingReport> {
        let by_variant = match ranker {
            "model" => &self.metrics.model,
            "popularity" => &self.metrics.popularity,
            _ => return None,
        };
        by_variant.get(variant.name())
    }
}

impl Recommender {
    /// Ranks every user's held-out item of `split` (`Val` or `Test`) and writes
    /// `<run>/retrieval-<split>.json`; returns the record and the path written.
    pub fn evaluate_retrieval(&self, split: Split) -> Result<(RetrievalRecord, PathBuf)> {
        let started = Instant::now();
        let loaded = self.run();
        let dataset = &loaded.dataset;
        if !dataset.manifest.protocol.is_retrieval() {
            return Err(Error::Run {
                path: dataset.dir.clone(),
                message: format!(
                    "evaluate-retrieval needs a dataset prepared with --protocol leave-last-out, \
                     but it was prepared for protocol {}",
                    dataset.manifest.protocol.name()
                ),
            });
        }
        let read = |split: Split| {
            dataset.interactions(split).map_err(|e| Error::Run {
                path: dataset.dir.clone(),
                message: format!("cannot read the {split} split: {e}"),
            })
        };
        let (train, held_out) = (read(Split::Train)?, read(split)?);
        // The test split's users also saw their validation item (`masked_all` removes it).
        let earlier = match split {
            Split::Test => Some(read(Split::Val)?),
            _ => None,
        };
        if held_out.is_empty() {
            return Err(Error::Run {
                path: dataset.dir.clone(),
                message: format!("the {split} split has no rows to rank"),
            });
        }
        let ranked = rank_held_out(
            &self.users,
            &self.items,
            &dataset.items.train_count,
            (&train.user_row, &train.movie_id),
            (&held_out.user_row, &held_out.movie_id),
            earlier.as_ref().map(|e| (&e.user_row[..], &e.movie_id[..])),
        )?;
        let record = RetrievalRecord {
            protocol: Protocol::LeaveLastOut.name().to_string(),
            split: split.name().to_string(),
            dataset: dataset_record(dataset)?,
            split_seed: None,
            run: absolute(&loaded.run_dir),
            checkpoint: self.model_id().to_string(),
            config: loaded.config.clone(),
            similarity: similarity_name(loaded.model.config().similarity),
            candidates: ranked.candidates,
            users: held_out.len(),
            cutoffs: PROTOCOL_CUTOFFS.to_vec(),
            metrics: VariantMetrics {
                model: by_variant(&ranked.model),
                popularity: by_variant(&ranked.popularity),
            },
            code_version: format!("dssm-recommend {}", env!("CARGO_PKG_VERSION")),
            wall_s: started.elapsed().as_secs_f64(),
        };
        let path = loaded
            .run_dir
            .join(format!("retrieval-{}.json", split.name()));
        write_json_atomically(&path, &record, "the retrieval record")?;
        Ok((record, path))
    }
}

fn by_variant(reports: &[RankingReport]) -> BTreeMap<String, RankingReport> {
    reports
        .iter()
        .map(|r| (r.variant.clone(), r.clone()))
        .collect()
}

/// The `leave-last-out` figures of one split, one report per [`ProtocolVariant`] in
/// [`ProtocolVariant::ALL`]'s order, for the model and the popularity baseline.
#[derive(Debug)]
struct RankedSplit {
    candidates: usize,
    model: Vec<RankingReport>,
    popularity: Vec<RankingReport>,
}

/// Ranks each held-out `(user row, movie id)` among the candidates (items with a train count),
/// by the inner product of the user's and the items' rows, and by train popularity. `users` has one
/// row per users-table row, `items` one per items-table row; `train` is `(user rows, movie ids)` of
/// the train split, whose items the masked variants remove, and `earlier` those of the split held
/// out before this one (validation, for test), which `masked_all` also removes.
fn rank_held_out(
    users: &EmbeddingMatrix,
    items: &EmbeddingMatrix,
    train_count: &[u32],
    train: (&[u32], &[u32]),
    held_out: (&[u32], &[u32]),
    earlier: Option<(&[u32], &[u32])>,
) -> Result<RankedSplit> {
    let candidates = candidate_matrix(items, train_count)?;
    let candidate_ids = candidates.ids().to_vec();
    let seen_in_train = items_by_user(users.len(), train.0, train.1)?;
    let train_items = exclusions_for(&seen_in_train, held_out.0);
    let seen = seen_items(users.len(), train_items, earlier, held_out.0)?;
    let queries = gather_rows(users.data(), users.dim(), held_out.0)?;
    let queries = MatrixView::new(&queries, users.dim())?;
    let targets = held_out.1;

    let index = ExactIndex::new(candidates);
    let popularity = PopularityBaseline::new(&candidate_ids, train.1.iter().copied());
    let mut ranked = RankedSplit {
        candidates: candidate_ids.len(),
        model: Vec::new(),
        popularity: Vec::new(),
    };
    for variant in ProtocolVariant::ALL {
        let ahead = index.items_ahead_of_targets(queries, targets, variant.exclusions(&seen))?;
        ranked.model.push(RankingReport::from_items_ahead(
            variant.name(),
            &ahead,
            &PROTOCOL_CUTOFFS,
        ));
        ranked
            .popularity
            .push(popularity.evaluate(targets, variant, &seen, &PROTOCOL_CUTOFFS)?);
    }
    Ok(ranked)
}

/// The queries' train items (`train_items`) and, when a split was held out before this one
/// (`earlier`: its user rows and movie ids), their whole history: train items and those.
fn seen_items(
    users: usize,
    train_items: Exclusions,
    earlier: Option<(&[u32], &[u32])>,
    query_user_rows: &[u32],
) -> Result<SeenItems> {
    let Some((user_row, movie_id)) = earlier else {
        return Ok(SeenItems::train_only(train_items));
    };
    let by_user = items_by_user(users, user_row, movie_id)?;
    let earlier = exclusions_for(&by_user, query_user_rows);
    Ok(SeenItems::train_only(train_items).with_earlier(&earlier)?)
}

/// For each user-table row, the movie ids of its interactions (in split order).
fn items_by_user(users: usize, user_row: &[u32], movie_id: &[u32]) -> Result<Vec<Vec<u32>>> {
    let mut by_user = vec![Vec::new(); users];
    for (&row, &movie) in user_row.iter().zip(movie_id) {
        let Some(list) = by_user.get_mut(row as usize) else {
            return Err(Error::Invalid {
                field: "user_row",
                message: format!("user row {row} is outside the users table ({users} rows)"),
            });
        };
        list.push(movie);
    }
    Ok(by_user)
}

/// One exclusion row per query: the items of the query's user.
fn exclusions_for(items_by_user: &[Vec<u32>], query_user_rows: &[u32]) -> Exclusions {
    Exclusions::from_rows(query_user_rows.iter().map(|&row| {
        items_by_user
            .get(row as usize)
            .map_or(&[][..], Vec::as_slice)
    }))
}

/// The rows `rows` of a row-major matrix with `dim` columns, gathered in that order.
fn gather_rows(data: &[f32], dim: usize, rows: &[u32]) -> Result<Vec<f32>> {
    let available = data.len() / dim.max(1);
    let mut out = Vec::with_capacity(rows.len() * dim);
    for &row in rows {
        let row = row as usize;
        if row >= available {
            return Err(Error::Invalid {
                field: "user_row",
                message: format!(
                    "user row {row} is outside the embedding matrix ({available} rows)"
                ),
            });
        }
        out.extend_from_slice(&data[row * dim..(row + 1) * dim]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusions_follow_the_query_users() {
        // Train: user row 0 rated 5 and 7, user row 2 rated 9; row 1 rated nothing.
        let by_user = items_by_user(3, &[0, 2, 0], &[5, 9, 7]).unwrap();
        assert_eq!(by_user, vec![vec![5, 7], vec![], vec![9]]);
        // Queries in held-out order: rows 2, 0, 1.
        let exclusions = exclusions_for(&by_user, &[2, 0, 1]);
        assert_eq!(exclusions.rows(), 3);
        assert_eq!(exclusions.row(0), &[9]);
        assert_eq!(exclusions.row(1), &[5, 7]);
        assert!(exclusions.row(2).is_empty());
        let error = items_by_user(2, &[0, 2], &[1, 1]).unwrap_err().to_string();
        assert!(error.contains("user row 2"), "{error}");
    }

    #[test]
    fn masked_keeps_the_validation_item_and_masked_all_removes_it() {
        // Items 1..=4 on one axis: the user prefers 4 > 3 > 2 > 1. Train item 4, val item 3,
        // test item 2.
        let items = EmbeddingMatrix::new(vec![1, 2, 3, 4], 1, vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        let index = ExactIndex::new(items);
        let by_user = items_by_user(1, &[0], &[4]).unwrap();
        let validation = Exclusions::from_rows([vec![3]]);
        let seen = SeenItems::train_only(exclusions_for(&by_user, &[0]));
        let seen = seen.with_earlier(&validation).unwrap();
        let query = [1.0f32];
        let queries = MatrixView::new(&query, 1).unwrap();
        let ahead = |variant: ProtocolVariant| {
            index
                .items_ahead_of_targets(queries, &[2], variant.exclusions(&seen))
                .unwrap()
        };
        assert_eq!(ahead(ProtocolVariant::Unmasked), vec![Some(2)]);
        // Item 4 is gone; item 3 (validation) still ranks ahead.
        assert_eq!(ahead(ProtocolVariant::Masked), vec![Some(1)]);
        assert_eq!(ahead(ProtocolVariant::MaskedAll), vec![Some(0)]);
        // A target that is not a candidate is a miss.
        let miss = index.items_ahead_of_targets(queries, &[99], None).unwrap();
        assert_eq!(miss, vec![None]);
    }

    /// Items ahead of the target by brute force: a higher score, or an equal score and a lower id;
    /// `None` when the target is not a candidate or is excluded.
    fn brute_force_ahead(scores: &[(u32, f32)], target: u32, excluded: &[u32]) -> Option<usize> {
        if excluded.contains(&target) {
            return None;
        }
        let &(_, t) = scores.iter().find(|(id, _)| *id == target)?;
        Some(
            scores
                .iter()
                .filter(|(id, s)| !excluded.contains(id) && (*s > t || (*s == t && *id < target)))
                .count(),
        )
    }

    #[test]
    fn held_out_ranking_matches_a_brute_force_count() {
        // 6 users x 2 dims, 9 items (rows in table order, ids not sorted), item 40 never in train.
        // Scores are small integers, so ties happen and break by the lower id.
        let user_data: Vec<f32> = (0..12).map(|i| ((i * 7) % 5) as f32 - 2.0).collect();
        let users = EmbeddingMatrix::new(vec![11, 12, 13, 14, 15, 16], 2, user_data).unwrap();
        let item_ids = vec![50, 10, 40, 20, 90, 30, 70, 60, 80];
        let item_data: Vec<f32> = (0..18).map(|i| ((i * 3) % 4) as f32 - 1.0).collect();
        let items = EmbeddingMatrix::new(item_ids.clone(), 2, item_data).unwrap();
        let train_count = [2, 1, 0, 3, 1, 1, 4, 1, 2];
        let train_rows: (Vec<u32>, Vec<u32>) = (
            vec![0, 0, 1, 2, 2, 3, 4, 5, 5, 5],
            vec![50, 70, 20, 10, 70, 30, 20, 90, 80, 60],
        );
        // Held-out rows in an order unrelated to user rows; user 3's target is its own train item
        // (masked: a miss), user 4's target (40) is not a candidate.
        let held: (Vec<u32>, Vec<u32>) = (vec![5, 3, 0, 4, 1, 2], vec![70, 30, 20, 40, 80, 60]);
        // The split held out before (validation): users 5, 0 and 2 saw 30, 90 and 10.
        let earlier: (Vec<u32>, Vec<u32>) = (vec![5, 0, 2], vec![30, 90, 10]);
        let ranked = rank_held_out(
            &users,
            &items,
            &train_count,
            (&train_rows.0, &train_rows.1),
            (&held.0, &held.1),
            Some((&earlier.0, &earlier.1)),
        )
        .unwrap();
        assert_eq!(ranked.candidates, 8);
        let candidates: Vec<(usize, u32)> = item_ids
            .iter()
            .enumerate()
            .filter(|&(row, _)| train_count[row] > 0)
            .map(|(row, &id)| (row, id))
            .collect();
        // The items a variant removes from user `u`'s ranking: its train items when masked, and
        // its validation item too for masked_all.
        let of_user = |rows: &(Vec<u32>, Vec<u32>), u: u32| -> Vec<u32> {
            let pairs = rows.0.iter().zip(&rows.1);
            pairs.filter(|&(&r, _)| r == u).map(|(_, &m)| m).collect()
        };
        let excluded = |u: u32, variant: ProtocolVariant| -> Vec<u32> {
            match variant {
                ProtocolVariant::Unmasked => Vec::new(),
                ProtocolVariant::Masked => of_user(&train_rows, u),
                ProtocolVariant::MaskedAll => {
                    [of_user(&train_rows, u), of_user(&earlier, u)].concat()
                }
            }
        };
        for (v, variant) in ProtocolVariant::ALL.into_iter().enumerate() {
            let ahead: Vec<Option<usize>> = held
                .0
                .iter()
                .zip(&held.1)
                .map(|(&u, &target)| {
                    let scores: Vec<(u32, f32)> = candidates
                        .iter()
                        .map(|&(row, id)| {
                            let s = users.row(u as usize)[0] * items.row(row)[0]
                                + users.row(u as usize)[1] * items.row(row)[1];
                            (id, s)
                        })
                        .collect();
                    brute_force_ahead(&scores, target, &excluded(u, variant))
                })
                .collect();
            assert_eq!(ahead[3], None, "item 40 is not a candidate");
            if variant != ProtocolVariant::Unmasked {
                assert_eq!(ahead[1], None, "user 3's target is one of its train items");
            }
            let expected =
                RankingReport::from_items_ahead(variant.name(), &ahead, &PROTOCOL_CUTOFFS);
            assert_eq!(ranked.model[v], expected, "{variant:?}");

            // Popularity: train counts (20: 2, 70: 2, then 1 each), ties by the lower id.
            let counts: Vec<(u32, f32)> = candidates
                .iter()
                .map(|&(_, id)| (id, train_rows.1.iter().filter(|&&m| m == id).count() as f32))
                .collect();
            let pop_ahead: Vec<Option<usize>> = held
                .0
                .iter()
                .zip(&held.1)
                .map(|(&u, &target)| brute_force_ahead(&counts, target, &excluded(u, variant)))
                .collect();
            let expected =
                RankingReport::from_items_ahead(variant.name(), &pop_ahead, &PROTOCOL_CUTOFFS);
            assert_eq!(ranked.popularity[v], expected, "{variant:?}");
        }
        assert_eq!(ranked.model[0].misses, 1);
        assert_eq!(ranked.model[1].misses, 2);
        // Non-trivial figures: masking moves the ranks.
        assert!(ranked.model[0].mrr > 0.0 && ranked.popularity[0].mrr > 0.0);
        assert_ne!(ranked.model[0].mrr, ranked.model[1].mrr);
    }

    #[test]
    fn gather_rows_picks_query_users_in_order() {
        let data = [0.0, 0.5, 1.0, 1.5, 2.0, 2.5];
        assert_eq!(
            gather_rows(&data, 2, &[2, 0, 2]).unwrap(),
            vec![2.0, 2.5, 0.0, 0.5, 2.0, 2.5]
        );
        assert!(gather_rows(&data, 2, &[3]).is_err());
    }
}
