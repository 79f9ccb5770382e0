//! Answered requests, kept in Postgres (table `erpstream.api_requests`) so a repeated
//! `transaction_id` / `reference_id` gets the first answer, across restarts and replicas.
//! The connection is opened on first use and re-opened after it breaks.

use serde_json::Value;
use tokio::sync::Mutex;
use tokio_postgres::{Client, NoTls};

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
    url: String,
    client: Mutex<Option<Client>>,
}

impl RequestStore {
    /// A store at `url` (no I/O until first use).
    pub fn new(url: &str) -> Self {
        Self {
            url: url.to_string(),
            client: Mutex::new(None),
        }
    }

    async fn client(
        &self,
    ) -> Result<tokio::sync::MutexGuard<'_, Option<Client>>, tokio_postgres::Error> {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(Client::is_closed) {
            let (client, connection) = tokio_postgres::connect(&self.url, NoTls).await?;
            tokio::spawn(async move {
                if let Err(err) = connection.await {
                    tracing::warn!(error = %err, "request store connection lost; reconnecting on next use");
                }
            });
            client.batch_execute(MIGRATION).await?;
            *guard = Some(client);
        }
        Ok(guard)
    }

    /// The answer given to `(source, kind, key)`, if any.
    pub async fn get(
        &self,
        source: &str,
        kind: &str,
        key: &str,
    ) -> Result<Option<Answer>, tokio_postgres::Error> {
        let guard = self.client().await?;
        let client = guard.as_ref().expect("connected above");
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
    ) -> Result<Answer, tokio_postgres::Error> {
        let guard = self.client().await?;
        let client = guard.as_ref().expect("connected above");
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
        drop(guard);
        Ok(self
            .get(source, kind, key)
            .await?
            .unwrap_or_else(|| answer.clone()))
    }

    /// Whether the database answers.
    pub async fn reachable(&self) -> bool {
        match self.client().await {
            Ok(guard) => match guard.as_ref() {
                Some(client) => client.simple_query("SELECT 1").await.is_ok(),
                None => false,
            },
            Err(_) => false,
        }
    }
}
