//! Scan filters: a CEL expression over one row, compiled and type-checked once per query
//! (on the caller's thread), evaluated by the shards on the rows they scan.
//!
//! A table with typed fields ([`TableSpec::fields`]: declared projections and
//! aggregates) gives `row.key` (string), `row.version` (int) and `row.<field>` with the
//! field's type, so a misspelt field or a wrong comparison is a compile error. Other
//! tables (Rust projections and aggregates, the fold) give `row` as a map of the row as
//! it is rendered (JSON: numbers are ints or doubles, timestamps whatever the row
//! serializes them as), checked as the filter runs.

use std::sync::Arc;

use crate::expr::{Cell, Env, Program, Scope, Slot, Type, Val, compile};
use crate::stage::TableSpec;

/// `row.key` in a typed table.
const KEY: u32 = 0;
/// `row.version` in a typed table.
const VERSION: u32 = 1;
/// `row.<field i>` is `FIELDS + i` in a typed table.
const FIELDS: u32 = 2;
/// `row` as a whole in an untyped table.
const ROW: u32 = 0;

/// A compiled filter, shared by the shards of one scan.
#[derive(Debug)]
pub(crate) struct Filter {
    program: Program,
    /// Compiled against typed fields ([`TypedEnv`]) or the rendered row ([`JsonEnv`]).
    typed: bool,
}

struct RowScope<'a> {
    fields: Option<&'a [(String, Type)]>,
}

impl Scope for RowScope<'_> {
    fn resolve(&self, path: &[&str]) -> Option<(Slot, Type)> {
        match (self.fields, path) {
            (Some(_), ["row", "key"]) => Some((Slot(KEY), Type::String)),
            (Some(_), ["row", "version"]) => Some((Slot(VERSION), Type::Int)),
            (Some(fields), ["row", name]) => fields
                .iter()
                .position(|(n, _)| n == name)
                .map(|i| (Slot(FIELDS + i as u32), fields[i].1)),
            (None, ["row"]) => Some((Slot(ROW), Type::Map)),
            _ => None,
        }
    }

    fn names(&self) -> Vec<String> {
        match self.fields {
            Some(fields) => ["row.key".to_string(), "row.version".to_string()]
                .into_iter()
                .chain(fields.iter().map(|(n, _)| format!("row.{n}")))
                .collect(),
            None => vec!["row".to_string()],
        }
    }
}

impl Filter {
    /// Compiles `src` for rows of `table`; the error lists every problem found.
    pub(crate) fn compile(src: &str, table: &TableSpec) -> Result<Arc<Filter>, String> {
        let scope = RowScope {
            fields: table.fields.as_deref(),
        };
        let program = compile(src, &scope).map_err(|errors| {
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        let ty = program.result_type();
        if ty != Type::Bool && ty != Type::Dyn {
            return Err(format!("must be a bool, but it is {} {ty}", article(ty)));
        }
        Ok(Arc::new(Filter {
            program,
            typed: table.fields.is_some(),
        }))
    }

    /// Whether the filter reads typed fields (else the rendered row).
    pub(crate) fn typed(&self) -> bool {
        self.typed
    }

    /// Evaluates the filter on a typed row.
    pub(crate) fn matches_typed(
        &self,
        key: &str,
        version: u64,
        fields: &[Cell],
    ) -> Result<bool, String> {
        let env = TypedEnv {
            key,
            version: i64::try_from(version).unwrap_or(i64::MAX),
            fields,
        };
        self.eval(&env)
    }

    /// Evaluates the filter on a rendered row (a JSON object).
    pub(crate) fn matches_json(&self, row: &[u8]) -> Result<bool, String> {
        let value: serde_json::Value =
            serde_json::from_slice(row).map_err(|e| format!("the row is not valid JSON ({e})"))?;
        let env = JsonEnv {
            row: json_val(&value),
        };
        self.eval(&env)
    }

    fn eval<E: Env>(&self, env: &E) -> Result<bool, String> {
        self.program
            .eval_bool(env)
            .map_err(|e| format!("filter `{}`: {e}", self.program.source()))
    }
}

/// A filter over JSON values, for tools that read topics (`onceflow log read --where`):
/// `row` is the record's value as a map, checked as the filter runs.
#[derive(Debug, Clone)]
pub struct JsonFilter(Arc<Filter>);

impl JsonFilter {
    /// Compiles `src`; the error lists every problem found, with columns.
    pub fn compile(src: &str) -> Result<Self, String> {
        let table = TableSpec {
            name: String::new(),
            prefix: Vec::new(),
            fields: None,
            kept: true,
        };
        Filter::compile(src, &table).map(JsonFilter)
    }

    /// Whether the JSON value `json` passes; `Err` if it is not JSON or the expression
    /// fails on it (a missing field: guard it with `has(row.x)`).
    pub fn matches(&self, json: &[u8]) -> Result<bool, String> {
        self.0.matches_json(json)
    }
}

fn article(ty: Type) -> &'static str {
    if matches!(ty, Type::Int) { "an" } else { "a" }
}

struct TypedEnv<'a> {
    key: &'a str,
    version: i64,
    fields: &'a [Cell],
}

impl Env for TypedEnv<'_> {
    fn get(&self, slot: Slot) -> Option<Val<'_>> {
        match slot.0 {
            KEY => Some(Val::str(self.key)),
            VERSION => Some(Val::Int(self.version)),
            s => self.fields.get((s - FIELDS) as usize).map(Cell::get),
        }
    }
}

struct JsonEnv {
    row: Val<'static>,
}

impl Env for JsonEnv {
    fn get(&self, slot: Slot) -> Option<Val<'_>> {
        (slot.0 == ROW).then(|| self.row.reborrow())
    }
}

/// A JSON value as an expression value: integers that fit i64 are ints, other numbers
/// doubles; objects are maps in document order.
pub(crate) fn json_val(v: &serde_json::Value) -> Val<'static> {
    use serde_json::Value as J;
    match v {
        J::Null => Val::Null,
        J::Bool(b) => Val::Bool(*b),
        J::Number(n) => match n.as_i64() {
            Some(i) => Val::Int(i),
            None => Val::Double(n.as_f64().unwrap_or(f64::NAN)),
        },
        J::String(s) => Val::string(s.clone()),
        J::Array(a) => Val::list(a.iter().map(json_val).collect()),
        J::Object(m) => Val::Map(Arc::new(
            m.iter()
                .map(|(k, v)| (Val::string(k.clone()), json_val(v)))
                .collect(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed() -> TableSpec {
        TableSpec {
            name: "transactions".into(),
            prefix: vec![0, 0],
            fields: Some(vec![
                ("type".into(), Type::String),
                ("amount".into(), Type::Int),
                ("at".into(), Type::Timestamp),
            ]),
            kept: true,
        }
    }

    #[test]
    fn typed_filters_are_checked_when_compiled() {
        let t = typed();
        let f = Filter::compile(
            "row.type == 'Withdrawn' && row.amount >= 100 && row.at >= timestamp('2026-01-01T00:00:00Z')",
            &t,
        )
        .unwrap();
        let at = Val::Timestamp(1_767_225_600_000_000_000); // 2026-01-01T00:00:00Z
        let row = [Val::string("Withdrawn"), Val::Int(100), at].map(Cell::from);
        assert!(f.matches_typed("ACC-1:3", 3, &row).unwrap());
        let row = [Val::string("Withdrawn"), Val::Int(99), Val::Timestamp(0)].map(Cell::from);
        assert!(!f.matches_typed("ACC-1:3", 3, &row).unwrap());
        let f = Filter::compile("row.key.startsWith('ACC') && row.version > 2", &t).unwrap();
        assert!(f.matches_typed("ACC-1:3", 3, &row).unwrap());

        let err = Filter::compile("row.amont > 1", &t).unwrap_err();
        assert!(err.contains("did you mean 'row.amount'"), "{err}");
        let err = Filter::compile("row.amount >= '100'", &t).unwrap_err();
        assert!(err.contains("cannot compare int and string"), "{err}");
        let err = Filter::compile("row.amount + 1", &t).unwrap_err();
        assert_eq!(err, "must be a bool, but it is an int");
        let err = Filter::compile("row.type ==", &t).unwrap_err();
        assert!(err.starts_with("column "), "{err}");
    }

    #[test]
    fn untyped_filters_read_the_rendered_row() {
        let t = TableSpec {
            fields: None,
            ..typed()
        };
        let f = Filter::compile("row.amount >= 100 && row.tags[0] == 'x'", &t).unwrap();
        assert!(
            f.matches_json(br#"{"key":"a","version":1,"amount":100,"tags":["x"]}"#)
                .unwrap()
        );
        assert!(
            !f.matches_json(br#"{"key":"a","version":1,"amount":99.5,"tags":["x"]}"#)
                .unwrap()
        );
        let err = f.matches_json(br#"{"key":"a","version":1}"#).unwrap_err();
        assert!(err.starts_with("filter `row.amount >= 100"), "{err}");
    }
}
