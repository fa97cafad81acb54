//! The cursor: a position in the input, the walks over an object's members and an array's elements that
//! the parsed parts of a request are read with, and the skipping of the values they do not read.

use std::borrow::Cow;

use super::lex::{string_end, unescape};
use super::skip;
use super::{JsonError, MAX_DEPTH};

/// A position in the input. `depth` arguments count the containers enclosing the value at hand.
#[derive(Clone, Copy)]
pub(super) struct Cursor<'a> {
    pub(super) bytes: &'a [u8],
    pub(super) pos: usize,
}

impl<'a> Cursor<'a> {
    #[inline]
    pub(super) fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    #[inline]
    pub(super) fn skip_ws(&mut self) {
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

    pub(super) fn malformed(&self, reason: &'static str) -> JsonError {
        JsonError::Malformed {
            offset: self.pos,
            reason,
        }
    }

    /// At an opening quote; leaves the cursor after the closing one.
    #[inline(always)]
    pub(super) fn string(&mut self) -> Result<RawStr<'a>, JsonError> {
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
    pub(super) fn skip_value(&mut self, depth: usize) -> Result<(), JsonError> {
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

    /// At `{` or `[`: skips to after the matching bracket, checking bracket types and depth (see
    /// [`skip::skip_container`]).
    #[inline(always)]
    pub(super) fn skip_container(&mut self, depth: usize) -> Result<(), JsonError> {
        self.pos = skip::skip_container(self.bytes, self.pos, depth)?;
        Ok(())
    }

    /// At `{`: calls `member(cursor at the value, key, depth of the value)` for each member, which must
    /// consume the value. Returns the end offset of the last member's value, if any.
    pub(super) fn object<F>(
        &mut self,
        depth: usize,
        mut member: F,
    ) -> Result<Option<usize>, JsonError>
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
    pub(super) fn array<F>(&mut self, depth: usize, mut element: F) -> Result<(), JsonError>
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

/// The offset right after the value starting at `pos` (nested `depth` containers deep), checking what the
/// scanner checks in values it skips: for readers that keep offsets rather than a cursor (`formats::event`),
/// so that every JSON input is checked and skipped the same way.
pub(crate) fn skip_value(bytes: &[u8], pos: usize, depth: usize) -> Result<usize, JsonError> {
    if depth >= MAX_DEPTH {
        return Err(JsonError::TooDeep);
    }
    let mut cursor = Cursor { bytes, pos };
    cursor.skip_value(depth)?;
    Ok(cursor.pos)
}

/// A string's position: the bytes between its quotes, still escaped.
#[derive(Clone, Copy)]
pub(super) struct RawStr<'a> {
    /// The whole input, which is UTF-8.
    input: &'a [u8],
    start: usize,
    end: usize,
    escaped: bool,
}

impl<'a> RawStr<'a> {
    /// The unescaped text; allocates only when the string contains escapes.
    #[inline(always)]
    pub(super) fn text(self) -> Result<Cow<'a, str>, JsonError> {
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
    pub(super) fn name(self) -> Result<Cow<'a, [u8]>, JsonError> {
        if self.escaped {
            return self.text().map(|t| Cow::Owned(t.into_owned().into_bytes()));
        }
        Ok(Cow::Borrowed(
            self.input.get(self.start..self.end).unwrap_or_default(),
        ))
    }
}
