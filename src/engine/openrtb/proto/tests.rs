//! Tests of the protobuf scanner and append: hand-built messages, protobuf's merge rules, malformed framing,
//! and the fast paths checked against the general field walk.

use super::*;

const SOURCES: [&str; 2] = ["uidapi.com", "euid.eu"];

fn key(number: u32, wire_type: u8) -> Vec<u8> {
    let mut out = Vec::new();
    put_varint(&mut out, tag(number, wire_type));
    out
}

fn len(number: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = key(number, WIRE_LEN);
    put_varint(&mut out, payload.len() as u64);
    out.extend_from_slice(payload);
    out
}

fn varint(number: u32, value: u64) -> Vec<u8> {
    let mut out = key(number, WIRE_VARINT);
    put_varint(&mut out, value);
    out
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn uid(id: &str) -> Vec<u8> {
    cat(&[&len(UID_ID, id.as_bytes()), &varint(2, 3)])
}

fn eid(source: &str, ids: &[&str]) -> Vec<u8> {
    let mut out = len(EID_SOURCE, source.as_bytes());
    for id in ids {
        out.extend(len(EID_UIDS, &uid(id)));
    }
    out
}

fn user(parts: &[&[u8]]) -> Vec<u8> {
    len(BID_REQUEST_USER, &cat(parts))
}

fn ext(eids: &[Vec<u8>]) -> Vec<u8> {
    let mut payload = len(2, b"consent");
    for e in eids {
        payload.extend(len(USER_EXT_EIDS, e));
    }
    len(USER_EXT, &payload)
}

fn ids<'a>(scan: &ProtoScan<'a>) -> Vec<(&'a str, usize, ProtoEidLocation)> {
    scan.tokens
        .iter()
        .map(|t| (t.id, t.source_index, t.location))
        .collect()
}

fn enrichment(status: &str) -> pb::Uid2Enrichment {
    pb::Uid2Enrichment {
        status: Some(status.into()),
        raw_uid2: (status == "success")
            .then(|| "ywsvDNINiZOVSsfkHpLpSJzXzhr6Jx9Z/4Q0+lsEUvM=".into()),
        source: Some("uidapi.com".into()),
        site_id: Some(9000),
        established: Some(1_672_531_261_000),
        expires: Some(2_303_254_861_000),
        identity_type: Some("email".into()),
        token_version: Some(4),
        cstg: Some(false),
        tokens: Some(2),
    }
}

fn request() -> Vec<u8> {
    cat(&[
        &len(1, b"req-1"),
        &len(
            BID_REQUEST_SITE,
            &cat(&[
                &len(SITE_DOMAIN, b"news.example.com"),
                &len(SITE_PAGE, b"https://news.example.com/a"),
            ]),
        ),
        &user(&[
            &len(1, b"exchange-user"),
            &len(USER_EIDS, &eid("adserver.org", &["tdid-1"])),
            &len(USER_EIDS, &eid("uidapi.com", &["A4AAAA-one", "A4AAAA-two"])),
            &ext(&[eid("euid.eu", &["E4AAAA-three"]), eid("pubcid.org", &["p"])]),
        ]),
        &varint(500, 7),
    ])
}

#[test]
fn varints_decode_like_protobuf() {
    let cases: &[(&[u8], Result<u64, ProtoError>)] = &[
        (&[0x00], Ok(0)),
        (&[0x7f], Ok(127)),
        (&[0xac, 0x02], Ok(300)),
        (&[0x80, 0x80, 0x00], Ok(0)), // over-long but within 10 bytes: accepted, as protobuf does
        (
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
            Ok(u64::MAX),
        ),
        (
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02],
            Err(ProtoError::BadVarint),
        ),
        (
            &[
                0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00,
            ],
            Err(ProtoError::BadVarint),
        ),
        (&[0x80, 0x80], Err(ProtoError::Truncated)),
        (&[], Err(ProtoError::Truncated)),
    ];
    for (bytes, expected) in cases {
        let mut cursor = Cursor::new(bytes, 0..bytes.len());
        assert_eq!(cursor.varint(), *expected, "{bytes:02x?}");
    }
    for value in [
        0,
        1,
        127,
        128,
        300,
        16_383,
        16_384,
        u64::from(u32::MAX),
        u64::MAX,
    ] {
        let mut out = Vec::new();
        put_varint(&mut out, value);
        assert_eq!(out.len(), varint_len(value), "{value}");
        assert_eq!(Cursor::new(&out, 0..out.len()).varint(), Ok(value));
    }
}

#[test]
fn finds_tokens_in_order_with_source_and_location() {
    let input = request();
    let scan = scan(&input, &SOURCES).unwrap();
    assert_eq!(
        ids(&scan),
        [
            ("A4AAAA-one", 0, ProtoEidLocation::UserEids),
            ("A4AAAA-two", 0, ProtoEidLocation::UserEids),
            ("E4AAAA-three", 1, ProtoEidLocation::UserExtEids),
        ]
    );
    assert_eq!(scan.site_domain, Some("news.example.com"));
    assert_eq!(scan.site_page, Some("https://news.example.com/a"));
    assert_eq!(scan.app_bundle, None);
    assert!(!scan.has_enrichment());
    assert_eq!(ProtoEidLocation::UserExtEids.as_str(), "user.ext.eids");
}

#[test]
fn sources_filter_and_empty_input() {
    let input = request();
    let only_euid = scan(&input, &["euid.eu"]).unwrap();
    assert_eq!(
        ids(&only_euid),
        [("E4AAAA-three", 0, ProtoEidLocation::UserExtEids)]
    );
    assert!(scan(&input, &[]).unwrap().tokens.is_empty());
    let empty = scan(&[], &SOURCES).unwrap();
    assert_eq!(empty.tokens, []);
    assert_eq!(empty.site_domain, None);
}

#[test]
fn eids_from_all_user_records_come_before_ext_eids() {
    let input = cat(&[
        &user(&[
            &ext(&[eid("uidapi.com", &["ext-1"])]),
            &len(USER_EIDS, &eid("uidapi.com", &["eid-1"])),
        ]),
        &len(1, b"id"),
        &user(&[
            &len(USER_EIDS, &eid("euid.eu", &["eid-2"])),
            &ext(&[eid("uidapi.com", &["ext-2"])]),
        ]),
    ]);
    let found: Vec<_> = scan(&input, &SOURCES)
        .unwrap()
        .tokens
        .iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(found, ["eid-1", "eid-2", "ext-1", "ext-2"]);
}

#[test]
fn merge_semantics_inside_eids_and_uids() {
    // source after uids; a later source wins; a later id wins; uids without id or with "" are skipped.
    let late_source = cat(&[
        &len(EID_UIDS, &uid("t1")),
        &len(EID_SOURCE, b"adserver.org"),
        &len(EID_SOURCE, b"uidapi.com"),
    ]);
    let two_ids = cat(&[&len(UID_ID, b"first"), &len(UID_ID, b"second")]);
    let odd_uids = cat(&[
        &len(EID_SOURCE, b"euid.eu"),
        &len(EID_UIDS, &two_ids),
        &len(EID_UIDS, &varint(2, 3)),
        &len(EID_UIDS, &len(UID_ID, b"")),
    ]);
    let no_source = len(EID_UIDS, &uid("orphan"));
    let input = user(&[
        &len(USER_EIDS, &late_source),
        &len(USER_EIDS, &odd_uids),
        &len(USER_EIDS, &no_source),
    ]);
    let scan = scan(&input, &SOURCES).unwrap();
    assert_eq!(
        ids(&scan),
        [
            ("t1", 0, ProtoEidLocation::UserEids),
            ("second", 1, ProtoEidLocation::UserEids)
        ]
    );
}

#[test]
fn site_and_app_follow_last_wins_and_oneof_rules() {
    let site = |domain: &str| len(BID_REQUEST_SITE, &len(SITE_DOMAIN, domain.as_bytes()));
    let app = |bundle: &str| len(BID_REQUEST_APP, &len(APP_BUNDLE, bundle.as_bytes()));

    let merged = cat(&[
        &site("a.com"),
        &len(BID_REQUEST_SITE, &len(SITE_PAGE, b"https://a.com/")),
        &site("b.com"),
    ]);
    let s = scan(&merged, &SOURCES).unwrap();
    assert_eq!(
        (s.site_domain, s.site_page, s.app_bundle),
        (Some("b.com"), Some("https://a.com/"), None)
    );

    let site_then_app = cat(&[&site("a.com"), &app("com.example.game")]);
    let s = scan(&site_then_app, &SOURCES).unwrap();
    assert_eq!(
        (s.site_domain, s.app_bundle),
        (None, Some("com.example.game"))
    );

    let app_then_site = cat(&[&app("com.example.game"), &site("c.com")]);
    let s = scan(&app_then_site, &SOURCES).unwrap();
    assert_eq!((s.site_domain, s.app_bundle), (Some("c.com"), None));

    let site_then_dooh = cat(&[
        &site("a.com"),
        &len(BID_REQUEST_DOOH, &len(6, b"screen.example")),
    ]);
    let s = scan(&site_then_dooh, &SOURCES).unwrap();
    assert_eq!((s.site_domain, s.app_bundle), (None, None));
}

#[test]
fn malformed_framing_is_an_error() {
    let cases: Vec<(Vec<u8>, ProtoError)> = vec![
        (vec![0x0a, 0x05, b'a'], ProtoError::Truncated), // LEN past the end
        (
            vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f],
            ProtoError::Truncated,
        ), // huge length
        (vec![0x09, 1, 2, 3], ProtoError::Truncated),    // fixed64 cut short
        (vec![0x0d, 1, 2], ProtoError::Truncated),       // fixed32 cut short
        (vec![0x08], ProtoError::Truncated),             // varint value missing
        (vec![0x08, 0x80], ProtoError::Truncated),
        (vec![0x0e], ProtoError::BadWireType),
        (vec![0x0f], ProtoError::BadWireType),
        (vec![0x00, 0x00], ProtoError::InvalidFieldNumber),
        (vec![0x02, 0x00], ProtoError::InvalidFieldNumber),
        (
            vec![0x80, 0x80, 0x80, 0x80, 0x10],
            ProtoError::InvalidFieldNumber,
        ), // key above u32
        (vec![0x80; 11], ProtoError::BadVarint),
        (vec![0x0c], ProtoError::UnmatchedGroup), // end group without start
        (varint(BID_REQUEST_USER, 1), ProtoError::UnexpectedWireType),
        (varint(BID_REQUEST_SITE, 1), ProtoError::UnexpectedWireType),
        (
            user(&[&varint(USER_EIDS, 1)]),
            ProtoError::UnexpectedWireType,
        ),
        (
            user(&[&len(USER_EIDS, &varint(EID_SOURCE, 1))]),
            ProtoError::UnexpectedWireType,
        ),
        (user(&[&[0x5a, 0x05, 0x0a]]), ProtoError::Truncated), // eids LEN past the end of user
        (
            user(&[&len(USER_EIDS, &[0x12, 0x03, 0x0a, 0x09])]),
            ProtoError::Truncated,
        ),
    ];
    for (bytes, expected) in cases {
        assert_eq!(scan(&bytes, &SOURCES), Err(expected), "{bytes:02x?}");
    }
}

#[test]
fn groups_are_skipped_or_rejected() {
    let start = |n| key(n, WIRE_START_GROUP);
    let end = |n| key(n, WIRE_END_GROUP);
    // A group holding every wire type and a nested group, at top level and inside an eid.
    let group = cat(&[
        &start(40),
        &varint(1, 5),
        &len(2, b"x"),
        &key(3, WIRE_FIXED32),
        &[0; 4],
        &key(4, WIRE_FIXED64),
        &[0; 8],
        &start(41),
        &end(41),
        &end(40),
    ]);
    let input = cat(&[
        &group,
        &user(&[&len(
            USER_EIDS,
            &cat(&[&group, &eid("uidapi.com", &["tok"])]),
        )]),
        &group,
    ]);
    assert_eq!(scan(&input, &SOURCES).unwrap().tokens.len(), 1);

    let mismatched = cat(&[&start(40), &end(41)]);
    assert_eq!(scan(&mismatched, &SOURCES), Err(ProtoError::UnmatchedGroup));
    let unterminated = cat(&[&start(40), &varint(1, 1)]);
    assert_eq!(scan(&unterminated, &SOURCES), Err(ProtoError::Truncated));
    // A group may not run past the end of the message it started in.
    let escaping = cat(&[&user(&[&start(40)]), &end(40)]);
    assert_eq!(scan(&escaping, &SOURCES), Err(ProtoError::Truncated));
    let bad_inside = cat(&[&start(40), &[0x0f], &end(40)]);
    assert_eq!(scan(&bad_inside, &SOURCES), Err(ProtoError::BadWireType));

    let nested = |levels: usize| {
        let mut out = Vec::new();
        for _ in 0..levels {
            out.extend(start(40));
        }
        for _ in 0..levels {
            out.extend(end(40));
        }
        out
    };
    assert!(scan(&nested(MAX_DEPTH), &SOURCES).is_ok());
    assert_eq!(
        scan(&nested(MAX_DEPTH + 1), &SOURCES),
        Err(ProtoError::TooDeep)
    );
    assert_eq!(
        scan(&user(&[&nested(MAX_DEPTH)]), &SOURCES),
        Err(ProtoError::TooDeep)
    );
    assert_eq!(scan(&nested(10_000), &SOURCES), Err(ProtoError::TooDeep));
}

#[test]
fn utf8_is_checked_only_where_read() {
    let bad = [b'A', 0xff, 0xfe];
    let bad_token = user(&[&len(
        USER_EIDS,
        &cat(&[
            &len(EID_SOURCE, b"uidapi.com"),
            &len(EID_UIDS, &len(UID_ID, &bad)),
        ]),
    )]);
    assert_eq!(scan(&bad_token, &SOURCES), Err(ProtoError::InvalidUtf8));
    let bad_source = user(&[&len(USER_EIDS, &len(EID_SOURCE, &bad))]);
    assert_eq!(scan(&bad_source, &SOURCES), Err(ProtoError::InvalidUtf8));
    let bad_domain = len(BID_REQUEST_SITE, &len(SITE_DOMAIN, &bad));
    assert_eq!(scan(&bad_domain, &SOURCES), Err(ProtoError::InvalidUtf8));
    // Text that is UTF-8 but not ASCII takes std's validation, and is read as it is.
    let unicode_domain = len(BID_REQUEST_SITE, &len(SITE_DOMAIN, "bücher.de".as_bytes()));
    assert_eq!(
        scan(&unicode_domain, &SOURCES).map(|s| s.site_domain),
        Ok(Some("bücher.de"))
    );

    // Not read: another source's uid, user.id, site.name, an unknown top-level field.
    let other_source = cat(&[
        &len(EID_SOURCE, b"adserver.org"),
        &len(EID_UIDS, &len(UID_ID, &bad)),
    ]);
    let fine = cat(&[
        &user(&[&len(1, &bad), &len(USER_EIDS, &other_source)]),
        &len(BID_REQUEST_SITE, &len(2, &bad)),
        &len(500, &bad),
    ]);
    assert!(scan(&fine, &SOURCES).unwrap().tokens.is_empty());
}

#[test]
fn append_keeps_the_input_as_prefix_and_adds_one_user_fragment() {
    let input = request();
    let s = scan(&input, &SOURCES).unwrap();
    let e = enrichment("success");
    let out = append_enrichment(&input, &s, &e);
    assert!(out.starts_with(&input));
    let fragment = &out[input.len()..];
    assert_eq!(
        fragment,
        user(&[&len(USER_UID2_ENRICHMENT, &e.encode_to_vec())])
    );
    // The output scans to the same tokens and knows about its enrichment.
    let again = scan(&out, &SOURCES).unwrap();
    assert_eq!(again.tokens, s.tokens);
    assert!(again.has_enrichment());
}

#[test]
fn append_is_idempotent_and_replaces_earlier_results() {
    let input = request();
    let once = append_enrichment(
        &input,
        &scan(&input, &SOURCES).unwrap(),
        &enrichment("success"),
    );
    let twice = append_enrichment(
        &once,
        &scan(&once, &SOURCES).unwrap(),
        &enrichment("success"),
    );
    assert_eq!(once, twice);

    let replaced = append_enrichment(
        &once,
        &scan(&once, &SOURCES).unwrap(),
        &enrichment("expired_token"),
    );
    let expected = append_enrichment(
        &input,
        &scan(&input, &SOURCES).unwrap(),
        &enrichment("expired_token"),
    );
    assert_eq!(replaced, expected);
}

#[test]
fn field_9002_inside_other_user_records_is_cut_out() {
    // A forged result mixed into the request's own user record, with an over-long length prefix, plus
    // a stray non-LEN field 9002 and two fragments of our own.
    let forged = len(
        USER_UID2_ENRICHMENT,
        &pb::Uid2Enrichment {
            raw_uid2: Some("forged".into()),
            ..Default::default()
        }
        .encode_to_vec(),
    );
    let user_payload = cat(&[
        &len(1, b"u"),
        &forged,
        &len(USER_EIDS, &eid("uidapi.com", &["tok"])),
        &varint(USER_UID2_ENRICHMENT, 1),
    ]);
    let mut user_record = key(BID_REQUEST_USER, WIRE_LEN);
    user_record.extend([0x80 | user_payload.len() as u8, 0x00]); // over-long 2-byte length
    user_record.extend(&user_payload);
    let ours = user(&[&len(
        USER_UID2_ENRICHMENT,
        &enrichment("success").encode_to_vec(),
    )]);
    let input = cat(&[&len(1, b"req"), &ours, &user_record, &varint(500, 1), &ours]);

    let s = scan(&input, &SOURCES).unwrap();
    assert_eq!(ids(&s), [("tok", 0, ProtoEidLocation::UserEids)]);
    let out = append_enrichment(&input, &s, &enrichment("no_token"));
    let expected = cat(&[
        &len(1, b"req"),
        &user(&[&len(1, b"u"), &len(USER_EIDS, &eid("uidapi.com", &["tok"]))]),
        &varint(500, 1),
        &user(&[&len(
            USER_UID2_ENRICHMENT,
            &enrichment("no_token").encode_to_vec(),
        )]),
    ]);
    assert_eq!(out, expected);
    let again = scan(&out, &SOURCES).unwrap();
    assert_eq!(
        append_enrichment(&out, &again, &enrichment("no_token")),
        out
    );
}

#[test]
fn a_scan_of_other_bytes_only_appends() {
    let enriched = append_enrichment(&request(), &ProtoScan::default(), &enrichment("success"));
    let s = scan(&enriched, &SOURCES).unwrap();
    let other = request();
    let out = append_enrichment(&other, &s, &enrichment("success"));
    assert_eq!(out, enriched); // strips ignored: lengths differ
}

#[test]
fn deep_nesting_in_fields_not_walked_costs_no_stack() {
    let mut nested = b"leaf".to_vec();
    for _ in 0..10_000 {
        nested = len(1, &nested);
    }
    let input = cat(&[
        &len(500, &nested),
        &user(&[
            &len(99, &nested),
            &len(USER_EIDS, &eid("uidapi.com", &["t"])),
        ]),
    ]);
    assert_eq!(scan(&input, &SOURCES).unwrap().tokens.len(), 1);
}

#[test]
fn reasons_are_short_distinct_snake_case() {
    let all = [
        ProtoError::Truncated,
        ProtoError::BadVarint,
        ProtoError::BadWireType,
        ProtoError::InvalidFieldNumber,
        ProtoError::UnexpectedWireType,
        ProtoError::UnmatchedGroup,
        ProtoError::InvalidUtf8,
        ProtoError::TooDeep,
    ];
    let reasons: std::collections::HashSet<_> = all.iter().map(ProtoError::reason).collect();
    assert_eq!(reasons.len(), all.len());
    assert!(reasons.iter().all(|r| {
        r.len() < 32
            && r.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    }));
    assert_eq!(ProtoError::Truncated.reason(), "truncated_protobuf");
    assert!(!ProtoError::TooDeep.to_string().is_empty());
}

/// `next_field` without its fast path: the general tag, value and group handling.
fn reference_next_field(cur: &mut Cursor<'_>, depth: usize) -> Result<Option<Field>, ProtoError> {
    if cur.pos >= cur.end {
        return Ok(None);
    }
    let start = cur.pos;
    let (number, wire_type) = cur.key()?;
    let value_start = cur.pos;
    let payload = match wire_type {
        WIRE_START_GROUP => {
            cur.skip_group(number, depth)?;
            cur.pos..cur.pos
        }
        WIRE_END_GROUP => return Err(ProtoError::UnmatchedGroup),
        _ => cur.skip_value(wire_type)?,
    };
    Ok(Some(Field {
        number,
        wire_type,
        start,
        value_start,
        payload,
        end: cur.pos,
    }))
}

/// Eids that are mostly of the compact layout, with every byte open to mutation: a source from
/// `SOURCES` or another, uids with ids of 0–140 bytes (two-byte lengths past 127) and maybe an atype.
fn eid_bytes() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
    use proptest::prelude::*;
    let source = prop_oneof![
        Just(b"uidapi.com".to_vec()),
        Just(b"euid.eu".to_vec()),
        Just(b"id5-sync.com".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..12),
    ];
    let id_len = prop_oneof![Just(0usize), 1usize..8, 120usize..136];
    let uid = (
        id_len.prop_flat_map(|n| {
            proptest::collection::vec(prop_oneof![8 => 0x21u8..0x7f, 1 => any::<u8>()], n)
        }),
        proptest::option::of(any::<u8>()),
    )
        .prop_map(|(id, atype)| {
            let mut out = len(UID_ID, &id);
            if let Some(a) = atype {
                out.extend(varint(2, u64::from(a)));
            }
            out
        });
    (
        source,
        proptest::collection::vec(uid, 0..4),
        proptest::collection::vec(
            (
                any::<proptest::sample::Index>(),
                // Tags of the eid's fields and their neighbours, length edges, and any byte.
                prop_oneof![
                    proptest::sample::select(vec![
                        0x00, 0x02, 0x08, 0x0a, 0x10, 0x12, 0x18, 0x1a, 0x7f, 0x80, 0xff
                    ]),
                    any::<u8>(),
                ],
            ),
            0..3,
        ),
        any::<bool>(),
    )
        .prop_map(|(source, uids, mutations, uids_first)| {
            let uids: Vec<u8> = uids.iter().flat_map(|u| len(EID_UIDS, u)).collect();
            let source = len(EID_SOURCE, &source);
            let mut eid = if uids_first {
                cat(&[&uids, &source])
            } else {
                cat(&[&source, &uids])
            };
            for (at, byte) in mutations {
                if !eid.is_empty() {
                    let i = at.index(eid.len());
                    eid[i] = byte;
                }
            }
            eid
        })
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4096))]
    /// Whatever the compact reader accepts, the general walk reads without error and with the same
    /// tokens; what it refuses, it leaves untouched.
    #[test]
    fn compact_eid_agrees_with_the_general_walk(eid in eid_bytes(), depth in 2usize..4) {
        let mut fast = vec![ProtoToken { id: "before", source_index: 9, location: ProtoEidLocation::UserEids }];
        let mut general = fast.clone();
        let range = 0..eid.len();
        let location = ProtoEidLocation::UserExtEids;
        if compact_eid(&eid, range.clone(), &SOURCES, location, &mut fast) {
            proptest::prop_assert_eq!(
                read_eid_fields(&eid, range, depth, &SOURCES, location, &mut general),
                Ok(())
            );
            proptest::prop_assert_eq!(fast, general);
        } else {
            proptest::prop_assert_eq!(fast.len(), 1);
        }
    }
    /// The fast paths (one-byte varints, one-byte tag and length) read every field exactly as the
    /// general path does, on bytes biased towards short tags and lengths, inside a message that ends
    /// before the buffer does.
    #[test]
    fn fast_paths_read_fields_like_the_general_path(
        bytes in proptest::collection::vec(proptest::prop_oneof![
            3 => 0u8..0x80, 1 => proptest::prelude::any::<u8>(), 1 => proptest::sample::select(vec![0x0a, 0x12, 0x1a, 0x5a, 0x08, 0x0b, 0x0c])
        ], 0..64),
        cut in 0usize..8,
    ) {
        let end = bytes.len().saturating_sub(cut);
        let mut fast = Cursor::new(&bytes, 0..end);
        let mut general = Cursor::new(&bytes, 0..end);
        for _ in 0..=bytes.len() {
            let a = fast.next_field(1);
            let b = reference_next_field(&mut general, 1);
            proptest::prop_assert_eq!(&a, &b);
            proptest::prop_assert_eq!(fast.pos, general.pos);
            if !matches!(a, Ok(Some(_))) {
                break;
            }
        }
        let mut fast = Cursor::new(&bytes, 0..end);
        let mut general = Cursor::new(&bytes, 0..end);
        proptest::prop_assert_eq!(fast.varint(), general.varint_slow());
        proptest::prop_assert_eq!(fast.pos, general.pos);
    }
}

#[test]
fn first_len_field_takes_the_first_occurrence_of_a_valid_message() {
    let message = cat(&[
        &varint(7, 2),
        &len(1, b"first"),
        &len(3, b"site"),
        &len(1, b"second"),
    ]);
    assert_eq!(first_len_field(&message, 1), Ok(Some(&b"first"[..])));
    assert_eq!(first_len_field(&message, 3), Ok(Some(&b"site"[..])));
    assert_eq!(first_len_field(&message, 5), Ok(None));
    // Field 7 is there, but as a varint.
    assert_eq!(first_len_field(&message, 7), Ok(None));
    // A message that does not walk to its end has no id, even when field 1 came first.
    let truncated = &message[..message.len() - 2];
    assert_eq!(first_len_field(truncated, 1), Err(ProtoError::Truncated));
    assert!(first_len_field(b"\xff\xfe\x00garbage", 1).is_err());
}
