//! What the configuration reads: the tables and keys of the file and their defaults, the librdkafka
//! properties the stage owns, the keys refused as secrets, and the environment variables they point to.

use std::fmt;

use Value::{Bool, Int, Str, Strs};

/// Default values, shared by the parser, [`RefreshSettings::default`](super::RefreshSettings::default),
/// the examples in error messages and the documentation.
pub mod defaults {
    pub const BROKERS: &str = "127.0.0.1:9092";
    pub const GROUP_ID: &str = "uid2-enricher";
    pub const INPUT_TOPIC: &str = "bid-requests";
    pub const OUTPUT_TOPIC: &str = "bid-requests-enriched";
    pub const DLQ_TOPIC: &str = "bid-requests-dlq";
    pub const MODE: &str = "bidstream";
    pub const REFRESH_INTERVAL_SECS: u64 = 3600;
    pub const REFRESH_JITTER_SECS: u64 = 300;
    pub const RETRY_INITIAL_BACKOFF_MS: u64 = 1000;
    pub const RETRY_MAX_BACKOFF_MS: u64 = 60_000;
    pub const REQUEST_TIMEOUT_MS: u64 = 10_000;
    pub const OPTOUT_TOPIC: &str = "uid2-optouts";
    pub const LISTEN: &str = "127.0.0.1:9898";
    pub const FORMAT: &str = "openrtb";
    pub const PIXEL_TOKEN_PARAM: &str = crate::engine::enrich::DEFAULT_PIXEL_TOKEN_PARAM;
    pub const EVENT_TOKEN_POINTERS: [&str; 1] =
        [crate::engine::enrich::DEFAULT_EVENT_TOKEN_POINTER];
    pub const DIRECTION: &str = "enrich";
    pub const TOKENIZE_POINTERS: [&str; 1] = [crate::engine::tokenize::DEFAULT_POINTER];
    /// eid source → identity scope.
    pub const SOURCES: [(&str, &str); 2] = [("uidapi.com", "UID2"), ("euid.eu", "EUID")];
    pub const MEMBER_NAME: &str = "uid2_enrichment";
    pub const STRICT_JSON: bool = false;
    pub const MAX_IN_FLIGHT: u64 = 10_000;
    pub const WORKERS: u64 = 0;
    /// Off: on realistic traffic the cache costs more than the decryptions it saves (docs/performance.md).
    pub const CACHE_ENTRIES: u64 = 0;
    pub const DRAIN_TIMEOUT_MS: u64 = 2500;
    pub const SHUTDOWN_TIMEOUT_MS: u64 = 8000;
    pub const ENRICH: bool = true;
    pub const DELIVERY: &str = "at_least_once";
    pub const TRANSACTION_MAX_RECORDS: u64 = 10_000;
    pub const TRANSACTION_MAX_MS: u64 = 100;
    pub const LOG_FORMAT: &str = "human";
    pub const LOG_LEVEL: &str = "info";
}

/// Environment variable names.
pub const ENV_API_KEY: &str = "UID2_API_KEY";
pub const ENV_SECRET_KEY: &str = "UID2_SECRET_KEY";
pub const ENV_OPTOUT_TOKEN: &str = "UID2_OPTOUT_TOKEN";

/// A default as it would be written in the file.
#[derive(Clone, Copy)]
enum Value {
    Str(&'static str),
    Int(u64),
    Bool(bool),
    Strs(&'static [&'static str]),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Str(s) => write!(f, "\"{s}\""),
            Value::Int(n) => write!(f, "{n}"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Strs(list) => {
                let quoted: Vec<String> = list.iter().map(|s| format!("\"{s}\"")).collect();
                write!(f, "[{}]", quoted.join(", "))
            }
        }
    }
}

/// One key of a table.
struct KeySpec {
    name: &'static str,
    /// What an absent key means, when that is a single value: a constant of [`defaults`], so the example
    /// shows the value the stage falls back to.
    default: Option<Value>,
    /// Written out when `name = default` would be no example: there is no default, the default is off
    /// (`cache_entries = 0`), or the key is not written as `name = value`.
    example: Option<&'static str>,
}

impl KeySpec {
    const fn new(name: &'static str) -> KeySpec {
        KeySpec {
            name,
            default: None,
            example: None,
        }
    }

    const fn defaults_to(mut self, value: Value) -> KeySpec {
        self.default = Some(value);
        self
    }

    const fn example(mut self, line: &'static str) -> KeySpec {
        self.example = Some(line);
        self
    }
}

struct TableSpec {
    name: &'static str,
    keys: &'static [KeySpec],
}

/// Every table and its keys, in the order the file documents them. The pass-through tables
/// `kafka.client`, `kafka.consumer` and `kafka.producer` accept any key, so they are keys here.
const TABLES: &[TableSpec] = &[
    TableSpec {
        name: "kafka",
        keys: &[
            KeySpec::new("brokers").defaults_to(Str(defaults::BROKERS)),
            KeySpec::new("group_id").defaults_to(Str(defaults::GROUP_ID)),
            KeySpec::new("input_topics").defaults_to(Strs(&[defaults::INPUT_TOPIC])),
            KeySpec::new("output_topic").defaults_to(Str(defaults::OUTPUT_TOPIC)),
            KeySpec::new("dlq_topic").defaults_to(Str(defaults::DLQ_TOPIC)),
            KeySpec::new("client"),
            KeySpec::new("consumer"),
            KeySpec::new("producer"),
        ],
    },
    TableSpec {
        name: "uid2",
        keys: &[
            KeySpec::new("mode").defaults_to(Str(defaults::MODE)),
            KeySpec::new("keys_file").example("keys_file = \"config/demo-keys.json\""),
            KeySpec::new("base_url").example("base_url = \"https://prod.uidapi.com\""),
            KeySpec::new("refresh_interval_secs").defaults_to(Int(defaults::REFRESH_INTERVAL_SECS)),
            KeySpec::new("refresh_jitter_secs").defaults_to(Int(defaults::REFRESH_JITTER_SECS)),
            KeySpec::new("retry_initial_backoff_ms")
                .defaults_to(Int(defaults::RETRY_INITIAL_BACKOFF_MS)),
            KeySpec::new("retry_max_backoff_ms").defaults_to(Int(defaults::RETRY_MAX_BACKOFF_MS)),
            KeySpec::new("request_timeout_ms").defaults_to(Int(defaults::REQUEST_TIMEOUT_MS)),
            KeySpec::new("key_sources").example(
                "[[uid2.key_sources]] scope = \"EUID\" base_url = \"https://prod.euid.eu\"",
            ),
        ],
    },
    TableSpec {
        name: "uid2.key_sources",
        keys: &[
            KeySpec::new("name").example("name = \"euid\""),
            KeySpec::new("scope").example("scope = \"EUID\""),
            KeySpec::new("keys_file").example("keys_file = \"/etc/uid2-enricher/euid-keys.json\""),
            KeySpec::new("base_url").example("base_url = \"https://prod.euid.eu\""),
            KeySpec::new("api_key_env").example("api_key_env = \"EUID_API_KEY\""),
            KeySpec::new("secret_key_env").example("secret_key_env = \"EUID_SECRET_KEY\""),
        ],
    },
    TableSpec {
        name: "optout",
        keys: &[KeySpec::new("topic").defaults_to(Str(defaults::OPTOUT_TOPIC))],
    },
    TableSpec {
        name: "server",
        keys: &[KeySpec::new("listen").defaults_to(Str(defaults::LISTEN))],
    },
    TableSpec {
        name: "pipeline",
        keys: &[
            KeySpec::new("format").defaults_to(Str(defaults::FORMAT)),
            KeySpec::new("formats"),
            KeySpec::new("pixel_token_param").defaults_to(Str(defaults::PIXEL_TOKEN_PARAM)),
            KeySpec::new("event_token_pointers").defaults_to(Strs(&defaults::EVENT_TOKEN_POINTERS)),
            KeySpec::new("direction").defaults_to(Str(defaults::DIRECTION)),
            KeySpec::new("tokenize_pointers").defaults_to(Strs(&defaults::TOKENIZE_POINTERS)),
            KeySpec::new("sources")
                .example("[[pipeline.sources]] name = \"uidapi.com\" scope = \"UID2\""),
            KeySpec::new("member_name").defaults_to(Str(defaults::MEMBER_NAME)),
            KeySpec::new("strict_json").defaults_to(Bool(defaults::STRICT_JSON)),
            KeySpec::new("max_in_flight").defaults_to(Int(defaults::MAX_IN_FLIGHT)),
            KeySpec::new("workers").defaults_to(Int(defaults::WORKERS)),
            KeySpec::new("cache_entries")
                .defaults_to(Int(defaults::CACHE_ENTRIES))
                .example("cache_entries = 200000"),
            KeySpec::new("drain_timeout_ms").defaults_to(Int(defaults::DRAIN_TIMEOUT_MS)),
            KeySpec::new("shutdown_timeout_ms").defaults_to(Int(defaults::SHUTDOWN_TIMEOUT_MS)),
            KeySpec::new("enrich").defaults_to(Bool(defaults::ENRICH)),
            KeySpec::new("delivery").defaults_to(Str(defaults::DELIVERY)),
            KeySpec::new("transactional_id").example("transactional_id = \"${POD_NAME}\""),
            KeySpec::new("transaction_max_records")
                .defaults_to(Int(defaults::TRANSACTION_MAX_RECORDS)),
            KeySpec::new("transaction_max_ms").defaults_to(Int(defaults::TRANSACTION_MAX_MS)),
        ],
    },
    TableSpec {
        name: "pipeline.sources",
        keys: &[
            KeySpec::new("name").example("name = \"uidapi.com\""),
            KeySpec::new("scope").example("scope = \"UID2\""),
        ],
    },
    TableSpec {
        name: "log",
        keys: &[
            KeySpec::new("format").defaults_to(Str(defaults::LOG_FORMAT)),
            KeySpec::new("level").defaults_to(Str(defaults::LOG_LEVEL)),
        ],
    },
];

// KNOWN_KEYS is public with the type it has always had, a slice of slices, so it is built at compile
// time, where nothing can allocate: each table's names become an array sized from the table. The macro
// only spares writing each index three times.
macro_rules! known_keys {
    ($($i:literal)*) => {
        &[
            ("", &TOP_LEVEL),
            $((
                TABLES[$i].name,
                &key_names::<{ TABLES[$i].keys.len() }>(TABLES[$i].keys),
            ),)*
        ]
    };
}

/// Every table and its keys, for "did you mean" and "belongs in [x]" hints; the top level ("") lists the
/// tables. The pass-through tables `kafka.client`, `kafka.consumer` and `kafka.producer` accept any key.
pub const KNOWN_KEYS: &[(&str, &[&str])] = known_keys!(0 1 2 3 4 5 6 7);

const _: () = assert!(TABLES.len() == 8, "list every table in known_keys!");

const TOP_LEVEL: [&str; top_level_count()] = top_level_names();

const fn key_names<const N: usize>(keys: &[KeySpec]) -> [&'static str; N] {
    let mut names = [""; N];
    let mut i = 0;
    while i < N {
        names[i] = keys[i].name;
        i += 1;
    }
    names
}

/// A table named without a dot is a key of the top level.
const fn is_top_level(table: &str) -> bool {
    let bytes = table.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'.' {
            return false;
        }
        i += 1;
    }
    true
}

const fn top_level_count() -> usize {
    let mut count = 0;
    let mut i = 0;
    while i < TABLES.len() {
        if is_top_level(TABLES[i].name) {
            count += 1;
        }
        i += 1;
    }
    count
}

const fn top_level_names() -> [&'static str; top_level_count()] {
    let mut names = [""; top_level_count()];
    let (mut i, mut n) = (0, 0);
    while i < TABLES.len() {
        if is_top_level(TABLES[i].name) {
            names[n] = TABLES[i].name;
            n += 1;
        }
        i += 1;
    }
    names
}

/// The example shown for a value of the wrong type: `name = default` or the key's own example.
// Only the key's name is given, so the first table with it wins: a wrong type for `format` in [log]
// shows [pipeline]'s example.
pub(super) fn example_for(key: &str) -> Option<String> {
    let spec = TABLES.iter().flat_map(|t| t.keys).find(|k| k.name == key)?;
    match (spec.example, spec.default) {
        (Some(line), _) => Some(line.to_string()),
        (None, Some(value)) => Some(format!("{key} = {value}")),
        (None, None) => None,
    }
}

/// librdkafka properties the stage sets itself, with the reason given to the user.
pub(super) const OWNED_PROPERTIES: &[(&str, &str)] = &[
    (
        "bootstrap.servers",
        "set `brokers` in [kafka] instead; the stage passes it to both clients",
    ),
    (
        "metadata.broker.list",
        "set `brokers` in [kafka] instead; the stage passes it to both clients",
    ),
    ("group.id", "set `group_id` in [kafka] instead"),
    (
        "enable.auto.offset.store",
        "the stage stores each offset itself once the output is acknowledged (at-least-once); it must stay false",
    ),
    (
        "transactional.id",
        "set `transactional_id` in [pipeline], with delivery = \"exactly_once\"",
    ),
    (
        "enable.idempotence",
        "the producer is always idempotent (no duplicates or reordering on retry); it must stay true",
    ),
];

/// Keys that look like secrets, and the environment variable to use instead.
pub(super) const SECRET_KEYS: &[(&str, &str)] = &[
    ("api_key", ENV_API_KEY),
    ("apikey", ENV_API_KEY),
    ("uid2_api_key", ENV_API_KEY),
    ("secret_key", ENV_SECRET_KEY),
    ("secret", ENV_SECRET_KEY),
    ("client_secret", ENV_SECRET_KEY),
    ("uid2_secret_key", ENV_SECRET_KEY),
    ("token", ENV_OPTOUT_TOKEN),
    ("optout_token", ENV_OPTOUT_TOKEN),
    ("bearer_token", ENV_OPTOUT_TOKEN),
    ("uid2_optout_token", ENV_OPTOUT_TOKEN),
];
