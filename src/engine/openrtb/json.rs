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
//! Dependencies: std (on x86_64, `std::arch`: SSE2 compares, which are part of the baseline, PCLMULQDQ for
//! the prefix XOR when the build enables it, and AVX2 for the skipper's blocks when the CPU running it has
//! it, detected at run time; elsewhere a portable 8-bytes-per-word version and shifts), `memchr` (the rest
//! of long strings), `smallvec` (the found tokens, inline), `thiserror`, and `serde_json` (with serde's
//! `IgnoredAny`) only inside [`validate_strict`]. Pure: no I/O, no clock, no global state (std's cached
//! CPU feature flags aside). `unsafe` appears in two places: the calls into those `#[target_feature]`
//! functions, which take no pointers (tests check each against the portable version), and the `&str` of a
//! token id in [`compact_eid`], bytes between two quotes of input already checked to be UTF-8.

use std::borrow::Cow;
use std::hint::select_unpredictable;

use memchr::{memchr, memchr2};
use smallvec::SmallVec;

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

/// The scanner's building blocks, for the crate's other JSON readers (`formats::event`, `tokenize`), so
/// that every JSON input is checked and skipped the same way.
pub(crate) mod parts {
    use super::{Cursor, JsonError};

    /// Whether `input` is UTF-8 (ASCII fast path).
    pub(crate) fn is_utf8(input: &[u8]) -> bool {
        super::is_utf8(input)
    }

    /// The closing quote of the string whose content starts at `from`, and whether it has escapes.
    pub(crate) fn string_end(bytes: &[u8], from: usize) -> Result<(usize, bool), JsonError> {
        super::string_end(bytes, from)
    }

    /// Whether a JSON writer copies `s` between quotes as it is (see [`super::is_plain_string`]).
    pub(crate) fn is_plain_string(s: &[u8]) -> bool {
        super::is_plain_string(s)
    }

    /// `raw` (the bytes between a string's quotes, at `offset` in the input) with its escapes resolved.
    pub(crate) fn unescape(raw: &str, offset: usize) -> Result<String, JsonError> {
        super::unescape(raw, offset)
    }

    /// The offset right after the value starting at `pos` (nested `depth` containers deep), checking what
    /// the scanner checks in values it skips.
    pub(crate) fn skip_value(bytes: &[u8], pos: usize, depth: usize) -> Result<usize, JsonError> {
        if depth >= super::MAX_DEPTH {
            return Err(JsonError::TooDeep);
        }
        let mut cursor = Cursor { bytes, pos };
        cursor.skip_value(depth)?;
        Ok(cursor.pos)
    }
}

/// Whether `input` is UTF-8. Requests are nearly always ASCII, which one pass of 64-byte ORs (vectorised)
/// confirms at a fraction of the cost of std's validation; anything else gets std's validation.
#[inline]
fn is_utf8(input: &[u8]) -> bool {
    let (blocks, rest) = input.as_chunks::<64>();
    let mut acc = [0u64; 8];
    for block in blocks {
        for (a, word) in acc.iter_mut().zip(block.as_chunks::<8>().0) {
            *a |= u64::from_le_bytes(*word);
        }
    }
    let all = acc.iter().fold(0, |x, y| x | y) | rest.iter().fold(0, |x, &b| x | u64::from(b));
    all & (ONES << 7) == 0 || std::str::from_utf8(input).is_ok()
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

/// Whether a JSON writer copies `s` between quotes as it is: no `"`, no `\\`, no control character.
/// Eight bytes per step, the last word overlapping the one before: the strings written (ids, names,
/// domains) are short, where a byte loop, or a vectorised fold and its scalar tail, costs several
/// instructions per byte.
#[inline]
fn is_plain_string(s: &[u8]) -> bool {
    let (words, rest) = s.as_chunks::<8>();
    let last = match s.last_chunk::<8>() {
        Some(last) if !rest.is_empty() => *last,
        Some(_) => [b' '; 8],
        None => {
            // Shorter than a word: padded with spaces, which need no escape.
            let mut padded = [b' '; 8];
            if let Some(head) = padded.get_mut(..s.len()) {
                head.copy_from_slice(s);
            }
            padded
        }
    };
    let hits = words
        .iter()
        .chain(std::iter::once(&last))
        .fold(0, |hits, word| {
            hits | escape_bytes(u64::from_le_bytes(*word))
        });
    hits == 0
}

/// Nonzero when `w` has a byte below 0x20, a `"` or a `\\` (high bits set, with possible false ones only
/// above a true one: exact as a whole, not per byte).
#[inline(always)]
fn escape_bytes(w: u64) -> u64 {
    // A byte below n borrows in `x - n` and had its high bit clear (n <= 0x80): the classic `hasless`.
    let below = |x: u64, n: u64| x.wrapping_sub(ONES * n) & !x;
    let hits = below(w, 0x20)
        | below(w ^ (ONES * u64::from(b'"')), 1)
        | below(w ^ (ONES * u64::from(b'\\')), 1);
    hits & (ONES << 7)
}

/// FNV-1a: cheap, and only compared in debug assertions.
#[cfg(debug_assertions)]
fn fingerprint(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

struct UserCtx<'s> {
    sources: &'s [&'s str],
    member_name: &'s str,
}

/// What the last `user.ext` member was.
enum Ext {
    Absent,
    Null {
        start: usize,
        end: usize,
    },
    Object {
        open: usize,
        last_value_end: Option<usize>,
        member: Option<(usize, usize)>,
    },
    Other,
}

/// `cur` is at the value of a top-level `user` member.
fn parse_user<'a>(
    cur: &mut Cursor<'a>,
    depth: usize,
    ctx: &UserCtx<'_>,
    tokens: &mut Tokens<'a>,
) -> Result<Target, JsonError> {
    if cur.peek() != Some(b'{') {
        cur.skip_value(depth)?;
        return Ok(Target::NoUser);
    }
    let open = cur.pos;
    let mut ext = Ext::Absent;
    // A local copy, written back once (see `parse_eids`).
    let mut local = *cur;
    let last_value_end = local.object(depth, |cur, key, depth| {
        match &*key.name()? {
            b"eids" => {
                drop_location(tokens, EidLocation::UserEids);
                if cur.peek() == Some(b'[') {
                    parse_eids(cur, depth, ctx.sources, EidLocation::UserEids, tokens)?;
                } else {
                    cur.skip_value(depth)?;
                }
            }
            b"ext" => {
                drop_location(tokens, EidLocation::UserExtEids);
                ext = parse_ext(cur, depth, ctx, tokens)?;
            }
            _ => cur.skip_value(depth)?,
        }
        Ok(())
    })?;
    *cur = local;
    // `ext` may come before `eids`; the contract is user.eids tokens first.
    if !tokens.is_sorted_by_key(|t| t.location) {
        tokens.sort_by_key(|t| t.location);
    }
    Ok(match ext {
        Ext::Absent => Target::Insert {
            at: last_value_end.unwrap_or(open + 1),
            comma: last_value_end.is_some(),
            wrap_in_ext: true,
        },
        Ext::Null { start, end } => Target::Replace {
            start,
            end,
            wrap_in_object: true,
        },
        Ext::Object {
            member: Some((start, end)),
            ..
        } => Target::Replace {
            start,
            end,
            wrap_in_object: false,
        },
        Ext::Object {
            open,
            last_value_end,
            member: None,
        } => Target::Insert {
            at: last_value_end.unwrap_or(open + 1),
            comma: last_value_end.is_some(),
            wrap_in_ext: false,
        },
        Ext::Other => Target::ExtUnusable,
    })
}

/// A later duplicate of `eids` or `ext` replaces what the earlier one contributed.
fn drop_location(tokens: &mut Tokens<'_>, location: EidLocation) {
    if tokens.iter().any(|t| t.location == location) {
        tokens.retain(|t| t.location != location);
    }
}

/// `cur` is at the value of `user.ext`.
fn parse_ext<'a>(
    cur: &mut Cursor<'a>,
    depth: usize,
    ctx: &UserCtx<'_>,
    tokens: &mut Tokens<'a>,
) -> Result<Ext, JsonError> {
    let start = cur.pos;
    if cur.peek() != Some(b'{') {
        cur.skip_value(depth)?;
        let is_null = cur.bytes.get(start..cur.pos) == Some(b"null".as_slice());
        return Ok(if is_null {
            Ext::Null {
                start,
                end: cur.pos,
            }
        } else {
            Ext::Other
        });
    }
    let mut member = None;
    let last_value_end = cur.object(depth, |cur, key, depth| {
        let key = key.name()?;
        if *key == *ctx.member_name.as_bytes() {
            let value_start = cur.pos;
            cur.skip_value(depth)?;
            member = Some((value_start, cur.pos));
        } else if *key == *b"eids" {
            drop_location(tokens, EidLocation::UserExtEids);
            if cur.peek() == Some(b'[') {
                parse_eids(cur, depth, ctx.sources, EidLocation::UserExtEids, tokens)?;
            } else {
                cur.skip_value(depth)?;
            }
        } else {
            cur.skip_value(depth)?;
        }
        Ok(())
    })?;
    Ok(Ext::Object {
        open: start,
        last_value_end,
        member,
    })
}

/// `cur` is at the `[` of an eids array.
fn parse_eids<'a>(
    cur: &mut Cursor<'a>,
    depth: usize,
    sources: &[&str],
    location: EidLocation,
    tokens: &mut Tokens<'a>,
) -> Result<(), JsonError> {
    // A local copy, written back once: the compiler can then keep the position in a register instead of
    // storing it through `cur` at every step.
    let mut local = *cur;
    local.array(depth, |cur, depth| {
        if cur.peek() == Some(b'{') {
            if compact_eid(cur, sources, location, tokens) {
                return Ok(());
            }
            parse_eid(cur, depth, sources, location, tokens)
        } else {
            cur.skip_value(depth)
        }
    })?;
    *cur = local;
    Ok(())
}

/// Reads eids of the compact shape nearly every eid has in real traffic (what Prebid Server writes):
/// `{"source":"…","uids":[{"id":"…","atype":N},…]}`, no whitespace, no escapes, `atype` absent or a
/// number, and no other members in the eid or its uids. Literal compares cost a fraction of the general
/// member walk, which was most of a scan (about 40 ns per eid that is not UID2).
///
/// Takes the eid at the cursor and every compact eid that follows it, each after one comma, and leaves the
/// cursor after the last one taken (at the `,` or `]` that follows it). Going from one eid to the next
/// here, instead of through [`Cursor::array`], saved ~40 instructions per eid (callgrind).
///
/// Returns `false` when the first eid is not compact, having moved nothing and pushed nothing; [`parse_eid`]
/// then reads the eid from the same place. An eid after the first that is not compact is likewise left,
/// untouched, to the array walk. Whatever this accepts, `parse_eid` accepts with the same tokens, so the
/// shortcut never changes a result.
#[inline]
fn compact_eid<'a>(
    cur: &mut Cursor<'a>,
    sources: &[&str],
    location: EidLocation,
    tokens: &mut Tokens<'a>,
) -> bool {
    let bytes = cur.bytes;
    let mut pos = cur.pos;
    let mut taken = false;
    // Every way out of an eid but the last drops what it pushed. A version with one exit (an inner
    // function returning `Option`) cost ~350 more instructions per 2 KB request (callgrind), so the exits
    // repeat.
    loop {
        let first = tokens.len();
        let Some((source, after_source)) = compact_string(bytes, pos, b"{\"source\":\"") else {
            return taken;
        };
        pos = after_source;
        if !bytes
            .get(pos..)
            .is_some_and(|rest| rest.starts_with(b",\"uids\":["))
        {
            return taken;
        }
        pos += b",\"uids\":[".len();
        let source_index = sources.iter().position(|name| name.as_bytes() == source);
        loop {
            let Some((id, after_id)) = compact_string(bytes, pos, b"{\"id\":\"") else {
                tokens.truncate(first);
                return taken;
            };
            pos = after_id;
            if bytes
                .get(pos..)
                .is_some_and(|rest| rest.starts_with(b",\"atype\":"))
            {
                pos += b",\"atype\":".len();
                let digits = bytes
                    .get(pos..)
                    .unwrap_or_default()
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .count();
                if digits == 0 {
                    tokens.truncate(first);
                    return taken;
                }
                pos += digits;
            }
            if bytes.get(pos) != Some(&b'}') {
                tokens.truncate(first);
                return taken;
            }
            if let Some(source_index) = source_index {
                debug_assert!(std::str::from_utf8(id).is_ok());
                // SAFETY: `scan` checked that the whole input is UTF-8, and `id` lies between two `"`
                // bytes, which are ASCII and so never inside a multi-byte character: `id` starts and ends
                // on character boundaries. (`from_utf8` here cost ~1 instruction per byte of every
                // token, about 2% of a 2 KB request.)
                let id = unsafe { std::str::from_utf8_unchecked(id) };
                tokens.push(FoundToken {
                    id: Cow::Borrowed(id),
                    source_index,
                    location,
                });
            }
            match bytes.get(pos + 1) {
                Some(b',') => pos += 2,
                Some(b']') => {
                    pos += 2;
                    break;
                }
                _ => {
                    tokens.truncate(first);
                    return taken;
                }
            }
        }
        if bytes.get(pos) != Some(&b'}') {
            tokens.truncate(first);
            return taken;
        }
        pos += 1;
        cur.pos = pos;
        taken = true;
        if bytes.get(pos) != Some(&b',') {
            return true;
        }
        pos += 1;
    }
}

/// At `at`, `prefix` (ending in an opening quote) and then a string without escapes: the string's bytes
/// and the offset after its closing quote.
#[inline(always)]
fn compact_string<'a>(bytes: &'a [u8], at: usize, prefix: &[u8]) -> Option<(&'a [u8], usize)> {
    let start = at + prefix.len();
    if !bytes.get(at..)?.starts_with(prefix) {
        return None;
    }
    match find_quote_or_backslash(bytes.get(start..)?)? {
        (len, true) => Some((bytes.get(start..start + len)?, start + len + 1)),
        (_, false) => None,
    }
}

/// `cur` is at the `{` of one eid.
fn parse_eid<'a>(
    cur: &mut Cursor<'a>,
    depth: usize,
    sources: &[&str],
    location: EidLocation,
    tokens: &mut Tokens<'a>,
) -> Result<(), JsonError> {
    let first = tokens.len();
    let mut source_index = None;
    let mut uids_at = None;
    // The source under which the ids now in `tokens[first..]` were read.
    let mut read_as = None;
    cur.object(depth, |cur, key, depth| {
        match &*key.name()? {
            b"source" => {
                source_index = if cur.peek() == Some(b'"') {
                    // Compared as (unescaped) bytes: no `&str` and no char boundary checks needed.
                    let source = cur.string()?.name()?;
                    let mut found = None;
                    for (index, name) in sources.iter().enumerate() {
                        if *name.as_bytes() == *source {
                            found = Some(index);
                            break;
                        }
                    }
                    found
                } else {
                    cur.skip_value(depth)?;
                    None
                };
            }
            b"uids" => {
                // Checked first: `truncate` calls the (empty) drop of the tail even when there is none.
                if tokens.len() > first {
                    tokens.truncate(first);
                }
                read_as = None;
                uids_at = (cur.peek() == Some(b'[')).then_some(cur.pos);
                match (source_index, uids_at) {
                    // The usual order: the source is known, read the ids in this one pass.
                    (Some(index), Some(_)) => {
                        parse_uids(cur, depth, index, location, tokens)?;
                        read_as = Some(index);
                    }
                    _ => cur.skip_value(depth)?,
                }
            }
            _ => cur.skip_value(depth)?,
        }
        Ok(())
    })?;
    // `uids` came before `source`, or a later duplicate `source` changed it: read the ids again under
    // the source that won. Rare, so a second pass is fine.
    if read_as != source_index {
        tokens.truncate(first);
        if let (Some(index), Some(at)) = (source_index, uids_at) {
            let mut uids = Cursor { pos: at, ..*cur };
            parse_uids(&mut uids, depth + 1, index, location, tokens)?;
        }
    }
    Ok(())
}

/// `cur` is at the `[` of a `uids` array.
fn parse_uids<'a>(
    cur: &mut Cursor<'a>,
    depth: usize,
    source_index: usize,
    location: EidLocation,
    tokens: &mut Tokens<'a>,
) -> Result<(), JsonError> {
    cur.array(depth, |cur, depth| {
        if cur.peek() == Some(b'{') {
            parse_uid(cur, depth, source_index, location, tokens)
        } else {
            cur.skip_value(depth)
        }
    })
}

/// `cur` is at the `{` of one uid.
fn parse_uid<'a>(
    cur: &mut Cursor<'a>,
    depth: usize,
    source_index: usize,
    location: EidLocation,
    tokens: &mut Tokens<'a>,
) -> Result<(), JsonError> {
    let mut id = None;
    cur.object(depth, |cur, key, depth| {
        if *key.name()? == *b"id" {
            id = if cur.peek() == Some(b'"') {
                Some(cur.string()?)
            } else {
                cur.skip_value(depth)?;
                None
            };
        } else {
            cur.skip_value(depth)?;
        }
        Ok(())
    })?;
    if let Some(id) = id {
        tokens.push(FoundToken {
            id: id.text()?,
            source_index,
            location,
        });
    }
    Ok(())
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

/// A string's position: the bytes between its quotes, still escaped.
#[derive(Clone, Copy)]
struct RawStr<'a> {
    /// The whole input, which is UTF-8.
    input: &'a [u8],
    start: usize,
    end: usize,
    escaped: bool,
}

impl<'a> RawStr<'a> {
    /// The unescaped text; allocates only when the string contains escapes.
    #[inline(always)]
    fn text(self) -> Result<Cow<'a, str>, JsonError> {
        // The quotes around the string are ASCII, so these bytes are valid UTF-8 in a valid input: the
        // check cannot fail (and costs a pass over a few short strings, where checking the whole input as
        // a `str` would cost one over every byte of it).
        let raw = self
            .input
            .get(self.start..self.end)
            .and_then(|raw| std::str::from_utf8(raw).ok())
            .ok_or(JsonError::Malformed {
                offset: self.start,
                reason: "invalid string",
            })?;
        if self.escaped {
            unescape(raw, self.start).map(Cow::Owned)
        } else {
            Ok(Cow::Borrowed(raw))
        }
    }

    /// The unescaped bytes, for comparing member names and for strings kept as bytes: no `&str` (and no
    /// char boundary checks) needed. Escapes are checked as in [`RawStr::text`].
    #[inline(always)]
    fn name(self) -> Result<Cow<'a, [u8]>, JsonError> {
        if self.escaped {
            return self.text().map(|t| Cow::Owned(t.into_owned().into_bytes()));
        }
        Ok(Cow::Borrowed(
            self.input.get(self.start..self.end).unwrap_or_default(),
        ))
    }
}

#[cold]
fn unescape(raw: &str, offset: usize) -> Result<String, JsonError> {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while let Some(k) = memchr(b'\\', bytes.get(i..).unwrap_or_default()) {
        let at = i + k;
        let bad = |reason| JsonError::Malformed {
            offset: offset + at,
            reason,
        };
        // Backslashes and the bytes after an escape are ASCII, so these are char boundaries.
        out.push_str(raw.get(i..at).ok_or(bad("invalid escape"))?);
        let (ch, len) = match bytes.get(at + 1) {
            Some(b'"') => ('"', 2),
            Some(b'\\') => ('\\', 2),
            Some(b'/') => ('/', 2),
            Some(b'b') => ('\u{8}', 2),
            Some(b'f') => ('\u{c}', 2),
            Some(b'n') => ('\n', 2),
            Some(b'r') => ('\r', 2),
            Some(b't') => ('\t', 2),
            Some(b'u') => {
                let hi = hex4(bytes, at + 2).ok_or(bad("invalid \\u escape"))?;
                match hi {
                    0xD800..=0xDBFF => {
                        let lo = match bytes.get(at + 6..at + 8) {
                            Some(b"\\u") => hex4(bytes, at + 8),
                            _ => None,
                        }
                        .filter(|lo| (0xDC00..=0xDFFF).contains(lo))
                        .ok_or(bad("lone surrogate in \\u escape"))?;
                        let c = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                        (char::from_u32(c).ok_or(bad("invalid \\u escape"))?, 12)
                    }
                    0xDC00..=0xDFFF => return Err(bad("lone surrogate in \\u escape")),
                    _ => (char::from_u32(hi).ok_or(bad("invalid \\u escape"))?, 6),
                }
            }
            _ => return Err(bad("invalid escape")),
        };
        out.push(ch);
        i = at + len;
    }
    out.push_str(raw.get(i..).unwrap_or_default());
    Ok(out)
}

fn hex4(bytes: &[u8], at: usize) -> Option<u32> {
    bytes
        .get(at..at + 4)?
        .iter()
        .try_fold(0u32, |v, &b| Some(v * 16 + char::from(b).to_digit(16)?))
}

/// Position of the closing quote of a string whose content starts at `from`, and whether it has escapes.
#[inline(always)]
fn string_end(bytes: &[u8], from: usize) -> Result<(usize, bool), JsonError> {
    let mut i = from;
    let mut escaped = false;
    loop {
        let rest = bytes.get(i..).ok_or(JsonError::Truncated)?;
        match find_quote_or_backslash(rest) {
            Some((k, true)) => return Ok((i + k, escaped)),
            // Whatever follows the backslash is not a terminator; a bad escape is the reader's problem.
            Some((k, false)) => {
                escaped = true;
                i += k + 2;
            }
            None => return Err(JsonError::Truncated),
        }
    }
}

/// Search for the end of a string, 16 bytes per step: the offset of the first `"` or `\\`, and whether it
/// is the quote. Most strings in a request are short keys and values, where a call into memchr or a byte
/// loop (whose exit mispredicts at every string) costs more than one or two vector compares; past 64 bytes
/// (user agents, tokens) memchr's wider loop takes over. The answer comes from the masks, not from reading
/// the byte again: that load would sit on the critical path of every string.
#[inline(always)]
fn find_quote_or_backslash(s: &[u8]) -> Option<(usize, bool)> {
    let mut i = 0;
    while let Some(chunk) = s.get(i..).and_then(<[u8]>::first_chunk::<16>) {
        let (quotes, backslashes) = quote_and_backslash_16(chunk);
        let hits = quotes | backslashes;
        if hits != 0 {
            let first = hits & hits.wrapping_neg();
            return Some((i + hits.trailing_zeros() as usize, quotes & first != 0));
        }
        i += 16;
        if i == 64 {
            let k = memchr2(b'"', b'\\', s.get(i..)?)? + i;
            return Some((k, s.get(k) == Some(&b'"')));
        }
    }
    let tail = s.get(i..)?;
    let k = tail.iter().position(|&b| b == b'"' || b == b'\\')? + i;
    Some((k, s.get(k) == Some(&b'"')))
}

/// Bit n of the first mask set when byte n is `"`, of the second when it is `\\`.
#[inline(always)]
fn quote_and_backslash_16(chunk: &[u8; 16]) -> (u32, u32) {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    {
        sse2::quote_and_backslash_16(chunk)
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
    {
        quote_and_backslash_16_swar(chunk)
    }
}

#[cfg_attr(all(target_arch = "x86_64", target_feature = "sse2"), allow(dead_code))]
#[inline(always)]
fn quote_and_backslash_16_swar(chunk: &[u8; 16]) -> (u32, u32) {
    let (mut quotes, mut backslashes) = (0, 0);
    for (k, word) in chunk.as_chunks::<8>().0.iter().enumerate() {
        let w = u64::from_le_bytes(*word);
        quotes |= (gather(eq_mask(w, b'"')) as u32) << (8 * k);
        backslashes |= (gather(eq_mask(w, b'\\')) as u32) << (8 * k);
    }
    (quotes, backslashes)
}

const ONES: u64 = 0x0101_0101_0101_0101;
const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;

/// High bit set in exactly the bytes of `w` equal to `c` (no false positives: no carry crosses bytes).
#[inline(always)]
fn eq_mask(w: u64, c: u8) -> u64 {
    let x = w ^ (ONES * u64::from(c));
    !(((x & LOW7) + LOW7) | x) & !LOW7
}

/// Which bytes of a 64-byte block are `"`, `\\`, or a bracket (`{`, `[`, `}`, `]`), one bit per byte.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct BlockMasks {
    quote: u64,
    backslash: u64,
    bracket: u64,
}

impl BlockMasks {
    #[inline(always)]
    fn classify(block: &[u8; 64]) -> BlockMasks {
        #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
        {
            sse2::classify(block)
        }
        #[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
        {
            BlockMasks::classify_swar(block)
        }
    }

    /// Portable version: eight bytes per step, exact per-byte flags gathered into bits by a multiply.
    #[cfg_attr(all(target_arch = "x86_64", target_feature = "sse2"), allow(dead_code))]
    #[inline(always)]
    fn classify_swar(block: &[u8; 64]) -> BlockMasks {
        let mut m = BlockMasks::default();
        for (k, word) in block.as_chunks::<8>().0.iter().enumerate() {
            let w = u64::from_le_bytes(*word);
            // Setting bit 5 folds `[` onto `{` and `]` onto `}`, and no other byte onto either.
            let folded = w | (ONES * 0x20);
            let shift = 8 * k;
            m.quote |= gather(eq_mask(w, b'"')) << shift;
            m.backslash |= gather(eq_mask(w, b'\\')) << shift;
            m.bracket |= gather(eq_mask(folded, b'{') | eq_mask(folded, b'}')) << shift;
        }
        m
    }
}

/// Moves the high bit of each byte of an [`eq_mask`] result into bits 0..8.
#[inline(always)]
fn gather(mask: u64) -> u64 {
    (mask >> 7).wrapping_mul(0x0102_0408_1020_4080) >> 56
}

/// SSE2 is part of the x86_64 baseline; 16 bytes per compare instead of 8.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
mod sse2 {
    use super::BlockMasks;
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_movemask_epi8, _mm_or_si128, _mm_set_epi64x, _mm_set1_epi8,
    };
    #[cfg(target_feature = "pclmulqdq")]
    use std::arch::x86_64::{_mm_clmulepi64_si128, _mm_cvtsi128_si64};

    #[inline(always)]
    pub(super) fn classify(block: &[u8; 64]) -> BlockMasks {
        // SAFETY: this module is only compiled when the target has SSE2 (see the cfg above), so the CPU
        // running this code supports every instruction `classify_sse2` uses. It touches no raw pointers.
        unsafe { classify_sse2(block) }
    }

    #[inline(always)]
    pub(super) fn quote_and_backslash_16(chunk: &[u8; 16]) -> (u32, u32) {
        // SAFETY: as for `classify`.
        unsafe { quote_and_backslash_16_sse2(chunk) }
    }

    #[cfg(target_feature = "pclmulqdq")]
    #[inline(always)]
    pub(super) fn prefix_xor(x: u64) -> u64 {
        // SAFETY: only compiled when the target has PCLMULQDQ (and SSE2), as for `classify`.
        unsafe { prefix_xor_clmul(x) }
    }

    /// A carry-less multiply by all ones: bit n of the product is the XOR of bits 0..=n of `x`.
    #[cfg(target_feature = "pclmulqdq")]
    #[target_feature(enable = "sse2,pclmulqdq")]
    #[inline]
    fn prefix_xor_clmul(x: u64) -> u64 {
        let product = _mm_clmulepi64_si128::<0>(_mm_set_epi64x(0, x as i64), _mm_set1_epi8(-1));
        _mm_cvtsi128_si64(product) as u64
    }

    #[target_feature(enable = "sse2")]
    #[inline]
    fn quote_and_backslash_16_sse2(chunk: &[u8; 16]) -> (u32, u32) {
        let v = load(chunk);
        let bits =
            |c: u8| u32::from(_mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8(c as i8))) as u16);
        (bits(b'"'), bits(b'\\'))
    }

    /// Built from a `u128` so that no raw pointer is needed; compiles to one unaligned load (or a memory
    /// operand of the compare).
    #[target_feature(enable = "sse2")]
    #[inline]
    fn load(chunk: &[u8; 16]) -> __m128i {
        let v = u128::from_le_bytes(*chunk);
        _mm_set_epi64x((v >> 64) as i64, v as i64)
    }

    #[target_feature(enable = "sse2")]
    #[inline]
    fn classify_sse2(block: &[u8; 64]) -> BlockMasks {
        let quote = _mm_set1_epi8(b'"' as i8);
        let backslash = _mm_set1_epi8(b'\\' as i8);
        let open = _mm_set1_epi8(b'{' as i8);
        let close = _mm_set1_epi8(b'}' as i8);
        let fold = _mm_set1_epi8(0x20);
        let mut m = BlockMasks::default();
        for (k, lane) in block.as_chunks::<16>().0.iter().enumerate() {
            let v = load(lane);
            // Setting bit 5 folds `[` onto `{` and `]` onto `}`, and no other byte onto either.
            let folded = _mm_or_si128(v, fold);
            let bracket = _mm_or_si128(_mm_cmpeq_epi8(folded, open), _mm_cmpeq_epi8(folded, close));
            let bits = |hits| u64::from(_mm_movemask_epi8(hits) as u16) << (16 * k);
            m.quote |= bits(_mm_cmpeq_epi8(v, quote));
            m.backslash |= bits(_mm_cmpeq_epi8(v, backslash));
            m.bracket |= bits(bracket);
        }
        m
    }
}

/// AVX2, when the CPU running the program has it (checked once per skipped container, a cached flag): 32
/// bytes per compare for the skipper's block classification.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{BlockMasks, Classifier, JsonError};
    use std::arch::x86_64::{
        __m256i, _mm256_cmpeq_epi8, _mm256_movemask_epi8, _mm256_or_si256, _mm256_set_epi64x,
        _mm256_set1_epi8,
    };

    /// Proof that the running CPU supports AVX2: only [`Avx2::detect`] makes one.
    #[derive(Clone, Copy)]
    pub(super) struct Avx2(());

    impl Avx2 {
        #[inline(always)]
        pub(super) fn detect() -> Option<Avx2> {
            std::arch::is_x86_feature_detected!("avx2").then_some(Avx2(()))
        }

        /// [`super::skip_blocks`] compiled for AVX2.
        #[inline(always)]
        pub(super) fn skip_blocks(
            self,
            bytes: &[u8],
            start: usize,
            depth: usize,
        ) -> Result<usize, JsonError> {
            // SAFETY: an `Avx2` exists only when the CPU supports AVX2 (see `detect`), which is all that
            // `skip_blocks_avx2` requires. It touches no raw pointers.
            unsafe { skip_blocks_avx2(self, bytes, start, depth) }
        }
    }

    impl Classifier for Avx2 {
        #[inline(always)]
        fn classify(self, block: &[u8; 64]) -> BlockMasks {
            // SAFETY: as for `skip_blocks`.
            unsafe { classify_avx2(block) }
        }
    }

    #[target_feature(enable = "avx2")]
    fn skip_blocks_avx2(
        avx2: Avx2,
        bytes: &[u8],
        start: usize,
        depth: usize,
    ) -> Result<usize, JsonError> {
        super::skip_blocks(avx2, bytes, start, depth)
    }

    /// Built from `u128`s so that no raw pointer is needed; compiles to one unaligned load (or a memory
    /// operand of the compare).
    #[target_feature(enable = "avx2")]
    #[inline]
    fn load(chunk: &[u8; 32]) -> __m256i {
        let (lo, hi) = chunk.split_at(16);
        let word = |half: &[u8]| {
            half.first_chunk::<16>()
                .map_or(0, |b| u128::from_le_bytes(*b))
        };
        let (lo, hi) = (word(lo), word(hi));
        _mm256_set_epi64x((hi >> 64) as i64, hi as i64, (lo >> 64) as i64, lo as i64)
    }

    #[target_feature(enable = "avx2")]
    #[inline]
    pub(super) fn classify_avx2(block: &[u8; 64]) -> BlockMasks {
        let quote = _mm256_set1_epi8(b'"' as i8);
        let backslash = _mm256_set1_epi8(b'\\' as i8);
        let open = _mm256_set1_epi8(b'{' as i8);
        let close = _mm256_set1_epi8(b'}' as i8);
        let fold = _mm256_set1_epi8(0x20);
        let mut m = BlockMasks::default();
        for (k, lane) in block.as_chunks::<32>().0.iter().enumerate() {
            let v = load(lane);
            // Setting bit 5 folds `[` onto `{` and `]` onto `}`, and no other byte onto either.
            let folded = _mm256_or_si256(v, fold);
            let bracket = _mm256_or_si256(
                _mm256_cmpeq_epi8(folded, open),
                _mm256_cmpeq_epi8(folded, close),
            );
            let bits = |hits| u64::from(_mm256_movemask_epi8(hits) as u32) << (32 * k);
            m.quote |= bits(_mm256_cmpeq_epi8(v, quote));
            m.backslash |= bits(_mm256_cmpeq_epi8(v, backslash));
            m.bracket |= bits(bracket);
        }
        m
    }
}

/// Bytes escaped by a backslash: each backslash not itself escaped escapes the next byte. `carry` links
/// blocks: it says the first byte is escaped, and is set when the last byte is an escaping backslash.
#[inline(always)]
fn escaped_bytes(backslash: u64, carry: &mut bool) -> u64 {
    let mut escaped = 0;
    let mut pending = backslash;
    if std::mem::take(carry) {
        escaped = 1;
        pending &= !1;
    }
    while pending != 0 {
        let at = pending.trailing_zeros();
        if at == 63 {
            *carry = true;
            break;
        }
        escaped |= 2 << at;
        pending &= !(3 << at);
    }
    escaped
}

/// Bit n = XOR of bits 0..=n: between an opening quote (included) and its closing quote (excluded).
#[inline(always)]
fn prefix_xor(x: u64) -> u64 {
    #[cfg(all(target_arch = "x86_64", target_feature = "pclmulqdq"))]
    {
        sse2::prefix_xor(x)
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "pclmulqdq")))]
    {
        prefix_xor_shifts(x)
    }
}

#[cfg_attr(
    all(target_arch = "x86_64", target_feature = "pclmulqdq"),
    allow(dead_code)
)]
#[inline(always)]
fn prefix_xor_shifts(mut x: u64) -> u64 {
    x ^= x << 1;
    x ^= x << 2;
    x ^= x << 4;
    x ^= x << 8;
    x ^= x << 16;
    x ^= x << 32;
    x
}

/// Levels of nesting inside a skipped value whose types [`skip_blocks`] holds in a register (one bit of
/// the `u64` is the sentinel).
const REGISTER_LEVELS: u32 = 63;

/// The brackets of a 64-byte block that are outside strings. `in_string` (all ones when the previous block
/// ended inside a string) and `escape_carry` (the previous block ended with a backslash that escapes this
/// block's first byte) link the blocks.
#[inline(always)]
fn structural_brackets(masks: BlockMasks, in_string: &mut u64, escape_carry: &mut bool) -> u64 {
    let escaped = escaped_bytes(masks.backslash, escape_carry);
    let strings = prefix_xor(masks.quote & !escaped) ^ *in_string;
    *in_string = ((strings as i64) >> 63) as u64;
    masks.bracket & !strings
}

/// The last, short block of the input, padded with spaces, which are inert in every mask.
fn padded_tail(bytes: &[u8], base: usize) -> [u8; 64] {
    let rest = bytes.get(base..).unwrap_or_default();
    let mut padded = [b' '; 64];
    if let Some(head) = padded.get_mut(..rest.len()) {
        head.copy_from_slice(rest);
    }
    padded
}

/// What [`skip_blocks`] carries from one block to the next.
#[derive(Clone, Copy)]
struct SkipState {
    /// The types of the open containers inside the skipped value (the value itself included), as a shift
    /// register under a sentinel bit: bit 0 is the innermost container, bit n the one n levels out (set: an
    /// object, clear: an array), and the highest set bit marks the bottom, so `1` means none is open.
    stack: u64,
    in_string: u64,
    escape_carry: bool,
}

/// The loop of [`Cursor::skip_container`] from the `{` or `[` at `start`: the offset after the matching
/// bracket, checking bracket types and depth (the value is at nesting `depth`). Inlined into each
/// classifier's entry point, so that the classifier inlines into the loop.
///
/// Every local here lives in a register: the bracket loop is the hot part of skipping, and a memory-held
/// stack would serialise every bracket on a store and a load.
#[inline(always)]
fn skip_blocks<C: Classifier>(
    classifier: C,
    bytes: &[u8],
    start: usize,
    depth: usize,
) -> Result<usize, JsonError> {
    // The most levels the depth limit allows inside the value, and the `stack` values from which the
    // bracket loop leaves its fast path: past that limit, or past what the register holds.
    let limit = MAX_DEPTH.saturating_sub(depth);
    let stack_limit: u64 = 1 << (limit + 1).min(REGISTER_LEVELS as usize);
    let mut state = SkipState {
        stack: 1,
        in_string: 0,
        escape_carry: false,
    };
    let mut base = start;
    while let Some(block) = bytes.get(base..).and_then(<[u8]>::first_chunk::<64>) {
        if let Some(end) = skip_block(
            classifier.classify(block),
            block,
            base,
            &mut state,
            stack_limit,
        )? {
            return end.finish(bytes, limit);
        }
        base += 64;
    }
    if base < bytes.len() {
        let rest = bytes.get(base..).unwrap_or_default();
        // The input's last 64 bytes, classified and shifted down so that bit 0 is `base`: the bits past
        // the end come in as zeros, as the spaces of a padded copy would. A copy to a padded buffer costs
        // a memcpy and a store-forwarding stall, on the last value of nearly every request.
        let end = match bytes
            .len()
            .checked_sub(64)
            .and_then(|from| bytes.get(from..))
            .and_then(<[u8]>::first_chunk::<64>)
        {
            Some(window) => {
                let shift = 64 - rest.len();
                let m = classifier.classify(window);
                let masks = BlockMasks {
                    quote: m.quote >> shift,
                    backslash: m.backslash >> shift,
                    bracket: m.bracket >> shift,
                };
                skip_block(masks, rest, base, &mut state, stack_limit)?
            }
            None => {
                let block = padded_tail(bytes, base);
                skip_block(
                    classifier.classify(&block),
                    &block,
                    base,
                    &mut state,
                    stack_limit,
                )?
            }
        };
        if let Some(end) = end {
            return end.finish(bytes, limit);
        }
    }
    Err(JsonError::Truncated)
}

/// How [`skip_block`] left the fast path.
enum BlockEnd {
    /// The value ends before this offset.
    End(usize),
    /// Too deep for the register: go on from the brackets still to visit in the block at `base`.
    Deep {
        state: SkipState,
        brackets: u64,
        base: usize,
    },
}

impl BlockEnd {
    #[inline(always)]
    fn finish(self, bytes: &[u8], limit: usize) -> Result<usize, JsonError> {
        match self {
            BlockEnd::End(end) => Ok(end),
            BlockEnd::Deep {
                state,
                brackets,
                base,
            } => skip_deep(bytes, state, brackets, base, limit),
        }
    }
}

/// The brackets of one block; `Some` when the value ends in it or when the nesting outgrows the register.
#[inline(always)]
fn skip_block(
    masks: BlockMasks,
    block: &[u8],
    base: usize,
    state: &mut SkipState,
    stack_limit: u64,
) -> Result<Option<BlockEnd>, JsonError> {
    let mut brackets = structural_brackets(masks, &mut state.in_string, &mut state.escape_carry);
    let mut stack = state.stack;
    while brackets != 0 {
        let at = brackets.trailing_zeros() as usize;
        brackets &= brackets - 1;
        let byte = block.get(at).copied().unwrap_or_default();
        // `{` 0x7B and `[` 0x5B have bit 1 set, `}` 0x7D and `]` 0x5D do not; bit 5 tells curly from
        // square. Opening and closing are then handled arithmetically: which one comes next is data, and
        // a branch on it would mispredict about half the time.
        let open = (byte >> 1) & 1 == 1;
        let curly = u64::from((byte >> 5) & 1);
        // A closing bracket must match the innermost type (bit 0): a mismatch empties the register, which
        // no bracket can do otherwise (the value ends at `stack == 1`), so that the one check below
        // catches it too. An opening bracket pushes its type. Both selects must stay conditional moves
        // (hence `select_unpredictable`): the type test is data for an opening bracket too, and as a
        // branch the compiler would make of it, it mispredicts as often as the open/close one.
        let popped = select_unpredictable((stack ^ curly) & 1 == 0, stack >> 1, 0);
        stack = select_unpredictable(open, (stack << 1) | curly, popped);
        // One rarely taken branch for: the mismatch (`stack == 0`) and the end of the value (`stack ==
        // 1`), which both wrap below, and the depth limits (`stack >= stack_limit`).
        if stack.wrapping_sub(2) >= stack_limit - 2 {
            if stack == 0 {
                return Err(JsonError::Malformed {
                    offset: base + at,
                    reason: "mismatched bracket",
                });
            }
            if stack == 1 {
                return Ok(Some(BlockEnd::End(base + at + 1)));
            }
            // Past the depth limit, or the register is full (`skip_deep` tells which).
            state.stack = stack;
            return Ok(Some(BlockEnd::Deep {
                state: *state,
                brackets,
                base,
            }));
        }
    }
    state.stack = stack;
    Ok(None)
}

/// [`skip_blocks`] once the nesting outgrows the register or the depth limit (nesting bombs and
/// pathological requests only): the same walk with the types in memory, one bracket at a time, from the
/// remaining `brackets` of the block at `base` to the end of the value.
#[cold]
#[inline(never)]
fn skip_deep(
    bytes: &[u8],
    mut state: SkipState,
    mut brackets: u64,
    mut base: usize,
    limit: usize,
) -> Result<usize, JsonError> {
    let mut level = (63 - state.stack.leading_zeros()) as usize;
    if level > limit {
        return Err(JsonError::TooDeep);
    }
    // Bit n: the type of the container at level n + 1 (set: an object).
    let mut types = [0u64; MAX_DEPTH / 64];
    for slot in 0..level {
        if let Some(word) = types.get_mut(slot / 64) {
            *word |= ((state.stack >> (level - 1 - slot)) & 1) << (slot % 64);
        }
    }
    loop {
        let block = match bytes.get(base..).and_then(<[u8]>::first_chunk::<64>) {
            Some(block) => *block,
            None => padded_tail(bytes, base),
        };
        while brackets != 0 {
            let at = brackets.trailing_zeros() as usize;
            brackets &= brackets - 1;
            let byte = block.get(at).copied().unwrap_or_default();
            let curly = u64::from((byte >> 5) & 1);
            if (byte >> 1) & 1 == 1 {
                if level + 1 > limit {
                    return Err(JsonError::TooDeep);
                }
                let word = types.get_mut(level / 64).ok_or(JsonError::TooDeep)?;
                *word = (*word & !(1 << (level % 64))) | (curly << (level % 64));
                level += 1;
            } else {
                let slot = level - 1;
                let word = types.get(slot / 64).copied().unwrap_or_default();
                if (word >> (slot % 64)) & 1 != curly {
                    return Err(JsonError::Malformed {
                        offset: base + at,
                        reason: "mismatched bracket",
                    });
                }
                level = slot;
                if level == 0 {
                    return Ok(base + at + 1);
                }
            }
        }
        base += 64;
        if base >= bytes.len() {
            return Err(JsonError::Truncated);
        }
        let next = match bytes.get(base..).and_then(<[u8]>::first_chunk::<64>) {
            Some(block) => *block,
            None => padded_tail(bytes, base),
        };
        brackets = structural_brackets(
            BlockMasks::classify(&next),
            &mut state.in_string,
            &mut state.escape_carry,
        );
    }
}

/// How a 64-byte block is classified: the target's baseline ([`BlockMasks::classify`]), or a wider
/// instruction set found at run time.
trait Classifier: Copy {
    fn classify(self, block: &[u8; 64]) -> BlockMasks;
}

#[derive(Clone, Copy)]
struct BaselineClassifier;

impl Classifier for BaselineClassifier {
    #[inline(always)]
    fn classify(self, block: &[u8; 64]) -> BlockMasks {
        BlockMasks::classify(block)
    }
}

/// [`skip_blocks`] with the baseline classifier, out of line.
#[inline(never)]
fn skip_blocks_baseline(bytes: &[u8], start: usize, depth: usize) -> Result<usize, JsonError> {
    skip_blocks(BaselineClassifier, bytes, start, depth)
}

/// A position in the input. `depth` arguments count the containers enclosing the value at hand.
#[derive(Clone, Copy)]
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    #[inline]
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    #[inline]
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    /// The next byte that is not JSON whitespace, without consuming it.
    #[inline(always)]
    fn next_non_ws(&mut self) -> Result<u8, JsonError> {
        // Compact requests have no whitespace between tokens: one load and one compare.
        if let Some(&b) = self.bytes.get(self.pos)
            && b > b' '
        {
            return Ok(b);
        }
        self.skip_ws();
        self.peek().ok_or(JsonError::Truncated)
    }

    fn malformed(&self, reason: &'static str) -> JsonError {
        JsonError::Malformed {
            offset: self.pos,
            reason,
        }
    }

    /// At an opening quote; leaves the cursor after the closing one.
    #[inline(always)]
    fn string(&mut self) -> Result<RawStr<'a>, JsonError> {
        let start = self.pos + 1;
        let (end, escaped) = string_end(self.bytes, start)?;
        self.pos = end + 1;
        Ok(RawStr {
            input: self.bytes,
            start,
            end,
            escaped,
        })
    }

    /// At the first byte of a value; leaves the cursor right after it. Inlined: most skipped values are
    /// strings and scalars, which should not pay for the container skipper's frame.
    #[inline(always)]
    fn skip_value(&mut self, depth: usize) -> Result<(), JsonError> {
        match self.peek() {
            None => Err(JsonError::Truncated),
            Some(b'"') => {
                self.pos = string_end(self.bytes, self.pos + 1)?.0 + 1;
                Ok(())
            }
            Some(b'{' | b'[') => self.skip_container(depth),
            Some(_) => self.skip_scalar(),
        }
    }

    /// Numbers are only checked for their character set; literals must be spelled right.
    fn skip_scalar(&mut self) -> Result<(), JsonError> {
        let rest = self.bytes.get(self.pos..).unwrap_or_default();
        let literal: &[u8] = match rest.first() {
            Some(b't') => b"true",
            Some(b'f') => b"false",
            Some(b'n') => b"null",
            Some(b'-' | b'0'..=b'9') => {
                let len = rest
                    .iter()
                    .position(|b| !matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
                    .unwrap_or(rest.len());
                self.pos += len;
                return Ok(());
            }
            _ => return Err(self.malformed("expected a value")),
        };
        if rest.starts_with(literal) {
            self.pos += literal.len();
            Ok(())
        } else if literal.starts_with(rest) {
            Err(JsonError::Truncated)
        } else {
            Err(self.malformed("invalid literal"))
        }
    }

    /// At `{` or `[`: skips to after the matching bracket, checking bracket types and depth.
    ///
    /// Works on 64-byte blocks: one pass classifies every byte of a block at once (quotes, backslashes,
    /// brackets), string interiors are masked out with a prefix XOR over the unescaped quotes, and only the
    /// brackets that remain are visited. A byte-at-a-time loop would instead take a mispredicted branch at
    /// nearly every key and value, which dominates the cost of skipping a request.
    #[inline(always)]
    fn skip_container(&mut self, depth: usize) -> Result<(), JsonError> {
        #[cfg(target_arch = "x86_64")]
        if let Some(avx2) = avx2::Avx2::detect() {
            self.pos = avx2.skip_blocks(self.bytes, self.pos, depth)?;
            return Ok(());
        }
        self.pos = skip_blocks_baseline(self.bytes, self.pos, depth)?;
        Ok(())
    }

    /// At `{`: calls `member(cursor at the value, key, depth of the value)` for each member, which must
    /// consume the value. Returns the end offset of the last member's value, if any.
    fn object<F>(&mut self, depth: usize, mut member: F) -> Result<Option<usize>, JsonError>
    where
        F: FnMut(&mut Self, RawStr<'a>, usize) -> Result<(), JsonError>,
    {
        if depth >= MAX_DEPTH {
            return Err(JsonError::TooDeep);
        }
        self.pos += 1;
        if self.next_non_ws()? == b'}' {
            self.pos += 1;
            return Ok(None);
        }
        loop {
            if self.next_non_ws()? != b'"' {
                return Err(self.malformed("expected a member name"));
            }
            let key = self.string()?;
            if self.next_non_ws()? != b':' {
                return Err(self.malformed("expected ':' after a member name"));
            }
            self.pos += 1;
            self.next_non_ws()?;
            member(self, key, depth + 1)?;
            let value_end = self.pos;
            match self.next_non_ws()? {
                b',' => self.pos += 1,
                b'}' => {
                    self.pos += 1;
                    return Ok(Some(value_end));
                }
                _ => return Err(self.malformed("expected ',' or '}' in an object")),
            }
        }
    }

    /// At `[`: calls `element(cursor at the element, depth of the element)` for each element, which must
    /// consume it.
    fn array<F>(&mut self, depth: usize, mut element: F) -> Result<(), JsonError>
    where
        F: FnMut(&mut Self, usize) -> Result<(), JsonError>,
    {
        if depth >= MAX_DEPTH {
            return Err(JsonError::TooDeep);
        }
        self.pos += 1;
        if self.next_non_ws()? == b']' {
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.next_non_ws()?;
            element(self, depth + 1)?;
            match self.next_non_ws()? {
                b',' => self.pos += 1,
                b']' => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(self.malformed("expected ',' or ']' in an array")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    const SOURCES: &[&str] = &["uidapi.com", "euid.eu"];
    const M: &str = "uid2_enrichment";
    const J: &str = r#"{"status":"success","raw_uid2":"ywsvDO4i2mFAD5Y0Uc5+FTWAfTdhgFIijeNrS3fZ7q0=","source":"uidapi.com","tokens":1}"#;

    const UID2_V4: &str = "A4AAAABlh75XmviGJi-hkLGs96duivRhMd3a3pe7yTIwbAHudfB9wFTj2FtJTdMW5TXXd1KAb-Z3ekQ_KImZ5Mi7xP75jRNeD6Mt6opWwXCCpQxYejP0R6WnCGnWawx9rLu59LsHv6YEA_ARNIUUl9koobfA9pLmnxE3dRedDgCKm4xHXYk01Fr8rOts6iJj2AhYISR3XkyBpqzT-vqBjsHH0g";
    const UID2_V2: &str = "AgAAAANzUr8B2jxfBN7c3vm2QVIPMQ2sEVjtrsp3kT/1Kq2A+XzK+3s5yJtHWbaK9fMZVwUvQgD0kBLDw1CN0M9rLx1uvXeqVmW5o8H2l6l5Hqrq1TvljtRQRrpCbQ4DQh8oa3f6p0Twf3QnYb7Q==";
    const EUID_V4: &str = "E4AAAAF2yK1z0mQnJ4hP8Vd3cXeWb7sTgR5uA9oLkYiN6jHf2ZqC1vBxD0aEr3tUw8sGy5nMp7kQ4lFj9hOcI2dTzV6bX1eR8gWmA3uKoN5sLyP0iJqH7fC4vDtB9xZrE2wQ6nM1aS8kUgT3lYoF5jVpX0cRbI7hW4eN9dKzL2mA";

    fn fixture(name: &str) -> String {
        let raw = match name {
            "iab26-video.json" => include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/openrtb/iab26-video.json"
            )),
            "iab26-simple-banner.json" => {
                include_str!(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/tests/fixtures/openrtb/iab26-simple-banner.json"
                ))
            }
            "iab26-mobile-app.json" => {
                include_str!(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/tests/fixtures/openrtb/iab26-mobile-app.json"
                ))
            }
            "prebid-server-25.json" => {
                include_str!(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/tests/fixtures/openrtb/prebid-server-25.json"
                ))
            }
            "both-locations.json" => {
                include_str!(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/tests/fixtures/openrtb/both-locations.json"
                ))
            }
            "pretty-odd-whitespace.json" => {
                include_str!(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/tests/fixtures/openrtb/pretty-odd-whitespace.json"
                ))
            }
            "unicode-numbers.json" => {
                include_str!(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/tests/fixtures/openrtb/unicode-numbers.json"
                ))
            }
            "user-ext-many.json" => include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/openrtb/user-ext-many.json"
            )),
            "euid.json" => include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/openrtb/euid.json"
            )),
            "no-token.json" => include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/openrtb/no-token.json"
            )),
            "no-user.json" => include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/openrtb/no-user.json"
            )),
            other => panic!("unknown fixture {other}"),
        };
        raw.replace("@@UID2_V4@@", UID2_V4)
            .replace("@@UID2_V2@@", UID2_V2)
            .replace("@@EUID_V4@@", EUID_V4)
    }

    const FIXTURES: &[&str] = &[
        "iab26-video.json",
        "iab26-simple-banner.json",
        "iab26-mobile-app.json",
        "prebid-server-25.json",
        "both-locations.json",
        "pretty-odd-whitespace.json",
        "unicode-numbers.json",
        "user-ext-many.json",
        "euid.json",
        "no-token.json",
        "no-user.json",
    ];

    type Tok = (String, usize, EidLocation);
    use EidLocation::{UserEids, UserExtEids};

    fn scan_ok(input: &str) -> Scan<'_> {
        scan(input.as_bytes(), SOURCES, M).unwrap_or_else(|e| panic!("scan failed: {e}\n{input}"))
    }

    fn toks(s: &Scan<'_>) -> Vec<Tok> {
        s.tokens
            .iter()
            .map(|t| (t.id.to_string(), t.source_index, t.location))
            .collect()
    }

    fn tok(id: &str, source_index: usize, location: EidLocation) -> Tok {
        (id.to_string(), source_index, location)
    }

    fn enrich(input: &str) -> Option<String> {
        let s = scan_ok(input);
        splice(input.as_bytes(), &s, M, J).map(|v| String::from_utf8(v).expect("utf-8 output"))
    }

    fn err(input: &[u8]) -> JsonError {
        match scan(input, SOURCES, M) {
            Ok(s) => panic!("expected an error, got {s:?}"),
            Err(e) => e,
        }
    }

    /// The contract's token list, computed the slow way from a serde_json DOM (last duplicate key wins there too).
    fn reference_tokens(v: &Value) -> Vec<Tok> {
        let mut out = Vec::new();
        let Some(user) = v.get("user").and_then(Value::as_object) else {
            return out;
        };
        let ext_eids = user
            .get("ext")
            .and_then(Value::as_object)
            .and_then(|e| e.get("eids"));
        for (location, eids) in [(UserEids, user.get("eids")), (UserExtEids, ext_eids)] {
            for eid in eids.and_then(Value::as_array).into_iter().flatten() {
                let Some(src) = eid.get("source").and_then(Value::as_str) else {
                    continue;
                };
                let Some(idx) = SOURCES.iter().position(|s| *s == src) else {
                    continue;
                };
                for uid in eid
                    .get("uids")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let Some(id) = uid.get("id").and_then(Value::as_str) {
                        out.push(tok(id, idx, location));
                    }
                }
            }
        }
        out
    }

    fn reference_str(v: &Value, obj: &str, key: &str) -> Option<String> {
        v.get(obj)?
            .as_object()?
            .get(key)?
            .as_str()
            .map(str::to_string)
    }

    /// Checks an enriched output against its input through serde_json: the member is there with the right
    /// value, and putting back what was there before gives the input's DOM.
    fn check_enriched(input: &str, out: &str) {
        let vin: Value = serde_json::from_str(input).expect("input parses");
        let mut vout: Value = serde_json::from_str(out).expect("output parses");
        let member: Value = serde_json::from_str(J).expect("member parses");
        let uin = vin["user"].as_object().expect("input has a user object");
        let uout = vout["user"]
            .as_object_mut()
            .expect("output has a user object");
        let ext = uout["ext"]
            .as_object_mut()
            .expect("output user.ext is an object");
        assert_eq!(ext.get(M), Some(&member), "user.ext.{M} in {out}");
        match uin.get("ext") {
            None => {
                assert_eq!(ext.len(), 1);
                uout.remove("ext");
            }
            Some(Value::Null) => {
                assert_eq!(ext.len(), 1);
                uout.insert("ext".into(), Value::Null);
            }
            Some(old_ext) => match old_ext.get(M) {
                Some(old) => {
                    ext.insert(M.into(), old.clone());
                }
                None => {
                    ext.remove(M);
                }
            },
        }
        assert_eq!(vin, vout, "only the member changed");
    }

    /// What `splice` should have inserted for an insertion target, written out independently.
    fn expected_insert(comma: bool, wrap_in_ext: bool) -> String {
        let member = format!("\"{M}\":{J}");
        let body = if wrap_in_ext {
            format!("\"ext\":{{{member}}}")
        } else {
            member
        };
        if comma { format!(",{body}") } else { body }
    }

    /// Removing what the splice added (or putting back what it replaced) gives the input byte for byte.
    fn check_removal(input: &str, s: &Scan<'_>, out: &str) {
        match s.target {
            Target::Insert {
                at,
                comma,
                wrap_in_ext,
            } => {
                let ins = expected_insert(comma, wrap_in_ext);
                assert_eq!(&out[at..at + ins.len()], ins);
                let back = format!("{}{}", &out[..at], &out[at + ins.len()..]);
                assert_eq!(back, input);
            }
            Target::Replace {
                start,
                end,
                wrap_in_object,
            } => {
                let new = if wrap_in_object {
                    format!("{{\"{M}\":{J}}}")
                } else {
                    J.to_string()
                };
                assert_eq!(&out[start..start + new.len()], new);
                let back = format!(
                    "{}{}{}",
                    &out[..start],
                    &input[start..end],
                    &out[start + new.len()..]
                );
                assert_eq!(back, input);
            }
            Target::NoUser | Target::ExtUnusable => panic!("no splice expected"),
        }
    }

    /// Every property at once for an input that can carry the member.
    fn check_all(input: &str) -> String {
        let s = scan_ok(input);
        let out = String::from_utf8(splice(input.as_bytes(), &s, M, J).expect("splice")).unwrap();
        check_removal(input, &s, &out);
        check_enriched(input, &out);
        let s2 = scan_ok(&out);
        assert_eq!(toks(&s2), toks(&s), "enriching does not change the tokens");
        assert!(s2.has_member());
        let twice = String::from_utf8(splice(out.as_bytes(), &s2, M, J).unwrap()).unwrap();
        assert_eq!(twice, out, "enriching twice == once");
        // `Scan` holds a `SmallVec`, whose drop (unlike `Vec`'s) may not outlive the input it borrows.
        drop(s2);
        out
    }

    /// `user.eids` tokens come first even when `ext` precedes `eids` in the user object.
    #[test]
    fn tokens_in_both_locations_user_eids_first() {
        let input = r#"{"user":{"ext":{"eids":[{"source":"uidapi.com","uids":[{"id":"B"}]}]},"eids":[{"source":"euid.eu","uids":[{"id":"A"},{"id":"A2"}]}]}}"#;
        let s = scan_ok(input);
        assert_eq!(
            toks(&s),
            vec![
                tok("A", 1, UserEids),
                tok("A2", 1, UserEids),
                tok("B", 0, UserExtEids)
            ]
        );
        check_all(input);
    }

    /// The same token repeated (in one array and across both arrays) is one entry per occurrence.
    #[test]
    fn duplicate_tokens_are_separate_entries() {
        let input = r#"{"user":{"eids":[{"source":"uidapi.com","uids":[{"id":"T"},{"id":"T"}]},{"source":"uidapi.com","uids":[{"id":"T"}]}],"ext":{"eids":[{"source":"uidapi.com","uids":[{"id":"T"}]}]}}}"#;
        let s = scan_ok(input);
        assert_eq!(
            toks(&s),
            vec![
                tok("T", 0, UserEids),
                tok("T", 0, UserEids),
                tok("T", 0, UserEids),
                tok("T", 0, UserExtEids)
            ]
        );
    }

    /// Ids are unescaped (`\/` → `/`); ids without escapes are borrowed, not allocated.
    #[test]
    fn escaped_slash_in_id_is_unescaped_plain_id_is_borrowed() {
        let input = r#"{"user":{"eids":[{"source":"uidapi.com","uids":[{"id":"AgAA\/x+y=="},{"id":"A4AA-_z"}]}]}}"#;
        let s = scan_ok(input);
        assert_eq!(s.tokens[0].id, "AgAA/x+y==");
        assert!(matches!(s.tokens[0].id, Cow::Owned(_)));
        assert_eq!(s.tokens[1].id, "A4AA-_z");
        assert!(matches!(s.tokens[1].id, Cow::Borrowed(_)));
    }

    /// Only configured sources count; the comparison is exact after unescaping.
    #[test]
    fn non_configured_sources_are_ignored() {
        let input = r#"{"user":{"eids":[
            {"source":"adserver.org","uids":[{"id":"tdid","atype":1,"ext":{"rtiPartner":"TDID"}}]},
            {"source":"UIDAPI.COM","uids":[{"id":"upper"}]},
            {"source":"uidapi.com ","uids":[{"id":"space"}]},
            {"source":"uidapi.co\u006d","uids":[{"id":"escaped-source"}]},
            {"source":"id5-sync.com","uids":[{"id":"id5"}]}]}}"#;
        assert_eq!(
            toks(&scan_ok(input)),
            vec![tok("escaped-source", 0, UserEids)]
        );
        assert!(scan_ok(input).has_user());
        assert!(
            scan(
                br#"{"user":{"eids":[{"source":"uidapi.com","uids":[{"id":"x"}]}]}}"#,
                &[],
                M
            )
            .unwrap()
            .tokens
            .is_empty()
        );
    }

    /// Type drift and garbage inside eids never fail the request: the odd entries are skipped.
    #[test]
    fn type_drift_is_tolerated() {
        let input = r#"{"user":{"eids":[1,"x",null,[],{},{"source":"uidapi.com"},
            {"source":"uidapi.com","uids":"nope"},{"source":"uidapi.com","uids":{"id":"obj"}},
            {"source":"uidapi.com","mm":"3","inserter":"pub.example","matcher":"uidapi.com","ext":{"a":[1]},
             "uids":[1,null,"s",[],{"id":7},{"id":null},{"id":{"x":"y"}},{"atype":"3"},
                     {"atype":"3","id":"T1","rtiPartner":"UID2","ext":{"rtiPartner":"UID2"}}]},
            {"source":7,"uids":[{"id":"bad-source-type"}]},{"source":null,"uids":[{"id":"null-source"}]}],
            "ext":{"eids":{"source":"uidapi.com"}}}}"#;
        let s = scan_ok(input);
        assert_eq!(toks(&s), vec![tok("T1", 0, UserEids)]);
        let v: Value = serde_json::from_str(input).unwrap();
        assert_eq!(toks(&s), reference_tokens(&v));
        check_all(input);
    }

    /// `uids` before `source` in an eid still yields the ids.
    #[test]
    fn uids_before_source() {
        let input = r#"{"user":{"eids":[{"uids":[{"id":"first"}],"atype":3,"source":"euid.eu"}]}}"#;
        assert_eq!(toks(&scan_ok(input)), vec![tok("first", 1, UserEids)]);
    }

    /// Tabs, CRLF and spaces before colons are read, and the member lands right after the last value.
    #[test]
    fn pretty_printed_odd_whitespace() {
        let input = "{\r\n\t\"user\" :\r\n\t{\r\n\t\t\"eids\" : [ { \"source\" : \"uidapi.com\" , \"uids\" : [ { \"id\" : \"T\" } ] } ] ,\r\n\t\t\"ext\"\t:\t{ \"gdpr\" : 1 }\t\r\n\t} , \"site\" : { \"domain\" :\t\"a.example\" }\r\n}\r\n";
        let s = scan_ok(input);
        assert_eq!(toks(&s), vec![tok("T", 0, UserEids)]);
        assert_eq!(s.domain_fields().site_domain.as_deref(), Some("a.example"));
        let out = check_all(input);
        assert_eq!(
            out,
            input.replace("\"gdpr\" : 1", &format!("\"gdpr\" : 1,\"{M}\":{J}"))
        );
    }

    /// An existing `user.ext` with many members gets the member after its last value, before the whitespace.
    #[test]
    fn splice_into_ext_with_many_members() {
        let input = r#"{"user":{"id":"u","ext":{"consent":"CPX","prebid":{"buyeruids":{"a":"1"}},"data":[1,2.50,"x"],"eids":[]}  },"at":1}"#;
        let out = check_all(input);
        assert_eq!(
            out,
            format!(
                r#"{{"user":{{"id":"u","ext":{{"consent":"CPX","prebid":{{"buyeruids":{{"a":"1"}}}},"data":[1,2.50,"x"],"eids":[],"{M}":{J}}}  }},"at":1}}"#
            )
        );
    }

    /// An empty ext (with or without whitespace inside) gets the member right after `{`, with no comma.
    #[test]
    fn splice_into_empty_ext() {
        assert_eq!(
            enrich(r#"{"user":{"ext":{}}}"#).unwrap(),
            format!(r#"{{"user":{{"ext":{{"{M}":{J}}}}}}}"#)
        );
        assert_eq!(
            enrich("{\"user\":{\"ext\":{ \n }}}").unwrap(),
            format!("{{\"user\":{{\"ext\":{{\"{M}\":{J} \n }}}}}}")
        );
        check_all(r#"{"user":{"ext":{}}}"#);
        check_all("{\"user\":{\"ext\":{ \r\n\t }}}");
    }

    /// `"ext": null` becomes `{"member": …}`; nothing else moves.
    #[test]
    fn splice_into_null_ext() {
        let input = r#"{"user":{"ext": null ,"id":"x"}}"#;
        assert_eq!(
            enrich(input).unwrap(),
            format!(r#"{{"user":{{"ext": {{"{M}":{J}}} ,"id":"x"}}}}"#)
        );
        check_all(input);
    }

    /// An ext that is neither object nor null cannot carry the member: splice gives None.
    #[test]
    fn splice_into_non_object_ext_is_none() {
        for ext in [r#""str""#, "42", "[]", "true", r#"[{"a":1}]"#] {
            let input = format!(
                r#"{{"user":{{"eids":[{{"source":"uidapi.com","uids":[{{"id":"T"}}]}}],"ext":{ext}}}}}"#
            );
            let s = scan_ok(&input);
            assert_eq!(toks(&s), vec![tok("T", 0, UserEids)], "{input}");
            assert!(s.has_user() && !s.can_splice());
            assert_eq!(splice(input.as_bytes(), &s, M, J), None);
        }
    }

    /// No `user`, or a `user` that is not an object: no splice, no tokens.
    #[test]
    fn no_user_or_non_object_user() {
        for input in [
            r#"{"id":"1","imp":[{"id":"1"}]}"#,
            r#"{}"#,
            r#"{"user":null}"#,
            r#"{"user":"u"}"#,
            r#"{"user":[{"eids":[{"source":"uidapi.com","uids":[{"id":"T"}]}]}]}"#,
            r#"{"site":{"user":{"eids":[{"source":"uidapi.com","uids":[{"id":"nested"}]}]}}}"#,
        ] {
            let s = scan_ok(input);
            assert!(s.tokens.is_empty(), "{input}");
            assert!(!s.has_user() && !s.can_splice());
            assert_eq!(splice(input.as_bytes(), &s, M, J), None);
        }
    }

    /// A user without ext gets `"ext":{…}` after its last member, or right after `{` when empty.
    #[test]
    fn splice_creates_ext() {
        assert_eq!(
            enrich(r#"{"user":{"id":"x" } }"#).unwrap(),
            format!(r#"{{"user":{{"id":"x","ext":{{"{M}":{J}}} }} }}"#)
        );
        assert_eq!(
            enrich(r#"{"user":{}}"#).unwrap(),
            format!(r#"{{"user":{{"ext":{{"{M}":{J}}}}}}}"#)
        );
        assert_eq!(
            enrich("{\"user\":{\n}}").unwrap(),
            format!("{{\"user\":{{\"ext\":{{\"{M}\":{J}}}\n}}}}")
        );
        check_all(r#"{"user":{"id":"x" } }"#);
        check_all(r#"{"user":{}}"#);
    }

    /// An existing member's value is replaced (the last one if duplicated); enriching twice equals once.
    #[test]
    fn existing_member_is_replaced() {
        let input = format!(r#"{{"user":{{"ext":{{"{M}":{{"status":"old"}} ,"x":1}}}}}}"#);
        let s = scan_ok(&input);
        assert!(s.has_member());
        assert_eq!(
            enrich(&input).unwrap(),
            format!(r#"{{"user":{{"ext":{{"{M}":{J} ,"x":1}}}}}}"#)
        );
        let dup = format!(r#"{{"user":{{"ext":{{"{M}":1,"x":2,"{M}":"last"}}}}}}"#);
        assert_eq!(
            enrich(&dup).unwrap(),
            format!(r#"{{"user":{{"ext":{{"{M}":1,"x":2,"{M}":{J}}}}}}}"#)
        );
        check_all(&input);
        check_all(&dup);
    }

    /// Duplicate keys: the last `user`, `ext`, `eids`, `source` and `id` win, as in serde_json.
    #[test]
    fn duplicate_keys_last_wins() {
        let eid = |id: &str| format!(r#"{{"source":"uidapi.com","uids":[{{"id":"{id}"}}]}}"#);
        let cases = [
            (
                format!(r#"{{"user":{{"eids":[{}]}},"id":"1","user":{{"eids":[{}]}}}}"#, eid("A"), eid("B")),
                vec![tok("B", 0, UserEids)],
            ),
            (
                format!(
                    r#"{{"user":{{"ext":{{"eids":[{}]}},"id":"u","ext":{{"eids":[{}],"k":1}}}}}}"#,
                    eid("A"),
                    eid("B")
                ),
                vec![tok("B", 0, UserExtEids)],
            ),
            (
                format!(r#"{{"user":{{"eids":[{}],"eids":[{}]}}}}"#, eid("A"), eid("B")),
                vec![tok("B", 0, UserEids)],
            ),
            (
                format!(r#"{{"user":{{"eids":[{}],"eids":"gone"}}}}"#, eid("A")),
                vec![],
            ),
            (
                format!(r#"{{"user":{{"ext":{{"eids":[{}]}},"ext":{{"k":1}}}}}}"#, eid("A")),
                vec![],
            ),
            (
                r#"{"user":{"eids":[{"source":"uidapi.com","uids":[{"id":"A"}],"source":"adserver.org"}]}}"#.into(),
                vec![],
            ),
            (
                r#"{"user":{"eids":[{"source":"adserver.org","uids":[{"id":"A"}],"source":"euid.eu"}]}}"#.into(),
                vec![tok("A", 1, UserEids)],
            ),
            (
                r#"{"user":{"eids":[{"source":"uidapi.com","uids":[{"id":"A","id":"B"},{"id":"C","id":5}]}]}}"#.into(),
                vec![tok("B", 0, UserEids)],
            ),
            (
                r#"{"user":{"eids":[{"source":"uidapi.com","uids":[{"id":"A"}],"uids":[{"id":"B"}]}]}}"#.into(),
                vec![tok("B", 0, UserEids)],
            ),
        ];
        for (input, expected) in cases {
            let s = scan_ok(&input);
            assert_eq!(toks(&s), expected, "{input}");
            let v: Value = serde_json::from_str(&input).unwrap();
            assert_eq!(toks(&s), reference_tokens(&v), "{input}");
            check_all(&input);
        }
        // The splice goes into the last ext; an earlier one is left alone.
        let input = r#"{"user":{"ext":{"a":1},"ext":{"b":2}}}"#;
        assert_eq!(
            enrich(input).unwrap(),
            format!(r#"{{"user":{{"ext":{{"a":1}},"ext":{{"b":2,"{M}":{J}}}}}}}"#)
        );
        // A last `null` ext is the one replaced.
        let input = r#"{"user":{"ext":{"a":1},"ext":null}}"#;
        assert_eq!(
            enrich(input).unwrap(),
            format!(r#"{{"user":{{"ext":{{"a":1}},"ext":{{"{M}":{J}}}}}}}"#)
        );
        // A last non-object user hides an earlier one.
        let input = format!(r#"{{"user":{{"eids":[{}]}},"user":null}}"#, eid("A"));
        let s = scan_ok(&input);
        assert!(s.tokens.is_empty() && !s.has_user());
    }

    /// Keys are compared after unescaping, including the member name.
    #[test]
    fn escaped_keys_are_unescaped() {
        let input = r#"{"us\u0065r":{"\u0065ids":[{"sour\u0063e":"uidapi.com","uids":[{"\u0069d":"T"}]}],"e\u0078t":{"uid2\u005fenrichment":1}},"\u0073ite":{"dom\u0061in":"d.example"}}"#;
        let s = scan_ok(input);
        assert_eq!(toks(&s), vec![tok("T", 0, UserEids)]);
        assert_eq!(s.domain_fields().site_domain.as_deref(), Some("d.example"));
        assert!(s.has_member());
        assert_eq!(
            enrich(input).unwrap(),
            input.replace(
                r#"\u005fenrichment":1"#,
                &format!(r#"\u005fenrichment":{J}"#)
            )
        );
    }

    /// `site` and `app` are skipped by the scan: what is malformed only inside them does not stop the
    /// request; their members are then read as absent.
    #[test]
    fn malformed_site_or_app_members_read_as_absent() {
        for input in [
            r#"{"site":{"domain":"\q"},"app":{"bundle":"b"x}}"#,
            r#"{"site":{"domain" "a.example"},"app":{"bundle":,"x":1}}"#,
            r#"{"site":{"page":"https://a.example/","domain":"a.example",},"app":{1:2}}"#,
        ] {
            let s = scan_ok(input);
            assert_eq!(s.domain_fields(), DomainFields::default(), "{input}");
            assert!(validate_strict(input.as_bytes()).is_err(), "{input}");
        }
        // Still checked while skipped: strings terminated, brackets balanced.
        assert_eq!(err(br#"{"site":{"domain":"a}"#), JsonError::Truncated);
        assert!(matches!(
            err(br#"{"site":{"domain":["a"}}"#),
            JsonError::Malformed { .. }
        ));
    }

    /// `site.domain`, `site.page`, `app.bundle` are read when they are strings, unescaped, last wins.
    #[test]
    fn site_and_app_fields() {
        let s = scan_ok(
            r#"{"site":{"domain":"old.example"},"site":{"page":"https:\/\/www.caf\u00e9.fr\/x","domain":"www.example.com","publisher":{"domain":"pub.example"}},"app":{"bundle":"com.example.app","storeurl":"x"}}"#,
        );
        assert_eq!(
            s.domain_fields().site_domain.as_deref(),
            Some("www.example.com")
        );
        assert_eq!(
            s.domain_fields().site_page.as_deref(),
            Some("https://www.café.fr/x")
        );
        assert_eq!(
            s.domain_fields().app_bundle.as_deref(),
            Some("com.example.app")
        );
        let s = scan_ok(r#"{"site":{"domain":5,"page":null},"app":"x"}"#);
        assert_eq!(
            (
                s.domain_fields().site_domain.as_deref(),
                s.domain_fields().site_page.as_deref(),
                s.domain_fields().app_bundle.as_deref()
            ),
            (None, None, None)
        );
        let s = scan_ok(r#"{"site":{"domain":"a.example","domain":["b"]}}"#);
        assert_eq!(s.domain_fields().site_domain.as_deref(), None);
        let s = scan_ok(
            r#"{"imp":[{"site":{"domain":"nested.example"}}],"app":{"publisher":{"bundle":"n"}}}"#,
        );
        assert_eq!(
            (
                s.domain_fields().site_domain.as_deref(),
                s.domain_fields().app_bundle.as_deref()
            ),
            (None, None)
        );
    }

    /// Runs `f` on a thread with a small stack: nothing here may recurse per nesting level.
    fn on_small_stack(f: impl FnOnce() + Send + 'static) {
        std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(f)
            .unwrap()
            .join()
            .unwrap();
    }

    /// 10,000-deep nesting, closed or not, anywhere, is an error (`TooDeep`), never a stack overflow.
    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        on_small_stack(|| {
            let n = 10_000;
            let arrays = format!("{}{}", "[".repeat(n), "]".repeat(n));
            let objects = format!("{}1{}", r#"{"a":"#.repeat(n), "}".repeat(n));
            for inner in [
                arrays.as_str(),
                objects.as_str(),
                &"[".repeat(n),
                &r#"{"a":"#.repeat(n),
            ] {
                for wrap in [
                    "{\"imp\":@}",
                    "{\"user\":@}",
                    "{\"user\":{\"ext\":@}}",
                    "{\"user\":{\"ext\":{\"x\":@}}}",
                    "{\"user\":{\"eids\":[@]}}",
                    "{\"user\":{\"eids\":[{\"source\":\"uidapi.com\",\"uids\":[{\"id\":@}]}]}}",
                    "{\"site\":{\"domain\":@}}",
                    "{\"x\":@",
                ] {
                    let input = wrap.replace('@', inner);
                    assert_eq!(err(input.as_bytes()), JsonError::TooDeep, "{}", &wrap);
                }
            }
        });
    }

    /// The limit counts every container, the top-level object included.
    #[test]
    fn depth_limit_is_exact() {
        let ok = format!(
            "{{\"x\":{}{}}}",
            "[".repeat(MAX_DEPTH - 1),
            "]".repeat(MAX_DEPTH - 1)
        );
        assert!(scan(ok.as_bytes(), SOURCES, M).is_ok());
        let deep = format!(
            "{{\"x\":{}{}}}",
            "[".repeat(MAX_DEPTH),
            "]".repeat(MAX_DEPTH)
        );
        assert_eq!(err(deep.as_bytes()), JsonError::TooDeep);
    }

    /// Bracket types are checked past the 64 levels held in a register too.
    #[test]
    fn deep_bracket_types_are_checked() {
        let wrong = format!("{{\"x\":{}}}}}", "[".repeat(100));
        assert!(matches!(
            err(wrong.as_bytes()),
            JsonError::Malformed {
                reason: "mismatched bracket",
                ..
            }
        ));
        // 1 + 2 × 200 levels: inside the limit, and far past the register-held 64.
        let n = 200;
        let mixed = format!("{{\"x\":{}1{}}}", r#"{"a":["#.repeat(n), "]}".repeat(n));
        assert!(scan(mixed.as_bytes(), SOURCES, M).is_ok());
        let swapped = mixed.replacen("]}", "}]", 1);
        assert!(matches!(
            err(swapped.as_bytes()),
            JsonError::Malformed { .. }
        ));
    }

    /// Byte-at-a-time meaning of the block skipper: a backslash not itself escaped escapes the next byte;
    /// unescaped quotes open and close strings; brackets outside strings nest and must match.
    fn reference_skip(bytes: &[u8], depth: usize) -> Result<usize, JsonError> {
        let mut stack = Vec::new();
        let (mut in_string, mut escape_next) = (false, false);
        for (i, &b) in bytes.iter().enumerate() {
            let escaped = std::mem::take(&mut escape_next);
            if b == b'\\' && !escaped {
                escape_next = true;
            }
            if b == b'"' && !escaped {
                in_string = !in_string;
            } else if !in_string && matches!(b, b'{' | b'[') {
                if depth + stack.len() >= MAX_DEPTH {
                    return Err(JsonError::TooDeep);
                }
                stack.push(b == b'{');
            } else if !in_string && matches!(b, b'}' | b']') {
                if stack.pop() != Some(b == b'}') {
                    return Err(JsonError::Malformed {
                        offset: i,
                        reason: "mismatched bracket",
                    });
                }
                if stack.is_empty() {
                    return Ok(i + 1);
                }
            }
        }
        Err(JsonError::Truncated)
    }

    /// The skipper through the cursor (AVX2 where the CPU has it), after checking that every classifier
    /// this CPU can run gives the same answer.
    fn block_skip(input: &[u8], depth: usize) -> Result<usize, JsonError> {
        let mut cur = Cursor {
            bytes: input,
            pos: 0,
        };
        let result = cur.skip_container(depth).map(|()| cur.pos);
        assert_eq!(
            skip_blocks(BaselineClassifier, input, 0, depth),
            result,
            "baseline classifier"
        );
        #[cfg(target_arch = "x86_64")]
        if let Some(avx2) = avx2::Avx2::detect() {
            assert_eq!(avx2.skip_blocks(input, 0, depth), result, "AVX2");
        }
        result
    }

    /// Skipping past the register's 63 levels and back, with the way down checked on both sides of the
    /// boundary and across blocks, and a mismatch found after coming back into the register.
    #[test]
    fn register_and_deep_skipping_agree() {
        for levels in [62, 63, 64, 65, 127, 128, 200] {
            let opens: String = (0..levels)
                .map(|k| if k % 3 == 0 { '[' } else { '{' })
                .collect();
            let closes: String = opens
                .chars()
                .rev()
                .map(|c| if c == '[' { ']' } else { '}' })
                .collect();
            for filler in ["", " ", "\"a\\\"]\"", &" ".repeat(70)] {
                let ok = format!("{opens}{filler}{closes}");
                assert_eq!(
                    block_skip(ok.as_bytes(), 0),
                    Ok(ok.len()),
                    "{levels} {filler:?}"
                );
                assert_eq!(reference_skip(ok.as_bytes(), 0), Ok(ok.len()));
                // Swap the types of the outermost pair: found only after the walk is back down.
                let swapped = if ok.ends_with(']') { "}" } else { "]" };
                let bad = format!("{}{swapped}", &ok[..ok.len() - 1]);
                assert_eq!(
                    block_skip(bad.as_bytes(), 0),
                    reference_skip(bad.as_bytes(), 0)
                );
                assert!(block_skip(bad.as_bytes(), 0).is_err());
            }
        }
    }

    #[test]
    fn utf8_check_matches_std() {
        let emoji = "\u{1F600}".repeat(40);
        let cases: &[&[u8]] = &[
            b"",
            b"{}",
            "{\"a\":\"\u{e9}\"}".as_bytes(),
            b"{\"a\":\"\xff\"}",
            &[b' '; 200],
            &[0x80],
            emoji.as_bytes(),
        ];
        for bytes in cases {
            assert_eq!(
                is_utf8(bytes),
                std::str::from_utf8(bytes).is_ok(),
                "{bytes:?}"
            );
        }
        let mut long = vec![b'a'; 300];
        for at in [0, 63, 64, 127, 255, 299] {
            long[at] = 0xc3;
            assert!(!is_utf8(&long), "{at}");
            long[at] = b'a';
        }
        assert!(is_utf8(&long));
    }

    /// Every prefix of a request, cut anywhere before its closing brace, is an error (and never a panic).
    #[test]
    fn truncated_prefixes_are_errors() {
        let mut samples: Vec<String> = FIXTURES.iter().map(|f| fixture(f)).collect();
        samples.push(format!(
            r#"{{"user":{{"id":"\u00e9\/\"","eids":[{{"source":"uidapi.com","uids":[{{"id":"A\/B","atype":3}}]}}],"ext":{{"{M}":{J},"n":-1.5e-3,"t":true,"f":false,"z":null}}}}}}"#
        ));
        for sample in &samples {
            let bytes = sample.as_bytes();
            let close = sample.rfind('}').unwrap();
            for n in 0..=close {
                let prefix = &bytes[..n];
                let e = err(prefix);
                let expected = if std::str::from_utf8(prefix).is_err() {
                    JsonError::NotUtf8
                } else if prefix.trim_ascii().is_empty() {
                    JsonError::NotAnObject
                } else {
                    JsonError::Truncated
                };
                assert_eq!(e, expected, "prefix {n} of {sample}");
                assert!(validate_strict(prefix).is_err());
            }
            assert!(scan(&bytes[..close + 1], SOURCES, M).is_ok());
        }
    }

    /// Structure errors the fast path sees are `Malformed` (or the specific kind), with a reason string.
    #[test]
    fn malformed_inputs() {
        let malformed = [
            r#"{"a":1,}"#,
            r#"{"a" 1}"#,
            r#"{"a":1 "b":2}"#,
            r#"{"a":[1,2}"#,
            r#"{"a":{]}"#,
            r#"{"a":[1,2]]}"#,
            r#"{"a":tru}"#,
            r#"{"a":nul,"b":1}"#,
            r#"{"a":}"#,
            r#"{"a":]"#,
            r#"{"a":1]"#,
            r#"{a:1}"#,
            r#"{"a":1}}"#,
            r#"{"a":1} x"#,
            r#"{"a":1}{}"#,
            r#"{"user":{"eids":[1,]}}"#,
            r#"{"user":{"eids":[{"source":"uidapi.com","uids":[{"id":"\ud800"}]}]}}"#,
            r#"{"user":{"eids":[{"source":"uidapi.com","uids":[{"id":"\udc00\ud800"}]}]}}"#,
            r#"{"user":{"eids":[{"source":"uidapi.com","uids":[{"id":"\x"}]}]}}"#,
            r#"{"user":{"eids":[{"source":"uidapi.com","uids":[{"id":"\u12"}]}]}}"#,
            r#"{"user":{"eids":[{"source":"uidapi.com","uids":[{"id" "x"}]}]}}"#,
            r#"{"us\er":1}"#,
        ];
        for input in malformed {
            let e = err(input.as_bytes());
            assert!(matches!(e, JsonError::Malformed { .. }), "{input}: {e:?}");
            assert_eq!(e.reason(), "malformed_json");
            // serde_json ignores values without checking surrogate pairs; every other case it rejects too.
            if !input.contains("\\ud") && !input.contains("\\udc") {
                assert!(validate_strict(input.as_bytes()).is_err(), "{input}");
            }
        }
        for input in ["", "  \n", "[1]", r#""x""#, "null", "1", "\u{feff}{}"] {
            assert_eq!(err(input.as_bytes()), JsonError::NotAnObject, "{input:?}");
        }
        assert_eq!(JsonError::NotAnObject.reason(), "not_a_json_object");
        assert_eq!(err(b"{\"a\":\"\xff\"}"), JsonError::NotUtf8);
        assert_eq!(JsonError::NotUtf8.reason(), "not_utf8");
        assert_eq!(err(br#"{"a":"unterminated"#), JsonError::Truncated);
        assert_eq!(err(br#"{"a":"ends in backslash\"#), JsonError::Truncated);
        assert_eq!(JsonError::Truncated.reason(), "truncated_json");
        assert_eq!(JsonError::TooDeep.reason(), "nesting_too_deep");
        assert_eq!(
            err(br#"{"a":[1,2}"#),
            JsonError::Malformed {
                offset: 9,
                reason: "mismatched bracket"
            }
        );
        // Surrogate pairs are fine.
        let s = scan_ok(
            r#"{"user":{"eids":[{"source":"uidapi.com","uids":[{"id":"\ud83d\ude00"}]}]}}"#,
        );
        assert_eq!(s.tokens[0].id, "😀");
    }

    /// Inside skipped values the fast path only matches brackets and strings; `validate_strict` catches the rest.
    #[test]
    fn skipped_regions_are_not_grammar_checked_but_strict_mode_is() {
        let input = br#"{"imp":[1 2,,{"a" "b"},- ,"\q"],"user":{"id":"x"}}"#;
        assert!(scan(input, SOURCES, M).is_ok());
        assert!(matches!(
            validate_strict(input),
            Err(JsonError::Malformed { .. })
        ));
        assert_eq!(validate_strict(b"[1]"), Err(JsonError::NotAnObject));
        assert_eq!(
            validate_strict(b"{\"a\":\"\xff\"}"),
            Err(JsonError::NotUtf8)
        );
        assert_eq!(validate_strict(br#"{"a":[1,"#), Err(JsonError::Truncated));
        assert_eq!(
            validate_strict(b"{\"a\":1,\n \"b\" 2}"),
            Err(JsonError::Malformed {
                offset: 13,
                reason: "invalid JSON (strict validation)"
            })
        );
        for f in FIXTURES {
            assert_eq!(validate_strict(fixture(f).as_bytes()), Ok(()), "{f}");
        }
    }

    /// Megabyte strings and tokens scan fine and stay borrowed; a megabyte of unterminated string is `Truncated`.
    #[test]
    fn megabyte_payloads() {
        let big = "x".repeat(1 << 20);
        let token = "A".repeat(1 << 20);
        let input = format!(
            r#"{{"imp":[{{"adm":"{big}"}}],"user":{{"eids":[{{"source":"uidapi.com","uids":[{{"id":"{token}"}}]}}]}}}}"#
        );
        let s = scan_ok(&input);
        assert_eq!(s.tokens.len(), 1);
        assert!(matches!(&s.tokens[0].id, Cow::Borrowed(t) if t.len() == 1 << 20));
        check_all(&input);
        assert_eq!(
            err(format!(r#"{{"imp":"{big}"#).as_bytes()),
            JsonError::Truncated
        );
        assert_eq!(
            err(format!(r#"{{"user":{{"id":"{big}"#).as_bytes()),
            JsonError::Truncated
        );
        assert_eq!(err("[".repeat(1 << 20).as_bytes()), JsonError::NotAnObject);
        assert_eq!(
            err(format!("{{\"a\":{}", "[".repeat(1 << 20)).as_bytes()),
            JsonError::TooDeep
        );
    }

    /// Each fixture: what it should yield, cross-checked with serde_json, and every splice property.
    #[test]
    fn fixtures() {
        let expectations: &[(&str, Option<&str>, Option<&str>, bool)] = &[
            ("iab26-video.json", Some("siteabcd.com"), None, true),
            (
                "iab26-simple-banner.json",
                Some("www.foobar.com"),
                None,
                true,
            ),
            ("iab26-mobile-app.json", None, Some("628677149"), true),
            (
                "prebid-server-25.json",
                Some("www.recipes-example.com"),
                None,
                true,
            ),
            (
                "both-locations.json",
                Some("news.example.co.uk"),
                None,
                true,
            ),
            (
                "pretty-odd-whitespace.json",
                Some("m.weather-example.com"),
                None,
                true,
            ),
            (
                "unicode-numbers.json",
                Some("www.café-example.fr"),
                None,
                true,
            ),
            ("user-ext-many.json", Some("video.example.com"), None, true),
            ("euid.json", Some("www.journal-example.fr"), None, true),
            ("no-token.json", Some("www.sports-example.com"), None, true),
            ("no-user.json", Some("blog.example.org"), None, false),
        ];
        let expected_tokens = |name: &str| -> Vec<Tok> {
            match name {
                "iab26-video.json" | "iab26-mobile-app.json" | "pretty-odd-whitespace.json" => {
                    vec![tok(UID2_V4, 0, UserEids)]
                }
                "unicode-numbers.json" => vec![tok(UID2_V4, 0, UserEids)],
                "iab26-simple-banner.json" => vec![tok(UID2_V2, 0, UserEids)],
                "prebid-server-25.json" | "user-ext-many.json" => {
                    vec![tok(UID2_V4, 0, UserExtEids)]
                }
                "both-locations.json" => vec![
                    tok(UID2_V4, 0, UserEids),
                    tok(UID2_V4, 0, UserExtEids),
                    tok(EUID_V4, 1, UserExtEids),
                ],
                "euid.json" => vec![tok(EUID_V4, 1, UserEids)],
                _ => vec![],
            }
        };
        assert_eq!(expectations.len(), FIXTURES.len());
        for &(name, domain, bundle, splices) in expectations {
            let input = fixture(name);
            let v: Value = serde_json::from_str(&input).unwrap_or_else(|e| panic!("{name}: {e}"));
            let s = scan_ok(&input);
            assert_eq!(toks(&s), expected_tokens(name), "{name}");
            assert_eq!(toks(&s), reference_tokens(&v), "{name}");
            assert_eq!(s.domain_fields().site_domain.as_deref(), domain, "{name}");
            assert_eq!(
                s.domain_fields().site_page.as_deref().map(str::to_string),
                reference_str(&v, "site", "page")
            );
            assert_eq!(s.domain_fields().app_bundle.as_deref(), bundle, "{name}");
            assert_eq!(s.can_splice(), splices, "{name}");
            if splices {
                check_all(&input);
            }
        }
        let uni = fixture("unicode-numbers.json");
        let s = scan_ok(&uni);
        assert_eq!(
            s.domain_fields().site_page.as_deref(),
            Some("https://www.café-example.fr/recettes/crêpe?x=1&y=€")
        );
        // The misspelled `apis` and every other byte outside the insertion survive.
        let video = fixture("iab26-video.json");
        let out = enrich(&video).unwrap();
        assert!(out.contains("\"apis\": [\n          1,\n          2\n        ]"));
        // Numbers keep their spelling.
        let out = enrich(&uni).unwrap();
        for spelling in [
            "1.50",
            "12345678901234567890",
            "1e-3",
            "2.5E+2",
            "-0.0",
            "1.0e2",
            "\\u00e9",
            "\\/",
        ] {
            assert_eq!(
                out.matches(spelling).count(),
                uni.matches(spelling).count(),
                "{spelling}"
            );
        }
    }

    /// The odd-whitespace fixture really holds CRLF, tabs and spaces before colons (an editor could strip them).
    #[test]
    fn odd_whitespace_fixture_has_crlf_and_tabs() {
        let f = fixture("pretty-odd-whitespace.json");
        assert!(f.contains("\r\n\t") && f.contains(" : ") && f.contains("\"\t:\t"));
    }

    // ----- property tests -----

    /// A generated request, rendered twice with the same whitespace: as input, and as the expected output.
    #[derive(Debug, Clone)]
    enum GUid {
        Id {
            raw: String,
            val: String,
            atype_str: bool,
            extra: bool,
            id_last: bool,
        },
        NoId,
        IdNotString(&'static str),
        NotObject(&'static str),
    }

    #[derive(Debug, Clone)]
    struct GEid {
        source: Option<(&'static str, Option<usize>)>,
        uids: Result<Vec<GUid>, &'static str>,
        uids_first: bool,
        extras: bool,
    }

    #[derive(Debug, Clone)]
    enum GItem {
        Eid(GEid),
        NotObject(&'static str),
    }

    type GEids = Option<(prop::sample::Index, Result<Vec<GItem>, &'static str>)>;

    #[derive(Debug, Clone)]
    enum GExt {
        Absent,
        Null,
        Other(&'static str),
        Object {
            members: Vec<(&'static str, &'static str)>,
            eids: GEids,
            existing: Option<(prop::sample::Index, &'static str)>,
        },
    }

    #[derive(Debug, Clone)]
    enum GUser {
        Absent,
        NotObject(&'static str),
        Object {
            members: Vec<(&'static str, &'static str)>,
            eids: GEids,
            ext: GExt,
            ext_pos: prop::sample::Index,
        },
    }

    #[derive(Debug, Clone)]
    struct GReq {
        members: Vec<(&'static str, &'static str)>,
        user: GUser,
        user_pos: prop::sample::Index,
        ws: Vec<&'static str>,
    }

    const TOP_POOL: &[(&str, &str)] = &[
        (r#""id""#, r#""req-\u00e9\/1""#),
        (r#""at""#, "1"),
        (r#""tmax""#, "1e2"),
        (
            r#""imp""#,
            r#"[{"id":"1","bidfloor":1.50,"banner":{"w":300,"h":250},"apis":[1,2]}]"#,
        ),
        (
            r#""site""#,
            r#"{"domain":"example.com","page":"https:\/\/example.com\/a","user":{"eids":[{"source":"uidapi.com","uids":[{"id":"NOT-TOP-LEVEL"}]}]}}"#,
        ),
        (
            r#""device""#,
            r#"{"ua":"Mozilla/5.0 (iPhone; CPU iPhone OS 18_3_2 like Mac OS X)","geo":{"lat":1e-3,"lon":-0.5}}"#,
        ),
        (
            r#""regs""#,
            r#"{"gpp":"DBABLA~BVQqAAAAAgA.QA","gpp_sid":[7]}"#,
        ),
        (
            r#""ext""#,
            r#"{"big":123456789012345678901,"user":{"ext":null}}"#,
        ),
        (
            r#""source""#,
            r#"{"ext":{"schain":{"ver":"1.0","complete":1,"nodes":[]}}}"#,
        ),
    ];
    const USER_POOL: &[(&str, &str)] = &[
        (r#""id""#, r#""u-1""#),
        (r#""buyeruid""#, r#""b\/1""#),
        (r#""yob""#, "1980"),
        (r#""data""#, r#"[{"id":"6","segment":[{"id":"1"}]}]"#),
        (
            r#""consent""#,
            r#""CPXxRfAPXxRfAAfKABENB-CgAAAAAAAAAAYgAAAAAAAA""#,
        ),
    ];
    const EXT_POOL: &[(&str, &str)] = &[
        (
            r#""consent""#,
            r#""CPXxRfAPXxRfAAfKABENB-CgAAAAAAAAAAYgAAAAAAAA""#,
        ),
        (r#""gdpr""#, "1"),
        (r#""prebid""#, r#"{"buyeruids":{"appnexus":"123"}}"#),
        (r#""data""#, r#"[{"id":"1","segment":[{"id":"s"}]}]"#),
        (r#""n""#, "1.50"),
        (r#""esc""#, r#""caf\u00e9 \/""#),
    ];

    fn g_uid() -> impl Strategy<Value = GUid> {
        let escapes = prop::sample::select(vec![
            ("", ""),
            ("\\/", "/"),
            ("\\u0041", "A"),
            ("\\\\", "\\"),
            ("\\u00e9", "é"),
            ("\\ud83d\\ude00", "😀"),
            ("\\\"", "\""),
        ]);
        prop_oneof![
            6 => ("[A-Za-z0-9_+=-]{0,24}", escapes, "[A-Za-z0-9_-]{0,24}", any::<bool>(), any::<bool>(), any::<bool>())
                .prop_map(|(a, (er, ev), b, atype_str, extra, id_last)| GUid::Id {
                    raw: format!("\"{a}{er}{b}\""),
                    val: format!("{a}{ev}{b}"),
                    atype_str,
                    extra,
                    id_last,
                }),
            1 => Just(GUid::NoId),
            1 => prop::sample::select(vec!["7", "null", r#"{"a":"b"}"#, r#"["x"]"#, "true"]).prop_map(GUid::IdNotString),
            1 => prop::sample::select(vec!["1", r#""x""#, "null", "[]"]).prop_map(GUid::NotObject),
        ]
    }

    fn g_items() -> impl Strategy<Value = Vec<GItem>> {
        let source = prop::option::weighted(
            0.9,
            prop_oneof![
                3 => prop::sample::select(vec![
                    (r#""uidapi.com""#, Some(0)),
                    (r#""euid.eu""#, Some(1)),
                    (r#""uidapi.co\u006d""#, Some(0)),
                ]),
                1 => prop::sample::select(vec![
                    (r#""adserver.org""#, None),
                    (r#""id5-sync.com""#, None),
                    (r#""UIDAPI.COM""#, None),
                    ("7", None),
                    ("null", None),
                ]),
            ],
        );
        let uids = prop_oneof![
            4 => prop::collection::vec(g_uid(), 0..4).prop_map(Ok),
            1 => prop::sample::select(vec![r#""x""#, "{}", "null", "3"]).prop_map(Err),
        ];
        let eid = (source, uids, any::<bool>(), any::<bool>()).prop_map(
            |(source, uids, uids_first, extras)| {
                GItem::Eid(GEid {
                    source,
                    uids,
                    uids_first,
                    extras,
                })
            },
        );
        prop::collection::vec(
            prop_oneof![
                5 => eid,
                1 => prop::sample::select(vec!["1", r#""x""#, "null", "[]", "{}"]).prop_map(GItem::NotObject),
            ],
            0..4,
        )
    }

    fn g_eids() -> impl Strategy<Value = GEids> {
        prop::option::weighted(
            0.8,
            (
                any::<prop::sample::Index>(),
                prop_oneof![
                    5 => g_items().prop_map(Ok),
                    1 => prop::sample::select(vec!["{}", r#""x""#, "null"]).prop_map(Err),
                ],
            ),
        )
    }

    fn shuffled(
        pool: &'static [(&'static str, &'static str)],
    ) -> impl Strategy<Value = Vec<(&'static str, &'static str)>> {
        prop::sample::subsequence(pool.to_vec(), 0..=pool.len()).prop_shuffle()
    }

    fn g_ext() -> impl Strategy<Value = GExt> {
        let old = prop::sample::select(vec![
            r#"{"status":"expired_token","tokens":1}"#,
            "null",
            r#""garbage""#,
            r#"{ "status" : "success" , "raw_uid2" : "x" }"#,
            "[1,2]",
        ]);
        prop_oneof![
            2 => Just(GExt::Absent),
            1 => Just(GExt::Null),
            1 => prop::sample::select(vec![r#""str""#, "42", "[]", "true"]).prop_map(GExt::Other),
            4 => (shuffled(EXT_POOL), g_eids(), prop::option::of((any::<prop::sample::Index>(), old)))
                .prop_map(|(members, eids, existing)| GExt::Object { members, eids, existing }),
        ]
    }

    fn g_req() -> impl Strategy<Value = GReq> {
        let user = prop_oneof![
            1 => Just(GUser::Absent),
            1 => prop::sample::select(vec!["null", r#""u""#, "[]", "7"]).prop_map(GUser::NotObject),
            6 => (shuffled(USER_POOL), g_eids(), g_ext(), any::<prop::sample::Index>())
                .prop_map(|(members, eids, ext, ext_pos)| GUser::Object { members, eids, ext, ext_pos }),
        ];
        let ws = prop::collection::vec(
            prop::sample::select(vec!["", " ", "\n  ", "\t", "\r\n\t", "  \r\n  ", "\n"]),
            1..12,
        );
        (shuffled(TOP_POOL), user, any::<prop::sample::Index>(), ws).prop_map(
            |(members, user, user_pos, ws)| GReq {
                members,
                user,
                user_pos,
                ws,
            },
        )
    }

    /// Renders JSON text, drawing whitespace from a fixed cycle so the input and expected renderings line up.
    struct Render<'w> {
        ws: &'w [&'static str],
        i: usize,
        expected: bool,
    }

    impl Render<'_> {
        fn ws(&mut self) -> &'static str {
            let w = self.ws[self.i % self.ws.len()];
            self.i += 1;
            w
        }

        /// `insert` goes right after the last member's value (with a comma) or right after `{`.
        fn object(&mut self, members: Vec<(String, String)>, insert: Option<&str>) -> String {
            let n = members.len();
            let mut s = String::from("{");
            for (k, (key, val)) in members.into_iter().enumerate() {
                if k > 0 {
                    s.push(',');
                }
                s += self.ws();
                s += &key;
                s += self.ws();
                s.push(':');
                s += self.ws();
                s += &val;
                if k + 1 < n {
                    s += self.ws();
                }
            }
            if let Some(ins) = insert.filter(|_| self.expected) {
                if n > 0 {
                    s.push(',');
                }
                s += ins;
            }
            s += self.ws();
            s.push('}');
            s
        }

        fn array(&mut self, items: Vec<String>) -> String {
            let mut s = String::from("[");
            let n = items.len();
            for (k, item) in items.into_iter().enumerate() {
                if k > 0 {
                    s.push(',');
                }
                s += self.ws();
                s += &item;
                s += if k + 1 < n { self.ws() } else { "" };
            }
            s += self.ws();
            s.push(']');
            s
        }

        fn eids(&mut self, eids: &Result<Vec<GItem>, &'static str>) -> String {
            let items = match eids {
                Err(raw) => return raw.to_string(),
                Ok(items) => items,
            };
            let rendered = items
                .iter()
                .map(|item| match item {
                    GItem::NotObject(raw) => raw.to_string(),
                    GItem::Eid(eid) => self.eid(eid),
                })
                .collect();
            self.array(rendered)
        }

        fn eid(&mut self, eid: &GEid) -> String {
            let mut members = Vec::new();
            if let Some((raw, _)) = eid.source {
                members.push((r#""source""#.to_string(), raw.to_string()));
            }
            let uids = match &eid.uids {
                Err(raw) => raw.to_string(),
                Ok(uids) => {
                    let rendered = uids.iter().map(|u| self.uid(u)).collect();
                    self.array(rendered)
                }
            };
            let uids = (r#""uids""#.to_string(), uids);
            if eid.uids_first {
                members.insert(0, uids);
            } else {
                members.push(uids);
            }
            if eid.extras {
                members.push((r#""mm""#.into(), r#""3""#.into()));
                members.push((r#""inserter""#.into(), r#""pub.example""#.into()));
                members.push((r#""ext""#.into(), r#"{"stype":"ppuid"}"#.into()));
            }
            self.object(members, None)
        }

        fn uid(&mut self, uid: &GUid) -> String {
            match uid {
                GUid::NotObject(raw) => raw.to_string(),
                GUid::NoId => self.object(vec![(r#""atype""#.into(), "3".into())], None),
                GUid::IdNotString(raw) => {
                    self.object(vec![(r#""id""#.into(), raw.to_string())], None)
                }
                GUid::Id {
                    raw,
                    atype_str,
                    extra,
                    id_last,
                    ..
                } => {
                    let mut members = vec![(
                        r#""atype""#.to_string(),
                        if *atype_str { r#""3""# } else { "3" }.to_string(),
                    )];
                    if *extra {
                        members.push((r#""rtiPartner""#.into(), r#""UID2""#.into()));
                        members.push((r#""ext""#.into(), r#"{"rtiPartner":"UID2"}"#.into()));
                    }
                    let id = (r#""id""#.to_string(), raw.clone());
                    if *id_last {
                        members.push(id);
                    } else {
                        members.insert(0, id);
                    }
                    self.object(members, None)
                }
            }
        }

        fn with_eids(&mut self, pool: &[(&str, &str)], eids: &GEids) -> Vec<(String, String)> {
            let mut members: Vec<(String, String)> = pool
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            if let Some((pos, eids)) = eids {
                let at = pos.index(members.len() + 1);
                let rendered = self.eids(eids);
                members.insert(at, (r#""eids""#.into(), rendered));
            }
            members
        }

        fn ext(&mut self, ext: &GExt) -> String {
            match ext {
                GExt::Absent => unreachable!(),
                GExt::Null if self.expected => format!("{{\"{M}\":{J}}}"),
                GExt::Null => "null".into(),
                GExt::Other(raw) => raw.to_string(),
                GExt::Object {
                    members,
                    eids,
                    existing,
                } => {
                    let mut members = self.with_eids(members, eids);
                    if let Some((pos, old)) = existing {
                        let at = pos.index(members.len() + 1);
                        let value = if self.expected { J } else { old };
                        members.insert(at, (format!("\"{M}\""), value.to_string()));
                        self.object(members, None)
                    } else {
                        self.object(members, Some(&format!("\"{M}\":{J}")))
                    }
                }
            }
        }

        fn request(&mut self, req: &GReq) -> String {
            let mut members: Vec<(String, String)> = req
                .members
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let user = match &req.user {
                GUser::Absent => None,
                GUser::NotObject(raw) => Some(raw.to_string()),
                GUser::Object {
                    members,
                    eids,
                    ext,
                    ext_pos,
                } => {
                    let mut members = self.with_eids(members, eids);
                    let insert = if let GExt::Absent = ext {
                        Some(format!("\"ext\":{{\"{M}\":{J}}}"))
                    } else {
                        let at = ext_pos.index(members.len() + 1);
                        let rendered = self.ext(ext);
                        members.insert(at, (r#""ext""#.into(), rendered));
                        None
                    };
                    Some(self.object(members, insert.as_deref()))
                }
            };
            if let Some(user) = user {
                let at = req.user_pos.index(members.len() + 1);
                members.insert(at, (r#""user""#.into(), user));
            }
            let ws = self.ws();
            format!("{ws}{}{ws}", self.object(members, None))
        }
    }

    fn g_tokens(items: &GEids, location: EidLocation, out: &mut Vec<Tok>) {
        let Some((_, Ok(items))) = items else { return };
        for item in items {
            let GItem::Eid(GEid {
                source: Some((_, Some(idx))),
                uids: Ok(uids),
                ..
            }) = item
            else {
                continue;
            };
            for uid in uids {
                if let GUid::Id { val, .. } = uid {
                    out.push((val.clone(), *idx, location));
                }
            }
        }
    }

    /// (input, expected output or None, expected tokens)
    fn generated(req: &GReq) -> (String, Option<String>, Vec<Tok>) {
        let input = Render {
            ws: &req.ws,
            i: 0,
            expected: false,
        }
        .request(req);
        let expected = Render {
            ws: &req.ws,
            i: 0,
            expected: true,
        }
        .request(req);
        let mut tokens = Vec::new();
        let splices = match &req.user {
            GUser::Object { eids, ext, .. } => {
                g_tokens(eids, UserEids, &mut tokens);
                if let GExt::Object { eids, .. } = ext {
                    g_tokens(eids, UserExtEids, &mut tokens);
                }
                !matches!(ext, GExt::Other(_))
            }
            _ => false,
        };
        (input, splices.then_some(expected), tokens)
    }

    fn mutate(base: &[u8], edits: &[(prop::sample::Index, u8, u8)]) -> Vec<u8> {
        const ALPHABET: &[u8] = b"{}[]\":,\\ 0123456789-+.eEtrufalsnx\t\n\x00\x01\xff\xc3";
        let mut bytes = base.to_vec();
        for (pos, kind, pick) in edits {
            let at = pos.index(bytes.len() + 1);
            let b = ALPHABET[usize::from(*pick) % ALPHABET.len()];
            match kind % 3 {
                0 if at < bytes.len() => bytes[at] = b,
                1 => bytes.insert(at, b),
                _ if at < bytes.len() => {
                    bytes.remove(at);
                }
                _ => {}
            }
        }
        bytes
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The block skipper agrees with the byte-at-a-time reference, across block boundaries, escapes at
        /// the end of a block, strings spanning blocks, and nesting past 64 levels and up to the limit.
        #[test]
        fn block_skipper_matches_bytewise_reference(
            open in prop::collection::vec(prop::sample::select(b"{[".to_vec()), 1..600),
            tail in prop::collection::vec(prop::sample::select(b"{}[]\"\\\\ a:,".to_vec()), 0..400),
            depth in 0usize..3,
        ) {
            let mut input = open;
            input.extend_from_slice(&tail);
            prop_assert_eq!(block_skip(&input, depth), reference_skip(&input, depth));
            // Valid-looking nesting closed in order, so that the Ok path is well covered too.
            let opens: Vec<u8> = input.iter().take_while(|b| matches!(b, b'{' | b'[')).copied().collect();
            let filler = tail.iter().copied().filter(|b| matches!(b, b' ' | b'a' | b':' | b','));
            // `{` + 2 is `}`, `[` + 2 is `]`.
            let closed: Vec<u8> =
                opens.iter().copied().chain(filler).chain(opens.iter().rev().map(|b| b + 2)).collect();
            prop_assert_eq!(block_skip(&closed, depth), reference_skip(&closed, depth));
        }

        /// The SSE2 classifiers and the portable ones give the same masks, and both mean what they say.
        #[test]
        fn block_classifiers_agree(bytes in prop::collection::vec(
            prop_oneof![any::<u8>(), prop::sample::select(b"{}[]\"\\\\".to_vec())], 64)) {
            let block: [u8; 64] = bytes.as_slice().try_into().unwrap();
            let naive = |f: fn(u8) -> bool| {
                block.iter().enumerate().fold(0u64, |m, (k, &b)| m | (u64::from(f(b)) << k))
            };
            let expected = BlockMasks {
                quote: naive(|b| b == b'"'),
                backslash: naive(|b| b == b'\\'),
                bracket: naive(|b| matches!(b, b'{' | b'[' | b'}' | b']')),
            };
            prop_assert_eq!(BlockMasks::classify(&block), expected);
            prop_assert_eq!(BlockMasks::classify_swar(&block), expected);
            #[cfg(target_arch = "x86_64")]
            if let Some(avx2) = avx2::Avx2::detect() {
                prop_assert_eq!(avx2.classify(&block), expected);
            }
            for chunk in block.as_chunks::<16>().0 {
                let q = chunk.iter().enumerate().fold(0u32, |m, (k, &b)| m | (u32::from(b == b'"') << k));
                let b = chunk.iter().enumerate().fold(0u32, |m, (k, &b)| m | (u32::from(b == b'\\') << k));
                prop_assert_eq!(quote_and_backslash_16(chunk), (q, b));
                prop_assert_eq!(quote_and_backslash_16_swar(chunk), (q, b));
            }
        }

        /// The word-wise check agrees with a byte-wise one, at every length and with the byte that needs
        /// an escape anywhere.
        #[test]
        fn plain_string_check_matches_bytewise(
            bytes in prop::collection::vec(
                prop::sample::select(vec![b'a', b' ', b'~', 0x7f, 0x80, 0xc3, 0xff, 0x1f, 0, b'"', b'\\', b'!', b'#', b'[', b'\n']),
                0..40,
            ),
        ) {
            let naive = bytes.iter().all(|&b| b >= 0x20 && b != b'"' && b != b'\\');
            prop_assert_eq!(is_plain_string(&bytes), naive);
        }

        /// The carry-less multiply and the shifts compute the same prefix XOR.
        #[test]
        fn prefix_xor_variants_agree(x in any::<u64>()) {
            let naive = (0..64).fold(0u64, |m, k| m | (u64::from((x & ((2u128 << k) - 1) as u64).count_ones() % 2 == 1) << k));
            prop_assert_eq!(prefix_xor(x), naive);
            prop_assert_eq!(prefix_xor_shifts(x), naive);
        }

        /// The ASCII fast path of the UTF-8 check agrees with std on any bytes.
        #[test]
        fn utf8_check_agrees_with_std(bytes in prop::collection::vec(
            prop_oneof![4 => 0x20u8..0x7f, 1 => any::<u8>()], 0..300)) {
            prop_assert_eq!(is_utf8(&bytes), std::str::from_utf8(&bytes).is_ok());
        }

        /// The compact-eid shortcut never changes a result: wherever it takes eids (a run of compact ones
        /// and near misses made by random edits, one comma between them), the general walk takes the same
        /// eids too, ending at the same place with the same tokens; where it declines, it has moved nothing
        /// and pushed nothing.
        #[test]
        fn compact_eid_agrees_with_the_general_walk(
            eids in prop::collection::vec(
                (
                    prop::sample::select(vec![
                        r#"{"source":"uidapi.com","uids":[{"id":"A4AAAAB-_x","atype":3}]}"#,
                        r#"{"source":"uidapi.com","uids":[{"id":"t1","atype":3},{"id":"t2"},{"id":"t3","atype":12}]}"#,
                        r#"{"source":"liveramp.com","uids":[{"id":"x","atype":1}]}"#,
                        r#"{"source":"euid.eu","uids":[{"id":"e"}]}"#,
                        r#"{"source":"uidapi.com","uids":[]}"#,
                    ]),
                    prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), any::<u8>()), 0..3),
                ),
                1..4,
            ),
        ) {
            let input = eids
                .iter()
                .map(|(base, edits)| mutate(base.as_bytes(), edits))
                .collect::<Vec<_>>()
                .join(&b',');
            prop_assume!(std::str::from_utf8(&input).is_ok());
            let mut fast = Cursor { bytes: &input, pos: 0 };
            let mut fast_tokens = Tokens::new();
            if compact_eid(&mut fast, SOURCES, EidLocation::UserEids, &mut fast_tokens) {
                let mut general = Cursor { bytes: &input, pos: 0 };
                let mut general_tokens = Tokens::new();
                loop {
                    prop_assert_eq!(
                        parse_eid(&mut general, 3, SOURCES, EidLocation::UserEids, &mut general_tokens),
                        Ok(())
                    );
                    if general.pos >= fast.pos {
                        break;
                    }
                    prop_assert_eq!(general.peek(), Some(b','));
                    general.pos += 1;
                }
                prop_assert_eq!(fast.pos, general.pos);
                prop_assert_eq!(fast_tokens, general_tokens);
            } else {
                prop_assert_eq!(fast.pos, 0);
                prop_assert!(fast_tokens.is_empty());
            }
        }

        /// Random bytes never panic, whatever scan decides.
        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            if let Ok(s) = scan(&bytes, SOURCES, M) {
                let _ = splice(&bytes, &s, M, J);
            }
            let _ = validate_strict(&bytes);
        }

        /// Random bytes behind a plausible prefix reach the deeper parsers, and still never panic.
        #[test]
        fn random_bytes_inside_user_never_panic(bytes in prop::collection::vec(
            prop::sample::select(b"{}[]\":,\\ 0123456789-.eEtrufalsn idsourceuidsextuidapi.com".to_vec()), 0..300)) {
            let mut input = br#"{"user":{"eids":[{"source":"uidapi.com","uids":[{"id":"#.to_vec();
            input.extend_from_slice(&bytes);
            if let Ok(s) = scan(&input, SOURCES, M) {
                let _ = splice(&input, &s, M, J);
            }
        }

        /// Mutated fixtures: never a panic; whenever serde_json accepts the result as an object, scan accepts it
        /// too, finds exactly serde_json's tokens and names, and the splice is right.
        #[test]
        fn mutated_fixtures_agree_with_serde_json(
            which in 0..FIXTURES.len(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), any::<u8>()), 1..4),
        ) {
            let base = fixture(FIXTURES[which]);
            let bytes = mutate(base.as_bytes(), &edits);
            let result = scan(&bytes, SOURCES, M);
            if let Ok(v) = serde_json::from_slice::<Value>(&bytes) && v.is_object() {
                let s = result.expect("scan rejects JSON that serde_json accepts");
                prop_assert_eq!(toks(&s), reference_tokens(&v));
                prop_assert_eq!(s.domain_fields().site_domain.as_deref().map(str::to_string), reference_str(&v, "site", "domain"));
                prop_assert_eq!(s.domain_fields().site_page.as_deref().map(str::to_string), reference_str(&v, "site", "page"));
                prop_assert_eq!(s.domain_fields().app_bundle.as_deref().map(str::to_string), reference_str(&v, "app", "bundle"));
                if s.can_splice() {
                    check_all(std::str::from_utf8(&bytes).unwrap());
                }
            } else if let Ok(s) = result {
                let _ = splice(&bytes, &s, M, J);
            }
        }

        /// Generated requests: (1) the output is the input plus exactly the member (or its `ext` wrapper, or in
        /// place of the old value / `null`), byte for byte; (2) splicing twice equals once; (3) the output parses
        /// and `user.ext.<member>` is the member; (4) everything else is unchanged. Tokens match too.
        #[test]
        fn generated_requests_splice_exactly(req in g_req()) {
            let (input, expected, tokens) = generated(&req);
            let s = scan_ok(&input);
            prop_assert_eq!(toks(&s), tokens.clone());
            let v: Value = serde_json::from_str(&input).expect("generated input is JSON");
            prop_assert_eq!(&tokens, &reference_tokens(&v));
            prop_assert_eq!(s.domain_fields().site_domain.as_deref().is_some(), req.members.iter().any(|(k, _)| *k == r#""site""#));
            let out = splice(input.as_bytes(), &s, M, J).map(|o| String::from_utf8(o).unwrap());
            prop_assert_eq!(&out, &expected);
            if let Some(out) = out {
                check_removal(&input, &s, &out);
                check_enriched(&input, &out);
                let s2 = scan_ok(&out);
                prop_assert_eq!(toks(&s2), tokens);
                let again = splice(out.as_bytes(), &s2, M, J).map(|o| String::from_utf8(o).unwrap());
                prop_assert_eq!(again.as_deref(), Some(out.as_str()));
            }
        }
    }
}
