//! The deployment kit, checked offline: the Kubernetes manifests validate against the
//! Kubernetes schemas (`kubernetes-validate --strict`, PyPI), the kustomization lists every
//! manifest, and the production topology they mount passes `erpstream validate` with the
//! environment a pod has — a broken security setting is caught with its path. The compose
//! file parses and validates (`compose-spec`, PyPI), runs pinned upstream images, and gives
//! its two erpstream replicas only settings the default topology reads, with which it
//! validates.

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

fn compose_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/compose")
}

/// `deploy/compose/compose.yaml` as compose-spec (PyPI) parses and validates it, as JSON.
fn compose() -> serde_json::Value {
    let out = Command::new("python3")
        .arg("-c")
        .arg(
            "import compose_spec, json, sys\n\
             c = compose_spec.PyCompose.from_yaml(open(sys.argv[1]).read())\n\
             print(c.to_json())",
        )
        .arg(compose_dir().join("compose.yaml"))
        .output()
        .expect("run python3 with compose-spec (PyPI, see deploy/local/packages.sh)");
    assert!(
        out.status.success(),
        "compose.yaml does not validate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("compose-spec's JSON")
}

/// `${NAME:-default}` → `default`, as compose interpolates with nothing set.
fn interpolated(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("closed reference") + start;
        let reference = &rest[start + 2..end];
        out.push_str(
            reference
                .split_once(":-")
                .map_or("", |(_, default)| default),
        );
        rest = &rest[end + 1..];
    }
    out + rest
}

#[test]
fn the_compose_file_validates_and_runs_the_default_topology_as_two_replicas() {
    let compose = compose();
    let services = compose["services"].as_object().expect("services");
    // Upstream images, pinned.
    let upstream = [
        "apache/kafka:",
        "confluentinc/cp-schema-registry:",
        "postgres:16",
        "prom/prometheus:v",
        "grafana/grafana:",
    ];
    for (name, service) in services {
        let check = &service["healthcheck"]["test"];
        assert!(
            check.is_array() || check.as_str().is_some_and(|c| !c.is_empty()),
            "{name} has no healthcheck"
        );
        let image = service["image"].as_str().unwrap_or_default();
        if service.get("build").is_some() {
            assert_eq!(image, "erpstream:local", "{name}");
            let dockerfile = service["build"]["dockerfile"].as_str().expect("dockerfile");
            assert!(
                compose_dir().join("../..").join(dockerfile).is_file(),
                "{name}: {dockerfile}"
            );
        } else {
            assert!(
                upstream.iter().any(|u| image.starts_with(u)) && !image.ends_with(":latest"),
                "{name}: {image} is not a pinned upstream image"
            );
        }
        for volume in service["volumes"].as_array().into_iter().flatten() {
            let source = volume["source"]
                .as_str()
                .or_else(|| volume.as_str())
                .unwrap_or_default();
            let source = source.split(':').next().unwrap_or_default();
            if source.starts_with('.') {
                assert!(
                    compose_dir().join(source).exists(),
                    "{name} mounts {source}, which is not in the repository"
                );
            }
        }
    }
    for image in upstream {
        assert!(
            services
                .values()
                .any(|s| s["image"].as_str().is_some_and(|i| i.starts_with(image))),
            "no service runs {image}"
        );
    }

    // Two replicas of the default topology, each with its own instance id; every setting
    // they are given is one the topology (or the binary) reads, and the topology validates
    // with it.
    let topology_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../topology.yaml");
    let topology = std::fs::read_to_string(&topology_path).expect("topology.yaml");
    let replicas: Vec<_> = services
        .iter()
        .filter(|(_, s)| s.get("build").is_some())
        .collect();
    assert_eq!(replicas.len(), 2, "two erpstream replicas");
    let mut instances = Vec::new();
    for (name, service) in replicas {
        let env = service["environment"].as_object().expect("environment map");
        instances.push(
            env["ERPSTREAM_INSTANCE_ID"]
                .as_str()
                .expect("instance id")
                .to_string(),
        );
        let test = service["healthcheck"]["test"].to_string();
        assert!(test.contains("/readyz"), "{name}: {test}");
        let mut validate = Command::new(binary());
        validate.arg("validate").arg(&topology_path).env_clear();
        for (key, value) in env {
            assert!(
                topology.contains(&format!("${{{key}"))
                    || topology.contains(&format!("env: {key}"))
                    || key == "ERPSTREAM_LOG_FORMAT",
                "{name}: {key} is not a setting topology.yaml reads"
            );
            validate.env(key, interpolated(value.as_str().expect("a string value")));
        }
        let out = validate.output().expect("run erpstream validate");
        assert!(
            out.status.success(),
            "{name}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    instances.sort();
    instances.dedup();
    assert_eq!(instances.len(), 2, "each replica has its own instance id");
}
