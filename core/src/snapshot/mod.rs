//! Snapshots of shard state: rkyv archives written every K epochs, memory-mapped and
//! served in place on restore.
//!
//! The storage layer only; it knows nothing of stages or the engine. A shard's
//! snapshot holds entries of (key bytes, a `u64` sequence/version, the stage's state
//! as opaque bytes) and a few *extra* records (e.g. held out-of-order records with
//! their input coordinates). The byte format is documented in [`format`](mod@format).
//!
//! * Write: [`SnapshotWriter::create`] → one [`ShardWriter`] per shard ([`push`],
//!   [`finish`]) → [`SnapshotWriter::commit`], which writes the [`Manifest`] last: a
//!   snapshot without a manifest is incomplete and never used.
//! * Restore: [`select()`] picks the newest complete, valid snapshot of a committed
//!   epoch, reporting those it skipped and why; [`ShardSnapshot::get`] reads an entry
//!   straight from the mapped file.
//! * Retention: [`retain()`] keeps the newest N.
//!
//! Every failure is a [`SnapshotError`] naming the file; no bytes make the reader
//! panic (fuzzed by `fuzz/fuzz_targets/snapshot_open.rs`).
//!
//! [`push`]: ShardWriter::push
//! [`finish`]: ShardWriter::finish

pub mod codec;
pub mod fingerprint;
pub mod format;
pub mod manifest;
mod reader;
pub mod select;
mod writer;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use fingerprint::{Fingerprint, FingerprintChange, FingerprintComponent};
pub use manifest::{InputOffset, Manifest, ShardFileInfo};
pub use reader::{ShardSnapshot, Snapshot};
pub use select::{Retention, Selection, SkipReason, Skipped, SnapshotDir, list, retain, select};
pub use writer::{ShardWriter, SnapshotWriter, WriteOptions};

/// One key's entry, borrowed (from the caller when writing, from the mapped file when
/// reading).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryRef<'a> {
    /// The key's bytes.
    pub key: &'a [u8],
    /// The key's sequence/version number (meaning chosen by the engine).
    pub seq: u64,
    /// The key's state, encoded by the stage.
    pub state: &'a [u8],
}

/// An extra per-shard record, borrowed: something the shard holds besides its keys'
/// state, such as an out-of-order record waiting for a gap, with its input
/// coordinates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extra<'a> {
    /// What it is, named by the engine (e.g. `"held"`).
    pub kind: &'a str,
    /// The key it belongs to.
    pub key: &'a [u8],
    /// Its sequence number.
    pub seq: u64,
    /// Input coordinates: source name (empty if none), partition, offset.
    pub source: &'a str,
    /// Input partition.
    pub partition: u32,
    /// Input offset.
    pub offset: u64,
    /// Its bytes (e.g. the raw record).
    pub data: &'a [u8],
}

/// Errors of the snapshot module. Every variant about stored data names the file.
///
/// All but [`Io`](Self::Io) and [`InvalidArgument`](Self::InvalidArgument) mean "this
/// snapshot cannot be used" ([`is_unusable_snapshot`](Self::is_unusable_snapshot)):
/// recovery skips it for an older one or a full replay.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// An I/O operation failed.
    #[error("snapshot I/O error: {op} {}: {source}", .path.display())]
    Io {
        /// File or directory involved.
        path: PathBuf,
        /// The operation that failed.
        op: &'static str,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is shorter than it says it is.
    #[error("snapshot file {} is truncated: {actual} bytes, expected {expected}", .path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Bytes it should have.
        expected: u64,
        /// Bytes it has.
        actual: u64,
    },
    /// A checksum does not match.
    #[error("snapshot file {}: checksum mismatch in the {region} (bytes {start}..{end}): stored {stored:08x}, computed {computed:08x}", .path.display())]
    Checksum {
        /// The file.
        path: PathBuf,
        /// Which checksummed region: "header", "body" or "manifest".
        region: &'static str,
        /// First byte of the region.
        start: u64,
        /// End of the region (exclusive).
        end: u64,
        /// The stored checksum.
        stored: u32,
        /// The checksum of the bytes as they are.
        computed: u32,
    },
    /// Written by a build with another snapshot format version.
    #[error("snapshot file {}: wrong format version {found} (this build reads {supported})", .path.display())]
    WrongVersion {
        /// The file.
        path: PathBuf,
        /// Version found.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// Archived with other rkyv format features (byte order, alignment, pointer width).
    #[error("snapshot file {}: archived as {found}, this build reads {expected}", .path.display())]
    WrongRkyvFormat {
        /// The file.
        path: PathBuf,
        /// The file's rkyv format.
        found: String,
        /// This build's.
        expected: String,
    },
    /// Written by a pipeline whose fingerprint differs.
    #[error("snapshot {} belongs to another pipeline: differs in {}", .path.display(), .changes.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))]
    ForeignPipeline {
        /// The manifest.
        path: PathBuf,
        /// The components that differ.
        changes: Vec<FingerprintChange>,
    },
    /// Stored data is damaged or inconsistent.
    #[error("snapshot file {} is corrupt at byte {position}: {reason}", .path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Byte position inside the file (where the problem was found).
        position: u64,
        /// What is wrong.
        reason: String,
    },
    /// A shard file does not match what the manifest says of it.
    #[error("snapshot file {} does not match its manifest: {reason}", .path.display())]
    Mismatch {
        /// The shard file.
        path: PathBuf,
        /// What differs.
        reason: String,
    },
    /// A complete snapshot of this epoch exists already.
    #[error("a complete snapshot exists already in {}", .path.display())]
    AlreadyExists {
        /// Its directory.
        path: PathBuf,
    },
    /// The shard's state does not fit the format (size limits in [`format`](mod@format)).
    #[error("snapshot file {} would be too large: {reason}", .path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Which limit.
        reason: String,
    },
    /// The caller asked for something impossible (a bug in the caller).
    #[error("invalid snapshot request: {0}")]
    InvalidArgument(String),
}

impl SnapshotError {
    pub(crate) fn io(path: impl Into<PathBuf>, op: &'static str, source: std::io::Error) -> Self {
        SnapshotError::Io {
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
        SnapshotError::Corrupt {
            path: path.into(),
            position,
            reason: reason.into(),
        }
    }

    /// Whether the error says the snapshot's content cannot be used (damaged,
    /// truncated, another format or pipeline): skip it. `false` for I/O errors and
    /// caller bugs, which say nothing about the snapshot.
    pub fn is_unusable_snapshot(&self) -> bool {
        !matches!(
            self,
            SnapshotError::Io { .. } | SnapshotError::InvalidArgument(_)
        )
    }
}
