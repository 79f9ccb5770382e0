//! The operator console in a real browser: headless Chromium driven over WebDriver
//! (`chromedriver`, Debian's `chromium-driver`) against a running pipeline on the local
//! stack. Screenshots of each page go to `target/console-screenshots/`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use erpstream_e2e::erpnext::FakeErp;
use erpstream_e2e::*;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(60);

/// A headless Chromium under its own chromedriver, ended when dropped.
struct Browser {
    client: Client,
    driver: Child,
}

impl Browser {
    async fn start() -> Self {
        let port = free_port();
        let driver = Command::new(chromedriver())
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian: chromium-driver) must be installed");
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1000"],
            }),
        );
        let until = Instant::now() + Duration::from_secs(30);
        let client = loop {
            // WebDriver on this machine: plain HTTP.
            let attempt = ClientBuilder::new(HttpConnector::new())
                .capabilities(capabilities.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await;
            match attempt {
                Ok(client) => break client,
                Err(err) if Instant::now() < until => {
                    let _ = err;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(err) => panic!("chromedriver did not start a browser: {err}"),
            }
        };
        Self { client, driver }
    }

    /// Saves a screenshot of the page as `<name>.png`.
    async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.expect("screenshot");
        let dir = screenshots();
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
    }

    /// Logs in with `token` from the login page `pipeline` redirects to.
    async fn log_in(&self, pipeline: &Pipeline, token: &str) {
        self.client
            .goto(&format!("{}/console", pipeline.url))
            .await
            .expect("open the console");
        let field = self
            .client
            .wait()
            .for_element(Locator::Css("input[name=token]"))
            .await
            .expect("the login page");
        field.send_keys(token).await.expect("type the token");
        self.client
            .find(Locator::Css("form button[type=submit]"))
            .await
            .expect("login button")
            .click()
            .await
            .expect("log in");
        if let Err(err) = self
            .client
            .wait()
            .for_element(Locator::Css("nav a[aria-current=page]"))
            .await
        {
            panic!(
                "no console page after the login ({err}); at {:?}:\n{}",
                self.client.current_url().await.map(|u| u.to_string()),
                self.source().await
            );
        }
    }

    /// The page's HTML now.
    async fn source(&self) -> String {
        self.client.source().await.expect("page source")
    }

    /// Waits until the page's HTML satisfies `check`.
    async fn wait_source(&self, what: &str, check: impl Fn(&str) -> bool) -> String {
        let until = Instant::now() + LONG;
        loop {
            let source = self.source().await;
            if check(&source) {
                return source;
            }
            assert!(
                Instant::now() < until,
                "timed out waiting for {what}; page:\n{source}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn chromedriver() -> PathBuf {
    for candidate in ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"] {
        if std::path::Path::new(candidate).exists() {
            return candidate.into();
        }
    }
    "chromedriver".into()
}

fn screenshots() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots")
}

/// The secrets the test topology is configured with: none may appear on any page.
fn secrets() -> Vec<&'static str> {
    let mut secrets = vec![ERP_SECRET, STOREFRONT_SECRET, API_TOKEN, ERP_TOKEN];
    secrets.extend(PLANNING_TOKENS.iter().map(|(_, token)| *token));
    secrets.extend(CONSOLE_TOKENS.iter().map(|(_, token)| *token));
    secrets.push(erpnext::API_SECRET);
    secrets
}

fn assert_no_secret(page: &str, source: &str) {
    for secret in secrets() {
        assert!(!source.contains(secret), "{page} shows the secret {secret}");
    }
}

async fn started(storefront: &Storefront, erp: &FakeErp) -> Pipeline {
    let mut options = TopologyOptions::new(&storefront.url);
    options.console = true;
    // It polls once an hour: only "sync now" polls again within the test.
    options.extra_sources = erp.bin_source("erpnext", "1h");
    let mut pipeline = Pipeline::configure(&options);
    pipeline.start().await;
    pipeline
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_sees_every_component_ready_and_syncs_a_polled_source_from_the_page() {
    let storefront = Storefront::start().await;
    let erp = FakeErp::start().await;
    let pipeline = started(&storefront, &erp).await;
    let browser = Browser::start().await;

    // Not logged in: every page leads to the login.
    browser
        .client
        .goto(&format!("{}/console/connectors", pipeline.url))
        .await
        .expect("open a page");
    let login = browser
        .wait_source("the login page", |s| s.contains("Operator token"))
        .await;
    assert_no_secret("the login page", &login);
    browser.screenshot("login").await;

    browser.log_in(&pipeline, CONSOLE_TOKENS[0].1).await;
    let flow = browser
        .wait_source("every component ready on the Flow page", |s| {
            [
                "erp",
                "shop",
                "erpnext",
                "dedupe",
                "inventory",
                "storefront",
            ]
            .iter()
            .all(|id| s.contains(&format!("data-component=\"{id}\"")))
                && !s.contains("not ready")
        })
        .await;
    assert!(flow.contains("ops (operator)"), "who is logged in is shown");
    assert_no_secret("Flow", &flow);
    browser.screenshot("flow").await;

    browser
        .client
        .goto(&format!("{}/console/connectors", pipeline.url))
        .await
        .expect("connectors page");
    let connectors = browser
        .wait_source("the connector cards", |s| {
            s.contains("id=\"connector-erpnext\"")
        })
        .await;
    assert_no_secret("Connectors", &connectors);
    assert!(
        connectors.contains("env: TEST_ERPNEXT_SECRET"),
        "secrets shown by reference"
    );

    // A Bin the hourly poll would not read for an hour: "Sync now" reads it at once.
    let sku = unique("SYNC-");
    erp.put(
        "Bin",
        vec![
            json!({"name": format!("BIN-{sku}"), "item_code": sku, "warehouse": "WH-1",
                    "actual_qty": 7}),
        ],
    );
    browser
        .client
        .find(Locator::Css("#connector-erpnext button[hx-post$='/sync']"))
        .await
        .expect("the Sync now button")
        .click()
        .await
        .expect("click Sync now");
    let synced = browser
        .wait_source("the sync's outcome", |s| s.contains("polled ERPNext"))
        .await;
    assert!(!synced.contains("✗"), "the sync failed: {synced}");
    wait_for("the synced Bin on inventory.change", LONG, || {
        read_topic(
            &Stack::from_env().brokers,
            &pipeline.topic("inventory.change"),
        )
        .into_iter()
        .any(|r| r.key == sku)
        .then_some(())
    })
    .await;
    browser.screenshot("connectors").await;

    browser
        .client
        .find(Locator::Css("#connector-erpnext button[hx-post$='/test']"))
        .await
        .expect("the Test connection button")
        .click()
        .await
        .expect("click Test connection");
    browser
        .wait_source("the connection test's outcome", |s| {
            s.contains("ERPNext accepted the credentials")
        })
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_viewer_reads_but_cannot_act_and_the_connector_api_enforces_the_roles() {
    let storefront = Storefront::start().await;
    let erp = FakeErp::start().await;
    let pipeline = started(&storefront, &erp).await;

    // The API: a token is needed, a viewer reads, only an operator acts.
    let client = reqwest::Client::new();
    let status = format!("{}/api/connectors/status", pipeline.url);
    let answer = client.get(&status).send().await.expect("status");
    assert_eq!(answer.status(), 401);
    let answer = client
        .get(&status)
        .bearer_auth(CONSOLE_TOKENS[1].1)
        .send()
        .await
        .expect("status");
    assert_eq!(answer.status(), 200);
    let body: Value = answer.json().await.expect("json");
    let ids: Vec<&str> = body["connectors"]
        .as_array()
        .expect("connectors")
        .iter()
        .filter_map(|c| c["id"].as_str())
        .collect();
    for id in ["erp", "shop", "erpnext", "storefront"] {
        assert!(ids.contains(&id), "{id} missing from {body}");
    }
    assert!(!body.to_string().contains(erpnext::API_SECRET));
    let test = format!("{}/api/connectors/erpnext/test", pipeline.url);
    let answer = client
        .post(&test)
        .bearer_auth(CONSOLE_TOKENS[1].1)
        .send()
        .await
        .expect("test");
    assert_eq!(answer.status(), 403, "a viewer may not test");
    let answer = client
        .post(&test)
        .bearer_auth(CONSOLE_TOKENS[0].1)
        .send()
        .await
        .expect("test");
    assert_eq!(answer.status(), 200);
    let outcome: Value = answer.json().await.expect("json");
    assert_eq!(outcome["ok"], true, "{outcome}");
    // A component with no test of its own checks the brokers and its database.
    let answer = client
        .post(format!("{}/api/connectors/shop/test", pipeline.url))
        .bearer_auth(CONSOLE_TOKENS[0].1)
        .send()
        .await
        .expect("test");
    let outcome: Value = answer.json().await.expect("json");
    assert_eq!(
        outcome,
        json!({"ok": true, "detail": "the brokers and its database answer"})
    );
    let answer = client
        .post(format!("{}/api/connectors/shop/sync", pipeline.url))
        .bearer_auth(CONSOLE_TOKENS[0].1)
        .send()
        .await
        .expect("sync");
    assert_eq!(
        answer.status(),
        404,
        "the storefront API has nothing to sync"
    );
    let answer = client
        .post(format!("{}/api/connectors/nope/sync", pipeline.url))
        .bearer_auth(CONSOLE_TOKENS[0].1)
        .send()
        .await
        .expect("sync");
    assert_eq!(answer.status(), 404);
    let refusal: Value = answer.json().await.expect("json");
    assert_eq!(refusal["field"], "id", "{refusal}");

    // The console: the viewer sees the cards without the controls, and an action made by
    // hand with the viewer's session is refused.
    let browser = Browser::start().await;
    browser.log_in(&pipeline, CONSOLE_TOKENS[1].1).await;
    browser
        .client
        .goto(&format!("{}/console/connectors", pipeline.url))
        .await
        .expect("connectors page");
    let page = browser
        .wait_source("the connector cards", |s| {
            s.contains("id=\"connector-erpnext\"")
        })
        .await;
    assert!(page.contains("watcher (viewer)"));
    assert!(!page.contains("Sync now") && !page.contains("Test connection"));
    let refused = browser
        .client
        .execute(
            r#"const csrf = JSON.parse(document.body.getAttribute('hx-headers'))['X-CSRF-Token'];
               const answer = await fetch('/console/connectors/erpnext/sync',
                   {method: 'POST', headers: {'X-CSRF-Token': csrf}});
               return answer.status;"#,
            vec![],
        )
        .await
        .expect("a hand-made request");
    assert_eq!(refused, json!(403));
    let forged = browser
        .client
        .execute(
            r#"const answer = await fetch('/console/connectors/erpnext/test', {method: 'POST'});
               return answer.status;"#,
            vec![],
        )
        .await
        .expect("a request without the CSRF token");
    assert_eq!(forged, json!(403));
    browser.screenshot("connectors-viewer").await;
}
