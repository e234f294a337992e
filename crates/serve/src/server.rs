//! The router, its middleware (metrics, in-flight bound, body limit), reloading, and the
//! listener's life cycle (start, graceful shutdown, signals).

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use dssm_recommend::{IndexKind, Recommender};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Mutex, Semaphore};

use crate::api::{self, Snapshot};
use crate::error::{ApiError, ServeError, error_chain};
use crate::metrics::Metrics;

/// The page served at `GET /`.
const PAGE: &str = include_str!("page.html");
/// The OpenAPI document served at `GET /openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

/// How the server runs.
///
/// ```
/// let config = dssm_serve::ServeConfig::new("runs/ml-1m-leave-last-out".into());
/// assert_eq!(config.addr.to_string(), "127.0.0.1:8080");
/// assert_eq!(config.max_in_flight, 256);
/// ```
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The run folder to serve.
    pub run: PathBuf,
    /// Where to listen (default `127.0.0.1:8080`; port 0 picks a free one).
    pub addr: SocketAddr,
    /// Exact search or HNSW (default exact).
    pub index: IndexKind,
    /// Requests answered at once; one more is refused with 503 at once (default 256).
    pub max_in_flight: usize,
    /// The largest request body in bytes; a larger one is a 413 (default 64 KiB).
    pub body_limit: usize,
}

impl ServeConfig {
    /// The defaults for `run`.
    pub fn new(run: PathBuf) -> Self {
        Self {
            run,
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            index: IndexKind::Exact,
            max_in_flight: 256,
            body_limit: 64 * 1024,
        }
    }

    fn check(&self) -> Result<(), ServeError> {
        if self.max_in_flight == 0 {
            return Err(ServeError::Config {
                field: "max_in_flight",
                message: "must be at least 1".into(),
            });
        }
        if self.body_limit == 0 {
            return Err(ServeError::Config {
                field: "body_limit",
                message: "must be at least 1 byte".into(),
            });
        }
        Ok(())
    }
}

/// Shared by every request.
struct AppState {
    model: ArcSwap<Recommender>,
    /// The run folder of the model being served (reloads default to it).
    run: std::sync::Mutex<PathBuf>,
    index: IndexKind,
    reloading: Mutex<()>,
    permits: Arc<Semaphore>,
    max_in_flight: usize,
    metrics: Metrics,
}

/// A bound listener with its model loaded, ready to [`serve`](Server::serve).
pub struct Server {
    listener: TcpListener,
    state: Arc<AppState>,
    body_limit: usize,
}

impl Server {
    /// Loads the run (on a blocking thread) and binds `config.addr`.
    pub async fn bind(config: ServeConfig) -> Result<Self, ServeError> {
        config.check()?;
        let (run, index) = (config.run.clone(), config.index);
        let recommender = load_blocking(run, index).await?;
        Self::bind_with(recommender, config).await
    }

    /// Binds `config.addr` to serve an already loaded `recommender` (`config.run` is where
    /// reloads look by default).
    pub async fn bind_with(
        recommender: Recommender,
        config: ServeConfig,
    ) -> Result<Self, ServeError> {
        config.check()?;
        let listener = TcpListener::bind(config.addr)
            .await
            .map_err(|source| ServeError::Io {
                action: "listen on",
                addr: config.addr.to_string(),
                source,
            })?;
        let state = Arc::new(AppState {
            model: ArcSwap::from_pointee(recommender),
            run: std::sync::Mutex::new(config.run.clone()),
            index: config.index,
            reloading: Mutex::new(()),
            permits: Arc::new(Semaphore::new(config.max_in_flight)),
            max_in_flight: config.max_in_flight,
            metrics: Metrics::default(),
        });
        Ok(Self {
            listener,
            state,
            body_limit: config.body_limit,
        })
    }

    /// The address listened on (with the port picked when it was 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound TCP listener has an address")
    }

    /// Serves until `shutdown` completes, then lets the requests in flight finish.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let addr = self.local_addr();
        let app = router(self.state, self.body_limit);
        axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|source| ServeError::Io {
                action: "serve on",
                addr: addr.to_string(),
                source,
            })
    }

    /// Reloads the model on SIGHUP until the process ends (Unix; elsewhere nothing). Call it
    /// inside the runtime.
    pub fn reload_on_sighup(&self) {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            // Registered here, before serving starts, so that no SIGHUP finds the default action
            // (which ends the process).
            let Ok(mut hangups) = signal(SignalKind::hangup()) else {
                tracing::warn!("cannot listen for SIGHUP; reload through POST /admin/reload");
                return;
            };
            let state = self.state.clone();
            tokio::spawn(async move {
                while hangups.recv().await.is_some() {
                    match reload(&state, None).await {
                        Ok(done) => tracing::info!("SIGHUP: reloaded {}", done["model_id"]),
                        Err(e) => tracing::warn!("SIGHUP: reload refused: {}", e.message),
                    }
                }
            });
        }
    }
}

/// Serves `config` until SIGINT or SIGTERM (then finishes the requests in flight); SIGHUP
/// reloads the run folder. Prints the address once listening.
pub async fn run(config: ServeConfig) -> Result<(), ServeError> {
    let server = Server::bind(config).await?;
    let model_id = server.state.model.load().model_id().to_string();
    println!("serving    {model_id} on http://{}", server.local_addr());
    server.reload_on_sighup();
    server.serve(shutdown_signal()).await?;
    println!("stopped    (SIGINT/SIGTERM; requests in flight finished)");
    Ok(())
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}

async fn load_blocking(run: PathBuf, index: IndexKind) -> Result<Recommender, ServeError> {
    tokio::task::spawn_blocking(move || Recommender::load(&run, index))
        .await
        .map_err(|e| ServeError::Io {
            action: "load the model for",
            addr: "the server".into(),
            source: std::io::Error::other(e.to_string()),
        })?
        .map_err(ServeError::from)
}

fn router(state: Arc<AppState>, body_limit: usize) -> Router {
    let limited = Router::new()
        .route("/v1/recommend", post(api::recommend))
        .route("/v1/user-embedding", post(api::user_embedding))
        .route("/v1/items", get(api::search_items))
        .route("/v1/items/{movie_id}", get(api::item))
        .route("/v1/items/{movie_id}/similar", get(api::similar))
        .route("/v1/users/{user_id}", get(api::user))
        .route("/admin/reload", post(admin_reload))
        .route_layer(middleware::from_fn_with_state(state.clone(), admit));
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .merge(limited)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Counts every response by route and status, with its latency; adds `x-total-time` (ms).
async fn observe(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_string();
    let mut response = next.run(request).await;
    let took = started.elapsed();
    state
        .metrics
        .record(&route, response.status().as_u16(), took);
    if let Ok(value) = format!("{:.3}", took.as_secs_f64() * 1e3).parse() {
        response.headers_mut().insert("x-total-time", value);
    }
    response
}

/// Admits a request if fewer than `max_in_flight` are being answered (else 503 at once), and
/// gives it the model to answer with.
async fn admit(State(state): State<Arc<AppState>>, mut request: Request, next: Next) -> Response {
    let Ok(permit) = state.permits.clone().try_acquire_owned() else {
        state
            .metrics
            .rejected
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: format!(
                "overloaded: {} requests in flight, the limit of this server; retry later",
                state.max_in_flight
            ),
        }
        .into_response();
    };
    request
        .extensions_mut()
        .insert(Snapshot(state.model.load_full()));
    let response = next.run(request).await;
    drop(permit);
    response
}

async fn health(State(state): State<Arc<AppState>>) -> Json<Value> {
    let model = state.model.load();
    Json(json!({
        "status": "ok",
        "model_id": model.model_id(),
        "run": model.run_dir(),
        "candidates": model.candidates(),
        "dim": model.dim(),
        "index": match model.index_kind() { IndexKind::Exact => "exact", IndexKind::Hnsw(_) => "hnsw" },
        "index_file": model.index_file(),
        "uses_history": model.uses_history(),
        "features": model.feature_names(),
    }))
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let in_flight = state.max_in_flight - state.permits.available_permits();
    let text = state.metrics.render(
        state.model.load().model_id(),
        in_flight,
        state.max_in_flight,
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn not_found(request: Request) -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        message: format!(
            "path: no route {} (see /openapi.json)",
            request.uri().path()
        ),
    }
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        message: format!(
            "method: {} is not allowed on {} (see /openapi.json)",
            request.method(),
            request.uri().path()
        ),
    }
}

/// The body of `POST /admin/reload` (optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReloadBody {
    /// Another run folder; default: the one being served.
    run: Option<PathBuf>,
}

async fn admin_reload(
    State(state): State<Arc<AppState>>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let body: ReloadBody = if body.iter().all(u8::is_ascii_whitespace) {
        ReloadBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message: format!("body: {e}"),
        })?
    };
    reload(&state, body.run).await.map(Json)
}

/// Loads `run` (default: the run being served) and swaps it in; requests already admitted finish
/// on the old model. A run that does not load is refused (422) and the old model keeps serving.
async fn reload(state: &Arc<AppState>, run: Option<PathBuf>) -> Result<Value, ApiError> {
    let _one_at_a_time = state.reloading.lock().await;
    let started = Instant::now();
    let run = match run {
        Some(run) => run,
        None => state.run.lock().map(|r| r.clone()).unwrap_or_default(),
    };
    let previous = state.model.load().model_id().to_string();
    match load_blocking(run.clone(), state.index).await {
        Ok(recommender) => {
            let model_id = recommender.model_id().to_string();
            state.model.store(Arc::new(recommender));
            if let Ok(mut current) = state.run.lock() {
                *current = run.clone();
            }
            state
                .metrics
                .reloads
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(json!({
                "model_id": model_id,
                "previous_model_id": previous,
                "run": run,
                "took_ms": started.elapsed().as_secs_f64() * 1e3,
            }))
        }
        Err(error) => {
            state
                .metrics
                .failed_reloads
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Err(ApiError {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                message: format!(
                    "run: refused, still serving {previous}: {}",
                    error_chain(&error)
                ),
            })
        }
    }
}
