//! The one function the pipeline, replay and the benchmarks call: a bid request's bytes in, the same bytes
//! plus one enrichment member out (`../shared/ARCHITECTURE.md`, "The enriched JSON request").
//!
//! Pure: keys, opt-outs, the cache and `now` are arguments; no I/O, no clock. Depends on the token engine
//! (`uid2`), the request readers/writers (`openrtb`), the opt-out rule (`optout`) and the decrypt cache.

use std::borrow::Cow;
use std::io::Write as _;

use crate::cache::DecryptCache;
use crate::openrtb::proto::pb;
use crate::openrtb::{domain, json, proto};
use crate::optout::{self, OptOutLookup};
use crate::uid2::{ClientMode, Decryption, IdentityScope, KeySet, Status, decrypt};

/// How the payload is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum PayloadFormat {
    #[default]
    Json,
    Protobuf,
}

/// An eid `source` whose ids are UID2-family tokens, and which key set decrypts them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenSource {
    pub name: String,
    pub scope: IdentityScope,
}

/// What to look for and how to decrypt and report it.
#[derive(Clone, Debug)]
pub struct Policy {
    pub mode: ClientMode,
    /// In priority order only for reporting; tokens are read in document order.
    pub sources: Vec<TokenSource>,
    /// The member added to `user.ext` (`uid2_enrichment` by contract).
    pub member_name: String,
    /// Validate the whole JSON grammar, not just the structure the scanner walks (costs a full parse).
    pub strict_json: bool,
    source_names: Vec<String>,
}

impl Policy {
    pub fn new(
        mode: ClientMode,
        sources: Vec<TokenSource>,
        member_name: impl Into<String>,
    ) -> Policy {
        let source_names = sources.iter().map(|s| s.name.clone()).collect();
        Policy {
            mode,
            sources,
            member_name: member_name.into(),
            strict_json: false,
            source_names,
        }
    }

    fn source_names(&self) -> Vec<&str> {
        self.source_names.iter().map(String::as_str).collect()
    }
}

impl Default for Policy {
    /// Bidstream mode, `uidapi.com` (UID2) and `euid.eu` (EUID), member `uid2_enrichment`.
    fn default() -> Policy {
        Policy::new(
            ClientMode::Bidstream,
            vec![
                TokenSource {
                    name: "uidapi.com".into(),
                    scope: IdentityScope::Uid2,
                },
                TokenSource {
                    name: "euid.eu".into(),
                    scope: IdentityScope::Euid,
                },
            ],
            "uid2_enrichment",
        )
    }
}

/// The key sets in force. A DSP usually holds one (UID2 or EUID); a token whose scope has no key set of
/// its own is tried with the other, which yields what a single-scope SDK client would answer
/// (`invalid_identity_scope` for v3/v4 tokens).
#[derive(Clone, Copy, Debug, Default)]
pub struct Keys<'a> {
    pub uid2: Option<&'a KeySet>,
    pub euid: Option<&'a KeySet>,
}

impl<'a> Keys<'a> {
    /// Files one key set under the scope it declares.
    pub fn single(keys: Option<&'a KeySet>) -> Keys<'a> {
        match keys {
            Some(k) if k.identity_scope == IdentityScope::Euid => Keys {
                uid2: None,
                euid: Some(k),
            },
            other => Keys {
                uid2: other,
                euid: None,
            },
        }
    }

    pub fn for_scope(&self, scope: IdentityScope) -> Option<&'a KeySet> {
        match scope {
            IdentityScope::Uid2 => self.uid2.or(self.euid),
            IdentityScope::Euid => self.euid.or(self.uid2),
        }
    }
}

/// Everything outside the request that the outcome depends on.
#[derive(Clone, Copy)]
pub struct Context<'a> {
    pub keys: Keys<'a>,
    pub optouts: &'a dyn OptOutLookup,
    pub cache: Option<&'a DecryptCache>,
    pub now_ms: i64,
}

/// One distinct token of the request and what became of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenOutcome {
    pub source_index: usize,
    /// How many times the request carried this token (both eid locations, duplicates).
    pub occurrences: u32,
    /// The decryption, with `opted_out` applied.
    pub decryption: Decryption,
}

/// A request the enricher handled (with or without tokens).
#[derive(Clone, Debug)]
pub struct Enriched<'a> {
    /// The request as it goes on: borrowed (byte-identical) when nothing was added.
    pub output: Cow<'a, [u8]>,
    /// Distinct tokens in document order.
    pub tokens: Vec<TokenOutcome>,
    /// Index into `tokens` of the reported token: the first success, else the first.
    pub selected: Option<usize>,
    /// Token occurrences in the request.
    pub token_count: usize,
    /// The enrichment member as compact JSON (also the body of the mirror header), when there were tokens.
    pub member_json: Option<String>,
    /// False when tokens were found but the body could not carry the result (`user.ext` neither an object
    /// nor null); the header still does.
    pub body_enriched: bool,
}

impl Enriched<'_> {
    /// The status of the selected token, `None` when the request carried no token.
    pub fn status(&self) -> Option<Status> {
        self.selected
            .and_then(|i| self.tokens.get(i))
            .map(|t| t.decryption.status)
    }

    /// The `uid2-status` header value: the status, or `no_token`.
    pub fn status_header(&self) -> &'static str {
        self.status().map_or("no_token", Status::as_str)
    }
}

/// A payload that cannot be a bid request; it goes to the dead-letter topic with `reason`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct Malformed {
    /// Short and stable, for the `uid2-error` header and metrics: `not_utf8`, `truncated_protobuf`, …
    pub reason: &'static str,
    pub detail: String,
}

/// Enriches one request. See the module docs and ARCHITECTURE.md for the contract.
///
/// # Errors
/// [`Malformed`] when the payload is not a JSON object (not UTF-8, truncated, unbalanced, …) or not a
/// well-formed protobuf message.
pub fn enrich<'a>(
    payload: &'a [u8],
    format: PayloadFormat,
    ctx: &Context<'_>,
    policy: &Policy,
) -> Result<Enriched<'a>, Malformed> {
    match format {
        PayloadFormat::Json => enrich_json(payload, ctx, policy),
        PayloadFormat::Protobuf => enrich_proto(payload, ctx, policy),
    }
}

fn enrich_json<'a>(
    payload: &'a [u8],
    ctx: &Context<'_>,
    policy: &Policy,
) -> Result<Enriched<'a>, Malformed> {
    let malformed = |e: json::JsonError| Malformed {
        reason: e.reason(),
        detail: e.to_string(),
    };
    if policy.strict_json {
        json::validate_strict(payload).map_err(malformed)?;
    }
    let scan =
        json::scan(payload, &policy.source_names(), &policy.member_name).map_err(malformed)?;
    if scan.tokens.is_empty() {
        return Ok(unchanged(payload));
    }
    let name = domain::domain_or_app_name(
        scan.site_domain.as_deref(),
        scan.site_page.as_deref(),
        scan.app_bundle.as_deref(),
    );
    let found = scan.tokens.iter().map(|t| (t.id.as_ref(), t.source_index));
    let mut enriched = decide(found, name.as_deref(), ctx, policy);
    let member = enriched.member_json.as_deref().unwrap_or_default();
    if let Some(bytes) = json::splice(payload, &scan, &policy.member_name, member) {
        enriched.output = Cow::Owned(bytes);
        enriched.body_enriched = true;
    }
    Ok(enriched)
}

fn enrich_proto<'a>(
    payload: &'a [u8],
    ctx: &Context<'_>,
    policy: &Policy,
) -> Result<Enriched<'a>, Malformed> {
    let scan = proto::scan(payload, &policy.source_names()).map_err(|e| Malformed {
        reason: e.reason(),
        detail: e.to_string(),
    })?;
    if scan.tokens.is_empty() {
        return Ok(unchanged(payload));
    }
    let name = domain::domain_or_app_name(scan.site_domain, scan.site_page, scan.app_bundle);
    let found = scan.tokens.iter().map(|t| (t.id, t.source_index));
    let mut enriched = decide(found, name.as_deref(), ctx, policy);
    if let Some(selected) = enriched.selected.and_then(|i| enriched.tokens.get(i)) {
        let message = enrichment_message(selected, policy, enriched.token_count);
        enriched.output = Cow::Owned(proto::append_enrichment(payload, &scan, &message));
        enriched.body_enriched = true;
    }
    Ok(enriched)
}

fn unchanged(payload: &[u8]) -> Enriched<'_> {
    Enriched {
        output: Cow::Borrowed(payload),
        tokens: Vec::new(),
        selected: None,
        token_count: 0,
        member_json: None,
        body_enriched: false,
    }
}

/// Decrypts each distinct token once, applies the opt-out rule, selects the reported token and renders
/// the member. `found` yields (token text, source index) in document order.
fn decide<'t>(
    found: impl Iterator<Item = (&'t str, usize)>,
    name: Option<&str>,
    ctx: &Context<'_>,
    policy: &Policy,
) -> Enriched<'static> {
    let mut distinct: Vec<(&'t str, usize, u32)> = Vec::with_capacity(2);
    let mut token_count = 0;
    for (token, source_index) in found {
        token_count += 1;
        // Requests carry a handful of tokens: a linear scan beats hashing them.
        match distinct.iter_mut().find(|(t, _, _)| *t == token) {
            Some((_, _, n)) => *n += 1,
            None => distinct.push((token, source_index, 1)),
        }
    }
    let tokens: Vec<TokenOutcome> = distinct
        .into_iter()
        .map(|(token, source_index, occurrences)| {
            let scope = policy
                .sources
                .get(source_index)
                .map_or(IdentityScope::Uid2, |s| s.scope);
            let keys = ctx.keys.for_scope(scope);
            let mut decryption = match ctx.cache {
                Some(cache) => cache.decrypt(token, keys, policy.mode, name, ctx.now_ms),
                None => decrypt(token, keys, policy.mode, name, ctx.now_ms),
            };
            apply_optout(&mut decryption, ctx.optouts);
            TokenOutcome {
                source_index,
                occurrences,
                decryption,
            }
        })
        .collect();
    let selected = tokens
        .iter()
        .position(|t| t.decryption.is_success())
        .or(if tokens.is_empty() { None } else { Some(0) });
    let member_json = selected
        .and_then(|i| tokens.get(i))
        .map(|t| member_json(t, policy, token_count));
    Enriched {
        output: Cow::Borrowed(&[]),
        tokens,
        selected,
        token_count,
        member_json,
        body_enriched: false,
    }
}

fn apply_optout(decryption: &mut Decryption, optouts: &dyn OptOutLookup) {
    if decryption.status != Status::Success {
        return;
    }
    if let (Some(raw), Some(established)) =
        (decryption.raw_uid2.as_deref(), decryption.established_ms)
        && optout::is_opted_out(optouts, raw, established)
    {
        decryption.status = Status::OptedOut;
        decryption.raw_uid2 = None;
    }
}

/// Renders the member in the field order of ARCHITECTURE.md. Fields the decryption did not reach are
/// left out rather than written as null.
fn member_json(outcome: &TokenOutcome, policy: &Policy, token_count: usize) -> String {
    let d = &outcome.decryption;
    let mut out: Vec<u8> = Vec::with_capacity(256);
    out.extend_from_slice(b"{\"status\":\"");
    out.extend_from_slice(d.status.as_str().as_bytes());
    out.push(b'"');
    if let Some(raw) = &d.raw_uid2 {
        out.extend_from_slice(b",\"raw_uid2\":");
        push_json_string(&mut out, raw);
    }
    if let Some(source) = policy.sources.get(outcome.source_index) {
        out.extend_from_slice(b",\"source\":");
        push_json_string(&mut out, &source.name);
    }
    // Writing into a Vec cannot fail.
    if let Some(site_id) = d.site_id {
        let _ = write!(out, ",\"site_id\":{site_id}");
    }
    if let Some(established) = d.established_ms {
        let _ = write!(out, ",\"established\":{established}");
    }
    if let Some(expires) = d.expires_ms {
        let _ = write!(out, ",\"expires\":{expires}");
    }
    if let Some(kind) = d.identity_type {
        let _ = write!(out, ",\"identity_type\":\"{}\"", kind.as_str());
    }
    if let Some(version) = d.token_version {
        let _ = write!(out, ",\"token_version\":{}", version.number());
    }
    if let Some(cstg) = d.cstg {
        let _ = write!(out, ",\"cstg\":{cstg}");
    }
    let _ = write!(out, ",\"tokens\":{token_count}}}");
    // Only ASCII and serde_json-escaped strings were written.
    String::from_utf8(out).unwrap_or_default()
}

fn push_json_string(out: &mut Vec<u8>, s: &str) {
    // serde_json escapes exactly what JSON requires; writing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn enrichment_message(
    outcome: &TokenOutcome,
    policy: &Policy,
    token_count: usize,
) -> pb::Uid2Enrichment {
    let d = &outcome.decryption;
    pb::Uid2Enrichment {
        status: Some(d.status.as_str().to_string()),
        raw_uid2: d.raw_uid2.clone(),
        source: policy
            .sources
            .get(outcome.source_index)
            .map(|s| s.name.clone()),
        site_id: d.site_id,
        established: d.established_ms,
        expires: d.expires_ms,
        identity_type: d.identity_type.map(|t| t.as_str().to_string()),
        token_version: d.token_version.map(|v| i32::from(v.number())),
        cstg: d.cstg,
        tokens: Some(i32::try_from(token_count).unwrap_or(i32::MAX)),
    }
}
