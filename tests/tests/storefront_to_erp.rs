//! Storefront → ERP: orders and adjustments through the API, oversell-safe availability,
//! ERP write-back and the snapshot endpoint, against the real local stack.

use std::time::Duration;

use erpstream_e2e::erp::Erp;
use erpstream_e2e::{
    API_TOKEN, ERP_SECRET, Pipeline, Stack, Storefront, TopologyOptions, inventory_body,
    read_topic, rfc3339_now, unique, wait_for,
};
use erpstream_schemas::{Codec, InventoryAvailable};
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(60);

async fn started(options: TopologyOptions) -> Pipeline {
    let mut pipeline = Pipeline::configure(&options);
    pipeline.start().await;
    pipeline
}

fn order(transaction_id: &str, sku: &str, quantity: i64) -> Value {
    json!({
        "transaction_id": transaction_id,
        "transaction_date": rfc3339_now(0),
        "customer_details": {"name": "Jane Doe", "tax_id": "GSTIN12345"},
        "line_items": [{"sku": sku, "quantity": quantity, "unit_price": 45000.00}]
    })
}

/// `(on_hand, reserved, available)` of `sku` at the default location, from the snapshot.
async fn figures(pipeline: &Pipeline, sku: &str) -> Option<(i64, i64, i64)> {
    let (status, body) = pipeline.snapshot("detail=true").await;
    assert_eq!(status, 200, "{body}");
    let item = body.as_array()?.iter().find(|i| i["sku"] == sku)?.clone();
    let location = item["locations"]
        .as_array()?
        .iter()
        .find(|l| l["location_code"] == erpstream_e2e::DEFAULT_LOCATION)?
        .clone();
    Some((
        location["on_hand"].as_i64()?,
        location["reserved"].as_i64()?,
        location["available"].as_i64()?,
    ))
}

async fn wait_figures(pipeline: &Pipeline, sku: &str, expected: (i64, i64, i64)) {
    let until = std::time::Instant::now() + LONG;
    loop {
        let now = figures(pipeline, sku).await;
        if now == Some(expected) {
            return;
        }
        assert!(
            std::time::Instant::now() < until,
            "{sku}: expected (on_hand, reserved, available) = {expected:?}, still {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn erp_stock(pipeline: &Pipeline, sku: &str, quantity: i64) {
    let body = inventory_body(
        sku,
        erpstream_e2e::DEFAULT_LOCATION,
        quantity,
        &rfc3339_now(0),
    );
    let (status, _, reply) = pipeline.post_webhook(&body, Some(ERP_SECRET)).await;
    assert_eq!(status, 202, "{reply}");
}

/// Available-to-sell values of `sku` as published on `inventory.available`, in order.
async fn published_available(pipeline: &Pipeline, sku: &str) -> Vec<i64> {
    let stack = Stack::from_env();
    let codec = Codec::new(&stack.registry).expect("codec");
    let mut out = Vec::new();
    for record in read_topic(&stack.brokers, &pipeline.topic("inventory.available")) {
        if record.key != sku {
            continue;
        }
        let event: InventoryAvailable = codec.decode(&record.payload).await.expect("decode");
        let available: i64 = event.locations[0]
            .available
            .normalize()
            .to_string()
            .parse()
            .expect("integer");
        out.push(available);
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_orders_never_oversell_and_the_erp_confirmation_releases_them_once() {
    let storefront = Storefront::start().await;
    let erp = Erp::start().await;
    let mut options = TopologyOptions::new(&storefront.url);
    options.erp = Some((erp.url.clone(), "generic"));
    options.max_attempts = 10_000;
    options.console = true;
    let pipeline = started(options).await;
    // The generic preset's connection test: the ERP answers and does not refuse the token.
    let outcome = pipeline.connector("erp_out", "test").await;
    assert_eq!(outcome["ok"], true, "{outcome}");
    let sku = unique("KIT-");
    erp_stock(&pipeline, &sku, 5).await;
    wait_for("storefront told 5", LONG, || {
        storefront
            .stock_of(&sku)
            .last()
            .filter(|d| d["new_quantity"] == 5)
            .cloned()
    })
    .await;

    // The ERP is down while two orders of 3 arrive at once.
    erp.fail_with(503);
    let (a, b) = (unique("ORD-A-"), unique("ORD-B-"));
    let (order_a, order_b) = (order(&a, &sku, 3), order(&b, &sku, 3));
    let (first, second) = tokio::join!(
        pipeline.post_api("/api/sales/orders", &order_a, Some(API_TOKEN)),
        pipeline.post_api("/api/sales/orders", &order_b, Some(API_TOKEN)),
    );
    assert_eq!(first.0, 202, "{}", first.2);
    assert_eq!(
        second.0, 202,
        "the API accepts; the storefront decides: {}",
        second.2
    );
    assert_eq!(first.2["reserved"][0]["quantity"], 3, "{}", first.2);

    wait_figures(&pipeline, &sku, (5, 6, 0)).await;
    assert_eq!(
        published_available(&pipeline, &sku).await,
        vec![5, 2, 0],
        "available goes 5 → 2 → 0 and never below"
    );
    wait_for("storefront told 0", LONG, || {
        storefront
            .stock_of(&sku)
            .last()
            .filter(|d| d["new_quantity"] == 0)
            .cloned()
    })
    .await;
    let told: Vec<i64> = storefront
        .stock_of(&sku)
        .iter()
        .filter_map(|d| d["new_quantity"].as_i64())
        .collect();
    assert!(
        told.windows(2).all(|w| w[0] >= w[1]) && told.iter().all(|q| [5, 2, 0].contains(q)),
        "the storefront is told only falling, real figures: {told:?}"
    );

    // The ERP comes back, but can take only the first of the two orders for now.
    let stack = Stack::from_env();
    let placed: Vec<String> = read_topic(&stack.brokers, &pipeline.topic("sales.order"))
        .into_iter()
        .map(|r| r.key)
        .filter(|k| *k == a || *k == b)
        .collect();
    assert_eq!(placed.len(), 2);
    let (a, b) = (placed[0].clone(), placed[1].clone());
    erp.fail_key(&b);
    erp.fail_with(0);
    // Its next stock figure includes the first order (5 - 3 = 2): that hold ends, the other
    // stays, so available = 2 - 3 → 0, not 2 - 6 and not 2.
    wait_for("ERP created the first order", LONG, || {
        erp.created().iter().find(|c| c.key == a).cloned()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    erp_stock(&pipeline, &sku, 2).await;
    wait_figures(&pipeline, &sku, (2, 3, 0)).await;

    // B gets through; the ERP then reports 2 - 3 + 10 received = 9: nothing is held any more.
    erp.heal_key(&b);
    wait_for("ERP created B", LONG, || {
        erp.created().iter().find(|c| c.key == b).cloned()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    erp_stock(&pipeline, &sku, 9).await;
    wait_figures(&pipeline, &sku, (9, 0, 9)).await;
    wait_for("storefront told 9", LONG, || {
        storefront
            .stock_of(&sku)
            .last()
            .filter(|d| d["new_quantity"] == 9)
            .cloned()
    })
    .await;
    let orders: Vec<String> = erp
        .created()
        .into_iter()
        .filter(|c| c.key == a || c.key == b)
        .map(|c| c.path)
        .collect();
    assert_eq!(
        orders,
        ["/api/sales/orders", "/api/sales/orders"],
        "each once"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replayed_order_and_an_older_erp_figure_change_nothing() {
    let storefront = Storefront::start().await;
    let pipeline = started(TopologyOptions::new(&storefront.url)).await;
    let sku = unique("REP-");
    erp_stock(&pipeline, &sku, 10).await;
    wait_figures(&pipeline, &sku, (10, 0, 10)).await;

    let id = unique("ORD-");
    let body = order(&id, &sku, 2);
    let (status, headers, first) = pipeline
        .post_api("/api/sales/orders", &body, Some(API_TOKEN))
        .await;
    assert_eq!(status, 202, "{first}");
    assert!(headers.get("idempotent-replayed").is_none());
    let (status, headers, again) = pipeline
        .post_api("/api/sales/orders", &body, Some(API_TOKEN))
        .await;
    assert_eq!(status, 202);
    assert_eq!(again, first, "a repeat gets the first answer");
    assert_eq!(
        headers
            .get("idempotent-replayed")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );
    let (status, _, conflict) = pipeline
        .post_api("/api/sales/orders", &order(&id, &sku, 5), Some(API_TOKEN))
        .await;
    assert_eq!(status, 409, "{conflict}");
    assert_eq!(conflict["field"], "transaction_id");
    wait_figures(&pipeline, &sku, (10, 2, 8)).await;

    let stack = Stack::from_env();
    let orders = read_topic(&stack.brokers, &pipeline.topic("sales.order"));
    assert_eq!(orders.iter().filter(|r| r.key == id).count(), 1);
    let holds = read_topic(&stack.brokers, &pipeline.topic("inventory.reservation"));
    assert_eq!(holds.iter().filter(|r| r.key == sku).count(), 1);

    // An ERP figure older than the one applied changes nothing.
    let old = inventory_body(
        &sku,
        erpstream_e2e::DEFAULT_LOCATION,
        50,
        "2020-01-01T00:00:00Z",
    );
    let (status, _, _) = pipeline.post_webhook(&old, Some(ERP_SECRET)).await;
    assert_eq!(status, 202);
    erp_stock(&pipeline, &format!("{sku}-marker"), 1).await;
    wait_figures(&pipeline, &format!("{sku}-marker"), (1, 0, 1)).await;
    wait_figures(&pipeline, &sku, (10, 2, 8)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_are_refused_with_status_and_field() {
    let storefront = Storefront::start().await;
    let pipeline = started(TopologyOptions::new(&storefront.url)).await;
    let good = order(&unique("ORD-"), "SKU-1", 1);
    let (status, headers, body) = pipeline.post_api("/api/sales/orders", &good, None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        headers
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer")
    );
    let (status, _, _) = pipeline
        .post_api("/api/sales/orders", &good, Some("wrong-token"))
        .await;
    assert_eq!(status, 401);

    let cases = [
        (json!({"transaction_id": "X"}), 400, "transaction_date"),
        (
            json!({"transaction_id": "X", "transaction_date": "2024-01-20T10:15:00Z",
                   "line_items": [{"sku": "A", "quantity": "lots", "unit_price": 1}]}),
            400,
            "line_items[0].quantity",
        ),
        (
            json!({"transaction_id": "X", "transaction_date": "yesterday",
                   "line_items": [{"sku": "A", "quantity": 1, "unit_price": 1}]}),
            422,
            "transaction_date",
        ),
        (
            json!({"transaction_id": "X", "transaction_date": "2024-01-20T10:15:00Z",
                   "line_items": [{"sku": "A", "quantity": 0, "unit_price": 1}]}),
            422,
            "line_items[0].quantity",
        ),
        (
            json!({"transaction_id": "X", "transaction_date": "2024-01-20T10:15:00Z",
                   "line_items": []}),
            422,
            "line_items",
        ),
    ];
    for (body, expected, field) in cases {
        let (status, _, reply) = pipeline
            .post_api("/api/sales/orders", &body, Some(API_TOKEN))
            .await;
        assert_eq!(status, expected, "{body} → {reply}");
        assert_eq!(reply["field"], field, "{body} → {reply}");
    }
    let (status, _, reply) = pipeline
        .post_api(
            "/api/inventory/adjust",
            &json!({"reference_id": "R", "adjustments": [{"sku": "A", "quantity_change": 0}]}),
            Some(API_TOKEN),
        )
        .await;
    assert_eq!(status, 422);
    assert_eq!(reply["field"], "adjustments[0].quantity_change");
    let stack = Stack::from_env();
    assert!(read_topic(&stack.brokers, &pipeline.topic("sales.order")).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn reservations_and_availability_survive_a_kill_and_restart() {
    let storefront = Storefront::start().await;
    let mut pipeline = started(TopologyOptions::new(&storefront.url)).await;
    let sku = unique("KILL-");
    erp_stock(&pipeline, &sku, 5).await;
    let (status, _, _) = pipeline
        .post_api(
            "/api/sales/orders",
            &order(&unique("O-"), &sku, 2),
            Some(API_TOKEN),
        )
        .await;
    assert_eq!(status, 202);
    let (status, _, _) = pipeline
        .post_api(
            "/api/inventory/adjust",
            &json!({"reference_id": unique("ADJ-"),
                    "adjustments": [{"sku": sku, "quantity_change": -1,
                                     "location_code": erpstream_e2e::DEFAULT_LOCATION}]}),
            Some(API_TOKEN),
        )
        .await;
    assert_eq!(status, 202);
    wait_figures(&pipeline, &sku, (5, 3, 2)).await;
    let (_, before) = pipeline.snapshot("detail=true").await;

    pipeline.kill();
    pipeline.start().await;
    wait_figures(&pipeline, &sku, (5, 3, 2)).await;
    let (_, after) = pipeline.snapshot("detail=true").await;
    assert_eq!(after, before, "the same state after restore");

    let (status, _, _) = pipeline
        .post_api(
            "/api/sales/orders",
            &order(&unique("O-"), &sku, 2),
            Some(API_TOKEN),
        )
        .await;
    assert_eq!(status, 202);
    wait_figures(&pipeline, &sku, (5, 5, 0)).await;
}

/// Holds and an ERP figure wait on the topics while no processor runs: holds of other skus,
/// then one of the sku, then the sku's figure. The consumer then fetches about 1 kB at a
/// time, so the figure comes from the broker before the hold whenever the hold's partition
/// has a backlog of other skus' holds. The figure must still be applied after every hold
/// acknowledged before it was sent: available never shows the held units.
#[tokio::test(flavor = "multi_thread")]
async fn holds_acknowledged_before_a_figure_are_applied_before_it_however_the_backlog_is_fetched() {
    let storefront = Storefront::start().await;
    let mut pipeline = Pipeline::configure(&TopologyOptions::new(&storefront.url));
    let mut door = pipeline.front_door();
    pipeline.set_kafka(
        "properties",
        r#"{ fetch.max.bytes: "1000", max.partition.fetch.bytes: "1000", message.max.bytes: "1000" }"#,
    );
    door.start().await;
    let sku = unique("FIRST-");
    let mut orders: Vec<(String, i64)> = (0..60).map(|i| (format!("{sku}-OTHER-{i}"), 1)).collect();
    orders.push((sku.clone(), 4));
    for (item, quantity) in &orders {
        let (status, _, reply) = door
            .post_api(
                "/api/sales/orders",
                &order(&unique("O-"), item, *quantity),
                Some(API_TOKEN),
            )
            .await;
        assert_eq!(status, 202, "{reply}");
    }
    erp_stock(&door, &sku, 100).await;
    door.terminate();

    pipeline.start().await;
    wait_figures(&pipeline, &sku, (100, 4, 96)).await;
    let delivered = wait_for("the storefront to get 96 available", LONG, || {
        let delivered = storefront.stock_of(&sku);
        (delivered.last()?["new_quantity"] == 96).then_some(delivered)
    })
    .await;
    let published = published_available(&pipeline, &sku).await;
    assert_eq!(published.last(), Some(&96), "{published:?}");
    assert!(
        published.iter().all(|available| *available <= 96),
        "available above 100 - 4 held was published: {published:?}"
    );
    assert!(
        delivered
            .iter()
            .all(|stock| stock["new_quantity"].as_i64().is_some_and(|a| a <= 96)),
        "the storefront saw more available than is there: {delivered:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_erp_outage_delays_write_back_but_every_order_arrives_once_in_order() {
    let storefront = Storefront::start().await;
    let erp = Erp::start().await;
    let mut options = TopologyOptions::new(&storefront.url);
    options.erp = Some((erp.url.clone(), "generic"));
    options.max_attempts = 10_000;
    let mut pipeline = started(options).await;
    let sku = unique("OUT-");
    erp_stock(&pipeline, &sku, 100).await;
    erp.fail_with(503);
    let ids: Vec<String> = (0..6).map(|i| unique(&format!("ORD-{i}-"))).collect();
    for (i, id) in ids.iter().enumerate() {
        let (status, _, reply) = pipeline
            .post_api("/api/sales/orders", &order(id, &sku, 1), Some(API_TOKEN))
            .await;
        assert_eq!(status, 202, "{reply}");
        if i == 2 {
            // A crash in the middle of the outage: the restarted sink retries from its
            // committed offset.
            pipeline.kill();
            pipeline.start().await;
        }
    }
    wait_for("the sink retrying against the failing ERP", LONG, || {
        (erp.requests().iter().filter(|(_, s)| *s == 503).count() >= 3).then_some(())
    })
    .await;
    assert!(erp.created().is_empty());
    wait_figures(&pipeline, &sku, (100, 6, 94)).await;

    erp.fail_with(0);
    let created = wait_for("every order in the ERP", LONG, || {
        let created = erp.created();
        (created.len() >= ids.len()).then_some(created)
    })
    .await;
    let keys: Vec<&str> = created.iter().map(|c| c.key.as_str()).collect();
    let expected: Vec<&str> = ids.iter().map(String::as_str).collect();
    assert_eq!(
        keys, expected,
        "each order once, in the order it was placed"
    );
    assert_eq!(created[0].body["line_items"][0]["sku"], sku.as_str());
    assert_eq!(created[0].body["line_items"][0]["unit_price"], 45000);
}

#[tokio::test(flavor = "multi_thread")]
async fn erpnext_preset_creates_one_sales_order_per_transaction() {
    let storefront = Storefront::start().await;
    let erp = Erp::start().await;
    let mut options = TopologyOptions::new(&storefront.url);
    options.erp = Some((erp.url.clone(), "erpnext"));
    options.console = true;
    let pipeline = started(options).await;
    // The console's connection test asks ERPNext who the token is, writing nothing.
    let outcome = pipeline.connector("erp_out", "test").await;
    assert_eq!(
        outcome,
        json!({"ok": true, "detail": "ERPNext accepted the credentials as erp-writer@example.com"})
    );
    let id = unique("WEB-");
    let (status, _, _) = pipeline
        .post_api(
            "/api/sales/orders",
            &order(&id, "DRONE-X1-PRO-KIT", 1),
            Some(API_TOKEN),
        )
        .await;
    assert_eq!(status, 202);
    let created = wait_for("Sales Order in ERPNext", LONG, || {
        erp.created().into_iter().find(|c| c.key == id)
    })
    .await;
    assert_eq!(created.path, "/api/resource/Sales Order");
    assert_eq!(created.body["items"][0]["item_code"], "DRONE-X1-PRO-KIT");
    assert_eq!(
        created.body["items"][0]["warehouse"],
        erpstream_e2e::DEFAULT_LOCATION
    );
    assert_eq!(created.body["customer"], "Jane Doe");
    assert_eq!(created.body["docstatus"], 1);
    assert!(
        erp.requests()
            .iter()
            .any(|(p, s)| p == "/api/resource/Sales Order" && *s == 200),
        "looked up by po_no with token auth first"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshot_filters_by_location_and_unconfirmed_holds_expire() {
    let storefront = Storefront::start().await;
    let mut options = TopologyOptions::new(&storefront.url);
    options.reservation_expiry = "3s";
    let pipeline = started(options).await;
    let sku = unique("SNAP-");
    erp_stock(&pipeline, &sku, 7).await;
    let other = inventory_body(&sku, "WH-OTHER", 4, &rfc3339_now(0));
    assert_eq!(pipeline.post_webhook(&other, Some(ERP_SECRET)).await.0, 202);
    let until = std::time::Instant::now() + LONG;
    let item = loop {
        let (_, all) = pipeline.snapshot("").await;
        if let Some(item) = all.as_array().and_then(|a| {
            a.iter()
                .find(|i| i["sku"] == sku.as_str() && i["qty"] == 11)
        }) {
            break item.clone();
        }
        assert!(
            std::time::Instant::now() < until,
            "snapshot never showed 11"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(item, json!({"sku": sku, "qty": 11}));
    let (_, one) = pipeline.snapshot("location=WH-OTHER").await;
    let item = one
        .as_array()
        .and_then(|a| a.iter().find(|i| i["sku"] == sku.as_str()))
        .cloned();
    assert_eq!(item, Some(json!({"sku": sku, "qty": 4})));
    let unauthorized = reqwest::get(format!("{}/api/inventory/snapshot", pipeline.url))
        .await
        .expect("get");
    assert_eq!(unauthorized.status(), 401);

    let (status, _, _) = pipeline
        .post_api(
            "/api/sales/orders",
            &order(&unique("EXP-"), &sku, 5),
            Some(API_TOKEN),
        )
        .await;
    assert_eq!(status, 202);
    wait_figures(&pipeline, &sku, (7, 5, 2)).await;
    // Nothing confirms or cancels it: the hold expires and the stock is sellable again.
    wait_figures(&pipeline, &sku, (7, 0, 7)).await;
    let metrics = pipeline.metrics().await;
    assert!(
        metrics.contains(r#"erpstream_reservations_expired_total{component_id="inventory"} 1"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_the_erp_cancels_gives_its_stock_back_and_is_not_written_back() {
    let storefront = Storefront::start().await;
    let erp = Erp::start().await;
    let mut options = TopologyOptions::new(&storefront.url);
    options.erp = Some((erp.url.clone(), "generic"));
    let pipeline = started(options).await;
    let sku = unique("CXL-");
    erp_stock(&pipeline, &sku, 4).await;
    let id = unique("ORD-");
    let (status, _, _) = pipeline
        .post_api("/api/sales/orders", &order(&id, &sku, 3), Some(API_TOKEN))
        .await;
    assert_eq!(status, 202);
    wait_figures(&pipeline, &sku, (4, 3, 1)).await;
    wait_for("order in the ERP", LONG, || {
        erp.created().into_iter().find(|c| c.key == id)
    })
    .await;

    let cancel = json!({
        "event_type": "sales.order",
        "timestamp": rfc3339_now(0),
        "data": {"transaction_id": id, "status": "cancelled",
                 "line_items": [{"sku": sku, "quantity": 3}]}
    })
    .to_string();
    let (status, _, reply) = pipeline
        .post_webhook(cancel.as_bytes(), Some(ERP_SECRET))
        .await;
    assert_eq!(status, 202, "{reply}");
    wait_figures(&pipeline, &sku, (4, 0, 4)).await;
    wait_for("storefront told 4 again", LONG, || {
        storefront
            .stock_of(&sku)
            .last()
            .filter(|d| d["new_quantity"] == 4)
            .cloned()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        erp.created().iter().filter(|c| c.key == id).count(),
        1,
        "the cancellation came from the ERP and is not sent back to it"
    );

    let wrong = json!({"event_type": "sales.order", "timestamp": rfc3339_now(0),
        "data": {"transaction_id": id, "status": "shipped", "line_items": [{"sku": sku}]}})
    .to_string();
    let (status, _, reply) = pipeline
        .post_webhook(wrong.as_bytes(), Some(ERP_SECRET))
        .await;
    assert_eq!(status, 400);
    assert_eq!(reply["field"], "data.status");
}
