//! `onceflow snapshot ls` and `onceflow snapshot inspect` on snapshots written through
//! the library: a valid one, a truncated one, one with a flipped byte, an incomplete one.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;
use onceflow_core::snapshot::format::snapshot_dir_name;
use onceflow_core::snapshot::{
    Extra, Fingerprint, InputOffset, ShardFileInfo, SnapshotWriter, WriteOptions,
};

const NO_FSYNC: WriteOptions = WriteOptions { fsync: false };

fn fingerprint() -> Fingerprint {
    Fingerprint::new()
        .with("key field", "account")
        .with("shards", "2")
        .with("aggregate", "[aggregate]\nname = \"account\"\n".repeat(4))
}

fn inputs() -> Vec<InputOffset> {
    let at = |source: &str, partition, next_offset| InputOffset {
        source: source.into(),
        partition,
        next_offset,
    };
    vec![
        at("commands", 0, 12),
        at("commands", 1, 8),
        at("refunds", 0, 10),
    ]
}

/// Writes the valid two-shard snapshot of `epoch` under `root`: three keys (one with
/// a binary state) and one held record. Returns its directory.
fn write_valid(root: &Path, epoch: u64) -> PathBuf {
    let set = SnapshotWriter::create(root, epoch, 2, NO_FSYNC).unwrap();
    let mut w0 = set.shard(0).unwrap();
    w0.push(b"ACC-1", 3, br#"{"balance":10}"#).unwrap();
    w0.push(b"ACC-2", 5, &[0, 1, 2, 255]).unwrap();
    w0.push_extra(Extra {
        kind: "held",
        key: b"ACC-2",
        seq: 7,
        source: "commands",
        partition: 1,
        offset: 8,
        data: br#"{"account":"ACC-2","seq":7}"#,
    })
    .unwrap();
    let mut w1 = set.shard(1).unwrap();
    w1.push(b"ACC-3", 1, br#"{"balance":-4}"#).unwrap();
    let files: Vec<ShardFileInfo> = vec![w0.finish().unwrap(), w1.finish().unwrap()];
    let dir = set.dir().to_path_buf();
    set.commit(files, &fingerprint(), inputs()).unwrap();
    dir
}

struct Fixture {
    _tmp: tempfile::TempDir,
    /// A pipeline state dir; the snapshots are in `state/snapshots`.
    state: PathBuf,
    root: PathBuf,
}

impl Fixture {
    fn dir(&self, epoch: u64) -> PathBuf {
        self.root.join(snapshot_dir_name(epoch))
    }
}

/// Epoch 2: a shard file cut short. Epoch 3: valid. Epoch 4: a flipped byte in the
/// body of shard 1 (sizes intact). Epoch 5: no manifest, shard 1's temp file left
/// behind (a crash while writing). Plus a stray temp file in the root.
fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let root = state.join("snapshots");

    let truncated = write_valid(&root, 2);
    let f = truncated.join("shard-00000.snap");
    let len = fs::metadata(&f).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .unwrap()
        .set_len(len - 10)
        .unwrap();

    write_valid(&root, 3);

    let flipped = write_valid(&root, 4);
    let f = flipped.join("shard-00001.snap");
    let mut bytes = fs::read(&f).unwrap();
    bytes[70] ^= 0x01; // inside the body (which starts at byte 64)
    fs::write(&f, bytes).unwrap();

    let set = SnapshotWriter::create(&root, 5, 2, NO_FSYNC).unwrap();
    let mut w0 = set.shard(0).unwrap();
    w0.push(b"ACC-1", 4, br#"{"balance":12}"#).unwrap();
    w0.finish().unwrap();
    let mut w1 = set.shard(1).unwrap();
    w1.push(b"ACC-3", 2, br#"{"balance":-1}"#).unwrap();
    // The process dies here: the writer never finishes (nor cleans up).
    std::mem::forget(w1);
    drop(set);

    fs::write(root.join("stray.tmp"), b"left by a crash").unwrap();
    Fixture {
        _tmp: tmp,
        state,
        root,
    }
}

fn run(args: &[&str], path: &Path, more: &[&str]) -> Output {
    bin()
        .args(["snapshot"])
        .args(args)
        .arg(path)
        .args(more)
        .output()
        .expect("run onceflow")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

/// The `ls` line of `epoch` and the note lines under it.
fn ls_entry(out: &str, epoch: u64) -> String {
    let epoch = epoch.to_string();
    let mut lines = out
        .lines()
        .skip_while(|l| l.split_whitespace().next() != Some(&epoch));
    let mut s = lines
        .next()
        .unwrap_or_else(|| panic!("no line for {epoch}:\n{out}"))
        .to_string();
    for l in lines.take_while(|l| l.starts_with("  ")) {
        s.push('\n');
        s.push_str(l);
    }
    s
}

fn status(o: &Output) -> i32 {
    o.status.code().expect("exited")
}

#[test]
fn ls_lists_newest_first_with_a_quick_check() {
    let fx = fixture();
    for dir in [&fx.root, &fx.state] {
        let o = run(&["ls"], dir, &[]);
        let out = stdout(&o);
        assert_eq!(status(&o), 0, "{out}{}", stderr(&o));
        assert!(
            out.starts_with(&format!("{}: 4 snapshots", fx.root.display())),
            "{out}"
        );
        let epochs: Vec<&str> = out
            .lines()
            .filter_map(|l| l.split(' ').next())
            .filter(|w| w.parse::<u64>().is_ok())
            .collect();
        assert_eq!(epochs, ["5", "4", "3", "2"], "{out}");

        let e5 = ls_entry(&out, 5);
        assert!(e5.contains("incomplete  -"), "{e5}");
        assert!(
            e5.contains("no MANIFEST (1 of its shard files written"),
            "{e5}"
        );
        assert!(e5.contains("temp files: shard-00001.snap.tmp"), "{e5}");

        // Sizes intact: the quick check cannot see the flipped byte.
        let e4 = ls_entry(&out, 4);
        assert!(e4.contains("complete    ok"), "{e4}");

        let e3 = ls_entry(&out, 3);
        assert!(e3.contains("complete    ok"), "{e3}");
        assert!(e3.contains(" 3 "), "three keys: {e3}");
        assert!(e3.contains("30 (commands 20, refunds 10)"), "{e3}");
        assert!(e3.contains("Z ("), "manifest time: {e3}");

        let e2 = ls_entry(&out, 2);
        assert!(e2.contains("complete    invalid"), "{e2}");
        assert!(
            e2.contains("is truncated") && e2.contains("shard-00000.snap"),
            "{e2}"
        );
        assert!(out.contains("leftover temp files in"), "{out}");
        assert!(out.contains("stray.tmp"), "{out}");
        assert!(
            out.ends_with("summary: 2 valid, 1 invalid, 1 incomplete\n"),
            "{out}"
        );
    }
}

#[test]
fn ls_verify_reads_every_file_and_names_the_damaged_one() {
    let fx = fixture();
    let o = run(&["ls", "--verify"], &fx.state, &[]);
    let out = stdout(&o);
    assert_eq!(status(&o), 0, "invalid snapshots are findings: {out}");
    assert!(out.contains("full check"), "{out}");
    let e4 = ls_entry(&out, 4);
    assert!(e4.contains("complete    invalid"), "{e4}");
    let f = fx.dir(4).join("shard-00001.snap");
    assert!(
        e4.contains(&format!(
            "invalid: snapshot file {}: checksum mismatch in the body",
            f.display()
        )),
        "{e4}"
    );
    assert!(ls_entry(&out, 3).contains("complete    ok"), "{out}");
    assert!(ls_entry(&out, 2).contains("invalid"), "{out}");
    assert!(
        out.ends_with("summary: 1 valid, 2 invalid, 1 incomplete\n"),
        "{out}"
    );
}

#[test]
fn ls_errors_and_usage() {
    let tmp = tempfile::tempdir().unwrap();
    let o = run(&["ls"], &tmp.path().join("nope"), &[]);
    assert_eq!(status(&o), 1);
    assert!(stderr(&o).contains("nope"), "{}", stderr(&o));

    let o = bin().args(["snapshot", "ls"]).output().unwrap();
    assert_eq!(status(&o), 2, "a missing argument is a usage error");

    let o = run(&["ls"], tmp.path(), &[]);
    assert_eq!(status(&o), 0);
    assert_eq!(
        stdout(&o),
        format!(
            "{}: 0 snapshots (quick check: manifest and file sizes; --verify reads every file)\n",
            tmp.path().display()
        )
    );
}

#[test]
fn inspect_a_valid_snapshot() {
    let fx = fixture();
    let o = run(&["inspect"], &fx.dir(3), &[]);
    let out = stdout(&o);
    assert_eq!(status(&o), 0, "{out}{}", stderr(&o));
    for want in [
        "epoch:       3\n",
        "format:      version 1, rkyv-0.8 little_endian aligned pointer_width_32\n",
        "fingerprint: digest ",
        "  NAME       DIGEST            VALUE\n",
        "  key field  ",
        " account\n",
        "  shards     ",
        "  aggregate  ",
        " 116 bytes, digest ",
        "inputs:      30 (commands 20, refunds 10)\n",
        "  SOURCE    PARTITION  NEXT OFFSET\n",
        "  commands          0           12\n",
        "  commands          1            8\n",
        "  refunds           0           10\n",
        "shards:      2, 3 keys, 1 extra, ",
        "valid:       yes\n",
    ] {
        assert!(out.contains(want), "{want:?} missing in:\n{out}");
    }
    let table: Vec<&str> = out.lines().filter(|l| l.contains("shard-0000")).collect();
    assert_eq!(table.len(), 2, "{out}");
    assert!(
        table[0]
            .trim_start()
            .starts_with("0  shard-00000.snap     2       1"),
        "{out}"
    );
    assert!(table[0].ends_with("  ok"), "{out}");
    assert!(
        table[1]
            .trim_start()
            .starts_with("1  shard-00001.snap     1       0"),
        "{out}"
    );

    // One shard file on its own (checked against the manifest next to it).
    let o = run(&["inspect"], &fx.dir(3).join("shard-00001.snap"), &[]);
    let out = stdout(&o);
    assert_eq!(status(&o), 0, "{out}{}", stderr(&o));
    for want in [
        "shard file ",
        "epoch:       3\n",
        "shard:       1 of 2\n",
        "keys:        1\n",
        "extras:      0\n",
        "crc32c:      ",
        "checked:     against the MANIFEST of its directory\n",
        "valid:       yes\n",
    ] {
        assert!(out.contains(want), "{want:?} missing in:\n{out}");
    }
}

#[test]
fn inspect_keys_and_key() {
    let fx = fixture();
    let o = run(&["inspect"], &fx.dir(3), &["--keys", "2"]);
    let out = stdout(&o);
    assert_eq!(status(&o), 0, "{out}{}", stderr(&o));
    let entries: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("entries (first 2):"))
        .collect();
    assert_eq!(entries.len(), 4, "{out}");
    assert_eq!(
        entries[1].split_whitespace().collect::<Vec<_>>(),
        ["SHARD", "KEY", "SEQ", "BYTES", "STATE"]
    );
    assert_eq!(
        entries[2].split_whitespace().collect::<Vec<_>>(),
        ["0", "\"ACC-1\"", "3", "14", r#""{\"balance\":10}""#]
    );
    assert_eq!(
        entries[3].split_whitespace().collect::<Vec<_>>(),
        ["0", "\"ACC-2\"", "5", "4", "0x000102ff"]
    );

    let o = run(&["inspect"], &fx.dir(3), &["--key", "ACC-3"]);
    assert_eq!(status(&o), 0);
    assert!(
        stdout(&o)
            .ends_with("key \"ACC-3\": shard 1, seq 1, state 14 B: \"{\\\"balance\\\":-4}\"\n"),
        "{}",
        stdout(&o)
    );
    let o = run(&["inspect"], &fx.dir(3), &["--key", "ACC-9"]);
    assert_eq!(status(&o), 0, "an absent key is an answer");
    assert!(
        stdout(&o).ends_with("key \"ACC-9\": absent\n"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn inspect_json() {
    let fx = fixture();
    let o = run(
        &["inspect"],
        &fx.dir(3),
        &["--json", "--keys", "5", "--key", "ACC-2"],
    );
    assert_eq!(status(&o), 0, "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["kind"], "snapshot");
    assert_eq!(v["valid"], true);
    assert_eq!(v["error"], serde_json::Value::Null);
    assert_eq!(v["epoch"], 3);
    assert_eq!(v["format_version"], 1);
    assert_eq!(
        v["rkyv_format"],
        "rkyv-0.8 little_endian aligned pointer_width_32"
    );
    let comps = v["fingerprint"]["components"].as_array().unwrap();
    let names: Vec<&str> = comps.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["key field", "shards", "aggregate"]);
    assert_eq!(comps[0]["value"], "account");
    assert_eq!(comps[0]["digest"].as_str().unwrap().len(), 16);
    assert_eq!(v["inputs"].as_array().unwrap().len(), 3);
    assert_eq!(
        v["inputs"][1],
        serde_json::json!({"source": "commands", "partition": 1, "next_offset": 8})
    );
    let shards = v["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 2);
    assert_eq!(shards[0]["keys"], 2);
    assert_eq!(shards[0]["shards"], 2);
    assert_eq!(shards[0]["extras"], 1);
    assert_eq!(shards[0]["valid"], true);
    assert_eq!(shards[0]["body_crc32c"].as_str().unwrap().len(), 8);
    assert_eq!(
        shards[1]["bytes"].as_u64().unwrap(),
        fs::metadata(fx.dir(3).join("shard-00001.snap"))
            .unwrap()
            .len()
    );
    let entries = v["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 3, "all three, fewer than --keys 5");
    assert_eq!(
        entries[1],
        serde_json::json!({"shard": 0, "key": "ACC-2", "seq": 5, "state_bytes": 4, "state_hex": "000102ff"})
    );
    assert_eq!(entries[2]["key"], "ACC-3");
    assert_eq!(v["lookup"]["found"], true);
    assert_eq!(v["lookup"]["entries"][0]["seq"], 5);
}

#[test]
fn inspect_damaged_snapshots_exits_1_and_names_the_file() {
    let fx = fixture();

    // A flipped byte: the manifest is fine, shard 1 is not.
    let o = run(&["inspect"], &fx.dir(4), &[]);
    let out = stdout(&o);
    assert_eq!(status(&o), 1, "{out}");
    let f = fx.dir(4).join("shard-00001.snap");
    assert!(
        out.contains(&format!(
            "invalid: snapshot file {}: checksum mismatch in the body",
            f.display()
        )),
        "{out}"
    );
    assert!(
        out.contains("valid:       no (1 of 2 shard files invalid)\n"),
        "{out}"
    );
    // Keys of the intact shard are still found; the damaged one is not searched.
    let o = run(&["inspect"], &fx.dir(4), &["--key", "ACC-1"]);
    let out = stdout(&o);
    assert_eq!(status(&o), 1);
    assert!(out.contains("key \"ACC-1\": shard 0, seq 3"), "{out}");
    assert!(
        out.contains("(not looked up in shard-00001.snap: invalid)"),
        "{out}"
    );

    let o = run(&["inspect"], &fx.dir(4), &["--json"]);
    assert_eq!(status(&o), 1);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["valid"], false);
    assert_eq!(v["shards"][0]["valid"], true);
    assert_eq!(v["shards"][1]["valid"], false);
    assert!(
        v["shards"][1]["error"]
            .as_str()
            .unwrap()
            .contains("checksum mismatch in the body"),
        "{v}"
    );

    // The same file on its own.
    let o = run(&["inspect"], &f, &[]);
    assert_eq!(status(&o), 1);
    assert!(stdout(&o).contains("checksum mismatch"), "{}", stdout(&o));

    // Truncated.
    let o = run(&["inspect"], &fx.dir(2), &[]);
    assert_eq!(status(&o), 1);
    assert!(stdout(&o).contains("is truncated"), "{}", stdout(&o));

    // Incomplete: no manifest; the finished shard file is still described.
    let o = run(&["inspect"], &fx.dir(5), &[]);
    let out = stdout(&o);
    assert_eq!(status(&o), 1, "{out}");
    assert!(
        out.contains("checked:     each shard file on its own (no usable MANIFEST)\n"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "problem:     incomplete: {} does not exist",
            fx.dir(5).join("MANIFEST").display()
        )),
        "{out}"
    );
    assert!(out.contains("temp files:  shard-00001.snap.tmp\n"), "{out}");
    assert!(
        out.contains("shards:      1 file present, 1 key, 0 extras, 180 B\n"),
        "{out}"
    );
    assert!(out.contains("shard-00000.snap     1       0"), "{out}");
    assert!(out.ends_with("valid:       no\n"), "{out}");

    // A foreign file, and garbage under a shard file's name.
    let junk = fx.state.join("junk.snap");
    fs::write(
        &junk,
        "definitely not a snapshot, but longer than its header. ".repeat(2),
    )
    .unwrap();
    for (path, want) in [
        (&junk, "not a snapshot shard file (bad magic)"),
        (&fx.root.join("stray.tmp"), "is truncated"),
    ] {
        let o = run(&["inspect"], path, &[]);
        let out = stdout(&o);
        assert_eq!(status(&o), 1, "{out}");
        assert!(
            out.contains(want) && out.contains(&path.display().to_string()),
            "{out}"
        );
    }
    let o = run(&["inspect"], &junk, &["--json", "--keys", "3"]);
    assert_eq!(status(&o), 1);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["valid"], false);
    assert_eq!(v["entries"], serde_json::json!([]));
}

#[test]
fn inspect_usage_and_io_errors() {
    let fx = fixture();
    let o = run(&["inspect"], &fx.root, &[]);
    assert_eq!(status(&o), 2, "a snapshots root is not a snapshot");
    assert!(
        stderr(&o).contains("onceflow snapshot ls"),
        "{}",
        stderr(&o)
    );
    let o = run(&["inspect"], &fx.root.join("missing"), &[]);
    assert_eq!(status(&o), 1);
    let o = run(&["inspect"], &fx.dir(3), &["--keys", "x"]);
    assert_eq!(status(&o), 2);
}

#[test]
fn a_damaged_manifest_is_reported_by_both_commands() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = write_valid(tmp.path(), 9);
    let manifest = dir.join("MANIFEST");
    let text = fs::read_to_string(&manifest).unwrap();
    fs::write(&manifest, text.replace("\"commands\"", "\"commandz\"")).unwrap();
    let want = format!(
        "snapshot file {}: checksum mismatch in the manifest",
        manifest.display()
    );

    let o = run(&["ls"], tmp.path(), &[]);
    let out = stdout(&o);
    assert_eq!(status(&o), 0, "{out}");
    let e9 = ls_entry(&out, 9);
    assert_eq!(
        e9.split_whitespace().take(4).collect::<Vec<_>>(),
        ["9", "complete", "invalid", "-"],
        "{e9}"
    );
    assert!(e9.contains(&format!("  invalid: {want}")), "{e9}");

    let o = run(&["inspect"], &dir, &["--json"]);
    assert_eq!(status(&o), 1);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["valid"], false);
    assert!(v["error"].as_str().unwrap().starts_with(&want), "{v}");
    assert_eq!(v["fingerprint"], serde_json::Value::Null);
    // The shard files are still checked, each on its own.
    assert_eq!(v["shards"][0]["valid"], true);
    assert_eq!(v["shards"][1]["keys"], 1);
}

/// `onceflow gen bank` lines.
fn bank_lines(accounts: &str, events: &str, seed: &str) -> Vec<String> {
    let out = run_ok(bin().args([
        "gen",
        "bank",
        "--accounts",
        accounts,
        "--events",
        events,
        "--seed",
        seed,
    ]));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

const APPEND: &[&str] = &[
    "--topic",
    "entries",
    "--partitions",
    "2",
    "--key",
    "account",
];

#[test]
fn a_changed_pipeline_refuses_its_old_snapshot_until_rebuild() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let snap = "\n[snapshot]\nevery_epochs = 1\n";
    let pipeline = bank_pipeline(dir, "per_epoch", "20ms", snap);
    let lines = bank_lines("20", "3000", "7");
    let (first, second) = lines.split_at(1500);
    log_append(&dir.join("input"), APPEND, first);
    run_until_end(&pipeline);
    assert!(
        stdout(
            &bin()
                .args(["snapshot", "ls"])
                .arg(dir.join("state/snapshots"))
                .output()
                .unwrap()
        )
        .contains("valid"),
        "a snapshot was written"
    );

    // A new field in the view: the snapshot's state lacks it.
    let changed = bank_pipeline(
        dir,
        "per_epoch",
        "20ms",
        &format!("largest = {{ op = \"max\", field = \"amount\" }}\n{snap}"),
    );
    log_append(&dir.join("input"), APPEND, second);
    let refused = bin()
        .args(["run", "--until-end", "--quiet"])
        .arg(&changed)
        .output()
        .unwrap();
    let err = stderr(&refused);
    assert_eq!(status(&refused), 2, "{err}");
    assert!(
        err.contains("was written by a different pipeline: view"),
        "{err}"
    );
    assert!(
        err.contains(&format!("onceflow run {} --rebuild", changed.display())),
        "{err}"
    );
    // Refused before processing anything: the balances of the second half are not there.
    let before = compact(&dir.join("state"), "balances");

    let rebuilt = run_ok(
        bin()
            .args(["run", "--until-end", "--quiet", "--rebuild"])
            .arg(&changed),
    );
    let out = stdout(&rebuilt);
    assert!(out.contains("removed to rebuild the state"), "{out}");
    assert!(!out.contains("snapshot  restored"), "{out}");
    assert!(
        out.contains("recovery  replayed 1,500 committed records"),
        "{out}"
    );
    let after = compact(&dir.join("state"), "balances");
    assert_ne!(before, after);

    // The same as the new pipeline over everything from scratch, for every key the
    // second half touched (the others' committed rows predate the change).
    let fresh = tempfile::tempdir().unwrap();
    let fresh_pipeline = bank_pipeline(
        fresh.path(),
        "per_epoch",
        "20ms",
        &format!("largest = {{ op = \"max\", field = \"amount\" }}\n{snap}"),
    );
    log_append(&fresh.path().join("input"), APPEND, &lines);
    run_until_end(&fresh_pipeline);
    let expected = compact(&fresh.path().join("state"), "balances");
    let touched: std::collections::BTreeSet<String> = second
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["account"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(!touched.is_empty());
    for k in &touched {
        assert_eq!(after[k], expected[k], "account {k}");
        assert!(
            after[k].get("largest").is_some(),
            "account {k}: {}",
            after[k]
        );
    }

    // A restart now restores the snapshot written under the new definition.
    let again = run_until_end(&changed);
    assert!(again.contains("snapshot  restored epoch"), "{again}");

    // Another pipeline's snapshots (here: the same file renamed) are not refused, only
    // passed over with the reason: they were never this pipeline's state.
    let text = std::fs::read_to_string(&changed).unwrap();
    std::fs::write(
        &changed,
        text.replace("name = \"bank-test\"", "name = \"other\""),
    )
    .unwrap();
    let other = run_until_end(&changed);
    assert!(!other.contains("snapshot  restored"), "{other}");
    assert!(
        other.contains(
            "belongs to another pipeline: differs in pipeline (snapshot: bank-test, now: other)"
        ),
        "{other}"
    );
}
