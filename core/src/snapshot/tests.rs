//! Tests of the snapshot format: round trips, lookups, damage of every kind,
//! selection and retention.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use proptest::prelude::*;

use super::format::{self, HEADER_LEN, RkyvFormat};
use super::select::{RetentionInput, plan_retention};
use super::*;

const NO_FSYNC: WriteOptions = WriteOptions { fsync: false };

fn fp() -> Fingerprint {
    Fingerprint::new()
        .with("key field", "account")
        .with("shards", "1")
        .with("aggregate", "[aggregate]\nname = \"account\"\n".repeat(10))
}

fn key(i: u64) -> Vec<u8> {
    format!("ACC-{i:07}").into_bytes()
}

fn state(i: u64, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i as usize * 31 + j * 7) as u8).collect()
}

fn inputs(n: u64) -> Vec<InputOffset> {
    vec![
        InputOffset {
            source: "commands".into(),
            partition: 0,
            next_offset: n,
        },
        InputOffset {
            source: "commands".into(),
            partition: 1,
            next_offset: n / 2,
        },
    ]
}

/// Writes a one-shard snapshot of `entries` (+ `extras`) for `epoch`; returns the
/// snapshot directory.
fn write_one(
    root: &Path,
    epoch: u64,
    entries: &[(Vec<u8>, u64, Vec<u8>)],
    extras: &[Extra<'_>],
    fingerprint: &Fingerprint,
) -> PathBuf {
    let set = SnapshotWriter::create(root, epoch, 1, NO_FSYNC).unwrap();
    let mut w = set.shard(0).unwrap();
    for (k, s, st) in entries {
        w.push(k, *s, st).unwrap();
    }
    for x in extras {
        w.push_extra(*x).unwrap();
    }
    let info = w.finish().unwrap();
    let dir = set.dir().to_path_buf();
    set.commit(vec![info], fingerprint, inputs(epoch)).unwrap();
    dir
}

fn entries(n: u64, state_len: usize) -> Vec<(Vec<u8>, u64, Vec<u8>)> {
    (0..n)
        .map(|i| (key(i), i * 3 + 1, state(i, state_len)))
        .collect()
}

fn shard_path(dir: &Path, shard: u32) -> PathBuf {
    dir.join(format::shard_file_name(shard))
}

/// Recomputes a shard file's body and header checksums (to get past them).
fn reseal(bytes: &mut [u8]) {
    let body_crc = crc32c::crc32c(&bytes[HEADER_LEN..]);
    bytes[20..24].copy_from_slice(&body_crc.to_le_bytes());
    let h = crc32c::crc32c(&bytes[0..60]);
    bytes[60..64].copy_from_slice(&h.to_le_bytes());
}

fn held() -> Extra<'static> {
    Extra {
        kind: "held",
        key: b"ACC-0000003",
        seq: 9,
        source: "commands",
        partition: 1,
        offset: 77,
        data: b"{\"account\":\"ACC-0000003\",\"seq\":9}",
    }
}

fn check_all(s: &ShardSnapshot, want: &[(Vec<u8>, u64, Vec<u8>)]) {
    assert_eq!(s.len(), want.len() as u64);
    for (k, seq, st) in want {
        let e = s.get(k).unwrap_or_else(|| panic!("key {k:?} missing"));
        assert_eq!((e.key, e.seq, e.state), (&k[..], *seq, &st[..]));
    }
    let got: Vec<(Vec<u8>, u64, Vec<u8>)> = s
        .iter()
        .map(|e| (e.key.to_vec(), e.seq, e.state.to_vec()))
        .collect();
    assert_eq!(got, want, "iteration returns the entries in write order");
    s.verify_index().unwrap();
}

// -------------------------------------------------------------------------------------
// Round trips

#[test]
fn round_trip_every_key_over_several_chunks() {
    let root = tempfile::tempdir().unwrap();
    // 150 000 keys: three chunks (2^16 entries each), the last one partial.
    let want = entries(150_000, 16);
    let dir = write_one(root.path(), 5, &want, &[held()], &fp());
    let snap = Snapshot::open(&dir, &fp()).unwrap();
    assert_eq!(snap.epoch(), 5);
    assert_eq!(snap.inputs(), &inputs(5)[..]);
    assert_eq!(snap.manifest().keys(), 150_000);
    let s = &snap.shards()[0];
    check_all(s, &want);
    for i in 150_000..160_000 {
        assert!(s.get(&key(i)).is_none(), "key {i} was never written");
    }
    assert!(s.get(b"").is_none());
    assert_eq!(s.extras().collect::<Vec<_>>(), vec![held()]);
}

#[test]
fn empty_keys_states_and_shards() {
    let root = tempfile::tempdir().unwrap();
    let want = vec![
        (Vec::new(), 0, Vec::new()),
        (b"k".to_vec(), u64::MAX, Vec::new()),
        (b"long".repeat(100), 7, vec![0xff; 5000]),
    ];
    let dir = write_one(root.path(), 1, &want, &[], &fp());
    let s = ShardSnapshot::open(&shard_path(&dir, 0)).unwrap();
    check_all(&s, &want);

    let dir = write_one(root.path(), 2, &[], &[], &fp());
    let s = ShardSnapshot::open(&shard_path(&dir, 0)).unwrap();
    assert!(s.is_empty());
    assert_eq!(s.iter().count(), 0);
    assert!(s.get(b"anything").is_none());
    assert_eq!(s.extras().count(), 0);
    s.verify_index().unwrap();
}

#[test]
fn multi_shard_snapshot_with_shard_writers_on_threads() {
    let root = tempfile::tempdir().unwrap();
    let set = SnapshotWriter::create(root.path(), 12, 4, NO_FSYNC).unwrap();
    let infos: Vec<ShardFileInfo> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..4u32)
            .map(|shard| {
                let mut w = set.shard(shard).unwrap();
                sc.spawn(move || {
                    for i in (shard as u64..1000).step_by(4) {
                        w.push(&key(i), i, &state(i, 10)).unwrap();
                    }
                    w.finish().unwrap()
                })
            })
            .collect();
        // Finished in any order.
        hs.into_iter().rev().map(|h| h.join().unwrap()).collect()
    });
    let m = set.commit(infos, &fp(), inputs(1000)).unwrap();
    assert_eq!(m.shards.len(), 4);
    assert_eq!(m.keys(), 1000);
    let snap = Snapshot::open(&root.path().join(format::snapshot_dir_name(12)), &fp()).unwrap();
    assert_eq!(snap.manifest(), &m);
    for (shard, s) in snap.shards().iter().enumerate() {
        assert_eq!((s.shard(), s.shards(), s.epoch()), (shard as u32, 4, 12));
        assert_eq!(s.len(), 250);
        for i in 0..1000u64 {
            assert_eq!(s.get(&key(i)).is_some(), i % 4 == shard as u64);
        }
    }
    // Redistribution: every entry of every shard, to be rehashed by the caller.
    let all: u64 = snap
        .into_shards()
        .iter()
        .map(|s| s.iter().count() as u64)
        .sum();
    assert_eq!(all, 1000);
}

#[test]
fn fsynced_write_and_manifest_file() {
    let root = tempfile::tempdir().unwrap();
    let set = SnapshotWriter::create(root.path(), 3, 1, WriteOptions::default()).unwrap();
    let mut w = set.shard(0).unwrap();
    w.push(b"a", 1, b"x").unwrap();
    let info = w.finish().unwrap();
    assert_eq!(info.file, "shard-00000.snap");
    let dir = set.dir().to_path_buf();
    set.commit(vec![info], &fp(), inputs(1)).unwrap();
    let names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "no temp files left: {names:?}");
    let text = fs::read_to_string(dir.join(format::MANIFEST_FILE)).unwrap();
    assert!(
        text.starts_with("onceflow-snapshot-manifest 1 crc32c="),
        "{text}"
    );
    assert!(text.contains(&RkyvFormat::current().to_string()), "{text}");
    assert!(text.contains("\"key field\""), "{text}");
}

/// 1M bank-account-like entries (11-byte keys, 64-byte states). Ignored by default:
/// about 7 s in a debug build on the project's 2-core machine, and the 150 000-key
/// test above covers the same paths (several chunks). `benches/snapshot.rs` measures
/// 1M entries in release. Run with `cargo test -p onceflow-core snapshot -- --ignored`.
#[test]
#[ignore = "1M keys take ~7 s in a debug build; the 150k-key test covers the same paths"]
fn million_keys_round_trip() {
    let root = tempfile::tempdir().unwrap();
    let n = 1_000_000u64;
    let set = SnapshotWriter::create(root.path(), 1, 1, NO_FSYNC).unwrap();
    let mut w = set.shard(0).unwrap();
    let mut st = [0u8; 64];
    for i in 0..n {
        st[..8].copy_from_slice(&i.to_le_bytes());
        w.push(format!("ACC-{i:07}").as_bytes(), i, &st).unwrap();
    }
    let info = w.finish().unwrap();
    let dir = set.dir().to_path_buf();
    set.commit(vec![info], &fp(), inputs(n)).unwrap();
    let s = ShardSnapshot::open(&shard_path(&dir, 0)).unwrap();
    assert_eq!(s.len(), n);
    for i in (0..n).step_by(7) {
        let e = s.get(format!("ACC-{i:07}").as_bytes()).unwrap();
        assert_eq!((e.seq, &e.state[..8]), (i, &i.to_le_bytes()[..]));
    }
    assert!(s.get(b"ACC-9999999").is_none());
    assert_eq!(s.iter().count() as u64, n);
}

// -------------------------------------------------------------------------------------
// Damage

/// A small shard file: 12 keys and one extra record.
fn small_file(root: &Path) -> (PathBuf, Vec<u8>) {
    let dir = write_one(root, 4, &entries(12, 5), &[held()], &fp());
    let p = shard_path(&dir, 0);
    let b = fs::read(&p).unwrap();
    (p, b)
}

#[test]
fn every_bit_flip_is_detected() {
    let root = tempfile::tempdir().unwrap();
    let (p, bytes) = small_file(root.path());
    ShardSnapshot::from_bytes(&p, &bytes).unwrap();
    for i in 0..bytes.len() {
        for bit in 0..8 {
            let mut b = bytes.clone();
            b[i] ^= 1 << bit;
            match ShardSnapshot::from_bytes(&p, &b) {
                Ok(_) => panic!("flip of bit {bit} of byte {i} went unnoticed"),
                Err(e) => {
                    assert!(e.is_unusable_snapshot(), "{e}");
                    assert!(e.to_string().contains(p.to_str().unwrap()), "{e}");
                }
            }
        }
    }
}

#[test]
fn bit_flip_in_a_file_is_reported_by_name_and_region() {
    let root = tempfile::tempdir().unwrap();
    let (p, mut bytes) = small_file(root.path());
    bytes[HEADER_LEN + 3] ^= 0x10;
    fs::write(&p, &bytes).unwrap();
    let e = Snapshot::open(p.parent().unwrap(), &fp()).unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, SnapshotError::Checksum { region: "body", .. }),
        "{msg}"
    );
    assert!(
        msg.contains("shard-00000.snap") && msg.contains("checksum mismatch in the body"),
        "{msg}"
    );
}

#[test]
fn truncation_at_every_length_is_detected() {
    let root = tempfile::tempdir().unwrap();
    let (p, bytes) = small_file(root.path());
    for len in 0..bytes.len() {
        match ShardSnapshot::from_bytes(&p, &bytes[..len]) {
            Err(SnapshotError::Truncated {
                expected, actual, ..
            }) => {
                assert_eq!(actual, len as u64);
                let want = if len < HEADER_LEN {
                    HEADER_LEN
                } else {
                    bytes.len()
                };
                assert_eq!(expected, want as u64);
            }
            other => panic!("truncated to {len}: {other:?}"),
        }
    }
    // The same through the file system and the manifest.
    fs::write(&p, &bytes[..bytes.len() - 1]).unwrap();
    let e = Snapshot::open(p.parent().unwrap(), &fp()).unwrap_err();
    assert!(matches!(e, SnapshotError::Truncated { .. }), "{e}");
    assert!(e.to_string().contains("shard-00000.snap"), "{e}");
    // Bytes appended are no better.
    let mut longer = bytes.clone();
    longer.push(0);
    let e = ShardSnapshot::from_bytes(&p, &longer).unwrap_err();
    assert!(matches!(e, SnapshotError::Corrupt { .. }), "{e}");
}

#[test]
fn wrong_format_version_is_named() {
    let root = tempfile::tempdir().unwrap();
    let (p, mut bytes) = small_file(root.path());
    bytes[8..10].copy_from_slice(&2u16.to_le_bytes());
    reseal(&mut bytes);
    let e = ShardSnapshot::from_bytes(&p, &bytes).unwrap_err();
    assert!(
        e.to_string()
            .ends_with("wrong format version 2 (this build reads 1)"),
        "{e}"
    );
    // The manifest's version.
    let mpath = p.parent().unwrap().join(format::MANIFEST_FILE);
    let text = fs::read_to_string(&mpath).unwrap();
    fs::write(&mpath, text.replacen("manifest 1 ", "manifest 7 ", 1)).unwrap();
    let e = Snapshot::open(p.parent().unwrap(), &fp()).unwrap_err();
    assert!(
        matches!(
            e,
            SnapshotError::WrongVersion {
                found: 7,
                supported: 1,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("MANIFEST"), "{e}");
}

#[test]
fn other_rkyv_format_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let (p, mut bytes) = small_file(root.path());
    let other = RkyvFormat {
        pointer_width: 64,
        ..RkyvFormat::current()
    };
    bytes[10..12].copy_from_slice(&other.code().to_le_bytes());
    reseal(&mut bytes);
    let e = ShardSnapshot::from_bytes(&p, &bytes).unwrap_err();
    assert!(matches!(e, SnapshotError::WrongRkyvFormat { .. }), "{e}");
    assert!(e.to_string().contains("pointer_width_64"), "{e}");
    assert_eq!(
        RkyvFormat::from_code(RkyvFormat::current().code()),
        Some(RkyvFormat::current())
    );
    assert_eq!(
        RkyvFormat::current().to_string(),
        "rkyv-0.8 little_endian aligned pointer_width_32"
    );
}

#[test]
fn foreign_pipeline_names_what_changed() {
    let root = tempfile::tempdir().unwrap();
    let old = Fingerprint::new()
        .with("key field", "account")
        .with("shards", "4")
        .with("aggregate", "x".repeat(500))
        .with("upcast", "v1");
    let dir = write_one(root.path(), 3, &entries(3, 4), &[], &old);
    let now = Fingerprint::new()
        .with("key field", "account")
        .with("shards", "8")
        .with("aggregate", "y".repeat(500))
        .with("projections", "balances");
    let e = Snapshot::open(&dir, &now).unwrap_err();
    let SnapshotError::ForeignPipeline { changes, .. } = &e else {
        panic!("{e}");
    };
    let names: Vec<&str> = changes.iter().map(|c| c.component.as_str()).collect();
    assert_eq!(names, ["shards", "aggregate", "projections", "upcast"]);
    let msg = e.to_string();
    assert!(
        msg.contains("MANIFEST belongs to another pipeline"),
        "{msg}"
    );
    assert!(msg.contains("shards (snapshot: 4, now: 8)"), "{msg}");
    // Long values are shown by digest in the manifest; the message just says "changed".
    assert!(msg.contains("aggregate changed"), "{msg}");
    assert!(
        msg.contains("projections (not in the snapshot; now: balances)"),
        "{msg}"
    );
    assert!(
        msg.contains("upcast (snapshot: v1; not in this pipeline)"),
        "{msg}"
    );
    assert!(!msg.contains("key field"), "{msg}");
    // The same pipeline opens it.
    Snapshot::open(&dir, &old).unwrap();
}

#[test]
fn manifest_damage_is_detected() {
    let root = tempfile::tempdir().unwrap();
    let dir = write_one(root.path(), 3, &entries(3, 4), &[], &fp());
    let mpath = dir.join(format::MANIFEST_FILE);
    let bytes = fs::read(&mpath).unwrap();
    Manifest::decode(&mpath, &bytes).unwrap();
    for len in 0..bytes.len() {
        assert!(
            Manifest::decode(&mpath, &bytes[..len]).is_err(),
            "truncated to {len}"
        );
    }
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x04;
        assert!(Manifest::decode(&mpath, &b).is_err(), "flip in byte {i}");
    }
    // A correctly sealed manifest that lies about a file name (path traversal).
    let mut m = Manifest::decode(&mpath, &bytes).unwrap();
    m.shards[0].file = "../../etc/passwd".into();
    let e = Manifest::decode(&mpath, &m.encode()).unwrap_err();
    assert!(
        e.to_string()
            .contains("expected shard 0 in \"shard-00000.snap\""),
        "{e}"
    );
}

#[test]
fn shard_file_from_another_snapshot_is_a_mismatch() {
    let root = tempfile::tempdir().unwrap();
    let a = write_one(root.path(), 3, &entries(5, 4), &[], &fp());
    let b = write_one(root.path(), 4, &entries(5, 4), &[], &fp());
    fs::copy(shard_path(&a, 0), shard_path(&b, 0)).unwrap();
    let e = Snapshot::open(&b, &fp()).unwrap_err();
    assert!(
        e.to_string()
            .contains("epoch is 3 in the file but 4 in the manifest"),
        "{e}"
    );
}

#[test]
fn resealed_garbage_bodies_never_panic() {
    // Past the checksums: random bodies under a valid header must be refused by rkyv
    // validation or the shape checks, or be readable without panicking.
    let root = tempfile::tempdir().unwrap();
    let (p, bytes) = small_file(root.path());
    let mut rng = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for round in 0..3000 {
        let mut b = bytes.clone();
        let flips = 1 + next() % 4;
        for _ in 0..flips {
            let at = HEADER_LEN + (next() as usize % (b.len() - HEADER_LEN));
            b[at] = next() as u8;
        }
        if round % 3 == 0 {
            // Also damage header fields, then reseal.
            let at = 12 + (next() as usize % 44);
            b[at] = next() as u8;
        }
        reseal(&mut b);
        if let Ok(s) = ShardSnapshot::from_bytes(&p, &b) {
            for e in s.iter() {
                let _ = s.get(e.key);
            }
            let _ = s.extras().count();
            let _ = s.verify_index();
        }
    }
}

// -------------------------------------------------------------------------------------
// Writer edge cases

#[test]
fn complete_snapshot_is_not_overwritten_and_incomplete_one_is_cleared() {
    let root = tempfile::tempdir().unwrap();
    write_one(root.path(), 3, &entries(2, 1), &[], &fp());
    let e = SnapshotWriter::create(root.path(), 3, 1, NO_FSYNC).unwrap_err();
    assert!(matches!(e, SnapshotError::AlreadyExists { .. }), "{e}");

    // A crash after one shard file: no manifest.
    let set = SnapshotWriter::create(root.path(), 4, 2, NO_FSYNC).unwrap();
    let mut w = set.shard(0).unwrap();
    w.push(b"a", 1, b"b").unwrap();
    w.finish().unwrap();
    let w1 = set.shard(1).unwrap();
    drop(w1); // abandoned: its temp file goes
    let dir = set.dir().to_path_buf();
    assert!(!dir.join("shard-00001.snap.tmp").exists());
    drop(set);
    let sel = select(root.path(), 10, &fp()).unwrap();
    assert_eq!(sel.snapshot.unwrap().epoch(), 3);
    assert!(matches!(sel.skipped[0].reason, SkipReason::Incomplete));

    // Starting epoch 4 again clears the leftover.
    let set = SnapshotWriter::create(root.path(), 4, 2, NO_FSYNC).unwrap();
    assert_eq!(fs::read_dir(set.dir()).unwrap().count(), 0);
    assert!(set.shard(2).is_err());
    let e = set.commit(vec![], &fp(), vec![]).unwrap_err();
    assert!(matches!(e, SnapshotError::InvalidArgument(_)), "{e}");
    assert!(SnapshotWriter::create(root.path(), 5, 0, NO_FSYNC).is_err());
}

#[test]
fn handles_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send::<ShardWriter>();
    check::<ShardSnapshot>();
    check::<Snapshot>();
    check::<SnapshotError>();
}

#[test]
fn size_limit_is_enforced_before_the_format_overflows() {
    // The real limit is 2 GiB (32-bit relative pointers); the same checks with 64 KiB.
    let root = tempfile::tempdir().unwrap();
    let set = SnapshotWriter::create(root.path(), 1, 2, NO_FSYNC).unwrap();
    let limit = (1 << 16) + 4096;
    let mut w = set.shard(0).unwrap();
    w.max_body_bytes = limit;
    let mut pushed = 0u64;
    let e = loop {
        match w.push(&key(pushed), pushed, &state(pushed, 40)) {
            Ok(()) => pushed += 1,
            Err(e) => break e,
        }
    };
    assert!(matches!(e, SnapshotError::TooLarge { .. }), "{e}");
    assert!(pushed > 10, "{pushed}");
    // What was accepted still makes a valid file within the limit.
    let info = w.finish().unwrap();
    assert!(info.bytes - HEADER_LEN as u64 <= limit, "{info:?}");
    let s = ShardSnapshot::open(&set.dir().join(&info.file)).unwrap();
    assert_eq!(s.len(), pushed);

    let mut w = set.shard(1).unwrap();
    w.max_body_bytes = limit;
    let data = vec![7u8; 3000];
    let mut extras = 0;
    let e = loop {
        match w.push_extra(Extra {
            data: &data,
            ..held()
        }) {
            Ok(()) => extras += 1,
            Err(e) => break e,
        }
    };
    assert!(e.to_string().contains("shard-00001.snap"), "{e}");
    let info = w.finish().unwrap();
    assert!(info.bytes - HEADER_LEN as u64 <= limit, "{info:?}");
    assert_eq!(info.extras, extras);
}

// -------------------------------------------------------------------------------------
// Selection and retention

#[test]
fn selection_skips_uncommitted_incomplete_and_damaged_snapshots() {
    let root = tempfile::tempdir().unwrap();
    for epoch in [10, 20, 30] {
        write_one(root.path(), epoch, &entries(epoch, 3), &[], &fp());
    }
    fs::create_dir(root.path().join(format::snapshot_dir_name(25))).unwrap();

    // 30 is newer than the committed epoch: not yet usable.
    let sel = select(root.path(), 29, &fp()).unwrap();
    assert_eq!(sel.snapshot.as_ref().unwrap().epoch(), 20);
    let why: Vec<(u64, String)> = sel
        .skipped
        .iter()
        .map(|s| (s.epoch, s.reason.to_string()))
        .collect();
    assert_eq!(
        why,
        [
            (
                30,
                "epoch 30 is not committed (last committed epoch: 29)".to_string()
            ),
            (25, "incomplete (no manifest)".to_string()),
        ]
    );
    assert_eq!(
        select(root.path(), 30, &fp())
            .unwrap()
            .snapshot
            .unwrap()
            .epoch(),
        30
    );

    // Damage 20: 10 is used, and the report names 20's file.
    let p20 = shard_path(&root.path().join(format::snapshot_dir_name(20)), 0);
    let mut b = fs::read(&p20).unwrap();
    let last = b.len() - 1;
    b[last] ^= 1;
    fs::write(&p20, b).unwrap();
    let sel = select(root.path(), 29, &fp()).unwrap();
    assert_eq!(sel.snapshot.as_ref().unwrap().epoch(), 10);
    let s20 = sel.skipped.iter().find(|s| s.epoch == 20).unwrap();
    let SkipReason::Invalid(e) = &s20.reason else {
        panic!("{:?}", s20.reason);
    };
    assert!(e.to_string().contains(p20.to_str().unwrap()), "{e}");

    // Nothing committed that far back: full replay.
    let sel = select(root.path(), 9, &fp()).unwrap();
    assert!(sel.snapshot.is_none());
    assert_eq!(sel.skipped.len(), 4);
    // A foreign pipeline: every snapshot skipped, each saying why.
    let other = fp().with("shards", "2");
    let sel = select(root.path(), 100, &other).unwrap();
    assert!(sel.snapshot.is_none());
    assert!(sel.skipped.iter().any(|s| {
        s.reason
            .to_string()
            .contains("shards (snapshot: 1, now: 2)")
    }));
}

#[test]
fn retention_keeps_the_newest_committed_and_removes_leftovers() {
    let root = tempfile::tempdir().unwrap();
    for epoch in [10, 20, 30, 40, 50] {
        write_one(root.path(), epoch, &entries(2, 3), &[], &fp());
    }
    fs::create_dir(root.path().join(format::snapshot_dir_name(25))).unwrap();
    fs::create_dir(root.path().join(format::snapshot_dir_name(60))).unwrap();
    fs::write(root.path().join("stray.tmp"), b"x").unwrap();
    fs::write(root.path().join("notes.txt"), b"not ours").unwrap();
    // 40's manifest is damaged: it does not count as one of the kept.
    let m40 = root
        .path()
        .join(format::snapshot_dir_name(40))
        .join(format::MANIFEST_FILE);
    fs::write(&m40, b"onceflow-snapshot-manifest 1 crc32c=00000000\n{}").unwrap();

    let r = retain(root.path(), 2, 45).unwrap();
    assert_eq!(r.kept, [50, 30, 20]);
    let left: Vec<u64> = list(root.path()).unwrap().iter().map(|d| d.epoch).collect();
    assert_eq!(left, [60, 50, 30, 20], "60 may be in progress");
    assert!(!root.path().join("stray.tmp").exists());
    assert!(root.path().join("notes.txt").exists());
    assert_eq!(r.removed.len(), 4);

    // keep = 0 still keeps the newest committed one.
    let r = retain(root.path(), 0, 100).unwrap();
    assert_eq!(r.kept, [50]);
    assert_eq!(
        select(root.path(), 100, &fp())
            .unwrap()
            .snapshot
            .unwrap()
            .epoch(),
        50
    );
}

#[test]
fn retention_plan() {
    let d = |epoch, usable| RetentionInput { epoch, usable };
    // Newest first.
    let dirs = [
        d(60, false),
        d(50, true),
        d(40, true),
        d(30, false),
        d(20, true),
        d(10, true),
    ];
    assert_eq!(plan_retention(&dirs, 1, 100), [2, 3, 4, 5]);
    assert_eq!(plan_retention(&dirs, 2, 100), [3, 4, 5]);
    assert_eq!(
        plan_retention(&dirs, 0, 100),
        [2, 3, 4, 5],
        "keep 0 means 1"
    );
    // Uncommitted snapshots are kept on top of `keep`.
    assert_eq!(plan_retention(&dirs, 1, 45), [3, 4, 5]);
    assert_eq!(plan_retention(&dirs, 1, 15), [3]);
    // Nothing usable: nothing removed.
    assert!(plan_retention(&[d(5, false), d(4, false)], 1, 10).is_empty());
}

// -------------------------------------------------------------------------------------
// Properties

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn prop_round_trip(
        map in prop::collection::btree_map(
            prop::collection::vec(any::<u8>(), 0..40),
            (any::<u64>(), prop::collection::vec(any::<u8>(), 0..100)),
            0..300,
        ),
        absent in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..20),
    ) {
        let root = tempfile::tempdir().unwrap();
        let want: Vec<(Vec<u8>, u64, Vec<u8>)> =
            map.iter().map(|(k, (s, st))| (k.clone(), *s, st.clone())).collect();
        let dir = write_one(root.path(), 1, &want, &[held()], &fp());
        let s = ShardSnapshot::open(&shard_path(&dir, 0)).unwrap();
        check_all(&s, &want);
        let by_key: BTreeMap<&[u8], _> = want.iter().map(|(k, s, st)| (&k[..], (*s, &st[..]))).collect();
        for k in &absent {
            prop_assert_eq!(s.get(k).map(|e| (e.seq, e.state)), by_key.get(&k[..]).copied());
        }
    }
}
