//! The request layer of the storefront sink: signs a body, POSTs it, and classifies the
//! answer as delivered, worth retrying (408, 429, 5xx, timeouts, connection errors) or
//! refused for good (other 4xx).

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::retry::{Outcome, classify, retry_after, send};
use crate::signing::{self, sign_hex};

/// Signs and sends deliveries to one URL.
pub struct DeliveryService {
    client: reqwest::Client,
    url: String,
    secret: SecretString,
    component_id: String,
}

impl DeliveryService {
    /// A service for `url` (its certificate checked against `ca_file` if given), signing
    /// with `secret`.
    pub fn new(
        url: String,
        ca_file: Option<&std::path::Path>,
        secret: SecretString,
        timeout: Duration,
        component_id: &str,
    ) -> Result<Self, super::SinkError> {
        let builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_max_idle_per_host(64);
        let client = crate::tls::trusting(builder, ca_file)?.build()?;
        Ok(Self {
            client,
            url,
            secret,
            component_id: component_id.to_string(),
        })
    }

    /// Whether the storefront answers at the URL: a `HEAD` (nothing delivered) with this
    /// client, so its certificate is checked as deliveries' are; the status, or why not.
    pub async fn probe(&self) -> Result<reqwest::StatusCode, String> {
        match self.client.head(&self.url).send().await {
            Ok(answer) => Ok(answer.status()),
            Err(err) if err.is_timeout() => Err("the request timed out".into()),
            Err(err) => Err(crate::retry::error_chain(&err)),
        }
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
            .header(signing::X_SIGNATURE, signature)
            .header(signing::WEBHOOK_ID, webhook_id)
            .header(
                signing::WEBHOOK_TIMESTAMP,
                (erpstream_schemas::now_millis() / 1000).to_string(),
            );
        if let Some(trace) = traceparent {
            request = request.header(erpstream_schemas::trace::HEADER, trace);
        }
        match send(request.body(body), &self.component_id).await {
            Ok(response) => classify(
                "storefront",
                response.status(),
                retry_after(response.headers()),
            ),
            Err(outcome) => outcome,
        }
    }
}
