//! The HTTP listener, plain or HTTPS (`http.tls`), for the pipeline and the registry.
//!
//! With TLS, the certificate and key files are looked at every second; when either changes
//! (a rotation by cert-manager, certbot or a mounted secret), the pair is read again and new
//! connections get the new certificate while open ones carry on. A pair that does not load
//! (half written, key and certificate not matching) is reported and the old one kept until
//! the files are whole again.
//!
//! Every connection is served on its own task, so a slow client holds up nobody else, and
//! [`HttpLimits`] bounds what each may hold: a handshake, the headers of each request and its
//! body have deadlines (an idle or slow-loris connection is closed; a late body is `408`), the
//! open connections and each route's requests in progress are capped, and heads over the
//! limit are `431` with the field named.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use bytesize::ByteSize;
use erpstream_connectors::sources::http::ErrorBody;
use erpstream_connectors::tls::{self, Pem};
use erpstream_connectors::validation::{Checks, Problem};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::Deserialize;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tower_http::timeout::RequestBodyTimeoutLayer;

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

/// `http.limits`: what one client may hold of the listener, so that idle, slow or abusive
/// clients cannot keep the others from being answered.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpLimits {
    /// Connections open at once (plain and TLS); past it a new connection is closed at once
    /// and counted in `erpstream_http_connections_refused_total`.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Requests one route serves at once; past it the route answers `503` + `Retry-After`
    /// (`erpstream_http_route_busy_total{route}`). The routes that take data in are also held
    /// by `http.admission`.
    #[serde(default = "default_max_requests_per_route")]
    pub max_requests_per_route: usize,
    /// Longest time from a connection's opening, or the end of its previous request, to the
    /// end of a request's headers: an idle or slow-loris connection is closed then.
    #[serde(default = "default_deadline", with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Longest time a request's body may take to arrive once its headers are read (`408`).
    #[serde(default = "default_deadline", with = "humantime_serde")]
    pub body_timeout: Duration,
    /// Largest request line plus headers (`431`).
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: ByteSize,
}

fn default_max_connections() -> usize {
    10_000
}
fn default_max_requests_per_route() -> usize {
    1_000
}
fn default_deadline() -> Duration {
    Duration::from_secs(10)
}
fn default_max_header_bytes() -> ByteSize {
    ByteSize::kib(64)
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_connections: default_max_connections(),
            max_requests_per_route: default_max_requests_per_route(),
            header_timeout: default_deadline(),
            body_timeout: default_deadline(),
            max_header_bytes: default_max_header_bytes(),
        }
    }
}

impl HttpLimits {
    /// Every problem with the limits, by path below `at`.
    pub fn validate(&self, at: &str) -> Vec<Problem> {
        Checks::new(at)
            .positive("max_connections", self.max_connections > 0)
            .positive("max_requests_per_route", self.max_requests_per_route > 0)
            .positive("header_timeout", !self.header_timeout.is_zero())
            .positive("body_timeout", !self.body_timeout.is_zero())
            .rule(
                (ByteSize::kib(1)..=ByteSize::mib(1)).contains(&self.max_header_bytes),
                "max_header_bytes",
                "must be between 1 KiB and 1 MiB",
            )
            .done()
    }

    fn max_head(&self) -> usize {
        self.max_header_bytes.as_u64() as usize
    }
}

/// Serves `router` on `listen`, over TLS if `tls` is set, held to `limits`, until `shutdown`
/// completes; then the open connections finish their requests and close.
pub async fn serve(
    listen: SocketAddr,
    tls: Option<&HttpTls>,
    limits: &HttpLimits,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<tokio::task::JoinHandle<std::io::Result<()>>, std::io::Error> {
    let tcp = bind(listen)?;
    raise_open_files(limits.max_connections);
    let acceptor = tls.map(acceptor).transpose()?;
    let router = guarded(router, limits);
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        // Heads up to 4× the limit are read, so that the limit is answered with a body that
        // says so (`refuse_large_heads`); past that hyper closes with a bare 431.
        .max_buf_size((4 * limits.max_head()).max(8192))
        .max_headers(256);
    Ok(tokio::spawn(connections(
        tcp,
        acceptor,
        http,
        router,
        limits.max_connections,
        shutdown,
    )))
}

/// How many connections may wait to be accepted (the system caps it at `somaxconn`): room
/// for a burst of clients connecting at once.
const BACKLOG: u32 = 4_096;

fn bind(listen: SocketAddr) -> Result<TcpListener, std::io::Error> {
    let socket = if listen.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(listen)?;
    socket.listen(BACKLOG)
}

/// Raises this process's open-files limit to the most the system allows, so that
/// `max_connections` can be reached; a warning says when it cannot.
fn raise_open_files(max_connections: usize) {
    // Files, sockets to the broker and the databases besides the clients' connections.
    let wanted = max_connections as u64 + 1_024;
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < wanted => tracing::warn!(
            limit,
            max_connections,
            "the open-files limit is below http.limits.max_connections plus 1,024; \
             connections past it are refused by the system (raise `ulimit -n`)"
        ),
        Ok(_) => {}
        Err(err) => tracing::warn!(error = %err, "could not read the open-files limit"),
    }
}

/// The TLS acceptor for `tls`: the pair is read now (an error says why it cannot be used) and
/// re-read when the files change.
fn acceptor(tls: &HttpTls) -> Result<TlsAcceptor, std::io::Error> {
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
    // The listener speaks HTTP/1.1 only.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The router behind the request limits: per-route concurrency, body deadline, head size.
fn guarded(router: Router, limits: &HttpLimits) -> Router {
    let routes = RouteSlots {
        per_route: limits.max_requests_per_route,
        slots: Arc::new(Mutex::new(HashMap::new())),
    };
    router
        .route_layer(middleware::from_fn_with_state(routes, hold_route_slot))
        .layer(RequestBodyTimeoutLayer::new(limits.body_timeout))
        .layer(middleware::from_fn_with_state(
            limits.max_head(),
            refuse_large_heads,
        ))
}

/// Documents in `doc` the refusals the listener gives on any route, before its handler runs:
/// `431` for a head over the limit and `503` while the route's requests in progress are at
/// the cap. An operation that documents its own `503` keeps it (the body is the same kind).
pub fn document_refusals(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::schema::ObjectBuilder;
    use utoipa::openapi::{ContentBuilder, HeaderBuilder, ResponseBuilder, Type};
    let body = || {
        ContentBuilder::new()
            .schema(Some(utoipa::openapi::Ref::from_schema_name("ErrorBody")))
            .build()
    };
    let too_large = ResponseBuilder::new()
        .description("The request line and headers are over http.limits.max_header_bytes")
        .content("application/json", body())
        .build();
    let busy = ResponseBuilder::new()
        .description(
            "The route has http.limits.max_requests_per_route requests in progress; send \
             again after Retry-After",
        )
        .content("application/json", body())
        .header(
            "Retry-After",
            HeaderBuilder::new()
                .schema(ObjectBuilder::new().schema_type(Type::Integer))
                .description(Some("Seconds to wait"))
                .build(),
        )
        .build();
    for item in doc.paths.paths.values_mut() {
        for operation in [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            let responses = &mut operation.responses.responses;
            responses
                .entry("431".into())
                .or_insert_with(|| too_large.clone().into());
            responses
                .entry("503".into())
                .or_insert_with(|| busy.clone().into());
        }
    }
    let components = doc.components.get_or_insert_with(Default::default);
    components
        .schemas
        .entry("ErrorBody".into())
        .or_insert_with(<ErrorBody as utoipa::PartialSchema>::schema);
}

/// Accepts connections until `shutdown`, each served on its own task, at most
/// `max_connections` at once.
async fn connections(
    tcp: TcpListener,
    tls: Option<TlsAcceptor>,
    http: http1::Builder,
    router: Router,
    max_connections: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let open = Arc::new(Semaphore::new(max_connections));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = tcp.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(slot) = open.clone().try_acquire_owned() else {
            metrics::counter!("erpstream_http_connections_refused_total").increment(1);
            tracing::debug!(%peer, max_connections, "connection refused: the listener is full");
            continue;
        };
        metrics::gauge!("erpstream_http_connections_open").increment(1.0);
        let _ = stream.set_nodelay(true);
        let (tls, http, router, watcher) = (
            tls.clone(),
            http.clone(),
            router.clone(),
            graceful.watcher(),
        );
        tokio::spawn(async move {
            let service = TowerToHyperService::new(router);
            let served = match tls {
                None => {
                    let connection = http.serve_connection(TokioIo::new(stream), service);
                    watcher.watch(connection).await
                }
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_DEADLINE, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let connection = http.serve_connection(TokioIo::new(stream), service);
                            watcher.watch(connection).await
                        }
                        Ok(Err(err)) => {
                            tracing::debug!(%peer, error = %err, "TLS handshake failed");
                            Ok(())
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake not finished in time");
                            Ok(())
                        }
                    }
                }
            };
            if let Err(err) = served {
                tracing::debug!(%peer, error = %err, "connection ended");
            }
            metrics::gauge!("erpstream_http_connections_open").decrement(1.0);
            drop(slot);
        });
    }
    drop(tcp);
    graceful.shutdown().await;
    Ok(())
}

/// Requests in progress per route, each route holding at most `per_route`.
#[derive(Clone)]
struct RouteSlots {
    per_route: usize,
    slots: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
}

impl RouteSlots {
    fn of(&self, route: &str) -> Arc<Semaphore> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .entry(route.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_route)))
            .clone()
    }
}

/// Serves the request while its route has a free slot, else `503` + `Retry-After`.
async fn hold_route_slot(
    State(routes): State<RouteSlots>,
    request: Request,
    next: Next,
) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or_else(
        || request.uri().path().to_string(),
        |p| p.as_str().to_string(),
    );
    let Ok(_slot) = routes.of(&route).try_acquire_owned() else {
        metrics::counter!("erpstream_http_route_busy_total", "route" => route.clone()).increment(1);
        return ErrorBody::new("route busy, retry later")
            .reason(format!(
                "{route} has {} requests in progress (http.limits.max_requests_per_route)",
                routes.per_route
            ))
            .respond_later(StatusCode::SERVICE_UNAVAILABLE, 1);
    };
    next.run(request).await
}

/// `431` naming the headers when the request line and headers exceed `max_head` bytes.
async fn refuse_large_heads(
    State(max_head): State<usize>,
    request: Request,
    next: Next,
) -> Response {
    let head = request.uri().to_string().len()
        + request
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum::<usize>();
    if head > max_head {
        return ErrorBody::new("request headers too large")
            .field("headers")
            .reason(format!("{head} bytes; at most {max_head}"))
            .respond(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }
    next.run(request).await
}
