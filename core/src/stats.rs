//! Counters shared by the engine's threads. Updated once per batch or epoch (never per
//! record with an atomic), read by the status line and the run summary, and mirrored to
//! the `metrics` facade so an exporter can publish them.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use hdrhistogram::Histogram;

/// Why a record was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum DeadReason {
    /// Not valid JSON.
    Malformed = 0,
    /// JSON, but not an object.
    NotAnObject,
    /// The key field is absent.
    MissingKey,
    /// The key field is not a string or integer.
    BadKey,
    /// The sequence field is absent or not a non-negative integer.
    BadSequence,
    /// Held for a gap that did not fill within the reorder window.
    GapNotFilled,
    /// Arrived ahead of a gap while the reorder buffer was full.
    ReorderBufferFull,
    /// The logic stage refused it (type error, overflow).
    Logic,
    /// A command or event type the stage has no handler for.
    UnknownType,
    /// An upcasting rule failed on the record (bad version field, an expression error).
    Upcast,
    /// Not a valid CloudEvents 1.0 envelope (on a `format = "cloudevents"` source).
    InvalidCloudEvent,
    /// With `[kafka] assignment = "group"`: the record's key (or projection row) is kept
    /// by another input partition, where it was first seen.
    PartitionMismatch,
}

/// Number of [`DeadReason`]s.
pub const DEAD_REASONS: usize = 12;

impl DeadReason {
    /// Every reason, in index order.
    pub const ALL: [DeadReason; DEAD_REASONS] = [
        DeadReason::Malformed,
        DeadReason::NotAnObject,
        DeadReason::MissingKey,
        DeadReason::BadKey,
        DeadReason::BadSequence,
        DeadReason::GapNotFilled,
        DeadReason::ReorderBufferFull,
        DeadReason::Logic,
        DeadReason::UnknownType,
        DeadReason::Upcast,
        DeadReason::InvalidCloudEvent,
        DeadReason::PartitionMismatch,
    ];

    /// Stable snake_case name (used in dead letters and metrics labels).
    pub fn name(self) -> &'static str {
        match self {
            DeadReason::Malformed => "malformed_json",
            DeadReason::NotAnObject => "not_an_object",
            DeadReason::MissingKey => "missing_key",
            DeadReason::BadKey => "bad_key",
            DeadReason::BadSequence => "bad_sequence",
            DeadReason::GapNotFilled => "gap_not_filled",
            DeadReason::ReorderBufferFull => "reorder_buffer_full",
            DeadReason::Logic => "logic_error",
            DeadReason::UnknownType => "unknown_type",
            DeadReason::Upcast => "upcast_failed",
            DeadReason::InvalidCloudEvent => "invalid_cloudevent",
            DeadReason::PartitionMismatch => "partition_mismatch",
        }
    }

    /// The stage that decided.
    pub fn stage(self) -> &'static str {
        match self {
            DeadReason::Malformed
            | DeadReason::NotAnObject
            | DeadReason::MissingKey
            | DeadReason::BadKey
            | DeadReason::BadSequence
            | DeadReason::InvalidCloudEvent => "decode",
            DeadReason::GapNotFilled
            | DeadReason::ReorderBufferFull
            | DeadReason::PartitionMismatch => "sequence",
            DeadReason::Logic | DeadReason::UnknownType => "logic",
            DeadReason::Upcast => "upcast",
        }
    }
}

/// Outcome counts of a batch or an epoch, summed locally and then added to [`Stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcomes {
    /// Records that entered (router: read; shard: received).
    pub read: u64,
    /// Applied to state.
    pub processed: u64,
    /// Of the processed: commands rejected by a rule (written to the rejections topic).
    pub rejected: u64,
    /// Dropped as duplicates.
    pub duplicates: u64,
    /// Dead-lettered, by [`DeadReason`] index.
    pub dead: [u64; DEAD_REASONS],
    /// Change in the number of held records.
    pub held_delta: i64,
    /// Projection updates that failed (dead-lettered; the record itself was processed).
    pub delivery_errors: u64,
    /// Records that `[upcast]` split into parts (each record still has one outcome).
    pub split: u64,
    /// The parts those records became.
    pub split_parts: u64,
    /// Parts after the first of split records that were dead-lettered (their record's
    /// outcome is its first part's).
    pub part_errors: u64,
}

impl Outcomes {
    /// Total dead-lettered.
    pub fn dead_total(&self) -> u64 {
        self.dead.iter().sum()
    }
}

/// Engine-wide counters.
#[derive(Debug)]
pub struct Stats {
    /// Records read from the sources (replayed ones included, and the held records a
    /// snapshot put back: see [`Stats::restored_held`]).
    pub read: AtomicU64,
    /// Of those, records replayed with outputs suppressed during recovery (and the held
    /// records a snapshot put back).
    pub replayed: AtomicU64,
    /// Records applied to state.
    pub processed: AtomicU64,
    /// Of those, commands rejected by a rule.
    pub rejected: AtomicU64,
    /// Projection updates that failed and were dead-lettered.
    pub delivery_errors: AtomicU64,
    /// Records split by upcasting.
    pub split: AtomicU64,
    /// The parts they became.
    pub split_parts: AtomicU64,
    /// Later parts of split records that were dead-lettered.
    pub part_errors: AtomicU64,
    /// Records dropped as duplicates.
    pub duplicates: AtomicU64,
    /// Records dead-lettered, by reason.
    pub dead: [AtomicU64; DEAD_REASONS],
    /// Records held in reorder buffers right now.
    pub held: AtomicI64,
    /// Records available in the sources (sum of committed ends).
    pub source_end: AtomicU64,
    /// Input offsets committed (sum over partitions).
    pub committed_input: AtomicU64,
    /// Epochs committed by this run.
    pub commits: AtomicU64,
    /// Output records committed by this run.
    pub outputs: AtomicU64,
    /// Dead letters committed by this run.
    pub dead_letters: AtomicU64,
    /// Recoveries after a transient failure (an aborted or unknown commit, an unreachable
    /// broker): each restarted processing from the last commit.
    pub recoveries: AtomicU64,
    /// Latest committed epoch.
    pub epoch: AtomicU64,
    /// Append→commit latency (µs) of every new record since the start.
    pub latency_us: Mutex<Histogram<u64>>,
    /// Same, since the status line last read it.
    pub recent_latency_us: Mutex<Histogram<u64>>,
    /// Barrier → durable commit time of each epoch (µs): shards' hand-off, render and the
    /// transaction with its fsyncs.
    pub commit_time_us: Mutex<Histogram<u64>>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            read: AtomicU64::new(0),
            replayed: AtomicU64::new(0),
            processed: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            delivery_errors: AtomicU64::new(0),
            split: AtomicU64::new(0),
            split_parts: AtomicU64::new(0),
            part_errors: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            dead: Default::default(),
            held: AtomicI64::new(0),
            source_end: AtomicU64::new(0),
            committed_input: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            outputs: AtomicU64::new(0),
            dead_letters: AtomicU64::new(0),
            recoveries: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            latency_us: Mutex::new(histogram()),
            recent_latency_us: Mutex::new(histogram()),
            commit_time_us: Mutex::new(histogram()),
        }
    }
}

impl Stats {
    /// Counts `n` held records a snapshot put back into the reorder buffers as a replay
    /// from offset 0 would have counted them: read (by recovery, so replayed and not
    /// new) and held. Without this, releasing them later counts them as processed in a
    /// run that never read them, and `read = processed + duplicates + dead + held` fails.
    pub fn restored_held(&self, n: u64) {
        self.add(&Outcomes {
            read: n,
            held_delta: n as i64,
            ..Outcomes::default()
        });
        self.replayed.fetch_add(n, Relaxed);
    }

    /// Adds a batch's outcomes.
    pub fn add(&self, o: &Outcomes) {
        if o.read > 0 {
            self.read.fetch_add(o.read, Relaxed);
            metrics::counter!("onceflow_records_read_total").increment(o.read);
        }
        if o.processed > 0 {
            self.processed.fetch_add(o.processed, Relaxed);
            metrics::counter!("onceflow_records_total", "outcome" => "processed")
                .increment(o.processed);
        }
        if o.rejected > 0 {
            self.rejected.fetch_add(o.rejected, Relaxed);
            metrics::counter!("onceflow_commands_rejected_total").increment(o.rejected);
        }
        if o.delivery_errors > 0 {
            self.delivery_errors.fetch_add(o.delivery_errors, Relaxed);
            metrics::counter!("onceflow_projection_errors_total").increment(o.delivery_errors);
        }
        if o.split > 0 {
            self.split.fetch_add(o.split, Relaxed);
            self.split_parts.fetch_add(o.split_parts, Relaxed);
            metrics::counter!("onceflow_records_split_total").increment(o.split);
            metrics::counter!("onceflow_split_parts_total").increment(o.split_parts);
        }
        if o.part_errors > 0 {
            self.part_errors.fetch_add(o.part_errors, Relaxed);
            metrics::counter!("onceflow_split_part_errors_total").increment(o.part_errors);
        }
        if o.duplicates > 0 {
            self.duplicates.fetch_add(o.duplicates, Relaxed);
            metrics::counter!("onceflow_records_total", "outcome" => "duplicate")
                .increment(o.duplicates);
        }
        for r in DeadReason::ALL {
            let n = o.dead[r as usize];
            if n > 0 {
                self.dead[r as usize].fetch_add(n, Relaxed);
                metrics::counter!("onceflow_records_total", "outcome" => "dead_lettered", "reason" => r.name()).increment(n);
            }
        }
        if o.held_delta != 0 {
            let now = self.held.fetch_add(o.held_delta, Relaxed) + o.held_delta;
            metrics::gauge!("onceflow_records_held").set(now as f64);
        }
    }

    /// Records a committed epoch's latencies: `(append ms, count)` pairs, committed at `commit_ms`.
    pub fn record_latency(&self, stamps: &[(u64, u64)], commit_us: u64) {
        let mut all = self.latency_us.lock().expect("latency lock");
        let mut recent = self.recent_latency_us.lock().expect("latency lock");
        for &(ts_ms, n) in stamps {
            let lat = commit_us.saturating_sub(ts_ms * 1000).max(1);
            let _ = all.record_n(lat, n);
            let _ = recent.record_n(lat, n);
        }
    }

    /// Records one epoch's barrier → commit time.
    pub fn record_commit_time(&self, d: std::time::Duration) {
        let us = (d.as_micros() as u64).max(1);
        let _ = self
            .commit_time_us
            .lock()
            .expect("commit time lock")
            .record(us);
        metrics::histogram!("onceflow_commit_seconds").record(d.as_secs_f64());
    }

    /// A consistent-enough copy of the counters.
    pub fn snapshot(&self) -> StatsSnapshot {
        let dead: [u64; DEAD_REASONS] = std::array::from_fn(|i| self.dead[i].load(Relaxed));
        let lat = self.latency_us.lock().expect("latency lock");
        let ct = self.commit_time_us.lock().expect("commit time lock");
        StatsSnapshot {
            commit_time_p99_us: (!ct.is_empty()).then(|| ct.value_at_quantile(0.99)),
            commit_time_max_us: (!ct.is_empty()).then(|| ct.max()),
            read: self.read.load(Relaxed),
            replayed: self.replayed.load(Relaxed),
            processed: self.processed.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
            delivery_errors: self.delivery_errors.load(Relaxed),
            split: self.split.load(Relaxed),
            split_parts: self.split_parts.load(Relaxed),
            part_errors: self.part_errors.load(Relaxed),
            duplicates: self.duplicates.load(Relaxed),
            dead,
            held: self.held.load(Relaxed).max(0) as u64,
            lag: self
                .source_end
                .load(Relaxed)
                .saturating_sub(self.committed_input.load(Relaxed)),
            commits: self.commits.load(Relaxed),
            outputs: self.outputs.load(Relaxed),
            dead_letters: self.dead_letters.load(Relaxed),
            recoveries: self.recoveries.load(Relaxed),
            epoch: self.epoch.load(Relaxed),
            latency_p50_us: (!lat.is_empty()).then(|| lat.value_at_quantile(0.5)),
            latency_p99_us: (!lat.is_empty()).then(|| lat.value_at_quantile(0.99)),
            latency_max_us: (!lat.is_empty()).then(|| lat.max()),
        }
    }
}

/// Plain copy of [`Stats`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// See [`Stats::read`].
    pub read: u64,
    /// See [`Stats::replayed`].
    pub replayed: u64,
    /// See [`Stats::processed`].
    pub processed: u64,
    /// See [`Stats::rejected`].
    pub rejected: u64,
    /// See [`Stats::delivery_errors`].
    pub delivery_errors: u64,
    /// See [`Stats::split`].
    pub split: u64,
    /// See [`Stats::split_parts`].
    pub split_parts: u64,
    /// See [`Stats::part_errors`].
    pub part_errors: u64,
    /// See [`Stats::duplicates`].
    pub duplicates: u64,
    /// See [`Stats::dead`].
    pub dead: [u64; DEAD_REASONS],
    /// See [`Stats::held`].
    pub held: u64,
    /// Records in the sources not yet committed as consumed.
    pub lag: u64,
    /// See [`Stats::commits`].
    pub commits: u64,
    /// See [`Stats::outputs`].
    pub outputs: u64,
    /// See [`Stats::dead_letters`].
    pub dead_letters: u64,
    /// See [`Stats::recoveries`].
    pub recoveries: u64,
    /// See [`Stats::epoch`].
    pub epoch: u64,
    /// Median append→commit latency of new records.
    pub latency_p50_us: Option<u64>,
    /// 99th percentile append→commit latency.
    pub latency_p99_us: Option<u64>,
    /// Largest append→commit latency.
    pub latency_max_us: Option<u64>,
    /// 99th percentile of barrier → commit time.
    pub commit_time_p99_us: Option<u64>,
    /// Largest barrier → commit time.
    pub commit_time_max_us: Option<u64>,
}

impl StatsSnapshot {
    /// Total dead-lettered.
    pub fn dead_total(&self) -> u64 {
        self.dead.iter().sum()
    }

    /// `read = processed + duplicates + dead-lettered + held`: every record has exactly one outcome.
    pub fn balanced(&self) -> bool {
        self.read == self.processed + self.duplicates + self.dead_total() + self.held
    }
}
