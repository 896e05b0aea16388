//! SIGKILL the real binary at random moments while it processes a growing bank workload,
//! restart it each time, and check that the committed output holds every input's effect
//! exactly once and that the final state equals a reference computed here independently.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
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
    for (i, bad) in [
        "{broken",
        r#"{"seq":1,"amount":5}"#,
        r#"{"account":"ACC-0000001","seq":"x","amount":5}"#,
    ]
    .iter()
    .enumerate()
    {
        lines.insert(10_000 + i * 30_000, bad.to_string());
    }
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
