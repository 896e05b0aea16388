//! Wires the pipeline together: Recovery, then router (this thread) → shard threads →
//! committer thread, with barrier epochs. See `docs/architecture.md`.
//!
//! Recovery rule: the committed input offsets C come from the last commit marker in the
//! state log. With `[snapshot]`, the newest complete, valid snapshot of a committed epoch
//! whose pipeline fingerprint matches is loaded into the shards (`snapshots`), and every
//! input is replayed from the snapshot's offsets to C; without one, from offset 0. The
//! replay runs with outputs and dead letters suppressed, so state catches up and nothing
//! committed is emitted twice; then processing continues from C with outputs on.

mod snapshots;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender, TryRecvError, bounded};

use crate::batch::{EventBatch, OutBuf};
use crate::commit::{Assembler, Epoch, RouterPart};
use crate::config::{Pipeline, SourceKind};
use crate::connect::Connect;
use crate::input::{InputError, LogInput, SourceInput};
use crate::log::{CommitMarker, LogError, LogOptions, LogReader, RecordBuf};
use crate::output::{Append, CommitError, CommitTarget, LogTarget, OutputTopic};
use crate::query::ReadHandle;
use crate::query::request::{Request, ShardQuery, take_requests};
use crate::router::Router;
use crate::shard::{InputNames, ShardCore, ShardPart, ShardSettings};
use crate::snapshot::{ShardFileInfo, SnapshotWriter};
use crate::stage::{Aggregate, Fold, Projections, Stage};
use crate::stats::{Outcomes, Stats, StatsSnapshot};
use snapshots::{Pending, Plan, Trigger};
pub use snapshots::{Restored, Written, fingerprint};

/// Events per batch sent to a shard.
pub const BATCH_EVENTS: usize = 256;
/// Batches in flight per shard (the backpressure bound).
const SHARD_QUEUE: usize = 64;
/// Records read from one partition per pass.
pub(crate) const READ_CHUNK: usize = 4096;
/// How often an idle router looks for new committed input: first every `IDLE_POLL`, then,
/// while nothing comes, less and less often (doubling) down to every `IDLE_POLL_MAX`.
/// A steady stream keeps the router at the short step (its first event after a quiet
/// spell waits at most `IDLE_POLL_MAX`, far below any commit interval); a quiet
/// pipeline wakes 500 times a second instead of 4,000 (measured in docs/benchmarks.md,
/// "Idle CPU").
const IDLE_POLL: Duration = Duration::from_micros(250);
const IDLE_POLL_MAX: Duration = Duration::from_millis(2);
/// Keys an idle shard renders ahead of the barrier before it looks at its queue again.
const RENDER_AHEAD_STEP: usize = 64;
/// Entries a shard copies into a snapshot in progress after each batch (under load), and
/// while idle before it looks at its queue again: small enough to stay far below a
/// commit interval per step (about 0.1 µs per entry here), large enough that a snapshot
/// of millions of keys completes within seconds of records.
const SNAPSHOT_BATCH_STEP: usize = 512;
const SNAPSHOT_IDLE_STEP: usize = 256;
/// Spins on an empty queue before parking (idle-core wakeups are slow).
const SPIN_TRIES: u32 = 200;

/// Why a run stopped with an error.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The state log or a source log failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// A source topic does not exist.
    #[error(
        "source '{source_name}': no topic '{topic}' in the log at {path}; load data with `onceflow log append {path} --topic {topic} ...` or set `load` on the source"
    )]
    SourceMissing {
        /// Source name.
        source_name: String,
        /// Log directory.
        path: PathBuf,
        /// Topic.
        topic: String,
    },
    /// An epoch could not be committed.
    #[error(transparent)]
    Commit(#[from] CommitError),
    /// A source could not be read.
    #[error("reading a source: {0}")]
    Input(#[from] InputError),
    /// The state log was written with a different view layout.
    #[error("{0}")]
    Incompatible(String),
    /// The newest snapshot was written by a different pipeline definition: its state does
    /// not apply. Nothing was processed; `RunOptions::rebuild` (`onceflow run --rebuild`)
    /// removes such snapshots and rebuilds the state by replay.
    #[error(
        "snapshot {} (epoch {epoch}) was written by a different pipeline: {}. Its state does not apply to the pipeline as it is now; rebuild the state with `onceflow run <pipeline> --rebuild` (it removes the snapshots of the old definition and replays the committed inputs from the start with outputs suppressed: nothing committed is written again)",
        .path.display(),
        .changes.join("; ")
    )]
    ForeignSnapshot {
        /// The snapshot's directory.
        path: PathBuf,
        /// Its epoch.
        epoch: u64,
        /// What changed, one entry per fingerprint component.
        changes: Vec<String>,
    },
    /// A worker thread panicked (a bug): nothing of the epoch in progress was committed.
    #[error("internal error: the {0} thread panicked; nothing after the last commit was committed")]
    Panicked(&'static str),
    /// The pipeline reads or writes a system that this program was built without a
    /// connector for (no [`RunOptions::connect`]).
    #[error(
        "pipeline '{pipeline}' uses {what}, but no connector for it was given (RunOptions::connect)"
    )]
    NoConnector {
        /// Pipeline name.
        pipeline: String,
        /// The system, e.g. "Kafka ([kafka])".
        what: &'static str,
    },
}

impl EngineError {
    /// A failure that a restart from the last commit may get past (see
    /// [`CommitError::is_transient`]; an unreachable source too). With `[kafka]`,
    /// [`run`] recovers from these by itself.
    pub fn is_transient(&self) -> bool {
        match self {
            EngineError::Commit(e) => e.is_transient(),
            EngineError::Input(InputError::Unavailable(_) | InputError::Reassigned(_)) => true,
            _ => false,
        }
    }
}

/// One recovery after a transient failure, for observers.
#[derive(Debug, Clone)]
pub struct Recovery {
    /// Recoveries in a row without a commit in between (1 for the first); 0 when the
    /// partitions were reassigned (a rebalance, not a failure).
    pub attempt: u32,
    /// What failed.
    pub error: String,
    /// How long the engine waits before it starts again.
    pub wait: Duration,
    /// The stage: the pipeline's name (a read side is `<name>.projections`).
    pub pipeline: String,
}

/// Observer called before every recovery.
pub type RecoveryHook = Arc<dyn Fn(&Recovery) + Send + Sync>;

/// What one commit did, for observers (load generator, tests).
#[derive(Debug, Clone)]
pub struct CommitReport {
    /// Epoch number.
    pub epoch: u64,
    /// Output records.
    pub outputs: u64,
    /// Dead letters.
    pub dead_letters: u64,
    /// Next offset per input at the commit.
    pub positions: Vec<u64>,
    /// Wall-clock time of the commit (µs since the Unix epoch).
    pub commit_us: u64,
}

/// Observer called after every commit.
pub type CommitHook = Box<dyn FnMut(&CommitReport) + Send>;

/// How to run.
pub struct RunOptions {
    /// Stop once the inputs present at start are processed and committed.
    pub until_end: bool,
    /// Set to finish the current epoch, commit it and stop (SIGINT/SIGTERM).
    pub stop: Arc<AtomicBool>,
    /// Shared counters (the caller may read them while the run goes on).
    pub stats: Arc<Stats>,
    /// Called after every commit.
    pub on_commit: Option<CommitHook>,
    /// Set to stop once the inputs' committed ends, as they are when it is set, are
    /// processed and committed (a tailing run that should catch up, then stop).
    pub drain: Option<Arc<AtomicBool>>,
    /// Counters of the read side, when the pipeline has an aggregate and projections
    /// (see [`Pipeline::sides`]).
    pub read_side_stats: Arc<Stats>,
    /// Reads the run's read models while it runs (see [`crate::query`]). In a pipeline
    /// with an aggregate and projections, this reads the projections (the read side).
    pub read: Option<ReadHandle>,
    /// In a pipeline with an aggregate and projections, reads the aggregate's state (the
    /// write side); unused otherwise.
    pub write_side_read: Option<ReadHandle>,
    /// Rebuild the state when the newest snapshot was written by a different pipeline
    /// definition: remove the snapshots of the old definition and replay (without it, such
    /// a snapshot refuses the run with [`EngineError::ForeignSnapshot`]).
    pub rebuild: bool,
    /// Opens the systems core has no code for (Kafka): required by a pipeline with
    /// `[kafka]` (the CLI passes `onceflow_connectors::kafka::KafkaConnect`).
    pub connect: Option<Arc<dyn Connect>>,
    /// Called before each recovery from a transient failure (see [`Recovery`]).
    pub on_recovery: Option<RecoveryHook>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            until_end: true,
            stop: Arc::new(AtomicBool::new(false)),
            stats: Arc::new(Stats::default()),
            on_commit: None,
            drain: None,
            read_side_stats: Arc::new(Stats::default()),
            read: None,
            write_side_read: None,
            rebuild: false,
            connect: None,
            on_recovery: None,
        }
    }
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// Counters at the end.
    pub stats: StatsSnapshot,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Time spent replaying to the committed offsets.
    pub recovery: Duration,
    /// Keys with state at the end.
    pub keys: usize,
    /// Records processed by this run beyond the replay.
    pub new_records: u64,
    /// The read side's summary, when the pipeline has an aggregate and projections.
    pub read_side: Option<Box<RunSummary>>,
    /// What recovery took from a snapshot (with `[snapshot]`).
    pub restored: Restored,
    /// Snapshots this run wrote.
    pub snapshots_written: u64,
    /// The last of them.
    pub last_snapshot: Option<snapshots::Written>,
    /// Why snapshots of this run failed (the pipeline went on without them).
    pub snapshot_errors: Vec<String>,
}

enum ShardMsg {
    Batch(EventBatch),
    /// Cut the epoch; with a snapshot writer, then start this shard's snapshot file.
    Barrier(u64, Option<Arc<SnapshotWriter>>),
    /// A read, answered with the state at the last barrier.
    Query(ShardQuery),
}

enum CommitMsg {
    Router(RouterPart),
    Shard(usize, ShardPart),
    /// A snapshot starts at this epoch's barrier (sent before the barrier).
    SnapshotStarted(Box<Pending>),
    /// A shard's snapshot file is written, or why not.
    SnapshotShard(Result<ShardFileInfo, String>),
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Runs a pipeline with the stage it declares: its `[[projections]]`, its `[aggregate]`,
/// else the fold of `view.fields`.
///
/// A pipeline with both an aggregate and projections runs its two sides together
/// ([`Pipeline::sides`]): the read side tails the events the write side commits, and
/// when the write side stops (end of input, or an error) the read side catches up with
/// everything committed, then stops too. A stop request stops both at once; the read
/// side catches up at the next start.
///
/// With `[kafka]`, a transient failure ([`EngineError::is_transient`]: an aborted or
/// unknown commit, an unreachable broker) does not end the run: the stage starts again
/// from its last commit, exactly as a restarted process would (the commit target is
/// opened anew, which fences what the failed attempt left open; state is restored and
/// replayed to the committed offsets with outputs suppressed), after a backoff that
/// grows from 100 ms to 10 s while failures repeat without a commit in between.
pub fn run(p: &Pipeline, opts: RunOptions) -> Result<RunSummary, EngineError> {
    match p.sides() {
        Some((write, read)) => run_sides(&write, &read, opts),
        None => run_recovering(p, opts),
    }
}

/// The first wait before a recovery, and the most it grows to.
const RECOVERY_BACKOFF: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(10));

/// Runs one stage; with `[kafka]`, starts it again from its last commit after a
/// transient failure (see [`run`]).
fn run_recovering(p: &Pipeline, mut opts: RunOptions) -> Result<RunSummary, EngineError> {
    if p.kafka.is_none() {
        return run_stage_of(p, opts);
    }
    let hook = opts.on_commit.take().map(|h| Arc::new(Mutex::new(h)));
    let mut failures = 0u32;
    let started = Instant::now();
    loop {
        let attempt = RunOptions {
            until_end: opts.until_end,
            stop: opts.stop.clone(),
            stats: opts.stats.clone(),
            on_commit: hook.clone().map(|h| -> CommitHook {
                Box::new(move |r: &CommitReport| (h.lock().expect("commit hook lock"))(r))
            }),
            drain: opts.drain.clone(),
            read_side_stats: opts.read_side_stats.clone(),
            read: opts.read.clone(),
            write_side_read: opts.write_side_read.clone(),
            rebuild: opts.rebuild,
            connect: opts.connect.clone(),
            on_recovery: None,
        };
        let commits_before = opts.stats.commits.load(Ordering::Relaxed);
        match run_stage_of(p, attempt) {
            Err(e) if e.is_transient() && !opts.stop.load(Ordering::Relaxed) => {
                if opts.stats.commits.load(Ordering::Relaxed) > commits_before {
                    failures = 0;
                }
                // A rebalance is not a failure: start again at once.
                let reassigned = matches!(e, EngineError::Input(InputError::Reassigned(_)));
                if !reassigned {
                    failures += 1;
                }
                let wait = if reassigned {
                    Duration::ZERO
                } else {
                    RECOVERY_BACKOFF
                        .0
                        .saturating_mul(1 << (failures - 1).min(10))
                        .min(RECOVERY_BACKOFF.1)
                };
                opts.stats.recoveries.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("onceflow_recoveries_total").increment(1);
                if let Some(h) = &opts.on_recovery {
                    h(&Recovery {
                        attempt: failures,
                        error: e.to_string(),
                        wait,
                        pipeline: p.name.clone(),
                    });
                }
                let until = Instant::now() + wait;
                while Instant::now() < until {
                    if opts.stop.load(Ordering::Relaxed) {
                        return Err(e);
                    }
                    std::thread::sleep(Duration::from_millis(20).min(wait));
                }
            }
            Ok(mut s) => {
                // Every attempt counts.
                s.elapsed = started.elapsed();
                return Ok(s);
            }
            Err(e) => return Err(e),
        }
    }
}

fn run_sides(
    write: &Pipeline,
    read: &Pipeline,
    opts: RunOptions,
) -> Result<RunSummary, EngineError> {
    // The read side opens the events topic as its source: create it first (with the
    // partitions the write side will check it has).
    {
        let a = write
            .aggregate
            .as_ref()
            .expect("a write side has the aggregate");
        let mut w = open_target(write, &opts)?;
        output_topic(
            w.as_mut(),
            write,
            &a.events_topic,
            a.partitions,
            "aggregate.partitions",
        )?;
    }
    let drain = Arc::new(AtomicBool::new(false));
    let mut opts = opts;
    let read_opts = RunOptions {
        until_end: false,
        stop: opts.stop.clone(),
        stats: opts.read_side_stats.clone(),
        on_commit: None,
        drain: Some(drain.clone()),
        read_side_stats: Arc::new(Stats::default()),
        read: opts.read.take(),
        write_side_read: None,
        rebuild: opts.rebuild,
        connect: opts.connect.clone(),
        on_recovery: opts.on_recovery.clone(),
    };
    opts.read = opts.write_side_read.take();
    let stop = opts.stop.clone();
    std::thread::scope(|scope| {
        let reader = std::thread::Builder::new()
            .name("onceflow-read-side".into())
            .spawn_scoped(scope, move || {
                let r = run_recovering(read, read_opts);
                if r.is_err() {
                    // Without its read side the pipeline is not doing its job: stop it all.
                    stop.store(true, Ordering::Relaxed);
                }
                r
            })
            .expect("spawn read-side thread");
        let written = run_recovering(write, opts);
        drain.store(true, Ordering::Relaxed);
        let read_result = reader
            .join()
            .map_err(|_| EngineError::Panicked("read side"))?;
        let mut summary = written?;
        summary.read_side = Some(Box::new(read_result?));
        Ok(summary)
    })
}

fn run_stage_of(p: &Pipeline, opts: RunOptions) -> Result<RunSummary, EngineError> {
    let slots = p.referenced_fields();
    if let Some(ps) = &p.projections {
        let stage = Projections::new(ps, &slots).map_err(EngineError::Incompatible)?;
        return run_with_stage(p, Arc::new(stage), opts);
    }
    match &p.aggregate {
        Some(a) => {
            let stage = Aggregate::new(a, &slots).map_err(EngineError::Incompatible)?;
            run_with_stage(p, Arc::new(stage), opts)
        }
        None => run_with_stage(p, Arc::new(Fold::new(&p.view.fields, &slots)), opts),
    }
}

struct Input {
    source: usize,
    partition: u32,
    replay_to: u64,
    end_at_start: u64,
}

/// Runs a pipeline with any [`Stage`].
pub fn run_with_stage<S: Stage>(
    p: &Pipeline,
    stage: Arc<S>,
    mut opts: RunOptions,
) -> Result<RunSummary, EngineError> {
    if p.sides().is_some() {
        return Err(EngineError::Incompatible(
            "a pipeline with an aggregate and projections runs as two stages: use engine::run, or run_with_stage on each of Pipeline::sides()".into(),
        ));
    }
    let started = Instant::now();
    let stats = opts.stats.clone();
    let row_router = stage.row_router();
    if row_router.is_some() && p.key.sequence.is_some() {
        return Err(EngineError::Incompatible(format!(
            "pipeline '{}': key.sequence is set, but the stage computes its own row keys (a projection), and one record may update several rows: remove key.sequence",
            p.name
        )));
    }

    // Outputs, dead letters and commit markers: the state log, or Kafka.
    let mut target = open_target(p, &opts)?;
    // A source whose name the state log knows but the pipeline no longer has: its output
    // was committed under that name, and a renamed source would start again from offset 0
    // and emit everything a second time.
    if let Some(m) = target.last_commit() {
        let mut gone: Vec<&str> = m
            .inputs
            .iter()
            .map(|(n, _, _)| n.as_str())
            .filter(|n| !p.sources.iter().any(|s| s.name == *n))
            .collect();
        gone.dedup();
        if !gone.is_empty() {
            return Err(EngineError::Incompatible(format!(
                "{} holds committed offsets of source{} {} that the pipeline no longer has; \
                 a renamed source would be read again from offset 0 and its outputs emitted twice. \
                 Put the old name back, or {}",
                where_committed(p),
                if gone.len() == 1 { "" } else { "s" },
                gone.iter()
                    .map(|n| format!("'{n}'"))
                    .collect::<Vec<_>>()
                    .join(", "),
                how_to_rebuild(p)
            )));
        }
    }
    // A projection pipeline has no view topic of its own: each projection has one.
    let view_topic = if p.view.topic.is_empty() {
        None
    } else {
        Some(output_topic(
            target.as_mut(),
            p,
            &p.view.topic,
            p.view.partitions,
            "view.partitions",
        )?)
    };
    let stage_topics = stage
        .outputs()
        .iter()
        .map(|o| output_topic(target.as_mut(), p, &o.topic, o.partitions, "the partitions"))
        .collect::<Result<Vec<_>, _>>()?;
    let dead_topic = target.ensure_topic(&p.dead_letter_topic, 1)?;
    let mut epoch = target.last_commit().map(|m| m.epoch + 1).unwrap_or(1);
    let epoch_known = target.epoch_known();
    if !epoch_known && let Some(dir) = p.snapshot_write_dir() {
        // Snapshots are named by epoch: number on past every one on disk.
        let newest = crate::snapshot::list(&dir)
            .ok()
            .and_then(|d| d.first().map(|d| d.epoch))
            .unwrap_or(0);
        epoch = epoch.max(newest + 1);
    }
    // Readers see the state at epoch cuts, once committed: from the last one on.
    let reads = match &opts.read {
        Some(h) => Some(
            h.attach(stage.tables(&p.view.topic), p.shards as u32, epoch - 1)
                .map_err(EngineError::Incompatible)?,
        ),
        None => None,
    };

    // Sources and the committed offsets to replay up to.
    let mut sources: Vec<Box<dyn SourceInput>> = Vec::new();
    let mut inputs = Vec::new();
    let mut names = Vec::new();
    for (si, s) in p.sources.iter().enumerate() {
        let source: Box<dyn SourceInput> = match s.kind {
            SourceKind::Kafka => connector(p, &opts)?.source(p, s)?,
            SourceKind::Log => match LogReader::open(&s.path, &s.topic) {
                Ok(r) => Box::new(LogInput::new(r)?),
                Err(LogError::NoSuchTopic { .. } | LogError::NotALog { .. }) => {
                    return Err(EngineError::SourceMissing {
                        source_name: s.name.clone(),
                        path: s.path.clone(),
                        topic: s.topic.clone(),
                    });
                }
                Err(e) => return Err(e.into()),
            },
        };
        let committed = target.committed_inputs(&s.name);
        for part in source.partitions() {
            let c = committed
                .iter()
                .find(|(q, _)| *q == part)
                .map(|(_, o)| *o)
                .unwrap_or(0);
            let end = source.committed_end(part);
            if c > end {
                return Err(EngineError::Incompatible(format!(
                    "source '{}' partition {part}: {} says offsets up to {c} were consumed, but {} ends at {end}; \
                     the input was replaced or truncated, so the state cannot be trusted: {}",
                    s.name,
                    where_committed(p),
                    match s.kind {
                        SourceKind::Log => format!("the log at {}", s.path.display()),
                        SourceKind::Kafka => format!("Kafka topic '{}'", s.topic),
                    },
                    how_to_rebuild(p)
                )));
            }
            inputs.push(Input {
                source: si,
                partition: part,
                replay_to: c,
                end_at_start: end,
            });
            names.push((s.name.clone(), part));
        }
        sources.push(source);
    }
    let names: InputNames = Arc::new(names);
    stats
        .committed_input
        .store(inputs.iter().map(|i| i.replay_to).sum(), Ordering::Relaxed);
    stats.source_end.store(
        inputs.iter().map(|i| i.end_at_start).sum(),
        Ordering::Relaxed,
    );

    let n = p.shards;
    let settings = ShardSettings::new(p);
    let (commit_tx, commit_rx) = bounded::<CommitMsg>(n * 8 + 8);
    let (pool_tx, pool_rx) = bounded::<EventBatch>(n * (SHARD_QUEUE + 4));
    let mut shard_txs = Vec::with_capacity(n);
    let mut shard_rxs = Vec::with_capacity(n);
    for _ in 0..n {
        let (tx, rx) = bounded::<ShardMsg>(SHARD_QUEUE);
        shard_txs.push(tx);
        shard_rxs.push(rx);
    }

    // Shard state: from the newest usable snapshot, else empty (replay from offset 0).
    let plan = Plan::new(p);
    let new_cores = || -> Vec<ShardCore<S>> {
        (0..n)
            .map(|_| ShardCore::new(stage.clone(), settings.clone(), names.clone()))
            .collect()
    };
    let mut cores = new_cores();
    let mut restored = Restored::default();
    if let Some(plan) = &plan {
        // Without the committed epoch, a snapshot is chosen by its offsets alone.
        let committed_epoch = if epoch_known {
            epoch.saturating_sub(1)
        } else {
            u64::MAX
        };
        let replay_to: Vec<u64> = inputs.iter().map(|i| i.replay_to).collect();
        match snapshots::restore(
            plan,
            committed_epoch,
            &names,
            &replay_to,
            &mut cores,
            opts.rebuild,
        )? {
            Ok((starts, r))
                if !epoch_known && inputs.iter().zip(&starts).any(|(i, &s)| s > i.replay_to) =>
            {
                let mut r = r;
                r.skipped.push(format!(
                    "snapshot of epoch {} was read beyond the committed offsets; replaying from the start instead",
                    r.epoch.unwrap_or(0)
                ));
                r.epoch = None;
                r.keys = 0;
                r.held = 0;
                restored = r;
                cores = new_cores();
            }
            Ok((starts, r)) => {
                restored = r;
                stats.restored_held(restored.held);
                for (inp, &start) in inputs.iter_mut().zip(&starts) {
                    if start > inp.replay_to {
                        return Err(EngineError::Incompatible(format!(
                            "the snapshot of epoch {} says source '{}' partition {} was read up to {start}, beyond the committed {}; move {} away",
                            restored.epoch.unwrap_or(0),
                            p.sources[inp.source].name,
                            inp.partition,
                            inp.replay_to,
                            p.snapshot
                                .as_ref()
                                .map(|s| s.dir.display().to_string())
                                .unwrap_or_default()
                        )));
                    }
                    sources[inp.source].seek(inp.partition, start)?;
                }
            }
            Err((mut r, why)) => {
                r.skipped
                    .push(format!("{why}; replaying from the start instead"));
                r.epoch = None;
                r.keys = 0;
                r.held = 0;
                restored = r;
                cores = new_cores();
            }
        }
    }

    let mut router = Router::new(p, names.clone());
    if let Some(r) = row_router {
        router = router.with_row_router(r);
    }
    let on_commit = match &reads {
        Some(r) => Some(r.commit_hook(opts.on_commit.take())),
        None => opts.on_commit.take(),
    };

    std::thread::scope(|scope| {
        let mut shard_handles = Vec::with_capacity(n);
        let mut spare_txs = Vec::with_capacity(n);
        for ((i, rx), core) in shard_rxs.into_iter().enumerate().zip(cores) {
            // Output buffers come back from the committer for reuse.
            let (spare_tx, spare_rx) = bounded::<OutBuf>(2);
            spare_txs.push(spare_tx);
            let (commit_tx, pool_tx, stats) = (commit_tx.clone(), pool_tx.clone(), stats.clone());
            shard_handles.push(
                std::thread::Builder::new()
                    .name(format!("onceflow-shard-{i}"))
                    .spawn_scoped(scope, move || {
                        shard_loop(i, core, rx, commit_tx, pool_tx, spare_rx, &stats)
                    })
                    .expect("spawn shard thread"),
            );
        }
        drop(pool_tx);
        // Set when the committer stops with an error: the router stops too (an idle
        // router would not notice otherwise).
        let committer_down = Arc::new(AtomicBool::new(false));
        let committer = {
            let stats = stats.clone();
            let names = names.clone();
            let down = committer_down.clone();
            std::thread::Builder::new()
                .name("onceflow-committer".into())
                .spawn_scoped(scope, move || {
                    let _down = SetOnDrop(down);
                    committer_loop(
                        target,
                        Topics {
                            view: view_topic,
                            dead: dead_topic,
                            stage: stage_topics,
                        },
                        n,
                        commit_rx,
                        &names,
                        &spare_txs,
                        &stats,
                        on_commit,
                    )
                })
                .expect("spawn committer thread")
        };

        // Epochs committed since the snapshot restored (all of them without one) count
        // toward `every_epochs`, so frequent restarts do not postpone snapshots forever.
        let committed = epoch.saturating_sub(1);
        let trigger = Trigger::after_epochs(committed - restored.epoch.unwrap_or(0).min(committed));
        let routed = route_loop(
            p,
            plan.as_ref(),
            &mut router,
            &mut sources,
            &mut inputs,
            &mut epoch,
            &shard_txs,
            &pool_rx,
            &commit_tx,
            &opts,
            &stats,
            trigger,
            &committer_down,
        );
        drop(shard_txs);
        drop(commit_tx);
        let mut keys = 0;
        let mut panicked = None;
        let mut failed = None;
        for h in shard_handles {
            match h.join() {
                Ok(Ok(k)) => keys += k,
                Ok(Err(e)) => failed = Some(e),
                Err(_) => panicked = Some("shard"),
            }
        }
        let committed = committer
            .join()
            .map_err(|_| EngineError::Panicked("committer"))?;
        if let Some(which) = panicked {
            return Err(EngineError::Panicked(which));
        }
        if let Some(e) = failed {
            return Err(e);
        }
        let recovery = routed?;
        committed?;
        let snap = stats.snapshot();
        Ok(RunSummary {
            new_records: snap.read - snap.replayed,
            stats: snap,
            elapsed: started.elapsed(),
            recovery,
            keys,
            read_side: None,
            restored,
            snapshots_written: plan
                .as_ref()
                .map_or(0, |p| p.written.load(Ordering::Relaxed)),
            last_snapshot: plan
                .as_ref()
                .and_then(|p| *p.last.lock().expect("snapshot info lock")),
            snapshot_errors: plan
                .as_ref()
                .map(|p| p.errors.lock().expect("snapshot errors lock").clone())
                .unwrap_or_default(),
        })
    })
}

/// The commit target of `p`: its state log, or (with `[kafka]`) the connector's.
fn open_target(p: &Pipeline, opts: &RunOptions) -> Result<Box<dyn CommitTarget>, EngineError> {
    if p.kafka.is_some() {
        return Ok(connector(p, opts)?.target(p)?);
    }
    Ok(Box::new(LogTarget::open(
        &p.state_dir,
        LogOptions {
            fsync: p.fsync,
            ..LogOptions::default()
        },
    )?))
}

fn connector<'a>(p: &Pipeline, opts: &'a RunOptions) -> Result<&'a dyn Connect, EngineError> {
    opts.connect
        .as_deref()
        .ok_or_else(|| EngineError::NoConnector {
            pipeline: p.name.clone(),
            what: "Kafka ([kafka])",
        })
}

/// Where `p`'s input offsets are committed, for messages.
fn where_committed(p: &Pipeline) -> String {
    match &p.kafka {
        Some(k) => format!("Kafka consumer group '{}'", k.group),
        None => format!("the state log at {}", p.state_dir.display()),
    }
}

/// How to start `p` over from its inputs, for messages.
fn how_to_rebuild(p: &Pipeline) -> String {
    match &p.kafka {
        Some(k) => format!(
            "start over with a new consumer group ([kafka] group, now '{}') and empty output topics",
            k.group
        ),
        None => format!(
            "move the state directory {} away to rebuild from the inputs",
            p.state_dir.display()
        ),
    }
}

/// Opens (or creates) an output topic of the commit target, refusing a partition count that
/// differs from the one the topic was created with (records of one key would move).
fn output_topic(
    target: &mut dyn CommitTarget,
    p: &Pipeline,
    topic: &str,
    partitions: u32,
    setting: &str,
) -> Result<OutputTopic, EngineError> {
    match target.partitions_of(topic) {
        Some(n) if n != partitions => Err(EngineError::Incompatible(format!(
            "{setting} of topic '{topic}' is {partitions} but {} holds it with {n} partitions; \
             put back {n} partitions, or {}",
            match p.kafka {
                Some(_) => "Kafka".to_string(),
                None => format!("the state log at {}", p.state_dir.display()),
            },
            how_to_rebuild(p)
        ))),
        _ => Ok(target.ensure_topic(topic, partitions)?),
    }
}

/// The router: reads inputs in order, replays up to the committed offsets with outputs
/// suppressed, then routes new records and cuts epochs. Returns the recovery time.
#[allow(clippy::too_many_arguments)]
fn route_loop(
    p: &Pipeline,
    plan: Option<&Arc<Plan>>,
    router: &mut Router,
    sources: &mut [Box<dyn SourceInput>],
    inputs: &mut [Input],
    epoch: &mut u64,
    shard_txs: &[Sender<ShardMsg>],
    pool: &Receiver<EventBatch>,
    commit_tx: &Sender<CommitMsg>,
    opts: &RunOptions,
    stats: &Stats,
    mut trigger: Trigger,
    committer_down: &AtomicBool,
) -> Result<Duration, EngineError> {
    let n = shard_txs.len();
    let fan_out = router.fans_out();
    let requests = opts.read.as_ref().map(ReadHandle::requests);
    let mut waiting: Vec<Request> = Vec::new();
    let started = Instant::now();
    let mut recovery = Duration::ZERO;
    // With a snapshot, inputs start at its offsets: replay from there up to the commit.
    let pos = |sources: &[Box<dyn SourceInput>], i: &Input| sources[i.source].position(i.partition);
    let mut replaying = inputs.iter().any(|i| i.replay_to > pos(sources, i));
    let mut batches: Vec<EventBatch> = (0..n).map(|_| take_batch(pool, replaying)).collect();
    let mut buf = RecordBuf::new();
    let mut dead = OutBuf::default();
    let mut stamps: Vec<(u64, u64)> = Vec::new();
    let mut epoch_records = 0u64;
    let mut deadline = Instant::now() + p.commit_interval;
    let mut last_refresh = Instant::now();
    let mut idle_step = IDLE_POLL;
    let mut o = Outcomes::default();
    let mut until_end = opts.until_end;

    // Sends every non-empty batch; false if the shards are gone.
    let flush = |batches: &mut Vec<EventBatch>, replay: bool| -> bool {
        for (i, b) in batches.iter_mut().enumerate() {
            if !b.events.is_empty() {
                let full = std::mem::replace(b, take_batch(pool, replay));
                if shard_txs[i].send(ShardMsg::Batch(full)).is_err() {
                    return false;
                }
            }
        }
        true
    };

    loop {
        if committer_down.load(Ordering::Relaxed) {
            // Its error is the run's (nothing after the last commit was committed).
            return Ok(recovery);
        }
        if !until_end
            && opts
                .drain
                .as_ref()
                .is_some_and(|d| d.load(Ordering::Relaxed))
        {
            // Catch up with what is committed now, then stop.
            for r in sources.iter_mut() {
                r.settle()?;
            }
            for i in inputs.iter_mut() {
                i.end_at_start = sources[i.source].committed_end(i.partition);
            }
            until_end = true;
        }
        let stopping = opts.stop.load(Ordering::Relaxed);
        if stopping && replaying {
            // Nothing new was processed: nothing to commit.
            return Ok(started.elapsed());
        }
        if let Some(rx) = requests {
            take_requests(rx, &mut waiting);
        }
        let mut progressed = false;
        if !stopping {
            for (idx, inp) in inputs.iter_mut().enumerate() {
                let source = &mut sources[inp.source];
                // Reads stop at an offset (offsets may skip numbers): a replay exactly
                // at the committed one, a run `--until-end` at the end it started with.
                let below = if replaying {
                    inp.replay_to
                } else if until_end {
                    inp.end_at_start
                } else {
                    u64::MAX
                };
                if source.position(inp.partition) >= below {
                    continue;
                }
                buf.clear();
                let got = source.read(inp.partition, READ_CHUNK, below, &mut buf)?;
                if got == 0 {
                    continue;
                }
                progressed = true;
                for rec in buf.iter() {
                    o.read += 1;
                    if !replaying {
                        match stamps.last_mut() {
                            Some((ts, c)) if *ts == rec.timestamp_ms => *c += 1,
                            _ => stamps.push((rec.timestamp_ms, 1)),
                        }
                    }
                    if let Some(s) = router.route(
                        idx as u32,
                        rec.offset,
                        rec.timestamp_ms,
                        rec.value,
                        rec.headers,
                        &mut batches,
                        &mut dead,
                        !replaying,
                        &mut o,
                    ) {
                        // A projection record, or the parts of a split one, may have
                        // gone to several shards.
                        let sent_to = if fan_out { 0..n } else { s..s + 1 };
                        for s in sent_to {
                            if batches[s].events.len() >= BATCH_EVENTS {
                                let full =
                                    std::mem::replace(&mut batches[s], take_batch(pool, replaying));
                                if shard_txs[s].send(ShardMsg::Batch(full)).is_err() {
                                    return Ok(recovery);
                                }
                            }
                        }
                    }
                }
                if replaying {
                    stats.replayed.fetch_add(got as u64, Ordering::Relaxed);
                    crate::fault::point(crate::fault::REPLAY_BATCH);
                } else {
                    epoch_records += got as u64;
                }
                stats.add(&o);
                o = Outcomes::default();
            }
        }

        if replaying && inputs.iter().all(|i| pos(sources, i) >= i.replay_to) {
            if !flush(&mut batches, true) {
                return Ok(recovery);
            }
            replaying = false;
            for b in &mut batches {
                b.replay = false;
            }
            recovery = started.elapsed();
            trigger.replayed(stats.replayed.load(Ordering::Relaxed));
            deadline = Instant::now() + p.commit_interval;
            continue;
        }
        if replaying {
            if !progressed {
                // The committed offsets are below the committed ends, so data is there.
                std::thread::sleep(IDLE_POLL);
            }
            continue;
        }

        let done = until_end && inputs.iter().all(|i| pos(sources, i) >= i.end_at_start);
        let now = Instant::now();
        if stopping || done || now >= deadline {
            if epoch_records > 0 || !dead.is_empty() {
                if !flush(&mut batches, false) {
                    return Ok(recovery);
                }
                let positions: Vec<u64> = inputs.iter().map(|i| pos(sources, i)).collect();
                // A snapshot at this barrier? Its writer goes to the shards with the
                // barrier; the committer completes it once the epoch is committed.
                let mut snapshot = None;
                if let Some(plan) = plan
                    && trigger.due(plan, epoch_records)
                    && let Some((w, pending)) =
                        snapshots::start(plan, *epoch, n, router.inputs(), &positions)
                {
                    if commit_tx
                        .send(CommitMsg::SnapshotStarted(Box::new(pending)))
                        .is_err()
                    {
                        return Ok(recovery);
                    }
                    snapshot = Some(w);
                }
                for tx in shard_txs {
                    if tx
                        .send(ShardMsg::Barrier(*epoch, snapshot.clone()))
                        .is_err()
                    {
                        return Ok(recovery);
                    }
                }
                drop(snapshot);
                let part = RouterPart {
                    epoch: *epoch,
                    positions,
                    dead: std::mem::take(&mut dead),
                    stamps: std::mem::take(&mut stamps),
                    barrier_at: Some(now),
                };
                if commit_tx.send(CommitMsg::Router(part)).is_err() {
                    return Ok(recovery);
                }
                *epoch += 1;
                epoch_records = 0;
            }
            // A fixed cadence: a barrier cut late (the router was asleep or busy) does not
            // lengthen the next epoch; after a stall of a whole interval, start afresh.
            deadline = if now >= deadline + p.commit_interval {
                now + p.commit_interval
            } else {
                deadline + p.commit_interval
            };
            if stopping || done {
                forward_reads(&mut waiting, *epoch - 1, shard_txs);
                return Ok(recovery);
            }
        }
        // Reads see the state at a cut: right after a barrier, or now if nothing was
        // read since the last one.
        if !waiting.is_empty()
            && epoch_records == 0
            && dead.is_empty()
            && !forward_reads(&mut waiting, *epoch - 1, shard_txs)
        {
            return Ok(recovery);
        }

        if !progressed {
            if now.duration_since(last_refresh) >= IDLE_POLL {
                for r in sources.iter_mut() {
                    r.refresh()?;
                }
                let end: u64 = inputs
                    .iter()
                    .map(|i| sources[i.source].committed_end(i.partition))
                    .sum();
                stats.source_end.store(end, Ordering::Relaxed);
                last_refresh = now;
            }
            let more = inputs.iter().any(|i| {
                let end = sources[i.source].committed_end(i.partition);
                pos(sources, i)
                    < if until_end {
                        i.end_at_start.min(end)
                    } else {
                        end
                    }
            });
            if !more {
                // Never past the barrier's deadline: epochs keep their cadence.
                std::thread::sleep(idle_step.min(deadline.saturating_duration_since(now)));
                idle_step = (idle_step * 2).min(IDLE_POLL_MAX);
            }
        } else {
            idle_step = IDLE_POLL;
        }
    }
}

/// Hands the waiting reads to the shards they ask, to be answered with the state at the
/// end of `epoch` (the last barrier sent); false if the shards are gone.
fn forward_reads(waiting: &mut Vec<Request>, epoch: u64, shard_txs: &[Sender<ShardMsg>]) -> bool {
    for r in waiting.drain(..) {
        for q in r.into_queries(epoch) {
            if shard_txs[q.shard()].send(ShardMsg::Query(q)).is_err() {
                return false;
            }
        }
    }
    true
}

fn take_batch(pool: &Receiver<EventBatch>, replay: bool) -> EventBatch {
    let mut b = pool.try_recv().unwrap_or_default();
    b.clear();
    b.replay = replay;
    b
}

/// A shard thread: processes batches, hands its epoch part over at each barrier.
fn shard_loop<S: Stage>(
    i: usize,
    mut core: ShardCore<S>,
    rx: Receiver<ShardMsg>,
    commit_tx: Sender<CommitMsg>,
    pool_tx: Sender<EventBatch>,
    spare: Receiver<OutBuf>,
    stats: &Stats,
) -> Result<usize, EngineError> {
    // The rest of a snapshot once the shard has written its entries: index, fsync and
    // rename happen on a thread of their own, which reports to the committer.
    let finish = |job: crate::shard::SnapshotJob| {
        let tx = commit_tx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("onceflow-snapshot-{i}"))
            .spawn(move || {
                let _ = tx.send(CommitMsg::SnapshotShard(job.finish()));
            });
        if let Err(e) = spawned {
            let _ = commit_tx.send(CommitMsg::SnapshotShard(Err(format!(
                "could not start the snapshot thread: {e}"
            ))));
        }
    };
    loop {
        // Spin briefly before parking: a parked thread takes ~7 µs to wake here.
        let mut msg = rx.try_recv();
        if matches!(msg, Err(TryRecvError::Empty)) && core.render_pending() > 0 {
            // Idle: get the epoch's upserts ready before its barrier arrives.
            core.render_ahead(RENDER_AHEAD_STEP);
            continue;
        }
        if matches!(msg, Err(TryRecvError::Empty)) && core.snapshot_pending() {
            // Idle: go on with the snapshot's sweep.
            if let Some(job) = core.snapshot_step(SNAPSHOT_IDLE_STEP) {
                finish(job);
            }
            continue;
        }
        let mut spins = 0;
        while matches!(msg, Err(TryRecvError::Empty)) && spins < SPIN_TRIES {
            std::hint::spin_loop();
            spins += 1;
            msg = rx.try_recv();
        }
        let msg = match msg {
            Ok(m) => m,
            Err(TryRecvError::Empty) => match rx.recv() {
                Ok(m) => m,
                Err(_) => break,
            },
            Err(TryRecvError::Disconnected) => break,
        };
        match msg {
            ShardMsg::Batch(mut b) => {
                let o = core.process(&b);
                stats.add(&o);
                b.clear();
                let _ = pool_tx.try_send(b);
                // Under load the sweep advances a little with every batch.
                if core.snapshot_pending()
                    && let Some(job) = core.snapshot_step(SNAPSHOT_BATCH_STEP)
                {
                    finish(job);
                }
            }
            ShardMsg::Barrier(epoch, snapshot) => {
                // A restored state that could not be read: this epoch must not commit.
                if let Some(why) = core.take_fatal() {
                    return Err(EngineError::Incompatible(format!(
                        "shard {i}: a key's state in the restored snapshot cannot be read ({why}); nothing after the last commit was committed. Move the snapshots directory away to recover by replay, and please report this"
                    )));
                }
                let part = core.barrier(epoch, spare.try_recv().ok());
                if commit_tx.send(CommitMsg::Shard(i, part)).is_err() {
                    break;
                }
                if let Some(w) = snapshot {
                    // The epoch's outputs are on their way to the committer; the state as
                    // of this barrier is written copy-on-write from here on.
                    match w.shard(i as u32) {
                        Ok(sw) => core.begin_snapshot(sw),
                        Err(e) => {
                            let _ = commit_tx.send(CommitMsg::SnapshotShard(Err(e.to_string())));
                        }
                    }
                }
            }
            ShardMsg::Query(q) => core.answer(q),
        }
    }
    // Stopping: a snapshot in progress is completed (its manifest waits for the commit of
    // its epoch, which the committer may still make).
    if let Some(job) = core.snapshot_step(usize::MAX) {
        let _ = commit_tx.send(CommitMsg::SnapshotShard(job.finish()));
    }
    Ok(core.keys())
}

/// The state-log topics an epoch's records go to.
struct Topics {
    view: Option<OutputTopic>,
    dead: OutputTopic,
    /// One per [`Stage::outputs`] entry.
    stage: Vec<OutputTopic>,
}

/// Sets its flag when dropped: when the thread that holds it ends, however it ends.
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The committer: one atomic transaction per commit. Epochs are committed in order;
/// the epochs that are complete when a commit starts go into it together (a group
/// commit), so that epochs which completed while a slow commit ran do not each wait for
/// a transaction of their own. Such a commit carries the outputs of all of them, in
/// epoch order, and the marker of the last one (its number and input positions), which
/// is exactly what committing them one after the other would leave committed.
#[allow(clippy::too_many_arguments)]
fn committer_loop(
    mut target: Box<dyn CommitTarget>,
    topics: Topics,
    shards: usize,
    rx: Receiver<CommitMsg>,
    names: &InputNames,
    spare_txs: &[Sender<OutBuf>],
    stats: &Stats,
    mut on_commit: Option<CommitHook>,
) -> Result<(), EngineError> {
    let mut asm = Assembler::new(shards);
    let mut last: Vec<u64> = {
        let mut v = Vec::with_capacity(names.len());
        for (name, part) in names.iter() {
            let c = target.committed_inputs(name);
            v.push(
                c.iter()
                    .find(|(q, _)| q == part)
                    .map(|(_, o)| *o)
                    .unwrap_or(0),
            );
        }
        v
    };
    let mut committed_epoch = target.last_commit().map_or(0, |m| m.epoch);
    let mut snapshot: Option<Box<Pending>> = None;
    let mut ready: Vec<Epoch> = Vec::new();
    fn apply(msg: CommitMsg, asm: &mut Assembler, snapshot: &mut Option<Box<Pending>>) {
        match msg {
            CommitMsg::Router(part) => asm.router(part),
            CommitMsg::Shard(i, part) => asm.shard(i, part),
            CommitMsg::SnapshotStarted(p) => *snapshot = Some(p),
            CommitMsg::SnapshotShard(result) => {
                if let Some(p) = snapshot.as_mut() {
                    p.shard_done(result);
                }
            }
        }
    }
    while let Ok(msg) = rx.recv() {
        apply(msg, &mut asm, &mut snapshot);
        // Whatever arrived meanwhile (during the last commit) joins this commit.
        while let Ok(msg) = rx.try_recv() {
            apply(msg, &mut asm, &mut snapshot);
        }
        while let Some(ep) = asm.pop_ready() {
            ready.push(ep);
        }
        if let Some(newest) = ready.last().map(|ep| ep.router.epoch) {
            commit_epochs(
                target.as_mut(),
                &topics,
                &ready,
                names,
                &mut last,
                stats,
                on_commit.as_mut(),
            )?;
            committed_epoch = committed_epoch.max(newest);
            for ep in ready.drain(..) {
                for (i, part) in ep.shards.into_iter().enumerate() {
                    let _ = spare_txs[i].try_send(part.outputs);
                }
            }
        }
        // A snapshot counts once its epoch is committed: then its manifest is written.
        if snapshot
            .as_mut()
            .is_some_and(|p| p.try_finish(committed_epoch))
        {
            snapshot = None;
        }
    }
    Ok(())
}

/// Commits `eps` (complete, consecutive, in order) in one transaction: their outputs and
/// dead letters in epoch order, with the last one's marker.
#[allow(clippy::too_many_arguments)]
fn commit_epochs(
    target: &mut dyn CommitTarget,
    topics: &Topics,
    eps: &[Epoch],
    names: &InputNames,
    last: &mut [u64],
    stats: &Stats,
    on_commit: Option<&mut CommitHook>,
) -> Result<(), EngineError> {
    let Some(newest) = eps.last() else {
        return Ok(());
    };
    let mut prev: &[u64] = last;
    for ep in eps {
        for (i, (&new, &old)) in ep.router.positions.iter().zip(prev).enumerate() {
            assert!(
                new >= old,
                "input {i}: committed offset would move back from {old} to {new}"
            );
        }
        prev = &ep.router.positions;
    }
    let positions = &newest.router.positions;
    fn deads(ep: &Epoch) -> impl Iterator<Item = &OutBuf> {
        std::iter::once(&ep.router.dead).chain(ep.shards.iter().map(|s| &s.dead))
    }
    // Per epoch: (outputs, dead letters), for the counters and the hook.
    let counts: Vec<(u64, u64)> = eps
        .iter()
        .map(|ep| {
            let mut outputs = 0u64;
            for part in &ep.shards {
                if topics.view.is_some() {
                    outputs += part.outputs.len() as u64;
                }
                outputs += part.emitted.iter().map(|b| b.len() as u64).sum::<u64>();
            }
            let dead: u64 = deads(ep).map(|b| b.len() as u64).sum();
            (outputs, dead)
        })
        .collect();
    let outputs: u64 = counts.iter().map(|c| c.0).sum();
    let dead: u64 = counts.iter().map(|c| c.1).sum();
    if outputs == 0 && dead == 0 && positions.as_slice() == &*last {
        return Ok(());
    }
    let mut fill = |tx: &mut dyn Append| {
        for ep in eps {
            for part in &ep.shards {
                if let Some(view) = topics.view {
                    for (partition, key, value, headers) in part.outputs.iter_headed() {
                        tx.append(view, partition, key, value, headers);
                    }
                }
                for (&topic, buf) in topics.stage.iter().zip(&part.emitted) {
                    for (partition, key, value, headers) in buf.iter_headed() {
                        tx.append(topic, partition, key, value, headers);
                    }
                }
            }
            for buf in deads(ep) {
                for (partition, key, value, headers) in buf.iter_headed() {
                    tx.append(topics.dead, partition, key, value, headers);
                }
            }
        }
    };
    let marker = CommitMarker {
        epoch: newest.router.epoch,
        inputs: names
            .iter()
            .zip(positions)
            .map(|((name, part), &off)| (name.clone(), *part, off))
            .collect(),
    };
    target.commit(&mut fill, &marker)?;
    crate::fault::point(crate::fault::COMMIT_AFTER);
    let commit_us = now_us();
    last.copy_from_slice(positions);
    for ep in eps {
        stats.record_latency(&ep.router.stamps, commit_us);
        if let Some(at) = ep.router.barrier_at {
            stats.record_commit_time(at.elapsed());
        }
    }
    stats
        .committed_input
        .store(positions.iter().sum(), Ordering::Relaxed);
    // Counted in epochs (the run's summary says "committed N epochs").
    stats.commits.fetch_add(eps.len() as u64, Ordering::Relaxed);
    stats.outputs.fetch_add(outputs, Ordering::Relaxed);
    stats.dead_letters.fetch_add(dead, Ordering::Relaxed);
    stats.epoch.store(newest.router.epoch, Ordering::Relaxed);
    metrics::counter!("onceflow_commits_total").increment(eps.len() as u64);
    if let Some(hook) = on_commit {
        // Once per epoch, in order, as if each had been committed on its own.
        for (ep, &(outputs, dead_letters)) in eps.iter().zip(&counts) {
            hook(&CommitReport {
                epoch: ep.router.epoch,
                outputs,
                dead_letters,
                positions: ep.router.positions.clone(),
                commit_us,
            });
        }
    }
    Ok(())
}
