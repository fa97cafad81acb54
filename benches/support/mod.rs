//! Fixtures shared by the benches (`decrypt`, `enrich`, `optout`, `latency`): the cross-SDK
//! key material of `../shared/spec/uid2-tokens.md` §7 (master 164, site 165, site 9000), tokens made with
//! the crate's own generator, and realistic OpenRTB 2.6 bid requests (JSON and protobuf) of a chosen size
//! carrying exactly one UID2 v4 token.
//!
//! Everything is deterministic: fixed nonces, fixed `NOW`, no randomness, so runs compare.
#![allow(dead_code)]

use base64::Engine as _;
use serde_json::{Value, json};

use uid2_enricher::openrtb::proto::pb;
use uid2_enricher::optout::RawUid2;
use uid2_enricher::uid2::cipher::Secret;
use uid2_enricher::uid2::encrypt::{self, TokenSpec};
use uid2_enricher::uid2::{IdentityScope, IdentityType, KeySet, TokenVersion};

pub const MASTER_KEY_ID: u32 = 164;
pub const SITE_KEY_ID: u32 = 165;
pub const MASTER_SECRET_HEX: &str =
    "8b25f1ad125c24e8a5a8171226c37b5ca088b9285bada5dda810a9a4268b089b";
pub const SITE_SECRET_HEX: &str =
    "20fb07c2849afa56ca74681d83c08bd730a40b41e26ea70e6c33fe7d41181785";
pub const SITE_ID: i32 = 9000;
/// A 32-byte raw UID2 (spec §7), as the Python SDK bench uses: v4 tokens are 163 bytes = 218 chars.
pub const RAW_UID2: &str = "ywsvDNINiZOVSsfkHpLpSJzXzhr6Jx9Z/4Q0+lsEUvM=";
/// 2026-01-01T00:00:00Z.
pub const NOW: i64 = 1_767_225_600_000;
pub const DAY_MS: i64 = 86_400_000;
/// Registrable domain of site 9000 in the key set (only CSTG tokens are checked against it).
pub const SITE_DOMAIN: &str = "example.com";

pub const VERSIONS: [TokenVersion; 3] = [TokenVersion::V2, TokenVersion::V3, TokenVersion::V4];

pub fn version_label(version: TokenVersion) -> &'static str {
    match version {
        TokenVersion::V2 => "v2",
        TokenVersion::V3 => "v3",
        TokenVersion::V4 => "v4",
    }
}

fn secret(hex_text: &str) -> Secret {
    Secret::new(hex::decode(hex_text).unwrap().try_into().unwrap())
}

fn b64(hex_text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(hex::decode(hex_text).unwrap())
}

/// A `/v2/key/bidstream` response body: the §7 keys, 3-day bidstream lifetime, 1800 s skew, site 9000.
pub fn bidstream_keys_json() -> String {
    format!(
        r#"{{"body":{{"max_bidstream_lifetime_seconds":259200,"identity_scope":"UID2","allow_clock_skew_seconds":1800,
        "keys":[{{"id":{MASTER_KEY_ID},"created":1609459200,"activates":1609459200,"expires":2556144000,"secret":"{m}"}},
                {{"id":{SITE_KEY_ID},"created":1609459200,"activates":1609459200,"expires":2556144000,"secret":"{s}"}}],
        "site_data":[{{"id":{SITE_ID},"domain_names":["{SITE_DOMAIN}","example.org"]}},{{"id":2,"domain_names":["example.net"]}}]}},
        "status":"success"}}"#,
        m = b64(MASTER_SECRET_HEX),
        s = b64(SITE_SECRET_HEX)
    )
}

/// The key set, parsed once per bench binary.
pub fn key_set() -> KeySet {
    KeySet::parse_json(bidstream_keys_json().as_bytes()).expect("bench key set parses")
}

/// A valid bidstream token of `version`: generated an hour before `NOW`, expiring a day after it,
/// not client-side generated (no domain check). `seed` varies the nonces, so tokens differ.
pub fn token(version: TokenVersion, seed: u8) -> String {
    let master = secret(MASTER_SECRET_HEX);
    let site = secret(SITE_SECRET_HEX);
    encrypt::generate(&TokenSpec {
        version,
        raw_uid2: RAW_UID2,
        scope: IdentityScope::Uid2,
        identity_type: IdentityType::Email,
        prefix_override: None,
        master_key_id: MASTER_KEY_ID,
        master_secret: &master,
        site_key_id: SITE_KEY_ID,
        site_secret: &site,
        site_id: SITE_ID,
        publisher_id: 0,
        client_key_id: 0,
        privacy_bits: 0,
        expires_ms: NOW + DAY_MS,
        generated_ms: NOW - 3_600_000,
        established_ms: NOW - 30 * DAY_MS,
        refreshed_ms: NOW - 3_600_000,
        operator_site_id: 0,
        operator_type: 1,
        operator_version: 0,
        operator_key_id: 0,
        master_nonce: [seed; 16],
        site_nonce: [seed.wrapping_add(1); 16],
    })
    .expect("bench token generates")
}

// ------------------------------------------------------------------------------------------------------
// JSON bid requests

/// How big a request is. Every request has site, device (long UA + `sua`), imp(s), regs with GPP,
/// source.schain and user.eids with the UID2 token; `full` adds what a rich exchange sends (geo, full
/// `sua` versions, site content and publisher details, a TCF consent string, a long GPP string, a
/// two-node schain).
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// Impressions (banner with formats, floors, ext.gpid when `full`).
    pub imps: usize,
    /// Non-UID2 entries in `user.eids` (the UID2 one is inserted in the middle).
    pub other_eids: usize,
    /// Segments in `user.data[0]` and `site.content.data[0]` together (only when `full`).
    pub segments: usize,
    pub full: bool,
}

const UA: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) \
                  Chrome/124.0.6367.91 Safari/537.36 Edg/124.0.2478.67";
const GPP: &str = "DBABMA~CPXxRfAPXxRfAAfKABENB-CgAAAAAAAAAAYgAAAAAAAA.QFukWSQgAIQwgI0QEByFAAAAeIAACAIgSAAQAIAgEQACEAB\
                   AAAgAQFAEAIAAAGBAAgAAAAQAIFAAMCQAAgAAQiRAEQAAAAANAAIAAggAIYQFAAARmggBC3ZCYzU2yIA.YAAAAAAAAAA";
const GPP_SHORT: &str = "DBABzw~1YNN";
const TCF_CONSENT: &str =
    "CPXxRfAPXxRfAAfKABENB-CgAAAAAAAAAAYgAAAAAAAA.QFukWSQgAIQwgI0QEByFAAAAeIAACAIgSAAQAIAgEQACEAB";

const EID_SOURCES: [(&str, usize, u8); 8] = [
    ("liveramp.com", 70, 3),
    ("id5-sync.com", 40, 1),
    ("criteo.com", 32, 1),
    ("pubcid.org", 36, 1),
    ("adserver.org", 36, 1),
    ("liveintent.com", 28, 3),
    ("crwdcntrl.net", 40, 1),
    ("33across.com", 44, 1),
];

/// A deterministic pseudo-id of `len` url-safe characters.
fn pseudo_id(seed: usize, len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut x = (seed as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ALPHABET[(x % 64) as usize] as char
        })
        .collect()
}

fn imp(i: usize) -> Value {
    json!({
        "id": (i + 1).to_string(),
        "tagid": format!("div-gpt-ad-{}-{}", 1_700_000 + i, i),
        "banner": {"format": [{"w": 300, "h": 250}, {"w": 300, "h": 600}], "pos": 1, "topframe": 1},
        "bidfloor": 0.45 + i as f64 * 0.05,
        "bidfloorcur": "USD",
        "secure": 1,
        "exp": 300,
        "ext": {"gpid": format!("/1234567/news/article/slot-{i}"), "data": {"pbadslot": format!("/1234567/news/slot-{i}")}}
    })
}

fn eid(i: usize) -> Value {
    let (source, len, atype) = EID_SOURCES[i % EID_SOURCES.len()];
    let source = if i < EID_SOURCES.len() {
        source.to_string()
    } else {
        format!("{i}.{source}")
    };
    json!({"source": source, "uids": [{"id": pseudo_id(i, len), "atype": atype}]})
}

fn segments(provider: &str, first: usize, n: usize) -> Value {
    let segs: Vec<Value> = (first..first + n)
        .map(|s| json!({"id": format!("{}", 100_000 + s * 37)}))
        .collect();
    json!({"id": provider, "name": provider, "segment": segs, "ext": {"segtax": 4}})
}

/// An OpenRTB 2.6 request (web, Edge on Windows) of the given shape with `token` as its only UID2
/// token, in `user.eids`. Compact JSON, keys in the order written here.
pub fn json_request(shape: Shape, token: &str) -> Vec<u8> {
    let mut eids: Vec<Value> = (0..shape.other_eids).map(eid).collect();
    let uid2 = json!({"source": "uidapi.com", "uids": [{"id": token, "atype": 3}]});
    eids.insert(shape.other_eids.div_ceil(2), uid2);
    let imps: Vec<Value> = (0..shape.imps)
        .map(|i| {
            if shape.full {
                imp(i)
            } else {
                json!({"id": (i + 1).to_string(), "banner": {"w": 300, "h": 250}, "bidfloor": 0.5})
            }
        })
        .collect();
    if !shape.full {
        let request = json!({
            "id": "8c2e6b8e-3f5a-4d2e-9a7c-0b1f5e6d4c3a",
            "imp": imps,
            "site": {"id": "102855", "domain": "www.example.com", "page": "https://www.example.com/news/markets", "publisher": {"id": "8953"}},
            "device": {
                "ua": UA,
                "sua": {"browsers": [{"brand": "Chromium", "version": ["124"]}, {"brand": "Microsoft Edge", "version": ["124"]}], "mobile": 0, "source": 1},
                "ip": "203.0.113.7",
                "devicetype": 2
            },
            "user": {"id": pseudo_id(9001, 32), "eids": eids},
            "at": 1,
            "tmax": 120,
            "source": {"schain": {"complete": 1, "ver": "1.0", "nodes": [{"asi": "exchange.example", "sid": "5521", "hp": 1}]}},
            "regs": {"gpp": GPP_SHORT, "gpp_sid": [6]}
        });
        return serde_json::to_vec(&request).expect("request serializes");
    }
    let sua = json!({
        "browsers": [
            {"brand": "Chromium", "version": ["124", "0", "6367", "91"]},
            {"brand": "Microsoft Edge", "version": ["124", "0", "2478", "67"]},
            {"brand": "Not-A.Brand", "version": ["99", "0", "0", "0"]}
        ],
        "platform": {"brand": "Windows", "version": ["15", "0", "0"]},
        "mobile": 0, "architecture": "x86", "bitness": "64", "model": "", "source": 2
    });
    let user_segments = shape.segments - shape.segments / 3;
    let mut user = json!({
        "id": pseudo_id(9001, 32),
        "buyeruid": pseudo_id(9002, 24),
        "eids": eids,
        "ext": {"consent": TCF_CONSENT}
    });
    if shape.segments > 0 {
        user["data"] = json!([segments("dmp.example", 0, user_segments)]);
    }
    let mut content = json!({"language": "en", "cat": ["IAB12"], "url": "https://www.example.com/news/2026/01/markets-close-higher"});
    if shape.segments / 3 > 0 {
        content["data"] = json!([segments(
            "contextual.example",
            user_segments,
            shape.segments / 3
        )]);
    }
    let request = json!({
        "id": "8c2e6b8e-3f5a-4d2e-9a7c-0b1f5e6d4c3a",
        "imp": imps,
        "site": {
            "id": "102855",
            "name": "Example News",
            "domain": "www.example.com",
            "cat": ["IAB12"],
            "page": "https://www.example.com/news/2026/01/markets-close-higher?utm_source=home",
            "ref": "https://www.google.com/",
            "publisher": {"id": "8953", "name": "Example Media", "domain": "example.com"},
            "content": content,
            "mobile": 0
        },
        "device": {
            "ua": UA,
            "sua": sua,
            "geo": {"lat": 37.7749, "lon": -122.4194, "type": 2, "country": "USA", "region": "CA", "city": "San Francisco", "zip": "94105"},
            "dnt": 0,
            "ip": "203.0.113.7",
            "devicetype": 2,
            "js": 1,
            "language": "en"
        },
        "user": user,
        "at": 1,
        "tmax": 120,
        "cur": ["USD"],
        "source": {
            "tid": "f1e2d3c4-b5a6-4978-8a9b-0c1d2e3f4a5b",
            "schain": {"complete": 1, "ver": "1.0", "nodes": [
                {"asi": "exchange.example", "sid": "5521", "hp": 1, "rid": "8c2e6b8e-3f5a-4d2e-9a7c-0b1f5e6d4c3a"},
                {"asi": "reseller.example", "sid": "pub-8953", "hp": 1}
            ]}
        },
        "regs": {"coppa": 0, "gpp": GPP, "gpp_sid": [2, 7], "ext": {"gdpr": 0, "us_privacy": "1YNN"}}
    });
    serde_json::to_vec(&request).expect("request serializes")
}

/// Step `k` of a growth sequence. Compact requests (from ~1.1 KB) grow by eids and imps; full ones
/// (from ~2.5 KB) grow by data segments and eids, and more slowly by imps.
pub fn shape_for_step(full: bool, k: usize) -> Shape {
    if full {
        Shape {
            imps: 1 + k / 6,
            other_eids: 1 + k / 2,
            segments: 2 * k,
            full,
        }
    } else {
        Shape {
            imps: 1 + k / 4,
            other_eids: 1 + k,
            segments: 0,
            full,
        }
    }
}

/// The request whose size is closest to `target` bytes: the full sequence when it can get there, the
/// compact one for smaller targets.
pub fn json_request_near(target: usize, token: &str) -> (Shape, Vec<u8>) {
    let mut best: Option<(Shape, Vec<u8>)> = None;
    for full in [true, false] {
        for k in 0..400 {
            let shape = shape_for_step(full, k);
            let request = json_request(shape, token);
            let past = request.len() > target;
            let closer = |(_, b): &(Shape, Vec<u8>)| {
                request.len().abs_diff(target) < b.len().abs_diff(target)
            };
            if best.as_ref().is_none_or(closer) {
                best = Some((shape, request));
            }
            if past {
                break;
            }
        }
    }
    best.expect("at least one step")
}

// ------------------------------------------------------------------------------------------------------
// Protobuf bid requests

fn pb_eid(source: &str, id: String, atype: i32) -> pb::Eid {
    pb::Eid {
        source: Some(source.into()),
        uids: vec![pb::Uid {
            id: Some(id),
            atype: Some(atype),
        }],
        ..Default::default()
    }
}

/// A protobuf `BidRequest` (the crate's OpenRTB subset) with `token` as its only UID2 token in
/// `user.eids`, padded with non-UID2 eids towards `target` bytes. Encoded with prost.
pub fn proto_request_near(target: usize, token: &str) -> Vec<u8> {
    let build = |other_eids: usize| -> Vec<u8> {
        let mut eids: Vec<pb::Eid> = (0..other_eids)
            .map(|i| {
                let (source, len, atype) = EID_SOURCES[i % EID_SOURCES.len()];
                pb_eid(source, pseudo_id(i, len), i32::from(atype))
            })
            .collect();
        eids.insert(
            other_eids.div_ceil(2),
            pb_eid("uidapi.com", token.to_string(), 3),
        );
        let request = pb::BidRequest {
            id: "8c2e6b8e-3f5a-4d2e-9a7c-0b1f5e6d4c3a".into(),
            imp: (1..=3).map(|i| pb::Imp { id: i.to_string() }).collect(),
            distributionchannel_oneof: Some(pb::bid_request::DistributionchannelOneof::Site(
                pb::Site {
                    id: Some("102855".into()),
                    name: Some("Example News".into()),
                    domain: Some("www.example.com".into()),
                    page: Some(
                        "https://www.example.com/news/2026/01/markets-close-higher?utm_source=home"
                            .into(),
                    ),
                    r#ref: Some("https://www.google.com/".into()),
                },
            )),
            device: Some(pb::Device {
                ua: Some(UA.into()),
                ip: Some("203.0.113.7".into()),
                ifa: None,
            }),
            user: Some(pb::User {
                id: Some(pseudo_id(9001, 32)),
                buyeruid: Some(pseudo_id(9002, 24)),
                keywords: Some("finance,markets,stocks,news".into()),
                customdata: Some(pseudo_id(9003, 48)),
                consent: Some(TCF_CONSENT.into()),
                eids,
                ext: Some(pb::UserExt {
                    consent: Some(GPP.into()),
                    eids: Vec::new(),
                }),
                uid2_enrichment: None,
            }),
        };
        prost::Message::encode_to_vec(&request)
    };
    let mut best = build(0);
    for n in 1..200 {
        let request = build(n);
        let past = request.len() > target;
        if request.len().abs_diff(target) < best.len().abs_diff(target) {
            best = request;
        }
        if past {
            break;
        }
    }
    best
}

/// A random raw UID2 (the opt-out benches fill their sets with these).
pub fn random_raw(rng: &mut fastrand::Rng) -> RawUid2 {
    let mut b = [0u8; 32];
    rng.fill(&mut b);
    RawUid2::from_bytes(&b).expect("32 bytes")
}
