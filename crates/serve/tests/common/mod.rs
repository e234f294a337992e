//! Shared by the serving tests: tiny runs trained once on synthetic data, and a server started on
//! an ephemeral loopback port that stops when its handle is dropped.

#![allow(dead_code)]

pub mod http;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use dssm_serve::{ServeConfig, Server};

/// Two runs on the same synthetic `leave-last-out` dataset (different seeds, so different model
/// ids), with the history feature, a broken copy (corrupt weights), and a run of the sequence
/// tower on the same data.
pub struct Runs {
    _dir: tempfile::TempDir,
    pub a: PathBuf,
    pub b: PathBuf,
    pub broken: PathBuf,
    pub sequence: PathBuf,
}

pub fn runs() -> &'static Runs {
    static RUNS: OnceLock<Runs> = OnceLock::new();
    RUNS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("synthetic-llo");
        let synthetic = dssm_data::SyntheticConfig {
            users: 150,
            items: 120,
            ratings: 6_000,
            ..dssm_data::SyntheticConfig::default()
        };
        let mut request = dssm_data::PrepareRequest::new(
            dssm_data::Source::Synthetic(synthetic),
            dssm_data::DatasetKind::Synthetic,
            &data,
        );
        request.protocol = dssm_data::Protocol::LeaveLastOut;
        dssm_data::prepare(&request, &|_| {}).unwrap();
        let a = train(&data, &dir.path().join("run-a"), 1);
        let b = train(&data, &dir.path().join("run-b"), 2);
        let sequence = train_sequence(&data, &dir.path().join("run-sequence"));
        let broken = dir.path().join("run-broken");
        copy_dir(&b, &broken);
        let weights = broken.join("checkpoints/best").join(dssm_model_weights());
        std::fs::write(&weights, b"not safetensors").unwrap();
        Runs {
            _dir: dir,
            a,
            b,
            broken,
            sequence,
        }
    })
}

fn dssm_model_weights() -> &'static str {
    "model.safetensors"
}

fn train(data: &Path, run: &Path, seed: u64) -> PathBuf {
    train_config(&format!(
        r#"
[data]
path = {data:?}
protocol = "leave-last-out"
[features]
history_len = 3
[model.user_tower]
hidden = [16, 8]
l2_normalize = true
[model.item_tower]
hidden = [16, 8]
l2_normalize = true
[train]
batch_size = 512
epochs = 1
select_metric = "hit_rate"
seed = {seed}
[output]
dir = {run:?}
"#
    ))
}

/// The sequence tower (max_len 5) with gender and age, one epoch.
fn train_sequence(data: &Path, run: &Path) -> PathBuf {
    train_config(&format!(
        r#"
[data]
path = {data:?}
protocol = "leave-last-out"
[features]
user = ["gender", "age"]
item = ["movie_id", "genres"]
embedding_dim = 8
[model.user_tower]
hidden = [16, 8]
l2_normalize = true
[model.item_tower]
hidden = [16, 8]
l2_normalize = true
[model.sequence]
enabled = true
max_len = 5
blocks = 1
heads = 2
[sampler]
strategy = "none"
[loss]
kind = "full_softmax"
temperature = 0.1
[train]
batch_size = 64
epochs = 1
select_metric = "hit_rate"
[output]
dir = {run:?}
"#
    ))
}

/// Trains the run config `text` and returns its run folder.
fn train_config(text: &str) -> PathBuf {
    let config = dssm_trainer::RunConfig::from_toml_str(text).unwrap();
    dssm_trainer::train(&config, &dssm_trainer::TrainOptions::default())
        .unwrap()
        .run_dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A server on 127.0.0.1:0; dropping it (or [`Running::stop`]) shuts it down gracefully.
pub struct Running {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), dssm_serve::ServeError>>>,
}

impl Running {
    pub async fn start(run: &Path, adjust: impl FnOnce(&mut ServeConfig)) -> Running {
        let mut config = ServeConfig::new(run.to_path_buf());
        config.addr = "127.0.0.1:0".parse().unwrap();
        adjust(&mut config);
        let server = Server::bind(config).await.expect("the server starts");
        let addr = server.local_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(async move {
            let _ = stopped.await;
        }));
        Running {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Asks for a graceful shutdown and waits until the server has stopped.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }

    pub async fn get(&self, path: &str) -> http::Response {
        http::request(self.addr, "GET", path, None).await
    }

    pub async fn post(&self, path: &str, json: &str) -> http::Response {
        http::request(self.addr, "POST", path, Some(json)).await
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
