//! The tokenize direction of the Kafka stage against librdkafka's in-process mock cluster: while the key
//! set cannot encrypt (no default keyset), records are held — nothing reaches the output or dead-letter
//! topic, least of all a raw UID2 — and once keys that can encrypt arrive every record goes out tokenized
//! (or dead-lettered as `invalid_raw_uid2`), in order, with nothing lost.
//!
//! The mock cluster handle is not `Send`: it stays on the test's own thread (see tests/pipeline_mock.rs).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use uid2_enricher::enrich::{PayloadFormat, Policy};
use uid2_enricher::formats::event::JsonPointer;
use uid2_enricher::optout::NoOptOuts;
use uid2_enricher::stage::kafka::KafkaClients;
use uid2_enricher::stage::pipeline::{
    self, KeyProvider, OutputPartitioning, RunCounters, StageConfig, StageDeps,
};
use uid2_enricher::support::metrics::Metrics;
use uid2_enricher::tokenize::{Direction, TokenizePolicy};
use uid2_enricher::tools::traffic::{Case, Generator, Mix};
use uid2_enricher::uid2::{ClientMode, KeySet, Status, decrypt};

/// Keys the test swaps while the stage runs.
struct Swappable(Mutex<Option<Arc<KeySet>>>);

impl KeyProvider for Swappable {
    fn current(&self) -> Option<Arc<KeySet>> {
        self.0.lock().unwrap().clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_wait_for_keys_that_can_encrypt_and_never_go_out_raw() {
    let cluster = MockCluster::new(1).unwrap();
    for (topic, partitions) in [("raw", 2), ("tok", 2), ("dlq", 1)] {
        cluster.create_topic(topic, partitions, 1).unwrap();
    }
    let brokers = cluster.bootstrap_servers();
    let now = uid2_enricher::support::clock::wall_clock_ms();
    let mix = Mix(vec![
        (Case::ValidV4, 8),
        (Case::NoToken, 1),
        (Case::Malformed, 1),
    ]);
    let mut generator = Generator::new(3, mix, now, 50, 0);
    let good = Arc::new(generator.key_set());
    let mut body: Value = serde_json::from_str(generator.keys_json()).unwrap();
    body["body"]
        .as_object_mut()
        .unwrap()
        .remove("default_keyset_id");
    let cannot = Arc::new(KeySet::parse_json(body.to_string().as_bytes()).unwrap());
    let keys = Arc::new(Swappable(Mutex::new(Some(cannot))));

    let mut policy = Policy::default();
    policy.mode = ClientMode::Sharing;
    let config = StageConfig {
        kafka: KafkaClients::from_brokers(&brokers).with_consumer([("session.timeout.ms", "6000")]),
        group_id: "tokenize".into(),
        input_topics: vec!["raw".into()],
        output_topic: "tok".into(),
        dlq_topic: "dlq".into(),
        policy,
        format: PayloadFormat::Event,
        topic_formats: Vec::new(),
        direction: Direction::Tokenize,
        tokenize: TokenizePolicy {
            pointers: vec![JsonPointer::parse("/uid2").unwrap()],
        },
        enrich: true,
        max_in_flight: 100,
        cache_entries: 0,
        drain_timeout: Duration::from_secs(2),
        shutdown_timeout: Duration::from_secs(8),
        output_partitioning: OutputPartitioning::Key,
        delivery: Default::default(),
    };
    let counters = Arc::new(RunCounters::default());
    let shutdown = CancellationToken::new();
    let deps = StageDeps {
        keys: keys.clone(),
        optouts: Arc::new(NoOptOuts),
        metrics: Arc::new(Metrics::new()),
        counters: counters.clone(),
    };
    let task = tokio::spawn(pipeline::run(config, deps, shutdown.clone()));

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let mut inputs: HashMap<String, (Vec<u8>, Option<String>, Case)> = HashMap::new();
    for _ in 0..200 {
        let (r, raw) = generator.next_raw_event();
        producer
            .send(
                FutureRecord::to("raw")
                    .key(r.id.as_bytes())
                    .payload(r.bytes.as_slice()),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        inputs.insert(r.id, (r.bytes, raw, r.case));
    }

    // Keys that cannot encrypt: records are consumed (up to the first of each partition) but nothing
    // goes out, for as long as it lasts.
    let deadline = Instant::now() + Duration::from_secs(30);
    while counters.consumed.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "the stage consumed nothing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(counters.produced.load(Ordering::Relaxed), 0);
    assert_eq!(counters.dead_lettered.load(Ordering::Relaxed), 0);
    assert!(!task.is_finished());

    // Keys that can encrypt: everything goes out.
    *keys.0.lock().unwrap() = Some(good.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    while counters.produced.load(Ordering::Relaxed) + counters.dead_lettered.load(Ordering::Relaxed)
        < 200
    {
        assert!(Instant::now() < deadline, "records did not resume");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    task.await.unwrap().unwrap();

    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "reader")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for (topic, p) in [("tok", 0), ("tok", 1), ("dlq", 0)] {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    reader.assign(&tpl).unwrap();
    let mut seen = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen < 200 {
        assert!(Instant::now() < deadline, "read only {seen} of 200");
        let Some(m) = reader.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = m.unwrap();
        seen += 1;
        let id = String::from_utf8_lossy(m.key().unwrap()).into_owned();
        let (bytes, raw, case) = &inputs[&id];
        let payload = m.payload().unwrap();
        let header = |name: &str| {
            m.headers().and_then(|h| {
                h.iter()
                    .find(|h| h.key == name)
                    .map(|h| String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned())
            })
        };
        match case {
            Case::ValidV4 => {
                assert_eq!(m.topic(), "tok");
                let raw = raw.as_deref().unwrap();
                assert!(!String::from_utf8_lossy(payload).contains(raw));
                let v: Value = serde_json::from_slice(payload).unwrap();
                let d = decrypt(
                    v["uid2"].as_str().unwrap(),
                    Some(&good),
                    ClientMode::Sharing,
                    None,
                    now + 60_000,
                );
                assert_eq!(d.status, Status::Success);
                assert_eq!(d.raw_uid2.as_deref(), Some(raw));
                assert_eq!(header("uid2-status").as_deref(), Some("tokenized"));
            }
            Case::NoToken => {
                assert_eq!(m.topic(), "tok");
                assert_eq!(payload, bytes.as_slice());
                assert_eq!(header("uid2-status").as_deref(), Some("no_raw_uid2"));
            }
            _ => {
                assert_eq!(m.topic(), "dlq");
                assert_eq!(payload, bytes.as_slice());
                assert_eq!(header("uid2-error").as_deref(), Some("invalid_raw_uid2"));
            }
        }
    }
    assert_eq!(
        counters.status("tokenized") + counters.status("no_raw_uid2"),
        counters.produced.load(Ordering::Relaxed)
    );
}
