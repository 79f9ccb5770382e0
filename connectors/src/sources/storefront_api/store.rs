//! Answered requests, kept in Postgres (table `erpstream.api_requests`) so a repeated
//! `transaction_id` / `reference_id` gets the first answer, across restarts and replicas.
//! Requests are served concurrently from a pool of connections, opened as they are needed
//! and replaced after they break; the table is created on first use.

use serde_json::Value;
use tokio::sync::OnceCell;

use crate::postgres::{PgError, PgTarget};

/// Connections the store holds at most: one per concurrent request up to this many.
const POOL_SIZE: usize = 8;

const MIGRATION: &str = "
CREATE SCHEMA IF NOT EXISTS erpstream;
CREATE TABLE IF NOT EXISTS erpstream.api_requests (
    source TEXT NOT NULL,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    request_sha256 TEXT NOT NULL,
    status INT NOT NULL,
    response JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (source, kind, key)
);
";

/// A stored answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// SHA-256 (hex) of the request body that got it.
    pub request_sha256: String,
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub response: Value,
}

/// The Postgres-backed store of answered requests.
pub struct RequestStore {
    pool: deadpool_postgres::Pool,
    migrated: OnceCell<()>,
}

impl RequestStore {
    /// A store at `url` (no I/O until first use).
    pub fn new(url: &str) -> Result<Self, PgError> {
        Ok(Self {
            pool: url.parse::<PgTarget>()?.pool(POOL_SIZE)?,
            migrated: OnceCell::new(),
        })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, PgError> {
        let client = self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => PgError::Postgres(e),
            other => PgError::Pool(other.to_string()),
        })?;
        self.migrated
            .get_or_try_init(|| async { client.batch_execute(MIGRATION).await })
            .await?;
        Ok(client)
    }

    /// The answer given to `(source, kind, key)`, if any.
    pub async fn get(
        &self,
        source: &str,
        kind: &str,
        key: &str,
    ) -> Result<Option<Answer>, PgError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT request_sha256, status, response FROM erpstream.api_requests
                 WHERE source = $1 AND kind = $2 AND key = $3",
                &[&source, &kind, &key],
            )
            .await?;
        Ok(row.map(|row| Answer {
            request_sha256: row.get(0),
            status: row.get::<_, i32>(1) as u16,
            response: row.get(2),
        }))
    }

    /// Stores `answer` unless one is stored already; returns the stored one (the first).
    pub async fn put(
        &self,
        source: &str,
        kind: &str,
        key: &str,
        answer: &Answer,
    ) -> Result<Answer, PgError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO erpstream.api_requests (source, kind, key, request_sha256, status, response)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                &[
                    &source,
                    &kind,
                    &key,
                    &answer.request_sha256,
                    &i32::from(answer.status),
                    &answer.response,
                ],
            )
            .await?;
        drop(client);
        Ok(self
            .get(source, kind, key)
            .await?
            .unwrap_or_else(|| answer.clone()))
    }

    /// At most `limit` answers of `source` whose key contains `filter`, newest first:
    /// (kind, key, status, response, answered at in epoch ms).
    pub async fn recent(
        &self,
        source: &str,
        filter: &str,
        limit: i64,
    ) -> Result<Vec<(String, String, u16, Value, i64)>, PgError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT kind, key, status, response,
                        (extract(epoch FROM created_at) * 1000)::bigint
                 FROM erpstream.api_requests
                 WHERE source = $1 AND strpos(key, $2) > 0
                 ORDER BY created_at DESC LIMIT $3",
                &[&source, &filter, &limit],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| {
                (
                    row.get(0),
                    row.get(1),
                    row.get::<_, i32>(2) as u16,
                    row.get(3),
                    row.get(4),
                )
            })
            .collect())
    }

    /// Whether the database answers.
    pub async fn reachable(&self) -> bool {
        match self.client().await {
            Ok(client) => client.simple_query("SELECT 1").await.is_ok(),
            Err(_) => false,
        }
    }
}
