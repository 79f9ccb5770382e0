//! The operators' controls of a `rest_poll` source: where it stands (last poll, circuit,
//! cursors), a connection test (the credentials check the poller starts with), and "sync
//! now" (a poll at once instead of at the next interval, answered with its outcome).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};

use super::api::Api;
use crate::component::{Control, Outcome, Readiness, Standing, Tried};

/// How long "sync now" waits for the poll it asked for.
const SYNC_WAIT: Duration = Duration::from_secs(60);

/// What the poll loop tells its controls.
#[derive(Debug, Default)]
pub struct Progress {
    /// The last poll that completed, RFC 3339.
    pub last_success: Option<String>,
    /// The last failure, cleared by a poll that completes.
    pub last_error: Option<String>,
    /// Whether the circuit is open.
    pub circuit_open: bool,
    /// Per resource, its cursor (the latest change time read).
    pub cursors: BTreeMap<String, String>,
}

/// A request for a poll now, answered with its outcome.
pub type PollNow = oneshot::Sender<Outcome>;

/// The controls, shared with the running source.
pub struct PollControl {
    pub(super) progress: Arc<Mutex<Progress>>,
    pub(super) api: Arc<Api>,
    pub(super) requests: mpsc::Sender<PollNow>,
    pub(super) readiness: Readiness,
    pub(super) target: String,
    pub(super) peer: &'static str,
    pub(super) first_collection: String,
    pub(super) preset: super::Preset,
    pub(super) resources: Vec<super::Resource>,
}

impl PollControl {
    fn progress(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Control for PollControl {
    fn standing(&self) -> Standing {
        let progress = self.progress();
        Standing {
            target: Some(self.target.clone()),
            last_success: progress.last_success.clone(),
            last_error: progress.last_error.clone(),
            circuit: Some(
                if progress.circuit_open {
                    "open"
                } else {
                    "closed"
                }
                .into(),
            ),
            position: (!progress.cursors.is_empty()).then(|| super::describe(&progress.cursors)),
        }
    }

    fn test(&self) -> BoxFuture<'static, Outcome> {
        let api = self.api.clone();
        let collection = self.first_collection.clone();
        let peer = self.peer;
        Box::pin(async move {
            match api.test_connection(&collection, false).await {
                Ok(user) => Outcome::ok(format!("{peer} accepted the credentials as {user}")),
                Err(err) => Outcome::failed(format!("{peer}: {err}")),
            }
        })
    }

    fn sync_action(&self) -> Option<&'static str> {
        Some("Sync now")
    }

    fn sync(&self) -> Option<BoxFuture<'static, Outcome>> {
        let requests = self.requests.clone();
        let standby = self.readiness.standing_by();
        Some(Box::pin(async move {
            if let Some(holder) = standby {
                return Outcome::failed(format!(
                    "this replica stands by ({holder}); the replica holding the lease polls"
                ));
            }
            let (answer, outcome) = oneshot::channel();
            if requests.send(answer).await.is_err() {
                return Outcome::failed("the poller is not running");
            }
            match tokio::time::timeout(SYNC_WAIT, outcome).await {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(_)) => Outcome::failed("the poller stopped before polling"),
                Err(_) => Outcome::failed(format!(
                    "no poll finished within {}s (the ERP may be slow; the poll goes on)",
                    SYNC_WAIT.as_secs()
                )),
            }
        }))
    }

    fn mappings(&self) -> Vec<String> {
        self.resources.iter().map(|r| r.name.clone()).collect()
    }

    fn try_mapping(&self, name: &str, sample: &[u8]) -> Option<Result<Vec<Tried>, String>> {
        let resource = self.resources.iter().find(|r| r.name == name)?.clone();
        Some(
            super::map_sample(self.preset, resource, sample)
                .map(|records| {
                    records
                        .into_iter()
                        .map(|r| r.map(|e| e.to_json()))
                        .collect()
                })
                .map_err(|err| err.to_string()),
        )
    }
}
