//! The `console:` section: who may open the operator console and call the connector API.

use std::collections::HashSet;
use std::time::Duration;

use erpstream_connectors::secret::SecretRef;
use erpstream_connectors::validation::Problem;
use serde::Deserialize;

/// Configuration of the operator console (`/console`) and the connector API
/// (`/api/connectors/...`). Without the section neither is served.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Operator tokens, each with the role it grants; a token logs in to the console and is
    /// the bearer token of the connector API.
    pub tokens: Vec<ConsoleToken>,
    /// How long a console login lasts.
    #[serde(default = "default_session", with = "humantime_serde")]
    pub session: Duration,
}

/// One operator token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleToken {
    /// The secret.
    pub token: SecretRef,
    /// What it may do.
    pub role: Role,
    /// Who it is, shown in the console and logged with every action.
    pub name: String,
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads every page and status; acts on nothing.
    Viewer,
    /// Also tests connections, triggers syncs, redrives dead letters and repairs.
    Operator,
}

impl Role {
    /// The name in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
        }
    }

    /// Whether the role may act (not only read).
    pub fn may_act(self) -> bool {
        self == Role::Operator
    }
}

fn default_session() -> Duration {
    Duration::from_secs(8 * 3600)
}

impl ConsoleConfig {
    /// Checks the settings alone (no I/O), every problem with its path below `at`.
    pub fn validate(&self, at: &str) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.tokens.is_empty() {
            problems.push(Problem::new(
                format!("{at}.tokens"),
                "must list at least one token",
            ));
        }
        let mut names = HashSet::new();
        for (i, token) in self.tokens.iter().enumerate() {
            let name = token.name.trim();
            if name.is_empty() || name.chars().count() > 64 {
                problems.push(Problem::new(
                    format!("{at}.tokens[{i}].name"),
                    "must be 1-64 characters, not blank",
                ));
            } else if !names.insert(name.to_string()) {
                problems.push(Problem::new(
                    format!("{at}.tokens[{i}].name"),
                    format!("{name} is named twice; each token needs its own name"),
                ));
            }
        }
        if self.session < Duration::from_secs(60) || self.session > Duration::from_secs(7 * 86_400)
        {
            problems.push(Problem::new(
                format!("{at}.session"),
                "must be between 1m and 7days",
            ));
        }
        problems
    }
}
