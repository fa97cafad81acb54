//! What the configuration reads: the tables and keys of the file and their defaults, the librdkafka
//! properties the stage owns, the keys refused as secrets, and the environment variables they point to.

/// Default values, shared by the parser,
/// [`RefreshSettings::default`](super::RefreshSettings::default) and the documentation.
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
    pub const LOG_FORMAT: &str = "human";
    pub const LOG_LEVEL: &str = "info";
}

/// Environment variable names.
pub const ENV_API_KEY: &str = "UID2_API_KEY";
pub const ENV_SECRET_KEY: &str = "UID2_SECRET_KEY";
pub const ENV_OPTOUT_TOKEN: &str = "UID2_OPTOUT_TOKEN";

/// Every table and its keys, for "did you mean" and "belongs in [x]" hints. The pass-through tables
/// `kafka.client`, `kafka.consumer` and `kafka.producer` accept any key.
pub const KNOWN_KEYS: &[(&str, &[&str])] = &[
    (
        "",
        &["kafka", "uid2", "optout", "server", "pipeline", "log"],
    ),
    (
        "kafka",
        &[
            "brokers",
            "group_id",
            "input_topics",
            "output_topic",
            "dlq_topic",
            "client",
            "consumer",
            "producer",
        ],
    ),
    (
        "uid2",
        &[
            "mode",
            "keys_file",
            "base_url",
            "refresh_interval_secs",
            "refresh_jitter_secs",
            "retry_initial_backoff_ms",
            "retry_max_backoff_ms",
            "request_timeout_ms",
        ],
    ),
    ("optout", &["topic"]),
    ("server", &["listen"]),
    (
        "pipeline",
        &[
            "format",
            "formats",
            "pixel_token_param",
            "event_token_pointers",
            "direction",
            "tokenize_pointers",
            "sources",
            "member_name",
            "strict_json",
            "max_in_flight",
            "workers",
            "cache_entries",
            "drain_timeout_ms",
            "shutdown_timeout_ms",
            "enrich",
        ],
    ),
    ("pipeline.sources", &["name", "scope"]),
    ("log", &["format", "level"]),
];

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
