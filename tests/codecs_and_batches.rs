//! What the stage reads and writes on the wire, against librdkafka's mock cluster (which stores record
//! batches exactly as they were produced, compressed or damaged): input compressed with each of Kafka's
//! codecs and output produced with each, counts exact; and a damaged record batch, written by a raw
//! Produce request, which must stop the stage with an error naming topic, partition and offset, with
//! nothing committed past it, however often it is restarted.
//!
//! The mock cluster handle is not `Send`: each test keeps it on the test's own thread.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::broker::read_all;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use uid2_enricher::enrich::{PayloadFormat, Policy};
use uid2_enricher::optout::NoOptOuts;
use uid2_enricher::stage::kafka::KafkaClients;
use uid2_enricher::stage::pipeline::{
    self, OutputPartitioning, RunCounters, StageConfig, StageDeps,
};
use uid2_enricher::support::clock::wall_clock_ms;
use uid2_enricher::support::metrics::Metrics;
use uid2_enricher::tools::traffic::{Generator, Mix};
use uid2_enricher::tools::verify::{VerifyOptions, verify};

const CODECS: [&str; 4] = ["gzip", "snappy", "lz4", "zstd"];

fn config(kafka: KafkaClients, group: &str, input: &str) -> StageConfig {
    StageConfig {
        kafka: kafka.with_consumer([("session.timeout.ms", "6000")]),
        group_id: group.into(),
        input_topics: vec![input.into()],
        output_topic: format!("{input}-out"),
        dlq_topic: format!("{input}-dlq"),
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
        delivery: Default::default(),
    }
}

fn deps(generator: &Generator, counters: Arc<RunCounters>) -> StageDeps {
    StageDeps {
        keys: Arc::new(Some(Arc::new(generator.key_set()))),
        optouts: Arc::new(NoOptOuts),
        metrics: Arc::new(Metrics::new()),
        counters,
    }
}

/// Produces `records` (key, value) to `topic` with `compression.type` = `codec`.
async fn produce(brokers: &str, topic: &str, codec: &str, records: &[(String, Vec<u8>)]) {
    produce_to(brokers, topic, None, codec, records).await;
}

/// [`produce`] into one partition, or by key when `None`.
async fn produce_to(
    brokers: &str,
    topic: &str,
    partition: Option<i32>,
    codec: &str,
    records: &[(String, Vec<u8>)],
) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("compression.type", codec)
        .set("linger.ms", "20")
        .create()
        .unwrap_or_else(|e| panic!("a {codec} producer: {e}"));
    let deliveries: Vec<_> = records
        .iter()
        .map(|(k, v)| {
            producer
                .send_result(FutureRecord {
                    partition,
                    ..FutureRecord::to(topic).key(k).payload(v)
                })
                .unwrap()
        })
        .collect();
    for d in deliveries {
        d.await.unwrap().unwrap();
    }
    producer.flush(Duration::from_secs(5)).unwrap();
}

fn requests(generator: &mut Generator, n: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|_| {
            let r = generator.next_request();
            (r.id, r.bytes)
        })
        .collect()
}

/// Each codec on the input and another on the output, through the stage on `brokers`; `create_topic`
/// makes a topic there. Checked by request id with `verify`: every input out once, none lost.
async fn every_codec_through(broker_name: &str, brokers: &str, create_topic: impl Fn(&str, i32)) {
    const N: usize = 300;
    let mut generator = Generator::new(7, Mix::default(), wall_clock_ms(), 100, 1500);
    for (i, input_codec) in CODECS.iter().enumerate() {
        // Each input codec with a different output codec, so each appears on both sides.
        let output_codec = CODECS[(i + 1) % CODECS.len()];
        let input = format!("codec-{input_codec}-{}", std::process::id());
        for (topic, partitions) in [
            (input.clone(), 2),
            (format!("{input}-out"), 2),
            (format!("{input}-dlq"), 1),
        ] {
            create_topic(&topic, partitions);
        }
        let records = requests(&mut generator, N);
        produce(brokers, &input, input_codec, &records).await;

        let counters = Arc::new(RunCounters::default());
        let shutdown = CancellationToken::new();
        let kafka =
            KafkaClients::from_brokers(brokers).with_producer([("compression.type", output_codec)]);
        let mut config = config(kafka, &format!("g-{input}"), &input);
        config.kafka = config.kafka.with_consumer([
            ("fetch.wait.max.ms", "10"),
            ("heartbeat.interval.ms", "1000"),
        ]);
        let stage = tokio::spawn(pipeline::run(
            config,
            deps(&generator, counters.clone()),
            shutdown.clone(),
        ));
        let deadline = Instant::now() + Duration::from_secs(90);
        while counters.produced.load(Ordering::Relaxed)
            + counters.dead_lettered.load(Ordering::Relaxed)
            < N as u64
        {
            assert!(
                Instant::now() < deadline && !stage.is_finished(),
                "{broker_name}, {input_codec} in / {output_codec} out: only {} of {N} out",
                counters.produced.load(Ordering::Relaxed)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        shutdown.cancel();
        stage.await.unwrap().expect("the stage stops cleanly");

        let options = VerifyOptions::new(
            brokers,
            &input,
            &format!("{input}-out"),
            &format!("{input}-dlq"),
        );
        let report = tokio::task::spawn_blocking(move || verify(&options))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                report.input,
                report.lost,
                report.duplicates,
                report.unexpected
            ),
            (N as u64, 0, 0, 0),
            "{broker_name}, {input_codec} in / {output_codec} out: {report:?}"
        );
        println!(
            "RESULT codecs on {broker_name}: {N} records compressed with {input_codec} in, {output_codec} out: every one out once ({} dead-lettered), none lost",
            counters.dead_lettered.load(Ordering::Relaxed)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_codec_in_and_out_on_the_mock_cluster() {
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    every_codec_through("the mock cluster", &brokers, |topic, partitions| {
        cluster.create_topic(topic, partitions, 1).unwrap()
    })
    .await;
}

/// The same through tansu (which decompresses batches when they are produced and compresses them again
/// when they are fetched).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a tansu broker (UID2_TEST_BROKER); run by scripts/test.sh"]
async fn every_codec_in_and_out_through_tansu() {
    let brokers = common::broker::broker();
    every_codec_through("tansu", &brokers, |topic, partitions| {
        tokio::task::block_in_place(|| {
            common::broker::create_topics(&brokers, &[(topic, partitions)])
        })
    })
    .await;
}

/// CRC-32C (Castagnoli), which a record batch's header carries.
fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A v2 record batch of `count` records whose compressed body (`codec`: 1 gzip, 2 snappy, 3 lz4,
/// 4 zstd) is not what the codec wrote: what a broken producer or a damaged disk leaves behind.
fn damaged_batch(codec: i16, count: i32) -> Vec<u8> {
    let now = wall_clock_ms();
    let mut tail = Vec::new(); // from the attributes to the end: what the CRC covers
    tail.extend_from_slice(&codec.to_be_bytes());
    tail.extend_from_slice(&(count - 1).to_be_bytes()); // last offset delta
    tail.extend_from_slice(&now.to_be_bytes()); // base timestamp
    tail.extend_from_slice(&now.to_be_bytes()); // max timestamp
    tail.extend_from_slice(&(-1i64).to_be_bytes()); // producer id
    tail.extend_from_slice(&(-1i16).to_be_bytes()); // producer epoch
    tail.extend_from_slice(&(-1i32).to_be_bytes()); // base sequence
    tail.extend_from_slice(&count.to_be_bytes());
    tail.extend_from_slice(
        b"\x17this is not a compressed record set at all, whatever the attributes say",
    );
    let mut batch = Vec::new();
    batch.extend_from_slice(&0i64.to_be_bytes()); // base offset (the broker assigns it)
    batch.extend_from_slice(&((4 + 1 + 4 + tail.len()) as i32).to_be_bytes());
    batch.extend_from_slice(&(-1i32).to_be_bytes()); // partition leader epoch
    batch.push(2); // magic
    batch.extend_from_slice(&crc32c(&tail).to_be_bytes());
    batch.extend_from_slice(&tail);
    batch
}

fn kafka_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as i16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Sends `batch` to `topic`/`partition` on `broker` with a hand-written Produce v3 request (what no
/// client library would produce) and returns the partition's error code from the response.
fn raw_produce(broker: &str, topic: &str, partition: i32, batch: &[u8]) -> i16 {
    let mut body = Vec::new();
    body.extend_from_slice(&0i16.to_be_bytes()); // api key: Produce
    body.extend_from_slice(&3i16.to_be_bytes()); // api version
    body.extend_from_slice(&7i32.to_be_bytes()); // correlation id
    kafka_string(&mut body, "raw-producer");
    body.extend_from_slice(&(-1i16).to_be_bytes()); // transactional id: null
    body.extend_from_slice(&(-1i16).to_be_bytes()); // acks: all
    body.extend_from_slice(&5000i32.to_be_bytes()); // timeout
    body.extend_from_slice(&1i32.to_be_bytes()); // one topic
    kafka_string(&mut body, topic);
    body.extend_from_slice(&1i32.to_be_bytes()); // one partition
    body.extend_from_slice(&partition.to_be_bytes());
    body.extend_from_slice(&(batch.len() as i32).to_be_bytes());
    body.extend_from_slice(batch);
    let mut stream = TcpStream::connect(broker).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(&(body.len() as i32).to_be_bytes())
        .unwrap();
    stream.write_all(&body).unwrap();
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).unwrap();
    let mut response = vec![0u8; i32::from_be_bytes(size) as usize];
    stream.read_exact(&mut response).unwrap();
    // correlation id, topic count, topic name, partition count, partition index, then the error code.
    let name_len = i16::from_be_bytes([response[8], response[9]]) as usize;
    let at = 10 + name_len + 4 + 4;
    i16::from_be_bytes([response[at], response[at + 1]])
}

fn committed(brokers: &str, group: &str, topic: &str) -> Offset {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, 0);
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    committed.elements()[0].offset()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_batch_stops_the_stage_naming_where_with_nothing_committed_past_it() {
    const BEFORE: usize = 40;
    const AFTER: usize = 25;
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    for (topic, partitions) in [("bad", 1), ("bad-out", 1), ("bad-dlq", 1)] {
        cluster.create_topic(topic, partitions, 1).unwrap();
    }
    let mut generator = Generator::new(9, Mix::default(), wall_clock_ms(), 100, 1200);
    produce(&brokers, "bad", "lz4", &requests(&mut generator, BEFORE)).await;
    let code = raw_produce(&brokers, "bad", 0, &damaged_batch(3, 5));
    assert_eq!(
        code, 0,
        "the mock broker stores the damaged batch as written"
    );
    produce(&brokers, "bad", "lz4", &requests(&mut generator, AFTER)).await;

    // Twice: a restarted stage (what an orchestrator does) re-reads from the same place and stops there
    // again; it never skips the batch.
    for round in 1..=2 {
        let counters = Arc::new(RunCounters::default());
        let started = Instant::now();
        let outcome = tokio::time::timeout(
            Duration::from_secs(60),
            pipeline::run(
                config(KafkaClients::from_brokers(&brokers), "g-bad", "bad"),
                deps(&generator, counters.clone()),
                CancellationToken::new(),
            ),
        )
        .await
        .unwrap_or_else(|_| panic!("round {round}: the stage went on past the damaged batch"));
        let error = format!("{:#}", outcome.expect_err("the stage stops"));
        println!(
            "RESULT unreadable batch, round {round}: stopped after {:.1} s with: {error}",
            started.elapsed().as_secs_f64()
        );
        assert!(
            error.contains(&format!("bad [0] at offset {BEFORE}")),
            "names topic, partition and offset: {error}"
        );
        assert!(
            error.to_lowercase().contains("compression"),
            "names the cause: {error}"
        );
        assert!(error.contains("Nothing past it was committed"), "{error}");
        let out = read_all(&brokers, &[("bad-out", 1), ("bad-dlq", 1)]);
        assert_eq!(
            out.len(),
            BEFORE,
            "round {round}: exactly the records before the batch came out (output or dead letter), once"
        );
        assert_eq!(
            committed(&brokers, "g-bad", "bad"),
            Offset::Offset(BEFORE as i64),
            "round {round}: the group's offset stops at the damaged batch"
        );
        if round == 2 {
            assert_eq!(
                counters.consumed.load(Ordering::Relaxed),
                0,
                "a restart re-reads nothing before the batch"
            );
        }
    }
}

/// With a backlog in two partitions, the error names the partition that holds the damaged batch, and the
/// healthy partition goes on to its end meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_batch_is_named_among_partitions_with_backlog() {
    const HEALTHY: usize = 400;
    const BEFORE: usize = 30;
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    for (topic, partitions) in [("two", 2), ("two-out", 2), ("two-dlq", 1)] {
        cluster.create_topic(topic, partitions, 1).unwrap();
    }
    let mut generator = Generator::new(11, Mix::default(), wall_clock_ms(), 100, 1200);
    produce_to(
        &brokers,
        "two",
        Some(1),
        "lz4",
        &requests(&mut generator, BEFORE),
    )
    .await;
    assert_eq!(raw_produce(&brokers, "two", 1, &damaged_batch(4, 3)), 0);
    produce_to(
        &brokers,
        "two",
        Some(1),
        "lz4",
        &requests(&mut generator, 20),
    )
    .await;
    produce_to(
        &brokers,
        "two",
        Some(0),
        "lz4",
        &requests(&mut generator, HEALTHY),
    )
    .await;
    let counters = Arc::new(RunCounters::default());
    let outcome = tokio::time::timeout(
        Duration::from_secs(60),
        pipeline::run(
            config(KafkaClients::from_brokers(&brokers), "g-two", "two"),
            deps(&generator, counters.clone()),
            CancellationToken::new(),
        ),
    )
    .await
    .expect("the stage stops");
    let error = format!("{:#}", outcome.expect_err("the stage stops"));
    println!("RESULT unreadable batch among two partitions: {error}");
    assert!(
        error.contains(&format!(
            "cannot read the record batch in two [1] at offset {BEFORE}:"
        )),
        "names the one partition: {error}"
    );
    let out = read_all(&brokers, &[("two-out", 2), ("two-dlq", 1)]);
    assert_eq!(
        out.len(),
        HEALTHY + BEFORE,
        "the healthy partition to its end, the other up to the batch"
    );
}
