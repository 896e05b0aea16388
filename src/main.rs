//! `onceflow`: run, check and inspect exactly-once pipelines.

mod log_cmd;
mod run_cmd;
mod snapshot_cmd;
mod state_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

// The engine allocates and frees small buffers on every thread (row values, rendered
// upserts); mimalloc's per-thread heaps cost less CPU here than glibc's allocator
// (measured in docs/benchmarks.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "onceflow", version, about = "Exactly-once, in-memory event stream processing", long_about = None)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a pipeline: recover from the last commit, then process (tails new input until stopped)
    Run {
        /// Pipeline file (TOML)
        pipeline: PathBuf,
        /// Stop once the input present at start is processed and committed
        #[arg(long)]
        until_end: bool,
        /// No status line (the summary is still printed)
        #[arg(long, short)]
        quiet: bool,
        /// The pipeline definition changed since its newest snapshot: remove the snapshots
        /// of the old definition and rebuild the state by replaying the committed inputs
        #[arg(long)]
        rebuild: bool,
    },
    /// Check a pipeline file and report every error at once
    Validate {
        /// Pipeline file (TOML)
        pipeline: PathBuf,
    },
    /// Work with an embedded log directory
    Log {
        #[command(subcommand)]
        cmd: log_cmd::LogCmd,
    },
    /// List and inspect snapshots (read only)
    Snapshot {
        #[command(subcommand)]
        cmd: snapshot_cmd::SnapshotCmd,
    },
    /// One key's state as of a past point: nearest older snapshot plus replay (read only)
    State(state_cmd::StateArgs),
    /// Generate a deterministic workload as JSON lines on stdout
    Gen {
        #[command(subcommand)]
        cmd: GenCmd,
    },
}

#[derive(Subcommand)]
enum GenCmd {
    /// Bank ledger entries: {"account","seq","type","amount","ts"}, with duplicates and out-of-order entries
    Bank {
        /// Number of accounts
        #[arg(long, default_value_t = 1_000)]
        accounts: u64,
        /// Number of distinct entries (duplicates come on top)
        #[arg(long, default_value_t = 100_000)]
        events: u64,
        /// Seed: the same arguments give the same output
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Share of entries delivered twice
        #[arg(long, default_value_t = 0.01)]
        duplicates: f64,
        /// Share of entries delivered after their account's next entry
        #[arg(long, default_value_t = 0.01)]
        reorder: f64,
    },
    /// Commands for examples/bank: OpenAccount, then Deposit/Withdraw (some rejected), Freeze/Unfreeze
    Accounts {
        /// Number of accounts
        #[arg(long, default_value_t = 1_000)]
        accounts: u64,
        /// Number of distinct commands, openings included (duplicates come on top)
        #[arg(long, default_value_t = 100_000)]
        commands: u64,
        /// Seed: the same arguments give the same output
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Share of commands delivered twice
        #[arg(long, default_value_t = 0.0)]
        duplicates: f64,
        /// Share of commands delivered after their account's next command
        #[arg(long, default_value_t = 0.0)]
        reorder: f64,
    },
}

fn main() -> ExitCode {
    // Like other Unix tools: `onceflow ... | head` ends quietly when the reader goes away
    // (whatever was committed stays committed) instead of panicking on a broken pipe.
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to the default before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run {
            pipeline,
            until_end,
            quiet,
            rebuild,
        } => run_cmd::run(&pipeline, until_end, quiet, rebuild),
        Cmd::Validate { pipeline } => run_cmd::validate(&pipeline),
        Cmd::Log { cmd } => log_cmd::main(cmd),
        Cmd::Snapshot { cmd } => snapshot_cmd::main(cmd),
        Cmd::State(args) => state_cmd::main(args),
        Cmd::Gen { cmd } => {
            let (params, write): (_, GenFn) = match cmd {
                GenCmd::Bank {
                    accounts,
                    events,
                    seed,
                    duplicates,
                    reorder,
                } => (
                    (accounts, events, seed, duplicates, reorder),
                    onceflow_core::workload::write_bank,
                ),
                GenCmd::Accounts {
                    accounts,
                    commands,
                    seed,
                    duplicates,
                    reorder,
                } => (
                    (accounts, commands, seed, duplicates, reorder),
                    onceflow_core::workload::write_account_commands,
                ),
            };
            let (accounts, events, seed, duplicates, reorder) = params;
            for (name, v) in [("--duplicates", duplicates), ("--reorder", reorder)] {
                if !(0.0..=1.0).contains(&v) {
                    eprintln!("error: {name} must be between 0 and 1, got {v}");
                    return ExitCode::from(2);
                }
            }
            let params = onceflow_core::workload::BankParams {
                accounts,
                events,
                seed,
                duplicate_rate: duplicates,
                reorder_rate: reorder,
            };
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
            match write(&params, &mut out).and_then(|_| std::io::Write::flush(&mut out)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// A workload generator writing JSON lines.
type GenFn = fn(
    &onceflow_core::workload::BankParams,
    &mut std::io::BufWriter<std::io::StdoutLock<'static>>,
) -> std::io::Result<u64>;

/// `1234567` → `1,234,567`.
pub(crate) fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Human rate: `1.23M`, `45.6k`.
pub(crate) fn rate(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

/// Microseconds as `850µs`, `12.3ms`, `1.20s`.
pub(crate) fn micros(us: u64) -> String {
    if us < 1_000 {
        format!("{us}µs")
    } else if us < 1_000_000 {
        format!("{:.1}ms", us as f64 / 1e3)
    } else {
        format!("{:.2}s", us as f64 / 1e6)
    }
}
