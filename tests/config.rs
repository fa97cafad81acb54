//! Configuration: the shipped files parse, every documented key exists, and every kind of mistake gets a
//! message with file:line:column and a fix. The process environment is never read or changed: secrets
//! are passed through `parse_with_env`.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use uid2_enricher::config::{
    self, ConfigError, KNOWN_KEYS, KeysFrom, LogFormat, RefreshSettings, Settings,
};
use uid2_enricher::enrich::PayloadFormat;
use uid2_enricher::uid2::{ClientMode, IdentityScope, KeySet};

const SECRET_B64: &str = "ioG3wKxAokmp+rERx6A4kM/13qhyolUXIu14WN16Spo=";
const API_KEY: &str = "UID2-C-L-999-fCXrMM.fsR3mDqAXELtWWMS+xG1s7RdgRTMqdOH2qaAo=";

fn no_env(_: &str) -> Option<String> {
    None
}

fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| map.get(name).cloned()
}

fn ok(text: &str) -> Settings {
    config::parse_with_env(text, "x.toml", &no_env).unwrap_or_else(|e| panic!("{e}"))
}

fn fails(text: &str) -> ConfigError {
    fails_with_env(text, &no_env)
}

fn fails_with_env(text: &str, env: &dyn Fn(&str) -> Option<String>) -> ConfigError {
    match config::parse_with_env(text, "x.toml", env) {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(e) => e,
    }
}

/// Asserts the message has the position `x.toml:line:col`, the same `position`, and every fragment.
fn assert_error(e: &ConfigError, line: usize, col: usize, fragments: &[&str]) {
    let message = e.to_string();
    assert!(
        message.contains(&format!("x.toml:{line}:{col}")),
        "expected x.toml:{line}:{col} in: {message}"
    );
    assert_eq!(e.position, Some((line, col)), "{message}");
    for f in fragments {
        assert!(message.contains(f), "expected {f:?} in: {message}");
    }
}

/// A valid [uid2] table on lines 1–2, so the line under test is line 3 or later.
const UID2: &str = "[uid2]\nkeys_file = \"config/demo-keys.json\"\n";

fn with_uid2(rest: &str) -> String {
    format!("{UID2}{rest}")
}

/// What the shipped production reference needs from the environment: the operator's credentials.
fn operator_env(name: &str) -> Option<String> {
    match name {
        "UID2_API_KEY" => Some("api-key".to_string()),
        "UID2_SECRET_KEY" => Some("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".to_string()),
        _ => None,
    }
}

#[test]
fn shipped_enricher_toml_parses_with_the_documented_values() {
    let s = config::load_with_env(Path::new("config/enricher.toml"), &operator_env)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.origin, "config/enricher.toml");
    assert_eq!(s.kafka.brokers, "127.0.0.1:9092");
    assert_eq!(s.kafka.group_id, "uid2-enricher");
    assert_eq!(s.kafka.input_topics, ["bid-requests"]);
    assert_eq!(s.kafka.output_topic, "bid-requests-enriched");
    assert_eq!(s.kafka.dlq_topic, "bid-requests-dlq");
    assert_eq!(s.kafka.consumer.get("session.timeout.ms"), Some("45000"));
    assert_eq!(s.kafka.consumer.get("auto.offset.reset"), Some("earliest"));
    assert_eq!(s.kafka.producer.get("linger.ms"), Some("5"));
    assert_eq!(s.uid2.mode, ClientMode::Bidstream);
    match &s.uid2.sources[0].from {
        KeysFrom::Operator { base_url, .. } => assert_eq!(base_url, "https://prod.uidapi.com"),
        other => panic!("expected the UID2 operator, got {other:?}"),
    }
    // The development config is the one with the demo keys.
    let dev = config::load_with_env(Path::new("config/dev.toml"), &no_env).unwrap();
    match &dev.uid2.sources[0].from {
        KeysFrom::File(path) => {
            assert!(path.is_absolute(), "{}", path.display());
            assert!(path.ends_with("config/demo-keys.json"));
        }
        other => panic!("expected the keys file, got {other:?}"),
    }
    assert_eq!(s.uid2.refresh, RefreshSettings::default());
    assert_eq!(s.optout.topic, "uid2-optouts");
    assert!(s.optout.token.is_none());
    assert_eq!(s.server.listen, "127.0.0.1:9898".parse().unwrap());
    assert_eq!(s.pipeline.format, PayloadFormat::Json);
    assert_eq!(s.pipeline.policy.mode, ClientMode::Bidstream);
    assert_eq!(s.pipeline.policy.member_name, "uid2_enrichment");
    assert!(!s.pipeline.policy.strict_json);
    let sources: Vec<(&str, IdentityScope)> = s
        .pipeline
        .policy
        .sources
        .iter()
        .map(|t| (t.name.as_str(), t.scope))
        .collect();
    assert_eq!(
        sources,
        [
            ("uidapi.com", IdentityScope::Uid2),
            ("euid.eu", IdentityScope::Euid)
        ]
    );
    assert_eq!(s.pipeline.max_in_flight, 10_000);
    assert_eq!(
        s.pipeline.workers,
        std::thread::available_parallelism().map_or(1, usize::from)
    );
    assert_eq!(s.pipeline.cache_entries, 0);
    assert_eq!(s.pipeline.drain_timeout, Duration::from_millis(2500));
    assert_eq!(s.pipeline.shutdown_timeout, Duration::from_millis(8000));
    assert!(s.pipeline.enrich);
    assert_eq!(s.log.format, LogFormat::Human);
    assert_eq!(s.log.level, "info");
}

#[test]
fn shipped_values_are_the_defaults() {
    // The file documents each value as the default: a config with only a key source must agree.
    let shipped = config::load_with_env(Path::new("config/enricher.toml"), &operator_env).unwrap();
    let minimal = ok(UID2);
    assert_eq!(
        format!("{:?}", minimal.kafka.brokers),
        format!("{:?}", shipped.kafka.brokers)
    );
    assert_eq!(minimal.kafka.input_topics, shipped.kafka.input_topics);
    assert_eq!(minimal.kafka.output_topic, shipped.kafka.output_topic);
    assert_eq!(minimal.kafka.dlq_topic, shipped.kafka.dlq_topic);
    assert_eq!(minimal.kafka.group_id, shipped.kafka.group_id);
    assert_eq!(minimal.uid2.mode, shipped.uid2.mode);
    assert_eq!(minimal.uid2.refresh, shipped.uid2.refresh);
    assert_eq!(minimal.optout.topic, shipped.optout.topic);
    assert_eq!(minimal.server.listen, shipped.server.listen);
    assert_eq!(minimal.pipeline.format, shipped.pipeline.format);
    assert_eq!(
        format!("{:?}", minimal.pipeline.policy),
        format!("{:?}", shipped.pipeline.policy)
    );
    assert_eq!(
        minimal.pipeline.max_in_flight,
        shipped.pipeline.max_in_flight
    );
    assert_eq!(minimal.pipeline.workers, shipped.pipeline.workers);
    assert_eq!(
        minimal.pipeline.cache_entries,
        shipped.pipeline.cache_entries
    );
    assert_eq!(
        minimal.pipeline.drain_timeout,
        shipped.pipeline.drain_timeout
    );
    assert_eq!(
        minimal.pipeline.shutdown_timeout,
        shipped.pipeline.shutdown_timeout
    );
    assert_eq!(minimal.pipeline.enrich, shipped.pipeline.enrich);
    assert_eq!(minimal.log.format, shipped.log.format);
    assert_eq!(minimal.log.level, shipped.log.level);
    assert!(minimal.kafka.consumer.is_empty() && minimal.kafka.producer.is_empty());
}

#[test]
fn shipped_enricher_toml_documents_every_key() {
    let text = std::fs::read_to_string("config/enricher.toml").unwrap();
    for (table, keys) in KNOWN_KEYS {
        if !table.is_empty() {
            assert!(
                text.contains(&format!("[{table}]")),
                "config/enricher.toml lacks [{table}]"
            );
        }
        for key in *keys {
            if table.is_empty() || (*table == "kafka" && (*key == "consumer" || *key == "producer"))
            {
                continue;
            }
            if *table == "pipeline" && *key == "sources" {
                assert!(text.contains("[[pipeline.sources]]"));
                continue;
            }
            if *table == "uid2" && *key == "key_sources" {
                assert!(text.contains("[[uid2.key_sources]]"));
                continue;
            }
            let set = text.lines().any(|l| {
                l.trim_start_matches(['#', ' '])
                    .starts_with(&format!("{key} ="))
            });
            assert!(
                set,
                "config/enricher.toml does not show `{key}` of [{table}]"
            );
        }
    }
}

#[test]
fn shipped_dev_toml_parses() {
    let s = config::load_with_env(Path::new("config/dev.toml"), &no_env)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.kafka.brokers, "127.0.0.1:9092");
    assert_eq!(s.server.listen, "127.0.0.1:9898".parse().unwrap());
    assert!(
        matches!(&s.uid2.sources[0].from, KeysFrom::File(p) if p.ends_with("config/demo-keys.json"))
    );
}

#[test]
fn demo_keys_are_a_usable_bidstream_key_set() {
    let keys = KeySet::parse_json(&std::fs::read("config/demo-keys.json").unwrap()).unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys.identity_scope, IdentityScope::Uid2);
    // Valid until 2050-01-01.
    assert!(keys.is_valid(2_524_607_999_000));
    assert!(!keys.is_valid(2_524_608_000_000));
    assert!(keys.is_domain_or_app_name_allowed(9000, Some("example.com")));
    assert!(keys.site_count() >= 1);
}

#[test]
fn unknown_keys_get_a_suggestion_and_the_valid_keys() {
    let e = fails(&with_uid2("[kafka]\nbrokerz = \"127.0.0.1:9092\"\n"));
    assert_error(
        &e,
        4,
        1,
        &[
            "unknown key `brokerz` in [kafka]",
            "did you mean `brokers`?",
            "(valid keys: brokers, group_id, input_topics, output_topic, dlq_topic, client, consumer, producer)",
        ],
    );

    let e = fails(&with_uid2("[pipeline]\nmax_inflight = 5\n"));
    assert_error(
        &e,
        4,
        1,
        &[
            "`max_inflight` in [pipeline]",
            "did you mean `max_in_flight`?",
        ],
    );

    let e = fails(&with_uid2("[kafak]\nbrokers = \"x\"\n"));
    assert_error(
        &e,
        3,
        2,
        &["unknown top-level key `kafak`", "did you mean [kafka]?"],
    );

    // The right key in the wrong table.
    let e = fails(&with_uid2("[server]\nbrokers = \"x\"\n"));
    assert_error(
        &e,
        4,
        1,
        &[
            "unknown key `brokers` in [server]",
            "`brokers` belongs in [kafka]",
        ],
    );

    // Inside an array of tables and an inline table.
    let e = fails(&with_uid2(
        "[[pipeline.sources]]\nname = \"uidapi.com\"\nscop = \"UID2\"\n",
    ));
    assert_error(
        &e,
        5,
        1,
        &[
            "unknown key `scop` in [pipeline.sources]",
            "did you mean `scope`?",
        ],
    );
    let e = fails(&with_uid2(
        "[pipeline]\nsources = [{ name = \"a\", scope = \"UID2\" }, { name = \"b\", scpoe = \"EUID\" }]\n",
    ));
    assert_error(&e, 4, 58, &["`scpoe`", "did you mean `scope`?"]);

    // Nothing close: no suggestion, but the list.
    let e = fails(&with_uid2("[optout]\nwebhook = true\n"));
    assert_error(
        &e,
        4,
        1,
        &["unknown key `webhook` in [optout]", "(valid keys: topic)"],
    );
    assert!(!e.to_string().contains("did you mean"), "{e}");
}

#[test]
fn bad_enum_values_suggest_the_valid_ones() {
    let e = fails("[uid2]\nkeys_file = \"config/demo-keys.json\"\nmode = \"bidstreem\"\n");
    assert_error(
        &e,
        3,
        8,
        &[
            "`mode` in [uid2] is `bidstreem`",
            "did you mean \"bidstream\"?",
            "\"bidstream\" or \"sharing\"",
        ],
    );
    let e = fails(&with_uid2("[pipeline]\nformat = \"protobuff\"\n"));
    assert_error(&e, 4, 10, &["did you mean \"protobuf\"?"]);
    let e = fails(&with_uid2("[log]\nformat = \"text\"\n"));
    assert_error(
        &e,
        4,
        10,
        &["`format` in [log] is `text`", "\"human\" or \"json\""],
    );
    let e = fails(&with_uid2(
        "[[pipeline.sources]]\nname = \"uidapi.com\"\nscope = \"uid2\"\n",
    ));
    assert_error(
        &e,
        5,
        9,
        &["`scope` of source `uidapi.com`", "did you mean \"UID2\"?"],
    );
    let e = fails(&with_uid2("[log]\nlevel = \"infoo\"\n"));
    assert_error(
        &e,
        4,
        9,
        &["`level` in [log] is `infoo`", "did you mean `info`?"],
    );
    let e = fails(&with_uid2("[log]\nlevel = \"info,a=b=c\"\n"));
    assert_error(&e, 4, 9, &["not a log filter", "EnvFilter"]);
    // A per-target filter is fine.
    assert_eq!(
        ok(&with_uid2("[log]\nlevel = \"warn,uid2_enricher=debug\"\n"))
            .log
            .level,
        "warn,uid2_enricher=debug"
    );
}

#[test]
fn bad_values_say_what_and_how() {
    let e = fails(&with_uid2("[server]\nlisten = \"localhost:9898\"\n"));
    assert_error(
        &e,
        4,
        10,
        &[
            "`listen` in [server] is `localhost:9898`, which is not a socket address",
            "127.0.0.1:9898",
        ],
    );

    let e = fails(&with_uid2("[pipeline]\nmax_in_flight = 0\n"));
    assert_error(
        &e,
        4,
        17,
        &["`max_in_flight` in [pipeline] is 0", "use 1 to"],
    );

    let e = fails(&with_uid2("[pipeline]\nmax_in_flight = \"many\"\n"));
    assert_error(
        &e,
        4,
        17,
        &[
            "expected u64",
            "`max_in_flight` in [pipeline]",
            "whole number without quotes",
        ],
    );

    let e = fails(&with_uid2("[pipeline]\nenrich = \"yes\"\n"));
    assert_error(&e, 4, 10, &["`enrich` in [pipeline]", "true or false"]);

    let e = fails(&with_uid2("[pipeline]\nshutdown_timeout_ms = 0\n"));
    assert_error(&e, 4, 23, &["`shutdown_timeout_ms` in [pipeline] is 0"]);

    let e = fails(&with_uid2("[pipeline]\nmember_name = \"uid2 \\\"x\\\"\"\n"));
    assert_error(&e, 4, 15, &["`member_name`", "written into JSON"]);

    let e = fails(&with_uid2("[kafka]\ninput_topics = \"bid-requests\"\n"));
    assert_error(
        &e,
        4,
        16,
        &["expected a sequence", "input_topics = [\"bid-requests\"]"],
    );

    let e = fails(&with_uid2("[kafka]\ninput_topics = []\n"));
    assert_error(&e, 4, 16, &["`input_topics` in [kafka] is empty"]);

    let e = fails(&with_uid2("[kafka]\noutput_topic = \"bid requests\"\n"));
    assert_error(
        &e,
        4,
        16,
        &["not a valid Kafka topic name", "a-z A-Z 0-9 . _ -"],
    );

    let e = fails(&with_uid2("[kafka]\noutput_topic = \"bid-requests\"\n"));
    assert_error(
        &e,
        4,
        16,
        &["also an input topic", "consume its own output"],
    );

    let e = fails(&with_uid2(
        "[kafka]\ndlq_topic = \"bid-requests-enriched\"\n",
    ));
    assert_error(&e, 4, 13, &["same topic as `output_topic`"]);

    let e = fails(&with_uid2("[optout]\ntopic = \"bid-requests\"\n"));
    assert_error(
        &e,
        4,
        9,
        &["`topic` in [optout]", "compacted topic of its own"],
    );

    let e = fails(&with_uid2("[pipeline]\nsources = []\n"));
    assert_error(&e, 4, 11, &["`sources` in [pipeline] is empty"]);

    let e = fails(&with_uid2(
        "[[pipeline.sources]]\nname = \"a.com\"\nscope = \"UID2\"\n[[pipeline.sources]]\nname = \"a.com\"\nscope = \"EUID\"\n",
    ));
    assert_error(&e, 7, 8, &["source `a.com` appears twice"]);

    let e = fails(&with_uid2("[[pipeline.sources]]\nname = \"uidapi.com\"\n"));
    assert_error(
        &e,
        3,
        1,
        &["missing field `scope`", "needs both name and scope"],
    );
}

#[test]
fn refresh_timing_is_checked() {
    let e = fails(&with_uid2("refresh_interval_secs = 0\n"));
    assert_error(&e, 3, 25, &["`refresh_interval_secs` in [uid2] is 0"]);
    let e = fails(&with_uid2(
        "refresh_interval_secs = 60\nrefresh_jitter_secs = 60\n",
    ));
    assert_error(
        &e,
        4,
        23,
        &["`refresh_jitter_secs` in [uid2] is 60", "must be smaller"],
    );
    let e = fails(&with_uid2(
        "retry_initial_backoff_ms = 5000\nretry_max_backoff_ms = 1000\n",
    ));
    assert_error(
        &e,
        4,
        24,
        &[
            "less than retry_initial_backoff_ms (5000)",
            "at least the initial",
        ],
    );
    let e = fails(&with_uid2("request_timeout_ms = 0\n"));
    assert_error(&e, 3, 22, &["`request_timeout_ms` in [uid2] is 0"]);

    let s = ok(&with_uid2(
        "refresh_interval_secs = 60\nrefresh_jitter_secs = 5\nretry_initial_backoff_ms = 100\nretry_max_backoff_ms = 800\nrequest_timeout_ms = 2000\n",
    ));
    assert_eq!(
        s.uid2.refresh,
        RefreshSettings {
            interval: Duration::from_secs(60),
            jitter: Duration::from_secs(5),
            retry_initial_backoff: Duration::from_millis(100),
            retry_max_backoff: Duration::from_millis(800),
            request_timeout: Duration::from_secs(2),
        }
    );
    // A short interval without an explicit jitter gets a jitter that fits.
    let s = ok(&with_uid2("refresh_interval_secs = 10\n"));
    assert!(s.uid2.refresh.jitter < s.uid2.refresh.interval);
}

#[test]
fn key_source_must_be_exactly_one_existing_source() {
    let e = fails(
        "[uid2]\nkeys_file = \"config/demo-keys.json\"\nbase_url = \"https://prod.uidapi.com\"\n",
    );
    assert_error(
        &e,
        3,
        12,
        &[
            "sets both `keys_file` (at x.toml:2:13) and `base_url`",
            "choose one key source",
        ],
    );

    let e = fails("[uid2]\nmode = \"sharing\"\n");
    assert_error(
        &e,
        1,
        1,
        &["[uid2] has no key source", "keys_file =", "base_url ="],
    );

    let e = fails("[server]\nlisten = \"127.0.0.1:1\"\n");
    assert!(
        e.to_string()
            .starts_with("x.toml: there is no [uid2] table"),
        "{e}"
    );
    assert!(e.to_string().contains("keys_file = "), "{e}");

    let e = fails("[uid2]\nkeys_file = \"config/no-such-keys.json\"\n");
    assert_error(
        &e,
        2,
        13,
        &[
            "`keys_file` in [uid2] is `config/no-such-keys.json`, which cannot be read",
            "relative paths resolve against the current directory",
            "fix the path",
        ],
    );

    let e = fails("[uid2]\nkeys_file = \"config\"\n");
    assert_error(&e, 2, 13, &["not a regular file"]);
}

#[test]
fn operator_credentials_come_from_the_environment() {
    let text = "[uid2]\nbase_url = \"https://prod.uidapi.com/\"\n";

    let e = fails_with_env(text, &no_env);
    let m = e.to_string();
    assert!(
        m.contains("`base_url` is set in [uid2] at x.toml:2:12"),
        "{m}"
    );
    assert!(m.contains("UID2_API_KEY is not set"), "{m}");
    assert!(m.contains("export UID2_API_KEY="), "{m}");

    let e = fails_with_env(text, &env_of(&[("UID2_API_KEY", API_KEY)]));
    assert!(e.to_string().contains("UID2_SECRET_KEY is not set"), "{e}");

    let e = fails_with_env(
        text,
        &env_of(&[
            ("UID2_API_KEY", API_KEY),
            ("UID2_SECRET_KEY", "not base64!"),
        ]),
    );
    assert!(
        e.to_string()
            .contains("UID2_SECRET_KEY is not standard base64"),
        "{e}"
    );
    assert!(e.to_string().contains("base64 of 32 bytes"), "{e}");
    assert!(
        !e.to_string().contains("not base64!"),
        "the value must not be echoed: {e}"
    );

    let e = fails_with_env(
        text,
        &env_of(&[
            ("UID2_API_KEY", API_KEY),
            ("UID2_SECRET_KEY", "AAAAAAAAAAAAAAAAAAAAAA=="),
        ]),
    );
    assert!(
        e.to_string()
            .contains("decodes to 16 bytes, but a UID2 client secret is 32 bytes"),
        "{e}"
    );

    let e = fails_with_env(
        text,
        &env_of(&[("UID2_API_KEY", ""), ("UID2_SECRET_KEY", SECRET_B64)]),
    );
    assert!(
        e.to_string().contains("UID2_API_KEY is set but empty"),
        "{e}"
    );

    let env = env_of(&[
        ("UID2_API_KEY", API_KEY),
        ("UID2_SECRET_KEY", SECRET_B64),
        ("UID2_OPTOUT_TOKEN", "optout-bearer-token-value"),
    ]);
    let s = config::parse_with_env(text, "x.toml", &env).unwrap();
    match &s.uid2.sources[0].from {
        KeysFrom::Operator {
            base_url,
            api_key,
            secret,
        } => {
            assert_eq!(base_url, "https://prod.uidapi.com");
            assert_eq!(api_key.expose(), API_KEY);
            assert_eq!(
                secret.expose().bytes(),
                &<[u8; 32]>::try_from(
                    uid2_enricher::uid2::wire::decode_standard(SECRET_B64).unwrap()
                )
                .unwrap()
            );
            assert_eq!(format!("{api_key} {api_key:?}"), "<redacted> <redacted>");
        }
        other => panic!("expected operator keys, got {other:?}"),
    }
    assert_eq!(
        s.optout.token.as_ref().map(|t| t.expose().as_str()),
        Some("optout-bearer-token-value")
    );
    // Nothing secret in the debug output of the whole configuration.
    let debug = format!("{s:?}");
    for secret in [API_KEY, SECRET_B64, "optout-bearer-token-value"] {
        assert!(!debug.contains(secret), "secret leaked in {debug}");
    }
    assert!(
        s.uid2.sources[0]
            .from
            .describe()
            .contains("https://prod.uidapi.com")
    );
}

#[test]
fn operator_url_must_be_https_or_loopback() {
    let env = env_of(&[("UID2_API_KEY", API_KEY), ("UID2_SECRET_KEY", SECRET_B64)]);
    let e = fails_with_env("[uid2]\nbase_url = \"http://operator.example\"\n", &env);
    assert_error(&e, 2, 12, &["plain http", "use https://"]);
    let e = fails_with_env("[uid2]\nbase_url = \"prod.uidapi.com\"\n", &env);
    assert_error(&e, 2, 12, &["not a URL", "https://prod.uidapi.com"]);
    let e = fails_with_env(
        "[uid2]\nbase_url = \"https://prod.uidapi.com/?x=1\"\n",
        &env,
    );
    assert_error(&e, 2, 12, &["just the operator's origin"]);
    for local in [
        "http://127.0.0.1:8080",
        "http://localhost:1",
        "http://[::1]:9",
    ] {
        let s =
            config::parse_with_env(&format!("[uid2]\nbase_url = \"{local}\"\n"), "x.toml", &env)
                .unwrap_or_else(|e| panic!("{local}: {e}"));
        assert!(matches!(s.uid2.sources[0].from, KeysFrom::Operator { .. }));
    }
}

#[test]
fn secrets_in_the_file_are_rejected_without_echoing_them() {
    let cases = [
        (
            "api_key = \"sk-live-123\"\n",
            "`api_key` in [uid2]",
            "UID2_API_KEY",
        ),
        (
            "secret_key = \"sk-live-123\"\n",
            "`secret_key` in [uid2]",
            "UID2_SECRET_KEY",
        ),
        (
            "secret = \"sk-live-123\"\n",
            "`secret` in [uid2]",
            "UID2_SECRET_KEY",
        ),
    ];
    for (line, what, var) in cases {
        let e = fails(&with_uid2(line));
        assert_error(
            &e,
            3,
            1,
            &[
                what,
                "looks like a secret",
                &format!("set the environment variable {var}"),
            ],
        );
        assert!(!e.to_string().contains("sk-live-123"), "{e}");
    }
    let e = fails(&with_uid2("[optout]\ntoken = \"sk-live-123\"\n"));
    assert_error(&e, 4, 1, &["`token` in [optout]", "UID2_OPTOUT_TOKEN"]);
    // Even next to other mistakes, the secret is what gets reported, and it is never echoed.
    let e = fails("[kafka]\nbrokerz = 1\n[uid2]\nsecret_key = \"sk-live-123\"\n");
    assert_error(&e, 4, 1, &["UID2_SECRET_KEY"]);
    assert!(!e.to_string().contains("sk-live-123"), "{e}");
}

#[test]
fn pass_through_values_become_strings() {
    let s = ok(&with_uid2(
        "[kafka.consumer]\n\"session.timeout.ms\" = 6000\n\"auto.offset.reset\" = \"earliest\"\n\"check.crcs\" = true\n\"queued.max.messages.kbytes\" = 65536\nfetch.wait.max.ms = 50\n\n[kafka.producer]\n\"batch.num.messages\" = 10000\n\"compression.type\" = \"zstd\"\n\"retry.backoff.ms\" = 100\n\"queue.buffering.backpressure.threshold\" = 1\nsticky.partitioning.linger.ms = 0.5\n",
    ));
    let consumer: Vec<(&str, &str)> = s.kafka.consumer.iter().collect();
    assert_eq!(
        consumer,
        [
            ("auto.offset.reset", "earliest"),
            ("check.crcs", "true"),
            ("fetch.wait.max.ms", "50"),
            ("queued.max.messages.kbytes", "65536"),
            ("session.timeout.ms", "6000"),
        ]
    );
    assert_eq!(s.kafka.producer.get("compression.type"), Some("zstd"));
    assert_eq!(s.kafka.producer.get("batch.num.messages"), Some("10000"));
    assert_eq!(
        s.kafka.producer.get("sticky.partitioning.linger.ms"),
        Some("0.5")
    );
    assert_eq!(s.kafka.producer.len(), 5);

    let e = fails(&with_uid2("[kafka.producer]\n\"linger.ms\" = [5]\n"));
    assert_error(
        &e,
        4,
        1,
        &[
            "`linger.ms` in [kafka.producer] has an array value",
            "comma-separated string",
        ],
    );
    let e = fails(&with_uid2("[kafka.consumer]\n\"x.y\" = 1979-05-27\n"));
    assert_error(&e, 4, 1, &["a date-time value"]);
}

#[test]
fn pass_through_cannot_override_what_the_stage_owns() {
    let cases = [
        (
            "consumer",
            "\"group.id\" = \"other\"",
            "`group_id` in [kafka]",
        ),
        (
            "consumer",
            "\"bootstrap.servers\" = \"h:9092\"",
            "`brokers` in [kafka]",
        ),
        (
            "producer",
            "\"bootstrap.servers\" = \"h:9092\"",
            "`brokers` in [kafka]",
        ),
        (
            "consumer",
            "\"enable.auto.offset.store\" = true",
            "must stay false",
        ),
        (
            "producer",
            "\"enable.idempotence\" = false",
            "must stay true",
        ),
        ("producer", "enable.idempotence = true", "must stay true"),
    ];
    for (table, line, hint) in cases {
        let e = fails(&with_uid2(&format!("[kafka.{table}]\n{line}\n")));
        assert_error(&e, 4, 1, &["is set by the stage itself", hint]);
    }
    let e = fails(&with_uid2("[kafka.client]\n\"group.id\" = \"other\"\n"));
    assert_error(
        &e,
        4,
        1,
        &["is set by the stage itself", "`group_id` in [kafka]"],
    );
    // Secret-bearing librdkafka properties come from the environment, and are hidden from Debug.
    let s = config::parse_with_env(
        &with_uid2("[kafka.consumer]\n\"sasl.password\" = \"${KAFKA_SASL_PASSWORD}\"\n"),
        "x.toml",
        &env_of(&[("KAFKA_SASL_PASSWORD", "pw-123")]),
    )
    .unwrap();
    assert_eq!(s.kafka.consumer.get("sasl.password"), Some("pw-123"));
    assert!(!format!("{s:?}").contains("pw-123"));
}

#[test]
fn syntax_errors_have_a_position() {
    let e = fails("[uid2]\nkeys_file = config/demo-keys.json\n");
    assert_error(&e, 2, 13, &["TOML syntax error", "double quotes"]);
    let e = fails(&with_uid2("[kafka\n"));
    assert!(e.to_string().contains("x.toml:3:"), "{e}");
    let e = fails(&with_uid2("[uid2]\nmode = \"sharing\"\n"));
    assert!(e.to_string().contains("TOML syntax error"), "{e}");
}

#[test]
fn load_names_the_file() {
    let e = config::load_with_env(Path::new("config/missing.toml"), &no_env).unwrap_err();
    assert!(
        e.to_string()
            .contains("cannot read config file config/missing.toml"),
        "{e}"
    );
    assert!(e.to_string().contains("--config"), "{e}");

    let dir = std::env::temp_dir().join(format!("uid2-enricher-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        "[uid2]\nkeys_file = \"config/demo-keys.json\"\n[kafka]\ngroupid = \"g\"\n",
    )
    .unwrap();
    let e = config::load_with_env(&path, &no_env).unwrap_err();
    assert!(
        e.to_string().contains(&format!("{}:4:1", path.display())),
        "{e}"
    );
    assert!(e.to_string().contains("did you mean `group_id`?"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn other_choices_parse() {
    let s = ok(
        "[uid2]\nmode = \"sharing\"\nkeys_file = \"config/demo-keys.json\"\n[pipeline]\nformat = \"protobuf\"\nworkers = 3\ncache_entries = 5000\nenrich = false\nstrict_json = true\nsources = [{ name = \"uidapi.com\", scope = \"UID2\" }]\n[log]\nformat = \"json\"\n[server]\nlisten = \"[::1]:9000\"\n[kafka]\ninput_topics = [\"a\", \"b\"]\n",
    );
    assert_eq!(s.uid2.mode, ClientMode::Sharing);
    assert_eq!(s.pipeline.policy.mode, ClientMode::Sharing);
    assert_eq!(s.pipeline.format, PayloadFormat::Protobuf);
    assert_eq!(s.pipeline.workers, 3);
    assert_eq!(s.pipeline.cache_entries, 5000);
    assert!(!s.pipeline.enrich);
    assert!(s.pipeline.policy.strict_json);
    assert_eq!(s.pipeline.policy.sources.len(), 1);
    assert_eq!(s.log.format, LogFormat::Json);
    assert_eq!(s.server.listen, "[::1]:9000".parse().unwrap());
    assert_eq!(s.kafka.input_topics, ["a", "b"]);
}

#[test]
fn key_sources_one_per_operator_with_their_own_credential_variables() {
    let text = "[uid2]\n\
        [[uid2.key_sources]]\nscope = \"UID2\"\nbase_url = \"https://prod.uidapi.com\"\n\
        [[uid2.key_sources]]\nscope = \"EUID\"\nbase_url = \"https://prod.euid.eu\"\n\
        [[uid2.key_sources]]\n";
    let two = &text[..text.len() - "[[uid2.key_sources]]\n".len()];
    let env = env_of(&[
        ("UID2_API_KEY", API_KEY),
        ("UID2_SECRET_KEY", SECRET_B64),
        ("EUID_API_KEY", "EUID-C-L-1-key"),
        ("EUID_SECRET_KEY", SECRET_B64),
    ]);
    let s = config::parse_with_env(two, "x.toml", &env).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<(&str, Option<IdentityScope>)> = s
        .uid2
        .sources
        .iter()
        .map(|k| (k.name.as_str(), k.scope))
        .collect();
    assert_eq!(
        names,
        [
            ("uid2", Some(IdentityScope::Uid2)),
            ("euid", Some(IdentityScope::Euid))
        ]
    );
    match &s.uid2.sources[1].from {
        KeysFrom::Operator {
            base_url, api_key, ..
        } => {
            assert_eq!(base_url, "https://prod.euid.eu");
            assert_eq!(api_key.expose(), "EUID-C-L-1-key");
        }
        other => panic!("expected the EUID operator, got {other:?}"),
    }
    // The EUID source's credentials by default in EUID_API_KEY / EUID_SECRET_KEY, named in the error.
    let e = fails_with_env(
        two,
        &env_of(&[("UID2_API_KEY", API_KEY), ("UID2_SECRET_KEY", SECRET_B64)]),
    );
    let message = e.to_string();
    assert!(
        message.contains("[[uid2.key_sources]] `euid`")
            && message.contains("EUID_API_KEY is not set")
            && message.contains("EUID portal"),
        "{message}"
    );
    // Named variables instead of the defaults.
    let named = two.replace(
        "base_url = \"https://prod.euid.eu\"\n",
        "base_url = \"https://prod.euid.eu\"\napi_key_env = \"EU_KEY\"\nsecret_key_env = \"EU_SECRET\"\n",
    );
    let s = config::parse_with_env(
        &named,
        "x.toml",
        &env_of(&[
            ("UID2_API_KEY", API_KEY),
            ("UID2_SECRET_KEY", SECRET_B64),
            ("EU_KEY", "eu-key"),
            ("EU_SECRET", SECRET_B64),
        ]),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        matches!(&s.uid2.sources[1].from, KeysFrom::Operator { api_key, .. } if api_key.expose() == "eu-key")
    );
    // A value where a variable name belongs (often the credential itself): refused, and not echoed.
    let e = fails_with_env(&named.replace("\"EU_KEY\"", "\"eu key=abc\""), &env);
    assert_error(&e, 8, 15, &["not an environment variable name"]);
    assert!(!e.to_string().contains("eu key=abc"), "{e}");
    let e = fails_with_env(&named.replace("\"EU_KEY\"", "\"${EUID_API_KEY}\""), &env);
    assert!(
        e.to_string().contains("not an environment variable name")
            && !e.to_string().contains("EUID-C-L-1-key"),
        "{e}"
    );
    let e = fails_with_env(
        &two.replace(
            "scope = \"EUID\"\n",
            "scope = \"EUID\"\napi_key = \"EUID-C-L-1-key\"\n",
        ),
        &env,
    );
    assert!(
        e.to_string().contains("looks like a secret")
            && e.to_string().contains("api_key_env")
            && !e.to_string().contains("C-L-1-key"),
        "{e}"
    );
    // An EUID source needs an eid source of scope EUID to look its tokens up in.
    let e = fails_with_env(
        &format!("{two}[[pipeline.sources]]\nname = \"uidapi.com\"\nscope = \"UID2\"\n"),
        &env,
    );
    assert!(
        e.to_string()
            .contains("no [[pipeline.sources]] entry has scope = \"EUID\"")
            && e.to_string().contains("euid.eu"),
        "{e}"
    );
}

#[test]
fn key_sources_are_checked_entry_by_entry() {
    let env = env_of(&[
        ("UID2_API_KEY", API_KEY),
        ("UID2_SECRET_KEY", SECRET_B64),
        ("EUID_API_KEY", API_KEY),
        ("EUID_SECRET_KEY", SECRET_B64),
    ]);
    let file = "keys_file = \"config/demo-keys.json\"\n";
    // Two sources for one scope.
    let e = fails_with_env(
        &format!(
            "[uid2]\n[[uid2.key_sources]]\nscope = \"UID2\"\n{file}[[uid2.key_sources]]\nscope = \"UID2\"\nname = \"b\"\n{file}"
        ),
        &env,
    );
    assert_error(&e, 6, 9, &["two [[uid2.key_sources]] entries serve UID2"]);
    // Both forms at once.
    let e = fails_with_env(
        &format!("[uid2]\n{file}[[uid2.key_sources]]\nscope = \"UID2\"\n{file}"),
        &env,
    );
    assert_error(&e, 2, 13, &["lists [[uid2.key_sources]] too", "one form"]);
    // A scope that is not one.
    let e = fails_with_env(
        &format!("[uid2]\n[[uid2.key_sources]]\nscope = \"EUDI\"\n{file}"),
        &env,
    );
    assert_error(&e, 3, 9, &["did you mean \"EUID\"?"]);
    // Neither keys_file nor base_url; both; credentials for a file.
    let e = fails_with_env("[uid2]\n[[uid2.key_sources]]\nscope = \"EUID\"\n", &env);
    assert!(
        e.to_string().contains("has no `keys_file` or `base_url`")
            && e.to_string().contains("https://prod.euid.eu"),
        "{e}"
    );
    let e = fails_with_env(
        &format!(
            "[uid2]\n[[uid2.key_sources]]\nscope = \"EUID\"\n{file}base_url = \"https://prod.euid.eu\"\n"
        ),
        &env,
    );
    assert!(e.to_string().contains("sets both"), "{e}");
    let e = fails_with_env(
        &format!(
            "[uid2]\n[[uid2.key_sources]]\nscope = \"EUID\"\n{file}api_key_env = \"EUID_API_KEY\"\n"
        ),
        &env,
    );
    assert_error(&e, 5, 15, &["needs no credentials"]);
    // A missing keys file names the entry.
    let e = fails_with_env(
        "[uid2]\n[[uid2.key_sources]]\nscope = \"EUID\"\nkeys_file = \"no/such/euid.json\"\n",
        &env,
    );
    assert!(
        e.to_string()
            .contains("`keys_file` in [[uid2.key_sources]] `euid`"),
        "{e}"
    );
    // The tokenize direction encrypts with one key set.
    let e = fails_with_env(
        &format!(
            "[uid2]\nmode = \"sharing\"\n[[uid2.key_sources]]\nscope = \"UID2\"\n{file}[[uid2.key_sources]]\nscope = \"EUID\"\n{file}[pipeline]\ndirection = \"tokenize\"\nformat = \"json\"\n"
        ),
        &env,
    );
    assert!(
        e.to_string().contains("makes tokens with one key set"),
        "{e}"
    );
    // The single form keeps its name and answers every scope.
    let s = ok(UID2);
    assert_eq!(s.uid2.sources.len(), 1);
    assert_eq!(
        (s.uid2.sources[0].name.as_str(), s.uid2.sources[0].scope),
        ("uid2", None)
    );
}

#[test]
fn commands_without_operator_credentials_take_any_source_variables() {
    let dir = std::env::temp_dir().join(format!("uid2-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("two.toml");
    std::fs::write(
        &path,
        "[uid2]\n[[uid2.key_sources]]\nscope = \"UID2\"\nbase_url = \"https://prod.uidapi.com\"\n\
         [[uid2.key_sources]]\nscope = \"EUID\"\nbase_url = \"https://prod.euid.eu\"\napi_key_env = \"UNSET_EUID_KEY_FOR_TEST\"\n",
    )
    .unwrap();
    let s = config::load_without_operator_credentials(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.uid2.sources.len(), 2);
    assert!(config::load_with_env(&path, &no_env).is_err());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn exactly_once_delivery_needs_a_transactional_id() {
    use uid2_enricher::config::Delivery;
    assert_eq!(ok(UID2).pipeline.delivery, Delivery::AtLeastOnce);
    let e = fails(&with_uid2("[pipeline]\ndelivery = \"exactly_once\"\n"));
    assert_error(&e, 4, 12, &["needs `transactional_id`", "${POD_NAME}"]);
    let e = fails(&with_uid2("[pipeline]\ndelivery = \"exactly-once\"\n"));
    assert_error(&e, 4, 12, &["did you mean \"exactly_once\"?"]);
    let e = fails(&with_uid2("[pipeline]\ntransactional_id = \"a\"\n"));
    assert_error(&e, 4, 20, &["applies to delivery = \"exactly_once\" only"]);
    let e = fails(&with_uid2(
        "[pipeline]\ndelivery = \"exactly_once\"\ntransactional_id = \"a\"\ntransaction_max_ms = 60000\n",
    ));
    assert_error(&e, 6, 22, &["over 30000"]);
    let e = fails(&with_uid2(
        "[kafka.producer]\n\"transactional.id\" = \"x\"\n",
    ));
    assert!(
        e.to_string()
            .contains("set `transactional_id` in [pipeline]"),
        "{e}"
    );
    let s = config::parse_with_env(
        &with_uid2("[pipeline]\ndelivery = \"exactly_once\"\ntransactional_id = \"${POD_NAME}\"\ntransaction_max_records = 200\n"),
        "x.toml",
        &env_of(&[("POD_NAME", "enricher-3")]),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    match s.pipeline.delivery {
        Delivery::ExactlyOnce(t) => {
            assert_eq!(t.transactional_id, "enricher-3");
            assert_eq!(t.max_records, 200);
            assert_eq!(t.max_duration, Duration::from_millis(100));
        }
        other => panic!("{other:?}"),
    }
}
