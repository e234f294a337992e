//! The JSON API: request bodies, their translation into [`dssm_recommend::Query`], and the
//! handlers. The handlers only translate; the [`Recommender`] answers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::{Extension, Json};
use dssm_recommend::{Query, Recommender, ScoredItem, User};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::error::ApiError;

/// The model a request was admitted under: taken before its body is read, so a reload while it
/// is in flight does not change its answer.
#[derive(Clone)]
pub(crate) struct Snapshot(pub(crate) Arc<Recommender>);

/// The body of `POST /v1/recommend` and `POST /v1/user-embedding`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct QueryBody {
    user_id: Option<UserKey>,
    features: Option<Map<String, Value>>,
    /// Movie ids, oldest first, newest last ([`Query::recent_items`]).
    #[serde(default)]
    recent_items: Vec<u32>,
    #[serde(default = "default_k")]
    k: usize,
    #[serde(default)]
    exclude_seen: bool,
    #[serde(default)]
    exclude: Vec<u32>,
}

/// A user key: a number (MovieLens ids) or a string (keys of one's own data).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum UserKey {
    Number(u64),
    Text(String),
}

fn default_k() -> usize {
    10
}

impl QueryBody {
    /// The library query, checking what the types cannot: one of `user_id` or `features`, and
    /// feature names the model knows.
    fn into_query(self, recommender: &Recommender) -> Result<Query, ApiError> {
        let user = match (self.user_id, self.features) {
            (Some(_), Some(_)) => {
                return Err(ApiError::bad_request(
                    "features: give either user_id (a known user) or features (a new user), not both",
                ));
            }
            (Some(UserKey::Number(id)), None) => User::Known(id.to_string()),
            (Some(UserKey::Text(key)), None) => User::Known(key),
            (None, Some(features)) => User::New(feature_values(features, recommender)?),
            (None, None) if !self.recent_items.is_empty() => User::New(Vec::new()),
            (None, None) => {
                return Err(ApiError::bad_request(
                    "user_id: give a user_id (a known user), or features and/or recent_items (a new user)",
                ));
            }
        };
        Ok(Query {
            user,
            recent_items: self.recent_items,
            k: self.k,
            exclude_seen: self.exclude_seen,
            exclude: self.exclude,
        })
    }
}

/// A new user's features as `(name, raw text)`: strings as they are, numbers and booleans
/// printed, lists joined with `|`.
fn feature_values(
    features: Map<String, Value>,
    recommender: &Recommender,
) -> Result<Vec<(String, String)>, ApiError> {
    let known = recommender.feature_names();
    let mut given = Vec::with_capacity(features.len());
    for (name, value) in features {
        if !known.contains(&name) {
            return Err(dssm_recommend::Error::UnknownFeature {
                name,
                known: known.to_vec(),
            }
            .into());
        }
        let text = match value {
            Value::Array(values) => values
                .iter()
                .map(scalar_text)
                .collect::<Option<Vec<_>>>()
                .map(|parts| parts.join("|")),
            other => scalar_text(&other),
        };
        let Some(text) = text else {
            return Err(ApiError::bad_request(format!(
                "features.{name}: expected a string, a number, a boolean or a list of them"
            )));
        };
        given.push((name, text));
    }
    Ok(given)
}

fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `Json<T>` whose rejections (malformed JSON, unknown fields, a wrong type, a body over the
/// limit, a missing content type) are [`ApiError`]s with the extractor's status and message.
pub(crate) struct JsonBody<T>(pub(crate) T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(JsonBody(value)),
            Err(rejection) => Err(ApiError {
                status: rejection.status(),
                message: json_rejection_message(&rejection),
            }),
        }
    }
}

fn json_rejection_message(rejection: &JsonRejection) -> String {
    match rejection {
        JsonRejection::JsonDataError(e) => format!(
            "body: {}",
            e.body_text()
                .trim_start_matches("Failed to deserialize the JSON body into the target type: ")
        ),
        JsonRejection::JsonSyntaxError(e) => format!("body: malformed JSON: {}", e.body_text()),
        JsonRejection::MissingJsonContentType(_) => {
            "content-type: expected application/json".to_string()
        }
        JsonRejection::BytesRejection(e)
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE =>
        {
            "body: larger than the limit of this server".to_string()
        }
        other => format!("body: {}", other.body_text()),
    }
}

/// `Path<T>` with [`ApiError`] rejections.
pub(crate) struct PathParam<T>(pub(crate) T);

impl<S, T> FromRequestParts<S> for PathParam<T>
where
    axum::extract::Path<T>: FromRequestParts<S, Rejection = PathRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(PathParam(value)),
            Err(rejection) => Err(ApiError {
                status: rejection.status(),
                message: format!("path: {}", rejection.body_text()),
            }),
        }
    }
}

/// `Query<T>` with [`ApiError`] rejections.
pub(crate) struct QueryParams<T>(pub(crate) T);

impl<S, T> FromRequestParts<S> for QueryParams<T>
where
    axum::extract::Query<T>: FromRequestParts<S, Rejection = QueryRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(QueryParams(value)),
            Err(rejection) => Err(ApiError {
                status: rejection.status(),
                message: format!(
                    "query: {}",
                    rejection
                        .body_text()
                        .trim_start_matches("Failed to deserialize query string: ")
                ),
            }),
        }
    }
}

/// An item with its metadata (movie id, display columns) and, when scored, its score.
pub(crate) fn item_json(recommender: &Recommender, id: u32, score: Option<f32>) -> Value {
    let mut item = Map::new();
    item.insert("movie_id".into(), json!(id));
    if let Some(view) = recommender.item(id) {
        if view.key() != id.to_string() {
            item.insert("key".into(), json!(view.key()));
        }
        for (name, value) in view.attributes() {
            item.insert(name.into(), json!(value));
        }
    }
    if let Some(score) = score {
        item.insert("score".into(), json!(score));
    }
    Value::Object(item)
}

fn scored(recommender: &Recommender, items: &[ScoredItem]) -> Vec<Value> {
    items
        .iter()
        .map(|s| item_json(recommender, s.id, Some(s.score)))
        .collect()
}

fn took_ms(started: Instant) -> f64 {
    (started.elapsed().as_secs_f64() * 1e6).round() / 1e3
}

/// `POST /v1/recommend`.
pub(crate) async fn recommend(
    Extension(Snapshot(recommender)): Extension<Snapshot>,
    JsonBody(body): JsonBody<QueryBody>,
) -> Result<Json<Value>, ApiError> {
    let started = Instant::now();
    let query = body.into_query(&recommender)?;
    let found = recommender.recommend(&query)?;
    Ok(Json(json!({
        "model_id": recommender.model_id(),
        "items": scored(&recommender, &found.items),
        "notes": found.notes,
        "took_ms": took_ms(started),
    })))
}

/// `POST /v1/user-embedding`.
pub(crate) async fn user_embedding(
    Extension(Snapshot(recommender)): Extension<Snapshot>,
    JsonBody(body): JsonBody<QueryBody>,
) -> Result<Json<Value>, ApiError> {
    let started = Instant::now();
    let query = body.into_query(&recommender)?;
    let vector = recommender.user_vector(&query)?;
    Ok(Json(json!({
        "model_id": recommender.model_id(),
        "dim": vector.vector.len(),
        "normalized": recommender.normalized(),
        "embedding": vector.vector,
        "notes": vector.notes,
        "took_ms": took_ms(started),
    })))
}

/// The query string of `GET /v1/items/{movie_id}/similar`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SimilarParams {
    #[serde(default = "default_k")]
    k: usize,
}

/// `GET /v1/items/{movie_id}/similar?k=10`.
pub(crate) async fn similar(
    Extension(Snapshot(recommender)): Extension<Snapshot>,
    PathParam(movie_id): PathParam<u32>,
    QueryParams(params): QueryParams<SimilarParams>,
) -> Result<Json<Value>, ApiError> {
    let started = Instant::now();
    let items = recommender.similar(movie_id, params.k)?;
    Ok(Json(json!({
        "model_id": recommender.model_id(),
        "item": item_json(&recommender, movie_id, None),
        "items": scored(&recommender, &items),
        "took_ms": took_ms(started),
    })))
}

/// `GET /v1/items/{movie_id}`.
pub(crate) async fn item(
    Extension(Snapshot(recommender)): Extension<Snapshot>,
    PathParam(movie_id): PathParam<u32>,
) -> Result<Json<Value>, ApiError> {
    if recommender.item(movie_id).is_none() {
        return Err(dssm_recommend::Error::UnknownItems {
            field: "movie_id",
            ids: vec![movie_id],
        }
        .into());
    }
    Ok(Json(item_json(&recommender, movie_id, None)))
}

/// The query string of `GET /v1/items`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SearchParams {
    q: String,
    #[serde(default = "default_k")]
    limit: usize,
}

/// `GET /v1/items?q=toy&limit=10`: items whose title (or any display column) contains `q`.
pub(crate) async fn search_items(
    Extension(Snapshot(recommender)): Extension<Snapshot>,
    QueryParams(params): QueryParams<SearchParams>,
) -> Result<Json<Value>, ApiError> {
    if !(1..=100).contains(&params.limit) {
        return Err(ApiError::bad_request(format!(
            "limit: must be between 1 and 100, found {}",
            params.limit
        )));
    }
    let items: Vec<Value> = recommender
        .search_items(&params.q, params.limit)
        .iter()
        .map(|view| item_json(&recommender, view.id(), None))
        .collect();
    Ok(Json(json!({ "items": items })))
}

/// The query string of `GET /v1/users/{user_id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UserParams {
    #[serde(default = "default_k")]
    recent: usize,
}

/// `GET /v1/users/{user_id}`: a known user's display columns and last interactions (newest
/// first, for display; a query's `recent_items` are oldest first).
pub(crate) async fn user(
    Extension(Snapshot(recommender)): Extension<Snapshot>,
    PathParam(key): PathParam<String>,
    QueryParams(params): QueryParams<UserParams>,
) -> Result<Json<Value>, ApiError> {
    let user = recommender.user(&key)?;
    let attributes: HashMap<&str, Option<&str>> = user.attributes.iter().copied().collect();
    let recent: Vec<Value> = user
        .recent
        .iter()
        .take(params.recent.min(1000))
        .map(|&id| item_json(&recommender, id, None))
        .collect();
    Ok(Json(json!({
        "user_id": user.key,
        "attributes": attributes,
        "interactions": user.recent.len(),
        "recent": recent,
    })))
}
