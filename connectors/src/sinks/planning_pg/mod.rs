//! `planning_pg`: upserts `catalog.update`, `inventory.change` and `demand.actual` into the
//! planning database (blueprint §4 mapping), in batches.
//!
//! Contract:
//! - **Offsets in the same transaction.** A batch's rows and the next input offset of every
//!   partition it read are written in one transaction (`planning.sink_offsets`); records
//!   below a partition's stored offset are skipped. A crash before the commit leaves neither
//!   rows nor offsets, one after it leaves both: a replay neither loses nor doubles an effect.
//!   The offsets are also stored in Kafka afterwards, only so a restart reads less again.
//! - **Never backwards.** Every row carries `source_version` (the event's ERP time, epoch
//!   ms); an upsert replaces a row only with an equal or newer version, so out-of-order or
//!   replayed records leave the newest values. Within a batch the newest record per key wins.
//! - **Mapping.** `catalog.update`: one product per variant (`sku`, `name` = group name,
//!   `category_name` = last category, `product_family`, `lead_time_days`, `is_active`).
//!   `inventory.change` with `new_quantity` (absolute): `on_hand_qty`, `allocated_qty`,
//!   `in_transit_qty` (absent = 0), `updated_at` = ERP time; relative adjustments are not
//!   planning data and are skipped (counted). `demand.actual`: one row per (sku, period,
//!   region, channel).
//! - **Refusals.** Inventory and demand for a sku the products table does not know, and
//!   periods that are not the first day of a month, go to `<topic>.dlq` with the reason
//!   (acknowledged before the batch commits).

mod config;
mod waiting;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use erpstream_schemas::{CatalogUpdate, Codec, DemandActual, EventKind, InventoryChange};
use rdkafka::consumer::Consumer;
use rdkafka::message::{Message, OwnedMessage};
use tokio::sync::watch;
use tokio_postgres::Client;

pub use config::PlanningPgConfig;

use crate::component::{Component, Context, Port, Readiness, Resolved, Running, Shadow};
use crate::kafka::{
    self, DeadLetter, GroupConsumer, KafkaConfig, OffsetTracker, Publisher, TrackingContext,
};
use crate::metrics as m;
use crate::planning;
use crate::validation::{Checks, Problem};

/// Component type name in the topology.
pub const TYPE: &str = "planning_pg";
/// Rows written (inserted or updated), by `table`.
pub const ROWS: &str = "erpstream_planning_rows_written_total";
/// Seconds one batch transaction took.
pub const BATCH_SECONDS: &str = "erpstream_planning_batch_seconds";
/// How long the sink waits for records before it looks at the rows waiting for products.
const IDLE_CHECK: Duration = Duration::from_secs(5);
/// Stock and demand rows waiting for their product.
pub const WAITING: &str = "erpstream_planning_waiting_rows";
/// Rows that waited for their product, by `outcome` (`parked`, `applied`).
pub const WAITED: &str = "erpstream_planning_waited_rows_total";

impl Component for PlanningPgConfig {
    fn validate(&self, at: &str) -> Vec<Problem> {
        Checks::new(at)
            .listed("inputs", &self.inputs, "topic")
            .postgres_url("database", &self.database)
            .positive("batch_size", self.batch_size > 0)
            .positive("product_wait", !self.product_wait.is_zero())
            .positive("fetch_wait", !self.fetch_wait.is_zero())
            .rule(self.max_waiting >= 0, "max_waiting", "must be >= 0")
            .done()
    }

    fn inputs(&self) -> Vec<Port> {
        Port::list(
            "inputs",
            &self.inputs,
            &[
                EventKind::CatalogUpdate,
                EventKind::InventoryChange,
                EventKind::DemandActual,
            ],
        )
    }

    async fn build(&self, context: Context) -> Result<Running, crate::Error> {
        let sink = PlanningPgSink::build(self.clone(), &context)?;
        Ok(Running::new(sink.readiness(), move |shutdown| async move {
            Ok(sink.run(shutdown).await?)
        }))
    }

    fn shadow(&self) -> Option<Shadow> {
        Some(|codec, kind, payload| Box::pin(rows_for(codec, kind, payload)))
    }
}

/// Why the sink could not be built or stopped.
#[derive(Debug, thiserror::Error)]
pub enum PlanningError {
    /// The consumer could not be created.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The planning database refused the schema or could not be reached.
    #[error("planning database: {0}")]
    Database(#[from] crate::postgres::PgError),
}

impl From<tokio_postgres::Error> for PlanningError {
    fn from(err: tokio_postgres::Error) -> Self {
        PlanningError::Database(crate::postgres::PgError::Postgres(err))
    }
}

/// A running `planning_pg` sink.
pub struct PlanningPgSink {
    writer: BatchWriter,
    config: PlanningPgConfig,
    consumer: GroupConsumer,
}

/// The sink's core, without the consumer: decodes a batch of records ([`prepare`](Self::prepare),
/// no I/O, so the next batch can be decoded while the previous one is written), refuses what
/// does not fit, and writes the rest with the next offsets in one transaction
/// ([`write`](Self::write)).
#[derive(Clone)]
pub struct BatchWriter {
    id: String,
    inputs: std::sync::Arc<HashMap<String, (EventKind, String)>>,
    publisher: Publisher,
    codec: Codec,
    product_wait: Duration,
    max_waiting: i64,
    /// When the waiting room was last checked whole, and the rows it holds since.
    room: std::sync::Arc<std::sync::Mutex<(Option<Instant>, i64)>>,
}

/// A decoded batch, newest row per key, waiting to be written.
pub struct Prepared {
    batch: Vec<OwnedMessage>,
    rows: Rows,
    refused: Vec<(usize, String)>,
    next: HashMap<(String, i32), i64>,
    skipped: u64,
}

/// Next input offset per (topic, partition), as stored with the rows.
pub type Offsets = HashMap<(String, i32), i64>;

impl BatchWriter {
    /// A writer for sink `id` reading `inputs` as `config` says; refusals are published
    /// with `publisher`.
    pub fn new(
        id: &str,
        config: &PlanningPgConfig,
        inputs: Vec<Resolved>,
        publisher: Publisher,
    ) -> Self {
        Self {
            id: id.to_string(),
            product_wait: config.product_wait,
            max_waiting: config.max_waiting,
            room: Default::default(),
            inputs: std::sync::Arc::new(
                inputs
                    .into_iter()
                    .map(|i| (i.topic, (i.contract, i.dlq)))
                    .collect(),
            ),
            codec: publisher.codec().clone(),
            publisher,
        }
    }
}

/// (sku, period, region, channel).
type DemandKey = (String, String, String, String);

/// Rows of one batch, newest per key.
#[derive(Default)]
struct Rows {
    products: HashMap<String, Product>,
    inventory: HashMap<(String, String), Stock>,
    demand: HashMap<DemandKey, Demand>,
}

struct Product {
    name: String,
    category: Option<String>,
    family: Option<String>,
    lead_time_days: Option<i32>,
    active: bool,
    system: String,
    version: i64,
}

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Stock {
    on_hand: String,
    allocated: String,
    in_transit: String,
    at: i64,
    system: String,
    version: i64,
    /// Index of the record in its batch (not kept when the row waits).
    #[serde(skip)]
    message: usize,
}

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Demand {
    quantity: String,
    system: String,
    version: i64,
    #[serde(skip)]
    message: usize,
}

impl PlanningPgSink {
    /// Builds the sink and its consumer of group `group` (no network I/O).
    pub fn build(config: PlanningPgConfig, context: &Context) -> Result<Self, PlanningError> {
        // Its state, the offsets stored with the rows, is read again from the database
        // before the first batch after a rebalance: nothing to wait for before it is ready.
        let tracking = TrackingContext::new(Readiness::not_yet("starting"), false);
        let kafka = KafkaConfig {
            fetch_wait: config.fetch_wait,
            ..context.kafka.clone()
        };
        let consumer = kafka::group_consumer(&kafka, &context.group(), &context.id, tracking)?;
        let inputs = context.inputs(&config.inputs);
        Ok(Self {
            writer: BatchWriter::new(&context.id, &config, inputs, context.publisher.clone()),
            config,
            consumer,
        })
    }

    /// Ready while the sink holds its group's assignment.
    pub fn readiness(&self) -> Readiness {
        self.consumer.context().readiness()
    }

    /// Runs until `shutdown`; a batch not yet committed is read again after a restart. The
    /// next batch is fetched and decoded (on another task) while the previous one is written.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), PlanningError> {
        let mut db = self.open().await?;
        let topics: Vec<&str> = self.writer.inputs.keys().map(String::as_str).collect();
        crate::kafka::subscribe(&self.consumer, &topics)?;
        tracing::info!(?topics, "planning sink started");
        let mut stored = Offsets::new();
        self.writer.load_offsets(&db, &mut stored).await?;
        let mut current: Option<Prepared> = None;
        let mut offsets = OffsetTracker::default();
        let mut pause = kafka::IdlePause::new(&self.consumer, &topics);
        loop {
            let revoked = self.consumer.context().take_revoked();
            if !revoked.is_empty() {
                // Partitions moved: start again from what the database holds.
                for (topic, partition) in revoked {
                    offsets.revoke(&topic, partition);
                }
                stored.clear();
                self.writer.load_offsets(&db, &mut stored).await?;
            }
            let snapshot = stored.clone();
            let mut stop = shutdown.clone();
            let fetch = async {
                let batch = kafka::next_batch(
                    &self.consumer,
                    self.config.batch_size,
                    self.config.batch_wait,
                    Some(IDLE_CHECK),
                    &mut pause,
                    &mut shutdown,
                )
                .await?;
                let writer = self.writer.clone();
                let mut shutdown = shutdown.clone();
                tokio::spawn(async move { writer.prepare(batch, &snapshot, &mut shutdown).await })
                    .await
                    .ok()
                    .flatten()
            };
            let write = async {
                match current.as_mut() {
                    Some(prepared) => {
                        self.write_until_done(&mut db, prepared, &mut stored, &mut stop)
                            .await
                    }
                    None => true,
                }
            };
            let (written, fetched) = tokio::join!(write, fetch);
            if !written {
                break;
            }
            if let Some(written) = current.take() {
                // Committed with the rows; stored in Kafka too, so a restart reads less again.
                for message in &written.batch {
                    offsets.take(message.topic(), message.partition(), message.offset(), 0);
                }
                offsets.store(&self.consumer);
            }
            match fetched {
                Some(prepared) => current = Some(prepared),
                None => break,
            }
        }
        kafka::commit_stored(&self.consumer);
        Ok(())
    }

    /// Writes `prepared`, retrying (and reconnecting) until it is done; `false` on shutdown.
    async fn write_until_done(
        &self,
        db: &mut Client,
        prepared: &mut Prepared,
        stored: &mut Offsets,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        loop {
            match self.writer.write(db, prepared, stored).await {
                Ok(()) => return true,
                Err(err) => {
                    metrics::counter!(m::ERRORS, m::COMPONENT_ID => self.writer.id.clone(),
                        m::COMPONENT_TYPE => TYPE, m::ERROR_TYPE => "database", m::STAGE => "write")
                    .increment(1);
                    tracing::warn!(error = %err, "planning batch not written; retrying");
                    tokio::select! {
                        _ = shutdown.changed() => return false,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    if db.is_closed() {
                        match self.open().await {
                            Ok(open) => *db = open,
                            Err(err) => {
                                tracing::warn!(error = %err, "planning database unreachable");
                            }
                        }
                    }
                }
            }
        }
    }

    async fn open(&self) -> Result<Client, PlanningError> {
        let mut db = crate::postgres::connect(&self.config.database, "planning database").await?;
        planning::migrate(&mut db).await?;
        Ok(db)
    }
}

impl BatchWriter {
    /// Every partition's stored next offset for this sink.
    pub async fn load_offsets(
        &self,
        db: &Client,
        stored: &mut Offsets,
    ) -> Result<(), tokio_postgres::Error> {
        let rows = db
            .query(
                "SELECT topic, partition, next_offset FROM planning.sink_offsets WHERE sink = $1",
                &[&self.id],
            )
            .await?;
        for row in rows {
            stored.insert((row.get(0), row.get(1)), row.get(2));
        }
        Ok(())
    }

    /// Decodes `batch`, skipping records below the `stored` offsets, keeping the newest row
    /// per key; no I/O but the registry, whose outage is waited out (`None` if shutdown came
    /// first: nothing of the batch is written).
    pub async fn prepare(
        &self,
        batch: Vec<OwnedMessage>,
        stored: &Offsets,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<Prepared> {
        let mut rows = Rows::default();
        let mut refused: Vec<(usize, String)> = Vec::new();
        let mut next = Offsets::new();
        let mut skipped = 0u64;
        for (index, message) in batch.iter().enumerate() {
            let tp = (message.topic().to_string(), message.partition());
            if stored.get(&tp).is_some_and(|n| message.offset() < *n) {
                continue;
            }
            let slot = next.entry(tp).or_insert(0);
            *slot = (*slot).max(message.offset() + 1);
            let Some((kind, _)) = self.inputs.get(message.topic()) else {
                continue;
            };
            let Some(payload) = message.payload() else {
                skipped += 1;
                continue;
            };
            let decoded = kafka::retrying(
                "decoding a record through the schema registry",
                shutdown,
                || decode(&self.codec, *kind, payload),
            )
            .await?;
            match decoded {
                Ok(Some(event)) => match add_rows(event, index, &mut rows) {
                    Ok(true) => {}
                    Ok(false) => skipped += 1,
                    Err(reason) => refused.push((index, reason)),
                },
                Ok(None) => skipped += 1,
                Err(err) => refused.push((index, format!("undecodable: {err}"))),
            }
        }
        Some(Prepared {
            batch,
            rows,
            refused,
            next,
            skipped,
        })
    }

    /// Writes the rows with the next offsets in one transaction; `stored` receives the new
    /// offsets. Inventory and demand of a sku the products table does not know (as of this
    /// batch's products) wait in `planning.waiting`; rows that waited for a product that has
    /// arrived since are written with the batch; refused records (and rows that waited too
    /// long) are dead-lettered before the commit.
    pub async fn write(
        &self,
        db: &mut Client,
        prepared: &mut Prepared,
        stored: &mut Offsets,
    ) -> Result<(), PlanningWriteError> {
        let started = Instant::now();
        let Prepared {
            batch,
            rows,
            refused,
            next,
            skipped,
        } = prepared;
        let skipped = *skipped;
        self.dead_letter(batch, refused).await?;
        // Published: a retry of this batch does not dead-letter them again.
        refused.clear();
        let tx = db.transaction().await?;
        let products = upsert_products(&tx, &rows.products).await?;
        let wanted: Vec<String> = rows
            .inventory
            .keys()
            .map(|k| k.0.clone())
            .chain(rows.demand.keys().map(|k| k.0.clone()))
            .filter(|sku| !rows.products.contains_key(sku))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let known: HashSet<String> = if wanted.is_empty() {
            HashSet::new()
        } else {
            tx.query(
                "SELECT sku FROM planning.products WHERE sku = ANY($1)",
                &[&wanted],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect()
        };
        let is_known = |sku: &str| rows.products.contains_key(sku) || known.contains(sku);
        // Cloned, not taken: a failed transaction is retried with the same batch.
        let (ready_stock, wait_stock): (Vec<_>, Vec<_>) = rows
            .inventory
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .partition(|(key, _)| is_known(&key.0));
        let (ready_demand, wait_demand): (Vec<_>, Vec<_>) = rows
            .demand
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .partition(|(key, _)| is_known(&key.0));
        let (last_full, waiting_now) = *self.room.lock().unwrap_or_else(|p| p.into_inner());
        let full = last_full.is_none_or(|at| at.elapsed() >= waiting::FULL_CHECK);
        let room = waiting::Waiting {
            sink: &self.id,
            wait: self.product_wait,
            max: self.max_waiting,
            waiting: waiting_now,
        };
        let mut moves = waiting::Moves::default();
        let overflow = room
            .park(
                &tx,
                wait_stock
                    .into_iter()
                    .map(|(k, v)| (k, v.message, v))
                    .collect(),
                wait_demand
                    .into_iter()
                    .map(|(k, v)| (k, v.message, v))
                    .collect(),
                batch,
                &mut moves,
            )
            .await?;
        let arrived: Vec<&str> = rows.products.keys().map(String::as_str).collect();
        let scope = (!full).then_some(arrived.as_slice());
        let (mut stock, mut demand) = room.ready(&tx, scope, &mut moves).await?;
        // This batch's own figures are newer than or as new as what waited.
        stock.extend(ready_stock);
        demand.extend(ready_demand);
        let inventory = upsert_inventory(&tx, &stock).await?;
        let demand = upsert_demand(&tx, &demand).await?;
        let mut letters: Vec<(OwnedMessage, String)> = overflow
            .into_iter()
            .map(|(index, reason)| (batch[index].clone(), reason))
            .collect();
        if full {
            letters.extend(room.expired(&tx, &mut moves).await?);
        } else {
            moves.waiting = waiting_now + moves.parked as i64 - moves.applied as i64;
        }
        self.dead_letter_records(&letters).await?;
        let (topics, partitions, offsets): (Vec<String>, Vec<i32>, Vec<i64>) =
            next.iter().map(|((t, p), o)| (t.clone(), *p, *o)).fold(
                (vec![], vec![], vec![]),
                |(mut a, mut b, mut c), (t, p, o)| {
                    a.push(t);
                    b.push(p);
                    c.push(o);
                    (a, b, c)
                },
            );
        tx.execute(
            "INSERT INTO planning.sink_offsets (sink, topic, partition, next_offset)
             SELECT $1, t, p, o FROM unnest($2::text[], $3::int[], $4::bigint[]) AS u(t, p, o)
             ON CONFLICT (sink, topic, partition) DO UPDATE
             SET next_offset = GREATEST(planning.sink_offsets.next_offset, EXCLUDED.next_offset),
                 updated_at = now()",
            &[&self.id, &topics, &partitions, &offsets],
        )
        .await?;
        tx.commit().await?;
        *self.room.lock().unwrap_or_else(|p| p.into_inner()) = (
            if full {
                Some(Instant::now())
            } else {
                last_full
            },
            moves.waiting.max(0),
        );
        stored.extend(next.iter().map(|(k, v)| (k.clone(), *v)));
        metrics::histogram!(BATCH_SECONDS, m::COMPONENT_ID => self.id.clone())
            .record(started.elapsed().as_secs_f64());
        for (table, count) in [
            ("products", products),
            ("inventory", inventory),
            ("demand_actuals", demand),
        ] {
            metrics::counter!(ROWS, m::COMPONENT_ID => self.id.clone(), "table" => table)
                .increment(count);
        }
        metrics::counter!(m::RECEIVED_EVENTS, m::COMPONENT_ID => self.id.clone(),
            m::COMPONENT_TYPE => TYPE)
        .increment(batch.len() as u64);
        metrics::counter!(m::SENT_EVENTS, m::COMPONENT_ID => self.id.clone(),
            m::COMPONENT_TYPE => TYPE)
        .increment(products + inventory + demand);
        if skipped > 0 {
            metrics::counter!(m::DROPPED_EVENTS, m::COMPONENT_ID => self.id.clone(),
                m::COMPONENT_TYPE => TYPE, m::REASON => "not_planning_data")
            .increment(skipped);
        }
        metrics::gauge!(WAITING, m::COMPONENT_ID => self.id.clone()).set(moves.waiting as f64);
        metrics::counter!(WAITED, m::COMPONENT_ID => self.id.clone(), "outcome" => "parked")
            .increment(moves.parked);
        metrics::counter!(WAITED, m::COMPONENT_ID => self.id.clone(), "outcome" => "applied")
            .increment(moves.applied);
        Ok(())
    }

    /// Publishes the refused records of the batch to their dead-letter topics and awaits
    /// every ack.
    async fn dead_letter(
        &self,
        batch: &[OwnedMessage],
        refused: &[(usize, String)],
    ) -> Result<(), PlanningWriteError> {
        let letters: Vec<(OwnedMessage, String)> = refused
            .iter()
            .map(|(index, reason)| (batch[*index].clone(), reason.clone()))
            .collect();
        self.dead_letter_records(&letters).await
    }

    /// Publishes `letters` to their dead-letter topics and awaits every ack.
    async fn dead_letter_records(
        &self,
        letters: &[(OwnedMessage, String)],
    ) -> Result<(), PlanningWriteError> {
        let mut pending = Vec::new();
        for (message, reason) in letters {
            let Some((_, dlq)) = self.inputs.get(message.topic()) else {
                continue;
            };
            tracing::warn!(topic = message.topic(), offset = message.offset(), %reason, "record refused by the planning sink; dead-lettered");
            metrics::counter!(m::DEAD_LETTERED, m::COMPONENT_ID => self.id.clone(),
                m::COMPONENT_TYPE => TYPE)
            .increment(1);
            let record =
                DeadLetter::new(kafka::Failure::Refused, reason, &self.id).of_record(message, dlq);
            pending.push(self.publisher.enqueue(record).await?);
        }
        futures::future::try_join_all(pending).await?;
        Ok(())
    }
}

/// Why a batch was not written (it is retried).
#[derive(Debug, thiserror::Error)]
pub enum PlanningWriteError {
    /// The planning database failed.
    #[error("planning database: {0}")]
    Database(#[from] tokio_postgres::Error),
    /// A refusal was not taken by the broker.
    #[error(transparent)]
    Publish(#[from] kafka::PublishError),
}

async fn upsert_products(
    tx: &tokio_postgres::Transaction<'_>,
    rows: &HashMap<String, Product>,
) -> Result<u64, tokio_postgres::Error> {
    if rows.is_empty() {
        return Ok(0);
    }
    let skus: Vec<&str> = rows.keys().map(String::as_str).collect();
    let get = |f: &dyn Fn(&Product) -> Option<String>| -> Vec<Option<String>> {
        skus.iter().map(|s| f(&rows[*s])).collect()
    };
    let names = get(&|p| Some(p.name.clone()));
    let categories = get(&|p| p.category.clone());
    let families = get(&|p| p.family.clone());
    let systems = get(&|p| Some(p.system.clone()));
    let lead: Vec<Option<i32>> = skus.iter().map(|s| rows[*s].lead_time_days).collect();
    let active: Vec<bool> = skus.iter().map(|s| rows[*s].active).collect();
    let versions: Vec<i64> = skus.iter().map(|s| rows[*s].version).collect();
    tx.execute(
        "INSERT INTO planning.products AS t
             (sku, name, category_name, product_family, lead_time_days, is_active, source_system, source_version)
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int[], $6::bool[], $7::text[], $8::bigint[])
         ON CONFLICT (sku) DO UPDATE SET
             name = EXCLUDED.name, category_name = EXCLUDED.category_name,
             product_family = EXCLUDED.product_family, lead_time_days = EXCLUDED.lead_time_days,
             is_active = EXCLUDED.is_active, source_system = EXCLUDED.source_system,
             source_version = EXCLUDED.source_version, updated_at = now()
         WHERE t.source_version <= EXCLUDED.source_version",
        &[&skus, &names, &categories, &families, &lead, &active, &systems, &versions],
    )
    .await
}

async fn upsert_inventory(
    tx: &tokio_postgres::Transaction<'_>,
    rows: &HashMap<(String, String), Stock>,
) -> Result<u64, tokio_postgres::Error> {
    if rows.is_empty() {
        return Ok(0);
    }
    let keys: Vec<&(String, String)> = rows.keys().collect();
    let skus: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
    let locations: Vec<&str> = keys.iter().map(|k| k.1.as_str()).collect();
    let on_hand: Vec<&str> = keys.iter().map(|k| rows[*k].on_hand.as_str()).collect();
    let allocated: Vec<&str> = keys.iter().map(|k| rows[*k].allocated.as_str()).collect();
    let in_transit: Vec<&str> = keys.iter().map(|k| rows[*k].in_transit.as_str()).collect();
    let at: Vec<i64> = keys.iter().map(|k| rows[*k].at).collect();
    let systems: Vec<&str> = keys.iter().map(|k| rows[*k].system.as_str()).collect();
    let versions: Vec<i64> = keys.iter().map(|k| rows[*k].version).collect();
    tx.execute(
        "INSERT INTO planning.inventory AS t
             (sku, location, on_hand_qty, allocated_qty, in_transit_qty, updated_at, source_system, source_version)
         SELECT sku, location, on_hand::numeric, allocated::numeric, in_transit::numeric,
                to_timestamp(at / 1000.0), system, version
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::text[], $8::bigint[])
              AS u(sku, location, on_hand, allocated, in_transit, at, system, version)
         ON CONFLICT (sku, location) DO UPDATE SET
             on_hand_qty = EXCLUDED.on_hand_qty, allocated_qty = EXCLUDED.allocated_qty,
             in_transit_qty = EXCLUDED.in_transit_qty, updated_at = EXCLUDED.updated_at,
             source_system = EXCLUDED.source_system, source_version = EXCLUDED.source_version
         WHERE t.source_version <= EXCLUDED.source_version",
        &[&skus, &locations, &on_hand, &allocated, &in_transit, &at, &systems, &versions],
    )
    .await
}

async fn upsert_demand(
    tx: &tokio_postgres::Transaction<'_>,
    rows: &HashMap<DemandKey, Demand>,
) -> Result<u64, tokio_postgres::Error> {
    if rows.is_empty() {
        return Ok(0);
    }
    let keys: Vec<&DemandKey> = rows.keys().collect();
    let skus: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
    let periods: Vec<&str> = keys.iter().map(|k| k.1.as_str()).collect();
    let regions: Vec<&str> = keys.iter().map(|k| k.2.as_str()).collect();
    let channels: Vec<&str> = keys.iter().map(|k| k.3.as_str()).collect();
    let quantities: Vec<&str> = keys.iter().map(|k| rows[*k].quantity.as_str()).collect();
    let systems: Vec<&str> = keys.iter().map(|k| rows[*k].system.as_str()).collect();
    let versions: Vec<i64> = keys.iter().map(|k| rows[*k].version).collect();
    tx.execute(
        "INSERT INTO planning.demand_actuals AS t
             (sku, period, region, channel, actual_qty, source_system, source_version)
         SELECT sku, period::date, region, channel, qty::numeric, system, version
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[])
              AS u(sku, period, region, channel, qty, system, version)
         ON CONFLICT (sku, period, region, channel) DO UPDATE SET
             actual_qty = EXCLUDED.actual_qty, source_system = EXCLUDED.source_system,
             source_version = EXCLUDED.source_version, updated_at = now()
         WHERE t.source_version <= EXCLUDED.source_version",
        &[&skus, &periods, &regions, &channels, &quantities, &systems, &versions],
    )
    .await
}

/// A record's value, as far as planning cares.
enum Planned {
    Catalog(CatalogUpdate),
    Stock(InventoryChange),
    Demand(DemandActual),
}

/// Decodes a value of contract `kind`; `Ok(None)` for contracts that carry no planning data.
async fn decode(
    codec: &Codec,
    kind: EventKind,
    payload: &[u8],
) -> Result<Option<Planned>, erpstream_schemas::CodecError> {
    Ok(Some(match kind {
        EventKind::CatalogUpdate => Planned::Catalog(codec.decode(payload).await?),
        EventKind::InventoryChange => Planned::Stock(codec.decode(payload).await?),
        EventKind::DemandActual => Planned::Demand(codec.decode(payload).await?),
        _ => return Ok(None),
    }))
}

/// Adds the record's rows; `Ok(false)` if it carries no planning data, `Err(reason)` if
/// it is refused.
/// `Err` naming the first of `texts` that holds U+0000, which a Postgres text column cannot
/// hold: such a record is refused (dead-lettered), never retried against the database.
fn storable<'a>(texts: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<(), String> {
    match texts.into_iter().find(|(_, text)| text.contains('\0')) {
        Some((field, _)) => Err(format!(
            "{field} holds the NUL character (U+0000), which Postgres text cannot hold"
        )),
        None => Ok(()),
    }
}

fn add_rows(event: Planned, index: usize, rows: &mut Rows) -> Result<bool, String> {
    match event {
        Planned::Catalog(event) => {
            let variants = event
                .variants
                .iter()
                .map(|v| ("variants[].sku", v.sku.as_str()));
            let category = event.category_path.last().map(String::as_str);
            storable(
                [
                    ("group_id", event.group_id.as_str()),
                    ("group_name", event.group_name.as_str()),
                    ("source_system", event.source_system.as_str()),
                    ("category_path", category.unwrap_or_default()),
                    (
                        "product_family",
                        event.product_family.as_deref().unwrap_or_default(),
                    ),
                ]
                .into_iter()
                .chain(variants),
            )?;
            let skus: Vec<String> = if event.variants.is_empty() {
                vec![event.group_id.clone()]
            } else {
                event.variants.iter().map(|v| v.sku.clone()).collect()
            };
            for sku in skus {
                let newer = rows
                    .products
                    .get(&sku)
                    .is_none_or(|p| p.version <= event.occurred_at);
                if newer {
                    rows.products.insert(
                        sku,
                        Product {
                            name: event.group_name.clone(),
                            category: event.category_path.last().cloned(),
                            family: event.product_family.clone(),
                            lead_time_days: event.lead_time_days,
                            active: event.is_active,
                            system: event.source_system.clone(),
                            version: event.occurred_at,
                        },
                    );
                }
            }
            Ok(true)
        }
        Planned::Stock(event) => {
            let Some(on_hand) = event.new_quantity else {
                return Ok(false);
            };
            storable([
                ("sku", event.sku.as_str()),
                ("location_code", event.location_code.as_str()),
                ("source_system", event.source_system.as_str()),
            ])?;
            let key = (event.sku.clone(), event.location_code.clone());
            if rows
                .inventory
                .get(&key)
                .is_none_or(|s| s.version <= event.occurred_at)
            {
                let text = |d: Option<rust_decimal::Decimal>| d.unwrap_or_default().to_string();
                rows.inventory.insert(
                    key,
                    Stock {
                        on_hand: on_hand.to_string(),
                        allocated: text(event.allocated_qty),
                        in_transit: text(event.in_transit_qty),
                        at: event.occurred_at,
                        system: event.source_system,
                        version: event.occurred_at,
                        message: index,
                    },
                );
            }
            Ok(true)
        }
        Planned::Demand(event) => {
            storable([
                ("sku", event.sku.as_str()),
                ("region", event.region.as_str()),
                ("channel", event.channel.as_str()),
                ("source_system", event.source_system.as_str()),
            ])?;
            let period = chrono::NaiveDate::parse_from_str(&event.period, "%Y-%m-%d")
                .ok()
                .filter(|d| chrono::Datelike::day(d) == 1)
                .ok_or_else(|| {
                    format!(
                        "period {:?} is not the first day of a month (YYYY-MM-01)",
                        event.period
                    )
                })?;
            let key = (
                event.sku.clone(),
                period.format("%Y-%m-%d").to_string(),
                event.region.clone(),
                event.channel.clone(),
            );
            if rows
                .demand
                .get(&key)
                .is_none_or(|d| d.version <= event.occurred_at)
            {
                rows.demand.insert(
                    key,
                    Demand {
                        quantity: event.actual_qty.to_string(),
                        system: event.source_system,
                        version: event.occurred_at,
                        message: index,
                    },
                );
            }
            Ok(true)
        }
    }
}

/// The rows the sink would upsert for one record of contract `kind`, as
/// `{"table", "key", "values"}` objects, before its version guard and its check that the sku
/// is known: `erpstream replay --into <planning sink>` shows them in shadow mode. Empty for
/// records that carry no planning data (relative adjustments); `Err` with the reason for
/// records the sink would refuse.
pub async fn rows_for(
    codec: &Codec,
    kind: EventKind,
    payload: &[u8],
) -> Result<Vec<serde_json::Value>, String> {
    use serde_json::json;
    let mut rows = Rows::default();
    if let Some(event) = decode(codec, kind, payload)
        .await
        .map_err(|e| format!("undecodable: {e}"))?
    {
        add_rows(event, 0, &mut rows)?;
    }
    let mut out = Vec::new();
    for (sku, p) in rows.products {
        out.push(
            json!({"table": "planning.products", "key": {"sku": sku}, "values": {
            "name": p.name, "category_name": p.category, "product_family": p.family,
            "lead_time_days": p.lead_time_days, "is_active": p.active,
            "source_system": p.system, "source_version": p.version}}),
        );
    }
    for ((sku, location), s) in rows.inventory {
        out.push(
            json!({"table": "planning.inventory", "key": {"sku": sku, "location": location},
            "values": {"on_hand_qty": s.on_hand, "allocated_qty": s.allocated,
            "in_transit_qty": s.in_transit,
            "updated_at": chrono::DateTime::from_timestamp_millis(s.at).map(|t| t.to_rfc3339()),
            "source_system": s.system, "source_version": s.version}}),
        );
    }
    for ((sku, period, region, channel), d) in rows.demand {
        out.push(json!({"table": "planning.demand_actuals",
            "key": {"sku": sku, "period": period, "region": region, "channel": channel},
            "values": {"actual_qty": d.quantity, "source_system": d.system,
            "source_version": d.version}}));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stock(sku: &str, location: &str) -> Planned {
        Planned::Stock(InventoryChange {
            event_id: "e".into(),
            idempotency_key: "k".into(),
            source_system: "ERP".into(),
            source: "erp".into(),
            occurred_at: 1,
            ingested_at: 1,
            sku: sku.into(),
            location_code: location.into(),
            new_quantity: Some(rust_decimal::Decimal::ONE),
            allocated_qty: None,
            in_transit_qty: None,
            quantity_change: None,
            change_reason: None,
            reference_id: None,
        })
    }

    #[test]
    fn a_text_postgres_cannot_hold_is_refused_with_its_field_not_retried() {
        let mut rows = Rows::default();
        let refused = add_rows(stock("A", "W\u{0}1"), 0, &mut rows).expect_err("NUL");
        assert!(
            refused.starts_with("location_code holds the NUL"),
            "{refused}"
        );
        assert!(rows.inventory.is_empty());
        assert_eq!(add_rows(stock("A", "W1"), 1, &mut rows), Ok(true));
    }
}
