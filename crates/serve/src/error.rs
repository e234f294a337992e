//! Errors: of starting the server ([`ServeError`]) and of one request ([`ApiError`], a JSON body
//! `{"error": "..."}` that names the field at fault).

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The run folder could not be loaded.
    #[error(transparent)]
    Load(#[from] dssm_recommend::Error),
    /// The address could not be bound, or serving failed.
    #[error("cannot {action} {addr}: {source}")]
    Io {
        /// What was attempted.
        action: &'static str,
        /// The address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A configuration value is out of range.
    #[error("{field}: {message}")]
    Config {
        /// The setting.
        field: &'static str,
        /// What is allowed.
        message: String,
    },
}

/// A request that could not be answered: its status and a message naming the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The status (4xx for bad input and overload).
    pub status: StatusCode,
    /// The message.
    pub message: String,
}

impl ApiError {
    /// A 400 with `message`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }
}

impl From<dssm_recommend::Error> for ApiError {
    fn from(error: dssm_recommend::Error) -> Self {
        use dssm_recommend::Error as E;
        let status = match &error {
            E::UnknownUser { .. }
            | E::UnknownItems {
                field: "movie_id", ..
            } => StatusCode::NOT_FOUND,
            e if e.is_bad_query() => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self {
            status,
            message: error_chain(&error),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// An error and its causes, joined by ": ".
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}
