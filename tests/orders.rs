//! `examples/orders`: the order lifecycle (place, add and remove lines, confirm, cancel)
//! with lines kept in a map, and the order-status read model.

mod common;

use std::path::Path;

use common::*;

fn example(file: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/orders")
        .join(file)
}

#[test]
fn orders_example_matches_expected_outputs() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["pipeline.toml", "projections.toml", "commands.jsonl"] {
        std::fs::copy(example(f), dir.path().join(f)).unwrap();
    }
    let summary = run_until_end(&dir.path().join("pipeline.toml"));
    assert!(
        summary.contains("20 read = 19 processed + 0 duplicates + 1 dead-lettered + 0 held"),
        "{summary}"
    );
    assert!(
        summary.contains("rejected  8 of the processed"),
        "{summary}"
    );
    let state = dir.path().join("data/state");
    assert_eq!(
        sorted_events(&state, "order_events"),
        jsonl(&example("expected_events.jsonl"))
    );
    let rejections = sorted_rejections(&state, "order_rejections");
    assert_eq!(rejections, jsonl(&example("expected_rejections.jsonl")));
    // The overflowing line total is a rejected command, not a wrapped number.
    assert!(
        rejections.iter().any(|r| r["reason"] == "invalid_command"
            && r["message"].as_str().unwrap().contains("integer overflow")),
        "{rejections:?}"
    );
    let orders = compact(&state, "orders");
    assert_eq!(orders, json_file(&example("expected.json")));
    assert_eq!(
        orders["O-1"]["lines"]["BOOK"]["qty"], 3,
        "adding a line again adds up"
    );

    let summary = run_until_end(&dir.path().join("projections.toml"));
    assert!(summary.contains("11 read = 11 processed"), "{summary}");
    assert_eq!(
        compact(&dir.path().join("data/projections"), "order_status"),
        json_file(&example("expected_order_status.json"))
    );
}
