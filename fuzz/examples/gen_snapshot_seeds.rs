//! Regenerates the checked-in seeds of the `snapshot_open` target:
//!
//! ```text
//! cd fuzz && cargo run --example gen_snapshot_seeds -- seeds
//! ```
//!
//! The seeds are real snapshots written by `SnapshotWriter` (a manifest and one shard
//! file), packed into the target's input layout (see `onceflow_fuzz::snapshot_open`),
//! plus a few damaged variants.

use std::fs;
use std::path::PathBuf;

use onceflow_core::snapshot::{Extra, InputOffset, SnapshotWriter, WriteOptions};
use onceflow_fuzz::snapshot_open::*;

/// Writes a one-shard snapshot with `keys` accounts (and one held record when
/// `extra`); returns (manifest file, shard file).
fn snapshot(tmp: &std::path::Path, epoch: u64, keys: u64, extra: bool) -> (Vec<u8>, Vec<u8>) {
    let set = SnapshotWriter::create(tmp, epoch, 1, WriteOptions { fsync: false }).unwrap();
    let mut w = set.shard(0).unwrap();
    for i in 0..keys {
        let state = [i as u8; 12];
        w.push(format!("ACC-{i:07}").as_bytes(), i + 1, &state)
            .unwrap();
    }
    if extra {
        w.push_extra(Extra {
            kind: "held",
            key: b"ACC-0000001",
            seq: 4,
            source: "commands",
            partition: 0,
            offset: 17,
            data: br#"{"account":"ACC-0000001","seq":4}"#,
        })
        .unwrap();
    }
    let info = w.finish().unwrap();
    let dir = set.dir().to_path_buf();
    let inputs = vec![InputOffset {
        source: "commands".into(),
        partition: 0,
        next_offset: 18,
    }];
    set.commit(vec![info], &fingerprint(), inputs).unwrap();
    (
        fs::read(dir.join("MANIFEST")).unwrap(),
        fs::read(dir.join("shard-00000.snap")).unwrap(),
    )
}

fn main() {
    let out = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "seeds".into()));
    let tmp = std::env::temp_dir().join(format!("onceflow-gen-snap-seeds-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).unwrap();

    let mut seeds: Vec<(&str, SnapshotInput)> = Vec::new();
    let (manifest, shard) = snapshot(&tmp, 7, 5, true);
    seeds.push((
        "five-keys",
        SnapshotInput {
            flags: 0,
            manifest: manifest.clone(),
            shard: shard.clone(),
        },
    ));
    seeds.push((
        "five-keys-gen-manifest",
        SnapshotInput {
            flags: F_GEN_MANIFEST,
            manifest: Vec::new(),
            shard: shard.clone(),
        },
    ));
    // The JSON part of the manifest only, sealed by the harness.
    let json = manifest[manifest.iter().position(|&b| b == b'\n').unwrap() + 1..].to_vec();
    seeds.push((
        "sealed-json-manifest",
        SnapshotInput {
            flags: F_SEAL_MANIFEST,
            manifest: json,
            shard: shard.clone(),
        },
    ));
    let (m0, s0) = snapshot(&tmp, 8, 0, false);
    seeds.push((
        "empty-shard",
        SnapshotInput {
            flags: 0,
            manifest: m0,
            shard: s0,
        },
    ));
    // A damaged body, resealed: rkyv validation has to judge it.
    let mut bad = shard.clone();
    let at = bad.len() - 20;
    bad[at] ^= 0x80;
    seeds.push((
        "resealed-damage",
        SnapshotInput {
            flags: F_FIX_SHARD_CRC | F_GEN_MANIFEST,
            manifest: Vec::new(),
            shard: bad,
        },
    ));
    // Truncated, with the body length fixed up to match.
    let cut = shard[..shard.len() / 2].to_vec();
    seeds.push((
        "truncated-fixed-length",
        SnapshotInput {
            flags: F_FIX_BODY_LEN | F_GEN_MANIFEST,
            manifest: Vec::new(),
            shard: cut,
        },
    ));

    let dir = out.join("snapshot_open");
    fs::create_dir_all(&dir).unwrap();
    for (name, s) in &seeds {
        fs::write(dir.join(name), s.encode()).unwrap();
    }
    fs::remove_dir_all(&tmp).unwrap();
    println!(
        "wrote {} snapshot_open seeds under {}",
        seeds.len(),
        out.display()
    );
}
