//! Harness for erpstream's end-to-end tests: a real pipeline process against the real local
//! stack (started by `deploy/local/up.sh`), a storefront receiver that verifies signatures,
//! and helpers to post signed webhooks and read topics back through the registry.
//!
//! Every test gets its own app id and topic prefix, so tests run side by side.

pub mod erp;
pub mod erpnext;
pub mod tls;

pub use tls::{Issued, TestCa, TlsTerminator};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;
use sha2::Sha256;

/// Secret the test ERP signs with.
pub const ERP_SECRET: &str = "test-erp-secret";
/// Secret the test storefront verifies with.
pub const STOREFRONT_SECRET: &str = "test-storefront-secret";
/// Token the test storefront calls the API with.
pub const API_TOKEN: &str = "test-api-token";
/// Credential the test ERP expects (ERPNext style `key:secret`).
pub const ERP_TOKEN: &str = "test-key:test-secret";
/// Location held for order lines that name none.
pub const DEFAULT_LOCATION: &str = "WH-TECH-01";
/// Planning API tokens by role (`TEST_PLANNING_{ADMIN,COORDINATOR,VIEWER}`).
pub const PLANNING_TOKENS: [(&str, &str); 3] = [
    ("TEST_PLANNING_ADMIN", "planning-admin-token"),
    ("TEST_PLANNING_COORDINATOR", "planning-coordinator-token"),
    ("TEST_PLANNING_VIEWER", "planning-viewer-token"),
];

/// Console tokens by role (`TEST_CONSOLE_{OPERATOR,VIEWER}`), with their names.
pub const CONSOLE_TOKENS: [(&str, &str); 2] = [
    ("TEST_CONSOLE_OPERATOR", "console-operator-token"),
    ("TEST_CONSOLE_VIEWER", "console-viewer-token"),
];

/// Where the local stack is.
#[derive(Clone, Debug)]
pub struct Stack {
    /// Bootstrap servers.
    pub brokers: String,
    /// Registry URL.
    pub registry: String,
    /// Postgres URL.
    pub database: String,
}

impl Stack {
    /// Reads the stack's address from the environment `deploy/local/env.sh` exports.
    pub fn from_env() -> Self {
        let get = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| {
                panic!("{name} is not set: run the tests with deploy/local/test.sh, or start deploy/local/up.sh and source deploy/local/env.sh")
            })
        };
        Self {
            brokers: get("ERPSTREAM_BROKERS"),
            registry: get("ERPSTREAM_REGISTRY_URL"),
            database: get("ERPSTREAM_DATABASE_URL"),
        }
    }
}

/// Opens a Postgres connection whose driver runs on its own task.
pub async fn pg(url: &str) -> tokio_postgres::Client {
    erpstream_connectors::postgres::connect(url, "test")
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"))
}

/// A tansu broker of this test's own, on an empty store (a test that loads the broker
/// heavily does not slow the others, and the others' data does not slow it).
pub struct Broker {
    child: Child,
    dir: PathBuf,
    /// Bootstrap servers.
    pub brokers: String,
}

impl Broker {
    /// Starts `tansu` (on `PATH`, as the local stack installs it) and waits for its port.
    pub fn start() -> Self {
        let dir = std::env::temp_dir().join(unique("erpstream-tansu-"));
        std::fs::create_dir_all(&dir).expect("broker dir");
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let log = std::fs::File::create(dir.join("tansu.log")).expect("broker log");
        let child = Command::new("tansu")
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start tansu (installed by deploy/local/up.sh)");
        wait_for_port(port);
        Self {
            child,
            dir,
            brokers: format!("127.0.0.1:{port}"),
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A tansu broker of this test's own that takes only `SASL_SSL` clients: SCRAM-SHA-512 by
/// tansu itself (`--authentication`), TLS by stunnel in front of it — tansu 0.6.0's
/// `--cert` and `--key` are one exclusive argument group, so its own TLS cannot be turned
/// on. The certificates come from a throw-away CA made with the `openssl` command.
pub struct SecureBroker {
    broker: Child,
    stunnel: TlsTerminator,
    dir: PathBuf,
    /// Bootstrap servers (the TLS side).
    pub brokers: String,
    /// The CA file that verifies the broker's certificate.
    pub ca_file: PathBuf,
    /// Another CA's file: the broker's certificate does not chain to it.
    pub other_ca_file: PathBuf,
    /// The SCRAM user (its password: [`KAFKA_PASSWORD`]).
    pub user: &'static str,
}

/// The password of the [`SecureBroker`]'s user.
pub const KAFKA_PASSWORD: &str = "broker-s3cret";

impl SecureBroker {
    /// Makes the CA and the broker's certificate, starts tansu without authentication to
    /// create the user (it refuses even that once authentication is on), then with it, and
    /// stunnel in front.
    pub fn start() -> Self {
        let dir = std::env::temp_dir().join(unique("erpstream-secure-tansu-"));
        std::fs::create_dir_all(&dir).expect("broker dir");
        let ca = TestCa::new(&dir, "ca");
        let other_ca = TestCa::new(&dir, "other-ca");
        let certificate = ca.issue("broker");
        let (inner, outer) = (free_port(), free_port());
        let user = "erpstream";
        let tansu = |authentication: bool| {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("tansu.log"))
                .expect("broker log");
            let mut command = Command::new("tansu");
            command
                .args([
                    "broker",
                    "--listener-url",
                    &format!("tcp://127.0.0.1:{inner}"),
                ])
                .args([
                    "--advertised-listener-url",
                    &format!("tcp://127.0.0.1:{outer}"),
                ])
                .args(["--storage-engine", "sqlite://tansu.db"])
                .current_dir(&dir)
                .stdout(Stdio::null())
                .stderr(log);
            if authentication {
                command.arg("--authentication");
            }
            let child = command
                .spawn()
                .expect("start tansu (installed by deploy/local/up.sh)");
            wait_for_port(inner);
            child
        };
        let mut setup = tansu(false);
        let created = Command::new("tansu")
            .args([
                "user",
                "create",
                "--broker",
                &format!("tcp://127.0.0.1:{inner}"),
                user,
                KAFKA_PASSWORD,
            ])
            .output()
            .expect("tansu user create");
        assert!(
            created.status.success(),
            "tansu user create: {}",
            String::from_utf8_lossy(&created.stderr)
        );
        let _ = setup.kill();
        let _ = setup.wait();
        let broker = tansu(true);
        let stunnel = TlsTerminator::start_on(&dir, &certificate, outer, inner);
        Self {
            broker,
            stunnel,
            ca_file: ca.cert,
            other_ca_file: other_ca.cert,
            dir,
            brokers: format!("127.0.0.1:{outer}"),
            user,
        }
    }

    /// The `kafka.security` section of a client of this broker, its password read from the
    /// environment variable `password_env` (the pipeline's environment has
    /// `TEST_KAFKA_PASSWORD`, the right one, and `TEST_KAFKA_WRONG_PASSWORD`), its broker
    /// certificate checked against `ca_file`.
    pub fn security(&self, ca_file: &Path, password_env: &str) -> String {
        format!(
            "{{ protocol: SASL_SSL, ca_file: {ca:?}, sasl: {{ mechanism: SCRAM-SHA-512, username: {user}, password: {{ env: {password_env} }} }} }}",
            ca = ca_file.display().to_string(),
            user = self.user,
        )
    }
}

impl Drop for SecureBroker {
    fn drop(&mut self) {
        self.stunnel.stop();
        let _ = self.broker.kill();
        let _ = self.broker.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub(crate) fn wait_for_port(port: u16) {
    let until = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < until, "nothing listens on port {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// librdkafka's mock cluster, hosted by the test process on a real TCP port of 127.0.0.1
/// for as long as it lives: a broker with transactions, which the local broker (tansu 0.6.0)
/// lacks. It has no CreateTopics, so [`MockBroker::create_topics`] creates a pipeline's
/// topics (as `erpstream topics` lists them) before the pipeline starts.
pub struct MockBroker {
    cluster: rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    /// Bootstrap servers.
    pub brokers: String,
}

impl MockBroker {
    /// Starts a one-broker mock cluster.
    pub fn start() -> Self {
        let cluster = rdkafka::mocking::MockCluster::new(1).expect("librdkafka's mock cluster");
        let brokers = cluster.bootstrap_servers();
        Self { cluster, brokers }
    }

    /// The cluster, for injecting errors into the requests it answers.
    pub fn cluster(
        &self,
    ) -> &rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
        &self.cluster
    }

    /// Creates every topic `pipeline`'s topology needs.
    pub fn create_topics(&self, pipeline: &Pipeline) {
        let output = Command::new(binary())
            .arg("topics")
            .arg("--topology")
            .arg(&pipeline.topology)
            .output()
            .expect("run erpstream topics");
        assert!(
            output.status.success(),
            "erpstream topics: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let topic: Value = serde_json::from_str(line).expect("a JSON line per topic");
            let name = topic["name"].as_str().expect("name");
            let partitions = topic["partitions"].as_i64().expect("partitions") as i32;
            self.cluster
                .create_topic(name, partitions, 1)
                .expect("create topic in the mock cluster");
        }
    }
}

/// A directory of this test's own under the system's temp dir, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A new (not yet created) directory named `<prefix><unique>`.
    pub fn new(prefix: &str) -> Self {
        Self(std::env::temp_dir().join(unique(prefix)))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A client that trusts only the CAs whose certificate files are `cas`.
pub fn https_client(cas: &[&Path]) -> reqwest::Client {
    let mut roots = Vec::new();
    for ca in cas {
        let pem = std::fs::read(ca).expect("read CA");
        roots.extend(reqwest::Certificate::from_pem_bundle(&pem).expect("CA PEM"));
    }
    reqwest::Client::builder()
        .tls_certs_only(roots)
        .build()
        .expect("https client")
}

/// A `pg_cdc` source `db` of a test topology (YAML under `sources:`): `public.stock`
/// (`item_code`, `warehouse`, `actual_qty`) of `url` to `inventory.change`, its state in
/// `state`, slot and publication named `slot`.
pub fn stock_cdc_source(url: &str, state: &str, slot: &str) -> String {
    format!(
        r#"  db:
    type: pg_cdc
    database: {url}
    state_database: {state}
    slot: {slot}
    publication: {slot}
    heartbeat: 1s
    snapshot_chunk: 100
    source_system: TestERP
    tables:
      public.stock:
        topic: inventory.change
        fields:
          sku: item_code
          location_code: warehouse
          new_quantity: actual_qty
        on_delete: {{ set: {{ new_quantity: 0, change_reason: DELETED }} }}"#
    )
}

/// A throw-away Postgres 15 cluster of this test's own (so it can be restarted or run with
/// other settings without disturbing the stack's).
pub struct PgCluster {
    dir: PathBuf,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl PgCluster {
    /// initdb and start, with `wal_level`.
    pub fn start(wal_level: &str) -> Self {
        Self::start_with(wal_level, None)
    }

    /// The same, with `ssl = on` serving `certificate`, and only TLS connections accepted
    /// (`hostssl` lines alone in `pg_hba.conf`).
    pub fn start_tls(wal_level: &str, certificate: &Issued) -> Self {
        Self::start_with(wal_level, Some(certificate))
    }

    fn start_with(wal_level: &str, tls: Option<&Issued>) -> Self {
        let dir = std::env::temp_dir().join(unique("erpstream-pg-"));
        std::fs::create_dir_all(&dir).expect("cluster dir");
        let port = free_port();
        let cluster = Self { dir, port };
        let _ = cluster.as_postgres(
            "chown",
            &["postgres", cluster.dir.to_str().unwrap_or_default()],
            true,
        );
        cluster.pg_ctl_tool(
            "initdb",
            &[
                "-D",
                &cluster.data(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
            ],
        );
        let conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\nwal_level = {wal_level}\nmax_wal_senders = 10\nmax_replication_slots = 10\nfsync = off\n",
            cluster.dir.display()
        );
        let data = PathBuf::from(cluster.data());
        let path = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&path).expect("postgresql.conf");
        text.push_str(&conf);
        if let Some(issued) = tls {
            for (from, to) in [(&issued.cert, "server.crt"), (&issued.key, "server.key")] {
                std::fs::copy(from, data.join(to)).expect("copy the server certificate");
                let _ = cluster.as_postgres(
                    "chown",
                    &["postgres", data.join(to).to_str().unwrap_or_default()],
                    true,
                );
            }
            text.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl replication all 127.0.0.1/32 trust\n",
            )
            .expect("pg_hba.conf");
        }
        std::fs::write(&path, text).expect("write postgresql.conf");
        cluster.start_again();
        cluster
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    /// Starts it (again).
    pub fn start_again(&self) {
        let log = self.dir.join("postgres.log").display().to_string();
        self.pg_ctl_tool(
            "pg_ctl",
            &["-D", &self.data(), "-l", &log, "-w", "-t", "60", "start"],
        );
    }

    /// `pg_ctl stop -m immediate`: a crash, as far as clients can tell.
    pub fn stop_immediate(&self) {
        self.pg_ctl_tool(
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        );
    }

    /// URL of `database` as the superuser.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    fn pg_ctl_tool(&self, tool: &str, args: &[&str]) {
        let bin = std::env::var("ERPSTREAM_PG_BIN")
            .unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into());
        let path = format!("{bin}/{tool}");
        let ok = self.as_postgres(&path, args, false);
        assert!(ok, "{tool} {args:?} failed; see {}", self.dir.display());
    }

    fn as_postgres(&self, program: &str, args: &[&str], root_only: bool) -> bool {
        // Postgres refuses to run as root: as root, run its tools as the postgres user.
        let is_root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0"));
        let mut command = if is_root && !root_only {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", program]);
            c
        } else if root_only && !is_root {
            return true;
        } else {
            Command::new(program)
        };
        command
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let bin = std::env::var("ERPSTREAM_PG_BIN")
            .unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into());
        let _ = self.as_postgres(
            &format!("{bin}/pg_ctl"),
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
            false,
        );
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An `erpstream registry` of this test's own, on a database of its own, that the test can
/// stop and start again on the same port (a registry outage).
pub struct Registry {
    child: Option<Child>,
    port: u16,
    database: String,
    log: PathBuf,
    /// HTTPS certificate and CA, and the basic credentials it requires, if any.
    secure: Option<(Issued, PathBuf, (&'static str, &'static str))>,
    client: reqwest::Client,
    /// Its base URL.
    pub url: String,
}

/// The user and password a secure [`Registry`] requires.
pub const REGISTRY_USER: (&str, &str) = ("sr-key", "sr-s3cret");

impl Registry {
    /// Creates its database on the stack's Postgres and starts it.
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// The same, serving HTTPS with `certificate` (from the CA whose file is `ca`) and
    /// requiring [`REGISTRY_USER`]'s basic credentials.
    pub async fn start_secure(certificate: Issued, ca: &Path) -> Self {
        Self::start_with(Some((certificate, ca.to_path_buf(), REGISTRY_USER))).await
    }

    async fn start_with(secure: Option<(Issued, PathBuf, (&'static str, &'static str))>) -> Self {
        let stack = Stack::from_env();
        let name = unique("registry_").replace(['-', '.'], "_");
        pg(&stack.database)
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create the registry's database");
        let database = match stack.database.rsplit_once('/') {
            Some((server, _)) => format!("{server}/{name}"),
            None => panic!("ERPSTREAM_DATABASE_URL has no database name"),
        };
        let port = free_port();
        let log = std::env::temp_dir().join(format!("{name}.log"));
        let client = match &secure {
            Some((_, ca, _)) => https_client(&[ca]),
            None => reqwest::Client::new(),
        };
        let scheme = if secure.is_some() { "https" } else { "http" };
        let mut registry = Self {
            child: None,
            port,
            database,
            log,
            client,
            url: format!("{scheme}://127.0.0.1:{port}"),
            secure,
        };
        registry.start_again().await;
        registry
    }

    /// Starts it (again) and waits until it answers.
    pub async fn start_again(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("registry log");
        let mut command = Command::new(binary());
        command
            .args(["registry", "--listen", &format!("127.0.0.1:{}", self.port)])
            .args(["--database-url", &self.database]);
        if let Some((certificate, _, (user, password))) = &self.secure {
            command
                .arg("--tls-cert")
                .arg(&certificate.cert)
                .arg("--tls-key")
                .arg(&certificate.key)
                .args(["--user", user])
                .env("ERPSTREAM_REGISTRY_PASSWORD", password);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn the registry");
        self.child = Some(child);
        let until = Instant::now() + Duration::from_secs(30);
        let subjects = format!("{}/subjects", self.url);
        while !self
            .authorized(self.client.get(&subjects))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            assert!(Instant::now() < until, "the registry did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills it: from now on its port refuses connections.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `request` with the basic credentials a secure registry requires.
    pub fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.secure {
            Some((_, _, (user, password))) => request.basic_auth(user, Some(password)),
            None => request,
        }
    }

    /// The `registry:` section of a topology using it (credentials from the environment
    /// variable `TEST_REGISTRY_PASSWORD`, set for every pipeline the harness starts).
    pub fn section(&self) -> String {
        match &self.secure {
            Some((_, ca, (user, _))) => format!(
                "  url: {}\n  ca_file: {:?}\n  basic_auth: {{ username: {user}, password: {{ env: TEST_REGISTRY_PASSWORD }} }}",
                self.url,
                ca.display().to_string()
            ),
            None => format!("  url: {}", self.url),
        }
    }

    /// Registers `schema` (Avro JSON) under `subject`; returns its id.
    pub async fn register(&self, subject: &str, schema: &str) -> u32 {
        let response = self
            .authorized(
                self.client
                    .post(format!("{}/subjects/{subject}/versions", self.url)),
            )
            .header("content-type", "application/vnd.schemaregistry.v1+json")
            .body(serde_json::json!({ "schema": schema }).to_string())
            .send()
            .await
            .expect("registry reachable");
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert!(
            status.is_success(),
            "registering {subject}: {status} {body}"
        );
        body["id"].as_u64().expect("an id") as u32
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A fresh random suffix.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        uuid::Uuid::new_v4()
            .simple()
            .to_string()
            .get(..10)
            .unwrap_or("x")
    )
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Lowercase hex HMAC-SHA256.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("hmac key");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Polls `check` until it returns `Some` or `deadline` passes.
pub async fn wait_for<T>(
    what: &str,
    deadline: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let until = Instant::now() + deadline;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < until,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One request the storefront received.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// Parsed body.
    pub body: Value,
    /// Whether `X-Signature` matched.
    pub signed: bool,
    /// The `webhook-id` header.
    pub webhook_id: String,
    /// The status the storefront answered.
    pub status: u16,
}

#[derive(Default)]
struct StorefrontState {
    deliveries: Mutex<Vec<Delivery>>,
    /// 0: answer 200; otherwise answer this status.
    fail_with: AtomicU16,
    /// Skus that always fail with 500.
    poisoned: Mutex<Vec<String>>,
}

/// A storefront receiver on a random port.
#[derive(Clone)]
pub struct Storefront {
    state: Arc<StorefrontState>,
    /// Its URL.
    pub url: String,
}

impl Storefront {
    /// Starts the receiver.
    pub async fn start() -> Self {
        let state = Arc::new(StorefrontState::default());
        let app = axum::Router::new()
            .route("/storefront", axum::routing::post(receive))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind storefront");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            state,
            url: format!("http://{addr}/storefront"),
        }
    }

    /// Answer every request with `status` (0 = healthy again).
    pub fn fail_with(&self, status: u16) {
        self.state.fail_with.store(status, Ordering::SeqCst);
    }

    /// Always answer 500 for deliveries about `sku`.
    pub fn poison(&self, sku: &str) {
        self.state
            .poisoned
            .lock()
            .expect("lock")
            .push(sku.to_string());
    }

    /// Every request so far.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.state.deliveries.lock().expect("lock").clone()
    }

    /// Successful (2xx) inventory deliveries of `sku`, in arrival order.
    pub fn stock_of(&self, sku: &str) -> Vec<Value> {
        self.deliveries()
            .into_iter()
            .filter(|d| {
                d.status < 300
                    && d.body["event_type"] == "inventory.change"
                    && d.body["data"]["sku"] == sku
            })
            .map(|d| d.body["data"].clone())
            .collect()
    }
}

async fn receive(
    State(state): State<Arc<StorefrontState>>,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> StatusCode {
    let signed = headers.get("x-signature").and_then(|v| v.to_str().ok())
        == Some(sign(STOREFRONT_SECRET, &body).as_str());
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let sku = parsed["data"]["sku"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut status = match state.fail_with.load(Ordering::SeqCst) {
        0 => 200,
        s => s,
    };
    if state.poisoned.lock().expect("lock").contains(&sku) {
        status = 500;
    }
    if !signed {
        status = 401;
    }
    let webhook_id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    state.deliveries.lock().expect("lock").push(Delivery {
        body: parsed,
        signed,
        webhook_id,
        status,
    });
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// Knobs of a test topology.
#[derive(Clone, Debug)]
pub struct TopologyOptions {
    /// Broker to use (defaults to the stack's).
    pub brokers: String,
    /// Registry to use.
    pub registry: String,
    /// Storefront URL.
    pub storefront: String,
    /// Sink attempts before the DLQ.
    pub max_attempts: u32,
    /// Produce acknowledgement timeout.
    pub delivery_timeout: &'static str,
    /// Postgres URL (the storefront API's request store).
    pub database: String,
    /// The ERP write-back target (base URL and preset), if any.
    pub erp: Option<(String, &'static str)>,
    /// Reservation expiry of the inventory processor.
    pub reservation_expiry: &'static str,
    /// More sources, as YAML indented under `sources:`.
    pub extra_sources: String,
    /// More sinks, as YAML indented under `sinks:`.
    pub extra_sinks: String,
    /// `http.admission`, as flow YAML (e.g. `{ max_lag: 1ms }`). The default opens the gate
    /// wide: the suite's shared broker is far slower than a production one while every test
    /// runs against it, and a test about something else must not see its webhooks shed
    /// (`tests/tests/overload.rs` tests the gate, and the topology tests its defaults).
    pub admission: Option<&'static str>,
    /// `kafka.transactions` (with the idempotent producer it needs): only on a broker that
    /// has them ([`MockBroker`]).
    pub transactions: bool,
    /// `kafka.idle_pause` and `kafka.idle_poll` (the default never pauses).
    pub idle: Option<(&'static str, &'static str)>,
    /// `kafka.security`, in YAML (e.g. [`SecureBroker::security`]).
    pub kafka_security: Option<String>,
    /// The `registry:` section's lines (e.g. [`Registry::section`]); `url: <registry>`
    /// otherwise.
    pub registry_section: Option<String>,
    /// The storefront sink's `ca_file`.
    pub storefront_ca: Option<PathBuf>,
    /// Serve HTTPS: (certificate, key, the CA file clients trust).
    pub https: Option<(PathBuf, PathBuf, PathBuf)>,
    /// `http.limits`, as flow YAML (e.g. `{ header_timeout: 2s }`).
    pub limits: Option<&'static str>,
    /// Serve the console: a `console:` section with an operator token named `ops` and a
    /// viewer token named `watcher` ([`CONSOLE_TOKENS`]).
    pub console: bool,
}

impl TopologyOptions {
    /// Defaults against a broker of the test's own (no storefront): its volume does not slow
    /// the other tests, nor theirs it. Keep the broker alive for the test's duration.
    pub fn own_broker() -> (Broker, Self) {
        let broker = Broker::start();
        let mut options = Self::new("http://127.0.0.1:9");
        options.brokers = broker.brokers.clone();
        (broker, options)
    }

    /// Defaults against the local stack, delivering to `storefront`.
    pub fn new(storefront: &str) -> Self {
        let stack = Stack::from_env();
        Self {
            brokers: stack.brokers,
            registry: stack.registry,
            storefront: storefront.to_string(),
            max_attempts: 50,
            delivery_timeout: "5s",
            database: stack.database,
            erp: None,
            reservation_expiry: "30m",
            extra_sources: String::new(),
            extra_sinks: String::new(),
            admission: Some("{ max_ack_wait: 1h, max_lag: 1h }"),
            transactions: false,
            idle: None,
            kafka_security: None,
            registry_section: None,
            storefront_ca: None,
            https: None,
            limits: None,
            console: false,
        }
    }
}

/// A running `erpstream run` process with its own app id, topics and port.
pub struct Pipeline {
    child: Option<Child>,
    topology: PathBuf,
    /// A client of its listener (trusting its CA when it serves HTTPS).
    pub client: reqwest::Client,
    /// Base URL of its HTTP listener.
    pub url: String,
    /// Its topic prefix.
    pub prefix: String,
    log: PathBuf,
    /// `RUST_LOG` of the process.
    log_filter: &'static str,
}

/// `RUST_LOG` of a test's pipeline.
const LOG_FILTER: &str = "info,rdkafka=warn";

impl Pipeline {
    /// A topology for this test (not started yet).
    pub fn configure(options: &TopologyOptions) -> Self {
        let text = format!(
            r#"topics:
  catalog.update: {{ partitions: 2 }}
  inventory.change: {{ partitions: 2 }}
  inventory.reservation: {{ partitions: 2 }}
  inventory.available: {{ partitions: 2, compacted: true }}
  sales.order: {{ partitions: 1 }}
  inventory.adjustment: {{ partitions: 1 }}
  demand.actual: {{ partitions: 1 }}
sources:
  erp:
    type: erp_webhook
    secrets: [{{ env: TEST_ERP_SECRET_OLD }}, {{ env: TEST_ERP_SECRET }}]
    max_body: 64KiB
    orders_topic: sales.order
    reservations_topic: inventory.reservation
  shop:
    type: storefront_api
    tokens: [{{ env: TEST_API_TOKEN }}]
    database: {database}
    default_location: {default_location}
    max_body: 64KiB
    snapshot: inventory
{extra_sources}
processors:
  dedupe:
    type: dedupe
    inputs: [inventory.change, inventory.reservation]
  inventory:
    type: inventory
    inputs: [dedupe]
    output: inventory.available
    reservations: {{ expiry: {expiry} }}
sinks:{erp_sink}
{extra_sinks}
  storefront:
    type: storefront_webhook
    inputs: [inventory.available, catalog.update]
    url: {storefront}{storefront_ca}
    secret: {{ env: TEST_STOREFRONT_SECRET }}
    request_timeout: 2s
    retry: {{ max_attempts: {attempts}, initial_backoff: 50ms, max_backoff: 500ms }}
"#,
            storefront = options.storefront,
            storefront_ca = options
                .storefront_ca
                .as_ref()
                .map(|ca| format!("\n    ca_file: {:?}", ca.display().to_string()))
                .unwrap_or_default(),
            attempts = options.max_attempts,
            database = options.database,
            default_location = DEFAULT_LOCATION,
            expiry = options.reservation_expiry,
            extra_sources = options.extra_sources,
            extra_sinks = options.extra_sinks,
            erp_sink = match &options.erp {
                Some((url, preset)) => format!(
                    r#"
  erp_out:
    type: erp_rest
    inputs: [sales.order, inventory.adjustment]
    sources: [shop]
    url: {url}
    preset: {preset}
    token: {{ env: TEST_ERP_TOKEN }}
    request_timeout: 2s
    retry: {{ max_attempts: {attempts}, initial_backoff: 50ms, max_backoff: 500ms }}"#,
                    attempts = options.max_attempts,
                ),
                None => String::new(),
            },
        );
        Self::custom(options, &text)
    }

    /// A topology of this test's own: `body` is everything from `topics:` on; the app id,
    /// listener, broker and registry come from `options`.
    pub fn custom(options: &TopologyOptions, body: &str) -> Self {
        let prefix = unique("t") + ".";
        let app = prefix.trim_end_matches('.').to_string();
        let port = free_port();
        let dir = std::env::temp_dir().join(unique("erpstream-test-"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let topology = dir.join("topology.yaml");
        let text = format!(
            r#"app_id: {app}
http:
  listen: 127.0.0.1:{port}{admission}{limits}{tls}
kafka:
  brokers: {brokers}
  topic_prefix: "{prefix}"
  delivery_timeout: {delivery_timeout}
  idempotence: {transactions}
  transactions: {transactions}
  instance_id: test{idle}{security}
registry:
{registry}
{body}{console}"#,
            brokers = options.brokers,
            registry = options
                .registry_section
                .clone()
                .unwrap_or_else(|| format!("  url: {}", options.registry)),
            tls = options
                .https
                .as_ref()
                .map(|(cert, key, _)| format!(
                    "\n  tls: {{ cert_file: {:?}, key_file: {:?} }}",
                    cert.display().to_string(),
                    key.display().to_string()
                ))
                .unwrap_or_default(),
            delivery_timeout = options.delivery_timeout,
            transactions = options.transactions,
            security = options
                .kafka_security
                .as_ref()
                .map(|security| format!("\n  security: {security}"))
                .unwrap_or_default(),
            idle = options
                .idle
                .map(|(pause, poll)| format!("\n  idle_pause: {pause}\n  idle_poll: {poll}"))
                .unwrap_or_default(),
            admission = options
                .admission
                .map(|a| format!("\n  admission: {a}"))
                .unwrap_or_default(),
            limits = options
                .limits
                .map(|l| format!("\n  limits: {l}"))
                .unwrap_or_default(),
            console = if options.console {
                "\nconsole:\n  tokens:\n    \
                 - { token: { env: TEST_CONSOLE_OPERATOR }, role: operator, name: ops }\n    \
                 - { token: { env: TEST_CONSOLE_VIEWER }, role: viewer, name: watcher }\n"
            } else {
                ""
            },
        );
        std::fs::write(&topology, text).expect("write topology");
        let (client, scheme) = match &options.https {
            Some((_, _, ca)) => (https_client(&[ca]), "https"),
            None => (reqwest::Client::new(), "http"),
        };
        Self {
            child: None,
            log: dir.join("pipeline.log"),
            log_filter: LOG_FILTER,
            topology,
            client,
            url: format!("{scheme}://127.0.0.1:{port}"),
            prefix,
        }
    }

    /// Another replica of this pipeline: the same topology (app id, topics, groups, sources)
    /// with its own listener and `kafka.instance_id` (not started yet).
    pub fn replica(&self, instance: &str) -> Self {
        let text = std::fs::read_to_string(&self.topology).expect("read topology");
        let port = free_port();
        let text = text
            .lines()
            .map(|line| match line.trim_start() {
                l if l.starts_with("listen: ") => format!("  listen: 127.0.0.1:{port}"),
                l if l.starts_with("instance_id: ") => format!("  instance_id: {instance}"),
                _ => line.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        self.sibling(&text, port)
    }

    /// A process of this pipeline's topics (not started) running topology `text`, which
    /// listens on `port`.
    fn sibling(&self, text: &str, port: u16) -> Self {
        let dir = std::env::temp_dir().join(unique("erpstream-test-"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let topology = dir.join("topology.yaml");
        std::fs::write(&topology, format!("{text}\n")).expect("write topology");
        let scheme = self.url.split(':').next().unwrap_or("http");
        Self {
            child: None,
            log: dir.join("pipeline.log"),
            log_filter: self.log_filter,
            topology,
            client: self.client.clone(),
            url: format!("{scheme}://127.0.0.1:{port}"),
            prefix: self.prefix.clone(),
        }
    }

    /// The same topics behind a front door of its own: this topology's sources (the
    /// storefront API without its snapshot), under its own app id and listener, with no
    /// processor and no sink, so what it accepts waits on the topics (not started yet).
    pub fn front_door(&self) -> Self {
        let text = std::fs::read_to_string(&self.topology).expect("read topology");
        let port = free_port();
        let mut lines = Vec::new();
        for line in text.lines() {
            let trimmed = line.trim_start();
            if line.starts_with("processors:") {
                break;
            }
            lines.push(match trimmed {
                l if l.starts_with("app_id: ") => format!("app_id: {}", unique("door")),
                l if l.starts_with("listen: ") => format!("  listen: 127.0.0.1:{port}"),
                l if l.starts_with("snapshot: ") => continue,
                _ => line.to_string(),
            });
        }
        self.sibling(&lines.join("\n"), port)
    }

    /// Logs librdkafka's consumer-group decisions (joins, assignments, revokes, session
    /// timeouts) too, for a test whose failure would be a group that does not settle.
    pub fn trace_groups(&mut self) {
        self.set_kafka("properties", "{ debug: cgrp, log_level: \"7\" }");
        self.log_filter = "info,rdkafka=warn,librdkafka=debug";
    }

    /// Sets `kafka.<key>: <value>` in the topology (before the start).
    pub fn set_kafka(&mut self, key: &str, value: &str) {
        let text = std::fs::read_to_string(&self.topology).expect("read topology");
        let text = text.replacen("\nkafka:\n", &format!("\nkafka:\n  {key}: {value}\n"), 1);
        std::fs::write(&self.topology, text).expect("write topology");
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(binary())
            .arg("run")
            .arg("--topology")
            .arg(&self.topology)
            .env("TEST_ERP_SECRET_OLD", "rotated-out-secret")
            .env("TEST_ERP_SECRET", ERP_SECRET)
            .env("TEST_STOREFRONT_SECRET", STOREFRONT_SECRET)
            .env("TEST_API_TOKEN", API_TOKEN)
            .env("TEST_ERP_TOKEN", ERP_TOKEN)
            .envs(PLANNING_TOKENS)
            .envs(CONSOLE_TOKENS)
            .env("TEST_ERPNEXT_KEY", erpnext::API_KEY)
            .env("TEST_ERPNEXT_SECRET", erpnext::API_SECRET)
            .env("TEST_ODATA_USER", erpnext::ODATA_USER.0)
            .env("TEST_ODATA_PASSWORD", erpnext::ODATA_USER.1)
            .env("TEST_KAFKA_PASSWORD", KAFKA_PASSWORD)
            .env("TEST_KAFKA_WRONG_PASSWORD", "not-the-password")
            .env("TEST_REGISTRY_PASSWORD", REGISTRY_USER.1)
            .env("RUST_LOG", self.log_filter)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn erpstream");
        self.child = Some(child);
    }

    /// Starts the process and waits until `/readyz` answers 200.
    pub async fn start(&mut self) {
        self.spawn();
        let client = self.client.clone();
        let url = format!("{}/readyz", self.url);
        let until = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "erpstream exited with {status} during start-up; log:\n{}",
                    self.log_text()
                );
            }
            if client
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
            {
                return;
            }
            assert!(
                Instant::now() < until,
                "pipeline not ready after 90s; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts the process and waits until `/healthz` answers (ready or not).
    pub async fn start_unready(&mut self) {
        self.spawn();
        let client = self.client.clone();
        let url = format!("{}/healthz", self.url);
        let until = Instant::now() + Duration::from_secs(90);
        while !client
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            assert!(
                Instant::now() < until,
                "pipeline not listening after 90s; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `/readyz`: status and body.
    pub async fn readyz(&self) -> (u16, Value) {
        let response = self
            .client
            .get(format!("{}/readyz", self.url))
            .send()
            .await
            .expect("readyz");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Starts the process, expecting it to refuse to run: waits for it to exit with an error
    /// and returns its log.
    pub async fn start_refused(&mut self) -> String {
        self.spawn();
        let status = self.wait_exit(Duration::from_secs(90));
        assert!(
            status.is_some_and(|s| !s.success()),
            "erpstream did not stop with an error ({status:?}); log:\n{}",
            self.log_text()
        );
        self.log_text()
    }

    /// Waits up to `timeout` for the process to exit by itself; its status, if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let until = Instant::now() + timeout;
        while Instant::now() < until {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    /// SIGKILL: no shutdown work at all.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let until = Instant::now() + Duration::from_secs(30);
            while Instant::now() < until {
                if let Ok(Some(status)) = child.try_wait() {
                    assert!(
                        status.success(),
                        "erpstream exited with {status} after SIGTERM; log:\n{}",
                        self.log_text()
                    );
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            panic!("erpstream did not stop within 30s of SIGTERM");
        }
    }

    /// The process's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `erpstream <args> --topology <this pipeline's topology>` to completion (the
    /// storefront API token in the environment, as an operator would have it).
    pub fn tool(&self, args: &[&str]) -> ToolRun {
        let output = Command::new(binary())
            .args(args)
            .arg("--topology")
            .arg(&self.topology)
            .env("STOREFRONT_API_TOKEN", API_TOKEN)
            .env("TEST_KAFKA_PASSWORD", KAFKA_PASSWORD)
            .env("TEST_KAFKA_WRONG_PASSWORD", "not-the-password")
            .env("TEST_REGISTRY_PASSWORD", REGISTRY_USER.1)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .expect("run erpstream");
        ToolRun {
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// The broker-side name of a logical topic.
    pub fn topic(&self, logical: &str) -> String {
        format!("{}{logical}", self.prefix)
    }

    /// POSTs a body to `/webhooks/erp` signed with `secret`; returns status, headers and JSON.
    pub async fn post_webhook(
        &self,
        body: &[u8],
        secret: Option<&str>,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut request = self
            .client
            .post(format!("{}/webhooks/erp", self.url))
            .header("content-type", "application/json")
            .body(body.to_vec());
        if let Some(secret) = secret {
            request = request.header("x-signature", sign(secret, body));
        }
        let response = request.send().await.expect("post webhook");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let json = response.json::<Value>().await.unwrap_or(Value::Null);
        (status, headers, json)
    }
}

impl Pipeline {
    /// POSTs JSON to an API path with `X-API-Key: <token>` (none if `None`); returns status,
    /// headers and JSON.
    pub async fn post_api(
        &self,
        path: &str,
        body: &Value,
        token: Option<&str>,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut request = self.client.post(format!("{}{path}", self.url)).json(body);
        if let Some(token) = token {
            request = request.header("x-api-key", token);
        }
        let response = request.send().await.expect("post api");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let json = response.json::<Value>().await.unwrap_or(Value::Null);
        (status, headers, json)
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }

    /// `GET /api/inventory/snapshot?<query>` with a bearer token; status and JSON.
    pub async fn snapshot(&self, query: &str) -> (u16, Value) {
        let response = self
            .client
            .get(format!("{}/api/inventory/snapshot?{query}", self.url))
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .expect("get snapshot");
        let status = response.status().as_u16();
        (
            status,
            response.json::<Value>().await.unwrap_or(Value::Null),
        )
    }

    /// `POST /api/connectors/{id}/{action}` (`test` or `sync`) with the console's operator
    /// token: the outcome (`{ok, detail}`), after asserting a 200.
    pub async fn connector(&self, id: &str, action: &str) -> Value {
        let answer = self
            .client
            .post(format!("{}/api/connectors/{id}/{action}", self.url))
            .bearer_auth(CONSOLE_TOKENS[0].1)
            .send()
            .await
            .expect("connector API");
        assert_eq!(answer.status(), 200, "{id}/{action}");
        answer.json().await.expect("an outcome")
    }

    /// A console page's status and HTML, as a browser logged in with `token` gets it: the
    /// login form's nonce cookie, the login, then the page with the session cookie.
    pub async fn console_page(&self, token: &str, path: &str) -> (u16, String) {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        let cookie = |response: &reqwest::Response, name: &str| {
            response
                .headers()
                .get_all("set-cookie")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find(|c| c.starts_with(&format!("{name}=")))
                .and_then(|c| c.split(';').next())
                .map(str::to_string)
                .unwrap_or_else(|| panic!("no {name} cookie"))
        };
        let form = client
            .get(format!("{}/console/login", self.url))
            .send()
            .await
            .expect("login page");
        let nonce_cookie = cookie(&form, "erpstream_console_login");
        let nonce = nonce_cookie.split_once('=').expect("nonce").1.to_string();
        let login = client
            .post(format!("{}/console/login", self.url))
            .header("cookie", &nonce_cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!(
                "token={}&nonce={}&next={}",
                percent(token),
                percent(&nonce),
                percent(path)
            ))
            .send()
            .await
            .expect("login");
        assert_eq!(login.status(), 303, "the console login failed");
        let session = cookie(&login, "erpstream_console");
        let page = client
            .get(format!("{}{path}", self.url))
            .header("cookie", session)
            .send()
            .await
            .expect("console page");
        let status = page.status().as_u16();
        (status, page.text().await.expect("html"))
    }
}

/// `text` percent-encoded for a form body.
fn percent(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A new planning database on the stack's Postgres: (URL, client).
/// Empty: the planning sink or API migrates it.
pub async fn planning_database() -> (String, tokio_postgres::Client) {
    let admin_url = Stack::from_env().database;
    let admin = pg(&admin_url).await;
    let name = unique("planning_").replace(['-', '.'], "_").to_lowercase();
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create database");
    let url = match admin_url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => panic!("database URL without a name"),
    };
    let client = pg(&url).await;
    (url, client)
}

/// What an `erpstream` command printed.
#[derive(Debug)]
pub struct ToolRun {
    /// Exit status 0.
    pub success: bool,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
}

impl ToolRun {
    /// Stdout's JSON lines; panics (showing stderr) if the command failed.
    pub fn json_lines(&self) -> Vec<Value> {
        assert!(self.success, "command failed: {}", self.stderr);
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }
}

/// The erpstream binary under test: `ERPSTREAM_BIN`, else the workspace's debug build.
pub fn binary() -> PathBuf {
    std::env::var_os("ERPSTREAM_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/erpstream")
        })
}

/// An `inventory.change` webhook body.
pub fn inventory_body(sku: &str, location: &str, quantity: i64, timestamp: &str) -> Vec<u8> {
    serde_json::json!({
        "event_type": "inventory.change",
        "timestamp": timestamp,
        "data": {"sku": sku, "location_code": location, "new_quantity": quantity, "change_reason": "POS_SALE"}
    })
    .to_string()
    .into_bytes()
}

/// `now + offset_ms` as an RFC 3339 time (ERP timestamps that follow erpstream's clock).
pub fn rfc3339_now(offset_ms: i64) -> String {
    let at = chrono::Utc::now() + chrono::Duration::milliseconds(offset_ms);
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A record read back from a topic.
#[derive(Debug, Clone)]
pub struct TopicRecord {
    /// Key.
    pub key: String,
    /// Raw value.
    pub payload: Vec<u8>,
    /// Headers.
    pub headers: HashMap<String, String>,
}

/// How many records `topic` holds (the sum of its partitions' high watermarks).
/// The sum of metric `name`'s samples in a `/metrics` text whose lines carry every one of
/// `labels` (e.g. `outcome="committed"`).
pub fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Records in `topic` (all partitions, high minus low watermark).
pub fn topic_size(brokers: &str, topic: &str) -> i64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("sizer-"))
        .create()
        .expect("consumer");
    let Ok(metadata) = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)) else {
        return 0;
    };
    let partitions = metadata
        .topics()
        .first()
        .map_or(0, |t| t.partitions().len());
    (0..partitions as i32)
        .filter_map(|p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .ok()
        })
        .map(|(low, high)| high - low)
        .sum()
}

/// Every record currently in `topic` (all partitions, up to their high watermarks).
pub fn read_topic(brokers: &str, topic: &str) -> Vec<TopicRecord> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("reader-"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let partitions = metadata
        .topics()
        .first()
        .map(|t| t.partitions().len())
        .unwrap_or(0);
    let mut assignment = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for p in 0..partitions as i32 {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .expect("watermarks");
        if high > low {
            assignment
                .add_partition_offset(topic, p, Offset::Beginning)
                .expect("assign");
            ends.insert(p, high);
        }
    }
    let mut records = Vec::new();
    if ends.is_empty() {
        return records;
    }
    consumer.assign(&assignment).expect("assign");
    let until = Instant::now() + Duration::from_secs(180);
    while !ends.is_empty() && Instant::now() < until {
        let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let headers = message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_string(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        records.push(TopicRecord {
            key: String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
            payload: message.payload().unwrap_or_default().to_vec(),
            headers,
        });
        if ends
            .get(&message.partition())
            .is_some_and(|end| message.offset() + 1 >= *end)
        {
            ends.remove(&message.partition());
        }
    }
    records
}
