//! [`Cell`]: a value as rows and states keep it (a projection row's fields, an
//! aggregate's state), compact and mostly without a pointer to follow.
//!
//! A [`Val`] is 32 bytes and each of its strings is a heap allocation of its own, so
//! reading a row's strings (comparing a field, evaluating `row.x`, rendering the row)
//! touches as many cold cache lines as the row has strings. A cell is 24 bytes: scalars
//! and strings of up to [`Cell::INLINE`] bytes are inline; longer strings, lists and maps are
//! behind one pointer. Reading a cell as a [`Val`] ([`Cell::get`]) borrows its string:
//! no allocation, no UTF-8 check.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use super::value::{Type, Val};

/// [`Cell::INLINE`].
const INLINE: usize = 22;

/// A stored value: converts to and from [`Val`] (equal to it as [`Val`]'s `PartialEq`
/// says, rendered as JSON byte for byte as it is).
///
/// Two cells are equal exactly when the values they hold are: a string is inline if and
/// only if it is at most [`Cell::INLINE`] bytes, and the unused inline bytes are zero.
#[derive(Clone, PartialEq, Default)]
pub struct Cell(Repr);

#[derive(Clone, PartialEq, Default)]
enum Repr {
    #[default]
    Null,
    Bool(bool),
    Int(i64),
    Double(f64),
    Timestamp(i64),
    Duration(i64),
    /// A string of `len` (at most [`INLINE`]) bytes: `bytes[..len]`, the rest zero.
    /// Only [`Cell::str`] makes one, from a whole `&str`: the bytes are UTF-8.
    Short {
        len: u8,
        bytes: [u8; INLINE],
    },
    /// A string longer than [`INLINE`] bytes.
    Long(Box<str>),
    List(Arc<Vec<Val<'static>>>),
    Map(Arc<Vec<(Val<'static>, Val<'static>)>>),
}

// A row's fields are an array of cells: keep them at three words.
const _: () = assert!(std::mem::size_of::<Cell>() == 24);
const _: () = assert!(std::mem::size_of::<Option<Cell>>() == 24);

impl Cell {
    /// The longest string (in bytes) a cell keeps inline.
    pub const INLINE: usize = INLINE;

    /// `null`.
    pub const NULL: Cell = Cell(Repr::Null);

    /// A string cell: inline (no allocation) when `s` is at most [`INLINE`] bytes.
    #[inline]
    pub fn str(s: &str) -> Cell {
        if s.len() <= INLINE {
            let mut bytes = [0u8; INLINE];
            bytes[..s.len()].copy_from_slice(s.as_bytes());
            Cell(Repr::Short {
                len: s.len() as u8,
                bytes,
            })
        } else {
            Cell(Repr::Long(s.into()))
        }
    }

    /// A string cell from an owned string (kept as it is when it does not fit inline).
    #[inline]
    fn string(s: String) -> Cell {
        if s.len() <= INLINE {
            Cell::str(&s)
        } else {
            Cell(Repr::Long(s.into_boxed_str()))
        }
    }

    /// The value, borrowing the cell's string (no allocation; a list or map is shared).
    #[inline]
    pub fn get(&self) -> Val<'_> {
        match &self.0 {
            Repr::Short { .. } | Repr::Long(_) => Val::Str(Cow::Borrowed(self.str_ref())),
            Repr::Null => Val::Null,
            Repr::Bool(b) => Val::Bool(*b),
            Repr::Int(i) => Val::Int(*i),
            Repr::Double(d) => Val::Double(*d),
            Repr::Timestamp(t) => Val::Timestamp(*t),
            Repr::Duration(d) => Val::Duration(*d),
            Repr::List(l) => Val::List(l.clone()),
            Repr::Map(m) => Val::Map(m.clone()),
        }
    }

    /// The string of a `Short` or `Long` cell (`""` for any other).
    #[inline]
    fn str_ref(&self) -> &str {
        match &self.0 {
            Repr::Short { len, bytes } => {
                let b = &bytes[..*len as usize];
                debug_assert!(std::str::from_utf8(b).is_ok());
                // SAFETY: only `Cell::str` makes a `Short`, copying all the bytes of a
                // `&str` (which is UTF-8) into `bytes[..len]`, and nothing changes them
                // afterwards (the field is private to this module): `b` is exactly those
                // bytes. Tested by `strings_round_trip` (boundary lengths, multi-byte
                // characters at the inline limit).
                unsafe { std::str::from_utf8_unchecked(b) }
            }
            Repr::Long(s) => s,
            _ => "",
        }
    }

    /// The string, if this is one.
    #[inline]
    pub fn as_str(&self) -> Option<&str> {
        match &self.0 {
            Repr::Short { .. } | Repr::Long(_) => Some(self.str_ref()),
            _ => None,
        }
    }

    /// The integer, if this is one.
    #[inline]
    pub fn as_int(&self) -> Option<i64> {
        match self.0 {
            Repr::Int(i) => Some(i),
            _ => None,
        }
    }

    /// The value's type.
    pub fn type_of(&self) -> Type {
        match self.0 {
            Repr::Null => Type::Null,
            Repr::Bool(_) => Type::Bool,
            Repr::Int(_) => Type::Int,
            Repr::Double(_) => Type::Double,
            Repr::Timestamp(_) => Type::Timestamp,
            Repr::Duration(_) => Type::Duration,
            Repr::Short { .. } | Repr::Long(_) => Type::String,
            Repr::List(_) => Type::List,
            Repr::Map(_) => Type::Map,
        }
    }

    /// Whether the cell holds `v`, as `Val`'s `PartialEq` (structural: `Int(1)` is not
    /// `Double(1.0)`, NaN equals nothing).
    #[inline]
    pub fn eq_val(&self, v: &Val<'_>) -> bool {
        match (&self.0, v) {
            (Repr::Short { .. } | Repr::Long(_), Val::Str(s)) => self.str_ref() == s.as_ref(),
            (Repr::Null, Val::Null) => true,
            (Repr::Bool(a), Val::Bool(b)) => a == b,
            (Repr::Int(a), Val::Int(b))
            | (Repr::Timestamp(a), Val::Timestamp(b))
            | (Repr::Duration(a), Val::Duration(b)) => a == b,
            (Repr::Double(a), Val::Double(b)) => a == b,
            (Repr::List(a), Val::List(b)) => a[..] == b[..],
            (Repr::Map(a), Val::Map(b)) => a[..] == b[..],
            _ => false,
        }
    }

    /// Writes the value as JSON, byte for byte as [`Val::write_json`] does.
    #[inline]
    pub fn write_json(&self, out: &mut Vec<u8>) {
        match &self.0 {
            Repr::Short { .. } | Repr::Long(_) => {
                crate::batch::write_json_str(out, self.str_ref().as_bytes())
            }
            _ => self.get().write_json(out),
        }
    }
}

impl From<Val<'_>> for Cell {
    /// The value as a cell: a string that fits inline is copied (an owned one freed), a
    /// longer owned string is kept, a borrowed one copied; lists and maps are copied so
    /// that they borrow nothing, as [`Val::into_owned`] does.
    #[inline]
    fn from(v: Val<'_>) -> Cell {
        Cell(match v {
            Val::Str(Cow::Borrowed(s)) => return Cell::str(s),
            Val::Str(Cow::Owned(s)) => return Cell::string(s),
            Val::Null => Repr::Null,
            Val::Bool(b) => Repr::Bool(b),
            Val::Int(i) => Repr::Int(i),
            Val::Double(d) => Repr::Double(d),
            Val::Timestamp(t) => Repr::Timestamp(t),
            Val::Duration(d) => Repr::Duration(d),
            l @ Val::List(_) => match l.into_owned() {
                Val::List(l) => Repr::List(l),
                _ => unreachable!("into_owned keeps the variant"),
            },
            m @ Val::Map(_) => match m.into_owned() {
                Val::Map(m) => Repr::Map(m),
                _ => unreachable!("into_owned keeps the variant"),
            },
        })
    }
}

impl PartialEq<Val<'_>> for Cell {
    fn eq(&self, other: &Val<'_>) -> bool {
        self.eq_val(other)
    }
}

impl PartialEq<Cell> for Val<'_> {
    fn eq(&self, other: &Cell) -> bool {
        other.eq_val(self)
    }
}

impl fmt::Debug for Cell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.get().fmt(f)
    }
}

impl fmt::Display for Cell {
    /// The JSON form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.get().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(v: &Val<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        v.write_json(&mut out);
        out
    }

    /// Every property a cell promises, for one value.
    fn check(v: Val<'static>) {
        let borrowed = Cell::from(v.reborrow());
        let owned = Cell::from(v.clone());
        for c in [&borrowed, &owned] {
            match v {
                Val::Double(d) if d.is_nan() => {
                    assert!(matches!(c.get(), Val::Double(e) if e.is_nan()))
                }
                _ => assert_eq!(c.get(), v, "{v:?}"),
            }
            assert_eq!(c.type_of(), v.type_of());
            let mut out = Vec::new();
            c.write_json(&mut out);
            assert_eq!(out, json(&v), "{v:?}");
            assert_eq!(c.to_string(), v.to_string());
            assert_eq!(format!("{c:?}"), format!("{v:?}"));
            // Equal to itself unless it is (or holds) a NaN, as a Val.
            assert_eq!(c.clone() == *c, v == v, "{v:?}");
            assert_eq!(c.eq_val(&v), v == v, "{v:?}");
            assert_eq!(*c == v, v == *c);
            assert_eq!(c.as_str(), v.as_str());
            assert_eq!(c.as_int(), v.as_int());
        }
        if v == v {
            assert_eq!(borrowed, owned);
            assert_eq!(Cell::from(borrowed.get()), borrowed.clone());
        }
    }

    #[test]
    fn a_cell_is_three_words_and_null_by_default() {
        assert_eq!(std::mem::size_of::<Cell>(), 24);
        assert_eq!(Cell::default(), Cell::NULL);
        assert_eq!(Cell::default().get(), Val::Null);
    }

    #[test]
    fn every_variant_round_trips() {
        let list = Val::list(vec![
            Val::Int(1),
            Val::string("a string longer than twenty-two bytes"),
            Val::str("b"),
        ]);
        let map = Val::Map(Arc::new(vec![
            (Val::str("k"), Val::Double(0.1)),
            (Val::Int(3), Val::Null),
            (Val::Bool(true), list.clone()),
        ]));
        for v in [
            Val::Null,
            Val::Bool(false),
            Val::Bool(true),
            Val::Int(0),
            Val::Int(i64::MIN),
            Val::Int(i64::MAX),
            Val::Double(1.5),
            Val::Double(-0.0),
            Val::Double(1e300),
            Val::Double(f64::NAN),
            Val::Double(f64::INFINITY),
            Val::Timestamp(0),
            Val::Timestamp(1_700_000_000_123_456_789),
            Val::Timestamp(i64::MIN),
            Val::Duration(-1_500_000_000),
            Val::Duration(0),
            list.clone(),
            Val::list(vec![]),
            map.clone(),
            Val::Map(Arc::new(vec![])),
        ] {
            check(v.into_owned());
        }
        // A list borrowing from elsewhere becomes a list that borrows nothing.
        let text = String::from("borrowed");
        let c = Cell::from(Val::list(vec![Val::str(&text)]));
        drop(text);
        assert_eq!(c.get(), Val::list(vec![Val::str("borrowed")]));
    }

    #[test]
    fn strings_round_trip() {
        let mut cases: Vec<String> = (0..=INLINE + 2).map(|n| "x".repeat(n)).collect();
        cases.extend([
            "é".repeat(11),                          // 22 bytes: inline
            format!("{}é", "x".repeat(INLINE - 2)),  // 22 bytes, ends in a 2-byte char
            format!("{}é", "x".repeat(INLINE - 1)),  // 23 bytes: boxed
            format!("{}€", "x".repeat(INLINE - 3)),  // 22 bytes, a 3-byte char last
            format!("{}😀", "x".repeat(INLINE - 3)), // 23 bytes, a 4-byte char last
            "😀".repeat(5),                          // 20 bytes
            "quo\"te\\ \n\t\u{1}".into(),
            "\u{7f}\u{80}\u{2028}".into(),
            "EUR".into(),
            "2026-05-01".into(),
            "a".repeat(1000),
        ]);
        for s in cases {
            check(Val::string(s.clone()));
            let c = Cell::str(&s);
            assert_eq!(c.as_str(), Some(s.as_str()));
            assert_eq!(c.get(), Val::str(&s));
            assert!(matches!(c.get(), Val::Str(Cow::Borrowed(_))));
            assert_eq!(matches!(c.0, Repr::Short { .. }), s.len() <= INLINE, "{s}");
            // However it was made, one string gives one cell.
            assert_eq!(Cell::from(Val::string(s.clone())), c);
            assert_eq!(Cell::from(Val::str(&s)), c);
        }
    }

    #[test]
    fn equality_is_vals() {
        let vals = [
            Val::Null,
            Val::Bool(true),
            Val::Int(1),
            Val::Double(1.0),
            Val::Timestamp(1),
            Val::Duration(1),
            Val::str(""),
            Val::str("1"),
            Val::str("open"),
            Val::str("opem"),
            Val::string("x".repeat(30)),
            Val::string("x".repeat(31)),
            Val::list(vec![Val::Int(1)]),
            Val::list(vec![Val::Double(1.0)]),
            Val::Map(Arc::new(vec![(Val::str("a"), Val::Int(1))])),
        ];
        for a in &vals {
            let c = Cell::from(a.clone());
            for b in &vals {
                assert_eq!(c.eq_val(b), a == b, "{a:?} vs {b:?}");
                assert_eq!(c == Cell::from(b.clone()), a == b, "{a:?} vs {b:?}");
            }
        }
        // Structural, like Val's: NaN is not equal to itself.
        assert!(!Cell::from(Val::Double(f64::NAN)).eq_val(&Val::Double(f64::NAN)));
    }

    #[test]
    fn cloning_a_short_string_copies_it_inline() {
        let c = Cell::str("EUR");
        let d = c.clone();
        assert!(matches!(d.0, Repr::Short { len: 3, .. }));
        assert_eq!(d.as_str(), Some("EUR"));
    }
}
