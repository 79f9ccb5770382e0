//! The `registry:` section: where the schema registry is and how erpstream gets in.
//!
//! ```yaml
//! registry:
//!   url: https://psrc-xxxx.confluent.cloud
//!   ca_file: /etc/erpstream/registry-ca.pem     # optional: the system trust store otherwise
//!   basic_auth: { username: SR_API_KEY, password: { env: SR_API_SECRET } }
//! ```
//!
//! HTTPS certificates are always verified; with `ca_file`, only that bundle's CAs are
//! trusted. The password is read when the codec is built, at start-up.

use std::path::PathBuf;

use erpstream_connectors::tls::{self, Pem, TlsFileError};
use erpstream_connectors::validation::Problem;
use erpstream_connectors::{SecretError, SecretRef};
use erpstream_schemas::{Codec, CodecError};
use secrecy::ExposeSecret;
use serde::Deserialize;

/// The `registry:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Base URL of a Confluent-compatible schema registry.
    pub url: String,
    /// CA bundle (PEM) the registry's certificate must chain to (https URLs only).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// HTTP basic credentials (Confluent Cloud: the API key and secret).
    #[serde(default)]
    pub basic_auth: Option<BasicAuth>,
}

/// `registry.basic_auth`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    /// The user (Confluent Cloud: the API key).
    pub username: String,
    /// The password: `{ env: VAR }` or `{ file: PATH }`.
    pub password: SecretRef,
}

/// Why the registry client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RegistryAccessError {
    /// `registry.ca_file` cannot be used.
    #[error("registry.ca_file: {0}")]
    CaFile(#[from] TlsFileError),
    /// `registry.basic_auth.password` cannot be read.
    #[error("registry.basic_auth.password: {0}")]
    Password(#[from] SecretError),
    /// The client refused its settings.
    #[error(transparent)]
    Codec(#[from] CodecError),
}

impl RegistryConfig {
    /// A section with only a URL.
    pub fn at(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ca_file: None,
            basic_auth: None,
        }
    }

    /// The rules serde cannot express, with their paths below `at` (`registry`).
    pub fn validate(&self, at: &str) -> Vec<Problem> {
        let mut problems = Vec::new();
        let scheme = reqwest::Url::parse(&self.url).map(|url| url.scheme().to_string());
        match &scheme {
            Ok(scheme) if scheme == "http" || scheme == "https" => {}
            _ => problems.push(Problem::new(format!("{at}.url"), "must be an http(s) URL")),
        }
        if let Some(path) = &self.ca_file {
            if scheme.as_deref().is_ok_and(|s| s != "https") {
                problems.push(Problem::new(
                    format!("{at}.ca_file"),
                    "needs an https url (a CA file does nothing over plain HTTP)",
                ));
            } else if let Some(problem) =
                tls::check(&format!("{at}.ca_file"), path, Pem::Certificates)
            {
                problems.push(problem);
            }
        }
        if self
            .basic_auth
            .as_ref()
            .is_some_and(|auth| auth.username.is_empty())
        {
            problems.push(Problem::new(
                format!("{at}.basic_auth.username"),
                "must not be empty",
            ));
        }
        problems
    }

    /// The codec on this registry: its CA bundle read and its password resolved now.
    pub fn codec(&self) -> Result<Codec, RegistryAccessError> {
        let mut client = reqwest::Client::builder();
        if let Some(path) = &self.ca_file {
            client = tls::trust_only(client, path)?;
        }
        let password = self
            .basic_auth
            .as_ref()
            .map(|auth| auth.password.resolve())
            .transpose()?;
        let basic = self
            .basic_auth
            .as_ref()
            .zip(password.as_ref())
            .map(|(auth, password)| (auth.username.as_str(), password.expose_secret()));
        Ok(Codec::connect(&self.url, client, basic)?)
    }
}
