//! The units that travel between threads: batches of decoded events (router → shard)
//! and buffers of output records (shard/router → committer). Both are reused, so the
//! steady state allocates nothing per record.

use crate::decode::Value;

/// One decoded input record inside an [`EventBatch`].
#[derive(Debug, Clone, Copy)]
pub struct Event {
    /// Dense index of the (source, partition) the record came from.
    pub input: u32,
    /// Offset in that partition.
    pub offset: u64,
    /// Append time of the record in its log (ms since the Unix epoch).
    pub ts_ms: u64,
    /// `stable_hash(key)`.
    pub key_hash: u64,
    /// Key bytes in the arena.
    pub key: (u32, u32),
    /// Per-key sequence number (0 when sequences are off).
    pub seq: u64,
    /// Raw record bytes in the arena (for dead letters).
    pub raw: (u32, u32),
    /// Length of the record's encoded headers (`crate::headers`), stored in the arena
    /// right after the raw bytes; 0 for none.
    pub headers: u32,
    /// In a projection pipeline, the projection this delivery is for (the record itself
    /// was counted by the router); [`RECORD`] otherwise.
    pub target: u32,
    /// Which part of its record this is ([`Part::WHOLE`] unless an `[upcast]` rule split it).
    pub part: Part,
}

/// [`Event::target`] of an ordinary record (not a projection delivery).
pub const RECORD: u32 = u32::MAX;

/// Which part of its stored record an event is. An `[upcast]` rule may split one record
/// into several parts (`crate::upcast`); the router routes each as an event of its own.
///
/// A record is read once, so it has one outcome: in a keyed pipeline that of its part 0;
/// the outcomes of the other parts are not counted as records (a later part that is
/// dead-lettered is counted in `Outcomes::part_errors`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    /// Position among the record's parts, in split order (0 for a whole record).
    pub index: u8,
    /// Number of parts of the record (1 for a whole record).
    pub count: u8,
    /// Position among the parts of the record with this part's key and sequence number:
    /// a sequenced key applies its events in `(sequence, sub)` order (see `shard`).
    pub sub: u8,
    /// No later part of the record has this part's key and sequence number: once it is
    /// applied, its key waits for the next sequence number.
    pub last: bool,
}

impl Part {
    /// A record that was not split.
    pub const WHOLE: Part = Part {
        index: 0,
        count: 1,
        sub: 0,
        last: true,
    };

    /// Whether the event is one of several parts of its record.
    #[inline]
    pub fn is_split(self) -> bool {
        self.count > 1
    }

    /// Whether the event's outcome is its record's (a whole record, or part 0).
    #[inline]
    pub fn counted(self) -> bool {
        self.index == 0
    }
}

/// Events for one shard, with their field values and an arena for their bytes.
#[derive(Debug, Default)]
pub struct EventBatch {
    /// Bytes of keys, strings and raw records.
    pub arena: Vec<u8>,
    /// The events, in arrival order.
    pub events: Vec<Event>,
    /// `slots` values per event, event `i` at `i * slots ..`.
    pub values: Vec<Value>,
    /// Whether these events are being replayed (outputs suppressed).
    pub replay: bool,
}

impl EventBatch {
    /// Empties the batch, keeping its capacity.
    pub fn clear(&mut self) {
        self.arena.clear();
        self.events.clear();
        self.values.clear();
        self.replay = false;
    }

    /// Bytes of a range in the arena.
    #[inline]
    pub fn bytes(&self, r: (u32, u32)) -> &[u8] {
        &self.arena[r.0 as usize..(r.0 + r.1) as usize]
    }

    /// The encoded headers of `ev` (empty for none).
    #[inline]
    pub fn headers(&self, ev: &Event) -> &[u8] {
        let at = ev.raw.0 + ev.raw.1;
        &self.arena[at as usize..(at + ev.headers) as usize]
    }
}

/// One record for the committer to append.
#[derive(Debug, Clone, Copy)]
pub struct OutRec {
    /// Partition of the target topic.
    pub partition: u32,
    /// Key range in [`OutBuf::data`].
    pub key: (u32, u32),
    /// Value range in [`OutBuf::data`].
    pub value: (u32, u32),
    /// Length of the encoded headers (`crate::headers`) right after the value; 0 for none.
    pub headers: u32,
}

/// Output records of one topic, sharing one byte buffer.
#[derive(Debug, Default)]
pub struct OutBuf {
    /// Bytes of all keys and values.
    pub data: Vec<u8>,
    /// The records in order.
    pub recs: Vec<OutRec>,
}

impl OutBuf {
    /// Number of records.
    pub fn len(&self) -> usize {
        self.recs.len()
    }

    /// No records?
    pub fn is_empty(&self) -> bool {
        self.recs.is_empty()
    }

    /// Where the buffer ends now, for [`OutBuf::truncate`].
    #[inline]
    pub fn mark(&self) -> (usize, usize) {
        (self.data.len(), self.recs.len())
    }

    /// Drops everything appended since `mark`.
    #[inline]
    pub fn truncate(&mut self, mark: (usize, usize)) {
        self.data.truncate(mark.0);
        self.recs.truncate(mark.1);
    }

    /// Appends a record whose value is written by `write`.
    #[inline]
    pub fn push_with(&mut self, partition: u32, key: &[u8], write: impl FnOnce(&mut Vec<u8>)) {
        let ks = self.data.len() as u32;
        self.data.extend_from_slice(key);
        let vs = self.data.len() as u32;
        write(&mut self.data);
        let ve = self.data.len() as u32;
        self.recs.push(OutRec {
            partition,
            key: (ks, key.len() as u32),
            value: (vs, ve - vs),
            headers: 0,
        });
    }

    /// Gives the last record appended the encoded `headers` (`crate::headers`). Must
    /// follow its `push_with` directly (the headers go right after its value).
    #[inline]
    pub fn set_headers(&mut self, headers: &[u8]) {
        if headers.is_empty() {
            return;
        }
        let r = self.recs.last_mut().expect("a record to give headers to");
        debug_assert_eq!(
            (r.value.0 + r.value.1) as usize,
            self.data.len(),
            "headers go right after their record's value"
        );
        self.data.extend_from_slice(headers);
        r.headers = headers.len() as u32;
    }

    /// Iterates `(partition, key, value)`.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &[u8], &[u8])> {
        self.iter_headed().map(|(p, k, v, _)| (p, k, v))
    }

    /// Iterates `(partition, key, value, headers)`, the headers encoded (empty for none).
    pub fn iter_headed(&self) -> impl Iterator<Item = (u32, &[u8], &[u8], &[u8])> {
        self.recs.iter().map(|r| {
            let ve = (r.value.0 + r.value.1) as usize;
            (
                r.partition,
                &self.data[r.key.0 as usize..(r.key.0 + r.key.1) as usize],
                &self.data[r.value.0 as usize..ve],
                &self.data[ve..ve + r.headers as usize],
            )
        })
    }
}

/// Writes `s` as a JSON string literal (with quotes) into `out`; invalid UTF-8 is
/// replaced with U+FFFD.
#[inline]
pub fn write_json_str(out: &mut Vec<u8>, s: &[u8]) {
    // hot path: plain printable ASCII needs no escaping and no UTF-8 check. Checked
    // without a branch per byte (ids, names and dates are short and almost always plain).
    let plain = s.iter().fold(true, |ok, &c| {
        ok & (c >= 0x20) & (c < 0x7f) & (c != b'"') & (c != b'\\')
    });
    if plain {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s);
        out.push(b'"');
        return;
    }
    let text = String::from_utf8_lossy(s);
    // serde_json escapes exactly as JSON requires.
    serde_json::to_writer(&mut *out, text.as_ref()).expect("writing to a Vec cannot fail");
}

/// Writes an integer in decimal without allocating.
#[inline]
pub fn write_int(out: &mut Vec<u8>, n: i64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Writes an unsigned integer in decimal without allocating.
#[inline]
pub fn write_uint(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_and_an_output_record_stay_small() {
        // One cache line per event: the headers are a length, their bytes in the arena.
        assert_eq!(std::mem::size_of::<Event>(), 64);
        assert_eq!(std::mem::size_of::<OutRec>(), 24);
    }

    #[test]
    fn plain_and_escaped_strings_render_as_serde_json_does() {
        for s in [
            "",
            "plain ACC-0000001",
            "2026-01",
            "q\"uote",
            "back\\slash",
            "tab\t",
            "\u{7f}",
            "\u{1f}",
            " ~",
            "h\u{e9}llo",
            "\u{65e5}\u{672c}",
            "\n\r",
        ] {
            let mut ours = Vec::new();
            write_json_str(&mut ours, s.as_bytes());
            assert_eq!(ours, serde_json::to_vec(s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn json_text() {
        let mut out = Vec::new();
        write_json_str(&mut out, b"plain");
        write_json_str(&mut out, "quo\"te\\ \u{e9}\n".as_bytes());
        write_json_str(&mut out, b"\xff");
        write_int(&mut out, i64::MIN);
        write_int(&mut out, 0);
        write_uint(&mut out, u64::MAX);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "\"plain\"\"quo\\\"te\\\\ \u{e9}\\n\"\"\u{fffd}\"-9223372036854775808018446744073709551615"
        );
    }
}
