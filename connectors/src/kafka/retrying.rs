//! Waiting out outages: the one retry loop every consumer uses for work that must not be
//! skipped (decoding through the registry, publishing effects, restoring state).
//!
//! Errors say where they are made whether trying again may help ([`Retriable`]); the loop
//! retries those with capped exponential backoff until they succeed or shutdown comes, and
//! hands the others back, so the caller dead-letters the record (its data is at fault) or
//! stops the component (its configuration or the broker refuses it for good).

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use erpstream_schemas::CodecError;
use rdkafka::error::KafkaError;
use tokio::sync::watch;

use super::PublishError;

/// Whether a failed operation may succeed if it is simply tried again later.
pub trait Retriable {
    /// `true` for outages (network, timeouts, 5xx, a broker or database restarting).
    fn is_retriable(&self) -> bool;
}

impl Retriable for CodecError {
    fn is_retriable(&self) -> bool {
        CodecError::is_retriable(self)
    }
}

impl Retriable for PublishError {
    fn is_retriable(&self) -> bool {
        PublishError::is_retriable(self)
    }
}

impl Retriable for KafkaError {
    fn is_retriable(&self) -> bool {
        // A consumer or admin call fails for good only on misconfiguration, which stops the
        // component at build time; at run time the broker is restarting or unreachable.
        true
    }
}

impl Retriable for tokio_postgres::Error {
    fn is_retriable(&self) -> bool {
        // A closed connection or an I/O failure is an outage; an error the server returned
        // for a statement (a constraint, a type) stays until the data or schema changes.
        self.is_closed() || self.code().is_none()
    }
}

/// First wait after a failure.
const FIRST_WAIT: Duration = Duration::from_millis(100);
/// Longest wait between attempts.
const MAX_WAIT: Duration = Duration::from_secs(5);

/// Runs `attempt` until it succeeds or fails with an error that is not retriable (handed
/// back as `Some(Err)`), sleeping 100 ms, doubling to 5 s, between retriable failures, each
/// logged as "`what` failed; retrying". `None` if shutdown came first: the caller stops
/// without the result and stores no offset for the work it belonged to.
pub async fn retrying<T, E, F, Fut>(
    what: &str,
    shutdown: &mut watch::Receiver<bool>,
    mut attempt: F,
) -> Option<Result<T, E>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: Retriable + Display,
{
    let mut backoff = Backoff::default();
    let mut failures = 0u32;
    loop {
        match attempt().await {
            Ok(value) => {
                if failures > 0 {
                    tracing::info!(failures, "{what} succeeded after retrying");
                }
                return Some(Ok(value));
            }
            Err(err) if err.is_retriable() => {
                failures += 1;
                tracing::warn!(error = %err, attempt = failures, "{what} failed; retrying");
                if backoff.sleep(shutdown).await {
                    return None;
                }
            }
            Err(err) => return Some(Err(err)),
        }
    }
}

/// The waits between attempts of [`retrying`]: 100 ms, doubling to 5 s — for a retry loop
/// whose attempt `retrying` cannot take (one that borrows its caller mutably).
#[derive(Debug)]
pub struct Backoff {
    wait: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { wait: FIRST_WAIT }
    }
}

impl Backoff {
    /// Sleeps the next wait; `true` if shutdown was asked for first.
    pub async fn sleep(&mut self, shutdown: &mut watch::Receiver<bool>) -> bool {
        let stop = sleep_or_shutdown(self.wait, shutdown).await;
        self.wait = (self.wait * 2).min(MAX_WAIT);
        stop
    }
}

/// Sleeps `delay`; `true` if shutdown was asked for first (or already had been).
pub async fn sleep_or_shutdown(delay: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    if *shutdown.borrow() {
        return true;
    }
    tokio::select! {
        _ = shutdown_requested(shutdown) => true,
        _ = tokio::time::sleep(delay) => false,
    }
}

/// A shutdown signal that never comes: for work that must finish even while the component
/// shuts down (a guard write after a delivery), bounded by the caller's drain deadline.
pub fn never() -> watch::Receiver<bool> {
    watch::channel(false).1
}

/// Completes when shutdown is asked for; never, if nobody can ask any more.
pub async fn shutdown_requested(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[derive(Debug)]
    struct Failed(bool);
    impl Display for Failed {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "failed (retriable: {})", self.0)
        }
    }
    impl Retriable for Failed {
        fn is_retriable(&self) -> bool {
            self.0
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retriable_failures_are_retried_until_success() {
        let (_tx, mut rx) = watch::channel(false);
        let calls = AtomicU32::new(0);
        let result = retrying("op", &mut rx, || async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0..=3 => Err(Failed(true)),
                n => Ok(n),
            }
        })
        .await;
        assert!(matches!(result, Some(Ok(4))));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lasting_failure_is_handed_back_at_once() {
        let (_tx, mut rx) = watch::channel(false);
        let calls = AtomicU32::new(0);
        let result: Option<Result<(), Failed>> = retrying("op", &mut rx, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(Failed(false))
        })
        .await;
        assert!(matches!(result, Some(Err(Failed(false)))));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_the_wait() {
        let (tx, mut rx) = watch::channel(false);
        let stop = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            tx.send(true).ok();
            tx
        });
        let result: Option<Result<(), Failed>> =
            retrying("op", &mut rx, || async { Err(Failed(true)) }).await;
        assert!(result.is_none());
        drop(stop);
    }
}
