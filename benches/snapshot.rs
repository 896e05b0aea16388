//! Criterion benchmarks of the snapshot format (`core/src/snapshot/`) with bank-account
//! entries: 11-byte keys (`ACC-0000042`), 64-byte states.
//!
//! ```text
//! cargo bench --bench snapshot                 # 1M entries: write, open + verify, lookups
//! ONCEFLOW_SNAPSHOT_KEYS=10000000 cargo bench --bench snapshot -- --adhoc
//!                                              # one timed write / open / first lookup
//! ```
//!
//! `cargo test --bench snapshot` runs each benchmark once on 10 000 entries (smoke test).
//! Files go to a temporary directory under the target directory (a real disk, not
//! tmpfs); the write benchmark fsyncs like the engine will.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Instant;

use criterion::{BatchSize, Criterion, Throughput};
use onceflow_core::snapshot::{
    Fingerprint, InputOffset, ShardSnapshot, SnapshotWriter, WriteOptions,
};

const STATE_LEN: usize = 64;

fn key(i: u64, buf: &mut Vec<u8>) {
    buf.clear();
    buf.extend_from_slice(b"ACC-");
    let mut digits = [b'0'; 7];
    let mut v = i;
    for d in digits.iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
    }
    buf.extend_from_slice(&digits);
}

/// Writes a one-shard snapshot of `n` accounts for `epoch`; returns the shard file.
fn write(root: &Path, epoch: u64, n: u64, fsync: bool) -> PathBuf {
    let set = SnapshotWriter::create(root, epoch, 1, WriteOptions { fsync }).unwrap();
    let mut w = set.shard(0).unwrap();
    let mut k = Vec::with_capacity(16);
    let mut state = [0u8; STATE_LEN];
    for i in 0..n {
        key(i, &mut k);
        state[..8].copy_from_slice(&(i as i64 * 100).to_le_bytes());
        state[8..16].copy_from_slice(&i.to_le_bytes());
        w.push(&k, i + 1, &state).unwrap();
    }
    let info = w.finish().unwrap();
    let path = set.dir().join(&info.file);
    let inputs = vec![InputOffset {
        source: "commands".into(),
        partition: 0,
        next_offset: n,
    }];
    set.commit(vec![info], &fingerprint(), inputs).unwrap();
    path
}

fn fingerprint() -> Fingerprint {
    Fingerprint::new()
        .with("key field", "account")
        .with("shards", "1")
}

fn scratch() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

/// A fixed pseudo-random sequence of account numbers below `n`.
fn sample(n: u64, count: usize) -> Vec<Vec<u8>> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..count)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut k = Vec::new();
            key(x % n, &mut k);
            k
        })
        .collect()
}

fn bench(c: &mut Criterion, n: u64) {
    let root = scratch();
    let file = write(root.path(), 0, n, false);
    let bytes = std::fs::metadata(&file).unwrap().len();

    let mut g = c.benchmark_group("snapshot");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(bytes));
    let mut epoch = 1;
    g.bench_function(format!("write_{n}_accounts_fsync"), |b| {
        b.iter_batched(
            || {
                epoch += 1;
                epoch
            },
            |e| {
                let p = write(root.path(), e, n, true);
                // Keep the disk usage flat: only the last file is needed.
                std::fs::remove_dir_all(p.parent().unwrap()).unwrap();
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function(format!("open_verify_{n}_accounts"), |b| {
        b.iter(|| black_box(ShardSnapshot::open(&file).unwrap()).len())
    });
    g.finish();

    let snap = ShardSnapshot::open(&file).unwrap();
    let hits = sample(n, 1000);
    let misses: Vec<Vec<u8>> = (0..1000u64)
        .map(|i| {
            let mut k = Vec::new();
            key(n + i * 7919, &mut k);
            k
        })
        .collect();
    let mut g = c.benchmark_group("snapshot_lookup");
    g.throughput(Throughput::Elements(1000));
    g.bench_function(format!("get_hit_1000_of_{n}"), |b| {
        b.iter(|| {
            let mut sum = 0u64;
            for k in &hits {
                sum += snap.get(k).unwrap().seq;
            }
            black_box(sum)
        })
    });
    g.bench_function(format!("get_miss_1000_of_{n}"), |b| {
        b.iter(|| {
            let mut found = 0;
            for k in &misses {
                found += snap.get(k).is_some() as u32;
            }
            assert_eq!(found, 0);
        })
    });
    g.finish();
}

/// One timed run at a size too large for criterion's repetitions.
fn adhoc(n: u64) {
    let root = scratch();
    let t = Instant::now();
    let file = write(root.path(), 1, n, true);
    let write_s = t.elapsed().as_secs_f64();
    let bytes = std::fs::metadata(&file).unwrap().len();
    println!(
        "write {n} accounts (fsync): {write_s:.2} s, {:.0} keys/s, {:.0} MB/s; file {bytes} bytes ({:.1} bytes/key)",
        n as f64 / write_s,
        bytes as f64 / write_s / 1e6,
        bytes as f64 / n as f64
    );
    println!("memory after writing: {}", memory());
    let probe = sample(n, 1).remove(0);
    for run in 0..3 {
        let cold = run == 0 && evict(&file);
        let t = Instant::now();
        let snap = ShardSnapshot::open(&file).unwrap();
        let open_s = t.elapsed().as_secs_f64();
        let e = snap.get(&probe).unwrap();
        let first_s = t.elapsed().as_secs_f64();
        println!(
            "open + verify run {run} ({}): {open_s:.3} s; first lookup done at {first_s:.3} s (seq {})",
            if cold {
                "file evicted from the page cache"
            } else {
                "page cache warm"
            },
            e.seq
        );
        if run == 2 {
            println!("memory with the snapshot open: {}", memory());
        }
    }
}

/// Drops `file` from the page cache (GNU dd's `nocache`, this file only), so the next
/// open reads it from disk. Returns whether it worked.
fn evict(file: &Path) -> bool {
    std::process::Command::new("dd")
        .arg(format!("if={}", file.display()))
        .args(["iflag=nocache", "count=0", "status=none"])
        .status()
        .is_ok_and(|s| s.success())
}

/// Resident memory of this process (Linux `/proc/self/status`), for the ad-hoc run.
fn memory() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .filter(|l| {
            ["VmHWM", "VmRSS", "RssAnon", "RssFile"]
                .iter()
                .any(|k| l.starts_with(k))
        })
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join(", ")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let full = args.iter().any(|a| a == "--bench");
    let n: u64 = std::env::var("ONCEFLOW_SNAPSHOT_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full { 1_000_000 } else { 10_000 });
    if args.iter().any(|a| a == "--adhoc") {
        adhoc(n);
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c, n);
    c.final_summary();
}
