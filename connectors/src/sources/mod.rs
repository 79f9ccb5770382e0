//! Sources: turn outside changes into events on Kafka topics.
//!
//! Contract shared by every source: a change is acknowledged to its sender (HTTP 202, a
//! cursor moved, an LSN confirmed) only after the broker acknowledged the record that carries
//! it. Senders retry, so the same change may be published more than once; each event carries
//! an `idempotency_key` that is equal for repeats, and processors drop them.

pub mod erp_webhook;
pub mod fields;
pub mod http;
pub mod mapping;
pub mod pg_cdc;
pub mod planning_api;
pub mod rest_poll;
pub mod storefront_api;
