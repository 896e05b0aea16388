//! A strict, validating JSON scanner (RFC 8259) that extracts the wanted fields in one
//! pass without building anything: unwanted values are validated and skipped, wanted
//! scalars land in the output slots, strings are unescaped into the arena.
//!
//! Every input that this scanner accepts is valid JSON, and every valid JSON object is
//! accepted; the `differential` tests check both against serde_json on random, mutated
//! and hand-picked inputs. Where serde_json is lenient (it does not check the UTF-8 or
//! the number range of values it skips), the scanner is strict: invalid UTF-8 anywhere
//! makes the record malformed (the caller checks the whole input first). Out-of-range
//! numbers are refused only where a value is extracted, as serde_json does. Nesting
//! deeper than 128 levels is refused anywhere (serde_json's limit; it does not apply it to
//! skipped values, the scanner does, to bound its recursion).

use super::{Level, Value};

/// Deepest nesting accepted (serde_json's default limit too).
const MAX_DEPTH: usize = 128;

pub(super) struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
    depth: usize,
}

type R<T> = Result<T, String>;

impl<'a> Scanner<'a> {
    pub(super) fn new(b: &'a [u8]) -> Self {
        Scanner { b, i: 0, depth: 0 }
    }

    fn err<T>(&self, what: &str) -> R<T> {
        if self.i >= self.b.len() {
            Err(format!(
                "unexpected end of input: {what}, at column {}",
                self.i + 1
            ))
        } else {
            Err(format!("{what} at column {}", self.i + 1))
        }
    }

    #[inline]
    fn ws(&mut self) {
        while let Some(&c) = self.b.get(self.i) {
            if c == b' ' || c == b'\n' || c == b'\r' || c == b'\t' {
                self.i += 1;
            } else {
                break;
            }
        }
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    /// Scans a whole document that must be one object. `Ok(false)` = valid JSON but not an object.
    pub(super) fn document(
        &mut self,
        level: &Level,
        arena: &mut Vec<u8>,
        out: &mut [Value],
    ) -> R<bool> {
        // hot path
        self.ws();
        let is_obj = match self.peek() {
            Some(b'{') => {
                self.object(Some(level), arena, out)?;
                true
            }
            _ => {
                self.skip_value()?;
                false
            }
        };
        self.ws();
        if self.i != self.b.len() {
            return self.err("trailing characters after the JSON value");
        }
        Ok(is_obj)
    }

    /// At `{`: walks the members; with a level, wanted members are extracted.
    fn object(&mut self, level: Option<&Level>, arena: &mut Vec<u8>, out: &mut [Value]) -> R<()> {
        self.enter()?;
        self.i += 1; // {
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            self.depth -= 1;
            return Ok(());
        }
        loop {
            self.ws();
            if self.peek() != Some(b'"') {
                return self.err("expected a string key");
            }
            let wanted = match level {
                Some(l) => {
                    let input = self.b;
                    let key = self.key(arena)?;
                    let bytes: &[u8] = match &key {
                        KeyRef::Input(s, e) => &input[*s..*e],
                        KeyRef::Owned(v) => v,
                    };
                    l.entries.iter().find(|e| e.0.as_bytes() == bytes)
                }
                None => {
                    self.skip_string()?;
                    None
                }
            };
            self.ws();
            if self.peek() != Some(b':') {
                return self.err("expected ':'");
            }
            self.i += 1;
            self.ws();
            match wanted {
                Some((_, slot, Some(child))) => {
                    child.clear(out);
                    if self.peek() == Some(b'{') {
                        // Wanted both as a value and as a prefix: the value is an object.
                        if let Some(s) = slot {
                            out[*s] = Value::Composite;
                        }
                        self.object(Some(child), arena, out)?;
                    } else {
                        let v = self.value(arena)?;
                        if let Some(s) = slot {
                            out[*s] = v;
                        }
                    }
                }
                Some((_, Some(s), None)) => out[*s] = self.value(arena)?,
                _ => self.skip_value()?,
            }
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    self.depth -= 1;
                    return Ok(());
                }
                _ => return self.err("expected ',' or '}'"),
            }
        }
    }

    fn enter(&mut self) -> R<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return self.err("nesting deeper than 128 levels");
        }
        Ok(())
    }

    /// At `[`.
    fn array(&mut self) -> R<()> {
        self.enter()?;
        self.i += 1;
        self.ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            self.depth -= 1;
            return Ok(());
        }
        loop {
            self.ws();
            self.skip_value()?;
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    self.depth -= 1;
                    return Ok(());
                }
                _ => return self.err("expected ',' or ']'"),
            }
        }
    }

    /// A wanted value: scalars are decoded, composites validated and marked.
    fn value(&mut self, arena: &mut Vec<u8>) -> R<Value> {
        match self.peek() {
            Some(b'"') => {
                let start = arena.len();
                self.string_into(arena)?;
                Ok(Value::Str(start as u32, (arena.len() - start) as u32))
            }
            Some(b'{' | b'[') => {
                self.skip_value()?;
                Ok(Value::Composite)
            }
            Some(b't') => self.literal(b"true", Value::Bool(true)),
            Some(b'f') => self.literal(b"false", Value::Bool(false)),
            Some(b'n') => self.literal(b"null", Value::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => self.err("expected a value"),
        }
    }

    fn skip_value(&mut self) -> R<()> {
        match self.peek() {
            Some(b'"') => self.skip_string(),
            Some(b'{') => self.object(None, &mut Vec::new(), &mut []),
            Some(b'[') => self.array(),
            Some(b't') => self.literal(b"true", ()),
            Some(b'f') => self.literal(b"false", ()),
            Some(b'n') => self.literal(b"null", ()),
            Some(b'-' | b'0'..=b'9') => self.number_syntax().map(|_| ()),
            _ => self.err("expected a value"),
        }
    }

    fn literal<T>(&mut self, word: &[u8], v: T) -> R<T> {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(v)
        } else {
            self.err("invalid literal")
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
        self.i - start
    }

    /// Checks a number's syntax; returns where its integer digits are and whether it has
    /// a fraction or exponent.
    fn number_syntax(&mut self) -> R<(usize, usize, usize, bool, bool)> {
        let start = self.i;
        let neg = self.peek() == Some(b'-');
        if neg {
            self.i += 1;
        }
        let int_start = self.i;
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return self.err("invalid number"),
        }
        let int_end = self.i;
        let mut float = false;
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return self.err("invalid number: a digit must follow '.'");
            }
            float = true;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if self.digits() == 0 {
                return self.err("invalid number: a digit must follow the exponent");
            }
            float = true;
        }
        Ok((start, int_start, int_end, neg, float))
    }

    fn number(&mut self) -> R<Value> {
        let (start, int_start, int_end, neg, float) = self.number_syntax()?;
        if !float {
            // Up to 18 digits cannot overflow; longer ones go through checked math.
            let digits = &self.b[int_start..int_end];
            let mut n: i64 = 0;
            let mut fits = true;
            for &d in digits {
                match n.checked_mul(10).and_then(|m| {
                    if neg {
                        m.checked_sub((d - b'0') as i64)
                    } else {
                        m.checked_add((d - b'0') as i64)
                    }
                }) {
                    Some(m) => n = m,
                    None => {
                        fits = false;
                        break;
                    }
                }
            }
            if fits {
                // "-0" is the float -0.0 (as serde_json reads it), not the integer 0.
                return Ok(if neg && n == 0 {
                    Value::Float(-0.0)
                } else {
                    Value::Int(n)
                });
            }
        }
        let text = std::str::from_utf8(&self.b[start..self.i]).expect("ASCII digits");
        match text.parse::<f64>() {
            Ok(f) if f.is_finite() => Ok(Value::Float(f)),
            _ => {
                self.i = start;
                self.err("number out of range")
            }
        }
    }

    /// A key: a range of the input when it has no escapes, else an unescaped copy.
    fn key(&mut self, arena: &mut Vec<u8>) -> R<KeyRef> {
        let start = self.i + 1;
        self.i = start;
        self.plain_run()?;
        if self.b[self.i] == b'"' {
            self.i += 1;
            return Ok(KeyRef::Input(start, self.i - 1));
        }
        // Escaped key: decode into a scratch area at the end of the arena, then drop it.
        self.i = start - 1;
        let at = arena.len();
        self.string_into(arena)?;
        let owned = arena[at..].to_vec();
        arena.truncate(at);
        Ok(KeyRef::Owned(owned))
    }

    /// Advances over plain string bytes to the next `"` or `\`.
    #[inline]
    fn plain_run(&mut self) -> R<()> {
        let rest = &self.b[self.i..];
        let end = memchr::memchr2(b'"', b'\\', rest);
        let plain = &rest[..end.unwrap_or(rest.len())];
        if let Some(k) = plain.iter().position(|&c| c < 0x20) {
            self.i += k;
            return self.err("control character in string");
        }
        self.i += plain.len();
        if end.is_none() {
            return self.err("unterminated string");
        }
        Ok(())
    }

    fn skip_string(&mut self) -> R<()> {
        self.i += 1;
        loop {
            self.plain_run()?;
            if self.b[self.i] == b'"' {
                self.i += 1;
                return Ok(());
            }
            self.escape(None)?;
        }
    }

    /// At `"`: appends the unescaped string to `arena`.
    fn string_into(&mut self, arena: &mut Vec<u8>) -> R<()> {
        self.i += 1;
        loop {
            let run = self.i;
            self.plain_run()?;
            arena.extend_from_slice(&self.b[run..self.i]);
            if self.b[self.i] == b'"' {
                self.i += 1;
                return Ok(());
            }
            self.escape(Some(arena))?;
        }
    }

    /// At `\`: validates one escape and, with an arena, appends what it stands for.
    fn escape(&mut self, arena: Option<&mut Vec<u8>>) -> R<()> {
        self.i += 1;
        let c = match self.peek() {
            Some(b'"') => '"',
            Some(b'\\') => '\\',
            Some(b'/') => '/',
            Some(b'b') => '\u{8}',
            Some(b'f') => '\u{c}',
            Some(b'n') => '\n',
            Some(b'r') => '\r',
            Some(b't') => '\t',
            Some(b'u') => {
                self.i += 1;
                let hi = self.hex4()?;
                let c = if (0xD800..0xDC00).contains(&hi) {
                    if self.b.get(self.i..self.i + 2) != Some(b"\\u") {
                        return self.err("unpaired surrogate in \\u escape");
                    }
                    self.i += 2;
                    let lo = self.hex4()?;
                    if !(0xDC00..0xE000).contains(&lo) {
                        return self.err("invalid low surrogate in \\u escape");
                    }
                    char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))
                } else if (0xDC00..0xE000).contains(&hi) {
                    return self.err("unpaired surrogate in \\u escape");
                } else {
                    char::from_u32(hi)
                };
                let c = c.expect("valid scalar value");
                if let Some(a) = arena {
                    let mut buf = [0u8; 4];
                    a.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                return Ok(());
            }
            _ => return self.err("invalid escape"),
        };
        self.i += 1;
        if let Some(a) = arena {
            a.push(c as u8);
        }
        Ok(())
    }

    fn hex4(&mut self) -> R<u32> {
        let Some(h) = self.b.get(self.i..self.i + 4) else {
            return self.err("invalid \\u escape");
        };
        let mut v = 0u32;
        for &d in h {
            let x = match d {
                b'0'..=b'9' => d - b'0',
                b'a'..=b'f' => d - b'a' + 10,
                b'A'..=b'F' => d - b'A' + 10,
                _ => return self.err("invalid \\u escape"),
            };
            v = v * 16 + x as u32;
        }
        self.i += 4;
        Ok(v)
    }
}

/// A key's bytes: a range of the input, or an unescaped copy.
pub(super) enum KeyRef {
    Input(usize, usize),
    Owned(Vec<u8>),
}
