//! The checks at the end of a chaos run, each a count that must be 0 (the DLQ is listed):
//! - `accepted_webhooks_never_delivered`: a probe webhook answered 202 whose sku the
//!   storefront never received with its quantity, or an ERP sku whose last figure (answered
//!   202) the storefront does not show;
//! - `older_version_delivered`: a storefront delivery whose version is below one delivered
//!   before it for that sku and location;
//! - `available_above_erp_minus_holds`: a delivery of an ERP sku whose available exceeds
//!   what the pipeline could have known: the largest, over the ERP's figures sent before the
//!   delivery arrived, of that figure minus the holds accepted before it was sent that it did
//!   not include (a stale figure is never a candidate: applying one is the bug);
//! - `orders_written_back_twice` / `orders_never_written_back`: storefront documents
//!   accepted with 202 for which the ERP created two documents, or none;
//! - `planning_rows_not_newest`: a planning inventory or demand-actuals row missing or not
//!   holding the newest figure sent for its key;
//! - `reconcile_drift`: what `erpstream reconcile` finds between the ERP's picture, the
//!   state, the storefront's view and the planning database.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use serde_json::{Value, json};

use super::load::{LOCATION, Ledger, PLANNING_LOCATION};
use super::world::{Delivery, FigureKind, Model};

/// Every key's expected final figure: on hand, which with every hold ended is also what
/// the storefront must show.
pub type Expected = BTreeMap<(String, String), i64>;

/// The expected final figures: the ERP's stock, the probes, the `bin` table (`cdc`), the
/// polled `Bin`s and the planning sync's last accepted figures.
pub fn expected(model: &Model, ledger: &Ledger, cdc: &HashMap<String, i64>) -> Expected {
    let mut expected = Expected::new();
    let mut put = |sku: &str, location: &str, quantity: i64| {
        expected.insert((sku.to_string(), location.to_string()), quantity);
    };
    for (sku, quantity) in &model.stock {
        put(sku, LOCATION, *quantity);
    }
    for probe in ledger.probes.iter().filter(|p| p.accepted.is_some()) {
        put(&probe.sku, LOCATION, probe.quantity);
    }
    for (sku, quantity) in cdc.iter().chain(&ledger.erpnext) {
        put(sku, LOCATION, *quantity);
    }
    for (sku, quantity) in &ledger.planning {
        put(sku, PLANNING_LOCATION, *quantity);
    }
    expected
}

/// What the storefront shows now: the last delivery it took per key.
pub fn storefront_view(deliveries: &[Delivery]) -> HashMap<(String, String), f64> {
    deliveries
        .iter()
        .filter(|d| d.taken() && d.event_type == "inventory.change")
        .filter_map(|d| Some(((d.sku.clone(), d.location.clone()), d.available?)))
        .collect()
}

/// Keys whose storefront figure is not the expected available (on hand, or 0 when the ERP
/// sold more than it had; missing keys included unless that is 0).
pub fn storefront_differences(expected: &Expected, deliveries: &[Delivery]) -> Vec<Value> {
    let view = storefront_view(deliveries);
    expected
        .iter()
        .map(|(key, quantity)| (key, (*quantity).max(0)))
        .filter(|(key, available)| match view.get(*key) {
            Some(shown) => (*shown - *available as f64).abs() > 1e-9,
            None => *available != 0,
        })
        .map(|((sku, location), available)| {
            json!({"sku": sku, "location": location, "expected": available,
                   "shown": view.get(&(sku.clone(), location.clone()))})
        })
        .collect()
}

/// Probes answered 202 that never arrived with their quantity; and their latencies (ms,
/// scheduled send → first arrival) with when they were sent.
pub fn probes(ledger: &Ledger, deliveries: &[Delivery]) -> (Vec<Value>, Vec<(Instant, f64)>) {
    let mut first: HashMap<&str, (Instant, Option<f64>)> = HashMap::new();
    for d in deliveries
        .iter()
        .filter(|d| d.taken() && d.event_type == "inventory.change")
    {
        first
            .entry(d.sku.as_str())
            .or_insert((d.arrived, d.available));
    }
    let mut lost = Vec::new();
    let mut latencies = Vec::new();
    for probe in ledger.probes.iter().filter(|p| p.accepted.is_some()) {
        match first.get(probe.sku.as_str()) {
            Some((arrived, Some(shown))) if (*shown - probe.quantity as f64).abs() < 1e-9 => {
                latencies.push((
                    probe.scheduled,
                    arrived
                        .saturating_duration_since(probe.scheduled)
                        .as_secs_f64()
                        * 1000.0,
                ));
            }
            other => lost.push(json!({"sku": probe.sku, "quantity": probe.quantity,
                                      "shown": other.and_then(|(_, q)| *q)})),
        }
    }
    (lost, latencies)
}

/// Deliveries whose version is below one delivered before for the same key; and how many
/// repeated the last version delivered (at-least-once after a crash: allowed, counted).
pub fn versions(deliveries: &[Delivery]) -> (Vec<Value>, u64) {
    let mut newest: HashMap<(&str, &str), i64> = HashMap::new();
    let mut older = Vec::new();
    let mut repeats = 0;
    for d in deliveries
        .iter()
        .filter(|d| d.taken() && d.event_type == "inventory.change")
    {
        let Some(version) = d.version else { continue };
        let key = (d.sku.as_str(), d.location.as_str());
        match newest.get(&key) {
            Some(seen) if version < *seen => older.push(
                json!({"sku": d.sku, "location": d.location, "version": version, "after": seen}),
            ),
            Some(seen) if version == *seen => repeats += 1,
            _ => {
                newest.insert(key, version);
            }
        }
    }
    (older, repeats)
}

/// Deliveries of the ERP's skus whose available exceeds the bound described in the module
/// documentation, each with the figure that gave the bound and the holds it counted.
pub fn oversold(model: &Model, deliveries: &[Delivery]) -> Vec<Value> {
    struct Candidate<'a> {
        sent: Instant,
        bound: i64,
        figure: &'a super::world::Figure,
        held: Vec<&'a str>,
    }
    let mut documents: HashMap<&str, Vec<&super::world::Document>> = HashMap::new();
    for d in &model.documents {
        documents.entry(d.sku.as_str()).or_default().push(d);
    }
    // Per sku, every current figure by first send, each carrying the largest bound of any
    // figure sent by then.
    let mut candidates: HashMap<&str, Vec<Candidate>> = HashMap::new();
    for figure in &model.figures {
        let (FigureKind::Current, Some(sent)) = (figure.kind, figure.first_sent) else {
            continue;
        };
        let held: Vec<&super::world::Document> = documents
            .get(figure.sku.as_str())
            .into_iter()
            .flatten()
            .filter(|d| d.accepted.is_some_and(|a| a <= sent))
            .filter(|d| d.applied_erp_time.is_none_or(|t| t > figure.erp_time))
            .copied()
            .collect();
        let bound = (figure.quantity - held.iter().map(|d| d.quantity).sum::<i64>()).max(0);
        candidates
            .entry(figure.sku.as_str())
            .or_default()
            .push(Candidate {
                sent,
                bound,
                figure,
                held: held.iter().map(|d| d.reference.as_str()).collect(),
            });
    }
    let mut best: HashMap<&str, Vec<(Instant, usize)>> = HashMap::new();
    for (sku, list) in candidates.iter_mut() {
        list.sort_by_key(|c| c.sent);
        let mut at = 0;
        best.insert(
            sku,
            (0..list.len())
                .map(|i| {
                    if list[i].bound > list[at].bound {
                        at = i;
                    }
                    (list[i].sent, at)
                })
                .collect(),
        );
    }
    deliveries
        .iter()
        .filter(|d| d.taken() && d.event_type == "inventory.change")
        .filter_map(|d| {
            let list = best.get(d.sku.as_str())?;
            let available = d.available?;
            let sent_before = list.partition_point(|(sent, _)| *sent <= d.arrived);
            let from =
                (sent_before > 0).then(|| &candidates[d.sku.as_str()][list[sent_before - 1].1]);
            let bound = from.map_or(0, |c| c.bound);
            (available > bound as f64 + 1e-9).then(|| {
                json!({"sku": d.sku, "available": available, "bound": bound, "version": d.version,
                       "from_figure": from.map(|c| json!({"quantity": c.figure.quantity,
                           "erp_time": c.figure.erp_time, "held": c.held}))})
            })
        })
        .collect()
}

/// Documents the storefront API accepted that the ERP created twice, or never.
pub fn write_backs(model: &Model) -> (Vec<Value>, Vec<Value>, u64) {
    let mut twice = Vec::new();
    let mut never = Vec::new();
    let mut absorbed = 0;
    for d in model.documents.iter().filter(|d| d.accepted.is_some()) {
        match d.created {
            0 => never.push(json!({"reference": d.reference, "path": d.path})),
            1 => {}
            n => twice.push(json!({"reference": d.reference, "path": d.path, "created": n})),
        }
        absorbed += u64::from(d.erp_answers.saturating_sub(d.created));
    }
    (twice, never, absorbed)
}

/// Planning rows missing or not holding the newest figure: inventory against `expected`,
/// demand actuals against the last accepted batch.
pub async fn planning(
    db: &tokio_postgres::Client,
    expected: &Expected,
    demand: &HashMap<String, i64>,
) -> anyhow::Result<Vec<Value>> {
    let mut rows: HashMap<(String, String), String> = HashMap::new();
    for row in db
        .query(
            "SELECT sku, location, on_hand_qty::text FROM planning.inventory",
            &[],
        )
        .await?
    {
        rows.insert((row.get(0), row.get(1)), row.get(2));
    }
    let mut wrong = Vec::new();
    for ((sku, location), quantity) in expected {
        let stored = rows.get(&(sku.clone(), location.clone()));
        let equal = stored
            .and_then(|s| s.parse::<f64>().ok())
            .is_some_and(|s| (s - *quantity as f64).abs() < 1e-9);
        if !equal {
            wrong.push(
                json!({"table": "inventory", "sku": sku, "location": location,
                              "expected": quantity, "stored": stored}),
            );
        }
    }
    let mut actuals: HashMap<String, String> = HashMap::new();
    for row in db
        .query(
            "SELECT sku, actual_qty::text FROM planning.demand_actuals \
             WHERE period = '2026-11-01' AND region = 'NA' AND channel = 'Direct'",
            &[],
        )
        .await?
    {
        actuals.insert(row.get(0), row.get(1));
    }
    for (sku, quantity) in demand {
        let stored = actuals.get(sku);
        if !stored
            .and_then(|s| s.parse::<f64>().ok())
            .is_some_and(|s| (s - *quantity as f64).abs() < 1e-9)
        {
            wrong.push(json!({"table": "demand_actuals", "sku": sku,
                              "expected": quantity, "stored": stored}));
        }
    }
    Ok(wrong)
}

/// The `bin` table as the ERP database holds it at the end.
pub async fn bin_table(db: &tokio_postgres::Client) -> anyhow::Result<HashMap<String, i64>> {
    Ok(db
        .query(
            "SELECT item_code, actual_qty::bigint FROM public.bin WHERE warehouse = $1",
            &[&LOCATION],
        )
        .await?
        .into_iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect())
}

/// The `p`-quantile of sorted `values`.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    (!values.is_empty())
        .then(|| values[((values.len() as f64 * p).ceil() as usize).clamp(1, values.len()) - 1])
}
