//! Embedded, durable, append-only log ("a mini Kafka in a directory").
//!
//! A *store* is a directory holding named *topics*; each topic has a fixed number of
//! *partitions*; each partition is a sequence of records with offsets `0, 1, 2, …`
//! kept in segmented append-only files. The on-disk format is documented in
//! [`format`](mod@format).
//!
//! * Writes happen only in transactions ([`LogWriter::begin`] → [`Txn::append`] →
//!   [`Txn::commit`]). A transaction may touch any partitions of any topics of the
//!   store; it becomes visible atomically when its commit marker is appended to the
//!   store's transaction journal. Dropping a [`Txn`] without committing aborts it.
//! * Exactly one [`LogWriter`] may have a store open at a time (an exclusive
//!   `flock(2)` on `DIR/LOCK`). On open the writer recovers the store: a torn journal
//!   tail and any segment data past the committed ends are truncated.
//! * Any number of [`LogReader`]s (in any process, without a lock) read committed
//!   data only. A reader learns committed ends by tailing the journal
//!   ([`LogReader::refresh`]) and reads records through [`Cursor`]s into a reusable
//!   [`RecordBuf`].
//! * Committed data that fails its checksum is never silently skipped or truncated:
//!   it is reported as [`LogError::Corrupt`] naming the file and byte position.
//!
//! Visibility vs durability: with [`FsyncPolicy::EveryCommit`] a commit is durable
//! once [`Txn::commit`] returns `Ok`. Readers may observe a commit slightly earlier
//! (as soon as its marker has been written, before the final `fdatasync`).

mod commits;
pub mod format;
mod journal;
mod reader;
mod writer;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use commits::{Commits, read_commits};
pub use reader::{Cursor, LogReader, RecordBuf, RecordRef, list_topics};
pub use writer::{LogWriter, RecoveryReport, Txn};

/// Identifier of a topic inside one store (assigned at creation, stored in its meta file).
pub type TopicId = u32;

/// When the writer forces data to stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// `fdatasync` touched segment files (and directories of new files) before the
    /// commit marker is appended, and the journal after it. A successful commit is
    /// durable.
    #[default]
    EveryCommit,
    /// Never fsync on commit (the OS writes back eventually). Ordering is still data
    /// before marker, so a process crash is safe; an OS crash or power loss may lose
    /// recent commits or leave a marker whose data is missing (reported as corrupt).
    Never,
}

/// Options for [`LogWriter::open`].
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// Durability policy of commits.
    pub fsync: FsyncPolicy,
    /// A partition rolls to a new segment file before a batch that would make the
    /// active segment exceed this many bytes (a single larger batch gets its own
    /// segment). Default 64 MiB.
    pub segment_bytes: u64,
    /// The journal is compacted into a single checkpoint entry when it exceeds this
    /// many bytes (checked at writer open and after each commit). Default 64 MiB.
    pub journal_compact_bytes: u64,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            fsync: FsyncPolicy::EveryCommit,
            segment_bytes: 64 << 20,
            journal_compact_bytes: 64 << 20,
        }
    }
}

/// Commit marker: the epoch a transaction belongs to and the input offsets it
/// consumed, as `(source name, partition, next offset to read)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitMarker {
    /// Engine epoch of the transaction (opaque to the log).
    pub epoch: u64,
    /// Input offsets consumed: `(source name, partition, next offset to read)`.
    pub inputs: Vec<(String, u32, u64)>,
}

/// Result of a successful [`Txn::commit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitInfo {
    /// Transaction id (strictly increasing per store, starting at 1).
    pub txn_id: u64,
    /// Number of records committed.
    pub records: u64,
    /// Bytes written to segment files (batch headers included; journal excluded).
    pub bytes: u64,
    /// Batch timestamp (milliseconds since the Unix epoch) stamped on every record.
    pub timestamp_ms: u64,
}

/// Errors of the log module.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// An I/O operation failed.
    #[error("log I/O error: {op} {}: {source}", .path.display())]
    Io {
        /// File or directory involved.
        path: PathBuf,
        /// The operation that failed (e.g. "write", "fsync", "open").
        op: &'static str,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Another writer holds the store's lock.
    #[error("log {} is in use by another writer ({holder})", .path.display())]
    Locked {
        /// The store directory.
        path: PathBuf,
        /// Who holds it, e.g. `pid 1234`.
        holder: String,
    },
    /// Stored data is damaged or inconsistent.
    #[error("log data corrupt: {} at byte {position}: {reason}", .path.display())]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// Byte position inside the file.
        position: u64,
        /// What is wrong.
        reason: String,
    },
    /// The requested topic does not exist in the store.
    #[error("no topic {topic:?} in log {}; available topics: [{}]", .dir.display(), .available.join(", "))]
    NoSuchTopic {
        /// The store directory.
        dir: PathBuf,
        /// The requested topic.
        topic: String,
        /// Topics that do exist.
        available: Vec<String>,
    },
    /// A topic exists with a different partition count than requested.
    #[error("topic {topic:?} exists with {existing} partitions, but {requested} were requested")]
    PartitionMismatch {
        /// The topic.
        topic: String,
        /// Its partition count on disk.
        existing: u32,
        /// The requested count.
        requested: u32,
    },
    /// A reader opened a directory that is not a log store.
    #[error("{} is not an onceflow log store (no valid journal file)", .dir.display())]
    NotALog {
        /// The directory.
        dir: PathBuf,
    },
    /// A topic name or partition count is not acceptable.
    #[error("invalid topic {name:?}: {reason}")]
    InvalidTopic {
        /// The requested name.
        name: String,
        /// Why it is rejected.
        reason: String,
    },
    /// A topic id / partition that does not exist was used.
    #[error("no partition {partition} in topic id {topic}")]
    NoSuchPartition {
        /// Topic id.
        topic: TopicId,
        /// Partition.
        partition: u32,
    },
    /// A record (or a marker input name) is too large for the format.
    #[error("record too large: {size} bytes (maximum {max})")]
    RecordTooLarge {
        /// Size of the record (key + value + 8 bytes of lengths).
        size: u64,
        /// The maximum.
        max: u64,
    },
    /// A cursor was requested beyond the committed end of a partition.
    #[error("offset {offset} is beyond the committed end {end} of partition {partition}")]
    OffsetOutOfRange {
        /// Partition.
        partition: u32,
        /// Requested offset.
        offset: u64,
        /// Committed end.
        end: u64,
    },
    /// A cursor was used with a reader of another topic or store.
    #[error("cursor of {} used with a reader of another topic", .path.display())]
    CursorMismatch {
        /// The cursor's partition directory.
        path: PathBuf,
    },
    /// The writer failed earlier (e.g. an I/O error during a commit) and refuses
    /// further work; reopening the store recovers it.
    #[error("log writer for {} is unusable after an earlier failure ({reason}); reopen the log to recover", .dir.display())]
    Poisoned {
        /// The store directory.
        dir: PathBuf,
        /// The original failure.
        reason: String,
    },
}

impl LogError {
    pub(crate) fn io(path: impl Into<PathBuf>, op: &'static str, source: std::io::Error) -> Self {
        LogError::Io {
            path: path.into(),
            op,
            source,
        }
    }

    pub(crate) fn corrupt(
        path: impl Into<PathBuf>,
        position: u64,
        reason: impl Into<String>,
    ) -> Self {
        LogError::Corrupt {
            path: path.into(),
            position,
            reason: reason.into(),
        }
    }
}
