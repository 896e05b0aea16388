//! Routing a record that an `[upcast]` rule split into parts (`crate::upcast`): every part
//! is routed as a record of its own, all or nothing. If a part cannot be routed (no key,
//! a bad sequence number, a projection key that fails), no part goes anywhere and the
//! record is dead-lettered (`upcast_failed`), with the part and the reason.
//!
//! **Sequence numbers.** In a pipeline with `[key] sequence`, every part carries the
//! sequence number it has after upcasting: the stored record's, unless the part sets the
//! sequence field. Parts of one record with the same key and the same number are told
//! apart by a sub-index ([`Part::sub`]), and the shard applies a key's events in
//! `(sequence, sub)` order, with no gaps: after the last such part ([`Part::last`]) the
//! key expects the next number. So a record split into two events of its own key needs no
//! renumbering (the log written in the new version would have given them two numbers;
//! the key's state is the same either way), and a redelivered record is a duplicate part
//! by part. A part that moves to another key must carry that key's sequence number (set
//! the sequence field from the record, e.g. `seq = "event.to_seq"`): the stored record's
//! number belongs to its own key's sequence, not to another's.
//!
//! **Counting.** The record was read once, so it has one outcome: in a projection
//! pipeline it is processed here once its parts are delivered; in a keyed pipeline its
//! outcome is its part 0's (see `shard`), and a later part that is dead-lettered there is
//! counted apart (`Outcomes::part_errors`).

use super::{At, KeyAt, RecordEnv, Router, refuse};
use crate::batch::{EventBatch, OutBuf, Part, RECORD};
use crate::decode::Value;
use crate::hash::{SHARD_SALT, bucket, stable_hash};
use crate::stage::EventView;
use crate::stats::{DeadReason, Outcomes};
use crate::upcast::Parts;

/// Reused buffers for routing the parts of split records.
pub(super) struct Scratch {
    /// The parts, as the upcaster left them.
    pub(super) parts: Parts,
    /// Per part (keyed pipeline): key range in `keys`, key hash, sequence number.
    routes: Vec<(usize, usize, u64, u64)>,
    keys: Vec<u8>,
    /// Per part (projection pipeline): end of its deliveries in `Router::targets`.
    ends: Vec<usize>,
}

impl Scratch {
    pub(super) fn new(slots: usize) -> Self {
        Scratch {
            parts: Parts::new(slots),
            routes: Vec::new(),
            keys: Vec::new(),
            ends: Vec::new(),
        }
    }
}

impl Router {
    /// Routes the parts in `self.split.parts` (at least two) of the record `at`; returns
    /// the shard the last one went to. Their strings are in `self.scratch_arena`.
    pub(super) fn route_parts(
        &mut self,
        at: &At<'_>,
        batches: &mut [EventBatch],
        dead: &mut OutBuf,
        o: &mut Outcomes,
    ) -> Option<usize> {
        let n = self.split.parts.len();
        debug_assert!(n >= 2, "a split gives at least two parts");
        let count = u8::try_from(n).expect("at most MAX_UPCAST_PARTS parts");
        if self.projections.is_some() {
            return self.route_projection_parts(at, batches, dead, o, count);
        }
        // Every part's key and sequence number first: the record goes nowhere if one fails.
        let sc = &mut self.split;
        sc.routes.clear();
        sc.keys.clear();
        let key_slot = self.key_slot.expect("a keyed pipeline");
        for i in 0..n {
            let vals = sc.parts.get(i);
            let start = sc.keys.len();
            let route = part_key(
                vals[key_slot],
                &self.scratch_arena,
                &self.key_name,
                &mut sc.keys,
            )
            .and_then(|()| match self.seq_slot {
                None => Ok(0),
                Some(slot) => part_seq(vals[slot], &self.seq_name),
            });
            match route {
                Ok(seq) => {
                    let hash = stable_hash(&sc.keys[start..]);
                    sc.routes.push((start, sc.keys.len(), hash, seq));
                }
                Err(reason) => {
                    let detail = format!("part {} of {n} after upcasting: {reason}", i + 1);
                    return refuse(dead, &self.inputs, at, DeadReason::Upcast, &detail, b"", o);
                }
            }
        }
        o.split += 1;
        o.split_parts += n as u64;
        let sc = &self.split;
        let same = |i: usize, j: usize| {
            let (a, b) = (sc.routes[i], sc.routes[j]);
            a.2 == b.2 && a.3 == b.3 && sc.keys[a.0..a.1] == sc.keys[b.0..b.1]
        };
        let mut last_shard = None;
        for (i, &(start, end, key_hash, seq)) in sc.routes.iter().enumerate() {
            // At most MAX_UPCAST_PARTS parts: a few thousand comparisons at worst.
            let sub = (0..i).filter(|&j| same(i, j)).count();
            let part = Part {
                index: i as u8,
                count,
                sub: sub as u8,
                last: !(i + 1..n).any(|j| same(i, j)),
            };
            let shard = bucket(key_hash, SHARD_SALT, self.shards) as usize;
            Self::push(
                &self.scratch_arena,
                sc.parts.get(i),
                &mut batches[shard],
                KeyAt::Bytes(&sc.keys[start..end]),
                key_hash,
                seq,
                RECORD,
                part,
                at,
                None,
            );
            last_shard = Some(shard);
        }
        last_shard
    }

    /// A projection pipeline: every part is delivered to the projections that take it,
    /// as one record would be; the record is counted processed once.
    fn route_projection_parts(
        &mut self,
        at: &At<'_>,
        batches: &mut [EventBatch],
        dead: &mut OutBuf,
        o: &mut Outcomes,
        count: u8,
    ) -> Option<usize> {
        let pr = self.projections.as_ref().expect("projection pipeline");
        let sc = &mut self.split;
        let n = sc.parts.len();
        self.targets.clear();
        self.target_keys.clear();
        sc.ends.clear();
        for i in 0..n {
            let env = RecordEnv {
                ev: EventView {
                    values: sc.parts.get(i),
                    arena: &self.scratch_arena,
                },
                event_slots: &pr.event_slots,
            };
            if let Err(reason) =
                Self::projection_targets(pr, &env, at.raw, &mut self.targets, &mut self.target_keys)
            {
                let detail = format!("part {} of {n} after upcasting: {reason}", i + 1);
                return refuse(dead, &self.inputs, at, DeadReason::Upcast, &detail, b"", o);
            }
            sc.ends.push(self.targets.len());
        }
        o.processed += 1;
        o.split += 1;
        o.split_parts += n as u64;
        let mut last = None;
        let mut from = 0;
        for (i, &end) in sc.ends.iter().enumerate() {
            let part = Part {
                index: i as u8,
                count,
                sub: 0,
                last: true,
            };
            for &(target, start, key_end) in &self.targets[from..end] {
                let key = &self.target_keys[start..key_end];
                let key_hash = stable_hash(key);
                let shard = bucket(key_hash, SHARD_SALT, self.shards) as usize;
                Self::push(
                    &self.scratch_arena,
                    sc.parts.get(i),
                    &mut batches[shard],
                    KeyAt::Bytes(key),
                    key_hash,
                    0,
                    target,
                    part,
                    at,
                    None,
                );
                last = Some(shard);
            }
            from = end;
        }
        last
    }
}

/// Appends the key of a part to `keys` (as the router reads a record's key), or says why
/// it has none.
fn part_key(v: Value, arena: &[u8], name: &str, keys: &mut Vec<u8>) -> Result<(), String> {
    match v {
        Value::Str(s, l) if l > 0 => keys.extend_from_slice(&arena[s as usize..(s + l) as usize]),
        Value::Int(k) => keys.extend_from_slice(itoa::Buffer::new().format(k).as_bytes()),
        Value::Missing => return Err(format!("the key field '{name}' is missing")),
        Value::Str(..) => {
            return Err(format!(
                "the key field '{name}' must be a non-empty string or an integer, got an empty string"
            ));
        }
        other => {
            return Err(format!(
                "the key field '{name}' must be a non-empty string or an integer, got {}",
                other.kind()
            ));
        }
    }
    Ok(())
}

/// The sequence number of a part, or why it has none.
fn part_seq(v: Value, name: &str) -> Result<u64, String> {
    match v {
        Value::Int(s) if s >= 0 => Ok(s as u64),
        Value::Missing => Err(format!("the sequence field '{name}' is missing")),
        Value::Int(s) => Err(format!(
            "the sequence field '{name}' must be a non-negative integer, got {s}"
        )),
        other => Err(format!(
            "the sequence field '{name}' must be a non-negative integer, got {}",
            other.kind()
        )),
    }
}
