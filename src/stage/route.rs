//! What one consumed record becomes: enriched or tokenized through the engine (counted in the metrics),
//! and then where it goes — the output topic with its status headers, or the dead-letter topic with the
//! reason and the source's coordinates.

use std::borrow::Cow;
use std::time::Instant;

use rdkafka::Message;
use rdkafka::message::OwnedMessage;

use crate::engine::enrich;
use crate::engine::tokenize::{self, Direction, TokenizeContext, TokenizeError};
use crate::engine::uid2::Status;
use crate::stage::headers;
use crate::stage::pipeline::{OutputPartitioning, Shared, StageConfig};
use crate::support::clock::wall_clock_ms;
use crate::support::metrics::{ReasonLabel, StatusLabel};

/// What one record became. `payload` borrows the input when the request passes unchanged.
pub(crate) enum Outcome<'m> {
    Output {
        payload: Cow<'m, [u8]>,
        status: &'static str,
        member: Option<String>,
    },
    Passthrough,
    DeadLetter {
        reason: &'static str,
    },
    /// Tokenize direction: the keys cannot encrypt now; the record must wait (never go out raw).
    WaitForKeys {
        reason: String,
    },
}

/// Where an outcome goes: the topic, the body, the headers added after the input's own, and the
/// partition when the stage pins it.
pub(crate) struct Routed<'a> {
    pub topic: &'a str,
    pub payload: &'a [u8],
    pub headers: Vec<(&'static str, Vec<u8>)>,
    pub partition: Option<i32>,
}

/// Where `outcome` goes; `None` for a record still waiting for keys, which must never be produced.
pub(crate) fn route<'a>(
    config: &'a StageConfig,
    message: &'a OwnedMessage,
    outcome: &'a Outcome<'_>,
) -> Option<Routed<'a>> {
    let (topic, payload, headers): (&str, &[u8], _) = match outcome {
        Outcome::Output {
            payload,
            status,
            member,
        } => {
            let mut extra = vec![(headers::STATUS, status.as_bytes().to_vec())];
            if let Some(member) = member {
                extra.push((headers::ENRICHMENT, member.as_bytes().to_vec()));
            }
            (&config.output_topic, payload.as_ref(), extra)
        }
        Outcome::Passthrough => (
            &config.output_topic,
            message.payload().unwrap_or_default(),
            Vec::new(),
        ),
        Outcome::DeadLetter { reason } => (
            &config.dlq_topic,
            message.payload().unwrap_or_default(),
            headers::dead_letter(
                reason,
                message.topic(),
                message.partition(),
                message.offset(),
            )
            .to_vec(),
        ),
        Outcome::WaitForKeys { .. } => return None,
    };
    let pinned =
        config.output_partitioning == OutputPartitioning::Same && topic == config.output_topic;
    Some(Routed {
        topic,
        payload,
        headers,
        partition: pinned.then(|| message.partition()),
    })
}

/// What to do with one record, by the stage's direction.
pub(crate) fn handle_record<'m>(
    shared: &Shared,
    message: &'m OwnedMessage,
    output_buffer: &'m mut Vec<u8>,
) -> Outcome<'m> {
    if !shared.config.enrich {
        return Outcome::Passthrough;
    }
    match shared.config.direction {
        Direction::Enrich => enrich_record(shared, message, output_buffer),
        Direction::Tokenize => tokenize_record(shared, message),
    }
}

/// An output record, counted under its `uid2-status`.
fn output<'m>(
    shared: &Shared,
    payload: Cow<'m, [u8]>,
    status: &'static str,
    member: Option<String>,
) -> Outcome<'m> {
    shared
        .metrics
        .request_status
        .get_or_create(&StatusLabel { status })
        .inc();
    Outcome::Output {
        payload,
        status,
        member,
    }
}

fn dead_letter(shared: &Shared, reason: &'static str) -> Outcome<'static> {
    shared
        .metrics
        .dead_lettered
        .get_or_create(&ReasonLabel { reason })
        .inc();
    Outcome::DeadLetter { reason }
}

/// The sharing sender: raw UID2s at the configured pointers become tokens with fresh random nonces.
pub(crate) fn tokenize_record<'m>(shared: &Shared, message: &'m OwnedMessage) -> Outcome<'m> {
    let Some(payload) = message.payload() else {
        return dead_letter(shared, "no_payload");
    };
    let keys = shared.keys.current();
    let ctx = TokenizeContext {
        keys: keys.as_deref(),
        now_ms: wall_clock_ms(),
    };
    let mut nonces = crate::support::clock::token_nonce;
    let started = Instant::now();
    let result = tokenize::tokenize(payload, &ctx, &shared.config.tokenize, &mut nonces);
    shared
        .metrics
        .enrich_seconds
        .observe(started.elapsed().as_secs_f64());
    match result {
        Ok(tokenized) => output(shared, tokenized.output, tokenized.status.as_str(), None),
        Err(TokenizeError::Malformed(malformed)) => dead_letter(shared, malformed.reason),
        Err(TokenizeError::Keys(e)) => Outcome::WaitForKeys {
            reason: e.to_string(),
        },
    }
}

/// An enriched JSON or protobuf request is written to `output_buffer` (empty on entry), and the outcome
/// borrows it.
fn enrich_record<'m>(
    shared: &Shared,
    message: &'m OwnedMessage,
    output_buffer: &'m mut Vec<u8>,
) -> Outcome<'m> {
    let Some(payload) = message.payload() else {
        return dead_letter(shared, "no_payload");
    };
    let keys = shared.keys.snapshot();
    let ctx = enrich::Context {
        keys: keys.keys(),
        optouts: shared.optouts.as_ref(),
        cache: shared.cache.as_ref(),
        now_ms: wall_clock_ms(),
    };
    let started = Instant::now();
    let format = shared.config.format_for(message.topic());
    let result = enrich::enrich_into(payload, format, &ctx, &shared.config.policy, output_buffer);
    shared
        .metrics
        .enrich_seconds
        .observe(started.elapsed().as_secs_f64());
    match result {
        Ok(enriched) => {
            for t in &enriched.tokens {
                shared
                    .metrics
                    .token_status
                    .get_or_create(&StatusLabel {
                        status: t.decryption.status.as_str(),
                    })
                    .inc();
                if t.decryption.status == Status::OptedOut {
                    shared.metrics.opted_out.inc();
                }
            }
            let status = enriched.status_header();
            output(shared, enriched.output, status, enriched.member_json)
        }
        Err(malformed) => dead_letter(shared, malformed.reason),
    }
}
