//! Tests of the embedded log.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use proptest::prelude::*;

use super::format::{self, BATCH_HEADER_LEN};
use super::*;

/// A record's key and value.
type Kv = (Vec<u8>, Vec<u8>);

fn opts_small() -> LogOptions {
    LogOptions {
        fsync: FsyncPolicy::EveryCommit,
        segment_bytes: 1024,
        journal_compact_bytes: 64 << 20,
    }
}

pub(super) fn marker(epoch: u64, inputs: &[(&str, u32, u64)]) -> CommitMarker {
    CommitMarker {
        epoch,
        inputs: inputs
            .iter()
            .map(|&(s, p, o)| (s.to_string(), p, o))
            .collect(),
    }
}

fn key(i: u64) -> Vec<u8> {
    format!("k{i}").into_bytes()
}

fn value(i: u64, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i as usize * 31 + j) as u8).collect()
}

/// Reads everything committed in `partition` from `from`, in steps of `step`.
fn read_all(
    reader: &LogReader,
    partition: u32,
    from: u64,
    step: usize,
) -> Vec<(u64, Vec<u8>, Vec<u8>)> {
    let mut c = reader.cursor(partition, from).unwrap();
    let mut buf = RecordBuf::new();
    let mut out = Vec::new();
    loop {
        buf.clear();
        let n = c.read(reader, step, &mut buf).unwrap();
        assert_eq!(n, buf.len());
        if n == 0 {
            break;
        }
        for r in buf.iter() {
            assert_eq!(r.partition, partition);
            out.push((r.offset, r.key.to_vec(), r.value.to_vec()));
        }
    }
    assert_eq!(c.position(), reader.committed_end(partition));
    out
}

fn segment_files(dir: &Path, topic: &str, partition: u32) -> Vec<PathBuf> {
    let pdir = dir.join("topics").join(topic).join(partition.to_string());
    format::list_segments(&pdir)
        .unwrap()
        .into_iter()
        .map(|b| pdir.join(format::segment_file_name(b)))
        .collect()
}

fn append_bytes(path: &Path, bytes: &[u8]) {
    let mut f = OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
}

#[test]
fn round_trip_topics_partitions_and_rolls() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let mut w = LogWriter::open(&dir, opts_small()).unwrap();
    let a = w.ensure_topic("alpha", 3).unwrap();
    let b = w.ensure_topic("beta", 2).unwrap();
    assert_ne!(a, b);
    assert_eq!(w.topic("alpha"), Some((a, 3)));
    assert_eq!(w.ensure_topic("alpha", 3).unwrap(), a);
    let mut expect: HashMap<(TopicId, u32), Vec<Kv>> = HashMap::new();
    let mut i = 0u64;
    for epoch in 1..=20u64 {
        let mut txn = w.begin();
        for _ in 0..(epoch * 3) {
            let (t, p) = if i.is_multiple_of(3) {
                (b, (i % 2) as u32)
            } else {
                (a, ((i / 3) % 3) as u32)
            };
            let (k, v) = (key(i), value(i, (i % 50) as usize));
            txn.append(t, p, &k, &v);
            expect.entry((t, p)).or_default().push((k, v));
            i += 1;
        }
        assert_eq!(txn.len(), (epoch * 3) as usize);
        let info = txn
            .commit(&marker(epoch, &[("in", 0, epoch * 10)]))
            .unwrap();
        assert_eq!(info.txn_id, epoch);
        assert_eq!(info.records, epoch * 3);
        assert!(info.bytes > info.records * 8);
    }
    for (&(t, p), recs) in &expect {
        assert_eq!(w.end_offset(t, p), recs.len() as u64);
    }
    assert!(
        segment_files(&dir, "alpha", 1).len() > 2,
        "segments should roll"
    );
    let check = |w_dir: &Path| {
        for (name, t, parts) in [("alpha", a, 3u32), ("beta", b, 2)] {
            let r = LogReader::open(w_dir, name).unwrap();
            assert_eq!(r.partitions(), parts);
            for p in 0..parts {
                let got = read_all(&r, p, 0, 7);
                let want = &expect[&(t, p)];
                assert_eq!(got.len(), want.len());
                for (j, (off, k, v)) in got.iter().enumerate() {
                    assert_eq!(*off, j as u64);
                    assert_eq!((k, v), (&want[j].0, &want[j].1));
                }
            }
        }
    };
    check(&dir);
    drop(w);
    let w = LogWriter::open(&dir, opts_small()).unwrap();
    assert_eq!(w.recovery(), &RecoveryReport::default());
    assert_eq!(w.last_marker(), Some(&marker(20, &[("in", 0, 200)])));
    for (&(t, p), recs) in &expect {
        assert_eq!(w.end_offset(t, p), recs.len() as u64);
    }
    check(&dir);
    assert_eq!(
        list_topics(&dir).unwrap(),
        vec![("alpha".to_string(), 3), ("beta".to_string(), 2)]
    );
}

#[test]
fn read_from_any_offset_including_mid_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = LogWriter::open(tmp.path(), opts_small()).unwrap();
    let t = w.ensure_topic("t", 1).unwrap();
    let mut n = 0u64;
    for size in [1u64, 5, 2, 9, 1, 13, 4] {
        let mut txn = w.begin();
        for _ in 0..size {
            txn.append(t, 0, &key(n), &value(n, (n % 40) as usize));
            n += 1;
        }
        txn.commit(&CommitMarker::default()).unwrap();
    }
    let r = LogReader::open(tmp.path(), "t").unwrap();
    assert_eq!(r.committed_end(0), n);
    for from in 0..=n {
        for step in [1usize, 3, 1000] {
            let got = read_all(&r, 0, from, step);
            assert_eq!(got.len() as u64, n - from);
            for (j, (off, k, v)) in got.iter().enumerate() {
                let o = from + j as u64;
                assert_eq!(*off, o);
                assert_eq!(k, &key(o));
                assert_eq!(v, &value(o, (o % 40) as usize));
            }
        }
    }
    assert!(
        matches!(r.cursor(0, n + 1), Err(LogError::OffsetOutOfRange { offset, end, .. }) if offset == n + 1 && end == n)
    );
    assert!(matches!(
        r.cursor(1, 0),
        Err(LogError::NoSuchPartition { partition: 1, .. })
    ));
}

#[test]
fn abort_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = LogWriter::open(tmp.path(), LogOptions::default()).unwrap();
    let t = w.ensure_topic("t", 2).unwrap();
    let mut txn = w.begin();
    txn.append(t, 0, b"a", b"1");
    txn.commit(&marker(1, &[("s", 0, 1)])).unwrap();
    let journal_len = fs::metadata(tmp.path().join("journal")).unwrap().len();
    {
        let mut txn = w.begin();
        txn.append(t, 0, b"b", b"2");
        txn.append(t, 1, b"c", b"3");
        assert_eq!(txn.len(), 2);
        assert!(!txn.is_empty());
        // dropped: abort
    }
    assert_eq!(w.end_offset(t, 0), 1);
    assert_eq!(w.end_offset(t, 1), 0);
    assert_eq!(
        fs::metadata(tmp.path().join("journal")).unwrap().len(),
        journal_len
    );
    assert!(segment_files(tmp.path(), "t", 1).is_empty());
    // An invalid append makes the commit fail without writing anything.
    let mut txn = w.begin();
    txn.append(t, 0, b"x", b"y");
    txn.append(t, 7, b"bad", b"partition");
    assert!(matches!(
        txn.commit(&marker(2, &[])),
        Err(LogError::NoSuchPartition { partition: 7, .. })
    ));
    assert_eq!(w.end_offset(t, 0), 1);
    // The next transaction starts clean.
    let mut txn = w.begin();
    assert!(txn.is_empty());
    txn.append(t, 0, b"d", b"4");
    txn.commit(&marker(3, &[])).unwrap();
    let r = LogReader::open(tmp.path(), "t").unwrap();
    let got = read_all(&r, 0, 0, 10);
    assert_eq!(
        got,
        vec![
            (0, b"a".to_vec(), b"1".to_vec()),
            (1, b"d".to_vec(), b"4".to_vec())
        ]
    );
    assert!(read_all(&r, 1, 0, 10).is_empty());
    assert_eq!(w.last_marker().unwrap().epoch, 3);
    assert_eq!(w.last_txn_id(), 2);
}

#[test]
fn crash_garbage_after_committed_end_is_truncated() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut w = LogWriter::open(dir, opts_small()).unwrap();
    let t = w.ensure_topic("t", 1).unwrap();
    let mut txn = w.begin();
    for i in 0..5 {
        txn.append(t, 0, &key(i), &value(i, 10));
    }
    txn.commit(&marker(1, &[])).unwrap();
    drop(w);
    let seg = segment_files(dir, "t", 0).pop().unwrap();
    let committed_len = fs::metadata(&seg).unwrap().len();
    // (1) a complete but uncommitted batch, then a partial one.
    let mut payload = Vec::new();
    format::encode_record(&mut payload, b"ghost", b"never committed");
    let hdr = format::encode_batch_header(5, 1, 0, &payload);
    append_bytes(&seg, &hdr);
    append_bytes(&seg, &payload);
    append_bytes(&seg, &hdr[..20]);
    // (2) a whole segment file beyond the committed end.
    let stray = seg.with_file_name(format::segment_file_name(5));
    fs::write(&stray, b"garbage garbage garbage").unwrap();

    // A reader never sees any of it.
    let r = LogReader::open(dir, "t").unwrap();
    assert_eq!(read_all(&r, 0, 0, 100).len(), 5);

    let mut w = LogWriter::open(dir, opts_small()).unwrap();
    let rep = w.recovery().clone();
    assert_eq!(rep.segments_deleted, 1);
    assert_eq!(
        rep.segment_truncated_bytes,
        (BATCH_HEADER_LEN + payload.len() + 20) as u64
    );
    assert_eq!(fs::metadata(&seg).unwrap().len(), committed_len);
    assert!(!stray.exists());
    assert_eq!(w.end_offset(t, 0), 5);
    let mut txn = w.begin();
    for i in 5..40 {
        txn.append(t, 0, &key(i), &value(i, 30));
    }
    txn.commit(&marker(2, &[])).unwrap();
    drop(w);
    let r = LogReader::open(dir, "t").unwrap();
    let got = read_all(&r, 0, 0, 6);
    assert_eq!(got.len(), 40);
    for (i, (off, k, _)) in got.iter().enumerate() {
        assert_eq!((*off, k), (i as u64, &key(i as u64)));
    }
    // A store with no commits at all: every segment is uncommitted.
    let tmp2 = tempfile::tempdir().unwrap();
    let mut w = LogWriter::open(tmp2.path(), opts_small()).unwrap();
    let t = w.ensure_topic("t", 1).unwrap();
    drop(w);
    let pdir = tmp2.path().join("topics/t/0");
    fs::write(pdir.join(format::segment_file_name(0)), b"junk").unwrap();
    let mut w = LogWriter::open(tmp2.path(), opts_small()).unwrap();
    assert_eq!(w.recovery().segments_deleted, 1);
    let mut txn = w.begin();
    txn.append(t, 0, b"k", b"v");
    txn.commit(&marker(1, &[])).unwrap();
    let r = LogReader::open(tmp2.path(), "t").unwrap();
    assert_eq!(
        read_all(&r, 0, 0, 10),
        vec![(0, b"k".to_vec(), b"v".to_vec())]
    );
}

#[test]
fn torn_journal_tail_is_truncated_but_mid_journal_damage_is_loud() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut w = LogWriter::open(dir, opts_small()).unwrap();
    let t = w.ensure_topic("t", 1).unwrap();
    for e in 1..=3u64 {
        let mut txn = w.begin();
        txn.append(t, 0, &key(e), b"v");
        txn.commit(&marker(e, &[("src", 0, e)])).unwrap();
    }
    drop(w);
    let jpath = dir.join("journal");
    let good = fs::read(&jpath).unwrap();
    // Half of a valid-looking entry (as a crash in the middle of the append leaves).
    let mut entry = Vec::new();
    format::encode_entry(&mut entry, 1, 4, 4, &[(t, 0, 4)], std::iter::empty(), None);
    append_bytes(&jpath, &entry[..entry.len() - 5]);
    // A reader treats the torn tail as "not yet".
    let r = LogReader::open(dir, "t").unwrap();
    assert_eq!(r.committed_end(0), 3);
    let mut w = LogWriter::open(dir, opts_small()).unwrap();
    assert_eq!(
        w.recovery().journal_truncated_bytes,
        (entry.len() - 5) as u64
    );
    assert_eq!(fs::read(&jpath).unwrap(), good);
    assert_eq!(w.end_offset(t, 0), 3);
    assert_eq!(w.committed_inputs("src"), vec![(0, 3)]);
    let mut txn = w.begin();
    txn.append(t, 0, b"four", b"v");
    assert_eq!(txn.commit(&marker(4, &[])).unwrap().txn_id, 4);
    drop(w);
    // A zero-filled tail (file size extended, data never written).
    append_bytes(&jpath, &[0u8; 100]);
    let w = LogWriter::open(dir, opts_small()).unwrap();
    assert_eq!(w.recovery().journal_truncated_bytes, 100);
    assert_eq!(w.end_offset(t, 0), 4);
    drop(w);
    // Damage in the middle of the journal (valid entries follow) is corruption.
    let mut bytes = fs::read(&jpath).unwrap();
    bytes[format::JOURNAL_HEADER_LEN + 12] ^= 0x40;
    fs::write(&jpath, &bytes).unwrap();
    match LogWriter::open(dir, opts_small()) {
        Err(LogError::Corrupt { path, position, .. }) => {
            assert_eq!(path, jpath);
            assert_eq!(position, format::JOURNAL_HEADER_LEN as u64);
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    let err = LogReader::open(dir, "t").unwrap_err();
    assert!(matches!(err, LogError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("journal"), "{err}");
}

#[test]
fn bit_flip_in_committed_data_is_a_loud_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut w = LogWriter::open(dir, opts_small()).unwrap();
    let t = w.ensure_topic("t", 1).unwrap();
    for e in 0..10u64 {
        let mut txn = w.begin();
        for i in 0..4 {
            txn.append(t, 0, &key(e * 4 + i), &value(i, 60));
        }
        txn.commit(&marker(e, &[])).unwrap();
    }
    drop(w);
    let segs = segment_files(dir, "t", 0);
    assert!(segs.len() >= 3);
    // Flip a bit in an older segment: readers catch it when they get there.
    let first = &segs[0];
    let mut bytes = fs::read(first).unwrap();
    bytes[BATCH_HEADER_LEN + 20] ^= 1;
    fs::write(first, &bytes).unwrap();
    let r = LogReader::open(dir, "t").unwrap();
    let mut c = r.cursor(0, 0).unwrap();
    let mut buf = RecordBuf::new();
    match c.read(&r, 100, &mut buf) {
        Err(LogError::Corrupt {
            path,
            position,
            reason,
        }) => {
            assert_eq!(&path, first);
            assert_eq!(position, 0);
            assert!(reason.contains("checksum"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // Reading past the damaged segment still works.
    let last_base =
        format::parse_segment_name(segs.last().unwrap().file_name().unwrap().to_str().unwrap())
            .unwrap();
    assert_eq!(read_all(&r, 0, last_base, 3).len() as u64, 40 - last_base);
    // Flip a bit in the last segment: the writer refuses to open (never truncates it).
    let last = segs.last().unwrap();
    let mut bytes = fs::read(last).unwrap();
    let len = bytes.len();
    bytes[len - 3] ^= 0x10;
    fs::write(last, &bytes).unwrap();
    let err = LogWriter::open(dir, opts_small()).unwrap_err();
    match &err {
        LogError::Corrupt { path, .. } => assert_eq!(path, last),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(
        err.to_string().contains(&last.display().to_string()),
        "{err}"
    );
    assert_eq!(
        fs::metadata(last).unwrap().len(),
        len as u64,
        "damaged data must not be truncated"
    );
    // Missing committed data is corruption too.
    fs::write(last, &bytes[..len / 2]).unwrap();
    assert!(matches!(
        LogWriter::open(dir, opts_small()),
        Err(LogError::Corrupt { .. })
    ));
}

#[test]
fn second_writer_is_locked_out() {
    let tmp = tempfile::tempdir().unwrap();
    let w = LogWriter::open(tmp.path(), LogOptions::default()).unwrap();
    let err = LogWriter::open(tmp.path(), LogOptions::default()).unwrap_err();
    match &err {
        LogError::Locked { path, holder } => {
            assert_eq!(path, tmp.path());
            assert_eq!(holder, &format!("pid {}", std::process::id()));
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    assert!(
        err.to_string().contains("in use by another writer (pid "),
        "{err}"
    );
    drop(w);
    LogWriter::open(tmp.path(), LogOptions::default()).unwrap();
}

#[test]
fn reader_follows_commits_and_never_sees_uncommitted_data() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut w = LogWriter::open(dir, opts_small()).unwrap();
    let t = w.ensure_topic("t", 2).unwrap();
    let mut r = LogReader::open(dir, "t").unwrap();
    let mut c = r.cursor(0, 0).unwrap();
    let mut buf = RecordBuf::new();
    assert_eq!(c.read(&r, 10, &mut buf).unwrap(), 0);

    let mut txn = w.begin();
    txn.append(t, 0, b"a", b"1");
    txn.append(t, 1, b"b", b"2");
    txn.commit(&marker(1, &[])).unwrap();
    assert_eq!(
        c.read(&r, 10, &mut buf).unwrap(),
        0,
        "not visible before refresh"
    );
    r.refresh().unwrap();
    assert_eq!(r.committed_end(0), 1);
    assert_eq!(c.read(&r, 10, &mut buf).unwrap(), 1);
    assert_eq!(buf.get(0).key, b"a");

    // An open transaction is invisible.
    let mut txn = w.begin();
    txn.append(t, 0, b"c", b"3");
    r.refresh().unwrap();
    assert_eq!(c.read(&r, 10, &mut buf).unwrap(), 0);
    txn.commit(&marker(2, &[])).unwrap();
    r.refresh().unwrap();
    r.refresh().unwrap();
    assert_eq!(c.read(&r, 10, &mut buf).unwrap(), 1);
    assert_eq!(buf.get(1).key, b"c");
    assert_eq!(c.position(), 2);

    // Simulated crash after writing a (valid) batch but before its marker. The reader
    // buffers it as read-ahead but must not return it, and after recovery and a new
    // commit at the same offset it must return the new data.
    drop(w);
    let seg = segment_files(dir, "t", 0).pop().unwrap();
    let mut payload = Vec::new();
    format::encode_record(&mut payload, b"ghost", b"uncommitted");
    append_bytes(&seg, &format::encode_batch_header(2, 1, 0, &payload));
    append_bytes(&seg, &payload);
    r.refresh().unwrap();
    let mut c2 = r.cursor(0, 0).unwrap();
    let mut buf2 = RecordBuf::new();
    assert_eq!(c2.read(&r, 100, &mut buf2).unwrap(), 2);
    assert_eq!(c.read(&r, 100, &mut buf).unwrap(), 0);
    let mut w = LogWriter::open(dir, opts_small()).unwrap();
    assert!(w.recovery().segment_truncated_bytes > 0);
    let mut txn = w.begin();
    txn.append(t, 0, b"real", b"committed");
    txn.commit(&marker(3, &[])).unwrap();
    r.refresh().unwrap();
    for (cur, b) in [(&mut c, &mut buf), (&mut c2, &mut buf2)] {
        b.clear();
        assert_eq!(cur.read(&r, 100, b).unwrap(), 1);
        let rec = b.get(0);
        assert_eq!(
            (rec.offset, rec.key, rec.value),
            (2, &b"real"[..], &b"committed"[..])
        );
    }
    // A cursor of another topic's reader is refused.
    w.ensure_topic("other", 1).unwrap();
    let r2 = LogReader::open(dir, "other").unwrap();
    assert!(matches!(
        c.read(&r2, 1, &mut buf),
        Err(LogError::CursorMismatch { .. })
    ));
}

#[test]
fn journal_compaction_keeps_ends_and_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let opts = LogOptions {
        journal_compact_bytes: 600,
        ..opts_small()
    };
    let mut w = LogWriter::open(
        dir,
        LogOptions {
            journal_compact_bytes: u64::MAX,
            ..opts.clone()
        },
    )
    .unwrap();
    let t = w.ensure_topic("t", 3).unwrap();
    let mut r = LogReader::open(dir, "t").unwrap();
    let mut cursors: Vec<Cursor> = (0..3).map(|p| r.cursor(p, 0).unwrap()).collect();
    let mut seen = [0u64; 3];
    let mut buf = RecordBuf::new();
    let mut total = vec![0u64; 3];
    let commit_some = |w: &mut LogWriter, e: u64, total: &mut Vec<u64>| {
        let mut txn = w.begin();
        let p = (e % 3) as u32;
        txn.append(t, p, &key(e), b"v");
        total[p as usize] += 1;
        txn.commit(&marker(e, &[("a", p, e), ("b", 0, e * 2)]))
            .unwrap();
    };
    for e in 0..30 {
        commit_some(&mut w, e, &mut total);
    }
    let before = fs::metadata(dir.join("journal")).unwrap().len();
    assert!(before > 600);
    let ends: Vec<u64> = (0..3).map(|p| w.end_offset(t, p)).collect();
    let last = w.last_marker().cloned();
    let (ia, ib) = (w.committed_inputs("a"), w.committed_inputs("b"));
    assert_eq!(ia, vec![(0, 27), (1, 28), (2, 29)]);
    drop(w);

    let mut w = LogWriter::open(dir, opts.clone()).unwrap();
    assert!(w.recovery().journal_compacted);
    assert!(fs::metadata(dir.join("journal")).unwrap().len() < before);
    assert_eq!((0..3).map(|p| w.end_offset(t, p)).collect::<Vec<_>>(), ends);
    assert_eq!(w.last_marker().cloned(), last);
    assert_eq!(
        (w.committed_inputs("a"), w.committed_inputs("b")),
        (ia.clone(), ib.clone())
    );
    assert_eq!(w.last_txn_id(), 30);

    // Runtime compaction (threshold crossed by commits) while a reader tails.
    for e in 30..90 {
        commit_some(&mut w, e, &mut total);
        if e % 7 == 0 {
            r.refresh().unwrap();
            for p in 0..3u32 {
                buf.clear();
                while cursors[p as usize].read(&r, 2, &mut buf).unwrap() > 0 {}
                for rec in buf.iter() {
                    assert_eq!(rec.offset, seen[p as usize]);
                    seen[p as usize] += 1;
                }
            }
        }
    }
    assert!(fs::metadata(dir.join("journal")).unwrap().len() <= 600 + 200);
    r.refresh().unwrap();
    for p in 0..3u32 {
        assert_eq!(r.committed_end(p), total[p as usize]);
        assert_eq!(w.end_offset(t, p), total[p as usize]);
        buf.clear();
        while cursors[p as usize].read(&r, 1000, &mut buf).unwrap() > 0 {}
        seen[p as usize] += buf.len() as u64;
        assert_eq!(seen[p as usize], total[p as usize]);
    }
    let (ia, ib) = (w.committed_inputs("a"), w.committed_inputs("b"));
    drop(w);
    let w = LogWriter::open(dir, opts).unwrap();
    assert_eq!((w.committed_inputs("a"), w.committed_inputs("b")), (ia, ib));
    assert_eq!(
        w.last_marker(),
        Some(&marker(89, &[("a", 2, 89), ("b", 0, 178)]))
    );
    assert_eq!(w.last_txn_id(), 90);
    let r2 = LogReader::open(dir, "t").unwrap();
    assert_eq!(
        (0..3).map(|p| r2.committed_end(p)).collect::<Vec<_>>(),
        total
    );
}

#[test]
fn committed_inputs_merge_over_markers() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = LogWriter::open(tmp.path(), LogOptions::default()).unwrap();
    assert!(w.committed_inputs("s").is_empty());
    assert!(w.last_marker().is_none());
    w.begin()
        .commit(&marker(1, &[("s", 0, 10), ("s", 1, 5)]))
        .unwrap();
    w.begin()
        .commit(&marker(2, &[("s", 1, 7), ("u", 3, 1)]))
        .unwrap();
    w.begin().commit(&marker(3, &[("s", 2, 1)])).unwrap();
    assert_eq!(w.committed_inputs("s"), vec![(0, 10), (1, 7), (2, 1)]);
    assert_eq!(w.committed_inputs("u"), vec![(3, 1)]);
    assert!(w.committed_inputs("nope").is_empty());
    assert_eq!(w.last_marker(), Some(&marker(3, &[("s", 2, 1)])));
    drop(w);
    let w = LogWriter::open(tmp.path(), LogOptions::default()).unwrap();
    assert_eq!(w.committed_inputs("s"), vec![(0, 10), (1, 7), (2, 1)]);
    assert_eq!(w.last_txn_id(), 3);
}

#[test]
fn large_transactions_split_into_batches() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = LogOptions {
        fsync: FsyncPolicy::Never,
        ..LogOptions::default()
    };
    let mut w = LogWriter::open(tmp.path(), opts).unwrap();
    let t = w.ensure_topic("big", 1).unwrap();
    let big = vec![7u8; format::BATCH_TARGET_PAYLOAD + 100];
    let mut txn = w.begin();
    for i in 0..6000u64 {
        txn.append(t, 0, &key(i), &value(i, 1000));
    }
    txn.append(t, 0, b"big", &big);
    txn.append(t, 0, b"after", b"x");
    let info = txn.commit(&marker(1, &[])).unwrap();
    assert_eq!(info.records, 6002);
    let r = LogReader::open(tmp.path(), "t").map(|_| ()).unwrap_err();
    assert!(
        matches!(r, LogError::NoSuchTopic { ref available, .. } if available == &["big".to_string()]),
        "{r}"
    );
    let r = LogReader::open(tmp.path(), "big").unwrap();
    let got = read_all(&r, 0, 5990, 4);
    assert_eq!(got.len(), 12);
    assert_eq!(got[10].2, big);
    assert_eq!(got[11].1, b"after");
    let all = read_all(&r, 0, 0, 10_000);
    assert_eq!(all.len(), 6002);
    assert_eq!(all[4321].2, value(4321, 1000));
}

#[test]
fn errors_for_bad_dirs_topics_and_io_failures() {
    let tmp = tempfile::tempdir().unwrap();
    // Not a store.
    assert!(matches!(
        LogReader::open(tmp.path(), "t"),
        Err(LogError::NotALog { .. })
    ));
    fs::write(tmp.path().join("precious.txt"), b"data").unwrap();
    assert!(matches!(
        LogWriter::open(tmp.path(), LogOptions::default()),
        Err(LogError::NotALog { .. })
    ));
    assert!(tmp.path().join("precious.txt").exists());
    assert!(!tmp.path().join("LOCK").exists());

    let dir = tmp.path().join("s");
    let mut w = LogWriter::open(&dir, LogOptions::default()).unwrap();
    assert!(matches!(
        w.ensure_topic("../x", 1),
        Err(LogError::InvalidTopic { .. })
    ));
    assert!(matches!(
        w.ensure_topic("x", 0),
        Err(LogError::InvalidTopic { .. })
    ));
    let t = w.ensure_topic("x", 2).unwrap();
    assert!(matches!(
        w.ensure_topic("x", 3),
        Err(LogError::PartitionMismatch {
            existing: 2,
            requested: 3,
            ..
        })
    ));
    let err = LogReader::open(&dir, "y").unwrap_err();
    assert!(err.to_string().contains("available topics: [x]"), "{err}");

    // An I/O error during commit poisons the writer; reopening recovers.
    let pdir = dir.join("topics/x/1");
    fs::remove_dir(&pdir).unwrap();
    let mut txn = w.begin();
    txn.append(t, 0, b"a", b"b");
    txn.append(t, 1, b"c", b"d");
    let err = txn.commit(&marker(1, &[])).unwrap_err();
    assert!(matches!(err, LogError::Io { .. }), "{err}");
    assert!(err.to_string().contains("create segment"), "{err}");
    let err = w.begin().commit(&marker(2, &[])).unwrap_err();
    assert!(matches!(err, LogError::Poisoned { .. }), "{err}");
    drop(w);
    let mut w = LogWriter::open(&dir, LogOptions::default()).unwrap();
    assert_eq!(w.end_offset(t, 0), 0);
    assert_eq!(w.recovery().segments_deleted, 1);
    let mut txn = w.begin();
    txn.append(t, 1, b"c", b"d");
    txn.commit(&marker(3, &[])).unwrap();
    let r = LogReader::open(&dir, "x").unwrap();
    assert_eq!(
        read_all(&r, 1, 0, 5),
        vec![(0, b"c".to_vec(), b"d".to_vec())]
    );
    assert_eq!(w.end_offset(t, 0), 0);
}

#[test]
fn concurrent_reader_sees_only_committed_prefixes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let opts = LogOptions {
        fsync: FsyncPolicy::Never,
        segment_bytes: 4096,
        journal_compact_bytes: 2048,
    };
    let mut w = LogWriter::open(&dir, opts).unwrap();
    let t = w.ensure_topic("t", 2).unwrap();
    const TXNS: u64 = 300;
    let reader_dir = dir.clone();
    let reader = std::thread::spawn(move || {
        let mut r = LogReader::open(&reader_dir, "t").unwrap();
        let mut cursors: Vec<Cursor> = (0..2).map(|p| r.cursor(p, 0).unwrap()).collect();
        let mut buf = RecordBuf::new();
        let mut next = [0u64; 2];
        let mut refreshes = 0;
        while next[0] < TXNS * 3 || next[1] < TXNS {
            r.refresh().unwrap();
            refreshes += 1;
            // Commits are atomic across partitions: p0 gets 3 records per txn, p1 one.
            assert_eq!(r.committed_end(0), 3 * r.committed_end(1));
            for p in 0..2u32 {
                buf.clear();
                cursors[p as usize].read(&r, 7, &mut buf).unwrap();
                for rec in buf.iter() {
                    assert_eq!(rec.offset, next[p as usize]);
                    assert_eq!(rec.key, key(rec.offset), "partition {p}");
                    next[p as usize] += 1;
                }
            }
        }
        refreshes
    });
    for i in 0..TXNS {
        let mut txn = w.begin();
        for j in 0..3 {
            txn.append(t, 0, &key(i * 3 + j), &value(i, 40));
        }
        txn.append(t, 1, &key(i), b"");
        if i % 5 == 0 {
            // Aborted work interleaved with the commits.
            drop(txn);
            let mut txn = w.begin();
            for j in 0..3 {
                txn.append(t, 0, &key(i * 3 + j), &value(i, 40));
            }
            txn.append(t, 1, &key(i), b"");
            txn.commit(&marker(i, &[])).unwrap();
        } else {
            txn.commit(&marker(i, &[])).unwrap();
        }
    }
    let refreshes = reader.join().unwrap();
    assert!(refreshes > 1);
}

// ---------------------------------------------------------------------------------
// Model-based property test

#[derive(Debug, Clone)]
enum Op {
    Append {
        topic: usize,
        part: u32,
        key: Vec<u8>,
        vlen: usize,
    },
    Commit {
        epoch: u64,
        inputs: Vec<(usize, u32, u64)>,
    },
    Abort,
    Reopen,
    /// Simulated crash in the middle of a commit: junk (or a complete but
    /// uncommitted batch) after a partition's data and a partial journal entry.
    Crash {
        topic: usize,
        part: u32,
        garbage: Vec<u8>,
        valid_batch: bool,
    },
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..2usize, 0..3u32, prop::collection::vec(any::<u8>(), 0..6), 0..200usize)
            .prop_map(|(topic, part, key, vlen)| Op::Append { topic, part, key, vlen }),
        3 => (any::<u16>(), prop::collection::vec((0..2usize, 0..3u32, 0..1000u64), 0..3))
            .prop_map(|(epoch, inputs)| Op::Commit { epoch: epoch as u64, inputs }),
        1 => Just(Op::Abort),
        1 => Just(Op::Reopen),
        1 => (0..2usize, 0..3u32, prop::collection::vec(any::<u8>(), 1..80), any::<bool>())
            .prop_map(|(topic, part, garbage, valid_batch)| Op::Crash { topic, part, garbage, valid_batch }),
    ]
}

const TOPICS: [&str; 2] = ["t0", "t1"];
const SOURCES: [&str; 2] = ["s0", "s1"];

#[derive(Default)]
struct Model {
    data: HashMap<(usize, u32), Vec<Kv>>,
    pending: Vec<(usize, u32, Vec<u8>, Vec<u8>)>,
    inputs: BTreeMap<(String, u32), u64>,
    last: Option<CommitMarker>,
    txns: u64,
}

fn check_against_model(
    w: &LogWriter,
    m: &Model,
    readers: &mut [LogReader],
    cursors: &mut [Vec<Cursor>],
    seen: &mut [Vec<Vec<Kv>>],
) {
    for (ti, name) in TOPICS.iter().enumerate() {
        let (id, parts) = w.topic(name).unwrap();
        let r = &mut readers[ti];
        r.refresh().unwrap();
        for p in 0..parts {
            let want = m.data.get(&(ti, p)).map(Vec::as_slice).unwrap_or(&[]);
            assert_eq!(w.end_offset(id, p), want.len() as u64);
            assert_eq!(r.committed_end(p), want.len() as u64);
            // Incremental cursor.
            let mut buf = RecordBuf::new();
            let c = &mut cursors[ti][p as usize];
            while c.read(r, 5, &mut buf).unwrap() > 0 {}
            let s = &mut seen[ti][p as usize];
            for rec in buf.iter() {
                assert_eq!(rec.offset, s.len() as u64);
                s.push((rec.key.to_vec(), rec.value.to_vec()));
            }
            assert_eq!(s.as_slice(), want);
        }
    }
    for (si, src) in SOURCES.iter().enumerate() {
        let want: Vec<(u32, u64)> = m
            .inputs
            .iter()
            .filter(|((s, _), _)| s == SOURCES[si])
            .map(|((_, p), &o)| (*p, o))
            .collect();
        assert_eq!(w.committed_inputs(src), want);
    }
    assert_eq!(w.last_marker(), m.last.as_ref());
    assert_eq!(w.last_txn_id(), m.txns);
}

/// A temporary directory on tmpfs when available (the model test checks logic, not
/// durability, and creates many stores).
fn fast_tempdir() -> tempfile::TempDir {
    match Path::new("/dev/shm") {
        shm if shm.is_dir() => {
            tempfile::tempdir_in(shm).unwrap_or_else(|_| tempfile::tempdir().unwrap())
        }
        _ => tempfile::tempdir().unwrap(),
    }
}

fn run_model(ops: Vec<Op>) {
    let tmp = fast_tempdir();
    let dir = tmp.path();
    let opts = LogOptions {
        fsync: FsyncPolicy::Never,
        segment_bytes: 256,
        journal_compact_bytes: 500,
    };
    let mut w = Some(LogWriter::open(dir, opts.clone()).unwrap());
    let ids: Vec<TopicId> = TOPICS
        .iter()
        .enumerate()
        .map(|(i, n)| w.as_mut().unwrap().ensure_topic(n, 2 + i as u32).unwrap())
        .collect();
    let mut readers: Vec<LogReader> = TOPICS
        .iter()
        .map(|n| LogReader::open(dir, n).unwrap())
        .collect();
    let mut cursors: Vec<Vec<Cursor>> = readers
        .iter()
        .map(|r| {
            (0..r.partitions())
                .map(|p| r.cursor(p, 0).unwrap())
                .collect()
        })
        .collect();
    let mut seen: Vec<Vec<Vec<Kv>>> = readers
        .iter()
        .map(|r| vec![Vec::new(); r.partitions() as usize])
        .collect();
    let mut m = Model::default();
    for op in ops {
        match op {
            Op::Append {
                topic,
                part,
                key,
                vlen,
            } => {
                let part = part % (2 + topic as u32);
                let v = value(m.pending.len() as u64 + key.len() as u64, vlen);
                m.pending.push((topic, part, key, v));
            }
            Op::Commit { epoch, inputs } => {
                let w = w.as_mut().unwrap();
                let mut txn = w.begin();
                for (t, p, k, v) in &m.pending {
                    txn.append(ids[*t], *p, k, v);
                }
                let mk = CommitMarker {
                    epoch,
                    inputs: inputs
                        .iter()
                        .map(|&(s, p, o)| (SOURCES[s].to_string(), p, o))
                        .collect(),
                };
                let info = txn.commit(&mk).unwrap();
                assert_eq!(info.records, m.pending.len() as u64);
                for (t, p, k, v) in m.pending.drain(..) {
                    m.data.entry((t, p)).or_default().push((k, v));
                }
                for (s, p, o) in &mk.inputs {
                    m.inputs.insert((s.clone(), *p), *o);
                }
                m.last = Some(mk);
                m.txns += 1;
            }
            Op::Abort => {
                let w = w.as_mut().unwrap();
                let mut txn = w.begin();
                for (t, p, k, v) in &m.pending {
                    txn.append(ids[*t], *p, k, v);
                }
                drop(txn);
                m.pending.clear();
            }
            Op::Reopen => {
                m.pending.clear();
                drop(w.take());
                w = Some(LogWriter::open(dir, opts.clone()).unwrap());
            }
            Op::Crash {
                topic,
                part,
                garbage,
                valid_batch,
            } => {
                m.pending.clear();
                drop(w.take());
                let part = part % (2 + topic as u32);
                let end = m.data.get(&(topic, part)).map_or(0, |v| v.len() as u64);
                let mut bytes = garbage.clone();
                if valid_batch {
                    let mut payload = Vec::new();
                    format::encode_record(&mut payload, b"ghost", &garbage);
                    bytes = format::encode_batch_header(end, 1, 0, &payload).to_vec();
                    bytes.extend_from_slice(&payload);
                }
                match segment_files(dir, TOPICS[topic], part).pop() {
                    Some(seg) => append_bytes(&seg, &bytes),
                    None => {
                        let pdir = dir
                            .join("topics")
                            .join(TOPICS[topic])
                            .join(part.to_string());
                        fs::write(pdir.join(format::segment_file_name(0)), &bytes).unwrap();
                    }
                }
                let mut entry = Vec::new();
                format::encode_entry(
                    &mut entry,
                    1,
                    m.txns + 1,
                    0,
                    &[(ids[topic], part, end + 1)],
                    std::iter::empty(),
                    None,
                );
                let cut = garbage.len() % entry.len();
                append_bytes(&dir.join("journal"), &entry[..cut]);
                w = Some(LogWriter::open(dir, opts.clone()).unwrap());
            }
        }
        check_against_model(
            w.as_ref().unwrap(),
            &m,
            &mut readers,
            &mut cursors,
            &mut seen,
        );
    }
    drop(w);
    let w = LogWriter::open(dir, opts).unwrap();
    check_against_model(&w, &m, &mut readers, &mut cursors, &mut seen);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn random_histories_match_model(ops in prop::collection::vec(op_strategy(), 1..80)) {
        run_model(ops);
    }
}
