//! `erp_rest`: writes storefront orders and adjustments back to the ERP (sales interface
//! spec §5), and tells the inventory processor when the ERP acknowledged them.
//!
//! Contract:
//! - Only documents produced by the configured `sources` are written back; an order that
//!   came from the ERP is never echoed to it.
//! - One document at a time, in consumption order (per partition, the order of acceptance),
//!   so the ERP sees the orders of a sku in the order the storefront placed them when
//!   `sales.order` has one partition, or per partition otherwise.
//! - Idempotent from the ERP's point of view: every attempt for a document carries the same
//!   key (`Idempotency-Key: <transaction_id>` for the generic preset; ERPNext orders are looked
//!   up by `po_no` before one is created), so a retry or a replay after a crash never creates
//!   a second order. `409 Conflict` counts as "already there".
//! - 408, 429, 5xx, timeouts and connection errors are retried on the capped exponential
//!   schedule (honouring `Retry-After`); other 4xx, or the schedule running out, dead-letter
//!   the record to `<topic>.dlq` with the reason.
//! - After the ERP's 2xx, one `WRITTEN_BACK` reservation record per held (sku, location) is
//!   published (acknowledged by the broker) before the input offset is stored: the next ERP
//!   stock figure after that moment includes the sale and ends the hold.

mod config;
mod control;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use erpstream_schemas::{
    Codec, EventKind, Holds, InventoryAdjustment, OrderStatus, Reservation, ReservationAction,
    SalesOrder, Traceparent, now_millis, rfc3339,
};
use rdkafka::consumer::Consumer;
use rdkafka::message::{Message, OwnedMessage};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use tokio::sync::watch;

pub use config::{ErpNextSettings, ErpRestConfig, OrdersAs, Preset};

use crate::component::{Component, Context, Graph, Port, Readiness, Running};
use crate::kafka::{
    self, DeadLetter, GroupConsumer, KafkaConfig, OffsetTracker, PublishError, Publisher,
    TrackingContext, sleep_or_shutdown,
};
use crate::metrics as m;
use crate::retry::{Outcome, backoff, classify, retry_after, send};
use crate::secret::SecretError;
use crate::validation::{Checks, Problem};

/// Component type name in the topology.
pub const TYPE: &str = "erp_rest";

impl Component for ErpRestConfig {
    fn validate(&self, at: &str) -> Vec<Problem> {
        Checks::new(at)
            .http_url("url", &self.url)
            .ca_file("ca_file", &self.url, self.ca_file.as_deref())
            .listed("inputs", &self.inputs, "topic")
            .listed(
                "sources",
                &self.sources,
                "source whose documents are written back",
            )
            .rule(
                self.preset != Preset::Erpnext || self.token.is_some(),
                "token",
                "is required by the erpnext preset (api_key:api_secret)",
            )
            .positive("request_timeout", !self.request_timeout.is_zero())
            .extend(self.retry.validate(&format!("{at}.retry")))
            .done()
    }

    fn inputs(&self) -> Vec<Port> {
        Port::list(
            "inputs",
            &self.inputs,
            &[EventKind::SalesOrder, EventKind::InventoryAdjustment],
        )
    }

    fn outputs(&self) -> Vec<Port> {
        vec![Port::new(
            "reservations_topic",
            &self.reservations_topic,
            &[EventKind::Reservation],
        )]
    }

    fn check(&self, at: &str, graph: &dyn Graph) -> Vec<Problem> {
        self.sources
            .iter()
            .enumerate()
            .filter(|(_, source)| !graph.has_source(source))
            .map(|(i, source)| {
                Problem::new(
                    format!("{at}.sources[{i}]"),
                    format!("{source} is not a source of this topology"),
                )
            })
            .collect()
    }

    async fn build(&self, context: Context) -> Result<Running, crate::Error> {
        let sink = ErpRestSink::build(self.clone(), &context)?;
        let control = std::sync::Arc::new(control::ErpRestControl {
            client: sink.client.clone(),
            base: sink.base.clone(),
            token: sink.token.clone(),
            preset: self.preset,
        });
        Ok(Running::new(sink.readiness(), move |shutdown| async move {
            Ok(sink.run(shutdown).await?)
        })
        .control(control))
    }
}

/// Why the sink could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ErpRestError {
    /// The token could not be read.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The HTTP client could not be built.
    #[error("http client: {0}")]
    Http(#[from] reqwest::Error),
    /// `ca_file` cannot be used.
    #[error("ca_file: {0}")]
    CaFile(#[from] crate::tls::TlsFileError),
    /// The consumer could not be created or subscribe.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The broker refused a dead letter or a write-back record for good.
    #[error("a record the write-back depends on cannot be published: {0}")]
    Publish(#[from] PublishError),
}

/// A document to write back.
enum Document {
    Order(SalesOrder),
    Adjustment(InventoryAdjustment),
}

impl Document {
    fn source(&self) -> &str {
        match self {
            Document::Order(o) => &o.source,
            Document::Adjustment(a) => &a.source,
        }
    }
    fn reference(&self) -> &str {
        match self {
            Document::Order(o) => &o.transaction_id,
            Document::Adjustment(a) => &a.reference_id,
        }
    }
    fn source_system(&self) -> &str {
        match self {
            Document::Order(o) => &o.source_system,
            Document::Adjustment(a) => &a.source_system,
        }
    }
    fn ingested_at(&self) -> i64 {
        match self {
            Document::Order(o) => o.ingested_at,
            Document::Adjustment(a) => a.ingested_at,
        }
    }
    fn holds(&self) -> Holds {
        match self {
            Document::Order(o) => o.holds(),
            Document::Adjustment(a) => a.holds(),
        }
    }
}

/// A running `erp_rest` sink.
pub struct ErpRestSink {
    id: String,
    config: ErpRestConfig,
    client: reqwest::Client,
    base: reqwest::Url,
    token: Option<SecretString>,
    consumer: GroupConsumer,
    inputs: HashMap<String, (EventKind, String)>,
    sources: HashSet<String>,
    reservations_topic: String,
    publisher: Publisher,
    codec: Codec,
}

impl ErpRestSink {
    /// Builds the sink: resolves the token, creates the HTTP client and the consumer of the
    /// component's group (no network I/O).
    pub fn build(config: ErpRestConfig, context: &Context) -> Result<Self, ErpRestError> {
        let (id, publisher) = (&context.id, context.publisher.clone());
        let token = config.token.as_ref().map(|t| t.resolve()).transpose()?;
        let builder = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout);
        let client = crate::tls::trusting(builder, config.ca_file.as_deref())?.build()?;
        // Write-back is not on the storefront's latency budget: a long fetch wait spares the
        // broker hundreds of empty fetches a second.
        let kafka = KafkaConfig {
            fetch_wait: config.fetch_wait,
            ..context.kafka.clone()
        };
        let tracking = TrackingContext::new(Readiness::not_yet("starting"), false);
        let consumer = kafka::group_consumer(&kafka, &context.group(), id, tracking)?;
        let base = reqwest::Url::parse(&config.url).expect("validated URL");
        Ok(Self {
            id: id.to_string(),
            client,
            base,
            token,
            consumer,
            inputs: context
                .inputs(&config.inputs)
                .into_iter()
                .map(|i| (i.topic, (i.contract, i.dlq)))
                .collect(),
            sources: config.sources.iter().cloned().collect(),
            reservations_topic: kafka.topic(&config.reservations_topic),
            codec: publisher.codec().clone(),
            publisher,
            config,
        })
    }

    /// Ready while the sink holds its group's assignment (for `/readyz`).
    pub fn readiness(&self) -> Readiness {
        self.consumer.context().readiness()
    }

    /// Runs until `shutdown` turns true; a document being written back when it does is
    /// left uncommitted and written (idempotently) again after the restart.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), ErpRestError> {
        let topics: Vec<&str> = self.inputs.keys().map(String::as_str).collect();
        crate::kafka::subscribe(&self.consumer, &topics)?;
        tracing::info!(?topics, url = %self.base, preset = ?self.config.preset, "erp write-back started");
        let mut offsets = OffsetTracker::default();
        let mut pause = kafka::IdlePause::new(&self.consumer, &topics);
        loop {
            let message = tokio::select! {
                biased;
                _ = kafka::shutdown_requested(&mut shutdown) => break,
                () = pause.change(&self.consumer) => continue,
                message = self.consumer.recv() => match message {
                    Ok(message) => message.detach(),
                    Err(err) => {
                        tracing::warn!(error = %err, "consume failed");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                },
            };
            pause.took();
            for (topic, partition) in self.consumer.context().take_revoked() {
                offsets.revoke(&topic, partition);
            }
            if !self.handle(&message, &mut shutdown).await? {
                break;
            }
            offsets.take(message.topic(), message.partition(), message.offset(), 0);
            offsets.store(&self.consumer);
        }
        kafka::commit_stored(&self.consumer);
        Ok(())
    }

    /// Writes one record back; `false` if shutdown interrupted it (its offset is then not
    /// stored).
    async fn handle(
        &self,
        message: &OwnedMessage,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<bool, ErpRestError> {
        metrics::counter!(m::RECEIVED_EVENTS, m::COMPONENT_ID => self.id.clone(),
            m::COMPONENT_TYPE => TYPE)
        .increment(1);
        let (kind, dlq) = self.inputs[message.topic()].clone();
        let payload = message.payload().unwrap_or_default();
        let decoded = match kind {
            EventKind::SalesOrder => kafka::decode(&self.codec, payload, shutdown)
                .await
                .map(|r| r.map(Document::Order)),
            _ => kafka::decode(&self.codec, payload, shutdown)
                .await
                .map(|r| r.map(Document::Adjustment)),
        };
        let document = match decoded {
            None => return Ok(false),
            Some(Ok(document)) => document,
            Some(Err(err)) => {
                let failure = DeadLetter::new(
                    kafka::Failure::Undecodable,
                    &format!("undecodable: {err}"),
                    &self.id,
                )
                .of_record(message, &dlq);
                return self.dead_letter(failure, shutdown).await;
            }
        };
        if !self.sources.contains(document.source()) {
            return Ok(true);
        }
        if let Document::Order(order) = &document
            && order.status != OrderStatus::Open
        {
            return Ok(true);
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (failure, reason) = match self.attempt(&document).await {
                Outcome::Delivered => break,
                Outcome::Reject { reason } => (kafka::Failure::Rejected, reason),
                Outcome::Retry { reason, .. } if attempt >= self.config.retry.max_attempts => {
                    (kafka::Failure::RetriesExhausted, reason)
                }
                Outcome::Retry {
                    reason,
                    retry_after,
                } => {
                    metrics::counter!(m::RETRIES, m::COMPONENT_ID => self.id.clone(),
                        m::COMPONENT_TYPE => TYPE)
                    .increment(1);
                    let delay = backoff(&self.config.retry, attempt, retry_after);
                    tracing::warn!(reference = document.reference(), attempt, %reason,
                        ?delay, "ERP write-back failed; retrying");
                    if sleep_or_shutdown(delay, shutdown).await {
                        return Ok(false);
                    }
                    continue;
                }
            };
            let record = DeadLetter::new(failure, &reason, &self.id)
                .attempts(attempt)
                .of_record(message, &dlq);
            return self.dead_letter(record, shutdown).await;
        }
        let acked_at = now_millis();
        metrics::counter!(m::SENT_EVENTS, m::COMPONENT_ID => self.id.clone(),
            m::COMPONENT_TYPE => TYPE)
        .increment(1);
        let trace = kafka::trace_of(message)
            .map(|t| t.child())
            .unwrap_or_else(Traceparent::new_root);
        let steps: Vec<Reservation> = document
            .holds()
            .into_iter()
            .map(|((sku, location), quantity)| {
                Reservation::step(
                    ReservationAction::WrittenBack,
                    (document.source_system(), &self.id),
                    document.reference(),
                    &sku,
                    &location,
                    quantity,
                    acked_at,
                    document.ingested_at(),
                )
            })
            .collect();
        for step in &steps {
            let published = kafka::retrying("publishing the write-back record", shutdown, || {
                self.publisher
                    .publish(&self.reservations_topic, step, &trace)
            })
            .await;
            match published {
                None => return Ok(false),
                Some(result) => result?,
            };
        }
        Ok(true)
    }

    /// Publishes a dead letter, waiting out broker outages; `false` on shutdown.
    async fn dead_letter(
        &self,
        record: kafka::RawRecord,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<bool, ErpRestError> {
        let error = record.header(kafka::headers::ERROR).unwrap_or_default();
        tracing::error!(topic = %record.topic, %error, "ERP write-back dead-lettered");
        metrics::counter!(m::DEAD_LETTERED, m::COMPONENT_ID => self.id.clone(),
            m::COMPONENT_TYPE => TYPE)
        .increment(1);
        let sent = kafka::retrying("publishing a dead letter", shutdown, || {
            self.publisher.send(record.clone())
        })
        .await;
        match sent {
            None => Ok(false),
            Some(result) => result.map(|_| true).map_err(ErpRestError::from),
        }
    }

    /// One attempt at writing `document` to the ERP.
    async fn attempt(&self, document: &Document) -> Outcome {
        match (self.config.preset, document) {
            (Preset::Generic, Document::Order(order)) => match self.config.orders_as {
                OrdersAs::Orders => {
                    self.post("api/sales/orders", &order.transaction_id, order_body(order))
                        .await
                }
                OrdersAs::Adjustments => {
                    self.post(
                        "api/inventory/adjust",
                        &order.transaction_id,
                        order_as_adjustment(order),
                    )
                    .await
                }
            },
            (Preset::Generic, Document::Adjustment(adjustment)) => {
                self.post(
                    "api/inventory/adjust",
                    &adjustment.reference_id,
                    adjustment_body(adjustment),
                )
                .await
            }
            (Preset::Erpnext, Document::Order(order)) => self.erpnext_order(order).await,
            (Preset::Erpnext, Document::Adjustment(_)) => Outcome::Reject {
                reason: "the erpnext preset writes back orders only; send adjustments to an ERP \
                         with the generic preset"
                    .into(),
            },
        }
    }

    async fn post(&self, path: &str, key: &str, body: Value) -> Outcome {
        let url = match self.base.join(path) {
            Ok(url) => url,
            Err(err) => {
                return Outcome::Reject {
                    reason: format!("bad URL: {err}"),
                };
            }
        };
        let mut request = self
            .client
            .post(url)
            .header("idempotency-key", key)
            .json(&body);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token.expose_secret());
        }
        self.send(request).await
    }

    /// One request; `409 Conflict` means the ERP has the document already.
    async fn send(&self, request: reqwest::RequestBuilder) -> Outcome {
        match send(request, &self.id).await {
            Ok(response) if response.status() == reqwest::StatusCode::CONFLICT => {
                Outcome::Delivered
            }
            Ok(response) => classify("ERP", response.status(), retry_after(response.headers())),
            Err(outcome) => outcome,
        }
    }

    /// ERPNext: look the order up by `po_no` (the transaction id); create it if absent.
    async fn erpnext_order(&self, order: &SalesOrder) -> Outcome {
        let Ok(mut url) = self.base.join("api/resource/Sales Order") else {
            return Outcome::Reject {
                reason: "bad URL".into(),
            };
        };
        let auth = format!(
            "token {}",
            self.token
                .as_ref()
                .map(|t| t.expose_secret())
                .unwrap_or_default()
        );
        url.query_pairs_mut()
            .append_pair(
                "filters",
                &json!([["po_no", "=", order.transaction_id]]).to_string(),
            )
            .append_pair("fields", r#"["name"]"#);
        let lookup = send(
            self.client.get(url.clone()).header("authorization", &auth),
            &self.id,
        )
        .await;
        match lookup {
            Ok(response) if response.status().is_success() => {
                let found = response
                    .json::<Value>()
                    .await
                    .ok()
                    .and_then(|v| v.get("data")?.as_array().map(|a| !a.is_empty()))
                    .unwrap_or(false);
                if found {
                    return Outcome::Delivered;
                }
            }
            Ok(response) => {
                return classify(
                    "ERPNext",
                    response.status(),
                    retry_after(response.headers()),
                );
            }
            Err(outcome) => return outcome,
        }
        url.set_query(None);
        let request = self
            .client
            .post(url)
            .header("authorization", &auth)
            .json(&erpnext_body(order, &self.config.erpnext));
        self.send(request).await
    }
}

use erpstream_schemas::decimal::json_number as number;

/// §5.1.
fn order_body(order: &SalesOrder) -> Value {
    json!({
        "transaction_id": order.transaction_id,
        "transaction_date": rfc3339(order.occurred_at),
        "customer_details": {"name": order.customer_name, "tax_id": order.customer_tax_id},
        "line_items": order.line_items.iter().map(|l| json!({
            "sku": l.sku,
            "quantity": number(l.quantity),
            "unit_price": number(l.unit_price),
            "location_code": l.location_code,
        })).collect::<Vec<_>>(),
    })
}

/// §5.2 for an order: one deduction per line.
fn order_as_adjustment(order: &SalesOrder) -> Value {
    json!({
        "reference_id": order.transaction_id,
        "adjustments": order.line_items.iter().map(|l| json!({
            "sku": l.sku,
            "quantity_change": number(-l.quantity),
            "location_code": l.location_code,
        })).collect::<Vec<_>>(),
    })
}

/// §5.2.
fn adjustment_body(adjustment: &InventoryAdjustment) -> Value {
    json!({
        "reference_id": adjustment.reference_id,
        "adjustments": adjustment.adjustments.iter().map(|l| json!({
            "sku": l.sku,
            "quantity_change": number(l.quantity_change),
            "location_code": l.location_code,
        })).collect::<Vec<_>>(),
    })
}

/// An ERPNext `Sales Order` document.
fn erpnext_body(order: &SalesOrder, settings: &ErpNextSettings) -> Value {
    let date = chrono::DateTime::from_timestamp_millis(order.occurred_at).unwrap_or_default();
    let delivery = date + chrono::Duration::days(i64::from(settings.delivery_days));
    json!({
        "customer": order.customer_name.clone().unwrap_or_else(|| settings.customer.clone()),
        "po_no": order.transaction_id,
        "transaction_date": date.format("%Y-%m-%d").to_string(),
        "delivery_date": delivery.format("%Y-%m-%d").to_string(),
        "docstatus": i32::from(settings.submit),
        "items": order.line_items.iter().map(|l| json!({
            "item_code": l.sku,
            "qty": number(l.quantity),
            "rate": number(l.unit_price),
            "warehouse": l.location_code,
            "delivery_date": delivery.format("%Y-%m-%d").to_string(),
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use erpstream_schemas::LineItem;
    use rust_decimal::Decimal;

    fn order() -> SalesOrder {
        SalesOrder {
            event_id: "e".into(),
            idempotency_key: "ORD-1".into(),
            source_system: "storefront".into(),
            source: "api".into(),
            occurred_at: 1_705_745_700_000,
            ingested_at: 1_705_745_700_100,
            transaction_id: "ORD-1".into(),
            status: OrderStatus::Open,
            customer_name: Some("Jane Doe".into()),
            customer_tax_id: Some("GSTIN12345".into()),
            line_items: vec![LineItem {
                sku: "DRONE-X1-PRO-KIT".into(),
                quantity: Decimal::from(1),
                unit_price: "45000.00".parse().unwrap(),
                location_code: Some("WH-TECH-01".into()),
            }],
        }
    }

    #[test]
    fn bodies_follow_the_sales_interface_spec() {
        let body = order_body(&order());
        assert_eq!(body["transaction_id"], "ORD-1");
        assert_eq!(body["transaction_date"], "2024-01-20T10:15:00.000Z");
        assert_eq!(body["line_items"][0]["unit_price"].to_string(), "45000");
        let adjust = order_as_adjustment(&order());
        assert_eq!(adjust["reference_id"], "ORD-1");
        assert_eq!(
            adjust["adjustments"][0]["quantity_change"].to_string(),
            "-1"
        );
        let erpnext = erpnext_body(&order(), &ErpNextSettings::default());
        assert_eq!(erpnext["po_no"], "ORD-1");
        assert_eq!(erpnext["transaction_date"], "2024-01-20");
        assert_eq!(erpnext["items"][0]["item_code"], "DRONE-X1-PRO-KIT");
        assert_eq!(erpnext["docstatus"], 1);
    }
}
