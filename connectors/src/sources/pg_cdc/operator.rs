//! The operators' controls of a `pg_cdc` source: its target, and a connection test that
//! checks what the source needs at start — the server, every captured table against its
//! mapping, the slot and its lag — on a connection of its own, changing nothing — and the
//! mapping tester over its tables (a row given as JSON, mapped as a captured row would be).

use std::sync::Arc;

use futures::future::BoxFuture;

use super::{PgCdcSource, control};
use crate::component::{Control, Outcome, Standing, Tried};
use crate::sources::mapping::map_json_row;

/// The controls, sharing the running source.
pub struct CdcControl(pub(super) Arc<PgCdcSource>);

impl Control for CdcControl {
    fn sync_action(&self) -> Option<&'static str> {
        Some("Re-snapshot")
    }

    fn sync(&self) -> Option<BoxFuture<'static, Outcome>> {
        let source = self.0.clone();
        Some(Box::pin(async move {
            match source.resnapshot().await {
                Ok((rows, tables)) => Outcome::ok(format!(
                    "read {rows} row(s) of {tables} table(s) again and published them, stamped \
                     as of the read, so changes committed since still win"
                )),
                Err(err) => Outcome::failed(format!("the re-snapshot failed: {err}")),
            }
        }))
    }

    fn mappings(&self) -> Vec<String> {
        self.0.tables.iter().map(|t| t.name.clone()).collect()
    }

    fn try_mapping(&self, name: &str, sample: &[u8]) -> Option<Result<Vec<Tried>, String>> {
        let table = self.0.tables.iter().find(|t| t.name == name)?;
        let rows = match serde_json::from_slice::<serde_json::Value>(sample) {
            Ok(serde_json::Value::Object(row)) => vec![row],
            Ok(serde_json::Value::Array(rows)) => {
                match rows
                    .into_iter()
                    .map(|row| match row {
                        serde_json::Value::Object(row) => Some(row),
                        _ => None,
                    })
                    .collect::<Option<Vec<_>>>()
                {
                    Some(rows) => rows,
                    None => {
                        return Some(Err(
                            "every item of the array must be a row (an object of columns)".into(),
                        ));
                    }
                }
            }
            Ok(_) => {
                return Some(Err(
                    "a row is an object of columns (or give an array of rows)".into(),
                ));
            }
            Err(err) => return Some(Err(format!("the sample is not JSON: {err}"))),
        };
        Some(Ok(rows
            .iter()
            .map(|row| map_json_row(&table.mapping, table.kind, row, "column").map(|e| e.to_json()))
            .collect()))
    }

    fn standing(&self) -> Standing {
        let source = &self.0;
        let tables: Vec<&str> = source.tables.iter().map(|t| t.name.as_str()).collect();
        let progress = source
            .progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Standing {
            target: Some(format!(
                "{} ({})",
                crate::postgres::redacted(&source.config.database),
                tables.join(", ")
            )),
            position: Some(match &progress.confirmed {
                Some(lsn) => format!("slot {}, confirmed up to LSN {lsn}", source.config.slot),
                None => format!("slot {}, not streaming yet", source.config.slot),
            }),
            last_success: progress.last_published.map(erpstream_schemas::rfc3339),
            ..Standing::default()
        }
    }

    fn test(&self) -> BoxFuture<'static, Outcome> {
        let source = self.0.clone();
        Box::pin(async move {
            let checked = async {
                let client = control::connect(&source.config.database, "source database").await?;
                control::check_server(&client).await?;
                let bound = source.bind_all(&client).await?;
                let slot = match control::slot_state(&client, &source.config.slot).await? {
                    control::SlotState::Missing => "not created yet".to_string(),
                    control::SlotState::Unusable(why) => format!("unusable: {why}"),
                    control::SlotState::Ready => {
                        match control::slot_lag(&client, &source.config.slot).await? {
                            Some((lag, retained)) => format!(
                                "ready, {} behind, {} of WAL retained",
                                bytesize::ByteSize::b(lag.max(0) as u64),
                                bytesize::ByteSize::b(retained.max(0) as u64)
                            ),
                            None => "ready".to_string(),
                        }
                    }
                };
                Ok::<_, super::CdcError>(format!(
                    "the database answers with logical replication; {} table(s) match their mappings; slot {}: {slot}",
                    bound.len(),
                    source.config.slot
                ))
            };
            match checked.await {
                Ok(detail) => Outcome::ok(detail),
                Err(err) => Outcome::failed(err.to_string()),
            }
        })
    }
}
