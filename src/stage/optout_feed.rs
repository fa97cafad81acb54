//! Where opt-outs come from, for the pure set in `optout`: a file (`replay --optouts FILE`), the
//! compacted `[optout] topic` every instance follows, and the webhook's publisher that writes to it.
//!
//! # The topic
//! Key: the raw UID2 as standard base64 (44 characters); value: the opt-out time in Unix seconds as
//! ASCII digits (`1767225600`). Compaction keeps the last record of each key; the webhook writes the
//! later of the time it was given and the time this instance already holds, so the kept record carries
//! the latest opt-out. Tombstones (null values) are ignored: opt-outs are kept indefinitely.
//!
//! # The follower
//! An assign-only consumer (it joins no group and commits nothing): it assigns every partition of the
//! topic from the beginning, reads up to the high watermarks found when it started (or to
//! end-of-partition) into a private set, moves that set into the live store, reports *caught up*, and
//! keeps following, inserting live records directly. It runs on a thread of its own (`poll` loop) so the
//! initial load does not compete with the tokio workers; librdkafka reconnects after broker blips, and the
//! loop logs and carries on.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::engine::optout::{
    Applied, LineFormat, LiveOptOuts, OptOutRecord, OptOutSet, RawUid2, parse_line,
    parse_optout_secs,
};
use crate::stage::kafka::{self, KafkaClients, Logged};
use crate::stage::produce::{Backpressure, send_with_backpressure};
use crate::support::metrics::{Metrics, OutcomeLabel};

// ------------------------------------------------------------------------------------------------
// Files
// ------------------------------------------------------------------------------------------------

/// Loads an opt-out file: CSV `raw_uid2,unix_seconds` (an optional header line first) or JSON Lines
/// `{"user":…,"optouttime":…}` (also `raw_uid2`/`unix_seconds`), decided by the first non-blank line.
/// A raw UID2 listed more than once keeps its latest time. `.gz` is not read: decompress it first.
///
/// # Errors
/// The file cannot be read, is compressed, or a line is not an opt-out record; the message names the
/// file and the line.
pub fn load_file(path: &Path) -> anyhow::Result<OptOutSet> {
    let file =
        File::open(path).with_context(|| format!("opening the opt-out file {}", path.display()))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    if reader
        .fill_buf()
        .with_context(|| format!("reading the opt-out file {}", path.display()))?
        .starts_with(&[0x1f, 0x8b])
    {
        anyhow::bail!(
            "the opt-out file {} is gzip-compressed; decompress it first (gunzip -k)",
            path.display()
        );
    }
    load_lines(reader, &path.display().to_string())
}

/// [`load_file`] over any reader; `origin` names it in errors.
///
/// # Errors
/// As [`load_file`].
pub fn load_lines(mut reader: impl BufRead, origin: &str) -> anyhow::Result<OptOutSet> {
    let mut set = OptOutSet::new();
    let mut batch: Vec<OptOutRecord> = Vec::with_capacity(BATCH);
    let mut line = String::new();
    let mut format = None;
    for number in 1.. {
        line.clear();
        let n = reader.read_line(&mut line).with_context(|| {
            format!("{origin}:{number}: reading the opt-out file (is it UTF-8?)")
        })?;
        if n == 0 {
            break;
        }
        let first = format.is_none();
        if first && line.trim().is_empty() {
            continue;
        }
        let f = *format.get_or_insert_with(|| LineFormat::detect(&line));
        match parse_line(f, &line, first) {
            Ok(Some(record)) => {
                batch.push(record);
                if batch.len() == BATCH {
                    set.insert_batch(&batch, |_| {});
                    batch.clear();
                }
            }
            Ok(None) => {}
            Err(e) => anyhow::bail!(
                "{origin}:{number}: {e} (an opt-out file holds `raw_uid2,unix_seconds` lines, or JSON Lines {{\"user\":\"<raw UID2>\",\"optouttime\":<unix seconds>}})"
            ),
        }
    }
    set.insert_batch(&batch, |_| {});
    Ok(set)
}

/// Records applied together (see [`OptOutSet::insert_batch`]).
const BATCH: usize = 4096;

/// [`load_lines`] over bytes in memory (tests, benches).
///
/// # Errors
/// As [`load_file`].
pub fn load_bytes(bytes: &[u8], origin: &str) -> anyhow::Result<OptOutSet> {
    load_lines(bytes, origin)
}

// ------------------------------------------------------------------------------------------------
// Kafka
// ------------------------------------------------------------------------------------------------

/// What the follower and the publisher need from the settings.
#[derive(Clone, Debug)]
pub struct FeedConfig {
    /// The brokers and pass-through properties (`[kafka.client]`, `[kafka.consumer]`, `[kafka.producer]`).
    pub kafka: KafkaClients,
    /// `[kafka] group_id`: the follower names itself after it (librdkafka wants a group id even for a
    /// consumer that only assigns); it never joins that group nor commits.
    pub group_id: String,
    pub topic: String,
}

impl FeedConfig {
    pub fn from_settings(s: &Settings) -> FeedConfig {
        FeedConfig {
            kafka: KafkaClients::new(&s.kafka),
            group_id: s.kafka.group_id.clone(),
            topic: s.optout.topic.clone(),
        }
    }
}

/// Creates the topic when it is missing: compacted, with the broker's default partition count and
/// replication. An existing topic is left as it is (its policy is the operator's business). Failing to
/// create it is logged, not fatal: the follower waits for the topic to appear.
pub async fn ensure_topic(cfg: &FeedConfig) {
    let admin: AdminClient<Logged> = match cfg
        .kafka
        .admin()
        .create_with_context(Logged("opt-out admin"))
    {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %kafka::scrub(&e.to_string()), "Cannot create an admin client to check the opt-out topic.");
            return;
        }
    };
    let opts = AdminOptions::new()
        .operation_timeout(Some(Timeout::After(Duration::from_secs(10))))
        .request_timeout(Some(Timeout::After(Duration::from_secs(15))));
    // Broker defaults first (-1, KIP-464); a broker that wants numbers gets one partition, replicated
    // as its default allows; a broker that refuses the compaction setting gets the topic without it.
    let attempts: [(i32, i32, bool); 3] = [(-1, -1, true), (1, 1, true), (1, 1, false)];
    for (partitions, replication, compact) in attempts {
        let mut topic = NewTopic::new(&cfg.topic, partitions, TopicReplication::Fixed(replication));
        if compact {
            topic = topic.set("cleanup.policy", "compact");
        }
        match admin.create_topics([&topic], &opts).await {
            Ok(results) => match results.into_iter().next() {
                Some(Ok(_)) => {
                    tracing::info!(topic = %cfg.topic, partitions, replication, compact, "Created the opt-out topic.");
                    return;
                }
                Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) | None => return,
                Some(Err((_, code))) => {
                    tracing::debug!(topic = %cfg.topic, %code, partitions, replication, compact, "Creating the opt-out topic was refused; trying simpler settings.");
                }
            },
            Err(e) => {
                tracing::warn!(topic = %cfg.topic, error = %e, "Cannot create the opt-out topic; create it yourself (cleanup.policy=compact). Waiting for it to appear.");
                return;
            }
        }
    }
    tracing::warn!(topic = %cfg.topic, "The broker refused to create the opt-out topic; create it yourself (cleanup.policy=compact). Waiting for it to appear.");
}

/// The follower's consumer: partitions assigned, never subscribed, so it joins no group and commits
/// nothing (every start reads from the beginning); end-of-partition events for the caught-up signal;
/// short fetch waits so opt-outs arrive quickly.
pub fn follower_config(cfg: &FeedConfig) -> ClientConfig {
    let mut c = cfg
        .kafka
        .reader(&format!("{}-optout-follower", cfg.group_id));
    c.set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "50")
        // The initial load reads the whole topic: large fetches (records are ~60 bytes).
        .set("max.partition.fetch.bytes", "16777216")
        .set("fetch.max.bytes", "67108864");
    c.remove("partition.assignment.strategy");
    c
}

/// The follower's client context: end-of-partition is how it learns it caught up, not an error, so it
/// stays out of the error log; other client errors are logged as warnings (librdkafka retries them).
pub struct FollowerContext;

impl rdkafka::client::ClientContext for FollowerContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        kafka::client_log().log("opt-out follower", level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let eof = matches!(error, KafkaError::PartitionEOF(_))
            || error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF);
        if !eof {
            kafka::client_log().error("opt-out follower", &error, reason);
        }
    }
}

impl rdkafka::consumer::ConsumerContext for FollowerContext {}

type FollowerConsumer = BaseConsumer<FollowerContext>;

/// A running follower.
pub struct Follower {
    caught_up: watch::Receiver<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Follower {
    /// Resolves once the set holds everything the topic held when the follower started; never, if the
    /// follower stopped before that.
    pub async fn wait_caught_up(&mut self) {
        if self.caught_up.wait_for(|c| *c).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    pub fn is_caught_up(&self) -> bool {
        *self.caught_up.borrow()
    }

    /// A receiver that turns true once caught up.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.caught_up.clone()
    }

    /// Waits for the thread after `stop` was cancelled.
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts following the topic into `store` until `stop` is cancelled.
///
/// # Errors
/// The consumer cannot be created (a bad `[kafka.consumer]` property).
pub fn spawn_follower(
    cfg: &FeedConfig,
    store: Arc<LiveOptOuts>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> anyhow::Result<Follower> {
    let consumer: FollowerConsumer = follower_config(cfg)
        .create_with_context(FollowerContext)
        .map_err(kafka::creation_error)
        .with_context(|| {
            format!(
                "creating the opt-out follower for topic {} (check [kafka.consumer])",
                cfg.topic
            )
        })?;
    let (tx, rx) = watch::channel(false);
    let topic = cfg.topic.clone();
    let thread = std::thread::Builder::new()
        .name("optout-follower".into())
        .spawn(move || follow(&consumer, &topic, &store, &metrics, &stop, &tx))
        .context("starting the opt-out follower thread")?;
    Ok(Follower {
        caught_up: rx,
        thread: Some(thread),
    })
}

const METADATA_TIMEOUT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(100);
const REFRESH_PARTITIONS: Duration = Duration::from_secs(30);
/// After the ends are reached, how long live records may keep the follower from announcing.
const DRAIN_MAX: Duration = Duration::from_secs(2);

/// Where the follower thread reports to: the store it fills, the metrics, and the caught-up flag.
struct FollowTarget<'a> {
    topic: &'a str,
    store: &'a LiveOptOuts,
    metrics: &'a Metrics,
    caught_up: &'a watch::Sender<bool>,
}

fn follow(
    consumer: &FollowerConsumer,
    topic: &str,
    store: &LiveOptOuts,
    metrics: &Metrics,
    stop: &CancellationToken,
    caught_up: &watch::Sender<bool>,
) {
    let started = Instant::now();
    // 1. Find the partitions and where they end now, and read them from the beginning.
    let Some(ends) = find_partitions(consumer, topic, stop) else {
        return;
    };
    if !assign_from_beginning(consumer, topic, &ends, stop) {
        return;
    }
    let mut assigned: Vec<i32> = ends.iter().map(|range| range.partition).collect();
    // Partitions still to read up to their end-at-start; empty ones are done already.
    let mut pending: HashMap<i32, i64> = ends
        .iter()
        .filter(|range| range.high > range.low)
        .map(|range| (range.partition, range.high))
        .collect();
    let total: i64 = ends.iter().map(|range| range.high - range.low).sum();
    tracing::info!(%topic, partitions = ends.len(), records = total, "Loading the opt-out set.");
    let mut load = Load::new(
        FollowTarget {
            topic,
            store,
            metrics,
            caught_up,
        },
        started,
    );

    // 2. Read, and keep reading. Once every partition reached its end-at-start (or end-of-partition),
    // what was already fetched is applied before announcing: a poll that comes back empty, or at most
    // DRAIN_MAX of live records. (tansu 0.6.0 reports watermarks per batch, so the end found at start can
    // lie inside the last batch; the rest of that batch is in the local queue by then.)
    let mut drain_started: Option<Instant> = None;
    let mut last_refresh = Instant::now();
    while !stop.is_cancelled() {
        if pending.is_empty() {
            let since = *drain_started.get_or_insert_with(Instant::now);
            if since.elapsed() > DRAIN_MAX {
                load.apply_batch();
                load.announce();
            }
        }
        match consumer.poll(POLL) {
            Some(Ok(msg)) => {
                load.record(&msg);
                if let Some(end) = pending.get(&msg.partition())
                    && msg.offset() + 1 >= *end
                {
                    pending.remove(&msg.partition());
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                pending.remove(&p);
            }
            None => {
                load.apply_batch();
                if pending.is_empty() {
                    load.announce();
                }
            }
            Some(Err(e)) => load.consumer_error(&e),
        }
        if load.counts.due() || pending.is_empty() {
            load.counts.flush(metrics, store.len());
        }
        if last_refresh.elapsed() > REFRESH_PARTITIONS {
            last_refresh = Instant::now();
            metrics.optout_set_size.set(store.len() as i64);
            add_new_partitions(consumer, topic, &mut assigned);
        }
    }
}

/// The topic's partitions and their offsets now, retried until it can be read; `None` once stopped.
fn find_partitions(
    consumer: &FollowerConsumer,
    topic: &str,
    stop: &CancellationToken,
) -> Option<Vec<kafka::PartitionRange>> {
    let mut logged = Instant::now() - Duration::from_secs(60);
    loop {
        if stop.is_cancelled() {
            return None;
        }
        match kafka::partition_ranges(consumer, topic, METADATA_TIMEOUT) {
            Ok(ends) => return Some(ends),
            Err(e) => {
                if logged.elapsed() > Duration::from_secs(10) {
                    tracing::warn!(%topic, reason = %e, "Waiting for the opt-out topic; not ready until it is read.");
                    logged = Instant::now();
                }
                // Polling (rather than sleeping) hands librdkafka's queued errors and log lines to the
                // context: a refused password or certificate is reported now, not once the topic is read.
                let _ = consumer.poll(Duration::from_millis(500));
            }
        }
    }
}

/// Assigns every partition from its beginning, retried until it works; false once stopped.
fn assign_from_beginning(
    consumer: &FollowerConsumer,
    topic: &str,
    ends: &[kafka::PartitionRange],
    stop: &CancellationToken,
) -> bool {
    let mut tpl = TopicPartitionList::new();
    for range in ends {
        let _ = tpl.add_partition_offset(topic, range.partition, Offset::Beginning);
    }
    while let Err(e) = consumer.assign(&tpl) {
        tracing::error!(%topic, error = %e, "Cannot assign the opt-out topic's partitions; not ready, retrying.");
        std::thread::sleep(Duration::from_secs(1));
        if stop.is_cancelled() {
            return false;
        }
    }
    true
}

/// The follower's state while it reads: the initial load goes into a set of its own (no locks, batched
/// inserts) that moves into the live store when caught up; live records after that go straight into the
/// store.
struct Load<'a> {
    target: FollowTarget<'a>,
    started: Instant,
    building: Option<OptOutSet>,
    batch: Vec<OptOutRecord>,
    counts: OutcomeCounts,
    /// Set once a batch of the topic cannot be read: opt-outs behind it never arrive, so the set is not
    /// caught up again until a restart reads past it.
    unreadable: bool,
}

impl<'a> Load<'a> {
    fn new(target: FollowTarget<'a>, started: Instant) -> Load<'a> {
        Load {
            target,
            started,
            building: Some(OptOutSet::new()),
            batch: Vec::with_capacity(BATCH),
            counts: OutcomeCounts::default(),
            unreadable: false,
        }
    }

    fn apply_batch(&mut self) {
        if let Some(set) = self.building.as_mut() {
            let counts = &mut self.counts;
            set.insert_batch(&self.batch, |a| counts.add(applied_outcome(a)));
        }
        self.batch.clear();
    }

    /// Hands the initial load to the live store and reports the set caught up (once, and never while a
    /// batch could not be read).
    fn announce(&mut self) {
        let FollowTarget {
            topic,
            store,
            metrics,
            caught_up,
        } = &self.target;
        if let Some(set) = self.building.take() {
            store.absorb(set);
        }
        if !*caught_up.borrow() && !self.unreadable {
            metrics.optout_caught_up.set(1);
            metrics.optout_set_size.set(store.len() as i64);
            tracing::info!(%topic, entries = store.len(), seconds = self.started.elapsed().as_secs_f64(), "Opt-out set loaded; following the topic live.");
            let _ = caught_up.send(true);
        }
    }

    /// One opt-out record: batched during the initial load, applied at once after it.
    fn record(&mut self, msg: &rdkafka::message::BorrowedMessage<'_>) {
        let outcome = match (self.building.is_some(), decode(msg.key(), msg.payload())) {
            (true, Ok(record)) => {
                self.batch.push(record);
                if self.batch.len() == BATCH {
                    self.apply_batch();
                }
                None
            }
            (false, Ok(record)) => Some(applied_outcome(
                self.target.store.insert(&record.raw_uid2, record.secs),
            )),
            (_, Err(outcome)) => Some(outcome),
        };
        if let Some(outcome) = outcome {
            self.counts.add(outcome);
            if outcome == "invalid" {
                tracing::warn!(topic = %self.target.topic, partition = msg.partition(), offset = msg.offset(), "Skipped an opt-out record that is not <raw UID2 base64> = <unix seconds>.");
            }
        }
    }

    /// Broker blips: librdkafka reconnects and resumes fetching on its own. The log is rate-limited per
    /// cause. An unreadable batch is an error, and the stage is not ready while opt-outs behind it are
    /// missing.
    fn consumer_error(&mut self, e: &KafkaError) {
        let topic = self.target.topic;
        kafka::client_log().error("opt-out follower", e, &format!("consuming {topic}"));
        if kafka::classify_consumer_error(e) == kafka::ConsumerErrorClass::UnreadableBatch
            && !self.unreadable
        {
            self.unreadable = true;
            self.target.metrics.optout_caught_up.set(0);
            let _ = self.target.caught_up.send(false);
        }
    }
}

/// Record outcomes counted locally and added to the metrics in bulk: a metric family lookup per record
/// would cost more than applying the record during the initial load.
#[derive(Default)]
struct OutcomeCounts {
    counts: Vec<(&'static str, u64)>,
    pending: u64,
}

impl OutcomeCounts {
    fn add(&mut self, outcome: &'static str) {
        self.pending += 1;
        match self.counts.iter_mut().find(|(o, _)| *o == outcome) {
            Some((_, n)) => *n += 1,
            None => self.counts.push((outcome, 1)),
        }
    }

    fn due(&self) -> bool {
        self.pending >= 65_536
    }

    fn flush(&mut self, metrics: &Metrics, entries: u64) {
        if self.pending == 0 {
            return;
        }
        for (outcome, n) in self.counts.iter_mut().filter(|(_, n)| *n > 0) {
            metrics
                .optout_records
                .get_or_create(&OutcomeLabel { outcome })
                .inc_by(*n);
            *n = 0;
        }
        self.pending = 0;
        metrics
            .optout_set_size
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
    }
}

/// Partitions added to the topic after start are followed from their beginning.
fn add_new_partitions(consumer: &FollowerConsumer, topic: &str, assigned: &mut Vec<i32>) {
    let Ok(metadata) = consumer.fetch_metadata(Some(topic), METADATA_TIMEOUT) else {
        return;
    };
    let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return;
    };
    let mut tpl = TopicPartitionList::new();
    for p in t.partitions() {
        if !assigned.contains(&p.id()) {
            let _ = tpl.add_partition_offset(topic, p.id(), Offset::Beginning);
        }
    }
    if tpl.count() == 0 {
        return;
    }
    match consumer.incremental_assign(&tpl) {
        Ok(()) => {
            assigned.extend(tpl.elements().iter().map(|e| e.partition()));
            tracing::info!(%topic, added = tpl.count(), "Following new opt-out partitions.");
        }
        Err(e) => tracing::warn!(%topic, error = %e, "Cannot follow new opt-out partitions."),
    }
}

fn applied_outcome(applied: Applied) -> &'static str {
    match applied {
        Applied::New => "new",
        Applied::Later => "later",
        Applied::Unchanged => "unchanged",
    }
}

/// Applies one topic record; returns the metric outcome.
#[cfg(test)]
fn apply(key: Option<&[u8]>, value: Option<&[u8]>, store: &LiveOptOuts) -> &'static str {
    match decode(key, value) {
        Ok(r) => applied_outcome(store.insert(&r.raw_uid2, r.secs)),
        Err(outcome) => outcome,
    }
}

/// One topic record as an opt-out, or the metric outcome of a record that is not one.
fn decode(key: Option<&[u8]>, value: Option<&[u8]>) -> Result<OptOutRecord, &'static str> {
    let Some(key) = key else {
        return Err("invalid");
    };
    // The key is the base64 text; raw bytes (32/33) are taken too.
    let raw = match std::str::from_utf8(key) {
        Ok(text) if text.len() == crate::engine::optout::RAW_UID2_TEXT_LEN => RawUid2::parse(text),
        _ => RawUid2::from_bytes(key),
    };
    let Some(raw_uid2) = raw else {
        return Err("invalid");
    };
    let Some(value) = value else {
        return Err("tombstone_ignored");
    };
    let Some(secs) = std::str::from_utf8(value)
        .ok()
        .and_then(|v| parse_optout_secs(v).ok())
    else {
        return Err("invalid");
    };
    Ok(OptOutRecord { raw_uid2, secs })
}

/// Writes opt-outs to the topic for the webhook: an idempotent producer; a publish returns only once
/// every record was acknowledged (acks=all).
pub struct Publisher {
    producer: FutureProducer<Logged>,
    topic: String,
}

/// How long a webhook call waits for the broker before answering 503.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

impl Publisher {
    /// # Errors
    /// A `[kafka.producer]` property the stage owns, or the producer cannot be created.
    pub fn new(cfg: &FeedConfig) -> anyhow::Result<Publisher> {
        let mut c = cfg
            .kafka
            .producer()
            .context("the opt-out publisher's [kafka.producer] properties")?;
        c.set("linger.ms", "1").set(
            "message.timeout.ms",
            PUBLISH_TIMEOUT.as_millis().to_string(),
        );
        let producer = c
            .create_with_context(Logged("opt-out publisher"))
            .map_err(kafka::creation_error)
            .with_context(|| {
                format!(
                    "creating the opt-out publisher for topic {} (check [kafka.producer])",
                    cfg.topic
                )
            })?;
        Ok(Publisher {
            producer,
            topic: cfg.topic.clone(),
        })
    }

    /// Writes the records and waits for every acknowledgement.
    ///
    /// # Errors
    /// A record was not acknowledged (the broker is unreachable, the topic missing, a timeout); some of
    /// the others may have been written — the caller answers 503 and the sender retries.
    pub async fn publish(&self, records: &[OptOutRecord]) -> Result<(), String> {
        let mut deliveries = Vec::with_capacity(records.len());
        for r in records {
            let key = r.raw_uid2.to_base64();
            let value = r.secs.to_string();
            let record = FutureRecord::to(&self.topic).key(&key).payload(&value);
            let wait = Backpressure {
                pause: Duration::from_millis(5),
                deadline: Some(Instant::now() + PUBLISH_TIMEOUT),
            };
            match send_with_backpressure(&self.producer, record, wait, || {}).await {
                Ok(d) => deliveries.push(d),
                Err(e) => return Err(format!("queueing an opt-out record: {e}")),
            }
        }
        for d in deliveries {
            match d.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(format!("the broker did not acknowledge: {e}")),
                Err(_) => return Err("the producer went away".to_string()),
            }
        }
        Ok(())
    }
}

impl crate::stage::server::OptOutPublisher for Publisher {
    fn publish<'a>(
        &'a self,
        records: &'a [OptOutRecord],
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(Publisher::publish(self, records))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID_32: &str = "ywsvDNINiZOVSsfkHpLpSJzXzhr6Jx9Z/4Q0+lsEUvM=";
    const UID_33: &str = "BFOsW2SkK0egqbfyiALtpti5G/cG+PcEvjkoHl56rEV8";

    #[test]
    fn files_load_either_format_and_errors_name_the_line() {
        let csv = format!(
            "\nraw_uid2,unix_seconds\n{UID_32},1767225600\n\n{UID_33},1767225601\n{UID_32},1767225599\n"
        );
        let set = load_bytes(csv.as_bytes(), "a.csv").unwrap();
        assert_eq!(set.len(), 2);
        assert_eq!(
            set.get(&RawUid2::parse(UID_32).unwrap()),
            Some(1_767_225_600)
        );
        let jsonl = format!(
            "{{\"user\":\"{UID_32}\",\"optouttime\":1767225600}}\n{{\"raw_uid2\":\"{UID_33}\",\"unix_seconds\":1767225601}}"
        );
        let set = load_bytes(jsonl.as_bytes(), "a.jsonl").unwrap();
        assert_eq!(
            set.get(&RawUid2::parse(UID_33).unwrap()),
            Some(1_767_225_601)
        );
        let bad = format!("{UID_32},1767225600\n{UID_33},17672256\n");
        let e = load_bytes(bad.as_bytes(), "b.csv").unwrap_err().to_string();
        assert!(
            e.starts_with("b.csv:2: the opt-out time 17672256 is before 2020"),
            "{e}"
        );
        assert!(!e.contains(UID_33), "raw UID2s are not echoed: {e}");
    }

    #[test]
    fn gzip_files_are_refused_with_the_fix() {
        let path = std::env::temp_dir().join(format!("optouts-{}.csv.gz", std::process::id()));
        std::fs::write(&path, [0x1f, 0x8b, 8, 0]).unwrap();
        let e = load_file(&path).unwrap_err().to_string();
        let _ = std::fs::remove_file(&path);
        assert!(e.contains("gunzip"), "{e}");
        let e = load_file(Path::new("/nonexistent/optouts.csv")).unwrap_err();
        assert!(format!("{e:#}").contains("/nonexistent/optouts.csv"));
    }

    #[test]
    fn topic_records_apply_latest_wins_and_ignore_tombstones() {
        let store = LiveOptOuts::new();
        let k = UID_32.as_bytes();
        assert_eq!(apply(Some(k), Some(b"1767225600"), &store), "new");
        assert_eq!(apply(Some(k), Some(b"1767225500"), &store), "unchanged");
        assert_eq!(apply(Some(k), Some(b"1767225700"), &store), "later");
        assert_eq!(apply(Some(k), None, &store), "tombstone_ignored");
        assert_eq!(
            store.get(&RawUid2::parse(UID_32).unwrap()),
            Some(1_767_225_700)
        );
        let raw = RawUid2::parse(UID_33).unwrap();
        assert_eq!(
            apply(Some(raw.as_bytes()), Some(b"1767225600"), &store),
            "new"
        );
        assert_eq!(
            apply(Some(b"short"), Some(b"1767225600"), &store),
            "invalid"
        );
        assert_eq!(apply(None, Some(b"1767225600"), &store), "invalid");
        assert_eq!(apply(Some(k), Some(b"soon"), &store), "invalid");
        assert_eq!(store.len(), 2);
    }
}
