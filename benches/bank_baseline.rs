//! A hand-written baseline for the bank example (`examples/bank/pipeline.toml`): the same
//! work as onceflow's write side (the account aggregate) and read side (four
//! projections), in plain Rust, in memory, with no durability and no exactly-once.
//!
//! ```text
//! cargo bench --bench bank_baseline                        # 2M commands (generated), threads 1 and 2, 3 runs
//! cargo bench --bench bank_baseline -- --runs 5 --input cmds.jsonl
//! cargo bench --bench bank_baseline -- --quick             # smoke (what `cargo test --all-targets` runs)
//! cargo bench --bench bank_baseline -- --runs 1 --threads 1 --dump out/   # outputs as JSON lines files
//! cargo bench --bench bank_baseline -- --render manual    # JSON written by hand, not serde_json (same bytes)
//! cargo bench --bench bank_baseline -- --stages --runs 1  # each stage alone: CPU per command
//! ```
//!
//! Input: the lines of `onceflow gen accounts --accounts 100000 --commands 2000000 --seed
//! 1` (generated in memory with the same generator unless `--input FILE`), held in memory
//! before the clock starts. Per command, as the pipeline does:
//!
//! - **write side**: parse the line (serde_json into a borrowed struct); drop resends by
//!   the per-account `seq` (lower than expected, or equal to a held one: duplicate;
//!   higher: held until the gap fills); run the command's rules; render its events
//!   (`event_id`, `type`, `aggregate`, `aggregate_id`, `version`, `causation_id`,
//!   `correlation_id`, `data`) or its rejection as JSON lines, the fields and their order
//!   as onceflow writes them; fold the events into the account's state (a hash map from
//!   account to a slot in a `Vec`); render the `accounts` view upsert of every account
//!   that changed, once per epoch (onceflow's default `emit = "per_epoch"`), or per
//!   command with `--per-event`;
//! - **read side**: parse each event line again (serde_json, borrowed) and apply the
//!   four projections: `balances` (upsert per changed row, tombstone on close),
//!   `transactions` (insert-only: one row per deposit or withdrawal, rendered, not
//!   kept), `monthly_statements` (`account:YYYY-MM`), `daily_report` (`YYYY-MM-DD`);
//!   changed rows are rendered once per epoch (or per event with `--per-event`).
//!
//! Outputs go to in-memory buffers (`Vec<u8>`) that are counted and cleared once per
//! epoch (`--epoch N` commands, default 20,000: about what onceflow commits per epoch on
//! this workload), or written to files with `--dump DIR`. `--threads 1`: both sides in
//! one loop; `--threads 2`: the write side on this thread, the read side on another,
//! events handed over in batches of `--batch` events (default 256) through a bounded
//! crossbeam channel. Default: both modes, interleaved run by run. Reported per mode:
//! median commands/s over `--runs`, and CPU time (process, and per side) per command.
//! Not done (the pipeline does them): durability, exactly-once, headers, dead-letter
//! records (dead letters are counted), the reorder buffer's time limit; a command id must
//! be a string. Results and the comparison with onceflow: docs/benchmarks.md ("A
//! hand-written bank baseline").

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::Write as _;
use std::time::Instant;

use hashbrown::HashMap;
use onceflow_core::hash::{PARTITION_SALT, bucket, stable_hash};
use onceflow_core::workload::{BankParams, write_account_commands};
use serde::{Deserialize, Serialize};

// The same allocator as the `onceflow` binary.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Hasher = foldhash::fast::FixedState;

/// Input partitions of the commands topic (`log append --partitions 4`): rejections name
/// the command's partition and offset, as onceflow's do.
const PARTITIONS: u32 = 4;

struct Args {
    accounts: u64,
    commands: u64,
    duplicates: f64,
    reorder: f64,
    input: Option<String>,
    runs: usize,
    threads: Vec<usize>,
    epoch: u64,
    batch: usize,
    per_event: bool,
    dump: Option<String>,
    stages: bool,
    manual: bool,
}

fn args() -> Args {
    let mut a = Args {
        accounts: 100_000,
        commands: 2_000_000,
        duplicates: 0.0,
        reorder: 0.0,
        input: None,
        runs: 3,
        threads: vec![1, 2],
        epoch: 20_000,
        batch: 256,
        per_event: false,
        dump: None,
        stages: false,
        manual: false,
    };
    let raw: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes --bench; `cargo test --all-targets` does not: a smoke run.
    let argv: Vec<String> = if raw.iter().any(|a| a == "--bench") {
        raw.into_iter().filter(|s| s != "--bench").collect()
    } else {
        vec!["--quick".into()]
    };
    let mut it = argv.into_iter();
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        let num = |s: String| {
            s.parse::<u64>()
                .unwrap_or_else(|_| panic!("not a number: {s}"))
        };
        match flag.as_str() {
            "--quick" => {
                a.accounts = 2_000;
                a.commands = 50_000;
                a.duplicates = 0.01;
                a.reorder = 0.01;
                a.runs = 1;
                a.epoch = 2_000;
            }
            "--accounts" => a.accounts = num(val()),
            "--commands" => a.commands = num(val()),
            "--input" => a.input = Some(val()),
            "--runs" => a.runs = num(val()) as usize,
            "--threads" => {
                a.threads = match val().as_str() {
                    "1" => vec![1],
                    "2" => vec![2],
                    "both" => vec![1, 2],
                    other => panic!("--threads takes 1, 2 or both, not {other}"),
                }
            }
            "--epoch" => a.epoch = num(val()).max(1),
            "--batch" => a.batch = num(val()).max(1) as usize,
            "--per-event" => a.per_event = true,
            "--dump" => a.dump = Some(val()),
            "--stages" => a.stages = true,
            "--render" => {
                a.manual = match val().as_str() {
                    "serde" => false,
                    "manual" => true,
                    other => panic!("--render takes serde or manual, not {other}"),
                }
            }
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

// --- strings, dates -----------------------------------------------------------------------

/// A JSON string: borrowed from the input line unless it has escapes.
#[derive(Debug)]
struct Str<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

impl std::ops::Deref for Str<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// (year, month, day) of a day since 1970-01-01 (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

const DAY_MS: i64 = 86_400_000;

fn put2(out: &mut [u8], n: u32) {
    out[0] = b'0' + (n / 10 % 10) as u8;
    out[1] = b'0' + (n % 10) as u8;
}

/// `YYYY-MM-DD` of a day since the epoch (four-digit years).
fn date_text(days: i64) -> [u8; 10] {
    let (y, m, d) = civil_from_days(days);
    let mut b = [b'-'; 10];
    put2(&mut b[0..2], (y / 100) as u32);
    put2(&mut b[2..4], (y % 100) as u32);
    put2(&mut b[5..7], m);
    put2(&mut b[8..10], d);
    b
}

/// RFC 3339 in UTC of a Unix time in ms, the fraction trimmed (as CEL's `string(timestamp)`
/// and onceflow's rendering of a timestamp field): `2026-01-01T01:01:44.81Z`.
fn rfc3339_ms(ms: i64) -> ([u8; 24], usize) {
    let mut b = [0u8; 24];
    b[..10].copy_from_slice(&date_text(ms.div_euclid(DAY_MS)));
    let msod = ms.rem_euclid(DAY_MS);
    let sod = (msod / 1000) as u32;
    let mut at = 10;
    for (sep, n) in [(b'T', sod / 3600), (b':', sod / 60 % 60), (b':', sod % 60)] {
        b[at] = sep;
        put2(&mut b[at + 1..at + 3], n);
        at += 3;
    }
    let mut frac = (msod % 1000) as u32;
    if frac != 0 {
        let mut len = 3;
        while frac.is_multiple_of(10) {
            frac /= 10;
            len -= 1;
        }
        b[at] = b'.';
        for i in (0..len).rev() {
            b[at + 1 + i] = b'0' + (frac % 10) as u8;
            frac /= 10;
        }
        at += 1 + len;
    }
    b[at] = b'Z';
    (b, at + 1)
}

fn ascii(b: &[u8]) -> &str {
    std::str::from_utf8(b).expect("ASCII")
}

// --- a keyed table of rows, with the rows changed in the epoch ------------------------------

/// A borrowed key made owned, for a new row.
trait ToKey<K> {
    fn to_key(&self) -> K;
}

impl ToKey<Box<str>> for str {
    fn to_key(&self) -> Box<str> {
        self.into()
    }
}

impl ToKey<i64> for i64 {
    fn to_key(&self) -> i64 {
        *self
    }
}

/// Rows in a `Vec`, found by key through a hash map; `dirty` lists the rows changed in the
/// current epoch (each once).
struct Table<K, R> {
    index: HashMap<K, u32, Hasher>,
    keys: Vec<K>,
    rows: Vec<R>,
    mark: Vec<u32>,
    dirty: Vec<u32>,
}

impl<K: std::hash::Hash + Eq + Clone, R: Default> Table<K, R> {
    fn new() -> Self {
        Table {
            index: HashMap::with_hasher(Hasher::default()),
            keys: Vec::new(),
            rows: Vec::new(),
            mark: Vec::new(),
            dirty: Vec::new(),
        }
    }

    /// The slot of `key`, created with the row's defaults if new.
    fn slot<Q>(&mut self, key: &Q) -> usize
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized + ToKey<K>,
    {
        if let Some(&i) = self.index.get(key) {
            return i as usize;
        }
        let i = self.rows.len();
        let k = key.to_key();
        self.index.insert(k.clone(), i as u32);
        self.keys.push(k);
        self.rows.push(R::default());
        self.mark.push(0);
        i
    }

    fn touch(&mut self, i: usize, epoch: u32) {
        if self.mark[i] != epoch {
            self.mark[i] = epoch;
            self.dirty.push(i as u32);
        }
    }
}

// --- rendering: serde_json (default), or by hand (`--render manual`) -----------------------

/// `--render manual`: every output written by the `Render` impls below instead of
/// `serde_json::to_writer` (the same bytes).
static MANUAL: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// An output record: serde's rendering, or a hand-written one of the same bytes.
trait Render: Serialize {
    fn render(&self, w: &mut W);
}

fn put<T: Render>(out: &mut Vec<u8>, v: &T) {
    if MANUAL.load(std::sync::atomic::Ordering::Relaxed) {
        v.render(&mut W(out));
    } else {
        serde_json::to_writer(out, v).expect("serialize");
    }
}

/// A hand-written JSON writer: constant field names copied as they are, strings checked
/// for characters to escape (serde_json escapes those that have any), numbers with itoa.
struct W<'o>(&'o mut Vec<u8>);

impl W<'_> {
    fn raw(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    fn s(&mut self, s: &str) {
        if s.bytes().all(|c| c >= 0x20 && c != b'"' && c != b'\\') {
            self.0.reserve(s.len() + 2);
            self.0.push(b'"');
            self.0.extend_from_slice(s.as_bytes());
            self.0.push(b'"');
        } else {
            serde_json::to_writer(&mut *self.0, s).expect("serialize");
        }
    }
    fn u(&mut self, n: u64) {
        self.raw(itoa::Buffer::new().format(n).as_bytes());
    }
    fn i(&mut self, n: i64) {
        self.raw(itoa::Buffer::new().format(n).as_bytes());
    }
}

/// Output of one topic: JSON lines, counted, cleared at each flush (or dumped to a file).
struct Out {
    buf: Vec<u8>,
    records: u64,
    bytes: u64,
    file: Option<std::fs::File>,
}

impl Out {
    fn new(dump: &Option<String>, name: &str) -> Out {
        Out {
            buf: Vec::with_capacity(1 << 16),
            records: 0,
            bytes: 0,
            file: dump.as_ref().map(|d| {
                std::fs::File::create(std::path::Path::new(d).join(format!("{name}.jsonl")))
                    .expect("create dump file")
            }),
        }
    }

    fn line<T: Render>(&mut self, v: &T) {
        put(&mut self.buf, v);
        self.buf.push(b'\n');
        self.records += 1;
    }

    fn flush(&mut self) {
        self.bytes += self.buf.len() as u64;
        if let Some(f) = &mut self.file {
            f.write_all(&self.buf).expect("write dump");
        }
        std::hint::black_box(&self.buf);
        self.buf.clear();
    }
}

// --- write side: the account aggregate ------------------------------------------------------

#[derive(Deserialize)]
struct Command<'a> {
    #[serde(borrow)]
    id: Option<Str<'a>>,
    #[serde(borrow)]
    account: Str<'a>,
    seq: u64,
    ts: Option<i64>,
    #[serde(rename = "type", borrow)]
    ty: Str<'a>,
    #[serde(borrow)]
    owner: Option<Str<'a>>,
    #[serde(borrow)]
    currency: Option<Str<'a>>,
    amount: Option<i64>,
    #[serde(borrow)]
    reason: Option<Str<'a>>,
    #[serde(borrow)]
    correlation_id: Option<Str<'a>>,
    expected_version: Option<u64>,
}

#[derive(Serialize)]
struct EventOut<'a> {
    event_id: &'a str,
    #[serde(rename = "type")]
    ty: &'a str,
    aggregate: &'a str,
    aggregate_id: &'a str,
    version: u64,
    causation_id: &'a str,
    correlation_id: &'a str,
    data: EventData<'a>,
}

/// An event's data: the fields its type has, in the order the pipeline declares them.
#[derive(Serialize, Default)]
struct EventData<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    owner: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    currency: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    amount: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

#[derive(Serialize)]
struct RejectionOut<'a> {
    command_id: &'a str,
    command_type: &'a str,
    aggregate: &'a str,
    aggregate_id: &'a str,
    version: u64,
    reason: &'a str,
    message: &'a str,
    correlation_id: &'a str,
    source: &'a str,
    partition: u32,
    offset: u64,
}

#[derive(Serialize)]
struct AccountOut<'a> {
    key: &'a str,
    version: u64,
    status: &'a str,
    owner: &'a str,
    currency: &'a str,
    balance: i64,
    opened_at: i64,
}

#[derive(Clone, Copy, PartialEq, Eq, Default)]
enum Status {
    #[default]
    None,
    Open,
    Frozen,
    Closed,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::None => "none",
            Status::Open => "open",
            Status::Frozen => "frozen",
            Status::Closed => "closed",
        }
    }
}

const CURRENCIES: [&str; 3] = ["EUR", "USD", "GBP"];

/// A command waiting for its account's sequence gap to fill.
struct Held {
    line: Box<[u8]>,
    partition: u32,
    offset: u64,
}

#[derive(Default)]
struct Account {
    status: Status,
    owner: String,
    currency: u8,
    balance: i64,
    opened_at: i64,
    version: u64,
    /// Highest applied `seq` (0: none yet).
    applied: u64,
    held: std::collections::BTreeMap<u64, Held>,
}

#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
struct WriteCounts {
    commands: u64,
    processed: u64,
    duplicates: u64,
    held: u64,
    dead: u64,
    events: u64,
    rejections: u64,
    view_upserts: u64,
}

/// Where the write side hands its events: the read side, directly or through a channel.
trait Sink {
    /// A batch of event lines; `epoch_end`: the write side's epoch ends after it.
    fn events(&mut self, batch: &mut Vec<u8>, epoch_end: bool);
}

struct WriteSide {
    accounts: Table<Box<str>, Account>,
    events: Vec<u8>,
    events_in_batch: usize,
    batch: usize,
    events_dump: Option<std::fs::File>,
    events_bytes: u64,
    rejections: Out,
    view: Out,
    epoch: u32,
    per_event: bool,
    offsets: [u64; PARTITIONS as usize],
    counts: WriteCounts,
    scratch: String,
    message: String,
}

enum Rejection {
    Rule(&'static str),
    /// A rule with a message, already in `WriteSide::message`.
    RuleMsg(&'static str),
}

impl WriteSide {
    fn new(a: &Args) -> WriteSide {
        WriteSide {
            accounts: Table::new(),
            events: Vec::with_capacity(a.batch * 300),
            events_in_batch: 0,
            batch: a.batch,
            events_dump: a.dump.as_ref().map(|d| {
                std::fs::File::create(std::path::Path::new(d).join("account_events.jsonl"))
                    .expect("create dump file")
            }),
            events_bytes: 0,
            rejections: Out::new(&a.dump, "account_rejections"),
            view: Out::new(&a.dump, "accounts"),
            epoch: 1,
            per_event: a.per_event,
            offsets: [0; PARTITIONS as usize],
            counts: WriteCounts::default(),
            scratch: String::new(),
            message: String::new(),
        }
    }

    /// One input line.
    fn command(&mut self, line: &[u8], sink: &mut impl Sink) {
        self.counts.commands += 1;
        let Ok(cmd) = serde_json::from_slice::<Command>(line) else {
            self.counts.dead += 1; // malformed, or no account / seq / type
            return;
        };
        if cmd.account.is_empty() {
            self.counts.dead += 1;
            return;
        }
        let partition = bucket(
            stable_hash(cmd.account.as_bytes()),
            PARTITION_SALT,
            PARTITIONS,
        );
        let offset = self.offsets[partition as usize];
        self.offsets[partition as usize] += 1;
        let i = self.accounts.slot(&*cmd.account);
        let acc = &mut self.accounts.rows[i];
        let expected = acc.applied + 1;
        if cmd.seq < expected || acc.held.contains_key(&cmd.seq) {
            self.counts.duplicates += 1;
            return;
        }
        if cmd.seq > expected {
            self.counts.held += 1;
            acc.held.insert(
                cmd.seq,
                Held {
                    line: line.into(),
                    partition,
                    offset,
                },
            );
            return;
        }
        self.apply(i, &cmd, partition, offset, sink);
        // Held successors now in order.
        loop {
            let acc = &mut self.accounts.rows[i];
            let next = acc.applied + 1;
            let Some(h) = acc.held.remove(&next) else {
                break;
            };
            self.counts.held -= 1;
            let cmd = serde_json::from_slice::<Command>(&h.line).expect("parsed before");
            self.apply(i, &cmd, h.partition, h.offset, sink);
        }
    }

    /// Runs a command whose sequence number is the next one of its account.
    fn apply(
        &mut self,
        i: usize,
        cmd: &Command,
        partition: u32,
        offset: u64,
        sink: &mut impl Sink,
    ) {
        self.counts.processed += 1;
        self.accounts.rows[i].applied = cmd.seq;
        let default_id;
        let id: &str = match &cmd.id {
            Some(s) => s,
            None => {
                default_id = format!("commands-{partition}-{offset}");
                &default_id
            }
        };
        let correlation: &str = cmd.correlation_id.as_deref().unwrap_or(id);
        let account: &str = &cmd.account;
        let acc = &mut self.accounts.rows[i];
        self.message.clear();
        let result = (|| -> Result<(), Rejection> {
            if let Some(v) = cmd.expected_version
                && v != acc.version
            {
                let _ = write!(
                    self.message,
                    "expected version {v}, but account '{account}' is at version {}",
                    acc.version
                );
                return Err(Rejection::RuleMsg("version_conflict"));
            }
            let open = |acc: &Account, message: &mut String| {
                if acc.status != Status::Open {
                    let _ = write!(message, "account is {}", acc.status.as_str());
                    return Err(Rejection::RuleMsg("account_not_open"));
                }
                Ok(())
            };
            let missing = |message: &mut String, field: &str| {
                let _ = write!(message, "no such key: {field}");
                Rejection::RuleMsg("invalid_command")
            };
            let amount = |message: &mut String| -> Result<i64, Rejection> {
                let a = cmd.amount.ok_or_else(|| missing(message, "amount"))?;
                if a <= 0 {
                    let _ = write!(message, "amount must be positive, got {a}");
                    return Err(Rejection::RuleMsg("invalid_amount"));
                }
                Ok(a)
            };
            let ts = |message: &mut String| cmd.ts.ok_or_else(|| missing(message, "ts"));
            let mut ev = Emitter {
                out: &mut self.events,
                scratch: &mut self.scratch,
                id,
                correlation,
                account,
                n: 0,
            };
            match &*cmd.ty {
                "OpenAccount" => {
                    if acc.status != Status::None {
                        let _ = write!(self.message, "account {account} already exists");
                        return Err(Rejection::RuleMsg("already_open"));
                    }
                    let owner = cmd
                        .owner
                        .as_deref()
                        .ok_or_else(|| missing(&mut self.message, "owner"))?;
                    if owner.is_empty() {
                        return Err(Rejection::Rule("owner_required"));
                    }
                    let currency = cmd
                        .currency
                        .as_deref()
                        .ok_or_else(|| missing(&mut self.message, "currency"))?;
                    let Some(c) = CURRENCIES.iter().position(|&c| c == currency) else {
                        let _ = write!(self.message, "currency {currency} is not supported");
                        return Err(Rejection::RuleMsg("unsupported_currency"));
                    };
                    let at = ts(&mut self.message)?;
                    acc.version += 1;
                    ev.emit(
                        "AccountOpened",
                        acc.version,
                        EventData {
                            owner: Some(owner),
                            currency: Some(currency),
                            at: Some(at),
                            ..Default::default()
                        },
                    );
                    acc.status = Status::Open;
                    acc.owner.clear();
                    acc.owner.push_str(owner);
                    acc.currency = c as u8;
                    acc.opened_at = at;
                }
                "Deposit" => {
                    open(acc, &mut self.message)?;
                    let a = amount(&mut self.message)?;
                    let at = ts(&mut self.message)?;
                    let Some(b) = acc.balance.checked_add(a) else {
                        self.message
                            .push_str("integer overflow in state.balance + event.data.amount");
                        return Err(Rejection::RuleMsg("invalid_command"));
                    };
                    acc.version += 1;
                    ev.emit(
                        "Deposited",
                        acc.version,
                        EventData {
                            amount: Some(a),
                            at: Some(at),
                            ..Default::default()
                        },
                    );
                    acc.balance = b;
                }
                "Withdraw" => {
                    open(acc, &mut self.message)?;
                    let a = amount(&mut self.message)?;
                    if acc.balance < a {
                        let _ = write!(self.message, "balance {} is less than {a}", acc.balance);
                        return Err(Rejection::RuleMsg("insufficient_funds"));
                    }
                    let at = ts(&mut self.message)?;
                    acc.version += 1;
                    ev.emit(
                        "Withdrawn",
                        acc.version,
                        EventData {
                            amount: Some(a),
                            at: Some(at),
                            ..Default::default()
                        },
                    );
                    acc.balance -= a;
                    if acc.balance == 0 {
                        acc.version += 1;
                        ev.emit(
                            "BalanceDepleted",
                            acc.version,
                            EventData {
                                at: Some(at),
                                ..Default::default()
                            },
                        );
                    }
                }
                "Freeze" => {
                    open(acc, &mut self.message)?;
                    acc.version += 1;
                    ev.emit(
                        "AccountFrozen",
                        acc.version,
                        EventData {
                            reason: Some(cmd.reason.as_deref().unwrap_or("unspecified")),
                            ..Default::default()
                        },
                    );
                    acc.status = Status::Frozen;
                }
                "Unfreeze" => {
                    if acc.status != Status::Frozen {
                        return Err(Rejection::Rule("not_frozen"));
                    }
                    acc.version += 1;
                    ev.emit("AccountUnfrozen", acc.version, EventData::default());
                    acc.status = Status::Open;
                }
                "Close" => {
                    open(acc, &mut self.message)?;
                    if acc.balance != 0 {
                        let _ = write!(
                            self.message,
                            "withdraw the balance of {} first",
                            acc.balance
                        );
                        return Err(Rejection::RuleMsg("balance_not_zero"));
                    }
                    let at = ts(&mut self.message)?;
                    acc.version += 1;
                    ev.emit(
                        "AccountClosed",
                        acc.version,
                        EventData {
                            at: Some(at),
                            ..Default::default()
                        },
                    );
                    acc.status = Status::Closed;
                }
                _ => return Err(Rejection::Rule("unknown_type")),
            }
            let n = ev.n;
            self.counts.events += n as u64;
            self.events_in_batch += n;
            Ok(())
        })();
        match result {
            Ok(()) => {
                if self.per_event {
                    self.render_account(i);
                } else {
                    self.accounts.touch(i, self.epoch);
                }
                if self.events_in_batch >= self.batch {
                    self.hand_over(sink, false);
                }
            }
            Err(Rejection::Rule("unknown_type")) => {
                self.counts.processed -= 1;
                self.counts.dead += 1;
            }
            Err(r) => {
                let (reason, message) = match r {
                    Rejection::Rule("owner_required") => ("owner_required", "size(cmd.owner) > 0"),
                    Rejection::Rule("not_frozen") => ("not_frozen", "state.status == 'frozen'"),
                    Rejection::Rule(r) => (r, r),
                    Rejection::RuleMsg(r) => (r, self.message.as_str()),
                };
                self.counts.rejections += 1;
                self.rejections.line(&RejectionOut {
                    command_id: id,
                    command_type: &cmd.ty,
                    aggregate: "account",
                    aggregate_id: account,
                    version: self.accounts.rows[i].version,
                    reason,
                    message,
                    correlation_id: correlation,
                    source: "commands",
                    partition,
                    offset,
                });
            }
        }
    }

    fn render_account(&mut self, i: usize) {
        let a = &self.accounts.rows[i];
        self.counts.view_upserts += 1;
        self.view.line(&AccountOut {
            key: &self.accounts.keys[i],
            version: a.version,
            status: a.status.as_str(),
            owner: &a.owner,
            currency: CURRENCIES[a.currency as usize],
            balance: a.balance,
            opened_at: a.opened_at,
        });
    }

    fn hand_over(&mut self, sink: &mut impl Sink, epoch_end: bool) {
        self.events_bytes += self.events.len() as u64;
        if let Some(f) = &mut self.events_dump {
            f.write_all(&self.events).expect("write dump");
        }
        self.events_in_batch = 0;
        sink.events(&mut self.events, epoch_end);
    }

    /// Ends the epoch: the changed accounts' upserts, the outputs flushed, the events
    /// handed over.
    fn end_epoch(&mut self, sink: &mut impl Sink) {
        let dirty = std::mem::take(&mut self.accounts.dirty);
        for &i in &dirty {
            self.render_account(i as usize);
        }
        self.accounts.dirty = dirty;
        self.accounts.dirty.clear();
        self.view.flush();
        self.rejections.flush();
        self.hand_over(sink, true);
        self.epoch += 1;
    }
}

/// Renders one command's events.
struct Emitter<'o, 'a> {
    out: &'o mut Vec<u8>,
    scratch: &'o mut String,
    id: &'a str,
    correlation: &'a str,
    account: &'a str,
    n: usize,
}

impl Emitter<'_, '_> {
    fn emit(&mut self, ty: &str, version: u64, data: EventData) {
        self.scratch.clear();
        self.scratch.push_str(self.id);
        self.scratch.push(':');
        self.scratch
            .push_str(itoa::Buffer::new().format(self.n as u64));
        put(
            self.out,
            &EventOut {
                event_id: self.scratch,
                ty,
                aggregate: "account",
                aggregate_id: self.account,
                version,
                causation_id: self.id,
                correlation_id: self.correlation,
                data,
            },
        );
        self.out.push(b'\n');
        self.n += 1;
    }
}

// --- read side: four projections -----------------------------------------------------------

#[derive(Deserialize)]
struct Event<'a> {
    #[serde(rename = "type", borrow)]
    ty: Str<'a>,
    #[serde(borrow)]
    aggregate_id: Str<'a>,
    version: u64,
    #[serde(borrow)]
    data: EventIn<'a>,
}

#[derive(Deserialize)]
struct EventIn<'a> {
    #[serde(borrow)]
    owner: Option<Str<'a>>,
    #[serde(borrow)]
    currency: Option<Str<'a>>,
    amount: Option<i64>,
    at: Option<i64>,
}

#[derive(Default)]
struct BalanceRow {
    exists: bool,
    version: u64,
    owner: String,
    currency: String,
    frozen: bool,
    balance: i64,
}

#[derive(Serialize)]
struct BalanceOut<'a> {
    key: &'a str,
    version: u64,
    owner: &'a str,
    currency: &'a str,
    status: &'a str,
    balance: i64,
}

#[derive(Serialize)]
struct Tombstone<'a> {
    key: &'a str,
    deleted: bool,
}

#[derive(Serialize)]
struct TransactionOut<'a> {
    key: &'a str,
    version: u64,
    account: &'a str,
    seq: u64,
    #[serde(rename = "type")]
    ty: &'a str,
    amount: i64,
    at: &'a str,
}

#[derive(Default)]
struct MonthRow {
    version: u64,
    deposited: i64,
    withdrawn: i64,
    transactions: i64,
}

#[derive(Serialize)]
struct MonthOut<'a> {
    key: &'a str,
    version: u64,
    account: &'a str,
    month: &'a str,
    deposited: i64,
    withdrawn: i64,
    transactions: i64,
}

#[derive(Default)]
struct DayRow {
    version: u64,
    accounts_opened: i64,
    accounts_closed: i64,
    deposits: i64,
    withdrawals: i64,
    net: i64,
}

#[derive(Serialize)]
struct DayOut<'a> {
    key: &'a str,
    version: u64,
    day: &'a str,
    accounts_opened: i64,
    accounts_closed: i64,
    deposits: i64,
    withdrawals: i64,
    net: i64,
}

#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
struct ReadCounts {
    events: u64,
    balances: u64,
    balance_deletes: u64,
    transactions: u64,
    monthly_statements: u64,
    daily_report: u64,
    failed: u64,
}

struct ReadSide {
    balances: Table<Box<str>, BalanceRow>,
    months: Table<Box<str>, MonthRow>,
    days: Table<i64, DayRow>,
    out_balances: Out,
    out_transactions: Out,
    out_months: Out,
    out_days: Out,
    epoch: u32,
    per_event: bool,
    counts: ReadCounts,
    key: String,
}

impl ReadSide {
    fn new(a: &Args) -> ReadSide {
        ReadSide {
            balances: Table::new(),
            months: Table::new(),
            days: Table::new(),
            out_balances: Out::new(&a.dump, "balances"),
            out_transactions: Out::new(&a.dump, "transactions"),
            out_months: Out::new(&a.dump, "monthly_statements"),
            out_days: Out::new(&a.dump, "daily_report"),
            epoch: 1,
            per_event: a.per_event,
            counts: ReadCounts::default(),
            key: String::new(),
        }
    }

    fn batch(&mut self, lines: &[u8], epoch_end: bool) {
        for line in lines.split(|&b| b == b'\n') {
            if !line.is_empty() {
                self.event(line);
            }
        }
        if epoch_end {
            self.end_epoch();
        }
    }

    fn event(&mut self, line: &[u8]) {
        self.counts.events += 1;
        let ev: Event = serde_json::from_slice(line).expect("an event the write side rendered");
        let ty: &str = &ev.ty;
        let id: &str = &ev.aggregate_id;
        let amount = ev.data.amount;

        // balances: every event of the account.
        let i = self.balances.slot(id);
        let row = &mut self.balances.rows[i];
        let delete = ty == "AccountClosed";
        let mut ok = true;
        if !row.exists {
            *row = BalanceRow {
                exists: true,
                ..Default::default()
            };
        }
        match ty {
            "AccountOpened" => {
                row.owner.clear();
                row.owner
                    .push_str(ev.data.owner.as_deref().unwrap_or_default());
                row.currency.clear();
                row.currency
                    .push_str(ev.data.currency.as_deref().unwrap_or_default());
            }
            "Deposited" => match row.balance.checked_add(amount.unwrap_or_default()) {
                Some(b) => row.balance = b,
                None => ok = false,
            },
            "Withdrawn" => match row.balance.checked_sub(amount.unwrap_or_default()) {
                Some(b) => row.balance = b,
                None => ok = false,
            },
            "AccountFrozen" => row.frozen = true,
            "AccountUnfrozen" => row.frozen = false,
            _ => {}
        }
        if !ok {
            self.counts.failed += 1;
        } else {
            row.version += 1;
            if delete {
                row.exists = false;
            }
            if self.per_event {
                self.render_balance(i);
            } else {
                self.balances.touch(i, self.epoch);
            }
        }

        let Some(at) = ev.data.at else {
            return; // daily_report: has(event.data.at); the others take deposits and withdrawals, which have it
        };
        let day = at.div_euclid(DAY_MS);
        let deposit = ty == "Deposited";
        let money = deposit || ty == "Withdrawn";
        if money {
            let amount = amount.unwrap_or_default();
            // transactions: insert-only, rendered and not kept.
            let mut key = [0u8; 10];
            key[0] = b'/';
            let padded = ev.version + 1_000_000_000;
            let mut b = itoa::Buffer::new();
            key[1..].copy_from_slice(&b.format(padded).as_bytes()[1..]);
            self.key.clear();
            self.key.push_str(id);
            self.key.push_str(ascii(&key));
            let (at_text, at_len) = rfc3339_ms(at);
            self.counts.transactions += 1;
            self.out_transactions.line(&TransactionOut {
                key: &self.key,
                version: 1,
                account: id,
                seq: ev.version,
                ty: if deposit { "deposit" } else { "withdrawal" },
                amount,
                at: ascii(&at_text[..at_len]),
            });

            // monthly_statements: `account:YYYY-MM`.
            self.key.clear();
            self.key.push_str(id);
            self.key.push(':');
            self.key.push_str(ascii(&date_text(day)[..7]));
            let i = self.months.slot(self.key.as_str());
            let row = &mut self.months.rows[i];
            let sum = if deposit {
                row.deposited.checked_add(amount)
            } else {
                row.withdrawn.checked_add(amount)
            };
            match (sum, row.transactions.checked_add(1)) {
                (Some(s), Some(t)) => {
                    if deposit {
                        row.deposited = s;
                    } else {
                        row.withdrawn = s;
                    }
                    row.transactions = t;
                    row.version += 1;
                    if self.per_event {
                        self.render_month(i);
                    } else {
                        self.months.touch(i, self.epoch);
                    }
                }
                _ => self.counts.failed += 1,
            }
        }

        // daily_report: every event with an `at`.
        let i = self.days.slot(&day);
        let row = &mut self.days.rows[i];
        let a = amount.unwrap_or_default();
        let updated = match ty {
            "AccountOpened" => row
                .accounts_opened
                .checked_add(1)
                .map(|v| row.accounts_opened = v),
            "AccountClosed" => row
                .accounts_closed
                .checked_add(1)
                .map(|v| row.accounts_closed = v),
            "Deposited" => match (row.deposits.checked_add(1), row.net.checked_add(a)) {
                (Some(d), Some(n)) => {
                    row.deposits = d;
                    row.net = n;
                    Some(())
                }
                _ => None,
            },
            "Withdrawn" => match (row.withdrawals.checked_add(1), row.net.checked_sub(a)) {
                (Some(w), Some(n)) => {
                    row.withdrawals = w;
                    row.net = n;
                    Some(())
                }
                _ => None,
            },
            _ => Some(()),
        };
        if updated.is_some() {
            row.version += 1;
            if self.per_event {
                self.render_day(i);
            } else {
                self.days.touch(i, self.epoch);
            }
        } else {
            self.counts.failed += 1;
        }
    }

    fn render_balance(&mut self, i: usize) {
        let row = &self.balances.rows[i];
        let key = &self.balances.keys[i];
        if row.exists {
            self.counts.balances += 1;
            self.out_balances.line(&BalanceOut {
                key,
                version: row.version,
                owner: &row.owner,
                currency: &row.currency,
                status: if row.frozen { "frozen" } else { "open" },
                balance: row.balance,
            });
        } else {
            self.counts.balance_deletes += 1;
            self.out_balances.line(&Tombstone { key, deleted: true });
        }
    }

    fn render_month(&mut self, i: usize) {
        let row = &self.months.rows[i];
        let key: &str = &self.months.keys[i];
        let (account, month) = (&key[..key.len() - 8], &key[key.len() - 7..]);
        self.counts.monthly_statements += 1;
        self.out_months.line(&MonthOut {
            key,
            version: row.version,
            account,
            month,
            deposited: row.deposited,
            withdrawn: row.withdrawn,
            transactions: row.transactions,
        });
    }

    fn render_day(&mut self, i: usize) {
        let row = &self.days.rows[i];
        let text = date_text(self.days.keys[i]);
        let day = ascii(&text);
        self.counts.daily_report += 1;
        self.out_days.line(&DayOut {
            key: day,
            version: row.version,
            day,
            accounts_opened: row.accounts_opened,
            accounts_closed: row.accounts_closed,
            deposits: row.deposits,
            withdrawals: row.withdrawals,
            net: row.net,
        });
    }

    fn end_epoch(&mut self) {
        let dirty = std::mem::take(&mut self.balances.dirty);
        for &i in &dirty {
            self.render_balance(i as usize);
        }
        self.balances.dirty = dirty;
        self.balances.dirty.clear();
        let dirty = std::mem::take(&mut self.months.dirty);
        for &i in &dirty {
            self.render_month(i as usize);
        }
        self.months.dirty = dirty;
        self.months.dirty.clear();
        let dirty = std::mem::take(&mut self.days.dirty);
        for &i in &dirty {
            self.render_day(i as usize);
        }
        self.days.dirty = dirty;
        self.days.dirty.clear();
        self.out_balances.flush();
        self.out_transactions.flush();
        self.out_months.flush();
        self.out_days.flush();
        self.epoch += 1;
    }
}

impl Render for EventOut<'_> {
    fn render(&self, w: &mut W) {
        w.raw(b"{\"event_id\":");
        w.s(self.event_id);
        w.raw(b",\"type\":");
        w.s(self.ty);
        w.raw(b",\"aggregate\":");
        w.s(self.aggregate);
        w.raw(b",\"aggregate_id\":");
        w.s(self.aggregate_id);
        w.raw(b",\"version\":");
        w.u(self.version);
        w.raw(b",\"causation_id\":");
        w.s(self.causation_id);
        w.raw(b",\"correlation_id\":");
        w.s(self.correlation_id);
        w.raw(b",\"data\":{");
        let d = &self.data;
        let mut sep: &[u8] = b"\"";
        if let Some(v) = d.owner {
            w.raw(sep);
            w.raw(b"owner\":");
            w.s(v);
            sep = b",\"";
        }
        if let Some(v) = d.currency {
            w.raw(sep);
            w.raw(b"currency\":");
            w.s(v);
            sep = b",\"";
        }
        if let Some(v) = d.amount {
            w.raw(sep);
            w.raw(b"amount\":");
            w.i(v);
            sep = b",\"";
        }
        if let Some(v) = d.at {
            w.raw(sep);
            w.raw(b"at\":");
            w.i(v);
            sep = b",\"";
        }
        if let Some(v) = d.reason {
            w.raw(sep);
            w.raw(b"reason\":");
            w.s(v);
        }
        w.raw(b"}}");
    }
}

impl Render for RejectionOut<'_> {
    fn render(&self, w: &mut W) {
        w.raw(b"{\"command_id\":");
        w.s(self.command_id);
        w.raw(b",\"command_type\":");
        w.s(self.command_type);
        w.raw(b",\"aggregate\":");
        w.s(self.aggregate);
        w.raw(b",\"aggregate_id\":");
        w.s(self.aggregate_id);
        w.raw(b",\"version\":");
        w.u(self.version);
        w.raw(b",\"reason\":");
        w.s(self.reason);
        w.raw(b",\"message\":");
        w.s(self.message);
        w.raw(b",\"correlation_id\":");
        w.s(self.correlation_id);
        w.raw(b",\"source\":");
        w.s(self.source);
        w.raw(b",\"partition\":");
        w.u(u64::from(self.partition));
        w.raw(b",\"offset\":");
        w.u(self.offset);
        w.raw(b"}");
    }
}

impl Render for AccountOut<'_> {
    fn render(&self, w: &mut W) {
        w.raw(b"{\"key\":");
        w.s(self.key);
        w.raw(b",\"version\":");
        w.u(self.version);
        w.raw(b",\"status\":");
        w.s(self.status);
        w.raw(b",\"owner\":");
        w.s(self.owner);
        w.raw(b",\"currency\":");
        w.s(self.currency);
        w.raw(b",\"balance\":");
        w.i(self.balance);
        w.raw(b",\"opened_at\":");
        w.i(self.opened_at);
        w.raw(b"}");
    }
}

impl Render for BalanceOut<'_> {
    fn render(&self, w: &mut W) {
        w.raw(b"{\"key\":");
        w.s(self.key);
        w.raw(b",\"version\":");
        w.u(self.version);
        w.raw(b",\"owner\":");
        w.s(self.owner);
        w.raw(b",\"currency\":");
        w.s(self.currency);
        w.raw(b",\"status\":");
        w.s(self.status);
        w.raw(b",\"balance\":");
        w.i(self.balance);
        w.raw(b"}");
    }
}

impl Render for Tombstone<'_> {
    fn render(&self, w: &mut W) {
        w.raw(b"{\"key\":");
        w.s(self.key);
        w.raw(if self.deleted {
            b",\"deleted\":true}"
        } else {
            b",\"deleted\":false}"
        });
    }
}

impl Render for TransactionOut<'_> {
    fn render(&self, w: &mut W) {
        w.raw(b"{\"key\":");
        w.s(self.key);
        w.raw(b",\"version\":");
        w.u(self.version);
        w.raw(b",\"account\":");
        w.s(self.account);
        w.raw(b",\"seq\":");
        w.u(self.seq);
        w.raw(b",\"type\":");
        w.s(self.ty);
        w.raw(b",\"amount\":");
        w.i(self.amount);
        w.raw(b",\"at\":");
        w.s(self.at);
        w.raw(b"}");
    }
}

impl Render for MonthOut<'_> {
    fn render(&self, w: &mut W) {
        w.raw(b"{\"key\":");
        w.s(self.key);
        w.raw(b",\"version\":");
        w.u(self.version);
        w.raw(b",\"account\":");
        w.s(self.account);
        w.raw(b",\"month\":");
        w.s(self.month);
        w.raw(b",\"deposited\":");
        w.i(self.deposited);
        w.raw(b",\"withdrawn\":");
        w.i(self.withdrawn);
        w.raw(b",\"transactions\":");
        w.i(self.transactions);
        w.raw(b"}");
    }
}

impl Render for DayOut<'_> {
    fn render(&self, w: &mut W) {
        w.raw(b"{\"key\":");
        w.s(self.key);
        w.raw(b",\"version\":");
        w.u(self.version);
        w.raw(b",\"day\":");
        w.s(self.day);
        w.raw(b",\"accounts_opened\":");
        w.i(self.accounts_opened);
        w.raw(b",\"accounts_closed\":");
        w.i(self.accounts_closed);
        w.raw(b",\"deposits\":");
        w.i(self.deposits);
        w.raw(b",\"withdrawals\":");
        w.i(self.withdrawals);
        w.raw(b",\"net\":");
        w.i(self.net);
        w.raw(b"}");
    }
}

// --- running it ---------------------------------------------------------------------------

fn cpu_time(clock: libc::clockid_t) -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a pointer to a timespec we own.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn thread_cpu() -> f64 {
    cpu_time(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// Both sides in one loop: the read side takes each batch as it is handed over.
struct Inline {
    read: ReadSide,
    /// Thread CPU seconds spent in the read side.
    read_cpu: f64,
}

impl Sink for Inline {
    fn events(&mut self, batch: &mut Vec<u8>, epoch_end: bool) {
        let t = thread_cpu();
        self.read.batch(batch, epoch_end);
        self.read_cpu += thread_cpu() - t;
        batch.clear();
    }
}

/// The read side on another thread: batches through a bounded channel, the buffers
/// coming back through another.
struct Channel {
    tx: crossbeam_channel::Sender<(Vec<u8>, bool)>,
    back: crossbeam_channel::Receiver<Vec<u8>>,
    capacity: usize,
}

impl Sink for Channel {
    fn events(&mut self, batch: &mut Vec<u8>, epoch_end: bool) {
        let next = self
            .back
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(self.capacity));
        let full = std::mem::replace(batch, next);
        self.tx.send((full, epoch_end)).expect("read side alive");
    }
}

struct Run {
    wall: f64,
    cpu: f64,
    write_cpu: f64,
    read_cpu: f64,
    write: WriteCounts,
    read: ReadCounts,
}

fn write_loop(w: &mut WriteSide, input: &[u8], epoch: u64, sink: &mut impl Sink) {
    let mut in_epoch = 0;
    for line in memchr::Memchr::new(b'\n', input).scan(0, |start, end| {
        let l = &input[*start..end];
        *start = end + 1;
        Some(l)
    }) {
        if line.is_empty() {
            continue;
        }
        w.command(line, sink);
        in_epoch += 1;
        if in_epoch == epoch {
            w.end_epoch(sink);
            in_epoch = 0;
        }
    }
    w.end_epoch(sink);
}

fn run(a: &Args, input: &[u8], threads: usize) -> Run {
    let cpu0 = cpu_time(libc::CLOCK_PROCESS_CPUTIME_ID);
    let t0 = Instant::now();
    if threads == 1 {
        let tc = thread_cpu();
        let mut w = WriteSide::new(a);
        let mut sink = Inline {
            read: ReadSide::new(a),
            read_cpu: 0.0,
        };
        write_loop(&mut w, input, a.epoch, &mut sink);
        let total = thread_cpu() - tc;
        let wall = t0.elapsed().as_secs_f64();
        let r = Run {
            wall,
            cpu: cpu_time(libc::CLOCK_PROCESS_CPUTIME_ID) - cpu0,
            write_cpu: total - sink.read_cpu,
            read_cpu: sink.read_cpu,
            write: w.counts,
            read: sink.read.counts,
        };
        drop((w, sink)); // freeing the state is not timed (nor is it in the pipeline's summary)
        r
    } else {
        let (tx, rx) = crossbeam_channel::bounded::<(Vec<u8>, bool)>(64);
        let (back_tx, back_rx) = crossbeam_channel::bounded::<Vec<u8>>(80);
        let ra = Args {
            dump: a.dump.clone(),
            threads: vec![],
            input: None,
            ..*a
        };
        let reader = std::thread::spawn(move || {
            let tc = thread_cpu();
            let mut read = ReadSide::new(&ra);
            for (mut batch, epoch_end) in rx {
                read.batch(&batch, epoch_end);
                batch.clear();
                let _ = back_tx.try_send(batch);
            }
            let cpu = thread_cpu() - tc;
            (read.counts, cpu, read)
        });
        let tc = thread_cpu();
        let mut w = WriteSide::new(a);
        let mut sink = Channel {
            tx,
            back: back_rx,
            capacity: a.batch * 300,
        };
        write_loop(&mut w, input, a.epoch, &mut sink);
        let write_cpu = thread_cpu() - tc;
        drop(sink);
        let (read, read_cpu, read_side) = reader.join().expect("read side");
        let wall = t0.elapsed().as_secs_f64();
        let r = Run {
            wall,
            cpu: cpu_time(libc::CLOCK_PROCESS_CPUTIME_ID) - cpu0,
            write_cpu,
            read_cpu,
            write: w.counts,
            read,
        };
        drop((w, read_side));
        r
    }
}

/// Keeps every batch of events in memory, to feed the read side alone afterwards.
#[derive(Default)]
struct Collect {
    batches: Vec<(Vec<u8>, bool)>,
}

impl Sink for Collect {
    fn events(&mut self, batch: &mut Vec<u8>, epoch_end: bool) {
        let capacity = batch.capacity();
        self.batches.push((
            std::mem::replace(batch, Vec::with_capacity(capacity)),
            epoch_end,
        ));
    }
}

/// Each stage alone, on one thread: parsing the commands (nothing else), the write side
/// (its events kept in memory), parsing the events (nothing else), the read side.
fn stages(a: &Args, input: &[u8], lines: usize) {
    let per = |t: f64| t / lines as f64 * 1e9;
    let t = thread_cpu();
    let mut n = 0u64;
    for line in input.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let c: Command = serde_json::from_slice(line).expect("a command");
        n += c.seq;
        std::hint::black_box(&c);
    }
    std::hint::black_box(n);
    let parse_commands = thread_cpu() - t;

    let t = thread_cpu();
    let mut w = WriteSide::new(a);
    let mut sink = Collect::default();
    write_loop(&mut w, input, a.epoch, &mut sink);
    let write = thread_cpu() - t;
    drop(w);

    let t = thread_cpu();
    for (batch, _) in &sink.batches {
        for line in batch.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let e: Event = serde_json::from_slice(line).expect("an event");
            n += e.version;
            std::hint::black_box(&e);
        }
    }
    std::hint::black_box(n);
    let parse_events = thread_cpu() - t;

    let t = thread_cpu();
    let mut r = ReadSide::new(a);
    for (batch, epoch_end) in &sink.batches {
        r.batch(batch, *epoch_end);
    }
    let read = thread_cpu() - t;
    println!(
        "stages (thread CPU per command, one thread, load {}): parse commands alone {:.0} ns; write side {:.0} ns; parse events alone {:.0} ns; read side {:.0} ns",
        loadavg(),
        per(parse_commands),
        per(write),
        per(parse_events),
        per(read)
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn main() {
    let a = args();
    MANUAL.store(a.manual, std::sync::atomic::Ordering::Relaxed);
    let input = match &a.input {
        Some(path) => std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}")),
        None => {
            let mut v = Vec::new();
            write_account_commands(
                &BankParams {
                    accounts: a.accounts,
                    events: a.commands,
                    seed: 1,
                    duplicate_rate: a.duplicates,
                    reorder_rate: a.reorder,
                },
                &mut v,
            )
            .expect("generate");
            v
        }
    };
    let lines = memchr::memchr_iter(b'\n', &input).count();
    if let Some(d) = &a.dump {
        std::fs::create_dir_all(d).expect("dump dir");
    }
    println!(
        "bank baseline: {lines} commands ({}), epoch {} commands, batch {} events, emit {}, render {}, load average {}",
        a.input.as_deref().unwrap_or("generated"),
        a.epoch,
        a.batch,
        if a.per_event {
            "per event"
        } else {
            "per epoch"
        },
        if a.manual { "manual" } else { "serde_json" },
        loadavg()
    );
    if a.stages {
        for _ in 0..a.runs {
            stages(&a, &input, lines);
        }
        return;
    }
    let mut results: Vec<(usize, Vec<Run>)> = a.threads.iter().map(|&t| (t, vec![])).collect();
    for r in 0..a.runs {
        for (t, runs) in &mut results {
            let x = run(&a, &input, *t);
            println!(
                "threads {t} run {}: {:.3} s, {:.0}k commands/s, CPU {:.3} s ({:.0} ns/command: write side {:.0}, read side {:.0}), load {}",
                r + 1,
                x.wall,
                lines as f64 / x.wall / 1e3,
                x.cpu,
                x.cpu / lines as f64 * 1e9,
                x.write_cpu / lines as f64 * 1e9,
                x.read_cpu / lines as f64 * 1e9,
                loadavg()
            );
            if let Some(first) = runs.first() {
                assert_eq!(first.write, x.write, "same counts in every run");
                assert_eq!(first.read.events, x.read.events, "same counts in every run");
            }
            runs.push(x);
        }
    }
    for (t, runs) in &results {
        let wall = median(runs.iter().map(|r| r.wall).collect());
        let per = |f: fn(&Run) -> f64| median(runs.iter().map(f).collect()) / lines as f64 * 1e9;
        println!(
            "threads {t}: median {:.3} s = {:.0}k commands/s (runs: {}); CPU per command {:.0} ns (write side {:.0}, read side {:.0})",
            wall,
            lines as f64 / wall / 1e3,
            runs.iter()
                .map(|r| format!("{:.0}k", lines as f64 / r.wall / 1e3))
                .collect::<Vec<_>>()
                .join(" / "),
            per(|r| r.cpu),
            per(|r| r.write_cpu),
            per(|r| r.read_cpu),
        );
    }
    if let Some((_, runs)) = results.first()
        && let Some(r) = runs.first()
    {
        let (w, rd) = (r.write, r.read);
        println!(
            "write side: {} commands = {} processed + {} duplicates + {} held + {} dead; {} events, {} rejections, {} accounts upserts",
            w.commands,
            w.processed,
            w.duplicates,
            w.held,
            w.dead,
            w.events,
            w.rejections,
            w.view_upserts
        );
        println!(
            "read side: {} events; upserts: balances {} (+ {} deletes), transactions {}, monthly_statements {}, daily_report {}; {} updates failed",
            rd.events,
            rd.balances,
            rd.balance_deletes,
            rd.transactions,
            rd.monthly_statements,
            rd.daily_report,
            rd.failed
        );
        assert_eq!(w.events, rd.events, "the read side saw every event");
    }
}
