//! A shard's state in and out of a snapshot (the files are `crate::snapshot`'s).
//!
//! Entry: the key, `seq` = the key's next expected sequence number, and the state bytes
//! `[version u64][next_sub u8][stage state]`. Held (early) records go in as extras of
//! kind `held`, with their input coordinates and their decoded values, so a restore puts
//! the reorder buffer back exactly as it was at the barrier.

use super::{Held, KeyEntry, ShardCore};
use crate::batch::Part;
use crate::decode::Value;
use crate::snapshot::codec::{Put, Take};
use crate::snapshot::{EntryRef, Extra, ShardWriter, SnapshotError};
use crate::stage::Stage;

/// Extra kind of a held record.
pub const HELD: &str = "held";

impl<S: Stage> ShardCore<S> {
    /// Writes every key and every held record into `w`. `Ok(false)`: the stage keeps no
    /// snapshottable state (nothing was written).
    pub fn write_snapshot(&self, w: &mut ShardWriter) -> Result<bool, SnapshotError> {
        let mut bytes = Vec::with_capacity(128);
        for e in &self.entries {
            bytes.clear();
            bytes.put_u64(e.version);
            bytes.put_u8(e.next_sub);
            if !self.stage.encode_state(&e.state, &mut bytes) {
                return Ok(false);
            }
            w.push_hashed(e.hash, e.key.as_bytes(), e.next_seq, &bytes)?;
        }
        // Held records in a stable order: by entry, then as held.
        let mut idxs: Vec<&u32> = self.held.keys().collect();
        idxs.sort_unstable();
        for idx in idxs {
            let key = self.entries[*idx as usize].key.as_bytes();
            for h in &self.held[idx] {
                bytes.clear();
                put_held(&mut bytes, h);
                let (source, partition) = &self.inputs[h.input as usize];
                w.push_extra(Extra {
                    kind: HELD,
                    key,
                    seq: h.seq,
                    source,
                    partition: *partition,
                    offset: h.offset,
                    data: &bytes,
                })?;
            }
        }
        Ok(true)
    }

    /// Adds a key from a snapshot to a shard that does not have it yet (restore, before
    /// any record is processed).
    pub fn restore_entry(&mut self, hash: u64, e: EntryRef<'_>) -> Result<(), String> {
        let key = String::from_utf8_lossy(e.key);
        let mut t = Take(e.state);
        let version = t.u64("the key's version")?;
        let next_sub = t.u8("the key's next part")?;
        let state = self
            .stage
            .decode_state(e.key, t.0)
            .map_err(|err| format!("key '{key}': {err}"))?;
        if self.find(hash, e.key).is_some() {
            return Err(format!("key '{key}' is in the snapshot twice"));
        }
        let i = u32::try_from(self.entries.len()).expect("at most 2^32 keys per shard");
        self.entries
            .push(KeyEntry::new(hash, e.key, e.seq, next_sub, version, state));
        let entries = &self.entries;
        self.table
            .insert_unique(hash, i, |&j| entries[j as usize].hash);
        Ok(())
    }

    /// Puts a held record from a snapshot back into the reorder buffer; its key must have
    /// been restored. Call [`ShardCore::finish_restore`] after the last one.
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
        let hash = crate::hash::stable_hash(x.key);
        let Some(idx) = self.find(hash, x.key) else {
            return Err(format!(
                "a record is held for key '{key}', which has no state"
            ));
        };
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
    t.end()?;
    if spans
        .iter()
        .any(|&(s, l)| s.checked_add(l).is_none_or(|end| end > arena.len() as u64))
    {
        return Err("a string lies outside the record's bytes".into());
    }
    Ok(Held {
        seq,
        part,
        input,
        offset,
        values: values.into(),
        arena,
        raw: (raw.0 as u32, raw.1 as u32),
    })
}
