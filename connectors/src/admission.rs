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
//!   the old requests are acknowledged);
//! - **pipeline lag**: the oldest record this process published to a topic that one of its
//!   stages on the way to the storefront (the processors, the storefront sink) reads, on a
//!   partition that stage is assigned, and that the stage has not read yet, is older than
//!   `max_lag` — or, once that record is a quarter of `max_lag` old, the unread records would
//!   take longer than `max_lag` to read at the pace the stage has been reading them, so the
//!   gate closes before the wait has built up rather than after. The gate follows the queues
//!   themselves — acknowledged offsets against read offsets — so a stage that makes no
//!   progress at all (a slow broker fetch, a stalled batch) keeps the gate shut instead of
//!   falling silent. A stage that is not assigned a
//!   partition does not count it (another replica reads it).
//!
//! An admitted request is answered within `max_ack_wait` of its body being read: if the
//! broker has not acknowledged it by then, the answer is `503` + `Retry-After` (reason
//! `unacknowledged`) while the handler finishes on its own task — the record may still be
//! stored, and the sender's retry is deduplicated by its idempotency key downstream. So no
//! sender waits on a slow broker longer than that, and nothing is answered `202` that the
//! broker has not acknowledged.
//!
//! Every refusal is counted in `erpstream_http_shed_total{component_id, reason}`; the lag the
//! gate sees is `erpstream_admission_lag_seconds`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use serde::Deserialize;

use crate::kafka::{Ack, AckObserver};
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
    /// Longest time an admitted request waits for the broker once its body is read: it is
    /// answered `503` then (whatever it started still completes, so it may be stored; its
    /// retry is deduplicated by its idempotency key), and while the oldest admitted request
    /// has waited this long new ones are refused.
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
    Duration::from_millis(800)
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

/// The gate every ingest route passes; cheap to clone (one shared state).
#[derive(Clone)]
pub struct Admission {
    inner: Arc<Inner>,
}

struct Inner {
    config: AdmissionConfig,
    /// When each admitted, unanswered request came in, by ticket.
    in_flight: Mutex<InFlight>,
    /// The watched partitions by topic: what was published to them and not read yet (looked
    /// up per acknowledgement by `&str`, so an ack allocates nothing).
    queues: Mutex<HashMap<String, HashMap<i32, Queue>>>,
}

/// Records published to one watched partition and not yet read by its stage.
struct Queue {
    stage: Arc<str>,
    /// (offset, when it was queued), oldest first; at most [`QUEUE_CAP`] are kept (the
    /// oldest is what the gate needs).
    unread: VecDeque<(i64, Instant)>,
    /// Records read since `window_start`.
    drained: usize,
    window_start: Instant,
    /// Records per second the stage read this queue at lately (`None` before a first window).
    drain_rate: Option<f64>,
}

impl Queue {
    fn new(stage: Arc<str>) -> Self {
        Self {
            stage,
            unread: VecDeque::new(),
            drained: 0,
            window_start: Instant::now(),
            drain_rate: None,
        }
    }

    /// The stage read `count` more records.
    fn note_read(&mut self, count: usize) {
        self.drained += count;
        let elapsed = self.window_start.elapsed();
        if elapsed >= DRAIN_WINDOW {
            let rate = self.drained as f64 / elapsed.as_secs_f64();
            self.drain_rate = Some(self.drain_rate.map_or(rate, |r| (r + rate) / 2.0));
            self.drained = 0;
            self.window_start = Instant::now();
        }
    }

    /// How long a record queued now would wait: the oldest unread record's age — or, once
    /// that passes `backing_up` (the queue is visibly not keeping up), the time the stage
    /// needs to read what is unread and the `waiting` records still on their way to the
    /// broker at its recent pace, if that is longer. The pace counts only once the queue
    /// backs up because a stage that keeps up reads at the arrival rate, not at what it could
    /// do, and a burst would look like a long wait.
    fn wait(&self, backing_up: Duration, waiting: usize) -> Option<Duration> {
        let oldest = self.unread.front()?.1.elapsed();
        let ahead = match self.drain_rate {
            Some(rate) if oldest >= backing_up && rate > 0.0 => {
                Duration::from_secs_f64((self.unread.len() + waiting) as f64 / rate)
            }
            _ => Duration::ZERO,
        };
        Some(oldest.max(ahead))
    }
}

/// Most unread records remembered per partition.
const QUEUE_CAP: usize = 100_000;
/// Over how long a stage's reading pace is measured.
const DRAIN_WINDOW: Duration = Duration::from_millis(500);

#[derive(Default)]
struct InFlight {
    next: u64,
    started: BTreeMap<u64, Instant>,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Shed {
    /// `max_in_flight` requests are already waiting.
    InFlight(usize),
    /// The oldest admitted request has waited this long for the broker.
    SlowAcks(Duration),
    /// The request was admitted, but the broker had not acknowledged it `max_ack_wait` after
    /// its body was read; it may still be stored, and its retry is deduplicated by its
    /// idempotency key.
    Unacknowledged(Duration),
    /// A record accepted now would wait this long for stage `stage`.
    Lag {
        /// The stage's id.
        stage: String,
        /// The wait (how far behind the stage is).
        lag: Duration,
    },
}

impl Shed {
    /// The metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Shed::InFlight(_) => "in_flight",
            Shed::SlowAcks(_) => "slow_acks",
            Shed::Unacknowledged(_) => "unacknowledged",
            Shed::Lag { .. } => "pipeline_lag",
        }
    }

    /// Seconds the sender should wait: long enough for the backlog it saw to clear.
    pub fn retry_after_secs(&self) -> u64 {
        match self {
            Shed::InFlight(_) => 1,
            Shed::SlowAcks(waited) | Shed::Unacknowledged(waited) => waited.as_secs().clamp(1, 30),
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
            Shed::Unacknowledged(waited) => write!(
                f,
                "overloaded: not acknowledged by the broker within {} ms; it may still be \
                 stored, so send it again with the same idempotency key",
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

/// A stage's view of the queues it reads: which partitions it is assigned and how far it
/// has read them.
#[derive(Clone)]
pub struct QueueWatch {
    inner: Arc<Inner>,
    stage: Arc<str>,
    topics: Arc<[String]>,
}

impl QueueWatch {
    /// The stage is assigned exactly `partitions` (of its topics) now; queues of partitions it
    /// lost are forgotten, new ones start empty (records published before are not counted).
    pub fn assigned(&self, partitions: &[(String, i32)]) {
        let mut queues = self.inner.lock_queues();
        for (topic, by_partition) in queues.iter_mut() {
            by_partition.retain(|partition, queue| {
                queue.stage != self.stage
                    || partitions.iter().any(|(t, p)| t == topic && p == partition)
            });
        }
        for (topic, partition) in partitions {
            if self.topics.contains(topic) {
                queues
                    .entry(topic.clone())
                    .or_default()
                    .entry(*partition)
                    .or_insert_with(|| Queue::new(Arc::clone(&self.stage)));
            }
        }
    }

    /// The stage has read `partition` of `topic` up to (not including) `next_offset`.
    pub fn read_up_to(&self, topic: &str, partition: i32, next_offset: i64) {
        let mut queues = self.inner.lock_queues();
        if let Some(queue) = queues.get_mut(topic).and_then(|q| q.get_mut(&partition)) {
            let before = queue.unread.len();
            while queue
                .unread
                .front()
                .is_some_and(|(offset, _)| *offset < next_offset)
            {
                queue.unread.pop_front();
            }
            queue.note_read(before - queue.unread.len());
        }
    }
}

impl AckObserver for Admission {
    fn acknowledged(&self, ack: &Ack, queued_at: Instant) {
        let mut queues = self.inner.lock_queues();
        if let Some(queue) = queues
            .get_mut(ack.topic.as_str())
            .and_then(|q| q.get_mut(&ack.partition))
            && queue.unread.len() < QUEUE_CAP
        {
            queue.unread.push_back((ack.offset, queued_at));
        }
    }
}

impl Admission {
    /// A gate with these limits.
    pub fn new(config: AdmissionConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                in_flight: Mutex::default(),
                queues: Mutex::default(),
            }),
        }
    }

    /// Admits a request or says why not.
    pub fn admit(&self) -> Result<Permit, Shed> {
        let config = &self.inner.config;
        let waiting = self.inner.lock_in_flight().started.len();
        if let Some((stage, lag)) = self.lag(waiting)
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

    /// The queue watch of stage `id` over `topics` (broker-side names); its queues count once
    /// it reports an assignment.
    pub fn watch(&self, id: &str, topics: &[String]) -> QueueWatch {
        QueueWatch {
            inner: Arc::clone(&self.inner),
            stage: Arc::from(id),
            topics: topics.into(),
        }
    }

    /// The longest wait a record queued now would have on a watched partition (see
    /// [`Queue::wait`]; `waiting` admitted requests not acknowledged yet are counted as ahead
    /// of it too), and the stage it waits for.
    fn lag(&self, waiting: usize) -> Option<(String, Duration)> {
        let backing_up = self.inner.config.max_lag / 4;
        let queues = self.inner.lock_queues();
        let (stage, age) = queues
            .values()
            .flat_map(HashMap::values)
            .filter_map(|q| Some((&q.stage, q.wait(backing_up, waiting)?)))
            .max_by_key(|(_, age)| *age)
            .map(|(stage, age)| (stage.to_string(), age))
            .unwrap_or_default();
        metrics::gauge!(m::ADMISSION_LAG).set(age.as_secs_f64());
        (!stage.is_empty()).then_some((stage, age))
    }

    /// Middleware for the ingest routes of component `component_id`: admits the request
    /// before its body is read, holds the permit until the answer is ready, and answers a
    /// refusal with `503` and `Retry-After`.
    pub async fn gate(
        State((admission, component_id)): State<(Admission, Arc<str>)>,
        request: Request,
        next: Next,
    ) -> Response {
        let permit = match admission.admit() {
            Ok(permit) => permit,
            Err(shed) => return admission.refuse(&component_id, &shed),
        };
        // The handler runs to its end on its own task even when the answer goes out first,
        // so what it started (a publish, a stored answer) completes; the permit is held
        // until then, so the request still counts as waiting.
        let (parts, body) = request.into_parts();
        let (body, read) = signal_end(body);
        let mut handler = tokio::spawn(async move {
            let response = next.run(Request::from_parts(parts, body)).await;
            drop(permit);
            response
        });
        let max_ack_wait = admission.inner.config.max_ack_wait;
        tokio::select! {
            biased;
            answered = &mut handler => answered.unwrap_or_else(|e| {
                tracing::error!(component_id = %component_id, error = %e,
                    "an ingest handler failed");
                http::internal_error()
            }),
            () = async {
                let _ = read.await;
                tokio::time::sleep(max_ack_wait).await;
            } => admission.refuse(&component_id, &Shed::Unacknowledged(max_ack_wait)),
        }
    }

    /// Counts and answers a refusal.
    fn refuse(&self, component_id: &str, shed: &Shed) -> Response {
        metrics::counter!(m::SHED, m::COMPONENT_ID => component_id.to_string(),
            m::REASON => shed.reason())
        .increment(1);
        http::retry_later(&shed.to_string(), shed.retry_after_secs())
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

/// `body`, and a signal that fires once the handler has read all of it (never, if the
/// handler answers without reading it).
fn signal_end(body: axum::body::Body) -> (axum::body::Body, tokio::sync::oneshot::Receiver<()>) {
    use futures::StreamExt;
    let (done, read) = tokio::sync::oneshot::channel();
    let end = futures::stream::once(async move {
        let _ = done.send(());
    })
    .filter_map(|()| async { None::<Result<bytes::Bytes, axum::Error>> });
    let body = axum::body::Body::from_stream(body.into_data_stream().chain(end));
    (body, read)
}

impl Inner {
    fn lock_in_flight(&self) -> std::sync::MutexGuard<'_, InFlight> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_queues(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<i32, Queue>>> {
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
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

    fn ack(topic: &str, partition: i32, offset: i64, admission: &Admission, ago_ms: u64) {
        let queued_at = Instant::now() - Duration::from_millis(ago_ms);
        admission.acknowledged(
            &Ack {
                topic: topic.into(),
                partition,
                offset,
            },
            queued_at,
        );
    }

    #[test]
    fn an_unread_record_older_than_max_lag_closes_the_gate_until_its_stage_reads_it() {
        let admission = gate(100, 60_000, 1_000);
        let watch = admission.watch("inventory", &["t.inventory.change".to_string()]);
        // Not assigned yet: nothing counts.
        ack("t.inventory.change", 0, 10, &admission, 3_000);
        assert!(admission.admit().is_ok());
        watch.assigned(&[("t.inventory.change".into(), 0), ("t.other".into(), 0)]);
        ack("t.inventory.change", 0, 11, &admission, 3_000);
        ack("t.inventory.change", 0, 12, &admission, 10);
        ack("t.other", 0, 1, &admission, 9_000);
        match admission.admit().err() {
            Some(Shed::Lag { stage, lag }) => {
                assert_eq!(stage, "inventory");
                assert!(lag >= Duration::from_millis(3_000), "{lag:?}");
                assert_eq!(Shed::Lag { stage, lag }.retry_after_secs(), 3);
            }
            other => panic!("expected a lag refusal, got {other:?}"),
        }
        // Reading offset 11 leaves 12, which is young.
        watch.read_up_to("t.inventory.change", 0, 12);
        assert!(admission.admit().is_ok());
        // A stage that makes no progress keeps the gate shut.
        ack("t.inventory.change", 0, 13, &admission, 0);
        std::thread::sleep(Duration::from_millis(1_100));
        assert_eq!(
            admission.admit().err().map(|s| s.reason()),
            Some("pipeline_lag")
        );
        // Partitions the stage lost (another replica reads them) stop counting.
        watch.assigned(&[("t.inventory.change".into(), 1)]);
        assert!(admission.admit().is_ok());
    }

    #[test]
    fn a_queue_read_slower_than_it_fills_closes_the_gate_before_its_oldest_record_is_late() {
        let admission = gate(100, 60_000, 1_000);
        let watch = admission.watch("storefront", &["t.available".to_string()]);
        watch.assigned(&[("t.available".into(), 0)]);
        for offset in 0..1_000 {
            ack("t.available", 0, offset, &admission, 300);
        }
        // 20 records read in the first 550 ms: about 36 a second, for 980 still unread.
        std::thread::sleep(Duration::from_millis(550));
        watch.read_up_to("t.available", 0, 20);
        match admission.admit().err() {
            Some(Shed::Lag { stage, lag }) => {
                assert_eq!(stage, "storefront");
                assert!(lag > Duration::from_secs(20), "{lag:?}");
            }
            other => panic!("expected a lag refusal, got {other:?}"),
        }
        watch.read_up_to("t.available", 0, 1_000);
        assert!(admission.admit().is_ok(), "everything read");
    }

    #[test]
    fn a_young_queue_is_judged_by_its_age_not_its_length() {
        let admission = gate(100, 60_000, 1_000);
        let watch = admission.watch("storefront", &["t.available".to_string()]);
        watch.assigned(&[("t.available".into(), 0)]);
        // A slow pace measured while the stage kept up with a trickle...
        ack("t.available", 0, 0, &admission, 0);
        std::thread::sleep(Duration::from_millis(550));
        watch.read_up_to("t.available", 0, 1);
        // ...then a burst: long, but young — the stage has not fallen behind yet.
        for offset in 1..5_000 {
            ack("t.available", 0, offset, &admission, 0);
        }
        assert!(admission.admit().is_ok());
    }

    #[tokio::test]
    async fn an_admitted_request_the_broker_keeps_waiting_is_answered_503_and_still_completes() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let admission = gate(100, 100, 60_000);
        let completed = Arc::new(AtomicBool::new(false));
        let done = Arc::clone(&completed);
        let ingest = axum::Router::new()
            .route(
                "/slow",
                axum::routing::post(move |body: axum::body::Bytes| async move {
                    // Stands in for a publish the broker acknowledges late.
                    tokio::time::sleep(Duration::from_millis(1_500)).await;
                    done.store(body.len() == 5, Ordering::SeqCst);
                    axum::http::StatusCode::ACCEPTED
                }),
            )
            .route(
                "/fast",
                axum::routing::post(|| async { axum::http::StatusCode::ACCEPTED }),
            );
        let app = admission.guard("erp", ingest);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let client = reqwest::Client::new();

        let fast = client
            .post(format!("{url}/fast"))
            .body("hello")
            .send()
            .await;
        assert_eq!(fast.unwrap().status(), 202);
        let started = Instant::now();
        let slow = client
            .post(format!("{url}/slow"))
            .body("hello")
            .send()
            .await
            .unwrap();
        let answered_after = started.elapsed();
        assert_eq!(slow.status(), 503);
        assert!(
            answered_after >= Duration::from_millis(100)
                && answered_after < Duration::from_millis(1_200),
            "answered after {answered_after:?}"
        );
        assert_eq!(slow.headers()["retry-after"], "1");
        let body: serde_json::Value = slow.json().await.unwrap();
        assert!(
            body["reason"]
                .as_str()
                .unwrap()
                .contains("may still be stored"),
            "{body}"
        );
        // The request still counts as waiting for the broker: new ones are refused...
        let refused = client.post(format!("{url}/fast")).send().await.unwrap();
        assert_eq!(refused.status(), 503);
        // ...until the handler, which ran on, has finished.
        let waiting = Instant::now();
        while !completed.load(Ordering::SeqCst) {
            assert!(
                waiting.elapsed() < Duration::from_secs(10),
                "the handler never ended"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // (its permit is dropped right after it returns, on its own task)
        let mut status = 0;
        while status != 202 && waiting.elapsed() < Duration::from_secs(10) {
            status = client
                .post(format!("{url}/fast"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16();
        }
        assert_eq!(
            status, 202,
            "the gate opened once the slow request was done"
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
