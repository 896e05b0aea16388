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

#[test]
fn sigkill_at_random_moments_loses_nothing_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = bank_pipeline(dir.path(), "per_event", "20ms", "");
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

    // `scripts/test --long` sets more kills.
    let want_kills: usize = std::env::var("ONCEFLOW_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6)
        .max(5);
    let mut rng = Rng::new(7);
    let mut kills = 0;
    let mut next_chunk = 0;
    append(dir.path(), chunks[next_chunk]);
    next_chunk += 1;
    let deadline = Instant::now() + Duration::from_secs(60 + 5 * want_kills as u64);
    while kills < want_kills && Instant::now() < deadline {
        let mut child = Command::new(env!("CARGO_BIN_EXE_onceflow"))
            .args(["run", "--quiet"])
            .arg(&pipeline)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // More input arrives while it runs, then a SIGKILL at a random moment.
        if next_chunk < chunks.len() {
            append(dir.path(), chunks[next_chunk]);
            next_chunk += 1;
        }
        std::thread::sleep(Duration::from_millis(50 + rng.below(600)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
    }
    assert!(kills >= 5, "only {kills} kills before the deadline");
    while next_chunk < chunks.len() {
        append(dir.path(), chunks[next_chunk]);
        next_chunk += 1;
    }
    let out = run_ok(bin().args(["run", "--until-end", "--quiet"]).arg(&pipeline));
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(!summary.contains("UNBALANCED"), "{summary}");

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
}
