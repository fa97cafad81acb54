//! The key service failing around a running stage (`uid2_enricher::stage::run`, as `uid2-enricher run`
//! wires it, against the mock cluster and a fake operator speaking the v2 envelope):
//! - down at start: `/readyz` 503, `/healthz` 200, the stage alive and nothing consumed;
//! - up: keys load, the waiting records are enriched;
//! - down mid-run: the last good key set keeps decrypting until its keys expire, then tokens get
//!   `keys_not_synced` (the SDKs' status) — never a crash, never a dead letter;
//! - back: the refresh is seen in `/metrics` and tokens decrypt again.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::broker::{free_port, http_get, metric_sum};
use common::operator;
use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;
use uid2_enricher::support::clock::wall_clock_ms;
use uid2_enricher::tools::traffic::{Case, Generator, Mix};

const CLIENT_SECRET_B64: &str = "ioG3wKxAokmp+rERx6A4kM/13qhyolUXIu14WN16Spo=";
const API_KEY: &str = "UID2-C-L-999-faultsApiKeyThatMustNotLeak=";

async fn get(port: u16, path: &'static str) -> (u16, String) {
    tokio::task::spawn_blocking(move || http_get(port, path))
        .await
        .unwrap()
}

async fn metric(port: u16, prefix: &'static str) -> u64 {
    metric_sum(&get(port, "/metrics").await.1, prefix)
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
                .send_result(FutureRecord::to("keys-in").key(&r.id).payload(&r.bytes))
                .unwrap(),
        );
    }
    for d in deliveries {
        d.await.unwrap().unwrap();
    }
}

/// Waits until the stage has acknowledged `total` output records.
async fn wait_out(port: u16, total: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = metric(port, "uid2_enricher_records_out_total").await;
        if out >= total {
            assert_eq!(out, total, "more output than input");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {out} of {total} records out"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_until(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_service_down_at_start_down_mid_run_and_back() {
    let cluster = MockCluster::new(1).unwrap();
    // The opt-out topic too: readiness waits for the opt-out set, and the mock cluster cannot create it.
    for (topic, partitions) in [
        ("keys-in", 2),
        ("keys-out", 2),
        ("keys-dlq", 1),
        ("uid2-optouts", 1),
    ] {
        cluster.create_topic(topic, partitions, 1).unwrap();
    }
    let brokers = cluster.bootstrap_servers();
    // Every request carries one valid v4 token; few users, so tokens repeat and the decrypt cache is hot.
    let mut generator = Generator::new(31, Mix(vec![(Case::ValidV4, 1)]), wall_clock_ms(), 20, 800);
    // Long enough for phases 2 and 3 (the mock cluster delays a group's first join by 3 s) on a loaded machine.
    let key_life = Duration::from_secs(15);
    let (fake, url) = operator::start(CLIENT_SECRET_B64, API_KEY, String::new(), false).await;
    let port = free_port();
    let settings = uid2_enricher::config::parse_with_env(
        &format!(
            r#"[kafka]
brokers = "{brokers}"
group_id = "g-keys"
input_topics = ["keys-in"]
output_topic = "keys-out"
dlq_topic = "keys-dlq"
[kafka.consumer]
"session.timeout.ms" = 6000
[uid2]
base_url = "{url}"
refresh_interval_secs = 1
refresh_jitter_secs = 0
retry_initial_backoff_ms = 100
retry_max_backoff_ms = 400
request_timeout_ms = 1000
[server]
listen = "127.0.0.1:{port}"
"#
        ),
        "faults_keys.toml",
        &|name| match name {
            "UID2_API_KEY" => Some(API_KEY.to_string()),
            "UID2_SECRET_KEY" => Some(CLIENT_SECRET_B64.to_string()),
            _ => None,
        },
    )
    .expect("the test configuration is valid");
    let shutdown = CancellationToken::new();
    let stage = tokio::spawn(uid2_enricher::stage::run(settings, shutdown.clone()));

    // 1. Down at start: alive, not ready, nothing consumed, retrying.
    produce(&brokers, &mut generator, 50).await;
    wait_until("the HTTP server", Duration::from_secs(5), async || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(get(port, "/readyz").await.0, 503);
    assert_eq!(get(port, "/healthz").await.0, 200);
    assert!(!stage.is_finished(), "the stage must wait, not exit");
    assert_eq!(metric(port, "uid2_enricher_records_in_total").await, 0);
    let refused_at_start = fake.refused.load(Ordering::Relaxed);
    assert!(
        refused_at_start >= 3,
        "retries with backoff: {refused_at_start}"
    );

    // 2. Up, with keys that expire soon: ready, and the waiting records come out enriched.
    let expires_at = wall_clock_ms() / 1000 + key_life.as_secs() as i64;
    fake.set_keys(operator::with_expiry(generator.keys_json(), expires_at));
    fake.set_up(true);
    wait_until("ready", Duration::from_secs(5), async || {
        get(port, "/readyz").await.0 == 200
    })
    .await;
    wait_out(port, 50).await;
    let success = "uid2_enricher_requests_total{status=\"success\"}";
    assert_eq!(metric(port, success).await, 50);

    // 3. Down mid-run: the last good keys keep decrypting until they expire…
    fake.set_up(false);
    let failures = fake.refused.load(Ordering::Relaxed);
    produce(&brokers, &mut generator, 50).await;
    wait_out(port, 100).await;
    assert!(
        wall_clock_ms() < expires_at * 1000,
        "this phase ran past the keys' expiry: raise key_life"
    );
    assert_eq!(metric(port, success).await, 100, "last good keys in use");
    wait_until("failed refreshes", Duration::from_secs(5), async || {
        fake.refused.load(Ordering::Relaxed) > failures + 2
    })
    .await;
    assert!(!stage.is_finished());
    assert_eq!(
        get(port, "/readyz").await.0,
        200,
        "still ready on last good keys"
    );
    // …and once they expired, tokens get keys_not_synced (not success from a stale cache).
    let wait = Duration::from_millis(
        u64::try_from(expires_at * 1000 - wall_clock_ms() + 500).unwrap_or(0),
    );
    tokio::time::sleep(wait).await;
    produce(&brokers, &mut generator, 50).await;
    wait_out(port, 150).await;
    let not_synced = "uid2_enricher_requests_total{status=\"keys_not_synced\"}";
    assert_eq!(metric(port, success).await, 100);
    assert_eq!(metric(port, not_synced).await, 50);
    assert_eq!(metric(port, "uid2_enricher_dead_lettered_total").await, 0);

    // 4. Back with fresh keys: the refresh shows in /metrics and tokens decrypt again.
    let fresh_expiry = wall_clock_ms() / 1000 + 365 * 86_400;
    fake.set_keys(operator::with_expiry(generator.keys_json(), fresh_expiry));
    fake.set_up(true);
    let refreshed_in = Instant::now();
    wait_until(
        "the refreshed key set",
        Duration::from_secs(5),
        async || {
            metric(
                port,
                "uid2_enricher_key_set_latest_expiry_timestamp_seconds",
            )
            .await
                == fresh_expiry as u64
        },
    )
    .await;
    let refreshed_in = refreshed_in.elapsed();
    produce(&brokers, &mut generator, 50).await;
    wait_out(port, 200).await;
    assert_eq!(metric(port, success).await, 150);
    println!(
        "RESULT key-service: down at start → 503 and 0 consumed ({refused_at_start} refused refreshes, alive); up → 50/50 success; down mid-run → 50/50 success on last good keys, then 50/50 keys_not_synced after expiry; back → refresh seen after {:.1} s, 50/50 success",
        refreshed_in.as_secs_f64()
    );
    shutdown.cancel();
    stage.await.unwrap().expect("the stage stops cleanly");
}

const EUID_CLIENT_SECRET_B64: &str = "3bWq1j0JzpQw0w9N0Hc2V2Yx1ZkYbJ2m0iQ0pT8pVxg=";
const EUID_API_KEY: &str = "EUID-C-L-998-faultsEuidApiKeyThatMustNotLeak=";

/// Two operators, UID2 and EUID, each with its own credentials: a stream mixing their tokens decrypts
/// whole; the EUID operator down at start keeps the stage not ready; the EUID operator failing mid-run
/// leaves EUID tokens on its last good keys and the UID2 source untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uid2_and_euid_operators_each_with_their_own_credentials() {
    let cluster = MockCluster::new(1).unwrap();
    for (topic, partitions) in [
        ("keys-in", 2),
        ("keys-out", 2),
        ("keys-dlq", 1),
        ("uid2-optouts", 1),
    ] {
        cluster.create_topic(topic, partitions, 1).unwrap();
    }
    let brokers = cluster.bootstrap_servers();
    // Half UID2 v4 tokens under uidapi.com, half EUID tokens (EUID keys) under euid.eu.
    let mix = Mix(vec![(Case::ValidV4, 1), (Case::EuidValid, 1)]);
    let mut generator = Generator::new(47, mix, wall_clock_ms(), 20, 800);
    let (uid2_operator, uid2_url) = operator::start(
        CLIENT_SECRET_B64,
        API_KEY,
        generator.keys_json().to_string(),
        true,
    )
    .await;
    let (euid_operator, euid_url) = operator::start(
        EUID_CLIENT_SECRET_B64,
        EUID_API_KEY,
        generator.euid_keys_json().to_string(),
        false,
    )
    .await;
    let port = free_port();
    let settings = uid2_enricher::config::parse_with_env(
        &format!(
            r#"[kafka]
brokers = "{brokers}"
group_id = "g-two-operators"
input_topics = ["keys-in"]
output_topic = "keys-out"
dlq_topic = "keys-dlq"
[kafka.consumer]
"session.timeout.ms" = 6000
[uid2]
refresh_interval_secs = 1
refresh_jitter_secs = 0
retry_initial_backoff_ms = 100
retry_max_backoff_ms = 400
request_timeout_ms = 1000
[[uid2.key_sources]]
scope = "UID2"
base_url = "{uid2_url}"
[[uid2.key_sources]]
name = "euid-eu"
scope = "EUID"
base_url = "{euid_url}"
api_key_env = "EUID_OPERATOR_API_KEY"
[server]
listen = "127.0.0.1:{port}"
"#
        ),
        "two_operators.toml",
        &|name| match name {
            "UID2_API_KEY" => Some(API_KEY.to_string()),
            "UID2_SECRET_KEY" => Some(CLIENT_SECRET_B64.to_string()),
            "EUID_OPERATOR_API_KEY" => Some(EUID_API_KEY.to_string()),
            "EUID_SECRET_KEY" => Some(EUID_CLIENT_SECRET_B64.to_string()),
            _ => None,
        },
    )
    .expect("the test configuration is valid");
    let shutdown = CancellationToken::new();
    let stage = tokio::spawn(uid2_enricher::stage::run(settings, shutdown.clone()));

    // 1. The EUID operator down at start: UID2 keys load, yet the stage is not ready and consumes nothing.
    produce(&brokers, &mut generator, 60).await;
    wait_until("the UID2 keys", Duration::from_secs(10), async || {
        uid2_operator.served.load(Ordering::Relaxed) >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (code, body) = get(port, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("from key source euid-eu"), "{body}");
    assert_eq!(metric(port, "uid2_enricher_records_in_total").await, 0);
    assert!(euid_operator.refused.load(Ordering::Relaxed) >= 3);

    // 2. The EUID operator up: ready, and every record of the mixed stream comes out `success`.
    euid_operator.set_up(true);
    wait_until("ready", Duration::from_secs(5), async || {
        get(port, "/readyz").await.0 == 200
    })
    .await;
    wait_out(port, 60).await;
    let success = "uid2_enricher_requests_total{status=\"success\"}";
    assert_eq!(metric(port, success).await, 60);
    let metrics = get(port, "/metrics").await.1;
    for label in ["key_source=\"uid2\"", "key_source=\"euid-eu\""] {
        assert!(
            metrics.lines().any(|l| l
                .starts_with("uid2_enricher_key_set_latest_expiry_timestamp_seconds{")
                && l.contains(label)),
            "no expiry gauge for {label}"
        );
    }

    // 3. The EUID operator fails mid-run: EUID tokens keep decrypting on its last good keys, the UID2
    // source keeps refreshing, and the failures are counted against the EUID source alone.
    euid_operator.set_up(false);
    let (uid2_served, euid_refused) = (
        uid2_operator.served.load(Ordering::Relaxed),
        euid_operator.refused.load(Ordering::Relaxed),
    );
    wait_until(
        "failed EUID refreshes",
        Duration::from_secs(10),
        async || euid_operator.refused.load(Ordering::Relaxed) > euid_refused + 2,
    )
    .await;
    produce(&brokers, &mut generator, 60).await;
    wait_out(port, 120).await;
    assert_eq!(
        metric(port, success).await,
        120,
        "last good EUID keys in use"
    );
    assert!(uid2_operator.served.load(Ordering::Relaxed) > uid2_served);
    assert_eq!(get(port, "/readyz").await.0, 200);
    // The failure counter is exported every 5 s.
    wait_until(
        "the EUID failures in /metrics",
        Duration::from_secs(12),
        async || {
            metric(
                port,
                "uid2_enricher_key_refresh_failures_total{key_source=\"euid-eu\"}",
            )
            .await
                > 0
        },
    )
    .await;
    let metrics = get(port, "/metrics").await.1;
    assert!(
        metrics
            .lines()
            .any(|l| l == "uid2_enricher_key_refresh_failures_total{key_source=\"uid2\"} 0"),
        "the UID2 source's failure counter is exported, at 0:\n{metrics}"
    );
    println!(
        "RESULT two operators: EUID down at start → 503 ({} EUID refreshes refused); up → 60/60 success (UID2 and EUID tokens); EUID down mid-run → 60/60 success on its last good keys, UID2 refreshing on",
        euid_refused
    );
    shutdown.cancel();
    stage.await.unwrap().expect("the stage stops cleanly");
}
