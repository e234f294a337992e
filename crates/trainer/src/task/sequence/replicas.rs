//! Data-parallel steps of the sequence task (`train.replicas`): the batch's windows split into
//! parts whose losses and gradients are computed side by side on single-threaded pools, one per
//! core (at most one per part), each op single-threaded. Candle splits every small op over the cores, and at this model's sizes the
//! threads mostly wait for each other; whole parts side by side keep both cores busy.
//!
//! The catalogue (the item tower over every movie, and the token table) is computed once per
//! step: the parts read it as leaf variables, their gradients with respect to it are added, and
//! the sum goes back through the item tower once (the chain rule: the gradient of
//! `sum(vectors * d_vectors) + sum(tokens * d_tokens)`). Gradients are added in part order,
//! so a result depends on `train.replicas` and not on the thread count.

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use dssm_model::{Dssm, Mode, catalogue_softmax_cross_entropy};

use super::{SequenceTask, Window};
use crate::error::TrainError;
use crate::seeds::{STREAM_REPLICAS, derive_seed};
use crate::step::StepLoss;
use crate::tables::GatherBuffers;

/// One part's share of the batch loss and its gradients.
struct PartGradients {
    loss: f64,
    grads: GradStore,
}

impl SequenceTask<'_> {
    /// The full-softmax loss of `windows` in `train.replicas` parts (see the module docs);
    /// dropout masks from `seed` (the item tower's as in one graph, each part's from its own
    /// stream).
    pub(super) fn replicated_loss(
        &self,
        model: &Dssm,
        windows: &[Window],
        seed: u64,
        buffers: &mut GatherBuffers,
    ) -> Result<StepLoss, TrainError> {
        let (vectors, tokens) = self.catalogue(model, Mode::Train { seed: seed ^ 1 }, buffers)?;
        let leaf = |t: &Tensor| {
            Var::from_tensor(&t.detach()).map_err(TrainError::tensor("detaching the catalogue"))
        };
        let (vector_leaf, token_leaf) = (leaf(&vectors)?, leaf(&tokens)?);
        let positions: usize = windows.iter().map(Window::targets).sum();
        let size = windows.len().div_ceil(self.config.train.replicas).max(1);
        let chunks: Vec<&[Window]> = windows.chunks(size).collect();
        let catalogue = (vector_leaf.as_tensor(), token_leaf.as_tensor());
        let part = |p: usize| {
            let seed = derive_seed(seed, 0, STREAM_REPLICAS, p as u64);
            self.part_gradients(model, chunks[p], catalogue, seed, positions)
        };
        let parts = on_pools(self.replica_pools()?, chunks.len(), &part);
        let (mut loss, mut grads) = (0.0, None::<GradStore>);
        for part in parts {
            let part = part?;
            loss += part.loss;
            match grads.as_mut() {
                None => grads = Some(part.grads),
                Some(sum) => sum
                    .extend(part.grads)
                    .map_err(TrainError::tensor("adding the parts' gradients"))?,
            }
        }
        let mut grads = grads.unwrap_or_default();
        let through = [
            (vectors, grads.remove(vector_leaf.as_tensor())),
            (tokens, grads.remove(token_leaf.as_tensor())),
        ];
        grads
            .extend(item_tower_gradients(through)?)
            .map_err(TrainError::tensor("adding the item tower's gradients"))?;
        Ok(StepLoss::Gradients { value: loss, grads })
    }

    /// One single-threaded rayon pool per worker (`min(train.replicas, threads of rayon's
    /// global pool)`), built at the first call; none with one replica (everything then runs on
    /// the calling thread, as one graph does).
    pub(super) fn replica_pools(&self) -> Result<&[rayon::ThreadPool], TrainError> {
        let workers = match self.config.train.replicas {
            1 => 0,
            replicas => replicas.min(rayon::current_num_threads()),
        };
        let pools = self.replica_pools.get_or_init(|| {
            (0..workers)
                .map(|_| rayon::ThreadPoolBuilder::new().num_threads(1).build())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())
        });
        pools.as_deref().map_err(|e| TrainError::Unsupported {
            message: format!("train.replicas: no thread pool: {e}"),
        })
    }

    /// The loss of `windows` over the catalogue `(vectors, tokens)`, weighted by their share of
    /// the batch's `positions`, and its gradients.
    fn part_gradients(
        &self,
        model: &Dssm,
        windows: &[Window],
        (vectors, tokens): (&Tensor, &Tensor),
        seed: u64,
        positions: usize,
    ) -> Result<PartGradients, TrainError> {
        let step = self.step_inputs(windows, seed, &mut GatherBuffers::default())?;
        let q = step.queries(model, tokens, &step.padded.ids)?;
        let share = step.targets.len() as f64 / positions.max(1) as f64;
        let excluded = step.excluded.clone();
        let loss =
            catalogue_softmax_cross_entropy(&q, vectors, &step.targets, excluded, self.scale())
                .and_then(|l| l * share)
                .map_err(TrainError::tensor("computing the loss"))?;
        let value = loss
            .to_dtype(candle_core::DType::F32)
            .and_then(|l| l.to_scalar::<f32>())
            .map_err(TrainError::tensor("reading the loss"))?;
        let grads = loss
            .backward()
            .map_err(TrainError::tensor("backpropagating"))?;
        Ok(PartGradients {
            loss: f64::from(value),
            grads,
        })
    }
}

/// The gradients of the item tower's variables, given each output's summed gradient (`None`:
/// no part read it).
fn item_tower_gradients(outputs: [(Tensor, Option<Tensor>); 2]) -> Result<GradStore, TrainError> {
    let mut surrogate: Option<Tensor> = None;
    for (output, grad) in outputs {
        let Some(grad) = grad else { continue };
        let term = (output * grad)
            .and_then(|t| t.sum_all())
            .map_err(TrainError::tensor("weighting the catalogue"))?;
        surrogate = Some(match surrogate {
            None => term,
            Some(s) => (s + term).map_err(TrainError::tensor("weighting the catalogue"))?,
        });
    }
    match surrogate {
        Some(s) => s
            .backward()
            .map_err(TrainError::tensor("backpropagating the item tower")),
        None => Ok(GradStore::default()),
    }
}

/// `job(j)` for every `j < jobs`, in order of `j`: worker `w` computes jobs `w`, `w + workers`,
/// ... on `pools[w]` (one pool per worker, single-threaded), so the results do not depend on the
/// number of pools.
pub(super) fn on_pools<T: Send>(
    pools: &[rayon::ThreadPool],
    jobs: usize,
    job: &(dyn Fn(usize) -> T + Sync),
) -> Vec<T> {
    let workers = pools.len().min(jobs);
    if workers <= 1 {
        return (0..jobs).map(job).collect();
    }
    let mut done: Vec<Option<T>> = (0..jobs).map(|_| None).collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = pools[..workers]
            .iter()
            .enumerate()
            .map(|(w, pool)| {
                scope.spawn(move || {
                    pool.install(|| {
                        (w..jobs)
                            .step_by(workers)
                            .map(|j| (j, job(j)))
                            .collect::<Vec<_>>()
                    })
                })
            })
            .collect();
        for handle in handles {
            for (j, result) in handle.join().expect("a replica worker panicked") {
                done[j] = Some(result);
            }
        }
    });
    done.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pools(n: usize) -> Vec<rayon::ThreadPool> {
        (0..n)
            .map(|_| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(1)
                    .build()
                    .unwrap()
            })
            .collect()
    }

    #[test]
    fn jobs_come_back_in_order_whatever_the_pools_and_run_on_each_pool() {
        let job = |j: usize| (j * j, std::thread::current().id());
        for n in [0, 1, 2, 3] {
            let pools = pools(n);
            let done = on_pools(&pools, 7, &job);
            let values: Vec<usize> = done.iter().map(|d| d.0).collect();
            assert_eq!(values, [0, 1, 4, 9, 16, 25, 36], "{n} pools");
            let threads: std::collections::HashSet<_> = done.iter().map(|d| d.1).collect();
            // Job j runs on pool j % n: as many threads as pools (this thread without pools).
            assert_eq!(threads.len(), n.max(1), "{n} pools");
            if n >= 2 {
                assert_eq!(done[0].1, done[n].1);
                assert_ne!(done[0].1, done[1].1);
            }
        }
        assert!(on_pools(&pools(2), 0, &job).is_empty());
    }
}
