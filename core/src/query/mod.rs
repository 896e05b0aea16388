//! Reading a running engine's read models from Rust: a row of a projection by key, a
//! bounded and filtered scan of a projection by key prefix, an aggregate's state by id.
//!
//! Create a [`ReadHandle`], pass a clone in [`crate::engine::RunOptions::read`], and
//! call it from any thread while the run goes on. Shards own their state alone, so a
//! read never touches it from outside: the handle sends the read to the router, the
//! router hands it to the shards at the next epoch cut, and each shard answers between
//! two batches, on the read's own reply channel. Nothing is locked per record; the
//! router looks for reads once per pass over its inputs.
//!
//! # Consistency
//!
//! Every answer is the state at one epoch cut E, the same on every shard asked: all
//! the records of epochs up to E are applied, none after. The handle returns it once
//! epoch E is committed, so a read shows exactly what the state log holds after the
//! commit of E (the rows `log read --compact` would show then, pending deletions
//! excepted), never a state that a crash could take back. [`Row::epoch`] and
//! [`Page::epoch`] say which E. While records flow, a read waits for the next cut (up to
//! `commit_interval`) and its commit; when the pipeline is idle it is answered at once
//! with the last cut. Each page of a scan is one consistent cut; successive pages may be
//! different cuts.
//!
//! A row exists once a record was applied to it (its upsert may still be waiting for a
//! change, when that record changed nothing); a deleted row does not exist.
//!
//! # Examples
//!
//! ```no_run
//! use std::sync::Arc;
//! use onceflow_core::config::Pipeline;
//! use onceflow_core::engine::{self, RunOptions};
//! use onceflow_core::query::{ReadHandle, Scan};
//!
//! let p = Pipeline::load("projections.toml".as_ref())?;
//! let reads = ReadHandle::new();
//! let opts = RunOptions { until_end: false, read: Some(reads.clone()), ..RunOptions::default() };
//! let stop = opts.stop.clone();
//! let engine = std::thread::spawn(move || engine::run(&p, opts));
//!
//! let balance = reads.get("balances", "ACC-1")?;
//! let page = reads.scan(
//!     "transactions",
//!     &Scan::new()
//!         .prefix("ACC-1:")
//!         .filter("row.type == 'Withdrawn' && row.amount >= 100")
//!         .limit(50),
//! )?;
//! for row in &page.rows {
//!     println!("{} {}", row.key, row.value);
//! }
//!
//! stop.store(true, std::sync::atomic::Ordering::Relaxed);
//! engine.join().unwrap()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub(crate) mod filter;
pub(crate) mod request;

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError, bounded};
use serde::de::DeserializeOwned;

use crate::engine::CommitHook;
use crate::hash::{SHARD_SALT, bucket, stable_hash};
use crate::stage::TableSpec;
use filter::Filter;
pub use filter::JsonFilter;
use request::{Found, Job, Request};

/// Keys a shard looks at per scan page, at most: bounds how long a scan holds a shard.
pub const SCAN_STEP: usize = 16_384;
/// Rows a scan page returns by default.
pub const DEFAULT_SCAN_LIMIT: usize = 100;
/// Rows a scan page returns at most.
pub const MAX_SCAN_LIMIT: usize = 1_000;
/// How long a read waits for its answer by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Reads in flight per handle, at most (beyond: [`ReadError::Busy`]).
const QUEUE: usize = 1024;

/// Why a read failed.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// No run is using the handle (not started yet, or finished).
    #[error(
        "no engine is running with this read handle: pass it in RunOptions::read, and read while run or run_with_stage runs"
    )]
    NotRunning,
    /// The run stopped before the read was answered and committed.
    #[error("the engine stopped before answering the read")]
    Stopped,
    /// The answer did not come in time (a busy or stalled pipeline).
    #[error("no answer within {0:?}: the pipeline is busy or stalled")]
    Timeout(Duration),
    /// Too many reads in flight on this handle.
    #[error("{QUEUE} reads are already waiting: retry later")]
    Busy,
    /// No read model of that name.
    #[error("no read model named '{name}'; this pipeline has: {known}")]
    NoSuchTable {
        /// The name asked for.
        name: String,
        /// The names there are.
        known: String,
    },
    /// A read model whose rows are not kept in state (an `insert_only` projection): its
    /// rows are in its topic only.
    #[error(
        "read model '{0}' is insert_only: its rows are written to its topic and not kept in state, so they cannot be read here; read the topic (`onceflow log read STATE_DIR --topic TOPIC --compact --where ...`)"
    )]
    NotKept(String),
    /// [`ReadHandle::state`] on a pipeline with several read models.
    #[error("this pipeline has {0} read models ({1}): name one with get()")]
    NotOneTable(usize, String),
    /// The filter does not compile, or is not a bool.
    #[error("filter `{src}`: {message}")]
    BadFilter {
        /// The filter.
        src: String,
        /// Every problem found.
        message: String,
    },
    /// The filter failed on a row (a missing field, a wrong type, an overflow).
    #[error("{0}")]
    FilterFailed(String),
    /// A scan limit outside 1..=[`MAX_SCAN_LIMIT`].
    #[error("scan limit {0} is outside 1..={MAX_SCAN_LIMIT}")]
    BadLimit(usize),
    /// A cursor of another table, or of an earlier run of the engine.
    #[error("{0}")]
    BadCursor(String),
    /// A bug: an answer that cannot be read.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ReadError {
    /// Whether the same read may succeed later.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            ReadError::NotRunning | ReadError::Stopped | ReadError::Timeout(_) | ReadError::Busy
        )
    }
}

/// One row (or aggregate state) as the engine writes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Its key (without a projection's namespace).
    pub key: String,
    /// Its version: the count of records applied to it (an aggregate: of its events).
    pub version: u64,
    /// The epoch cut it was read at; that epoch is committed.
    pub epoch: u64,
    /// The row as written to its topic: `{"key":K,"version":V,<fields>}`.
    pub value: serde_json::Value,
}

impl Row {
    /// The row as a typed value (fields missing from `T` are ignored unless it says
    /// otherwise).
    pub fn to<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        T::deserialize(&self.value)
    }
}

/// Where a paged scan goes on: from [`Page::next`] into [`Scan::after`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    run: u64,
    table: String,
    /// Per shard: the position in its key list to go on from (`None`: done).
    positions: Vec<Option<u32>>,
}

/// A scan of one read model: rows whose key starts with `prefix` and that pass
/// `filter`, a page at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    /// Key prefix (empty: every row).
    pub prefix: String,
    /// A CEL bool over the row (`docs/expressions.md`): in a declared projection or
    /// aggregate `row.<field>`, `row.key`, `row.version` with their types, checked when
    /// the scan starts; in a Rust one `row` is the row as JSON, checked as it runs.
    pub filter: Option<String>,
    /// Rows per page, 1..=[`MAX_SCAN_LIMIT`].
    pub limit: usize,
    /// Continue a scan from [`Page::next`]; `None` starts it.
    pub after: Option<Cursor>,
}

impl Default for Scan {
    fn default() -> Self {
        Scan {
            prefix: String::new(),
            filter: None,
            limit: DEFAULT_SCAN_LIMIT,
            after: None,
        }
    }
}

impl Scan {
    /// Every row, [`DEFAULT_SCAN_LIMIT`] per page.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only keys that start with `prefix`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Only rows for which the CEL expression `filter` holds.
    pub fn filter(mut self, filter: impl Into<String>) -> Self {
        self.filter = Some(filter.into());
        self
    }

    /// At most `limit` rows per page.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// Goes on after the page that gave `cursor`.
    pub fn after(mut self, cursor: Cursor) -> Self {
        self.after = Some(cursor);
        self
    }
}

/// One page of a scan.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// Rows, sorted by key within the page. Pages are not in key order among themselves
    /// (rows are spread over shards by hash), and a page may hold fewer than `limit`
    /// rows while more follow: go on while `next` is `Some`.
    pub rows: Vec<Row>,
    /// The epoch cut the page was read at (committed).
    pub epoch: u64,
    /// Where to go on (`None`: the scan is complete). A row that exists throughout a
    /// paged scan is returned exactly once; rows created or deleted meanwhile may or may
    /// not be.
    pub next: Option<Cursor>,
}

/// Reads a running engine's read models from any thread. Cheap to clone; every clone
/// reads the same engine. One engine run at a time may use it.
#[derive(Debug, Clone)]
pub struct ReadHandle {
    shared: Arc<Shared>,
    timeout: Duration,
}

#[derive(Debug)]
struct Shared {
    tx: Sender<Request>,
    rx: Receiver<Request>,
    status: Mutex<Status>,
    /// Signalled on every commit and when the run ends.
    changed: Condvar,
}

#[derive(Debug, Default)]
struct Status {
    /// Counts the runs that attached; a cursor names its run.
    run: u64,
    attached: Option<Arc<Attached>>,
    /// Last committed epoch of run `run`.
    committed: u64,
}

/// What the handle knows of the run it is attached to.
#[derive(Debug)]
struct Attached {
    run: u64,
    tables: Vec<TableSpec>,
    shards: u32,
}

impl Attached {
    fn table(&self, name: &str) -> Result<&TableSpec, ReadError> {
        let t =
            self.tables
                .iter()
                .find(|t| t.name == name)
                .ok_or_else(|| ReadError::NoSuchTable {
                    name: name.to_string(),
                    known: self.names(),
                })?;
        if !t.kept {
            return Err(ReadError::NotKept(name.to_string()));
        }
        Ok(t)
    }

    fn names(&self) -> String {
        self.tables
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Default for ReadHandle {
    fn default() -> Self {
        Self::new()
    }
}

impl ReadHandle {
    /// A handle for the next run that gets it in [`crate::engine::RunOptions::read`].
    pub fn new() -> Self {
        let (tx, rx) = bounded(QUEUE);
        ReadHandle {
            shared: Arc::new(Shared {
                tx,
                rx,
                status: Mutex::new(Status::default()),
                changed: Condvar::new(),
            }),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The same handle, waiting at most `timeout` per read (default
    /// [`DEFAULT_TIMEOUT`]).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Names of the read models that can be read: the projections of a projection
    /// pipeline, else the view topic (an aggregate's state, or the fold's view).
    pub fn tables(&self) -> Result<Vec<String>, ReadError> {
        let a = self.attached()?;
        Ok(a.tables.iter().map(|t| t.name.clone()).collect())
    }

    /// The last committed epoch of the run (0 before the first commit of a new state
    /// directory).
    pub fn committed_epoch(&self) -> Result<u64, ReadError> {
        self.attached()?;
        Ok(self.status().committed)
    }

    /// Row `key` of read model `table` (a projection's name, or the view topic); `None`
    /// when there is no such row.
    pub fn get(&self, table: &str, key: &str) -> Result<Option<Row>, ReadError> {
        let a = self.attached()?;
        let t = a.table(table)?;
        let mut stored = t.prefix.clone();
        stored.extend_from_slice(key.as_bytes());
        let shard = bucket(stable_hash(&stored), SHARD_SALT, a.shards);
        let (epoch, mut answers) = self.ask(&a, Job::Get { key: stored }, vec![(shard, 0)])?;
        let found = answers.pop().map(|(_, f)| f).unwrap_or_default();
        found
            .rows
            .into_iter()
            .next()
            .map(|(_, json)| parse_row(&json, epoch))
            .transpose()
    }

    /// The state of aggregate `id` in a pipeline with one read model (an `[aggregate]`,
    /// a [`crate::api::TypedAggregate`], or the fold's view); `None` before its first
    /// event.
    pub fn state(&self, id: &str) -> Result<Option<Row>, ReadError> {
        let a = self.attached()?;
        match a.tables.as_slice() {
            [only] => self.get(&only.name, id),
            many => Err(ReadError::NotOneTable(many.len(), a.names())),
        }
    }

    /// One page of a scan of read model `table`. See [`Scan`] and [`Page`]: each page
    /// looks at most [`SCAN_STEP`] keys per shard and holds at most `limit` rows.
    pub fn scan(&self, table: &str, scan: &Scan) -> Result<Page, ReadError> {
        let a = self.attached()?;
        let t = a.table(table)?;
        if scan.limit == 0 || scan.limit > MAX_SCAN_LIMIT {
            return Err(ReadError::BadLimit(scan.limit));
        }
        let filter = scan
            .filter
            .as_deref()
            .map(|src| {
                Filter::compile(src, t).map_err(|message| ReadError::BadFilter {
                    src: src.to_string(),
                    message,
                })
            })
            .transpose()?;
        let mut positions = match &scan.after {
            None => vec![Some(0); a.shards as usize],
            Some(c) if c.run != a.run => {
                return Err(ReadError::BadCursor(
                    "the cursor is from an earlier run of the engine (positions are not kept across restarts): start the scan again".into(),
                ));
            }
            Some(c) if c.table != table => {
                return Err(ReadError::BadCursor(format!(
                    "the cursor is from a scan of '{}', not '{table}'",
                    c.table
                )));
            }
            Some(c) => c.positions.clone(),
        };
        let parts: Vec<(u32, u32)> = positions
            .iter()
            .enumerate()
            .filter_map(|(s, p)| p.map(|p| (s as u32, p)))
            .collect();
        if parts.is_empty() {
            return Ok(Page {
                rows: Vec::new(),
                epoch: self.status().committed,
                next: None,
            });
        }
        let mut prefix = t.prefix.clone();
        prefix.extend_from_slice(scan.prefix.as_bytes());
        let job = Job::Scan {
            prefix,
            filter,
            limit: scan.limit,
        };
        let (epoch, answers) = self.ask(&a, job, parts)?;
        // Shard by shard, rows in each shard's key-list order, until the page is full;
        // each shard goes on from its first row left out, or from where it stopped.
        let mut rows = Vec::new();
        for (shard, found) in answers {
            let mut next = found.next;
            for (at, json) in found.rows {
                if rows.len() == scan.limit {
                    next = Some(at);
                    break;
                }
                rows.push(parse_row(&json, epoch)?);
            }
            positions[shard as usize] = next;
        }
        rows.sort_by(|x, y| x.key.cmp(&y.key));
        let next = positions.iter().any(Option::is_some).then(|| Cursor {
            run: a.run,
            table: table.to_string(),
            positions,
        });
        Ok(Page { rows, epoch, next })
    }

    /// Every row of a scan, page after page (`scan.after` is where it starts). Each
    /// page is one consistent cut; together they are not (see [`Page::next`]).
    pub fn scan_all(&self, table: &str, scan: &Scan) -> Result<Vec<Row>, ReadError> {
        let mut scan = scan.clone();
        let mut rows = Vec::new();
        loop {
            let page = self.scan(table, &scan)?;
            rows.extend(page.rows);
            match page.next {
                Some(c) => scan.after = Some(c),
                None => return Ok(rows),
            }
        }
    }

    fn status(&self) -> MutexGuard<'_, Status> {
        // A poisoned lock only means a reader panicked; the status itself stays valid.
        self.shared.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn attached(&self) -> Result<Arc<Attached>, ReadError> {
        self.status().attached.clone().ok_or(ReadError::NotRunning)
    }

    /// Sends a read, collects one answer per part, and waits until their epoch is
    /// committed. Answers come back sorted by shard.
    fn ask(
        &self,
        a: &Attached,
        job: Job,
        parts: Vec<(u32, u32)>,
    ) -> Result<(u64, Vec<(u32, Found)>), ReadError> {
        let deadline = Instant::now() + self.timeout;
        let n = parts.len();
        let (reply, answers) = bounded(n);
        {
            // Under the lock: a run that ends meanwhile drains the queue after this.
            let st = self.status();
            if st.attached.as_ref().is_none_or(|x| x.run != a.run) {
                return Err(ReadError::Stopped);
            }
            let req = Request {
                job: Arc::new(job),
                parts,
                reply,
            };
            match self.shared.tx.try_send(req) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => return Err(ReadError::Busy),
                Err(TrySendError::Disconnected(_)) => unreachable!("the handle holds both ends"),
            }
        }
        let mut got = Vec::with_capacity(n);
        let mut epoch = None;
        while got.len() < n {
            let ans = answers.recv_deadline(deadline).map_err(|e| match e {
                RecvTimeoutError::Timeout => ReadError::Timeout(self.timeout),
                RecvTimeoutError::Disconnected => ReadError::Stopped,
            })?;
            assert!(
                epoch.is_none_or(|e| e == ans.epoch),
                "the shards of one read answer at one cut"
            );
            epoch = Some(ans.epoch);
            got.push((ans.shard, ans.result.map_err(ReadError::FilterFailed)?));
        }
        let epoch = epoch.expect("at least one part");
        self.wait_committed(a.run, epoch, deadline)?;
        got.sort_by_key(|(s, _)| *s);
        Ok((epoch, got))
    }

    fn wait_committed(&self, run: u64, epoch: u64, deadline: Instant) -> Result<(), ReadError> {
        let mut st = self.status();
        loop {
            if st.run != run {
                return Err(ReadError::Stopped);
            }
            if st.committed >= epoch {
                return Ok(());
            }
            if st.attached.is_none() {
                return Err(ReadError::Stopped);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ReadError::Timeout(self.timeout));
            }
            st = self
                .shared
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The engine's side: attaches the handle to a run that starts with `committed` as
    /// its last committed epoch. Fails if another run uses the handle.
    pub(crate) fn attach(
        &self,
        tables: Vec<TableSpec>,
        shards: u32,
        committed: u64,
    ) -> Result<Attachment, String> {
        let mut st = self.status();
        if st.attached.is_some() {
            return Err(
                "the read handle is already used by a running engine: give each run its own".into(),
            );
        }
        st.run += 1;
        st.committed = committed;
        st.attached = Some(Arc::new(Attached {
            run: st.run,
            tables,
            shards,
        }));
        Ok(Attachment {
            shared: self.shared.clone(),
        })
    }

    /// Reads waiting for the router.
    pub(crate) fn requests(&self) -> &Receiver<Request> {
        &self.shared.rx
    }
}

/// A run's hold on a [`ReadHandle`]; dropping it (the run ended) fails the reads still
/// in flight with [`ReadError::Stopped`] and later ones with [`ReadError::NotRunning`].
pub(crate) struct Attachment {
    shared: Arc<Shared>,
}

impl Attachment {
    /// A commit hook that records every committed epoch for the readers waiting on it,
    /// then calls `next`.
    pub(crate) fn commit_hook(&self, mut next: Option<CommitHook>) -> CommitHook {
        let shared = self.shared.clone();
        Box::new(move |report| {
            {
                let mut st = shared.status.lock().unwrap_or_else(|e| e.into_inner());
                st.committed = st.committed.max(report.epoch);
            }
            shared.changed.notify_all();
            if let Some(hook) = next.as_mut() {
                hook(report);
            }
        })
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        {
            let mut st = self.shared.status.lock().unwrap_or_else(|e| e.into_inner());
            st.attached = None;
            // Dropping the requests no router will forward disconnects their replies.
            while self.shared.rx.try_recv().is_ok() {}
        }
        self.shared.changed.notify_all();
    }
}

fn parse_row(json: &[u8], epoch: u64) -> Result<Row, ReadError> {
    let value: serde_json::Value = serde_json::from_slice(json)
        .map_err(|e| ReadError::Internal(format!("a row is not valid JSON ({e})")))?;
    Ok(Row {
        key: value["key"].as_str().unwrap_or_default().to_string(),
        version: value["version"].as_u64().unwrap_or(0),
        epoch,
        value,
    })
}
