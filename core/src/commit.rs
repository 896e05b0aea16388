//! Epoch assembly for the committer, free of I/O: parts of an epoch arrive from the
//! router and from every shard in any interleaving; an epoch is ready once all of them
//! are in, and epochs are released strictly in order.

use std::collections::BTreeMap;

use crate::batch::OutBuf;
use crate::shard::ShardPart;

/// The router's share of an epoch: where every input stands at the barrier.
#[derive(Debug, Default)]
pub struct RouterPart {
    /// Epoch number.
    pub epoch: u64,
    /// Next offset per dense input index, at the barrier.
    pub positions: Vec<u64>,
    /// Records that could not be decoded or keyed.
    pub dead: OutBuf,
    /// `(append ms, count)` of the new records of this epoch, for latency.
    pub stamps: Vec<(u64, u64)>,
    /// When the router sent the barrier (for the barrier → commit time).
    pub barrier_at: Option<std::time::Instant>,
}

/// One complete epoch, ready to commit.
#[derive(Debug)]
pub struct Epoch {
    /// Router share.
    pub router: RouterPart,
    /// Shard shares, by shard index.
    pub shards: Vec<ShardPart>,
}

#[derive(Debug, Default)]
struct Pending {
    router: Option<RouterPart>,
    shards: Vec<Option<ShardPart>>,
    have: usize,
}

/// Collects epoch parts and hands out complete epochs in order.
#[derive(Debug)]
pub struct Assembler {
    shards: usize,
    pending: BTreeMap<u64, Pending>,
    next: Option<u64>,
}

impl Assembler {
    /// For `shards` shards.
    pub fn new(shards: usize) -> Self {
        Assembler {
            shards,
            pending: BTreeMap::new(),
            next: None,
        }
    }

    fn slot(&mut self, epoch: u64) -> &mut Pending {
        let n = self.shards;
        self.pending.entry(epoch).or_insert_with(|| Pending {
            router: None,
            shards: (0..n).map(|_| None).collect(),
            have: 0,
        })
    }

    /// Adds the router's part.
    pub fn router(&mut self, part: RouterPart) {
        let p = self.slot(part.epoch);
        assert!(
            p.router.is_none(),
            "router part of epoch {} arrived twice",
            part.epoch
        );
        p.router = Some(part);
    }

    /// Adds shard `i`'s part.
    pub fn shard(&mut self, i: usize, part: ShardPart) {
        let p = self.slot(part.epoch);
        assert!(
            p.shards[i].is_none(),
            "shard {i} part of epoch {} arrived twice",
            part.epoch
        );
        p.shards[i] = Some(part);
        p.have += 1;
    }

    /// The oldest epoch, if it is complete.
    pub fn pop_ready(&mut self) -> Option<Epoch> {
        let first = self.pending.first_entry()?;
        let p = first.get();
        if p.router.is_none() || p.have < self.shards {
            return None;
        }
        let epoch = *first.key();
        if let Some(n) = self.next {
            assert!(
                epoch >= n,
                "epoch {epoch} after {n}: epochs must be committed in order"
            );
        }
        self.next = Some(epoch + 1);
        let p = first.remove();
        Some(Epoch {
            router: p.router.expect("checked"),
            shards: p.shards.into_iter().map(|s| s.expect("checked")).collect(),
        })
    }

    /// Epochs started but not complete.
    pub fn incomplete(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(epoch: u64) -> ShardPart {
        ShardPart {
            epoch,
            outputs: OutBuf::default(),
            dead: OutBuf::default(),
            emitted: Vec::new(),
        }
    }

    #[test]
    fn releases_in_order_only_when_complete() {
        let mut a = Assembler::new(2);
        a.shard(1, shard(7));
        a.router(RouterPart {
            epoch: 7,
            ..Default::default()
        });
        assert!(a.pop_ready().is_none());
        a.shard(0, shard(8));
        a.router(RouterPart {
            epoch: 8,
            ..Default::default()
        });
        a.shard(1, shard(8));
        assert!(a.pop_ready().is_none(), "8 is complete but 7 is not");
        a.shard(0, shard(7));
        assert_eq!(a.pop_ready().unwrap().router.epoch, 7);
        assert_eq!(a.pop_ready().unwrap().router.epoch, 8);
        assert!(a.pop_ready().is_none());
        assert_eq!(a.incomplete(), 0);
    }
}
