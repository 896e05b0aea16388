//! Rust projections: the read side of the Rust API. A [`Projection`] turns typed events
//! into typed rows of one read model; [`TypedProjections`] runs several of them as one
//! stage, exactly like declared `[[projections]]`: the router asks each projection for
//! the rows an event updates (it may name several), the shard owning each row applies
//! the event to it, and every changed row is written to the projection's topic as an
//! upsert `{"key":K,"version":V,<row fields>}` (a deleted row as a `null` tombstone),
//! per epoch, in the epoch's transaction. After a crash the rows are rebuilt by replay.

use std::any::Any;
use std::fmt;
use std::io::Write as _;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::write_data;
use crate::stage::{
    Applied, Emit, EventView, OutputSpec, Refused, RowKeys, RowRouter, Stage, TableSpec,
};
use crate::stats::DeadReason;

/// Bytes of the projection index at the start of every row key (as declared projections).
const PREFIX: usize = 2;

/// Most projections in one [`TypedProjections`] (the index is a 2-byte key prefix).
pub const MAX_TYPED_PROJECTIONS: usize = 1 << 16;

/// What [`Projection::apply`] did to a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Update {
    /// The row changed: its upsert is written.
    Upsert,
    /// The row is removed: a `null` tombstone is written, and a later event starts it
    /// afresh from `Row::default()`.
    Delete,
    /// Nothing changed; nothing is written (the row's version still counts the event).
    Unchanged,
}

/// A read model built from events, in Rust.
///
/// Like every stage it must be deterministic: the same events in the same order give the
/// same rows (no clock, no randomness); after a crash the engine replays the events
/// through `keys` and `apply` with outputs off.
///
/// # Examples
///
/// ```
/// use onceflow_core::api::{Keys, Projection, Update};
///
/// #[derive(serde::Deserialize)]
/// struct Event { aggregate_id: String, #[serde(rename = "type")] kind: String, data: Data }
/// #[derive(serde::Deserialize)]
/// struct Data { amount: Option<i64> }
///
/// #[derive(Default, serde::Serialize)]
/// struct Balance { balance: i64 }
///
/// struct Balances;
///
/// impl Projection for Balances {
///     type Event = Event;
///     type Row = Balance;
///
///     fn keys(&self, e: &Event, keys: &mut Keys<'_>) {
///         keys.push(&e.aggregate_id);
///     }
///
///     fn apply(&self, row: &mut Balance, _key: &str, e: &Event) -> Result<Update, String> {
///         let amount = e.data.amount.unwrap_or(0);
///         let next = match e.kind.as_str() {
///             "Deposited" => row.balance.checked_add(amount),
///             "Withdrawn" => row.balance.checked_sub(amount),
///             _ => return Ok(Update::Unchanged),
///         };
///         row.balance = next.ok_or("integer overflow in the balance")?;
///         Ok(Update::Upsert)
///     }
/// }
/// ```
pub trait Projection: Send + Sync + 'static {
    /// An event, deserialized from the input record (JSON). A record that does not
    /// deserialize is dead-lettered (`bad_key`) and no projection sees it: to pass over
    /// event types a projection does not know, give its tagged enum a
    /// `#[serde(other)]` unit variant.
    type Event: DeserializeOwned;
    /// A row: `Default` is a new (or deleted) row; serialized as a JSON object whose
    /// members are the row's fields (`key` and `version` are added by the engine).
    type Row: Default + Serialize + Send + 'static;

    /// The keys of the rows `event` updates: none, one or several (an event may update
    /// an account's row and the day's report row of another projection, or several rows
    /// of this one). An empty key dead-letters the record (`bad_key`).
    fn keys(&self, event: &Self::Event, keys: &mut Keys<'_>);

    /// Applies `event` to the row `key` (`Row::default()` when new). All or nothing: on
    /// `Err` the row must be as it was (check before you change it); this update is then
    /// dead-lettered (`logic_error`, with the projection and the row in the detail), and
    /// the event's other rows are not affected.
    fn apply(&self, row: &mut Self::Row, key: &str, event: &Self::Event) -> Result<Update, String>;
}

/// The row keys an event updates in one projection ([`Projection::keys`]).
pub struct Keys<'a> {
    keys: &'a mut RowKeys,
    table: u16,
    empty: bool,
}

impl Keys<'_> {
    /// The event updates row `key`.
    pub fn push(&mut self, key: &str) {
        if !self.keys.push(self.table, key.as_bytes()) {
            self.empty = true;
        }
    }

    /// The event updates the row whose key is formatted from `key` (no allocation), e.g.
    /// `keys.push_fmt(format_args!("{}:{}", e.account, month))`.
    pub fn push_fmt(&mut self, key: fmt::Arguments<'_>) {
        if !self.keys.push_with(self.table, |b| {
            b.write_fmt(key).expect("writing to a Vec cannot fail")
        }) {
            self.empty = true;
        }
    }
}

/// Name, topic and partitions of one [`Projection`] of a [`TypedProjections`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectionTopic {
    /// Projection name: in dead letters and queries.
    pub name: String,
    /// Output topic in the state log.
    pub topic: String,
    /// Partitions of the topic.
    pub partitions: u32,
}

impl ProjectionTopic {
    /// Topic `name` with 4 partitions, as a declared projection without `topic`.
    pub fn named(name: &str) -> Self {
        ProjectionTopic {
            name: name.to_string(),
            topic: name.to_string(),
            partitions: crate::config::defaults::OUTPUT_PARTITIONS,
        }
    }
}

/// A row of a [`TypedProjections`] stage: which projection it belongs to and its typed
/// value.
pub struct TypedRow {
    table: u16,
    deleted: bool,
    row: Box<dyn Any + Send>,
}

impl fmt::Debug for TypedRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TypedRow")
            .field("table", &self.table)
            .field("deleted", &self.deleted)
            .finish_non_exhaustive()
    }
}

/// A [`Projection`] with its types erased, so that one stage holds several.
trait Erased: Send + Sync {
    fn keys(&self, raw: &[u8], keys: &mut Keys<'_>) -> Result<(), String>;
    fn new_row(&self) -> Box<dyn Any + Send>;
    fn apply(&self, row: &mut (dyn Any + Send), key: &str, raw: &[u8]) -> Result<Update, String>;
    fn render(&self, row: &(dyn Any + Send), out: &mut Vec<u8>);
}

struct Typed<P>(P);

impl<P: Projection> Typed<P> {
    fn event(raw: &[u8]) -> Result<P::Event, String> {
        serde_json::from_slice(raw).map_err(|e| format!("the event does not fit: {e}"))
    }
}

impl<P: Projection> Erased for Typed<P> {
    fn keys(&self, raw: &[u8], keys: &mut Keys<'_>) -> Result<(), String> {
        let event = Self::event(raw)?;
        self.0.keys(&event, keys);
        Ok(())
    }

    fn new_row(&self) -> Box<dyn Any + Send> {
        Box::new(P::Row::default())
    }

    fn apply(&self, row: &mut (dyn Any + Send), key: &str, raw: &[u8]) -> Result<Update, String> {
        let event = Self::event(raw)?;
        let row = row
            .downcast_mut::<P::Row>()
            .expect("a row belongs to the projection of its key prefix");
        self.0.apply(row, key, &event)
    }

    fn render(&self, row: &(dyn Any + Send), out: &mut Vec<u8>) {
        let row = row
            .downcast_ref::<P::Row>()
            .expect("a row belongs to the projection of its key prefix");
        write_members(out, row, "row");
    }
}

/// Writes `v` as JSON object members (`"a":1,"b":2`, no braces), or as `"<name>":<v>`
/// when it is not an object.
pub(super) fn write_members(out: &mut Vec<u8>, v: &impl Serialize, name: &str) {
    let at = out.len();
    if serde_json::to_writer(&mut *out, v).is_ok()
        && out.len() >= at + 2
        && out[at] == b'{'
        && out[out.len() - 1] == b'}'
    {
        out.pop();
        out.remove(at);
    } else {
        out.truncate(at);
        crate::batch::write_json_str(out, name.as_bytes());
        out.push(b':');
        write_data(out, v);
    }
}

struct Entry {
    topic: ProjectionTopic,
    projection: Arc<dyn Erased>,
}

/// Runs one or more [`Projection`]s as a [`Stage`], like declared `[[projections]]`
/// (see the module documentation). Run it with [`crate::engine::run_with_stage`]; the
/// pipeline gives the sources, state directory, commit interval and `view.emit`, and
/// must not set `key.sequence`. Declared `[[projections]]` of that pipeline are replaced.
///
/// # Examples
///
/// ```no_run
/// # use onceflow_core::api::{Keys, Projection, Update};
/// # #[derive(serde::Deserialize)] struct Event { aggregate_id: String }
/// # #[derive(Default, serde::Serialize)] struct Count { events: i64 }
/// # struct Counts;
/// # impl Projection for Counts {
/// #     type Event = Event; type Row = Count;
/// #     fn keys(&self, e: &Event, keys: &mut Keys<'_>) { keys.push(&e.aggregate_id) }
/// #     fn apply(&self, r: &mut Count, _: &str, _: &Event) -> Result<Update, String> {
/// #         r.events += 1; Ok(Update::Upsert) }
/// # }
/// use std::sync::Arc;
/// use onceflow_core::api::{ProjectionTopic, TypedProjections};
/// use onceflow_core::config::Pipeline;
/// use onceflow_core::engine::{self, RunOptions};
///
/// let p = Pipeline::load("projections.toml".as_ref())?;
/// let stage = TypedProjections::new().with(ProjectionTopic::named("counts"), Counts);
/// engine::run_with_stage(&p, Arc::new(stage), RunOptions::default())?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Default)]
pub struct TypedProjections {
    list: Vec<Entry>,
}

impl fmt::Debug for TypedProjections {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.list.iter().map(|e| &e.topic))
            .finish()
    }
}

impl TypedProjections {
    /// No projections yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `projection`, writing to `topic`.
    ///
    /// # Panics
    ///
    /// When the name is already taken, or beyond [`MAX_TYPED_PROJECTIONS`].
    pub fn with<P: Projection>(mut self, topic: ProjectionTopic, projection: P) -> Self {
        assert!(
            self.list.iter().all(|e| e.topic.name != topic.name),
            "two projections named '{}': names must be unique",
            topic.name
        );
        assert!(
            self.list.len() < MAX_TYPED_PROJECTIONS,
            "more than {MAX_TYPED_PROJECTIONS} projections"
        );
        self.list.push(Entry {
            topic,
            projection: Arc::new(Typed(projection)),
        });
        self
    }

    fn entry(&self, row: &TypedRow) -> &Entry {
        &self.list[row.table as usize]
    }
}

/// The router's side of a [`TypedProjections`]: every projection's keys for a record.
struct Routing {
    list: Vec<(String, Arc<dyn Erased>)>,
}

impl RowRouter for Routing {
    fn route(&self, raw: &[u8], keys: &mut RowKeys) -> Result<(), String> {
        // hot path: one deserialization of the event per projection
        for (i, (name, p)) in self.list.iter().enumerate() {
            let mut k = Keys {
                keys: &mut *keys,
                table: i as u16,
                empty: false,
            };
            p.keys(raw, &mut k)
                .map_err(|e| format!("projection '{name}': {e}"))?;
            if k.empty {
                return Err(format!("projection '{name}': a row key is empty"));
            }
        }
        Ok(())
    }
}

impl Stage for TypedProjections {
    type State = TypedRow;

    fn new_state(&self, key: &[u8]) -> TypedRow {
        let table = u16::from_be_bytes([key[0], key[1]]);
        TypedRow {
            table,
            deleted: false,
            row: self.list[table as usize].projection.new_row(),
        }
    }

    fn apply(
        &self,
        row: &mut TypedRow,
        _ev: EventView<'_>,
        emit: &mut Emit<'_>,
    ) -> Result<Applied, Refused> {
        // hot path: one deserialization of the event per delivery
        let e = self.entry(row);
        debug_assert_eq!(emit.target, u32::from(row.table));
        let key = std::str::from_utf8(&emit.key[PREFIX..]).unwrap_or("");
        match e.projection.apply(&mut *row.row, key, emit.raw) {
            Ok(Update::Upsert) => {
                row.deleted = false;
                Ok(Applied::Changed)
            }
            Ok(Update::Delete) => {
                row.deleted = true;
                row.row = e.projection.new_row();
                Ok(Applied::Changed)
            }
            Ok(Update::Unchanged) => Ok(Applied::Unchanged),
            Err(msg) => Err(Refused {
                reason: DeadReason::Logic,
                detail: format!("projection '{}' row '{key}': {msg}", e.topic.name),
            }),
        }
    }

    fn render(&self, row: &TypedRow, out: &mut Vec<u8>) {
        self.entry(row).projection.render(&*row.row, out);
    }

    fn outputs(&self) -> Vec<OutputSpec> {
        self.list
            .iter()
            .map(|e| OutputSpec {
                topic: e.topic.topic.clone(),
                partitions: e.topic.partitions,
            })
            .collect()
    }

    fn view_output(&self, row: &TypedRow) -> Option<usize> {
        Some(row.table as usize)
    }

    fn is_deleted(&self, row: &TypedRow) -> bool {
        row.deleted
    }

    fn key_prefix_len(&self) -> usize {
        PREFIX
    }

    fn tables(&self, _view_topic: &str) -> Vec<TableSpec> {
        self.list
            .iter()
            .enumerate()
            .map(|(i, e)| TableSpec {
                name: e.topic.name.clone(),
                prefix: (i as u16).to_be_bytes().to_vec(),
                fields: None,
                kept: true,
            })
            .collect()
    }

    fn row_router(&self) -> Option<Arc<dyn RowRouter>> {
        Some(Arc::new(Routing {
            list: self
                .list
                .iter()
                .map(|e| (e.topic.name.clone(), e.projection.clone()))
                .collect(),
        }))
    }
}
