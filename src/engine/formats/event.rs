//! JSON events (tracking events, sharing payloads — any JSON object): find the strings at configured
//! JSON pointers (RFC 6901) and splice edits into the bytes without a DOM, so every byte the enricher does
//! not write stays as it came (key order, whitespace, number spelling, escapes, unknown members).
//!
//! Two edits are offered: [`insert_member`] adds (or replaces) one member in the object that holds the
//! first token found — the same member, and the same lossless and idempotent rule, as for bid requests —
//! and [`replace_strings`] swaps string values for others (outbound tokenization).
//!
//! Rules: duplicate member names resolve to the last occurrence (as in `openrtb::json` and serde_json); a
//! pointer that does not resolve, or resolves to something other than a string, finds nothing; the input
//! must be one UTF-8 JSON object, checked as the bid-request scanner checks it (the path's containers are
//! parsed, everything else skipped by bracket matching).
//!
//! Pure; depends on std, thiserror, and the bid-request scanner's lexer and cursor (`openrtb::json::lex`
//! and `openrtb::json::cursor`).

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use crate::engine::openrtb::json::cursor::skip_value;
use crate::engine::openrtb::json::lex::{is_utf8, string_end, unescape};
use crate::engine::openrtb::json::{JsonError, MAX_DEPTH};

/// A parsed RFC 6901 JSON pointer: `/a/b~1c/0` is the tokens `a`, `b/c`, `0`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct JsonPointer {
    text: String,
    tokens: Vec<String>,
}

/// A JSON pointer that is not RFC 6901 syntax.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PointerError {
    #[error("a JSON pointer must be empty or start with '/'")]
    NoLeadingSlash,
    #[error("'~' must be followed by '0' or '1' in a JSON pointer")]
    BadEscape,
    #[error("the empty pointer refers to the whole document, which is not a string")]
    WholeDocument,
}

impl JsonPointer {
    /// Parses `text` (`~1` is `/`, `~0` is `~`). The empty pointer (the whole document) is refused: an
    /// event is an object, never a token string.
    ///
    /// # Errors
    /// [`PointerError`] for anything RFC 6901 does not allow, and for the empty pointer.
    pub fn parse(text: &str) -> Result<JsonPointer, PointerError> {
        if text.is_empty() {
            return Err(PointerError::WholeDocument);
        }
        let rest = text.strip_prefix('/').ok_or(PointerError::NoLeadingSlash)?;
        let tokens = rest
            .split('/')
            .map(|t| {
                let mut out = String::with_capacity(t.len());
                let mut chars = t.chars();
                while let Some(c) = chars.next() {
                    if c == '~' {
                        match chars.next() {
                            Some('0') => out.push('~'),
                            Some('1') => out.push('/'),
                            _ => return Err(PointerError::BadEscape),
                        }
                    } else {
                        out.push(c);
                    }
                }
                Ok(out)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(JsonPointer {
            text: text.to_string(),
            tokens,
        })
    }

    /// The reference tokens, unescaped.
    pub fn tokens(&self) -> &[String] {
        &self.tokens
    }

    /// The pointer as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for JsonPointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// One string found at a pointer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoundString<'a> {
    /// Index of the pointer (in the order given) that found it.
    pub pointer_index: usize,
    /// The string, unescaped; borrowed unless it had escapes.
    pub text: Cow<'a, str>,
    /// The string's bytes in the input, quotes included.
    pub span: Range<usize>,
    /// The object that holds the string (the nearest enclosing object, when the string is an array
    /// element).
    host: Host,
}

/// Where a member can be written in an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Host {
    /// Offset of the object's `{`.
    open: usize,
    /// End of the last member's value; `None` for an empty object.
    last_value_end: Option<usize>,
    /// The value of the (last) member already named like the enrichment member, if any.
    member: Option<(usize, usize)>,
}

/// What [`scan`] found, in pointer order (each pointer finds at most one string).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scan<'a> {
    pub found: Vec<FoundString<'a>>,
}

/// Checks that `input` is one JSON object and finds the strings at `pointers`. `member_name` is the
/// enrichment member, located so that [`insert_member`] can replace it (idempotence).
///
/// # Errors
/// [`JsonError`] when the input is not UTF-8, not a JSON object, truncated, malformed where it is read,
/// or nested too deep.
pub fn scan<'a>(
    input: &'a [u8],
    pointers: &[JsonPointer],
    member_name: &str,
) -> Result<Scan<'a>, JsonError> {
    if !is_utf8(input) {
        return Err(JsonError::NotUtf8);
    }
    let start = first_non_ws(input, 0).ok_or(JsonError::NotAnObject)?;
    if input.get(start) != Some(&b'{') {
        return Err(JsonError::NotAnObject);
    }
    let mut found = Vec::with_capacity(pointers.len());
    let mut end = start;
    if pointers.is_empty() {
        end = skip_value(input, start, 0)?;
    }
    for (index, pointer) in pointers.iter().enumerate() {
        let walker = Walker {
            bytes: input,
            member_name,
        };
        let (after, hit) = walker.value(start, 0, pointer.tokens())?;
        end = after;
        if let Some(hit) = hit {
            found.push(FoundString {
                pointer_index: index,
                text: hit.text,
                span: hit.span,
                // The top-level value is an object, so every hit has a host.
                host: hit.host.unwrap_or(Host {
                    open: start,
                    last_value_end: None,
                    member: None,
                }),
            });
        }
    }
    if first_non_ws(input, end).is_some() {
        return Err(JsonError::Malformed {
            offset: end,
            reason: "data after the JSON object",
        });
    }
    Ok(Scan { found })
}

/// The input with `"<member_name>":<member_json>` in the object holding the first string found: the
/// value replaced when that object already has the member (so enriching twice equals enriching once),
/// else appended after its last member. `None` when nothing was found.
pub fn insert_member(
    input: &[u8],
    scan: &Scan<'_>,
    member_name: &str,
    member_json: &str,
) -> Option<Vec<u8>> {
    let host = scan.found.first()?.host;
    let mut out = Vec::with_capacity(input.len() + member_name.len() + member_json.len() + 8);
    match (host.member, host.last_value_end) {
        (Some((start, end)), _) => {
            out.extend_from_slice(input.get(..start)?);
            out.extend_from_slice(member_json.as_bytes());
            out.extend_from_slice(input.get(end..)?);
        }
        (None, Some(at)) => {
            out.extend_from_slice(input.get(..at)?);
            out.push(b',');
            push_member(&mut out, member_name, member_json);
            out.extend_from_slice(input.get(at..)?);
        }
        (None, None) => {
            let at = host.open + 1;
            out.extend_from_slice(input.get(..at)?);
            push_member(&mut out, member_name, member_json);
            out.extend_from_slice(input.get(at..)?);
        }
    }
    Some(out)
}

/// The input with each span (a string, quotes included, from [`scan`]) replaced by the JSON string
/// `text` (written as is: the caller passes text that needs no escaping, such as base64). Spans must not
/// overlap; they may come in any order.
pub fn replace_strings(input: &[u8], edits: &[(Range<usize>, &str)]) -> Option<Vec<u8>> {
    let mut order: Vec<&(Range<usize>, &str)> = edits.iter().collect();
    order.sort_by_key(|(span, _)| span.start);
    let extra: usize = edits.iter().map(|(_, t)| t.len() + 2).sum();
    let mut out = Vec::with_capacity(input.len() + extra);
    let mut at = 0;
    for (span, text) in order {
        out.extend_from_slice(input.get(at..span.start)?);
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
        at = span.end;
    }
    out.extend_from_slice(input.get(at..)?);
    Some(out)
}

fn push_member(out: &mut Vec<u8>, name: &str, json: &str) {
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
    out.extend_from_slice(json.as_bytes());
}

fn first_non_ws(bytes: &[u8], from: usize) -> Option<usize> {
    bytes
        .get(from..)?
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .map(|k| from + k)
}

struct Hit<'a> {
    text: Cow<'a, str>,
    span: Range<usize>,
    /// `None` until the enclosing object (the caller) fills itself in.
    host: Option<Host>,
}

struct Walker<'a, 'm> {
    bytes: &'a [u8],
    member_name: &'m str,
}

impl<'a> Walker<'a, '_> {
    fn next_non_ws(&self, pos: usize) -> Result<(usize, u8), JsonError> {
        let at = first_non_ws(self.bytes, pos).ok_or(JsonError::Truncated)?;
        Ok((at, self.bytes.get(at).copied().ok_or(JsonError::Truncated)?))
    }

    fn malformed(offset: usize, reason: &'static str) -> JsonError {
        JsonError::Malformed { offset, reason }
    }

    /// The string starting at the quote at `pos`: its end (after the closing quote) and its text.
    fn string(&self, pos: usize) -> Result<(usize, Cow<'a, str>), JsonError> {
        let (close, escaped) = string_end(self.bytes, pos + 1)?;
        let raw = self
            .bytes
            .get(pos + 1..close)
            .and_then(|r| std::str::from_utf8(r).ok())
            .ok_or(Self::malformed(pos, "invalid string"))?;
        let text = if escaped {
            Cow::Owned(unescape(raw, pos + 1)?)
        } else {
            Cow::Borrowed(raw)
        };
        Ok((close + 1, text))
    }

    /// The value at `pos` (nested `depth` deep), following `path` into it: the offset after the value and
    /// the string the path leads to, if it leads to one.
    fn value(
        &self,
        pos: usize,
        depth: usize,
        path: &[String],
    ) -> Result<(usize, Option<Hit<'a>>), JsonError> {
        let Some((first, rest)) = path.split_first() else {
            if self.bytes.get(pos) == Some(&b'"') {
                let (end, text) = self.string(pos)?;
                return Ok((
                    end,
                    Some(Hit {
                        text,
                        span: pos..end,
                        host: None,
                    }),
                ));
            }
            return Ok((skip_value(self.bytes, pos, depth)?, None));
        };
        match self.bytes.get(pos) {
            Some(b'{') => self.object(pos, depth, first, rest),
            Some(b'[') => self.array(pos, depth, first, rest),
            Some(_) => Ok((skip_value(self.bytes, pos, depth)?, None)),
            None => Err(JsonError::Truncated),
        }
    }

    fn object(
        &self,
        open: usize,
        depth: usize,
        key: &str,
        rest: &[String],
    ) -> Result<(usize, Option<Hit<'a>>), JsonError> {
        if depth >= MAX_DEPTH {
            return Err(JsonError::TooDeep);
        }
        let mut host = Host {
            open,
            last_value_end: None,
            member: None,
        };
        let mut hit = None;
        let (mut pos, b) = self.next_non_ws(open + 1)?;
        if b == b'}' {
            return Ok((pos + 1, None));
        }
        loop {
            let (at, b) = self.next_non_ws(pos)?;
            if b != b'"' {
                return Err(Self::malformed(at, "expected a member name"));
            }
            let (after_key, name) = self.string(at)?;
            let (colon, b) = self.next_non_ws(after_key)?;
            if b != b':' {
                return Err(Self::malformed(colon, "expected ':' after a member name"));
            }
            let (value_at, _) = self.next_non_ws(colon + 1)?;
            let value_end = if name == key {
                let (end, found) = self.value(value_at, depth + 1, rest)?;
                // Last occurrence wins, found or not.
                hit = found;
                end
            } else {
                skip_value(self.bytes, value_at, depth + 1)?
            };
            if name == self.member_name {
                host.member = Some((value_at, value_end));
            }
            host.last_value_end = Some(value_end);
            let (sep, b) = self.next_non_ws(value_end)?;
            match b {
                b',' => pos = sep + 1,
                b'}' => {
                    pos = sep + 1;
                    break;
                }
                _ => return Err(Self::malformed(sep, "expected ',' or '}' in an object")),
            }
        }
        if let Some(h) = &mut hit
            && h.host.is_none()
        {
            h.host = Some(host);
        }
        Ok((pos, hit))
    }

    fn array(
        &self,
        open: usize,
        depth: usize,
        index: &str,
        rest: &[String],
    ) -> Result<(usize, Option<Hit<'a>>), JsonError> {
        if depth >= MAX_DEPTH {
            return Err(JsonError::TooDeep);
        }
        // RFC 6901: "0" or digits without a leading zero; anything else (including "-") matches nothing.
        let wanted = (index == "0" || (!index.starts_with('0') && !index.is_empty()))
            .then(|| index.parse::<usize>().ok())
            .flatten();
        let mut hit = None;
        let (mut pos, b) = self.next_non_ws(open + 1)?;
        if b == b']' {
            return Ok((pos + 1, None));
        }
        let mut k = 0usize;
        loop {
            let (at, _) = self.next_non_ws(pos)?;
            let end = if Some(k) == wanted {
                let (end, found) = self.value(at, depth + 1, rest)?;
                hit = found;
                end
            } else {
                skip_value(self.bytes, at, depth + 1)?
            };
            k += 1;
            let (sep, b) = self.next_non_ws(end)?;
            match b {
                b',' => pos = sep + 1,
                b']' => return Ok((sep + 1, hit)),
                _ => return Err(Self::malformed(sep, "expected ',' or ']' in an array")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> JsonPointer {
        JsonPointer::parse(text).unwrap()
    }

    #[test]
    fn pointers_follow_rfc_6901() {
        assert_eq!(p("/a~1b/m~0n/0").tokens(), ["a/b", "m~n", "0"]);
        assert_eq!(p("/").tokens(), [""]);
        assert_eq!(JsonPointer::parse("a"), Err(PointerError::NoLeadingSlash));
        assert_eq!(JsonPointer::parse("/a~2"), Err(PointerError::BadEscape));
        assert_eq!(JsonPointer::parse("/a~"), Err(PointerError::BadEscape));
        assert_eq!(JsonPointer::parse(""), Err(PointerError::WholeDocument));
        // The RFC's examples against its document.
        let doc = br#"{"foo":["bar","baz"],"":"zero","a/b":"one","c%d":"two","e^f":"three","g|h":"four","i\\j":"five","k\"l":"six"," ":"seven","m~n":"eight"}"#;
        for (ptr, want) in [
            ("/foo/0", "bar"),
            ("/foo/1", "baz"),
            ("/", "zero"),
            ("/a~1b", "one"),
            ("/c%d", "two"),
            ("/e^f", "three"),
            ("/g|h", "four"),
            ("/i\\j", "five"),
            ("/k\"l", "six"),
            ("/ ", "seven"),
            ("/m~0n", "eight"),
        ] {
            let s = scan(doc, &[p(ptr)], "m").unwrap();
            assert_eq!(s.found.len(), 1, "{ptr}");
            assert_eq!(s.found[0].text, want, "{ptr}");
        }
        for missing in ["/foo/01", "/foo/-", "/foo/2", "/foo/0/x", "/nope", "/foo"] {
            assert!(
                scan(doc, &[p(missing)], "m").unwrap().found.is_empty(),
                "{missing}"
            );
        }
    }

    #[test]
    fn member_goes_into_the_object_holding_the_token() {
        let doc = br#"{"ev":"x","user":{"ids":["t1"],"k":1},"t":"t0"}"#;
        let s = scan(doc, &[p("/user/ids/0"), p("/t")], "m").unwrap();
        assert_eq!(s.found.len(), 2);
        let out = insert_member(doc, &s, "m", "{}").unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"ev":"x","user":{"ids":["t1"],"k":1,"m":{}},"t":"t0"}"#
        );
        // Again: replaced, not added.
        let s2 = scan(&out, &[p("/user/ids/0"), p("/t")], "m").unwrap();
        let again = insert_member(&out, &s2, "m", "{\"a\":1}").unwrap();
        assert_eq!(
            std::str::from_utf8(&again).unwrap(),
            r#"{"ev":"x","user":{"ids":["t1"],"k":1,"m":{"a":1}},"t":"t0"}"#
        );
    }

    #[test]
    fn malformed_inputs_are_errors() {
        let ptrs = [p("/t")];
        for bad in [
            &b"[1]"[..],
            b"",
            b"  ",
            b"{\"t\":\"x\"",
            b"{\"t\" \"x\"}",
            b"{\"t\":\"x\"} {}",
            b"\xff",
            b"{\"a\":[1,2}",
        ] {
            assert!(scan(bad, &ptrs, "m").is_err(), "{bad:?}");
        }
    }
}
