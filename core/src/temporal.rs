//! Temporal queries: the state of one key as of a past point of a pipeline's inputs
//! (`onceflow state PIPELINE --key K --at POINT`).
//!
//! The answer is rebuilt, never stored: take the newest usable snapshot whose input
//! offsets are all at or before the point (committed, of this pipeline's fingerprint),
//! load only the key's entry from it (a lookup in one mapped shard file), then read the
//! inputs from the snapshot's offsets up to the point, decoding and routing every record
//! as the engine does but processing only the records of that key, with outputs off.
//! Without a usable snapshot the inputs are read from offset 0. The replay never goes
//! past the last commit, and reads the inputs in the same order as the engine's own
//! replay after a restart.
//!
//! Read only: nothing is written to the state log, the inputs or the snapshots, and
//! no lock is taken, so a query may run while the pipeline runs on the same state.
//!
//! Which key: `table` names a read model as the read API does
//! ([`crate::query::ReadHandle::get`]): the view topic of a fold or an aggregate, or a
//! projection's name. Without it, the pipeline's only read model, or in a pipeline with
//! an aggregate and projections the aggregate's state (the write side). A projection of
//! such a pipeline (the read side) is fed by the events topic the aggregate commits: its
//! offsets and append times are then those of that topic.
//!
//! Limits: a key's records spread over several partitions are applied in the order of
//! the engine's replay, which may differ from the order of the run that first processed
//! them (as it may after any restart); a record the run dead-lettered because its
//! shard's reorder buffer was full of *other* keys' records is held here instead.

mod point;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

pub use point::{Point, Position, format_ms};

use crate::batch::{EventBatch, OutBuf};
use crate::config::Pipeline;
use crate::hash::{PARTITION_SALT, SHARD_SALT, bucket, stable_hash};
use crate::log::{Cursor, LogError, LogReader, RecordBuf, read_commits};
use crate::query::request::{Job, ShardQuery};
use crate::router::Router;
use crate::shard::{InputNames, ShardCore, ShardSettings};
use crate::snapshot::format::MANIFEST_FILE;
use crate::snapshot::{Manifest, ShardSnapshot, SnapshotError};
use crate::stage::{Aggregate, Fold, Projections, Stage};
use crate::stats::Outcomes;

/// Why a temporal query has no answer.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum TemporalError {
    /// The question does not fit the pipeline: a bad `--at`, a point beyond the last
    /// commit, an unknown table, an empty key.
    #[error("{0}")]
    BadQuery(String),
    /// The pipeline has committed nothing yet.
    #[error("{0}")]
    NothingCommitted(String),
    /// The key has no state at that point.
    #[error("no state for key '{key}' in {table} as of {at}: {why}")]
    NoState {
        /// The key asked for.
        key: String,
        /// Its read model.
        table: String,
        /// The point, described.
        at: String,
        /// Why there is none.
        why: String,
    },
    /// The state, the inputs or the pipeline do not go together (a source missing, an
    /// input log shorter than what was committed, a stage that cannot be built).
    #[error("{0}")]
    Incompatible(String),
    /// Reading a log failed.
    #[error(transparent)]
    Log(#[from] LogError),
}

impl TemporalError {
    /// Whether the question itself is wrong (exit status 2 of the CLI), as opposed to
    /// a question that has no answer or could not be answered.
    pub fn is_bad_query(&self) -> bool {
        matches!(self, TemporalError::BadQuery(_))
    }
}

/// The snapshot a query started from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsedSnapshot {
    /// Its epoch.
    pub epoch: u64,
    /// Its directory.
    pub dir: PathBuf,
    /// Whether the key had an entry in it.
    pub had_key: bool,
}

/// How far one input was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputPosition {
    /// Source name.
    pub source: String,
    /// Partition.
    pub partition: u32,
    /// Where the replay started (the snapshot's offset, or 0).
    pub from: u64,
    /// Where it stopped: the point's position in this partition (records before it
    /// are in the state).
    pub reached: u64,
    /// The last commit's offset.
    pub committed: u64,
}

/// The answer of a temporal query, with what it was made from.
#[derive(Debug, Clone)]
pub struct KeyState {
    /// The pipeline (or side) that holds the key.
    pub pipeline: String,
    /// The read model.
    pub table: String,
    /// The key.
    pub key: String,
    /// The point asked for.
    pub point: Point,
    /// The point, described (for messages).
    pub at: String,
    /// The key's row as the engine writes it: `{"key":K,"version":V,<fields>}`.
    pub state: serde_json::Value,
    /// The last commit's epoch.
    pub committed_epoch: u64,
    /// The snapshot the replay started from; `None`: from offset 0.
    pub snapshot: Option<UsedSnapshot>,
    /// Snapshots that could not be used (damaged, of another pipeline version), and
    /// why. Snapshots past the point or not committed are passed over silently.
    pub skipped: Vec<String>,
    /// Input records read and routed after the snapshot.
    pub replayed: u64,
    /// Of those, records (or parts or deliveries) of the key, processed.
    pub key_records: u64,
    /// What became of them.
    pub outcomes: Outcomes,
    /// Records of the key held at the point, waiting for a sequence gap to close (not in
    /// the state).
    pub held: u64,
    /// The position reached in every input.
    pub positions: Vec<InputPosition>,
    /// Things worth knowing about the answer.
    pub notes: Vec<String>,
}

/// The state of `key` in read model `table` (see the module docs) as of `at`.
pub fn state_at(
    p: &Pipeline,
    table: Option<&str>,
    key: &str,
    at: &Point,
) -> Result<KeyState, TemporalError> {
    let Some((write, read)) = p.sides() else {
        return state_of_stage(p, table, key, at);
    };
    let projections: Vec<&str> = read
        .projections
        .iter()
        .flat_map(|ps| ps.list.iter().map(|x| x.name.as_str()))
        .collect();
    match table {
        None => state_of_stage(&write, None, key, at),
        Some(t) if t == write.view.topic => state_of_stage(&write, None, key, at),
        Some(t) if projections.contains(&t) => state_of_stage(&read, Some(t), key, at),
        Some(t) => Err(TemporalError::BadQuery(format!(
            "no read model named '{t}'; pipeline '{}' has: {} (the aggregate's state), {}",
            p.name,
            write.view.topic,
            projections.join(", ")
        ))),
    }
}

/// A one-stage pipeline with the stage it declares (as `engine::run` builds it).
fn state_of_stage(
    p: &Pipeline,
    table: Option<&str>,
    key: &str,
    at: &Point,
) -> Result<KeyState, TemporalError> {
    let slots = p.referenced_fields();
    if let Some(ps) = &p.projections {
        let stage = Projections::new(ps, &slots).map_err(TemporalError::Incompatible)?;
        return state_at_with_stage(p, Arc::new(stage), table, key, at);
    }
    match &p.aggregate {
        Some(a) => {
            let stage = Aggregate::new(a, &slots).map_err(TemporalError::Incompatible)?;
            state_at_with_stage(p, Arc::new(stage), table, key, at)
        }
        None => state_at_with_stage(
            p,
            Arc::new(Fold::new(&p.view.fields, &slots)),
            table,
            key,
            at,
        ),
    }
}

/// [`state_at`] for a pipeline run with any [`Stage`] (as with
/// [`crate::engine::run_with_stage`]); `p` must be one stage (not a pipeline with both
/// an aggregate and projections: pass one of [`Pipeline::sides`]).
pub fn state_at_with_stage<S: Stage>(
    p: &Pipeline,
    stage: Arc<S>,
    table: Option<&str>,
    key: &str,
    at: &Point,
) -> Result<KeyState, TemporalError> {
    if p.sides().is_some() {
        return Err(TemporalError::Incompatible(
            "a pipeline with an aggregate and projections has two stages: use temporal::state_at, or pass one of Pipeline::sides()".into(),
        ));
    }
    if key.is_empty() {
        return Err(TemporalError::BadQuery("the key is empty".into()));
    }
    let tables = stage.tables(&p.view.topic);
    let names = || {
        tables
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let spec = match table {
        Some(t) => tables.iter().find(|x| x.name == t).ok_or_else(|| {
            TemporalError::BadQuery(format!(
                "no read model named '{t}'; pipeline '{}' has: {}",
                p.name,
                names()
            ))
        })?,
        None if tables.len() == 1 => &tables[0],
        None => {
            return Err(TemporalError::BadQuery(format!(
                "pipeline '{}' has {} read models ({}): name one with --table",
                p.name,
                tables.len(),
                names()
            )));
        }
    };
    if !spec.kept {
        // An insert-only projection: no state to rebuild. Its rows are in its topic.
        let topic = p
            .projections
            .as_ref()
            .and_then(|ps| ps.list.iter().find(|x| x.name == spec.name))
            .map_or(spec.name.as_str(), |x| x.topic.as_str());
        return Err(TemporalError::BadQuery(format!(
            "projection '{}' is insert_only: its rows are written to its topic and not kept in state, so there is no state to rebuild; read the row from the topic: onceflow log read {} --topic {topic} --compact --where \"row.key == '{}'\"",
            spec.name,
            p.state_dir.display(),
            key.replace('\'', "\\'")
        )));
    }
    let mut stored = spec.prefix.clone();
    stored.extend_from_slice(key.as_bytes());

    // What is committed, and the inputs, as the engine would open them.
    let commits = read_commits(&p.state_dir)?.filter(|c| c.last_marker.is_some());
    let Some(commits) = commits else {
        return Err(TemporalError::NothingCommitted(format!(
            "pipeline '{}' has committed nothing yet (state log {}): run it first",
            p.name,
            p.state_dir.display()
        )));
    };
    let mut readers = Vec::new();
    let mut inputs = Vec::new();
    for (si, s) in p.sources.iter().enumerate() {
        let reader = match LogReader::open(&s.path, &s.topic) {
            Ok(r) => r,
            Err(LogError::NoSuchTopic { .. } | LogError::NotALog { .. }) => {
                return Err(TemporalError::Incompatible(format!(
                    "source '{}': no topic '{}' in the log at {}",
                    s.name,
                    s.topic,
                    s.path.display()
                )));
            }
            Err(e) => return Err(e.into()),
        };
        for part in 0..reader.partitions() {
            let committed = commits.committed_input(&s.name, part);
            let end = reader.committed_end(part);
            if committed > end {
                return Err(TemporalError::Incompatible(format!(
                    "source '{}' partition {part}: the state log says offsets up to {committed} were consumed, but the log at {} ends at {end}; the input log was replaced or truncated",
                    s.name,
                    s.path.display()
                )));
            }
            inputs.push(Input {
                source: si,
                partition: part,
                committed,
                limit: committed,
                from: 0,
            });
        }
        readers.push(reader);
    }
    let names: InputNames = Arc::new(
        inputs
            .iter()
            .map(|i| (p.sources[i.source].name.clone(), i.partition))
            .collect(),
    );

    let cut = resolve(p, &readers, &mut inputs, key, at)?;
    let at_text = describe(p, &inputs, at, &cut, commits.epoch());

    // The key's state at the newest usable snapshot, else nothing.
    let settings = ShardSettings::new(p);
    let hash = stable_hash(&stored);
    let new_core = || ShardCore::new(stage.clone(), settings.clone(), names.clone());
    let mut core = new_core();
    let mut skipped = Vec::new();
    let snapshot = match &p.snapshot {
        Some(cfg) => restore(
            p,
            &cfg.dir,
            commits.epoch(),
            &readers,
            &mut inputs,
            &cut,
            &stored,
            hash,
            &mut core,
            &new_core,
            &mut skipped,
        )?,
        None => None,
    };

    // Replay the key's records from there up to the point.
    let mut router = Router::new(p, names.clone());
    if let Some(r) = stage.row_router() {
        router = router.with_row_router(r);
    }
    let shard = bucket(hash, SHARD_SALT, p.shards as u32) as usize;
    let mut replay = Replay {
        batches: (0..p.shards).map(|_| EventBatch::default()).collect(),
        one: EventBatch::default(),
        dead: OutBuf::default(),
        routed: Outcomes::default(),
        outcomes: Outcomes::default(),
        shard,
        slots: settings.slots,
        key: &stored,
        key_hash: hash,
        key_records: 0,
        key_inputs: BTreeSet::new(),
    };
    let replayed = replay.run(&mut core, &mut router, &readers, &mut inputs, &cut)?;

    let mut notes = Vec::new();
    if let Cut::Offsets { keyed: Some(keyed) } = cut {
        let others: Vec<String> = replay
            .key_inputs
            .iter()
            .filter(|&&i| i as usize != keyed)
            .map(|&i| inputs[i as usize].partition.to_string())
            .collect();
        if !others.is_empty() {
            notes.push(format!(
                "records of this key are also in partition{} {} of source '{}', read up to the last commit there: the input is not partitioned by this key; give every partition's offset with --at PARTITION:OFFSET,...",
                if others.len() == 1 { "" } else { "s" },
                others.join(", "),
                p.sources[inputs[keyed].source].name,
            ));
        }
    }

    let no_state = |why: &str| TemporalError::NoState {
        key: key.to_string(),
        table: spec.name.clone(),
        at: at_text.clone(),
        why: why.to_string(),
    };
    let row = match row_of(&core, &stored) {
        Some(json) => serde_json::from_slice(&json).map_err(|e| {
            TemporalError::Incompatible(format!("internal error: the row is not JSON: {e}"))
        })?,
        None => {
            return Err(match core.render_key(&stored).as_deref() {
                None => no_state("no record of the key up to that point"),
                Some("null") => no_state("its row was deleted"),
                Some(_) if core.held() > 0 => {
                    no_state("its records up to that point wait for a sequence gap to close")
                }
                Some(_) => no_state(
                    "none of its records up to that point changed it (rejected, dead-lettered or duplicates)",
                ),
            });
        }
    };
    Ok(KeyState {
        pipeline: p.name.clone(),
        table: spec.name.clone(),
        key: key.to_string(),
        point: at.clone(),
        at: at_text,
        state: row,
        committed_epoch: commits.epoch(),
        snapshot,
        skipped,
        replayed,
        key_records: replay.key_records,
        outcomes: replay.outcomes,
        held: core.held() as u64,
        positions: inputs
            .iter()
            .map(|i| InputPosition {
                source: p.sources[i.source].name.clone(),
                partition: i.partition,
                from: i.from,
                reached: i.limit,
                committed: i.committed,
            })
            .collect(),
        notes,
    })
}

/// One input partition of the query.
struct Input {
    source: usize,
    partition: u32,
    /// The last commit's offset.
    committed: u64,
    /// Read up to here: the point's offset (an offset point), else the last commit; once
    /// replayed, where the replay stopped.
    limit: u64,
    /// Where the replay starts.
    from: u64,
}

/// How the point cuts the inputs.
enum Cut {
    /// Each input up to its `limit`; `keyed`: the input an offset point
    /// ([`Point::Offset`]) applies to.
    Offsets { keyed: Option<usize> },
    /// Each input up to its first record appended after this time (ns), at most to its
    /// `limit` (the last commit).
    Time(i64),
}

/// Checks the point against the inputs and the last commit; sets each input's limit.
fn resolve(
    p: &Pipeline,
    readers: &[LogReader],
    inputs: &mut [Input],
    key: &str,
    at: &Point,
) -> Result<Cut, TemporalError> {
    let bad = |s: String| Err(TemporalError::BadQuery(s));
    let beyond = |inp: &Input, offset: u64| {
        TemporalError::BadQuery(format!(
            "--at {offset} in source '{}' partition {} is beyond the last commit, which consumed it up to offset {}",
            p.sources[inp.source].name, inp.partition, inp.committed
        ))
    };
    match at {
        Point::LastCommit => Ok(Cut::Offsets { keyed: None }),
        Point::Offset(n) => {
            if p.sources.len() > 1 {
                return bad(format!(
                    "pipeline '{}' reads {} sources: give the position as SOURCE:PARTITION:OFFSET",
                    p.name,
                    p.sources.len()
                ));
            }
            let parts = readers[0].partitions();
            let partition = bucket(stable_hash(key.as_bytes()), PARTITION_SALT, parts);
            let keyed = inputs
                .iter()
                .position(|i| i.partition == partition)
                .expect("every partition is an input");
            let inp = &mut inputs[keyed];
            if *n > inp.committed {
                return Err(beyond(inp, *n));
            }
            inp.limit = *n;
            Ok(Cut::Offsets { keyed: Some(keyed) })
        }
        Point::Positions(ps) => {
            for pos in ps {
                let source = match &pos.source {
                    Some(s) => match p.sources.iter().position(|x| &x.name == s) {
                        Some(i) => i,
                        None => {
                            return bad(format!(
                                "--at: pipeline '{}' has no source '{s}'; its sources: {}",
                                p.name,
                                p.sources
                                    .iter()
                                    .map(|x| x.name.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ));
                        }
                    },
                    None if p.sources.len() == 1 => 0,
                    None => {
                        return bad(format!(
                            "--at {}:{}: pipeline '{}' reads {} sources: write SOURCE:PARTITION:OFFSET",
                            pos.partition,
                            pos.offset,
                            p.name,
                            p.sources.len()
                        ));
                    }
                };
                let Some(inp) = inputs
                    .iter_mut()
                    .find(|i| i.source == source && i.partition == pos.partition)
                else {
                    return bad(format!(
                        "--at: source '{}' has no partition {} (it has {})",
                        p.sources[source].name,
                        pos.partition,
                        readers[source].partitions()
                    ));
                };
                if pos.offset > inp.committed {
                    return Err(beyond(inp, pos.offset));
                }
                inp.limit = pos.offset;
            }
            Ok(Cut::Offsets { keyed: None })
        }
        Point::Time { ns, text } => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            if i128::from(*ns) > now as i128 {
                return bad(format!("--at {text} is in the future"));
            }
            // Records appended by then that the pipeline has not committed yet: the
            // state as of then is not known yet.
            let mut buf = RecordBuf::new();
            for inp in inputs.iter() {
                let reader = &readers[inp.source];
                if inp.committed >= reader.committed_end(inp.partition) {
                    continue;
                }
                if let Some(ms) = timestamp_at(reader, inp.partition, inp.committed, &mut buf)?
                    && appended_by(ms, *ns)
                {
                    return bad(format!(
                        "--at {text} is beyond the last commit: source '{}' partition {} has records appended by then that are not committed yet (committed up to offset {}, the next one appended at {})",
                        p.sources[inp.source].name,
                        inp.partition,
                        inp.committed,
                        format_ms(ms)
                    ));
                }
            }
            Ok(Cut::Time(*ns))
        }
    }
}

/// The point in words, with the positions it stands for.
fn describe(p: &Pipeline, inputs: &[Input], at: &Point, cut: &Cut, epoch: u64) -> String {
    let name = |i: &Input| &p.sources[i.source].name;
    match (at, cut) {
        (Point::LastCommit, _) => format!("the last commit (epoch {epoch})"),
        (Point::Offset(n), Cut::Offsets { keyed: Some(k) }) if inputs.len() > 1 => format!(
            "offset {n} of source '{}' partition {} (the key's partition; the others at the last commit)",
            name(&inputs[*k]),
            inputs[*k].partition
        ),
        (Point::Offset(n), Cut::Offsets { keyed: Some(k) }) => {
            format!("offset {n} of source '{}'", name(&inputs[*k]))
        }
        (Point::Offset(n), _) => format!("offset {n}"),
        (Point::Positions(_), _) => {
            let listed: Vec<String> = inputs
                .iter()
                .filter(|i| i.limit != i.committed)
                .map(|i| format!("{}:{}:{}", name(i), i.partition, i.limit))
                .collect();
            if listed.is_empty() {
                format!("{at} (the last commit)")
            } else {
                format!(
                    "{} (the other partitions at the last commit)",
                    listed.join(",")
                )
            }
        }
        (Point::Time { text, .. }, _) => format!("{text} (records appended by then)"),
    }
}

/// Whether a record appended at `ms` is included at time `ns`.
fn appended_by(ms: u64, ns: i64) -> bool {
    i128::from(ms) * 1_000_000 <= i128::from(ns)
}

/// The append time of the record at `offset` (below the committed end).
fn timestamp_at(
    reader: &LogReader,
    partition: u32,
    offset: u64,
    buf: &mut RecordBuf,
) -> Result<Option<u64>, LogError> {
    buf.clear();
    let mut c = reader.cursor(partition, offset)?;
    c.read(reader, 1, buf)?;
    Ok(buf.iter().next().map(|r| r.timestamp_ms))
}

/// Picks the newest usable snapshot for the point and loads the key from it into
/// `core` (the shard file the key hashes to, only). Sets each input's start.
#[allow(clippy::too_many_arguments)]
fn restore<S: Stage>(
    p: &Pipeline,
    root: &std::path::Path,
    committed_epoch: u64,
    readers: &[LogReader],
    inputs: &mut [Input],
    cut: &Cut,
    key: &[u8],
    hash: u64,
    core: &mut ShardCore<S>,
    new_core: &dyn Fn() -> ShardCore<S>,
    skipped: &mut Vec<String>,
) -> Result<Option<UsedSnapshot>, TemporalError> {
    let dirs = match crate::snapshot::list(root) {
        Ok(d) => d,
        Err(e) => {
            skipped.push(e.to_string());
            return Ok(None);
        }
    };
    let expected = crate::engine::fingerprint(p);
    let mut buf = RecordBuf::new();
    'dirs: for d in dirs {
        if !d.complete || d.epoch > committed_epoch {
            continue;
        }
        let mpath = d.path.join(MANIFEST_FILE);
        let manifest = match Manifest::read(&mpath) {
            Ok(m) => m,
            // Removed by the running pipeline's retention meanwhile: not a finding.
            Err(SnapshotError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                continue;
            }
            Err(e) => {
                skipped.push(format!("{}: {e}", d.path.display()));
                continue;
            }
        };
        if manifest.epoch != d.epoch {
            skipped.push(format!(
                "{}: the manifest is of epoch {}, the directory name says {}",
                d.path.display(),
                manifest.epoch,
                d.epoch
            ));
            continue;
        }
        let changes = expected.changes_from(&manifest.fingerprint);
        if !changes.is_empty() {
            let e = SnapshotError::ForeignPipeline {
                path: mpath,
                changes,
            };
            skipped.push(e.to_string());
            continue;
        }
        // Its offsets, which must all be at or before the point.
        let mut starts = Vec::with_capacity(inputs.len());
        for inp in inputs.iter() {
            let source = &p.sources[inp.source].name;
            let Some(o) = manifest
                .inputs
                .iter()
                .find(|o| &o.source == source && o.partition == inp.partition)
            else {
                skipped.push(format!(
                    "{}: has no offset for source '{source}' partition {}",
                    d.path.display(),
                    inp.partition
                ));
                continue 'dirs;
            };
            if o.next_offset > inp.committed {
                skipped.push(format!(
                    "{}: says source '{source}' partition {} was read up to {}, beyond the committed {}",
                    d.path.display(),
                    inp.partition,
                    o.next_offset,
                    inp.committed
                ));
                continue 'dirs;
            }
            let before = match cut {
                Cut::Offsets { .. } => o.next_offset <= inp.limit,
                Cut::Time(ns) => {
                    o.next_offset == 0
                        || timestamp_at(
                            &readers[inp.source],
                            inp.partition,
                            o.next_offset - 1,
                            &mut buf,
                        )?
                        .is_some_and(|ms| appended_by(ms, *ns))
                }
            };
            if !before {
                continue 'dirs;
            }
            starts.push(o.next_offset);
        }
        // The key's shard file: keys are in the file of the shard their hash picks
        // among the snapshot's shards.
        let n = manifest.shards.len() as u32;
        let info = &manifest.shards[bucket(hash, SHARD_SALT, n) as usize];
        let file = d.path.join(&info.file);
        let sh = match ShardSnapshot::open_listed(&file, info, &manifest) {
            Ok(s) => s,
            Err(SnapshotError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                continue;
            }
            Err(e) => {
                skipped.push(e.to_string());
                continue;
            }
        };
        let loaded = match sh.get_hashed(hash, key) {
            None => Ok(false),
            Some(e) => core.restore_entry(hash, e).and_then(|()| {
                for x in sh.extras().filter(|x| x.key == key) {
                    core.restore_held(&x)?;
                }
                core.finish_restore();
                Ok(true)
            }),
        };
        let had_key = match loaded {
            Ok(h) => h,
            Err(e) => {
                skipped.push(format!("{}: {e}", file.display()));
                *core = new_core();
                continue;
            }
        };
        for (inp, s) in inputs.iter_mut().zip(starts) {
            inp.from = s;
        }
        return Ok(Some(UsedSnapshot {
            epoch: d.epoch,
            dir: d.path,
            had_key,
        }));
    }
    Ok(None)
}

/// The replay of one key's records.
struct Replay<'k> {
    /// What the router fills, one batch per shard; only the key's shard's is looked at.
    batches: Vec<EventBatch>,
    /// A batch of one event of the key.
    one: EventBatch,
    dead: OutBuf,
    routed: Outcomes,
    /// Outcomes of the key's events.
    outcomes: Outcomes,
    shard: usize,
    slots: usize,
    key: &'k [u8],
    key_hash: u64,
    key_records: u64,
    /// Inputs the key's records came from.
    key_inputs: BTreeSet<u32>,
}

impl Replay<'_> {
    /// Reads every input from its start to the point, round-robin in the engine's
    /// replay passes; returns the records read. Each input's `limit` becomes where it
    /// stopped.
    fn run<S: Stage>(
        &mut self,
        core: &mut ShardCore<S>,
        router: &mut Router,
        readers: &[LogReader],
        inputs: &mut [Input],
        cut: &Cut,
    ) -> Result<u64, TemporalError> {
        let mut cursors: Vec<Cursor> = inputs
            .iter()
            .map(|i| readers[i.source].cursor(i.partition, i.from))
            .collect::<Result<_, _>>()?;
        let mut pos: Vec<u64> = inputs.iter().map(|i| i.from).collect();
        let mut done: Vec<bool> = inputs.iter().map(|i| i.from >= i.limit).collect();
        let mut buf = RecordBuf::new();
        let mut read = 0u64;
        while done.iter().any(|d| !d) {
            for (idx, inp) in inputs.iter().enumerate() {
                if done[idx] {
                    continue;
                }
                let left = inp.limit - pos[idx];
                buf.clear();
                let got = cursors[idx].read(
                    &readers[inp.source],
                    crate::engine::READ_CHUNK.min(left as usize),
                    &mut buf,
                )?;
                if got == 0 {
                    // Below the committed end there is always data; never loop on none.
                    done[idx] = true;
                    continue;
                }
                for rec in buf.iter() {
                    if let Cut::Time(ns) = cut
                        && !appended_by(rec.timestamp_ms, *ns)
                    {
                        done[idx] = true;
                        break;
                    }
                    pos[idx] = rec.offset + 1;
                    read += 1;
                    router.route(
                        idx as u32,
                        rec.offset,
                        rec.timestamp_ms,
                        rec.value,
                        rec.headers,
                        &mut self.batches,
                        &mut self.dead,
                        false,
                        &mut self.routed,
                    );
                    self.take(core);
                }
                if pos[idx] >= inp.limit {
                    done[idx] = true;
                }
            }
        }
        for (inp, p) in inputs.iter_mut().zip(pos) {
            inp.limit = p;
        }
        Ok(read)
    }

    /// Processes the key's events of the record just routed, in order; tells the shard
    /// of the other keys' events that went through it. Drops everything else.
    fn take<S: Stage>(&mut self, core: &mut ShardCore<S>) {
        let b = &mut self.batches[self.shard];
        for i in 0..b.events.len() {
            let ev = b.events[i];
            if ev.key_hash == self.key_hash && b.bytes(ev.key) == self.key {
                self.one.clear();
                self.one.replay = true;
                std::mem::swap(&mut self.one.arena, &mut b.arena);
                self.one.events.push(ev);
                self.one
                    .values
                    .extend_from_slice(&b.values[i * self.slots..(i + 1) * self.slots]);
                let o = core.process(&self.one);
                std::mem::swap(&mut self.one.arena, &mut b.arena);
                add(&mut self.outcomes, &o);
                self.key_records += 1;
                self.key_inputs.insert(ev.input);
            } else if core.held() > 0 {
                core.skipped_record(ev.input, ev.offset);
            }
        }
        for b in &mut self.batches {
            b.clear();
        }
        self.dead.data.clear();
        self.dead.recs.clear();
    }
}

fn add(into: &mut Outcomes, o: &Outcomes) {
    into.read += o.read;
    into.processed += o.processed;
    into.rejected += o.rejected;
    into.duplicates += o.duplicates;
    for (a, b) in into.dead.iter_mut().zip(o.dead.iter()) {
        *a += b;
    }
    into.held_delta += o.held_delta;
    into.delivery_errors += o.delivery_errors;
    into.split += o.split;
    into.split_parts += o.split_parts;
    into.part_errors += o.part_errors;
}

/// The key's row as the read API shows it: `None` if the key has no record applied or
/// is deleted.
fn row_of<S: Stage>(core: &ShardCore<S>, key: &[u8]) -> Option<Vec<u8>> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    core.answer(ShardQuery {
        epoch: 0,
        shard: 0,
        start: 0,
        job: Arc::new(Job::Get { key: key.to_vec() }),
        reply: tx,
    });
    rx.try_recv()
        .ok()
        .and_then(|a| a.result.ok())
        .and_then(|f| f.rows.into_iter().next())
        .map(|(_, json)| json)
}

#[cfg(test)]
mod tests;
