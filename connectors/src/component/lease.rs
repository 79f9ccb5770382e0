//! Work that must run on one replica at a time — a replication slot's stream, a poll cursor
//! — behind a lease in erpstream's database.
//!
//! Contract:
//! - The lease is a Postgres session-level advisory lock, keyed by the lease's name
//!   (`<app_id>.<component>`: every replica of a deployment asks for the same one). The
//!   replica whose session holds it runs the work; the others stand by (ready, with the
//!   holder named in `/readyz`) and ask again every [`RETRY`].
//! - A holder that dies loses the lease with its session: Postgres ends a backend whose
//!   client is gone (a killed process's socket closes at once), so a standby takes over
//!   within about [`RETRY`].
//! - A holder checks its session every [`CHECK`]; when the check fails (the database
//!   restarted, the network broke) it stops the work before another replica can have been
//!   granted the lease for longer than one check, and asks again. The work's own guards
//!   cover that moment: a replication slot streams to one session only, and everything a
//!   source publishes carries idempotency keys that `dedupe` drops when repeated.
//! - Who holds it is written to `erpstream.leases` when taken, for standbys to report.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio_postgres::Client;

use super::Readiness;
use crate::postgres::{PgError, PgTarget};

/// How often a standby asks for the lease.
pub const RETRY: Duration = Duration::from_secs(1);
/// How often the holder checks its session.
pub const CHECK: Duration = Duration::from_secs(1);
/// Longest a session check may take before the lease counts as lost.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);
/// How long work told to stop (the lease was lost) gets before it is dropped.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// A lease on work named `name`, held for `holder`.
#[derive(Debug, Clone)]
pub struct Lease {
    database: PgTarget,
    name: String,
    holder: String,
}

/// Why work under a lease ended or could not start.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError<E> {
    /// erpstream's database refused this client (credentials, TLS).
    #[error("lease database: {0}")]
    Database(PgError),
    /// The work failed.
    #[error(transparent)]
    Work(E),
}

impl Lease {
    /// A lease in `database` (erpstream's own) on the work `name`, taken for `holder` (this
    /// replica's `instance_id`, or its process id).
    pub fn new(database: &str, name: &str, holder: &str) -> Result<Self, PgError> {
        Ok(Self {
            database: database.parse()?,
            name: name.to_string(),
            holder: holder.to_string(),
        })
    }

    /// Runs `work` while this replica holds the lease, until `shutdown`: `work` gets a
    /// receiver that turns true when it must stop (shutdown, or the lease lost — then it
    /// starts again once the lease is back). `readiness` is the work's own: standing by
    /// names the holder; an unreachable database makes it not ready.
    pub async fn run<F, Fut, E>(
        &self,
        readiness: &Readiness,
        mut shutdown: watch::Receiver<bool>,
        mut work: F,
    ) -> Result<(), LeaseError<E>>
    where
        F: FnMut(watch::Receiver<bool>) -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        let mut session: Option<Client> = None;
        loop {
            let held = loop {
                match self.try_acquire(&mut session).await {
                    Ok(Ok(())) => break session.take().expect("acquired on a session"),
                    Ok(Err(holder)) => readiness.standby(format!(
                        "standing by: the lease {} is held by {holder}",
                        self.name
                    )),
                    Err(err) if err.is_refusal() => return Err(LeaseError::Database(err)),
                    Err(err) => {
                        session = None;
                        readiness.not_ready(format!("lease database unreachable: {err}"));
                        tracing::warn!(error = %err, lease = %self.name, "cannot ask for the lease");
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(RETRY) => {}
                    _ = shutdown.changed() => return Ok(()),
                }
            };
            tracing::info!(lease = %self.name, holder = %self.holder, "lease taken; running");
            // No longer standing by: the work says when it is ready.
            readiness.not_ready(format!("lease {} taken; starting", self.name));
            let (stop_tx, stop_rx) = watch::channel(false);
            let running = work(stop_rx);
            tokio::pin!(running);
            tokio::select! {
                result = &mut running => return result.map_err(LeaseError::Work),
                _ = shutdown.changed() => {
                    let _ = stop_tx.send(true);
                    return running.await.map_err(LeaseError::Work);
                }
                reason = lost(&held) => {
                    tracing::error!(lease = %self.name, reason = %reason, "lease lost; stopping until it is taken again");
                    readiness.not_ready(format!("lease {} lost: {reason}", self.name));
                    let _ = stop_tx.send(true);
                    if tokio::time::timeout(STOP_GRACE, &mut running).await.is_err() {
                        tracing::warn!(lease = %self.name, "work did not stop in time; dropped");
                    }
                }
            }
            drop(held);
        }
    }

    /// Takes the lease on `session` (opened if needed): `Ok(Ok(()))` when taken, else who
    /// holds it.
    async fn try_acquire(
        &self,
        session: &mut Option<Client>,
    ) -> Result<Result<(), String>, PgError> {
        if session.as_ref().is_none_or(Client::is_closed) {
            let client = self.database.connect("lease").await?;
            client
                .batch_execute(
                    // Serialised: replicas starting together may create the table at once.
                    "BEGIN;
                     SELECT pg_advisory_xact_lock(hashtext('erpstream.leases'));
                     CREATE SCHEMA IF NOT EXISTS erpstream;
                     CREATE TABLE IF NOT EXISTS erpstream.leases (
                         name text PRIMARY KEY,
                         holder text NOT NULL,
                         backend_pid integer NOT NULL,
                         acquired_at timestamptz NOT NULL);
                     COMMIT;",
                )
                .await?;
            *session = Some(client);
        }
        let client = session.as_ref().expect("opened above");
        let taken: bool = client
            .query_one(
                "SELECT pg_try_advisory_lock(hashtextextended('erpstream.lease:' || $1, 0))",
                &[&self.name],
            )
            .await?
            .get(0);
        if taken {
            client
                .execute(
                    "INSERT INTO erpstream.leases (name, holder, backend_pid, acquired_at)
                     VALUES ($1, $2, pg_backend_pid(), now())
                     ON CONFLICT (name) DO UPDATE
                     SET holder = $2, backend_pid = pg_backend_pid(), acquired_at = now()",
                    &[&self.name, &self.holder],
                )
                .await?;
            return Ok(Ok(()));
        }
        let row = client
            .query_opt(
                "SELECT holder, to_char(acquired_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')
                 FROM erpstream.leases WHERE name = $1",
                &[&self.name],
            )
            .await?;
        Ok(Err(match row {
            Some(row) => format!(
                "{} (since {})",
                row.get::<_, String>(0),
                row.get::<_, String>(1)
            ),
            None => "another replica".to_string(),
        }))
    }
}

/// Resolves when the session holding the lease fails its check; says how.
async fn lost(session: &Client) -> String {
    loop {
        tokio::time::sleep(CHECK).await;
        if session.is_closed() {
            return "the session ended".into();
        }
        match tokio::time::timeout(CHECK_TIMEOUT, session.simple_query("SELECT 1")).await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => return err.to_string(),
            Err(_) => return format!("the session did not answer within {CHECK_TIMEOUT:?}"),
        }
    }
}
