//! Pixel hits and JSON events through `enrich`, and the tokenize direction, as the bid-request tests do
//! it: goldens (exact expected bytes) for odd encodings, repeated parameters, fragments, escaped keys and
//! re-enrichment; properties over generated inputs (only the appended/inserted bytes differ, removing them
//! gives the input back, enriching twice equals once, output JSON parses); the sharing client's checks in
//! every format; and tokenize → decrypt round trips.

mod common;

use common::*;
use proptest::prelude::*;
use serde_json::Value;
use uid2_enricher::enrich::{Context, Keys, Malformed, PayloadFormat, Policy, enrich, enrich_into};
use uid2_enricher::formats::event::JsonPointer;
use uid2_enricher::formats::pixel;
use uid2_enricher::optout::NoOptOuts;
use uid2_enricher::tokenize::{
    self, TokenizeContext, TokenizeError, TokenizePolicy, TokenizeStatus,
};
use uid2_enricher::uid2::{ClientMode, KeySet, Status, TokenVersion, decrypt};

fn keys() -> &'static KeySet {
    static KEYS: std::sync::OnceLock<KeySet> = std::sync::OnceLock::new();
    KEYS.get_or_init(sharing_keys)
}

fn ctx() -> Context<'static> {
    Context {
        keys: Keys::single(Some(keys())),
        optouts: &NoOptOuts,
        cache: None,
        now_ms: NOW,
    }
}

fn sharing_policy() -> Policy {
    let mut p = Policy::default();
    p.mode = ClientMode::Sharing;
    p
}

fn v4() -> String {
    Token::new(TokenVersion::V4).build()
}

/// The raw UID2 as the pixel output writes it.
fn raw_encoded() -> String {
    let mut s = String::new();
    pixel::encode_into(&mut s, RAW_UID2);
    s
}

fn enrich_pixel(input: &[u8], policy: &Policy) -> Result<(String, &'static str), Malformed> {
    check_enrich_into(input, PayloadFormat::Pixel, policy);
    enrich(input, PayloadFormat::Pixel, &ctx(), policy).map(|e| {
        let status = e.status_header();
        (String::from_utf8(e.output.into_owned()).unwrap(), status)
    })
}

/// `enrich_into` gives what `enrich` gives, appended after what the buffer held (nothing appended when
/// the payload is unchanged), for an empty buffer and a used one; an error leaves the buffer as it was.
fn check_enrich_into(input: &[u8], format: PayloadFormat, policy: &Policy) {
    let expected = enrich(input, format, &ctx(), policy);
    for prefix in [&b""[..], b"earlier\n"] {
        let mut buffer = prefix.to_vec();
        let into = enrich_into(input, format, &ctx(), policy, &mut buffer);
        let appended = match (&expected, into) {
            (Ok(want), Ok(got)) => {
                assert_eq!(got.output, want.output);
                assert_eq!(got.body_enriched, want.body_enriched);
                assert_eq!(got.member_json, want.member_json);
                assert_eq!(got.status(), want.status());
                want.body_enriched.then(|| want.output.to_vec())
            }
            (Err(want), Err(got)) => {
                assert_eq!(&got, want);
                None
            }
            (want, got) => panic!(
                "enrich gave {want:?}, enrich_into {:?}",
                got.map(|e| e.output)
            ),
        };
        let mut expected_buffer = prefix.to_vec();
        expected_buffer.extend(appended.unwrap_or_default());
        assert_eq!(buffer, expected_buffer);
    }
}

// ---------------------------------------------------------------------------------------------------
// Pixels
// ---------------------------------------------------------------------------------------------------

#[test]
fn pixel_empty_parameter_then_trailing_ampersand() {
    let t = v4();
    let input = format!("uid2_token={t}&&");
    let (out, _) = enrich_pixel(input.as_bytes(), &sharing_policy()).unwrap();
    assert_eq!(
        out,
        format!(
            "uid2_token={t}&&&uid2_raw={}&uid2_status=success",
            raw_encoded()
        )
    );
    let (again, _) = enrich_pixel(out.as_bytes(), &sharing_policy()).unwrap();
    assert_eq!(again, out);
}

#[test]
fn pixel_goldens() {
    let t = v4();
    let mut v2 = Token::new(TokenVersion::V2);
    v2.nonce_seed = 9;
    let v2 = v2.build();
    assert!(
        v2.contains('+') || v2.contains('/'),
        "want a v2 token with + or /"
    );
    let mut v2_encoded = String::new();
    pixel::encode_into(&mut v2_encoded, &v2);
    let mut expired = Token::new(TokenVersion::V4);
    expired.expires_ms = NOW - 1;
    let expired = expired.build();
    let raw = raw_encoded();
    assert_eq!(raw, "ywsvDNINiZOVSsfkHpLpSJzXzhr6Jx9Z%2F4Q0%2BlsEUvM%3D");
    let ok = format!("uid2_raw={raw}&uid2_status=success");
    // (input, expected output, expected status)
    let cases: Vec<(String, String, &str)> = vec![
        // A URL with a fragment: the parameters go before it.
        (
            format!("https://adv.example/px?ev=purchase&uid2_token={t}&v=19.99#thanks"),
            format!("https://adv.example/px?ev=purchase&uid2_token={t}&v=19.99&{ok}#thanks"),
            "success",
        ),
        // A bare query string.
        (
            format!("ev=purchase&uid2_token={t}"),
            format!("ev=purchase&uid2_token={t}&{ok}"),
            "success",
        ),
        // Repeated parameter: the first non-empty one wins (the second is expired).
        (
            format!("/px?uid2_token=&uid2_token={t}&uid2_token={expired}"),
            format!("/px?uid2_token=&uid2_token={t}&uid2_token={expired}&{ok}"),
            "success",
        ),
        (
            format!("/px?uid2_token={expired}&uid2_token={t}"),
            format!("/px?uid2_token={expired}&uid2_token={t}&uid2_status=expired_token"),
            "expired_token",
        ),
        // Odd encodings: an encoded name, a token with needlessly encoded characters, raw UTF-8, bad
        // escapes, `;`, empty parameters and a trailing `&` kept as they are.
        (
            format!(
                "https://a.example/p?q=caf%C3%A9+%zz;x=é&&uid2%5Ftoken=%{:02X}{}&",
                t.as_bytes()[0],
                &t[1..]
            ),
            format!(
                "https://a.example/p?q=caf%C3%A9+%zz;x=é&&uid2%5Ftoken=%{:02X}{}&&{ok}",
                t.as_bytes()[0],
                &t[1..]
            ),
            "success",
        ),
        // A standard-base64 (v2) token, properly encoded, and sent with its `+` unencoded.
        (
            format!("/px?uid2_token={v2_encoded}"),
            format!("/px?uid2_token={v2_encoded}&{ok}"),
            "success",
        ),
        (
            format!("/px?uid2_token={v2}"),
            format!("/px?uid2_token={v2}&{ok}"),
            "success",
        ),
        // Re-enrichment: earlier results (anywhere, with a different status) are replaced.
        (
            format!("/px?uid2_status=expired_token&a=1&uid2_token={t}&uid2_raw=x#f"),
            format!("/px?a=1&uid2_token={t}&{ok}#f"),
            "success",
        ),
        // `?` only inside the fragment: no query, no token.
        (
            format!("https://a.example/px#?uid2_token={t}"),
            format!("https://a.example/px#?uid2_token={t}"),
            "no_token",
        ),
        (
            "https://a.example/px".into(),
            "https://a.example/px".into(),
            "no_token",
        ),
        (
            "/px?ev=view&uid2_token=".into(),
            "/px?ev=view&uid2_token=".into(),
            "no_token",
        ),
        // An invalid token is reported, with no raw UID2.
        (
            "/px?uid2_token=garbage".into(),
            "/px?uid2_token=garbage&uid2_status=version_not_supported".into(),
            "version_not_supported",
        ),
    ];
    for (input, expected, status) in cases {
        let (out, got_status) = enrich_pixel(input.as_bytes(), &sharing_policy()).unwrap();
        assert_eq!(out, expected, "input {input}");
        assert_eq!(got_status, status, "input {input}");
        // Idempotent.
        let (again, _) = enrich_pixel(out.as_bytes(), &sharing_policy()).unwrap();
        assert_eq!(again, out, "twice: {input}");
    }
    // The parameter name is configurable.
    let mut policy = sharing_policy();
    policy.pixel_token_param = "tok en".into();
    let (out, status) = enrich_pixel(format!("/px?tok+en={t}").as_bytes(), &policy).unwrap();
    assert_eq!((out, status), (format!("/px?tok+en={t}&{ok}"), "success"));
    // Not UTF-8: dead-lettered.
    let err = enrich_pixel(b"/px?uid2_token=\xff", &sharing_policy()).unwrap_err();
    assert_eq!(err.reason, "not_utf8");
}

/// A query parameter that is never one the enricher reads or writes.
fn param() -> impl Strategy<Value = String> {
    let part = prop::collection::vec(
        prop::sample::select(vec![
            "a", "Z", "9", "%20", "%2B", "+", "%zz", "%", "=", ";", "é", "~", ".", "-", "_", "/",
            "?", ":", "%C3%A9",
        ]),
        0..6,
    )
    .prop_map(|v| v.concat());
    (part.clone(), part, any::<bool>()).prop_filter_map("reserved name", |(n, v, eq)| {
        let name = pixel::decode(n.split('=').next().unwrap_or("")).into_owned();
        if ["uid2_token", "uid2_raw", "uid2_status"].contains(&name.as_str()) {
            return None;
        }
        Some(if eq { format!("{n}={v}") } else { n })
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// Only the appended parameters differ; removing them gives the input back; twice equals once; the
    /// appended raw UID2 decodes to the token's.
    #[test]
    fn pixel_enrichment_is_lossless(
        before in prop::collection::vec(param(), 0..4),
        after in prop::collection::vec(param(), 0..4),
        prefix in prop::sample::select(vec!["", "https://adv.example/px?", "/px?", "//cdn.example/p.gif?"]),
        fragment in prop::option::of("[a-z?&=#/]{0,8}"),
        trailing_amp in any::<bool>(),
    ) {
        let t = v4();
        let mut params = before.clone();
        params.push(format!("uid2_token={t}"));
        params.extend(after.iter().cloned());
        let mut query = params.join("&");
        if trailing_amp {
            query.push('&');
        }
        // A bare query string must not read as a path or URL itself (the module documents the rule).
        if prefix.is_empty() {
            query = format!("e=1&{query}");
        }
        let fragment = fragment.map(|f| format!("#{f}")).unwrap_or_default();
        let input = format!("{prefix}{query}{fragment}");
        let (out, status) = enrich_pixel(input.as_bytes(), &sharing_policy()).unwrap();
        prop_assert_eq!(status, "success");
        let sep = if query.is_empty() { "" } else { "&" };
        let appended = format!("{sep}uid2_raw={}&uid2_status=success", raw_encoded());
        prop_assert_eq!(&out, &format!("{prefix}{query}{appended}{fragment}"));
        prop_assert_eq!(out.replacen(&appended, "", 1), input);
        let (again, _) = enrich_pixel(out.as_bytes(), &sharing_policy()).unwrap();
        prop_assert_eq!(&again, &out);
        let found = pixel::find(&out, "uid2_raw");
        prop_assert_eq!(found.token.as_deref(), Some(RAW_UID2));
    }

    /// Hostile bytes never panic.
    #[test]
    fn pixel_random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = enrich_pixel(&bytes, &sharing_policy());
    }
}

// ---------------------------------------------------------------------------------------------------
// JSON events
// ---------------------------------------------------------------------------------------------------

fn enrich_event(input: &str, policy: &Policy) -> (String, &'static str, Option<String>) {
    check_enrich_into(input.as_bytes(), PayloadFormat::Event, policy);
    let e = enrich(input.as_bytes(), PayloadFormat::Event, &ctx(), policy).unwrap();
    (
        String::from_utf8(e.output.to_vec()).unwrap(),
        e.status_header(),
        e.member_json.clone(),
    )
}

fn pointers(list: &[&str]) -> Vec<JsonPointer> {
    list.iter()
        .map(|p| JsonPointer::parse(p).unwrap())
        .collect()
}

#[test]
fn event_goldens() {
    let t = v4();
    // `@M@` marks where the member must be; `(pointers, input)`.
    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec!["/uid2_token"],
            format!(r#"{{"ev":"purchase","uid2_token":"{t}","v":19.99@M@}}"#),
        ),
        // Odd whitespace, number spelling and escapes stay.
        (
            vec!["/uid2_token"],
            format!(
                "{{ \"n\" : 1e-3 ,\n\t\"s\":\"caf\\u00e9 \\/\",\"uid2_token\" :\r\n \"{t}\" , \"big\":12345678901234567890@M@\n}}\n"
            ),
        ),
        // An escaped key still matches the pointer; the token is unescaped.
        (
            vec!["/uid2_token"],
            format!(
                r#"{{"uid2\u005ftoken":"\u{:04x}{}"@M@}}"#,
                t.as_bytes()[0],
                &t[1..]
            ),
        ),
        // Nested: the member goes into the object holding the token, not the top level.
        (
            vec!["/user/ids/1/t"],
            format!(r#"{{"user":{{"ids":[{{"t":"x"}},{{"k":1,"t":"{t}"@M@}}]}},"z":[]}}"#),
        ),
        // Token in an array: the nearest enclosing object gets it.
        (
            vec!["/tokens/0"],
            format!(r#"{{"tokens":["{t}","other"],"a":{{}}@M@}}"#),
        ),
        // The first pointer that finds a string decides the place; missing and non-string ones find none.
        (
            vec!["/missing", "/n", "/a~1b/t"],
            format!(r#"{{"n":5,"a/b":{{"t":"{t}"@M@}}}}"#),
        ),
        // Duplicate keys: the last one wins.
        (vec!["/t"], format!(r#"{{"t":"first","t":"{t}"@M@}}"#)),
    ];
    for (ptrs, template) in cases {
        let mut policy = sharing_policy();
        policy.event_token_pointers = pointers(&ptrs);
        let input = template.replace("@M@", "");
        let (out, status, member) = enrich_event(&input, &policy);
        assert_eq!(status, "success", "{input}");
        let member = member.unwrap();
        let m: Value = serde_json::from_str(&member).unwrap();
        assert_eq!(m["raw_uid2"], RAW_UID2);
        assert_eq!(m["source"], "uidapi.com");
        let expected = template.replace("@M@", &format!(",\"uid2_enrichment\":{member}"));
        assert_eq!(out, expected, "{input}");
        let (again, _, _) = enrich_event(&out, &policy);
        assert_eq!(again, out, "twice");
    }
    // Empty host object cannot happen with a token in it; a stale member with other content is replaced.
    let stale = format!(r#"{{"uid2_enrichment":{{"status":"expired_token"}},"uid2_token":"{t}"}}"#);
    let (out, _, member) = enrich_event(&stale, &sharing_policy());
    assert_eq!(
        out,
        format!(
            r#"{{"uid2_enrichment":{},"uid2_token":"{t}"}}"#,
            member.unwrap()
        )
    );
    // No token: byte-identical.
    for input in [
        r#"{"ev":"x"}"#,
        r#"{"uid2_token":null}"#,
        r#"{"uid2_token":{"a":"b"}}"#,
    ] {
        assert_eq!(enrich_event(input, &sharing_policy()).0, input);
        assert_eq!(enrich_event(input, &sharing_policy()).1, "no_token");
    }
    // Not a JSON object: dead-lettered with the bid-request reasons.
    for (bad, reason) in [
        (&b"[1]"[..], "not_a_json_object"),
        (b"{\"uid2_token\":\"x\"", "truncated_json"),
        (b"\xff{}", "not_utf8"),
        (b"{\"a\":1}{", "malformed_json"),
    ] {
        let err = enrich(bad, PayloadFormat::Event, &ctx(), &sharing_policy()).unwrap_err();
        assert_eq!(err.reason, reason, "{bad:?}");
    }
}

/// JSON whitespace.
fn ws() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["", "", " ", "\n", "\t", "\r\n  "]).prop_map(str::to_string)
}

/// A JSON value that is never a string at a pointer this test uses.
fn filler() -> impl Strategy<Value = String> {
    let leaf = prop::sample::select(vec![
        "1.50",
        "1e-3",
        "-0",
        "12345678901234567890",
        "true",
        "null",
        r#""caf\u00e9 \/ \"q\"""#,
        r#""é""#,
        "[]",
        "{}",
    ])
    .prop_map(str::to_string);
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec(("[a-z]{1,4}", inner), 0..4).prop_map(|v| {
                let members: Vec<String> = v.iter().map(|(k, x)| format!("\"x{k}\":{x}")).collect();
                format!("{{{}}}", members.join(","))
            }),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// A token at `/ctx/uid2_token` among generated members: the output is the input plus one member in
    /// `ctx`, removing it gives the input back, twice equals once, and the output parses to the input's
    /// value plus the member.
    #[test]
    fn event_enrichment_is_lossless(
        before in prop::collection::vec(filler(), 0..3),
        inner in prop::collection::vec(filler(), 0..3),
        after in prop::collection::vec(filler(), 0..3),
        w in ws(),
    ) {
        let t = v4();
        let members = |prefix: &str, v: &[String]| -> Vec<String> {
            v.iter().enumerate().map(|(i, x)| format!("{w}\"{prefix}{i}\"{w}:{w}{x}{w}")).collect()
        };
        let mut ctx_members = members("i", &inner);
        ctx_members.push(format!("{w}\"uid2_token\"{w}:{w}\"{t}\"{w}"));
        let mut top = members("b", &before);
        top.push(format!("{w}\"ctx\":{w}{{{}}}{w}", ctx_members.join(",")));
        top.extend(members("a", &after));
        let input = format!("{w}{{{}}}{w}", top.join(","));
        let mut policy = sharing_policy();
        policy.event_token_pointers = pointers(&["/ctx/uid2_token"]);
        let (out, status, member) = enrich_event(&input, &policy);
        prop_assert_eq!(status, "success");
        let member = member.unwrap();
        prop_assert_eq!(strip_member(&out, &member, &input), input.clone());
        let (again, _, _) = enrich_event(&out, &policy);
        prop_assert_eq!(&again, &out);
        let mut want: Value = serde_json::from_str(&input).unwrap();
        want["ctx"]["uid2_enrichment"] = serde_json::from_str(&member).unwrap();
        let got: Value = serde_json::from_str(&out).unwrap();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn event_random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = enrich(&bytes, PayloadFormat::Event, &ctx(), &sharing_policy());
    }
}

// ---------------------------------------------------------------------------------------------------
// Sharing mode in every format
// ---------------------------------------------------------------------------------------------------

/// The sharing client's checks apply in every format: no domain check (a CSTG token from another site
/// passes), and `max_sharing_lifetime_seconds` (not the bidstream one) bounds the lifetime.
#[test]
fn sharing_mode_uses_the_sharing_clients_checks_in_every_format() {
    // Sharing max lifetime 2 days; the bidstream max (absent from a sharing body) is unlimited.
    let short = KeySet::parse_json(sharing_keys_json("UID2", 2 * 86_400).as_bytes()).unwrap();
    let mut long = Token::new(TokenVersion::V4);
    long.expires_ms = NOW + 3 * DAY_MS;
    let long = long.build();
    let mut cstg = Token::new(TokenVersion::V4);
    cstg.privacy_bits = 0x2;
    let cstg = cstg.build();
    let wrap = |format: PayloadFormat, token: &str| -> Vec<u8> {
        match format {
            PayloadFormat::Pixel => format!("https://adv.example/px?uid2_token={token}"),
            PayloadFormat::Event => format!(r#"{{"uid2_token":"{token}"}}"#),
            _ => format!(
                r#"{{"site":{{"domain":"not-listed.example"}},"user":{{"eids":[{{"source":"uidapi.com","uids":[{{"id":"{token}"}}]}}]}}}}"#
            ),
        }
        .into_bytes()
    };
    for format in [
        PayloadFormat::Json,
        PayloadFormat::Pixel,
        PayloadFormat::Event,
    ] {
        for (mode, token, expected) in [
            (ClientMode::Sharing, &cstg, Status::Success),
            (
                ClientMode::Bidstream,
                &cstg,
                Status::DomainOrAppNameCheckFailed,
            ),
            (ClientMode::Sharing, &long, Status::InvalidTokenLifetime),
            (ClientMode::Bidstream, &long, Status::Success),
        ] {
            let mut policy = Policy::default();
            policy.mode = mode;
            let ctx = Context {
                keys: Keys::single(Some(&short)),
                optouts: &NoOptOuts,
                cache: None,
                now_ms: NOW,
            };
            let input = wrap(format, token);
            let out = enrich(&input, format, &ctx, &policy).unwrap();
            assert_eq!(out.status(), Some(expected), "{format:?} {mode:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Tokenize
// ---------------------------------------------------------------------------------------------------

fn nonces() -> impl FnMut() -> [u8; 24] {
    let mut n = 0u64;
    move || {
        n += 1;
        let mut out = [0u8; 24];
        out[..8].copy_from_slice(&n.to_le_bytes());
        out[12..20].copy_from_slice(&(!n).to_le_bytes());
        out
    }
}

fn raw_uid2() -> impl Strategy<Value = String> {
    use base64::Engine as _;
    (prop::collection::vec(any::<u8>(), 32..=33))
        .prop_map(|b| base64::engine::general_purpose::STANDARD.encode(b))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Raw UID2s at the pointers become v4 tokens that the sharing client decrypts back to them; putting
    /// the raw UID2s back where the tokens are gives the input byte for byte; the output then enriches
    /// (as a JSON event, sharing mode) to the same raw UID2.
    #[test]
    fn tokenize_round_trips(
        raw in raw_uid2(),
        other in raw_uid2(),
        before in prop::collection::vec(filler(), 0..3),
        w in ws(),
    ) {
        let members: Vec<String> =
            before.iter().enumerate().map(|(i, x)| format!("\"b{i}\"{w}:{w}{x}")).collect();
        let input = format!(
            "{{{}{}\"uid2\":{w}\"{raw}\",{w}\"to\":[{{\"id\":\"{other}\"}}]}}",
            members.join(","),
            if members.is_empty() { "" } else { "," }
        );
        let policy = TokenizePolicy { pointers: pointers(&["/uid2", "/to/0/id"]) };
        let tctx = TokenizeContext { keys: Some(keys()), now_ms: NOW };
        let out = tokenize::tokenize(input.as_bytes(), &tctx, &policy, &mut nonces()).unwrap();
        prop_assert_eq!(out.status, TokenizeStatus::Tokenized);
        prop_assert_eq!(out.replaced, 2);
        let text = String::from_utf8(out.output.to_vec()).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        let (t1, t2) = (v["uid2"].as_str().unwrap(), v["to"][0]["id"].as_str().unwrap());
        prop_assert!(t1.starts_with('A') || t1.starts_with('B'));
        prop_assert_eq!(&t1[1..2], "4");
        for (token, want) in [(t1, &raw), (t2, &other)] {
            let d = decrypt(token, Some(keys()), ClientMode::Sharing, None, NOW);
            prop_assert_eq!(d.status, Status::Success);
            prop_assert_eq!(d.raw_uid2.as_deref(), Some(want.as_str()));
        }
        prop_assert_eq!(text.replacen(t1, &raw, 1).replacen(t2, &other, 1), input);
        let mut ep = sharing_policy();
        ep.event_token_pointers = pointers(&["/uid2"]);
        let enriched = enrich(text.as_bytes(), PayloadFormat::Event, &ctx(), &ep).unwrap();
        let member: Value = serde_json::from_str(enriched.member_json.as_deref().unwrap()).unwrap();
        prop_assert_eq!(member["raw_uid2"].as_str(), Some(raw.as_str()));
    }
}

#[test]
fn tokenize_passes_records_without_raw_uid2s_and_rejects_invalid_ones() {
    let tctx = TokenizeContext {
        keys: Some(keys()),
        now_ms: NOW,
    };
    let policy = TokenizePolicy::default();
    for input in [
        r#"{"ev":1}"#,
        r#"{"uid2":""}"#,
        r#"{"uid2":7}"#,
        r#"{"x":{"uid2":"a"}}"#,
    ] {
        let out = tokenize::tokenize(input.as_bytes(), &tctx, &policy, &mut nonces()).unwrap();
        assert_eq!(out.status, TokenizeStatus::NoRawUid2);
        assert_eq!(&*out.output, input.as_bytes());
    }
    // A token (already tokenized), short base64, wrong length and non-base64 are not raw UID2s.
    let token = v4();
    for bad in [
        token.as_str(),
        "ywsvDNINiZOVSsfkHpLpSJzXzhr6Jx9Z/4Q0+lsEUvM",
        "AAAA",
        "jane.doe@example.com",
    ] {
        let input = format!(r#"{{"uid2":"{bad}"}}"#);
        match tokenize::tokenize(input.as_bytes(), &tctx, &policy, &mut nonces()) {
            Err(TokenizeError::Malformed(m)) => {
                assert_eq!(m.reason, "invalid_raw_uid2");
                assert!(
                    !m.detail.contains(bad),
                    "the detail must not carry the value"
                );
            }
            other => panic!("{bad}: {other:?}"),
        }
    }
    // Not JSON: the JSON reasons.
    match tokenize::tokenize(b"{\"uid2\":", &tctx, &policy, &mut nonces()) {
        Err(TokenizeError::Malformed(m)) => assert_eq!(m.reason, "truncated_json"),
        other => panic!("{other:?}"),
    }
    // Bidstream keys have no default keyset: a keys error, never output.
    let bid = bidstream_keys();
    let input = format!(r#"{{"uid2":"{RAW_UID2}"}}"#);
    let got = tokenize::tokenize(
        input.as_bytes(),
        &TokenizeContext {
            keys: Some(&bid),
            now_ms: NOW,
        },
        &policy,
        &mut nonces(),
    );
    assert!(matches!(got, Err(TokenizeError::Keys(_))), "{got:?}");
    assert!(tokenize::can_encrypt(Some(&bid), NOW).is_err());
    assert!(tokenize::can_encrypt(Some(keys()), NOW).is_ok());
}
