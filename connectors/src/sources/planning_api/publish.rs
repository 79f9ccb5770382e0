//! Publish-back of approved plans (blueprint §2 phase 3, §3):
//! `POST /api/v1/integrations/erp/publish/{demand-plan,supply-plan}/{plan_id}`.
//!
//! - Only a plan whose status is `approved` is published; a plan published before answers
//!   `already_published` with the ERP's reference, and is not sent again.
//! - Lines whose period starts before today + `frozen_horizon` are held back and listed; the
//!   rest are sent. A plan with nothing outside the horizon is rejected.
//! - The ERP receives `POST <publish.url>/api/plans/{demand,supply}` with
//!   `Idempotency-Key: plan-<kind>-<plan_id>-<approved_at ms>` (equal for every attempt of the
//!   same approval, so a retry after a lost answer creates nothing twice), retried on
//!   408/429/5xx/timeouts with the sinks' backoff; its `external_reference_id` (or `id`) is
//!   kept.
//! - Every attempt, whatever its outcome, is a row of `planning.publish_audit` with the
//!   caller, the outcome, the held lines and a `correlation_id` that the answer also carries.
//!   Publishes of one plan are serialised by an advisory lock.
//!
//! Plans are published when this endpoint is called (the default). The planning database
//! could also trigger it — a `pg_cdc` source on `planning.plans` seeing `status` turn
//! `approved` — but no such trigger is built: publishing stays an explicit, audited act.

use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::{Caller, PlanningApi, PlanningApiError, PublishConfig};
use crate::retry::{Outcome, RetryConfig, backoff, classify, retry_after, send};
use crate::sources::http::ErrorBody;

/// The ERP side of publishing.
pub struct ErpClient {
    http: reqwest::Client,
    base: String,
    token: Option<SecretString>,
    retry: RetryConfig,
    frozen_horizon: Duration,
}

impl ErpClient {
    /// Reads the token and builds the client (no I/O).
    pub fn new(config: &PublishConfig) -> Result<Self, PlanningApiError> {
        Ok(Self {
            http: crate::tls::trusting(
                reqwest::Client::builder().timeout(config.request_timeout),
                config.ca_file.as_deref(),
            )?
            .build()?,
            base: config.url.trim_end_matches('/').to_string(),
            token: config.token.as_ref().map(|t| t.resolve()).transpose()?,
            retry: config.retry.clone(),
            frozen_horizon: config.frozen_horizon,
        })
    }

    /// Sends the plan; `Ok(reference)` on 2xx, `Err((status, reason))` otherwise.
    async fn send(&self, kind: &str, key: &str, body: &Value) -> Result<String, (u16, String)> {
        let url = format!("{}/api/plans/{kind}", self.base);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut request = self
                .http
                .post(&url)
                .header("idempotency-key", key)
                .json(body);
            if let Some(token) = &self.token {
                request = request.bearer_auth(token.expose_secret());
            }
            let (reason, hint) = match send(request, "planning_publish").await {
                Err(Outcome::Retry {
                    reason,
                    retry_after,
                }) => (reason, retry_after),
                Err(other) => (format!("{other:?}"), None),
                Ok(response) => {
                    let status = response.status();
                    let hint = retry_after(response.headers());
                    let text = response.text().await.unwrap_or_default();
                    match classify("the ERP", status, hint) {
                        Outcome::Delivered => {
                            let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                            let reference = body
                                .get("external_reference_id")
                                .or_else(|| body.get("id"))
                                .or_else(|| body.pointer("/data/name"))
                                .map(|v| match v {
                                    Value::String(s) => s.clone(),
                                    other => other.to_string(),
                                });
                            return reference.ok_or_else(|| {
                                (
                                    502,
                                    "the ERP accepted the plan but named no reference".into(),
                                )
                            });
                        }
                        Outcome::Reject { reason } => {
                            return Err((status.as_u16(), format!("{reason}: {text}")));
                        }
                        Outcome::Retry {
                            reason,
                            retry_after,
                        } => (reason, retry_after),
                    }
                }
            };
            if attempt >= self.retry.max_attempts {
                return Err((503, format!("{reason} (after {attempt} attempts)")));
            }
            tokio::time::sleep(backoff(&self.retry, attempt, hint)).await;
        }
    }
}

/// Which plans an endpoint publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanKind {
    /// `demand-plan`: plans of kind `demand`.
    Demand,
    /// `supply-plan`: plans of kind `supply`.
    Supply,
}

impl PlanKind {
    /// The kind as `planning.plans` and the ERP's path name it.
    pub fn name(self) -> &'static str {
        match self {
            PlanKind::Demand => "demand",
            PlanKind::Supply => "supply",
        }
    }
}

/// The outcome of a publish attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PublishStatus {
    /// The ERP took the plan now.
    Accepted,
    /// The ERP took it before; it was not sent again.
    AlreadyPublished,
    /// Not sent (see `reason`).
    Rejected,
    /// The ERP could not be reached.
    Failed,
}

impl PublishStatus {
    /// Its name in the answer and in `planning.publish_audit`.
    pub fn name(self) -> &'static str {
        match self {
            PublishStatus::Accepted => "accepted",
            PublishStatus::AlreadyPublished => "already_published",
            PublishStatus::Rejected => "rejected",
            PublishStatus::Failed => "failed",
        }
    }
}

/// The answer to a publish request.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PublishResponse {
    /// The outcome.
    pub status: PublishStatus,
    /// The plan.
    pub plan_id: i64,
    /// The ERP's reference of the published plan.
    pub external_reference_id: Option<String>,
    /// The id of this attempt in `planning.publish_audit` and in the ERP's request.
    pub correlation_id: uuid::Uuid,
    /// Why it was not published.
    pub reason: Option<String>,
    /// Lines sent to the ERP.
    pub published_lines: i32,
    /// Lines held back inside the frozen horizon.
    pub held_lines: Vec<PlanLine>,
}

/// A plan line: sent to the ERP, or held back inside the frozen horizon.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PlanLine {
    /// The line's number.
    pub line_no: i32,
    /// Its sku.
    pub sku: String,
    /// Its location.
    pub location: Option<String>,
    /// The first day of its period.
    pub period: String,
    /// Its quantity.
    #[schema(value_type = f64)]
    pub quantity: Value,
}

/// One attempt's outcome, as answered and audited.
struct Attempt<'a> {
    plan_id: i64,
    kind: &'a str,
    status: PublishStatus,
    reason: Option<String>,
    publish_key: Option<String>,
    reference: Option<String>,
    published: i32,
    held: Vec<PlanLine>,
}

impl PlanningApi {
    pub(super) async fn publish(
        &self,
        kind: PlanKind,
        plan_id: &str,
        headers: &HeaderMap,
    ) -> Response {
        let kind = kind.name();
        let caller = match self.caller(headers) {
            Ok(caller) => caller,
            Err(refusal) => return refusal.into_response(),
        };
        let Ok(plan_id) = plan_id.parse::<i64>() else {
            return ErrorBody::new("invalid request")
                .field("plan_id")
                .reason("must be a number")
                .respond(StatusCode::BAD_REQUEST);
        };
        let correlation_id = uuid::Uuid::new_v4();
        match self
            .try_publish(kind, plan_id, &caller, correlation_id)
            .await
        {
            Ok(response) => response,
            Err(err) => {
                tracing::warn!(error = %err, plan_id, "publish not completed");
                ErrorBody::new("planning database unavailable")
                    .reason(format!(
                        "nothing was published; send again (attempt {correlation_id})"
                    ))
                    .respond_later(StatusCode::SERVICE_UNAVAILABLE, 5)
            }
        }
    }

    async fn try_publish(
        &self,
        kind: &str,
        plan_id: i64,
        caller: &Caller,
        correlation_id: uuid::Uuid,
    ) -> Result<Response, crate::postgres::PgError> {
        let mut db = self.database().await?;
        let tx = db.transaction().await?;
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext('erpstream.publish'), $1::int)",
            &[&((plan_id % i64::from(i32::MAX)) as i32)],
        )
        .await?;
        let plan = tx
            .query_opt(
                "SELECT kind, name, status, (extract(epoch FROM approved_at) * 1000)::bigint
                 FROM planning.plans WHERE plan_id = $1",
                &[&plan_id],
            )
            .await?;
        let mut attempt = Attempt {
            plan_id,
            kind,
            status: PublishStatus::Rejected,
            reason: None,
            publish_key: None,
            reference: None,
            published: 0,
            held: Vec::new(),
        };
        let (http, attempt) = 'outcome: {
            let Some(plan) = plan else {
                attempt.reason = Some(format!("no plan {plan_id}"));
                break 'outcome (StatusCode::NOT_FOUND, attempt);
            };
            let (plan_kind, name, status, approved_at): (String, String, String, Option<i64>) =
                (plan.get(0), plan.get(1), plan.get(2), plan.get(3));
            if plan_kind != kind {
                attempt.reason = Some(format!(
                    "plan {plan_id} is a {plan_kind} plan, not a {kind} plan"
                ));
                break 'outcome (StatusCode::CONFLICT, attempt);
            }
            if let Some(done) = tx
                .query_opt(
                    "SELECT external_reference_id, publish_key FROM planning.plan_publications WHERE plan_id = $1",
                    &[&plan_id],
                )
                .await?
            {
                attempt.status = PublishStatus::AlreadyPublished;
                attempt.reference = Some(done.get(0));
                attempt.publish_key = Some(done.get(1));
                break 'outcome (StatusCode::OK, attempt);
            }
            let Some(approved_at) = approved_at.filter(|_| status == "approved") else {
                attempt.reason = Some(format!(
                    "plan {plan_id} is {status}: only approved plans are published"
                ));
                break 'outcome (StatusCode::CONFLICT, attempt);
            };
            let horizon_days = (self.erp.frozen_horizon.as_secs() / 86_400) as i32;
            let lines = tx
                .query(
                    "SELECT line_no, sku, location, period::text, quantity::text,
                            period < current_date + $2::int
                     FROM planning.plan_lines WHERE plan_id = $1 ORDER BY line_no",
                    &[&plan_id, &horizon_days],
                )
                .await?;
            let line = |r: &tokio_postgres::Row| PlanLine {
                line_no: r.get(0),
                sku: r.get(1),
                location: r.get(2),
                period: r.get(3),
                quantity: r
                    .get::<_, String>(4)
                    .parse::<Value>()
                    .unwrap_or(Value::Null),
            };
            let (held, send): (Vec<_>, Vec<_>) = lines.iter().partition(|r| r.get::<_, bool>(5));
            let send: Vec<PlanLine> = send.into_iter().map(line).collect();
            attempt.held = held.into_iter().map(line).collect();
            if send.is_empty() {
                attempt.reason = Some(format!(
                    "every line is inside the frozen horizon ({horizon_days} days from today)"
                ));
                break 'outcome (StatusCode::CONFLICT, attempt);
            }
            let key = format!("plan-{kind}-{plan_id}-{approved_at}");
            attempt.publish_key = Some(key.clone());
            let body = json!({"plan_id": plan_id, "kind": kind, "name": name,
                "approved_at": approved_at, "publish_key": key,
                "correlation_id": correlation_id, "lines": send});
            match self.erp.send(kind, &key, &body).await {
                Ok(reference) => {
                    attempt.status = PublishStatus::Accepted;
                    attempt.published = send.len() as i32;
                    tx.execute(
                        "INSERT INTO planning.plan_publications
                             (plan_id, publish_key, external_reference_id, correlation_id, published_lines, held_lines)
                         VALUES ($1, $2, $3, $4, $5, $6)",
                        &[&plan_id, &key, &reference, &correlation_id, &attempt.published,
                          &(attempt.held.len() as i32)],
                    )
                    .await?;
                    tx.execute(
                        "UPDATE planning.plans SET status = 'published' WHERE plan_id = $1",
                        &[&plan_id],
                    )
                    .await?;
                    attempt.reference = Some(reference);
                    (StatusCode::OK, attempt)
                }
                Err((status, reason)) if status >= 500 => {
                    attempt.status = PublishStatus::Failed;
                    attempt.reason = Some(reason);
                    (StatusCode::BAD_GATEWAY, attempt)
                }
                Err((_, reason)) => {
                    attempt.reason = Some(format!("the ERP refused the plan: {reason}"));
                    (StatusCode::UNPROCESSABLE_ENTITY, attempt)
                }
            }
        };
        tx.execute(
            "INSERT INTO planning.publish_audit
                 (plan_id, kind, actor, role, status, reason, publish_key, external_reference_id,
                  correlation_id, published_lines, held_lines)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            &[
                &attempt.plan_id,
                &attempt.kind,
                &caller.name,
                &caller.role,
                &attempt.status.name(),
                &attempt.reason,
                &attempt.publish_key,
                &attempt.reference,
                &correlation_id,
                &attempt.published,
                &serde_json::to_value(&attempt.held).unwrap_or(Value::Null),
            ],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(plan_id, kind, status = attempt.status.name(), caller = %caller.name,
            %correlation_id, "plan publish attempt");
        Ok((
            http,
            axum::Json(PublishResponse {
                status: attempt.status,
                plan_id,
                external_reference_id: attempt.reference,
                correlation_id,
                reason: attempt.reason,
                published_lines: attempt.published,
                held_lines: attempt.held,
            }),
        )
            .into_response())
    }
}
