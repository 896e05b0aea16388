//! Upcasting on read: brings a decoded record from its schema version to the current one
//! by the rules of `[upcast]` (`crate::config::UpcastConfig`), before the router reads
//! its key and sequence. The stored record is never changed; a replay upcasts again, so
//! old logs replay under new code.
//!
//! A rule may split the record into several parts ([`Upcast::Split`]). Each part goes on
//! up the chain on its own and may be split again; the parts come out depth first, in
//! the order the rules list them, so that the same record always gives the same parts in
//! the same order (Recovery replays the log and must rebuild the same state). The router
//! then routes every part as a record of its own (`crate::batch::Part`).

use std::sync::Arc;

use crate::config::{FieldPath, MAX_UPCAST_PARTS, MAX_UPCAST_STEPS, UpcastConfig};
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
    /// The parts the record becomes; empty: no split.
    split: Vec<SplitPart>,
}

#[derive(Debug)]
struct SplitPart {
    set: Vec<(usize, Arc<Program>)>,
    remove: Vec<usize>,
}

/// What [`Upcaster::apply`] made of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upcast {
    /// Still one record, upcast in place.
    One,
    /// Several: a rule split it; the parts are in the [`Parts`] given to `apply`.
    Split,
}

/// The parts of a split record, each as decoded values (strings in the record's arena).
/// Reused from record to record, so splitting allocates nothing once warm.
#[derive(Debug)]
pub struct Parts {
    slots: usize,
    /// Finished parts, `slots` values each, in order.
    done: Vec<Value>,
    /// Parts still to upcast: a stack of `slots` values each, the next part on top.
    todo: Vec<Value>,
    /// Per part in `todo`: its version and the upcasting steps that led to it.
    todo_at: Vec<(u64, usize)>,
    /// The part being upcast.
    work: Vec<Value>,
}

impl Parts {
    /// Buffers for records of `slots` values.
    pub fn new(slots: usize) -> Self {
        Parts {
            slots,
            done: Vec::new(),
            todo: Vec::new(),
            todo_at: Vec::new(),
            work: Vec::new(),
        }
    }

    /// Number of parts.
    pub fn len(&self) -> usize {
        self.done.len() / self.slots.max(1)
    }

    /// No parts (the last record was not split).
    pub fn is_empty(&self) -> bool {
        self.done.is_empty()
    }

    /// Values of part `i`.
    pub fn get(&self, i: usize) -> &[Value] {
        &self.done[i * self.slots..(i + 1) * self.slots]
    }

    fn clear(&mut self) {
        self.done.clear();
        self.todo.clear();
        self.todo_at.clear();
    }
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
    /// Whether a rule splits.
    splits: bool,
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
                    split: r
                        .split
                        .iter()
                        .map(|part| SplitPart {
                            set: part
                                .set
                                .iter()
                                .map(|(p, e)| (slot(p), program(e)))
                                .collect(),
                            remove: part.remove.iter().map(slot).collect(),
                        })
                        .collect(),
                })
                .collect(),
            expr_slots: cfg.expr_fields.iter().map(slot).collect(),
            version_name: cfg.version_field.to_string(),
            splits: cfg.splits(),
        }
    }

    /// Whether a rule splits, so that one record may become several.
    pub fn splits(&self) -> bool {
        self.splits
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
    /// version field then holds it. When a rule splits the record, the parts, upcast to
    /// their latest versions, are in `parts` (and `vals` is left half-way). `Err` says why
    /// the record cannot be upcast: then no part of it counts.
    pub fn apply(
        &self,
        vals: &mut [Value],
        arena: &mut Vec<u8>,
        parts: &mut Parts,
    ) -> Result<Upcast, String> {
        // hot path
        let start = match vals[self.version_slot] {
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
        match self.chain(vals, arena, start, 0, start)? {
            None => Ok(Upcast::One),
            Some((rule, version, steps)) => {
                parts.clear();
                self.split(rule, vals, arena, parts, version, steps)?;
                self.split_parts(arena, parts, start)?;
                Ok(Upcast::Split)
            }
        }
    }

    /// Applies rules to `vals`, from `version` on, until none applies (`None`: the
    /// version field holds the version reached) or a rule splits: `Some((rule, version
    /// it upgrades, steps taken))`, with the rule's rename, defaults and compute applied.
    /// `steps` were taken before, from version `origin` of the stored record.
    fn chain(
        &self,
        vals: &mut [Value],
        arena: &mut Vec<u8>,
        mut version: u64,
        mut steps: usize,
        origin: u64,
    ) -> Result<Option<(&Rule, u64, usize)>, String> {
        // hot path
        let first = version;
        loop {
            let ty = match vals[self.type_slot] {
                Value::Str(s, l) => Some(&arena[s as usize..(s + l) as usize]),
                _ => None,
            };
            let Some(rule) = self.rule(ty, version) else {
                if version != first {
                    vals[self.version_slot] = Value::Int(version as i64);
                }
                return Ok(None);
            };
            if steps == MAX_UPCAST_STEPS {
                return Err(format!(
                    "more than {MAX_UPCAST_STEPS} upcasting steps from version {origin}"
                ));
            }
            steps += 1;
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
            if !rule.split.is_empty() {
                return Ok(Some((rule, version, steps)));
            }
            version += 1;
        }
    }

    /// Puts the parts `rule` splits `record` into on top of the `parts.todo` stack, at
    /// version `version + 1`, part 0 on top.
    fn split(
        &self,
        rule: &Rule,
        record: &[Value],
        arena: &mut Vec<u8>,
        parts: &mut Parts,
        version: u64,
        steps: usize,
    ) -> Result<(), String> {
        let n = rule.split.len();
        // Every part in `done` and `todo` ends as at least one part.
        if parts.len() + parts.todo_at.len() + n > MAX_UPCAST_PARTS {
            return Err(format!(
                "splitting from version {version} gives more than {MAX_UPCAST_PARTS} parts"
            ));
        }
        let next = version + 1;
        for (i, part) in rule.split.iter().enumerate().rev() {
            let at = parts.todo.len();
            parts.todo.extend_from_slice(record);
            let new = &mut parts.todo[at..];
            new[self.version_slot] = Value::Int(next as i64);
            for &slot in &part.remove {
                new[slot] = Value::Missing;
            }
            // Every part's expressions read the record being split, not the other parts.
            for (slot, p) in &part.set {
                let v = self
                    .eval(p, record, arena, version)
                    .map_err(|e| format!("{e} (part {} of {n})", i + 1))?;
                parts.todo[at + slot] = store(v, arena, p)?;
            }
            parts.todo_at.push((next, steps));
        }
        Ok(())
    }

    /// Upcasts the parts on the `parts.todo` stack, splitting further where a rule says
    /// so, into `parts.done`.
    fn split_parts(
        &self,
        arena: &mut Vec<u8>,
        parts: &mut Parts,
        origin: u64,
    ) -> Result<(), String> {
        let slots = parts.slots;
        // Taken out so that the stack can grow while a part is read (dropped on error).
        let mut work = std::mem::take(&mut parts.work);
        while let Some((version, steps)) = parts.todo_at.pop() {
            let at = parts.todo.len() - slots;
            work.clear();
            work.extend_from_slice(&parts.todo[at..]);
            parts.todo.truncate(at);
            match self.chain(&mut work, arena, version, steps, origin)? {
                None => parts.done.extend_from_slice(&work),
                Some((rule, version, steps)) => {
                    self.split(rule, &work, arena, parts, version, steps)?
                }
            }
        }
        parts.work = work;
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Pipeline;
    use crate::decode::Extractor;
    use serde_json::{Value as Json, json};

    /// An upcaster for `rules` (the body of `[upcast]`), with the decoder and buffers the
    /// router gives it.
    struct Harness {
        up: Upcaster,
        ex: Extractor,
        fields: Vec<FieldPath>,
        vals: Vec<Value>,
        arena: Vec<u8>,
        parts: Parts,
    }

    fn harness(rules: &str) -> Harness {
        let src = format!(
            "[pipeline]\nname='t'\n[[sources]]\nname='s'\ntype='log'\npath='x'\n[key]\nfield='account'\n[view]\ntopic='v'\n[view.fields]\nn={{op='count'}}\n[upcast]\n{rules}"
        );
        let p = Pipeline::parse(&src, std::path::Path::new(".")).unwrap_or_else(|e| {
            panic!("{e:?}");
        });
        let fields = p.referenced_fields();
        Harness {
            up: Upcaster::new(p.upcast.as_ref().unwrap(), &fields),
            ex: Extractor::new(&fields),
            vals: vec![Value::Missing; fields.len()],
            arena: Vec::new(),
            parts: Parts::new(fields.len()),
            fields,
        }
    }

    impl Harness {
        /// Upcasts `record`: its parts (one when not split) as `{ "dotted.path": value }`.
        fn run(&mut self, record: Json) -> Result<Vec<Json>, String> {
            self.arena.clear();
            self.ex
                .extract(
                    record.to_string().as_bytes(),
                    &mut self.arena,
                    &mut self.vals,
                )
                .unwrap();
            Ok(
                match self
                    .up
                    .apply(&mut self.vals, &mut self.arena, &mut self.parts)?
                {
                    Upcast::One => vec![self.render(&self.vals)],
                    Upcast::Split => (0..self.parts.len())
                        .map(|i| self.render(self.parts.get(i)))
                        .collect(),
                },
            )
        }

        fn render(&self, vals: &[Value]) -> Json {
            let mut out = serde_json::Map::new();
            for (f, v) in self.fields.iter().zip(vals) {
                let j = match *v {
                    Value::Missing | Value::Composite => continue,
                    Value::Null => Json::Null,
                    Value::Bool(b) => json!(b),
                    Value::Int(i) => json!(i),
                    Value::Float(x) => json!(x),
                    Value::Str(s, l) => {
                        json!(
                            std::str::from_utf8(&self.arena[s as usize..(s + l) as usize]).unwrap()
                        )
                    }
                };
                out.insert(f.to_string(), j);
            }
            Json::Object(out)
        }
    }

    const TRANSFER: &str = r#"
[[upcast.rules]]
type = "TransferMade"
from = 1
split = [
  { set = { type = "'Withdrawn'", account = "event.data.from" } },
  { set = { type = "'Deposited'", account = "event.data.to" }, remove = ["data.from"] },
]

[[upcast.rules]]
from = 2
defaults = { currency = "'EUR'" }
"#;

    #[test]
    fn a_record_without_split_rules_is_upcast_in_place() {
        let mut h = harness(
            "[[upcast.rules]]\nfrom = 1\nrename = { acct = \"account\" }\n[[upcast.rules]]\nfrom = 2\ncompute = { amount = \"event.cents * 2\" }\n",
        );
        assert!(!h.up.splits());
        let got = h.run(json!({"acct": "A", "cents": 5})).unwrap();
        assert_eq!(
            got,
            [json!({"account": "A", "cents": 5, "amount": 10, "schema_version": 3})]
        );
    }

    #[test]
    fn a_split_gives_its_parts_in_order_each_going_on_up_the_chain() {
        let mut h = harness(TRANSFER);
        assert!(h.up.splits());
        let got = h
            .run(json!({"type": "TransferMade", "account": "A", "data": {"from": "A", "to": "B", "amount": 7}}))
            .unwrap();
        assert_eq!(
            got,
            [
                // (`data.amount` is not decoded: no part of this pipeline reads it.)
                json!({"type": "Withdrawn", "account": "A", "data.from": "A", "data.to": "B", "currency": "EUR", "schema_version": 3}),
                json!({"type": "Deposited", "account": "B", "data.to": "B", "currency": "EUR", "schema_version": 3}),
            ]
        );
        // Another type is not split, and the buffers carry nothing over.
        let got = h
            .run(json!({"type": "Deposited", "account": "C", "schema_version": 2}))
            .unwrap();
        assert_eq!(
            got,
            [json!({"type": "Deposited", "account": "C", "currency": "EUR", "schema_version": 3})]
        );
        // A record already at version 2 is past the split.
        let got = h
            .run(json!({"type": "TransferMade", "account": "A", "schema_version": 2}))
            .unwrap();
        assert_eq!(got.len(), 1);
    }

    #[test]
    fn parts_read_the_record_as_the_rules_own_changes_left_it_not_each_other() {
        let mut h = harness(
            r#"
[[upcast.rules]]
from = 1
rename = { acct = "account" }
compute = { n = "event.n + 1" }
split = [
  { set = { n = "event.n * 10", account = "event.account + '-a'" } },
  { set = { m = "event.n" } },
]
"#,
        );
        let got = h.run(json!({"acct": "A", "n": 1})).unwrap();
        assert_eq!(
            got,
            [
                json!({"account": "A-a", "n": 20, "schema_version": 2}),
                json!({"account": "A", "n": 2, "m": 2, "schema_version": 2}),
            ]
        );
    }

    #[test]
    fn parts_may_be_split_again_depth_first() {
        let mut h = harness(
            r#"
[[upcast.rules]]
from = 1
split = [{ set = { type = "'x'" } }, { set = { type = "'y'" } }]

[[upcast.rules]]
type = "x"
from = 2
split = [{ set = { type = "'x1'" } }, { set = { type = "'x2'" } }, { set = { type = "'x3'" } }]

[[upcast.rules]]
from = 2
compute = { seen = "event.type" }
"#,
        );
        let got = h.run(json!({"type": "t"})).unwrap();
        let types: Vec<(&str, i64)> = got
            .iter()
            .map(|p| {
                (
                    p["type"].as_str().unwrap(),
                    p["schema_version"].as_i64().unwrap(),
                )
            })
            .collect();
        assert_eq!(types, [("x1", 3), ("x2", 3), ("x3", 3), ("y", 3)]);
        assert_eq!(got[3]["seen"], "y");
        assert!(got[0].get("seen").is_none(), "{:?}", got[0]);
    }

    #[test]
    fn fan_out_is_bounded() {
        let level = |from: u64| {
            let parts: Vec<String> = (0..8)
                .map(|i| format!("{{ set = {{ p{from} = \"{i}\" }} }}"))
                .collect();
            format!(
                "[[upcast.rules]]\nfrom = {from}\nsplit = [{}]\n",
                parts.join(", ")
            )
        };
        // 8 × 8 = 64 parts: the limit.
        let mut h = harness(&(level(1) + &level(2)));
        assert_eq!(h.run(json!({})).unwrap().len(), MAX_UPCAST_PARTS);
        let mut h = harness(&(level(1) + &level(2) + &level(3)));
        let err = h.run(json!({})).unwrap_err();
        assert!(
            err.contains(&format!("more than {MAX_UPCAST_PARTS} parts")),
            "{err}"
        );
    }

    #[test]
    fn steps_are_bounded_along_every_part() {
        let mut rules = String::from(
            "[[upcast.rules]]\nfrom = 1\nsplit = [{ set = { a = \"1\" } }, { set = { a = \"2\" } }]\n",
        );
        for v in 2..=MAX_UPCAST_STEPS as u64 {
            rules += &format!("[[upcast.rules]]\nfrom = {v}\ncompute = {{ n = \"{v}\" }}\n");
        }
        // Exactly MAX_UPCAST_STEPS steps: fine.
        let mut h = harness(&rules);
        let got = h.run(json!({})).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[1]["schema_version"], MAX_UPCAST_STEPS as i64 + 1);
        // One more, counted from the stored record across the split: refused.
        let v = MAX_UPCAST_STEPS as u64 + 1;
        rules += &format!("[[upcast.rules]]\nfrom = {v}\ncompute = {{ n = \"{v}\" }}\n");
        let mut h = harness(&rules);
        let err = h.run(json!({})).unwrap_err();
        assert_eq!(
            err,
            format!("more than {MAX_UPCAST_STEPS} upcasting steps from version 1")
        );
    }

    #[test]
    fn a_failing_part_fails_the_record_and_says_which() {
        let mut h = harness(TRANSFER);
        let err = h
            .run(json!({"type": "TransferMade", "account": "A", "data": {"from": "A", "to": {"x": 1}}}))
            .unwrap_err();
        assert!(
            err.starts_with("upcasting from version 1: `event.data.to`"),
            "{err}"
        );
        assert!(err.ends_with("(part 2 of 2)"), "{err}");
    }

    #[test]
    fn splitting_is_deterministic() {
        let mut h = harness(TRANSFER);
        let rec = json!({"type": "TransferMade", "account": "A", "data": {"from": "A", "to": "B", "amount": 7}});
        let first = h.run(rec.clone()).unwrap();
        for _ in 0..3 {
            h.run(json!({"type": "Other", "account": "Z"})).unwrap();
            assert_eq!(h.run(rec.clone()).unwrap(), first);
        }
    }
}
