//! A shard: owns the state of its keys exclusively (no locks), checks per-key sequence
//! numbers, holds early records in a bounded reorder buffer, applies the logic stage and
//! buffers the epoch's outputs until the barrier.

use std::collections::VecDeque;
use std::sync::Arc;

use hashbrown::HashTable;
use hashbrown::hash_table::Entry;

use crate::batch::{EventBatch, OutBuf, Part, RECORD, write_json_str, write_uint};
use crate::config::{EmitMode, Pipeline};
use crate::decode::Value;
use crate::hash::{PARTITION_SALT, bucket};
use crate::stage::{Applied, Emit, EventView, Stage};
use crate::stats::{DeadReason, Outcomes};

/// Partition marking an upsert superseded by a later one of the same key (dropped at the barrier).
const SUPERSEDED: u32 = u32::MAX;

/// Names of the dense input indexes: `inputs[i] = (source name, partition)`.
pub type InputNames = Arc<Vec<(String, u32)>>;

/// A record that arrived ahead of a gap, with its own copy of its bytes.
#[derive(Debug)]
struct Held {
    seq: u64,
    part: Part,
    input: u32,
    offset: u64,
    values: Box<[Value]>,
    arena: Box<[u8]>,
    raw: (u32, u32),
    /// Length of its encoded headers, right after `raw` in `arena`.
    headers: u32,
}

impl Held {
    fn raw(&self) -> &[u8] {
        &self.arena[self.raw.0 as usize..(self.raw.0 + self.raw.1) as usize]
    }

    fn headers(&self) -> &[u8] {
        let at = (self.raw.0 + self.raw.1) as usize;
        &self.arena[at..at + self.headers as usize]
    }
}

/// Key bytes, stored inline when short (most keys) so that a lookup touches one cache line.
#[derive(Debug, Clone)]
enum KeyBytes {
    Inline(u8, [u8; 30]),
    Heap(Box<[u8]>),
}

impl KeyBytes {
    fn new(k: &[u8]) -> Self {
        if k.len() <= 30 {
            let mut buf = [0u8; 30];
            buf[..k.len()].copy_from_slice(k);
            KeyBytes::Inline(k.len() as u8, buf)
        } else {
            KeyBytes::Heap(k.into())
        }
    }

    #[inline]
    fn as_bytes(&self) -> &[u8] {
        match self {
            KeyBytes::Inline(n, b) => &b[..*n as usize],
            KeyBytes::Heap(b) => b,
        }
    }
}

struct KeyEntry<St> {
    hash: u64,
    key: KeyBytes,
    /// Next expected sequence number.
    next_seq: u64,
    /// Next expected part of a split record with that number (`Part::sub`): a key applies
    /// its events in `(seq, sub)` order. 0 but between parts of one record.
    next_sub: u8,
    /// Version of the read model: the last applied sequence number, or the number of
    /// applied records when sequences are off.
    version: u64,
    /// Changed since its last render this epoch, and in the `dirty` list.
    dirty: bool,
    /// Copied from the restored snapshot this shard serves keys from (`ShardCore::base`).
    from_base: bool,
    /// `rendered_gen == generation`: this epoch's upsert of the key is `outputs.recs[rendered_rec]`
    /// (rendered ahead of the barrier; superseded if the key changes again).
    rendered_gen: u32,
    rendered_rec: u32,
    /// How many early records of this key wait in `HeldStore` (usually none).
    held: u32,
    /// The input partition that keeps the key ([`ShardSettings::homed`]): where it was
    /// first seen. [`NO_HOME`] until then, and when homes are not kept.
    home: u32,
    state: St,
}

/// [`KeyEntry::home`] of a key not seen yet, or when homes are not kept.
const NO_HOME: u32 = u32::MAX;

impl<St> KeyEntry<St> {
    /// A key's entry with nothing rendered or held yet.
    fn new(hash: u64, key: &[u8], next_seq: u64, next_sub: u8, version: u64, state: St) -> Self {
        KeyEntry {
            hash,
            key: KeyBytes::new(key),
            next_seq,
            next_sub,
            version,
            dirty: false,
            from_base: false,
            rendered_gen: 0,
            rendered_rec: 0,
            held: 0,
            home: NO_HOME,
            state,
        }
    }
}

/// What a shard hands to the committer at a barrier.
#[derive(Debug)]
pub struct ShardPart {
    /// Epoch the part belongs to.
    pub epoch: u64,
    /// Upserts for the view topic.
    pub outputs: OutBuf,
    /// Dead letters.
    pub dead: OutBuf,
    /// Records the stage wrote to its own outputs ([`Stage::outputs`]), one buffer each.
    pub emitted: Vec<OutBuf>,
}

/// Settings a shard needs from the pipeline.
#[derive(Debug, Clone)]
pub struct ShardSettings {
    /// Sequence checks on?
    pub sequenced: bool,
    /// First sequence number of a key.
    pub sequence_start: u64,
    /// Reorder buffer capacity (records held at once in this shard).
    pub reorder_capacity: usize,
    /// Reorder window in offsets of the held record's partition.
    pub reorder_window: u64,
    /// Emission mode.
    pub emit: EmitMode,
    /// Partitions of the view topic.
    pub view_partitions: u32,
    /// Number of decoded values per event.
    pub slots: usize,
    /// Each key belongs to the input partition it was first seen on (`[kafka]
    /// assignment = "group"`: instances own partitions, so state must follow them). A
    /// record of the key from another partition is dead-lettered
    /// ([`DeadReason::PartitionMismatch`]), and snapshots store each key's partition so
    /// that a partition's keys can be restored without the others'.
    pub homed: bool,
}

impl ShardSettings {
    /// From a checked pipeline.
    pub fn new(p: &Pipeline) -> Self {
        ShardSettings {
            sequenced: p.key.sequence.is_some(),
            sequence_start: p.key.sequence_start,
            reorder_capacity: p.reorder.capacity,
            reorder_window: p.reorder.window,
            emit: p.view.emit,
            view_partitions: p.view.partitions,
            slots: p.referenced_fields().len(),
            homed: p.homed_keys(),
        }
    }
}

/// The per-shard state machine, free of threads and I/O (the thread loop is in `engine`).
///
/// Keys live in a slab (`entries`, never shrinking) indexed by a compact hash table of
/// `u32` slots, so a probe stays in cache and the dirty list is a list of indexes.
pub struct ShardCore<S: Stage> {
    stage: Arc<S>,
    cfg: ShardSettings,
    inputs: InputNames,
    table: HashTable<u32>,
    entries: slab::Slab<KeyEntry<S::State>>,
    /// Early records by entry index; kept out of the entries so they stay small.
    held: hashbrown::HashMap<u32, Vec<Held>>,
    held_total: usize,
    /// Per input: held records in arrival order `(offset, entry index, seq)`; entries
    /// whose record was released meanwhile are skipped when popped.
    expiry: Vec<VecDeque<(u64, u32, u64)>>,
    /// Entries changed since their last render this epoch (per-epoch emission).
    dirty: Vec<u32>,
    /// Per-epoch emission: the headers of the last record that changed a dirty entry, by
    /// entry index, as ranges of `dirty_header_bytes`; only entries whose last change
    /// had headers are here (so it stays empty, and costless, without headers).
    dirty_headers: hashbrown::HashMap<u32, (u32, u32)>,
    dirty_header_bytes: Vec<u8>,
    /// This epoch's generation (see `KeyEntry::rendered_gen`); never 0.
    generation: u32,
    /// Records in `outputs` superseded by a later render of the same key.
    superseded: usize,
    outputs: OutBuf,
    dead: OutBuf,
    /// The stage's own outputs for this epoch, one per [`Stage::outputs`] entry.
    emitted: Vec<OutBuf>,
    /// Partitions of each of the stage's outputs.
    emitted_partitions: Vec<u32>,
    /// The restored snapshot file whose keys this shard serves until they change (lazy
    /// restore): a key missing from `table` is looked up there before it counts as new.
    base: Option<snapshot::Base>,
    /// The snapshot being written (copy-on-write: an entry goes to the file before it
    /// first changes after the barrier, or when the sweep reaches it).
    copy: Option<Box<snapshot::Copy>>,
    /// A state from `base` could not be decoded: the run must stop before its epoch
    /// commits (see [`ShardCore::take_fatal`]).
    fatal: Option<String>,
    /// The entry index of each event of the batch being processed (reused across batches).
    batch_entries: Vec<u32>,
}

impl<S: Stage> ShardCore<S> {
    /// A shard with no keys.
    pub fn new(stage: Arc<S>, cfg: ShardSettings, inputs: InputNames) -> Self {
        let n = inputs.len();
        let emitted_partitions: Vec<u32> = stage.outputs().iter().map(|o| o.partitions).collect();
        ShardCore {
            emitted: emitted_partitions
                .iter()
                .map(|_| OutBuf::default())
                .collect(),
            emitted_partitions,
            stage,
            cfg,
            inputs,
            table: HashTable::new(),
            entries: slab::Slab::new(),
            held: hashbrown::HashMap::new(),
            held_total: 0,
            expiry: (0..n).map(|_| VecDeque::new()).collect(),
            dirty: Vec::new(),
            dirty_headers: hashbrown::HashMap::new(),
            dirty_header_bytes: Vec::new(),
            generation: 1,
            superseded: 0,
            outputs: OutBuf::default(),
            dead: OutBuf::default(),
            base: None,
            copy: None,
            fatal: None,
            batch_entries: Vec::new(),
        }
    }

    /// Number of keys with state (those still only in the restored snapshot included).
    pub fn keys(&self) -> usize {
        match &self.base {
            Some(b) => self.entries.len() + b.unread(),
            None => self.entries.len(),
        }
    }

    /// Why the shard cannot go on (a restored state it could not read), once: the caller
    /// must stop without committing the epoch in progress.
    pub fn take_fatal(&mut self) -> Option<String> {
        self.fatal.take()
    }

    /// Records held right now.
    pub fn held(&self) -> usize {
        self.held_total
    }

    fn find(&self, hash: u64, key: &[u8]) -> Option<u32> {
        let entries = &self.entries;
        self.table
            .find(hash, |&i| {
                let e = &entries[i as usize];
                e.hash == hash && e.key.as_bytes() == key
            })
            .copied()
    }

    /// Index of the key's entry, created on first sight (from the restored snapshot when
    /// it has the key).
    #[inline]
    fn entry_index(&mut self, hash: u64, key: &[u8]) -> u32 {
        let entries = &mut self.entries;
        match self.table.entry(
            hash,
            |&i| {
                let e = &entries[i as usize];
                e.hash == hash && e.key.as_bytes() == key
            },
            |&i| entries[i as usize].hash,
        ) {
            Entry::Occupied(o) => *o.get(),
            Entry::Vacant(v) => {
                let i = u32::try_from(entries.len()).expect("at most 2^32 keys per shard");
                let from_base = match self.base.as_mut() {
                    Some(b) => b.take(&*self.stage, self.cfg.homed, hash, key),
                    None => None,
                };
                let entry = match from_base {
                    Some(Ok(e)) => e,
                    other => {
                        if let Some(Err(why)) = other {
                            // Checksums and the fingerprint passed, so this is a bug: stop
                            // the run before anything built on a wrong state commits.
                            self.fatal.get_or_insert(why);
                        }
                        let state = self.stage.new_state(key);
                        KeyEntry::new(hash, key, self.cfg.sequence_start, 0, 0, state)
                    }
                };
                entries.push(entry);
                v.insert(i);
                i
            }
        }
    }

    /// Processes a batch of events of this shard, in order.
    pub fn process(&mut self, batch: &EventBatch) -> Outcomes {
        // hot path
        let mut o = Outcomes::default();
        // What happens to later parts of split records: not their records' outcomes (a
        // record's is its part 0's); only their dead letters are kept, as part errors.
        let mut later = Outcomes::default();
        let emit = !batch.replay;
        let slots = self.cfg.slots;
        // Every key of the batch is looked up first: the lookups do not depend on each
        // other, so the processor overlaps their cache misses (on the table and on the
        // entry, whose key the probe compares) instead of paying them one after another
        // in the middle of each record's work. Nothing here removes an entry, so the
        // indexes stay valid; new keys get their entries in the same order as before.
        let mut entries = std::mem::take(&mut self.batch_entries);
        entries.clear();
        entries.extend(
            batch
                .events
                .iter()
                .map(|ev| self.entry_index(ev.key_hash, batch.bytes(ev.key))),
        );
        // Then, while applying record i, the state of record i + AHEAD is fetched: the
        // lookup brought the start of its entry into cache, not the rest of the state
        // (a row's fields further on in the entry, or on the heap).
        const AHEAD: usize = 4;
        for (i, ev) in batch.events.iter().enumerate() {
            if let Some(&next) = entries.get(i + AHEAD) {
                self.stage.prefetch(&self.entries[next as usize].state);
            }
            let values = &batch.values[i * slots..(i + 1) * slots];
            let key = batch.bytes(ev.key);
            let idx = entries[i];
            let view = EventView {
                values,
                arena: &batch.arena,
            };
            let raw = batch.bytes(ev.raw);
            let headers = batch.headers(ev);
            if self.cfg.homed
                && (ev.target == RECORD || self.stage.keeps_rows(ev.target))
                && !self.at_home(idx, ev.input)
            {
                if ev.target == RECORD {
                    let oc = sink(&mut o, &mut later, ev.part, ev.target);
                    self.refuse_foreign(
                        idx, ev.input, ev.offset, ev.seq, raw, headers, emit, ev.part, oc,
                    );
                } else {
                    // The record was counted by the router; this row's update failed.
                    let mut scratch = Outcomes::default();
                    self.refuse_foreign(
                        idx,
                        ev.input,
                        ev.offset,
                        ev.seq,
                        raw,
                        headers,
                        emit,
                        ev.part,
                        &mut scratch,
                    );
                    o.delivery_errors += 1;
                }
                continue;
            }
            if !self.cfg.sequenced {
                let oc = sink(&mut o, &mut later, ev.part, ev.target);
                self.apply(
                    idx, view, ev.input, ev.offset, 0, raw, headers, emit, ev.target, ev.part, oc,
                );
                continue;
            }
            let entry = &mut self.entries[idx as usize];
            // Positions are (seq, sub): sub is 0 except for parts of a split record.
            let at = (ev.seq, ev.part.sub);
            let next = (entry.next_seq, entry.next_sub);
            if at < next
                || (entry.held > 0
                    && self
                        .held
                        .get(&idx)
                        .is_some_and(|v| v.iter().any(|h| (h.seq, h.part.sub) == at)))
            {
                sink(&mut o, &mut later, ev.part, ev.target).duplicates += 1;
            } else if at > next {
                let oc = sink(&mut o, &mut later, ev.part, ev.target);
                if self.held_total >= self.cfg.reorder_capacity {
                    let detail = format!(
                        "sequence gap: expected {}, got {}; the reorder buffer is full ({} records held in this shard)",
                        Position(next),
                        Position(at),
                        self.held_total
                    );
                    dead_letter(
                        &mut self.dead,
                        &self.inputs,
                        DeadReason::ReorderBufferFull,
                        &part_detail(&detail, ev.part),
                        ev.input,
                        ev.offset,
                        key,
                        Some(ev.seq),
                        raw,
                        headers,
                        emit,
                        oc,
                    );
                } else {
                    // Hold a self-contained copy (rebased strings + raw bytes).
                    let mut arena = Vec::new();
                    let mut vals: Box<[Value]> = values.into();
                    for v in vals.iter_mut() {
                        if let Value::Str(s, l) = *v {
                            let at = arena.len() as u32;
                            arena.extend_from_slice(&batch.arena[s as usize..(s + l) as usize]);
                            *v = Value::Str(at, l);
                        }
                    }
                    let raw_at = arena.len() as u32;
                    arena.extend_from_slice(raw);
                    arena.extend_from_slice(headers);
                    entry.held += 1;
                    self.held.entry(idx).or_default().push(Held {
                        seq: ev.seq,
                        part: ev.part,
                        input: ev.input,
                        offset: ev.offset,
                        values: vals,
                        arena: arena.into(),
                        raw: (raw_at, ev.raw.1),
                        headers: ev.headers,
                    });
                    self.held_total += 1;
                    oc.held_delta += 1;
                    self.expiry[ev.input as usize].push_back((ev.offset, idx, ev.seq));
                }
            } else {
                let oc = sink(&mut o, &mut later, ev.part, ev.target);
                self.apply(
                    idx, view, ev.input, ev.offset, ev.seq, raw, headers, emit, ev.target, ev.part,
                    oc,
                );
                // Release held successors that are now in order.
                loop {
                    let entry = &mut self.entries[idx as usize];
                    if entry.held == 0 {
                        break;
                    }
                    let next = (entry.next_seq, entry.next_sub);
                    let Some(h) = take_held(&mut self.held, idx, |h| (h.seq, h.part.sub) == next)
                    else {
                        break;
                    };
                    entry.held -= 1;
                    self.held_total -= 1;
                    let oc = sink(&mut o, &mut later, h.part, RECORD);
                    oc.held_delta -= 1;
                    let view = EventView {
                        values: &h.values,
                        arena: &h.arena,
                    };
                    self.apply(
                        idx,
                        view,
                        h.input,
                        h.offset,
                        h.seq,
                        h.raw(),
                        h.headers(),
                        emit,
                        RECORD,
                        h.part,
                        oc,
                    );
                }
            }
            self.expire(ev.input, ev.offset, emit, &mut o, &mut later);
        }
        self.batch_entries = entries;
        o.part_errors += later.dead_total();
        o
    }

    /// Whether a record of `input` may change entry `idx`: the entry's home partition is
    /// the input's (set here on first sight).
    #[inline]
    fn at_home(&mut self, idx: u32, input: u32) -> bool {
        let partition = self.inputs[input as usize].1;
        let entry = &mut self.entries[idx as usize];
        if entry.home == NO_HOME {
            entry.home = partition;
        }
        entry.home == partition
    }

    /// Dead-letters a record of a key kept by another partition (see [`ShardSettings::homed`]).
    #[allow(clippy::too_many_arguments)]
    #[cold]
    fn refuse_foreign(
        &mut self,
        idx: u32,
        input: u32,
        offset: u64,
        seq: u64,
        raw: &[u8],
        headers: &[u8],
        emit: bool,
        part: Part,
        o: &mut Outcomes,
    ) {
        let entry = &self.entries[idx as usize];
        let key = &entry.key.as_bytes()[self.stage.key_prefix_len()..];
        let detail = format!(
            "key '{}' is kept by partition {} (where it was first seen), and this record comes from partition {}: with [kafka] assignment = \"group\" instances own partitions, so all records of a key (of a projection row) must be in one partition; key the input topic by the pipeline key, or use assignment = \"all\"",
            String::from_utf8_lossy(key),
            entry.home,
            self.inputs[input as usize].1
        );
        dead_letter(
            &mut self.dead,
            &self.inputs,
            DeadReason::PartitionMismatch,
            &part_detail(&detail, part),
            input,
            offset,
            key,
            self.cfg.sequenced.then_some(seq),
            raw,
            headers,
            emit,
            o,
        );
    }

    /// Applies one in-order record (sequence already checked) and emits per the mode.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn apply(
        &mut self,
        idx: u32,
        view: EventView<'_>,
        input: u32,
        offset: u64,
        seq: u64,
        raw: &[u8],
        headers: &[u8],
        emit: bool,
        target: u32,
        part: Part,
        o: &mut Outcomes,
    ) {
        // hot path
        if self.copy.is_some() {
            self.copy_before_write(idx);
        }
        let entry = &mut self.entries[idx as usize];
        if self.cfg.sequenced {
            // The slot is consumed whether the stage accepts the record or not, so that one
            // bad record does not stall its key forever. After a part of a split record with
            // more parts of this key and number to come, the key waits for the next part.
            (entry.next_seq, entry.next_sub) = if part.last {
                (seq + 1, 0)
            } else {
                (seq, part.sub + 1)
            };
        }
        let delivery = target != RECORD;
        let (source, partition) = &self.inputs[input as usize];
        // A refused record must leave no output behind, whatever the stage wrote.
        let marks: smallvec::SmallVec<[(usize, usize); 4]> =
            self.emitted.iter().map(OutBuf::mark).collect();
        let mut out = Emit {
            key: entry.key.as_bytes(),
            key_hash: entry.hash,
            source,
            partition: *partition,
            offset,
            target,
            part,
            raw,
            headers,
            outs: &mut self.emitted,
            partitions: &self.emitted_partitions,
            enabled: emit,
        };
        match self.stage.apply(&mut entry.state, view, &mut out) {
            Ok(applied) => {
                if !delivery {
                    o.processed += 1;
                }
                entry.version = if self.cfg.sequenced {
                    seq
                } else {
                    entry.version + 1
                };
                if applied == Applied::Rejected {
                    o.rejected += 1;
                }
                if !emit || applied != Applied::Changed {
                    return;
                }
                match self.cfg.emit {
                    EmitMode::PerEvent => {
                        let (out, parts) = view_buf(
                            &*self.stage,
                            &self.cfg,
                            &entry.state,
                            &mut self.outputs,
                            &mut self.emitted,
                            &self.emitted_partitions,
                        );
                        render(&*self.stage, entry, out, parts);
                        out.set_headers(headers);
                    }
                    EmitMode::PerEpoch => {
                        if !entry.dirty {
                            entry.dirty = true;
                            self.dirty.push(idx);
                        }
                        // The upsert carries the headers of the last change.
                        if !headers.is_empty() {
                            let at = self.dirty_header_bytes.len() as u32;
                            self.dirty_header_bytes.extend_from_slice(headers);
                            self.dirty_headers.insert(idx, (at, headers.len() as u32));
                        } else if !self.dirty_headers.is_empty() {
                            self.dirty_headers.remove(&idx);
                        }
                    }
                }
            }
            Err(refused) => {
                for (buf, mark) in self.emitted.iter_mut().zip(marks) {
                    buf.truncate(mark);
                }
                let key = &entry.key.as_bytes()[self.stage.key_prefix_len()..];
                let mut scratch = Outcomes::default();
                dead_letter(
                    &mut self.dead,
                    &self.inputs,
                    refused.reason,
                    &part_detail(&refused.detail, part),
                    input,
                    offset,
                    key,
                    self.cfg.sequenced.then_some(seq),
                    raw,
                    headers,
                    emit,
                    if delivery { &mut scratch } else { o },
                );
                if delivery {
                    // The record was counted by the router; this projection's update failed.
                    o.delivery_errors += 1;
                }
            }
        }
    }

    /// Dead-letters records of `input` held for longer than the window.
    fn expire(
        &mut self,
        input: u32,
        offset: u64,
        emit: bool,
        o: &mut Outcomes,
        later: &mut Outcomes,
    ) {
        let window = self.cfg.reorder_window;
        let q = &mut self.expiry[input as usize];
        while let Some(&(held_offset, idx, seq)) = q.front() {
            if held_offset.saturating_add(window) >= offset {
                break;
            }
            q.pop_front();
            let entry = &mut self.entries[idx as usize];
            let Some(h) = take_held(&mut self.held, idx, |h| {
                h.seq == seq && h.offset == held_offset
            }) else {
                continue;
            };
            entry.held -= 1;
            self.held_total -= 1;
            let oc = sink(o, later, h.part, RECORD);
            oc.held_delta -= 1;
            let detail = format!(
                "sequence gap: expected {}, got {}; the gap was not filled within {} records of its partition",
                Position((entry.next_seq, entry.next_sub)),
                Position((h.seq, h.part.sub)),
                window
            );
            dead_letter(
                &mut self.dead,
                &self.inputs,
                DeadReason::GapNotFilled,
                &part_detail(&detail, h.part),
                h.input,
                h.offset,
                entry.key.as_bytes(),
                Some(h.seq),
                h.raw(),
                h.headers(),
                emit,
                oc,
            );
        }
    }

    /// Changed keys whose upsert is not rendered yet (per-epoch emission).
    pub fn render_pending(&self) -> usize {
        self.dirty.len()
    }

    /// Renders up to `max` changed keys ahead of the barrier, so that the barrier itself
    /// has little left to do. The shard thread calls this while its queue is empty: at light
    /// load the epoch's upserts are ready when the barrier arrives (lower commit latency),
    /// under full load it never runs and nothing is rendered twice. A key that changes again
    /// after its render is rendered again; the older record is dropped at the barrier.
    pub fn render_ahead(&mut self, max: usize) {
        // The dirty entries are scattered over the slab and mostly out of cache by now:
        // fetch a few ahead so the misses overlap instead of adding up.
        const AHEAD: usize = 8;
        let n = max.min(self.dirty.len());
        for j in 0..n {
            if let Some(&next) = self.dirty.get(j + AHEAD) {
                let e = &self.entries[next as usize];
                prefetch(e);
                prefetch(&e.state);
            }
            let idx = self.dirty[j];
            let entry = &mut self.entries[idx as usize];
            entry.dirty = false;
            let (out, parts) = view_buf(
                &*self.stage,
                &self.cfg,
                &entry.state,
                &mut self.outputs,
                &mut self.emitted,
                &self.emitted_partitions,
            );
            if entry.rendered_gen == self.generation {
                out.recs[entry.rendered_rec as usize].partition = SUPERSEDED;
                self.superseded += 1;
            }
            entry.rendered_gen = self.generation;
            entry.rendered_rec = u32::try_from(out.recs.len()).expect("< 2^32 upserts an epoch");
            render(&*self.stage, entry, out, parts);
            if !self.dirty_headers.is_empty()
                && let Some((at, len)) = self.dirty_headers.remove(&idx)
            {
                out.set_headers(&self.dirty_header_bytes[at as usize..(at + len) as usize]);
            }
        }
        self.dirty.drain(..n);
        if self.dirty_headers.is_empty() {
            self.dirty_header_bytes.clear();
        }
    }

    /// Ends the epoch: renders the changed keys still pending (per-epoch emission) and
    /// hands over the buffers.
    ///
    /// `spare` is an emptied buffer from an earlier epoch to reuse (no fresh pages to fault in).
    pub fn barrier(&mut self, epoch: u64, spare: Option<OutBuf>) -> ShardPart {
        self.render_ahead(usize::MAX);
        if self.superseded > 0 {
            for b in std::iter::once(&mut self.outputs).chain(self.emitted.iter_mut()) {
                b.recs.retain(|r| r.partition != SUPERSEDED);
            }
            self.superseded = 0;
        }
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            // Once in 2^32 epochs: forget every render stamp so none can match by wrapping.
            for e in self.entries.iter_mut() {
                e.rendered_gen = 0;
            }
            self.generation = 1;
        }
        let fresh = match spare {
            Some(mut b) => {
                b.data.clear();
                b.recs.clear();
                b
            }
            None => OutBuf {
                data: Vec::with_capacity(self.outputs.data.capacity()),
                recs: Vec::with_capacity(self.outputs.recs.capacity()),
            },
        };
        let outputs = std::mem::replace(&mut self.outputs, fresh);
        let dead = std::mem::take(&mut self.dead);
        let emitted = self
            .emitted
            .iter_mut()
            .map(|b| {
                let cap = (b.data.capacity(), b.recs.capacity());
                std::mem::replace(
                    b,
                    OutBuf {
                        data: Vec::with_capacity(cap.0),
                        recs: Vec::with_capacity(cap.1),
                    },
                )
            })
            .collect();
        ShardPart {
            epoch,
            outputs,
            dead,
            emitted,
        }
    }

    /// The read model of one key as JSON (for tests and queries).
    pub fn render_key(&self, key: &[u8]) -> Option<String> {
        let e = self.lookup(crate::hash::stable_hash(key), key)?;
        let mut out = OutBuf::default();
        render(&*self.stage, &e, &mut out, 1);
        out.iter()
            .next()
            .map(|(_, _, v)| String::from_utf8_lossy(v).into_owned())
    }
}

/// Hints the CPU to load the cache lines of `s`, up to the first 256 bytes (a row's
/// fields; no effect where unsupported).
#[inline(always)]
pub(crate) fn prefetch_slice<T>(s: &[T]) {
    let bytes = std::mem::size_of_val(s).min(256);
    let start = s.as_ptr().cast::<u8>();
    for off in (0..bytes).step_by(64) {
        prefetch_at(start.wrapping_add(off));
    }
}

/// Hints the CPU to load the cache line at `p` (no effect where unsupported).
#[inline(always)]
fn prefetch<T>(p: &T) {
    prefetch_at((p as *const T).cast::<u8>());
}

/// Hints the CPU to load the cache line at address `p` (no effect where unsupported).
#[inline(always)]
fn prefetch_at(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetching is a hint that never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Where the outcome of an event is counted: its record's (`o`), unless it is a later part
/// of a split record in a keyed pipeline (`later`); projection deliveries are counted by
/// the router whatever their part.
#[inline]
fn sink<'o>(
    o: &'o mut Outcomes,
    later: &'o mut Outcomes,
    part: Part,
    target: u32,
) -> &'o mut Outcomes {
    if part.counted() || target != RECORD {
        o
    } else {
        later
    }
}

/// `detail`, saying which part the event is when it is one of a split record's (its dead
/// letter carries the whole stored record).
fn part_detail(detail: &str, part: Part) -> std::borrow::Cow<'_, str> {
    if part.is_split() {
        format!(
            "{detail} (part {} of {} of a record split by [upcast])",
            u32::from(part.index) + 1,
            part.count
        )
        .into()
    } else {
        detail.into()
    }
}

/// A key's position `(seq, sub)` in messages: `7`, or `7 (part 2)` between the parts of a
/// split record with that number.
struct Position((u64, u8));

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            (seq, 0) => write!(f, "{seq}"),
            (seq, sub) => write!(f, "{seq} (part {})", u32::from(sub) + 1),
        }
    }
}

/// Removes and returns the first held record of entry `idx` that matches.
fn take_held(
    held: &mut hashbrown::HashMap<u32, Vec<Held>>,
    idx: u32,
    pred: impl Fn(&Held) -> bool,
) -> Option<Held> {
    let list = held.get_mut(&idx)?;
    let pos = list.iter().position(pred)?;
    let h = list.swap_remove(pos);
    if list.is_empty() {
        held.remove(&idx);
    }
    Some(h)
}

/// The buffer (and its topic's partition count) a key's read model goes to.
fn view_buf<'a, S: Stage>(
    stage: &S,
    cfg: &ShardSettings,
    state: &S::State,
    outputs: &'a mut OutBuf,
    emitted: &'a mut [OutBuf],
    emitted_partitions: &[u32],
) -> (&'a mut OutBuf, u32) {
    match stage.view_output(state) {
        Some(i) => (&mut emitted[i], emitted_partitions[i]),
        None => (outputs, cfg.view_partitions),
    }
}

/// Writes the key's upsert `{"key":K,"version":V,<fields>}`, or `null` when deleted.
fn render<S: Stage>(stage: &S, entry: &KeyEntry<S::State>, out: &mut OutBuf, partitions: u32) {
    let prefix = stage.key_prefix_len();
    let key = &entry.key.as_bytes()[prefix..];
    // A row's partition follows the key its readers see, not the namespace prefix (which
    // changes when projections are reordered in the file).
    let hash = if prefix == 0 {
        entry.hash
    } else {
        crate::hash::stable_hash(key)
    };
    let partition = bucket(hash, PARTITION_SALT, partitions);
    if stage.is_deleted(&entry.state) {
        out.push_with(partition, key, |buf| buf.extend_from_slice(b"null"));
        return;
    }
    out.push_with(partition, key, |buf| {
        buf.extend_from_slice(b"{\"key\":");
        write_json_str(buf, key);
        buf.extend_from_slice(b",\"version\":");
        write_uint(buf, stage.version(&entry.state).unwrap_or(entry.version));
        let mark = buf.len();
        buf.push(b',');
        stage.render(&entry.state, buf);
        if buf.len() == mark + 1 {
            buf.pop();
        }
        buf.push(b'}');
    });
}

/// Counts a dead letter and, unless replaying, writes it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn dead_letter(
    dead: &mut OutBuf,
    inputs: &InputNames,
    reason: DeadReason,
    detail: &str,
    input: u32,
    offset: u64,
    key: &[u8],
    seq: Option<u64>,
    raw: &[u8],
    headers: &[u8],
    emit: bool,
    o: &mut Outcomes,
) {
    o.dead[reason as usize] += 1;
    if !emit {
        return;
    }
    let (source, partition) = &inputs[input as usize];
    dead.push_with(0, key, |buf| {
        buf.extend_from_slice(b"{\"reason\":");
        write_json_str(buf, reason.name().as_bytes());
        buf.extend_from_slice(b",\"stage\":");
        write_json_str(buf, reason.stage().as_bytes());
        buf.extend_from_slice(b",\"detail\":");
        write_json_str(buf, detail.as_bytes());
        buf.extend_from_slice(b",\"source\":");
        write_json_str(buf, source.as_bytes());
        buf.extend_from_slice(format!(",\"partition\":{partition},\"offset\":{offset}").as_bytes());
        if !key.is_empty() {
            buf.extend_from_slice(b",\"key\":");
            write_json_str(buf, key);
        }
        if let Some(s) = seq {
            buf.extend_from_slice(format!(",\"seq\":{s}").as_bytes());
        }
        buf.extend_from_slice(b",\"payload\":");
        write_json_str(buf, raw);
        buf.push(b'}');
    });
    dead.set_headers(headers);
}

mod query;
mod slab;
mod snapshot;
mod temporal;
pub use snapshot::{SnapshotJob, entry_home};
#[cfg(test)]
mod tests;
