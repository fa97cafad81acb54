//! Tracking-pixel hits: a URL (`https://adv.example/px?ev=purchase&uid2_token=A4AA…&v=19.99#top`) or a bare
//! query string (`ev=purchase&uid2_token=A4AA…`). [`find`] reads the token parameter; [`append_result`]
//! writes `uid2_raw=…&uid2_status=…` at the end of the query, before any fragment, and leaves every other
//! byte as it was.
//!
//! Rules (WHATWG `application/x-www-form-urlencoded` parsing, which is what pixel servers and browsers do):
//! - The query ends at the first `#`. In a URL (it starts with `scheme://` or `/`) or a path (no `=` or
//!   `&` before the first `?`) it starts after the first `?`, and without a `?` there is none; anything
//!   else is a bare query string, whose values may contain `?`.
//! - Parameters are separated by `&`; a name is what precedes the first `=`. Names and values are
//!   percent-decoded and `+` means a space. Invalid `%` sequences are kept literally.
//! - Repeated token parameters: **the first one wins** (what most server frameworks return for a single
//!   value). An empty value counts as no token (an unfilled ad-server macro).
//! - Tokens never contain spaces, so a decoded space in a token is turned back into `+`: senders that put
//!   a standard-base64 (v2/v3) token in the query without encoding it would otherwise lose it.
//! - Re-enrichment is idempotent: existing `uid2_raw` / `uid2_status` parameters are removed (each with
//!   one `&`) before the new ones are appended, each after a `&` (also when the query already ends in
//!   `&`, so that removing them gives that query back).
//! - Appended values are percent-encoded: everything but RFC 3986 unreserved characters, so the base64
//!   `+`, `/` and `=` of a raw UID2 become `%2B`, `%2F`, `%3D`.
//!
//! Pure; depends on std only.

use std::borrow::Cow;

/// The parameter that carries the raw UID2 on output.
pub const RAW_PARAM: &str = "uid2_raw";
/// The parameter that carries the status (`success`, …, or `no_token` is never written: a hit without a
/// token passes unchanged).
pub const STATUS_PARAM: &str = "uid2_status";

/// Where the query of a pixel hit is, and the token it carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found<'a> {
    /// The query's bytes in the input (no `?`, no `#`); `None` when the input has no query.
    pub query: Option<std::ops::Range<usize>>,
    /// The first non-empty token parameter, decoded.
    pub token: Option<Cow<'a, str>>,
    /// How many token parameters the hit carried (repeats included, empty ones not).
    pub token_count: usize,
}

/// The query part of `input`, as a byte range.
fn query_range(input: &str) -> Option<std::ops::Range<usize>> {
    let end = input.find('#').unwrap_or(input.len());
    let head = input.get(..end)?;
    match head.find('?') {
        // `?` may also appear inside a query's values: it starts the query only after a URL or a path
        // (text with no `=` or `&` before it).
        Some(q) if looks_like_url(head) || !head[..q].contains(['=', '&']) => Some(q + 1..end),
        None if looks_like_url(head) => None,
        _ => Some(0..end),
    }
}

/// `/path…` or `scheme://…` (RFC 3986 scheme characters before `://`).
fn looks_like_url(s: &str) -> bool {
    if s.starts_with('/') {
        return true;
    }
    let Some(colon) = s.find("://") else {
        return false;
    };
    let scheme = s.get(..colon).unwrap_or_default();
    scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

/// Finds the token parameter `name` in a pixel hit.
pub fn find<'a>(input: &'a str, name: &str) -> Found<'a> {
    let query = query_range(input);
    let mut token = None;
    let mut token_count = 0;
    if let Some(q) = &query {
        for param in input.get(q.clone()).unwrap_or_default().split('&') {
            let (n, v) = param.split_once('=').unwrap_or((param, ""));
            if decode(n) != name || v.is_empty() {
                continue;
            }
            token_count += 1;
            if token.is_none() {
                let mut value = decode(v);
                if value.contains(' ') {
                    value = Cow::Owned(value.replace(' ', "+"));
                }
                token = Some(value);
            }
        }
    }
    Found {
        query,
        token,
        token_count,
    }
}

/// `input` with earlier results removed and `uid2_raw` (when `raw_uid2` is given) and `uid2_status`
/// appended to the query, before the fragment. An input without a query gets one (`?` before the
/// fragment).
pub fn append_result(
    input: &str,
    found: &Found<'_>,
    raw_uid2: Option<&str>,
    status: &str,
) -> String {
    let mut out = String::with_capacity(input.len() + 96);
    let (head, query, tail) = match &found.query {
        Some(q) => (
            input.get(..q.start).unwrap_or_default(),
            input.get(q.clone()).unwrap_or_default(),
            input.get(q.end..).unwrap_or_default(),
        ),
        None => {
            let end = input.find('#').unwrap_or(input.len());
            (
                input.get(..end).unwrap_or_default(),
                "",
                input.get(end..).unwrap_or_default(),
            )
        }
    };
    out.push_str(head);
    if found.query.is_none() {
        out.push('?');
    }
    let kept = strip_results(query);
    out.push_str(&kept);
    // Always a separator after a non-empty query, even one ending in `&`: removing a result parameter
    // removes exactly one `&` with it, so this keeps re-enrichment idempotent.
    let mut sep = !kept.is_empty();
    let mut param = |out: &mut String, name: &str, value: &str| {
        if sep {
            out.push('&');
        }
        sep = true;
        out.push_str(name);
        out.push('=');
        encode_into(out, value);
    };
    if let Some(raw) = raw_uid2 {
        param(&mut out, RAW_PARAM, raw);
    }
    param(&mut out, STATUS_PARAM, status);
    out.push_str(tail);
    out
}

/// The query without `uid2_raw` / `uid2_status` parameters (each removed with one separating `&`);
/// borrowed when there were none.
pub fn strip_results(query: &str) -> Cow<'_, str> {
    let is_result = |param: &str| {
        let name = param.split_once('=').map_or(param, |(n, _)| n);
        let name = decode(name);
        name == RAW_PARAM || name == STATUS_PARAM
    };
    if !query.split('&').any(is_result) {
        return Cow::Borrowed(query);
    }
    let kept: Vec<&str> = query.split('&').filter(|p| !is_result(p)).collect();
    Cow::Owned(kept.join("&"))
}

/// Percent-decodes (UTF-8, lossy) with `+` as a space. Borrowed when there was nothing to decode.
pub fn decode(s: &str) -> Cow<'_, str> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).and_then(|h| {
                    let h = std::str::from_utf8(h).ok()?;
                    if h.bytes().all(|c| c.is_ascii_hexdigit()) {
                        u8::from_str_radix(h, 16).ok()
                    } else {
                        None
                    }
                });
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// Appends `s` percent-encoded: RFC 3986 unreserved characters as they are, every other byte as `%XX`.
pub fn encode_into(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_first_token_in_urls_and_query_strings() {
        let f = find(
            "https://a.example/px?ev=p&uid2_token=T1&uid2_token=T2#x",
            "uid2_token",
        );
        assert_eq!(f.token.as_deref(), Some("T1"));
        assert_eq!(f.token_count, 2);
        assert_eq!(
            find("ev=p&uid2_token=T1", "uid2_token").token.as_deref(),
            Some("T1")
        );
        assert_eq!(find("https://a.example/px", "uid2_token").query, None);
        assert_eq!(find("/px#uid2_token=T", "uid2_token").token, None);
        assert_eq!(
            find("a=?&uid2_token=T", "uid2_token").token.as_deref(),
            Some("T")
        );
        assert_eq!(
            find("px?uid2_token=T", "uid2_token").token.as_deref(),
            Some("T")
        );
        assert_eq!(
            find("https://x/a=b?uid2_token=T", "uid2_token")
                .token
                .as_deref(),
            Some("T")
        );
        assert_eq!(
            find("/px?uid2_token=&uid2_token=T3", "uid2_token")
                .token
                .as_deref(),
            Some("T3")
        );
        assert_eq!(
            find("/px?uid2%5Ftoken=A%2BB%2f%3D", "uid2_token")
                .token
                .as_deref(),
            Some("A+B/=")
        );
        // An unencoded `+` of a standard-base64 token survives.
        assert_eq!(
            find("/px?uid2_token=A+B", "uid2_token").token.as_deref(),
            Some("A+B")
        );
        assert_eq!(find("/px?t=%zz%4", "t").token.as_deref(), Some("%zz%4"));
    }

    #[test]
    fn appends_before_the_fragment_and_replaces_earlier_results() {
        let input = "https://a.example/px?ev=p&uid2_token=T#frag";
        let f = find(input, "uid2_token");
        let out = append_result(input, &f, Some("ab+/="), "success");
        assert_eq!(
            out,
            "https://a.example/px?ev=p&uid2_token=T&uid2_raw=ab%2B%2F%3D&uid2_status=success#frag"
        );
        let f2 = find(&out, "uid2_token");
        assert_eq!(append_result(&out, &f2, Some("ab+/="), "success"), out);
        let f3 = find(&out, "uid2_token");
        assert_eq!(
            append_result(&out, &f3, None, "expired_token"),
            "https://a.example/px?ev=p&uid2_token=T&uid2_status=expired_token#frag"
        );
        assert_eq!(
            append_result("/px?", &find("/px?", "t"), None, "x"),
            "/px?uid2_status=x"
        );
        assert_eq!(
            append_result("/px?a=1&", &find("/px?a=1&", "t"), None, "x"),
            "/px?a=1&&uid2_status=x"
        );
    }
}
