//! The deployment kit, checked offline: the Kubernetes manifests validate against the
//! Kubernetes schemas (`kubernetes-validate --strict`, PyPI), the kustomization lists every
//! manifest, and the production topology they mount passes `erpstream validate` with the
//! environment a pod has — a broken security setting is caught with its path.

use std::path::{Path, PathBuf};
use std::process::Command;

use erpstream_e2e::*;

fn base() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/k8s/base")
}

/// The resource manifests of the base (everything but the kustomization and the topology).
fn manifests() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(base())
        .expect("deploy/k8s/base")
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".yaml"))
        .filter(|name| name != "kustomization.yaml" && name != "topology.yaml")
        .collect();
    files.sort();
    files
}

#[test]
fn the_kubernetes_manifests_validate_against_the_kubernetes_schemas() {
    let files = manifests();
    assert!(files.len() >= 4, "{files:?}");
    let out = Command::new("kubernetes-validate")
        .arg("--strict")
        .args(&files)
        .current_dir(base())
        .output()
        .expect("run kubernetes-validate (PyPI kubernetes-validate, see deploy/local/packages.sh)");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{report}");
    assert!(!report.contains("WARN"), "{report}");
    for file in &files {
        assert!(
            report.contains(&format!("{file} passed")),
            "{file}: {report}"
        );
    }

    // The kustomization applies every manifest and mounts the topology checked below.
    let kustomization =
        std::fs::read_to_string(base().join("kustomization.yaml")).expect("kustomization");
    for file in files.iter().map(String::as_str).chain(["topology.yaml"]) {
        assert!(
            kustomization.contains(&format!("- {file}")),
            "kustomization.yaml does not list {file}"
        );
    }
}

/// `erpstream validate` of the production topology with a pod's environment, the TLS and CA
/// files at `ca` and `issued`; `kafka_ca` overrides the Kafka CA file.
fn validate(ca: &Path, issued: &Issued, kafka_ca: &Path) -> (bool, String) {
    let database = |name: &str| {
        format!(
            "postgres://erpstream:pw@pg.example.com:5432/{name}?sslmode=verify-full&sslrootcert={}",
            ca.display()
        )
    };
    let out = Command::new(binary())
        .arg("validate")
        .arg(base().join("topology.yaml"))
        .env_clear()
        .env("KAFKA_BROKERS", "b-1.example.com:9096,b-2.example.com:9096")
        .env("KAFKA_USER", "erpstream")
        .env("KAFKA_CA_FILE", kafka_ca)
        .env("POD_NAME", "erpstream-0")
        .env("REGISTRY_URL", "https://schema-registry.example.com")
        .env("REGISTRY_USER", "erpstream")
        .env("ERPSTREAM_TLS_CERT", &issued.cert)
        .env("ERPSTREAM_TLS_KEY", &issued.key)
        .env("ERP_DATABASE_URL", database("erp"))
        .env("ERPSTREAM_DATABASE_URL", database("erpstream"))
        .env("PLANNING_DATABASE_URL", database("planning"))
        .env("DEFAULT_LOCATION", "WH-01")
        .env("ERP_API_URL", "https://erp.example.com")
        .env(
            "STOREFRONT_WEBHOOK_URL",
            "https://shop.example.com/hooks/erpstream",
        )
        .output()
        .expect("run erpstream validate");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn the_production_topology_validates_and_a_broken_security_setting_is_named() {
    let dir = TempDir::new("erpstream-kit-");
    let ca = TestCa::new(&dir.0, "kit-ca");
    let issued = ca.issue("listener");
    let (ok, report) = validate(&ca.cert, &issued, &ca.cert);
    assert!(ok, "{report}");

    let (ok, report) = validate(&ca.cert, &issued, &dir.0.join("missing-ca.pem"));
    assert!(!ok, "{report}");
    assert!(
        report.contains("kafka.security.ca_file:") && report.contains("missing-ca.pem"),
        "{report}"
    );
    let (ok, report) = validate(&ca.cert, &issued, &issued.key);
    assert!(!ok, "{report}");
    assert!(
        report.contains("kafka.security.ca_file:") && report.contains("holds no PEM certificate"),
        "{report}"
    );
}
