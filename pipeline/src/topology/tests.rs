//! Every validation rule of the topology, one case each: the mutation of a valid topology
//! that breaks it, and the exact `path: rule` the user is shown.

use serde_yaml_ng::{Mapping, Value};

use super::Topology;
use crate::components::{COMPONENTS, PROCESSORS};

/// A valid topology with one component of every type.
const BASE: &str = r#"
app_id: unit
http: { listen: "127.0.0.1:8080" }
kafka: { brokers: "127.0.0.1:9092" }
registry: { url: "http://127.0.0.1:8081" }
topics:
  catalog.update: { partitions: 3 }
  inventory.change: { partitions: 3 }
  inventory.reservation: { partitions: 3 }
  inventory.available: { partitions: 3, compacted: true }
  sales.order: { partitions: 1 }
  inventory.adjustment: { partitions: 1 }
  demand.actual: { partitions: 3 }
sources:
  erp:
    type: erp_webhook
    secrets: [{ env: ERP_SECRET }]
    orders_topic: sales.order
    reservations_topic: inventory.reservation
  storefront_api:
    type: storefront_api
    tokens: [{ env: API_TOKEN }]
    database: postgres://db/erpstream
    snapshot: inventory
  erp_db:
    type: pg_cdc
    database: postgres://db/erp
    state_database: postgres://db/erpstream
    slot: erpstream_erp
    publication: erpstream_erp
    tables:
      public.bin:
        topic: inventory.change
        fields: { sku: item_code, location_code: warehouse, new_quantity: actual_qty }
  erpnext:
    type: rest_poll
    preset: erpnext
    url: https://erp.example.com
    auth: { api_key: { env: KEY }, api_secret: { env: SECRET } }
    state_database: postgres://db/erpstream
    resources:
      stock:
        doctype: Bin
        key: [item_code, warehouse]
        topic: inventory.change
        fields: { sku: item_code, location_code: warehouse, new_quantity: actual_qty }
  planning_api:
    type: planning_api
    database: postgres://db/planning
    tokens: [{ token: { env: ADMIN }, role: admin }]
    publish: { url: "https://erp.example.com" }
processors:
  dedupe: { type: dedupe, inputs: [inventory.change, inventory.reservation] }
  inventory: { type: inventory, inputs: [dedupe], output: inventory.available }
sinks:
  planning:
    type: planning_pg
    inputs: [catalog.update, inventory.change, demand.actual]
    database: postgres://db/planning
  storefront:
    type: storefront_webhook
    inputs: [inventory.available, catalog.update]
    url: "https://shop.example.com/hook"
    secret: { env: SHOP }
  writeback:
    type: erp_rest
    inputs: [sales.order, inventory.adjustment]
    sources: [storefront_api]
    url: "https://erp.example.com"
  audit:
    type: jsonl_file
    inputs: [inventory.available, sales.order]
    path: /var/lib/erpstream/audit.jsonl
"#;

fn base() -> Value {
    serde_yaml_ng::from_str(BASE).expect("base parses")
}

/// Sets (or, with `None`, removes) the value at `path` in `root`, creating mappings on the
/// way.
fn set(root: &mut Value, path: &[&str], value: Option<&str>) {
    let (last, parents) = path.split_last().expect("a path");
    let mut node = root;
    for segment in parents {
        let map = node.as_mapping_mut().expect("a mapping on the way");
        node = map
            .entry(Value::from(*segment))
            .or_insert_with(|| Value::Mapping(Mapping::new()));
    }
    let map = node.as_mapping_mut().expect("a mapping at the end");
    match value {
        Some(text) => {
            map.insert(
                Value::from(*last),
                serde_yaml_ng::from_str(text).expect("the value parses"),
            );
        }
        None => {
            map.remove(*last);
        }
    }
}

/// A change to the base topology: the path of a value and its new YAML (`None`: removed).
type Change<'a> = (&'a [&'a str], Option<&'a str>);

/// The problems of the base topology with `changes` applied, as `path: rule` lines.
fn problems(changes: &[Change]) -> Vec<String> {
    let mut root = base();
    for (path, value) in changes {
        set(&mut root, path, *value);
    }
    let text = serde_yaml_ng::to_string(&root).expect("serializes");
    match Topology::parse(&text) {
        Ok(_) => Vec::new(),
        Err(errors) => errors.0.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn the_base_topology_is_valid() {
    assert_eq!(problems(&[]), Vec::<String>::new());
}

#[test]
fn the_admission_gate_defaults_keep_accepted_records_within_the_budget() {
    let topology = Topology::parse(BASE).expect("valid");
    let admission = &topology.http.admission;
    assert_eq!(admission.max_in_flight, 5_000);
    assert_eq!(
        admission.max_ack_wait,
        std::time::Duration::from_millis(800)
    );
    // Refusing from 3 s of lag leaves 2 s of the 5 s budget to what was accepted.
    assert_eq!(admission.max_lag, std::time::Duration::from_secs(3));
}

/// One broken rule per case: the change and every problem it must cause, exactly.
#[test]
fn every_rule_names_its_path_and_reason() {
    let cases: Vec<(&[Change], &[&str])> = vec![
        // Sections.
        (
            &[(&["extra"], Some("1"))],
            &[
                "extra: unknown section; expected one of app_id, http, kafka, registry, topics, sources, processors, sinks, console",
            ],
        ),
        (
            &[(&["console", "tokens"], Some("[]"))],
            &["console.tokens: must list at least one token"],
        ),
        (
            &[
                (
                    &["console", "tokens"],
                    Some(
                        "[{token: {env: A}, role: viewer, name: ops}, {token: {env: B}, role: operator, name: ops}]",
                    ),
                ),
                (&["console", "session"], Some("10s")),
            ],
            &[
                "console.tokens[1].name: ops is named twice; each token needs its own name",
                "console.session: must be between 1m and 7days",
            ],
        ),
        (
            &[(
                &["console", "tokens"],
                Some("[{token: inline, role: admin, name: x}]"),
            )],
            &[
                "console.tokens[0].token: must be { env: VARIABLE } or { file: PATH } (secrets are never written inline)",
            ],
        ),
        (&[(&["app_id"], None)], &["app_id: is required"]),
        (
            &[(&["app_id"], Some("'my app'"))],
            &["app_id: must be non-empty and use only letters, digits, '.', '_' and '-'"],
        ),
        (
            &[(&["registry", "url"], Some("not a url"))],
            &["registry.url: must be an http(s) URL"],
        ),
        (
            &[(&["registry", "ca_file"], Some("/nowhere/ca.pem"))],
            &["registry.ca_file: needs an https url (a CA file does nothing over plain HTTP)"],
        ),
        (
            &[
                (&["registry", "url"], Some("https://sr.example.com")),
                (&["registry", "ca_file"], Some("/nowhere/ca.pem")),
                (
                    &["registry", "basic_auth"],
                    Some("{ username: '', password: { env: SR } }"),
                ),
            ],
            &[
                "registry.ca_file: /nowhere/ca.pem: No such file or directory (os error 2)",
                "registry.basic_auth.username: must not be empty",
            ],
        ),
        (
            &[(
                &["registry", "basic_auth"],
                Some("{ username: key, password: inline }"),
            )],
            &[
                "registry.basic_auth.password: must be { env: VARIABLE } or { file: PATH } (secrets are never written inline)",
            ],
        ),
        // kafka.security.
        (
            &[(&["kafka", "security"], Some("{ protocol: SASL_SSL }"))],
            &["kafka.security.sasl: is required with protocol SASL_SSL"],
        ),
        (
            &[(
                &["kafka", "security"],
                Some(
                    "{ protocol: SSL, sasl: { mechanism: PLAIN, username: u, password: { env: P } } }",
                ),
            )],
            &["kafka.security.sasl: needs protocol SASL_SSL or SASL_PLAINTEXT (protocol is SSL)"],
        ),
        (
            &[(&["kafka", "security"], Some("{ ca_file: /nowhere/ca.pem }"))],
            &["kafka.security.ca_file: needs protocol SSL or SASL_SSL (protocol is PLAINTEXT)"],
        ),
        (
            &[(
                &["kafka", "security"],
                Some("{ protocol: SSL, ca_file: /nowhere/ca.pem, cert_file: /nowhere/client.pem }"),
            )],
            &[
                "kafka.security.ca_file: /nowhere/ca.pem: No such file or directory (os error 2)",
                "kafka.security.cert_file: /nowhere/client.pem: No such file or directory (os error 2)",
                "kafka.security.key_file: is required: cert_file and key_file go together",
            ],
        ),
        (
            &[(&["kafka", "security"], Some("{ protocol: TLS }"))],
            &[
                "kafka.security.protocol: unknown variant `TLS`, expected one of `PLAINTEXT`, `SSL`, `SASL_PLAINTEXT`, `SASL_SSL`",
            ],
        ),
        (
            &[(
                &["kafka", "security"],
                Some(
                    "{ protocol: SASL_SSL, sasl: { mechanism: SCRAM-SHA-1, username: u, password: { env: P } } }",
                ),
            )],
            &[
                "kafka.security.sasl.mechanism: unknown variant `SCRAM-SHA-1`, expected one of `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`",
            ],
        ),
        (
            &[
                (&["kafka", "properties", "sasl.password"], Some("hunter2")),
                (
                    &["kafka", "properties", "security.protocol"],
                    Some("SASL_SSL"),
                ),
                (
                    &["kafka", "properties", "socket.keepalive.enable"],
                    Some("'true'"),
                ),
            ],
            &[
                "kafka.properties.sasl.password: is a secret and secrets are never written inline: use kafka.security (sasl.password: { env: VAR } or { file: PATH })",
                "kafka.properties.security.protocol: is set by kafka.security: set it there",
            ],
        ),
        (
            &[
                (&["http", "admission", "max_in_flight"], Some("0")),
                (&["http", "admission", "max_lag"], Some("0s")),
            ],
            &[
                "http.admission.max_in_flight: must be > 0",
                "http.admission.max_lag: must be > 0",
            ],
        ),
        (
            &[
                (&["http", "limits", "max_connections"], Some("0")),
                (&["http", "limits", "header_timeout"], Some("0s")),
                (&["http", "limits", "max_header_bytes"], Some("10MiB")),
            ],
            &[
                "http.limits.max_connections: must be > 0",
                "http.limits.header_timeout: must be > 0",
                "http.limits.max_header_bytes: must be between 1 KiB and 1 MiB",
            ],
        ),
        (
            &[(&["http", "admission", "max_ack_wait"], Some("later"))],
            &["http.admission.max_ack_wait: invalid value: string \"later\", expected a duration"],
        ),
        (
            &[(&["kafka", "fetch_wait"], Some("soon"))],
            &["kafka.fetch_wait: invalid value: string \"soon\", expected a duration"],
        ),
        (
            &[
                (&["kafka", "transactions"], Some("true")),
                (&["kafka", "idempotence"], Some("false")),
            ],
            &[
                "kafka.idempotence: must be true with transactions (a transactional producer is idempotent)",
                "kafka.instance_id: is required with transactions: it names this replica's transactional producers",
            ],
        ),
        (
            &[
                (&["kafka", "idle_pause"], Some("1s")),
                (&["kafka", "idle_poll"], Some("0s")),
            ],
            &[
                "kafka.idle_poll: must be > 0 with idle_pause: a paused consumer would never see records other processes write",
            ],
        ),
        (
            &[(&["topics", "demand.actual", "partitions"], Some("0"))],
            &["topics.demand.actual.partitions: must be >= 1"],
        ),
        (
            &[(&["topics", "stock"], Some("{ partitions: 1 }"))],
            &[
                "topics.stock: names no contract; set contract to one of catalog.update, inventory.change, sales.order, inventory.available, inventory.adjustment, inventory.reservation, demand.actual",
            ],
        ),
        (
            &[(
                &["topics", "stock"],
                Some("{ partitions: 1, contract: nope }"),
            )],
            &[
                "topics.stock.contract: names no contract; set contract to one of catalog.update, inventory.change, sales.order, inventory.available, inventory.adjustment, inventory.reservation, demand.actual",
            ],
        ),
        // Component entries.
        (
            &[(&["sinks", "pigeon"], Some("{ type: carrier_pigeon }"))],
            &[
                "sinks.pigeon.type: must be one of storefront_webhook, erp_rest, planning_pg, jsonl_file",
            ],
        ),
        (
            &[(&["sources", "pigeon"], Some("{ type: carrier_pigeon }"))],
            &[
                "sources.pigeon.type: must be one of erp_webhook, storefront_api, pg_cdc, rest_poll, planning_api",
            ],
        ),
        (
            &[(&["processors", "pigeon"], Some("{ type: carrier_pigeon }"))],
            &["processors.pigeon.type: must be one of dedupe, inventory"],
        ),
        (
            &[(&["sinks", "nameless"], Some("{ url: x }"))],
            &["sinks.nameless.type: is required"],
        ),
        (
            &[(&["sinks", "flat"], Some("3"))],
            &["sinks.flat: must be a mapping"],
        ),
        (
            &[(&["sinks"], Some("[a, b]"))],
            &["sinks: must be a mapping of component id to settings"],
        ),
        (
            &[(&["sinks", "storefront", "colour"], Some("blue"))],
            &[
                "sinks.storefront.colour: unknown field `colour`, expected one of `inputs`, `url`, `ca_file`, `secret`, `request_timeout`, `concurrency`, `max_pending`, `dedupe_window`, `retry`",
            ],
        ),
        // Ids.
        (
            &[(
                &["sinks", "erp"],
                Some("{ type: planning_pg, inputs: [catalog.update], database: postgres://db/p }"),
            )],
            &["sinks.erp: id is already used in sources"],
        ),
        (
            &[(
                &["topics", "planning"],
                Some("{ partitions: 1, contract: demand.actual }"),
            )],
            &["sinks.planning: id is also a topic name; inputs would be ambiguous"],
        ),
        (
            &[(
                &["sinks", "bad id!"],
                Some("{ type: planning_pg, inputs: [catalog.update], database: postgres://db/p }"),
            )],
            &["sinks.bad id!: id must use only letters, digits, '_' and '-'"],
        ),
        // HTTP paths.
        (
            &[(
                &["sources", "erp2"],
                Some("{ type: erp_webhook, secrets: [{ env: S }] }"),
            )],
            &["sources.erp2.path: /webhooks/erp is already served by sources.erp"],
        ),
        (
            &[(
                &["sources", "shop2"],
                Some("{ type: storefront_api, tokens: [{ env: T }], database: postgres://db/x }"),
            )],
            &[
                "sources.storefront_api: /api/sales/orders is already served by sources.shop2",
                "sources.storefront_api: /api/inventory/adjust is already served by sources.shop2",
            ],
        ),
        // Ports and contracts.
        (
            &[(
                &["sources", "erp", "catalog_topic"],
                Some("catalog.updates"),
            )],
            &["sources.erp.catalog_topic: topic catalog.updates is not declared in topics"],
        ),
        (
            &[(
                &["sources", "erp", "inventory_topic"],
                Some("demand.actual"),
            )],
            &[
                "sources.erp.inventory_topic: topic demand.actual carries demand.actual; expected inventory.change",
            ],
        ),
        (
            &[(
                &["sinks", "storefront", "inputs"],
                Some("[inventory.change]"),
            )],
            &[
                "sinks.storefront.inputs[0]: topic inventory.change carries inventory.change; expected inventory.available or catalog.update",
            ],
        ),
        (
            &[(&["sinks", "storefront", "inputs"], Some("[inventory]"))],
            &["sinks.storefront.inputs[0]: sinks read topics; name the processor's output topic"],
        ),
        (
            &[(
                &["sinks", "writeback", "reservations_topic"],
                Some("sales.order"),
            )],
            &[
                "sinks.writeback.reservations_topic: topic sales.order carries sales.order; expected inventory.reservation",
            ],
        ),
        (
            &[(
                &["sinks", "writeback", "sources"],
                Some("[storefront_api, shop]"),
            )],
            &["sinks.writeback.sources[1]: shop is not a source of this topology"],
        ),
        (
            &[(
                &["sources", "erp_db", "tables", "public.bin", "topic"],
                Some("inventory.available"),
            )],
            &[
                "sources.erp_db.tables.public.bin.topic: topic inventory.available carries inventory.available; expected inventory.change or catalog.update or sales.order or demand.actual",
            ],
        ),
        (
            &[(
                &[
                    "sources",
                    "erp_db",
                    "tables",
                    "public.bin",
                    "fields",
                    "colour",
                ],
                Some("paint"),
            )],
            &[
                "sources.erp_db.tables.public.bin.fields.colour: is not a field of inventory.change (fields: event_id, idempotency_key, source_system, source, occurred_at, ingested_at, sku, location_code, new_quantity, allocated_qty, in_transit_qty, quantity_change, change_reason, reference_id)",
            ],
        ),
        (
            &[(
                &["sources", "erpnext", "resources", "stock", "fields", "sku"],
                None,
            )],
            &["sources.erpnext.resources.stock.fields.sku: is required (it is the record key)"],
        ),
        // Co-partitioning and snapshots.
        (
            &[(
                &["topics", "inventory.reservation", "partitions"],
                Some("2"),
            )],
            &[
                "sources.storefront_api.reservations_topic: inventory.reservation must have as many partitions as inventory.change (both keyed by sku)",
                "processors.dedupe.inputs: input topics must have equal partition counts (co-partitioning)",
            ],
        ),
        (
            &[(&["topics", "inventory.available", "partitions"], Some("2"))],
            &[],
        ),
        (
            &[(&["sources", "storefront_api", "snapshot"], Some("dedupe"))],
            &["sources.storefront_api.snapshot: dedupe is not an inventory processor"],
        ),
        // Processors.
        (
            &[(&["processors", "dedupe", "inputs"], Some("[]"))],
            &["processors.dedupe.inputs: must list at least one input"],
        ),
        (
            &[(
                &["processors", "dedupe", "inputs"],
                Some("[inventory.chnage]"),
            )],
            &[
                "processors.dedupe.inputs[0]: inventory.chnage is neither a declared topic nor a processor",
            ],
        ),
        (
            &[(
                &["processors", "inventory", "inputs"],
                Some("[dedupe, catalog.update]"),
            )],
            &[
                "processors.inventory.inputs[1]: topic catalog.update carries catalog.update; expected inventory.change or inventory.reservation",
            ],
        ),
        (
            &[(
                &["processors", "dedupe", "inputs"],
                Some("[catalog.update]"),
            )],
            &[
                "processors.inventory.inputs[0]: dedupe carries catalog.update, which this processor does not take",
            ],
        ),
        (
            &[(
                &["processors", "dedupe", "output"],
                Some("inventory.change"),
            )],
            &[
                "processors.inventory.inputs[0]: processor dedupe writes a topic; read that topic instead",
            ],
        ),
        (
            &[(
                &["processors", "dedupe2"],
                Some("{ type: dedupe, inputs: [demand.actual] }"),
            )],
            &["processors.dedupe2.output: is required when no processor reads this one"],
        ),
        (
            &[(
                &["processors", "inventory2"],
                Some("{ type: inventory, inputs: [dedupe], output: inventory.available }"),
            )],
            &[
                "processors.dedupe: is read by inventory, inventory2 processors; a processor feeds at most one",
            ],
        ),
        (
            &[(
                &["processors", "inventory", "output"],
                Some("inventory.availble"),
            )],
            &["processors.inventory.output: topic inventory.availble is not declared in topics"],
        ),
        (
            &[(
                &["processors", "inventory", "output"],
                Some("demand.actual"),
            )],
            &[
                "processors.inventory.output: topic demand.actual carries demand.actual; this processor writes inventory.available",
            ],
        ),
        (
            &[
                (&["processors", "a"], Some("{ type: dedupe, inputs: [b] }")),
                (&["processors", "b"], Some("{ type: dedupe, inputs: [a] }")),
            ],
            &[
                "processors.a.inputs: forms a cycle",
                "processors.b.inputs: forms a cycle",
            ],
        ),
        (
            &[(&["processors", "dedupe", "retention"], Some("0s"))],
            &["processors.dedupe.retention: must be > 0"],
        ),
        (
            &[(
                &["processors", "inventory", "reservations", "expiry"],
                Some("0s"),
            )],
            &["processors.inventory.reservations.expiry: must be > 0"],
        ),
        (
            &[(
                &["processors", "inventory", "reservations", "remember"],
                Some("1m"),
            )],
            &["processors.inventory.reservations.remember: must be at least reservations.expiry"],
        ),
        (
            &[(
                &["processors", "inventory", "safety_stock", "default"],
                Some("-1"),
            )],
            &["processors.inventory.safety_stock.default: must be >= 0"],
        ),
        (
            &[(
                &["processors", "inventory", "safety_stock", "skus"],
                Some("{ SKU-1: -2 }"),
            )],
            &["processors.inventory.safety_stock.skus.SKU-1: must be >= 0"],
        ),
        // erp_webhook.
        (
            &[(&["sources", "erp", "path"], Some("webhooks"))],
            &["sources.erp.path: must start with /"],
        ),
        (
            &[(&["sources", "erp", "secrets"], Some("[]"))],
            &["sources.erp.secrets: must list at least one secret"],
        ),
        (
            &[(&["sources", "erp", "timestamp_tolerance"], Some("0s"))],
            &["sources.erp.timestamp_tolerance: must be > 0"],
        ),
        (
            &[(&["sources", "erp", "max_body"], Some("0"))],
            &["sources.erp.max_body: must be > 0"],
        ),
        (
            &[(&["sources", "erp", "orders_topic"], None)],
            &[
                "sources.erp.reservations_topic: orders_topic and reservations_topic are set together (a cancellation releases holds)",
            ],
        ),
        (
            &[(&["sources", "erp", "source_system"], Some("' '"))],
            &["sources.erp.source_system: must not be empty"],
        ),
        (
            &[(&["sources", "erp", "secrets"], Some("[inline]"))],
            &[
                "sources.erp.secrets[0]: must be { env: VARIABLE } or { file: PATH } (secrets are never written inline)",
            ],
        ),
        // storefront_api.
        (
            &[(&["sources", "storefront_api", "tokens"], Some("[]"))],
            &["sources.storefront_api.tokens: must list at least one token"],
        ),
        (
            &[(
                &["sources", "storefront_api", "database"],
                Some("mysql://db"),
            )],
            &["sources.storefront_api.database: must be a postgres:// URL"],
        ),
        (
            &[(
                &["sources", "storefront_api", "default_location"],
                Some("''"),
            )],
            &["sources.storefront_api.default_location: must not be empty"],
        ),
        // pg_cdc.
        (
            &[(&["sources", "erp_db", "database"], Some("erp"))],
            &["sources.erp_db.database: must be a postgres:// URL"],
        ),
        (
            &[(
                &["sources", "erp_db", "database"],
                Some("postgres://erp@10.0.0.5/erp?sslmode=verify-full"),
            )],
            &[
                "sources.erp_db.database: sslmode=verify-full needs the server's host name, not an IP address: the replication client checks certificates by DNS name only (or use verify-ca)",
            ],
        ),
        (
            &[(
                &["sources", "erp_db", "database"],
                Some("postgres://erp@db/erp?sslmode=strict"),
            )],
            &[
                "sources.erp_db.database: sslmode \"strict\": must be disable, prefer, require, verify-ca or verify-full",
            ],
        ),
        (
            &[(&["sources", "erp_db", "slot"], Some("Slot-1"))],
            &[
                "sources.erp_db.slot: must be a lower-case identifier (a-z, 0-9, _; at most 63 characters)",
            ],
        ),
        (
            &[(&["sources", "erp_db", "snapshot_chunk"], Some("0"))],
            &["sources.erp_db.snapshot_chunk: must be > 0"],
        ),
        (
            &[(&["sources", "erp_db", "heartbeat"], Some("100ms"))],
            &["sources.erp_db.heartbeat: must be at least 1s"],
        ),
        (
            &[(&["sources", "erp_db", "tables"], Some("{}"))],
            &["sources.erp_db.tables: must list at least one table"],
        ),
        (
            &[(
                &["sources", "erp_db", "tables", "bin"],
                Some(
                    "{ topic: inventory.change, fields: { sku: a, location_code: b, new_quantity: c } }",
                ),
            )],
            &["sources.erp_db.tables.bin: must be named schema.table"],
        ),
        (
            &[(
                &[
                    "sources",
                    "erp_db",
                    "tables",
                    "public.bin",
                    "fields",
                    "location_code",
                ],
                Some("''"),
            )],
            &["sources.erp_db.tables.public.bin.fields.location_code: must name a column"],
        ),
        // rest_poll.
        (
            &[(&["sources", "erpnext", "url"], Some("ftp://erp"))],
            &["sources.erpnext.url: must be an http:// or https:// URL"],
        ),
        (
            &[(&["sources", "erpnext", "auth", "api_secret"], None)],
            &[
                "sources.erpnext.auth.api_secret: is required by the erpnext preset (Authorization: token key:secret)",
            ],
        ),
        (
            &[
                (&["sources", "erpnext", "preset"], Some("odata")),
                (
                    &["sources", "erpnext", "resources", "stock", "doctype"],
                    None,
                ),
                (
                    &["sources", "erpnext", "resources", "stock", "baq"],
                    Some("Stock"),
                ),
                (
                    &["sources", "erpnext", "resources", "stock", "changed_field"],
                    Some("ChangeDate"),
                ),
            ],
            &[
                "sources.erpnext.auth: the odata preset needs username and password (basic auth) besides api_key",
                "sources.erpnext.company: is required by the odata preset",
            ],
        ),
        (
            &[(&["sources", "erpnext", "interval"], Some("10ms"))],
            &["sources.erpnext.interval: must be at least 100ms"],
        ),
        (
            &[(&["sources", "erpnext", "page_size"], Some("0"))],
            &["sources.erpnext.page_size: must be > 0"],
        ),
        (
            &[(
                &["sources", "erpnext", "max_requests_per_second"],
                Some("0"),
            )],
            &["sources.erpnext.max_requests_per_second: must be a positive number"],
        ),
        (
            &[(&["sources", "erpnext", "circuit", "failures"], Some("0"))],
            &["sources.erpnext.circuit.failures: must be > 0"],
        ),
        (
            &[(&["sources", "erpnext", "resources"], Some("{}"))],
            &["sources.erpnext.resources: must list at least one resource"],
        ),
        (
            &[(
                &["sources", "erpnext", "resources", "stock", "baq"],
                Some("Stock"),
            )],
            &[
                "sources.erpnext.resources.stock.doctype: the erpnext preset reads a doctype (and no baq)",
            ],
        ),
        (
            &[(
                &["sources", "erpnext", "resources", "stock", "filters"],
                Some("disabled = 0"),
            )],
            &[
                "sources.erpnext.resources.stock.filters: must be a list of [field, operator, value] conditions",
            ],
        ),
        (
            &[(&["sources", "erpnext", "retry", "max_attempts"], Some("0"))],
            &["sources.erpnext.retry.max_attempts: must be > 0"],
        ),
        // planning_api.
        (
            &[(
                &["sources", "planning_api", "tokens"],
                Some("[{ token: { env: A }, role: ' ' }]"),
            )],
            &[
                "sources.planning_api.tokens[0].role: must name a role (admin, sop_coordinator, ...)",
            ],
        ),
        (
            &[(&["sources", "planning_api", "max_items"], Some("0"))],
            &["sources.planning_api.max_items: must be > 0"],
        ),
        (
            &[(&["sources", "planning_api", "publish", "url"], Some("erp"))],
            &["sources.planning_api.publish.url: must be an http(s) URL"],
        ),
        // storefront_webhook.
        (
            &[(&["sinks", "storefront", "url"], Some("not a url"))],
            &["sinks.storefront.url: must be an http(s) URL"],
        ),
        (
            &[(&["sinks", "storefront", "inputs"], Some("[]"))],
            &["sinks.storefront.inputs: must list at least one topic"],
        ),
        (
            &[(&["sinks", "storefront", "concurrency"], Some("0"))],
            &["sinks.storefront.concurrency: must be > 0"],
        ),
        (
            &[(&["sinks", "storefront", "max_pending"], Some("0"))],
            &["sinks.storefront.max_pending: must be > 0"],
        ),
        (
            &[(&["sinks", "storefront", "request_timeout"], Some("0s"))],
            &["sinks.storefront.request_timeout: must be > 0"],
        ),
        (
            &[(
                &["sinks", "storefront", "retry", "initial_backoff"],
                Some("0s"),
            )],
            &["sinks.storefront.retry.initial_backoff: must be > 0"],
        ),
        (
            &[(
                &["sinks", "storefront", "retry", "max_backoff"],
                Some("1ms"),
            )],
            &["sinks.storefront.retry.max_backoff: must be >= initial_backoff"],
        ),
        // erp_rest.
        (
            &[(&["sinks", "writeback", "sources"], Some("[]"))],
            &[
                "sinks.writeback.sources: must list at least one source whose documents are written back",
            ],
        ),
        (
            &[(&["sinks", "writeback", "preset"], Some("erpnext"))],
            &["sinks.writeback.token: is required by the erpnext preset (api_key:api_secret)"],
        ),
        (
            &[(&["sinks", "writeback", "inputs"], Some("[catalog.update]"))],
            &[
                "sinks.writeback.inputs[0]: topic catalog.update carries catalog.update; expected sales.order or inventory.adjustment",
            ],
        ),
        // jsonl_file.
        (
            &[(&["sinks", "audit", "inputs"], Some("[]"))],
            &["sinks.audit.inputs: must list at least one topic"],
        ),
        (
            &[(&["sinks", "audit", "path"], Some("/tmp"))],
            &["sinks.audit.path: must name a file"],
        ),
        (
            &[(&["sinks", "audit", "batch_size"], Some("0"))],
            &["sinks.audit.batch_size: must be > 0"],
        ),
        (
            &[(&["sinks", "audit", "inputs"], Some("[inventory]"))],
            &["sinks.audit.inputs[0]: sinks read topics; name the processor's output topic"],
        ),
        // planning_pg.
        (
            &[(&["sinks", "planning", "database"], Some("planning"))],
            &["sinks.planning.database: must be a postgres:// URL"],
        ),
        (
            &[(&["sinks", "planning", "batch_size"], Some("0"))],
            &["sinks.planning.batch_size: must be > 0"],
        ),
        (
            &[(&["sinks", "planning", "product_wait"], Some("0s"))],
            &["sinks.planning.product_wait: must be > 0"],
        ),
        (
            &[(&["sinks", "planning", "fetch_wait"], Some("0s"))],
            &["sinks.planning.fetch_wait: must be > 0"],
        ),
        (
            &[(&["sinks", "planning", "max_waiting"], Some("-1"))],
            &["sinks.planning.max_waiting: must be >= 0"],
        ),
    ];
    let mut failures = Vec::new();
    for (changes, expected) in cases {
        let mut got = problems(changes);
        got.sort();
        let mut want: Vec<String> = expected.iter().map(ToString::to_string).collect();
        want.sort();
        if got != want {
            failures.push(format!(
                "after {changes:?}\n  expected {want:#?}\n  got      {got:#?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn environment_references_are_read_and_missing_ones_named_by_line() {
    let text = "app_id: ${ERPSTREAM_TEST_SURELY_UNSET}\n";
    let errors = Topology::parse(text).expect_err("unset variable");
    assert_eq!(
        errors.0[0].to_string(),
        "line 1: environment variable ERPSTREAM_TEST_SURELY_UNSET is not set (write ${ERPSTREAM_TEST_SURELY_UNSET:-default} for a default)"
    );
    let errors = Topology::parse("app_id: x\nkafka: ${OPEN").expect_err("unclosed");
    assert_eq!(errors.0[0].to_string(), "line 2: has an unclosed ${");
    let errors = Topology::parse("app_id: [").expect_err("not YAML");
    assert!(
        errors.0[0].rule.starts_with("is not valid YAML"),
        "{:?}",
        errors.0
    );
    let errors = Topology::parse("- a").expect_err("not a mapping");
    assert_eq!(
        errors.0[0].to_string(),
        "(root): must be a mapping of sections"
    );
}

#[test]
fn the_registry_knows_every_type_once_in_its_section() {
    let mut names: Vec<&str> = COMPONENTS.iter().map(|t| t.name).collect();
    names.extend(PROCESSORS.iter().map(|t| t.name));
    let count = names.len();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), count, "a type name is registered twice");
    let topology = Topology::parse(BASE).expect("valid");
    for (id, component) in topology.components() {
        let registered = COMPONENTS
            .iter()
            .find(|t| t.name == component.type_name())
            .expect("registered");
        let section = if topology.sources.contains_key(id) {
            "sources"
        } else {
            "sinks"
        };
        assert_eq!(registered.kind.section(), section, "{id}");
    }
    // Every registered type appears in the base topology, so every rule above covers it.
    let used: Vec<&str> = topology
        .components()
        .map(|(_, c)| c.type_name())
        .chain(topology.processors.values().map(|p| p.type_name()))
        .collect();
    for name in COMPONENTS
        .iter()
        .map(|t| t.name)
        .chain(PROCESSORS.iter().map(|t| t.name))
    {
        assert!(used.contains(&name), "{name} is not in the base topology");
    }
}

#[test]
fn every_topic_a_component_needs_is_created_with_its_partitions() {
    let topology = Topology::parse(BASE).expect("valid");
    let specs = crate::runtime::topic_specs(&topology);
    let spec = |name: &str| {
        specs
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("{name} is not created: {specs:#?}"))
    };
    // Declared, dead-letter (sinks', mapped sources', chains'), changelogs (guards, state).
    assert!(spec("inventory.available").compacted);
    assert_eq!(spec("sales.order.dlq").partitions, 1);
    assert_eq!(spec("inventory.change.dlq").partitions, 3);
    assert_eq!(spec("inventory.reservation.dlq").partitions, 3);
    assert_eq!(spec("demand.actual.dlq").partitions, 3);
    let guard = spec("unit.storefront.inventory.available.changelog");
    assert!(guard.compacted);
    assert_eq!(guard.partitions, 3);
    assert!(spec("unit.storefront.catalog.update.changelog").compacted);
    assert!(spec("unit.dedupe.changelog").compacted);
    assert!(spec("unit.inventory.changelog").compacted);
    let mut names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    let count = names.len();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), count, "a topic is listed twice");
}

/// Every topology snippet in README.md validates, merged into the default topology (the
/// README shows sections, not whole files).
#[test]
fn every_topology_snippet_in_the_readme_is_valid() {
    let readme = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"));
    let default = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../topology.yaml"));
    let default = interpolated(default);
    let snippets: Vec<&str> = readme
        .split("```yaml\n")
        .skip(1)
        .filter_map(|rest| rest.split("\n```").next())
        .collect();
    assert!(!snippets.is_empty(), "the README shows no topology");
    for snippet in snippets {
        let snippet_value: Value = serde_yaml_ng::from_str(&interpolated(snippet))
            .unwrap_or_else(|e| panic!("README snippet is not valid YAML: {e}\n{snippet}"));
        let mut root: Value = serde_yaml_ng::from_str(&default).expect("default topology");
        merge(&mut root, snippet_value);
        let text = serde_yaml_ng::to_string(&root).expect("serializes");
        if let Err(errors) = Topology::parse(&text) {
            panic!("README snippet does not validate: {errors}\n{snippet}");
        }
    }
}

/// `${NAME:-default}` → `default`, `${NAME}` → a placeholder URL: what a reader's
/// environment would give.
fn interpolated(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("closed") + start;
        let expr = &rest[start + 2..end];
        out.push_str(match expr.split_once(":-") {
            Some((_, default)) => default,
            None => "postgres://postgres@127.0.0.1:55432/erpstream",
        });
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Adds `snippet`'s entries to `root`, section by section.
fn merge(root: &mut Value, snippet: Value) {
    let (Some(root), Value::Mapping(snippet)) = (root.as_mapping_mut(), snippet) else {
        panic!("a topology is a mapping");
    };
    for (section, entries) in snippet {
        match (root.get_mut(&section), entries) {
            (Some(Value::Mapping(existing)), Value::Mapping(entries)) => existing.extend(entries),
            (_, entries) => {
                root.insert(section, entries);
            }
        }
    }
}
