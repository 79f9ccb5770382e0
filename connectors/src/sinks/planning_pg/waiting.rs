//! Stock and demand that arrive before their product: parked in `planning.waiting` (in the
//! transaction that stores their offsets, so nothing is lost on a crash), applied with the
//! batch that brings the product, or at the next full check once another replica wrote it,
//! and dead-lettered only when the product has not come within `product_wait` or more than
//! `max_waiting` rows already wait — then a person has to look.
//!
//! Each batch looks only at the waiting rows of the products it writes; a full check (every
//! `FULL_CHECK`, and when the sink is idle) applies the rows whose product arrived through
//! another replica, dead-letters expired ones and counts the room (between full checks the
//! count is the last one plus what was parked since, so `max_waiting` is approximate).

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage, Timestamp};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_postgres::Transaction;

use super::{Demand, DemandKey, Stock};

/// Rows to park: key, index of the record in its batch, values.
pub(super) type Parked<K, V> = Vec<(K, usize, V)>;

/// How often a batch also looks at every waiting row.
pub(super) const FULL_CHECK: Duration = Duration::from_secs(5);

/// The sink's waiting room.
pub(super) struct Waiting<'a> {
    /// The sink id (rows of several sinks can share the table).
    pub sink: &'a str,
    /// How long a row may wait for its product.
    pub wait: Duration,
    /// How many rows may wait at once.
    pub max: i64,
    /// Rows waiting as of the last full check, plus those parked since.
    pub waiting: i64,
}

/// What one batch did in the waiting room.
#[derive(Debug, Default)]
pub(super) struct Moves {
    /// Rows parked.
    pub parked: u64,
    /// Rows whose product arrived, now written.
    pub applied: u64,
    /// Rows waiting after the batch.
    pub waiting: i64,
}

#[derive(Serialize, Deserialize)]
struct Entry<K, V> {
    key: K,
    values: V,
}

impl Waiting<'_> {
    /// Parks stock and demand rows whose sku is unknown, keeping the newest per key (a newer
    /// record for a waiting key replaces it; the older one is superseded). Rows that would
    /// push the room past `max` are handed back, with the reason, to be dead-lettered.
    pub async fn park(
        &self,
        tx: &Transaction<'_>,
        stock: Parked<(String, String), Stock>,
        demand: Parked<DemandKey, Demand>,
        batch: &[OwnedMessage],
        moves: &mut Moves,
    ) -> Result<Vec<(usize, String)>, tokio_postgres::Error> {
        if stock.is_empty() && demand.is_empty() {
            return Ok(Vec::new());
        }
        let mut room = (self.max - self.waiting).max(0) as usize;
        let mut refused = Vec::new();
        let mut columns = Columns::default();
        let rows = stock
            .into_iter()
            .map(|(key, index, stock)| {
                let sku = key.0.clone();
                let version = stock.version;
                (
                    "inventory",
                    row_key(&[&key.0, &key.1]),
                    sku,
                    version,
                    entry(key, stock),
                    index,
                )
            })
            .chain(demand.into_iter().map(|(key, index, demand)| {
                let sku = key.0.clone();
                let version = demand.version;
                let row_key = row_key(&[&key.0, &key.1, &key.2, &key.3]);
                ("demand", row_key, sku, version, entry(key, demand), index)
            }));
        for (kind, key, sku, version, row, index) in rows {
            if room == 0 {
                refused.push((
                    index,
                    format!(
                        "unknown sku {sku}: no such product, and {} records already wait for \
                         their products (max_waiting); sync the products, then redrive",
                        self.max
                    ),
                ));
                continue;
            }
            room -= 1;
            columns.push(kind, key, sku, version, row, record_json(&batch[index]));
        }
        moves.parked += columns.kinds.len() as u64;
        if !columns.kinds.is_empty() {
            tx.execute(
                "INSERT INTO planning.waiting AS w
                     (sink, row_kind, row_key, sku, source_version, row, record)
                 SELECT $1, k, rk, s, v, r, rec
                 FROM unnest($2::text[], $3::text[], $4::text[], $5::bigint[], $6::jsonb[], $7::jsonb[])
                      AS u(k, rk, s, v, r, rec)
                 ON CONFLICT (sink, row_kind, row_key) DO UPDATE SET
                     source_version = EXCLUDED.source_version, row = EXCLUDED.row,
                     record = EXCLUDED.record
                 WHERE w.source_version <= EXCLUDED.source_version",
                &[
                    &self.sink,
                    &columns.kinds,
                    &columns.keys,
                    &columns.skus,
                    &columns.versions,
                    &columns.rows,
                    &columns.records,
                ],
            )
            .await?;
        }
        Ok(refused)
    }

    /// Takes out the rows whose product is now known (as of this transaction), to be
    /// written with the batch: of `skus` (the products the batch writes), or of every
    /// product (`None`, a full check).
    #[allow(clippy::type_complexity)]
    pub async fn ready(
        &self,
        tx: &Transaction<'_>,
        skus: Option<&[&str]>,
        moves: &mut Moves,
    ) -> Result<(HashMap<(String, String), Stock>, HashMap<DemandKey, Demand>), tokio_postgres::Error>
    {
        let rows = match skus {
            Some([]) => Vec::new(),
            Some(skus) => {
                tx.query(
                    "DELETE FROM planning.waiting w
                     WHERE w.sink = $1 AND w.sku = ANY($2)
                     RETURNING w.row_kind, w.row",
                    &[&self.sink, &skus],
                )
                .await?
            }
            None => {
                tx.query(
                    "DELETE FROM planning.waiting w USING planning.products p
                     WHERE w.sink = $1 AND w.sku = p.sku
                     RETURNING w.row_kind, w.row",
                    &[&self.sink],
                )
                .await?
            }
        };
        let mut stock = HashMap::new();
        let mut demand = HashMap::new();
        for row in rows {
            let (kind, value): (String, Value) = (row.get(0), row.get(1));
            moves.applied += 1;
            let parsed = match kind.as_str() {
                "inventory" => from_entry(value).map(|(k, v)| {
                    stock.insert(k, v);
                }),
                _ => from_entry(value).map(|(k, v)| {
                    demand.insert(k, v);
                }),
            };
            if parsed.is_none() {
                tracing::error!(sink = self.sink, "unreadable waiting row dropped");
            }
        }
        Ok((stock, demand))
    }

    /// Takes out the rows that waited longer than `wait`, as the records to dead-letter and
    /// why; then counts what still waits.
    pub async fn expired(
        &self,
        tx: &Transaction<'_>,
        moves: &mut Moves,
    ) -> Result<Vec<(OwnedMessage, String)>, tokio_postgres::Error> {
        let seconds = self.wait.as_secs_f64();
        let rows = tx
            .query(
                "DELETE FROM planning.waiting
                 WHERE sink = $1 AND since < now() - make_interval(secs => $2)
                 RETURNING sku, record",
                &[&self.sink, &seconds],
            )
            .await?;
        let wait = humantime::format_duration(self.wait);
        let expired = rows
            .iter()
            .filter_map(|row| {
                let (sku, record): (String, Value) = (row.get(0), row.get(1));
                let reason = format!(
                    "unknown sku {sku}: no product arrived within {wait}; sync it as a product, \
                     then redrive"
                );
                Some((record_from(&record)?, reason))
            })
            .collect();
        moves.waiting = tx
            .query_one(
                "SELECT count(*) FROM planning.waiting WHERE sink = $1",
                &[&self.sink],
            )
            .await?
            .get(0);
        Ok(expired)
    }
}

/// Columns of the rows parked by one statement.
#[derive(Default)]
struct Columns {
    kinds: Vec<&'static str>,
    keys: Vec<String>,
    skus: Vec<String>,
    versions: Vec<i64>,
    rows: Vec<Value>,
    records: Vec<Value>,
}

impl Columns {
    fn push(
        &mut self,
        kind: &'static str,
        key: String,
        sku: String,
        version: i64,
        row: Value,
        record: Value,
    ) {
        self.kinds.push(kind);
        self.keys.push(key);
        self.skus.push(sku);
        self.versions.push(version);
        self.rows.push(row);
        self.records.push(record);
    }
}

fn row_key(parts: &[&str]) -> String {
    serde_json::to_string(parts).unwrap_or_default()
}

fn entry<K: Serialize, V: Serialize>(key: K, values: V) -> Value {
    serde_json::to_value(Entry { key, values }).unwrap_or_default()
}

fn from_entry<K: DeserializeOwned, V: DeserializeOwned>(value: Value) -> Option<(K, V)> {
    let entry: Entry<K, V> = serde_json::from_value(value).ok()?;
    Some((entry.key, entry.values))
}

/// A consumed record as JSON, so it can be dead-lettered after it waited.
fn record_json(message: &OwnedMessage) -> Value {
    let bytes = |b: Option<&[u8]>| b.map(|b| BASE64.encode(b));
    let headers: Vec<(String, String)> = crate::kafka::headers_of(message)
        .into_iter()
        .map(|(k, v)| (k, BASE64.encode(v)))
        .collect();
    json!({
        "topic": message.topic(),
        "partition": message.partition(),
        "offset": message.offset(),
        "key": bytes(message.key()),
        "value": bytes(message.payload()),
        "headers": headers,
    })
}

fn record_from(value: &Value) -> Option<OwnedMessage> {
    let bytes = |field: &str| {
        value
            .get(field)
            .and_then(Value::as_str)
            .and_then(|s| BASE64.decode(s).ok())
    };
    let mut headers = OwnedHeaders::new();
    for pair in value.get("headers")?.as_array()? {
        let (key, encoded) = (pair.get(0)?.as_str()?, pair.get(1)?.as_str()?);
        let decoded = BASE64.decode(encoded).ok()?;
        headers = headers.insert(Header {
            key,
            value: Some(&decoded),
        });
    }
    Some(OwnedMessage::new(
        bytes("value"),
        bytes("key"),
        value.get("topic")?.as_str()?.to_string(),
        Timestamp::NotAvailable,
        i32::try_from(value.get("partition")?.as_i64()?).ok()?,
        value.get("offset")?.as_i64()?,
        Some(headers),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_waiting_record_comes_back_whole_for_its_dead_letter() {
        let headers = OwnedHeaders::new().insert(Header {
            key: "traceparent",
            value: Some(&b"00-abc"[..]),
        });
        let message = OwnedMessage::new(
            Some(vec![0, 1, 2, 255]),
            Some(b"SKU-1".to_vec()),
            "inventory.change".into(),
            Timestamp::NotAvailable,
            2,
            77,
            Some(headers),
        );
        let back = record_from(&record_json(&message)).expect("readable");
        assert_eq!(back.topic(), "inventory.change");
        assert_eq!((back.partition(), back.offset()), (2, 77));
        assert_eq!(back.key(), Some(&b"SKU-1"[..]));
        assert_eq!(back.payload(), Some(&[0u8, 1, 2, 255][..]));
        assert_eq!(
            crate::kafka::header(&back, "traceparent"),
            Some(&b"00-abc"[..])
        );
    }

    #[test]
    fn parked_rows_read_back_with_their_keys() {
        let stock = Stock {
            on_hand: "5.000".into(),
            allocated: "0".into(),
            in_transit: "1".into(),
            at: 10,
            system: "ERP".into(),
            version: 10,
            message: 3,
        };
        let value = entry(("SKU".to_string(), "WH".to_string()), stock);
        let (key, back): ((String, String), Stock) = from_entry(value).expect("readable");
        assert_eq!(key, ("SKU".into(), "WH".into()));
        assert_eq!((back.on_hand.as_str(), back.version), ("5.000", 10));
    }
}
