//! What the broker tests share: the broker's address (or why a test is skipped), names
//! no other test uses, topics.
//!
//! Each test needs `ONCEFLOW_KAFKA_BROKERS` and is skipped with a printed reason when it
//! is unset, so that `cargo test` alone still works; `scripts/test` sets
//! `ONCEFLOW_KAFKA_REQUIRED=1`, which turns a missing broker into a failure.

// Each test file uses its own part of this module.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use onceflow_connectors::kafka::{KafkaAdmin, KafkaConnection, TopicConfig};

/// The test broker's address, or `None` (after saying why) when the test is skipped.
pub fn brokers(test: &str) -> Option<String> {
    match std::env::var("ONCEFLOW_KAFKA_BROKERS") {
        Ok(b) if !b.trim().is_empty() => Some(b),
        _ if std::env::var("ONCEFLOW_KAFKA_REQUIRED").as_deref() == Ok("1") => panic!(
            "ONCEFLOW_KAFKA_REQUIRED=1 but ONCEFLOW_KAFKA_BROKERS is unset: \
             start a broker with `scripts/kafka-broker start` and export what it prints"
        ),
        _ => {
            // Straight to stderr: the test harness captures print!/eprint! of passing tests.
            let _ = writeln!(
                std::io::stderr(),
                "{test}: skipped: ONCEFLOW_KAFKA_BROKERS is unset \
                 (run `export $(scripts/kafka-broker start)` first; scripts/test does)"
            );
            None
        }
    }
}

pub fn connection(brokers: &str) -> KafkaConnection {
    KafkaConnection::from_broker_list(brokers, Duration::from_secs(10)).unwrap()
}

/// A name no other test (or earlier run against the same broker) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn topic(name: &str, partitions: u32, create: bool) -> TopicConfig {
    TopicConfig {
        name: name.to_string(),
        partitions,
        replication_factor: None,
        create,
        compacted: false,
        config: BTreeMap::new(),
    }
}

pub fn create_topics(admin: &KafkaAdmin, topics: &[TopicConfig]) {
    let report = admin.ensure_topics(topics).unwrap();
    assert_eq!(report.created.len(), topics.len(), "{report:?}");
}

/// The address of a loopback port nothing listens on (bound, then released).
pub fn closed_port_address() -> String {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    format!("127.0.0.1:{port}")
}

/// A read_committed consumer of every partition of `topic` from its start, reporting
/// each partition's end (`enable.partition.eof`), in a group of its own that never
/// commits: how tests read what was committed.
pub fn reader_from_start(
    brokers: &str,
    topic: &str,
    partitions: u32,
) -> rdkafka::consumer::BaseConsumer {
    use rdkafka::consumer::Consumer;
    let c: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("reader"))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p as i32, rdkafka::Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    c
}
