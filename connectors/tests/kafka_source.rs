//! [`KafkaInput`], the Kafka topic as an onceflow source, against the test broker
//! (`scripts/kafka-broker start`; see DEVELOPERS.md). Skipped without
//! `ONCEFLOW_KAFKA_BROKERS`, a failure with `ONCEFLOW_KAFKA_REQUIRED=1`; the test of an
//! unreachable broker needs none and always runs.
//!
//! The test broker hands records of aborted transactions to read_committed consumers:
//! the aborted-transaction test checks onceflow's side only (positions, the committed
//! records, "caught up"), and accepts the aborted records either way.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{brokers, closed_port_address, create_topics, topic, unique};
use onceflow_connectors::kafka::{
    KafkaAdmin, KafkaConnection, KafkaConnectionConfig, KafkaInput, PropertyValue,
};
use onceflow_core::input::SourceInput;
use onceflow_core::log::RecordBuf;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

/// A connection that sees new records quickly: an empty fetch waits up to
/// `fetch.wait.max.ms` (500 ms by default), and the committed ends come every
/// `statistics.interval.ms`. Both are pass-through properties.
fn connection(brokers: &str) -> KafkaConnection {
    KafkaConnectionConfig {
        brokers: brokers.split(',').map(str::to_string).collect(),
        connect_timeout: Duration::from_secs(10),
        properties: BTreeMap::from([
            ("fetch.wait.max.ms".to_string(), PropertyValue::from("100")),
            (
                "statistics.interval.ms".to_string(),
                PropertyValue::from("100"),
            ),
        ]),
    }
    .validate("")
    .unwrap()
}

/// One record as read, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rec {
    offset: u64,
    timestamp_ms: u64,
    key: String,
    value: String,
}

/// Reads `partition` in chunks of `chunk` until its position reaches `end`: the
/// records read. Fails after 10 s.
fn read_until(input: &mut KafkaInput, partition: u32, end: u64, chunk: usize) -> Vec<Rec> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut out = Vec::new();
    let mut buf = RecordBuf::new();
    while input.position(partition) < end {
        assert!(
            Instant::now() < deadline,
            "partition {partition}: position {} after 10 s, waiting for {end} ({} records read)",
            input.position(partition),
            out.len()
        );
        buf.clear();
        let n = input.read(partition, chunk, u64::MAX, &mut buf).unwrap();
        assert!(n <= chunk, "{n} records for a read of at most {chunk}");
        assert_eq!(n, buf.len());
        for r in buf.iter() {
            assert_eq!(r.partition, partition, "a record of another partition");
            out.push(Rec {
                offset: r.offset,
                timestamp_ms: r.timestamp_ms,
                key: String::from_utf8(r.key.to_vec()).unwrap(),
                value: String::from_utf8(r.value.to_vec()).unwrap(),
            });
        }
        if n == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    out
}

/// Refreshes until `partition`'s committed end is `end`; fails after 10 s.
fn refresh_until(input: &mut KafkaInput, partition: u32, end: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        input.refresh().unwrap();
        if input.committed_end(partition) == end {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "partition {partition}: committed end {} after 10 s, expected {end}",
            input.committed_end(partition)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads for a while and expects nothing.
fn assert_nothing_more(input: &mut KafkaInput, partition: u32) {
    let mut buf = RecordBuf::new();
    let until = Instant::now() + Duration::from_millis(300);
    while Instant::now() < until {
        assert_eq!(
            input.read(partition, 100, u64::MAX, &mut buf).unwrap(),
            0,
            "{buf:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn producer(conn: &KafkaConnection) -> BaseProducer {
    conn.client_config()
        .set("enable.idempotence", "true")
        .create()
        .unwrap()
}

fn transactional(conn: &KafkaConnection, txn_id: &str) -> BaseProducer {
    let p: BaseProducer = conn
        .client_config()
        .set("transactional.id", txn_id)
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    p.init_transactions(Duration::from_secs(10)).unwrap();
    p
}

fn send(p: &BaseProducer, topic: &str, partition: Option<i32>, key: &str, value: &str) {
    let mut r = BaseRecord::to(topic).key(key).payload(value);
    if let Some(partition) = partition {
        r = r.partition(partition);
    }
    p.send(r).map_err(|(e, _)| e).unwrap();
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn values(recs: &[Rec]) -> Vec<&str> {
    recs.iter().map(|r| r.value.as_str()).collect()
}

fn offsets(recs: &[Rec]) -> Vec<u64> {
    recs.iter().map(|r| r.offset).collect()
}

#[test]
fn reads_each_partition_in_offset_order_and_seeks_back() {
    let Some(brokers) = brokers("reads_each_partition_in_offset_order_and_seeks_back") else {
        return;
    };
    let conn = connection(&brokers);
    let name = unique("source-keyed");
    create_topics(
        &KafkaAdmin::connect(&conn).unwrap(),
        &[topic(&name, 4, true)],
    );
    const N: usize = 400;
    let before_ms = now_ms();
    let p = producer(&conn);
    for i in 0..N {
        // The default partitioner spreads the keys over the partitions.
        send(&p, &name, None, &format!("k{}", i % 23), &format!("{i}"));
    }
    p.flush(Duration::from_secs(10)).unwrap();

    // Manual assignment: no group join, so records are there at once (a subscribing
    // consumer waits ~half of session.timeout.ms on the test broker).
    let started = Instant::now();
    let mut input = KafkaInput::new(&conn, &name, &unique("group")).unwrap();
    let new_took = started.elapsed();
    assert_eq!(input.partitions(), [0, 1, 2, 3]);
    let ends: Vec<u64> = (0..4).map(|p| input.committed_end(p)).collect();
    assert_eq!(ends.iter().sum::<u64>(), N as u64, "{ends:?}");
    assert!(
        ends.iter().filter(|e| **e > 0).count() >= 2,
        "keys on one partition only: {ends:?}"
    );

    let mut read: BTreeMap<u32, Vec<Rec>> = BTreeMap::new();
    for p in input.partitions() {
        assert_eq!(input.position(p), 0);
        // Small reads: `max` is honoured and reads continue where they stopped.
        read.insert(p, read_until(&mut input, p, ends[p as usize], 7));
        assert_eq!(input.position(p), input.committed_end(p));
    }
    let all_read = started.elapsed();

    let after_ms = now_ms();
    let mut key_partition: BTreeMap<&str, u32> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for (p, recs) in &read {
        // A plain producer's records: dense offsets from 0.
        assert_eq!(offsets(recs), (0..ends[*p as usize]).collect::<Vec<_>>());
        // In the order produced.
        let idx: Vec<usize> = recs.iter().map(|r| r.value.parse().unwrap()).collect();
        assert!(
            idx.windows(2).all(|w| w[0] < w[1]),
            "partition {p}: {idx:?}"
        );
        for r in recs {
            assert_eq!(
                r.key,
                format!("k{}", r.value.parse::<usize>().unwrap() % 23)
            );
            assert_eq!(*key_partition.entry(&r.key).or_insert(*p), *p, "{r:?}");
            assert!(
                (before_ms - 1000..=after_ms + 1000).contains(&r.timestamp_ms),
                "{r:?} not stamped between {before_ms} and {after_ms}"
            );
            assert!(seen.insert(r.value.clone()), "{r:?} twice");
        }
    }
    assert_eq!(seen.len(), N);
    assert_nothing_more(&mut input, 0);

    // Seek to the middle of the fullest partition and read the rest again.
    let (&p, recs) = read.iter().max_by_key(|(_, r)| r.len()).unwrap();
    let mid = recs.len() as u64 / 2;
    input.seek(p, mid).unwrap();
    assert_eq!(input.position(p), mid);
    let again = read_until(&mut input, p, ends[p as usize], 1000);
    assert_eq!(again, recs[mid as usize..]);
    // And from the start.
    input.seek(p, 0).unwrap();
    assert_eq!(read_until(&mut input, p, ends[p as usize], 1000), *recs);

    let err = input
        .read(9, 10, u64::MAX, &mut RecordBuf::new())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("'{name}' partition 9 at {brokers}")),
        "{err}"
    );
    eprintln!(
        "reads_each_partition_in_offset_order_and_seeks_back: new() {new_took:?}, \
         {N} records of 4 partitions read after {all_read:?}"
    );
    assert!(new_took < Duration::from_secs(5), "new() took {new_took:?}");
}

#[test]
fn refresh_sees_new_records_and_the_committed_end_grows() {
    let Some(brokers) = brokers("refresh_sees_new_records_and_the_committed_end_grows") else {
        return;
    };
    let conn = connection(&brokers);
    let name = unique("source-refresh");
    create_topics(
        &KafkaAdmin::connect(&conn).unwrap(),
        &[topic(&name, 2, true)],
    );
    let p = producer(&conn);
    for i in 0..5 {
        send(&p, &name, Some(1), "k", &format!("a{i}"));
    }
    p.flush(Duration::from_secs(10)).unwrap();

    let mut input = KafkaInput::new(&conn, &name, &unique("group")).unwrap();
    assert_eq!((input.committed_end(0), input.committed_end(1)), (0, 5));
    let first = read_until(&mut input, 1, 5, 100);
    assert_eq!(values(&first), ["a0", "a1", "a2", "a3", "a4"]);
    assert_nothing_more(&mut input, 1);
    assert_nothing_more(&mut input, 0);

    for i in 0..3 {
        send(&p, &name, Some(1), "k", &format!("b{i}"));
    }
    p.flush(Duration::from_secs(10)).unwrap();
    // As of the last refresh, until the next.
    assert_eq!(input.committed_end(1), 5);
    refresh_until(&mut input, 1, 8);
    assert_eq!(input.committed_end(0), 0);
    let more = read_until(&mut input, 1, 8, 100);
    assert_eq!(offsets(&more), [5, 6, 7]);
    assert_eq!(values(&more), ["b0", "b1", "b2"]);
    assert_eq!(input.position(1), input.committed_end(1));
}

/// A transaction's records become readable when it commits; its commit marker takes
/// an offset that is never delivered, and the position still reaches the committed end.
#[test]
fn a_committed_transaction_is_read_and_caught_up_after_its_control_record() {
    let Some(brokers) =
        brokers("a_committed_transaction_is_read_and_caught_up_after_its_control_record")
    else {
        return;
    };
    let conn = connection(&brokers);
    let name = unique("source-txn");
    create_topics(
        &KafkaAdmin::connect(&conn).unwrap(),
        &[topic(&name, 1, true)],
    );
    let plain = producer(&conn);
    for i in 0..3 {
        send(&plain, &name, Some(0), "k", &format!("plain-{i}"));
    }
    plain.flush(Duration::from_secs(10)).unwrap();
    let txn = transactional(&conn, &unique("source-txn"));
    txn.begin_transaction().unwrap();
    for i in 0..4 {
        send(&txn, &name, Some(0), "k", &format!("txn-{i}"));
    }
    txn.flush(Duration::from_secs(10)).unwrap();

    // The transaction is open: its records are on the broker (offsets 3..=6) but the
    // committed end stops before them (the last stable offset, not the high watermark).
    let mut input = KafkaInput::new(&conn, &name, &unique("group")).unwrap();
    assert_eq!(input.committed_end(0), 3);
    let before = read_until(&mut input, 0, 3, 100);
    assert_eq!(values(&before), ["plain-0", "plain-1", "plain-2"]);
    assert_nothing_more(&mut input, 0);
    input.refresh().unwrap();
    assert_eq!(input.committed_end(0), 3);

    txn.commit_transaction(Duration::from_secs(10)).unwrap();
    // 3 plain records, 4 of the transaction, its commit marker at 7.
    refresh_until(&mut input, 0, 8);
    // What `--until-end` does: read until the position reaches the end seen at start.
    let end = input.committed_end(0);
    let committed = read_until(&mut input, 0, end, 100);
    assert_eq!(offsets(&committed), [3, 4, 5, 6]);
    assert_eq!(values(&committed), ["txn-0", "txn-1", "txn-2", "txn-3"]);
    // Caught up over the control record.
    assert_eq!(input.position(0), 8);
    assert_eq!(input.position(0), input.committed_end(0));
    assert_nothing_more(&mut input, 0);
    assert_eq!(input.position(0), 8);

    // A seek onto the control record itself: nothing to read, and caught up again.
    input.seek(0, 7).unwrap();
    assert_eq!(input.position(0), 7);
    assert!(read_until(&mut input, 0, 8, 100).is_empty());
    assert_eq!(input.position(0), 8);
    // From before the transaction: its records again, then caught up.
    input.seek(0, 2).unwrap();
    let again = read_until(&mut input, 0, 8, 100);
    assert_eq!(offsets(&again), [2, 3, 4, 5, 6]);

    // A read bounded by an offset (how a replay stops exactly at the committed offset)
    // returns nothing at or past it, whatever was already fetched; the record it polled
    // past the bound comes with the next read.
    input.seek(0, 0).unwrap();
    let mut got = Vec::new();
    let mut buf = RecordBuf::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while input.position(0) < 5 {
        assert!(
            Instant::now() < deadline,
            "bounded read stuck at {}",
            input.position(0)
        );
        buf.clear();
        input.read(0, 100, 5, &mut buf).unwrap();
        got.extend(buf.iter().map(|r| r.offset));
    }
    assert_eq!(got, [0, 1, 2, 3, 4]);
    buf.clear();
    assert_eq!(input.read(0, 100, 5, &mut buf).unwrap(), 0);
    assert_eq!(input.position(0), 5);
    let rest = read_until(&mut input, 0, 8, 100);
    assert_eq!(offsets(&rest), [5, 6]);
}

/// An aborted transaction, then a committed one. Kafka never delivers the aborted
/// records to a read_committed consumer; the test broker does (DEVELOPERS.md). Either
/// way onceflow reads the committed records in order and catches up.
#[test]
fn after_an_aborted_and_a_committed_transaction_the_position_catches_up() {
    let Some(brokers) =
        brokers("after_an_aborted_and_a_committed_transaction_the_position_catches_up")
    else {
        return;
    };
    let conn = connection(&brokers);
    let name = unique("source-abort");
    create_topics(
        &KafkaAdmin::connect(&conn).unwrap(),
        &[topic(&name, 1, true)],
    );
    let txn = transactional(&conn, &unique("source-abort"));
    txn.begin_transaction().unwrap();
    send(&txn, &name, Some(0), "k", "aborted-0");
    send(&txn, &name, Some(0), "k", "aborted-1");
    txn.flush(Duration::from_secs(10)).unwrap();
    txn.abort_transaction(Duration::from_secs(10)).unwrap();
    txn.begin_transaction().unwrap();
    send(&txn, &name, Some(0), "k", "committed-0");
    send(&txn, &name, Some(0), "k", "committed-1");
    txn.commit_transaction(Duration::from_secs(10)).unwrap();

    // aborted 0..=1, abort marker 2, committed 3..=4, commit marker 5.
    let mut input = KafkaInput::new(&conn, &name, &unique("group")).unwrap();
    refresh_until(&mut input, 0, 6);
    let recs = read_until(&mut input, 0, 6, 100);
    assert_eq!(input.position(0), 6);
    assert_eq!(input.position(0), input.committed_end(0));
    assert!(offsets(&recs).windows(2).all(|w| w[0] < w[1]), "{recs:?}");
    let committed: Vec<&Rec> = recs
        .iter()
        .filter(|r| r.value.starts_with("committed"))
        .collect();
    assert_eq!(
        committed.iter().map(|r| r.offset).collect::<Vec<_>>(),
        [3, 4]
    );
    let aborted: Vec<u64> = recs
        .iter()
        .filter(|r| r.value.starts_with("aborted"))
        .map(|r| r.offset)
        .collect();
    // Kafka: none; the test broker: both.
    assert!(aborted.is_empty() || aborted == [0, 1], "{recs:?}");
    eprintln!(
        "after_an_aborted_and_a_committed_transaction_the_position_catches_up: \
         the broker delivered {} aborted records",
        aborted.len()
    );
}

#[test]
fn a_missing_topic_is_an_error_naming_it_and_the_brokers() {
    let Some(brokers) = brokers("a_missing_topic_is_an_error_naming_it_and_the_brokers") else {
        return;
    };
    let missing = unique("no-such-topic");
    let err = KafkaInput::new(&connection(&brokers), &missing, "g")
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!("Kafka topic '{missing}' does not exist at {brokers} (create it first)")
    );
    // And it was not created on the way.
    let admin = KafkaAdmin::connect(&connection(&brokers)).unwrap();
    assert_eq!(admin.partition_counts(&[&missing]).unwrap()[&missing], None);
}

#[test]
fn an_unreachable_broker_is_reported_with_its_address_and_the_topic() {
    let addr = closed_port_address();
    let conn = KafkaConnection::from_broker_list(&addr, Duration::from_secs(2)).unwrap();
    let started = Instant::now();
    let err = KafkaInput::new(&conn, "events", "g")
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(&format!(
            "Kafka topic 'events': broker unreachable at {addr}"
        )),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(5), "{err}");
}
