//! Property tests of `enrich` over generated requests with real tokens, and hostile payloads for both
//! formats: valid JSON in gives valid JSON out, removing the member gives the input back, enrichment is
//! idempotent, and nothing panics (random bytes, deep nesting, megabyte payloads, 10,000 eids).

mod common;

use common::*;
use proptest::prelude::*;
use serde_json::Value;
use uid2_enricher::enrich::{Context, Keys, PayloadFormat, Policy, enrich};
use uid2_enricher::optout::NoOptOuts;
use uid2_enricher::uid2::{KeySet, TokenVersion};

fn keys() -> &'static KeySet {
    static KEYS: std::sync::OnceLock<KeySet> = std::sync::OnceLock::new();
    KEYS.get_or_init(bidstream_keys)
}

fn ctx() -> Context<'static> {
    Context {
        keys: Keys::single(Some(keys())),
        optouts: &NoOptOuts,
        cache: None,
        now_ms: NOW,
    }
}

fn token(version: usize, expired: bool) -> String {
    let mut t = Token::new(ALL_VERSIONS[version % 3]);
    if expired {
        t.expires_ms = NOW - 1;
    }
    t.build()
}

/// JSON whitespace to put between tokens of the generated text.
fn ws() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["", "", " ", "\n", "\t", "\r\n  ", "  "]).prop_map(str::to_string)
}

fn scalar() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("1.50".to_string()),
        Just("1e-3".to_string()),
        Just("12345678901234567890".to_string()),
        Just("-0".to_string()),
        Just("true".to_string()),
        Just("null".to_string()),
        Just(r#""caf\u00e9 \/ \"q\"""#.to_string()),
        "[a-z]{0,8}".prop_map(|s| format!("\"{s}\"")),
    ]
}

/// A uid entry: a real token (any version, maybe expired), a non-string id, or a missing id.
fn uid() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (0..3usize, any::<bool>(), ws(), prop::sample::select(vec!["3", "\"3\"", "1"]))
            .prop_map(|(v, e, w, atype)| format!("{{{w}\"id\"{w}:{w}\"{}\",\"atype\":{atype}}}", token(v, e))),
        1 => Just(r#"{"id":42}"#.to_string()),
        1 => Just(r#"{"atype":3}"#.to_string()),
    ]
}

fn eid() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec!["uidapi.com", "euid.eu", "adserver.org", "pubcid.org"]),
        prop::collection::vec(uid(), 0..3),
        ws(),
    )
        .prop_map(|(source, uids, w)| {
            format!(
                "{{{w}\"source\":{w}\"{source}\",{w}\"uids\":[{}]}}",
                uids.join(&format!(",{w}"))
            )
        })
}

fn eids() -> impl Strategy<Value = Option<String>> {
    prop::option::of(prop::collection::vec(eid(), 0..3).prop_map(|v| format!("[{}]", v.join(","))))
}

/// A request with `user.eids` and/or `user.ext.eids`, an optional existing `ext` with other members, and
/// unrelated members with odd numbers and escapes around it.
fn request() -> impl Strategy<Value = String> {
    (
        eids(),
        eids(),
        prop::option::of(prop::collection::vec(scalar(), 0..3)),
        prop::collection::vec(scalar(), 0..4),
        ws(),
        ws(),
        any::<bool>(),
    )
        .prop_map(
            |(user_eids, ext_eids, ext_others, top, w1, w2, user_first)| {
                let mut user: Vec<String> = vec![format!("\"id\":{w1}\"u1\"")];
                if let Some(e) = user_eids {
                    user.push(format!("\"eids\"{w2}:{w1}{e}"));
                }
                if ext_others.is_some() || ext_eids.is_some() {
                    let mut ext: Vec<String> = ext_others
                        .unwrap_or_default()
                        .iter()
                        .enumerate()
                        .map(|(i, v)| format!("\"k{i}\":{v}"))
                        .collect();
                    if let Some(e) = ext_eids {
                        ext.push(format!("\"eids\":{e}"));
                    }
                    user.push(format!(
                        "\"ext\":{w1}{{{w2}{}{w1}}}",
                        ext.join(&format!(",{w2}"))
                    ));
                }
                let user = format!("\"user\":{w1}{{{}{w2}}}", user.join(&format!(",{w1}")));
                let mut members: Vec<String> = top
                    .iter()
                    .enumerate()
                    .map(|(i, v)| format!("\"f{i}\"{w1}:{w2}{v}"))
                    .collect();
                members.insert(if user_first { 0 } else { members.len() }, user);
                members.push(r#""site":{"domain":"www.example.com"}"#.to_string());
                format!("{w1}{{{w2}{}{w1}}}{w2}", members.join(&format!(",{w2}")))
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, .. ProptestConfig::default() })]

    #[test]
    fn generated_requests_round_trip(req in request()) {
        let input: Value = serde_json::from_str(&req).expect("generator makes valid JSON");
        let out = enrich(req.as_bytes(), PayloadFormat::Json, &ctx(), &Policy::default()).unwrap();
        let text = std::str::from_utf8(&out.output).unwrap().to_string();
        let parsed: Value = serde_json::from_str(&text).expect("valid JSON out");
        match &out.member_json {
            None => prop_assert_eq!(&text, &req),
            Some(member) => {
                prop_assert_eq!(strip_member(&text, member, &req), req.clone());
                let member_value: Value = serde_json::from_str(member).unwrap();
                prop_assert_eq!(&parsed["user"]["ext"]["uid2_enrichment"], &member_value);
                prop_assert_eq!(&parsed["f0"], &input["f0"]);
                let again = enrich(text.as_bytes(), PayloadFormat::Json, &ctx(), &Policy::default()).unwrap();
                prop_assert_eq!(again.output.as_ref(), text.as_bytes());
            }
        }
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = enrich(&bytes, PayloadFormat::Json, &ctx(), &Policy::default());
        let _ = enrich(&bytes, PayloadFormat::Protobuf, &ctx(), &Policy::default());
    }

    #[test]
    fn truncations_and_flips_of_real_requests_never_panic(req in request(), cut in any::<usize>(), at in any::<usize>(), bit in 0u8..8) {
        let bytes = req.as_bytes();
        let _ = enrich(&bytes[..cut % (bytes.len() + 1)], PayloadFormat::Json, &ctx(), &Policy::default());
        let mut flipped = bytes.to_vec();
        let i = at % flipped.len();
        flipped[i] ^= 1 << bit;
        if let Ok(out) = enrich(&flipped, PayloadFormat::Json, &ctx(), &Policy::default())
            && serde_json::from_slice::<Value>(&flipped).is_ok() {
            prop_assert!(serde_json::from_slice::<Value>(&out.output).is_ok(), "valid JSON in, valid JSON out");
        }
    }
}

#[test]
fn deep_nesting_and_megabyte_payloads_never_panic() {
    let deep_array = format!("{{\"a\":{}{}}}", "[".repeat(10_000), "]".repeat(10_000));
    let deep_in_user = format!(
        "{{\"user\":{{\"ext\":{}{}}}}}",
        "{\"x\":".repeat(10_000),
        "}".repeat(10_000)
    );
    let unbalanced = "{\"a\":".repeat(100_000);
    let t = Token::new(TokenVersion::V4).build();
    let many_eids = format!(
        "{{\"user\":{{\"eids\":[{}]}}}}",
        vec![format!("{{\"source\":\"uidapi.com\",\"uids\":[{{\"id\":\"{t}\"}}]}}"); 10_000]
            .join(",")
    );
    let megabyte_string = format!(
        "{{\"imp\":\"{}\",\"user\":{{\"eids\":[{{\"source\":\"uidapi.com\",\"uids\":[{{\"id\":\"{t}\"}}]}}]}}}}",
        "x".repeat(1 << 20)
    );
    let huge_token = format!(
        "{{\"user\":{{\"eids\":[{{\"source\":\"uidapi.com\",\"uids\":[{{\"id\":\"A4{}\"}}]}}]}}}}",
        "A".repeat(100_000)
    );
    for payload in [
        &deep_array,
        &deep_in_user,
        &unbalanced,
        &many_eids,
        &megabyte_string,
        &huge_token,
    ] {
        for format in [PayloadFormat::Json, PayloadFormat::Protobuf] {
            if let Ok(out) = enrich(payload.as_bytes(), format, &ctx(), &Policy::default())
                && format == PayloadFormat::Json
            {
                serde_json::from_slice::<Value>(&out.output).expect("valid JSON out");
            }
        }
    }
    let out = enrich(
        many_eids.as_bytes(),
        PayloadFormat::Json,
        &ctx(),
        &Policy::default(),
    )
    .unwrap();
    assert_eq!(
        (out.tokens.len(), out.token_count, out.status_header()),
        (1, 10_000, "success")
    );
    let out = enrich(
        megabyte_string.as_bytes(),
        PayloadFormat::Json,
        &ctx(),
        &Policy::default(),
    )
    .unwrap();
    assert_eq!(out.status_header(), "success");
    let out = enrich(
        huge_token.as_bytes(),
        PayloadFormat::Json,
        &ctx(),
        &Policy::default(),
    )
    .unwrap();
    // "A4AAAA…" names master key 0, which the key set does not hold.
    assert_eq!(out.status_header(), "not_authorized_for_master_key");
    // 10,000 nested protobuf messages.
    let mut deep = Vec::new();
    for _ in 0..10_000 {
        let mut outer = vec![0x32]; // field 6 (user), length-delimited
        let mut len = deep.len();
        loop {
            let byte = (len & 0x7f) as u8;
            len >>= 7;
            if len == 0 {
                outer.push(byte);
                break;
            }
            outer.push(byte | 0x80);
        }
        outer.extend_from_slice(&deep);
        deep = outer;
    }
    let _ = enrich(&deep, PayloadFormat::Protobuf, &ctx(), &Policy::default());
}
