//! pgoutput messages → what each captured change becomes, with no I/O: Relation messages
//! (re)bind the table's mapping, row changes are mapped or refused with the field named.
//!
//! Everything here reads bytes the server sent; the fuzz target `pgoutput` feeds
//! [`Decoder::decode`] arbitrary messages.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use erpstream_schemas::now_millis;
use pg_walstream::{LogicalReplicationMessage, LogicalReplicationParser, TupleData};
use pgwire_replication::Lsn;

use super::{CdcError, Table};
use crate::sources::mapping::{self, Bound, Cell, Deleted, Envelope, Mapped, RowError};

/// Where a change sits: its transaction's commit and its number within it.
#[derive(Debug, Clone, Copy)]
pub struct Position {
    /// The transaction's commit LSN.
    pub commit_lsn: Lsn,
    /// Its commit time, epoch ms.
    pub commit_ms: i64,
    /// Changes received so far (numbers each change within the transaction).
    pub changes: u32,
}

/// What one change becomes.
#[derive(Debug)]
pub enum Change {
    /// An event under its key.
    Event(Box<Mapped>),
    /// A null value under this key.
    Tombstone(String),
    /// Nothing (a delete the mapping skips).
    Skip,
    /// A dead letter: the row does not fit its contract.
    Refused {
        /// The field and reason.
        error: RowError,
        /// The row's values as a JSON array.
        row: String,
    },
}

/// One captured row change, decided.
#[derive(Debug)]
pub struct Decided {
    /// Its table.
    pub table: Arc<Table>,
    /// What it becomes.
    pub change: Change,
    /// The row's replica identity (`/`-joined key values).
    pub identity: String,
    /// `<commit LSN>:<change number>`.
    pub position: String,
}

/// A table bound to its current columns.
struct Target {
    table: Arc<Table>,
    bound: Bound,
}

/// Decodes one replication session's pgoutput messages.
pub struct Decoder {
    source: String,
    source_system: String,
    /// Captured tables by `schema.table`, with their key columns when configured.
    tables: HashMap<String, (Arc<Table>, Vec<String>)>,
    /// Relation id → its binding (`None`: a table not captured).
    relations: HashMap<u32, Option<Target>>,
    parser: LogicalReplicationParser,
}

impl Decoder {
    /// A decoder for the source `source` (its id) capturing `tables`.
    pub fn new(
        source: &str,
        source_system: &str,
        tables: HashMap<String, (Arc<Table>, Vec<String>)>,
    ) -> Self {
        Self {
            source: source.to_string(),
            source_system: source_system.to_string(),
            tables,
            relations: HashMap::new(),
            parser: LogicalReplicationParser::with_protocol_version(1),
        }
    }

    /// Decodes one pgoutput message (an XLogData payload) received inside the transaction
    /// at `txn` (`None`: between transactions). `Ok(None)`: nothing to publish (a Relation
    /// message, an uncaptured table, a message erpstream does not capture). `Err`: the
    /// stream cannot go on (a malformed message, a change before its Relation, a mapping
    /// that no longer fits its table).
    pub fn decode(
        &mut self,
        data: Bytes,
        txn: Option<&mut Position>,
    ) -> Result<Option<Decided>, CdcError> {
        let message = self
            .parser
            .parse_wal_message_bytes(data)
            .map_err(|e| CdcError::Decode(e.to_string()))?
            .message;
        let (relation_id, new, old, deleted) = match message {
            LogicalReplicationMessage::Relation {
                relation_id,
                namespace,
                relation_name,
                columns,
                ..
            } => {
                let name = format!("{namespace}.{relation_name}");
                let target = match self.tables.get(&name) {
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
                self.relations.insert(relation_id, target);
                return Ok(None);
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
                    if let Some(Some(target)) = self.relations.get(&id) {
                        tracing::warn!(table = %target.table.name, "TRUNCATE is not captured; reconcile the topic's consumers");
                    }
                }
                return Ok(None);
            }
            _ => return Ok(None),
        };
        let Some(txn) = txn else {
            return Err(CdcError::Decode("a change outside a transaction".into()));
        };
        let Some(Some(target)) = self.relations.get(&relation_id) else {
            if !self.relations.contains_key(&relation_id) {
                return Err(CdcError::Decode(format!(
                    "a change of relation {relation_id} before its Relation message"
                )));
            }
            return Ok(None);
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
        let envelope = Envelope {
            idempotency_key: &key,
            source: &self.source,
            source_system: &self.source_system,
            occurred_at: txn.commit_ms,
            ingested_at: now_millis(),
        };
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
        let change = outcome.unwrap_or_else(|error| Change::Refused {
            error,
            row: row_json(row),
        });
        Ok(Some(Decided {
            table: target.table.clone(),
            change,
            identity,
            position,
        }))
    }
}

/// The text of each column of a tuple (`None`: NULL; unchanged TOAST is told by `cells`).
fn texts(tuple: &TupleData) -> Vec<(u8, Option<Cow<'_, str>>)> {
    tuple
        .columns
        .iter()
        .map(|c| (c.data_type, c.as_str()))
        .collect()
}

/// Cells of a tuple; with `key_only`, NULLs of non-key columns are values the change does
/// not carry, not NULLs.
fn cells<'a>(texts: &'a [(u8, Option<Cow<'a, str>>)], key_only: bool) -> Vec<Cell<'a>> {
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

/// A row's values as a JSON array (strings and nulls), for its dead letter.
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
