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

/// The rules most settings share, phrased the same everywhere: collects the problems of
/// one component's settings below its path.
pub struct Checks {
    at: String,
    problems: Vec<Problem>,
}

impl Checks {
    /// Checks of the settings at `at` (e.g. `sinks.storefront`).
    pub fn new(at: &str) -> Self {
        Self {
            at: at.to_string(),
            problems: Vec::new(),
        }
    }

    /// A problem with `field`, unless `ok`.
    pub fn rule(&mut self, ok: bool, field: &str, rule: impl Into<String>) -> &mut Self {
        if !ok {
            self.problems
                .push(Problem::new(format!("{}.{field}", self.at), rule));
        }
        self
    }

    /// `field` lists at least one `what`.
    pub fn listed<T>(&mut self, field: &str, items: &[T], what: &str) -> &mut Self {
        self.rule(
            !items.is_empty(),
            field,
            format!("must list at least one {what}"),
        )
    }

    /// `field` is above zero (a count, a duration, a size).
    pub fn positive(&mut self, field: &str, positive: bool) -> &mut Self {
        self.rule(positive, field, "must be > 0")
    }

    /// `field` has some text.
    pub fn text(&mut self, field: &str, text: &str) -> &mut Self {
        self.rule(!text.trim().is_empty(), field, "must not be empty")
    }

    /// `field` is a `postgres://` URL erpstream can connect with (see
    /// [`crate::postgres::check_url`]).
    pub fn postgres_url(&mut self, field: &str, url: &str) -> &mut Self {
        let problem = crate::postgres::check_url(&format!("{}.{field}", self.at), url);
        self.problems.extend(problem);
        self
    }

    /// `ca_file` (at `field`), if set, is a readable CA bundle for the https URL `url`.
    pub fn ca_file(
        &mut self,
        field: &str,
        url: &str,
        ca_file: Option<&std::path::Path>,
    ) -> &mut Self {
        let Some(path) = ca_file else { return self };
        let at = format!("{}.{field}", self.at);
        if !url.starts_with("https://") {
            self.problems.push(Problem::new(
                at,
                "needs an https url (a CA file does nothing over plain HTTP)",
            ));
        } else {
            self.problems
                .extend(crate::tls::check(&at, path, crate::tls::Pem::Certificates));
        }
        self
    }

    /// `field` is an http(s) URL.
    pub fn http_url(&mut self, field: &str, url: &str) -> &mut Self {
        let problem = http_url(format!("{}.{field}", self.at), url);
        self.problems.extend(problem);
        self
    }

    /// Problems found elsewhere (a nested setting's own checks).
    pub fn extend(&mut self, problems: impl IntoIterator<Item = Problem>) -> &mut Self {
        self.problems.extend(problems);
        self
    }

    /// Every problem found.
    pub fn done(&mut self) -> Vec<Problem> {
        std::mem::take(&mut self.problems)
    }
}
