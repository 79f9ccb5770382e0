//! What a component tells `/readyz`.

use std::sync::{Arc, Mutex};

/// Whether a component can do its work now, or why not, in words an operator can act on
/// ("restoring the delivery guard of 3 partitions", "partitions revoked: rebalancing").
///
/// A component starts not ready and says when it is; a consumer turns not ready the moment
/// its group takes partitions away and ready again only once the state for its new
/// assignment is restored ([`TrackingContext`](crate::kafka::TrackingContext) does this).
/// A component that runs on one replica at a time (see [`Lease`](super::Lease)) is
/// *standing by* on the others: ready (the replica serves everything else), with the reason
/// shown.
#[derive(Debug, Clone)]
pub struct Readiness {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Clone)]
enum State {
    Ready,
    NotReady(String),
    Standby(String),
}

impl Readiness {
    /// Not ready yet, for `reason`.
    pub fn not_yet(reason: impl Into<String>) -> Self {
        Self {
            state: Arc::new(Mutex::new(State::NotReady(reason.into()))),
        }
    }

    /// The component can work.
    pub fn ready(&self) {
        *self.lock() = State::Ready;
    }

    /// The component cannot work now, for `reason`.
    pub fn not_ready(&self, reason: impl Into<String>) {
        *self.lock() = State::NotReady(reason.into());
    }

    /// Another replica does the component's work; `reason` says which.
    pub fn standby(&self, reason: impl Into<String>) {
        *self.lock() = State::Standby(reason.into());
    }

    /// `Ok` when ready or standing by, else why not.
    pub fn status(&self) -> Result<(), String> {
        match &*self.lock() {
            State::Ready | State::Standby(_) => Ok(()),
            State::NotReady(reason) => Err(reason.clone()),
        }
    }

    /// Why the component stands by, if it does.
    pub fn standing_by(&self) -> Option<String> {
        match &*self.lock() {
            State::Standby(reason) => Some(reason.clone()),
            _ => None,
        }
    }

    /// Whether the component can work now (standing by counts).
    pub fn is_ready(&self) -> bool {
        self.status().is_ok()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}
