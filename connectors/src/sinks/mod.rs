//! Sinks: deliver topics to the outside.
//!
//! Contract shared by every sink: input is at-least-once (records after the last committed
//! offset are seen again after a crash), so a sink must make its effects idempotent; it
//! stores an input offset only after the effect of that record is durable (delivered,
//! superseded by a newer record for the same key, or dead-lettered). Per key, effects happen
//! in input order and never move a key backwards.

pub mod erp_rest;
pub mod jsonl_file;
pub mod planning_pg;
pub mod storefront_webhook;
