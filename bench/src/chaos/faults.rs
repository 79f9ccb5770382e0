//! The fault schedule of a chaos run and what carries it out: the pipeline replicas (started,
//! SIGKILLed and started again), and the local stack's broker, Postgres and registry
//! (stopped the way the schedule says and started again with `deploy/local/up.sh`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{Value, json};

use super::world::{Erp, Storefront};

/// One fault.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "fault", rename_all = "snake_case")]
pub enum Fault {
    /// SIGKILL of a pipeline replica, started again after `down_ms`.
    KillPipeline { replica: usize, down_ms: u64 },
    /// The broker stopped (`kill -9`, or SIGTERM when `graceful`), started again after
    /// `down_ms`.
    RestartBroker { graceful: bool, down_ms: u64 },
    /// `pg_ctl stop -m immediate`, started again after `down_ms`.
    RestartPostgres { down_ms: u64 },
    /// The storefront answers half of its requests 503 or holds them past the timeout.
    StorefrontOutage { for_ms: u64 },
    /// The ERP (write-back and the polled ERPNext) answers 503.
    ErpDown { for_ms: u64 },
    /// The schema registry process stopped.
    RegistryDown { for_ms: u64 },
}

/// A fault and when it starts, seconds into the load.
#[derive(Clone, Debug, Serialize)]
pub struct Planned {
    pub at_s: f64,
    #[serde(flatten)]
    pub fault: Fault,
}

/// How many of each fault.
pub struct Counts {
    pub kills: usize,
    pub broker_restarts: usize,
    pub postgres_restarts: usize,
}

/// The schedule for a run of `duration` seconds: every fault at a random moment of the
/// middle of the run (the first and last 5% are left quiet), drawn from `seed`.
pub fn schedule(seed: u64, duration: f64, replicas: usize, counts: &Counts) -> Vec<Planned> {
    let mut rng = StdRng::seed_from_u64(seed);
    let (from, to) = (duration * 0.05, duration * 0.85);
    let at = |rng: &mut StdRng| rng.random_range(from..to);
    let mut plan = Vec::new();
    // Kills spread evenly with jitter, so they are never all bunched.
    let slot = (to - from) / counts.kills.max(1) as f64;
    for i in 0..counts.kills {
        plan.push(Planned {
            at_s: from + slot * i as f64 + rng.random_range(0.0..slot * 0.8),
            fault: Fault::KillPipeline {
                replica: rng.random_range(0..replicas),
                down_ms: rng.random_range(0..3000),
            },
        });
    }
    for i in 0..counts.broker_restarts {
        plan.push(Planned {
            at_s: at(&mut rng),
            // kill -9 and graceful in turn, starting with kill -9.
            fault: Fault::RestartBroker {
                graceful: i % 2 == 1,
                down_ms: rng.random_range(1000..8000),
            },
        });
    }
    for _ in 0..counts.postgres_restarts {
        plan.push(Planned {
            at_s: at(&mut rng),
            fault: Fault::RestartPostgres {
                down_ms: rng.random_range(1000..8000),
            },
        });
    }
    plan.push(Planned {
        at_s: at(&mut rng),
        fault: Fault::StorefrontOutage { for_ms: 60_000 },
    });
    plan.push(Planned {
        at_s: at(&mut rng),
        fault: Fault::ErpDown { for_ms: 60_000 },
    });
    plan.push(Planned {
        at_s: at(&mut rng),
        fault: Fault::RegistryDown { for_ms: 10_000 },
    });
    plan.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
    plan
}

/// A pipeline replica: `erpstream run` on its own port and `instance_id`.
pub struct Replica {
    pub port: u16,
    instance: String,
    child: Option<Child>,
    log: PathBuf,
    pub starts: u32,
}

/// The pipeline replicas of a run.
pub struct Replicas {
    bin: PathBuf,
    topology: PathBuf,
    env: Vec<(String, String)>,
    pub replicas: Vec<Mutex<Replica>>,
}

impl Replicas {
    pub fn new(
        bin: PathBuf,
        topology: PathBuf,
        dir: &Path,
        count: usize,
        env: Vec<(String, String)>,
    ) -> anyhow::Result<Self> {
        let replicas = (0..count)
            .map(|i| {
                Ok(Mutex::new(Replica {
                    port: crate::process::free_port()?,
                    instance: format!("chaos-{i}"),
                    child: None,
                    log: dir.join(format!("pipeline-{i}.log")),
                    starts: 0,
                }))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            bin,
            topology,
            env,
            replicas,
        })
    }

    fn lock(&self, i: usize) -> std::sync::MutexGuard<'_, Replica> {
        self.replicas[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The HTTP base URLs of every replica.
    pub fn urls(&self) -> Vec<String> {
        (0..self.replicas.len())
            .map(|i| format!("http://127.0.0.1:{}", self.lock(i).port))
            .collect()
    }

    /// Starts replica `i` (its log appended to).
    pub fn start(&self, i: usize) -> anyhow::Result<()> {
        let mut replica = self.lock(i);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&replica.log)?;
        let child = Command::new(&self.bin)
            .arg("run")
            .arg("--topology")
            .arg(&self.topology)
            .env("ERPSTREAM_LISTEN", format!("127.0.0.1:{}", replica.port))
            .env("ERPSTREAM_INSTANCE_ID", &replica.instance)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        replica.child = Some(child);
        replica.starts += 1;
        Ok(())
    }

    /// SIGKILL of replica `i`.
    pub fn kill(&self, i: usize) {
        if let Some(mut child) = self.lock(i).child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether replica `i` exited on its own (a crash the schedule did not cause).
    pub fn exited(&self, i: usize) -> Option<std::process::ExitStatus> {
        self.lock(i)
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGTERM of every replica, then waits for them.
    pub fn stop_all(&self) {
        for i in 0..self.replicas.len() {
            if let Some(mut child) = self.lock(i).child.take() {
                let _ = Command::new("kill")
                    .arg("-TERM")
                    .arg(child.id().to_string())
                    .status();
                let _ = child.wait();
            }
        }
    }
}

impl Drop for Replicas {
    fn drop(&mut self) {
        for i in 0..self.replicas.len() {
            self.kill(i);
        }
    }
}

/// The local stack's services (pid files and the Postgres cluster of `state_dir`).
pub struct Stack {
    pub root: PathBuf,
    pub state_dir: PathBuf,
    pg_bin: PathBuf,
    /// One stack operation at a time (`up.sh` is not meant to run twice at once).
    lock: tokio::sync::Mutex<()>,
}

impl Stack {
    pub fn from_env(root: PathBuf) -> anyhow::Result<Self> {
        let state_dir = PathBuf::from(
            std::env::var("ERPSTREAM_STATE_DIR").context("ERPSTREAM_STATE_DIR is not set")?,
        );
        let pg_bin = PathBuf::from(
            std::env::var("ERPSTREAM_PG_BIN")
                .unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into()),
        );
        Ok(Self {
            root,
            state_dir,
            pg_bin,
            lock: tokio::sync::Mutex::new(()),
        })
    }

    fn pid(&self, name: &str) -> Option<u32> {
        std::fs::read_to_string(self.state_dir.join("run").join(format!("{name}.pid")))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Signals the process of pid file `name` and waits until it is gone.
    async fn stop(&self, name: &str, signal: &str) -> anyhow::Result<()> {
        let pid = self
            .pid(name)
            .with_context(|| format!("no pid file for {name}"))?;
        run(Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string()))?;
        let until = Instant::now() + Duration::from_secs(30);
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // A graceful stop that hangs is finished the hard way.
        if Path::new(&format!("/proc/{pid}")).exists() {
            run(Command::new("kill").arg("-KILL").arg(pid.to_string()))?;
        }
        Ok(())
    }

    /// `deploy/local/up.sh`: starts whatever of the stack is not running.
    async fn up(&self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.state_dir.join("log").join("chaos-up.log"))?;
        let status = tokio::process::Command::new(self.root.join("deploy/local/up.sh"))
            .stdout(log.try_clone()?)
            .stderr(log)
            .status()
            .await?;
        anyhow::ensure!(status.success(), "deploy/local/up.sh failed: {status}");
        Ok(())
    }

    fn as_postgres(&self, program: &Path) -> Command {
        if running_as_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    async fn stop_postgres(&self) -> anyhow::Result<()> {
        run(self
            .as_postgres(&self.pg_bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.state_dir.join("pg"))
            .args(["-m", "immediate", "stop"]))
    }
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let output = command.stdin(Stdio::null()).output()?;
    anyhow::ensure!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

/// What a run's faults act on.
pub struct Targets {
    pub replicas: Arc<Replicas>,
    pub stack: Arc<Stack>,
    pub storefront: Arc<Storefront>,
    pub erp: Arc<Erp>,
    pub erpnext: erpstream_e2e::erpnext::FakeErp,
}

/// Carries out `plan` from `start`; returns each fault as executed (its timestamps, and an
/// error if the harness could not carry it out).
pub async fn execute(plan: Vec<Planned>, start: Instant, targets: Arc<Targets>) -> Vec<Value> {
    let mut tasks = tokio::task::JoinSet::new();
    for planned in plan {
        let targets = targets.clone();
        tasks.spawn(async move {
            tokio::time::sleep_until((start + Duration::from_secs_f64(planned.at_s)).into()).await;
            let began = Instant::now();
            let began_at = chrono::Utc::now();
            let result = carry_out(&planned.fault, &targets).await;
            let mut record = serde_json::to_value(&planned).unwrap_or_default();
            record["started_at"] = json!(began_at.to_rfc3339());
            record["started_s"] = json!(round(began.duration_since(start).as_secs_f64()));
            record["recovered_s"] = json!(round(start.elapsed().as_secs_f64()));
            if let Err(err) = result {
                record["error"] = json!(format!("{err:#}"));
            }
            eprintln!("[chaos] fault {record}");
            record
        });
    }
    let mut executed: Vec<Value> = tasks.join_all().await;
    executed.sort_by(|a, b| {
        a["started_s"]
            .as_f64()
            .unwrap_or(0.0)
            .total_cmp(&b["started_s"].as_f64().unwrap_or(0.0))
    });
    executed
}

fn round(seconds: f64) -> f64 {
    (seconds * 1000.0).round() / 1000.0
}

async fn carry_out(fault: &Fault, targets: &Targets) -> anyhow::Result<()> {
    match *fault {
        Fault::KillPipeline { replica, down_ms } => {
            targets.replicas.kill(replica);
            tokio::time::sleep(Duration::from_millis(down_ms)).await;
            targets.replicas.start(replica)
        }
        Fault::RestartBroker { graceful, down_ms } => {
            let stack = &targets.stack;
            let _one = stack.lock.lock().await;
            stack
                .stop("tansu", if graceful { "TERM" } else { "KILL" })
                .await?;
            tokio::time::sleep(Duration::from_millis(down_ms)).await;
            stack.up().await
        }
        Fault::RestartPostgres { down_ms } => {
            let stack = &targets.stack;
            let _one = stack.lock.lock().await;
            stack.stop_postgres().await?;
            tokio::time::sleep(Duration::from_millis(down_ms)).await;
            stack.up().await
        }
        Fault::StorefrontOutage { for_ms } => {
            targets.storefront.set_degraded(true);
            tokio::time::sleep(Duration::from_millis(for_ms)).await;
            targets.storefront.set_degraded(false);
            Ok(())
        }
        Fault::ErpDown { for_ms } => {
            use erpstream_e2e::erpnext::Fault as Answer;
            targets.erp.set_down(true);
            targets
                .erpnext
                .fail_always(Some(Answer::Status(503, Some(1))));
            tokio::time::sleep(Duration::from_millis(for_ms)).await;
            targets.erp.set_down(false);
            targets.erpnext.fail_always(None);
            Ok(())
        }
        Fault::RegistryDown { for_ms } => {
            let stack = &targets.stack;
            let _one = stack.lock.lock().await;
            stack.stop("registry", "KILL").await?;
            tokio::time::sleep(Duration::from_millis(for_ms)).await;
            stack.up().await
        }
    }
}
