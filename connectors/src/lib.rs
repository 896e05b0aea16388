//! onceflow connectors: the edges that move records in and out of the engine.
//!
//! Every connector is a folder with fixed file roles (`mod.rs`, `source.rs` and/or
//! `sink.rs`, `tests.rs`) and is listed once in [`connectors()`]. `onceflow-core` never
//! depends on this crate.
//!

pub mod files;
pub mod kafka;

/// What a connector is and what it can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectorInfo {
    /// Name used in the CLI and docs.
    pub name: &'static str,
    /// Reads records into the engine.
    pub source: bool,
    /// Writes records out of the engine.
    pub sink: bool,
    /// One line for `--help` and docs.
    pub summary: &'static str,
}

/// Every connector, in one list.
pub fn connectors() -> &'static [ConnectorInfo] {
    &[
        ConnectorInfo {
            name: "files",
            source: true,
            sink: false,
            summary: "JSON lines from a file or stdin, appended to an embedded log partitioned by key",
        },
        ConnectorInfo {
            name: "kafka",
            source: true,
            sink: true,
            summary: "Kafka topics in, outputs and input offsets committed in one Kafka transaction per epoch",
        },
    ]
}
