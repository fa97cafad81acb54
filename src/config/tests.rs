//! The configuration's unit tests, which may reach its private parts; `tests/config.rs` covers the
//! shipped files and the public API.

use super::diagnostics::parse_unknown_field;
use super::*;
use crate::engine::enrich::PayloadFormat;
use crate::engine::tokenize::Direction;
use crate::engine::uid2::ClientMode;

const KEYS_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");

fn no_env(_: &str) -> Option<String> {
    None
}

fn minimal(extra: &str) -> String {
    format!("[uid2]\nkeys_file = \"{KEYS_FILE}\"\n{extra}")
}

fn err(text: &str) -> String {
    parse_with_env(text, "x.toml", &no_env)
        .expect_err("should fail")
        .to_string()
}

#[test]
fn edit_distance_basics() {
    assert_eq!(edit_distance("brokerz", "brokers"), 1);
    assert_eq!(edit_distance("", "abc"), 3);
    assert_eq!(edit_distance("kitten", "sitting"), 3);
    assert_eq!(edit_distance("kafak", "kafka"), 1);
    assert_eq!(
        closest("brokerz", &["brokers", "group_id"]),
        Some("brokers")
    );
    assert_eq!(closest("zzzzzz", &["brokers", "group_id"]), None);
    assert_eq!(
        closest("Bidstream", &["bidstream", "sharing"]),
        Some("bidstream")
    );
}

#[test]
fn minimal_config_gets_the_defaults() {
    let s = parse_with_env(&minimal(""), "x.toml", &no_env).unwrap();
    assert_eq!(s.kafka.brokers, "127.0.0.1:9092");
    assert_eq!(s.kafka.input_topics, ["bid-requests"]);
    assert_eq!(s.uid2.mode, ClientMode::Bidstream);
    assert_eq!(s.uid2.refresh, RefreshSettings::default());
    assert_eq!(s.pipeline.policy.sources.len(), 2);
    assert_eq!(s.pipeline.policy.member_name, "uid2_enrichment");
    assert!(s.pipeline.workers >= 1);
    assert_eq!(s.server.listen, "127.0.0.1:9898".parse().unwrap());
    assert!(s.optout.token.is_none());
}

#[test]
fn unknown_key_in_a_table_names_it_and_suggests() {
    let text = minimal("[kafka]\nbrokerz = \"x\"\n");
    let e = err(&text);
    assert!(
        e.contains("unknown key `brokerz` in [kafka] at x.toml:4:1"),
        "{e}"
    );
    assert!(e.contains("did you mean `brokers`?"), "{e}");
    assert!(e.contains("valid keys: brokers, group_id"), "{e}");
}

#[test]
fn unknown_table_and_misplaced_key() {
    let e = err(&minimal("[kafak]\nbrokers = \"x\"\n"));
    assert!(e.contains("unknown top-level key `kafak`"), "{e}");
    assert!(e.contains("did you mean [kafka]?"), "{e}");
    let e = err(&minimal("[kafka]\nlisten = \"127.0.0.1:1\"\n"));
    assert!(e.contains("`listen` belongs in [server]"), "{e}");
}

#[test]
fn secret_in_file_points_at_env() {
    let e = err(&minimal("api_key = \"abc\"\n"));
    assert!(e.contains("`api_key` in [uid2]"), "{e}");
    assert!(e.contains("x.toml:3:1"), "{e}");
    assert!(e.contains("UID2_API_KEY"), "{e}");
    assert!(!e.contains("abc"), "{e}");
    let e = err(&minimal("[optout]\ntoken = \"hunter2\"\n"));
    assert!(e.contains("UID2_OPTOUT_TOKEN"), "{e}");
    assert!(!e.contains("hunter2"), "{e}");
}

fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
    move |name| {
        pairs
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }
}

#[test]
fn environment_references_expand() {
    let env = env_of(&[("A", "x"), ("EMPTY", "")]);
    let expand = |t: &str| expand_env(t, &env);
    assert_eq!(expand("${A}").unwrap(), "x");
    assert_eq!(expand("pre-${A}-post").unwrap(), "pre-x-post");
    assert_eq!(expand("${B:-dflt}").unwrap(), "dflt");
    assert_eq!(expand("${EMPTY:-dflt}").unwrap(), "dflt");
    assert_eq!(expand("${EMPTY}").unwrap(), "");
    assert_eq!(expand("$${A} and $5").unwrap(), "${A} and $5");
    assert!(expand("${B}").unwrap_err().problem.contains("B is not set"));
    assert!(expand("${A").unwrap_err().problem.contains("closing"));
    assert!(
        expand("${1A}")
            .unwrap_err()
            .problem
            .contains("not an environment reference")
    );
}

#[test]
fn any_string_value_may_come_from_the_environment() {
    let text = minimal(
        "[kafka]\nbrokers = \"${BROKERS}\"\ngroup_id = \"${GROUP:-g1}\"\n[kafka.client]\n\"sasl.username\" = \"${USER_NAME}\"\n\"sasl.password\" = \"${KAFKA_SASL_PASSWORD}\"\n",
    );
    let env = env_of(&[
        ("BROKERS", "k1:9093,k2:9093"),
        ("USER_NAME", "alice"),
        ("KAFKA_SASL_PASSWORD", "hunter2-secret"),
    ]);
    let s = parse_with_env(&text, "x.toml", &env).unwrap();
    assert_eq!(s.kafka.brokers, "k1:9093,k2:9093");
    assert_eq!(s.kafka.group_id, "g1");
    assert_eq!(s.kafka.client.get("sasl.username"), Some("alice"));
    assert_eq!(s.kafka.client.get("sasl.password"), Some("hunter2-secret"));
    assert!(
        !format!("{s:?}").contains("hunter2"),
        "Debug shows a secret"
    );
}

#[test]
fn an_unset_variable_names_itself_and_where() {
    let text = minimal("[kafka]\nbrokers = \"${KAFKA_BROKERS}\"\n");
    let e = err(&text);
    assert!(e.contains("KAFKA_BROKERS is not set"), "{e}");
    assert!(e.contains("x.toml:4:11"), "{e}");
    assert!(e.contains("${KAFKA_BROKERS:-value}"), "{e}");
}

#[test]
fn a_literal_secret_property_is_refused_with_the_fix() {
    for (table, line) in [
        ("client", "\"sasl.password\" = \"hunter2\""),
        ("consumer", "sasl.password = \"hunter2\""),
        ("producer", "\"ssl.key.password\" = \"hunter2\""),
        ("client", "\"sasl.oauthbearer.client.secret\" = \"hunter2\""),
        ("client", "\"ssl.keystore.password\" = 123456"),
        (
            "client",
            "\"sasl.password\" = \"${KAFKA_SASL_PASSWORD:-hunter2}\"",
        ),
        ("client", "\"sasl.password\" = \"hunter2${X}\""),
    ] {
        let e = err(&minimal(&format!("[kafka.{table}]\n{line}\n")));
        assert!(e.contains("is a secret written in the file"), "{e}");
        assert!(e.contains("x.toml:4:"), "{e}");
        assert!(e.contains("= \"${KAFKA_"), "{e}");
        assert!(!e.contains("hunter2") && !e.contains("123456"), "{e}");
    }
}

#[test]
fn kafka_props_never_print_secrets() {
    let props = KafkaProps(vec![
        ("sasl.password".into(), "pw".into()),
        ("acks".into(), "all".into()),
    ]);
    let shown = format!("{props:?}");
    assert!(!shown.contains("pw\""), "{shown}");
    assert!(shown.contains("all"), "{shown}");
}

#[test]
fn parse_unknown_field_message() {
    let u = parse_unknown_field("unknown field `x`, expected one of `a`, `b`").unwrap();
    assert_eq!(u.name, "x");
    assert_eq!(u.expected, ["a", "b"]);
    let u = parse_unknown_field("unknown field `x`, there are no fields").unwrap();
    assert!(u.expected.is_empty());
}

#[test]
fn formats_directions_and_pointers() {
    let s = parse_with_env(
        &minimal(
            "[kafka]\ninput_topics = [\"bids\", \"px\", \"ev\"]\n[pipeline]\npixel_token_param = \"t\"\nevent_token_pointers = [\"/a~1b/0\", \"/c\"]\n[pipeline.formats]\npx = \"pixel\"\nev = \"json\"\n",
        ),
        "x.toml",
        &no_env,
    )
    .unwrap();
    assert_eq!(s.pipeline.format, PayloadFormat::Json);
    let mut formats = s.pipeline.topic_formats.clone();
    formats.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        formats,
        [
            ("ev".to_string(), PayloadFormat::Event),
            ("px".to_string(), PayloadFormat::Pixel)
        ]
    );
    assert_eq!(s.pipeline.policy.pixel_token_param, "t");
    assert_eq!(
        s.pipeline.policy.event_token_pointers[0].tokens(),
        ["a/b", "0"]
    );
    assert_eq!(s.pipeline.direction, Direction::Enrich);

    let e = err(&minimal("[pipeline.formats]\nbid-request = \"pixel\"\n"));
    assert!(
        e.contains("not in `input_topics`") && e.contains("did you mean `bid-requests`?"),
        "{e}"
    );
    let e = err(&minimal("[pipeline]\nformat = \"pixle\"\n"));
    assert!(
        e.contains("x.toml:4:10") && e.contains("did you mean \"pixel\"?"),
        "{e}"
    );
    let e = err(&minimal(
        "[pipeline]\nevent_token_pointers = [\"uid2_token\"]\n",
    ));
    assert!(
        e.contains("is not a JSON pointer") && e.contains("x.toml:4:25"),
        "{e}"
    );
    let e = err(&minimal("[pipeline]\ndirection = \"tokenise\"\n"));
    assert!(e.contains("did you mean \"tokenize\"?"), "{e}");
    let e = err(&minimal("[pipeline]\ndirection = \"tokenize\"\n"));
    assert!(e.contains("mode = \"sharing\""), "{e}");
    let sharing =
        |extra: &str| format!("[uid2]\nmode = \"sharing\"\nkeys_file = \"{KEYS_FILE}\"\n{extra}");
    let e = err(&sharing(
        "[pipeline]\ndirection = \"tokenize\"\nformat = \"pixel\"\n",
    ));
    assert!(e.contains("JSON inputs only"), "{e}");
    let s = parse_with_env(
        &sharing("[pipeline]\ndirection = \"tokenize\"\nformat = \"json\"\ntokenize_pointers = [\"/x/id\"]\n"),
        "x.toml",
        &no_env,
    )
    .unwrap();
    assert_eq!(s.pipeline.direction, Direction::Tokenize);
    assert_eq!(s.pipeline.tokenize.pointers[0].tokens(), ["x", "id"]);
}

#[test]
fn the_raw_structs_have_no_key_known_keys_lacks() {
    // serde lists a struct's fields when it meets one it does not know.
    for (table, keys) in KNOWN_KEYS {
        let text = match *table {
            "" => "not_a_key = 1\n".to_string(),
            "pipeline.sources" | "uid2.key_sources" => format!("[[{table}]]\nnot_a_key = 1\n"),
            t => format!("[{t}]\nnot_a_key = 1\n"),
        };
        let Err(e) = toml::from_str::<RawConfig>(&text) else {
            panic!("[{table}] accepted not_a_key");
        };
        let mut fields = parse_unknown_field(e.message())
            .unwrap_or_else(|| panic!("[{table}]: {e}"))
            .expected;
        fields.sort();
        let mut known = keys.to_vec();
        known.sort_unstable();
        assert_eq!(fields, known, "[{table}]");
    }
}

#[test]
fn known_keys_cover_the_raw_structs() {
    // Every key in KNOWN_KEYS must be accepted by stage 1.
    for (table, keys) in KNOWN_KEYS {
        if table.is_empty() || *table == "pipeline.sources" || *table == "uid2.key_sources" {
            continue;
        }
        for key in *keys {
            let value = match *key {
                "client" | "consumer" | "producer" | "formats" => "{}".to_string(),
                "input_topics"
                | "sources"
                | "key_sources"
                | "event_token_pointers"
                | "tokenize_pointers" => "[]".to_string(),
                "strict_json" | "enrich" => "true".to_string(),
                k if k.ends_with("_ms")
                    || k.ends_with("_secs")
                    || k == "max_in_flight"
                    || k == "transaction_max_records"
                    || k == "workers"
                    || k == "cache_entries" =>
                {
                    "1".to_string()
                }
                _ => "\"x\"".to_string(),
            };
            let text = format!("[{table}]\n{key} = {value}\n");
            let r = toml::from_str::<RawConfig>(&text);
            assert!(r.is_ok(), "{table}.{key}: {:?}", r.err());
        }
    }
}
