//! Metric names and labels of the connectors, described once. Labels stay low-cardinality:
//! component ids and types, error classes, never a sku or a key.

/// Events a component took in.
pub const RECEIVED_EVENTS: &str = "erpstream_component_received_events_total";
/// Events a component handed on (published, delivered).
pub const SENT_EVENTS: &str = "erpstream_component_sent_events_total";
/// Failures, by `error_type` and `stage`.
pub const ERRORS: &str = "erpstream_component_errors_total";
/// Events dropped on purpose, by `reason` (duplicate, stale, superseded).
pub const DROPPED_EVENTS: &str = "erpstream_component_dropped_events_total";
/// Records sent to a dead-letter topic.
pub const DEAD_LETTERED: &str = "erpstream_component_dead_lettered_total";
/// Delivery attempts that were retried.
pub const RETRIES: &str = "erpstream_component_retries_total";
/// Seconds from the moment erpstream accepted a change to the sink's 2xx.
pub const END_TO_END_LATENCY: &str = "erpstream_end_to_end_latency_seconds";
/// Seconds from the ERP's own change time to the sink's 2xx (includes ERP-side delay).
pub const ERP_TO_SINK_LATENCY: &str = "erpstream_erp_to_sink_latency_seconds";
/// Seconds a webhook request took from receipt to the broker's acknowledgement.
pub const INGEST_LATENCY: &str = "erpstream_ingest_latency_seconds";
/// Seconds one outbound HTTP request took.
pub const REQUEST_DURATION: &str = "erpstream_http_request_duration_seconds";
/// Deliveries waiting in a sink, by component.
pub const PENDING: &str = "erpstream_component_pending_events";
/// Gauge: records a consumer's group has not committed yet on the partitions this member
/// holds, by component and topic (from librdkafka's statistics, every few seconds).
pub const CONSUMER_LAG: &str = "erpstream_consumer_lag_records";
/// Gauge: a consumer's partitions paused for want of records (`kafka.idle_pause`), by
/// component (a processor chain by its task name).
pub const CONSUMER_PAUSED: &str = "erpstream_consumer_paused_partitions";
/// Counter: nudges of a consumer group that left this consumer without partitions for
/// 30 s (tansu can strand a group; see `kafka::consumer`), by component.
pub const GROUP_NUDGES: &str = "erpstream_consumer_group_nudges_total";
/// Counter: processor transactions (`kafka.transactions`), by `outcome`: `committed` or
/// `aborted` (the batch is processed again from the committed offsets).
pub const TRANSACTIONS: &str = "erpstream_processor_transactions_total";
/// Ingest requests refused at the door (`503` + `Retry-After`), by `reason`.
pub const SHED: &str = "erpstream_http_shed_total";
/// The longest wait the admission gate predicts for a record accepted now, at a stage on the
/// way to the storefront.
pub const ADMISSION_LAG: &str = "erpstream_admission_lag_seconds";

/// Label: the component's id in the topology.
pub const COMPONENT_ID: &str = "component_id";
/// Label: the component's type (`erp_webhook`, `storefront_webhook`, ...).
pub const COMPONENT_TYPE: &str = "component_type";
/// Label: an error class.
pub const ERROR_TYPE: &str = "error_type";
/// Label: where in the component the error happened.
pub const STAGE: &str = "stage";
/// Label: why an event was dropped.
pub const REASON: &str = "reason";
/// Label: how a transaction ended.
pub const OUTCOME: &str = "outcome";

/// Registers descriptions for every metric above (call once at start-up).
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(RECEIVED_EVENTS, "Events a component took in.");
    describe_counter!(SENT_EVENTS, "Events a component published or delivered.");
    describe_counter!(ERRORS, "Component failures by error_type and stage.");
    describe_counter!(DROPPED_EVENTS, "Events dropped on purpose, by reason.");
    describe_counter!(DEAD_LETTERED, "Records sent to a dead-letter topic.");
    describe_counter!(RETRIES, "Delivery attempts that were retried.");
    describe_counter!(
        TRANSACTIONS,
        "Processor batch transactions, by outcome (committed, aborted)."
    );
    describe_histogram!(
        END_TO_END_LATENCY,
        Unit::Seconds,
        "Accepted by erpstream to sink 2xx."
    );
    describe_histogram!(
        ERP_TO_SINK_LATENCY,
        Unit::Seconds,
        "ERP change time to sink 2xx."
    );
    describe_histogram!(
        INGEST_LATENCY,
        Unit::Seconds,
        "Webhook receipt to broker acknowledgement."
    );
    describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "Outbound HTTP request duration."
    );
    describe_gauge!(PENDING, "Deliveries waiting in a sink.");
    describe_gauge!(
        CONSUMER_PAUSED,
        "A consumer's partitions paused for want of records (kafka.idle_pause)."
    );
    describe_counter!(
        GROUP_NUDGES,
        "Nudges of a consumer group that left this consumer without partitions too long."
    );
    describe_gauge!(
        CONSUMER_LAG,
        "Records not yet committed by a consumer's group on the partitions it holds, by topic."
    );
    describe_counter!(
        SHED,
        "Ingest requests refused at the door (503), by reason."
    );
    describe_gauge!(
        ADMISSION_LAG,
        Unit::Seconds,
        "Longest wait the admission gate predicts for a record accepted now."
    );
}
