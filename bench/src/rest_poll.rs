//! `rest_poll` against an ERPNext-shaped server (the test suite's, in process): N items with
//! stock in three warehouses, read by a real `erpstream run` with only a rest_poll source
//! (default page size and rate limit). Per run, with fresh state:
//! - full load: HTTP calls (all, and document reads), seconds from the ERP's first request
//!   and from process start until every record is acknowledged by the broker;
//! - incremental: `changes` Bin rows change; calls and seconds until they are acknowledged
//!   (the poll interval, 1 s, is part of it). Seeded documents were modified from a day before,
//!   one item per second, so the look-back window (60 s) holds about 60 of them.

use std::time::{Duration, Instant};

use clap::Args as ClapArgs;
use erpstream_e2e::erpnext::{self, FakeErp};
use serde_json::json;

use crate::process::{Broker, BrokerKind, Pipeline, Running, cpu_seconds, free_port, wait_sent};
use crate::report;

/// Options of `erpstream-bench rest-poll`.
#[derive(ClapArgs)]
pub struct Args {
    /// Items (each with stock in 3 warehouses).
    #[arg(long, default_value_t = 10_000)]
    items: usize,
    /// Bin rows changed in the incremental phase.
    #[arg(long, default_value_t = 100)]
    changes: usize,
    /// Repetitions (medians are reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Postgres URL of erpstream's own database (cursor and hashes).
    #[arg(long, env = "ERPSTREAM_DATABASE_URL")]
    database: String,
    /// The stack's broker.
    #[arg(long, env = "ERPSTREAM_BROKERS")]
    brokers: String,
    /// Run against the stack's broker, or librdkafka's mock cluster hosted in this process.
    #[arg(long, value_enum, default_value = "stack")]
    broker: BrokerKind,
    /// Registry.
    #[arg(long, env = "ERPSTREAM_REGISTRY_URL")]
    registry: String,
    /// The erpstream binary.
    #[arg(long, env = "ERPSTREAM_BIN")]
    bin: String,
}

struct Measured {
    calls: u64,
    data_calls: u64,
    seconds_from_first_call: f64,
    seconds_from_start: f64,
    incremental_calls: u64,
    incremental_seconds: f64,
    cpu_seconds: [f64; 2],
    /// erpstream's CPU from the ERP's first request to the last acknowledgement (the load
    /// itself, without the process's start-up).
    load_cpu_seconds: f64,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let records = (args.items * 4) as f64;
    let mut runs: Vec<Measured> = Vec::new();
    // Seeded documents were last modified yesterday, as in an ERP that has been running;
    // the incremental phase's changes are stamped now.
    let yesterday = chrono::Utc::now().timestamp_micros() - 86_400_000_000;
    let stamp = |n: usize| erpnext::format_time(yesterday + n as i64 * 1_000_000);
    for run in 0..args.runs {
        let broker = Broker::new(args.broker, &args.brokers)?;
        let erp = FakeErp::start().await;
        erp.put(
            "Item",
            (0..args.items)
                .map(|i| {
                    json!({"name": format!("ITEM-{i:06}"), "item_name": format!("Item {i}"),
                        "item_group": "Products", "stock_uom": "Nos", "standard_rate": 19.99,
                        "disabled": 0, "modified": stamp(i)})
                })
                .collect(),
        );
        erp.put(
            "Bin",
            (0..args.items)
                .flat_map(|i| {
                    ["Stores - WH1", "Stores - WH2", "Stores - WH3"].map(|w| {
                        json!({"name": format!("BIN-{i:06}-{w}"), "item_code": format!("ITEM-{i:06}"),
                            "warehouse": w, "actual_qty": i % 500, "reserved_qty": 0, "projected_qty": i % 500,
                            "modified": stamp(i)})
                    })
                })
                .collect(),
        );
        let name = format!("bench_rest_{}_{run}", std::process::id());
        let port = free_port()?;
        let started = Instant::now();
        let broker_cpu = cpu_seconds(broker.pid());
        let process = start(&args, &broker, &name, &erp.url, port)?;
        let client = reqwest::Client::new();
        let metrics_url = format!("http://127.0.0.1:{port}/metrics");
        let until = Instant::now() + Duration::from_secs(60);
        while erp.first_call().is_none() {
            anyhow::ensure!(Instant::now() < until, "erpstream never called the ERP");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let cpu_at_first_call = cpu_seconds(process.0.id());
        wait_sent(
            &client,
            &metrics_url,
            "erp",
            records,
            Duration::from_secs(300),
        )
        .await?;
        let seconds_from_start = started.elapsed().as_secs_f64();
        let seconds_from_first_call = erp
            .first_call()
            .map_or(f64::NAN, |t| t.elapsed().as_secs_f64());
        let (calls, data_calls) = erp.calls();
        let cpu = [
            cpu_seconds(process.0.id()),
            cpu_seconds(broker.pid()) - broker_cpu,
        ];
        let load_cpu_seconds = cpu[0] - cpu_at_first_call;
        eprintln!(
            "run {run}: {records} records in {calls} calls ({data_calls} document reads), {seconds_from_first_call:.2} s from the first call, {seconds_from_start:.2} s from process start; CPU erpstream {:.2} s ({load_cpu_seconds:.2} s from the first call), broker {:.2} s",
            cpu[0], cpu[1]
        );

        let before = erp.calls().0;
        let changed = Instant::now();
        for i in 0..args.changes {
            erp.update(
                "Bin",
                &format!("BIN-{i:06}-Stores - WH2"),
                json!({"actual_qty": 1000 + i}),
            );
        }
        wait_sent(
            &client,
            &metrics_url,
            "erp",
            records + args.changes as f64,
            Duration::from_secs(120),
        )
        .await?;
        let incremental_seconds = changed.elapsed().as_secs_f64();
        let incremental_calls = erp.calls().0 - before;
        eprintln!(
            "run {run}: {} changed bins in {incremental_seconds:.2} s, {incremental_calls} calls",
            args.changes
        );
        runs.push(Measured {
            calls,
            data_calls,
            seconds_from_first_call,
            seconds_from_start,
            incremental_calls,
            incremental_seconds,
            cpu_seconds: cpu,
            load_cpu_seconds,
        });
    }
    let med =
        |f: &dyn Fn(&Measured) -> f64| report::median(&mut runs.iter().map(f).collect::<Vec<_>>());
    let result = json!({
        "machine": report::machine(),
        "settings": {
            "items": args.items, "warehouses": 3, "records": records, "runs": args.runs,
            "page_size": 5000, "max_requests_per_second": 10, "interval": "1s",
            "look_back": "60s", "topic_partitions": 3,
            "erp": "ERPNext-shaped test server in the bench process (no network latency)",
            "broker": args.broker.describe(),
        },
        "full_load": {
            "http_calls": med(&|m| m.calls as f64),
            "document_reads": med(&|m| m.data_calls as f64),
            "seconds_from_first_call": med(&|m| m.seconds_from_first_call),
            "seconds_from_process_start": med(&|m| m.seconds_from_start),
            "cpu_seconds": {
                "erpstream": med(&|m| m.cpu_seconds[0]),
                "erpstream_from_first_call": med(&|m| m.load_cpu_seconds),
                "broker": med(&|m| m.cpu_seconds[1]),
            },
            "erpstream_cpu_microseconds_per_record": med(&|m| m.load_cpu_seconds) * 1e6 / records,
        },
        "incremental": {
            "changed_records": args.changes,
            "http_calls": med(&|m| m.incremental_calls as f64),
            "seconds": med(&|m| m.incremental_seconds),
        },
        "reference_document": {
            "records": 750, "http_calls": 503, "seconds": 52,
            "source": "erpnext-connector-summary.md, Performance table (one stock call per item)",
        },
        "runs": runs.iter().map(|m| json!({
            "http_calls": m.calls, "seconds_from_first_call": m.seconds_from_first_call,
            "seconds_from_process_start": m.seconds_from_start,
            "incremental_calls": m.incremental_calls, "incremental_seconds": m.incremental_seconds,
            "erpstream_cpu_seconds": m.cpu_seconds[0], "erpstream_cpu_seconds_from_first_call": m.load_cpu_seconds,
        })).collect::<Vec<_>>(),
    });
    let path = report::write(&args.broker.file_name("rest_poll"), &result)?;
    println!(
        "rest_poll: {} items x 3 warehouses = {records} records in {:.0} HTTP calls, {:.2} s from the first call ({:.2} s from process start); {} changes in {:.2} s, {:.0} calls  ({})",
        args.items,
        result["full_load"]["http_calls"]
            .as_f64()
            .unwrap_or_default(),
        result["full_load"]["seconds_from_first_call"]
            .as_f64()
            .unwrap_or_default(),
        result["full_load"]["seconds_from_process_start"]
            .as_f64()
            .unwrap_or_default(),
        args.changes,
        result["incremental"]["seconds"]
            .as_f64()
            .unwrap_or_default(),
        result["incremental"]["http_calls"]
            .as_f64()
            .unwrap_or_default(),
        path.display()
    );
    Ok(())
}

fn start(
    args: &Args,
    broker: &Broker,
    name: &str,
    erp: &str,
    port: u16,
) -> anyhow::Result<Running> {
    let pipeline = Pipeline {
        bin: &args.bin,
        name,
        port,
        broker,
        registry: &args.registry,
    };
    pipeline.start(
        &format!(
            r#"topics:
  catalog.update: {{ partitions: 3 }}
  inventory.change: {{ partitions: 3 }}
sources:
  erp:
    type: rest_poll
    preset: erpnext
    url: {erp}
    auth:
      api_key: {{ env: BENCH_ERPNEXT_KEY }}
      api_secret: {{ env: BENCH_ERPNEXT_SECRET }}
    state_database: {state}
    source_system: ERPNext
    interval: 1s
    resources:
      items:
        doctype: Item
        filters: [["disabled", "=", 0]]
        topic: catalog.update
        fields:
          group_id: name
          group_name: item_name
          product_family: item_group
          variants[0].sku: name
          variants[0].selling_price: standard_rate
        occurred_at: modified
      stock:
        doctype: Bin
        key: [item_code, warehouse]
        topic: inventory.change
        fields:
          sku: item_code
          location_code: warehouse
          new_quantity: actual_qty
          allocated_qty: reserved_qty
        occurred_at: modified
"#,
            state = args.database,
        ),
        &[
            ("BENCH_ERPNEXT_KEY", erpnext::API_KEY),
            ("BENCH_ERPNEXT_SECRET", erpnext::API_SECRET),
        ],
    )
}
