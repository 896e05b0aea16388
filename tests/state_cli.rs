//! `onceflow state PIPELINE --key K --at POINT`: the state of a key as of a past point
//! equals what a run stopped exactly at that point shows, with or without snapshots,
//! for the bank (an aggregate with projections) and the ledger (a fold with sequences,
//! duplicates and out-of-order entries). The input is appended in chunks with a run
//! after each, so snapshots exist at several points and append times differ.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;
use onceflow_core::hash::{PARTITION_SALT, bucket, stable_hash};
use onceflow_core::log::{CommitMarker, LogOptions, LogReader, LogWriter};
use onceflow_core::temporal::format_ms;

const PARTITIONS: u32 = 4;

/// An example pipeline run over its input appended chunk by chunk.
struct Setup {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    /// The example with `[snapshot]` (every epoch).
    pipeline: PathBuf,
    /// The same without `[snapshot]`: answers by replay from offset 0.
    no_snapshots: PathBuf,
    example: &'static str,
    topic: &'static str,
    view: &'static str,
}

impl Setup {
    fn state(&self) -> PathBuf {
        self.dir.join("data/state")
    }

    fn input(&self) -> PathBuf {
        self.dir.join("data/input")
    }
}

fn example(name: &str, file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
        .join(file)
}

/// Copies `examples/<name>/pipeline.toml` (twice: with and without snapshots), appends
/// its input file in chunks split before the given lines (each chunk one transaction,
/// so one append time) and runs the pipeline to the end after each chunk: with
/// snapshots, but the last run without (so the last commit is answered from an older
/// snapshot plus a replay).
fn setup(
    name: &'static str,
    input: &str,
    topic: &'static str,
    view: &'static str,
    splits: &[usize],
) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let toml = std::fs::read_to_string(example(name, "pipeline.toml")).unwrap();
    let no_snapshots = dir.join("no-snapshots.toml");
    std::fs::write(&no_snapshots, &toml).unwrap();
    let pipeline = dir.join("pipeline.toml");
    std::fs::write(
        &pipeline,
        format!("{toml}\n[snapshot]\nevery_epochs = 1\nkeep = 100\n"),
    )
    .unwrap();
    let lines: Vec<String> = std::fs::read_to_string(example(name, input))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let s = Setup {
        _tmp: tmp,
        dir,
        pipeline,
        no_snapshots,
        example: name,
        topic,
        view,
    };
    let mut bounds = vec![0];
    bounds.extend_from_slice(splits);
    bounds.push(lines.len());
    for (i, w) in bounds.windows(2).enumerate() {
        log_append(
            &s.input(),
            &[
                "--topic",
                topic,
                "--partitions",
                "4",
                "--key",
                "account",
                "--no-fsync",
            ],
            &lines[w[0]..w[1]],
        );
        let last = i + 2 == bounds.len();
        run_until_end(if last { &s.no_snapshots } else { &s.pipeline });
    }
    s
}

/// The view of a run that stopped exactly at a point: a fresh copy of the pipeline
/// whose input holds, in each partition, the records before the first one `include`
/// refuses (at the same offsets as in the real input), run to its end.
fn stopped_run(s: &Setup, include: impl Fn(&RawRec) -> bool) -> serde_json::Value {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("data/input");
    let mut w = LogWriter::open(&log, LogOptions::default()).unwrap();
    let t = w.ensure_topic(s.topic, PARTITIONS).unwrap();
    let mut tx = w.begin();
    let mut stopped = [false; PARTITIONS as usize];
    for r in read_raw(&s.input(), s.topic) {
        let stop = &mut stopped[r.partition as usize];
        *stop = *stop || !include(&r);
        if !*stop {
            tx.append(t, r.partition, &r.key, &r.value);
        }
    }
    tx.commit(&CommitMarker::default()).unwrap();
    drop(w);
    let pipeline = tmp.path().join("pipeline.toml");
    std::fs::copy(example(s.example, "pipeline.toml"), &pipeline).unwrap();
    run_until_end(&pipeline);
    compact(&tmp.path().join("data/state"), s.view)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn state_cmd(pipeline: &Path, key: &str, more: &[&str]) -> Output {
    bin()
        .arg("state")
        .arg(pipeline)
        .args(["--key", key])
        .args(more)
        .output()
        .expect("run onceflow state")
}

/// `state --json` with and without snapshots: the same answer (the state, or no state),
/// which must be `expected`. Returns the envelope of the run with snapshots.
fn check(
    s: &Setup,
    key: &str,
    at: &[&str],
    expected: Option<&serde_json::Value>,
) -> serde_json::Value {
    let mut envelopes = Vec::new();
    for pipeline in [&s.pipeline, &s.no_snapshots] {
        let mut args = at.to_vec();
        args.push("--json");
        let out = state_cmd(pipeline, key, &args);
        match expected {
            Some(want) => {
                assert!(
                    out.status.success(),
                    "{key} {at:?} ({}): {}\n{}",
                    pipeline.display(),
                    out.status,
                    stderr(&out)
                );
                let env: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                assert_eq!(&env["state"], want, "{key} {at:?} ({})", pipeline.display());
                envelopes.push(env);
            }
            None => {
                assert_eq!(
                    out.status.code(),
                    Some(1),
                    "{key} {at:?} ({}): expected no state, got {}",
                    pipeline.display(),
                    stdout(&out)
                );
                assert!(
                    stderr(&out).contains(&format!("no state for key '{key}'")),
                    "{}",
                    stderr(&out)
                );
            }
        }
    }
    if let [with, without] = envelopes.as_slice() {
        assert!(without["snapshot"].is_null(), "{without}");
        // Same position reached, whatever the replay started from.
        let reached = |e: &serde_json::Value| -> Vec<u64> {
            e["positions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["reached"].as_u64().unwrap())
                .collect()
        };
        assert_eq!(reached(with), reached(without), "{key} {at:?}");
        return with.clone();
    }
    serde_json::Value::Null
}

fn partition_of(key: &str) -> u32 {
    bucket(stable_hash(key.as_bytes()), PARTITION_SALT, PARTITIONS)
}

/// Committed end per partition of the input.
fn ends(s: &Setup) -> Vec<u64> {
    let r = LogReader::open(&s.input(), s.topic).unwrap();
    (0..r.partitions()).map(|p| r.committed_end(p)).collect()
}

/// Offsets to ask about in a partition of `end` records: all of them, or a spread.
fn offsets(end: u64, all: bool) -> Vec<u64> {
    if all || end <= 8 {
        return (0..=end).collect();
    }
    let mut v = vec![0, 1, end / 4, end / 3, end / 2, 2 * end / 3, end - 1, end];
    v.dedup();
    v
}

/// The checks every example gets: the last commit, every (or a spread of) offsets of
/// each key's partition, explicit positions, and the append time of every chunk.
/// Returns how many answers started from a snapshot.
fn check_example(s: &Setup, all_offsets: bool) -> usize {
    let full = compact(&s.state(), s.view);
    let keys: Vec<String> = full.as_object().unwrap().keys().cloned().collect();
    assert!(keys.len() >= 4, "{full}");
    let mut from_snapshot = 0;
    let mut count = |env: &serde_json::Value| {
        if !env["snapshot"].is_null() {
            from_snapshot += 1;
        }
    };

    // The last commit: what the view shows.
    for k in &keys {
        count(&check(s, k, &[], Some(&full[k])));
    }

    // Offsets of the key's partition (the others at the last commit).
    for (p, &end) in ends(s).iter().enumerate() {
        let p = p as u32;
        let in_p: Vec<&String> = keys.iter().filter(|k| partition_of(k) == p).collect();
        for n in offsets(end, all_offsets) {
            let view = stopped_run(s, |r| r.partition != p || r.offset < n);
            let at = n.to_string();
            for &k in &in_p {
                count(&check(s, k, &["--at", &at], view.get(k.as_str())));
            }
            // The same point as explicit positions.
            if let Some(k) = in_p.first() {
                let at = format!("{p}:{n}");
                check(s, k, &["--at", &at], view.get(k.as_str()));
                let at = format!("{}:{p}:{n}", s.topic_source());
                check(s, k, &["--at", &at], view.get(k.as_str()));
            }
        }
    }

    // Append times: each chunk's, just before the first, and between chunks.
    let mut times: Vec<u64> = read_raw(&s.input(), s.topic).iter().map(|r| r.ts).collect();
    times.sort_unstable();
    times.dedup();
    assert!(times.len() >= 3, "chunks were appended at distinct times");
    let mut points = vec![times[0] - 1];
    for w in times.windows(2) {
        points.push(w[0]);
        if w[1] - w[0] > 1 {
            points.push(w[0] + 1);
        }
    }
    points.push(*times.last().unwrap());
    for t in points {
        let view = stopped_run(s, |r| r.ts <= t);
        let at = format_ms(t);
        for k in &keys {
            count(&check(s, k, &["--at", &at], view.get(k.as_str())));
        }
    }
    from_snapshot
}

impl Setup {
    /// The source's name in the pipeline file.
    fn topic_source(&self) -> &'static str {
        match self.example {
            "bank" => "commands",
            _ => "ledger",
        }
    }
}

/// Every file under `dir` with its size and modification time.
fn listing(dir: &Path) -> BTreeMap<PathBuf, (u64, std::time::SystemTime)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let md = e.metadata().unwrap();
            if md.is_dir() {
                stack.push(e.path());
            } else {
                out.insert(e.path(), (md.len(), md.modified().unwrap()));
            }
        }
    }
    out
}

/// The bank's commands in five chunks; the fourth ends with ACC-4's seq 5 held for the
/// missing seq 4 (the last line), so the newest snapshot carries a held record, which
/// the replay of the last chunk releases.
fn bank() -> Setup {
    setup(
        "bank",
        "commands.jsonl",
        "commands",
        "accounts",
        &[8, 15, 22, 28],
    )
}

#[test]
fn bank_state_at_past_points_equals_a_run_stopped_there() {
    let s = bank();
    let before = listing(&s.dir);
    let from_snapshot = check_example(&s, true);
    assert!(
        from_snapshot > 10,
        "only {from_snapshot} answers used a snapshot"
    );

    // The read side: a projection row, fed by the committed events.
    let balances = compact(&s.state().join("projections"), "balances");
    for k in ["ACC-1", "ACC-4"] {
        check(&s, k, &["--table", "balances"], Some(&balances[k]));
    }
    let statements = compact(&s.state().join("projections"), "monthly_statements");
    let (k, row) = statements.as_object().unwrap().iter().next().unwrap();
    check(&s, k, &["--table", "monthly_statements"], Some(row));
    // The transaction history is insert_only: no state to rebuild, and it says where the
    // row is instead.
    let tx = compact(&s.state().join("projections"), "transactions");
    let (k, _) = tx.as_object().unwrap().iter().next().unwrap();
    let out = state_cmd(&s.pipeline, k, &["--table", "transactions"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("projection 'transactions' is insert_only")
            && stderr(&out).contains(&format!(
                "--topic transactions --compact --where \"row.key == '{k}'\""
            )),
        "{}",
        stderr(&out)
    );
    // The aggregate by its view topic's name, as the read API names it.
    let accounts = compact(&s.state(), "accounts");
    check(
        &s,
        "ACC-1",
        &["--table", "accounts"],
        Some(&accounts["ACC-1"]),
    );
    // The read side at offsets of the events topic: the same with and without snapshots.
    for at in ["0", "1", "3", "0:2"] {
        let out = state_cmd(&s.pipeline, "ACC-1", &["--table", "balances", "--at", at]);
        let again = state_cmd(
            &s.no_snapshots,
            "ACC-1",
            &["--table", "balances", "--at", at],
        );
        assert_eq!(out.status.code(), again.status.code(), "{at}");
        assert_eq!(stdout(&out), stdout(&again), "{at}");
    }

    // Nothing was written: not the state log, not the input, not the snapshots.
    assert_eq!(listing(&s.dir), before);
}

#[test]
fn ledger_state_at_past_points_equals_a_run_stopped_there() {
    let s = setup(
        "ledger",
        "events.jsonl",
        "entries",
        "balances",
        &[100, 200, 260, 330],
    );
    let before = listing(&s.dir);
    let from_snapshot = check_example(&s, false);
    assert!(
        from_snapshot > 10,
        "only {from_snapshot} answers used a snapshot"
    );
    assert_eq!(listing(&s.dir), before);
}

#[test]
fn text_output_errors_and_a_running_pipeline() {
    let s = bank();
    let p = &s.pipeline;

    // Plain output: the state on stdout, where it came from on stderr.
    let out = state_cmd(p, "ACC-1", &["--at", "3"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["version"], 3);
    assert_eq!(v["balance"], 7500);
    let err = stderr(&out);
    assert!(
        err.contains("key 'ACC-1' of accounts (pipeline 'bank') as of offset 3 of source 'commands' partition"),
        "{err}"
    );
    assert!(err.contains("from      snapshot of epoch"), "{err}");
    assert!(err.contains("replayed  "), "{err}");

    // A held record at the point is reported: ACC-4's seq 5 before its seq 4 (the
    // last command of its partition) arrives.
    let last = read_raw(&s.input(), "commands")
        .iter()
        .filter(|r| r.partition == partition_of("ACC-4"))
        .count();
    let out = state_cmd(p, "ACC-4", &["--at", &(last - 1).to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("note: 1 record of this key waits for a sequence gap"),
        "{}",
        stderr(&out)
    );

    // Unknown key: no state, exit 1.
    let out = state_cmd(p, "ACC-404", &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no state for key 'ACC-404' in accounts as of the last commit"),
        "{}",
        stderr(&out)
    );
    let out = state_cmd(p, "ACC-1", &["--at", "0"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no record of the key up to that point"));

    // Bad questions: exit 2, saying what is wrong.
    for (at, says) in [
        ("bogus", "--at 'bogus': cannot read 'bogus'"),
        ("1:2:3:4", "cannot read '1:2:3:4'"),
        ("2026-02-30T00:00:00Z", "invalid timestamp"),
        ("9:0", "source 'commands' has no partition 9 (it has 4)"),
        ("refunds:0:1", "has no source 'refunds'"),
        (
            "100000",
            "is beyond the last commit, which consumed it up to offset",
        ),
        ("0:100000", "is beyond the last commit"),
        ("2200-01-01T00:00:00Z", "is in the future"),
    ] {
        let out = state_cmd(p, "ACC-1", &["--at", at]);
        assert_eq!(out.status.code(), Some(2), "{at}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{at}: {}", stderr(&out));
    }
    let out = state_cmd(p, "ACC-1", &["--table", "ledger"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no read model named 'ledger'; pipeline 'bank' has: accounts (the aggregate's state), balances, transactions"),
        "{}",
        stderr(&out)
    );

    // Nothing committed yet.
    let empty = tempfile::tempdir().unwrap();
    let fresh = empty.path().join("pipeline.toml");
    std::fs::copy(example("bank", "pipeline.toml"), &fresh).unwrap();
    let out = state_cmd(&fresh, "ACC-1", &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("has committed nothing yet"),
        "{}",
        stderr(&out)
    );
    assert!(
        !empty.path().join("data").exists(),
        "a query creates nothing"
    );

    // While the pipeline runs on the same state: new commands show once committed, and
    // past points still answer.
    let now = |at: &[&str]| -> serde_json::Value {
        let out = state_cmd(p, "ACC-1", at);
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let before = now(&[]);
    let mut run = bin()
        .args(["run", "--quiet"])
        .arg(p)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    log_append(
        &s.input(),
        &["--topic", "commands", "--key", "account", "--no-fsync"],
        [
            r#"{"id":"c-100","account":"ACC-1","seq":10,"type":"Deposit","ts":1767230000000,"amount":11}"#,
        ],
    );
    wait_for("the new deposit to be committed", || {
        now(&[])["version"] != before["version"]
    });
    let after = now(&[]);
    assert_eq!(after["version"], before["version"].as_u64().unwrap() + 1);
    assert_eq!(after["balance"], before["balance"].as_i64().unwrap() + 11);
    assert_eq!(now(&["--at", "3"])["version"], 3);
    run.kill().unwrap(); // SIGKILL: the next run recovers from the last commit
    run.wait().unwrap();
}
