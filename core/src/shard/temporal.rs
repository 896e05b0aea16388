//! A shard's side of a temporal query (`crate::temporal`): the query replays only the
//! records of one key, and tells the shard about the others it skips.

use super::ShardCore;
use crate::stage::Stage;
use crate::stats::Outcomes;

impl<S: Stage> ShardCore<S> {
    /// A record of another key, from `input` at `offset`, went through this shard
    /// without being processed: held records that it would have expired (older than
    /// the reorder window in that input) expire now, as in a run that processed it.
    /// Nothing is emitted.
    pub(crate) fn skipped_record(&mut self, input: u32, offset: u64) {
        let (mut o, mut later) = (Outcomes::default(), Outcomes::default());
        self.expire(input, offset, false, &mut o, &mut later);
    }
}
