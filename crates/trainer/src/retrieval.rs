//! Full-catalogue evaluation for the `leave-last-out` protocol (PROTOCOLS.md): every user's
//! held-out item is ranked against every candidate (the items with at least one train
//! interaction) by the towers' similarity, with `dssm-retrieval`'s exact index.
//!
//! Item ids given to the index are item rows of the dataset's items table, which holds the movies
//! in ascending movie id, so "equal scores by the lower id" is the protocol's tie rule.

use dssm_model::{Dssm, Mode, ModelConfig, Side, Similarity};

use dssm_retrieval::{
    EmbeddingMatrix, ExactIndex, Exclusions, MatrixView, PopularityBaseline, ProtocolVariant,
    RankingReport, SeenItems,
};

use crate::error::TrainError;
use crate::tables::{GatherBuffers, SideTable};

/// The cut-off of the selection metric (`hit_rate` = HR@50).
pub(crate) const SELECT_CUTOFF: usize = 50;

/// The same epsilon as the model's cosine similarity (`x / sqrt(|x|^2 + eps)`).
const COSINE_EPS: f32 = 1e-12;

fn retrieval_error(e: dssm_retrieval::Error) -> TrainError {
    TrainError::Retrieval {
        message: e.to_string(),
    }
}

/// One held-out interaction per user of a split, with each of those users' train items.
#[derive(Debug, Clone)]
pub(crate) struct HeldOut {
    /// User rows, one per held-out interaction.
    users: Vec<u32>,
    /// Rows of the users table the queries are embedded from (the user rows, or one row per
    /// query of a table expanded with the history feature).
    queries: Vec<u32>,
    /// The held-out item row of each user.
    targets: Vec<u32>,
    /// The item rows each user saw before the held-out one (the masked variants).
    seen: SeenItems,
}

impl HeldOut {
    /// User rows, one per held-out interaction.
    pub(crate) fn users(&self) -> &[u32] {
        &self.users
    }
}

/// What every evaluation of a run shares: the candidates, the users' train items and the
/// popularity baseline.
#[derive(Debug, Clone)]
pub(crate) struct RetrievalSetup {
    /// Candidate item rows (train count > 0), ascending.
    candidates: Vec<u32>,
    /// Train item rows of every user row.
    train_by_user: Exclusions,
    popularity: PopularityBaseline,
}

impl RetrievalSetup {
    /// Builds the setup from the train interactions (`users[i]` interacted with `items[i]`).
    pub(crate) fn new(n_users: usize, n_items: usize, users: &[u32], items: &[u32]) -> Self {
        let mut counts = vec![0usize; n_items];
        for &i in items {
            counts[i as usize] += 1;
        }
        let candidates: Vec<u32> = (0..n_items as u32)
            .filter(|&i| counts[i as usize] > 0)
            .collect();
        let popularity = PopularityBaseline::new(&candidates, items.iter().copied());
        Self {
            candidates,
            train_by_user: group_by_user(n_users, users, items),
            popularity,
        }
    }

    /// Candidate item rows, ascending.
    pub(crate) fn candidate_rows(&self) -> &[u32] {
        &self.candidates
    }

    /// Number of candidates.
    pub(crate) fn candidates(&self) -> usize {
        self.candidates.len()
    }

    fn train_items_of(&self, user: u32) -> &[u32] {
        self.train_by_user.row(user as usize)
    }

    /// The held-out interactions of a split (`users[i]` held out `items[i]`).
    pub(crate) fn held_out(&self, users: &[u32], items: &[u32]) -> HeldOut {
        let train_items = Exclusions::from_rows(users.iter().map(|&u| self.train_items_of(u)));
        HeldOut {
            users: users.to_vec(),
            queries: users.to_vec(),
            targets: items.to_vec(),
            seen: SeenItems::train_only(train_items),
        }
    }

    /// The test split's `held_out`: each user's history also holds its items of the split held
    /// out before (`users[j]` held out item row `items[j]`: the validation split), which
    /// `masked_all` removes.
    pub(crate) fn with_earlier(
        &self,
        mut held_out: HeldOut,
        users: &[u32],
        items: &[u32],
    ) -> Result<HeldOut, TrainError> {
        let by_user = group_by_user(self.train_by_user.rows(), users, items);
        let earlier =
            Exclusions::from_rows(held_out.users.iter().map(|&u| by_user.row(u as usize)));
        let seen = std::mem::take(&mut held_out.seen);
        held_out.seen = seen.with_earlier(&earlier).map_err(retrieval_error)?;
        Ok(held_out)
    }

    /// Embeds query `j` from row `j` of the users table (one expanded with the history feature).
    pub(crate) fn with_query_per_row(mut held_out: HeldOut) -> HeldOut {
        held_out.queries = (0..held_out.users.len() as u32).collect();
        held_out
    }

    /// The popularity baseline's report under each of `variants`.
    pub(crate) fn popularity(
        &self,
        held_out: &HeldOut,
        variants: &[ProtocolVariant],
        cutoffs: &[usize],
    ) -> Result<Vec<RankingReport>, TrainError> {
        variants
            .iter()
            .map(|&v| {
                self.popularity
                    .evaluate(&held_out.targets, v, &held_out.seen, cutoffs)
                    .map_err(retrieval_error)
            })
            .collect()
    }

    /// The model's report under each of `variants`: user and candidate embeddings in evaluation
    /// mode, ranked by inner product (of the L2-normalised embeddings for cosine similarity; the
    /// temperature is positive and does not change the order).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn evaluate(
        &self,
        model: &Dssm,
        model_config: &ModelConfig,
        users: &SideTable,
        items: &SideTable,
        held_out: &HeldOut,
        variants: &[ProtocolVariant],
        cutoffs: &[usize],
        batch_size: usize,
    ) -> Result<Vec<RankingReport>, TrainError> {
        let dim = model_config.output_dim();
        let cosine = model_config.similarity == Similarity::Cosine;
        let item_vectors = embed_rows(
            model,
            model_config,
            items,
            Side::Item,
            &self.candidates,
            batch_size,
            cosine,
        )?;
        let user_vectors = embed_rows(
            model,
            model_config,
            users,
            Side::User,
            &held_out.queries,
            batch_size,
            cosine,
        )?;
        self.rank(
            item_vectors,
            &user_vectors,
            dim,
            held_out,
            variants,
            cutoffs,
        )
    }

    /// The reports of query vectors `user_vectors` (one per held-out interaction, `[n, dim]`)
    /// against the candidates' vectors `item_vectors` (`[candidates, dim]`, candidate order).
    pub(crate) fn rank(
        &self,
        item_vectors: Vec<f32>,
        user_vectors: &[f32],
        dim: usize,
        held_out: &HeldOut,
        variants: &[ProtocolVariant],
        cutoffs: &[usize],
    ) -> Result<Vec<RankingReport>, TrainError> {
        let matrix = EmbeddingMatrix::new(self.candidates.clone(), dim, item_vectors)
            .map_err(retrieval_error)?;
        let index = ExactIndex::new(matrix);
        let queries = MatrixView::new(user_vectors, dim).map_err(retrieval_error)?;
        variants
            .iter()
            .map(|&v| {
                let ahead = index
                    .items_ahead_of_targets(
                        queries,
                        &held_out.targets,
                        v.exclusions(&held_out.seen),
                    )
                    .map_err(retrieval_error)?;
                Ok(RankingReport::from_items_ahead(v.name(), &ahead, cutoffs))
            })
            .collect()
    }
}

/// The item rows of each of `n_users` user rows (`users[i]` has `items[i]`), in split order.
fn group_by_user(n_users: usize, users: &[u32], items: &[u32]) -> Exclusions {
    let mut offsets = vec![0usize; n_users + 1];
    for &u in users {
        offsets[u as usize + 1] += 1;
    }
    for u in 0..n_users {
        offsets[u + 1] += offsets[u];
    }
    let mut fill = offsets.clone();
    let mut grouped = vec![0u32; users.len()];
    for (&u, &i) in users.iter().zip(items) {
        grouped[fill[u as usize]] = i;
        fill[u as usize] += 1;
    }
    Exclusions::new(offsets, grouped).expect("offsets are running counts ending at the item count")
}

/// Tower outputs of `rows` of one side, `[rows, dim]` row-major, in evaluation mode; each row
/// L2-normalised when `normalize`.
pub(crate) fn embed_rows(
    model: &Dssm,
    model_config: &ModelConfig,
    table: &SideTable,
    side: Side,
    rows: &[u32],
    batch_size: usize,
    normalize: bool,
) -> Result<Vec<f32>, TrainError> {
    let dim = model_config.output_dim();
    let mut out = Vec::with_capacity(rows.len() * dim);
    let mut buffers = GatherBuffers::default();
    for chunk in rows.chunks(batch_size.max(1)) {
        let batch = table.batch(model_config, chunk, &mut buffers, model.device())?;
        let embedded = model
            .encode(side, &batch, Mode::Eval)
            .map_err(TrainError::model)?;
        out.extend(
            embedded
                .flatten_all()
                .and_then(|t| t.to_dtype(candle_core::DType::F32))
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(TrainError::tensor("reading embeddings"))?,
        );
    }
    if normalize {
        for row in out.chunks_mut(dim) {
            let norm = (row.iter().map(|x| x * x).sum::<f32>() + COSINE_EPS).sqrt();
            row.iter_mut().for_each(|x| *x /= norm);
        }
    }
    Ok(out)
}

/// One line per report: `HR@10 .. NDCG@10 .. MRR ..`.
pub(crate) fn describe(report: &RankingReport) -> String {
    let mut parts: Vec<String> = report
        .at_k
        .iter()
        .map(|m| format!("HR@{} {:.4}", m.k, m.hit_rate))
        .collect();
    parts.extend(
        report
            .at_k
            .iter()
            .map(|m| format!("NDCG@{} {:.4}", m.k, m.ndcg)),
    );
    parts.push(format!("MRR {:.4}", report.mrr));
    format!(
        "{:<8} {} ({} users, {} misses)",
        report.variant,
        parts.join(", "),
        report.users,
        report.misses
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setup_groups_train_items_and_counts_candidates() {
        // 3 users, 5 items; item 4 never in train.
        let users = [0, 0, 1, 2, 2, 2];
        let items = [1, 2, 1, 0, 3, 1];
        let setup = RetrievalSetup::new(3, 5, &users, &items);
        assert_eq!(setup.candidates, vec![0, 1, 2, 3]);
        assert_eq!(setup.train_items_of(0), &[1, 2]);
        assert_eq!(setup.train_items_of(1), &[1]);
        assert_eq!(setup.train_items_of(2), &[0, 3, 1]);
        let held = setup.held_out(&[2, 0], &[2, 4]);
        assert_eq!(held.seen.train().row(0), &[0, 3, 1]);
        // Popularity: item 1 (3x), then 0, 2, 3 (1x each, by id). User 2's target 2 is third
        // unmasked, first once 0, 3, 1 are masked; user 0's target 4 is no candidate: a miss.
        let reports = setup
            .popularity(
                &held,
                &[ProtocolVariant::Unmasked, ProtocolVariant::Masked],
                &[1, 3],
            )
            .unwrap();
        assert_eq!(reports[0].misses, 1);
        assert_eq!(reports[0].at(1).unwrap().hit_rate, 0.0);
        assert_eq!(reports[0].at(3).unwrap().hit_rate, 0.5);
        assert_eq!(reports[1].at(1).unwrap().hit_rate, 0.5);
        assert!(describe(&reports[1]).starts_with("masked"));
    }

    #[test]
    fn the_test_history_holds_every_validation_item_of_its_user() {
        let setup = RetrievalSetup::new(3, 5, &[0, 0, 1, 2], &[1, 2, 1, 0]);
        // Validation (protocol `time`): user 2 held out items 3 and 4, user 0 item 0, user 1 none.
        let held = setup.held_out(&[2, 0, 1], &[1, 3, 2]);
        let held = setup.with_earlier(held, &[2, 0, 2], &[3, 0, 4]).unwrap();
        let history = held.seen.history();
        let rows: Vec<&[u32]> = (0..history.rows()).map(|i| history.row(i)).collect();
        assert_eq!(rows, [&[0, 3, 4][..], &[1, 2, 0], &[1]]);
        assert_eq!(held.seen.train().row(0), &[0]);
    }
}
