//! Replays the checked-in seeds through the harnesses without libFuzzer
//! (`cd fuzz && cargo test`). Extra inputs to replay, e.g. a crash found by
//! `scripts/fuzz`: `ONCEFLOW_FUZZ_REPLAY=<target>:<file> cargo test -- --nocapture`.

use std::fs;
use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds").join(target);
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
fn log_open_seeds_get_deep() {
    use onceflow_fuzz::log_open::{Outcome, run_outcome};
    let seed = |name: &str| {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds/log_open").join(name);
        let o = run_outcome(&fs::read(p).unwrap());
        eprintln!("{name}: {o:?}");
        o
    };
    let o = seed("one-commit-then-commit");
    assert_eq!(o, Outcome { read_before: Some(3), writer_opened: true, committed: true, read_after: Some(4) });
    let o = seed("three-commits-2-parts");
    assert_eq!((o.read_before, o.writer_opened, o.read_after), (Some(6), true, Some(6)));
    let o = seed("two-segments");
    assert_eq!((o.read_before, o.committed, o.read_after), (Some(4), true, Some(5)));
    assert!(fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds/log_open/two-segments")).unwrap()[0] & onceflow_fuzz::log_open::F_TWO_SEGMENTS != 0);
    let o = seed("three-commits-compact");
    assert!(o.committed);
    assert_eq!(seed("torn-tails").read_after, Some(6));
    assert!(!seed("bad-crc").writer_opened);
    assert!(seed("bad-crc-fixed").committed);
    assert!(seed("raw-meta").writer_opened);
}
