//! The commit markers of a store, read without the writer's lock: what a pipeline has
//! committed, for tools that must not disturb it (a temporal query while it runs).

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::path::Path;

use super::format::{self, JOURNAL_FILE, JOURNAL_HEADER_LEN, KIND_CHECKPOINT};
use super::journal::{self, Tail};
use super::{CommitMarker, LogError};

/// What the journal of a store says was committed, as [`LogWriter::last_marker`] and
/// [`LogWriter::committed_inputs`] report it after a writer's recovery.
///
/// [`LogWriter::last_marker`]: super::LogWriter::last_marker
/// [`LogWriter::committed_inputs`]: super::LogWriter::committed_inputs
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Commits {
    /// The latest commit marker; `None` if nothing was committed.
    pub last_marker: Option<CommitMarker>,
    /// Input offsets merged over all markers (latest wins per source and partition):
    /// source → partition → next offset to read.
    pub inputs: BTreeMap<String, BTreeMap<u32, u64>>,
}

impl Commits {
    /// Next offset to read of `source` partition `partition` (0 if never committed).
    pub fn committed_input(&self, source: &str, partition: u32) -> u64 {
        self.inputs
            .get(source)
            .and_then(|m| m.get(&partition))
            .copied()
            .unwrap_or(0)
    }

    /// Epoch of the latest commit marker (0 if none).
    pub fn epoch(&self) -> u64 {
        self.last_marker.as_ref().map_or(0, |m| m.epoch)
    }
}

/// Reads the commit markers of the store in `dir` without taking its lock and without
/// writing anything: safe while a writer has it open. An entry still being written
/// (an incomplete tail) is not seen yet. `Ok(None)` if `dir` holds no store.
pub fn read_commits(dir: &Path) -> Result<Option<Commits>, LogError> {
    let path = dir.join(JOURNAL_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(LogError::io(&path, "read", e)),
    };
    format::check_journal_header(&bytes).map_err(|r| LogError::corrupt(&path, 0, r))?;
    let mut c = Commits::default();
    let merge = |into: &mut BTreeMap<String, BTreeMap<u32, u64>>, v: &[(String, u32, u64)]| {
        for (name, p, o) in v {
            into.entry(name.clone()).or_default().insert(*p, *o);
        }
    };
    let tail = journal::scan(&bytes[JOURNAL_HEADER_LEN..], |pos, payload| {
        let at = (JOURNAL_HEADER_LEN + pos) as u64;
        let e = format::decode_entry(payload).map_err(|r| LogError::corrupt(&path, at, r))?;
        if e.kind == KIND_CHECKPOINT {
            c.inputs.clear();
            merge(&mut c.inputs, &e.merged);
        } else {
            merge(&mut c.inputs, &e.inputs);
        }
        c.last_marker = Some(CommitMarker {
            epoch: e.epoch,
            inputs: e.inputs,
        });
        Ok::<_, LogError>(())
    })?;
    if let Tail::Corrupt { pos, reason } = tail {
        return Err(LogError::corrupt(
            &path,
            (JOURNAL_HEADER_LEN + pos) as u64,
            format!("{reason} (valid entries follow, so this is not a write in progress)"),
        ));
    }
    Ok(Some(c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::tests::marker;
    use crate::log::{LogOptions, LogWriter};

    #[test]
    fn agrees_with_the_writer_while_it_holds_the_store() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_commits(dir.path()).unwrap(), None);
        let mut w = LogWriter::open(dir.path(), LogOptions::default()).unwrap();
        assert_eq!(read_commits(dir.path()).unwrap(), Some(Commits::default()));
        let t = w.ensure_topic("out", 1).unwrap();
        for (epoch, inputs) in [
            (1, vec![("a", 0, 5), ("a", 1, 2)]),
            (2, vec![("a", 0, 9)]),
            (3, vec![("b", 0, 1), ("a", 1, 4)]),
        ] {
            let mut tx = w.begin();
            tx.append(t, 0, b"k", b"v");
            tx.commit(&marker(epoch, &inputs)).unwrap();
        }
        let check = |w: &LogWriter| {
            let c = read_commits(dir.path()).unwrap().unwrap();
            assert_eq!(c.last_marker.as_ref(), w.last_marker());
            assert_eq!(c.epoch(), 3);
            for s in ["a", "b", "c"] {
                let merged: Vec<(u32, u64)> = c
                    .inputs
                    .get(s)
                    .map(|m| m.iter().map(|(&p, &o)| (p, o)).collect())
                    .unwrap_or_default();
                assert_eq!(merged, w.committed_inputs(s), "source {s}");
            }
            assert_eq!(c.committed_input("a", 0), 9);
            assert_eq!(c.committed_input("a", 1), 4);
            assert_eq!(c.committed_input("c", 0), 0);
        };
        check(&w);
        // After a compaction the merged inputs come from the checkpoint.
        w.compact_journal().unwrap();
        check(&w);
        // A half-written entry at the end is a commit in progress: not seen yet.
        let path = dir.path().join(JOURNAL_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&[40, 0, 0, 0, 1, 2]);
        std::fs::write(&path, &bytes).unwrap();
        check(&w);
    }
}
