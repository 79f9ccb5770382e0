//! What the HTTP sources share: reading a body within its size limit, the trace context of a
//! request, and the replies every source gives the same way.

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use erpstream_schemas::Traceparent;
use serde_json::json;

use super::fields::FieldError;

/// Why a request's body was not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// It is (or declares to be) larger than this many bytes: `413`.
    TooLarge(usize),
    /// It did not arrive whole: the client stopped sending, or missed the listener's body
    /// deadline (`http.limits.body_timeout`): `408`.
    Incomplete(String),
}

impl BodyError {
    /// The refusal's name in metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            BodyError::TooLarge(_) => "payload_too_large",
            BodyError::Incomplete(_) => "body_incomplete",
        }
    }
}

impl IntoResponse for BodyError {
    fn into_response(self) -> Response {
        match self {
            BodyError::TooLarge(limit) => too_large(limit),
            BodyError::Incomplete(reason) => (
                StatusCode::REQUEST_TIMEOUT,
                axum::Json(json!({"error": "request body incomplete", "field": "body",
                    "reason": reason})),
            )
                .into_response(),
        }
    }
}

/// The body, whole and at most `limit` bytes.
pub async fn read_limited(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, BodyError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(BodyError::TooLarge(limit));
    }
    axum::body::to_bytes(body, limit).await.map_err(|err| {
        let over = std::error::Error::source(&err)
            .is_some_and(|e| e.is::<http_body_util::LengthLimitError>());
        if over {
            BodyError::TooLarge(limit)
        } else {
            BodyError::Incomplete(err.to_string())
        }
    })
}

/// A child of the request's `traceparent`, or a new trace.
pub fn trace_of(headers: &HeaderMap) -> Traceparent {
    headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(Traceparent::parse)
        .map(|t| t.child())
        .unwrap_or_else(Traceparent::new_root)
}

/// `413` naming the limit.
pub fn too_large(limit: usize) -> Response {
    (
        StatusCode::PAYLOAD_TOO_LARGE,
        axum::Json(json!({"error": "payload too large", "limit_bytes": limit})),
    )
        .into_response()
}

/// `401`; `challenge` is the `WWW-Authenticate` scheme, if the caller can answer one.
pub fn unauthorized(reason: &str, challenge: Option<&'static str>) -> Response {
    let mut response = (
        StatusCode::UNAUTHORIZED,
        axum::Json(json!({"error": "unauthorized", "reason": reason})),
    )
        .into_response();
    if let Some(scheme) = challenge {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(scheme));
    }
    response
}

/// `status` naming the refused field.
pub fn invalid(status: StatusCode, error: &FieldError) -> Response {
    (
        status,
        axum::Json(
            json!({"error": "invalid payload", "field": error.field, "reason": error.reason}),
        ),
    )
        .into_response()
}

/// `503` with `Retry-After`: nothing was acknowledged, the caller should send again.
pub fn retry_later(reason: &str, retry_after_secs: u64) -> Response {
    let mut response = (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(json!({"error": "not acknowledged, retry later", "reason": reason})),
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    response
}

/// `500`: the handler failed unexpectedly (logged); nothing is known to be stored.
pub fn internal_error() -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        axum::Json(json!({"error": "internal error", "reason": "see the pipeline's log"})),
    )
        .into_response()
}
