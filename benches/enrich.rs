//! Whole-request enrichment: a bid request's bytes in, the enriched bytes out.
//!
//! For JSON requests of about 1 KB, 3 KB and 10 KB (OpenRTB 2.6 web requests with one UID2 v4 token in
//! `user.eids`, see `support::json_request`), side by side in one criterion group per size:
//! * `enrich`: `enrich::enrich` without a decrypt cache (scan + base64 + 2 × GCM + splice);
//! * `enrich_cached`: the same with a warm `DecryptCache` (the token was seen before);
//! * `dom_serde_json`: the naive baseline doing the same job with a `serde_json::Value` DOM: parse,
//!   find the token in `user.eids` / `user.ext.eids`, `uid2::decrypt` it, insert the same
//!   `uid2_enrichment` member into `user.ext`, serialise (into a new buffer, as `serde_json::to_vec`).
//!
//! Group `enrich_2KB` puts a ~2 KB JSON request next to its DOM baseline and a ~2 KB protobuf request
//! (prost-encoded `pb::BidRequest`), all without cache, and both JSON contenders once more with one
//! output buffer reused across requests (`json_into`: `enrich::enrich_into`; `dom_serde_json_into`).
//!
//! Group `sharing` covers tokens outside the bid stream: pixel hits, JSON events and the tokenize
//! direction (see `bench_sharing`).
//!
//!   cargo bench --bench enrich -- --warm-up-time 1 --measurement-time 3

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::{Map, Value};

use uid2_enricher::cache::DecryptCache;
use uid2_enricher::enrich::{self, Context, Keys, PayloadFormat, Policy};
use uid2_enricher::openrtb::{domain, json};
use uid2_enricher::optout::NoOptOuts;
use uid2_enricher::uid2::{self, ClientMode, Decryption, KeySet, Status, TokenVersion};

mod support;

const SOURCES: [&str; 2] = ["uidapi.com", "euid.eu"];
const MEMBER: &str = "uid2_enrichment";

/// The DOM baseline: what a straightforward serde_json implementation of the enricher does.
fn dom_enrich(payload: &[u8], keys: &KeySet, now_ms: i64) -> Vec<u8> {
    // As `serde_json::to_vec` starts.
    let mut out = Vec::with_capacity(128);
    dom_enrich_into(payload, keys, now_ms, &mut out);
    out
}

/// [`dom_enrich`] serialising into `out`.
fn dom_enrich_into(payload: &[u8], keys: &KeySet, now_ms: i64, out: &mut Vec<u8>) {
    let mut doc: Value = serde_json::from_slice(payload).expect("request is JSON");
    let member = {
        let name = domain::domain_or_app_name(
            str_at(&doc, "site", "domain"),
            str_at(&doc, "site", "page"),
            str_at(&doc, "app", "bundle"),
        );
        let user = doc.get("user");
        let lists = [
            user.and_then(|u| u.get("eids")),
            user.and_then(|u| u.get("ext")).and_then(|e| e.get("eids")),
        ];
        // (token, source index, occurrences) in document order, distinct tokens once.
        let mut found: Vec<(&str, usize, u32)> = Vec::new();
        let mut token_count = 0;
        for eid in lists
            .into_iter()
            .flatten()
            .filter_map(Value::as_array)
            .flatten()
        {
            let Some(source) = eid
                .get("source")
                .and_then(Value::as_str)
                .and_then(|s| SOURCES.iter().position(|n| *n == s))
            else {
                continue;
            };
            for id in eid
                .get("uids")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|u| u.get("id")?.as_str())
            {
                token_count += 1;
                match found.iter_mut().find(|(t, _, _)| *t == id) {
                    Some((_, _, n)) => *n += 1,
                    None => found.push((id, source, 1)),
                }
            }
        }
        let outcomes: Vec<(usize, Decryption)> = found
            .iter()
            .map(|(token, source, _)| {
                (
                    *source,
                    uid2::decrypt(
                        token,
                        Some(keys),
                        ClientMode::Bidstream,
                        name.as_deref(),
                        now_ms,
                    ),
                )
            })
            .collect();
        let selected = outcomes
            .iter()
            .find(|(_, d)| d.is_success())
            .or(outcomes.first());
        selected.map(|(source, d)| member_value(d, SOURCES[*source], token_count))
    };
    if let Some(member) = member
        && let Some(Value::Object(user)) = doc.get_mut("user")
    {
        let ext = user
            .entry("ext")
            .or_insert_with(|| Value::Object(Map::new()));
        if ext.is_null() {
            *ext = Value::Object(Map::new());
        }
        if let Value::Object(ext) = ext {
            ext.insert(MEMBER.to_string(), member);
        }
    }
    serde_json::to_writer(out, &doc).expect("DOM serializes");
}

fn str_at<'v>(v: &'v Value, obj: &str, field: &str) -> Option<&'v str> {
    v.get(obj)?.get(field)?.as_str()
}

/// The `uid2_enrichment` member with the fields and order of ARCHITECTURE.md.
fn member_value(d: &Decryption, source: &str, tokens: usize) -> Value {
    let mut m = Map::new();
    m.insert("status".into(), d.status.as_str().into());
    if let Some(raw) = &d.raw_uid2 {
        m.insert("raw_uid2".into(), raw.as_str().into());
    }
    m.insert("source".into(), source.into());
    if let Some(v) = d.site_id {
        m.insert("site_id".into(), v.into());
    }
    if let Some(v) = d.established_ms {
        m.insert("established".into(), v.into());
    }
    if let Some(v) = d.expires_ms {
        m.insert("expires".into(), v.into());
    }
    if let Some(v) = d.identity_type {
        m.insert("identity_type".into(), v.as_str().into());
    }
    if let Some(v) = d.token_version {
        m.insert("token_version".into(), v.number().into());
    }
    if let Some(v) = d.cstg {
        m.insert("cstg".into(), v.into());
    }
    m.insert("tokens".into(), tokens.into());
    Value::Object(m)
}

fn bench_enrich(c: &mut Criterion) {
    let keys = support::key_set();
    let now_ms = support::NOW;
    let token = support::token(TokenVersion::V4, 7);
    let policy = Policy::default();
    let cache = DecryptCache::new(10_000);
    let context = |cache| Context {
        keys: Keys::single(Some(&keys)),
        optouts: &NoOptOuts,
        cache,
        now_ms,
    };
    let no_cache = context(None);
    let cached = context(Some(&cache));

    let mut json_sizes: Vec<(&str, Vec<u8>)> = Vec::new();
    for (label, target) in [("1KB", 1024), ("2KB", 2048), ("3KB", 3072), ("10KB", 10240)] {
        let (shape, request) = support::json_request_near(target, &token);
        println!(
            "enrich fixture: JSON {label} request = {} bytes ({shape:?})",
            request.len()
        );
        json_sizes.push((label, request));
    }
    let proto = support::proto_request_near(2048, &token);
    println!(
        "enrich fixture: protobuf 2KB request = {} bytes",
        proto.len()
    );

    // Once, untimed: every variant must succeed, and the DOM baseline must produce the same document.
    for (label, request) in &json_sizes {
        for (what, ctx) in [("no cache", &no_cache), ("cache", &cached)] {
            let out = enrich::enrich(request, PayloadFormat::Json, ctx, &policy)
                .expect("request enriches");
            assert_eq!(out.status(), Some(Status::Success), "{label} {what}");
            let text = std::str::from_utf8(&out.output).unwrap();
            assert!(
                text.contains(r#""status":"success""#),
                "{label} {what}: no success member"
            );
            let dom = dom_enrich(request, &keys, now_ms);
            assert!(
                std::str::from_utf8(&dom)
                    .unwrap()
                    .contains(r#""status":"success""#),
                "{label} DOM"
            );
            let a: Value = serde_json::from_slice(&out.output).unwrap();
            let b: Value = serde_json::from_slice(&dom).unwrap();
            assert_eq!(
                a, b,
                "{label}: the DOM baseline must do the same job as enrich"
            );
        }
    }
    let out = enrich::enrich(&proto, PayloadFormat::Protobuf, &no_cache, &policy)
        .expect("protobuf enriches");
    assert_eq!(out.status(), Some(Status::Success), "protobuf");
    assert!(
        out.body_enriched && out.output.len() > proto.len(),
        "protobuf output carries the enrichment"
    );

    for (label, request) in json_sizes.iter().filter(|(l, _)| *l != "2KB") {
        let mut group = c.benchmark_group(format!("enrich_{label}"));
        group.throughput(Throughput::Bytes(request.len() as u64));
        group.bench_function("enrich", |b| {
            b.iter(|| {
                enrich::enrich(
                    black_box(request),
                    PayloadFormat::Json,
                    black_box(&no_cache),
                    &policy,
                )
            })
        });
        group.bench_function("enrich_cached", |b| {
            b.iter(|| {
                enrich::enrich(
                    black_box(request),
                    PayloadFormat::Json,
                    black_box(&cached),
                    &policy,
                )
            })
        });
        group.bench_function("dom_serde_json", |b| {
            b.iter(|| dom_enrich(black_box(request), &keys, black_box(now_ms)))
        });
        group.finish();
    }

    let (_, json_2k) = json_sizes
        .iter()
        .find(|(l, _)| *l == "2KB")
        .expect("2KB fixture");
    let mut group = c.benchmark_group("enrich_2KB");
    group.throughput(Throughput::Bytes(json_2k.len() as u64));
    group.bench_function("json", |b| {
        b.iter(|| {
            enrich::enrich(
                black_box(json_2k),
                PayloadFormat::Json,
                black_box(&no_cache),
                &policy,
            )
        })
    });
    // The baseline of the issue's goal (≥ 15× a DOM parse-modify-serialise at ~2 KB).
    group.bench_function("dom_serde_json", |b| {
        b.iter(|| dom_enrich(black_box(json_2k), &keys, black_box(now_ms)))
    });
    // The same two with one output buffer reused across requests, as replay does: `enrich_into`, and the
    // DOM serialised with `serde_json::to_writer` into the reused buffer.
    let mut reused = Vec::new();
    group.bench_function("json_into", |b| {
        b.iter(|| {
            reused.clear();
            enrich::enrich_into(
                black_box(json_2k),
                PayloadFormat::Json,
                black_box(&no_cache),
                &policy,
                &mut reused,
            )
            .map(|e| e.output.len())
        })
    });
    group.bench_function("dom_serde_json_into", |b| {
        b.iter(|| {
            reused.clear();
            dom_enrich_into(black_box(json_2k), &keys, black_box(now_ms), &mut reused);
            reused.len()
        })
    });
    group.throughput(Throughput::Bytes(proto.len() as u64));
    group.bench_function("protobuf", |b| {
        b.iter(|| {
            enrich::enrich(
                black_box(&proto),
                PayloadFormat::Protobuf,
                black_box(&no_cache),
                &policy,
            )
        })
    });
    group.finish();

    // The scan alone (no decryption, no splice), on the 2 KB request and on the same request with only
    // its UID2 eid: tells the cost of the scan, and how much of it the eids take.
    let shape_2k = json_sizes
        .iter()
        .position(|(l, _)| *l == "2KB")
        .map(|_| support::json_request_near(2048, &token).0)
        .expect("2KB shape");
    let one_eid = support::json_request(
        support::Shape {
            other_eids: 0,
            ..shape_2k
        },
        &token,
    );
    let mut group = c.benchmark_group("scan_2KB");
    group.bench_function("scan", |b| {
        b.iter(|| json::scan(black_box(json_2k), &SOURCES, MEMBER).map(|s| s.tokens.len()))
    });
    group.bench_function("scan_only_uid2_eid", |b| {
        b.iter(|| json::scan(black_box(&one_eid), &SOURCES, MEMBER).map(|s| s.tokens.len()))
    });
    group.finish();
}

/// Tokens outside the bid stream (group `sharing`), sharing mode, no cache: a ~370-byte pixel URL and a
/// ~450-byte JSON event carrying one v4 token (from `traffic::Generator`), the event next to its DOM
/// baseline (serde_json parse, decrypt, insert the member, serialise); and `tokenize` of a JSON event with
/// one raw UID2 (2 × GCM seal).
fn bench_sharing(c: &mut Criterion) {
    use uid2_enricher::tokenize::{self, TokenizeContext, TokenizePolicy};
    use uid2_enricher::tools::traffic::{Case, Generator, Mix};
    let now = 1_767_225_600_000;
    let mut generator = Generator::new(5, Mix(vec![(Case::ValidV4, 1)]), now, 1, 0);
    let keys = generator.key_set();
    let pixel = generator.next_pixel().bytes;
    let event = generator.next_event().bytes;
    let (raw_event, _) = generator.next_raw_event();
    let mut policy = Policy::default();
    policy.mode = ClientMode::Sharing;
    let ctx = Context {
        keys: Keys::single(Some(&keys)),
        optouts: &NoOptOuts,
        cache: None,
        now_ms: now,
    };
    for (name, payload, format) in [
        ("pixel", &pixel, PayloadFormat::Pixel),
        ("event", &event, PayloadFormat::Event),
    ] {
        let out = enrich::enrich(payload, format, &ctx, &policy).unwrap();
        assert_eq!(out.status_header(), "success", "{name}");
    }
    let mut group = c.benchmark_group("sharing");
    group.throughput(Throughput::Elements(1));
    group.bench_function("pixel_enrich", |b| {
        b.iter(|| {
            enrich::enrich(black_box(&pixel), PayloadFormat::Pixel, &ctx, &policy)
                .unwrap()
                .output
                .len()
        })
    });
    group.bench_function("event_enrich", |b| {
        b.iter(|| {
            enrich::enrich(black_box(&event), PayloadFormat::Event, &ctx, &policy)
                .unwrap()
                .output
                .len()
        })
    });
    group.bench_function("event_dom_serde_json", |b| {
        b.iter(|| {
            let mut doc: Value = serde_json::from_slice(black_box(&event)).unwrap();
            let token = doc["uid2_token"].as_str().unwrap().to_string();
            let d = uid2::decrypt(&token, Some(&keys), ClientMode::Sharing, None, now);
            doc["uid2_enrichment"] = member_value(&d, "uidapi.com", 1);
            serde_json::to_vec(&doc).unwrap().len()
        })
    });
    let tctx = TokenizeContext {
        keys: Some(&keys),
        now_ms: now,
    };
    let tpolicy = TokenizePolicy::default();
    let mut n = 0u8;
    let mut nonces = move || {
        n = n.wrapping_add(1);
        [n; 24]
    };
    group.bench_function("tokenize_event", |b| {
        b.iter(|| {
            tokenize::tokenize(black_box(&raw_event.bytes), &tctx, &tpolicy, &mut nonces)
                .unwrap()
                .output
                .len()
        })
    });
    group.finish();
}

criterion_group!(benches, bench_enrich, bench_sharing);
criterion_main!(benches);
