//! The `erpstream` command.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use erpstream_pipeline::tools::{self, Tools, dlq, reconcile, replay, tail};
use erpstream_pipeline::{demo, registry, runtime, topology::Topology};

/// erpstream keeps ERPs, storefronts and planning databases in step through Kafka.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a topology until SIGTERM.
    Run {
        /// The topology file.
        #[arg(long, default_value = "topology.yaml")]
        topology: PathBuf,
    },
    /// Check a topology file and list every problem with its path.
    Validate {
        /// The topology file.
        file: PathBuf,
    },
    /// List the topics the topology needs (declared ones, dead-letter topics, changelogs),
    /// one JSON object per line: name, partitions, cleanup policy. erpstream creates missing
    /// topics at start; where it may not (managed Kafka), create these first.
    Topics {
        #[command(flatten)]
        topology: TopologyArg,
    },
    /// Print a topic's records as JSON lines (values decoded through the registry).
    Tail {
        /// Topic, e.g. inventory.change.
        topic: String,
        /// Start at the first record at or after this time (RFC 3339, a date, epoch ms, or a
        /// duration ago such as 15m); default: only new records.
        #[arg(long, conflicts_with = "offset")]
        from: Option<String>,
        /// Start at this offset in every partition.
        #[arg(long)]
        offset: Option<i64>,
        /// Only records with this key.
        #[arg(long)]
        key: Option<String>,
        /// Include each record's headers.
        #[arg(long)]
        headers: bool,
        /// Stop at the end of what the topic holds now instead of waiting for more.
        #[arg(long)]
        no_follow: bool,
        /// Stop after this many records.
        #[arg(long)]
        limit: Option<u64>,
        #[command(flatten)]
        topology: TopologyArg,
    },
    /// Replay a topic's records of a time window to stdout, a file, or a sink (shadow mode
    /// unless --live).
    Replay {
        /// Topic to replay.
        #[arg(long)]
        topic: String,
        /// Window start (inclusive): RFC 3339, a date, epoch ms, or a duration ago (2h).
        #[arg(long)]
        from: String,
        /// Window end (exclusive); default: now.
        #[arg(long)]
        to: Option<String>,
        /// `stdout`, `file` (with --out), or a sink id of the topology.
        #[arg(long)]
        into: String,
        /// The file for `--into file`; for a sink, where its computed requests are written.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Re-publish the window to its topic so the sink really sends it again (through its
        /// dedupe and version guards).
        #[arg(long)]
        live: bool,
        /// Read and count only; write and send nothing.
        #[arg(long)]
        dry_run: bool,
        /// Only records with this key.
        #[arg(long)]
        key: Option<String>,
        /// Also write the summary as JSON here.
        #[arg(long)]
        report: Option<PathBuf>,
        #[command(flatten)]
        topology: TopologyArg,
    },
    /// Compare an external stock picture (CSV/JSON file or URL) with erpstream's materialized
    /// state and report what is missing, extra or differing.
    Reconcile {
        /// The external picture: a file or an http(s) URL.
        #[arg(long)]
        against: String,
        /// Request header for --against URLs, `Name: value` (repeatable).
        #[arg(long = "header")]
        headers: Vec<String>,
        /// erpstream's side: snapshot URL or a saved `?detail=true` snapshot file; default:
        /// the topology's snapshot endpoint.
        #[arg(long)]
        state: Option<String>,
        /// Token for the snapshot endpoint.
        #[arg(long, env = "STOREFRONT_API_TOKEN", hide_env_values = true)]
        state_token: Option<String>,
        /// Also compare the planning database (Postgres URL).
        #[arg(long)]
        planning: Option<String>,
        /// Also compare the storefront's view (file or URL, same formats) with erpstream's
        /// available-to-sell.
        #[arg(long)]
        storefront: Option<String>,
        /// When the picture was taken; default: fetch time (URL) or modification time (file).
        #[arg(long)]
        as_of: Option<String>,
        /// Publish correcting inventory.change events for every difference.
        #[arg(long)]
        repair: bool,
        /// Topic of the inventory processor's input (named in `last_event`).
        #[arg(long, default_value = "inventory.change")]
        events_topic: String,
        /// Write the full report as JSON here.
        #[arg(long)]
        report: Option<PathBuf>,
        /// Exit with status 1 when anything differs.
        #[arg(long)]
        fail_on_diff: bool,
        #[command(flatten)]
        topology: TopologyArg,
    },
    /// Inspect and redrive dead-lettered records.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Serve a Confluent-compatible schema registry stored in Postgres (for local use).
    Registry {
        /// Listen address.
        #[arg(
            long,
            default_value = "127.0.0.1:8081",
            env = "ERPSTREAM_REGISTRY_LISTEN"
        )]
        listen: SocketAddr,
        /// Postgres connection string.
        #[arg(long, env = "ERPSTREAM_REGISTRY_DATABASE_URL")]
        database_url: String,
        /// Serve HTTPS with this certificate chain (PEM; re-read when it changes).
        #[arg(long, env = "ERPSTREAM_REGISTRY_TLS_CERT", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The private key of --tls-cert (PEM).
        #[arg(long, env = "ERPSTREAM_REGISTRY_TLS_KEY", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Require HTTP basic credentials: this user, with the password in the environment
        /// variable ERPSTREAM_REGISTRY_PASSWORD (never on the command line).
        #[arg(long, env = "ERPSTREAM_REGISTRY_USER")]
        user: Option<String>,
    },
    /// Send a signed ERP load to a running pipeline and measure storefront deliveries.
    Demo {
        /// Base URL of the pipeline.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        target: String,
        /// Where the demo storefront listens (the topology's storefront URL must point here).
        #[arg(long, default_value = "127.0.0.1:9090")]
        listen: SocketAddr,
        /// Webhooks to send.
        #[arg(long, default_value_t = 2000)]
        events: usize,
        /// Webhooks per second.
        #[arg(long, default_value_t = 200.0)]
        rate: f64,
        /// Distinct skus.
        #[arg(long, default_value_t = 500)]
        skus: usize,
        /// Locations per sku.
        #[arg(long, default_value_t = 3)]
        locations: usize,
        /// Share of webhooks the "ERP" sends twice.
        #[arg(long, default_value_t = 0.05)]
        duplicates: f64,
        /// Secret the ERP signs with.
        #[arg(long, env = "ERP_WEBHOOK_SECRET", hide_env_values = true)]
        erp_secret: String,
        /// Secret the storefront verifies with.
        #[arg(long, env = "STOREFRONT_WEBHOOK_SECRET", hide_env_values = true)]
        storefront_secret: String,
        /// Online orders to place through the storefront API (0: none).
        #[arg(long, default_value_t = 20)]
        orders: usize,
        /// Where the demo ERP listens (the topology's erp_rest URL must point here).
        #[arg(long, default_value = "127.0.0.1:9091")]
        erp_listen: SocketAddr,
        /// Token the storefront calls the API with.
        #[arg(long, env = "STOREFRONT_API_TOKEN", hide_env_values = true)]
        api_token: Option<String>,
        /// Token the demo ERP expects from the write-back sink.
        #[arg(long, env = "ERP_API_TOKEN", hide_env_values = true)]
        erp_token: Option<String>,
        /// Also write the report as JSON here.
        #[arg(long)]
        report: Option<PathBuf>,
    },
}

/// The topology a tool reads its broker, registry and topics from.
#[derive(clap::Args, Clone)]
struct TopologyArg {
    /// The topology file.
    #[arg(long, default_value = "topology.yaml", env = "ERPSTREAM_TOPOLOGY")]
    topology: PathBuf,
}

/// Filters of `dlq list` and `dlq redrive`.
#[derive(clap::Args, Clone)]
struct DlqFilter {
    /// Only the dead letters of this topic (e.g. inventory.available).
    #[arg(long)]
    topic: Option<String>,
    /// Only this error type: retries_exhausted, rejected, refused, undecodable, mapping.
    #[arg(long)]
    error_type: Option<String>,
    /// Only this key.
    #[arg(long)]
    key: Option<String>,
    /// Only records this component dead-lettered.
    #[arg(long)]
    source: Option<String>,
    /// Only this record (an ID as `dlq list` shows it); repeat for several.
    #[arg(long = "id")]
    ids: Vec<String>,
}

impl DlqFilter {
    fn into_filter(self, all: bool) -> dlq::Filter {
        dlq::Filter {
            topic: self.topic,
            error_type: self.error_type,
            key: self.key,
            source: self.source,
            ids: self.ids.into_iter().collect(),
            all,
        }
    }
}

#[derive(Subcommand)]
enum DlqCommand {
    /// List dead-lettered records (pending ones unless --all).
    List {
        #[command(flatten)]
        filter: DlqFilter,
        /// Include records already redriven or superseded.
        #[arg(long)]
        all: bool,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        topology: TopologyArg,
    },
    /// Show one record (`<dlq topic>/<partition>/<offset>` from `dlq list`) with its value.
    Show {
        /// The record's id.
        id: String,
        #[command(flatten)]
        topology: TopologyArg,
    },
    /// Publish pending records again to the topic they failed on.
    Redrive {
        #[command(flatten)]
        filter: DlqFilter,
        /// Report what would be redriven; publish nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        topology: TopologyArg,
    },
}

fn main() -> ExitCode {
    runtime::telemetry::init_logging();
    let cli = Cli::parse();
    let tokio = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: could not start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match tokio.block_on(execute(cli.command)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", report(&err));
            ExitCode::FAILURE
        }
    }
}

/// `err` with each of its causes that its text does not already say (many errors here name
/// their cause in their own message, and also keep it as their source).
fn report(err: &anyhow::Error) -> String {
    let mut text = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

async fn execute(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Validate { file } => match Topology::load(&file) {
            Ok(_) => {
                println!("{}: valid", file.display());
                Ok(ExitCode::SUCCESS)
            }
            Err(errors) => {
                println!("{}: {errors}", file.display());
                Ok(ExitCode::FAILURE)
            }
        },
        Command::Topics { topology } => {
            let file = topology.topology;
            let topology =
                Topology::load(&file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            for spec in erpstream_pipeline::runtime::topic_specs(&topology) {
                let policy = if spec.compacted { "compact" } else { "delete" };
                println!(
                    "{}",
                    serde_json::json!({"name": spec.name, "partitions": spec.partitions,
                        "cleanup_policy": policy})
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { topology } => {
            let topology = Topology::load(&topology)
                .map_err(|e| anyhow::anyhow!("{}: {e}", topology.display()))?;
            let metrics = runtime::telemetry::init_metrics()
                .context("could not install the metrics recorder")?;
            runtime::run(topology, metrics).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Tail {
            topic,
            from,
            offset,
            key,
            headers,
            no_follow,
            limit,
            topology,
        } => {
            let tools = Tools::load(&topology.topology).await?;
            let from = match (from, offset) {
                (Some(time), _) => tools::From::Time(tools::parse_time(&time)?),
                (None, Some(offset)) => tools::From::Offset(offset),
                (None, None) => tools::From::End,
            };
            let options = tail::TailOptions {
                topic,
                from,
                no_follow,
                key,
                headers,
                limit,
            };
            tail::run(&tools, options).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay {
            topic,
            from,
            to,
            into,
            out,
            live,
            dry_run,
            key,
            report,
            topology,
        } => {
            let tools = Tools::load(&topology.topology).await?;
            let target = match into.as_str() {
                "stdout" => replay::Target::Stdout,
                "file" => {
                    replay::Target::File(out.clone().context("--into file needs --out PATH")?)
                }
                sink => replay::Target::Sink(sink.to_string()),
            };
            let options = replay::ReplayOptions {
                topic,
                from: tools::parse_time(&from).context("--from")?,
                to: match to {
                    Some(to) => tools::parse_time(&to).context("--to")?,
                    None => erpstream_schemas::now_millis(),
                },
                target,
                out,
                live,
                dry_run,
                key,
            };
            let summary = replay::run(&tools, options).await?;
            eprintln!("{summary}");
            if let Some(path) = report {
                std::fs::write(&path, serde_json::to_vec_pretty(&summary)?)
                    .with_context(|| format!("could not write {}", path.display()))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Reconcile {
            against,
            headers,
            state,
            state_token,
            planning,
            storefront,
            as_of,
            repair,
            events_topic,
            report,
            fail_on_diff,
            topology,
        } => {
            let tools = Tools::load(&topology.topology).await?;
            let options = reconcile::ReconcileOptions {
                against,
                headers,
                state,
                state_token,
                planning,
                storefront,
                as_of: as_of
                    .map(|t| tools::parse_time(&t))
                    .transpose()
                    .context("--as-of")?,
                repair,
                events_topic,
            };
            let result = reconcile::run(&tools, options).await?;
            eprint!("{}", reconcile::summary(&result));
            if let Some(path) = &report {
                reconcile::write_report(&result, path)?;
            } else {
                println!("{}", serde_json::to_string(&result)?);
            }
            Ok(if fail_on_diff && !result.is_clean() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Dlq { command } => match command {
            DlqCommand::List {
                filter,
                all,
                json,
                topology,
            } => {
                let tools = Tools::load(&topology.topology).await?;
                let entries = dlq::list(&tools, &filter.into_filter(all)).await?;
                if json {
                    for entry in &entries {
                        println!("{}", serde_json::to_string(entry)?);
                    }
                } else {
                    print!("{}", dlq::table(&entries));
                    eprintln!("{} dead-lettered record(s)", entries.len());
                }
                Ok(ExitCode::SUCCESS)
            }
            DlqCommand::Show { id, topology } => {
                let tools = Tools::load(&topology.topology).await?;
                println!(
                    "{}",
                    serde_json::to_string_pretty(&dlq::show(&tools, &id).await?)?
                );
                Ok(ExitCode::SUCCESS)
            }
            DlqCommand::Redrive {
                filter,
                dry_run,
                topology,
            } => {
                let tools = Tools::load(&topology.topology).await?;
                let summary = dlq::redrive(&tools, &filter.into_filter(false), dry_run).await?;
                eprintln!("{summary}");
                println!("{}", serde_json::to_string(&summary)?);
                Ok(ExitCode::SUCCESS)
            }
        },
        Command::Registry {
            listen,
            database_url,
            tls_cert,
            tls_key,
            user,
        } => {
            let auth = match user {
                Some(user) => Some(registry::BasicCredentials {
                    user,
                    password: std::env::var("ERPSTREAM_REGISTRY_PASSWORD")
                        .ok()
                        .filter(|p| !p.is_empty())
                        .context("--user needs the password in ERPSTREAM_REGISTRY_PASSWORD")?
                        .into(),
                }),
                None => None,
            };
            let tls =
                tls_cert
                    .zip(tls_key)
                    .map(|(cert_file, key_file)| runtime::listener::HttpTls {
                        cert_file,
                        key_file,
                    });
            if let Some(problem) = tls.as_ref().and_then(|tls| tls.validate("--tls").pop()) {
                anyhow::bail!("{problem}");
            }
            registry::serve(listen, &database_url, tls.as_ref(), auth).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo {
            target,
            listen,
            events,
            rate,
            skus,
            locations,
            duplicates,
            erp_secret,
            storefront_secret,
            orders,
            erp_listen,
            api_token,
            erp_token,
            report,
        } => {
            anyhow::ensure!(rate > 0.0, "--rate must be > 0");
            anyhow::ensure!(
                skus > 0 && locations > 0,
                "--skus and --locations must be > 0"
            );
            let config = demo::DemoConfig {
                target,
                listen,
                events,
                rate,
                skus,
                locations,
                duplicate_share: duplicates,
                erp_secret,
                storefront_secret,
                settle: Duration::from_secs(60),
                orders: match (orders, api_token, erp_token) {
                    (0, _, _) => None,
                    (orders, Some(api_token), Some(erp_token)) => {
                        Some(demo::orders::OrdersConfig {
                            orders,
                            erp_listen,
                            api_token,
                            erp_token,
                        })
                    }
                    _ => anyhow::bail!(
                        "--orders needs --api-token and --erp-token (or STOREFRONT_API_TOKEN and ERP_API_TOKEN)"
                    ),
                },
            };
            let result = demo::run(config).await?;
            println!("{}", serde_json::to_string_pretty(&result)?);
            if let Some(path) = report {
                std::fs::write(&path, serde_json::to_vec_pretty(&result)?)
                    .with_context(|| format!("could not write {}", path.display()))?;
            }
            Ok(if result.is_healthy() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
