//! A shard's state in and out of a snapshot (the files are `crate::snapshot`'s).
//!
//! Entry: the key, `seq` = the key's next expected sequence number, and the state bytes
//! `[version u64][next_sub u8][home u32, only when homes are kept][stage state]` (see
//! [`ShardSettings::homed`](super::ShardSettings::homed); [`entry_home`] reads it). Held (early) records go in as extras of
//! kind `held`, with their input coordinates and their decoded values, so a restore puts
//! the reorder buffer back exactly as it was at the barrier.
//!
//! **Writing is copy-on-write.** At the barrier the shard only copies its held records
//! (bounded by the reorder capacity) and notes how many entries exist ([`Copy`]). From
//! then on an entry that existed at the barrier is written to the file just before its
//! first change ([`ShardCore::apply`] calls [`ShardCore::copy_before_write`]), and a sweep
//! ([`ShardCore::snapshot_step`], run between batches) writes the others. Entries created
//! after the barrier are not part of it. When the sweep is done, the rest (keys still only
//! in the restored snapshot, the index, fsync, rename) is a [`SnapshotJob`] for another
//! thread. So the shard never stops for the whole file.
//!
//! **Restore is lazy** when the snapshot has as many shards as the pipeline: each shard
//! keeps its mapped file ([`Base`]) and copies a key into its live map on first use
//! (lookups that miss the map look in the file). Keys never used stay in the file; the
//! next snapshot copies their bytes from it unchanged.

use std::sync::Arc;

use super::{Held, KeyEntry, NO_HOME, ShardCore};
use crate::batch::Part;
use crate::decode::Value;
use crate::hash::stable_hash;
use crate::snapshot::codec::{Put, Take};
use crate::snapshot::{EntryRef, Extra, ShardFileInfo, ShardSnapshot, ShardWriter};
use crate::stage::Stage;

/// Extra kind of a held record.
pub const HELD: &str = "held";

/// One bit per entry.
#[derive(Debug, Clone, Default)]
pub(crate) struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64)])
    }
    #[inline]
    fn get(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
    #[inline]
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
}

/// A restored snapshot file a shard serves its keys from until they are used.
pub(crate) struct Base {
    file: Arc<ShardSnapshot>,
    /// Entries copied into the live map (by entry number).
    taken: Bits,
    /// How many.
    taken_count: usize,
}

impl Base {
    /// Keys still only in the file.
    pub(crate) fn unread(&self) -> usize {
        self.file.len() as usize - self.taken_count
    }

    /// Entries in the file (taken or not): positions `0..len` of a scan.
    pub(super) fn len(&self) -> u32 {
        self.file.len() as u32
    }

    /// Takes the key out of the file into a live entry, if the file has it.
    pub(super) fn take<S: Stage>(
        &mut self,
        stage: &S,
        homed: bool,
        hash: u64,
        key: &[u8],
    ) -> Option<Result<KeyEntry<S::State>, String>> {
        let (n, e) = self.file.get_numbered(hash, key)?;
        if self.taken.get(n as usize) {
            // Taken keys are in the live map, which was looked at first.
            return None;
        }
        self.taken.set(n as usize);
        self.taken_count += 1;
        Some(decode_entry(stage, homed, hash, e).map(|mut entry| {
            entry.from_base = true;
            entry
        }))
    }

    /// Entry number `n` if it is still only in the file (else it is in the live map).
    pub(super) fn untaken(&self, n: u32) -> Option<EntryRef<'_>> {
        if self.taken.get(n as usize) {
            return None;
        }
        self.file.entry_at(n)
    }

    /// The key's entry if it is still only in the file.
    pub(super) fn peek(&self, hash: u64, key: &[u8]) -> Option<EntryRef<'_>> {
        let (n, e) = self.file.get_numbered(hash, key)?;
        (!self.taken.get(n as usize)).then_some(e)
    }
}

/// A key's entry from its snapshot bytes; `homed`: they hold the key's home partition.
fn decode_entry<S: Stage>(
    stage: &S,
    homed: bool,
    hash: u64,
    e: EntryRef<'_>,
) -> Result<KeyEntry<S::State>, String> {
    let mut t = Take(e.state);
    let key = || String::from_utf8_lossy(e.key).into_owned();
    let version = t
        .u64("the key's version")
        .map_err(|err| format!("key '{}': {err}", key()))?;
    let next_sub = t
        .u8("the key's next part")
        .map_err(|err| format!("key '{}': {err}", key()))?;
    // NO_HOME: a key of no partition (an insert-only projection's lane).
    let home = if homed {
        t.u32("the key's partition")
            .map_err(|err| format!("key '{}': {err}", key()))?
    } else {
        NO_HOME
    };
    let state = stage
        .decode_state(e.key, t.0)
        .map_err(|err| format!("key '{}': {err}", key()))?;
    let mut entry = KeyEntry::new(hash, e.key, e.seq, next_sub, version, state);
    entry.home = home;
    Ok(entry)
}

/// The home partition stored in an entry of a snapshot written with homes kept (see
/// the module docs); `None` if the bytes are too short.
pub fn entry_home(e: &EntryRef<'_>) -> Option<u32> {
    let b = e.state.get(9..13)?;
    Some(u32::from_le_bytes(b.try_into().ok()?))
}

/// A snapshot a shard is writing (see the module docs).
pub(crate) struct Copy {
    writer: Option<ShardWriter>,
    /// Entries that existed at the barrier; later ones are not in this snapshot.
    len: u32,
    /// The sweep's position: entries below it are written.
    next: u32,
    /// Entries at or above `next` already written because they were about to change.
    ahead: Bits,
    /// The restored file and which of its entries were taken at the barrier: the others
    /// go to the new file as they are.
    base: Option<(Arc<ShardSnapshot>, Bits)>,
    bytes: Vec<u8>,
    error: Option<String>,
}

impl Copy {
    /// Writes one entry; after an error, nothing (the file is abandoned).
    fn write<S: Stage>(&mut self, stage: &S, homed: bool, e: &KeyEntry<S::State>) {
        let Some(w) = self.writer.as_mut() else {
            return;
        };
        self.bytes.clear();
        self.bytes.put_u64(e.version);
        self.bytes.put_u8(e.next_sub);
        if homed {
            self.bytes.put_u32(e.home);
        }
        let result = if stage.encode_state(&e.state, &mut self.bytes) {
            w.push_hashed(e.hash, e.key.as_bytes(), e.next_seq, &self.bytes)
                .map_err(|err| err.to_string())
        } else {
            Err(CANNOT_ENCODE.to_string())
        };
        if let Err(why) = result {
            self.fail(why);
        }
    }

    fn fail(&mut self, why: String) {
        self.error.get_or_insert(why);
        // Dropping an unfinished writer removes its temp file.
        self.writer = None;
    }
}

const CANNOT_ENCODE: &str =
    "this stage's state cannot be snapshotted (a Rust stage without encode_state)";

/// What is left of a shard's snapshot once every live entry is written: run
/// [`finish`](Self::finish) on any thread.
pub struct SnapshotJob {
    writer: Option<ShardWriter>,
    base: Option<(Arc<ShardSnapshot>, Bits)>,
    error: Option<String>,
}

impl SnapshotJob {
    /// Writes the keys still only in the restored snapshot, the index; fsyncs and renames
    /// the file into place. `Err` says why the shard's file could not be written.
    pub fn finish(self) -> Result<ShardFileInfo, String> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let mut w = self
            .writer
            .ok_or_else(|| "internal: no snapshot writer".to_string())?;
        if let Some((file, taken)) = &self.base {
            for (n, e) in file.iter().enumerate() {
                if !taken.get(n) {
                    w.push_hashed(stable_hash(e.key), e.key, e.seq, e.state)
                        .map_err(|err| err.to_string())?;
                }
            }
        }
        w.finish().map_err(|e| e.to_string())
    }
}

/// A key found for reading: live, or decoded from the restored snapshot.
pub(super) enum KeyRef<'a, St> {
    Live(&'a KeyEntry<St>),
    Base(KeyEntry<St>),
}

impl<St> std::ops::Deref for KeyRef<'_, St> {
    type Target = KeyEntry<St>;
    fn deref(&self) -> &KeyEntry<St> {
        match self {
            KeyRef::Live(e) => e,
            KeyRef::Base(e) => e,
        }
    }
}

impl<S: Stage> ShardCore<S> {
    /// Starts this shard's part of the snapshot of the barrier just cut: held records now,
    /// entries copy-on-write from here on (see the module docs).
    pub fn begin_snapshot(&mut self, mut w: ShardWriter) {
        debug_assert!(self.copy.is_none(), "one snapshot at a time");
        let mut error = None;
        // Held records in a stable order: by entry, then as held.
        let mut idxs: Vec<&u32> = self.held.keys().collect();
        idxs.sort_unstable();
        let mut bytes = Vec::new();
        'held: for idx in idxs {
            let key = self.entries[*idx as usize].key.as_bytes();
            for h in &self.held[idx] {
                bytes.clear();
                put_held(&mut bytes, h);
                let (source, partition) = &self.inputs[h.input as usize];
                if let Err(e) = w.push_extra(Extra {
                    kind: HELD,
                    key,
                    seq: h.seq,
                    source,
                    partition: *partition,
                    offset: h.offset,
                    data: &bytes,
                }) {
                    error = Some(e.to_string());
                    break 'held;
                }
            }
        }
        let len = u32::try_from(self.entries.len()).expect("at most 2^32 keys per shard");
        let mut copy = Copy {
            writer: Some(w),
            len,
            next: 0,
            ahead: Bits::new(len as usize),
            base: self
                .base
                .as_ref()
                .map(|b| (b.file.clone(), b.taken.clone())),
            bytes: Vec::with_capacity(128),
            error: None,
        };
        if let Some(e) = error {
            copy.fail(e);
        }
        self.copy = Some(Box::new(copy));
    }

    /// A snapshot's entries are still being written.
    pub fn snapshot_pending(&self) -> bool {
        self.copy.is_some()
    }

    /// Writes up to `max` more entries of the snapshot in progress; once all are written,
    /// returns the rest of the work.
    pub fn snapshot_step(&mut self, max: usize) -> Option<SnapshotJob> {
        let c = self.copy.as_deref_mut()?;
        let mut n = 0;
        while c.next < c.len && n < max && c.writer.is_some() {
            let i = c.next;
            if !c.ahead.get(i as usize) {
                c.write(&*self.stage, self.cfg.homed, &self.entries[i as usize]);
                n += 1;
            }
            c.next += 1;
        }
        if c.next < c.len && c.writer.is_some() {
            return None;
        }
        let c = self.copy.take().expect("a snapshot in progress");
        Some(SnapshotJob {
            writer: c.writer,
            base: c.base,
            error: c.error,
        })
    }

    /// Copy-on-write: entry `idx` is about to change; if the snapshot in progress still
    /// needs its state as of the barrier, write it now.
    #[inline(never)]
    pub(super) fn copy_before_write(&mut self, idx: u32) {
        let Some(c) = self.copy.as_deref_mut() else {
            return;
        };
        if idx >= c.next && idx < c.len && !c.ahead.get(idx as usize) {
            c.ahead.set(idx as usize);
            c.write(&*self.stage, self.cfg.homed, &self.entries[idx as usize]);
        }
    }

    /// The key's entry for reading, live or still in the restored snapshot.
    pub(super) fn lookup(&self, hash: u64, key: &[u8]) -> Option<KeyRef<'_, S::State>> {
        if let Some(i) = self.find(hash, key) {
            return Some(KeyRef::Live(&self.entries[i as usize]));
        }
        let e = self.base.as_ref()?.peek(hash, key)?;
        // A state that does not decode is reported by the write path that needs it; a
        // read shows the key as absent meanwhile.
        decode_entry(&*self.stage, self.cfg.homed, hash, e)
            .ok()
            .map(KeyRef::Base)
    }

    /// Scan position `at`: the restored snapshot's entries come first (`0..base len`,
    /// shown from the live map once taken), then the live entries that did not come from
    /// it. Positions stay put while the shard runs. `None`: nothing to show there.
    pub(super) fn at_position(&self, at: u32) -> Option<KeyRef<'_, S::State>> {
        let base_len = self.base.as_ref().map_or(0, Base::len);
        if at < base_len {
            let b = self.base.as_ref().expect("positions below base_len");
            return match b.untaken(at) {
                Some(e) => decode_entry(&*self.stage, self.cfg.homed, stable_hash(e.key), e)
                    .ok()
                    .map(KeyRef::Base),
                None => {
                    let key = b.file.entry_at(at)?.key;
                    self.find(stable_hash(key), key)
                        .map(|i| KeyRef::Live(&self.entries[i as usize]))
                }
            };
        }
        let e = self.entries.get((at - base_len) as usize)?;
        (!e.from_base).then_some(KeyRef::Live(e))
    }

    /// Scan positions: `0..scan_len()` (see [`at_position`](Self::at_position)).
    pub(super) fn scan_len(&self) -> usize {
        self.base.as_ref().map_or(0, |b| b.len() as usize) + self.entries.len()
    }

    /// Serves keys from `file` (a snapshot of as many shards as this pipeline, this
    /// shard's file) until they are used: lazy restore. Call before any record is
    /// processed; then [`restore_held`](Self::restore_held) for its held records.
    pub fn attach_base(&mut self, file: Arc<ShardSnapshot>) {
        debug_assert!(self.entries.is_empty() && self.base.is_none());
        let n = file.len() as usize;
        self.base = Some(Base {
            file,
            taken: Bits::new(n),
            taken_count: 0,
        });
    }

    /// Adds a key from a snapshot to a shard that does not have it yet (eager restore,
    /// before any record is processed).
    pub fn restore_entry(&mut self, hash: u64, e: EntryRef<'_>) -> Result<(), String> {
        if self.find(hash, e.key).is_some() {
            return Err(format!(
                "key '{}' is in the snapshot twice",
                String::from_utf8_lossy(e.key)
            ));
        }
        let entry = decode_entry(&*self.stage, self.cfg.homed, hash, e)?;
        let i = u32::try_from(self.entries.len()).expect("at most 2^32 keys per shard");
        self.entries.push(entry);
        let entries = &self.entries;
        self.table
            .insert_unique(hash, i, |&j| entries[j as usize].hash);
        Ok(())
    }

    /// Puts a held record from a snapshot back into the reorder buffer; its key must have
    /// been restored (eagerly, or in the attached base). Call
    /// [`ShardCore::finish_restore`] after the last one.
    pub fn restore_held(&mut self, x: &Extra<'_>) -> Result<(), String> {
        if x.kind != HELD {
            return Err(format!("unknown extra record kind '{}'", x.kind));
        }
        let key = String::from_utf8_lossy(x.key);
        let Some(input) = self
            .inputs
            .iter()
            .position(|(s, p)| s == x.source && *p == x.partition)
        else {
            return Err(format!(
                "a record of key '{key}' held from source '{}' partition {}, which the pipeline does not read",
                x.source, x.partition
            ));
        };
        let hash = stable_hash(x.key);
        let known = self.find(hash, x.key).is_some()
            || self
                .base
                .as_ref()
                .is_some_and(|b| b.peek(hash, x.key).is_some());
        if !known {
            return Err(format!(
                "a record is held for key '{key}', which has no state"
            ));
        }
        let idx = self.entry_index(hash, x.key);
        if let Some(why) = self.fatal.take() {
            return Err(why);
        }
        let h = take_held(x.data, self.cfg.slots, input as u32, x.seq, x.offset)
            .map_err(|e| format!("a record held for key '{key}': {e}"))?;
        self.entries[idx as usize].held += 1;
        self.held.entry(idx).or_default().push(h);
        self.held_total += 1;
        self.expiry[input].push_back((x.offset, idx, x.seq));
        Ok(())
    }

    /// Orders the restored held records by offset per input, as they arrived.
    pub fn finish_restore(&mut self) {
        for q in &mut self.expiry {
            q.make_contiguous().sort_by_key(|&(offset, _, _)| offset);
        }
    }
}

fn put_held(out: &mut Vec<u8>, h: &Held) {
    out.put_u8(h.part.index);
    out.put_u8(h.part.count);
    out.put_u8(h.part.sub);
    out.put_u8(u8::from(h.part.last));
    out.put_u64(h.values.len() as u64);
    for v in h.values.iter() {
        match *v {
            Value::Missing => out.put_u8(0),
            Value::Null => out.put_u8(1),
            Value::Bool(b) => out.put_u8(2 + u8::from(b)),
            Value::Int(i) => {
                out.put_u8(4);
                out.put_i64(i);
            }
            Value::Float(f) => {
                out.put_u8(5);
                out.put_f64(f);
            }
            Value::Str(s, l) => {
                out.put_u8(6);
                out.put_u64(u64::from(s));
                out.put_u64(u64::from(l));
            }
            Value::Composite => out.put_u8(7),
        }
    }
    out.put_u64(u64::from(h.raw.0));
    out.put_u64(u64::from(h.raw.1));
    out.put_bytes(&h.arena);
    // Last, so that a held record of a snapshot written before headers were carried
    // (which ends here) still reads, as one without headers.
    out.put_u64(u64::from(h.headers));
}

fn take_held(data: &[u8], slots: usize, input: u32, seq: u64, offset: u64) -> Result<Held, String> {
    let mut t = Take(data);
    let part = Part {
        index: t.u8("the part index")?,
        count: t.u8("the part count")?,
        sub: t.u8("the part's sub-index")?,
        last: t.u8("the part's last flag")? != 0,
    };
    let n = t.count(1, "the number of values")?;
    if n != slots {
        return Err(format!(
            "it has {n} decoded fields, the pipeline reads {slots}"
        ));
    }
    let mut spans = Vec::with_capacity(n);
    let mut values = Vec::with_capacity(n);
    for _ in 0..n {
        values.push(match t.u8("a value's tag")? {
            0 => Value::Missing,
            1 => Value::Null,
            2 => Value::Bool(false),
            3 => Value::Bool(true),
            4 => Value::Int(t.i64("an int")?),
            5 => Value::Float(t.f64("a float")?),
            6 => {
                let (s, l) = (t.u64("a string's start")?, t.u64("a string's length")?);
                spans.push((s, l));
                Value::Str(s as u32, l as u32)
            }
            7 => Value::Composite,
            other => return Err(format!("unknown value tag {other}")),
        });
    }
    let raw = (
        t.u64("the raw record's start")?,
        t.u64("the raw record's length")?,
    );
    spans.push(raw);
    let arena: Box<[u8]> = t.bytes("the record's bytes")?.into();
    let headers = if t.0.is_empty() {
        0
    } else {
        t.u64("the headers' length")?
    };
    t.end()?;
    spans.push((raw.0.saturating_add(raw.1), headers));
    if spans
        .iter()
        .any(|&(s, l)| s.checked_add(l).is_none_or(|end| end > arena.len() as u64))
    {
        return Err("a string lies outside the record's bytes".into());
    }
    let at = (raw.0 + raw.1) as usize;
    if !crate::headers::is_valid(&arena[at..at + headers as usize]) {
        return Err("its headers are malformed".into());
    }
    Ok(Held {
        seq,
        part,
        input,
        offset,
        values: values.into(),
        raw: (raw.0 as u32, raw.1 as u32),
        headers: headers as u32,
        arena,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_record_keeps_its_headers_and_older_snapshots_still_read() {
        let mut headers = Vec::new();
        crate::headers::push(&mut headers, b"traceparent", Some(b"00-ab-01"));
        let mut arena = b"{\"k\":\"a\"}".to_vec();
        arena.extend_from_slice(&headers);
        let h = Held {
            seq: 3,
            part: Part::WHOLE,
            input: 0,
            offset: 7,
            values: Box::new([Value::Int(1)]),
            arena: arena.into(),
            raw: (0, 9),
            headers: headers.len() as u32,
        };
        let mut out = Vec::new();
        put_held(&mut out, &h);
        let back = take_held(&out, 1, 0, 3, 7).unwrap();
        assert_eq!(back.raw(), b"{\"k\":\"a\"}");
        assert_eq!(back.headers(), &headers[..]);
        // Written before headers were carried: no trailing length.
        let old = &out[..out.len() - 8];
        let back = take_held(old, 1, 0, 3, 7).unwrap();
        assert_eq!(back.raw(), b"{\"k\":\"a\"}");
        assert!(back.headers().is_empty());
        // A length past the bytes, or bytes that are no headers, are refused.
        let mut bad = out.clone();
        let n = bad.len();
        bad[n - 8..].copy_from_slice(&1000u64.to_le_bytes());
        assert!(take_held(&bad, 1, 0, 3, 7).is_err());
        bad[n - 8..].copy_from_slice(&3u64.to_le_bytes());
        assert!(take_held(&bad, 1, 0, 3, 7).is_err());
    }
}
