//! The one function the pipeline, replay and the benchmarks call: a bid request's bytes in, the same bytes
//! plus one enrichment member out (`../shared/ARCHITECTURE.md`, "The enriched JSON request"). The same
//! function serves tokens outside the bid stream: tracking-pixel hits (the result appended as `uid2_raw`
//! / `uid2_status` query parameters) and JSON events (tokens at JSON pointers, the same member inserted in
//! the object holding the token); see [`PayloadFormat`].
//!
//! Pure: keys, opt-outs, the cache and `now` are arguments; no I/O, no clock. Depends on the token engine
//! (`uid2`), the request readers/writers (`openrtb`, `formats`), the opt-out rule (`optout`), the
//! decrypt cache, `itoa`, `smallvec` (the token outcomes, inline), `serde_json` (strings that need
//! escaping) and `thiserror`.

use std::borrow::Cow;
use std::cell::OnceCell;

use smallvec::SmallVec;

use crate::engine::cache::DecryptCache;
use crate::engine::formats::event::{self, JsonPointer};
use crate::engine::formats::pixel;
use crate::engine::openrtb::proto::pb;
use crate::engine::openrtb::{domain, json, proto};
use crate::engine::optout::{self, OptOutLookup};
use crate::engine::uid2::decrypt::decrypt_with_name;
use crate::engine::uid2::{ClientMode, Decryption, IdentityScope, KeySet, Status};

/// The `uid2-status` of a request that carries no token.
pub const NO_TOKEN: &str = "no_token";

/// How the payload is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum PayloadFormat {
    /// An OpenRTB bid request in JSON (`openrtb` in the configuration and on the command line).
    #[default]
    Json,
    /// An OpenRTB bid request in protobuf.
    Protobuf,
    /// A tracking-pixel hit: a URL or query string, token in [`Policy::pixel_token_param`].
    Pixel,
    /// Any JSON object, tokens at [`Policy::event_token_pointers`] (`json` in the configuration and on the
    /// command line).
    Event,
}

impl PayloadFormat {
    /// Every format, with the name the configuration and the command line use.
    pub const NAMES: [(&'static str, PayloadFormat); 4] = [
        ("openrtb", PayloadFormat::Json),
        ("protobuf", PayloadFormat::Protobuf),
        ("pixel", PayloadFormat::Pixel),
        ("json", PayloadFormat::Event),
    ];

    /// The format named `name` (see [`PayloadFormat::NAMES`]).
    pub fn from_name(name: &str) -> Option<PayloadFormat> {
        Self::NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, f)| *f)
    }

    /// The name the configuration and the command line use.
    pub fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, f)| *f == self)
            .map_or("openrtb", |(n, _)| n)
    }
}

/// The default token parameter of pixel hits.
pub const DEFAULT_PIXEL_TOKEN_PARAM: &str = "uid2_token";
/// The default token location in JSON events.
pub const DEFAULT_EVENT_TOKEN_POINTER: &str = "/uid2_token";

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
    /// [`PayloadFormat::Pixel`]: the query parameter that carries the token (decoded name).
    pub pixel_token_param: String,
    /// [`PayloadFormat::Event`]: where tokens are, in priority order for where the member goes (it goes
    /// into the object holding the first token found).
    pub event_token_pointers: Vec<JsonPointer>,
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
            pixel_token_param: DEFAULT_PIXEL_TOKEN_PARAM.to_string(),
            event_token_pointers: JsonPointer::parse(DEFAULT_EVENT_TOKEN_POINTER)
                .into_iter()
                .collect(),
            source_names,
        }
    }

    /// The source reported for tokens that carry no eid source (pixels, events): with a key source per
    /// scope, the first configured source of the scope a v3/v4 token declares; otherwise the first of the
    /// scope of the key set in force; else the first source.
    fn source_for(&self, keys: &Keys<'_>, token: &str) -> usize {
        let declared = keys
            .served
            .and_then(|_| crate::engine::uid2::wire::declared_scope(token));
        let scope = match (declared, keys.uid2, keys.euid) {
            (Some(scope), _, _) => scope,
            (None, None, Some(_)) => IdentityScope::Euid,
            _ => IdentityScope::Uid2,
        };
        self.sources
            .iter()
            .position(|s| s.scope == scope)
            .unwrap_or(0)
    }

    /// Calls `f` with the source names as `&[&str]` (what the scanners take), without allocating for the
    /// usual handful of sources.
    #[inline]
    fn with_source_names<R>(&self, f: impl FnOnce(&[&str]) -> R) -> R {
        const ON_STACK: usize = 8;
        if self.source_names.len() <= ON_STACK {
            let mut names = [""; ON_STACK];
            for (slot, name) in names.iter_mut().zip(&self.source_names) {
                *slot = name.as_str();
            }
            f(names.get(..self.source_names.len()).unwrap_or_default())
        } else {
            f(&self
                .source_names
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>())
        }
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

/// The key sets in force, by identity scope.
///
/// With one key source ([`Keys::single`]) a token of either scope is tried with that one set, which yields
/// what a single SDK client would answer (`invalid_identity_scope` for a v3/v4 token of the other scope).
/// With a source per scope ([`Keys::per_scope`]) a token is decrypted only with its scope's set (the scope
/// a v3/v4 token declares, else its eid source's): before that source's first load it gets
/// `not_initialized`, and a scope no source serves gets `invalid_identity_scope` without a decryption
/// attempt.
#[derive(Clone, Copy, Debug, Default)]
pub struct Keys<'a> {
    pub uid2: Option<&'a KeySet>,
    pub euid: Option<&'a KeySet>,
    /// `None`: one source for every scope. `Some([uid2, euid])`: whether each scope has a source.
    served: Option<[bool; 2]>,
}

/// The key set a token of one scope is decrypted with, or why there is none.
#[derive(Clone, Copy, Debug)]
pub enum KeysFor<'a> {
    /// The set to decrypt with; `None` before its source's first load (the SDK's `not_initialized`).
    Set(Option<&'a KeySet>),
    /// No key source serves the scope.
    NoSource,
}

impl<'a> Keys<'a> {
    /// Files one key set under the scope it declares; it answers for both scopes.
    pub fn single(keys: Option<&'a KeySet>) -> Keys<'a> {
        match keys {
            Some(k) if k.identity_scope == IdentityScope::Euid => Keys {
                uid2: None,
                euid: Some(k),
                served: None,
            },
            other => Keys {
                uid2: other,
                euid: None,
                served: None,
            },
        }
    }

    /// A source per scope: `None` for a scope no source serves, `Some(None)` for a source not yet loaded.
    pub fn per_scope(
        uid2: Option<Option<&'a KeySet>>,
        euid: Option<Option<&'a KeySet>>,
    ) -> Keys<'a> {
        Keys {
            uid2: uid2.flatten(),
            euid: euid.flatten(),
            served: Some([uid2.is_some(), euid.is_some()]),
        }
    }

    /// Key sets each filed under the scope it declares: one set answers every scope (as
    /// [`Keys::single`]); several give a source per scope, the first of each scope in force.
    pub fn of_sets(sets: &'a [KeySet]) -> Keys<'a> {
        match sets {
            [] => Keys::default(),
            [one] => Keys::single(Some(one)),
            many => Keys::per_scope_sets(many),
        }
    }

    /// A source per scope, however many sets: each serves the scope it declares (the first of a scope).
    pub fn per_scope_sets(sets: &'a [KeySet]) -> Keys<'a> {
        let of = |scope| sets.iter().find(|k| k.identity_scope == scope).map(Some);
        Keys::per_scope(of(IdentityScope::Uid2), of(IdentityScope::Euid))
    }

    /// The scope whose set decrypts `token`, found under an eid source of `source_scope`: with a source
    /// per scope, the scope a v3/v4 token declares (the operator that made it; a v2 token declares none);
    /// with one source, the eid source's, as before.
    pub fn scope_of(&self, token: &str, source_scope: IdentityScope) -> IdentityScope {
        match self.served {
            Some(_) => crate::engine::uid2::wire::declared_scope(token).unwrap_or(source_scope),
            None => source_scope,
        }
    }

    /// The set for a token of `scope`.
    pub fn lookup(&self, scope: IdentityScope) -> KeysFor<'a> {
        match (self.served, scope) {
            (None, IdentityScope::Uid2) => KeysFor::Set(self.uid2.or(self.euid)),
            (None, IdentityScope::Euid) => KeysFor::Set(self.euid.or(self.uid2)),
            (Some([true, _]), IdentityScope::Uid2) => KeysFor::Set(self.uid2),
            (Some([_, true]), IdentityScope::Euid) => KeysFor::Set(self.euid),
            (Some(_), _) => KeysFor::NoSource,
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

/// The distinct tokens of a request, the first inline.
pub type Outcomes = SmallVec<[TokenOutcome; 1]>;

/// A request the enricher handled (with or without tokens).
#[derive(Clone, Debug)]
pub struct Enriched<'a> {
    /// The request as it goes on: borrowed (byte-identical) when nothing was added.
    pub output: Cow<'a, [u8]>,
    /// Distinct tokens in document order. Inline: a request nearly always carries one, and a heap
    /// allocation and its free cost about as much as rendering the member.
    pub tokens: Outcomes,
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

    /// The `uid2-status` header value: the status, or [`NO_TOKEN`].
    pub fn status_header(&self) -> &'static str {
        self.status().map_or(NO_TOKEN, Status::as_str)
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

impl From<json::JsonError> for Malformed {
    fn from(e: json::JsonError) -> Malformed {
        Malformed {
            reason: e.reason(),
            detail: e.to_string(),
        }
    }
}

impl From<proto::ProtoError> for Malformed {
    fn from(e: proto::ProtoError) -> Malformed {
        Malformed {
            reason: e.reason(),
            detail: e.to_string(),
        }
    }
}

/// Enriches one request. See the module docs and ARCHITECTURE.md for the contract.
///
/// # Errors
/// [`Malformed`] when the payload is not a JSON object (not UTF-8, truncated, unbalanced, …; bid requests
/// and events), not a well-formed protobuf message, or (pixels) not UTF-8.
pub fn enrich<'a>(
    payload: &'a [u8],
    format: PayloadFormat,
    ctx: &Context<'_>,
    policy: &Policy,
) -> Result<Enriched<'a>, Malformed> {
    let mut buffer = Vec::new();
    let mut enriched = match format {
        PayloadFormat::Json => enrich_json(payload, ctx, policy, &mut buffer)?,
        PayloadFormat::Protobuf => enrich_proto(payload, ctx, policy, &mut buffer)?,
        PayloadFormat::Pixel => return enrich_pixel(payload, ctx, policy),
        PayloadFormat::Event => return enrich_event(payload, ctx, policy),
    };
    if enriched.body_enriched {
        enriched.output = Cow::Owned(buffer);
    }
    Ok(enriched)
}

/// [`enrich`] for callers that reuse one output buffer across requests (the Kafka stage, replay,
/// benchmarks): the enriched request is appended to `out`, and `output` borrows those bytes. An unchanged
/// request appends nothing, and `output` borrows `payload`, as with [`enrich`].
///
/// For a JSON or protobuf request this saves the fresh buffer [`enrich`] allocates, which for a 2 KB
/// request costs more (glibc's path for blocks past its per-thread cache) than splicing the member in.
/// Pixels and events are enriched as by [`enrich`], and their bytes moved into `out` if it has no buffer
/// yet, else copied.
///
/// # Errors
/// As [`enrich`]; `out` is then unchanged.
pub fn enrich_into<'a>(
    payload: &'a [u8],
    format: PayloadFormat,
    ctx: &Context<'_>,
    policy: &Policy,
    out: &'a mut Vec<u8>,
) -> Result<Enriched<'a>, Malformed> {
    let start = out.len();
    let mut enriched = match format {
        PayloadFormat::Json => enrich_json(payload, ctx, policy, out)?,
        PayloadFormat::Protobuf => enrich_proto(payload, ctx, policy, out)?,
        PayloadFormat::Pixel | PayloadFormat::Event => {
            let mut enriched = enrich(payload, format, ctx, policy)?;
            match std::mem::take(&mut enriched.output) {
                Cow::Owned(bytes) => {
                    if out.capacity() == 0 {
                        *out = bytes;
                    } else {
                        out.extend_from_slice(&bytes);
                    }
                    // Set from the bytes themselves: the output is read back from `out` below.
                    enriched.body_enriched = true;
                }
                borrowed => enriched.output = borrowed,
            }
            enriched
        }
    };
    let out: &'a Vec<u8> = out;
    if enriched.body_enriched {
        enriched.output = Cow::Borrowed(out.get(start..).unwrap_or_default());
    }
    Ok(enriched)
}

/// A pixel hit: one token (the first token parameter); the result appended as query parameters. No
/// domain or app name is known, so a CSTG token fails the bidstream client's domain check; pixels are
/// meant for the sharing client, which has none.
fn enrich_pixel<'a>(
    payload: &'a [u8],
    ctx: &Context<'_>,
    policy: &Policy,
) -> Result<Enriched<'a>, Malformed> {
    let text = std::str::from_utf8(payload).map_err(|e| Malformed {
        reason: "not_utf8",
        detail: format!("pixel hit is not valid UTF-8: {e}"),
    })?;
    let found = pixel::find(text, &policy.pixel_token_param);
    let Some(token) = found.token.as_deref() else {
        return Ok(unchanged(payload));
    };
    let source = policy.source_for(&ctx.keys, token);
    let found_tokens = std::iter::repeat_n((token, source), found.token_count.max(1));
    let mut enriched = decide(found_tokens, &|| None, ctx, policy).settle(ctx, policy);
    let (raw, status) = match enriched.selected.and_then(|i| enriched.tokens.get(i)) {
        Some(t) => (
            t.decryption.raw_uid2.as_deref(),
            t.decryption.status.as_str(),
        ),
        None => return Ok(unchanged(payload)),
    };
    enriched.output = Cow::Owned(pixel::append_result(text, &found, raw, status).into_bytes());
    enriched.body_enriched = true;
    Ok(enriched)
}

/// A JSON event: tokens at the configured pointers (pointer order), the member in the object holding the
/// first one.
fn enrich_event<'a>(
    payload: &'a [u8],
    ctx: &Context<'_>,
    policy: &Policy,
) -> Result<Enriched<'a>, Malformed> {
    if policy.strict_json {
        json::validate_strict(payload)?;
    }
    let scan = event::scan(payload, &policy.event_token_pointers, &policy.member_name)?;
    if scan.found.is_empty() {
        return Ok(unchanged(payload));
    }
    let found = scan.found.iter().map(|f| {
        let text = f.text.as_ref();
        (text, policy.source_for(&ctx.keys, text))
    });
    let mut buffer = Vec::new();
    let mut enriched = decide(found, &|| None, ctx, policy).carry_member(
        ctx,
        policy,
        &mut buffer,
        |member, out| match event::insert_member(payload, &scan, &policy.member_name, member) {
            Some(bytes) => {
                *out = bytes;
                true
            }
            None => false,
        },
    );
    enriched.output = if enriched.body_enriched {
        Cow::Owned(buffer)
    } else {
        Cow::Borrowed(payload)
    };
    Ok(enriched)
}

/// The body, if enriched (`body_enriched`), is appended to `out`; `output` is left borrowing `payload`.
fn enrich_json<'a>(
    payload: &'a [u8],
    ctx: &Context<'_>,
    policy: &Policy,
    out: &mut Vec<u8>,
) -> Result<Enriched<'a>, Malformed> {
    if policy.strict_json {
        json::validate_strict(payload)?;
    }
    let scan =
        policy.with_source_names(|sources| json::scan(payload, sources, &policy.member_name))?;
    if scan.tokens.is_empty() {
        return Ok(unchanged(payload));
    }
    // Derived only if a token needs the domain check (reading `site`'s members and a public-suffix
    // lookup are work nearly no request needs), and then once.
    let name = OnceCell::new();
    let name = || {
        name.get_or_init(|| {
            let fields = scan.domain_fields();
            domain::domain_or_app_name(
                fields.site_domain.as_deref(),
                fields.site_page.as_deref(),
                fields.app_bundle.as_deref(),
            )
            .map(|name| Cow::Owned(name.into_owned()))
        })
        .as_deref()
    };
    let found = scan.tokens.iter().map(|t| (t.id.as_ref(), t.source_index));
    let mut enriched =
        decide(found, &name, ctx, policy).carry_member(ctx, policy, out, |member, out| {
            json::splice_into(payload, &scan, &policy.member_name, member, out)
        });
    enriched.output = Cow::Borrowed(payload);
    Ok(enriched)
}

/// As [`enrich_json`]: the enriched request is appended to `out` and `body_enriched` set; `output` stays
/// `payload` for the caller to point at `out`.
fn enrich_proto<'a>(
    payload: &'a [u8],
    ctx: &Context<'_>,
    policy: &Policy,
    out: &mut Vec<u8>,
) -> Result<Enriched<'a>, Malformed> {
    let scan = policy.with_source_names(|sources| proto::scan(payload, sources))?;
    if scan.tokens.is_empty() {
        return Ok(unchanged(payload));
    }
    let name = OnceCell::new();
    let name = || {
        name.get_or_init(|| {
            domain::domain_or_app_name(scan.site_domain, scan.site_page, scan.app_bundle)
        })
        .as_deref()
    };
    let found = scan.tokens.iter().map(|t| (t.id, t.source_index));
    let mut enriched = decide(found, &name, ctx, policy).settle(ctx, policy);
    if let Some(selected) = enriched.selected.and_then(|i| enriched.tokens.get(i)) {
        let message = enrichment_message(selected, policy, enriched.token_count);
        proto::append_enrichment_into(payload, &scan, &message, out);
        enriched.body_enriched = true;
    }
    enriched.output = Cow::Borrowed(payload);
    Ok(enriched)
}

fn unchanged(payload: &[u8]) -> Enriched<'_> {
    Enriched {
        output: Cow::Borrowed(payload),
        tokens: Outcomes::new(),
        selected: None,
        token_count: 0,
        member_json: None,
        body_enriched: false,
    }
}

/// Tokens decided but for the opt-out rule. The only way on to an [`Enriched`] is [`Unsettled::settle`]
/// or [`Unsettled::carry_member`], which apply it.
struct Unsettled(Enriched<'static>);

impl Unsettled {
    /// Applies the opt-out rule; selects and renders again only if a token turned out opted out.
    /// Returns whether one did.
    fn apply_optouts(&mut self, ctx: &Context<'_>, policy: &Policy) -> bool {
        let mut changed = false;
        for outcome in &mut self.0.tokens {
            changed |= apply_optout(&mut outcome.decryption, ctx.optouts);
        }
        if changed {
            let e = &mut self.0;
            (e.selected, e.member_json) = select(&e.tokens, policy, e.token_count);
        }
        changed
    }

    fn settle(mut self, ctx: &Context<'_>, policy: &Policy) -> Enriched<'static> {
        self.apply_optouts(ctx, policy);
        self.0
    }

    /// Writes the body with the member into `out` with `splice` (which appends nothing and returns
    /// `false` when the body cannot carry it) and sets `body_enriched`; the caller points `output` at
    /// it. The header carries the member either way. The opt-out check comes after the splice, so the
    /// user's table line, prefetched when the token decrypted, arrives from memory while the body is
    /// written; in the rare case that the user opted out, the member is spliced again.
    fn carry_member(
        mut self,
        ctx: &Context<'_>,
        policy: &Policy,
        out: &mut Vec<u8>,
        splice: impl Fn(&str, &mut Vec<u8>) -> bool,
    ) -> Enriched<'static> {
        let start = out.len();
        let mut spliced = splice(self.0.member_json.as_deref().unwrap_or_default(), out);
        if self.apply_optouts(ctx, policy) {
            out.truncate(start);
            spliced = splice(self.0.member_json.as_deref().unwrap_or_default(), out);
        }
        let mut enriched = self.0;
        enriched.body_enriched = spliced;
        enriched
    }
}

/// Decrypts each distinct token once, selects the reported token and renders the member as though no
/// token had opted out (nearly always the outcome), prefetching each decrypted user's opt-out entry for
/// the check that [`Unsettled`] does later. `found` yields (token text, source index) in document order.
fn decide<'t, 'n>(
    found: impl Iterator<Item = (&'t str, usize)>,
    name: &dyn Fn() -> Option<&'n str>,
    ctx: &Context<'_>,
    policy: &Policy,
) -> Unsettled {
    // The text of `tokens[k]`: requests carry a handful of tokens, so the first few live on the stack, and
    // a linear scan beats hashing them.
    const ON_STACK: usize = 8;
    let mut texts = [""; ON_STACK];
    let mut more_texts: Vec<&str> = Vec::new();
    let mut tokens = Outcomes::new();
    let mut token_count = 0;
    for (token, source_index) in found {
        token_count += 1;
        let known = texts
            .get(..tokens.len())
            .unwrap_or(&texts)
            .iter()
            .chain(&more_texts)
            .position(|t| *t == token);
        if let Some(outcome) = known.and_then(|k| tokens.get_mut(k)) {
            outcome.occurrences += 1;
            continue;
        }
        match texts.get_mut(tokens.len()) {
            Some(slot) => *slot = token,
            None => more_texts.push(token),
        }
        // Decrypted at the first occurrence: the same calls, in the same order, as deduplicating first.
        let source_scope = policy
            .sources
            .get(source_index)
            .map_or(IdentityScope::Uid2, |s| s.scope);
        let decryption = match (
            ctx.keys.lookup(ctx.keys.scope_of(token, source_scope)),
            ctx.cache,
        ) {
            (KeysFor::NoSource, _) => Decryption::error(Status::InvalidIdentityScope),
            (KeysFor::Set(keys), Some(cache)) => {
                cache.decrypt_with_name(token, keys, policy.mode, name, ctx.now_ms)
            }
            (KeysFor::Set(keys), None) => {
                decrypt_with_name(token, keys, policy.mode, name, ctx.now_ms)
            }
        };
        if decryption.status == Status::Success
            && let Some(raw) = decryption.raw_uid2.as_deref()
        {
            ctx.optouts.prefetch(raw);
        }
        tokens.push(TokenOutcome {
            source_index,
            occurrences: 1,
            decryption,
        });
    }
    let (selected, member_json) = select(&tokens, policy, token_count);
    Unsettled(Enriched {
        output: Cow::Borrowed(&[]),
        tokens,
        selected,
        token_count,
        member_json,
        body_enriched: false,
    })
}

/// The reported token (the first success, else the first) and its member.
fn select(
    tokens: &[TokenOutcome],
    policy: &Policy,
    token_count: usize,
) -> (Option<usize>, Option<String>) {
    let selected = tokens
        .iter()
        .position(|t| t.decryption.is_success())
        .or(if tokens.is_empty() { None } else { Some(0) });
    let member_json = selected
        .and_then(|i| tokens.get(i))
        .map(|t| member_json(t, policy, token_count));
    (selected, member_json)
}

/// Returns whether the token turned out opted out.
fn apply_optout(decryption: &mut Decryption, optouts: &dyn OptOutLookup) -> bool {
    if decryption.status != Status::Success {
        return false;
    }
    if let (Some(raw), Some(established)) =
        (decryption.raw_uid2.as_deref(), decryption.established_ms)
        && optout::is_opted_out(optouts, raw, established)
    {
        decryption.status = Status::OptedOut;
        decryption.raw_uid2 = None;
        return true;
    }
    false
}

/// Renders the member in the field order of ARCHITECTURE.md. Fields the decryption did not reach are
/// left out rather than written as null. Written into a `String` piece by piece, with `itoa` for the
/// integers: no formatting machinery and no UTF-8 check of the result.
fn member_json(outcome: &TokenOutcome, policy: &Policy, token_count: usize) -> String {
    let d = &outcome.decryption;
    let mut integers = itoa::Buffer::new();
    let mut out = String::with_capacity(256);
    out.push_str("{\"status\":\"");
    out.push_str(d.status.as_str());
    out.push('"');
    if let Some(raw) = &d.raw_uid2 {
        out.push_str(",\"raw_uid2\":");
        push_json_string(&mut out, raw);
    }
    if let Some(source) = policy.sources.get(outcome.source_index) {
        out.push_str(",\"source\":");
        push_json_string(&mut out, &source.name);
    }
    if let Some(site_id) = d.site_id {
        out.push_str(",\"site_id\":");
        out.push_str(integers.format(site_id));
    }
    if let Some(established) = d.established_ms {
        out.push_str(",\"established\":");
        out.push_str(integers.format(established));
    }
    if let Some(expires) = d.expires_ms {
        out.push_str(",\"expires\":");
        out.push_str(integers.format(expires));
    }
    if let Some(kind) = d.identity_type {
        out.push_str(",\"identity_type\":\"");
        out.push_str(kind.as_str());
        out.push('"');
    }
    if let Some(version) = d.token_version {
        out.push_str(",\"token_version\":");
        out.push_str(integers.format(version.number()));
    }
    if let Some(cstg) = d.cstg {
        out.push_str(if cstg {
            ",\"cstg\":true"
        } else {
            ",\"cstg\":false"
        });
    }
    out.push_str(",\"tokens\":");
    out.push_str(integers.format(token_count));
    out.push('}');
    out
}

/// Writes `s` as a JSON string exactly as serde_json does (it escapes `"`, `\\` and control characters);
/// strings with none of those, such as base64 ids and source domains, are copied as they are.
fn push_json_string(out: &mut String, s: &str) {
    if json::lex::is_plain_string(s.as_bytes()) {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        // Rare. Serialising a string cannot fail.
        out.push_str(&serde_json::to_string(s).unwrap_or_default());
    }
}

fn enrichment_message(
    outcome: &TokenOutcome,
    policy: &Policy,
    token_count: usize,
) -> pb::Uid2Enrichment {
    let d = &outcome.decryption;
    pb::Uid2Enrichment {
        status: Some(d.status.as_str().to_string()),
        raw_uid2: d.raw_uid2.as_deref().map(str::to_owned),
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

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;
    use crate::engine::optout::NoOptOuts;
    use crate::engine::uid2::{IdentityType, TokenVersion};

    /// The member as it was written before the hand-rolled formatting: `write!` and serde_json.
    fn reference_member_json(
        outcome: &TokenOutcome,
        policy: &Policy,
        token_count: usize,
    ) -> String {
        let d = &outcome.decryption;
        let mut out: Vec<u8> = Vec::new();
        let string = |out: &mut Vec<u8>, s: &str| serde_json::to_writer(out, s).unwrap();
        write!(out, "{{\"status\":\"{}\"", d.status.as_str()).unwrap();
        if let Some(raw) = &d.raw_uid2 {
            out.extend_from_slice(b",\"raw_uid2\":");
            string(&mut out, raw);
        }
        if let Some(source) = policy.sources.get(outcome.source_index) {
            out.extend_from_slice(b",\"source\":");
            string(&mut out, &source.name);
        }
        if let Some(site_id) = d.site_id {
            write!(out, ",\"site_id\":{site_id}").unwrap();
        }
        if let Some(established) = d.established_ms {
            write!(out, ",\"established\":{established}").unwrap();
        }
        if let Some(expires) = d.expires_ms {
            write!(out, ",\"expires\":{expires}").unwrap();
        }
        if let Some(kind) = d.identity_type {
            write!(out, ",\"identity_type\":\"{}\"", kind.as_str()).unwrap();
        }
        if let Some(version) = d.token_version {
            write!(out, ",\"token_version\":{}", version.number()).unwrap();
        }
        if let Some(cstg) = d.cstg {
            write!(out, ",\"cstg\":{cstg}").unwrap();
        }
        write!(out, ",\"tokens\":{token_count}}}").unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn member_json_matches_fmt_and_serde_json() {
        let mut policy = Policy::default();
        policy.sources.push(TokenSource {
            name: "odd \"source\"\\\n\u{1}\u{7f}é".into(),
            scope: IdentityScope::Uid2,
        });
        let full = |status| {
            let mut d = Decryption::error(status);
            d.raw_uid2 = Some("ywsvDO4i2mFAD5Y0Uc5+FTWAfTdhgFIijeNrS3fZ7q0=".into());
            d.site_id = Some(9000);
            d.established_ms = Some(1_767_225_600_000);
            d.expires_ms = Some(1_767_312_000_000);
            d.identity_type = Some(IdentityType::Email);
            d.token_version = Some(TokenVersion::V4);
            d.cstg = Some(false);
            d
        };
        let mut cases = vec![
            Decryption::error(Status::InvalidPayload),
            full(Status::Success),
        ];
        let mut odd = full(Status::ExpiredToken);
        odd.raw_uid2 = Some("a\"b\\c\n\t\u{0}\u{1f}é\u{1F600}/".into());
        odd.site_id = Some(i32::MIN);
        odd.established_ms = Some(i64::MIN);
        odd.expires_ms = Some(i64::MAX);
        odd.identity_type = Some(IdentityType::Phone);
        odd.token_version = Some(TokenVersion::V2);
        odd.cstg = Some(true);
        cases.push(odd);
        let mut zeros = full(Status::Success);
        zeros.site_id = Some(0);
        zeros.established_ms = Some(-1);
        zeros.expires_ms = Some(0);
        zeros.token_version = Some(TokenVersion::V3);
        cases.push(zeros);
        for decryption in cases {
            for source_index in [0, 1, 2, 99] {
                for token_count in [0, 1, 7, 10, 99, 100, 12_345, usize::MAX] {
                    let outcome = TokenOutcome {
                        source_index,
                        occurrences: 1,
                        decryption: decryption.clone(),
                    };
                    let got = member_json(&outcome, &policy, token_count);
                    assert_eq!(got, reference_member_json(&outcome, &policy, token_count));
                    serde_json::from_str::<serde_json::Value>(&got).expect("member is JSON");
                }
            }
        }
    }

    fn ctx() -> Context<'static> {
        Context {
            keys: Keys::default(),
            optouts: &NoOptOuts,
            cache: None,
            now_ms: 0,
        }
    }

    /// Tokens found, but a `user.ext` that is neither an object nor null cannot carry the member: the
    /// body goes on exactly as it came and only the header carries the member. (Until `2a0a1e9` the
    /// output was empty here: the body was lost.)
    #[test]
    fn a_body_that_cannot_carry_the_member_goes_on_unchanged() {
        let policy = Policy::default();
        for ext in [r#""x""#, "1", "[]", "true"] {
            let request = format!(
                r#"{{"id":"r","user":{{"ext":{ext},"eids":[{{"source":"uidapi.com","uids":[{{"id":"t"}}]}}]}}}}"#
            );
            let out = enrich(request.as_bytes(), PayloadFormat::Json, &ctx(), &policy).unwrap();
            assert_eq!(out.tokens.len(), 1, "{ext}");
            assert!(out.member_json.is_some() && !out.body_enriched, "{ext}");
            assert_eq!(&*out.output, request.as_bytes(), "{ext}");
            let mut buffer = b"kept".to_vec();
            let output = enrich_into(
                request.as_bytes(),
                PayloadFormat::Json,
                &ctx(),
                &policy,
                &mut buffer,
            )
            .unwrap()
            .output
            .to_vec();
            assert_eq!(output, request.as_bytes(), "{ext}");
            assert_eq!(buffer, b"kept", "{ext}: nothing appended");
        }
    }

    /// More sources than fit on the stack, and more distinct tokens than fit on the stack: counted and
    /// ordered as before.
    #[test]
    fn many_sources_and_many_distinct_tokens() {
        let mut names: Vec<TokenSource> = (0..10)
            .map(|k| TokenSource {
                name: format!("s{k}.example"),
                scope: IdentityScope::Uid2,
            })
            .collect();
        names.push(TokenSource {
            name: "uidapi.com".into(),
            scope: IdentityScope::Uid2,
        });
        let policy = Policy::new(ClientMode::Bidstream, names, "uid2_enrichment");
        // t0..t11, then every even one again, then t3 a third time.
        let mut ids: Vec<String> = (0..12).map(|k| format!("t{k}")).collect();
        ids.extend((0..12).step_by(2).map(|k| format!("t{k}")));
        ids.push("t3".into());
        let uids: Vec<String> = ids.iter().map(|id| format!(r#"{{"id":"{id}"}}"#)).collect();
        let request = format!(
            r#"{{"user":{{"eids":[{{"source":"s9.example","uids":[{}]}},{{"source":"uidapi.com","uids":[{{"id":"t0"}}]}}]}}}}"#,
            uids.join(",")
        );
        let out = enrich(request.as_bytes(), PayloadFormat::Json, &ctx(), &policy).unwrap();
        assert_eq!(out.token_count, ids.len() + 1);
        let expected: Vec<(usize, u32)> = (0..12)
            .map(|k| {
                let n = ids.iter().filter(|id| **id == format!("t{k}")).count();
                (9, u32::try_from(n).unwrap() + u32::from(k == 0))
            })
            .collect();
        let got: Vec<(usize, u32)> = out
            .tokens
            .iter()
            .map(|t| (t.source_index, t.occurrences))
            .collect();
        assert_eq!(got, expected);
        // The last source, past the stack-held names.
        let only_last = r#"{"user":{"eids":[{"source":"uidapi.com","uids":[{"id":"x"}]}]}}"#;
        let out = enrich(only_last.as_bytes(), PayloadFormat::Json, &ctx(), &policy).unwrap();
        assert_eq!(out.tokens.len(), 1);
        assert_eq!(out.tokens[0].source_index, 10);
    }
}
