//! How erpstream authenticates to the brokers and checks them: `kafka.security`.
//!
//! ```yaml
//! kafka:
//!   brokers: pkc-xxxx.confluent.cloud:9092
//!   security:
//!     protocol: SASL_SSL            # PLAINTEXT (default) | SSL | SASL_PLAINTEXT | SASL_SSL
//!     ca_file: /etc/erpstream/kafka-ca.pem   # optional: the system trust store otherwise
//!     sasl:
//!       mechanism: SCRAM-SHA-512    # PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
//!       username: erpstream
//!       password: { env: KAFKA_PASSWORD }
//! ```
//!
//! With `SSL` or `SASL_SSL` the broker's certificate is always verified, host name included;
//! `cert_file` and `key_file` add a client certificate (mutual TLS). The password is read
//! from its environment variable or file each time a client is built, so a rotated file is
//! used by the next client. `kafka.properties` stays for everything else librdkafka has, but
//! may not set what this section sets, nor hold a secret.

use std::path::PathBuf;

use rdkafka::ClientConfig;
use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use secrecy::ExposeSecret;
use serde::Deserialize;

use crate::secret::{SecretError, SecretRef};
use crate::tls::{self, Pem};
use crate::validation::Problem;

/// The `kafka.security` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSecurity {
    /// How the connection to the brokers is made.
    #[serde(default)]
    pub protocol: Protocol,
    /// CA bundle (PEM) the brokers' certificates must chain to; without it, the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM), for brokers that authenticate clients by TLS.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM, unencrypted).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// SASL credentials; required with `SASL_SSL` and `SASL_PLAINTEXT`.
    #[serde(default)]
    pub sasl: Option<Sasl>,
}

/// `kafka.security.protocol`, spelled as Kafka spells `security.protocol`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum Protocol {
    /// Neither encrypted nor authenticated (local brokers only).
    #[default]
    #[serde(rename = "PLAINTEXT")]
    Plaintext,
    /// TLS.
    #[serde(rename = "SSL")]
    Ssl,
    /// SASL without TLS: the password crosses the network readable unless SCRAM is used.
    #[serde(rename = "SASL_PLAINTEXT")]
    SaslPlaintext,
    /// SASL over TLS (Confluent Cloud, MSK with SCRAM, Redpanda Cloud).
    #[serde(rename = "SASL_SSL")]
    SaslSsl,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Plaintext => "PLAINTEXT",
            Protocol::Ssl => "SSL",
            Protocol::SaslPlaintext => "SASL_PLAINTEXT",
            Protocol::SaslSsl => "SASL_SSL",
        }
    }
    fn tls(self) -> bool {
        matches!(self, Protocol::Ssl | Protocol::SaslSsl)
    }
    fn sasl(self) -> bool {
        matches!(self, Protocol::SaslPlaintext | Protocol::SaslSsl)
    }
}

/// `kafka.security.sasl`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sasl {
    /// The SASL mechanism.
    pub mechanism: Mechanism,
    /// The user (Confluent Cloud: the API key).
    pub username: String,
    /// The password (Confluent Cloud: the API secret): `{ env: VAR }` or `{ file: PATH }`.
    pub password: SecretRef,
}

/// `kafka.security.sasl.mechanism`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Mechanism {
    /// User and password as they are (use it over TLS only).
    #[serde(rename = "PLAIN")]
    Plain,
    /// SCRAM with SHA-256.
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// SCRAM with SHA-512.
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl Mechanism {
    fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// librdkafka properties `kafka.properties` may not set next to this section: their value
/// comes from here.
const OWNED: &[&str] = &[
    "security.protocol",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.password",
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
    "ssl.endpoint.identification.algorithm",
    "enable.ssl.certificate.verification",
];

/// librdkafka properties that hold secrets: never inline in `kafka.properties`.
const SECRET: &[&str] = &[
    "sasl.password",
    "ssl.key.password",
    "ssl.keystore.password",
    "ssl.key.pem",
    "sasl.oauthbearer.client.secret",
];

impl KafkaSecurity {
    /// The rules serde cannot express, with the paths below `at` (`kafka.security`), and the
    /// ones `properties` (at `properties_at`) breaks with it.
    pub fn validate(
        &self,
        at: &str,
        properties: &std::collections::BTreeMap<String, String>,
        properties_at: &str,
    ) -> Vec<Problem> {
        let mut problems = Vec::new();
        let protocol = self.protocol;
        match (&self.sasl, protocol.sasl()) {
            (None, true) => problems.push(Problem::new(
                format!("{at}.sasl"),
                format!("is required with protocol {}", protocol.name()),
            )),
            (Some(_), false) => problems.push(Problem::new(
                format!("{at}.sasl"),
                format!(
                    "needs protocol SASL_SSL or SASL_PLAINTEXT (protocol is {})",
                    protocol.name()
                ),
            )),
            (Some(sasl), true) if sasl.username.is_empty() => problems.push(Problem::new(
                format!("{at}.sasl.username"),
                "must not be empty",
            )),
            _ => {}
        }
        let files = [
            ("ca_file", &self.ca_file, Pem::Certificates),
            ("cert_file", &self.cert_file, Pem::Certificates),
            ("key_file", &self.key_file, Pem::PrivateKey),
        ];
        for (field, path, kind) in files {
            let Some(path) = path else { continue };
            if !protocol.tls() {
                problems.push(Problem::new(
                    format!("{at}.{field}"),
                    format!(
                        "needs protocol SSL or SASL_SSL (protocol is {})",
                        protocol.name()
                    ),
                ));
            } else if let Some(problem) = tls::check(&format!("{at}.{field}"), path, kind) {
                problems.push(problem);
            }
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            let missing = if self.cert_file.is_some() {
                "key_file"
            } else {
                "cert_file"
            };
            problems.push(Problem::new(
                format!("{at}.{missing}"),
                "is required: cert_file and key_file go together",
            ));
        }
        for key in properties.keys() {
            if SECRET.contains(&key.as_str()) {
                problems.push(Problem::new(
                    format!("{properties_at}.{key}"),
                    "is a secret and secrets are never written inline: use kafka.security \
                     (sasl.password: { env: VAR } or { file: PATH })",
                ));
            } else if OWNED.contains(&key.as_str()) {
                problems.push(Problem::new(
                    format!("{properties_at}.{key}"),
                    "is set by kafka.security: set it there",
                ));
            }
        }
        problems
    }

    /// Applies the section to a client's settings, reading the password now.
    pub fn apply(&self, config: &mut ClientConfig) -> Result<(), SecretError> {
        config.set("security.protocol", self.protocol.name());
        if self.protocol.tls() {
            config
                .set("enable.ssl.certificate.verification", "true")
                .set("ssl.endpoint.identification.algorithm", "https");
            // librdkafka reads these files when the client is created.
            for (key, path) in [
                ("ssl.ca.location", &self.ca_file),
                ("ssl.certificate.location", &self.cert_file),
                ("ssl.key.location", &self.key_file),
            ] {
                if let Some(path) = path {
                    config.set(key, path.to_string_lossy());
                }
            }
        }
        if let Some(sasl) = &self.sasl {
            let password = sasl.password.resolve()?;
            config
                .set("sasl.mechanism", sasl.mechanism.name())
                .set("sasl.username", &sasl.username)
                .set("sasl.password", password.expose_secret());
        }
        Ok(())
    }
}

/// Why erpstream could not talk to the brokers at start-up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The brokers refused the credentials or the TLS handshake failed: retrying cannot help.
    #[error("kafka ({brokers}): {reason} (check kafka.security)")]
    Refused {
        /// The bootstrap servers.
        brokers: String,
        /// librdkafka's words, e.g. "SASL authentication error: ...".
        reason: String,
    },
    /// The brokers did not answer in time.
    #[error("kafka ({brokers}): no broker answered in {seconds} s{}", last.as_ref().map(|l| format!(" (last error: {l})")).unwrap_or_default())]
    Unreachable {
        /// The bootstrap servers.
        brokers: String,
        /// How long it waited.
        seconds: u64,
        /// The last error librdkafka reported, if any.
        last: Option<String>,
    },
    /// The client could not be created (a setting librdkafka refuses, a secret missing).
    #[error("kafka: {0}")]
    Client(#[from] KafkaError),
}

/// Records the errors librdkafka reports while the probe runs.
#[derive(Default)]
struct Recorder {
    errors: std::sync::Mutex<Vec<(RDKafkaErrorCode, String)>>,
}

impl ClientContext for Recorder {
    fn log(&self, _level: RDKafkaLogLevel, _fac: &str, _message: &str) {}
    fn error(&self, error: KafkaError, reason: &str) {
        if let Some(code) = error.rdkafka_error_code() {
            self.errors
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((code, reason.to_string()));
        }
    }
}

impl rdkafka::consumer::ConsumerContext for Recorder {}

/// Whether `code` says the brokers will refuse this client whatever the retry.
fn refused(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::Authentication
            | RDKafkaErrorCode::SaslAuthenticationFailed
            | RDKafkaErrorCode::SSL
            | RDKafkaErrorCode::UnsupportedSASLMechanism
            | RDKafkaErrorCode::IllegalSASLState
            | RDKafkaErrorCode::ClusterAuthorizationFailed
    )
}

/// Connects to the brokers with `config` (a client's settings) and reads the cluster's
/// metadata, waiting up to `patience` for a broker that is still starting. Refused
/// credentials or a failed TLS handshake end the wait at once with librdkafka's reason:
/// librdkafka itself would retry them forever.
pub fn probe(
    mut config: ClientConfig,
    brokers: &str,
    patience: std::time::Duration,
) -> Result<(), ConnectError> {
    config.set("group.id", "erpstream-probe");
    let consumer: BaseConsumer<Recorder> = config.create_with_context(Recorder::default())?;
    let deadline = std::time::Instant::now() + patience;
    loop {
        match consumer
            .client()
            .fetch_metadata(None, std::time::Duration::from_secs(1))
        {
            Ok(_) => return Ok(()),
            Err(err) => {
                // Errors reach the context when the client is polled.
                drop(consumer.poll(std::time::Duration::from_millis(100)));
                let errors = consumer
                    .context()
                    .errors
                    .lock()
                    .map_or_else(|e| e.into_inner().clone(), |errors| errors.clone());
                if let Some((_, reason)) = errors.iter().find(|(code, _)| refused(*code)) {
                    return Err(ConnectError::Refused {
                        brokers: brokers.to_string(),
                        reason: reason.clone(),
                    });
                }
                if std::time::Instant::now() >= deadline {
                    return Err(ConnectError::Unreachable {
                        brokers: brokers.to_string(),
                        seconds: patience.as_secs(),
                        last: errors
                            .last()
                            .map(|(_, reason)| reason.clone())
                            .or(Some(err.to_string())),
                    });
                }
            }
        }
    }
}
