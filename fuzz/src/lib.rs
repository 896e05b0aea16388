//! Fuzz harnesses for onceflow-core.
//!
//! Each module has a `run(&[u8])` function: the body of the libFuzzer target of the same
//! name (`fuzz_targets/<name>.rs`). A harness panics only when it finds a bug: a panic
//! inside onceflow-core, or a broken invariant checked here.
//!
//! * [`log_open`]: bytes → the files of a log store (journal, topic meta, segments) →
//!   `LogReader` / `LogWriter` (recovery) / commit / re-read.
//! * [`decode`]: bytes → `Extractor::extract`, checked against `serde_json::Value`.
//! * [`config`]: UTF-8 text → `Pipeline::parse`.
//! * [`expr`]: UTF-8 text → `expr::compile` → `Program::eval`.
//! * [`snapshot_open`]: bytes → a snapshot manifest and shard file →
//!   `ShardSnapshot` (from bytes and memory-mapped) / `Manifest` / `Snapshot::open` /
//!   `select` / `retain`.
//!
//! Every binary linking this crate gets [`alloc_limit`] as its global allocator.

pub mod config;
pub mod decode;
pub mod expr;
pub mod log_open;
pub mod scratch;
pub mod snapshot_open;

pub mod alloc_limit {
    //! "Must not allocate absurdly": a global allocator that aborts (which libFuzzer
    //! reports as a crash and saves the input) on any single allocation above a limit:
    //! 64 MiB, or `ONCEFLOW_FUZZ_ALLOC_LIMIT_MB`. Fuzz inputs are a few KiB, so
    //! anything that large is sized by a length field in the input rather than by
    //! data actually present. (libFuzzer's own `-malloc_limit_mb` needs a sanitizer;
    //! `-rss_limit_mb` still catches many small allocations.)

    use std::alloc::{GlobalAlloc, Layout, System};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    /// The allocator (installed as `#[global_allocator]` by this crate).
    pub struct Limited;

    static LIMIT: AtomicUsize = AtomicUsize::new(0);
    static REPORTING: AtomicBool = AtomicBool::new(false);

    fn limit() -> usize {
        let l = LIMIT.load(Ordering::Relaxed);
        if l != 0 {
            return l;
        }
        // Reading the environment allocates, but only small amounts: below any limit.
        LIMIT.store(usize::MAX, Ordering::Relaxed);
        let mb = std::env::var("ONCEFLOW_FUZZ_ALLOC_LIMIT_MB")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(64);
        let l = mb.saturating_mul(1 << 20).max(1);
        LIMIT.store(l, Ordering::Relaxed);
        l
    }

    fn check(size: usize) {
        if size > limit() && !REPORTING.swap(true, Ordering::SeqCst) {
            eprintln!(
                "onceflow-fuzz: absurd allocation of {size} bytes (limit {} bytes; \
                 ONCEFLOW_FUZZ_ALLOC_LIMIT_MB raises it)\n{}",
                limit(),
                std::backtrace::Backtrace::force_capture()
            );
            // An allocator must not unwind: abort, which libFuzzer reports as a crash.
            std::process::abort();
        }
    }

    unsafe impl GlobalAlloc for Limited {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            check(layout.size());
            // SAFETY: forwarded unchanged.
            unsafe { System.alloc(layout) }
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            check(layout.size());
            // SAFETY: forwarded unchanged.
            unsafe { System.alloc_zeroed(layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            check(new_size);
            // SAFETY: forwarded unchanged.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: forwarded unchanged.
            unsafe { System.dealloc(ptr, layout) }
        }
    }
}

#[global_allocator]
static ALLOCATOR: alloc_limit::Limited = alloc_limit::Limited;
