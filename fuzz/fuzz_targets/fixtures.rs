//! The bindings the fuzz targets drive their inputs through, read from `fuzz/fixtures.yaml`.
// Each target reads its own part of the file.
#![allow(dead_code)]

use erpstream_connectors::sources::mapping::Mapping;
use erpstream_connectors::sources::rest_poll::{Preset, ResourceConfig};
use erpstream_schemas::EventKind;
use serde::Deserialize;

/// `fuzz/fixtures.yaml`.
#[derive(Deserialize)]
pub struct Fixtures {
    /// For `mapping`.
    pub mappings: Vec<MappingFixture>,
    /// For `pgoutput`.
    pub tables: Vec<TableFixture>,
    /// For `rest_poll_page`.
    pub resources: Vec<ResourceFixture>,
}

/// A mapping and the columns it reads, in row order; the first is the key.
#[derive(Deserialize)]
pub struct MappingFixture {
    pub columns: Vec<String>,
    pub mapping: Mapping,
}

/// A captured table.
#[derive(Deserialize)]
pub struct TableFixture {
    pub table: String,
    pub keys: Vec<String>,
    pub mapping: Mapping,
}

/// A polled resource.
#[derive(Deserialize)]
pub struct ResourceFixture {
    pub preset: Preset,
    pub resource: ResourceConfig,
}

/// The fixtures (they are part of the build, so a bad file fails at the first input).
pub fn load() -> Fixtures {
    serde_yaml_ng::from_str(include_str!("../fixtures.yaml")).expect("fuzz/fixtures.yaml")
}

/// The contract of a default topic name.
pub fn kind(topic: &str) -> EventKind {
    EventKind::from_topic(topic).expect("a default topic name")
}
