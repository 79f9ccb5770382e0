use std::sync::Arc;
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
///
/// The broker's metadata is read first and only missing topics are created, so a principal
/// without permission to create topics (managed Kafka, where the platform team creates
/// them) or a broker without CreateTopics still starts when every topic is already there.
pub async fn ensure_topics(config: &KafkaConfig, specs: &[TopicSpec]) -> Result<(), KafkaError> {
    if specs.is_empty() {
        return Ok(());
    }
    let admin: Arc<AdminClient<DefaultClientContext>> =
        Arc::new(config.client_config("erpstream-admin")?.create()?);
    let existing = partition_counts(&admin).await?;
    check_partitions(specs, &existing)?;
    let missing: Vec<&TopicSpec> = specs
        .iter()
        .filter(|spec| !existing.iter().any(|(name, _)| *name == spec.name))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let topics: Vec<NewTopic<'_>> = missing
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
    let created = partition_counts(&admin).await?;
    check_partitions(specs, &created)?;
    if specs
        .iter()
        .any(|spec| !created.iter().any(|(name, _)| *name == spec.name))
    {
        return Err(KafkaError::AdminOp(
            RDKafkaErrorCode::UnknownTopicOrPartition,
        ));
    }
    Ok(())
}

/// Every topic the broker knows, with its partition count.
async fn partition_counts(
    admin: &Arc<AdminClient<DefaultClientContext>>,
) -> Result<Vec<(String, i32)>, KafkaError> {
    let admin = Arc::clone(admin);
    tokio::task::spawn_blocking(move || {
        let metadata = admin
            .inner()
            .fetch_metadata(None, Duration::from_secs(10))?;
        Ok(metadata
            .topics()
            .iter()
            .map(|t| (t.name().to_string(), t.partitions().len() as i32))
            .collect())
    })
    .await
    .map_err(|_| KafkaError::Canceled)?
}

/// An existing topic with another partition count than declared is an error.
fn check_partitions(specs: &[TopicSpec], existing: &[(String, i32)]) -> Result<(), KafkaError> {
    for spec in specs {
        if let Some((_, actual)) = existing.iter().find(|(name, _)| *name == spec.name)
            && *actual != spec.partitions
        {
            tracing::error!(topic = %spec.name, declared = spec.partitions, actual,
                "topic exists with a different partition count");
            return Err(KafkaError::AdminOp(RDKafkaErrorCode::InvalidPartitions));
        }
    }
    Ok(())
}
