//! Kafka: the building blocks of the exactly-once Kafka source and transactional sink
//! (not yet wired into pipelines; see `docs/architecture.md`, "Exactly-once with Kafka").
//!
//! - `config.rs`: the configuration model (brokers, librdkafka properties passed through,
//!   topics to check or create) and its pure checks.
//! - `errors.rs`: the transactional producer's error state machine, as pure decisions.
//! - `tests.rs`: unit tests (no broker).
//!
//! librdkafka is built from source with gzip (zlib), lz4 and snappy; no TLS, SASL or zstd
//! yet.

pub mod config;
pub mod errors;
#[cfg(test)]
mod tests;

pub use config::{
    KafkaConnection, KafkaConnectionConfig, PropertyValue, TopicConfig, check_commit_interval,
};
pub use errors::{
    AbortReason, Decision, ErrorFacts, ErrorOrigin, FailReason, NewProducerReason, RetryPolicy,
    TxnOp, decide,
};
