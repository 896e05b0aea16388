//! Runtime values, static types, CEL equality and ordering, JSON rendering.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use super::time;
use crate::batch::{write_int, write_json_str};

/// A static type, as far as the checker knows it. Lists and maps are not
/// parameterised: their elements are `Dyn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Type {
    /// Unknown until evaluation (checked then).
    Dyn,
    /// `null`.
    Null,
    /// `bool`.
    Bool,
    /// `int` (i64).
    Int,
    /// `double` (f64).
    Double,
    /// `string`.
    String,
    /// `timestamp`.
    Timestamp,
    /// `duration`.
    Duration,
    /// `list`.
    List,
    /// `map`.
    Map,
}

impl Type {
    /// CEL's name of the type.
    pub fn name(self) -> &'static str {
        match self {
            Type::Dyn => "dyn",
            Type::Null => "null",
            Type::Bool => "bool",
            Type::Int => "int",
            Type::Double => "double",
            Type::String => "string",
            Type::Timestamp => "timestamp",
            Type::Duration => "duration",
            Type::List => "list",
            Type::Map => "map",
        }
    }

    /// Whether a value of type `self` may be passed where `want` is expected.
    pub(crate) fn fits(self, want: Type) -> bool {
        self == want || self == Type::Dyn || want == Type::Dyn
    }
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A CEL value. Strings borrow from the [`Env`](super::Env) or the program where they
/// can, and own what was computed. There is no `uint`: integers are `i64`.
///
/// `PartialEq` is structural (`Int(1) != Double(1.0)`); CEL's `==` is
/// [`Val::cel_eq`].
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Val<'a> {
    /// `null`.
    #[default]
    Null,
    /// `bool`.
    Bool(bool),
    /// `int`.
    Int(i64),
    /// `double`.
    Double(f64),
    /// `string`.
    Str(Cow<'a, str>),
    /// `list`.
    List(Arc<Vec<Val<'a>>>),
    /// `map`, in insertion order; keys are strings, ints or bools, each at most once.
    Map(Arc<Vec<(Val<'a>, Val<'a>)>>),
    /// `timestamp`: nanoseconds since 1970-01-01T00:00:00Z (so 1677-09-21 to 2262-04-11).
    Timestamp(i64),
    /// `duration` in nanoseconds (about ±292 years).
    Duration(i64),
}

impl<'a> Val<'a> {
    /// A borrowed string value.
    pub fn str(s: &'a str) -> Val<'a> {
        Val::Str(Cow::Borrowed(s))
    }

    /// An owned string value.
    pub fn string(s: impl Into<String>) -> Val<'static> {
        Val::Str(Cow::Owned(s.into()))
    }

    /// A list value.
    pub fn list(items: Vec<Val<'a>>) -> Val<'a> {
        Val::List(Arc::new(items))
    }

    /// The value's type.
    pub fn type_of(&self) -> Type {
        match self {
            Val::Null => Type::Null,
            Val::Bool(_) => Type::Bool,
            Val::Int(_) => Type::Int,
            Val::Double(_) => Type::Double,
            Val::Str(_) => Type::String,
            Val::List(_) => Type::List,
            Val::Map(_) => Type::Map,
            Val::Timestamp(_) => Type::Timestamp,
            Val::Duration(_) => Type::Duration,
        }
    }

    /// The same value, borrowing this one's string instead of copying it.
    #[inline]
    pub fn reborrow(&self) -> Val<'_> {
        match self {
            Val::Str(s) => Val::Str(Cow::Borrowed(s)),
            Val::Null => Val::Null,
            Val::Bool(b) => Val::Bool(*b),
            Val::Int(i) => Val::Int(*i),
            Val::Double(d) => Val::Double(*d),
            Val::List(l) => Val::List(l.clone()),
            Val::Map(m) => Val::Map(m.clone()),
            Val::Timestamp(t) => Val::Timestamp(*t),
            Val::Duration(d) => Val::Duration(*d),
        }
    }

    /// A copy that borrows nothing.
    pub fn into_owned(self) -> Val<'static> {
        match self {
            Val::Str(s) => Val::Str(Cow::Owned(s.into_owned())),
            Val::Null => Val::Null,
            Val::Bool(b) => Val::Bool(b),
            Val::Int(i) => Val::Int(i),
            Val::Double(d) => Val::Double(d),
            Val::List(l) => Val::List(Arc::new(l.iter().map(|v| v.clone().into_owned()).collect())),
            Val::Map(m) => Val::Map(Arc::new(
                m.iter()
                    .map(|(k, v)| (k.clone().into_owned(), v.clone().into_owned()))
                    .collect(),
            )),
            Val::Timestamp(t) => Val::Timestamp(t),
            Val::Duration(d) => Val::Duration(d),
        }
    }

    /// The boolean, if this is one.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Val::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The integer, if this is one.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Val::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Val::Str(s) => Some(s),
            _ => None,
        }
    }

    /// CEL equality: values of different types are unequal, except numbers, which
    /// compare by value (`1 == 1.0`); NaN equals nothing. Lists and maps compare
    /// element by element.
    pub fn cel_eq(&self, other: &Val<'_>) -> bool {
        match (self, other) {
            (Val::Null, Val::Null) => true,
            (Val::Bool(a), Val::Bool(b)) => a == b,
            (Val::Str(a), Val::Str(b)) => a == b,
            (Val::Timestamp(a), Val::Timestamp(b)) | (Val::Duration(a), Val::Duration(b)) => a == b,
            (Val::Int(_) | Val::Double(_), Val::Int(_) | Val::Double(_)) => {
                num_cmp(self, other) == Some(Ordering::Equal)
            }
            (Val::List(a), Val::List(b)) => {
                a.len() == b.len() && a.iter().zip(b.iter()).all(|(x, y)| x.cel_eq(y))
            }
            (Val::Map(a), Val::Map(b)) => {
                a.len() == b.len()
                    && a.iter()
                        .all(|(k, v)| map_get(b, k).is_some_and(|w| v.cel_eq(w)))
            }
            _ => false,
        }
    }

    /// CEL ordering: `Err` when the two cannot be compared (different types, lists,
    /// maps, null), `Ok(None)` when a NaN is involved (every comparison is false).
    pub(crate) fn cel_cmp(&self, other: &Val<'_>) -> Result<Option<Ordering>, ()> {
        Ok(match (self, other) {
            (Val::Bool(a), Val::Bool(b)) => Some(a.cmp(b)),
            (Val::Str(a), Val::Str(b)) => Some(a.as_ref().cmp(b.as_ref())),
            (Val::Timestamp(a), Val::Timestamp(b)) | (Val::Duration(a), Val::Duration(b)) => {
                Some(a.cmp(b))
            }
            (Val::Int(_) | Val::Double(_), Val::Int(_) | Val::Double(_)) => num_cmp(self, other),
            _ => return Err(()),
        })
    }

    /// Writes the value as JSON: strings escaped, timestamps as RFC 3339 strings,
    /// durations as CEL strings (`"1.5s"`), map keys as strings, non-finite doubles as
    /// `null`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            Val::Null => out.extend_from_slice(b"null"),
            Val::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
            Val::Int(i) => write_int(out, *i),
            Val::Double(d) if d.is_finite() => {
                serde_json::to_writer(&mut *out, d).expect("writing to a Vec cannot fail")
            }
            Val::Double(_) => out.extend_from_slice(b"null"),
            Val::Str(s) => write_json_str(out, s.as_bytes()),
            Val::Timestamp(t) => {
                let (text, len) = super::time::timestamp_text(*t);
                out.push(b'"');
                out.extend_from_slice(&text[..len]);
                out.push(b'"');
            }
            Val::Duration(_) => {
                let mut s = String::new();
                self.write_text(&mut s);
                write_json_str(out, s.as_bytes());
            }
            Val::List(items) => {
                out.push(b'[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    v.write_json(out);
                }
                out.push(b']');
            }
            Val::Map(entries) => {
                out.push(b'{');
                for (i, (k, v)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    match k {
                        Val::Str(s) => write_json_str(out, s.as_bytes()),
                        other => {
                            let mut s = String::new();
                            other.write_text(&mut s);
                            write_json_str(out, s.as_bytes());
                        }
                    }
                    out.push(b':');
                    v.write_json(out);
                }
                out.push(b'}');
            }
        }
    }

    /// Appends what `string(v)` gives for a scalar; false (nothing written) for lists and maps.
    pub(crate) fn write_text(&self, out: &mut String) -> bool {
        use std::fmt::Write;
        match self {
            Val::Null => out.push_str("null"),
            Val::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Val::Int(i) => out.push_str(itoa::Buffer::new().format(*i)),
            Val::Double(d) => {
                let _ = write!(out, "{d}");
            }
            Val::Str(s) => out.push_str(s),
            Val::Timestamp(t) => time::format_timestamp(*t, out),
            Val::Duration(d) => time::format_duration(*d, out),
            Val::List(_) | Val::Map(_) => return false,
        }
        true
    }
}

impl fmt::Display for Val<'_> {
    /// The JSON form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = Vec::new();
        self.write_json(&mut out);
        f.write_str(&String::from_utf8_lossy(&out))
    }
}

/// The value under `key`, by CEL equality.
pub(crate) fn map_get<'m, 'a>(
    entries: &'m [(Val<'a>, Val<'a>)],
    key: &Val<'_>,
) -> Option<&'m Val<'a>> {
    entries.iter().find(|(k, _)| k.cel_eq(key)).map(|(_, v)| v)
}

/// Exact comparison of two numbers, ints and doubles mixed (no rounding through f64).
fn num_cmp(a: &Val<'_>, b: &Val<'_>) -> Option<Ordering> {
    match (a, b) {
        (Val::Int(x), Val::Int(y)) => Some(x.cmp(y)),
        (Val::Double(x), Val::Double(y)) => x.partial_cmp(y),
        (Val::Int(x), Val::Double(y)) => int_double_cmp(*x, *y),
        (Val::Double(x), Val::Int(y)) => int_double_cmp(*y, *x).map(Ordering::reverse),
        _ => None,
    }
}

/// Compares an i64 with an f64 exactly.
fn int_double_cmp(i: i64, d: f64) -> Option<Ordering> {
    if d.is_nan() {
        return None;
    }
    // 2^63 is exactly representable; every i64 is below it and at or above -2^63.
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    if d >= TWO_63 {
        return Some(Ordering::Less);
    }
    if d < -TWO_63 {
        return Some(Ordering::Greater);
    }
    let whole = d.trunc();
    // In range, so the cast is exact.
    let w = whole as i64;
    Some(i.cmp(&w).then_with(|| {
        let frac = d - whole;
        0.0f64.partial_cmp(&frac).unwrap_or(Ordering::Equal)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int_double_comparison_is_exact() {
        assert_eq!(int_double_cmp(1, 1.0), Some(Ordering::Equal));
        assert_eq!(int_double_cmp(1, 1.5), Some(Ordering::Less));
        assert_eq!(int_double_cmp(-1, -1.5), Some(Ordering::Greater));
        assert_eq!(
            int_double_cmp(i64::MAX, 9_223_372_036_854_775_808.0),
            Some(Ordering::Less)
        );
        assert_eq!(
            int_double_cmp(i64::MIN, -9_223_372_036_854_775_808.0),
            Some(Ordering::Equal)
        );
        assert_eq!(int_double_cmp(0, f64::NAN), None);
        assert_eq!(
            int_double_cmp(0, f64::NEG_INFINITY),
            Some(Ordering::Greater)
        );
    }
}
