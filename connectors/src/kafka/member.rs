//! Consumer-group membership for `[kafka] assignment = "group"`: [`GroupMember`] joins
//! the group with the pipeline's source topics (cooperative-sticky), and says which
//! partitions this instance owns. It reads no records (its partitions are paused as
//! they are assigned); the sources read the owned partitions with consumers of their
//! own, and the commit target sends the member's group metadata with the offsets, so
//! that a member that lost its partitions cannot commit them (on Kafka, KIP-447).
//!
//! A rebalance ends the engine's current attempt and starts a new one with the new
//! partitions ([`InputError::Reassigned`](onceflow_core::input::InputError::Reassigned)):
//! - **Revoke**: the callback (on the member's thread) bumps the assignment generation
//!   and waits until the engine says it has stopped committing ([`GroupMember::settled`],
//!   called when the next attempt opens its commit target), at most
//!   [`REVOKE_WAIT`]: so the partitions' new owner starts from offsets this instance
//!   no longer moves. The sources notice the new generation at their next read and
//!   stop the run at its last complete epoch (the epoch in progress is not committed).
//! - **Assign**: the new partitions are paused and the generation bumped; the engine
//!   starts again with them.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use onceflow_core::input::InputError;
use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{
    BaseConsumer, Consumer, ConsumerContext, ConsumerGroupMetadata, Rebalance,
};
use rdkafka::message::Message;

use super::config::KafkaConnection;

/// Longest wait of a revocation for the engine to stop committing.
pub const REVOKE_WAIT: Duration = Duration::from_secs(30);

/// This instance's membership of a consumer group. See the [module docs](self).
pub struct GroupMember {
    consumer: Arc<BaseConsumer<MemberContext>>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    group: String,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    /// Bumped on every change of the assignment: sources compare it with the one they
    /// were opened at (an atomic, read on every read).
    generation: AtomicU64,
    /// The member is leaving: revocations do not wait for the engine.
    closing: AtomicBool,
}

#[derive(Default)]
struct State {
    assigned: BTreeSet<(String, i32)>,
    /// The last generation the engine has stopped committing for.
    settled: u64,
    /// Set once the group has given a first assignment (maybe empty).
    joined: bool,
    error: Option<String>,
}

struct MemberContext {
    shared: Arc<Shared>,
}

impl ClientContext for MemberContext {
    fn log(&self, _level: RDKafkaLogLevel, _fac: &str, _message: &str) {}

    fn error(&self, _error: rdkafka::error::KafkaError, reason: &str) {
        self.shared.lock().error = Some(reason.to_string());
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ConsumerContext for MemberContext {
    fn pre_rebalance(&self, _c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let generation = self.shared.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let mut state = self.shared.lock();
        let closing = self.shared.closing.load(Ordering::SeqCst);
        for el in tpl.elements() {
            state
                .assigned
                .remove(&(el.topic().to_string(), el.partition()));
        }
        self.shared.changed.notify_all();
        // Hold the revocation until the engine has stopped committing.
        let deadline = Instant::now() + REVOKE_WAIT;
        while !closing && state.settled < generation {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn post_rebalance(&self, c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Assign(tpl) = rebalance else {
            return;
        };
        // Records are read by the sources: the member fetches none.
        let _ = c.pause(tpl);
        let mut state = self.shared.lock();
        for el in tpl.elements() {
            state
                .assigned
                .insert((el.topic().to_string(), el.partition()));
        }
        state.joined = true;
        if tpl.count() > 0 {
            self.shared.generation.fetch_add(1, Ordering::SeqCst);
        }
        self.shared.changed.notify_all();
    }
}

impl GroupMember {
    /// Joins `group` with `topics` and waits (within `wait`) for the first assignment.
    /// `session.timeout.ms` and the like come from the connection's properties.
    pub fn join(
        conn: &KafkaConnection,
        group: &str,
        topics: &[&str],
        wait: Duration,
    ) -> Result<GroupMember, InputError> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            generation: AtomicU64::new(0),
            closing: AtomicBool::new(false),
        });
        let mut config = conn.client_config();
        config
            .set("group.id", group)
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("allow.auto.create.topics", "false")
            .set_log_level(RDKafkaLogLevel::Emerg);
        let consumer: BaseConsumer<MemberContext> = config
            .create_with_context(MemberContext {
                shared: shared.clone(),
            })
            .map_err(|e| {
                InputError::Other(format!(
                    "Kafka group '{group}': cannot create the member: {e}"
                ))
            })?;
        consumer.subscribe(topics).map_err(|e| {
            InputError::Other(format!(
                "Kafka group '{group}': cannot subscribe to {topics:?}: {e}"
            ))
        })?;
        let consumer = Arc::new(consumer);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (consumer, stop) = (consumer.clone(), stop.clone());
            std::thread::Builder::new()
                .name("onceflow-kafka-member".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        // Serves rebalances and heartbeats; a record fetched before
                        // its partition was paused is dropped (the sources read it).
                        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                            let _ = m.offset();
                        }
                    }
                })
                .map_err(|e| InputError::Other(format!("cannot start the group thread: {e}")))?
        };
        let member = GroupMember {
            consumer,
            shared,
            stop,
            thread: Some(thread),
            group: group.to_string(),
        };
        let deadline = Instant::now() + wait;
        let mut state = member.shared.lock();
        while !state.joined {
            let now = Instant::now();
            if now >= deadline {
                let why = state
                    .error
                    .as_deref()
                    .map_or(String::new(), |e| format!(" (last client error: {e})"));
                return Err(InputError::Unavailable(format!(
                    "Kafka group '{group}' at {}: no partitions assigned within {wait:?}{why}",
                    conn.bootstrap_servers
                )));
            }
            state = member
                .shared
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        drop(state);
        Ok(member)
    }

    /// The partitions of `topic` this instance owns now.
    pub fn assigned(&self, topic: &str) -> Vec<u32> {
        self.shared
            .lock()
            .assigned
            .iter()
            .filter(|(t, _)| t == topic)
            .map(|(_, p)| *p as u32)
            .collect()
    }

    /// The assignment's generation: it changes with every rebalance of this member.
    pub fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::SeqCst)
    }

    /// Says that the engine has stopped committing for every generation up to the
    /// current one (a waiting revocation may go on).
    pub fn settled(&self) {
        let mut state = self.shared.lock();
        state.settled = self.generation();
        self.shared.changed.notify_all();
    }

    /// The member's group metadata, for `send_offsets_to_transaction`.
    pub fn group_metadata(&self) -> Option<ConsumerGroupMetadata> {
        self.consumer.group_metadata()
    }

    /// The group.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// An error for a source opened at `generation` once the assignment moved on.
    pub fn check(&self, generation: u64) -> Result<(), InputError> {
        if self.generation() == generation {
            return Ok(());
        }
        let owned = self.shared.lock().assigned.clone();
        Err(InputError::Reassigned(format!(
            "Kafka group '{}' reassigned the partitions of this instance (now {})",
            self.group,
            if owned.is_empty() {
                "none".to_string()
            } else {
                owned
                    .iter()
                    .map(|(t, p)| format!("{t}:{p}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            }
        )))
    }
}

impl Drop for GroupMember {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        self.settled();
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // Dropping the consumer leaves the group (its partitions go to the others).
    }
}

impl std::fmt::Debug for GroupMember {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupMember")
            .field("group", &self.group)
            .field("generation", &self.generation())
            .field("assigned", &self.shared.lock().assigned)
            .finish_non_exhaustive()
    }
}
