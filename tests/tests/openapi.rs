//! End-to-end: the listener's OpenAPI document (`GET /openapi.json`) is valid OpenAPI 3.1
//! (`openapi-spec-validator`, PyPI), documents every route the topology serves, and a
//! property-based API fuzzer (`schemathesis`, PyPI) driving a live pipeline with it finds no
//! 5xx, no answer the document does not describe (status, headers, body), and no route that
//! serves a request without its credentials. Webhooks are fuzzed signed (see
//! `tests/schemathesis/hooks.py`), so their bodies reach the payload parser.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use erpstream_e2e::*;
use serde_json::Value;

/// Test cases per operation; `ERPSTREAM_API_FUZZ_EXAMPLES` gives more.
const EXAMPLES: &str = "60";
/// The generator's seed, so that a run can be repeated; `ERPSTREAM_API_FUZZ_SEED` gives another.
const SEED: &str = "20261207";

fn planning_source(database: &str) -> String {
    format!(
        r#"  planning_api:
    type: planning_api
    database: {database}
    tokens:
      - {{ token: {{ env: TEST_PLANNING_ADMIN }}, role: admin, name: ops-admin }}
      - {{ token: {{ env: TEST_PLANNING_VIEWER }}, role: viewer }}
    publish:
      url: http://127.0.0.1:9
      retry: {{ max_attempts: 1 }}"#
    )
}

/// Runs `program` with `args` in `dir`, with `envs`; (success, stdout and stderr).
fn run(program: &str, args: &[&str], dir: &Path, envs: &[(&str, &str)]) -> (bool, String) {
    let output = Command::new(program)
        .args(args)
        .current_dir(dir)
        .envs(envs.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("{program} (deploy/local/packages.sh installs it): {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_describes_every_route_and_the_api_fuzzer_finds_no_fault() {
    let storefront = Storefront::start().await;
    let (database, _db) = planning_database().await;
    let mut options = TopologyOptions::new(&storefront.url);
    // A database of the test's own for the storefront's request store too: the fuzzer's ids
    // ("0", "A") are everybody's, and a stored one would answer its later requests 409.
    options.database = database.clone();
    options.extra_sources = planning_source(&database);
    let mut pipeline = Pipeline::configure(&options);
    pipeline.start().await;

    let response = pipeline
        .client
        .get(format!("{}/openapi.json", pipeline.url))
        .send()
        .await
        .expect("GET /openapi.json");
    assert_eq!(response.status(), 200);
    let doc: Value = response.json().await.expect("a JSON document");
    assert_eq!(doc["openapi"], "3.1.0", "{doc}");
    let paths: BTreeSet<&str> = doc["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .map(String::as_str)
        .collect();
    let served = BTreeSet::from([
        "/webhooks/erp",
        "/api/sales/orders",
        "/api/inventory/adjust",
        "/api/inventory/snapshot",
        "/api/v1/integrations/erp/products/sync",
        "/api/v1/integrations/erp/inventory/sync",
        "/api/v1/integrations/erp/demand-actuals/sync",
        "/api/v1/integrations/erp/publish/demand-plan/{plan_id}",
        "/api/v1/integrations/erp/publish/supply-plan/{plan_id}",
        "/metrics",
        "/healthz",
        "/readyz",
        "/openapi.json",
    ]);
    assert_eq!(paths, served, "the document's paths are the routes served");
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("path item") {
            let statuses = operation["responses"].as_object().expect("responses");
            for listener in ["431", "503"] {
                assert!(
                    statuses.contains_key(listener),
                    "{method} {path} documents the listener's {listener}"
                );
            }
        }
    }

    let dir = std::env::temp_dir().join(unique("erpstream-openapi-"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("openapi.json");
    std::fs::write(&file, doc.to_string()).expect("write the document");
    let (valid, report) = run(
        "openapi-spec-validator",
        &[file.to_str().expect("path")],
        &dir,
        &[],
    );
    assert!(
        valid,
        "the document is not valid OpenAPI: {}",
        report.chars().take(2_000).collect::<String>()
    );

    let harness = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemathesis");
    let examples = std::env::var("ERPSTREAM_API_FUZZ_EXAMPLES").unwrap_or(EXAMPLES.into());
    let seed = std::env::var("ERPSTREAM_API_FUZZ_SEED").unwrap_or(SEED.into());
    let planning_token = PLANNING_TOKENS[0].1;
    let schema = format!("{}/openapi.json", pipeline.url);
    let (passed, report) = run(
        "st",
        &[
            "--config-file",
            harness.join("schemathesis.toml").to_str().expect("path"),
            "run",
            &schema,
            "--checks",
            "all",
            "--workers",
            "1",
            "--max-examples",
            &examples,
            "--seed",
            &seed,
            "--generation-database",
            "none",
            // A NUL in any string is refused (the document's description says so); a JSON
            // Schema cannot say it of the free-form fields, so the generator leaves it out.
            "--generation-allow-x00",
            "false",
            "--request-timeout",
            "10",
            "--no-color",
        ],
        // Its reports and caches go to the test's own directory.
        &dir,
        &[
            ("SCHEMATHESIS_HOOKS", "hooks"),
            ("PYTHONPATH", harness.to_str().expect("path")),
            ("ERPSTREAM_TEST_ERP_SECRET", ERP_SECRET),
            ("ERPSTREAM_TEST_API_TOKEN", API_TOKEN),
            ("ERPSTREAM_TEST_PLANNING_TOKEN", planning_token),
        ],
    );
    println!("{report}");
    let log = pipeline.log_text();
    let tail: Vec<&str> = log.lines().rev().take(40).collect();
    assert!(
        passed,
        "schemathesis found faults (seed {seed}):\n{report}\nthe pipeline log's last lines:\n{}",
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    );
    // The fuzzer got past the signatures, tokens and validation: bodies it made were stored.
    let metrics = pipeline.metrics().await;
    for component in ["erp", "shop", "planning_api"] {
        let stored = metric(
            &metrics,
            "erpstream_component_sent_events_total",
            &[&format!("component_id=\"{component}\"")],
        );
        assert!(
            stored > 0.0,
            "no request the fuzzer made to {component} was stored; its metrics:\n{}",
            metrics
                .lines()
                .filter(|l| l.contains(&format!("component_id=\"{component}\"")))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    pipeline.terminate();
}
