//! Controls for the components that bring none of their own: their target from their
//! settings, and a connection test of what every component depends on — the brokers, and
//! the component's own database when it has one (its `/readyz` probe).

use erpstream_connectors::component::{Control, Outcome, Probe, Standing};
use erpstream_connectors::kafka::KafkaConfig;
use futures::future::BoxFuture;
use serde_yaml_ng::Value;

/// How long the broker check waits.
const PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// A component's basic controls.
pub struct BasicControl {
    /// What it talks to, from its settings (`url`, `database`), without passwords.
    pub target: Option<String>,
    /// Its store's probe, if it has a store.
    pub probe: Option<Probe>,
    /// The brokers.
    pub kafka: KafkaConfig,
}

impl BasicControl {
    /// The target named by settings `settings` (`url`, else `database`).
    pub fn target_of(settings: Option<&Value>) -> Option<String> {
        let settings = settings?;
        ["url", "database"]
            .iter()
            .find_map(|key| settings.get(*key).and_then(Value::as_str))
            .map(erpstream_connectors::postgres::redacted)
    }
}

impl Control for BasicControl {
    fn standing(&self) -> Standing {
        Standing {
            target: self.target.clone(),
            ..Standing::default()
        }
    }

    fn test(&self) -> BoxFuture<'static, Outcome> {
        let kafka = self.kafka.clone();
        let probe = self.probe.clone();
        Box::pin(async move {
            if let Err(err) = kafka.probe(PATIENCE).await {
                return Outcome::failed(format!("the brokers: {err}"));
            }
            match probe {
                None => Outcome::ok("the brokers answer"),
                Some(probe) if probe().await => Outcome::ok("the brokers and its database answer"),
                Some(_) => Outcome::failed("the brokers answer, but its database does not"),
            }
        })
    }
}
