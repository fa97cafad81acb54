//! `uid2-enricher verify`: a kgo-verifier/Jepsen-style check of what the stage did to a stream. It reads
//! the input, output and dead-letter topics from the beginning (assigned partitions, no consumer group,
//! nothing committed), matches records by request id and reports, per input partition: records in, lost
//! (in neither the output nor the dead-letter topic), duplicated (delivered more than once, with the
//! largest multiplicity) and out-of-order first deliveries.
//!
//! # Which order is guaranteed
//! A partition task produces its records in input order through one idempotent producer, and the
//! producer keeps the order of the records it sends to one partition. Output records go to the output
//! partition of their key (`OutputPartitioning::Key`) or to the input's partition number
//! (`OutputPartitioning::Same`). So the contract is: **for two records of the same input partition
//! whose first deliveries landed in the same output (or dead-letter) partition, the first delivery of the
//! earlier input comes first.** Redeliveries after a restart or rebalance come later in the partition and
//! are duplicates, not reorderings. Records of different input partitions are never compared.
//!
//! # Request ids
//! The id of a record is, in this order: the JSON value at `--id-field` (a JSON pointer, `/id` by
//! default) when the payload is a JSON object; field 1 (`BidRequest.id`) when the payload is a protobuf
//! message whose field 1 is UTF-8; the record key; and for a record with none of those, its coordinates
//! `topic/partition@offset`. A dead letter names its source in `uid2-source-*` headers and is matched by
//! those coordinates first.
//! Enrichment keeps the id and dead-lettering keeps the payload and key, so input, output and dead
//! letter agree on it.
//!
//! The analysis ([`analyze`]) is pure; [`read_topic`] and [`verify`] do the Kafka I/O (rdkafka).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use crate::stage::headers;
use crate::stage::kafka::{self, KafkaClients, Logged, PartitionRange, PartitionRangeError};

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub cluster: crate::stage::kafka::ClusterArgs,
    /// An input topic of the stage (repeat for several).
    #[arg(long, required = true)]
    pub input: Vec<String>,
    /// The stage's output topic.
    #[arg(long)]
    pub output: String,
    /// The stage's dead-letter topic.
    #[arg(long)]
    pub dlq: String,
    /// JSON pointer of the request id in a JSON payload (protobuf payloads use field 1; otherwise the
    /// record key).
    #[arg(long, default_value = "/id")]
    pub id_field: String,
    /// Give up reading one topic after this many seconds (connecting and its metadata included).
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Why a verification could not run (not what it found: that is the [`Report`]).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("creating a Kafka consumer for {brokers}: {reason}")]
    Client { brokers: String, reason: String },
    #[error(
        "reading the metadata of topic {topic} (is the broker reachable, and does the topic exist?)"
    )]
    Metadata {
        topic: String,
        source: rdkafka::error::KafkaError,
    },
    #[error("topic {0} does not exist or has no partitions")]
    NoSuchTopic(String),
    #[error("reading topic {topic}")]
    Read {
        topic: String,
        source: rdkafka::error::KafkaError,
    },
}

/// One record as the verifier sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub id: String,
    pub partition: i32,
    pub offset: i64,
    /// A dead letter's source, `topic/partition@offset` from its `uid2-source-*` headers: it names the
    /// input record exactly, whatever the payload (a too-large record is dead-lettered without one).
    pub source: Option<String>,
}

/// What the verifier found for one input partition.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PartitionReport {
    pub topic: String,
    pub partition: i32,
    /// Records in the input partition.
    pub input: u64,
    /// Distinct inputs with an output record (first deliveries).
    pub output: u64,
    /// Distinct inputs with a dead letter.
    pub dead_lettered: u64,
    /// Inputs in neither the output nor the dead-letter topic.
    pub lost: u64,
    /// Deliveries beyond the first (output and dead-letter together).
    pub duplicates: u64,
    /// Inputs delivered more than once.
    pub duplicated_ids: u64,
    /// The most deliveries of one input.
    pub max_multiplicity: u64,
    /// First deliveries that came after the first delivery of a later input of the same input partition
    /// in the same output (or dead-letter) partition.
    pub out_of_order: u64,
}

/// The verdict over all partitions, with a few example ids of what went wrong.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    pub partitions: Vec<PartitionReport>,
    pub input: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub max_multiplicity: u64,
    pub out_of_order: u64,
    /// Output or dead-letter records whose id is not in the input (another run's records, or a bug).
    pub unexpected: u64,
    /// Input records sharing an id with an earlier input record (they are verified as one).
    pub input_id_collisions: u64,
    /// Records of the output and dead-letter topics below their low watermark (deleted by retention),
    /// which the verifier cannot see: when not 0, losses and reorderings may be the broker's deletions.
    pub unreadable: i64,
    pub lost_examples: Vec<String>,
    pub out_of_order_examples: Vec<String>,
}

impl Report {
    /// Nothing lost and per-partition order kept (duplicates are allowed: the stage is at-least-once).
    pub fn ok(&self) -> bool {
        self.lost == 0 && self.out_of_order == 0
    }

    /// A table for people.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<28} {:>5} {:>9} {:>9} {:>8} {:>6} {:>10} {:>8} {:>12}",
            "input topic",
            "part",
            "input",
            "output",
            "dlq",
            "lost",
            "duplicates",
            "max_mult",
            "out_of_order"
        );
        for p in &self.partitions {
            let _ = writeln!(
                s,
                "{:<28} {:>5} {:>9} {:>9} {:>8} {:>6} {:>10} {:>8} {:>12}",
                p.topic,
                p.partition,
                p.input,
                p.output,
                p.dead_lettered,
                p.lost,
                p.duplicates,
                p.max_multiplicity,
                p.out_of_order
            );
        }
        let _ = writeln!(
            s,
            "total: {} input, {} lost, {} duplicates (max multiplicity {}), {} out of order, {} unexpected, {} input id collisions",
            self.input,
            self.lost,
            self.duplicates,
            self.max_multiplicity,
            self.out_of_order,
            self.unexpected,
            self.input_id_collisions
        );
        if self.unreadable > 0 {
            let _ = writeln!(
                s,
                "warning: {} output/dead-letter records were already deleted by the broker (low watermark > 0); losses and reorderings may be those deletions",
                self.unreadable
            );
        }
        if !self.lost_examples.is_empty() {
            let _ = writeln!(s, "lost, e.g.: {}", self.lost_examples.join(", "));
        }
        if !self.out_of_order_examples.is_empty() {
            let _ = writeln!(
                s,
                "out of order, e.g.: {}",
                self.out_of_order_examples.join(", ")
            );
        }
        let _ = writeln!(
            s,
            "verdict: {}",
            if self.ok() {
                "OK (nothing lost, order kept)"
            } else {
                "FAILED"
            }
        );
        s
    }
}

/// Compares the records of the input topic(s) (`(topic, record)`), the output topic and the dead-letter
/// topic, each in partition-then-offset order as read.
pub fn analyze(input: &[(String, Seen)], output: &[Seen], dlq: &[Seen]) -> Report {
    // id → (index of the input partition, input offset)
    let mut partitions: Vec<PartitionReport> = Vec::new();
    let mut partition_index: HashMap<(String, i32), usize> = HashMap::new();
    let mut inputs: HashMap<&str, (usize, i64)> = HashMap::with_capacity(input.len());
    let mut by_coordinates: HashMap<String, &str> = HashMap::new();
    let mut report = Report::default();
    for (topic, r) in input {
        let index = *partition_index
            .entry((topic.clone(), r.partition))
            .or_insert_with(|| {
                partitions.push(PartitionReport {
                    topic: topic.clone(),
                    partition: r.partition,
                    ..PartitionReport::default()
                });
                partitions.len() - 1
            });
        by_coordinates.insert(format!("{topic}/{}@{}", r.partition, r.offset), &r.id);
        if inputs.insert(&r.id, (index, r.offset)).is_some() {
            report.input_id_collisions += 1;
        }
    }
    for &(index, _) in inputs.values() {
        if let Some(p) = partitions.get_mut(index) {
            p.input += 1;
        }
    }
    let mut deliveries: HashMap<&str, u64> = HashMap::with_capacity(inputs.len());
    let mut examples = Vec::new();
    for (records, is_dlq) in [(output, false), (dlq, true)] {
        // (output partition, input partition index) → the largest input offset first-delivered so far.
        let mut high: HashMap<(i32, usize), i64> = HashMap::new();
        for r in records {
            let id: &str = r
                .source
                .as_ref()
                .and_then(|c| by_coordinates.get(c).copied())
                .unwrap_or(&r.id);
            let Some(&(index, in_offset)) = inputs.get(id) else {
                report.unexpected += 1;
                continue;
            };
            let count = deliveries.entry(id).or_insert(0);
            *count += 1;
            let Some(p) = partitions.get_mut(index) else {
                continue;
            };
            if *count > 1 {
                continue;
            }
            if is_dlq {
                p.dead_lettered += 1;
            } else {
                p.output += 1;
            }
            let last = high.entry((r.partition, index)).or_insert(i64::MIN);
            if in_offset < *last {
                p.out_of_order += 1;
                if examples.len() < 5 {
                    examples.push(format!(
                        "{} (input {}/{}@{in_offset} first delivered at partition {} offset {} after input offset {})",
                        id, p.topic, p.partition, r.partition, r.offset, *last
                    ));
                }
            } else {
                *last = in_offset;
            }
        }
    }
    report.out_of_order_examples = examples;
    for (id, &(index, _)) in &inputs {
        let Some(p) = partitions.get_mut(index) else {
            continue;
        };
        match deliveries.get(id).copied().unwrap_or(0) {
            0 => {
                p.lost += 1;
                if report.lost_examples.len() < 5 {
                    report
                        .lost_examples
                        .push(format!("{id} ({}/{})", p.topic, p.partition));
                }
            }
            n => {
                p.duplicates += n - 1;
                p.duplicated_ids += u64::from(n > 1);
                p.max_multiplicity = p.max_multiplicity.max(n);
            }
        }
    }
    report.lost_examples.sort();
    partitions.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    for p in &partitions {
        report.input += p.input;
        report.lost += p.lost;
        report.duplicates += p.duplicates;
        report.max_multiplicity = report.max_multiplicity.max(p.max_multiplicity);
        report.out_of_order += p.out_of_order;
    }
    report.partitions = partitions;
    report
}

/// The request id of a record (see the module docs for the order of the rules).
pub fn record_id(
    payload: Option<&[u8]>,
    key: Option<&[u8]>,
    id_pointer: &str,
    coordinates: impl FnOnce() -> String,
) -> String {
    if let Some(payload) = payload {
        if let Some(id) = json_id(payload, id_pointer) {
            return id;
        }
        if let Some(id) = protobuf_id(payload) {
            return id;
        }
    }
    if let Some(key) = key {
        return String::from_utf8_lossy(key).into_owned();
    }
    coordinates()
}

fn json_id(payload: &[u8], pointer: &str) -> Option<String> {
    let start = payload.iter().position(|b| !b.is_ascii_whitespace())?;
    if payload.get(start) != Some(&b'{') {
        return None;
    }
    let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
    match value.pointer(pointer)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Field 1 of a protobuf message when it is the first field, length-delimited and UTF-8 (OpenRTB's
/// `BidRequest.id`), with the rest of the message walking cleanly to its end.
fn protobuf_id(payload: &[u8]) -> Option<String> {
    let mut at = 0usize;
    let mut id = None;
    while at < payload.len() {
        let tag = varint(payload, &mut at)?;
        let (field, wire) = (tag >> 3, tag & 7);
        if field == 0 {
            return None;
        }
        match wire {
            0 => {
                varint(payload, &mut at)?;
            }
            1 => at = at.checked_add(8)?,
            2 => {
                let len = usize::try_from(varint(payload, &mut at)?).ok()?;
                let end = at.checked_add(len)?;
                let bytes = payload.get(at..end)?;
                if field == 1 && id.is_none() {
                    id = Some(std::str::from_utf8(bytes).ok()?.to_string());
                }
                at = end;
            }
            5 => at = at.checked_add(4)?,
            _ => return None,
        }
    }
    (at == payload.len()).then_some(id)?
}

fn varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// No record for this long while some partition has not reached its end: the fetch stalled.
const STALLED: Duration = Duration::from_secs(10);

/// How to read the topics.
#[derive(Clone, Debug)]
pub struct VerifyOptions {
    /// The cluster: brokers and client properties (TLS, SASL, …).
    pub kafka: KafkaClients,
    pub inputs: Vec<String>,
    pub output: String,
    pub dlq: String,
    /// JSON pointer of the request id.
    pub id_field: String,
    /// Give up reading a topic after this long, its metadata and watermarks included.
    pub timeout: Duration,
    /// Once every partition reached the end it had when reading started, stop after this long without a
    /// new record (brokers such as tansu report watermarks per batch, so the end is confirmed by quiet).
    pub idle: Duration,
}

impl VerifyOptions {
    pub fn new(brokers: &str, input: &str, output: &str, dlq: &str) -> VerifyOptions {
        VerifyOptions {
            kafka: KafkaClients::from_brokers(brokers),
            inputs: vec![input.to_string()],
            output: output.to_string(),
            dlq: dlq.to_string(),
            id_field: "/id".to_string(),
            timeout: Duration::from_secs(60),
            idle: Duration::from_millis(1500),
        }
    }
}

/// Every record of `topic` from the beginning to its end, in partition-then-offset order, with its id.
///
/// # Errors
/// The consumer cannot be created, the topic does not exist, or a fetch fails.
pub fn read_topic(options: &VerifyOptions, topic: &str) -> Result<Vec<Seen>, VerifyError> {
    read_topic_counting(options, topic).map(|(records, _)| records)
}

/// [`read_topic`], plus how many records lie below the partitions' low watermarks (already deleted).
///
/// # Errors
/// As [`read_topic`].
pub fn read_topic_counting(
    options: &VerifyOptions,
    topic: &str,
) -> Result<(Vec<Seen>, i64), VerifyError> {
    let started = Instant::now();
    // Each broker request waits at most 10 s, and never past the topic's timeout: an unreachable broker
    // then fails the read within `timeout`, not 10 s per partition later.
    let request_timeout = || {
        options
            .timeout
            .saturating_sub(started.elapsed())
            .clamp(Duration::from_millis(1), Duration::from_secs(10))
    };
    // Nothing joins the group or commits to it.
    let consumer: BaseConsumer<Logged> = options
        .kafka
        .reader("uid2-enricher-verify")
        .set("max.partition.fetch.bytes", "67108864")
        .set("fetch.max.bytes", "134217728")
        .set("message.max.bytes", "134217728")
        .create_with_context(Logged("verify"))
        .map_err(|source| VerifyError::Client {
            brokers: options.kafka.brokers().to_string(),
            reason: crate::stage::kafka::scrub(&source.to_string()),
        })?;
    let ranges =
        kafka::partition_ranges(&consumer, topic, request_timeout()).map_err(|e| match e {
            PartitionRangeError::Metadata(source) => VerifyError::Metadata {
                topic: topic.to_string(),
                source,
            },
            PartitionRangeError::Watermarks { error, .. } => VerifyError::Read {
                topic: topic.to_string(),
                source: error,
            },
            _ => VerifyError::NoSuchTopic(topic.to_string()),
        })?;
    let mut tpl = TopicPartitionList::new();
    // partition → the end to reach (the high watermark when reading started)
    let mut ends: HashMap<i32, i64> = HashMap::new();
    let mut deleted = 0;
    for &PartitionRange {
        partition: p,
        low,
        high,
    } in &ranges
    {
        if high > low {
            ends.insert(p, high);
        }
        deleted += low.max(0);
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .map_err(|source| VerifyError::Read {
                topic: topic.to_string(),
                source,
            })?;
    }
    consumer.assign(&tpl).map_err(|source| VerifyError::Read {
        topic: topic.to_string(),
        source,
    })?;
    let mut by_partition: BTreeMap<i32, Vec<Seen>> = BTreeMap::new();
    let mut last_record = Instant::now();
    while started.elapsed() < options.timeout {
        // Done once every partition reached its end and nothing more came for `idle`; or when nothing
        // came for 10 s (a fetch that stalls: [`verify_with_passes`] reads again).
        let quiet = last_record.elapsed();
        if (ends.is_empty() && quiet >= options.idle) || quiet >= STALLED {
            break;
        }
        let Some(result) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = result.map_err(|source| VerifyError::Read {
            topic: topic.to_string(),
            source,
        })?;
        last_record = Instant::now();
        let (partition, offset) = (m.partition(), m.offset());
        if ends.get(&partition).is_some_and(|end| offset + 1 >= *end) {
            ends.remove(&partition);
        }
        let source = source_coordinates(&m);
        let id = record_id(m.payload(), m.key(), &options.id_field, || {
            source
                .clone()
                .unwrap_or_else(|| format!("{topic}/{partition}@{offset}"))
        });
        by_partition.entry(partition).or_default().push(Seen {
            id,
            partition,
            offset,
            source,
        });
    }
    let records = by_partition
        .into_values()
        .flat_map(|mut records| {
            // A fetch never goes backwards; sorting guards a re-fetch after a broker error.
            records.sort_by_key(|r| r.offset);
            records.dedup_by_key(|r| r.offset);
            records
        })
        .collect();
    Ok((records, deleted))
}

/// `topic/partition@offset` from a dead letter's `uid2-source-*` headers.
fn source_coordinates(m: &rdkafka::message::BorrowedMessage<'_>) -> Option<String> {
    let record_headers = m.headers()?;
    let get = |name: &str| {
        record_headers
            .iter()
            .find(|h| h.key == name)
            .and_then(|h| std::str::from_utf8(h.value?).ok())
    };
    Some(format!(
        "{}/{}@{}",
        get(headers::SOURCE_TOPIC)?,
        get(headers::SOURCE_PARTITION)?,
        get(headers::SOURCE_OFFSET)?
    ))
}

/// Reads the three topics and analyzes them.
///
/// # Errors
/// As [`read_topic`].
pub fn verify(options: &VerifyOptions) -> Result<Report, VerifyError> {
    let mut input = Vec::new();
    for topic in &options.inputs {
        input.extend(
            read_topic(options, topic)?
                .into_iter()
                .map(|r| (topic.clone(), r)),
        );
    }
    let (output, deleted_output) = read_topic_counting(options, &options.output)?;
    let (dlq, deleted_dlq) = read_topic_counting(options, &options.dlq)?;
    let mut report = analyze(&input, &output, &dlq);
    report.unreadable = deleted_output + deleted_dlq;
    Ok(report)
}

/// [`verify`], read again from the start with a fresh consumer up to `passes` times while inputs are
/// missing: some brokers (tansu 0.6) occasionally leave a batch out of a fetch. Returns the pass that
/// lost the least, and how many passes it took.
///
/// # Errors
/// As [`read_topic`].
pub fn verify_with_passes(
    options: &VerifyOptions,
    passes: u32,
) -> Result<(Report, u32), VerifyError> {
    let mut best = verify(options)?;
    let mut used = 1;
    while best.lost > 0 && used < passes.max(1) {
        used += 1;
        let again = verify(options)?;
        if again.lost < best.lost {
            best = again;
        }
    }
    Ok((best, used))
}

/// `uid2-enricher verify`: prints the report (a table, or JSON with `--json`); exit status 1 when
/// something was lost or reordered.
///
/// # Errors
/// The topics cannot be read; the message names the topic and the brokers.
pub fn command(args: &VerifyArgs) -> anyhow::Result<std::process::ExitCode> {
    use anyhow::Context as _;
    let options = VerifyOptions {
        kafka: args.cluster.clients()?,
        inputs: args.input.clone(),
        output: args.output.clone(),
        dlq: args.dlq.clone(),
        id_field: args.id_field.clone(),
        timeout: Duration::from_secs(args.timeout.max(1)),
        idle: Duration::from_millis(1500),
    };
    let report = verify(&options).with_context(|| {
        format!(
            "verifying {:?} → {} / {} at {} (check --brokers or --config, and the topic names)",
            options.inputs,
            options.output,
            options.dlq,
            options.kafka.brokers()
        )
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    Ok(if report.ok() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nothing listens on port 1: the metadata request can only time out or fail, and `timeout` bounds
    /// it (it used to wait a fixed 10 s, whatever `--timeout` said).
    #[test]
    fn an_unreachable_broker_fails_the_read_within_the_timeout() {
        let mut options = VerifyOptions::new("127.0.0.1:1", "in", "out", "dlq");
        options.timeout = Duration::from_secs(1);
        let started = Instant::now();
        let result = read_topic(&options, "in");
        let took = started.elapsed();
        assert!(
            matches!(result, Err(VerifyError::Metadata { .. })),
            "{result:?}"
        );
        assert!(took < Duration::from_secs(5), "took {took:?}");
    }

    fn seen(id: &str, partition: i32, offset: i64) -> Seen {
        Seen {
            id: id.to_string(),
            partition,
            offset,
            source: None,
        }
    }

    fn input(ids: &[(&str, i32, i64)]) -> Vec<(String, Seen)> {
        ids.iter()
            .map(|(id, p, o)| ("in".to_string(), seen(id, *p, *o)))
            .collect()
    }

    #[test]
    fn counts_lost_duplicated_and_dead_lettered_per_partition() {
        let input = input(&[("a", 0, 0), ("b", 0, 1), ("c", 0, 2), ("d", 1, 0)]);
        let output = vec![seen("a", 0, 0), seen("a", 0, 1), seen("a", 0, 2)];
        let dlq = vec![seen("b", 0, 0), seen("d", 0, 1)];
        let r = analyze(&input, &output, &dlq);
        assert_eq!(r.input, 4);
        assert_eq!(r.lost, 1);
        assert_eq!(r.lost_examples, vec!["c (in/0)".to_string()]);
        assert_eq!(r.duplicates, 2);
        assert_eq!(r.max_multiplicity, 3);
        let p0 = &r.partitions[0];
        assert_eq!(
            (
                p0.input,
                p0.output,
                p0.dead_lettered,
                p0.lost,
                p0.duplicated_ids
            ),
            (3, 1, 1, 1, 1)
        );
        assert_eq!(
            (r.partitions[1].input, r.partitions[1].dead_lettered),
            (1, 1)
        );
        assert!(!r.ok());
    }

    #[test]
    fn order_is_compared_within_one_input_partition_and_one_output_partition() {
        let input = input(&[("a", 0, 0), ("b", 0, 1), ("c", 0, 2), ("x", 1, 0)]);
        // Output partition 0 holds b before a: out of order. Partition 1 holds c then x (another input
        // partition, not compared); a redelivery of a after c is a duplicate, not a reordering.
        let output = vec![
            seen("b", 0, 0),
            seen("a", 0, 1),
            seen("x", 1, 0),
            seen("c", 1, 1),
            seen("a", 1, 2),
        ];
        let r = analyze(&input, &output, &[]);
        assert_eq!(r.out_of_order, 1, "{r:?}");
        assert_eq!(r.lost, 0);
        assert_eq!(r.duplicates, 1);
        assert!(!r.ok());
        let in_order = vec![seen("a", 0, 0), seen("c", 0, 1), seen("b", 1, 0)];
        let r = analyze(&input[..3], &in_order, &[]);
        assert_eq!(r.out_of_order, 0);
        assert!(r.ok(), "{}", r.render());
    }

    #[test]
    fn records_of_another_run_are_unexpected_and_colliding_input_ids_are_counted() {
        let input = input(&[("a", 0, 0), ("a", 0, 1)]);
        let r = analyze(&input, &[seen("a", 0, 0), seen("zz", 0, 1)], &[]);
        assert_eq!((r.unexpected, r.input_id_collisions, r.lost), (1, 1, 0));
    }

    #[test]
    fn a_dead_letter_maps_to_its_input_by_source_coordinates() {
        let input = input(&[("a", 0, 0), ("b", 0, 1)]);
        let mut dead = seen("key-of-b", 0, 0);
        dead.source = Some("in/0@1".into());
        let r = analyze(&input, &[seen("a", 0, 0)], &[dead]);
        assert_eq!((r.lost, r.unexpected), (0, 0), "{}", r.render());
        assert_eq!(r.partitions[0].dead_lettered, 1);
    }

    #[test]
    fn ids_come_from_json_then_protobuf_then_key_then_coordinates() {
        let at = || "t/0@5".to_string();
        assert_eq!(
            record_id(Some(br#" {"id":"r1","x":[1]}"#), Some(b"k"), "/id", at),
            "r1"
        );
        assert_eq!(record_id(Some(br#"{"id":42}"#), None, "/id", at), "42");
        assert_eq!(
            record_id(
                Some(br#"{"imp":[{"id":"i"}]}"#),
                Some(b"k"),
                "/imp/0/id",
                at
            ),
            "i"
        );
        // BidRequest { id: "p1" (field 1), at: 2 (field 7 varint) }
        assert_eq!(
            record_id(Some(b"\x0a\x02p1\x38\x02"), None, "/id", at),
            "p1"
        );
        // Truncated JSON, random bytes: the key, then the coordinates.
        assert_eq!(
            record_id(Some(br#"{"id":"r1","imp"#), Some(b"key"), "/id", at),
            "key"
        );
        assert_eq!(
            record_id(Some(b"\xff\xfe\x00garbage"), None, "/id", at),
            "t/0@5"
        );
        assert_eq!(record_id(None, None, "/id", at), "t/0@5");
    }
}
