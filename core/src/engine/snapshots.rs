//! The engine's side of snapshots: when to write one, writing it at a barrier (each
//! shard its own file, the committer the manifest once the epoch is committed),
//! retention, and restoring the newest valid one before replay.
//!
//! Recovery rule with snapshots: take the newest complete, valid snapshot whose epoch
//! is committed and whose pipeline fingerprint matches; load its keys into the shards;
//! replay each input from the snapshot's offsets up to the committed offsets with
//! outputs suppressed; resume. Without a usable snapshot, replay from offset 0.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::EngineError;
use crate::config::{Pipeline, RestoreMode, SnapshotConfig};
use crate::hash::{SHARD_SALT, bucket, stable_hash};
use crate::shard::{InputNames, ShardCore, entry_home};
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
        // How the events topic is encoded on Kafka changes no state.
        head.cloudevents_binary = false;
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
    if p.homed_keys() {
        f.set(ENTRY_LAYOUT, "each key with its input partition");
    }
    f
}

/// The fingerprint component saying how entries are laid out (absent: without their
/// partition). A snapshot that differs there was written in another `[kafka]
/// assignment` mode: it is skipped (replay instead), not a reason to refuse the run.
const ENTRY_LAYOUT: &str = "entries";

/// The fingerprint component naming the pipeline: a snapshot that differs there belongs
/// to another pipeline (a copied or shared directory) and is skipped; one that differs
/// only elsewhere was written by an earlier definition of this pipeline and refuses the
/// run until `--rebuild`.
const PIPELINE_NAME: &str = "pipeline";

/// Snapshot settings of one run, shared by the router, the shards and the committer.
#[derive(Debug)]
pub struct Plan {
    cfg: SnapshotConfig,
    /// Where this run writes (and, alone, restores from): `cfg.dir`, or with `[kafka]
    /// assignment = "group"` this instance's directory under it.
    dir: PathBuf,
    /// With `[kafka] assignment = "group"`: the directory the instances share
    /// (`cfg.dir`), whose `instance-*` directories a restore looks at partition by
    /// partition.
    shared: Option<PathBuf>,
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
        let dir = p.snapshot_write_dir()?;
        Some(Arc::new(Plan {
            shared: p.homed_keys().then(|| cfg.dir.clone()),
            dir,
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
        &plan.dir,
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
                if let Err(e) = crate::snapshot::retain(&plan.dir, plan.cfg.keep, committed_epoch) {
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
    /// With `[kafka] assignment = "group"`: which snapshot each restored partition's
    /// state came from, one line per snapshot used.
    pub partitions: Vec<String>,
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
    replay_to: &[u64],
    cores: &mut [ShardCore<S>],
    rebuild: bool,
) -> Result<Result<(Vec<u64>, Restored), (Restored, String)>, EngineError> {
    if let Some(root) = &plan.shared {
        return restore_shared(plan, root, names, replay_to, cores, rebuild);
    }
    let started = Instant::now();
    let mut restored = Restored::default();
    let zero = vec![0; names.len()];
    let selection = match crate::snapshot::select(&plan.dir, committed_epoch, &plan.fingerprint) {
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
                if !only_skips(changes) =>
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
        restored
            .skipped
            .push(refuse_or_remove(&s.path, s.epoch, changes, rebuild)?);
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
    load_whole(plan, snapshot, starts, cores, restored, started)
}

/// Loads all of `snapshot` into `cores` (see [`restore`]); `starts` are its offsets.
#[allow(clippy::type_complexity)]
fn load_whole<S: Stage>(
    plan: &Plan,
    snapshot: crate::snapshot::Snapshot,
    starts: Vec<u64>,
    cores: &mut [ShardCore<S>],
    mut restored: Restored,
    started: Instant,
) -> Result<Result<(Vec<u64>, Restored), (Restored, String)>, EngineError> {
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

/// A snapshot written by an earlier definition of this pipeline: refuses the run, or
/// under `rebuild` is removed (the line says so).
fn refuse_or_remove(
    path: &Path,
    epoch: u64,
    changes: &[crate::snapshot::FingerprintChange],
    rebuild: bool,
) -> Result<String, EngineError> {
    if !rebuild {
        return Err(EngineError::ForeignSnapshot {
            path: path.to_path_buf(),
            epoch,
            changes: changes.iter().map(ToString::to_string).collect(),
        });
    }
    let done = match std::fs::remove_dir_all(path) {
        Ok(()) => "removed to rebuild the state".to_string(),
        Err(e) => format!("could not be removed ({e}); it is ignored"),
    };
    Ok(format!(
        "{}: written by a different pipeline ({}): {done}",
        path.display(),
        changes
            .iter()
            .map(|c| c.component.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// Fingerprint changes that make a snapshot unusable without refusing the run: it
/// belongs to another pipeline, or was written in another assignment mode.
fn only_skips(changes: &[crate::snapshot::FingerprintChange]) -> bool {
    changes
        .iter()
        .any(|c| c.component == PIPELINE_NAME || c.component == ENTRY_LAYOUT)
}

/// A complete snapshot of this pipeline definition under a shared directory, as its
/// manifest describes it (its shard files are checked when it is opened).
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Its `snapshot-<epoch>` directory.
    pub dir: PathBuf,
    /// Its epoch (numbered by the instance that wrote it).
    pub epoch: u64,
    /// Written by this instance.
    pub own: bool,
    /// The input offsets its state covers.
    pub inputs: Vec<InputOffset>,
}

/// For each input (`names` order), which candidate to restore it from and the offset
/// to read on from: of those that cover it, the one with the highest offset not beyond
/// `replay_to` (ties: this instance's own, then the newer epoch). `None`: no candidate
/// covers the input; it is replayed from offset 0. Pure.
///
/// A partition's keys get their state from that partition's records alone (each key
/// is kept by one partition), so partitions may come from different snapshots, written
/// by different instances at different times.
pub fn choose_per_input(
    cands: &[Candidate],
    names: &[(String, u32)],
    replay_to: &[u64],
) -> Vec<Option<(usize, u64)>> {
    names
        .iter()
        .zip(replay_to)
        .map(|((source, partition), &limit)| {
            let mut best: Option<(usize, u64)> = None;
            for (ci, c) in cands.iter().enumerate() {
                let Some(o) = c
                    .inputs
                    .iter()
                    .find(|o| &o.source == source && o.partition == *partition)
                else {
                    continue;
                };
                if o.next_offset > limit {
                    continue;
                }
                let better = match best {
                    None => true,
                    Some((bi, bo)) => {
                        let b = &cands[bi];
                        (o.next_offset, c.own, c.epoch) > (bo, b.own, b.epoch)
                    }
                };
                if better {
                    best = Some((ci, o.next_offset));
                }
            }
            best
        })
        .collect()
}

/// The complete snapshots of this pipeline under the shared `root`'s `instance-*`
/// directories. Per instance directory, newest first, the snapshots before its first
/// usable one that cannot be used are reported, and one of an earlier definition of the
/// pipeline refuses the run as in [`restore`] (removed under `rebuild`).
fn candidates(
    plan: &Plan,
    root: &Path,
    rebuild: bool,
    restored: &mut Restored,
) -> Result<Vec<Candidate>, EngineError> {
    let rd = match std::fs::read_dir(root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            restored
                .skipped
                .push(format!("{}: cannot be listed: {e}", root.display()));
            return Ok(Vec::new());
        }
    };
    let mut instances: Vec<PathBuf> = rd
        .flatten()
        .filter(|d| {
            d.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(crate::config::INSTANCE_DIR_PREFIX))
                && d.path().is_dir()
        })
        .map(|d| d.path())
        .collect();
    instances.sort();
    let mut out = Vec::new();
    for inst in instances {
        let own = inst == plan.dir;
        let dirs = match crate::snapshot::list(&inst) {
            Ok(d) => d,
            Err(e) => {
                restored.skipped.push(e.to_string());
                continue;
            }
        };
        let mut found = false;
        for d in dirs {
            let path = d.path.display();
            if !d.complete {
                if !found {
                    restored.skipped.push(format!(
                        "{path}: incomplete (no manifest: writing it did not finish)"
                    ));
                }
                continue;
            }
            let m = match crate::snapshot::Manifest::read(
                &d.path.join(crate::snapshot::format::MANIFEST_FILE),
            ) {
                Ok(m) => m,
                Err(e) => {
                    if !found {
                        restored.skipped.push(format!("{path}: {e}"));
                    }
                    continue;
                }
            };
            let changes = plan.fingerprint.changes_from(&m.fingerprint);
            if !changes.is_empty() {
                if found {
                    continue;
                }
                let shown = changes
                    .iter()
                    .map(|c| c.component.as_str())
                    .collect::<Vec<_>>()
                    .join(", ");
                if only_skips(&changes) {
                    restored
                        .skipped
                        .push(format!("{path}: written by another pipeline ({shown})"));
                    continue;
                }
                restored
                    .skipped
                    .push(refuse_or_remove(&d.path, d.epoch, &changes, rebuild)?);
                continue;
            }
            found = true;
            out.push(Candidate {
                dir: d.path.clone(),
                epoch: m.epoch,
                own,
                inputs: m.inputs,
            });
        }
    }
    Ok(out)
}

/// `'commands' partitions 0, 1, 2: snapshot of epoch 12 by instance 'a' (<dir>)`, for the summary.
fn from_line(names: &InputNames, inputs: &[usize], c: &Candidate) -> String {
    let source = inputs.first().map_or("", |&i| names[i].0.as_str());
    let list = inputs
        .iter()
        .map(|&i| names[i].1.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let whose = if c.own {
        "this instance".to_string()
    } else {
        c.dir
            .parent()
            .and_then(|d| d.file_name())
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix(crate::config::INSTANCE_DIR_PREFIX))
            .map_or_else(|| "another instance".into(), |n| format!("instance '{n}'"))
    };
    format!(
        "'{source}' partition{} {list}: snapshot of epoch {} by {whose} ({})",
        if inputs.len() == 1 { "" } else { "s" },
        c.epoch,
        c.dir.display()
    )
}

/// [`restore`] with `[kafka] assignment = "group"`: each of this run's partitions from
/// the best snapshot any instance wrote of it under the shared directory
/// ([`choose_per_input`]), loading from each snapshot only the keys (and held records)
/// of the partitions it was chosen for. One snapshot of exactly this run's partitions
/// (a restart without a rebalance) restores as without a shared directory (lazily when
/// it can). A snapshot that fails to open is skipped and the choice made again.
#[allow(clippy::type_complexity)]
fn restore_shared<S: Stage>(
    plan: &Plan,
    root: &Path,
    names: &InputNames,
    replay_to: &[u64],
    cores: &mut [ShardCore<S>],
    rebuild: bool,
) -> Result<Result<(Vec<u64>, Restored), (Restored, String)>, EngineError> {
    let started = Instant::now();
    let mut restored = Restored::default();
    let mut cands = candidates(plan, root, rebuild, &mut restored)?;
    loop {
        let choice = choose_per_input(&cands, names, replay_to);
        let mut used: Vec<usize> = choice.iter().flatten().map(|&(ci, _)| ci).collect();
        used.sort_unstable();
        used.dedup();
        if used.is_empty() {
            restored.took = started.elapsed();
            return Ok(Ok((vec![0; names.len()], restored)));
        }
        let starts: Vec<u64> = choice.iter().map(|c| c.map_or(0, |(_, o)| o)).collect();
        // One snapshot taken with exactly these partitions, all chosen from it.
        if used.len() == 1
            && choice.iter().all(Option::is_some)
            && cands[used[0]].inputs.len() == names.len()
        {
            let ci = used[0];
            match crate::snapshot::Snapshot::open(&cands[ci].dir, &plan.fingerprint) {
                Ok(snap) => {
                    let all: Vec<usize> = (0..names.len()).collect();
                    restored.partitions.push(from_line(names, &all, &cands[ci]));
                    return load_whole(plan, snap, starts, cores, restored, started);
                }
                Err(e) => {
                    restored.skipped.push(e.to_string());
                    cands.remove(ci);
                    continue;
                }
            }
        }
        let mut opened = Vec::with_capacity(used.len());
        let mut failed = None;
        for &ci in &used {
            match crate::snapshot::Snapshot::open(&cands[ci].dir, &plan.fingerprint) {
                Ok(snap) => opened.push((ci, snap)),
                Err(e) => {
                    failed = Some((ci, e));
                    break;
                }
            }
        }
        if let Some((ci, e)) = failed {
            restored.skipped.push(e.to_string());
            cands.remove(ci);
            continue;
        }
        let n = cores.len() as u32;
        let mut epoch = 0;
        for (ci, snap) in &opened {
            let mine: Vec<usize> = (0..names.len())
                .filter(|&i| choice[i].is_some_and(|(c, _)| c == *ci))
                .collect();
            // One source in group mode: an input is named by its partition.
            let partitions: Vec<u32> = mine.iter().map(|&i| names[i].1).collect();
            restored
                .partitions
                .push(from_line(names, &mine, &cands[*ci]));
            epoch = epoch.max(snap.epoch());
            let fail = |restored: Restored, e: String| {
                Ok(Err((restored, format!("{}: {e}", snap.dir().display()))))
            };
            for sh in snap.shards() {
                for e in sh.iter() {
                    let Some(home) = entry_home(&e) else {
                        return fail(
                            restored,
                            format!("{}: an entry without its partition", sh.path().display()),
                        );
                    };
                    // Keys of other partitions, and keys of none (an insert-only
                    // projection's lanes, which keep nothing), stay behind.
                    if !partitions.contains(&home) {
                        continue;
                    }
                    let hash = stable_hash(e.key);
                    let core = &mut cores[bucket(hash, SHARD_SALT, n) as usize];
                    if let Err(err) = core.restore_entry(hash, e) {
                        return fail(restored, err);
                    }
                    restored.keys += 1;
                }
            }
            for sh in snap.shards() {
                for x in sh.extras() {
                    if !mine
                        .iter()
                        .any(|&i| names[i].0 == x.source && names[i].1 == x.partition)
                    {
                        continue;
                    }
                    let core = &mut cores[bucket(stable_hash(x.key), SHARD_SALT, n) as usize];
                    if let Err(err) = core.restore_held(&x) {
                        return fail(restored, err);
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
        return Ok(Ok((starts, restored)));
    }
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
    // --- restore with a shared directory ([kafka] assignment = "group") -------------

    use crate::batch::{EventBatch, OutBuf};
    use crate::router::Router;
    use crate::shard::ShardSettings;
    use crate::stage::Fold;
    use crate::stats::{DeadReason, Outcomes};

    fn group_pipeline(dir: &std::path::Path, instance: &str) -> Pipeline {
        let src = format!(
            "[pipeline]\nname='t'\nshards=1\n[kafka]\nbrokers=['127.0.0.1:9']\nassignment='group'\ninstance='{instance}'\n\
             [[sources]]\nname='s'\ntype='kafka'\ntopic='in'\n[key]\nfield='k'\nsequence='seq'\n\
             [view]\ntopic='v'\n[view.fields]\nsum={{op='sum',field='n'}}\n\
             [snapshot]\nevery_epochs=1\ndir='{}'\n",
            dir.display()
        );
        Pipeline::parse(&src, std::path::Path::new(".")).unwrap()
    }

    /// One instance's shard, fed through the router like the engine does.
    struct Instance {
        p: Pipeline,
        plan: Arc<Plan>,
        names: InputNames,
        router: Router,
        core: ShardCore<Fold>,
        o: Outcomes,
    }

    impl Instance {
        fn new(dir: &std::path::Path, id: &str, partitions: &[u32]) -> Instance {
            let p = group_pipeline(dir, id);
            let names: InputNames = Arc::new(partitions.iter().map(|&q| ("s".into(), q)).collect());
            let stage = Arc::new(Fold::new(&p.view.fields, &p.referenced_fields()));
            Instance {
                plan: Plan::new(&p).unwrap(),
                router: Router::new(&p, names.clone()),
                core: ShardCore::new(stage, ShardSettings::new(&p), names.clone()),
                names,
                p,
                o: Outcomes::default(),
            }
        }

        /// Feeds `(partition, offset, key, seq)` records of amount 1.
        fn feed(&mut self, recs: &[(u32, u64, &str, u64)]) -> Outcomes {
            let mut batches = vec![EventBatch::default()];
            let mut dead = OutBuf::default();
            for &(partition, offset, k, seq) in recs {
                let input = self.names.iter().position(|n| n.1 == partition).unwrap() as u32;
                let rec = format!(r#"{{"k":"{k}","seq":{seq},"n":1}}"#);
                self.o.read += 1;
                self.router.route(
                    input,
                    offset,
                    0,
                    rec.as_bytes(),
                    &[],
                    &mut batches,
                    &mut dead,
                    true,
                    &mut self.o,
                );
            }
            self.core.process(&batches[0])
        }

        /// Writes a complete snapshot of `epoch` at `positions` (`names` order).
        fn snapshot(&mut self, epoch: u64, positions: &[u64]) {
            let (w, mut pending) = start(&self.plan, epoch, 1, &self.names, positions).unwrap();
            self.core.begin_snapshot(w.shard(0).unwrap());
            let job = self.core.snapshot_step(usize::MAX).unwrap();
            drop(w);
            pending.shard_done(job.finish());
            assert!(pending.try_finish(epoch));
        }

        fn restore(&mut self, replay_to: &[u64]) -> (Vec<u64>, Restored) {
            restore(
                &self.plan,
                u64::MAX,
                &self.names,
                replay_to,
                std::slice::from_mut(&mut self.core),
                false,
            )
            .unwrap()
            .unwrap()
        }
    }

    #[test]
    fn a_taken_over_partition_restores_from_its_last_owners_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        // Instance a owned partitions 0..=2: k0 on 0, k1 on 1, k2 on 2 (seq 3 held: 2 is missing).
        let mut a = Instance::new(dir.path(), "a", &[0, 1, 2]);
        a.feed(&[
            (0, 0, "k0", 1),
            (0, 1, "k0", 2),
            (1, 0, "k1", 1),
            (1, 1, "k1", 2),
            (2, 0, "k2", 1),
            (2, 1, "k2", 3),
        ]);
        assert_eq!(a.core.held(), 1);
        a.snapshot(5, &[2, 2, 2]);
        // Instance b owned partition 3.
        let mut b = Instance::new(dir.path(), "b", &[3]);
        b.feed(&[(3, 0, "k3", 1), (3, 1, "k3", 2)]);
        b.snapshot(2, &[2]);
        assert!(
            dir.path()
                .join("instance-a")
                .join(crate::snapshot::format::snapshot_dir_name(5))
                .is_dir()
        );

        // b starts again with partitions 1 (a's) and 3 (its own).
        let mut b = Instance::new(dir.path(), "b", &[1, 3]);
        let (starts, r) = b.restore(&[2, 2]);
        assert_eq!(starts, vec![2, 2]);
        assert_eq!((r.keys, r.held), (2, 0), "k1 and k3 only: {r:?}");
        assert_eq!(r.partitions.len(), 2, "{:?}", r.partitions);
        assert!(
            r.partitions
                .iter()
                .any(|l| l.contains("partition 1: snapshot of epoch 5 by instance 'a' (")),
            "{:?}",
            r.partitions
        );
        assert!(
            r.partitions
                .iter()
                .any(|l| l.contains("partition 3: snapshot of epoch 2 by this instance")),
            "{:?}",
            r.partitions
        );
        // Both keys go on where they were: the next numbers apply at once.
        let o = b.feed(&[(1, 2, "k1", 3), (3, 2, "k3", 3)]);
        assert_eq!((o.processed, o.held_delta), (2, 0));
        // A record of k1 from partition 3 is refused: k1 is kept by partition 1.
        let o = b.feed(&[(3, 3, "k1", 4)]);
        assert_eq!(o.dead[DeadReason::PartitionMismatch as usize], 1);

        // c takes partition 2: k2 and its held record, nothing else.
        let mut c = Instance::new(dir.path(), "c", &[2]);
        let (starts, r) = c.restore(&[2]);
        assert_eq!(starts, vec![2]);
        assert_eq!((r.keys, r.held), (1, 1));
        assert_eq!(c.core.held(), 1);
        let o = c.feed(&[(2, 2, "k2", 2)]);
        assert_eq!(
            (o.processed, o.held_delta),
            (2, -1),
            "seq 2 fills the gap and releases 3"
        );

        // A snapshot beyond the committed offsets is not used: that partition replays.
        let mut d = Instance::new(dir.path(), "d", &[0, 3]);
        let (starts, r) = d.restore(&[1, 2]);
        assert_eq!(starts, vec![0, 2]);
        assert_eq!(r.keys, 1, "k3 only");
        assert_eq!(
            d.p.snapshot_write_dir().unwrap(),
            dir.path().join("instance-d")
        );
    }

    #[test]
    fn the_choice_per_partition_takes_the_furthest_usable_offset() {
        let cand = |epoch, own, offs: &[(u32, u64)]| Candidate {
            dir: format!("/s/{epoch}").into(),
            epoch,
            own,
            inputs: offs
                .iter()
                .map(|&(partition, next_offset)| InputOffset {
                    source: "s".into(),
                    partition,
                    next_offset,
                })
                .collect(),
        };
        let cands = vec![
            cand(9, false, &[(0, 10), (1, 50)]),
            cand(3, true, &[(0, 10), (2, 7)]),
            cand(4, false, &[(1, 40)]),
        ];
        let names: Vec<(String, u32)> = (0..4).map(|q| ("s".to_string(), q)).collect();
        assert_eq!(
            choose_per_input(&cands, &names, &[10, 45, 100, 5]),
            vec![
                Some((1, 10)), // a tie on the offset: this instance's own
                Some((2, 40)), // 50 is beyond the committed 45
                Some((1, 7)),
                None,
            ]
        );
    }
}

#[cfg(test)]
mod insert_only_in_group_mode {
    use std::sync::Arc;

    use crate::batch::{EventBatch, OutBuf};
    use crate::config::Pipeline;
    use crate::router::Router;
    use crate::shard::{InputNames, ShardCore, ShardSettings};
    use crate::stage::Projections;
    use crate::stats::{DeadReason, Outcomes};

    #[test]
    fn lanes_belong_to_no_partition_and_kept_rows_to_one() {
        let src = "[pipeline]\nname='t'\nshards=1\n[kafka]\nbrokers=['127.0.0.1:9']\nassignment='group'\n\
             [[sources]]\nname='s'\ntype='kafka'\ntopic='in'\n\
             [[projections]]\nname='history'\ninsert_only=true\nkey='event.id'\nfields={n='0'}\n\
             [[projections.on]]\nset={n='event.n'}\n\
             [[projections]]\nname='totals'\nkey='event.account'\nfields={n='0'}\n\
             [[projections.on]]\nset={n='row.n + event.n'}\n";
        let p = Pipeline::parse(src, std::path::Path::new(".")).unwrap();
        let names: InputNames = Arc::new(vec![("s".into(), 0), ("s".into(), 1)]);
        let stage = Arc::new(
            Projections::new(p.projections.as_ref().unwrap(), &p.referenced_fields()).unwrap(),
        );
        let mut router = Router::new(&p, names.clone());
        let mut core = ShardCore::new(stage, ShardSettings::new(&p), names);
        let mut batches = vec![EventBatch::default()];
        let mut dead = OutBuf::default();
        let mut o = Outcomes::default();
        // Account a on partition 0, account b on partition 1, then a on partition 1.
        for (input, offset, id, account) in
            [(0, 0, "e1", "a"), (1, 0, "e2", "b"), (1, 1, "e3", "a")]
        {
            let rec = format!(r#"{{"type":"T","id":"{id}","account":"{account}","n":1}}"#);
            router.route(
                input,
                offset,
                0,
                rec.as_bytes(),
                &[],
                &mut batches,
                &mut dead,
                true,
                &mut o,
            );
        }
        let o = core.process(&batches[0]);
        // The history's deliveries share one lane on this shard and are never refused;
        // the totals row of `a`, kept by partition 0, refuses e3.
        assert_eq!(o.delivery_errors, 1, "{o:?}");
        let part = core.barrier(1, None);
        let dead: Vec<serde_json::Value> = part
            .dead
            .iter()
            .map(|(_, _, v)| serde_json::from_slice(v).unwrap())
            .collect();
        assert_eq!(dead.len(), 1, "{dead:?}");
        assert_eq!(dead[0]["reason"], DeadReason::PartitionMismatch.name());
        assert_eq!(dead[0]["key"], "a");
    }
}
