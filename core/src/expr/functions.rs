//! The built-in functions: their overloads (for the checker) and their
//! implementations (for the evaluator). Macros (`has`, `all`, `map`, ...) are in the
//! checker and the evaluator, not here.

use std::borrow::Cow;
use std::sync::Arc;

use super::time::{self, Field};
use super::value::{Type as T, Val};

/// Longest string or list a function may build (bytes or elements): an expression
/// cannot grow memory without bound.
pub(crate) const MAX_BUILT: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Func {
    Size,
    Contains,
    StartsWith,
    EndsWith,
    Matches,
    LowerAscii,
    UpperAscii,
    Trim,
    Substring,
    IndexOf,
    Replace,
    Split,
    Join,
    With,
    Without,
    Int,
    Double,
    String,
    Bool,
    Timestamp,
    Duration,
    TimestampMs,
    Get(Field),
}

/// How a function is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Style {
    /// `f(x)`
    Global,
    /// `x.f()`
    Method,
    /// Either.
    Both,
}

/// Parameter types (the receiver first, for methods) and the result type.
pub(crate) type Overload = (&'static [T], T);

pub(crate) struct Spec {
    pub name: &'static str,
    pub func: Func,
    pub style: Style,
    pub overloads: &'static [Overload],
}

const fn spec(
    name: &'static str,
    func: Func,
    style: Style,
    overloads: &'static [Overload],
) -> Spec {
    Spec {
        name,
        func,
        style,
        overloads,
    }
}

const TS_GETTER: &[Overload] = &[(&[T::Timestamp], T::Int)];
const TS_OR_DURATION_GETTER: &[Overload] = &[(&[T::Timestamp], T::Int), (&[T::Duration], T::Int)];
const STR_PRED: &[Overload] = &[(&[T::String, T::String], T::Bool)];
const STR_MAP: &[Overload] = &[(&[T::String], T::String)];

/// Every function, by name.
pub(crate) static SPECS: &[Spec] = &[
    spec(
        "size",
        Func::Size,
        Style::Both,
        &[
            (&[T::String], T::Int),
            (&[T::List], T::Int),
            (&[T::Map], T::Int),
        ],
    ),
    spec("contains", Func::Contains, Style::Method, STR_PRED),
    spec("startsWith", Func::StartsWith, Style::Method, STR_PRED),
    spec("endsWith", Func::EndsWith, Style::Method, STR_PRED),
    spec("matches", Func::Matches, Style::Both, STR_PRED),
    spec("lowerAscii", Func::LowerAscii, Style::Method, STR_MAP),
    spec("upperAscii", Func::UpperAscii, Style::Method, STR_MAP),
    spec("trim", Func::Trim, Style::Method, STR_MAP),
    spec(
        "substring",
        Func::Substring,
        Style::Method,
        &[
            (&[T::String, T::Int], T::String),
            (&[T::String, T::Int, T::Int], T::String),
        ],
    ),
    spec(
        "indexOf",
        Func::IndexOf,
        Style::Method,
        &[
            (&[T::String, T::String], T::Int),
            (&[T::String, T::String, T::Int], T::Int),
        ],
    ),
    spec(
        "replace",
        Func::Replace,
        Style::Method,
        &[
            (&[T::String, T::String, T::String], T::String),
            (&[T::String, T::String, T::String, T::Int], T::String),
        ],
    ),
    spec(
        "split",
        Func::Split,
        Style::Method,
        &[
            (&[T::String, T::String], T::List),
            (&[T::String, T::String, T::Int], T::List),
        ],
    ),
    spec(
        "join",
        Func::Join,
        Style::Method,
        &[(&[T::List], T::String), (&[T::List, T::String], T::String)],
    ),
    spec(
        "with",
        Func::With,
        Style::Method,
        &[(&[T::Map, T::Dyn, T::Dyn], T::Map)],
    ),
    spec(
        "without",
        Func::Without,
        Style::Method,
        &[(&[T::Map, T::Dyn], T::Map)],
    ),
    spec(
        "int",
        Func::Int,
        Style::Global,
        &[
            (&[T::Int], T::Int),
            (&[T::Double], T::Int),
            (&[T::String], T::Int),
            (&[T::Timestamp], T::Int),
        ],
    ),
    spec(
        "double",
        Func::Double,
        Style::Global,
        &[
            (&[T::Double], T::Double),
            (&[T::Int], T::Double),
            (&[T::String], T::Double),
        ],
    ),
    spec(
        "string",
        Func::String,
        Style::Global,
        &[
            (&[T::String], T::String),
            (&[T::Int], T::String),
            (&[T::Double], T::String),
            (&[T::Bool], T::String),
            (&[T::Null], T::String),
            (&[T::Timestamp], T::String),
            (&[T::Duration], T::String),
        ],
    ),
    spec(
        "bool",
        Func::Bool,
        Style::Global,
        &[(&[T::Bool], T::Bool), (&[T::String], T::Bool)],
    ),
    spec(
        "timestamp",
        Func::Timestamp,
        Style::Global,
        &[
            (&[T::String], T::Timestamp),
            (&[T::Timestamp], T::Timestamp),
            (&[T::Int], T::Timestamp),
        ],
    ),
    spec(
        "duration",
        Func::Duration,
        Style::Global,
        &[(&[T::String], T::Duration), (&[T::Duration], T::Duration)],
    ),
    spec(
        "timestamp_ms",
        Func::TimestampMs,
        Style::Global,
        &[(&[T::Int], T::Timestamp)],
    ),
    spec(
        "getFullYear",
        Func::Get(Field::FullYear),
        Style::Method,
        TS_GETTER,
    ),
    spec(
        "getMonth",
        Func::Get(Field::Month),
        Style::Method,
        TS_GETTER,
    ),
    spec("getDate", Func::Get(Field::Date), Style::Method, TS_GETTER),
    spec(
        "getDayOfMonth",
        Func::Get(Field::DayOfMonth),
        Style::Method,
        TS_GETTER,
    ),
    spec(
        "getDayOfYear",
        Func::Get(Field::DayOfYear),
        Style::Method,
        TS_GETTER,
    ),
    spec(
        "getDayOfWeek",
        Func::Get(Field::DayOfWeek),
        Style::Method,
        TS_GETTER,
    ),
    spec(
        "getHours",
        Func::Get(Field::Hours),
        Style::Method,
        TS_OR_DURATION_GETTER,
    ),
    spec(
        "getMinutes",
        Func::Get(Field::Minutes),
        Style::Method,
        TS_OR_DURATION_GETTER,
    ),
    spec(
        "getSeconds",
        Func::Get(Field::Seconds),
        Style::Method,
        TS_OR_DURATION_GETTER,
    ),
    spec(
        "getMilliseconds",
        Func::Get(Field::Milliseconds),
        Style::Method,
        TS_OR_DURATION_GETTER,
    ),
];

/// Names of the macros, which the checker expands.
pub(crate) const MACROS: &[&str] = &["has", "all", "exists", "exists_one", "map", "filter"];

pub(crate) fn lookup(name: &str) -> Option<&'static Spec> {
    SPECS.iter().find(|s| s.name == name)
}

/// `(int, string)`
pub(crate) fn type_list(types: impl IntoIterator<Item = T>) -> String {
    let names: Vec<&str> = types.into_iter().map(T::name).collect();
    format!("({})", names.join(", "))
}

/// Only on failure: finding the name is a search of [`SPECS`].
#[cold]
#[inline(never)]
fn no_overload(f: Func, args: &[Val<'_>]) -> String {
    format!(
        "no overload of '{}' for {}",
        func_name(f),
        type_list(args.iter().map(Val::type_of))
    )
}

fn func_name(f: Func) -> &'static str {
    SPECS.iter().find(|s| s.func == f).map_or("?", |s| s.name)
}

/// A substring of a string value, borrowed when the value is.
fn sub_str<'a>(s: Cow<'a, str>, f: impl FnOnce(&str) -> &str) -> Cow<'a, str> {
    match s {
        Cow::Borrowed(b) => Cow::Borrowed(f(b)),
        Cow::Owned(mut o) => {
            // In place: no new allocation.
            let part = f(&o);
            let start = part.as_ptr() as usize - o.as_ptr() as usize;
            let end = start + part.len();
            o.truncate(end);
            o.drain(..start);
            Cow::Owned(o)
        }
    }
}

/// Byte offset of the `i`-th character (`i` may be the length).
fn char_offset(s: &str, i: i64, what: &str) -> Result<usize, String> {
    let n = usize::try_from(i).map_err(|_| format!("{what}: negative index {i}"))?;
    if n == 0 {
        return Ok(0);
    }
    // hot path: before a byte that follows only ASCII, characters are bytes.
    if s.as_bytes().get(..n).is_some_and(<[u8]>::is_ascii) {
        return Ok(n);
    }
    match s.char_indices().nth(n) {
        Some((b, _)) => Ok(b),
        None if s.chars().count() == n => Ok(s.len()),
        None => Err(format!(
            "{what}: index {i} is out of range for a string of {} characters",
            s.chars().count()
        )),
    }
}

pub(crate) fn check_built(len: usize, what: &str) -> Result<(), String> {
    if len > MAX_BUILT {
        return Err(format!("{what}: result too large ({len} > {MAX_BUILT})"));
    }
    Ok(())
}

/// Calls `f` on evaluated arguments (the receiver first). `args` is consumed.
pub(crate) fn call<'a>(f: Func, args: &mut [Val<'a>]) -> Result<Val<'a>, String> {
    use Val::*;
    let args_ref: &[Val<'a>] = args;
    let result = match (f, args_ref) {
        (Func::Size, [Str(s)]) => Int(s.chars().count() as i64),
        (Func::Size, [List(l)]) => Int(l.len() as i64),
        (Func::Size, [Map(m)]) => Int(m.len() as i64),
        (Func::Contains, [Str(s), Str(p)]) => Bool(s.contains(p.as_ref())),
        (Func::StartsWith, [Str(s), Str(p)]) => Bool(s.starts_with(p.as_ref())),
        (Func::EndsWith, [Str(s), Str(p)]) => Bool(s.ends_with(p.as_ref())),
        (Func::Matches, [Str(s), Str(p)]) => Bool(compile_regex(p)?.is_match(s)),
        (Func::LowerAscii, [Str(s)]) if s.bytes().any(|b| b.is_ascii_uppercase()) => {
            Str(Cow::Owned(s.to_ascii_lowercase()))
        }
        (Func::UpperAscii, [Str(s)]) if s.bytes().any(|b| b.is_ascii_lowercase()) => {
            Str(Cow::Owned(s.to_ascii_uppercase()))
        }
        (Func::LowerAscii | Func::UpperAscii, [Str(_)]) => std::mem::take(&mut args[0]),
        (Func::Trim, [Str(_)]) => {
            let Str(s) = std::mem::take(&mut args[0]) else {
                unreachable!()
            };
            Str(sub_str(s, str::trim))
        }
        (Func::Substring, [Str(s), Int(a), rest @ ..]) => {
            let start = char_offset(s, *a, "substring")?;
            let end = match rest {
                [] => s.len(),
                [Int(b)] if b < a => {
                    return Err(format!("substring: end {b} is before start {a}"));
                }
                [Int(b)] => char_offset(s, *b, "substring")?,
                _ => return Err(no_overload(f, args)),
            };
            let Str(s) = std::mem::take(&mut args[0]) else {
                unreachable!()
            };
            Str(sub_str(s, |s| &s[start..end]))
        }
        (Func::IndexOf, [Str(s), Str(p), rest @ ..]) => {
            let from_char = match rest {
                [] => 0,
                [Int(i)] => *i,
                _ => return Err(no_overload(f, args)),
            };
            let from = char_offset(s, from_char, "indexOf")?;
            match s[from..].find(p.as_ref()) {
                Some(b) => Int(from_char + s[from..from + b].chars().count() as i64),
                None => Int(-1),
            }
        }
        (Func::Replace, [Str(s), Str(old), Str(new), rest @ ..]) => {
            let limit = match rest {
                [] => usize::MAX,
                [Int(n)] => usize::try_from(*n).unwrap_or(usize::MAX),
                _ => return Err(no_overload(f, args)),
            };
            let found = if old.is_empty() {
                s.chars().count() + 1
            } else {
                s.matches(old.as_ref()).count()
            };
            let n = found.min(limit);
            let len = (s.len() - n * old.len()).saturating_add(n.saturating_mul(new.len()));
            check_built(len, "replace")?;
            if n == 0 {
                std::mem::take(&mut args[0])
            } else {
                Str(Cow::Owned(s.replacen(old.as_ref(), new, n)))
            }
        }
        (Func::Split, [Str(_), Str(sep), rest @ ..]) => {
            let limit = match rest {
                [] => usize::MAX,
                [Int(n)] if *n < 0 => usize::MAX,
                [Int(n)] => usize::try_from(*n).unwrap_or(usize::MAX),
                _ => return Err(no_overload(f, args)),
            };
            let sep = sep.to_string();
            let Str(s) = std::mem::take(&mut args[0]) else {
                unreachable!()
            };
            Val::list(split(s, &sep, limit))
        }
        (Func::With, [Map(m), k, v]) => {
            if !matches!(k, Str(_) | Int(_) | Bool(_)) {
                return Err(format!(
                    "with: a map key is a string, int or bool, not {}",
                    k.type_of()
                ));
            }
            let mut entries: Vec<(Val<'a>, Val<'a>)> = Vec::with_capacity(m.len() + 1);
            let mut replaced = false;
            for (ek, ev) in m.iter() {
                if ek.cel_eq(k) {
                    entries.push((ek.clone(), v.clone()));
                    replaced = true;
                } else {
                    entries.push((ek.clone(), ev.clone()));
                }
            }
            if !replaced {
                if entries.len() >= MAX_BUILT {
                    return Err(format!("with: a map may hold at most {MAX_BUILT} entries"));
                }
                entries.push((k.clone(), v.clone()));
            }
            Map(Arc::new(entries))
        }
        (Func::Without, [Map(m), k]) => Map(Arc::new(
            m.iter().filter(|(ek, _)| !ek.cel_eq(k)).cloned().collect(),
        )),
        (Func::Join, [List(items), rest @ ..]) => {
            let sep = match rest {
                [] => "",
                [Str(sep)] => sep.as_ref(),
                _ => return Err(no_overload(f, args)),
            };
            let mut out = String::new();
            for (i, v) in items.iter().enumerate() {
                let Str(s) = v else {
                    return Err(format!("join: element {i} is {}, not string", v.type_of()));
                };
                if i > 0 {
                    out.push_str(sep);
                }
                out.push_str(s);
                check_built(out.len(), "join")?;
            }
            Str(Cow::Owned(out))
        }
        (Func::Int, [Int(_)]) => std::mem::take(&mut args[0]),
        (Func::Int, [Double(d)]) => Int(double_to_int(*d)?),
        (Func::Int, [Str(s)]) => Int(s
            .parse()
            .map_err(|_| format!("int: cannot convert '{s}' to an integer"))?),
        (Func::Int, [Timestamp(t)]) => Int(t.div_euclid(1_000_000_000)),
        (Func::Double, [Double(_)]) => std::mem::take(&mut args[0]),
        (Func::Double, [Int(i)]) => Double(*i as f64),
        (Func::Double, [Str(s)]) => Double(
            s.parse()
                .map_err(|_| format!("double: cannot convert '{s}' to a double"))?,
        ),
        (Func::String, [Str(_)]) => std::mem::take(&mut args[0]),
        (Func::String, [v]) => {
            let mut out = String::with_capacity(32);
            if !v.write_text(&mut out) {
                return Err(no_overload(f, args));
            }
            Str(Cow::Owned(out))
        }
        (Func::Bool, [Bool(b)]) => Bool(*b),
        (Func::Bool, [Str(s)]) => Bool(match s.as_ref() {
            "1" | "t" | "T" | "true" | "TRUE" | "True" => true,
            "0" | "f" | "F" | "false" | "FALSE" | "False" => false,
            _ => return Err(format!("bool: cannot convert '{s}' to a bool")),
        }),
        (Func::Timestamp, [Str(s)]) => Timestamp(time::parse_timestamp(s)?),
        (Func::Timestamp, [Timestamp(t)]) => Timestamp(*t),
        (Func::Timestamp, [Int(secs)]) => Timestamp(
            secs.checked_mul(1_000_000_000)
                .ok_or_else(|| format!("timestamp: {secs} seconds is out of range"))?,
        ),
        (Func::Duration, [Str(s)]) => Duration(time::parse_duration(s)?),
        (Func::Duration, [Duration(d)]) => Duration(*d),
        (Func::TimestampMs, [Int(ms)]) => Timestamp(
            ms.checked_mul(1_000_000)
                .ok_or_else(|| format!("timestamp_ms: {ms} ms is out of range"))?,
        ),
        (Func::Get(field), [Timestamp(t)]) => Int(time::timestamp_field(*t, field)),
        (Func::Get(field), [Duration(d)]) => Int(match field {
            Field::Hours => d / 3_600_000_000_000,
            Field::Minutes => d / 60_000_000_000,
            Field::Seconds => d / 1_000_000_000,
            Field::Milliseconds => d / 1_000_000,
            _ => return Err(no_overload(f, args)),
        }),
        _ => return Err(no_overload(f, args)),
    };
    Ok(result)
}

fn split<'a>(s: Cow<'a, str>, sep: &str, limit: usize) -> Vec<Val<'a>> {
    if limit == 0 {
        return Vec::new();
    }
    let parts: Vec<(usize, usize)> = if sep.is_empty() {
        // Like Go: one element per character, the last holding the rest.
        let mut v: Vec<(usize, usize)> = s
            .char_indices()
            .map(|(i, c)| (i, i + c.len_utf8()))
            .collect();
        if v.len() > limit {
            let start = v[limit - 1].0;
            v.truncate(limit - 1);
            v.push((start, s.len()));
        }
        v
    } else {
        let mut v = Vec::new();
        let mut from = 0;
        while v.len() + 1 < limit {
            match s[from..].find(sep) {
                Some(i) => {
                    v.push((from, from + i));
                    from += i + sep.len();
                }
                None => break,
            }
        }
        v.push((from, s.len()));
        v
    };
    match s {
        Cow::Borrowed(b) => parts.into_iter().map(|(a, e)| Val::str(&b[a..e])).collect(),
        Cow::Owned(o) => parts
            .into_iter()
            .map(|(a, e)| Val::Str(Cow::Owned(o[a..e].to_string())))
            .collect(),
    }
}

/// Truncates toward zero; NaN and values beyond i64 are errors.
pub(crate) fn double_to_int(d: f64) -> Result<i64, String> {
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    if !(-TWO_63..TWO_63).contains(&d) {
        return Err(format!("int: {d} is out of the range of int"));
    }
    Ok(d as i64)
}

/// Compiles a regular expression (RE2 syntax) with a bounded size.
pub(crate) fn compile_regex(pattern: &str) -> Result<regex::Regex, String> {
    regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .dfa_size_limit(1 << 20)
        .build()
        .map_err(|e| match e {
            regex::Error::Syntax(s) => {
                format!("invalid regular expression '{pattern}': {}", s.trim())
            }
            regex::Error::CompiledTooBig(_) => {
                format!("regular expression '{pattern}' is too large")
            }
            other => format!("invalid regular expression '{pattern}': {other}"),
        })
}

/// A new list from evaluated items (checked against [`MAX_BUILT`]).
pub(crate) fn concat_lists<'a>(a: &[Val<'a>], b: &[Val<'a>]) -> Result<Val<'a>, String> {
    check_built(a.len() + b.len(), "'+'")?;
    let mut out = Vec::with_capacity(a.len() + b.len());
    out.extend_from_slice(a);
    out.extend_from_slice(b);
    Ok(Val::List(Arc::new(out)))
}
