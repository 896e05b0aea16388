//! SIGKILL the real binary at random moments while it processes a growing bank workload,
//! restart it each time, and check that the committed output holds every input's effect
//! exactly once and that the final state equals a reference computed here independently.
//!
//! Then (second part) crash it at chosen points with `ONCEFLOW_FAULT`: inside a snapshot
//! file write, at each rename of a snapshot, in retention and in replay, for the ledger
//! and for the bank (aggregate and projections, both sides snapshotting); check what
//! `snapshot ls --verify` and the next start say about what the crash left, and that
//! the end result is byte-identical to a run straight through. The determinism tests
//! crash a run many times (fault points and random kills) and compare the same way.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use onceflow_core::log::{LogReader, RecordBuf};
use onceflow_core::workload::{BankParams, Rng, write_bank};

/// The reference: apply each distinct (account, seq) once; all gaps fill in this workload.
fn reference(lines: &[String]) -> BTreeMap<String, (i64, u64, BTreeSet<u64>)> {
    let mut seen = BTreeSet::new();
    let mut acc: BTreeMap<String, (i64, u64, BTreeSet<u64>)> = BTreeMap::new();
    for l in lines {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else {
            continue;
        };
        let (Some(a), Some(seq), Some(amount)) = (
            v["account"].as_str(),
            v["seq"].as_u64(),
            v["amount"].as_i64(),
        ) else {
            continue;
        };
        if seen.insert((a.to_string(), seq)) {
            let e = acc.entry(a.to_string()).or_default();
            e.0 += amount;
            e.1 += 1;
            e.2.insert(seq);
        }
    }
    acc
}

/// Inserts a malformed record, one without a key and one with a bad sequence number;
/// the `i`-th at `at(i)`.
fn insert_bad_records(lines: &mut Vec<String>, at: impl Fn(usize) -> usize) {
    for (i, bad) in [
        "{broken",
        r#"{"seq":1,"amount":5}"#,
        r#"{"account":"ACC-0000001","seq":"x","amount":5}"#,
    ]
    .iter()
    .enumerate()
    {
        lines.insert(at(i), bad.to_string());
    }
}

fn append(dir: &std::path::Path, lines: &[String]) {
    let mut child = bin()
        .args(["log", "append"])
        .arg(dir.join("input"))
        .args([
            "--topic",
            "entries",
            "--partitions",
            "4",
            "--key",
            "account",
            "--batch",
            "2000",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        for l in lines {
            writeln!(stdin, "{l}").unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts the pipeline, feeds it the next chunk, SIGKILLs it after a random 50 ms to
/// `50 + max_sleep_ms` ms, again and again (6 times, or `ONCEFLOW_CRASH_KILLS`, which
/// `scripts/test --long` raises; at least 5), then appends the chunks left.
fn kill_while_feeding(
    pipeline: &std::path::Path,
    chunks: &[&[String]],
    append: impl Fn(&[String]),
    seed: u64,
    max_sleep_ms: u64,
) {
    let want_kills: usize = std::env::var("ONCEFLOW_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6)
        .max(5);
    let mut rng = Rng::new(seed);
    let mut chunks = chunks.iter();
    let mut kills = 0;
    let deadline = Instant::now() + Duration::from_secs(60 + 5 * want_kills as u64);
    while kills < want_kills && Instant::now() < deadline {
        let mut child = Command::new(env!("CARGO_BIN_EXE_onceflow"))
            .args(["run", "--quiet"])
            .arg(pipeline)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // More input arrives while it runs, then a SIGKILL at a random moment.
        if let Some(c) = chunks.next() {
            append(c);
        }
        std::thread::sleep(Duration::from_millis(50 + rng.below(max_sleep_ms)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
    }
    assert!(kills >= 5, "only {kills} kills before the deadline");
    for c in chunks {
        append(c);
    }
}

#[test]
fn sigkill_at_random_moments_loses_nothing_and_duplicates_nothing() {
    ledger_crashes("");
}

#[test]
fn sigkill_with_snapshots_loses_nothing_and_duplicates_nothing() {
    // Snapshots every other epoch: restarts load the newest one (possibly one a kill left
    // incomplete, which is skipped) and replay only from its offsets, with held records
    // put back into the reorder buffers.
    let summary = ledger_crashes("\n[snapshot]\nevery_epochs = 2\nkeep = 2\n");
    assert!(summary.contains("snapshot  restored epoch"), "{summary}");
}

/// Kills the ledger pipeline (with `extra` TOML) at random moments while input arrives,
/// then checks the committed output against a reference; returns the last summary.
fn ledger_crashes(extra: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = bank_pipeline(dir.path(), "per_event", "20ms", extra);
    let params = BankParams {
        accounts: 500,
        events: 120_000,
        seed: 2026,
        duplicate_rate: 0.02,
        reorder_rate: 0.02,
    };
    let mut raw = Vec::new();
    write_bank(&params, &mut raw).unwrap();
    let mut lines: Vec<String> = String::from_utf8(raw)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    // A few records that must be dead-lettered exactly once, whatever the crashes.
    insert_bad_records(&mut lines, |i| 10_000 + i * 30_000);
    let chunks: Vec<&[String]> = lines.chunks(lines.len() / 8 + 1).collect();

    append(dir.path(), chunks[0]);
    kill_while_feeding(&pipeline, &chunks[1..], |c| append(dir.path(), c), 7, 600);
    let out = run_ok(bin().args(["run", "--until-end", "--quiet"]).arg(&pipeline));
    let summary = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!summary.contains("UNBALANCED"), "{summary}");
    assert!(!summary.contains("FAILED"), "{summary}");

    let want = reference(&lines);
    let outputs = read_topic(&dir.path().join("state"), "balances");
    // Exactly once: every applied (account, seq) appears once, in increasing order per key.
    let mut per_key: HashMap<String, Vec<&serde_json::Value>> = HashMap::new();
    for r in &outputs {
        assert_eq!(r.value["key"].as_str(), Some(r.key.as_str()));
        per_key.entry(r.key.clone()).or_default().push(&r.value);
    }
    assert_eq!(per_key.len(), want.len(), "accounts with output");
    for (account, (balance, count, seqs)) in &want {
        let outs = &per_key[account];
        let versions: Vec<u64> = outs
            .iter()
            .map(|v| v["version"].as_u64().unwrap())
            .collect();
        let got: BTreeSet<u64> = versions.iter().copied().collect();
        assert_eq!(
            got.len(),
            versions.len(),
            "{account}: an output was committed twice: {versions:?}"
        );
        assert!(
            versions.windows(2).all(|w| w[0] < w[1]),
            "{account}: versions out of order: {versions:?}"
        );
        assert_eq!(&got, seqs, "{account}: applied sequence numbers");
        let last = outs.last().unwrap();
        assert_eq!(
            last["balance"].as_i64(),
            Some(*balance),
            "{account}: balance"
        );
        assert_eq!(last["entries"].as_u64(), Some(*count), "{account}: entries");
    }
    // Dead letters: the three bad records, once each.
    let dead = read_topic(&dir.path().join("state"), "dead_letters");
    let mut reasons: Vec<String> = dead
        .iter()
        .map(|d| d.value["reason"].as_str().unwrap().to_string())
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        ["bad_sequence", "malformed_json", "missing_key"],
        "{dead:?}"
    );
    let coords: BTreeSet<(u64, u64)> = dead
        .iter()
        .map(|d| {
            (
                d.value["partition"].as_u64().unwrap(),
                d.value["offset"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(coords.len(), 3);
    summary
}

/// The shipped bank pipeline (aggregate + four projections) without its `load` line, with
/// short epochs, in `dir`.
fn bank_aggregate_pipeline(dir: &std::path::Path) -> std::path::PathBuf {
    let src = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/bank/pipeline.toml"),
    )
    .unwrap();
    let text: String = src
        .lines()
        .filter(|l| !l.starts_with("load = "))
        .map(|l| {
            if l.starts_with("state_dir = ") {
                "state_dir = \"data/state\"\ncommit_interval = \"20ms\"".to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Every record of a topic, checking that no row key got the same version twice
/// (a row written twice by one update would).
fn rows_once(state: &std::path::Path, topic: &str) -> serde_json::Value {
    let mut seen = BTreeSet::new();
    for r in read_topic(state, topic) {
        if let Some(v) = r.value["version"].as_u64() {
            assert!(
                seen.insert((r.key.clone(), v)),
                "{topic}: row {} version {v} committed twice",
                r.key
            );
        }
    }
    compact(state, topic)
}

#[test]
fn sigkill_of_an_aggregate_with_projections_loses_nothing_and_duplicates_nothing() {
    bank_crashes("");
}

#[test]
fn sigkill_of_an_aggregate_with_projections_and_snapshots_loses_nothing() {
    let summary = bank_crashes("\n[snapshot]\nevery_epochs = 1\n");
    assert!(summary.contains("snapshot  restored epoch"), "{summary}");
}

fn bank_crashes(extra: &str) -> String {
    // Both sides of the bank (write: the aggregate; read: four projections of its
    // committed events) are killed at random moments, each with its own state log; the
    // result must equal one uninterrupted run over the same input.
    let params = BankParams {
        accounts: 400,
        events: 40_000,
        seed: 11,
        duplicate_rate: 0.02,
        reorder_rate: 0.02,
    };
    let mut raw = Vec::new();
    onceflow_core::workload::write_account_commands(&params, &mut raw).unwrap();
    let lines: Vec<String> = String::from_utf8(raw)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let chunks: Vec<&[String]> = lines.chunks(lines.len() / 6 + 1).collect();
    let append = |dir: &std::path::Path, chunk: &[String]| {
        log_append(
            &dir.join("data/input"),
            &[
                "--topic",
                "commands",
                "--key",
                "account",
                "--partitions",
                "4",
            ],
            chunk,
        )
    };

    // The reference: one run, no crash.
    let reference = tempfile::tempdir().unwrap();
    let ref_pipeline = bank_aggregate_pipeline(reference.path());
    append(reference.path(), &lines);
    let summary = run_until_end(&ref_pipeline);
    assert_eq!(
        summary.matches("onceflow: pipeline").count(),
        2,
        "{summary}"
    );

    let dir = tempfile::tempdir().unwrap();
    let pipeline = bank_aggregate_pipeline(dir.path());
    let mut text = std::fs::read_to_string(&pipeline).unwrap();
    text.push_str(extra);
    std::fs::write(&pipeline, text).unwrap();
    kill_while_feeding(&pipeline, &chunks, |c| append(dir.path(), c), 3, 500);
    let summary = run_until_end(&pipeline);
    assert!(!summary.contains("UNBALANCED"), "{summary}");
    assert!(!summary.contains("FAILED"), "{summary}");

    let (got, want) = (
        dir.path().join("data/state"),
        reference.path().join("data/state"),
    );
    // Events: each exactly once (sorted_events checks per-aggregate order; equal lists
    // with unique ids mean none is missing or repeated).
    let events = sorted_events(&got, "account_events");
    let ids: BTreeSet<&str> = events
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), events.len(), "an event was committed twice");
    assert_eq!(events, sorted_events(&want, "account_events"));
    assert_eq!(
        sorted_rejections(&got, "account_rejections"),
        sorted_rejections(&want, "account_rejections")
    );
    assert_eq!(rows_once(&got, "accounts"), compact(&want, "accounts"));
    for topic in [
        "balances",
        "transactions",
        "monthly_statements",
        "daily_report",
    ] {
        assert_eq!(
            rows_once(&got.join("projections"), topic),
            compact(&want.join("projections"), topic),
            "{topic}"
        );
    }
    summary
}

// =====================================================================================
// Crashes at chosen points (`ONCEFLOW_FAULT`, see `core/src/fault.rs`), and the
// determinism check: a run straight through and a run crashed and restored from
// snapshots again and again must commit byte-identical records and end in a
// byte-identical state.
//
// What "byte-identical" covers, and what it cannot:
//
// * Every committed record's key and value bytes, per (topic, partition, key), in
//   offset order. Not the interleaving of different keys within a partition: the
//   committer appends an epoch's records shard by shard, and the router reads its input
//   partitions in rounds whose sizes depend on what has arrived, so where one key's
//   records fall between another's depends on where epochs were cut (wall-clock
//   `commit_interval`) and where a restart resumed. Neither is part of the contract, and
//   nothing downstream can observe it through one key.
// * To make every change visible, the pipelines run with `view.emit = "per_event"`:
//   with `per_epoch`, how many upserts a key gets depends on how epochs were cut.
// * A row fed by many keys through several input partitions (the bank's
//   `daily_report`, over all accounts) sees them in the order the read side happened to
//   read its partitions in: its intermediate values depend on that; its final value per
//   row must not, and is what is compared.
// * Dead letters: the same records with the same bytes, as a set (a router-detected one
//   and a shard-detected one of the same epoch are appended router part first).
// * Not the records' log timestamps (the wall-clock time of their commit), nor epoch
//   numbers (barriers are cut by wall-clock time too; no record carries one).
// * State: each key's entry in a snapshot taken at the very end (sequence number and
//   state bytes as the stage encodes them) and the records held for a sequence gap;
//   not the order of keys in the shard files, which is the order keys were first seen
//   by a shard (the same interleaving as above).

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use onceflow_core::fault;
use onceflow_core::log::list_topics;
use onceflow_core::snapshot::{self, Manifest, Snapshot};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workload {
    /// `examples/ledger`: one fold, bank ledger entries (with duplicates, reordering and
    /// three records to dead-letter).
    Ledger,
    /// `examples/bank`: an aggregate, and four projections of its events on a read side
    /// with its own state log and snapshots.
    Bank,
}

/// Snapshots at every barrier (the final run's snapshot is the state compared).
const SNAP_EVERY_EPOCH: &str = "every_epochs = 1\nkeep = 2";
/// A `[snapshot]` that never triggers (restores still happen).
const SNAP_NEVER: &str = "every_epochs = 1000000\nkeep = 2";

/// The input of a workload: `body`, then `tail`, appended just before the final run.
struct WorkInput {
    body: Vec<String>,
    tail: Vec<String>,
}

impl Workload {
    /// (pipeline name as the summary prints it, state dir under the test directory).
    fn sides(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Workload::Ledger => &[("ledger", "data/state")],
            Workload::Bank => &[
                ("bank", "data/state"),
                ("bank.projections", "data/state/projections"),
            ],
        }
    }

    /// Topics compared by their final value per key only (see the top of this part).
    fn latest_only(self) -> &'static [&'static str] {
        match self {
            Workload::Ledger => &[],
            Workload::Bank => &["daily_report"],
        }
    }

    fn input(self) -> &'static WorkInput {
        static LEDGER: OnceLock<WorkInput> = OnceLock::new();
        static BANK: OnceLock<WorkInput> = OnceLock::new();
        let (cell, tail) = match self {
            Workload::Ledger => (&LEDGER, 600),
            Workload::Bank => (&BANK, 300),
        };
        cell.get_or_init(|| {
            let mut raw = Vec::new();
            match self {
                Workload::Ledger => {
                    let params = BankParams {
                        accounts: 300,
                        events: 24_000,
                        seed: 99,
                        duplicate_rate: 0.02,
                        reorder_rate: 0.02,
                    };
                    write_bank(&params, &mut raw).unwrap();
                }
                Workload::Bank => {
                    let params = BankParams {
                        accounts: 200,
                        events: 8_000,
                        seed: 17,
                        duplicate_rate: 0.02,
                        reorder_rate: 0.02,
                    };
                    onceflow_core::workload::write_account_commands(&params, &mut raw).unwrap();
                }
            }
            let mut lines = hold_gaps_open(
                String::from_utf8(raw)
                    .unwrap()
                    .lines()
                    .map(str::to_string)
                    .collect(),
            );
            // Records to dead-letter exactly once, whatever the crashes.
            let n = lines.len();
            insert_bad_records(&mut lines, |i| n / 10 + i * n / 4);
            let tail = lines.split_off(lines.len() - tail);
            WorkInput { body: lines, tail }
        })
    }

    fn append(self, dir: &Path, lines: &[String]) {
        let topic = match self {
            Workload::Ledger => "entries",
            Workload::Bank => "commands",
        };
        log_append(
            &dir.join("data/input"),
            &["--topic", topic, "--key", "account", "--partitions", "4"],
            lines,
        );
    }

    /// Writes `dir/pipeline.toml`: the shipped example without its `load`, with
    /// `emit = "per_event"`, the given commit interval and `[snapshot]` body.
    fn pipeline(self, dir: &Path, commit_interval: &str, snapshot: &str) -> PathBuf {
        let example = match self {
            Workload::Ledger => "ledger",
            Workload::Bank => "bank",
        };
        let src = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("examples/{example}/pipeline.toml")),
        )
        .unwrap();
        let mut text = String::new();
        for l in src.lines() {
            if l.starts_with("load = ")
                || l.starts_with("load_partitions = ")
                || l.starts_with("commit_interval = ")
                || l.starts_with("emit = \"per_")
            {
                continue;
            }
            text.push_str(l);
            text.push('\n');
            if l == "[pipeline]" {
                text.push_str(&format!("commit_interval = \"{commit_interval}\"\n"));
            } else if l == "[view]" {
                text.push_str("emit = \"per_event\"\n");
            }
        }
        text.push_str(&format!("\n[snapshot]\n{snapshot}\n"));
        for (setting, times) in [("commit_interval = ", 1), ("emit = \"per_", 1), ("load", 0)] {
            assert_eq!(text.matches(setting).count(), times, "{setting}: {text}");
        }
        let path = dir.join("pipeline.toml");
        std::fs::write(&path, text).unwrap();
        path
    }
}

/// Moves every 150th line 2,000 lines later. The generator delivers a late line right
/// after its key's next one, so a gap in a key's sequence never outlives a read; these
/// keep gaps open over many epochs: the records behind them wait in the reorder buffer,
/// snapshots hold them as extras, and restores put them back.
fn hold_gaps_open(lines: Vec<String>) -> Vec<String> {
    let n = lines.len();
    let mut out = Vec::with_capacity(n);
    let mut late: std::collections::VecDeque<(usize, String)> = Default::default();
    for (i, l) in lines.into_iter().enumerate() {
        if i % 150 == 75 && i + 2_000 < n {
            late.push_back((i + 2_000, l));
        } else {
            out.push(l);
        }
        while late.front().is_some_and(|(due, _)| *due <= i) {
            out.push(late.pop_front().unwrap().1);
        }
    }
    out.extend(late.into_iter().map(|(_, l)| l));
    out
}

/// `run --until-end`, checking that the summary reports nothing wrong.
fn run_clean(pipeline: &Path) -> String {
    let summary = run_until_end(pipeline);
    for bad in ["UNBALANCED", "FAILED"] {
        assert!(!summary.contains(bad), "{summary}");
    }
    summary
}

/// The summary section of one side (`onceflow: pipeline 'NAME' stopped ...` and its
/// indented lines).
fn section<'a>(summary: &'a str, name: &str) -> &'a str {
    let head = format!("onceflow: pipeline '{name}' stopped");
    let start = summary
        .find(&head)
        .unwrap_or_else(|| panic!("no summary of '{name}' in:\n{summary}"));
    let rest = &summary[start + head.len()..];
    let end = rest
        .find("onceflow: pipeline '")
        .map_or(summary.len(), |e| start + head.len() + e);
    &summary[start..end]
}

/// The epoch a side's summary says it restored.
fn restored_epoch(section: &str) -> Option<u64> {
    let at = section.find("snapshot  restored epoch ")? + "snapshot  restored epoch ".len();
    let digits: String = section[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Some(digits.parse().unwrap())
}

// --- what a run left behind --------------------------------------------------------

/// A topic's committed records, reduced to what must be identical.
#[derive(Debug, PartialEq, Eq)]
enum TopicView {
    /// Each (partition, key)'s values in offset order.
    Streams(BTreeMap<(u32, Vec<u8>), Vec<Vec<u8>>>),
    /// Each (partition, key)'s last value.
    Latest(BTreeMap<(u32, Vec<u8>), Vec<u8>>),
    /// All (partition, key, value), sorted.
    Set(Vec<(u32, Vec<u8>, Vec<u8>)>),
}

/// (kind, key, seq, source, partition, offset, data) of a held record.
type HeldRecord = (String, Vec<u8>, u64, String, u32, u64, Vec<u8>);

/// The state in a side's newest snapshot.
#[derive(Debug, PartialEq, Eq)]
struct FinalState {
    fingerprint: u64,
    /// (source, partition, next offset), sorted.
    inputs: Vec<(String, u32, u64)>,
    /// key → (sequence number, state bytes).
    entries: BTreeMap<Vec<u8>, (u64, Vec<u8>)>,
    /// Held records, sorted.
    extras: Vec<HeldRecord>,
}

#[derive(Debug)]
struct SideView {
    name: &'static str,
    topics: BTreeMap<String, (u32, TopicView)>,
    state: FinalState,
}

/// Every committed record of `topic`: (partition, key, value), per partition in offset
/// order, the bytes as stored.
fn raw_records(state: &Path, topic: &str) -> Vec<(u32, Vec<u8>, Vec<u8>)> {
    let reader = LogReader::open(state, topic).unwrap();
    let mut out = Vec::new();
    let mut buf = RecordBuf::new();
    for p in 0..reader.partitions() {
        let mut c = reader.cursor(p, 0).unwrap();
        let mut next = 0;
        loop {
            buf.clear();
            if c.read(&reader, 10_000, &mut buf).unwrap() == 0 {
                break;
            }
            for r in buf.iter() {
                assert_eq!(r.offset, next, "{topic}/{p}: offsets have a gap");
                next += 1;
                out.push((p, r.key.to_vec(), r.value.to_vec()));
            }
        }
    }
    out
}

fn final_state(root: &Path) -> FinalState {
    let newest = snapshot::list(root)
        .unwrap()
        .into_iter()
        .find(|d| d.complete)
        .unwrap_or_else(|| panic!("no complete snapshot in {}", root.display()));
    let manifest = Manifest::read(&newest.path.join("MANIFEST")).unwrap();
    let snap = Snapshot::open(&newest.path, &manifest.fingerprint).unwrap();
    let mut entries = BTreeMap::new();
    let mut extras = Vec::new();
    for sh in snap.shards() {
        for e in sh.iter() {
            let old = entries.insert(e.key.to_vec(), (e.seq, e.state.to_vec()));
            assert!(old.is_none(), "a key in two shard files");
        }
        for x in sh.extras() {
            extras.push((
                x.kind.to_string(),
                x.key.to_vec(),
                x.seq,
                x.source.to_string(),
                x.partition,
                x.offset,
                x.data.to_vec(),
            ));
        }
    }
    extras.sort();
    let mut inputs: Vec<(String, u32, u64)> = snap
        .inputs()
        .iter()
        .map(|i| (i.source.clone(), i.partition, i.next_offset))
        .collect();
    inputs.sort();
    FinalState {
        fingerprint: manifest.fingerprint_digest,
        inputs,
        entries,
        extras,
    }
}

/// What a finished workload left in `dir`, reduced to what must be identical.
fn observe(w: Workload, dir: &Path) -> Vec<SideView> {
    w.sides()
        .iter()
        .map(|&(name, state_dir)| {
            let state = dir.join(state_dir);
            let mut topics = BTreeMap::new();
            for (topic, partitions) in list_topics(&state).unwrap() {
                let recs = raw_records(&state, &topic);
                let view = if topic == "dead_letters" {
                    let mut v = recs;
                    v.sort();
                    TopicView::Set(v)
                } else if w.latest_only().contains(&topic.as_str()) {
                    TopicView::Latest(recs.into_iter().map(|(p, k, v)| ((p, k), v)).collect())
                } else {
                    let mut m: BTreeMap<(u32, Vec<u8>), Vec<Vec<u8>>> = BTreeMap::new();
                    for (p, k, v) in recs {
                        m.entry((p, k)).or_default().push(v);
                    }
                    TopicView::Streams(m)
                };
                topics.insert(topic, (partitions, view));
            }
            SideView {
                name,
                topics,
                state: final_state(&state.join("snapshots")),
            }
        })
        .collect()
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `{v:?}`, cut to a readable length.
fn brief(v: &impl std::fmt::Debug) -> String {
    let s = format!("{v:?}");
    match s.char_indices().nth(300) {
        Some((at, _)) => format!("{}...", &s[..at]),
        None => s,
    }
}

/// The first differences between two maps, described (values of a sequence: where the
/// sequences first differ).
fn map_diff<K: Ord + std::fmt::Debug, V: PartialEq + std::fmt::Debug>(
    what: &str,
    want: &BTreeMap<K, Vec<V>>,
    got: &BTreeMap<K, Vec<V>>,
    out: &mut Vec<String>,
) {
    let mut n = 0;
    let keys: BTreeSet<&K> = want.keys().chain(got.keys()).collect();
    for k in keys {
        let (a, b) = (want.get(k), got.get(k));
        if a == b {
            continue;
        }
        n += 1;
        if n > 3 {
            continue;
        }
        out.push(match (a, b) {
            (Some(a), Some(b)) => {
                let i = a.iter().zip(b).take_while(|(x, y)| x == y).count();
                format!(
                    "{what} {k:?}: {} vs {} values, the first difference at #{i}:\n      want {}\n      got  {}",
                    a.len(),
                    b.len(),
                    a.get(i).map_or("nothing".into(), brief),
                    b.get(i).map_or("nothing".into(), brief),
                )
            }
            (Some(_), None) => format!("{what} {k:?}: missing"),
            _ => format!("{what} {k:?}: not in the straight run"),
        });
    }
    if n > 3 {
        out.push(format!("{what}: {n} differences in all"));
    }
}

/// Panics with the first differences between a straight run and another run.
fn assert_identical(want: &[SideView], got: &[SideView]) {
    let mut diffs = Vec::new();
    for (w, g) in want.iter().zip(got) {
        let side = w.name;
        let names = |s: &SideView| s.topics.keys().cloned().collect::<Vec<_>>();
        if names(w) != names(g) {
            diffs.push(format!("{side}: topics {:?} vs {:?}", names(w), names(g)));
        }
        for (topic, (parts, view)) in &w.topics {
            let Some((gparts, gview)) = g.topics.get(topic) else {
                continue;
            };
            if parts != gparts {
                diffs.push(format!("{side}/{topic}: {parts} vs {gparts} partitions"));
            }
            let what = format!("{side}/{topic} (partition, key)");
            let text = |m: &BTreeMap<(u32, Vec<u8>), Vec<Vec<u8>>>| {
                m.iter()
                    .map(|((p, k), vs)| ((*p, show(k)), vs.iter().map(|v| show(v)).collect()))
                    .collect::<BTreeMap<(u32, String), Vec<String>>>()
            };
            match (view, gview) {
                (TopicView::Streams(a), TopicView::Streams(b)) => {
                    map_diff(&what, &text(a), &text(b), &mut diffs)
                }
                (TopicView::Latest(a), TopicView::Latest(b)) => {
                    let t = |m: &BTreeMap<(u32, Vec<u8>), Vec<u8>>| {
                        m.iter()
                            .map(|((p, k), v)| ((*p, show(k)), vec![show(v)]))
                            .collect::<BTreeMap<_, _>>()
                    };
                    map_diff(&what, &t(a), &t(b), &mut diffs)
                }
                (TopicView::Set(a), TopicView::Set(b)) => {
                    let t = |v: &Vec<(u32, Vec<u8>, Vec<u8>)>| {
                        let mut m: BTreeMap<(u32, String), Vec<String>> = BTreeMap::new();
                        for (p, k, v) in v {
                            m.entry((*p, show(k))).or_default().push(show(v));
                        }
                        m
                    };
                    map_diff(&what, &t(a), &t(b), &mut diffs)
                }
                _ => {}
            }
        }
        let (ws, gs) = (&w.state, &g.state);
        if ws.fingerprint != gs.fingerprint {
            diffs.push(format!("{side}: snapshot fingerprints differ"));
        }
        if ws.inputs != gs.inputs {
            diffs.push(format!(
                "{side}: final snapshot input offsets {:?} vs {:?}",
                ws.inputs, gs.inputs
            ));
        }
        let t = |m: &BTreeMap<Vec<u8>, (u64, Vec<u8>)>| {
            m.iter()
                .map(|(k, (s, v))| (show(k), vec![(*s, v.clone())]))
                .collect::<BTreeMap<_, _>>()
        };
        map_diff(
            &format!("{side}: state of key"),
            &t(&ws.entries),
            &t(&gs.entries),
            &mut diffs,
        );
        if ws.extras != gs.extras {
            diffs.push(format!(
                "{side}: {} held records vs {}: {} vs {}",
                ws.extras.len(),
                gs.extras.len(),
                brief(&ws.extras),
                brief(&gs.extras)
            ));
        }
    }
    assert!(
        diffs.is_empty(),
        "not identical to the straight run:\n  {}",
        diffs.join("\n  ")
    );
}

/// Checks that a side's final snapshot covers all of its input: the state compared is
/// the state at the end.
fn assert_final(w: Workload, dir: &Path, views: &[SideView]) {
    let input = w.input();
    let records = (input.body.len() + input.tail.len()) as u64;
    for (i, v) in views.iter().enumerate() {
        let covered: u64 = v.state.inputs.iter().map(|i| i.2).sum();
        let want = if i == 0 {
            records
        } else {
            // The read side's input: the events the write side committed.
            raw_records(&dir.join("data/state"), "account_events").len() as u64
        };
        assert_eq!(
            covered, want,
            "{}: the last snapshot is not of the end",
            v.name
        );
    }
}

/// One run straight through: all input present at the start, one epoch (no barrier
/// before the end), hence no snapshot restored and nothing replayed, ever; its one
/// snapshot is the final state.
fn straight_run(w: Workload) -> &'static [SideView] {
    static LEDGER: OnceLock<Vec<SideView>> = OnceLock::new();
    static BANK: OnceLock<Vec<SideView>> = OnceLock::new();
    let cell = match w {
        Workload::Ledger => &LEDGER,
        Workload::Bank => &BANK,
    };
    cell.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let input = w.input();
        w.append(dir.path(), &input.body);
        w.append(dir.path(), &input.tail);
        let summary = run_clean(&w.pipeline(dir.path(), "1h", SNAP_EVERY_EPOCH));
        for &(name, _) in w.sides() {
            let s = section(&summary, name);
            assert!(s.contains("committed 1 epoch this run"), "{summary}");
            assert!(s.contains("wrote 1 snapshot"), "{summary}");
        }
        let views = observe(w, dir.path());
        assert_final(w, dir.path(), &views);
        views
    })
}

/// The end of every crashed procedure: the rest of the body (if any), then the tail in
/// one final epoch whose snapshot is the final state; then the comparison.
fn finish_and_compare(w: Workload, dir: &Path, rest: &[String]) {
    if !rest.is_empty() {
        w.append(dir, rest);
        run_clean(&w.pipeline(dir, "20ms", SNAP_EVERY_EPOCH));
    }
    w.append(dir, &w.input().tail);
    let summary = run_clean(&w.pipeline(dir, "1h", SNAP_EVERY_EPOCH));
    for &(name, _) in w.sides() {
        assert!(
            section(&summary, name).contains("wrote 1 snapshot"),
            "{summary}"
        );
    }
    let views = observe(w, dir);
    assert_final(w, dir, &views);
    assert_identical(straight_run(w), &views);
}

// --- the snapshot directories, seen independently and through `snapshot ls` ------------

/// A snapshot directory as found on disk.
#[derive(Debug)]
struct OnDisk {
    epoch: u64,
    complete: bool,
    shard_files: usize,
    temps: Vec<String>,
}

fn on_disk(root: &Path) -> Vec<OnDisk> {
    snapshot::list(root)
        .unwrap()
        .into_iter()
        .map(|d| {
            let mut temps = Vec::new();
            let mut shard_files = 0;
            for e in std::fs::read_dir(&d.path).unwrap() {
                let name = e.unwrap().file_name().to_string_lossy().into_owned();
                if name.ends_with(".tmp") {
                    temps.push(name);
                } else if name.ends_with(".snap") {
                    shard_files += 1;
                }
            }
            temps.sort();
            OnDisk {
                epoch: d.epoch,
                complete: d.complete,
                shard_files,
                temps,
            }
        })
        .collect()
}

/// `onceflow snapshot ls ROOT --verify` must say what is on disk: each directory
/// complete or not, every complete one valid (a crash never leaves a damaged one
/// behind, only incomplete ones), the temp files, and the counts.
fn assert_ls_honest(root: &Path, dirs: &[OnDisk]) -> String {
    let out = run_ok(bin().args(["snapshot", "ls"]).arg(root).arg("--verify"));
    let text = String::from_utf8(out.stdout).unwrap();
    // Rows (a line starting with the epoch) and the notes under each.
    let mut rows: Vec<(Vec<&str>, Vec<&str>)> = Vec::new();
    for l in text.lines() {
        if l.starts_with(|c: char| c.is_ascii_digit()) {
            rows.push((l.split_whitespace().collect(), Vec::new()));
        } else if let Some(note) = l.strip_prefix("  ") {
            rows.last_mut().expect("a note under a row").1.push(note);
        }
    }
    assert_eq!(rows.len(), dirs.len(), "{text}");
    for ((cols, notes), d) in rows.iter().zip(dirs) {
        assert_eq!(cols[0], d.epoch.to_string(), "{text}");
        if d.complete {
            assert_eq!(&cols[1..3], ["complete", "ok"], "epoch {}: {text}", d.epoch);
        } else {
            assert_eq!(
                &cols[1..3],
                ["incomplete", "-"],
                "epoch {}: {text}",
                d.epoch
            );
            assert!(
                notes.iter().any(|n| n.starts_with(&format!(
                    "incomplete: no MANIFEST ({} of its shard files written",
                    d.shard_files
                ))),
                "epoch {}: {text}",
                d.epoch
            );
        }
        let listed = notes
            .iter()
            .find_map(|n| n.strip_prefix("temp files: "))
            .map(|t| t.split(", ").collect::<Vec<_>>())
            .unwrap_or_default();
        assert_eq!(listed, d.temps, "epoch {}: {text}", d.epoch);
    }
    assert!(!text.contains("leftover temp files"), "{text}");
    let complete = dirs.iter().filter(|d| d.complete).count();
    if !dirs.is_empty() {
        let want = format!(
            "summary: {complete} valid, 0 invalid, {} incomplete\n",
            dirs.len() - complete
        );
        assert!(text.ends_with(&want), "want {want:?} in:\n{text}");
    }
    text
}

// --- one crash at one fault point ------------------------------------------------------

/// Runs the pipeline (tailing, with `ONCEFLOW_FAULT=fault`) and feeds it `parts` from
/// `*next` on, one every few milliseconds, until it dies; checks that it died by
/// SIGKILL at that point. Returns its stderr.
fn run_until_fault(
    w: Workload,
    dir: &Path,
    pipeline: &Path,
    fault: &str,
    parts: &[&[String]],
    next: &mut usize,
) -> String {
    let mut child = bin()
        .args(["run", "--quiet"])
        .arg(pipeline)
        .env(fault::ENV, fault)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if *next < parts.len() {
            w.append(dir, parts[*next]);
            *next += 1;
        } else if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("{fault}: never reached (all input fed, still running after 60 s)");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(
        status.signal(),
        Some(9),
        "{fault}: the run should have died by SIGKILL; {status}; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains(&format!("onceflow: fault point {fault} reached: SIGKILL")),
        "{fault}: died, but not at the point; stderr:\n{stderr}"
    );
    stderr
}

/// Crash at `point` (its `hit`-th time), check what the crash left and that the next
/// start restores from the newest complete snapshot, then finish and compare with the
/// straight run.
fn crash_at(w: Workload, point: &'static str, hit: u64) {
    let fault = format!("{point}@{hit}");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let input = w.input();
    let parts: Vec<&[String]> = input.body.chunks(input.body.len() / 20 + 1).collect();
    let roots: Vec<PathBuf> = w
        .sides()
        .iter()
        .map(|(_, s)| d.join(s).join("snapshots"))
        .collect();

    // A clean start: it leaves complete snapshots behind.
    let pipeline = w.pipeline(d, "20ms", SNAP_EVERY_EPOCH);
    w.append(d, &parts[..6].concat());
    let first = run_clean(&pipeline);
    let mut next = 6;
    for &(name, _) in w.sides() {
        assert!(section(&first, name).contains("snapshot  wrote"), "{first}");
    }
    if point == fault::REPLAY_BATCH {
        // Commits past the newest snapshot, so that the next start replays them.
        w.append(d, &parts[6..10].concat());
        next = 10;
        run_clean(&w.pipeline(d, "20ms", SNAP_NEVER));
        w.pipeline(d, "20ms", SNAP_EVERY_EPOCH);
    }

    run_until_fault(w, d, &pipeline, &fault, &parts, &mut next);

    // What the crash left: `snapshot ls` says it as it is.
    let after: Vec<Vec<OnDisk>> = roots.iter().map(|r| on_disk(r)).collect();
    for (root, dirs) in roots.iter().zip(&after) {
        let ls = assert_ls_honest(root, dirs);
        eprintln!("{fault}: after the crash:\n{ls}");
    }
    let found = |f: &dyn Fn(&OnDisk) -> bool| after.iter().flatten().any(f);
    let evidence = match point {
        fault::SNAPSHOT_SHARD_WRITE | fault::SNAPSHOT_SHARD_BEFORE_RENAME => {
            found(&|o| !o.complete && o.temps.iter().any(|t| t.ends_with(".snap.tmp")))
        }
        fault::SNAPSHOT_SHARD_AFTER_RENAME => found(&|o| !o.complete && o.shard_files > 0),
        fault::SNAPSHOT_MANIFEST_BEFORE_RENAME => {
            found(&|o| !o.complete && o.temps == ["MANIFEST.tmp"])
        }
        _ => true,
    };
    assert!(
        evidence,
        "{fault}: the snapshot directories do not show it: {after:?}"
    );

    // The next start takes the newest complete snapshot of each side and says which
    // incomplete ones it did not use.
    let summary = run_clean(&pipeline);
    eprintln!("{fault}: the next start:\n{summary}");
    for ((&(name, _), dirs), root) in w.sides().iter().zip(&after).zip(&roots) {
        let s = section(&summary, name);
        let newest = dirs.iter().find(|o| o.complete).map(|o| o.epoch);
        assert_eq!(restored_epoch(s), newest, "{fault}: {name}: {summary}");
        for o in dirs.iter().filter(|o| !o.complete) {
            let path = root.join(snapshot::format::snapshot_dir_name(o.epoch));
            assert!(
                s.contains(&format!(
                    "snapshot  not used: {}: incomplete",
                    path.display()
                )),
                "{fault}: {name}: epoch {} not reported as incomplete: {summary}",
                o.epoch
            );
        }
    }

    finish_and_compare(w, d, &parts[next.min(parts.len())..].concat());
    // Retention has cleared what the crash left: only complete, valid snapshots.
    for root in &roots {
        let dirs = on_disk(root);
        assert!(
            dirs.iter().all(|o| o.complete && o.temps.is_empty()),
            "{fault}: {}: {dirs:?}",
            root.display()
        );
        assert_ls_honest(root, &dirs);
    }
}

macro_rules! crash_at_tests {
    ($($name:ident: $w:ident, $point:ident @ $hit:expr;)*) => {
        $(
            #[test]
            fn $name() {
                crash_at(Workload::$w, fault::$point, $hit);
            }
        )*
        /// The (workload, point) of every test above.
        const CRASH_AT_TESTS: &[(Workload, &str)] = &[$((Workload::$w, fault::$point)),*];
    };
}

// Hit counts: the n-th key written (over all shards and sides), the n-th file or
// manifest, the n-th replayed read. Snapshots of the clean start are on disk already.
crash_at_tests! {
    ledger_crash_in_shard_snapshot_write: Ledger, SNAPSHOT_SHARD_WRITE @ 100;
    ledger_crash_before_shard_file_rename: Ledger, SNAPSHOT_SHARD_BEFORE_RENAME @ 1;
    ledger_crash_after_shard_file_rename: Ledger, SNAPSHOT_SHARD_AFTER_RENAME @ 1;
    ledger_crash_before_manifest_rename: Ledger, SNAPSHOT_MANIFEST_BEFORE_RENAME @ 1;
    ledger_crash_after_manifest_rename: Ledger, SNAPSHOT_MANIFEST_AFTER_RENAME @ 2;
    ledger_crash_in_retention: Ledger, SNAPSHOT_RETAIN @ 1;
    ledger_crash_in_replay: Ledger, REPLAY_BATCH @ 3;
    ledger_crash_inside_a_commit: Ledger, COMMIT_BEFORE @ 4;
    ledger_crash_between_commits: Ledger, COMMIT_AFTER @ 4;
    bank_crash_in_shard_snapshot_write: Bank, SNAPSHOT_SHARD_WRITE @ 300;
    bank_crash_before_shard_file_rename: Bank, SNAPSHOT_SHARD_BEFORE_RENAME @ 2;
    bank_crash_after_shard_file_rename: Bank, SNAPSHOT_SHARD_AFTER_RENAME @ 3;
    bank_crash_before_manifest_rename: Bank, SNAPSHOT_MANIFEST_BEFORE_RENAME @ 1;
    bank_crash_after_manifest_rename: Bank, SNAPSHOT_MANIFEST_AFTER_RENAME @ 2;
    bank_crash_in_retention: Bank, SNAPSHOT_RETAIN @ 1;
    bank_crash_in_replay: Bank, REPLAY_BATCH @ 3;
    bank_crash_inside_a_commit: Bank, COMMIT_BEFORE @ 4;
    bank_crash_between_commits: Bank, COMMIT_AFTER @ 4;
}

#[test]
fn every_fault_point_has_a_crash_test() {
    for point in fault::KNOWN {
        for w in [Workload::Ledger, Workload::Bank] {
            assert!(
                CRASH_AT_TESTS.contains(&(w, *point)),
                "no {w:?} crash test at fault point {point}: add one to crash_at_tests!"
            );
        }
    }
}

#[test]
fn an_unknown_fault_point_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let w = Workload::Ledger;
    let pipeline = w.pipeline(dir.path(), "20ms", SNAP_EVERY_EPOCH);
    w.append(dir.path(), &w.input().tail);
    let out = bin()
        .args(["run", "--until-end", "--quiet"])
        .arg(&pipeline)
        .env(fault::ENV, "snapshot.shard.writ@2")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no fault point 'snapshot.shard.writ'"),
        "{err}"
    );
    assert!(err.contains(fault::REPLAY_BATCH), "{err}");
    assert!(!dir.path().join("data/state").exists(), "it started anyway");
}

// --- determinism under many crashes --------------------------------------------------

/// Crashes a workload again and again while its input arrives: every other crash at a
/// fault point (cycling through them, at a small random hit count; if the point is not
/// reached soon, a plain SIGKILL), the others a SIGKILL at a random moment. Snapshots
/// every other epoch. `ONCEFLOW_CRASH_KILLS` crashes (6 by default; `scripts/test
/// --long` sets 30). Then everything must be byte-identical to the straight run.
fn crash_repeatedly(w: Workload, seed: u64) {
    let crashes: usize = std::env::var("ONCEFLOW_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6)
        .max(4);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let input = w.input();
    // Each run gets a part at its start, and a fault run one more every 400 ms.
    let parts: Vec<&[String]> = input
        .body
        .chunks(input.body.len() / (crashes * 3) + 1)
        .collect();
    let pipeline = w.pipeline(d, "20ms", "every_epochs = 2\nkeep = 2");
    let mut rng = Rng::new(seed);
    w.append(d, parts[0]);
    let mut next = 1;
    let mut log = Vec::new();
    for i in 0..crashes {
        let fault = (i % 2 == 0).then(|| {
            let point = fault::KNOWN[(i / 2 + seed as usize) % fault::KNOWN.len()];
            format!("{point}@{}", 1 + rng.below(3))
        });
        let mut cmd = bin();
        cmd.args(["run", "--quiet"])
            .arg(&pipeline)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(f) = &fault {
            cmd.env(fault::ENV, f);
        }
        let mut child = cmd.spawn().unwrap();
        let started = Instant::now();
        let patience = match &fault {
            Some(_) => Duration::from_millis(1200),
            None => Duration::from_millis(50 + rng.below(400)),
        };
        let mut fed_at = None;
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if started.elapsed() >= patience {
                child.kill().unwrap(); // SIGKILL
                break child.wait().unwrap();
            }
            let feed = match fed_at {
                None => true,
                Some(t) => fault.is_some() && started.elapsed() - t >= Duration::from_millis(400),
            };
            if feed && next < parts.len() {
                w.append(d, parts[next]);
                next += 1;
                fed_at = Some(started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert_eq!(status.signal(), Some(9), "{status}: {stderr}");
        let how = match &fault {
            Some(f) if stderr.contains("reached: SIGKILL") => format!("at {f}"),
            Some(f) => format!("killed ({f} not reached)"),
            None => format!("killed after {} ms", patience.as_millis()),
        };
        log.push(how);
    }
    eprintln!("{w:?}: crashes: {}", log.join("; "));
    assert!(
        log.iter().any(|l| l.starts_with("at ")),
        "no fault point was reached: {log:?}"
    );
    finish_and_compare(w, d, &parts[next.min(parts.len())..].concat());
}

#[test]
fn ledger_crashed_and_restored_many_times_is_byte_identical_to_a_straight_run() {
    crash_repeatedly(Workload::Ledger, 5);
}

#[test]
fn bank_crashed_and_restored_many_times_is_byte_identical_to_a_straight_run() {
    crash_repeatedly(Workload::Bank, 8);
}

#[test]
fn a_restart_that_restores_held_records_accounts_for_them() {
    // Seq 2 of one account is late: 3 and 4 wait for it, and the snapshot at the end of
    // the first run holds them. The second run puts them back, then seq 2 arrives and
    // releases them: its summary must balance, as a replay from offset 0 would.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let w = Workload::Ledger;
    let pipeline = w.pipeline(d, "1h", SNAP_EVERY_EPOCH);
    let entry = |seq: u64| {
        format!(
            r#"{{"account":"ACC-1","seq":{seq},"type":"credit","amount":{seq},"ts":{}}}"#,
            1_767_225_600_000 + seq
        )
    };
    w.append(d, &[entry(1), entry(3), entry(4)]);
    let first = run_clean(&pipeline);
    assert!(first.contains("held      2 records wait"), "{first}");
    w.append(d, &[entry(2)]);
    let second = run_clean(&pipeline);
    assert!(
        second.contains("snapshot  restored epoch 1: 1 keys and 2 held records"),
        "{second}"
    );
    assert!(
        second
            .contains("records   3 read = 3 processed + 0 duplicates + 0 dead-lettered + 0 held\n"),
        "{second}"
    );
    assert!(second.contains("speed     1 new records"), "{second}");
    assert!(!second.contains("recovery  replayed"), "{second}");
    let balances = compact(&d.join("data/state"), "balances");
    assert_eq!(balances["ACC-1"]["balance"], 10, "{balances}");
}
