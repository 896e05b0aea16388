//! The Kafka configuration model: brokers, librdkafka properties passed through, and the
//! topics to check or create at start.
//!
//! Not yet part of the pipeline file: these are the structs a `[kafka]` section and its
//! topics will deserialize into (`deny_unknown_fields`), and the pure checks that turn
//! them into a [`KafkaConnection`]. Every problem is reported, each with its TOML path.
//!
//! ```toml
//! brokers = ["127.0.0.1:9092"]
//! connect_timeout = "10s"
//! properties = { "linger.ms" = 5, "compression.type" = "lz4" }
//!
//! [[topics]]
//! name = "account_changelog"
//! partitions = 8
//! replication_factor = 3
//! create = true
//! compacted = true
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use onceflow_core::config::{ConfigError, parse_duration};
use rdkafka::ClientConfig;
use serde::Deserialize;

/// Default values, as `const fn`s.
pub mod defaults {
    use std::time::Duration;

    /// How long to try reaching the brokers before reporting them unreachable.
    pub const fn connect_timeout() -> Duration {
        Duration::from_secs(10)
    }

    /// librdkafka's default `transaction.timeout.ms`.
    pub const fn transaction_timeout() -> Duration {
        Duration::from_secs(60)
    }
}

/// Most partitions a topic may be created with here (a typo guard, not a Kafka limit).
pub const MAX_PARTITIONS: u32 = 10_000;

/// librdkafka properties that onceflow sets itself, with what to use instead. Passing
/// one would break exactly-once or contradict another key.
pub const RESERVED_PROPERTIES: &[(&str, &str)] = &[
    ("bootstrap.servers", "set `brokers` instead"),
    ("metadata.broker.list", "set `brokers` instead"),
    (
        "transactional.id",
        "onceflow derives it from the pipeline name and the instance id, so that a restarted instance fences its zombie",
    ),
    (
        "enable.idempotence",
        "onceflow enables it for the transactional sink",
    ),
    (
        "isolation.level",
        "onceflow reads with read_committed in exactly-once mode",
    ),
    (
        "enable.auto.commit",
        "onceflow commits input offsets inside the output transaction",
    ),
    (
        "enable.auto.offset.store",
        "onceflow commits input offsets inside the output transaction",
    ),
    (
        "auto.offset.reset",
        "the Kafka source starts where onceflow's committed offsets say, and an offset the broker \
         no longer has is an error, never a jump to another offset",
    ),
    (
        "enable.partition.eof",
        "the Kafka source turns it on to know when it has caught up",
    ),
];

/// Where the Kafka cluster is and how to talk to it (shared by sources, sinks and admin).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConnectionConfig {
    /// Bootstrap brokers, each `host:port`.
    pub brokers: Vec<String>,
    /// How long to try reaching a broker at start before failing with the address
    /// tried, e.g. `"10s"`.
    #[serde(
        default = "defaults::connect_timeout",
        deserialize_with = "deserialize_duration"
    )]
    pub connect_timeout: Duration,
    /// librdkafka properties, passed to every client as they are (strings, numbers or
    /// booleans), except [`RESERVED_PROPERTIES`].
    #[serde(default)]
    pub properties: BTreeMap<String, PropertyValue>,
}

/// A topic the pipeline reads or writes: checked at start, created if asked.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicConfig {
    /// Topic name.
    pub name: String,
    /// Partitions it must have (an existing topic with another count is an error:
    /// keyed state is partitioned by it).
    pub partitions: u32,
    /// Replicas per partition when created; the broker's default when absent.
    #[serde(default)]
    pub replication_factor: Option<u16>,
    /// Create the topic at start if it is missing (otherwise a missing topic is an error).
    #[serde(default)]
    pub create: bool,
    /// A changelog: must have `cleanup.policy=compact` (checked at start), and is
    /// created with it.
    #[serde(default)]
    pub compacted: bool,
    /// Further topic configs for creation, e.g. `{ "retention.ms" = 86400000 }`.
    #[serde(default)]
    pub config: BTreeMap<String, PropertyValue>,
}

/// A librdkafka or topic property value: TOML strings, integers, floats and booleans
/// are all accepted and passed on as their string form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PropertyValue(pub String);

impl fmt::Display for PropertyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for PropertyValue {
    fn from(s: &str) -> Self {
        PropertyValue(s.to_string())
    }
}

impl<'de> Deserialize<'de> for PropertyValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = PropertyValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E>(self, v: &str) -> Result<PropertyValue, E> {
                Ok(PropertyValue(v.to_string()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<PropertyValue, E> {
                Ok(PropertyValue(v.to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<PropertyValue, E> {
                Ok(PropertyValue(v.to_string()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<PropertyValue, E> {
                Ok(PropertyValue(v.to_string()))
            }
            fn visit_bool<E>(self, v: bool) -> Result<PropertyValue, E> {
                Ok(PropertyValue(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

fn deserialize_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

/// A checked connection: what the admin client, producers and consumers are built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaConnection {
    /// `bootstrap.servers`: the brokers joined with commas.
    pub bootstrap_servers: String,
    /// How long to try reaching a broker at start.
    pub connect_timeout: Duration,
    /// The pass-through librdkafka properties.
    pub properties: BTreeMap<String, String>,
}

impl KafkaConnection {
    /// A connection to `brokers` (comma-separated, as in `ONCEFLOW_KAFKA_BROKERS`) with no
    /// extra properties. Checked like a configured one.
    pub fn from_broker_list(
        brokers: &str,
        connect_timeout: Duration,
    ) -> Result<Self, Vec<ConfigError>> {
        KafkaConnectionConfig {
            brokers: brokers.split(',').map(|b| b.trim().to_string()).collect(),
            connect_timeout,
            properties: BTreeMap::new(),
        }
        .validate("")
    }

    /// A librdkafka client configuration: the brokers and the pass-through properties.
    /// Callers add their own settings (group id, transactional id) on top.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap_servers);
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }

    /// `transaction.timeout.ms` as passed through, or librdkafka's default (60 s).
    pub fn transaction_timeout(&self) -> Result<Duration, String> {
        match self.properties.get("transaction.timeout.ms") {
            None => Ok(defaults::transaction_timeout()),
            Some(v) => v
                .trim()
                .parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|_| {
                    format!(
                        "transaction.timeout.ms must be a whole number of milliseconds, not \"{v}\""
                    )
                }),
        }
    }
}

impl KafkaConnectionConfig {
    /// Checks everything that can be checked without a broker (addresses, property
    /// names and values as librdkafka parses them) and returns the connection, or every
    /// problem found, each located under `path` (the TOML path of this section).
    pub fn validate(&self, path: &str) -> Result<KafkaConnection, Vec<ConfigError>> {
        let mut errors = Vec::new();
        if self.brokers.is_empty() {
            errors.push(error(
                path,
                "brokers",
                "at least one broker is required, e.g. [\"127.0.0.1:9092\"]",
            ));
        }
        for (i, b) in self.brokers.iter().enumerate() {
            if let Err(m) = check_broker(b) {
                errors.push(error(path, &format!("brokers[{i}]"), m));
            }
        }
        if self.connect_timeout.is_zero() {
            errors.push(error(
                path,
                "connect_timeout",
                "must be more than 0, e.g. \"10s\"",
            ));
        }
        for (k, v) in &self.properties {
            let key = format!("properties.\"{k}\"");
            if let Some((_, why)) = RESERVED_PROPERTIES.iter().find(|(r, _)| r == k) {
                errors.push(error(path, &key, format!("is set by onceflow: {why}")));
                continue;
            }
            // librdkafka checks names and values when they are set on a configuration
            // object: no client is created and nothing is sent.
            if let Err(e) = ClientConfig::new().set(k, &v.0).create_native_config() {
                errors.push(error(path, &key, librdkafka_config_message(&e)));
            }
        }
        let conn = KafkaConnection {
            bootstrap_servers: self.brokers.join(","),
            connect_timeout: self.connect_timeout,
            properties: self
                .properties
                .iter()
                .map(|(k, v)| (k.clone(), v.0.clone()))
                .collect(),
        };
        if let Err(m) = conn.transaction_timeout() {
            errors.push(error(path, "properties.\"transaction.timeout.ms\"", m));
        }
        if errors.is_empty() {
            Ok(conn)
        } else {
            Err(errors)
        }
    }
}

impl TopicConfig {
    /// Checks the topic's name, partitions, replication factor and configs; every
    /// problem is located under `path` (e.g. `kafka.topics[0]`).
    pub fn validate(&self, path: &str) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        if let Err(m) = check_topic_name(&self.name) {
            errors.push(error(path, "name", m));
        }
        if self.partitions == 0 || self.partitions > MAX_PARTITIONS {
            errors.push(error(
                path,
                "partitions",
                format!("must be 1 to {MAX_PARTITIONS}, not {}", self.partitions),
            ));
        }
        if self.replication_factor == Some(0) {
            errors.push(error(
                path,
                "replication_factor",
                "must be at least 1 (or leave it out for the broker's default)",
            ));
        }
        if let Some(policy) = self.config.get("cleanup.policy") {
            let compacts = policy.0.split(',').any(|p| p.trim() == "compact");
            if self.compacted && !compacts {
                errors.push(error(
                    path,
                    "config.\"cleanup.policy\"",
                    format!("\"{policy}\" contradicts compacted = true (which sets \"compact\")"),
                ));
            } else if !self.compacted && compacts {
                errors.push(error(
                    path,
                    "config.\"cleanup.policy\"",
                    "say compacted = true instead",
                ));
            }
        }
        if !self.config.is_empty() && !self.create {
            errors.push(error(
                path,
                "config",
                "only applies when the topic is created: set create = true, or remove it",
            ));
        }
        errors
    }

    /// The topic configs it is created with (`cleanup.policy=compact` for changelogs).
    pub fn creation_configs(&self) -> BTreeMap<String, String> {
        let mut c: BTreeMap<String, String> = self
            .config
            .iter()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect();
        if self.compacted {
            c.insert("cleanup.policy".into(), "compact".into());
        }
        c
    }
}

/// Checks that a transactional sink commits often enough: every transaction must end
/// before `transaction.timeout.ms`, or the broker aborts it (and fences the producer).
/// `path` locates the commit interval's key.
pub fn check_commit_interval(
    commit_interval: Duration,
    conn: &KafkaConnection,
    path: &str,
) -> Result<(), ConfigError> {
    let timeout = conn.transaction_timeout().map_err(|m| ConfigError {
        path: path.to_string(),
        line: None,
        message: m,
    })?;
    if commit_interval >= timeout {
        return Err(ConfigError {
            path: path.to_string(),
            line: None,
            message: format!(
                "commit interval {commit_interval:?} must be shorter than the Kafka transaction timeout ({timeout:?}, \
                 property transaction.timeout.ms): lower the interval or raise the timeout"
            ),
        });
    }
    Ok(())
}

/// `host:port`, with a host and a port in 1..=65535.
fn check_broker(b: &str) -> Result<(), String> {
    let Some((host, port)) = b.rsplit_once(':') else {
        return Err(format!(
            "\"{b}\" is not host:port (e.g. \"127.0.0.1:9092\")"
        ));
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains(char::is_whitespace) || host.contains("://") {
        return Err(format!(
            "\"{b}\": the host is missing or malformed (host:port without a scheme, e.g. \"kafka-1:9092\")"
        ));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("\"{b}\": the port must be 1 to 65535")),
    }
}

/// Kafka's rules: 1 to 249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
fn check_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 249 {
        return Err("must be 1 to 249 characters".into());
    }
    if name == "." || name == ".." {
        return Err(format!("\"{name}\" is not a valid topic name"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "\"{name}\": '{c}' is not allowed (use letters, digits, '.', '_' and '-')"
        ));
    }
    Ok(())
}

fn librdkafka_config_message(e: &rdkafka::error::KafkaError) -> String {
    match e {
        rdkafka::error::KafkaError::ClientConfig(_, desc, _, _) => {
            format!("librdkafka refuses it: {desc}")
        }
        other => format!("librdkafka refuses it: {other}"),
    }
}

fn error(path: &str, key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        path: if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        },
        line: None,
        message: message.into(),
    }
}
