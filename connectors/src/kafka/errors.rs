//! What the transactional sink does about a Kafka error: a pure decision from the
//! operation that failed, the error's facts and how often the operation has failed.
//!
//! The only I/O-side function is [`ErrorFacts::of`], which reads a [`KafkaError`] (and
//! librdkafka's flags on transactional errors) into plain data; [`decide`] does the rest
//! and is tested exhaustively without a broker (`tests.rs`). It follows librdkafka's
//! transactional API contract (`rdkafka.h`, "Transactional producer API"):
//!
//! | error                                    | decision                                   |
//! |------------------------------------------|--------------------------------------------|
//! | configuration, authorization, unsupported, missing topic, record too large | [`Decision::Fail`]: a new producer would fail the same way |
//! | fenced (`PRODUCER_FENCED`, `INVALID_PRODUCER_EPOCH`, `_FENCED`) | [`Decision::NewProducerAndRecover`] |
//! | fatal (the producer is unusable)         | [`Decision::NewProducerAndRecover`]        |
//! | abortable (`txn_requires_abort`), a failed delivery | [`Decision::AbortAndRecover`]   |
//! | retriable, under the retry budget        | [`Decision::RetryAfter`] with capped exponential backoff |
//! | retriable, budget spent                  | commit or abort: outcome unknown, [`Decision::NewProducerAndRecover`]; others: [`Decision::AbortAndRecover`] |
//! | anything else                            | commit: outcome unknown, [`Decision::NewProducerAndRecover`]; others as fatal (librdkafka's advice) |
//!
//! A commit that timed out is *retried* first: librdkafka documents `commit_transaction`
//! as resumable after a retriable timeout (calling it again resumes the commit that goes
//! on in the background), so a retry learns the outcome. Only when the budget is spent
//! is the outcome unknown, and unknown is never reported as committed: a new producer
//! (whose `init_transactions` completes or aborts what is left open) and Recovery.
//!
//! Fencing means another producer with the same `transactional.id` has started: the
//! Recovery that follows must check that this instance still owns its work before it
//! creates a producer, or two instances fence each other in turn.

use std::fmt;
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// A transactional producer operation whose error is being decided about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TxnOp {
    /// `init_transactions`: fences earlier producers with the same `transactional.id`.
    InitTransactions,
    /// `begin_transaction`.
    Begin,
    /// Enqueueing a record (`BaseProducer::send`).
    Produce,
    /// Serving delivery reports (`poll` / `flush`): a record's delivery failed.
    Poll,
    /// `send_offsets_to_transaction`: the input offsets join the transaction.
    SendOffsets,
    /// `commit_transaction`.
    Commit,
    /// `abort_transaction`.
    Abort,
}

impl TxnOp {
    /// Every operation, for exhaustive tests.
    pub const ALL: [TxnOp; 7] = [
        TxnOp::InitTransactions,
        TxnOp::Begin,
        TxnOp::Produce,
        TxnOp::Poll,
        TxnOp::SendOffsets,
        TxnOp::Commit,
        TxnOp::Abort,
    ];
}

/// Where an error came from, which says which of [`ErrorFacts`]' flags librdkafka set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorOrigin {
    /// A transactional API error object: its fatal, retriable and abortable flags are
    /// librdkafka's own.
    Transactional,
    /// A bare error code (enqueue, delivery report, flush): the flags are derived from
    /// the code ([`code_is_retriable`]; fatal only for `_FATAL`).
    Code,
    /// The client could not be configured or created.
    Config,
    /// The client was dropped while the operation was pending.
    Canceled,
}

/// The plain facts of a Kafka error that decisions are made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFacts {
    /// Where the error came from.
    pub origin: ErrorOrigin,
    /// librdkafka's error code, if the error has one.
    pub code: Option<RDKafkaErrorCode>,
    /// The producer instance is unusable.
    pub fatal: bool,
    /// The same operation may be called again.
    pub retriable: bool,
    /// The transaction must be aborted (and may then be started again).
    pub txn_requires_abort: bool,
    /// For a fatal error: the error that made the producer fatal
    /// (`rd_kafka_fatal_error`), e.g. `ProducerFenced` behind a `_FATAL`.
    pub fatal_cause: Option<RDKafkaErrorCode>,
}

impl ErrorFacts {
    /// Reads the facts of `err`. For a transactional error, the flags are librdkafka's;
    /// otherwise they are derived from the code.
    pub fn of(err: &KafkaError) -> ErrorFacts {
        let (origin, code) = match err {
            KafkaError::Transaction(e) => {
                return ErrorFacts {
                    origin: ErrorOrigin::Transactional,
                    code: Some(e.code()),
                    fatal: e.is_fatal(),
                    retriable: e.is_retriable(),
                    txn_requires_abort: e.txn_requires_abort(),
                    fatal_cause: None,
                };
            }
            KafkaError::ClientConfig(..)
            | KafkaError::ClientCreation(_)
            | KafkaError::AdminOpCreation(_)
            | KafkaError::Nul(_) => (ErrorOrigin::Config, None),
            KafkaError::Canceled => (ErrorOrigin::Canceled, None),
            KafkaError::MessageConsumptionFatal(c) => {
                return ErrorFacts {
                    origin: ErrorOrigin::Code,
                    code: Some(*c),
                    fatal: true,
                    retriable: false,
                    txn_requires_abort: false,
                    fatal_cause: None,
                };
            }
            other => (ErrorOrigin::Code, other.rdkafka_error_code()),
        };
        ErrorFacts {
            origin,
            code,
            fatal: code == Some(RDKafkaErrorCode::Fatal),
            retriable: code.is_some_and(code_is_retriable),
            txn_requires_abort: false,
            fatal_cause: None,
        }
    }

    /// Adds the producer's fatal error (`Client::fatal_error()`), which names the cause
    /// behind a `_FATAL` code (e.g. fencing).
    pub fn with_fatal_error(mut self, fatal: Option<(RDKafkaErrorCode, String)>) -> Self {
        if let Some((code, _)) = fatal {
            self.fatal = true;
            self.fatal_cause = Some(code);
        }
        self
    }

    /// Bare-code facts, as [`ErrorFacts::of`] reads a [`KafkaError`] that carries only a code.
    pub fn from_code(code: RDKafkaErrorCode) -> ErrorFacts {
        ErrorFacts::of(&KafkaError::MessageProduction(code))
    }
}

/// How often and how fast to retry a retriable error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Backoff before the first retry; doubled for each further one.
    pub initial_backoff: Duration,
    /// Longest backoff.
    pub max_backoff: Duration,
    /// Tries of one operation in all (the first call included) before giving up on it.
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            max_attempts: 10,
        }
    }
}

impl RetryPolicy {
    /// Backoff before retry number `retry` (1-based): `initial * 2^(retry-1)`, capped.
    pub fn backoff(&self, retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1).min(31);
        self.initial_backoff
            .saturating_mul(1u32 << doublings)
            .min(self.max_backoff)
    }
}

/// What to do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Wait `backoff` (serving delivery reports meanwhile), then call the same
    /// operation again; this is retry number `retry` (1-based).
    RetryAfter {
        /// How long to wait.
        backoff: Duration,
        /// Which retry this is.
        retry: u32,
    },
    /// Abort the transaction (the producer stays usable), then Recovery: the epoch's
    /// outputs and offsets were not committed.
    AbortAndRecover(AbortReason),
    /// Drop the producer, create a new one (its `init_transactions` fences and ends
    /// whatever is open), then Recovery.
    NewProducerAndRecover(NewProducerReason),
    /// Stop the pipeline with the reason: retrying or a new producer would fail the
    /// same way (configuration, permissions, the cluster's setup, the data).
    Fail(FailReason),
}

/// Why the transaction is aborted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortReason {
    /// librdkafka flagged the error as abortable.
    Abortable,
    /// A record of the transaction could not be delivered.
    DeliveryFailed,
    /// A retriable error kept coming back until the retry budget was spent.
    RetriesExhausted,
}

/// Why the producer is replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewProducerReason {
    /// Another producer with the same `transactional.id` fenced this one.
    Fenced,
    /// The producer raised a fatal error.
    Fatal,
    /// The commit may or may not have happened.
    UnknownCommitOutcome,
    /// The abort may or may not have happened.
    UnknownAbortOutcome,
    /// `init_transactions` kept failing until the retry budget was spent.
    InitFailed,
    /// An error with none of librdkafka's flags: treated as fatal, as librdkafka advises.
    Unclassified,
}

/// Why the pipeline stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailReason {
    /// The client configuration is invalid or transactions are not configured.
    Config,
    /// `transaction.timeout.ms` is larger than the broker allows
    /// (`transaction.max.timeout.ms`).
    TransactionTimeout,
    /// Authentication or authorization failed.
    NotAuthorized,
    /// The broker does not support what is needed (transactions, this protocol).
    Unsupported,
    /// A topic or partition does not exist.
    TopicMissing,
    /// A record is larger than the producer or the broker accepts.
    RecordTooLarge,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::RetryAfter { backoff, retry } => {
                write!(f, "retry #{retry} after {backoff:?}")
            }
            Decision::AbortAndRecover(r) => write!(f, "abort the transaction and recover ({r:?})"),
            Decision::NewProducerAndRecover(r) => {
                write!(f, "replace the producer and recover ({r:?})")
            }
            Decision::Fail(r) => write!(f, "stop: {}", r.hint()),
        }
    }
}

impl FailReason {
    /// What the user should look at.
    pub fn hint(&self) -> &'static str {
        match self {
            FailReason::Config => "the Kafka client configuration is invalid",
            FailReason::TransactionTimeout => {
                "transaction.timeout.ms exceeds the broker's transaction.max.timeout.ms"
            }
            FailReason::NotAuthorized => {
                "not authorized (check credentials and ACLs for the topics, group and transactional id)"
            }
            FailReason::Unsupported => "the broker does not support a needed feature",
            FailReason::TopicMissing => "a topic or partition does not exist",
            FailReason::RecordTooLarge => {
                "a record exceeds message.max.bytes (producer) or max.message.bytes (topic)"
            }
        }
    }
}

/// Decides what to do about an error of `op`, which has now failed `failures` times in a
/// row (1 for the first failure).
pub fn decide(op: TxnOp, facts: &ErrorFacts, failures: u32, policy: &RetryPolicy) -> Decision {
    use Decision::*;
    match facts.origin {
        ErrorOrigin::Config => return Fail(FailReason::Config),
        ErrorOrigin::Canceled => return NewProducerAndRecover(NewProducerReason::Unclassified),
        ErrorOrigin::Transactional | ErrorOrigin::Code => {}
    }
    let codes = [facts.code, facts.fatal_cause];
    if let Some(reason) = codes
        .iter()
        .flatten()
        .find_map(|&c| fail_reason(c, facts.retriable))
    {
        return Fail(reason);
    }
    if codes.iter().flatten().any(|&c| is_fenced(c)) {
        return NewProducerAndRecover(NewProducerReason::Fenced);
    }
    if facts.fatal {
        return NewProducerAndRecover(NewProducerReason::Fatal);
    }
    let retry = (facts.retriable && failures < policy.max_attempts).then(|| RetryAfter {
        backoff: policy.backoff(failures),
        retry: failures,
    });
    match op {
        // The transaction is still open and abortable after any of these.
        TxnOp::Begin | TxnOp::Produce | TxnOp::SendOffsets => {
            if facts.txn_requires_abort {
                AbortAndRecover(AbortReason::Abortable)
            } else if let Some(r) = retry {
                r
            } else if facts.retriable {
                AbortAndRecover(AbortReason::RetriesExhausted)
            } else {
                NewProducerAndRecover(NewProducerReason::Unclassified)
            }
        }
        // librdkafka retried the delivery until message.timeout.ms; the transaction
        // cannot commit now.
        TxnOp::Poll => AbortAndRecover(AbortReason::DeliveryFailed),
        TxnOp::Commit => {
            if facts.txn_requires_abort {
                AbortAndRecover(AbortReason::Abortable)
            } else if let Some(r) = retry {
                r
            } else {
                NewProducerAndRecover(NewProducerReason::UnknownCommitOutcome)
            }
        }
        TxnOp::Abort => retry.unwrap_or(NewProducerAndRecover(
            NewProducerReason::UnknownAbortOutcome,
        )),
        TxnOp::InitTransactions => {
            retry.unwrap_or(NewProducerAndRecover(NewProducerReason::InitFailed))
        }
    }
}

/// Codes that mean another producer with the same `transactional.id` took over.
pub fn is_fenced(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
            | RDKafkaErrorCode::Fenced
    )
}

/// Codes after which retrying or a new producer would fail the same way.
/// `UnknownTopicOrPartition` counts only when librdkafka does not retry it (metadata can
/// lag behind a just-created topic).
pub fn fail_reason(code: RDKafkaErrorCode, retriable: bool) -> Option<FailReason> {
    use RDKafkaErrorCode as C;
    Some(match code {
        C::NotConfigured | C::InvalidArgument => FailReason::Config,
        C::InvalidTransactionTimeout => FailReason::TransactionTimeout,
        C::TransactionalIdAuthorizationFailed
        | C::GroupAuthorizationFailed
        | C::TopicAuthorizationFailed
        | C::ClusterAuthorizationFailed
        | C::SaslAuthenticationFailed
        | C::Authentication => FailReason::NotAuthorized,
        C::UnsupportedFeature | C::UnsupportedVersion | C::UnsupportedForMessageFormat => {
            FailReason::Unsupported
        }
        C::UnknownTopic | C::UnknownPartition => FailReason::TopicMissing,
        C::UnknownTopicOrPartition if !retriable => FailReason::TopicMissing,
        C::MessageSizeTooLarge => FailReason::RecordTooLarge,
        _ => return None,
    })
}

/// Bare codes that are worth calling the operation again for (a full local queue, a
/// coordinator or leader moving, a timeout, a broker connection lost).
pub fn code_is_retriable(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::QueueFull
            | C::OperationTimedOut
            | C::TimedOutQueue
            | C::BrokerTransportFailure
            | C::AllBrokersDown
            | C::Retry
            | C::RequestTimedOut
            | C::NetworkException
            | C::CoordinatorNotAvailable
            | C::NotCoordinator
            | C::CoordinatorLoadInProgress
            | C::ConcurrentTransactions
            | C::LeaderNotAvailable
            | C::NotLeaderForPartition
            | C::NotEnoughReplicas
            | C::NotEnoughReplicasAfterAppend
    )
}
