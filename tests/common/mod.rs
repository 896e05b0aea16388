//! Helpers shared by the end-to-end tests: run the real binary, read logs back.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

use onceflow_core::log::{LogReader, RecordBuf};

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_onceflow"))
}

pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run onceflow");
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// One record read back from a log.
#[derive(Debug, Clone)]
pub struct Rec {
    pub partition: u32,
    pub offset: u64,
    pub key: String,
    pub value: serde_json::Value,
}

/// One record of a log, raw.
#[derive(Debug, Clone)]
pub struct RawRec {
    pub partition: u32,
    pub offset: u64,
    pub ts: u64,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// Every committed record of a topic, raw, partition by partition, in offset order.
pub fn read_raw(dir: &Path, topic: &str) -> Vec<RawRec> {
    let reader = LogReader::open(dir, topic)
        .unwrap_or_else(|e| panic!("open {}/{topic}: {e}", dir.display()));
    let mut out = Vec::new();
    let mut buf = RecordBuf::new();
    for p in 0..reader.partitions() {
        let mut c = reader.cursor(p, 0).unwrap();
        loop {
            buf.clear();
            if c.read(&reader, 10_000, &mut buf).unwrap() == 0 {
                break;
            }
            out.extend(buf.iter().map(|r| RawRec {
                partition: r.partition,
                offset: r.offset,
                ts: r.timestamp_ms,
                key: r.key.to_vec(),
                value: r.value.to_vec(),
            }));
        }
    }
    out
}

/// Every committed record of a topic, partition by partition, in offset order, with
/// its value parsed.
pub fn read_topic(dir: &Path, topic: &str) -> Vec<Rec> {
    read_raw(dir, topic)
        .into_iter()
        .map(|r| Rec {
            partition: r.partition,
            offset: r.offset,
            key: String::from_utf8(r.key).unwrap(),
            value: serde_json::from_slice(&r.value).unwrap(),
        })
        .collect()
}

/// Writes a pipeline file for the bank workload into `dir`.
pub fn bank_pipeline(
    dir: &Path,
    emit: &str,
    commit_interval: &str,
    extra: &str,
) -> std::path::PathBuf {
    let path = dir.join("pipeline.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[pipeline]
name = "bank-test"
shards = 2
commit_interval = "{commit_interval}"
state_dir = "state"

[[sources]]
name = "ledger"
type = "log"
path = "input"
topic = "entries"

[key]
field = "account"
sequence = "seq"

[view]
topic = "balances"
partitions = 3
emit = "{emit}"

[view.fields]
balance = {{ op = "sum", field = "amount" }}
entries = {{ op = "count" }}
{extra}
"#
        ),
    )
    .unwrap();
    path
}

/// JSON lines of a file.
pub fn jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A JSON file.
pub fn json_file(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `onceflow log read DIR --topic T --compact`: the latest value per key.
pub fn compact(dir: &Path, topic: &str) -> serde_json::Value {
    let out = run_ok(
        bin()
            .args(["log", "read"])
            .arg(dir)
            .args(["--topic", topic, "--compact"]),
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `onceflow run --until-end --quiet PIPELINE`; its summary.
pub fn run_until_end(pipeline: &Path) -> String {
    let out = run_ok(bin().args(["run", "--until-end", "--quiet"]).arg(pipeline));
    String::from_utf8(out.stdout).unwrap()
}

/// An aggregate's events sorted by (aggregate id, version), after checking that each
/// aggregate's events are in version order within their partition.
pub fn sorted_events(state: &Path, topic: &str) -> Vec<serde_json::Value> {
    let recs = read_topic(state, topic);
    for w in recs.windows(2) {
        if w[0].partition == w[1].partition && w[0].key == w[1].key {
            assert!(
                w[0].value["version"].as_u64() < w[1].value["version"].as_u64(),
                "events of {} out of order: {:?} then {:?}",
                w[0].key,
                w[0].value,
                w[1].value
            );
        }
    }
    let mut v: Vec<_> = recs.into_iter().map(|r| r.value).collect();
    v.sort_by_key(|e| {
        (
            e["aggregate_id"].as_str().unwrap().to_string(),
            e["version"].as_u64().unwrap(),
        )
    });
    v
}

/// Rejections without their source coordinates, sorted by (aggregate id, command id).
pub fn sorted_rejections(state: &Path, topic: &str) -> Vec<serde_json::Value> {
    let mut v: Vec<_> = read_topic(state, topic)
        .into_iter()
        .map(|r| {
            let mut v = r.value;
            let o = v.as_object_mut().unwrap();
            for k in ["source", "partition", "offset"] {
                assert!(o.remove(k).is_some(), "rejections carry {k}");
            }
            v
        })
        .collect();
    v.sort_by_key(|e| {
        (
            e["aggregate_id"].as_str().unwrap().to_string(),
            e["command_id"].as_str().unwrap().to_string(),
        )
    });
    v
}

/// `onceflow log append LOG ARGS...` with `lines` on stdin; panics with its stderr if it fails.
pub fn log_append<S: AsRef<[u8]>>(log: &Path, args: &[&str], lines: impl IntoIterator<Item = S>) {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = bin()
        .args(["log", "append"])
        .arg(log)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run onceflow log append");
    {
        let mut stdin = child.stdin.take().unwrap();
        for l in lines {
            stdin.write_all(l.as_ref()).unwrap();
            stdin.write_all(b"\n").unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "log append failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Polls `cond` every few milliseconds until it holds; panics after a minute.
pub fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Balances from the bank's account events as CloudEvents envelopes (a projection
/// pipeline of its own, reading them from the embedded log).
pub const CE_PROJECTION: &str = r#"
[pipeline]
name = "ce-balances"
state_dir = "data/ce-projections"

[[sources]]
name = "events"
type = "log"
path = "data/state"
topic = "account_events"
format = "cloudevents"

[[projections]]
name = "balances"
key = "event.subject"
fields = { balance = "0", opened = "''" }

[[projections.on]]
types = ["AccountOpened"]
set = { opened = "event.data.currency" }

[[projections.on]]
types = ["Deposited"]
set = { balance = "row.balance + event.data.amount" }

[[projections.on]]
types = ["Withdrawn"]
set = { balance = "row.balance - event.data.amount" }

[[projections.on]]
types = ["AccountClosed"]
delete = "true"
"#;
