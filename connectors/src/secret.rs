//! Secrets referenced from the topology: read from an environment variable or a file, never
//! written inline, never printed (`SecretString` redacts itself in `Debug`).

use secrecy::SecretString;
use serde::Deserialize;

/// Where a secret comes from. In YAML: `{ env: ERP_WEBHOOK_SECRET }` or
/// `{ file: /run/secrets/erp_webhook }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "SecretShape")]
pub enum SecretRef {
    /// Name of an environment variable holding the secret.
    Env(String),
    /// Path of a file holding the secret (trailing newline ignored).
    File(std::path::PathBuf),
}

/// What the YAML holds where a [`SecretRef`] belongs: its fields, or anything else (an
/// inline secret, most likely), which is refused with the same words.
#[derive(Deserialize)]
#[serde(untagged)]
enum SecretShape {
    Fields(SecretFields),
    Other(serde::de::IgnoredAny),
}

/// The YAML shape of a [`SecretRef`]: exactly one of `env` or `file`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretFields {
    env: Option<String>,
    file: Option<std::path::PathBuf>,
}

impl TryFrom<SecretShape> for SecretRef {
    type Error = &'static str;
    fn try_from(shape: SecretShape) -> Result<Self, Self::Error> {
        let fields = match shape {
            SecretShape::Fields(fields) => Some((fields.env, fields.file)),
            SecretShape::Other(_) => None,
        };
        match fields {
            Some((Some(env), None)) if !env.is_empty() => Ok(SecretRef::Env(env)),
            Some((None, Some(file))) => Ok(SecretRef::File(file)),
            _ => Err(
                "must be { env: VARIABLE } or { file: PATH } (secrets are never written inline)",
            ),
        }
    }
}

/// Why a secret could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The environment variable is not set.
    #[error("environment variable {0} is not set")]
    MissingEnv(String),
    /// The file could not be read.
    #[error("could not read secret file {path}: {source}")]
    File {
        /// The configured path.
        path: std::path::PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The secret is empty.
    #[error("secret from {0} is empty")]
    Empty(String),
}

impl SecretRef {
    /// Reads the secret now.
    pub fn resolve(&self) -> Result<SecretString, SecretError> {
        let (value, origin) = match self {
            SecretRef::Env(name) => (
                std::env::var(name).map_err(|_| SecretError::MissingEnv(name.clone()))?,
                format!("environment variable {name}"),
            ),
            SecretRef::File(path) => (
                std::fs::read_to_string(path).map_err(|source| SecretError::File {
                    path: path.clone(),
                    source,
                })?,
                format!("file {}", path.display()),
            ),
        };
        let trimmed = value.trim_end_matches(['\n', '\r']);
        if trimmed.is_empty() {
            return Err(SecretError::Empty(origin));
        }
        Ok(SecretString::from(trimmed.to_string()))
    }
}
