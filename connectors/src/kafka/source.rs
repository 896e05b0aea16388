//! A Kafka topic as an onceflow source: [`KafkaInput`] implements the engine's
//! [`SourceInput`] for one topic, read with `isolation.level=read_committed`.
//!
//! A source of `type = "kafka"` in a pipeline with `[kafka]` is one (built by
//! [`KafkaConnect`](super::KafkaConnect)). What it does and why:
//!
//! - **Assignment.** Every partition of the topic is assigned manually
//!   (`incremental_assign`, no group subscription: no group coordination, records flow
//!   at once). The assigned set lives in one map, changed in one place (`assign`), so
//!   that consumer-group assignment and rebalances can add and remove partitions later.
//!   The `group.id` the caller gives is only an identity: this input never commits
//!   offsets to the group (auto-commit and the offset store are off); onceflow keeps the
//!   consumed offsets with its outputs.
//! - **Per-partition reads.** Each partition's records come through a queue of its own
//!   (`split_partition_queue`, split *before* the partition is assigned so that no
//!   record can reach the consumer's main queue first), polled with a zero timeout:
//!   [`read`](SourceInput::read) returns only that partition's records, in offset
//!   order, and never waits for the network.
//! - **Positions** follow the records returned: the offset after the last one, or the
//!   offset of the last [`seek`](SourceInput::seek). Kafka offsets are not dense in a
//!   transactional topic: every commit or abort writes a control record that takes an
//!   offset and is never delivered (and on Kafka, aborted records are never delivered
//!   either). So when a partition reaches its end (librdkafka's partition EOF,
//!   `enable.partition.eof=true`), the position moves to librdkafka's application
//!   position, which counts the control records it skipped. That is what makes "caught
//!   up" (position = committed end) reachable after a transaction. (Asking librdkafka
//!   for it is a round trip to its main thread, no network; once per end reached.)
//!   Known gap: in a compacted topic whose last records the cleaner removed, the
//!   position after the last record stays below the committed end.
//! - **Committed end** is the partition's *last stable offset* (LSO), which is what a
//!   read_committed consumer can reach, taken from the broker's fetch responses through
//!   librdkafka's statistics (`ls_offset`, every `statistics.interval.ms`, default
//!   [`DEFAULT_STATS_INTERVAL_MS`]). The other sources were ruled out: the cached high
//!   watermark (`get_watermark_offsets`) is the high watermark, beyond an open
//!   transaction; `fetch_watermarks` (ListOffsets) does return the LSO on Kafka for a
//!   read_committed client, but is a blocking round trip per partition, and the test
//!   broker answers it wrongly. So the committed end lags the broker by up to one
//!   statistics interval, and is only known once the partition has had a fetch
//!   response: [`KafkaInput::new`] waits for that (within the connect timeout).
//!   For `--until-end`, the engine stops at the committed ends it saw at start, and the
//!   position reaches them (a committed end is never inside a transaction: it is at
//!   an open transaction's first record, or after the last control record). Records
//!   committed during the statistics interval before the start are not read by that
//!   run; the next run reads them.
//! - **Records**: the Kafka timestamp (create or log-append time, ms; 0 when the record
//!   has none) into the buffer's timestamp, the key and value bytes (a missing key or
//!   value reads as empty bytes), and the headers that outputs derived from the record
//!   carry (all but `ce_*` and `content-type`; see `format.rs`).
//! - **Start**: every partition from offset 0 until a seek, like the embedded log, and
//!   `auto.offset.reset=error`: an offset the broker no longer has (retention) is an
//!   error, never a silent jump to another offset.
//! - **Memory**: librdkafka prefetches into each partition's queue until it holds
//!   `queued.max.messages.kbytes` of record bytes or `queued.min.messages` records
//!   (100,000); with split queues these bounds apply per partition, not per consumer.
//!   onceflow sets `queued.max.messages.kbytes` to 4096 (4 MiB; librdkafka's default is
//!   64 MiB, which many partitions multiply) unless the connection's properties set it.
//!   Not lower, because librdkafka also caps `fetch.max.bytes` at it: draining a
//!   6-partition backlog on the test broker, peak RSS was 446 MB at 64 MiB, 305 MB at
//!   4 MiB and 154 MB at 1 MiB (85-byte records) at the same drain rate, but 1 MiB
//!   halved the drain rate of 1 KB records (docs/benchmarks.md). A small record costs
//!   several times its bytes (librdkafka's overhead, not counted by the bound): for many
//!   partitions of small records lower `queued.min.messages` too.
//! - **Errors** are [`InputError::Other`], naming the brokers, the topic and the
//!   partition. Connection problems that librdkafka retries by itself (a broker down,
//!   a timeout) are not errors: reads return nothing meanwhile, and the last such
//!   problem is kept ([`KafkaInput::last_client_error`]).
//!
//! # Examples
//!
//! ```no_run
//! use std::time::Duration;
//! use onceflow_connectors::kafka::{KafkaConnection, KafkaInput};
//! use onceflow_core::input::SourceInput;
//! use onceflow_core::log::RecordBuf;
//!
//! let conn = KafkaConnection::from_broker_list("127.0.0.1:9092", Duration::from_secs(10))
//!     .expect("a valid broker list");
//! let mut input = KafkaInput::new(&conn, "payments", "onceflow.payments-pipeline")?;
//! let mut buf = RecordBuf::new();
//! for p in input.partitions() {
//!     buf.clear();
//!     let n = input.read(p, 1000, u64::MAX, &mut buf)?;
//!     println!("partition {p}: {n} records, now at {}", input.position(p));
//! }
//! # Ok::<(), onceflow_core::input::InputError>(())
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use onceflow_core::input::{InputError, SourceInput};
use onceflow_core::log::RecordBuf;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use serde::Deserialize;

use super::admin::{AdminError, KafkaAdmin};
use super::config::KafkaConnection;
use super::member::GroupMember;

/// How often librdkafka reports the partitions' last stable offsets, unless the
/// connection's properties set `statistics.interval.ms`: the committed ends lag the
/// broker by up to this much.
pub const DEFAULT_STATS_INTERVAL_MS: u64 = 250;

/// Events (statistics, client errors) served from the consumer's main queue per call:
/// a bound, not a target (one statistics event per interval is the usual load).
const MAIN_QUEUE_EVENTS_PER_SERVE: usize = 32;

/// One Kafka topic as a [`SourceInput`]: its assigned partitions, each read from a
/// queue of its own, committed records only. See the [module docs](self).
pub struct KafkaInput {
    consumer: Arc<BaseConsumer<SourceContext>>,
    topic: String,
    brokers: String,
    /// The assigned partitions: all of the topic's, for now.
    parts: BTreeMap<u32, Assigned>,
    /// Bounds seeks and start-up waits.
    timeout: Duration,
    /// The statistics interval: how often reads also serve the consumer's main queue,
    /// so that its events never pile up while the input is kept busy.
    serve_every: Duration,
    next_serve: Instant,
    /// With `[kafka] assignment = "group"`: the membership, and its generation when
    /// this input was opened.
    member: Option<(Arc<GroupMember>, u64)>,
    /// For `format = "cloudevents"`: the scratch buffer binary-mode records are turned
    /// into structured-mode envelopes in.
    cloudevents: Option<Vec<u8>>,
}

/// One assigned partition.
struct Assigned {
    queue: PartitionQueue<SourceContext>,
    /// The next offset `read` returns (at least): after the last record returned, or
    /// where the last seek put it.
    position: u64,
    /// The last stable offset as of the last refresh.
    committed_end: u64,
    /// A record polled at or past the bound of the read that polled it (`read`'s
    /// `below`), kept for the next read.
    kept: Option<OwnedMessage>,
}

impl fmt::Debug for KafkaInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaInput")
            .field("topic", &self.topic)
            .field("brokers", &self.brokers)
            .field(
                "positions",
                &self
                    .parts
                    .iter()
                    .map(|(p, a)| (*p, a.position, a.committed_end))
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl KafkaInput {
    /// Reads every partition of `topic` at `conn`, from offset 0 (until a seek), as a
    /// read_committed consumer identified by `group_id` (no offsets are committed to
    /// that group).
    ///
    /// Checks first, within the connect timeout: that a broker answers (the error names
    /// the addresses tried) and that the topic exists. Then waits, within the same
    /// timeout, until every partition's committed end is known (one fetch response and
    /// one statistics report).
    pub fn new(
        conn: &KafkaConnection,
        topic: &str,
        group_id: &str,
    ) -> Result<KafkaInput, InputError> {
        Self::open(conn, topic, group_id, None)
    }

    /// Reads the partitions of `topic` that `member` owns now, like [`new`](Self::new).
    /// Once the member's assignment changes (a rebalance), reads and refreshes fail
    /// with [`InputError::Reassigned`]: the engine starts again with the new partitions.
    pub fn of_member(
        conn: &KafkaConnection,
        topic: &str,
        member: Arc<GroupMember>,
    ) -> Result<KafkaInput, InputError> {
        let group = member.group().to_string();
        Self::open(conn, topic, &group, Some(member))
    }

    fn open(
        conn: &KafkaConnection,
        topic: &str,
        group_id: &str,
        member: Option<Arc<GroupMember>>,
    ) -> Result<KafkaInput, InputError> {
        let brokers = conn.bootstrap_servers.clone();
        let admin = KafkaAdmin::connect(conn).map_err(|e| match e {
            AdminError::Unreachable { .. } => {
                InputError::Unavailable(format!("Kafka topic '{topic}': {e}"))
            }
            other => InputError::Other(format!("Kafka topic '{topic}': {other}")),
        })?;
        let partitions = admin
            .partition_counts(&[topic])
            .map_err(|e| InputError::Other(format!("Kafka topic '{topic}': {e}")))?
            .get(topic)
            .copied()
            .flatten()
            .ok_or_else(|| {
                InputError::Other(format!(
                    "Kafka topic '{topic}' does not exist at {brokers} (create it first)"
                ))
            })?;
        drop(admin);

        let stats_interval_ms = stats_interval_ms(conn)
            .map_err(|m| InputError::Other(format!("Kafka topic '{topic}' at {brokers}: {m}")))?;
        let mut config = conn.client_config();
        config
            .set("group.id", group_id)
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "error")
            .set("allow.auto.create.topics", "false")
            .set("statistics.interval.ms", stats_interval_ms.to_string())
            // librdkafka pauses a partition's fetching this long when its queue is
            // full (1 s by default): draining a backlog stalls in 1 s gaps (measured:
            // 120–175k events/s → 590–820k with 10 ms, docs/benchmarks.md).
            .set(
                "fetch.queue.backoff.ms",
                conn.properties
                    .get("fetch.queue.backoff.ms")
                    .map_or("10", String::as_str),
            )
            // Each partition's prefetch queue (split queues: the bound is per
            // partition) holds 4 MiB instead of 64 MiB; librdkafka also caps
            // `fetch.max.bytes` at it. Measured: peak RSS 446 → 305 MB draining 6
            // partitions, same drain rate; 1 MiB halved it with 1 KB records
            // (docs/benchmarks.md, "Kafka source memory under a backlog").
            .set(
                "queued.max.messages.kbytes",
                conn.properties
                    .get("queued.max.messages.kbytes")
                    .map_or("4096", String::as_str),
            )
            // Quiet: problems come back as errors or through `last_client_error`.
            .set_log_level(RDKafkaLogLevel::Emerg);
        let consumer: BaseConsumer<SourceContext> = config
            .create_with_context(SourceContext::new(topic))
            .map_err(|e| {
                InputError::Other(format!(
                    "Kafka topic '{topic}' at {brokers}: cannot create the consumer: {e}"
                ))
            })?;
        // The generation first: a change while the partitions are read is noticed.
        let member = member.map(|m| {
            let generation = m.generation();
            (m, generation)
        });
        let owned: Vec<u32> = match &member {
            Some((m, _)) => m.assigned(topic),
            None => (0..partitions).collect(),
        };
        let mut input = KafkaInput {
            consumer: Arc::new(consumer),
            topic: topic.to_string(),
            brokers,
            parts: BTreeMap::new(),
            timeout: conn.connect_timeout,
            serve_every: Duration::from_millis(stats_interval_ms),
            next_serve: Instant::now(),
            member,
            cloudevents: None,
        };
        let start: Vec<(u32, u64)> = owned.into_iter().map(|p| (p, 0)).collect();
        input.assign(&start)?;
        input.wait_for_committed_ends()?;
        Ok(input)
    }

    /// Reads CloudEvents: records in Kafka binary mode (a `ce_specversion` header) are
    /// handed on as structured-mode envelopes (`format.rs`); others as they are.
    pub fn read_cloudevents(&mut self, on: bool) {
        self.cloudevents = on.then(Vec::new);
    }

    /// The topic read.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The last problem librdkafka reported and retries by itself (e.g. a broker that
    /// went away), if any: reads return nothing while it lasts.
    pub fn last_client_error(&self) -> Option<String> {
        self.consumer.context().lock().client_error.clone()
    }

    /// Adds `start`'s partitions to the assignment, each at its offset. The one place
    /// the assigned set grows (a consumer group's assignments will come through here).
    fn assign(&mut self, start: &[(u32, u64)]) -> Result<(), InputError> {
        // Split each partition's queue off before the fetcher starts: a queue the
        // application has forwarded is not forwarded again to the consumer's queue
        // when fetching starts, so every record of the partition lands in its queue.
        let mut tpl = TopicPartitionList::new();
        for &(p, offset) in start {
            if self.parts.contains_key(&p) {
                return Err(self.error(p, "assigned twice".to_string()));
            }
            let queue = self
                .consumer
                .split_partition_queue(&self.topic, p as i32)
                .ok_or_else(|| self.error(p, "librdkafka gave no queue for it".to_string()))?;
            self.parts.insert(
                p,
                Assigned {
                    queue,
                    position: offset,
                    committed_end: 0,
                    kept: None,
                },
            );
            tpl.add_partition_offset(&self.topic, p as i32, to_offset(offset))
                .map_err(|e| self.error(p, format!("cannot assign it at {offset}: {e}")))?;
        }
        self.consumer
            .incremental_assign(&tpl)
            .map_err(|e| self.fail(format!("cannot assign partitions: {e}")))
    }

    /// Waits until every assigned partition has a known committed end (its first fetch
    /// response, reported by the statistics), within the connect timeout.
    fn wait_for_committed_ends(&mut self) -> Result<(), InputError> {
        let started = Instant::now();
        loop {
            self.serve_main_queue(Duration::from_millis(20))?;
            let missing: Vec<u32> = {
                let ctx = self.consumer.context().lock();
                self.parts
                    .keys()
                    .filter(|p| !ctx.stable_offsets.contains_key(&(**p as i32)))
                    .copied()
                    .collect()
            };
            if missing.is_empty() {
                return self.refresh();
            }
            if started.elapsed() >= self.timeout {
                let ctx = self.consumer.context().lock();
                let why = ctx
                    .client_error
                    .as_deref()
                    .or(ctx.stats_error.as_deref())
                    .map_or(String::new(), |e| format!(" (last client error: {e})"));
                return Err(self.fail(format!(
                    "no committed end known for partitions {missing:?} after {:.1} s: \
                     the broker sent no fetch response for them{why}",
                    started.elapsed().as_secs_f64()
                )));
            }
        }
    }

    /// Serves the consumer's main queue (statistics, client errors), waiting up to
    /// `first_wait` for the first event. A record there would have bypassed its
    /// partition's queue: an error, never dropped.
    fn serve_main_queue(&mut self, first_wait: Duration) -> Result<(), InputError> {
        self.next_serve = Instant::now() + self.serve_every;
        let mut wait = first_wait;
        for _ in 0..MAIN_QUEUE_EVENTS_PER_SERVE {
            match self.consumer.poll(wait) {
                // Nothing, or an event served by the context (statistics).
                None => {}
                Some(Ok(m)) => {
                    return Err(self.error(
                        m.partition().max(0) as u32,
                        format!(
                            "a record (offset {}) arrived outside its partition's queue",
                            m.offset()
                        ),
                    ));
                }
                // Kept by the context, with librdkafka's reason.
                Some(Err(e)) if is_retried_by_librdkafka(&e) => {}
                Some(Err(e)) => return Err(self.fail(format!("consumer error: {e}"))),
            }
            wait = Duration::ZERO;
        }
        Ok(())
    }

    /// At the end of `partition`: moves its position over the offsets librdkafka
    /// consumed without delivering them (control records; aborted records on Kafka).
    /// librdkafka's application position counts exactly those and the records
    /// delivered; a seek resets it, so it never points past an unread record.
    fn catch_up_at_end(&mut self, partition: u32) -> Result<(), InputError> {
        let positions = self
            .consumer
            .position()
            .map_err(|e| self.error(partition, format!("cannot read its position: {e}")))?;
        let app = positions
            .find_partition(&self.topic, partition as i32)
            .and_then(|e| match e.offset() {
                Offset::Offset(o) if o >= 0 => Some(o as u64),
                _ => None,
            });
        if let (Some(app), Some(a)) = (app, self.parts.get_mut(&partition))
            && app > a.position
        {
            a.position = app;
        }
        Ok(())
    }

    fn assigned(&self, partition: u32) -> &Assigned {
        self.parts.get(&partition).unwrap_or_else(|| {
            panic!(
                "partition {partition} of Kafka topic '{}' is not assigned to this input",
                self.topic
            )
        })
    }

    fn not_assigned(&self, partition: u32) -> InputError {
        self.error(partition, "not assigned to this input".to_string())
    }

    fn error(&self, partition: u32, message: String) -> InputError {
        InputError::Other(format!(
            "Kafka topic '{}' partition {partition} at {}: {message}",
            self.topic, self.brokers
        ))
    }

    fn fail(&self, message: String) -> InputError {
        InputError::Other(format!(
            "Kafka topic '{}' at {}: {message}",
            self.topic, self.brokers
        ))
    }
}

impl SourceInput for KafkaInput {
    fn partitions(&self) -> Vec<u32> {
        self.parts.keys().copied().collect()
    }

    /// Panics if `partition` is not assigned.
    fn position(&self, partition: u32) -> u64 {
        self.assigned(partition).position
    }

    fn seek(&mut self, partition: u32, offset: u64) -> Result<(), InputError> {
        if !self.parts.contains_key(&partition) {
            return Err(self.not_assigned(partition));
        }
        // With a timeout, librdkafka returns once the partition's fetcher has moved
        // (records fetched before are discarded, the application position reset).
        self.consumer
            .seek(
                &self.topic,
                partition as i32,
                to_offset(offset),
                self.timeout,
            )
            .map_err(|e| self.error(partition, format!("cannot seek to {offset}: {e}")))?;
        if let Some(a) = self.parts.get_mut(&partition) {
            a.position = offset;
            a.kept = None;
        }
        Ok(())
    }

    fn read(
        &mut self,
        partition: u32,
        max: usize,
        below: u64,
        buf: &mut RecordBuf,
    ) -> Result<usize, InputError> {
        // hot path
        if let Some((m, generation)) = &self.member {
            m.check(*generation)?;
        }
        let Some(a) = self.parts.get_mut(&partition) else {
            return Err(self.not_assigned(partition));
        };
        let mut n = 0;
        // A record an earlier read's bound kept back comes first.
        if let Some(m) = a.kept.take() {
            if m.offset() as u64 >= below || max == 0 {
                a.kept = Some(m);
                return Ok(0);
            }
            push(buf, partition, &m, self.cloudevents.as_mut());
            a.position = m.offset() as u64 + 1;
            n += 1;
        }
        let mut at_end = false;
        let mut failed = None;
        while n < max {
            match a.queue.poll(Duration::ZERO) {
                None => break,
                Some(Ok(m)) => {
                    let offset = m.offset();
                    if offset < 0 || (offset as u64) < a.position {
                        failed = Some(format!(
                            "record at offset {offset} is before the position {}: \
                             it would be read twice",
                            a.position
                        ));
                        break;
                    }
                    if offset as u64 >= below {
                        // Past the bound (a replay stops exactly at the committed
                        // offset): kept, not returned. The offsets before it that
                        // were not delivered (transaction markers, aborted records)
                        // are passed: the position moves up to it, so that a bound
                        // on such an offset is reached.
                        a.position = offset as u64;
                        a.kept = Some(m.detach());
                        break;
                    }
                    push(buf, partition, &m, self.cloudevents.as_mut());
                    a.position = offset as u64 + 1;
                    n += 1;
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {
                    at_end = true;
                    break;
                }
                Some(Err(e)) => {
                    failed = Some(format!("cannot read at offset {}: {e}", a.position));
                    break;
                }
            }
        }
        if let Some(m) = failed {
            return Err(self.error(partition, m));
        }
        if at_end {
            self.catch_up_at_end(partition)?;
        }
        if Instant::now() >= self.next_serve {
            self.serve_main_queue(Duration::ZERO)?;
        }
        Ok(n)
    }

    /// Waits (within the connect timeout) for two statistics reports after the call:
    /// the committed ends then include what was committed before it (a report carries
    /// the last stable offsets of the latest fetch responses, and a commit ends a
    /// waiting fetch at once).
    fn settle(&mut self) -> Result<(), InputError> {
        let started = Instant::now();
        let from = self.consumer.context().lock().reports;
        while self.consumer.context().lock().reports < from + 2 {
            if started.elapsed() >= self.timeout {
                break;
            }
            self.serve_main_queue(Duration::from_millis(10))?;
        }
        self.refresh()
    }

    /// Panics if `partition` is not assigned.
    fn committed_end(&self, partition: u32) -> u64 {
        self.assigned(partition).committed_end
    }

    fn refresh(&mut self) -> Result<(), InputError> {
        if let Some((m, generation)) = &self.member {
            m.check(*generation)?;
        }
        self.serve_main_queue(Duration::ZERO)?;
        let ctx = self.consumer.context().lock();
        if let Some(e) = &ctx.stats_error {
            return Err(self.fail(format!("unreadable librdkafka statistics: {e}")));
        }
        let ends: Vec<(u32, u64)> = self
            .parts
            .keys()
            .filter_map(|p| ctx.stable_offsets.get(&(*p as i32)).map(|o| (*p, *o)))
            .collect();
        drop(ctx);
        for (p, end) in ends {
            if let Some(a) = self.parts.get_mut(&p) {
                a.committed_end = end;
            }
        }
        Ok(())
    }
}

/// `statistics.interval.ms` from the connection's properties, else the default; 0
/// (statistics off) is refused: the committed ends come from them.
pub(crate) fn stats_interval_ms(conn: &KafkaConnection) -> Result<u64, String> {
    match conn.properties.get("statistics.interval.ms") {
        None => Ok(DEFAULT_STATS_INTERVAL_MS),
        Some(v) => match v.trim().parse::<u64>() {
            Ok(0) => Err(
                "statistics.interval.ms = 0 turns off librdkafka's statistics, which the Kafka \
                 source reads its committed ends from: leave it out or give a positive interval"
                    .to_string(),
            ),
            Ok(ms) => Ok(ms),
            Err(_) => Err(format!(
                "statistics.interval.ms must be a whole number of milliseconds, not \"{v}\""
            )),
        },
    }
}

fn to_offset(offset: u64) -> Offset {
    Offset::Offset(i64::try_from(offset).unwrap_or(i64::MAX))
}

/// Connection-level problems librdkafka keeps retrying by itself.
fn is_retried_by_librdkafka(e: &KafkaError) -> bool {
    matches!(
        e,
        KafkaError::MessageConsumption(
            RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::Resolve
                | RDKafkaErrorCode::OperationTimedOut
                | RDKafkaErrorCode::RequestTimedOut
        )
    )
}

/// What the consumer's callbacks learn: the partitions' last stable offsets (from the
/// statistics) and the last client error.
struct SourceContext {
    topic: String,
    state: Mutex<ContextState>,
}

#[derive(Default)]
struct ContextState {
    /// Last stable offset per partition, from the latest statistics that had one.
    stable_offsets: HashMap<i32, u64>,
    /// Statistics that could not be read.
    stats_error: Option<String>,
    /// The last error librdkafka retries by itself.
    client_error: Option<String>,
    /// Statistics reports read so far.
    reports: u64,
}

impl SourceContext {
    fn new(topic: &str) -> Self {
        SourceContext {
            topic: topic.to_string(),
            state: Mutex::new(ContextState::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ContextState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ClientContext for SourceContext {
    fn log(&self, _level: RDKafkaLogLevel, _fac: &str, _message: &str) {}

    fn stats_raw(&self, json: &[u8]) {
        let parsed = stable_offsets(json, &self.topic);
        let mut state = self.lock();
        state.reports += 1;
        match parsed {
            Ok(offsets) => {
                state.stable_offsets.extend(offsets);
                state.stats_error = None;
            }
            Err(e) => state.stats_error = Some(e),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // Every error event passes here, and then comes back from the poll that
        // served it; the polls decide which ones fail the input. Kept for
        // `last_client_error` with librdkafka's reason (e.g. "Connect to ... failed").
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF) {
            return;
        }
        self.lock().client_error = Some(reason.to_string());
    }
}

impl ConsumerContext for SourceContext {}

/// The last stable offset of each partition of `topic` in a librdkafka statistics
/// report, for the partitions that had a fetch response (librdkafka reports -1001
/// before). Pure, so that it is tested without a broker.
pub(crate) fn stable_offsets(json: &[u8], topic: &str) -> Result<Vec<(i32, u64)>, String> {
    #[derive(Deserialize)]
    struct Stats {
        #[serde(default)]
        topics: HashMap<String, TopicStats>,
    }
    #[derive(Deserialize)]
    struct TopicStats {
        #[serde(default)]
        partitions: HashMap<String, PartitionStats>,
    }
    #[derive(Deserialize)]
    struct PartitionStats {
        partition: i32,
        ls_offset: i64,
    }
    let stats: Stats = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    let mut out: Vec<(i32, u64)> = stats
        .topics
        .get(topic)
        .map(|t| {
            t.partitions
                .values()
                .filter(|p| p.partition >= 0 && p.ls_offset >= 0)
                .map(|p| (p.partition, p.ls_offset as u64))
                .collect()
        })
        .unwrap_or_default();
    out.sort_unstable();
    Ok(out)
}

/// Appends a Kafka record `m` to `buf`: its timestamp in ms (0 if it has none), key and
/// value (a null one as empty), and the headers its outputs carry
/// ([`carried_headers`](super::format::carried_headers)). With `cloudevents` (a scratch
/// buffer), a binary-mode CloudEvent goes in as its structured-mode envelope.
#[inline]
fn push<M: Message>(buf: &mut RecordBuf, partition: u32, m: &M, cloudevents: Option<&mut Vec<u8>>) {
    let ts = m.timestamp().to_millis().unwrap_or(0).max(0) as u64;
    let key = m.key().unwrap_or_default();
    let value: &[u8] = match cloudevents {
        Some(scratch) => {
            if super::format::binary_to_structured(m, scratch) {
                scratch
            } else {
                m.payload().unwrap_or_default()
            }
        }
        None => m.payload().unwrap_or_default(),
    };
    match m.headers() {
        Some(h) => buf.push_with_headers(partition, m.offset() as u64, ts, key, value, |out| {
            super::format::carried_headers(h, out)
        }),
        None => buf.push(partition, m.offset() as u64, ts, key, value),
    }
}
