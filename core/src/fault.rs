//! Fault points: named places where a test makes the process die at once, as `kill -9`
//! would, to check that recovery copes with a crash exactly there (`tests/crash.rs`).
//!
//! `ONCEFLOW_FAULT=<point>` kills the process the first time `<point>` is reached,
//! `ONCEFLOW_FAULT=<point>@<n>` the `n`-th time (counted over the whole process, all
//! threads and, in a pipeline with an aggregate and projections, both sides). The
//! process sends itself SIGKILL: no destructor runs, no buffer is flushed, no temp file
//! is removed. One line goes to stderr first (`onceflow: fault point <point>@<n>
//! reached: SIGKILL`), written unbuffered so that the test can tell this crash from any
//! other.
//!
//! The variable is read once ([`init`], or the first point reached). Unset, a point
//! costs one relaxed atomic load and a branch. A value naming no point in [`KNOWN`] is
//! an error: `onceflow run` refuses to start with it ([`init`]); a library user who
//! never calls `init` gets one warning on stderr and no fault. A testing aid, not a
//! feature: `docs/operations.md`.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

/// The environment variable that arms a fault point.
pub const ENV: &str = "ONCEFLOW_FAULT";

/// In a shard's snapshot file, after an entry (a key) was pushed: `@n` is the `n`-th
/// key written to any snapshot file by this process. The file is still `*.tmp`.
pub const SNAPSHOT_SHARD_WRITE: &str = "snapshot.shard.write";
/// A shard's snapshot file is complete and fsynced, not yet renamed from `*.tmp`.
pub const SNAPSHOT_SHARD_BEFORE_RENAME: &str = "snapshot.shard.before_rename";
/// A shard's snapshot file was just renamed into place (its directory not yet fsynced).
pub const SNAPSHOT_SHARD_AFTER_RENAME: &str = "snapshot.shard.after_rename";
/// The manifest's temp file is written and fsynced, not yet renamed to `MANIFEST`.
pub const SNAPSHOT_MANIFEST_BEFORE_RENAME: &str = "snapshot.manifest.before_rename";
/// The manifest was renamed into place (the snapshot is complete); retention has not
/// run yet.
pub const SNAPSHOT_MANIFEST_AFTER_RENAME: &str = "snapshot.manifest.after_rename";
/// Retention removed one snapshot directory and may remove more.
pub const SNAPSHOT_RETAIN: &str = "snapshot.retain";
/// Recovery replayed one more batch of records (a read of one input partition) and has
/// not finished replaying.
pub const REPLAY_BATCH: &str = "replay.batch";

/// Inside an epoch's commit: its records and input offsets are sent, the commit is not
/// (with Kafka: the transaction is open at the broker, holding the records). `@n` is
/// the `n`-th commit of the process.
pub const COMMIT_BEFORE: &str = "commit.before";
/// An epoch was just committed, before the next begins (a crash between commits).
pub const COMMIT_AFTER: &str = "commit.after";
/// Every fault point, in the order a snapshot and a restart reach them.
pub const KNOWN: &[&str] = &[
    COMMIT_BEFORE,
    COMMIT_AFTER,
    SNAPSHOT_SHARD_WRITE,
    SNAPSHOT_SHARD_BEFORE_RENAME,
    SNAPSHOT_SHARD_AFTER_RENAME,
    SNAPSHOT_MANIFEST_BEFORE_RENAME,
    SNAPSHOT_MANIFEST_AFTER_RENAME,
    SNAPSHOT_RETAIN,
    REPLAY_BATCH,
];

/// An armed fault: die the `hit`-th time `point` is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// One of [`KNOWN`].
    pub point: &'static str,
    /// 1 for the first time.
    pub hit: u64,
}

impl Fault {
    /// Parses `point` or `point@n` (`n` ≥ 1); the point must be one of [`KNOWN`].
    ///
    /// ```
    /// use onceflow_core::fault::{Fault, REPLAY_BATCH};
    ///
    /// assert_eq!(Fault::parse("replay.batch@3").unwrap(), Fault { point: REPLAY_BATCH, hit: 3 });
    /// assert!(Fault::parse("replay.bach").unwrap_err().contains("known points"));
    /// ```
    pub fn parse(s: &str) -> Result<Fault, String> {
        let s = s.trim();
        let (name, hit) = match s.rsplit_once('@') {
            Some((name, n)) => match n.parse::<u64>() {
                Ok(n) if n >= 1 => (name, n),
                _ => {
                    return Err(format!(
                        "{ENV}={s}: after '@' comes how many times the point is reached before the crash (1 or more), not '{n}'"
                    ));
                }
            },
            None => (s, 1),
        };
        match KNOWN.iter().find(|k| **k == name) {
            Some(point) => Ok(Fault { point, hit }),
            None => Err(format!(
                "{ENV}={s}: no fault point '{name}'; known points: {}",
                KNOWN.join(", ")
            )),
        }
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.point, self.hit)
    }
}

const UNREAD: u8 = 0;
const OFF: u8 = 1;
const ARMED: u8 = 2;

/// `OFF` once the variable was read and arms nothing: the fast path of [`point`].
static STATE: AtomicU8 = AtomicU8::new(UNREAD);
static FAULT: OnceLock<Result<Option<Fault>, String>> = OnceLock::new();
/// Times the armed point was reached.
static HITS: AtomicU64 = AtomicU64::new(0);
static WARNED: AtomicBool = AtomicBool::new(false);

fn read_env() -> Result<Option<Fault>, String> {
    match std::env::var(ENV) {
        Ok(v) if v.trim().is_empty() => Ok(None),
        Ok(v) => Fault::parse(&v).map(Some),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(v)) => Err(format!("{ENV}={v:?} is not UTF-8")),
    }
}

/// Reads `ONCEFLOW_FAULT` (once per process): the armed fault, if any, or why the value
/// is invalid. Programs call it at start to refuse a misspelt point; without it, the
/// first [`point`] reached reads the variable.
pub fn init() -> Result<Option<Fault>, String> {
    let r = FAULT.get_or_init(read_env);
    STATE.store(
        if matches!(r, Ok(Some(_))) { ARMED } else { OFF },
        Ordering::Relaxed,
    );
    r.clone()
}

/// Fault point `name` (one of [`KNOWN`]): kills the process with SIGKILL if
/// `ONCEFLOW_FAULT` arms it and this is the hit it names; else returns at once.
#[inline]
pub fn point(name: &'static str) {
    if STATE.load(Ordering::Relaxed) != OFF {
        reached(name);
    }
}

#[cold]
#[inline(never)]
fn reached(name: &'static str) {
    debug_assert!(
        KNOWN.contains(&name),
        "fault point '{name}' is not in KNOWN"
    );
    let fault = match init() {
        Ok(Some(f)) => f,
        Ok(None) => return,
        Err(e) => {
            if !WARNED.swap(true, Ordering::Relaxed) {
                eprintln!("onceflow: warning: {e}; no fault is injected");
            }
            return;
        }
    };
    if fault.point == name && HITS.fetch_add(1, Ordering::SeqCst) + 1 == fault.hit {
        die(&fault);
    }
}

fn die(fault: &Fault) -> ! {
    use std::io::Write as _;
    // stderr is unbuffered: the line is out before the signal.
    let _ = writeln!(
        std::io::stderr().lock(),
        "onceflow: fault point {fault} reached: SIGKILL"
    );
    // SAFETY: kill(2) on our own pid; no memory is involved.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    // SIGKILL can be neither caught nor blocked; should kill(2) return first, abort is
    // the next closest thing (no destructors, no flush).
    std::process::abort()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_points_and_hits() {
        for &k in KNOWN {
            assert_eq!(Fault::parse(k).unwrap(), Fault { point: k, hit: 1 });
            let f = Fault::parse(&format!(" {k}@17 ")).unwrap();
            assert_eq!(f, Fault { point: k, hit: 17 });
            assert_eq!(Fault::parse(&f.to_string()).unwrap(), f);
        }
    }

    #[test]
    fn rejects_unknown_points_and_bad_counts() {
        let e = Fault::parse("snapshot.shard.writ").unwrap_err();
        assert!(e.contains("no fault point 'snapshot.shard.writ'"), "{e}");
        for k in KNOWN {
            assert!(e.contains(k), "{e} lists {k}");
        }
        for bad in [
            "replay.batch@0",
            "replay.batch@",
            "replay.batch@x",
            "replay.batch@-1",
        ] {
            let e = Fault::parse(bad).unwrap_err();
            assert!(e.contains("1 or more"), "{bad}: {e}");
        }
        assert!(Fault::parse("").is_err());
    }

    #[test]
    fn known_names_are_distinct() {
        let mut v = KNOWN.to_vec();
        v.sort_unstable();
        v.dedup();
        assert_eq!(v.len(), KNOWN.len());
    }
}
