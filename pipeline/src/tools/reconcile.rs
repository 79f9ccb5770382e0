//! `erpstream reconcile`: an external stock picture against erpstream's materialized state
//! (and, optionally, the planning database).
//!
//! The external picture is a CSV or JSON file or URL: the ERP's snapshot endpoint
//! (`[{"sku", "qty"}]`, compared per sku), an ERPNext `Bin` list or export (`item_code`,
//! `warehouse`, `actual_qty`, also inside `{"data": [...]}`), an OData result
//! (`{"value": [...]}`), or any rows with a sku, a location and a quantity column (names
//! listed in [`SKU`], [`LOCATION`], [`QUANTITY`]). erpstream's side is the snapshot API
//! with `?detail=true` (`on_hand` per location, and the partition, offset and ERP time of
//! the event that set it), read from the running pipeline or a saved file.
//!
//! With `storefront`, a picture of what the storefront shows (same formats) is compared
//! with erpstream's `available` (what the storefront sink delivers), so a storefront that
//! missed or mis-applied updates shows up too.
//!
//! A key present on one side only is `missing` (in the picture, not in erpstream) or
//! `extra` (the other way) unless its quantity there is zero: an ERP export leaves out empty
//! bins. Keys on both sides with unequal quantities are `differing`. With `repair`,
//! every difference becomes an absolute `inventory.change` event carrying the picture's
//! figure (0 for `extra`), `change_reason` `RECONCILE`, source `reconcile` and the header
//! `erpstream.repair`, stamped with the picture's time (`as_of`) so the inventory
//! processor's version guard ignores it where the ERP has reported a newer figure since.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use erpstream_connectors::kafka::{Publisher, RawRecord, TRACEPARENT_HEADER};
use erpstream_schemas::{EventKind, InventoryChange, Traceparent};
use rust_decimal::Decimal;
use serde::de::{DeserializeSeed, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::{Doing, Progress, ToolError, Tools, rfc3339};

/// Column names read as the sku.
pub const SKU: &[&str] = &["sku", "item_code", "part_num", "partnum", "item"];
/// Column names read as the location.
pub const LOCATION: &[&str] = &[
    "location",
    "location_code",
    "warehouse",
    "warehouse_code",
    "warehousecode",
];
/// Column names read as the quantity.
pub const QUANTITY: &[&str] = &[
    "qty",
    "quantity",
    "on_hand",
    "actual_qty",
    "new_quantity",
    "onhandqty",
    "on_hand_qty",
];

/// Header marking repair events with the run's id.
pub const REPAIR_HEADER: &str = erpstream_connectors::kafka::headers::REPAIR;

/// What to compare.
#[derive(Debug, Clone)]
pub struct ReconcileOptions {
    /// The external picture: a file or an `http(s)://` URL.
    pub against: String,
    /// Request headers for a URL (`Name: value`).
    pub headers: Vec<String>,
    /// erpstream's side: a snapshot URL or saved file (default: the topology's snapshot
    /// endpoint with `?detail=true`).
    pub state: Option<String>,
    /// Bearer token for the snapshot endpoint.
    pub state_token: Option<String>,
    /// Also compare the planning database at this URL.
    pub planning: Option<String>,
    /// Also compare the storefront's view (file or URL) with erpstream's `available`.
    pub storefront: Option<String>,
    /// When the picture was taken (epoch ms; default: fetch time for URLs, the file's
    /// modification time for files).
    pub as_of: Option<i64>,
    /// Publish correcting events.
    pub repair: bool,
    /// Where the inventory processor's input records live (for `last_event`).
    pub events_topic: String,
}

/// Key: sku and location (`""` when the picture is per sku).
type Key = (String, String);

/// The last event that set a figure in erpstream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LastEvent {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Its ERP time (RFC 3339).
    pub erp_time: String,
}

/// One difference.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Difference {
    /// Sku.
    pub sku: String,
    /// Location (absent when compared per sku).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// The picture's quantity (absent: `extra`).
    #[serde(with = "rust_decimal::serde::arbitrary_precision_option")]
    pub external: Option<Decimal>,
    /// The compared side's quantity (absent: `missing`).
    #[serde(with = "rust_decimal::serde::arbitrary_precision_option")]
    pub erpstream: Option<Decimal>,
    /// erpstream − external.
    #[serde(with = "rust_decimal::serde::arbitrary_precision")]
    pub difference: Decimal,
    /// The event that set erpstream's figure, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_event: Option<LastEvent>,
}

/// Counts of one comparison.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Counts {
    /// Keys in the picture.
    pub external: u64,
    /// Keys on the compared side.
    pub compared: u64,
    /// Keys with equal quantities (or zero on one side and absent on the other).
    pub matching: u64,
    /// In the picture, not on the compared side.
    pub missing: u64,
    /// On the compared side, not in the picture.
    pub extra: u64,
    /// On both, unequal.
    pub differing: u64,
}

/// One comparison's result.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Diff {
    /// Counts.
    pub counts: Counts,
    /// In the picture, not on the compared side.
    pub missing: Vec<Difference>,
    /// On the compared side, not in the picture.
    pub extra: Vec<Difference>,
    /// On both, unequal.
    pub differing: Vec<Difference>,
}

impl Diff {
    /// Whether anything differs.
    pub fn is_clean(&self) -> bool {
        self.counts.missing + self.counts.extra + self.counts.differing == 0
    }
}

/// The report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// The picture compared against.
    pub against: String,
    /// When it was taken (RFC 3339).
    pub as_of: String,
    /// `location` or `sku`.
    pub level: String,
    /// erpstream's materialized state.
    pub state: Diff,
    /// The planning database, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub planning: Option<Diff>,
    /// The storefront's view against erpstream's `available`, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storefront: Option<Diff>,
    /// Repair events published (with `--repair`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repaired: Option<u64>,
    /// Seconds taken.
    pub seconds: f64,
}

impl Report {
    /// Nothing differs on any side compared.
    pub fn is_clean(&self) -> bool {
        self.state.is_clean()
            && self.planning.as_ref().is_none_or(Diff::is_clean)
            && self.storefront.as_ref().is_none_or(Diff::is_clean)
    }
}

/// The picture: quantity per key, and whether the key was seen on the compared side.
#[derive(Debug)]
pub struct Picture {
    rows: HashMap<Key, (Decimal, bool)>,
    per_sku: bool,
}

/// Runs a reconciliation.
pub async fn run(tools: &Tools, options: ReconcileOptions) -> Result<Report, ToolError> {
    let progress = Progress::new(None, "reading the external picture");
    let (picture, fetched_at) = load(&options.against, &options.headers).await?;
    let state_source = match &options.state {
        Some(state) => state.clone(),
        None => {
            let mut listen = tools.topology.http.listen;
            if listen.ip().is_unspecified() {
                listen.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            format!("http://{listen}/api/inventory/snapshot?detail=true")
        }
    };
    let mut headers = Vec::new();
    if let Some(token) = &options.state_token {
        headers.push(format!("Authorization: Bearer {token}"));
    }
    progress.phase("reading erpstream's state");
    let (state, _) = load(&state_source, &headers).await?;
    compare(
        tools,
        options,
        picture,
        fetched_at,
        &state_source,
        state,
        progress,
    )
    .await
}

/// Reconciles a picture already read (`picture`, taken at `fetched_at` unless the options
/// say when) with erpstream's state already read (`state`: a `?detail=true` snapshot body
/// from `state_source`), as [`run`] does after reading both; the console's
/// *Reconciliation* hands over an uploaded file and the state it holds.
pub async fn compare(
    tools: &Tools,
    options: ReconcileOptions,
    picture: Vec<u8>,
    fetched_at: i64,
    state_source: &str,
    state_bytes: Vec<u8>,
    progress: Progress,
) -> Result<Report, ToolError> {
    let as_of = options.as_of.unwrap_or(fetched_at);
    let mut picture = parse_picture(&picture, &options.against)
        .map_err(|reason| ToolError::data(&options.against, reason))?;
    let state_error =
        |reason| ToolError::data(format!("erpstream's state from {state_source}"), reason);
    let events_topic = tools.topic(&options.events_topic);
    progress.phase("comparing");
    let state = compare_state(&mut picture, &state_bytes, &events_topic, Figure::OnHand)
        .map_err(state_error)?;
    let storefront = match &options.storefront {
        Some(view) => {
            progress.phase("comparing the storefront's view");
            let (bytes, _) = load(view, &options.headers).await?;
            let mut shown =
                parse_picture(&bytes, view).map_err(|reason| ToolError::data(view, reason))?;
            Some(
                compare_state(&mut shown, &state_bytes, &events_topic, Figure::Available)
                    .map_err(state_error)?,
            )
        }
        None => None,
    };
    drop(state_bytes);
    let planning = match &options.planning {
        Some(url) => {
            progress.phase("comparing with the planning database");
            Some(compare_planning(&mut picture, url).await?)
        }
        None => None,
    };
    let repaired = if options.repair {
        if picture.per_sku {
            return Err(ToolError::usage(
                "--repair needs a picture per sku and location; this one is per sku",
            ));
        }
        Some(repair(tools, &state, as_of).await?)
    } else {
        None
    };
    Ok(Report {
        against: options.against,
        as_of: rfc3339(as_of),
        level: if picture.per_sku { "sku" } else { "location" }.into(),
        state,
        planning,
        storefront,
        repaired,
        seconds: progress.finish().as_secs_f64(),
    })
}

/// A file's or URL's bytes and the time they stand for.
pub async fn load(source: &str, headers: &[String]) -> Result<(Vec<u8>, i64), ToolError> {
    if source.starts_with("http://") || source.starts_with("https://") {
        let fetched_at = erpstream_schemas::now_millis();
        let mut request = reqwest::Client::new().get(source);
        for header in headers {
            let (name, value) = header.split_once(':').ok_or_else(|| {
                ToolError::usage(format!("header {header:?} is not `Name: value`"))
            })?;
            request = request.header(name.trim(), value.trim());
        }
        let response = request.send().await.doing(|| format!("GET {source}"))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(ToolError::data(
                format!("GET {source}"),
                format!(
                    "answered {status}: {}",
                    body.chars().take(300).collect::<String>()
                ),
            ));
        }
        let body = response.bytes().await.doing(|| format!("GET {source}"))?;
        Ok((body.to_vec(), fetched_at))
    } else {
        let path = Path::new(source);
        let modified = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .doing(|| format!("could not read {source}"))?;
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .doing(|| format!("could not read {source}"))?;
        let at = modified
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or_else(|_| erpstream_schemas::now_millis());
        Ok((bytes, at))
    }
}

/// Parses a CSV or JSON picture (by its first non-blank byte); `Err` says what is wrong
/// and where. Everything read here comes from outside (a file, a URL); the fuzz target
/// `reconcile_picture` feeds it arbitrary bytes.
pub fn parse_picture(bytes: &[u8], name: &str) -> Result<Picture, String> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace()).copied();
    let json = |e: serde_json::Error| e.to_string();
    let rows: Vec<Row> = match first {
        None => return Err("it is empty".into()),
        Some(b'[') => serde_json::from_slice(bytes).map_err(json)?,
        Some(b'{') => serde_json::from_slice::<Wrapped>(bytes).map_err(json)?.data,
        Some(_) => parse_csv(bytes)?,
    };
    let per_sku = rows.iter().all(|r| r.location.is_none());
    if !per_sku && let Some(row) = rows.iter().find(|r| r.location.is_none()) {
        return Err(format!(
            "{name}: sku {:?} has no location while other rows have one",
            row.sku
        ));
    }
    let mut map = HashMap::with_capacity(rows.len());
    for row in rows {
        let key = (row.sku, row.location.unwrap_or_default());
        if let Some((previous, _)) = map.insert(key.clone(), (row.qty, false)) {
            // A picture listing a key twice is summed (ERPNext exports one row per bin).
            let sum = previous.checked_add(row.qty).ok_or_else(|| {
                format!(
                    "{name}: the quantities of sku {:?} at {:?} add up past {}",
                    key.0,
                    key.1,
                    Decimal::MAX
                )
            })?;
            map.insert(key, (sum, false));
        }
    }
    Ok(Picture { rows: map, per_sku })
}

/// One row of the picture.
#[derive(Debug, Deserialize)]
struct Row {
    #[serde(
        alias = "item_code",
        alias = "part_num",
        alias = "PartNum",
        alias = "item"
    )]
    sku: String,
    #[serde(
        default,
        alias = "location_code",
        alias = "warehouse",
        alias = "warehouse_code",
        alias = "WarehouseCode"
    )]
    location: Option<String>,
    #[serde(
        alias = "quantity",
        alias = "on_hand",
        alias = "actual_qty",
        alias = "new_quantity",
        alias = "OnHandQty",
        alias = "on_hand_qty",
        deserialize_with = "decimal"
    )]
    qty: Decimal,
}

/// `{"data": [...]}` (Frappe) or `{"value": [...]}` (OData).
#[derive(Debug, Deserialize)]
struct Wrapped {
    #[serde(alias = "value")]
    data: Vec<Row>,
}

/// A quantity written as a JSON number or string, read exactly.
fn decimal<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    let text = match &value {
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::String(s) => s.clone(),
        other => {
            return Err(serde::de::Error::custom(format!(
                "{other} is not a quantity"
            )));
        }
    };
    Decimal::from_str(&text)
        .or_else(|_| Decimal::from_scientific(&text))
        .map_err(|e| serde::de::Error::custom(format!("{text:?} is not a quantity: {e}")))
}

fn parse_csv(bytes: &[u8]) -> Result<Vec<Row>, String> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(bytes);
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| e.to_string())?
        .iter()
        .map(|h| h.to_ascii_lowercase().replace([' ', '-'], "_"))
        .collect();
    let column = |names: &[&str]| header.iter().position(|h| names.contains(&h.as_str()));
    let sku = column(SKU)
        .ok_or_else(|| format!("no sku column (one of {SKU:?}) in the header {header:?}"))?;
    let quantity = column(QUANTITY).ok_or_else(|| {
        format!("no quantity column (one of {QUANTITY:?}) in the header {header:?}")
    })?;
    let location = column(LOCATION);
    let mut rows = Vec::new();
    let mut record = csv::StringRecord::new();
    while reader.read_record(&mut record).map_err(|e| e.to_string())? {
        let line = record.position().map_or(0, |p| p.line());
        let field = |index: usize, name: &str| {
            record
                .get(index)
                .ok_or_else(|| format!("line {line}: no {name} value"))
        };
        let text = field(quantity, "quantity")?;
        let qty = Decimal::from_str(text)
            .or_else(|_| Decimal::from_scientific(text))
            .map_err(|_| format!("line {line}: quantity {text:?} is not a number"))?;
        rows.push(Row {
            sku: field(sku, "sku")?.to_string(),
            location: location
                .map(|l| field(l, "location").map(str::to_string))
                .transpose()?,
            qty,
        });
    }
    Ok(rows)
}

/// One sku of the snapshot with `?detail=true`.
#[derive(Debug, Deserialize)]
struct StateSku {
    sku: String,
    #[serde(default)]
    partition: i32,
    locations: Vec<StateLocation>,
}

#[derive(Debug, Deserialize)]
struct StateLocation {
    location_code: String,
    #[serde(deserialize_with = "decimal")]
    on_hand: Decimal,
    #[serde(deserialize_with = "decimal")]
    available: Decimal,
    #[serde(default)]
    erp_time: i64,
    #[serde(default)]
    erp_offset: i64,
}

/// Which of erpstream's figures a picture is compared with.
#[derive(Debug, Clone, Copy)]
enum Figure {
    /// The ERP's on-hand quantity.
    OnHand,
    /// Available to sell (what the storefront is sent).
    Available,
}

/// Compares the picture with the snapshot, streaming its skus.
fn compare_state(
    picture: &mut Picture,
    bytes: &[u8],
    events_topic: &str,
    figure: Figure,
) -> Result<Diff, String> {
    let of = |l: &StateLocation| match figure {
        Figure::OnHand => l.on_hand,
        Figure::Available => l.available,
    };
    let mut diff = Diff::default();
    for (_, seen) in picture.rows.values_mut() {
        *seen = false;
    }
    diff.counts.external = picture.rows.len() as u64;
    let mut visit = |item: StateSku| {
        let last = |l: &StateLocation| {
            (l.erp_time > 0).then(|| LastEvent {
                topic: events_topic.to_string(),
                partition: item.partition,
                offset: l.erp_offset,
                erp_time: rfc3339(l.erp_time),
            })
        };
        if picture.per_sku {
            let total: Decimal = item.locations.iter().map(of).sum();
            let newest = item.locations.iter().max_by_key(|l| l.erp_time);
            let event = newest.and_then(last);
            check(
                picture,
                &mut diff,
                (item.sku.clone(), String::new()),
                total,
                event,
            );
        } else {
            for location in &item.locations {
                let event = last(location);
                let key = (item.sku.clone(), location.location_code.clone());
                check(picture, &mut diff, key, of(location), event);
            }
        }
    };
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    serde::Deserializer::deserialize_seq(&mut deserializer, EachVisitor(&mut visit)).map_err(
        |e| {
            format!(
                "the snapshot is not a JSON array of skus with `locations` (ask with \
                 ?detail=true): {e}"
            )
        },
    )?;
    finish(picture, &mut diff);
    Ok(diff)
}

/// Counts one key of the compared side.
fn check(
    picture: &mut Picture,
    diff: &mut Diff,
    key: Key,
    value: Decimal,
    last_event: Option<LastEvent>,
) {
    diff.counts.compared += 1;
    let value = value.normalize();
    let location = (!picture.per_sku).then(|| key.1.clone());
    match picture.rows.get_mut(&key) {
        Some((external, seen)) => {
            *seen = true;
            if *external == value {
                diff.counts.matching += 1;
            } else {
                diff.counts.differing += 1;
                diff.differing.push(Difference {
                    sku: key.0,
                    location,
                    external: Some(external.normalize()),
                    erpstream: Some(value),
                    difference: (value - *external).normalize(),
                    last_event,
                });
            }
        }
        None if value.is_zero() => diff.counts.matching += 1,
        None => {
            diff.counts.extra += 1;
            diff.extra.push(Difference {
                sku: key.0,
                location,
                external: None,
                erpstream: Some(value),
                difference: value,
                last_event,
            });
        }
    }
}

/// Counts the picture's keys the compared side did not have.
fn finish(picture: &Picture, diff: &mut Diff) {
    for ((sku, location), (external, seen)) in &picture.rows {
        if *seen {
            continue;
        }
        if external.is_zero() {
            diff.counts.matching += 1;
            continue;
        }
        diff.counts.missing += 1;
        diff.missing.push(Difference {
            sku: sku.clone(),
            location: (!picture.per_sku).then(|| location.clone()),
            external: Some(external.normalize()),
            erpstream: None,
            difference: -external.normalize(),
            last_event: None,
        });
    }
    for list in [&mut diff.missing, &mut diff.extra, &mut diff.differing] {
        list.sort_by(|a, b| (&a.sku, &a.location).cmp(&(&b.sku, &b.location)));
    }
}

/// Calls a closure for every element of a JSON array, without holding the array.
struct EachVisitor<'f, F>(&'f mut F);

impl<'de, F: FnMut(StateSku)> Visitor<'de> for EachVisitor<'_, F> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of skus")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(item) = seq.next_element_seed(ItemSeed)? {
            (self.0)(item);
        }
        Ok(())
    }
}

struct ItemSeed;

impl<'de> DeserializeSeed<'de> for ItemSeed {
    type Value = StateSku;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<StateSku, D::Error> {
        StateSku::deserialize(d)
    }
}

/// Compares the picture with `planning.inventory`.
async fn compare_planning(picture: &mut Picture, url: &str) -> Result<Diff, ToolError> {
    use futures::TryStreamExt;
    let client = erpstream_connectors::postgres::connect(url, "planning database")
        .await
        .doing(|| {
            format!(
                "could not connect to the planning database {}",
                erpstream_connectors::postgres::redacted(url)
            )
        })?;
    let mut diff = Diff::default();
    for (_, seen) in picture.rows.values_mut() {
        *seen = false;
    }
    diff.counts.external = picture.rows.len() as u64;
    let rows = client
        .query_raw(
            "SELECT sku, location, on_hand_qty::text FROM planning.inventory",
            std::iter::empty::<&str>(),
        )
        .await
        .doing(|| "could not read planning.inventory".into())?;
    futures::pin_mut!(rows);
    let mut per_sku: HashMap<String, Decimal> = HashMap::new();
    while let Some(row) = rows
        .try_next()
        .await
        .doing(|| "could not read planning.inventory".into())?
    {
        let sku: String = row.get(0);
        let location: String = row.get(1);
        let text = row.get::<_, &str>(2);
        let on_hand = Decimal::from_str(text).map_err(|_| {
            ToolError::data("planning.inventory", format!("{text:?} is not a number"))
        })?;
        if picture.per_sku {
            *per_sku.entry(sku).or_default() += on_hand;
        } else {
            check(picture, &mut diff, (sku, location), on_hand, None);
        }
    }
    for (sku, total) in per_sku {
        check(picture, &mut diff, (sku, String::new()), total, None);
    }
    finish(picture, &mut diff);
    Ok(diff)
}

/// Publishes one correcting `inventory.change` per difference; returns how many.
/// Publishes the absolute `inventory.change` events that correct `diff` (the picture's
/// figure, 0 for `extra`), stamped `as_of`, and returns how many (see the module docs).
pub async fn repair(tools: &Tools, diff: &Diff, as_of: i64) -> Result<u64, ToolError> {
    let topic = tools.kafka.topic("inventory.change");
    tools
        .codec
        .register(&topic, EventKind::InventoryChange)
        .await?;
    let publisher = Publisher::new(&tools.kafka, "erpstream-reconcile", tools.codec.clone())
        .doing(|| "creating the producer".into())?;
    let run = uuid::Uuid::now_v7().to_string();
    let corrections = diff
        .missing
        .iter()
        .chain(&diff.differing)
        .chain(&diff.extra);
    let total = (diff.missing.len() + diff.differing.len() + diff.extra.len()) as u64;
    let progress = Progress::new(Some(total), "publishing repairs");
    let mut acks = Vec::new();
    for difference in corrections {
        progress.step();
        let location = difference.location.clone().unwrap_or_default();
        let event = InventoryChange {
            event_id: uuid::Uuid::new_v4().to_string(),
            idempotency_key: format!("reconcile:{run}:{}:{location}", difference.sku),
            source_system: "erpstream-reconcile".into(),
            source: "reconcile".into(),
            occurred_at: as_of,
            ingested_at: erpstream_schemas::now_millis(),
            sku: difference.sku.clone(),
            location_code: location,
            new_quantity: Some(difference.external.unwrap_or_default()),
            allocated_qty: None,
            in_transit_qty: None,
            quantity_change: None,
            change_reason: Some("RECONCILE".into()),
            reference_id: Some(run.clone()),
        };
        let payload = tools.codec.encode(&topic, &event).await?;
        acks.push(
            publisher
                .enqueue(RawRecord {
                    topic: topic.clone(),
                    key: Some(event.sku.clone().into_bytes()),
                    payload: Some(payload),
                    headers: vec![
                        (
                            TRACEPARENT_HEADER.into(),
                            Traceparent::new_root().to_string().into_bytes(),
                        ),
                        (
                            REPAIR_HEADER.into(),
                            format!("reconcile:{run}").into_bytes(),
                        ),
                    ],
                    partition: None,
                })
                .await?,
        );
    }
    futures::future::try_join_all(acks).await?;
    progress.finish();
    Ok(total)
}

/// The human summary of a report.
pub fn summary(report: &Report) -> String {
    let mut out = format!(
        "reconciled {} against erpstream's state (picture as of {}, per {}) in {:.2} s\n",
        report.against, report.as_of, report.level, report.seconds
    );
    let mut sides = vec![("erpstream state", &report.state)];
    if let Some(planning) = &report.planning {
        sides.push(("planning database", planning));
    }
    if let Some(storefront) = &report.storefront {
        sides.push(("storefront view vs available", storefront));
    }
    for (name, diff) in sides {
        let c = &diff.counts;
        out.push_str(&format!(
            "{name}: {} keys in the picture, {} compared, {} matching, {} missing, {} extra, {} differing\n",
            c.external, c.compared, c.matching, c.missing, c.extra, c.differing
        ));
        for (label, list) in [
            ("missing", &diff.missing),
            ("extra", &diff.extra),
            ("differing", &diff.differing),
        ] {
            for d in list.iter().take(5) {
                out.push_str(&format!(
                    "  {label:<9} {} {} external={} erpstream={}\n",
                    d.sku,
                    d.location.as_deref().unwrap_or(""),
                    d.external.map_or("-".into(), |v| v.to_string()),
                    d.erpstream.map_or("-".into(), |v| v.to_string()),
                ));
            }
            if list.len() > 5 {
                out.push_str(&format!(
                    "  ... {} more {label} (see the report)\n",
                    list.len() - 5
                ));
            }
        }
    }
    if let Some(repaired) = report.repaired {
        out.push_str(&format!(
            "published {repaired} correcting inventory.change events (change_reason RECONCILE)\n"
        ));
    }
    out
}

/// Writes the report as JSON.
pub fn write_report(report: &Report, path: &PathBuf) -> Result<(), ToolError> {
    let file =
        std::fs::File::create(path).doing(|| format!("could not create {}", path.display()))?;
    serde_json::to_writer_pretty(std::io::BufWriter::new(file), report)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(text: &str) -> Decimal {
        Decimal::from_str(text).unwrap()
    }

    fn state(items: &str) -> Vec<u8> {
        items.as_bytes().to_vec()
    }

    const STATE: &str = r#"[
        {"sku":"A","qty":5,"partition":1,"locations":[
            {"location_code":"W1","on_hand":2.000,"reserved":0,"safety_stock":0,"available":2,"version":1,"erp_time":1795759360415,"erp_offset":7},
            {"location_code":"W2","on_hand":3,"reserved":0,"safety_stock":0,"available":3,"version":1,"erp_time":0,"erp_offset":0}]},
        {"sku":"B","qty":0,"partition":0,"locations":[
            {"location_code":"W1","on_hand":0,"reserved":0,"safety_stock":0,"available":0,"version":2,"erp_time":1,"erp_offset":3}]},
        {"sku":"C","qty":4,"partition":0,"locations":[
            {"location_code":"W1","on_hand":4,"reserved":0,"safety_stock":0,"available":4,"version":2,"erp_time":1,"erp_offset":4}]}
    ]"#;

    #[test]
    fn an_erpnext_bin_export_is_compared_per_location() {
        let csv = "Item Code,Warehouse,Actual Qty\nA,W1,2\nA,W2,3.5\nD,W1,1\nE,W1,0\n";
        let mut picture = parse_picture(csv.as_bytes(), "bins.csv").unwrap();
        assert!(!picture.per_sku);
        let diff = compare_state(
            &mut picture,
            &state(STATE),
            "inventory.change",
            Figure::OnHand,
        )
        .unwrap();
        let c = &diff.counts;
        // A/W1 equal (2 vs 2.000), B/W1 zero and absent, E/W1 zero and absent.
        assert_eq!((c.matching, c.missing, c.extra, c.differing), (3, 1, 1, 1));
        assert_eq!(diff.differing[0].sku, "A");
        assert_eq!(diff.differing[0].external, Some(d("3.5")));
        assert_eq!(diff.differing[0].difference, d("-0.5"));
        assert!(
            diff.differing[0].last_event.is_none(),
            "no absolute figure yet"
        );
        assert_eq!(
            (diff.missing[0].sku.as_str(), diff.missing[0].external),
            ("D", Some(d("1")))
        );
        let extra = &diff.extra[0];
        assert_eq!(extra.sku, "C");
        let last = extra.last_event.as_ref().unwrap();
        assert_eq!((last.partition, last.offset), (0, 4));
    }

    #[test]
    fn the_storefront_view_is_compared_with_available() {
        let shown = r#"[{"sku":"A","location":"W1","qty":2},{"sku":"A","location":"W2","qty":4},{"sku":"C","location":"W1","qty":4}]"#;
        let mut picture = parse_picture(shown.as_bytes(), "shown").unwrap();
        let diff = compare_state(&mut picture, &state(STATE), "t", Figure::Available).unwrap();
        assert_eq!(diff.counts.differing, 1);
        assert_eq!(diff.differing[0].erpstream, Some(d("3")));
        assert_eq!(diff.differing[0].external, Some(d("4")));
    }

    #[test]
    fn json_pictures_in_every_accepted_shape() {
        let frappe = r#"{"data":[{"item_code":"A","warehouse":"W1","actual_qty":2.0}]}"#;
        let odata = r#"{"value":[{"PartNum":"A","WarehouseCode":"W1","OnHandQty":"2"}]}"#;
        let plain = r#"[{"sku":"A","location_code":"W1","qty":2}]"#;
        for text in [frappe, odata, plain] {
            let picture = parse_picture(text.as_bytes(), "p.json").unwrap();
            assert_eq!(
                picture
                    .rows
                    .get(&("A".to_string(), "W1".to_string()))
                    .map(|r| r.0),
                Some(d("2")),
                "{text}"
            );
        }
    }

    #[test]
    fn a_snapshot_per_sku_is_compared_with_the_sum_of_locations() {
        let erp = r#"[{"sku":"A","qty":5},{"sku":"C","qty":3}]"#;
        let mut picture = parse_picture(erp.as_bytes(), "snapshot").unwrap();
        assert!(picture.per_sku);
        let diff = compare_state(
            &mut picture,
            &state(STATE),
            "inventory.change",
            Figure::OnHand,
        )
        .unwrap();
        assert_eq!(diff.counts.differing, 1);
        assert_eq!(diff.differing[0].sku, "C");
        assert_eq!(diff.differing[0].location, None);
        assert_eq!(diff.counts.matching, 2, "A sums to 5; B is 0 and absent");
    }

    #[test]
    fn bad_pictures_are_refused_with_the_place_and_reason() {
        let no_sku = parse_picture(b"code,qty\nA,1\n", "p.csv").err().unwrap();
        assert!(format!("{no_sku:#}").contains("no sku column"));
        let bad_qty = parse_picture(b"sku,location,qty\nA,W1,1\nB,W1,lots\n", "p.csv")
            .err()
            .unwrap();
        assert!(
            format!("{bad_qty:#}").contains("line 3: quantity \"lots\""),
            "{bad_qty:#}"
        );
        let mixed = parse_picture(
            br#"[{"sku":"A","qty":1},{"sku":"B","location":"W","qty":1}]"#,
            "p",
        )
        .err()
        .unwrap();
        assert!(format!("{mixed:#}").contains("has no location"));
        assert!(parse_picture(b"  ", "p").is_err());
    }

    #[test]
    fn a_key_listed_twice_past_the_decimal_range_is_refused_not_a_panic() {
        let max = rust_decimal::Decimal::MAX;
        let csv = format!("sku,qty\nA,{max}\nA,{max}\n");
        let refused = parse_picture(csv.as_bytes(), "p.csv").err().unwrap();
        assert!(refused.contains("sku \"A\""), "{refused}");
    }
}
