//! Where the router reads a source from: the seam between the engine and the systems
//! that hold its inputs. The embedded log ([`LogInput`]) is one; Kafka (in
//! `onceflow-connectors`) is the other. The engine only ever asks for committed records
//! of a partition from a position, so every implementation must deliver, per
//! partition, the committed records in offset order, each once, from where it was
//! told to start.

use crate::log::{Cursor, LogError, LogReader, RecordBuf};

/// One source's partitions as the router reads them.
pub trait SourceInput: Send {
    /// The partitions to read, in a stable order (all of the topic's for the embedded
    /// log; the assigned ones for Kafka).
    fn partitions(&self) -> Vec<u32>;
    /// The next offset `read` returns in `partition`.
    fn position(&self, partition: u32) -> u64;
    /// Moves `partition` to `offset` (recovery starts each partition at its snapshot's
    /// or committed offset).
    fn seek(&mut self, partition: u32, offset: u64) -> Result<(), InputError>;
    /// Appends up to `max` committed records of `partition` whose offsets are below
    /// `below` to `buf`, from its position on; 0 when none is available now. A record at
    /// or past `below` is kept for a later read: offsets may skip numbers (Kafka's
    /// transaction markers take offsets), so the engine bounds a read by offset, not by
    /// a count (a replay must stop exactly at the committed offset). Never blocks for
    /// long.
    fn read(
        &mut self,
        partition: u32,
        max: usize,
        below: u64,
        buf: &mut RecordBuf,
    ) -> Result<usize, InputError>;
    /// The offset after the last committed record of `partition`, as of the last
    /// [`refresh`](Self::refresh).
    fn committed_end(&self, partition: u32) -> u64;
    /// Looks for newly committed records (updates `committed_end`).
    fn refresh(&mut self) -> Result<(), InputError>;
    /// Like [`refresh`](Self::refresh), but the committed ends afterwards include every
    /// record committed before the call, even where the system reports them late (Kafka:
    /// the last stable offsets come with periodic statistics). May wait briefly. A run
    /// told to catch up and stop calls it once.
    fn settle(&mut self) -> Result<(), InputError> {
        self.refresh()
    }
}

/// Why a source could not be read.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The embedded log.
    #[error(transparent)]
    Log(#[from] LogError),
    /// Another system (its message says which and where).
    #[error("{0}")]
    Other(String),
    /// The system holding the source cannot be reached now (e.g. no broker answers):
    /// transient, the engine recovers and tries again.
    #[error("{0}")]
    Unavailable(String),
    /// The partitions this instance reads changed (a consumer-group rebalance): the
    /// engine stops at its last complete epoch and starts again with the new ones.
    #[error("{0}")]
    Reassigned(String),
}

/// A topic of the embedded log as a source: every partition, read from the files.
pub struct LogInput {
    reader: LogReader,
    cursors: Vec<Cursor>,
}

impl LogInput {
    /// Reads every partition of `reader`'s topic from offset 0 (until a seek).
    pub fn new(reader: LogReader) -> Result<LogInput, LogError> {
        let cursors = (0..reader.partitions())
            .map(|p| reader.cursor(p, 0))
            .collect::<Result<_, _>>()?;
        Ok(LogInput { reader, cursors })
    }
}

impl SourceInput for LogInput {
    fn partitions(&self) -> Vec<u32> {
        (0..self.reader.partitions()).collect()
    }

    fn position(&self, partition: u32) -> u64 {
        self.cursors[partition as usize].position()
    }

    fn seek(&mut self, partition: u32, offset: u64) -> Result<(), InputError> {
        self.cursors[partition as usize] = self.reader.cursor(partition, offset)?;
        Ok(())
    }

    fn read(
        &mut self,
        partition: u32,
        max: usize,
        below: u64,
        buf: &mut RecordBuf,
    ) -> Result<usize, InputError> {
        // The embedded log's offsets are dense: the bound is a count.
        let c = &mut self.cursors[partition as usize];
        let room = usize::try_from(below.saturating_sub(c.position())).unwrap_or(usize::MAX);
        if room == 0 {
            return Ok(0);
        }
        Ok(c.read(&self.reader, max.min(room), buf)?)
    }

    fn committed_end(&self, partition: u32) -> u64 {
        self.reader.committed_end(partition)
    }

    fn refresh(&mut self) -> Result<(), InputError> {
        Ok(self.reader.refresh()?)
    }
}
