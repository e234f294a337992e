//! [`train`]: a run config in, a run folder out. Wires the dataset's inputs, the task of the
//! config's protocol and the learner together.

use std::path::PathBuf;

use crate::config::RunConfig;
use crate::error::TrainError;
use crate::inputs::{Inputs, dataset_info, open_dataset};
use crate::learner::Learner;
use crate::provenance::{absolute, code_version};
use crate::report::TrainReport;
use crate::run_folder::{RunFolder, RunInfo};
use crate::task::{AnyTask, build};

/// Options of one [`train`] call that are not part of the run config.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// Continue from `checkpoints/last` of the run folder (the config must match apart from
    /// `train.epochs`). Without a checkpoint there the call fails
    /// ([`TrainError::NoCheckpointToResume`]; an unreadable one:
    /// [`TrainError::CorruptCheckpoint`]) and the run folder is left as it was. Default false.
    pub resume: bool,
    /// Use this run folder instead of `output.dir`. Default none.
    pub run_dir: Option<PathBuf>,
    /// Allow a fresh run in a folder that already holds a run (its files are replaced).
    /// Default false.
    pub overwrite: bool,
    /// Stop after this many completed epochs in this call, as if the process had been
    /// interrupted: checkpoints are written, the final test evaluation is not done and the
    /// report's `metrics.test` is `None`. For tests of resume. Default none.
    pub stop_after_epochs: Option<usize>,
    /// Show progress bars (only ever drawn when stderr is a terminal). Default false.
    pub progress: bool,
}

/// Trains a model as configured, writes the run folder and evaluates the best-validation
/// checkpoint on the test split once, at the end. See the crate docs for the run folder.
pub fn train(config: &RunConfig, options: &TrainOptions) -> Result<TrainReport, TrainError> {
    config.check()?;
    apply_threads(config.train.threads);
    let run_dir = absolute(options.run_dir.as_deref().unwrap_or(&config.output.dir));
    let data_path = absolute(&config.data.path);
    let inputs = Inputs::new(
        config,
        None,
        open_dataset(&data_path, config.data.protocol)?,
    )?;
    let on_engine = crate::fused::uses_engine(config, &inputs.model_config, &inputs.device)?;
    let info = RunInfo {
        seed: config.train.seed,
        code_version: code_version(),
        dataset: dataset_info(&inputs.dataset, &data_path)?,
        protocol: config.data.protocol.to_string(),
    };
    let folder = RunFolder::new(run_dir);
    let learner = Learner::start(
        config,
        options,
        folder,
        &inputs.model_config,
        &inputs.device,
        on_engine,
    )?;
    // Written once the checkpoint to resume from has been read: a refused resume leaves the run
    // folder as it was.
    let manifest_path = data_path.join("manifest.json");
    let manifest = std::fs::read(&manifest_path).map_err(TrainError::io("read", &manifest_path))?;
    learner.write_run_files(&info, &manifest)?;
    match build(config, inputs)? {
        AnyTask::Pointwise(task) => learner.fit(task.as_ref(), &info),
        AnyTask::Retrieval(task) => learner.fit(task.as_ref(), &info),
        AnyTask::Sequence(task) => learner.fit(task.as_ref(), &info),
    }
}

/// Sizes rayon's global pool to `threads` (0: rayon's default); a pool built earlier stays.
fn apply_threads(threads: usize) {
    if threads > 0
        && let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()
    {
        tracing::warn!("train.threads = {threads} not applied: {e}");
    }
}

#[cfg(test)]
mod tests;
