//! The `erpstream` command.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
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
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
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
        Command::Run { topology } => {
            let topology = Topology::load(&topology)
                .map_err(|e| anyhow::anyhow!("{}: {e}", topology.display()))?;
            let metrics = runtime::telemetry::init_metrics()
                .context("could not install the metrics recorder")?;
            runtime::run(topology, metrics).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Registry {
            listen,
            database_url,
        } => {
            registry::serve(listen, &database_url).await?;
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
            let healthy = result.failed == 0
                && result.bad_signatures == 0
                && result.out_of_order == 0
                && result.keys_consistent == result.keys_total
                && result.orders.as_ref().is_none_or(|o| {
                    o.accepted == o.placed
                        && o.repeats_answered_first == o.placed
                        && o.written_back == o.placed
                        && o.erp_unauthorized == 0
                });
            Ok(if healthy {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
