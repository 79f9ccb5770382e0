//! What every source and sink shares as a running component.

mod readiness;

pub use readiness::Readiness;
