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

/// Every committed record of a topic, partition by partition, in offset order.
pub fn read_topic(dir: &Path, topic: &str) -> Vec<Rec> {
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
            for r in buf.iter() {
                out.push(Rec {
                    partition: r.partition,
                    offset: r.offset,
                    key: String::from_utf8(r.key.to_vec()).unwrap(),
                    value: serde_json::from_slice(r.value).unwrap(),
                });
            }
        }
    }
    out
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
