//! Logic stages: what a shard does with each in-order record of a key.
//!
//! A stage owns no I/O and no clock: given the same records in the same order it must
//! produce the same state (replay after a crash depends on it). The engine handles
//! sequence checks, reordering, dead letters and emission; a stage only folds.

pub mod aggregate;
pub mod fold;
pub mod projection;

use std::sync::Arc;

use crate::batch::OutBuf;
use crate::decode::Value;
use crate::expr::{Cell, Type};
use crate::hash::{PARTITION_SALT, bucket};
use crate::stats::DeadReason;

pub use aggregate::{AggState, Aggregate};
pub use fold::{Fold, FoldState};
pub use projection::{Projections, Row};

/// Fields a row or an aggregate state keeps inline, in the key's entry itself: reading
/// them follows no pointer. A projection or state with more fields keeps them all on
/// the heap.
pub const INLINE_FIELDS: usize = 6;

/// A row's or an aggregate state's field values, in declaration order.
pub type Fields = smallvec::SmallVec<[Cell; INLINE_FIELDS]>;

/// The fields of one record, as a stage sees them.
#[derive(Clone, Copy)]
pub struct EventView<'a> {
    /// Values in the order of `Pipeline::referenced_fields()`.
    pub values: &'a [Value],
    /// Bytes behind `Value::Str`.
    pub arena: &'a [u8],
}

impl<'a> EventView<'a> {
    /// The field in `slot` as an expression value: `None` when absent, or an object or
    /// array (which expressions cannot read as a whole).
    #[inline]
    pub fn val(&self, slot: usize) -> Option<crate::expr::Val<'a>> {
        use crate::expr::Val;
        Some(match self.values[slot] {
            Value::Missing | Value::Composite => return None,
            Value::Null => Val::Null,
            Value::Bool(b) => Val::Bool(b),
            Value::Int(i) => Val::Int(i),
            Value::Float(f) => Val::Double(f),
            v @ Value::Str(..) => Val::str(self.str(v)?),
        })
    }

    /// The string behind a `Value::Str`.
    #[inline]
    pub fn str(&self, v: Value) -> Option<&'a str> {
        match v {
            Value::Str(s, l) => std::str::from_utf8(&self.arena[s as usize..(s + l) as usize]).ok(),
            _ => None,
        }
    }
}

/// An output topic a stage writes to, besides the view (e.g. an aggregate's events and
/// rejections). Created in the state log on start; written in the epoch's transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputSpec {
    /// Topic name in the state log.
    pub topic: String,
    /// Partitions; records go to `bucket(stable_hash(key))`, so one key stays in order.
    pub partitions: u32,
}

/// Where a stage writes the records of one `apply` (what the engine knows of the record
/// being applied, and the stage's output buffers for this epoch).
pub struct Emit<'a> {
    /// The record's key.
    pub key: &'a [u8],
    /// `stable_hash(key)`.
    pub key_hash: u64,
    /// Name of the source the record came from.
    pub source: &'a str,
    /// Its partition and offset there: together a stable identity of the record.
    pub partition: u32,
    /// Offset in that partition.
    pub offset: u64,
    /// In a projection pipeline, the projection this delivery is for
    /// ([`crate::batch::RECORD`] otherwise).
    pub target: u32,
    /// Which part of the record this is, when an `[upcast]` rule split it
    /// ([`crate::batch::Part::WHOLE`] otherwise): with the offset, a stable identity.
    pub part: crate::batch::Part,
    /// The record as it was read (for stages that decode it themselves). For a part of a
    /// split record, still the whole stored record: upcasting is in the decoded values.
    pub raw: &'a [u8],
    /// The record's headers, encoded ([`crate::headers`]; empty for none): every record
    /// written through [`Emit::record`] or [`Emit::record_keyed`] carries them.
    pub headers: &'a [u8],
    /// One buffer per [`Stage::outputs`] entry, in that order.
    pub(crate) outs: &'a mut [OutBuf],
    /// Partitions per output, in the same order.
    pub(crate) partitions: &'a [u32],
    /// False while replaying: records are counted but not written.
    pub(crate) enabled: bool,
}

impl<'a> Emit<'a> {
    /// Output for one record outside the engine (tests, embedding): `outs` and
    /// `partitions` have one entry per [`Stage::outputs`] entry.
    pub fn new(
        key: &'a [u8],
        source: &'a str,
        partition: u32,
        offset: u64,
        outs: &'a mut [OutBuf],
        partitions: &'a [u32],
    ) -> Self {
        assert_eq!(
            outs.len(),
            partitions.len(),
            "one partition count per output"
        );
        Emit {
            key,
            key_hash: crate::hash::stable_hash(key),
            source,
            partition,
            offset,
            target: crate::batch::RECORD,
            part: crate::batch::Part::WHOLE,
            raw: &[],
            headers: &[],
            outs,
            partitions,
            enabled: true,
        }
    }

    /// The same, carrying the record's raw bytes ([`Emit::raw`]).
    pub fn with_raw(mut self, raw: &'a [u8]) -> Self {
        self.raw = raw;
        self
    }

    /// The same, carrying the record's encoded headers ([`Emit::headers`]).
    pub fn with_headers(mut self, headers: &'a [u8]) -> Self {
        self.headers = headers;
        self
    }

    /// Appends a record to output `out` (an index into [`Stage::outputs`]) under the
    /// record's key; `write` writes the value. Does nothing while replaying.
    #[inline]
    pub fn record(&mut self, out: usize, write: impl FnOnce(&mut Vec<u8>)) {
        if !self.enabled {
            return;
        }
        let partition = bucket(self.key_hash, PARTITION_SALT, self.partitions[out]);
        self.outs[out].push_with(partition, self.key, write);
        self.outs[out].set_headers(self.headers);
    }

    /// Appends a record to output `out` under a key of the stage's own (not the record's),
    /// in the partition `key` hashes to; `write` writes the value. Does nothing while
    /// replaying. For rows written once and never kept (an insert-only projection).
    #[inline]
    pub fn record_keyed(&mut self, out: usize, key: &[u8], write: impl FnOnce(&mut Vec<u8>)) {
        if !self.enabled {
            return;
        }
        let hash = crate::hash::stable_hash(key);
        let partition = bucket(hash, PARTITION_SALT, self.partitions[out]);
        self.outs[out].push_with(partition, key, write);
        self.outs[out].set_headers(self.headers);
    }

    /// Whether records are being written (false while replaying after a restart).
    pub fn enabled(&self) -> bool {
        self.enabled
    }
}

/// What `apply` did with a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The state changed: the key's read model is emitted.
    Changed,
    /// Accepted without a state change: processed, nothing to upsert.
    Unchanged,
    /// A command refused by a business rule (its rejection written to an output):
    /// processed and counted as rejected, state unchanged.
    Rejected,
}

/// Why a stage refused a record: it is dead-lettered with this reason and detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The dead-letter reason ([`DeadReason::Logic`] unless said otherwise).
    pub reason: DeadReason,
    /// What was wrong, for the dead letter.
    pub detail: String,
}

impl From<String> for Refused {
    fn from(detail: String) -> Self {
        Refused {
            reason: DeadReason::Logic,
            detail,
        }
    }
}

/// A per-key logic stage.
///
/// `apply` must be all-or-nothing: on `Err` the state must be unchanged (whatever was
/// written through [`Emit`] is discarded by the engine) and the record is dead-lettered
/// with the returned reason. It must be
/// deterministic (no clock, no randomness, no hash-map iteration order): after a crash
/// the engine replays the same records with outputs off and expects the same state.
pub trait Stage: Send + Sync + 'static {
    /// State kept per key.
    type State: Send;
    /// State of a key never seen before (`key` as the engine stores it, prefix included).
    fn new_state(&self, key: &[u8]) -> Self::State;
    /// Asks the CPU to start loading what [`Stage::apply`] will read of `state` that the
    /// key lookup did not bring into cache (fields past the entry's first cache line,
    /// heap data), a few records before it is applied. A hint: the default does nothing.
    #[inline]
    fn prefetch(&self, _state: &Self::State) {}
    /// Folds one record into the key's state.
    fn apply(
        &self,
        state: &mut Self::State,
        ev: EventView<'_>,
        emit: &mut Emit<'_>,
    ) -> Result<Applied, Refused>;
    /// Writes the key's read model as JSON object members (`"a":1,"b":2`, no braces).
    fn render(&self, state: &Self::State, out: &mut Vec<u8>);
    /// Writes the key's state for a snapshot (with [`crate::snapshot::codec`]); `false`
    /// (the default) says this stage's state cannot be snapshotted, and its pipeline then
    /// recovers by replay alone.
    fn encode_state(&self, _state: &Self::State, _out: &mut Vec<u8>) -> bool {
        false
    }
    /// Reads a state [`Stage::encode_state`] wrote for `key`; `Err` says what is wrong
    /// (the snapshot is then not used).
    fn decode_state(&self, _key: &[u8], _bytes: &[u8]) -> Result<Self::State, String> {
        Err("this stage's state is not snapshotted".into())
    }
    /// Output topics besides the view. None by default.
    fn outputs(&self) -> Vec<OutputSpec> {
        Vec::new()
    }
    /// The version the read model carries; `None` (the default) lets the engine use the
    /// last applied sequence number (or the count of applied records without sequences).
    fn version(&self, _state: &Self::State) -> Option<u64> {
        None
    }
    /// Where the key's read model goes: `None` (the default) the pipeline's view topic,
    /// `Some(i)` output `i` of [`Stage::outputs`] (a projection's own topic).
    fn view_output(&self, _state: &Self::State) -> Option<usize> {
        None
    }
    /// Whether the key's read model is deleted: its upsert is then a `null` tombstone.
    fn is_deleted(&self, _state: &Self::State) -> bool {
        false
    }
    /// Bytes at the start of every key that are internal (a projection's namespace) and
    /// left out of the keys the engine writes.
    fn key_prefix_len(&self) -> usize {
        0
    }
    /// Whether deliveries to `target` (a projection's index) are rows kept in state,
    /// each under its own key. False for an insert-only projection, whose deliveries
    /// share a few lane keys and keep nothing: they belong to no input partition.
    fn keeps_rows(&self, _target: u32) -> bool {
        true
    }
    /// The read models a [`crate::query::ReadHandle`] can name. The default: one table,
    /// the pipeline's view (named `view_topic`), whose rows filters read as JSON.
    fn tables(&self, view_topic: &str) -> Vec<TableSpec> {
        vec![TableSpec {
            name: view_topic.to_string(),
            prefix: Vec::new(),
            fields: None,
            kept: true,
        }]
    }
    /// The key's row as typed values, in the order of its table's [`TableSpec::fields`]
    /// (for query filters); `None` (the default) when the table has no typed fields.
    fn row_values<'s>(&self, _state: &'s Self::State) -> Option<&'s [Cell]> {
        None
    }
    /// A stage that computes the row keys of each record itself (a Rust projection):
    /// the router then asks it instead of reading `[key]` or the declared
    /// `[[projections]]`. `None` by default.
    fn row_router(&self) -> Option<Arc<dyn RowRouter>> {
        None
    }
}

/// A read model that queries can name: a namespace of keys in a stage's state.
#[derive(Debug, Clone, PartialEq)]
pub struct TableSpec {
    /// Name used in queries (a projection's name, or the view topic).
    pub name: String,
    /// Bytes that start every key of the table (its namespace; see
    /// [`Stage::key_prefix_len`]); empty for the only table of a stage.
    pub prefix: Vec<u8>,
    /// Row fields and their types when the stage keeps rows as typed values
    /// ([`Stage::row_values`]): filters are then type-checked against them. `None`:
    /// filters read the row as it is rendered (JSON), checked as they run.
    pub fields: Option<Vec<(String, Type)>>,
    /// Whether the rows are kept in state. False for an insert-only projection, whose
    /// rows go straight to its topic: reads of its state are refused (read the topic).
    pub kept: bool,
}

/// Routing for a stage that keys records itself ([`Stage::row_router`]): called by the
/// router once per record, it names the rows the record updates. The record then goes
/// once to each of them (a *delivery*, [`Emit::target`] = its table), to the shard that
/// owns the row. Like a stage it must be deterministic.
pub trait RowRouter: Send + Sync {
    /// Pushes the rows `raw` updates into `keys` (none: the record changes nothing).
    /// `Err` dead-letters the record (`bad_key`) with that detail, and no row sees it.
    fn route(&self, raw: &[u8], keys: &mut RowKeys) -> Result<(), String>;
}

/// The rows one record updates, as `(table, key)`, end to end in reused buffers (no
/// allocation per record). Stored keys carry the table as a 2-byte big-endian prefix,
/// as the declared projections' do.
#[derive(Debug, Default)]
pub struct RowKeys {
    keys: Vec<(u16, u32, u32)>,
    bytes: Vec<u8>,
}

impl RowKeys {
    /// No keys yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets the keys, keeping the buffers.
    pub fn clear(&mut self) {
        self.keys.clear();
        self.bytes.clear();
    }

    /// Adds row `key` of table `table`; false (and nothing added) for an empty key.
    pub fn push(&mut self, table: u16, key: &[u8]) -> bool {
        self.push_with(table, |b| b.extend_from_slice(key))
    }

    /// Adds a row of table `table` whose key `write` appends to the buffer it is given;
    /// false (and nothing added) when it writes nothing.
    pub fn push_with(&mut self, table: u16, write: impl FnOnce(&mut Vec<u8>)) -> bool {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(&table.to_be_bytes());
        write(&mut self.bytes);
        if self.bytes.len() == start + 2 {
            self.bytes.truncate(start);
            return false;
        }
        self.keys
            .push((table, start as u32, self.bytes.len() as u32));
        true
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// No keys?
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// `(table, stored key)` in the order pushed; the stored key starts with the table.
    pub fn iter(&self) -> impl Iterator<Item = (u16, &[u8])> {
        self.keys
            .iter()
            .map(|&(t, s, e)| (t, &self.bytes[s as usize..e as usize]))
    }
}
