//! The Kafka building blocks against a real broker: the one `scripts/kafka-broker start`
//! runs on loopback (see DEVELOPERS.md).
//!
//! Each test needs `ONCEFLOW_KAFKA_BROKERS` and is skipped with a printed reason when it
//! is unset, so that `cargo test` alone still works; `scripts/test` sets
//! `ONCEFLOW_KAFKA_REQUIRED=1`, which turns a missing broker into a failure. The test
//! for an unreachable broker needs none and always runs.
//!
//! Every test makes topics, groups and transactional ids of its own (the broker is
//! shared and keeps them until it stops). The test broker hands records of *aborted*
//! transactions to read_committed consumers, so no test here aborts a transaction and
//! then expects its records to be invisible.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{brokers, closed_port_address, connection, create_topics, topic, unique};

use onceflow_connectors::kafka::{
    AdminError, Decision, ErrorFacts, KafkaAdmin, KafkaConnection, NewProducerReason, RetryPolicy,
    TopicConfig, TopicProblem, TxnOp, decide,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

/// Reads `topic` (all its partitions, from the start) with a read_committed consumer
/// until the end of every partition; returns the payloads in partition order.
fn read_committed(conn: &KafkaConnection, topic: &str, partitions: i32) -> Vec<String> {
    let consumer = common::reader_from_start(&conn.bootstrap_servers, topic, partitions as u32);
    let mut out: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    let mut at_end = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while at_end.len() < partitions as usize {
        assert!(
            Instant::now() < deadline,
            "{topic}: no end of partition after 15 s"
        );
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Ok(m)) => out
                .entry(m.partition())
                .or_default()
                .push(String::from_utf8(m.payload().unwrap().to_vec()).unwrap()),
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => panic!("{topic}: {e}"),
        }
    }
    out.into_values().flatten().collect()
}

#[test]
fn an_unreachable_broker_is_reported_with_its_address_without_hanging() {
    let addr = closed_port_address();
    let conn = KafkaConnection::from_broker_list(&addr, Duration::from_secs(2)).unwrap();
    let started = Instant::now();
    let err = KafkaAdmin::connect(&conn).unwrap_err();
    let took = started.elapsed();
    let text = err.to_string();
    assert!(matches!(err, AdminError::Unreachable { .. }), "{text}");
    assert!(
        text.starts_with(&format!("broker unreachable at {addr} (tried for 2.")),
        "{text}"
    );
    assert!(text.contains("Connection refused"), "{text}");
    assert!(took < Duration::from_secs(5), "took {took:?}: {text}");
}

#[test]
fn admin_creates_missing_topics_and_checks_partition_counts() {
    let Some(brokers) = brokers("admin_creates_missing_topics_and_checks_partition_counts") else {
        return;
    };
    let admin = KafkaAdmin::connect(&connection(&brokers)).unwrap();
    let events = topic(&unique("events"), 3, true);
    let changelog = TopicConfig {
        compacted: true,
        replication_factor: Some(1),
        ..topic(&unique("changelog"), 2, true)
    };
    assert!(changelog.validate("t").is_empty());
    let wanted = [events.clone(), changelog.clone()];

    let report = admin.ensure_topics(&wanted).unwrap();
    assert_eq!(
        report.created,
        [events.name.clone(), changelog.name.clone()]
    );
    assert!(report.existing.is_empty());
    let counts = admin
        .partition_counts(&[&events.name, &changelog.name, "no-such-topic"])
        .unwrap();
    assert_eq!(counts[&events.name], Some(3));
    assert_eq!(counts[&changelog.name], Some(2));
    assert_eq!(counts["no-such-topic"], None);
    let policies = admin.cleanup_policies(&[&changelog.name]).unwrap();
    assert_eq!(policies[&changelog.name].as_deref(), Some("compact"));

    // A second start finds them.
    let report = admin.ensure_topics(&wanted).unwrap();
    assert_eq!(
        report.existing,
        [events.name.clone(), changelog.name.clone()]
    );
    assert!(report.created.is_empty());

    // A missing topic not to be created, a partition mismatch and a changelog that is
    // not compacted: all reported.
    let missing = topic(&unique("missing"), 1, false);
    let not_compacted = TopicConfig {
        compacted: true,
        ..topic(&events.name, 3, false)
    };
    let err = admin
        .ensure_topics(&[missing.clone(), topic(&events.name, 4, true), not_compacted])
        .unwrap_err();
    match &err {
        AdminError::Topics { problems, .. } => assert_eq!(
            problems,
            &[
                TopicProblem::Missing {
                    topic: missing.name.clone()
                },
                TopicProblem::Partitions {
                    topic: events.name.clone(),
                    expected: 4,
                    actual: 3
                },
                TopicProblem::NotCompacted {
                    topic: events.name.clone(),
                    policy: problems_policy(problems),
                },
            ]
        ),
        other => panic!("{other}"),
    }
    let text = err.to_string();
    assert!(text.contains(&format!("topics at {brokers}:")), "{text}");
    assert!(text.contains("set create = true"), "{text}");
    assert!(
        text.contains("has 3 partitions, the pipeline expects 4"),
        "{text}"
    );
    assert!(
        text.contains("is a changelog but its cleanup.policy is"),
        "{text}"
    );
    // Nothing was created on the way.
    assert_eq!(
        admin.partition_counts(&[&missing.name]).unwrap()[&missing.name],
        None
    );
}

/// The cleanup policy the broker reported for the uncompacted topic: Kafka says
/// "delete" (its default); a broker may also say nothing.
fn problems_policy(problems: &[TopicProblem]) -> Option<String> {
    problems.iter().find_map(|p| match p {
        TopicProblem::NotCompacted { policy, .. } => {
            assert!(
                matches!(policy.as_deref(), None | Some("delete")),
                "{policy:?}"
            );
            policy.clone()
        }
        _ => None,
    })
}

/// The exactly-once step of a consume-transform-produce loop: outputs and the input
/// offsets they consumed commit in one transaction.
#[test]
fn a_transaction_commits_outputs_and_input_offsets_together() {
    let Some(brokers) = brokers("a_transaction_commits_outputs_and_input_offsets_together") else {
        return;
    };
    let conn = connection(&brokers);
    let admin = KafkaAdmin::connect(&conn).unwrap();
    let (input, output) = (unique("input"), unique("output"));
    create_topics(&admin, &[topic(&input, 2, true), topic(&output, 1, true)]);

    // Inputs, from a plain producer.
    let plain: BaseProducer = conn.client_config().create().unwrap();
    for i in 0..6 {
        let key = format!("k{i}");
        let payload = format!("in-{i}");
        plain
            .send(
                BaseRecord::to(&input)
                    .partition(i % 2)
                    .key(&key)
                    .payload(&payload),
            )
            .unwrap();
    }
    plain.flush(Duration::from_secs(10)).unwrap();

    // The source side: a consumer group, read_committed, no auto-commit, cooperative.
    let group = unique("group");
    let consumer: BaseConsumer = conn
        .client_config()
        .set("group.id", &group)
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        // The test broker completes a group's first join after about half the session
        // timeout: ~3.5 s here, ~23 s with librdkafka's default of 45 s.
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1000")
        .create()
        .unwrap();
    consumer.subscribe(&[&input]).unwrap();
    let mut consumed = Vec::new();
    let mut next_offsets: BTreeMap<i32, i64> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while consumed.len() < 6 {
        assert!(
            Instant::now() < deadline,
            "consumed only {consumed:?} in 20 s"
        );
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m.unwrap();
            consumed.push(String::from_utf8(m.payload().unwrap().to_vec()).unwrap());
            next_offsets.insert(m.partition(), m.offset() + 1);
        }
    }
    consumed.sort();
    assert_eq!(consumed, ["in-0", "in-1", "in-2", "in-3", "in-4", "in-5"]);

    // The sink side: one transaction with the outputs and the input offsets.
    let producer = transactional(&conn, &unique("txn"));
    producer.init_transactions(Duration::from_secs(10)).unwrap();
    producer.begin_transaction().unwrap();
    for c in &consumed {
        let out = c.replace("in-", "out-");
        producer
            .send(BaseRecord::<(), _>::to(&output).payload(&out))
            .map_err(|(e, _)| e)
            .unwrap();
    }
    let mut offsets = TopicPartitionList::new();
    for (&p, &o) in &next_offsets {
        offsets
            .add_partition_offset(&input, p, Offset::Offset(o))
            .unwrap();
    }
    let metadata = consumer.group_metadata().unwrap();
    producer
        .send_offsets_to_transaction(&offsets, &metadata, Duration::from_secs(10))
        .unwrap();
    producer
        .commit_transaction(Duration::from_secs(10))
        .unwrap();

    // A read_committed reader sees every output once.
    let seen = read_committed(&conn, &output, 1);
    assert_eq!(seen, ["out-0", "out-1", "out-2", "out-3", "out-4", "out-5"]);

    // The group's committed offsets moved with the transaction.
    let mut asked = TopicPartitionList::new();
    asked.add_partition(&input, 0);
    asked.add_partition(&input, 1);
    let committed = consumer
        .committed_offsets(asked, Duration::from_secs(10))
        .unwrap();
    let got: BTreeMap<i32, Offset> = committed
        .elements()
        .iter()
        .map(|e| (e.partition(), e.offset()))
        .collect();
    assert_eq!(
        got,
        BTreeMap::from([(0, Offset::Offset(3)), (1, Offset::Offset(3))])
    );
}

/// A restarted instance (same `transactional.id`) fences its zombie; the zombie's next
/// write fails and the error state machine says: new producer, then Recovery.
#[test]
fn a_zombie_producer_is_fenced_and_told_to_recover_with_a_new_producer() {
    let Some(brokers) =
        brokers("a_zombie_producer_is_fenced_and_told_to_recover_with_a_new_producer")
    else {
        return;
    };
    let conn = connection(&brokers);
    let admin = KafkaAdmin::connect(&conn).unwrap();
    let output = unique("fenced-out");
    create_topics(&admin, &[topic(&output, 1, true)]);
    let txn_id = unique("pipeline.instance-0");

    let zombie = transactional(&conn, &txn_id);
    zombie.init_transactions(Duration::from_secs(10)).unwrap();
    zombie.begin_transaction().unwrap();

    // The restarted instance: its init_transactions fences the zombie.
    let successor = transactional(&conn, &txn_id);
    successor
        .init_transactions(Duration::from_secs(10))
        .unwrap();

    // The zombie wakes up and writes its epoch's outputs.
    zombie
        .send(BaseRecord::<(), _>::to(&output).payload("from the zombie"))
        .map_err(|(e, _)| e)
        .unwrap();
    let err = zombie
        .commit_transaction(Duration::from_secs(10))
        .expect_err("a fenced producer must not commit");
    let facts = ErrorFacts::of(&err).with_fatal_error(zombie.client().fatal_error());
    let decision = decide(TxnOp::Commit, &facts, 1, &RetryPolicy::default());
    assert_eq!(
        decision,
        Decision::NewProducerAndRecover(NewProducerReason::Fenced),
        "{err} / {facts:?}"
    );

    // The successor works, and only its records are visible.
    successor.begin_transaction().unwrap();
    successor
        .send(BaseRecord::<(), _>::to(&output).payload("from the successor"))
        .map_err(|(e, _)| e)
        .unwrap();
    successor
        .commit_transaction(Duration::from_secs(10))
        .unwrap();
    assert_eq!(read_committed(&conn, &output, 1), ["from the successor"]);
}

/// A zombie fenced after its records reached the broker: its commit must never come
/// back as done. Kafka answers the commit with PRODUCER_FENCED (→ Fenced); the test
/// broker drops the connection instead, so the commit times out (→ after the retry
/// budget, UnknownCommitOutcome). Either way: a new producer and Recovery.
#[test]
fn a_zombie_fenced_with_records_in_flight_never_commits() {
    let Some(brokers) = brokers("a_zombie_fenced_with_records_in_flight_never_commits") else {
        return;
    };
    let conn = connection(&brokers);
    let admin = KafkaAdmin::connect(&conn).unwrap();
    let output = unique("fenced-inflight");
    create_topics(&admin, &[topic(&output, 1, true)]);
    let txn_id = unique("pipeline.instance-1");

    let zombie = transactional(&conn, &txn_id);
    zombie.init_transactions(Duration::from_secs(10)).unwrap();
    zombie.begin_transaction().unwrap();
    zombie
        .send(BaseRecord::<(), _>::to(&output).payload("from the zombie"))
        .map_err(|(e, _)| e)
        .unwrap();
    zombie.flush(Duration::from_secs(10)).unwrap();

    let successor = transactional(&conn, &txn_id);
    successor
        .init_transactions(Duration::from_secs(10))
        .unwrap();

    let err = zombie
        .commit_transaction(Duration::from_secs(2))
        .expect_err("a fenced producer must not commit");
    let facts = ErrorFacts::of(&err).with_fatal_error(zombie.client().fatal_error());
    // One try only: the budget is spent by this failure.
    let policy = RetryPolicy {
        max_attempts: 1,
        ..RetryPolicy::default()
    };
    let decision = decide(TxnOp::Commit, &facts, 1, &policy);
    assert!(
        matches!(
            decision,
            Decision::NewProducerAndRecover(
                NewProducerReason::Fenced | NewProducerReason::UnknownCommitOutcome
            )
        ),
        "{decision:?}: {err} / {facts:?}"
    );
}

fn transactional(conn: &KafkaConnection, txn_id: &str) -> BaseProducer {
    conn.client_config()
        .set("transactional.id", txn_id)
        .set("enable.idempotence", "true")
        .create()
        .unwrap()
}
