//! Kafka: the building blocks of the exactly-once Kafka source and transactional sink
//! (not yet wired into pipelines; see `docs/architecture.md`, "Exactly-once with Kafka").
//!
//! - `config.rs`: the configuration model (brokers, librdkafka properties passed through,
//!   topics to check or create) and its pure checks.
//! - `tests.rs`: unit tests (no broker).
//!
//! librdkafka is built from source with gzip (zlib), lz4 and snappy; no TLS, SASL or zstd
//! yet.

pub mod config;
#[cfg(test)]
mod tests;

pub use config::{
    KafkaConnection, KafkaConnectionConfig, PropertyValue, TopicConfig, check_commit_interval,
};
