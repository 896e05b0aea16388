//! Appends JSON lines to a topic of an embedded log, partitioned by a key field with the
//! engine's stable hash, committing every `batch` lines.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use onceflow_core::config::{FieldPath, SourceConfig};
use onceflow_core::decode::{Extractor, Value};
use onceflow_core::hash::{PARTITION_SALT, bucket, stable_hash};
use onceflow_core::log::{CommitMarker, LogError, LogOptions, LogWriter};

/// Errors of the files connector.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// Reading the input failed.
    #[error("cannot read {path}: {source}")]
    Read {
        /// File (or `-` for stdin).
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The log failed.
    #[error(transparent)]
    Log(#[from] LogError),
}

/// How to append.
#[derive(Debug, Clone)]
pub struct AppendOptions {
    /// Topic to append to (created if missing).
    pub topic: String,
    /// Partitions when the topic is created.
    pub partitions: u32,
    /// Field whose value picks the partition; records without it go to partition 0.
    pub key: Option<FieldPath>,
    /// Lines per transaction.
    pub batch: usize,
    /// Log options.
    pub log: LogOptions,
}

/// What an append did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppendReport {
    /// Lines appended.
    pub records: u64,
    /// Transactions committed.
    pub commits: u64,
    /// Lines whose key could not be read (appended to partition 0; the pipeline dead-letters them).
    pub unkeyed: u64,
}

/// Appends every non-empty line of `input` to the log at `dir`.
///
/// Malformed lines are appended as they are: deciding what to do with them (dead-letter
/// with a reason) is the pipeline's job, and nothing is dropped silently here.
pub fn append_lines(
    dir: &Path,
    input: impl BufRead,
    what: &str,
    opts: &AppendOptions,
) -> Result<AppendReport, FilesError> {
    let mut writer = LogWriter::open(dir, opts.log.clone())?;
    let topic = writer.ensure_topic(&opts.topic, opts.partitions)?;
    let partitions = writer
        .topic(&opts.topic)
        .map(|(_, n)| n)
        .unwrap_or(opts.partitions);
    let extractor = opts
        .key
        .as_ref()
        .map(|k| Extractor::new(std::slice::from_ref(k)));
    let mut arena = Vec::new();
    let mut vals = [Value::Missing];
    let mut report = AppendReport::default();
    let mut tx = writer.begin();
    let mut in_tx = 0usize;
    let mut lines = input.lines();
    loop {
        let line = match lines.next() {
            None => break,
            Some(Ok(l)) => l,
            Some(Err(e)) => {
                return Err(FilesError::Read {
                    path: what.to_string(),
                    source: e,
                });
            }
        };
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let mut partition = 0;
        let mut key: Vec<u8> = Vec::new();
        if let Some(ex) = &extractor {
            arena.clear();
            let ok = ex.extract(line.as_bytes(), &mut arena, &mut vals).is_ok();
            match (ok, vals[0]) {
                (true, Value::Str(s, l)) if l > 0 => {
                    key.extend_from_slice(&arena[s as usize..(s + l) as usize])
                }
                (true, Value::Int(i)) => key.extend_from_slice(i.to_string().as_bytes()),
                _ => report.unkeyed += 1,
            }
            if !key.is_empty() {
                partition = bucket(stable_hash(&key), PARTITION_SALT, partitions);
            }
        }
        tx.append(topic, partition, &key, line.as_bytes());
        in_tx += 1;
        report.records += 1;
        if in_tx >= opts.batch.max(1) {
            tx.commit(&CommitMarker::default())?;
            report.commits += 1;
            tx = writer.begin();
            in_tx = 0;
        }
    }
    if in_tx > 0 {
        tx.commit(&CommitMarker::default())?;
        report.commits += 1;
    }
    Ok(report)
}

/// For a source with `load`: fills its topic from the file, once. Returns `None` when
/// the topic already exists (a second run finds it loaded).
pub fn load_if_missing(
    source: &SourceConfig,
    key: Option<&FieldPath>,
) -> Result<Option<AppendReport>, FilesError> {
    let Some(file) = &source.load else {
        return Ok(None);
    };
    if topic_exists(&source.path, &source.topic) {
        return Ok(None);
    }
    let f = File::open(file).map_err(|e| FilesError::Read {
        path: file.display().to_string(),
        source: e,
    })?;
    let opts = AppendOptions {
        topic: source.topic.clone(),
        partitions: source.load_partitions,
        key: key.cloned(),
        batch: 100_000,
        log: LogOptions::default(),
    };
    append_lines(
        &source.path,
        BufReader::with_capacity(1 << 20, f),
        &file.display().to_string(),
        &opts,
    )
    .map(Some)
}

fn topic_exists(dir: &Path, topic: &str) -> bool {
    onceflow_core::log::LogReader::open(dir, topic).is_ok()
}
