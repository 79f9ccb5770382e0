//! Streaming after the snapshot: pgoutput messages decoded, grouped into transactions, their
//! records published in commit order, and the LSN confirmed only once the broker
//! acknowledged everything up to it.

use super::*;

impl PgCdcSource {
    /// Streams changes until shutdown or an error.
    pub(super) async fn stream(
        &self,
        mut client: ReplicationClient,
        source: tokio_postgres::Client,
        tables: HashMap<String, (Arc<Table>, Vec<String>)>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), CdcError> {
        let mut decoder = Decoder::new(&self.id, &self.config.source_system, tables);
        let mut inflight: FuturesOrdered<BoxFuture<'static, Result<Done, PublishError>>> =
            FuturesOrdered::new();
        let mut pending_records = 0usize;
        let mut txn: Option<Txn> = None;
        let mut heartbeat = tokio::time::interval(self.config.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let max_lag = i64::try_from(self.config.max_lag.as_u64()).unwrap_or(i64::MAX);
        loop {
            let event = tokio::select! {
                _ = shutdown.changed() => break,
                Some(done) = inflight.next(), if !inflight.is_empty() => {
                    let done = done?;
                    pending_records -= done.records;
                    client.update_applied_lsn(done.end_lsn);
                    self.confirmed(done.end_lsn, done.records > 0);
                    if let Some(commit_ms) = done.commit_ms {
                        let seconds = (now_millis() - commit_ms).max(0) as f64 / 1000.0;
                        metrics::histogram!(COMMIT_TO_ACK, m::COMPONENT_ID => self.id.clone()).record(seconds);
                    }
                    metrics::counter!(m::SENT_EVENTS, m::COMPONENT_ID => self.id.clone(),
                        m::COMPONENT_TYPE => TYPE).increment(done.records as u64);
                    continue;
                }
                _ = heartbeat.tick() => {
                    control::heartbeat(&source).await?;
                    if let Some((lag, retained)) = control::slot_lag(&source, &self.config.slot).await? {
                        metrics::gauge!(SLOT_LAG, m::COMPONENT_ID => self.id.clone()).set(lag as f64);
                        metrics::gauge!(SLOT_RETAINED, m::COMPONENT_ID => self.id.clone()).set(retained as f64);
                        if lag > max_lag {
                            if self.ready.is_ready() {
                                tracing::warn!(lag_bytes = lag, max_lag = max_lag, "slot lag above max_lag; not ready");
                            }
                            self.ready.not_ready(format!("slot lag {lag} bytes is above max_lag {max_lag}"));
                        } else {
                            self.ready.ready();
                        }
                    }
                    continue;
                }
                event = client.recv(), if pending_records < MAX_PENDING => event?,
            };
            let Some(event) = event else {
                return Err(CdcError::Decode("the server ended the stream".into()));
            };
            match event {
                ReplicationEvent::Begin {
                    final_lsn,
                    commit_time_micros,
                    ..
                } => {
                    txn = Some(Txn {
                        position: Position {
                            commit_lsn: final_lsn,
                            commit_ms: (commit_time_micros + PG_EPOCH_MICROS) / 1000,
                            changes: 0,
                        },
                        acks: Vec::new(),
                    });
                }
                ReplicationEvent::Commit { end_lsn, .. } => {
                    let Some(done) = txn.take() else {
                        continue;
                    };
                    pending_records += done.acks.len();
                    let records = done.acks.len();
                    let commit_ms = done.position.commit_ms;
                    let acks = done.acks;
                    inflight.push_back(Box::pin(async move {
                        futures::future::try_join_all(acks).await?;
                        Ok(Done {
                            end_lsn,
                            records,
                            commit_ms: (records > 0).then_some(commit_ms),
                        })
                    }));
                }
                ReplicationEvent::Message {
                    lsn, transactional, ..
                } => {
                    if !transactional && txn.is_none() {
                        inflight.push_back(Box::pin(async move {
                            Ok(Done {
                                end_lsn: lsn,
                                records: 0,
                                commit_ms: None,
                            })
                        }));
                    }
                }
                ReplicationEvent::KeepAlive { wal_end, .. } => {
                    if txn.is_none() && inflight.is_empty() && pending_records == 0 {
                        client.update_applied_lsn(wal_end);
                        self.confirmed(wal_end, false);
                    }
                }
                ReplicationEvent::XLogData { data, .. } => {
                    let position = txn.as_mut().map(|t| &mut t.position);
                    if let Some(decided) = decoder.decode(data, position)? {
                        let ack = self
                            .publish(
                                &decided.table,
                                decided.change,
                                &decided.identity,
                                &decided.position,
                            )
                            .await?;
                        if let (Some(ack), Some(txn)) = (ack, txn.as_mut()) {
                            txn.acks.push(ack);
                        }
                    }
                }
                ReplicationEvent::StoppedAt { .. } => break,
            }
            if !self.ready.is_ready() && txn.is_none() {
                self.ready.ready();
            }
        }
        // Shutting down: wait briefly for what is in flight so its position is confirmed.
        let drain = async {
            while let Some(done) = inflight.next().await {
                match done {
                    Ok(done) => client.update_applied_lsn(done.end_lsn),
                    Err(_) => break,
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
        tokio::time::sleep(Duration::from_millis(600)).await;
        let _ = client.shutdown().await;
        Ok(())
    }
}

/// A transaction being received.
struct Txn {
    /// Where its changes sit.
    position: Position,
    /// The broker's acknowledgements still to come.
    acks: Vec<PendingAck>,
}

/// A transaction (or heartbeat) whose records the broker acknowledged.
pub(super) struct Done {
    end_lsn: Lsn,
    records: usize,
    commit_ms: Option<i64>,
}

impl PgCdcSource {
    /// Remembers `lsn` as confirmed, and now as the last publication if it `published`.
    fn confirmed(&self, lsn: Lsn, published: bool) {
        let mut progress = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        progress.confirmed = Some(lsn.to_string());
        if published {
            progress.last_published = Some(now_millis());
        }
    }
}
