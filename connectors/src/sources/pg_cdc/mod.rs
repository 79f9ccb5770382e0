//! `pg_cdc`: Postgres logical replication (`pgoutput`) → events, mapped per table as declared
//! in the topology.
//!
//! Contract:
//! - **Consistent start.** On first run the slot is created with an exported snapshot; the
//!   captured tables are read inside that snapshot (chunked by primary key) and streaming
//!   starts at the slot's consistent point, so each row committed before it arrives once from
//!   the snapshot and each later change once from the stream. Completion is recorded in
//!   erpstream's own database (`erpstream.cdc_sources`); a snapshot cut short by a crash is
//!   redone on a new slot (unchanged rows carry the same idempotency key, so `dedupe` drops
//!   them).
//! - **LSN safety.** The slot's confirmed position moves to a transaction's end only when the
//!   broker has acknowledged every record of it and of every transaction before it. After a
//!   crash, Postgres sends the unconfirmed transactions again; their records carry the same
//!   idempotency key (`pg:<table>:<key>:<commit LSN>:<change number>`), so repeats are dropped
//!   downstream. Records are queued in commit order, so per key they arrive in commit order.
//! - **Heartbeats.** Every `heartbeat` the source writes a logical message and, with nothing
//!   in flight, confirms the stream's position, so an idle or filtered slot holds no WAL; slot
//!   lag is exported and above `max_lag` the source reports not ready.
//! - **Schema changes.** Relation messages rebind the mapping at once; a column the mapping
//!   reads disappearing stops the source with the table and column named, before anything of
//!   that change is confirmed.
//! - Rows that do not fit the contract go to `<topic>.dlq` (the row as JSON, the field and
//!   reason in `erpstream.error`); unchanged TOASTed values are taken from the old row (with
//!   REPLICA IDENTITY FULL) or refused, never published as placeholders.

mod change;
mod config;
mod control;
mod decode;
mod operator;
mod snapshot;
mod stream;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use erpstream_schemas::{EventKind, Traceparent, now_millis};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent};
use tokio::sync::watch;

use crate::sources::mapping::{Bound, Cell, Envelope, Mapping, RowError};
pub use config::{PgCdcConfig, SnapshotMode};
use control::{SlotState, SourceRecord, StateStore, TableShape};
pub use decode::{Change, Decided, Decoder, Position};

use crate::component::{Component, Context, Graph, Port, Readiness, Running};
use crate::kafka::{PendingAck, PublishError, Publisher, RawRecord};
use crate::metrics as m;
use crate::validation::Problem;

/// Component type name in the topology.
pub const TYPE: &str = "pg_cdc";
/// Records queued but not yet acknowledged before the source stops reading.
const MAX_PENDING: usize = 200_000;
/// Microseconds between the Unix epoch and Postgres' epoch (2000-01-01).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
/// Slot lag in bytes (server WAL position − confirmed position).
pub const SLOT_LAG: &str = "erpstream_cdc_slot_lag_bytes";
/// WAL bytes the slot keeps (server WAL position − restart position).
pub const SLOT_RETAINED: &str = "erpstream_cdc_slot_retained_wal_bytes";
/// Rows read by snapshots.
pub const SNAPSHOT_ROWS: &str = "erpstream_cdc_snapshot_rows_total";
/// Seconds from a transaction's commit to the broker's acknowledgement of its last record.
pub const COMMIT_TO_ACK: &str = "erpstream_cdc_commit_to_ack_seconds";

/// Why the source stopped or a session ended.
#[derive(Debug, thiserror::Error)]
pub enum CdcError {
    /// A connection could not be opened.
    #[error("could not connect to the {0}: {1}")]
    Connect(&'static str, String),
    /// A query failed.
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// The replication stream failed.
    #[error("replication stream: {0}")]
    Replication(#[from] pgwire_replication::PgWireError),
    /// The stream carried something the decoder does not understand.
    #[error("pgoutput: {0}")]
    Decode(String),
    /// The broker did not take a record.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// The database or configuration cannot work; retrying will not help.
    #[error("{0}")]
    Refused(String),
    /// Another session streams from the slot this one would drop (never done: retried).
    #[error("slot {slot} is in use by backend {pid}; not dropping it")]
    SlotInUse {
        /// The slot.
        slot: String,
        /// The walsender serving it.
        pid: i32,
    },
    /// A table's mapping no longer fits the table.
    #[error("table {table}: {error}")]
    Mapping {
        /// `schema.table`.
        table: String,
        /// The field and reason.
        error: RowError,
    },
}

impl CdcError {
    /// Whether reconnecting may help.
    pub fn is_retriable(&self) -> bool {
        match self {
            CdcError::Refused(_) | CdcError::Mapping { .. } => false,
            CdcError::Publish(e) => e.is_retriable(),
            _ => true,
        }
    }
}

impl Component for PgCdcConfig {
    /// The settings' rules live with the settings (`config.rs`).
    fn validate(&self, at: &str) -> Vec<Problem> {
        self.validate_settings(at)
    }

    fn outputs(&self) -> Vec<Port> {
        let tables = self.tables.iter();
        tables
            .map(|(name, table)| Port::mapped(format!("tables.{name}.topic"), &table.topic))
            .collect()
    }

    /// Every mapping against the contract of its topic.
    fn check(&self, at: &str, graph: &dyn Graph) -> Vec<Problem> {
        let tables = self.tables.iter();
        crate::sources::mapping::check_all(
            graph,
            tables.map(|(name, table)| (format!("{at}.tables.{name}"), Cow::Borrowed(table))),
        )
    }

    /// Builds the source and checks its database, waiting up to 30 s for one that is still
    /// starting; a database that cannot work (wal_level, privileges, tables) stops the start.
    async fn build(&self, context: Context) -> Result<Running, crate::Error> {
        let tables = self
            .tables
            .iter()
            .filter_map(|(name, mapping)| {
                let resolved = context.resolve(&mapping.topic)?;
                Some(Table {
                    name: name.clone(),
                    mapping: mapping.clone(),
                    kind: resolved.contract,
                    dlq_topic: resolved.dlq,
                    topic: resolved.topic,
                })
            })
            .collect();
        let source = PgCdcSource::build(
            &context.id,
            &context.group(),
            self.clone(),
            tables,
            context.publisher.clone(),
        )?;
        let mut attempt = 0;
        loop {
            match source.preflight().await {
                Ok(()) => break,
                Err(err) if err.is_retriable() && attempt < 30 => {
                    attempt += 1;
                    tracing::warn!(error = %err, attempt, "source database not reachable yet; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(err) => return Err(err.into()),
            }
        }
        // One replica streams from the slot; the others stand by.
        let lease = context.lease(&self.state_database)?;
        let ready = source.readiness();
        let source = Arc::new(source);
        let control = Arc::new(operator::CdcControl(source.clone()));
        Ok(Running::new(ready.clone(), move |shutdown| async move {
            Ok(lease.run(&ready, shutdown, |stop| source.run(stop)).await?)
        })
        .control(control))
    }
}

/// One captured table.
#[derive(Debug, Clone)]
pub struct Table {
    /// `schema.table`.
    pub name: String,
    /// Its mapping.
    pub mapping: Mapping,
    /// The contract of its topic.
    pub kind: EventKind,
    /// Broker-side topic.
    pub topic: String,
    /// Broker-side dead-letter topic.
    pub dlq_topic: String,
}

/// A running `pg_cdc` source.
pub struct PgCdcSource {
    id: String,
    state_key: String,
    config: PgCdcConfig,
    tables: Vec<Table>,
    publisher: Publisher,
    replication: ReplicationConfig,
    ready: Readiness,
    /// Held while an operator's re-snapshot runs (one at a time).
    resnapshot: tokio::sync::Mutex<()>,
    /// Where the stream stands, for operators.
    progress: std::sync::Mutex<Progress>,
}

/// Where a `pg_cdc` stream stands (the console's connector card).
#[derive(Debug, Default, Clone)]
struct Progress {
    /// The last LSN confirmed to the server (everything before it is on the broker).
    confirmed: Option<String>,
    /// When changes were last published and acknowledged (epoch ms).
    last_published: Option<i64>,
}

impl PgCdcSource {
    /// Builds the source (no I/O; [`PgCdcSource::preflight`] checks the database).
    /// `state_key` names its record in `erpstream.cdc_sources` (unique per deployment).
    pub fn build(
        id: &str,
        state_key: &str,
        config: PgCdcConfig,
        tables: Vec<Table>,
        publisher: Publisher,
    ) -> Result<Self, CdcError> {
        let target: crate::postgres::PgTarget = config
            .database
            .parse()
            .map_err(|e| CdcError::Refused(format!("database: {e}")))?;
        let url = &target.config;
        let host = match url.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
            #[cfg(unix)]
            Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
            None => "localhost".to_string(),
        };
        let password = url
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        let replication = ReplicationConfig::new(
            host,
            url.get_user().unwrap_or("postgres"),
            password,
            url.get_dbname().unwrap_or("postgres"),
            config.slot.clone(),
            config.publication.clone(),
        )
        .with_port(url.get_ports().first().copied().unwrap_or(5432))
        .with_tls(target.replication_tls())
        .with_options("-c datestyle=ISO -c timezone=UTC")
        .with_application_name(format!("erpstream-{id}"))
        .with_status_interval(Duration::from_millis(500))
        .with_wakeup_interval(config.heartbeat)
        .with_buffer_size(16_384);
        Ok(Self {
            id: id.to_string(),
            state_key: state_key.to_string(),
            config,
            tables,
            publisher,
            replication,
            ready: Readiness::not_yet("connecting to the source database"),
            resnapshot: tokio::sync::Mutex::new(()),
            progress: std::sync::Mutex::default(),
        })
    }

    /// True while the source streams with slot lag under `max_lag`.
    pub fn readiness(&self) -> Readiness {
        self.ready.clone()
    }

    /// Checks the server, the user's privileges and every table against its mapping, so a
    /// topology that cannot work is refused at start with the table named.
    pub async fn preflight(&self) -> Result<(), CdcError> {
        let source = control::connect(&self.config.database, "source database").await?;
        control::check_server(&source).await?;
        self.bind_all(&source).await.map(|_| ())
    }

    async fn bind_all(
        &self,
        source: &tokio_postgres::Client,
    ) -> Result<Vec<(Arc<Table>, TableShape, Bound)>, CdcError> {
        let mut out = Vec::new();
        for table in &self.tables {
            let shape = control::table_shape(source, &table.name).await?;
            let bound = Bound::new(&table.mapping, table.kind, &shape.columns, "column").map_err(
                |error| CdcError::Mapping {
                    table: table.name.clone(),
                    error,
                },
            )?;
            out.push((Arc::new(table.clone()), shape, bound));
        }
        Ok(out)
    }

    /// Runs until `shutdown` turns true, reconnecting after failures that may pass (the
    /// database restarting, the broker away); returns the error that will not.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) -> Result<(), CdcError> {
        let mut backoff = Duration::from_millis(500);
        loop {
            let started = Instant::now();
            let result = self.session(&mut shutdown).await;
            self.ready
                .not_ready("replication session ended; reconnecting");
            match result {
                Ok(()) => return Ok(()),
                Err(err) if !err.is_retriable() => return Err(err),
                Err(err) => {
                    metrics::counter!(m::ERRORS, m::COMPONENT_ID => self.id.clone(),
                        m::COMPONENT_TYPE => TYPE, m::ERROR_TYPE => "session", m::STAGE => "stream")
                    .increment(1);
                    if started.elapsed() > Duration::from_secs(30) {
                        backoff = Duration::from_millis(500);
                    }
                    tracing::warn!(error = %err, retry_in = ?backoff, "pg_cdc session ended; reconnecting");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => return Ok(()),
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// One connection's life: control checks, slot and snapshot if needed, then streaming.
    async fn session(&self, shutdown: &mut watch::Receiver<bool>) -> Result<(), CdcError> {
        let source = control::connect(&self.config.database, "source database").await?;
        control::check_server(&source).await?;
        let bound = self.bind_all(&source).await?;
        let names: Vec<String> = self.tables.iter().map(|t| t.name.clone()).collect();
        control::ensure_publication(
            &source,
            &self.config.publication,
            &names,
            self.config.create,
        )
        .await?;
        let state = StateStore::open(&self.config.state_database, &self.state_key).await?;
        let record = state.load().await?;
        let slot = control::slot_state(&source, &self.config.slot).await?;
        let plan = plan(
            self.config.snapshot,
            self.config.create,
            &self.config.slot,
            &slot,
            record.as_ref(),
        )?;
        if plan.drop_first {
            tracing::warn!(slot = %self.config.slot, "dropping the slot to start over");
            control::drop_slot(&source, &self.config.slot).await?;
        }
        let mut client = ReplicationClient::connect_gated(self.replication.clone()).await?;
        if plan.create {
            let rows = client
                .simple_query(&format!(
                    "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput (SNAPSHOT 'export')",
                    control::quote_ident(&self.config.slot)
                ))
                .await?;
            let text = |i: usize| {
                rows.first()
                    .and_then(|r| r.get(i).cloned().flatten())
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default()
            };
            let (consistent, snapshot_name) = (text(1), text(2));
            tracing::info!(slot = %self.config.slot, consistent_point = %consistent, "replication slot created");
            state.begin(&self.config.slot, &consistent).await?;
            let rows = if plan.snapshot {
                self.snapshot(&snapshot_name, &bound, shutdown).await?
            } else {
                0
            };
            if *shutdown.borrow() {
                return Ok(());
            }
            state.complete(rows).await?;
        } else if record.is_none() {
            // An existing slot streamed without a snapshot (mode never): remember it, so its
            // loss is noticed later.
            state.begin(&self.config.slot, "").await?;
            state.complete(0).await?;
        }
        client.start().await?;
        client.wait_started().await?;
        tracing::info!(slot = %self.config.slot, publication = %self.config.publication, "streaming changes");
        let targets: HashMap<String, (Arc<Table>, Vec<String>)> = bound
            .into_iter()
            .map(|(table, shape, _)| {
                let keys = shape.key_names().into_iter().map(str::to_string).collect();
                (table.name.clone(), (table, keys))
            })
            .collect();
        self.stream(client, source, targets, shutdown).await
    }

    /// Reads every table inside the exported snapshot and waits for every record's
    /// acknowledgement; returns the row count.
    async fn snapshot(
        &self,
        snapshot_name: &str,
        bound: &[(Arc<Table>, TableShape, Bound)],
        shutdown: &watch::Receiver<bool>,
    ) -> Result<i64, CdcError> {
        let reader = snapshot::SnapshotReader::begin(
            &self.config.database,
            snapshot_name,
            self.config.snapshot_chunk,
        )
        .await?;
        // Stream changes commit after the slot's consistent point, which came after this
        // moment, so snapshot rows never look newer than the changes that follow them.
        let occurred_at = now_millis() - 1_000;
        let total = self
            .read_tables(&reader, bound, occurred_at, None, shutdown)
            .await?;
        reader.finish().await?;
        Ok(total)
    }

    /// An operator's re-snapshot: every captured table read again, in a repeatable-read
    /// transaction of its own while the stream goes on, and published like a snapshot.
    /// Rows are stamped just before the transaction began (the database's clock), so a
    /// change committed after the read is newer and wins downstream, and their idempotency
    /// keys name this run, so dedupe lets them through. Rows deleted before the read are
    /// not in it: a stale figure for them downstream is for `reconcile` to find. Returns
    /// the rows and tables read; one re-snapshot runs at a time.
    pub async fn resnapshot(&self) -> Result<(i64, usize), CdcError> {
        let Ok(_running) = self.resnapshot.try_lock() else {
            return Err(CdcError::Refused("a re-snapshot is running already".into()));
        };
        let source = control::connect(&self.config.database, "source database").await?;
        let bound = self.bind_all(&source).await?;
        let (reader, started) =
            snapshot::SnapshotReader::begin_now(&self.config.database, self.config.snapshot_chunk)
                .await?;
        let run = uuid::Uuid::now_v7().to_string();
        let (_, never) = watch::channel(false);
        tracing::info!(run = %run, "re-snapshot started");
        let rows = self
            .read_tables(&reader, &bound, started - 1, Some(&run), &never)
            .await?;
        reader.finish().await?;
        tracing::info!(run = %run, rows, "re-snapshot complete");
        Ok((rows, bound.len()))
    }

    /// Publishes every row of every table through `reader`, stamped `occurred_at`, and
    /// waits for the acknowledgements; returns the row count. A re-snapshot's `run` goes
    /// into the idempotency keys.
    async fn read_tables(
        &self,
        reader: &snapshot::SnapshotReader,
        bound: &[(Arc<Table>, TableShape, Bound)],
        occurred_at: i64,
        run: Option<&str>,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<i64, CdcError> {
        let position = if run.is_some() {
            "re-snapshot"
        } else {
            "snapshot"
        };
        let mut total = 0i64;
        for (table, shape, bound) in bound {
            let count = reader.open(&table.name, shape).await?;
            tracing::info!(table = %table.name, rows = count, "{position} started");
            let mut done = 0u64;
            let mut pending: Vec<PendingAck> = Vec::new();
            let started = Instant::now();
            loop {
                if *shutdown.borrow() {
                    return Ok(total);
                }
                let rows = reader.next().await?;
                if rows.is_empty() {
                    break;
                }
                for row in &rows {
                    let xmin = row.get(0).unwrap_or_default();
                    let cells: Vec<Cell> = (1..row.len())
                        .map(|i| row.get(i).map_or(Cell::Null, Cell::Text))
                        .collect();
                    let identity = bound.identity(&cells);
                    let key = match run {
                        None => format!("pg:{}:{identity}:x{xmin}", table.name),
                        Some(run) => format!("pg:{}:{identity}:x{xmin}:r{run}", table.name),
                    };
                    let envelope = self.envelope(&key, occurred_at);
                    let change = match bound.event(&cells, None, &envelope) {
                        Ok(event) => Change::Event(Box::new(event)),
                        Err(error) => Change::Refused {
                            error,
                            row: decode::row_json(&cells),
                        },
                    };
                    if let Some(ack) = self.publish(table, change, &identity, position).await? {
                        pending.push(ack);
                    }
                }
                done += rows.len() as u64;
                metrics::counter!(SNAPSHOT_ROWS, m::COMPONENT_ID => self.id.clone())
                    .increment(rows.len() as u64);
                if pending.len() >= MAX_PENDING / 4 {
                    self.acknowledged(pending.drain(..)).await?;
                }
                tracing::info!(table = %table.name, rows = done, of = count,
                    rows_per_second = (done as f64 / started.elapsed().as_secs_f64().max(1e-3)) as u64,
                    "{position} progress");
            }
            self.acknowledged(pending.drain(..)).await?;
            tracing::info!(table = %table.name, rows = done, seconds = started.elapsed().as_secs_f64(), "{position} of table complete");
            total += done as i64;
        }
        Ok(total)
    }

    /// Waits for the broker's acknowledgement of every record in `pending`.
    async fn acknowledged(
        &self,
        pending: impl Iterator<Item = PendingAck>,
    ) -> Result<(), CdcError> {
        let acks = futures::future::try_join_all(pending).await?;
        metrics::counter!(m::SENT_EVENTS, m::COMPONENT_ID => self.id.clone(),
            m::COMPONENT_TYPE => TYPE)
        .increment(acks.len() as u64);
        Ok(())
    }
}

/// What a session does with the slot before streaming.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Plan {
    drop_first: bool,
    create: bool,
    snapshot: bool,
}

/// Decides from the slot's state and the source's record what to do, refusing where
/// changes may have been lost and the mode forbids starting over.
fn plan(
    mode: SnapshotMode,
    create: bool,
    slot_name: &str,
    slot: &SlotState,
    record: Option<&SourceRecord>,
) -> Result<Plan, CdcError> {
    let streamed_before = record.is_some_and(|r| r.complete && r.slot == slot_name);
    let fresh = |drop_first: bool| -> Result<Plan, CdcError> {
        if !create {
            return Err(CdcError::Refused(format!(
                "slot {slot_name} must be created (set create: true, or create it)"
            )));
        }
        Ok(Plan {
            drop_first,
            create: true,
            snapshot: mode != SnapshotMode::Never,
        })
    };
    match slot {
        SlotState::Ready if streamed_before || mode == SnapshotMode::Never => Ok(Plan {
            drop_first: false,
            create: false,
            snapshot: false,
        }),
        // The slot exists but no snapshot on it completed (a crash mid-snapshot, or a slot
        // made elsewhere): only a new slot gives a consistent snapshot.
        SlotState::Ready => fresh(true).map_err(|_| {
            CdcError::Refused(format!(
                "slot {slot_name} exists but no snapshot on it completed; set create: true to start over on a new slot, or snapshot: never to stream from it"
            ))
        }),
        SlotState::Missing | SlotState::Unusable(_) if streamed_before => {
            let why = match slot {
                SlotState::Unusable(reason) => reason.clone(),
                _ => format!("slot {slot_name} disappeared"),
            };
            match mode {
                SnapshotMode::Initial => Err(CdcError::Refused(format!(
                    "{why}; changes since may have been lost. Set snapshot: when_needed to read the tables again (or never to go on from now)"
                ))),
                _ => fresh(matches!(slot, SlotState::Unusable(_))),
            }
        }
        SlotState::Missing => fresh(false),
        SlotState::Unusable(_) => fresh(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(complete: bool) -> SourceRecord {
        SourceRecord {
            slot: "s".into(),
            complete,
        }
    }

    #[test]
    fn plans_follow_the_snapshot_mode() {
        use SnapshotMode::*;
        let go = |drop_first, create, snapshot| Plan {
            drop_first,
            create,
            snapshot,
        };
        // First run.
        assert_eq!(
            plan(Initial, true, "s", &SlotState::Missing, None).ok(),
            Some(go(false, true, true))
        );
        assert_eq!(
            plan(Never, true, "s", &SlotState::Missing, None).ok(),
            Some(go(false, true, false))
        );
        assert!(plan(Initial, false, "s", &SlotState::Missing, None).is_err());
        // Restart after a completed snapshot.
        assert_eq!(
            plan(Initial, true, "s", &SlotState::Ready, Some(&record(true))).ok(),
            Some(go(false, false, false))
        );
        // Crash mid-snapshot: start over on a new slot.
        assert_eq!(
            plan(Initial, true, "s", &SlotState::Ready, Some(&record(false))).ok(),
            Some(go(true, true, true))
        );
        // The slot vanished after streaming: refuse, unless told to re-read.
        assert!(plan(Initial, true, "s", &SlotState::Missing, Some(&record(true))).is_err());
        assert_eq!(
            plan(
                WhenNeeded,
                true,
                "s",
                &SlotState::Missing,
                Some(&record(true))
            )
            .ok(),
            Some(go(false, true, true))
        );
        assert_eq!(
            plan(
                WhenNeeded,
                true,
                "s",
                &SlotState::Unusable("lost".into()),
                Some(&record(true))
            )
            .ok(),
            Some(go(true, true, true))
        );
    }
}
