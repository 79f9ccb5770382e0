//! What a poller remembers, in erpstream's own database: per resource the cursor (the
//! change time up to which records are published and acknowledged) and per record its key and
//! the hash of what was last published, so unchanged records are not published again and
//! records that disappear can be told.

use std::collections::HashMap;

use tokio_postgres::Client;

use crate::postgres::PgError;

/// The hash of a record's mapped content.
pub type Hash = [u8; 16];

/// What is known of one resource.
#[derive(Debug, Default)]
pub struct Remembered {
    /// The stored cursor (`YYYY-MM-DD HH:MM:SS.ffffff`), if the resource was polled before.
    pub cursor: Option<String>,
    /// Record key → (key values as JSON, hash).
    pub records: HashMap<String, (String, Hash)>,
}

/// A connection to the state tables.
pub struct State {
    client: Client,
    source: String,
}

impl State {
    /// Connects and creates the tables if missing.
    pub async fn open(url: &str, source: &str) -> Result<Self, PgError> {
        let client = crate::postgres::connect(url, "rest_poll state database").await?;
        client
            .batch_execute(
                // Serialised: several resources (and replicas) open their state at once, and
                // concurrent CREATE ... IF NOT EXISTS can still collide.
                "BEGIN;
                 SELECT pg_advisory_xact_lock(hashtext('erpstream.rest_poll'));
                 CREATE SCHEMA IF NOT EXISTS erpstream;
                 CREATE TABLE IF NOT EXISTS erpstream.rest_poll_cursors (
                     source text NOT NULL,
                     resource text NOT NULL,
                     cursor text NOT NULL,
                     updated_at timestamptz NOT NULL DEFAULT now(),
                     PRIMARY KEY (source, resource));
                 CREATE TABLE IF NOT EXISTS erpstream.rest_poll_records (
                     source text NOT NULL,
                     resource text NOT NULL,
                     key text NOT NULL,
                     key_values jsonb NOT NULL,
                     hash bytea NOT NULL,
                     updated_at timestamptz NOT NULL DEFAULT now(),
                     PRIMARY KEY (source, resource, key));
                 COMMIT;",
            )
            .await?;
        Ok(Self {
            client,
            source: source.to_string(),
        })
    }

    /// Whether the connection is gone (the caller opens a new one).
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// The cursor and record hashes of `resource`.
    pub async fn load(&self, resource: &str) -> Result<Remembered, tokio_postgres::Error> {
        let cursor = self
            .client
            .query_opt(
                "SELECT cursor FROM erpstream.rest_poll_cursors WHERE source = $1 AND resource = $2",
                &[&self.source, &resource],
            )
            .await?
            .map(|row| row.get(0));
        let rows = self
            .client
            .query(
                "SELECT key, key_values::text, hash FROM erpstream.rest_poll_records
                 WHERE source = $1 AND resource = $2",
                &[&self.source, &resource],
            )
            .await?;
        let records = rows
            .into_iter()
            .filter_map(|row| {
                let hash: Vec<u8> = row.get(2);
                let hash: Hash = hash.try_into().ok()?;
                Some((row.get(0), (row.get(1), hash)))
            })
            .collect();
        Ok(Remembered { cursor, records })
    }

    /// In one transaction: stores `published` (key, key values as JSON, hash), forgets
    /// `deleted` keys and moves the cursor to `cursor` (if given).
    pub async fn commit(
        &mut self,
        resource: &str,
        cursor: Option<&str>,
        published: &[(String, String, Hash)],
        deleted: &[String],
    ) -> Result<(), tokio_postgres::Error> {
        let tx = self.client.transaction().await?;
        if !published.is_empty() {
            let keys: Vec<&str> = published.iter().map(|p| p.0.as_str()).collect();
            let values: Vec<&str> = published.iter().map(|p| p.1.as_str()).collect();
            let hashes: Vec<&[u8]> = published.iter().map(|p| p.2.as_slice()).collect();
            tx.execute(
                "INSERT INTO erpstream.rest_poll_records (source, resource, key, key_values, hash)
                 SELECT $1, $2, k, v::jsonb, h FROM unnest($3::text[], $4::text[], $5::bytea[]) AS t(k, v, h)
                 ON CONFLICT (source, resource, key) DO UPDATE
                 SET key_values = excluded.key_values, hash = excluded.hash, updated_at = now()",
                &[&self.source, &resource, &keys, &values, &hashes],
            )
            .await?;
        }
        if !deleted.is_empty() {
            tx.execute(
                "DELETE FROM erpstream.rest_poll_records
                 WHERE source = $1 AND resource = $2 AND key = ANY($3)",
                &[&self.source, &resource, &deleted],
            )
            .await?;
        }
        if let Some(cursor) = cursor {
            tx.execute(
                "INSERT INTO erpstream.rest_poll_cursors (source, resource, cursor)
                 VALUES ($1, $2, $3)
                 ON CONFLICT (source, resource) DO UPDATE SET cursor = excluded.cursor, updated_at = now()",
                &[&self.source, &resource, &cursor],
            )
            .await?;
        }
        tx.commit().await
    }
}
