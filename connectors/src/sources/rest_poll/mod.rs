//! `rest_poll`: pulls changed records from an ERP's REST API on a schedule (ERPNext's Frappe
//! REST, OData services such as Epicor Kinetic BAQs) and publishes them mapped as declared.
//!
//! Contract:
//! - **Durable cursor, moved after the broker.** Records are read in pages ordered by their
//!   change time (then key), only those changed since the stored cursor minus `look_back`.
//!   A page's records are published, every acknowledgement awaited, and only then are their
//!   hashes and the cursor (the page's latest change time) stored, in one transaction in
//!   erpstream's database. A crash repeats at most the page in flight, with the same
//!   idempotency keys (`rest:<source>:<resource>:<key>:<change time>:<hash>`), which
//!   `dedupe` drops.
//! - **Nothing lost at the cursor's edge.** Pages continue from the last change time with
//!   `>=`, not past it, and each poll re-reads `look_back` behind the cursor, so records
//!   written in the cursor's own second, or committed late by the ERP, are read.
//! - **Only real changes are published.** A record whose mapped content hashes as last
//!   published (a re-read, or a change to fields the mapping does not read) is skipped.
//! - **Deletions.** Every `deletion_check` the keys of all records are listed; a remembered
//!   key missing from the list, and confirmed missing by a lookup, becomes the mapping's
//!   `on_delete`.
//! - **Being a good client.** Requests are paced (`max_requests_per_second`), time out, and
//!   are retried with capped backoff on 408, 429 (at least `Retry-After`), 5xx and timeouts.
//!   After `circuit.failures` failed polls in a row the circuit opens: the source reports not
//!   ready in `/readyz` and sends one test request per `circuit.open_for` until the ERP
//!   answers; wrong credentials are reported as such, not retried in a tight loop.
//! - Records that do not fit the contract go to `<topic>.dlq` with the field and reason.

mod api;
mod config;
mod control;
mod state;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use chrono::NaiveDateTime;
use erpstream_schemas::{EventKind, Traceparent, now_millis};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};

use api::{Api, PageQuery};
pub use api::{ApiError, Page, REQUESTS};
pub use config::{AuthConfig, CircuitConfig, Preset, ResourceConfig, RestPollConfig};
use state::{Hash, State};

use crate::component::{Component, Context, Graph, Port, Readiness, Running};
use crate::kafka::{PendingAck, PublishError, Publisher, RawRecord, TRACEPARENT_HEADER};
use crate::metrics as m;
use crate::sources::mapping::{Bound, Cell, Column, Deleted, Envelope, Mapped, RowError};
use crate::validation::Problem;

/// Component type name in the topology.
pub const TYPE: &str = "rest_poll";

/// Cursors as one line: `resource: cursor, ...`.
pub(crate) fn describe(cursors: &BTreeMap<String, String>) -> String {
    cursors
        .iter()
        .map(|(resource, cursor)| format!("{resource}: {cursor}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Records read, by `component_id`, `resource` and `outcome` (`published`, `unchanged`,
/// `deleted`, `dead_lettered`).
pub const RECORDS: &str = "erpstream_rest_poll_records_total";
/// 1 while the circuit is open (the source does not call the ERP but to test it).
pub const CIRCUIT_OPEN: &str = "erpstream_rest_poll_circuit_open";
/// Unix time of the last poll that completed.
pub const LAST_SUCCESS: &str = "erpstream_rest_poll_last_success_timestamp_seconds";
/// Seconds one poll of every resource took.
pub const POLL_DURATION: &str = "erpstream_rest_poll_duration_seconds";

/// Why a poll failed.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    /// The ERP did not give what was asked.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// erpstream's database failed.
    #[error("state database: {0}")]
    State(#[from] tokio_postgres::Error),
    /// erpstream's database could not be reached.
    #[error("state database: {0}")]
    StateConnect(#[from] crate::postgres::PgError),
    /// The broker did not take a record.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// A resource cannot be polled as configured.
    #[error("resource {resource}: {reason}")]
    Resource {
        /// Resource name.
        resource: String,
        /// Why.
        reason: String,
    },
}

/// One resource, resolved against the topology.
#[derive(Debug, Clone)]
pub struct Resource {
    /// Name in the topology.
    pub name: String,
    /// Its configuration.
    pub config: ResourceConfig,
    /// The contract of its topic.
    pub kind: EventKind,
    /// Broker-side topic.
    pub topic: String,
    /// Broker-side dead-letter topic.
    pub dlq_topic: String,
}

impl Component for RestPollConfig {
    /// The settings' rules live with the settings (`config.rs`).
    fn validate(&self, at: &str) -> Vec<Problem> {
        self.validate_settings(at)
    }

    fn outputs(&self) -> Vec<Port> {
        let resources = self.resources.iter();
        resources
            .map(|(name, r)| Port::mapped(format!("resources.{name}.topic"), &r.topic))
            .collect()
    }

    /// Every mapping against the contract of its topic.
    fn check(&self, at: &str, graph: &dyn Graph) -> Vec<Problem> {
        let resources = self.resources.iter();
        crate::sources::mapping::check_all(
            graph,
            resources.map(|(name, r)| (format!("{at}.resources.{name}"), Cow::Owned(r.mapping()))),
        )
    }

    async fn build(&self, context: Context) -> Result<Running, crate::Error> {
        let resources = self
            .resources
            .iter()
            .filter_map(|(name, resource)| {
                let resolved = context.resolve(&resource.topic)?;
                Some(Resource {
                    name: name.clone(),
                    config: resource.clone(),
                    kind: resolved.contract,
                    dlq_topic: resolved.dlq,
                    topic: resolved.topic,
                })
            })
            .collect();
        let source = RestPollSource::build(
            &context.id,
            &context.group(),
            self.clone(),
            resources,
            context.publisher.clone(),
        )?;
        // One replica polls (the cursor is one); the others stand by.
        let lease = context.lease(&self.state_database)?;
        let ready = source.readiness();
        let control = source.control();
        Ok(Running::new(ready.clone(), move |shutdown| async move {
            Ok(lease.run(&ready, shutdown, |stop| source.run(stop)).await?)
        })
        .control(control))
    }
}

/// A running `rest_poll` source.
pub struct RestPollSource {
    id: String,
    state_key: String,
    config: RestPollConfig,
    resources: Vec<Resource>,
    publisher: Publisher,
    api: Arc<Api>,
    ready: Readiness,
    /// What the loop tells the controls.
    progress: Arc<std::sync::Mutex<control::Progress>>,
    /// "Sync now" requests: the sending side is the controls'.
    poll_now: (
        mpsc::Sender<control::PollNow>,
        tokio::sync::Mutex<mpsc::Receiver<control::PollNow>>,
    ),
}

/// A resource with its mapping bound to the fields the poller reads.
struct Poller {
    resource: Resource,
    bound: Bound,
    /// Fields requested, in cell order.
    fields: Vec<String>,
    keys: Vec<usize>,
    key_fields: Vec<String>,
    changed: usize,
    changed_field: String,
    cursor: Option<NaiveDateTime>,
    known: HashMap<String, (String, Hash)>,
    last_deletion_check: Instant,
}

impl RestPollSource {
    /// Reads the credentials and binds every resource's mapping (no I/O).
    pub fn build(
        id: &str,
        state_key: &str,
        config: RestPollConfig,
        resources: Vec<Resource>,
        publisher: Publisher,
    ) -> Result<Self, PollError> {
        let api = Arc::new(Api::new(id, &config)?);
        let (requests, received) = mpsc::channel(16);
        let source = Self {
            id: id.to_string(),
            state_key: state_key.to_string(),
            config,
            resources,
            publisher,
            api,
            ready: Readiness::not_yet("testing the ERP credentials"),
            progress: Arc::default(),
            poll_now: (requests, tokio::sync::Mutex::new(received)),
        };
        for resource in &source.resources {
            Poller::new(source.config.preset, resource.clone())?;
        }
        Ok(source)
    }

    /// True while the ERP answers (the circuit is closed).
    pub fn readiness(&self) -> Readiness {
        self.ready.clone()
    }

    /// The operators' controls of this source.
    pub fn control(&self) -> Arc<dyn crate::component::Control> {
        Arc::new(control::PollControl {
            progress: self.progress.clone(),
            api: self.api.clone(),
            requests: self.poll_now.0.clone(),
            readiness: self.ready.clone(),
            target: crate::postgres::redacted(&self.config.url),
            peer: self.config.preset.peer(),
            first_collection: self.first_collection().to_string(),
            preset: self.config.preset,
            resources: self.resources.clone(),
        })
    }

    fn progress(&self) -> std::sync::MutexGuard<'_, control::Progress> {
        self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Polls until shutdown. Never stops on an ERP failure: the circuit opens and the source
    /// reports not ready until the ERP answers again.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) -> Result<(), PollError> {
        let mut pollers = self
            .resources
            .iter()
            .map(|r| Poller::new(self.config.preset, r.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        // One state connection per resource: resources are polled side by side.
        let mut states: Vec<Option<State>> = pollers.iter().map(|_| None).collect();
        let mut failures = 0u32;
        let mut loaded = false;
        let mut circuit_open = false;
        let mut poll_now = self.poll_now.1.lock().await;
        // Who asked for the poll under way ("sync now"), answered when it ends.
        let mut asked: Vec<control::PollNow> = Vec::new();
        loop {
            let started = Instant::now();
            let cycle = async {
                if !loaded {
                    let user = self
                        .api
                        .test_connection(self.first_collection(), !circuit_open)
                        .await?;
                    tracing::info!(user = %user, "{} accepted the credentials", self.config.preset.peer());
                    // Start again from what is stored.
                    states.iter_mut().for_each(|s| *s = None);
                    loaded = true;
                    self.ready.ready();
                }
                let polls = pollers
                    .iter_mut()
                    .zip(states.iter_mut())
                    .map(|(poller, state)| self.cycle(poller, state));
                futures::future::try_join_all(polls).await?;
                Ok::<(), PollError>(())
            };
            let result = tokio::select! {
                _ = shutdown.changed() => return Ok(()),
                result = cycle => result,
            };
            match result {
                Ok(()) => {
                    metrics::histogram!(POLL_DURATION, m::COMPONENT_ID => self.id.clone())
                        .record(started.elapsed().as_secs_f64());
                    metrics::gauge!(LAST_SUCCESS, m::COMPONENT_ID => self.id.clone())
                        .set(now_millis() as f64 / 1000.0);
                    if circuit_open {
                        tracing::info!(
                            "{} answers again; circuit closed",
                            self.config.preset.peer()
                        );
                    }
                    circuit_open = false;
                    failures = 0;
                    metrics::gauge!(CIRCUIT_OPEN, m::COMPONENT_ID => self.id.clone()).set(0.0);
                    self.ready.ready();
                    let cursors = self.cursors(&pollers);
                    {
                        let mut progress = self.progress();
                        progress.last_success = Some(erpstream_schemas::rfc3339(now_millis()));
                        progress.last_error = None;
                        progress.circuit_open = false;
                        progress.cursors = cursors.clone();
                    }
                    let detail = format!(
                        "polled {} in {} ms; cursor {}",
                        self.config.preset.peer(),
                        started.elapsed().as_millis(),
                        describe(&cursors)
                    );
                    for asker in asked.drain(..) {
                        let _ = asker.send(crate::component::Outcome::ok(detail.clone()));
                    }
                }
                Err(err) => {
                    failures += 1;
                    let error_type = match &err {
                        PollError::Api(ApiError::Credentials { .. }) => "credentials",
                        PollError::Api(_) => "erp",
                        PollError::State(_) | PollError::StateConnect(_) => "state_database",
                        PollError::Publish(_) => "broker",
                        PollError::Resource { .. } => "resource",
                    };
                    metrics::counter!(m::ERRORS, m::COMPONENT_ID => self.id.clone(),
                        m::COMPONENT_TYPE => TYPE, m::ERROR_TYPE => error_type, m::STAGE => "poll")
                    .increment(1);
                    tracing::error!(error = %err, failures, "poll failed");
                    self.progress().last_error = Some(err.to_string());
                    for asker in asked.drain(..) {
                        let _ = asker.send(crate::component::Outcome::failed(format!(
                            "the poll failed: {err}"
                        )));
                    }
                    if failures >= self.config.circuit.failures {
                        self.ready.not_ready(format!(
                            "circuit open after {failures} failed polls of {}",
                            self.config.preset.peer()
                        ));
                        metrics::gauge!(CIRCUIT_OPEN, m::COMPONENT_ID => self.id.clone()).set(1.0);
                        tracing::error!(
                            open_for = ?self.config.circuit.open_for,
                            "circuit open after {failures} failed polls: not calling {} but to test it",
                            self.config.preset.peer()
                        );
                        // The next cycle starts with the connection test, one attempt.
                        loaded = false;
                        circuit_open = true;
                        self.progress().circuit_open = true;
                        tokio::select! {
                            _ = shutdown.changed() => return Ok(()),
                            _ = tokio::time::sleep(self.config.circuit.open_for) => continue,
                            Some(asker) = poll_now.recv() => {
                                asked.push(asker);
                                continue;
                            }
                        }
                    }
                }
            }
            tokio::select! {
                _ = shutdown.changed() => return Ok(()),
                _ = tokio::time::sleep(self.config.interval) => {}
                Some(asker) = poll_now.recv() => asked.push(asker),
            }
            while let Ok(asker) = poll_now.try_recv() {
                asked.push(asker);
            }
        }
    }

    /// Per resource, its cursor as text.
    fn cursors(&self, pollers: &[Poller]) -> BTreeMap<String, String> {
        pollers
            .iter()
            .map(|p| {
                let cursor = p
                    .cursor
                    .map_or_else(|| "none yet".to_string(), |c| c.to_string());
                (p.resource.name.clone(), cursor)
            })
            .collect()
    }

    /// One resource's share of a poll: (re)connects its state and reloads what is stored,
    /// polls, and checks for deletions when due.
    async fn cycle(&self, poller: &mut Poller, state: &mut Option<State>) -> Result<(), PollError> {
        let state = match state {
            Some(open) if !open.is_closed() => open,
            _ => {
                let open = State::open(&self.config.state_database, &self.state_key).await?;
                let remembered = open.load(&poller.resource.name).await?;
                poller.cursor = remembered.cursor.as_deref().and_then(parse_change_time);
                poller.known = remembered.records;
                state.insert(open)
            }
        };
        self.poll(poller, state).await?;
        if !self.config.deletion_check.is_zero()
            && poller.last_deletion_check.elapsed() >= self.config.deletion_check
        {
            self.find_deletions(poller, state).await?;
            poller.last_deletion_check = Instant::now();
        }
        Ok(())
    }

    fn first_collection(&self) -> &str {
        self.resources
            .first()
            .and_then(|r| r.config.baq.as_deref().or(r.config.doctype.as_deref()))
            .unwrap_or_default()
    }

    /// Reads everything changed since the cursor (minus the look-back), page by page; the
    /// next page is fetched while the current one is published.
    async fn poll(&self, poller: &mut Poller, state: &mut State) -> Result<(), PollError> {
        let started = Instant::now();
        let look_back = chrono::Duration::from_std(self.config.look_back).unwrap_or_default();
        let mut since = poller.cursor.map(|c| c - look_back);
        let mut offset = 0u64;
        let collection = poller.collection().to_string();
        let filters = poller.resource.config.filters.clone();
        let fields = poller.fields.clone();
        let changed_field = poller.changed_field.clone();
        let order_by: Vec<String> = [changed_field.clone()]
            .into_iter()
            .chain(poller.key_fields.iter().cloned())
            .collect();
        let query = |since: Option<NaiveDateTime>, offset: u64| PageQuery {
            collection: &collection,
            filters: filters.as_ref(),
            select: &fields,
            order_by: &order_by,
            since: since.map(|s| (changed_field.as_str(), s)),
            equal: &[],
            offset,
            limit: self.config.page_size,
        };
        let (mut pages, mut rows, mut published) = (0u64, 0u64, 0u64);
        let mut page = self.api.page(&query(since, offset)).await?;
        loop {
            pages += 1;
            rows += page.rows.len() as u64;
            let times: Vec<Option<NaiveDateTime>> = page
                .rows
                .iter()
                .map(|row| lookup(row, &changed_field).and_then(|v| parse_change_time(&v)))
                .collect();
            let latest = times.iter().flatten().max().copied();
            if !page.more {
                published += self.publish_page(poller, &page.rows, latest, state).await?;
                break;
            }
            let Some(last) = latest else {
                return Err(PollError::Resource {
                    resource: poller.resource.name.clone(),
                    reason: format!(
                        "a full page without a readable {changed_field} value; cannot page on it"
                    ),
                });
            };
            // Continue from the last change time itself (>=), re-reading the records that
            // share it; when the whole page shares it, skip past the ones already read.
            let all_at_last = times.iter().all(|t| *t == Some(last));
            offset = match (all_at_last, since == Some(last)) {
                (true, true) => offset + page.rows.len() as u64,
                (true, false) => page.rows.len() as u64,
                (false, _) => 0,
            };
            since = Some(last);
            let next_query = query(since, offset);
            let (done, next) = tokio::join!(
                self.publish_page(poller, &page.rows, latest, state),
                self.api.page(&next_query)
            );
            published += done?;
            page = next?;
        }
        if published > 0 || pages > 1 {
            tracing::info!(
                resource = %poller.resource.name,
                pages,
                rows,
                published,
                ms = started.elapsed().as_millis() as u64,
                "polled"
            );
        }
        Ok(())
    }

    /// Publishes the page's changed records, awaits every acknowledgement, then stores their
    /// hashes and moves the cursor to `latest`, in one transaction. Returns how many were
    /// published.
    async fn publish_page(
        &self,
        poller: &mut Poller,
        rows: &[Map<String, Value>],
        latest: Option<NaiveDateTime>,
        state: &mut State,
    ) -> Result<u64, PollError> {
        let resource = poller.resource.name.clone();
        let mut pending: Vec<PendingAck> = Vec::new();
        let mut published: Vec<(String, String, Hash)> = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        let mut unchanged = 0u64;
        let mut dead = 0u64;
        for row in rows {
            let texts = poller.texts(row);
            let cells: Vec<Cell> = texts
                .iter()
                .map(|t| t.as_deref().map_or(Cell::Null, Cell::Text))
                .collect();
            let key_values: Vec<&str> = poller
                .keys
                .iter()
                .map(|i| texts[*i].as_deref().unwrap_or(""))
                .collect();
            let key = record_key(&key_values);
            let hash = poller.hash(&cells);
            if poller.known.get(&key).is_some_and(|(_, h)| *h == hash) || !seen.insert(key.clone())
            {
                unchanged += 1;
                continue;
            }
            let changed_text = texts[poller.changed].as_deref().unwrap_or("");
            let idempotency_key = format!(
                "rest:{}:{}:{}:{}:{}",
                self.id,
                resource,
                key,
                changed_text,
                hex::encode(&hash[..8])
            );
            let envelope = Envelope {
                idempotency_key: &idempotency_key,
                source: &self.id,
                source_system: &self.config.source_system,
                occurred_at: now_millis(),
                ingested_at: now_millis(),
            };
            let record = match poller.bound.event(&cells, None, &envelope) {
                Ok(event) => self.event_record(&poller.resource, &event).await?,
                Err(error) => {
                    dead += 1;
                    tracing::warn!(%resource, record = %key, %error, "record does not fit its contract; dead-lettered");
                    self.dead_letter(&poller.resource, &key, row, &error.to_string())
                }
            };
            pending.push(self.publisher.enqueue(record).await?);
            published.push((
                key,
                serde_json::to_string(&key_values).unwrap_or_default(),
                hash,
            ));
        }
        // Counted once per page: a `counter!` per record costs a registry lookup.
        metrics::counter!(m::RECEIVED_EVENTS, m::COMPONENT_ID => self.id.clone(),
            m::COMPONENT_TYPE => TYPE)
        .increment(pending.len() as u64);
        futures::future::try_join_all(pending).await?;
        let cursor = match (latest, poller.cursor) {
            (Some(l), Some(c)) if l <= c => None,
            (Some(l), _) => Some(l),
            (None, _) => None,
        };
        let cursor_text = cursor.map(format_change_time);
        state
            .commit(&resource, cursor_text.as_deref(), &published, &[])
            .await?;
        if let Some(c) = cursor {
            poller.cursor = Some(c);
        }
        let count = |outcome: &'static str, n: u64| {
            metrics::counter!(RECORDS, m::COMPONENT_ID => self.id.clone(),
                "resource" => resource.clone(), "outcome" => outcome)
            .increment(n);
        };
        count("published", published.len() as u64 - dead);
        count("dead_lettered", dead);
        count("unchanged", unchanged);
        metrics::counter!(m::SENT_EVENTS, m::COMPONENT_ID => self.id.clone(),
            m::COMPONENT_TYPE => TYPE)
        .increment(published.len() as u64 - dead);
        let count = published.len() as u64;
        for (key, values, hash) in published {
            poller.known.insert(key, (values, hash));
        }
        Ok(count)
    }

    /// Lists every key; remembered keys missing from the list (and from a direct lookup)
    /// become the mapping's `on_delete`.
    async fn find_deletions(
        &self,
        poller: &mut Poller,
        state: &mut State,
    ) -> Result<(), PollError> {
        let mut listed: HashSet<String> = HashSet::with_capacity(poller.known.len());
        let mut offset = 0u64;
        loop {
            let page = self
                .api
                .page(&PageQuery {
                    collection: poller.collection(),
                    filters: poller.resource.config.filters.as_ref(),
                    select: &poller.key_fields,
                    order_by: &poller.key_fields,
                    since: None,
                    equal: &[],
                    offset,
                    limit: self.config.page_size,
                })
                .await?;
            for row in &page.rows {
                let values: Vec<String> = poller
                    .key_fields
                    .iter()
                    .map(|k| lookup(row, k).map(|v| v.into_owned()).unwrap_or_default())
                    .collect();
                let refs: Vec<&str> = values.iter().map(String::as_str).collect();
                listed.insert(record_key(&refs));
            }
            if !page.more {
                break;
            }
            offset += page.rows.len() as u64;
        }
        let missing: Vec<(String, String)> = poller
            .known
            .iter()
            .filter(|(key, _)| !listed.contains(*key))
            .map(|(key, (values, _))| (key.clone(), values.clone()))
            .collect();
        let mut pending = Vec::new();
        let mut deleted = Vec::new();
        for (key, values) in missing {
            let values: Vec<String> = serde_json::from_str(&values).unwrap_or_default();
            let equal: Vec<(String, Value)> = poller
                .key_fields
                .iter()
                .cloned()
                .zip(values.iter().map(|v| Value::String(v.clone())))
                .collect();
            let found = self
                .api
                .page(&PageQuery {
                    collection: poller.collection(),
                    filters: poller.resource.config.filters.as_ref(),
                    select: &poller.key_fields,
                    order_by: &[],
                    since: None,
                    equal: &equal,
                    offset: 0,
                    limit: 1,
                })
                .await?;
            if !found.rows.is_empty() {
                continue;
            }
            let cells: Vec<Cell> = (0..poller.fields.len())
                .map(|i| match poller.keys.iter().position(|k| *k == i) {
                    Some(j) => values.get(j).map_or(Cell::Null, |v| Cell::Text(v)),
                    None => Cell::Missing,
                })
                .collect();
            let idempotency_key =
                format!("rest:{}:{}:{}:deleted", self.id, poller.resource.name, key);
            let envelope = Envelope {
                idempotency_key: &idempotency_key,
                source: &self.id,
                source_system: &self.config.source_system,
                occurred_at: now_millis(),
                ingested_at: now_millis(),
            };
            let record = match poller.bound.deleted(&cells, &envelope) {
                Ok(Deleted::Skip) => None,
                Ok(Deleted::Tombstone(k)) => Some(RawRecord {
                    topic: poller.resource.topic.clone(),
                    key: Some(k.into_bytes()),
                    payload: None,
                    headers: vec![(
                        TRACEPARENT_HEADER.to_string(),
                        Traceparent::new_root().to_string().into_bytes(),
                    )],
                    partition: None,
                }),
                Ok(Deleted::Event(event)) => {
                    Some(self.event_record(&poller.resource, &event).await?)
                }
                Err(error) => {
                    let row: Map<String, Value> = poller
                        .key_fields
                        .iter()
                        .cloned()
                        .zip(values.iter().map(|v| Value::String(v.clone())))
                        .collect();
                    Some(self.dead_letter(&poller.resource, &key, &row, &error.to_string()))
                }
            };
            if let Some(record) = record {
                pending.push(self.publisher.enqueue(record).await?);
            }
            tracing::info!(resource = %poller.resource.name, record = %key, "record no longer in the ERP");
            deleted.push(key);
        }
        futures::future::try_join_all(pending).await?;
        if !deleted.is_empty() {
            state
                .commit(&poller.resource.name, None, &[], &deleted)
                .await?;
            metrics::counter!(RECORDS, m::COMPONENT_ID => self.id.clone(),
                "resource" => poller.resource.name.clone(), "outcome" => "deleted")
            .increment(deleted.len() as u64);
            for key in &deleted {
                poller.known.remove(key);
            }
        }
        Ok(())
    }

    async fn event_record(
        &self,
        resource: &Resource,
        event: &Mapped,
    ) -> Result<RawRecord, PollError> {
        Ok(RawRecord {
            topic: resource.topic.clone(),
            key: Some(event.key().as_bytes().to_vec()),
            payload: Some(
                event
                    .encode(self.publisher.codec(), &resource.topic)
                    .await
                    .map_err(PublishError::from)?,
            ),
            headers: vec![(
                TRACEPARENT_HEADER.to_string(),
                Traceparent::new_root().to_string().into_bytes(),
            )],
            partition: None,
        })
    }

    fn dead_letter(
        &self,
        resource: &Resource,
        key: &str,
        row: &Map<String, Value>,
        error: &str,
    ) -> RawRecord {
        metrics::counter!(m::DEAD_LETTERED, m::COMPONENT_ID => self.id.clone(),
            m::COMPONENT_TYPE => TYPE)
        .increment(1);
        crate::kafka::DeadLetter::new(crate::kafka::Failure::Mapping, error, &self.id).of_row(
            &resource.dlq_topic,
            key,
            Value::Object(row.clone()).to_string().into_bytes(),
            &[("resource", &resource.name)],
            &Traceparent::new_root(),
        )
    }
}

impl Poller {
    /// Binds `resource`'s mapping to the fields a poll of `preset` reads (no I/O).
    fn new(preset: Preset, resource: Resource) -> Result<Poller, PollError> {
        let key_fields = resource.config.key_fields(preset);
        let changed_field = resource
            .config
            .changed_field(preset)
            .unwrap_or_else(|| "modified".into());
        let mapping = resource.config.mapping();
        let mut fields: Vec<String> = key_fields.clone();
        for name in mapping.inputs().into_iter().chain([changed_field.as_str()]) {
            if !fields.iter().any(|f| f == name) {
                fields.push(name.to_string());
            }
        }
        let columns: Vec<Column> = fields
            .iter()
            .map(|name| Column {
                name: name.clone(),
                key: key_fields.contains(name),
            })
            .collect();
        let bound = Bound::new(&mapping, resource.kind, &columns, "field").map_err(|e| {
            PollError::Resource {
                resource: resource.name.clone(),
                reason: e.to_string(),
            }
        })?;
        let index = |name: &str| fields.iter().position(|f| f == name).unwrap_or(0);
        Ok(Poller {
            keys: key_fields.iter().map(|k| index(k)).collect(),
            changed: index(&changed_field),
            bound,
            key_fields,
            changed_field,
            fields,
            resource,
            cursor: None,
            known: HashMap::new(),
            last_deletion_check: Instant::now(),
        })
    }

    fn collection(&self) -> &str {
        let config = &self.resource.config;
        config
            .doctype
            .as_deref()
            .or(config.baq.as_deref())
            .unwrap_or_default()
    }

    /// The record's fields in cell order, as text (`None` for null or absent).
    fn texts<'a>(&self, row: &'a Map<String, Value>) -> Vec<Option<Cow<'a, str>>> {
        self.fields.iter().map(|f| lookup(row, f)).collect()
    }

    /// Hash of everything the mapping reads but the change time.
    fn hash(&self, cells: &[Cell]) -> Hash {
        let mut digest = Sha256::new();
        for (i, cell) in cells.iter().enumerate() {
            if i == self.changed {
                continue;
            }
            match cell {
                Cell::Text(text) => {
                    digest.update([1]);
                    digest.update((text.len() as u64).to_be_bytes());
                    digest.update(text.as_bytes());
                }
                _ => digest.update([0]),
            }
        }
        let mut hash = [0u8; 16];
        hash.copy_from_slice(&digest.finalize()[..16]);
        hash
    }
}

/// One page body of `resource` as a poll of `preset` reads it — the page's records, then
/// each through the resource's mapping — with no I/O and no state: what each record would
/// be published as (`Ok`) or dead-lettered for (`Err`). The same code as a running poll; the
/// fuzz target `rest_poll_page` feeds it arbitrary bodies.
pub fn map_page(
    preset: Preset,
    resource: Resource,
    body: &[u8],
) -> Result<Vec<Result<Mapped, RowError>>, PollError> {
    let poller = Poller::new(preset, resource)?;
    let page = Page::read(preset, body, u32::MAX).map_err(|expected| PollError::Resource {
        resource: poller.resource.name.clone(),
        reason: format!("the page is not {expected}"),
    })?;
    Ok(poller.map_rows(&page.rows))
}

/// A sample pasted into the operator console's mapping tester: a page body of `preset`
/// (as [`map_page`]), a JSON array of records, or one record, each mapped as a poll would.
pub fn map_sample(
    preset: Preset,
    resource: Resource,
    sample: &[u8],
) -> Result<Vec<Result<Mapped, RowError>>, PollError> {
    let poller = Poller::new(preset, resource)?;
    let unreadable = |reason: String| PollError::Resource {
        resource: poller.resource.name.clone(),
        reason,
    };
    if let Ok(page) = Page::read(preset, sample, u32::MAX) {
        return Ok(poller.map_rows(&page.rows));
    }
    let rows = match serde_json::from_slice::<Value>(sample) {
        Err(err) => return Err(unreadable(format!("the sample is not JSON: {err}"))),
        Ok(Value::Object(record)) => vec![record],
        Ok(Value::Array(items)) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::Object(record) => Ok(record),
                _ => Err(unreadable(format!(
                    "item {i} of the array is not an object"
                ))),
            })
            .collect::<Result<_, _>>()?,
        Ok(_) => {
            return Err(unreadable(
                "the sample is neither a page, an array of records nor a record".into(),
            ));
        }
    };
    Ok(poller.map_rows(&rows))
}

impl Poller {
    /// Each record through the mapping, with the tester's empty envelope.
    fn map_rows(&self, rows: &[Map<String, Value>]) -> Vec<Result<Mapped, RowError>> {
        rows.iter()
            .map(|row| {
                let texts = self.texts(row);
                let cells: Vec<Cell> = texts
                    .iter()
                    .map(|t| t.as_deref().map_or(Cell::Null, Cell::Text))
                    .collect();
                self.bound.event(&cells, None, &Envelope::TESTER)
            })
            .collect()
    }
}

/// A field of a record (`a.b` descends into objects) as text: strings as they are, numbers in
/// their exact JSON form, objects and arrays as JSON; `None` for null or absent.
fn lookup<'a>(row: &'a Map<String, Value>, path: &str) -> Option<Cow<'a, str>> {
    let value = match row.get(path) {
        Some(v) => v,
        None => {
            let mut parts = path.split('.');
            let mut value = row.get(parts.next()?)?;
            for part in parts {
                value = value.get(part)?;
            }
            value
        }
    };
    match value {
        Value::Null => None,
        Value::String(s) => Some(Cow::Borrowed(s.as_str())),
        Value::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
        other => Some(Cow::Owned(other.to_string())),
    }
}

/// A record's key: the value itself for one key field, a JSON array for several.
fn record_key(values: &[&str]) -> String {
    match values {
        [one] => (*one).to_string(),
        many => serde_json::to_string(many).unwrap_or_default(),
    }
}

/// A change time as the ERP writes it: Frappe's `2026-11-27 10:00:00.123456` (the server's
/// local time, kept as it is), or ISO 8601 with or without offset (converted to UTC).
fn parse_change_time(text: &str) -> Option<NaiveDateTime> {
    let text = text.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Some(t.naive_utc());
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(text, format) {
            return Some(t);
        }
    }
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
}

fn format_change_time(time: NaiveDateTime) -> String {
    time.format("%Y-%m-%d %H:%M:%S%.6f").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_times_parse_in_the_presets_forms() {
        let frappe = parse_change_time("2026-11-27 10:00:00.123456").expect("frappe");
        assert_eq!(format_change_time(frappe), "2026-11-27 10:00:00.123456");
        let iso = parse_change_time("2026-11-27T11:00:00+01:00").expect("iso");
        assert_eq!(format_change_time(iso), "2026-11-27 10:00:00.000000");
        assert!(parse_change_time("yesterday").is_none());
    }

    #[test]
    fn fields_read_as_text_exactly() {
        let row: Map<String, Value> = serde_json::from_str(
            r#"{"qty": 45000.10, "name": "A", "ok": true, "gone": null, "stock": {"wh": "W1"}}"#,
        )
        .expect("json");
        assert_eq!(lookup(&row, "qty").as_deref(), Some("45000.10"));
        assert_eq!(lookup(&row, "ok").as_deref(), Some("true"));
        assert_eq!(lookup(&row, "gone"), None);
        assert_eq!(lookup(&row, "absent"), None);
        assert_eq!(lookup(&row, "stock.wh").as_deref(), Some("W1"));
        assert_eq!(record_key(&["A"]), "A");
        assert_eq!(record_key(&["A", "W/1"]), r#"["A","W/1"]"#);
    }
}
