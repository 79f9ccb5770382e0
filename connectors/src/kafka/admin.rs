use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use super::KafkaConfig;

/// A topic erpstream needs, as declared in the topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// Broker-side name.
    pub name: String,
    /// Partition count (equal for co-partitioned topics).
    pub partitions: i32,
    /// Log compaction instead of time retention (state and changelog topics).
    pub compacted: bool,
}

/// Creates the topics that do not exist yet; existing topics are left as they are, but a
/// partition count different from the declared one is an error (co-partitioning would break).
pub async fn ensure_topics(config: &KafkaConfig, specs: &[TopicSpec]) -> Result<(), KafkaError> {
    if specs.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> =
        config.client_config("erpstream-admin").create()?;
    let topics: Vec<NewTopic<'_>> = specs
        .iter()
        .map(|spec| {
            let topic = NewTopic::new(
                &spec.name,
                spec.partitions,
                TopicReplication::Fixed(config.replication_factor),
            );
            if spec.compacted {
                topic.set("cleanup.policy", "compact")
            } else {
                topic
            }
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&topics, &options).await? {
        match result {
            Ok(name) => tracing::info!(topic = %name, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                tracing::error!(topic = %name, error = %code, "could not create topic");
                return Err(KafkaError::AdminOp(code));
            }
        }
    }
    let metadata = tokio::task::spawn_blocking(move || {
        admin.inner().fetch_metadata(None, Duration::from_secs(10))
    })
    .await
    .map_err(|_| KafkaError::Canceled)??;
    for spec in specs {
        let actual = metadata
            .topics()
            .iter()
            .find(|t| t.name() == spec.name)
            .map(|t| t.partitions().len() as i32);
        match actual {
            Some(n) if n == spec.partitions => {}
            Some(n) => {
                tracing::error!(topic = %spec.name, declared = spec.partitions, actual = n,
                    "topic exists with a different partition count");
                return Err(KafkaError::AdminOp(RDKafkaErrorCode::InvalidPartitions));
            }
            None => {
                return Err(KafkaError::AdminOp(
                    RDKafkaErrorCode::UnknownTopicOrPartition,
                ));
            }
        }
    }
    Ok(())
}
