//! `onceflow snapshot ls DIR [--verify]`: one line per snapshot, newest first.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::time::SystemTime;

use onceflow_core::snapshot::format::{MANIFEST_FILE, parse_snapshot_dir_name};
use onceflow_core::snapshot::{InputOffset, Manifest, SnapshotDir, list};

use super::check::{
    Check, DirFiles, check_epoch, dir_files, modified, root_temps, verify_full, verify_sizes,
};
use super::text::{Table, human_bytes, plural, when};
use super::{Done, Failure};
use crate::thousands;

/// One line of `snapshot ls`.
struct LsRow {
    epoch: u64,
    complete: bool,
    /// `None` for an incomplete snapshot (nothing to check).
    check: Option<Check>,
    /// From the manifest.
    manifest: Option<Manifest>,
    files: DirFiles,
    written: Option<SystemTime>,
}

pub(super) fn ls(dir: &Path, verify: bool) -> Result<Done, Failure> {
    let meta = fs::metadata(dir).map_err(|e| Failure::Io(format!("{}: {e}", dir.display())))?;
    if !meta.is_dir() {
        return Err(Failure::Usage(format!(
            "{} is not a directory (to look at one snapshot or shard file: onceflow snapshot inspect)",
            dir.display()
        )));
    }
    let nested = dir.join("snapshots");
    let root = if nested.is_dir() {
        nested
    } else {
        dir.to_path_buf()
    };
    let dirs = list(&root).map_err(|e| Failure::Io(e.to_string()))?;
    let now = SystemTime::now();
    let rows: Vec<LsRow> = dirs.iter().map(|d| ls_row(d, verify)).collect();

    let mut out = String::new();
    let how = if verify {
        "full check: every shard file read"
    } else {
        "quick check: manifest and file sizes; --verify reads every file"
    };
    let _ = writeln!(
        out,
        "{}: {} snapshot{} ({how})",
        root.display(),
        rows.len(),
        plural(rows.len() as u64)
    );
    if rows.is_empty()
        && dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(parse_snapshot_dir_name)
            .is_some()
    {
        let _ = writeln!(
            out,
            "(this is one snapshot's directory: onceflow snapshot inspect {})",
            dir.display()
        );
    }
    if rows.is_empty() {
        // A directory instances share ([kafka] assignment = "group"): one per instance.
        let mut instances: Vec<String> = fs::read_dir(&root)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| n.starts_with(onceflow_core::config::INSTANCE_DIR_PREFIX))
            .collect();
        instances.sort();
        if !instances.is_empty() {
            let _ = writeln!(
                out,
                "(shared by the instances of a group-mode pipeline; each one's are in its own directory: {}; e.g. onceflow snapshot ls {})",
                instances.join(", "),
                root.join(&instances[0]).display()
            );
        }
    }
    if !rows.is_empty() {
        let mut table = Table::new(&[
            ("EPOCH", false),
            ("STATE", false),
            ("CHECK", false),
            ("KEYS", true),
            ("SIZE", true),
            ("SHARDS", true),
            ("WRITTEN", false),
            ("INPUTS", false),
        ]);
        for r in &rows {
            let m = r.manifest.as_ref();
            table.row(
                vec![
                    r.epoch.to_string(),
                    if r.complete { "complete" } else { "incomplete" }.into(),
                    r.check.as_ref().map_or("-", Check::word).into(),
                    m.map_or("-".into(), |m| thousands(m.keys())),
                    human_bytes(r.files.bytes),
                    m.map_or(r.files.shard_files.len(), |m| m.shards.len())
                        .to_string(),
                    r.written.map_or("-".into(), |t| when(t, now)),
                    m.map_or("-".into(), |m| inputs_summary(&m.inputs)),
                ],
                ls_notes(r),
            );
        }
        out.push_str(&table.render());
    }
    let temps = root_temps(&root);
    if !temps.is_empty() {
        let _ = writeln!(
            out,
            "leftover temp files in {}: {} (retention removes them)",
            root.display(),
            temps.join(", ")
        );
    }
    let count = |f: fn(&LsRow) -> bool| rows.iter().filter(|r| f(r)).count();
    let valid = count(|r| matches!(r.check, Some(Check::Ok)));
    let invalid = count(|r| matches!(r.check, Some(Check::Invalid(_))));
    let errors = count(|r| matches!(r.check, Some(Check::Error(_))));
    let incomplete = count(|r| !r.complete);
    if !rows.is_empty() {
        let _ = write!(
            out,
            "summary: {valid} valid, {invalid} invalid, {incomplete} incomplete"
        );
        if errors > 0 {
            let _ = write!(out, ", {errors} could not be checked");
        }
        out.push('\n');
    }
    Ok(Done {
        out,
        code: if errors > 0 { 1 } else { 0 },
    })
}

fn ls_row(d: &SnapshotDir, verify: bool) -> LsRow {
    let mut row = LsRow {
        epoch: d.epoch,
        complete: d.complete,
        check: None,
        manifest: None,
        files: DirFiles::default(),
        written: None,
    };
    match dir_files(&d.path) {
        Ok(f) => row.files = f,
        Err(e) => {
            row.check = Some(Check::Error(e));
            return row;
        }
    }
    if !d.complete {
        return row;
    }
    let mpath = d.path.join(MANIFEST_FILE);
    row.written = modified(&mpath);
    let manifest = match Manifest::read(&mpath) {
        Ok(m) => m,
        Err(e) => {
            row.check = Some(Check::from_error(&e));
            return row;
        }
    };
    let mut check = check_epoch(&d.path, Some(d.epoch), &manifest);
    if matches!(check, Check::Ok) {
        check = if verify {
            verify_full(&d.path, &manifest)
        } else {
            verify_sizes(&d.path, &manifest)
        };
    }
    row.check = Some(check);
    row.manifest = Some(manifest);
    row
}

/// The indented lines under an `ls` row.
fn ls_notes(r: &LsRow) -> Vec<String> {
    let mut notes = Vec::new();
    if !r.complete {
        notes.push(format!(
            "incomplete: no {MANIFEST_FILE} ({} of its shard files written; a crash while writing, or a write in progress)",
            r.files.shard_files.len()
        ));
    }
    if let Some(c) = &r.check
        && let Some(m) = c.message()
    {
        notes.push(format!("{}: {m}", c.word()));
    }
    if !r.files.temps.is_empty() {
        notes.push(format!("temp files: {}", r.files.temps.join(", ")));
    }
    notes
}

/// `30 (commands 20, refunds 10)`: the sum of the next offsets, and per source.
pub(super) fn inputs_summary(inputs: &[InputOffset]) -> String {
    if inputs.is_empty() {
        return "none".into();
    }
    let mut per: Vec<(&str, u64)> = Vec::new();
    for i in inputs {
        match per.iter_mut().find(|(s, _)| *s == i.source) {
            Some((_, n)) => *n += i.next_offset,
            None => per.push((&i.source, i.next_offset)),
        }
    }
    let total: u64 = per.iter().map(|(_, n)| n).sum();
    let parts: Vec<String> = per
        .iter()
        .map(|(s, n)| format!("{s} {}", thousands(*n)))
        .collect();
    format!("{} ({})", thousands(total), parts.join(", "))
}
