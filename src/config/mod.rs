//! The stage's configuration: a TOML file turned into validated, typed [`Settings`].
//!
//! Two stages, as in ripgrep: the text is deserialized into private `Raw*` structs that mirror the file
//! (every table `deny_unknown_fields`, every value wrapped in [`toml::Spanned`] so it keeps its position),
//! then [`Settings`] is built from them, checking every value. Every error names the file, line and
//! column, says what is wrong and how to fix it; an unknown key gets a "did you mean" from an edit
//! distance (`../shared/ARCHITECTURE.md`, "Configuration"). `config/enricher.toml` documents every option
//! with its default.
//!
//! Secrets never come from the file: `UID2_API_KEY` and `UID2_SECRET_KEY` (operator credentials, required
//! when `[uid2] base_url` is set) and `UID2_OPTOUT_TOKEN` (the opt-out webhook's bearer token, optional)
//! are read from the environment and held in [`Redacted`], which prints `<redacted>`. A secret-looking key
//! in the file (`api_key`, `secret_key`, `secret`, `token`, …) is rejected with the variable to use.
//!
//! `[kafka.client]` (every Kafka client), `[kafka.consumer]` and `[kafka.producer]` are librdkafka
//! properties passed through as strings (string, integer, float or boolean values; dotted keys may be
//! quoted or bare), except the properties the stage owns and sets itself. A property that carries a
//! secret (`sasl.password`, `ssl.key.password`, `sasl.oauthbearer.client.secret`, `ssl.key.pem`, any name
//! with password or secret in it) must come from the environment: a literal value is refused.
//!
//! Any string value may be, or contain, `${NAME}` or `${NAME:-default}`: the environment variable, or the
//! default when it is unset or empty (the convention of Vector, Redpanda Connect and Kafka's config
//! providers). `$${` writes a literal `${`. An unset variable without a default is an error naming the
//! file, line and column and the variable. References are replaced before anything else is checked, so
//! every value is validated as the stage will use it.
//!
//! Relative paths (`[uid2] keys_file`) resolve against the current directory of the process, and are
//! stored absolute, so a later change of directory does not move them.
//!
//! Shell code: it reads files, the environment and the current directory; the pure core gets only the
//! typed values. Depends on `toml`, `serde`, `reqwest::Url` (URL syntax), `tracing-subscriber` (filter
//! syntax) and the core's `enrich`/`uid2` types.

use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::engine::enrich::{PayloadFormat, Policy, TokenSource};
use crate::engine::formats::event::JsonPointer;
use crate::engine::tokenize::{Direction, TokenizePolicy};
use crate::engine::uid2::cipher::Secret;
use crate::engine::uid2::{ClientMode, IdentityScope, wire};
pub use crate::support::secret::Redacted;
pub use crate::support::telemetry::LogFormat;

// ---------------------------------------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------------------------------------

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
pub struct KafkaProps(Vec<(String, String)>);

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

/// `[uid2]`.
#[derive(Clone, Debug)]
pub struct Uid2Settings {
    pub mode: ClientMode,
    pub keys: KeysFrom,
    pub refresh: RefreshSettings,
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

/// A configuration that cannot be used. `Display` is the whole message: what is wrong, where
/// (`file:line:column`) and the fix. It never contains a secret's value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ConfigError {
    message: String,
    /// The file (as given to [`load`]) or the `origin` given to [`parse`].
    pub origin: String,
    /// 1-based line and column (in characters) of the offending key or value, when there is one.
    pub position: Option<(usize, usize)>,
}

impl ConfigError {
    /// The full message (same as `Display`).
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Default values, shared by the parser, [`RefreshSettings::default`] and the documentation.
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
const OWNED_PROPERTIES: &[(&str, &str)] = &[
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
const SECRET_KEYS: &[(&str, &str)] = &[
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

// ---------------------------------------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------------------------------------

/// Reads and validates the configuration file at `path`, with secrets from the process environment.
///
/// # Errors
/// The file cannot be read, is not TOML, or holds an unknown key or a bad value; a required environment
/// variable is missing or malformed. The message says where and how to fix it.
pub fn load(path: &Path) -> Result<Settings, ConfigError> {
    load_with_env(path, &|name| std::env::var(name).ok())
}

/// [`load`] with the environment supplied by the caller (tests must not mutate the process environment).
pub fn load_with_env(
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Settings, ConfigError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::NotFound {
            "check the --config path; config/enricher.toml documents every option"
        } else {
            "check the file's permissions and that it is UTF-8 text"
        };
        ConfigError {
            message: format!("cannot read config file {origin}: {e}; {hint}"),
            origin: origin.clone(),
            position: None,
        }
    })?;
    parse_with_env(&text, &origin, env)
}

/// [`load`] for a command that takes everything from the file but the operator's credentials: `replay`
/// given `--keys`, or writing into a topic (no decryption at all). The file is validated whole, `[uid2]`
/// included, but [`ENV_API_KEY`] and [`ENV_SECRET_KEY`] need not be set, so a production config can be
/// used on a machine without the production secrets. When they are not set and `[uid2]` names an
/// operator, the `KeysFrom::Operator` returned carries placeholder credentials: the caller must not
/// fetch keys with it (replay never does).
pub fn load_without_operator_credentials(path: &Path) -> Result<Settings, ConfigError> {
    const PLACEHOLDER_SECRET: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    load_with_env(path, &|name| {
        std::env::var(name).ok().or_else(|| match name {
            ENV_API_KEY => Some("unused".to_string()),
            ENV_SECRET_KEY => Some(PLACEHOLDER_SECRET.to_string()),
            _ => None,
        })
    })
}

/// Parses and validates configuration `text`; `origin` names it in messages (usually the path).
/// Secrets come from the process environment.
pub fn parse(text: &str, origin: &str) -> Result<Settings, ConfigError> {
    parse_with_env(text, origin, &|name| std::env::var(name).ok())
}

/// [`parse`] with the environment supplied by the caller.
pub fn parse_with_env(
    text: &str,
    origin: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Settings, ConfigError> {
    let cx = Cx { text, origin };
    // Syntax first, with spans for every key and value.
    let mut doc = DeTable::parse(text).map_err(|e| cx.syntax_error(&e))?;
    // A secret in the file is reported before anything else, whatever else is wrong.
    check_no_secrets(&cx, doc.get_ref(), &mut Vec::new())?;
    interpolate_table(&cx, doc.get_mut(), &mut Vec::new(), env)?;
    let raw = RawConfig::deserialize(toml::de::Deserializer::from(doc.clone()))
        .map_err(|e| cx.serde_error(doc.get_ref(), &e))?;
    build(&cx, doc.get_ref(), raw, env)
}

// ---------------------------------------------------------------------------------------------------------
// Environment references
// ---------------------------------------------------------------------------------------------------------

/// Replaces `${NAME}` / `${NAME:-default}` in every string value of `table`, and refuses a literal
/// secret in the librdkafka pass-through tables.
fn interpolate_table(
    cx: &Cx<'_>,
    table: &mut DeTable<'_>,
    path: &mut Vec<String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    for (key, value) in table.iter_mut() {
        path.push(key.get_ref().to_string());
        interpolate_value(cx, value, path, env)?;
        path.pop();
    }
    Ok(())
}

fn interpolate_value(
    cx: &Cx<'_>,
    value: &mut Spanned<DeValue<'_>>,
    path: &mut Vec<String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    let span = value.span();
    if let Some(property) = pass_through_property(path)
        && is_secret_property(&property)
    {
        // Only references, and none with a default: anything else is a secret written in the file.
        let from_env_only = match value.get_ref() {
            DeValue::String(text) => {
                text.contains("${")
                    && expand_env(text, &|_| Some(String::new())).as_deref() == Ok("")
            }
            _ => false,
        };
        if !from_env_only {
            return Err(cx.at(
                    span,
                    &format!(
                        "librdkafka property `{property}` in [{}] is a secret written in the file",
                        path[..2].join(".")
                    ),
                    &format!(
                        "secrets come from the environment: write \"{property}\" = \"${{{}}}\" and set that variable (from a Kubernetes Secret or a systemd EnvironmentFile)",
                    suggested_variable(&property)
                ),
            ));
        }
    }
    match value.get_mut() {
        DeValue::String(text) if text.contains('$') => {
            let expanded = expand_env(text, env).map_err(|e| {
                let at = match pass_through_property(path) {
                    Some(p) => format!("`{p}` in [{}]", path[..2].join(".")),
                    None => format!("`{}`", path.join(".")),
                };
                cx.at(span.clone(), &format!("{at}: {}", e.problem), &e.hint)
            })?;
            *text = expanded.into();
        }
        DeValue::Array(items) => {
            for item in items.iter_mut() {
                interpolate_value(cx, item, path, env)?;
            }
        }
        DeValue::Table(inner) => interpolate_table(cx, inner, path, env)?,
        _ => {}
    }
    Ok(())
}

/// The librdkafka property a value at `path` sets, when `path` is inside a pass-through table.
fn pass_through_property(path: &[String]) -> Option<String> {
    match path {
        [kafka, table, rest @ ..]
            if kafka == "kafka"
                && !rest.is_empty()
                && matches!(table.as_str(), "client" | "consumer" | "producer") =>
        {
            Some(rest.join("."))
        }
        _ => None,
    }
}

/// `sasl.password` → `KAFKA_SASL_PASSWORD`.
fn suggested_variable(property: &str) -> String {
    let mut name = String::from("KAFKA_");
    name.extend(property.chars().map(|c| {
        if c.is_ascii_alphanumeric() {
            c.to_ascii_uppercase()
        } else {
            '_'
        }
    }));
    name
}

/// Why a string's environment references cannot be expanded.
#[derive(Debug, PartialEq, Eq)]
pub struct EnvError {
    pub problem: String,
    pub hint: String,
}

/// Expands `${NAME}` and `${NAME:-default}` in `text` (`$${` is a literal `${`; any other `$` is kept).
/// An unset or empty variable takes the default; without one, an unset variable is an error (an empty one
/// expands to nothing). The error never contains a variable's value.
///
/// # Errors
/// An unset variable without a default, an unterminated `${`, or a name that is not
/// `[A-Za-z_][A-Za-z0-9_]*`.
pub fn expand_env(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, EnvError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
            continue;
        }
        let Some(body_start) = tail.strip_prefix("${") else {
            out.push('$');
            rest = &tail[1..];
            continue;
        };
        let Some(end) = body_start.find('}') else {
            return Err(EnvError {
                problem: "`${` without a closing `}`".to_string(),
                hint: "write ${NAME} or ${NAME:-default}; $${ writes a literal ${".to_string(),
            });
        };
        let body = &body_start[..end];
        let (name, default) = match body.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (body, None),
        };
        let valid_name = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_name {
            return Err(EnvError {
                problem: format!("`${{{body}}}` is not an environment reference"),
                hint: "names are letters, digits and _, not starting with a digit: ${KAFKA_PASSWORD} or ${KAFKA_PASSWORD:-default}".to_string(),
            });
        }
        match (env(name), default) {
            (Some(value), Some(default)) if value.is_empty() => out.push_str(default),
            (Some(value), _) => out.push_str(&value),
            (None, Some(default)) => out.push_str(default),
            (None, None) => {
                return Err(EnvError {
                    problem: format!("environment variable {name} is not set"),
                    hint: format!(
                        "set {name} in the stage's environment, or give a default: ${{{name}:-value}}"
                    ),
                });
            }
        }
        rest = &body_start[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

// ---------------------------------------------------------------------------------------------------------
// Stage 1: the file as written
// ---------------------------------------------------------------------------------------------------------

type Field<T> = Option<Spanned<T>>;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    kafka: Option<RawKafka>,
    uid2: Option<Spanned<RawUid2>>,
    optout: Option<RawOptOut>,
    server: Option<RawServer>,
    pipeline: Option<RawPipeline>,
    log: Option<RawLog>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawKafka {
    brokers: Field<String>,
    group_id: Field<String>,
    input_topics: Field<Vec<Spanned<String>>>,
    output_topic: Field<String>,
    dlq_topic: Field<String>,
    // Pass-through: any keys; read again from the spanned document for positions.
    client: Option<toml::Table>,
    consumer: Option<toml::Table>,
    producer: Option<toml::Table>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawUid2 {
    mode: Field<String>,
    keys_file: Field<String>,
    base_url: Field<String>,
    refresh_interval_secs: Field<u64>,
    refresh_jitter_secs: Field<u64>,
    retry_initial_backoff_ms: Field<u64>,
    retry_max_backoff_ms: Field<u64>,
    request_timeout_ms: Field<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawOptOut {
    topic: Field<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Field<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    format: Field<String>,
    /// Input topic → format: any keys (topic names), checked against `input_topics`.
    formats: Option<std::collections::BTreeMap<String, Spanned<String>>>,
    pixel_token_param: Field<String>,
    event_token_pointers: Field<Vec<Spanned<String>>>,
    direction: Field<String>,
    tokenize_pointers: Field<Vec<Spanned<String>>>,
    sources: Field<Vec<Spanned<RawSource>>>,
    member_name: Field<String>,
    strict_json: Field<bool>,
    max_in_flight: Field<u64>,
    workers: Field<u64>,
    cache_entries: Field<u64>,
    drain_timeout_ms: Field<u64>,
    shutdown_timeout_ms: Field<u64>,
    enrich: Field<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    name: Spanned<String>,
    scope: Spanned<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Field<String>,
    level: Field<String>,
}

// ---------------------------------------------------------------------------------------------------------
// Stage 2: validation
// ---------------------------------------------------------------------------------------------------------

fn build(
    cx: &Cx<'_>,
    doc: &DeTable<'_>,
    raw: RawConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Settings, ConfigError> {
    let kafka = build_kafka(cx, doc, raw.kafka.unwrap_or_default())?;
    let uid2 = build_uid2(cx, raw.uid2, env)?;
    let optout = build_optout(cx, raw.optout.unwrap_or_default(), &kafka, env)?;
    let server = build_server(cx, raw.server.unwrap_or_default())?;
    let pipeline = build_pipeline(
        cx,
        raw.pipeline.unwrap_or_default(),
        uid2.mode,
        &kafka.input_topics,
    )?;
    let log = build_log(cx, raw.log.unwrap_or_default())?;
    Ok(Settings {
        origin: cx.origin.to_string(),
        kafka,
        uid2,
        optout,
        server,
        pipeline,
        log,
    })
}

fn build_kafka(
    cx: &Cx<'_>,
    doc: &DeTable<'_>,
    raw: RawKafka,
) -> Result<KafkaSettings, ConfigError> {
    let brokers = string_or(&raw.brokers, defaults::BROKERS);
    if let Some(b) = &raw.brokers {
        let bad = b.get_ref().split(',').any(|s| s.trim().is_empty());
        if bad {
            return Err(cx.at(
                b.span(),
                "`brokers` in [kafka] is empty or has an empty entry",
                "list host:port pairs separated by commas, e.g. brokers = \"kafka-1:9092,kafka-2:9092\"",
            ));
        }
    }
    let group_id = string_or(&raw.group_id, defaults::GROUP_ID);
    if let Some(g) = &raw.group_id
        && g.get_ref().trim().is_empty()
    {
        return Err(cx.at(
            g.span(),
            "`group_id` in [kafka] is empty",
            "every instance of the stage uses the same consumer group, e.g. group_id = \"uid2-enricher\"",
        ));
    }

    let input_topics: Vec<String> = match &raw.input_topics {
        None => vec![defaults::INPUT_TOPIC.to_string()],
        Some(list) => {
            if list.get_ref().is_empty() {
                return Err(cx.at(
                    list.span(),
                    "`input_topics` in [kafka] is empty",
                    "name at least one topic to consume, e.g. input_topics = [\"bid-requests\"]",
                ));
            }
            let mut seen = Vec::new();
            for topic in list.get_ref() {
                check_topic(cx, topic, "input_topics", "[kafka]")?;
                if seen.contains(topic.get_ref()) {
                    return Err(cx.at(
                        topic.span(),
                        &format!(
                            "topic `{}` is listed twice in `input_topics` in [kafka]",
                            topic.get_ref()
                        ),
                        "remove the duplicate",
                    ));
                }
                seen.push(topic.get_ref().clone());
            }
            seen
        }
    };
    let output_topic = string_or(&raw.output_topic, defaults::OUTPUT_TOPIC);
    let dlq_topic = string_or(&raw.dlq_topic, defaults::DLQ_TOPIC);
    for (field, value, name) in [
        (&raw.output_topic, &output_topic, "output_topic"),
        (&raw.dlq_topic, &dlq_topic, "dlq_topic"),
    ] {
        if let Some(spanned) = field {
            check_topic(cx, spanned, name, "[kafka]")?;
        }
        if input_topics.contains(value) {
            return Err(cx.at_opt(
                field.as_ref().map(Spanned::span),
                &format!("`{name}` in [kafka] is `{value}`, which is also an input topic"),
                "the stage would consume its own output forever; use a different topic",
            ));
        }
    }
    if dlq_topic == output_topic {
        return Err(cx.at_opt(
            raw.dlq_topic.as_ref().map(Spanned::span),
            &format!("`dlq_topic` in [kafka] is the same topic as `output_topic` (`{dlq_topic}`)"),
            "malformed records would be mixed into the enriched stream; use a separate dead-letter topic, e.g. dlq_topic = \"bid-requests-dlq\"",
        ));
    }

    let client = pass_through(cx, doc, raw.client.as_ref(), "client")?;
    let consumer = pass_through(cx, doc, raw.consumer.as_ref(), "consumer")?;
    let producer = pass_through(cx, doc, raw.producer.as_ref(), "producer")?;
    Ok(KafkaSettings {
        brokers,
        group_id,
        input_topics,
        output_topic,
        dlq_topic,
        client,
        consumer,
        producer,
    })
}

/// Kafka's own topic name rules, so a typo fails here rather than in the broker.
fn check_topic(
    cx: &Cx<'_>,
    topic: &Spanned<String>,
    key: &str,
    table: &str,
) -> Result<(), ConfigError> {
    let name = topic.get_ref();
    let valid = !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(cx.at(
            topic.span(),
            &format!("`{key}` in {table}: `{name}` is not a valid Kafka topic name"),
            "use 1 to 249 characters from a-z A-Z 0-9 . _ -",
        ))
    }
}

fn pass_through(
    cx: &Cx<'_>,
    doc: &DeTable<'_>,
    table: Option<&toml::Table>,
    which: &str,
) -> Result<KafkaProps, ConfigError> {
    let Some(table) = table else {
        return Ok(KafkaProps::default());
    };
    let mut flat = Vec::new();
    flatten(table, &mut Vec::new(), &mut flat);
    let mut props = Vec::with_capacity(flat.len());
    for (path, value) in flat {
        let key = path.join(".");
        let mut doc_path = vec!["kafka", which];
        doc_path.extend(path.iter().map(String::as_str));
        // A bare dotted name is nested tables in TOML: point at its first part, where the line starts.
        let span = span_of_key(doc, &doc_path[..3]);
        if let Some((_, why)) = OWNED_PROPERTIES.iter().find(|(k, _)| *k == key) {
            return Err(cx.at_opt(
                span,
                &format!(
                    "librdkafka property `{key}` in [kafka.{which}] is set by the stage itself"
                ),
                why,
            ));
        }
        let text = match value {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Float(f) if f.is_finite() => f.to_string(),
            other => {
                return Err(cx.at_opt(
                    span,
                    &format!(
                        "librdkafka property `{key}` in [kafka.{which}] has {} value",
                        describe_value(other)
                    ),
                    "use a string, integer, float or boolean, e.g. \"session.timeout.ms\" = 6000; list-valued properties take one comma-separated string",
                ));
            }
        };
        props.push((key, text));
    }
    Ok(KafkaProps(props))
}

/// `a.b.c = 1` written without quotes is a nested table in TOML; librdkafka means the dotted name.
fn flatten<'t>(
    table: &'t toml::Table,
    prefix: &mut Vec<String>,
    out: &mut Vec<(Vec<String>, &'t toml::Value)>,
) {
    for (k, v) in table {
        prefix.push(k.clone());
        match v {
            toml::Value::Table(inner) => flatten(inner, prefix, out),
            other => out.push((prefix.clone(), other)),
        }
        prefix.pop();
    }
}

fn describe_value(v: &toml::Value) -> &'static str {
    match v {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a non-finite float",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a date-time",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    }
}

fn build_uid2(
    cx: &Cx<'_>,
    raw: Option<Spanned<RawUid2>>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Uid2Settings, ConfigError> {
    let Some(raw_spanned) = raw else {
        return Err(cx.plain(
            "there is no [uid2] table, so the stage has no key source",
            "add\n  [uid2]\n  keys_file = \"config/demo-keys.json\"\nor\n  [uid2]\n  base_url = \"https://prod.uidapi.com\"   # with UID2_API_KEY and UID2_SECRET_KEY in the environment",
        ));
    };
    let table_span = raw_spanned.span();
    let raw = raw_spanned.into_inner();

    let mode = match &raw.mode {
        None => ClientMode::Bidstream,
        Some(m) => match m.get_ref().as_str() {
            "bidstream" => ClientMode::Bidstream,
            "sharing" => ClientMode::Sharing,
            other => {
                return Err(cx.at(
                    m.span(),
                    &format!("`mode` in [uid2] is `{other}`, which is not a client mode"),
                    &choice_hint(other, &["bidstream", "sharing"]),
                ));
            }
        },
    };

    let keys = match (&raw.keys_file, &raw.base_url) {
        (Some(file), Some(url)) => {
            let (first, second) = if file.span().start < url.span().start {
                (file, url)
            } else {
                (url, file)
            };
            let name = |f: &Spanned<String>| {
                if std::ptr::eq(f, file) {
                    "keys_file"
                } else {
                    "base_url"
                }
            };
            return Err(cx.at(
                second.span(),
                &format!(
                    "[uid2] sets both `{}` (at {}) and `{}`",
                    name(first),
                    cx.location(first.span().start),
                    name(second)
                ),
                "choose one key source: keys_file for a file, or base_url for the UID2 operator; remove the other line",
            ));
        }
        (None, None) => {
            return Err(cx.at(
                table_span,
                "[uid2] has no key source",
                "set keys_file = \"config/demo-keys.json\" (a keys file) or base_url = \"https://prod.uidapi.com\" (the UID2 operator, with UID2_API_KEY and UID2_SECRET_KEY in the environment)",
            ));
        }
        (Some(file), None) => KeysFrom::File(check_keys_file(cx, file)?),
        (None, Some(url)) => operator_keys(cx, url, env)?,
    };

    let interval = raw
        .refresh_interval_secs
        .as_ref()
        .map_or(defaults::REFRESH_INTERVAL_SECS, |v| *v.get_ref());
    if let Some(v) = &raw.refresh_interval_secs
        && *v.get_ref() == 0
    {
        return Err(cx.at(
            v.span(),
            "`refresh_interval_secs` in [uid2] is 0",
            "keys must be refreshed periodically; use at least 1 (the SDKs refresh hourly: 3600)",
        ));
    }
    let jitter = raw
        .refresh_jitter_secs
        .as_ref()
        .map_or(defaults::REFRESH_JITTER_SECS.min(interval / 2), |v| {
            *v.get_ref()
        });
    if let Some(v) = &raw.refresh_jitter_secs
        && *v.get_ref() >= interval
    {
        return Err(cx.at(
            v.span(),
            &format!(
                "`refresh_jitter_secs` in [uid2] is {}, not less than refresh_interval_secs ({interval})",
                v.get_ref()
            ),
            "the wait is refresh_interval_secs ± refresh_jitter_secs, so the jitter must be smaller; e.g. a tenth of the interval",
        ));
    }
    let initial = positive_ms(
        cx,
        &raw.retry_initial_backoff_ms,
        defaults::RETRY_INITIAL_BACKOFF_MS,
        "retry_initial_backoff_ms",
        "[uid2]",
    )?;
    let max = positive_ms(
        cx,
        &raw.retry_max_backoff_ms,
        defaults::RETRY_MAX_BACKOFF_MS.max(initial),
        "retry_max_backoff_ms",
        "[uid2]",
    )?;
    if max < initial {
        let span = raw
            .retry_max_backoff_ms
            .as_ref()
            .or(raw.retry_initial_backoff_ms.as_ref())
            .map(Spanned::span);
        return Err(cx.at_opt(
            span,
            &format!(
                "`retry_max_backoff_ms` in [uid2] ({max}) is less than retry_initial_backoff_ms ({initial})"
            ),
            "the backoff doubles from the initial value up to the maximum; make the maximum at least the initial value",
        ));
    }
    let timeout = positive_ms(
        cx,
        &raw.request_timeout_ms,
        defaults::REQUEST_TIMEOUT_MS,
        "request_timeout_ms",
        "[uid2]",
    )?;
    Ok(Uid2Settings {
        mode,
        keys,
        refresh: RefreshSettings {
            interval: Duration::from_secs(interval),
            jitter: Duration::from_secs(jitter),
            retry_initial_backoff: Duration::from_millis(initial),
            retry_max_backoff: Duration::from_millis(max),
            request_timeout: Duration::from_millis(timeout),
        },
    })
}

fn check_keys_file(cx: &Cx<'_>, file: &Spanned<String>) -> Result<PathBuf, ConfigError> {
    let given = file.get_ref();
    if given.trim().is_empty() {
        return Err(cx.at(
            file.span(),
            "`keys_file` in [uid2] is empty",
            "name the keys file, e.g. keys_file = \"config/demo-keys.json\"",
        ));
    }
    let path = Path::new(given);
    let cwd = std::env::current_dir().unwrap_or_default();
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        cwd.join(path)
    };
    match std::fs::metadata(&absolute) {
        Ok(meta) if meta.is_file() => Ok(absolute),
        Ok(_) => Err(cx.at(
            file.span(),
            &format!(
                "`keys_file` in [uid2] is `{given}`, which is not a regular file ({})",
                absolute.display()
            ),
            "point it at the JSON a key endpoint returns, e.g. config/demo-keys.json",
        )),
        Err(e) => Err(cx.at(
            file.span(),
            &format!(
                "`keys_file` in [uid2] is `{given}`, which cannot be read: {e} (looked for {}; relative paths resolve against the current directory {})",
                absolute.display(),
                cwd.display()
            ),
            "fix the path or run from the directory it is relative to; `uid2-enricher gen --keys-out FILE` writes a keys file",
        )),
    }
}

fn operator_keys(
    cx: &Cx<'_>,
    url: &Spanned<String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<KeysFrom, ConfigError> {
    let given = url.get_ref().trim();
    let parsed = match reqwest::Url::parse(given) {
        Ok(u) => u,
        Err(e) => {
            return Err(cx.at(
                url.span(),
                &format!("`base_url` in [uid2] is `{given}`, which is not a URL ({e})"),
                "use the operator's origin, e.g. base_url = \"https://prod.uidapi.com\"",
            ));
        }
    };
    let loopback = parsed.host_str().is_some_and(|host| {
        host.eq_ignore_ascii_case("localhost")
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    });
    match parsed.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => {
            return Err(cx.at(
                url.span(),
                &format!("`base_url` in [uid2] is `{given}`: plain http would send the API key in clear"),
                "use https:// (http:// is accepted only for a local test operator on localhost/127.0.0.1)",
            ));
        }
        other => {
            return Err(cx.at(
                url.span(),
                &format!("`base_url` in [uid2] has scheme `{other}`"),
                "use https://, e.g. base_url = \"https://prod.uidapi.com\"",
            ));
        }
    }
    if parsed.query().is_some() || parsed.fragment().is_some() || parsed.host().is_none() {
        return Err(cx.at(
            url.span(),
            &format!("`base_url` in [uid2] is `{given}`; it must be just the operator's origin"),
            "drop any query or fragment; the stage appends /v2/key/bidstream or /v2/key/sharing, e.g. base_url = \"https://prod.uidapi.com\"",
        ));
    }
    let base_url = given.trim_end_matches('/').to_string();
    let where_ = cx.location(url.span().start);

    let api_key = match env(ENV_API_KEY) {
        None => {
            return Err(cx.plain(
                &format!("`base_url` is set in [uid2] at {where_}, but the environment variable {ENV_API_KEY} is not set"),
                &format!("export {ENV_API_KEY}=<the API key from the UID2 portal>; secrets are read only from the environment, never from the file"),
            ));
        }
        Some(k) if k.trim().is_empty() => {
            return Err(cx.plain(
                &format!("{ENV_API_KEY} is set but empty (needed because `base_url` is set in [uid2] at {where_})"),
                &format!("export {ENV_API_KEY}=<the API key from the UID2 portal>"),
            ));
        }
        Some(k) if k.trim() != k || k.chars().any(char::is_control) => {
            return Err(cx.plain(
                &format!("{ENV_API_KEY} has leading/trailing whitespace or control characters"),
                "set it to the API key exactly, without a trailing newline or spaces",
            ));
        }
        Some(k) => k,
    };
    let secret = match env(ENV_SECRET_KEY) {
        None => {
            return Err(cx.plain(
                &format!("`base_url` is set in [uid2] at {where_}, but the environment variable {ENV_SECRET_KEY} is not set"),
                &format!("export {ENV_SECRET_KEY}=<the client secret from the UID2 portal: standard base64 of 32 bytes>; secrets are read only from the environment, never from the file"),
            ));
        }
        Some(s) => match wire::decode_standard(s.trim()).map(<[u8; 32]>::try_from) {
            Some(Ok(bytes)) => Secret::new(bytes),
            Some(Err(bytes)) => {
                return Err(cx.plain(
                    &format!(
                        "{ENV_SECRET_KEY} decodes to {} bytes, but a UID2 client secret is 32 bytes",
                        bytes.len()
                    ),
                    "copy the client secret exactly as the UID2 portal shows it (standard base64 of 32 bytes, 44 characters ending in '=')",
                ));
            }
            None => {
                return Err(cx.plain(
                    &format!("{ENV_SECRET_KEY} is not standard base64"),
                    "copy the client secret exactly as the UID2 portal shows it (standard base64 of 32 bytes, 44 characters ending in '=')",
                ));
            }
        },
    };
    Ok(KeysFrom::Operator {
        base_url,
        api_key: Redacted::new(api_key),
        secret: Redacted::new(secret),
    })
}

fn build_optout(
    cx: &Cx<'_>,
    raw: RawOptOut,
    kafka: &KafkaSettings,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<OptOutSettings, ConfigError> {
    let topic = string_or(&raw.topic, defaults::OPTOUT_TOPIC);
    if let Some(t) = &raw.topic {
        check_topic(cx, t, "topic", "[optout]")?;
    }
    if kafka.input_topics.contains(&topic)
        || topic == kafka.output_topic
        || topic == kafka.dlq_topic
    {
        return Err(cx.at_opt(
            raw.topic.as_ref().map(Spanned::span),
            &format!("`topic` in [optout] is `{topic}`, which is also a [kafka] topic"),
            "the opt-out topic is a compacted topic of its own, e.g. topic = \"uid2-optouts\"",
        ));
    }
    let token = match env(ENV_OPTOUT_TOKEN) {
        None => None,
        Some(t) if t.trim().is_empty() => {
            return Err(cx.plain(
                &format!("{ENV_OPTOUT_TOKEN} is set but empty"),
                &format!("unset {ENV_OPTOUT_TOKEN} to leave the opt-out webhook without a token, or set it to a long random string"),
            ));
        }
        Some(t) => Some(Redacted::new(t.trim().to_string())),
    };
    Ok(OptOutSettings { topic, token })
}

fn build_server(cx: &Cx<'_>, raw: RawServer) -> Result<ServerSettings, ConfigError> {
    let listen = match &raw.listen {
        None => defaults::LISTEN.parse().expect("valid default"),
        Some(l) => l.get_ref().trim().parse::<SocketAddr>().map_err(|_| {
            cx.at(
                l.span(),
                &format!("`listen` in [server] is `{}`, which is not a socket address", l.get_ref()),
                "use IP:port, e.g. listen = \"127.0.0.1:9898\", \"0.0.0.0:9898\" or \"[::1]:9898\" (host names are not resolved)",
            )
        })?,
    };
    Ok(ServerSettings { listen })
}

fn payload_format(
    cx: &Cx<'_>,
    f: &Spanned<String>,
    what: &str,
) -> Result<PayloadFormat, ConfigError> {
    PayloadFormat::from_name(f.get_ref()).ok_or_else(|| {
        let names: Vec<&str> = PayloadFormat::NAMES.iter().map(|(n, _)| *n).collect();
        cx.at(
            f.span(),
            &format!(
                "{what} is `{}`, which is not a payload format",
                f.get_ref()
            ),
            &format!(
                "{} (\"openrtb\": OpenRTB JSON bid requests, \"protobuf\": OpenRTB protobuf, \"pixel\": tracking-pixel URLs, \"json\": any JSON event)",
                choice_hint(f.get_ref(), &names)
            ),
        )
    })
}

fn pointer_list(
    cx: &Cx<'_>,
    field: &Field<Vec<Spanned<String>>>,
    defaults: &[&str],
    key: &str,
) -> Result<Vec<JsonPointer>, ConfigError> {
    let Some(list) = field else {
        return Ok(defaults
            .iter()
            .filter_map(|p| JsonPointer::parse(p).ok())
            .collect());
    };
    if list.get_ref().is_empty() {
        return Err(cx.at(
            list.span(),
            &format!("`{key}` in [pipeline] is empty"),
            &format!(
                "list at least one JSON pointer, e.g. {key} = [\"{}\"]",
                defaults.first().copied().unwrap_or("/uid2")
            ),
        ));
    }
    list.get_ref()
        .iter()
        .map(|p| {
            JsonPointer::parse(p.get_ref()).map_err(|e| {
                cx.at(
                    p.span(),
                    &format!(
                        "`{}` in `{key}` in [pipeline] is not a JSON pointer: {e}",
                        p.get_ref()
                    ),
                    "write RFC 6901 pointers: \"/member/0/id\", with ~1 for '/' and ~0 for '~' inside a name",
                )
            })
        })
        .collect()
}

fn build_pipeline(
    cx: &Cx<'_>,
    raw: RawPipeline,
    mode: ClientMode,
    input_topics: &[String],
) -> Result<PipelineSettings, ConfigError> {
    let format = match &raw.format {
        None => PayloadFormat::Json,
        Some(f) => payload_format(cx, f, "`format` in [pipeline]")?,
    };
    let mut topic_formats = Vec::new();
    for (topic, f) in raw.formats.iter().flatten() {
        if !input_topics.contains(topic) {
            return Err(cx.at(
                f.span(),
                &format!("[pipeline.formats] names topic `{topic}`, which is not in `input_topics` of [kafka]"),
                &format!(
                    "add it to input_topics or use one of {input_topics:?}{}",
                    closest(
                        topic,
                        &input_topics.iter().map(String::as_str).collect::<Vec<_>>()
                    )
                    .map(|c| format!(" (did you mean `{c}`?)"))
                    .unwrap_or_default()
                ),
            ));
        }
        topic_formats.push((
            topic.clone(),
            payload_format(
                cx,
                f,
                &format!("the format of topic `{topic}` in [pipeline.formats]"),
            )?,
        ));
    }
    let direction = match &raw.direction {
        None => Direction::Enrich,
        Some(d) => match d.get_ref().as_str() {
            "enrich" => Direction::Enrich,
            "tokenize" => Direction::Tokenize,
            other => {
                return Err(cx.at(
                    d.span(),
                    &format!("`direction` in [pipeline] is `{other}`"),
                    &format!(
                        "{} (enrich: decrypt tokens; tokenize: replace raw UID2s by tokens, the sharing sender)",
                        choice_hint(other, &["enrich", "tokenize"])
                    ),
                ));
            }
        },
    };
    if direction == Direction::Tokenize {
        if mode != ClientMode::Sharing {
            return Err(cx.at_opt(
                raw.direction.as_ref().map(Spanned::span),
                "`direction = \"tokenize\"` in [pipeline] needs sharing keys, but [uid2] mode is not \"sharing\"",
                "set mode = \"sharing\" in [uid2]: tokens are made with the default keyset of /v2/key/sharing",
            ));
        }
        let json_only = |f: PayloadFormat| matches!(f, PayloadFormat::Json | PayloadFormat::Event);
        if !json_only(format) || topic_formats.iter().any(|(_, f)| !json_only(*f)) {
            return Err(cx.at_opt(
                raw.direction.as_ref().map(Spanned::span),
                "`direction = \"tokenize\"` in [pipeline] works on JSON inputs only, but a format is \"protobuf\" or \"pixel\"",
                "use format \"json\" (or \"openrtb\") for the topics this stage tokenizes; raw UID2s never travel in pixels",
            ));
        }
    }
    let tokenize = TokenizePolicy {
        pointers: pointer_list(
            cx,
            &raw.tokenize_pointers,
            &defaults::TOKENIZE_POINTERS,
            "tokenize_pointers",
        )?,
    };
    let event_token_pointers = pointer_list(
        cx,
        &raw.event_token_pointers,
        &defaults::EVENT_TOKEN_POINTERS,
        "event_token_pointers",
    )?;
    let pixel_token_param = string_or(&raw.pixel_token_param, defaults::PIXEL_TOKEN_PARAM);
    if let Some(p) = &raw.pixel_token_param
        && (p.get_ref().is_empty() || p.get_ref().chars().any(|c| c.is_control()))
    {
        return Err(cx.at(
            p.span(),
            &format!("`pixel_token_param` in [pipeline] is `{}`", p.get_ref()),
            "give the query parameter name as it is after URL-decoding, e.g. pixel_token_param = \"uid2_token\"",
        ));
    }

    let sources = match &raw.sources {
        None => defaults::SOURCES
            .iter()
            .map(|(name, scope)| TokenSource {
                name: (*name).to_string(),
                scope: if *scope == "EUID" {
                    IdentityScope::Euid
                } else {
                    IdentityScope::Uid2
                },
            })
            .collect(),
        Some(list) => {
            if list.get_ref().is_empty() {
                return Err(cx.at(
                    list.span(),
                    "`sources` in [pipeline] is empty, so no token would ever be found",
                    "list at least one eid source, e.g. [[pipeline.sources]] name = \"uidapi.com\" scope = \"UID2\"",
                ));
            }
            let mut out: Vec<TokenSource> = Vec::new();
            for entry in list.get_ref() {
                let entry = entry.get_ref();
                let name = entry.name.get_ref().trim();
                if name.is_empty()
                    || name
                        .chars()
                        .any(|c| c.is_control() || c == '"' || c == '\\')
                {
                    return Err(cx.at(
                        entry.name.span(),
                        &format!("source name `{}` in [[pipeline.sources]] is empty or has quotes, backslashes or control characters", entry.name.get_ref()),
                        "use the eid `source` exactly as it appears in requests, e.g. \"uidapi.com\"",
                    ));
                }
                if out.iter().any(|s| s.name == name) {
                    return Err(cx.at(
                        entry.name.span(),
                        &format!("source `{name}` appears twice in [[pipeline.sources]]"),
                        "remove the duplicate entry",
                    ));
                }
                let scope = match entry.scope.get_ref().as_str() {
                    "UID2" => IdentityScope::Uid2,
                    "EUID" => IdentityScope::Euid,
                    other => {
                        return Err(cx.at(
                            entry.scope.span(),
                            &format!(
                                "`scope` of source `{name}` in [[pipeline.sources]] is `{other}`"
                            ),
                            &choice_hint(other, &["UID2", "EUID"]),
                        ));
                    }
                };
                out.push(TokenSource {
                    name: name.to_string(),
                    scope,
                });
            }
            out
        }
    };

    let member_name = string_or(&raw.member_name, defaults::MEMBER_NAME);
    if let Some(m) = &raw.member_name {
        let name = m.get_ref();
        let ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
        if !ok {
            return Err(cx.at(
                m.span(),
                &format!("`member_name` in [pipeline] is `{name}`"),
                "use ASCII letters, digits, '_', '-' or '.' (it is written into JSON as is); the contract name is \"uid2_enrichment\"",
            ));
        }
    }
    let mut policy = Policy::new(mode, sources, member_name);
    policy.strict_json = bool_or(&raw.strict_json, defaults::STRICT_JSON);
    policy.pixel_token_param = pixel_token_param;
    policy.event_token_pointers = event_token_pointers;

    let max_in_flight = raw
        .max_in_flight
        .as_ref()
        .map_or(defaults::MAX_IN_FLIGHT, |v| *v.get_ref());
    if let Some(v) = &raw.max_in_flight
        && (*v.get_ref() == 0 || *v.get_ref() > 10_000_000)
    {
        return Err(cx.at(
            v.span(),
            &format!("`max_in_flight` in [pipeline] is {}", v.get_ref()),
            "it bounds the records consumed but not yet acknowledged; use 1 to 10000000 (default 10000)",
        ));
    }
    let workers = raw
        .workers
        .as_ref()
        .map_or(defaults::WORKERS, |v| *v.get_ref());
    if let Some(v) = &raw.workers
        && *v.get_ref() > 1024
    {
        return Err(cx.at(
            v.span(),
            &format!("`workers` in [pipeline] is {}", v.get_ref()),
            "use 0 (one per core) or a thread count up to 1024",
        ));
    }
    let workers = if workers == 0 {
        std::thread::available_parallelism().map_or(1, usize::from)
    } else {
        workers as usize
    };
    let cache_entries = raw
        .cache_entries
        .as_ref()
        .map_or(defaults::CACHE_ENTRIES, |v| *v.get_ref());
    let drain = raw
        .drain_timeout_ms
        .as_ref()
        .map_or(defaults::DRAIN_TIMEOUT_MS, |v| *v.get_ref());
    let shutdown = positive_ms(
        cx,
        &raw.shutdown_timeout_ms,
        defaults::SHUTDOWN_TIMEOUT_MS,
        "shutdown_timeout_ms",
        "[pipeline]",
    )?;
    Ok(PipelineSettings {
        format,
        topic_formats,
        direction,
        tokenize,
        policy,
        max_in_flight: max_in_flight as usize,
        workers,
        cache_entries,
        drain_timeout: Duration::from_millis(drain),
        shutdown_timeout: Duration::from_millis(shutdown),
        enrich: bool_or(&raw.enrich, defaults::ENRICH),
    })
}

fn build_log(cx: &Cx<'_>, raw: RawLog) -> Result<LogSettings, ConfigError> {
    let format = match &raw.format {
        None => LogFormat::Human,
        Some(f) => match f.get_ref().as_str() {
            "human" => LogFormat::Human,
            "json" => LogFormat::Json,
            other => {
                return Err(cx.at(
                    f.span(),
                    &format!("`format` in [log] is `{other}`"),
                    &choice_hint(other, &["human", "json"]),
                ));
            }
        },
    };
    let level = string_or(&raw.level, defaults::LOG_LEVEL);
    if let Some(l) = &raw.level {
        const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
        let text = l.get_ref().trim();
        // EnvFilter accepts a bare word as a target name, so `infoo` would silently log everything from a
        // target nobody has; treat a bare word close to a level name as the typo it is.
        let bare = !text.contains(['=', ',', ':', '[']);
        let typo = bare
            && !LEVELS.contains(&text.to_ascii_lowercase().as_str())
            && closest(text, &LEVELS).is_some();
        let parse_err = tracing_subscriber::EnvFilter::builder()
            .parse(text)
            .err()
            .map(|e| e.to_string());
        if typo || parse_err.is_some() || text.is_empty() {
            let detail = parse_err.map(|e| format!(" ({e})")).unwrap_or_default();
            return Err(cx.at(
                l.span(),
                &format!("`level` in [log] is `{text}`, which is not a log filter{detail}"),
                &format!(
                    "{}use a level (trace, debug, info, warn, error, off) or EnvFilter directives, e.g. level = \"info,uid2_enricher=debug\"",
                    closest(text, &LEVELS)
                        .map(|s| format!("did you mean `{s}`? "))
                        .unwrap_or_default()
                ),
            ));
        }
    }
    Ok(LogSettings { format, level })
}

// ---------------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------------

fn string_or(field: &Field<String>, default: &str) -> String {
    field
        .as_ref()
        .map_or_else(|| default.to_string(), |v| v.get_ref().clone())
}

fn bool_or(field: &Field<bool>, default: bool) -> bool {
    field.as_ref().map_or(default, |v| *v.get_ref())
}

fn positive_ms(
    cx: &Cx<'_>,
    field: &Field<u64>,
    default: u64,
    key: &str,
    table: &str,
) -> Result<u64, ConfigError> {
    match field {
        None => Ok(default),
        Some(v) if *v.get_ref() == 0 => Err(cx.at(
            v.span(),
            &format!("`{key}` in {table} is 0"),
            &format!("use a positive number of milliseconds (default {default})"),
        )),
        Some(v) => Ok(*v.get_ref()),
    }
}

fn choice_hint(given: &str, choices: &[&str]) -> String {
    let valid = choices
        .iter()
        .map(|c| format!("\"{c}\""))
        .collect::<Vec<_>>()
        .join(" or ");
    match closest(given, choices) {
        Some(c) => format!("did you mean \"{c}\"? (valid values: {valid})"),
        None => format!("valid values: {valid}"),
    }
}

/// The candidate nearest to `given` by edit distance (case-insensitive), if it is close enough to be a
/// plausible typo.
pub fn closest<'a>(given: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let given_lower = given.to_lowercase();
    let (best, distance) = candidates
        .iter()
        .map(|c| (*c, edit_distance(&given_lower, &c.to_lowercase())))
        .min_by_key(|(_, d)| *d)?;
    let limit = (given.chars().count().max(best.chars().count()) / 3).max(1);
    (distance <= limit).then_some(best)
}

/// Edit distance over characters: insertions, deletions, substitutions and swaps of adjacent characters
/// (optimal string alignment), so `kafak` is one edit from `kafka`.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let width = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * width];
    for i in 0..=a.len() {
        d[i * width] = i;
    }
    for (j, cell) in d.iter_mut().enumerate().take(width) {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[(i - 1) * width + j] + 1)
                .min(d[i * width + j - 1] + 1)
                .min(d[(i - 1) * width + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[(i - 2) * width + j - 2] + 1);
            }
            d[i * width + j] = best;
        }
    }
    d[a.len() * width + b.len()]
}

/// The secret-looking keys check: anywhere outside the librdkafka pass-through tables.
fn check_no_secrets(
    cx: &Cx<'_>,
    table: &DeTable<'_>,
    path: &mut Vec<String>,
) -> Result<(), ConfigError> {
    if path.len() == 2
        && path[0] == "kafka"
        && matches!(path[1].as_str(), "client" | "consumer" | "producer")
    {
        return Ok(());
    }
    for (key, value) in table {
        let name = key.get_ref().as_ref();
        if let Some((_, var)) = SECRET_KEYS
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
        {
            return Err(cx.at(
                key.span(),
                &format!(
                    "`{name}` in {} looks like a secret, and secrets are never read from the config file",
                    table_label(path)
                ),
                &format!("remove this line and set the environment variable {var} instead"),
            ));
        }
        path.push(name.to_string());
        match value.get_ref() {
            DeValue::Table(inner) => check_no_secrets(cx, inner, path)?,
            DeValue::Array(items) => {
                for item in items.iter() {
                    if let DeValue::Table(inner) = item.get_ref() {
                        check_no_secrets(cx, inner, path)?;
                    }
                }
            }
            _ => {}
        }
        path.pop();
    }
    Ok(())
}

fn table_label(path: &[String]) -> String {
    if path.is_empty() {
        "the top level".to_string()
    } else {
        format!("[{}]", path.join("."))
    }
}

/// The span of the key at `path` (table names, then the key), following arrays of tables to their last
/// element that has the key.
fn span_of_key(table: &DeTable<'_>, path: &[&str]) -> Option<Range<usize>> {
    let (first, rest) = path.split_first()?;
    let (key, value) = table.iter().find(|(k, _)| k.get_ref().as_ref() == *first)?;
    if rest.is_empty() {
        return Some(key.span());
    }
    match value.get_ref() {
        DeValue::Table(inner) => span_of_key(inner, rest),
        _ => None,
    }
}

/// The key path of the key or value that starts at `offset`: where a serde error happened.
fn path_at(table: &DeTable<'_>, offset: usize, path: &mut Vec<String>) -> bool {
    for (key, value) in table {
        path.push(key.get_ref().to_string());
        if key.span().start == offset || value.span().start == offset {
            // A table value's span may start where a key inside it starts; prefer the deeper match
            // (on no match, the recursion leaves `path` as it was).
            if let DeValue::Table(inner) = value.get_ref() {
                path_at(inner, offset, path);
            }
            return true;
        }
        match value.get_ref() {
            DeValue::Table(inner) if path_at(inner, offset, path) => return true,
            DeValue::Table(_) => {}
            DeValue::Array(items) => {
                for item in items.iter() {
                    if item.span().start == offset {
                        return true;
                    }
                    if let DeValue::Table(inner) = item.get_ref()
                        && path_at(inner, offset, path)
                    {
                        return true;
                    }
                }
            }
            _ => {}
        }
        path.pop();
    }
    false
}

/// The text being parsed and its name: turns spans into `file:line:column`.
struct Cx<'a> {
    text: &'a str,
    origin: &'a str,
}

impl Cx<'_> {
    fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let mut offset = offset;
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &self.text[..offset];
        let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        (line, column)
    }

    fn location(&self, offset: usize) -> String {
        let (l, c) = self.line_col(offset);
        format!("{}:{l}:{c}", self.origin)
    }

    fn at(&self, span: Range<usize>, problem: &str, hint: &str) -> ConfigError {
        ConfigError {
            message: format!("{problem} at {}; {hint}", self.location(span.start)),
            origin: self.origin.to_string(),
            position: Some(self.line_col(span.start)),
        }
    }

    fn at_opt(&self, span: Option<Range<usize>>, problem: &str, hint: &str) -> ConfigError {
        match span {
            Some(span) => self.at(span, problem, hint),
            None => ConfigError {
                message: format!("{problem} (by default, in {}); {hint}", self.origin),
                origin: self.origin.to_string(),
                position: None,
            },
        }
    }

    fn plain(&self, problem: &str, hint: &str) -> ConfigError {
        ConfigError {
            message: format!("{}: {problem}; {hint}", self.origin),
            origin: self.origin.to_string(),
            position: None,
        }
    }

    fn syntax_error(&self, e: &toml::de::Error) -> ConfigError {
        let problem = format!("TOML syntax error: {}", e.message().trim());
        let hint = "strings need double quotes (mode = \"bidstream\"), tables are [name] on their own line, and each key appears once; config/enricher.toml shows every option";
        match e.span() {
            Some(span) => self.at(span, &problem, hint),
            None => self.plain(&problem, hint),
        }
    }

    /// A serde error from stage 1: an unknown key, a wrong type, a missing key in a source entry.
    fn serde_error(&self, doc: &DeTable<'_>, e: &toml::de::Error) -> ConfigError {
        let message = e.message().trim();
        let Some(span) = e.span() else {
            return self.plain(message, "config/enricher.toml shows every option");
        };
        let mut path = Vec::new();
        path_at(doc, span.start, &mut path);
        if let Some(unknown) = parse_unknown_field(message) {
            // `path` ends with the unknown key itself.
            let table_path: Vec<String> = path
                .iter()
                .take(path.len().saturating_sub(1))
                .cloned()
                .collect();
            return self.unknown_key(span, &unknown, &table_path);
        }
        let what = match path.as_slice() {
            [] => String::new(),
            [only] => format!(" for `{only}`"),
            [table @ .., key] => format!(" for `{key}` in [{}]", table.join(".")),
        };
        let hint = type_hint(message, path.last().map(String::as_str));
        self.at(span, &format!("{message}{what}"), &hint)
    }

    fn unknown_key(
        &self,
        span: Range<usize>,
        unknown: &UnknownField,
        table_path: &[String],
    ) -> ConfigError {
        // Array-of-tables entries are named without an index: pipeline.sources.
        let table_name = table_path.join(".");
        let known: Vec<&str> = KNOWN_KEYS
            .iter()
            .find(|(t, _)| *t == table_name)
            .map_or_else(
                || unknown.expected.iter().map(String::as_str).collect(),
                |(_, k)| k.to_vec(),
            );
        let is_top = table_path.is_empty();
        let label = format!("[{table_name}]");
        let mut hint = match closest(&unknown.name, &known) {
            Some(s) if is_top => format!("did you mean [{s}]?"),
            Some(s) => format!("did you mean `{s}`?"),
            None => {
                // The right key in the wrong table?
                match KNOWN_KEYS.iter().find(|(t, keys)| {
                    *t != table_name && !t.is_empty() && keys.contains(&unknown.name.as_str())
                }) {
                    Some((t, _)) => format!("`{}` belongs in [{t}]", unknown.name),
                    None => "remove it or check the spelling".to_string(),
                }
            }
        };
        hint.push_str(&format!(
            " (valid {}s: {})",
            if is_top { "table" } else { "key" },
            known.join(", ")
        ));
        let problem = if is_top {
            format!("unknown top-level key `{}`", unknown.name)
        } else {
            format!("unknown key `{}` in {label}", unknown.name)
        };
        self.at(span, &problem, &hint)
    }
}

struct UnknownField {
    name: String,
    expected: Vec<String>,
}

/// serde's "unknown field `x`, expected one of `a`, `b`" (or "expected `a`", "there are no fields").
fn parse_unknown_field(message: &str) -> Option<UnknownField> {
    let rest = message.strip_prefix("unknown field `")?;
    let end = rest.find('`')?;
    let name = rest[..end].to_string();
    let expected = rest[end + 1..]
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    Some(UnknownField { name, expected })
}

fn type_hint(message: &str, key: Option<&str>) -> String {
    let example = key.and_then(example_for);
    let base = if message.contains("expected u64") || message.contains("expected usize") {
        "use a whole number without quotes"
    } else if message.contains("expected a boolean") {
        "use true or false without quotes"
    } else if message.contains("expected a string") {
        "use a double-quoted string"
    } else if message.contains("expected a sequence") {
        "use an array of strings"
    } else if message.starts_with("missing field") {
        "each [[pipeline.sources]] entry needs both name and scope"
    } else {
        "config/enricher.toml shows every option with its type"
    };
    match example {
        Some(ex) if !base.contains("e.g.") => format!("{base}, e.g. {ex}"),
        _ => base.to_string(),
    }
}

fn example_for(key: &str) -> Option<&'static str> {
    Some(match key {
        "brokers" => "brokers = \"127.0.0.1:9092\"",
        "group_id" => "group_id = \"uid2-enricher\"",
        "input_topics" => "input_topics = [\"bid-requests\"]",
        "output_topic" => "output_topic = \"bid-requests-enriched\"",
        "dlq_topic" => "dlq_topic = \"bid-requests-dlq\"",
        "mode" => "mode = \"bidstream\"",
        "keys_file" => "keys_file = \"config/demo-keys.json\"",
        "base_url" => "base_url = \"https://prod.uidapi.com\"",
        "refresh_interval_secs" => "refresh_interval_secs = 3600",
        "refresh_jitter_secs" => "refresh_jitter_secs = 300",
        "retry_initial_backoff_ms" => "retry_initial_backoff_ms = 1000",
        "retry_max_backoff_ms" => "retry_max_backoff_ms = 60000",
        "request_timeout_ms" => "request_timeout_ms = 10000",
        "topic" => "topic = \"uid2-optouts\"",
        "listen" => "listen = \"127.0.0.1:9898\"",
        "format" => "format = \"openrtb\"",
        "pixel_token_param" => "pixel_token_param = \"uid2_token\"",
        "event_token_pointers" => "event_token_pointers = [\"/uid2_token\"]",
        "direction" => "direction = \"enrich\"",
        "tokenize_pointers" => "tokenize_pointers = [\"/uid2\"]",
        "sources" => "[[pipeline.sources]] name = \"uidapi.com\" scope = \"UID2\"",
        "member_name" => "member_name = \"uid2_enrichment\"",
        "strict_json" => "strict_json = false",
        "max_in_flight" => "max_in_flight = 10000",
        "workers" => "workers = 0",
        "cache_entries" => "cache_entries = 200000",
        "drain_timeout_ms" => "drain_timeout_ms = 2500",
        "shutdown_timeout_ms" => "shutdown_timeout_ms = 8000",
        "enrich" => "enrich = true",
        "level" => "level = \"info\"",
        "name" => "name = \"uidapi.com\"",
        "scope" => "scope = \"UID2\"",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let sharing = |extra: &str| {
            format!("[uid2]\nmode = \"sharing\"\nkeys_file = \"{KEYS_FILE}\"\n{extra}")
        };
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
    fn known_keys_cover_the_raw_structs() {
        // Every key in KNOWN_KEYS must be accepted by stage 1.
        for (table, keys) in KNOWN_KEYS {
            if table.is_empty() || *table == "pipeline.sources" {
                continue;
            }
            for key in *keys {
                let value = match *key {
                    "client" | "consumer" | "producer" | "formats" => "{}".to_string(),
                    "input_topics" | "sources" | "event_token_pointers" | "tokenize_pointers" => {
                        "[]".to_string()
                    }
                    "strict_json" | "enrich" => "true".to_string(),
                    k if k.ends_with("_ms")
                        || k.ends_with("_secs")
                        || k == "max_in_flight"
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
}
