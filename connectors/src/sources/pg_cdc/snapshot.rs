//! Reads the captured tables as of the slot's exported snapshot: one repeatable-read
//! transaction that imports the snapshot, so every row committed before the slot's
//! consistent point is read and every later change comes from the stream — nothing missed,
//! nothing twice. Rows come in primary-key order, `chunk` at a time, through a cursor.
//! An operator's re-snapshot reads the tables again in a transaction of its own while the
//! stream goes on ([`SnapshotReader::begin_now`]).

use tokio_postgres::{Client, SimpleQueryMessage, SimpleQueryRow};

use super::CdcError;
use super::config::split_table;
use super::control::{TableShape, connect, quote_ident};

/// A snapshot transaction in progress.
pub struct SnapshotReader {
    client: Client,
    chunk: u32,
}

impl SnapshotReader {
    /// Opens a connection and imports `snapshot` (exported by the slot's creation, whose
    /// replication connection must stay open and idle until this returns).
    pub async fn begin(url: &str, snapshot: &str, chunk: u32) -> Result<Self, CdcError> {
        let client = connect(url, "snapshot").await?;
        client
            .batch_execute(&format!(
                "SET datestyle = ISO; SET timezone = 'UTC';
                 BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;
                 SET TRANSACTION SNAPSHOT '{}'",
                snapshot.replace('\'', "''")
            ))
            .await?;
        Ok(Self { client, chunk })
    }

    /// Opens a connection and a repeatable-read transaction of its own, for a re-snapshot
    /// while the stream goes on. Returns it with the transaction's start time (epoch ms, on
    /// the database's clock, the clock of the commit times streamed changes carry): its
    /// snapshot is taken after that moment, so every change it does not see committed later.
    pub async fn begin_now(url: &str, chunk: u32) -> Result<(Self, i64), CdcError> {
        let client = connect(url, "re-snapshot").await?;
        client
            .batch_execute(
                "SET datestyle = ISO; SET timezone = 'UTC';
                 BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
            )
            .await?;
        let started: i64 = client
            .query_one(
                "SELECT (extract(epoch FROM transaction_timestamp()) * 1000)::bigint",
                &[],
            )
            .await?
            .get(0);
        Ok((Self { client, chunk }, started))
    }

    /// Opens a cursor over `table` and returns its row count. Rows come back as
    /// `[xmin, columns...]` in the shape's column order.
    pub async fn open(&self, name: &str, shape: &TableShape) -> Result<u64, CdcError> {
        let (schema, table) = split_table(name).unwrap_or(("public", name));
        let relation = format!("{}.{}", quote_ident(schema), quote_ident(table));
        let columns: Vec<String> = shape.columns.iter().map(|c| quote_ident(&c.name)).collect();
        let order: Vec<String> = shape.key_names().into_iter().map(quote_ident).collect();
        let count = self
            .client
            .query_one(&format!("SELECT count(*) FROM {relation}"), &[])
            .await?
            .get::<_, i64>(0);
        self.client
            .batch_execute(&format!(
                "CLOSE ALL; DECLARE erpstream_snapshot NO SCROLL CURSOR FOR
                 SELECT xmin::text, {} FROM {relation} ORDER BY {}",
                columns.join(", "),
                order.join(", ")
            ))
            .await?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// The next rows of the open cursor; empty at the end.
    pub async fn next(&self) -> Result<Vec<SimpleQueryRow>, CdcError> {
        let messages = self
            .client
            .simple_query(&format!("FETCH {} FROM erpstream_snapshot", self.chunk))
            .await?;
        Ok(messages
            .into_iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(row) => Some(row),
                _ => None,
            })
            .collect())
    }

    /// Ends the transaction.
    pub async fn finish(self) -> Result<(), CdcError> {
        self.client.batch_execute("COMMIT").await?;
        Ok(())
    }
}
