//! Log hygiene: traffic through `uid2-enricher run` at `[log] level = "debug"` (every crate's debug lines:
//! the stage, the HTTP client that calls the operator, and librdkafka with `debug = "all"`), with `UID2_API_KEY`,
//! `UID2_SECRET_KEY` and `UID2_OPTOUT_TOKEN` set to recognisable values and keys served by a fake operator
//! (so the secrets are used: the bearer token, the envelope, the key secrets), and a SASL password and a
//! TLS key password in `[kafka.client]` from the environment. The log must be non-trivial and must never
//! contain a secret, a key secret or a raw UID2 of the traffic. An OIDC client secret must not appear
//! either, whether the build can use it (the `oidc` feature) or refuses it at start.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::broker::{Instance, free_port, http_get, metric_sum, scratch, terminate};
use common::operator;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use uid2_enricher::support::clock::wall_clock_ms;
use uid2_enricher::tools::traffic::{Generator, Mix};

const API_KEY: &str = "UID2-C-L-777-LogHygieneApiKeyZZZ9xQ=";
const CLIENT_SECRET_B64: &str = "Vt3FRIA2R3fNTqRY5hTsYsvnkq/Gtuw6pfNx94e0ZzA=";
const OPTOUT_TOKEN: &str = "optout-bearer-LogHygieneTokenQQQ7";
const SASL_PASSWORD: &str = "sasl-pw-LogHygieneQQQ8";
const SSL_KEY_PASSWORD: &str = "tls-key-pw-LogHygieneQQQ9";
const OIDC_CLIENT_SECRET: &str = "oidc-secret-LogHygieneQQQ10";
const COUNT: usize = 500;

async fn metric(port: u16, prefix: &'static str) -> u64 {
    tokio::task::spawn_blocking(move || metric_sum(&http_get(port, "/metrics").1, prefix))
        .await
        .unwrap()
}

/// The `raw_uid2` values of every output record's `uid2-enrichment` header.
fn raw_uid2s(brokers: &str) -> Vec<String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "log-reader")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    let mut remaining = 0;
    for p in 0..2 {
        let (low, high) = consumer
            .fetch_watermarks("log-out", p, Duration::from_secs(5))
            .unwrap();
        remaining += high - low;
        tpl.add_partition_offset("log-out", p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut raws = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while remaining > 0 && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            remaining -= 1;
            let member = m.headers().and_then(|h| {
                h.iter()
                    .find(|h| h.key == "uid2-enrichment")
                    .and_then(|h| h.value)
                    .map(<[u8]>::to_vec)
            });
            if let Some(member) = member {
                let v: serde_json::Value = serde_json::from_slice(&member).unwrap();
                if let Some(raw) = v["raw_uid2"].as_str() {
                    raws.push(raw.to_string());
                }
            }
        }
    }
    raws.sort();
    raws.dedup();
    raws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_logs_never_print_a_secret_or_a_raw_uid2() {
    let cluster = MockCluster::new(1).unwrap();
    // The opt-out topic too: readiness waits for the opt-out set, and the mock cluster cannot create it.
    for (topic, partitions) in [
        ("log-in", 2),
        ("log-out", 2),
        ("log-dlq", 1),
        ("uid2-optouts", 1),
    ] {
        cluster.create_topic(topic, partitions, 1).unwrap();
    }
    let brokers = cluster.bootstrap_servers();
    let mut generator = Generator::new(41, Mix::default(), wall_clock_ms(), 200, 1000);
    let (_fake, url) = operator::start(
        CLIENT_SECRET_B64,
        API_KEY,
        generator.keys_json().to_string(),
        true,
    )
    .await;
    let port = free_port();
    let config = scratch().join("log-hygiene.toml");
    std::fs::write(
        &config,
        format!(
            r#"[kafka]
brokers = "{brokers}"
group_id = "g-log"
input_topics = ["log-in"]
output_topic = "log-out"
dlq_topic = "log-dlq"
[kafka.client]
"sasl.username" = "log-hygiene"
"sasl.password" = "${{KAFKA_SASL_PASSWORD}}"
"ssl.key.password" = "${{KAFKA_SSL_KEY_PASSWORD}}"
[kafka.consumer]
"session.timeout.ms" = 6000
debug = "all"
[kafka.producer]
debug = "all"
[uid2]
base_url = "{url}"
refresh_interval_secs = 1
refresh_jitter_secs = 0
[server]
listen = "127.0.0.1:{port}"
[log]
level = "debug"
"#
        ),
    )
    .unwrap();
    let log_path = scratch().join("log-hygiene.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let instance = Instance(Some(
        Command::new(env!("CARGO_BIN_EXE_uid2-enricher"))
            .args(["run", "--config"])
            .arg(&config)
            .env("UID2_API_KEY", API_KEY)
            .env("UID2_SECRET_KEY", CLIENT_SECRET_B64)
            .env("UID2_OPTOUT_TOKEN", OPTOUT_TOKEN)
            .env("KAFKA_SASL_PASSWORD", SASL_PASSWORD)
            .env("KAFKA_SSL_KEY_PASSWORD", SSL_KEY_PASSWORD)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    ));

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let mut deliveries = Vec::new();
    for _ in 0..COUNT {
        let r = generator.next_request();
        deliveries.push(
            producer
                .send_result(FutureRecord::to("log-in").key(&r.id).payload(&r.bytes))
                .unwrap(),
        );
    }
    for d in deliveries {
        d.await.unwrap().unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
        let done = if ready {
            metric(port, "uid2_enricher_records_out_total").await
                + metric(port, "uid2_enricher_dead_lettered_total").await
        } else {
            0
        };
        if done >= COUNT as u64 {
            break;
        }
        assert!(Instant::now() < deadline, "only {done} of {COUNT} out");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A few refreshes (1 s interval) so the operator call is logged more than once.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    tokio::task::spawn_blocking(|| terminate(instance, "log-hygiene"))
        .await
        .unwrap();

    let text = std::fs::read_to_string(&log_path).unwrap();
    let debug_lines = text.lines().filter(|l| l.contains("DEBUG")).count();
    // Debug lines of the operator client (reqwest/hyper) and of librdkafka, which logs every produce
    // and fetch with `debug = "all"`.
    assert!(
        debug_lines >= COUNT / 10 && text.contains("reqwest") && text.contains("librdkafka"),
        "the log must be at debug level and non-trivial: {debug_lines} debug lines"
    );
    let key_doc: serde_json::Value = serde_json::from_str(generator.keys_json()).unwrap();
    let key_secrets: Vec<String> = key_doc["body"]["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["secret"].as_str().unwrap().to_string())
        .collect();
    let raws = tokio::task::spawn_blocking({
        let brokers = brokers.clone();
        move || raw_uid2s(&brokers)
    })
    .await
    .unwrap();
    assert!(
        raws.len() >= 20,
        "traffic decrypted: {} raw UID2s",
        raws.len()
    );
    for (what, secret) in [
        ("UID2_API_KEY", API_KEY),
        ("UID2_SECRET_KEY", CLIENT_SECRET_B64),
        ("UID2_OPTOUT_TOKEN", OPTOUT_TOKEN),
        ("sasl.password", SASL_PASSWORD),
        ("ssl.key.password", SSL_KEY_PASSWORD),
    ]
    .into_iter()
    .chain(key_secrets.iter().map(|s| ("a key secret", s.as_str())))
    .chain(raws.iter().map(|r| ("a raw UID2", r.as_str())))
    {
        assert!(
            !text.contains(secret),
            "{what} appears in the debug log ({})",
            log_path.display()
        );
    }
    println!(
        "RESULT log-hygiene: {} log lines ({debug_lines} DEBUG) for {COUNT} requests; none of the 5 environment secrets, {} key secrets or {} raw UID2s of the traffic appear",
        text.lines().count(),
        key_secrets.len(),
        raws.len()
    );
}

#[test]
fn an_oidc_client_secret_never_appears() {
    let port = free_port();
    let config = scratch().join("log-hygiene-oidc.toml");
    std::fs::write(
        &config,
        format!(
            r#"[kafka]
brokers = "127.0.0.1:1"
[kafka.client]
"security.protocol" = "SASL_PLAINTEXT"
"sasl.mechanisms" = "OAUTHBEARER"
"sasl.oauthbearer.method" = "oidc"
"sasl.oauthbearer.client.id" = "log-hygiene"
"sasl.oauthbearer.client.secret" = "${{KAFKA_OIDC_CLIENT_SECRET}}"
"sasl.oauthbearer.token.endpoint.url" = "http://127.0.0.1:1/token"
debug = "all"
[uid2]
keys_file = "{keys}"
[server]
listen = "127.0.0.1:{port}"
[log]
level = "debug"
"#,
            keys = concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo-keys.json")
        ),
    )
    .unwrap();
    let log_path = scratch().join("log-hygiene-oidc.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_uid2-enricher"))
        .args(["run", "--config"])
        .arg(&config)
        .env("KAFKA_OIDC_CLIENT_SECRET", OIDC_CLIENT_SECRET)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    // Without the oidc feature the stage refuses the configuration at once; with it, librdkafka tries the
    // (unreachable) token endpoint while the stage waits.
    let speaks_of_oidc = || {
        let text = std::fs::read_to_string(&log_path).unwrap().to_lowercase();
        text.contains("oauthbearer") || text.contains("oidc")
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline && child.try_wait().unwrap().is_none() && !speaks_of_oidc() {
        std::thread::sleep(Duration::from_millis(100));
    }
    // A few more seconds of librdkafka retrying the token endpoint.
    std::thread::sleep(Duration::from_secs(3));
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        speaks_of_oidc(),
        "the log speaks of the OIDC settings: {text}"
    );
    assert!(
        !text.contains(OIDC_CLIENT_SECRET),
        "the OIDC client secret appears in the log ({})",
        log_path.display()
    );
    println!(
        "RESULT log-hygiene, OIDC: {} log lines, no client secret",
        text.lines().count()
    );
}
