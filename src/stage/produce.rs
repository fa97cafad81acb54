//! Handing records to librdkafka's producer: waiting while its queue is full (the backpressure path that
//! the stage, the opt-out publisher, `replay --to-topic` and `demo` share), the stage's fallback for a
//! record that outgrew `message.max.bytes`, and the accounting done when a delivery is acknowledged.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use prometheus_client::metrics::histogram::Histogram;
use rdkafka::ClientContext;
use rdkafka::Message;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedMessage;
use rdkafka::message::ToBytes;
use rdkafka::producer::{
    BaseRecord, DeliveryFuture, FutureProducer, FutureRecord, ProducerContext, ThreadedProducer,
};
use tokio::sync::OwnedSemaphorePermit;

use crate::stage::headers;
use crate::stage::kafka;
use crate::stage::pipeline::{DeliveryFailure, LatencySamples, Shared, StageError};
use crate::stage::route::Routed;
use crate::support::metrics::ReasonLabel;

/// How long to wait for room in librdkafka's queue, and for how long at most.
#[derive(Clone, Copy, Debug)]
pub struct Backpressure {
    /// The pause between attempts while the queue is full.
    pub pause: Duration,
    /// Give up (returning the queue-full error) once this instant has passed; `None` waits as long as it
    /// takes, which is what holds the consumer back when the brokers are slow.
    pub deadline: Option<Instant>,
}

impl Backpressure {
    /// Waits as long as it takes, `pause` between attempts.
    pub const fn patient(pause: Duration) -> Backpressure {
        Backpressure {
            pause,
            deadline: None,
        }
    }
}

/// A producer whose queue a record can be offered to: librdkafka refuses it with `QueueFull` when the
/// producer is ahead of the brokers, and gives it back.
pub trait Enqueue<R> {
    /// What an accepted record gives: a delivery future, or nothing when a context counts deliveries.
    type Accepted;
    /// Offers `record` once; a refusal is boxed, as the record inside it is large.
    fn enqueue(&self, record: R) -> Result<Self::Accepted, Box<(KafkaError, R)>>;
}

impl<'a, K, P, C> Enqueue<FutureRecord<'a, K, P>> for FutureProducer<C>
where
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
    C: ClientContext + 'static,
{
    type Accepted = DeliveryFuture;
    fn enqueue(
        &self,
        record: FutureRecord<'a, K, P>,
    ) -> Result<DeliveryFuture, Box<(KafkaError, FutureRecord<'a, K, P>)>> {
        self.send_result(record).map_err(Box::new)
    }
}

impl<'a, K, P, C> Enqueue<BaseRecord<'a, K, P, C::DeliveryOpaque>> for ThreadedProducer<C>
where
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
    C: ProducerContext + 'static,
{
    type Accepted = ();
    fn enqueue(
        &self,
        record: BaseRecord<'a, K, P, C::DeliveryOpaque>,
    ) -> Result<(), Box<(KafkaError, BaseRecord<'a, K, P, C::DeliveryOpaque>)>> {
        self.send(record).map_err(Box::new)
    }
}

/// Hands `record` to `producer`, waiting while librdkafka's queue is full (the producer is ahead of the
/// brokers); `on_full` runs at each wait, e.g. to count retries.
///
/// # Errors
/// The producer refused the record for another reason, or the queue stayed full past the deadline.
pub async fn send_with_backpressure<R, E: Enqueue<R>>(
    producer: &E,
    mut record: R,
    wait: Backpressure,
    mut on_full: impl FnMut(),
) -> Result<E::Accepted, KafkaError> {
    loop {
        match producer.enqueue(record) {
            Ok(accepted) => return Ok(accepted),
            Err(refused) => match *refused {
                (KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)
                    if wait.deadline.is_none_or(|d| Instant::now() < d) =>
                {
                    on_full();
                    record = returned;
                    tokio::time::sleep(wait.pause).await;
                }
                (error, _) => return Err(error),
            },
        }
    }
}

/// The stage's wait for room in the queue: as long as it takes (this is what holds the consumer back
/// when the brokers are slow), each wait counted in `produce_retries`.
async fn hand_over(
    shared: &Shared,
    record: FutureRecord<'_, [u8], [u8]>,
) -> Result<DeliveryFuture, KafkaError> {
    send_with_backpressure(
        &shared.producer,
        record,
        Backpressure::patient(Duration::from_millis(2)),
        || {
            shared.metrics.produce_retries.inc();
        },
    )
    .await
}

/// A record handed to the producer, and whether it went out as the too-large dead letter.
pub(crate) struct Sent {
    pub delivery: DeliveryFuture,
    pub too_large: bool,
}

/// Produces one routed record, waiting for room in the queue. A record that outgrew the producer's
/// `message.max.bytes` becomes a dead letter without its payload.
pub(crate) async fn send(
    shared: &Shared,
    message: &OwnedMessage,
    routed: &Routed<'_>,
) -> Result<Sent, StageError> {
    let extra: Vec<(&str, &[u8])> = routed
        .headers
        .iter()
        .map(|(k, v)| (*k, v.as_slice()))
        .collect();
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(routed.topic)
        .payload(routed.payload)
        .headers(kafka::headers_with(message.headers(), &extra));
    if let Some(key) = message.key() {
        record = record.key(key);
    }
    if let Some(ts) = message.timestamp().to_millis() {
        record = record.timestamp(ts);
    }
    if let Some(partition) = routed.partition {
        record = record.partition(partition);
    }
    match hand_over(shared, record).await {
        Ok(delivery) => Ok(Sent {
            delivery,
            too_large: false,
        }),
        Err(KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)) => {
            send_too_large(shared, message, routed.topic).await
        }
        Err(error) => Err(StageError::Produce {
            topic: routed.topic.to_string(),
            error,
        }),
    }
}

/// The record outgrew the producer's `message.max.bytes` (librdkafka's default, 1,000,000, is below
/// Kafka's broker default, so an input near 1 MB that grows by its enrichment lands here). Failing would
/// stop the stage on every restart; instead the record is dead-lettered without its payload, which would
/// not fit either: the source headers point at the original in the input topic.
/// `topic` is where the record was going, which a refusal of the dead letter names.
async fn send_too_large(
    shared: &Shared,
    message: &OwnedMessage,
    topic: &str,
) -> Result<Sent, StageError> {
    shared
        .metrics
        .dead_lettered
        .get_or_create(&ReasonLabel {
            reason: "too_large",
        })
        .inc();
    let dead_letter = headers::dead_letter(
        "too_large",
        message.topic(),
        message.partition(),
        message.offset(),
    );
    let extra: Vec<(&str, &[u8])> = dead_letter
        .iter()
        .map(|(k, v)| (*k, v.as_slice()))
        .collect();
    let dlq_topic = shared.config.dlq_topic.as_str();
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(dlq_topic)
        .payload(&[][..])
        .headers(kafka::headers_with(message.headers(), &extra));
    if let Some(key) = message.key() {
        record = record.key(key);
    }
    match hand_over(shared, record).await {
        Ok(delivery) => Ok(Sent {
            delivery,
            too_large: true,
        }),
        Err(error) => Err(StageError::Produce {
            topic: topic.to_string(),
            error,
        }),
    }
}

/// What a partition task awaits per record, in order: the record's offset, its in-flight permit (released
/// when the delivery settles) and how the delivery went.
pub(crate) type PendingDelivery = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = (i64, OwnedSemaphorePermit, Result<(), DeliveryFailure>)>
            + Send,
    >,
>;

/// What to count once a delivery is acknowledged.
pub(crate) struct Accounting {
    pub offset: i64,
    pub received: Instant,
    pub permit: OwnedSemaphorePermit,
    /// The record went to the dead-letter topic.
    pub dead_letter: bool,
    /// The output record's index in [`crate::stage::pipeline::STATUS_NAMES`].
    pub status_index: Option<usize>,
}

/// Awaits the broker's acknowledgement, then counts the record and its consume-to-acknowledge latency.
pub(crate) fn track_delivery(
    shared: Arc<Shared>,
    delivery: DeliveryFuture,
    accounting: Accounting,
) -> PendingDelivery {
    Box::pin(async move {
        let result = match delivery.await {
            Ok(Ok(_)) => {
                count_delivered(&shared, &accounting);
                Ok(())
            }
            Ok(Err((e, _))) => Err(DeliveryFailure::Kafka(e)),
            Err(_) => Err(DeliveryFailure::ProducerDropped),
        };
        (accounting.offset, accounting.permit, result)
    })
}

fn count_delivered(shared: &Shared, accounting: &Accounting) {
    if accounting.dead_letter {
        shared
            .counters
            .dead_lettered
            .fetch_add(1, Ordering::Relaxed);
    } else {
        shared.metrics.records_out.inc();
        shared.counters.produced.fetch_add(1, Ordering::Relaxed);
        if let Some(i) = accounting.status_index {
            shared.counters.statuses[i].fetch_add(1, Ordering::Relaxed);
        }
    }
    observe_latency(
        shared,
        accounting.received,
        &shared.metrics.stage_seconds,
        |samples| &mut samples.acked_us,
    );
}

/// Counts the time from consuming a record to handing its output to the producer: what the stage itself
/// costs a record, without the brokers' part.
pub(crate) fn count_handoff(shared: &Shared, received: Instant) {
    observe_latency(
        shared,
        received,
        &shared.metrics.handoff_seconds,
        |samples| &mut samples.handed_us,
    );
}

/// The time since `received` into `histogram`, and into the run's samples when it keeps them.
fn observe_latency(
    shared: &Shared,
    received: Instant,
    histogram: &Histogram,
    samples: impl FnOnce(&mut LatencySamples) -> &mut Vec<u32>,
) {
    let latency = received.elapsed();
    histogram.observe(latency.as_secs_f64());
    if let Some(kept) = &shared.counters.latencies {
        let us = u32::try_from(latency.as_micros()).unwrap_or(u32::MAX);
        samples(&mut kept.lock().unwrap_or_else(|e| e.into_inner())).push(us);
    }
}
