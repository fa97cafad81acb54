//! JSON bid requests: find the UID2/EUID tokens in `user.eids[]` / `user.ext.eids[]` and splice one
//! enrichment member into `user.ext`, without a DOM of the request and without changing any byte the
//! enricher does not add.
//!
//! Why no DOM: re-serialising a request rewrites what downstream bidders read — number spelling (`1.50`,
//! `1e-3`, 20-digit integers), escapes (`\u00e9`, `\/`), key order, unknown or misspelled fields — and a DOM
//! round trip costs 10–30 µs per request where this costs under one. So [`scan`] walks the members of the
//! top-level object, reads only `user`, *skips* every other value by bracket matching, and records byte
//! offsets; [`splice`] copies the input around those offsets. `site` and `app` are skipped too and read
//! only when a client-side-generated token needs the domain check ([`Scan::domain_fields`]).
//!
//! Skipping works on 64-byte blocks (quotes, backslashes and brackets classified for the whole block at
//! once, string interiors masked out with a prefix XOR, then only the remaining brackets visited, the types
//! of the open containers held in a register), because a byte-at-a-time loop mispredicts a branch at nearly
//! every token. The part that is parsed (`user` and its eids) uses a plain cursor whose string search looks
//! at 16 bytes per step. The UTF-8 check is one pass of wide ORs for ASCII input (nearly every request),
//! std's validation otherwise; the few strings returned as `&str` are checked again on their own.
//!
//! # What the fast path checks, and what it does not
//! [`scan`] always checks: the whole input is UTF-8; it is one JSON object with only JSON whitespace around
//! it; the top-level object and everything it parses (`user`, `user.ext`, the `eids` arrays and their
//! entries, `uids` arrays of configured sources and their entries) have correct member and element
//! syntax; every string anywhere is terminated; brackets anywhere are balanced and of matching type;
//! nesting is at most [`MAX_DEPTH`]; escapes are valid in every string it reads (keys of the objects it
//! parses, `source`, `id`); a scalar where it expects a value starts like one and `true`/`false`/`null`
//! are spelled right. `site` and `app` are checked as skipped values; [`Scan::domain_fields`] reads their
//! members later with the same checks, and members that fail them give no domain or app name (as absent
//! ones would): such a request is enriched, and a client-side-generated token in it fails the domain
//! check.
//!
//! It does not check the inside of values it skips: commas, colons, key/value alternation, number grammar,
//! escapes and raw control characters in skipped strings. A request that is broken only there passes
//! through untouched, exactly as it came. [`validate_strict`] (serde_json's full grammar) exists for a mode
//! that must reject such requests.
//!
//! Duplicate keys: the last occurrence wins (`user`, `ext`, `eids`, `source`, `id`, the enrichment member
//! itself), as in serde_json and most parsers, so downstream readers see the member where the enricher put it.
//!
//! # Layout
//! This file holds the API: [`scan`], [`splice`] and [`validate_strict`], and the reading of `site` and
//! `app` for the domain check. `user` reads the `user` object and its eids; `cursor` walks the members of
//! objects and the elements of arrays; `lex` checks UTF-8, finds the ends of strings and resolves escapes;
//! `skip` skips objects and arrays by bracket matching. `formats::event` reads its JSON with `lex` and
//! `cursor` too, so that every JSON input is checked and skipped the same way.
//!
//! Pure: no I/O, no clock, no global state (std's cached CPU feature flags aside). This file uses std,
//! `memchr`, `smallvec` (the found tokens, inline), `thiserror`, and `serde_json` (with serde's
//! `IgnoredAny`) only inside [`validate_strict`]. `lex` and `skip` use `std::arch` on x86_64 (SSE2
//! compares, which are part of the baseline, PCLMULQDQ for the prefix XOR when the build enables it, and
//! AVX2 for the skipper's blocks when the CPU running it has it, detected at run time; elsewhere a portable
//! 8-bytes-per-word version and shifts), and `lex` uses `memchr` for the rest of long strings. `unsafe`
//! appears in two places: the calls into those `#[target_feature]` functions, which take no pointers
//! (tests check each against the portable version), and the `&str` of a token id in
//! `user::compact_eid`, bytes between two quotes of input already checked to be UTF-8.

use std::borrow::Cow;

use memchr::memchr;
use smallvec::SmallVec;

pub(crate) mod cursor;
pub(crate) mod lex;
mod skip;
mod user;

use cursor::Cursor;
use lex::{is_plain_string, is_utf8};
use user::{UserCtx, parse_user};

/// Deepest nesting of objects and arrays accepted anywhere in a request.
///
/// Real requests nest fewer than ten levels. The bound rejects nesting bombs with an error instead of
/// unbounded work, and keeps the skipper's bracket-type stack in fixed-size bitsets.
pub const MAX_DEPTH: usize = 512;

/// Why a request could not be scanned. Each maps to a short [`reason`](JsonError::reason) for the
/// dead-letter header.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum JsonError {
    #[error("request is not valid UTF-8")]
    NotUtf8,
    #[error("request is not a JSON object")]
    NotAnObject,
    #[error("request JSON ends before it is complete")]
    Truncated,
    #[error("malformed JSON at byte {offset}: {reason}")]
    Malformed { offset: usize, reason: &'static str },
    #[error("JSON nesting deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

impl JsonError {
    /// A short, stable, snake_case reason: the value of the `uid2-error` dead-letter header.
    pub fn reason(&self) -> &'static str {
        match self {
            JsonError::NotUtf8 => "not_utf8",
            JsonError::NotAnObject => "not_a_json_object",
            JsonError::Truncated => "truncated_json",
            JsonError::Malformed { .. } => "malformed_json",
            JsonError::TooDeep => "nesting_too_deep",
        }
    }
}

/// Which of the two standard arrays a token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EidLocation {
    /// OpenRTB 2.6 `user.eids[]`.
    UserEids,
    /// The 2.5 extension `user.ext.eids[]`.
    UserExtEids,
}

impl EidLocation {
    /// The JSON path, as written in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            EidLocation::UserEids => "user.eids",
            EidLocation::UserExtEids => "user.ext.eids",
        }
    }
}

/// One `uids[].id` string of an eid whose `source` is configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundToken<'a> {
    /// The id, unescaped; borrowed from the input unless it contained escapes.
    pub id: Cow<'a, str>,
    /// Index into the `sources` slice given to [`scan`].
    pub source_index: usize,
    pub location: EidLocation,
}

/// The tokens of a request, the first few inline: nearly every request carries one to four, and a heap
/// allocation and its free cost more than the rest of reading them.
pub type Tokens<'a> = SmallVec<[FoundToken<'a>; 4]>;

/// What [`scan`] found: the tokens, the names the domain check needs, and where [`splice`] writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan<'a> {
    /// Tokens in document order: first every `user.eids[]` entry, then every `user.ext.eids[]` entry, whose
    /// `source` is one of the configured sources (exact string compare after unescaping), each `uids[].id`
    /// string. Duplicates are kept: each occurrence is one entry.
    pub tokens: Tokens<'a>,
    /// The scanned input: `site` and `app` are read from it only when asked (see [`Scan::domain_fields`]).
    input: &'a [u8],
    /// Where the value of the last top-level `site` member starts, and that of `app`. Only a
    /// client-side-generated token needs what they hold, and reading `site`'s members cost ~950 of a 2 KB
    /// request's ~11,800 instructions, where skipping it costs about a third of that (callgrind).
    site: Option<usize>,
    app: Option<usize>,
    target: Target,
    /// Lets [`splice`] catch, in debug builds, a caller that passes other bytes or another member name than
    /// it scanned: either would write at offsets that mean nothing. Not kept in release builds, where
    /// hashing the name cost as much as a member of the request.
    #[cfg(debug_assertions)]
    input_len: usize,
    #[cfg(debug_assertions)]
    member_fingerprint: u64,
}

/// What the domain check reads from a request: top-level `site.domain`, `site.page` and `app.bundle`,
/// each when it is a string (unescaped; the last of duplicates wins).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DomainFields<'a> {
    pub site_domain: Option<Cow<'a, str>>,
    pub site_page: Option<Cow<'a, str>>,
    pub app_bundle: Option<Cow<'a, str>>,
}

impl<'a> Scan<'a> {
    /// Reads `site.domain`, `site.page` and `app.bundle`. [`scan`] only skipped `site` and `app` (checking
    /// their brackets and strings like any skipped value), so their members are read here; an object
    /// whose members turn out malformed gives no fields, as a missing one would.
    pub fn domain_fields(&self) -> DomainFields<'a> {
        let [site_domain, site_page] =
            read_string_members(self.input, self.site, [b"domain", b"page"]);
        let [app_bundle] = read_string_members(self.input, self.app, [b"bundle"]);
        DomainFields {
            site_domain,
            site_page,
            app_bundle,
        }
    }

    /// Whether the request has a top-level `user` object.
    pub fn has_user(&self) -> bool {
        !matches!(self.target, Target::NoUser)
    }

    /// Whether [`splice`] will return `Some`: there is a `user` object whose `ext` is absent, null or an object.
    pub fn can_splice(&self) -> bool {
        matches!(self.target, Target::Insert { .. } | Target::Replace { .. })
    }

    /// Whether `user.ext` already holds the member (an enriched request seen again).
    pub fn has_member(&self) -> bool {
        matches!(
            self.target,
            Target::Replace {
                wrap_in_object: false,
                ..
            }
        )
    }
}

/// The string members `names` of the object value at `start` of the top-level object, as text; all
/// `None` when there is no such value, when it is not an object, or when its members are malformed.
fn read_string_members<'a, const N: usize>(
    input: &'a [u8],
    start: Option<usize>,
    names: [&[u8]; N],
) -> [Option<Cow<'a, str>>; N] {
    let Some(pos) = start else {
        return std::array::from_fn(|_| None);
    };
    let mut cur = Cursor { bytes: input, pos };
    let Ok(found) = string_members(&mut cur, 1, names) else {
        return std::array::from_fn(|_| None);
    };
    // The strings are UTF-8 (slices between two ASCII quotes of UTF-8 input, or unescaped text), so the
    // conversions cannot fail.
    found.map(|bytes| match bytes? {
        Cow::Borrowed(b) => std::str::from_utf8(b).ok().map(Cow::Borrowed),
        Cow::Owned(v) => String::from_utf8(v).ok().map(Cow::Owned),
    })
}

/// Reads the string members `names` of an object value (last occurrence wins; other types give `None`),
/// unescaped (escapes checked as in any string the scanner reads), skipping everything else. A value that
/// is not an object gives all `None`.
fn string_members<'a, const N: usize>(
    cur: &mut Cursor<'a>,
    depth: usize,
    names: [&[u8]; N],
) -> Result<[Option<Cow<'a, [u8]>>; N], JsonError> {
    let mut out: [Option<Cow<'a, [u8]>>; N] = std::array::from_fn(|_| None);
    if cur.peek() != Some(b'{') {
        cur.skip_value(depth)?;
        return Ok(out);
    }
    // A local copy, written back once (see `parse_eids`).
    let mut local = *cur;
    local.object(depth, |cur, key, depth| {
        let key = key.name()?;
        match names
            .iter()
            .position(|n| **n == *key)
            .and_then(|i| out.get_mut(i))
        {
            Some(slot) if cur.peek() == Some(b'"') => *slot = Some(cur.string()?.name()?),
            Some(slot) => {
                *slot = None;
                cur.skip_value(depth)?;
            }
            None => cur.skip_value(depth)?,
        }
        Ok(())
    })?;
    *cur = local;
    Ok(out)
}

/// Where the member goes, as byte offsets into the scanned input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// No top-level `user` object (absent, null, or another type).
    NoUser,
    /// `user.ext` is neither an object nor null: the body cannot carry the result.
    ExtUnusable,
    /// Insert at `at`: `,` if `comma`, then the member, wrapped in `"ext":{…}` if `wrap_in_ext`.
    Insert {
        at: usize,
        comma: bool,
        wrap_in_ext: bool,
    },
    /// Replace `start..end` by the member's value, or by `{member}` if `wrap_in_object` (a `null` ext).
    Replace {
        start: usize,
        end: usize,
        wrap_in_object: bool,
    },
}

/// Finds the tokens of the configured `sources` and the place for `member_name` in a JSON bid request.
///
/// `member_name` must not be `"eids"`. Pass the same name to [`splice`].
///
/// # Errors
/// [`JsonError`] when the input is not UTF-8, not a JSON object, cut short, structurally malformed where the
/// fast path looks (see the module docs), or nested deeper than [`MAX_DEPTH`]. Type drift inside `user`
/// (non-object eids entries, non-array `uids`, non-string ids, `atype` as a string…) is not an error: those
/// entries are skipped.
pub fn scan<'a>(
    input: &'a [u8],
    sources: &[&str],
    member_name: &str,
) -> Result<Scan<'a>, JsonError> {
    debug_assert_ne!(member_name, "eids", "the member would shadow user.ext.eids");
    if !is_utf8(input) {
        return Err(JsonError::NotUtf8);
    }
    let mut cur = Cursor {
        bytes: input,
        pos: 0,
    };
    cur.skip_ws();
    if cur.peek() != Some(b'{') {
        return Err(JsonError::NotAnObject);
    }
    let ctx = UserCtx {
        sources,
        member_name,
    };
    let mut tokens = Tokens::new();
    let mut target = Target::NoUser;
    let (mut site, mut app) = (None, None);
    cur.object(0, |cur, key, depth| {
        match &*key.name()? {
            b"user" => {
                // A later `user` replaces an earlier one, tokens included.
                tokens.clear();
                target = parse_user(cur, depth, &ctx, &mut tokens)?;
            }
            b"site" => {
                site = Some(cur.pos);
                cur.skip_value(depth)?;
            }
            b"app" => {
                app = Some(cur.pos);
                cur.skip_value(depth)?;
            }
            _ => cur.skip_value(depth)?,
        }
        Ok(())
    })?;
    cur.skip_ws();
    if cur.pos < input.len() {
        return Err(cur.malformed("data after the top-level object"));
    }
    Ok(Scan {
        tokens,
        input,
        site,
        app,
        target,
        #[cfg(debug_assertions)]
        input_len: input.len(),
        #[cfg(debug_assertions)]
        member_fingerprint: fingerprint(member_name),
    })
}

/// Returns `input` with `"<member_name>":<member_json>` placed in `user.ext`, every other byte unchanged.
///
/// - `user.ext` an object without the member: inserted after its last member's value (right after `{` if empty).
/// - `user.ext` holds the member (the last one, if duplicated): only that value's bytes are replaced, so
///   enriching twice equals enriching once.
/// - no `user.ext`: `"ext":{…}` is added after the last member of `user` (right after `{` if empty).
/// - `user.ext` is `null`: the `null` becomes `{"<member_name>":<member_json>}`.
///
/// `input` and `member_name` must be those given to [`scan`]; `member_json` is compact serialised JSON.
/// Returns `None` when there is no `user` object, or when `user.ext` is neither an object nor null: the body
/// cannot carry the result and stays unchanged (the caller still reports the status in a header).
pub fn splice(
    input: &[u8],
    scan: &Scan<'_>,
    member_name: &str,
    member_json: &str,
) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    splice_into(input, scan, member_name, member_json, &mut out).then_some(out)
}

/// [`splice`] appending the output to `out`, for callers that reuse one buffer across requests: a 2 KB
/// request's fresh buffer costs more to allocate and free than the rest of the splice. Returns `false`,
/// having appended nothing, where [`splice`] returns `None`.
pub fn splice_into(
    input: &[u8],
    scan: &Scan<'_>,
    member_name: &str,
    member_json: &str,
    out: &mut Vec<u8>,
) -> bool {
    #[cfg(debug_assertions)]
    {
        assert_eq!(
            input.len(),
            scan.input_len,
            "splice input differs from the scanned one"
        );
        assert_eq!(
            scan.member_fingerprint,
            fingerprint(member_name),
            "splice member name differs from the scanned one"
        );
    }
    let (start, end) = match scan.target {
        Target::NoUser | Target::ExtUnusable => return false,
        Target::Insert { at, .. } => (at, at),
        Target::Replace { start, end, .. } => (start, end),
    };
    let (Some(head), Some(tail)) = (input.get(..start), input.get(end..)) else {
        return false;
    };
    let needed = input.len() + member_name.len() + member_json.len() + 16;
    if out.capacity() == 0 {
        // A new buffer (`splice`): allocated at its size, without `reserve`'s growth path.
        *out = Vec::with_capacity(needed);
    } else {
        out.reserve(needed);
    }
    out.extend_from_slice(head);
    match scan.target {
        Target::Insert {
            comma, wrap_in_ext, ..
        } => {
            if comma {
                out.push(b',');
            }
            if wrap_in_ext {
                out.extend_from_slice(br#""ext":{"#);
            }
            push_member(out, member_name, member_json);
            if wrap_in_ext {
                out.push(b'}');
            }
        }
        Target::Replace {
            wrap_in_object: true,
            ..
        } => {
            out.push(b'{');
            push_member(out, member_name, member_json);
            out.push(b'}');
        }
        Target::Replace { .. } => out.extend_from_slice(member_json.as_bytes()),
        // Returned above.
        Target::NoUser | Target::ExtUnusable => {}
    }
    out.extend_from_slice(tail);
    true
}

/// Full-grammar validation for a strict mode: UTF-8, a top-level object, and serde_json's complete JSON
/// grammar everywhere, including the regions [`scan`] skips. Costs a full parse (no DOM is built).
///
/// # Errors
/// The same [`JsonError`] kinds as [`scan`]; serde_json's own message is not kept (the reason is static).
/// Nesting depth is not limited here (serde_json ignores values iteratively); [`scan`] enforces [`MAX_DEPTH`].
pub fn validate_strict(input: &[u8]) -> Result<(), JsonError> {
    std::str::from_utf8(input).map_err(|_| JsonError::NotUtf8)?;
    match input
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
    {
        Some(b'{') => {}
        _ => return Err(JsonError::NotAnObject),
    }
    match serde_json::from_slice::<serde::de::IgnoredAny>(input) {
        Ok(_) => Ok(()),
        Err(e) if e.is_eof() => Err(JsonError::Truncated),
        Err(e) => Err(JsonError::Malformed {
            offset: line_column_offset(input, e.line(), e.column()),
            reason: "invalid JSON (strict validation)",
        }),
    }
}

/// serde_json reports 1-based line and column; the dead-letter path wants a byte offset.
fn line_column_offset(input: &[u8], line: usize, column: usize) -> usize {
    let mut line_start = 0;
    for _ in 1..line {
        match memchr(b'\n', input.get(line_start..).unwrap_or_default()) {
            Some(k) => line_start += k + 1,
            None => break,
        }
    }
    (line_start + column.saturating_sub(1)).min(input.len())
}

fn push_member(out: &mut Vec<u8>, name: &str, json: &str) {
    push_json_string(out, name);
    out.push(b':');
    out.extend_from_slice(json.as_bytes());
}

fn push_json_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    if is_plain_string(s.as_bytes()) {
        // The usual member name: nothing to escape.
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        return;
    }
    for ch in s.chars() {
        match ch {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            c if u32::from(c) < 0x20 => {
                out.extend_from_slice(format!("\\u{:04x}", u32::from(c)).as_bytes());
            }
            c => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
    out.push(b'"');
}

/// FNV-1a: cheap, and only compared in debug assertions.
#[cfg(debug_assertions)]
fn fingerprint(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests;
