//! `onceflow state PIPELINE --key K [--at OFFSET|POSITIONS|TIME] [--table NAME] [--json]`:
//! one key's state as of a past point, rebuilt from the nearest older snapshot plus a
//! replay of the key's records (`onceflow_core::temporal`). Read only: it may run while
//! the pipeline runs.
//!
//! Exit status: 0 with the state on stdout; 1 when there is no state for the key at
//! that point or the state could not be read; 2 when the question is wrong (the pipeline
//! file, `--at`, `--table`, or a point beyond the last commit).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use onceflow_core::temporal::{self, KeyState, Point};
use serde_json::json;

use crate::thousands;

#[derive(Args)]
pub struct StateArgs {
    /// Pipeline file (TOML)
    pipeline: PathBuf,
    /// The key (an aggregate id, a fold's key, a projection's row key)
    #[arg(long)]
    key: String,
    /// The point: OFFSET in the key's partition (records 0..OFFSET), PARTITION:OFFSET or
    /// SOURCE:PARTITION:OFFSET (comma-separated; other partitions at the last commit), or
    /// an RFC 3339 TIME (records appended by then). Default: the last commit
    #[arg(long, value_name = "OFFSET|POSITIONS|TIME")]
    at: Option<String>,
    /// The read model: a projection's name, or the view topic (the default: the
    /// aggregate's state, or the pipeline's only read model)
    #[arg(long, value_name = "NAME")]
    table: Option<String>,
    /// Print one JSON object with the state and what it was rebuilt from
    #[arg(long)]
    json: bool,
}

pub fn main(args: StateArgs) -> ExitCode {
    let p = match crate::run_cmd::load(&args.pipeline) {
        Ok(p) => p,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::from(2);
        }
    };
    if let Some(k) = &p.kafka {
        eprintln!(
            "error: `onceflow state` rebuilds a key from the state log and the embedded log's inputs; \
             pipeline '{}' commits to Kafka (group '{}'), which it cannot read yet",
            p.name, k.group
        );
        return ExitCode::from(2);
    }
    let at = match args.at.as_deref().map(str::parse::<Point>).transpose() {
        Ok(at) => at.unwrap_or(Point::LastCommit),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let ks = match temporal::state_at(&p, args.table.as_deref(), &args.key, &at) {
        Ok(ks) => ks,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(if e.is_bad_query() { 2 } else { 1 });
        }
    };
    let out = if args.json {
        envelope(&ks)
    } else {
        eprint!("{}", provenance(&ks));
        ks.state.clone()
    };
    let mut text = serde_json::to_string_pretty(&out).expect("JSON values serialize");
    text.push('\n');
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|_| stdout.flush())
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: writing to stdout: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What the state was rebuilt from, for stderr.
fn provenance(ks: &KeyState) -> String {
    let mut s = format!(
        "key '{}' of {} (pipeline '{}') as of {}\n",
        ks.key, ks.table, ks.pipeline, ks.at
    );
    match &ks.snapshot {
        Some(snap) => s.push_str(&format!(
            "  from      snapshot of epoch {} ({}){}\n",
            snap.epoch,
            snap.dir.display(),
            if snap.had_key {
                ""
            } else {
                "; the key was not in it yet"
            }
        )),
        None => s.push_str("  from      no snapshot: the inputs replayed from offset 0\n"),
    }
    s.push_str(&format!(
        "  replayed  {} record{}, {} of this key\n",
        thousands(ks.replayed),
        if ks.replayed == 1 { "" } else { "s" },
        thousands(ks.key_records)
    ));
    s.push_str(&format!("  reached   {}\n", positions(ks, false)));
    s.push_str(&format!(
        "  committed {} (epoch {})\n",
        positions(ks, true),
        ks.committed_epoch
    ));
    if ks.held > 0 {
        s.push_str(&format!(
            "note: {} record{} of this key wait{} for a sequence gap to close (not in the state)\n",
            ks.held,
            if ks.held == 1 { "" } else { "s" },
            if ks.held == 1 { "s" } else { "" }
        ));
    }
    for n in &ks.notes {
        s.push_str(&format!("note: {n}\n"));
    }
    for w in &ks.skipped {
        s.push_str(&format!("warning: snapshot not used: {w}\n"));
    }
    s
}

/// `commands 0:7 1:8 2:5 3:9`: per source, each partition's offset (`reached`, or the
/// last commit's).
fn positions(ks: &KeyState, committed: bool) -> String {
    let mut out = String::new();
    let mut source = None;
    for p in &ks.positions {
        if source != Some(&p.source) {
            if source.is_some() {
                out.push(',');
            }
            out.push_str(&p.source);
            source = Some(&p.source);
        }
        let offset = if committed { p.committed } else { p.reached };
        out.push_str(&format!(" {}:{offset}", p.partition));
    }
    out
}

/// `--json`: the state and its provenance in one object.
fn envelope(ks: &KeyState) -> serde_json::Value {
    json!({
        "pipeline": ks.pipeline,
        "table": ks.table,
        "key": ks.key,
        "at": ks.point.to_string(),
        "as_of": ks.at,
        "state": ks.state,
        "committed_epoch": ks.committed_epoch,
        "snapshot": ks.snapshot.as_ref().map(|s| json!({
            "epoch": s.epoch,
            "dir": s.dir.display().to_string(),
            "had_key": s.had_key,
        })),
        "replayed": ks.replayed,
        "key_records": ks.key_records,
        "held": ks.held,
        "positions": ks.positions.iter().map(|p| json!({
            "source": p.source,
            "partition": p.partition,
            "from": p.from,
            "reached": p.reached,
            "committed": p.committed,
        })).collect::<Vec<_>>(),
        "notes": ks.notes,
        "skipped_snapshots": ks.skipped,
    })
}
