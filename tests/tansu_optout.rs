//! Opt-outs across a fleet, through a real Kafka-compatible broker (`tansu`, started by
//! `scripts/test.sh`, address in `UID2_TEST_BROKER`). Two `uid2-enricher run` processes share one opt-out
//! topic (which the instances create themselves) but consume their own input topics, so a request can be
//! sent to a chosen instance:
//! - an opt-out posted to A's webhook changes the enrichment of the next matching request through B
//!   within one second (the latency is printed);
//! - a restarted instance reports ready only once it reloaded the set, and the first request after ready
//!   is already `opted_out`;
//! - unauthenticated and malformed webhook calls are refused and add nothing to the topic.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::broker::{
    Instance, broker, create_topics, free_port, http_get, http_request, metric_sum, scratch,
    start_instance_with_env, terminate,
};
use common::{Token, bidstream_keys_json};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use uid2_enricher::uid2::TokenVersion;

const TOKEN: &str = "tansu-optout-token-5f0c2b7e";
const DAY_MS: i64 = 86_400_000;

fn now_ms() -> i64 {
    uid2_enricher::support::clock::wall_clock_ms()
}

fn run_id() -> String {
    format!("{:x}{:x}", now_ms(), std::process::id())
}

/// A fresh random 32-byte raw UID2 (base64).
fn random_uid() -> String {
    use base64::Engine as _;
    let bytes: Vec<u8> = (0..32).map(|_| fastrand::u8(..)).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A v4 token for `uid`, valid now, its identity established `established_ms`.
fn token_for(uid: &str, established_ms: i64) -> String {
    let now = now_ms();
    let mut t = Token::new(TokenVersion::V4);
    t.raw_uid2 = uid.to_string();
    t.generated_ms = now - 60_000;
    t.expires_ms = now + DAY_MS;
    t.established_ms = established_ms;
    t.nonce_seed = fastrand::u8(..);
    t.build()
}

/// One instance: its input and output topics and its HTTP port.
struct Node {
    name: String,
    config: PathBuf,
    port: u16,
    input: String,
    output: String,
}

struct Fleet {
    brokers: String,
    optout_topic: String,
    nodes: Vec<Node>,
}

fn fleet(names: &[&str]) -> Fleet {
    let brokers = broker();
    let id = run_id();
    let keys = scratch().join(format!("optout-keys-{id}.json"));
    std::fs::write(&keys, bidstream_keys_json("UID2", 3 * 86_400)).unwrap();
    let optout_topic = format!("optouts-{id}");
    let nodes: Vec<Node> = names
        .iter()
        .map(|name| {
            let (input, output, dlq) = (
                format!("in-{name}-{id}"),
                format!("out-{name}-{id}"),
                format!("dlq-{name}-{id}"),
            );
            create_topics(&brokers, &[(&input, 1), (&output, 1), (&dlq, 1)]);
            let port = free_port();
            let config = scratch().join(format!("optout-{name}-{id}.toml"));
            std::fs::write(
                &config,
                format!(
                    r#"[kafka]
brokers = "{brokers}"
group_id = "optout-{name}-{id}"
input_topics = ["{input}"]
output_topic = "{output}"
dlq_topic = "{dlq}"
[kafka.consumer]
"session.timeout.ms" = 10000
[uid2]
keys_file = "{keys}"
[optout]
topic = "{optout_topic}"
[server]
listen = "127.0.0.1:{port}"
[log]
level = "info"
"#,
                    keys = keys.display()
                ),
            )
            .unwrap();
            Node {
                name: format!("optout-{name}"),
                config,
                port,
                input,
                output,
            }
        })
        .collect();
    Fleet {
        brokers,
        optout_topic,
        nodes,
    }
}

fn start(node: &Node) -> Instance {
    start_instance_with_env(&node.config, &node.name, &[("UID2_OPTOUT_TOKEN", TOKEN)])
}

/// `/readyz`'s status, or 0 while nothing listens.
fn readyz(port: u16) -> (u16, String) {
    if std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        return (0, String::new());
    }
    http_get(port, "/readyz")
}

fn wait_ready(node: &Node) -> Duration {
    let started = Instant::now();
    while readyz(node.port).0 != 200 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{} not ready within 60 s (last: {:?}); see target/e2e/{}.log",
            node.name,
            readyz(node.port),
            node.name
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    started.elapsed()
}

fn optout_get(node: &Node, uid: &str, secs: i64, auth: Option<&str>) -> (u16, String) {
    let bearer = auth.map(|a| format!("Bearer {a}"));
    let headers: Vec<(&str, &str)> = bearer
        .as_deref()
        .map(|b| vec![("Authorization", b)])
        .unwrap_or_default();
    let user = uid
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D");
    http_request(
        node.port,
        "GET",
        &format!("/optout?user={user}&optouttime={secs}"),
        &headers,
        b"",
    )
}

fn optout_post(node: &Node, body: &str, auth: Option<&str>) -> (u16, String) {
    let bearer = auth.map(|a| format!("Bearer {a}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(b) = bearer.as_deref() {
        headers.push(("Authorization", b));
    }
    http_request(node.port, "POST", "/optout", &headers, body.as_bytes())
}

/// Sends requests to one instance's input and reads what comes out of its output.
struct Probe {
    producer: ThreadedProducer<rdkafka::producer::DefaultProducerContext>,
    reader: BaseConsumer,
    input: String,
    sent: u64,
}

impl Probe {
    fn new(brokers: &str, node: &Node) -> Probe {
        // One record per batch (tansu 0.6.0 drops the rest of a batch a fetch starts inside).
        let producer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("linger.ms", "0")
            .set("batch.num.messages", "1")
            .create()
            .unwrap();
        let reader: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", "optout-probe")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "10")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&node.output, 0, Offset::Beginning)
            .unwrap();
        reader.assign(&tpl).unwrap();
        Probe {
            producer,
            reader,
            input: node.input.clone(),
            sent: 0,
        }
    }

    fn send(&mut self, token: &str) -> String {
        self.sent += 1;
        let id = format!("req-{}-{}", self.sent, fastrand::u64(..));
        let body = format!(
            r#"{{"id":"{id}","site":{{"domain":"example.com"}},"user":{{"eids":[{{"source":"uidapi.com","uids":[{{"id":"{token}","atype":3}}]}}]}}}}"#
        );
        self.producer
            .send(BaseRecord::to(&self.input).key(&id).payload(&body))
            .map_err(|(e, _)| e)
            .unwrap();
        self.producer.flush(Duration::from_secs(10)).unwrap();
        id
    }

    /// The `status` of the enrichment member of the output whose key is `id`.
    fn status_of(&mut self, id: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let Some(m) = self.reader.poll(Duration::from_millis(20)) else {
                continue;
            };
            let m = m.unwrap();
            if m.key() != Some(id.as_bytes()) {
                continue;
            }
            let out: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            return out["user"]["ext"]["uid2_enrichment"]["status"]
                .as_str()
                .unwrap()
                .to_string();
        }
        panic!("no output for {id} within 20 s");
    }

    fn enrich(&mut self, token: &str) -> String {
        let id = self.send(token);
        self.status_of(&id)
    }
}

/// Every record of the opt-out topic, as (key, value) text, read with a fresh consumer.
fn topic_records(brokers: &str, topic: &str) -> Vec<(String, String)> {
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "optout-topic-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let metadata = reader
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let partitions: Vec<i32> = metadata.topics()[0]
        .partitions()
        .iter()
        .map(|p| p.id())
        .collect();
    assert!(!partitions.is_empty(), "the opt-out topic exists");
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)
            .unwrap();
    }
    reader.assign(&tpl).unwrap();
    let (mut records, mut at_end) = (Vec::new(), 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while at_end < partitions.len() && Instant::now() < deadline {
        match reader.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => records.push((
                String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
            )),
            Some(Err(KafkaError::PartitionEOF(_))) => at_end += 1,
            Some(Err(e)) => panic!("reading the opt-out topic: {e}"),
            None => {}
        }
    }
    // Partitions interleave in no fixed order.
    records.sort();
    records
}

#[test]
#[ignore = "needs a tansu broker; run by scripts/test.sh"]
fn opt_out_on_one_instance_reaches_another_within_a_second() {
    let f = fleet(&["a", "b"]);
    let (a, b) = (&f.nodes[0], &f.nodes[1]);
    let (instance_a, instance_b) = (start(a), start(b));
    wait_ready(a);
    wait_ready(b);
    let mut probe = Probe::new(&f.brokers, b);

    let uid = random_uid();
    let old_token = token_for(&uid, now_ms() - 30 * DAY_MS);
    assert_eq!(probe.enrich(&old_token), "success", "before the opt-out");

    let optout_secs = now_ms() / 1000 - 60;
    let (code, body) = optout_get(a, &uid, optout_secs, Some(TOKEN));
    assert_eq!(code, 200, "webhook on A: {body}");
    let acked = Instant::now();
    // The next matching requests through B, one every 20 ms, until one comes out opted out.
    let (mut first_opted_out, mut still_used) = (None, 0);
    while acked.elapsed() < Duration::from_secs(5) {
        let sent_at = acked.elapsed();
        match probe.enrich(&old_token).as_str() {
            "opted_out" => {
                first_opted_out = Some(sent_at);
                break;
            }
            "success" => still_used += 1,
            other => panic!("unexpected status {other}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let latency = first_opted_out.expect("B never saw the opt-out posted to A");
    println!(
        "tansu opt-out: webhook on A acknowledged; the first request through B sent {:.0} ms later came out opted_out ({still_used} earlier request(s) still used the UID2)",
        latency.as_secs_f64() * 1000.0
    );
    assert!(
        latency <= Duration::from_secs(1),
        "B applied A's opt-out only after {latency:?}"
    );
    // Propagation alone: a second opt-out, from the webhook call on A to B's set holding it (B's /metrics).
    let second = random_uid();
    let called = Instant::now();
    let (code, _) = optout_get(a, &second, optout_secs, Some(TOKEN));
    assert_eq!(code, 200);
    let webhook = called.elapsed();
    while metric_sum(
        &http_get(b.port, "/metrics").1,
        "uid2_enricher_optout_set_entries",
    ) < 2
    {
        assert!(
            called.elapsed() < Duration::from_secs(1),
            "B's set did not grow within 1 s"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    println!(
        "tansu opt-out: webhook call on A took {:.1} ms (to the broker's acknowledgement); B held the opt-out {:.1} ms after the call started",
        webhook.as_secs_f64() * 1000.0,
        called.elapsed().as_secs_f64() * 1000.0
    );
    // From then on B keeps it; a token whose identity was established after the opt-out is used.
    assert_eq!(probe.enrich(&old_token), "opted_out");
    let fresh = token_for(&uid, optout_secs * 1000 + 30_000);
    assert_eq!(
        probe.enrich(&fresh),
        "success",
        "established after the opt-out"
    );
    let (_, metrics_b) = http_get(b.port, "/metrics");
    assert!(metric_sum(&metrics_b, "uid2_enricher_opted_out_total") >= 2);
    assert_eq!(
        metric_sum(&metrics_b, "uid2_enricher_optout_set_entries"),
        2
    );

    // Refused calls add nothing to the topic.
    let before = topic_records(&f.brokers, &f.optout_topic);
    assert_eq!(before.len(), 2, "the two accepted opt-outs");
    assert!(before.contains(&(uid.clone(), optout_secs.to_string())));
    let other = random_uid();
    let now_s = now_ms() / 1000;
    let refused = [
        optout_get(a, &other, now_s, None),
        optout_get(a, &other, now_s, Some("not-the-token")),
        optout_get(a, &other[..40], now_s, Some(TOKEN)),
        optout_get(a, &other, now_s * 1000, Some(TOKEN)),
        optout_post(
            a,
            &format!(r#"[{{"user":"{other}","optouttime":{now_s}}}]"#),
            None,
        ),
        optout_post(
            a,
            &format!(
                r#"[{{"user":"{other}","optouttime":{now_s}}},{{"user":"x","optouttime":{now_s}}}]"#
            ),
            Some(TOKEN),
        ),
    ];
    let codes: Vec<u16> = refused.iter().map(|(c, _)| *c).collect();
    assert_eq!(codes, [401, 401, 400, 400, 401, 400], "{refused:?}");
    // Written records would have reached B by now (see above); the topic is unchanged.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(topic_records(&f.brokers, &f.optout_topic), before);
    let other_token = token_for(&other, now_ms() - DAY_MS);
    assert_eq!(probe.enrich(&other_token), "success");

    terminate(instance_a, &a.name);
    terminate(instance_b, &b.name);
}

#[test]
#[ignore = "needs a tansu broker; run by scripts/test.sh"]
fn restarted_instance_reloads_the_set_before_it_is_ready() {
    let f = fleet(&["w", "r"]);
    let (w, r) = (&f.nodes[0], &f.nodes[1]);
    let writer = start(w);
    wait_ready(w);
    // 20,000 opt-outs in two batches, then the one the test will look up last.
    let now_s = now_ms() / 1000;
    for _ in 0..2 {
        let batch: Vec<String> = (0..10_000)
            .map(|i| {
                format!(
                    r#"{{"user":"{}","optouttime":{}}}"#,
                    random_uid(),
                    now_s - 3600 + i % 1000
                )
            })
            .collect();
        let (code, body) = optout_post(w, &format!("[{}]", batch.join(",")), Some(TOKEN));
        assert_eq!(code, 200, "{body}");
    }
    let uid = random_uid();
    let (code, _) = optout_get(w, &uid, now_s - 60, Some(TOKEN));
    assert_eq!(code, 200);
    let expected = 20_001;

    // Start, stop, and start again: each start must read the whole set before reporting ready.
    let mut probe = Probe::new(&f.brokers, r);
    let token = token_for(&uid, now_ms() - 30 * DAY_MS);
    let mut reader = start(r);
    for round in 0..2 {
        let started = Instant::now();
        loop {
            let (code, body) = readyz(r.port);
            if code == 200 {
                break;
            }
            if code == 503 {
                assert!(body.starts_with("not ready"), "{body}");
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "not ready within 60 s: {body}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let ready_after = started.elapsed();
        let (_, metrics) = http_get(r.port, "/metrics");
        let entries = metric_sum(&metrics, "uid2_enricher_optout_set_entries");
        let status = probe.enrich(&token);
        println!(
            "tansu opt-out restart (start {}): ready after {:.0} ms with {entries} opt-outs loaded; first request: {status}",
            round + 1,
            ready_after.as_secs_f64() * 1000.0
        );
        assert_eq!(entries, expected, "the whole set was loaded when ready");
        assert_eq!(status, "opted_out", "the first request after ready");
        terminate(reader, &r.name);
        if round == 0 {
            reader = start(r);
        } else {
            break;
        }
    }
    terminate(writer, &w.name);
}
