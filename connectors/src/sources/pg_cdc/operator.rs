//! The operators' controls of a `pg_cdc` source: its target, and a connection test that
//! checks what the source needs at start — the server, every captured table against its
//! mapping, the slot and its lag — on a connection of its own, changing nothing.

use std::sync::Arc;

use futures::future::BoxFuture;

use super::{PgCdcSource, control};
use crate::component::{Control, Outcome, Standing};

/// The controls, sharing the running source.
pub struct CdcControl(pub(super) Arc<PgCdcSource>);

impl Control for CdcControl {
    fn standing(&self) -> Standing {
        let source = &self.0;
        let tables: Vec<&str> = source.tables.iter().map(|t| t.name.as_str()).collect();
        Standing {
            target: Some(format!(
                "{} ({})",
                crate::postgres::redacted(&source.config.database),
                tables.join(", ")
            )),
            position: Some(format!("slot {}", source.config.slot)),
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
