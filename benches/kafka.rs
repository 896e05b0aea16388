//! Kafka end to end: onceflow's ledger pipeline against a minimal transactional
//! consume → produce loop (the floor) and Quix Streams, one after the other on the same
//! broker with the same input.
//!
//! ```text
//! scripts/kafka-bench                                  # broker, release build, this bench, defaults
//! cargo bench --bench kafka -- --runs 3                # needs ONCEFLOW_KAFKA_BROKERS
//! cargo bench --bench kafka -- --quick                 # smoke: what `cargo test --all-targets` runs
//! cargo bench --bench kafka -- --only floor,onceflow --events 500000 --rate 5000 --seconds 20
//! ```
//!
//! Without `ONCEFLOW_KAFKA_BROKERS` it says why and exits 0 (so smoke runs stay green).
//! A measurement that did not complete (outputs missing, a contestant that stopped or
//! stalled) makes it exit 1 after the table.
//!
//! Options (defaults): `--events 3000000`, `--accounts 10000`, `--partitions 4`;
//! throughput window `--tput-warmup 1 --tput-seconds 3`; latency `--rate 1000
//! --warmup 2 --seconds 6`; `--runs 3`; `--throughput-only`, `--latency-only`;
//! `--only floor,onceflow,quix`; `--stats-ms 20` (onceflow's `statistics.interval.ms`);
//! `--fetch-wait-ms 10`, `--fetch-queue-backoff-ms 10`; `--timeout 120` (s per
//! measurement); `--onceflow PATH`, `--python PATH`. The smoke run (`--quick`: 2,000
//! events, 1 s of latency, floor and onceflow) takes about 7 s; `ONCEFLOW_KAFKA_BENCH_ARGS`
//! replaces its arguments.
//!
//! Input: bank entries `{"account":"ACC-0000042","seq":n,"amount":a,"ts":<produce time,
//! ms since the epoch>}`, keyed by account (`--accounts`, picked at random; `seq` counts
//! per account from 1), produced by an idempotent producer to a `--partitions` topic.
//! Every contestant turns each input into one output record keyed by the account that
//! carries the input's `seq` and `ts`, in one Kafka transaction per 100 ms together with
//! its input offsets (committed to a consumer group of its own).
//!
//! Two measurements, each contestant in turn, `--runs` times (interleaved):
//! 1. **Throughput**: `--events` entries are produced once, as fast as possible, before
//!    anything runs (a backlog). Each contestant reads it from the start with a consumer
//!    group and an output topic of its own. The bench watches the input offsets the
//!    group has committed (every 20 ms; exactly once, they commit with their outputs)
//!    and reports input records committed per second in a window that opens
//!    `--tput-warmup` s after the first commit and lasts `--tput-seconds` s (or ends at
//!    the last commit, if the backlog is drained before). Start-up (process start, group
//!    join, first commit) is left out; it is printed separately. The outputs are not
//!    read here, so that reading them costs no contestant CPU.
//! 2. **Latency**: a fresh input topic per contestant; a paced producer offers 20
//!    events/s until the first output is read (start-up), then `--rate` events/s for
//!    `--warmup` s (not measured) and `--seconds` s (measured). The bench reads the
//!    outputs with a read_committed consumer (partitions assigned, no group) and counts
//!    each (account, seq) once: one seen again (the test broker hands out the records
//!    of aborted transactions too) is counted as a duplicate. End-to-end latency of an
//!    event = the time its output is read − its `ts`, both wall clock on this machine;
//!    HdrHistogram p50 / p99 / max of the measured seconds' events.
//!
//! Every consumer gets the same `fetch.wait.max.ms` (`--fetch-wait-ms`, 10) and
//! `fetch.queue.backoff.ms` (`--fetch-queue-backoff-ms`, 10: librdkafka's default of
//! 1000 pauses a partition's fetching for a second whenever its prefetch queue is full,
//! which stalls a consumer draining a backlog, the floor's as much as the others').
//!
//! The contestants:
//! - **floor**: in this process, one thread: a `BaseConsumer` (read_committed, all
//!   partitions assigned from the start) → one output record per input (its key and
//!   value copied) from a transactional `BaseProducer` → 100 ms after the last commit
//!   ended: wait for the deliveries, `send_offsets_to_transaction`,
//!   `commit_transaction`. No state, no parsing: what Kafka exactly-once costs at least.
//! - **onceflow**: the `onceflow` binary (`--onceflow`; by default the one cargo built
//!   with this bench: `target/release/onceflow` under `cargo bench`) running a ledger
//!   pipeline with `[kafka]`: 2 shards, sequence checks on `seq`, balance per account
//!   (and the last `seq` and `ts`, for the bench), `emit = "per_event"`,
//!   `commit_interval = "100ms"`.
//! - **quix**: `benches/quix_balance.py`, Quix Streams with
//!   `processing_guarantee="exactly-once"`, `commit_interval=0.1`, the balance per
//!   account in its state store (RocksDB, changelogged), run by `--python` (default
//!   `target/kafka-bench/venv/bin/python`, which `scripts/kafka-bench` installs); left
//!   out, with the reason, when that Python has no `quixstreams`.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use onceflow_connectors::kafka::{KafkaAdmin, KafkaConnection, PropertyValue, TopicConfig};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// Every contestant commits at this interval.
const COMMIT_INTERVAL: Duration = Duration::from_millis(100);
/// Offered per second while waiting for a contestant's first output (latency mode).
const STARTUP_RATE: u64 = 20;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Who {
    Floor,
    Onceflow,
    Quix,
}

impl Who {
    fn name(self) -> &'static str {
        match self {
            Who::Floor => "floor",
            Who::Onceflow => "onceflow",
            Who::Quix => "quix",
        }
    }
}

struct Args {
    events: u64,
    accounts: u64,
    rate: u64,
    seconds: u64,
    warmup: u64,
    runs: usize,
    /// Throughput: the window opens this long after the first output...
    tput_warmup: u64,
    /// ...and is this long.
    tput_seconds: u64,
    partitions: u32,
    throughput: bool,
    latency: bool,
    only: Vec<Who>,
    /// `fetch.wait.max.ms` of every consumer (each contestant's and the bench's reader).
    fetch_wait_ms: u64,
    /// `fetch.queue.backoff.ms` of every consumer: librdkafka's default (1000) pauses
    /// fetching a partition for a second whenever its prefetch queue is over
    /// `queued.min.messages`, which stalls a consumer draining a backlog.
    fetch_queue_backoff_ms: u64,
    /// onceflow's `statistics.interval.ms` (how soon its source sees newly committed input).
    stats_ms: u64,
    /// Longest wait for one contestant's outputs (per measurement), seconds.
    timeout: u64,
    onceflow: PathBuf,
    python: PathBuf,
}

fn args() -> Args {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut a = Args {
        events: 3_000_000,
        accounts: 10_000,
        rate: 1_000,
        seconds: 6,
        warmup: 2,
        runs: 3,
        tput_warmup: 1,
        tput_seconds: 3,
        partitions: 4,
        throughput: true,
        latency: true,
        only: vec![Who::Floor, Who::Onceflow, Who::Quix],
        fetch_wait_ms: 10,
        fetch_queue_backoff_ms: 10,
        stats_ms: 20,
        timeout: 120,
        onceflow: PathBuf::from(env!("CARGO_BIN_EXE_onceflow")),
        python: root.join("target/kafka-bench/venv/bin/python"),
    };
    let raw: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes --bench; `cargo test --all-targets` does not: then this is a
    // smoke run (`--quick`, or ONCEFLOW_KAFKA_BENCH_ARGS).
    let argv: Vec<String> = if raw.iter().any(|a| a == "--bench") {
        raw.into_iter().filter(|s| s != "--bench").collect()
    } else {
        let args = std::env::var("ONCEFLOW_KAFKA_BENCH_ARGS").unwrap_or_else(|_| "--quick".into());
        args.split_whitespace().map(str::to_string).collect()
    };
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let mut text = || {
            it.next()
                .cloned()
                .unwrap_or_else(|| panic!("{flag} needs a value"))
        };
        let num = |s: String| -> u64 {
            s.parse()
                .unwrap_or_else(|_| panic!("{flag} needs a number, not {s:?}"))
        };
        match flag.as_str() {
            "--quick" => {
                a.events = 2_000;
                a.accounts = 100;
                a.rate = 500;
                a.seconds = 1;
                a.warmup = 0;
                a.runs = 1;
                a.tput_warmup = 0;
                a.tput_seconds = 1;
                a.only = vec![Who::Floor, Who::Onceflow];
                a.timeout = 30;
            }
            "--events" => a.events = num(text()),
            "--accounts" => a.accounts = num(text()).max(1),
            "--rate" => a.rate = num(text()).max(1),
            "--seconds" => a.seconds = num(text()),
            "--warmup" => a.warmup = num(text()),
            "--runs" => a.runs = num(text()) as usize,
            "--tput-warmup" => a.tput_warmup = num(text()),
            "--tput-seconds" => a.tput_seconds = num(text()),
            "--partitions" => a.partitions = num(text()).max(1) as u32,
            "--fetch-wait-ms" => a.fetch_wait_ms = num(text()),
            "--fetch-queue-backoff-ms" => a.fetch_queue_backoff_ms = num(text()),
            "--stats-ms" => a.stats_ms = num(text()).max(1),
            "--timeout" => a.timeout = num(text()),
            "--throughput-only" => a.latency = false,
            "--latency-only" => a.throughput = false,
            "--only" => {
                a.only = text()
                    .split(',')
                    .map(|w| match w.trim() {
                        "floor" => Who::Floor,
                        "onceflow" => Who::Onceflow,
                        "quix" => Who::Quix,
                        other => panic!("--only: unknown contestant {other:?}"),
                    })
                    .collect()
            }
            "--onceflow" => a.onceflow = PathBuf::from(text()),
            "--python" => a.python = PathBuf::from(text()),
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A name no earlier run against the same broker used.
fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "bench-{prefix}-{}-{}-{}",
        std::process::id(),
        now_ms(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Creates `names`. Each gets `retention.ms` set to Kafka's default (7 days): the test
/// broker describes only the configs a topic was created with, and Quix Streams reads
/// `retention.ms` of its input topics to configure its changelog topics.
fn create_topics(brokers: &str, names: &[&str], partitions: u32) {
    let conn = KafkaConnection::from_broker_list(brokers, Duration::from_secs(10))
        .expect("a valid broker list");
    let admin = KafkaAdmin::connect(&conn).expect("admin client");
    let topics: Vec<TopicConfig> = names
        .iter()
        .map(|n| TopicConfig {
            name: n.to_string(),
            partitions,
            replication_factor: None,
            create: true,
            compacted: false,
            config: BTreeMap::from([(
                "retention.ms".to_string(),
                PropertyValue("604800000".into()),
            )]),
        })
        .collect();
    admin.ensure_topics(&topics).expect("create topics");
}

/// The bank entries, the same sequence for every contestant.
struct Entries {
    rng: u64,
    seqs: Vec<u64>,
}

impl Entries {
    fn new(accounts: u64) -> Entries {
        Entries {
            rng: 0x9e37_79b9_7f4a_7c15,
            seqs: vec![0; accounts as usize],
        }
    }

    fn next_u64(&mut self) -> u64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// The next entry (key, value), stamped `ts`.
    fn next(&mut self, ts: u64) -> (String, String) {
        let r = self.next_u64();
        let acc = (r >> 16) % self.seqs.len() as u64;
        let amount = (r % 2001) as i64 - 1000;
        let seq = &mut self.seqs[acc as usize];
        *seq += 1;
        let key = format!("ACC-{acc:07}");
        let value = format!(
            r#"{{"account":"{key}","seq":{seq},"amount":{amount},"ts":{ts}}}"#,
            seq = *seq
        );
        (key, value)
    }
}

fn input_producer(brokers: &str) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "1")
        .create()
        .expect("input producer")
}

/// Sends, serving the producer's queue while it is full.
fn send(p: &BaseProducer, topic: &str, key: &str, value: &str) {
    let mut rec = BaseRecord::to(topic).key(key).payload(value);
    loop {
        match p.send(rec) {
            Ok(()) => return,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                rec = r;
                p.poll(Duration::from_millis(1));
            }
            Err((e, _)) => panic!("produce: {e}"),
        }
    }
}

/// What the reader of one contestant's outputs saw.
struct ReadResult {
    /// Distinct (account, seq) outputs read.
    distinct: u64,
    /// Outputs read again (an aborted transaction's records, redelivered).
    duplicates: u64,
    /// When the first output was read, after the contestant started.
    first: Option<Duration>,
    /// End-to-end latency in µs of the outputs whose `ts` is at or after `measure_from`.
    latency: Histogram<u64>,
    timed_out: bool,
    /// The contestant stopped by itself before every output was read.
    exited: bool,
}

#[derive(serde::Deserialize)]
struct Output {
    seq: u64,
    ts: u64,
}

/// The throughput window: from `warm` after the first commit seen, `len` long.
#[derive(Clone, Copy)]
struct Window {
    warm: Duration,
    len: Duration,
}

/// Reads `topic` (read_committed) until `expected` distinct outputs were read (it may
/// be set later: `u64::MAX` until known), the contestant is gone (`alive`) or `timeout`
/// passes. Sets `first_seen` at the first output.
#[allow(clippy::too_many_arguments)]
fn read_outputs(
    brokers: &str,
    topic: &str,
    partitions: u32,
    accounts: u64,
    fetch_wait_ms: u64,
    started: Instant,
    expected: &AtomicU64,
    measure_from: &AtomicU64,
    first_seen: &AtomicBool,
    timeout: Duration,
    alive: &mut dyn FnMut() -> bool,
) -> ReadResult {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("reader"))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", fetch_wait_ms.to_string())
        .set("fetch.queue.backoff.ms", "10")
        .create()
        .expect("reader");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p as i32, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut max_seq = vec![0u64; accounts as usize];
    let mut r = ReadResult {
        distinct: 0,
        duplicates: 0,
        first: None,
        latency: Histogram::new_with_bounds(1, 600_000_000, 3).unwrap(),
        timed_out: false,
        exited: false,
    };
    let mut checked = Instant::now();
    loop {
        if r.distinct >= expected.load(Ordering::Acquire) {
            break;
        }
        if started.elapsed() > timeout {
            r.timed_out = true;
            break;
        }
        if checked.elapsed() > Duration::from_millis(200) {
            checked = Instant::now();
            if !alive() {
                r.exited = true;
                break;
            }
        }
        let m = match c.poll(Duration::from_millis(10)) {
            None => continue,
            Some(Ok(m)) => m,
            Some(Err(e)) => panic!("reading {topic}: {e}"),
        };
        let read_at = now_ms();
        let key = m.key().unwrap_or_default();
        let acc: usize = std::str::from_utf8(key)
            .ok()
            .and_then(|k| k.strip_prefix("ACC-"))
            .and_then(|d| d.parse().ok())
            .unwrap_or_else(|| panic!("{topic}: an output with key {key:?}"));
        let out: Output =
            serde_json::from_slice(m.payload().unwrap_or_default()).unwrap_or_else(|e| {
                panic!(
                    "{topic}: output {:?}: {e}",
                    String::from_utf8_lossy(m.payload().unwrap_or_default())
                )
            });
        if r.first.is_none() {
            r.first = Some(started.elapsed());
            first_seen.store(true, Ordering::Release);
        }
        if out.seq <= max_seq[acc] {
            r.duplicates += 1;
            continue;
        }
        max_seq[acc] = out.seq;
        r.distinct += 1;
        if out.ts >= measure_from.load(Ordering::Acquire) {
            let us = read_at.saturating_sub(out.ts) * 1000;
            r.latency.saturating_record(us.max(1));
        }
    }
    r
}

/// What a contestant's committed input offsets showed.
struct Progress {
    /// Input records committed (the sum of the group's committed offsets).
    committed: u64,
    /// When the first commit was seen, after the contestant started.
    first: Option<Duration>,
    /// Input records committed per second in the window.
    rate: Option<f64>,
    window_full: bool,
    timed_out: bool,
    exited: bool,
}

/// Watches the input offsets that `group` committed (every 20 ms) until all `expected`
/// input records are committed, the `window` is over, the contestant is gone or
/// `timeout` passes. Exactly once, the offsets are committed in the transaction that
/// holds their outputs, so this is the contestant's committed progress, measured
/// without reading (and paying for) its outputs.
#[allow(clippy::too_many_arguments)]
fn watch_progress(
    brokers: &str,
    group: &str,
    input: &str,
    partitions: u32,
    expected: u64,
    started: Instant,
    timeout: Duration,
    window: Window,
    alive: &mut dyn FnMut() -> bool,
) -> Progress {
    // Not subscribed: it never joins the group, it only asks for its offsets.
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("offset watcher");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(input, p as i32);
    }
    let mut r = Progress {
        committed: 0,
        first: None,
        rate: None,
        window_full: false,
        timed_out: false,
        exited: false,
    };
    let mut first_at = None;
    let mut opened: Option<(Instant, u64)> = None;
    let mut last_change = Instant::now();
    loop {
        if let Ok(offsets) = c.committed_offsets(tpl.clone(), Duration::from_secs(5)) {
            let sum: u64 = offsets
                .elements()
                .iter()
                .map(|e| match e.offset() {
                    Offset::Offset(o) if o > 0 => o as u64,
                    _ => 0,
                })
                .sum();
            let now = Instant::now();
            if sum > r.committed {
                r.committed = sum;
                last_change = now;
                if first_at.is_none() {
                    first_at = Some(now);
                    r.first = Some(started.elapsed());
                }
            }
            if let Some(f) = first_at
                && opened.is_none()
                && now >= f + window.warm
            {
                opened = Some((now, r.committed));
            }
            if let Some((at, n)) = opened {
                if now >= at + window.len {
                    r.rate = Some((r.committed - n) as f64 / (now - at).as_secs_f64());
                    r.window_full = true;
                    break;
                }
                if r.committed >= expected {
                    if last_change > at {
                        r.rate = Some((r.committed - n) as f64 / (last_change - at).as_secs_f64());
                    }
                    break;
                }
            } else if r.committed >= expected {
                break;
            }
        }
        if started.elapsed() > timeout {
            r.timed_out = true;
            break;
        }
        if !alive() {
            r.exited = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    r
}

/// One contestant, started on `input` → `output`.
enum Running {
    Floor(std::thread::JoinHandle<FloorSummary>, Arc<AtomicBool>),
    Process(Child, PathBuf, &'static str),
}

struct FloorSummary {
    commits: u64,
    records: u64,
    /// In `send_offsets_to_transaction` + `commit_transaction` + `begin_transaction`.
    commit_time: Duration,
    /// In `send_offsets_to_transaction` alone.
    offsets_time: Duration,
}

/// The names one contestant's run uses.
struct Topics {
    input: String,
    output: String,
    group: String,
}

fn start(who: Who, a: &Args, brokers: &str, t: &Topics, dir: &Path) -> Result<Running, String> {
    match who {
        Who::Floor => {
            let stop = Arc::new(AtomicBool::new(false));
            let (brokers, input, output, group, parts, fetch, s) = (
                brokers.to_string(),
                t.input.clone(),
                t.output.clone(),
                t.group.clone(),
                a.partitions,
                (a.fetch_wait_ms, a.fetch_queue_backoff_ms),
                stop.clone(),
            );
            let h = std::thread::spawn(move || {
                floor(&brokers, &input, &output, &group, parts, fetch, &s)
            });
            Ok(Running::Floor(h, stop))
        }
        Who::Onceflow => {
            let p = dir.join("pipeline.toml");
            std::fs::write(&p, onceflow_pipeline(a, brokers, t)).unwrap();
            let log = dir.join("onceflow.log");
            let f = std::fs::File::create(&log).unwrap();
            let child = Command::new(&a.onceflow)
                .arg("run")
                .arg(&p)
                .stdin(Stdio::null())
                .stdout(f.try_clone().unwrap())
                .stderr(f)
                .spawn()
                .map_err(|e| format!("cannot start {}: {e}", a.onceflow.display()))?;
            Ok(Running::Process(child, log, "onceflow"))
        }
        Who::Quix => {
            let log = dir.join("quix.log");
            let f = std::fs::File::create(&log).unwrap();
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/quix_balance.py");
            let child = Command::new(&a.python)
                .arg(script)
                .args(["--brokers", brokers])
                .args(["--input", &t.input])
                .args(["--output", &t.output])
                .args(["--group", &t.group])
                .arg("--state-dir")
                .arg(dir.join("quix-state"))
                .args(["--commit-interval", "0.1"])
                .args(["--fetch-wait-ms", &a.fetch_wait_ms.to_string()])
                .args([
                    "--fetch-queue-backoff-ms",
                    &a.fetch_queue_backoff_ms.to_string(),
                ])
                .stdin(Stdio::null())
                .stdout(f.try_clone().unwrap())
                .stderr(f)
                .spawn()
                .map_err(|e| format!("cannot start {}: {e}", a.python.display()))?;
            Ok(Running::Process(child, log, "quix"))
        }
    }
}

impl Running {
    /// Still running (it only stops by itself on an error).
    fn alive(&mut self) -> bool {
        match self {
            Running::Floor(h, _) => !h.is_finished(),
            Running::Process(child, _, _) => matches!(child.try_wait(), Ok(None)),
        }
    }
}

/// Stops a contestant; for a process, returns the end of its log if it had exited
/// by itself (a failure) or `Err` with it.
fn stop(r: Running) -> Result<String, String> {
    match r {
        Running::Floor(h, stop) => {
            stop.store(true, Ordering::Release);
            let s = h
                .join()
                .map_err(|_| "the floor loop panicked".to_string())?;
            let per = |d: Duration| d.as_secs_f64() * 1e3 / s.commits.max(1) as f64;
            Ok(format!(
                "{} records in {} transactions; a commit took {:.1} ms on average \
                 ({:.1} ms of it sending the offsets)",
                s.records,
                s.commits,
                per(s.commit_time),
                per(s.offsets_time)
            ))
        }
        Running::Process(mut child, log, what) => {
            if let Some(status) = child.try_wait().unwrap() {
                return Err(format!(
                    "{what} exited early ({status}); end of {}:\n{}",
                    log.display(),
                    tail(&log)
                ));
            }
            // SIGTERM: a graceful stop (both commit what they hold and exit).
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    return if status.success() || status.code() == Some(143) {
                        Ok(summary(&log))
                    } else {
                        Ok(format!("{what} stopped with {status}"))
                    };
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Ok(format!(
                        "{what} did not stop within 20 s of SIGTERM: killed"
                    ));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// What onceflow's summary says of its commits and latency (its own view: Kafka
/// record timestamp → commit), in one line.
fn summary(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("  speed ") || l.starts_with("  committed "))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The last 3,000 bytes of a log.
fn tail(path: &Path) -> String {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => return format!("({e})"),
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(3000)));
    let mut s = String::new();
    let _ = f.read_to_string(&mut s);
    s
}

fn onceflow_pipeline(a: &Args, brokers: &str, t: &Topics) -> String {
    format!(
        r#"[pipeline]
name = "kafka-bench"
shards = 2
commit_interval = "100ms"
state_dir = "state"

[kafka]
brokers = ["{brokers}"]
group = "{group}"
properties = {{ "fetch.wait.max.ms" = {fetch_wait}, "fetch.queue.backoff.ms" = {backoff}, "statistics.interval.ms" = {stats} }}

[[sources]]
name = "payments"
type = "kafka"
topic = "{input}"

[key]
field = "account"
sequence = "seq"

[view]
topic = "{output}"
partitions = {partitions}
emit = "per_event"
fields.balance = {{ op = "sum", field = "amount" }}
fields.seq = {{ op = "last", field = "seq" }}
fields.ts = {{ op = "last", field = "ts" }}

[dead_letter]
topic = "{output}-dead"
"#,
        group = t.group,
        fetch_wait = a.fetch_wait_ms,
        backoff = a.fetch_queue_backoff_ms,
        stats = a.stats_ms,
        input = t.input,
        output = t.output,
        partitions = a.partitions,
    )
}

/// The floor: consume → produce, a transaction every 100 ms with the input offsets.
fn floor(
    brokers: &str,
    input: &str,
    output: &str,
    group: &str,
    partitions: u32,
    (fetch_wait_ms, fetch_queue_backoff_ms): (u64, u64),
    stop: &AtomicBool,
) -> FloorSummary {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("fetch.wait.max.ms", fetch_wait_ms.to_string())
        .set("fetch.queue.backoff.ms", fetch_queue_backoff_ms.to_string())
        .create()
        .expect("floor consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(input, p as i32, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let cgm = consumer.group_metadata().expect("group metadata");
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("transactional.id", format!("{group}.floor"))
        .set("enable.idempotence", "true")
        .create()
        .expect("floor producer");
    let t = Duration::from_secs(30);
    producer.init_transactions(t).expect("init_transactions");
    producer.begin_transaction().unwrap();
    // The next offset to read per partition; -1 until a record of it was read.
    let mut next = vec![-1i64; partitions as usize];
    let mut pending = 0u64;
    let mut s = FloorSummary {
        commits: 0,
        records: 0,
        commit_time: Duration::ZERO,
        offsets_time: Duration::ZERO,
    };
    let mut due = Instant::now() + COMMIT_INTERVAL;
    let commit = |next: &[i64], s: &mut FloorSummary| {
        let mut offsets = TopicPartitionList::new();
        for (p, o) in next.iter().enumerate() {
            if *o >= 0 {
                offsets
                    .add_partition_offset(input, p as i32, Offset::Offset(*o))
                    .unwrap();
            }
        }
        let began = Instant::now();
        producer
            .send_offsets_to_transaction(&offsets, &cgm, t)
            .expect("send_offsets_to_transaction");
        let offsets_sent = began.elapsed();
        // Every record delivered first, waiting in 1 ms steps: rdkafka's `flush`
        // (which `commit_transaction` calls first) polls in 100 ms slices and its
        // `poll` returns only at its deadline, so a flush with anything in flight takes
        // at least 100 ms. With nothing in flight, the commit's flush returns at once.
        while producer.in_flight_count() > 0 {
            producer.poll(Duration::from_millis(1));
        }
        producer.commit_transaction(t).expect("commit_transaction");
        producer.begin_transaction().unwrap();
        s.commits += 1;
        s.offsets_time += offsets_sent;
        s.commit_time += began.elapsed();
    };
    while !stop.load(Ordering::Acquire) {
        let timeout = due.saturating_duration_since(Instant::now());
        if let Some(m) = consumer.poll(timeout.min(Duration::from_millis(10))) {
            let m = m.expect("floor: consume");
            let mut rec = BaseRecord::to(output)
                .key(m.key().unwrap_or_default())
                .payload(m.payload().unwrap_or_default());
            loop {
                match producer.send(rec) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        rec = r;
                        producer.poll(Duration::from_millis(1));
                    }
                    Err((e, _)) => panic!("floor: produce: {e}"),
                }
            }
            next[m.partition() as usize] = m.offset() + 1;
            pending += 1;
            s.records += 1;
        }
        producer.poll(Duration::ZERO);
        if Instant::now() >= due {
            if pending > 0 {
                commit(&next, &mut s);
                pending = 0;
            }
            // The next commit one interval after this one ended (as Kafka Streams and
            // Quix count it): a commit that takes longer than the interval still
            // leaves time to consume.
            due = Instant::now() + COMMIT_INTERVAL;
        }
    }
    if pending > 0 {
        commit(&next, &mut s);
    }
    s
}

/// Produces `n` entries to `topic` as fast as the producer goes.
fn preload(brokers: &str, topic: &str, n: u64, accounts: u64) -> Duration {
    let started = Instant::now();
    let p = input_producer(brokers);
    let mut e = Entries::new(accounts);
    for _ in 0..n {
        let (k, v) = e.next(now_ms());
        send(&p, topic, &k, &v);
    }
    p.flush(Duration::from_secs(120))
        .expect("flush the backlog");
    started.elapsed()
}

/// One measurement of one contestant.
struct Measured {
    who: Who,
    /// Distinct outputs per second (throughput), or the offered rate (latency).
    rate: Option<f64>,
    first: Option<Duration>,
    latency: Option<(f64, f64, f64, u64)>,
    distinct: u64,
    expected: u64,
    /// Every expected output read (latency), or the window measured (throughput).
    complete: bool,
    duplicates: u64,
    note: String,
}

fn throughput_run(a: &Args, brokers: &str, who: Who, input: &str) -> Measured {
    let t = Topics {
        input: input.to_string(),
        output: unique(&format!("{}-out", who.name())),
        group: unique(&format!("{}-group", who.name())),
    };
    create_topics(brokers, &[&t.output], a.partitions);
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut running = match start(who, a, brokers, &t, dir.path()) {
        Ok(r) => r,
        Err(e) => return failed(who, a.events, e),
    };
    let r = watch_progress(
        brokers,
        &t.group,
        input,
        a.partitions,
        a.events,
        started,
        Duration::from_secs(a.timeout),
        Window {
            warm: Duration::from_secs(a.tput_warmup),
            len: Duration::from_secs(a.tput_seconds),
        },
        &mut || running.alive(),
    );
    let mut note = stop_note(running, r.timed_out, r.exited);
    let drained = r.committed == a.events;
    if drained && !r.window_full {
        note = format!("backlog drained before the window's end: window shortened; {note}");
    }
    Measured {
        who,
        rate: if r.timed_out { None } else { r.rate },
        first: r.first,
        latency: None,
        distinct: r.committed,
        expected: a.events,
        complete: r.window_full || drained,
        duplicates: 0,
        note,
    }
}

/// Stops a contestant; its summary (or why it failed), after how the reading ended.
fn stop_note(running: Running, timed_out: bool, exited: bool) -> String {
    let mut note = stop(running).unwrap_or_else(|e| e);
    if timed_out {
        note = format!("timed out; {note}");
    }
    if exited {
        note = format!("it stopped by itself; {note}");
    }
    note
}

fn failed(who: Who, expected: u64, note: String) -> Measured {
    Measured {
        who,
        rate: None,
        first: None,
        latency: None,
        distinct: 0,
        expected,
        complete: false,
        duplicates: 0,
        note,
    }
}

fn latency_run(a: &Args, brokers: &str, who: Who) -> Measured {
    let t = Topics {
        input: unique(&format!("{}-lat-in", who.name())),
        output: unique(&format!("{}-lat-out", who.name())),
        group: unique(&format!("{}-lat-group", who.name())),
    };
    create_topics(brokers, &[&t.input, &t.output], a.partitions);
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut running = match start(who, a, brokers, &t, dir.path()) {
        Ok(r) => r,
        Err(e) => return failed(who, 0, e),
    };
    let expected = AtomicU64::new(u64::MAX);
    let measure_from = AtomicU64::new(u64::MAX);
    let first_seen = AtomicBool::new(false);
    // Set when the reader is done (or gave up): the producer stops too.
    let done = AtomicBool::new(false);
    let timeout = Duration::from_secs(a.timeout);
    let (r, offered) = std::thread::scope(|s| {
        let producer = s.spawn(|| {
            let p = input_producer(brokers);
            let mut e = Entries::new(a.accounts);
            let mut sent = 0u64;
            // Start-up: a trickle until the contestant's first output is read.
            while !first_seen.load(Ordering::Acquire)
                && !done.load(Ordering::Acquire)
                && started.elapsed() < timeout
            {
                let (k, v) = e.next(now_ms());
                send(&p, &t.input, &k, &v);
                sent += 1;
                p.poll(Duration::from_millis(1000 / STARTUP_RATE));
            }
            // Warm-up, then the measured seconds, at `rate`, in 1 ms ticks.
            let paced = Instant::now();
            let warm = a.rate * a.warmup;
            let total = warm + a.rate * a.seconds;
            let mut n = 0u64;
            let mut measured_since = None;
            while n < total && !done.load(Ordering::Acquire) && started.elapsed() < timeout {
                let due = ((paced.elapsed().as_secs_f64() * a.rate as f64) as u64).min(total);
                while n < due {
                    if n == warm && measured_since.is_none() {
                        measure_from.store(now_ms(), Ordering::Release);
                        measured_since = Some(Instant::now());
                    }
                    let (k, v) = e.next(now_ms());
                    send(&p, &t.input, &k, &v);
                    n += 1;
                }
                p.poll(Duration::from_millis(1));
            }
            let offered = measured_since
                .map(|m| (n - warm) as f64 / m.elapsed().as_secs_f64())
                .unwrap_or(0.0);
            p.flush(Duration::from_secs(30)).expect("flush");
            expected.store(sent + n, Ordering::Release);
            offered
        });
        let r = read_outputs(
            brokers,
            &t.output,
            a.partitions,
            a.accounts,
            a.fetch_wait_ms,
            started,
            &expected,
            &measure_from,
            &first_seen,
            // Start-up, warm-up and measurement, plus the timeout for draining.
            timeout + Duration::from_secs(a.warmup + a.seconds),
            &mut || running.alive(),
        );
        done.store(true, Ordering::Release);
        (r, producer.join().unwrap())
    });
    let note = stop_note(running, r.timed_out, r.exited);
    let h = &r.latency;
    Measured {
        who,
        rate: Some(offered),
        first: r.first,
        latency: (!h.is_empty()).then(|| {
            (
                h.value_at_quantile(0.5) as f64 / 1e3,
                h.value_at_quantile(0.99) as f64 / 1e3,
                h.max() as f64 / 1e3,
                h.len(),
            )
        }),
        distinct: r.distinct,
        expected: expected.load(Ordering::Acquire),
        complete: r.distinct == expected.load(Ordering::Acquire),
        duplicates: r.duplicates,
        note,
    }
}

/// Why Quix cannot run here, or `None` if it can.
fn quix_missing(python: &Path) -> Option<String> {
    if !python.exists() {
        return Some(format!(
            "{} does not exist (scripts/kafka-bench installs quixstreams into that venv)",
            python.display()
        ));
    }
    let out = Command::new(python)
        .args(["-c", "import quixstreams; print(quixstreams.__version__)"])
        .output();
    match out {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "{} cannot import quixstreams: {}",
            python.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!("cannot run {}: {e}", python.display())),
    }
}

fn quix_version(python: &Path) -> String {
    Command::new(python)
        .args(["-c", "import quixstreams; print(quixstreams.__version__)"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "-".into())
}

fn print_measured(mode: &str, run: usize, m: &Measured) {
    let first = format!(
        "first {} after {}",
        if mode == "throughput" {
            "commit"
        } else {
            "output"
        },
        m.first
            .map(|f| format!("{:.2} s", f.as_secs_f64()))
            .unwrap_or_else(|| "none".into())
    );
    let what = match (mode, m.latency) {
        ("throughput", _) => format!("{} events/s", fmt_opt(m.rate, 0)),
        (_, Some((p50, p99, max, n))) => format!(
            "offered {:.0}/s: p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms ({n} events measured)",
            m.rate.unwrap_or(0.0)
        ),
        _ => "no latency measured".into(),
    };
    let complete = if m.complete {
        String::new()
    } else {
        format!(" INCOMPLETE: {} of {}", m.distinct, m.expected)
    };
    let dups = if m.duplicates > 0 {
        format!(", {} outputs read twice", m.duplicates)
    } else {
        String::new()
    };
    let note = if m.note.is_empty() {
        String::new()
    } else {
        format!(" [{}]", m.note.trim())
    };
    println!(
        "  {mode} run {run} {:<9} {what}; {first}{complete}{dups}{note}",
        m.who.name()
    );
}

fn main() {
    let a = args();
    let brokers = match std::env::var("ONCEFLOW_KAFKA_BROKERS") {
        Ok(b) if !b.trim().is_empty() => b,
        _ => {
            println!(
                "kafka bench: skipped: ONCEFLOW_KAFKA_BROKERS is unset (scripts/kafka-bench \
                 starts a broker and runs this; or `export $(scripts/kafka-broker start)`)"
            );
            return;
        }
    };
    let mut who = a.only.clone();
    let mut quix_note = None;
    if who.contains(&Who::Quix) {
        match quix_missing(&a.python) {
            Some(why) => {
                println!("kafka bench: quix left out: {why}");
                who.retain(|w| *w != Who::Quix);
                quix_note = Some(why);
            }
            None => {
                quix_note = Some(format!("quixstreams {}", quix_version(&a.python)));
            }
        }
    }
    println!(
        "kafka bench: broker {brokers}; {} contestant(s): {}; {} partitions, {} accounts; \
         throughput: {} events backlog; latency: {} events/s, {} s warm-up + {} s; {} run(s); \
         commit every 100 ms; fetch.wait.max.ms {}, fetch.queue.backoff.ms {}, onceflow statistics.interval.ms {}",
        who.len(),
        who.iter().map(|w| w.name()).collect::<Vec<_>>().join(", "),
        a.partitions,
        a.accounts,
        if a.throughput { a.events } else { 0 },
        a.rate,
        a.warmup,
        a.seconds,
        a.runs,
        a.fetch_wait_ms,
        a.fetch_queue_backoff_ms,
        a.stats_ms,
    );
    if let Some(q) = &quix_note {
        println!("  quix: {q}");
    }
    println!("  onceflow: {}", a.onceflow.display());

    let mut tput: Vec<Vec<Measured>> = Vec::new();
    let mut lat: Vec<Vec<Measured>> = Vec::new();
    if a.throughput && a.events > 0 {
        let input = unique("input");
        create_topics(&brokers, &[&input], a.partitions);
        let took = preload(&brokers, &input, a.events, a.accounts);
        println!(
            "  backlog: {} events produced in {:.2} s ({:.0}/s)",
            a.events,
            took.as_secs_f64(),
            a.events as f64 / took.as_secs_f64()
        );
        for run in 1..=a.runs {
            let mut row = Vec::new();
            for w in &who {
                let m = throughput_run(&a, &brokers, *w, &input);
                print_measured("throughput", run, &m);
                row.push(m);
            }
            tput.push(row);
        }
    }
    if a.latency && a.seconds > 0 {
        for run in 1..=a.runs {
            let mut row = Vec::new();
            for w in &who {
                let m = latency_run(&a, &brokers, *w);
                print_measured("latency", run, &m);
                row.push(m);
            }
            lat.push(row);
        }
    }

    // The table: medians over the runs; ratios are medians of per-run ratios.
    println!();
    println!(
        "results (median of {} run(s)): events/s = input records committed per second draining a \
         backlog of {} events; x floor = median of per-run ratios; latency = input produced -> \
         output read (read_committed) at {} events/s",
        a.runs, a.events, a.rate
    );
    println!(
        "{:<10} {:>12} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "", "events/s", "x floor", "p50 ms", "p99 ms", "max ms", "complete"
    );
    let mut incomplete = false;
    for (i, w) in who.iter().enumerate() {
        let rates: Vec<f64> = tput.iter().filter_map(|r| r[i].rate).collect();
        let ratios: Vec<f64> = tput
            .iter()
            .filter_map(|r| {
                let f = r.iter().find(|m| m.who == Who::Floor)?.rate?;
                Some(r[i].rate? / f)
            })
            .collect();
        let lats: Vec<(f64, f64, f64, u64)> = lat.iter().filter_map(|r| r[i].latency).collect();
        let all = tput.iter().chain(&lat).map(|r| &r[i]);
        let ok = all.filter(|m| m.complete).count();
        let total = tput.len() + lat.len();
        incomplete |= ok < total;
        println!(
            "{:<10} {:>12} {:>9} {:>9} {:>9} {:>9} {:>9}",
            w.name(),
            fmt_opt(median(&mut rates.clone()), 0),
            fmt_opt(median(&mut ratios.clone()), 2),
            fmt_opt(median(&mut lats.iter().map(|l| l.0).collect::<Vec<_>>()), 1),
            fmt_opt(median(&mut lats.iter().map(|l| l.1).collect::<Vec<_>>()), 1),
            fmt_opt(median(&mut lats.iter().map(|l| l.2).collect::<Vec<_>>()), 1),
            format!("{ok}/{total}"),
        );
    }
    if incomplete {
        println!("some measurements are incomplete: see their lines above");
        // A smoke run must not pass over a contestant that lost outputs or stalled.
        std::process::exit(1);
    }
}
