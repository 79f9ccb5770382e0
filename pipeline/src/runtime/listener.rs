//! The HTTP listener, plain or HTTPS (`http.tls`), for the pipeline and the registry.
//!
//! With TLS, the certificate and key files are looked at every second; when either changes
//! (a rotation by cert-manager, certbot or a mounted secret), the pair is read again and new
//! connections get the new certificate while open ones carry on. A pair that does not load
//! (half written, key and certificate not matching) is reported and the old one kept until
//! the files are whole again. Handshakes run on their own tasks with a deadline, so a client
//! that never finishes one holds up nobody else.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, SystemTime};

use axum::Router;
use erpstream_connectors::tls::{self, Pem};
use erpstream_connectors::validation::Problem;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);
/// How often the certificate files are looked at.
const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// `http.tls`: serve HTTPS with this certificate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTls {
    /// The certificate chain (PEM), the server's certificate first.
    pub cert_file: PathBuf,
    /// Its private key (PEM, unencrypted).
    pub key_file: PathBuf,
}

impl HttpTls {
    /// The files are readable PEM of the right kind and belong together.
    pub fn validate(&self, at: &str) -> Vec<Problem> {
        let mut problems: Vec<Problem> = [
            tls::check(
                &format!("{at}.cert_file"),
                &self.cert_file,
                Pem::Certificates,
            ),
            tls::check(&format!("{at}.key_file"), &self.key_file, Pem::PrivateKey),
        ]
        .into_iter()
        .flatten()
        .collect();
        if problems.is_empty()
            && let Err(reason) = load(&self.cert_file, &self.key_file)
        {
            problems.push(Problem::new(format!("{at}.key_file"), reason));
        }
        problems
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The pair as rustls serves it, or why not.
fn load(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, String> {
    let chain = tls::certificates(cert_file).map_err(|e| e.to_string())?;
    let key = tls::private_key(key_file).map_err(|e| e.to_string())?;
    CertifiedKey::from_der(chain, key, &provider())
        .map_err(|e| format!("does not go with cert_file: {e}"))
}

/// Serves the current pair; [`watch`] swaps it.
#[derive(Debug)]
struct Reloading {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

/// What identifies a file's version without reading it.
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Re-reads the pair whenever a file changes, until the resolver is gone.
async fn watch(resolver: Weak<Reloading>, tls: HttpTls) {
    let stamps = |tls: &HttpTls| (stamp(&tls.cert_file), stamp(&tls.key_file));
    let mut seen = stamps(&tls);
    let mut interval = tokio::time::interval(RELOAD_EVERY);
    loop {
        interval.tick().await;
        let Some(resolver) = resolver.upgrade() else {
            return;
        };
        let now = stamps(&tls);
        if now == seen {
            continue;
        }
        match load(&tls.cert_file, &tls.key_file) {
            Ok(pair) => {
                *resolver.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(pair);
                seen = now;
                metrics::counter!("erpstream_tls_certificate_reloads_total").increment(1);
                tracing::info!(cert_file = %tls.cert_file.display(), "TLS certificate reloaded");
            }
            Err(reason) => {
                // Keep `seen`: the next tick tries again (the files may be mid-rotation).
                tracing::warn!(cert_file = %tls.cert_file.display(), %reason,
                    "TLS certificate changed but does not load; still serving the previous one");
            }
        }
    }
}

/// Accepted HTTPS connections, handshakes done.
pub struct TlsListener {
    incoming: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Serves `tls` on `tcp`: the pair is read now (an error says why it cannot be used).
    pub fn new(tcp: TcpListener, tls: &HttpTls) -> Result<Self, std::io::Error> {
        let pair = load(&tls.cert_file, &tls.key_file).map_err(std::io::Error::other)?;
        let resolver = Arc::new(Reloading {
            current: RwLock::new(Arc::new(pair)),
        });
        tokio::spawn(watch(Arc::downgrade(&resolver), tls.clone()));
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(std::io::Error::other)?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
        // axum is built for HTTP/1.1 only.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let local = tcp.local_addr()?;
        let (sender, incoming) = mpsc::channel(64);
        tokio::spawn(accept_loop(tcp, acceptor, sender));
        Ok(Self { incoming, local })
    }
}

async fn accept_loop(
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    sender: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    loop {
        let (stream, peer) = match tcp.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if sender.is_closed() {
            return;
        }
        let acceptor = acceptor.clone();
        let sender = sender.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_DEADLINE, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let _ = sender.send((tls, peer)).await;
                }
                Ok(Err(err)) => tracing::debug!(%peer, error = %err, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake not finished in time"),
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.incoming.recv().await {
            Some(accepted) => accepted,
            // The accept loop only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// Serves `router` on `listen`, over TLS if `tls` is set, until `shutdown` completes.
pub async fn serve(
    listen: SocketAddr,
    tls: Option<&HttpTls>,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<tokio::task::JoinHandle<std::io::Result<()>>, std::io::Error> {
    let tcp = TcpListener::bind(listen).await?;
    Ok(match tls {
        Some(tls) => {
            let listener = TlsListener::new(tcp, tls)?;
            tokio::spawn(async move {
                axum::serve(listener, router)
                    .with_graceful_shutdown(shutdown)
                    .await
            })
        }
        None => tokio::spawn(async move {
            axum::serve(tcp, router)
                .with_graceful_shutdown(shutdown)
                .await
        }),
    })
}
