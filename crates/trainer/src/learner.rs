//! The learner: epochs, the learning-rate schedule, optimizer steps on Candle or the CPU engine,
//! validation, best-by-validation checkpoints and early stopping (decided by [`crate::policy`],
//! carried out by the run folder), resume, progress, the NaN stop and the metrics files. It
//! drives a [`Task`] and knows nothing about protocols.

use std::io::IsTerminal;
use std::time::Instant;

use candle_core::Device;
use dssm_model::engine::CpuEngine;
use dssm_model::{Dssm, ModelConfig};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::config::RunConfig;
use crate::error::TrainError;
use crate::optim::{Optimizer, learning_rate};
use crate::policy::{BestTracker, Slot, after_epoch};
use crate::provenance::peak_rss_mib;
use crate::report::{EpochRecord, FinalMetrics, TrainReport};
use crate::run_folder::{CheckpointContents, RunFolder, RunInfo, TrainState, layout};
use crate::seeds::{STREAM_DROPOUT, derive_seed};
use crate::step::{StepLoss, Stepper};
use crate::task::{Batches, Task, Validation};
use crate::train::TrainOptions;

/// A model, its optimizer and the training state, in a run folder.
pub(crate) struct Learner<'a> {
    config: &'a RunConfig,
    options: &'a TrainOptions,
    folder: RunFolder,
    model: Dssm,
    /// Holds the weights while an epoch trains on the CPU engine.
    engine: Option<CpuEngine>,
    optimizer: Optimizer,
    state: TrainState,
    started: Instant,
}

impl<'a> Learner<'a> {
    /// A fresh model in an empty (or, with `overwrite`, emptied) run folder, or the state of
    /// `checkpoints/last` with `options.resume`. Nothing is written before a resume point has
    /// been read.
    pub(crate) fn start(
        config: &'a RunConfig,
        options: &'a TrainOptions,
        folder: RunFolder,
        model_config: &ModelConfig,
        device: &Device,
        on_engine: bool,
    ) -> Result<Self, TrainError> {
        let started = Instant::now();
        let (model, state, resume_from) = if options.resume {
            let dir = folder.resume_point(config)?;
            tracing::info!("resuming from {}", dir.display());
            let (model, state) = read_checkpoint(&dir, model_config, device)?;
            (model, state, Some(dir))
        } else {
            folder.start_fresh(options.overwrite)?;
            let model = Dssm::new(model_config.clone(), config.train.seed, device)
                .map_err(TrainError::model)?;
            let metric = config.train.select_metric;
            let tracker = BestTracker::new(metric.higher_is_better(), config.train.patience);
            (model, TrainState::fresh(tracker), None)
        };
        let engine = on_engine
            .then(|| CpuEngine::new(&model))
            .transpose()
            .map_err(TrainError::model)?;
        let on = if on_engine {
            "the CPU engine"
        } else {
            "Candle"
        };
        tracing::info!("training on {on}");
        let mut optimizer = Optimizer::new(&config.optimizer, model.named_vars().to_vec());
        if let Some(dir) = &resume_from {
            optimizer
                .load(dir)
                .map_err(|e| corrupt(dir, e.to_string()))?;
        }
        Ok(Self {
            config,
            options,
            folder,
            model,
            engine,
            optimizer,
            state,
            started,
        })
    }

    /// Writes the run's own files: the config as used, `run.json`, the dataset's manifest and
    /// the completed epochs' `metrics.jsonl`.
    pub(crate) fn write_run_files(
        &self,
        info: &RunInfo,
        manifest: &[u8],
    ) -> Result<(), TrainError> {
        let folder = &self.folder;
        folder.write(layout::CONFIG, self.config.to_toml_string().as_bytes())?;
        folder.write_json(layout::RUN, info)?;
        folder.write(layout::DATASET_MANIFEST, manifest)?;
        folder.write_epochs(&self.state.records)
    }

    /// Trains the remaining epochs of `task`, then (unless stopped by
    /// `options.stop_after_epochs`) evaluates the best checkpoint on the test split and writes
    /// `metrics.json`.
    pub(crate) fn fit<T: Task>(
        mut self,
        task: &T,
        info: &RunInfo,
    ) -> Result<TrainReport, TrainError> {
        let mut epochs_trained = 0;
        let mut interrupted = false;
        while self.state.epoch < self.config.train.epochs && !self.state.stopped_early {
            if self
                .options
                .stop_after_epochs
                .is_some_and(|n| epochs_trained >= n)
            {
                interrupted = true;
                break;
            }
            self.epoch(task)?;
            epochs_trained += 1;
        }
        let mut metrics = self.final_metrics(task, info);
        if !interrupted {
            self.test(task, &mut metrics)?;
        }
        Ok(TrainReport {
            run_dir: self.folder.dir().to_path_buf(),
            metrics,
            epochs: self.state.records,
            epochs_trained,
        })
    }

    /// Trains, validates and checkpoints one epoch.
    fn epoch<T: Task>(&mut self, task: &T) -> Result<(), TrainError> {
        let epoch = self.state.epoch; // 0-based index of the epoch being trained
        let epoch_started = Instant::now();
        task.prepare_epoch(epoch, &self.model)?;
        let batches = task.epoch(epoch)?;
        let (loss, lr) = self.train_steps(task, &batches, epoch)?;
        if let Some(engine) = &self.engine {
            engine.store(&self.model).map_err(TrainError::model)?;
        }
        let seconds = epoch_started.elapsed().as_secs_f64();
        self.state.train_seconds += seconds;
        self.state.train_rows += batches.samples() as u64;
        let validation = self
            .validates(epoch)
            .then(|| task.validate(&self.model))
            .transpose()?;
        let record = EpochRecord {
            epoch: epoch + 1,
            train_loss: loss,
            train_rows: batches.samples(),
            steps: batches.steps(),
            lr,
            samples_per_sec: batches.samples() as f64 / seconds.max(1e-9),
            wall_s: self.started.elapsed().as_secs_f64(),
            val: None,
            val_hit_rate: None,
            val_ndcg: None,
        };
        self.end_epoch(record, validation)
    }

    /// Whether epoch `epoch` (0-based) is validated: every `train.eval_every`, and the last.
    fn validates(&self, epoch: usize) -> bool {
        let train = &self.config.train;
        (epoch + 1).is_multiple_of(train.eval_every) || epoch + 1 == train.epochs
    }

    /// Records the epoch, carries out the checkpoint plan and rewrites the metrics files.
    fn end_epoch(
        &mut self,
        mut record: EpochRecord,
        validation: Option<Validation>,
    ) -> Result<(), TrainError> {
        if let Some(v) = &validation {
            v.record_into(&mut record);
        }
        let summary = validation
            .as_ref()
            .map(Validation::summary)
            .unwrap_or_default();
        tracing::info!(
            "epoch {}/{}: loss {:.5}, {:.0} samples/s, lr {:.2e}{summary}",
            record.epoch,
            self.config.train.epochs,
            record.train_loss,
            record.samples_per_sec,
            record.lr,
        );
        let metric = self.config.train.select_metric;
        self.state.epoch = record.epoch;
        self.state.records.push(record);
        let selected = validation.as_ref().map(|v| v.value(metric));
        let plan = after_epoch(&mut self.state.tracker, self.state.epoch, selected);
        if let (true, Some(v)) = (plan.new_best, validation) {
            self.state.best_val = v.pointwise;
            self.state.best_val_ranking = v.ranking;
        }
        if plan.stop {
            tracing::info!(
                "early stop after epoch {}: no improvement of val {} in {} validations",
                self.state.epoch,
                metric.name(),
                self.config.train.patience
            );
            self.state.stopped_early = true;
        }
        let contents = CheckpointContents {
            model: &self.model,
            optimizer: &self.optimizer,
            state: &self.state,
        };
        for action in &plan.actions {
            self.folder.apply(action, Some(&contents))?;
        }
        self.folder.write_epochs(&self.state.records)?;
        match crate::plot::training_svg(&self.state.records) {
            Ok(svg) => self.folder.write(layout::PLOT, svg.as_bytes()),
            Err(e) => {
                tracing::warn!("training.svg not drawn: {e}");
                Ok(())
            }
        }
    }

    /// Runs the epoch's steps; returns (mean loss, last learning rate).
    fn train_steps<T: Task>(
        &mut self,
        task: &T,
        batches: &T::Batches,
        epoch: usize,
    ) -> Result<(f64, f64), TrainError> {
        let config = self.config;
        let steps = batches.steps();
        let bar = epoch_bar(self.options, batches.rows(), epoch, config.train.epochs);
        let mut buffers = T::Buffers::default();
        let mut total_loss = 0.0f64;
        let mut lr = config.optimizer.lr;
        for step in 0..steps {
            let global_step = self.state.global_step;
            lr = learning_rate(&config.schedule, config.optimizer.lr, epoch, global_step);
            let dropout_seed = derive_seed(config.train.seed, epoch, STREAM_DROPOUT, step as u64);
            let mut stepper = match self.engine.as_mut() {
                Some(engine) => Stepper::Fused(engine),
                None => Stepper::Candle(&self.model),
            };
            let loss = task.loss(batches, step, &mut stepper, dropout_seed, &mut buffers)?;
            let value = self.update(loss, lr, (epoch, step))?;
            self.state.global_step += 1;
            total_loss += f64::from(value);
            bar.inc(batches.batch_rows(step) as u64);
            if step % 20 == 0 {
                bar.set_message(format!("loss {:.4}", total_loss / (step + 1) as f64));
            }
        }
        bar.finish_and_clear();
        Ok((total_loss / steps.max(1) as f64, lr))
    }

    /// One optimizer step from a batch's loss; the loss value, or the NaN stop.
    fn update(&mut self, loss: StepLoss, lr: f64, at: (usize, usize)) -> Result<f32, TrainError> {
        let (value, grads) = match loss {
            StepLoss::Graph(loss) => {
                let value = loss
                    .to_dtype(candle_core::DType::F32)
                    .and_then(|l| l.to_scalar::<f32>())
                    .map_err(TrainError::tensor("reading the loss"))?;
                let value = self.finite(value, at)?;
                let grads = loss
                    .backward()
                    .map_err(TrainError::tensor("backpropagating"))?;
                (value, grads)
            }
            StepLoss::Gradients { value, grads } => (self.finite(value as f32, at)?, grads),
            StepLoss::Computed(value) => return self.engine_update(value, lr, at),
        };
        self.optimizer
            .step(&grads, lr)
            .map_err(TrainError::tensor("updating weights"))?;
        Ok(value)
    }

    /// One optimizer step on the engine's flat weights from the gradient it holds.
    fn engine_update(
        &mut self,
        value: f64,
        lr: f64,
        at: (usize, usize),
    ) -> Result<f32, TrainError> {
        let value = self.finite(value as f32, at)?;
        let run_error = |message: String| TrainError::Run {
            path: self.folder.dir().to_path_buf(),
            message,
        };
        let engine = self
            .engine
            .as_mut()
            .ok_or_else(|| run_error("a computed loss without the engine".to_string()))?;
        let (params, grads) = engine.params_mut();
        self.optimizer
            .step_flat(params, grads, lr)
            .map_err(|e| run_error(e.to_string()))?;
        Ok(value)
    }

    /// `value`, or the NaN stop at (epoch, step) naming the last good checkpoint.
    fn finite(&self, value: f32, (epoch, step): (usize, usize)) -> Result<f32, TrainError> {
        if value.is_finite() {
            return Ok(value);
        }
        Err(TrainError::NonFiniteLoss {
            epoch: epoch + 1,
            step,
            value,
            checkpoint: self.folder.checkpoint_dir(Slot::Last),
        })
    }

    /// The final record as it stands before the test.
    fn final_metrics<T: Task>(&self, task: &T, info: &RunInfo) -> FinalMetrics {
        let (config, state) = (self.config, &self.state);
        let (best_epoch, _) = state.tracker.best().unwrap_or((0, f64::NAN));
        let best = Validation {
            pointwise: state.best_val,
            ranking: state.best_val_ranking.clone(),
        };
        let mut metrics = FinalMetrics {
            protocol: config.data.protocol.to_string(),
            dataset: info.dataset.clone(),
            seed: config.train.seed,
            config: config.clone(),
            code_version: info.code_version.clone(),
            select_metric: config.train.select_metric.name().to_string(),
            best_epoch,
            epochs_completed: state.epoch,
            stopped_early: state.stopped_early,
            val: None,
            test: None,
            val_hit_rate: None,
            checkpoint: String::new(),
            wall_s: self.started.elapsed().as_secs_f64(),
            train_samples_per_sec: state.train_rows as f64 / state.train_seconds.max(1e-9),
            engine: if self.engine.is_some() {
                "fused"
            } else {
                "candle"
            }
            .to_string(),
            peak_rss_mib: peak_rss_mib(),
            retrieval: None,
        };
        best.final_into(&mut metrics);
        task.report(&best, &mut metrics);
        metrics
    }

    /// The test of the best checkpoint, reloaded from disk; writes `metrics.json`.
    fn test<T: Task>(&self, task: &T, metrics: &mut FinalMetrics) -> Result<(), TrainError> {
        let best_dir = self
            .folder
            .find_checkpoint(Slot::Best)
            .ok_or_else(|| TrainError::Run {
                path: self.folder.dir().to_path_buf(),
                message: "no best checkpoint: validation never produced a finite metric"
                    .to_string(),
            })?;
        let best = Dssm::load(&best_dir, self.model.device()).map_err(TrainError::model)?;
        task.test(&best, metrics)?;
        metrics.checkpoint = RunFolder::checkpoint_id(&best_dir, metrics.best_epoch);
        metrics.wall_s = self.started.elapsed().as_secs_f64();
        metrics.peak_rss_mib = peak_rss_mib();
        self.folder.write_json(layout::METRICS, metrics)
    }
}

/// The model and state of the checkpoint a resume continues from.
fn read_checkpoint(
    dir: &std::path::Path,
    model_config: &ModelConfig,
    device: &Device,
) -> Result<(Dssm, TrainState), TrainError> {
    let model = Dssm::load(dir, device).map_err(|e| corrupt(dir, e.to_string()))?;
    if model.config() != model_config {
        return Err(TrainError::Run {
            path: dir.to_path_buf(),
            message: "the checkpoint's model config differs from this config's".to_string(),
        });
    }
    let state = RunFolder::read_state(dir).map_err(|e| corrupt(dir, e.to_string()))?;
    Ok((model, state))
}

fn corrupt(dir: &std::path::Path, message: String) -> TrainError {
    TrainError::CorruptCheckpoint {
        path: dir.to_path_buf(),
        message,
    }
}

/// The progress bar of one epoch (hidden unless asked for and stderr is a terminal).
fn epoch_bar(options: &TrainOptions, rows: usize, epoch: usize, epochs: usize) -> ProgressBar {
    if !(options.progress && std::io::stderr().is_terminal()) {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(rows as u64), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {per_sec} {msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(format!("{}/{epochs}", epoch + 1));
    bar
}
