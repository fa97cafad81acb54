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
//! Each input topic has its payload format (OpenRTB JSON or protobuf, pixel hits, JSON events). In the
//! `tokenize` direction the stage is the sharing sender instead: raw UID2s become tokens, records whose
//! raw UID2 is invalid are dead-lettered, and while the keys cannot encrypt a record is held (never
//! emitted raw) until they can.
//!
//! Depends on the enrichment and tokenization core, the Kafka clients, the metrics and tokio.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::engine::cache::DecryptCache;
use crate::engine::enrich::{self, PayloadFormat, Policy};
use crate::engine::optout::OptOutLookup;
use crate::engine::tokenize::{self, Direction, TokenizeContext, TokenizeError, TokenizePolicy};
use crate::engine::uid2::KeySet;
use crate::stage::kafka::{
    self, ConsumerErrorClass, PartitionRegistry, PartitionSlot, StageContext, TopicPartition,
};
use crate::support::clock::wall_clock_ms;
use crate::support::metrics::{Metrics, ReasonLabel, StatusLabel};

/// Where the stage gets the key set in force (a refreshed operator key set, a file, or a fixed set).
pub trait KeyProvider: Send + Sync {
    fn current(&self) -> Option<Arc<KeySet>>;
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
pub const STATUS_NAMES: [&str; 15] = [
    "success",
    "not_authorized_for_master_key",
    "not_authorized_for_key",
    "not_initialized",
    "invalid_payload",
    "expired_token",
    "keys_not_synced",
    "version_not_supported",
    "invalid_identity_scope",
    "invalid_token_lifetime",
    "domain_or_app_name_check_failed",
    "opted_out",
    "no_token",
    "tokenized",
    "no_raw_uid2",
];

/// Counters of one run, for the summary of `demo` and for tests.
#[derive(Debug, Default)]
pub struct RunCounters {
    pub consumed: AtomicU64,
    pub produced: AtomicU64,
    pub dead_lettered: AtomicU64,
    /// Output records by `uid2-status`, indexed like [`STATUS_NAMES`].
    pub statuses: [AtomicU64; 15],
    /// When set, the consume-to-acknowledge time of every record in microseconds (demo and tests only).
    pub latencies_us: Option<Mutex<Vec<u32>>>,
}

impl RunCounters {
    /// Counters that also keep every record's latency.
    pub fn with_latencies() -> RunCounters {
        RunCounters {
            latencies_us: Some(Mutex::new(Vec::new())),
            ..RunCounters::default()
        }
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

struct Shared {
    config: StageConfig,
    producer: FutureProducer<kafka::Logged>,
    consumer: Arc<StreamConsumer<StageContext<Job>>>,
    keys: Arc<dyn KeyProvider>,
    optouts: Arc<dyn OptOutLookup + Send + Sync>,
    cache: Option<DecryptCache>,
    metrics: Arc<Metrics>,
    counters: Arc<RunCounters>,
    /// The first fatal error, which stops the stage.
    fatal: CancellationToken,
    fatal_reason: Mutex<Option<String>>,
    /// Tokenize direction: set while records wait for keys that can encrypt (logged once per episode).
    waiting_for_keys: std::sync::atomic::AtomicBool,
}

/// The inputs of a run that are not configuration.
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
    let context = StageContext {
        partitions: partitions.clone(),
        drain_timeout: config.drain_timeout,
        metrics: deps.metrics.clone(),
    };
    let consumer: StreamConsumer<StageContext<Job>> = config
        .kafka
        .stage_consumer(&config.group_id)?
        .create_with_context(context)
        .map_err(kafka::creation_error)
        .context("creating the Kafka consumer")?;
    let consumer = Arc::new(consumer);
    let topics: Vec<&str> = config.input_topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .with_context(|| format!("subscribing to {topics:?}"))?;
    let producer: FutureProducer<kafka::Logged> = config
        .kafka
        .producer()?
        .create_with_context(kafka::Logged("stage producer"))
        .map_err(kafka::creation_error)
        .context("creating the Kafka producer")?;
    let shared = Arc::new(Shared {
        cache: (config.enrich && config.direction == Direction::Enrich && config.cache_entries > 0)
            .then(|| DecryptCache::new(config.cache_entries)),
        config: config.clone(),
        producer,
        consumer: consumer.clone(),
        keys: deps.keys,
        optouts: deps.optouts,
        metrics: deps.metrics,
        counters: deps.counters,
        fatal: CancellationToken::new(),
        fatal_reason: Mutex::new(None),
        waiting_for_keys: std::sync::atomic::AtomicBool::new(false),
    });
    tracing::info!(topics = ?config.input_topics, output = %config.output_topic, dlq = %config.dlq_topic, group = %config.group_id, "Stage started.");

    let permits = Arc::new(Semaphore::new(config.max_in_flight.max(1)));
    // A batch that cannot be read was reported: the stage goes on for a moment, so that the partitions
    // that can move do, and then stops, naming the one that did not.
    let mut unreadable: Option<Unreadable> = None;
    let consume_result: anyhow::Result<()> = loop {
        let stop_at = unreadable.as_ref().map(|u| u.seen + UNREADABLE_WATCH);
        let permit = tokio::select! {
            biased;
            () = shutdown.cancelled() => break Ok(()),
            () = shared.fatal.cancelled() => break Err(anyhow!(fatal_reason(&shared))),
            () = sleep_until(stop_at) => break Err(unreadable_batch(&consumer, unreadable.take()).await),
            permit = permits.clone().acquire_owned() => permit.map_err(|_| anyhow!("the in-flight semaphore closed"))?,
        };
        let message = tokio::select! {
            biased;
            () = shutdown.cancelled() => break Ok(()),
            () = shared.fatal.cancelled() => break Err(anyhow!(fatal_reason(&shared))),
            () = sleep_until(stop_at) => break Err(unreadable_batch(&consumer, unreadable.take()).await),
            received = consumer.recv() => match received {
                Ok(m) => m.detach(),
                Err(e) => match kafka::classify_consumer_error(&e) {
                    ConsumerErrorClass::Fatal => break Err(anyhow!(e).context("consuming")),
                    ConsumerErrorClass::UnreadableBatch => {
                        if unreadable.is_none() {
                            unreadable = Some(Unreadable::note(&consumer, e).await);
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
        drop(registry);
    };

    // Stop consuming, let every partition finish what it holds (bounded), then commit and flush.
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
    if shared.fatal.is_cancelled() {
        bail!(fatal_reason(&shared));
    }
    consume_result
}

fn fatal_reason(shared: &Shared) -> String {
    shared
        .fatal_reason
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .unwrap_or_else(|| "fatal error".into())
}

fn stop_fatally(shared: &Shared, reason: String) {
    tracing::error!(reason = %reason, "Stopping the stage.");
    shared
        .fatal_reason
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert(reason);
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

/// Extra headers of an output or dead-letter record, after the input's own.
type ExtraHeaders = Vec<(&'static str, Vec<u8>)>;

/// What one record became. `payload` borrows the input when the request passes unchanged.
enum Outcome<'m> {
    Output {
        payload: std::borrow::Cow<'m, [u8]>,
        status: &'static str,
        member: Option<String>,
    },
    Passthrough,
    DeadLetter {
        reason: &'static str,
    },
    /// Tokenize direction: the keys cannot encrypt now; the record must wait (never go out raw).
    WaitForKeys {
        reason: String,
    },
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
                    Err(reason) => {
                        // Nothing at or after this offset may be stored: stop before storing anything more.
                        store(&shared, &tp, &mut stored_next, acked_next);
                        stop_fatally(&shared, format!("delivery for {}/{} offset {offset} failed: {reason}", tp.0, tp.1));
                        return;
                    }
                }
            }
            job = rx.recv(), if open => match job {
                Some(job) => match process(&shared, job, &mut output_buffer).await {
                    Ok(pending) => deliveries.push_back(pending),
                    Err(reason) => {
                        store(&shared, &tp, &mut stored_next, acked_next);
                        stop_fatally(&shared, reason);
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
    if *stored_next == Some(next) {
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

type PendingDelivery = std::pin::Pin<
    Box<dyn std::future::Future<Output = (i64, OwnedSemaphorePermit, Result<(), String>)> + Send>,
>;

/// Enriches one record and hands its output (or dead letter) to the producer; returns the delivery to
/// await, or a fatal reason.
///
/// `output_buffer` receives the enriched JSON or protobuf body (cleared first); its bytes are handed to
/// the producer, which copies them, before this returns.
async fn process(
    shared: &Arc<Shared>,
    job: Job,
    output_buffer: &mut Vec<u8>,
) -> Result<PendingDelivery, String> {
    let Job {
        message,
        received,
        _permit: permit,
    } = job;
    let offset = message.offset();
    if output_buffer.capacity() > MAX_KEPT_OUTPUT_BUFFER {
        // One huge record should not pin its size for the life of the partition.
        *output_buffer = Vec::new();
    }
    output_buffer.clear();
    let mut outcome = handle_record(shared, &message, output_buffer);
    // Hold the record (and with it its partition; the in-flight bound then stops the consumer) until the
    // keys can encrypt; the stage reports itself not ready meanwhile (see `stage`).
    while let Outcome::WaitForKeys { reason } = &outcome {
        if !shared
            .waiting_for_keys
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::warn!(reason = %reason, "Tokenize: the keys cannot encrypt; holding records until they can.");
        }
        tokio::select! {
            () = shared.fatal.cancelled() => return Err(fatal_reason(shared)),
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        // Only the sharing sender waits for keys, and it writes no buffer.
        outcome = tokenize_record(shared, &message);
    }
    if shared
        .waiting_for_keys
        .swap(false, std::sync::atomic::Ordering::Relaxed)
    {
        tracing::info!("Tokenize: the keys can encrypt again; resuming.");
    }
    let config = &shared.config;
    let (topic, payload, extra): (&str, &[u8], ExtraHeaders) = match &outcome {
        Outcome::Output {
            payload,
            status,
            member,
        } => {
            let mut extra = vec![("uid2-status", status.as_bytes().to_vec())];
            if let Some(member) = member {
                extra.push(("uid2-enrichment", member.as_bytes().to_vec()));
            }
            (&config.output_topic, payload.as_ref(), extra)
        }
        Outcome::Passthrough => (
            &config.output_topic,
            message.payload().unwrap_or_default(),
            Vec::new(),
        ),
        Outcome::DeadLetter { reason } => (
            &config.dlq_topic,
            message.payload().unwrap_or_default(),
            vec![
                ("uid2-error", reason.as_bytes().to_vec()),
                ("uid2-source-topic", message.topic().as_bytes().to_vec()),
                (
                    "uid2-source-partition",
                    message.partition().to_string().into_bytes(),
                ),
                ("uid2-source-offset", offset.to_string().into_bytes()),
            ],
        ),
        Outcome::WaitForKeys { .. } => {
            return Err("internal: a held record reached the producer".into());
        }
    };
    let extra_refs: Vec<(&str, &[u8])> = extra.iter().map(|(k, v)| (*k, v.as_slice())).collect();
    let headers = kafka::headers_with(message.headers(), &extra_refs);
    let mut record: FutureRecord<'_, [u8], [u8]> =
        FutureRecord::to(topic).payload(payload).headers(headers);
    if let Some(key) = message.key() {
        record = record.key(key);
    }
    if let Some(ts) = message.timestamp().to_millis() {
        record = record.timestamp(ts);
    }
    if config.output_partitioning == OutputPartitioning::Same && topic == config.output_topic {
        record = record.partition(message.partition());
    }
    let mut too_large = false;
    let delivery: DeliveryFuture = loop {
        match shared.producer.send_result(record) {
            Ok(delivery) => break delivery,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                // The producer is ahead of the brokers: wait for it (this is the backpressure path).
                shared.metrics.produce_retries.inc();
                record = returned;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge), _))
                if !too_large =>
            {
                // The record outgrew the producer's `message.max.bytes` (librdkafka's default,
                // 1,000,000, is below Kafka's broker default, so an input near 1 MB that grows by its
                // enrichment lands here). Failing would stop the stage on every restart; instead the
                // record is dead-lettered without its payload, which would not fit either: the source
                // headers point at the original in the input topic.
                too_large = true;
                shared
                    .metrics
                    .dead_lettered
                    .get_or_create(&ReasonLabel {
                        reason: "too_large",
                    })
                    .inc();
                let headers = kafka::headers_with(
                    message.headers(),
                    &[
                        ("uid2-error", b"too_large".as_slice()),
                        ("uid2-source-topic", message.topic().as_bytes()),
                        (
                            "uid2-source-partition",
                            message.partition().to_string().as_bytes(),
                        ),
                        ("uid2-source-offset", offset.to_string().as_bytes()),
                    ],
                );
                record = FutureRecord::to(&config.dlq_topic)
                    .payload(&[][..])
                    .headers(headers);
                if let Some(key) = message.key() {
                    record = record.key(key);
                }
            }
            Err((e, _)) => return Err(format!("producing to {topic} failed: {e}")),
        }
    };
    let status_index = match &outcome {
        Outcome::Output { status, .. } if !too_large => {
            STATUS_NAMES.iter().position(|s| s == status)
        }
        _ => None,
    };
    let is_dlq = too_large || matches!(outcome, Outcome::DeadLetter { .. });
    let shared = shared.clone();
    Ok(Box::pin(async move {
        let result = match delivery.await {
            Ok(Ok(_)) => {
                if is_dlq {
                    shared
                        .counters
                        .dead_lettered
                        .fetch_add(1, Ordering::Relaxed);
                } else {
                    shared.metrics.records_out.inc();
                    shared.counters.produced.fetch_add(1, Ordering::Relaxed);
                    if let Some(i) = status_index {
                        shared.counters.statuses[i].fetch_add(1, Ordering::Relaxed);
                    }
                }
                let latency = received.elapsed();
                shared.metrics.stage_seconds.observe(latency.as_secs_f64());
                if let Some(samples) = &shared.counters.latencies_us {
                    let us = u32::try_from(latency.as_micros()).unwrap_or(u32::MAX);
                    samples.lock().unwrap_or_else(|e| e.into_inner()).push(us);
                }
                Ok(())
            }
            Ok(Err((e, _))) => Err(e.to_string()),
            Err(_) => Err("the producer was dropped".to_string()),
        };
        (offset, permit, result)
    }))
}

/// What to do with one record, by the stage's direction.
fn handle_record<'m>(
    shared: &Shared,
    message: &'m OwnedMessage,
    output_buffer: &'m mut Vec<u8>,
) -> Outcome<'m> {
    if !shared.config.enrich {
        return Outcome::Passthrough;
    }
    match shared.config.direction {
        Direction::Enrich => enrich_record(shared, message, output_buffer),
        Direction::Tokenize => tokenize_record(shared, message),
    }
}

/// An output record, counted under its `uid2-status`.
fn output<'m>(
    shared: &Shared,
    payload: std::borrow::Cow<'m, [u8]>,
    status: &'static str,
    member: Option<String>,
) -> Outcome<'m> {
    shared
        .metrics
        .request_status
        .get_or_create(&StatusLabel { status })
        .inc();
    Outcome::Output {
        payload,
        status,
        member,
    }
}

fn dead_letter(shared: &Shared, reason: &'static str) -> Outcome<'static> {
    shared
        .metrics
        .dead_lettered
        .get_or_create(&ReasonLabel { reason })
        .inc();
    Outcome::DeadLetter { reason }
}

/// The sharing sender: raw UID2s at the configured pointers become tokens with fresh random nonces.
fn tokenize_record<'m>(shared: &Shared, message: &'m OwnedMessage) -> Outcome<'m> {
    let Some(payload) = message.payload() else {
        return dead_letter(shared, "no_payload");
    };
    let keys = shared.keys.current();
    let ctx = TokenizeContext {
        keys: keys.as_deref(),
        now_ms: wall_clock_ms(),
    };
    let mut nonces = crate::support::clock::token_nonce;
    let started = Instant::now();
    let result = tokenize::tokenize(payload, &ctx, &shared.config.tokenize, &mut nonces);
    shared
        .metrics
        .enrich_seconds
        .observe(started.elapsed().as_secs_f64());
    match result {
        Ok(tokenized) => output(shared, tokenized.output, tokenized.status.as_str(), None),
        Err(TokenizeError::Malformed(malformed)) => dead_letter(shared, malformed.reason),
        Err(TokenizeError::Keys(e)) => Outcome::WaitForKeys {
            reason: e.to_string(),
        },
    }
}

/// An enriched JSON or protobuf request is written to `output_buffer` (empty on entry), and the outcome
/// borrows it.
fn enrich_record<'m>(
    shared: &Shared,
    message: &'m OwnedMessage,
    output_buffer: &'m mut Vec<u8>,
) -> Outcome<'m> {
    let Some(payload) = message.payload() else {
        return dead_letter(shared, "no_payload");
    };
    let keys = shared.keys.current();
    let ctx = enrich::Context {
        keys: enrich::Keys::single(keys.as_deref()),
        optouts: shared.optouts.as_ref(),
        cache: shared.cache.as_ref(),
        now_ms: wall_clock_ms(),
    };
    let started = Instant::now();
    let format = shared.config.format_for(message.topic());
    let result = enrich::enrich_into(payload, format, &ctx, &shared.config.policy, output_buffer);
    shared
        .metrics
        .enrich_seconds
        .observe(started.elapsed().as_secs_f64());
    match result {
        Ok(enriched) => {
            for t in &enriched.tokens {
                shared
                    .metrics
                    .token_status
                    .get_or_create(&StatusLabel {
                        status: t.decryption.status.as_str(),
                    })
                    .inc();
                if t.decryption.status == crate::engine::uid2::Status::OptedOut {
                    shared.metrics.opted_out.inc();
                }
            }
            let status = enriched.status_header();
            output(shared, enriched.output, status, enriched.member_json)
        }
        Err(malformed) => dead_letter(shared, malformed.reason),
    }
}
