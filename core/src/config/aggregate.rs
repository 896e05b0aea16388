//! `[aggregate]`: the write side of event sourcing, declared in the pipeline file.
//!
//! Commands (the input records) are validated against per-key state by rules, turned into
//! events, and the events are folded into the state by appliers. Every expression is CEL
//! (`crate::expr`), compiled here once so that `onceflow validate` reports every error
//! with its TOML path, line and column. The stage that runs it is
//! `crate::stage::aggregate`.
//!
//! Variables an expression may read (slots, see [`slots`]):
//! - rules, `emit.when`, `emit.data`, rejection messages: `state.<field>`, `cmd.<path>`
//!   (any field of the command record), `aggregate.id`, `aggregate.version`;
//! - appliers (`[aggregate.events.<Type>]`): `state.<field>`, `event.data.<field>` (the
//!   fields the emitting commands declare), `event.type`, `event.version`, `aggregate.id`.
//!   Appliers never see the command: they must give the same state when events are
//!   replayed without it;
//! - state defaults: constants only.

use std::cell::RefCell;
use std::fmt;
use std::sync::Arc;

use super::walk::{self, Cx, Table};
use super::{FieldPath, MAX_PARTITIONS, defaults, valid_name};
use crate::expr::{self, Program, Scope, Slot, Type};

/// Where the variables of aggregate expressions live (see the module docs).
pub mod slots {
    /// `state.<field i>` is slot `STATE + i`.
    pub const STATE: u32 = 0;
    /// `aggregate.id`.
    pub const AGGREGATE_ID: u32 = 1 << 16;
    /// `aggregate.version` (events applied so far).
    pub const AGGREGATE_VERSION: u32 = AGGREGATE_ID + 1;
    /// `event.type`.
    pub const EVENT_TYPE: u32 = AGGREGATE_ID + 2;
    /// `event.version`.
    pub const EVENT_VERSION: u32 = AGGREGATE_ID + 3;
    /// `cmd.<path j>` is slot `CMD + j`, `j` indexing [`super::AggregateConfig::cmd_fields`].
    pub const CMD: u32 = 1 << 20;
    /// `event.data.<field k>` is slot `DATA + k`, `k` indexing the event type's fields.
    pub const DATA: u32 = 1 << 24;
}

/// Most state fields of an aggregate.
pub const MAX_STATE_FIELDS: usize = 1 << 12;

/// Top-level fields of an event an aggregate writes as JSON, in the order written.
pub const EVENT_FIELDS: [&str; 8] = [
    "event_id",
    "type",
    "aggregate",
    "aggregate_id",
    "version",
    "causation_id",
    "correlation_id",
    "data",
];

/// CloudEvents extension attributes of an event an aggregate writes as an envelope
/// (`events_format = "cloudevents"`): aggregate name, causation and correlation ids, and
/// the aggregate's version (an int).
pub const CLOUDEVENT_EXTENSIONS: [&str; 4] = [
    "aggregate",
    "causationid",
    "correlationid",
    "aggregateversion",
];

/// A compiled expression with its source (equality compares the source).
#[derive(Clone)]
pub struct Expr {
    /// The CEL source as written.
    pub src: String,
    /// The compiled program.
    pub program: Arc<Program>,
}

impl fmt::Debug for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Expr({:?})", self.src)
    }
}

impl PartialEq for Expr {
    fn eq(&self, other: &Self) -> bool {
        self.src == other.src
    }
}

/// A typed field with a default: of an aggregate's state, or of a projection's rows.
#[derive(Debug, Clone, PartialEq)]
pub struct StateField {
    /// Name (`state.<name>`).
    pub name: String,
    /// Static type: from `type`, or the default's type.
    pub ty: Type,
    /// The value of a new aggregate (a constant expression).
    pub default: Expr,
}

/// A rule a command must pass, else it is rejected.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Must be true.
    pub require: Expr,
    /// Machine-readable rejection reason, e.g. `insufficient_funds`.
    pub reason: String,
    /// Optional human-readable message (a string expression).
    pub message: Option<Expr>,
}

/// One event a command emits.
#[derive(Debug, Clone, PartialEq)]
pub struct EmitSpec {
    /// Index into [`AggregateConfig::events`].
    pub event: usize,
    /// Emit only when this is true.
    pub when: Option<Expr>,
    /// `(index into the event type's fields, value)`, in declaration order.
    pub data: Vec<(usize, Expr)>,
}

/// How one command type is handled.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandHandler {
    /// Command type (the value of `type_field`).
    pub name: String,
    /// Checked in order; the first that fails rejects the command.
    pub rules: Vec<Rule>,
    /// Events emitted, in order (each applied before the next is computed).
    pub emit: Vec<EmitSpec>,
}

/// An event type: its data fields and how it changes the state.
#[derive(Debug, Clone, PartialEq)]
pub struct EventType {
    /// Type name.
    pub name: String,
    /// Data fields the commands emitting it declare, with their static types (`dyn` when
    /// two commands disagree).
    pub fields: Vec<(String, Type)>,
    /// `(state field index, new value)`: evaluated against the state before the event,
    /// then assigned together.
    pub set: Vec<(usize, Expr)>,
}

/// A checked `[aggregate]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct AggregateConfig {
    /// Aggregate name (`account`), written into every event.
    pub name: String,
    /// Command field naming the command type.
    pub type_field: FieldPath,
    /// Command field with the command id (fallback: the record's source coordinates).
    pub id_field: FieldPath,
    /// Command field with the correlation id (fallback: the command id).
    pub correlation_field: FieldPath,
    /// Command field with the version the sender expects (optimistic concurrency).
    pub expected_version_field: FieldPath,
    /// Topic of emitted events.
    pub events_topic: String,
    /// `Some(source)`: events are written as CloudEvents 1.0 (structured JSON) with this
    /// `source` attribute; `None`: onceflow's plain JSON events.
    pub cloudevents_source: Option<String>,
    /// `events_format = "cloudevents_binary"`: on Kafka, the events go out in the
    /// CloudEvents Kafka binary content mode (attributes as `ce_*` headers, the data as
    /// the value) instead of structured mode. Needs `[kafka]`.
    pub cloudevents_binary: bool,
    /// Topic of rejected commands.
    pub rejections_topic: String,
    /// Partitions of both topics.
    pub partitions: u32,
    /// State fields, in declaration order.
    pub state: Vec<StateField>,
    /// Command handlers.
    pub commands: Vec<CommandHandler>,
    /// Event types (emitted by some command).
    pub events: Vec<EventType>,
    /// Command fields read by expressions; `cmd.<path>` is slot `CMD + index`.
    pub cmd_fields: Vec<FieldPath>,
}

impl AggregateConfig {
    /// Every command field the decoder must extract.
    pub fn referenced_fields(&self) -> impl Iterator<Item = &FieldPath> {
        [
            &self.type_field,
            &self.id_field,
            &self.correlation_field,
            &self.expected_version_field,
        ]
        .into_iter()
        .chain(&self.cmd_fields)
    }
}

/// What an expression may read.
enum Vars<'a> {
    /// Constants only.
    Constants,
    /// A command handler's expressions.
    Command {
        state: &'a [(String, Type)],
        cmd: &'a RefCell<Vec<FieldPath>>,
    },
    /// An applier of one event type.
    Applier {
        state: &'a [(String, Type)],
        data: &'a [(String, Type)],
    },
}

impl Scope for Vars<'_> {
    fn resolve(&self, path: &[&str]) -> Option<(Slot, Type)> {
        let state = |fields: &[(String, Type)]| match path {
            ["state", name] => fields
                .iter()
                .position(|(n, _)| n == name)
                .map(|i| (Slot(slots::STATE + i as u32), fields[i].1)),
            ["aggregate", "id"] => Some((Slot(slots::AGGREGATE_ID), Type::String)),
            ["aggregate", "version"] => Some((Slot(slots::AGGREGATE_VERSION), Type::Int)),
            _ => None,
        };
        match self {
            Vars::Constants => None,
            Vars::Command { state: s, cmd } => state(s).or_else(|| match path {
                ["cmd", rest @ ..] if !rest.is_empty() => {
                    let fp = FieldPath(rest.iter().map(|s| s.to_string()).collect());
                    let mut cmd = cmd.borrow_mut();
                    let j = cmd.iter().position(|p| *p == fp).unwrap_or_else(|| {
                        cmd.push(fp);
                        cmd.len() - 1
                    });
                    Some((Slot(slots::CMD + j as u32), Type::Dyn))
                }
                _ => None,
            }),
            Vars::Applier { state: s, data } => state(s).or_else(|| match path {
                ["event", "type"] => Some((Slot(slots::EVENT_TYPE), Type::String)),
                ["event", "version"] => Some((Slot(slots::EVENT_VERSION), Type::Int)),
                ["event", "data", name] => data
                    .iter()
                    .position(|(n, _)| n == name)
                    .map(|k| (Slot(slots::DATA + k as u32), data[k].1)),
                _ => None,
            }),
        }
    }

    fn names(&self) -> Vec<String> {
        let state = |s: &[(String, Type)]| {
            s.iter()
                .map(|(n, _)| format!("state.{n}"))
                .chain(["aggregate.id".to_string(), "aggregate.version".to_string()])
                .collect::<Vec<_>>()
        };
        match self {
            Vars::Constants => Vec::new(),
            Vars::Command { state: s, .. } => {
                let mut v = state(s);
                v.push("cmd".into());
                v
            }
            Vars::Applier { state: s, data } => {
                let mut v = state(s);
                v.extend(["event.type".into(), "event.version".into()]);
                v.extend(data.iter().map(|(n, _)| format!("event.data.{n}")));
                v
            }
        }
    }
}

/// Compiles the string at `t.key` as an expression, reporting errors at its TOML path.
/// `want`: the result type it must have (`null` passes where a value is wanted, as it does
/// at run time). `hint`: `(needle, text)`, appended to an error that mentions `needle`.
pub(super) fn expr_at<S: Scope + ?Sized>(
    cx: &mut Cx<'_>,
    t: &mut Table<'_, '_>,
    key: &str,
    scope: &S,
    want: Option<Type>,
    hint: Option<(&str, &str)>,
) -> Option<Expr> {
    let span = t.raw(key).map(|v| v.span());
    let src = t.string(cx, key)?;
    let path = walk::join(&t.path, key);
    match expr::compile(&src, scope) {
        Ok(p) => {
            let got = p.result_type();
            if let Some(w) = want
                && got != Type::Dyn
                && got != w
                && !(got == Type::Null && w != Type::Bool)
            {
                cx.error(
                    &path,
                    span,
                    format!(
                        "must be {} {w}, but `{src}` is {} {got}",
                        article(w),
                        article(got)
                    ),
                );
                return None;
            }
            Some(Expr {
                src,
                program: Arc::new(p),
            })
        }
        Err(errors) => {
            for e in errors {
                let extra = match hint {
                    Some((needle, text)) if e.message.contains(needle) => text,
                    _ => "",
                };
                cx.error(&path, span.clone(), format!("{e} in `{src}`{extra}"));
            }
            None
        }
    }
}

/// The hint for appliers that read the command.
const APPLIER_HINT: Option<(&str, &str)> = Some((
    "'cmd",
    "; appliers see only state, event and aggregate (they are replayed from events alone): put what they need into the event's data",
));

fn article(t: Type) -> &'static str {
    match t {
        Type::Int => "an",
        _ => "a",
    }
}

/// A declared field type by its name (`type = "int"`).
pub(super) fn type_from_name(s: &str) -> Option<Type> {
    Some(match s {
        "int" => Type::Int,
        "double" => Type::Double,
        "string" => Type::String,
        "bool" => Type::Bool,
        "timestamp" => Type::Timestamp,
        "duration" => Type::Duration,
        "list" => Type::List,
        "map" => Type::Map,
        "dyn" => Type::Dyn,
        _ => return None,
    })
}

/// Names [`type_from_name`] knows.
pub(super) const TYPE_NAMES: &[&str] = &[
    "int",
    "double",
    "string",
    "bool",
    "timestamp",
    "duration",
    "list",
    "map",
    "dyn",
];

fn field_or(cx: &mut Cx<'_>, t: &mut Table<'_, '_>, key: &str, default: &str) -> FieldPath {
    t.field_path(cx, key)
        .unwrap_or_else(|| FieldPath::parse(default).expect("valid default field path"))
}

fn topic_or(cx: &mut Cx<'_>, t: &mut Table<'_, '_>, key: &str, default: String) -> String {
    let topic = t.string(cx, key).unwrap_or(default);
    if !valid_name(&topic) {
        let span = t.raw(key).map(|v| v.span());
        cx.error(
            &walk::join(&t.path, key),
            span,
            format!("\"{topic}\" is not a valid topic name"),
        );
    }
    topic
}

/// Fields with a type and a constant default, as `[aggregate.state]` and a projection's
/// `fields` declare them: `name = "<default>"` (the default's type is the field's) or
/// `name = { type = "...", default = "..." }`. `reserved` names are refused.
pub(super) fn typed_fields(
    cx: &mut Cx<'_>,
    t: &mut Table<'_, '_>,
    what: &str,
    reserved: &[&str],
) -> Vec<StateField> {
    let mut fields = Vec::new();
    for fname in t.keys() {
        let path = walk::join(&t.path, &fname);
        let fspan = t.raw(&fname).map(|v| v.span());
        if !valid_ident(&fname) || reserved.contains(&fname.as_str()) {
            let mut msg = format!(
                "{what} field names are identifiers (letters, digits, '_'; not starting with a digit)"
            );
            if !reserved.is_empty() {
                msg.push_str(&format!(
                    " other than {} (every row carries those)",
                    reserved
                        .iter()
                        .map(|r| format!("`{r}`"))
                        .collect::<Vec<_>>()
                        .join(" and ")
                ));
            }
            cx.error(&path, fspan, msg);
            continue;
        }
        let field = match t.raw(&fname).map(|v| v.get_ref()) {
            Some(toml::de::DeValue::String(_)) => {
                expr_at(cx, t, &fname, &Vars::Constants, None, None).map(|e| StateField {
                    name: fname.clone(),
                    ty: e.program.result_type(),
                    default: e,
                })
            }
            _ => {
                let mut ft = t.table(cx, &fname);
                if !ft.is_present() {
                    continue;
                }
                let ty = ft
                    .choice(cx, "type", TYPE_NAMES)
                    .and_then(|s| type_from_name(&s));
                if ty.is_none() && ft.keys().iter().all(|k| k != "type") {
                    cx.error(
                        &walk::join(&ft.path, "type"),
                        ft.span(),
                        format!("is required: one of {}", TYPE_NAMES.join(", ")),
                    );
                }
                if ft.keys().iter().all(|k| k != "default") {
                    cx.error(
                        &walk::join(&ft.path, "default"),
                        ft.span(),
                        "is required: the value of a new one, e.g. \"0\" or \"''\"",
                    );
                }
                let default = expr_at(cx, &mut ft, "default", &Vars::Constants, None, None);
                ft.finish(cx);
                match (ty, default) {
                    (Some(ty), Some(d)) => {
                        let dt = d.program.result_type();
                        if ty != Type::Dyn && dt != ty && dt != Type::Null {
                            cx.error(
                                &walk::join(&path, "default"),
                                None,
                                format!(
                                    "the default `{}` is {} {dt}, not {} {ty}",
                                    d.src,
                                    article(dt),
                                    article(ty)
                                ),
                            );
                            None
                        } else {
                            Some(StateField {
                                name: fname.clone(),
                                ty,
                                default: d,
                            })
                        }
                    }
                    _ => None,
                }
            }
        };
        if let Some(f) = field {
            if f.ty == Type::Null {
                cx.error(
                    &path,
                    fspan,
                    "a null default says nothing about the field's type: write { type = \"string\", default = \"null\" } (or the type it holds)",
                );
            }
            fields.push(f);
        }
    }
    fields
}

/// Reads and checks `[aggregate]` (an absent table gives `None` and no errors).
pub(crate) fn parse(cx: &mut Cx<'_>, a: &mut Table<'_, '_>) -> Option<AggregateConfig> {
    if !a.is_present() {
        return None;
    }
    let name = a.required_string(cx, "name");
    if let Some(n) = &name
        && !valid_name(n)
    {
        cx.error(
            &walk::join(&a.path, "name"),
            a.span(),
            format!("\"{n}\" is not a valid name: use letters, digits, '_', '-' or '.'"),
        );
    }
    let base = name.clone().unwrap_or_else(|| "aggregate".into());
    let type_field = field_or(cx, a, "type_field", "type");
    let id_field = field_or(cx, a, "id_field", "id");
    let correlation_field = field_or(cx, a, "correlation_field", "correlation_id");
    let expected_version_field = field_or(cx, a, "expected_version_field", "expected_version");
    let events_topic = topic_or(cx, a, "events_topic", format!("{base}_events"));
    let rejections_topic = topic_or(cx, a, "rejections_topic", format!("{base}_rejections"));
    let events_format = a.choice(
        cx,
        "events_format",
        &["json", "cloudevents", "cloudevents_binary"],
    );
    let cloudevents_binary = events_format.as_deref() == Some("cloudevents_binary");
    let envelope = events_format
        .as_deref()
        .is_some_and(|f| f.starts_with("cloudevents"));
    let events_source = a.string(cx, "events_source");
    let cloudevents_source = match (envelope, events_source) {
        (true, Some(src)) if !src.is_empty() => Some(src),
        (true, _) => {
            cx.error(
                &walk::join(&a.path, "events_source"),
                a.span(),
                "is required with events_format = \"cloudevents\" (or \"cloudevents_binary\"): the events' `source` attribute, a URI reference such as \"/bank/accounts\"",
            );
            None
        }
        (false, Some(_)) => {
            cx.error(
                &walk::join(&a.path, "events_source"),
                a.span(),
                "applies only with events_format = \"cloudevents\" or \"cloudevents_binary\"",
            );
            None
        }
        _ => None,
    };
    if events_topic == rejections_topic {
        cx.error(
            &walk::join(&a.path, "rejections_topic"),
            a.span(),
            "must differ from events_topic",
        );
    }
    let partitions = a
        .int(cx, "partitions", 1, MAX_PARTITIONS)
        .map(|n| n as u32)
        .unwrap_or(defaults::OUTPUT_PARTITIONS);

    // [aggregate.state]: name = "default" or name = { type = "...", default = "..." }
    let mut st = a.table(cx, "state");
    if !st.is_present() {
        cx.error(
            &walk::join(&a.path, "state"),
            a.span(),
            "is required: the fields of the aggregate's state, e.g. balance = \"0\"",
        );
    }
    let state = typed_fields(cx, &mut st, "state", &[]);
    if state.len() > MAX_STATE_FIELDS {
        cx.error(
            &st.path,
            st.span(),
            format!("at most {MAX_STATE_FIELDS} state fields"),
        );
    }
    st.finish(cx);
    let state_vars: Vec<(String, Type)> = state.iter().map(|f| (f.name.clone(), f.ty)).collect();

    // [aggregate.commands.<Type>]
    let cmd_fields = RefCell::new(Vec::new());
    let cmd_vars = Vars::Command {
        state: &state_vars,
        cmd: &cmd_fields,
    };
    let mut events: Vec<EventType> = Vec::new();
    let mut commands = Vec::new();
    let mut ct = a.table(cx, "commands");
    if !ct.is_present() {
        cx.error(
            &walk::join(&a.path, "commands"),
            a.span(),
            "is required: at least one command handler, e.g. [aggregate.commands.Deposit]",
        );
    }
    for cname in ct.keys() {
        let mut h = ct.table(cx, &cname);
        if !h.is_present() {
            continue;
        }
        let mut rules = Vec::new();
        for mut r in h.tables(cx, "rules") {
            if r.keys().iter().all(|k| k != "require") {
                cx.error(
                    &walk::join(&r.path, "require"),
                    r.span(),
                    "is required: a bool expression the command must satisfy",
                );
            }
            let require = expr_at(cx, &mut r, "require", &cmd_vars, Some(Type::Bool), None);
            let reason = r.required_string(cx, "reason");
            if let Some(rs) = &reason
                && !valid_ident(rs)
            {
                cx.error(
                    &walk::join(&r.path, "reason"),
                    r.span(),
                    format!("\"{rs}\" is not a reason code: use letters, digits and '_' (e.g. insufficient_funds); put prose into `message`"),
                );
            }
            let message = expr_at(cx, &mut r, "message", &cmd_vars, Some(Type::String), None);
            r.finish(cx);
            if let (Some(require), Some(reason)) = (require, reason) {
                rules.push(Rule {
                    require,
                    reason,
                    message,
                });
            }
        }
        let mut emit = Vec::new();
        for mut e in h.tables(cx, "emit") {
            let ety = e.required_string(cx, "type");
            if let Some(t) = &ety
                && !valid_name(t)
            {
                cx.error(
                    &walk::join(&e.path, "type"),
                    e.span(),
                    format!("\"{t}\" is not a valid event type name"),
                );
            }
            let when = expr_at(cx, &mut e, "when", &cmd_vars, Some(Type::Bool), None);
            let mut dt = e.table(cx, "data");
            let mut data = Vec::new();
            for dname in dt.keys() {
                if !valid_ident(&dname) {
                    let span = dt.raw(&dname).map(|v| v.span());
                    cx.error(
                        &walk::join(&dt.path, &dname),
                        span,
                        "data field names are identifiers (letters, digits, '_')",
                    );
                    continue;
                }
                if let Some(x) = expr_at(cx, &mut dt, &dname, &cmd_vars, None, None) {
                    data.push((dname, x));
                }
            }
            dt.finish(cx);
            e.finish(cx);
            let Some(ety) = ety else { continue };
            let ei = match events.iter().position(|t| t.name == ety) {
                Some(i) => i,
                None => {
                    events.push(EventType {
                        name: ety.clone(),
                        fields: Vec::new(),
                        set: Vec::new(),
                    });
                    events.len() - 1
                }
            };
            let ev = &mut events[ei];
            let data = data
                .into_iter()
                .map(|(n, x)| {
                    let ty = x.program.result_type();
                    let k = match ev.fields.iter().position(|(f, _)| *f == n) {
                        Some(k) => {
                            if ev.fields[k].1 != ty {
                                ev.fields[k].1 = Type::Dyn;
                            }
                            k
                        }
                        None => {
                            ev.fields.push((n, ty));
                            ev.fields.len() - 1
                        }
                    };
                    (k, x)
                })
                .collect();
            emit.push(EmitSpec {
                event: ei,
                when,
                data,
            });
        }
        if emit.is_empty() && h.keys().iter().all(|k| k != "emit") {
            cx.error(
                &walk::join(&h.path, "emit"),
                h.span(),
                "is required: the events the command produces, e.g. emit = [{ type = \"Deposited\", data = { amount = \"cmd.amount\" } }]",
            );
        }
        h.finish(cx);
        commands.push(CommandHandler {
            name: cname,
            rules,
            emit,
        });
    }
    ct.finish(cx);

    // [aggregate.events.<Type>]: field = "new value"
    let mut et = a.table(cx, "events");
    for ename in et.keys() {
        let mut t = et.table(cx, &ename);
        if !t.is_present() {
            continue;
        }
        let Some(ei) = events.iter().position(|e| e.name == ename) else {
            let known: Vec<&str> = events.iter().map(|e| e.name.as_str()).collect();
            cx.error(
                &t.path,
                t.span(),
                format!(
                    "no command emits \"{ename}\" (emitted: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            );
            continue;
        };
        let data = events[ei].fields.clone();
        let vars = Vars::Applier {
            state: &state_vars,
            data: &data,
        };
        let mut set = Vec::new();
        for field in t.keys() {
            let Some(si) = state.iter().position(|f| f.name == field) else {
                let span = t.raw(&field).map(|v| v.span());
                cx.error(
                    &walk::join(&t.path, &field),
                    span,
                    format!(
                        "not a state field (state fields: {})",
                        state_vars
                            .iter()
                            .map(|(n, _)| n.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
                continue;
            };
            let want = Some(state[si].ty).filter(|t| *t != Type::Dyn);
            if let Some(x) = expr_at(cx, &mut t, &field, &vars, want, APPLIER_HINT) {
                set.push((si, x));
            }
        }
        t.finish(cx);
        events[ei].set = set;
    }
    et.finish(cx);

    Some(AggregateConfig {
        name: name?,
        type_field,
        id_field,
        correlation_field,
        expected_version_field,
        events_topic,
        cloudevents_source,
        cloudevents_binary,
        rejections_topic,
        partitions,
        state,
        commands,
        events,
        cmd_fields: cmd_fields.into_inner(),
    })
}

/// A field name: letters, digits and `_`, not starting with a digit.
pub(super) fn valid_ident(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}
