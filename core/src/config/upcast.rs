//! `[upcast]`: versioned records, and the rules that bring an old version up to the
//! current one as it is read (so old logs replay under new code).
//!
//! A record's version is its `version_field` (default `schema_version`; absent: version
//! `default_version`, default 1). A rule `{ type, from, rename, defaults, compute, split }`
//! turns version `from` of `type` (every type when `type` is left out) into `from + 1`;
//! rules chain, v1 → v2 → v3, until none applies. Expressions read the record being upcast
//! as `event.<path>`, after the rule's renames.
//!
//! A rule with `split` turns the record into several (its parts), each a copy of the record
//! as the rule's rename, defaults and compute left it, with the part's own `set` and
//! `remove`. Every part goes on up the chain from `from + 1` on its own (and may be split
//! again); the router then routes each part as a record of its own (`crate::upcast`).

use std::cell::RefCell;
use std::sync::Arc;

use super::walk::{self, Cx, Table};
use super::{Expr, FieldPath};
use crate::expr::{self, Scope, Slot, Type};

/// Longest chain of rules applied to one record (or to one part, counting the steps of
/// the record it came from).
pub const MAX_UPCAST_STEPS: usize = 64;

/// Most parts one record may be split into, parts of parts included.
pub const MAX_UPCAST_PARTS: usize = 64;

/// One part of a split: a copy of the record being split, with some fields changed.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitPart {
    /// `(path, value)`: set on the part; the expressions read the record being split.
    pub set: Vec<(FieldPath, Expr)>,
    /// Fields the part does not carry.
    pub remove: Vec<FieldPath>,
}

/// One step: version `from` of `event_type` (or of any type) becomes `from + 1`.
#[derive(Debug, Clone, PartialEq)]
pub struct UpcastRule {
    /// The type it applies to; `None`: every type.
    pub event_type: Option<String>,
    /// The version it upgrades.
    pub from: u64,
    /// `(old path, new path)`: the value moves unless the new path is already set.
    pub rename: Vec<(FieldPath, FieldPath)>,
    /// `(path, value)`: set when the path is absent.
    pub defaults: Vec<(FieldPath, Expr)>,
    /// `(path, value)`: always set.
    pub compute: Vec<(FieldPath, Expr)>,
    /// The parts the record becomes, in order (at least two); empty: no split.
    pub split: Vec<SplitPart>,
}

/// A checked `[upcast]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct UpcastConfig {
    /// Field naming the record's type.
    pub type_field: FieldPath,
    /// Field holding the record's schema version.
    pub version_field: FieldPath,
    /// Version of a record without `version_field`.
    pub default_version: u64,
    /// The rules, in file order.
    pub rules: Vec<UpcastRule>,
    /// Record fields the expressions read: `event.<path>` is slot `index`.
    pub expr_fields: Vec<FieldPath>,
}

impl UpcastConfig {
    /// Every field the decoder must extract for upcasting.
    pub fn referenced_fields(&self) -> Vec<&FieldPath> {
        let mut v = vec![&self.type_field, &self.version_field];
        for r in &self.rules {
            for (a, b) in &r.rename {
                v.push(a);
                v.push(b);
            }
            v.extend(r.defaults.iter().chain(&r.compute).map(|(p, _)| p));
            for part in &r.split {
                v.extend(part.set.iter().map(|(p, _)| p));
                v.extend(&part.remove);
            }
        }
        v.extend(&self.expr_fields);
        v
    }

    /// Whether a rule splits records (one record may then become several).
    pub fn splits(&self) -> bool {
        self.rules.iter().any(|r| !r.split.is_empty())
    }
}

/// `event.<path>` on demand.
struct EventVars<'a> {
    fields: &'a RefCell<Vec<FieldPath>>,
}

impl Scope for EventVars<'_> {
    fn resolve(&self, path: &[&str]) -> Option<(Slot, Type)> {
        match path {
            ["event", rest @ ..] if !rest.is_empty() => {
                let fp = FieldPath(rest.iter().map(|s| s.to_string()).collect());
                let mut f = self.fields.borrow_mut();
                let i = f.iter().position(|p| *p == fp).unwrap_or_else(|| {
                    f.push(fp);
                    f.len() - 1
                });
                Some((Slot(i as u32), Type::Dyn))
            }
            _ => None,
        }
    }

    fn names(&self) -> Vec<String> {
        vec!["event".into()]
    }
}

fn path_of(
    cx: &mut Cx<'_>,
    at: &str,
    span: Option<std::ops::Range<usize>>,
    s: &str,
) -> Option<FieldPath> {
    FieldPath::parse(s).map_err(|e| cx.error(at, span, e)).ok()
}

fn exprs(
    cx: &mut Cx<'_>,
    t: &mut Table<'_, '_>,
    key: &str,
    vars: &EventVars<'_>,
) -> Vec<(FieldPath, Expr)> {
    let mut tt = t.table(cx, key);
    let mut out = Vec::new();
    for name in tt.keys() {
        let at = walk::join(&tt.path, &name);
        let span = tt.raw(&name).map(|v| v.span());
        let Some(src) = tt.string(cx, &name) else {
            continue;
        };
        let Some(path) = path_of(cx, &at, span.clone(), &name) else {
            continue;
        };
        match expr::compile(&src, vars) {
            Ok(p) => out.push((
                path,
                Expr {
                    src,
                    program: Arc::new(p),
                },
            )),
            Err(errors) => {
                for e in errors {
                    cx.error(&at, span.clone(), format!("{e} in `{src}`"));
                }
            }
        }
    }
    tt.finish(cx);
    out
}

/// Reads `split = [{ set = {...}, remove = [...] }, ...]` of a rule (absent: empty).
/// `sequenced_key`: `[key] field` and `sequence`, when the pipeline has both.
fn split(
    cx: &mut Cx<'_>,
    r: &mut Table<'_, '_>,
    vars: &EventVars<'_>,
    version_field: &FieldPath,
    from: Option<u64>,
    sequenced_key: Option<(&FieldPath, &FieldPath)>,
) -> Vec<SplitPart> {
    let at = walk::join(&r.path, "split");
    // The number of parts, when `split` is an array (`tables` reports anything else).
    let given = r.raw("split").and_then(|v| match v.get_ref() {
        toml::de::DeValue::Array(items) => Some((items.len(), v.span())),
        _ => None,
    });
    let tables = r.tables(cx, "split");
    match given {
        Some((n, span)) if n < 2 => cx.error(
            &at,
            Some(span),
            format!("needs at least two parts, got {n}; to change the record itself use `compute`"),
        ),
        Some((n, span)) if n > MAX_UPCAST_PARTS => cx.error(
            &at,
            Some(span),
            format!("has {n} parts; at most {MAX_UPCAST_PARTS} (parts of parts included)"),
        ),
        _ => {}
    }
    let mut parts = Vec::new();
    for mut t in tables {
        let set = exprs(cx, &mut t, "set", vars);
        if let Some(ver) = set.iter().find(|(p, _)| p == version_field) {
            let at = walk::join(&walk::join(&t.path, "set"), &ver.0.to_string());
            let span = t.span();
            let next = from.map_or("from + 1".to_string(), |f| (f + 1).to_string());
            cx.error(
                &at,
                span,
                format!("sets the version field: every part goes on at version {next}"),
            );
        }
        // A part moved to another key needs that key's number: the record's own number
        // counts in its own key's gapless sequence, where the part would stall or be
        // dropped as a duplicate.
        if let Some((key, seq)) = sequenced_key
            && set.iter().any(|(p, _)| p == key)
            && !set.iter().any(|(p, _)| p == seq)
        {
            cx.error(
                &walk::join(&walk::join(&t.path, "set"), &key.to_string()),
                t.span(),
                format!(
                    "sets the key field \"{key}\" but not the sequence field \"{seq}\": a part for \
                     another key needs that key's sequence number (from a field of the record); \
                     to keep the record's, set {seq} = \"event.{seq}\""
                ),
            );
        }
        let remove = paths(cx, &mut t, "remove");
        for p in &remove {
            if p == version_field || set.iter().any(|(s, _)| s == p) {
                let span = t.span();
                let what = if p == version_field {
                    "the version field: every part carries its version"
                } else {
                    "a field this part also sets"
                };
                cx.error(
                    &walk::join(&t.path, "remove"),
                    span,
                    format!("removes \"{p}\", {what}"),
                );
            }
        }
        t.finish(cx);
        parts.push(SplitPart { set, remove });
    }
    parts
}

/// An array of field paths, e.g. `remove = ["data.to"]` (absent: empty).
fn paths(cx: &mut Cx<'_>, t: &mut Table<'_, '_>, key: &str) -> Vec<FieldPath> {
    let at = walk::join(&t.path, key);
    let Some(v) = t.raw(key) else {
        return Vec::new();
    };
    let toml::de::DeValue::Array(items) = v.get_ref() else {
        cx.error(
            &at,
            Some(v.span()),
            "expected an array of field paths, e.g. [\"data.to\"]",
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let at = format!("{at}[{i}]");
        match item.get_ref() {
            toml::de::DeValue::String(s) => {
                if let Some(p) = path_of(cx, &at, Some(item.span()), s) {
                    out.push(p);
                }
            }
            _ => cx.error(&at, Some(item.span()), "expected a field path (a string)"),
        }
    }
    out
}

/// Reads and checks `[upcast]` (absent: `None`). `sequenced_key`: `[key] field` and
/// `sequence`, when the pipeline has both.
pub(crate) fn parse(
    cx: &mut Cx<'_>,
    u: &mut Table<'_, '_>,
    sequenced_key: Option<(&FieldPath, &FieldPath)>,
) -> Option<UpcastConfig> {
    if !u.is_present() {
        return None;
    }
    let type_field = u
        .field_path(cx, "type_field")
        .unwrap_or_else(|| FieldPath::parse("type").expect("valid"));
    let version_field = u
        .field_path(cx, "version_field")
        .unwrap_or_else(|| FieldPath::parse("schema_version").expect("valid"));
    let default_version = u.int(cx, "default_version", 1, i64::MAX).unwrap_or(1) as u64;
    let fields = RefCell::new(Vec::new());
    let vars = EventVars { fields: &fields };
    let mut rules: Vec<UpcastRule> = Vec::new();
    let tables = u.tables(cx, "rules");
    if tables.is_empty() {
        cx.error(
            &walk::join(&u.path, "rules"),
            u.span(),
            "is required: at least one [[upcast.rules]] with `from` and what changes",
        );
    }
    for mut r in tables {
        let event_type = r.string(cx, "type");
        let from = r.int(cx, "from", 1, i64::MAX - 1).map(|n| n as u64);
        if from.is_none() && r.keys().iter().all(|k| k != "from") {
            cx.error(
                &walk::join(&r.path, "from"),
                r.span(),
                "is required: the version this rule upgrades (to from + 1)",
            );
        }
        let changes_something = r
            .keys()
            .iter()
            .any(|k| matches!(k.as_str(), "rename" | "defaults" | "compute" | "split"));
        let mut rename = Vec::new();
        let mut rt = r.table(cx, "rename");
        for old in rt.keys() {
            let at = walk::join(&rt.path, &old);
            let span = rt.raw(&old).map(|v| v.span());
            let Some(new) = rt.string(cx, &old) else {
                continue;
            };
            if let (Some(o), Some(n)) = (
                path_of(cx, &at, span.clone(), &old),
                path_of(cx, &at, span, &new),
            ) {
                rename.push((o, n));
            }
        }
        rt.finish(cx);
        let defaults = exprs(cx, &mut r, "defaults", &vars);
        let compute = exprs(cx, &mut r, "compute", &vars);
        let split = split(cx, &mut r, &vars, &version_field, from, sequenced_key);
        if !changes_something {
            cx.error(
                &r.path,
                r.span(),
                "changes nothing: give it `rename`, `defaults`, `compute` or `split`",
            );
        }
        let span = r.span();
        let path = r.path.clone();
        r.finish(cx);
        let Some(from) = from else { continue };
        if rules
            .iter()
            .any(|x| x.from == from && x.event_type == event_type)
        {
            cx.error(
                &path,
                span,
                format!(
                    "a second rule for version {from} of {}",
                    event_type
                        .as_deref()
                        .map_or("every type".to_string(), |t| format!("\"{t}\""))
                ),
            );
            continue;
        }
        rules.push(UpcastRule {
            event_type,
            from,
            rename,
            defaults,
            compute,
            split,
        });
    }
    Some(UpcastConfig {
        type_field,
        version_field,
        default_version,
        rules,
        expr_fields: fields.into_inner(),
    })
}
