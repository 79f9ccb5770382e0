//! The request layer of the storefront sink: signs a body, POSTs it, and classifies the
//! answer as delivered, worth retrying (408, 429, 5xx, timeouts, connection errors) or
//! refused for good (other 4xx).

use std::time::{Duration, Instant};

use rand::Rng;
use secrecy::{ExposeSecret, SecretString};

use super::config::RetryConfig;
use crate::metrics as m;
use crate::sources::erp_webhook::signature::sign_hex;

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

/// Signs and sends deliveries to one URL.
pub struct DeliveryService {
    client: reqwest::Client,
    url: String,
    secret: SecretString,
    component_id: String,
}

impl DeliveryService {
    /// A service for `url`, signing with `secret`.
    pub fn new(
        url: String,
        secret: SecretString,
        timeout: Duration,
        component_id: &str,
    ) -> reqwest::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_max_idle_per_host(64)
            .build()?;
        Ok(Self {
            client,
            url,
            secret,
            component_id: component_id.to_string(),
        })
    }

    /// One signed POST of `body`. `webhook_id` is equal for every attempt and every repeat
    /// of the same state, so the storefront can drop repeats on its side too.
    pub async fn send(
        &self,
        body: bytes::Bytes,
        webhook_id: &str,
        traceparent: Option<&str>,
    ) -> Outcome {
        let signature = sign_hex(self.secret.expose_secret().as_bytes(), &body);
        let mut request = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .header("x-signature", signature)
            .header("webhook-id", webhook_id)
            .header(
                "webhook-timestamp",
                (erpstream_schemas::now_millis() / 1000).to_string(),
            );
        if let Some(trace) = traceparent {
            request = request.header("traceparent", trace);
        }
        let started = Instant::now();
        let result = request.body(body).send().await;
        metrics::histogram!(m::REQUEST_DURATION, m::COMPONENT_ID => self.component_id.clone())
            .record(started.elapsed().as_secs_f64());
        match result {
            Ok(response) => classify(response.status(), retry_after(response.headers())),
            Err(err) if err.is_timeout() => Outcome::Retry {
                reason: "request timed out".into(),
                retry_after: None,
            },
            Err(err) => Outcome::Retry {
                reason: format!("request failed: {}", error_chain(&err)),
                retry_after: None,
            },
        }
    }
}

fn classify(status: reqwest::StatusCode, retry_after: Option<Duration>) -> Outcome {
    if status.is_success() {
        Outcome::Delivered
    } else if status.as_u16() == 408 || status.as_u16() == 429 || status.is_server_error() {
        Outcome::Retry {
            reason: format!("storefront answered {status}"),
            retry_after,
        }
    } else {
        Outcome::Reject {
            reason: format!("storefront answered {status}"),
        }
    }
}

fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let seconds: u64 = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds))
}

fn error_chain(err: &dyn std::error::Error) -> String {
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
        assert_eq!(classify(S::OK, None), Outcome::Delivered);
        assert_eq!(classify(S::NO_CONTENT, None), Outcome::Delivered);
        for retriable in [
            S::REQUEST_TIMEOUT,
            S::TOO_MANY_REQUESTS,
            S::INTERNAL_SERVER_ERROR,
            S::BAD_GATEWAY,
        ] {
            assert!(
                matches!(classify(retriable, None), Outcome::Retry { .. }),
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
                matches!(classify(final_, None), Outcome::Reject { .. }),
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
