//! The validated configuration the rest of the crate uses: [`Settings`] and its tables.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::defaults;
use super::{LogFormat, Redacted};
use crate::engine::enrich::{PayloadFormat, Policy};
use crate::engine::tokenize::{Direction, TokenizePolicy};
use crate::engine::uid2::cipher::Secret;
use crate::engine::uid2::{ClientMode, IdentityScope};

/// Where the UID2 keys come from.
// Built once at start-up; the prepared cipher schedules in `Secret` make the operator variant large.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum KeysFrom {
    /// A keys file (what a key endpoint returns once decrypted), re-read every refresh interval so another
    /// process can rewrite it. Absolute.
    File(PathBuf),
    /// The UID2 operator's `/v2/key/bidstream` or `/v2/key/sharing` endpoint.
    Operator {
        /// `https://…` without a trailing slash, e.g. `https://prod.uidapi.com`.
        base_url: String,
        /// `UID2_API_KEY`: sent as `Authorization: Bearer …`.
        api_key: Redacted<String>,
        /// `UID2_SECRET_KEY`: the client secret that seals the v2 envelope.
        secret: Redacted<Secret>,
    },
}

impl KeysFrom {
    /// A description for logs and status pages: the path or the base URL, never a secret.
    pub fn describe(&self) -> String {
        match self {
            KeysFrom::File(path) => format!("keys file {}", path.display()),
            KeysFrom::Operator { base_url, .. } => format!("operator {base_url}"),
        }
    }
}

/// How often keys are refreshed and how failures back off (the `[uid2]` timing keys).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefreshSettings {
    /// Time between successful refreshes (`refresh_interval_secs`, default 3600 s).
    pub interval: Duration,
    /// Each wait is `interval ± uniform(jitter)` (`refresh_jitter_secs`, default 300 s).
    pub jitter: Duration,
    /// First wait after a failure (`retry_initial_backoff_ms`, default 1 s); doubles per failure…
    pub retry_initial_backoff: Duration,
    /// …up to this (`retry_max_backoff_ms`, default 60 s).
    pub retry_max_backoff: Duration,
    /// Whole-request timeout for the operator call (`request_timeout_ms`, default 10 s).
    pub request_timeout: Duration,
}

impl Default for RefreshSettings {
    fn default() -> RefreshSettings {
        RefreshSettings {
            interval: Duration::from_secs(defaults::REFRESH_INTERVAL_SECS),
            jitter: Duration::from_secs(defaults::REFRESH_JITTER_SECS),
            retry_initial_backoff: Duration::from_millis(defaults::RETRY_INITIAL_BACKOFF_MS),
            retry_max_backoff: Duration::from_millis(defaults::RETRY_MAX_BACKOFF_MS),
            request_timeout: Duration::from_millis(defaults::REQUEST_TIMEOUT_MS),
        }
    }
}

/// librdkafka properties from `[kafka.consumer]` / `[kafka.producer]`, values as strings, in key order.
/// `Debug` hides the values of properties that look like credentials (`*password*`, `*secret*`, …).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KafkaProps(pub(super) Vec<(String, String)>);

impl KafkaProps {
    /// These properties plus `props` (later ones win in librdkafka, which applies them in order).
    pub fn with<K: Into<String>, V: Into<String>>(
        mut self,
        props: impl IntoIterator<Item = (K, V)>,
    ) -> KafkaProps {
        self.0
            .extend(props.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for KafkaProps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (k, v) in &self.0 {
            if is_secret_property(k) {
                map.entry(k, &"<redacted>");
            } else {
                map.entry(k, v);
            }
        }
        map.finish()
    }
}

/// Whether a librdkafka property carries a secret: its value must come from the environment, and is never
/// shown (`sasl.password`, `ssl.key.password`, `ssl.keystore.password`, `sasl.oauthbearer.client.secret`,
/// `ssl.key.pem`, `sasl.oauthbearer.config`, `sasl.oauthbearer.assertion.private.key.pem` and
/// `…passphrase`, and any name with password, passphrase, secret or token in it; not a `….url`).
pub fn is_secret_property(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    // An endpoint's address is not a secret, whatever its name says (`sasl.oauthbearer.token.endpoint.url`).
    if key.ends_with(".url") {
        return false;
    }
    [
        "password",
        "passphrase",
        "secret",
        "sasl.oauthbearer.config",
        "key.pem",
        "ssl_key",
        "token",
    ]
    .iter()
    .any(|s| key.contains(s))
}

/// `[kafka]`.
#[derive(Clone, Debug)]
pub struct KafkaSettings {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// `group.id`.
    pub group_id: String,
    pub input_topics: Vec<String>,
    pub output_topic: String,
    pub dlq_topic: String,
    /// `[kafka.client]`: applied to every Kafka client the binary makes.
    pub client: KafkaProps,
    /// `[kafka.consumer]`: applied after `client` to consumers.
    pub consumer: KafkaProps,
    /// `[kafka.producer]`: applied after `client` to producers and admin clients.
    pub producer: KafkaProps,
}

/// How records move from input to output (`[pipeline] delivery`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Delivery {
    /// Each offset is stored once its output is acknowledged: nothing is lost, and a crash re-delivers
    /// what was in flight (duplicates downstream).
    #[default]
    AtLeastOnce,
    /// Outputs, dead letters and input offsets are committed together in Kafka transactions: a
    /// `read_committed` reader sees each input record's result once.
    ExactlyOnce(TransactionSettings),
}

impl Delivery {
    /// `at_least_once` or `exactly_once`, as the configuration writes it.
    pub fn name(&self) -> &'static str {
        match self {
            Delivery::AtLeastOnce => "at_least_once",
            Delivery::ExactlyOnce(_) => "exactly_once",
        }
    }
}

/// The transactions of exactly-once delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransactionSettings {
    /// This instance's `transactional.id`, stable across its restarts (`transactional_id`).
    pub transactional_id: String,
    /// Commit once a transaction holds this many records (`transaction_max_records`)…
    pub max_records: u64,
    /// …or is this old (`transaction_max_ms`).
    pub max_duration: Duration,
}

/// `[uid2]`.
#[derive(Clone, Debug)]
pub struct Uid2Settings {
    pub mode: ClientMode,
    /// The single `[uid2]` source, or one per `[[uid2.key_sources]]` entry (at most one per scope).
    pub sources: Vec<KeySourceSettings>,
    pub refresh: RefreshSettings,
}

/// One key source: where a key set comes from and which identity scope it serves.
#[derive(Clone, Debug)]
pub struct KeySourceSettings {
    /// For logs, `/readyz` and the `key_source` label of the key metrics: `uid2` for the single `[uid2]`
    /// source, else the entry's `name` (default: its scope in lower case).
    pub name: String,
    /// The scope it serves; `None` for the single `[uid2]` source, whose set answers tokens of every
    /// scope (as one SDK client does).
    pub scope: Option<IdentityScope>,
    pub from: KeysFrom,
}

/// `[optout]`.
#[derive(Clone, Debug)]
pub struct OptOutSettings {
    /// The compacted topic the webhook writes and every instance reads.
    pub topic: String,
    /// `UID2_OPTOUT_TOKEN`: the bearer token the opt-out webhook requires; `None` when unset.
    pub token: Option<Redacted<String>>,
}

/// `[server]`.
#[derive(Clone, Debug)]
pub struct ServerSettings {
    /// `GET /metrics /healthz /readyz`, `GET|POST /optout`.
    pub listen: SocketAddr,
}

/// `[pipeline]`.
#[derive(Clone, Debug)]
pub struct PipelineSettings {
    /// The format of input topics not named in `[pipeline.formats]`.
    pub format: PayloadFormat,
    /// `[pipeline.formats]`: input topic → format, overriding `format` (only topics in `input_topics`).
    pub topic_formats: Vec<(String, PayloadFormat)>,
    /// `enrich` (decrypt tokens) or `tokenize` (the sharing sender: raw UID2s become tokens).
    pub direction: Direction,
    /// Where `tokenize` looks for raw UID2s.
    pub tokenize: TokenizePolicy,
    /// Mode, eid sources, member name and `strict_json`.
    pub policy: Policy,
    /// Records consumed but not yet acknowledged, across partitions (≥ 1).
    pub max_in_flight: usize,
    /// Enrichment threads, already resolved: `workers = 0` in the file becomes the number of cores.
    pub workers: usize,
    /// Decrypt cache entries; 0 disables the cache.
    pub cache_entries: u64,
    /// On partition revoke: how long to wait for in-flight records.
    pub drain_timeout: Duration,
    /// On SIGTERM: drain, commit and flush within this.
    pub shutdown_timeout: Duration,
    /// `false` = pass-through stage (measures the Kafka overhead alone).
    pub enrich: bool,
    pub delivery: Delivery,
}

/// `[log]`.
#[derive(Clone, Debug)]
pub struct LogSettings {
    pub format: LogFormat,
    /// A `tracing_subscriber::EnvFilter` directive string, already checked.
    pub level: String,
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The file it came from (as given), for messages.
    pub origin: String,
    pub kafka: KafkaSettings,
    pub uid2: Uid2Settings,
    pub optout: OptOutSettings,
    pub server: ServerSettings,
    pub pipeline: PipelineSettings,
    pub log: LogSettings,
}
