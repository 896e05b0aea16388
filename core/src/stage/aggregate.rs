//! The aggregate stage: commands → rules → events → state, as declared in `[aggregate]`
//! (`crate::config::AggregateConfig`).
//!
//! Per command (all or nothing):
//! 1. its type picks the handler (an unknown type is dead-lettered as `unknown_type`);
//! 2. `expected_version`, when the command carries one, must equal the aggregate's
//!    version, else the command is rejected (`version_conflict`, with both versions);
//! 3. every rule must hold, else the command is rejected with the rule's reason;
//! 4. each `emit` entry (whose `when` holds) computes its event's data, and the event's
//!    applier folds it into the state before the next entry is computed;
//! 5. only then are the events written (with deterministic ids) and the state replaced.
//!
//! An expression that fails (overflow, a missing field, a wrong type) rejects the command
//! with reason `invalid_command` and the error as its message: the state is untouched.
//! Rejections go to the rejections topic; they count as processed (and as rejected).

use std::borrow::Cow;
use std::collections::HashMap;

use smallvec::SmallVec;

use super::{Applied, Emit, EventView, Fields, OutputSpec, Refused, Stage, TableSpec};
use crate::batch::{write_json_str, write_uint};
use crate::cloudevents;
use crate::config::{AggregateConfig, CLOUDEVENT_EXTENSIONS, FieldPath, slots};
use crate::decode::Value;
use crate::expr::{Cell, Env, EvalError, Slot, Type, Val};
use crate::stats::DeadReason;

/// Index of the events output in [`Stage::outputs`].
pub const EVENTS: usize = 0;
/// Index of the rejections output in [`Stage::outputs`].
pub const REJECTIONS: usize = 1;

/// Per-key state of an aggregate: its version and its fields.
#[derive(Debug, Clone, PartialEq)]
pub struct AggState {
    /// Events applied so far.
    pub version: u64,
    /// Field values, in `[aggregate.state]` order.
    pub fields: Fields,
}

/// The aggregate stage, built from a checked pipeline.
#[derive(Debug)]
pub struct Aggregate {
    cfg: AggregateConfig,
    /// Decoder slot of each `cmd.<path>` (indexed like `cfg.cmd_fields`).
    cmd_slots: Vec<usize>,
    type_slot: usize,
    id_slot: usize,
    correlation_slot: usize,
    expected_version_slot: usize,
    handlers: HashMap<String, usize, foldhash::fast::FixedState>,
    /// Cloning them for a new key allocates only strings longer than [`Cell::INLINE`].
    defaults: Box<[Cell]>,
    /// `"name":` of each state field, rendered once.
    prefixes: Vec<Box<[u8]>>,
    /// The aggregate's name as a JSON string, rendered once.
    name_json: Box<[u8]>,
    /// Per event type (indexed like `cfg.events`): its name and its data fields' keys,
    /// rendered once.
    event_json: Vec<EventJson>,
}

/// An event type's name as a JSON string, and `"field":` of each of its data fields.
type EventJson = (Box<[u8]>, Vec<Box<[u8]>>);

/// `s` as a JSON string, then `suffix`.
fn json_text(s: &str, suffix: &[u8]) -> Box<[u8]> {
    let mut b = Vec::with_capacity(s.len() + 2 + suffix.len());
    write_json_str(&mut b, s.as_bytes());
    b.extend_from_slice(suffix);
    b.into()
}

/// A refusal: the command is rejected with this reason and message.
struct Reject {
    reason: Cow<'static, str>,
    message: String,
}

impl From<EvalError> for Reject {
    fn from(e: EvalError) -> Self {
        Reject {
            reason: Cow::Borrowed("invalid_command"),
            message: e.message,
        }
    }
}

impl Aggregate {
    /// Builds the stage; `slots` is the decoder's field order
    /// (`Pipeline::referenced_fields()`), which contains every command field it reads.
    pub fn new(cfg: &AggregateConfig, slots: &[FieldPath]) -> Result<Self, String> {
        let slot = |p: &FieldPath| {
            slots
                .iter()
                .position(|s| s == p)
                .expect("referenced_fields covers every aggregate field")
        };
        let mut defaults = Vec::with_capacity(cfg.state.len());
        for f in &cfg.state {
            let v = f
                .default
                .program
                .eval(&NoVars)
                .map_err(|e| format!("state.{}: default `{}`: {e}", f.name, f.default.src))?;
            defaults.push(Cell::from(v));
        }
        Ok(Aggregate {
            cmd_slots: cfg.cmd_fields.iter().map(slot).collect(),
            type_slot: slot(&cfg.type_field),
            id_slot: slot(&cfg.id_field),
            correlation_slot: slot(&cfg.correlation_field),
            expected_version_slot: slot(&cfg.expected_version_field),
            handlers: cfg
                .commands
                .iter()
                .enumerate()
                .map(|(i, h)| (h.name.clone(), i))
                .collect(),
            defaults: defaults.into(),
            prefixes: cfg.state.iter().map(|f| json_text(&f.name, b":")).collect(),
            name_json: json_text(&cfg.name, b""),
            event_json: cfg
                .events
                .iter()
                .map(|et| {
                    let fields = et.fields.iter().map(|(n, _)| json_text(n, b":")).collect();
                    (json_text(&et.name, b""), fields)
                })
                .collect(),
            cfg: cfg.clone(),
        })
    }

    /// The configuration it runs.
    pub fn config(&self) -> &AggregateConfig {
        &self.cfg
    }
}

/// No variables (state defaults are constants).
struct NoVars;

impl Env for NoVars {
    fn get(&self, _: Slot) -> Option<Val<'_>> {
        None
    }
}

/// State as an expression sees it: the committed fields, overlaid by what the events of
/// the current command changed so far.
struct StateView<'a> {
    fields: &'a [Cell],
    overlay: &'a [(usize, Cell)],
}

impl StateView<'_> {
    #[inline]
    fn get(&self, i: usize) -> Val<'_> {
        match self.overlay.iter().rev().find(|(j, _)| *j == i) {
            Some((_, v)) => v.get(),
            None => self.fields[i].get(),
        }
    }
}

/// Variables of rules, `when`, `data` and messages.
struct CommandEnv<'a> {
    state: StateView<'a>,
    ev: EventView<'a>,
    cmd_slots: &'a [usize],
    key: &'a str,
    version: u64,
}

impl Env for CommandEnv<'_> {
    #[inline]
    fn get(&self, slot: Slot) -> Option<Val<'_>> {
        // hot path
        let s = slot.0;
        if s < slots::AGGREGATE_ID {
            Some(self.state.get((s - slots::STATE) as usize))
        } else if s >= slots::CMD {
            self.ev.val(self.cmd_slots[(s - slots::CMD) as usize])
        } else if s == slots::AGGREGATE_ID {
            Some(Val::str(self.key))
        } else if s == slots::AGGREGATE_VERSION {
            Some(Val::Int(self.version as i64))
        } else {
            None
        }
    }
}

/// Variables of an applier.
struct ApplyEnv<'a> {
    state: StateView<'a>,
    data: &'a [Option<Val<'static>>],
    event_type: &'a str,
    key: &'a str,
    version: u64,
}

impl Env for ApplyEnv<'_> {
    #[inline]
    fn get(&self, slot: Slot) -> Option<Val<'_>> {
        // hot path
        let s = slot.0;
        if s < slots::AGGREGATE_ID {
            Some(self.state.get((s - slots::STATE) as usize))
        } else if s >= slots::DATA {
            self.data[(s - slots::DATA) as usize]
                .as_ref()
                .map(Val::reborrow)
        } else {
            match s {
                slots::AGGREGATE_ID => Some(Val::str(self.key)),
                slots::AGGREGATE_VERSION | slots::EVENT_VERSION => {
                    Some(Val::Int(self.version as i64))
                }
                slots::EVENT_TYPE => Some(Val::str(self.event_type)),
                _ => None,
            }
        }
    }
}

/// An event computed for the current command, not yet written.
struct Pending {
    event: usize,
    version: u64,
    data: SmallVec<[Option<Val<'static>>; 4]>,
}

/// A string or integer id field as text.
fn id_text<'a>(ev: &EventView<'a>, slot: usize) -> Option<Cow<'a, str>> {
    match ev.values[slot] {
        v @ Value::Str(..) => ev.str(v).filter(|s| !s.is_empty()).map(Cow::Borrowed),
        Value::Int(i) => Some(Cow::Owned(i.to_string())),
        _ => None,
    }
}

fn type_fits(ty: Type, v: &Val<'_>) -> bool {
    ty == Type::Dyn || matches!(v, Val::Null) || v.type_of() == ty
}

impl Aggregate {
    fn cmd_env<'a>(
        &'a self,
        state: &'a AggState,
        overlay: &'a [(usize, Cell)],
        ev: EventView<'a>,
        key: &'a str,
        version: u64,
    ) -> CommandEnv<'a> {
        CommandEnv {
            state: StateView {
                fields: &state.fields,
                overlay,
            },
            ev,
            cmd_slots: &self.cmd_slots,
            key,
            version,
        }
    }

    /// Runs steps 2–4 for one command; on success returns the events and the state
    /// changes, on a refusal the rejection.
    fn decide(
        &self,
        handler: usize,
        state: &AggState,
        ev: EventView<'_>,
        key: &str,
        overlay: &mut SmallVec<[(usize, Cell); 8]>,
        pending: &mut SmallVec<[Pending; 2]>,
    ) -> Result<(), Reject> {
        let h = &self.cfg.commands[handler];
        match ev.values[self.expected_version_slot] {
            Value::Missing | Value::Null => {}
            Value::Int(want) if want >= 0 => {
                if want as u64 != state.version {
                    return Err(Reject {
                        reason: Cow::Borrowed("version_conflict"),
                        message: format!(
                            "expected version {want}, but {} '{key}' is at version {}",
                            self.cfg.name, state.version
                        ),
                    });
                }
            }
            other => {
                return Err(Reject {
                    reason: Cow::Borrowed("invalid_command"),
                    message: format!(
                        "'{}' must be a non-negative integer, got {}",
                        self.cfg.expected_version_field,
                        other.kind()
                    ),
                });
            }
        }
        {
            let env = self.cmd_env(state, &[], ev, key, state.version);
            for r in &h.rules {
                if !r.require.program.eval_bool(&env)? {
                    let message = match &r.message {
                        Some(m) => match m.program.eval(&env) {
                            Ok(Val::Str(s)) => s.into_owned(),
                            Ok(other) => other.to_string(),
                            Err(e) => format!("{} (and the message failed: {e})", r.require.src),
                        },
                        None => format!("rule `{}` does not hold", r.require.src),
                    };
                    return Err(Reject {
                        reason: Cow::Owned(r.reason.clone()),
                        message,
                    });
                }
            }
        }
        let mut version = state.version;
        for spec in &h.emit {
            let et = &self.cfg.events[spec.event];
            let mut data: SmallVec<[Option<Val<'static>>; 4]> =
                SmallVec::from_elem(None, et.fields.len());
            {
                let env = self.cmd_env(state, overlay, ev, key, version);
                if let Some(w) = &spec.when
                    && !w.program.eval_bool(&env)?
                {
                    continue;
                }
                for (k, x) in &spec.data {
                    data[*k] = Some(x.program.eval(&env)?.into_owned());
                }
            }
            version += 1;
            let mut changes: SmallVec<[(usize, Cell); 8]> = SmallVec::new();
            {
                let env = ApplyEnv {
                    state: StateView {
                        fields: &state.fields,
                        overlay,
                    },
                    data: &data,
                    event_type: &et.name,
                    key,
                    version,
                };
                for (si, x) in &et.set {
                    let v = x.program.eval(&env)?;
                    let ty = self.cfg.state[*si].ty;
                    if !type_fits(ty, &v) {
                        return Err(Reject {
                            reason: Cow::Borrowed("invalid_command"),
                            message: format!(
                                "applying {}: state.{} is {ty}, but `{}` gave {} {v}",
                                et.name,
                                self.cfg.state[*si].name,
                                x.src,
                                v.type_of()
                            ),
                        });
                    }
                    changes.push((*si, Cell::from(v)));
                }
            }
            for (si, v) in changes {
                match overlay.iter_mut().find(|(j, _)| *j == si) {
                    Some(slot) => slot.1 = v,
                    None => overlay.push((si, v)),
                }
            }
            pending.push(Pending {
                event: spec.event,
                version,
                data,
            });
        }
        Ok(())
    }

    fn write_event(
        &self,
        p: &Pending,
        index: usize,
        key: &str,
        command_id: &str,
        correlation_id: &str,
        out: &mut Vec<u8>,
    ) {
        let et = &self.cfg.events[p.event];
        let (type_json, field_json) = &self.event_json[p.event];
        let mut id = String::with_capacity(command_id.len() + 4);
        id.push_str(command_id);
        id.push(':');
        id.push_str(itoa::Buffer::new().format(index));
        let data = |out: &mut Vec<u8>| {
            out.push(b'{');
            let mut first = true;
            for (prefix, v) in field_json.iter().zip(&p.data) {
                let Some(v) = v else { continue };
                if !first {
                    out.push(b',');
                }
                first = false;
                out.extend_from_slice(prefix);
                v.write_json(out);
            }
            out.push(b'}');
        };
        if let Some(source) = &self.cfg.cloudevents_source {
            let attrs = cloudevents::Attributes {
                id: &id,
                source,
                ty: &et.name,
                subject: Some(key),
                extensions: &[
                    (CLOUDEVENT_EXTENSIONS[0], &self.cfg.name),
                    (CLOUDEVENT_EXTENSIONS[1], command_id),
                    (CLOUDEVENT_EXTENSIONS[2], correlation_id),
                ],
                int_extensions: &[(CLOUDEVENT_EXTENSIONS[3], p.version)],
            };
            cloudevents::write_structured(out, &attrs, data);
            return;
        }
        out.extend_from_slice(b"{\"event_id\":");
        write_json_str(out, id.as_bytes());
        out.extend_from_slice(b",\"type\":");
        out.extend_from_slice(type_json);
        out.extend_from_slice(b",\"aggregate\":");
        out.extend_from_slice(&self.name_json);
        out.extend_from_slice(b",\"aggregate_id\":");
        write_json_str(out, key.as_bytes());
        out.extend_from_slice(b",\"version\":");
        write_uint(out, p.version);
        out.extend_from_slice(b",\"causation_id\":");
        write_json_str(out, command_id.as_bytes());
        out.extend_from_slice(b",\"correlation_id\":");
        write_json_str(out, correlation_id.as_bytes());
        out.extend_from_slice(b",\"data\":");
        data(out);
        out.push(b'}');
    }

    #[allow(clippy::too_many_arguments)]
    fn write_rejection(
        &self,
        r: &Reject,
        command_type: &str,
        key: &str,
        version: u64,
        command_id: &str,
        correlation_id: &str,
        (source, partition, offset): (&str, u32, u64),
        out: &mut Vec<u8>,
    ) {
        out.extend_from_slice(b"{\"command_id\":");
        write_json_str(out, command_id.as_bytes());
        out.extend_from_slice(b",\"command_type\":");
        write_json_str(out, command_type.as_bytes());
        out.extend_from_slice(b",\"aggregate\":");
        write_json_str(out, self.cfg.name.as_bytes());
        out.extend_from_slice(b",\"aggregate_id\":");
        write_json_str(out, key.as_bytes());
        out.extend_from_slice(b",\"version\":");
        write_uint(out, version);
        out.extend_from_slice(b",\"reason\":");
        write_json_str(out, r.reason.as_bytes());
        out.extend_from_slice(b",\"message\":");
        write_json_str(out, r.message.as_bytes());
        out.extend_from_slice(b",\"correlation_id\":");
        write_json_str(out, correlation_id.as_bytes());
        out.extend_from_slice(b",\"source\":");
        write_json_str(out, source.as_bytes());
        out.extend_from_slice(b",\"partition\":");
        write_uint(out, partition as u64);
        out.extend_from_slice(b",\"offset\":");
        write_uint(out, offset);
        out.push(b'}');
    }
}

impl Stage for Aggregate {
    type State = AggState;

    #[inline]
    fn prefetch(&self, state: &AggState) {
        crate::shard::prefetch_slice(&state.fields);
    }

    fn new_state(&self, _key: &[u8]) -> AggState {
        AggState {
            version: 0,
            fields: self.defaults.iter().cloned().collect(),
        }
    }

    fn apply(
        &self,
        state: &mut AggState,
        ev: EventView<'_>,
        emit: &mut Emit<'_>,
    ) -> Result<Applied, Refused> {
        // hot path
        let Some(command_type) = ev.str(ev.values[self.type_slot]) else {
            return Err(Refused {
                reason: DeadReason::UnknownType,
                detail: format!(
                    "the command has no string field '{}' naming its type",
                    self.cfg.type_field
                ),
            });
        };
        let Some(&handler) = self.handlers.get(command_type) else {
            let known: Vec<&str> = self.cfg.commands.iter().map(|h| h.name.as_str()).collect();
            return Err(Refused {
                reason: DeadReason::UnknownType,
                detail: format!(
                    "unknown command type '{command_type}'; {} handles: {}",
                    self.cfg.name,
                    known.join(", ")
                ),
            });
        };
        let key = String::from_utf8_lossy(emit.key);
        let mut overlay = SmallVec::new();
        let mut pending = SmallVec::new();
        let decided = self.decide(handler, state, ev, &key, &mut overlay, &mut pending);
        if !emit.enabled() {
            // Replaying: only the state matters.
            return Ok(match decided {
                Ok(()) => commit(state, overlay, &pending),
                Err(_) => Applied::Rejected,
            });
        }
        let command_id = id_text(&ev, self.id_slot).unwrap_or_else(|| {
            // The parts of a split record share its coordinates: the part tells them apart.
            Cow::Owned(if emit.part.is_split() {
                format!(
                    "{}-{}-{}.{}",
                    emit.source, emit.partition, emit.offset, emit.part.index
                )
            } else {
                format!("{}-{}-{}", emit.source, emit.partition, emit.offset)
            })
        });
        let correlation_id =
            id_text(&ev, self.correlation_slot).unwrap_or_else(|| command_id.clone());
        match decided {
            Ok(()) => {
                for (i, p) in pending.iter().enumerate() {
                    emit.record(EVENTS, |out| {
                        self.write_event(p, i, &key, &command_id, &correlation_id, out)
                    });
                }
                Ok(commit(state, overlay, &pending))
            }
            Err(r) => {
                let coords = (emit.source, emit.partition, emit.offset);
                emit.record(REJECTIONS, |out| {
                    self.write_rejection(
                        &r,
                        command_type,
                        &key,
                        state.version,
                        &command_id,
                        &correlation_id,
                        coords,
                        out,
                    )
                });
                Ok(Applied::Rejected)
            }
        }
    }

    fn render(&self, state: &AggState, out: &mut Vec<u8>) {
        for (i, (p, v)) in self.prefixes.iter().zip(state.fields.iter()).enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(p);
            v.write_json(out);
        }
    }

    fn encode_state(&self, state: &AggState, out: &mut Vec<u8>) -> bool {
        use crate::snapshot::codec::{Put, put_cells};
        out.put_u64(state.version);
        put_cells(out, &state.fields);
        true
    }

    fn decode_state(&self, _key: &[u8], bytes: &[u8]) -> Result<AggState, String> {
        use crate::snapshot::codec::{Take, take_cells};
        let mut t = Take(bytes);
        let version = t.u64("the aggregate's version")?;
        let fields = take_cells(&mut t, self.defaults.len())?;
        t.end()?;
        Ok(AggState { version, fields })
    }

    fn outputs(&self) -> Vec<OutputSpec> {
        vec![
            OutputSpec {
                topic: self.cfg.events_topic.clone(),
                partitions: self.cfg.partitions,
            },
            OutputSpec {
                topic: self.cfg.rejections_topic.clone(),
                partitions: self.cfg.partitions,
            },
        ]
    }

    fn version(&self, state: &AggState) -> Option<u64> {
        Some(state.version)
    }

    fn tables(&self, view_topic: &str) -> Vec<TableSpec> {
        vec![TableSpec {
            name: view_topic.to_string(),
            prefix: Vec::new(),
            fields: Some(
                self.cfg
                    .state
                    .iter()
                    .map(|f| (f.name.clone(), f.ty))
                    .collect(),
            ),
            kept: true,
        }]
    }

    fn row_values<'s>(&self, state: &'s AggState) -> Option<&'s [Cell]> {
        Some(&state.fields)
    }
}

/// Replaces the state's changed fields and version; `Unchanged` when nothing was emitted.
fn commit(
    state: &mut AggState,
    overlay: SmallVec<[(usize, Cell); 8]>,
    pending: &[Pending],
) -> Applied {
    let Some(last) = pending.last() else {
        return Applied::Unchanged;
    };
    for (i, v) in overlay {
        state.fields[i] = v;
    }
    state.version = last.version;
    Applied::Changed
}

#[cfg(test)]
mod tests;
