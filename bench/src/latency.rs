//! The latency benchmark: signed ERP webhooks at a fixed open-loop rate against a running
//! pipeline, and a storefront receiver that verifies signatures and timestamps arrivals.
//!
//! Every webhook `i` has a scheduled send time `start + i / rate` and its own sku, so each
//! is delivered exactly once (no collapsing of updates to one key) and its latency is
//! measured from the schedule, never from when a lagging generator got round to sending.
//! A webhook answered `503` was either refused at the door (nothing stored) or admitted and
//! not acknowledged within the gate's `max_ack_wait` (it may still be stored and delivered;
//! an ERP would send it again and the repeat would be dropped): both are counted, and the
//! latency is that of the webhooks answered `202`. A run balances when every webhook
//! answered 202 is delivered; a run that does not balance within the settle time is kept in
//! the file but marked discarded.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use erpstream_connectors::signing::sign_hex;
use serde_json::{Value, json};

use crate::report;

/// Arguments of `erpstream-bench latency`.
#[derive(clap::Args)]
pub struct Args {
    /// Base URL of the running pipeline.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    target: String,
    /// Where the storefront receiver listens (the topology's storefront URL points here).
    #[arg(long, default_value = "127.0.0.1:9090")]
    listen: SocketAddr,
    /// Webhooks per second.
    #[arg(long)]
    rate: f64,
    /// Seconds of load per run.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Runs (medians are reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Longest wait for deliveries after the last send, seconds.
    #[arg(long, default_value_t = 60.0)]
    settle: f64,
    /// Secret the ERP signs with.
    #[arg(long, env = "ERP_WEBHOOK_SECRET", hide_env_values = true)]
    erp_secret: String,
    /// Secret the storefront verifies with.
    #[arg(long, env = "STOREFRONT_WEBHOOK_SECRET", hide_env_values = true)]
    storefront_secret: String,
    /// The broker the pipeline runs against, as a short name (`tansu`, `mock`); results are
    /// written per broker.
    #[arg(long, default_value = "tansu")]
    broker: String,
    /// Free text recorded with the results (broker, settings).
    #[arg(long, default_value = "")]
    conditions: String,
    /// Add these runs to the ones already in the results file of this broker and rate (the
    /// script measures each run on a fresh broker and pipeline) and report the medians of all.
    #[arg(long)]
    append: bool,
}

struct Receiver {
    secret: String,
    arrivals: Mutex<HashMap<String, Instant>>,
    bad_signatures: Mutex<usize>,
}

/// Runs the benchmark at one rate and writes `bench/results/latency-<rate>.json`.
pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.rate > 0.0 && args.duration > 0.0,
        "--rate and --duration must be > 0"
    );
    let receiver = Arc::new(Receiver {
        secret: args.storefront_secret.clone(),
        arrivals: Mutex::new(HashMap::new()),
        bad_signatures: Mutex::new(0),
    });
    let app = axum::Router::new()
        .route("/storefront", axum::routing::post(receive))
        .with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .timeout(Duration::from_secs(30))
        .build()?;
    let mut runs = Vec::new();
    for run in 0..args.runs {
        let result = one_run(&args, &client, &receiver, run).await?;
        eprintln!("[latency] rate {} run {}: {}", args.rate, run + 1, result);
        runs.push(result);
    }
    let profile = pipeline_profile(&client, &args.target).await;
    let name = format!("latency-{}-{}", args.broker, args.rate);
    if args.append
        && let Ok(text) = std::fs::read(report::path(&name))
        && let Ok(previous) = serde_json::from_slice::<Value>(&text)
        && let Some(previous) = previous["runs"].as_array()
    {
        runs.splice(0..0, previous.iter().cloned());
    }
    let kept: Vec<&Value> = runs.iter().filter(|r| r["discarded"] == false).collect();
    let median_of = |field: &str| -> Option<f64> {
        let mut values: Vec<f64> = kept
            .iter()
            .filter_map(|r| r["latency_ms"][field].as_f64())
            .collect();
        (!values.is_empty()).then(|| report::median(&mut values))
    };
    let result = json!({
        "benchmark": "latency",
        "machine": report::machine(),
        "settings": {
            "rate_per_second": args.rate, "duration_seconds": args.duration, "runs": runs.len(),
            "target": args.target, "broker": args.broker, "conditions": args.conditions,
            "measured": "scheduled send time of each signed webhook → storefront receiver's arrival",
        },
        "median": {
            "p50_ms": median_of("p50"), "p99_ms": median_of("p99"),
            "p999_ms": median_of("p999"), "max_ms": median_of("max"),
            "runs_kept": kept.len(),
        },
        "pipeline_means_ms": profile,
        "runs": runs,
    });
    let path = report::write(&name, &result)?;
    println!("{}", serde_json::to_string_pretty(&result["median"])?);
    eprintln!("[latency] written to {}", path.display());
    Ok(())
}

async fn one_run(
    args: &Args,
    client: &reqwest::Client,
    receiver: &Arc<Receiver>,
    run: usize,
) -> anyhow::Result<Value> {
    let tag = format!("{}-{run}", chrono::Utc::now().timestamp_millis());
    let events = (args.rate * args.duration).round() as usize;
    let url = format!("{}/webhooks/erp", args.target.trim_end_matches('/'));
    let mut due = Vec::with_capacity(events);
    let mut sends = tokio::task::JoinSet::new();
    let mut generator_lag = Vec::with_capacity(events);
    let start = Instant::now() + Duration::from_millis(100);
    for i in 0..events {
        let at = start + Duration::from_secs_f64(i as f64 / args.rate);
        tokio::time::sleep_until(at.into()).await;
        generator_lag.push(at.elapsed().as_secs_f64() * 1000.0);
        due.push(at);
        let body = json!({"event_type": "inventory.change",
            "timestamp": chrono::Utc::now().to_rfc3339(),
            "data": {"sku": format!("LAT-{tag}-{i:07}"), "location_code": "WH-01",
                     "new_quantity": 7, "change_reason": "BENCH"}})
        .to_string()
        .into_bytes();
        let request = client
            .post(&url)
            .header("content-type", "application/json")
            .header("x-signature", sign_hex(args.erp_secret.as_bytes(), &body))
            .body(body);
        sends.spawn(async move {
            let Ok(response) = request.send().await else {
                return (i, None, false, at.elapsed().as_secs_f64() * 1000.0);
            };
            let status = response.status();
            let answered = at.elapsed().as_secs_f64() * 1000.0;
            let unacknowledged = status == StatusCode::SERVICE_UNAVAILABLE
                && response
                    .text()
                    .await
                    .is_ok_and(|b| b.contains("may still be stored"));
            (i, Some(status), unacknowledged, answered)
        });
    }
    let send_seconds = start.elapsed().as_secs_f64();
    let mut answers: Vec<Option<StatusCode>> = vec![None; events];
    let mut answer_ms = Vec::with_capacity(events);
    let mut unacknowledged = 0usize;
    while let Some(done) = sends.join_next().await {
        if let Ok((i, status, late, answered)) = done {
            answers[i] = status;
            answer_ms.push(answered);
            unacknowledged += usize::from(late);
        }
    }
    let accepted = answers
        .iter()
        .filter(|s| **s == Some(StatusCode::ACCEPTED))
        .count();
    let shed = answers
        .iter()
        .filter(|s| **s == Some(StatusCode::SERVICE_UNAVAILABLE))
        .count();
    let failed = events - accepted;
    let prefix = format!("LAT-{tag}-");
    // Each webhook's arrival (latency from its schedule), if it arrived, and whether it was
    // answered 202.
    let arrivals = |receiver: &Receiver| -> Vec<(Option<f64>, bool)> {
        let arrivals = receiver.arrivals.lock().unwrap_or_else(|p| p.into_inner());
        due.iter()
            .enumerate()
            .map(|(i, at)| {
                let latency = arrivals
                    .get(&format!("{prefix}{i:07}"))
                    .map(|arrived| arrived.saturating_duration_since(*at).as_secs_f64() * 1000.0);
                (latency, answers[i] == Some(StatusCode::ACCEPTED))
            })
            .collect()
    };
    let lost = |arrivals: &[(Option<f64>, bool)]| {
        arrivals
            .iter()
            .filter(|(latency, accepted)| *accepted && latency.is_none())
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs_f64(args.settle);
    while lost(&arrivals(receiver)) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let arrived = arrivals(receiver);
    let accepted_not_delivered = lost(&arrived);
    let mut latencies: Vec<f64> = arrived
        .iter()
        .filter(|(_, accepted)| *accepted)
        .filter_map(|(latency, _)| *latency)
        .collect();
    let delivered_after_503 = arrived
        .iter()
        .filter(|(latency, accepted)| !*accepted && latency.is_some())
        .count();
    let delivered = latencies.len();
    let balanced = accepted_not_delivered == 0;
    latencies.sort_by(f64::total_cmp);
    generator_lag.sort_by(f64::total_cmp);
    answer_ms.sort_by(f64::total_cmp);
    let pct = |v: &[f64], q: f64| -> Option<f64> {
        (!v.is_empty()).then(|| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1])
    };
    Ok(json!({
        "sent": events, "accepted": accepted, "failed": failed, "delivered": delivered,
        "refused_503": shed, "unacknowledged_503": unacknowledged,
        "delivered_after_503": delivered_after_503, "no_answer_or_other": failed - shed,
        "accepted_not_delivered": accepted_not_delivered,
        "answered_ms": {"p50": pct(&answer_ms, 0.5), "p99": pct(&answer_ms, 0.99), "max": pct(&answer_ms, 1.0)},
        "balanced": balanced, "discarded": !balanced,
        "bad_signatures": *receiver.bad_signatures.lock().unwrap_or_else(|p| p.into_inner()),
        "achieved_rate": events as f64 / send_seconds.max(1e-9),
        "generator_lag_ms": {"p50": pct(&generator_lag, 0.5), "p99": pct(&generator_lag, 0.99)},
        "latency_ms": {
            "p50": pct(&latencies, 0.5), "p99": pct(&latencies, 0.99),
            "p999": pct(&latencies, 0.999), "max": pct(&latencies, 1.0),
        },
    }))
}

/// Mean milliseconds of the pipeline's own stage histograms over all runs at this rate:
/// webhook receipt → broker ack (`ingest`), accepted → storefront 2xx (`end_to_end`), and
/// the storefront request alone (`delivery_request`).
async fn pipeline_profile(client: &reqwest::Client, target: &str) -> Value {
    let url = format!("{}/metrics", target.trim_end_matches('/'));
    let Ok(text) = async { client.get(&url).send().await?.text().await }.await else {
        return Value::Null;
    };
    let mean = |name: &str, component: &str| -> Option<f64> {
        let value = |suffix: &str| {
            let prefix = format!("{name}_{suffix}{{component_id=\"{component}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .and_then(|v| v.trim().parse::<f64>().ok())
        };
        let (sum, count) = (value("sum")?, value("count")?);
        (count > 0.0).then(|| sum / count * 1000.0)
    };
    json!({
        "ingest": mean("erpstream_ingest_latency_seconds", "erp"),
        "end_to_end": mean("erpstream_end_to_end_latency_seconds", "storefront"),
        "delivery_request": mean("erpstream_http_request_duration_seconds", "storefront"),
    })
}

async fn receive(
    State(receiver): State<Arc<Receiver>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let arrived = Instant::now();
    let signature = headers.get("x-signature").and_then(|v| v.to_str().ok());
    if signature != Some(sign_hex(receiver.secret.as_bytes(), &body).as_str()) {
        *receiver
            .bad_signatures
            .lock()
            .unwrap_or_else(|p| p.into_inner()) += 1;
        return StatusCode::UNAUTHORIZED;
    }
    let Ok(payload) = serde_json::from_slice::<Value>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    if let Some(sku) = payload["data"]["sku"].as_str() {
        receiver
            .arrivals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(sku.to_string())
            .or_insert(arrived);
    }
    StatusCode::OK
}

/// Merges `bench/results/latency-<broker>-<rate>.json` into `bench/results/latency.json`:
/// per broker, the table by rate and the highest measured rate whose median p99 stays
/// within one second, printed side by side.
pub fn summarize() -> anyhow::Result<()> {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results");
    let mut rows = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if !(name.starts_with("latency-") && name.ends_with(".json")) {
            continue;
        }
        let value: Value = serde_json::from_slice(&std::fs::read(&path)?)?;
        let Some(broker) = value["settings"]["broker"].as_str() else {
            continue; // a result from before results named their broker
        };
        let runs = value["runs"].as_array().cloned().unwrap_or_default();
        let sum = |field: &str| -> f64 { runs.iter().filter_map(|r| r[field].as_f64()).sum() };
        let mut p99s: Vec<f64> = runs
            .iter()
            .filter_map(|r| r["answered_ms"]["p99"].as_f64())
            .collect();
        let answered_p99 = (!p99s.is_empty()).then(|| report::median(&mut p99s));
        rows.push(json!({
            "broker": broker,
            "rate_per_second": value["settings"]["rate_per_second"],
            "p50_ms": value["median"]["p50_ms"], "p99_ms": value["median"]["p99_ms"],
            "p999_ms": value["median"]["p999_ms"], "runs_kept": value["median"]["runs_kept"],
            "runs": value["settings"]["runs"],
            "achieved_rate": runs.first().map(|r| r["achieved_rate"].clone()),
            "failed_share": sum("failed") / sum("sent").max(1.0),
            "accepted_not_delivered": sum("accepted_not_delivered"),
            "answered_p99_ms": answered_p99,
        }));
    }
    let number = |v: &Value, field: &str| v[field].as_f64().unwrap_or(0.0);
    rows.sort_by(|a, b| {
        a["broker"]
            .as_str()
            .cmp(&b["broker"].as_str())
            .then(number(a, "rate_per_second").total_cmp(&number(b, "rate_per_second")))
    });
    let mut brokers: Vec<&str> = rows.iter().filter_map(|r| r["broker"].as_str()).collect();
    brokers.dedup();
    let within_1s: serde_json::Map<String, Value> = brokers
        .iter()
        .map(|broker| {
            let best = rows
                .iter()
                .filter(|r| r["broker"] == *broker)
                .take_while(|r| r["p99_ms"].as_f64().is_some_and(|p| p <= 1000.0))
                .last()
                .map(|r| r["rate_per_second"].clone());
            (broker.to_string(), best.unwrap_or(Value::Null))
        })
        .collect();
    println!(
        "| broker | rate/s | achieved | not accepted (503) | answered p99 ms | p50 ms | p99 ms | p99.9 ms | 202 lost | runs balanced |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let f = |v: &Value| v.as_f64().map_or("—".to_string(), |x| format!("{x:.0}"));
        let failed = r["failed_share"]
            .as_f64()
            .map_or("—".to_string(), |x| format!("{:.1}%", x * 100.0));
        println!(
            "| {} | {} | {} | {failed} | {} | {} | {} | {} | {} | {}/{} |",
            r["broker"].as_str().unwrap_or_default(),
            f(&r["rate_per_second"]),
            f(&r["achieved_rate"]),
            f(&r["answered_p99_ms"]),
            f(&r["p50_ms"]),
            f(&r["p99_ms"]),
            f(&r["p999_ms"]),
            f(&r["accepted_not_delivered"]),
            r["runs_kept"],
            r["runs"]
        );
    }
    println!(
        "highest measured rate with p99 <= 1 s: {}",
        Value::Object(within_1s.clone())
    );
    report::write(
        "latency",
        &json!({"benchmark": "latency", "machine": report::machine(), "by_broker_and_rate": rows,
                "highest_rate_with_p99_within_1s": within_1s}),
    )?;
    Ok(())
}
