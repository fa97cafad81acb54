//! Golden tests of the JSON enrichment over requests modelled on public examples
//! (`../shared/spec/openrtb.md` §2): tokens are substituted deterministically, the output must equal the
//! checked-in golden file byte for byte, and the structural promises are checked on every fixture:
//! removing the member (and an `ext` the enricher created) gives the input back, enriching twice equals
//! enriching once, and only `user.ext` changed. `UPDATE_GOLDEN=1 cargo test --test enrich_golden`
//! rewrites the golden files after a deliberate change; review the diff.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use common::*;
use serde_json::Value;
use uid2_enricher::cache::DecryptCache;
use uid2_enricher::enrich::{Context, Keys, PayloadFormat, Policy, enrich};
use uid2_enricher::optout::NoOptOuts;
use uid2_enricher::uid2::{IdentityScope, KeySet, Status, TokenVersion};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/openrtb")
}

fn tokens() -> HashMap<&'static str, String> {
    let mut euid = Token::new(TokenVersion::V4);
    euid.scope = IdentityScope::Euid;
    euid.raw_uid2 = "EKCoNGWPYng/whjBIwANJHKvvGlGyzARtDIAk95FlJyb".into();
    HashMap::from([
        ("@@UID2_V4@@", Token::new(TokenVersion::V4).build()),
        ("@@UID2_V2@@", Token::new(TokenVersion::V2).build()),
        ("@@EUID_V4@@", euid.build()),
    ])
}

fn euid_keys() -> KeySet {
    KeySet::parse_json(bidstream_keys_json("EUID", MAX_LIFETIME_S).as_bytes()).unwrap()
}

fn substitute(template: &str) -> String {
    tokens()
        .iter()
        .fold(template.to_string(), |text, (placeholder, token)| {
            text.replace(placeholder, token)
        })
}

/// (fixture, expected header status, expected "tokens" count or None when nothing is added)
const CASES: &[(&str, &str, Option<u64>)] = &[
    ("iab26-video.json", "success", Some(1)),
    ("iab26-simple-banner.json", "success", Some(1)),
    ("iab26-mobile-app.json", "success", Some(1)),
    ("prebid-server-25.json", "success", Some(1)),
    ("both-locations.json", "success", Some(3)),
    ("pretty-odd-whitespace.json", "success", Some(1)),
    ("unicode-numbers.json", "success", Some(1)),
    ("user-ext-many.json", "success", Some(1)),
    ("euid.json", "success", Some(1)),
    ("no-token.json", "no_token", None),
    ("no-user.json", "no_token", None),
];

fn run(
    input: &[u8],
    uid2: &KeySet,
    euid: &KeySet,
    cache: Option<&DecryptCache>,
) -> (Vec<u8>, String, Option<String>) {
    let ctx = Context {
        keys: Keys::per_scope(Some(Some(uid2)), Some(Some(euid))),
        optouts: &NoOptOuts,
        cache,
        now_ms: NOW,
    };
    let out = enrich(input, PayloadFormat::Json, &ctx, &Policy::default()).unwrap();
    (
        out.output.to_vec(),
        out.status_header().to_string(),
        out.member_json.clone(),
    )
}

#[test]
fn fixtures_enrich_to_their_golden_files() {
    let (uid2, euid) = (bidstream_keys(), euid_keys());
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    for (name, status, token_count) in CASES {
        let input = substitute(&std::fs::read_to_string(fixtures().join(name)).unwrap());
        let (output, header, member) = run(input.as_bytes(), &uid2, &euid, None);
        assert_eq!(&header, status, "{name}");
        let golden_path = fixtures().join("golden").join(name);
        if update {
            std::fs::create_dir_all(golden_path.parent().unwrap()).unwrap();
            std::fs::write(&golden_path, &output).unwrap();
        }
        let golden = std::fs::read(&golden_path).unwrap_or_else(|_| {
            panic!(
                "{} missing: run with UPDATE_GOLDEN=1",
                golden_path.display()
            )
        });
        assert!(
            golden == output,
            "{name}: output differs from golden:\n{}",
            String::from_utf8_lossy(&output)
        );

        let out_text = String::from_utf8(output.clone()).unwrap();
        let Some(member) = member else {
            assert_eq!(
                out_text, input,
                "{name}: a request without tokens passes byte-identical"
            );
            assert!(token_count.is_none());
            continue;
        };
        // Removing the member gives the input back, byte for byte.
        assert_eq!(strip_member(&out_text, &member, &input), input, "{name}");
        // Idempotent, with and without the cache.
        let cache = DecryptCache::new(1000);
        assert_eq!(
            run(&output, &uid2, &euid, None).0,
            output,
            "{name}: enriching twice"
        );
        assert_eq!(
            run(&output, &uid2, &euid, Some(&cache)).0,
            output,
            "{name}: cached"
        );
        assert_eq!(
            run(&output, &uid2, &euid, Some(&cache)).0,
            output,
            "{name}: cache hit"
        );
        // Valid JSON out; the member is the contract's; nothing outside user.ext changed.
        let (before, after): (Value, Value) = (
            serde_json::from_str(&input).unwrap(),
            serde_json::from_slice(&output).unwrap(),
        );
        let added = &after["user"]["ext"]["uid2_enrichment"];
        assert_eq!(added["status"], *status, "{name}");
        assert_eq!(added["tokens"].as_u64(), *token_count, "{name}");
        assert_eq!(added["raw_uid2"].as_str().map(str::len), Some(44), "{name}");
        let mut after_without = after.clone();
        after_without["user"]["ext"]
            .as_object_mut()
            .unwrap()
            .remove("uid2_enrichment");
        if after_without["user"]["ext"].as_object().unwrap().is_empty()
            && before["user"].get("ext").is_none()
        {
            after_without["user"].as_object_mut().unwrap().remove("ext");
        }
        assert_eq!(after_without, before, "{name}");
    }
}

#[test]
fn member_fields_follow_the_contract() {
    let (uid2, euid) = (bidstream_keys(), euid_keys());
    let input = substitute(&std::fs::read_to_string(fixtures().join("iab26-video.json")).unwrap());
    let (_, _, member) = run(input.as_bytes(), &uid2, &euid, None);
    let t = Token::new(TokenVersion::V4);
    assert_eq!(
        member.unwrap(),
        format!(
            r#"{{"status":"success","raw_uid2":"{RAW_UID2}","source":"uidapi.com","site_id":9000,"established":{},"expires":{},"identity_type":"email","token_version":4,"cstg":false,"tokens":1}}"#,
            t.established_ms, t.expires_ms
        )
    );
    // A v2 token has no identity type: the field is left out.
    let banner =
        substitute(&std::fs::read_to_string(fixtures().join("iab26-simple-banner.json")).unwrap());
    let (_, _, member) = run(banner.as_bytes(), &uid2, &euid, None);
    let member = member.unwrap();
    assert!(
        member.contains(r#""token_version":2"#) && !member.contains("identity_type"),
        "{member}"
    );
}

#[test]
fn the_euid_token_needs_euid_keys() {
    let uid2 = bidstream_keys();
    let input = substitute(&std::fs::read_to_string(fixtures().join("euid.json")).unwrap());
    // With only UID2 keys the EUID token is what a UID2 SDK client says: invalid_identity_scope.
    let ctx = Context {
        keys: Keys::single(Some(&uid2)),
        optouts: &NoOptOuts,
        cache: None,
        now_ms: NOW,
    };
    let out = enrich(
        input.as_bytes(),
        PayloadFormat::Json,
        &ctx,
        &Policy::default(),
    )
    .unwrap();
    assert_eq!(out.status(), Some(Status::InvalidIdentityScope));
    assert!(
        String::from_utf8_lossy(&out.output)
            .contains(r#""uid2_enrichment":{"status":"invalid_identity_scope","source":"euid.eu""#)
    );
}

#[test]
fn selection_prefers_the_first_success_and_counts_every_occurrence() {
    let (uid2, euid) = (bidstream_keys(), euid_keys());
    let mut expired = Token::new(TokenVersion::V4);
    expired.expires_ms = NOW - 1;
    let good = Token::new(TokenVersion::V3).build();
    let request = format!(
        r#"{{"id":"r","user":{{"eids":[{{"source":"uidapi.com","uids":[{{"id":"{e}"}},{{"id":"{e}"}}]}}],"ext":{{"eids":[{{"source":"uidapi.com","uids":[{{"id":"{good}"}}]}}]}}}}}}"#,
        e = expired.build()
    );
    let ctx = Context {
        keys: Keys::per_scope(Some(Some(&uid2)), Some(Some(&euid))),
        optouts: &NoOptOuts,
        cache: None,
        now_ms: NOW,
    };
    let out = enrich(
        request.as_bytes(),
        PayloadFormat::Json,
        &ctx,
        &Policy::default(),
    )
    .unwrap();
    assert_eq!(out.tokens.len(), 2, "distinct tokens are decrypted once");
    assert_eq!(out.tokens[0].occurrences, 2);
    assert_eq!(out.tokens[0].decryption.status, Status::ExpiredToken);
    assert_eq!(out.selected, Some(1));
    assert_eq!(out.status_header(), "success");
    assert!(
        out.member_json
            .unwrap()
            .ends_with(r#""token_version":3,"cstg":false,"tokens":3}"#)
    );
}

#[test]
fn opted_out_users_get_no_raw_uid2() {
    let uid2 = bidstream_keys();
    let t = Token::new(TokenVersion::V4);
    let request = format!(
        r#"{{"user":{{"eids":[{{"source":"uidapi.com","uids":[{{"id":"{}"}}]}}]}}}}"#,
        t.build()
    );
    let cache = DecryptCache::new(10);
    for (optout_ms, expected) in [
        (t.established_ms + 1, Status::OptedOut),
        (t.established_ms, Status::Success),
        (t.established_ms - 1, Status::Success),
    ] {
        let optouts: HashMap<String, i64> = [(RAW_UID2.to_string(), optout_ms)].into();
        for cache in [None, Some(&cache)] {
            let ctx = Context {
                keys: Keys::single(Some(&uid2)),
                optouts: &optouts,
                cache,
                now_ms: NOW,
            };
            let out = enrich(
                request.as_bytes(),
                PayloadFormat::Json,
                &ctx,
                &Policy::default(),
            )
            .unwrap();
            assert_eq!(out.status(), Some(expected), "opt-out at {optout_ms}");
            let text = String::from_utf8(out.output.to_vec()).unwrap();
            assert_eq!(
                text.contains(RAW_UID2),
                expected == Status::Success,
                "{text}"
            );
        }
    }
}

#[test]
fn cstg_tokens_are_checked_against_the_request_domain() {
    let uid2 = bidstream_keys();
    let mut t = Token::new(TokenVersion::V4);
    t.privacy_bits = 0x2;
    let token = t.build();
    let ctx = Context {
        keys: Keys::single(Some(&uid2)),
        optouts: &NoOptOuts,
        cache: None,
        now_ms: NOW,
    };
    for (site_or_app, expected) in [
        (r#""site":{"domain":"www.Example.com"}"#, Status::Success),
        (
            r#""site":{"page":"https://news.example.org/a?b=c"}"#,
            Status::Success,
        ),
        (
            r#""site":{"domain":"foo.com"}"#,
            Status::DomainOrAppNameCheckFailed,
        ),
        (
            r#""app":{"bundle":"com.123.Game.App.android"}"#,
            Status::Success,
        ),
        (
            r#""app":{"bundle":"com.other.app"}"#,
            Status::DomainOrAppNameCheckFailed,
        ),
        (r#""device":{}"#, Status::DomainOrAppNameCheckFailed),
        // `site` is read only for this check: members malformed inside it count as absent (the
        // request is enriched, not dead-lettered), and a later `site` replaces an earlier one.
        (
            r#""site":{"domain":"example.com","page":"\q"}"#,
            Status::DomainOrAppNameCheckFailed,
        ),
        (
            r#""site":{"domain":"foo.com"},"site":{"domain":"example.com"}"#,
            Status::Success,
        ),
    ] {
        let request = format!(
            r#"{{{site_or_app},"user":{{"eids":[{{"source":"uidapi.com","uids":[{{"id":"{token}"}}]}}]}}}}"#
        );
        let out = enrich(
            request.as_bytes(),
            PayloadFormat::Json,
            &ctx,
            &Policy::default(),
        )
        .unwrap();
        assert_eq!(out.status(), Some(expected), "{site_or_app}");
    }
}

#[test]
fn malformed_payloads_are_reported_not_enriched() {
    let uid2 = bidstream_keys();
    let ctx = Context {
        keys: Keys::single(Some(&uid2)),
        optouts: &NoOptOuts,
        cache: None,
        now_ms: NOW,
    };
    for (payload, reason) in [
        (&b"\xff\xfe{}"[..], "not_utf8"),
        (b"[1,2]", "not_a_json_object"),
        (b"{\"user\":{\"eids\":[", "truncated_json"),
    ] {
        let err = enrich(payload, PayloadFormat::Json, &ctx, &Policy::default()).unwrap_err();
        assert_eq!(err.reason, reason, "{:?}", String::from_utf8_lossy(payload));
    }
    let err = enrich(
        b"\x0a\xff\xff\xff\xff\xff",
        PayloadFormat::Protobuf,
        &ctx,
        &Policy::default(),
    )
    .unwrap_err();
    assert!(
        err.reason.ends_with("protobuf") || err.reason.contains("protobuf"),
        "{}",
        err.reason
    );
}

/// A key source per scope: each token is decrypted with its scope's set only.
#[test]
fn a_key_source_per_scope_decrypts_each_token_with_its_own_set() {
    use uid2_enricher::tools::traffic::{Case, Generator, Mix};
    let now = 1_780_000_000_000;
    let mix = Mix(vec![(Case::ValidV4, 1), (Case::EuidValid, 1)]);
    let mut generator = Generator::new(5, mix, now, 50, 900);
    let (uid2, euid) = (generator.key_set(), generator.euid_key_set());
    let status_of = |keys: Keys<'_>, payload: &[u8], format: PayloadFormat| {
        let ctx = Context {
            keys,
            optouts: &NoOptOuts,
            cache: None,
            now_ms: now,
        };
        enrich(payload, format, &ctx, &Policy::default())
            .unwrap()
            .status_header()
    };
    let both = || Keys::per_scope(Some(Some(&uid2)), Some(Some(&euid)));
    let (mut seen_uid2, mut seen_euid) = (0, 0);
    for _ in 0..200 {
        let request = generator.next_request();
        let want_uid2_only = match request.case {
            Case::ValidV4 => {
                seen_uid2 += 1;
                "success"
            }
            _ => {
                seen_euid += 1;
                "invalid_identity_scope"
            }
        };
        let json = PayloadFormat::Json;
        assert_eq!(status_of(both(), &request.bytes, json), "success");
        // No EUID source: EUID tokens are refused as of another scope, without a decryption attempt.
        let uid2_only = Keys::per_scope(Some(Some(&uid2)), None);
        assert_eq!(status_of(uid2_only, &request.bytes, json), want_uid2_only);
        // An EUID source not loaded yet: the SDK's status before its first refresh.
        let euid_pending = Keys::per_scope(Some(Some(&uid2)), Some(None));
        let want = if request.case == Case::ValidV4 {
            "success"
        } else {
            "not_initialized"
        };
        assert_eq!(status_of(euid_pending, &request.bytes, json), want);
        // One source for every scope, as one SDK client: the EUID token meets the UID2 set.
        let single = Keys::single(Some(&uid2));
        assert_eq!(status_of(single, &request.bytes, json), want_uid2_only);
    }
    assert!(seen_uid2 > 50 && seen_euid > 50);
    // Pixels carry no eid source: the scope the token declares picks the set and the reported source.
    for _ in 0..50 {
        let hit = generator.next_pixel();
        let ctx = Context {
            keys: both(),
            optouts: &NoOptOuts,
            cache: None,
            now_ms: now,
        };
        let out = enrich(&hit.bytes, PayloadFormat::Pixel, &ctx, &Policy::default()).unwrap();
        assert_eq!(out.status_header(), "success", "{:?}", hit.case);
        let source = &Policy::default().sources[out.tokens[0].source_index];
        let want = if hit.case == Case::EuidValid {
            IdentityScope::Euid
        } else {
            IdentityScope::Uid2
        };
        assert_eq!(source.scope, want, "{:?}", hit.case);
    }
}
