//! `onceflow log …`: append to, read and describe an embedded log.

use std::collections::BTreeMap;
use std::io::{BufReader, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use onceflow_connectors::files::{AppendOptions, append_lines};
use onceflow_core::config::FieldPath;
use onceflow_core::log::{FsyncPolicy, LogOptions, LogReader, RecordBuf};
use onceflow_core::query::JsonFilter;

use crate::thousands;

#[derive(Subcommand)]
pub enum LogCmd {
    /// Append JSON lines from stdin (or --file), partitioned by a key field
    Append {
        /// Log directory (created if missing)
        dir: PathBuf,
        /// Topic (created if missing)
        #[arg(long, default_value = "events")]
        topic: String,
        /// Partitions, when the topic is created
        #[arg(long, default_value_t = 4)]
        partitions: u32,
        /// JSON field that picks the partition (records of one key stay in order)
        #[arg(long)]
        key: Option<String>,
        /// Read this file instead of stdin
        #[arg(long)]
        file: Option<PathBuf>,
        /// Lines per transaction
        #[arg(long, default_value_t = 10_000)]
        batch: usize,
        /// Skip fsync (faster; a machine crash may lose the last appends)
        #[arg(long)]
        no_fsync: bool,
    },
    /// Print committed records as JSON lines
    Read {
        /// Log directory
        dir: PathBuf,
        /// Topic
        #[arg(long, default_value = "events")]
        topic: String,
        /// Only this partition (default: all, one after the other)
        #[arg(long)]
        partition: Option<u32>,
        /// First offset to print
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Most records to print
        #[arg(long)]
        limit: Option<u64>,
        /// Wrap each record as {"partition","offset","timestamp_ms","key","value"}
        #[arg(long, conflicts_with = "compact")]
        meta: bool,
        /// Print only the latest value per key, as one JSON object sorted by key (a read model)
        #[arg(long)]
        compact: bool,
        /// Only records (with --compact: rows) for which this CEL expression is true; `row`
        /// is the record's JSON value, e.g. "row.type == 'withdrawal' && row.amount >= 500"
        #[arg(long = "where", value_name = "CEL")]
        filter: Option<String>,
    },
    /// List topics, partitions and committed ends
    Info {
        /// Log directory
        dir: PathBuf,
    },
}

pub fn main(cmd: LogCmd) -> ExitCode {
    match run(cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            {
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

type Res = Result<(), Box<dyn std::error::Error>>;

fn run(cmd: LogCmd) -> Res {
    match cmd {
        LogCmd::Append {
            dir,
            topic,
            partitions,
            key,
            file,
            batch,
            no_fsync,
        } => {
            if partitions == 0 {
                return Err("--partitions must be at least 1".into());
            }
            let key = key
                .map(|k| FieldPath::parse(&k))
                .transpose()
                .map_err(|e| format!("--key: {e}"))?;
            let opts = AppendOptions {
                topic,
                partitions,
                key,
                batch,
                log: LogOptions {
                    fsync: if no_fsync {
                        FsyncPolicy::Never
                    } else {
                        FsyncPolicy::EveryCommit
                    },
                    ..LogOptions::default()
                },
            };
            let report = match &file {
                Some(f) => {
                    let fh = std::fs::File::open(f)
                        .map_err(|e| format!("cannot open {}: {e}", f.display()))?;
                    append_lines(
                        &dir,
                        BufReader::with_capacity(1 << 20, fh),
                        &f.display().to_string(),
                        &opts,
                    )?
                }
                None => append_lines(&dir, std::io::stdin().lock(), "stdin", &opts)?,
            };
            eprintln!(
                "onceflow: appended {} records to {} (topic '{}') in {} transaction{}{}",
                thousands(report.records),
                dir.display(),
                opts.topic,
                report.commits,
                if report.commits == 1 { "" } else { "s" },
                if report.unkeyed > 0 {
                    format!(
                        "; {} without a readable key went to partition 0",
                        thousands(report.unkeyed)
                    )
                } else {
                    String::new()
                }
            );
            Ok(())
        }
        LogCmd::Read {
            dir,
            topic,
            partition,
            from,
            limit,
            meta,
            compact,
            filter,
        } => {
            let filter = match filter.as_deref().map(JsonFilter::compile).transpose() {
                Ok(f) => f,
                Err(e) => return Err(format!("--where: {e}").into()),
            };
            // A row that fails the filter's expression is an error naming its key.
            let passes = |key: &[u8], value: &[u8]| -> Result<bool, String> {
                match &filter {
                    None => Ok(true),
                    Some(f) => f.matches(value).map_err(|e| {
                        format!(
                            "--where on the record with key '{}': {e}",
                            String::from_utf8_lossy(key)
                        )
                    }),
                }
            };
            let reader = LogReader::open(&dir, &topic)?;
            let parts: Vec<u32> = match partition {
                Some(p) if p >= reader.partitions() => {
                    return Err(format!(
                        "topic '{topic}' has {} partitions (0..{}), not {p}",
                        reader.partitions(),
                        reader.partitions() - 1
                    )
                    .into());
                }
                Some(p) => vec![p],
                None => (0..reader.partitions()).collect(),
            };
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let mut latest: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
            let mut printed = 0u64;
            let mut buf = RecordBuf::new();
            'parts: for p in parts {
                let end = reader.committed_end(p);
                if from >= end {
                    continue;
                }
                let mut cur = reader.cursor(p, from)?;
                loop {
                    buf.clear();
                    if cur.read(&reader, 4096, &mut buf)? == 0 {
                        break;
                    }
                    for r in buf.iter() {
                        if compact {
                            // Filtered below, on the latest value of each key.
                            latest.insert(r.key.to_vec(), r.value.to_vec());
                            continue;
                        }
                        if !passes(r.key, r.value)? {
                            continue;
                        }
                        if limit.is_some_and(|l| printed >= l) {
                            break 'parts;
                        }
                        printed += 1;
                        if meta {
                            let value: serde_json::Value = serde_json::from_slice(r.value)
                                .unwrap_or_else(|_| {
                                    serde_json::Value::String(
                                        String::from_utf8_lossy(r.value).into_owned(),
                                    )
                                });
                            let rec = serde_json::json!({
                                "partition": r.partition, "offset": r.offset, "timestamp_ms": r.timestamp_ms,
                                "key": String::from_utf8_lossy(r.key), "value": value,
                            });
                            writeln!(out, "{rec}")?;
                        } else {
                            out.write_all(r.value)?;
                            out.write_all(b"\n")?;
                        }
                    }
                }
            }
            if compact {
                let mut obj = serde_json::Map::new();
                for (k, v) in latest {
                    if v == b"null" {
                        // A tombstone: the key was deleted (e.g. by a projection's `delete`).
                        continue;
                    }
                    if !passes(&k, &v)? {
                        continue;
                    }
                    if limit.is_some_and(|l| printed >= l) {
                        break;
                    }
                    printed += 1;
                    let value: serde_json::Value =
                        serde_json::from_slice(&v).unwrap_or_else(|_| {
                            serde_json::Value::String(String::from_utf8_lossy(&v).into_owned())
                        });
                    obj.insert(String::from_utf8_lossy(&k).into_owned(), value);
                }
                serde_json::to_writer_pretty(&mut out, &serde_json::Value::Object(obj))?;
                writeln!(out)?;
            }
            out.flush()?;
            Ok(())
        }
        LogCmd::Info { dir } => {
            let topics = onceflow_core::log::list_topics(&dir)?;
            if topics.is_empty() {
                println!("{}: no topics", dir.display());
            }
            for (t, _) in topics {
                let reader = LogReader::open(&dir, &t)?;
                let ends: Vec<u64> = (0..reader.partitions())
                    .map(|p| reader.committed_end(p))
                    .collect();
                println!(
                    "{t}: {} partitions, {} records (committed ends: {})",
                    reader.partitions(),
                    thousands(ends.iter().sum()),
                    ends.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            Ok(())
        }
    }
}
