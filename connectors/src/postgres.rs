//! Every Postgres connection erpstream opens goes through here: the URL is libpq's, with
//! `sslmode` and `sslrootcert` honoured as libpq honours them.
//!
//! | `sslmode` | TLS | server certificate |
//! |---|---|---|
//! | `disable` | never | — |
//! | `prefer` (the default) | if the server offers it | not checked |
//! | `require` | always | not checked, unless `sslrootcert` is given (then as `verify-ca`) |
//! | `verify-ca` | always | chains to `sslrootcert` (or the system's CAs) |
//! | `verify-full` | always | chains, and names the host connected to |
//!
//! `sslrootcert` is a PEM bundle; only its CAs are trusted. The replication connections of
//! `pg_cdc` take the same settings ([`PgTarget::replication_tls`]), and components that serve
//! concurrent requests take a [`pool`](PgTarget::pool) instead of one connection.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientConfig, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::Client;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::tls::{self, Pem, TlsFileError};
use crate::validation::Problem;

/// `sslmode`, as libpq names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS if the server offers it, certificate not checked.
    Prefer,
    /// TLS always, certificate not checked (without `sslrootcert`).
    Require,
    /// TLS, the certificate chains to a trusted CA.
    VerifyCa,
    /// TLS, the certificate chains to a trusted CA and names the host.
    VerifyFull,
}

impl FromStr for SslMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                    "sslmode {other:?}: must be disable, prefer, require, verify-ca or verify-full"
                ));
            }
        })
    }
}

/// A Postgres server as a URL names it: where, who, and how TLS is done.
#[derive(Clone)]
pub struct PgTarget {
    /// Everything but TLS, as tokio-postgres takes it.
    pub config: tokio_postgres::Config,
    /// The TLS mode.
    pub mode: SslMode,
    /// The CA bundle of `sslrootcert`.
    pub root_cert: Option<PathBuf>,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // tokio-postgres redacts the password in its own Debug.
        f.debug_struct("PgTarget")
            .field("config", &self.config)
            .field("mode", &self.mode)
            .field("root_cert", &self.root_cert)
            .finish()
    }
}

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The URL is not one erpstream can use.
    #[error("database URL: {0}")]
    Url(String),
    /// `sslrootcert` cannot be used.
    #[error("sslrootcert: {0}")]
    RootCert(#[from] TlsFileError),
    /// The server refused or could not be reached (the TLS handshake included); shown with
    /// its causes (tokio-postgres's own words stop at "error performing TLS handshake").
    #[error("{}", with_causes(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// The pool could not hand out a connection.
    #[error("{0}")]
    Pool(String),
}

impl PgError {
    /// Whether trying again cannot help until the configuration changes: the server's
    /// certificate was refused, or the server refused the credentials (SQLSTATE class 28).
    /// A server that is down or restarting is not a refusal.
    pub fn is_refusal(&self) -> bool {
        match self {
            PgError::Url(_) | PgError::RootCert(_) => true,
            PgError::Pool(_) => false,
            PgError::Postgres(e) => {
                if e.as_db_error()
                    .is_some_and(|db| db.code().code().starts_with("28"))
                {
                    return true;
                }
                let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
                while let Some(error) = source {
                    let tls = error.downcast_ref::<rustls::Error>().is_some()
                        || error
                            .downcast_ref::<std::io::Error>()
                            .and_then(|io| io.get_ref())
                            .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some());
                    if tls {
                        return true;
                    }
                    source = error.source();
                }
                false
            }
        }
    }

    /// The server's error, if it answered with one.
    pub fn as_db_error(&self) -> Option<&tokio_postgres::error::DbError> {
        match self {
            PgError::Postgres(e) => e.as_db_error(),
            _ => None,
        }
    }
}

/// `error` and each of its sources, joined by `: `.
fn with_causes(error: &tokio_postgres::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

impl FromStr for PgTarget {
    type Err = PgError;
    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let mut parsed = reqwest::Url::parse(url)
            .ok()
            .filter(|parsed| matches!(parsed.scheme(), "postgres" | "postgresql"))
            .ok_or_else(|| PgError::Url("must be a postgres:// URL".into()))?;
        let mut mode = SslMode::Prefer;
        let mut root_cert = None;
        let mut kept: Vec<(String, String)> = Vec::new();
        for (key, value) in parsed.query_pairs() {
            match &*key {
                "sslmode" => mode = value.parse().map_err(PgError::Url)?,
                "sslrootcert" => root_cert = Some(PathBuf::from(&*value)),
                "sslcert" | "sslkey" => {
                    return Err(PgError::Url(format!(
                        "{key}: client certificates are not supported; authenticate with a password"
                    )));
                }
                _ => kept.push((key.into_owned(), value.into_owned())),
            }
        }
        // tokio-postgres knows disable, prefer and require; the checking is done here.
        let theirs = match mode {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            _ => "require",
        };
        kept.push(("sslmode".into(), theirs.into()));
        parsed.query_pairs_mut().clear().extend_pairs(kept);
        let config = tokio_postgres::Config::from_str(parsed.as_str())
            .map_err(|e| PgError::Url(e.to_string()))?;
        Ok(Self {
            config,
            mode,
            root_cert,
        })
    }
}

/// A problem at `at` unless `url` is a Postgres URL erpstream can connect with (its
/// `sslrootcert` readable PEM).
pub fn check_url(at: &str, url: &str) -> Option<Problem> {
    match url.parse::<PgTarget>() {
        Err(PgError::Url(reason)) => Some(Problem::new(at, reason)),
        Err(other) => Some(Problem::new(at, other.to_string())),
        Ok(target) => target
            .root_cert
            .as_deref()
            .and_then(|path| tls::check(&format!("{at}: sslrootcert"), path, Pem::Certificates)),
    }
}

impl PgTarget {
    /// The rustls connector of this target (its CA bundle read now).
    pub fn tls(&self) -> Result<MakeRustlsConnect, PgError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| PgError::Url(format!("TLS: {e}")))?;
        let checked = matches!(
            (self.mode, &self.root_cert),
            (SslMode::VerifyCa | SslMode::VerifyFull, _) | (SslMode::Require, Some(_))
        );
        let chain = if checked {
            let roots = Arc::new(self.roots()?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| PgError::Url(format!("sslrootcert: {e}")))?;
            Some(webpki)
        } else {
            None
        };
        let verifier = Verifier {
            chain,
            names: self.mode == SslMode::VerifyFull,
            provider,
        };
        let config = builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        Ok(MakeRustlsConnect::new(config))
    }

    fn roots(&self) -> Result<RootCertStore, PgError> {
        let mut roots = RootCertStore::empty();
        match &self.root_cert {
            Some(path) => {
                for cert in tls::certificates(path)? {
                    roots.add(cert).map_err(|e| {
                        PgError::RootCert(TlsFileError {
                            path: path.clone(),
                            reason: e.to_string(),
                        })
                    })?;
                }
            }
            None => {
                roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            }
        }
        Ok(roots)
    }

    /// Opens one connection; its driver runs on its own task and logs its end as `what`.
    pub async fn connect(&self, what: &'static str) -> Result<Client, PgError> {
        let (client, connection) = self.config.connect(self.tls()?).await?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, what, "postgres connection ended");
            }
        });
        Ok(client)
    }

    /// Connects once to see whether the server takes this client: a refusal (see
    /// [`PgError::is_refusal`]) is returned, anything else only logged as `what` (a
    /// component that connects lazily starts while its database is down, and reports it).
    pub async fn check(&self, what: &'static str) -> Result<(), PgError> {
        match self.connect(what).await {
            Ok(_) => Ok(()),
            Err(err) if err.is_refusal() => Err(err),
            Err(err) => {
                tracing::warn!(error = %err, what, "database not reachable yet");
                Ok(())
            }
        }
    }

    /// A pool of up to `size` connections, opened as they are needed.
    pub fn pool(&self, size: usize) -> Result<deadpool_postgres::Pool, PgError> {
        let manager = deadpool_postgres::Manager::from_config(
            self.config.clone(),
            self.tls()?,
            deadpool_postgres::ManagerConfig {
                recycling_method: deadpool_postgres::RecyclingMethod::Fast,
            },
        );
        deadpool_postgres::Pool::builder(manager)
            .max_size(size)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| PgError::Pool(e.to_string()))
    }

    /// The same settings for `pgwire-replication`'s connections.
    pub fn replication_tls(&self) -> pgwire_replication::TlsConfig {
        use pgwire_replication::SslMode as Theirs;
        let mode = match (self.mode, &self.root_cert) {
            (SslMode::Disable, _) => Theirs::Disable,
            (SslMode::Prefer, _) => Theirs::Prefer,
            (SslMode::Require, None) => Theirs::Require,
            (SslMode::Require | SslMode::VerifyCa, _) => Theirs::VerifyCa,
            (SslMode::VerifyFull, _) => Theirs::VerifyFull,
        };
        let mut config = pgwire_replication::TlsConfig::disabled();
        config.mode = mode;
        config.ca_pem_path = self.root_cert.clone();
        config
    }
}

/// Opens one connection to `url` (see [`PgTarget::connect`]).
pub async fn connect(url: &str, what: &'static str) -> Result<Client, PgError> {
    url.parse::<PgTarget>()?.connect(what).await
}

/// `url` with its password replaced by `***`, to be shown.
pub fn redacted(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            // Setting a password fails only on URLs without a host, which have none.
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(parsed) => parsed.to_string(),
        Err(_) => "(a URL that does not parse)".to_string(),
    }
}

/// The server-certificate check of every mode: with `chain` (`verify-ca`, `verify-full`,
/// `require` with `sslrootcert`) the chain is checked by webpki, the name only if `names`
/// (`verify-full`); without it (`prefer`, `require`) the certificate is not checked, as
/// libpq does. The handshake's signatures are always checked.
#[derive(Debug)]
struct Verifier {
    chain: Option<Arc<WebPkiServerVerifier>>,
    names: bool,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(webpki) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.names => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_and_sslrootcert_are_read_and_the_rest_passed_on() {
        let target: PgTarget =
            "postgres://app:pw@db.example.com:6432/erp?sslmode=verify-full&sslrootcert=/etc/ca.pem&application_name=x"
                .parse()
                .expect("url");
        assert_eq!(target.mode, SslMode::VerifyFull);
        assert_eq!(target.root_cert, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(target.config.get_dbname(), Some("erp"));
        assert_eq!(target.config.get_ports(), &[6432]);
        assert_eq!(target.config.get_application_name(), Some("x"));
        assert_eq!(
            target.config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
        let plain: PgTarget = "postgres://postgres@127.0.0.1/erpstream"
            .parse()
            .expect("url");
        assert_eq!(plain.mode, SslMode::Prefer);
        assert!(!format!("{target:?}").contains("pw"), "{target:?}");
        assert_eq!(
            redacted("postgres://app:pw@db:5432/erp?sslmode=require"),
            "postgres://app:***@db:5432/erp?sslmode=require"
        );
    }

    #[test]
    fn a_bad_url_is_a_problem_saying_why() {
        let problem =
            check_url("sinks.p.database", "postgres://h/db?sslmode=verify").expect("problem");
        assert_eq!(
            problem.to_string(),
            "sinks.p.database: sslmode \"verify\": must be disable, prefer, require, verify-ca or verify-full"
        );
        let problem = check_url("x", "mysql://h/db").expect("problem");
        assert_eq!(problem.to_string(), "x: must be a postgres:// URL");
        let problem = check_url(
            "x",
            "postgres://h/db?sslmode=verify-ca&sslrootcert=/nowhere.pem",
        )
        .expect("problem");
        assert_eq!(
            problem.to_string(),
            "x: sslrootcert: /nowhere.pem: No such file or directory (os error 2)"
        );
    }
}
