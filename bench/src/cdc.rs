//! `pg_cdc` throughput and latency: Postgres → Kafka through a real `erpstream run` with a
//! pg_cdc source only (no processors or sinks, so the broker's write path is the only other
//! load). Per run, on a database of its own:
//! - snapshot: N rows present before start, read through the exported snapshot; rows/s from
//!   process start to the last broker acknowledgement;
//! - stream: N rows inserted in transactions of `per_transaction` as fast as Postgres takes
//!   them; rows/s from the first commit to the last broker acknowledgement;
//! - paced: `paced_rate` rows/s in transactions of 10 for `paced_seconds`; commit →
//!   broker-ack latency quantiles from the source's own histogram (unsaturated).

use std::time::{Duration, Instant};

use clap::Args as ClapArgs;
use serde_json::json;

use crate::process::{
    Broker, BrokerKind, Pipeline, Running, cpu_seconds, free_port, wait_ready, wait_sent,
};
use crate::report;

/// Options of `erpstream-bench cdc`.
#[derive(ClapArgs)]
pub struct Args {
    /// Rows per phase.
    #[arg(long, default_value_t = 200_000)]
    rows: i64,
    /// Rows per transaction in the stream phase.
    #[arg(long, default_value_t = 1_000)]
    per_transaction: i64,
    /// Rows per second in the paced (latency) phase.
    #[arg(long, default_value_t = 1_000)]
    paced_rate: i64,
    /// Seconds of the paced phase.
    #[arg(long, default_value_t = 10)]
    paced_seconds: u64,
    /// Repetitions (medians are reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Postgres URL of the bench stack (any database; each run creates its own).
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

async fn pg(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    Ok(erpstream_connectors::postgres::connect(url, "bench").await?)
}

fn with_database(url: &str, database: &str) -> String {
    match url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{database}"),
        None => url.to_string(),
    }
}

struct Phase {
    rows_per_second: f64,
    seconds: f64,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let admin = pg(&args.database).await?;
    let mut snapshot = Vec::new();
    let mut stream = Vec::new();
    let mut latency: Vec<[f64; 3]> = Vec::new();
    let mut cpu_per_row: Vec<[f64; 2]> = Vec::new();
    for run in 0..args.runs {
        let broker = Broker::new(args.broker, &args.brokers)?;
        let name = format!("bench_cdc_{}_{run}", std::process::id());
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await?;
        let url = with_database(&args.database, &name);
        let db = pg(&url).await?;
        db.batch_execute(
            "CREATE TABLE stock (item_code text, warehouse text, actual_qty numeric(18,3) NOT NULL,
                 PRIMARY KEY (item_code, warehouse))",
        )
        .await?;
        db.execute(
            "INSERT INTO stock SELECT 'SNAP-' || i, 'WH-1', i % 1000 FROM generate_series(1, $1::bigint) i",
            &[&args.rows],
        )
        .await?;

        let port = free_port()?;
        let started = Instant::now();
        let process = start(&args, &broker, &name, &url, port)?;
        let metrics_url = format!("http://127.0.0.1:{port}/metrics");
        let client = reqwest::Client::new();
        wait_sent(
            &client,
            &metrics_url,
            "db",
            args.rows as f64,
            Duration::from_secs(600),
        )
        .await?;
        let seconds = started.elapsed().as_secs_f64();
        snapshot.push(Phase {
            rows_per_second: args.rows as f64 / seconds,
            seconds,
        });
        eprintln!("run {run}: snapshot {} rows in {seconds:.2} s", args.rows);

        let cpu_before = [cpu_seconds(process.0.id()), cpu_seconds(broker.pid())];
        let first = Instant::now();
        let mut n = 0;
        while n < args.rows {
            let count = args.per_transaction.min(args.rows - n);
            db.execute(
                "INSERT INTO stock SELECT 'S-' || i, 'WH-1', i % 1000 FROM generate_series($1::bigint, $2::bigint) i",
                &[&n, &(n + count - 1)],
            )
            .await?;
            n += count;
        }
        let committed = first.elapsed().as_secs_f64();
        wait_sent(
            &client,
            &metrics_url,
            "db",
            2.0 * args.rows as f64,
            Duration::from_secs(600),
        )
        .await?;
        let seconds = first.elapsed().as_secs_f64();
        let cpu = [
            cpu_seconds(process.0.id()) - cpu_before[0],
            cpu_seconds(broker.pid()) - cpu_before[1],
        ];
        stream.push(Phase {
            rows_per_second: args.rows as f64 / seconds,
            seconds,
        });
        cpu_per_row.push([
            cpu[0] / args.rows as f64 * 1e6,
            cpu[1] / args.rows as f64 * 1e6,
        ]);
        eprintln!(
            "run {run}: stream CPU per row: erpstream {:.1} us, broker {:.1} us",
            cpu_per_row[run][0], cpu_per_row[run][1]
        );
        eprintln!(
            "run {run}: stream {} rows committed in {committed:.2} s, all acknowledged after {seconds:.2} s",
            args.rows
        );

        // Paced: a fresh histogram window is not available, so quantiles are read as the
        // difference the paced phase makes only when it dominates; restart the process to
        // keep the histogram to this phase.
        drop(process);
        let process = start(&args, &broker, &name, &url, port)?;
        wait_ready(&client, port).await?;
        let per_tick = 10;
        let ticks = args.paced_rate * args.paced_seconds as i64 / per_tick;
        let interval = Duration::from_secs_f64(per_tick as f64 / args.paced_rate as f64);
        let mut next = Instant::now();
        for t in 0..ticks {
            next += interval;
            tokio::time::sleep_until(next.into()).await;
            db.execute(
                "INSERT INTO stock SELECT 'P-' || i, 'WH-1', 1 FROM generate_series($1::bigint, $2::bigint) i",
                &[&(t * per_tick), &(t * per_tick + per_tick - 1)],
            )
            .await?;
        }
        wait_sent(
            &client,
            &metrics_url,
            "db",
            (ticks * per_tick) as f64,
            Duration::from_secs(120),
        )
        .await?;
        let text = client.get(&metrics_url).send().await?.text().await?;
        let q = |quantile: &str| {
            bucket_quantile(
                &text,
                "erpstream_cdc_commit_to_ack_seconds",
                quantile.parse().unwrap_or(0.5),
            ) * 1000.0
        };
        latency.push([q("0.5"), q("0.99"), q("0.999")]);
        eprintln!(
            "run {run}: paced {} rows/s commit -> ack p50 {:.1} ms p99 {:.1} ms",
            args.paced_rate,
            q("0.5"),
            q("0.99")
        );
        drop(process);
        drop(db);
        admin
            .execute("SELECT pg_drop_replication_slot($1)", &[&name])
            .await
            .ok();
        admin
            .batch_execute(&format!("DROP DATABASE {name}"))
            .await?;
    }
    let med = |values: Vec<f64>| report::median(&mut values.clone());
    let result = json!({
        "machine": report::machine(),
        "settings": {
            "rows": args.rows, "per_transaction": args.per_transaction, "runs": args.runs,
            "paced_rate": args.paced_rate, "paced_seconds": args.paced_seconds,
            "topic_partitions": 3,
            "broker": args.broker.describe(),
        },
        "snapshot_rows_per_second": med(snapshot.iter().map(|p| p.rows_per_second).collect()),
        "snapshot_seconds": med(snapshot.iter().map(|p| p.seconds).collect()),
        "stream_rows_per_second": med(stream.iter().map(|p| p.rows_per_second).collect()),
        "stream_seconds": med(stream.iter().map(|p| p.seconds).collect()),
        "stream_cpu_us_per_row": {
            "erpstream": med(cpu_per_row.iter().map(|c| c[0]).collect()),
            "broker": med(cpu_per_row.iter().map(|c| c[1]).collect()),
        },
        "paced_commit_to_ack_ms": {
            "p50": med(latency.iter().map(|l| l[0]).collect()),
            "p99": med(latency.iter().map(|l| l[1]).collect()),
            "p999": med(latency.iter().map(|l| l[2]).collect()),
        },
        "runs": {
            "snapshot_rows_per_second": snapshot.iter().map(|p| p.rows_per_second).collect::<Vec<_>>(),
            "stream_rows_per_second": stream.iter().map(|p| p.rows_per_second).collect::<Vec<_>>(),
            "paced_commit_to_ack_ms_p50_p99_p999": latency,
        },
    });
    let path = report::write(&args.broker.file_name("cdc"), &result)?;
    println!(
        "pg_cdc: snapshot {:.0} rows/s, stream {:.0} rows/s, paced commit->ack p50 {:.1} ms / p99 {:.1} ms  ({})",
        result["snapshot_rows_per_second"]
            .as_f64()
            .unwrap_or_default(),
        result["stream_rows_per_second"]
            .as_f64()
            .unwrap_or_default(),
        result["paced_commit_to_ack_ms"]["p50"]
            .as_f64()
            .unwrap_or_default(),
        result["paced_commit_to_ack_ms"]["p99"]
            .as_f64()
            .unwrap_or_default(),
        path.display()
    );
    Ok(())
}

/// The `quantile` of a Prometheus histogram, interpolated within its bucket as
/// `histogram_quantile` does (so its precision is the bucket layout's).
fn bucket_quantile(text: &str, name: &str, quantile: f64) -> f64 {
    let prefix = format!("{name}_bucket{{");
    let mut buckets: Vec<(f64, f64)> = text
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let Some(&(_, total)) = buckets.last() else {
        return f64::NAN;
    };
    let rank = quantile * total;
    let mut lower = (0.0, 0.0);
    for &(le, count) in &buckets {
        if count >= rank {
            if le.is_infinite() {
                return lower.0;
            }
            let share = if count > lower.1 {
                (rank - lower.1) / (count - lower.1)
            } else {
                1.0
            };
            return lower.0 + (le - lower.0) * share;
        }
        lower = (le, count);
    }
    f64::NAN
}

fn start(
    args: &Args,
    broker: &Broker,
    name: &str,
    url: &str,
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
  inventory.change: {{ partitions: 3 }}
sources:
  db:
    type: pg_cdc
    database: {url}
    state_database: {state}
    slot: {name}
    publication: {name}
    snapshot_chunk: 10000
    tables:
      public.stock:
        topic: inventory.change
        fields:
          sku: item_code
          location_code: warehouse
          new_quantity: actual_qty
"#,
            state = args.database,
        ),
        &[],
    )
}
