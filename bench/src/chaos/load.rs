//! The mixed load of a chaos run, and what the checks need to know about each event:
//! - signed ERP webhooks: the item master (`catalog.update`) of every sku, probes (a sku
//!   of their own each, its item first, so each must be delivered with exactly its
//!   quantity; the latency is measured on them) and the stock figures of the
//!   ERP's skus (restocks, and the figure after every write-back), 10% of them sent again
//!   byte for byte and 5% followed by a stale figure (an older ERP time, a larger quantity);
//! - storefront orders (each sent twice) and negative adjustments on the ERP's skus, which
//!   hold stock until the ERP reflects them;
//! - `pg_cdc`: updates of the ERP database's `bin` table;
//! - `rest_poll`: `Bin` changes on the test ERPNext server;
//! - planning sync batches (inventory and demand actuals, after the products).
//!
//! Senders behave like the real clients: what is refused with a 5xx or not answered (a
//! replica down) is sent again, to another replica, until it is answered.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use erpstream_connectors::signing::sign_hex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::world::Erp;

/// Where every store location of the run is.
pub const LOCATION: &str = "WH-TECH-01";
/// The planning sync's location.
pub const PLANNING_LOCATION: &str = "PLAN-WH";

/// Secrets and tokens the senders use.
pub struct Credentials {
    pub erp_secret: String,
    pub storefront_token: String,
    pub planning_token: String,
}

/// Events per second of each kind, from the total rate.
#[derive(Clone, Copy)]
struct Rates {
    probes: f64,
    restocks: f64,
    orders: f64,
    adjustments: f64,
    cdc: f64,
    erpnext: f64,
    planning_batches: f64,
    demand_batches: f64,
}

impl Rates {
    /// About `total` events per second, counting every request and row change (repeats,
    /// stale figures, the second send of an order and the ERP's own figures included).
    fn of(total: f64) -> Self {
        let k = total / 180.0;
        Self {
            // Each with its item's catalog webhook first.
            probes: 30.0 * k,
            restocks: 25.0 * k,
            orders: 10.0 * k,
            adjustments: 3.0 * k,
            cdc: 30.0 * k,
            erpnext: 10.0 * k,
            // 20 items each.
            planning_batches: 0.5 * k,
            // 10 items each.
            demand_batches: 0.2 * k,
        }
    }
}

/// A probe webhook: its own sku, one figure.
#[derive(Clone, Debug)]
pub struct Probe {
    pub sku: String,
    pub quantity: i64,
    pub scheduled: Instant,
    pub accepted: Option<Instant>,
}

/// What the load sent and what the checks compare against.
#[derive(Default)]
pub struct Ledger {
    pub probes: Vec<Probe>,
    /// Requests and row changes made, by kind (first sends only).
    pub sent: HashMap<&'static str, u64>,
    /// Answers other than 2xx that were not worth sending again, by kind and status.
    pub refused: HashMap<String, u64>,
    /// Orders whose second send was not answered as a replay of the first.
    pub repeats_not_replayed: u64,
    /// The newest figure of each polled `Bin` (sku → quantity).
    pub erpnext: HashMap<String, i64>,
    /// The newest accepted planning inventory figure per sku.
    pub planning: HashMap<String, i64>,
    /// The newest accepted demand actual per sku (period and region fixed).
    pub demand: HashMap<String, i64>,
}

/// The load generators of a run.
pub struct Load {
    pub client: reqwest::Client,
    pub urls: Vec<String>,
    pub credentials: Credentials,
    pub erp: Arc<Erp>,
    pub erpnext: erpstream_e2e::erpnext::FakeErp,
    pub erp_database: String,
    pub ledger: Mutex<Ledger>,
    pub seed: u64,
    /// The ERP's skus (stock figures, orders, adjustments).
    pub skus: Vec<String>,
    pub cdc_rows: usize,
    pub polled_bins: usize,
    pub planning_skus: usize,
    /// Set when the load's time is up; senders still retrying finish what they started.
    pub stopping: AtomicBool,
    counter: AtomicU64,
}

/// How a request ended.
enum Answer {
    Taken(reqwest::StatusCode, Value, bool),
    Refused(reqwest::StatusCode),
    GaveUp,
}

impl Load {
    pub fn new(
        client: reqwest::Client,
        urls: Vec<String>,
        credentials: Credentials,
        erp: Arc<Erp>,
        erpnext: erpstream_e2e::erpnext::FakeErp,
        erp_database: String,
        seed: u64,
    ) -> Self {
        Self {
            client,
            urls,
            credentials,
            erp,
            erpnext,
            erp_database,
            ledger: Mutex::new(Ledger::default()),
            seed,
            skus: (0..60).map(|i| format!("ERP-{seed}-{i:03}")).collect(),
            cdc_rows: 200,
            polled_bins: 50,
            planning_skus: 100,
            stopping: AtomicBool::new(false),
            counter: AtomicU64::new(0),
        }
    }

    pub fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count(&self, kind: &'static str, n: u64) {
        *self.ledger().sent.entry(kind).or_default() += n;
    }

    fn refused(&self, kind: &str, status: reqwest::StatusCode) {
        *self
            .ledger()
            .refused
            .entry(format!("{kind} {}", status.as_u16()))
            .or_default() += 1;
    }

    pub fn cdc_sku(&self, i: usize) -> String {
        format!("CDC-{}-{i:03}", self.seed)
    }

    pub fn polled_sku(&self, i: usize) -> String {
        format!("POLL-{}-{i:03}", self.seed)
    }

    pub fn planning_sku(&self, i: usize) -> String {
        format!("PLAN-{}-{i:03}", self.seed)
    }

    /// Sends a request built by `build` (given a replica's base URL) until it is answered
    /// with anything but a 5xx, to the replicas in turn, for at most `patience`.
    async fn send(
        &self,
        patience: Duration,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Answer {
        let until = Instant::now() + patience;
        let mut backoff = Duration::from_millis(200);
        let first = self.counter.fetch_add(1, Ordering::Relaxed) as usize;
        for attempt in 0.. {
            let url = &self.urls[(first + attempt) % self.urls.len()];
            if let Ok(response) = build(url).send().await {
                let status = response.status();
                let replayed = response.headers().contains_key("idempotent-replayed");
                if status.is_success() {
                    let body = response.json().await.unwrap_or(Value::Null);
                    return Answer::Taken(status, body, replayed);
                }
                if !status.is_server_error() && status != reqwest::StatusCode::TOO_MANY_REQUESTS {
                    return Answer::Refused(status);
                }
            }
            if Instant::now() >= until {
                break;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
        Answer::GaveUp
    }

    /// Sends figure `index` of the ERP model until it is accepted.
    pub async fn send_figure(self: &Arc<Self>, index: usize) {
        let body = {
            let mut model = self.erp.model();
            let figure = &mut model.figures[index];
            figure.first_sent.get_or_insert_with(Instant::now);
            figure.body.clone()
        };
        self.count("webhooks", 1);
        let answer = self.post_webhook(&body).await;
        match answer {
            Answer::Taken(..) => {
                let mut model = self.erp.model();
                model.figures[index]
                    .accepted
                    .get_or_insert_with(Instant::now);
            }
            Answer::Refused(status) => self.refused("webhook", status),
            Answer::GaveUp => {}
        }
    }

    /// The ERP's item master for `sku` (a `catalog.update` webhook), until accepted: the
    /// planning database keeps stock only for products it knows.
    async fn introduce_item(&self, sku: &str) -> bool {
        let body = json!({"event_type": "catalog.update",
            "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "data": {"group_id": sku, "group_name": format!("Item {sku}"),
                     "category_path": ["Chaos"], "is_active": true,
                     "variants": [{"sku": sku, "variant_title": "Standard", "selling_price": 10.0}]}})
        .to_string()
        .into_bytes();
        self.count("catalog webhooks", 1);
        match self.post_webhook(&body).await {
            Answer::Taken(..) => true,
            Answer::Refused(status) => {
                self.refused("catalog webhook", status);
                false
            }
            Answer::GaveUp => false,
        }
    }

    async fn post_webhook(&self, body: &[u8]) -> Answer {
        let signature = sign_hex(self.credentials.erp_secret.as_bytes(), body);
        self.send(Duration::from_secs(600), |url| {
            self.client
                .post(format!("{url}/webhooks/erp"))
                .header("content-type", "application/json")
                .header("x-signature", &signature)
                .body(body.to_vec())
        })
        .await
    }

    /// Sends the ERP's figures as they are reported (the webhook the ERP fires on every
    /// stock change), until the channel closes.
    pub async fn figures(self: Arc<Self>, mut reported: mpsc::UnboundedReceiver<usize>) {
        let mut sends = tokio::task::JoinSet::new();
        let mut rng = StdRng::seed_from_u64(self.seed ^ 0xF16);
        while let Some(index) = reported.recv().await {
            let load = self.clone();
            let repeat = rng.random_bool(0.10);
            let stale = rng.random_bool(0.05);
            let stale_quantity = rng.random_range(100..1000);
            sends.spawn(async move {
                load.send_figure(index).await;
                if repeat {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let body = load.erp.model().figures[index].body.clone();
                    load.count("webhook repeats", 1);
                    let _ = load.post_webhook(&body).await;
                }
                let accepted = load.erp.model().figures[index].accepted.is_some();
                if stale && accepted {
                    let older =
                        load.erp
                            .model()
                            .stale(index, LOCATION, stale_quantity, 1 + stale_quantity);
                    load.count("stale webhooks", 1);
                    load.send_figure(older).await;
                }
            });
            while sends.try_join_next().is_some() {}
        }
        sends.join_all().await;
    }

    /// Ticks at `rate` per second until the load stops, spawning `each(n)` on every tick.
    async fn at_rate<F, Fut>(self: &Arc<Self>, rate: f64, each: F)
    where
        F: Fn(Arc<Self>, u64) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        if rate <= 0.0 {
            return;
        }
        let start = Instant::now();
        let mut sends = tokio::task::JoinSet::new();
        for n in 0.. {
            let at = start + Duration::from_secs_f64(n as f64 / rate);
            tokio::time::sleep_until(at.into()).await;
            if self.stopping.load(Ordering::SeqCst) {
                break;
            }
            sends.spawn(each(self.clone(), n));
            while sends.try_join_next().is_some() {}
        }
        sends.join_all().await;
    }

    /// Every generator, until `stopping` is set; returns when all they sent is answered.
    pub async fn run(self: Arc<Self>, total_rate: f64) {
        let rates = Rates::of(total_rate);
        let seed = self.seed;
        let probes = self.at_rate(rates.probes, move |load, n| async move {
            let mut rng = StdRng::seed_from_u64(seed ^ n ^ 0x9E0B);
            let sku = format!("PRB-{seed}-{n:07}");
            let quantity = rng.random_range(1..500);
            if !load.introduce_item(&sku).await {
                return;
            }
            let at = {
                let mut ledger = load.ledger();
                ledger.probes.push(Probe {
                    sku: sku.clone(),
                    quantity,
                    scheduled: Instant::now(),
                    accepted: None,
                });
                ledger.probes.len() - 1
            };
            let body = json!({"event_type": "inventory.change",
                "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                "data": {"sku": sku, "location_code": LOCATION, "new_quantity": quantity,
                         "change_reason": "PROBE"}})
            .to_string()
            .into_bytes();
            load.count("webhooks", 1);
            match load.post_webhook(&body).await {
                Answer::Taken(..) => {
                    load.ledger().probes[at].accepted = Some(Instant::now());
                    if rng.random_bool(0.10) {
                        load.count("webhook repeats", 1);
                        let _ = load.post_webhook(&body).await;
                    }
                }
                Answer::Refused(status) => load.refused("probe", status),
                Answer::GaveUp => {}
            }
        });
        let restocks = self.at_rate(rates.restocks, move |load, n| async move {
            let mut rng = StdRng::seed_from_u64(seed ^ n ^ 0x570C);
            let sku = load.skus[rng.random_range(0..load.skus.len())].clone();
            load.erp.change_stock(&sku, rng.random_range(0..=2));
        });
        let orders = self.at_rate(rates.orders, move |load, n| async move {
            let mut rng = StdRng::seed_from_u64(seed ^ n ^ 0x0D0E);
            let sku = load.skus[rng.random_range(0..load.skus.len())].clone();
            let reference = format!("ORD-{seed}-{n:06}");
            let quantity = rng.random_range(1..=2);
            let body = json!({"transaction_id": reference,
                "transaction_date": chrono::Utc::now().to_rfc3339(),
                "customer_details": {"name": "Chaos Customer", "tax_id": "GSTIN12345"},
                "line_items": [{"sku": sku, "quantity": quantity, "unit_price": 10.0,
                                "location_code": LOCATION}]});
            load.document(&reference, "api/sales/orders", &sku, quantity, &body)
                .await;
        });
        let adjustments = self.at_rate(rates.adjustments, move |load, n| async move {
            let mut rng = StdRng::seed_from_u64(seed ^ n ^ 0xAD1);
            let sku = load.skus[rng.random_range(0..load.skus.len())].clone();
            let reference = format!("ADJ-{seed}-{n:06}");
            let quantity = rng.random_range(1..=2);
            let body = json!({"reference_id": reference,
                "adjustments": [{"sku": sku, "quantity_change": -quantity,
                                 "location_code": LOCATION}]});
            load.document(&reference, "api/inventory/adjust", &sku, quantity, &body)
                .await;
        });
        let polled = self.at_rate(rates.erpnext, move |load, n| async move {
            let mut rng = StdRng::seed_from_u64(seed ^ n ^ 0xE1);
            let i = rng.random_range(0..load.polled_bins);
            let quantity = rng.random_range(0..800);
            let sku = load.polled_sku(i);
            load.erpnext.update(
                "Bin",
                &format!("BIN-{sku}"),
                json!({"actual_qty": quantity}),
            );
            load.ledger().erpnext.insert(sku, quantity);
            load.count("erpnext bin changes", 1);
        });
        tokio::join!(
            probes,
            restocks,
            orders,
            adjustments,
            polled,
            self.clone().cdc(rates.cdc),
            self.clone()
                .planning(rates.planning_batches, rates.demand_batches),
        );
    }

    /// Sends a storefront document twice (a storefront that retries): the second answer
    /// must be the first one replayed.
    async fn document(
        &self,
        reference: &str,
        path: &'static str,
        sku: &str,
        qty: i64,
        body: &Value,
    ) {
        {
            let mut model = self.erp.model();
            model.document(reference, path, sku, qty);
            if let Some(d) = model.document_mut(reference) {
                d.first_sent = Some(Instant::now());
            }
        }
        let kind = if path.ends_with("orders") {
            "orders"
        } else {
            "adjustments"
        };
        let endpoint = if path.ends_with("orders") {
            "api/sales/orders"
        } else {
            "api/inventory/adjust"
        };
        let post = || {
            self.send(Duration::from_secs(600), |url| {
                self.client
                    .post(format!("{url}/{endpoint}"))
                    .header("x-api-key", &self.credentials.storefront_token)
                    .json(body)
            })
        };
        self.count(kind, 1);
        match post().await {
            Answer::Taken(..) => {
                if let Some(d) = self.erp.model().document_mut(reference) {
                    d.accepted = Some(Instant::now());
                }
            }
            Answer::Refused(status) => {
                self.refused(kind, status);
                return;
            }
            Answer::GaveUp => return,
        }
        self.count(kind, 1);
        if let Answer::Taken(_, _, replayed) = post().await
            && !replayed
        {
            self.ledger().repeats_not_replayed += 1;
        }
    }

    /// Updates of the ERP database's `bin` rows, a few per transaction, through Postgres
    /// restarts (a transaction whose commit was cut off is left to what the database says:
    /// the checks read the table at the end).
    async fn cdc(self: Arc<Self>, rate: f64) {
        let mut rng = StdRng::seed_from_u64(self.seed ^ 0xCDC);
        let per_transaction = 3;
        let interval = Duration::from_secs_f64(per_transaction as f64 / rate.max(0.001));
        let mut client = None;
        let mut next = Instant::now();
        while !self.stopping.load(Ordering::SeqCst) {
            next += interval;
            tokio::time::sleep_until(next.into()).await;
            if client.is_none() {
                client = connect(&self.erp_database).await.ok();
            }
            let Some(db) = client.as_mut() else { continue };
            let updates: Vec<(String, i64)> = (0..per_transaction)
                .map(|_| {
                    (
                        self.cdc_sku(rng.random_range(0..self.cdc_rows)),
                        rng.random_range(0..900),
                    )
                })
                .collect();
            let written = async {
                let transaction = db.transaction().await?;
                for (sku, quantity) in &updates {
                    transaction
                        .execute(
                            "UPDATE public.bin SET actual_qty = $1::bigint::numeric, modified = now() \
                             WHERE item_code = $2 AND warehouse = $3",
                            &[quantity, sku, &LOCATION],
                        )
                        .await?;
                }
                transaction.commit().await
            }
            .await;
            match written {
                Ok(()) => self.count("erp table updates", updates.len() as u64),
                Err(_) => client = None,
            }
        }
    }

    /// Planning sync batches: inventory every `batches` per second and demand actuals every
    /// `demand` per second, one request at a time (each sent until answered, with its
    /// idempotency key).
    async fn planning(self: Arc<Self>, batches: f64, demand: f64) {
        let mut rng = StdRng::seed_from_u64(self.seed ^ 0x91A);
        let start = Instant::now();
        let (mut inventory_n, mut demand_n) = (0u64, 0u64);
        while !self.stopping.load(Ordering::SeqCst) {
            let elapsed = start.elapsed().as_secs_f64();
            if (inventory_n as f64) < elapsed * batches {
                let items = self.planning_items(&mut rng, 20, 5000);
                let body = json!({
                    "meta": {"source_system": "EpicorKinetic", "batch_id": format!("CHAOS-INV-{inventory_n}"),
                             "idempotency_key": format!("chaos-{}-inv-{inventory_n}", self.seed), "dry_run": false},
                    "items": items.iter().map(|(sku, q)| json!({"sku": sku, "location": PLANNING_LOCATION,
                        "on_hand_qty": q, "allocated_qty": 0, "in_transit_qty": 0})).collect::<Vec<_>>()});
                self.count("planning inventory items", items.len() as u64);
                if self.sync("inventory", &body).await {
                    self.ledger().planning.extend(items);
                }
                inventory_n += 1;
            } else if (demand_n as f64) < elapsed * demand {
                let items = self.planning_items(&mut rng, 10, 900);
                let body = json!({
                    "meta": {"source_system": "EpicorKinetic", "batch_id": format!("CHAOS-DA-{demand_n}"),
                             "idempotency_key": format!("chaos-{}-da-{demand_n}", self.seed), "dry_run": false},
                    "items": items.iter().map(|(sku, q)| json!({"sku": sku, "period": "2026-11-01",
                        "actual_qty": q, "region": "NA", "channel": "Direct"})).collect::<Vec<_>>()});
                self.count("planning demand items", items.len() as u64);
                if self.sync("demand-actuals", &body).await {
                    self.ledger().demand.extend(items);
                }
                demand_n += 1;
            } else {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// Up to `count` random planning skus (each once) with a quantity below `below`.
    fn planning_items(&self, rng: &mut StdRng, count: usize, below: i64) -> Vec<(String, i64)> {
        (0..count)
            .map(|_| {
                (
                    self.planning_sku(rng.random_range(0..self.planning_skus)),
                    rng.random_range(0..below),
                )
            })
            .collect::<HashMap<_, _>>()
            .into_iter()
            .collect()
    }

    /// One sync request until answered; whether every item was accepted.
    pub async fn sync(&self, endpoint: &str, body: &Value) -> bool {
        let answer = self
            .send(Duration::from_secs(600), |url| {
                self.client
                    .post(format!("{url}/api/v1/integrations/erp/{endpoint}/sync"))
                    .bearer_auth(&self.credentials.planning_token)
                    .json(body)
            })
            .await;
        match answer {
            Answer::Taken(_, reply, _) if reply["status"] == "accepted" => true,
            Answer::Taken(status, reply, _) => {
                eprintln!("[chaos] {endpoint} sync not accepted ({status}): {reply}");
                self.refused(endpoint, status);
                false
            }
            Answer::Refused(status) => {
                self.refused(endpoint, status);
                false
            }
            Answer::GaveUp => false,
        }
    }

    /// The world before the pipeline first starts: the ERP's skus with stock, the `bin` rows
    /// (taken by pg_cdc's snapshot), the polled `Bin` documents and the planning products.
    pub async fn prepare(self: &Arc<Self>) -> anyhow::Result<()> {
        let mut rng = StdRng::seed_from_u64(self.seed ^ 0x5EED);
        for sku in &self.skus {
            self.erp
                .model()
                .stock
                .insert(sku.clone(), rng.random_range(0..6));
        }
        let db = connect(&self.erp_database).await?;
        for i in 0..self.cdc_rows {
            db.execute(
                "INSERT INTO public.bin (item_code, warehouse, actual_qty) VALUES ($1, $2, $3::bigint::numeric)",
                &[&self.cdc_sku(i), &LOCATION, &rng.random_range(0i64..900)],
            )
            .await?;
        }
        let bins: Vec<Value> = (0..self.polled_bins)
            .map(|i| {
                let sku = self.polled_sku(i);
                let quantity = rng.random_range(0..800);
                self.ledger().erpnext.insert(sku.clone(), quantity);
                json!({"name": format!("BIN-{sku}"), "item_code": sku, "warehouse": LOCATION,
                       "actual_qty": quantity, "reserved_qty": 0})
            })
            .collect();
        self.erpnext.put("Bin", bins);
        Ok(())
    }

    /// After the pipeline is up: the planning products (the sync needs them known) and the
    /// first figure of every ERP sku.
    pub async fn introduce(self: &Arc<Self>) -> anyhow::Result<()> {
        let products = json!({
            "meta": {"source_system": "EpicorKinetic", "batch_id": "CHAOS-PROD",
                     "idempotency_key": format!("chaos-{}-products", self.seed), "dry_run": false},
            "items": (0..self.planning_skus).map(|i| json!({"sku": self.planning_sku(i),
                "name": format!("Planned item {i}"), "category_name": "Finished Goods",
                "product_family": "Chaos", "lead_time_days": 7})).collect::<Vec<_>>()});
        anyhow::ensure!(
            self.sync("products", &products).await,
            "the planning products were not accepted"
        );
        let items: Vec<String> = self
            .skus
            .iter()
            .cloned()
            .chain((0..self.cdc_rows).map(|i| self.cdc_sku(i)))
            .chain((0..self.polled_bins).map(|i| self.polled_sku(i)))
            .collect();
        for chunk in items.chunks(50) {
            let introduced =
                futures::future::join_all(chunk.iter().map(|s| self.introduce_item(s))).await;
            anyhow::ensure!(
                introduced.iter().all(|i| *i),
                "an item's catalog webhook was refused"
            );
        }
        self.final_figures().await;
        Ok(())
    }

    /// The ERP reports every sku's current figure and it is sent until accepted: the first
    /// figures, and after the load (every write-back in) the ones that confirm the last
    /// holds.
    pub async fn final_figures(self: &Arc<Self>) {
        let indexes: Vec<usize> = {
            let mut model = self.erp.model();
            self.skus
                .iter()
                .map(|s| model.report(s, LOCATION))
                .collect()
        };
        let sends = indexes.into_iter().map(|i| {
            let load = self.clone();
            async move { load.send_figure(i).await }
        });
        futures::future::join_all(sends).await;
    }
}

/// A Postgres connection (its driver task spawned).
pub async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|e| anyhow::anyhow!("connecting to {url}: {e}"))?;
    tokio::spawn(connection);
    Ok(client)
}
