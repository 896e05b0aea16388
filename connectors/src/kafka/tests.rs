//! Unit tests without a broker: configuration checks, the error state machine, and the
//! source's reading of librdkafka's statistics. (Tests against a broker:
//! `connectors/tests/kafka_broker.rs`, `connectors/tests/kafka_source.rs`.)

use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode as C};
use rdkafka::types::RDKafkaConfRes;

use super::config::{KafkaConnection, KafkaConnectionConfig, TopicConfig, check_commit_interval};
use super::errors::*;
use super::source::{DEFAULT_STATS_INTERVAL_MS, stable_offsets, stats_interval_ms};

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
fn the_sources_consumer_settings_are_reserved() {
    let errors = conn(
        r#"
        brokers = ["h:9092"]
        properties = { "auto.offset.reset" = "earliest", "enable.partition.eof" = false, "fetch.wait.max.ms" = 100 }
        "#,
    )
    .validate("kafka")
    .unwrap_err();
    assert_eq!(
        paths(&errors),
        [
            "kafka.properties.\"auto.offset.reset\"",
            "kafka.properties.\"enable.partition.eof\"",
        ]
    );
    assert!(
        errors[0].to_string().contains("never a jump"),
        "{}",
        errors[0]
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
    assert_eq!(paths(&errors), ["brokers[1]"]);
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

/// The rdkafka features chosen in the root Cargo.toml, as librdkafka reports them.
#[test]
fn librdkafka_is_built_with_the_chosen_features() {
    let native = rdkafka::ClientConfig::new().create_native_config().unwrap();
    let features = native.get("builtin.features").unwrap();
    let features: Vec<&str> = features.split(',').collect();
    for f in [
        "gzip",
        "snappy",
        "lz4",
        "ssl",
        "sasl_plain",
        "sasl_scram",
        "sasl_oauthbearer",
    ] {
        assert!(features.contains(&f), "{f} missing from {features:?}");
    }
    for f in ["zstd", "sasl_gssapi"] {
        assert!(
            !features.contains(&f),
            "{f} is built in: update DEVELOPERS.md"
        );
    }
}

// ---- source: committed ends from librdkafka's statistics ----

/// A statistics report of a consumer of topic `t` (librdkafka 2.12, trimmed): partition
/// 0 fetched while a transaction was open (high watermark 5, last stable offset 3),
/// partition 1 not fetched yet, and the unassigned partition -1.
const STATS: &str = r#"{
  "name": "rdkafka#consumer-1", "type": "consumer", "ts": 1, "brokers": {},
  "topics": {
    "t": { "topic": "t", "age": 1, "partitions": {
      "0": { "partition": 0, "fetch_state": "active", "next_offset": 3, "app_offset": 3,
             "eof_offset": -1001, "lo_offset": 0, "hi_offset": 5, "ls_offset": 3 },
      "1": { "partition": 1, "fetch_state": "offset-query", "next_offset": 0,
             "app_offset": -1001, "hi_offset": -1001, "ls_offset": -1001 },
      "-1": { "partition": -1, "fetch_state": "none", "hi_offset": -1001, "ls_offset": -1001 }
    } },
    "other": { "topic": "other", "partitions": {
      "0": { "partition": 0, "hi_offset": 9, "ls_offset": 9 }
    } }
  },
  "cgrp": { "state": "up" }
}"#;

#[test]
fn committed_ends_are_the_last_stable_offsets_of_fetched_partitions() {
    assert_eq!(stable_offsets(STATS.as_bytes(), "t").unwrap(), [(0, 3)]);
    assert_eq!(stable_offsets(STATS.as_bytes(), "other").unwrap(), [(0, 9)]);
    assert!(
        stable_offsets(STATS.as_bytes(), "missing")
            .unwrap()
            .is_empty()
    );
    assert!(stable_offsets(b"{}", "t").unwrap().is_empty());
    assert!(stable_offsets(b"{\"topics\": 7}", "t").is_err());
    assert!(stable_offsets(b"not json", "t").is_err());
}

#[test]
fn the_source_needs_statistics_and_takes_their_interval_from_the_properties() {
    let with = |props: &str| {
        conn(&format!(
            "brokers = [\"h:9092\"]\nproperties = {{ {props} }}"
        ))
        .validate("")
        .unwrap()
    };
    assert_eq!(stats_interval_ms(&with("")), Ok(DEFAULT_STATS_INTERVAL_MS));
    assert_eq!(
        stats_interval_ms(&with("\"statistics.interval.ms\" = 1000")),
        Ok(1000)
    );
    let off = stats_interval_ms(&with("\"statistics.interval.ms\" = 0")).unwrap_err();
    assert!(off.contains("turns off librdkafka's statistics"), "{off}");
}

// ---- error state machine ----

const POLICY: RetryPolicy = RetryPolicy {
    initial_backoff: Duration::from_millis(100),
    max_backoff: Duration::from_secs(2),
    max_attempts: 5,
};

/// Facts of a transactional API error with the given flags.
fn txn(code: C, fatal: bool, retriable: bool, abort: bool) -> ErrorFacts {
    ErrorFacts {
        origin: ErrorOrigin::Transactional,
        code: Some(code),
        fatal,
        retriable,
        txn_requires_abort: abort,
        fatal_cause: None,
    }
}

fn new_producer(r: NewProducerReason) -> Decision {
    Decision::NewProducerAndRecover(r)
}

#[test]
fn backoff_doubles_from_the_initial_value_up_to_the_cap() {
    let got: Vec<u64> = (1..=8)
        .map(|r| POLICY.backoff(r).as_millis() as u64)
        .collect();
    assert_eq!(got, [100, 200, 400, 800, 1600, 2000, 2000, 2000]);
    // No overflow however large the retry number.
    assert_eq!(POLICY.backoff(u32::MAX), Duration::from_secs(2));
    assert_eq!(POLICY.backoff(0), Duration::from_millis(100));
}

#[test]
fn retriable_errors_are_retried_with_backoff_until_the_budget_is_spent() {
    let e = txn(C::OperationTimedOut, false, true, false);
    for op in TxnOp::ALL {
        if op == TxnOp::Poll {
            continue; // delivery failures are never retried: librdkafka already did
        }
        for failures in 1..POLICY.max_attempts {
            assert_eq!(
                decide(op, &e, failures, &POLICY),
                Decision::RetryAfter {
                    backoff: POLICY.backoff(failures),
                    retry: failures
                },
                "{op:?} failure {failures}"
            );
        }
    }
}

#[test]
fn a_spent_retry_budget_aborts_or_replaces_the_producer_by_operation() {
    let e = txn(C::OperationTimedOut, false, true, false);
    let spent = POLICY.max_attempts;
    let expect = |op| match op {
        TxnOp::Begin | TxnOp::Produce | TxnOp::SendOffsets => {
            Decision::AbortAndRecover(AbortReason::RetriesExhausted)
        }
        TxnOp::Poll => Decision::AbortAndRecover(AbortReason::DeliveryFailed),
        TxnOp::Commit => new_producer(NewProducerReason::UnknownCommitOutcome),
        TxnOp::Abort => new_producer(NewProducerReason::UnknownAbortOutcome),
        TxnOp::InitTransactions => new_producer(NewProducerReason::InitFailed),
    };
    for op in TxnOp::ALL {
        assert_eq!(decide(op, &e, spent, &POLICY), expect(op), "{op:?}");
        assert_eq!(decide(op, &e, spent + 7, &POLICY), expect(op), "{op:?}");
    }
}

#[test]
fn a_commit_that_timed_out_is_retried_then_its_outcome_is_unknown() {
    let e = txn(C::OperationTimedOut, false, true, false);
    assert!(matches!(
        decide(TxnOp::Commit, &e, 1, &POLICY),
        Decision::RetryAfter { retry: 1, .. }
    ));
    assert_eq!(
        decide(TxnOp::Commit, &e, POLICY.max_attempts, &POLICY),
        new_producer(NewProducerReason::UnknownCommitOutcome)
    );
    // A commit error with no flags at all: the outcome is unknown, never "done".
    let e = txn(C::Unknown, false, false, false);
    assert_eq!(
        decide(TxnOp::Commit, &e, 1, &POLICY),
        new_producer(NewProducerReason::UnknownCommitOutcome)
    );
}

#[test]
fn abortable_errors_abort_and_recover() {
    let e = txn(C::InvalidRecord, false, false, true);
    for op in [
        TxnOp::Begin,
        TxnOp::Produce,
        TxnOp::SendOffsets,
        TxnOp::Commit,
    ] {
        assert_eq!(
            decide(op, &e, 1, &POLICY),
            Decision::AbortAndRecover(AbortReason::Abortable),
            "{op:?}"
        );
    }
    // Abortable and retriable: abort wins (retrying an abortable transaction is useless).
    let e = txn(C::OperationTimedOut, false, true, true);
    assert_eq!(
        decide(TxnOp::Commit, &e, 1, &POLICY),
        Decision::AbortAndRecover(AbortReason::Abortable)
    );
    // An abort that fails without being retriable: its outcome is unknown.
    let e = txn(C::State, false, false, true);
    assert_eq!(
        decide(TxnOp::Abort, &e, 1, &POLICY),
        new_producer(NewProducerReason::UnknownAbortOutcome)
    );
}

#[test]
fn fenced_producers_are_replaced_whatever_the_operation_and_flags() {
    for code in [C::ProducerFenced, C::InvalidProducerEpoch, C::Fenced] {
        for (fatal, retriable, abort) in [
            (true, false, false),
            (false, false, false),
            (false, true, true),
        ] {
            let e = txn(code, fatal, retriable, abort);
            for op in TxnOp::ALL {
                assert_eq!(
                    decide(op, &e, 1, &POLICY),
                    new_producer(NewProducerReason::Fenced),
                    "{op:?} {code:?}"
                );
            }
        }
    }
    // A `_FATAL` whose cause (rd_kafka_fatal_error) is fencing.
    let e = txn(C::Fatal, true, false, false)
        .with_fatal_error(Some((C::ProducerFenced, "fenced".into())));
    assert_eq!(
        decide(TxnOp::Commit, &e, 1, &POLICY),
        new_producer(NewProducerReason::Fenced)
    );
}

#[test]
fn fatal_errors_replace_the_producer() {
    let e = txn(C::OutOfOrderSequenceNumber, true, false, false);
    for op in TxnOp::ALL {
        assert_eq!(
            decide(op, &e, 1, &POLICY),
            new_producer(NewProducerReason::Fatal),
            "{op:?}"
        );
    }
    // Fatal beats retriable and abortable.
    let e = txn(C::OutOfOrderSequenceNumber, true, true, true);
    assert_eq!(
        decide(TxnOp::SendOffsets, &e, 1, &POLICY),
        new_producer(NewProducerReason::Fatal)
    );
    let e = ErrorFacts::from_code(C::Fatal);
    assert!(e.fatal);
    assert_eq!(
        decide(TxnOp::Poll, &e, 1, &POLICY),
        new_producer(NewProducerReason::Fatal)
    );
}

#[test]
fn unclassified_errors_are_treated_as_fatal_except_at_commit() {
    let e = txn(C::State, false, false, false);
    for op in [TxnOp::Begin, TxnOp::Produce, TxnOp::SendOffsets] {
        assert_eq!(
            decide(op, &e, 1, &POLICY),
            new_producer(NewProducerReason::Unclassified),
            "{op:?}"
        );
    }
    assert_eq!(
        decide(TxnOp::InitTransactions, &e, 1, &POLICY),
        new_producer(NewProducerReason::InitFailed)
    );
}

#[test]
fn configuration_and_permission_errors_fail_whatever_the_flags() {
    let cases = [
        (C::NotConfigured, FailReason::Config),
        (C::InvalidArgument, FailReason::Config),
        (C::InvalidTransactionTimeout, FailReason::TransactionTimeout),
        (
            C::TransactionalIdAuthorizationFailed,
            FailReason::NotAuthorized,
        ),
        (C::GroupAuthorizationFailed, FailReason::NotAuthorized),
        (C::TopicAuthorizationFailed, FailReason::NotAuthorized),
        (C::ClusterAuthorizationFailed, FailReason::NotAuthorized),
        (C::SaslAuthenticationFailed, FailReason::NotAuthorized),
        (C::Authentication, FailReason::NotAuthorized),
        (C::UnsupportedFeature, FailReason::Unsupported),
        (C::UnsupportedVersion, FailReason::Unsupported),
        (C::UnknownTopic, FailReason::TopicMissing),
        (C::UnknownPartition, FailReason::TopicMissing),
        (C::MessageSizeTooLarge, FailReason::RecordTooLarge),
    ];
    for (code, reason) in cases {
        // A fatal flag (librdkafka raises e.g. authorization failures as fatal) does
        // not turn them into a new producer: it would fail the same way.
        for e in [txn(code, true, false, false), ErrorFacts::from_code(code)] {
            for op in TxnOp::ALL {
                assert_eq!(
                    decide(op, &e, 1, &POLICY),
                    Decision::Fail(reason),
                    "{op:?} {code:?}"
                );
            }
        }
    }
    // Behind a _FATAL too.
    let e = txn(C::Fatal, true, false, false)
        .with_fatal_error(Some((C::TransactionalIdAuthorizationFailed, String::new())));
    assert_eq!(
        decide(TxnOp::Begin, &e, 1, &POLICY),
        Decision::Fail(FailReason::NotAuthorized)
    );
}

#[test]
fn unknown_topic_or_partition_fails_only_when_librdkafka_gave_up_on_it() {
    let retriable = txn(C::UnknownTopicOrPartition, false, true, false);
    assert!(matches!(
        decide(TxnOp::SendOffsets, &retriable, 1, &POLICY),
        Decision::RetryAfter { .. }
    ));
    let delivery = ErrorFacts::from_code(C::UnknownTopicOrPartition);
    assert_eq!(
        decide(TxnOp::Poll, &delivery, 1, &POLICY),
        Decision::Fail(FailReason::TopicMissing)
    );
}

#[test]
fn a_full_local_queue_is_retried_then_the_transaction_aborted() {
    let e = ErrorFacts::of(&KafkaError::MessageProduction(C::QueueFull));
    assert_eq!(e.origin, ErrorOrigin::Code);
    assert!(e.retriable && !e.fatal && !e.txn_requires_abort);
    assert!(matches!(
        decide(TxnOp::Produce, &e, 3, &POLICY),
        Decision::RetryAfter { retry: 3, .. }
    ));
    assert_eq!(
        decide(TxnOp::Produce, &e, POLICY.max_attempts, &POLICY),
        Decision::AbortAndRecover(AbortReason::RetriesExhausted)
    );
}

#[test]
fn failed_deliveries_abort_the_transaction() {
    for code in [
        C::MessageTimedOut,
        C::PurgeQueue,
        C::PurgeInflight,
        C::NotEnoughReplicas,
        C::InvalidRecord,
    ] {
        let e = ErrorFacts::of(&KafkaError::MessageProduction(code));
        assert_eq!(
            decide(TxnOp::Poll, &e, 1, &POLICY),
            Decision::AbortAndRecover(AbortReason::DeliveryFailed),
            "{code:?}"
        );
    }
}

#[test]
fn client_configuration_errors_fail_and_a_dropped_client_is_replaced() {
    let e = ErrorFacts::of(&KafkaError::ClientConfig(
        RDKafkaConfRes::RD_KAFKA_CONF_UNKNOWN,
        "No such configuration property".into(),
        "linger.msx".into(),
        "5".into(),
    ));
    assert_eq!(e.origin, ErrorOrigin::Config);
    assert_eq!(e.code, None);
    for op in TxnOp::ALL {
        assert_eq!(
            decide(op, &e, 1, &POLICY),
            Decision::Fail(FailReason::Config)
        );
    }
    let e = ErrorFacts::of(&KafkaError::ClientCreation("no memory".into()));
    assert_eq!(
        decide(TxnOp::InitTransactions, &e, 1, &POLICY),
        Decision::Fail(FailReason::Config)
    );
    let e = ErrorFacts::of(&KafkaError::Canceled);
    assert_eq!(
        decide(TxnOp::Commit, &e, 1, &POLICY),
        new_producer(NewProducerReason::Unclassified)
    );
}

#[test]
fn bare_codes_get_derived_flags() {
    let e = ErrorFacts::of(&KafkaError::Flush(C::OperationTimedOut));
    assert!(e.retriable && !e.fatal && !e.txn_requires_abort);
    let e = ErrorFacts::of(&KafkaError::MessageConsumptionFatal(C::Fenced));
    assert!(e.fatal && !e.retriable);
    let e = ErrorFacts::of(&KafkaError::MessageProduction(C::InvalidRecord));
    assert!(!e.retriable && !e.fatal && !e.txn_requires_abort);
    assert_eq!(e.code, Some(C::InvalidRecord));
}

#[test]
fn decisions_read_well() {
    assert_eq!(
        Decision::RetryAfter {
            backoff: Duration::from_millis(200),
            retry: 2
        }
        .to_string(),
        "retry #2 after 200ms"
    );
    assert_eq!(
        new_producer(NewProducerReason::UnknownCommitOutcome).to_string(),
        "replace the producer and recover (UnknownCommitOutcome)"
    );
    assert!(
        Decision::Fail(FailReason::TransactionTimeout)
            .to_string()
            .contains("transaction.max.timeout.ms")
    );
}

/// Every combination of operation, flags, origin and a spread of codes gets a decision,
/// and a few invariants hold for all of them.
#[test]
fn invariants_over_every_combination() {
    let codes = [
        C::NoError,
        C::Unknown,
        C::Fatal,
        C::State,
        C::OperationTimedOut,
        C::QueueFull,
        C::MessageTimedOut,
        C::ProducerFenced,
        C::InvalidProducerEpoch,
        C::Fenced,
        C::ConcurrentTransactions,
        C::CoordinatorNotAvailable,
        C::InvalidTransactionTimeout,
        C::TransactionalIdAuthorizationFailed,
        C::UnknownTopicOrPartition,
        C::OutOfOrderSequenceNumber,
    ];
    let origins = [ErrorOrigin::Transactional, ErrorOrigin::Code];
    for op in TxnOp::ALL {
        for &code in &codes {
            for origin in origins {
                for bits in 0..8u8 {
                    for failures in [1, 2, POLICY.max_attempts - 1, POLICY.max_attempts, 100] {
                        let e = ErrorFacts {
                            origin,
                            code: Some(code),
                            fatal: bits & 1 != 0,
                            retriable: bits & 2 != 0,
                            txn_requires_abort: bits & 4 != 0,
                            fatal_cause: None,
                        };
                        let d = decide(op, &e, failures, &POLICY);
                        match d {
                            Decision::RetryAfter { backoff, retry } => {
                                assert!(e.retriable, "only retriable errors are retried");
                                assert!(failures < POLICY.max_attempts, "retries are bounded");
                                assert!(backoff <= POLICY.max_backoff);
                                assert_eq!(retry, failures);
                                assert!(!e.fatal, "a fatal producer is not retried");
                                // An abortable transaction is aborted, not retried
                                // (retrying the abort itself is the remedy).
                                if e.txn_requires_abort {
                                    assert!(matches!(op, TxnOp::Abort | TxnOp::InitTransactions));
                                }
                                assert_ne!(op, TxnOp::Poll);
                            }
                            Decision::AbortAndRecover(_) => {
                                assert!(!e.fatal, "a fatal producer cannot abort");
                                assert_ne!(
                                    op,
                                    TxnOp::Abort,
                                    "an abort is not answered by an abort"
                                );
                                assert_ne!(op, TxnOp::InitTransactions, "nothing to abort yet");
                            }
                            Decision::NewProducerAndRecover(_) | Decision::Fail(_) => {}
                        }
                        if is_fenced(code) && fail_reason(code, e.retriable).is_none() {
                            assert_eq!(d, new_producer(NewProducerReason::Fenced));
                        }
                        if op == TxnOp::Commit {
                            // The commit is never taken as done, and an unknown outcome
                            // is never answered by a plain abort of the same producer
                            // unless librdkafka said the transaction is abortable.
                            if let Decision::AbortAndRecover(r) = d {
                                assert_eq!(r, AbortReason::Abortable);
                                assert!(e.txn_requires_abort);
                            }
                        }
                    }
                }
            }
        }
    }
}

// --- formats -----------------------------------------------------------------------

#[test]
fn base64_matches_rfc_4648_test_vectors() {
    for (plain, encoded) in [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ] {
        let mut out = Vec::new();
        super::format::base64(&mut out, plain.as_bytes());
        assert_eq!(String::from_utf8(out).unwrap(), encoded, "{plain}");
    }
}

#[test]
fn string_fields_are_found_without_a_parse() {
    use super::format::string_field;
    let v = br#"{"event_id":"c-1:1","correlation_id":"co \"7\"","n":1}"#;
    assert_eq!(string_field(v, "correlation_id"), Some(&br#"co \"7\""#[..]));
    assert_eq!(string_field(v, "event_id"), Some(&b"c-1:1"[..]));
    assert_eq!(string_field(v, "n"), None);
    assert_eq!(string_field(v, "missing"), None);
    assert_eq!(string_field(br#"{"a":"unterminated"#, "a"), None);
}

#[test]
fn a_binary_mode_cloudevent_becomes_its_structured_envelope() {
    use rdkafka::message::{Header, OwnedHeaders, OwnedMessage, Timestamp};
    let message = |headers: OwnedHeaders, value: &[u8]| {
        OwnedMessage::new(
            Some(value.to_vec()),
            None,
            "t".into(),
            Timestamp::NotAvailable,
            0,
            0,
            Some(headers),
        )
    };
    let h = |pairs: &[(&str, &str)]| {
        pairs.iter().fold(OwnedHeaders::new(), |h, (k, v)| {
            h.insert(Header {
                key: k,
                value: Some(*v),
            })
        })
    };
    let mut out = Vec::new();
    let json = message(
        h(&[
            ("ce_specversion", "1.0"),
            ("ce_id", "e-1"),
            ("ce_source", "/bank"),
            ("ce_type", "deposit"),
            ("ce_subject", "ACC-1"),
            ("content-type", "application/json"),
            ("traceparent", "ignored"),
        ]),
        br#"{"amount":5}"#,
    );
    assert!(super::format::binary_to_structured(&json, &mut out));
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"specversion":"1.0","id":"e-1","source":"/bank","type":"deposit",
            "subject":"ACC-1","datacontenttype":"application/json","data":{"amount":5}})
    );
    // Not JSON: data_base64.
    let bytes = message(
        h(&[
            ("ce_specversion", "1.0"),
            ("content-type", "application/octet-stream"),
        ]),
        b"foo",
    );
    assert!(super::format::binary_to_structured(&bytes, &mut out));
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["data_base64"], "Zm9v");
    // Structured mode (no ce_specversion header): left alone.
    let structured = message(
        h(&[("content-type", "application/cloudevents+json")]),
        b"{}",
    );
    assert!(!super::format::binary_to_structured(&structured, &mut out));
}

#[test]
fn a_structured_envelope_goes_out_in_binary_mode_and_reads_back_the_same() {
    use rdkafka::message::{Header, OwnedHeaders, OwnedMessage, Timestamp};
    let envelope = br#"{"specversion":"1.0","id":"c-1:1","source":"/bank/accounts","type":"Deposited","subject":"ACC-1","datacontenttype":"application/json","aggregate":"account","aggregateversion":2,"correlationid":"co \"7\"","data":{"amount":5,"note":"x"}}"#;
    let (mut headers, mut value) = (Vec::new(), Vec::new());
    super::format::structured_to_binary(envelope, &mut headers, &mut value).unwrap();
    let got: std::collections::BTreeMap<&str, &str> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), std::str::from_utf8(v).unwrap()))
        .collect();
    assert_eq!(got["ce_specversion"], "1.0");
    assert_eq!(got["ce_id"], "c-1:1");
    assert_eq!(got["ce_aggregateversion"], "2");
    assert_eq!(got["ce_correlationid"], "co \"7\"");
    assert_eq!(got["content-type"], "application/json");
    assert!(!got.contains_key("ce_datacontenttype") && !got.contains_key("ce_data"));
    assert_eq!(value, br#"{"amount":5,"note":"x"}"#);

    // The source's reading of it is the envelope again (the integer extension comes
    // back as a string: binary mode has only strings).
    let owned = headers.iter().fold(OwnedHeaders::new(), |h, (k, v)| {
        h.insert(Header {
            key: k,
            value: Some(v),
        })
    });
    let m = OwnedMessage::new(
        Some(value.clone()),
        None,
        "t".into(),
        Timestamp::NotAvailable,
        0,
        0,
        Some(owned),
    );
    let mut back = Vec::new();
    assert!(super::format::binary_to_structured(&m, &mut back));
    let mut want: serde_json::Value = serde_json::from_slice(envelope).unwrap();
    want["aggregateversion"] = "2".into();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&back).unwrap(),
        want
    );

    // data_base64 is decoded into the value; no data, no content type.
    super::format::structured_to_binary(
        br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"text/plain","data_base64":"Zm9vYmE="}"#,
        &mut headers,
        &mut value,
    )
    .unwrap();
    assert_eq!(value, b"fooba");
    super::format::structured_to_binary(
        br#"{"specversion":"1.0","id":"1","source":"/s","type":"t"}"#,
        &mut headers,
        &mut value,
    )
    .unwrap();
    assert!(value.is_empty() && !headers.iter().any(|(k, _)| k == "content-type"));
    assert!(
        super::format::structured_to_binary(b"[1]", &mut headers, &mut value).is_err()
            && super::format::structured_to_binary(br#"{"x":{"y":1}}"#, &mut headers, &mut value)
                .is_err()
    );
}

#[test]
fn input_headers_are_carried_except_their_encodings_and_onceflows_own_win() {
    use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage, Timestamp};
    let pairs = |h: &OwnedHeaders| -> Vec<(String, Option<String>)> {
        h.iter()
            .map(|x| {
                (
                    x.key.to_string(),
                    x.value.map(|v| String::from_utf8_lossy(v).into_owned()),
                )
            })
            .collect()
    };
    let input = OwnedHeaders::new()
        .insert(Header {
            key: "traceparent",
            value: Some("00-ab-01"),
        })
        .insert(Header {
            key: "ce_type",
            value: Some("Stale"),
        })
        .insert(Header {
            key: "Content-Type",
            value: Some("text/plain"),
        })
        .insert(Header::<&[u8]> {
            key: "tenant",
            value: None,
        })
        .insert(Header {
            key: "correlation_id",
            value: Some("theirs"),
        })
        .insert(Header {
            key: "onceflow.reason",
            value: Some("old"),
        });
    let m = OwnedMessage::new(
        Some(b"{}".to_vec()),
        None,
        "t".into(),
        Timestamp::NotAvailable,
        0,
        0,
        Some(input),
    );
    // The source keeps all but the input's own encoding (ce_*, content-type).
    let mut enc = Vec::new();
    super::format::carried_headers(m.headers().unwrap(), &mut enc);
    let kept: Vec<&[u8]> = onceflow_core::headers::iter(&enc).map(|(k, _)| k).collect();
    assert_eq!(
        kept,
        [
            &b"traceparent"[..],
            b"tenant",
            b"correlation_id",
            b"onceflow.reason"
        ]
    );

    // onceflow's own headers come first and replace same-named input ones.
    let own = OwnedHeaders::new().insert(Header {
        key: "correlation_id",
        value: Some("ours"),
    });
    let s = |k: &str, v: Option<&str>| (k.to_string(), v.map(str::to_string));
    assert_eq!(
        pairs(&super::sink::with_input_headers(&enc, Some(own), false)),
        [
            s("correlation_id", Some("ours")),
            s("traceparent", Some("00-ab-01")),
            s("tenant", None),
            s("onceflow.reason", Some("old")),
        ]
    );
    // Without its own, the input's correlation id stays; a dead letter drops every
    // input `onceflow.*` header (its own say why it failed this time).
    assert_eq!(
        pairs(&super::sink::with_input_headers(&enc, None, true)),
        [
            s("traceparent", Some("00-ab-01")),
            s("tenant", None),
            s("correlation_id", Some("theirs")),
        ]
    );
}
