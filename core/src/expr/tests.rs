use std::borrow::Cow;

use proptest::prelude::*;

use super::*;

fn scope() -> MapScope {
    let mut s = MapScope::new();
    for (name, ty) in [
        ("state.balance", Type::Int),
        ("state.status", Type::String),
        ("cmd.data.amount", Type::Int),
        ("cmd.data", Type::Map),
        ("event.ts", Type::Int),
        ("event.data.account", Type::String),
        ("x", Type::Dyn),
        ("n", Type::Int),
        ("d", Type::Double),
        ("s", Type::String),
        ("l", Type::List),
        ("m", Type::Map),
        ("t", Type::Timestamp),
        ("flag", Type::Bool),
        ("absent", Type::Int),
        ("absent_map", Type::Map),
    ] {
        s.declare(name, ty);
    }
    s
}

fn env() -> MapEnv {
    let s = scope();
    let slot = |n: &str| s.slot(n).unwrap();
    let mut e = MapEnv::new();
    let data = Val::Map(std::sync::Arc::new(vec![
        (Val::str("amount"), Val::Int(30)),
        (Val::str("note"), Val::str("héllo")),
        (Val::str("nested"), Val::Map(Default::default())),
    ]));
    e.set(slot("state.balance"), Val::Int(100))
        .set(slot("state.status"), Val::str("open"))
        .set(slot("cmd.data.amount"), Val::Int(30))
        .set(slot("cmd.data"), data)
        .set(slot("event.ts"), Val::Int(1_706_702_400_123))
        .set(slot("event.data.account"), Val::str("ACC-1"))
        .set(slot("x"), Val::str("dyn"))
        .set(slot("n"), Val::Int(7))
        .set(slot("d"), Val::Double(2.5))
        .set(slot("s"), Val::str("Hello, wörld"))
        .set(
            slot("l"),
            Val::list(vec![Val::Int(1), Val::Int(2), Val::Int(3)]),
        )
        .set(
            slot("m"),
            Val::Map(std::sync::Arc::new(vec![
                (Val::str("a"), Val::Int(1)),
                (Val::Int(2), Val::str("two")),
            ])),
        )
        .set(slot("t"), Val::Timestamp(1_706_702_400_123_000_000))
        .set(slot("flag"), Val::Bool(true));
    e
}

fn compiled(src: &str) -> Program {
    compile(src, &scope()).unwrap_or_else(|e| {
        panic!(
            "{src}: {}",
            e.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        )
    })
}

fn eval(src: &str) -> Result<Val<'static>, String> {
    let p = compiled(src);
    let e = env();
    p.eval(&e).map(Val::into_owned).map_err(|e| e.message)
}

#[track_caller]
fn ok(src: &str) -> Val<'static> {
    eval(src).unwrap_or_else(|e| panic!("{src}: {e}"))
}

#[track_caller]
fn is(src: &str, want: Val<'_>) {
    assert_eq!(ok(src), want, "{src}");
}

#[track_caller]
fn yes(src: &str) {
    is(src, Val::Bool(true));
}

#[track_caller]
fn err(src: &str) -> String {
    match eval(src) {
        Ok(v) => panic!("{src}: expected an error, got {v}"),
        Err(e) => e,
    }
}

#[track_caller]
fn cerr(src: &str) -> Vec<String> {
    match compile(src, &scope()) {
        Ok(_) => panic!("{src}: expected a compile error"),
        Err(e) => e.iter().map(|e| e.to_string()).collect(),
    }
}

fn s(v: &str) -> Val<'static> {
    Val::string(v)
}

#[test]
fn literals() {
    is("42", Val::Int(42));
    is("0x1F", Val::Int(31));
    is("-9223372036854775808", Val::Int(i64::MIN));
    is("9223372036854775807", Val::Int(i64::MAX));
    is("1.5", Val::Double(1.5));
    is("1e3", Val::Double(1000.0));
    is("2.5e-1", Val::Double(0.25));
    is("'a\\'b'", s("a'b"));
    is("\"q\\\"\\n\\t\\\\\"", s("q\"\n\t\\"));
    is("'\\x41\\u00e9\\U0001F600\\101'", s("Aé😀A"));
    is("r'\\d+\\n'", s("\\d+\\n"));
    is("R\"raw\\\"", s("raw\\"));
    is("'''multi\nline's'''", s("multi\nline's"));
    is("true", Val::Bool(true));
    is("false", Val::Bool(false));
    is("null", Val::Null);
    is("'日本語'", s("日本語"));
    is("// comment\n 1 // trailing", Val::Int(1));
}

#[test]
fn arithmetic() {
    is("1 + 2 * 3 - 4 / 2", Val::Int(5));
    is("(1 + 2) * 3", Val::Int(9));
    is("7 % 3", Val::Int(1));
    is("-7 / 2", Val::Int(-3));
    is("-7 % 2", Val::Int(-1));
    is("-n", Val::Int(-7));
    is("--n", Val::Int(7));
    is("d * 2.0", Val::Double(5.0));
    is("d / 0.0", Val::Double(f64::INFINITY));
    is("-d", Val::Double(-2.5));
    is("'ab' + 'cd'", s("abcd"));
    is(
        "[1] + [2, 3]",
        Val::list(vec![Val::Int(1), Val::Int(2), Val::Int(3)]),
    );
    is("state.balance - cmd.data.amount", Val::Int(70));
}

#[test]
fn overflow_and_division_errors() {
    assert_eq!(
        err("9223372036854775807 + 1"),
        "integer overflow in 9223372036854775807 + 1"
    );
    assert_eq!(
        err("-9223372036854775808 - 1"),
        "integer overflow in -9223372036854775808 - 1"
    );
    assert_eq!(
        err("n * 9223372036854775807"),
        "integer overflow in n * 9223372036854775807"
    );
    assert_eq!(
        err("-9223372036854775808 / -1"),
        "integer overflow in -9223372036854775808 / -1"
    );
    assert_eq!(
        err("-9223372036854775808 % -1"),
        "integer overflow in -9223372036854775808 % -1"
    );
    assert_eq!(
        err("-(-9223372036854775808)"),
        "integer overflow in -(-9223372036854775808)"
    );
    assert_eq!(err("n / 0"), "division by zero in n / 0");
    assert_eq!(err("n % (n - 7)"), "modulus by zero in n % (n - 7)");
    let mut sc = MapScope::new();
    let b = sc.declare("state.balance", Type::Int);
    let a = sc.declare("cmd.data.amount", Type::Int);
    let p = compile("state.balance + cmd.data.amount", &sc).unwrap();
    let mut e = MapEnv::new();
    e.set(b, Val::Int(i64::MAX)).set(a, Val::Int(1));
    let got = p.eval(&e).unwrap_err();
    assert_eq!(
        got.message,
        "integer overflow in state.balance + cmd.data.amount"
    );
    assert_eq!(got.column, 1);
}

#[test]
fn int_and_double_do_not_mix_in_arithmetic() {
    assert_eq!(
        cerr("n + d"),
        ["column 3: '+' cannot apply to int and double; convert one side with int() or double()"]
    );
    assert_eq!(err("m.a + 1.5 > 0.0"), "'+' cannot apply to int and double");
    is("double(n) + d", Val::Double(9.5));
}

#[test]
fn comparisons() {
    for src in [
        "1 < 2",
        "2 <= 2",
        "3 > 2",
        "3 >= 3",
        "1 == 1",
        "1 != 2",
        "1.5 < 2.5",
        "'abc' < 'abd'",
        "'b' > 'abc'",
        "false < true",
        "null == null",
        "timestamp('2024-01-01T00:00:00Z') < t",
        "duration('1m') > duration('59s')",
        "[1, 2] == [1, 2]",
        "{'a': 1} == {'a': 1}",
        "[1, 2] != [2, 1]",
        "state.balance >= cmd.data.amount && state.status == 'open'",
    ] {
        yes(src);
    }
    // Heterogeneous numeric comparison (CEL since 2022): by value, exactly.
    for src in [
        "1 == 1.0",
        "1 < 1.5",
        "2 > 1.5",
        "2 >= 2.0",
        "9223372036854775807 < 9223372036854775808.0",
        "[1] == [1.0]",
        "1 in [1.0, 2.0]",
        "n != 7.5",
    ] {
        yes(src);
    }
    is("0.0 / 0.0 == 0.0 / 0.0", Val::Bool(false));
    is("0.0 / 0.0 < 1", Val::Bool(false));
    is("x == 1", Val::Bool(false));
    is("x != 1", Val::Bool(true));
    is("state.status == null", Val::Bool(false));
}

#[test]
fn comparison_type_errors() {
    assert_eq!(
        cerr("state.balance >= 'x'"),
        ["column 15: '>=' cannot compare int and string"]
    );
    assert_eq!(
        cerr("state.status == 1"),
        ["column 14: '==' cannot compare string and int"]
    );
    assert_eq!(
        cerr("[1] < [2]"),
        ["column 5: '<' cannot compare list and list"]
    );
    assert_eq!(err("n >= x"), "'>=' cannot compare int and string");
}

#[test]
fn logic_absorbs_errors() {
    is("false && n / 0 == 1", Val::Bool(false));
    is("n / 0 == 1 && false", Val::Bool(false));
    is("true || n / 0 == 1", Val::Bool(true));
    is("n / 0 == 1 || true", Val::Bool(true));
    assert_eq!(err("true && n / 0 == 1"), "division by zero in n / 0");
    assert_eq!(err("n / 0 == 1 || false"), "division by zero in n / 0");
    is("absent > 0 && false", Val::Bool(false));
    assert_eq!(err("!flag || absent > 0"), "missing field absent");
    is("has(absent_map.a) && absent_map.a > 0", Val::Bool(false));
    is("!false", Val::Bool(true));
    is("!(1 < 2) || flag", Val::Bool(true));
    assert_eq!(err("x || true && false"), "'||' needs bools, found string");
    is("x || true", Val::Bool(true));
    assert_eq!(
        cerr("1 && true"),
        ["column 1: '&&' needs bool operands, found int"]
    );
    assert_eq!(cerr("!s"), ["column 2: '!' needs a bool, found string"]);
}

#[test]
fn conditional() {
    is("flag ? 'y' : 'n'", s("y"));
    is("!flag ? 1 : n > 3 ? 2 : 3", Val::Int(2));
    is("false ? n / 0 : 5", Val::Int(5));
    assert_eq!(
        cerr("n ? 1 : 2"),
        ["column 1: the condition of '?:' must be a bool, found int"]
    );
    assert_eq!(
        err("x ? 1 : 2"),
        "'?:' needs a bool condition, found string"
    );
}

#[test]
fn membership_lists_and_maps() {
    yes("2 in l");
    yes("!(4 in l)");
    yes("'a' in m");
    yes("2 in m");
    yes("'open' in ['open', 'pending']");
    is("l[0] + l[2]", Val::Int(4));
    is("m['a']", Val::Int(1));
    is("m[2]", s("two"));
    is("m.a", Val::Int(1));
    is("cmd.data.note", s("héllo"));
    is("cmd.data['amount']", Val::Int(30));
    is("{'k': [1, {'z': true}]}['k'][1].z", Val::Bool(true));
    is("size({1: 'a', true: 'b', 'c': 'd'})", Val::Int(3));
    is("[]", Val::list(vec![]));
    is("[1, 2,]", Val::list(vec![Val::Int(1), Val::Int(2)]));
    assert_eq!(err("l[3]"), "index 3 out of range for a list of 3 elements");
    assert_eq!(
        err("l[-1]"),
        "index -1 out of range for a list of 3 elements"
    );
    assert_eq!(err("m['zz']"), "no such key \"zz\" in m['zz']");
    assert_eq!(err("m.zz"), "no such key 'zz' in m.zz");
    assert_eq!(err("cmd.data.nope"), "no such key 'nope' in cmd.data.nope");
    assert_eq!(err("{'a': 1, 'a': 2}"), "duplicate map key \"a\"");
    assert_eq!(
        cerr("{1.5: 1}"),
        ["column 2: map keys must be string, int or bool, found double"]
    );
    assert_eq!(
        cerr("l['a']"),
        ["column 3: a list index must be an int, found string"]
    );
    assert_eq!(cerr("n[0]"), ["column 1: cannot index int"]);
    assert_eq!(cerr("n.f"), ["column 1: cannot select field 'f' of int"]);
    assert_eq!(
        cerr("1 in n"),
        ["column 3: 'in' needs a list or a map on the right, found int"]
    );
}

#[test]
fn has_tests_presence() {
    let sc = scope();
    let mut e = env();
    let p = compile("has(cmd.data.amount)", &sc).unwrap();
    assert_eq!(p.eval(&e).unwrap(), Val::Bool(true));
    e.unset(sc.slot("cmd.data.amount").unwrap());
    assert_eq!(p.eval(&e).unwrap(), Val::Bool(false));
    let missing = compile("cmd.data.amount > 0", &sc).unwrap();
    let got = missing.eval(&e).unwrap_err();
    assert_eq!(got.message, "missing field cmd.data.amount");
    assert_eq!(got.column, 1);
    yes("has(cmd.data.note)");
    yes("!has(cmd.data.x)");
    yes("has(cmd.data.nested) && !has(cmd.data.nested.deep)");
    yes("!has(absent_map.a.b)");
    yes("has(m.a)");
    yes("has({'a': 1}.a)");
    yes("[{'a': 1}].exists(e, has(e.a))");
    assert_eq!(err("has(x.y)"), "has() needs a map, but x.y is string");
    assert_eq!(
        cerr("has(state.balance.x)"),
        ["column 5: has() needs a map, found int"]
    );
    assert_eq!(
        cerr("has(n)"),
        ["column 5: has() needs a field selection, e.g. has(cmd.data.amount)"]
    );
    assert_eq!(
        cerr("has(cmd.dta.x)"),
        ["column 5: unknown variable 'cmd.dta.x'; did you mean 'cmd.data.x'?"]
    );
    assert_eq!(
        cerr("has(stat.balance)"),
        ["column 5: unknown variable 'stat.balance'; did you mean 'state.balance'?"]
    );
}

#[test]
fn size_counts_code_points() {
    is("size('héllo')", Val::Int(5));
    is("'日本'.size()", Val::Int(2));
    is("size(s)", Val::Int(12));
    is("size(l)", Val::Int(3));
    is("m.size()", Val::Int(2));
    is("size('')", Val::Int(0));
    assert_eq!(
        cerr("size(n)"),
        ["column 1: no overload of 'size' for (int); expected (string) or (list) or (map)"]
    );
    assert_eq!(err("size(m.a)"), "no overload of 'size' for (int)");
}

#[test]
fn string_functions() {
    yes("s.contains('wö')");
    yes("s.startsWith('Hell')");
    yes("s.endsWith('rld')");
    yes("!s.endsWith('x')");
    yes("s.matches('^H.*d$')");
    yes("matches('abc123', '[0-9]+')");
    yes("!'abc'.matches('^b')");
    yes("'a.c'.matches(x.size() > 0 ? 'a' : 'b')");
    is("s.lowerAscii()", s("hello, wörld"));
    is("'ÄbC'.upperAscii()", s("ÄBC"));
    is("'  pad \\n'.trim()", s("pad"));
    is("s.substring(7)", s("wörld"));
    is("s.substring(7, 9)", s("wö"));
    is("'日本語'.substring(1, 2)", s("本"));
    is("'abc'.substring(3)", s(""));
    // Indexes before, at and after the first non-ASCII character.
    is("'ab日x'.substring(2)", s("日x"));
    is("'ab日x'.substring(0, 3)", s("ab日"));
    is("'ab日x'.substring(3, 4)", s("x"));
    is("s.indexOf('ö')", Val::Int(8));
    is("s.indexOf('l', 4)", Val::Int(10));
    is("s.indexOf('zz')", Val::Int(-1));
    is("'a-b-c'.replace('-', '+')", s("a+b+c"));
    is("'a-b-c'.replace('-', '', 1)", s("ab-c"));
    is(
        "'a,b,,c'.split(',')",
        Val::list(vec![s("a"), s("b"), s(""), s("c")]),
    );
    is("'a,b,c'.split(',', 2)", Val::list(vec![s("a"), s("b,c")]));
    is("'a,b'.split(',', 0)", Val::list(vec![]));
    is("'héj'.split('')", Val::list(vec![s("h"), s("é"), s("j")]));
    is("['a', 'b'].join()", s("ab"));
    is("['a', 'b'].join(', ')", s("a, b"));
    is("'a,b'.split(',').join('|')", s("a|b"));
    assert_eq!(
        err("s.substring(20)"),
        "substring: index 20 is out of range for a string of 12 characters"
    );
    assert_eq!(
        err("s.substring(3, 2)"),
        "substring: end 2 is before start 3"
    );
    assert_eq!(err("s.substring(-1)"), "substring: negative index -1");
    assert_eq!(err("[1].join()"), "join: element 0 is int, not string");
    assert_eq!(
        cerr("s.matches('(')")[0],
        "column 11: invalid regular expression '(': regex parse error:\n    (\n    ^\nerror: unclosed group"
    );
    assert!(err("s.matches(x + '(')").starts_with("invalid regular expression 'dyn('"));
    assert_eq!(
        cerr("s.contains(1)"),
        ["column 3: no overload of 'contains' for (string, int); expected (string, string)"]
    );
    assert_eq!(
        cerr("s.substring(1, 2, 3)"),
        ["column 3: 'substring' takes 1 or 2 arguments, found 3"]
    );
    assert_eq!(
        cerr("contains(s, 'a')"),
        ["column 1: 'contains' is a method: write x.contains(...)"]
    );
    assert_eq!(
        cerr("s.int()"),
        ["column 3: 'int' is a function, not a method: write int(x)"]
    );
}

#[test]
fn conversions() {
    is("int('-42')", Val::Int(-42));
    is("int(2.9)", Val::Int(2));
    is("int(-2.9)", Val::Int(-2));
    is("int(n)", Val::Int(7));
    is("double(n)", Val::Double(7.0));
    is("double('1.25')", Val::Double(1.25));
    is("string(n)", s("7"));
    is("string(d)", s("2.5"));
    is("string(1.0)", s("1"));
    is("string(true)", s("true"));
    is("string(null)", s("null"));
    is("string('x')", s("x"));
    is("bool('true')", Val::Bool(true));
    is("bool('f')", Val::Bool(false));
    assert_eq!(err("int('12a')"), "int: cannot convert '12a' to an integer");
    assert_eq!(
        err("int(1e19)"),
        "int: 10000000000000000000 is out of the range of int"
    );
    assert_eq!(err("bool('yes')"), "bool: cannot convert 'yes' to a bool");
    assert_eq!(
        err("string(flag ? l : m)"),
        "no overload of 'string' for (list)"
    );
    assert_eq!(
        cerr("string(l)"),
        [
            "column 1: no overload of 'string' for (list); expected (string) or (int) or (double) or (bool) or (null) or (timestamp) or (duration)"
        ]
    );
}

#[test]
fn timestamps_and_durations() {
    is("string(t)", s("2024-01-31T12:00:00.123Z"));
    is(
        "string(timestamp_ms(event.ts))",
        s("2024-01-31T12:00:00.123Z"),
    );
    is(
        "event.data.account + ':' + string(timestamp_ms(event.ts)).substring(0, 10)",
        s("ACC-1:2024-01-31"),
    );
    is("int(t)", Val::Int(1_706_702_400));
    is("int(timestamp('1969-12-31T23:59:59.5Z'))", Val::Int(-1));
    is("t.getFullYear()", Val::Int(2024));
    is("t.getMonth()", Val::Int(0));
    is("t.getDate()", Val::Int(31));
    is("t.getDayOfMonth()", Val::Int(30));
    is("t.getDayOfYear()", Val::Int(30));
    is("t.getDayOfWeek()", Val::Int(3));
    is("t.getHours()", Val::Int(12));
    is("t.getMinutes()", Val::Int(0));
    is("t.getSeconds()", Val::Int(0));
    is("t.getMilliseconds()", Val::Int(123));
    is(
        "timestamp('2024-03-01T00:30:00+01:00').getDate()",
        Val::Int(29),
    );
    is(
        "string(t + duration('1h30m'))",
        s("2024-01-31T13:30:00.123Z"),
    );
    is("string(duration('1h') + t)", s("2024-01-31T13:00:00.123Z"));
    is("string(t - duration('1ms'))", s("2024-01-31T12:00:00.122Z"));
    is(
        "string(timestamp('2024-02-01T00:00:00Z') - timestamp('2024-01-31T23:59:58.5Z'))",
        s("1.5s"),
    );
    is("string(duration('1h30m'))", s("5400s"));
    is("string(-duration('100ms'))", s("-0.1s"));
    is(
        "string(duration('1us') - duration('2ns'))",
        s("0.000000998s"),
    );
    is("duration('90m').getHours()", Val::Int(1));
    is("duration('90m').getMinutes()", Val::Int(90));
    is("string(timestamp(0))", s("1970-01-01T00:00:00Z"));
    assert_eq!(
        err("timestamp('2024-13-01T00:00:00Z')"),
        "invalid timestamp '2024-13-01T00:00:00Z' (expected RFC 3339, e.g. '2024-01-31T12:00:00Z')"
    );
    assert_eq!(
        err("duration('5 minutes')"),
        "invalid duration '5 minutes': unknown unit ' minutes' (h, m, s, ms, us, ns)"
    );
    assert_eq!(
        err("timestamp_ms(9223372036854775807)"),
        "timestamp_ms: 9223372036854775807 ms is out of range"
    );
    assert_eq!(
        err("t + duration('2500000h')"),
        "timestamp or duration out of range in t + duration('2500000h')"
    );
    assert_eq!(
        cerr("t - 1"),
        ["column 3: '-' cannot apply to timestamp and int"]
    );
    assert_eq!(
        cerr("t.getDate(1)"),
        ["column 3: 'getDate' takes 0 arguments, found 1"]
    );
}

#[test]
fn macros() {
    yes("l.all(i, i > 0)");
    yes("!l.all(i, i > 1)");
    yes("l.exists(i, i == 2)");
    yes("!l.exists(i, i == 5)");
    yes("l.exists_one(i, i > 2)");
    yes("!l.exists_one(i, i > 1)");
    is(
        "l.map(i, i * 10)",
        Val::list(vec![Val::Int(10), Val::Int(20), Val::Int(30)]),
    );
    is(
        "l.map(i, i > 1, i * 10)",
        Val::list(vec![Val::Int(20), Val::Int(30)]),
    );
    is(
        "l.filter(i, i % 2 == 1)",
        Val::list(vec![Val::Int(1), Val::Int(3)]),
    );
    is("m.map(k, string(k))", Val::list(vec![s("a"), s("2")]));
    is(
        "[[1, 2], [3]].map(a, a.map(b, b + size(a)))",
        Val::list(vec![
            Val::list(vec![Val::Int(3), Val::Int(4)]),
            Val::list(vec![Val::Int(4)]),
        ]),
    );
    // A decisive element wins over an error in another one.
    yes("[0, 1].exists(i, 10 / i == 10)");
    is("[0, 1].all(i, 10 / i == 5)", Val::Bool(false));
    assert_eq!(
        err("[0, 1].all(i, 10 / i == 10)"),
        "division by zero in 10 / i"
    );
    assert_eq!(
        cerr("l.all(1, true)"),
        ["column 7: the first argument of 'all' must be a variable name, e.g. all(x, ...)"]
    );
    assert_eq!(
        cerr("l.map(i)"),
        ["column 3: 'map' takes 2 or 3 arguments, found 1"]
    );
    assert_eq!(
        cerr("n.all(i, true)"),
        ["column 1: 'all' needs a list or a map, found int"]
    );
    assert_eq!(
        cerr("l.all(i, j > 0)"),
        ["column 10: unknown variable 'j'; did you mean 'i'?"]
    );
    assert_eq!(
        err("l.all(i, i)"),
        "macro predicate must be a bool, found int"
    );
    assert_eq!(
        err(
            "[1,2,3,4,5,6,7,8,9,10].map(a, [1,2,3,4,5,6,7,8,9,10].map(b, [1,2,3,4,5,6,7,8,9,10].map(c, [1,2,3,4,5,6,7,8,9,10].map(d, [1,2,3,4,5,6,7,8,9,10].map(e, [1,2,3,4,5,6,7,8,9,10].map(f, f))))))"
        ),
        "evaluation too expensive (more than 1000000 macro iterations)"
    );
}

#[test]
fn compile_errors_are_precise() {
    assert_eq!(
        cerr("size(s) == sise(s)"),
        ["column 12: unknown function 'sise'; did you mean 'size'?"]
    );
    assert_eq!(
        cerr("state.balanse > 0"),
        ["column 1: unknown variable 'state.balanse'; did you mean 'state.balance'?"]
    );
    assert_eq!(
        cerr("flg || true"),
        ["column 1: unknown variable 'flg'; did you mean 'flag'?"]
    );
    assert_eq!(cerr("zzzzzz"), ["column 1: unknown variable 'zzzzzz'"]);
    // Several errors at once.
    assert_eq!(
        cerr("foo > 1 && s + 1 == 'x' && bar(1)"),
        [
            "column 1: unknown variable 'foo'",
            "column 14: '+' cannot apply to string and int",
            "column 28: unknown function 'bar'",
        ]
    );
    assert_eq!(
        cerr("(1 + 2"),
        ["column 7: expected ')' but found the end of the expression"]
    );
    assert_eq!(
        cerr("1 + * 2"),
        ["column 5: expected an expression but found '*'"]
    );
    assert_eq!(
        cerr("1 2"),
        ["column 3: expected an operator or the end of the expression but found number 2"]
    );
    assert_eq!(
        cerr("a = 1"),
        ["column 3: unexpected '='; did you mean '=='?"]
    );
    assert_eq!(
        cerr("n & 1"),
        ["column 3: unexpected '&'; did you mean '&&'?"]
    );
    assert_eq!(cerr("'abc"), ["column 1: unterminated string"]);
    assert_eq!(cerr("'\\q'"), ["column 2: unknown escape '\\q'"]);
    assert_eq!(
        cerr("1u"),
        ["column 1: unsigned integers (1u) are not supported; use int"]
    );
    assert_eq!(
        cerr("99999999999999999999"),
        ["column 1: integer literal does not fit in 64 bits"]
    );
    assert_eq!(
        cerr("9223372036854775808"),
        ["column 1: integer literal does not fit in 64 bits"]
    );
    assert_eq!(cerr("if"), ["column 1: 'if' is a reserved word"]);
    assert_eq!(cerr("n #"), ["column 3: unexpected character '#'"]);
    assert_eq!(
        cerr("s."),
        ["column 3: expected a field or method name after '.' but found the end of the expression"]
    );
    assert_eq!(
        cerr("b'x'"),
        ["column 1: bytes literals (b'...') are not supported"]
    );
    assert_eq!(
        cerr("Foo{a: 1}"),
        ["column 1: message construction (Type{...}) is not supported"]
    );
    assert_eq!(
        cerr(""),
        ["column 1: expected an expression but found the end of the expression"]
    );
}

#[test]
fn columns_count_characters() {
    let e = compile("'日本語' + 'é' == nope", &scope()).unwrap_err();
    assert_eq!(e[0].column, 16);
    assert_eq!(e[0].len, 4);
    let e = compile("'ü' + 1", &scope()).unwrap_err();
    assert_eq!((e[0].column, e[0].len), (5, 1));
    assert_eq!(
        e[0].to_string(),
        "column 5: '+' cannot apply to string and int"
    );
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let deep = format!("{}1{}", "(".repeat(5000), ")".repeat(5000));
    assert!(cerr(&deep)[0].contains("nested too deeply"));
    let chain = vec!["1"; 5000].join(" + ");
    assert!(cerr(&chain)[0].contains("nested too deeply"));
    let nots = format!("{}true", "!".repeat(5000));
    assert!(cerr(&nots)[0].contains("nested too deeply"));
    let ok_chain = vec!["n"; 90].join(" + ");
    is(&ok_chain, Val::Int(630));
}

#[test]
fn values_of_another_type_than_declared_get_the_general_path() {
    // The typed fast paths give up; the general path reports what happened.
    let sc = scope();
    let mut e = env();
    e.set(sc.slot("state.balance").unwrap(), Val::str("100"));
    let guard = compile(
        "state.balance >= cmd.data.amount && state.status == 'open'",
        &sc,
    )
    .unwrap();
    assert_eq!(
        guard.eval_bool(&e).unwrap_err().message,
        "'>=' cannot compare string and int"
    );
    let computed = compile("state.balance - cmd.data.amount", &sc).unwrap();
    assert_eq!(
        computed.eval(&e).unwrap_err().message,
        "'-' cannot apply to string and int"
    );
    e.set(sc.slot("state.status").unwrap(), Val::string("open"));
    e.set(sc.slot("state.balance").unwrap(), Val::Int(0));
    assert!(!guard.eval_bool(&e).unwrap());
    e.set(sc.slot("state.balance").unwrap(), Val::Int(30));
    assert!(guard.eval_bool(&e).unwrap());
}

#[test]
fn documented_examples_compile() {
    let mut sc = MapScope::new();
    for root in ["state", "cmd", "event"] {
        sc.declare(root, Type::Map);
    }
    let doc = include_str!("../../../docs/expressions.md");
    let examples = doc
        .split("## Examples")
        .nth(1)
        .and_then(|s| s.split("```").nth(1))
        .unwrap();
    let mut n = 0;
    for line in examples.lines().filter(|l| !l.trim().is_empty()) {
        compile(line, &sc).unwrap_or_else(|e| panic!("{line}: {e:?}"));
        n += 1;
    }
    assert!(n >= 8);
}

#[test]
fn eval_bool_rejects_non_bools() {
    let p = compiled("n + 1");
    let e = env();
    assert_eq!(
        p.eval_bool(&e).unwrap_err().message,
        "expected the expression to be a bool, but it is int: n + 1"
    );
    assert!(compiled("flag").eval_bool(&e).unwrap());
}

#[test]
fn strings_borrow_from_env_and_program() {
    let e = env();
    for src in [
        "state.status",
        "'open'",
        "s.substring(0, 5)",
        "s.trim()",
        "string(s)",
        "flag ? s : 'x'",
    ] {
        let p = compiled(src);
        match p.eval(&e).unwrap() {
            Val::Str(Cow::Borrowed(_)) => {}
            other => panic!("{src}: not borrowed: {other:?}"),
        }
    }
}

#[test]
fn static_types_and_constants() {
    assert_eq!(compiled("n + 1").result_type(), Type::Int);
    assert_eq!(compiled("x + 1").result_type(), Type::Dyn);
    assert_eq!(compiled("s.size() > 1").result_type(), Type::Bool);
    assert_eq!(compiled("l.map(i, i)").result_type(), Type::List);
    assert_eq!(compiled("timestamp_ms(n)").result_type(), Type::Timestamp);
    assert_eq!(compiled("1 + 2 * 3").constant(), Some(&Val::Int(7)));
    assert_eq!(compiled("'a' + 'b'").constant(), Some(&s("ab")));
    assert_eq!(compiled("n + 1").constant(), None);
    // A constant that fails is left to fail at run time (if it is reached).
    assert_eq!(compiled("1 / 0").constant(), None);
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Program>();
}

#[test]
fn json_rendering() {
    let mut out = Vec::new();
    let v =
        ok("{'s': 'q\"\\n', 'n': [1, 2.5, null, true], 't': t, 'd': duration('1.5s'), 1: false}");
    v.write_json(&mut out);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        r#"{"s":"q\"\n","n":[1,2.5,null,true],"t":"2024-01-31T12:00:00.123Z","d":"1.5s","1":false}"#
    );
    assert_eq!(ok("0.0 / 0.0").to_string(), "null");
    assert_eq!(ok("'é'").to_string(), "\"é\"");
}

/// An arithmetic tree over variables and literals, and its value by i64::checked_*.
#[derive(Debug, Clone)]
enum Arith {
    Var(usize),
    Lit(i64),
    Neg(Box<Arith>),
    Bin(u8, Box<Arith>, Box<Arith>),
}

const VARS: [&str; 3] = ["a", "b", "c"];

impl Arith {
    fn src(&self) -> String {
        match self {
            Arith::Var(i) => VARS[*i].to_string(),
            Arith::Lit(n) => format!("({n})"),
            Arith::Neg(e) => format!("-({})", e.src()),
            Arith::Bin(op, a, b) => {
                let op = ["+", "-", "*", "/", "%"][*op as usize];
                format!("({} {op} {})", a.src(), b.src())
            }
        }
    }

    fn reference(&self, vars: &[i64; 3]) -> Option<i64> {
        match self {
            Arith::Var(i) => Some(vars[*i]),
            Arith::Lit(n) => Some(*n),
            Arith::Neg(e) => e.reference(vars)?.checked_neg(),
            Arith::Bin(op, a, b) => {
                let (a, b) = (a.reference(vars)?, b.reference(vars)?);
                match op {
                    0 => a.checked_add(b),
                    1 => a.checked_sub(b),
                    2 => a.checked_mul(b),
                    3 => a.checked_div(b),
                    _ => a.checked_rem(b),
                }
            }
        }
    }
}

fn interesting_int() -> impl Strategy<Value = i64> {
    prop_oneof![
        any::<i64>(),
        -3i64..=3,
        Just(i64::MAX),
        Just(i64::MIN),
        Just(i64::MIN + 1),
        (-100_000i64..100_000),
    ]
}

fn arith() -> impl Strategy<Value = Arith> {
    let leaf = prop_oneof![
        (0usize..3).prop_map(Arith::Var),
        interesting_int().prop_map(Arith::Lit),
    ];
    leaf.prop_recursive(5, 32, 2, |inner| {
        prop_oneof![
            inner.clone().prop_map(|e| Arith::Neg(Box::new(e))),
            (0u8..5, inner.clone(), inner).prop_map(|(op, a, b)| Arith::Bin(
                op,
                Box::new(a),
                Box::new(b)
            )),
        ]
    })
}

proptest! {
    #[test]
    fn arithmetic_agrees_with_checked_i64(e in arith(), vars in [interesting_int(), interesting_int(), interesting_int()]) {
        let mut sc = MapScope::new();
        let slots: Vec<Slot> = VARS.iter().map(|v| sc.declare(v, Type::Int)).collect();
        let mut env = MapEnv::new();
        for (s, v) in slots.iter().zip(vars) {
            env.set(*s, Val::Int(v));
        }
        let src = e.src();
        let p = compile(&src, &sc).map_err(|e| TestCaseError::fail(format!("{src}: {e:?}")))?;
        let got = p.eval(&env);
        match e.reference(&vars) {
            Some(want) => prop_assert_eq!(got.map_err(|e| e.message), Ok(Val::Int(want)), "{}", src),
            None => prop_assert!(got.is_err(), "{src}: expected an error, got {got:?}"),
        }
    }

    #[test]
    fn compile_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let src = String::from_utf8_lossy(&bytes);
        if let Ok(p) = compile(&src, &scope()) {
            let _ = p.eval(&env());
        }
    }

    #[test]
    fn compile_never_panics_on_token_soup(parts in proptest::collection::vec(prop_oneof![
        Just("n"), Just("s"), Just("l"), Just("m"), Just("x"), Just("cmd.data"), Just("."), Just("("), Just(")"),
        Just("["), Just("]"), Just("{"), Just("}"), Just(","), Just(":"), Just("?"), Just("+"), Just("-"),
        Just("*"), Just("/"), Just("%"), Just("=="), Just("<"), Just("&&"), Just("||"), Just("!"), Just("in"),
        Just("1"), Just("0"), Just("2.5"), Just("'a'"), Just("''"), Just("null"), Just("true"), Just("size"),
        Just("has"), Just("all"), Just("map"), Just("filter"), Just("i"), Just("substring"), Just("split"),
        Just("timestamp"), Just("duration"), Just("'1h'"), Just("int"), Just("string"), Just("matches"), Just("'.*'"),
    ], 0..24)) {
        let src = parts.join(" ");
        if let Ok(p) = compile(&src, &scope()) {
            let _ = p.eval(&env());
        }
    }
}

#[test]
fn nesting_at_the_limit_fits_the_stack() {
    // Each shape nested as deep as the parser allows, compiled and evaluated on a
    // default 2 MiB test thread (debug build).
    let shapes: &[(&str, &str, &str)] = &[
        ("(", "1", ")"),
        ("[", "1", "]"),
        ("{'k': ", "1", "}"),
        ("size(", "'a'", ")"),
        ("-", "1", ""),
        ("!", "true", ""),
        ("l.map(i, ", "i", ")"),
        ("l.exists(i, ", "true", ")"),
        ("l[", "0", "]"),
        ("flag ? ", "1", " : 2"),
        ("has(m.a) && ", "true", ""),
        ("string(", "1", ").size() > 0 ? 'x' : 'y'"),
    ];
    for (open, mid, close) in shapes {
        for d in [98, 99, 100, 101] {
            let src = format!("{}{mid}{}", open.repeat(d), close.repeat(d));
            if let Ok(p) = compile(&src, &scope()) {
                let _ = p.eval(&env());
            }
        }
    }
    let chain = vec!["n"; 99].join(" * 1 + ");
    let _ = compile(&chain, &scope()).map(|p| p.eval(&env()).is_ok());
}

#[test]
fn map_with_and_without() {
    yes("{'a': 1}.with('b', 2) == {'a': 1, 'b': 2}");
    yes("{'a': 1, 'b': 2}.with('a', 3) == {'a': 3, 'b': 2}");
    yes("{'a': 1}.with('b', {'n': 2}).b.n == 2");
    yes("{'a': 1, 'b': 2}.without('a') == {'b': 2}");
    yes("{'a': 1}.without('zz') == {'a': 1}");
    yes("{1: 'x'}.with(1, 'y')[1] == 'y'");
    assert!(err("{'a': 1}.with([1], 2)").contains("a map key is a string, int or bool"));
    assert!(!cerr("[1].with('a', 2)").is_empty());
}

/// Evaluates `src` and `reference` (the same computation with one operand `v` written
/// `[v][0]`, so that the compiler keeps the general nodes) against `e`: the results, or
/// the error messages (which quote the source), agree.
#[track_caller]
fn same_as(src: &str, reference: &str, e: &MapEnv) {
    let sc = scope();
    let a = compile(src, &sc).unwrap().eval(e).map(Val::into_owned);
    let b = compile(reference, &sc)
        .unwrap()
        .eval(e)
        .map(Val::into_owned);
    let unwrap = |m: &str| {
        let (Some(open), Some(close)) = (reference.find('['), reference.find("][0]")) else {
            return m.to_string();
        };
        let v = &reference[open + 1..close];
        m.replace(&format!("[{v}][0]"), v)
    };
    assert_eq!(
        a.as_ref().map_err(|e| e.message.clone()),
        b.as_ref().map_err(|e| unwrap(&e.message)),
        "{src} vs {reference}"
    );
}

#[test]
fn string_then_substring_is_the_two_calls() {
    let mut e = env();
    let sc = scope();
    is("string(t).substring(0, 7)", s("2024-01"));
    is("string(t).substring(0, 10)", s("2024-01-31"));
    is(
        "string(timestamp_ms(event.ts)).substring(11)",
        s("12:00:00.123Z"),
    );
    is("string(n + 1000).substring(1)", s("007"));
    // Every receiver type and arguments in and out of range, constant and not.
    for x_val in [Val::str("dyn"), Val::list(vec![]), Val::Int(12)] {
        e.set(sc.slot("x").unwrap(), x_val);
        for x in [
            "t",
            "n",
            "d",
            "s",
            "x",
            "flag",
            "absent",
            "timestamp_ms(event.ts)",
        ] {
            for args in [
                "0, 7",
                "0, 10",
                "5",
                "0",
                "0, 0",
                "24",
                "0, 24",
                "0, 25",
                "25",
                "-1",
                "3, 2",
                "0, n",
                "n",
                "0, x",
                "x",
                "0, absent",
                "1, 1 / 0",
            ] {
                same_as(
                    &format!("string({x}).substring({args})"),
                    &format!("[string({x})][0].substring({args})"),
                    &e,
                );
            }
        }
    }
    e.set(sc.slot("n").unwrap(), Val::Int(i64::MIN));
    same_as("string(n).substring(1)", "[string(n)][0].substring(1)", &e);
    // The errors point where the two calls did.
    e.set(sc.slot("x").unwrap(), Val::list(vec![]));
    let p = compile("string(x).substring(1)", &sc).unwrap();
    assert_eq!(p.eval(&e).unwrap_err().column, 1);
    let p = compile("string(t).substring(0, 99)", &sc).unwrap();
    let err = p.eval(&e).unwrap_err();
    assert_eq!(err.column, 1);
    assert!(err.message.contains("out of range"), "{}", err.message);
}

#[test]
fn string_concatenation_is_the_chain_of_plus() {
    let sc = scope();
    let mut e = env();
    is(
        "event.data.account + ':' + string(t).substring(0, 7) + '/' + s",
        s("ACC-1:2024-01/Hello, wörld"),
    );
    same_as("s + ':' + s", "[s][0] + ':' + s", &e);
    // Declared strings holding other values at run time: as the `+` nodes would do.
    for (status, account) in [
        (Val::Int(2), Val::Int(3)),
        (Val::Int(2), Val::str("b")),
        (Val::str("a"), Val::Int(3)),
        (Val::Int(i64::MAX), Val::Int(1)),
        (Val::str("a"), Val::list(vec![])),
    ] {
        e.set(sc.slot("state.status").unwrap(), status);
        e.set(sc.slot("event.data.account").unwrap(), account);
        for src in [
            "state.status + event.data.account",
            "state.status + event.data.account + s",
            "s + state.status + event.data.account",
            "s + event.data.account + s + s",
            "s + ':' + event.data.account + string(1 / 0)",
        ] {
            let reference = src.replacen("state.status", "[state.status][0]", 1);
            let reference = if reference == src {
                src.replacen("s +", "[s][0] +", 1)
            } else {
                reference
            };
            same_as(src, &reference, &e);
        }
    }
    // The size limit applies to each step, with the step's span.
    let big = "x".repeat(400_000);
    e.set(sc.slot("s").unwrap(), Val::str(&big));
    same_as("s + s + s + ':'", "[s][0] + s + s + ':'", &e);
    let p = compile("s + s + s + ':'", &sc).unwrap();
    let err = p.eval(&e).unwrap_err();
    assert_eq!(err.column, 1);
    assert!(
        err.message.contains("result too large (1200000"),
        "{}",
        err.message
    );
    same_as("s + s", "[s][0] + s", &e);
}

#[test]
fn fast_membership_and_has() {
    let sc = scope();
    let mut e = env();
    for (src, want) in [
        ("state.status in ['open', 'closed']", true),
        ("state.status in ['x', 1, true]", false),
        ("state.status in ['x', 1, 'open']", true),
        ("state.status in []", false),
        ("!(state.status in ['closed'])", true),
        ("has(state.status) && has(cmd.data.amount)", true),
    ] {
        let p = compile(src, &sc).unwrap();
        assert_eq!(p.eval_bool(&e), Ok(want), "{src}");
    }
    // A declared string holding an int: the general path (CEL equality of numbers).
    e.set(sc.slot("state.status").unwrap(), Val::Int(1));
    let p = compile("state.status in ['x', 1.0]", &sc).unwrap();
    assert_eq!(p.eval_bool(&e), Ok(true));
    e.unset(sc.slot("state.status").unwrap());
    let p = compile("state.status in ['x']", &sc).unwrap();
    assert_eq!(
        p.eval_bool(&e).unwrap_err().message,
        "missing field state.status"
    );
}
