//! What operators may ask a running source or sink (the console and `/api/connectors`):
//! where it stands, whether what it connects to answers, and — for sources that fetch —
//! to fetch now.

use futures::future::BoxFuture;
use serde::Serialize;
use utoipa::ToSchema;

/// Where a component stands, in its own terms.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct Standing {
    /// What it talks to, without credentials (a URL, a table, a listener path).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// When it last did its work successfully (RFC 3339): a delivery, a poll, a batch of
    /// rows, an accepted request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_success: Option<String>,
    /// Its last failure, if it has not succeeded since.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// `closed`, `open` or `half_open`, for components that stop calling a failing peer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub circuit: Option<String>,
    /// How far it has read, in its own terms (a poll cursor, a confirmed LSN).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<String>,
}

/// The outcome of a check or a triggered sync, in words for an operator.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Outcome {
    /// Whether it worked.
    pub ok: bool,
    /// What was done and found (never a secret).
    pub detail: String,
}

impl Outcome {
    /// It worked.
    pub fn ok(detail: impl Into<String>) -> Self {
        Self {
            ok: true,
            detail: detail.into(),
        }
    }

    /// It did not.
    pub fn failed(detail: impl Into<String>) -> Self {
        Self {
            ok: false,
            detail: detail.into(),
        }
    }
}

/// A running component's controls. Only `standing` and `test` are required.
pub trait Control: Send + Sync {
    /// Where it stands now (no I/O).
    fn standing(&self) -> Standing;

    /// Checks what it connects to the way it does itself (a request to its peer, a query,
    /// the broker), without changing anything there.
    fn test(&self) -> BoxFuture<'static, Outcome>;

    /// What [`sync`](Self::sync) does, for the button and the API (`None`: it has none).
    fn sync_action(&self) -> Option<&'static str> {
        None
    }

    /// Fetches now instead of waiting for the next poll, or takes a new snapshot; `None` if
    /// it has no such action.
    fn sync(&self) -> Option<BoxFuture<'static, Outcome>> {
        None
    }

    /// The mappings of source records to events it runs, by name (a `rest_poll` resource, a
    /// `pg_cdc` table): what the console's mapping tester offers.
    fn mappings(&self) -> Vec<String> {
        Vec::new()
    }

    /// `sample` (JSON) through mapping `name` with the source's own code: per record, the
    /// event it would publish (as JSON) or the field and reason it would be dead-lettered
    /// for. `None`: no such mapping; `Err`: the sample is not something the mapping reads.
    fn try_mapping(&self, name: &str, sample: &[u8]) -> Option<Result<Vec<Tried>, String>> {
        let _ = (name, sample);
        None
    }
}

/// One record of a mapping tester's sample: its event as JSON, or why it does not map.
pub type Tried = Result<serde_json::Value, crate::sources::mapping::RowError>;
