//! Upcasting on read: brings a decoded record from its schema version to the current one
//! by the rules of `[upcast]` (`crate::config::UpcastConfig`), before the router reads
//! its key and sequence. The stored record is never changed; a replay upcasts again, so
//! old logs replay under new code.

use std::sync::Arc;

use crate::config::{FieldPath, MAX_UPCAST_STEPS, UpcastConfig};
use crate::decode::Value;
use crate::expr::{Env, Program, Slot, Val};
use crate::stage::EventView;

#[derive(Debug)]
struct Rule {
    event_type: Option<Box<[u8]>>,
    from: u64,
    /// `(old slot, new slot)`.
    rename: Vec<(usize, usize)>,
    defaults: Vec<(usize, Arc<Program>)>,
    compute: Vec<(usize, Arc<Program>)>,
}

/// A compiled `[upcast]`, bound to the decoder's slots.
#[derive(Debug)]
pub struct Upcaster {
    type_slot: usize,
    version_slot: usize,
    default_version: u64,
    rules: Vec<Rule>,
    /// Decoder slot of each `event.<path>` the expressions read.
    expr_slots: Vec<usize>,
    /// The version field's name, for messages.
    version_name: String,
}

struct RecordEnv<'a> {
    ev: EventView<'a>,
    expr_slots: &'a [usize],
}

impl Env for RecordEnv<'_> {
    fn get(&self, slot: Slot) -> Option<Val<'_>> {
        self.ev.val(self.expr_slots[slot.0 as usize])
    }
}

impl Upcaster {
    /// Binds `cfg` to the decoder's field order (`Pipeline::referenced_fields()`).
    pub fn new(cfg: &UpcastConfig, slots: &[FieldPath]) -> Self {
        let slot = |p: &FieldPath| {
            slots
                .iter()
                .position(|s| s == p)
                .expect("referenced_fields covers every upcast field")
        };
        let program = |e: &crate::config::Expr| e.program.clone();
        Upcaster {
            type_slot: slot(&cfg.type_field),
            version_slot: slot(&cfg.version_field),
            default_version: cfg.default_version,
            rules: cfg
                .rules
                .iter()
                .map(|r| Rule {
                    event_type: r.event_type.as_ref().map(|t| t.as_bytes().into()),
                    from: r.from,
                    rename: r.rename.iter().map(|(a, b)| (slot(a), slot(b))).collect(),
                    defaults: r
                        .defaults
                        .iter()
                        .map(|(p, e)| (slot(p), program(e)))
                        .collect(),
                    compute: r
                        .compute
                        .iter()
                        .map(|(p, e)| (slot(p), program(e)))
                        .collect(),
                })
                .collect(),
            expr_slots: cfg.expr_fields.iter().map(slot).collect(),
            version_name: cfg.version_field.to_string(),
        }
    }

    fn rule(&self, ty: Option<&[u8]>, version: u64) -> Option<&Rule> {
        let typed = self
            .rules
            .iter()
            .find(|r| r.from == version && r.event_type.is_some() && r.event_type.as_deref() == ty);
        typed.or_else(|| {
            self.rules
                .iter()
                .find(|r| r.from == version && r.event_type.is_none())
        })
    }

    /// Upcasts the record in `vals` (strings in `arena`) to the latest version; the
    /// version field then holds it. `Err` says why the record cannot be upcast.
    pub fn apply(&self, vals: &mut [Value], arena: &mut Vec<u8>) -> Result<(), String> {
        // hot path
        let mut version = match vals[self.version_slot] {
            Value::Missing | Value::Null => self.default_version,
            Value::Int(i) if i >= 1 => i as u64,
            other => {
                return Err(format!(
                    "the version field '{}' must be a positive integer, got {}",
                    self.version_name,
                    other.kind()
                ));
            }
        };
        let start = version;
        let last = start.saturating_add(MAX_UPCAST_STEPS as u64);
        while version < last {
            let ty = match vals[self.type_slot] {
                Value::Str(s, l) => Some(&arena[s as usize..(s + l) as usize]),
                _ => None,
            };
            let Some(rule) = self.rule(ty, version) else {
                if version != start {
                    vals[self.version_slot] = Value::Int(version as i64);
                }
                return Ok(());
            };
            for &(old, new) in &rule.rename {
                if vals[new] == Value::Missing {
                    vals[new] = vals[old];
                }
                if old != new {
                    vals[old] = Value::Missing;
                }
            }
            for (slot, p) in &rule.defaults {
                if vals[*slot] == Value::Missing {
                    let v = self.eval(p, vals, arena, version)?;
                    vals[*slot] = store(v, arena, p)?;
                }
            }
            // Computed fields all read the record as it was before this rule's computations.
            let mut computed: smallvec::SmallVec<[(usize, Value); 4]> = smallvec::SmallVec::new();
            for (slot, p) in &rule.compute {
                let v = self.eval(p, vals, arena, version)?;
                computed.push((*slot, store(v, arena, p)?));
            }
            for (slot, v) in computed {
                vals[slot] = v;
            }
            version += 1;
        }
        Err(format!(
            "more than {MAX_UPCAST_STEPS} upcasting steps from version {start}"
        ))
    }

    fn eval(
        &self,
        p: &Program,
        vals: &[Value],
        arena: &[u8],
        version: u64,
    ) -> Result<Val<'static>, String> {
        let env = RecordEnv {
            ev: EventView {
                values: vals,
                arena,
            },
            expr_slots: &self.expr_slots,
        };
        p.eval(&env)
            .map(Val::into_owned)
            .map_err(|e| format!("upcasting from version {version}: `{}`: {e}", p.source()))
    }
}

/// Stores an expression result as a decoded value (strings appended to the arena).
fn store(v: Val<'_>, arena: &mut Vec<u8>, p: &Program) -> Result<Value, String> {
    Ok(match v {
        Val::Null => Value::Null,
        Val::Bool(b) => Value::Bool(b),
        Val::Int(i) => Value::Int(i),
        Val::Double(d) => Value::Float(d),
        Val::Str(s) => push_str(arena, s.as_bytes()),
        t @ (Val::Timestamp(_) | Val::Duration(_)) => {
            let text = t.to_string();
            // Display renders JSON: a quoted string.
            push_str(arena, text.trim_matches('"').as_bytes())
        }
        Val::List(_) | Val::Map(_) => {
            return Err(format!(
                "`{}` gave a {}, but upcasting sets only scalars (null, bool, int, double, string)",
                p.source(),
                v.type_of()
            ));
        }
    })
}

fn push_str(arena: &mut Vec<u8>, s: &[u8]) -> Value {
    let at = arena.len() as u32;
    arena.extend_from_slice(s);
    Value::Str(at, s.len() as u32)
}
