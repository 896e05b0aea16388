//! CloudEvents 1.0 structured mode: an aggregate writes its events as envelopes, a
//! projection pipeline reads them back from a `format = "cloudevents"` source, and
//! records that are not valid envelopes are dead-lettered with the reason.

mod common;

use std::path::Path;

use common::*;

fn example(file: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/bank")
        .join(file)
}

#[test]
fn aggregate_events_as_cloudevents_feed_a_projection() {
    let dir = tempfile::tempdir().unwrap();
    // The example's write side only (its read side is written for JSON events).
    let full = std::fs::read_to_string(example("pipeline.toml")).unwrap();
    let write_side = &full[..full.find("# ====").expect("the read-side banner")];
    let pipeline = write_side
        .replace(
            "rejections_topic = \"account_rejections\"",
            "rejections_topic = \"account_rejections\"\nevents_format = \"cloudevents\"\nevents_source = \"/bank/accounts\"",
        );
    std::fs::write(dir.path().join("pipeline.toml"), pipeline).unwrap();
    std::fs::copy(example("commands.jsonl"), dir.path().join("commands.jsonl")).unwrap();
    run_until_end(&dir.path().join("pipeline.toml"));

    let events = read_topic(&dir.path().join("data/state"), "account_events");
    assert_eq!(events.len(), 18);
    let opened = events
        .iter()
        .find(|e| e.value["id"] == "c-001:0")
        .expect("ACC-1 opened");
    let e = &opened.value;
    assert_eq!(e["specversion"], "1.0");
    assert_eq!(e["source"], "/bank/accounts");
    assert_eq!(e["type"], "AccountOpened");
    assert_eq!(e["subject"], "ACC-1");
    assert_eq!(e["datacontenttype"], "application/json");
    assert_eq!(e["aggregate"], "account");
    assert_eq!(e["aggregateversion"], 1);
    assert_eq!(e["causationid"], "c-001");
    assert_eq!(e["correlationid"], "c-001");
    assert_eq!(e["data"]["owner"], "Ada Lovelace");

    std::fs::write(dir.path().join("projection.toml"), CE_PROJECTION).unwrap();
    let summary = run_until_end(&dir.path().join("projection.toml"));
    assert!(summary.contains("18 read = 18 processed"), "{summary}");
    let out = run_ok(
        bin()
            .args(["log", "read"])
            .arg(dir.path().join("data/ce-projections"))
            .args(["--topic", "balances", "--compact"]),
    );
    let view: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(view["ACC-1"]["balance"], 8900);
    assert_eq!(view["ACC-3"]["balance"], 700);
    assert_eq!(view["ACC-1"]["opened"], "EUR");
    assert!(view.get("ACC-2").is_none(), "closed: deleted");
}

#[test]
fn invalid_envelopes_are_dead_lettered_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.toml"), CE_PROJECTION).unwrap();
    log_append(
        &dir.path().join("data/state"),
        &["--topic", "account_events"],
        [
            r#"{"specversion":"1.0","id":"e1","source":"/s","type":"Deposited","subject":"A","data":{"amount":5}}"#,
            r#"{"id":"e2","source":"/s","type":"Deposited","subject":"A","data":{"amount":5}}"#,
            r#"{"specversion":"0.3","id":"e3","source":"/s","type":"Deposited","subject":"A","data":{"amount":5}}"#,
            r#"{"specversion":"1.0","id":"e4","type":"Deposited","subject":"A","data":{"amount":5}}"#,
            r#"{"specversion":"1.0","id":"e5","source":"/s","type":"Deposited","subject":"A","time":"not a time","data":{"amount":5}}"#,
            r#"{"specversion":"1.0","id":"e6","source":"/s","type":"Deposited","subject":"A","time":"2026-01-01T00:00:00Z","data":{"amount":7}}"#,
        ],
    );
    let summary = run_until_end(&dir.path().join("p.toml"));
    assert!(
        summary.contains("6 read = 2 processed + 0 duplicates + 4 dead-lettered"),
        "{summary}"
    );
    assert!(summary.contains("invalid_cloudevent 4"), "{summary}");
    let dead = read_topic(&dir.path().join("data/ce-projections"), "dead_letters");
    let details: Vec<&str> = dead
        .iter()
        .map(|d| d.value["detail"].as_str().unwrap())
        .collect();
    for want in [
        "'specversion' is missing",
        "'specversion' must be \"1.0\", got \"0.3\"",
        "'source' is missing",
        "'time' is not an RFC 3339 timestamp",
    ] {
        assert!(
            details.iter().any(|d| d.contains(want)),
            "{want}: {details:?}"
        );
    }
    let out = run_ok(
        bin()
            .args(["log", "read"])
            .arg(dir.path().join("data/ce-projections"))
            .args(["--topic", "balances", "--compact"]),
    );
    let view: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(view["A"]["balance"], 12);
}
