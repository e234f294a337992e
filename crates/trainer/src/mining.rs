//! Offline hard-negative mining (`sampler.hard.mine_every`), as Facebook's embedding-based
//! retrieval does it: before every `mine_every`-th epoch the model as it stands embeds the
//! candidates and one query per training user, `dssm-retrieval`'s exact index ranks the
//! catalogue for each user (its train items left out), and `dssm-sampler`'s [`BandNegatives`]
//! keeps the ranks of `sampler.hard.band`. The epoch's negatives then come from
//! [`fill_mixed_negatives`]: each from the band with probability `sampler.hard.fraction`, else
//! from the `[sampler]` strategy, all from (seed, epoch).
//!
//! The bands are a function of the weights at the start of the mining epoch. A run resumed at
//! an epoch between two minings has lost those weights: it mines at once with the weights it
//! resumes from (and says so), so it matches the uninterrupted run only when resumed at a mining
//! epoch or before the first one.

use std::sync::Mutex;
use std::time::Instant;

use dssm_model::{Dssm, ModelConfig, Side, Similarity};
use dssm_retrieval::{EmbeddingMatrix, ExactIndex, Exclusions, MatrixView, TopK};
use dssm_sampler::{BandNegatives, MixedSampler, RankBand, UserItems, fill_mixed_negatives};

use crate::batches::AnySampler;
use crate::config::RunConfig;
use crate::error::TrainError;
use crate::retrieval::embed_rows;
use crate::tables::SideTable;

/// The mining state of a run: what a mining reads, and the bands of the last one.
pub(crate) struct Mining {
    band: RankBand,
    every: usize,
    fraction: f64,
    batch_size: usize,
    /// One row per base user, as a validation query sees the user.
    queries: SideTable,
    /// The base user of each user id the epoch builder draws negatives for.
    base_users: Vec<u32>,
    /// The train items of each base user: never hard negatives, never drawn.
    positives: UserItems,
    /// Item rows ranked (the items with train interactions).
    candidates: Vec<u32>,
    bands: Mutex<Option<BandNegatives>>,
}

impl Mining {
    /// The mining of `config` (`None` when `sampler.hard.mine_every` is 0). `queries` has one
    /// row per base user; `base_users[u]` is the base user of the builder's user id `u`;
    /// `train` holds the builder's (user id, item row) train pairs; `train_counts` each item's
    /// train interactions.
    pub(crate) fn new(
        config: &RunConfig,
        queries: SideTable,
        base_users: Vec<u32>,
        train: (&[u32], &[u32]),
        train_counts: &[u32],
    ) -> Result<Option<Self>, TrainError> {
        let hard = &config.sampler.hard;
        if hard.mine_every == 0 {
            return Ok(None);
        }
        let sampler_error = |e: dssm_sampler::SamplerError| TrainError::Sampler {
            message: e.to_string(),
        };
        let band = RankBand::new(hard.band[0], hard.band[1]).map_err(sampler_error)?;
        let pairs: Vec<(u32, u32)> = train
            .0
            .iter()
            .zip(train.1)
            .map(|(&u, &i)| (base_users[u as usize], i))
            .collect();
        let positives = UserItems::from_pairs(queries.rows(), train_counts.len(), &pairs)
            .map_err(sampler_error)?;
        let candidates = (0..train_counts.len() as u32)
            .filter(|&i| train_counts[i as usize] > 0)
            .collect();
        Ok(Some(Self {
            band,
            every: hard.mine_every,
            fraction: hard.fraction,
            batch_size: config.train.eval_batch_size,
            queries,
            base_users,
            positives,
            candidates,
            bands: Mutex::new(None),
        }))
    }

    /// Mines before `epoch` (0-based) when it is due: at every positive multiple of
    /// `mine_every`, and at a resumed epoch past the first mining that has no bands yet.
    pub(crate) fn prepare(
        &self,
        epoch: usize,
        model: &Dssm,
        model_config: &ModelConfig,
        items: &SideTable,
    ) -> Result<(), TrainError> {
        if epoch < self.every {
            return Ok(());
        }
        let mut bands = self.lock()?;
        let scheduled = epoch.is_multiple_of(self.every);
        if !scheduled && bands.is_some() {
            return Ok(());
        }
        if !scheduled {
            tracing::warn!(
                "epoch {}: mining hard negatives with the resumed weights (an uninterrupted run \
                 mined at epoch {})",
                epoch + 1,
                epoch - epoch % self.every + 1
            );
        }
        let started = Instant::now();
        let mined = self.mine(model, model_config, items)?;
        let users = mined.num_users();
        let full = (0..users as u32)
            .filter(|&u| mined.band_of(u).len() == self.band.len())
            .count();
        tracing::info!(
            "epoch {}: mined ranks {}-{} for {users} users ({full} with a full band) in {:.1} s",
            epoch + 1,
            self.band.first(),
            self.band.last(),
            started.elapsed().as_secs_f64()
        );
        *bands = Some(mined);
        Ok(())
    }

    /// Every base user's band under `model`.
    fn mine(
        &self,
        model: &Dssm,
        model_config: &ModelConfig,
        items: &SideTable,
    ) -> Result<BandNegatives, TrainError> {
        let dim = model_config.output_dim();
        let cosine = model_config.similarity == Similarity::Cosine;
        let embed = |table, side, rows: &[u32]| {
            embed_rows(
                model,
                model_config,
                table,
                side,
                rows,
                self.batch_size,
                cosine,
            )
        };
        let item_vectors = embed(items, Side::Item, &self.candidates)?;
        let query_rows: Vec<u32> = (0..self.queries.rows() as u32).collect();
        let user_vectors = embed(&self.queries, Side::User, &query_rows)?;
        let retrieval_error = |e: dssm_retrieval::Error| TrainError::Retrieval {
            message: e.to_string(),
        };
        let matrix = EmbeddingMatrix::new(self.candidates.clone(), dim, item_vectors)
            .map_err(retrieval_error)?;
        let index = ExactIndex::new(matrix);
        let queries = MatrixView::new(&user_vectors, dim).map_err(retrieval_error)?;
        let exclusions = Exclusions::from_rows(
            query_rows
                .iter()
                .map(|&u| self.positives.get(u).map_or(&[][..], |p| p.items())),
        );
        let top = index
            .top_k(queries, self.band.last(), Some(&exclusions))
            .map_err(retrieval_error)?;
        let rankings: Vec<Vec<u32>> = top
            .iter()
            .map(|row| row.iter().map(|s| s.id).collect())
            .collect();
        BandNegatives::from_rankings(
            self.band,
            self.positives.num_items(),
            rankings.iter().map(Vec::as_slice),
            Some(&self.positives),
        )
        .map_err(|e| TrainError::Sampler {
            message: e.to_string(),
        })
    }

    /// Whether a mining has run: the epoch's negatives are mixed.
    pub(crate) fn active(&self) -> Result<bool, TrainError> {
        Ok(self.lock()?.is_some())
    }

    /// `per_user` negatives for each of `users` (the builder's user ids), mixed from the bands
    /// and `sampler`, from (seed, epoch); `None` before the first mining.
    pub(crate) fn draw(
        &self,
        sampler: &AnySampler,
        users: &[u32],
        per_user: usize,
        (seed, epoch): (u64, u64),
    ) -> Result<Option<Vec<u32>>, TrainError> {
        let bands = self.lock()?;
        let Some(bands) = bands.as_ref() else {
            return Ok(None);
        };
        let sampler_error = |e: dssm_sampler::SamplerError| TrainError::Sampler {
            message: e.to_string(),
        };
        let mixed = MixedSampler::new(bands, sampler, self.fraction).map_err(sampler_error)?;
        let base: Vec<u32> = users.iter().map(|&u| self.base_users[u as usize]).collect();
        let mut out = vec![0u32; users.len() * per_user];
        fill_mixed_negatives(
            &mixed,
            &base,
            per_user,
            Some(&self.positives),
            seed,
            epoch,
            &mut out,
        )
        .map_err(sampler_error)?;
        Ok(Some(out))
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Option<BandNegatives>>, TrainError> {
        self.bands.lock().map_err(|_| TrainError::Sampler {
            message: "the hard-negative bands' lock is poisoned".to_string(),
        })
    }
}
