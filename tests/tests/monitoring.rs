//! The monitoring kit against a running pipeline: `deploy/monitoring/alerts.yml` passes
//! `promtool check rules`, and a real Prometheus (Debian package `prometheus`) scraping a
//! pipeline that runs every kind of source, a dead letter and an expiring hold evaluates
//! every alert rule without error and every Grafana dashboard query with series — a query
//! or rule naming a metric erpstream does not export fails here.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use erpstream_e2e::erpnext::{FakeErp, Fault};
use erpstream_e2e::*;
use serde_json::{Value, json};

fn kit(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/monitoring")
        .join(file)
}

/// A Prometheus of this test's own, scraping one target every second.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    url: String,
}

impl Prometheus {
    async fn start(target: &str, rules: &Path) -> Self {
        let dir = std::env::temp_dir().join(unique("erpstream-prometheus-"));
        std::fs::create_dir_all(&dir).expect("prometheus dir");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\nrule_files: [{rules:?}]\nscrape_configs:\n  - job_name: erpstream\n    static_configs: [{{ targets: [{target:?}] }}]\n",
                rules = rules.display().to_string(),
            ),
        )
        .expect("prometheus.yml");
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).expect("log"))
            .spawn()
            .expect("start prometheus (Debian package prometheus)");
        let prometheus = Self {
            child,
            dir,
            url: format!("http://127.0.0.1:{port}"),
        };
        let until = Instant::now() + Duration::from_secs(30);
        while !reqwest::get(format!("{}/-/ready", prometheus.url))
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            assert!(
                Instant::now() < until,
                "prometheus did not start; see {}",
                prometheus.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        prometheus
    }

    /// The instant query's result vector, or Prometheus's error.
    async fn query(&self, query: &str) -> Result<Vec<Value>, String> {
        let mut url: reqwest::Url = format!("{}/api/v1/query", self.url)
            .parse()
            .map_err(|e| format!("{e}"))?;
        url.query_pairs_mut().append_pair("query", query);
        let response = reqwest::Client::new()
            .get(url)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let body: Value = response.json().await.map_err(|e| e.to_string())?;
        if body["status"] != "success" {
            return Err(format!("{}: {}", body["errorType"], body["error"]));
        }
        Ok(body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// Every alert rule as Prometheus loaded it: (name, health, last error, query).
    async fn rules(&self) -> Vec<(String, String, String, String)> {
        let body: Value = reqwest::get(format!("{}/api/v1/rules", self.url))
            .await
            .expect("rules")
            .json()
            .await
            .expect("json");
        body["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .map(|r| {
                let text = |k: &str| r[k].as_str().unwrap_or_default().to_string();
                (
                    text("name"),
                    text("health"),
                    text("lastError"),
                    text("query"),
                )
            })
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The metric names a PromQL expression reads.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("erpstream_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

#[test]
fn the_alert_rules_pass_promtool() {
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(kit("alerts.yml"))
        .output()
        .expect("run promtool (Debian package prometheus)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_evaluates_every_rule_and_dashboard_query_against_a_running_pipeline() {
    // Every kind of source: webhooks and the storefront API (in the base topology), pg_cdc
    // on a table of its own, rest_poll against the ERPNext-shaped server.
    let stack = Stack::from_env();
    let admin = pg(&stack.database).await;
    let database = unique("monitoring_")
        .replace(['-', '.'], "_")
        .to_lowercase();
    admin
        .batch_execute(&format!("CREATE DATABASE {database}"))
        .await
        .expect("database");
    let erp_url = match stack.database.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{database}"),
        None => panic!("database URL without a name"),
    };
    pg(&erp_url)
        .await
        .batch_execute(
            "CREATE TABLE stock (item_code text, warehouse text, actual_qty numeric NOT NULL,
                 PRIMARY KEY (item_code, warehouse));
             INSERT INTO stock VALUES ('MON-CDC', 'WH-1', 3)",
        )
        .await
        .expect("stock table");
    let erp = FakeErp::start().await;
    erp.put(
        "Item",
        vec![json!({"name": "MON-ITEM", "item_name": "Monitored", "standard_rate": 2.5, "disabled": 0})],
    );
    let storefront = Storefront::start().await;
    storefront.poison("MON-POISON");
    let mut options = TopologyOptions::new(&storefront.url);
    options.max_attempts = 2;
    options.reservation_expiry = "1s";
    options.extra_sources = format!(
        r#"{cdc}
  erpnext:
    type: rest_poll
    preset: erpnext
    url: {url}
    auth: {{ api_key: {{ env: TEST_ERPNEXT_KEY }}, api_secret: {{ env: TEST_ERPNEXT_SECRET }} }}
    state_database: {state}
    source_system: ERPNext
    interval: 500ms
    resources:
      items:
        doctype: Item
        topic: catalog.update
        fields:
          group_id: name
          group_name: item_name
          variants[0].sku: name
          variants[0].selling_price: standard_rate
        occurred_at: modified
        on_delete: skip"#,
        cdc = stock_cdc_source(&erp_url, &stack.database, &database),
        url = erp.url,
        state = stack.database,
    );
    let mut pipeline = Pipeline::configure(&options);
    pipeline.start().await;
    let target = pipeline.url.trim_start_matches("http://").to_string();
    let prometheus = Prometheus::start(&target, &kit("alerts.yml")).await;

    // A poll the ERP refuses (an error by type), deliveries, a dead letter, a hold that
    // expires unconfirmed.
    erp.inject([Fault::Status(401, None)]);
    for (sku, quantity) in [("MON-1", 5), ("MON-2", 7), ("MON-POISON", 1)] {
        let body = inventory_body(sku, DEFAULT_LOCATION, quantity, &rfc3339_now(0));
        let (status, _, reply) = pipeline.post_webhook(&body, Some(ERP_SECRET)).await;
        assert_eq!(status, 202, "{reply}");
    }
    let order = json!({
        "transaction_id": unique("MON-ORDER-"),
        "transaction_date": rfc3339_now(0),
        "customer_details": {"name": "Jane Doe", "tax_id": "GSTIN12345"},
        "line_items": [{"sku": "MON-1", "quantity": 1, "unit_price": 10.0}]
    });
    let (status, _, reply) = pipeline
        .post_api("/api/sales/orders", &order, Some(API_TOKEN))
        .await;
    assert!((200..300).contains(&status), "{status} {reply}");

    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(kit("grafana/erpstream.json")).expect("dashboard"),
    )
    .expect("dashboard JSON");
    let queries: Vec<(String, String)> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|panel| {
            let title = panel["title"].as_str().unwrap_or_default().to_string();
            panel["targets"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |t| {
                    (
                        title.clone(),
                        t["expr"].as_str().unwrap_or_default().to_string(),
                    )
                })
        })
        .collect();
    assert!(queries.len() >= 10, "{queries:?}");

    // Every dashboard query returns series once the pipeline has done its work.
    let until = Instant::now() + Duration::from_secs(120);
    let mut empty: Vec<String>;
    loop {
        empty = Vec::new();
        for (title, expr) in &queries {
            match prometheus.query(expr).await {
                Ok(series) if !series.is_empty() => {}
                Ok(_) => empty.push(format!("{title}: {expr}: no series")),
                Err(error) => panic!("{title}: {expr}: {error}"),
            }
        }
        if empty.is_empty() || Instant::now() > until {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(
        empty.is_empty(),
        "{empty:#?}\nmetrics:\n{}",
        pipeline.metrics().await
    );

    // Every alert rule is loaded and evaluates without error, and every metric it reads is
    // one the pipeline exports.
    let rules = prometheus.rules().await;
    assert_eq!(rules.len(), 8, "{rules:?}");
    for (name, health, error, query) in &rules {
        let until = Instant::now() + Duration::from_secs(10);
        let mut health = health.clone();
        while health == "unknown" && Instant::now() < until {
            tokio::time::sleep(Duration::from_secs(1)).await;
            health = prometheus
                .rules()
                .await
                .into_iter()
                .find(|r| r.0 == *name)
                .map(|r| r.1)
                .unwrap_or_default();
        }
        assert_eq!(health, "ok", "{name}: {error}");
        prometheus
            .query(query)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        for metric in metric_names(query) {
            let series = prometheus
                .query(&format!("count({{__name__=\"{metric}\"}})"))
                .await
                .expect("count");
            assert!(
                !series.is_empty(),
                "{name} reads {metric}, which is not exported"
            );
        }
    }
}
