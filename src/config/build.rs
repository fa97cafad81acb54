//! Stage 2: the raw tables checked value by value and turned into [`Settings`] (`[uid2]` in
//! [`super::uid2`]).
//!
//! `[log] level` is parsed with `tracing_subscriber::EnvFilter`, the parser that will later use it, so a
//! value accepted here is one it accepts.

use std::net::SocketAddr;
use std::time::Duration;

use toml::Spanned;
use toml::de::DeTable;

use super::diagnostics::{ConfigError, Cx, choice_hint, closest, span_of_key};
use super::keys::{OWNED_PROPERTIES, defaults};
use super::raw::{
    Field, RawConfig, RawKafka, RawLog, RawOptOut, RawPipeline, RawServer, RawSource,
};
use super::settings::{
    Delivery, KafkaProps, KafkaSettings, LogSettings, OptOutSettings, PipelineSettings,
    ServerSettings, Settings, TransactionSettings,
};
use super::{ENV_OPTOUT_TOKEN, LogFormat, Redacted};
use crate::engine::enrich::{PayloadFormat, Policy, TokenSource};
use crate::engine::formats::event::JsonPointer;
use crate::engine::tokenize::{Direction, TokenizePolicy};
use crate::engine::uid2::{ClientMode, IdentityScope};

pub(super) fn build(
    cx: &Cx<'_>,
    doc: &DeTable<'_>,
    raw: RawConfig,
    env: &dyn Fn(&str) -> Option<String>,
    credentials: &dyn Fn(&str) -> Option<String>,
) -> Result<Settings, ConfigError> {
    let kafka = build_kafka(cx, doc, raw.kafka.unwrap_or_default())?;
    let uid2 = super::uid2::build_uid2(cx, raw.uid2, credentials)?;
    let optout = build_optout(cx, raw.optout.unwrap_or_default(), &kafka, env)?;
    let server = build_server(cx, raw.server.unwrap_or_default())?;
    let pipeline = build_pipeline(
        cx,
        raw.pipeline.unwrap_or_default(),
        uid2.mode,
        &kafka.input_topics,
    )?;
    if pipeline.direction == Direction::Tokenize && uid2.sources.len() > 1 {
        return Err(cx.plain(
            &format!(
                "[pipeline] direction = \"tokenize\" makes tokens with one key set, but [[uid2.key_sources]] lists {}",
                uid2.sources.len()
            ),
            "a sharing sender encrypts with its own operator's sharing keys: keep the one key source whose tokens you send",
        ));
    }
    for scope in uid2.sources.iter().filter_map(|k| k.scope) {
        if !pipeline.policy.sources.iter().any(|s| s.scope == scope) {
            let (name, example) = match scope {
                IdentityScope::Uid2 => ("UID2", "uidapi.com"),
                IdentityScope::Euid => ("EUID", "euid.eu"),
            };
            return Err(cx.plain(
                &format!(
                    "[[uid2.key_sources]] has a {name} source, but no [[pipeline.sources]] entry has scope = \"{name}\", so no {name} token would be looked for"
                ),
                &format!(
                    "add [[pipeline.sources]] name = \"{example}\" scope = \"{name}\" (the eid source {name} tokens arrive under), or remove the key source"
                ),
            ));
        }
    }
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
    let (format, topic_formats) = payload_formats(cx, &raw, input_topics)?;
    let direction = pipeline_direction(cx, &raw.direction, mode, format, &topic_formats)?;
    let tokenize = TokenizePolicy {
        pointers: pointer_list(
            cx,
            &raw.tokenize_pointers,
            &defaults::TOKENIZE_POINTERS,
            "tokenize_pointers",
        )?,
    };
    let policy = enrich_policy(cx, &raw, mode)?;
    let max_in_flight = max_in_flight(cx, &raw.max_in_flight)?;
    let workers = workers(cx, &raw.workers)?;
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
    let delivery = delivery(cx, &raw)?;
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
        delivery,
    })
}

/// `delivery`, and with `exactly_once` its transactions.
fn delivery(cx: &Cx<'_>, raw: &RawPipeline) -> Result<Delivery, ConfigError> {
    let name = raw
        .delivery
        .as_ref()
        .map_or(defaults::DELIVERY, |d| d.get_ref().as_str());
    match name {
        "at_least_once" => {
            if let Some(id) = &raw.transactional_id {
                return Err(cx.at(
                    id.span(),
                    "`transactional_id` in [pipeline] applies to delivery = \"exactly_once\" only",
                    "set delivery = \"exactly_once\" to use transactions, or remove transactional_id",
                ));
            }
            Ok(Delivery::AtLeastOnce)
        }
        "exactly_once" => {
            let at = raw.delivery.as_ref().map(Spanned::span);
            let id = match &raw.transactional_id {
                None => {
                    return Err(cx.at_opt(
                        at,
                        "delivery = \"exactly_once\" needs `transactional_id` in [pipeline]",
                        "give each instance its own id, stable across its restarts, e.g. transactional_id = \"${POD_NAME}\" in a Kubernetes StatefulSet: a restarted instance then fences its former self; two running instances with one id fence each other",
                    ));
                }
                Some(id) if id.get_ref().trim().is_empty() => {
                    return Err(cx.at(
                        id.span(),
                        "`transactional_id` in [pipeline] is empty",
                        "give each instance its own id, stable across its restarts, e.g. transactional_id = \"${POD_NAME}\"",
                    ));
                }
                Some(id) => id.get_ref().trim().to_string(),
            };
            let max_records = raw
                .transaction_max_records
                .as_ref()
                .map_or(defaults::TRANSACTION_MAX_RECORDS, |v| *v.get_ref());
            if let Some(v) = &raw.transaction_max_records
                && *v.get_ref() == 0
            {
                return Err(cx.at(
                    v.span(),
                    "`transaction_max_records` in [pipeline] is 0",
                    &format!(
                        "commit after at least 1 record (default {})",
                        defaults::TRANSACTION_MAX_RECORDS
                    ),
                ));
            }
            let max_ms = positive_ms(
                cx,
                &raw.transaction_max_ms,
                defaults::TRANSACTION_MAX_MS,
                "transaction_max_ms",
                "[pipeline]",
            )?;
            if let Some(v) = &raw.transaction_max_ms
                && max_ms > 30_000
            {
                return Err(cx.at(
                    v.span(),
                    &format!("`transaction_max_ms` in [pipeline] is {max_ms}, over 30000"),
                    "a transaction must commit well within transaction.timeout.ms (60 s), and a read_committed reader waits for it: use at most a few seconds",
                ));
            }
            Ok(Delivery::ExactlyOnce(TransactionSettings {
                transactional_id: id,
                max_records,
                max_duration: Duration::from_millis(max_ms),
            }))
        }
        other => Err(cx.at_opt(
            raw.delivery.as_ref().map(Spanned::span),
            &format!("`delivery` in [pipeline] is `{other}`"),
            &choice_hint(other, &["at_least_once", "exactly_once"]),
        )),
    }
}

/// `format` and `[pipeline.formats]`, whose topics must be input topics.
fn payload_formats(
    cx: &Cx<'_>,
    raw: &RawPipeline,
    input_topics: &[String],
) -> Result<(PayloadFormat, Vec<(String, PayloadFormat)>), ConfigError> {
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
    Ok((format, topic_formats))
}

/// `direction`; tokenizing needs sharing keys and JSON inputs.
fn pipeline_direction(
    cx: &Cx<'_>,
    field: &Field<String>,
    mode: ClientMode,
    format: PayloadFormat,
    topic_formats: &[(String, PayloadFormat)],
) -> Result<Direction, ConfigError> {
    let direction = match field {
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
                field.as_ref().map(Spanned::span),
                "`direction = \"tokenize\"` in [pipeline] needs sharing keys, but [uid2] mode is not \"sharing\"",
                "set mode = \"sharing\" in [uid2]: tokens are made with the default keyset of /v2/key/sharing",
            ));
        }
        let json_only = |f: PayloadFormat| matches!(f, PayloadFormat::Json | PayloadFormat::Event);
        if !json_only(format) || topic_formats.iter().any(|(_, f)| !json_only(*f)) {
            return Err(cx.at_opt(
                field.as_ref().map(Spanned::span),
                "`direction = \"tokenize\"` in [pipeline] works on JSON inputs only, but a format is \"protobuf\" or \"pixel\"",
                "use format \"json\" (or \"openrtb\") for the topics this stage tokenizes; raw UID2s never travel in pixels",
            ));
        }
    }
    Ok(direction)
}

/// Where tokens are looked for and how the result is written.
fn enrich_policy(cx: &Cx<'_>, raw: &RawPipeline, mode: ClientMode) -> Result<Policy, ConfigError> {
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
    let sources = token_sources(cx, &raw.sources)?;
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
    Ok(policy)
}

fn token_sources(
    cx: &Cx<'_>,
    sources: &Field<Vec<Spanned<RawSource>>>,
) -> Result<Vec<TokenSource>, ConfigError> {
    Ok(match sources {
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
    })
}

fn max_in_flight(cx: &Cx<'_>, field: &Field<u64>) -> Result<u64, ConfigError> {
    let max_in_flight = field
        .as_ref()
        .map_or(defaults::MAX_IN_FLIGHT, |v| *v.get_ref());
    if let Some(v) = field
        && (*v.get_ref() == 0 || *v.get_ref() > 10_000_000)
    {
        return Err(cx.at(
            v.span(),
            &format!("`max_in_flight` in [pipeline] is {}", v.get_ref()),
            "it bounds the records consumed but not yet acknowledged; use 1 to 10000000 (default 10000)",
        ));
    }
    Ok(max_in_flight)
}

/// The thread count, with 0 resolved to the number of cores.
fn workers(cx: &Cx<'_>, field: &Field<u64>) -> Result<usize, ConfigError> {
    let workers = field.as_ref().map_or(defaults::WORKERS, |v| *v.get_ref());
    if let Some(v) = field
        && *v.get_ref() > 1024
    {
        return Err(cx.at(
            v.span(),
            &format!("`workers` in [pipeline] is {}", v.get_ref()),
            "use 0 (one per core) or a thread count up to 1024",
        ));
    }
    Ok(if workers == 0 {
        std::thread::available_parallelism().map_or(1, usize::from)
    } else {
        workers as usize
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

fn string_or(field: &Field<String>, default: &str) -> String {
    field
        .as_ref()
        .map_or_else(|| default.to_string(), |v| v.get_ref().clone())
}

fn bool_or(field: &Field<bool>, default: bool) -> bool {
    field.as_ref().map_or(default, |v| *v.get_ref())
}

pub(super) fn positive_ms(
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
