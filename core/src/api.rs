//! The Rust API: the aggregate model of `[aggregate]` as a trait, for teams who embed
//! onceflow as a library and would rather write their domain logic in Rust.
//!
//! Implement [`Aggregate`] (typed commands in, typed events out, state folded by
//! events), wrap it in [`TypedAggregate`], and run it with
//! [`crate::engine::run_with_stage`]. The engine does the rest exactly as for a declared
//! aggregate: per-key order and sequence checks, events with deterministic ids,
//! rejections, state upserts, one transaction per epoch, recovery by replay.
//!
//! The read side is [`Projection`] (typed events in, typed rows out, one or more rows
//! per event), run by [`TypedProjections`] exactly like declared `[[projections]]`. A
//! running engine's rows and states are read through [`crate::query::ReadHandle`].
//!
//! `docs/rust-api.md` walks through it; `tests/rust_api.rs` is a complete bank account
//! that produces the same events as `examples/bank/pipeline.toml`.
//!
//! # Examples
//!
//! ```
//! use onceflow_core::api::{Aggregate, Rejection};
//!
//! #[derive(serde::Deserialize)]
//! #[serde(tag = "type")]
//! enum Command { Deposit { amount: i64 } }
//!
//! #[derive(serde::Serialize)]
//! #[serde(tag = "type")]
//! enum Event { Deposited { amount: i64 } }
//!
//! #[derive(Default, serde::Serialize)]
//! struct Account { balance: i64 }
//!
//! struct Accounts;
//!
//! impl Aggregate for Accounts {
//!     type Command = Command;
//!     type Event = Event;
//!     type State = Account;
//!
//!     fn handle(&self, _s: &Account, c: &Command) -> Result<Vec<Event>, Rejection> {
//!         match *c {
//!             Command::Deposit { amount } if amount <= 0 => {
//!                 Err(Rejection::new("invalid_amount", "amount must be positive"))
//!             }
//!             Command::Deposit { amount } => Ok(vec![Event::Deposited { amount }]),
//!         }
//!     }
//!
//!     fn apply(&self, s: &mut Account, e: &Event) {
//!         match e {
//!             Event::Deposited { amount } => s.balance += amount,
//!         }
//!     }
//!
//!     fn event_type(&self, e: &Event) -> &'static str {
//!         match e {
//!             Event::Deposited { .. } => "Deposited",
//!         }
//!     }
//! }
//! ```

mod projection;

use std::borrow::Cow;
use std::io::Write as _;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::batch::{write_json_str, write_uint};
use crate::stage::{Applied, Emit, EventView, OutputSpec, Refused, Stage};
use crate::stats::DeadReason;
use projection::write_members;
pub use projection::{
    Keys, MAX_TYPED_PROJECTIONS, Projection, ProjectionTopic, TypedProjections, TypedRow, Update,
};

/// A command refused by the domain: written to the rejections topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Machine-readable reason, e.g. `insufficient_funds`.
    pub reason: Cow<'static, str>,
    /// For people.
    pub message: String,
}

impl Rejection {
    /// A rejection with a reason code and a message.
    pub fn new(reason: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Rejection {
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// An event-sourced aggregate in Rust.
///
/// Like every stage it must be deterministic: the same commands in the same order give
/// the same events and state (no clock, no randomness). `handle` decides, `apply` folds:
/// after a crash the engine replays the commands, calling both again with outputs off.
pub trait Aggregate: Send + Sync + 'static {
    /// A command, deserialized from the input record (JSON).
    type Command: DeserializeOwned;
    /// An event, serialized as the `data` of the events written.
    type Event: Serialize;
    /// Per-aggregate state; serialized as a JSON object for the view.
    type State: Default + Serialize + Send;

    /// The events a command produces in the current state, or its rejection.
    fn handle(
        &self,
        state: &Self::State,
        command: &Self::Command,
    ) -> Result<Vec<Self::Event>, Rejection>;

    /// Folds one event into the state. It cannot fail: validate in `handle`.
    fn apply(&self, state: &mut Self::State, event: &Self::Event);

    /// The event's type name (`type` of the event written).
    fn event_type(&self, event: &Self::Event) -> &'static str;

    /// The command's id (events are `<id>:<index>`); default: none, and the record's
    /// source coordinates stand in.
    fn command_id(&self, _command: &Self::Command) -> Option<String> {
        None
    }

    /// The command's correlation id; default: none (the command id stands in).
    fn correlation_id(&self, _command: &Self::Command) -> Option<String> {
        None
    }

    /// The version the command expects the aggregate at (optimistic concurrency);
    /// default: none, no check.
    fn expected_version(&self, _command: &Self::Command) -> Option<u64> {
        None
    }
}

/// Where a [`TypedAggregate`] writes.
#[derive(Debug, Clone)]
pub struct AggregateTopics {
    /// Aggregate name, written into events and rejections.
    pub name: String,
    /// Events topic.
    pub events: String,
    /// Rejections topic.
    pub rejections: String,
    /// Partitions of both.
    pub partitions: u32,
}

impl AggregateTopics {
    /// `<name>_events` and `<name>_rejections` with 4 partitions, as `[aggregate]` does.
    pub fn named(name: &str) -> Self {
        AggregateTopics {
            name: name.to_string(),
            events: format!("{name}_events"),
            rejections: format!("{name}_rejections"),
            partitions: crate::config::defaults::OUTPUT_PARTITIONS,
        }
    }
}

/// Runs an [`Aggregate`] as a [`Stage`].
#[derive(Debug)]
pub struct TypedAggregate<A> {
    inner: A,
    topics: AggregateTopics,
}

/// State of a [`TypedAggregate`] key.
#[derive(Debug, Clone, Default)]
pub struct Versioned<S> {
    /// Events applied so far.
    pub version: u64,
    /// The aggregate's own state.
    pub state: S,
}

impl<A: Aggregate> TypedAggregate<A> {
    /// Wraps `inner`, writing to `topics`.
    pub fn new(inner: A, topics: AggregateTopics) -> Self {
        TypedAggregate { inner, topics }
    }

    /// The wrapped aggregate.
    pub fn inner(&self) -> &A {
        &self.inner
    }
}

impl<A: Aggregate> Stage for TypedAggregate<A> {
    type State = Versioned<A::State>;

    fn new_state(&self, _key: &[u8]) -> Self::State {
        Versioned::default()
    }

    fn apply(
        &self,
        st: &mut Self::State,
        _ev: EventView<'_>,
        emit: &mut Emit<'_>,
    ) -> Result<Applied, Refused> {
        let command: A::Command = serde_json::from_slice(emit.raw).map_err(|e| {
            let msg = e.to_string();
            Refused {
                reason: if msg.contains("unknown variant") || msg.contains("missing field `type`") {
                    DeadReason::UnknownType
                } else {
                    DeadReason::Logic
                },
                detail: format!("the command does not fit {}: {msg}", self.topics.name),
            }
        })?;
        let key = String::from_utf8_lossy(emit.key).into_owned();
        let command_id = self
            .inner
            .command_id(&command)
            .unwrap_or_else(|| format!("{}-{}-{}", emit.source, emit.partition, emit.offset));
        let correlation_id = self
            .inner
            .correlation_id(&command)
            .unwrap_or_else(|| command_id.clone());
        let decided = match self.inner.expected_version(&command) {
            Some(want) if want != st.version => Err(Rejection::new(
                "version_conflict",
                format!(
                    "expected version {want}, but {} '{key}' is at version {}",
                    self.topics.name, st.version
                ),
            )),
            _ => self.inner.handle(&st.state, &command),
        };
        match decided {
            Ok(events) => {
                if events.is_empty() {
                    return Ok(Applied::Unchanged);
                }
                for (i, e) in events.iter().enumerate() {
                    self.inner.apply(&mut st.state, e);
                    st.version += 1;
                    let version = st.version;
                    let ty = self.inner.event_type(e);
                    emit.record(0, |out| {
                        out.extend_from_slice(b"{\"event_id\":");
                        write_json_str(out, format!("{command_id}:{i}").as_bytes());
                        out.extend_from_slice(b",\"type\":");
                        write_json_str(out, ty.as_bytes());
                        out.extend_from_slice(b",\"aggregate\":");
                        write_json_str(out, self.topics.name.as_bytes());
                        out.extend_from_slice(b",\"aggregate_id\":");
                        write_json_str(out, key.as_bytes());
                        out.extend_from_slice(b",\"version\":");
                        write_uint(out, version);
                        out.extend_from_slice(b",\"causation_id\":");
                        write_json_str(out, command_id.as_bytes());
                        out.extend_from_slice(b",\"correlation_id\":");
                        write_json_str(out, correlation_id.as_bytes());
                        out.extend_from_slice(b",\"data\":");
                        write_data(out, e);
                        out.push(b'}');
                    });
                }
                Ok(Applied::Changed)
            }
            Err(r) => {
                let (source, partition, offset) = (emit.source, emit.partition, emit.offset);
                emit.record(1, |out| {
                    let _ = write!(
                        out,
                        "{}",
                        serde_json::json!({
                            "command_id": command_id,
                            "aggregate": self.topics.name,
                            "aggregate_id": key,
                            "version": st.version,
                            "reason": r.reason,
                            "message": r.message,
                            "correlation_id": correlation_id,
                            "source": source,
                            "partition": partition,
                            "offset": offset,
                        })
                    );
                });
                Ok(Applied::Rejected)
            }
        }
    }

    fn render(&self, st: &Self::State, out: &mut Vec<u8>) {
        // Members only: the engine writes the braces, the key and the version.
        write_members(out, &st.state, "state");
    }

    fn outputs(&self) -> Vec<OutputSpec> {
        vec![
            OutputSpec {
                topic: self.topics.events.clone(),
                partitions: self.topics.partitions,
            },
            OutputSpec {
                topic: self.topics.rejections.clone(),
                partitions: self.topics.partitions,
            },
        ]
    }

    fn version(&self, st: &Self::State) -> Option<u64> {
        Some(st.version)
    }
}

/// Serializes `v` as JSON; a value serde cannot write (a map with non-string keys)
/// becomes `null` rather than a broken record.
fn write_data(out: &mut Vec<u8>, v: &impl Serialize) {
    let at = out.len();
    if serde_json::to_writer(&mut *out, v).is_err() {
        out.truncate(at);
        out.extend_from_slice(b"null");
    }
}
