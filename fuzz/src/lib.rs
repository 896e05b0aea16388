//! Fuzz harnesses for onceflow-core.
//!
//! Each module has a `run(&[u8])` function: the body of the libFuzzer target of the same
//! name (`fuzz_targets/<name>.rs`). A harness panics only when it finds a bug: a panic
//! inside onceflow-core, or a broken invariant checked here.
//!
//! * [`log_open`]: bytes → the files of a log store (journal, topic meta, segments) →
//!   `LogReader` / `LogWriter` (recovery) / commit / re-read.
//! * [`decode`]: bytes → `Extractor::extract`, checked against `serde_json::Value`.
//! * [`config`]: UTF-8 text → `Pipeline::parse`.

pub mod config;
pub mod decode;
pub mod log_open;
