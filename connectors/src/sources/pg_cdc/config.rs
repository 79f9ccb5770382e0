use std::collections::BTreeMap;
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

use crate::sources::mapping::Mapping;
use crate::validation::Problem;

/// Configuration of a `pg_cdc` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgCdcConfig {
    /// Postgres URL of the database whose tables are captured; its user needs the
    /// `REPLICATION` attribute (and `CREATE` on the database to create the publication).
    pub database: String,
    /// Postgres URL of erpstream's own database, where snapshot progress is recorded.
    pub state_database: String,
    /// Logical replication slot (created with `pgoutput` if missing and `create` is on).
    pub slot: String,
    /// Publication naming the captured tables (created, or extended by the missing
    /// tables, if `create` is on).
    pub publication: String,
    /// Create the slot and publication, or add missing tables to the publication; off: both
    /// must exist and cover every table.
    #[serde(default = "yes")]
    pub create: bool,
    /// When the tables' current rows are read before streaming.
    #[serde(default)]
    pub snapshot: SnapshotMode,
    /// Rows fetched per snapshot round trip.
    #[serde(default = "default_chunk")]
    pub snapshot_chunk: u32,
    /// How often an idle stream confirms its position (so the slot holds no WAL) and the
    /// slot lag is measured.
    #[serde(default = "default_heartbeat", with = "humantime_serde")]
    pub heartbeat: Duration,
    /// Slot lag (WAL between the server's position and the confirmed one) above which the
    /// source reports not ready.
    #[serde(default = "default_max_lag")]
    pub max_lag: ByteSize,
    /// Value of `source_system` on the events.
    #[serde(default = "default_source_system")]
    pub source_system: String,
    /// Captured tables by `schema.table`.
    pub tables: BTreeMap<String, Mapping>,
}

/// When the tables' current rows are read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotMode {
    /// Once, the first time the source runs; a slot that later disappears stops the source
    /// (changes may have been lost) instead of silently starting over.
    #[default]
    Initial,
    /// The first time, and again whenever the slot had to be created anew or was invalidated.
    WhenNeeded,
    /// Never: stream changes from the moment the slot is created.
    Never,
}

fn yes() -> bool {
    true
}
fn default_chunk() -> u32 {
    10_000
}
fn default_heartbeat() -> Duration {
    Duration::from_secs(10)
}
fn default_max_lag() -> ByteSize {
    ByteSize::gib(1)
}
fn default_source_system() -> String {
    "postgres".into()
}

impl PgCdcConfig {
    /// Checks the rules no type can express; `at` is this component's path in the file.
    /// Field paths are checked against the topics' contracts by the topology.
    pub(super) fn validate_settings(&self, at: &str) -> Vec<Problem> {
        let mut problems = Vec::new();
        for (field, url) in [
            ("database", &self.database),
            ("state_database", &self.state_database),
        ] {
            problems.extend(crate::postgres::check_url(&format!("{at}.{field}"), url));
        }
        if let Ok(target) = self.database.parse::<crate::postgres::PgTarget>()
            && target.mode == crate::postgres::SslMode::VerifyFull
            && target.config.get_hosts().iter().any(|host| {
                matches!(host, tokio_postgres::config::Host::Tcp(name)
                    if name.parse::<std::net::IpAddr>().is_ok())
            })
        {
            problems.push(Problem::new(
                format!("{at}.database"),
                "sslmode=verify-full needs the server's host name, not an IP address: the \
                 replication client checks certificates by DNS name only (or use verify-ca)",
            ));
        }
        for (field, name) in [("slot", &self.slot), ("publication", &self.publication)] {
            if !is_identifier(name) {
                problems.push(Problem::new(
                    format!("{at}.{field}"),
                    "must be a lower-case identifier (a-z, 0-9, _; at most 63 characters)",
                ));
            }
        }
        if self.snapshot_chunk == 0 {
            problems.push(Problem::new(format!("{at}.snapshot_chunk"), "must be > 0"));
        }
        if self.heartbeat < Duration::from_secs(1) {
            problems.push(Problem::new(
                format!("{at}.heartbeat"),
                "must be at least 1s",
            ));
        }
        if self.source_system.trim().is_empty() {
            problems.push(Problem::new(
                format!("{at}.source_system"),
                "must not be empty",
            ));
        }
        if self.tables.is_empty() {
            problems.push(Problem::new(
                format!("{at}.tables"),
                "must list at least one table",
            ));
        }
        for (name, table) in &self.tables {
            let at = format!("{at}.tables.{name}");
            if split_table(name).is_none() {
                problems.push(Problem::new(&at, "must be named schema.table"));
            }
            problems.extend(table.validate_inputs(&at, "column"));
        }
        problems
    }
}

/// `schema.table` → (schema, table).
pub fn split_table(name: &str) -> Option<(&str, &str)> {
    let (schema, table) = name.split_once('.')?;
    (!schema.is_empty() && !table.is_empty() && !table.contains('.')).then_some((schema, table))
}

fn is_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit())
}
