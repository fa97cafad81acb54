//! Sharing interop with the official UID2 SDK (`uid2-client` from PyPI), both directions:
//! 1. tokens the SDK's sharing sender makes (`SharingClient._encrypt_raw_uid_into_token`), carried in
//!    tracking-pixel URLs and JSON events that Python's own encoders wrote, enrich in sharing mode to the
//!    raw UID2s the SDK encrypted;
//! 2. tokens the `tokenize` direction makes from raw UID2s in JSON events decrypt in the SDK's
//!    `SharingClient` to the same raw UID2s.
//!
//! Needs the Python SDK venv: `scripts/test.sh` runs these with `--ignored` and `UID2_PYTHON`. By hand:
//! `source scripts/lib/python-venv.sh && cargo test --test interop_sharing -- --ignored --nocapture`.

mod common;

use common::sdk::{python, repo, scratch};

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};
use uid2_enricher::enrich::{Context, Keys, PayloadFormat, Policy, enrich};
use uid2_enricher::formats::event::JsonPointer;
use uid2_enricher::formats::pixel;
use uid2_enricher::optout::NoOptOuts;
use uid2_enricher::tokenize::{self, TokenizeContext, TokenizePolicy, TokenizeStatus};
use uid2_enricher::uid2::{ClientMode, KeySet};

fn sdk_sharing(args: &[&str], file: &Path) -> (bool, String) {
    let out = Command::new(python())
        .arg(repo().join("scripts/interop/sdk_sharing.py"))
        .args(args)
        .arg(file)
        .output()
        .expect("running scripts/interop/sdk_sharing.py");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn sharing_policy() -> Policy {
    let mut p = Policy::default();
    p.mode = ClientMode::Sharing;
    p
}

#[test]
#[ignore = "needs the Python SDK venv (UID2_PYTHON); run by scripts/test.sh"]
fn sdk_sharing_tokens_in_pixels_and_events_decrypt_to_the_same_raw_uid2s() {
    let file = scratch("sdk-sharing-cases.json");
    let (ok, log) = sdk_sharing(&["make", "--count", "120"], &file);
    assert!(ok, "sdk_sharing.py make failed:\n{log}");
    let doc: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let keys = KeySet::parse_json(doc["keys"].as_str().unwrap().as_bytes()).unwrap();
    let now_ms = doc["now_ms"].as_i64().unwrap();
    let ctx = Context {
        keys: Keys::single(Some(&keys)),
        optouts: &NoOptOuts,
        cache: None,
        now_ms,
    };
    let cases = doc["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 120);
    let (mut pixels, mut events) = (0, 0);
    for (i, case) in cases.iter().enumerate() {
        let raw = case["raw_uid2"].as_str().unwrap();

        let hit = case["pixel"].as_str().unwrap();
        let out = enrich(
            hit.as_bytes(),
            PayloadFormat::Pixel,
            &ctx,
            &sharing_policy(),
        )
        .unwrap();
        assert_eq!(out.status_header(), "success", "case {i}: {hit}");
        let text = std::str::from_utf8(&out.output).unwrap();
        // Read the result back the way a receiver would: the first `uid2_raw` parameter, decoded.
        assert_eq!(
            pixel::find(text, "uid2_raw").token.as_deref(),
            Some(raw),
            "case {i}: {text}"
        );
        assert!(text.starts_with(hit.split('#').next().unwrap()), "case {i}");
        pixels += 1;

        let event = case["event"].as_str().unwrap();
        let mut policy = sharing_policy();
        policy.event_token_pointers =
            vec![JsonPointer::parse(case["event_pointer"].as_str().unwrap()).unwrap()];
        let out = enrich(event.as_bytes(), PayloadFormat::Event, &ctx, &policy).unwrap();
        assert_eq!(out.status_header(), "success", "case {i}: {event}");
        let member: Value = serde_json::from_str(out.member_json.as_deref().unwrap()).unwrap();
        assert_eq!(member["raw_uid2"], raw, "case {i}");
        assert_eq!(member["token_version"], 4);
        let parsed: Value = serde_json::from_slice(&out.output).unwrap();
        let original: Value = serde_json::from_str(event).unwrap();
        assert_eq!(
            strip_enrichment(parsed),
            original,
            "case {i}: only the member was added"
        );
        events += 1;
    }
    eprintln!(
        "interop_sharing: {pixels} pixel hits and {events} JSON events carrying SDK sharing tokens decrypted to the SDK's raw UID2s"
    );
}

/// The value with every `uid2_enrichment` member removed.
fn strip_enrichment(v: Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(k, _)| k != "uid2_enrichment")
                .map(|(k, v)| (k, strip_enrichment(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(strip_enrichment).collect()),
        other => other,
    }
}

#[test]
#[ignore = "needs the Python SDK venv (UID2_PYTHON); run by scripts/test.sh"]
fn tokenize_direction_tokens_decrypt_in_the_sdk_sharing_client() {
    use base64::Engine as _;
    // The SDK harness's key set (random secrets, default keyset 4321), so the SDK holds the same keys.
    let made = scratch("sdk-sharing-keys.json");
    let (ok, log) = sdk_sharing(&["make", "--count", "1", "--seed", "21"], &made);
    assert!(ok, "sdk_sharing.py make failed:\n{log}");
    let doc: Value = serde_json::from_slice(&std::fs::read(&made).unwrap()).unwrap();
    let keys_json = doc["keys"].as_str().unwrap().to_string();
    let keys = KeySet::parse_json(keys_json.as_bytes()).unwrap();
    let now_ms = doc["now_ms"].as_i64().unwrap();

    let policy = TokenizePolicy {
        pointers: vec![
            JsonPointer::parse("/uid2").unwrap(),
            JsonPointer::parse("/partner/0/uid2").unwrap(),
        ],
    };
    let ctx = TokenizeContext {
        keys: Some(&keys),
        now_ms,
    };
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut cases = Vec::new();
    for k in 0..150u64 {
        // v2 (32-byte) and v3 (33-byte, email `A…` / phone `B…`) raw UID2s.
        let mut bytes: Vec<u8> = (0..32).map(|_| next() as u8).collect();
        match k % 3 {
            1 => bytes.insert(0, 0x00),
            2 => bytes.insert(0, 0x04),
            _ => {}
        }
        let raw = base64::engine::general_purpose::STANDARD.encode(&bytes);
        let event = if k % 2 == 0 {
            format!(r#"{{"event":"segment","uid2":"{raw}","segments":[{k}]}}"#)
        } else {
            format!(r#"{{ "partner" : [ {{"uid2" : "{raw}"}} ], "n": 1.50 }}"#)
        };
        let mut nonces = || {
            let mut n = [0u8; 24];
            for chunk in n.chunks_mut(8) {
                chunk.copy_from_slice(&next().to_le_bytes());
            }
            n
        };
        let out = tokenize::tokenize(event.as_bytes(), &ctx, &policy, &mut nonces).unwrap();
        assert_eq!(out.status, TokenizeStatus::Tokenized);
        let v: Value = serde_json::from_slice(&out.output).unwrap();
        let token = if k % 2 == 0 {
            v["uid2"].as_str()
        } else {
            v["partner"][0]["uid2"].as_str()
        }
        .unwrap()
        .to_string();
        assert!(!String::from_utf8_lossy(&out.output).contains(&raw));
        cases.push(json!({"token": token, "raw_uid2": raw}));
    }
    let file = scratch("rust-tokenized.json");
    std::fs::write(
        &file,
        serde_json::to_vec(&json!({"keys": keys_json, "now_ms": now_ms + 5_000, "cases": cases}))
            .unwrap(),
    )
    .unwrap();
    let (ok, report) = sdk_sharing(&["check"], &file);
    assert!(
        ok,
        "the SDK's SharingClient rejected tokenize output:\n{report}"
    );
    let report: Value = serde_json::from_str(report.trim()).unwrap();
    assert_eq!(report["ok"], 150, "{report}");
    eprintln!(
        "interop_sharing: 150 tokens from the tokenize direction decrypted in the SDK's SharingClient to the original raw UID2s"
    );
}
