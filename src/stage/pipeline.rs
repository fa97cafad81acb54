//! The Kafka stage: consume → enrich → produce → store offsets, at least once, per-partition order kept.
//!
//! One consume loop reads every assigned partition and routes each record to its partition's task. A
//! partition task enriches its records in order (tokio's worker threads run different partitions in
//! parallel across cores), produces each output or dead-letter record in that order, and stores offset
//! `n + 1` only when the delivery of record `n` — and, by FIFO, of every earlier record of the partition —
//! was acknowledged. A semaphore bounds the records in flight across partitions, which bounds memory and
//! applies backpressure to the consumer when the output is slow. A failed delivery stops the stage with an
//! error and its offset is never stored; a restart resumes from the last committed offset.
//!
//! With `delivery = "exactly_once"` no offset is stored: each record is sent inside the open Kafka
//! transaction and its offset noted, and `transaction` commits outputs and offsets together.
//!
//! Each input topic has its payload format (OpenRTB JSON or protobuf, pixel hits, JSON events). In the
//! `tokenize` direction the stage is the sharing sender instead: raw UID2s become tokens, records whose
//! raw UID2 is invalid are dead-lettered, and while the keys cannot encrypt a record is held (never
//! emitted raw) until they can.
//!
//! What a record becomes and where it goes is `route`'s; handing it to the producer and accounting for
//! its delivery is `produce`'s. This module owns the consume loop, the partition tasks and the drain.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

pub use crate::config::{Delivery, TransactionSettings};
use crate::engine::cache::DecryptCache;
use crate::engine::enrich::{NO_TOKEN, PayloadFormat, Policy};
use crate::engine::optout::OptOutLookup;
use crate::engine::tokenize::{Direction, TokenizePolicy, TokenizeStatus};
use crate::engine::uid2::{KeySet, Status};
use crate::stage::kafka::{
    self, ConsumerErrorClass, PartitionRegistry, PartitionSlot, StageContext, TopicPartition,
};
use crate::stage::produce::{self, Accounting, PendingDelivery};
use crate::stage::route::{self, Outcome};
use crate::stage::transaction::Transactions;
use crate::support::metrics::Metrics;

/// Where the stage gets the key sets in force (refreshed operator key sets, files, or a fixed set).
pub trait KeyProvider: Send + Sync {
    /// The key set of the first source: the one a single source holds, and the one that encrypts in
    /// the tokenize direction.
    fn current(&self) -> Option<Arc<KeySet>>;

    /// Every scope's key set, for decrypting one record.
    fn snapshot(&self) -> KeySnapshot {
        KeySnapshot::single(self.current())
    }

    /// Each source's name and key set in use (`None` before its first load), for `/metrics` and
    /// `/readyz`.
    fn by_source(&self) -> Vec<(String, Option<Arc<KeySet>>)> {
        vec![(DEFAULT_KEY_SOURCE.to_string(), self.current())]
    }
}

/// The name of the single `[uid2]` key source (and of a fixed key set) in logs, `/readyz` and metrics.
pub const DEFAULT_KEY_SOURCE: &str = "uid2";

/// The key sets in force at one moment, held while one record is enriched.
#[derive(Clone, Debug, Default)]
pub struct KeySnapshot {
    uid2: Option<Arc<KeySet>>,
    euid: Option<Arc<KeySet>>,
    /// `None`: one source, whose set (in `uid2`) answers every scope; else whether each scope has one.
    served: Option<[bool; 2]>,
}

impl KeySnapshot {
    /// One source's set, which answers tokens of every scope.
    pub fn single(keys: Option<Arc<KeySet>>) -> KeySnapshot {
        KeySnapshot {
            uid2: keys,
            euid: None,
            served: None,
        }
    }

    /// A source per scope: `None` where no source serves the scope, `Some(None)` before its first load.
    pub fn per_scope(
        uid2: Option<Option<Arc<KeySet>>>,
        euid: Option<Option<Arc<KeySet>>>,
    ) -> KeySnapshot {
        KeySnapshot {
            served: Some([uid2.is_some(), euid.is_some()]),
            uid2: uid2.flatten(),
            euid: euid.flatten(),
        }
    }

    /// The engine's view of these sets.
    pub fn keys(&self) -> crate::engine::enrich::Keys<'_> {
        use crate::engine::enrich::Keys;
        match self.served {
            None => Keys::single(self.uid2.as_deref()),
            Some([uid2, euid]) => Keys::per_scope(
                uid2.then_some(self.uid2.as_deref()),
                euid.then_some(self.euid.as_deref()),
            ),
        }
    }
}

impl KeyProvider for Option<Arc<KeySet>> {
    fn current(&self) -> Option<Arc<KeySet>> {
        self.clone()
    }
}

/// How output records are spread over the output topic's partitions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OutputPartitioning {
    /// By record key, librdkafka's default partitioner (records without a key are spread).
    #[default]
    Key,
    /// Input partition n goes to output partition n: the output topic needs at least as many partitions.
    Same,
}

/// Everything the stage needs, already validated.
#[derive(Clone, Debug)]
pub struct StageConfig {
    /// The brokers and the pass-through properties every client is made from.
    pub kafka: kafka::KafkaClients,
    pub group_id: String,
    pub input_topics: Vec<String>,
    pub output_topic: String,
    pub dlq_topic: String,
    pub policy: Policy,
    /// The format of input topics not in `topic_formats`.
    pub format: PayloadFormat,
    /// Input topic → format, overriding `format`.
    pub topic_formats: Vec<(String, PayloadFormat)>,
    /// Decrypt tokens (`Enrich`) or replace raw UID2s by tokens (`Tokenize`, JSON formats only).
    pub direction: Direction,
    /// Where `Tokenize` finds raw UID2s.
    pub tokenize: TokenizePolicy,
    /// Enrich (true) or pass records through untouched (false: measures the Kafka overhead alone).
    pub enrich: bool,
    pub max_in_flight: usize,
    pub cache_entries: u64,
    pub drain_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub output_partitioning: OutputPartitioning,
    /// At least once (offsets stored after acknowledgement) or exactly once (Kafka transactions).
    pub delivery: Delivery,
}

impl StageConfig {
    /// The payload format of records from `topic`.
    pub fn format_for(&self, topic: &str) -> PayloadFormat {
        self.topic_formats
            .iter()
            .find(|(t, _)| t == topic)
            .map_or(self.format, |(_, f)| *f)
    }
}

/// The `uid2-status` values, in the order of [`RunCounters::statuses`]: the decryption statuses and
/// `no_token` (enrich direction), then `tokenized` and `no_raw_uid2` (tokenize direction).
pub const STATUS_NAMES: [&str; STATUS_COUNT] = {
    let mut names = [""; STATUS_COUNT];
    let mut i = 0;
    while i < Status::ALL.len() {
        names[i] = Status::ALL[i].as_str();
        i += 1;
    }
    names[i] = NO_TOKEN;
    names[i + 1] = TokenizeStatus::Tokenized.as_str();
    names[i + 2] = TokenizeStatus::NoRawUid2.as_str();
    names
};

const STATUS_COUNT: usize = Status::ALL.len() + 3;

/// Counters of one run, for the summary of `demo` and for tests.
#[derive(Debug, Default)]
pub struct RunCounters {
    pub consumed: AtomicU64,
    pub produced: AtomicU64,
    pub dead_lettered: AtomicU64,
    /// Output records by `uid2-status`, indexed like [`STATUS_NAMES`].
    pub statuses: [AtomicU64; STATUS_COUNT],
    /// When set, every record's time inside the stage (demo and tests only).
    pub latencies: Option<Mutex<LatencySamples>>,
}

/// Every record's time inside the stage, in microseconds, in the order the events happened.
#[derive(Debug, Default)]
pub struct LatencySamples {
    /// Consumed → output handed to the producer: the stage's own work, and any wait for room in the
    /// producer's queue.
    pub handed_us: Vec<u32>,
    /// Consumed → output acknowledged by the brokers.
    pub acked_us: Vec<u32>,
}

impl RunCounters {
    /// Counters that also keep every record's latency.
    pub fn with_latencies() -> RunCounters {
        RunCounters {
            latencies: Some(Mutex::new(LatencySamples::default())),
            ..RunCounters::default()
        }
    }

    /// The latencies kept so far, leaving none: a caller measuring phases takes them at each phase's end.
    pub fn take_latencies(&self) -> LatencySamples {
        self.latencies
            .as_ref()
            .map(|l| std::mem::take(&mut *l.lock().unwrap_or_else(|e| e.into_inner())))
            .unwrap_or_default()
    }

    /// Output records with this status so far.
    pub fn status(&self, name: &str) -> u64 {
        STATUS_NAMES
            .iter()
            .position(|s| *s == name)
            .map_or(0, |i| self.statuses[i].load(Ordering::Relaxed))
    }
}

/// One consumed record on its way through a partition task.
pub struct Job {
    message: OwnedMessage,
    received: Instant,
    _permit: OwnedSemaphorePermit,
}

/// What every partition task of a run shares.
pub(crate) struct Shared {
    pub config: StageConfig,
    pub producer: FutureProducer<kafka::Logged>,
    pub(crate) consumer: Arc<StreamConsumer<StageContext<Job>>>,
    pub keys: Arc<dyn KeyProvider>,
    pub optouts: Arc<dyn OptOutLookup + Send + Sync>,
    pub cache: Option<DecryptCache>,
    pub metrics: Arc<Metrics>,
    pub counters: Arc<RunCounters>,
    /// The first fatal error, which stops the stage.
    pub(crate) fatal: CancellationToken,
    fatal_error: Mutex<Option<StageError>>,
    /// Exactly-once delivery: the open transaction.
    pub(crate) txn: Option<Arc<Transactions>>,
    /// Tokenize direction: set while records wait for keys that can encrypt (logged once per episode).
    waiting_for_keys: std::sync::atomic::AtomicBool,
}

/// Why the stage stopped on its own.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StageError {
    /// A record was not acknowledged after the producer's own retries; its offset is never stored.
    #[error("delivery for {topic}/{partition} offset {offset} failed: {failure}")]
    Delivery {
        topic: String,
        partition: i32,
        offset: i64,
        failure: DeliveryFailure,
    },
    /// The producer refused a record for a reason other than a full queue or its size.
    #[error("producing to {topic} failed: {error}")]
    Produce { topic: String, error: KafkaError },
    /// A record held for keys that can encrypt reached the producer: a bug, stopped before it leaks.
    #[error("internal: a held record reached the producer")]
    HeldRecordProduced,
    /// Exactly-once delivery: the open transaction was aborted (a failed delivery, commit or lost
    /// assignment); a fresh run re-reads from the committed offsets.
    #[error("the transaction was aborted: {reason}")]
    TransactionAborted { reason: String },
    /// Exactly-once delivery: the transactional producer cannot go on; `fenced` when another producer
    /// took this instance's transactional id.
    #[error("{}", transaction_fatal_message(transactional_id, *fenced, detail))]
    TransactionFatal {
        transactional_id: String,
        fenced: bool,
        detail: String,
    },
    /// The fatal token was cancelled with no error recorded: a bug.
    #[error("fatal error")]
    Unrecorded,
}

fn transaction_fatal_message(transactional_id: &str, fenced: bool, detail: &str) -> String {
    if fenced {
        format!(
            "fenced: another producer took transactional_id `{transactional_id}` ({detail}); give every instance its own transactional_id, stable across its restarts"
        )
    } else {
        format!("the transactional producer `{transactional_id}` failed and cannot go on: {detail}")
    }
}

/// How a delivery failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum DeliveryFailure {
    #[error("{0}")]
    Kafka(KafkaError),
    #[error("the producer was dropped")]
    ProducerDropped,
}

/// The inputs of a run that are not configuration.
#[derive(Clone)]
pub struct StageDeps {
    pub keys: Arc<dyn KeyProvider>,
    pub optouts: Arc<dyn OptOutLookup + Send + Sync>,
    pub metrics: Arc<Metrics>,
    pub counters: Arc<RunCounters>,
}

/// Runs the stage until `shutdown` is cancelled (then drains, commits and flushes within
/// `shutdown_timeout`) or a fatal error occurs (returned).
///
/// # Errors
/// Client creation, subscription, a delivery that failed after the producer's own retries, or an
/// unrecoverable consumer error.
pub async fn run(
    config: StageConfig,
    deps: StageDeps,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let partitions: PartitionRegistry<Job> = Arc::new(Mutex::new(HashMap::new()));
    let shared = start(config, deps, &partitions)?;
    if let Some(txn) = &shared.txn {
        txn.start(&shared).await?;
        tokio::spawn(txn.clone().commit_periodically(shared.clone()));
    }
    let consume_result = consume(&shared, &partitions, &shutdown).await;
    drain_and_commit(&shared, &partitions).await;
    if shared.fatal.is_cancelled() {
        return Err(fatal_error(&shared).into());
    }
    consume_result
}

/// Creates the consumer (subscribed) and the producer, and what the partition tasks share.
fn start(
    config: StageConfig,
    deps: StageDeps,
    partitions: &PartitionRegistry<Job>,
) -> anyhow::Result<Arc<Shared>> {
    let on_revoke = Arc::new(std::sync::OnceLock::new());
    let context = StageContext {
        partitions: partitions.clone(),
        drain_timeout: config.drain_timeout,
        metrics: deps.metrics.clone(),
        on_revoke: on_revoke.clone(),
    };
    let mut consumer_config = config.kafka.stage_consumer(&config.group_id)?;
    let mut producer_config = config.kafka.producer()?;
    if let Delivery::ExactlyOnce(txn) = &config.delivery {
        // Offsets move only inside transactions; records of open or aborted transactions upstream are
        // not read.
        consumer_config
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed");
        producer_config.set("transactional.id", &txn.transactional_id);
        if !config.kafka.sets("message.timeout.ms") {
            // librdkafka wants it no longer than transaction.timeout.ms (60 s by default).
            producer_config.set("message.timeout.ms", "55000");
        }
    }
    let consumer: StreamConsumer<StageContext<Job>> = consumer_config
        .create_with_context(context)
        .map_err(kafka::creation_error)
        .context("creating the Kafka consumer")?;
    let topics: Vec<&str> = config.input_topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .with_context(|| format!("subscribing to {topics:?}"))?;
    let producer: FutureProducer<kafka::Logged> = producer_config
        .create_with_context(kafka::Logged("stage producer"))
        .map_err(kafka::creation_error)
        .context("creating the Kafka producer")?;
    tracing::info!(topics = ?config.input_topics, output = %config.output_topic, dlq = %config.dlq_topic, group = %config.group_id, delivery = config.delivery.name(), "Stage started.");
    let txn = match &config.delivery {
        Delivery::ExactlyOnce(settings) => Some(Arc::new(Transactions::new(settings.clone()))),
        Delivery::AtLeastOnce => None,
    };
    let shared = Arc::new(Shared {
        cache: (config.enrich && config.direction == Direction::Enrich && config.cache_entries > 0)
            .then(|| DecryptCache::new(config.cache_entries)),
        config,
        producer,
        consumer: Arc::new(consumer),
        keys: deps.keys,
        optouts: deps.optouts,
        metrics: deps.metrics,
        counters: deps.counters,
        fatal: CancellationToken::new(),
        fatal_error: Mutex::new(None),
        txn,
        waiting_for_keys: std::sync::atomic::AtomicBool::new(false),
    });
    if shared.txn.is_some() {
        // A revoke commits what the transaction holds (or aborts it, when the assignment was lost)
        // before the partitions move. Weak: the consumer, which holds the hook, lives in `shared`.
        let weak = Arc::downgrade(&shared);
        let hook: kafka::RevokeHook = Box::new(move |abort| {
            let weak = weak.clone();
            Box::pin(async move {
                let Some(shared) = weak.upgrade() else { return };
                let Some(txn) = shared.txn.clone() else {
                    return;
                };
                let result = if abort {
                    Err(txn
                        .abort(
                            &shared,
                            "a revoke: the assignment was lost, or its partitions did not drain in time"
                                .into(),
                        )
                        .await)
                } else {
                    txn.commit(&shared).await
                };
                if let Err(error) = result {
                    stop_fatally(&shared, error);
                }
            })
        });
        let _ = on_revoke.set(hook);
    }
    Ok(shared)
}

/// The consume loop: each record, once an in-flight permit is free, goes to its partition's task. Ends
/// on `shutdown`, on a fatal error, or when a reported unreadable batch has been watched long enough.
async fn consume(
    shared: &Arc<Shared>,
    partitions: &PartitionRegistry<Job>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let consumer = &shared.consumer;
    let permits = Arc::new(Semaphore::new(shared.config.max_in_flight.max(1)));
    // A batch that cannot be read was reported: the stage goes on for a moment, so that the partitions
    // that can move do, and then stops, naming the one that did not.
    let mut unreadable: Option<Unreadable> = None;
    loop {
        let stop_at = unreadable.as_ref().map(|u| u.seen + UNREADABLE_WATCH);
        let permit = tokio::select! {
            biased;
            () = shutdown.cancelled() => return Ok(()),
            () = shared.fatal.cancelled() => return Err(fatal_error(shared).into()),
            () = sleep_until(stop_at) => return Err(unreadable_batch(consumer, unreadable.take()).await),
            permit = permits.clone().acquire_owned() => permit.map_err(|_| anyhow!("the in-flight semaphore closed"))?,
        };
        let message = tokio::select! {
            biased;
            () = shutdown.cancelled() => return Ok(()),
            () = shared.fatal.cancelled() => return Err(fatal_error(shared).into()),
            () = sleep_until(stop_at) => return Err(unreadable_batch(consumer, unreadable.take()).await),
            received = consumer.recv() => match received {
                Ok(m) => m.detach(),
                Err(e) => match kafka::classify_consumer_error(&e) {
                    ConsumerErrorClass::Fatal => return Err(anyhow!(e).context("consuming")),
                    ConsumerErrorClass::UnreadableBatch => {
                        if unreadable.is_none() {
                            unreadable = Some(Unreadable::note(consumer, e).await);
                        }
                        continue;
                    }
                    ConsumerErrorClass::Authentication | ConsumerErrorClass::Transient => {
                        kafka::client_log().error("stage consumer", &e, "consuming");
                        continue;
                    }
                },
            },
        };
        dispatch(shared, partitions, message, permit);
    }
}

/// Hands a consumed record to its partition's task, starting the task for a newly seen partition.
fn dispatch(
    shared: &Arc<Shared>,
    partitions: &PartitionRegistry<Job>,
    message: OwnedMessage,
    permit: OwnedSemaphorePermit,
) {
    shared.metrics.records_in.inc();
    shared.metrics.in_flight.inc();
    shared.counters.consumed.fetch_add(1, Ordering::Relaxed);
    let tp = (message.topic().to_string(), message.partition());
    let job = Job {
        message,
        received: Instant::now(),
        _permit: permit,
    };
    // The registry holds each partition's only queue sender: a revoke removes the slot (closing the
    // queue), so a record of a re-assigned partition starts a fresh task.
    let mut registry = partitions.lock().unwrap_or_else(|e| e.into_inner());
    let slot = registry.entry(tp.clone()).or_insert_with(|| {
        let (queue, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(partition_task(tp.clone(), rx, shared.clone()));
        PartitionSlot { queue, task }
    });
    if slot.queue.send(job).is_err() {
        shared.metrics.in_flight.dec();
        tracing::warn!(topic = %tp.0, partition = tp.1, "Record for a stopped partition task; it will be redelivered.");
    }
}

/// Stops consuming, lets every partition finish what it holds (bounded by `shutdown_timeout`), then
/// commits and flushes.
async fn drain_and_commit(shared: &Arc<Shared>, partitions: &PartitionRegistry<Job>) {
    let slots: Vec<PartitionSlot<Job>> = partitions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .drain()
        .map(|(_, s)| s)
        .collect();
    // Dropping the queues' senders closes them: each task finishes what it holds.
    let tasks: Vec<_> = slots.into_iter().map(|slot| slot.task).collect();
    let deadline = shared.config.shutdown_timeout;
    let drained = tokio::time::timeout(deadline, async {
        for task in tasks {
            let _ = task.await;
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            timeout_ms = deadline.as_millis() as u64,
            "Shutdown: in-flight records did not drain in time; they will be redelivered."
        );
    }
    if let Some(txn) = &shared.txn {
        txn.close();
        // The records drained above are in the open transaction: commit them with their offsets. Not
        // after an error (its transaction is aborted, or left for the next producer with this
        // transactional id to abort), nor when tasks did not drain in time (they may still send).
        if drained.is_err() && !shared.fatal.is_cancelled() {
            let error = txn
                .abort(
                    shared,
                    "shutdown: in-flight records did not drain in time".into(),
                )
                .await;
            stop_fatally(shared, error);
        } else if !shared.fatal.is_cancelled()
            && let Err(error) = txn.commit(shared).await
        {
            stop_fatally(shared, error);
        }
        shared.consumer.unsubscribe();
        tracing::info!(
            consumed = shared.counters.consumed.load(Ordering::Relaxed),
            produced = shared.counters.produced.load(Ordering::Relaxed),
            dead_lettered = shared.counters.dead_lettered.load(Ordering::Relaxed),
            "Stage stopped."
        );
        return;
    }
    let consumer = shared.consumer.clone();
    let commit = tokio::task::spawn_blocking({
        let consumer = consumer.clone();
        move || consumer.commit_consumer_state(CommitMode::Sync)
    })
    .await;
    match commit {
        Ok(Ok(())) | Ok(Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset))) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "Final offset commit failed; uncommitted records will be redelivered.")
        }
        Err(e) => tracing::warn!(error = %e, "Final offset commit task failed."),
    }
    let producer = shared.producer.clone();
    let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(2))).await;
    consumer.unsubscribe();
    tracing::info!(
        consumed = shared.counters.consumed.load(Ordering::Relaxed),
        produced = shared.counters.produced.load(Ordering::Relaxed),
        dead_lettered = shared.counters.dead_lettered.load(Ordering::Relaxed),
        "Stage stopped."
    );
}

fn fatal_error(shared: &Shared) -> StageError {
    shared
        .fatal_error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .unwrap_or(StageError::Unrecorded)
}

pub(crate) fn stop_fatally(shared: &Shared, error: StageError) {
    tracing::error!(reason = %error, "Stopping the stage.");
    let mut recorded = shared.fatal_error.lock().unwrap_or_else(|e| e.into_inner());
    // The first error wins, except that a fatal transactional error overrides an abort: a fenced
    // instance must stop, not restart and fence its successor in turn.
    if recorded.is_none() || matches!(error, StageError::TransactionFatal { .. }) {
        *recorded = Some(error);
    }
    drop(recorded);
    shared.fatal.cancel();
}

/// How long the stage goes on after an unreadable batch is reported, so that the partitions that can
/// move do (their records are delivered and committed as usual) and the one that cannot stands out.
const UNREADABLE_WATCH: Duration = Duration::from_secs(3);

/// An unreadable batch reported by the consumer, and where every partition was then.
struct Unreadable {
    error: KafkaError,
    seen: tokio::time::Instant,
    positions: HashMap<TopicPartition, Offset>,
}

impl Unreadable {
    async fn note(
        consumer: &Arc<StreamConsumer<StageContext<Job>>>,
        error: KafkaError,
    ) -> Unreadable {
        let consumer = consumer.clone();
        let positions = tokio::task::spawn_blocking(move || positions(&consumer))
            .await
            .unwrap_or_default();
        Unreadable {
            error,
            seen: tokio::time::Instant::now(),
            positions,
        }
    }
}

/// Resolves at `at`, or never.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Every assigned partition's position: the next offset the consumer hands to the stage.
fn positions(consumer: &StreamConsumer<StageContext<Job>>) -> HashMap<TopicPartition, Offset> {
    consumer
        .position()
        .map(|tpl| {
            tpl.elements()
                .iter()
                .map(|e| ((e.topic().to_string(), e.partition()), e.offset()))
                .collect()
        })
        .unwrap_or_default()
}

fn committed_offset(
    consumer: &StreamConsumer<StageContext<Job>>,
    topic: &str,
    partition: i32,
) -> Option<i64> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(5))
        .ok()?;
    match committed.elements().first()?.offset() {
        Offset::Offset(o) => Some(o),
        _ => None,
    }
}

/// The stage's fatal error for a record batch it cannot read, naming where it is.
///
/// librdkafka does not say which partition a consumer error belongs to (rust-rdkafka drops it), but it
/// hands records to the application in order and stops at the batch it cannot read: that partition's
/// position (the next offset to hand out) stays below its end while the others move on. Every record
/// before the batch was handed over and finishes normally; nothing after it is stored, so nothing past
/// it is committed.
async fn unreadable_batch(
    consumer: &Arc<StreamConsumer<StageContext<Job>>>,
    noted: Option<Unreadable>,
) -> anyhow::Error {
    let Some(noted) = noted else {
        return anyhow!("internal: an unreadable batch was not noted");
    };
    let consumer = consumer.clone();
    let before = noted.positions;
    let (stuck, behind) = tokio::task::spawn_blocking(move || {
        let (mut stuck, mut behind) = (Vec::new(), Vec::new());
        for ((topic, partition), now) in positions(&consumer) {
            let Ok((low, high)) =
                consumer.fetch_watermarks(&topic, partition, Duration::from_secs(5))
            else {
                continue;
            };
            // Nothing handed out yet: the partition starts where its group committed, or at its
            // beginning (auto.offset.reset = earliest).
            let at = match now {
                Offset::Offset(o) => o,
                _ => committed_offset(&consumer, &topic, partition).unwrap_or(low),
            };
            if at >= high {
                continue;
            }
            let place = format!("{topic} [{partition}] at offset {at}");
            if before.get(&(topic, partition)) == Some(&now) {
                stuck.push(place);
            } else {
                behind.push(place);
            }
        }
        (stuck, behind)
    })
    .await
    .unwrap_or_default();
    let candidates = if stuck.is_empty() { behind } else { stuck };
    let place = match candidates.as_slice() {
        [] => "a partition that could not be identified".to_string(),
        [one] => one.clone(),
        many => format!("one of {}", many.join(", ")),
    };
    anyhow!(
        "cannot read the record batch in {place}: {}. Nothing past it was committed, so the next \
         owner of the partition reads it again; if the batch is damaged, a Kafka administrator must move \
         the group's offset past it (kafka-consumer-groups --reset-offsets), knowing its records are lost; \
         if it uses a codec this build lacks, see `uid2-enricher --version`",
        noted.error
    )
}

/// Processes one partition's records in order until its queue closes and every delivery is acknowledged.
async fn partition_task(
    tp: TopicPartition,
    mut rx: mpsc::UnboundedReceiver<Job>,
    shared: Arc<Shared>,
) {
    let mut deliveries: FuturesOrdered<PendingDelivery> = FuturesOrdered::new();
    let mut acked_next: Option<i64> = None;
    let mut stored_next: Option<i64> = None;
    let mut open = true;
    // The enriched body of one record at a time: the producer copies it before `process` returns, so one
    // buffer serves the partition. A fresh buffer per record costs more than splicing the member in
    // (glibc's path for blocks past its per-thread cache; docs/performance.md, `json` vs `json_into`).
    let mut output_buffer = Vec::new();
    let mut store_tick = tokio::time::interval(Duration::from_millis(200));
    store_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = shared.fatal.cancelled() => return,
            Some((offset, permit, result)) = deliveries.next(), if !deliveries.is_empty() => {
                drop(permit);
                shared.metrics.in_flight.dec();
                match result {
                    Ok(()) => acked_next = Some(offset + 1),
                    Err(failure) => {
                        // Nothing at or after this offset may be stored: stop before storing anything more.
                        store(&shared, &tp, &mut stored_next, acked_next);
                        let error = StageError::Delivery { topic: tp.0.clone(), partition: tp.1, offset, failure };
                        let error = match &shared.txn {
                            Some(txn) => txn.abort(&shared, error.to_string()).await,
                            None => error,
                        };
                        stop_fatally(&shared, error);
                        return;
                    }
                }
            }
            job = rx.recv(), if open => match job {
                Some(job) => match process(&shared, job, &mut output_buffer).await {
                    Ok(pending) => deliveries.push_back(pending),
                    Err(error) => {
                        store(&shared, &tp, &mut stored_next, acked_next);
                        // Exactly once: a transaction in an abortable state refuses new records too.
                        let error = match (&shared.txn, &error) {
                            (Some(txn), StageError::Produce { .. }) => txn.abort(&shared, error.to_string()).await,
                            _ => error,
                        };
                        stop_fatally(&shared, error);
                        return;
                    }
                },
                None => open = false,
            },
            _ = store_tick.tick() => store(&shared, &tp, &mut stored_next, acked_next),
            else => break,
        }
        if !open && deliveries.is_empty() {
            break;
        }
    }
    store(&shared, &tp, &mut stored_next, acked_next);
}

/// Stores `acked_next` (the next offset to consume) for the partition when it moved.
fn store(
    shared: &Shared,
    tp: &TopicPartition,
    stored_next: &mut Option<i64>,
    acked_next: Option<i64>,
) {
    let Some(next) = acked_next else { return };
    // Exactly once: offsets move only inside transactions.
    if shared.txn.is_some() || *stored_next == Some(next) {
        return;
    }
    let mut tpl = TopicPartitionList::with_capacity(1);
    if tpl
        .add_partition_offset(&tp.0, tp.1, Offset::Offset(next))
        .is_err()
    {
        return;
    }
    match shared.consumer.store_offsets(&tpl) {
        Ok(()) => *stored_next = Some(next),
        // The partition was revoked (librdkafka >= 1.9 refuses stores for unassigned partitions): the new
        // owner resumes from the last commit; nothing to do.
        Err(KafkaError::StoreOffset(RDKafkaErrorCode::State)) => *stored_next = Some(next),
        Err(e) => {
            tracing::warn!(topic = %tp.0, partition = tp.1, error = %e, "Storing an offset failed.")
        }
    }
}

/// The largest output buffer a partition keeps between records (bytes).
const MAX_KEPT_OUTPUT_BUFFER: usize = 1 << 20;

/// Enriches one record and hands its output (or dead letter) to the producer; returns the delivery to
/// await, or the error that stops the stage.
///
/// `output_buffer` receives the enriched JSON or protobuf body (cleared first); its bytes are handed to
/// the producer, which copies them, before this returns.
async fn process(
    shared: &Arc<Shared>,
    job: Job,
    output_buffer: &mut Vec<u8>,
) -> Result<PendingDelivery, StageError> {
    let Job {
        message,
        received,
        _permit: permit,
    } = job;
    if output_buffer.capacity() > MAX_KEPT_OUTPUT_BUFFER {
        // One huge record should not pin its size for the life of the partition.
        *output_buffer = Vec::new();
    }
    output_buffer.clear();
    let first = route::handle_record(shared, &message, output_buffer);
    let outcome = wait_for_keys(shared, &message, first).await?;
    let routed =
        route::route(&shared.config, &message, &outcome).ok_or(StageError::HeldRecordProduced)?;
    let sending = match &shared.txn {
        Some(txn) => Some(txn.sending().await),
        None => None,
    };
    let sent = produce::send(shared, &message, &routed).await?;
    if let Some(txn) = &shared.txn {
        txn.sent(
            &(message.topic().to_string(), message.partition()),
            message.offset(),
        );
    }
    drop(sending);
    produce::count_handoff(shared, received);
    let status_index = match &outcome {
        Outcome::Output { status, .. } if !sent.too_large => {
            STATUS_NAMES.iter().position(|s| s == status)
        }
        _ => None,
    };
    let accounting = Accounting {
        offset: message.offset(),
        received,
        permit,
        dead_letter: sent.too_large || matches!(outcome, Outcome::DeadLetter { .. }),
        status_index,
    };
    Ok(produce::track_delivery(
        shared.clone(),
        sent.delivery,
        accounting,
    ))
}

/// Holds a record the keys cannot encrypt yet (and with it its partition; the in-flight bound then stops
/// the consumer) until they can; the stage reports itself not ready meanwhile (see `stage`).
async fn wait_for_keys<'m>(
    shared: &Shared,
    message: &'m OwnedMessage,
    mut outcome: Outcome<'m>,
) -> Result<Outcome<'m>, StageError> {
    while let Outcome::WaitForKeys { reason } = &outcome {
        if !shared
            .waiting_for_keys
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::warn!(reason = %reason, "Tokenize: the keys cannot encrypt; holding records until they can.");
        }
        tokio::select! {
            () = shared.fatal.cancelled() => return Err(fatal_error(shared)),
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        // Only the sharing sender waits for keys, and it writes no buffer.
        outcome = route::tokenize_record(shared, message);
    }
    if shared
        .waiting_for_keys
        .swap(false, std::sync::atomic::Ordering::Relaxed)
    {
        tracing::info!("Tokenize: the keys can encrypt again; resuming.");
    }
    Ok(outcome)
}
