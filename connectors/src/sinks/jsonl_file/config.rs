use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::validation::Problem;

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

impl JsonlFileConfig {
    /// Checks the rules no type can express; `at` is this component's path in the file.
    pub(super) fn validate_settings(&self, at: &str) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.inputs.is_empty() {
            problems.push(Problem::new(
                format!("{at}.inputs"),
                "must list at least one topic",
            ));
        }
        if self.path.as_os_str().is_empty() || self.path.is_dir() {
            problems.push(Problem::new(format!("{at}.path"), "must name a file"));
        }
        if self.batch_size == 0 {
            problems.push(Problem::new(format!("{at}.batch_size"), "must be > 0"));
        }
        problems
    }
}
