//! Which snapshot to restore, and which to delete. The decisions are pure functions
//! over a listing ([`choose_candidates`], [`plan_retention`]); listing, opening and
//! deleting are the I/O around them.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use super::SnapshotError;
use super::fingerprint::Fingerprint;
use super::format::{self, MANIFEST_FILE, TMP_SUFFIX};
use super::manifest::Manifest;
use super::reader::Snapshot;

/// A `snapshot-<epoch>` directory found under a snapshot root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotDir {
    /// Epoch, from the directory name.
    pub epoch: u64,
    /// The directory.
    pub path: PathBuf,
    /// Whether its manifest exists (the snapshot was completely written). Says nothing
    /// about validity: that takes [`Snapshot::open`].
    pub complete: bool,
}

/// Snapshot directories under `root`, newest epoch first. A missing `root` has none;
/// other entries (temp files, foreign names) are ignored.
pub fn list(root: &Path) -> Result<Vec<SnapshotDir>, SnapshotError> {
    let rd = match fs::read_dir(root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(SnapshotError::io(root, "list directory", e)),
    };
    let mut out = Vec::new();
    for ent in rd {
        let ent = ent.map_err(|e| SnapshotError::io(root, "list directory", e))?;
        let Some(epoch) = ent
            .file_name()
            .to_str()
            .and_then(format::parse_snapshot_dir_name)
        else {
            continue;
        };
        let path = ent.path();
        let complete = Manifest::exists(&path.join(MANIFEST_FILE))?;
        out.push(SnapshotDir {
            epoch,
            path,
            complete,
        });
    }
    out.sort_by_key(|d| std::cmp::Reverse(d.epoch));
    Ok(out)
}

/// Why a snapshot was not restored.
#[derive(Debug)]
#[non_exhaustive]
pub enum SkipReason {
    /// It has no manifest: writing it did not finish.
    Incomplete,
    /// Its epoch is not committed yet: its state may include records whose epoch
    /// never commits.
    NotCommitted {
        /// The snapshot's epoch.
        epoch: u64,
        /// The last committed epoch.
        committed: u64,
    },
    /// It failed to open: damaged, truncated, of another format or another pipeline.
    Invalid(SnapshotError),
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SkipReason::Incomplete => f.write_str("incomplete (no manifest)"),
            SkipReason::NotCommitted { epoch, committed } => write!(
                f,
                "epoch {epoch} is not committed (last committed epoch: {committed})"
            ),
            SkipReason::Invalid(e) => write!(f, "{e}"),
        }
    }
}

/// A snapshot passed over by [`select`].
#[derive(Debug)]
pub struct Skipped {
    /// Its directory.
    pub path: PathBuf,
    /// Its epoch.
    pub epoch: u64,
    /// Why.
    pub reason: SkipReason,
}

/// The result of [`select`]: the snapshot to restore (if any) and those passed over
/// on the way to it, newest first (to be logged as warnings).
#[derive(Debug)]
pub struct Selection {
    /// The newest complete, valid snapshot of a committed epoch; `None`: replay from
    /// the beginning.
    pub snapshot: Option<Snapshot>,
    /// Snapshots newer than the chosen one that were not used, and why.
    pub skipped: Vec<Skipped>,
}

/// The snapshots worth trying to open for `committed_epoch`, newest first, and those
/// skipped without opening. Pure.
pub fn choose_candidates(
    dirs: &[SnapshotDir],
    committed_epoch: u64,
) -> (Vec<&SnapshotDir>, Vec<Skipped>) {
    let mut try_open = Vec::new();
    let mut skipped = Vec::new();
    for d in dirs {
        if !d.complete {
            skipped.push(Skipped {
                path: d.path.clone(),
                epoch: d.epoch,
                reason: SkipReason::Incomplete,
            });
        } else if d.epoch > committed_epoch {
            skipped.push(Skipped {
                path: d.path.clone(),
                epoch: d.epoch,
                reason: SkipReason::NotCommitted {
                    epoch: d.epoch,
                    committed: committed_epoch,
                },
            });
        } else {
            try_open.push(d);
        }
    }
    (try_open, skipped)
}

/// Recovery's choice: the newest complete snapshot under `root` whose epoch is at
/// most `committed_epoch` and that opens and verifies with the `expected`
/// fingerprint. Damaged or foreign snapshots are skipped (and reported) for the next
/// older one. Only I/O errors on `root` itself are errors.
///
/// # Examples
///
/// ```
/// use onceflow_core::snapshot::{self, Fingerprint};
///
/// let root = tempfile::tempdir().unwrap();
/// let sel = snapshot::select(root.path(), 10, &Fingerprint::new()).unwrap();
/// assert!(sel.snapshot.is_none()); // nothing written yet: replay everything
/// ```
pub fn select(
    root: &Path,
    committed_epoch: u64,
    expected: &Fingerprint,
) -> Result<Selection, SnapshotError> {
    let dirs = list(root)?;
    let (candidates, mut skipped) = choose_candidates(&dirs, committed_epoch);
    for d in candidates {
        match Snapshot::open(&d.path, expected) {
            Ok(s) => {
                if s.epoch() != d.epoch {
                    skipped.push(Skipped {
                        path: d.path.clone(),
                        epoch: d.epoch,
                        reason: SkipReason::Invalid(SnapshotError::Mismatch {
                            path: d.path.join(MANIFEST_FILE),
                            reason: format!(
                                "the manifest is of epoch {}, the directory name says {}",
                                s.epoch(),
                                d.epoch
                            ),
                        }),
                    });
                    continue;
                }
                skipped.sort_by_key(|s| std::cmp::Reverse(s.epoch));
                return Ok(Selection {
                    snapshot: Some(s),
                    skipped,
                });
            }
            Err(e) => skipped.push(Skipped {
                path: d.path.clone(),
                epoch: d.epoch,
                reason: SkipReason::Invalid(e),
            }),
        }
    }
    skipped.sort_by_key(|s| std::cmp::Reverse(s.epoch));
    Ok(Selection {
        snapshot: None,
        skipped,
    })
}

/// What [`retain`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retention {
    /// Epochs of the snapshots kept, newest first.
    pub kept: Vec<u64>,
    /// Directories and files removed.
    pub removed: Vec<PathBuf>,
}

/// A snapshot directory as retention sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionInput {
    /// Epoch.
    pub epoch: u64,
    /// Complete, with a manifest that reads and checks.
    pub usable: bool,
}

/// Which snapshots to remove (indexes into `dirs`, sorted newest first). Pure.
///
/// * Usable snapshots of committed epochs (`≤ committed_epoch`): the newest
///   `max(keep, 1)` stay, older ones go.
/// * Usable snapshots of later epochs stay (their epoch may still commit).
/// * Unusable ones (no manifest, or a damaged one) older than the newest usable one go:
///   snapshots are written in epoch order, so nothing is still writing them. Newer
///   ones may be in progress and stay (their writer clears them if it restarts).
pub fn plan_retention(dirs: &[RetentionInput], keep: usize, committed_epoch: u64) -> Vec<usize> {
    let keep = keep.max(1);
    let newest_usable = dirs.iter().filter(|d| d.usable).map(|d| d.epoch).max();
    let mut committed_kept = 0;
    let mut remove = Vec::new();
    for (i, d) in dirs.iter().enumerate() {
        if d.usable {
            if d.epoch > committed_epoch {
                continue;
            }
            if committed_kept < keep {
                committed_kept += 1;
            } else {
                remove.push(i);
            }
        } else if newest_usable.is_some_and(|n| d.epoch < n) {
            remove.push(i);
        }
    }
    remove
}

/// Keeps the newest `keep` snapshots of committed epochs under `root` (never fewer
/// than one) and removes older ones, plus leftovers of interrupted writes (see
/// [`plan_retention`]) and stray temp files in `root`. "Usable" here means a complete
/// snapshot whose manifest checks; shard files are not read (that is [`select`]'s
/// job), so keep at least 2 to survive a damaged newest snapshot without a full
/// replay. Must not run while a snapshot is being written under the same `root`.
pub fn retain(root: &Path, keep: usize, committed_epoch: u64) -> Result<Retention, SnapshotError> {
    let dirs = list(root)?;
    let inputs: Vec<RetentionInput> = dirs
        .iter()
        .map(|d| RetentionInput {
            epoch: d.epoch,
            usable: d.complete && Manifest::read(&d.path.join(MANIFEST_FILE)).is_ok(),
        })
        .collect();
    let remove = plan_retention(&inputs, keep, committed_epoch);
    let mut report = Retention::default();
    for (i, d) in dirs.iter().enumerate() {
        if remove.contains(&i) {
            fs::remove_dir_all(&d.path)
                .map_err(|e| SnapshotError::io(&d.path, "remove snapshot", e))?;
            report.removed.push(d.path.clone());
            crate::fault::point(crate::fault::SNAPSHOT_RETAIN);
        } else if inputs[i].usable {
            report.kept.push(d.epoch);
        }
    }
    if let Ok(rd) = fs::read_dir(root) {
        for ent in rd.flatten() {
            let name = ent.file_name();
            if name.to_str().is_some_and(|n| n.ends_with(TMP_SUFFIX)) {
                let p = ent.path();
                let removed = if p.is_dir() {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
                removed.map_err(|e| SnapshotError::io(&p, "remove temp file", e))?;
                report.removed.push(p);
            }
        }
    }
    if !report.removed.is_empty() {
        format::fsync_dir(root)?;
    }
    Ok(report)
}
