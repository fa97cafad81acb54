//! `uid2-enricher run`: wires a validated configuration into a running stage — key source, HTTP server,
//! pipeline, signals — and reports how it ended. It holds no logic of its own beyond the order of
//! start-up and shutdown; the modules below do the work.

pub(crate) mod headers;
pub mod kafka;
pub mod keysource;
pub mod optout_feed;
pub mod pipeline;
pub mod produce;
mod route;
pub mod server;
mod transaction;
pub(crate) mod validate;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::engine::optout::LiveOptOuts;
use crate::engine::tokenize::{self, Direction};
use crate::engine::uid2::KeySet;
use crate::support::metrics::{KeySourceLabel, Metrics};
use kafka::KafkaClients;
use keysource::{KeyHandle, KeyRing};
use optout_feed::{FeedConfig, Publisher};
use pipeline::{KeyProvider, OutputPartitioning, RunCounters, StageConfig, StageDeps};
use server::{OptOutEndpoint, OptOutPublisher, ServerState};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The configuration file; config/enricher.toml documents every option.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
}

impl KeyProvider for KeyHandle {
    fn current(&self) -> Option<Arc<KeySet>> {
        KeyHandle::current(self)
    }
}

/// The pipeline's part of the settings.
pub fn stage_config(s: &Settings) -> StageConfig {
    StageConfig {
        kafka: KafkaClients::new(&s.kafka),
        group_id: s.kafka.group_id.clone(),
        input_topics: s.kafka.input_topics.clone(),
        output_topic: s.kafka.output_topic.clone(),
        dlq_topic: s.kafka.dlq_topic.clone(),
        policy: s.pipeline.policy.clone(),
        format: s.pipeline.format,
        topic_formats: s.pipeline.topic_formats.clone(),
        direction: s.pipeline.direction,
        tokenize: s.pipeline.tokenize.clone(),
        enrich: s.pipeline.enrich,
        max_in_flight: s.pipeline.max_in_flight,
        cache_entries: s.pipeline.cache_entries,
        drain_timeout: s.pipeline.drain_timeout,
        shutdown_timeout: s.pipeline.shutdown_timeout,
        output_partitioning: OutputPartitioning::Key,
        delivery: s.pipeline.delivery.clone(),
    }
}

/// Runs the stage until a signal (or `shutdown`) stops it. Consuming starts only once the first key set
/// is loaded (in the tokenize direction: once the keys can encrypt) and the opt-out set has caught up
/// with its topic: before that `/readyz` answers 503 and no record is touched.
///
/// # Errors
/// The HTTP listener cannot bind, the Kafka clients cannot be created, or the stage stopped on a fatal
/// error (a failed delivery).
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    // Every client kind once, before anything connects: a property librdkafka refuses stops the stage
    // now, not after the keys and the opt-out set have loaded.
    KafkaClients::new(&settings.kafka)
        .check(&settings.kafka.group_id)
        .map_err(|e| anyhow::anyhow!("{e} (check [kafka.client], [kafka.{}])", e.table()))?;
    let metrics = Arc::new(Metrics::new());
    let mut optouts = OptOuts::start(&settings, &metrics)?;
    let keys = KeyRing::spawn(&settings.uid2);
    let readiness = Readiness::default();
    let state = ServerState {
        metrics: metrics.clone(),
        keys: Arc::new(keys.clone()),
        consuming: readiness.consuming.clone(),
        failed: readiness.failed.clone(),
        optouts: Arc::new(OptOutEndpoint {
            store: optouts.store.clone(),
            caught_up: optouts.caught_up.clone(),
            token: settings.optout.token.clone(),
            publisher: optouts.publisher.take(),
            now_ms: crate::support::clock::wall_clock_ms,
        }),
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

    tracing::info!(sources = %keys.describe(), topic = %optouts.feed.topic, "Waiting for the first key set of every key source and the opt-out set before consuming.");
    let result = tokio::select! {
        () = shutdown.cancelled() => Ok(()),
        server_result = server => match server_result {
            Ok(Err(e)) => Err(e),
            _ => Err(anyhow::anyhow!("the HTTP server stopped")),
        },
        _ = async {
            tokio::join!(
                wait_until_usable(&keys, settings.pipeline.direction),
                optouts.follower.wait_caught_up()
            )
        } => {
            let deps = StageDeps {
                keys: Arc::new(keys.clone()),
                optouts: optouts.store.clone(),
                metrics: metrics.clone(),
                counters: Arc::new(RunCounters::default()),
            };
            consume(&settings, &keys, deps, &readiness, &shutdown).await
        }
    };
    server_stop.cancel();
    keys.stop();
    optouts.stop().await;
    result
}

/// What `/readyz` reports besides the key and opt-out sets.
#[derive(Default)]
struct Readiness {
    /// The pipeline is consuming (in the tokenize direction: and the keys can encrypt).
    consuming: Arc<AtomicBool>,
    /// The pipeline stopped on a fatal error.
    failed: Arc<AtomicBool>,
}

/// The pipeline's run, once the keys are usable and the opt-out set has caught up, with readiness kept
/// current around it.
async fn consume(
    settings: &Settings,
    keys: &KeyRing,
    deps: StageDeps,
    readiness: &Readiness,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let consuming = &readiness.consuming;
    consuming.store(true, Ordering::Relaxed);
    // Tokenize: ready only while the keys can encrypt (the pipeline holds records meanwhile).
    let watch_stop = CancellationToken::new();
    let watcher = (settings.pipeline.direction == Direction::Tokenize).then(|| {
        tokio::spawn(watch_encryption(
            keys.clone(),
            consuming.clone(),
            watch_stop.clone(),
        ))
    });
    // Runs that abort at once, one after another, have a cause a restart does not cure (authorization,
    // a broker that cannot do transactions): after this many, the stage stops with the error.
    const QUICK_ABORTS: u32 = 10;
    let mut quick_aborts = 0;
    let outcome = loop {
        let started = std::time::Instant::now();
        let outcome = pipeline::run(stage_config(settings), deps.clone(), shutdown.clone()).await;
        // Exactly once: an aborted transaction ends its run, and a fresh run (new consumer and
        // transactional producer) resumes from the committed offsets.
        let aborted = outcome.as_ref().err().and_then(|e| match e.downcast_ref() {
            Some(pipeline::StageError::TransactionAborted { reason }) => Some(reason.clone()),
            _ => None,
        });
        quick_aborts = if started.elapsed() < Duration::from_secs(30) {
            quick_aborts + 1
        } else {
            0
        };
        match aborted {
            Some(reason) if !shutdown.is_cancelled() && quick_aborts < QUICK_ABORTS => {
                tracing::warn!(reason = %reason, "Restarting the pipeline from the committed offsets.");
                tokio::select! {
                    () = shutdown.cancelled() => break Ok(()),
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            _ => break outcome,
        }
    };
    watch_stop.cancel();
    if let Some(watcher) = watcher {
        // Stopped before the flag is cleared, so it cannot set it again.
        let _ = watcher.await;
    }
    consuming.store(false, Ordering::Relaxed);
    if outcome.is_err() {
        readiness.failed.store(true, Ordering::Relaxed);
    }
    outcome
}

/// The opt-out side of the stage: the follower filling the live set from the topic, whether it has
/// caught up, and the webhook's publisher (when a token is set).
struct OptOuts {
    feed: FeedConfig,
    store: Arc<LiveOptOuts>,
    publisher: Option<Arc<dyn OptOutPublisher>>,
    follower: optout_feed::Follower,
    follower_stop: CancellationToken,
    caught_up: Arc<AtomicBool>,
}

impl OptOuts {
    fn start(settings: &Settings, metrics: &Arc<Metrics>) -> anyhow::Result<OptOuts> {
        let feed = FeedConfig::from_settings(settings);
        let store = Arc::new(LiveOptOuts::new());
        let follower_stop = CancellationToken::new();
        let publisher: Option<Arc<dyn OptOutPublisher>> = match settings.optout.token {
            Some(_) => Some(Arc::new(Publisher::new(&feed)?)),
            None => {
                tracing::warn!(
                    "UID2_OPTOUT_TOKEN is not set: the opt-out webhook answers 503 (disabled); opt-outs still arrive through the topic."
                );
                None
            }
        };
        {
            // In the background: the follower waits for the topic anyway, and /healthz must answer now.
            let feed = feed.clone();
            tokio::spawn(async move { optout_feed::ensure_topic(&feed).await });
        }
        let follower = optout_feed::spawn_follower(
            &feed,
            store.clone(),
            metrics.clone(),
            follower_stop.clone(),
        )?;
        let caught_up = Arc::new(AtomicBool::new(false));
        {
            // Follows the follower both ways: it reports false again when it cannot read past a batch.
            let (mut rx, caught_up) = (follower.subscribe(), caught_up.clone());
            tokio::spawn(async move {
                loop {
                    caught_up.store(*rx.borrow_and_update(), Ordering::Relaxed);
                    if rx.changed().await.is_err() {
                        return;
                    }
                }
            });
        }
        Ok(OptOuts {
            feed,
            store,
            publisher,
            follower,
            follower_stop,
            caught_up,
        })
    }

    async fn stop(self) {
        self.follower_stop.cancel();
        let follower = self.follower;
        tokio::task::spawn_blocking(move || follower.join())
            .await
            .ok();
    }
}

/// Waits for the first key set of every source and, in the tokenize direction, for keys that can encrypt
/// (an active master key and default-keyset key): until then nothing is consumed and `/readyz` answers 503.
async fn wait_until_usable(keys: &KeyRing, direction: Direction) {
    keys.wait_ready().await;
    if direction != Direction::Tokenize {
        return;
    }
    let mut logged = false;
    loop {
        match tokenize::can_encrypt(
            keys.current().as_deref(),
            crate::support::clock::wall_clock_ms(),
        ) {
            Ok(()) => return,
            Err(e) if !logged => {
                tracing::warn!(reason = %e, "Tokenize: the key set cannot encrypt; not consuming until it can.");
                logged = true;
            }
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Tokenize direction: `/readyz` follows whether the keys can encrypt right now.
async fn watch_encryption(keys: KeyRing, ready: Arc<AtomicBool>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let ok = tokenize::can_encrypt(
            keys.current().as_deref(),
            crate::support::clock::wall_clock_ms(),
        )
        .is_ok();
        if !stop.is_cancelled() {
            ready.store(ok, Ordering::Relaxed);
        }
    }
}

/// Keeps the key-set gauges of every source current for `/metrics`.
async fn update_key_metrics(keys: KeyRing, metrics: Arc<Metrics>, stop: CancellationToken) {
    let mut failures_seen: std::collections::HashMap<String, u64> = Default::default();
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        for (name, status) in keys.statuses() {
            let label = KeySourceLabel {
                key_source: name.to_string(),
            };
            if let Some(age) = status.age {
                metrics
                    .key_set_age_seconds
                    .get_or_create(&label)
                    .set(age.as_secs_f64());
            }
            if let Some(latest) = status.latest_expiry_ms {
                metrics
                    .key_set_latest_expiry_seconds
                    .get_or_create(&label)
                    .set(latest / 1000);
            }
            let seen = failures_seen.entry(label.key_source.clone()).or_default();
            metrics
                .key_refresh_failures
                .get_or_create(&label)
                .inc_by(status.failures.saturating_sub(*seen));
            *seen = status.failures;
        }
    }
}
