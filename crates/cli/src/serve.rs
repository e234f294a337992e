//! `dssm serve`: argument parsing over `dssm-serve`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use dssm_recommend::{HnswConfig, IndexKind};

use crate::retrieve::IndexArg;

/// Options of `dssm serve`.
#[derive(Debug, Clone, Args)]
#[command(
    after_help = "Routes: POST /v1/recommend, POST /v1/user-embedding, GET /v1/items/{id}/similar, \
    GET /v1/items?q=, GET /v1/users/{id}, GET /health, GET /metrics, GET /openapi.json, GET / (a page \
    to try the model), POST /admin/reload (or SIGHUP). SIGINT/SIGTERM stop it after the requests in \
    flight.\n\nExamples:\n  \
    dssm serve --run runs/ml-1m-leave-last-out\n  \
    dssm serve --run runs/quickstart --addr 127.0.0.1:0 --index hnsw\n  \
    curl -s localhost:8080/v1/recommend -H 'content-type: application/json' -d '{\"user_id\": 42, \"k\": 10}'"
)]
pub struct ServeArgs {
    /// A run folder written by `dssm train`.
    #[arg(long, value_name = "DIR", env = "DSSM_RUN")]
    pub run: PathBuf,
    /// Where to listen (port 0: a free one, printed at start).
    #[arg(long, default_value = "127.0.0.1:8080", env = "DSSM_ADDR")]
    pub addr: SocketAddr,
    /// Exact search, or an HNSW graph over the item embeddings (approximate): mapped from
    /// <run>/embeddings/item_index.hnsw when `dssm export --index hnsw` saved one (refused by name
    /// if stale or damaged), built at start otherwise.
    #[arg(long, value_enum, default_value_t = IndexArg::Exact, env = "DSSM_INDEX")]
    pub index: IndexArg,
    /// Requests answered at once; more are refused with 503 at once.
    #[arg(long, default_value_t = 256, env = "DSSM_MAX_IN_FLIGHT")]
    pub max_in_flight: usize,
    /// The largest request body, in bytes (larger: 413).
    #[arg(long, default_value_t = 64 * 1024, env = "DSSM_BODY_LIMIT")]
    pub body_limit: usize,
    /// Worker threads [default: one per core].
    #[arg(long, env = "DSSM_THREADS")]
    pub threads: Option<usize>,
}

/// Runs the server until SIGINT or SIGTERM.
pub fn serve(args: &ServeArgs) -> Result<()> {
    let mut config = dssm_serve::ServeConfig::new(args.run.clone());
    config.addr = args.addr;
    config.index = match args.index {
        IndexArg::Exact => IndexKind::Exact,
        IndexArg::Hnsw => IndexKind::Hnsw(HnswConfig::default()),
    };
    config.max_in_flight = args.max_in_flight;
    config.body_limit = args.body_limit;
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = args.threads {
        runtime.worker_threads(threads.max(1));
    }
    let runtime = runtime
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(dssm_serve::run(config))?;
    Ok(())
}
