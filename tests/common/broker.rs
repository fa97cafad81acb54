//! Helpers for tests against a real broker (`tansu`, started by `scripts/test.sh`, address in
//! `UID2_TEST_BROKER`): topics, free ports, `uid2-enricher run` processes that never outlive a test, and
//! reading an instance's `/metrics`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::util::Timeout;

pub fn broker() -> String {
    std::env::var("UID2_TEST_BROKER")
        .expect("UID2_TEST_BROKER is not set: run scripts/test.sh, which starts tansu")
}

pub fn scratch() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("e2e");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn create_topics(brokers: &str, topics: &[(&str, i32)]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(t, p)| NewTopic::new(t, *p, TopicReplication::Fixed(1)))
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let results = rt
        .block_on(admin.create_topics(
            &new,
            &AdminOptions::new().operation_timeout(Some(Timeout::After(Duration::from_secs(10)))),
        ))
        .unwrap();
    for r in results {
        r.unwrap_or_else(|(topic, e)| panic!("creating {topic}: {e}"));
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plain HTTP/1.0 GET against an instance's `[server]` listener: (status code, body).
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    http_request(port, "GET", path, &[], b"")
}

/// The sum of every sample of the metrics whose line starts with `prefix` in a `/metrics` text.
pub fn metric_sum(metrics: &str, prefix: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// (records consumed, output + dead-letter deliveries acknowledged) from an instance's `/metrics`.
pub fn stage_counts(port: u16) -> (u64, u64) {
    let (_, body) = http_get(port, "/metrics");
    (
        metric_sum(&body, "uid2_enricher_records_in_total"),
        metric_sum(&body, "uid2_enricher_records_out_total")
            + metric_sum(&body, "uid2_enricher_dead_lettered_total"),
    )
}

/// A running instance; killed if the test fails before stopping it, so no process outlives the test.
pub struct Instance(pub Option<Child>);

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn start_instance(config: &PathBuf, name: &str) -> Instance {
    start_instance_with_env(config, name, &[])
}

/// As [`start_instance`], with extra environment variables (e.g. `UID2_OPTOUT_TOKEN`).
pub fn start_instance_with_env(config: &PathBuf, name: &str, env: &[(&str, &str)]) -> Instance {
    let log = std::fs::File::create(scratch().join(format!("{name}.log"))).unwrap();
    Instance(Some(
        Command::new(env!("CARGO_BIN_EXE_uid2-enricher"))
            .args(["run", "--config"])
            .arg(config)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting uid2-enricher run"),
    ))
}

/// Stops an instance with SIGTERM; it must exit 0 within 10 s.
pub fn terminate(instance: Instance, name: &str) {
    terminate_within(instance, name, Duration::from_secs(10));
}

/// Stops an instance with SIGTERM; it must exit 0 within `bound` (it is killed 5 s after that). Returns
/// how long it took.
pub fn terminate_within(mut instance: Instance, name: &str, bound: Duration) -> Duration {
    let Some(mut child) = instance.0.take() else {
        return Duration::ZERO;
    };
    let started = Instant::now();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{name} exited with {status}; see its log");
            assert!(
                started.elapsed() < bound,
                "{name} took {:?} to stop",
                started.elapsed()
            );
            return started.elapsed();
        }
        if started.elapsed() > bound + Duration::from_secs(5) {
            let _ = child.kill();
            panic!("{name} did not stop within {bound:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Stops an instance the hard way (SIGKILL): no drain, no commit, no flush.
pub fn kill9(mut instance: Instance) {
    if let Some(mut child) = instance.0.take() {
        child.kill().expect("sending SIGKILL");
        let _ = child.wait();
    }
}

/// Produces `records` (key, payload) to `topic` one record per batch (see `tests/tansu_e2e.rs` on
/// tansu's mid-batch fetch), at most `per_second` records a second; returns when all are acknowledged.
///
/// Panics if any record is refused, or if the broker acknowledges nothing for [`PRODUCE_STALL`]; queued
/// records never expire. The bound is on progress, not on the whole load: tansu on two shared cores
/// took 190 s for one 100,000-record phase of `tansu_e2e` on a quiet machine and more than 300 s (the
/// former fixed bound) in a slow phase of the same VM.
pub fn produce_paced(brokers: &str, topic: &str, records: &[(String, Vec<u8>)], per_second: u64) {
    use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
    let producer: ThreadedProducer<CountFailures> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("batch.num.messages", "1")
        .set("linger.ms", "0")
        .set("queue.buffering.max.messages", "1000000")
        // Never expire a queued record: with librdkafka's default (300 s), records still queued when a
        // slow broker had not taken them yet were dropped with only a delivery error, and the test then
        // counted them as lost by the stage (seen twice on 2026-12-02).
        .set("message.timeout.ms", "0")
        .create_with_context(CountFailures::default())
        .unwrap();
    let started = Instant::now();
    for (i, (key, payload)) in records.iter().enumerate() {
        let due = Duration::from_secs_f64(i as f64 / per_second.max(1) as f64);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
        let mut record = BaseRecord::to(topic)
            .key(key.as_bytes())
            .payload(payload.as_slice());
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
    let mut in_flight = producer.in_flight_count();
    let mut last_progress = Instant::now();
    while let Err(e) = producer.flush(Duration::from_secs(5)) {
        let now = producer.in_flight_count();
        if now < in_flight {
            (in_flight, last_progress) = (now, Instant::now());
        }
        assert!(
            last_progress.elapsed() < PRODUCE_STALL,
            "the broker acknowledged nothing for {PRODUCE_STALL:?}, {now} records still in flight: {e}"
        );
    }
    let failed = producer
        .context()
        .0
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(failed, 0, "records the broker did not accept");
}

/// Counts failed deliveries: the default context only logs them.
#[derive(Default)]
pub struct CountFailures(std::sync::atomic::AtomicU64);

impl rdkafka::ClientContext for CountFailures {}

impl rdkafka::producer::ProducerContext for CountFailures {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &rdkafka::producer::DeliveryResult<'_>, _: ()) {
        if result.is_err() {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// How long [`produce_paced`] waits for the broker to acknowledge one more record.
pub const PRODUCE_STALL: Duration = Duration::from_secs(120);

/// A `run` configuration for a test instance, written to `target/e2e/<name>.toml`; `extra` is appended
/// as is (e.g. a `[pipeline]` table).
#[allow(clippy::too_many_arguments)]
pub fn write_config(
    name: &str,
    brokers: &str,
    group: &str,
    topics: (&str, &str, &str),
    keys_file: &std::path::Path,
    port: u16,
    extra: &str,
) -> PathBuf {
    let (input, output, dlq) = topics;
    let path = scratch().join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"[kafka]
brokers = "{brokers}"
group_id = "{group}"
input_topics = ["{input}"]
output_topic = "{output}"
dlq_topic = "{dlq}"
[kafka.consumer]
"session.timeout.ms" = 6000
[uid2]
keys_file = "{keys}"
[server]
listen = "127.0.0.1:{port}"
[log]
level = "info"
{extra}
"#,
            keys = keys_file.display()
        ),
    )
    .unwrap();
    path
}

/// A plain HTTP/1.0 request with extra headers and a body against 127.0.0.1:`port`: (status code, body).
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("connecting to 127.0.0.1:{port}{path}: {e}"));
    let mut request = format!(
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    conn.write_all(request.as_bytes()).unwrap();
    conn.write_all(body).unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).unwrap();
    let code = response
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string());
    (code, body)
}

/// Every record of `topics` ((topic, partitions)), read from the beginning up to their ends as of now
/// (assigned partitions, no group, nothing committed); gives up after 30 s.
pub fn read_all(brokers: &str, topics: &[(&str, i32)]) -> Vec<rdkafka::message::OwnedMessage> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    let mut remaining = 0;
    for (topic, partitions) in topics {
        for p in 0..*partitions {
            let (low, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(5))
                .unwrap();
            remaining += high - low;
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .unwrap();
        }
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while (out.len() as i64) < remaining && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            out.push(m.detach());
        }
    }
    out
}

/// The value of header `key` of a record, if it is there and UTF-8.
pub fn header<'a>(m: &'a rdkafka::message::OwnedMessage, key: &str) -> Option<&'a str> {
    use rdkafka::Message;
    use rdkafka::message::Headers;
    m.headers()?
        .iter()
        .find(|h| h.key == key)
        .and_then(|h| std::str::from_utf8(h.value?).ok())
}
