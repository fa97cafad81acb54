//! The Kafka stage against librdkafka's in-process mock cluster: enrichment end to end (keys, headers,
//! statuses), malformed records to the dead-letter topic with reasons, brokers going down and coming back
//! mid-stream without loss, and a shutdown that drains and commits so a restart re-reads nothing.
//!
//! The mock cluster handle is not `Send`: each test keeps it on the test's own thread (the body of a
//! multi-thread `#[tokio::test]` runs on the thread that called `block_on`), while the stage runs on the
//! runtime's workers.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::broker::{header, read_all};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use uid2_enricher::enrich::{PayloadFormat, Policy};
use uid2_enricher::optout::NoOptOuts;
use uid2_enricher::stage::kafka::KafkaClients;
use uid2_enricher::stage::pipeline::{
    self, OutputPartitioning, RunCounters, StageConfig, StageDeps,
};
use uid2_enricher::support::metrics::Metrics;
use uid2_enricher::tools::traffic::{Case, Generator, Mix};

const PARTITIONS: i32 = 4;

fn config(brokers: &str, group: &str) -> StageConfig {
    StageConfig {
        kafka: KafkaClients::from_brokers(brokers)
            .with_consumer([("session.timeout.ms", "6000")])
            .with_producer([("message.timeout.ms", "60000")]),
        group_id: group.into(),
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
        cache_entries: 10_000,
        drain_timeout: Duration::from_secs(2),
        shutdown_timeout: Duration::from_secs(8),
        output_partitioning: OutputPartitioning::Key,
        delivery: Default::default(),
    }
}

fn cluster() -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let cluster = MockCluster::new(3).unwrap();
    for (topic, partitions) in [("in", PARTITIONS), ("out", PARTITIONS), ("dlq", 1)] {
        cluster.create_topic(topic, partitions, 1).unwrap();
    }
    cluster
}

struct Stage {
    counters: Arc<RunCounters>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

fn start(config: StageConfig, generator: &Generator) -> Stage {
    let counters = Arc::new(RunCounters::default());
    let shutdown = CancellationToken::new();
    let deps = StageDeps {
        keys: Arc::new(Some(Arc::new(generator.key_set()))),
        optouts: Arc::new(NoOptOuts),
        metrics: Arc::new(Metrics::new()),
        counters: counters.clone(),
    };
    let task = tokio::spawn(pipeline::run(config, deps, shutdown.clone()));
    Stage {
        counters,
        shutdown,
        task,
    }
}

impl Stage {
    async fn wait_for(&self, total: u64, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let done = self.counters.produced.load(Ordering::Relaxed)
                + self.counters.dead_lettered.load(Ordering::Relaxed);
            if done >= total {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "only {done} of {total} records came out"
            );
            assert!(!self.task.is_finished(), "the stage stopped early");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    async fn stop(self) -> Arc<RunCounters> {
        self.shutdown.cancel();
        let started = Instant::now();
        self.task.await.unwrap().expect("the stage stops cleanly");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "shutdown took {:?}",
            started.elapsed()
        );
        self.counters
    }
}

/// Produces `n` generated requests with key = request id and a `trace` header; returns id → case.
async fn produce(brokers: &str, generator: &mut Generator, n: usize) -> HashMap<String, Case> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "2")
        .create()
        .unwrap();
    let mut cases = HashMap::new();
    let mut deliveries = Vec::new();
    for _ in 0..n {
        let r = generator.next_request();
        let headers = OwnedHeaders::new().insert(Header {
            key: "trace",
            value: Some(r.id.as_bytes()),
        });
        deliveries.push(
            producer
                .send_result(
                    FutureRecord::to("in")
                        .key(r.id.as_bytes())
                        .payload(r.bytes.as_slice())
                        .headers(headers),
                )
                .unwrap(),
        );
        cases.insert(r.id, r.case);
    }
    for d in deliveries {
        d.await.unwrap().unwrap();
    }
    producer.flush(Duration::from_secs(5)).unwrap();
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enriches_end_to_end_keeping_keys_and_headers_and_dead_letters_malformed_records() {
    let cluster = cluster();
    let brokers = cluster.bootstrap_servers();
    let mix = Mix(Case::ALL.iter().map(|c| (*c, 1)).collect());
    let mut generator = Generator::new(
        3,
        mix,
        uid2_enricher::support::clock::wall_clock_ms(),
        200,
        1500,
    );
    let stage = start(config(&brokers, "g-e2e"), &generator);
    let cases = produce(&brokers, &mut generator, 1100).await;
    stage.wait_for(1100, Duration::from_secs(60)).await;
    let counters = stage.stop().await;

    let out = read_all(&brokers, &[("out", PARTITIONS)]);
    let dlq = read_all(&brokers, &[("dlq", 1)]);
    assert_eq!(
        out.len() + dlq.len(),
        cases.len(),
        "every input is in the output or the dead-letter topic"
    );
    let mut seen = HashSet::new();
    for m in &out {
        let id = std::str::from_utf8(m.key().unwrap()).unwrap();
        assert!(seen.insert(id.to_string()), "duplicate output for {id}");
        assert_eq!(header(m, "trace"), Some(id), "input headers are kept");
        let case = cases[id];
        assert_eq!(header(m, "uid2-status"), case.expected_status(), "{case:?}");
        let body: serde_json::Value =
            serde_json::from_slice(m.payload().unwrap()).expect("valid JSON out");
        if case != Case::NoToken {
            assert_eq!(
                body["user"]["ext"]["uid2_enrichment"]["status"],
                case.expected_status().unwrap()
            );
            assert!(header(m, "uid2-enrichment").is_some());
        }
    }
    for m in &dlq {
        let id = std::str::from_utf8(m.key().unwrap()).unwrap();
        assert_eq!(cases[id], Case::Malformed);
        assert_eq!(header(m, "trace"), Some(id));
        let reason = header(m, "uid2-error").unwrap();
        assert!(
            ["truncated_json", "not_utf8", "not_a_json_object"].contains(&reason),
            "{reason}"
        );
        assert_eq!(header(m, "uid2-source-topic"), Some("in"));
        assert!(
            header(m, "uid2-source-partition")
                .unwrap()
                .parse::<i32>()
                .is_ok()
        );
        assert!(
            header(m, "uid2-source-offset")
                .unwrap()
                .parse::<i64>()
                .is_ok()
        );
    }
    assert!(!dlq.is_empty());
    assert_eq!(
        counters.dead_lettered.load(Ordering::Relaxed),
        dlq.len() as u64
    );
    assert_eq!(
        counters.consumed.load(Ordering::Relaxed),
        cases.len() as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brokers_down_and_back_mid_stream_lose_nothing() {
    let cluster = cluster();
    let brokers = cluster.bootstrap_servers();
    let generator = Generator::new(
        4,
        Mix::default(),
        uid2_enricher::support::clock::wall_clock_ms(),
        500,
        1200,
    );
    let stage = start(config(&brokers, "g-outage"), &generator);
    // A paced input stream of ~8 s; every broker goes down for 2 s in the middle of it.
    let feeder = tokio::spawn({
        let brokers = brokers.clone();
        let mut generator = generator;
        async move {
            let mut cases = HashMap::new();
            for _ in 0..80 {
                cases.extend(produce(&brokers, &mut generator, 100).await);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            cases
        }
    });
    // The mock cluster delays a group's first join by 3 s: wait for the stream to flow.
    stage.wait_for(300, Duration::from_secs(30)).await;
    let before = stage.counters.produced.load(Ordering::Relaxed);
    cluster.broker_down(-1).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.broker_up(-1).unwrap();
    let cases = feeder.await.unwrap();
    assert!(
        before > 0 && before < cases.len() as u64,
        "the outage must hit mid-stream ({before} out before it)"
    );
    stage
        .wait_for(cases.len() as u64, Duration::from_secs(90))
        .await;
    stage.stop().await;

    let mut ids: HashSet<String> = HashSet::new();
    for m in read_all(&brokers, &[("out", PARTITIONS)])
        .iter()
        .chain(read_all(&brokers, &[("dlq", 1)]).iter())
    {
        ids.insert(String::from_utf8(m.key().unwrap().to_vec()).unwrap());
    }
    let lost: Vec<_> = cases.keys().filter(|id| !ids.contains(*id)).collect();
    assert!(
        lost.is_empty(),
        "{} inputs lost, e.g. {:?}",
        lost.len(),
        lost.first()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_and_commits_so_a_restart_rereads_nothing() {
    let cluster = cluster();
    let brokers = cluster.bootstrap_servers();
    let mut generator = Generator::new(
        5,
        Mix::default(),
        uid2_enricher::support::clock::wall_clock_ms(),
        500,
        1200,
    );
    let cases = produce(&brokers, &mut generator, 2000).await;
    let stage = start(config(&brokers, "g-restart"), &generator);
    stage
        .wait_for(cases.len() as u64, Duration::from_secs(60))
        .await;
    let first = stage.stop().await;
    assert_eq!(first.consumed.load(Ordering::Relaxed), 2000);

    // Committed offsets equal the end of every partition.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "g-restart")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition("in", p);
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(5))
        .unwrap();
    for elem in committed.elements() {
        let (_, high) = consumer
            .fetch_watermarks("in", elem.partition(), Duration::from_secs(5))
            .unwrap();
        assert_eq!(
            elem.offset(),
            Offset::Offset(high),
            "partition {}",
            elem.partition()
        );
    }
    drop(consumer);

    // A restarted stage in the same group finds nothing to do, then handles new input only.
    let stage = start(config(&brokers, "g-restart"), &generator);
    let more = produce(&brokers, &mut generator, 100).await;
    stage
        .wait_for(more.len() as u64, Duration::from_secs(60))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = stage.stop().await;
    assert_eq!(
        second.consumed.load(Ordering::Relaxed),
        100,
        "no record of the first run is read again"
    );
}
