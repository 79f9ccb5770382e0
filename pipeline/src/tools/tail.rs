//! `erpstream tail TOPIC`: a topic's records as JSON lines on stdout.

use std::io::Write;

use rdkafka::message::Message;

use super::{Doing, From, ToolError, Tools, TopicReader, Until, json_record};

/// What to print.
#[derive(Debug, Clone)]
pub struct TailOptions {
    /// Topic (logical or broker-side name).
    pub topic: String,
    /// Where to start.
    pub from: From,
    /// Stop at the end of what the topic held at start instead of following it.
    pub no_follow: bool,
    /// Only records with this key.
    pub key: Option<String>,
    /// Include headers.
    pub headers: bool,
    /// Stop after this many records.
    pub limit: Option<u64>,
}

/// Prints matching records until the end (with `no_follow`), the limit, or a closed stdout
/// (a pipe whose reader went away ends the command quietly). Returns the records printed.
pub async fn run(tools: &Tools, options: TailOptions) -> Result<u64, ToolError> {
    let topic = tools.topic(&options.topic);
    let until = if options.no_follow {
        Until::End
    } else {
        Until::Follow
    };
    let mut reader = TopicReader::open(&tools.kafka, &topic, options.from, until).await?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut printed = 0u64;
    let mut skipped = 0u64;
    while options.limit.is_none_or(|limit| printed < limit) {
        let Some(message) = reader.next(&mut skipped).await? else {
            break;
        };
        if let Some(key) = &options.key
            && message.key() != Some(key.as_bytes())
        {
            continue;
        }
        let line = json_record(&tools.codec, &message, options.headers).await;
        let written = serde_json::to_writer(&mut out, &line)
            .map_err(std::io::Error::from)
            .and_then(|_| out.write_all(b"\n"))
            .and_then(|_| {
                if options.no_follow {
                    Ok(())
                } else {
                    out.flush()
                }
            });
        match written {
            Ok(()) => printed += 1,
            Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => return Ok(printed),
            Err(err) => return Err(err).doing(|| "writing to stdout".into()),
        }
    }
    match out.flush() {
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(err).doing(|| "writing to stdout".into())
        }
        _ => Ok(printed),
    }
}
