//! The router's per-record work: decode, extract key and sequence, pick the shard, and
//! append the event to that shard's batch. Records that cannot be routed become dead
//! letters here. No threads or channels in this file (see `engine`).

use crate::batch::{Event, EventBatch, OutBuf};
use crate::config::Pipeline;
use crate::decode::{DecodeError, Extractor, Value};
use crate::hash::{SHARD_SALT, bucket, stable_hash};
use crate::shard::{InputNames, dead_letter};
use crate::stats::{DeadReason, Outcomes};
use crate::upcast::Upcaster;

/// Decodes records and routes them to shard batches.
pub struct Router {
    extractor: Extractor,
    key_slot: usize,
    key_name: String,
    seq_slot: Option<usize>,
    seq_name: String,
    shards: u32,
    inputs: InputNames,
    scratch_arena: Vec<u8>,
    scratch_vals: Vec<Value>,
    upcaster: Option<Upcaster>,
}

impl Router {
    /// A router for a checked pipeline.
    pub fn new(p: &Pipeline, inputs: InputNames) -> Self {
        let fields = p.referenced_fields();
        let seq_slot = p.key.sequence.as_ref().map(|s| {
            fields
                .iter()
                .position(|f| f == s)
                .expect("sequence is referenced")
        });
        Router {
            extractor: Extractor::new(&fields),
            key_slot: fields
                .iter()
                .position(|f| *f == p.key.field)
                .expect("key is referenced"),
            key_name: p.key.field.to_string(),
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
        }
    }

    /// Number of values per event.
    pub fn slots(&self) -> usize {
        self.extractor.slots()
    }

    /// Decodes one record and appends it to `batches[shard]`, or dead-letters it into `dead`.
    /// Returns the shard it went to.
    #[allow(clippy::too_many_arguments)]
    pub fn route(
        &mut self,
        input: u32,
        offset: u64,
        ts_ms: u64,
        raw: &[u8],
        batches: &mut [EventBatch],
        dead: &mut OutBuf,
        emit_dead: bool,
        o: &mut Outcomes,
    ) -> Option<usize> {
        // hot path
        self.scratch_arena.clear();
        if let Err(e) = self
            .extractor
            .extract(raw, &mut self.scratch_arena, &mut self.scratch_vals)
        {
            let reason = match e {
                DecodeError::Malformed(_) => DeadReason::Malformed,
                DecodeError::NotAnObject => DeadReason::NotAnObject,
            };
            dead_letter(
                dead,
                &self.inputs,
                reason,
                &e.to_string(),
                input,
                offset,
                b"",
                None,
                raw,
                emit_dead,
                o,
            );
            return None;
        }
        if let Some(up) = &self.upcaster
            && let Err(detail) = up.apply(&mut self.scratch_vals, &mut self.scratch_arena)
        {
            dead_letter(
                dead,
                &self.inputs,
                DeadReason::Upcast,
                &detail,
                input,
                offset,
                b"",
                None,
                raw,
                emit_dead,
                o,
            );
            return None;
        }
        let key_val = self.scratch_vals[self.key_slot];
        let mut int_key = [0u8; 20];
        let key: &[u8] = match key_val {
            Value::Str(s, l) if l > 0 => &self.scratch_arena[s as usize..(s + l) as usize],
            Value::Int(i) => {
                use std::io::Write;
                let mut cur = std::io::Cursor::new(&mut int_key[..]);
                write!(cur, "{i}").expect("20 bytes hold any i64");
                let n = cur.position() as usize;
                &int_key[..n]
            }
            Value::Missing => {
                let detail = format!("the key field '{}' is missing", self.key_name);
                dead_letter(
                    dead,
                    &self.inputs,
                    DeadReason::MissingKey,
                    &detail,
                    input,
                    offset,
                    b"",
                    None,
                    raw,
                    emit_dead,
                    o,
                );
                return None;
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
                dead_letter(
                    dead,
                    &self.inputs,
                    DeadReason::BadKey,
                    &detail,
                    input,
                    offset,
                    b"",
                    None,
                    raw,
                    emit_dead,
                    o,
                );
                return None;
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
                    let key = key.to_vec();
                    dead_letter(
                        dead,
                        &self.inputs,
                        DeadReason::BadSequence,
                        &detail,
                        input,
                        offset,
                        &key,
                        None,
                        raw,
                        emit_dead,
                        o,
                    );
                    return None;
                }
            },
        };
        let key_hash = stable_hash(key);
        let shard = bucket(key_hash, SHARD_SALT, self.shards) as usize;
        let b = &mut batches[shard];
        // Copy the event into the shard's batch, rebasing string ranges.
        let base = b.arena.len() as u32;
        b.arena.extend_from_slice(&self.scratch_arena);
        for v in &self.scratch_vals {
            b.values.push(match *v {
                Value::Str(s, l) => Value::Str(s + base, l),
                other => other,
            });
        }
        let key_range = match key_val {
            Value::Str(s, l) => (s + base, l),
            _ => {
                let at = b.arena.len() as u32;
                b.arena.extend_from_slice(key);
                (at, key.len() as u32)
            }
        };
        let raw_at = b.arena.len() as u32;
        b.arena.extend_from_slice(raw);
        b.events.push(Event {
            input,
            offset,
            ts_ms,
            key_hash,
            key: key_range,
            seq,
            raw: (raw_at, raw.len() as u32),
        });
        Some(shard)
    }

    fn str_of(&self, v: Value) -> &[u8] {
        match v {
            Value::Str(s, l) => &self.scratch_arena[s as usize..(s + l) as usize],
            _ => b"",
        }
    }
}
