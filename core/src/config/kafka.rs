//! `[kafka]`: where the Kafka cluster is, and how a pipeline whose sources are Kafka
//! topics commits (see `docs/configuration.md`, "Kafka").
//!
//! Core only reads the section's shape: the checks that need librdkafka (property names
//! and values, broker addresses, the transaction timeout against the commit interval)
//! are the Kafka connector's, passed to [`Pipeline::parse_with`](super::Pipeline::parse_with)
//! so that one run of the checks reports every problem of the file at once.

use std::collections::BTreeMap;
use std::time::Duration;

use super::walk::{Cx, Table};

/// How a Kafka pipeline delivers its outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Outputs and input offsets in one Kafka transaction per epoch (the default).
    ExactlyOnce,
    /// Outputs produced and flushed, then the input offsets committed: after a crash
    /// between the two, the epoch's outputs are written again (no transactions, for
    /// sinks that deduplicate or do not need it).
    AtLeastOnce,
}

/// Which partitions of the sources an instance reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assignment {
    /// Every partition (one instance per pipeline; the default).
    All,
    /// The partitions the consumer group assigns this instance (cooperative-sticky):
    /// instances of one pipeline split the partitions and take over a dead one's.
    Group,
}

/// The `[kafka]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaSettings {
    /// Bootstrap brokers, each `host:port`.
    pub brokers: Vec<String>,
    /// How long to try reaching a broker before reporting it unreachable.
    pub connect_timeout: Duration,
    /// librdkafka properties passed to every client (their string forms).
    pub properties: BTreeMap<String, String>,
    /// The consumer group whose committed offsets are the pipeline's input offsets.
    pub group: String,
    /// This instance's stable id: with the group, it makes the `transactional.id`, so a
    /// restarted instance fences its zombie.
    pub instance: String,
    /// Exactly once (transactions) or at least once.
    pub delivery: Delivery,
    /// Create missing output topics at start (with the partitions the pipeline gives).
    pub create_topics: bool,
    /// Replicas of created topics; the broker's default when `None`.
    pub replication_factor: Option<u16>,
    /// Every partition, or the group's share.
    pub assignment: Assignment,
}

impl KafkaSettings {
    /// The producer's `transactional.id`: `<group>.<instance>`.
    pub fn transactional_id(&self) -> String {
        format!("{}.{}", self.group, self.instance)
    }
}

/// Defaults of `[kafka]`.
pub mod defaults {
    use std::time::Duration;
    /// `connect_timeout`.
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
    /// `instance`.
    pub const INSTANCE: &str = "0";
}

/// Reads `[kafka]` (absent: `None`). `pipeline` names the default group.
pub(crate) fn parse(
    cx: &mut Cx<'_>,
    t: &mut Table<'_, '_>,
    pipeline: &str,
) -> Option<KafkaSettings> {
    if !t.is_present() {
        return None;
    }
    let brokers = t.strings(cx, "brokers");
    if brokers.is_none() && t.keys().iter().all(|k| k != "brokers") {
        cx.error(
            "kafka.brokers",
            t.span(),
            "is required: the bootstrap brokers, e.g. [\"127.0.0.1:9092\"]",
        );
    }
    let connect_timeout = t
        .duration(
            cx,
            "connect_timeout",
            Duration::from_millis(1),
            Duration::from_secs(3600),
        )
        .unwrap_or(defaults::CONNECT_TIMEOUT);
    let properties = t.scalar_map(cx, "properties");
    let group = t
        .string(cx, "group")
        .unwrap_or_else(|| format!("onceflow.{pipeline}"));
    let instance = t
        .string(cx, "instance")
        .unwrap_or_else(|| defaults::INSTANCE.to_string());
    for (key, v) in [("group", &group), ("instance", &instance)] {
        if v.is_empty()
            || v.len() > 200
            || !v
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            cx.error(
                &format!("kafka.{key}"),
                t.span(),
                format!("\"{v}\": use 1 to 200 letters, digits, '.', '_' or '-'"),
            );
        }
    }
    let delivery = match t
        .choice(cx, "delivery", &["exactly_once", "at_least_once"])
        .as_deref()
    {
        Some("at_least_once") => Delivery::AtLeastOnce,
        _ => Delivery::ExactlyOnce,
    };
    let create_topics = t.bool(cx, "create_topics").unwrap_or(true);
    let replication_factor = t
        .int(cx, "replication_factor", 1, i64::from(i16::MAX))
        .map(|n| n as u16);
    let assignment = match t.choice(cx, "assignment", &["all", "group"]).as_deref() {
        Some("group") => Assignment::Group,
        _ => Assignment::All,
    };
    Some(KafkaSettings {
        brokers: brokers.unwrap_or_default(),
        connect_timeout,
        properties,
        group,
        instance,
        delivery,
        create_topics,
        replication_factor,
        assignment,
    })
}
