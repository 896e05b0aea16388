//! Record headers as onceflow carries them, from an input record to the outputs derived
//! from it (its aggregate's events and rejections, a view's or projection's upserts, its
//! dead letter).
//!
//! Headers come from Kafka inputs (trace context such as `traceparent`, a tenant, a
//! correlation id set by the producer) and go out on Kafka outputs; the embedded log
//! stores keys and values only, so on it headers are neither read nor written. In
//! between they travel as one byte string per record, in this module's encoding, so that
//! a record without headers costs an empty range and nothing else:
//!
//! ```text
//! per header: key length (u32 LE) | key | value length (u32 LE, u32::MAX = null) | value
//! ```
//!
//! Which headers an output gets (see `docs/architecture.md`, "Headers"): those of the
//! record it was derived from; for a per-epoch upsert, those of the last record that
//! changed the key in that epoch. Headers onceflow sets itself on an output
//! (`correlation_id`, CloudEvents `ce_*` and `content-type` in binary mode, the
//! `onceflow.*` headers of dead letters) replace an input header of the same name.
//!
//! # Examples
//!
//! ```
//! use onceflow_core::headers;
//!
//! let mut enc = Vec::new();
//! headers::push(&mut enc, b"traceparent", Some(b"00-4bf9-01"));
//! headers::push(&mut enc, b"tenant", None);
//! let all: Vec<_> = headers::iter(&enc).collect();
//! assert_eq!(all, [(&b"traceparent"[..], Some(&b"00-4bf9-01"[..])), (&b"tenant"[..], None)]);
//! assert!(headers::is_valid(&enc));
//! ```

/// Value length that marks a null value.
const NULL: u32 = u32::MAX;

/// Appends one header to `out`.
#[inline]
pub fn push(out: &mut Vec<u8>, key: &[u8], value: Option<&[u8]>) {
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
    match value {
        Some(v) => {
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
            out.extend_from_slice(v);
        }
        None => out.extend_from_slice(&NULL.to_le_bytes()),
    }
}

/// The headers encoded in `bytes`, in order. Stops at the first malformed header (which
/// onceflow never writes; [`is_valid`] checks bytes read from a file).
pub fn iter(bytes: &[u8]) -> Iter<'_> {
    Iter { rest: bytes }
}

/// Whether `bytes` is a well-formed encoding (every header whole, nothing left over).
pub fn is_valid(bytes: &[u8]) -> bool {
    let mut it = iter(bytes);
    while it.next().is_some() {}
    it.rest.is_empty()
}

/// Iterator over encoded headers: `(key, value)`, a null value as `None`.
#[derive(Debug, Clone)]
pub struct Iter<'a> {
    rest: &'a [u8],
}

impl<'a> Iter<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.rest.len() < n {
            return None;
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Some(head)
    }

    fn len(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a [u8], Option<&'a [u8]>);

    fn next(&mut self) -> Option<Self::Item> {
        let start = self.rest;
        let item = (|| {
            let k = self.len()? as usize;
            let key = self.take(k)?;
            let v = self.len()?;
            let value = if v == NULL {
                None
            } else {
                Some(self.take(v as usize)?)
            };
            Some((key, value))
        })();
        if item.is_none() {
            // A malformed tail stays unread, so `is_valid` sees it.
            self.rest = start;
        }
        item
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_malformed_tails() {
        let mut enc = Vec::new();
        push(&mut enc, b"a", Some(b""));
        push(&mut enc, b"", None);
        push(&mut enc, b"trace", Some(b"xyz"));
        let all: Vec<_> = iter(&enc).collect();
        assert_eq!(
            all,
            [
                (&b"a"[..], Some(&b""[..])),
                (&b""[..], None),
                (&b"trace"[..], Some(&b"xyz"[..]))
            ]
        );
        assert!(is_valid(&enc));
        assert!(is_valid(&[]));
        // Headers end at 9 and 17: a cut elsewhere is malformed, and yields only the
        // whole headers before it.
        for cut in 1..enc.len() {
            let n = iter(&enc[..cut]).count();
            assert_eq!(
                n,
                usize::from(cut >= 9) + usize::from(cut >= 17),
                "cut at {cut}"
            );
            assert_eq!(is_valid(&enc[..cut]), cut == 9 || cut == 17, "cut at {cut}");
        }
    }
}
