use std::time::Duration;

use serde::Deserialize;

use crate::validation::Problem;

/// Configuration of a `planning_pg` sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanningPgConfig {
    /// Logical topics carrying `catalog.update`, `inventory.change` and `demand.actual`.
    pub inputs: Vec<String>,
    /// Postgres URL of the planning database (migrated at start).
    pub database: String,
    /// Records per transaction at most.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// How long a batch waits to fill once its first record arrived.
    #[serde(default = "default_batch_wait", with = "humantime_serde")]
    pub batch_wait: Duration,
}

fn default_batch_size() -> usize {
    10_000
}
fn default_batch_wait() -> Duration {
    Duration::from_millis(100)
}

impl PlanningPgConfig {
    /// Checks the rules no type can express; `at` is this component's path in the file.
    pub(super) fn validate_settings(&self, at: &str) -> Vec<Problem> {
        let mut problems = Vec::new();
        if !self.database.starts_with("postgres://") && !self.database.starts_with("postgresql://")
        {
            problems.push(Problem::new(
                format!("{at}.database"),
                "must be a postgres:// URL",
            ));
        }
        if self.batch_size == 0 {
            problems.push(Problem::new(format!("{at}.batch_size"), "must be > 0"));
        }
        if self.inputs.is_empty() {
            problems.push(Problem::new(
                format!("{at}.inputs"),
                "must list at least one topic",
            ));
        }
        problems
    }
}
