//! Logic stages: what a shard does with each in-order record of a key.
//!
//! A stage owns no I/O and no clock: given the same records in the same order it must
//! produce the same state (replay after a crash depends on it). The engine handles
//! sequence checks, reordering, dead letters and emission; a stage only folds.

pub mod fold;

use crate::decode::Value;

pub use fold::Fold;

/// The fields of one record, as a stage sees them.
#[derive(Clone, Copy)]
pub struct EventView<'a> {
    /// Values in the order of `Pipeline::referenced_fields()`.
    pub values: &'a [Value],
    /// Bytes behind `Value::Str`.
    pub arena: &'a [u8],
}

impl<'a> EventView<'a> {
    /// The string behind a `Value::Str`.
    #[inline]
    pub fn str(&self, v: Value) -> Option<&'a str> {
        match v {
            Value::Str(s, l) => std::str::from_utf8(&self.arena[s as usize..(s + l) as usize]).ok(),
            _ => None,
        }
    }
}

/// A per-key logic stage.
///
/// `apply` must be all-or-nothing: on `Err` the state is unchanged and the record is
/// dead-lettered with the returned reason.
pub trait Stage: Send + Sync + 'static {
    /// State kept per key.
    type State: Send;
    /// State of a key never seen before.
    fn new_state(&self) -> Self::State;
    /// Folds one record into the key's state.
    fn apply(&self, state: &mut Self::State, ev: EventView<'_>) -> Result<(), String>;
    /// Writes the key's read model as JSON object members (`"a":1,"b":2`, no braces).
    fn render(&self, state: &Self::State, out: &mut Vec<u8>);
}
