//! What HTTP clients (sinks, polled sources) share: the retry schedule and how an answer is classified
//! (delivered; worth retrying: 408, 429, 5xx, timeouts, connection errors; refused for good:
//! other 4xx).

use std::time::Duration;

use rand::Rng;
use serde::Deserialize;

use crate::validation::Problem;

/// What one attempt achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx.
    Delivered,
    /// Worth another attempt; `retry_after` is the server's own hint.
    Retry {
        /// Why, for logs and the dead-letter header.
        reason: String,
        /// `Retry-After`, if the server sent one.
        retry_after: Option<Duration>,
    },
    /// Refused for good; retrying cannot help.
    Reject {
        /// Why.
        reason: String,
    },
}

/// Capped exponential backoff with jitter.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts in all, the first included, before the record goes to `<topic>.dlq`.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Wait before the second attempt.
    #[serde(default = "default_initial_backoff", with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Longest wait between attempts.
    #[serde(default = "default_max_backoff", with = "humantime_serde")]
    pub max_backoff: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: default_max_attempts(),
            initial_backoff: default_initial_backoff(),
            max_backoff: default_max_backoff(),
        }
    }
}

impl RetryConfig {
    /// Checks the schedule; `at` is its path in the file.
    pub fn validate(&self, at: &str) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.max_attempts == 0 {
            problems.push(Problem::new(format!("{at}.max_attempts"), "must be > 0"));
        }
        if self.initial_backoff.is_zero() {
            problems.push(Problem::new(format!("{at}.initial_backoff"), "must be > 0"));
        }
        if self.max_backoff < self.initial_backoff {
            problems.push(Problem::new(
                format!("{at}.max_backoff"),
                "must be >= initial_backoff",
            ));
        }
        problems
    }
}

fn default_max_attempts() -> u32 {
    10
}
fn default_initial_backoff() -> Duration {
    Duration::from_millis(200)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(30)
}

/// Sends `request`, recording its duration in `erpstream_http_request_duration_seconds` for
/// `component_id`; a timeout or transport failure is an [`Outcome::Retry`].
pub async fn send(
    request: reqwest::RequestBuilder,
    component_id: &str,
) -> Result<reqwest::Response, Outcome> {
    let started = std::time::Instant::now();
    let result = request.send().await;
    metrics::histogram!(crate::metrics::REQUEST_DURATION,
        crate::metrics::COMPONENT_ID => component_id.to_string())
    .record(started.elapsed().as_secs_f64());
    result.map_err(|err| Outcome::Retry {
        reason: if err.is_timeout() {
            "request timed out".into()
        } else {
            format!("request failed: {}", error_chain(&err))
        },
        retry_after: None,
    })
}

/// Classifies an HTTP answer of `peer` (named in the reasons).
pub fn classify(peer: &str, status: reqwest::StatusCode, retry_after: Option<Duration>) -> Outcome {
    if status.is_success() {
        Outcome::Delivered
    } else if status.as_u16() == 408 || status.as_u16() == 429 || status.is_server_error() {
        Outcome::Retry {
            reason: format!("{peer} answered {status}"),
            retry_after,
        }
    } else {
        Outcome::Reject {
            reason: format!("{peer} answered {status}"),
        }
    }
}

/// The `Retry-After` hint in seconds, if any.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let seconds: u64 = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds))
}

/// An error with all its causes, for logs and dead-letter headers.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// Wait before attempt `attempt + 1` (after `attempt` failures): capped exponential backoff
/// with "equal jitter" (between half and all of the step), never shorter than the server's
/// `Retry-After` nor longer than the cap.
pub fn backoff(retry: &RetryConfig, attempt: u32, retry_after: Option<Duration>) -> Duration {
    let exponent = attempt.saturating_sub(1).min(20);
    let step = retry
        .initial_backoff
        .saturating_mul(1 << exponent)
        .min(retry.max_backoff);
    let half = step / 2;
    let jitter = rand::rng().random_range(0..=half.as_millis() as u64);
    let wait = half + Duration::from_millis(jitter);
    match retry_after {
        Some(hint) => wait.max(hint).min(retry.max_backoff),
        None => wait,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_statuses() {
        use reqwest::StatusCode as S;
        assert_eq!(classify("storefront", S::OK, None), Outcome::Delivered);
        assert_eq!(
            classify("storefront", S::NO_CONTENT, None),
            Outcome::Delivered
        );
        for retriable in [
            S::REQUEST_TIMEOUT,
            S::TOO_MANY_REQUESTS,
            S::INTERNAL_SERVER_ERROR,
            S::BAD_GATEWAY,
        ] {
            assert!(
                matches!(
                    classify("storefront", retriable, None),
                    Outcome::Retry { .. }
                ),
                "{retriable}"
            );
        }
        for final_ in [
            S::BAD_REQUEST,
            S::UNAUTHORIZED,
            S::NOT_FOUND,
            S::UNPROCESSABLE_ENTITY,
        ] {
            assert!(
                matches!(classify("storefront", final_, None), Outcome::Reject { .. }),
                "{final_}"
            );
        }
    }

    #[test]
    fn backoff_grows_with_jitter_and_stays_capped() {
        let retry = RetryConfig {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
        };
        for attempt in 1..30 {
            let step = Duration::from_millis(100 * (1u64 << (attempt - 1).min(20)))
                .min(Duration::from_secs(2));
            let wait = backoff(&retry, attempt, None);
            assert!(
                wait >= step / 2 && wait <= step,
                "attempt {attempt}: {wait:?}"
            );
        }
        assert_eq!(
            backoff(&retry, 1, Some(Duration::from_secs(60))),
            Duration::from_secs(2)
        );
        assert!(backoff(&retry, 1, Some(Duration::from_secs(1))) >= Duration::from_secs(1));
    }
}
