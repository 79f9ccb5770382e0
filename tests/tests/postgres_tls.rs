//! End-to-end: every Postgres connection of the pipeline over TLS with `sslmode=verify-full`
//! — pg_cdc's control, snapshot and replication connections and its state database, the
//! storefront API's request store, planning_api and the planning_pg sink — against a cluster
//! that takes only TLS connections (`hostssl`) with a certificate from the test's own CA; a
//! root certificate the server's does not chain to stops the start with the component and
//! the reason.

use std::path::Path;
use std::time::Duration;

use erpstream_e2e::*;
use serde_json::json;

/// The pipeline's TLS-only databases: (cluster, CA, another CA).
struct TlsDatabases {
    cluster: PgCluster,
    ca: TestCa,
    other_ca: TestCa,
    _dir: TempDir,
}

impl TlsDatabases {
    async fn start() -> Self {
        let dir = TempDir::new("erpstream-pg-tls-");
        let ca = TestCa::new(&dir.0, "pg-ca");
        let other_ca = TestCa::new(&dir.0, "other-ca");
        let cluster = PgCluster::start_tls("logical", &ca.issue("postgres"));
        let databases = Self {
            cluster,
            ca,
            other_ca,
            _dir: dir,
        };
        let admin = pg(&databases.url("postgres", &databases.ca.cert)).await;
        for name in ["erp", "state", "planning"] {
            admin
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .await
                .expect("database");
        }
        let erp = pg(&databases.url("erp", &databases.ca.cert)).await;
        erp.batch_execute(
            "CREATE TABLE stock (item_code text, warehouse text, actual_qty numeric(18,3) NOT NULL,
                 PRIMARY KEY (item_code, warehouse));
             INSERT INTO stock VALUES ('PGTLS-1', 'WH-1', 5)",
        )
        .await
        .expect("stock table");
        databases
    }

    /// `database`'s URL, verify-full against `root`, by the name the certificate carries
    /// (pg_cdc's replication client checks names only, never IP addresses).
    fn url(&self, database: &str, root: &Path) -> String {
        format!(
            "{}?sslmode=verify-full&sslrootcert={}",
            self.cluster.url(database).replace("127.0.0.1", "localhost"),
            root.display()
        )
    }

    /// A topology whose every database is on this cluster, checked against `root`.
    fn options(&self, storefront: &str, root: &Path) -> TopologyOptions {
        let mut options = TopologyOptions::new(storefront);
        options.database = self.url("state", root);
        let cdc = stock_cdc_source(&self.url("erp", root), &self.url("state", root), "tls_slot");
        let planning_api = format!(
            r#"  planning_api:
    type: planning_api
    database: {planning}
    tokens: [{{ token: {{ env: TEST_PLANNING_ADMIN }}, role: admin }}]
    publish: {{ url: "http://127.0.0.1:9", token: {{ env: TEST_ERP_TOKEN }} }}"#,
            planning = self.url("planning", root),
        );
        options.extra_sources = format!("{cdc}\n{planning_api}");
        options.extra_sinks = format!(
            r#"  planning:
    type: planning_pg
    inputs: [catalog.update, inventory.change]
    database: {planning}
    batch_wait: 20ms"#,
            planning = self.url("planning", root),
        );
        options
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_component_connects_to_postgres_with_verify_full() {
    let databases = TlsDatabases::start().await;
    let storefront = Storefront::start().await;
    let mut pipeline = Pipeline::configure(&databases.options(&storefront.url, &databases.ca.cert));
    pipeline.start().await;
    let (status, ready) = pipeline.readyz().await;
    assert_eq!(status, 200, "{ready}");

    // The snapshot, then a streamed change: pg_cdc's connections.
    let first = wait_for("the snapshot row", Duration::from_secs(60), || {
        storefront.stock_of("PGTLS-1").pop()
    })
    .await;
    assert_eq!(first["new_quantity"], 5, "{first}");
    let erp = pg(&databases.url("erp", &databases.ca.cert)).await;
    erp.execute(
        "UPDATE stock SET actual_qty = 7 WHERE item_code = 'PGTLS-1'",
        &[],
    )
    .await
    .expect("update");
    wait_for("the streamed change", Duration::from_secs(60), || {
        storefront
            .stock_of("PGTLS-1")
            .into_iter()
            .find(|d| d["new_quantity"] == 7)
    })
    .await;

    // The storefront API's request store.
    let order = json!({
        "transaction_id": "PGTLS-ORDER-1",
        "transaction_date": rfc3339_now(0),
        "customer_details": {"name": "Jane Doe", "tax_id": "GSTIN12345"},
        "line_items": [{"sku": "PGTLS-1", "quantity": 1, "unit_price": 10.0}]
    });
    let (status, _, reply) = pipeline
        .post_api("/api/sales/orders", &order, Some(API_TOKEN))
        .await;
    assert!((200..300).contains(&status), "{status} {reply}");

    // The planning sink parks the stock of a sku it has no product for: written all the same.
    let planning = pg(&databases.url("planning", &databases.ca.cert)).await;
    let until = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let rows: i64 = planning
            .query_one(
                "SELECT (SELECT count(*) FROM planning.waiting) + (SELECT count(*) FROM planning.inventory)",
                &[],
            )
            .await
            .map_or(0, |row| row.get(0));
        if rows > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "no planning row after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Nothing reached the server in the clear: pg_hba takes only TLS, and every session of
    // the pipeline shows TLS.
    let admin = pg(&databases.url("postgres", &databases.ca.cert)).await;
    let row = admin
        .query_one(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl)
             FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
             WHERE a.application_name LIKE 'erpstream%' OR a.backend_type = 'walsender'",
            &[],
        )
        .await
        .expect("pg_stat_ssl");
    let (tls, plain): (i64, i64) = (row.get(0), row.get(1));
    assert!(tls > 0, "no erpstream session seen");
    assert_eq!(plain, 0, "{plain} sessions without TLS");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_root_certificate_the_server_does_not_chain_to_stops_the_start() {
    let databases = TlsDatabases::start().await;
    let mut pipeline =
        Pipeline::configure(&databases.options("http://127.0.0.1:9", &databases.other_ca.cert));
    let log = pipeline.start_refused().await;
    let line = log
        .lines()
        .find(|line| line.contains("invalid peer certificate"))
        .unwrap_or_else(|| panic!("no line gives the reason; log:\n{log}"));
    assert!(
        ["db", "shop", "planning_api", "planning"]
            .iter()
            .any(|id| line.contains(&format!("{id} could not start"))
                || line.contains(&format!("component {id} failed"))),
        "no component named: {line}"
    );
}
