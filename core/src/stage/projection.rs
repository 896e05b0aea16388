//! The projections stage: read models built from event streams, as declared in
//! `[[projections]]` (`crate::config::ProjectionsConfig`).
//!
//! The router computes each projection's row key for a record and delivers the record
//! once per projection that takes it, to the shard that owns that row (keys are
//! namespaced by a 2-byte projection index). Here, per delivery, every handler of the
//! projection whose `types` and `when` match sets fields of the row (all of a handler's
//! assignments read the row as it was before it), and `delete` removes the row (a `null`
//! tombstone in the projection's topic; a later event creates it afresh).
//!
//! A failing expression (overflow, missing field, wrong type) leaves the row unchanged
//! and dead-letters this delivery with the projection's name; the record's other
//! projections are not affected.

use smallvec::SmallVec;

use super::{Applied, Emit, EventView, Fields, OutputSpec, Refused, Stage, TableSpec};
use crate::batch::write_json_str;
use crate::config::{FieldPath, ProjectionsConfig, projection_slots as slots};
use crate::decode::Value;
use crate::expr::{Cell, Env, Slot, Type, Val};
use crate::stats::DeadReason;

/// Bytes of the projection index at the start of every row key.
const PREFIX: usize = 2;

/// One row of one projection.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Index of its projection.
    pub projection: u16,
    /// Deleted by a handler (rendered as a tombstone until it is written again).
    pub deleted: bool,
    /// Field values, in the projection's field order.
    pub fields: Fields,
}

struct Compiled {
    /// Rendered `"name":` per field.
    prefixes: Vec<Box<[u8]>>,
    /// Cloning them for a new row allocates only strings longer than [`Cell::INLINE`].
    defaults: Box<[Cell]>,
    /// Per handler, per `set` entry: the expression is the projection's `key` (the same
    /// source, a string), so its value is the row key the router computed from this
    /// very event: read it instead of evaluating again (e.g. a daily report's `day`).
    is_key: Vec<Box<[bool]>>,
}

/// The stage, built from a checked pipeline.
#[derive(Debug)]
pub struct Projections {
    cfg: ProjectionsConfig,
    /// Decoder slot of each `event.<path>`.
    event_slots: Vec<usize>,
    type_slot: usize,
    compiled: Vec<CompiledDebug>,
}

#[derive(Debug)]
struct CompiledDebug(Compiled);

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiled").finish_non_exhaustive()
    }
}

struct NoVars;

impl Env for NoVars {
    fn get(&self, _: Slot) -> Option<Val<'_>> {
        None
    }
}

struct RowEnv<'a> {
    fields: &'a [Cell],
    /// The row key (UTF-8 from the router; read as text only when an expression asks).
    key: &'a [u8],
    ev: EventView<'a>,
    event_slots: &'a [usize],
}

impl Env for RowEnv<'_> {
    #[inline]
    fn get(&self, slot: Slot) -> Option<Val<'_>> {
        // hot path
        let s = slot.0;
        if s >= slots::EVENT {
            self.ev.val(self.event_slots[(s - slots::EVENT) as usize])
        } else if s == slots::ROW_KEY {
            Some(Val::str(key_text(self.key)))
        } else {
            self.fields.get((s - slots::ROW) as usize).map(Cell::get)
        }
    }
}

/// The bytes of the record's type field, if it is a string. Compared with the handlers'
/// `types` as bytes: no UTF-8 check per delivery (bytes that are not UTF-8 equal no type
/// name, as before).
#[inline]
fn type_bytes<'a>(ev: &EventView<'a>, slot: usize) -> Option<&'a [u8]> {
    match ev.values[slot] {
        Value::Str(start, len) => ev.arena.get(start as usize..(start + len) as usize),
        _ => None,
    }
}

/// A row key as text (`""` if it were not UTF-8, which the router never gives).
fn key_text(key: &[u8]) -> &str {
    std::str::from_utf8(key).unwrap_or("")
}

impl Projections {
    /// Builds the stage; `slots` is the decoder's field order.
    pub fn new(cfg: &ProjectionsConfig, slots: &[FieldPath]) -> Result<Self, String> {
        let slot = |p: &FieldPath| {
            slots
                .iter()
                .position(|s| s == p)
                .expect("referenced_fields covers every projection field")
        };
        let mut compiled = Vec::with_capacity(cfg.list.len());
        for p in &cfg.list {
            let mut defaults = Vec::with_capacity(p.fields.len());
            for f in &p.fields {
                let v = f.default.program.eval(&NoVars).map_err(|e| {
                    format!(
                        "projection '{}': field {}: default `{}`: {e}",
                        p.name, f.name, f.default.src
                    )
                })?;
                defaults.push(Cell::from(v));
            }
            compiled.push(CompiledDebug(Compiled {
                prefixes: p
                    .fields
                    .iter()
                    .map(|f| {
                        let mut b = Vec::new();
                        write_json_str(&mut b, f.name.as_bytes());
                        b.push(b':');
                        b.into()
                    })
                    .collect(),
                defaults: defaults.into(),
                is_key: p
                    .on
                    .iter()
                    .map(|h| {
                        h.set
                            .iter()
                            .map(|(_, x)| {
                                !p.insert_only
                                    && p.key.program.result_type() == Type::String
                                    && x.src.trim() == p.key.src.trim()
                            })
                            .collect()
                    })
                    .collect(),
            }));
        }
        Ok(Projections {
            event_slots: cfg.event_fields.iter().map(slot).collect(),
            type_slot: slot(&cfg.type_field),
            cfg: cfg.clone(),
            compiled,
        })
    }
}

impl Projections {
    /// An insert-only projection's delivery: the row starts from the defaults, the
    /// matching handlers set its fields, and it goes straight to the projection's topic
    /// under the key the projection's `key` gives (evaluated here, not in the router).
    /// Nothing is kept: the delivery's own key is one of the projection's lanes
    /// ([`lane_keys`]), whose row never changes (its entry only counts deliveries).
    fn insert(
        &self,
        pi: usize,
        ev: EventView<'_>,
        emit: &mut Emit<'_>,
    ) -> Result<Applied, Refused> {
        // hot path
        let p = &self.cfg.list[pi];
        let c = &self.compiled[pi].0;
        let ty = type_bytes(&ev, self.type_slot);
        let env = RowEnv {
            fields: &c.defaults,
            key: b"",
            ev,
            event_slots: &self.event_slots,
        };
        let refused = |what: &str, src: &str, e: &dyn std::fmt::Display| Refused {
            reason: DeadReason::Logic,
            detail: format!("projection '{}': {what} `{src}`: {e}", p.name),
        };
        // `None`: the field keeps its default.
        let mut set: SmallVec<[Option<Val<'_>>; 8]> = SmallVec::from_elem(None, p.fields.len());
        let mut matched = false;
        for h in &p.on {
            if !h.types.is_empty() && !ty.is_some_and(|t| h.types.iter().any(|x| x.as_bytes() == t))
            {
                continue;
            }
            if let Some(w) = &h.when
                && !w
                    .program
                    .eval_bool(&env)
                    .map_err(|e| refused("when", &w.src, &e))?
            {
                continue;
            }
            matched = true;
            for (i, x) in &h.set {
                set[*i] = Some(set_value(&p.fields[*i], x, &env, &refused)?);
            }
        }
        if !matched {
            return Ok(Applied::Unchanged);
        }
        let mut int_key = itoa::Buffer::new();
        let bad_key = |detail| Refused {
            reason: DeadReason::BadKey,
            detail,
        };
        let key =
            p.key.program.eval(&env).map_err(|e| {
                bad_key(format!("projection '{}': key `{}`: {e}", p.name, p.key.src))
            })?;
        let key = row_key(&key, &mut int_key)
            .map_err(|got| bad_key(bad_row_key(&p.name, &p.key.src, &got)))?;
        emit.record_keyed(pi, key, |out| {
            // As the engine renders a kept row (`{"key":K,"version":V,<fields>}`); a row
            // written once is at version 1.
            out.extend_from_slice(b"{\"key\":");
            write_json_str(out, key);
            out.extend_from_slice(b",\"version\":1");
            for ((prefix, v), d) in c.prefixes.iter().zip(&set).zip(c.defaults.iter()) {
                out.push(b',');
                out.extend_from_slice(prefix);
                match v {
                    Some(v) => v.write_json(out),
                    None => d.write_json(out),
                }
            }
            out.push(b'}');
        });
        Ok(Applied::Unchanged)
    }
}

/// The delivery keys of insert-only projection `projection` when the pipeline has
/// `shards` shards: entry `s` is a key that shard `s` owns. The router sends each
/// delivery of the projection under one of them (spreading the work over the shards),
/// so a shard keeps one entry per lane instead of one per row. After the projection's
/// prefix they read `insert-only-lane-N`: the key a dead letter of such a delivery
/// carries (the projection keeps no rows, so no row key of it can collide).
pub(crate) fn lane_keys(projection: u16, shards: u32) -> Vec<Vec<u8>> {
    use crate::hash::{SHARD_SALT, bucket, stable_hash};
    let mut lanes: Vec<Option<Vec<u8>>> = vec![None; shards as usize];
    let mut missing = shards as usize;
    let mut n = 0u32;
    while missing > 0 {
        let mut key = projection.to_be_bytes().to_vec();
        key.extend_from_slice(b"insert-only-lane-");
        key.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        let s = bucket(stable_hash(&key), SHARD_SALT, shards) as usize;
        if lanes[s].is_none() {
            lanes[s] = Some(key);
            missing -= 1;
        }
        n += 1;
    }
    lanes.into_iter().flatten().collect()
}

/// A handler's `set` expression for field `f`, evaluated and type-checked; `refused`
/// words a failure (what, source, error).
#[inline]
fn set_value<'e>(
    f: &crate::config::RowField,
    x: &'e crate::config::Expr,
    env: &'e RowEnv<'e>,
    refused: &impl Fn(&str, &str, &dyn std::fmt::Display) -> Refused,
) -> Result<Val<'e>, Refused> {
    let v = x
        .program
        .eval(env)
        .map_err(|e| refused(&format!("set {}", f.name), &x.src, &e))?;
    fitting(f, x, v, refused)
}

/// `v`, if it fits field `f`'s type; else why not.
#[inline]
fn fitting<'e>(
    f: &crate::config::RowField,
    x: &crate::config::Expr,
    v: Val<'e>,
    refused: &impl Fn(&str, &str, &dyn std::fmt::Display) -> Refused,
) -> Result<Val<'e>, Refused> {
    if !type_fits(f.ty, &v) {
        return Err(refused(
            &format!("set {} ({})", f.name, f.ty),
            &x.src,
            &format!("gave {} {v}", v.type_of()),
        ));
    }
    Ok(v)
}

/// A `set` expression that is the projection's key: the row key as its value, checked
/// against the field's type as [`set_value`] checks an evaluated one.
#[inline]
fn key_value<'e>(
    f: &crate::config::RowField,
    x: &crate::config::Expr,
    key: &'e [u8],
    refused: &impl Fn(&str, &str, &dyn std::fmt::Display) -> Refused,
) -> Result<Val<'e>, Refused> {
    fitting(f, x, Val::str(key_text(key)), refused)
}

/// A row key's bytes: a non-empty string, or an int in decimal (written into `int`).
/// `Err` says what the value was instead.
#[inline]
pub(crate) fn row_key<'v>(v: &'v Val<'_>, int: &'v mut itoa::Buffer) -> Result<&'v [u8], String> {
    match v {
        Val::Str(s) if !s.is_empty() => Ok(s.as_bytes()),
        Val::Int(n) => Ok(int.format(*n).as_bytes()),
        Val::Str(_) => Err("an empty string".into()),
        other => Err(other.type_of().to_string()),
    }
}

/// The detail of a dead letter for a projection key that gave `got` ([`row_key`]).
pub(crate) fn bad_row_key(projection: &str, src: &str, got: &str) -> String {
    format!(
        "projection '{projection}': key `{src}` must give a non-empty string or an int, got {got}"
    )
}

fn type_fits(ty: Type, v: &Val<'_>) -> bool {
    ty == Type::Dyn || matches!(v, Val::Null) || v.type_of() == ty
}

impl Stage for Projections {
    type State = Row;

    #[inline]
    fn prefetch(&self, row: &Row) {
        crate::shard::prefetch_slice(&row.fields);
    }

    fn new_state(&self, key: &[u8]) -> Row {
        let projection = u16::from_be_bytes([key[0], key[1]]);
        Row {
            projection,
            deleted: false,
            fields: self.compiled[projection as usize]
                .0
                .defaults
                .iter()
                .cloned()
                .collect(),
        }
    }

    fn encode_state(&self, row: &Row, out: &mut Vec<u8>) -> bool {
        use crate::snapshot::codec::{Put, put_cells};
        out.put_u8(u8::from(row.deleted));
        put_cells(out, &row.fields);
        true
    }

    fn decode_state(&self, key: &[u8], bytes: &[u8]) -> Result<Row, String> {
        use crate::snapshot::codec::{Take, take_cells};
        let [a, b, ..] = *key else {
            return Err("a projection row's key has no projection prefix".into());
        };
        let projection = u16::from_be_bytes([a, b]);
        let Some(compiled) = self.compiled.get(projection as usize) else {
            return Err(format!(
                "the row belongs to projection #{projection}, the pipeline has {}",
                self.compiled.len()
            ));
        };
        let mut t = Take(bytes);
        let deleted = match t.u8("the row's deleted flag")? {
            0 => false,
            1 => true,
            other => return Err(format!("bad deleted flag {other}")),
        };
        let fields = take_cells(&mut t, compiled.0.defaults.len())?;
        t.end()?;
        Ok(Row {
            projection,
            deleted,
            fields,
        })
    }

    fn apply(
        &self,
        row: &mut Row,
        ev: EventView<'_>,
        emit: &mut Emit<'_>,
    ) -> Result<Applied, Refused> {
        // hot path
        let p = &self.cfg.list[row.projection as usize];
        debug_assert_eq!(emit.target, row.projection as u32);
        if p.insert_only {
            return self.insert(row.projection as usize, ev, emit);
        }
        let c = &self.compiled[row.projection as usize].0;
        let key = &emit.key[PREFIX..];
        let ty = type_bytes(&ev, self.type_slot);
        let refused = |what: &str, src: &str, e: &dyn std::fmt::Display| Refused {
            reason: DeadReason::Logic,
            detail: format!(
                "projection '{}' row '{}': {what} `{src}`: {e}",
                p.name,
                key_text(key)
            ),
        };
        // Handlers apply in order, each reading the row as the previous ones left it; an
        // undo log restores the row if a later one fails (all or nothing).
        let mut undo: SmallVec<[(usize, Cell); 8]> = SmallVec::new();
        let mut matched = false;
        let mut delete = false;
        let rollback = |row: &mut Row, undo: SmallVec<[(usize, Cell); 8]>| {
            for (i, old) in undo.into_iter().rev() {
                row.fields[i] = old;
            }
        };
        for (h, is_key) in p.on.iter().zip(&c.is_key) {
            if !h.types.is_empty() && !ty.is_some_and(|t| h.types.iter().any(|x| x.as_bytes() == t))
            {
                continue;
            }
            let mut these: SmallVec<[(usize, Cell); 8]> = SmallVec::new();
            let outcome = (|| {
                let env = RowEnv {
                    fields: &row.fields,
                    key,
                    ev,
                    event_slots: &self.event_slots,
                };
                if let Some(w) = &h.when
                    && !w
                        .program
                        .eval_bool(&env)
                        .map_err(|e| refused("when", &w.src, &e))?
                {
                    return Ok(false);
                }
                for ((i, x), &is_key) in h.set.iter().zip(is_key.iter()) {
                    let v = if is_key {
                        key_value(&p.fields[*i], x, key, &refused)?
                    } else {
                        set_value(&p.fields[*i], x, &env, &refused)?
                    };
                    // A field set to what it holds (an account's name, a row's day) keeps
                    // its value: no copy of it.
                    if !env.fields[*i].eq_val(&v) {
                        these.push((*i, Cell::from(v)));
                    }
                }
                if let Some(d) = &h.delete {
                    delete |= d
                        .program
                        .eval_bool(&env)
                        .map_err(|e| refused("delete", &d.src, &e))?;
                }
                Ok(true)
            })();
            match outcome {
                Ok(false) => continue,
                Ok(true) => {}
                Err(e) => {
                    rollback(row, undo);
                    return Err(e);
                }
            }
            matched = true;
            for (i, v) in these {
                let old = std::mem::replace(&mut row.fields[i], v);
                undo.push((i, old));
            }
        }
        if !matched {
            return Ok(Applied::Unchanged);
        }
        if delete {
            row.deleted = true;
            // In place: the row's array is reused, short strings are copied inline.
            row.fields
                .clone_from_slice(&self.compiled[row.projection as usize].0.defaults);
        } else {
            row.deleted = false;
        }
        Ok(Applied::Changed)
    }

    fn render(&self, row: &Row, out: &mut Vec<u8>) {
        let c = &self.compiled[row.projection as usize].0;
        for (i, (p, v)) in c.prefixes.iter().zip(row.fields.iter()).enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(p);
            v.write_json(out);
        }
    }

    fn outputs(&self) -> Vec<OutputSpec> {
        self.cfg
            .list
            .iter()
            .map(|p| OutputSpec {
                topic: p.topic.clone(),
                partitions: p.partitions,
            })
            .collect()
    }

    fn view_output(&self, row: &Row) -> Option<usize> {
        Some(row.projection as usize)
    }

    fn is_deleted(&self, row: &Row) -> bool {
        row.deleted
    }

    fn key_prefix_len(&self) -> usize {
        PREFIX
    }

    fn keeps_rows(&self, target: u32) -> bool {
        self.cfg
            .list
            .get(target as usize)
            .is_none_or(|p| !p.insert_only)
    }

    fn tables(&self, _view_topic: &str) -> Vec<TableSpec> {
        self.cfg
            .list
            .iter()
            .enumerate()
            .map(|(i, p)| TableSpec {
                name: p.name.clone(),
                prefix: (i as u16).to_be_bytes().to_vec(),
                fields: Some(p.fields.iter().map(|f| (f.name.clone(), f.ty)).collect()),
                kept: !p.insert_only,
            })
            .collect()
    }

    fn row_values<'s>(&self, row: &'s Row) -> Option<&'s [Cell]> {
        Some(&row.fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::{SHARD_SALT, bucket, stable_hash};

    #[test]
    fn each_lane_key_belongs_to_its_shard() {
        for shards in [1, 2, 3, 8] {
            let lanes = lane_keys(7, shards);
            assert_eq!(lanes.len(), shards as usize);
            for (s, k) in lanes.iter().enumerate() {
                assert_eq!(bucket(stable_hash(k), SHARD_SALT, shards) as usize, s);
                assert_eq!(k[..PREFIX], 7u16.to_be_bytes());
                assert!(k[PREFIX..].starts_with(b"insert-only-lane-"));
            }
        }
    }
}
