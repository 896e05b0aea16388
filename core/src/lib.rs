//! onceflow-core: the engine behind the `onceflow` sidecar.
//!
//! Data flow (see `docs/architecture.md`): source partitions → router (decode, key,
//! sequence, `hash(key) % shards`) → shards (sequence check, reorder, logic stage,
//! per-epoch output buffers) → committer (one atomic transaction per epoch on the
//! embedded log, carrying the consumed input offsets).

pub mod log;
