//! End-to-end load generator for the bank pipeline on the embedded log.
//!
//! ```text
//! cargo bench --bench loadgen                 # full: 2M events x 3 runs, 10 s at 100k/s
//! cargo bench --bench loadgen -- --quick      # smoke: small and fast (what `cargo test --all-targets` runs)
//! cargo bench --bench loadgen -- --events 4000000 --runs 5 --rate 200000 --seconds 20
//! ```
//!
//! It measures, side by side in one process:
//! 1. **Throughput**: a backlog of `--events` bank entries (JSON) in the input log,
//!    processed by the pipeline of `examples/ledger` (2 shards, 100 ms epochs, fsync on
//!    every commit) until the end; events/s over the processing time. Median of `--runs`.
//! 2. **Baseline**: the same input read → parsed (serde_json) → folded (balance and
//!    count per account in a hash map) → written (one upsert per record to a buffered
//!    file) on one thread, with no sequence checks and no exactly-once; its median, and
//!    the ratio pipeline / baseline, from runs interleaved with the pipeline's.
//! 3. **Latency**: an open-loop producer appends `--rate` events/s (in 1 ms ticks) for
//!    `--seconds` while the pipeline tails the log; HdrHistogram of append → commit.
//!    With `--snapshot-every S`, twice side by side: without snapshots, then with
//!    `[snapshot] every = "Ss"`; each time the pipeline first processes the whole
//!    workload (`--accounts` keys of state) and restarts on it, so the snapshots written
//!    during the measurement are of the full state (and, with snapshots, the restart
//!    restores one); the first 5 s after the restart are offered but not measured.

use std::collections::HashMap;

// The same allocator as the `onceflow` binary (for the pipeline and the baseline alike).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use onceflow_core::config::Pipeline;
use onceflow_core::engine::{self, RunOptions};
use onceflow_core::hash::{PARTITION_SALT, bucket, stable_hash};
use onceflow_core::log::{CommitMarker, FsyncPolicy, LogOptions, LogReader, LogWriter, RecordBuf};
use onceflow_core::stats::Stats;
use onceflow_core::workload::{BankParams, write_bank};

const PARTITIONS: u32 = 4;

struct Args {
    events: u64,
    accounts: u64,
    runs: usize,
    rate: u64,
    seconds: u64,
    shards: usize,
    fsync: bool,
    /// Seconds between snapshots in the latency phase (`None`: one phase, no snapshots).
    snapshot_every: Option<u64>,
}

fn args() -> Args {
    let mut a = Args {
        events: 2_000_000,
        accounts: 100_000,
        runs: 3,
        rate: 100_000,
        seconds: 10,
        shards: 2,
        fsync: true,
        snapshot_every: None,
    };
    let raw: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes --bench; `cargo test --all-targets` does not: then this is a
    // smoke run (`--quick`, or ONCEFLOW_LOADGEN_ARGS for scripts/test --long).
    let argv: Vec<String> = if raw.iter().any(|a| a == "--bench") {
        raw.into_iter().filter(|s| s != "--bench").collect()
    } else {
        let args = std::env::var("ONCEFLOW_LOADGEN_ARGS").unwrap_or_else(|_| "--quick".into());
        args.split_whitespace().map(str::to_string).collect()
    };
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let mut val = || {
            it.next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("{flag} needs a number"))
        };
        match flag.as_str() {
            "--quick" => {
                a = Args {
                    events: 100_000,
                    accounts: 10_000,
                    runs: 1,
                    rate: 20_000,
                    seconds: 2,
                    shards: 2,
                    fsync: true,
                    snapshot_every: None,
                };
            }
            "--events" => a.events = val(),
            "--accounts" => a.accounts = val(),
            "--runs" => a.runs = val() as usize,
            "--rate" => a.rate = val(),
            "--seconds" => a.seconds = val(),
            "--shards" => a.shards = val() as usize,
            "--no-fsync" => a.fsync = false,
            "--snapshot-every" => a.snapshot_every = Some(val()),
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

fn pipeline(dir: &Path, shards: usize, fsync: bool, snapshot_every: Option<u64>) -> Pipeline {
    let mut src = include_str!("../examples/ledger/pipeline.toml")
        .replace("shards = 2", &format!("shards = {shards}"))
        .replace(
            "[pipeline]",
            if fsync {
                "[pipeline]"
            } else {
                "[pipeline]\nfsync = \"never\""
            },
        )
        .replace("load = \"events.jsonl\"", "");
    if let Some(s) = snapshot_every {
        src.push_str(&format!("\n[snapshot]\nevery = \"{s}s\"\n"));
    }
    Pipeline::parse(&src, dir).expect("example pipeline is valid")
}

/// Writes the workload into `dir/data/input` (no fsync: setup, not measured).
fn load_input(dir: &Path, lines: &[Vec<u8>]) {
    let mut w = LogWriter::open(
        &dir.join("data/input"),
        LogOptions {
            fsync: FsyncPolicy::Never,
            ..LogOptions::default()
        },
    )
    .unwrap();
    let t = w.ensure_topic("entries", PARTITIONS).unwrap();
    for chunk in lines.chunks(100_000) {
        let mut tx = w.begin();
        for l in chunk {
            let key = account_of(l);
            tx.append(
                t,
                bucket(stable_hash(key), PARTITION_SALT, PARTITIONS),
                key,
                l,
            );
        }
        tx.commit(&CommitMarker::default()).unwrap();
    }
}

/// `ACC-0000042` out of a generated line (fixed layout).
fn account_of(line: &[u8]) -> &[u8] {
    &line[12..23]
}

fn run_pipeline(
    dir: &Path,
    shards: usize,
    fsync: bool,
    until_end: bool,
    stop: Arc<AtomicBool>,
    stats: Arc<Stats>,
    snapshot_every: Option<u64>,
) -> engine::RunSummary {
    let p = pipeline(dir, shards, fsync, snapshot_every);
    engine::run(
        &p,
        RunOptions {
            until_end,
            stop,
            stats,
            ..RunOptions::default()
        },
    )
    .expect("pipeline run")
}

#[derive(serde::Deserialize)]
struct Entry<'a> {
    account: &'a str,
    amount: i64,
}

/// The floor: read → parse → fold → write on one thread, nothing else.
fn baseline(dir: &Path, out_path: &Path) -> (u64, Duration) {
    let started = Instant::now();
    let reader = LogReader::open(&dir.join("data/input"), "entries").unwrap();
    let mut state: HashMap<String, (i64, u64)> = HashMap::new();
    let mut out =
        std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(out_path).unwrap());
    let mut buf = RecordBuf::new();
    let mut n = 0u64;
    for p in 0..reader.partitions() {
        let mut c = reader.cursor(p, 0).unwrap();
        loop {
            buf.clear();
            if c.read(&reader, 4096, &mut buf).unwrap() == 0 {
                break;
            }
            for r in buf.iter() {
                let e: Entry = serde_json::from_slice(r.value).unwrap();
                let s = match state.get_mut(e.account) {
                    Some(s) => s,
                    None => state.entry(e.account.to_string()).or_default(),
                };
                s.0 += e.amount;
                s.1 += 1;
                writeln!(
                    out,
                    "{{\"key\":\"{}\",\"balance\":{},\"entries\":{}}}",
                    e.account, s.0, s.1
                )
                .unwrap();
                n += 1;
            }
        }
    }
    out.flush().unwrap();
    out.get_ref().sync_data().unwrap();
    (n, started.elapsed())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let a = args();
    println!(
        "loadgen: bank workload, {} events, {} accounts, {} shards, {} run(s); latency at {} events/s for {} s",
        a.events, a.accounts, a.shards, a.runs, a.rate, a.seconds
    );
    let params = BankParams {
        accounts: a.accounts,
        events: a.events,
        seed: 1,
        duplicate_rate: 0.0,
        reorder_rate: 0.0,
    };
    let mut raw = Vec::new();
    write_bank(&params, &mut raw).unwrap();
    let lines: Vec<Vec<u8>> = raw
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    drop(raw);
    let input = tempfile::tempdir().unwrap();
    load_input(input.path(), &lines);

    // 1 + 2: throughput and baseline, interleaved.
    let mut ours = Vec::new();
    let mut base = Vec::new();
    for run in 0..a.runs {
        let (n, t) = baseline(input.path(), &input.path().join("baseline.out"));
        base.push(n as f64 / t.as_secs_f64());
        let _ = std::fs::remove_dir_all(input.path().join("data/state"));
        let s = run_pipeline(
            input.path(),
            a.shards,
            a.fsync,
            true,
            Arc::new(AtomicBool::new(false)),
            Arc::new(Stats::default()),
            None,
        );
        assert!(s.stats.balanced(), "outcomes do not add up");
        assert_eq!(s.new_records, a.events);
        let busy = (s.elapsed - s.recovery).as_secs_f64();
        ours.push(a.events as f64 / busy);
        println!(
            "  run {}: pipeline {:>9.0} events/s ({} commits, {} upserts) | baseline {:>9.0} events/s",
            run + 1,
            ours[run],
            s.stats.commits,
            s.stats.outputs,
            base[run]
        );
    }
    if a.runs > 0 {
        let ratios: Vec<f64> = ours.iter().zip(&base).map(|(o, b)| o / b).collect();
        let (mo, mb, mr) = (
            median(&mut ours.clone()),
            median(&mut base.clone()),
            median(&mut ratios.clone()),
        );
        println!(
            "throughput: pipeline median {mo:.0} events/s; baseline median {mb:.0} events/s; ratio median {mr:.2}"
        );
    }

    // 3: open-loop latency while tailing.
    match a.snapshot_every {
        None => latency(&a, &lines, None, false),
        Some(every) => {
            latency(&a, &lines, None, true);
            latency(&a, &lines, Some(every), true);
        }
    }
}

/// The open-loop latency phase; with `preload`, on the state of the whole workload.
/// Seconds offered before the latency phase measures, after a restart on a preloaded state.
const WARMUP_SECS: u64 = 5;

fn latency(a: &Args, lines: &[Vec<u8>], snapshot_every: Option<u64>, preload: bool) {
    let dir = tempfile::tempdir().unwrap();
    let mut restore = String::new();
    if preload {
        load_input(dir.path(), lines);
        let s = run_pipeline(
            dir.path(),
            a.shards,
            a.fsync,
            true,
            Arc::new(AtomicBool::new(false)),
            Arc::new(Stats::default()),
            snapshot_every,
        );
        restore = format!(
            "; state of {} keys{}",
            s.keys,
            if snapshot_every.is_some() {
                ", snapshots on"
            } else {
                ", no snapshots"
            }
        );
    }
    // 3: open-loop latency while tailing.
    let mut w = LogWriter::open(
        &dir.path().join("data/input"),
        LogOptions {
            fsync: FsyncPolicy::Never,
            ..LogOptions::default()
        },
    )
    .unwrap();
    let t = w.ensure_topic("entries", PARTITIONS).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(Stats::default());
    let engine = {
        let (path, stop, stats, shards, fsync) = (
            dir.path().to_path_buf(),
            stop.clone(),
            stats.clone(),
            a.shards,
            a.fsync,
        );
        std::thread::spawn(move || {
            run_pipeline(&path, shards, fsync, false, stop, stats, snapshot_every)
        })
    };
    // With a preloaded state the restart first recovers (a replay, or a snapshot
    // restore): the first WARMUP seconds are offered but not measured, so the
    // histograms hold the steady state (snapshots included), not the catch-up.
    let warmup = if preload { WARMUP_SECS } else { 0 };
    let started = Instant::now();
    let total = a.rate * (a.seconds + warmup);
    let mut sent = 0u64;
    let mut measuring = warmup == 0;
    while sent < total {
        if !measuring && started.elapsed() >= Duration::from_secs(warmup) {
            stats.latency_us.lock().unwrap().reset();
            stats.commit_time_us.lock().unwrap().reset();
            measuring = true;
        }
        let due = ((started.elapsed().as_secs_f64() * a.rate as f64) as u64).min(total);
        if due > sent {
            let mut tx = w.begin();
            for i in sent..due {
                let l = &lines[(i % lines.len() as u64) as usize];
                let key = account_of(l);
                tx.append(
                    t,
                    bucket(stable_hash(key), PARTITION_SALT, PARTITIONS),
                    key,
                    l,
                );
            }
            tx.commit(&CommitMarker::default()).unwrap();
            sent = due;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let offered = sent as f64 / started.elapsed().as_secs_f64();
    // Let the last epoch commit, then stop.
    let drain = Instant::now();
    let base = if preload { lines.len() as u64 } else { 0 };
    while stats.committed_input.load(Ordering::Relaxed) < sent + base
        && drain.elapsed() < Duration::from_secs(30)
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::Relaxed);
    let s = engine.join().unwrap();
    if let Some(epoch) = s.restored.epoch {
        restore.push_str(&format!(
            " (restart restored the snapshot of epoch {epoch} in {:.0} ms)",
            s.restored.took.as_secs_f64() * 1e3
        ));
    }
    if snapshot_every.is_some() {
        restore.push_str(&format!("; {} snapshots written", s.snapshots_written));
    }
    let lat = s.stats;
    println!(
        "latency{restore}: offered {offered:.0} events/s for {} s, commit_interval 100ms: append->commit p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} events); barrier->commit p99 {:.1} ms, max {:.1} ms",
        a.seconds,
        lat.latency_p50_us.unwrap_or(0) as f64 / 1e3,
        lat.latency_p99_us.unwrap_or(0) as f64 / 1e3,
        lat.latency_max_us.unwrap_or(0) as f64 / 1e3,
        lat.read,
        lat.commit_time_p99_us.unwrap_or(0) as f64 / 1e3,
        lat.commit_time_max_us.unwrap_or(0) as f64 / 1e3,
    );
}
