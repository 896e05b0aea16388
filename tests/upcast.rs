//! Upcasting on read: a log written with old record versions, replayed under a pipeline
//! whose rules bring them up to date, gives the same read model as a log written in the
//! current version.

mod common;

use std::path::Path;

use common::*;

const PIPELINE: &str = r#"
[pipeline]
name = "upcast-test"
shards = 2
commit_interval = "20ms"
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

[view.fields]
balance = { op = "sum", field = "amount" }
entries = { op = "count" }
credits = { op = "count", when = { type = "credit" } }
currency = { op = "last", field = "currency" }

# v1: {"acct","seq","kind","cents" (always positive),"ts"}, no version field
# v2: {"account","seq","type","cents","ts","schema_version":2}
# v3: {"account","seq","type","amount" (debits negative),"currency","ts","schema_version":3}
[upcast]

[[upcast.rules]]
from = 1
rename = { acct = "account", kind = "type" }

[[upcast.rules]]
from = 2
compute = { amount = "event.type == 'debit' ? -event.cents : event.cents" }
defaults = { currency = "'EUR'" }
"#;

/// The same ledger entry in version 1, 2 or 3.
fn version(line: &str, v: u8) -> String {
    let e: serde_json::Value = serde_json::from_str(line).unwrap();
    let amount = e["amount"].as_i64().unwrap();
    let (acc, seq, ty, ts) = (&e["account"], &e["seq"], &e["type"], &e["ts"]);
    let j = match v {
        1 => {
            serde_json::json!({"acct": acc, "seq": seq, "kind": ty, "cents": amount.abs(), "ts": ts})
        }
        2 => {
            serde_json::json!({"account": acc, "seq": seq, "type": ty, "cents": amount.abs(), "ts": ts, "schema_version": 2})
        }
        _ => {
            serde_json::json!({"account": acc, "seq": seq, "type": ty, "amount": amount, "currency": "EUR", "ts": ts, "schema_version": 3})
        }
    };
    j.to_string()
}

fn run_with(dir: &Path, lines: &[String]) -> (serde_json::Value, Vec<Rec>) {
    std::fs::write(dir.join("pipeline.toml"), PIPELINE).unwrap();
    // One partition: the key field's name differs between versions, and one partition
    // keeps every account's entries in order whatever their version.
    log_append(
        &dir.join("input"),
        &["--topic", "entries", "--partitions", "1", "--no-fsync"],
        lines,
    );
    let out = run_ok(
        bin()
            .args(["run", "--until-end", "--quiet"])
            .arg(dir.join("pipeline.toml")),
    );
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(!summary.contains("UNBALANCED"), "{summary}");
    let view = run_ok(bin().args(["log", "read"]).arg(dir.join("state")).args([
        "--topic",
        "balances",
        "--compact",
    ]));
    (
        serde_json::from_slice(&view.stdout).unwrap(),
        read_topic(&dir.join("state"), "dead_letters"),
    )
}

#[test]
fn old_versions_replay_to_the_same_read_model_as_current_ones() {
    let raw = run_ok(bin().args([
        "gen",
        "bank",
        "--accounts",
        "40",
        "--events",
        "3000",
        "--seed",
        "5",
    ]));
    let lines: Vec<String> = String::from_utf8(raw.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();

    let current: Vec<String> = lines.iter().map(|l| version(l, 3)).collect();
    let oldest: Vec<String> = lines.iter().map(|l| version(l, 1)).collect();
    let mixed: Vec<String> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| version(l, 1 + (i % 3) as u8))
        .collect();

    let (want, dead) = run_with(tempfile::tempdir().unwrap().path(), &current);
    assert_eq!(want.as_object().unwrap().len(), 40);
    assert!(dead.is_empty(), "{dead:?}");
    for (name, log) in [("all v1", &oldest), ("v1/v2/v3 mixed", &mixed)] {
        let (got, dead) = run_with(tempfile::tempdir().unwrap().path(), log);
        assert!(dead.is_empty(), "{name}: {dead:?}");
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn a_record_that_cannot_be_upcast_is_dead_lettered_with_the_reason() {
    let lines = vec![
        r#"{"acct":"A","seq":1,"kind":"credit","cents":5,"ts":1}"#.to_string(),
        r#"{"account":"A","seq":2,"type":"credit","cents":5,"ts":2,"schema_version":"two"}"#
            .to_string(),
        r#"{"account":"A","seq":2,"type":"debit","cents":"5","ts":3,"schema_version":2}"#
            .to_string(),
        r#"{"account":"A","seq":2,"type":"debit","amount":-3,"ts":4,"schema_version":3}"#
            .to_string(),
    ];
    let (view, dead) = run_with(tempfile::tempdir().unwrap().path(), &lines);
    assert_eq!(view["A"]["balance"], 2);
    // From the v1 entry's upcast default; the v3 entry has none and `last` keeps the latest.
    assert_eq!(view["A"]["currency"], "EUR");
    let reasons: Vec<(&str, &str)> = dead
        .iter()
        .map(|d| {
            (
                d.value["reason"].as_str().unwrap(),
                d.value["detail"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert_eq!(reasons[0].0, "upcast_failed");
    assert!(
        reasons[0]
            .1
            .contains("'schema_version' must be a positive integer"),
        "{reasons:?}"
    );
    assert_eq!(reasons[1].0, "upcast_failed");
    assert!(
        reasons[1].1.contains("upcasting from version 2"),
        "{reasons:?}"
    );
}

#[test]
fn validate_reports_every_upcast_error_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pipeline.toml");
    std::fs::write(
        &path,
        r#"[pipeline]
name = "u"
[[sources]]
name = "s"
type = "log"
path = "in"
[key]
field = "account"
[view]
topic = "v"
[view.fields]
n = { op = "count" }
[upcast]
version_field = "v..x"
[[upcast.rules]]
from = 0
rename = { "a." = "b" }
[[upcast.rules]]
type = "X"
from = 2
compute = { amount = "event.cents +" }
[[upcast.rules]]
type = "X"
from = 2
defaults = { c = "1" }
[[upcast.rules]]
from = 3
"#,
    )
    .unwrap();
    let out = bin().arg("validate").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "6 errors in the pipeline file",
        "upcast.version_field (line 14): invalid field path \"v..x\"",
        "upcast.rules[0].from (line 16): must be between 1 and",
        "upcast.rules[0].rename.a. (line 17): invalid field path \"a.\"",
        "upcast.rules[1].compute.amount (line 21): column 14: expected an expression",
        "upcast.rules[2] (line 22): a second rule for version 2 of \"X\"",
        "upcast.rules[3] (line 26): changes nothing",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}
