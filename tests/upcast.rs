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

# v1 and v2 had transfers, {"type":"transfer","cents","to","to_seq"}: one entry for a
# debit of its account and a credit of `to`, at `to`'s sequence number `to_seq`.
# Since v3 they are those two entries.
[[upcast.rules]]
type = "transfer"
from = 2
defaults = { currency = "'EUR'" }
split = [
  { set = { type = "'debit'", amount = "-event.cents" }, remove = ["to", "to_seq"] },
  { set = { type = "'credit'", amount = "event.cents", account = "event.to", seq = "event.to_seq" }, remove = ["to", "to_seq"] },
]
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
    let (view, dead, _) = run_summary(dir, lines);
    (view, dead)
}

/// [`run_with`], also giving the run's summary.
fn run_summary(dir: &Path, lines: &[String]) -> (serde_json::Value, Vec<Rec>, String) {
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
        summary.into_owned(),
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

/// A tiny deterministic generator (the tests need no randomness beyond a fixed mix).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// One step of a ledger's history, with every account's sequence number already taken.
enum Entry {
    /// `(account, seq, amount)`: a credit when positive, a debit when negative.
    Single(String, u64, i64),
    /// `(from, from's seq, to, to's seq, cents)`.
    Transfer(String, u64, String, u64, i64),
}

/// A ledger of `n` steps over 12 accounts, about one in four a transfer.
fn ledger(n: usize) -> Vec<Entry> {
    let mut rng = Lcg(11);
    let mut seqs = [0u64; 12];
    let mut take = |a: usize| {
        seqs[a] += 1;
        (format!("ACC-{a:02}"), seqs[a])
    };
    (0..n)
        .map(|_| {
            let a = rng.below(12) as usize;
            let cents = 1 + rng.below(5000) as i64;
            match rng.below(8) {
                0 | 1 => {
                    let b = (a + 1 + rng.below(11) as usize) % 12;
                    let (from, from_seq) = take(a);
                    let (to, to_seq) = take(b);
                    Entry::Transfer(from, from_seq, to, to_seq, cents)
                }
                k => {
                    let (acc, seq) = take(a);
                    Entry::Single(acc, seq, if k < 5 { cents } else { -cents })
                }
            }
        })
        .collect()
}

/// The entry's lines in version `v`: a transfer is one line in v1 and v2, two in v3.
fn entry_lines(e: &Entry, v: u8, ts: u64) -> Vec<String> {
    let single = |acc: &str, seq: u64, amount: i64| {
        let ty = if amount < 0 { "debit" } else { "credit" };
        match v {
            1 => serde_json::json!({"acct": acc, "seq": seq, "kind": ty, "cents": amount.abs(), "ts": ts}),
            2 => serde_json::json!({"account": acc, "seq": seq, "type": ty, "cents": amount.abs(), "ts": ts, "schema_version": 2}),
            _ => serde_json::json!({"account": acc, "seq": seq, "type": ty, "amount": amount, "currency": "EUR", "ts": ts, "schema_version": 3}),
        }
        .to_string()
    };
    match e {
        Entry::Single(acc, seq, amount) => vec![single(acc, *seq, *amount)],
        Entry::Transfer(from, from_seq, to, to_seq, cents) => match v {
            1 => vec![
                serde_json::json!({"acct": from, "seq": from_seq, "kind": "transfer", "cents": cents, "to": to, "to_seq": to_seq, "ts": ts})
                    .to_string(),
            ],
            2 => vec![
                serde_json::json!({"account": from, "seq": from_seq, "type": "transfer", "cents": cents, "to": to, "to_seq": to_seq, "ts": ts, "schema_version": 2})
                    .to_string(),
            ],
            _ => vec![single(from, *from_seq, -cents), single(to, *to_seq, *cents)],
        },
    }
}

/// The ledger as a log in the versions `version(i)` picks, with the delivery faults of
/// a real producer: every 9th entry comes after its successor, every 13th twice.
fn ledger_log(entries: &[Entry], version: impl Fn(usize) -> u8) -> Vec<String> {
    let mut order: Vec<usize> = (0..entries.len()).collect();
    for i in (9..entries.len()).step_by(9) {
        order.swap(i - 1, i);
    }
    let mut out = Vec::new();
    for (pos, &i) in order.iter().enumerate() {
        let lines = entry_lines(&entries[i], version(i), 1_000 + i as u64);
        out.extend(lines.iter().cloned());
        if pos % 13 == 12 {
            out.extend(lines);
        }
    }
    out
}

#[test]
fn v1_transfers_split_in_two_give_the_same_balances_as_a_log_written_in_v3() {
    let entries = ledger(1200);
    let transfers = entries
        .iter()
        .filter(|e| matches!(e, Entry::Transfer(..)))
        .count();
    assert!(transfers > 200, "{transfers}");
    let current = ledger_log(&entries, |_| 3);
    let oldest = ledger_log(&entries, |_| 1);
    let mixed = ledger_log(&entries, |i| 1 + (i % 3) as u8);

    let (want, dead, summary) = run_summary(tempfile::tempdir().unwrap().path(), &current);
    assert_eq!(want.as_object().unwrap().len(), 12);
    assert!(dead.is_empty(), "{dead:?}");
    assert!(!summary.contains("split"), "{summary}");
    for (name, log) in [("all v1", &oldest), ("v1/v2/v3 mixed", &mixed)] {
        let (got, dead, summary) = run_summary(tempfile::tempdir().unwrap().path(), log);
        assert!(dead.is_empty(), "{name}: {dead:?}");
        assert_eq!(got, want, "{name}");
        // Each record read is counted once, a split one by its first part.
        let records = format!("{} read = ", thousands(log.len()));
        assert!(summary.contains(&records), "{name}: {summary}");
        assert!(
            summary.contains("split by [upcast] into"),
            "{name}: {summary}"
        );
    }
}

/// `1234567` as the summary prints it: `1,234,567`.
fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[test]
fn a_restart_replays_split_records_to_the_same_state() {
    let entries = ledger(600);
    let (want, _, _) = run_summary(
        tempfile::tempdir().unwrap().path(),
        &ledger_log(&entries, |_| 3),
    );
    // The v1 log in two runs: the second replays the first half (outputs suppressed),
    // splitting its transfers again, then goes on with the second half.
    let oldest = ledger_log(&entries, |_| 1);
    let (first, second) = oldest.split_at(oldest.len() / 2);
    let dir = tempfile::tempdir().unwrap();
    run_summary(dir.path(), first);
    let (got, dead, summary) = run_summary(dir.path(), second);
    assert!(summary.contains("replayed"), "{summary}");
    assert!(dead.is_empty(), "{dead:?}");
    assert_eq!(got, want);
    // Every view update of a key is committed once, in order: the replay emitted nothing.
    let mut last: std::collections::HashMap<String, u64> = Default::default();
    for r in read_topic(&dir.path().join("state"), "balances") {
        let v = r.value["version"].as_u64().unwrap();
        let prev = last.insert(r.key.clone(), v).unwrap_or(0);
        assert!(v > prev, "{}: version {v} after {prev}", r.key);
    }
}

#[test]
fn a_split_record_with_a_part_that_cannot_be_routed_is_dead_lettered_whole() {
    let lines: Vec<String> = [
        r#"{"acct":"A","seq":1,"kind":"credit","cents":50,"ts":1}"#,
        // A to_seq that cannot be: the credit part has no sequence number for "B".
        r#"{"acct":"A","seq":2,"kind":"transfer","cents":20,"to":"B","to_seq":-1,"ts":2}"#,
        r#"{"acct":"A","seq":2,"kind":"transfer","cents":20,"to":"B","to_seq":1,"ts":3}"#,
    ]
    .map(String::from)
    .into();
    let (view, dead, summary) = run_summary(tempfile::tempdir().unwrap().path(), &lines);
    assert_eq!(view["A"]["balance"], 30);
    assert_eq!(view["B"]["balance"], 20);
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].value["reason"], "upcast_failed");
    assert_eq!(
        dead[0].value["detail"],
        "part 2 of 2 after upcasting: the sequence field 'seq' must be a non-negative integer, got -1"
    );
    assert_eq!(dead[0].value["offset"], 1);
    assert!(
        summary.contains("3 read = 2 processed + 0 duplicates + 1 dead-lettered + 0 held"),
        "{summary}"
    );
    assert!(
        summary.contains("1 record split by [upcast] into 2 parts"),
        "{summary}"
    );
}

/// The projections of `examples/bank/pipeline.toml` (balances, monthly statements, daily
/// report; not the transaction history, keyed by the event versions this history lacks)
/// as a pipeline of their own, reading a history whose older events
/// (v1) named the aggregate id `account`, kept amounts in `data.cents` (also v2) and
/// stored a transfer as one `TransferMade` event, which is now a `Withdrawn` and a
/// `Deposited` event of the other account.
const PROJECTION_UPCASTS: &str = r#"

[upcast]

[[upcast.rules]]                  # v1 -> v2
from = 1
rename = { account = "aggregate_id" }

[[upcast.rules]]                  # v1 -> v2: a transfer becomes two events
type = "TransferMade"
from = 1
rename = { account = "aggregate_id" }
split = [
  { set = { type = "'Withdrawn'" }, remove = ["data.to"] },
  { set = { type = "'Deposited'", aggregate_id = "event.data.to" }, remove = ["data.to"] },
]

[[upcast.rules]]                  # v2 -> v3, the parts of a transfer too
from = 2
rename = { "data.cents" = "data.amount" }
"#;

/// One account event of the history: `(type, account, data)`, or a transfer.
enum Happening {
    Event(&'static str, String, serde_json::Value),
    Transfer(String, String, i64, u64),
}

fn account_history() -> Vec<Happening> {
    let mut rng = Lcg(7);
    let day = 86_400_000u64;
    let start = 1_767_225_600_000u64; // 2026-01-01
    let accounts: Vec<String> = (1..=8).map(|a| format!("ACC-{a}")).collect();
    let mut h: Vec<Happening> = accounts
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let data = serde_json::json!({"owner": format!("Owner {i}"), "currency": "EUR", "at": start + i as u64 * 1000});
            Happening::Event("AccountOpened", a.clone(), data)
        })
        .collect();
    for i in 0..400u64 {
        let at = start + i * day / 5; // 80 days: three months
        let a = accounts[rng.below(8) as usize].clone();
        let cents = 1 + rng.below(900) as i64;
        h.push(match rng.below(10) {
            0..=3 => Happening::Transfer(
                a.clone(),
                accounts[(rng.below(7) as usize + 1 + a[4..].parse::<usize>().unwrap()) % 8]
                    .clone(),
                cents,
                at,
            ),
            4..=6 => Happening::Event(
                "Deposited",
                a,
                serde_json::json!({"amount": cents, "at": at}),
            ),
            7 | 8 => Happening::Event(
                "Withdrawn",
                a,
                serde_json::json!({"amount": cents, "at": at}),
            ),
            _ => Happening::Event("AccountFrozen", a, serde_json::json!({"reason": "check"})),
        });
    }
    h.push(Happening::Event(
        "AccountClosed",
        "ACC-8".into(),
        serde_json::json!({"at": start + 81 * day}),
    ));
    h
}

/// The event in version `v` (1, 2 or 3): one line, or two for a transfer in v3.
fn history_lines(e: &Happening, v: u8) -> Vec<String> {
    let event = |ty: &str, acc: &str, data: &serde_json::Value| {
        let mut data = data.clone();
        if v < 3
            && let Some(amount) = data.as_object_mut().unwrap().remove("amount")
        {
            data["cents"] = amount;
        }
        match v {
            1 => serde_json::json!({"type": ty, "account": acc, "data": data}),
            _ => serde_json::json!({"type": ty, "aggregate": "account", "aggregate_id": acc, "data": data, "schema_version": v}),
        }
        .to_string()
    };
    match e {
        Happening::Event(ty, acc, data) => vec![event(ty, acc, data)],
        Happening::Transfer(from, to, cents, at) => {
            let money = serde_json::json!({"amount": cents, "at": at});
            match v {
                1 => {
                    let data = serde_json::json!({"cents": cents, "to": to, "at": at});
                    vec![
                        serde_json::json!({"type": "TransferMade", "account": from, "data": data})
                            .to_string(),
                    ]
                }
                _ => vec![
                    event("Withdrawn", from, &money),
                    event("Deposited", to, &money),
                ],
            }
        }
    }
}

/// Runs the example's projections (with [`PROJECTION_UPCASTS`]) over `lines`; the
/// compacted read models and the summary.
fn run_projections(lines: &[String]) -> (Vec<serde_json::Value>, String) {
    let dir = tempfile::tempdir().unwrap();
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/bank/pipeline.toml"),
    )
    .unwrap();
    let section = |from: &str| example.find(from).expect("the example's projections");
    let toml = String::from(
        r#"[pipeline]
name = "bank-projections"
state_dir = "data/projections"

[[sources]]
name = "account-events"
type = "log"
path = "data/state"
topic = "account_events"

"#,
    ) + &example
        [section("# --- the current balance")..section("# --- the transaction history")]
        + &example[section("# --- one statement row")..]
        + PROJECTION_UPCASTS;
    let pipeline = dir.path().join("projections.toml");
    std::fs::write(&pipeline, toml).unwrap();
    log_append(
        &dir.path().join("data/state"),
        &[
            "--topic",
            "account_events",
            "--partitions",
            "1",
            "--no-fsync",
        ],
        lines,
    );
    let summary = run_until_end(&pipeline);
    assert!(!summary.contains("UNBALANCED"), "{summary}");
    let state = dir.path().join("data/projections");
    assert!(read_topic(&state, "dead_letters").is_empty(), "{summary}");
    let models = ["balances", "monthly_statements", "daily_report"]
        .iter()
        .map(|t| compact(&state, t))
        .collect();
    (models, summary)
}

#[test]
fn the_example_projections_read_split_v1_events_as_if_written_in_v3() {
    let history = account_history();
    let transfers = history
        .iter()
        .filter(|h| matches!(h, Happening::Transfer(..)))
        .count();
    let log = |version: &dyn Fn(usize) -> u8| -> Vec<String> {
        history
            .iter()
            .enumerate()
            .flat_map(|(i, h)| history_lines(h, version(i)))
            .collect()
    };
    let (want, _) = run_projections(&log(&|_| 3));
    assert_eq!(want[0].as_object().unwrap().len(), 7, "ACC-8 is closed");
    assert!(want[1].as_object().unwrap().len() >= 8 * 3, "{}", want[1]);
    let (got, summary) = run_projections(&log(&|_| 1));
    assert_eq!(got, want, "all v1");
    let split = format!(
        "{transfers} records split by [upcast] into {} parts",
        2 * transfers
    );
    assert!(summary.contains(&split), "{summary}");
    let (got, _) = run_projections(&log(&|i| 1 + (i % 3) as u8));
    assert_eq!(got, want, "v1/v2/v3 mixed");
}

#[test]
fn validate_reports_every_split_error_with_its_path() {
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
[[upcast.rules]]
from = 1
split = [{ set = { type = "'a'" } }]
[[upcast.rules]]
from = 2
split = [
  { set = { type = "event.type + (1 + true)" } },
  { set = { schema_version = "3" }, remove = [""] },
]
"#,
    )
    .unwrap();
    let out = bin().arg("validate").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "4 errors in the pipeline file",
        "upcast.rules[0].split (line 16): needs at least two parts, got 1",
        "upcast.rules[1].split[0].set.type (line 20): column 17: '+' cannot apply to int and bool",
        "upcast.rules[1].split[1].set.schema_version (line 21): sets the version field: every part goes on at version 3",
        "upcast.rules[1].split[1].remove[0] (line 21): field path must not be empty",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}
