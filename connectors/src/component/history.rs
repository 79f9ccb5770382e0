//! What a source that takes requests has exchanged (the operator console's *Sync
//! history*): storefront orders and adjustments, planning sync requests and plan
//! publications, newest first, each with the records it published.

use futures::future::BoxFuture;
use serde::Serialize;

/// One request a source answered.
#[derive(Debug, Clone, Serialize)]
pub struct Exchange {
    /// When it was answered (RFC 3339).
    pub at: String,
    /// What it was: `order`, `adjustment`, `products sync`, `demand-plan publish`, ...
    pub kind: String,
    /// Its key: the transaction id, reference, idempotency key or plan id.
    pub key: String,
    /// Who sent it (the token's name), when recorded.
    pub actor: Option<String>,
    /// Its outcome in words (`accepted`, `partially_accepted: 3 of 5`, `rejected: ...`).
    pub outcome: String,
    /// Whether it went through.
    pub ok: bool,
    /// The records it published, as `topic/partition/offset`.
    pub records: Vec<String>,
    /// The stock it holds, as (sku, location).
    pub holds: Vec<(String, String)>,
}

/// A source's record of what it exchanged.
pub trait History: Send + Sync {
    /// At most `limit` exchanges whose key contains `filter` (all when empty), newest
    /// first; `Err` says why they could not be read (its database down).
    fn exchanges(
        &self,
        filter: &str,
        limit: i64,
    ) -> BoxFuture<'static, Result<Vec<Exchange>, String>>;
}
