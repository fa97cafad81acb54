//! Exactly-once delivery (`delivery = "exactly_once"`) against librdkafka's in-process mock cluster:
//! the transactional flow (init, send, send_offsets_to_transaction, commit, begin), a fenced producer
//! stopping the stage, and an abortable error aborting the transaction and ending the run.
//!
//! The mock cluster (librdkafka 2.12) only simulates transactions at the protocol level: it writes no
//! commit or abort markers, so a read_committed reader sees aborted records too, and it does not store the
//! offsets a transaction commits, and it does not fence a producer whose transactional id another one
//! took. These tests therefore check the flow and the error handling (with the broker's errors
//! injected); they cannot show that a crash leaves no duplicate, which needs a broker that honours
//! transactions.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use tokio_util::sync::CancellationToken;
use uid2_enricher::enrich::{PayloadFormat, Policy};
use uid2_enricher::optout::NoOptOuts;
use uid2_enricher::stage::kafka::KafkaClients;
use uid2_enricher::stage::pipeline::{
    self, Delivery, OutputPartitioning, RunCounters, StageConfig, StageDeps, StageError,
    TransactionSettings,
};
use uid2_enricher::support::metrics::Metrics;
use uid2_enricher::tools::traffic::{Case, Generator, Mix};
use uid2_enricher::tools::verify::{VerifyOptions, verify};

fn config(brokers: &str, transactional_id: &str, max_records: u64) -> StageConfig {
    StageConfig {
        kafka: KafkaClients::from_brokers(brokers).with_consumer([("session.timeout.ms", "6000")]),
        group_id: format!("g-{transactional_id}"),
        input_topics: vec!["in".into()],
        output_topic: "out".into(),
        dlq_topic: "dlq".into(),
        policy: Policy::default(),
        format: PayloadFormat::Json,
        topic_formats: Vec::new(),
        direction: Default::default(),
        tokenize: Default::default(),
        enrich: true,
        max_in_flight: 2000,
        cache_entries: 0,
        drain_timeout: Duration::from_secs(2),
        shutdown_timeout: Duration::from_secs(8),
        output_partitioning: OutputPartitioning::Key,
        delivery: Delivery::ExactlyOnce(TransactionSettings {
            transactional_id: transactional_id.into(),
            max_records,
            max_duration: Duration::from_millis(50),
        }),
    }
}

fn cluster() -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let cluster = MockCluster::new(1).unwrap();
    for (topic, partitions) in [("in", 4), ("out", 4), ("dlq", 1)] {
        cluster.create_topic(topic, partitions, 1).unwrap();
    }
    cluster
}

struct Stage {
    counters: Arc<RunCounters>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

fn start(config: StageConfig, generator: &Generator) -> Stage {
    let (counters, metrics) = (Arc::new(RunCounters::default()), Arc::new(Metrics::new()));
    let shutdown = CancellationToken::new();
    let deps = StageDeps {
        keys: Arc::new(Some(Arc::new(generator.key_set()))),
        optouts: Arc::new(NoOptOuts),
        metrics: metrics.clone(),
        counters: counters.clone(),
    };
    let task = tokio::spawn(pipeline::run(config, deps, shutdown.clone()));
    Stage {
        counters,
        metrics,
        shutdown,
        task,
    }
}

impl Stage {
    fn out(&self) -> u64 {
        self.counters.produced.load(Ordering::Relaxed)
            + self.counters.dead_lettered.load(Ordering::Relaxed)
    }

    async fn wait_for(&self, total: u64, within: Duration) {
        let deadline = Instant::now() + within;
        while self.out() < total {
            assert!(
                Instant::now() < deadline,
                "only {} of {total} records came out",
                self.out()
            );
            assert!(!self.task.is_finished(), "the stage stopped early");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn transactions(&self, outcome: &str) -> u64 {
        let text = self.metrics.render();
        let line = format!("uid2_enricher_transactions_total{{outcome=\"{outcome}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&line)?.parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    }
}

async fn produce(brokers: &str, generator: &mut Generator, n: usize) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "2")
        .create()
        .unwrap();
    let mut deliveries = Vec::new();
    for _ in 0..n {
        let r = generator.next_request();
        deliveries.push(
            producer
                .send_result(FutureRecord::to("in").key(&r.id).payload(&r.bytes))
                .unwrap(),
        );
    }
    for d in deliveries {
        d.await.unwrap().unwrap();
    }
}

/// Records and dead letters go out inside transactions, committed every `transaction_max_records`; the
/// topics hold every input record's result once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_and_dead_letters_go_out_in_committed_transactions() {
    let cluster = cluster();
    let brokers = cluster.bootstrap_servers();
    let mix = Mix(vec![(Case::ValidV4, 20), (Case::Malformed, 1)]);
    let mut generator = Generator::new(
        61,
        mix,
        uid2_enricher::support::clock::wall_clock_ms(),
        200,
        800,
    );
    let stage = start(config(&brokers, "eos-flow", 100), &generator);
    produce(&brokers, &mut generator, 2000).await;
    stage.wait_for(2000, Duration::from_secs(60)).await;
    let dead_letters = stage.counters.dead_lettered.load(Ordering::Relaxed);
    assert!(dead_letters > 0, "the mix has malformed records");
    // Every record's transaction commits within transaction_max_ms of its send.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let committed = stage.transactions("committed");
    // A commit is due at 100 records; the ones sent while it waits for the gate ride along.
    assert!(
        committed >= 10,
        "{committed} transactions for 2,000 records at 100 each"
    );
    assert_eq!(stage.transactions("aborted"), 0);
    let metrics = stage.metrics.clone();
    stage.shutdown.cancel();
    stage.task.await.unwrap().expect("the stage stops cleanly");
    assert!(
        metrics
            .render()
            .contains("uid2_enricher_transaction_commit_seconds_count"),
    );
    let mut options = VerifyOptions::new(&brokers, "in", "out", "dlq");
    options.isolation = uid2_enricher::tools::verify::Isolation::ReadCommitted;
    let report = tokio::task::spawn_blocking(move || verify(&options))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            report.input,
            report.lost,
            report.duplicates,
            report.out_of_order
        ),
        (2000, 0, 0, 0),
        "{}",
        report.render()
    );
    println!(
        "RESULT exactly-once flow (mock cluster): 2,000 records ({dead_letters} dead letters) in {committed} committed transactions; verify read_committed: 0 lost, 0 duplicates, 0 out of order"
    );
}

/// A broker that fences the producer (another producer took its transactional id) stops the stage with
/// an error that names the id and the fix. The mock cluster does not fence by itself, so the broker's
/// answer is injected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_producer_stops_the_stage_naming_its_transactional_id() {
    let cluster = cluster();
    let brokers = cluster.bootstrap_servers();
    let mut generator = Generator::new(
        62,
        Mix(vec![(Case::ValidV4, 1)]),
        uid2_enricher::support::clock::wall_clock_ms(),
        50,
        800,
    );
    let stage = start(config(&brokers, "eos-fenced", 50), &generator);
    produce(&brokers, &mut generator, 100).await;
    stage.wait_for(100, Duration::from_secs(60)).await;
    cluster.request_errors(
        RDKafkaApiKey::EndTxn,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_PRODUCER_FENCED; 4],
    );
    produce(&brokers, &mut generator, 100).await;
    let stopped = tokio::time::timeout(Duration::from_secs(60), stage.task)
        .await
        .expect("the fenced stage stops")
        .unwrap();
    let error = stopped.expect_err("a fenced stage stops with an error");
    assert!(
        matches!(
            error.downcast_ref(),
            Some(StageError::TransactionFatal { fenced: true, .. })
        ),
        "{error:#}"
    );
    let text = format!("{error:#}");
    assert!(
        text.contains("eos-fenced")
            && text.contains("give every instance its own transactional_id"),
        "{text}"
    );
    println!(
        "RESULT exactly-once fencing (mock cluster, fenced by an injected broker answer): {text}"
    );
}

/// A partition the transaction cannot add (an abortable error) fails the delivery; the transaction is
/// aborted and the run ends with `TransactionAborted`, which the stage answers with a fresh run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abortable_error_aborts_the_transaction_and_ends_the_run() {
    let cluster = cluster();
    let brokers = cluster.bootstrap_servers();
    let mut generator = Generator::new(
        63,
        Mix(vec![(Case::ValidV4, 1)]),
        uid2_enricher::support::clock::wall_clock_ms(),
        50,
        800,
    );
    let stage = start(config(&brokers, "eos-abort", 50), &generator);
    produce(&brokers, &mut generator, 100).await;
    stage.wait_for(100, Duration::from_secs(60)).await;
    let metrics = stage.metrics.clone();
    cluster.request_errors(
        RDKafkaApiKey::AddPartitionsToTxn,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 8],
    );
    produce(&brokers, &mut generator, 100).await;
    let stopped = tokio::time::timeout(Duration::from_secs(60), stage.task)
        .await
        .expect("the run ends")
        .unwrap();
    let error = stopped.expect_err("an aborted transaction ends the run");
    assert!(
        matches!(
            error.downcast_ref(),
            Some(StageError::TransactionAborted { .. })
        ),
        "{error:#}"
    );
    assert!(
        metrics
            .render()
            .contains("uid2_enricher_transactions_total{outcome=\"aborted\"} 1"),
        "{}",
        metrics.render()
    );
    println!("RESULT exactly-once abortable error (mock cluster): {error:#}");
}
