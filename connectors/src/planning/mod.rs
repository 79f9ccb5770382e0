//! The planning database that the `planning_pg` sink writes and the planning API reads: its
//! schema, shipped as ordered SQL migrations and applied at start-up by whichever component
//! gets there first.

use tokio_postgres::Client;

/// Migrations in order: (version, name, SQL). Applied ones are recorded in
/// `planning.schema_migrations`; a shipped migration is never edited, only followed.
pub const MIGRATIONS: [(i32, &str, &str); 2] = [
    (1, "planning", include_str!("migrations/0001_planning.sql")),
    (2, "waiting", include_str!("migrations/0002_waiting.sql")),
];

/// Applies the migrations not yet applied, each in its own transaction, under an advisory
/// lock (several components and replicas start at once). Returns how many were applied.
pub async fn migrate(client: &mut Client) -> Result<usize, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.batch_execute(
        "SELECT pg_advisory_xact_lock(hashtext('erpstream.planning.migrations'));
         CREATE SCHEMA IF NOT EXISTS planning;
         CREATE TABLE IF NOT EXISTS planning.schema_migrations (
             version integer PRIMARY KEY,
             name text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await?;
    let applied: Vec<i32> = tx
        .query("SELECT version FROM planning.schema_migrations", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut count = 0;
    for (version, name, sql) in MIGRATIONS {
        if applied.contains(&version) {
            continue;
        }
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO planning.schema_migrations (version, name) VALUES ($1, $2)",
            &[&version, &name],
        )
        .await?;
        tracing::info!(version, name, "planning schema migration applied");
        count += 1;
    }
    tx.commit().await?;
    Ok(count)
}
