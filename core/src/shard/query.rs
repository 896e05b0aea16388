//! A shard's side of a read ([`crate::query`]): answered from the shard's own state,
//! between two batches, at the epoch cut the router forwarded it at.

use super::{KeyEntry, ShardCore, render};
use crate::batch::OutBuf;
use crate::query::SCAN_STEP;
use crate::query::request::{Found, Job, ShardAnswer, ShardQuery};
use crate::stage::Stage;

impl<S: Stage> ShardCore<S> {
    /// Answers one shard's part of a read on its reply channel (a reader that gave up
    /// is no error).
    pub(crate) fn answer(&self, q: ShardQuery) {
        let result = match &*q.job {
            Job::Get { key } => Ok(self.get_row(key)),
            Job::Scan {
                prefix,
                filter,
                limit,
            } => self.scan_rows(q.start, prefix, filter.as_deref(), *limit),
        };
        let _ = q.reply.send(ShardAnswer {
            shard: q.shard,
            epoch: q.epoch,
            result,
        });
    }

    fn get_row(&self, key: &[u8]) -> Found {
        let rows = self
            .lookup(crate::hash::stable_hash(key), key)
            .filter(|e| self.exists(e))
            .map(|e| vec![(0, self.row_json(&e))])
            .unwrap_or_default();
        Found { rows, next: None }
    }

    /// Rows from scan position `start` (see `ShardCore::at_position`) whose key starts
    /// with `prefix` and that pass `filter`: at most `limit`, looking at most
    /// [`SCAN_STEP`] positions.
    fn scan_rows(
        &self,
        start: u32,
        prefix: &[u8],
        filter: Option<&crate::query::filter::Filter>,
        limit: usize,
    ) -> Result<Found, String> {
        let len = self.scan_len();
        let end = (start as usize).saturating_add(SCAN_STEP).min(len);
        let skip = self.stage.key_prefix_len();
        let mut found = Found::default();
        for at in start as usize..end {
            let Some(e) = self.at_position(at as u32) else {
                continue;
            };
            if !e.key.as_bytes().starts_with(prefix) || !self.exists(&e) {
                continue;
            }
            let mut json = None;
            if let Some(f) = filter {
                let version = self.stage.version(&e.state).unwrap_or(e.version);
                let key = String::from_utf8_lossy(&e.key.as_bytes()[skip..]);
                let keep = if f.typed() {
                    let fields = self.stage.row_values(&e.state).ok_or_else(|| {
                        "internal error: a typed table without typed rows".to_string()
                    })?;
                    f.matches_typed(&key, version, fields)
                } else {
                    let j = self.row_json(&e);
                    let keep = f.matches_json(&j);
                    json = Some(j);
                    keep
                }
                .map_err(|err| format!("row '{key}': {err}"))?;
                if !keep {
                    continue;
                }
            }
            found
                .rows
                .push((at as u32, json.unwrap_or_else(|| self.row_json(&e))));
            if found.rows.len() == limit {
                found.next = (at + 1 < len).then_some(at as u32 + 1);
                return Ok(found);
            }
        }
        found.next = (end < len).then_some(end as u32);
        Ok(found)
    }

    /// Whether the key has a row to show: a record was applied to it, and it is not
    /// deleted.
    fn exists(&self, e: &KeyEntry<S::State>) -> bool {
        let applied = match self.stage.version(&e.state) {
            Some(v) => v > 0,
            // A sequence starting at 0 gives version 0 to its first record.
            None => {
                e.version > 0
                    || (self.cfg.sequenced && self.cfg.sequence_start == 0 && e.next_seq > 0)
            }
        };
        applied && !self.stage.is_deleted(&e.state)
    }

    /// The key's row as its upsert is written.
    fn row_json(&self, e: &KeyEntry<S::State>) -> Vec<u8> {
        let mut out = OutBuf::default();
        render(&*self.stage, e, &mut out, 1);
        out.iter()
            .next()
            .map(|(_, _, v)| v.to_vec())
            .expect("render writes one record")
    }
}
