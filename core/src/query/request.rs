//! The messages of a read: handle → router (a [`Request`] waiting for an epoch cut),
//! router → shards (one [`ShardQuery`] per shard asked), shards → handle (one
//! [`ShardAnswer`] each, on the request's own reply channel).

use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use super::filter::Filter;

/// Most requests the router keeps waiting for a cut; more wait in the handle's channel
/// (and the handle reports [`super::ReadError::Busy`] once that is full too).
pub(crate) const MAX_WAITING: usize = 1024;

/// What a read asks of the shards.
#[derive(Debug)]
pub(crate) enum Job {
    /// One row by its stored key (table prefix included).
    Get { key: Vec<u8> },
    /// Rows whose stored key starts with `prefix` (table prefix included) and that pass
    /// the filter, at most `limit` per shard, scanning at most
    /// [`super::SCAN_STEP`] keys per shard.
    Scan {
        prefix: Vec<u8>,
        filter: Option<Arc<Filter>>,
        limit: usize,
    },
}

/// A read waiting in the router for the next epoch cut.
#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) job: Arc<Job>,
    /// The shards to ask, each with the position in its key list to start at.
    pub(crate) parts: Vec<(u32, u32)>,
    pub(crate) reply: Sender<ShardAnswer>,
}

impl Request {
    /// One query per shard asked, answered with the state at the end of `epoch`.
    pub(crate) fn into_queries(self, epoch: u64) -> impl Iterator<Item = ShardQuery> {
        let Request { job, parts, reply } = self;
        parts.into_iter().map(move |(shard, start)| ShardQuery {
            epoch,
            shard,
            start,
            job: job.clone(),
            reply: reply.clone(),
        })
    }
}

/// One shard's part of a read.
#[derive(Debug)]
pub(crate) struct ShardQuery {
    pub(crate) epoch: u64,
    pub(crate) shard: u32,
    pub(crate) start: u32,
    pub(crate) job: Arc<Job>,
    pub(crate) reply: Sender<ShardAnswer>,
}

impl ShardQuery {
    /// The shard to ask.
    pub(crate) fn shard(&self) -> usize {
        self.shard as usize
    }
}

/// What a shard found.
#[derive(Debug)]
pub(crate) struct ShardAnswer {
    pub(crate) shard: u32,
    pub(crate) epoch: u64,
    pub(crate) result: Result<Found, String>,
}

/// Rows found by one shard: `(position in its key list, the row as JSON)` in key-list
/// order, and where to go on (`None`: the shard has no more keys to scan).
#[derive(Debug, Default)]
pub(crate) struct Found {
    pub(crate) rows: Vec<(u32, Vec<u8>)>,
    pub(crate) next: Option<u32>,
}

/// Takes the requests that arrived since the last look, up to [`MAX_WAITING`] waiting.
/// One channel check when none did: the router calls this once per pass, not per record.
pub(crate) fn take_requests(rx: &Receiver<Request>, waiting: &mut Vec<Request>) {
    while waiting.len() < MAX_WAITING {
        match rx.try_recv() {
            Ok(r) => waiting.push(r),
            Err(_) => break,
        }
    }
}
