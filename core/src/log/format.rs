//! On-disk format of the embedded log, version 1.
//!
//! All integers are little endian. Checksums are CRC-32C (Castagnoli).
//!
//! # Layout of a store directory
//!
//! ```text
//! DIR/LOCK                                    writer lock: flock(2)ed exclusively, holds "<pid>\n"
//! DIR/journal                                 transaction journal (the commit point)
//! DIR/topics/<name>/meta                      topic meta file (text, see below)
//! DIR/topics/<name>/<partition>/<base:020>.seg  segment files; <base> = offset of the first record
//! ```
//!
//! A directory is a store iff `DIR/journal` exists with a valid header. Temporary files
//! (`journal.tmp`, `meta.tmp`) are written, fsynced and renamed into place, and the
//! parent directory is fsynced, so they never appear half-written.
//!
//! # Topic meta file
//!
//! Three text lines: `onceflow-topic-meta 1`, `id <topic id>`, `partitions <count>`.
//! Topic ids are assigned densely from 0 at creation and referenced by the journal.
//! Topic names match `[A-Za-z0-9._-]{1,200}` and do not start with `.`.
//!
//! # Segment files
//!
//! A segment is a plain sequence of record batches, no file header. Batch:
//!
//! ```text
//! off  size  field
//!   0     4  magic "OFLB"
//!   4     2  format version (1)
//!   6     2  flags (0, reserved)
//!   8     4  payload length P (bytes after the 36-byte header)
//!  12     4  crc32c of bytes 16 .. 36+P (everything after this field)
//!  16     8  base offset (offset of the first record)
//!  24     4  record count (>= 1)
//!  28     8  timestamp, milliseconds since the Unix epoch (same for all records)
//!  36     P  records: key_len u32 | value_len u32 | key | value, repeated `count` times
//! ```
//!
//! Offsets are contiguous: within a partition each batch starts where the previous one
//! ended and each segment file starts where the previous segment ended. A transaction
//! writes one batch per touched partition (split into several batches when the payload
//! exceeds [`BATCH_TARGET_PAYLOAD`]); commit boundaries are therefore always batch
//! boundaries. A partition rolls to a new segment before a batch that would make the
//! active segment exceed the configured `segment_bytes`.
//!
//! # Journal
//!
//! An 8-byte header (`"OFJRNL"`, version u16 = 1) followed by entries:
//!
//! ```text
//! len u32 | crc32c(payload) u32 | payload[len]
//!
//! payload:
//!   kind u8              1 = commit, 2 = checkpoint
//!   txn_id u64           strictly increasing per store, starting at 1
//!   epoch u64            commit marker epoch (opaque)
//!   n_ends u32, n × (topic u32 | partition u32 | end u64)
//!                        commit: new committed ends of the partitions the txn touched;
//!                        checkpoint: the committed ends of all non-empty partitions
//!   n_inputs u32, n × (name_len u32 | name utf-8 | partition u32 | next_offset u64)
//!                        the commit marker's inputs (for a checkpoint: those of the
//!                        last marker it replaces)
//!   checkpoint only: n_merged u32, n × (same as inputs)
//!                        the inputs merged over all markers so far (latest wins per
//!                        (source, partition))
//! ```
//!
//! A partition's committed end is the `end` of the latest entry that lists it (0 if
//! none). Compaction replaces the journal by a header plus one checkpoint entry
//! (temp file, fsync, rename, fsync directory); readers notice the inode change.
//!
//! # Commit and recovery
//!
//! Commit: write the batches (rolling segments as needed), `fdatasync` the touched
//! segment files and the directories of new segments, append the journal entry,
//! `fdatasync` the journal (fsyncs skipped with `FsyncPolicy::Never`).
//!
//! Writer open: a journal tail that is incomplete or fails its checksum, with no valid
//! entry after it, is a torn write and is truncated; a bad entry followed by a valid
//! one is corruption. Per partition, segment files that start at or after the
//! committed end are deleted, the last remaining segment is scanned (batch headers
//! and checksums) up to the committed end, and any bytes after it are truncated.
//! Missing committed data or a checksum failure below the committed end is reported as
//! corruption, never repaired. Older segments are verified by readers as they read.

use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use super::{LogError, TopicId};

/// Format version written into batch headers, the journal header and meta files.
pub const FORMAT_VERSION: u16 = 1;
/// Magic bytes at the start of every record batch.
pub const BATCH_MAGIC: [u8; 4] = *b"OFLB";
/// Size of a batch header in bytes.
pub const BATCH_HEADER_LEN: usize = 36;
/// Magic bytes at the start of the journal file.
pub const JOURNAL_MAGIC: [u8; 6] = *b"OFJRNL";
/// Size of the journal file header in bytes.
pub const JOURNAL_HEADER_LEN: usize = 8;
/// Size of a journal entry header (length + crc) in bytes.
pub const ENTRY_HEADER_LEN: usize = 8;
/// Largest accepted journal entry payload.
pub const MAX_ENTRY_LEN: usize = 1 << 30;
/// Largest record (`8 + key.len() + value.len()`).
pub const MAX_RECORD_BYTES: u64 = 256 << 20;
/// A transaction's records for one partition are split into batches of about this
/// many payload bytes (a single larger record gets a batch of its own).
pub const BATCH_TARGET_PAYLOAD: usize = 4 << 20;
/// Size of a record's length prefix (`key_len u32 | value_len u32`).
pub const RECORD_OVERHEAD: usize = 8;

/// Journal entry kind: a transaction's commit marker.
pub(crate) const KIND_COMMIT: u8 = 1;
/// Journal entry kind: a compaction checkpoint.
pub(crate) const KIND_CHECKPOINT: u8 = 2;

pub(crate) const JOURNAL_FILE: &str = "journal";
pub(crate) const JOURNAL_TMP: &str = "journal.tmp";
pub(crate) const LOCK_FILE: &str = "LOCK";
pub(crate) const TOPICS_DIR: &str = "topics";
pub(crate) const META_FILE: &str = "meta";
pub(crate) const META_TMP: &str = "meta.tmp";
const META_HEADER: &str = "onceflow-topic-meta";
const SEGMENT_SUFFIX: &str = ".seg";

// ---------------------------------------------------------------------------------
// Little-endian helpers

#[inline]
pub(crate) fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

#[inline]
pub(crate) fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

#[inline]
pub(crate) fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

// ---------------------------------------------------------------------------------
// Batches

/// Parsed batch header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchHeader {
    pub payload_len: u32,
    pub crc: u32,
    pub base_offset: u64,
    pub count: u32,
    pub timestamp_ms: u64,
}

impl BatchHeader {
    /// Total size of the batch (header + payload).
    pub fn total_len(&self) -> u64 {
        BATCH_HEADER_LEN as u64 + self.payload_len as u64
    }

    /// Parses and sanity-checks a header (not the crc).
    pub fn parse(h: &[u8]) -> Result<BatchHeader, String> {
        debug_assert!(h.len() >= BATCH_HEADER_LEN);
        if h[0..4] != BATCH_MAGIC {
            return Err(format!("bad batch magic {:02x?}", &h[0..4]));
        }
        let version = le_u16(h, 4);
        if version != FORMAT_VERSION {
            return Err(format!("unsupported batch format version {version}"));
        }
        let flags = le_u16(h, 6);
        if flags != 0 {
            return Err(format!("unknown batch flags {flags:#x}"));
        }
        let hdr = BatchHeader {
            payload_len: le_u32(h, 8),
            crc: le_u32(h, 12),
            base_offset: le_u64(h, 16),
            count: le_u32(h, 24),
            timestamp_ms: le_u64(h, 28),
        };
        if hdr.payload_len as u64 > MAX_RECORD_BYTES.max(BATCH_TARGET_PAYLOAD as u64) {
            return Err(format!(
                "implausible batch payload length {}",
                hdr.payload_len
            ));
        }
        if hdr.count == 0 {
            return Err("batch with zero records".into());
        }
        if (hdr.count as u64) * RECORD_OVERHEAD as u64 > hdr.payload_len as u64 {
            return Err(format!(
                "batch claims {} records in {} payload bytes",
                hdr.count, hdr.payload_len
            ));
        }
        Ok(hdr)
    }
}

/// Builds a batch header for `payload` (crc included).
pub(crate) fn encode_batch_header(
    base_offset: u64,
    count: u32,
    timestamp_ms: u64,
    payload: &[u8],
) -> [u8; BATCH_HEADER_LEN] {
    let mut h = [0u8; BATCH_HEADER_LEN];
    h[0..4].copy_from_slice(&BATCH_MAGIC);
    h[4..6].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[6..8].copy_from_slice(&0u16.to_le_bytes());
    h[8..12].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    h[16..24].copy_from_slice(&base_offset.to_le_bytes());
    h[24..28].copy_from_slice(&count.to_le_bytes());
    h[28..36].copy_from_slice(&timestamp_ms.to_le_bytes());
    let crc = batch_crc(&h, payload);
    h[12..16].copy_from_slice(&crc.to_le_bytes());
    h
}

/// crc32c over header bytes 16..36 followed by the payload.
#[inline]
pub(crate) fn batch_crc(header: &[u8], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&header[16..BATCH_HEADER_LEN]), payload)
}

/// Appends one encoded record to `out`.
#[inline]
pub(crate) fn encode_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    out.reserve(RECORD_OVERHEAD + key.len() + value.len());
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(value);
}

/// Length of the record starting at `buf[at..end]` (overhead included), or `None`
/// when it does not fit.
#[inline]
pub(crate) fn record_len(buf: &[u8], at: usize, end: usize) -> Option<(usize, usize)> {
    if end - at < RECORD_OVERHEAD {
        return None;
    }
    let k = le_u32(buf, at) as usize;
    let v = le_u32(buf, at + 4) as usize;
    let total = RECORD_OVERHEAD.checked_add(k)?.checked_add(v)?;
    if total > end - at {
        return None;
    }
    Some((k, v))
}

// ---------------------------------------------------------------------------------
// Journal entries

/// A decoded journal entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JournalEntry {
    pub kind: u8,
    pub txn_id: u64,
    pub epoch: u64,
    pub ends: Vec<(TopicId, u32, u64)>,
    pub inputs: Vec<(String, u32, u64)>,
    /// Checkpoint only.
    pub merged: Vec<(String, u32, u64)>,
}

/// Encodes a journal entry (header + payload) into `out` (cleared first).
pub(crate) fn encode_entry<'a>(
    out: &mut Vec<u8>,
    kind: u8,
    txn_id: u64,
    epoch: u64,
    ends: &[(TopicId, u32, u64)],
    inputs: impl ExactSizeIterator<Item = (&'a str, u32, u64)>,
    merged: Option<Vec<(&'a str, u32, u64)>>,
) {
    out.clear();
    out.extend_from_slice(&[0u8; ENTRY_HEADER_LEN]);
    out.push(kind);
    out.extend_from_slice(&txn_id.to_le_bytes());
    out.extend_from_slice(&epoch.to_le_bytes());
    out.extend_from_slice(&(ends.len() as u32).to_le_bytes());
    for &(t, p, e) in ends {
        out.extend_from_slice(&t.to_le_bytes());
        out.extend_from_slice(&p.to_le_bytes());
        out.extend_from_slice(&e.to_le_bytes());
    }
    fn put_inputs<'b>(out: &mut Vec<u8>, it: impl ExactSizeIterator<Item = (&'b str, u32, u64)>) {
        out.extend_from_slice(&(it.len() as u32).to_le_bytes());
        for (name, p, o) in it {
            out.extend_from_slice(&(name.len() as u32).to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&p.to_le_bytes());
            out.extend_from_slice(&o.to_le_bytes());
        }
    }
    put_inputs(out, inputs);
    if let Some(m) = merged {
        put_inputs(out, m.into_iter());
    }
    let len = (out.len() - ENTRY_HEADER_LEN) as u32;
    let crc = crc32c::crc32c(&out[ENTRY_HEADER_LEN..]);
    out[0..4].copy_from_slice(&len.to_le_bytes());
    out[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// Bounds-checked little-endian reader over an entry payload.
struct Dec<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Dec<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.b.len() - self.at < n {
            return Err(format!(
                "journal entry truncated at payload byte {}",
                self.at
            ));
        }
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(le_u32(self.take(4)?, 0))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(le_u64(self.take(8)?, 0))
    }
    fn count(&mut self, min_item: usize) -> Result<usize, String> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_item) > self.b.len() - self.at {
            return Err(format!(
                "journal entry claims {n} items, too many for its size"
            ));
        }
        Ok(n)
    }
    fn inputs(&mut self) -> Result<Vec<(String, u32, u64)>, String> {
        let n = self.count(16)?;
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let len = self.u32()? as usize;
            let name = std::str::from_utf8(self.take(len)?)
                .map_err(|_| "journal entry has a non-UTF-8 source name".to_string())?
                .to_owned();
            let p = self.u32()?;
            let o = self.u64()?;
            v.push((name, p, o));
        }
        Ok(v)
    }
}

/// Header part of an entry payload: kind, txn id, epoch, and a decoder positioned at
/// the ends section.
fn decode_head(payload: &[u8]) -> Result<(u8, u64, u64, Dec<'_>), String> {
    let mut d = Dec { b: payload, at: 0 };
    let kind = d.u8()?;
    if kind != KIND_COMMIT && kind != KIND_CHECKPOINT {
        return Err(format!("unknown journal entry kind {kind}"));
    }
    let txn_id = d.u64()?;
    let epoch = d.u64()?;
    Ok((kind, txn_id, epoch, d))
}

/// Fully decodes an entry payload.
pub(crate) fn decode_entry(payload: &[u8]) -> Result<JournalEntry, String> {
    let (kind, txn_id, epoch, mut d) = decode_head(payload)?;
    let n = d.count(16)?;
    let mut ends = Vec::with_capacity(n);
    for _ in 0..n {
        ends.push((d.u32()?, d.u32()?, d.u64()?));
    }
    let inputs = d.inputs()?;
    let merged = if kind == KIND_CHECKPOINT {
        d.inputs()?
    } else {
        Vec::new()
    };
    if d.at != payload.len() {
        return Err(format!(
            "{} trailing bytes in journal entry",
            payload.len() - d.at
        ));
    }
    Ok(JournalEntry {
        kind,
        txn_id,
        epoch,
        ends,
        inputs,
        merged,
    })
}

/// Decodes only the committed ends of an entry payload (what readers need).
pub(crate) fn decode_ends(
    payload: &[u8],
    mut f: impl FnMut(TopicId, u32, u64),
) -> Result<(), String> {
    let (_, _, _, mut d) = decode_head(payload)?;
    let n = d.count(16)?;
    for _ in 0..n {
        let (t, p, e) = (d.u32()?, d.u32()?, d.u64()?);
        f(t, p, e);
    }
    Ok(())
}

/// The journal file header.
pub(crate) fn journal_header() -> [u8; JOURNAL_HEADER_LEN] {
    let mut h = [0u8; JOURNAL_HEADER_LEN];
    h[0..6].copy_from_slice(&JOURNAL_MAGIC);
    h[6..8].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h
}

/// Checks a journal file header.
pub(crate) fn check_journal_header(h: &[u8]) -> Result<(), String> {
    if h.len() < JOURNAL_HEADER_LEN {
        return Err(format!("journal header truncated ({} bytes)", h.len()));
    }
    if h[0..6] != JOURNAL_MAGIC {
        return Err("bad journal magic".into());
    }
    let v = le_u16(h, 6);
    if v != FORMAT_VERSION {
        return Err(format!("unsupported journal format version {v}"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// Topic meta files and names

/// Text of a topic meta file.
pub(crate) fn encode_meta(id: TopicId, partitions: u32) -> String {
    format!("{META_HEADER} {FORMAT_VERSION}\nid {id}\npartitions {partitions}\n")
}

/// Parses a topic meta file into `(id, partitions)`.
pub(crate) fn parse_meta(text: &str) -> Result<(TopicId, u32), String> {
    let mut lines = text.lines();
    let head = lines.next().unwrap_or("");
    let version = head
        .strip_prefix(META_HEADER)
        .map(str::trim)
        .ok_or_else(|| format!("not a topic meta file (first line {head:?})"))?;
    if version != FORMAT_VERSION.to_string() {
        return Err(format!("unsupported topic meta version {version:?}"));
    }
    let mut field = |name: &str| -> Result<u32, String> {
        let line = lines.next().unwrap_or("");
        line.strip_prefix(name)
            .and_then(|v| v.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<u32>().ok())
            .ok_or_else(|| format!("bad meta line {line:?}, expected `{name} <number>`"))
    };
    let id = field("id")?;
    let partitions = field("partitions")?;
    if partitions == 0 || partitions > MAX_PARTITIONS {
        return Err(format!(
            "topic meta has {partitions} partitions; 1..={MAX_PARTITIONS} are allowed"
        ));
    }
    if id >= MAX_TOPICS {
        return Err(format!(
            "topic meta has id {id}; ids are below {MAX_TOPICS}"
        ));
    }
    Ok((id, partitions))
}

/// Largest accepted partition count.
pub const MAX_PARTITIONS: u32 = 1 << 16;

/// Topic ids are dense from 0 and below this.
pub const MAX_TOPICS: u32 = 1 << 16;

/// Checks a topic name.
pub(crate) fn validate_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 200 {
        return Err("topic names must be 1 to 200 characters long".into());
    }
    if name.starts_with('.') {
        return Err("topic names must not start with '.'".into());
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return Err("topic names may contain only ASCII letters, digits, '.', '_' and '-'".into());
    }
    Ok(())
}

/// File name of the segment starting at `base`.
pub(crate) fn segment_file_name(base: u64) -> String {
    format!("{base:020}{SEGMENT_SUFFIX}")
}

/// Base offset of a segment file name, if it is one.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

// ---------------------------------------------------------------------------------
// File-system helpers

/// Sorted base offsets of the segment files in a partition directory (empty if the
/// directory does not exist).
pub(crate) fn list_segments(part_dir: &Path) -> Result<Vec<u64>, LogError> {
    let rd = match fs::read_dir(part_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(LogError::io(part_dir, "list directory", e)),
    };
    let mut v = Vec::new();
    for ent in rd {
        let ent = ent.map_err(|e| LogError::io(part_dir, "list directory", e))?;
        if let Some(base) = ent.file_name().to_str().and_then(parse_segment_name) {
            v.push(base);
        }
    }
    v.sort_unstable();
    Ok(v)
}

/// Topics of a store: `(name, id, partitions)` sorted by name. Directories without a
/// meta file (an interrupted creation) are skipped.
pub(crate) fn read_topics(dir: &Path) -> Result<Vec<(String, TopicId, u32)>, LogError> {
    let tdir = dir.join(TOPICS_DIR);
    let rd = match fs::read_dir(&tdir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(LogError::io(&tdir, "list directory", e)),
    };
    let mut v = Vec::new();
    for ent in rd {
        let ent = ent.map_err(|e| LogError::io(&tdir, "list directory", e))?;
        let Some(name) = ent.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if validate_topic_name(&name).is_err() {
            continue;
        }
        let meta_path = ent.path().join(META_FILE);
        match read_meta(&meta_path)? {
            Some((id, parts)) => v.push((name, id, parts)),
            None => continue,
        }
    }
    v.sort();
    Ok(v)
}

/// Reads a meta file; `None` if it does not exist.
pub(crate) fn read_meta(meta_path: &Path) -> Result<Option<(TopicId, u32)>, LogError> {
    let text = match fs::read_to_string(meta_path) {
        Ok(t) => t,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) if e.kind() == ErrorKind::NotADirectory => return Ok(None),
        Err(e) => return Err(LogError::io(meta_path, "read", e)),
    };
    parse_meta(&text)
        .map(Some)
        .map_err(|r| LogError::corrupt(meta_path, 0, r))
}

/// fsyncs a directory (makes entries created/renamed/removed in it durable).
pub(crate) fn fsync_dir(dir: &Path) -> Result<(), LogError> {
    let f = File::open(dir).map_err(|e| LogError::io(dir, "open directory", e))?;
    f.sync_all()
        .map_err(|e| LogError::io(dir, "fsync directory", e))
}

/// Writes `data` to `dir/tmp_name`, fsyncs it, renames it to `dir/final_name` and
/// fsyncs `dir`.
pub(crate) fn write_atomic(
    dir: &Path,
    tmp_name: &str,
    final_name: &str,
    data: &[u8],
) -> Result<(), LogError> {
    let tmp = dir.join(tmp_name);
    let fin = dir.join(final_name);
    let mut f = File::create(&tmp).map_err(|e| LogError::io(&tmp, "create", e))?;
    f.write_all(data)
        .map_err(|e| LogError::io(&tmp, "write", e))?;
    f.sync_all().map_err(|e| LogError::io(&tmp, "fsync", e))?;
    drop(f);
    fs::rename(&tmp, &fin).map_err(|e| LogError::io(&fin, "rename into place", e))?;
    fsync_dir(dir)
}

/// Path of a partition directory.
pub(crate) fn partition_dir(topic_dir: &Path, partition: u32) -> PathBuf {
    topic_dir.join(partition.to_string())
}

/// Reads exactly `buf.len()` bytes at `pos` unless EOF comes first; returns the
/// number of bytes read.
pub(crate) fn read_at_most(
    file: &File,
    mut pos: u64,
    mut buf: &mut [u8],
) -> std::io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut n = 0;
    while !buf.is_empty() {
        match file.read_at(buf, pos) {
            Ok(0) => break,
            Ok(k) => {
                n += k;
                pos += k as u64;
                buf = &mut buf[k..];
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
