//! Exactly-once delivery (`[pipeline] delivery = "exactly_once"`): a record's output or dead letter and
//! the input offset it answers are written in one Kafka transaction, so a `read_committed` reader
//! downstream sees each input record's result once, across crashes and rebalances (KIP-98, KIP-447).
//!
//! One transactional producer per instance. Its `transactional_id` is stable across restarts, so a
//! restarted instance fences its former self and aborts what that one left open. Partition tasks send
//! under the gate's shared side and note their partition's next offset; a commit takes the exclusive
//! side, so that every record sent is noted when the offsets are taken. It then sends those offsets with
//! the consumer's group metadata, commits, and begins the next transaction. Commits happen every
//! `transaction_max_records` records or `transaction_max_ms`, on a revoke (before the partitions move),
//! and at shutdown.
//!
//! Errors: a retriable one is retried; any other aborts the transaction and ends the run with
//! [`StageError::TransactionAborted`], after which the caller starts a fresh run whose consumer resumes
//! from the committed offsets; a fatal one stops the stage with [`StageError::TransactionFatal`], which
//! says when the producer was fenced (another producer took the transactional id).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::Producer;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{Notify, RwLock, RwLockReadGuard};

use crate::config::TransactionSettings;
use crate::stage::kafka::TopicPartition;
use crate::stage::pipeline::{Shared, StageError, stop_fatally};
use crate::support::metrics::OutcomeLabel;

/// How long one blocking transactional call may take; librdkafka retries inside it. A revoke waits for
/// these calls on the consumer's polling thread, so they are kept well inside a rebalance.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts of a call that failed with a retriable error.
const RETRIES: u32 = 2;

/// The open transaction of one run, and what it has carried so far.
pub(crate) struct Transactions {
    settings: TransactionSettings,
    /// Shared by sends, exclusive for a commit or an abort.
    gate: RwLock<()>,
    /// The next offset of each partition whose records were sent in the open transaction.
    pending: Mutex<HashMap<TopicPartition, i64>>,
    records: AtomicU64,
    full: Notify,
    /// A commit or an abort failed: this run commits nothing more and ends.
    broken: AtomicBool,
    /// The run is draining for good: the periodic committer stops.
    closed: tokio_util::sync::CancellationToken,
}

/// Why a blocking transactional call failed.
enum CallError {
    Kafka(KafkaError),
    Other(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Kafka(e) => write!(f, "{e}"),
            CallError::Other(e) => f.write_str(e),
        }
    }
}

impl From<KafkaError> for CallError {
    fn from(e: KafkaError) -> CallError {
        CallError::Kafka(e)
    }
}

impl Transactions {
    pub(crate) fn new(settings: TransactionSettings) -> Transactions {
        Transactions {
            settings,
            gate: RwLock::new(()),
            pending: Mutex::new(HashMap::new()),
            records: AtomicU64::new(0),
            full: Notify::new(),
            broken: AtomicBool::new(false),
            closed: tokio_util::sync::CancellationToken::new(),
        }
    }

    /// Stops the periodic commits: the run's last commit (or abort) is the caller's.
    pub(crate) fn close(&self) {
        self.closed.cancel();
    }

    /// `init_transactions` (which fences an earlier producer with this id and aborts what it left open),
    /// then the first transaction.
    pub(crate) async fn start(&self, shared: &Shared) -> Result<(), StageError> {
        let producer = shared.producer.clone();
        let started = blocking(move || {
            retrying(|| producer.init_transactions(CALL_TIMEOUT))?;
            producer.begin_transaction()?;
            Ok(())
        })
        .await;
        started.map_err(|e| self.fatal_or_aborted(e, "initializing transactions"))?;
        tracing::info!(
            transactional_id = %self.settings.transactional_id,
            max_records = self.settings.max_records,
            max_ms = self.settings.max_duration.as_millis() as u64,
            "Exactly-once delivery: transactions initialized."
        );
        Ok(())
    }

    /// Held while a record is handed to the producer and its offset noted.
    pub(crate) async fn sending(&self) -> RwLockReadGuard<'_, ()> {
        self.gate.read().await
    }

    /// Notes that the record at `offset` of `tp` was sent in the open transaction.
    pub(crate) fn sent(&self, tp: &TopicPartition, offset: i64) {
        self.lock_pending().insert(tp.clone(), offset + 1);
        if self.records.fetch_add(1, Ordering::Relaxed) + 1 >= self.settings.max_records {
            self.full.notify_one();
        }
    }

    /// Commits the open transaction with the offsets noted, and begins the next one. With nothing noted
    /// there is nothing to commit.
    ///
    /// # Errors
    /// [`StageError::TransactionAborted`] once the transaction had to be aborted (the run must end and
    /// a fresh one re-read from the committed offsets), or [`StageError::TransactionFatal`].
    pub(crate) async fn commit(&self, shared: &Shared) -> Result<(), StageError> {
        let _exclusive = self.gate.write().await;
        if self.broken.load(Ordering::Relaxed) {
            return Err(StageError::TransactionAborted {
                reason: "an earlier commit or abort of this run failed".into(),
            });
        }
        let offsets = std::mem::take(&mut *self.lock_pending());
        let records = self.records.swap(0, Ordering::Relaxed);
        if offsets.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::with_capacity(offsets.len());
        for ((topic, partition), next) in &offsets {
            if let Err(e) = tpl.add_partition_offset(topic, *partition, Offset::Offset(*next)) {
                let error = CallError::Other(format!("offset {next} of {topic}/{partition}: {e}"));
                return Err(self.abort_held(shared, error, "committing").await);
            }
        }
        let (producer, consumer) = (shared.producer.clone(), shared.consumer.clone());
        let started = Instant::now();
        let committed = blocking(move || {
            let metadata = consumer.group_metadata().ok_or_else(|| {
                CallError::Other("the consumer has no group metadata (not in a group)".into())
            })?;
            retrying(|| producer.send_offsets_to_transaction(&tpl, &metadata, CALL_TIMEOUT))?;
            retrying(|| producer.commit_transaction(CALL_TIMEOUT))?;
            producer.begin_transaction()?;
            Ok(())
        })
        .await;
        match committed {
            Ok(()) => {
                let metrics = &shared.metrics;
                metrics
                    .transactions
                    .get_or_create(&OutcomeLabel {
                        outcome: "committed",
                    })
                    .inc();
                metrics
                    .transaction_commit_seconds
                    .observe(started.elapsed().as_secs_f64());
                tracing::debug!(
                    records,
                    partitions = offsets.len(),
                    "Transaction committed."
                );
                Ok(())
            }
            Err(e) => Err(self.abort_held(shared, e, "committing").await),
        }
    }

    /// Aborts the open transaction: nothing it holds becomes visible to a `read_committed` reader, and
    /// the run must end so that its records are read again.
    pub(crate) async fn abort(&self, shared: &Shared, reason: String) -> StageError {
        let _exclusive = self.gate.write().await;
        self.abort_held(shared, CallError::Other(reason), "").await
    }

    /// [`Transactions::abort`] with the gate already held; `error` is why, `doing` what failed.
    async fn abort_held(&self, shared: &Shared, error: CallError, doing: &str) -> StageError {
        let reason = if doing.is_empty() {
            error.to_string()
        } else {
            format!("{doing}: {error}")
        };
        // Several partition tasks can meet the same broken transaction; the first aborts it.
        if self.broken.swap(true, Ordering::Relaxed) {
            return StageError::TransactionAborted { reason };
        }
        self.lock_pending().clear();
        self.records.store(0, Ordering::Relaxed);
        if let CallError::Kafka(KafkaError::Transaction(e)) = &error
            && e.is_fatal()
        {
            return self.fatal(e.code(), &reason);
        }
        let producer = shared.producer.clone();
        let aborted = blocking(move || {
            retrying(|| producer.abort_transaction(CALL_TIMEOUT))?;
            Ok(())
        })
        .await;
        shared
            .metrics
            .transactions
            .get_or_create(&OutcomeLabel { outcome: "aborted" })
            .inc();
        match aborted {
            Err(CallError::Kafka(KafkaError::Transaction(e))) if e.is_fatal() => {
                self.fatal(e.code(), &format!("{reason}; then aborting: {e}"))
            }
            Err(e) => {
                tracing::warn!(reason = %reason, error = %e, "Aborting the transaction failed too; the next run's producer aborts it when it starts.");
                StageError::TransactionAborted { reason }
            }
            Ok(()) => {
                tracing::warn!(reason = %reason, "Transaction aborted; the run restarts from the committed offsets.");
                StageError::TransactionAborted { reason }
            }
        }
    }

    fn fatal(&self, code: RDKafkaErrorCode, detail: &str) -> StageError {
        StageError::TransactionFatal {
            transactional_id: self.settings.transactional_id.clone(),
            fenced: matches!(
                code,
                RDKafkaErrorCode::Fenced
                    | RDKafkaErrorCode::ProducerFenced
                    | RDKafkaErrorCode::InvalidProducerEpoch
                    | RDKafkaErrorCode::TransactionCoordinatorFenced
            ),
            detail: detail.to_string(),
        }
    }

    fn fatal_or_aborted(&self, error: CallError, doing: &str) -> StageError {
        match &error {
            CallError::Kafka(KafkaError::Transaction(e)) if e.is_fatal() => {
                self.fatal(e.code(), &format!("{doing}: {error}"))
            }
            _ => StageError::TransactionAborted {
                reason: format!("{doing}: {error}"),
            },
        }
    }

    /// Commits every `max_records` records or `max_duration`, until the run ends.
    pub(crate) async fn commit_periodically(self: Arc<Self>, shared: Arc<Shared>) {
        loop {
            tokio::select! {
                () = shared.fatal.cancelled() => return,
                () = self.closed.cancelled() => return,
                () = tokio::time::sleep(self.settings.max_duration) => {}
                () = self.full.notified() => {}
            }
            if let Err(error) = self.commit(&shared).await {
                stop_fatally(&shared, error);
                return;
            }
        }
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, HashMap<TopicPartition, i64>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Runs a blocking librdkafka call off the async workers.
async fn blocking(
    call: impl FnOnce() -> Result<(), CallError> + Send + 'static,
) -> Result<(), CallError> {
    tokio::task::spawn_blocking(call).await.unwrap_or_else(|e| {
        Err(CallError::Other(format!(
            "the transactional call's task: {e}"
        )))
    })
}

/// `call`, again while it fails with a retriable transactional error.
fn retrying(mut call: impl FnMut() -> Result<(), KafkaError>) -> Result<(), CallError> {
    let mut attempt = 1;
    loop {
        match call() {
            Err(KafkaError::Transaction(e)) if e.is_retriable() && attempt < RETRIES => {
                tracing::debug!(error = %e, attempt, "Retrying a transactional call.");
                attempt += 1;
            }
            other => return other.map_err(CallError::Kafka),
        }
    }
}
