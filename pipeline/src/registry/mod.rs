//! `erpstream registry`: a Confluent-compatible schema registry for local use, stored in
//! Postgres. It speaks the REST subset Confluent clients use (register, look up by id,
//! subject and version, list, compatibility checks, global and per-subject compatibility
//! config, soft deletes) with Confluent's content type and error codes, so any Confluent
//! client works against it. Only Avro schemas without references are accepted; production
//! deployments point erpstream at their own registry instead.

mod compat;
mod store;

use std::sync::Arc;

use apache_avro::Schema;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

pub use compat::Level;
use store::Store;

use crate::runtime::listener::{self, HttpLimits, HttpTls};
use crate::runtime::telemetry;

/// Confluent's media type for every reply.
pub const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// Why the registry could not start.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Postgres refused the connection or the migration.
    #[error("database: {0}")]
    Database(#[from] erpstream_connectors::postgres::PgError),
    /// The listener could not be opened.
    #[error("could not listen: {0}")]
    Listen(#[from] std::io::Error),
}

/// HTTP basic credentials every request must carry (as Confluent's registry takes them).
#[derive(Clone)]
pub struct BasicCredentials {
    /// The user.
    pub user: String,
    /// The password.
    pub password: secrecy::SecretString,
}

/// Serves the registry on `listen` (HTTPS with `tls`, requests authenticated with `auth`)
/// until SIGTERM/SIGINT.
pub async fn serve(
    listen: std::net::SocketAddr,
    database_url: &str,
    tls: Option<&HttpTls>,
    auth: Option<BasicCredentials>,
) -> Result<(), RegistryError> {
    let store = Store::connect(database_url).await?;
    let mut app = router(Arc::new(store));
    if let Some(auth) = auth {
        app = app.layer(axum::middleware::from_fn_with_state(
            Arc::new(auth),
            authenticate,
        ));
    }
    let limits = HttpLimits::default();
    let server = listener::serve(listen, tls, &limits, app, telemetry::termination()).await?;
    tracing::info!(%listen, tls = tls.is_some(), "schema registry listening");
    server
        .await
        .map_err(|e| RegistryError::Listen(std::io::Error::other(e)))??;
    Ok(())
}

/// Lets a request through only with the configured basic credentials (`401` otherwise).
async fn authenticate(
    State(auth): State<Arc<BasicCredentials>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use base64::Engine as _;
    use secrecy::ExposeSecret as _;
    use subtle::ConstantTimeEq as _;
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|v| {
            base64::engine::general_purpose::STANDARD
                .decode(v.trim())
                .ok()
        });
    let expected = format!("{}:{}", auth.user, auth.password.expose_secret());
    match presented {
        Some(presented) if bool::from(presented.ct_eq(expected.as_bytes())) => {
            next.run(request).await
        }
        _ => {
            let mut response = ApiError::new(
                StatusCode::UNAUTHORIZED,
                40101,
                "Unauthorized: basic credentials required",
            )
            .into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Basic realm=\"erpstream registry\""),
            );
            response
        }
    }
}

fn router(store: Arc<Store>) -> Router {
    Router::new()
        .route("/", get(|| async { reply(StatusCode::OK, json!({})) }))
        .route("/subjects", get(list_subjects))
        .route("/subjects/{subject}", post(lookup).delete(delete_subject))
        .route(
            "/subjects/{subject}/versions",
            get(list_versions).post(register),
        )
        .route(
            "/subjects/{subject}/versions/{version}",
            get(get_version).delete(delete_version),
        )
        .route(
            "/subjects/{subject}/versions/{version}/schema",
            get(get_version_schema),
        )
        .route("/schemas/ids/{id}", get(get_by_id))
        .route("/schemas/ids/{id}/schema", get(get_raw_by_id))
        .route("/schemas/ids/{id}/versions", get(get_id_versions))
        .route(
            "/schemas/types",
            get(|| async { reply(StatusCode::OK, json!(["AVRO"])) }),
        )
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(check_compatibility),
        )
        .route("/config", get(get_global_config).put(put_global_config))
        .route(
            "/config/{subject}",
            get(get_subject_config)
                .put(put_subject_config)
                .delete(delete_subject_config),
        )
        .with_state(store)
}

/// A Confluent-style error: HTTP status plus `{error_code, message}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: u32,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: u32, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
    fn subject_not_found(subject: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            40401,
            format!("Subject '{subject}' not found."),
        )
    }
    fn version_not_found(version: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            40402,
            format!("Version {version} not found."),
        )
    }
    fn schema_not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, 40403, "Schema not found")
    }
    fn invalid_schema(reason: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            42201,
            format!("Invalid schema: {reason}"),
        )
    }
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(err: tokio_postgres::Error) -> Self {
        tracing::error!(error = %err, "registry store failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            50001,
            "Error in the backend data store",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        reply(
            self.status,
            json!({"error_code": self.code, "message": self.message}),
        )
    }
}

fn reply(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        body.to_string(),
    )
        .into_response()
}

type ApiResult = Result<Response, ApiError>;

/// The body of register, lookup and compatibility requests.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SchemaRequest {
    schema: String,
    #[serde(default)]
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<Value>,
}

/// Parses and checks a request body; returns the parsed schema and its normalized text.
fn parse_request(body: &[u8]) -> Result<(Schema, String, String), ApiError> {
    let request: SchemaRequest = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            42201,
            format!("Invalid request body: {e}"),
        )
    })?;
    if let Some(kind) = &request.schema_type
        && !kind.eq_ignore_ascii_case("AVRO")
    {
        return Err(ApiError::invalid_schema(format!(
            "schema type {kind} is not supported; only AVRO is"
        )));
    }
    if !request.references.is_empty() {
        return Err(ApiError::invalid_schema(
            "schema references are not supported",
        ));
    }
    let schema = Schema::parse_str(&request.schema).map_err(ApiError::invalid_schema)?;
    let normalized = normalize(&request.schema).map_err(ApiError::invalid_schema)?;
    Ok((schema, request.schema, normalized))
}

/// The identity of a schema text: its JSON with insignificant whitespace and key order removed.
fn normalize(text: &str) -> Result<String, serde_json::Error> {
    let value: Value = serde_json::from_str(text)?;
    serde_json::to_string(&value)
}

fn parse_version(text: &str) -> Result<Option<i32>, ApiError> {
    match text {
        "latest" | "-1" => Ok(None),
        _ => match text.parse::<i32>() {
            Ok(v) if v > 0 => Ok(Some(v)),
            _ => Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                42202,
                format!(
                    "The specified version '{text}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\""
                ),
            )),
        },
    }
}

async fn list_subjects(State(store): State<Arc<Store>>) -> ApiResult {
    Ok(reply(StatusCode::OK, json!(store.subjects().await?)))
}

async fn list_versions(State(store): State<Arc<Store>>, Path(subject): Path<String>) -> ApiResult {
    let versions = store.versions(&subject).await?;
    if versions.is_empty() {
        return Err(ApiError::subject_not_found(&subject));
    }
    Ok(reply(
        StatusCode::OK,
        json!(versions.iter().map(|v| v.version).collect::<Vec<_>>()),
    ))
}

async fn register(
    State(store): State<Arc<Store>>,
    Path(subject): Path<String>,
    body: bytes::Bytes,
) -> ApiResult {
    let (schema, text, normalized) = parse_request(&body)?;
    let id = store
        .register(&subject, &schema, &text, &normalized)
        .await?;
    Ok(reply(StatusCode::OK, json!({"id": id})))
}

async fn lookup(
    State(store): State<Arc<Store>>,
    Path(subject): Path<String>,
    body: bytes::Bytes,
) -> ApiResult {
    let (_, _, normalized) = parse_request(&body)?;
    let versions = store.versions(&subject).await?;
    if versions.is_empty() {
        return Err(ApiError::subject_not_found(&subject));
    }
    let found = versions
        .into_iter()
        .find(|v| v.normalized == normalized)
        .ok_or_else(ApiError::schema_not_found)?;
    Ok(reply(
        StatusCode::OK,
        json!({"subject": subject, "version": found.version, "id": found.id, "schema": found.schema}),
    ))
}

async fn find_version(
    store: &Store,
    subject: &str,
    version: &str,
) -> Result<store::Version, ApiError> {
    let wanted = parse_version(version)?;
    let versions = store.versions(subject).await?;
    if versions.is_empty() {
        return Err(ApiError::subject_not_found(subject));
    }
    match wanted {
        None => versions
            .into_iter()
            .next_back()
            .ok_or_else(|| ApiError::version_not_found(version)),
        Some(v) => versions
            .into_iter()
            .find(|x| x.version == v)
            .ok_or_else(|| ApiError::version_not_found(version)),
    }
}

async fn get_version(
    State(store): State<Arc<Store>>,
    Path((subject, version)): Path<(String, String)>,
) -> ApiResult {
    let found = find_version(&store, &subject, &version).await?;
    Ok(reply(
        StatusCode::OK,
        json!({"subject": subject, "version": found.version, "id": found.id, "schema": found.schema}),
    ))
}

async fn get_version_schema(
    State(store): State<Arc<Store>>,
    Path((subject, version)): Path<(String, String)>,
) -> ApiResult {
    let found = find_version(&store, &subject, &version).await?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        found.schema,
    )
        .into_response())
}

async fn get_by_id(State(store): State<Arc<Store>>, Path(id): Path<i32>) -> ApiResult {
    let schema = store
        .schema(id)
        .await?
        .ok_or_else(ApiError::schema_not_found)?;
    Ok(reply(StatusCode::OK, json!({"schema": schema})))
}

async fn get_raw_by_id(State(store): State<Arc<Store>>, Path(id): Path<i32>) -> ApiResult {
    let schema = store
        .schema(id)
        .await?
        .ok_or_else(ApiError::schema_not_found)?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        schema,
    )
        .into_response())
}

async fn get_id_versions(State(store): State<Arc<Store>>, Path(id): Path<i32>) -> ApiResult {
    let uses = store.uses_of(id).await?;
    if uses.is_empty() {
        return Err(ApiError::schema_not_found());
    }
    let body: Vec<Value> = uses
        .into_iter()
        .map(|(s, v)| json!({"subject": s, "version": v}))
        .collect();
    Ok(reply(StatusCode::OK, json!(body)))
}

#[derive(Deserialize)]
struct CompatQuery {
    #[serde(default)]
    verbose: bool,
}

async fn check_compatibility(
    State(store): State<Arc<Store>>,
    Path((subject, version)): Path<(String, String)>,
    Query(query): Query<CompatQuery>,
    body: bytes::Bytes,
) -> ApiResult {
    let (schema, _, _) = parse_request(&body)?;
    let against = find_version(&store, &subject, &version).await?;
    let level = store.level(&subject).await?;
    let existing = Schema::parse_str(&against.schema).map_err(ApiError::invalid_schema)?;
    let problems = level.check(&schema, std::slice::from_ref(&existing));
    let mut body = json!({"is_compatible": problems.is_empty()});
    if query.verbose {
        body["messages"] = json!(problems);
    }
    Ok(reply(StatusCode::OK, body))
}

#[derive(Deserialize)]
struct ConfigRequest {
    compatibility: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConfigQuery {
    #[serde(default)]
    default_to_global: bool,
}

fn parse_level(body: &[u8]) -> Result<Level, ApiError> {
    let request: ConfigRequest = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            42203,
            format!("Invalid compatibility level: {e}"),
        )
    })?;
    request.compatibility.parse().map_err(|_| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            42203,
            format!("Invalid compatibility level: {}", request.compatibility),
        )
    })
}

async fn get_global_config(State(store): State<Arc<Store>>) -> ApiResult {
    let level = store.level_of(store::GLOBAL).await?.unwrap_or_default();
    Ok(reply(
        StatusCode::OK,
        json!({"compatibilityLevel": level.to_string()}),
    ))
}

async fn put_global_config(State(store): State<Arc<Store>>, body: bytes::Bytes) -> ApiResult {
    let level = parse_level(&body)?;
    store.set_level(store::GLOBAL, Some(level)).await?;
    Ok(reply(
        StatusCode::OK,
        json!({"compatibility": level.to_string()}),
    ))
}

async fn get_subject_config(
    State(store): State<Arc<Store>>,
    Path(subject): Path<String>,
    Query(query): Query<ConfigQuery>,
) -> ApiResult {
    match store.level_of(&subject).await? {
        Some(level) => Ok(reply(
            StatusCode::OK,
            json!({"compatibilityLevel": level.to_string()}),
        )),
        None if query.default_to_global => {
            let level = store.level_of(store::GLOBAL).await?.unwrap_or_default();
            Ok(reply(
                StatusCode::OK,
                json!({"compatibilityLevel": level.to_string()}),
            ))
        }
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            40408,
            format!("Subject '{subject}' does not have subject-level compatibility configured"),
        )),
    }
}

async fn put_subject_config(
    State(store): State<Arc<Store>>,
    Path(subject): Path<String>,
    body: bytes::Bytes,
) -> ApiResult {
    let level = parse_level(&body)?;
    store.set_level(&subject, Some(level)).await?;
    Ok(reply(
        StatusCode::OK,
        json!({"compatibility": level.to_string()}),
    ))
}

async fn delete_subject_config(
    State(store): State<Arc<Store>>,
    Path(subject): Path<String>,
) -> ApiResult {
    let previous = store
        .level_of(&subject)
        .await?
        .ok_or_else(|| ApiError::subject_not_found(&subject))?;
    store.set_level(&subject, None).await?;
    Ok(reply(
        StatusCode::OK,
        json!({"compatibilityLevel": previous.to_string()}),
    ))
}

async fn delete_subject(State(store): State<Arc<Store>>, Path(subject): Path<String>) -> ApiResult {
    let deleted = store.delete(&subject, None).await?;
    if deleted.is_empty() {
        return Err(ApiError::subject_not_found(&subject));
    }
    Ok(reply(StatusCode::OK, json!(deleted)))
}

async fn delete_version(
    State(store): State<Arc<Store>>,
    Path((subject, version)): Path<(String, String)>,
) -> ApiResult {
    let found = find_version(&store, &subject, &version).await?;
    store.delete(&subject, Some(found.version)).await?;
    Ok(reply(StatusCode::OK, json!(found.version)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization_ignores_whitespace_and_key_order() {
        let a = normalize(r#"{"type": "record", "name": "A", "fields": []}"#).unwrap();
        let b = normalize(r#"{"fields":[],"name":"A","type":"record"}"#).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn versions_parse_like_confluent() {
        assert_eq!(parse_version("latest").unwrap(), None);
        assert_eq!(parse_version("-1").unwrap(), None);
        assert_eq!(parse_version("3").unwrap(), Some(3));
        assert_eq!(parse_version("0").unwrap_err().code, 42202);
        assert_eq!(parse_version("x").unwrap_err().code, 42202);
    }
}
