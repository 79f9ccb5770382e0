//! Configuration problems, reported all at once with their path in the topology file.

/// One broken rule in the configuration, e.g.
/// `sinks.storefront.retry.max_attempts: must be > 0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path of the offending value in the file.
    pub path: String,
    /// The rule it breaks, phrased as what it must be.
    pub rule: String,
}

impl Problem {
    /// A problem at `path`.
    pub fn new(path: impl Into<String>, rule: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            rule: rule.into(),
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.rule)
    }
}

/// A problem at `path` unless `url` is an http(s) URL.
pub fn http_url(path: String, url: &str) -> Option<Problem> {
    match reqwest::Url::parse(url) {
        Ok(url) if matches!(url.scheme(), "http" | "https") => None,
        _ => Some(Problem::new(path, "must be an http(s) URL")),
    }
}
