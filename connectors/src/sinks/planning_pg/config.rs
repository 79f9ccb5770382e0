use std::time::Duration;

use serde::Deserialize;

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
    /// How long stock or demand for a sku the products table does not know waits for its
    /// product (parked in `planning.waiting`) before it is dead-lettered.
    #[serde(default = "default_product_wait", with = "humantime_serde")]
    pub product_wait: Duration,
    /// How many rows may wait for their products at once; more are dead-lettered.
    #[serde(default = "default_max_waiting")]
    pub max_waiting: i64,
    /// How long a fetch may wait for new records (overrides `kafka.fetch_wait`: the planning
    /// database is not on the storefront's latency budget, and on a broker that holds every
    /// fetch for the full wait — tansu — a short one keeps it busy while nothing arrives).
    #[serde(default = "default_fetch_wait", with = "humantime_serde")]
    pub fetch_wait: Duration,
}

fn default_batch_size() -> usize {
    10_000
}
fn default_batch_wait() -> Duration {
    Duration::from_millis(100)
}
fn default_product_wait() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
fn default_fetch_wait() -> Duration {
    Duration::from_millis(250)
}
fn default_max_waiting() -> i64 {
    1_000_000
}
