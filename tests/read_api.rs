//! Reads on a running engine (`onceflow_core::query`): rows by key, scans by key prefix
//! with CEL filters, paging, aggregate state by id, errors, and the consistency rule
//! (every answer is a committed epoch cut) checked against the committed topics while
//! records keep arriving.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use onceflow_connectors::files::AppendOptions;
use onceflow_core::config::{FieldPath, Pipeline};
use onceflow_core::engine::{self, RunOptions};
use onceflow_core::log::{FsyncPolicy, LogOptions};
use onceflow_core::query::{ReadError, ReadHandle, Row, Scan};
use onceflow_core::stats::Stats;

use common::*;

/// Balances, and a transaction history: one row per deposit or withdrawal.
const PIPELINE: &str = r#"
[pipeline]
name = "reads"
shards = 2
commit_interval = "20ms"
state_dir = "state"

[[sources]]
name = "events"
type = "log"
path = "input"
topic = "account_events"

[[projections]]
name = "balances"
key = "event.aggregate_id"
fields = { balance = "0", events = "0" }

[[projections.on]]
set = { events = "row.events + 1" }

[[projections.on]]
types = ["Deposited"]
set = { balance = "row.balance + event.data.amount" }

[[projections.on]]
types = ["Withdrawn"]
set = { balance = "row.balance - event.data.amount" }

[[projections.on]]
types = ["AccountClosed"]
delete = "true"

[[projections]]
name = "transactions"
when = "event.type in ['Deposited', 'Withdrawn']"
key = "event.aggregate_id + ':' + string(event.version)"
fields = { account = "''", type = "''", amount = "0", at = { type = "timestamp", default = "timestamp(0)" } }

[[projections.on]]
set = { account = "event.aggregate_id", type = "event.type", amount = "event.data.amount", at = "timestamp_ms(event.data.at)" }
"#;

const ACCOUNTS: usize = 4;
/// Events in all; the first [`FIRST`] are there when the engine starts.
const EVENTS: usize = 3_000;
const FIRST: usize = 80;
/// 2025-12-30T00:00:00Z in milliseconds.
const START_MS: i64 = 1_767_052_800_000;
/// 2026-01-01T00:00:00Z in milliseconds.
const NEW_YEAR_MS: i64 = 1_767_225_600_000;
const HOUR_MS: i64 = 3_600_000;

/// One account event of the test's input.
#[derive(Debug, Clone)]
struct Ev {
    account: String,
    version: u64,
    kind: &'static str,
    amount: i64,
    at_ms: i64,
}

impl Ev {
    fn line(&self) -> String {
        let data = if self.amount > 0 {
            serde_json::json!({ "amount": self.amount, "at": self.at_ms })
        } else {
            serde_json::json!({ "at": self.at_ms })
        };
        serde_json::json!({
            "event_id": format!("{}:{}", self.account, self.version),
            "type": self.kind,
            "aggregate_id": self.account,
            "version": self.version,
            "data": data,
        })
        .to_string()
    }

    fn key(&self) -> String {
        format!("{}:{}", self.account, self.version)
    }
}

/// Four accounts from two days before new year on, an event every three hours: an
/// opening each, then deposits and withdrawals of 25 to 275; the last account is closed
/// at the very end.
fn events() -> Vec<Ev> {
    let mut versions = [0u64; ACCOUNTS];
    let mut out: Vec<Ev> = (0..EVENTS)
        .map(|i| {
            let a = i % ACCOUNTS;
            versions[a] += 1;
            let (kind, amount) = match (versions[a], (i / ACCOUNTS) % 3) {
                (1, _) => ("AccountOpened", 0),
                (_, 2) => ("Withdrawn", 25 * ((i as i64 * 7) % 11 + 1)),
                _ => ("Deposited", 25 * ((i as i64 * 5) % 11 + 1)),
            };
            Ev {
                account: format!("ACC-{a}"),
                version: versions[a],
                kind,
                amount,
                at_ms: START_MS + i as i64 * 3 * HOUR_MS,
            }
        })
        .collect();
    let last = ACCOUNTS - 1;
    out.push(Ev {
        account: format!("ACC-{last}"),
        version: versions[last] + 1,
        kind: "AccountClosed",
        amount: 0,
        at_ms: START_MS + EVENTS as i64 * 3 * HOUR_MS,
    });
    out
}

/// Per account, the balance after each of its events (index = version).
fn balances_by_version(evs: &[Ev]) -> BTreeMap<String, Vec<i64>> {
    let mut m: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for e in evs {
        let v = m.entry(e.account.clone()).or_insert_with(|| vec![0]);
        let last = *v.last().unwrap();
        v.push(match e.kind {
            "Deposited" => last + e.amount,
            "Withdrawn" => last - e.amount,
            _ => last,
        });
    }
    m
}

/// Appends events to the input log, in one transaction.
fn append(dir: &Path, evs: &[Ev]) {
    let lines: String = evs.iter().map(|e| e.line() + "\n").collect();
    onceflow_connectors::files::append_lines(
        &dir.join("input"),
        lines.as_bytes(),
        "events",
        &AppendOptions {
            topic: "account_events".into(),
            partitions: 4,
            key: Some(FieldPath::parse("aggregate_id").unwrap()),
            batch: 10_000,
            log: LogOptions {
                fsync: FsyncPolicy::Never,
                ..LogOptions::default()
            },
        },
    )
    .unwrap();
}

fn keys(rows: &[Row]) -> Vec<String> {
    rows.iter().map(|r| r.key.clone()).collect()
}

/// The transactions among `evs` that pass `pred`, by key.
fn expected(evs: &[Ev], pred: impl Fn(&Ev) -> bool) -> Vec<String> {
    let mut k: Vec<String> = evs
        .iter()
        .filter(|e| matches!(e.kind, "Deposited" | "Withdrawn"))
        .filter(|e| pred(e))
        .map(Ev::key)
        .collect();
    k.sort();
    k
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn reads_on_a_running_projection_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pipeline.toml");
    std::fs::write(&path, PIPELINE).unwrap();
    let evs = events();
    let (first, second) = evs.split_at(FIRST);
    append(dir.path(), first);

    let reads = ReadHandle::new();
    assert_eq!(
        reads.get("balances", "ACC-0").unwrap_err(),
        ReadError::NotRunning
    );
    let p = Pipeline::load(&path).unwrap();
    let stats = Arc::new(Stats::default());
    let opts = RunOptions {
        until_end: false,
        stats: stats.clone(),
        read: Some(reads.clone()),
        ..RunOptions::default()
    };
    let stop = opts.stop.clone();
    let engine = std::thread::spawn(move || engine::run(&p, opts));
    let committed = |n: usize| {
        let stats = stats.clone();
        move || stats.committed_input.load(Ordering::Relaxed) == n as u64
    };
    wait_for("the first events to commit", committed(first.len()));

    // --- rows by key ---
    assert_eq!(reads.tables().unwrap(), ["balances", "transactions"]);
    let reference = balances_by_version(first);
    for (account, by_version) in &reference {
        let row = reads.get("balances", account).unwrap().expect(account);
        let version = by_version.len() as u64 - 1;
        assert_eq!(row.key, *account);
        assert_eq!(row.version, version);
        assert_eq!(
            row.value,
            serde_json::json!({
                "key": account, "version": version,
                "balance": by_version.last().unwrap(), "events": version,
            })
        );
        assert!(row.epoch >= 1 && row.epoch <= reads.committed_epoch().unwrap());
    }
    assert_eq!(reads.get("balances", "ACC-9").unwrap(), None);
    let tx = reads.get("transactions", &first[9].key()).unwrap().unwrap();
    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Transaction {
        account: String,
        #[serde(rename = "type")]
        kind: String,
        amount: i64,
        at: String,
    }
    assert_eq!(
        tx.to::<Transaction>().unwrap(),
        Transaction {
            account: first[9].account.clone(),
            kind: first[9].kind.to_string(),
            amount: first[9].amount,
            at: "2025-12-31T03:00:00Z".into(),
        }
    );

    // --- scans by prefix, with filters on type, amount and date ---
    let scan = |filter: Option<&str>, prefix: &str, limit: usize| {
        let mut s = Scan::new().prefix(prefix).limit(limit);
        if let Some(f) = filter {
            s = s.filter(f);
        }
        sorted(keys(&reads.scan_all("transactions", &s).unwrap()))
    };
    assert_eq!(
        scan(None, "ACC-1:", 7),
        expected(first, |e| e.account == "ACC-1")
    );
    assert_eq!(
        scan(
            Some(
                "row.type == 'Withdrawn' && row.amount >= 100 && row.at >= timestamp('2026-01-01T00:00:00Z')"
            ),
            "",
            100
        ),
        expected(first, |e| e.kind == "Withdrawn"
            && e.amount >= 100
            && e.at_ms >= NEW_YEAR_MS)
    );
    assert_eq!(
        scan(Some("row.amount >= 100 && row.amount < 200"), "ACC-2:", 3),
        expected(first, |e| e.account == "ACC-2"
            && (100..200).contains(&e.amount))
    );
    let window =
        "row.at >= timestamp('2025-12-31T00:00:00Z') && row.at < timestamp('2026-01-02T12:00:00Z')";
    let in_window =
        |e: &Ev| e.at_ms >= NEW_YEAR_MS - 24 * HOUR_MS && e.at_ms < NEW_YEAR_MS + 36 * HOUR_MS;
    assert_eq!(scan(Some(window), "", 10), expected(first, in_window));
    assert!(!expected(first, in_window).is_empty());
    assert_eq!(
        scan(Some("row.account == 'nobody'"), "", 10),
        Vec::<String>::new()
    );

    // --- paging: every row once, at most `limit` per page ---
    let mut seen = BTreeSet::new();
    let mut s = Scan::new().limit(5);
    let mut pages = 0;
    loop {
        let page = reads.scan("transactions", &s).unwrap();
        pages += 1;
        assert!(page.rows.len() <= 5);
        assert!(
            page.rows.windows(2).all(|w| w[0].key < w[1].key),
            "a page is sorted by key"
        );
        for r in &page.rows {
            assert!(seen.insert(r.key.clone()), "{} twice", r.key);
            assert_eq!(r.epoch, page.epoch);
        }
        match page.next {
            Some(c) => s = s.after(c),
            None => break,
        }
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        expected(first, |_| true)
    );
    assert!(pages >= expected(first, |_| true).len() / 5);

    // --- clear errors ---
    let err = |table: &str, s: Scan| reads.scan(table, &s).unwrap_err();
    let e = err("transactions", Scan::new().filter("row.amont > 1"));
    assert!(
        matches!(&e, ReadError::BadFilter { .. })
            && e.to_string().contains("did you mean 'row.amount'?"),
        "{e}"
    );
    let e = err("transactions", Scan::new().filter("row.at >= '2026-01-01'"));
    assert_eq!(
        e.to_string(),
        "filter `row.at >= '2026-01-01'`: column 8: '>=' cannot compare timestamp and string"
    );
    let e = err("transactions", Scan::new().filter("row.amount"));
    assert_eq!(
        e.to_string(),
        "filter `row.amount`: must be a bool, but it is an int"
    );
    let e = err(
        "transactions",
        Scan::new().filter("row.amount / (row.amount - row.amount) > 0"),
    );
    assert!(
        matches!(&e, ReadError::FilterFailed(m) if m.contains("division by zero")),
        "{e}"
    );
    assert_eq!(
        err("transactions", Scan::new().limit(0)),
        ReadError::BadLimit(0)
    );
    let e = reads.get("balance", "ACC-1").unwrap_err();
    assert_eq!(
        e.to_string(),
        "no read model named 'balance'; this pipeline has: balances, transactions"
    );
    assert!(matches!(
        reads.state("ACC-1"),
        Err(ReadError::NotOneTable(2, _))
    ));
    let page = reads.scan("transactions", &Scan::new().limit(1)).unwrap();
    let e = err("balances", Scan::new().after(page.next.unwrap()));
    assert!(matches!(e, ReadError::BadCursor(_)), "{e}");

    // --- reads while records keep coming: every answer is a committed cut ---
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (reads, done) = (reads.clone(), done.clone());
        std::thread::spawn(move || {
            let mut seen: Vec<Row> = Vec::new();
            let mut last_epoch = 0;
            while !done.load(Ordering::Relaxed) {
                if let Some(r) = reads.get("balances", "ACC-1").unwrap() {
                    assert!(r.epoch >= last_epoch, "epochs go forward");
                    assert!(
                        r.epoch <= reads.committed_epoch().unwrap(),
                        "read after its commit"
                    );
                    last_epoch = r.epoch;
                    seen.push(r);
                }
                seen.extend(reads.scan_all("balances", &Scan::new().limit(2)).unwrap());
            }
            seen
        })
    };
    // Bursts larger than a shard's batch: the router hands full batches to the shards
    // in the middle of an epoch, so a read answered there (and not at a cut) would show
    // versions that are never committed.
    for chunk in second.chunks(600) {
        append(dir.path(), chunk);
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    wait_for("every event to commit", committed(evs.len()));
    done.store(true, Ordering::Relaxed);
    let observed = reader.join().unwrap();
    assert!(observed.len() > 10, "only {} reads", observed.len());

    // After the closing event the account is gone from the read model.
    assert_eq!(reads.get("balances", "ACC-3").unwrap(), None);
    assert_eq!(
        keys(&reads.scan_all("balances", &Scan::new()).unwrap()),
        ["ACC-0", "ACC-1", "ACC-2"]
    );

    stop.store(true, Ordering::Relaxed);
    let summary = engine.join().unwrap().unwrap();
    assert!(summary.stats.balanced());
    assert_eq!(
        reads.get("balances", "ACC-1").unwrap_err(),
        ReadError::NotRunning
    );

    // Every row read is one the state log holds: the version an epoch committed (with
    // per-epoch upserts, a version in the middle of an epoch is never written), and the
    // balance after exactly that many events of its account.
    let committed_rows: BTreeSet<(String, u64)> = read_topic(&dir.path().join("state"), "balances")
        .into_iter()
        .filter(|r| !r.value.is_null())
        .map(|r| (r.key, r.value["version"].as_u64().unwrap()))
        .collect();
    let reference = balances_by_version(&evs);
    for r in &observed {
        assert!(
            committed_rows.contains(&(r.key.clone(), r.version)),
            "{} version {} was read but never committed",
            r.key,
            r.version
        );
        assert_eq!(
            r.value["balance"], reference[&r.key][r.version as usize],
            "{r:?}"
        );
    }
}

fn example(file: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/bank")
        .join(file)
}

#[test]
fn aggregate_state_by_id_on_a_running_engine() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["pipeline.toml", "commands.jsonl"] {
        std::fs::copy(example(f), dir.path().join(f)).unwrap();
    }
    let p = Pipeline::load(&dir.path().join("pipeline.toml")).unwrap();
    for s in &p.sources {
        onceflow_connectors::files::load_if_missing(s, p.key.field.as_ref()).unwrap();
    }
    // The bank has both sides: one handle reads the aggregate's state (write side), one
    // the projections (read side).
    let reads = ReadHandle::new();
    let models = ReadHandle::new();
    let stats = Arc::new(Stats::default());
    let read_side = Arc::new(Stats::default());
    let opts = RunOptions {
        until_end: false,
        stats: stats.clone(),
        read_side_stats: read_side.clone(),
        write_side_read: Some(reads.clone()),
        read: Some(models.clone()),
        ..RunOptions::default()
    };
    let stop = opts.stop.clone();
    let engine = std::thread::spawn(move || engine::run(&p, opts));
    wait_for("the commands to commit", || {
        let end = stats.source_end.load(Ordering::Relaxed);
        end > 0 && stats.committed_input.load(Ordering::Relaxed) == end
    });

    wait_for("the events to be projected", || {
        let end = read_side.source_end.load(Ordering::Relaxed);
        end > 0 && read_side.committed_input.load(Ordering::Relaxed) == end
    });
    assert_eq!(
        models.tables().unwrap(),
        [
            "balances",
            "transactions",
            "monthly_statements",
            "daily_report"
        ]
    );
    assert_eq!(
        models.get("balances", "ACC-1").unwrap().unwrap().value,
        json_file(&example("expected_balances.json"))["ACC-1"]
    );
    // The transaction history is insert_only: its rows are in its topic, not in the
    // state, and the handle says so rather than finding nothing.
    for e in [
        models.get("transactions", "ACC-1/000000002").unwrap_err(),
        models.scan("transactions", &Scan::new()).unwrap_err(),
    ] {
        assert_eq!(e, ReadError::NotKept("transactions".into()));
        assert!(e.to_string().contains("not kept in state"), "{e}");
    }
    // An account's monthly statements, filtered by what they add up to.
    let busy = models
        .scan_all(
            "monthly_statements",
            &Scan::new()
                .prefix("ACC-1:")
                .filter("row.deposited >= 1000 && row.transactions > 1"),
        )
        .unwrap();
    let statements = json_file(&example("expected_monthly_statements.json"));
    let want: Vec<&String> = statements
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, r)| {
            k.starts_with("ACC-1:")
                && r["deposited"].as_i64() >= Some(1000)
                && r["transactions"].as_i64() > Some(1)
        })
        .map(|(k, _)| k)
        .collect();
    assert!(!want.is_empty());
    assert_eq!(keys(&busy).iter().collect::<Vec<_>>(), want);

    // The state is the view: one read model, named after the view topic.
    assert_eq!(reads.tables().unwrap(), ["accounts"]);
    let expected = json_file(&example("expected.json"));
    let expected = expected.as_object().unwrap();
    for (id, state) in expected {
        let row = reads.state(id).unwrap().expect(id);
        assert_eq!(&row.value, state, "{id}");
        assert_eq!(row, reads.get("accounts", id).unwrap().unwrap());
    }
    assert_eq!(reads.state("ACC-404").unwrap(), None);

    // Typed fields: the filter is checked against [aggregate.state].
    let open = reads
        .scan_all(
            "accounts",
            &Scan::new().filter("row.status == 'open' && row.balance >= 700"),
        )
        .unwrap();
    let want: Vec<&String> = expected
        .iter()
        .filter(|(_, s)| s["status"] == "open" && s["balance"].as_i64().unwrap() >= 700)
        .map(|(k, _)| k)
        .collect();
    assert!(!want.is_empty());
    assert_eq!(keys(&open).iter().collect::<Vec<_>>(), want);
    let e = reads
        .scan("accounts", &Scan::new().filter("row.balanse > 0"))
        .unwrap_err();
    assert!(e.to_string().contains("did you mean 'row.balance'?"), "{e}");

    // One handle serves one run at a time.
    let (mut p2, _) = Pipeline::load(&dir.path().join("pipeline.toml"))
        .unwrap()
        .sides()
        .unwrap();
    p2.state_dir = dir.path().join("another_state");
    let err = engine::run(
        &p2,
        RunOptions {
            read: Some(reads.clone()),
            ..RunOptions::default()
        },
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the read handle is already used by a running engine: give each run its own"
    );

    stop.store(true, Ordering::Relaxed);
    engine.join().unwrap().unwrap();
    assert_eq!(reads.state("ACC-1").unwrap_err(), ReadError::NotRunning);
}
