//! `examples/insurance-claims`: policies and their claims as one aggregate per policy
//! (thresholds by amount, coverage, pay out at most once), and the claims read models.

mod common;

use std::path::Path;

use common::*;

fn example(file: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/insurance-claims")
        .join(file)
}

#[test]
fn insurance_example_matches_expected_outputs() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["pipeline.toml", "projections.toml", "commands.jsonl"] {
        std::fs::copy(example(f), dir.path().join(f)).unwrap();
    }
    let summary = run_until_end(&dir.path().join("pipeline.toml"));
    assert!(
        summary.contains("30 read = 29 processed + 0 duplicates + 1 dead-lettered + 0 held"),
        "{summary}"
    );
    assert!(
        summary.contains("rejected  10 of the processed"),
        "{summary}"
    );
    let state = dir.path().join("data/state");
    assert_eq!(
        sorted_events(&state, "policy_events"),
        jsonl(&example("expected_events.jsonl"))
    );
    let rejections = sorted_rejections(&state, "policy_rejections");
    assert_eq!(rejections, jsonl(&example("expected_rejections.jsonl")));
    let reasons: Vec<&str> = rejections
        .iter()
        .map(|r| r["reason"].as_str().unwrap())
        .collect();
    for want in [
        "approval_level_too_low",
        "already_paid",
        "coverage_exceeded",
        "policy_expired",
        "open_claims",
    ] {
        assert!(reasons.contains(&want), "{want}: {reasons:?}");
    }
    assert_eq!(
        compact(&state, "policies"),
        json_file(&example("expected.json"))
    );

    let summary = run_until_end(&dir.path().join("projections.toml"));
    assert!(summary.contains("19 read = 19 processed"), "{summary}");
    let views = dir.path().join("data/projections");
    for v in ["claims", "claims_by_status"] {
        assert_eq!(
            compact(&views, v),
            json_file(&example(&format!("expected_{v}.json"))),
            "{v}"
        );
    }
    // Paid at most once: one ClaimPaid per claim.
    let paid: Vec<String> = sorted_events(&state, "policy_events")
        .iter()
        .filter(|e| e["type"] == "ClaimPaid")
        .map(|e| e["data"]["claim"].as_str().unwrap().to_string())
        .collect();
    let mut unique = paid.clone();
    unique.dedup();
    assert_eq!(paid.len(), 3);
    assert_eq!(unique, paid);
}
