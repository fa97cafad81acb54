//! Protobuf requests end to end: a request built with the generated types plus bytes prost does not know,
//! scanned and enriched by the wire walker, then decoded again with prost.

use proptest::prelude::*;
use prost::Message;
use uid2_enricher::openrtb::proto::{
    ProtoEidLocation, ProtoError, ProtoScan, append_enrichment, pb, scan,
};

const SOURCES: [&str; 2] = ["uidapi.com", "euid.eu"];

/// An unknown top-level field: 500, length-delimited.
const UNKNOWN_TOP: &[u8] = &[
    0xa2, 0x1f, 0x0b, b'v', b'e', b'n', b'd', b'o', b'r', b'-', b'd', b'a', b't', b'a',
];
/// An unknown field inside `user`: 1500 (Google's extension block), varint 42.
const UNKNOWN_IN_USER: &[u8] = &[0xe0, 0x5d, 0x2a];

fn eid(source: &str, ids: &[&str]) -> pb::Eid {
    pb::Eid {
        source: Some(source.into()),
        uids: ids
            .iter()
            .map(|id| pb::Uid {
                id: Some((*id).into()),
                atype: Some(3),
            })
            .collect(),
        ..Default::default()
    }
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn len_field(number: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    put_varint(&mut out, (u64::from(number) << 3) | 2);
    put_varint(&mut out, payload.len() as u64);
    out.extend_from_slice(payload);
    out
}

fn user() -> pb::User {
    pb::User {
        id: Some("exchange-user-7".into()),
        buyeruid: Some("dsp-cookie-1".into()),
        eids: vec![
            eid("adserver.org", &["tdid-not-a-token"]),
            eid("uidapi.com", &["A4AAAAtoken-one", "A4AAAAtoken-two"]),
        ],
        ext: Some(pb::UserExt {
            consent: Some("CPXxRfAPXxRfAAfKABENB-CgAAAAAAAAAAYgAAAAAAAA".into()),
            eids: vec![
                eid("euid.eu", &["E4AAAAtoken-three"]),
                eid("pubcid.org", &["pubcid"]),
            ],
        }),
        ..Default::default()
    }
}

/// A request as an exchange would send it: prost-encodable parts plus an unknown field inside `user` and
/// an unknown top-level field, which prost would drop on a decode/re-encode.
fn request() -> Vec<u8> {
    let without_user = pb::BidRequest {
        id: "req-42".into(),
        imp: vec![pb::Imp { id: "1".into() }],
        distributionchannel_oneof: Some(pb::bid_request::DistributionchannelOneof::Site(
            pb::Site {
                domain: Some("www.example.com".into()),
                page: Some("https://www.example.com/article".into()),
                ..Default::default()
            },
        )),
        device: Some(pb::Device {
            ua: Some("Mozilla/5.0".into()),
            ..Default::default()
        }),
        user: None,
    };
    let mut user_bytes = user().encode_to_vec();
    user_bytes.extend_from_slice(UNKNOWN_IN_USER);
    let mut out = without_user.encode_to_vec();
    out.extend(len_field(6, &user_bytes));
    out.extend_from_slice(UNKNOWN_TOP);
    out
}

fn enrichment(status: &str) -> pb::Uid2Enrichment {
    let success = status == "success";
    pb::Uid2Enrichment {
        status: Some(status.into()),
        raw_uid2: success.then(|| "ywsvDNINiZOVSsfkHpLpSJzXzhr6Jx9Z/4Q0+lsEUvM=".into()),
        source: Some("uidapi.com".into()),
        site_id: Some(9000),
        established: Some(1_672_531_261_000),
        expires: Some(2_303_254_861_000),
        identity_type: Some("email".into()),
        token_version: Some(4),
        cstg: Some(false),
        tokens: Some(3),
    }
}

fn enrich(input: &[u8], status: &str) -> Vec<u8> {
    let found = scan(input, &SOURCES).expect("valid request");
    append_enrichment(input, &found, &enrichment(status))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn scan_finds_tokens_in_order() {
    let input = request();
    let found = scan(&input, &SOURCES).unwrap();
    let tokens: Vec<_> = found
        .tokens
        .iter()
        .map(|t| (t.id, t.source_index, t.location))
        .collect();
    assert_eq!(
        tokens,
        [
            ("A4AAAAtoken-one", 0, ProtoEidLocation::UserEids),
            ("A4AAAAtoken-two", 0, ProtoEidLocation::UserEids),
            ("E4AAAAtoken-three", 1, ProtoEidLocation::UserExtEids),
        ]
    );
    assert_eq!(found.site_domain, Some("www.example.com"));
    assert_eq!(found.site_page, Some("https://www.example.com/article"));
    assert_eq!(found.app_bundle, None);
    assert!(!found.has_enrichment());
}

#[test]
fn output_keeps_every_input_byte_and_prost_sees_the_enrichment() {
    let input = request();
    let output = enrich(&input, "success");

    assert!(
        output.starts_with(&input),
        "the input is a prefix of the output"
    );
    assert!(contains(&output, UNKNOWN_TOP));
    assert!(contains(&output, UNKNOWN_IN_USER));

    let decoded = pb::BidRequest::decode(output.as_slice()).unwrap();
    let user = decoded.user.expect("user");
    assert_eq!(user.id.as_deref(), Some("exchange-user-7"));
    assert_eq!(user.buyeruid.as_deref(), Some("dsp-cookie-1"));
    assert_eq!(user.eids, self::user().eids);
    assert_eq!(user.ext, self::user().ext, "user.ext (1007) survives");
    assert_eq!(user.uid2_enrichment, Some(enrichment("success")));
    assert_eq!(decoded.id, "req-42");
    assert!(matches!(
        decoded.distributionchannel_oneof,
        Some(pb::bid_request::DistributionchannelOneof::Site(ref site)) if site.domain.as_deref() == Some("www.example.com")
    ));

    // What the splice avoids: a prost round trip loses both unknown fields.
    let reencoded = pb::BidRequest::decode(output.as_slice())
        .unwrap()
        .encode_to_vec();
    assert!(!contains(&reencoded, UNKNOWN_TOP));
    assert!(!contains(&reencoded, UNKNOWN_IN_USER));
}

#[test]
fn enriching_twice_equals_enriching_once() {
    let input = request();
    let once = enrich(&input, "success");
    assert_eq!(enrich(&once, "success"), once);

    // A new result replaces the old one instead of merging with it (raw_uid2 must not linger).
    let replaced = enrich(&once, "expired_token");
    assert_eq!(replaced, enrich(&input, "expired_token"));
    let user = pb::BidRequest::decode(replaced.as_slice())
        .unwrap()
        .user
        .unwrap();
    assert_eq!(user.uid2_enrichment, Some(enrichment("expired_token")));
    assert_eq!(user.uid2_enrichment.unwrap().raw_uid2, None);
}

#[test]
fn app_requests_expose_the_bundle() {
    let request = pb::BidRequest {
        id: "r".into(),
        distributionchannel_oneof: Some(pb::bid_request::DistributionchannelOneof::App(pb::App {
            bundle: Some("com.example.game".into()),
            domain: Some("example.com".into()),
            ..Default::default()
        })),
        user: Some(pb::User {
            eids: vec![eid("uidapi.com", &["A4AAAAapp"])],
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec();
    let found = scan(&request, &SOURCES).unwrap();
    assert_eq!(found.app_bundle, Some("com.example.game"));
    assert_eq!(found.site_domain, None);
    assert_eq!(found.tokens.len(), 1);
}

fn nested(levels: usize) -> Vec<u8> {
    let mut message = b"leaf".to_vec();
    for _ in 0..levels {
        message = len_field(1, &message);
    }
    message
}

#[test]
fn ten_thousand_deep_nesting_does_not_overflow_the_stack() {
    // Nested length-delimited messages in fields the walker does not descend into: skipped by length.
    let deep = nested(10_000);
    let mut input = request();
    input.extend(len_field(501, &deep));
    input.extend(len_field(6, &len_field(77, &deep)));
    let found = scan(&input, &SOURCES).unwrap();
    assert_eq!(found.tokens.len(), 3);
    let output = append_enrichment(&input, &found, &enrichment("success"));
    assert!(output.starts_with(&input));
    let user = pb::BidRequest::decode(output.as_slice())
        .unwrap()
        .user
        .unwrap();
    assert_eq!(user.uid2_enrichment, Some(enrichment("success")));

    // 10,000 nested groups: rejected cleanly, without recursion.
    let mut groups = request();
    groups.extend(std::iter::repeat_n([0xa3, 0x1f], 10_000).flatten()); // start group 500
    groups.extend(std::iter::repeat_n([0xa4, 0x1f], 10_000).flatten()); // end group 500
    assert_eq!(scan(&groups, &SOURCES), Err(ProtoError::TooDeep));
}

/// If a scan succeeds, enriching must keep the tokens, be idempotent and never panic.
fn check(input: &[u8]) {
    let Ok(found) = scan(input, &SOURCES) else {
        return;
    };
    let _ = (found.site_domain, found.site_page, found.app_bundle);
    let output = append_enrichment(input, &found, &enrichment("success"));
    let rescanned: ProtoScan<'_> = scan(&output, &SOURCES).expect("enriched output scans");
    assert_eq!(rescanned.tokens, found.tokens);
    assert!(rescanned.has_enrichment());
    assert_eq!(
        append_enrichment(&output, &rescanned, &enrichment("success")),
        output
    );
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        check(&bytes);
    }

    #[test]
    fn truncated_requests_never_panic(cut in any::<prop::sample::Index>()) {
        let input = enrich(&request(), "success");
        let cut = cut.index(input.len() + 1);
        check(&input[..cut]);
    }

    #[test]
    fn bit_flipped_requests_never_panic(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..8), 1..6),
    ) {
        let mut input = enrich(&request(), "success");
        for (at, bit) in flips {
            let at = at.index(input.len());
            input[at] ^= 1 << bit;
        }
        check(&input);
    }

    #[test]
    fn spliced_garbage_never_panics(
        at in any::<prop::sample::Index>(),
        garbage in proptest::collection::vec(any::<u8>(), 1..32),
    ) {
        let mut input = request();
        let at = at.index(input.len() + 1);
        input.splice(at..at, garbage);
        check(&input);
    }
}
