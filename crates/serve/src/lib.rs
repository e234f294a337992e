//! HTTP serving of a trained run (axum on tokio): the user tower per request, top-K search over
//! the item embeddings, item-to-item similarity, health, Prometheus metrics, an OpenAPI document,
//! a page to try the model, atomic reload and graceful shutdown.
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/recommend` | `{"user_id": 42, "k": 10, "exclude_seen": true}` or `{"features": {...}, "recent_items": [...], "k": 10, "exclude": [...]}` (`recent_items` oldest first, newest last) -> `{"model_id", "items": [{"movie_id", "title", "year", "genres", "score"}], "notes", "took_ms"}` |
//! | `POST /v1/user-embedding` | the same query -> `{"model_id", "dim", "normalized", "embedding", "notes", "took_ms"}` |
//! | `GET /v1/items/{movie_id}/similar?k=10` | item-to-item |
//! | `GET /v1/items/{movie_id}`, `GET /v1/items?q=TEXT` | item metadata, search by title |
//! | `GET /v1/users/{user_id}` | a known user's display columns and last items |
//! | `GET /health`, `GET /metrics`, `GET /openapi.json`, `GET /` | status, Prometheus text, the API, a page |
//! | `POST /admin/reload` | `{"run": DIR}` (optional): swap in a run; a broken one is refused (422) |
//!
//! Bad input is a 4xx with `{"error": "..."}` naming the field. At most
//! [`ServeConfig::max_in_flight`] requests are answered at once; one more gets a 503 at once.
//! Each request is admitted with the model of that moment, so a reload never changes an answer
//! in flight.
//!
//! The library type [`dssm_recommend::Recommender`] answers; this crate only translates HTTP.
//!
//! ```no_run
//! # async fn demo() -> Result<(), dssm_serve::ServeError> {
//! let mut config = dssm_serve::ServeConfig::new("runs/ml-1m-leave-last-out".into());
//! config.addr = "127.0.0.1:0".parse().unwrap();
//! let server = dssm_serve::Server::bind(config).await?;
//! println!("listening on {}", server.local_addr());
//! server.serve(dssm_serve::shutdown_signal()).await
//! # }
//! ```
#![deny(missing_docs)]

mod api;
mod error;
mod metrics;
mod server;

pub use error::{ApiError, ServeError};
pub use server::{OPENAPI, ServeConfig, Server, run, shutdown_signal};
