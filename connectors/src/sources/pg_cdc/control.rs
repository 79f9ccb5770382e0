//! The control plane of `pg_cdc`, on ordinary connections: server and privilege checks,
//! table shapes, the publication, the slot's state and lag, heartbeats, and the record of
//! completed snapshots in erpstream's own database.

use tokio_postgres::Client;

use super::CdcError;
use super::config::split_table;
use crate::sources::mapping::Column;

/// Prefix of the heartbeat messages written into the WAL.
pub const HEARTBEAT_PREFIX: &str = "erpstream.heartbeat";

/// Opens a connection whose driver runs on its own task.
pub async fn connect(url: &str, what: &'static str) -> Result<Client, CdcError> {
    crate::postgres::connect(url, what).await.map_err(|e| {
        if e.is_refusal() {
            CdcError::Refused(format!("the {what} refused the connection: {e}"))
        } else {
            CdcError::Connect(what, e.to_string())
        }
    })
}

/// A captured table's columns, with its primary key (or replica identity) marked.
#[derive(Debug, Clone)]
pub struct TableShape {
    /// Columns in table order.
    pub columns: Vec<Column>,
}

impl TableShape {
    /// Names of the identity columns, in table order.
    pub fn key_names(&self) -> Vec<&str> {
        self.columns
            .iter()
            .filter(|c| c.key)
            .map(|c| c.name.as_str())
            .collect()
    }
}

/// Refuses a server that cannot stream logical changes to this user.
pub async fn check_server(source: &Client) -> Result<(), CdcError> {
    let level: String = source
        .query_one("SELECT current_setting('wal_level')", &[])
        .await?
        .get(0);
    if level != "logical" {
        return Err(CdcError::Refused(format!(
            "wal_level is {level}; logical replication needs wal_level = logical (ALTER SYSTEM SET wal_level = logical, then restart Postgres)"
        )));
    }
    let row = source
        .query_one(
            "SELECT current_user::text, rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await?;
    let (user, allowed): (String, bool) = (row.get(0), row.get(1));
    if !allowed {
        return Err(CdcError::Refused(format!(
            "user {user} lacks the REPLICATION attribute (ALTER ROLE {user} REPLICATION)"
        )));
    }
    Ok(())
}

/// The shape of `schema.table`, refusing a missing table or one without a usable identity.
pub async fn table_shape(source: &Client, name: &str) -> Result<TableShape, CdcError> {
    let (schema, table) = split_table(name)
        .ok_or_else(|| CdcError::Refused(format!("table {name}: must be named schema.table")))?;
    let row = source
        .query_opt(
            "SELECT c.oid, c.relreplident::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&schema, &table],
        )
        .await?
        .ok_or_else(|| CdcError::Refused(format!("table {name} does not exist")))?;
    let oid: u32 = row.get(0);
    let identity: String = row.get(1);
    let identity = identity.chars().next().unwrap_or('d');
    let key_index = match identity {
        'n' => {
            return Err(CdcError::Refused(format!(
                "table {name} has REPLICA IDENTITY NOTHING; its updates and deletes cannot be captured (ALTER TABLE {name} REPLICA IDENTITY DEFAULT)"
            )));
        }
        'i' => "i.indisreplident",
        _ => "i.indisprimary",
    };
    let rows = source
        .query(
            &format!(
                "SELECT a.attname::text, EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = a.attrelid
                   AND {key_index} AND a.attnum = ANY (i.indkey))
                 FROM pg_attribute a WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
                 ORDER BY a.attnum"
            ),
            &[&oid],
        )
        .await?;
    let columns: Vec<Column> = rows
        .iter()
        .map(|r| Column {
            name: r.get(0),
            key: r.get(1),
        })
        .collect();
    if !columns.iter().any(|c| c.key) {
        return Err(CdcError::Refused(format!(
            "table {name} has no primary key; add one, or set REPLICA IDENTITY USING INDEX on a unique index"
        )));
    }
    Ok(TableShape { columns })
}

/// Makes `publication` cover `tables`: created, or extended by the missing ones, when
/// `create` is on; otherwise a missing publication or table is refused by name.
pub async fn ensure_publication(
    source: &Client,
    publication: &str,
    tables: &[String],
    create: bool,
) -> Result<(), CdcError> {
    let quoted = |name: &str| -> String {
        let (schema, table) = split_table(name).unwrap_or(("public", name));
        format!("{}.{}", quote_ident(schema), quote_ident(table))
    };
    let exists = source
        .query_opt(
            "SELECT puballtables FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await?;
    match exists {
        None if create => {
            let list: Vec<String> = tables.iter().map(|t| quoted(t)).collect();
            source
                .batch_execute(&format!(
                    "CREATE PUBLICATION {} FOR TABLE {}",
                    quote_ident(publication),
                    list.join(", ")
                ))
                .await?;
            tracing::info!(publication, "publication created");
            Ok(())
        }
        None => Err(CdcError::Refused(format!(
            "publication {publication} does not exist (create it, or set create: true)"
        ))),
        Some(row) if row.get::<_, bool>(0) => Ok(()),
        Some(_) => {
            let rows = source
                .query(
                    "SELECT schemaname::text || '.' || tablename::text FROM pg_publication_tables WHERE pubname = $1",
                    &[&publication],
                )
                .await?;
            let covered: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
            let missing: Vec<&String> = tables.iter().filter(|t| !covered.contains(t)).collect();
            if missing.is_empty() {
                return Ok(());
            }
            if !create {
                return Err(CdcError::Refused(format!(
                    "publication {publication} does not include {}",
                    missing
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            let list: Vec<String> = missing.iter().map(|t| quoted(t)).collect();
            source
                .batch_execute(&format!(
                    "ALTER PUBLICATION {} ADD TABLE {}",
                    quote_ident(publication),
                    list.join(", ")
                ))
                .await?;
            tracing::info!(publication, added = ?missing, "publication extended");
            Ok(())
        }
    }
}

/// What the server says about the slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotState {
    /// No such slot.
    Missing,
    /// Usable.
    Ready,
    /// The server removed WAL the slot needed (`wal_status = lost`) or it is not a
    /// `pgoutput` slot of this database.
    Unusable(String),
}

/// The slot's state.
pub async fn slot_state(source: &Client, slot: &str) -> Result<SlotState, CdcError> {
    let row = source
        .query_opt(
            "SELECT plugin::text, database::text = current_database(), COALESCE(wal_status, '')
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    Ok(match row {
        None => SlotState::Missing,
        Some(row) => {
            let plugin: Option<String> = row.get(0);
            let same_db: Option<bool> = row.get(1);
            let wal_status: String = row.get(2);
            if plugin.as_deref() != Some("pgoutput") || same_db != Some(true) {
                SlotState::Unusable(format!(
                    "slot {slot} is not a pgoutput slot of this database"
                ))
            } else if wal_status == "lost" {
                SlotState::Unusable(format!(
                    "slot {slot} lost WAL it needed (wal_status = lost)"
                ))
            } else {
                SlotState::Ready
            }
        }
    })
}

/// Drops the slot unless a session streams from it: another replica's slot is never
/// dropped (that session is left alone and this one retries later).
pub async fn drop_slot(source: &Client, slot: &str) -> Result<(), CdcError> {
    let active: Option<i32> = source
        .query_opt(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1 AND active",
            &[&slot],
        )
        .await?
        .and_then(|row| row.get(0));
    if let Some(pid) = active {
        return Err(CdcError::SlotInUse {
            slot: slot.to_string(),
            pid,
        });
    }
    source
        .execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
             WHERE slot_name = $1 AND NOT active",
            &[&slot],
        )
        .await?;
    Ok(())
}

/// WAL bytes between the server's position and the slot's confirmed position, and between
/// it and the oldest WAL the slot keeps.
pub async fn slot_lag(source: &Client, slot: &str) -> Result<Option<(i64, i64)>, CdcError> {
    let row = source
        .query_opt(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint,
                    pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    Ok(row.and_then(|r| Some((r.get::<_, Option<i64>>(0)?, r.get::<_, Option<i64>>(1)?))))
}

/// Writes a non-transactional logical message, which reaches the stream at once with a
/// position the source can confirm even when no captured table changes.
pub async fn heartbeat(source: &Client) -> Result<(), CdcError> {
    source
        .execute(
            "SELECT pg_logical_emit_message(false, $1, '')",
            &[&HEARTBEAT_PREFIX],
        )
        .await?;
    Ok(())
}

/// Per source: whether a snapshot (or, in mode `never`, the start of streaming) completed
/// on the current slot.
pub struct StateStore {
    client: Client,
    source: String,
}

/// A source's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRecord {
    /// The slot it was made on.
    pub slot: String,
    /// Whether the snapshot completed (or streaming began without one).
    pub complete: bool,
}

impl StateStore {
    /// Connects and creates the table if missing.
    pub async fn open(url: &str, source: &str) -> Result<Self, CdcError> {
        let client = connect(url, "state database").await?;
        client
            .batch_execute(
                "CREATE SCHEMA IF NOT EXISTS erpstream;
                 CREATE TABLE IF NOT EXISTS erpstream.cdc_sources (
                     source text PRIMARY KEY,
                     slot text NOT NULL,
                     consistent_lsn text,
                     snapshot_rows bigint NOT NULL DEFAULT 0,
                     started_at timestamptz NOT NULL DEFAULT now(),
                     completed_at timestamptz)",
            )
            .await?;
        Ok(Self {
            client,
            source: source.to_string(),
        })
    }

    /// The source's record, if it ran before.
    pub async fn load(&self) -> Result<Option<SourceRecord>, CdcError> {
        let row = self
            .client
            .query_opt(
                "SELECT slot, completed_at IS NOT NULL FROM erpstream.cdc_sources WHERE source = $1",
                &[&self.source],
            )
            .await?;
        Ok(row.map(|r| SourceRecord {
            slot: r.get(0),
            complete: r.get(1),
        }))
    }

    /// Records that a snapshot of a new slot began at `lsn`.
    pub async fn begin(&self, slot: &str, lsn: &str) -> Result<(), CdcError> {
        self.client
            .execute(
                "INSERT INTO erpstream.cdc_sources (source, slot, consistent_lsn) VALUES ($1, $2, $3)
                 ON CONFLICT (source) DO UPDATE SET slot = $2, consistent_lsn = $3, snapshot_rows = 0,
                     started_at = now(), completed_at = NULL",
                &[&self.source, &slot, &lsn],
            )
            .await?;
        Ok(())
    }

    /// Records that the snapshot completed with `rows` rows.
    pub async fn complete(&self, rows: i64) -> Result<(), CdcError> {
        self.client
            .execute(
                "UPDATE erpstream.cdc_sources SET completed_at = now(), snapshot_rows = $2 WHERE source = $1",
                &[&self.source, &rows],
            )
            .await?;
        Ok(())
    }
}

/// `name` as a quoted SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
