//! Projections end to end: the read side of `examples/bank/pipeline.toml` reads the events
//! its aggregate committed and builds four read models keyed by expressions.

mod common;

use std::path::Path;

use common::*;

fn example(file: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/bank")
        .join(file)
}

fn expected(name: &str) -> serde_json::Value {
    json_file(&example(name))
}

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["pipeline.toml", "commands.jsonl"] {
        std::fs::copy(example(f), dir.path().join(f)).unwrap();
    }
    dir
}

const VIEWS: [&str; 4] = [
    "balances",
    "transactions",
    "monthly_statements",
    "daily_report",
];

#[test]
fn bank_projections_match_expected_read_models() {
    let dir = setup();
    // One run: the aggregate, then its read side catching up with the committed events.
    let summary = run_until_end(&dir.path().join("pipeline.toml"));
    assert!(
        summary.contains("onceflow: pipeline 'bank.projections' stopped"),
        "{summary}"
    );
    assert!(
        summary.contains("18 read = 18 processed + 0 duplicates + 0 dead-lettered + 0 held"),
        "{summary}"
    );
    // The example's deliberately huge deposit makes the day's `net` overflow for two later
    // deposits: those two updates of the daily row are refused, the rest applies.
    assert!(
        summary.contains("2 projection updates failed and were dead-lettered"),
        "{summary}"
    );
    let state = dir.path().join("data/state/projections");
    for v in VIEWS {
        assert_eq!(
            compact(&state, v),
            expected(&format!("expected_{v}.json")),
            "{v}"
        );
    }
    // The closed account was deleted from `balances`: a tombstone, then gone.
    let tombstones = read_topic(&state, "balances")
        .into_iter()
        .filter(|r| r.value.is_null())
        .count();
    assert_eq!(tombstones, 1);
    assert!(compact(&state, "balances").get("ACC-2").is_none());
    let dead = read_topic(&state, "dead_letters");
    assert_eq!(dead.len(), 2);
    assert_eq!(
        dead[0].key, "2026-01-01",
        "keys are written without the projection prefix"
    );
    assert!(
        dead[0].value["detail"]
            .as_str()
            .unwrap()
            .contains("projection 'daily_report' row '2026-01-01'"),
        "{:?}",
        dead[0].value
    );

    // Nothing new: a second run emits nothing, on either side.
    let summary = run_until_end(&dir.path().join("pipeline.toml"));
    assert_eq!(summary.matches(" 0 new records").count(), 2, "{summary}");
    for v in VIEWS {
        assert_eq!(compact(&state, v), expected(&format!("expected_{v}.json")));
    }
}

#[test]
fn rows_rebuilt_by_replay_continue_like_an_uninterrupted_run() {
    // The projections read the events while the aggregate is half done, then again after
    // it finished: the second run replays the first part with outputs off to rebuild the
    // rows, and the result equals one run over everything.
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = std::fs::read_to_string(example("commands.jsonl"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    std::fs::copy(example("pipeline.toml"), dir.path().join("pipeline.toml")).unwrap();
    let half = lines.len() / 2;
    std::fs::write(
        dir.path().join("commands.jsonl"),
        lines[..half].join("\n") + "\n",
    )
    .unwrap();
    run_until_end(&dir.path().join("pipeline.toml"));

    // The rest of the commands, appended to the aggregate's input log.
    log_append(
        &dir.path().join("data/input"),
        &["--topic", "commands", "--key", "account"],
        &lines[half..],
    );
    let summary = run_until_end(&dir.path().join("pipeline.toml"));
    assert_eq!(summary.matches("replayed").count(), 2, "{summary}");

    let state = dir.path().join("data/state/projections");
    for v in ["balances", "transactions", "monthly_statements"] {
        assert_eq!(
            compact(&state, v),
            expected(&format!("expected_{v}.json")),
            "{v}"
        );
    }
    // The daily row depends on the order events of different accounts arrive in (the
    // overflowing `net`), which differs when the aggregate runs twice; its counts of
    // opened and closed accounts do not.
    let daily = compact(&state, "daily_report");
    assert_eq!(daily["2026-01-01"]["accounts_opened"], 4);
    assert_eq!(daily["2026-01-01"]["accounts_closed"], 1);
}

#[test]
fn validate_reports_every_projection_error_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.toml");
    std::fs::write(
        &path,
        r#"[pipeline]
name = "p"

[[sources]]
name = "events"
type = "log"
path = "in"

[key]
sequence = "version"

[[projections]]
name = "balances"
key = "event.aggregate_id +"
fields = { balance = "0", key = "''" }

[[projections.on]]
types = ["Deposited"]
set = { balanse = "1", balance = "'x'" }

[[projections]]
name = "balances"
key = "event.x"
fields = { n = "0" }

[[projections.on]]
when = "row.n"
"#,
    )
    .unwrap();
    let out = bin().arg("validate").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "key.sequence (line 9): sequence checks need one key per record",
        "projections[0].key (line 14): column 21: expected an expression",
        "projections[0].fields.key (line 15): row field names are identifiers (letters, digits, '_'; not starting with a digit) other than `key` and `version`",
        "projections[0].on[0].set.balanse (line 19): not a field of this projection (fields: balance)",
        "projections[0].on[0].set.balance (line 19): must be an int, but `'x'` is a string",
        "projections[1].name (line 21): duplicate projection name \"balances\"",
        "projections[1].on[0].when (line 27): must be a bool, but `row.n` is an int",
        "projections[1].on[0] (line 26): does nothing: give it `set` or `delete`",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

#[test]
fn read_side_fields_the_aggregates_events_lack_are_config_errors() {
    // With the aggregate in the same file the events' shape is known: a typo in an
    // `event.` path would dead-letter every event, so validate refuses it.
    let dir = setup();
    let path = dir.path().join("pipeline.toml");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace(
            "key = \"event.aggregate_id\"",
            "key = \"event.aggregateid\"",
        )
        .replace(
            "row.balance + event.data.amount",
            "row.balance + event.data.amonut",
        );
    std::fs::write(&path, text).unwrap();
    let out = bin().arg("validate").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("projections: the projections read `event.aggregateid`, `event.data.amonut`, which the aggregate's JSON events do not have; they have event_id, type, aggregate, aggregate_id, version"),
        "{err}"
    );
    assert!(
        err.contains("and data fields amount, at, currency, owner, reason"),
        "{err}"
    );
}

#[test]
fn the_transaction_history_is_filtered_by_type_amount_and_date_from_the_command_line() {
    let dir = setup();
    run_until_end(&dir.path().join("pipeline.toml"));
    let state = dir.path().join("data/state/projections");
    let read = |filter: &str| -> serde_json::Value {
        let out = run_ok(bin().args(["log", "read"]).arg(&state).args([
            "--topic",
            "transactions",
            "--compact",
            "--where",
            filter,
        ]));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let all = expected("expected_transactions.json");
    let want = |keep: &dyn Fn(&serde_json::Value) -> bool| -> serde_json::Value {
        serde_json::Value::Object(
            all.as_object()
                .unwrap()
                .iter()
                .filter(|(_, r)| keep(r))
                .map(|(k, r)| (k.clone(), r.clone()))
                .collect(),
        )
    };
    let by_type_and_amount =
        read("row.type == 'withdrawal' && row.amount >= 100 && row.amount <= 3000");
    assert_eq!(
        by_type_and_amount,
        want(
            &|r| r["type"] == "withdrawal" && (100..=3000).contains(&r["amount"].as_i64().unwrap())
        )
    );
    assert!(!by_type_and_amount.as_object().unwrap().is_empty());
    // Timestamps are RFC 3339 text in the rows: compared as timestamps, or as text.
    let by_date = read(
        "timestamp(row.at) >= timestamp('2026-01-01T00:10:00Z') && row.at < '2026-01-01T00:20'",
    );
    assert_eq!(
        by_date,
        want(&|r| {
            let at = r["at"].as_str().unwrap();
            at >= "2026-01-01T00:10:00Z" && at < "2026-01-01T00:20"
        })
    );
    // Mistakes are reported, not silently matched as false.
    let out = bin()
        .args(["log", "read"])
        .arg(&state)
        .args(["--topic", "transactions", "--where", "row.amont > 0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no such key 'amont'"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn an_insert_only_history_writes_each_row_once_and_keeps_none() {
    // A history on its own: every event writes a new row of `history` (two shards, so
    // its deliveries go round both), and `totals` counts the events per account.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.toml");
    std::fs::write(
        &path,
        r#"[pipeline]
name = "h"
state_dir = "data/state"
shards = 2

[[sources]]
name = "events"
type = "log"
path = "data/input"
topic = "events"

[[projections]]
name = "history"
insert_only = true
key = "event.id"
fields = { account = "''", amount = "0", kind = "'deposit'" }

[[projections.on]]
types = ["Deposited", "Withdrawn"]
set = { account = "event.account", amount = "event.amount" }

[[projections.on]]
types = ["Withdrawn"]
set = { kind = "'withdrawal'", amount = "-event.amount" }

[[projections]]
name = "totals"
key = "event.account"
fields = { n = "0" }

[[projections.on]]
set = { n = "row.n + 1" }
"#,
    )
    .unwrap();
    let event = |i: usize| {
        let ty = if i.is_multiple_of(3) {
            "Withdrawn"
        } else {
            "Deposited"
        };
        format!(
            r#"{{"id":"E{i:02}","type":"{ty}","account":"A{}","amount":{i}}}"#,
            i % 4
        )
    };
    let input = dir.path().join("data/input");
    let args = ["--topic", "events", "--key", "account", "--partitions", "2"];
    // The first run: 20 events, one without an id (its key fails: only that delivery is
    // dead-lettered), one of a type no handler takes (no row).
    let mut first: Vec<String> = (0..20).map(event).collect();
    first.push(r#"{"type":"Deposited","account":"A1","amount":5}"#.into());
    first.push(r#"{"id":"X","type":"Renamed","account":"A2"}"#.into());
    log_append(&input, &args, &first);
    let summary = run_until_end(&path);
    assert!(
        summary.contains("22 read = 22 processed + 0 duplicates + 0 dead-lettered + 0 held"),
        "{summary}"
    );
    assert!(summary.contains("1 projection update failed"), "{summary}");
    // The second run rebuilds the state by replay (writing nothing again), then goes on.
    log_append(&input, &args, (20..30).map(event));
    run_until_end(&path);

    let state = dir.path().join("data/state");
    let history = compact(&state, "history");
    let want: serde_json::Map<String, serde_json::Value> = (0..30usize)
        .map(|i| {
            let withdrawn = i.is_multiple_of(3);
            let id = format!("E{i:02}");
            let row = serde_json::json!({
                "key": id,
                "version": 1,
                "account": format!("A{}", i % 4),
                "amount": if withdrawn { -(i as i64) } else { i as i64 },
                "kind": if withdrawn { "withdrawal" } else { "deposit" },
            });
            (id, row)
        })
        .collect();
    assert_eq!(history, serde_json::Value::Object(want));
    // Each row was written once, across the restart too.
    assert_eq!(read_topic(&state, "history").len(), 30);
    // The record whose key failed still counted in the other projection.
    let totals = compact(&state, "totals");
    assert_eq!(totals["A1"]["n"], 9, "{totals}");
    let dead = read_topic(&state, "dead_letters");
    assert_eq!(dead.len(), 1);
    let detail = dead[0].value["detail"].as_str().unwrap();
    assert!(
        detail.contains("projection 'history': key `event.id`"),
        "{detail}"
    );
    // No row key came out: the dead letter carries the lane the delivery went to.
    assert!(
        dead[0].key.starts_with("insert-only-lane-"),
        "{}",
        dead[0].key
    );

    // Its rows are not kept: a point query says so, and where to read them instead.
    let out = bin()
        .args(["state"])
        .arg(&path)
        .args(["--table", "history", "--key", "E01"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("projection 'history' is insert_only: its rows are written to its topic and not kept in state"),
        "{err}"
    );
    assert!(
        err.contains("--topic history --compact --where \"row.key == 'E01'\""),
        "{err}"
    );
}

#[test]
fn insert_only_projections_cannot_read_or_delete_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.toml");
    std::fs::write(
        &path,
        r#"[pipeline]
name = "p"

[[sources]]
name = "events"
type = "log"
path = "in"

[[projections]]
name = "history"
insert_only = true
key = "event.id"
fields = { n = "0", last = "''" }

[[projections.on]]
when = "row.n > 0"
set = { n = "row.n + 1", last = "row.key" }
delete = "event.type == 'Closed'"

[[projections]]
name = "typo"
insert_only = "yes"
key = "event.id"
fields = { n = "0" }

[[projections.on]]
set = { n = "1" }
"#,
    )
    .unwrap();
    let out = bin().arg("validate").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "projections[0].on[0].when (line 16): reads row.n, but an insert_only projection keeps no rows",
        "projections[0].on[0].set.n (line 17): reads row.n, but an insert_only projection keeps no rows",
        "projections[0].on[0].set.last (line 17): reads row.key, but an insert_only projection keeps no rows",
        "projections[0].on[0].delete (line 18): an insert_only projection keeps no rows, so it cannot delete one",
        "projections[1].insert_only (line 22): expected true or false",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}
