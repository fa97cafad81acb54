//! `uid2-enricher run`: wires a validated configuration into a running stage — key source, HTTP server,
//! pipeline, signals — and reports how it ended. Depends on everything in the shell; holds no logic of
//! its own beyond the order of start-up and shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::keysource::{KeyHandle, KeySource};
use crate::metrics::Metrics;
use crate::optout::NoOptOuts;
use crate::pipeline::{self, KeyProvider, OutputPartitioning, RunCounters, StageConfig, StageDeps};
use crate::server::{self, ServerState};
use crate::uid2::KeySet;

impl KeyProvider for KeyHandle {
    fn current(&self) -> Option<Arc<KeySet>> {
        KeyHandle::current(self)
    }
}

/// The pipeline's part of the settings.
pub fn stage_config(s: &Settings) -> StageConfig {
    let props = |p: &crate::config::KafkaProps| {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    StageConfig {
        brokers: s.kafka.brokers.clone(),
        group_id: s.kafka.group_id.clone(),
        input_topics: s.kafka.input_topics.clone(),
        output_topic: s.kafka.output_topic.clone(),
        dlq_topic: s.kafka.dlq_topic.clone(),
        consumer_overrides: props(&s.kafka.consumer),
        producer_overrides: props(&s.kafka.producer),
        policy: s.pipeline.policy.clone(),
        format: s.pipeline.format,
        enrich: s.pipeline.enrich,
        max_in_flight: s.pipeline.max_in_flight,
        cache_entries: s.pipeline.cache_entries,
        drain_timeout: s.pipeline.drain_timeout,
        shutdown_timeout: s.pipeline.shutdown_timeout,
        output_partitioning: OutputPartitioning::Key,
    }
}

/// Runs the stage until a signal (or `shutdown`) stops it. Consuming starts only once the first key set
/// is loaded: before that `/readyz` answers 503 and no record is touched.
///
/// # Errors
/// The HTTP listener cannot bind, the Kafka clients cannot be created, or the stage stopped on a fatal
/// error (a failed delivery).
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let keys = KeySource::spawn(
        settings.uid2.keys.clone(),
        settings.uid2.refresh.clone(),
        settings.uid2.mode,
    );
    let consuming = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicBool::new(false));
    let state = ServerState {
        metrics: metrics.clone(),
        keys: Arc::new(keys.clone()),
        consuming: consuming.clone(),
        failed: failed.clone(),
    };
    let server_stop = CancellationToken::new();
    let server = tokio::spawn(server::serve(
        settings.server.listen,
        server::router(state),
        server_stop.clone(),
        None,
    ));
    tokio::spawn(update_key_metrics(
        keys.clone(),
        metrics.clone(),
        server_stop.clone(),
    ));

    tracing::info!(source = %keys.status().source, "Waiting for the first key set before consuming.");
    let result = tokio::select! {
        () = shutdown.cancelled() => Ok(()),
        server_result = server => match server_result {
            Ok(Err(e)) => Err(e),
            _ => Err(anyhow::anyhow!("the HTTP server stopped")),
        },
        _ = keys.wait_ready() => {
            consuming.store(true, Ordering::Relaxed);
            let deps = StageDeps {
                keys: Arc::new(keys.clone()),
                optouts: Arc::new(NoOptOuts),
                metrics: metrics.clone(),
                counters: Arc::new(RunCounters::default()),
            };
            let outcome = pipeline::run(stage_config(&settings), deps, shutdown.clone()).await;
            consuming.store(false, Ordering::Relaxed);
            if outcome.is_err() {
                failed.store(true, Ordering::Relaxed);
            }
            outcome
        }
    };
    server_stop.cancel();
    keys.stop();
    result
}

/// Keeps the key-set gauges current for `/metrics`.
async fn update_key_metrics(keys: KeyHandle, metrics: Arc<Metrics>, stop: CancellationToken) {
    let mut failures_seen = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let status = keys.status();
        if let Some(age) = status.age {
            metrics.key_set_age_seconds.set(age.as_secs_f64());
        }
        if let Some(latest) = status.latest_expiry_ms {
            metrics.key_set_latest_expiry_seconds.set(latest / 1000);
        }
        metrics
            .key_refresh_failures
            .inc_by(status.failures.saturating_sub(failures_seen));
        failures_seen = status.failures;
    }
}
