//! TLS material named in the topology (CA bundles, certificates, private keys): checked at
//! validation — the file is readable and holds PEM of the right kind — and read again when a
//! client is built, so a rotated file is picked up by the next connection.

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::validation::Problem;

/// What a PEM file must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pem {
    /// One or more certificates (a CA bundle, or a certificate with its chain).
    Certificates,
    /// One private key (PKCS#8, PKCS#1 or SEC1).
    PrivateKey,
}

/// Why a TLS file cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{}: {reason}", path.display())]
pub struct TlsFileError {
    /// The configured path.
    pub path: PathBuf,
    /// Why, e.g. "holds no PEM certificate".
    pub reason: String,
}

/// The certificates of the PEM file at `path`, at least one.
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let error = |reason: String| TlsFileError {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| error(e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(format!("is not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(error("holds no PEM certificate".into()));
    }
    Ok(certs)
}

/// The private key of the PEM file at `path`.
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsFileError> {
    let error = |reason: String| TlsFileError {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| error(e.to_string()))?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => error("holds no PEM private key".into()),
        e => error(format!("is not a valid PEM private key: {e}")),
    })
}

/// A problem at `at` unless the file at `path` is readable and holds `kind`.
pub fn check(at: &str, path: &Path, kind: Pem) -> Option<Problem> {
    let result = match kind {
        Pem::Certificates => certificates(path).map(drop),
        Pem::PrivateKey => private_key(path).map(drop),
    };
    result.err().map(|e| Problem::new(at, e.to_string()))
}

/// The CA bundle at `path` for a reqwest client: it replaces the system trust store, so only
/// servers with a certificate from these CAs are accepted.
pub fn trust_only(
    builder: reqwest::ClientBuilder,
    path: &Path,
) -> Result<reqwest::ClientBuilder, TlsFileError> {
    let mut roots = Vec::new();
    for der in certificates(path)? {
        roots.push(
            reqwest::Certificate::from_der(&der).map_err(|e| TlsFileError {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?,
        );
    }
    Ok(builder.tls_certs_only(roots))
}

/// `builder` trusting only the bundle at `ca_file` if one is given (see [`trust_only`]).
pub fn trusting(
    builder: reqwest::ClientBuilder,
    ca_file: Option<&Path>,
) -> Result<reqwest::ClientBuilder, TlsFileError> {
    match ca_file {
        Some(path) => trust_only(builder, path),
        None => Ok(builder),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_wrong_file_is_a_problem_naming_the_path() {
        let dir = std::env::temp_dir().join(format!("erpstream-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let missing = dir.join("missing.pem");
        let problem =
            check("kafka.security.ca_file", &missing, Pem::Certificates).expect("problem");
        assert_eq!(problem.path, "kafka.security.ca_file");
        assert!(problem.rule.contains("missing.pem"), "{problem}");

        let text = dir.join("text.pem");
        std::fs::write(&text, "not pem\n").expect("write");
        let problem = check("x", &text, Pem::Certificates).expect("problem");
        assert!(
            problem.rule.ends_with("holds no PEM certificate"),
            "{problem}"
        );
        let problem = check("x", &text, Pem::PrivateKey).expect("problem");
        assert!(
            problem.rule.ends_with("holds no PEM private key"),
            "{problem}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
