//! `snapshot_open` target: the input is a snapshot's manifest and one shard file.
//!
//! # Input layout
//!
//! ```text
//! 0      u8   flags (F_*)
//! 1..3   u16  manifest length M (little endian, clamped to what is left)
//! 3..         M manifest bytes | shard file bytes
//! ```
//!
//! Then, on the bytes as given (after the `F_*` repairs):
//!
//! 1. `ShardSnapshot::from_bytes` on the shard file bytes; if it opens, every entry is
//!    looked up by its key, a few absent keys too, the extras are read and
//!    `verify_index` runs. Where `verify_index` passes, every key must be found.
//! 2. `Manifest::decode` on the manifest bytes; a manifest that decodes must encode
//!    and decode to itself.
//! 3. Both are written as `ROOT/snapshot-<epoch>/{MANIFEST, shard-00000.snap}` and go
//!    through `ShardSnapshot::open` (the memory-mapped path), `Snapshot::open`,
//!    `select` and `retain`.
//!
//! Nothing may panic.

use crate::scratch::Scratch;
use std::fs;
use std::path::Path;

use onceflow_core::snapshot::format::{MANIFEST_FILE, shard_file_name, snapshot_dir_name};
use onceflow_core::snapshot::{
    Fingerprint, Manifest, ShardFileInfo, ShardSnapshot, Snapshot, retain, select,
};

/// Recompute the shard file's body and header checksums, so the fuzzer can reach the
/// rkyv validation and what lies behind it.
pub const F_FIX_SHARD_CRC: u8 = 0x01;
/// The manifest bytes are the JSON part only: prefix the header line with the right
/// version and checksum.
pub const F_SEAL_MANIFEST: u8 = 0x02;
/// Ignore the manifest bytes: generate a valid manifest that describes the shard file
/// as its header presents it (size, keys, extras, epoch, checksum).
pub const F_GEN_MANIFEST: u8 = 0x04;
/// Also fix the shard file's header so that its body length matches the file.
pub const F_FIX_BODY_LEN: u8 = 0x08;

const HEADER: usize = 3;
const HEADER_LEN: usize = onceflow_core::snapshot::format::HEADER_LEN;
const MANIFEST_MAGIC_LINE: &str = "onceflow-snapshot-manifest 1";

/// A decoded input.
#[derive(Debug, Clone, Default)]
pub struct SnapshotInput {
    /// `F_*` bits.
    pub flags: u8,
    /// Manifest bytes.
    pub manifest: Vec<u8>,
    /// Shard file bytes.
    pub shard: Vec<u8>,
}

impl SnapshotInput {
    /// Parses the input layout described in the module docs.
    pub fn parse(data: &[u8]) -> SnapshotInput {
        let mut h = [0u8; HEADER];
        let n = data.len().min(HEADER);
        h[..n].copy_from_slice(&data[..n]);
        let rest = &data[n..];
        let m = (u16::from_le_bytes([h[1], h[2]]) as usize).min(rest.len());
        SnapshotInput {
            flags: h[0],
            manifest: rest[..m].to_vec(),
            shard: rest[m..].to_vec(),
        }
    }

    /// Encodes back into the input layout (used to make seeds).
    pub fn encode(&self) -> Vec<u8> {
        let m = u16::try_from(self.manifest.len()).expect("seed manifest too large");
        let mut v = vec![self.flags];
        v.extend_from_slice(&m.to_le_bytes());
        v.extend_from_slice(&self.manifest);
        v.extend_from_slice(&self.shard);
        v
    }
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Applies `F_FIX_BODY_LEN` and `F_FIX_SHARD_CRC` to a shard file.
fn repair_shard(flags: u8, s: &mut [u8]) {
    if s.len() < HEADER_LEN {
        return;
    }
    if flags & F_FIX_BODY_LEN != 0 {
        let body = (s.len() - HEADER_LEN) as u64;
        s[32..40].copy_from_slice(&body.to_le_bytes());
    }
    if flags & (F_FIX_SHARD_CRC | F_FIX_BODY_LEN) != 0 {
        let body_crc = crc32c::crc32c(&s[HEADER_LEN..]);
        s[20..24].copy_from_slice(&body_crc.to_le_bytes());
        let h = crc32c::crc32c(&s[0..60]);
        s[60..64].copy_from_slice(&h.to_le_bytes());
    }
}

/// The manifest file to write.
fn manifest_file(inp: &SnapshotInput, shard: &[u8]) -> Vec<u8> {
    if inp.flags & F_GEN_MANIFEST != 0 {
        return generated_manifest(shard).encode();
    }
    if inp.flags & F_SEAL_MANIFEST != 0 {
        let crc = crc32c::crc32c(&inp.manifest);
        let mut out = format!("{MANIFEST_MAGIC_LINE} crc32c={crc:08x}\n").into_bytes();
        out.extend_from_slice(&inp.manifest);
        return out;
    }
    inp.manifest.clone()
}

/// A manifest that agrees with the shard file's header (as far as it has one).
pub fn generated_manifest(shard: &[u8]) -> Manifest {
    let h = |at: usize, len: usize| shard.len() >= at + len;
    let epoch = if h(24, 8) { le_u64(shard, 24) } else { 1 };
    Manifest {
        format_version: 1,
        rkyv_format: onceflow_core::snapshot::format::RkyvFormat::current().to_string(),
        epoch,
        fingerprint_digest: fingerprint().digest(),
        fingerprint: fingerprint(),
        inputs: Vec::new(),
        shards: vec![ShardFileInfo {
            shard: 0,
            file: shard_file_name(0),
            bytes: shard.len() as u64,
            keys: if h(40, 8) { le_u64(shard, 40) } else { 0 },
            extras: if h(48, 8) { le_u64(shard, 48) } else { 0 },
            body_crc32c: if h(20, 4) { le_u32(shard, 20) } else { 0 },
        }],
    }
}

/// The fingerprint of generated manifests and seeds.
pub fn fingerprint() -> Fingerprint {
    Fingerprint::new()
        .with("key field", "account")
        .with("shards", "1")
}

/// Reads everything an open shard offers.
fn exercise(s: &ShardSnapshot) {
    let index_ok = s.verify_index().is_ok();
    let mut n = 0u64;
    for e in s.iter() {
        let found = s.get(e.key);
        if index_ok {
            let f = found.expect("verify_index passed, but a key is not found");
            assert_eq!(f.key, e.key);
        }
        n += 1;
    }
    assert_eq!(n, s.len(), "iteration and key count disagree");
    for k in [
        &b""[..],
        b"ACC-0000000",
        b"\xff\xff\xff\xff\xff\xff\xff\xff\xff",
    ] {
        let _ = s.get(k);
    }
    for x in s.extras() {
        let _ = (x.kind.len(), x.key.len(), x.source.len(), x.data.len());
    }
}

/// How far one input got (for the seed tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    /// `ShardSnapshot::from_bytes` succeeded.
    pub shard_opened: bool,
    /// The manifest file decoded.
    pub manifest_decoded: bool,
    /// `Snapshot::open` succeeded on the written files.
    pub snapshot_opened: bool,
    /// `select` chose the snapshot.
    pub selected: bool,
}

/// Runs one input.
pub fn run(data: &[u8]) {
    run_outcome(data);
}

/// Runs one input and tells how far it got.
pub fn run_outcome(data: &[u8]) -> Outcome {
    let mut o = Outcome::default();
    let inp = SnapshotInput::parse(data);
    let mut shard = inp.shard.clone();
    repair_shard(inp.flags, &mut shard);

    // 1. The shard file alone, in memory.
    let fake = Path::new("fuzz/shard-00000.snap");
    if let Ok(s) = ShardSnapshot::from_bytes(fake, &shard) {
        o.shard_opened = true;
        exercise(&s);
    }

    // 2. The manifest alone.
    let mbytes = manifest_file(&inp, &shard);
    let mpath = Path::new("fuzz/MANIFEST");
    let manifest = Manifest::decode(mpath, &mbytes).ok();
    if let Some(m) = &manifest {
        o.manifest_decoded = true;
        let again = Manifest::decode(mpath, &m.encode()).expect("a decoded manifest re-encodes");
        assert_eq!(&again, m, "manifest encode/decode round trip");
    }

    // 3. Files: the memory-mapped path, the whole snapshot, selection, retention.
    let scratch = Scratch::new("snap");
    let epoch = manifest.as_ref().map_or(1, |m| m.epoch);
    let dir = scratch.0.join(snapshot_dir_name(epoch));
    fs::create_dir_all(&dir).unwrap();
    let spath = dir.join(shard_file_name(0));
    fs::write(&spath, &shard).unwrap();
    fs::write(dir.join(MANIFEST_FILE), &mbytes).unwrap();
    if let Ok(s) = ShardSnapshot::open(&spath) {
        assert!(o.shard_opened, "the file opens mapped but not from bytes");
        exercise(&s);
    } else {
        assert!(!o.shard_opened, "the file opens from bytes but not mapped");
    }
    let expected = manifest
        .as_ref()
        .map_or_else(fingerprint, |m| m.fingerprint.clone());
    if let Ok(snap) = Snapshot::open(&dir, &expected) {
        o.snapshot_opened = true;
        assert!(o.manifest_decoded && o.shard_opened);
        for s in snap.shards() {
            exercise(s);
        }
    }
    match select(&scratch.0, u64::MAX, &expected) {
        Ok(sel) => {
            o.selected = sel.snapshot.is_some();
            assert_eq!(o.selected, o.snapshot_opened, "select and open disagree");
            for s in &sel.skipped {
                let _ = s.reason.to_string();
            }
        }
        Err(e) => panic!("select failed on a readable directory: {e}"),
    }
    if let Err(e) = retain(&scratch.0, 1, u64::MAX) {
        panic!("retain failed on a writable directory: {e}");
    }
    o
}
