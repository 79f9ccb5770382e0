//! The operator console (`/console`) and the connector API (`/api/connectors/...`), served
//! by the pipeline's own listener when the topology has a `console:` section.
//!
//! Pages are rendered on the server (maud) and refreshed or acted on with htmx; the
//! libraries and the stylesheet are embedded in the binary ([`assets`]), so nothing is built
//! on the user's machine. Every page needs a login ([`auth`]); `viewer` tokens read,
//! `operator` tokens also act. No secret value is ever rendered: settings are shown as
//! written, secrets by reference, URLs without their passwords.

mod api;

pub use api::ConnectorApi;
mod assets;
pub mod auth;
pub mod basic;
pub mod config;
mod connectors;
mod dead_letters;
mod flow;
mod history;
mod layout;
pub mod live;
mod mapping;
mod reconciliation;
mod records;
pub mod redact;
mod stock;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use cookie::{Cookie, SameSite};
use erpstream_connectors::component::{Control, History, Readiness, SnapshotService};
use maud::html;
use serde::Deserialize;

pub use config::ConsoleConfig;

use auth::{Auth, LOGIN_COOKIE, Operator, SESSION_COOKIE};
use live::Live;

use crate::tools::Tools;

/// Where a node sits in the topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// Takes data in.
    Source,
    /// Keeps state between topics.
    Processor,
    /// Delivers data out.
    Sink,
}

impl Section {
    /// The topology section's singular name.
    pub fn name(self) -> &'static str {
        match self {
            Section::Source => "source",
            Section::Processor => "processor",
            Section::Sink => "sink",
        }
    }
}

/// A source, processor or sink as the console shows it.
pub struct Node {
    /// Its id in the topology.
    pub id: String,
    /// Its section.
    pub section: Section,
    /// Its `type:`.
    pub type_name: String,
    /// Logical topics (or, for a chained processor, processor ids) it reads.
    pub inputs: Vec<String>,
    /// Logical topics it writes.
    pub outputs: Vec<String>,
    /// Its settings as YAML, secrets by reference and URLs without passwords.
    pub settings: String,
    /// Whether it can work now (for processors: their chain's).
    pub readiness: Option<Readiness>,
    /// Its controls, if it has any.
    pub control: Option<Arc<dyn Control>>,
    /// What it exchanged, for sources that take requests.
    pub history: Option<Arc<dyn History>>,
}

/// Everything the console's handlers share.
pub struct Console {
    /// Who may log in.
    pub auth: Auth,
    /// This process's live figures.
    pub live: Live,
    /// Every source, processor and sink.
    pub nodes: Vec<Node>,
    /// Declared logical topics.
    pub topics: Vec<String>,
    /// The data team's tools on this topology (dead letters, records, reconciliation).
    pub tools: Arc<Tools>,
    /// The inventory processor's state, when the topology keeps one.
    pub stock: Option<Arc<dyn SnapshotService>>,
}

/// The console's and the connector API's routes.
pub fn routes(console: Console) -> Router {
    let console = Arc::new(console);
    Router::new()
        .route("/console", get(|| async { Redirect::to("/console/flow") }))
        .route("/console/login", get(login_page).post(login))
        .route("/console/logout", post(logout))
        .route("/console/flow", get(flow::page))
        .route("/console/flow/live", get(flow::live))
        .route("/console/connectors", get(connectors::page))
        .route("/console/connectors/{id}/test", post(connectors::test))
        .route("/console/connectors/{id}/sync", post(connectors::sync))
        .route("/console/dead-letters", get(dead_letters::page))
        .route("/console/dead-letters/record", get(dead_letters::record))
        .route("/console/dead-letters/redrive", post(dead_letters::redrive))
        .route(
            "/console/reconciliation",
            get(reconciliation::page).post(reconciliation::run).layer(
                axum::extract::DefaultBodyLimit::max(reconciliation::MAX_UPLOAD),
            ),
        )
        .route("/console/reconciliation/{id}", get(reconciliation::report))
        .route(
            "/console/reconciliation/{id}/repair",
            get(reconciliation::confirm).post(reconciliation::repair),
        )
        .route("/console/stock", get(stock::page))
        .route("/console/history", get(history::page))
        .route("/console/mapping", get(mapping::page).post(mapping::try_it))
        .route("/console/record", get(records::page))
        .route("/console/assets/{name}", get(assets::serve))
        .merge(api::routes())
        .with_state(console)
        .layer(axum::middleware::map_response(security_headers))
}

/// The headers every console answer carries: nothing loads from elsewhere, nothing frames
/// it, nothing is cached but the assets. The referrer policy is `same-origin`, not
/// `no-referrer`: under `no-referrer` browsers send `Origin: null` with form posts, which
/// the origin check must refuse.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// The value of cookie `name` in the request.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_string())
}

impl Console {
    /// The logged-in operator of a console request.
    fn operator(&self, headers: &HeaderMap) -> Option<Operator> {
        let value = cookie(headers, SESSION_COOKIE)?;
        self.auth.session(&value, erpstream_schemas::now_millis())
    }

    /// The node with `id`.
    fn node(&self, id: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// A `Set-Cookie` value for this console.
    fn set_cookie(&self, name: &str, value: &str, max_age_s: i64) -> HeaderValue {
        let cookie = Cookie::build((name, value))
            .path("/console")
            .http_only(true)
            .same_site(SameSite::Strict)
            .secure(self.auth.secure)
            .max_age(cookie::time::Duration::seconds(max_age_s))
            .build();
        HeaderValue::from_str(&cookie.to_string()).unwrap_or(HeaderValue::from_static(""))
    }
}

/// Why a console request was refused, as a page (or an htmx fragment).
pub enum Refusal {
    /// Not logged in: to the login page (`htmx`: the request refreshes a fragment).
    Login {
        /// The page to come back to.
        next: String,
        /// Whether htmx asked (`HX-Request`).
        htmx: bool,
    },
    /// Logged in, but the role may not do this.
    Forbidden(&'static str),
    /// The request is not from this console's pages (CSRF token or origin wrong).
    Forged,
    /// No such thing.
    NotFound(String),
    /// The request is not one that can be carried out (says why).
    Invalid(String),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Login { next, htmx } => {
                let target = format!("/console/login?next={}", urlencoding(&next));
                if htmx {
                    // A redirect would be followed by the browser inside the fragment and put
                    // the login page there; HX-Redirect makes htmx load it as the page.
                    (
                        StatusCode::UNAUTHORIZED,
                        [(header::HeaderName::from_static("hx-redirect"), target)],
                    )
                        .into_response()
                } else {
                    Redirect::to(&target).into_response()
                }
            }
            Refusal::Forbidden(what) => (
                StatusCode::FORBIDDEN,
                html! { p.error-box role="alert" { "Your role may not " (what) "." } },
            )
                .into_response(),
            Refusal::Forged => (
                StatusCode::FORBIDDEN,
                html! { p.error-box role="alert" {
                    "This request did not come from a page of this console (its CSRF token "
                    "or origin is wrong). Reload the page and try again."
                } },
            )
                .into_response(),
            Refusal::NotFound(what) => (
                StatusCode::NOT_FOUND,
                html! { p.error-box role="alert" { (what) } },
            )
                .into_response(),
            Refusal::Invalid(why) => (
                StatusCode::BAD_REQUEST,
                html! { p.error-box role="alert" { (why) } },
            )
                .into_response(),
        }
    }
}

/// Percent-encodes a path for a query string.
fn urlencoding(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Whether htmx made the request (it refreshes a fragment, not the page).
fn from_htmx(headers: &HeaderMap) -> bool {
    headers.contains_key("hx-request")
}

/// A page request: the operator, or the way to the login page.
fn viewer(console: &Console, headers: &HeaderMap, path: &str) -> Result<Operator, Refusal> {
    console.operator(headers).ok_or_else(|| Refusal::Login {
        next: path.to_string(),
        htmx: from_htmx(headers),
    })
}

/// A request that reads through a form of this console's pages (any role): a logged-in
/// operator, with the CSRF token in the header or form field `csrf` and a matching
/// `Origin` when there is one.
fn reader(
    console: &Console,
    headers: &HeaderMap,
    form_csrf: Option<&str>,
) -> Result<Operator, Refusal> {
    let operator = viewer(console, headers, "/console/flow")?;
    let presented = headers
        .get(auth::CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .or(form_csrf)
        .unwrap_or_default();
    if !auth::csrf_matches(&operator, presented) || !same_origin(headers) {
        return Err(Refusal::Forged);
    }
    Ok(operator)
}

/// An action: as [`reader`], by an operator whose role may act.
fn actor(
    console: &Console,
    headers: &HeaderMap,
    form_csrf: Option<&str>,
    what: &'static str,
) -> Result<Operator, Refusal> {
    let operator = reader(console, headers, form_csrf)?;
    if !operator.role.may_act() {
        return Err(Refusal::Forbidden(what));
    }
    Ok(operator)
}

/// Whether the request's `Origin`, when the browser sent one, is this listener.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    origin
        .split_once("://")
        .is_some_and(|(_, authority)| authority == host)
}

#[derive(Deserialize)]
struct Next {
    next: Option<String>,
}

/// Where to go after the login: a console page, nothing else.
fn next_page(next: Option<&str>) -> String {
    next.filter(|n| n.starts_with("/console/") && !n.starts_with("/console//"))
        .filter(|n| !n.contains("://") && !n.contains('\\'))
        .unwrap_or("/console/flow")
        .to_string()
}

/// `GET /console/login`.
async fn login_page(State(console): State<Arc<Console>>, Query(next): Query<Next>) -> Response {
    let nonce = auth::login_nonce();
    let next = next_page(next.next.as_deref());
    let page = layout::login(&nonce, &next, None);
    (
        [(
            header::SET_COOKIE,
            console.set_cookie(LOGIN_COOKIE, &nonce, 600),
        )],
        page,
    )
        .into_response()
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
    nonce: String,
    next: Option<String>,
}

/// `POST /console/login`.
async fn login(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let next = next_page(form.next.as_deref());
    let expected = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if !auth::login_nonce_matches(&expected, &form.nonce) || !same_origin(&headers) {
        let nonce = auth::login_nonce();
        return (
            StatusCode::FORBIDDEN,
            [(
                header::SET_COOKIE,
                console.set_cookie(LOGIN_COOKIE, &nonce, 600),
            )],
            layout::login(
                &nonce,
                &next,
                Some("The login form expired or came from elsewhere; try again."),
            ),
        )
            .into_response();
    }
    match console
        .auth
        .login(&form.token, erpstream_schemas::now_millis())
    {
        Some((session, operator)) => {
            tracing::info!(operator = %operator.name, role = operator.role.name(), "console login");
            let mut response = Redirect::to(&next).into_response();
            let headers = response.headers_mut();
            headers.append(
                header::SET_COOKIE,
                console.set_cookie(SESSION_COOKIE, &session, console.auth.session_seconds()),
            );
            headers.append(header::SET_COOKIE, console.set_cookie(LOGIN_COOKIE, "", 0));
            response
        }
        None => {
            tracing::warn!("console login refused: not a console token");
            // A wrong guess costs the guesser time.
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            let nonce = auth::login_nonce();
            (
                StatusCode::UNAUTHORIZED,
                [(
                    header::SET_COOKIE,
                    console.set_cookie(LOGIN_COOKIE, &nonce, 600),
                )],
                layout::login(&nonce, &next, Some("That is not a console token.")),
            )
                .into_response()
        }
    }
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: Option<String>,
}

/// `POST /console/logout`.
async fn logout(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let Some(operator) = console.operator(&headers) else {
        return Redirect::to("/console/login").into_response();
    };
    let presented = form.csrf.unwrap_or_default();
    if !auth::csrf_matches(&operator, &presented) || !same_origin(&headers) {
        return Refusal::Forged.into_response();
    }
    tracing::info!(operator = %operator.name, "console logout");
    let mut response = Redirect::to("/console/login").into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        console.set_cookie(SESSION_COOKIE, "", 0),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_the_login_only_console_pages_are_gone_to() {
        assert_eq!(
            next_page(Some("/console/stock?sku=A")),
            "/console/stock?sku=A"
        );
        for elsewhere in [
            "https://evil.example/console/",
            "//evil.example",
            "/console//evil.example",
            "/api/connectors/status",
            "/console\\evil",
        ] {
            assert_eq!(next_page(Some(elsewhere)), "/console/flow", "{elsewhere}");
        }
        assert_eq!(next_page(None), "/console/flow");
    }

    #[test]
    fn an_origin_must_be_this_listener() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        assert!(same_origin(&headers), "no Origin: a same-origin form post");
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8080"),
        );
        assert!(same_origin(&headers));
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(!same_origin(&headers));
    }
}
