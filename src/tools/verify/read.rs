//! `verify`'s Kafka reads: a topic from the beginning to the end it had when reading started, with
//! assigned partitions, no consumer group and nothing committed.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::{Seen, VerifyError, VerifyOptions, record_id};
use crate::stage::headers;
use crate::stage::kafka::{self, Logged, PartitionRange, PartitionRangeError};

/// No record for this long while some partition has not reached its end: the fetch stalled.
const STALLED: Duration = Duration::from_secs(10);

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
    let consumer = consumer(options)?;
    let Assigned { ends, deleted } = assign(&consumer, options, topic, started)?;
    let by_partition = poll_to_the_end(&consumer, options, topic, ends, started)?;
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

fn consumer(options: &VerifyOptions) -> Result<BaseConsumer<Logged>, VerifyError> {
    // Nothing joins the group or commits to it.
    options
        .kafka
        .reader("uid2-enricher-verify")
        .set("max.partition.fetch.bytes", "67108864")
        .set("fetch.max.bytes", "134217728")
        .set("message.max.bytes", "134217728")
        .set("isolation.level", options.isolation.as_str())
        .create_with_context(Logged("verify"))
        .map_err(|source| VerifyError::Client {
            brokers: options.kafka.brokers().to_string(),
            reason: crate::stage::kafka::scrub(&source.to_string()),
        })
}

/// What reading a topic has to reach.
struct Assigned {
    /// partition → the end to reach (the high watermark when reading started)
    ends: HashMap<i32, i64>,
    /// Records below the low watermarks.
    deleted: i64,
}

/// Assigns every partition of `topic` from its beginning.
fn assign(
    consumer: &BaseConsumer<Logged>,
    options: &VerifyOptions,
    topic: &str,
    started: Instant,
) -> Result<Assigned, VerifyError> {
    // Each broker request waits at most 10 s, and never past the topic's timeout: an unreachable broker
    // then fails the read within `timeout`, not 10 s per partition later.
    let request_timeout = options
        .timeout
        .saturating_sub(started.elapsed())
        .clamp(Duration::from_millis(1), Duration::from_secs(10));
    let ranges =
        kafka::partition_ranges(consumer, topic, request_timeout).map_err(|e| match e {
            PartitionRangeError::Metadata(source) => VerifyError::Metadata {
                topic: topic.to_string(),
                source,
            },
            PartitionRangeError::Watermarks { error, .. } => read_error(topic)(error),
            _ => VerifyError::NoSuchTopic(topic.to_string()),
        })?;
    let mut tpl = TopicPartitionList::new();
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
            .map_err(read_error(topic))?;
    }
    consumer.assign(&tpl).map_err(read_error(topic))?;
    Ok(Assigned { ends, deleted })
}

/// Polls until every partition has reached its end (or the read stalls or times out), by partition.
fn poll_to_the_end(
    consumer: &BaseConsumer<Logged>,
    options: &VerifyOptions,
    topic: &str,
    mut ends: HashMap<i32, i64>,
    started: Instant,
) -> Result<BTreeMap<i32, Vec<Seen>>, VerifyError> {
    let mut by_partition: BTreeMap<i32, Vec<Seen>> = BTreeMap::new();
    let mut last_record = Instant::now();
    while started.elapsed() < options.timeout {
        // Done once every partition reached its end and nothing more came for `idle`; or when nothing
        // came for 10 s (a fetch that stalls: [`verify_with_passes`] reads again).
        let quiet = last_record.elapsed();
        if !ends.is_empty() && quiet >= options.idle {
            // A transaction's commit or abort marker takes an offset but is never delivered, so the last
            // record seen can stop short of the end: the consumer's position has moved past it.
            if let Ok(positions) = consumer.position() {
                for elem in positions.elements_for_topic(topic) {
                    if let Offset::Offset(next) = elem.offset()
                        && ends.get(&elem.partition()).is_some_and(|end| next >= *end)
                    {
                        ends.remove(&elem.partition());
                    }
                }
            }
        }
        if (ends.is_empty() && quiet >= options.idle) || quiet >= STALLED {
            break;
        }
        let Some(result) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = result.map_err(read_error(topic))?;
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
    Ok(by_partition)
}

fn read_error(topic: &str) -> impl FnOnce(KafkaError) -> VerifyError + '_ {
    move |source| VerifyError::Read {
        topic: topic.to_string(),
        source,
    }
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
}
