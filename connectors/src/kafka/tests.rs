//! Unit tests without a broker: configuration checks.
//! (Tests against a broker: `connectors/tests/kafka_broker.rs`.)

use std::time::Duration;

use super::config::{KafkaConnection, KafkaConnectionConfig, TopicConfig, check_commit_interval};

fn conn(toml_text: &str) -> KafkaConnectionConfig {
    toml::from_str(toml_text).unwrap()
}

fn topic(toml_text: &str) -> TopicConfig {
    toml::from_str(toml_text).unwrap()
}

fn paths(errors: &[onceflow_core::config::ConfigError]) -> Vec<&str> {
    errors.iter().map(|e| e.path.as_str()).collect()
}

// ---- configuration ----

#[test]
fn a_minimal_connection_gets_defaults() {
    let c = conn(r#"brokers = ["127.0.0.1:9092", "kafka-2:9093"]"#)
        .validate("kafka")
        .unwrap();
    assert_eq!(c.bootstrap_servers, "127.0.0.1:9092,kafka-2:9093");
    assert_eq!(c.connect_timeout, Duration::from_secs(10));
    assert!(c.properties.is_empty());
    assert_eq!(c.transaction_timeout(), Ok(Duration::from_secs(60)));
}

#[test]
fn properties_of_any_scalar_type_pass_through_as_strings() {
    let c = conn(
        r#"
        brokers = ["b:1"]
        connect_timeout = "2500ms"
        properties = { "linger.ms" = 5, "compression.type" = "lz4", "socket.keepalive.enable" = true, "transaction.timeout.ms" = 30000 }
        "#,
    )
    .validate("kafka")
    .unwrap();
    assert_eq!(c.connect_timeout, Duration::from_millis(2500));
    assert_eq!(c.properties["linger.ms"], "5");
    assert_eq!(c.properties["socket.keepalive.enable"], "true");
    assert_eq!(c.transaction_timeout(), Ok(Duration::from_secs(30)));
    let cc = c.client_config();
    assert_eq!(cc.get("bootstrap.servers"), Some("b:1"));
    assert_eq!(cc.get("compression.type"), Some("lz4"));
}

#[test]
fn unknown_keys_and_bad_durations_are_refused_when_parsed() {
    let e = toml::from_str::<KafkaConnectionConfig>(
        r#"brokers = ["b:1"]
broker = "x""#,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("unknown field `broker`"), "{e}");
    let e = toml::from_str::<KafkaConnectionConfig>(
        r#"brokers = ["b:1"]
connect_timeout = "10""#,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("a unit is required"), "{e}");
    let e = toml::from_str::<TopicConfig>(
        r#"name = "t"
partitions = 1
compact = true"#,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("unknown field `compact`"), "{e}");
}

#[test]
fn every_connection_problem_is_reported_with_its_path() {
    let errors = conn(
        r#"
        brokers = ["127.0.0.1", "tcp://h:9092", "h:0", "h:99999", ":9092", "ok:9092"]
        connect_timeout = "0s"
        properties = { "linger.msx" = 5, "transactional.id" = "x", "enable.auto.commit" = false, "acks" = "sometimes", "transaction.timeout.ms" = "soon" }
        "#,
    )
    .validate("kafka")
    .unwrap_err();
    assert_eq!(
        paths(&errors),
        [
            "kafka.brokers[0]",
            "kafka.brokers[1]",
            "kafka.brokers[2]",
            "kafka.brokers[3]",
            "kafka.brokers[4]",
            "kafka.connect_timeout",
            "kafka.properties.\"acks\"",
            "kafka.properties.\"enable.auto.commit\"",
            "kafka.properties.\"linger.msx\"",
            "kafka.properties.\"transaction.timeout.ms\"",
            "kafka.properties.\"transactional.id\"",
            // transaction.timeout.ms is also unreadable as a duration
            "kafka.properties.\"transaction.timeout.ms\"",
        ]
    );
    let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert!(text[0].contains("is not host:port"), "{}", text[0]);
    assert!(text[1].contains("without a scheme"), "{}", text[1]);
    assert!(
        text[8].contains("No such configuration property"),
        "{}",
        text[8]
    );
    assert!(text[10].contains("set by onceflow"), "{}", text[10]);
    assert!(
        text[11].contains("whole number of milliseconds"),
        "{}",
        text[11]
    );
}

#[test]
fn no_brokers_is_an_error() {
    let errors = conn("brokers = []").validate("").unwrap_err();
    assert_eq!(paths(&errors), ["brokers"]);
    assert!(errors[0].message.contains("at least one broker"));
}

#[test]
fn a_broker_list_from_the_environment_is_checked_the_same_way() {
    let c = KafkaConnection::from_broker_list("127.0.0.1:9092, [::1]:9093", Duration::from_secs(1))
        .unwrap();
    assert_eq!(c.bootstrap_servers, "127.0.0.1:9092,[::1]:9093");
    let errors =
        KafkaConnection::from_broker_list("127.0.0.1:9092,", Duration::from_secs(1)).unwrap_err();
    assert_eq!(paths(&errors), ["brokers.brokers[1]"]);
}

#[test]
fn a_changelog_topic_is_created_compacted() {
    let t = topic(
        r#"
        name = "bank.account_changelog"
        partitions = 8
        replication_factor = 3
        create = true
        compacted = true
        config = { "retention.ms" = 86400000 }
        "#,
    );
    assert!(t.validate("kafka.topics[0]").is_empty());
    let c = t.creation_configs();
    assert_eq!(c["cleanup.policy"], "compact");
    assert_eq!(c["retention.ms"], "86400000");
    assert_eq!(c.len(), 2);
}

#[test]
fn every_topic_problem_is_reported_with_its_path() {
    let t = topic(
        r#"
        name = "bad name!"
        partitions = 0
        replication_factor = 0
        compacted = true
        config = { "cleanup.policy" = "delete" }
        "#,
    );
    let errors = t.validate("kafka.topics[2]");
    assert_eq!(
        paths(&errors),
        [
            "kafka.topics[2].name",
            "kafka.topics[2].partitions",
            "kafka.topics[2].replication_factor",
            "kafka.topics[2].config.\"cleanup.policy\"",
            "kafka.topics[2].config",
        ]
    );
    assert!(errors[0].message.contains("' ' is not allowed"));
    assert!(errors[4].message.contains("set create = true"));
}

#[test]
fn topic_names_follow_kafkas_rules() {
    for ok in ["a", "orders.v1", "A_b-c.9", &"x".repeat(249)] {
        let t = TopicConfig {
            name: ok.to_string(),
            partitions: 1,
            replication_factor: None,
            create: false,
            compacted: false,
            config: Default::default(),
        };
        assert!(t.validate("t").is_empty(), "{ok}");
    }
    for bad in ["", ".", "..", "a/b", "ü", &"x".repeat(250)] {
        let t = TopicConfig {
            name: bad.to_string(),
            partitions: 1,
            replication_factor: None,
            create: false,
            compacted: false,
            config: Default::default(),
        };
        assert_eq!(paths(&t.validate("t")), ["t.name"], "{bad:?}");
    }
}

#[test]
fn cleanup_policy_compact_without_compacted_asks_for_compacted() {
    let t = topic(
        r#"
        name = "t"
        partitions = 1
        create = true
        config = { "cleanup.policy" = "compact,delete" }
        "#,
    );
    let errors = t.validate("t");
    assert_eq!(paths(&errors), ["t.config.\"cleanup.policy\""]);
    assert!(errors[0].message.contains("compacted = true"));
}

#[test]
fn the_commit_interval_must_be_shorter_than_the_transaction_timeout() {
    let default = conn(r#"brokers = ["b:1"]"#).validate("").unwrap();
    assert!(
        check_commit_interval(
            Duration::from_secs(59),
            &default,
            "pipeline.commit_interval"
        )
        .is_ok()
    );
    let e = check_commit_interval(
        Duration::from_secs(60),
        &default,
        "pipeline.commit_interval",
    )
    .unwrap_err();
    assert_eq!(e.path, "pipeline.commit_interval");
    assert!(
        e.message.contains("transaction.timeout.ms"),
        "{}",
        e.message
    );
    let short = conn(
        r#"brokers = ["b:1"]
properties = { "transaction.timeout.ms" = 1000 }"#,
    )
    .validate("")
    .unwrap();
    assert!(check_commit_interval(Duration::from_millis(999), &short, "x").is_ok());
    assert!(check_commit_interval(Duration::from_millis(1000), &short, "x").is_err());
}
