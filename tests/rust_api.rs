//! The Rust API (`onceflow_core::api`): the bank account of
//! `examples/bank/pipeline.toml`, written as a Rust [`Aggregate`], run by the
//! engine on the same commands, gives the same events, rejections and state.
//!
//! This file doubles as the worked example of `docs/rust-api.md`.

mod common;

use std::path::Path;
use std::sync::Arc;

use onceflow_core::api::{Aggregate, AggregateTopics, Rejection, TypedAggregate};
use onceflow_core::config::Pipeline;
use onceflow_core::engine::{self, RunOptions};
use serde::{Deserialize, Serialize};

use common::*;

// --- the domain ---------------------------------------------------------------------------

/// A command as it arrives: metadata, and the command itself by its `type`.
#[derive(Deserialize)]
struct Command {
    id: Option<String>,
    correlation_id: Option<String>,
    expected_version: Option<u64>,
    #[serde(default)]
    ts: i64,
    #[serde(flatten)]
    kind: Kind,
}

#[derive(Deserialize)]
#[serde(tag = "type")]
enum Kind {
    OpenAccount { owner: String, currency: String },
    Deposit { amount: i64 },
    Withdraw { amount: i64 },
    Freeze { reason: Option<String> },
    Unfreeze,
    Close,
}

/// Events: their fields are the `data` of the events written.
#[derive(Serialize)]
#[serde(untagged)]
enum Event {
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
    AccountFrozen {
        reason: String,
    },
    AccountUnfrozen {},
    AccountClosed {
        at: i64,
    },
}

#[derive(Serialize)]
struct Account {
    status: &'static str,
    owner: String,
    currency: String,
    balance: i64,
    opened_at: i64,
}

impl Default for Account {
    fn default() -> Self {
        Account {
            status: "none",
            owner: String::new(),
            currency: "EUR".into(),
            balance: 0,
            opened_at: 0,
        }
    }
}

struct Accounts;

fn not_open(s: &Account) -> Rejection {
    Rejection::new("account_not_open", format!("account is {}", s.status))
}

impl Aggregate for Accounts {
    type Command = Command;
    type Event = Event;
    type State = Account;

    fn handle(&self, s: &Account, c: &Command) -> Result<Vec<Event>, Rejection> {
        let at = c.ts;
        let open = s.status == "open";
        match &c.kind {
            Kind::OpenAccount { owner, currency } => {
                if s.status != "none" {
                    return Err(Rejection::new("already_open", "account already exists"));
                }
                if owner.is_empty() {
                    return Err(Rejection::new("owner_required", "owner required"));
                }
                if !["EUR", "USD", "GBP"].contains(&currency.as_str()) {
                    return Err(Rejection::new(
                        "unsupported_currency",
                        format!("currency {currency} is not supported"),
                    ));
                }
                Ok(vec![Event::AccountOpened {
                    owner: owner.clone(),
                    currency: currency.clone(),
                    at,
                }])
            }
            Kind::Deposit { amount } => {
                if !open {
                    return Err(not_open(s));
                }
                if *amount <= 0 {
                    return Err(Rejection::new("invalid_amount", "amount must be positive"));
                }
                s.balance.checked_add(*amount).ok_or_else(|| {
                    Rejection::new("invalid_command", "integer overflow in the balance")
                })?;
                Ok(vec![Event::Deposited {
                    amount: *amount,
                    at,
                }])
            }
            Kind::Withdraw { amount } => {
                if !open {
                    return Err(not_open(s));
                }
                if *amount <= 0 {
                    return Err(Rejection::new("invalid_amount", "amount must be positive"));
                }
                if s.balance < *amount {
                    return Err(Rejection::new(
                        "insufficient_funds",
                        format!("balance {} is less than {amount}", s.balance),
                    ));
                }
                let mut events = vec![Event::Withdrawn {
                    amount: *amount,
                    at,
                }];
                if s.balance == *amount {
                    events.push(Event::BalanceDepleted { at });
                }
                Ok(events)
            }
            Kind::Freeze { reason } => {
                if !open {
                    return Err(not_open(s));
                }
                Ok(vec![Event::AccountFrozen {
                    reason: reason.clone().unwrap_or_else(|| "unspecified".into()),
                }])
            }
            Kind::Unfreeze => {
                if s.status != "frozen" {
                    return Err(Rejection::new("not_frozen", "account is not frozen"));
                }
                Ok(vec![Event::AccountUnfrozen {}])
            }
            Kind::Close => {
                if !open {
                    return Err(not_open(s));
                }
                if s.balance != 0 {
                    return Err(Rejection::new(
                        "balance_not_zero",
                        "withdraw the balance first",
                    ));
                }
                Ok(vec![Event::AccountClosed { at }])
            }
        }
    }

    fn apply(&self, s: &mut Account, e: &Event) {
        match e {
            Event::AccountOpened {
                owner,
                currency,
                at,
            } => {
                s.status = "open";
                s.owner = owner.clone();
                s.currency = currency.clone();
                s.opened_at = *at;
            }
            Event::Deposited { amount, .. } => s.balance += amount,
            Event::Withdrawn { amount, .. } => s.balance -= amount,
            Event::BalanceDepleted { .. } => {}
            Event::AccountFrozen { .. } => s.status = "frozen",
            Event::AccountUnfrozen {} => s.status = "open",
            Event::AccountClosed { .. } => s.status = "closed",
        }
    }

    fn event_type(&self, e: &Event) -> &'static str {
        match e {
            Event::AccountOpened { .. } => "AccountOpened",
            Event::Deposited { .. } => "Deposited",
            Event::Withdrawn { .. } => "Withdrawn",
            Event::BalanceDepleted { .. } => "BalanceDepleted",
            Event::AccountFrozen { .. } => "AccountFrozen",
            Event::AccountUnfrozen {} => "AccountUnfrozen",
            Event::AccountClosed { .. } => "AccountClosed",
        }
    }

    fn command_id(&self, c: &Command) -> Option<String> {
        c.id.clone()
    }

    fn correlation_id(&self, c: &Command) -> Option<String> {
        c.correlation_id.clone()
    }

    fn expected_version(&self, c: &Command) -> Option<u64> {
        c.expected_version
    }
}

// --- running it ---------------------------------------------------------------------------

fn example(file: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/bank")
        .join(file)
}

#[test]
fn rust_aggregate_matches_the_declared_one() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(example("commands.jsonl"), dir.path().join("commands.jsonl")).unwrap();
    // The example pipeline gives sources, key, sequence and view; the Rust stage replaces
    // its [aggregate]. Its write side only: the projections are compared elsewhere.
    let src = std::fs::read_to_string(example("pipeline.toml")).unwrap();
    let (p, _read) = Pipeline::parse(&src, dir.path()).unwrap().sides().unwrap();
    for s in &p.sources {
        onceflow_connectors::files::load_if_missing(s, p.key.field.as_ref()).unwrap();
    }
    let stage = TypedAggregate::new(
        Accounts,
        AggregateTopics {
            events: "account_events".into(),
            rejections: "account_rejections".into(),
            ..AggregateTopics::named("account")
        },
    );
    let summary = engine::run_with_stage(
        &p,
        Arc::new(stage),
        RunOptions {
            until_end: true,
            ..RunOptions::default()
        },
    )
    .unwrap();
    assert!(summary.stats.balanced());
    assert_eq!(summary.stats.rejected, 8);

    let state = dir.path().join("data/state");
    let mut events: Vec<serde_json::Value> = read_topic(&state, "account_events")
        .into_iter()
        .map(|r| r.value)
        .collect();
    events.sort_by_key(|e| {
        (
            e["aggregate_id"].as_str().unwrap().to_string(),
            e["version"].as_u64().unwrap(),
        )
    });
    assert_eq!(events, jsonl(&example("expected_events.jsonl")));

    let reasons = |v: Vec<serde_json::Value>| {
        let mut r: Vec<(String, String, String)> = v
            .iter()
            .map(|x| {
                (
                    x["aggregate_id"].as_str().unwrap().to_string(),
                    x["command_id"].as_str().unwrap().to_string(),
                    x["reason"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        r.sort();
        r
    };
    let got = reasons(
        read_topic(&state, "account_rejections")
            .into_iter()
            .map(|r| r.value)
            .collect(),
    );
    assert_eq!(got, reasons(jsonl(&example("expected_rejections.jsonl"))));

    let dead = read_topic(&state, "dead_letters");
    let dead_reasons: Vec<&str> = dead
        .iter()
        .map(|d| d.value["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        dead_reasons
            .iter()
            .filter(|r| **r == "unknown_type")
            .count(),
        1,
        "{dead_reasons:?}"
    );

    let out =
        run_ok(
            bin()
                .args(["log", "read"])
                .arg(&state)
                .args(["--topic", "accounts", "--compact"]),
        );
    let view: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(example("expected.json")).unwrap()).unwrap();
    assert_eq!(view, expected);
}
