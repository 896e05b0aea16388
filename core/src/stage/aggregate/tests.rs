//! The aggregate stage against a plain reference model of the bank account
//! (`examples/bank/pipeline.toml`), for random command sequences.

use std::path::Path;

use proptest::prelude::*;

use super::*;
use crate::batch::OutBuf;
use crate::config::Pipeline;
use crate::decode::Extractor;

const PIPELINE: &str = include_str!("../../../../examples/bank/pipeline.toml");

/// The account as the example's rules describe it, in plain Rust.
#[derive(Debug, Clone, PartialEq)]
struct Account {
    status: &'static str,
    owner: String,
    currency: String,
    balance: i64,
    opened_at: i64,
    version: u64,
}

impl Default for Account {
    fn default() -> Self {
        Account {
            status: "none",
            owner: String::new(),
            currency: "EUR".into(),
            balance: 0,
            opened_at: 0,
            version: 0,
        }
    }
}

#[derive(Debug, Clone)]
enum Cmd {
    Open {
        owner: String,
        currency: &'static str,
    },
    Deposit(i64),
    Withdraw(i64),
    Freeze,
    Unfreeze,
    Close,
}

/// What the model says a command does: events emitted, or the rejection reason.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Events(Vec<&'static str>),
    Rejected(String),
}

fn model(a: &mut Account, cmd: &Cmd, ts: i64) -> Outcome {
    let reject = |r: &str| Outcome::Rejected(r.to_string());
    let open = a.status == "open";
    match cmd {
        Cmd::Open { owner, currency } => {
            if a.status != "none" {
                return reject("already_open");
            }
            if owner.is_empty() {
                return reject("owner_required");
            }
            if !["EUR", "USD", "GBP"].contains(currency) {
                return reject("unsupported_currency");
            }
            a.status = "open";
            a.owner = owner.clone();
            a.currency = currency.to_string();
            a.opened_at = ts;
            a.version += 1;
            Outcome::Events(vec!["AccountOpened"])
        }
        Cmd::Deposit(n) => {
            if !open {
                return reject("account_not_open");
            }
            if *n <= 0 {
                return reject("invalid_amount");
            }
            let Some(b) = a.balance.checked_add(*n) else {
                return reject("invalid_command");
            };
            a.balance = b;
            a.version += 1;
            Outcome::Events(vec!["Deposited"])
        }
        Cmd::Withdraw(n) => {
            if !open {
                return reject("account_not_open");
            }
            if *n <= 0 {
                return reject("invalid_amount");
            }
            if a.balance < *n {
                return reject("insufficient_funds");
            }
            a.balance -= n;
            a.version += 1;
            if a.balance == 0 {
                a.version += 1;
                return Outcome::Events(vec!["Withdrawn", "BalanceDepleted"]);
            }
            Outcome::Events(vec!["Withdrawn"])
        }
        Cmd::Freeze => {
            if !open {
                return reject("account_not_open");
            }
            a.status = "frozen";
            a.version += 1;
            Outcome::Events(vec!["AccountFrozen"])
        }
        Cmd::Unfreeze => {
            if a.status != "frozen" {
                return reject("not_frozen");
            }
            a.status = "open";
            a.version += 1;
            Outcome::Events(vec!["AccountUnfrozen"])
        }
        Cmd::Close => {
            if !open {
                return reject("account_not_open");
            }
            if a.balance != 0 {
                return reject("balance_not_zero");
            }
            a.status = "closed";
            a.version += 1;
            Outcome::Events(vec!["AccountClosed"])
        }
    }
}

fn json(account: &str, cmd: &Cmd, id: usize, ts: i64) -> String {
    let head = format!(r#"{{"id":"c{id}","account":"{account}","ts":{ts},"#);
    match cmd {
        Cmd::Open { owner, currency } => format!(
            r#"{head}"type":"OpenAccount","owner":{},"currency":"{currency}"}}"#,
            serde_json::to_string(owner).unwrap()
        ),
        Cmd::Deposit(n) => format!(r#"{head}"type":"Deposit","amount":{n}}}"#),
        Cmd::Withdraw(n) => format!(r#"{head}"type":"Withdraw","amount":{n}}}"#),
        Cmd::Freeze => format!(r#"{head}"type":"Freeze"}}"#),
        Cmd::Unfreeze => format!(r#"{head}"type":"Unfreeze"}}"#),
        Cmd::Close => format!(r#"{head}"type":"Close"}}"#),
    }
}

/// Amounts from a small set, so that balances often meet them exactly (the edges of
/// `insufficient_funds`, `BalanceDepleted` and `balance_not_zero`), plus a few near
/// `i64::MAX` for overflow.
fn amount() -> impl Strategy<Value = i64> {
    prop_oneof![
        9 => prop::sample::select(vec![-1i64, 0, 1, 2, 5, 10, 20]),
        1 => (i64::MAX - 30)..=i64::MAX,
    ]
}

fn command() -> impl Strategy<Value = Cmd> {
    prop_oneof![
        2 => (prop_oneof![Just(""), Just("Ada"), Just("Ünïcode Ωwner")], prop_oneof![Just("EUR"), Just("USD"), Just("JPY")])
            .prop_map(|(o, c)| Cmd::Open { owner: o.to_string(), currency: c }),
        4 => amount().prop_map(Cmd::Deposit),
        4 => amount().prop_map(Cmd::Withdraw),
        1 => Just(Cmd::Freeze),
        1 => Just(Cmd::Unfreeze),
        1 => Just(Cmd::Close),
    ]
}

fn setup() -> (Aggregate, Extractor) {
    let p = Pipeline::parse(PIPELINE, Path::new(".")).expect("example pipeline is valid");
    let slots = p.referenced_fields();
    let agg = Aggregate::new(p.aggregate.as_ref().unwrap(), &slots).unwrap();
    (agg, Extractor::new(&slots))
}

/// Decodes command `line` and applies it to `st`, emitting through `emit`.
fn apply_line(
    agg: &Aggregate,
    ex: &Extractor,
    st: &mut AggState,
    line: &str,
    emit: &mut Emit<'_>,
) -> Result<Applied, Refused> {
    let mut arena = Vec::new();
    let mut vals = vec![Value::Missing; ex.slots()];
    ex.extract(line.as_bytes(), &mut arena, &mut vals).unwrap();
    agg.apply(
        st,
        EventView {
            values: &vals,
            arena: &arena,
        },
        emit,
    )
}

fn field_str(st: &AggState, agg: &Aggregate, name: &str) -> String {
    let i = agg
        .config()
        .state
        .iter()
        .position(|f| f.name == name)
        .unwrap();
    match st.fields[i].as_str() {
        Some(s) => s.to_string(),
        None => panic!("{name} is {:?}", st.fields[i]),
    }
}

fn field_int(st: &AggState, agg: &Aggregate, name: &str) -> i64 {
    let i = agg
        .config()
        .state
        .iter()
        .position(|f| f.name == name)
        .unwrap();
    st.fields[i].as_int().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(256)
    ))]

    #[test]
    fn aggregate_agrees_with_the_reference_model(
        cmds in proptest::collection::vec((0usize..3, command()), 1..60)
    ) {
        let (agg, ex) = setup();
        let mut states: Vec<AggState> = (0..3).map(|_| agg.new_state(b"A")).collect();
        let mut models: Vec<Account> = vec![Account::default(); 3];
        for (i, (acc, cmd)) in cmds.iter().enumerate() {
            let key = format!("A{acc}");
            let ts = 1_767_225_600_000 + i as i64;
            let line = json(&key, cmd, i, ts);
            let mut outs = [OutBuf::default(), OutBuf::default()];
            let before = states[*acc].clone();
            let applied = apply_line(
                &agg,
                &ex,
                &mut states[*acc],
                &line,
                &mut Emit::new(key.as_bytes(), "cmds", 0, i as u64, &mut outs, &[1, 1]),
            )
            .unwrap();
            let want = model(&mut models[*acc], cmd, ts);
            let events: Vec<serde_json::Value> = outs[EVENTS]
                .iter()
                .map(|(_, _, v)| serde_json::from_slice(v).unwrap())
                .collect();
            let rejections: Vec<serde_json::Value> = outs[REJECTIONS]
                .iter()
                .map(|(_, _, v)| serde_json::from_slice(v).unwrap())
                .collect();
            match &want {
                Outcome::Events(types) => {
                    prop_assert_eq!(applied, Applied::Changed, "{} -> {:?}", line, rejections);
                    let got: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
                    prop_assert_eq!(&got, types);
                    for (j, e) in events.iter().enumerate() {
                        prop_assert_eq!(e["event_id"].as_str().unwrap(), format!("c{i}:{j}"));
                        prop_assert_eq!(e["causation_id"].as_str().unwrap(), format!("c{i}"));
                        prop_assert_eq!(e["version"].as_u64().unwrap(), before.version + 1 + j as u64);
                    }
                }
                Outcome::Rejected(reason) => {
                    prop_assert_eq!(applied, Applied::Rejected, "{}", line);
                    prop_assert!(events.is_empty());
                    prop_assert_eq!(rejections.len(), 1);
                    prop_assert_eq!(rejections[0]["reason"].as_str().unwrap(), reason.as_str());
                    prop_assert_eq!(&states[*acc], &before, "a rejection leaves the state as it was");
                }
            }
            let (st, m) = (&states[*acc], &models[*acc]);
            prop_assert_eq!(st.version, m.version);
            prop_assert_eq!(field_str(st, &agg, "status"), m.status);
            prop_assert_eq!(field_str(st, &agg, "owner"), m.owner.clone());
            prop_assert_eq!(field_str(st, &agg, "currency"), m.currency.clone());
            prop_assert_eq!(field_int(st, &agg, "balance"), m.balance);
            prop_assert_eq!(field_int(st, &agg, "opened_at"), m.opened_at);
        }
    }
}

#[test]
fn replay_without_outputs_reaches_the_same_state() {
    let (agg, ex) = setup();
    let lines = [
        json(
            "A",
            &Cmd::Open {
                owner: "Ada".into(),
                currency: "EUR",
            },
            0,
            1,
        ),
        json("A", &Cmd::Deposit(50), 1, 2),
        json("A", &Cmd::Withdraw(80), 2, 3),
        json("A", &Cmd::Withdraw(50), 3, 4),
    ];
    let run = |enabled: bool| {
        let mut st = agg.new_state(b"A");
        let mut outs = [OutBuf::default(), OutBuf::default()];
        for (i, l) in lines.iter().enumerate() {
            let mut emit = Emit::new(b"A", "cmds", 0, i as u64, &mut outs, &[1, 1]);
            emit.enabled = enabled;
            apply_line(&agg, &ex, &mut st, l, &mut emit).unwrap();
        }
        (st, outs[EVENTS].len(), outs[REJECTIONS].len())
    };
    let (live, events, rejections) = run(true);
    let (replayed, none, none_r) = run(false);
    assert_eq!(live, replayed);
    assert_eq!(
        (events, rejections),
        (4, 1),
        "open, deposit, withdraw + depleted; one rejection"
    );
    assert_eq!((none, none_r), (0, 0), "replay writes nothing");
}

#[test]
fn events_and_rejections_carry_their_commands_headers() {
    let (agg, ex) = setup();
    let mut st = agg.new_state(b"A");
    let mut outs = [OutBuf::default(), OutBuf::default()];
    let lines = [
        json(
            "A",
            &Cmd::Open {
                owner: "Ada".into(),
                currency: "EUR",
            },
            0,
            1,
        ),
        json("A", &Cmd::Withdraw(80), 1, 2), // rejected: insufficient funds
    ];
    for (i, l) in lines.iter().enumerate() {
        let mut headers = Vec::new();
        crate::headers::push(
            &mut headers,
            b"traceparent",
            Some(format!("tp-{i}").as_bytes()),
        );
        let mut emit =
            Emit::new(b"A", "cmds", 0, i as u64, &mut outs, &[1, 1]).with_headers(&headers);
        apply_line(&agg, &ex, &mut st, l, &mut emit).unwrap();
    }
    let traces = |buf: &OutBuf| -> Vec<Vec<u8>> {
        buf.iter_headed()
            .map(|(_, _, _, h)| crate::headers::iter(h).next().unwrap().1.unwrap().to_vec())
            .collect()
    };
    assert_eq!(traces(&outs[EVENTS]), [b"tp-0".to_vec()]);
    assert_eq!(traces(&outs[REJECTIONS]), [b"tp-1".to_vec()]);
}

#[test]
fn unknown_and_untyped_commands_are_refused_with_unknown_type() {
    let (agg, ex) = setup();
    for (line, want) in [
        (
            r#"{"account":"A","type":"Transfer"}"#,
            "unknown command type 'Transfer'",
        ),
        (r#"{"account":"A","type":7}"#, "no string field 'type'"),
        (r#"{"account":"A"}"#, "no string field 'type'"),
    ] {
        let mut st = agg.new_state(b"A");
        let mut outs = [OutBuf::default(), OutBuf::default()];
        let err = apply_line(
            &agg,
            &ex,
            &mut st,
            line,
            &mut Emit::new(b"A", "cmds", 0, 0, &mut outs, &[1, 1]),
        )
        .unwrap_err();
        assert_eq!(err.reason, DeadReason::UnknownType);
        assert!(err.detail.contains(want), "{}", err.detail);
    }
}
