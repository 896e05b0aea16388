//! Verdicts on snapshots and shard files, and what a snapshot directory holds.

use std::fs;
use std::io::ErrorKind;
use std::path::Path;
use std::time::SystemTime;

use onceflow_core::snapshot::format::{MANIFEST_FILE, TMP_SUFFIX};
use onceflow_core::snapshot::{Manifest, Snapshot, SnapshotError};

/// What a check found.
pub(super) enum Check {
    /// Passed.
    Ok,
    /// The snapshot (or file) cannot be used; the library's error says why.
    Invalid(String),
    /// The check could not be done (an I/O error other than a missing file).
    Error(String),
}

impl Check {
    /// A library error as a verdict: damage (a missing file included) makes the
    /// snapshot invalid; other I/O errors say nothing about it.
    pub(super) fn from_error(e: &SnapshotError) -> Check {
        if is_not_found(e) || e.is_unusable_snapshot() {
            Check::Invalid(e.to_string())
        } else {
            Check::Error(e.to_string())
        }
    }

    pub(super) fn word(&self) -> &'static str {
        match self {
            Check::Ok => "ok",
            Check::Invalid(_) => "invalid",
            Check::Error(_) => "error",
        }
    }

    pub(super) fn message(&self) -> Option<&str> {
        match self {
            Check::Ok => None,
            Check::Invalid(m) | Check::Error(m) => Some(m),
        }
    }
}

/// Whether `e` says a file does not exist.
pub(super) fn is_not_found(e: &SnapshotError) -> bool {
    matches!(e, SnapshotError::Io { source, .. } if source.kind() == ErrorKind::NotFound)
}

/// Opens every shard file listed by `manifest` through [`Snapshot::open`] (what
/// recovery does, with the snapshot's own fingerprint), then checks each index.
pub(super) fn verify_full(dir: &Path, manifest: &Manifest) -> Check {
    match Snapshot::open(dir, &manifest.fingerprint) {
        Ok(s) => s
            .shards()
            .iter()
            .find_map(|sh| sh.verify_index().err())
            .map_or(Check::Ok, |e| Check::from_error(&e)),
        Err(e) => Check::from_error(&e),
    }
}

/// The cheap check: every listed file is there with the size the manifest records.
pub(super) fn verify_sizes(dir: &Path, manifest: &Manifest) -> Check {
    for info in &manifest.shards {
        let path = dir.join(&info.file);
        let len = match fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Check::Invalid(
                    SnapshotError::Mismatch {
                        path,
                        reason: "listed in the manifest, but missing".into(),
                    }
                    .to_string(),
                );
            }
            Err(e) => return Check::Error(format!("stat {}: {e}", path.display())),
        };
        if len < info.bytes {
            let e = SnapshotError::Truncated {
                path,
                expected: info.bytes,
                actual: len,
            };
            return Check::Invalid(e.to_string());
        }
        if len > info.bytes {
            let e = SnapshotError::Mismatch {
                path,
                reason: format!(
                    "file size is {len} on disk but {} in the manifest",
                    info.bytes
                ),
            };
            return Check::Invalid(e.to_string());
        }
    }
    Check::Ok
}

/// The manifest's epoch must be the one in the directory name (as `select` checks).
pub(super) fn check_epoch(dir: &Path, named: Option<u64>, manifest: &Manifest) -> Check {
    match named {
        Some(e) if e != manifest.epoch => Check::Invalid(
            SnapshotError::Mismatch {
                path: dir.join(MANIFEST_FILE),
                reason: format!(
                    "the manifest is of epoch {}, the directory name says {e}",
                    manifest.epoch
                ),
            }
            .to_string(),
        ),
        _ => Check::Ok,
    }
}

/// What a snapshot directory holds on disk.
#[derive(Default)]
pub(super) struct DirFiles {
    /// Bytes of every regular file in it.
    pub(super) bytes: u64,
    /// Finished shard files (`*.snap`), sorted.
    pub(super) shard_files: Vec<String>,
    /// Files left by an interrupted write (`*.tmp`), sorted.
    pub(super) temps: Vec<String>,
}

pub(super) fn dir_files(dir: &Path) -> Result<DirFiles, String> {
    let rd = fs::read_dir(dir).map_err(|e| format!("list {}: {e}", dir.display()))?;
    let mut out = DirFiles::default();
    for ent in rd {
        let ent = ent.map_err(|e| format!("list {}: {e}", dir.display()))?;
        let meta = ent
            .metadata()
            .map_err(|e| format!("stat {}: {e}", ent.path().display()))?;
        if !meta.is_file() {
            continue;
        }
        out.bytes += meta.len();
        let name = ent.file_name().to_string_lossy().into_owned();
        if name.ends_with(TMP_SUFFIX) {
            out.temps.push(name);
        } else if name.ends_with(".snap") {
            out.shard_files.push(name);
        }
    }
    out.shard_files.sort();
    out.temps.sort();
    Ok(out)
}

/// Temp files directly under a snapshots root (retention removes them).
pub(super) fn root_temps(root: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(TMP_SUFFIX))
        .collect();
    v.sort();
    v
}

pub(super) fn modified(path: &Path) -> Option<SystemTime> {
    fs::metadata(path).and_then(|m| m.modified()).ok()
}
