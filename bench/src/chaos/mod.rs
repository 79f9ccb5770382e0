//! `erpstream-bench chaos`: the default topology (plus a `rest_poll` source on the test
//! ERPNext server) on the local stack under a mixed load while a seeded fault schedule
//! kills and restarts its parts, then the checks of [`checks`]. Writes
//! `bench/results/chaos-seed-<seed>.json` and the summary of every seed in
//! `bench/results/chaos.json`; exits non-zero when a check fails (see bench/chaos.sh).

mod checks;
mod faults;
mod load;
mod world;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::{Value, json};

use crate::report;

/// Arguments of `erpstream-bench chaos`.
#[derive(clap::Args)]
pub struct Args {
    /// Seed of the fault schedule and the load.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Seconds of load (faults happen between 5% and 85% of it).
    #[arg(long, default_value_t = 600.0)]
    duration: f64,
    /// Events per second, all kinds together.
    #[arg(long, default_value_t = 180.0)]
    rate: f64,
    /// Pipeline replicas (their own port and instance_id each).
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// SIGKILLs of a pipeline replica.
    #[arg(long, default_value_t = 20)]
    kills: usize,
    /// Broker restarts (kill -9 and graceful in turn).
    #[arg(long, default_value_t = 3)]
    broker_restarts: usize,
    /// Postgres restarts (`pg_ctl stop -m immediate`).
    #[arg(long, default_value_t = 2)]
    postgres_restarts: usize,
    /// The topology the run starts from (a rest_poll source is added to it).
    #[arg(long, default_value = "topology.yaml")]
    topology: PathBuf,
    /// The erpstream binary.
    #[arg(long, env = "ERPSTREAM_BIN")]
    bin: PathBuf,
    /// Longest wait, after the load, for every write-back and for the views to settle.
    #[arg(long, default_value_t = 300.0)]
    settle: f64,
    /// Log librdkafka's consumer-group decisions (`debug: cgrp`) in the pipeline logs.
    #[arg(long)]
    trace_groups: bool,
    /// Free text recorded with the results (broker, build).
    #[arg(long, default_value = "")]
    conditions: String,
    #[arg(long, env = "ERP_WEBHOOK_SECRET", hide_env_values = true)]
    erp_secret: String,
    #[arg(long, env = "STOREFRONT_WEBHOOK_SECRET", hide_env_values = true)]
    storefront_secret: String,
    #[arg(long, env = "STOREFRONT_API_TOKEN", hide_env_values = true)]
    storefront_token: String,
    #[arg(long, env = "ERP_API_TOKEN", hide_env_values = true)]
    erp_token: String,
    #[arg(long, env = "PLANNING_ADMIN_TOKEN", hide_env_values = true)]
    planning_token: String,
    #[arg(long, env = "ERP_DATABASE_URL")]
    erp_database: String,
    #[arg(long, env = "PLANNING_DATABASE_URL")]
    planning_database: String,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?
        .to_path_buf();
    let stack = Arc::new(faults::Stack::from_env(root.clone())?);
    let dir = stack.state_dir.join(format!("chaos-{}", args.seed));
    std::fs::create_dir_all(&dir)?;

    // The world: storefront, ERP write-back, the polled ERPNext.
    let (storefront, storefront_url) =
        world::Storefront::start(args.storefront_secret.clone(), Duration::from_secs(6)).await?;
    let (figures_tx, figures_rx) = tokio::sync::mpsc::unbounded_channel();
    let (erp, erp_url) =
        world::Erp::start(args.erp_token.clone(), load::LOCATION, figures_tx).await?;
    let erpnext = erpstream_e2e::erpnext::FakeErp::start().await;

    let topology = dir.join("topology.yaml");
    let mut text = with_polled_erp(&args.topology, &erpnext.url)?;
    let mut log_filter = "info,rdkafka=warn";
    if args.trace_groups {
        text = text.replacen("\nkafka:\n", "\nkafka:\n  properties: { debug: cgrp }\n", 1);
        log_filter = "info,rdkafka=warn,librdkafka=debug";
    }
    std::fs::write(&topology, text)?;
    let env = vec![
        ("RUST_LOG".to_string(), log_filter.to_string()),
        ("STOREFRONT_WEBHOOK_URL".to_string(), storefront_url),
        ("ERP_API_URL".to_string(), erp_url),
        (
            "CHAOS_ERPNEXT_KEY".to_string(),
            erpstream_e2e::erpnext::API_KEY.to_string(),
        ),
        (
            "CHAOS_ERPNEXT_SECRET".to_string(),
            erpstream_e2e::erpnext::API_SECRET.to_string(),
        ),
    ];
    let replicas = Arc::new(faults::Replicas::new(
        args.bin.clone(),
        topology.clone(),
        &dir,
        args.replicas,
        env,
    )?);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(15))
        .build()?;
    let load = Arc::new(load::Load::new(
        client.clone(),
        replicas.urls(),
        load::Credentials {
            erp_secret: args.erp_secret.clone(),
            storefront_token: args.storefront_token.clone(),
            planning_token: args.planning_token.clone(),
        },
        erp.clone(),
        erpnext.clone(),
        args.erp_database.clone(),
        args.seed,
    ));
    load.prepare().await?;

    for i in 0..args.replicas {
        replicas.start(i)?;
    }
    for replica in &replicas.replicas {
        let port = replica.lock().map(|r| r.port).unwrap_or_default();
        crate::process::wait_ready(&client, port).await?;
    }
    eprintln!(
        "[chaos] {} replica(s) ready; introducing the data",
        args.replicas
    );
    load.introduce().await?;

    let plan = faults::schedule(
        args.seed,
        args.duration,
        args.replicas,
        &faults::Counts {
            kills: args.kills,
            broker_restarts: args.broker_restarts,
            postgres_restarts: args.postgres_restarts,
        },
    );
    eprintln!(
        "[chaos] seed {}: {} s of load at {}/s with {} faults",
        args.seed,
        args.duration,
        args.rate,
        plan.len()
    );
    let targets = Arc::new(faults::Targets {
        replicas: replicas.clone(),
        stack: stack.clone(),
        storefront: storefront.clone(),
        erp: erp.clone(),
        erpnext: erpnext.clone(),
    });
    let start = Instant::now();
    let started_at = chrono::Utc::now();
    let figures = tokio::spawn(load.clone().figures(figures_rx));
    let generators = tokio::spawn(load.clone().run(args.rate));
    let faults = tokio::spawn(faults::execute(plan, start, targets));
    let watch = tokio::spawn(watch_exits(replicas.clone()));
    let progress = tokio::spawn(progress(load.clone(), start, args.duration));

    tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
    load.stopping.store(true, Ordering::SeqCst);
    progress.abort();
    let executed = faults.await?;
    eprintln!("[chaos] load stopped; waiting for what is still being sent");
    generators.await?;
    let load_seconds = start.elapsed().as_secs_f64();

    // Settle: every accepted document written back, then the ERP's last figures, then the
    // views given time to show them.
    let until = Instant::now() + Duration::from_secs_f64(args.settle);
    while Instant::now() < until {
        let pending = erp
            .model()
            .documents
            .iter()
            .filter(|d| d.accepted.is_some() && d.created == 0)
            .count();
        if pending == 0 {
            break;
        }
        eprintln!("[chaos] {pending} accepted documents not yet written back");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    load.final_figures().await;
    let erp_db = load::connect(&args.erp_database).await?;
    let cdc = checks::bin_table(&erp_db).await?;
    let expected = {
        let model = erp.model();
        checks::expected(&model, &load.ledger(), &cdc)
    };
    let planning_db = load::connect(&args.planning_database).await?;
    let demand = load.ledger().demand.clone();
    let settled_in = Instant::now();
    let mut differences;
    let mut planning_wrong;
    loop {
        differences = checks::storefront_differences(&expected, &storefront.deliveries());
        planning_wrong = checks::planning(&planning_db, &expected, &demand).await?;
        if differences.is_empty() && planning_wrong.is_empty() || Instant::now() >= until {
            break;
        }
        eprintln!(
            "[chaos] settling: {} storefront and {} planning figures not there yet",
            differences.len(),
            planning_wrong.len()
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let settle_seconds = settled_in.elapsed().as_secs_f64();
    watch.abort();
    let unexpected_exits = UNEXPECTED_EXITS.load(Ordering::SeqCst);

    // Reconcile and the DLQ, through the pipeline's own tools.
    let picture = dir.join("erp-picture.csv");
    let shown = dir.join("storefront-view.json");
    write_pictures(&expected, &storefront.deliveries(), &picture, &shown)?;
    let reconcile = reconcile(&args, &replicas, &topology, &picture, &shown, &dir)?;
    let dlq = dlq(&args, &topology)?;
    replicas.stop_all();
    figures.abort();

    // The checks.
    let deliveries = storefront.deliveries();
    let model = erp.model();
    let ledger = load.ledger();
    let (lost_probes, timed) = checks::probes(&ledger, &deliveries);
    let mut latencies: Vec<f64> = timed.iter().map(|(_, ms)| *ms).collect();
    // By 30 s window of the load (probes by send time): how latency follows the faults.
    let mut windows: std::collections::BTreeMap<u64, Vec<f64>> = Default::default();
    for (sent, ms) in &timed {
        let window = sent.saturating_duration_since(start).as_secs() / 30 * 30;
        windows.entry(window).or_default().push(*ms);
    }
    let by_window: Vec<Value> = windows
        .into_iter()
        .map(|(from, mut values)| {
            values.sort_by(f64::total_cmp);
            json!({"from_s": from, "probes": values.len(),
                   "p50": checks::percentile(&values, 0.5), "p99": checks::percentile(&values, 0.99)})
        })
        .collect();
    let erp_sku_wrong: Vec<Value> = differences
        .iter()
        .filter(|d| d["sku"].as_str().is_some_and(|s| s.starts_with("ERP-")))
        .cloned()
        .collect();
    let (older, repeated_versions) = checks::versions(&deliveries);
    let oversold = checks::oversold(&model, &deliveries);
    let (twice, never, absorbed) = checks::write_backs(&model);
    let drift = reconcile["drift"].as_u64().unwrap_or(u64::MAX);
    latencies.sort_by(f64::total_cmp);

    let counts = json!({
        "accepted_webhooks_never_delivered": lost_probes.len() + erp_sku_wrong.len(),
        "older_version_delivered": older.len(),
        "available_above_erp_minus_holds": oversold.len(),
        "orders_written_back_twice": twice.len(),
        "orders_never_written_back": never.len(),
        "planning_rows_not_newest": planning_wrong.len(),
        "reconcile_drift": drift,
    });
    let failed: Vec<String> = counts
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, v)| v.as_u64() != Some(0))
        .map(|(k, _)| k.clone())
        .collect();
    let sent: serde_json::Map<String, Value> = ledger
        .sent
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    let total: u64 = ledger.sent.values().sum();
    let sample = |list: &[Value]| list.iter().take(20).cloned().collect::<Vec<_>>();
    let result = json!({
        "benchmark": "chaos",
        "machine": report::machine(),
        "settings": {
            "seed": args.seed, "duration_seconds": args.duration, "rate_per_second": args.rate,
            "replicas": args.replicas, "topology": "topology.yaml + a rest_poll source (ERPNext Bin) on the test ERPNext server",
            "conditions": args.conditions,
        },
        "started_at": started_at.to_rfc3339(),
        "passed": failed.is_empty(),
        "failed_checks": failed,
        "checks": counts,
        "load": {
            "events": total, "seconds": load_seconds, "events_per_second": total as f64 / load_seconds,
            "by_kind": sent, "refused": ledger.refused,
            "order_repeats_not_replayed": ledger.repeats_not_replayed,
        },
        "latency_ms": {
            "measured": "probe webhook's scheduled send → the storefront's first 2xx arrival of its sku, faults included",
            "p50": checks::percentile(&latencies, 0.5), "p99": checks::percentile(&latencies, 0.99),
            "max": checks::percentile(&latencies, 1.0), "probes_delivered": latencies.len(),
            "by_30s_window": by_window,
        },
        "faults": executed,
        "pipeline": {
            "starts": (0..args.replicas).map(|i| replicas.replicas[i].lock().map(|r| r.starts).unwrap_or(0)).collect::<Vec<_>>(),
            "unexpected_exits": unexpected_exits,
        },
        "deliveries": {
            "requests": deliveries.len(),
            "taken": deliveries.iter().filter(|d| d.taken()).count(),
            "same_version_again": repeated_versions,
            "bad_signatures": storefront.bad_signatures(),
        },
        "write_backs": {
            "documents_accepted": model.documents.iter().filter(|d| d.accepted.is_some()).count(),
            "repeats_absorbed_by_idempotency_key": absorbed,
            "unknown_to_the_storefront_api": model.unknown_writebacks,
        },
        "settle_seconds": settle_seconds,
        "reconcile": reconcile,
        "dlq": dlq,
        "examples": {
            "never_delivered": sample(&lost_probes.iter().chain(&erp_sku_wrong).cloned().collect::<Vec<_>>()),
            "older_version_delivered": sample(&older),
            "available_above_erp_minus_holds": sample(&oversold),
            "written_back_twice": sample(&twice),
            "never_written_back": sample(&never),
            "planning_rows_not_newest": sample(&planning_wrong),
            "storefront_not_settled": sample(&differences),
        },
    });
    let name = format!("chaos-seed-{}", args.seed);
    let path = report::write(&name, &result)?;
    summarize(&name, &result)?;
    println!(
        "{}",
        serde_json::to_string_pretty(
            &json!({"checks": result["checks"], "load": result["load"]["events"],
            "latency_ms": result["latency_ms"], "faults": result["faults"].as_array().map(Vec::len)})
        )?
    );
    eprintln!("[chaos] written to {}", path.display());
    anyhow::ensure!(
        failed.is_empty(),
        "chaos checks failed: {}",
        failed.join(", ")
    );
    Ok(())
}

/// The topology file with a `rest_poll` source on the test ERPNext server added.
fn with_polled_erp(topology: &PathBuf, url: &str) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(topology)
        .with_context(|| format!("reading {}", topology.display()))?;
    let source = format!(
        r#"sources:
  # Added by the chaos run: the test ERPNext server's Bin documents, polled.
  erpnext:
    type: rest_poll
    preset: erpnext
    url: {url}
    auth:
      api_key: {{ env: CHAOS_ERPNEXT_KEY }}
      api_secret: {{ env: CHAOS_ERPNEXT_SECRET }}
    state_database: ${{ERPSTREAM_DATABASE_URL}}
    source_system: ERPNext
    interval: 1s
    resources:
      stock:
        doctype: Bin
        key: [item_code, warehouse]
        topic: inventory.change
        fields:
          sku: item_code
          location_code: warehouse
          new_quantity: actual_qty
          change_reason: {{ const: ERP_POLL }}
        occurred_at: modified
"#
    );
    anyhow::ensure!(
        text.contains("\nsources:\n"),
        "{} has no top-level sources section",
        topology.display()
    );
    Ok(text.replacen("\nsources:\n", &format!("\n{source}"), 1))
}

/// Replica exits the schedule did not cause: counted, and the replica started again.
async fn watch_exits(replicas: Arc<faults::Replicas>) {
    loop {
        for i in 0..replicas.replicas.len() {
            if let Some(status) = replicas.exited(i) {
                eprintln!("[chaos] replica {i} exited on its own: {status}");
                UNEXPECTED_EXITS.fetch_add(1, Ordering::SeqCst);
                replicas.kill(i);
                let _ = replicas.start(i);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Replica exits [`watch_exits`] saw.
static UNEXPECTED_EXITS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A line on stderr every 30 s: time, events sent.
async fn progress(load: Arc<load::Load>, start: Instant, duration: f64) {
    loop {
        tokio::time::sleep(Duration::from_secs(30)).await;
        let sent: u64 = load.ledger().sent.values().sum();
        eprintln!(
            "[chaos] {:.0}/{duration:.0} s: {sent} events sent",
            start.elapsed().as_secs_f64()
        );
    }
}

/// The ERP's picture (CSV: sku, location, qty) and the storefront's view (JSON rows).
fn write_pictures(
    expected: &checks::Expected,
    deliveries: &[world::Delivery],
    picture: &PathBuf,
    shown: &PathBuf,
) -> anyhow::Result<()> {
    let mut csv = String::from("sku,location,qty\n");
    for ((sku, location), quantity) in expected {
        csv.push_str(&format!("{sku},{location},{quantity}\n"));
    }
    std::fs::write(picture, csv)?;
    let view: Vec<Value> = checks::storefront_view(deliveries)
        .into_iter()
        .map(|((sku, location), qty)| json!({"sku": sku, "location": location, "qty": qty}))
        .collect();
    std::fs::write(shown, serde_json::to_vec(&view)?)?;
    Ok(())
}

/// `erpstream reconcile` of the ERP's picture against the state, the planning database and
/// the storefront's view: its counts, and `drift`, their sum.
fn reconcile(
    args: &Args,
    replicas: &faults::Replicas,
    topology: &PathBuf,
    picture: &PathBuf,
    shown: &PathBuf,
    dir: &std::path::Path,
) -> anyhow::Result<Value> {
    let report_path = dir.join("reconcile.json");
    let urls = replicas.urls();
    let output = std::process::Command::new(&args.bin)
        .arg("reconcile")
        .arg("--topology")
        .arg(topology)
        .arg("--against")
        .arg(picture)
        .arg("--state")
        .arg(format!("{}/api/inventory/snapshot?detail=true", urls[0]))
        .arg("--planning")
        .arg(&args.planning_database)
        .arg("--storefront")
        .arg(shown)
        .arg("--report")
        .arg(&report_path)
        .env("STOREFRONT_API_TOKEN", &args.storefront_token)
        .output()?;
    let text = String::from_utf8_lossy(&output.stderr).to_string();
    anyhow::ensure!(
        report_path.exists(),
        "erpstream reconcile wrote no report: {text}"
    );
    let report: Value = serde_json::from_slice(&std::fs::read(&report_path)?)?;
    let mut drift = 0;
    let mut sides = serde_json::Map::new();
    for side in ["state", "planning", "storefront"] {
        let counts = &report[side]["counts"];
        let n = ["missing", "extra", "differing"]
            .iter()
            .filter_map(|k| counts[*k].as_u64())
            .sum::<u64>();
        drift += n;
        sides.insert(side.to_string(), counts.clone());
    }
    Ok(json!({"drift": drift, "sides": sides, "summary": text.trim()}))
}

/// `erpstream dlq list --all --json`: every dead letter with its reason.
fn dlq(args: &Args, topology: &PathBuf) -> anyhow::Result<Value> {
    let output = std::process::Command::new(&args.bin)
        .args(["dlq", "list", "--all", "--json", "--topology"])
        .arg(topology)
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "erpstream dlq list: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let records: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    Ok(json!({"records": records.len(), "list": records}))
}

/// Adds this seed's outcome to `bench/results/chaos.json` (one entry per seed).
fn summarize(name: &str, result: &Value) -> anyhow::Result<()> {
    let mut runs: Vec<Value> = std::fs::read(report::path("chaos"))
        .ok()
        .and_then(|t| serde_json::from_slice::<Value>(&t).ok())
        .and_then(|v| v["runs"].as_array().cloned())
        .unwrap_or_default();
    runs.retain(|r| r["seed"] != result["settings"]["seed"]);
    runs.push(json!({
        "seed": result["settings"]["seed"], "file": format!("bench/results/{name}.json"),
        "started_at": result["started_at"], "passed": result["passed"],
        "checks": result["checks"], "events": result["load"]["events"],
        "events_per_second": result["load"]["events_per_second"],
        "seconds": result["load"]["seconds"], "latency_ms": result["latency_ms"],
        "faults": result["faults"].as_array().map(Vec::len),
        "dlq_records": result["dlq"]["records"],
        "replicas": result["settings"]["replicas"],
    }));
    runs.sort_by_key(|r| r["seed"].as_u64());
    let passed = runs.iter().all(|r| r["passed"] == true);
    report::write(
        "chaos",
        &json!({"benchmark": "chaos", "machine": report::machine(), "passed": passed, "runs": runs}),
    )?;
    Ok(())
}
