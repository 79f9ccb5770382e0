//! Settings as the console shows them: the YAML as configured (after `${VAR}` substitution),
//! with URL passwords and the values of secret-looking keys replaced. Secrets proper are
//! never in the settings — the topology takes them only by reference (`{ env: NAME }`,
//! `{ file: PATH }`) — but a substituted variable can put a password into a database URL.

use serde_yaml_ng::Value;

/// What a hidden value is shown as.
pub const HIDDEN: &str = "••••••";

/// Keys whose plain values are never shown.
const SECRET_KEYS: &[&str] = &[
    "password",
    "secret",
    "token",
    "api_key",
    "key",
    "passphrase",
];

/// `settings` as YAML text, redacted.
pub fn settings(settings: &Value) -> String {
    let mut value = settings.clone();
    redact(&mut value, None);
    serde_yaml_ng::to_string(&value).unwrap_or_default()
}

fn redact(value: &mut Value, key: Option<&str>) {
    match value {
        Value::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                redact(v, k.as_str());
            }
        }
        Value::Sequence(items) => {
            for item in items {
                redact(item, key);
            }
        }
        Value::String(text) => {
            let secret_key = key.is_some_and(|k| {
                let k = k.to_ascii_lowercase();
                SECRET_KEYS
                    .iter()
                    .any(|s| k == *s || k.ends_with(&format!("_{s}")))
            });
            if secret_key {
                *text = HIDDEN.to_string();
            } else {
                *text = url_without_password(text);
            }
        }
        Value::Tagged(tagged) => redact(&mut tagged.value, key),
        _ => {}
    }
}

/// `text` with the password of a URL (`scheme://user:password@host`, hidden as the rest
/// of erpstream hides it, [`erpstream_connectors::postgres::redacted`]) and of a `password=`
/// connection parameter hidden.
fn url_without_password(text: &str) -> String {
    let mut out = match reqwest::Url::parse(text) {
        Ok(url) if url.password().is_some() => erpstream_connectors::postgres::redacted(text),
        _ => text.to_string(),
    };
    for marker in ["password=", "PASSWORD="] {
        while let Some(at) = out.find(marker) {
            let start = at + marker.len();
            if out[start..].starts_with(HIDDEN) {
                break;
            }
            let end = out[start..]
                .find(['&', ' ', ';'])
                .map_or(out.len(), |e| start + e);
            out.replace_range(start..end, HIDDEN);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_and_secret_keys_are_hidden_and_references_kept() {
        let yaml: Value = serde_yaml_ng::from_str(
            r#"
database: postgres://erp:s3cr3t@db.example:5432/erp?sslmode=verify-full
dsn: host=db user=erp password=s3cr3t dbname=erp
url: https://user@erp.example/api
token: { env: ERP_API_TOKEN }
api_key: inline-looking
nested: [{ password: hunter2 }]
"#,
        )
        .expect("yaml");
        let shown = settings(&yaml);
        for secret in ["s3cr3t", "inline-looking", "hunter2"] {
            assert!(!shown.contains(secret), "{secret} shown in:\n{shown}");
        }
        assert!(
            shown.contains("postgres://erp:***@db.example:5432/erp"),
            "{shown}"
        );
        assert!(shown.contains("https://user@erp.example/api"), "{shown}");
        assert!(shown.contains("env: ERP_API_TOKEN"), "{shown}");
    }
}
