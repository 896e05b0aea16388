//! The CLI as a user meets it: the shipped example, bad input, bad config, signals.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

fn copy_example(name: &str, to: &Path) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name);
    for f in ["pipeline.toml", "events.jsonl"] {
        std::fs::copy(src.join(f), to.join(f)).unwrap();
    }
}

#[test]
fn ledger_example_matches_expected_and_a_second_run_is_a_no_op() {
    let dir = tempfile::tempdir().unwrap();
    copy_example("ledger", dir.path());
    let out = run_ok(
        bin()
            .args(["run", "--until-end", "--quiet"])
            .arg(dir.path().join("pipeline.toml")),
    );
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("processed"), "{summary}");
    assert!(!summary.contains("UNBALANCED"), "{summary}");
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/ledger/expected.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let state = dir.path().join("data/state");
    assert_eq!(compact(&state, "balances"), expected);
    let dead_before = read_topic(&state, "dead_letters").len();
    assert!(
        dead_before > 0,
        "the sample holds a few bad records on purpose"
    );

    // Second run: everything is committed already; nothing new is emitted.
    let out = run_ok(
        bin()
            .args(["run", "--until-end", "--quiet"])
            .arg(dir.path().join("pipeline.toml")),
    );
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains(" 0 new records"), "{summary}");
    assert!(summary.contains("replayed"), "{summary}");
    assert_eq!(compact(&state, "balances"), expected);
    assert_eq!(read_topic(&state, "dead_letters").len(), dead_before);
}

#[test]
fn bad_input_gets_counted_outcomes_and_the_pipeline_keeps_going() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = bank_pipeline(dir.path(), "per_epoch", "50ms", "");
    let input = [
        r#"{"account":"A","seq":1,"amount":10}"#,
        r#"{"account":"A","seq":1,"amount":10}"#, // duplicate
        r#"{"account":"A","seq":2,"amount":"ten"}"#, // logic error: not a number
        r#"{"account":"A","seq":4,"amount":1}"#,  // gap: held
        r#"{"account":"A","seq":3,"amount":5}"#,  // fills it: 3 and 4 apply
        r#"{"account":"B","seq":2,"amount":7}"#,  // gap that never fills: held
        "{this is not json",
        r#"["an","array"]"#,
        r#"{"seq":1,"amount":1}"#,
        r#"{"account":"C","seq":1.5,"amount":1}"#,
        r#"{"account":"C","seq":"1","amount":1}"#,
        r#"{"account":"C","amount":1}"#,
        r#"{"account":"C","seq":1,"amount":3}"#,
    ]
    .join("\n");
    std::fs::write(dir.path().join("in.jsonl"), &input).unwrap();
    run_ok(
        bin()
            .args(["log", "append"])
            .arg(dir.path().join("input"))
            .args(["--topic", "entries", "--key", "account", "--file"])
            .arg(dir.path().join("in.jsonl")),
    );
    let out = run_ok(bin().args(["run", "--until-end", "--quiet"]).arg(&pipeline));
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        summary.contains("13 read = 4 processed + 1 duplicates + 7 dead-lettered + 1 held"),
        "{summary}"
    );
    for reason in [
        "malformed_json 1",
        "not_an_object 1",
        "missing_key 1",
        "bad_sequence 3",
        "logic_error 1",
    ] {
        assert!(summary.contains(reason), "{reason} in {summary}");
    }
    let view = compact(&dir.path().join("state"), "balances");
    assert_eq!(view["A"]["balance"], 16);
    assert_eq!(view["A"]["version"], 4);
    assert_eq!(view["C"]["balance"], 3);
    assert!(view.get("B").is_none());
    let dead = read_topic(&dir.path().join("state"), "dead_letters");
    assert_eq!(dead.len(), 7);
    for d in &dead {
        for field in [
            "reason",
            "stage",
            "detail",
            "source",
            "partition",
            "offset",
            "payload",
        ] {
            assert!(
                d.value.get(field).is_some(),
                "{field} missing in {}",
                d.value
            );
        }
    }
}

#[test]
fn validate_reports_every_error_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[pipeline]\nname = \"x\"\nshards = 0\ncommit_interval = \"soon\"\n\n[[sources]]\nname = \"s\"\ntype = \"log\"\n\n[key]\nfeild = \"id\"\n\n[view]\ntopic = \"v\"\n[view.fields]\nn = { op = \"count\", extra = 1 }\n",
    )
    .unwrap();
    let out = bin().arg("validate").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "pipeline.shards (line 3)",
        "pipeline.commit_interval (line 4)",
        "sources[0].path",
        "key.feild (line 11): unknown key; did you mean \"field\"?",
        "key.field",
        "view.fields.n.extra (line 16): unknown key",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    let good = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/ledger/pipeline.toml");
    let out = run_ok(bin().arg("validate").arg(good));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok: pipeline 'ledger'"));
}

#[test]
fn sigterm_commits_the_current_epoch_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = bank_pipeline(dir.path(), "per_epoch", "10s", "");
    let generated = run_ok(bin().args(["gen", "bank", "--accounts", "50", "--events", "2000"]));
    let mut append = bin()
        .args(["log", "append"])
        .arg(dir.path().join("input"))
        .args(["--topic", "entries", "--key", "account"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut append.stdin.take().unwrap(), &generated.stdout).unwrap();
    assert!(append.wait().unwrap().success());

    // commit_interval is 10 s: only the signal can make it commit this soon.
    let child = bin()
        .args(["run", "--quiet"])
        .arg(&pipeline)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "exit status {}", out.status);
    assert!(started.elapsed() < Duration::from_secs(8));
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("committed 1 epoch this run"), "{summary}");
    let view = compact(&dir.path().join("state"), "balances");
    assert_eq!(view.as_object().unwrap().len(), 50);
}

#[test]
fn a_renamed_source_is_refused_instead_of_emitting_everything_twice() {
    let dir = tempfile::tempdir().unwrap();
    copy_example("ledger", dir.path());
    let pipeline = dir.path().join("pipeline.toml");
    run_ok(bin().args(["run", "--until-end", "--quiet"]).arg(&pipeline));
    let text = std::fs::read_to_string(&pipeline)
        .unwrap()
        .replace("name = \"ledger\"", "name = \"ledger2\"");
    std::fs::write(&pipeline, text).unwrap();
    let out = bin()
        .args(["run", "--until-end", "--quiet"])
        .arg(&pipeline)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("source 'ledger' that the pipeline no longer has"),
        "{err}"
    );
}
