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

mod config;
mod control;
mod snapshot;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use erpstream_schemas::{EventKind, Traceparent, now_millis};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use pg_walstream::{LogicalReplicationMessage, LogicalReplicationParser, TupleData};
use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent, TlsConfig};
use tokio::sync::watch;

use crate::sources::mapping::{self, Bound, Cell, Deleted, Envelope, Mapped, Mapping, RowError};
pub use config::{PgCdcConfig, SnapshotMode};
use control::{SlotState, SourceRecord, StateStore, TableShape};

use crate::component::{Component, Context, Graph, Kind, Names, Port, Readiness, Running};
use crate::kafka::TopicSpec;
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
    const TYPE: &'static str = TYPE;
    const KIND: Kind = Kind::Source;

    fn validate(&self, at: &str) -> Vec<Problem> {
        self.validate_settings(at)
    }

    fn outputs(&self) -> Vec<Port> {
        self.tables
            .iter()
            .map(|(name, table)| {
                Port::new(
                    format!("tables.{name}.topic"),
                    &table.topic,
                    &mapping::MAPPABLE,
                )
            })
            .collect()
    }

    /// Every table's mapping against the contract of its topic.
    fn check(&self, at: &str, graph: &dyn Graph) -> Vec<Problem> {
        let mut problems = Vec::new();
        for (name, table) in &self.tables {
            // A topic that carries no mappable contract is refused with the port.
            if let Some(kind) = graph.contract(&table.topic)
                && crate::sources::mapping::MAPPABLE.contains(&kind)
            {
                for (field, reason) in mapping::check(table, kind) {
                    problems.push(Problem::new(format!("{at}.tables.{name}.{field}"), reason));
                }
            }
        }
        problems
    }

    /// The dead-letter topic of every mapped topic (rows that do not fit their contract).
    fn topics(&self, _id: &str, names: &Names, partitions: &dyn Fn(&str) -> i32) -> Vec<TopicSpec> {
        crate::component::dead_letter_topics(&self.outputs(), names, partitions)
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
        Ok(Running::default()
            .readiness(source.readiness())
            .task(move |shutdown| async move { Ok(source.run(shutdown).await?) }))
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
}

/// A table bound to its current columns.
struct Target {
    table: Arc<Table>,
    bound: Bound,
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
        let url: tokio_postgres::Config = config
            .database
            .parse()
            .map_err(|e| CdcError::Refused(format!("database: {e}")))?;
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
        .with_tls(TlsConfig::disabled())
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
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), CdcError> {
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
        let mut total = 0i64;
        for (table, shape, bound) in bound {
            let count = reader.open(&table.name, shape).await?;
            tracing::info!(table = %table.name, rows = count, "snapshot started");
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
                    let key = format!("pg:{}:{identity}:x{xmin}", table.name);
                    let envelope = self.envelope(&key, occurred_at);
                    let outcome = bound
                        .event(&cells, None, &envelope)
                        .map(|e| Change::Event(Box::new(e)));
                    if let Some(ack) = self
                        .publish(table, outcome, &cells, &identity, "snapshot")
                        .await?
                    {
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
                    "snapshot progress");
            }
            self.acknowledged(pending.drain(..)).await?;
            tracing::info!(table = %table.name, rows = done, seconds = started.elapsed().as_secs_f64(), "snapshot of table complete");
            total += done as i64;
        }
        reader.finish().await?;
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

    fn envelope<'a>(&'a self, key: &'a str, occurred_at: i64) -> Envelope<'a> {
        Envelope {
            idempotency_key: key,
            source: &self.id,
            source_system: &self.config.source_system,
            occurred_at,
            ingested_at: now_millis(),
        }
    }

    /// Queues the record (or dead-letter record) for one change; `None` if nothing is sent.
    async fn publish(
        &self,
        table: &Table,
        outcome: Result<Change, RowError>,
        cells: &[Cell<'_>],
        identity: &str,
        position: &str,
    ) -> Result<Option<PendingAck>, CdcError> {
        metrics::counter!(m::RECEIVED_EVENTS, m::COMPONENT_ID => self.id.clone(),
            m::COMPONENT_TYPE => TYPE)
        .increment(1);
        let trace = Traceparent::new_root();
        let record = match outcome {
            Ok(Change::Event(event)) => RawRecord {
                topic: table.topic.clone(),
                key: Some(event.key().as_bytes().to_vec()),
                payload: Some(
                    event
                        .encode(self.publisher.codec(), &table.topic)
                        .await
                        .map_err(PublishError::from)?,
                ),
                headers: vec![crate::kafka::headers::trace_header(&trace)],
                partition: None,
            },
            Ok(Change::Tombstone(key)) => RawRecord {
                topic: table.topic.clone(),
                key: Some(key.into_bytes()),
                payload: None,
                headers: vec![crate::kafka::headers::trace_header(&trace)],
                partition: None,
            },
            Ok(Change::Skip) => return Ok(None),
            Err(error) => {
                tracing::warn!(table = %table.name, row = identity, %error, "row does not fit its contract; dead-lettered");
                metrics::counter!(m::DEAD_LETTERED, m::COMPONENT_ID => self.id.clone(),
                    m::COMPONENT_TYPE => TYPE)
                .increment(1);
                crate::kafka::DeadLetter::new(
                    crate::kafka::Failure::Mapping,
                    &error.to_string(),
                    &self.id,
                )
                .of_row(
                    &table.dlq_topic,
                    identity,
                    row_json(cells).into_bytes(),
                    &[("table", &table.name), ("lsn", position)],
                    &trace,
                )
            }
        };
        Ok(Some(self.publisher.enqueue(record).await?))
    }

    /// Streams changes until shutdown or an error.
    async fn stream(
        &self,
        mut client: ReplicationClient,
        source: tokio_postgres::Client,
        tables: HashMap<String, (Arc<Table>, Vec<String>)>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), CdcError> {
        let mut parser = LogicalReplicationParser::with_protocol_version(1);
        let mut relations: HashMap<u32, Option<Target>> = HashMap::new();
        let mut inflight: FuturesOrdered<BoxFuture<'static, Result<Done, PublishError>>> =
            FuturesOrdered::new();
        let mut pending_records = 0usize;
        let mut txn: Option<Txn> = None;
        let mut heartbeat = tokio::time::interval(self.config.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let max_lag = i64::try_from(self.config.max_lag.as_u64()).unwrap_or(i64::MAX);
        loop {
            let event = tokio::select! {
                _ = shutdown.changed() => break,
                Some(done) = inflight.next(), if !inflight.is_empty() => {
                    let done = done?;
                    pending_records -= done.records;
                    client.update_applied_lsn(done.end_lsn);
                    if let Some(commit_ms) = done.commit_ms {
                        let seconds = (now_millis() - commit_ms).max(0) as f64 / 1000.0;
                        metrics::histogram!(COMMIT_TO_ACK, m::COMPONENT_ID => self.id.clone()).record(seconds);
                    }
                    metrics::counter!(m::SENT_EVENTS, m::COMPONENT_ID => self.id.clone(),
                        m::COMPONENT_TYPE => TYPE).increment(done.records as u64);
                    continue;
                }
                _ = heartbeat.tick() => {
                    control::heartbeat(&source).await?;
                    if let Some((lag, retained)) = control::slot_lag(&source, &self.config.slot).await? {
                        metrics::gauge!(SLOT_LAG, m::COMPONENT_ID => self.id.clone()).set(lag as f64);
                        metrics::gauge!(SLOT_RETAINED, m::COMPONENT_ID => self.id.clone()).set(retained as f64);
                        if lag > max_lag {
                            if self.ready.is_ready() {
                                tracing::warn!(lag_bytes = lag, max_lag = max_lag, "slot lag above max_lag; not ready");
                            }
                            self.ready.not_ready(format!("slot lag {lag} bytes is above max_lag {max_lag}"));
                        } else {
                            self.ready.ready();
                        }
                    }
                    continue;
                }
                event = client.recv(), if pending_records < MAX_PENDING => event?,
            };
            let Some(event) = event else {
                return Err(CdcError::Decode("the server ended the stream".into()));
            };
            match event {
                ReplicationEvent::Begin {
                    final_lsn,
                    commit_time_micros,
                    ..
                } => {
                    txn = Some(Txn {
                        commit_lsn: final_lsn,
                        commit_ms: (commit_time_micros + PG_EPOCH_MICROS) / 1000,
                        changes: 0,
                        acks: Vec::new(),
                    });
                }
                ReplicationEvent::Commit { end_lsn, .. } => {
                    let Some(done) = txn.take() else {
                        continue;
                    };
                    pending_records += done.acks.len();
                    let records = done.acks.len();
                    let commit_ms = done.commit_ms;
                    let acks = done.acks;
                    inflight.push_back(Box::pin(async move {
                        futures::future::try_join_all(acks).await?;
                        Ok(Done {
                            end_lsn,
                            records,
                            commit_ms: (records > 0).then_some(commit_ms),
                        })
                    }));
                }
                ReplicationEvent::Message {
                    lsn, transactional, ..
                } => {
                    if !transactional && txn.is_none() {
                        inflight.push_back(Box::pin(async move {
                            Ok(Done {
                                end_lsn: lsn,
                                records: 0,
                                commit_ms: None,
                            })
                        }));
                    }
                }
                ReplicationEvent::KeepAlive { wal_end, .. } => {
                    if txn.is_none() && inflight.is_empty() && pending_records == 0 {
                        client.update_applied_lsn(wal_end);
                    }
                }
                ReplicationEvent::XLogData { data, .. } => {
                    let message = parser
                        .parse_wal_message_bytes(data)
                        .map_err(|e| CdcError::Decode(e.to_string()))?
                        .message;
                    self.change(message, &tables, &mut relations, txn.as_mut())
                        .await?;
                }
                ReplicationEvent::StoppedAt { .. } => break,
            }
            if !self.ready.is_ready() && txn.is_none() {
                self.ready.ready();
            }
        }
        // Shutting down: wait briefly for what is in flight so its position is confirmed.
        let drain = async {
            while let Some(done) = inflight.next().await {
                match done {
                    Ok(done) => client.update_applied_lsn(done.end_lsn),
                    Err(_) => break,
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
        tokio::time::sleep(Duration::from_millis(600)).await;
        let _ = client.shutdown().await;
        Ok(())
    }

    /// Handles one pgoutput message inside (or between) transactions.
    async fn change(
        &self,
        message: LogicalReplicationMessage,
        tables: &HashMap<String, (Arc<Table>, Vec<String>)>,
        relations: &mut HashMap<u32, Option<Target>>,
        txn: Option<&mut Txn>,
    ) -> Result<(), CdcError> {
        let (relation_id, new, old, deleted) = match message {
            LogicalReplicationMessage::Relation {
                relation_id,
                namespace,
                relation_name,
                columns,
                ..
            } => {
                let name = format!("{namespace}.{relation_name}");
                let target = match tables.get(&name) {
                    None => None,
                    Some((table, keys)) => {
                        let columns: Vec<mapping::Column> = columns
                            .iter()
                            .map(|c| mapping::Column {
                                name: c.name.to_string(),
                                key: if keys.is_empty() {
                                    c.is_key()
                                } else {
                                    keys.iter().any(|k| **k == *c.name)
                                },
                            })
                            .collect();
                        let bound = Bound::new(&table.mapping, table.kind, &columns, "column")
                            .map_err(|error| CdcError::Mapping {
                                table: name.clone(),
                                error,
                            })?;
                        tracing::info!(table = %name, "table shape (re)bound");
                        Some(Target {
                            table: table.clone(),
                            bound,
                        })
                    }
                };
                relations.insert(relation_id, target);
                return Ok(());
            }
            LogicalReplicationMessage::Insert { relation_id, tuple } => {
                (relation_id, Some(tuple), None, false)
            }
            LogicalReplicationMessage::Update {
                relation_id,
                old_tuple,
                new_tuple,
                key_type,
            } => {
                // Only a full old row (REPLICA IDENTITY FULL) can stand in for unchanged
                // TOASTed values; a key-only one cannot.
                let old = old_tuple
                    .filter(|_| key_type == Some('O'))
                    .map(|t| (t, true));
                (relation_id, Some(new_tuple), old, false)
            }
            LogicalReplicationMessage::Delete {
                relation_id,
                old_tuple,
                key_type,
            } => (relation_id, None, Some((old_tuple, key_type == 'O')), true),
            LogicalReplicationMessage::Truncate { relation_ids, .. } => {
                for id in relation_ids {
                    if let Some(Some(target)) = relations.get(&id) {
                        tracing::warn!(table = %target.table.name, "TRUNCATE is not captured; reconcile the topic's consumers");
                    }
                }
                return Ok(());
            }
            _ => return Ok(()),
        };
        let Some(txn) = txn else {
            return Err(CdcError::Decode("a change outside a transaction".into()));
        };
        let Some(Some(target)) = relations.get(&relation_id) else {
            if !relations.contains_key(&relation_id) {
                return Err(CdcError::Decode(format!(
                    "a change of relation {relation_id} before its Relation message"
                )));
            }
            return Ok(());
        };
        txn.changes += 1;
        let position = format!("{}:{}", txn.commit_lsn, txn.changes);
        let (old_tuple, old_full) = match &old {
            Some((tuple, full)) => (Some(tuple), *full),
            None => (None, false),
        };
        let old_text = old_tuple.map(texts);
        let old_cells = old_text.as_ref().map(|t| cells(t, !old_full));
        let new_text = new.as_ref().map(texts);
        let new_cells = new_text.as_ref().map(|t| cells(t, false));
        let row: &[Cell] = new_cells
            .as_deref()
            .or(old_cells.as_deref())
            .unwrap_or_default();
        let identity = target.bound.identity(row);
        let key = format!("pg:{}:{identity}:{position}", target.table.name);
        let envelope = self.envelope(&key, txn.commit_ms);
        let outcome = if deleted {
            let old = old_cells.as_deref().unwrap_or_default();
            target.bound.deleted(old, &envelope).map(|d| match d {
                Deleted::Tombstone(key) => Change::Tombstone(key),
                Deleted::Skip => Change::Skip,
                Deleted::Event(event) => Change::Event(event),
            })
        } else {
            let old = old_cells.as_deref().filter(|_| old_full);
            target
                .bound
                .event(row, old, &envelope)
                .map(|e| Change::Event(Box::new(e)))
        };
        if let Some(ack) = self
            .publish(&target.table, outcome, row, &identity, &position)
            .await?
        {
            txn.acks.push(ack);
        }
        Ok(())
    }
}

/// What one change becomes.
enum Change {
    Event(Box<Mapped>),
    Tombstone(String),
    Skip,
}

/// A transaction being received.
struct Txn {
    commit_lsn: Lsn,
    commit_ms: i64,
    changes: u32,
    acks: Vec<PendingAck>,
}

/// A transaction (or heartbeat) whose records the broker acknowledged.
struct Done {
    end_lsn: Lsn,
    records: usize,
    commit_ms: Option<i64>,
}

/// The text of each column of a tuple (`None`: NULL; unchanged TOAST is told by `cells`).
fn texts(tuple: &TupleData) -> Vec<(u8, Option<Cow<'_, str>>)> {
    tuple
        .columns
        .iter()
        .map(|c| (c.data_type, c.as_str()))
        .collect()
}

/// Cells of a tuple; with `key_only`, NULLs of non-key columns are values the change does
/// not carry, not NULLs.
fn cells<'a>(texts: &'a [(u8, Option<Cow<'a, str>>)], key_only: bool) -> Vec<Cell<'a>> {
    texts
        .iter()
        .map(|(kind, text)| match (kind, text) {
            (b'u', _) => Cell::Unchanged,
            (b'n', _) if key_only => Cell::Missing,
            (_, Some(text)) => Cell::Text(text),
            _ => Cell::Null,
        })
        .collect()
}

fn row_json(cells: &[Cell]) -> String {
    let values: Vec<serde_json::Value> = cells
        .iter()
        .map(|c| match c {
            Cell::Text(t) => serde_json::Value::String((*t).to_string()),
            _ => serde_json::Value::Null,
        })
        .collect();
    serde_json::Value::Array(values).to_string()
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
