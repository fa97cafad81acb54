//! Tests of the JSON scanner and splice: fixtures, edge cases, and generated and mutated requests checked
//! against serde_json's reading of them; the lexer's and the skipper's fast versions checked against
//! byte-at-a-time references.

use super::lex::{quote_and_backslash_16, quote_and_backslash_16_swar};
use super::skip::{BaselineClassifier, BlockMasks, prefix_xor, prefix_xor_shifts, skip_blocks};
#[cfg(target_arch = "x86_64")]
use super::skip::{Classifier, avx2};
use super::user::{compact_eid, parse_eid};
use super::*;
use proptest::prelude::*;
use serde_json::Value;

const SOURCES: &[&str] = &["uidapi.com", "euid.eu"];
const M: &str = "uid2_enrichment";
const J: &str = r#"{"status":"success","raw_uid2":"ywsvDO4i2mFAD5Y0Uc5+FTWAfTdhgFIijeNrS3fZ7q0=","source":"uidapi.com","tokens":1}"#;

const UID2_V4: &str = "A4AAAABlh75XmviGJi-hkLGs96duivRhMd3a3pe7yTIwbAHudfB9wFTj2FtJTdMW5TXXd1KAb-Z3ekQ_KImZ5Mi7xP75jRNeD6Mt6opWwXCCpQxYejP0R6WnCGnWawx9rLu59LsHv6YEA_ARNIUUl9koobfA9pLmnxE3dRedDgCKm4xHXYk01Fr8rOts6iJj2AhYISR3XkyBpqzT-vqBjsHH0g";
const UID2_V2: &str = "AgAAAANzUr8B2jxfBN7c3vm2QVIPMQ2sEVjtrsp3kT/1Kq2A+XzK+3s5yJtHWbaK9fMZVwUvQgD0kBLDw1CN0M9rLx1uvXeqVmW5o8H2l6l5Hqrq1TvljtRQRrpCbQ4DQh8oa3f6p0Twf3QnYb7Q==";
const EUID_V4: &str = "E4AAAAF2yK1z0mQnJ4hP8Vd3cXeWb7sTgR5uA9oLkYiN6jHf2ZqC1vBxD0aEr3tUw8sGy5nMp7kQ4lFj9hOcI2dTzV6bX1eR8gWmA3uKoN5sLyP0iJqH7fC4vDtB9xZrE2wQ6nM1aS8kUgT3lYoF5jVpX0cRbI7hW4eN9dKzL2mA";

fn fixture(name: &str) -> String {
    let raw = match name {
        "iab26-video.json" => include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/openrtb/iab26-video.json"
        )),
        "iab26-simple-banner.json" => {
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/openrtb/iab26-simple-banner.json"
            ))
        }
        "iab26-mobile-app.json" => {
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/openrtb/iab26-mobile-app.json"
            ))
        }
        "prebid-server-25.json" => {
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/openrtb/prebid-server-25.json"
            ))
        }
        "both-locations.json" => {
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/openrtb/both-locations.json"
            ))
        }
        "pretty-odd-whitespace.json" => {
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/openrtb/pretty-odd-whitespace.json"
            ))
        }
        "unicode-numbers.json" => {
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/openrtb/unicode-numbers.json"
            ))
        }
        "user-ext-many.json" => include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/openrtb/user-ext-many.json"
        )),
        "euid.json" => include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/openrtb/euid.json"
        )),
        "no-token.json" => include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/openrtb/no-token.json"
        )),
        "no-user.json" => include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/openrtb/no-user.json"
        )),
        other => panic!("unknown fixture {other}"),
    };
    raw.replace("@@UID2_V4@@", UID2_V4)
        .replace("@@UID2_V2@@", UID2_V2)
        .replace("@@EUID_V4@@", EUID_V4)
}

const FIXTURES: &[&str] = &[
    "iab26-video.json",
    "iab26-simple-banner.json",
    "iab26-mobile-app.json",
    "prebid-server-25.json",
    "both-locations.json",
    "pretty-odd-whitespace.json",
    "unicode-numbers.json",
    "user-ext-many.json",
    "euid.json",
    "no-token.json",
    "no-user.json",
];

type Tok = (String, usize, EidLocation);
use EidLocation::{UserEids, UserExtEids};

fn scan_ok(input: &str) -> Scan<'_> {
    scan(input.as_bytes(), SOURCES, M).unwrap_or_else(|e| panic!("scan failed: {e}\n{input}"))
}

fn toks(s: &Scan<'_>) -> Vec<Tok> {
    s.tokens
        .iter()
        .map(|t| (t.id.to_string(), t.source_index, t.location))
        .collect()
}

fn tok(id: &str, source_index: usize, location: EidLocation) -> Tok {
    (id.to_string(), source_index, location)
}

fn enrich(input: &str) -> Option<String> {
    let s = scan_ok(input);
    splice(input.as_bytes(), &s, M, J).map(|v| String::from_utf8(v).expect("utf-8 output"))
}

fn err(input: &[u8]) -> JsonError {
    match scan(input, SOURCES, M) {
        Ok(s) => panic!("expected an error, got {s:?}"),
        Err(e) => e,
    }
}

/// The contract's token list, computed the slow way from a serde_json DOM (last duplicate key wins there too).
fn reference_tokens(v: &Value) -> Vec<Tok> {
    let mut out = Vec::new();
    let Some(user) = v.get("user").and_then(Value::as_object) else {
        return out;
    };
    let ext_eids = user
        .get("ext")
        .and_then(Value::as_object)
        .and_then(|e| e.get("eids"));
    for (location, eids) in [(UserEids, user.get("eids")), (UserExtEids, ext_eids)] {
        for eid in eids.and_then(Value::as_array).into_iter().flatten() {
            let Some(src) = eid.get("source").and_then(Value::as_str) else {
                continue;
            };
            let Some(idx) = SOURCES.iter().position(|s| *s == src) else {
                continue;
            };
            for uid in eid
                .get("uids")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(id) = uid.get("id").and_then(Value::as_str) {
                    out.push(tok(id, idx, location));
                }
            }
        }
    }
    out
}

fn reference_str(v: &Value, obj: &str, key: &str) -> Option<String> {
    v.get(obj)?
        .as_object()?
        .get(key)?
        .as_str()
        .map(str::to_string)
}

/// Checks an enriched output against its input through serde_json: the member is there with the right
/// value, and putting back what was there before gives the input's DOM.
fn check_enriched(input: &str, out: &str) {
    let vin: Value = serde_json::from_str(input).expect("input parses");
    let mut vout: Value = serde_json::from_str(out).expect("output parses");
    let member: Value = serde_json::from_str(J).expect("member parses");
    let uin = vin["user"].as_object().expect("input has a user object");
    let uout = vout["user"]
        .as_object_mut()
        .expect("output has a user object");
    let ext = uout["ext"]
        .as_object_mut()
        .expect("output user.ext is an object");
    assert_eq!(ext.get(M), Some(&member), "user.ext.{M} in {out}");
    match uin.get("ext") {
        None => {
            assert_eq!(ext.len(), 1);
            uout.remove("ext");
        }
        Some(Value::Null) => {
            assert_eq!(ext.len(), 1);
            uout.insert("ext".into(), Value::Null);
        }
        Some(old_ext) => match old_ext.get(M) {
            Some(old) => {
                ext.insert(M.into(), old.clone());
            }
            None => {
                ext.remove(M);
            }
        },
    }
    assert_eq!(vin, vout, "only the member changed");
}

/// What `splice` should have inserted for an insertion target, written out independently.
fn expected_insert(comma: bool, wrap_in_ext: bool) -> String {
    let member = format!("\"{M}\":{J}");
    let body = if wrap_in_ext {
        format!("\"ext\":{{{member}}}")
    } else {
        member
    };
    if comma { format!(",{body}") } else { body }
}

/// Removing what the splice added (or putting back what it replaced) gives the input byte for byte.
fn check_removal(input: &str, s: &Scan<'_>, out: &str) {
    match s.target {
        Target::Insert {
            at,
            comma,
            wrap_in_ext,
        } => {
            let ins = expected_insert(comma, wrap_in_ext);
            assert_eq!(&out[at..at + ins.len()], ins);
            let back = format!("{}{}", &out[..at], &out[at + ins.len()..]);
            assert_eq!(back, input);
        }
        Target::Replace {
            start,
            end,
            wrap_in_object,
        } => {
            let new = if wrap_in_object {
                format!("{{\"{M}\":{J}}}")
            } else {
                J.to_string()
            };
            assert_eq!(&out[start..start + new.len()], new);
            let back = format!(
                "{}{}{}",
                &out[..start],
                &input[start..end],
                &out[start + new.len()..]
            );
            assert_eq!(back, input);
        }
        Target::NoUser | Target::ExtUnusable => panic!("no splice expected"),
    }
}

/// Every property at once for an input that can carry the member.
fn check_all(input: &str) -> String {
    let s = scan_ok(input);
    let out = String::from_utf8(splice(input.as_bytes(), &s, M, J).expect("splice")).unwrap();
    check_removal(input, &s, &out);
    check_enriched(input, &out);
    let s2 = scan_ok(&out);
    assert_eq!(toks(&s2), toks(&s), "enriching does not change the tokens");
    assert!(s2.has_member());
    let twice = String::from_utf8(splice(out.as_bytes(), &s2, M, J).unwrap()).unwrap();
    assert_eq!(twice, out, "enriching twice == once");
    // `Scan` holds a `SmallVec`, whose drop (unlike `Vec`'s) may not outlive the input it borrows.
    drop(s2);
    out
}

/// `user.eids` tokens come first even when `ext` precedes `eids` in the user object.
#[test]
fn tokens_in_both_locations_user_eids_first() {
    let input = r#"{"user":{"ext":{"eids":[{"source":"uidapi.com","uids":[{"id":"B"}]}]},"eids":[{"source":"euid.eu","uids":[{"id":"A"},{"id":"A2"}]}]}}"#;
    let s = scan_ok(input);
    assert_eq!(
        toks(&s),
        vec![
            tok("A", 1, UserEids),
            tok("A2", 1, UserEids),
            tok("B", 0, UserExtEids)
        ]
    );
    check_all(input);
}

/// The same token repeated (in one array and across both arrays) is one entry per occurrence.
#[test]
fn duplicate_tokens_are_separate_entries() {
    let input = r#"{"user":{"eids":[{"source":"uidapi.com","uids":[{"id":"T"},{"id":"T"}]},{"source":"uidapi.com","uids":[{"id":"T"}]}],"ext":{"eids":[{"source":"uidapi.com","uids":[{"id":"T"}]}]}}}"#;
    let s = scan_ok(input);
    assert_eq!(
        toks(&s),
        vec![
            tok("T", 0, UserEids),
            tok("T", 0, UserEids),
            tok("T", 0, UserEids),
            tok("T", 0, UserExtEids)
        ]
    );
}

/// Ids are unescaped (`\/` → `/`); ids without escapes are borrowed, not allocated.
#[test]
fn escaped_slash_in_id_is_unescaped_plain_id_is_borrowed() {
    let input = r#"{"user":{"eids":[{"source":"uidapi.com","uids":[{"id":"AgAA\/x+y=="},{"id":"A4AA-_z"}]}]}}"#;
    let s = scan_ok(input);
    assert_eq!(s.tokens[0].id, "AgAA/x+y==");
    assert!(matches!(s.tokens[0].id, Cow::Owned(_)));
    assert_eq!(s.tokens[1].id, "A4AA-_z");
    assert!(matches!(s.tokens[1].id, Cow::Borrowed(_)));
}

/// Only configured sources count; the comparison is exact after unescaping.
#[test]
fn non_configured_sources_are_ignored() {
    let input = r#"{"user":{"eids":[
            {"source":"adserver.org","uids":[{"id":"tdid","atype":1,"ext":{"rtiPartner":"TDID"}}]},
            {"source":"UIDAPI.COM","uids":[{"id":"upper"}]},
            {"source":"uidapi.com ","uids":[{"id":"space"}]},
            {"source":"uidapi.co\u006d","uids":[{"id":"escaped-source"}]},
            {"source":"id5-sync.com","uids":[{"id":"id5"}]}]}}"#;
    assert_eq!(
        toks(&scan_ok(input)),
        vec![tok("escaped-source", 0, UserEids)]
    );
    assert!(scan_ok(input).has_user());
    assert!(
        scan(
            br#"{"user":{"eids":[{"source":"uidapi.com","uids":[{"id":"x"}]}]}}"#,
            &[],
            M
        )
        .unwrap()
        .tokens
        .is_empty()
    );
}

/// Type drift and garbage inside eids never fail the request: the odd entries are skipped.
#[test]
fn type_drift_is_tolerated() {
    let input = r#"{"user":{"eids":[1,"x",null,[],{},{"source":"uidapi.com"},
            {"source":"uidapi.com","uids":"nope"},{"source":"uidapi.com","uids":{"id":"obj"}},
            {"source":"uidapi.com","mm":"3","inserter":"pub.example","matcher":"uidapi.com","ext":{"a":[1]},
             "uids":[1,null,"s",[],{"id":7},{"id":null},{"id":{"x":"y"}},{"atype":"3"},
                     {"atype":"3","id":"T1","rtiPartner":"UID2","ext":{"rtiPartner":"UID2"}}]},
            {"source":7,"uids":[{"id":"bad-source-type"}]},{"source":null,"uids":[{"id":"null-source"}]}],
            "ext":{"eids":{"source":"uidapi.com"}}}}"#;
    let s = scan_ok(input);
    assert_eq!(toks(&s), vec![tok("T1", 0, UserEids)]);
    let v: Value = serde_json::from_str(input).unwrap();
    assert_eq!(toks(&s), reference_tokens(&v));
    check_all(input);
}

/// `uids` before `source` in an eid still yields the ids.
#[test]
fn uids_before_source() {
    let input = r#"{"user":{"eids":[{"uids":[{"id":"first"}],"atype":3,"source":"euid.eu"}]}}"#;
    assert_eq!(toks(&scan_ok(input)), vec![tok("first", 1, UserEids)]);
}

/// Tabs, CRLF and spaces before colons are read, and the member lands right after the last value.
#[test]
fn pretty_printed_odd_whitespace() {
    let input = "{\r\n\t\"user\" :\r\n\t{\r\n\t\t\"eids\" : [ { \"source\" : \"uidapi.com\" , \"uids\" : [ { \"id\" : \"T\" } ] } ] ,\r\n\t\t\"ext\"\t:\t{ \"gdpr\" : 1 }\t\r\n\t} , \"site\" : { \"domain\" :\t\"a.example\" }\r\n}\r\n";
    let s = scan_ok(input);
    assert_eq!(toks(&s), vec![tok("T", 0, UserEids)]);
    assert_eq!(s.domain_fields().site_domain.as_deref(), Some("a.example"));
    let out = check_all(input);
    assert_eq!(
        out,
        input.replace("\"gdpr\" : 1", &format!("\"gdpr\" : 1,\"{M}\":{J}"))
    );
}

/// An existing `user.ext` with many members gets the member after its last value, before the whitespace.
#[test]
fn splice_into_ext_with_many_members() {
    let input = r#"{"user":{"id":"u","ext":{"consent":"CPX","prebid":{"buyeruids":{"a":"1"}},"data":[1,2.50,"x"],"eids":[]}  },"at":1}"#;
    let out = check_all(input);
    assert_eq!(
        out,
        format!(
            r#"{{"user":{{"id":"u","ext":{{"consent":"CPX","prebid":{{"buyeruids":{{"a":"1"}}}},"data":[1,2.50,"x"],"eids":[],"{M}":{J}}}  }},"at":1}}"#
        )
    );
}

/// An empty ext (with or without whitespace inside) gets the member right after `{`, with no comma.
#[test]
fn splice_into_empty_ext() {
    assert_eq!(
        enrich(r#"{"user":{"ext":{}}}"#).unwrap(),
        format!(r#"{{"user":{{"ext":{{"{M}":{J}}}}}}}"#)
    );
    assert_eq!(
        enrich("{\"user\":{\"ext\":{ \n }}}").unwrap(),
        format!("{{\"user\":{{\"ext\":{{\"{M}\":{J} \n }}}}}}")
    );
    check_all(r#"{"user":{"ext":{}}}"#);
    check_all("{\"user\":{\"ext\":{ \r\n\t }}}");
}

/// `"ext": null` becomes `{"member": …}`; nothing else moves.
#[test]
fn splice_into_null_ext() {
    let input = r#"{"user":{"ext": null ,"id":"x"}}"#;
    assert_eq!(
        enrich(input).unwrap(),
        format!(r#"{{"user":{{"ext": {{"{M}":{J}}} ,"id":"x"}}}}"#)
    );
    check_all(input);
}

/// An ext that is neither object nor null cannot carry the member: splice gives None.
#[test]
fn splice_into_non_object_ext_is_none() {
    for ext in [r#""str""#, "42", "[]", "true", r#"[{"a":1}]"#] {
        let input = format!(
            r#"{{"user":{{"eids":[{{"source":"uidapi.com","uids":[{{"id":"T"}}]}}],"ext":{ext}}}}}"#
        );
        let s = scan_ok(&input);
        assert_eq!(toks(&s), vec![tok("T", 0, UserEids)], "{input}");
        assert!(s.has_user() && !s.can_splice());
        assert_eq!(splice(input.as_bytes(), &s, M, J), None);
    }
}

/// No `user`, or a `user` that is not an object: no splice, no tokens.
#[test]
fn no_user_or_non_object_user() {
    for input in [
        r#"{"id":"1","imp":[{"id":"1"}]}"#,
        r#"{}"#,
        r#"{"user":null}"#,
        r#"{"user":"u"}"#,
        r#"{"user":[{"eids":[{"source":"uidapi.com","uids":[{"id":"T"}]}]}]}"#,
        r#"{"site":{"user":{"eids":[{"source":"uidapi.com","uids":[{"id":"nested"}]}]}}}"#,
    ] {
        let s = scan_ok(input);
        assert!(s.tokens.is_empty(), "{input}");
        assert!(!s.has_user() && !s.can_splice());
        assert_eq!(splice(input.as_bytes(), &s, M, J), None);
    }
}

/// A user without ext gets `"ext":{…}` after its last member, or right after `{` when empty.
#[test]
fn splice_creates_ext() {
    assert_eq!(
        enrich(r#"{"user":{"id":"x" } }"#).unwrap(),
        format!(r#"{{"user":{{"id":"x","ext":{{"{M}":{J}}} }} }}"#)
    );
    assert_eq!(
        enrich(r#"{"user":{}}"#).unwrap(),
        format!(r#"{{"user":{{"ext":{{"{M}":{J}}}}}}}"#)
    );
    assert_eq!(
        enrich("{\"user\":{\n}}").unwrap(),
        format!("{{\"user\":{{\"ext\":{{\"{M}\":{J}}}\n}}}}")
    );
    check_all(r#"{"user":{"id":"x" } }"#);
    check_all(r#"{"user":{}}"#);
}

/// An existing member's value is replaced (the last one if duplicated); enriching twice equals once.
#[test]
fn existing_member_is_replaced() {
    let input = format!(r#"{{"user":{{"ext":{{"{M}":{{"status":"old"}} ,"x":1}}}}}}"#);
    let s = scan_ok(&input);
    assert!(s.has_member());
    assert_eq!(
        enrich(&input).unwrap(),
        format!(r#"{{"user":{{"ext":{{"{M}":{J} ,"x":1}}}}}}"#)
    );
    let dup = format!(r#"{{"user":{{"ext":{{"{M}":1,"x":2,"{M}":"last"}}}}}}"#);
    assert_eq!(
        enrich(&dup).unwrap(),
        format!(r#"{{"user":{{"ext":{{"{M}":1,"x":2,"{M}":{J}}}}}}}"#)
    );
    check_all(&input);
    check_all(&dup);
}

/// Duplicate keys: the last `user`, `ext`, `eids`, `source` and `id` win, as in serde_json.
#[test]
fn duplicate_keys_last_wins() {
    let eid = |id: &str| format!(r#"{{"source":"uidapi.com","uids":[{{"id":"{id}"}}]}}"#);
    let cases = [
        (
            format!(r#"{{"user":{{"eids":[{}]}},"id":"1","user":{{"eids":[{}]}}}}"#, eid("A"), eid("B")),
            vec![tok("B", 0, UserEids)],
        ),
        (
            format!(
                r#"{{"user":{{"ext":{{"eids":[{}]}},"id":"u","ext":{{"eids":[{}],"k":1}}}}}}"#,
                eid("A"),
                eid("B")
            ),
            vec![tok("B", 0, UserExtEids)],
        ),
        (
            format!(r#"{{"user":{{"eids":[{}],"eids":[{}]}}}}"#, eid("A"), eid("B")),
            vec![tok("B", 0, UserEids)],
        ),
        (
            format!(r#"{{"user":{{"eids":[{}],"eids":"gone"}}}}"#, eid("A")),
            vec![],
        ),
        (
            format!(r#"{{"user":{{"ext":{{"eids":[{}]}},"ext":{{"k":1}}}}}}"#, eid("A")),
            vec![],
        ),
        (
            r#"{"user":{"eids":[{"source":"uidapi.com","uids":[{"id":"A"}],"source":"adserver.org"}]}}"#.into(),
            vec![],
        ),
        (
            r#"{"user":{"eids":[{"source":"adserver.org","uids":[{"id":"A"}],"source":"euid.eu"}]}}"#.into(),
            vec![tok("A", 1, UserEids)],
        ),
        (
            r#"{"user":{"eids":[{"source":"uidapi.com","uids":[{"id":"A","id":"B"},{"id":"C","id":5}]}]}}"#.into(),
            vec![tok("B", 0, UserEids)],
        ),
        (
            r#"{"user":{"eids":[{"source":"uidapi.com","uids":[{"id":"A"}],"uids":[{"id":"B"}]}]}}"#.into(),
            vec![tok("B", 0, UserEids)],
        ),
    ];
    for (input, expected) in cases {
        let s = scan_ok(&input);
        assert_eq!(toks(&s), expected, "{input}");
        let v: Value = serde_json::from_str(&input).unwrap();
        assert_eq!(toks(&s), reference_tokens(&v), "{input}");
        check_all(&input);
    }
    // The splice goes into the last ext; an earlier one is left alone.
    let input = r#"{"user":{"ext":{"a":1},"ext":{"b":2}}}"#;
    assert_eq!(
        enrich(input).unwrap(),
        format!(r#"{{"user":{{"ext":{{"a":1}},"ext":{{"b":2,"{M}":{J}}}}}}}"#)
    );
    // A last `null` ext is the one replaced.
    let input = r#"{"user":{"ext":{"a":1},"ext":null}}"#;
    assert_eq!(
        enrich(input).unwrap(),
        format!(r#"{{"user":{{"ext":{{"a":1}},"ext":{{"{M}":{J}}}}}}}"#)
    );
    // A last non-object user hides an earlier one.
    let input = format!(r#"{{"user":{{"eids":[{}]}},"user":null}}"#, eid("A"));
    let s = scan_ok(&input);
    assert!(s.tokens.is_empty() && !s.has_user());
}

/// Keys are compared after unescaping, including the member name.
#[test]
fn escaped_keys_are_unescaped() {
    let input = r#"{"us\u0065r":{"\u0065ids":[{"sour\u0063e":"uidapi.com","uids":[{"\u0069d":"T"}]}],"e\u0078t":{"uid2\u005fenrichment":1}},"\u0073ite":{"dom\u0061in":"d.example"}}"#;
    let s = scan_ok(input);
    assert_eq!(toks(&s), vec![tok("T", 0, UserEids)]);
    assert_eq!(s.domain_fields().site_domain.as_deref(), Some("d.example"));
    assert!(s.has_member());
    assert_eq!(
        enrich(input).unwrap(),
        input.replace(
            r#"\u005fenrichment":1"#,
            &format!(r#"\u005fenrichment":{J}"#)
        )
    );
}

/// `site` and `app` are skipped by the scan: what is malformed only inside them does not stop the
/// request; their members are then read as absent.
#[test]
fn malformed_site_or_app_members_read_as_absent() {
    for input in [
        r#"{"site":{"domain":"\q"},"app":{"bundle":"b"x}}"#,
        r#"{"site":{"domain" "a.example"},"app":{"bundle":,"x":1}}"#,
        r#"{"site":{"page":"https://a.example/","domain":"a.example",},"app":{1:2}}"#,
    ] {
        let s = scan_ok(input);
        assert_eq!(s.domain_fields(), DomainFields::default(), "{input}");
        assert!(validate_strict(input.as_bytes()).is_err(), "{input}");
    }
    // Still checked while skipped: strings terminated, brackets balanced.
    assert_eq!(err(br#"{"site":{"domain":"a}"#), JsonError::Truncated);
    assert!(matches!(
        err(br#"{"site":{"domain":["a"}}"#),
        JsonError::Malformed { .. }
    ));
}

/// `site.domain`, `site.page`, `app.bundle` are read when they are strings, unescaped, last wins.
#[test]
fn site_and_app_fields() {
    let s = scan_ok(
        r#"{"site":{"domain":"old.example"},"site":{"page":"https:\/\/www.caf\u00e9.fr\/x","domain":"www.example.com","publisher":{"domain":"pub.example"}},"app":{"bundle":"com.example.app","storeurl":"x"}}"#,
    );
    assert_eq!(
        s.domain_fields().site_domain.as_deref(),
        Some("www.example.com")
    );
    assert_eq!(
        s.domain_fields().site_page.as_deref(),
        Some("https://www.café.fr/x")
    );
    assert_eq!(
        s.domain_fields().app_bundle.as_deref(),
        Some("com.example.app")
    );
    let s = scan_ok(r#"{"site":{"domain":5,"page":null},"app":"x"}"#);
    assert_eq!(
        (
            s.domain_fields().site_domain.as_deref(),
            s.domain_fields().site_page.as_deref(),
            s.domain_fields().app_bundle.as_deref()
        ),
        (None, None, None)
    );
    let s = scan_ok(r#"{"site":{"domain":"a.example","domain":["b"]}}"#);
    assert_eq!(s.domain_fields().site_domain.as_deref(), None);
    let s = scan_ok(
        r#"{"imp":[{"site":{"domain":"nested.example"}}],"app":{"publisher":{"bundle":"n"}}}"#,
    );
    assert_eq!(
        (
            s.domain_fields().site_domain.as_deref(),
            s.domain_fields().app_bundle.as_deref()
        ),
        (None, None)
    );
}

/// Runs `f` on a thread with a small stack: nothing here may recurse per nesting level.
fn on_small_stack(f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap();
}

/// 10,000-deep nesting, closed or not, anywhere, is an error (`TooDeep`), never a stack overflow.
#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    on_small_stack(|| {
        let n = 10_000;
        let arrays = format!("{}{}", "[".repeat(n), "]".repeat(n));
        let objects = format!("{}1{}", r#"{"a":"#.repeat(n), "}".repeat(n));
        for inner in [
            arrays.as_str(),
            objects.as_str(),
            &"[".repeat(n),
            &r#"{"a":"#.repeat(n),
        ] {
            for wrap in [
                "{\"imp\":@}",
                "{\"user\":@}",
                "{\"user\":{\"ext\":@}}",
                "{\"user\":{\"ext\":{\"x\":@}}}",
                "{\"user\":{\"eids\":[@]}}",
                "{\"user\":{\"eids\":[{\"source\":\"uidapi.com\",\"uids\":[{\"id\":@}]}]}}",
                "{\"site\":{\"domain\":@}}",
                "{\"x\":@",
            ] {
                let input = wrap.replace('@', inner);
                assert_eq!(err(input.as_bytes()), JsonError::TooDeep, "{}", &wrap);
            }
        }
    });
}

/// The limit counts every container, the top-level object included.
#[test]
fn depth_limit_is_exact() {
    let ok = format!(
        "{{\"x\":{}{}}}",
        "[".repeat(MAX_DEPTH - 1),
        "]".repeat(MAX_DEPTH - 1)
    );
    assert!(scan(ok.as_bytes(), SOURCES, M).is_ok());
    let deep = format!(
        "{{\"x\":{}{}}}",
        "[".repeat(MAX_DEPTH),
        "]".repeat(MAX_DEPTH)
    );
    assert_eq!(err(deep.as_bytes()), JsonError::TooDeep);
}

/// Bracket types are checked past the 64 levels held in a register too.
#[test]
fn deep_bracket_types_are_checked() {
    let wrong = format!("{{\"x\":{}}}}}", "[".repeat(100));
    assert!(matches!(
        err(wrong.as_bytes()),
        JsonError::Malformed {
            reason: "mismatched bracket",
            ..
        }
    ));
    // 1 + 2 × 200 levels: inside the limit, and far past the register-held 64.
    let n = 200;
    let mixed = format!("{{\"x\":{}1{}}}", r#"{"a":["#.repeat(n), "]}".repeat(n));
    assert!(scan(mixed.as_bytes(), SOURCES, M).is_ok());
    let swapped = mixed.replacen("]}", "}]", 1);
    assert!(matches!(
        err(swapped.as_bytes()),
        JsonError::Malformed { .. }
    ));
}

/// Byte-at-a-time meaning of the block skipper: a backslash not itself escaped escapes the next byte;
/// unescaped quotes open and close strings; brackets outside strings nest and must match.
fn reference_skip(bytes: &[u8], depth: usize) -> Result<usize, JsonError> {
    let mut stack = Vec::new();
    let (mut in_string, mut escape_next) = (false, false);
    for (i, &b) in bytes.iter().enumerate() {
        let escaped = std::mem::take(&mut escape_next);
        if b == b'\\' && !escaped {
            escape_next = true;
        }
        if b == b'"' && !escaped {
            in_string = !in_string;
        } else if !in_string && matches!(b, b'{' | b'[') {
            if depth + stack.len() >= MAX_DEPTH {
                return Err(JsonError::TooDeep);
            }
            stack.push(b == b'{');
        } else if !in_string && matches!(b, b'}' | b']') {
            if stack.pop() != Some(b == b'}') {
                return Err(JsonError::Malformed {
                    offset: i,
                    reason: "mismatched bracket",
                });
            }
            if stack.is_empty() {
                return Ok(i + 1);
            }
        }
    }
    Err(JsonError::Truncated)
}

/// The skipper through the cursor (AVX2 where the CPU has it), after checking that every classifier
/// this CPU can run gives the same answer.
fn block_skip(input: &[u8], depth: usize) -> Result<usize, JsonError> {
    let mut cur = Cursor {
        bytes: input,
        pos: 0,
    };
    let result = cur.skip_container(depth).map(|()| cur.pos);
    assert_eq!(
        skip_blocks(BaselineClassifier, input, 0, depth),
        result,
        "baseline classifier"
    );
    #[cfg(target_arch = "x86_64")]
    if let Some(avx2) = avx2::Avx2::detect() {
        assert_eq!(avx2.skip_blocks(input, 0, depth), result, "AVX2");
    }
    result
}

/// Skipping past the register's 63 levels and back, with the way down checked on both sides of the
/// boundary and across blocks, and a mismatch found after coming back into the register.
#[test]
fn register_and_deep_skipping_agree() {
    for levels in [62, 63, 64, 65, 127, 128, 200] {
        let opens: String = (0..levels)
            .map(|k| if k % 3 == 0 { '[' } else { '{' })
            .collect();
        let closes: String = opens
            .chars()
            .rev()
            .map(|c| if c == '[' { ']' } else { '}' })
            .collect();
        for filler in ["", " ", "\"a\\\"]\"", &" ".repeat(70)] {
            let ok = format!("{opens}{filler}{closes}");
            assert_eq!(
                block_skip(ok.as_bytes(), 0),
                Ok(ok.len()),
                "{levels} {filler:?}"
            );
            assert_eq!(reference_skip(ok.as_bytes(), 0), Ok(ok.len()));
            // Swap the types of the outermost pair: found only after the walk is back down.
            let swapped = if ok.ends_with(']') { "}" } else { "]" };
            let bad = format!("{}{swapped}", &ok[..ok.len() - 1]);
            assert_eq!(
                block_skip(bad.as_bytes(), 0),
                reference_skip(bad.as_bytes(), 0)
            );
            assert!(block_skip(bad.as_bytes(), 0).is_err());
        }
    }
}

#[test]
fn utf8_check_matches_std() {
    let emoji = "\u{1F600}".repeat(40);
    let cases: &[&[u8]] = &[
        b"",
        b"{}",
        "{\"a\":\"\u{e9}\"}".as_bytes(),
        b"{\"a\":\"\xff\"}",
        &[b' '; 200],
        &[0x80],
        emoji.as_bytes(),
    ];
    for bytes in cases {
        assert_eq!(
            is_utf8(bytes),
            std::str::from_utf8(bytes).is_ok(),
            "{bytes:?}"
        );
    }
    let mut long = vec![b'a'; 300];
    for at in [0, 63, 64, 127, 255, 299] {
        long[at] = 0xc3;
        assert!(!is_utf8(&long), "{at}");
        long[at] = b'a';
    }
    assert!(is_utf8(&long));
}

/// Every prefix of a request, cut anywhere before its closing brace, is an error (and never a panic).
#[test]
fn truncated_prefixes_are_errors() {
    let mut samples: Vec<String> = FIXTURES.iter().map(|f| fixture(f)).collect();
    samples.push(format!(
        r#"{{"user":{{"id":"\u00e9\/\"","eids":[{{"source":"uidapi.com","uids":[{{"id":"A\/B","atype":3}}]}}],"ext":{{"{M}":{J},"n":-1.5e-3,"t":true,"f":false,"z":null}}}}}}"#
    ));
    for sample in &samples {
        let bytes = sample.as_bytes();
        let close = sample.rfind('}').unwrap();
        for n in 0..=close {
            let prefix = &bytes[..n];
            let e = err(prefix);
            let expected = if std::str::from_utf8(prefix).is_err() {
                JsonError::NotUtf8
            } else if prefix.trim_ascii().is_empty() {
                JsonError::NotAnObject
            } else {
                JsonError::Truncated
            };
            assert_eq!(e, expected, "prefix {n} of {sample}");
            assert!(validate_strict(prefix).is_err());
        }
        assert!(scan(&bytes[..close + 1], SOURCES, M).is_ok());
    }
}

/// Structure errors the fast path sees are `Malformed` (or the specific kind), with a reason string.
#[test]
fn malformed_inputs() {
    let malformed = [
        r#"{"a":1,}"#,
        r#"{"a" 1}"#,
        r#"{"a":1 "b":2}"#,
        r#"{"a":[1,2}"#,
        r#"{"a":{]}"#,
        r#"{"a":[1,2]]}"#,
        r#"{"a":tru}"#,
        r#"{"a":nul,"b":1}"#,
        r#"{"a":}"#,
        r#"{"a":]"#,
        r#"{"a":1]"#,
        r#"{a:1}"#,
        r#"{"a":1}}"#,
        r#"{"a":1} x"#,
        r#"{"a":1}{}"#,
        r#"{"user":{"eids":[1,]}}"#,
        r#"{"user":{"eids":[{"source":"uidapi.com","uids":[{"id":"\ud800"}]}]}}"#,
        r#"{"user":{"eids":[{"source":"uidapi.com","uids":[{"id":"\udc00\ud800"}]}]}}"#,
        r#"{"user":{"eids":[{"source":"uidapi.com","uids":[{"id":"\x"}]}]}}"#,
        r#"{"user":{"eids":[{"source":"uidapi.com","uids":[{"id":"\u12"}]}]}}"#,
        r#"{"user":{"eids":[{"source":"uidapi.com","uids":[{"id" "x"}]}]}}"#,
        r#"{"us\er":1}"#,
    ];
    for input in malformed {
        let e = err(input.as_bytes());
        assert!(matches!(e, JsonError::Malformed { .. }), "{input}: {e:?}");
        assert_eq!(e.reason(), "malformed_json");
        // serde_json ignores values without checking surrogate pairs; every other case it rejects too.
        if !input.contains("\\ud") && !input.contains("\\udc") {
            assert!(validate_strict(input.as_bytes()).is_err(), "{input}");
        }
    }
    for input in ["", "  \n", "[1]", r#""x""#, "null", "1", "\u{feff}{}"] {
        assert_eq!(err(input.as_bytes()), JsonError::NotAnObject, "{input:?}");
    }
    assert_eq!(JsonError::NotAnObject.reason(), "not_a_json_object");
    assert_eq!(err(b"{\"a\":\"\xff\"}"), JsonError::NotUtf8);
    assert_eq!(JsonError::NotUtf8.reason(), "not_utf8");
    assert_eq!(err(br#"{"a":"unterminated"#), JsonError::Truncated);
    assert_eq!(err(br#"{"a":"ends in backslash\"#), JsonError::Truncated);
    assert_eq!(JsonError::Truncated.reason(), "truncated_json");
    assert_eq!(JsonError::TooDeep.reason(), "nesting_too_deep");
    assert_eq!(
        err(br#"{"a":[1,2}"#),
        JsonError::Malformed {
            offset: 9,
            reason: "mismatched bracket"
        }
    );
    // Surrogate pairs are fine.
    let s =
        scan_ok(r#"{"user":{"eids":[{"source":"uidapi.com","uids":[{"id":"\ud83d\ude00"}]}]}}"#);
    assert_eq!(s.tokens[0].id, "😀");
}

/// Inside skipped values the fast path only matches brackets and strings; `validate_strict` catches the rest.
#[test]
fn skipped_regions_are_not_grammar_checked_but_strict_mode_is() {
    let input = br#"{"imp":[1 2,,{"a" "b"},- ,"\q"],"user":{"id":"x"}}"#;
    assert!(scan(input, SOURCES, M).is_ok());
    assert!(matches!(
        validate_strict(input),
        Err(JsonError::Malformed { .. })
    ));
    assert_eq!(validate_strict(b"[1]"), Err(JsonError::NotAnObject));
    assert_eq!(
        validate_strict(b"{\"a\":\"\xff\"}"),
        Err(JsonError::NotUtf8)
    );
    assert_eq!(validate_strict(br#"{"a":[1,"#), Err(JsonError::Truncated));
    assert_eq!(
        validate_strict(b"{\"a\":1,\n \"b\" 2}"),
        Err(JsonError::Malformed {
            offset: 13,
            reason: "invalid JSON (strict validation)"
        })
    );
    for f in FIXTURES {
        assert_eq!(validate_strict(fixture(f).as_bytes()), Ok(()), "{f}");
    }
}

/// Megabyte strings and tokens scan fine and stay borrowed; a megabyte of unterminated string is `Truncated`.
#[test]
fn megabyte_payloads() {
    let big = "x".repeat(1 << 20);
    let token = "A".repeat(1 << 20);
    let input = format!(
        r#"{{"imp":[{{"adm":"{big}"}}],"user":{{"eids":[{{"source":"uidapi.com","uids":[{{"id":"{token}"}}]}}]}}}}"#
    );
    let s = scan_ok(&input);
    assert_eq!(s.tokens.len(), 1);
    assert!(matches!(&s.tokens[0].id, Cow::Borrowed(t) if t.len() == 1 << 20));
    check_all(&input);
    assert_eq!(
        err(format!(r#"{{"imp":"{big}"#).as_bytes()),
        JsonError::Truncated
    );
    assert_eq!(
        err(format!(r#"{{"user":{{"id":"{big}"#).as_bytes()),
        JsonError::Truncated
    );
    assert_eq!(err("[".repeat(1 << 20).as_bytes()), JsonError::NotAnObject);
    assert_eq!(
        err(format!("{{\"a\":{}", "[".repeat(1 << 20)).as_bytes()),
        JsonError::TooDeep
    );
}

/// Each fixture: what it should yield, cross-checked with serde_json, and every splice property.
#[test]
fn fixtures() {
    let expectations: &[(&str, Option<&str>, Option<&str>, bool)] = &[
        ("iab26-video.json", Some("siteabcd.com"), None, true),
        (
            "iab26-simple-banner.json",
            Some("www.foobar.com"),
            None,
            true,
        ),
        ("iab26-mobile-app.json", None, Some("628677149"), true),
        (
            "prebid-server-25.json",
            Some("www.recipes-example.com"),
            None,
            true,
        ),
        (
            "both-locations.json",
            Some("news.example.co.uk"),
            None,
            true,
        ),
        (
            "pretty-odd-whitespace.json",
            Some("m.weather-example.com"),
            None,
            true,
        ),
        (
            "unicode-numbers.json",
            Some("www.café-example.fr"),
            None,
            true,
        ),
        ("user-ext-many.json", Some("video.example.com"), None, true),
        ("euid.json", Some("www.journal-example.fr"), None, true),
        ("no-token.json", Some("www.sports-example.com"), None, true),
        ("no-user.json", Some("blog.example.org"), None, false),
    ];
    let expected_tokens = |name: &str| -> Vec<Tok> {
        match name {
            "iab26-video.json" | "iab26-mobile-app.json" | "pretty-odd-whitespace.json" => {
                vec![tok(UID2_V4, 0, UserEids)]
            }
            "unicode-numbers.json" => vec![tok(UID2_V4, 0, UserEids)],
            "iab26-simple-banner.json" => vec![tok(UID2_V2, 0, UserEids)],
            "prebid-server-25.json" | "user-ext-many.json" => {
                vec![tok(UID2_V4, 0, UserExtEids)]
            }
            "both-locations.json" => vec![
                tok(UID2_V4, 0, UserEids),
                tok(UID2_V4, 0, UserExtEids),
                tok(EUID_V4, 1, UserExtEids),
            ],
            "euid.json" => vec![tok(EUID_V4, 1, UserEids)],
            _ => vec![],
        }
    };
    assert_eq!(expectations.len(), FIXTURES.len());
    for &(name, domain, bundle, splices) in expectations {
        let input = fixture(name);
        let v: Value = serde_json::from_str(&input).unwrap_or_else(|e| panic!("{name}: {e}"));
        let s = scan_ok(&input);
        assert_eq!(toks(&s), expected_tokens(name), "{name}");
        assert_eq!(toks(&s), reference_tokens(&v), "{name}");
        assert_eq!(s.domain_fields().site_domain.as_deref(), domain, "{name}");
        assert_eq!(
            s.domain_fields().site_page.as_deref().map(str::to_string),
            reference_str(&v, "site", "page")
        );
        assert_eq!(s.domain_fields().app_bundle.as_deref(), bundle, "{name}");
        assert_eq!(s.can_splice(), splices, "{name}");
        if splices {
            check_all(&input);
        }
    }
    let uni = fixture("unicode-numbers.json");
    let s = scan_ok(&uni);
    assert_eq!(
        s.domain_fields().site_page.as_deref(),
        Some("https://www.café-example.fr/recettes/crêpe?x=1&y=€")
    );
    // The misspelled `apis` and every other byte outside the insertion survive.
    let video = fixture("iab26-video.json");
    let out = enrich(&video).unwrap();
    assert!(out.contains("\"apis\": [\n          1,\n          2\n        ]"));
    // Numbers keep their spelling.
    let out = enrich(&uni).unwrap();
    for spelling in [
        "1.50",
        "12345678901234567890",
        "1e-3",
        "2.5E+2",
        "-0.0",
        "1.0e2",
        "\\u00e9",
        "\\/",
    ] {
        assert_eq!(
            out.matches(spelling).count(),
            uni.matches(spelling).count(),
            "{spelling}"
        );
    }
}

/// The odd-whitespace fixture really holds CRLF, tabs and spaces before colons (an editor could strip them).
#[test]
fn odd_whitespace_fixture_has_crlf_and_tabs() {
    let f = fixture("pretty-odd-whitespace.json");
    assert!(f.contains("\r\n\t") && f.contains(" : ") && f.contains("\"\t:\t"));
}

// ----- property tests -----

/// A generated request, rendered twice with the same whitespace: as input, and as the expected output.
#[derive(Debug, Clone)]
enum GUid {
    Id {
        raw: String,
        val: String,
        atype_str: bool,
        extra: bool,
        id_last: bool,
    },
    NoId,
    IdNotString(&'static str),
    NotObject(&'static str),
}

#[derive(Debug, Clone)]
struct GEid {
    source: Option<(&'static str, Option<usize>)>,
    uids: Result<Vec<GUid>, &'static str>,
    uids_first: bool,
    extras: bool,
}

#[derive(Debug, Clone)]
enum GItem {
    Eid(GEid),
    NotObject(&'static str),
}

type GEids = Option<(prop::sample::Index, Result<Vec<GItem>, &'static str>)>;

#[derive(Debug, Clone)]
enum GExt {
    Absent,
    Null,
    Other(&'static str),
    Object {
        members: Vec<(&'static str, &'static str)>,
        eids: GEids,
        existing: Option<(prop::sample::Index, &'static str)>,
    },
}

#[derive(Debug, Clone)]
enum GUser {
    Absent,
    NotObject(&'static str),
    Object {
        members: Vec<(&'static str, &'static str)>,
        eids: GEids,
        ext: GExt,
        ext_pos: prop::sample::Index,
    },
}

#[derive(Debug, Clone)]
struct GReq {
    members: Vec<(&'static str, &'static str)>,
    user: GUser,
    user_pos: prop::sample::Index,
    ws: Vec<&'static str>,
}

const TOP_POOL: &[(&str, &str)] = &[
    (r#""id""#, r#""req-\u00e9\/1""#),
    (r#""at""#, "1"),
    (r#""tmax""#, "1e2"),
    (
        r#""imp""#,
        r#"[{"id":"1","bidfloor":1.50,"banner":{"w":300,"h":250},"apis":[1,2]}]"#,
    ),
    (
        r#""site""#,
        r#"{"domain":"example.com","page":"https:\/\/example.com\/a","user":{"eids":[{"source":"uidapi.com","uids":[{"id":"NOT-TOP-LEVEL"}]}]}}"#,
    ),
    (
        r#""device""#,
        r#"{"ua":"Mozilla/5.0 (iPhone; CPU iPhone OS 18_3_2 like Mac OS X)","geo":{"lat":1e-3,"lon":-0.5}}"#,
    ),
    (
        r#""regs""#,
        r#"{"gpp":"DBABLA~BVQqAAAAAgA.QA","gpp_sid":[7]}"#,
    ),
    (
        r#""ext""#,
        r#"{"big":123456789012345678901,"user":{"ext":null}}"#,
    ),
    (
        r#""source""#,
        r#"{"ext":{"schain":{"ver":"1.0","complete":1,"nodes":[]}}}"#,
    ),
];
const USER_POOL: &[(&str, &str)] = &[
    (r#""id""#, r#""u-1""#),
    (r#""buyeruid""#, r#""b\/1""#),
    (r#""yob""#, "1980"),
    (r#""data""#, r#"[{"id":"6","segment":[{"id":"1"}]}]"#),
    (
        r#""consent""#,
        r#""CPXxRfAPXxRfAAfKABENB-CgAAAAAAAAAAYgAAAAAAAA""#,
    ),
];
const EXT_POOL: &[(&str, &str)] = &[
    (
        r#""consent""#,
        r#""CPXxRfAPXxRfAAfKABENB-CgAAAAAAAAAAYgAAAAAAAA""#,
    ),
    (r#""gdpr""#, "1"),
    (r#""prebid""#, r#"{"buyeruids":{"appnexus":"123"}}"#),
    (r#""data""#, r#"[{"id":"1","segment":[{"id":"s"}]}]"#),
    (r#""n""#, "1.50"),
    (r#""esc""#, r#""caf\u00e9 \/""#),
];

fn g_uid() -> impl Strategy<Value = GUid> {
    let escapes = prop::sample::select(vec![
        ("", ""),
        ("\\/", "/"),
        ("\\u0041", "A"),
        ("\\\\", "\\"),
        ("\\u00e9", "é"),
        ("\\ud83d\\ude00", "😀"),
        ("\\\"", "\""),
    ]);
    prop_oneof![
        6 => ("[A-Za-z0-9_+=-]{0,24}", escapes, "[A-Za-z0-9_-]{0,24}", any::<bool>(), any::<bool>(), any::<bool>())
            .prop_map(|(a, (er, ev), b, atype_str, extra, id_last)| GUid::Id {
                raw: format!("\"{a}{er}{b}\""),
                val: format!("{a}{ev}{b}"),
                atype_str,
                extra,
                id_last,
            }),
        1 => Just(GUid::NoId),
        1 => prop::sample::select(vec!["7", "null", r#"{"a":"b"}"#, r#"["x"]"#, "true"]).prop_map(GUid::IdNotString),
        1 => prop::sample::select(vec!["1", r#""x""#, "null", "[]"]).prop_map(GUid::NotObject),
    ]
}

fn g_items() -> impl Strategy<Value = Vec<GItem>> {
    let source = prop::option::weighted(
        0.9,
        prop_oneof![
            3 => prop::sample::select(vec![
                (r#""uidapi.com""#, Some(0)),
                (r#""euid.eu""#, Some(1)),
                (r#""uidapi.co\u006d""#, Some(0)),
            ]),
            1 => prop::sample::select(vec![
                (r#""adserver.org""#, None),
                (r#""id5-sync.com""#, None),
                (r#""UIDAPI.COM""#, None),
                ("7", None),
                ("null", None),
            ]),
        ],
    );
    let uids = prop_oneof![
        4 => prop::collection::vec(g_uid(), 0..4).prop_map(Ok),
        1 => prop::sample::select(vec![r#""x""#, "{}", "null", "3"]).prop_map(Err),
    ];
    let eid = (source, uids, any::<bool>(), any::<bool>()).prop_map(
        |(source, uids, uids_first, extras)| {
            GItem::Eid(GEid {
                source,
                uids,
                uids_first,
                extras,
            })
        },
    );
    prop::collection::vec(
        prop_oneof![
            5 => eid,
            1 => prop::sample::select(vec!["1", r#""x""#, "null", "[]", "{}"]).prop_map(GItem::NotObject),
        ],
        0..4,
    )
}

fn g_eids() -> impl Strategy<Value = GEids> {
    prop::option::weighted(
        0.8,
        (
            any::<prop::sample::Index>(),
            prop_oneof![
                5 => g_items().prop_map(Ok),
                1 => prop::sample::select(vec!["{}", r#""x""#, "null"]).prop_map(Err),
            ],
        ),
    )
}

fn shuffled(
    pool: &'static [(&'static str, &'static str)],
) -> impl Strategy<Value = Vec<(&'static str, &'static str)>> {
    prop::sample::subsequence(pool.to_vec(), 0..=pool.len()).prop_shuffle()
}

fn g_ext() -> impl Strategy<Value = GExt> {
    let old = prop::sample::select(vec![
        r#"{"status":"expired_token","tokens":1}"#,
        "null",
        r#""garbage""#,
        r#"{ "status" : "success" , "raw_uid2" : "x" }"#,
        "[1,2]",
    ]);
    prop_oneof![
        2 => Just(GExt::Absent),
        1 => Just(GExt::Null),
        1 => prop::sample::select(vec![r#""str""#, "42", "[]", "true"]).prop_map(GExt::Other),
        4 => (shuffled(EXT_POOL), g_eids(), prop::option::of((any::<prop::sample::Index>(), old)))
            .prop_map(|(members, eids, existing)| GExt::Object { members, eids, existing }),
    ]
}

fn g_req() -> impl Strategy<Value = GReq> {
    let user = prop_oneof![
        1 => Just(GUser::Absent),
        1 => prop::sample::select(vec!["null", r#""u""#, "[]", "7"]).prop_map(GUser::NotObject),
        6 => (shuffled(USER_POOL), g_eids(), g_ext(), any::<prop::sample::Index>())
            .prop_map(|(members, eids, ext, ext_pos)| GUser::Object { members, eids, ext, ext_pos }),
    ];
    let ws = prop::collection::vec(
        prop::sample::select(vec!["", " ", "\n  ", "\t", "\r\n\t", "  \r\n  ", "\n"]),
        1..12,
    );
    (shuffled(TOP_POOL), user, any::<prop::sample::Index>(), ws).prop_map(
        |(members, user, user_pos, ws)| GReq {
            members,
            user,
            user_pos,
            ws,
        },
    )
}

/// Renders JSON text, drawing whitespace from a fixed cycle so the input and expected renderings line up.
struct Render<'w> {
    ws: &'w [&'static str],
    i: usize,
    expected: bool,
}

impl Render<'_> {
    fn ws(&mut self) -> &'static str {
        let w = self.ws[self.i % self.ws.len()];
        self.i += 1;
        w
    }

    /// `insert` goes right after the last member's value (with a comma) or right after `{`.
    fn object(&mut self, members: Vec<(String, String)>, insert: Option<&str>) -> String {
        let n = members.len();
        let mut s = String::from("{");
        for (k, (key, val)) in members.into_iter().enumerate() {
            if k > 0 {
                s.push(',');
            }
            s += self.ws();
            s += &key;
            s += self.ws();
            s.push(':');
            s += self.ws();
            s += &val;
            if k + 1 < n {
                s += self.ws();
            }
        }
        if let Some(ins) = insert.filter(|_| self.expected) {
            if n > 0 {
                s.push(',');
            }
            s += ins;
        }
        s += self.ws();
        s.push('}');
        s
    }

    fn array(&mut self, items: Vec<String>) -> String {
        let mut s = String::from("[");
        let n = items.len();
        for (k, item) in items.into_iter().enumerate() {
            if k > 0 {
                s.push(',');
            }
            s += self.ws();
            s += &item;
            s += if k + 1 < n { self.ws() } else { "" };
        }
        s += self.ws();
        s.push(']');
        s
    }

    fn eids(&mut self, eids: &Result<Vec<GItem>, &'static str>) -> String {
        let items = match eids {
            Err(raw) => return raw.to_string(),
            Ok(items) => items,
        };
        let rendered = items
            .iter()
            .map(|item| match item {
                GItem::NotObject(raw) => raw.to_string(),
                GItem::Eid(eid) => self.eid(eid),
            })
            .collect();
        self.array(rendered)
    }

    fn eid(&mut self, eid: &GEid) -> String {
        let mut members = Vec::new();
        if let Some((raw, _)) = eid.source {
            members.push((r#""source""#.to_string(), raw.to_string()));
        }
        let uids = match &eid.uids {
            Err(raw) => raw.to_string(),
            Ok(uids) => {
                let rendered = uids.iter().map(|u| self.uid(u)).collect();
                self.array(rendered)
            }
        };
        let uids = (r#""uids""#.to_string(), uids);
        if eid.uids_first {
            members.insert(0, uids);
        } else {
            members.push(uids);
        }
        if eid.extras {
            members.push((r#""mm""#.into(), r#""3""#.into()));
            members.push((r#""inserter""#.into(), r#""pub.example""#.into()));
            members.push((r#""ext""#.into(), r#"{"stype":"ppuid"}"#.into()));
        }
        self.object(members, None)
    }

    fn uid(&mut self, uid: &GUid) -> String {
        match uid {
            GUid::NotObject(raw) => raw.to_string(),
            GUid::NoId => self.object(vec![(r#""atype""#.into(), "3".into())], None),
            GUid::IdNotString(raw) => self.object(vec![(r#""id""#.into(), raw.to_string())], None),
            GUid::Id {
                raw,
                atype_str,
                extra,
                id_last,
                ..
            } => {
                let mut members = vec![(
                    r#""atype""#.to_string(),
                    if *atype_str { r#""3""# } else { "3" }.to_string(),
                )];
                if *extra {
                    members.push((r#""rtiPartner""#.into(), r#""UID2""#.into()));
                    members.push((r#""ext""#.into(), r#"{"rtiPartner":"UID2"}"#.into()));
                }
                let id = (r#""id""#.to_string(), raw.clone());
                if *id_last {
                    members.push(id);
                } else {
                    members.insert(0, id);
                }
                self.object(members, None)
            }
        }
    }

    fn with_eids(&mut self, pool: &[(&str, &str)], eids: &GEids) -> Vec<(String, String)> {
        let mut members: Vec<(String, String)> = pool
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        if let Some((pos, eids)) = eids {
            let at = pos.index(members.len() + 1);
            let rendered = self.eids(eids);
            members.insert(at, (r#""eids""#.into(), rendered));
        }
        members
    }

    fn ext(&mut self, ext: &GExt) -> String {
        match ext {
            GExt::Absent => unreachable!(),
            GExt::Null if self.expected => format!("{{\"{M}\":{J}}}"),
            GExt::Null => "null".into(),
            GExt::Other(raw) => raw.to_string(),
            GExt::Object {
                members,
                eids,
                existing,
            } => {
                let mut members = self.with_eids(members, eids);
                if let Some((pos, old)) = existing {
                    let at = pos.index(members.len() + 1);
                    let value = if self.expected { J } else { old };
                    members.insert(at, (format!("\"{M}\""), value.to_string()));
                    self.object(members, None)
                } else {
                    self.object(members, Some(&format!("\"{M}\":{J}")))
                }
            }
        }
    }

    fn request(&mut self, req: &GReq) -> String {
        let mut members: Vec<(String, String)> = req
            .members
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let user = match &req.user {
            GUser::Absent => None,
            GUser::NotObject(raw) => Some(raw.to_string()),
            GUser::Object {
                members,
                eids,
                ext,
                ext_pos,
            } => {
                let mut members = self.with_eids(members, eids);
                let insert = if let GExt::Absent = ext {
                    Some(format!("\"ext\":{{\"{M}\":{J}}}"))
                } else {
                    let at = ext_pos.index(members.len() + 1);
                    let rendered = self.ext(ext);
                    members.insert(at, (r#""ext""#.into(), rendered));
                    None
                };
                Some(self.object(members, insert.as_deref()))
            }
        };
        if let Some(user) = user {
            let at = req.user_pos.index(members.len() + 1);
            members.insert(at, (r#""user""#.into(), user));
        }
        let ws = self.ws();
        format!("{ws}{}{ws}", self.object(members, None))
    }
}

fn g_tokens(items: &GEids, location: EidLocation, out: &mut Vec<Tok>) {
    let Some((_, Ok(items))) = items else { return };
    for item in items {
        let GItem::Eid(GEid {
            source: Some((_, Some(idx))),
            uids: Ok(uids),
            ..
        }) = item
        else {
            continue;
        };
        for uid in uids {
            if let GUid::Id { val, .. } = uid {
                out.push((val.clone(), *idx, location));
            }
        }
    }
}

/// (input, expected output or None, expected tokens)
fn generated(req: &GReq) -> (String, Option<String>, Vec<Tok>) {
    let input = Render {
        ws: &req.ws,
        i: 0,
        expected: false,
    }
    .request(req);
    let expected = Render {
        ws: &req.ws,
        i: 0,
        expected: true,
    }
    .request(req);
    let mut tokens = Vec::new();
    let splices = match &req.user {
        GUser::Object { eids, ext, .. } => {
            g_tokens(eids, UserEids, &mut tokens);
            if let GExt::Object { eids, .. } = ext {
                g_tokens(eids, UserExtEids, &mut tokens);
            }
            !matches!(ext, GExt::Other(_))
        }
        _ => false,
    };
    (input, splices.then_some(expected), tokens)
}

fn mutate(base: &[u8], edits: &[(prop::sample::Index, u8, u8)]) -> Vec<u8> {
    const ALPHABET: &[u8] = b"{}[]\":,\\ 0123456789-+.eEtrufalsnx\t\n\x00\x01\xff\xc3";
    let mut bytes = base.to_vec();
    for (pos, kind, pick) in edits {
        let at = pos.index(bytes.len() + 1);
        let b = ALPHABET[usize::from(*pick) % ALPHABET.len()];
        match kind % 3 {
            0 if at < bytes.len() => bytes[at] = b,
            1 => bytes.insert(at, b),
            _ if at < bytes.len() => {
                bytes.remove(at);
            }
            _ => {}
        }
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The block skipper agrees with the byte-at-a-time reference, across block boundaries, escapes at
    /// the end of a block, strings spanning blocks, and nesting past 64 levels and up to the limit.
    #[test]
    fn block_skipper_matches_bytewise_reference(
        open in prop::collection::vec(prop::sample::select(b"{[".to_vec()), 1..600),
        tail in prop::collection::vec(prop::sample::select(b"{}[]\"\\\\ a:,".to_vec()), 0..400),
        depth in 0usize..3,
    ) {
        let mut input = open;
        input.extend_from_slice(&tail);
        prop_assert_eq!(block_skip(&input, depth), reference_skip(&input, depth));
        // Valid-looking nesting closed in order, so that the Ok path is well covered too.
        let opens: Vec<u8> = input.iter().take_while(|b| matches!(b, b'{' | b'[')).copied().collect();
        let filler = tail.iter().copied().filter(|b| matches!(b, b' ' | b'a' | b':' | b','));
        // `{` + 2 is `}`, `[` + 2 is `]`.
        let closed: Vec<u8> =
            opens.iter().copied().chain(filler).chain(opens.iter().rev().map(|b| b + 2)).collect();
        prop_assert_eq!(block_skip(&closed, depth), reference_skip(&closed, depth));
    }

    /// The SSE2 classifiers and the portable ones give the same masks, and both mean what they say.
    #[test]
    fn block_classifiers_agree(bytes in prop::collection::vec(
        prop_oneof![any::<u8>(), prop::sample::select(b"{}[]\"\\\\".to_vec())], 64)) {
        let block: [u8; 64] = bytes.as_slice().try_into().unwrap();
        let naive = |f: fn(u8) -> bool| {
            block.iter().enumerate().fold(0u64, |m, (k, &b)| m | (u64::from(f(b)) << k))
        };
        let expected = BlockMasks {
            quote: naive(|b| b == b'"'),
            backslash: naive(|b| b == b'\\'),
            bracket: naive(|b| matches!(b, b'{' | b'[' | b'}' | b']')),
        };
        prop_assert_eq!(BlockMasks::classify(&block), expected);
        prop_assert_eq!(BlockMasks::classify_swar(&block), expected);
        #[cfg(target_arch = "x86_64")]
        if let Some(avx2) = avx2::Avx2::detect() {
            prop_assert_eq!(avx2.classify(&block), expected);
        }
        for chunk in block.as_chunks::<16>().0 {
            let q = chunk.iter().enumerate().fold(0u32, |m, (k, &b)| m | (u32::from(b == b'"') << k));
            let b = chunk.iter().enumerate().fold(0u32, |m, (k, &b)| m | (u32::from(b == b'\\') << k));
            prop_assert_eq!(quote_and_backslash_16(chunk), (q, b));
            prop_assert_eq!(quote_and_backslash_16_swar(chunk), (q, b));
        }
    }

    /// The word-wise check agrees with a byte-wise one, at every length and with the byte that needs
    /// an escape anywhere.
    #[test]
    fn plain_string_check_matches_bytewise(
        bytes in prop::collection::vec(
            prop::sample::select(vec![b'a', b' ', b'~', 0x7f, 0x80, 0xc3, 0xff, 0x1f, 0, b'"', b'\\', b'!', b'#', b'[', b'\n']),
            0..40,
        ),
    ) {
        let naive = bytes.iter().all(|&b| b >= 0x20 && b != b'"' && b != b'\\');
        prop_assert_eq!(is_plain_string(&bytes), naive);
    }

    /// The carry-less multiply and the shifts compute the same prefix XOR.
    #[test]
    fn prefix_xor_variants_agree(x in any::<u64>()) {
        let naive = (0..64).fold(0u64, |m, k| m | (u64::from((x & ((2u128 << k) - 1) as u64).count_ones() % 2 == 1) << k));
        prop_assert_eq!(prefix_xor(x), naive);
        prop_assert_eq!(prefix_xor_shifts(x), naive);
    }

    /// The ASCII fast path of the UTF-8 check agrees with std on any bytes.
    #[test]
    fn utf8_check_agrees_with_std(bytes in prop::collection::vec(
        prop_oneof![4 => 0x20u8..0x7f, 1 => any::<u8>()], 0..300)) {
        prop_assert_eq!(is_utf8(&bytes), std::str::from_utf8(&bytes).is_ok());
    }

    /// The compact-eid shortcut never changes a result: wherever it takes eids (a run of compact ones
    /// and near misses made by random edits, one comma between them), the general walk takes the same
    /// eids too, ending at the same place with the same tokens; where it declines, it has moved nothing
    /// and pushed nothing.
    #[test]
    fn compact_eid_agrees_with_the_general_walk(
        eids in prop::collection::vec(
            (
                prop::sample::select(vec![
                    r#"{"source":"uidapi.com","uids":[{"id":"A4AAAAB-_x","atype":3}]}"#,
                    r#"{"source":"uidapi.com","uids":[{"id":"t1","atype":3},{"id":"t2"},{"id":"t3","atype":12}]}"#,
                    r#"{"source":"liveramp.com","uids":[{"id":"x","atype":1}]}"#,
                    r#"{"source":"euid.eu","uids":[{"id":"e"}]}"#,
                    r#"{"source":"uidapi.com","uids":[]}"#,
                ]),
                prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), any::<u8>()), 0..3),
            ),
            1..4,
        ),
    ) {
        let input = eids
            .iter()
            .map(|(base, edits)| mutate(base.as_bytes(), edits))
            .collect::<Vec<_>>()
            .join(&b',');
        prop_assume!(std::str::from_utf8(&input).is_ok());
        let mut fast = Cursor { bytes: &input, pos: 0 };
        let mut fast_tokens = Tokens::new();
        if compact_eid(&mut fast, SOURCES, EidLocation::UserEids, &mut fast_tokens) {
            let mut general = Cursor { bytes: &input, pos: 0 };
            let mut general_tokens = Tokens::new();
            loop {
                prop_assert_eq!(
                    parse_eid(&mut general, 3, SOURCES, EidLocation::UserEids, &mut general_tokens),
                    Ok(())
                );
                if general.pos >= fast.pos {
                    break;
                }
                prop_assert_eq!(general.peek(), Some(b','));
                general.pos += 1;
            }
            prop_assert_eq!(fast.pos, general.pos);
            prop_assert_eq!(fast_tokens, general_tokens);
        } else {
            prop_assert_eq!(fast.pos, 0);
            prop_assert!(fast_tokens.is_empty());
        }
    }

    /// Random bytes never panic, whatever scan decides.
    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(s) = scan(&bytes, SOURCES, M) {
            let _ = splice(&bytes, &s, M, J);
        }
        let _ = validate_strict(&bytes);
    }

    /// Random bytes behind a plausible prefix reach the deeper parsers, and still never panic.
    #[test]
    fn random_bytes_inside_user_never_panic(bytes in prop::collection::vec(
        prop::sample::select(b"{}[]\":,\\ 0123456789-.eEtrufalsn idsourceuidsextuidapi.com".to_vec()), 0..300)) {
        let mut input = br#"{"user":{"eids":[{"source":"uidapi.com","uids":[{"id":"#.to_vec();
        input.extend_from_slice(&bytes);
        if let Ok(s) = scan(&input, SOURCES, M) {
            let _ = splice(&input, &s, M, J);
        }
    }

    /// Mutated fixtures: never a panic; whenever serde_json accepts the result as an object, scan accepts it
    /// too, finds exactly serde_json's tokens and names, and the splice is right.
    #[test]
    fn mutated_fixtures_agree_with_serde_json(
        which in 0..FIXTURES.len(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), any::<u8>()), 1..4),
    ) {
        let base = fixture(FIXTURES[which]);
        let bytes = mutate(base.as_bytes(), &edits);
        let result = scan(&bytes, SOURCES, M);
        if let Ok(v) = serde_json::from_slice::<Value>(&bytes) && v.is_object() {
            let s = result.expect("scan rejects JSON that serde_json accepts");
            prop_assert_eq!(toks(&s), reference_tokens(&v));
            prop_assert_eq!(s.domain_fields().site_domain.as_deref().map(str::to_string), reference_str(&v, "site", "domain"));
            prop_assert_eq!(s.domain_fields().site_page.as_deref().map(str::to_string), reference_str(&v, "site", "page"));
            prop_assert_eq!(s.domain_fields().app_bundle.as_deref().map(str::to_string), reference_str(&v, "app", "bundle"));
            if s.can_splice() {
                check_all(std::str::from_utf8(&bytes).unwrap());
            }
        } else if let Ok(s) = result {
            let _ = splice(&bytes, &s, M, J);
        }
    }

    /// Generated requests: (1) the output is the input plus exactly the member (or its `ext` wrapper, or in
    /// place of the old value / `null`), byte for byte; (2) splicing twice equals once; (3) the output parses
    /// and `user.ext.<member>` is the member; (4) everything else is unchanged. Tokens match too.
    #[test]
    fn generated_requests_splice_exactly(req in g_req()) {
        let (input, expected, tokens) = generated(&req);
        let s = scan_ok(&input);
        prop_assert_eq!(toks(&s), tokens.clone());
        let v: Value = serde_json::from_str(&input).expect("generated input is JSON");
        prop_assert_eq!(&tokens, &reference_tokens(&v));
        prop_assert_eq!(s.domain_fields().site_domain.as_deref().is_some(), req.members.iter().any(|(k, _)| *k == r#""site""#));
        let out = splice(input.as_bytes(), &s, M, J).map(|o| String::from_utf8(o).unwrap());
        prop_assert_eq!(&out, &expected);
        if let Some(out) = out {
            check_removal(&input, &s, &out);
            check_enriched(&input, &out);
            let s2 = scan_ok(&out);
            prop_assert_eq!(toks(&s2), tokens);
            let again = splice(out.as_bytes(), &s2, M, J).map(|o| String::from_utf8(o).unwrap());
            prop_assert_eq!(again.as_deref(), Some(out.as_str()));
        }
    }
}
