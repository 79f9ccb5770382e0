//! What a component tells `/readyz`.

use std::sync::{Arc, Mutex};

/// Whether a component can do its work now, or why not, in words an operator can act on
/// ("restoring the delivery guard of 3 partitions", "partitions revoked: rebalancing").
///
/// A component starts not ready and says when it is; a consumer turns not ready the moment
/// its group takes partitions away and ready again only once the state for its new
/// assignment is restored ([`TrackingContext`](crate::kafka::TrackingContext) does this).
#[derive(Debug, Clone)]
pub struct Readiness {
    state: Arc<Mutex<Option<String>>>,
}

impl Readiness {
    /// Not ready yet, for `reason`.
    pub fn not_yet(reason: impl Into<String>) -> Self {
        Self {
            state: Arc::new(Mutex::new(Some(reason.into()))),
        }
    }

    /// The component can work.
    pub fn ready(&self) {
        *self.lock() = None;
    }

    /// The component cannot work now, for `reason`.
    pub fn not_ready(&self, reason: impl Into<String>) {
        *self.lock() = Some(reason.into());
    }

    /// `Ok` when ready, else why not.
    pub fn status(&self) -> Result<(), String> {
        match &*self.lock() {
            None => Ok(()),
            Some(reason) => Err(reason.clone()),
        }
    }

    /// Whether the component can work now.
    pub fn is_ready(&self) -> bool {
        self.lock().is_none()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}
