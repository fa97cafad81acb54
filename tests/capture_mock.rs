//! `capture` against librdkafka's mock cluster (whose end offsets are right, unlike tansu 0.6's):
//! `--until-caught-up` stops exactly at the ends found at start, `--max` stops at N records, and a capture
//! from `end` sees nothing old. (`--from TIME` needs the broker's timestamp lookup, which the mock cluster
//! does not implement: it answers every time with the end.)

mod common;

use std::process::Command;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use uid2_enricher::tools::capture_file::{self, CaptureRecord};

async fn produce(brokers: &str, topic: &str, from: usize, n: usize) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    for i in from..from + n {
        let key = format!("k{}", i % 7);
        let value = format!(r#"{{"id":"r{i}"}}"#);
        producer
            .send(
                FutureRecord::to(topic).key(&key).payload(&value),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
    }
}

fn capture(
    config: &std::path::Path,
    output: &std::path::Path,
    extra: &[&str],
) -> Vec<CaptureRecord> {
    let run = Command::new(env!("CARGO_BIN_EXE_uid2-enricher"))
        .args(["capture", "--quiet", "--topic", "cap", "--config"])
        .arg(config)
        .arg("--output")
        .arg(output)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let mut text = String::new();
    std::io::Read::read_to_string(&mut capture_file::open_input(output).unwrap(), &mut text)
        .unwrap();
    text.lines()
        .map(|l| CaptureRecord::parse(l.as_bytes()).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_stops_where_it_was_told() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("cap", 3, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    produce(&brokers, "cap", 0, 120).await;
    let dir = common::broker::scratch();
    let keys = common::write_bidstream_keys(dir.join("capture-keys.json"));
    let config = dir.join("capture-mock.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbrokers = \"{brokers}\"\ninput_topics = [\"in\"]\n[uid2]\nkeys_file = \"{}\"\n",
            keys.display()
        ),
    )
    .unwrap();

    let all = capture(
        &config,
        &dir.join("capture-all.jsonl"),
        &["--until-caught-up"],
    );
    assert_eq!(all.len(), 120);
    let mut ids: Vec<String> = all.iter().map(|r| r.value.clone().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 120, "each record once");

    let some = capture(&config, &dir.join("capture-max.jsonl"), &["--max", "25"]);
    assert_eq!(some.len(), 25);

    // From the end: nothing, since nothing is produced while it runs.
    let none = capture(
        &config,
        &dir.join("capture-end.jsonl"),
        &["--from", "end", "--duration", "2"],
    );
    assert!(none.is_empty(), "{none:?}");

    drop(cluster);
}
