use std::path::Path;

use super::*;
use crate::engine::{self, RunOptions};
use crate::log::{CommitMarker, LogOptions, LogWriter};

/// A fold over `sources` (one partition each), sequenced, with a reorder window of 2
/// records, in `dir`.
fn pipeline(dir: &Path, sources: &[&str], snapshot: bool) -> Pipeline {
    let mut src = String::from("[pipeline]\nname = \"t\"\nshards = 1\nstate_dir = \"state\"\n\n");
    for s in sources {
        src.push_str(&format!(
            "[[sources]]\nname = \"{s}\"\ntype = \"log\"\npath = \"input\"\ntopic = \"{s}\"\n\n"
        ));
    }
    src.push_str(
        "[key]\nfield = \"account\"\nsequence = \"seq\"\n\n\
         [reorder]\ncapacity = 100\nwindow = 2\n\n\
         [view]\ntopic = \"balances\"\n\n\
         [view.fields]\nbalance = { op = \"sum\", field = \"amount\" }\nentries = { op = \"count\" }\n",
    );
    if snapshot {
        src.push_str("\n[snapshot]\nevery_epochs = 1\n");
    }
    Pipeline::parse(&src, dir).unwrap()
}

fn append(dir: &Path, topic: &str, lines: &[&str]) {
    let mut w = LogWriter::open(&dir.join("input"), LogOptions::default()).unwrap();
    let t = w.ensure_topic(topic, 1).unwrap();
    let mut tx = w.begin();
    for l in lines {
        tx.append(t, 0, b"", l.as_bytes());
    }
    tx.commit(&CommitMarker::default()).unwrap();
}

fn rec(account: &str, seq: u64, amount: i64) -> String {
    format!(r#"{{"account":"{account}","seq":{seq},"amount":{amount}}}"#)
}

/// The last upsert of `key` in the view.
fn view_row(p: &Pipeline, key: &str) -> serde_json::Value {
    let r = LogReader::open(&p.state_dir, "balances").unwrap();
    let mut last = serde_json::Value::Null;
    let mut buf = RecordBuf::new();
    for part in 0..r.partitions() {
        let mut c = r.cursor(part, 0).unwrap();
        while c.read(&r, 1000, &mut buf).unwrap() > 0 {}
        for x in buf.iter().filter(|x| x.key == key.as_bytes()) {
            last = serde_json::from_slice(x.value).unwrap();
        }
        buf.clear();
    }
    last
}

#[test]
fn held_records_expire_on_other_keys_records_as_in_the_run() {
    // K's seq 3 is held for the missing seq 2; X's records go through the same shard
    // and expire it (window 2) before seq 2 arrives: the run never applies seq 3. A
    // replay that only saw K's records would release and apply it.
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline(dir.path(), &["a"], false);
    let lines = [
        rec("K", 1, 1),
        rec("K", 3, 100),
        rec("X", 1, 5),
        rec("X", 2, 5),
        rec("X", 3, 5),
        rec("K", 2, 10),
    ];
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    append(dir.path(), "a", &lines);
    engine::run(&p, RunOptions::default()).unwrap();
    let run = view_row(&p, "K");
    assert_eq!(run["balance"], 11, "{run}");
    let ks = state_at(&p, None, "K", &Point::LastCommit).unwrap();
    assert_eq!(ks.state, run);
    assert_eq!(ks.key_records, 3);
    // Before X's records: seq 3 still held, not in the state.
    let ks = state_at(&p, None, "K", &"2".parse().unwrap()).unwrap();
    assert_eq!((ks.state["balance"].as_i64(), ks.held), (Some(1), 1));
}

#[test]
fn several_sources_need_named_positions() {
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline(dir.path(), &["a", "b"], true);
    append(dir.path(), "a", &[&rec("K", 1, 1), &rec("K", 2, 2)]);
    append(dir.path(), "b", &[&rec("K", 3, 4), &rec("L", 1, 8)]);
    engine::run(&p, RunOptions::default()).unwrap();
    let at = |s: &str| state_at(&p, None, "K", &s.parse().unwrap());
    let e = at("1").unwrap_err();
    assert!(e.is_bad_query(), "{e}");
    assert!(e.to_string().contains("reads 2 sources"), "{e}");
    let e = at("0:1").unwrap_err();
    assert!(
        e.to_string().contains("write SOURCE:PARTITION:OFFSET"),
        "{e}"
    );
    // a up to seq 1, b whole: seq 3 waits for seq 2.
    let ks = at("a:0:1").unwrap();
    assert_eq!((ks.state["balance"].as_i64(), ks.held), (Some(1), 1));
    assert_eq!(at("b:0:0").unwrap().state["balance"], 3);
    assert_eq!(at("a:0:2,b:0:1").unwrap().state["balance"], 7);
    let ks = state_at(&p, None, "K", &Point::LastCommit).unwrap();
    assert_eq!(ks.state, view_row(&p, "K"));
    assert!(ks.snapshot.is_some());
    // Nothing committed in a fresh state dir.
    let other = tempfile::tempdir().unwrap();
    let q = pipeline(other.path(), &["a"], false);
    let e = state_at(&q, None, "K", &Point::LastCommit).unwrap_err();
    assert!(matches!(e, TemporalError::NothingCommitted(_)), "{e}");
}
