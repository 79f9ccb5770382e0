//! The console's static files, embedded in the binary: the vendored libraries
//! (`assets/vendor/`, refreshed from npm by `assets/vendor/vendor.sh`) and the console's own
//! stylesheet.

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

/// (name, content type, bytes).
const FILES: &[(&str, &str, &[u8])] = &[
    (
        "htmx.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/vendor/htmx.min.js"),
    ),
    (
        "pico.min.css",
        "text/css; charset=utf-8",
        include_bytes!("assets/vendor/pico.min.css"),
    ),
    (
        "console.css",
        "text/css; charset=utf-8",
        include_bytes!("assets/console.css"),
    ),
];

/// The path a page links an asset by; the build's version in the query string makes a new
/// build's files fresh in every browser.
pub fn href(name: &str) -> String {
    format!("/console/assets/{name}?v={}", env!("CARGO_PKG_VERSION"))
}

/// `GET /console/assets/{name}`.
pub async fn serve(Path(name): Path<String>) -> Response {
    match FILES.iter().find(|(n, _, _)| *n == name) {
        Some((_, content_type, bytes)) => (
            [
                (header::CONTENT_TYPE, *content_type),
                (header::CACHE_CONTROL, "public, max-age=86400"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            *bytes,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such file").into_response(),
    }
}
