//! Sources and sinks of erpstream, and the Kafka transport they share.
//!
//! Data flows left to right: `sources::<name>` turn outside changes into events on Kafka
//! topics, the pipeline's processors keep state and derive new topics, and `sinks::<name>`
//! deliver topics to the outside. Every component here states its delivery contract in its
//! module documentation: what it acknowledges, when, and what it tolerates.

pub mod admission;
pub mod component;
mod error;
pub mod kafka;
pub mod metrics;
pub mod planning;
pub mod postgres;
pub mod retry;
pub mod secret;
pub mod signing;
pub mod sinks;
pub mod sources;
pub mod tls;
pub mod validation;

pub use error::Error;
pub use secret::{SecretError, SecretRef};
