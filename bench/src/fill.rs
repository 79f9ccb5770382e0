//! Fills the running broker with N records on a topic of their own — keyed, about the size
//! of an `inventory.change`, each with a `traceparent` header like every record erpstream
//! writes — so a benchmark can measure the pipeline on a store that has already taken them
//! (`PREFILL=1000000 bench/latency.sh`). Progress on stderr; nothing is written to results.

use std::time::Instant;

use erpstream_connectors::kafka::{KafkaConfig, Publisher, RawRecord, TopicSpec, headers};
use erpstream_schemas::{Codec, Traceparent};
use futures::future::join_all;

use crate::process::Broker;

/// Arguments of `erpstream-bench fill`.
#[derive(clap::Args)]
pub struct Args {
    /// Bootstrap servers of the running broker.
    #[arg(long, env = "ERPSTREAM_BROKERS")]
    brokers: String,
    /// Records to write.
    #[arg(long, default_value_t = 1_000_000)]
    records: usize,
    /// Partitions of the topic written.
    #[arg(long, default_value_t = 3)]
    partitions: i32,
}

/// Records sent before waiting for their acknowledgements.
const WAVE: usize = 20_000;

/// A producer for bulk bench writes (20 ms linger, no idempotence, acknowledgements waited
/// for as long as a slow store takes) and a new topic `<prefix>.<ms>` created for it.
pub async fn new_topic(
    broker: &Broker,
    prefix: &str,
    partitions: i32,
    compacted: bool,
) -> anyhow::Result<(KafkaConfig, Publisher, String)> {
    let mut kafka = KafkaConfig::new(broker.bootstrap());
    kafka.linger = std::time::Duration::from_millis(20);
    kafka.idempotence = false;
    kafka.delivery_timeout = std::time::Duration::from_secs(300);
    let topic = format!("{prefix}.{}", chrono::Utc::now().timestamp_millis());
    broker.create_topic(&topic, partitions)?;
    erpstream_connectors::kafka::ensure_topics(
        &kafka,
        &[TopicSpec {
            name: topic.clone(),
            partitions,
            compacted,
        }],
    )
    .await?;
    // The codec is never asked for a schema: bench values are raw bytes.
    let publisher = Publisher::new(&kafka, prefix, Codec::new("http://127.0.0.1:1")?)?;
    Ok((kafka, publisher, topic))
}

/// Sends `count` records, `record(i)` each, in waves acknowledged before the next;
/// `progress(written)` after every wave.
pub async fn write_waves(
    publisher: &Publisher,
    count: usize,
    record: impl Fn(usize) -> RawRecord,
    mut progress: impl FnMut(usize),
) -> anyhow::Result<()> {
    let mut written = 0;
    while written < count {
        let wave = WAVE.min(count - written);
        let sends = (written..written + wave).map(|i| publisher.send(record(i)));
        for result in join_all(sends).await {
            result?;
        }
        written += wave;
        progress(written);
    }
    Ok(())
}

/// Writes the records and reports the rate.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let (_, publisher, topic) = new_topic(
        &Broker::Stack(args.brokers.clone()),
        "bench.fill",
        args.partitions,
        false,
    )
    .await?;
    let started = Instant::now();
    let record = |i: usize| RawRecord {
        topic: topic.clone(),
        key: Some(format!("FILL-{i:08}").into_bytes()),
        payload: Some(vec![b'x'; 160]),
        headers: vec![headers::trace_header(&Traceparent::new_root())],
        partition: None,
    };
    write_waves(&publisher, args.records, record, |written| {
        if written % 100_000 == 0 || written == args.records {
            eprintln!(
                "[fill] {written} of {} records on {topic} ({:.0}/s)",
                args.records,
                written as f64 / started.elapsed().as_secs_f64()
            );
        }
    })
    .await
}
