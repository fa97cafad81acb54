//! Tokenized sharing end to end through a real broker (`tansu`), with `uid2-enricher run` processes:
//! stage 1 (`direction = "tokenize"`, sharing keys) turns raw UID2s in JSON events into v4 tokens; stage 2
//! (sharing mode, the events' topic mapped to the `json` format in `[pipeline.formats]`) decrypts them.
//! Every original raw UID2 must come back, events without one pass byte for byte, events with an invalid
//! one are dead-lettered by stage 1 with `uid2-error: invalid_raw_uid2`, and no raw UID2 ever reaches the
//! tokenized topic. A third stage in the tokenize direction with keys that cannot encrypt (no default
//! keyset) must stay not ready and consume nothing.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::broker::{
    broker, create_topics, free_port, http_get, metric_sum, produce_paced, scratch, start_instance,
    terminate,
};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;
use uid2_enricher::tools::traffic::{Case, Generator, Mix};

const PARTITIONS: i32 = 2;

/// A stage's configuration; `topics` are (input, output, dead-letter).
fn stage_config(
    brokers: &str,
    group: &str,
    (input, output, dlq): (&str, &str, &str),
    keys: &std::path::Path,
    port: u16,
    pipeline: &str,
) -> String {
    format!(
        r#"[kafka]
brokers = "{brokers}"
group_id = "{group}"
input_topics = ["{input}"]
output_topic = "{output}"
dlq_topic = "{dlq}"
[kafka.consumer]
"session.timeout.ms" = 10000
[uid2]
mode = "sharing"
keys_file = "{keys}"
[server]
listen = "127.0.0.1:{port}"
[pipeline]
{pipeline}
"#,
        keys = keys.display()
    )
}

struct Seen {
    payload: Vec<u8>,
    headers: HashMap<String, String>,
}

#[test]
#[ignore = "needs a tansu broker; run by scripts/test.sh"]
fn tokenize_then_decrypt_with_sharing_keys_gives_every_raw_uid2_back() {
    let brokers = broker();
    let count = 3000usize;
    let run_id = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    );
    let t = |name: &str| format!("{name}-{run_id}");
    let (raw_topic, tokenized, enriched, dlq1, dlq2, idle_out) = (
        t("sh-raw"),
        t("sh-tokenized"),
        t("sh-enriched"),
        t("sh-dlq1"),
        t("sh-dlq2"),
        t("sh-idle-out"),
    );
    create_topics(
        &brokers,
        &[
            (&raw_topic, PARTITIONS),
            (&tokenized, PARTITIONS),
            (&enriched, PARTITIONS),
            (&dlq1, 1),
            (&dlq2, 1),
            (&idle_out, 1),
        ],
    );

    let now = uid2_enricher::support::clock::wall_clock_ms();
    let mix = Mix(vec![
        (Case::ValidV4, 85),
        (Case::NoToken, 12),
        (Case::Malformed, 3),
    ]);
    let mut generator = Generator::new(31, mix, now, 1_000, 500);
    let keys = scratch().join("sharing-keys.json");
    std::fs::write(&keys, generator.keys_json()).unwrap();
    // The same keys without a default keyset: they decrypt, but cannot encrypt.
    let mut no_default: Value = serde_json::from_str(generator.keys_json()).unwrap();
    no_default["body"]
        .as_object_mut()
        .unwrap()
        .remove("default_keyset_id");
    let keys_no_default = scratch().join("sharing-keys-no-default.json");
    std::fs::write(&keys_no_default, no_default.to_string()).unwrap();

    let (port1, port2, port_idle) = (free_port(), free_port(), free_port());
    let cfg1 = scratch().join("sharing-tokenize.toml");
    std::fs::write(
        &cfg1,
        stage_config(
            &brokers,
            &t("tokenize"),
            (&raw_topic, &tokenized, &dlq1),
            &keys,
            port1,
            "direction = \"tokenize\"\nformat = \"json\"\ntokenize_pointers = [\"/uid2\"]",
        ),
    )
    .unwrap();
    let cfg2 = scratch().join("sharing-decrypt.toml");
    std::fs::write(
        &cfg2,
        stage_config(
            &brokers,
            &t("decrypt"),
            (&tokenized, &enriched, &dlq2),
            &keys,
            port2,
            &format!(
                "event_token_pointers = [\"/uid2\"]\n[pipeline.formats]\n\"{tokenized}\" = \"json\""
            ),
        ),
    )
    .unwrap();
    let cfg_idle = scratch().join("sharing-cannot-encrypt.toml");
    std::fs::write(
        &cfg_idle,
        stage_config(
            &brokers,
            &t("idle"),
            (&raw_topic, &idle_out, &dlq1),
            &keys_no_default,
            port_idle,
            "direction = \"tokenize\"\nformat = \"json\"",
        ),
    )
    .unwrap();

    // Inputs: id → (bytes, raw UID2 or None, case). One record per batch (tansu 0.6.0 mid-batch fetch
    // bug; see tests/tansu_e2e.rs).
    let mut inputs: HashMap<String, (Vec<u8>, Option<String>, Case)> = HashMap::new();
    let records: Vec<(String, Vec<u8>)> = (0..count)
        .map(|_| {
            let (r, raw) = generator.next_raw_event();
            inputs.insert(r.id.clone(), (r.bytes.clone(), raw, r.case));
            (r.id, r.bytes)
        })
        .collect();
    assert_eq!(inputs.len(), count, "generated ids are distinct");

    let started = Instant::now();
    let stage1 = start_instance(&cfg1, "sharing-tokenize");
    let stage2 = start_instance(&cfg2, "sharing-decrypt");
    let idle = start_instance(&cfg_idle, "sharing-cannot-encrypt");
    // One record per batch, as fast as the broker takes them (see tests/tansu_e2e.rs on tansu's batches).
    produce_paced(&brokers, &raw_topic, &records, u64::MAX);

    // Read the decrypted output, both dead-letter topics and the tokenized topic (to check no raw UID2
    // is on it) until every input is accounted for.
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", t("reader"))
        .set("enable.auto.commit", "false")
        .set("max.partition.fetch.bytes", "67108864")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(&enriched, p, Offset::Beginning)
            .unwrap();
        tpl.add_partition_offset(&tokenized, p, Offset::Beginning)
            .unwrap();
    }
    tpl.add_partition_offset(&dlq1, 0, Offset::Beginning)
        .unwrap();
    tpl.add_partition_offset(&dlq2, 0, Offset::Beginning)
        .unwrap();
    reader.assign(&tpl).unwrap();
    let mut out: HashMap<String, Seen> = HashMap::new();
    let mut dead1: HashMap<String, Seen> = HashMap::new();
    let mut dead2 = 0usize;
    let mut on_tokenized = 0usize;
    let expected_dead = inputs
        .values()
        .filter(|(_, _, c)| *c == Case::Malformed)
        .count();
    let deadline = Instant::now() + Duration::from_secs(180);
    while out.len() + dead1.len() < count || on_tokenized < count - expected_dead {
        assert!(
            Instant::now() < deadline,
            "after 180 s: {} outputs, {} dead letters, {on_tokenized} tokenized of {count}",
            out.len(),
            dead1.len()
        );
        let Some(m) = reader.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m.expect("reading");
        let id = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
        let payload = m.payload().unwrap_or_default().to_vec();
        let headers: HashMap<String, String> = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_string(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let seen = Seen { payload, headers };
        if m.topic() == tokenized {
            on_tokenized += 1;
            // No raw UID2 leaves the tokenize stage.
            if let Some((_, Some(raw), _)) = inputs.get(&id) {
                assert!(
                    !String::from_utf8_lossy(&seen.payload).contains(raw.as_str()),
                    "{id}: raw UID2 on the tokenized topic"
                );
                assert_eq!(
                    seen.headers.get("uid2-status").map(String::as_str),
                    Some("tokenized")
                );
            }
        } else if m.topic() == enriched {
            out.insert(id, seen);
        } else if m.topic() == dlq1 {
            dead1.insert(id, seen);
        } else {
            dead2 += 1;
        }
    }
    let elapsed = started.elapsed();

    let (mut round_trips, mut passed, mut dead) = (0, 0, 0);
    for (id, (bytes, raw, case)) in &inputs {
        match case {
            Case::ValidV4 => {
                let seen = out
                    .get(id)
                    .unwrap_or_else(|| panic!("{id}: no decrypted output"));
                let v: Value = serde_json::from_slice(&seen.payload).unwrap();
                let raw = raw.as_deref().unwrap();
                assert_ne!(v["uid2"].as_str(), Some(raw), "{id}: still raw");
                // v4: the second character is the version ("A4…", or "B4…" when the raw UID2 starts with
                // `B`, the SDK senders' phone quirk).
                assert_eq!(
                    v["uid2"].as_str().unwrap().get(1..2),
                    Some("4"),
                    "{id}: v4 token"
                );
                assert_eq!(v["uid2_enrichment"]["status"], "success", "{id}");
                assert_eq!(v["uid2_enrichment"]["raw_uid2"], raw, "{id}: raw UID2 back");
                assert_eq!(
                    seen.headers.get("uid2-status").map(String::as_str),
                    Some("success")
                );
                round_trips += 1;
            }
            Case::NoToken => {
                let seen = out.get(id).unwrap_or_else(|| panic!("{id}: no output"));
                assert_eq!(&seen.payload, bytes, "{id}: passes byte for byte");
                assert_eq!(
                    seen.headers.get("uid2-status").map(String::as_str),
                    Some("no_token")
                );
                passed += 1;
            }
            _ => {
                let seen = dead1
                    .get(id)
                    .unwrap_or_else(|| panic!("{id}: not dead-lettered"));
                assert_eq!(&seen.payload, bytes, "{id}: original bytes in the DLQ");
                assert_eq!(
                    seen.headers.get("uid2-error").map(String::as_str),
                    Some("invalid_raw_uid2")
                );
                assert_eq!(
                    seen.headers.get("uid2-source-topic").map(String::as_str),
                    Some(raw_topic.as_str())
                );
                dead += 1;
            }
        }
    }
    assert_eq!(dead2, 0, "stage 2 dead-lettered nothing");
    assert!(round_trips > 0 && passed > 0 && dead > 0);

    // The stage whose keys cannot encrypt: not ready, nothing consumed, nothing produced.
    let (code, body) = http_get(port_idle, "/readyz");
    assert_eq!(code, 503, "{body}");
    let (_, metrics) = http_get(port_idle, "/metrics");
    assert_eq!(metric_sum(&metrics, "uid2_enricher_records_in_total"), 0);
    assert_eq!(metric_sum(&metrics, "uid2_enricher_records_out_total"), 0);
    let (code, _) = http_get(port1, "/readyz");
    assert_eq!(code, 200, "the tokenize stage with good keys is ready");
    let log = std::fs::read_to_string(scratch().join("sharing-cannot-encrypt.log")).unwrap();
    assert!(
        log.contains("cannot encrypt"),
        "the idle stage says why it waits:\n{log}"
    );

    terminate(stage1, "sharing-tokenize");
    terminate(stage2, "sharing-decrypt");
    terminate(idle, "sharing-cannot-encrypt");
    eprintln!(
        "tansu sharing: {count} events; {round_trips} raw UID2s tokenized by stage 1 and decrypted back by stage 2, {passed} without a raw UID2 passed unchanged, {dead} invalid ones dead-lettered; all through in {:.1} s; the stage without a default keyset stayed not ready and consumed nothing",
        elapsed.as_secs_f64()
    );
}
