//! onceflow-core: the engine behind the `onceflow` sidecar.
//!
//! Data flow (see `docs/architecture.md`): source partitions → router (decode, key,
//! sequence, `hash(key) % shards`) → shards (sequence check, reorder, logic stage,
//! per-epoch output buffers) → committer (one atomic transaction per epoch on the
//! embedded log, carrying the consumed input offsets).
#![warn(missing_docs)]

pub mod api;
pub mod batch;
pub mod cloudevents;
pub mod commit;
pub mod config;
pub mod connect;
pub mod decode;
pub mod engine;
pub mod expr;
pub mod fault;
pub mod hash;
pub mod headers;
pub mod input;
pub mod log;
pub mod output;
pub mod query;
pub mod router;
pub mod shard;
pub mod snapshot;
pub mod stage;
pub mod stats;
pub mod temporal;
pub mod upcast;
pub mod workload;
