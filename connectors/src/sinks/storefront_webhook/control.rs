//! The operators' controls of a `storefront_webhook` sink: its target, where its consumer
//! stands on each assigned partition, and a connection test that asks the storefront with
//! the sink's own client — its certificate checked against `ca_file` as deliveries' are —
//! without delivering anything.

use std::sync::Arc;

use futures::future::BoxFuture;

use super::service::DeliveryService;
use crate::component::{Control, Outcome, Standing};
use crate::kafka::{GroupConsumer, positions};

/// The controls, sharing the running sink's client and consumer.
pub struct StorefrontControl {
    pub(super) service: Arc<DeliveryService>,
    pub(super) consumer: Arc<GroupConsumer>,
    pub(super) target: String,
}

impl Control for StorefrontControl {
    fn standing(&self) -> Standing {
        Standing {
            target: Some(self.target.clone()),
            position: Some(positions(self.consumer.as_ref())),
            ..Standing::default()
        }
    }

    fn test(&self) -> BoxFuture<'static, Outcome> {
        let service = self.service.clone();
        Box::pin(async move {
            match service.probe().await {
                Ok(status) if status.is_server_error() => Outcome::failed(format!(
                    "the storefront answers, but with {status}: deliveries will be retried"
                )),
                Ok(status) => Outcome::ok(format!(
                    "the storefront answers (HEAD: {status}) and its certificate, if any, is trusted"
                )),
                Err(reason) => Outcome::failed(format!("the storefront: {reason}")),
            }
        })
    }
}
