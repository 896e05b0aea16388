//! The engine's side of snapshots: when to write one, writing it at a barrier (each
//! shard its own file, the committer the manifest once the epoch is committed),
//! retention, and restoring the newest valid one before replay.
//!
//! Recovery rule with snapshots: take the newest complete, valid snapshot whose epoch
//! is committed and whose pipeline fingerprint matches; load its keys into the shards;
//! replay each input from the snapshot's offsets up to the committed offsets with
//! outputs suppressed; resume. Without a usable snapshot, replay from offset 0.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::EngineError;
use crate::config::{Pipeline, RestoreMode, SnapshotConfig};
use crate::hash::{SHARD_SALT, bucket, stable_hash};
use crate::shard::{InputNames, ShardCore};
use crate::snapshot::{
    Fingerprint, InputOffset, ShardFileInfo, SkipReason, Skipped, SnapshotError, SnapshotWriter,
    WriteOptions,
};
use crate::stage::Stage;

/// What a snapshot's state depends on: a change to any of these makes old snapshots
/// unusable. Components are fine-grained (one per view field, state field, command,
/// event type, projection, upcast rule) so the refusal names what changed. The shard
/// count is not among them: keys are redistributed on restore.
pub fn fingerprint(p: &Pipeline) -> Fingerprint {
    let sources: Vec<String> = p
        .sources
        .iter()
        .map(|s| format!("{}={}:{:?}", s.name, s.topic, s.format))
        .collect();
    let names = |it: &mut dyn Iterator<Item = &str>| it.collect::<Vec<_>>().join(",");
    let mut f = Fingerprint::new()
        .with(PIPELINE_NAME, &p.name)
        .with("sources", sources.join(","))
        .with("key", format!("{:?}", p.key))
        .with(
            "view",
            format!("{} {} {:?}", p.view.topic, p.view.partitions, p.view.emit),
        )
        .with(
            "view.fields",
            names(&mut p.view.fields.iter().map(|r| r.name.as_str())),
        );
    for r in &p.view.fields {
        f.set(format!("view.fields.{}", r.name), format!("{r:?}"));
    }
    if let Some(a) = &p.aggregate {
        let mut head = a.clone();
        head.state.clear();
        head.commands.clear();
        head.events.clear();
        f.set("aggregate", format!("{head:?}"));
        f.set(
            "aggregate.state",
            names(&mut a.state.iter().map(|x| x.name.as_str())),
        );
        for x in &a.state {
            f.set(format!("aggregate.state.{}", x.name), format!("{x:?}"));
        }
        for x in &a.commands {
            f.set(format!("aggregate.commands.{}", x.name), format!("{x:?}"));
        }
        for x in &a.events {
            f.set(format!("aggregate.events.{}", x.name), format!("{x:?}"));
        }
    }
    if let Some(ps) = &p.projections {
        let mut head = ps.clone();
        head.list.clear();
        f.set("projections", format!("{head:?}"));
        f.set(
            "projections.list",
            names(&mut ps.list.iter().map(|x| x.name.as_str())),
        );
        for x in &ps.list {
            f.set(format!("projections.{}", x.name), format!("{x:?}"));
        }
    }
    if let Some(u) = &p.upcast {
        f.set("upcast", format!("{u:?}"));
    }
    f
}

/// The fingerprint component naming the pipeline: a snapshot that differs there belongs
/// to another pipeline (a copied or shared directory) and is skipped; one that differs
/// only elsewhere was written by an earlier definition of this pipeline and refuses the
/// run until `--rebuild`.
const PIPELINE_NAME: &str = "pipeline";

/// Snapshot settings of one run, shared by the router, the shards and the committer.
#[derive(Debug)]
pub struct Plan {
    cfg: SnapshotConfig,
    fingerprint: Fingerprint,
    fsync: bool,
    /// A snapshot is being written (the router starts no other until it is done).
    busy: AtomicBool,
    /// Snapshots completed by this run.
    pub written: AtomicU64,
    /// The last one completed by this run.
    pub last: Mutex<Option<Written>>,
    /// Why snapshots failed in this run (the pipeline goes on without them).
    pub errors: Mutex<Vec<String>>,
}

impl Plan {
    /// The plan of a pipeline with `[snapshot]`.
    pub fn new(p: &Pipeline) -> Option<Arc<Plan>> {
        let cfg = p.snapshot.clone()?;
        Some(Arc::new(Plan {
            cfg,
            fingerprint: fingerprint(p),
            fsync: p.fsync == crate::log::FsyncPolicy::EveryCommit,
            busy: AtomicBool::new(false),
            written: AtomicU64::new(0),
            last: Mutex::new(None),
            errors: Mutex::new(Vec::new()),
        }))
    }

    fn failed(&self, what: String) {
        let mut e = self.errors.lock().expect("snapshot errors lock");
        if e.len() < 16 {
            e.push(what);
        }
    }
}

/// A snapshot this run completed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Written {
    /// Its epoch.
    pub epoch: u64,
    /// Keys in it.
    pub keys: u64,
    /// Bytes of its shard files.
    pub bytes: u64,
    /// From its barrier to its last shard file written (the shards kept processing).
    pub write_time: Duration,
    /// From its barrier to its manifest (it also waits for its epoch's commit).
    pub complete_time: Duration,
}

/// The router's view: is a snapshot due at this barrier?
#[derive(Debug)]
pub struct Trigger {
    last_at: Instant,
    epochs: u64,
    records: u64,
}

impl Trigger {
    /// Counting from now.
    pub fn new() -> Self {
        Trigger::after_epochs(0)
    }

    /// Counting from now, with `epochs` committed since the last snapshot (by earlier
    /// runs) already counted toward `every_epochs`.
    pub fn after_epochs(epochs: u64) -> Self {
        Trigger {
            last_at: Instant::now(),
            epochs,
            records: 0,
        }
    }

    /// Recovery replayed `records`: they count toward `every_records` (and the time
    /// spent toward `every`), so a long replay is followed by a snapshot at the first
    /// barrier and the next restart does not replay it all again.
    pub fn replayed(&mut self, records: u64) {
        self.records += records;
    }

    /// Called at each barrier the router cuts, with the epoch's records; true when a
    /// snapshot should be written at this barrier (and none is being written).
    pub fn due(&mut self, plan: &Plan, epoch_records: u64) -> bool {
        self.epochs += 1;
        self.records += epoch_records;
        let c = &plan.cfg;
        let due = c.every_epochs.is_some_and(|n| self.epochs >= n)
            || c.every.is_some_and(|d| self.last_at.elapsed() >= d)
            || c.every_records.is_some_and(|n| self.records >= n);
        if !due || plan.busy.swap(true, Ordering::AcqRel) {
            return false;
        }
        *self = Trigger::new();
        true
    }
}

/// Starts the snapshot of `epoch`: its directory, and what the committer needs to
/// complete it. `None` (counted as a failure) if the directory cannot be made.
pub fn start(
    plan: &Arc<Plan>,
    epoch: u64,
    shards: usize,
    names: &InputNames,
    positions: &[u64],
) -> Option<(Arc<SnapshotWriter>, Pending)> {
    let writer = match SnapshotWriter::create(
        &plan.cfg.dir,
        epoch,
        shards as u32,
        WriteOptions { fsync: plan.fsync },
    ) {
        Ok(w) => Arc::new(w),
        Err(e) => {
            plan.failed(format!("epoch {epoch}: {e}"));
            plan.busy.store(false, Ordering::Release);
            return None;
        }
    };
    let inputs = names
        .iter()
        .zip(positions)
        .map(|((source, partition), &next_offset)| InputOffset {
            source: source.clone(),
            partition: *partition,
            next_offset,
        })
        .collect();
    let pending = Pending {
        started: Instant::now(),
        written_at: None,
        plan: plan.clone(),
        writer: Some(writer.clone()),
        epoch,
        inputs,
        files: Vec::with_capacity(shards),
        answers: 0,
        shards,
        error: None,
    };
    Some((writer, pending))
}

/// A snapshot being written, held by the committer.
#[derive(Debug)]
pub struct Pending {
    started: Instant,
    /// When the last shard file was written.
    written_at: Option<Duration>,
    plan: Arc<Plan>,
    writer: Option<Arc<SnapshotWriter>>,
    epoch: u64,
    inputs: Vec<InputOffset>,
    files: Vec<ShardFileInfo>,
    answers: usize,
    shards: usize,
    error: Option<String>,
}

impl Pending {
    /// A shard's file is written (or failed).
    pub fn shard_done(&mut self, result: Result<ShardFileInfo, String>) {
        self.answers += 1;
        if self.answers == self.shards {
            self.written_at = Some(self.started.elapsed());
        }
        match result {
            Ok(f) => self.files.push(f),
            Err(e) => {
                self.error.get_or_insert(e);
            }
        }
    }

    /// Completes the snapshot once every shard answered and its epoch is committed:
    /// the manifest, then retention. Returns false while it must wait.
    pub fn try_finish(&mut self, committed_epoch: u64) -> bool {
        if self.answers < self.shards || committed_epoch < self.epoch {
            return false;
        }
        let plan = self.plan.clone();
        let (keys, bytes) = self
            .files
            .iter()
            .fold((0, 0), |(k, b), f| (k + f.keys, b + f.bytes));
        let writer = self.writer.take().and_then(|w| Arc::try_unwrap(w).ok());
        let result = match (self.error.take(), writer) {
            (Some(e), _) => Err(e),
            (None, None) => Err("internal: the snapshot writer is still shared".into()),
            (None, Some(w)) => w
                .commit(
                    std::mem::take(&mut self.files),
                    &plan.fingerprint,
                    std::mem::take(&mut self.inputs),
                )
                .map(|_| ())
                .map_err(|e| e.to_string()),
        };
        match result {
            Ok(()) => {
                plan.written.fetch_add(1, Ordering::Relaxed);
                *plan.last.lock().expect("snapshot info lock") = Some(Written {
                    epoch: self.epoch,
                    keys,
                    bytes,
                    write_time: self.written_at.unwrap_or_default(),
                    complete_time: self.started.elapsed(),
                });
                if let Err(e) =
                    crate::snapshot::retain(&plan.cfg.dir, plan.cfg.keep, committed_epoch)
                {
                    plan.failed(format!("removing old snapshots: {e}"));
                }
            }
            Err(e) => plan.failed(format!("epoch {}: {e}", self.epoch)),
        }
        plan.busy.store(false, Ordering::Release);
        true
    }
}

/// What recovery took from a snapshot.
#[derive(Debug, Clone, Default)]
pub struct Restored {
    /// The snapshot's epoch; `None`: no snapshot was used.
    pub epoch: Option<u64>,
    /// Keys loaded.
    pub keys: u64,
    /// Records put back into reorder buffers.
    pub held: u64,
    /// Time to select, open, validate and load it.
    pub took: Duration,
    /// Keys are served from the mapped files and copied in on first use (else they were
    /// all loaded at start).
    pub lazy: bool,
    /// Newer snapshots that were not used, and why.
    pub skipped: Vec<String>,
}

/// Picks the newest usable snapshot for `committed_epoch` and loads it into `cores`
/// (keys go to the shard their hash picks, whatever the snapshot's shard count).
/// Returns the offset to start each input at (`names` order) and what was done. A
/// snapshot that fails while loading is reported and recovery falls back to replay
/// from offset 0 (the shards are then reset by the caller).
///
/// A snapshot of another pipeline definition newer than the one chosen refuses the run
/// ([`EngineError::ForeignSnapshot`]), unless `rebuild`: then such snapshots are removed
/// and recovery goes on with the newest one of this definition, or a full replay.
#[allow(clippy::type_complexity)]
pub fn restore<S: Stage>(
    plan: &Plan,
    committed_epoch: u64,
    names: &InputNames,
    cores: &mut [ShardCore<S>],
    rebuild: bool,
) -> Result<Result<(Vec<u64>, Restored), (Restored, String)>, EngineError> {
    let started = Instant::now();
    let mut restored = Restored::default();
    let zero = vec![0; names.len()];
    let selection = match crate::snapshot::select(&plan.cfg.dir, committed_epoch, &plan.fingerprint)
    {
        Ok(s) => s,
        Err(e) => {
            restored.skipped.push(e.to_string());
            return Ok(Ok((zero, restored)));
        }
    };
    // Every skipped snapshot is newer than the chosen one (`select` stops there). Those
    // of an earlier definition of this pipeline refuse the run (or go, to rebuild);
    // those of another pipeline are only reported, like damaged ones.
    fn changed(s: &Skipped) -> Option<&Vec<crate::snapshot::FingerprintChange>> {
        match &s.reason {
            SkipReason::Invalid(SnapshotError::ForeignPipeline { changes, .. })
                if !changes.iter().any(|c| c.component == PIPELINE_NAME) =>
            {
                Some(changes)
            }
            _ => None,
        }
    }
    let foreign = selection
        .skipped
        .iter()
        .filter_map(|s| changed(s).map(|c| (s, c)));
    for (s, changes) in foreign {
        if !rebuild {
            return Err(EngineError::ForeignSnapshot {
                path: s.path.clone(),
                epoch: s.epoch,
                changes: changes.iter().map(ToString::to_string).collect(),
            });
        }
        let done = match std::fs::remove_dir_all(&s.path) {
            Ok(()) => "removed to rebuild the state".to_string(),
            Err(e) => format!("could not be removed ({e}); it is ignored"),
        };
        restored.skipped.push(format!(
            "{}: written by a different pipeline ({}): {done}",
            s.path.display(),
            changes
                .iter()
                .map(|c| c.component.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    for s in &selection.skipped {
        if changed(s).is_some() {
            continue;
        }
        let why = match &s.reason {
            SkipReason::Incomplete => "incomplete (no manifest: writing it did not finish)".into(),
            SkipReason::NotCommitted { epoch, committed } => {
                format!("epoch {epoch} was not committed (last committed: {committed})")
            }
            SkipReason::Invalid(e) => e.to_string(),
        };
        restored
            .skipped
            .push(format!("{}: {why}", s.path.display()));
    }
    let Some(snapshot) = selection.snapshot else {
        restored.took = started.elapsed();
        return Ok(Ok((zero, restored)));
    };
    // Held records and keys belong to the inputs the snapshot was taken with: a
    // snapshot of another set (a consumer group assigned other partitions then) would
    // bring state this run does not own. Replay instead.
    if snapshot.inputs().len() != names.len() {
        restored.skipped.push(format!(
            "{}: taken with {} input partitions, this run reads {}",
            snapshot.dir().display(),
            snapshot.inputs().len(),
            names.len()
        ));
        restored.took = started.elapsed();
        return Ok(Ok((zero, restored)));
    }
    let mut starts = Vec::with_capacity(names.len());
    for (source, partition) in names.iter() {
        let Some(o) = snapshot
            .inputs()
            .iter()
            .find(|o| &o.source == source && o.partition == *partition)
        else {
            restored.skipped.push(format!(
                "{}: has no offset for source '{source}' partition {partition}",
                snapshot.dir().display()
            ));
            restored.took = started.elapsed();
            return Ok(Ok((zero, restored)));
        };
        starts.push(o.next_offset);
    }
    let epoch = snapshot.epoch();
    let dir = snapshot.dir().to_path_buf();
    let n = cores.len() as u32;
    let shards = snapshot.into_shards();
    let fail = |restored: Restored, e: String| (restored, format!("{}: {e}", dir.display()));
    let lazy = plan.cfg.restore == RestoreMode::Lazy
        && shards.len() == cores.len()
        && shards
            .iter()
            .enumerate()
            .all(|(i, sh)| sh.shard() as usize == i);
    if lazy {
        // Each shard serves its own file's keys (same shard count, same hash: the keys of
        // file i are the keys shard i gets), copying a key in on first use.
        for (core, sh) in cores.iter_mut().zip(shards) {
            restored.keys += sh.len();
            let file = Arc::new(sh);
            core.attach_base(file.clone());
            for x in file.extras() {
                if let Err(err) = core.restore_held(&x) {
                    return Ok(Err(fail(restored, err)));
                }
                restored.held += 1;
            }
            // The open's checks read every page; from here on only used ones count.
            file.release_pages();
        }
        restored.lazy = true;
    } else {
        for sh in &shards {
            for e in sh.iter() {
                let hash = stable_hash(e.key);
                let core = &mut cores[bucket(hash, SHARD_SALT, n) as usize];
                if let Err(err) = core.restore_entry(hash, e) {
                    return Ok(Err(fail(restored, err)));
                }
                restored.keys += 1;
            }
        }
        for sh in &shards {
            for x in sh.extras() {
                let core = &mut cores[bucket(stable_hash(x.key), SHARD_SALT, n) as usize];
                if let Err(err) = core.restore_held(&x) {
                    return Ok(Err(fail(restored, err)));
                }
                restored.held += 1;
            }
        }
    }
    for c in cores.iter_mut() {
        c.finish_restore();
    }
    restored.epoch = Some(epoch);
    restored.took = started.elapsed();
    Ok(Ok((starts, restored)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(snapshot: &str) -> Arc<Plan> {
        let src = format!(
            "[pipeline]\nname='t'\n[[sources]]\nname='s'\ntype='log'\npath='x'\n[key]\nfield='k'\n[view]\ntopic='v'\n[view.fields]\nn={{op='count'}}\n[snapshot]\n{snapshot}\n"
        );
        let p = Pipeline::parse(&src, std::path::Path::new(".")).unwrap();
        Plan::new(&p).unwrap()
    }

    #[test]
    fn epochs_and_records_of_earlier_runs_count_toward_the_next_snapshot() {
        let p = plan("every_epochs = 3");
        // Two epochs committed since the last snapshot, by an earlier run: due at the
        // first barrier of this one.
        let mut t = Trigger::after_epochs(2);
        assert!(t.due(&p, 10));
        p.busy.store(false, Ordering::Release);
        // Counting starts again after it.
        assert!(!t.due(&p, 10));
        assert!(!t.due(&p, 10));
        assert!(t.due(&p, 10));

        let p = plan("every_records = 100");
        let mut t = Trigger::new();
        t.replayed(95);
        assert!(!t.due(&p, 4));
        assert!(t.due(&p, 1), "replayed records count");
        // One at a time: not again while that one is being written.
        let mut t = Trigger::new();
        assert!(!t.due(&p, 1000), "busy");
    }
}
