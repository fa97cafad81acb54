//! `replay --to-topic` then `capture` through a real broker (`tansu`, started by `scripts/test.sh`, address
//! in `UID2_TEST_BROKER`): the values, keys and headers come back byte for byte, text and binary alike,
//! in order per key.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use common::broker::{broker, create_topics, scratch};
use uid2_enricher::tools::capture_file::{self, CaptureRecord, HeaderPair};

type Record = (Option<Vec<u8>>, Vec<(String, Option<Vec<u8>>)>, Vec<u8>);

fn comparable(r: &CaptureRecord) -> Record {
    let headers = r
        .headers
        .iter()
        .map(|(k, v): &HeaderPair| (k.clone(), v.as_ref().and_then(|v| v.to_bytes())))
        .collect();
    (r.key_bytes().unwrap(), headers, r.value_bytes().unwrap())
}

#[test]
#[ignore = "needs a tansu broker; run by scripts/test.sh"]
fn replay_to_a_topic_then_capture_gives_back_the_same_records() {
    let brokers = broker();
    let run_id = format!("{:x}", uid2_enricher::support::clock::wall_clock_ms());
    let topic = format!("replay-{run_id}");
    create_topics(&brokers, &[(&topic, 4)]);
    let dir = scratch();
    let keys = common::write_bidstream_keys(dir.join("replay-keys.json"));
    let config = dir.join(format!("replay-{run_id}.toml"));
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbrokers = \"{brokers}\"\ngroup_id = \"g-{run_id}\"\ninput_topics = [\"in-{run_id}\"]\n\
             output_topic = \"out-{run_id}\"\ndlq_topic = \"dlq-{run_id}\"\n[uid2]\nkeys_file = \"{}\"\n",
            keys.display()
        ),
    )
    .unwrap();

    // Text and binary values, keys and headers; JSON escapes that must survive; a header without value.
    let mut sent: Vec<CaptureRecord> = Vec::new();
    for i in 0..600u32 {
        let mut r = CaptureRecord::default();
        match i % 4 {
            0 => r.set_value(
                format!(r#"{{"id":"r{i}","s":"caf\u00e9 \"q\" \\ \t","n":1.50e3}}"#).as_bytes(),
            ),
            1 => r.set_value(&[0x0a, 0x02, b'r', (i % 256) as u8, 0xff, 0x00, 0x80]),
            2 => r.set_value(format!("{{\"id\":\"r{i}\",\n\"multi\":\"line\"}}").as_bytes()),
            _ => r.set_value(b""),
        }
        match i % 3 {
            0 => r.set_key(Some(format!("user-{}", i % 17).as_bytes())),
            1 => r.set_key(Some(&[0xfe, (i % 13) as u8])),
            _ => r.set_key(None),
        }
        r.push_header("trace", Some(format!("t-{i}").as_bytes()));
        if i % 5 == 0 {
            r.push_header("empty", None);
            r.push_header("bin", Some(&[0x80, 0x81, (i % 256) as u8]));
            r.push_header("trace", Some(b"repeated name"));
        }
        sent.push(r);
    }
    let input = dir.join(format!("replay-{run_id}.jsonl.zst"));
    let mut out = capture_file::Output::create(&input).unwrap();
    for r in &sent {
        let mut line = Vec::new();
        r.write_line(&mut line);
        out.write_lines(&line, 1).unwrap();
    }
    out.finish().unwrap();

    let bin = env!("CARGO_BIN_EXE_uid2-enricher");
    let replay = Command::new(bin)
        .args(["replay", "--input"])
        .arg(&input)
        .args(["--to-topic", &topic, "--config"])
        .arg(&config)
        .args(["--rate", "5000", "--quiet"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&replay.stderr);
    assert!(replay.status.success(), "{stderr}");
    assert!(
        stderr.contains("acknowledged by the broker: 600"),
        "{stderr}"
    );

    let captured_path = dir.join(format!("capture-{run_id}.jsonl.gz"));
    let capture = Command::new(bin)
        .args(["capture", "--config"])
        .arg(&config)
        .args(["--topic", &topic, "--output"])
        .arg(&captured_path)
        // tansu 0.6 answers ListOffsets(latest) with the last batch's base offset + 1, so the end offsets
        // --until-caught-up relies on cannot be trusted there: stop when the topic goes quiet instead.
        .args(["--idle", "3", "--duration", "60", "--quiet"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&capture.stderr);
    assert!(capture.status.success(), "{stderr}");
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut capture_file::open_input(&captured_path).unwrap(),
        &mut text,
    )
    .unwrap();
    let captured: Vec<CaptureRecord> = text
        .lines()
        .map(|l| CaptureRecord::parse(l.as_bytes()).unwrap())
        .collect();
    assert_eq!(captured.len(), sent.len(), "{stderr}");
    for r in &captured {
        assert_eq!(r.topic.as_deref(), Some(topic.as_str()));
        assert!(r.partition.is_some_and(|p| (0..4).contains(&p)));
        assert!(r.offset.is_some() && r.ts.is_some());
    }

    let mut expected: Vec<Record> = sent.iter().map(comparable).collect();
    let mut got: Vec<Record> = captured.iter().map(comparable).collect();
    // Order per key is Kafka's guarantee (one key, one partition); compare that first.
    let by_key = |records: &[Record]| {
        let mut m: BTreeMap<Vec<u8>, Vec<Vec<u8>>> = BTreeMap::new();
        for (k, _, v) in records {
            if let Some(k) = k {
                m.entry(k.clone()).or_default().push(v.clone());
            }
        }
        m
    };
    assert_eq!(by_key(&got), by_key(&expected), "per-key order");
    expected.sort();
    got.sort();
    assert_eq!(got, expected, "values, keys and headers byte for byte");
}
