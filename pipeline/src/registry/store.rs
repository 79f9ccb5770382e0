//! Registry storage in Postgres (schema `registry`): schemas by id, subject versions (soft
//! deletes), compatibility config. Registration runs in a transaction holding a per-subject
//! advisory lock, so concurrent registrations get consecutive versions.

use apache_avro::Schema;
use erpstream_connectors::postgres::{PgError, PgTarget};
use tokio::sync::Mutex;
use tokio_postgres::Client;

use super::{ApiError, Level};

/// Config row name of the global level.
pub const GLOBAL: &str = "";

const MIGRATION: &str = "
CREATE SCHEMA IF NOT EXISTS registry;
CREATE TABLE IF NOT EXISTS registry.schemas (
    id SERIAL PRIMARY KEY,
    normalized TEXT NOT NULL UNIQUE,
    schema TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS registry.versions (
    subject TEXT NOT NULL,
    version INT NOT NULL,
    schema_id INT NOT NULL REFERENCES registry.schemas(id),
    deleted BOOLEAN NOT NULL DEFAULT false,
    PRIMARY KEY (subject, version)
);
CREATE TABLE IF NOT EXISTS registry.config (
    subject TEXT PRIMARY KEY,
    compatibility TEXT NOT NULL
);
";

/// One live version of a subject.
pub struct Version {
    /// Version number.
    pub version: i32,
    /// Schema id.
    pub id: i32,
    /// Schema text as registered.
    pub schema: String,
    /// Normalized text (identity).
    pub normalized: String,
}

/// The Postgres-backed store.
pub struct Store {
    client: Mutex<Client>,
}

impl Store {
    /// Connects and creates the tables if needed.
    pub async fn connect(url: &str) -> Result<Self, PgError> {
        let target: PgTarget = url.parse()?;
        let (client, connection) = target.config.connect(target.tls()?).await?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::error!(error = %err, "registry database connection lost");
                std::process::exit(1);
            }
        });
        client
            .batch_execute("SELECT pg_advisory_lock(874321)")
            .await?;
        client.batch_execute(MIGRATION).await?;
        client
            .batch_execute("SELECT pg_advisory_unlock(874321)")
            .await?;
        Ok(Self {
            client: Mutex::new(client),
        })
    }

    /// Subjects with at least one live version.
    pub async fn subjects(&self) -> Result<Vec<String>, tokio_postgres::Error> {
        let client = self.client.lock().await;
        let rows = client
            .query(
                "SELECT DISTINCT subject FROM registry.versions WHERE NOT deleted ORDER BY subject",
                &[],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Live versions of `subject`, oldest first.
    pub async fn versions(&self, subject: &str) -> Result<Vec<Version>, tokio_postgres::Error> {
        let client = self.client.lock().await;
        versions(&*client, subject).await
    }

    /// The schema text of `id`.
    pub async fn schema(&self, id: i32) -> Result<Option<String>, tokio_postgres::Error> {
        let client = self.client.lock().await;
        let row = client
            .query_opt("SELECT schema FROM registry.schemas WHERE id = $1", &[&id])
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    /// (subject, version) pairs using schema `id`.
    pub async fn uses_of(&self, id: i32) -> Result<Vec<(String, i32)>, tokio_postgres::Error> {
        let client = self.client.lock().await;
        let rows = client
            .query("SELECT subject, version FROM registry.versions WHERE schema_id = $1 AND NOT deleted ORDER BY subject, version", &[&id])
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// The configured level of `subject` (or [`GLOBAL`]).
    pub async fn level_of(&self, subject: &str) -> Result<Option<Level>, tokio_postgres::Error> {
        let client = self.client.lock().await;
        level_of(&*client, subject).await
    }

    /// The level that applies to `subject`: its own, else the global one, else BACKWARD.
    pub async fn level(&self, subject: &str) -> Result<Level, tokio_postgres::Error> {
        let client = self.client.lock().await;
        effective_level(&*client, subject).await
    }

    /// Sets (or clears) the level of `subject` (or [`GLOBAL`]).
    pub async fn set_level(
        &self,
        subject: &str,
        level: Option<Level>,
    ) -> Result<(), tokio_postgres::Error> {
        let client = self.client.lock().await;
        match level {
            Some(level) => {
                client
                    .execute(
                        "INSERT INTO registry.config (subject, compatibility) VALUES ($1, $2)
                         ON CONFLICT (subject) DO UPDATE SET compatibility = EXCLUDED.compatibility",
                        &[&subject, &level.to_string()],
                    )
                    .await?;
            }
            None => {
                client
                    .execute(
                        "DELETE FROM registry.config WHERE subject = $1",
                        &[&subject],
                    )
                    .await?;
            }
        }
        Ok(())
    }

    /// Soft-deletes one version or all of a subject; returns the versions deleted.
    pub async fn delete(
        &self,
        subject: &str,
        version: Option<i32>,
    ) -> Result<Vec<i32>, tokio_postgres::Error> {
        let client = self.client.lock().await;
        let rows = client
            .query(
                "UPDATE registry.versions SET deleted = true
                 WHERE subject = $1 AND NOT deleted AND ($2::INT IS NULL OR version = $2)
                 RETURNING version",
                &[&subject, &version],
            )
            .await?;
        let mut deleted: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
        deleted.sort_unstable();
        Ok(deleted)
    }

    /// Registers `text` under `subject`: the existing id if already registered there,
    /// otherwise a new version after the compatibility check.
    pub async fn register(
        &self,
        subject: &str,
        schema: &Schema,
        text: &str,
        normalized: &str,
    ) -> Result<i32, ApiError> {
        let mut client = self.client.lock().await;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&subject])
            .await?;
        let existing = versions(&tx, subject).await?;
        if let Some(found) = existing.iter().find(|v| v.normalized == normalized) {
            return Ok(found.id);
        }
        let level = effective_level(&tx, subject).await?;
        let earlier: Vec<Schema> = existing
            .iter()
            .filter_map(|v| Schema::parse_str(&v.schema).ok())
            .collect();
        let problems = level.check(schema, &earlier);
        if !problems.is_empty() {
            return Err(ApiError::new(
                axum::http::StatusCode::CONFLICT,
                409,
                format!(
                    "Schema being registered is incompatible with an earlier schema for subject \"{subject}\" ({level}); details: {}",
                    problems.join("; ")
                ),
            ));
        }
        let id: i32 = tx
            .query_one(
                "INSERT INTO registry.schemas (normalized, schema) VALUES ($1, $2)
                 ON CONFLICT (normalized) DO UPDATE SET normalized = EXCLUDED.normalized RETURNING id",
                &[&normalized, &text],
            )
            .await?
            .get(0);
        tx.execute(
            "INSERT INTO registry.versions (subject, version, schema_id)
             SELECT $1, COALESCE(MAX(version), 0) + 1, $2 FROM registry.versions WHERE subject = $1",
            &[&subject, &id],
        )
        .await?;
        tx.commit().await?;
        Ok(id)
    }
}

async fn versions(
    client: &impl tokio_postgres::GenericClient,
    subject: &str,
) -> Result<Vec<Version>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT v.version, s.id, s.schema, s.normalized FROM registry.versions v
             JOIN registry.schemas s ON s.id = v.schema_id
             WHERE v.subject = $1 AND NOT v.deleted ORDER BY v.version",
            &[&subject],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Version {
            version: r.get(0),
            id: r.get(1),
            schema: r.get(2),
            normalized: r.get(3),
        })
        .collect())
}

async fn level_of(
    client: &impl tokio_postgres::GenericClient,
    subject: &str,
) -> Result<Option<Level>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT compatibility FROM registry.config WHERE subject = $1",
            &[&subject],
        )
        .await?;
    Ok(row.and_then(|r| r.get::<_, String>(0).parse().ok()))
}

async fn effective_level(
    client: &impl tokio_postgres::GenericClient,
    subject: &str,
) -> Result<Level, tokio_postgres::Error> {
    if let Some(level) = level_of(client, subject).await? {
        return Ok(level);
    }
    Ok(level_of(client, GLOBAL).await?.unwrap_or_default())
}
