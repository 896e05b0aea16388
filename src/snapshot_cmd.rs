//! `onceflow snapshot …`: list and inspect snapshots (read only).
//!
//! Everything goes through `onceflow_core::snapshot`; these files only gather what the
//! library reports and print it. A damaged snapshot is a finding, not a failure of the
//! command: its error (which names the file) is printed next to it.
//!
//! * `check.rs`: verdicts (valid, invalid, could not check) and what a directory holds.
//! * `ls.rs`: `snapshot ls`.
//! * `inspect.rs`: `snapshot inspect`, gathering; `print.rs`: its text and JSON.
//! * `text.rs`: tables, sizes, dates, bytes for a terminal.

mod check;
mod inspect;
mod ls;
mod print;
mod text;

use std::io::{ErrorKind, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum SnapshotCmd {
    /// List the snapshots under a snapshots root (or a pipeline's state dir), newest first
    Ls {
        /// Snapshots root, or a state dir holding `snapshots/`
        dir: PathBuf,
        /// Read every shard file (checksums, rkyv validation, index) instead of only
        /// checking the manifest and the file sizes
        #[arg(long)]
        verify: bool,
    },
    /// Describe a snapshot directory or one shard file, verifying it fully
    Inspect {
        /// A `snapshot-<epoch>` directory or a `shard-<i>.snap` file
        path: PathBuf,
        /// Print the first N entries (in shard order, then write order)
        #[arg(long, value_name = "N")]
        keys: Option<u64>,
        /// Look this key up (its UTF-8 bytes) through the index of every shard
        #[arg(long, value_name = "KEY")]
        key: Option<String>,
        /// Print one JSON object instead of text
        #[arg(long)]
        json: bool,
    },
}

/// Why a command could not do its job (as opposed to finding a damaged snapshot).
enum Failure {
    /// Bad arguments: exit 2.
    Usage(String),
    /// Could not read what it was pointed at: exit 1.
    Io(String),
}

/// A command's output and exit status.
struct Done {
    out: String,
    code: u8,
}

pub fn main(cmd: SnapshotCmd) -> ExitCode {
    let res = match cmd {
        SnapshotCmd::Ls { dir, verify } => ls::ls(&dir, verify),
        SnapshotCmd::Inspect {
            path,
            keys,
            key,
            json,
        } => inspect::inspect(&path, keys, key.as_deref(), json),
    };
    match res {
        Ok(done) => {
            let mut stdout = std::io::stdout().lock();
            match stdout
                .write_all(done.out.as_bytes())
                .and_then(|_| stdout.flush())
            {
                Ok(()) => ExitCode::from(done.code),
                Err(e) if e.kind() == ErrorKind::BrokenPipe => ExitCode::from(done.code),
                Err(e) => {
                    eprintln!("error: writing to stdout: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(Failure::Usage(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(2)
        }
        Err(Failure::Io(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}
