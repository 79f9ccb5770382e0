//! One captured row change → the record it becomes: the mapped event, a tombstone, or a
//! dead letter naming the field that does not fit.

use std::borrow::Cow;

use pg_walstream::TupleData;

use super::stream::Txn;
use super::*;

impl PgCdcSource {
    pub(super) fn envelope<'a>(&'a self, key: &'a str, occurred_at: i64) -> Envelope<'a> {
        Envelope {
            idempotency_key: key,
            source: &self.id,
            source_system: &self.config.source_system,
            occurred_at,
            ingested_at: now_millis(),
        }
    }

    /// Queues the record (or dead-letter record) for one change; `None` if nothing is sent.
    pub(super) async fn publish(
        &self,
        table: &Table,
        outcome: Result<Change, RowError>,
        cells: &[Cell<'_>],
        identity: &str,
        position: &str,
    ) -> Result<Option<PendingAck>, CdcError> {
        metrics::counter!(m::RECEIVED_EVENTS, m::COMPONENT_ID => self.id.clone(),
            m::COMPONENT_TYPE => TYPE)
        .increment(1);
        let trace = Traceparent::new_root();
        let record = match outcome {
            Ok(Change::Event(event)) => RawRecord {
                topic: table.topic.clone(),
                key: Some(event.key().as_bytes().to_vec()),
                payload: Some(
                    event
                        .encode(self.publisher.codec(), &table.topic)
                        .await
                        .map_err(PublishError::from)?,
                ),
                headers: vec![crate::kafka::headers::trace_header(&trace)],
                partition: None,
            },
            Ok(Change::Tombstone(key)) => RawRecord {
                topic: table.topic.clone(),
                key: Some(key.into_bytes()),
                payload: None,
                headers: vec![crate::kafka::headers::trace_header(&trace)],
                partition: None,
            },
            Ok(Change::Skip) => return Ok(None),
            Err(error) => {
                tracing::warn!(table = %table.name, row = identity, %error, "row does not fit its contract; dead-lettered");
                metrics::counter!(m::DEAD_LETTERED, m::COMPONENT_ID => self.id.clone(),
                    m::COMPONENT_TYPE => TYPE)
                .increment(1);
                crate::kafka::DeadLetter::new(
                    crate::kafka::Failure::Mapping,
                    &error.to_string(),
                    &self.id,
                )
                .of_row(
                    &table.dlq_topic,
                    identity,
                    row_json(cells).into_bytes(),
                    &[("table", &table.name), ("lsn", position)],
                    &trace,
                )
            }
        };
        Ok(Some(self.publisher.enqueue(record).await?))
    }

    /// Handles one pgoutput message inside (or between) transactions.
    pub(super) async fn change(
        &self,
        message: LogicalReplicationMessage,
        tables: &HashMap<String, (Arc<Table>, Vec<String>)>,
        relations: &mut HashMap<u32, Option<Target>>,
        txn: Option<&mut Txn>,
    ) -> Result<(), CdcError> {
        let (relation_id, new, old, deleted) = match message {
            LogicalReplicationMessage::Relation {
                relation_id,
                namespace,
                relation_name,
                columns,
                ..
            } => {
                let name = format!("{namespace}.{relation_name}");
                let target = match tables.get(&name) {
                    None => None,
                    Some((table, keys)) => {
                        let columns: Vec<mapping::Column> = columns
                            .iter()
                            .map(|c| mapping::Column {
                                name: c.name.to_string(),
                                key: if keys.is_empty() {
                                    c.is_key()
                                } else {
                                    keys.iter().any(|k| **k == *c.name)
                                },
                            })
                            .collect();
                        let bound = Bound::new(&table.mapping, table.kind, &columns, "column")
                            .map_err(|error| CdcError::Mapping {
                                table: name.clone(),
                                error,
                            })?;
                        tracing::info!(table = %name, "table shape (re)bound");
                        Some(Target {
                            table: table.clone(),
                            bound,
                        })
                    }
                };
                relations.insert(relation_id, target);
                return Ok(());
            }
            LogicalReplicationMessage::Insert { relation_id, tuple } => {
                (relation_id, Some(tuple), None, false)
            }
            LogicalReplicationMessage::Update {
                relation_id,
                old_tuple,
                new_tuple,
                key_type,
            } => {
                // Only a full old row (REPLICA IDENTITY FULL) can stand in for unchanged
                // TOASTed values; a key-only one cannot.
                let old = old_tuple
                    .filter(|_| key_type == Some('O'))
                    .map(|t| (t, true));
                (relation_id, Some(new_tuple), old, false)
            }
            LogicalReplicationMessage::Delete {
                relation_id,
                old_tuple,
                key_type,
            } => (relation_id, None, Some((old_tuple, key_type == 'O')), true),
            LogicalReplicationMessage::Truncate { relation_ids, .. } => {
                for id in relation_ids {
                    if let Some(Some(target)) = relations.get(&id) {
                        tracing::warn!(table = %target.table.name, "TRUNCATE is not captured; reconcile the topic's consumers");
                    }
                }
                return Ok(());
            }
            _ => return Ok(()),
        };
        let Some(txn) = txn else {
            return Err(CdcError::Decode("a change outside a transaction".into()));
        };
        let Some(Some(target)) = relations.get(&relation_id) else {
            if !relations.contains_key(&relation_id) {
                return Err(CdcError::Decode(format!(
                    "a change of relation {relation_id} before its Relation message"
                )));
            }
            return Ok(());
        };
        txn.changes += 1;
        let position = format!("{}:{}", txn.commit_lsn, txn.changes);
        let (old_tuple, old_full) = match &old {
            Some((tuple, full)) => (Some(tuple), *full),
            None => (None, false),
        };
        let old_text = old_tuple.map(texts);
        let old_cells = old_text.as_ref().map(|t| cells(t, !old_full));
        let new_text = new.as_ref().map(texts);
        let new_cells = new_text.as_ref().map(|t| cells(t, false));
        let row: &[Cell] = new_cells
            .as_deref()
            .or(old_cells.as_deref())
            .unwrap_or_default();
        let identity = target.bound.identity(row);
        let key = format!("pg:{}:{identity}:{position}", target.table.name);
        let envelope = self.envelope(&key, txn.commit_ms);
        let outcome = if deleted {
            let old = old_cells.as_deref().unwrap_or_default();
            target.bound.deleted(old, &envelope).map(|d| match d {
                Deleted::Tombstone(key) => Change::Tombstone(key),
                Deleted::Skip => Change::Skip,
                Deleted::Event(event) => Change::Event(event),
            })
        } else {
            let old = old_cells.as_deref().filter(|_| old_full);
            target
                .bound
                .event(row, old, &envelope)
                .map(|e| Change::Event(Box::new(e)))
        };
        if let Some(ack) = self
            .publish(&target.table, outcome, row, &identity, &position)
            .await?
        {
            txn.acks.push(ack);
        }
        Ok(())
    }
}

/// What one change becomes.
pub(super) enum Change {
    Event(Box<Mapped>),
    Tombstone(String),
    Skip,
}

/// The text of each column of a tuple (`None`: NULL; unchanged TOAST is told by `cells`).
pub(super) fn texts(tuple: &TupleData) -> Vec<(u8, Option<Cow<'_, str>>)> {
    tuple
        .columns
        .iter()
        .map(|c| (c.data_type, c.as_str()))
        .collect()
}

/// Cells of a tuple; with `key_only`, NULLs of non-key columns are values the change does
/// not carry, not NULLs.
pub(super) fn cells<'a>(texts: &'a [(u8, Option<Cow<'a, str>>)], key_only: bool) -> Vec<Cell<'a>> {
    texts
        .iter()
        .map(|(kind, text)| match (kind, text) {
            (b'u', _) => Cell::Unchanged,
            (b'n', _) if key_only => Cell::Missing,
            (_, Some(text)) => Cell::Text(text),
            _ => Cell::Null,
        })
        .collect()
}

pub(super) fn row_json(cells: &[Cell]) -> String {
    let values: Vec<serde_json::Value> = cells
        .iter()
        .map(|c| match c {
            Cell::Text(t) => serde_json::Value::String((*t).to_string()),
            _ => serde_json::Value::Null,
        })
        .collect();
    serde_json::Value::Array(values).to_string()
}
