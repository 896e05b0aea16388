//! `expr` target: `expr::compile` and `Program::eval` on arbitrary UTF-8 text.
//!
//! Must not panic, overflow the stack or allocate absurdly. Checked besides:
//!
//! * a failed compile reports at least one error, each inside the text (1-based
//!   character column, at most one past the end) and at least one character long;
//! * a program that evaluates gives a value of its static result type (unless `dyn`),
//!   and that value renders as valid JSON;
//! * evaluation is deterministic (the same env twice gives the same outcome).

use onceflow_core::expr::{MapEnv, MapScope, Type, Val, compile};

/// Declared variables: name, static type.
pub const VARS: &[(&str, Type)] = &[
    ("state.balance", Type::Int),
    ("state.status", Type::String),
    ("cmd.data.amount", Type::Int),
    ("cmd.data", Type::Map),
    ("event.ts", Type::Int),
    ("event.data.account", Type::String),
    ("d", Type::Double),
    ("l", Type::List),
    ("t", Type::Timestamp),
    ("x", Type::Dyn),
    ("absent", Type::Int),
];

fn scope() -> MapScope {
    let mut s = MapScope::new();
    for (name, ty) in VARS {
        s.declare(name, *ty);
    }
    s
}

fn env(s: &MapScope) -> MapEnv {
    let slot = |n: &str| s.slot(n).unwrap();
    let mut e = MapEnv::new();
    e.set(slot("state.balance"), Val::Int(100))
        .set(slot("state.status"), Val::str("open"))
        .set(slot("cmd.data.amount"), Val::Int(i64::MAX))
        .set(
            slot("cmd.data"),
            Val::Map(std::sync::Arc::new(vec![
                (Val::str("amount"), Val::Int(i64::MAX)),
                (Val::str("note"), Val::str("h\u{e9}\"llo")),
            ])),
        )
        .set(slot("event.ts"), Val::Int(1_706_702_400_123))
        .set(slot("event.data.account"), Val::str("ACC-1"))
        .set(slot("d"), Val::Double(-0.5))
        .set(
            slot("l"),
            Val::list(vec![Val::Int(1), Val::str("a"), Val::Null]),
        )
        .set(slot("t"), Val::Timestamp(-1))
        .set(slot("x"), Val::Double(f64::NAN));
    e
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let scope = scope();
    match compile(text, &scope) {
        Err(errors) => {
            assert!(!errors.is_empty(), "compile failed without an error");
            let chars = text.chars().count();
            for e in &errors {
                assert!(
                    (1..=chars + 1).contains(&e.column) && e.len >= 1,
                    "error {e} (len {}) outside a {chars}-character text",
                    e.len
                );
                let _ = e.to_string();
            }
        }
        Ok(p) => {
            let env = env(&scope);
            let first = p.eval(&env);
            let again = p.eval(&env);
            // Debug text, so that NaN equals NaN.
            assert_eq!(
                format!("{first:?}"),
                format!("{again:?}"),
                "evaluation is not deterministic"
            );
            let _ = p.eval(&MapEnv::new());
            if let Ok(v) = first {
                let ty = p.result_type();
                assert!(
                    ty == Type::Dyn || ty == v.type_of(),
                    "static type {ty} but the value {v:?} is {}",
                    v.type_of()
                );
                let mut out = Vec::new();
                v.write_json(&mut out);
                if let Err(e) = serde_json::from_slice::<serde_json::Value>(&out) {
                    panic!(
                        "invalid JSON {:?} for {v:?}: {e}",
                        String::from_utf8_lossy(&out)
                    );
                }
            }
        }
    }
}
