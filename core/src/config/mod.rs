//! The TOML pipeline file: parsed, checked and turned into a typed [`Pipeline`].
//!
//! [`Pipeline::parse`] is pure (no I/O beyond what the caller passes in): it reports
//! *all* problems at once, each with its TOML path and line. The engine then does the
//! I/O (`Engine::open`). The reference for every key is `docs/configuration.md`.

mod aggregate;
mod kafka;
mod projection;
mod upcast;
mod walk;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use aggregate::{
    AggregateConfig, CLOUDEVENT_EXTENSIONS, CommandHandler, EVENT_FIELDS, EmitSpec, EventType,
    Expr, Rule, StateField, slots,
};
pub use kafka::{Assignment, Delivery, KafkaSettings};
pub use projection::{
    Handler, MAX_PROJECTIONS, ProjectionConfig, ProjectionsConfig, RowField,
    slots as projection_slots,
};
pub use upcast::{MAX_UPCAST_PARTS, MAX_UPCAST_STEPS, SplitPart, UpcastConfig, UpcastRule};
pub use walk::parse_duration;
use walk::{Cx, Table};

use crate::log::FsyncPolicy;

/// One configuration problem, located by its TOML path (and line where known).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted TOML path, e.g. `pipeline.shards` or `view.fields.balance.op`.
    pub path: String,
    /// 1-based line in the pipeline file.
    pub line: Option<usize>,
    /// What is wrong, and what would be right.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.path.is_empty(), self.line) {
            (true, _) => f.write_str(&self.message),
            (false, Some(l)) => write!(f, "{} (line {l}): {}", self.path, self.message),
            (false, None) => write!(f, "{}: {}", self.path, self.message),
        }
    }
}

/// Every problem found in a pipeline file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    /// The file the errors are about.
    pub file: String,
    /// All errors, in document order.
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        writeln!(
            f,
            "{}: {n} error{} in the pipeline file",
            self.file,
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A dotted path to a field of a JSON record, e.g. `account` or `data.account`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FieldPath(pub Vec<String>);

impl FieldPath {
    /// Parses `a.b.c`; every segment must be non-empty.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("field path must not be empty".into());
        }
        let parts: Vec<String> = s.split('.').map(str::to_string).collect();
        if parts.iter().any(String::is_empty) {
            return Err(format!(
                "invalid field path \"{s}\": empty segment (use names separated by single dots, e.g. \"data.account\")"
            ));
        }
        Ok(FieldPath(parts))
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("."))
    }
}

/// Record format of a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per record.
    Json,
    /// One CloudEvents 1.0 envelope (structured JSON mode) per record; an invalid
    /// envelope is dead-lettered (`invalid_cloudevent`).
    CloudEvents,
}

/// What system a source reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// A topic of an embedded log (`type = "log"`).
    Log,
    /// A Kafka topic (`type = "kafka"`), at the pipeline's `[kafka]` cluster.
    Kafka,
}

/// Where records come from.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceConfig {
    /// Unique name; committed offsets are stored under it.
    pub name: String,
    /// The system read.
    pub kind: SourceKind,
    /// Embedded log directory (resolved against the pipeline file's folder); empty for
    /// a Kafka source.
    pub path: PathBuf,
    /// Topic inside the log, or the Kafka topic.
    pub topic: String,
    /// Record format.
    pub format: Format,
    /// JSON-lines file loaded into the log on first start (when the topic does not exist yet).
    pub load: Option<PathBuf>,
    /// Partitions of the topic when `load` creates it.
    pub load_partitions: u32,
}

/// How records are keyed and ordered.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyConfig {
    /// Field holding the key (string or integer). `None` only in a projection pipeline,
    /// where each projection computes its own row key.
    pub field: Option<FieldPath>,
    /// Field holding the per-key sequence number; `None` turns sequence checks off.
    pub sequence: Option<FieldPath>,
    /// The first sequence number of every key.
    pub sequence_start: u64,
}

/// Bounds of the reorder buffer that holds records that arrived ahead of a gap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReorderConfig {
    /// Most records held at once per shard; a further early record is dead-lettered.
    pub capacity: usize,
    /// A held record is dead-lettered once its partition has moved this many offsets past it.
    pub window: u64,
}

/// When to write snapshots of the shards' state (`[snapshot]`), and how many to keep.
/// Whichever of the triggers comes first starts one, at an epoch barrier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotConfig {
    /// Every this many committed epochs.
    pub every_epochs: Option<u64>,
    /// Once this much time has passed since the last one.
    pub every: Option<Duration>,
    /// Once this many records were processed since the last one.
    pub every_records: Option<u64>,
    /// Complete snapshots kept (older ones are deleted).
    pub keep: usize,
    /// How a restart loads one.
    pub restore: RestoreMode,
    /// Where they go: `[snapshot] dir`, by default `<state_dir>/snapshots`. With
    /// `[kafka] assignment = "group"`, each instance writes under
    /// `<dir>/instance-<instance>/` and restores from all of them (see
    /// [`Pipeline::snapshot_write_dir`]).
    pub dir: PathBuf,
    /// `dir` was given in the file (the read side's then goes under it).
    pub explicit_dir: bool,
}

/// How a restart loads a snapshot (`[snapshot] restore`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreMode {
    /// Serve keys from the mapped files, copying each into memory on first use (the
    /// default: start-up time does not grow with the number of keys).
    Lazy,
    /// Decode every key into memory before the first record.
    Eager,
}

/// One reducer of the view.
#[derive(Debug, Clone, PartialEq)]
pub enum ReducerOp {
    /// Number of records.
    Count,
    /// Sum of a numeric field (integers with overflow checked, floats otherwise).
    Sum(FieldPath),
    /// Smallest value of a numeric field.
    Min(FieldPath),
    /// Largest value of a numeric field.
    Max(FieldPath),
    /// Value of a field in the latest record that has it.
    Last(FieldPath),
    /// Distinct values of a field (sorted).
    Set(FieldPath),
}

/// An output field of the view: a reducer, optionally only over records that match.
#[derive(Debug, Clone, PartialEq)]
pub struct Reducer {
    /// Output field name.
    pub name: String,
    /// The operation.
    pub op: ReducerOp,
    /// Only records whose fields equal these values count (`when = { type = "credit" }`).
    pub when: Vec<(FieldPath, serde_json::Value)>,
}

/// When the view emits its upserts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmitMode {
    /// One upsert per changed key per epoch (the latest state; compact and fast).
    PerEpoch,
    /// One upsert per applied record (a full change stream).
    PerEvent,
}

/// The first logic stage: a per-key fold whose result is written as upserts.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewConfig {
    /// Output topic (in the state log).
    pub topic: String,
    /// Partitions of the output topic.
    pub partitions: u32,
    /// Upsert emission.
    pub emit: EmitMode,
    /// Output fields, in declaration order.
    pub fields: Vec<Reducer>,
}

/// A fully checked pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Pipeline {
    /// Pipeline name.
    pub name: String,
    /// Worker shards (threads owning key state).
    pub shards: usize,
    /// Epoch length: how often outputs and offsets are committed.
    pub commit_interval: Duration,
    /// Directory of the state log (outputs, dead letters, commit markers).
    pub state_dir: PathBuf,
    /// Durability of commits.
    pub fsync: FsyncPolicy,
    /// Inputs.
    pub sources: Vec<SourceConfig>,
    /// Key and sequence extraction.
    pub key: KeyConfig,
    /// Reorder buffer bounds.
    pub reorder: ReorderConfig,
    /// The read model written per key: the fold's fields, or the aggregate's state.
    pub view: ViewConfig,
    /// The aggregate (commands → events → state), when the pipeline declares one; the
    /// view then shows its state instead of folding `view.fields`.
    pub aggregate: Option<AggregateConfig>,
    /// Rules that bring old record versions up to date as they are read.
    pub upcast: Option<UpcastConfig>,
    /// Read models keyed by expressions (the pipeline's logic when present).
    pub projections: Option<ProjectionsConfig>,
    /// Topic (in the state log) that receives dead letters.
    pub dead_letter_topic: String,
    /// Snapshots of the shards' state; `None`: recovery replays the inputs from the start.
    pub snapshot: Option<SnapshotConfig>,
    /// `[kafka]`: with it, the sources are Kafka topics, and outputs, dead letters and
    /// input offsets are committed to Kafka instead of the state log.
    pub kafka: Option<KafkaSettings>,
}

/// The checks of `[kafka]` that need the Kafka client library (the connector's): given
/// the section and the commit interval, every problem found, each with its TOML path.
pub type KafkaCheck<'a> = &'a dyn Fn(&KafkaSettings, Duration) -> Vec<ConfigError>;

/// Defaults, in one place.
pub mod defaults {
    use std::time::Duration;
    /// Shard threads.
    pub const SHARDS: usize = 2;
    /// Epoch length.
    pub const COMMIT_INTERVAL: Duration = Duration::from_millis(100);
    /// Reorder buffer capacity per shard.
    pub const REORDER_CAPACITY: usize = 10_000;
    /// Reorder window in offsets of the record's partition.
    pub const REORDER_WINDOW: u64 = 100_000;
    /// Output topic partitions.
    pub const OUTPUT_PARTITIONS: u32 = 4;
    /// Partitions of a topic created by `load`.
    pub const LOAD_PARTITIONS: u32 = 4;
    /// First sequence number of a key.
    pub const SEQUENCE_START: u64 = 1;
    /// Dead-letter topic.
    pub const DEAD_LETTER_TOPIC: &str = "dead_letters";
    /// Complete snapshots kept.
    pub const SNAPSHOT_KEEP: usize = 2;
}

const MAX_SHARDS: i64 = 256;
const MAX_PARTITIONS: i64 = 4096;
/// Most output fields of a view (the fold tracks them in a 64-bit mask).
pub const MAX_VIEW_FIELDS: usize = 64;
/// Name prefix of an instance's snapshot directory under a shared `[snapshot] dir`
/// (`[kafka] assignment = "group"`).
pub const INSTANCE_DIR_PREFIX: &str = "instance-";

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
        && s != "."
        && s != ".."
}

impl Pipeline {
    /// Reads and checks a pipeline file; relative paths resolve against its folder.
    /// `[kafka]` gets only core's checks: see [`load_with`](Self::load_with).
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        Self::load_with(path, None)
    }

    /// [`load`](Self::load), with the Kafka connector's checks of `[kafka]` reported
    /// together with the rest.
    pub fn load_with(
        path: &Path,
        kafka_check: Option<KafkaCheck<'_>>,
    ) -> Result<Self, ConfigErrors> {
        let file = path.display().to_string();
        let src = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            file: file.clone(),
            errors: vec![ConfigError {
                path: String::new(),
                line: None,
                message: format!("cannot read the file: {e}"),
            }],
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Self::parse_with(&src, &base, kafka_check).map_err(|errors| ConfigErrors { file, errors })
    }

    /// Checks a pipeline given as text. `base` is the folder relative paths resolve against.
    pub fn parse(src: &str, base: &Path) -> Result<Self, Vec<ConfigError>> {
        Self::parse_with(src, base, None)
    }

    /// [`parse`](Self::parse), with the Kafka connector's checks of `[kafka]`.
    pub fn parse_with(
        src: &str,
        base: &Path,
        kafka_check: Option<KafkaCheck<'_>>,
    ) -> Result<Self, Vec<ConfigError>> {
        let mut cx = Cx::new(src);
        let (doc, parse_errors) = toml::de::DeTable::parse_recoverable(src);
        for e in parse_errors {
            let line = e.span().map(|s| cx.line_of(s.start));
            cx.errors.push(ConfigError {
                path: "(syntax)".into(),
                line,
                message: e.message().trim().to_string(),
            });
        }
        let doc = doc.into_inner();
        let mut root = Table::root(&doc);
        let resolve = |p: String| -> PathBuf {
            let p = PathBuf::from(p);
            if p.is_absolute() { p } else { base.join(p) }
        };

        // [pipeline]
        let mut t = root.table(&mut cx, "pipeline");
        if !t.is_present() {
            cx.error(
                "pipeline",
                None,
                "the [pipeline] table is required (with at least `name`)",
            );
        }
        let name = t.required_string(&mut cx, "name");
        if let Some(n) = &name
            && !valid_name(n)
        {
            cx.error(
                "pipeline.name",
                t.span(),
                format!("\"{n}\" is not a valid name: use letters, digits, '_', '-' or '.'"),
            );
        }
        let shards = t
            .int(&mut cx, "shards", 1, MAX_SHARDS)
            .map(|n| n as usize)
            .unwrap_or(defaults::SHARDS);
        let commit_interval = t
            .duration(
                &mut cx,
                "commit_interval",
                Duration::from_millis(1),
                Duration::from_secs(3600),
            )
            .unwrap_or(defaults::COMMIT_INTERVAL);
        let state_dir = t.string(&mut cx, "state_dir");
        let fsync = match t
            .choice(&mut cx, "fsync", &["every_commit", "never"])
            .as_deref()
        {
            Some("never") => FsyncPolicy::Never,
            _ => FsyncPolicy::EveryCommit,
        };
        t.finish(&mut cx);
        let state_dir = resolve(
            state_dir.unwrap_or_else(|| format!("data/{}", name.as_deref().unwrap_or("pipeline"))),
        );

        // [kafka]
        let mut kt = root.table(&mut cx, "kafka");
        let kafka = kafka::parse(&mut cx, &mut kt, name.as_deref().unwrap_or("pipeline"));
        kt.finish(&mut cx);
        if let (Some(k), Some(check)) = (&kafka, kafka_check) {
            cx.errors.extend(check(k, commit_interval));
        }

        // [[sources]]
        let mut sources = Vec::new();
        let source_tables = root.tables(&mut cx, "sources");
        if source_tables.is_empty() {
            cx.error(
                "sources",
                None,
                "at least one [[sources]] entry is required",
            );
        }
        for mut s in source_tables {
            let sname = s.required_string(&mut cx, "name");
            if let Some(n) = &sname {
                if !valid_name(n) {
                    cx.error(
                        &walk::join(&s.path, "name"),
                        s.span(),
                        format!(
                            "\"{n}\" is not a valid name: use letters, digits, '_', '-' or '.'"
                        ),
                    );
                }
                if sources.iter().any(|x: &SourceConfig| &x.name == n) {
                    cx.error(
                        &walk::join(&s.path, "name"),
                        s.span(),
                        format!("duplicate source name \"{n}\""),
                    );
                }
            }
            let ty = s.choice(&mut cx, "type", &["log", "kafka"]);
            if ty.is_none() && s.keys().iter().all(|k| k != "type") {
                cx.error(
                    &walk::join(&s.path, "type"),
                    s.span(),
                    "is required (\"log\": the embedded log; \"kafka\": a Kafka topic)",
                );
            }
            let kind = match ty.as_deref() {
                Some("kafka") => SourceKind::Kafka,
                _ => SourceKind::Log,
            };
            let path = match kind {
                SourceKind::Log => s.required_string(&mut cx, "path"),
                SourceKind::Kafka => {
                    for key in ["path", "load", "load_partitions"] {
                        if s.raw(key).is_some() {
                            cx.error(
                                &walk::join(&s.path, key),
                                s.span(),
                                "is for a source of type \"log\"; a Kafka source reads its `topic` at the [kafka] brokers",
                            );
                        }
                    }
                    if kafka.is_none() {
                        cx.error(
                            &walk::join(&s.path, "type"),
                            s.span(),
                            "a Kafka source needs a [kafka] section with the brokers, e.g. [kafka] brokers = [\"127.0.0.1:9092\"]",
                        );
                    }
                    Some(String::new())
                }
            };
            let topic = match kind {
                SourceKind::Log => s
                    .string(&mut cx, "topic")
                    .unwrap_or_else(|| "events".into()),
                SourceKind::Kafka => s
                    .required_string(&mut cx, "topic")
                    .unwrap_or_else(|| "events".into()),
            };
            if !valid_name(&topic) {
                cx.error(
                    &walk::join(&s.path, "topic"),
                    s.span(),
                    format!("\"{topic}\" is not a valid topic name"),
                );
            }
            let format = match s
                .choice(&mut cx, "format", &["json", "cloudevents"])
                .as_deref()
            {
                Some("cloudevents") => Format::CloudEvents,
                _ => Format::Json,
            };
            let load = s.string(&mut cx, "load").map(&resolve);
            let load_partitions = s
                .int(&mut cx, "load_partitions", 1, MAX_PARTITIONS)
                .map(|n| n as u32)
                .unwrap_or(defaults::LOAD_PARTITIONS);
            s.finish(&mut cx);
            if let (Some(name), Some(path)) = (sname, path) {
                sources.push(SourceConfig {
                    name,
                    kind,
                    path: if path.is_empty() {
                        PathBuf::new()
                    } else {
                        resolve(path)
                    },
                    topic,
                    format,
                    load,
                    load_partitions,
                });
            }
        }

        if kafka.is_some()
            && let Some(i) = sources.iter().position(|s| s.kind == SourceKind::Log)
        {
            cx.error(
                &format!("sources[{i}].type"),
                None,
                "a pipeline with [kafka] commits its input offsets in Kafka transactions, which can only hold Kafka offsets: every source must be of type \"kafka\" (or remove [kafka] to run on the embedded log)",
            );
        }
        if kafka
            .as_ref()
            .is_some_and(|k| k.assignment == kafka::Assignment::Group)
            && sources.len() > 1
        {
            cx.error(
                "kafka.assignment",
                None,
                format!(
                    "\"group\" splits the input partitions between instances, each topic's independently (cooperative-sticky): with {} sources, a key's records in two topics could be owned by two instances and its state split. Read one topic per pipeline in group mode, or use assignment = \"all\"",
                    sources.len()
                ),
            );
        }

        // [[projections]] (read before [key] and [view]: a projection pipeline needs neither)
        let projections = projection::parse(&mut cx, &mut root);
        // With an [aggregate] too, the projections are the read side: they read the
        // aggregate's committed events (see `Pipeline::read_side`), and [key], [view] and
        // the sources belong to the aggregate.
        let declares_aggregate = root.keys().iter().any(|k| k == "aggregate");
        let has_projections = projections.is_some() && !declares_aggregate;

        // [key]
        let mut k = root.table(&mut cx, "key");
        if !k.is_present() && !has_projections {
            cx.error(
                "key",
                None,
                "the [key] table is required (with `field`, and usually `sequence`)",
            );
        }
        let key_field = k.field_path(&mut cx, "field");
        if k.is_present()
            && !has_projections
            && key_field.is_none()
            && k.keys().iter().all(|x| x != "field")
        {
            cx.error(
                "key.field",
                k.span(),
                "is required: the JSON field that holds the key",
            );
        }
        let sequence = k.field_path(&mut cx, "sequence");
        if has_projections && sequence.is_some() {
            cx.error(
                "key.sequence",
                k.span(),
                "sequence checks need one key per record; projections route each record by their own keys (their input is an exactly-once events topic): remove it",
            );
        }
        let sequence_start = k
            .int(&mut cx, "sequence_start", 0, i64::MAX)
            .map(|n| n as u64)
            .unwrap_or(defaults::SEQUENCE_START);
        k.finish(&mut cx);

        // [reorder]
        let mut r = root.table(&mut cx, "reorder");
        let reorder = ReorderConfig {
            capacity: r
                .int(&mut cx, "capacity", 0, 100_000_000)
                .map(|n| n as usize)
                .unwrap_or(defaults::REORDER_CAPACITY),
            window: r
                .int(&mut cx, "window", 1, i64::MAX)
                .map(|n| n as u64)
                .unwrap_or(defaults::REORDER_WINDOW),
        };
        r.finish(&mut cx);

        // [snapshot]
        let mut sn = root.table(&mut cx, "snapshot");
        let snapshot = if sn.is_present() {
            let every_epochs = sn
                .int(&mut cx, "every_epochs", 1, i64::MAX)
                .map(|n| n as u64);
            let every = sn.duration(
                &mut cx,
                "every",
                Duration::from_millis(1),
                Duration::from_secs(7 * 24 * 3600),
            );
            let every_records = sn
                .int(&mut cx, "every_records", 1, i64::MAX)
                .map(|n| n as u64);
            let keep = sn
                .int(&mut cx, "keep", 1, 1000)
                .map(|n| n as usize)
                .unwrap_or(defaults::SNAPSHOT_KEEP);
            let restore = match sn.choice(&mut cx, "restore", &["lazy", "eager"]).as_deref() {
                Some("eager") => RestoreMode::Eager,
                _ => RestoreMode::Lazy,
            };
            let triggers = ["every_epochs", "every", "every_records"];
            if !sn.keys().iter().any(|k| triggers.contains(&k.as_str())) {
                cx.error(
                    "snapshot",
                    sn.span(),
                    "says when to write a snapshot: give `every = \"30s\"`, `every_epochs` or `every_records` (or remove [snapshot] to recover by replay alone)",
                );
            }
            let dir = sn.string(&mut cx, "dir").map(&resolve);
            Some(SnapshotConfig {
                every_epochs,
                every,
                every_records,
                keep,
                restore,
                explicit_dir: dir.is_some(),
                dir: dir.unwrap_or_else(|| state_dir.join("snapshots")),
            })
        } else {
            None
        };
        sn.finish(&mut cx);

        // [upcast]
        let mut up_table = root.table(&mut cx, "upcast");
        let sequenced_key = key_field.as_ref().zip(sequence.as_ref());
        let upcast = upcast::parse(&mut cx, &mut up_table, sequenced_key);
        up_table.finish(&mut cx);

        // [aggregate] (read first: it decides what [view] must hold)
        let mut agg_table = root.table(&mut cx, "aggregate");
        let aggregate = aggregate::parse(&mut cx, &mut agg_table);
        let has_aggregate = agg_table.is_present();
        agg_table.finish(&mut cx);

        // [view]
        let mut v = root.table(&mut cx, "view");
        if !v.is_present() && !has_aggregate && !has_projections {
            cx.error(
                "view",
                None,
                "the [view] table is required: the read model this pipeline folds per key (or declare an [aggregate])",
            );
        }
        let view_topic = if has_projections {
            if v.keys().iter().any(|k| k == "topic" || k == "partitions") {
                cx.error(
                    "view",
                    v.span(),
                    "each projection writes its own topic: in a projection pipeline [view] takes only `emit`",
                );
            }
            let _ = (v.raw("topic"), v.raw("partitions"));
            Some(String::new())
        } else if has_aggregate {
            let default = format!(
                "{}_state",
                aggregate.as_ref().map_or("aggregate", |a| a.name.as_str())
            );
            Some(v.string(&mut cx, "topic").unwrap_or(default))
        } else {
            v.required_string(&mut cx, "topic")
        };
        if let Some(t) = &view_topic
            && !t.is_empty()
            && !valid_name(t)
        {
            cx.error(
                "view.topic",
                v.span(),
                format!("\"{t}\" is not a valid topic name"),
            );
        }
        let view_partitions = v
            .int(&mut cx, "partitions", 1, MAX_PARTITIONS)
            .map(|n| n as u32)
            .unwrap_or(defaults::OUTPUT_PARTITIONS);
        let emit = match v
            .choice(&mut cx, "emit", &["per_epoch", "per_event"])
            .as_deref()
        {
            Some("per_event") => EmitMode::PerEvent,
            _ => EmitMode::PerEpoch,
        };
        let mut f = v.table(&mut cx, "fields");
        let mut fields = Vec::new();
        if has_projections && f.is_present() {
            cx.error(
                "view.fields",
                f.span(),
                "a projection pipeline declares its fields per projection: remove view.fields",
            );
        }
        if has_aggregate && f.is_present() {
            cx.error(
                "view.fields",
                f.span(),
                "a pipeline with an [aggregate] shows the aggregate's state as its view; remove view.fields (projections come with their own tables)",
            );
        }
        if v.is_present() && !f.is_present() && !has_aggregate && !has_projections {
            cx.error("view.fields", v.span(), "is required: at least one output field, e.g. balance = { op = \"sum\", field = \"amount\" }");
        }
        for fname in f.keys() {
            let mut ft = f.table(&mut cx, &fname);
            if !ft.is_present() {
                continue;
            }
            if matches!(fname.as_str(), "key" | "version") {
                cx.error(&ft.path, ft.span(), format!("\"{fname}\" is reserved: every upsert already carries the key and its version"));
            }
            let op = ft.choice(
                &mut cx,
                "op",
                &["count", "sum", "min", "max", "last", "set"],
            );
            if op.is_none() && ft.keys().iter().all(|x| x != "op") {
                cx.error(
                    &walk::join(&ft.path, "op"),
                    ft.span(),
                    "is required: one of count, sum, min, max, last, set",
                );
            }
            let field = ft.field_path(&mut cx, "field");
            let mut when = Vec::new();
            let mut wt = ft.table(&mut cx, "when");
            for wkey in wt.keys() {
                let Some(raw) = wt.raw(&wkey) else { continue };
                let p = walk::join(&wt.path, &wkey);
                match (FieldPath::parse(&wkey), scalar_json(raw.get_ref())) {
                    (Ok(fp), Some(val)) => when.push((fp, val)),
                    (Err(e), _) => cx.error(&p, Some(raw.span()), e),
                    (_, None) => cx.error(
                        &p,
                        Some(raw.span()),
                        "expected a string, integer, float or boolean to compare with",
                    ),
                }
            }
            wt.finish(&mut cx);
            let needs_field = |cx: &mut Cx<'_>, field: Option<FieldPath>| -> Option<FieldPath> {
                if field.is_none() {
                    cx.error(
                        &walk::join(&ft.path, "field"),
                        ft.span(),
                        format!("is required for op = \"{}\"", op.as_deref().unwrap_or("")),
                    );
                }
                field
            };
            let op = match op.as_deref() {
                Some("count") => {
                    if field.is_some() {
                        cx.error(
                            &walk::join(&ft.path, "field"),
                            ft.span(),
                            "op = \"count\" takes no field (use `when` to count only some records)",
                        );
                    }
                    Some(ReducerOp::Count)
                }
                Some("sum") => needs_field(&mut cx, field).map(ReducerOp::Sum),
                Some("min") => needs_field(&mut cx, field).map(ReducerOp::Min),
                Some("max") => needs_field(&mut cx, field).map(ReducerOp::Max),
                Some("last") => needs_field(&mut cx, field).map(ReducerOp::Last),
                Some("set") => needs_field(&mut cx, field).map(ReducerOp::Set),
                _ => None,
            };
            ft.finish(&mut cx);
            if let Some(op) = op {
                fields.push(Reducer {
                    name: fname.clone(),
                    op,
                    when,
                });
            }
        }
        if fields.len() > MAX_VIEW_FIELDS {
            cx.error(
                "view.fields",
                f.span(),
                format!("at most {MAX_VIEW_FIELDS} fields, got {}", fields.len()),
            );
        }
        f.finish(&mut cx);
        v.finish(&mut cx);

        // [dead_letter]
        let mut d = root.table(&mut cx, "dead_letter");
        let dead_letter_topic = d
            .string(&mut cx, "topic")
            .unwrap_or_else(|| defaults::DEAD_LETTER_TOPIC.into());
        if !valid_name(&dead_letter_topic) {
            cx.error(
                "dead_letter.topic",
                d.span(),
                format!("\"{dead_letter_topic}\" is not a valid topic name"),
            );
        }
        if view_topic.as_deref() == Some(dead_letter_topic.as_str()) {
            cx.error("dead_letter.topic", d.span(), "must differ from view.topic");
        }
        if let Some(ps) = &projections {
            for (i, pr) in ps.list.iter().enumerate() {
                if pr.topic == dead_letter_topic || ps.list[..i].iter().any(|q| q.topic == pr.topic)
                {
                    cx.error(
                        &format!("projections[{i}].topic"),
                        None,
                        format!("\"{}\" is already used by another output: every projection needs its own topic", pr.topic),
                    );
                }
            }
        }
        if let Some(a) = &aggregate {
            for (what, t) in [
                ("events_topic", &a.events_topic),
                ("rejections_topic", &a.rejections_topic),
            ] {
                if view_topic.as_deref() == Some(t.as_str()) || *t == dead_letter_topic {
                    cx.error(
                        &format!("aggregate.{what}"),
                        None,
                        format!("\"{t}\" is already the view or dead-letter topic: every output needs its own topic"),
                    );
                }
            }
        }
        d.finish(&mut cx);
        if kafka.is_none() && aggregate.as_ref().is_some_and(|a| a.cloudevents_binary) {
            cx.error(
                "aggregate.events_format",
                None,
                "\"cloudevents_binary\" puts the attributes in Kafka headers: it needs [kafka] (the embedded log has no headers; use \"cloudevents\" there)",
            );
        }
        if let (Some(a), Some(ps)) = (&aggregate, &projections) {
            check_read_side_fields(&mut cx, a, ps);
        }
        root.finish(&mut cx);

        if !cx.errors.is_empty() {
            let mut errors = cx.errors;
            errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
            return Err(errors);
        }
        Ok(Pipeline {
            name: name.expect("checked"),
            shards,
            commit_interval,
            state_dir,
            fsync,
            sources,
            key: KeyConfig {
                field: key_field,
                sequence,
                sequence_start,
            },
            reorder,
            view: ViewConfig {
                topic: view_topic.expect("checked"),
                partitions: view_partitions,
                emit,
                fields,
            },
            aggregate,
            upcast,
            projections,
            dead_letter_topic,
            snapshot,
            kafka,
        })
    }

    /// A pipeline that declares both an `[aggregate]` and `[[projections]]` runs as two
    /// chained stages in one process: the write side (the aggregate, reading the
    /// pipeline's sources) and the read side (the projections, reading the aggregate's
    /// committed events topic from its state log, with their own state log in
    /// `<state_dir>/projections`). Returns both; `None` for a pipeline with one stage.
    ///
    /// The read side sees only committed events, so it never shows an event that a crash
    /// could take back; `[upcast]` applies to the write side's sources.
    pub fn sides(&self) -> Option<(Pipeline, Pipeline)> {
        let (Some(a), Some(ps)) = (&self.aggregate, &self.projections) else {
            return None;
        };
        let mut write = self.clone();
        write.projections = None;
        let read = Pipeline {
            name: format!("{}.projections", self.name),
            state_dir: self.state_dir.join("projections"),
            sources: vec![SourceConfig {
                name: a.events_topic.clone(),
                kind: if self.kafka.is_some() {
                    SourceKind::Kafka
                } else {
                    SourceKind::Log
                },
                path: if self.kafka.is_some() {
                    PathBuf::new()
                } else {
                    self.state_dir.clone()
                },
                topic: a.events_topic.clone(),
                format: if a.cloudevents_source.is_some() {
                    Format::CloudEvents
                } else {
                    Format::Json
                },
                load: None,
                load_partitions: defaults::LOAD_PARTITIONS,
            }],
            key: KeyConfig {
                field: None,
                sequence: None,
                sequence_start: defaults::SEQUENCE_START,
            },
            view: ViewConfig {
                topic: String::new(),
                partitions: defaults::OUTPUT_PARTITIONS,
                emit: self.view.emit,
                fields: Vec::new(),
            },
            aggregate: None,
            upcast: None,
            projections: Some(ps.clone()),
            snapshot: self.snapshot.clone().map(|s| SnapshotConfig {
                dir: if s.explicit_dir {
                    s.dir.join("projections")
                } else {
                    self.state_dir.join("projections").join("snapshots")
                },
                ..s
            }),
            // Its own consumer group and transactional ids.
            kafka: self.kafka.clone().map(|k| KafkaSettings {
                group: format!("{}.projections", k.group),
                ..k
            }),
            ..self.clone()
        };
        Some((write, read))
    }

    /// Whether each key is kept by one input partition (`[kafka] assignment = "group"`):
    /// see [`crate::shard::ShardSettings::homed`].
    pub fn homed_keys(&self) -> bool {
        self.kafka
            .as_ref()
            .is_some_and(|k| k.assignment == kafka::Assignment::Group)
    }

    /// Where this instance writes its snapshots: `[snapshot] dir`, or with
    /// `[kafka] assignment = "group"` its own `<dir>/instance-<instance>/` (instances
    /// that share `dir` restore partitions taken over from each other's).
    pub fn snapshot_write_dir(&self) -> Option<PathBuf> {
        let s = self.snapshot.as_ref()?;
        Some(match &self.kafka {
            Some(k) if k.assignment == kafka::Assignment::Group => {
                s.dir.join(format!("{INSTANCE_DIR_PREFIX}{}", k.instance))
            }
            _ => s.dir.clone(),
        })
    }

    /// Every field path the pipeline reads from a record (key, sequence, reducers, filters),
    /// without repeats, in a stable order. The decoder extracts exactly these.
    pub fn referenced_fields(&self) -> Vec<FieldPath> {
        let mut out: Vec<FieldPath> = Vec::new();
        let mut add = |p: &FieldPath| {
            if !out.contains(p) {
                out.push(p.clone());
            }
        };
        if let Some(k) = &self.key.field {
            add(k);
        }
        if let Some(s) = &self.key.sequence {
            add(s);
        }
        for r in &self.view.fields {
            match &r.op {
                ReducerOp::Count => {}
                ReducerOp::Sum(p)
                | ReducerOp::Min(p)
                | ReducerOp::Max(p)
                | ReducerOp::Last(p)
                | ReducerOp::Set(p) => add(p),
            }
            for (p, _) in &r.when {
                add(p);
            }
        }
        if let Some(a) = &self.aggregate {
            for p in a.referenced_fields() {
                add(p);
            }
        }
        if let Some(u) = &self.upcast {
            for p in u.referenced_fields() {
                add(p);
            }
        }
        if self.sources.iter().any(|s| s.format == Format::CloudEvents) {
            for p in crate::cloudevents::EnvelopeCheck::fields() {
                add(&p);
            }
        }
        if let Some(ps) = &self.projections {
            add(&ps.type_field);
            for p in &ps.event_fields {
                add(p);
            }
        }
        out
    }
}

/// In a pipeline with an aggregate and projections, the projections read the aggregate's
/// own events, whose shape is known: a field they do not have would dead-letter every
/// event at run time, so it is an error now.
fn check_read_side_fields(cx: &mut Cx, a: &AggregateConfig, ps: &ProjectionsConfig) {
    // What the aggregate writes (`stage::aggregate`): the CloudEvents context
    // attributes and its extensions, or its JSON event fields; `data` either way.
    let envelope: Vec<&str> = if a.cloudevents_source.is_some() {
        crate::cloudevents::CHECKED_FIELDS
            .iter()
            .filter(|f| **f != "data_base64")
            .chain(&aggregate::CLOUDEVENT_EXTENSIONS)
            .chain(&["data"])
            .copied()
            .collect()
    } else {
        aggregate::EVENT_FIELDS.to_vec()
    };
    let has_data = |name: &str| {
        a.events
            .iter()
            .any(|e| e.fields.iter().any(|(n, _)| n == name))
    };
    let mut unknown: Vec<String> = Vec::new();
    for f in std::iter::once(&ps.type_field).chain(&ps.event_fields) {
        let known = match f.0.as_slice() {
            [top] => envelope.contains(&top.as_str()),
            [data, name, ..] if data == "data" => has_data(name),
            _ => false,
        };
        if !known && !unknown.contains(&f.to_string()) {
            unknown.push(f.to_string());
        }
    }
    if unknown.is_empty() {
        return;
    }
    let mut data: Vec<&str> = a
        .events
        .iter()
        .flat_map(|e| e.fields.iter().map(|(n, _)| n.as_str()))
        .collect();
    data.sort_unstable();
    data.dedup();
    cx.error(
        "projections",
        None,
        format!(
            "the projections read {}, which the aggregate's {} events do not have; they have {}, and data fields {}",
            unknown
                .iter()
                .map(|u| format!("`event.{u}`"))
                .collect::<Vec<_>>()
                .join(", "),
            if a.cloudevents_source.is_some() {
                "CloudEvents"
            } else {
                "JSON"
            },
            envelope.join(", "),
            data.join(", ")
        ),
    );
}

fn scalar_json(v: &toml::de::DeValue<'_>) -> Option<serde_json::Value> {
    use toml::de::DeValue;
    match v {
        DeValue::String(s) => Some(serde_json::Value::String(s.to_string())),
        DeValue::Integer(i) => i64::from_str_radix(&i.as_str().replace('_', ""), i.radix())
            .ok()
            .map(Into::into),
        DeValue::Float(f) => f
            .as_str()
            .replace('_', "")
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(serde_json::Value::Number),
        DeValue::Boolean(b) => Some(serde_json::Value::Bool(*b)),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
