//! `onceflow snapshot inspect PATH [--keys N] [--key K] [--json]`: gathers what a
//! snapshot directory or a shard file holds, verifying every file fully
//! (`print.rs` prints it).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use onceflow_core::snapshot::format::{MANIFEST_FILE, parse_snapshot_dir_name};
use onceflow_core::snapshot::{Manifest, ShardSnapshot, SnapshotError};

use super::check::{Check, check_epoch, dir_files, is_not_found, modified};
use super::print::{render, to_json};
use super::{Done, Failure};

/// One shard file as `inspect` reports it. Counts come from the manifest when there
/// is one, else from the file's header (when it opens).
pub(super) struct ShardReport {
    pub(super) shard: Option<u32>,
    /// Shard count of the snapshot (from the manifest, else the file's header).
    pub(super) of: Option<u32>,
    pub(super) epoch: Option<u64>,
    pub(super) file: String,
    pub(super) bytes: Option<u64>,
    pub(super) keys: Option<u64>,
    pub(super) extras: Option<u64>,
    pub(super) crc: Option<u32>,
    pub(super) check: Check,
    /// Open and verified.
    pub(super) open: Option<ShardSnapshot>,
}

/// Everything `inspect` found.
pub(super) struct Inspection {
    pub(super) path: PathBuf,
    /// A snapshot directory (else a single shard file).
    pub(super) is_dir: bool,
    pub(super) epoch: Option<u64>,
    pub(super) manifest: Option<Manifest>,
    pub(super) written: Option<SystemTime>,
    /// A problem of the snapshot as a whole (no manifest, a bad one, wrong epoch).
    pub(super) problem: Option<Check>,
    pub(super) shards: Vec<ShardReport>,
    pub(super) temps: Vec<String>,
    /// How the shards were checked, when it is not against the snapshot's manifest.
    pub(super) checked: Option<String>,
}

impl Inspection {
    pub(super) fn valid(&self) -> bool {
        self.problem.is_none() && self.shards.iter().all(|s| matches!(s.check, Check::Ok))
    }

    /// What makes the snapshot (or the single file) unusable, if it is one thing.
    pub(super) fn error(&self) -> Option<&str> {
        match (&self.problem, &self.shards[..]) {
            (Some(p), _) => p.message(),
            (None, [s]) if !self.is_dir => s.check.message(),
            _ => None,
        }
    }

    /// Whether anything of the snapshot read: opening refuses every format version and
    /// rkyv format but this build's, so then they are this build's.
    pub(super) fn format_known(&self) -> bool {
        self.manifest.is_some() || self.shards.iter().any(|s| s.open.is_some())
    }

    pub(super) fn invalid_shards(&self) -> usize {
        self.shards
            .iter()
            .filter(|s| !matches!(s.check, Check::Ok))
            .count()
    }
}

/// An entry copied out for printing.
pub(super) struct EntryOut {
    pub(super) shard: u32,
    pub(super) key: Vec<u8>,
    pub(super) seq: u64,
    pub(super) state: Vec<u8>,
}

/// The result of `--key`.
pub(super) struct Lookup {
    pub(super) key: Vec<u8>,
    pub(super) found: Vec<EntryOut>,
    /// Shards not searched because they did not verify.
    pub(super) skipped: Vec<String>,
}

pub(super) fn inspect(
    path: &Path,
    keys: Option<u64>,
    key: Option<&str>,
    json: bool,
) -> Result<Done, Failure> {
    let meta = fs::metadata(path).map_err(|e| Failure::Io(format!("{}: {e}", path.display())))?;
    let ins = if meta.is_dir() {
        let named = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(parse_snapshot_dir_name);
        if named.is_none() && !path.join(MANIFEST_FILE).exists() {
            return Err(Failure::Usage(format!(
                "{} is not a snapshot directory (no {MANIFEST_FILE}, and not named snapshot-<epoch>); \
                 to list the snapshots under a root or a state dir: onceflow snapshot ls {}",
                path.display(),
                path.display()
            )));
        }
        inspect_dir(path, named)
    } else if path.file_name().is_some_and(|n| n == MANIFEST_FILE) {
        let dir = path.parent().unwrap_or(Path::new("."));
        inspect_dir(
            dir,
            dir.file_name()
                .and_then(|n| n.to_str())
                .and_then(parse_snapshot_dir_name),
        )
    } else {
        inspect_file(path)
    };
    let entries = keys.map(|n| first_entries(&ins, n));
    let lookup = key.map(|k| look_up(&ins, k.as_bytes()));
    let out = if json {
        let mut s =
            serde_json::to_string_pretty(&to_json(&ins, entries.as_deref(), lookup.as_ref()))
                .expect("a JSON value serializes");
        s.push('\n');
        s
    } else {
        render(&ins, entries.as_deref(), lookup.as_ref())
    };
    Ok(Done {
        out,
        code: if ins.valid() { 0 } else { 1 },
    })
}

fn inspect_dir(dir: &Path, named: Option<u64>) -> Inspection {
    let mut ins = Inspection {
        path: dir.to_path_buf(),
        is_dir: true,
        epoch: named,
        manifest: None,
        written: None,
        problem: None,
        shards: Vec::new(),
        temps: Vec::new(),
        checked: None,
    };
    let files = match dir_files(dir) {
        Ok(f) => f,
        Err(e) => {
            ins.problem = Some(Check::Error(e));
            return ins;
        }
    };
    ins.temps = files.temps;
    let mpath = dir.join(MANIFEST_FILE);
    let manifest = match Manifest::read(&mpath) {
        Ok(m) => m,
        Err(e) => {
            ins.problem = Some(if is_not_found(&e) {
                Check::Invalid(format!(
                    "incomplete: {} does not exist (a crash while writing, or a write in progress)",
                    mpath.display()
                ))
            } else {
                Check::from_error(&e)
            });
            // Still say what the shard files present hold, each verified on its own.
            ins.checked = Some(format!(
                "each shard file on its own (no usable {MANIFEST_FILE})"
            ));
            ins.shards = files
                .shard_files
                .iter()
                .map(|f| open_alone(&dir.join(f)))
                .collect();
            return ins;
        }
    };
    ins.written = modified(&mpath);
    ins.epoch = Some(manifest.epoch);
    if let c @ (Check::Invalid(_) | Check::Error(_)) = check_epoch(dir, named, &manifest) {
        ins.problem = Some(c);
    }
    ins.shards = manifest
        .shards
        .iter()
        .map(|info| {
            let opened = ShardSnapshot::open_listed(&dir.join(&info.file), info, &manifest)
                .and_then(|s| s.verify_index().map(|()| s));
            let (check, open) = match opened {
                Ok(s) => (Check::Ok, Some(s)),
                Err(e) => (Check::from_error(&e), None),
            };
            ShardReport {
                shard: Some(info.shard),
                of: Some(manifest.shards.len() as u32),
                epoch: None,
                file: info.file.clone(),
                bytes: Some(info.bytes),
                keys: Some(info.keys),
                extras: Some(info.extras),
                crc: Some(info.body_crc32c),
                check,
                open,
            }
        })
        .collect();
    ins.manifest = Some(manifest);
    ins
}

fn inspect_file(path: &Path) -> Inspection {
    // Checked against its snapshot's manifest when that one lists it.
    let listed = path.parent().zip(path.file_name()).and_then(|(dir, name)| {
        let m = Manifest::read(&dir.join(MANIFEST_FILE)).ok()?;
        let info = m
            .shards
            .iter()
            .find(|s| std::ffi::OsStr::new(&s.file) == name)?
            .clone();
        Some((m, info))
    });
    let (report, checked) = match &listed {
        Some((m, info)) => {
            let opened = ShardSnapshot::open_listed(path, info, m)
                .and_then(|s| s.verify_index().map(|()| s));
            let checked = format!("against the {MANIFEST_FILE} of its directory");
            (report_of(path, opened), checked)
        }
        None => (
            open_alone(path),
            format!("on its own (no {MANIFEST_FILE} in its directory lists it)"),
        ),
    };
    Inspection {
        path: path.to_path_buf(),
        is_dir: false,
        epoch: report.epoch,
        manifest: None,
        written: None,
        problem: None,
        shards: vec![report],
        temps: Vec::new(),
        checked: Some(checked),
    }
}

/// Opens and fully verifies a shard file without a manifest.
fn open_alone(path: &Path) -> ShardReport {
    let opened = ShardSnapshot::open(path).and_then(|s| s.verify_index().map(|()| s));
    report_of(path, opened)
}

fn report_of(path: &Path, opened: Result<ShardSnapshot, SnapshotError>) -> ShardReport {
    let file = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    match opened {
        Ok(s) => ShardReport {
            shard: Some(s.shard()),
            of: Some(s.shards()),
            epoch: Some(s.epoch()),
            file,
            bytes: Some(s.file_bytes()),
            keys: Some(s.len()),
            extras: Some(s.extras().count() as u64),
            crc: Some(s.body_crc32c()),
            check: Check::Ok,
            open: Some(s),
        },
        Err(e) => ShardReport {
            shard: None,
            of: None,
            epoch: None,
            file,
            bytes: fs::metadata(path).ok().map(|m| m.len()),
            keys: None,
            extras: None,
            crc: None,
            check: Check::from_error(&e),
            open: None,
        },
    }
}

fn first_entries(ins: &Inspection, n: u64) -> Vec<EntryOut> {
    ins.shards
        .iter()
        .filter_map(|r| r.open.as_ref())
        .flat_map(|s| {
            s.iter().map(|e| EntryOut {
                shard: s.shard(),
                key: e.key.to_vec(),
                seq: e.seq,
                state: e.state.to_vec(),
            })
        })
        .take(usize::try_from(n).unwrap_or(usize::MAX))
        .collect()
}

fn look_up(ins: &Inspection, key: &[u8]) -> Lookup {
    let mut l = Lookup {
        key: key.to_vec(),
        found: Vec::new(),
        skipped: Vec::new(),
    };
    for r in &ins.shards {
        match &r.open {
            Some(s) => {
                if let Some(e) = s.get(key) {
                    l.found.push(EntryOut {
                        shard: s.shard(),
                        key: e.key.to_vec(),
                        seq: e.seq,
                        state: e.state.to_vec(),
                    });
                }
            }
            None => l.skipped.push(r.file.clone()),
        }
    }
    l
}
