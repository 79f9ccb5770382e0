use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Configuration of a `jsonl_file` sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonlFileConfig {
    /// Logical topics to write, any contract.
    pub inputs: Vec<String>,
    /// The file the records are appended to (created with its directory if missing).
    pub path: PathBuf,
    /// Most records written (and synced to disk) at once.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// How long a batch waits to fill once its first record arrived.
    #[serde(default = "default_batch_wait", with = "humantime_serde")]
    pub batch_wait: Duration,
}

fn default_batch_size() -> usize {
    1_000
}
fn default_batch_wait() -> Duration {
    Duration::from_millis(100)
}
