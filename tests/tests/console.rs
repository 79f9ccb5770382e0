//! The operator console in a real browser: headless Chromium driven over WebDriver
//! (`chromedriver`, Debian's `chromium-driver`) against a running pipeline on the local
//! stack. Screenshots of each page go to `target/console-screenshots/`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use erpstream_e2e::erp::Erp;
use erpstream_e2e::erpnext::FakeErp;
use erpstream_e2e::*;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(60);

/// A headless Chromium under its own chromedriver. A test ends it with [`Browser::close`]
/// (chromedriver then closes its Chromium); dropping it kills chromedriver, which a
/// failing test relies on.
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

    /// Logs in with `token` from the login page the console at `url` redirects to.
    async fn log_in(&self, url: &str, token: &str) {
        self.client
            .goto(&format!("{url}/console"))
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

    browser.log_in(&pipeline.url, CONSOLE_TOKENS[0].1).await;
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

    // The mapping tester: a page of two Bins, one of them with a quantity that is no number.
    browser.open(&pipeline, "/console/mapping").await;
    let sample = json!({"data": [
        {"item_code": "MAP-1", "warehouse": "WH-1", "actual_qty": 7.5, "modified": "2026-12-01 10:00:00"},
        {"item_code": "MAP-2", "warehouse": "WH-1", "actual_qty": "lots", "modified": "2026-12-01 10:00:00"}
    ]});
    browser
        .client
        .wait()
        .for_element(Locator::Css("textarea[name=sample]"))
        .await
        .expect("the sample field")
        .send_keys(&sample.to_string())
        .await
        .expect("paste the sample");
    browser.click("#mapping-tester button[type=submit]").await;
    let mapped = browser
        .wait_source("the mapped sample", |s| {
            s.contains("id=\"mapping-outcome\"")
        })
        .await;
    assert!(
        mapped.contains("2 record(s): 1 map, 1 would be dead-lettered"),
        "{mapped}"
    );
    assert!(
        mapped.contains("MAP-1") && mapped.contains("WH-1"),
        "{mapped}"
    );
    assert!(
        mapped.contains("new_quantity") && mapped.contains("lots"),
        "{mapped}"
    );
    assert_no_secret("Mapping tester", &mapped);
    browser.screenshot("mapping-tester").await;
    browser.close().await;
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

    // The record view shows this pipeline's topics only, not whatever else the cluster has.
    let (status, page) = pipeline
        .console_page(
            CONSOLE_TOKENS[1].1,
            "/console/record?at=__consumer_offsets/0/0",
        )
        .await;
    assert_eq!(status, 200);
    assert!(page.contains("is not a topic of this pipeline"), "{page}");

    // The console: the viewer sees the cards without the controls, and an action made by
    // hand with the viewer's session is refused.
    let browser = Browser::start().await;
    browser.log_in(&pipeline.url, CONSOLE_TOKENS[1].1).await;
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
    browser.close().await;
}

impl Browser {
    /// Opens `path` of `pipeline`'s console.
    async fn open(&self, pipeline: &Pipeline, path: &str) {
        self.client
            .goto(&format!("{}{path}", pipeline.url))
            .await
            .unwrap_or_else(|err| panic!("open {path}: {err}"));
    }

    /// Clicks the element at `css`.
    async fn click(&self, css: &str) {
        self.client
            .wait()
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|err| panic!("no {css}: {err}"))
            .click()
            .await
            .unwrap_or_else(|err| panic!("click {css}: {err}"));
    }

    /// Scrolls the element at `css` into view (for the screenshot).
    async fn scroll_to(&self, css: &str) {
        self.client
            .execute(
                "document.querySelector(arguments[0]).scrollIntoView({block: 'end'});",
                vec![json!(css)],
            )
            .await
            .unwrap_or_else(|err| panic!("scroll to {css}: {err}"));
    }

    /// Logs out with the page's button.
    async fn log_out(&self) {
        self.click("form[action='/console/logout'] button").await;
        self.wait_source("the login page", |s| s.contains("Operator token"))
            .await;
    }

    /// Ends the WebDriver session, so that chromedriver closes its Chromium.
    async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

/// Rows of the table `#id` in `source` (its `<tr data-...>` rows).
fn rows(source: &str, table: &str) -> usize {
    let Some(start) = source.find(&format!("id=\"{table}\"")) else {
        return 0;
    };
    let rest = &source[start..];
    let end = rest.find("</table>").unwrap_or(rest.len());
    rest[..end].matches("<tr data-").count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_storefront_outage_is_dead_lettered_and_redriven_once_from_the_page_and_a_viewer_cannot()
{
    let storefront = Storefront::start().await;
    let mut options = TopologyOptions::new(&storefront.url);
    options.console = true;
    options.max_attempts = 3;
    let mut pipeline = Pipeline::configure(&options);
    pipeline.start().await;
    let browser = Browser::start().await;
    browser.log_in(&pipeline.url, CONSOLE_TOKENS[0].1).await;

    browser.open(&pipeline, "/console/dead-letters").await;
    browser
        .wait_source("the empty state", |s| s.contains("No dead letters waiting"))
        .await;

    // The storefront answers 503: both figures are dead-lettered after their 3 attempts.
    storefront.fail_with(503);
    let skus = [unique("DL-A-"), unique("DL-B-")];
    for (sku, quantity) in skus.iter().zip([7, 5]) {
        let body = inventory_body(sku, DEFAULT_LOCATION, quantity, &rfc3339_now(0));
        let (status, _, _) = pipeline.post_webhook(&body, Some(ERP_SECRET)).await;
        assert_eq!(status, 202);
    }
    let path = "/console/dead-letters?topic=inventory.available";
    let until = Instant::now() + LONG;
    let listed = loop {
        browser.open(&pipeline, path).await;
        let source = browser.source().await;
        if skus.iter().all(|sku| source.contains(sku.as_str())) {
            break source;
        }
        assert!(Instant::now() < until, "not listed after 60 s:\n{source}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert_eq!(rows(&listed, "dead-letters"), 2, "{listed}");
    assert!(listed.contains("retries_exhausted") && listed.contains("503"));
    assert_no_secret("Dead letters", &listed);
    browser.screenshot("dead-letters").await;

    // A record opened: decoded, with its headers and error.
    browser.click("#dead-letters tbody tr a").await;
    let record = browser
        .wait_source("the dead letter", |s| s.contains("Why it is here"))
        .await;
    assert!(record.contains("erpstream.error") && record.contains("\"sku\""));
    assert_no_secret("a dead letter", &record);
    browser.screenshot("dead-letter").await;

    // Both selected; the preview sends nothing.
    browser.open(&pipeline, path).await;
    for sku in &skus {
        let id = listed
            .split("<tr data-id=\"")
            .skip(1)
            .find(|row| row.contains(sku.as_str()))
            .and_then(|row| row.split('"').next())
            .expect("the row's id")
            .to_string();
        browser
            .click(&format!("input[type=checkbox][value='{id}']"))
            .await;
    }
    browser.click("button[hx-post$='dry_run=true']").await;
    let preview = browser
        .wait_source("the preview", |s| s.contains("id=\"redrive-outcome\""))
        .await;
    assert_eq!(preview.matches("would deliver").count(), 2, "{preview}");
    browser.scroll_to("#redrive-outcome").await;
    browser.screenshot("dead-letters-preview").await;
    storefront.fail_with(0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(skus.iter().all(|sku| storefront.stock_of(sku).is_empty()));

    // The storefront is back: redriven from the page, each arrives once.
    browser
        .click("#redrive button:not([hx-post*='dry_run'])")
        .await;
    let done = browser
        .wait_source("the redrive", |s| s.contains("Redrive done"))
        .await;
    assert_eq!(done.matches("published again as").count(), 2, "{done}");
    for (sku, quantity) in skus.iter().zip([7, 5]) {
        let delivered = wait_for("the redriven figure delivered", LONG, || {
            let stock = storefront.stock_of(sku);
            (!stock.is_empty()).then_some(stock)
        })
        .await;
        assert_eq!(delivered[0]["new_quantity"], quantity);
    }
    browser.open(&pipeline, path).await;
    let after = browser.source().await;
    assert!(after.contains("No dead letters waiting"), "{after}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    for sku in &skus {
        assert_eq!(storefront.stock_of(sku).len(), 1, "{sku} delivered once");
    }

    // A viewer sees the records but no control, and a redrive made by hand is refused.
    browser.log_out().await;
    browser.log_in(&pipeline.url, CONSOLE_TOKENS[1].1).await;
    browser
        .open(
            &pipeline,
            "/console/dead-letters?topic=inventory.available&state=all",
        )
        .await;
    let seen = browser
        .wait_source("the redriven records", |s| s.contains("redriven"))
        .await;
    assert!(skus.iter().all(|sku| seen.contains(sku.as_str())));
    assert!(!seen.contains("type=\"checkbox\"") && !seen.contains("Redrive selected"));
    let refused = browser
        .client
        .execute(
            r#"const csrf = JSON.parse(document.body.getAttribute('hx-headers'))['X-CSRF-Token'];
               const answer = await fetch('/console/dead-letters/redrive',
                   {method: 'POST', headers: {'X-CSRF-Token': csrf,
                    'Content-Type': 'application/x-www-form-urlencoded'},
                    body: 'id=' + encodeURIComponent(arguments[0])});
               return answer.status;"#,
            vec![json!(format!(
                "{}.dlq/0/0",
                pipeline.topic("inventory.available")
            ))],
        )
        .await
        .expect("a hand-made redrive");
    assert_eq!(refused, json!(403));
    browser.screenshot("dead-letters-viewer").await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_planted_difference_is_reconciled_from_an_uploaded_file_and_repaired_and_stock_shows_it()
{
    let storefront = Storefront::start().await;
    let erp = Erp::start().await;
    let mut options = TopologyOptions::new(&storefront.url);
    options.console = true;
    options.erp = Some((erp.url.clone(), "generic"));
    let mut pipeline = Pipeline::configure(&options);
    pipeline.start().await;

    let (good, planted) = (unique("RC-A-"), unique("RC-B-"));
    for sku in [&good, &planted] {
        let body = inventory_body(sku, DEFAULT_LOCATION, 10, &rfc3339_now(-60_000));
        assert_eq!(pipeline.post_webhook(&body, Some(ERP_SECRET)).await.0, 202);
    }
    let order = unique("RC-ORDER-");
    let (status, _, reply) = pipeline
        .post_api(
            "/api/sales/orders",
            &json!({
                "transaction_id": order,
                "transaction_date": rfc3339_now(0),
                "customer_details": {"name": "Jane Doe", "tax_id": "GSTIN12345"},
                "line_items": [{"sku": good, "quantity": 2, "unit_price": 10.0}]
            }),
            Some(API_TOKEN),
        )
        .await;
    assert!((200..300).contains(&status), "{status} {reply}");

    let browser = Browser::start().await;
    browser.log_in(&pipeline.url, CONSOLE_TOKENS[0].1).await;

    // Stock: the figure, the hold with its order, the event that set on_hand.
    let until = Instant::now() + LONG;
    let stock = loop {
        browser
            .open(&pipeline, &format!("/console/stock?sku={good}"))
            .await;
        let source = browser.source().await;
        if source.contains(&order) {
            break source;
        }
        assert!(Instant::now() < until, "no hold after 60 s:\n{source}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert!(
        stock.contains("id=\"available\">8<"),
        "10 on hand, 2 held: {stock}"
    );
    assert_eq!(rows(&stock, "holds"), 1);
    assert_no_secret("Stock", &stock);
    assert!(stock.contains(&format!("{}/", pipeline.topic("inventory.change"))));
    browser.screenshot("stock").await;

    // Sync history: the order, its sales.order record, and that the ERP has it.
    let history = loop {
        browser
            .open(&pipeline, &format!("/console/history?key={order}"))
            .await;
        let source = browser.source().await;
        if source.contains("written back") {
            break source;
        }
        assert!(
            Instant::now() < until,
            "the order not written back after 60 s:\n{source}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert_eq!(rows(&history, "history"), 1, "{history}");
    assert_no_secret("Sync history", &history);
    assert!(
        history.contains(&format!("{}/0/", pipeline.topic("sales.order"))),
        "{history}"
    );
    browser.screenshot("sync-history").await;
    browser
        .open(&pipeline, &format!("/console/stock?sku={good}"))
        .await;
    browser.click("#locations a[href^='/console/record']").await;
    let event = browser
        .wait_source("the event that set on_hand", |s| {
            s.contains("<h2>Value</h2>")
        })
        .await;
    assert!(
        event.contains(&good) && event.contains("new_quantity"),
        "{event}"
    );
    assert_no_secret("Record", &event);
    browser.screenshot("record").await;

    // The ERP's picture says 99 where erpstream holds 10: exactly that difference.
    let dir = std::env::temp_dir().join(unique("console-reconcile-"));
    std::fs::create_dir_all(&dir).expect("dir");
    let picture = dir.join("bins.csv");
    std::fs::write(
        &picture,
        format!(
            "sku,location,qty\n{good},{DEFAULT_LOCATION},10\n{planted},{DEFAULT_LOCATION},99\n"
        ),
    )
    .expect("write picture");
    browser.open(&pipeline, "/console/reconciliation").await;
    browser
        .client
        .wait()
        .for_element(Locator::Css("input[type=file]"))
        .await
        .expect("the file field")
        .send_keys(picture.to_str().expect("path"))
        .await
        .expect("choose the file");
    browser.click("form[enctype] button[type=submit]").await;
    let report = browser
        .wait_source("the report", |s| s.contains("id=\"counts\""))
        .await;
    assert_eq!(rows(&report, "differences"), 1, "{report}");
    assert_no_secret("Reconciliation report", &report);
    assert!(report.contains(&format!("data-sku=\"{planted}\"")));
    assert!(
        report.contains("1 matching, 0 missing, 0 extra, 1 differing"),
        "{report}"
    );
    browser.screenshot("reconciliation-report").await;

    // A repair asks first, then publishes the picture's figure.
    browser.click("a[href$='/repair']").await;
    browser
        .wait_source("the confirmation", |s| s.contains("id=\"confirm-repair\""))
        .await;
    browser.screenshot("reconciliation-confirm").await;
    browser.click("#confirm-repair button[type=submit]").await;
    let repaired = browser
        .wait_source("the repaired report", |s| {
            s.contains("correcting events published")
        })
        .await;
    assert!(repaired.contains("1 correcting events"), "{repaired}");
    wait_for("the repaired figure delivered", LONG, || {
        storefront
            .stock_of(&planted)
            .iter()
            .any(|d| d["new_quantity"] == 99)
            .then_some(())
    })
    .await;
    browser
        .open(&pipeline, &format!("/console/stock?sku={planted}"))
        .await;
    let fixed = browser.source().await;
    assert!(fixed.contains("id=\"available\">99<"), "{fixed}");

    // The report is kept, with its repair, in the list.
    browser.open(&pipeline, "/console/reconciliation").await;
    let list = browser
        .wait_source("the kept reports", |s| s.contains("id=\"reports\""))
        .await;
    assert!(
        list.contains("bins.csv") && list.contains("1 events by ops"),
        "{list}"
    );
    browser.screenshot("reconciliation").await;
    browser.close().await;
}

/// The default `topology.yaml` as `demo.sh` runs it, on this test's own ports, app id, topic
/// prefix and replication slot.
struct DefaultTopology {
    pipeline: Child,
    url: String,
    env: Vec<(&'static str, String)>,
    slot: String,
    /// Where the demo's storefront and ERP listen.
    demo_storefront: String,
    demo_erp: String,
}

impl DefaultTopology {
    async fn start() -> Self {
        let stack = Stack::from_env();
        let var = |name: &str, default: &str| std::env::var(name).unwrap_or(default.into());
        let (listen, storefront, erp) = (free_port(), free_port(), free_port());
        let run = unique("console-default-").replace('-', "_");
        let env = vec![
            ("ERPSTREAM_LISTEN", format!("127.0.0.1:{listen}")),
            ("ERPSTREAM_APP_ID", run.clone()),
            ("ERPSTREAM_TOPIC_PREFIX", format!("{run}.")),
            ("ERPSTREAM_INSTANCE_ID", run.clone()),
            ("ERP_CDC_SLOT", run.clone()),
            ("ERPSTREAM_BROKERS", stack.brokers),
            ("ERPSTREAM_REGISTRY_URL", stack.registry),
            ("ERPSTREAM_DATABASE_URL", stack.database),
            (
                "ERP_DATABASE_URL",
                var(
                    "ERP_DATABASE_URL",
                    "postgres://postgres@127.0.0.1:55432/erp",
                ),
            ),
            (
                "PLANNING_DATABASE_URL",
                var(
                    "PLANNING_DATABASE_URL",
                    "postgres://postgres@127.0.0.1:55432/planning",
                ),
            ),
            (
                "STOREFRONT_WEBHOOK_URL",
                format!("http://127.0.0.1:{storefront}/storefront"),
            ),
            ("ERP_API_URL", format!("http://127.0.0.1:{erp}")),
            ("ERP_WEBHOOK_SECRET", "default-erp-secret".into()),
            (
                "STOREFRONT_WEBHOOK_SECRET",
                "default-storefront-secret".into(),
            ),
            ("STOREFRONT_API_TOKEN", "default-api-token".into()),
            ("PLANNING_ADMIN_TOKEN", "default-planning-admin".into()),
            (
                "PLANNING_COORDINATOR_TOKEN",
                "default-planning-coordinator".into(),
            ),
            ("ERP_API_TOKEN", "default-erp-token".into()),
            ("CONSOLE_OPERATOR_TOKEN", "default-console-operator".into()),
            ("CONSOLE_VIEWER_TOKEN", "default-console-viewer".into()),
        ];
        let topology = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../topology.yaml");
        let log = std::env::temp_dir().join(format!("{run}.log"));
        let pipeline = Command::new(binary())
            .args(["run", "--topology"])
            .arg(&topology)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("start the pipeline");
        let url = format!("http://127.0.0.1:{listen}");
        let until = Instant::now() + Duration::from_secs(120);
        let client = reqwest::Client::new();
        loop {
            let ready = client.get(format!("{url}/readyz")).send().await;
            if ready.is_ok_and(|r| r.status() == 200) {
                break;
            }
            assert!(
                Instant::now() < until,
                "the default topology is not ready after 120 s; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Self {
            pipeline,
            url,
            env,
            slot: run,
            demo_storefront: format!("127.0.0.1:{storefront}"),
            demo_erp: format!("127.0.0.1:{erp}"),
        }
    }

    fn value(&self, name: &str) -> &str {
        self.env
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
            .expect("set")
    }

    /// `erpstream demo` against it: `events` webhooks at `rate` per second, and a few orders.
    fn demo(&self, events: u32, rate: u32) -> Child {
        Command::new(binary())
            .args([
                "demo",
                "--target",
                &self.url,
                "--listen",
                &self.demo_storefront,
            ])
            .args(["--erp-listen", &self.demo_erp, "--orders", "5"])
            .args(["--events", &events.to_string(), "--rate", &rate.to_string()])
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the demo")
    }
}

impl Drop for DefaultTopology {
    fn drop(&mut self) {
        let _ = self.pipeline.kill();
        let _ = self.pipeline.wait();
        // Its replication slot would keep WAL for ever.
        let url = self.value("ERP_DATABASE_URL").to_string();
        let slot = self.slot.clone();
        let _ = Command::new(
            PathBuf::from(std::env::var("ERPSTREAM_PG_BIN").unwrap_or("/usr/lib/postgresql/15/bin".into()))
                .join("psql"),
        )
        .args([&url, "-qAtc"])
        .arg(format!(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '{slot}'; DROP PUBLICATION IF EXISTS {slot}"
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    }
}

/// `data-<what>` of the Flow table's row of `component`, as a number.
fn figure(source: &str, component: &str, what: &str) -> f64 {
    source
        .split(&format!("<tr data-component=\"{component}\" "))
        .nth(1)
        .and_then(|row| row.split(&format!("data-{what}=\"")).nth(1))
        .and_then(|rest| rest.split('"').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_default_topology_is_ready_on_flow_with_live_rates_while_the_demo_runs() {
    let default = DefaultTopology::start().await;
    let mut demo = default.demo(3_000, 100);
    let browser = Browser::start().await;
    browser
        .log_in(&default.url, default.value("CONSOLE_OPERATOR_TOKEN"))
        .await;
    let components = [
        "erp",
        "storefront_api",
        "erp_db",
        "planning_api",
        "dedupe",
        "inventory",
        "planning",
        "storefront",
        "erp_writeback",
    ];
    // Rates are differences of 2 s samples: every component ready and the load flowing
    // through the webhook source into the storefront sink.
    let flow = browser
        .wait_source("every component ready with live rates", |s| {
            components
                .iter()
                .all(|id| s.contains(&format!("<tr data-component=\"{id}\" ")))
                && !s.contains("not ready")
                && figure(s, "erp", "in") > 0.0
                && figure(s, "storefront", "out") > 0.0
        })
        .await;
    assert!(flow.contains("<svg"), "the picture is drawn");
    for secret in default
        .env
        .iter()
        .filter(|(k, _)| k.ends_with("SECRET") || k.ends_with("TOKEN"))
    {
        assert!(!flow.contains(secret.1.as_str()), "Flow shows {}", secret.0);
    }
    browser.screenshot("flow-default-topology").await;

    // On a tablet (820 px wide, portrait) every page fits its width: wide tables scroll
    // inside their own box, the page itself never sideways.
    browser
        .client
        .set_window_size(820, 1180)
        .await
        .expect("tablet size");
    for (path, name) in [
        ("/console/flow", "flow"),
        ("/console/connectors", "connectors"),
        ("/console/mapping", "mapping"),
        ("/console/stock", "stock"),
        ("/console/dead-letters", "dead-letters"),
        ("/console/reconciliation", "reconciliation"),
        ("/console/history", "history"),
    ] {
        browser
            .client
            .goto(&format!("{}{path}", default.url))
            .await
            .expect("open");
        browser
            .client
            .wait()
            .for_element(Locator::Css("main h1"))
            .await
            .expect("the page");
        let overflow = browser
            .client
            .execute(
                "return document.documentElement.scrollWidth - window.innerWidth;",
                vec![],
            )
            .await
            .expect("measure");
        if overflow.as_i64().is_none_or(|o| o > 0) {
            let culprits = browser
                .client
                .execute(
                    "return [...document.querySelectorAll('body *')]
                        .filter(e => e.getBoundingClientRect().right > window.innerWidth)
                        .slice(0, 5).map(e => e.tagName + '.' + e.className + ' ' +
                            Math.round(e.getBoundingClientRect().right));",
                    vec![],
                )
                .await
                .expect("find what overflows");
            panic!("{path} is {overflow} px wider than a tablet: {culprits}");
        }
        browser.screenshot(&format!("tablet-{name}")).await;
    }
    browser.close().await;
    let _ = demo.kill();
    let _ = demo.wait();
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_say_what_is_down_when_a_database_or_the_broker_is() {
    let (broker, mut options) = TopologyOptions::own_broker();
    let (database, client) = planning_database().await;
    drop(client);
    options.database = database.clone();
    options.console = true;
    let mut pipeline = Pipeline::configure(&options);
    pipeline.start().await;
    let viewer = CONSOLE_TOKENS[1].1;

    // Empty states first.
    let (status, page) = pipeline.console_page(viewer, "/console/history").await;
    assert_eq!(status, 200);
    assert!(page.contains("Nothing exchanged yet"), "{page}");
    let (_, page) = pipeline
        .console_page(viewer, "/console/stock?sku=NOWHERE-1")
        .await;
    assert!(page.contains("id=\"not-found\""), "{page}");

    // The storefront API's request store refuses connections: the history says so.
    let name = database.rsplit('/').next().expect("name").to_string();
    let admin = pg(&Stack::from_env().database).await;
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {name} ALLOW_CONNECTIONS false;
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
        ))
        .await
        .expect("close the database");
    let (status, page) = pipeline.console_page(viewer, "/console/history").await;
    assert_eq!(status, 200);
    assert!(
        page.contains("Could not read the history") && page.contains("shop: the request store"),
        "{page}"
    );

    // The broker is gone: the pages that read topics say so instead of hanging.
    drop(broker);
    let started = Instant::now();
    let (status, page) = pipeline.console_page(viewer, "/console/dead-letters").await;
    assert_eq!(status, 200);
    assert!(
        page.contains("Could not read the dead-letter topics"),
        "{page}"
    );
    assert!(
        started.elapsed() < LONG,
        "answered in {:?}",
        started.elapsed()
    );
    let (_, page) = pipeline
        .console_page(viewer, "/console/reconciliation")
        .await;
    assert!(page.contains("Could not read the kept reports"), "{page}");
    admin
        .batch_execute(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
        .await
        .expect("reopen the database");
}
