//! Rust projections (`onceflow_core::api::Projection`): the three read models of
//! the read side of `examples/bank/pipeline.toml` written in Rust, run by the engine on the
//! same events, give the same rows, tombstones and refused updates as the declared ones.
//!
//! This file doubles as the worked example of `docs/rust-api.md`.

mod common;

use std::path::Path;
use std::sync::Arc;

use onceflow_core::api::{Keys, Projection, ProjectionTopic, TypedProjections, Update};
use onceflow_core::config::Pipeline;
use onceflow_core::engine::{self, RunOptions};
use serde::{Deserialize, Serialize};

use common::*;

// --- the events, as the account aggregate writes them -------------------------------------

#[derive(Deserialize)]
struct Event {
    aggregate_id: String,
    #[serde(flatten)]
    kind: Kind,
}

/// `type` names the variant, `data` holds its fields.
#[derive(Deserialize)]
#[serde(tag = "type", content = "data")]
enum Kind {
    AccountOpened {
        owner: String,
        currency: String,
        at: i64,
    },
    Deposited {
        amount: i64,
        at: i64,
    },
    Withdrawn {
        amount: i64,
        at: i64,
    },
    BalanceDepleted {
        at: i64,
    },
    AccountFrozen {},
    AccountUnfrozen {},
    AccountClosed {
        at: i64,
    },
}

impl Kind {
    /// When it happened, for the events that say.
    fn at(&self) -> Option<i64> {
        match *self {
            Kind::AccountOpened { at, .. }
            | Kind::Deposited { at, .. }
            | Kind::Withdrawn { at, .. }
            | Kind::BalanceDepleted { at }
            | Kind::AccountClosed { at } => Some(at),
            Kind::AccountFrozen {} | Kind::AccountUnfrozen {} => None,
        }
    }
}

/// `YYYY-MM-DD` of a time in milliseconds since the Unix epoch (UTC).
fn day(ms: i64) -> String {
    // Days to a civil date (Howard Hinnant's algorithm).
    let z = ms.div_euclid(86_400_000) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

fn overflow(what: &str) -> String {
    format!("integer overflow in {what}")
}

// --- balances: one row per open account; a closed account's row is deleted -----------------

#[derive(Serialize)]
struct Balance {
    owner: String,
    currency: String,
    status: &'static str,
    balance: i64,
}

impl Default for Balance {
    fn default() -> Self {
        Balance {
            owner: String::new(),
            currency: String::new(),
            status: "open",
            balance: 0,
        }
    }
}

struct Balances;

impl Projection for Balances {
    type Event = Event;
    type Row = Balance;

    fn keys(&self, e: &Event, keys: &mut Keys<'_>) {
        keys.push(&e.aggregate_id);
    }

    fn apply(&self, row: &mut Balance, _key: &str, e: &Event) -> Result<Update, String> {
        match &e.kind {
            Kind::AccountOpened {
                owner, currency, ..
            } => {
                row.owner = owner.clone();
                row.currency = currency.clone();
            }
            Kind::Deposited { amount, .. } => {
                row.balance = row
                    .balance
                    .checked_add(*amount)
                    .ok_or_else(|| overflow("the balance"))?;
            }
            Kind::Withdrawn { amount, .. } => {
                row.balance = row
                    .balance
                    .checked_sub(*amount)
                    .ok_or_else(|| overflow("the balance"))?;
            }
            Kind::AccountFrozen {} => row.status = "frozen",
            Kind::AccountUnfrozen {} => row.status = "open",
            Kind::AccountClosed { .. } => return Ok(Update::Delete),
            Kind::BalanceDepleted { .. } => return Ok(Update::Unchanged),
        }
        Ok(Update::Upsert)
    }
}

// --- monthly statements: one row per account and month ------------------------------------

#[derive(Default, Serialize)]
struct Statement {
    account: String,
    month: String,
    deposited: i64,
    withdrawn: i64,
    transactions: i64,
}

struct MonthlyStatements;

impl Projection for MonthlyStatements {
    type Event = Event;
    type Row = Statement;

    fn keys(&self, e: &Event, keys: &mut Keys<'_>) {
        if let Kind::Deposited { at, .. } | Kind::Withdrawn { at, .. } = e.kind {
            keys.push_fmt(format_args!("{}:{}", e.aggregate_id, &day(at)[..7]));
        }
    }

    fn apply(&self, row: &mut Statement, _key: &str, e: &Event) -> Result<Update, String> {
        // Compute everything first: an error must leave the row as it was.
        let (deposited, withdrawn, at) = match e.kind {
            Kind::Deposited { amount, at } => {
                (row.deposited.checked_add(amount), row.withdrawn, at)
            }
            Kind::Withdrawn { amount, at } => (
                Some(row.deposited),
                row.withdrawn
                    .checked_add(amount)
                    .ok_or_else(|| overflow("withdrawn"))?,
                at,
            ),
            _ => return Ok(Update::Unchanged),
        };
        row.deposited = deposited.ok_or_else(|| overflow("deposited"))?;
        row.withdrawn = withdrawn;
        row.account = e.aggregate_id.clone();
        row.month = day(at)[..7].to_string();
        row.transactions += 1;
        Ok(Update::Upsert)
    }
}

// --- daily report: one row per day over all accounts --------------------------------------

#[derive(Default, Serialize)]
struct Daily {
    day: String,
    accounts_opened: i64,
    accounts_closed: i64,
    deposits: i64,
    withdrawals: i64,
    net: i64,
}

struct DailyReport;

impl Projection for DailyReport {
    type Event = Event;
    type Row = Daily;

    fn keys(&self, e: &Event, keys: &mut Keys<'_>) {
        if let Some(at) = e.kind.at() {
            keys.push(&day(at));
        }
    }

    fn apply(&self, row: &mut Daily, key: &str, e: &Event) -> Result<Update, String> {
        let net = match e.kind {
            Kind::Deposited { amount, .. } => row.net.checked_add(amount),
            Kind::Withdrawn { amount, .. } => row.net.checked_sub(amount),
            _ => Some(row.net),
        }
        .ok_or_else(|| overflow("net"))?;
        row.net = net;
        row.day = key.to_string();
        match e.kind {
            Kind::AccountOpened { .. } => row.accounts_opened += 1,
            Kind::AccountClosed { .. } => row.accounts_closed += 1,
            Kind::Deposited { .. } => row.deposits += 1,
            Kind::Withdrawn { .. } => row.withdrawals += 1,
            _ => {}
        }
        Ok(Update::Upsert)
    }
}

/// The three projections, under the names and topics of the declared ones.
fn bank_projections() -> TypedProjections {
    TypedProjections::new()
        .with(ProjectionTopic::named("balances"), Balances)
        .with(
            ProjectionTopic::named("monthly_statements"),
            MonthlyStatements,
        )
        .with(ProjectionTopic::named("daily_report"), DailyReport)
}

// --- running them -------------------------------------------------------------------------

fn example(file: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/bank")
        .join(file)
}

const VIEWS: [&str; 3] = ["balances", "monthly_statements", "daily_report"];

#[test]
fn rust_projections_match_the_declared_ones() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["pipeline.toml", "commands.jsonl"] {
        std::fs::copy(example(f), dir.path().join(f)).unwrap();
    }
    // The account events, and the declared projections over them (the read side).
    run_until_end(&dir.path().join("pipeline.toml"));

    // The read side's source, with the Rust projections in place of the declared ones.
    let src = std::fs::read_to_string(example("pipeline.toml")).unwrap();
    let (_, mut p) = Pipeline::parse(&src, dir.path()).unwrap().sides().unwrap();
    p.state_dir = dir.path().join("data/rust_projections");
    let run =
        || engine::run_with_stage(&p, Arc::new(bank_projections()), RunOptions::default()).unwrap();
    let summary = run();
    assert!(summary.stats.balanced(), "{:?}", summary.stats);
    assert_eq!(summary.stats.read, 18);
    assert_eq!(summary.stats.processed, 18);
    // The day's `net` overflows for two deposits after the huge one, as declared.
    assert_eq!(summary.stats.delivery_errors, 2);

    let declared = dir.path().join("data/state/projections");
    let rust = dir.path().join("data/rust_projections");
    for v in VIEWS {
        assert_eq!(compact(&rust, v), compact(&declared, v), "{v}");
        assert_eq!(
            compact(&rust, v),
            json_file(&example(&format!("expected_{v}.json"))),
            "{v}"
        );
    }
    // Record for record: the same upserts and the same tombstone, in the same partitions.
    let records = |state: &Path, v: &str| {
        let mut r: Vec<(u32, String, serde_json::Value)> = read_topic(state, v)
            .into_iter()
            .map(|r| (r.partition, r.key, r.value))
            .collect();
        r.sort_by(|a, b| (a.0, &a.1, a.2.to_string()).cmp(&(b.0, &b.1, b.2.to_string())));
        r
    };
    for v in VIEWS {
        assert_eq!(records(&rust, v), records(&declared, v), "{v}");
    }
    let dead = read_topic(&rust, "dead_letters");
    assert_eq!(dead.len(), 2);
    for d in &dead {
        assert_eq!(d.key, "2026-01-01");
        let detail = d.value["detail"].as_str().unwrap();
        assert_eq!(
            detail, "projection 'daily_report' row '2026-01-01': integer overflow in net",
            "{detail}"
        );
        assert_eq!(d.value["reason"], "logic_error");
    }

    // A second run rebuilds the rows by replay and writes nothing new.
    let summary = run();
    assert_eq!(summary.new_records, 0);
    for v in VIEWS {
        assert_eq!(compact(&rust, v), compact(&declared, v), "{v}");
    }
}

#[test]
fn an_event_that_does_not_fit_is_dead_lettered_and_sequences_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("events.jsonl"),
        concat!(
            r#"{"aggregate_id":"A","type":"Deposited","data":{"amount":5,"at":0}}"#,
            "\n",
            r#"{"aggregate_id":"A","type":"Teleported","data":{}}"#,
            "\n",
            r#"{"aggregate_id":"","type":"Deposited","data":{"amount":1,"at":0}}"#,
            "\n",
        ),
    )
    .unwrap();
    let toml = |key: &str| {
        format!(
            r#"[pipeline]
name = "p"
state_dir = "state"

[[sources]]
name = "events"
type = "log"
path = "input"
load = "events.jsonl"
{key}
[[projections]]
name = "unused"
key = "event.aggregate_id"
fields = {{ n = "0" }}

[[projections.on]]
set = {{ n = "row.n + 1" }}
"#
        )
    };
    let p = Pipeline::parse(&toml(""), dir.path()).unwrap();
    onceflow_connectors::files::load_if_missing(&p.sources[0], None).unwrap();
    let stage = TypedProjections::new().with(ProjectionTopic::named("balances"), Balances);
    let summary = engine::run_with_stage(&p, Arc::new(stage), RunOptions::default()).unwrap();
    assert!(summary.stats.balanced());
    assert_eq!(summary.stats.processed, 1);
    let dead = read_topic(&dir.path().join("state"), "dead_letters");
    let details: Vec<&str> = dead
        .iter()
        .map(|d| d.value["detail"].as_str().unwrap())
        .collect();
    assert_eq!(dead.len(), 2, "{details:?}");
    assert!(dead.iter().all(|d| d.value["reason"] == "bad_key"));
    assert!(
        details[0].starts_with(
            "projection 'balances': the event does not fit: unknown variant `Teleported`"
        ),
        "{details:?}"
    );
    assert_eq!(details[1], "projection 'balances': a row key is empty");
    assert_eq!(
        compact(&dir.path().join("state"), "balances")["A"]["balance"],
        5
    );

    // A projection routes by its own keys: per-key sequence checks make no sense.
    let src = toml("").replace(
        "[[projections]]",
        "[key]\nsequence = \"version\"\n\n[[projections]]",
    );
    let err = Pipeline::parse(&src, dir.path());
    assert!(
        err.is_err(),
        "declared projections refuse key.sequence already"
    );
    let mut p = Pipeline::parse(&toml(""), dir.path()).unwrap();
    p.key.sequence = Some(onceflow_core::config::FieldPath(vec!["version".into()]));
    let stage = TypedProjections::new().with(ProjectionTopic::named("balances"), Balances);
    let err = engine::run_with_stage(&p, Arc::new(stage), RunOptions::default()).unwrap_err();
    assert!(err.to_string().contains("remove key.sequence"), "{err}");
}

#[test]
fn rust_projection_rows_are_readable_while_the_engine_runs() {
    use onceflow_core::query::{ReadError, ReadHandle, Scan};
    use onceflow_core::stats::Stats;
    use std::sync::atomic::Ordering;

    let dir = tempfile::tempdir().unwrap();
    for f in ["pipeline.toml", "commands.jsonl"] {
        std::fs::copy(example(f), dir.path().join(f)).unwrap();
    }
    run_until_end(&dir.path().join("pipeline.toml"));
    let src = std::fs::read_to_string(example("pipeline.toml")).unwrap();
    let (_, mut p) = Pipeline::parse(&src, dir.path()).unwrap().sides().unwrap();
    p.state_dir = dir.path().join("data/rust_projections");
    let reads = ReadHandle::new();
    let stats = Arc::new(Stats::default());
    let opts = RunOptions {
        until_end: false,
        stats: stats.clone(),
        read: Some(reads.clone()),
        ..RunOptions::default()
    };
    let stop = opts.stop.clone();
    let engine =
        std::thread::spawn(move || engine::run_with_stage(&p, Arc::new(bank_projections()), opts));
    wait_for("the events to commit", || {
        let end = stats.source_end.load(Ordering::Relaxed);
        end > 0 && stats.committed_input.load(Ordering::Relaxed) == end
    });

    assert_eq!(reads.tables().unwrap(), VIEWS);
    let balances = json_file(&example("expected_balances.json"));
    for (k, v) in balances.as_object().unwrap() {
        assert_eq!(&reads.get("balances", k).unwrap().unwrap().value, v);
    }
    assert_eq!(reads.get("balances", "ACC-2").unwrap(), None, "deleted");

    // Rust rows have no declared types: the filter reads the row as JSON.
    let statements = json_file(&example("expected_monthly_statements.json"));
    let mut want: Vec<&String> = statements
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, s)| s["deposited"].as_i64().unwrap() > 1000 && s["month"] == "2026-01")
        .map(|(k, _)| k)
        .collect();
    want.sort();
    assert!(!want.is_empty());
    let got = reads
        .scan_all(
            "monthly_statements",
            &Scan::new()
                .prefix("ACC-")
                .filter("row.deposited > 1000 && row.month == '2026-01'"),
        )
        .unwrap();
    assert_eq!(got.iter().map(|r| &r.key).collect::<Vec<_>>(), want);
    // ... and a field a row does not have is an error naming the row, not a silent miss.
    let err = reads
        .scan("monthly_statements", &Scan::new().filter("row.balance > 0"))
        .unwrap_err();
    assert!(
        matches!(&err, ReadError::FilterFailed(m) if m.starts_with("row 'ACC-") && m.contains("row.balance")),
        "{err}"
    );
    assert!(
        reads
            .scan(
                "daily_report",
                &Scan::new().filter("has(row.balance) && row.balance > 0")
            )
            .unwrap()
            .rows
            .is_empty()
    );

    stop.store(true, Ordering::Relaxed);
    engine.join().unwrap().unwrap();
}
