//! Regenerates the checked-in seeds of the `log_open` and `decode` targets:
//!
//! ```text
//! cd fuzz && cargo run --example gen_seeds -- seeds
//! ```
//!
//! `log_open` seeds are real stores written by `LogWriter`, packed into the target's
//! input layout (see `onceflow_fuzz::log_open`), plus a few damaged variants.

use std::fs;
use std::path::{Path, PathBuf};

use onceflow_core::log::{CommitMarker, FsyncPolicy, LogOptions, LogWriter};
use onceflow_fuzz::log_open::*;

/// Builds a store with `commits` transactions of `per_txn` records into partition 0
/// of topic `t` (`parts` partitions); returns the packed input.
fn store(tmp: &Path, parts: u32, commits: u32, per_txn: u32, segment_bytes: u64) -> StoreInput {
    let dir = tmp.join(format!("s-{parts}-{commits}-{per_txn}-{segment_bytes}"));
    let _ = fs::remove_dir_all(&dir);
    let opts = LogOptions {
        fsync: FsyncPolicy::Never,
        segment_bytes,
        ..LogOptions::default()
    };
    let mut w = LogWriter::open(&dir, opts).unwrap();
    let t = w.ensure_topic("t", parts).unwrap();
    for c in 0..commits {
        let mut txn = w.begin();
        for r in 0..per_txn {
            txn.append(
                t,
                0,
                format!("k{r}").as_bytes(),
                format!("{{\"v\":{c}}}").as_bytes(),
            );
        }
        txn.commit(&CommitMarker {
            epoch: c as u64 + 1,
            inputs: vec![("src".into(), 0, (c * per_txn) as u64)],
        })
        .unwrap();
    }
    drop(w);
    let pdir = dir.join("topics/t/0");
    let mut segs: Vec<(u64, Vec<u8>)> = fs::read_dir(&pdir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .map(|p| {
            let base = p.file_stem().unwrap().to_str().unwrap().parse().unwrap();
            (base, fs::read(&p).unwrap())
        })
        .collect();
    segs.sort();
    segs.truncate(2);
    let mut flags = ((parts - 1) as u8) << 2;
    if segs.len() == 2 {
        flags |= F_TWO_SEGMENTS;
    }
    StoreInput {
        flags,
        flags2: 0,
        journal: fs::read(dir.join("journal")).unwrap(),
        meta: Vec::new(),
        segments: segs,
    }
}

fn main() {
    let out = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "seeds".into()));
    let tmp = std::env::temp_dir().join(format!("onceflow-gen-seeds-{}", std::process::id()));
    fs::create_dir_all(&tmp).unwrap();

    let mut seeds: Vec<(&str, StoreInput)> = Vec::new();
    seeds.push(("empty", store(&tmp, 1, 0, 0, 1 << 20)));
    let one = store(&tmp, 1, 1, 3, 1 << 20);
    seeds.push(("one-commit", one.clone()));
    let mut commit = one.clone();
    commit.flags |= F_COMMIT;
    seeds.push(("one-commit-then-commit", commit));
    let three = store(&tmp, 2, 3, 2, 1 << 20);
    seeds.push(("three-commits-2-parts", three.clone()));
    let mut compact = three.clone();
    compact.flags2 |= G_COMPACT | G_MID;
    compact.flags |= F_COMMIT;
    seeds.push(("three-commits-compact", compact));
    let mut rolled = store(&tmp, 1, 2, 2, 100);
    rolled.flags |= F_COMMIT;
    rolled.flags2 |= G_SMALL_SEGMENTS;
    seeds.push(("two-segments", rolled));
    // A torn journal tail and uncommitted segment bytes: recovery truncates both.
    let mut torn = three.clone();
    torn.journal.extend_from_slice(&[20, 0, 0, 0, 1, 2, 3]);
    torn.segments[0]
        .1
        .extend_from_slice(b"OFLB\x01\x00\x00\x00");
    seeds.push(("torn-tails", torn));
    // A damaged committed batch (fixed up again by F_FIX_CRC).
    let mut bad = one.clone();
    let last = bad.segments[0].1.len() - 1;
    bad.segments[0].1[last] ^= 0x55;
    seeds.push(("bad-crc", bad.clone()));
    bad.flags |= F_FIX_CRC | F_COMMIT;
    seeds.push(("bad-crc-fixed", bad));
    // The raw meta path.
    let mut raw = one;
    raw.flags |= F_RAW_META;
    raw.meta = b"onceflow-topic-meta 1\nid 0\npartitions 2\n".to_vec();
    raw.flags2 |= G_JOURNAL_TMP | G_META_TMP;
    seeds.push(("raw-meta", raw.clone()));
    // The numeric meta path: topic id 0, 3 partitions.
    let mut numbers = raw;
    numbers.flags &= !F_RAW_META;
    numbers.flags |= F_COMMIT;
    numbers.flags2 = G_META_NUMBERS;
    numbers.meta = [0u32.to_le_bytes(), 3u32.to_le_bytes()].concat();
    seeds.push(("meta-numbers", numbers));

    let dir = out.join("log_open");
    fs::create_dir_all(&dir).unwrap();
    for (name, s) in &seeds {
        fs::write(dir.join(name), s.encode()).unwrap();
    }

    let decode: &[(&str, &[u8])] = &[
        (
            "flat",
            br#"{"id":"a-1","seq":3,"k":null,"other":[1,2,{"x":1}]}"#,
        ),
        (
            "nested",
            br#"{"id":7,"data":{"x":-1.5e3,"y":{"seq":18446744073709551615}},"k":true}"#,
        ),
        (
            "escapes",
            br#"{"id":"\u00e9\n\"q\"","data":{"x":"\ud83d\ude00"},"seq":-9223372036854775808}"#,
        ),
        ("data-scalar", br#"{"data":[1,{"x":2}],"seq":0.0}"#),
        ("not-object", b"[1,2,3]"),
        ("trailing", br#"{"id":1} {"id":2}"#),
    ];
    let dir = out.join("decode");
    fs::create_dir_all(&dir).unwrap();
    for (name, s) in decode {
        fs::write(dir.join(name), s).unwrap();
    }
    fs::remove_dir_all(&tmp).unwrap();
    println!(
        "wrote {} log_open and {} decode seeds under {}",
        seeds.len(),
        decode.len(),
        out.display()
    );
}
