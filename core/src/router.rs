//! The router's per-record work: decode, extract key and sequence, pick the shard, and
//! append the event to that shard's batch. Records that cannot be routed become dead
//! letters here. No threads or channels in this file (see `engine`). Records that an
//! `[upcast]` rule splits are routed part by part in `router/split.rs`.

mod split;

use std::sync::Arc;

use smallvec::SmallVec;

use crate::batch::{Event, EventBatch, OutBuf, Part, RECORD};
use crate::cloudevents::EnvelopeCheck;
use crate::config::{FieldPath, Format, Pipeline, ProjectionsConfig, projection_slots};
use crate::decode::{DecodeError, Extractor, Value};
use crate::expr::{Env, Program, Slot, Val};
use crate::hash::{SHARD_SALT, bucket, stable_hash};
use crate::shard::{InputNames, dead_letter};
use crate::stage::{EventView, RowKeys, RowRouter};
use crate::stats::{DeadReason, Outcomes};
use crate::upcast::{Upcast, Upcaster};

/// The record being routed, as dead letters and batches need it.
struct At<'r> {
    input: u32,
    offset: u64,
    ts_ms: u64,
    raw: &'r [u8],
    /// Its headers, encoded (`crate::headers`; empty for none).
    headers: &'r [u8],
    /// False while replaying: dead letters are counted, not written.
    emit_dead: bool,
}

/// Dead-letters the record being routed (`key` if it has one) and routes it nowhere.
fn refuse(
    dead: &mut OutBuf,
    inputs: &InputNames,
    at: &At<'_>,
    reason: DeadReason,
    detail: &str,
    key: &[u8],
    o: &mut Outcomes,
) -> Option<usize> {
    dead_letter(
        dead,
        inputs,
        reason,
        detail,
        at.input,
        at.offset,
        key,
        None,
        at.raw,
        at.headers,
        at.emit_dead,
        o,
    );
    None
}

/// Where the key of an event is: a string of the decoded record, or bytes of its own.
/// Where [`Router::push`] put a record's bytes in a shard batch: its decoded strings
/// from `base`, its raw bytes (then its headers) from `raw_at`.
#[derive(Debug, Clone, Copy)]
struct Copied {
    base: u32,
    raw_at: u32,
}

/// The copies of one record made so far, by shard (a record is copied once per batch,
/// however many of its deliveries go there). A few deliveries per record: a short list.
#[derive(Default)]
struct Copies(SmallVec<[(usize, Copied); 4]>);

impl Copies {
    #[inline]
    fn get(&self, shard: usize) -> Option<Copied> {
        self.0.iter().find(|(s, _)| *s == shard).map(|&(_, c)| c)
    }

    #[inline]
    fn set(&mut self, shard: usize, c: Copied) {
        if self.get(shard).is_none() {
            self.0.push((shard, c));
        }
    }
}

enum KeyAt<'a> {
    Scratch(u32, u32),
    Bytes(&'a [u8]),
}

/// Decodes records and routes them to shard batches.
pub struct Router {
    extractor: Extractor,
    /// Slot of `[key] field` (absent in a projection pipeline).
    key_slot: Option<usize>,
    key_name: String,
    seq_slot: Option<usize>,
    seq_name: String,
    shards: u32,
    inputs: InputNames,
    scratch_arena: Vec<u8>,
    scratch_vals: Vec<Value>,
    upcaster: Option<Upcaster>,
    projections: Option<ProjectionRouting>,
    /// CloudEvents envelope check, and which inputs need it (by dense input index).
    envelopes: Option<(EnvelopeCheck, Vec<bool>)>,
    /// Deliveries of the current record: (projection, key range in `target_keys`).
    targets: Vec<(u32, usize, usize)>,
    target_keys: Vec<u8>,
    /// A stage that keys records itself (a Rust projection), and its keys' buffer.
    row_router: Option<(Arc<dyn RowRouter>, RowKeys)>,
    /// Parts of a split record, and where each goes.
    split: split::Scratch,
}

/// How a projection pipeline routes: every projection's `when` and `key`.
struct ProjectionRouting {
    list: Vec<(String, Option<Arc<Program>>, Arc<Program>)>,
    /// Per projection, for an insert-only one, its lane key on each shard: its rows are
    /// not kept, so its deliveries are spread over the shards by a hash of the record's
    /// bytes (not its offset: the state must not depend on where a record sits in its
    /// input) under these keys, and the stage computes the row key
    /// (`crate::stage::projection::lane_keys`).
    lanes: Vec<Option<Vec<Vec<u8>>>>,
    /// Decoder slot of each `event.<path>`.
    event_slots: Vec<usize>,
}

impl ProjectionRouting {
    fn new(ps: &ProjectionsConfig, fields: &[FieldPath], shards: u32) -> Self {
        ProjectionRouting {
            lanes: ps
                .list
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    p.insert_only
                        .then(|| crate::stage::projection::lane_keys(i as u16, shards))
                })
                .collect(),
            list: ps
                .list
                .iter()
                .map(|p| {
                    (
                        p.name.clone(),
                        p.when.as_ref().map(|w| w.program.clone()),
                        p.key.program.clone(),
                    )
                })
                .collect(),
            event_slots: ps
                .event_fields
                .iter()
                .map(|e| {
                    fields
                        .iter()
                        .position(|f| f == e)
                        .expect("event fields are referenced")
                })
                .collect(),
        }
    }
}

/// `event.<path>` of the record being routed.
struct RecordEnv<'a> {
    ev: EventView<'a>,
    event_slots: &'a [usize],
}

impl Env for RecordEnv<'_> {
    fn get(&self, slot: Slot) -> Option<Val<'_>> {
        let j = slot.0.checked_sub(projection_slots::EVENT)? as usize;
        self.ev.val(*self.event_slots.get(j)?)
    }
}

impl Router {
    /// A router for a checked pipeline.
    pub fn new(p: &Pipeline, inputs: InputNames) -> Self {
        let fields = p.referenced_fields();
        let ce_inputs = p
            .sources
            .iter()
            .any(|s| s.format == Format::CloudEvents)
            .then(|| {
                let per_input = inputs
                    .iter()
                    .map(|(name, _)| {
                        p.sources
                            .iter()
                            .any(|s| &s.name == name && s.format == Format::CloudEvents)
                    })
                    .collect();
                (EnvelopeCheck::new(&fields), per_input)
            });
        let seq_slot = p.key.sequence.as_ref().map(|s| {
            fields
                .iter()
                .position(|f| f == s)
                .expect("sequence is referenced")
        });
        Router {
            extractor: Extractor::new(&fields),
            key_slot: p.key.field.as_ref().map(|k| {
                fields
                    .iter()
                    .position(|f| f == k)
                    .expect("key is referenced")
            }),
            key_name: p
                .key
                .field
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            projections: p
                .projections
                .as_ref()
                .map(|ps| ProjectionRouting::new(ps, &fields, p.shards as u32)),
            seq_slot,
            seq_name: p
                .key
                .sequence
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            shards: p.shards as u32,
            inputs,
            scratch_arena: Vec::new(),
            scratch_vals: vec![Value::Missing; fields.len()],
            upcaster: p.upcast.as_ref().map(|u| Upcaster::new(u, &fields)),
            targets: Vec::new(),
            target_keys: Vec::new(),
            envelopes: ce_inputs,
            row_router: None,
            split: split::Scratch::new(fields.len()),
        }
    }

    /// Routes by the rows `r` names for each record instead of `[key]` or the declared
    /// `[[projections]]` (see [`crate::stage::Stage::row_router`]).
    pub fn with_row_router(mut self, r: Arc<dyn RowRouter>) -> Self {
        self.projections = None;
        self.row_router = Some((r, RowKeys::new()));
        self
    }

    /// The names of the dense input indexes.
    pub fn inputs(&self) -> &InputNames {
        &self.inputs
    }

    /// Whether one record may go to several shards (projection deliveries, rows a stage
    /// names itself, or the parts of a record that an `[upcast]` rule split): then every
    /// shard's batch may have grown.
    pub fn fans_out(&self) -> bool {
        self.projections.is_some()
            || self.row_router.is_some()
            || self.upcaster.as_ref().is_some_and(Upcaster::splits)
    }

    /// Number of values per event.
    pub fn slots(&self) -> usize {
        self.extractor.slots()
    }

    /// Decodes one record (`raw`, with its `headers` encoded as in [`crate::headers`],
    /// empty for none) and appends it to `batches[shard]`, or dead-letters it into
    /// `dead`. Returns the shard it went to.
    #[allow(clippy::too_many_arguments)]
    pub fn route(
        &mut self,
        input: u32,
        offset: u64,
        ts_ms: u64,
        raw: &[u8],
        headers: &[u8],
        batches: &mut [EventBatch],
        dead: &mut OutBuf,
        emit_dead: bool,
        o: &mut Outcomes,
    ) -> Option<usize> {
        // hot path
        let at = At {
            input,
            offset,
            ts_ms,
            raw,
            headers,
            emit_dead,
        };
        self.scratch_arena.clear();
        if let Err(e) = self
            .extractor
            .extract(raw, &mut self.scratch_arena, &mut self.scratch_vals)
        {
            let reason = match e {
                DecodeError::Malformed(_) => DeadReason::Malformed,
                DecodeError::NotAnObject => DeadReason::NotAnObject,
            };
            return refuse(dead, &self.inputs, &at, reason, &e.to_string(), b"", o);
        }
        if let Some((check, per_input)) = &self.envelopes
            && per_input[input as usize]
            && let Err(detail) = check.check(&self.scratch_vals, &self.scratch_arena)
        {
            return refuse(
                dead,
                &self.inputs,
                &at,
                DeadReason::InvalidCloudEvent,
                &detail,
                b"",
                o,
            );
        }
        if let Some(up) = &self.upcaster {
            let parts = &mut self.split.parts;
            match up.apply(&mut self.scratch_vals, &mut self.scratch_arena, parts) {
                Ok(Upcast::One) => {}
                Ok(Upcast::Split) => return self.route_parts(&at, batches, dead, o),
                Err(detail) => {
                    return refuse(dead, &self.inputs, &at, DeadReason::Upcast, &detail, b"", o);
                }
            }
        }
        if self.projections.is_some() {
            return self.route_projections(&at, batches, dead, o);
        }
        if self.row_router.is_some() {
            return self.route_rows(&at, batches, dead, o);
        }
        let key_val = self.scratch_vals[self.key_slot.expect("a keyed pipeline")];
        let mut int_key = itoa::Buffer::new();
        let key: &[u8] = match key_val {
            Value::Str(s, l) if l > 0 => &self.scratch_arena[s as usize..(s + l) as usize],
            Value::Int(i) => int_key.format(i).as_bytes(),
            Value::Missing => {
                let detail = format!("the key field '{}' is missing", self.key_name);
                return refuse(
                    dead,
                    &self.inputs,
                    &at,
                    DeadReason::MissingKey,
                    &detail,
                    b"",
                    o,
                );
            }
            other => {
                let kind = if matches!(other, Value::Str(..)) {
                    "an empty string"
                } else {
                    other.kind()
                };
                let detail = format!(
                    "the key field '{}' must be a non-empty string or an integer, got {kind}",
                    self.key_name
                );
                return refuse(dead, &self.inputs, &at, DeadReason::BadKey, &detail, b"", o);
            }
        };
        let seq = match self.seq_slot {
            None => 0,
            Some(slot) => match self.scratch_vals[slot] {
                Value::Int(i) if i >= 0 => i as u64,
                other => {
                    let got = match other {
                        Value::Int(i) => format!("{i}"),
                        Value::Float(f) => format!("{f}"),
                        Value::Str(..) => format!(
                            "a string ({:?})",
                            String::from_utf8_lossy(self.str_of(other))
                        ),
                        o => o.kind().to_string(),
                    };
                    let detail = if other == Value::Missing {
                        format!("the sequence field '{}' is missing", self.seq_name)
                    } else {
                        format!(
                            "the sequence field '{}' must be a non-negative integer, got {got}",
                            self.seq_name
                        )
                    };
                    return refuse(
                        dead,
                        &self.inputs,
                        &at,
                        DeadReason::BadSequence,
                        &detail,
                        key,
                        o,
                    );
                }
            },
        };
        let key_hash = stable_hash(key);
        let shard = bucket(key_hash, SHARD_SALT, self.shards) as usize;
        let key_range = match key_val {
            Value::Str(s, l) => KeyAt::Scratch(s, l),
            _ => KeyAt::Bytes(key),
        };
        Self::push(
            &self.scratch_arena,
            &self.scratch_vals,
            &mut batches[shard],
            key_range,
            key_hash,
            seq,
            RECORD,
            Part::WHOLE,
            &at,
            None,
        );
        Some(shard)
    }

    /// Copies the decoded record into a shard's batch, rebasing string ranges, and
    /// returns where its copy is (`Copied`). With `shared`, the record's bytes are
    /// already in this batch from another delivery of it (a projection record with two
    /// rows on one shard): the event points at them and only its key is added.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn push(
        scratch_arena: &[u8],
        scratch_vals: &[Value],
        b: &mut EventBatch,
        key: KeyAt<'_>,
        key_hash: u64,
        seq: u64,
        target: u32,
        part: Part,
        at: &At<'_>,
        shared: Option<Copied>,
    ) -> Copied {
        // hot path
        let copied = match shared {
            Some(c) => c,
            None => {
                let base = b.arena.len() as u32;
                b.arena.extend_from_slice(scratch_arena);
                let raw_at = b.arena.len() as u32;
                b.arena.extend_from_slice(at.raw);
                b.arena.extend_from_slice(at.headers);
                Copied { base, raw_at }
            }
        };
        let base = copied.base;
        for v in scratch_vals {
            b.values.push(match *v {
                Value::Str(s, l) => Value::Str(s + base, l),
                other => other,
            });
        }
        let key_range = match key {
            KeyAt::Scratch(s, l) => (s + base, l),
            KeyAt::Bytes(k) => {
                let at = b.arena.len() as u32;
                b.arena.extend_from_slice(k);
                (at, k.len() as u32)
            }
        };
        let raw_at = copied.raw_at;
        b.events.push(Event {
            input: at.input,
            offset: at.offset,
            ts_ms: at.ts_ms,
            key_hash,
            key: key_range,
            seq,
            raw: (raw_at, at.raw.len() as u32),
            headers: at.headers.len() as u32,
            target,
            part,
        });
        copied
    }

    /// A projection pipeline: computes every projection's row key for the record and
    /// sends one delivery per projection that takes it. The record is counted here
    /// (processed, or dead-lettered when a `when` or `key` fails); deliveries are not.
    fn route_projections(
        &mut self,
        at: &At<'_>,
        batches: &mut [EventBatch],
        dead: &mut OutBuf,
        o: &mut Outcomes,
    ) -> Option<usize> {
        let pr = self.projections.as_ref().expect("projection pipeline");
        let env = RecordEnv {
            ev: EventView {
                values: &self.scratch_vals,
                arena: &self.scratch_arena,
            },
            event_slots: &pr.event_slots,
        };
        // Keys of this record's deliveries, end to end in one reused buffer.
        self.targets.clear();
        self.target_keys.clear();
        if let Err(detail) =
            Self::projection_targets(pr, &env, at.raw, &mut self.targets, &mut self.target_keys)
        {
            return refuse(dead, &self.inputs, at, DeadReason::BadKey, &detail, b"", o);
        }
        o.processed += 1;
        let mut last = None;
        let mut copies = Copies::default();
        for &(target, start, end) in &self.targets {
            let key = &self.target_keys[start..end];
            let key_hash = stable_hash(key);
            let shard = bucket(key_hash, SHARD_SALT, self.shards) as usize;
            let c = Self::push(
                &self.scratch_arena,
                &self.scratch_vals,
                &mut batches[shard],
                KeyAt::Bytes(key),
                key_hash,
                0,
                target,
                Part::WHOLE,
                at,
                copies.get(shard),
            );
            copies.set(shard, c);
            last = Some(shard);
        }
        last
    }

    /// Appends the deliveries of the record in `env` to `targets`: `(projection, its row
    /// key's range in target_keys)` for every projection that takes it. `Err` says which
    /// `when` or `key` failed.
    fn projection_targets(
        pr: &ProjectionRouting,
        env: &RecordEnv<'_>,
        raw: &[u8],
        targets: &mut Vec<(u32, usize, usize)>,
        target_keys: &mut Vec<u8>,
    ) -> Result<(), String> {
        let mut failure = None;
        let mut spread = None;
        for (i, (name, when, key)) in pr.list.iter().enumerate() {
            if let Some(w) = when {
                match w.eval_bool(env) {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(e) => {
                        failure = Some(format!("projection '{name}': when `{}`: {e}", w.source()));
                        break;
                    }
                }
            }
            if let Some(lanes) = &pr.lanes[i] {
                let start = target_keys.len();
                let h = *spread.get_or_insert_with(|| stable_hash(raw));
                target_keys.extend_from_slice(&lanes[(h % lanes.len() as u64) as usize]);
                targets.push((i as u32, start, target_keys.len()));
                continue;
            }
            // Row keys are namespaced by projection: two projections may use the same key.
            let start = target_keys.len();
            target_keys.extend_from_slice(&(i as u16).to_be_bytes());
            match key.eval(env) {
                Ok(v) => match crate::stage::projection::row_key(&v, &mut itoa::Buffer::new()) {
                    Ok(bytes) => target_keys.extend_from_slice(bytes),
                    Err(got) => {
                        failure = Some(crate::stage::projection::bad_row_key(
                            name,
                            key.source(),
                            &got,
                        ));
                        break;
                    }
                },
                Err(e) => {
                    failure = Some(format!("projection '{name}': key `{}`: {e}", key.source()));
                    break;
                }
            }
            targets.push((i as u32, start, target_keys.len()));
        }
        failure.map_or(Ok(()), Err)
    }

    /// A stage that keys records itself: one delivery per row its [`RowRouter`] names.
    /// Counted like a projection record (processed here, or dead-lettered `bad_key`).
    fn route_rows(
        &mut self,
        at: &At<'_>,
        batches: &mut [EventBatch],
        dead: &mut OutBuf,
        o: &mut Outcomes,
    ) -> Option<usize> {
        // hot path
        let (hook, keys) = self.row_router.as_mut().expect("a self-routing stage");
        keys.clear();
        if let Err(detail) = hook.route(at.raw, keys) {
            return refuse(dead, &self.inputs, at, DeadReason::BadKey, &detail, b"", o);
        }
        o.processed += 1;
        let mut last = None;
        let mut copies = Copies::default();
        for (table, key) in keys.iter() {
            let key_hash = stable_hash(key);
            let shard = bucket(key_hash, SHARD_SALT, self.shards) as usize;
            let c = Self::push(
                &self.scratch_arena,
                &self.scratch_vals,
                &mut batches[shard],
                KeyAt::Bytes(key),
                key_hash,
                0,
                u32::from(table),
                Part::WHOLE,
                at,
                copies.get(shard),
            );
            copies.set(shard, c);
            last = Some(shard);
        }
        last
    }

    fn str_of(&self, v: Value) -> &[u8] {
        match v {
            Value::Str(s, l) => &self.scratch_arena[s as usize..(s + l) as usize],
            _ => b"",
        }
    }
}
