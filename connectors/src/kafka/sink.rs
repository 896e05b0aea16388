//! Kafka as the engine's commit target: [`KafkaTarget`] commits each epoch's outputs,
//! dead letters and input offsets in one Kafka transaction.
//!
//! - **One transactional producer per instance**, `transactional.id` =
//!   `<group>.<instance>` ([`KafkaSettings::transactional_id`]). Opening the target calls
//!   `init_transactions`, which fences an earlier producer with the same id (a zombie of
//!   this instance) and completes or aborts whatever transaction it left open. Only then
//!   are the committed offsets read, so they are final.
//! - **Per commit** (one epoch, or the group of epochs the engine commits together):
//!   `begin_transaction`, every record produced to its explicit partition (the engine
//!   partitions by key), `send_offsets_to_transaction` with the input offsets and the
//!   consumer group's metadata (while the records are in flight), a wait for every
//!   delivery, `commit_transaction`. The offsets carry
//!   `onceflow:epoch=<n>` as their metadata: the epoch numbering survives restarts (the
//!   snapshots are named by epoch), and a group whose offsets lack it was not written by
//!   onceflow and is refused rather than trusted.
//! - **Errors** go through the pure state machine of `errors.rs` ([`decide`]): retriable
//!   ones are retried with backoff; an abortable one aborts ([`CommitError::Aborted`]);
//!   fenced is [`CommitError::Fenced`]; a commit whose outcome is unknown is
//!   [`CommitError::Unknown`], never reported as done; configuration and permission
//!   problems are [`CommitError::Failed`]. Every failure leaves this target unusable:
//!   the engine recovers by opening a new one (a new producer) and replaying from the
//!   committed offsets.
//! - **At least once** (`[kafka] delivery = "at_least_once"`): no transactions; the
//!   records are produced and flushed, then the offsets are committed to the group. A
//!   crash between the two writes the epoch's outputs again on restart.
//!
//! The offsets are committed for the consumer group `[kafka] group`; this target never
//! joins the group (the source assigns its partitions itself), so the group's metadata
//! carries no generation: a second instance with another `instance` id reading the same
//! partitions is not fenced by the group. Scale-out with group rebalances is future work
//! (`docs/architecture.md`).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use onceflow_core::config::{Delivery, KafkaSettings, Pipeline, SourceKind};
use onceflow_core::log::CommitMarker;
use onceflow_core::output::{Append, CommitError, CommitTarget, OutputTopic};
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{Offset, TopicPartitionList};

use super::admin::{AdminError, KafkaAdmin};
use super::config::{KafkaConnection, TopicConfig};
use super::errors::{Decision, ErrorFacts, NewProducerReason, RetryPolicy, TxnOp, decide};
use super::format::string_field;
use super::member::GroupMember;

/// The prefix of the offsets' metadata: `onceflow:epoch=<n>`.
pub const EPOCH_METADATA: &str = "onceflow:epoch=";

/// Kafka as a [`CommitTarget`]. See the [module docs](self).
pub struct KafkaTarget {
    producer: BaseProducer<SinkContext>,
    /// The group's identity for `send_offsets_to_transaction`, and the reader of its
    /// committed offsets (it never subscribes).
    group: BaseConsumer<SinkContext>,
    group_id: String,
    transactional_id: String,
    admin: KafkaAdmin,
    brokers: String,
    transactional: bool,
    create_topics: bool,
    replication_factor: Option<u16>,
    /// Bounds every transactional call (retried within the retry policy).
    timeout: Duration,
    /// Output topics by [`OutputTopic`] number, with the headers their records get.
    topics: Vec<(String, Headed)>,
    /// The dead-letter topic's name.
    dead_letter_topic: String,
    /// An aggregate's events topic, and whether its events go out in CloudEvents
    /// binary mode.
    events_topic: Option<(String, bool)>,
    /// Source name → Kafka topic.
    sources: BTreeMap<String, String>,
    last: Option<CommitMarker>,
    /// False when the broker returned committed offsets without their metadata (the
    /// test broker does), or with `assignment = "group"`: see `epoch_known`.
    epoch_known: bool,
    /// With `[kafka] assignment = "group"`: the membership whose group metadata goes
    /// with the offsets (its generation fences a member that lost its partitions).
    member: Option<Arc<GroupMember>>,
    policy: RetryPolicy,
}

impl fmt::Debug for KafkaTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaTarget")
            .field("brokers", &self.brokers)
            .field("group", &self.group_id)
            .field("transactional", &self.transactional)
            .field("topics", &self.topics)
            .field("last", &self.last)
            .finish_non_exhaustive()
    }
}

/// Keeps the last client error and counts failed deliveries (at-least-once mode checks
/// them after the flush; in a transaction, a failed delivery fails the commit).
#[derive(Default)]
struct SinkContext {
    state: Mutex<SinkState>,
}

#[derive(Default)]
struct SinkState {
    client_error: Option<String>,
    failed_deliveries: u64,
    delivery_error: Option<String>,
}

impl SinkContext {
    fn lock(&self) -> std::sync::MutexGuard<'_, SinkState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ClientContext for SinkContext {
    fn log(&self, _level: RDKafkaLogLevel, _fac: &str, _message: &str) {}

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            let mut s = self.lock();
            s.client_error.get_or_insert_with(|| reason.to_string());
            return;
        }
        self.lock().client_error = Some(reason.to_string());
    }
}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            let mut s = self.lock();
            s.failed_deliveries += 1;
            s.delivery_error.get_or_insert_with(|| e.to_string());
        }
    }
}

impl rdkafka::consumer::ConsumerContext for SinkContext {}

impl KafkaTarget {
    /// Opens the target of pipeline `p` (which has `[kafka]`, given as `settings`):
    /// connects (within the connect timeout; an unreachable broker is
    /// [`CommitError::Unavailable`] naming the addresses), checks that the source topics
    /// exist, creates the producer and (exactly once) calls `init_transactions`, then
    /// reads the group's committed offsets.
    pub fn open(
        conn: &KafkaConnection,
        settings: &KafkaSettings,
        p: &Pipeline,
        member: Option<Arc<GroupMember>>,
    ) -> Result<KafkaTarget, CommitError> {
        let brokers = conn.bootstrap_servers.clone();
        let admin = KafkaAdmin::connect(conn).map_err(admin_error)?;
        let sources: BTreeMap<String, String> = p
            .sources
            .iter()
            .filter(|s| s.kind == SourceKind::Kafka)
            .map(|s| (s.name.clone(), s.topic.clone()))
            .collect();
        let topics: Vec<&str> = sources.values().map(String::as_str).collect();
        let counts = admin.partition_counts(&topics).map_err(admin_error)?;
        let missing: Vec<&str> = counts
            .iter()
            .filter(|(_, n)| n.is_none())
            .map(|(t, _)| t.as_str())
            .collect();
        if !missing.is_empty() {
            return Err(CommitError::Failed(format!(
                "source topic{} {} {} missing at {brokers}: create {} first",
                if missing.len() == 1 { "" } else { "s" },
                missing
                    .iter()
                    .map(|t| format!("'{t}'"))
                    .collect::<Vec<_>>()
                    .join(", "),
                if missing.len() == 1 { "is" } else { "are" },
                if missing.len() == 1 { "it" } else { "them" },
            )));
        }

        let transactional = settings.delivery == Delivery::ExactlyOnce;
        let mut config = conn.client_config();
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("allow.auto.create.topics", "false")
            .set_log_level(RDKafkaLogLevel::Emerg);
        if transactional {
            config.set("transactional.id", settings.transactional_id());
        }
        let producer: BaseProducer<SinkContext> = config
            .create_with_context(SinkContext::default())
            .map_err(|e| {
                CommitError::Failed(format!(
                    "Kafka at {brokers}: cannot create the producer: {e}"
                ))
            })?;
        let mut group_config = conn.client_config();
        group_config
            .set("group.id", &settings.group)
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("allow.auto.create.topics", "false")
            .set_log_level(RDKafkaLogLevel::Emerg);
        let group: BaseConsumer<SinkContext> = group_config
            .create_with_context(SinkContext::default())
            .map_err(|e| {
                CommitError::Failed(format!(
                    "Kafka at {brokers}: cannot create the group client: {e}"
                ))
            })?;
        // Transactional calls may wait for a coordinator: at least 10 s each.
        let timeout = conn.connect_timeout.max(Duration::from_secs(10));
        let mut target = KafkaTarget {
            producer,
            group,
            group_id: settings.group.clone(),
            transactional_id: settings.transactional_id(),
            admin,
            brokers,
            transactional,
            create_topics: settings.create_topics,
            replication_factor: settings.replication_factor,
            timeout,
            topics: Vec::new(),
            dead_letter_topic: p.dead_letter_topic.clone(),
            events_topic: p
                .aggregate
                .as_ref()
                .map(|a| (a.events_topic.clone(), a.cloudevents_binary)),
            sources,
            last: None,
            // Each member numbers its own epochs: the group's offsets cannot say which
            // snapshot of this instance is committed (its offsets can).
            epoch_known: member.is_none(),
            member,
            policy: RetryPolicy::default(),
        };
        if transactional {
            target.call(TxnOp::InitTransactions, |p, t| p.init_transactions(t))?;
        }
        let (last, metadata_kept) = target.read_committed_offsets(&counts)?;
        target.last = last;
        target.epoch_known &= metadata_kept;
        Ok(target)
    }

    /// The group's committed offsets of every source partition, as the last commit;
    /// and whether the broker kept their metadata (the epoch).
    fn read_committed_offsets(
        &self,
        counts: &BTreeMap<String, Option<u32>>,
    ) -> Result<(Option<CommitMarker>, bool), CommitError> {
        let mut tpl = TopicPartitionList::new();
        for topic in self.sources.values() {
            for p in 0..counts.get(topic).copied().flatten().unwrap_or(0) {
                tpl.add_partition(topic, p as i32);
            }
        }
        if tpl.count() == 0 {
            return Ok((None, true));
        }
        let started = Instant::now();
        let committed = loop {
            match self.group.committed_offsets(tpl.clone(), self.timeout) {
                Ok(c) => break c,
                Err(e) if started.elapsed() < self.timeout * 3 && is_retriable(&e) => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => {
                    return Err(CommitError::Unavailable(format!(
                        "Kafka at {}: cannot read the committed offsets of consumer group '{}': {e}",
                        self.brokers, self.group_id
                    )));
                }
            }
        };
        let mut epoch: Option<u64> = None;
        let mut metadata_kept = true;
        let mut inputs = Vec::new();
        for el in committed.elements() {
            let Offset::Offset(off) = el.offset() else {
                continue;
            };
            // Empty metadata: a broker that does not keep it (the offsets are still
            // onceflow's: see `epoch_known`).
            let e = if el.metadata().is_empty() {
                Some(0)
            } else {
                parse_epoch(el.metadata())
            };
            let Some(e) = e else {
                return Err(CommitError::Failed(format!(
                    "consumer group '{}' at {} has an offset for topic '{}' partition {} that onceflow did not commit \
                     (metadata \"{}\", not \"{EPOCH_METADATA}<epoch>\"): the group belongs to another application; \
                     set [kafka] group to a group of this pipeline's own",
                    self.group_id,
                    self.brokers,
                    el.topic(),
                    el.partition(),
                    el.metadata()
                )));
            };
            epoch = Some(epoch.map_or(e, |x: u64| x.max(e)));
            metadata_kept &= e != 0;
            for (name, topic) in &self.sources {
                if topic == el.topic() {
                    inputs.push((name.clone(), el.partition() as u32, off.max(0) as u64));
                }
            }
        }
        Ok((
            epoch.map(|epoch| CommitMarker { epoch, inputs }),
            metadata_kept,
        ))
    }

    /// Runs one producer operation under the error state machine: retried while it
    /// says so, else mapped to the [`CommitError`] it decides (aborting first when it
    /// says abort).
    fn call(
        &self,
        op: TxnOp,
        mut f: impl FnMut(&BaseProducer<SinkContext>, Duration) -> Result<(), KafkaError>,
    ) -> Result<(), CommitError> {
        let mut failures = 0;
        loop {
            let Err(e) = f(&self.producer, self.timeout) else {
                return Ok(());
            };
            failures += 1;
            let facts = ErrorFacts::of(&e).with_fatal_error(self.producer.client().fatal_error());
            let decision = decide(op, &facts, failures, &self.policy);
            if let Decision::RetryAfter { backoff, .. } = decision {
                self.producer.poll(backoff);
                continue;
            }
            return Err(self.fail(op, &e, decision));
        }
    }

    /// The [`CommitError`] for a decision other than a retry; aborts when it says so.
    fn fail(&self, op: TxnOp, e: &KafkaError, decision: Decision) -> CommitError {
        if let Decision::NewProducerAndRecover(NewProducerReason::Fenced) = decision {
            return CommitError::Fenced(format!(
                "Kafka at {}: another instance with transactional.id '{}' started and fenced this one ({op:?}: {e}); \
                 nothing of this instance's open epoch was committed, and it stops here. \
                 Two instances of one pipeline need different [kafka] instance ids",
                self.brokers, self.transactional_id
            ));
        }
        let what = format!(
            "Kafka at {} ({op:?}, transactional.id '{}'): {e}; {decision}",
            self.brokers, self.transactional_id
        );
        match decision {
            Decision::RetryAfter { .. } => unreachable!("retries are handled by the caller"),
            Decision::AbortAndRecover(_) => {
                if self.transactional
                    && let Err(abort) = self.producer.abort_transaction(self.timeout)
                {
                    // The open transaction ends when the next producer's
                    // init_transactions fences this one.
                    return CommitError::Aborted(format!("{what}; the abort failed too: {abort}"));
                }
                CommitError::Aborted(what)
            }
            Decision::NewProducerAndRecover(NewProducerReason::UnknownCommitOutcome) => {
                CommitError::Unknown(what)
            }
            Decision::NewProducerAndRecover(NewProducerReason::InitFailed) => {
                CommitError::Unavailable(what)
            }
            // Before the commit call, nothing of the epoch is committed: the next
            // producer's init_transactions aborts what is open.
            Decision::NewProducerAndRecover(_) if op != TxnOp::Commit => CommitError::Aborted(what),
            Decision::NewProducerAndRecover(_) => CommitError::Unknown(what),
            Decision::Fail(_) => CommitError::Failed(what),
        }
    }

    /// The epoch's input offsets, each with the epoch as its metadata.
    fn offsets(&self, marker: &CommitMarker) -> Result<TopicPartitionList, CommitError> {
        let mut tpl = TopicPartitionList::new();
        let metadata = format!("{EPOCH_METADATA}{}", marker.epoch);
        for (name, partition, offset) in &marker.inputs {
            let topic = self.sources.get(name).ok_or_else(|| {
                CommitError::Failed(format!(
                    "source '{name}' is not a Kafka source of this pipeline"
                ))
            })?;
            let mut el = tpl.add_partition(topic, *partition as i32);
            el.set_offset(Offset::Offset(*offset as i64))
                .map_err(|e| CommitError::Failed(format!("offset {offset} of '{topic}': {e}")))?;
            el.set_metadata(metadata.as_str());
        }
        Ok(tpl)
    }
}

impl CommitTarget for KafkaTarget {
    fn partitions_of(&self, name: &str) -> Option<u32> {
        self.admin
            .partition_counts(&[name])
            .ok()
            .and_then(|c| c.get(name).copied().flatten())
    }

    fn ensure_topic(&mut self, name: &str, partitions: u32) -> Result<OutputTopic, CommitError> {
        if let Some(i) = self.topics.iter().position(|(t, _)| t == name) {
            return Ok(i as OutputTopic);
        }
        let topic = TopicConfig {
            name: name.to_string(),
            partitions,
            replication_factor: self.replication_factor,
            create: self.create_topics,
            compacted: false,
            config: BTreeMap::new(),
        };
        self.admin.ensure_topics(&[topic]).map_err(|e| match e {
            AdminError::Topics { .. } if !self.create_topics => CommitError::Failed(format!(
                "{e}; create output topic '{name}' with {partitions} partitions, or set [kafka] create_topics = true"
            )),
            other => admin_error(other),
        })?;
        let headed = if name == self.dead_letter_topic {
            Headed::DeadLetter
        } else if let Some((_, binary)) = self.events_topic.as_ref().filter(|(t, _)| t == name) {
            if *binary {
                Headed::BinaryEvent
            } else {
                Headed::Event
            }
        } else {
            Headed::No
        };
        self.topics.push((name.to_string(), headed));
        Ok((self.topics.len() - 1) as OutputTopic)
    }

    fn last_commit(&self) -> Option<CommitMarker> {
        self.last.clone()
    }

    fn epoch_known(&self) -> bool {
        self.epoch_known
    }

    fn committed_inputs(&self, source: &str) -> Vec<(u32, u64)> {
        self.last
            .iter()
            .flat_map(|m| &m.inputs)
            .filter(|(n, _, _)| n == source)
            .map(|(_, p, o)| (*p, *o))
            .collect()
    }

    fn commit(
        &mut self,
        fill: &mut dyn FnMut(&mut dyn Append),
        marker: &CommitMarker,
    ) -> Result<(), CommitError> {
        let offsets = self.offsets(marker)?;
        if self.transactional {
            self.call(TxnOp::Begin, |p, _| p.begin_transaction())?;
        }
        let mut out = Producing {
            target: self,
            failed: None,
            binary: (Vec::new(), Vec::new()),
        };
        fill(&mut out);
        if let Some((op, e)) = out.failed.take() {
            let facts = ErrorFacts::of(&e).with_fatal_error(self.producer.client().fatal_error());
            // A record that cannot be enqueued: never retried here (the others are
            // already in the transaction); abort and recover.
            let decision = match decide(op, &facts, self.policy.max_attempts, &self.policy) {
                Decision::RetryAfter { .. } => {
                    Decision::AbortAndRecover(super::errors::AbortReason::RetriesExhausted)
                }
                d => d,
            };
            return Err(self.fail(op, &e, decision));
        }
        if self.transactional {
            // The offsets join the transaction while its records are on their way:
            // the records' round trips (registering their partitions with the
            // transaction, then the produce) and the offsets' (AddOffsetsToTxn, then
            // TxnOffsetCommit) overlap instead of adding up. Then every record is
            // waited for (the commit would flush them anyway, in 100 ms polls: see
            // `deliver_all`); a delivery error fails the commit, abortable, before
            // anything of the transaction is committed.
            let cgm = match &self.member {
                Some(m) => m.group_metadata(),
                None => self.group.group_metadata(),
            };
            let cgm = cgm.ok_or_else(|| {
                CommitError::Failed(format!(
                    "Kafka at {}: no consumer group metadata for group '{}'",
                    self.brokers, self.group_id
                ))
            })?;
            self.call(TxnOp::SendOffsets, |p, t| {
                p.send_offsets_to_transaction(&offsets, &cgm, t)
            })?;
            self.call(TxnOp::Poll, deliver_all)?;
            onceflow_core::fault::point(onceflow_core::fault::COMMIT_BEFORE);
            self.call(TxnOp::Commit, |p, t| p.commit_transaction(t))?;
            // Serve the delivery reports the commit's flush queued.
            self.producer.poll(Duration::ZERO);
        } else {
            self.call(TxnOp::Poll, deliver_all)?;
            onceflow_core::fault::point(onceflow_core::fault::COMMIT_BEFORE);
            let failed = {
                let mut s = self.producer.context().lock();
                let n = std::mem::take(&mut s.failed_deliveries);
                (n > 0).then(|| (n, s.delivery_error.take().unwrap_or_default()))
            };
            if let Some((n, why)) = failed {
                return Err(CommitError::Aborted(format!(
                    "Kafka at {}: {n} record(s) of epoch {} were not delivered ({why}); the offsets were not committed",
                    self.brokers, marker.epoch
                )));
            }
            self.group
                .commit(&offsets, CommitMode::Sync)
                .map_err(|e| {
                    CommitError::Unknown(format!(
                        "Kafka at {}: committing the offsets of epoch {} to group '{}': {e} (its outputs are written; they are written again if the offsets were not committed)",
                        self.brokers, marker.epoch, self.group_id
                    ))
                })?;
        }
        self.last = Some(marker.clone());
        Ok(())
    }
}

/// Which headers an output topic's records get, decided once per topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Headed {
    No,
    /// Reason, stage and original coordinates (`dead_letter_headers`).
    DeadLetter,
    /// The event's `correlation_id`.
    Event,
    /// A structured CloudEvents envelope sent in binary mode
    /// ([`structured_to_binary`](super::format::structured_to_binary)), plus
    /// `correlation_id`.
    BinaryEvent,
}

/// Produces an epoch's records; keeps the first failure (and produces nothing after it).
struct Producing<'a> {
    target: &'a KafkaTarget,
    failed: Option<(TxnOp, KafkaError)>,
    /// Binary mode: the headers and value of the record being produced.
    binary: (Vec<(String, Vec<u8>)>, Vec<u8>),
}

impl Append for Producing<'_> {
    fn append(
        &mut self,
        topic: OutputTopic,
        partition: u32,
        key: &[u8],
        value: &[u8],
        headers: &[u8],
    ) {
        // hot path
        if self.failed.is_some() {
            return;
        }
        let t = self.target;
        let (name, headed) = &t.topics[topic as usize];
        // Binary mode: the envelope's attributes become headers, its data the value. Our
        // aggregate writes valid envelopes; should one not convert, it goes out as it is
        // (structured mode, which is valid CloudEvents on Kafka too).
        let binary = *headed == Headed::BinaryEvent
            && super::format::structured_to_binary(value, &mut self.binary.0, &mut self.binary.1)
                .is_ok();
        let payload: &[u8] = if binary { &self.binary.1 } else { value };
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(name)
            .partition(partition as i32)
            .payload(payload);
        if !key.is_empty() {
            record = record.key(key);
        }
        // onceflow's own headers for the record, by the topic's kind.
        let own = match headed {
            Headed::No => None,
            Headed::DeadLetter => Some(dead_letter_headers(value)),
            Headed::BinaryEvent if binary => {
                let mut h = OwnedHeaders::new_with_capacity(self.binary.0.len() + 1);
                for (k, v) in &self.binary.0 {
                    h = h.insert(Header {
                        key: k,
                        value: Some(v),
                    });
                }
                if let Some((_, id)) = self.binary.0.iter().find(|(k, _)| k == "ce_correlationid") {
                    h = h.insert(Header {
                        key: "correlation_id",
                        value: Some(id),
                    });
                }
                Some(h)
            }
            Headed::BinaryEvent => Some(OwnedHeaders::new().insert(Header {
                key: "content-type",
                value: Some("application/cloudevents+json"),
            })),
            Headed::Event => string_field(value, "correlation_id")
                .or_else(|| string_field(value, "correlationid"))
                .map(|id| {
                    OwnedHeaders::new().insert(Header {
                        key: "correlation_id",
                        value: Some(id),
                    })
                }),
        };
        let all = if headers.is_empty() {
            own
        } else {
            Some(with_input_headers(
                headers,
                own,
                *headed == Headed::DeadLetter,
            ))
        };
        if let Some(h) = all {
            record = record.headers(h);
        }
        loop {
            match t.producer.send(record) {
                Ok(()) => return,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    // The local queue is full: serve delivery reports while it drains.
                    record = r;
                    t.producer.poll(Duration::from_millis(1));
                }
                Err((e, _)) => {
                    self.failed = Some((TxnOp::Produce, e));
                    return;
                }
            }
        }
    }
}

/// An output record's headers: onceflow's own (`own`), then those of the input record
/// it was derived from (`input`, encoded as in [`onceflow_core::headers`]) except the
/// ones `own` names, which it replaces. A dead letter's `onceflow.*` headers replace
/// every input header of that prefix (a dead letter replayed and dead-lettered again
/// says only why it failed this time). One header list: the input's are appended to
/// `own`'s.
pub fn with_input_headers(
    input: &[u8],
    own: Option<OwnedHeaders>,
    dead_letter: bool,
) -> OwnedHeaders {
    let mut h = own.unwrap_or_else(|| OwnedHeaders::new_with_capacity(4));
    let own_count = h.count();
    for (k, v) in onceflow_core::headers::iter(input) {
        // Keys came from librdkafka as strings.
        let Ok(k) = std::str::from_utf8(k) else {
            continue;
        };
        if (dead_letter && k.starts_with("onceflow.")) || (0..own_count).any(|i| h.get(i).key == k)
        {
            continue;
        }
        h = h.insert(Header { key: k, value: v });
    }
    h
}

/// Headers of a dead letter, from its JSON value: `onceflow.reason`, `onceflow.stage`,
/// `onceflow.source`, `onceflow.partition`, `onceflow.offset` (those it has), so that
/// tools can route and count dead letters without parsing them.
pub fn dead_letter_headers(value: &[u8]) -> OwnedHeaders {
    #[derive(serde::Deserialize)]
    struct Dead {
        reason: Option<String>,
        stage: Option<String>,
        source: Option<String>,
        partition: Option<u64>,
        offset: Option<u64>,
    }
    let mut h = OwnedHeaders::new();
    let Ok(d) = serde_json::from_slice::<Dead>(value) else {
        return h;
    };
    for (k, v) in [
        ("onceflow.reason", d.reason),
        ("onceflow.stage", d.stage),
        ("onceflow.source", d.source),
        ("onceflow.partition", d.partition.map(|n| n.to_string())),
        ("onceflow.offset", d.offset.map(|n| n.to_string())),
    ] {
        if let Some(v) = v {
            h = h.insert(Header {
                key: k,
                value: Some(&v),
            });
        }
    }
    h
}

/// Waits (within `timeout`) until every produced record is delivered, serving delivery
/// reports. Not `Producer::flush`: rdkafka's flush polls in 100 ms slices, so a flush
/// that finds one record in flight takes at least 100 ms, as long as a commit interval
/// (measured: p50 latency 310 ms → 110 ms at 1,000 events/s, `docs/benchmarks.md`).
/// Nor `poll(1 ms)` in a loop: rdkafka's `poll` runs to its deadline and hands librdkafka
/// whole milliseconds, so under 1 ms left it polls without waiting: a 1 ms poll is a
/// 1 ms busy loop, and the committer spun for as long as the broker took to answer
/// (20% of a core at 1,000 events/s), CPU the broker itself lacked on a small machine.
/// Here: the reports there are are served; when none came, a short sleep.
fn deliver_all(p: &BaseProducer<SinkContext>, timeout: Duration) -> Result<(), KafkaError> {
    let deadline = Instant::now() + timeout;
    let mut left = p.in_flight_count();
    while left > 0 {
        // One event (a batch's delivery reports) per call.
        p.poll(Duration::ZERO);
        let now_left = p.in_flight_count();
        if now_left == left {
            if Instant::now() >= deadline {
                return Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut));
            }
            std::thread::sleep(DELIVERY_WAIT_STEP);
        }
        left = now_left;
    }
    Ok(())
}

/// How long [`deliver_all`] sleeps when no delivery report came.
const DELIVERY_WAIT_STEP: Duration = Duration::from_micros(200);

/// `onceflow:epoch=<n>` → `n`.
pub fn parse_epoch(metadata: &str) -> Option<u64> {
    metadata.strip_prefix(EPOCH_METADATA)?.parse().ok()
}

fn is_retriable(e: &KafkaError) -> bool {
    e.rdkafka_error_code()
        .is_some_and(super::errors::code_is_retriable)
}

fn admin_error(e: AdminError) -> CommitError {
    match e {
        AdminError::Unreachable { .. } => CommitError::Unavailable(e.to_string()),
        other => CommitError::Failed(other.to_string()),
    }
}
