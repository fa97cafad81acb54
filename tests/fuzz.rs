//! Long-running property tests (fuzz targets) of the four parsers that take untrusted input: token
//! parsing and decryption, JSON enrichment, protobuf enrichment and configuration parsing. Inputs are
//! realistic values (real tokens, generated bid requests, real config keys) put through random
//! mutations — truncation, bit flips, spliced garbage, duplicated spans — plus plain random bytes.
//!
//! Invariants: nothing panics; decryption is deterministic and a success carries its identity; valid
//! JSON in gives valid JSON out, removing the member gives the input back (lossless) and enriching the
//! output again changes nothing (idempotent); the protobuf output decodes to the input plus the
//! enrichment and is idempotent too; configuration errors say something and never echo a secret.
//!
//! Cases per target: `UID2_FUZZ_CASES` (default 256, so `cargo test` stays fast); the long runs and their
//! results are in `docs/guarantees.md` (`scripts/faults-long.sh`).

mod common;

use common::*;
use proptest::prelude::*;
use prost::Message as _;
use serde_json::Value;
use uid2_enricher::enrich::{Context, Enriched, Keys, PayloadFormat, Policy, enrich, enrich_into};
use uid2_enricher::openrtb::proto::pb;
use uid2_enricher::optout::NoOptOuts;
use uid2_enricher::tools::traffic::{Case, Generator, Mix};
use uid2_enricher::uid2::{ClientMode, KeySet, Status, decrypt};

fn cases() -> u32 {
    std::env::var("UID2_FUZZ_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(256)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        // Long runs: shrinking a failure matters more than the time limit of one case.
        max_shrink_iters: 4096,
        ..ProptestConfig::default()
    }
}

fn keys() -> &'static KeySet {
    static KEYS: std::sync::OnceLock<KeySet> = std::sync::OnceLock::new();
    KEYS.get_or_init(bidstream_keys)
}

fn ctx(keys: &KeySet) -> Context<'_> {
    Context {
        keys: Keys::single(Some(keys)),
        optouts: &NoOptOuts,
        cache: None,
        now_ms: NOW,
    }
}

/// One mutation of a byte string.
#[derive(Clone, Debug)]
enum Mutation {
    None,
    Truncate(prop::sample::Index),
    Flip(Vec<(prop::sample::Index, u8)>),
    Splice(prop::sample::Index, Vec<u8>),
    Duplicate(prop::sample::Index, prop::sample::Index),
    Delete(prop::sample::Index, prop::sample::Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        2 => Just(Mutation::None),
        2 => any::<prop::sample::Index>().prop_map(Mutation::Truncate),
        3 => prop::collection::vec((any::<prop::sample::Index>(), 0u8..8), 1..8).prop_map(Mutation::Flip),
        2 => (any::<prop::sample::Index>(), prop::collection::vec(any::<u8>(), 1..64))
            .prop_map(|(at, g)| Mutation::Splice(at, g)),
        1 => (any::<prop::sample::Index>(), any::<prop::sample::Index>())
            .prop_map(|(a, b)| Mutation::Duplicate(a, b)),
        1 => (any::<prop::sample::Index>(), any::<prop::sample::Index>())
            .prop_map(|(a, b)| Mutation::Delete(a, b)),
    ]
}

fn apply(bytes: &[u8], m: &Mutation) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let span = |a: &prop::sample::Index, b: &prop::sample::Index, len: usize| {
        let (x, y) = (a.index(len + 1), b.index(len + 1));
        (x.min(y), x.max(y))
    };
    match m {
        Mutation::None => {}
        Mutation::Truncate(at) => out.truncate(at.index(bytes.len() + 1)),
        Mutation::Flip(flips) => {
            if !out.is_empty() {
                for (at, bit) in flips {
                    let i = at.index(out.len());
                    out[i] ^= 1 << bit;
                }
            }
        }
        Mutation::Splice(at, garbage) => {
            let i = at.index(out.len() + 1);
            out.splice(i..i, garbage.iter().copied());
        }
        Mutation::Duplicate(a, b) => {
            let (x, y) = span(a, b, bytes.len());
            let copy = bytes[x..y].to_vec();
            out.splice(y..y, copy);
        }
        Mutation::Delete(a, b) => {
            let (x, y) = span(a, b, bytes.len());
            out.drain(x..y);
        }
    }
    out
}

/// `enrich_into` agrees with `enrich` (`expected`, from the same input and context): the same output and
/// statuses, appended after what the buffer held, nothing appended when unchanged; with an empty buffer
/// and with a used one.
fn check_enrich_into(
    input: &[u8],
    format: PayloadFormat,
    ctx: &Context<'_>,
    expected: &Enriched<'_>,
) -> Result<(), TestCaseError> {
    for prefix in [&b""[..], b"earlier line\n"] {
        let mut buffer = prefix.to_vec();
        let into = enrich_into(input, format, ctx, &Policy::default(), &mut buffer)
            .expect("enrich succeeded on this input");
        prop_assert_eq!(into.output.as_ref(), expected.output.as_ref());
        prop_assert_eq!(into.body_enriched, expected.body_enriched);
        prop_assert_eq!(&into.member_json, &expected.member_json);
        prop_assert_eq!(into.status(), expected.status());
        let appended = into.body_enriched;
        let output = into.output.to_vec();
        prop_assert_eq!(
            buffer.get(..prefix.len()),
            Some(prefix),
            "what was there stays"
        );
        let added = buffer.get(prefix.len()..).unwrap_or_default();
        if appended {
            prop_assert_eq!(added, output.as_slice());
        } else {
            prop_assert!(
                added.is_empty(),
                "nothing appended for an unchanged request"
            );
        }
    }
    Ok(())
}

fn token_of(version: u8, expired: bool, seed: u8) -> String {
    let mut t = Token::new(ALL_VERSIONS[usize::from(version % 3)]);
    t.nonce_seed = seed;
    if expired {
        t.expires_ms = NOW - 1;
    }
    t.build()
}

proptest! {
    #![proptest_config(config())]

    /// Token parsing and decryption: mutated real tokens and random text, both client modes.
    #[test]
    fn fuzz_token_decrypt(version in 0u8..3, expired in any::<bool>(), seed in any::<u8>(),
                          m in mutation(), random in prop::option::of("\\PC{0,300}"),
                          domain in prop::option::of("[a-z.]{0,20}")) {
        let token = match &random {
            Some(text) => text.clone(),
            None => {
                let t = token_of(version, expired, seed);
                String::from_utf8_lossy(&apply(t.as_bytes(), &m)).into_owned()
            }
        };
        for mode in [ClientMode::Bidstream, ClientMode::Sharing] {
            let keys = if mode == ClientMode::Bidstream { keys().clone() } else { sharing_keys() };
            let a = decrypt(&token, Some(&keys), mode, domain.as_deref(), NOW);
            let b = decrypt(&token, Some(&keys), mode, domain.as_deref(), NOW);
            prop_assert_eq!(&a, &b, "decryption is deterministic");
            if a.status == Status::Success {
                prop_assert!(a.raw_uid2.is_some() && a.site_id.is_some() && a.expires_ms.is_some());
            } else {
                prop_assert!(a.raw_uid2.is_none(), "no identity without success");
            }
        }
        if random.is_none() && matches!(m, Mutation::None) {
            let d = decrypt(&token, Some(keys()), ClientMode::Bidstream, None, NOW);
            let want = if expired { Status::ExpiredToken } else { Status::Success };
            prop_assert_eq!(d.status, want);
            if !expired {
                prop_assert_eq!(d.raw_uid2.as_deref(), Some(RAW_UID2));
            }
        }
    }

    /// JSON enrichment of generated bid requests (every token case), mutated.
    #[test]
    fn fuzz_json_enrichment(seed in any::<u64>(), size in 200usize..3000, m in mutation()) {
        let mix = Mix(Case::ALL.iter().map(|c| (*c, 1)).collect());
        let mut generator = Generator::new(seed, mix, NOW, 50, size);
        let keys = generator.key_set();
        let request = generator.next_request();
        let input = apply(&request.bytes, &m);
        let out = match enrich(&input, PayloadFormat::Json, &ctx(&keys), &Policy::default()) {
            Ok(out) => out,
            Err(malformed) => {
                let mut buffer = b"earlier line\n".to_vec();
                let into = enrich_into(&input, PayloadFormat::Json, &ctx(&keys), &Policy::default(), &mut buffer);
                prop_assert_eq!(into.err().map(|e| e.reason), Some(malformed.reason));
                prop_assert_eq!(buffer.as_slice(), b"earlier line\n".as_slice(), "untouched on error");
                return Ok(());
            }
        };
        check_enrich_into(&input, PayloadFormat::Json, &ctx(&keys), &out)?;
        let Ok(text_in) = std::str::from_utf8(&input) else {
            return Ok(());
        };
        if serde_json::from_str::<Value>(text_in).is_err() {
            return Ok(());
        }
        let text_out = std::str::from_utf8(&out.output).expect("UTF-8 in, UTF-8 out");
        prop_assert!(serde_json::from_str::<Value>(text_out).is_ok(), "valid JSON in, valid JSON out");
        match &out.member_json {
            None => prop_assert_eq!(text_out, text_in),
            Some(member) if !text_in.contains("uid2_enrichment") => {
                prop_assert_eq!(strip_member(text_out, member, text_in), text_in);
            }
            Some(_) => {}
        }
        let again = enrich(&out.output, PayloadFormat::Json, &ctx(&keys), &Policy::default())
            .expect("the output enriches again");
        prop_assert_eq!(again.output.as_ref(), out.output.as_ref(), "idempotent");
    }

    /// Protobuf enrichment of requests with real tokens, mutated.
    #[test]
    fn fuzz_protobuf_enrichment(tokens in prop::collection::vec((0u8..3, any::<bool>(), any::<u8>(), 0u8..3), 0..5),
                                app in any::<bool>(), m in mutation()) {
        let sources = ["uidapi.com", "euid.eu", "other.example"];
        let eids = tokens
            .iter()
            .map(|(v, e, s, src)| pb::Eid {
                source: Some(sources[usize::from(*src)].into()),
                uids: vec![pb::Uid { id: Some(token_of(*v, *e, *s)), atype: Some(3) }],
                ..Default::default()
            })
            .collect();
        let channel = if app {
            pb::bid_request::DistributionchannelOneof::App(pb::App {
                bundle: Some("com.123.Game.App.android".into()),
                ..Default::default()
            })
        } else {
            pb::bid_request::DistributionchannelOneof::Site(pb::Site {
                domain: Some("example.com".into()),
                ..Default::default()
            })
        };
        let request = pb::BidRequest {
            id: "fuzz".into(),
            imp: vec![pb::Imp { id: "1".into() }],
            distributionchannel_oneof: Some(channel),
            user: Some(pb::User { eids, ..Default::default() }),
            ..Default::default()
        };
        let input = apply(&request.encode_to_vec(), &m);
        let Ok(out) = enrich(&input, PayloadFormat::Protobuf, &ctx(keys()), &Policy::default()) else {
            return Ok(());
        };
        if let Ok(decoded_in) = pb::BidRequest::decode(input.as_slice()) {
            let mut decoded_out = pb::BidRequest::decode(out.output.as_ref())
                .expect("a decodable request stays decodable");
            if let Some(user) = decoded_out.user.as_mut() {
                user.uid2_enrichment = None;
            }
            let mut expected = decoded_in;
            if let Some(user) = expected.user.as_mut() {
                user.uid2_enrichment = None;
            }
            // The enrichment may create `user`; everything else is the input's.
            if expected.user.is_none() && decoded_out.user == Some(pb::User::default()) {
                decoded_out.user = None;
            }
            prop_assert_eq!(decoded_out, expected, "only the enrichment differs");
        }
        let again = enrich(&out.output, PayloadFormat::Protobuf, &ctx(keys()), &Policy::default())
            .expect("the output enriches again");
        prop_assert_eq!(again.output.as_ref(), out.output.as_ref(), "idempotent");
        check_enrich_into(&input, PayloadFormat::Protobuf, &ctx(keys()), &out)?;
    }

    /// Configuration text: real tables and keys with random values, garbage lines, random secrets.
    #[test]
    fn fuzz_config_parsing(lines in prop::collection::vec(config_line(), 0..24),
                           api_key in prop::option::of("[A-Za-z0-9+/=-]{1,40}"),
                           secret in prop::option::of(prop_oneof![
                               Just("ioG3wKxAokmp+rERx6A4kM/13qhyolUXIu14WN16Spo=".to_string()),
                               "[A-Za-z0-9+/=]{1,60}",
                           ]),
                           m in mutation()) {
        let text = String::from_utf8_lossy(&apply(lines.join("\n").as_bytes(), &m)).into_owned();
        let env = |name: &str| match name {
            "UID2_API_KEY" => api_key.clone(),
            "UID2_SECRET_KEY" => secret.clone(),
            _ => None,
        };
        let secrets: Vec<&String> = [&api_key, &secret].into_iter().flatten().filter(|s| s.len() >= 8).collect();
        match uid2_enricher::config::parse_with_env(&text, "fuzz.toml", &env) {
            Ok(settings) => {
                let shown = format!("{settings:?}");
                for s in &secrets {
                    prop_assert!(!shown.contains(s.as_str()), "a secret in Debug output");
                }
            }
            Err(e) => {
                let message = e.to_string();
                prop_assert!(!message.trim().is_empty());
                for s in &secrets {
                    prop_assert!(!message.contains(s.as_str()) || text.contains(s.as_str()),
                        "an environment secret echoed in an error: {message}");
                }
            }
        }
    }
}

/// A line of a configuration file: a table header, a real key with a value of any type, or garbage.
fn config_line() -> impl Strategy<Value = String> {
    let tables: Vec<String> = uid2_enricher::config::KNOWN_KEYS
        .iter()
        .filter(|(t, _)| !t.is_empty())
        .map(|(t, _)| t.to_string())
        .chain(["kafka.consumer".to_string(), "kafka.producer".to_string()])
        .collect();
    let keys: Vec<String> = uid2_enricher::config::KNOWN_KEYS
        .iter()
        .flat_map(|(_, ks)| ks.iter().map(|k| k.to_string()))
        .chain(["\"session.timeout.ms\"".to_string(), "api_key".to_string()])
        .collect();
    let value = prop_oneof![
        any::<i64>().prop_map(|v| v.to_string()),
        (0u64..100_000).prop_map(|v| v.to_string()),
        any::<bool>().prop_map(|v| v.to_string()),
        any::<f64>().prop_map(|v| format!("{v:?}")),
        "\\PC{0,40}".prop_map(|s| format!("{s:?}")),
        prop::sample::select(vec![
            "\"json\"",
            "\"protobuf\"",
            "\"bidstream\"",
            "\"sharing\"",
            "\"127.0.0.1:0\"",
            "\"http://127.0.0.1:1\"",
            "\"https://prod.uidapi.com\"",
            "[\"a\", \"b\"]",
            "[]",
            "{ name = \"uidapi.com\", scope = \"UID2\" }",
            "\"debug\"",
            "\"/nonexistent/keys.json\"",
        ])
        .prop_map(str::to_string),
    ];
    prop_oneof![
        2 => prop::sample::select(tables).prop_map(|t| format!("[{t}]")),
        1 => Just("[[pipeline.sources]]".to_string()),
        6 => (prop::sample::select(keys), value).prop_map(|(k, v)| format!("{k} = {v}")),
        1 => "\\PC{0,40}",
    ]
}
