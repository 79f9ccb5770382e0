//! What the HTTP sources share: reading a body within its size limit, the trace context of a
//! request, and the replies every source gives the same way.

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use erpstream_schemas::Traceparent;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa::openapi::security::SecurityScheme;

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
            BodyError::Incomplete(reason) => ErrorBody::new("request body incomplete")
                .field("body")
                .reason(reason)
                .respond(StatusCode::REQUEST_TIMEOUT),
        }
    }
}

/// The body of every refusal on the listener: what kind of refusal, the field to blame
/// (when one is) and why, in words that say what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// The kind of refusal, in a few words (`invalid payload`, `unauthorized`).
    pub error: String,
    /// The refused field: a path into the body (`line_items[0].quantity`), `body`,
    /// `headers`, `query` or a path parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Why, and what to do about it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl ErrorBody {
    /// A refusal of kind `error`.
    pub fn new(error: impl Into<String>) -> Self {
        Self {
            error: error.into(),
            field: None,
            reason: None,
        }
    }

    /// Blames `field`.
    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// Says why.
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    /// The response with `status`.
    pub fn respond(self, status: StatusCode) -> Response {
        (status, axum::Json(self)).into_response()
    }

    /// The response with `status` and `Retry-After: retry_after_secs`.
    pub fn respond_later(self, status: StatusCode, retry_after_secs: u64) -> Response {
        let mut response = self.respond(status);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
        response
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
    ErrorBody::new("payload too large")
        .field("body")
        .reason(format!("at most {limit} bytes"))
        .respond(StatusCode::PAYLOAD_TOO_LARGE)
}

/// `401`; `challenge` is the `WWW-Authenticate` scheme, if the caller can answer one.
pub fn unauthorized(reason: &str, challenge: Option<&'static str>) -> Response {
    let mut response = ErrorBody::new("unauthorized")
        .reason(reason)
        .respond(StatusCode::UNAUTHORIZED);
    if let Some(scheme) = challenge {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(scheme));
    }
    response
}

/// `status` naming the refused field.
pub fn invalid(status: StatusCode, error: &FieldError) -> Response {
    ErrorBody::new("invalid payload")
        .field(error.field.clone())
        .reason(error.reason.clone())
        .respond(status)
}

/// `503` with `Retry-After`: nothing was acknowledged, the caller should send again.
pub fn retry_later(reason: &str, retry_after_secs: u64) -> Response {
    ErrorBody::new("not acknowledged, retry later")
        .reason(reason)
        .respond_later(StatusCode::SERVICE_UNAVAILABLE, retry_after_secs)
}

/// `500`: the handler failed unexpectedly (logged); nothing is known to be stored.
pub fn internal_error() -> Response {
    ErrorBody::new("internal error")
        .reason("see the pipeline's log")
        .respond(StatusCode::INTERNAL_SERVER_ERROR)
}

/// `doc` (one route's document, written at its default path) with that route at `path`,
/// the path the topology configured.
pub fn at_path(mut doc: utoipa::openapi::OpenApi, path: &str) -> utoipa::openapi::OpenApi {
    let items = std::mem::take(&mut doc.paths.paths);
    doc.paths.paths = items
        .into_values()
        .map(|item| (path.to_string(), item))
        .collect();
    doc
}

/// The OpenAPI security schemes the listener's routes name: the ERP's webhook signatures
/// (each a header computed over the body with a shared secret) and the API tokens.
pub struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder};
        let components = doc.components.get_or_insert_with(Default::default);
        let header = |name: &str, description: &str| {
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                name,
                description,
            )))
        };
        let bearer = |description: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(description))
                    .build(),
            )
        };
        for (scheme, definition) in [
            (
                "signature",
                header(
                    "X-Signature",
                    "Lowercase hex HMAC-SHA256 of the raw body with the ERP's secret \
                     (an optional sha256= prefix is accepted)",
                ),
            ),
            (
                "standard_webhooks",
                header(
                    "webhook-signature",
                    "Standard Webhooks: v1,<base64 HMAC-SHA256 of id.timestamp.body>, \
                     with webhook-id and webhook-timestamp",
                ),
            ),
            (
                "frappe_signature",
                header(
                    "X-Frappe-Webhook-Signature",
                    "ERPNext: base64 HMAC-SHA256 of the raw body",
                ),
            ),
            (
                "storefront_key",
                header("X-API-Key", "A storefront API token"),
            ),
            ("storefront_token", bearer("A storefront API token")),
            (
                "planning_token",
                bearer("A planning integration token (role admin or sop_coordinator)"),
            ),
            (
                "console_token",
                bearer("An operator token of the console section (role viewer or operator)"),
            ),
        ] {
            components.add_security_scheme(scheme, definition);
        }
    }
}
