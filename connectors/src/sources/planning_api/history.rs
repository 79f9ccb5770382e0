//! The planning API's sync history for operators: sync requests as answered (kept by
//! idempotency key in `planning.sync_requests`, with the records each accepted item was
//! published as) and every plan publication attempt (`planning.publish_audit`), newest first.

use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::Value;

use super::PlanningApi;
use crate::component::{Exchange, History};
use crate::postgres::PgError;

/// The history of one running planning API.
pub struct PlanningHistory(pub Arc<PlanningApi>);

impl History for PlanningHistory {
    fn exchanges(
        &self,
        filter: &str,
        limit: i64,
    ) -> BoxFuture<'static, Result<Vec<Exchange>, String>> {
        let (api, filter) = (self.0.clone(), filter.to_string());
        Box::pin(async move {
            read(&api, &filter, limit)
                .await
                .map_err(|e| format!("the planning database: {e}"))
        })
    }
}

async fn read(api: &PlanningApi, filter: &str, limit: i64) -> Result<Vec<Exchange>, PgError> {
    let client = api.database().await?;
    let syncs = client
        .query(
            "SELECT endpoint, idempotency_key, actor, response,
                    (extract(epoch FROM created_at) * 1000)::bigint
             FROM planning.sync_requests
             WHERE strpos(idempotency_key, $1) > 0 OR strpos(coalesce(batch_id, ''), $1) > 0
             ORDER BY created_at DESC LIMIT $2",
            &[&filter, &limit],
        )
        .await?;
    let publications = client
        .query(
            "SELECT plan_id, kind, actor, status, reason, published_lines,
                    (extract(epoch FROM attempted_at) * 1000)::bigint
             FROM planning.publish_audit
             WHERE strpos(plan_id::text, $1) > 0
                OR strpos(coalesce(external_reference_id, ''), $1) > 0
             ORDER BY attempted_at DESC LIMIT $2",
            &[&filter, &limit],
        )
        .await?;
    let mut exchanges: Vec<(i64, Exchange)> = Vec::new();
    for row in syncs {
        let response: Value = row.get(3);
        let summary = &response["summary"];
        let status = response["status"]
            .as_str()
            .unwrap_or("answered")
            .to_string();
        let records = response["results"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|item| {
                Some(format!(
                    "{}/{}/{}",
                    item["topic"].as_str()?,
                    item["partition"].as_i64()?,
                    item["offset"].as_i64()?
                ))
            })
            .collect();
        exchanges.push((
            row.get(4),
            Exchange {
                at: erpstream_schemas::rfc3339(row.get(4)),
                kind: format!("{} sync", row.get::<_, String>(0)),
                key: row.get(1),
                actor: Some(row.get(2)),
                outcome: format!(
                    "{status}: {} of {} accepted",
                    summary["accepted"], summary["received"]
                ),
                ok: status != "rejected",
                records,
                holds: Vec::new(),
            },
        ));
    }
    for row in publications {
        let status: String = row.get(3);
        let reason: Option<String> = row.get(4);
        exchanges.push((
            row.get(6),
            Exchange {
                at: erpstream_schemas::rfc3339(row.get(6)),
                kind: format!("{} publish", row.get::<_, String>(1)),
                key: format!("plan {}", row.get::<_, i64>(0)),
                actor: Some(row.get(2)),
                outcome: match reason {
                    Some(reason) => format!("{status}: {reason}"),
                    None => format!("{status}: {} line(s)", row.get::<_, i32>(5)),
                },
                ok: status == "accepted" || status == "already_published",
                records: Vec::new(),
                holds: Vec::new(),
            },
        ));
    }
    exchanges.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
    exchanges.truncate(limit.max(0) as usize);
    Ok(exchanges.into_iter().map(|(_, e)| e).collect())
}
