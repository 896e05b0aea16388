//! Criterion benchmarks of compiled CEL expressions on the per-record hot path: a
//! command guard, a computed field and a projection key, evaluated against the decoded
//! fields of a record (strings borrowed from the batch arena, as the engine holds them).
//!
//! cargo bench --bench expr
//! (`cargo test --bench expr` runs each once, as a smoke test.)

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use onceflow_core::decode::Value;
use onceflow_core::expr::{Env, MapScope, Program, Slot, Type, Val, compile};

const GUARD: &str = "state.balance >= cmd.data.amount && state.status == 'open'";
const COMPUTED: &str = "state.balance - cmd.data.amount";
const KEY: &str = "event.data.account + ':' + string(timestamp_ms(event.ts)).substring(0, 10)";
/// The shape of the bank's transaction history key (a zero-padded version).
const PADDED_KEY: &str =
    "event.data.account + '/' + string(state.balance + 1000000000).substring(1)";

/// The fields of one record as the decoder leaves them: values by slot, strings in an
/// arena.
struct RecordEnv<'r> {
    values: &'r [Value],
    arena: &'r [u8],
}

impl Env for RecordEnv<'_> {
    fn get(&self, slot: Slot) -> Option<Val<'_>> {
        // hot path
        Some(match *self.values.get(slot.0 as usize)? {
            Value::Missing => return None,
            Value::Null | Value::Composite => Val::Null,
            Value::Bool(b) => Val::Bool(b),
            Value::Int(i) => Val::Int(i),
            Value::Float(f) => Val::Double(f),
            Value::Str(start, len) => {
                let bytes = self.arena.get(start as usize..(start + len) as usize)?;
                Val::str(std::str::from_utf8(bytes).ok()?)
            }
        })
    }
}

fn scope() -> MapScope {
    let mut s = MapScope::new();
    s.declare("state.balance", Type::Int);
    s.declare("state.status", Type::String);
    s.declare("cmd.data.amount", Type::Int);
    s.declare("event.data.account", Type::String);
    s.declare("event.ts", Type::Int);
    s
}

fn program(src: &str) -> Program {
    compile(src, &scope()).expect("bench expressions compile")
}

fn bench(c: &mut Criterion) {
    let arena = b"openACC-0000042".to_vec();
    let values = [
        Value::Int(123_456),
        Value::Str(0, 4),
        Value::Int(250),
        Value::Str(4, 11),
        Value::Int(1_706_702_400_123),
    ];
    let env = RecordEnv {
        values: &values,
        arena: &arena,
    };

    let guard = program(GUARD);
    let computed = program(COMPUTED);
    let key = program(KEY);
    let padded_key = program(PADDED_KEY);
    assert_eq!(guard.eval_bool(&env), Ok(true));
    assert_eq!(computed.eval(&env), Ok(Val::Int(123_206)));
    assert_eq!(key.eval(&env), Ok(Val::str("ACC-0000042:2024-01-31")));
    assert_eq!(padded_key.eval(&env), Ok(Val::str("ACC-0000042/000123456")));

    let mut g = c.benchmark_group("expr");
    g.bench_function("guard_balance_ge_amount_and_open", |b| {
        b.iter(|| black_box(&guard).eval_bool(black_box(&env)))
    });
    g.bench_function("computed_balance_minus_amount", |b| {
        b.iter(|| match black_box(&computed).eval(black_box(&env)) {
            Ok(Val::Int(n)) => n,
            _ => unreachable!(),
        })
    });
    g.bench_function("key_account_and_day_to_json", |b| {
        let mut out = Vec::with_capacity(64);
        b.iter(|| {
            out.clear();
            black_box(&key)
                .eval(black_box(&env))
                .expect("key evaluates")
                .write_json(&mut out);
            out.len()
        })
    });
    g.bench_function("key_account_and_padded_int", |b| {
        b.iter(|| match black_box(&padded_key).eval(black_box(&env)) {
            Ok(Val::Str(s)) => s.len(),
            _ => unreachable!(),
        })
    });
    g.bench_function("compile_guard", |b| {
        let s = scope();
        b.iter(|| compile(black_box(GUARD), &s).is_ok())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
