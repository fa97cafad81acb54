//! Stage 1: the file as written. Every table is `deny_unknown_fields` and every value [`Spanned`], so an
//! unknown key is refused and a bad value can be reported where it is.

use serde::Deserialize;
use toml::Spanned;

pub(super) type Field<T> = Option<Spanned<T>>;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) kafka: Option<RawKafka>,
    pub(super) uid2: Option<Spanned<RawUid2>>,
    pub(super) optout: Option<RawOptOut>,
    pub(super) server: Option<RawServer>,
    pub(super) pipeline: Option<RawPipeline>,
    pub(super) log: Option<RawLog>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKafka {
    pub(super) brokers: Field<String>,
    pub(super) group_id: Field<String>,
    pub(super) input_topics: Field<Vec<Spanned<String>>>,
    pub(super) output_topic: Field<String>,
    pub(super) dlq_topic: Field<String>,
    // Pass-through: any keys; read again from the spanned document for positions.
    pub(super) client: Option<toml::Table>,
    pub(super) consumer: Option<toml::Table>,
    pub(super) producer: Option<toml::Table>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUid2 {
    pub(super) mode: Field<String>,
    pub(super) keys_file: Field<String>,
    pub(super) base_url: Field<String>,
    pub(super) refresh_interval_secs: Field<u64>,
    pub(super) refresh_jitter_secs: Field<u64>,
    pub(super) retry_initial_backoff_ms: Field<u64>,
    pub(super) retry_max_backoff_ms: Field<u64>,
    pub(super) request_timeout_ms: Field<u64>,
    pub(super) key_sources: Field<Vec<Spanned<RawKeySource>>>,
}

/// One `[[uid2.key_sources]]` entry.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKeySource {
    pub(super) name: Field<String>,
    pub(super) scope: Spanned<String>,
    pub(super) keys_file: Field<String>,
    pub(super) base_url: Field<String>,
    pub(super) api_key_env: Field<String>,
    pub(super) secret_key_env: Field<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOptOut {
    pub(super) topic: Field<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) listen: Field<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPipeline {
    pub(super) format: Field<String>,
    /// Input topic → format: any keys (topic names), checked against `input_topics`.
    pub(super) formats: Option<std::collections::BTreeMap<String, Spanned<String>>>,
    pub(super) pixel_token_param: Field<String>,
    pub(super) event_token_pointers: Field<Vec<Spanned<String>>>,
    pub(super) direction: Field<String>,
    pub(super) tokenize_pointers: Field<Vec<Spanned<String>>>,
    pub(super) sources: Field<Vec<Spanned<RawSource>>>,
    pub(super) member_name: Field<String>,
    pub(super) strict_json: Field<bool>,
    pub(super) max_in_flight: Field<u64>,
    pub(super) workers: Field<u64>,
    pub(super) cache_entries: Field<u64>,
    pub(super) drain_timeout_ms: Field<u64>,
    pub(super) shutdown_timeout_ms: Field<u64>,
    pub(super) enrich: Field<bool>,
    pub(super) delivery: Field<String>,
    pub(super) transactional_id: Field<String>,
    pub(super) transaction_max_records: Field<u64>,
    pub(super) transaction_max_ms: Field<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSource {
    pub(super) name: Spanned<String>,
    pub(super) scope: Spanned<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub(super) format: Field<String>,
    pub(super) level: Field<String>,
}
