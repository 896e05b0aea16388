//! Start-up checks against the cluster: reach a broker within a bounded time (or say
//! which address was tried and what went wrong), check that the topics exist with their
//! partition counts (and changelogs are compacted), and create the missing ones that are
//! marked `create = true`.
//!
//! Blocking: this runs once at start, before any record moves.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, DeliveryResult, Producer, ProducerContext};

use super::config::{KafkaConnection, TopicConfig};

/// Errors of the start-up checks.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No broker answered within the connect timeout.
    #[error(
        "broker unreachable at {brokers} (tried for {} s): {detail}",
        fmt_secs(*tried_for)
    )]
    Unreachable {
        /// The bootstrap addresses tried.
        brokers: String,
        /// How long they were tried.
        tried_for: Duration,
        /// librdkafka's last word on why (e.g. `Connection refused`).
        detail: String,
    },
    /// Topics are missing (and not to be created) or have other partition counts.
    #[error("{}", TopicProblems { brokers, problems })]
    Topics {
        /// The cluster asked.
        brokers: String,
        /// Every problem found.
        problems: Vec<TopicProblem>,
    },
    /// The broker refused to create a topic.
    #[error("cannot create topic '{topic}' at {brokers}: {detail}")]
    CreateFailed {
        /// The topic.
        topic: String,
        /// The cluster asked.
        brokers: String,
        /// The broker's reason.
        detail: String,
    },
    /// The client could not be created or a request failed otherwise.
    #[error("Kafka client at {brokers}: {source}")]
    Client {
        /// The cluster asked.
        brokers: String,
        /// Cause.
        source: KafkaError,
    },
}

/// One problem with one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicProblem {
    /// The topic does not exist and `create` is off.
    Missing {
        /// The topic.
        topic: String,
    },
    /// A changelog topic exists without `cleanup.policy=compact`.
    NotCompacted {
        /// The topic.
        topic: String,
        /// Its cleanup policy (`None` when the broker did not say).
        policy: Option<String>,
    },
    /// The topic exists with another partition count than configured.
    Partitions {
        /// The topic.
        topic: String,
        /// Configured.
        expected: u32,
        /// In the cluster.
        actual: u32,
    },
}

struct TopicProblems<'a> {
    brokers: &'a str,
    problems: &'a [TopicProblem],
}

impl fmt::Display for TopicProblems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "topics at {}:", self.brokers)?;
        for p in self.problems {
            match p {
                TopicProblem::Missing { topic } => write!(
                    f,
                    " '{topic}' does not exist (create it, or set create = true for it);"
                )?,
                TopicProblem::NotCompacted { topic, policy } => write!(
                    f,
                    " '{topic}' is a changelog but its cleanup.policy is {} (it must include \"compact\": \
                     kafka-configs --alter --add-config cleanup.policy=compact);",
                    policy
                        .as_deref()
                        .map_or("unknown".to_string(), |p| format!("\"{p}\""))
                )?,
                TopicProblem::Partitions {
                    topic,
                    expected,
                    actual,
                } => write!(
                    f,
                    " '{topic}' has {actual} partitions, the pipeline expects {expected} \
                     (keyed state is partitioned by it: fix the configuration or the topic);"
                )?,
            }
        }
        Ok(())
    }
}

/// What [`KafkaAdmin::ensure_topics`] found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnsureReport {
    /// Topics that existed with the right partition count.
    pub existing: Vec<String>,
    /// Topics created now (or by someone else while this ran).
    pub created: Vec<String>,
}

/// Keeps librdkafka's last client error (e.g. "Connect to ipv4#127.0.0.1:9 failed:
/// Connection refused"), so that an unreachable broker is reported with its reason.
#[derive(Default)]
struct ProbeContext {
    last_error: Mutex<Option<String>>,
}

impl ClientContext for ProbeContext {
    fn log(&self, _level: RDKafkaLogLevel, _fac: &str, _message: &str) {}

    fn error(&self, error: KafkaError, reason: &str) {
        // "1/1 brokers are down" says less than the connection error before it.
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            let mut last = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
            last.get_or_insert_with(|| reason.to_string());
            return;
        }
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.to_string());
    }
}

impl ProducerContext for ProbeContext {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &DeliveryResult<'_>, _: ()) {}
}

/// A connection to the cluster for start-up checks.
pub struct KafkaAdmin {
    /// Metadata requests; its event queue carries the connection errors.
    probe: BaseProducer<ProbeContext>,
    admin: AdminClient<DefaultClientContext>,
    brokers: String,
    timeout: Duration,
}

impl fmt::Debug for KafkaAdmin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaAdmin")
            .field("brokers", &self.brokers)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl KafkaAdmin {
    /// Connects: returns once a broker has answered a metadata request, or after
    /// `conn.connect_timeout` with [`AdminError::Unreachable`] naming the addresses.
    pub fn connect(conn: &KafkaConnection) -> Result<KafkaAdmin, AdminError> {
        let brokers = conn.bootstrap_servers.clone();
        let client_err = |source| AdminError::Client {
            brokers: brokers.clone(),
            source,
        };
        let mut config = conn.client_config();
        // A metadata request must never create a topic as a side effect.
        config.set("allow.auto.create.topics", "false");
        let probe: BaseProducer<ProbeContext> = config
            .create_with_context(ProbeContext::default())
            .map_err(client_err)?;
        let admin: AdminClient<DefaultClientContext> =
            conn.client_config().create().map_err(client_err)?;
        let admin = KafkaAdmin {
            probe,
            admin,
            brokers: brokers.clone(),
            timeout: conn.connect_timeout,
        };
        let started = Instant::now();
        if let Err(e) = admin
            .probe
            .client()
            .fetch_metadata(None, conn.connect_timeout)
        {
            return Err(admin.unreachable(started.elapsed(), e));
        }
        Ok(admin)
    }

    /// The bootstrap addresses.
    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    /// Partition counts of `topics`; `None` for a topic that does not exist.
    pub fn partition_counts(
        &self,
        topics: &[&str],
    ) -> Result<BTreeMap<String, Option<u32>>, AdminError> {
        let started = Instant::now();
        // All topics: asking for one by name may auto-create it on some brokers.
        let md = self
            .probe
            .client()
            .fetch_metadata(None, self.timeout)
            .map_err(|e| self.unreachable(started.elapsed(), e))?;
        let mut out: BTreeMap<String, Option<u32>> =
            topics.iter().map(|t| (t.to_string(), None)).collect();
        for t in md.topics() {
            if let Some(slot) = out.get_mut(t.name())
                && t.error().is_none()
            {
                *slot = Some(t.partitions().len() as u32);
            }
        }
        Ok(out)
    }

    /// `cleanup.policy` of each of `topics` (`None` when the broker does not say).
    pub fn cleanup_policies(
        &self,
        topics: &[&str],
    ) -> Result<BTreeMap<String, Option<String>>, AdminError> {
        let specs: Vec<ResourceSpecifier<'_>> =
            topics.iter().map(|t| ResourceSpecifier::Topic(t)).collect();
        let results =
            futures_executor::block_on(self.admin.describe_configs(&specs, &self.options()))
                .map_err(|source| self.client_error(source))?;
        let mut out = BTreeMap::new();
        for (topic, r) in topics.iter().zip(results) {
            let policy = r
                .ok()
                .and_then(|c| c.get("cleanup.policy").and_then(|e| e.value.clone()));
            out.insert(topic.to_string(), policy);
        }
        Ok(out)
    }

    /// Checks every topic; creates the missing ones marked `create = true` (with their
    /// partitions, replication factor and configs, `cleanup.policy=compact` for
    /// changelogs) and waits until the cluster shows them. Reports every missing topic,
    /// partition mismatch and uncompacted changelog at once.
    pub fn ensure_topics(&self, topics: &[TopicConfig]) -> Result<EnsureReport, AdminError> {
        let names: Vec<&str> = topics.iter().map(|t| t.name.as_str()).collect();
        let counts = self.partition_counts(&names)?;
        let mut problems = Vec::new();
        let mut report = EnsureReport::default();
        let mut to_create = Vec::new();
        for t in topics {
            match counts.get(&t.name).copied().flatten() {
                Some(actual) if actual == t.partitions => report.existing.push(t.name.clone()),
                Some(actual) => problems.push(TopicProblem::Partitions {
                    topic: t.name.clone(),
                    expected: t.partitions,
                    actual,
                }),
                None if t.create => to_create.push(t),
                None => problems.push(TopicProblem::Missing {
                    topic: t.name.clone(),
                }),
            }
        }
        let changelogs: Vec<&str> = topics
            .iter()
            .filter(|t| t.compacted && report.existing.contains(&t.name))
            .map(|t| t.name.as_str())
            .collect();
        if !changelogs.is_empty() {
            for (topic, policy) in self.cleanup_policies(&changelogs)? {
                if !policy
                    .as_deref()
                    .is_some_and(|p| p.split(',').any(|x| x.trim() == "compact"))
                {
                    problems.push(TopicProblem::NotCompacted { topic, policy });
                }
            }
        }
        if !problems.is_empty() {
            return Err(AdminError::Topics {
                brokers: self.brokers.clone(),
                problems,
            });
        }
        if to_create.is_empty() {
            return Ok(report);
        }
        self.create(&to_create)?;
        self.wait_visible(&to_create)?;
        report
            .created
            .extend(to_create.iter().map(|t| t.name.clone()));
        Ok(report)
    }

    fn create(&self, topics: &[&TopicConfig]) -> Result<(), AdminError> {
        let configs: Vec<BTreeMap<String, String>> =
            topics.iter().map(|t| t.creation_configs()).collect();
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .zip(&configs)
            .map(|(t, cfg)| {
                let replication = t.replication_factor.map_or(-1, i32::from);
                let mut n = NewTopic::new(
                    &t.name,
                    t.partitions as i32,
                    TopicReplication::Fixed(replication),
                );
                for (k, v) in cfg {
                    n = n.set(k, v);
                }
                n
            })
            .collect();
        // The admin client's own thread completes the future; the request timeout bounds it.
        let results = futures_executor::block_on(self.admin.create_topics(&new, &self.options()))
            .map_err(|source| self.client_error(source))?;
        for r in results {
            match r {
                Ok(_) => {}
                // Another instance created it first: fine, its partitions are checked below.
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(AdminError::CreateFailed {
                        topic,
                        brokers: self.brokers.clone(),
                        detail: format!("{code}"),
                    });
                }
            }
        }
        Ok(())
    }

    /// Creation completes on the controller first; waits until metadata shows every
    /// topic with its partitions, within the timeout.
    fn wait_visible(&self, topics: &[&TopicConfig]) -> Result<(), AdminError> {
        let names: Vec<&str> = topics.iter().map(|t| t.name.as_str()).collect();
        let deadline = Instant::now() + self.timeout;
        loop {
            let counts = self.partition_counts(&names)?;
            let problems: Vec<TopicProblem> = topics
                .iter()
                .filter_map(|t| match counts.get(&t.name).copied().flatten() {
                    Some(n) if n == t.partitions => None,
                    Some(actual) => Some(TopicProblem::Partitions {
                        topic: t.name.clone(),
                        expected: t.partitions,
                        actual,
                    }),
                    None => Some(TopicProblem::Missing {
                        topic: t.name.clone(),
                    }),
                })
                .collect();
            let only_missing = problems
                .iter()
                .all(|p| matches!(p, TopicProblem::Missing { .. }));
            if problems.is_empty() {
                return Ok(());
            }
            if !only_missing || Instant::now() >= deadline {
                return Err(AdminError::Topics {
                    brokers: self.brokers.clone(),
                    problems,
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn options(&self) -> AdminOptions {
        AdminOptions::new()
            .request_timeout(Some(self.timeout))
            .operation_timeout(Some(self.timeout))
    }

    fn client_error(&self, source: KafkaError) -> AdminError {
        AdminError::Client {
            brokers: self.brokers.clone(),
            source,
        }
    }

    fn unreachable(&self, tried_for: Duration, e: KafkaError) -> AdminError {
        // Serve the client's queued events so the context sees the connection errors
        // (poll serves events until its timeout; nothing else is waited for).
        self.probe.poll(Duration::from_millis(50));
        let last = self
            .probe
            .context()
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        AdminError::Unreachable {
            brokers: self.brokers.clone(),
            tried_for,
            detail: match last {
                Some(reason) => format!("{reason} ({e})"),
                None => e.to_string(),
            },
        }
    }
}

fn fmt_secs(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64())
}
