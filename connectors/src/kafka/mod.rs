//! Kafka: the building blocks of the exactly-once Kafka source and transactional sink
//! (not yet wired into pipelines; see `docs/architecture.md`, "Exactly-once with Kafka").
//!
//! - `config.rs`: the configuration model (brokers, librdkafka properties passed through,
//!   topics to check or create) and its pure checks.
//! - `admin.rs`: start-up checks against the cluster: bounded connect, topics and their
//!   partition counts, topic creation.
//! - `errors.rs`: the transactional producer's error state machine, as pure decisions.
//! - `source.rs`: [`KafkaInput`], a topic as the engine's `SourceInput` (read_committed,
//!   per-partition queues, committed ends from the last stable offsets).
//! - `tests.rs`: unit tests (no broker). The tests against a broker are in
//!   `connectors/tests/kafka_broker.rs` and `connectors/tests/kafka_source.rs`
//!   (`scripts/kafka-broker`).
//!
//! librdkafka is built from source with gzip (zlib), lz4, snappy and TLS (OpenSSL, with
//! SASL PLAIN, SCRAM and OAUTHBEARER); no Kerberos (GSSAPI) or zstd yet.

pub mod admin;
pub mod config;
pub mod errors;
pub mod source;
#[cfg(test)]
mod tests;

pub use admin::{AdminError, EnsureReport, KafkaAdmin, TopicProblem};
pub use config::{
    KafkaConnection, KafkaConnectionConfig, PropertyValue, TopicConfig, check_commit_interval,
};
pub use errors::{
    AbortReason, Decision, ErrorFacts, ErrorOrigin, FailReason, NewProducerReason, RetryPolicy,
    TxnOp, decide,
};
pub use source::{DEFAULT_STATS_INTERVAL_MS, KafkaInput};
