//! Declarative aggregates end to end: the shipped `examples/bank` pipeline, its
//! recovery (state rebuilt by replaying commands with outputs off), and `validate` on a
//! broken `[aggregate]`.

mod common;

use std::path::Path;

use common::*;

fn example(file: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/bank")
        .join(file)
}

fn events(state: &Path) -> Vec<serde_json::Value> {
    sorted_events(state, "account_events")
}

fn rejections(state: &Path) -> Vec<serde_json::Value> {
    sorted_rejections(state, "account_rejections")
}

#[test]
fn bank_accounts_example_matches_expected_outputs() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["pipeline.toml", "commands.jsonl"] {
        std::fs::copy(example(f), dir.path().join(f)).unwrap();
    }
    let summary = run_until_end(&dir.path().join("pipeline.toml"));
    assert!(
        summary.contains("29 read = 25 processed + 1 duplicates + 3 dead-lettered + 0 held"),
        "{summary}"
    );
    assert!(
        summary.contains("rejected  8 of the processed"),
        "{summary}"
    );
    assert!(
        summary.contains("malformed_json 1, missing_key 1, unknown_type 1"),
        "{summary}"
    );
    let state = dir.path().join("data/state");
    assert_eq!(events(&state), jsonl(&example("expected_events.jsonl")));
    // The fields `validate` allows a read side to use are the fields events have.
    let mut declared = onceflow_core::config::EVENT_FIELDS.to_vec();
    declared.sort_unstable();
    for e in events(&state) {
        let keys: Vec<&str> = e.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, declared, "{e}");
    }
    assert_eq!(
        rejections(&state),
        jsonl(&example("expected_rejections.jsonl"))
    );
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(example("expected.json")).unwrap()).unwrap();
    assert_eq!(compact(&state, "accounts"), expected);

    // Event ids are derived from the command id and the event's index: stable across runs.
    let ids: Vec<_> = events(&state)
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_string())
        .collect();
    assert!(ids.contains(&"c-013:1".to_string()), "{ids:?}");

    // A second run finds everything committed and emits nothing.
    let summary = run_until_end(&dir.path().join("pipeline.toml"));
    assert!(summary.contains(" 0 new records"), "{summary}");
    assert_eq!(events(&state).len(), 18);
    assert_eq!(rejections(&state).len(), 8);
}

#[test]
fn state_rebuilt_by_replay_decides_like_an_uninterrupted_run() {
    // Half the commands, a run, then the rest and a second run: the second run replays the
    // first half with outputs off to rebuild every account, so its decisions (rules,
    // versions, overflow) must equal those of one uninterrupted run.
    let dir = tempfile::tempdir().unwrap();
    let pipeline = std::fs::read_to_string(example("pipeline.toml"))
        .unwrap()
        .replace("load = \"commands.jsonl\"", "");
    std::fs::write(dir.path().join("pipeline.toml"), pipeline).unwrap();
    let lines: Vec<String> = std::fs::read_to_string(example("commands.jsonl"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let append = |part: &[String]| {
        log_append(
            &dir.path().join("data/input"),
            &[
                "--topic",
                "commands",
                "--key",
                "account",
                "--partitions",
                "4",
            ],
            part,
        )
    };
    let (first, second) = lines.split_at(lines.len() / 2);
    append(first);
    run_until_end(&dir.path().join("pipeline.toml"));
    append(second);
    let summary = run_until_end(&dir.path().join("pipeline.toml"));
    assert!(summary.contains("replayed"), "{summary}");

    let state = dir.path().join("data/state");
    assert_eq!(events(&state), jsonl(&example("expected_events.jsonl")));
    assert_eq!(
        rejections(&state),
        jsonl(&example("expected_rejections.jsonl"))
    );
}

#[test]
fn validate_reports_every_aggregate_error_with_path_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pipeline.toml");
    std::fs::write(
        &path,
        r#"[pipeline]
name = "broken"

[[sources]]
name = "commands"
type = "log"
path = "in"

[key]
field = "account"

[aggregate]
name = "account"

[aggregate.state]
balance = "0"
status = "'none'"
nothing = "null"

[aggregate.commands.Deposit]
rules = [
  { require = "state.balanse >= 0", reason = "x" },
  { require = "state.balance + 1", reason = "not_bool" },
  { require = "true", reason = "has spaces" },
]
emit = [{ type = "Deposited", data = { amount = "cmd.amount +" } }]

[aggregate.commands.Noop]

[aggregate.events.Deposited]
balance = "state.balance + cmd.amount"
status = "1"

[aggregate.events.Withdrawn]
balance = "0"
"#,
    )
    .unwrap();
    let out = bin().arg("validate").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "aggregate.state.nothing (line 18): a null default says nothing about the field's type",
        "aggregate.commands.Deposit.rules[0].require (line 22): column 1: unknown variable 'state.balanse'; did you mean 'state.balance'?",
        "aggregate.commands.Deposit.rules[1].require (line 23): must be a bool, but `state.balance + 1` is an int",
        "aggregate.commands.Deposit.rules[2].reason (line 24): \"has spaces\" is not a reason code",
        "aggregate.commands.Deposit.emit[0].data.amount (line 26): column 13: expected an expression",
        "aggregate.commands.Noop.emit (line 28): is required",
        "aggregate.events.Deposited.balance (line 31): column 17: unknown variable 'cmd.amount'",
        "appliers see only state, event and aggregate",
        "aggregate.events.Deposited.status (line 32): must be a string, but `1` is an int",
        "aggregate.events.Withdrawn (line 34): no command emits \"Withdrawn\" (emitted: Deposited)",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}
