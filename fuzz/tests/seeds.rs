//! Replays the checked-in seeds through the harnesses without libFuzzer
//! (`cd fuzz && cargo test`). Extra inputs to replay, e.g. a crash found by
//! `scripts/fuzz`: `ONCEFLOW_FUZZ_REPLAY=<target>:<file> cargo test -- --nocapture`.

use std::fs;
use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join(target);
    let mut n = 0;
    for e in fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        eprintln!("{target}: {}", p.display());
        run(&fs::read(&p).unwrap());
        n += 1;
    }
    assert!(n > 0, "no seeds in {}", dir.display());
    if let Ok(spec) = std::env::var("ONCEFLOW_FUZZ_REPLAY")
        && let Some((t, file)) = spec.split_once(':')
        && t == target
    {
        run(&fs::read(file).unwrap());
    }
}

#[test]
fn log_open_seeds() {
    replay("log_open", onceflow_fuzz::log_open::run);
}

#[test]
fn decode_seeds() {
    replay("decode", onceflow_fuzz::decode::run);
}

#[test]
fn config_seeds() {
    replay("config", onceflow_fuzz::config::run);
}

#[test]
fn expr_seeds() {
    replay("expr", onceflow_fuzz::expr::run);
}

#[test]
fn snapshot_open_seeds() {
    replay("snapshot_open", onceflow_fuzz::snapshot_open::run);
}

#[test]
fn snapshot_open_seeds_get_deep() {
    use onceflow_fuzz::snapshot_open::run_outcome;
    let seed = |name: &str| {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("seeds/snapshot_open")
            .join(name);
        let o = run_outcome(&fs::read(p).unwrap());
        eprintln!("{name}: {o:?}");
        o
    };
    for name in [
        "five-keys",
        "five-keys-gen-manifest",
        "sealed-json-manifest",
        "empty-shard",
    ] {
        let o = seed(name);
        assert!(o.snapshot_opened && o.selected, "{name}: {o:?}");
    }
    let o = seed("truncated-fixed-length");
    assert!(o.manifest_decoded && !o.shard_opened, "{o:?}");
}

#[test]
fn log_open_seeds_get_deep() {
    use onceflow_fuzz::log_open::{Outcome, run_outcome};
    let seed = |name: &str| {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("seeds/log_open")
            .join(name);
        let o = run_outcome(&fs::read(p).unwrap());
        eprintln!("{name}: {o:?}");
        o
    };
    let o = seed("one-commit-then-commit");
    assert_eq!(
        o,
        Outcome {
            read_before: Some(3),
            writer_opened: true,
            committed: true,
            read_after: Some(4)
        }
    );
    let o = seed("three-commits-2-parts");
    assert_eq!(
        (o.read_before, o.writer_opened, o.read_after),
        (Some(6), true, Some(6))
    );
    let o = seed("two-segments");
    assert_eq!(
        (o.read_before, o.committed, o.read_after),
        (Some(4), true, Some(5))
    );
    assert!(
        fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds/log_open/two-segments"))
            .unwrap()[0]
            & onceflow_fuzz::log_open::F_TWO_SEGMENTS
            != 0
    );
    let o = seed("three-commits-compact");
    assert!(o.committed);
    assert_eq!(seed("torn-tails").read_after, Some(6));
    assert!(!seed("bad-crc").writer_opened);
    assert!(seed("bad-crc-fixed").committed);
    assert!(seed("raw-meta").writer_opened);
}

#[test]
fn meta_numbers_seed_commits() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds/log_open/meta-numbers");
    let o = onceflow_fuzz::log_open::run_outcome(&fs::read(p).unwrap());
    assert!(o.committed, "{o:?}");
}

/// Inputs of bugs found by fuzzing, kept under `regressions/<target>/` until fixed
/// (then move them to `seeds/<target>/`). Each must finish within 20 s without a
/// panic or an absurd allocation (which aborts): `cargo test -- --ignored regressions`.
/// Every input runs in a child process (this test binary again), so one abort or hang
/// does not hide the others.
#[test]
#[ignore = "runs the inputs of open bugs, if any; run with --ignored to check fixes"]
fn regressions() {
    if let Ok(file) = std::env::var("ONCEFLOW_FUZZ_REGRESSION_FILE") {
        onceflow_fuzz::log_open::run(&fs::read(file).unwrap());
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("regressions/log_open");
    if !dir.is_dir() {
        return; // no open bugs
    }
    let mut failed = Vec::new();
    let mut files: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for p in files {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "regressions",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("ONCEFLOW_FUZZ_REGRESSION_FILE", &p)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let start = std::time::Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break Some(s);
            }
            if start.elapsed() > std::time::Duration::from_secs(20) {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        let mut err = String::new();
        if status.is_some() {
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
        }
        let first = err
            .lines()
            .find(|l| l.contains("panicked") || l.contains("absurd allocation"))
            .unwrap_or("")
            .to_string();
        match status {
            Some(s) if s.success() => eprintln!("ok: {}", p.display()),
            Some(s) => failed.push(format!("{} ({s}): {first}", p.display())),
            None => failed.push(format!("{}: hung (> 20 s)", p.display())),
        }
    }
    assert!(failed.is_empty(), "{failed:#?}");
}
