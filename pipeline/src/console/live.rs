//! Live figures per component for the console, read from this process's own metrics: every
//! [`EVERY`] the Prometheus text is rendered and parsed, and rates are the difference with
//! the previous reading. Counters are per process, so the figures are this replica's. While
//! no page has asked for figures for [`IDLE`], nothing is read.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use erpstream_connectors::metrics as m;
use metrics_exporter_prometheus::PrometheusHandle;
use prometheus_parse::{Scrape, Value};

/// How often the metrics are read.
pub const EVERY: Duration = Duration::from_secs(2);

/// How long after a page last asked for figures they are still read.
pub const IDLE: Duration = Duration::from_secs(60);

/// The 5 s end-to-end budget, in seconds.
pub const BUDGET_SECONDS: f64 = 5.0;

/// What one component did lately.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Figures {
    /// Events taken in per second.
    pub received_per_s: f64,
    /// Events published or delivered per second.
    pub sent_per_s: f64,
    /// Failures since the process started.
    pub errors: f64,
    /// Failures per second lately.
    pub errors_per_s: f64,
    /// Records dead-lettered since the process started.
    pub dead_lettered: f64,
    /// Records its consumer group has not committed on this replica's partitions.
    pub consumer_lag: Option<f64>,
    /// Bytes of WAL its replication slot has not confirmed (`pg_cdc`).
    pub slot_lag_bytes: Option<f64>,
    /// Whether its circuit is open (`rest_poll`).
    pub circuit_open: Option<bool>,
    /// Its last successful poll, epoch seconds (`rest_poll`).
    pub last_success: Option<f64>,
    /// End-to-end latency of its deliveries lately (sinks): p99 upper bound in seconds, and
    /// how many deliveries it covers.
    pub latency_p99: Option<(f64, f64)>,
}

/// One reading of the metrics.
#[derive(Default)]
struct Reading {
    at: Option<Instant>,
    /// (metric, component) → counter value.
    counters: HashMap<(String, String), f64>,
    /// component → cumulative latency buckets (upper bound, count).
    latency: HashMap<String, Vec<(f64, f64)>>,
}

/// The latest figures, shared with the pages.
#[derive(Clone, Default)]
pub struct Live {
    figures: Arc<RwLock<HashMap<String, Figures>>>,
    /// When the figures were last computed.
    at: Arc<RwLock<Option<chrono::DateTime<chrono::Utc>>>>,
    /// When a page last asked for figures.
    asked: Arc<RwLock<Option<Instant>>>,
}

impl Live {
    /// The figures of component `id` (zeros before the first reading, and for the first
    /// [`EVERY`] after figures were not asked for a while).
    pub fn of(&self, id: &str) -> Figures {
        *self.asked.write().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        self.figures
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
            .unwrap_or_default()
    }

    /// When the figures were computed.
    pub fn taken_at(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        *self.at.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the metrics every [`EVERY`] until the process ends.
    pub async fn run(self, metrics: PrometheusHandle) {
        let mut previous = Reading::default();
        let mut ticker = tokio::time::interval(EVERY);
        loop {
            ticker.tick().await;
            let asked = *self.asked.read().unwrap_or_else(|p| p.into_inner());
            if asked.is_none_or(|at| at.elapsed() > IDLE) {
                // Nobody looks: no reading, and the next rates start afresh.
                previous = Reading::default();
                continue;
            }
            let text = metrics.render();
            let (reading, figures) = read(&text, &previous);
            *self.figures.write().unwrap_or_else(|p| p.into_inner()) = figures;
            *self.at.write().unwrap_or_else(|p| p.into_inner()) = Some(chrono::Utc::now());
            previous = reading;
        }
    }
}

/// Parses one rendering and computes the figures against `previous`.
fn read(text: &str, previous: &Reading) -> (Reading, HashMap<String, Figures>) {
    let now = Instant::now();
    let elapsed = previous
        .at
        .map(|at| now.duration_since(at).as_secs_f64())
        .filter(|s| *s > 0.0);
    let mut reading = Reading {
        at: Some(now),
        ..Reading::default()
    };
    let mut figures: HashMap<String, Figures> = HashMap::new();
    let lines = text.lines().map(|l| Ok::<_, std::io::Error>(l.to_string()));
    let Ok(scrape) = Scrape::parse(lines) else {
        return (reading, figures);
    };
    for sample in scrape.samples {
        let Some(component) = sample.labels.get(m::COMPONENT_ID).map(str::to_string) else {
            continue;
        };
        let entry = figures.entry(component.clone()).or_default();
        match (sample.metric.as_str(), &sample.value) {
            (name, Value::Counter(v) | Value::Untyped(v))
                if [
                    m::RECEIVED_EVENTS,
                    m::SENT_EVENTS,
                    m::ERRORS,
                    m::DEAD_LETTERED,
                ]
                .contains(&name) =>
            {
                *reading
                    .counters
                    .entry((name.to_string(), component.clone()))
                    .or_default() += v;
            }
            (m::CONSUMER_LAG, Value::Gauge(v) | Value::Untyped(v)) => {
                *entry.consumer_lag.get_or_insert(0.0) += v;
            }
            (name, Value::Gauge(v) | Value::Untyped(v))
                if name == erpstream_connectors::sources::pg_cdc::SLOT_LAG =>
            {
                entry.slot_lag_bytes = Some(*v);
            }
            (name, Value::Gauge(v) | Value::Untyped(v))
                if name == erpstream_connectors::sources::rest_poll::CIRCUIT_OPEN =>
            {
                entry.circuit_open = Some(*v > 0.0);
            }
            (name, Value::Gauge(v) | Value::Untyped(v))
                if name == erpstream_connectors::sources::rest_poll::LAST_SUCCESS =>
            {
                entry.last_success = Some(*v);
            }
            (m::END_TO_END_LATENCY, Value::Histogram(buckets)) => {
                let cumulative = reading.latency.entry(component.clone()).or_default();
                for bucket in buckets {
                    match cumulative
                        .iter_mut()
                        .find(|(le, _)| *le == bucket.less_than)
                    {
                        Some((_, count)) => *count += bucket.count,
                        None => cumulative.push((bucket.less_than, bucket.count)),
                    }
                }
                cumulative.sort_by(|a, b| a.0.total_cmp(&b.0));
            }
            _ => {}
        }
    }
    for ((name, component), value) in &reading.counters {
        let entry = figures.entry(component.clone()).or_default();
        let before = previous
            .counters
            .get(&(name.clone(), component.clone()))
            .copied();
        let rate = match (elapsed, before) {
            (Some(seconds), Some(before)) => ((value - before) / seconds).max(0.0),
            _ => 0.0,
        };
        match name.as_str() {
            n if n == m::RECEIVED_EVENTS => entry.received_per_s = rate,
            n if n == m::SENT_EVENTS => entry.sent_per_s = rate,
            n if n == m::ERRORS => {
                entry.errors = *value;
                entry.errors_per_s = rate;
            }
            _ => entry.dead_lettered = *value,
        }
    }
    for (component, buckets) in &reading.latency {
        let before = previous.latency.get(component);
        let window: Vec<(f64, f64)> = buckets
            .iter()
            .map(|(le, count)| {
                let was = before
                    .and_then(|b| b.iter().find(|(l, _)| l == le))
                    .map_or(0.0, |(_, c)| *c);
                (*le, (count - was).max(0.0))
            })
            .collect();
        if let Some(p99) = quantile(&window, 0.99) {
            figures.entry(component.clone()).or_default().latency_p99 = Some(p99);
        }
    }
    (reading, figures)
}

/// The upper bound of the bucket holding quantile `q` of cumulative `buckets`, and the
/// count; `None` when the buckets are empty.
fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<(f64, f64)> {
    let total = buckets.iter().map(|(_, c)| *c).fold(0.0, f64::max);
    if total <= 0.0 {
        return None;
    }
    let wanted = total * q;
    buckets
        .iter()
        .find(|(_, count)| *count >= wanted)
        .map(|(le, _)| (*le, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRST: &str = "\
# TYPE erpstream_component_sent_events_total counter
erpstream_component_sent_events_total{component_id=\"storefront\",component_type=\"storefront_webhook\"} 10
# TYPE erpstream_end_to_end_latency_seconds histogram
erpstream_end_to_end_latency_seconds_bucket{component_id=\"storefront\",le=\"0.1\"} 5
erpstream_end_to_end_latency_seconds_bucket{component_id=\"storefront\",le=\"1\"} 10
erpstream_end_to_end_latency_seconds_bucket{component_id=\"storefront\",le=\"+Inf\"} 10
erpstream_end_to_end_latency_seconds_sum{component_id=\"storefront\"} 1
erpstream_end_to_end_latency_seconds_count{component_id=\"storefront\"} 10
# TYPE erpstream_consumer_lag_records gauge
erpstream_consumer_lag_records{component_id=\"storefront\",topic=\"a\"} 3
erpstream_consumer_lag_records{component_id=\"storefront\",topic=\"b\"} 4
";

    #[test]
    fn rates_and_the_p99_come_from_the_difference_of_two_readings() {
        let (first, figures) = read(FIRST, &Reading::default());
        let storefront = &figures["storefront"];
        assert_eq!(storefront.sent_per_s, 0.0, "no rate from one reading");
        assert_eq!(storefront.consumer_lag, Some(7.0));
        assert_eq!(storefront.latency_p99, Some((1.0, 10.0)));
        let second = FIRST
            .replace("} 10\n# TYPE erpstream_end", "} 30\n# TYPE erpstream_end")
            .replace("le=\"0.1\"} 5", "le=\"0.1\"} 20")
            .replace("le=\"1\"} 10", "le=\"1\"} 25")
            .replace("le=\"+Inf\"} 10", "le=\"+Inf\"} 25");
        let earlier = Reading {
            at: first.at.map(|at| at - Duration::from_secs(2)),
            ..first
        };
        let (_, figures) = read(&second, &earlier);
        let storefront = &figures["storefront"];
        assert!((storefront.sent_per_s - 10.0).abs() < 0.5, "{storefront:?}");
        assert_eq!(
            storefront.latency_p99,
            Some((0.1, 15.0)),
            "the 15 deliveries since were all under 100 ms"
        );
    }
}
