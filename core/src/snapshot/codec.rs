//! The byte encoding of a key's state inside a snapshot entry: small, explicit,
//! little-endian, versioned by the snapshot format. Stages use it through
//! [`crate::stage::Stage::encode_state`] / [`crate::stage::Stage::decode_state`].
//!
//! Decoding checks every length and tag: the bytes come from a file that passed its
//! checksum, but a bug or a foreign writer must give an error, never a panic.

use std::borrow::Cow;
use std::sync::Arc;

use crate::expr::{Cell, Val};

/// Nesting depth of lists and maps a decoder accepts.
const MAX_DEPTH: u32 = 64;

/// Appends primitives.
pub trait Put {
    /// One byte.
    fn put_u8(&mut self, v: u8);
    /// Little-endian u64.
    fn put_u64(&mut self, v: u64);
    /// Little-endian u32.
    fn put_u32(&mut self, v: u32);
    /// Little-endian i64.
    fn put_i64(&mut self, v: i64) {
        self.put_u64(v as u64);
    }
    /// f64 bits.
    fn put_f64(&mut self, v: f64) {
        self.put_u64(v.to_bits());
    }
    /// Length-prefixed bytes.
    fn put_bytes(&mut self, b: &[u8]);
}

impl Put for Vec<u8> {
    fn put_u8(&mut self, v: u8) {
        self.push(v);
    }
    fn put_u64(&mut self, v: u64) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_u32(&mut self, v: u32) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_bytes(&mut self, b: &[u8]) {
        self.put_u64(b.len() as u64);
        self.extend_from_slice(b);
    }
}

/// Reads primitives from the front of a slice.
#[derive(Debug)]
pub struct Take<'a>(pub &'a [u8]);

impl<'a> Take<'a> {
    fn bytes_n(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err(format!(
                "state bytes end inside {what} ({} bytes left, {n} needed)",
                self.0.len()
            ));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    /// One byte.
    pub fn u8(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.bytes_n(1, what)?[0])
    }

    /// Little-endian u32.
    pub fn u32(&mut self, what: &str) -> Result<u32, String> {
        let b = self.bytes_n(4, what)?;
        Ok(u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }

    /// Little-endian u64.
    pub fn u64(&mut self, what: &str) -> Result<u64, String> {
        let b = self.bytes_n(8, what)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    /// Little-endian i64.
    pub fn i64(&mut self, what: &str) -> Result<i64, String> {
        self.u64(what).map(|v| v as i64)
    }

    /// f64 bits.
    pub fn f64(&mut self, what: &str) -> Result<f64, String> {
        self.u64(what).map(f64::from_bits)
    }

    /// Length-prefixed bytes.
    pub fn bytes(&mut self, what: &str) -> Result<&'a [u8], String> {
        let n = self.u64(what)?;
        let n = usize::try_from(n).map_err(|_| format!("{what}: length {n} is too large"))?;
        self.bytes_n(n, what)
    }

    /// Length-prefixed UTF-8.
    pub fn str(&mut self, what: &str) -> Result<&'a str, String> {
        std::str::from_utf8(self.bytes(what)?).map_err(|_| format!("{what} is not UTF-8"))
    }

    /// A count of items that each take at least `min_size` bytes (bounds allocations by
    /// the bytes actually there).
    pub fn count(&mut self, min_size: usize, what: &str) -> Result<usize, String> {
        let n = self.u64(what)?;
        if n > (self.0.len() / min_size.max(1)) as u64 {
            return Err(format!(
                "{what}: {n} items cannot fit in the {} bytes left",
                self.0.len()
            ));
        }
        Ok(n as usize)
    }

    /// Nothing may be left.
    pub fn end(&self) -> Result<(), String> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(format!("{} unexpected bytes after the state", self.0.len()))
        }
    }
}

const NULL: u8 = 0;
const FALSE: u8 = 1;
const TRUE: u8 = 2;
const INT: u8 = 3;
const DOUBLE: u8 = 4;
const STR: u8 = 5;
const LIST: u8 = 6;
const MAP: u8 = 7;
const TIMESTAMP: u8 = 8;
const DURATION: u8 = 9;

/// Appends an expression value.
pub fn put_val(out: &mut Vec<u8>, v: &Val<'_>) {
    match v {
        Val::Null => out.put_u8(NULL),
        Val::Bool(false) => out.put_u8(FALSE),
        Val::Bool(true) => out.put_u8(TRUE),
        Val::Int(i) => {
            out.put_u8(INT);
            out.put_i64(*i);
        }
        Val::Double(d) => {
            out.put_u8(DOUBLE);
            out.put_f64(*d);
        }
        Val::Str(s) => {
            out.put_u8(STR);
            out.put_bytes(s.as_bytes());
        }
        Val::List(l) => {
            out.put_u8(LIST);
            out.put_u64(l.len() as u64);
            for x in l.iter() {
                put_val(out, x);
            }
        }
        Val::Map(m) => {
            out.put_u8(MAP);
            out.put_u64(m.len() as u64);
            for (k, x) in m.iter() {
                put_val(out, k);
                put_val(out, x);
            }
        }
        Val::Timestamp(t) => {
            out.put_u8(TIMESTAMP);
            out.put_i64(*t);
        }
        Val::Duration(d) => {
            out.put_u8(DURATION);
            out.put_i64(*d);
        }
    }
}

/// Reads an expression value written by [`put_val`].
pub fn take_val(t: &mut Take<'_>) -> Result<Val<'static>, String> {
    take_val_at(t, 0)
}

fn take_val_at(t: &mut Take<'_>, depth: u32) -> Result<Val<'static>, String> {
    if depth > MAX_DEPTH {
        return Err(format!("values nested more than {MAX_DEPTH} deep"));
    }
    Ok(match t.u8("a value's tag")? {
        NULL => Val::Null,
        FALSE => Val::Bool(false),
        TRUE => Val::Bool(true),
        INT => Val::Int(t.i64("an int")?),
        DOUBLE => Val::Double(t.f64("a double")?),
        STR => Val::Str(Cow::Owned(t.str("a string")?.to_string())),
        LIST => {
            let n = t.count(1, "a list's length")?;
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                items.push(take_val_at(t, depth + 1)?);
            }
            Val::List(Arc::new(items))
        }
        MAP => {
            let n = t.count(2, "a map's length")?;
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                let k = take_val_at(t, depth + 1)?;
                items.push((k, take_val_at(t, depth + 1)?));
            }
            Val::Map(Arc::new(items))
        }
        TIMESTAMP => Val::Timestamp(t.i64("a timestamp")?),
        DURATION => Val::Duration(t.i64("a duration")?),
        other => return Err(format!("unknown value tag {other}")),
    })
}

/// Appends a row's or a state's fields: their count, then each value as [`put_val`]
/// writes it. (Rows and states were lists of values before they were cells, written
/// the same way: snapshots written then read as cells.)
pub fn put_cells(out: &mut Vec<u8>, cells: &[Cell]) {
    out.put_u64(cells.len() as u64);
    for c in cells {
        put_val(out, &c.get());
    }
}

/// Reads fields written by [`put_cells`] as cells, checking there are `want` of them. A string is read into its cell directly (no intermediate copy).
pub fn take_cells<C: FromIterator<Cell>>(t: &mut Take<'_>, want: usize) -> Result<C, String> {
    let n = t.count(1, "the number of fields")?;
    if n != want {
        return Err(format!(
            "the state has {n} fields, the pipeline declares {want}"
        ));
    }
    (0..n)
        .map(|_| {
            if t.0.first() == Some(&STR) {
                t.u8("a value's tag")?;
                Ok(Cell::str(t.str("a string")?))
            } else {
                take_val(t).map(Cell::from)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A list of values as rows and states were written before they were cells.
    fn put_vals(out: &mut Vec<u8>, vals: &[Val<'_>]) {
        out.put_u64(vals.len() as u64);
        for v in vals {
            put_val(out, v);
        }
    }

    /// Reads values written by [`put_vals`], checking there are `want` of them.
    fn take_vals(t: &mut Take<'_>, want: usize) -> Result<Box<[Val<'static>]>, String> {
        let n = t.count(1, "the number of fields")?;
        if n != want {
            return Err(format!("{n} fields, want {want}"));
        }
        (0..n).map(|_| take_val(t)).collect()
    }

    #[test]
    fn values_round_trip_and_bad_bytes_are_errors() {
        let v = Val::Map(Arc::new(vec![
            (Val::string("a"), Val::Int(-5)),
            (
                Val::string("b"),
                Val::list(vec![
                    Val::Null,
                    Val::Bool(true),
                    Val::Double(1.5),
                    Val::Timestamp(7),
                    Val::Duration(-9),
                    Val::string("é"),
                ]),
            ),
        ]));
        let mut out = Vec::new();
        put_vals(&mut out, &[v.clone(), Val::Bool(false)]);
        let mut t = Take(&out);
        let back = take_vals(&mut t, 2).unwrap();
        t.end().unwrap();
        assert_eq!(&*back, &[v.clone(), Val::Bool(false)]);
        // Cells write the same bytes and read them back.
        let cells: Vec<Cell> = back.iter().cloned().map(Cell::from).collect();
        let mut again = Vec::new();
        put_cells(&mut again, &cells);
        assert_eq!(again, out);
        let mut t = Take(&out);
        assert_eq!(take_cells::<Vec<Cell>>(&mut t, 2).unwrap(), cells);
        t.end().unwrap();
        // Every truncation is an error, never a panic.
        for n in 0..out.len() {
            let mut t = Take(&out[..n]);
            assert!(take_vals(&mut t, 2).is_err(), "{n}");
        }
        for n in 0..out.len() {
            let mut t = Take(&out[..n]);
            assert!(take_cells::<Vec<Cell>>(&mut t, 2).is_err(), "{n}");
        }
        assert!(take_vals(&mut Take(&out), 3).is_err());
        assert!(take_cells::<Vec<Cell>>(&mut Take(&out), 3).is_err());
        assert!(take_val(&mut Take(&[42])).is_err());
        // A huge count does not allocate.
        let mut huge = vec![LIST];
        huge.put_u64(u64::MAX);
        assert!(take_val(&mut Take(&huge)).is_err());
    }

    #[test]
    fn cells_read_what_vals_wrote() {
        let vals = [
            Val::str(""),
            Val::str("EUR"),
            Val::string("é".repeat(11)),
            Val::string("é".repeat(12)),
            Val::string("a string longer than twenty-two bytes"),
            Val::Int(7),
            Val::Timestamp(-3),
            Val::list(vec![Val::str("x")]),
        ];
        let mut out = Vec::new();
        put_vals(&mut out, &vals);
        let cells: Vec<Cell> = take_cells(&mut Take(&out), vals.len()).unwrap();
        for (c, v) in cells.iter().zip(&vals) {
            assert_eq!(c.get(), *v);
        }
        let mut again = Vec::new();
        put_cells(&mut again, &cells);
        assert_eq!(again, out);
        // A string that is not UTF-8 is an error, as for values.
        let mut bad = Vec::new();
        bad.put_u64(1);
        bad.put_u8(STR);
        bad.put_bytes(&[0xff, b'a']);
        assert!(take_vals(&mut Take(&bad), 1).is_err());
        assert!(take_cells::<Vec<Cell>>(&mut Take(&bad), 1).is_err());
    }
}
