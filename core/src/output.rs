//! Where the committer writes an epoch: the seam between the engine and the system that
//! holds its outputs and its consumed offsets. The embedded state log ([`LogTarget`]) is
//! one; Kafka transactions (`onceflow-connectors`, `KafkaTarget`) are the other. Every
//! implementation commits an epoch's records and its input offsets all together or not
//! at all, and reports the last commit on start (recovery replays up to it).

use std::path::Path;

use crate::log::{CommitMarker, LogError, LogOptions, LogWriter, Txn};

/// An output topic, as [`CommitTarget::ensure_topic`] numbered it.
pub type OutputTopic = u32;

/// Receives an epoch's records inside [`CommitTarget::commit`].
pub trait Append {
    /// Adds one record to the epoch being committed. `headers` are encoded as in
    /// [`crate::headers`] (empty for none); a target that stores no headers (the
    /// embedded log) ignores them.
    fn append(
        &mut self,
        topic: OutputTopic,
        partition: u32,
        key: &[u8],
        value: &[u8],
        headers: &[u8],
    );
}

/// The committer's side of the seam.
pub trait CommitTarget: Send {
    /// Partitions of output topic `name`, if it exists.
    fn partitions_of(&self, name: &str) -> Option<u32>;
    /// Opens output topic `name`, created with `partitions` if missing.
    fn ensure_topic(&mut self, name: &str, partitions: u32) -> Result<OutputTopic, CommitError>;
    /// The last commit (epoch and consumed input offsets); `None` before the first.
    fn last_commit(&self) -> Option<CommitMarker>;
    /// The consumed offsets of `source` at the last commit: `(partition, next offset)`.
    fn committed_inputs(&self, source: &str) -> Vec<(u32, u64)>;
    /// Whether [`last_commit`](Self::last_commit)'s epoch is the committed one. A Kafka
    /// broker that does not keep the offsets' metadata loses it: the offsets are right,
    /// the epoch is 0, and the engine numbers its epochs past every snapshot on disk and
    /// picks a snapshot by its offsets alone.
    fn epoch_known(&self) -> bool {
        true
    }
    /// Commits one epoch, all or nothing: every record `fill` appends, and `marker`
    /// (the epoch and the input offsets after it).
    fn commit(
        &mut self,
        fill: &mut dyn FnMut(&mut dyn Append),
        marker: &CommitMarker,
    ) -> Result<(), CommitError>;
}

/// Why an epoch was not committed. Every variant but `Unknown` means nothing of it was.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// The embedded log.
    #[error(transparent)]
    Log(#[from] LogError),
    /// Nothing of the epoch was committed: recover from the last commit.
    #[error("the commit was aborted: {0}")]
    Aborted(String),
    /// Another instance took over the outputs (fenced): this one must not commit again
    /// before it recovers, and only if it still owns its inputs.
    #[error("fenced by another instance: {0}")]
    Fenced(String),
    /// Whether the epoch was committed is not known: recover from what is committed.
    #[error("the outcome of the commit is unknown: {0}")]
    Unknown(String),
    /// The system holding the outputs cannot be reached now (e.g. no broker answers):
    /// nothing was committed; transient, the engine recovers and tries again.
    #[error("{0}")]
    Unavailable(String),
    /// Nothing of the epoch was committed, and trying again would fail the same way
    /// (configuration, permissions, a missing topic, a record too large).
    #[error("{0}")]
    Failed(String),
}

impl CommitError {
    /// A failure that recovery (a restart from the last commit) may get past: an
    /// aborted or unknown commit, an unreachable system. Fencing is not one: another
    /// instance has taken over.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            CommitError::Aborted(_) | CommitError::Unknown(_) | CommitError::Unavailable(_)
        )
    }
}

/// The embedded state log as a commit target: records and a commit marker with the
/// input offsets in one log transaction.
pub struct LogTarget {
    writer: LogWriter,
}

impl LogTarget {
    /// Opens (or creates) the state log at `dir`.
    pub fn open(dir: &Path, options: LogOptions) -> Result<LogTarget, LogError> {
        Ok(LogTarget {
            writer: LogWriter::open(dir, options)?,
        })
    }
}

impl Append for Txn<'_> {
    /// The log's records have no headers: `headers` are not kept.
    fn append(
        &mut self,
        topic: OutputTopic,
        partition: u32,
        key: &[u8],
        value: &[u8],
        _headers: &[u8],
    ) {
        Txn::append(self, topic, partition, key, value);
    }
}

impl CommitTarget for LogTarget {
    fn partitions_of(&self, name: &str) -> Option<u32> {
        self.writer.topic(name).map(|(_, n)| n)
    }

    fn ensure_topic(&mut self, name: &str, partitions: u32) -> Result<OutputTopic, CommitError> {
        Ok(self.writer.ensure_topic(name, partitions)?)
    }

    fn last_commit(&self) -> Option<CommitMarker> {
        self.writer.last_marker().cloned()
    }

    fn committed_inputs(&self, source: &str) -> Vec<(u32, u64)> {
        self.writer.committed_inputs(source)
    }

    fn commit(
        &mut self,
        fill: &mut dyn FnMut(&mut dyn Append),
        marker: &CommitMarker,
    ) -> Result<(), CommitError> {
        let mut tx = self.writer.begin();
        fill(&mut tx);
        crate::fault::point(crate::fault::COMMIT_BEFORE);
        tx.commit(marker)?;
        Ok(())
    }
}
