//! Admission control for the routes that take data in (webhooks, storefront orders and
//! adjustments, planning sync): when the broker or the pipeline behind it is slower than the
//! load, a request is refused at the door — `503` with `Retry-After`, before its body is
//! read — instead of being accepted into a queue whose latency already breaks the 5-second
//! budget. A refused request stored nothing; the sender retries it later with the same
//! idempotency key.
//!
//! Three signals, each checked per request and cheap:
//! - **in flight**: requests admitted and not yet answered (`max_in_flight`);
//! - **acknowledgements**: the oldest admitted request has waited longer than
//!   `max_ack_wait` (the broker is acknowledging slowly *now*; the signal clears as soon as
//!   the old requests are answered);
//! - **pipeline lag**: a stage on the way to the storefront handled a record that entered
//!   erpstream more than `max_lag` ago, within the last second — the processors as they read
//!   a batch, the storefront sink as it reads a record and as it completes a first-attempt
//!   delivery (records queue in the sink when the storefront is slower than the load). A stage
//!   that stopped (its own downstream is down; deliveries in retry) stops counting after a
//!   second: ingest then stays open and the records wait durably on the broker.
//!
//! Every refusal is counted in `erpstream_http_shed_total{component_id, reason}`; the lag the
//! gate sees is `erpstream_admission_lag_seconds`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use serde::Deserialize;

use crate::metrics as m;
use crate::sources::http;
use crate::validation::{Checks, Problem};

/// `http.admission` in the topology.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdmissionConfig {
    /// Ingest requests admitted and not yet answered, over every ingest route.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Longest time the oldest admitted request may wait for the broker before new ones are
    /// refused.
    #[serde(default = "default_max_ack_wait", with = "humantime_serde")]
    pub max_ack_wait: Duration,
    /// Largest age of the records the pipeline's stages are handling before new requests are
    /// refused (the end-to-end budget is 5 s; the default 3 s leaves 2 s for the records
    /// already accepted to reach the storefront).
    #[serde(default = "default_max_lag", with = "humantime_serde")]
    pub max_lag: Duration,
}

fn default_max_in_flight() -> usize {
    5_000
}
fn default_max_ack_wait() -> Duration {
    Duration::from_secs(1)
}
fn default_max_lag() -> Duration {
    Duration::from_secs(3)
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            max_in_flight: default_max_in_flight(),
            max_ack_wait: default_max_ack_wait(),
            max_lag: default_max_lag(),
        }
    }
}

impl AdmissionConfig {
    /// Every problem with the settings, by path below `at`.
    pub fn validate(&self, at: &str) -> Vec<Problem> {
        Checks::new(at)
            .positive("max_in_flight", self.max_in_flight > 0)
            .positive("max_ack_wait", !self.max_ack_wait.is_zero())
            .positive("max_lag", !self.max_lag.is_zero())
            .done()
    }
}

/// A stage's lag report is counted for this long after it was made.
const REPORT_FRESH: Duration = Duration::from_secs(1);

/// The gate every ingest route passes; cheap to clone (one shared state).
#[derive(Clone)]
pub struct Admission {
    inner: Arc<Inner>,
}

struct Inner {
    config: AdmissionConfig,
    /// When each admitted, unanswered request came in, by ticket.
    in_flight: Mutex<InFlight>,
    stages: Mutex<Vec<(String, Arc<StageLag>)>>,
    epoch: Instant,
}

#[derive(Default)]
struct InFlight {
    next: u64,
    started: BTreeMap<u64, Instant>,
}

/// The last lag a stage reported, in milliseconds since the gate's epoch.
#[derive(Default)]
struct StageLag {
    lag_ms: AtomicU64,
    reported_at_ms: AtomicU64,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Shed {
    /// `max_in_flight` requests are already waiting.
    InFlight(usize),
    /// The oldest admitted request has waited this long for the broker.
    SlowAcks(Duration),
    /// Stage `stage` is reading records this old.
    Lag {
        /// The stage's id.
        stage: String,
        /// How far behind it is.
        lag: Duration,
    },
}

impl Shed {
    /// The metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Shed::InFlight(_) => "in_flight",
            Shed::SlowAcks(_) => "slow_acks",
            Shed::Lag { .. } => "pipeline_lag",
        }
    }

    /// Seconds the sender should wait: long enough for the backlog it saw to clear.
    pub fn retry_after_secs(&self) -> u64 {
        match self {
            Shed::InFlight(_) => 1,
            Shed::SlowAcks(waited) => waited.as_secs().clamp(1, 30),
            Shed::Lag { lag, .. } => lag.as_secs().clamp(1, 30),
        }
    }
}

impl std::fmt::Display for Shed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Shed::InFlight(n) => write!(f, "overloaded: {n} requests already waiting"),
            Shed::SlowAcks(waited) => write!(
                f,
                "overloaded: the broker has kept a request waiting {} ms",
                waited.as_millis()
            ),
            Shed::Lag { stage, lag } => {
                write!(f, "overloaded: {stage} is {} ms behind", lag.as_millis())
            }
        }
    }
}

/// An admitted request; dropping it (the answer went out) frees its place.
pub struct Permit {
    inner: Arc<Inner>,
    ticket: u64,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.inner.lock_in_flight().started.remove(&self.ticket);
    }
}

/// Where a consuming stage reports how old the records it reads are.
#[derive(Clone)]
pub struct LagReporter {
    stage: Arc<StageLag>,
    epoch: Instant,
}

impl LagReporter {
    /// The stage is handling a record that entered erpstream at `timestamp_ms` (Unix
    /// milliseconds: the broker timestamp, or the time it was accepted). The gate sees the
    /// largest age reported within the current half second, so reports from several points
    /// of a stage (reading, delivering) do not hide each other.
    pub fn observe(&self, timestamp_ms: i64) {
        let lag = (erpstream_schemas::now_millis() - timestamp_ms).max(0) as u64;
        let now = self.epoch.elapsed().as_millis() as u64;
        let previous = self.stage.reported_at_ms.swap(now, Ordering::Relaxed);
        if previous / BUCKET_MS == now / BUCKET_MS {
            self.stage.lag_ms.fetch_max(lag, Ordering::Relaxed);
        } else {
            self.stage.lag_ms.store(lag, Ordering::Relaxed);
        }
    }
}

/// Reports within one bucket of this many milliseconds keep their largest lag.
const BUCKET_MS: u64 = 500;

impl Admission {
    /// A gate with these limits.
    pub fn new(config: AdmissionConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                in_flight: Mutex::default(),
                stages: Mutex::default(),
                epoch: Instant::now(),
            }),
        }
    }

    /// Admits a request or says why not.
    pub fn admit(&self) -> Result<Permit, Shed> {
        let config = &self.inner.config;
        if let Some((stage, lag)) = self.lag()
            && lag > config.max_lag
        {
            return Err(Shed::Lag { stage, lag });
        }
        let mut in_flight = self.inner.lock_in_flight();
        if in_flight.started.len() >= config.max_in_flight {
            return Err(Shed::InFlight(in_flight.started.len()));
        }
        if let Some((_, oldest)) = in_flight.started.first_key_value() {
            let waited = oldest.elapsed();
            if waited > config.max_ack_wait {
                return Err(Shed::SlowAcks(waited));
            }
        }
        let ticket = in_flight.next;
        in_flight.next += 1;
        in_flight.started.insert(ticket, Instant::now());
        Ok(Permit {
            inner: Arc::clone(&self.inner),
            ticket,
        })
    }

    /// The reporter of consuming stage `id` (one per stage; its reports count for the gate).
    pub fn stage(&self, id: &str) -> LagReporter {
        let stage = Arc::new(StageLag::default());
        self.inner
            .stages
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((id.to_string(), Arc::clone(&stage)));
        LagReporter {
            stage,
            epoch: self.inner.epoch,
        }
    }

    /// The largest fresh lag a stage reported, and which stage.
    fn lag(&self) -> Option<(String, Duration)> {
        let now = self.inner.epoch.elapsed().as_millis() as u64;
        let fresh = REPORT_FRESH.as_millis() as u64;
        let stages = self.inner.stages.lock().unwrap_or_else(|p| p.into_inner());
        let worst = stages
            .iter()
            .filter(|(_, s)| now.saturating_sub(s.reported_at_ms.load(Ordering::Relaxed)) <= fresh)
            .map(|(id, s)| (id, s.lag_ms.load(Ordering::Relaxed)))
            .max_by_key(|(_, lag)| *lag)?;
        metrics::gauge!(m::ADMISSION_LAG).set(worst.1 as f64 / 1000.0);
        Some((worst.0.clone(), Duration::from_millis(worst.1)))
    }

    /// Middleware for the ingest routes of component `component_id`: admits the request
    /// before its body is read, holds the permit until the answer is ready, and answers a
    /// refusal with `503` and `Retry-After`.
    pub async fn gate(
        State((admission, component_id)): State<(Admission, Arc<str>)>,
        request: Request,
        next: Next,
    ) -> Response {
        match admission.admit() {
            Ok(permit) => {
                let response = next.run(request).await;
                drop(permit);
                response
            }
            Err(shed) => {
                metrics::counter!(m::SHED, m::COMPONENT_ID => component_id.to_string(),
                    m::REASON => shed.reason())
                .increment(1);
                http::retry_later(&shed.to_string(), shed.retry_after_secs())
            }
        }
    }

    /// Wraps `router` (a component's ingest routes) in the gate.
    pub fn guard<S>(&self, component_id: &str, router: axum::Router<S>) -> axum::Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        router.layer(axum::middleware::from_fn_with_state(
            (self.clone(), Arc::<str>::from(component_id)),
            Self::gate,
        ))
    }
}

impl Inner {
    fn lock_in_flight(&self) -> std::sync::MutexGuard<'_, InFlight> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(max_in_flight: usize, max_ack_wait_ms: u64, max_lag_ms: u64) -> Admission {
        Admission::new(AdmissionConfig {
            max_in_flight,
            max_ack_wait: Duration::from_millis(max_ack_wait_ms),
            max_lag: Duration::from_millis(max_lag_ms),
        })
    }

    #[test]
    fn requests_beyond_the_in_flight_limit_are_refused_until_one_is_answered() {
        let admission = gate(2, 60_000, 60_000);
        let first = admission.admit().expect("first");
        let _second = admission.admit().expect("second");
        assert_eq!(admission.admit().err(), Some(Shed::InFlight(2)));
        drop(first);
        assert!(admission.admit().is_ok());
    }

    #[test]
    fn a_request_kept_waiting_too_long_closes_the_gate_until_it_is_answered() {
        let admission = gate(100, 20, 60_000);
        let slow = admission.admit().expect("first");
        std::thread::sleep(Duration::from_millis(40));
        let shed = admission.admit().err().expect("refused");
        assert_eq!(shed.reason(), "slow_acks");
        assert!(shed.to_string().contains("kept a request waiting"));
        drop(slow);
        assert!(admission.admit().is_ok());
    }

    #[test]
    fn a_stage_handling_old_records_closes_the_gate_until_it_reports_less_or_goes_quiet() {
        let admission = gate(100, 60_000, 1_000);
        let reporter = admission.stage("inventory");
        reporter.observe(erpstream_schemas::now_millis() - 3_000);
        match admission.admit().err() {
            Some(Shed::Lag { stage, lag }) => {
                assert_eq!(stage, "inventory");
                assert!(lag >= Duration::from_millis(3_000), "{lag:?}");
                assert_eq!(Shed::Lag { stage, lag }.retry_after_secs(), 3);
            }
            other => panic!("expected a lag refusal, got {other:?}"),
        }
        // Within the same half second the larger lag stands; a later report replaces it.
        reporter.observe(erpstream_schemas::now_millis());
        assert!(
            admission.admit().is_err(),
            "the larger lag of the bucket stands"
        );
        std::thread::sleep(Duration::from_millis(BUCKET_MS + 50));
        reporter.observe(erpstream_schemas::now_millis());
        assert!(admission.admit().is_ok());
        std::thread::sleep(Duration::from_millis(BUCKET_MS + 50));
        reporter.observe(erpstream_schemas::now_millis() - 3_000);
        assert!(admission.admit().is_err());
        std::thread::sleep(REPORT_FRESH + Duration::from_millis(100));
        assert!(
            admission.admit().is_ok(),
            "a report older than a second no longer counts"
        );
    }

    #[test]
    fn limits_must_be_positive() {
        let problems = AdmissionConfig {
            max_in_flight: 0,
            max_ack_wait: Duration::ZERO,
            max_lag: Duration::from_secs(1),
        }
        .validate("http.admission");
        let paths: Vec<String> = problems.iter().map(|p| p.path.clone()).collect();
        assert_eq!(
            paths,
            [
                "http.admission.max_in_flight",
                "http.admission.max_ack_wait"
            ]
        );
    }
}
