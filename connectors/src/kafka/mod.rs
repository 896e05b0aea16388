//! Kafka: the exactly-once Kafka source and transactional commit target of pipelines
//! with `[kafka]`, reached by the engine through [`KafkaConnect`] (see
//! `docs/architecture.md`, "Exactly-once with Kafka").
//!
//! - `config.rs`: the configuration model (brokers, librdkafka properties passed through,
//!   topics to check or create) and its pure checks.
//! - `admin.rs`: start-up checks against the cluster: bounded connect, topics and their
//!   partition counts, topic creation.
//! - `errors.rs`: the transactional producer's error state machine, as pure decisions.
//! - `source.rs`: [`KafkaInput`], a topic as the engine's `SourceInput` (read_committed,
//!   per-partition queues, committed ends from the last stable offsets).
//! - `format.rs`: CloudEvents Kafka binary mode on input, correlation ids as headers.
//! - `member.rs`: [`GroupMember`], consumer-group membership for scale-out.
//! - `sink.rs`: [`KafkaTarget`], the engine's `CommitTarget`: each epoch's outputs, dead
//!   letters and input offsets in one transaction.
//! - this file: [`KafkaConnect`] (the engine's `Connect`) and [`check_settings`] (the
//!   `[kafka]` checks that need librdkafka).
//! - `tests.rs`: unit tests (no broker). The tests against a broker are in
//!   `connectors/tests/kafka_broker.rs` and `connectors/tests/kafka_source.rs`
//!   (`scripts/kafka-broker`).
//!
//! librdkafka is built from source with gzip (zlib), lz4, snappy and TLS (OpenSSL, with
//! SASL PLAIN, SCRAM and OAUTHBEARER); no Kerberos (GSSAPI) or zstd yet.

pub mod admin;
pub mod config;
pub mod errors;
pub mod format;
pub mod member;
pub mod sink;
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
pub use member::GroupMember;
pub use sink::KafkaTarget;
pub use source::{DEFAULT_STATS_INTERVAL_MS, KafkaInput};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use onceflow_core::config::{
    Assignment, ConfigError, Delivery, Format, KafkaSettings, Pipeline, SourceConfig,
};
use onceflow_core::connect::Connect;
use onceflow_core::input::{InputError, SourceInput};
use onceflow_core::output::{CommitError, CommitTarget};

/// The Kafka connector as the engine's [`Connect`]: pass it in
/// `RunOptions::connect` to run pipelines with `[kafka]`. It keeps this instance's
/// consumer-group memberships (`[kafka] assignment = "group"`) across the engine's
/// restarts: a restart must not leave and rejoin the group.
#[derive(Debug, Default)]
pub struct KafkaConnect {
    members: Mutex<HashMap<String, Arc<GroupMember>>>,
}

impl KafkaConnect {
    /// The membership of `p`'s group, joined on first use.
    fn member(
        &self,
        p: &Pipeline,
        settings: &KafkaSettings,
        conn: &KafkaConnection,
    ) -> Result<Option<Arc<GroupMember>>, InputError> {
        if settings.assignment != Assignment::Group {
            return Ok(None);
        }
        let mut members = self.members.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = members.get(&settings.group) {
            return Ok(Some(m.clone()));
        }
        let topics: Vec<&str> = p.sources.iter().map(|s| s.topic.as_str()).collect();
        let m = Arc::new(GroupMember::join(
            conn,
            &settings.group,
            &topics,
            conn.connect_timeout.max(Duration::from_secs(60)),
        )?);
        members.insert(settings.group.clone(), m.clone());
        Ok(Some(m))
    }
}

/// The connection `[kafka]` describes (checked; the first problem as a message).
pub fn connection(settings: &KafkaSettings) -> Result<KafkaConnection, String> {
    connection_config(settings)
        .validate("kafka")
        .map_err(|errors| {
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        })
}

fn connection_config(settings: &KafkaSettings) -> KafkaConnectionConfig {
    KafkaConnectionConfig {
        brokers: settings.brokers.clone(),
        connect_timeout: settings.connect_timeout,
        properties: settings
            .properties
            .iter()
            .map(|(k, v)| (k.clone(), PropertyValue(v.clone())))
            .collect(),
    }
}

/// The checks of `[kafka]` that need librdkafka, for
/// [`Pipeline::load_with`](onceflow_core::config::Pipeline::load_with): the brokers'
/// addresses, every pass-through property (name and value, as librdkafka parses them;
/// the ones onceflow sets itself are refused), and in exactly-once mode that the commit
/// interval is shorter than `transaction.timeout.ms`.
pub fn check_settings(settings: &KafkaSettings, commit_interval: Duration) -> Vec<ConfigError> {
    let config = connection_config(settings);
    let mut errors = config.validate("kafka").err().unwrap_or_default();
    // The checks below read the properties themselves: they run even when another
    // property is wrong, so that every problem is reported at once.
    let conn = KafkaConnection {
        bootstrap_servers: settings.brokers.join(","),
        connect_timeout: settings.connect_timeout,
        properties: settings.properties.clone(),
    };
    if settings.delivery == Delivery::ExactlyOnce
        && conn.transaction_timeout().is_ok()
        && let Err(e) = check_commit_interval(commit_interval, &conn, "pipeline.commit_interval")
    {
        errors.push(e);
    }
    if let Err(m) = source::stats_interval_ms(&conn) {
        let path = "kafka.properties.\"statistics.interval.ms\"";
        if !errors.iter().any(|e| e.path == path) {
            errors.push(ConfigError {
                path: path.into(),
                line: None,
                message: m,
            });
        }
    }
    errors
}

impl Connect for KafkaConnect {
    fn target(&self, p: &Pipeline) -> Result<Box<dyn CommitTarget>, CommitError> {
        let settings = p.kafka.as_ref().ok_or_else(|| {
            CommitError::Failed(format!("pipeline '{}' has no [kafka] section", p.name))
        })?;
        let conn = connection(settings).map_err(CommitError::Failed)?;
        let member = self.member(p, settings, &conn).map_err(|e| match e {
            InputError::Unavailable(m) => CommitError::Unavailable(m),
            other => CommitError::Failed(other.to_string()),
        })?;
        // A new attempt: the last one has stopped committing, so a revocation waiting
        // for that may go on.
        if let Some(m) = &member {
            m.settled();
        }
        Ok(Box::new(KafkaTarget::open(&conn, settings, p, member)?))
    }

    fn source(&self, p: &Pipeline, s: &SourceConfig) -> Result<Box<dyn SourceInput>, InputError> {
        let settings = p.kafka.as_ref().ok_or_else(|| {
            InputError::Other(format!(
                "source '{}' is a Kafka source but pipeline '{}' has no [kafka] section",
                s.name, p.name
            ))
        })?;
        let conn = connection(settings).map_err(InputError::Other)?;
        let mut input = match self.member(p, settings, &conn)? {
            Some(m) => KafkaInput::of_member(&conn, &s.topic, m)?,
            None => KafkaInput::new(&conn, &s.topic, &settings.group)?,
        };
        input.read_cloudevents(s.format == Format::CloudEvents);
        Ok(Box::new(input))
    }
}
