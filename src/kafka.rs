//! Kafka clients for the stage (rust-rdkafka over its bundled librdkafka): client configuration with the
//! settings at-least-once depends on, the consumer context that drains revoked partitions before letting
//! them go, and header helpers. Depends on rdkafka, tokio and the metrics.
//!
//! Delivery contract (`../shared/spec/kafka.md` §1): offsets are stored by the stage only after the output
//! (or dead-letter) record of that offset and of every earlier offset of the partition was acknowledged;
//! librdkafka's auto-commit then commits what was stored (and commits it on revoke and close).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::statistics::Statistics;
use tokio::task::JoinHandle;

use crate::metrics::{Metrics, PartitionLabel, ReasonLabel};

/// Consumer properties the stage sets itself and that pass-through tables may not override.
pub const OWNED_CONSUMER_KEYS: &[&str] =
    &["group.id", "bootstrap.servers", "enable.auto.offset.store"];
/// Producer properties the stage sets itself and that pass-through tables may not override.
pub const OWNED_PRODUCER_KEYS: &[&str] = &["bootstrap.servers", "enable.idempotence"];

/// Why a pass-through property was refused.
#[derive(Debug, thiserror::Error)]
#[error("librdkafka property `{key}` is set by the stage itself and cannot be overridden: {hint}")]
pub struct OwnedPropertyError {
    pub key: String,
    pub hint: &'static str,
}

fn check_overrides(
    overrides: &[(String, String)],
    owned: &[&str],
) -> Result<(), OwnedPropertyError> {
    match overrides.iter().find(|(k, _)| owned.contains(&k.as_str())) {
        Some((key, _)) => Err(OwnedPropertyError {
            key: key.clone(),
            hint: "use [kafka] brokers / group_id; offsets are stored only after delivery and the producer is always idempotent",
        }),
        None => Ok(()),
    }
}

/// The consumer's configuration: cooperative-sticky assignment, earliest reset, manual offset store with
/// auto-commit, statistics for the lag metric; `overrides` are applied last.
pub fn consumer_config(
    brokers: &str,
    group_id: &str,
    overrides: &[(String, String)],
) -> Result<ClientConfig, OwnedPropertyError> {
    check_overrides(overrides, OWNED_CONSUMER_KEYS)?;
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("group.id", group_id)
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("statistics.interval.ms", "5000")
        .set("fetch.wait.max.ms", "100");
    for (k, v) in overrides {
        c.set(k, v);
    }
    Ok(c)
}

/// The producer's configuration: idempotent (acks=all, ordered retries), batched; `overrides` last.
pub fn producer_config(
    brokers: &str,
    overrides: &[(String, String)],
) -> Result<ClientConfig, OwnedPropertyError> {
    check_overrides(overrides, OWNED_PRODUCER_KEYS)?;
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .set("message.timeout.ms", "300000");
    for (k, v) in overrides {
        c.set(k, v);
    }
    Ok(c)
}

/// (topic, partition)
pub type TopicPartition = (String, i32);

/// A partition the stage is working on: the only sender of its queue, and its task.
pub struct PartitionSlot<J> {
    /// The only sender: removing the slot closes the queue, so the task finishes what it holds, stores
    /// the offsets and ends.
    pub queue: tokio::sync::mpsc::UnboundedSender<J>,
    pub task: JoinHandle<()>,
}

/// The partitions the stage is working on, shared by the consume loop and the rebalance callback.
pub type PartitionRegistry<J> = Arc<Mutex<HashMap<TopicPartition, PartitionSlot<J>>>>;

/// Consumer context: drains revoked partitions (bounded by `drain_timeout`) inside the revoke callback,
/// while they are still assigned, so their in-flight records' offsets can still be stored; and turns
/// librdkafka statistics into the lag metric.
pub struct StageContext<J> {
    pub partitions: PartitionRegistry<J>,
    pub drain_timeout: Duration,
    pub metrics: Arc<Metrics>,
}

impl<J: Send + 'static> ClientContext for StageContext<J> {
    fn stats(&self, statistics: Statistics) {
        for (topic, t) in &statistics.topics {
            for (id, p) in &t.partitions {
                // -1 is librdkafka's internal "unassigned" partition; lag -1 means unknown.
                if *id >= 0 && p.consumer_lag >= 0 {
                    self.metrics
                        .consumer_lag
                        .get_or_create(&PartitionLabel {
                            topic: topic.clone(),
                            partition: *id,
                        })
                        .set(p.consumer_lag);
                }
            }
        }
    }
}

impl<J: Send + 'static> ConsumerContext for StageContext<J> {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            if let Rebalance::Assign(tpl) = rebalance {
                self.metrics
                    .rebalances
                    .get_or_create(&ReasonLabel { reason: "assign" })
                    .inc();
                tracing::info!(partitions = tpl.count(), "Partitions assigned.");
            }
            return;
        };
        self.metrics
            .rebalances
            .get_or_create(&ReasonLabel { reason: "revoke" })
            .inc();
        let lost = consumer.assignment_lost();
        let mut slots = Vec::new();
        {
            let mut partitions = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
            for elem in tpl.elements() {
                if let Some(slot) = partitions.remove(&(elem.topic().to_string(), elem.partition()))
                {
                    slots.push(slot);
                }
            }
        }
        tracing::info!(
            partitions = tpl.count(),
            draining = slots.len(),
            lost,
            "Partitions revoked."
        );
        // Dropping each queue's only sender closes it.
        let tasks: Vec<JoinHandle<()>> = slots.into_iter().map(|slot| slot.task).collect();
        if lost || tasks.is_empty() {
            // A lost assignment belongs to someone else already: storing offsets would fail anyway.
            return;
        }
        // The callback runs on the thread polling the consumer, a tokio worker: hand its other tasks to
        // the rest of the runtime and wait here, so the partitions stay assigned until drained.
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
            return;
        }
        let timeout = self.drain_timeout;
        let drained = tokio::task::block_in_place(|| {
            handle.block_on(async move {
                tokio::time::timeout(timeout, async {
                    for task in tasks {
                        let _ = task.await;
                    }
                })
                .await
            })
        });
        if drained.is_err() {
            tracing::warn!(
                timeout_ms = timeout.as_millis() as u64,
                "Revoked partitions did not drain in time; their unacknowledged records will be redelivered to the new owner."
            );
        }
    }
}

/// Copies the input headers and appends `extra`, keeping the input's order.
pub fn headers_with(input: Option<&OwnedHeaders>, extra: &[(&str, &[u8])]) -> OwnedHeaders {
    let mut out = OwnedHeaders::new_with_capacity(input.map_or(0, Headers::count) + extra.len());
    if let Some(input) = input {
        for h in input.iter() {
            out = out.insert(Header {
                key: h.key,
                value: h.value,
            });
        }
    }
    for (key, value) in extra {
        out = out.insert(Header {
            key,
            value: Some(*value),
        });
    }
    out
}
