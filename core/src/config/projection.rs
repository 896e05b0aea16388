//! `[[projections]]`: read models built from event streams, keyed by any expression.
//!
//! Each projection keeps one row per key: fields with defaults, changed by `[[...on]]`
//! handlers. For every input record, every projection whose `when` holds computes its
//! key (a CEL expression: `event.aggregate_id`, or
//! `string(timestamp_ms(event.data.at)).substring(0, 10)` for a daily row), so one event
//! can update rows of several projections. Rows are written as upserts to the
//! projection's topic; a handler's `delete` removes the row (a `null` tombstone).
//!
//! Variables: `event.<path>` (any scalar field of the record), `row.<field>` (the row
//! before this event), `row.key`.
//!
//! `insert_only = true` declares a projection whose every event writes a new row that
//! never changes (a history): its rows are written to its topic and not kept in state,
//! so its handlers cannot read `row` nor `delete`, and reads of its state are refused.

use std::cell::RefCell;

use super::aggregate::{StateField, expr_at, typed_fields};
use super::walk::{self, Cx, Table};
use super::{Expr, FieldPath, MAX_PARTITIONS, defaults, valid_name};
use crate::expr::{Scope, Slot, Type};

/// Where projection variables live.
pub mod slots {
    /// `row.<field i>` is slot `ROW + i`.
    pub const ROW: u32 = 0;
    /// `row.key`.
    pub const ROW_KEY: u32 = 1 << 16;
    /// `event.<path j>` is slot `EVENT + j`, `j` indexing
    /// [`super::ProjectionsConfig::event_fields`].
    pub const EVENT: u32 = 1 << 20;
}

/// Most projections in one pipeline.
pub const MAX_PROJECTIONS: usize = 256;

/// A field of a projection's rows.
pub type RowField = StateField;

/// What one handler does to a row.
#[derive(Debug, Clone, PartialEq)]
pub struct Handler {
    /// Applies to records whose type is one of these (empty: every record).
    pub types: Vec<String>,
    /// Applies only when this holds.
    pub when: Option<Expr>,
    /// `(row field index, new value)`, evaluated against the row before the event, then
    /// assigned together.
    pub set: Vec<(usize, Expr)>,
    /// Removes the row (after `set`) when this holds.
    pub delete: Option<Expr>,
}

/// One projection.
#[derive(Debug, Clone, PartialEq)]
pub struct ProjectionConfig {
    /// Name; also the default topic.
    pub name: String,
    /// Output topic (state log).
    pub topic: String,
    /// Partitions of the topic.
    pub partitions: u32,
    /// Records this projection looks at (absent: all).
    pub when: Option<Expr>,
    /// The row key: a string or integer expression.
    pub key: Expr,
    /// Row fields, in declaration order.
    pub fields: Vec<RowField>,
    /// Handlers, in order; every one that matches is applied.
    pub on: Vec<Handler>,
    /// Rows are written once and not kept (`insert_only = true`): each delivery starts
    /// from the defaults and its row goes straight to the topic, with version 1.
    pub insert_only: bool,
}

/// Every projection of a pipeline, with the record fields they read.
#[derive(Debug, Clone, PartialEq)]
pub struct ProjectionsConfig {
    /// Field naming the record type (for `on.types`).
    pub type_field: FieldPath,
    /// The projections.
    pub list: Vec<ProjectionConfig>,
    /// Record fields the expressions read: `event.<path>` is slot `EVENT + index`.
    pub event_fields: Vec<FieldPath>,
}

struct Vars<'a> {
    row: Option<&'a [(String, Type)]>,
    event: &'a RefCell<Vec<FieldPath>>,
    /// `row.<name>` the expressions resolved (to refuse them in an insert-only projection).
    row_reads: &'a RefCell<Vec<String>>,
}

impl Scope for Vars<'_> {
    fn resolve(&self, path: &[&str]) -> Option<(Slot, Type)> {
        match path {
            ["row", "key"] if self.row.is_some() => {
                self.row_reads.borrow_mut().push("row.key".into());
                Some((Slot(slots::ROW_KEY), Type::Dyn))
            }
            ["row", name] => {
                let row = self.row?;
                let found = row
                    .iter()
                    .position(|(n, _)| n == name)
                    .map(|i| (Slot(slots::ROW + i as u32), row[i].1));
                if found.is_some() {
                    self.row_reads.borrow_mut().push(format!("row.{name}"));
                }
                found
            }
            ["event", rest @ ..] if !rest.is_empty() => {
                let fp = FieldPath(rest.iter().map(|s| s.to_string()).collect());
                let mut f = self.event.borrow_mut();
                let j = f.iter().position(|p| *p == fp).unwrap_or_else(|| {
                    f.push(fp);
                    f.len() - 1
                });
                Some((Slot(slots::EVENT + j as u32), Type::Dyn))
            }
            _ => None,
        }
    }

    fn names(&self) -> Vec<String> {
        let mut v = vec!["event".to_string()];
        if let Some(row) = self.row {
            v.push("row.key".into());
            v.extend(row.iter().map(|(n, _)| format!("row.{n}")));
        }
        v
    }
}

/// Reports the `row.*` that the expression at `t.key` just read (and forgets them): an
/// insert-only projection has no row to read.
fn refuse_row_reads(
    cx: &mut Cx<'_>,
    t: &mut Table<'_, '_>,
    key: &str,
    reads: &RefCell<Vec<String>>,
) {
    let mut reads = reads.borrow_mut();
    if reads.is_empty() {
        return;
    }
    reads.sort();
    reads.dedup();
    let span = t.raw(key).map(|v| v.span());
    cx.error(
        &walk::join(&t.path, key),
        span,
        format!(
            "reads {}, but an insert_only projection keeps no rows: every event writes a new row from the defaults, so compute the field from `event` (or drop `insert_only`)",
            reads.join(", ")
        ),
    );
    reads.clear();
}

/// Reads `[[projections]]` (and `projection_type_field` from the root); `None` when there
/// are none.
pub(crate) fn parse(cx: &mut Cx<'_>, root: &mut Table<'_, '_>) -> Option<ProjectionsConfig> {
    let tables = root.tables(cx, "projections");
    if tables.is_empty() {
        return None;
    }
    let event = RefCell::new(Vec::new());
    let mut list: Vec<ProjectionConfig> = Vec::new();
    let mut type_field: Option<FieldPath> = None;
    let mut seen: Vec<String> = Vec::new();
    for mut p in tables {
        let name = p.required_string(cx, "name");
        if let Some(n) = &name {
            if !valid_name(n) {
                cx.error(
                    &walk::join(&p.path, "name"),
                    p.span(),
                    format!("\"{n}\" is not a valid name: use letters, digits, '_', '-' or '.'"),
                );
            }
            if seen.contains(n) {
                cx.error(
                    &walk::join(&p.path, "name"),
                    p.span(),
                    format!("duplicate projection name \"{n}\""),
                );
            }
            seen.push(n.clone());
        }
        let topic = p
            .string(cx, "topic")
            .or_else(|| name.clone())
            .unwrap_or_default();
        if !topic.is_empty() && !valid_name(&topic) {
            cx.error(
                &walk::join(&p.path, "topic"),
                p.span(),
                format!("\"{topic}\" is not a valid topic name"),
            );
        }
        let partitions = p
            .int(cx, "partitions", 1, MAX_PARTITIONS)
            .map(|n| n as u32)
            .unwrap_or(defaults::OUTPUT_PARTITIONS);
        if let Some(tf) = p.field_path(cx, "type_field") {
            if type_field.as_ref().is_some_and(|t| *t != tf) {
                cx.error(
                    &walk::join(&p.path, "type_field"),
                    p.span(),
                    "all projections of a pipeline read the type from the same field",
                );
            }
            type_field = Some(tf);
        }
        let row_reads = RefCell::new(Vec::new());
        let no_row = Vars {
            row: None,
            event: &event,
            row_reads: &row_reads,
        };
        let insert_only = p.bool(cx, "insert_only").unwrap_or(false);
        let when = expr_at(cx, &mut p, "when", &no_row, Some(Type::Bool), None);
        if p.keys().iter().all(|k| k != "key") {
            cx.error(
                &walk::join(&p.path, "key"),
                p.span(),
                "is required: the row key, e.g. key = \"event.aggregate_id\"",
            );
        }
        let key = expr_at(cx, &mut p, "key", &no_row, None, None);
        if let Some(k) = &key
            && !matches!(
                k.program.result_type(),
                Type::Dyn | Type::String | Type::Int
            )
        {
            cx.error(
                &walk::join(&p.path, "key"),
                p.span(),
                format!(
                    "must be a string or an int, but `{}` is {}",
                    k.src,
                    k.program.result_type()
                ),
            );
        }

        // fields
        let mut ft = p.table(cx, "fields");
        let fields = typed_fields(cx, &mut ft, "row", &["key", "version"]);
        ft.finish(cx);
        let row: Vec<(String, Type)> = fields.iter().map(|f| (f.name.clone(), f.ty)).collect();
        let vars = Vars {
            row: Some(&row),
            event: &event,
            row_reads: &row_reads,
        };

        // on
        let mut on = Vec::new();
        let handlers = p.tables(cx, "on");
        if handlers.is_empty() {
            cx.error(
                &walk::join(&p.path, "on"),
                p.span(),
                "is required: at least one handler, e.g. [[projections.on]] types = [\"Deposited\"] set = { balance = \"row.balance + event.data.amount\" }",
            );
        }
        for mut h in handlers {
            let types = match h.raw("types").map(|v| v.get_ref()) {
                None => Vec::new(),
                Some(toml::de::DeValue::Array(items)) => items
                    .iter()
                    .filter_map(|i| match i.get_ref() {
                        toml::de::DeValue::String(s) => Some(s.to_string()),
                        _ => {
                            cx.error(
                                &walk::join(&h.path, "types"),
                                Some(i.span()),
                                "expected event type names (strings)",
                            );
                            None
                        }
                    })
                    .collect(),
                Some(_) => {
                    let span = h.raw("types").map(|v| v.span());
                    cx.error(
                        &walk::join(&h.path, "types"),
                        span,
                        "expected an array of event type names, e.g. [\"Deposited\"]",
                    );
                    Vec::new()
                }
            };
            row_reads.borrow_mut().clear();
            let when = expr_at(cx, &mut h, "when", &vars, Some(Type::Bool), None);
            if insert_only {
                refuse_row_reads(cx, &mut h, "when", &row_reads);
            }
            let delete = expr_at(cx, &mut h, "delete", &vars, Some(Type::Bool), None);
            if insert_only && h.keys().iter().any(|k| k == "delete") {
                let span = h.raw("delete").map(|v| v.span());
                cx.error(
                    &walk::join(&h.path, "delete"),
                    span,
                    "an insert_only projection keeps no rows, so it cannot delete one: drop `delete`, or `insert_only`",
                );
            }
            let mut st = h.table(cx, "set");
            let mut set = Vec::new();
            for f in st.keys() {
                let Some(i) = fields.iter().position(|x| x.name == f) else {
                    let span = st.raw(&f).map(|v| v.span());
                    cx.error(
                        &walk::join(&st.path, &f),
                        span,
                        format!(
                            "not a field of this projection (fields: {})",
                            row.iter()
                                .map(|(n, _)| n.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    );
                    continue;
                };
                let want = Some(fields[i].ty).filter(|t| *t != Type::Dyn);
                row_reads.borrow_mut().clear();
                if let Some(x) = expr_at(cx, &mut st, &f, &vars, want, None) {
                    set.push((i, x));
                }
                if insert_only {
                    refuse_row_reads(cx, &mut st, &f, &row_reads);
                }
            }
            st.finish(cx);
            if set.is_empty()
                && delete.is_none()
                && h.keys().iter().all(|k| k != "set" && k != "delete")
            {
                cx.error(&h.path, h.span(), "does nothing: give it `set` or `delete`");
            }
            h.finish(cx);
            on.push(Handler {
                types,
                when,
                set,
                delete,
            });
        }
        p.finish(cx);
        if let (Some(name), Some(key)) = (name, key) {
            list.push(ProjectionConfig {
                name,
                topic,
                partitions,
                when,
                key,
                fields,
                on,
                insert_only,
            });
        }
    }
    if list.len() > MAX_PROJECTIONS {
        cx.error(
            "projections",
            None,
            format!("at most {MAX_PROJECTIONS} projections"),
        );
    }
    Some(ProjectionsConfig {
        type_field: type_field.unwrap_or_else(|| FieldPath::parse("type").expect("valid")),
        list,
        event_fields: event.into_inner(),
    })
}
