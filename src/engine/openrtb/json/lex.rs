//! The lexer: the UTF-8 check, the end of a string (16 bytes per step), escapes, and whether a string can
//! be written without escaping. Its word-at-a-time byte tests and its SSE2 load serve the skipper's block
//! classification too. Uses `memchr` for the rest of long strings and, on x86_64, SSE2 (`std::arch`).

use memchr::{memchr, memchr2};

use super::JsonError;

/// Whether `input` is UTF-8. Requests are nearly always ASCII, which one pass of 64-byte ORs (vectorised)
/// confirms at a fraction of the cost of std's validation; anything else gets std's validation.
#[inline]
pub(crate) fn is_utf8(input: &[u8]) -> bool {
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

/// Whether a JSON writer copies `s` between quotes as it is: no `"`, no `\\`, no control character.
/// Eight bytes per step, the last word overlapping the one before: the strings written (ids, names,
/// domains) are short, where a byte loop, or a vectorised fold and its scalar tail, costs several
/// instructions per byte.
#[inline]
pub(crate) fn is_plain_string(s: &[u8]) -> bool {
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

#[cold]
pub(crate) fn unescape(raw: &str, offset: usize) -> Result<String, JsonError> {
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
pub(crate) fn string_end(bytes: &[u8], from: usize) -> Result<(usize, bool), JsonError> {
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
pub(super) fn find_quote_or_backslash(s: &[u8]) -> Option<(usize, bool)> {
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
pub(super) fn quote_and_backslash_16(chunk: &[u8; 16]) -> (u32, u32) {
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
pub(super) fn quote_and_backslash_16_swar(chunk: &[u8; 16]) -> (u32, u32) {
    let (mut quotes, mut backslashes) = (0, 0);
    for (k, word) in chunk.as_chunks::<8>().0.iter().enumerate() {
        let w = u64::from_le_bytes(*word);
        quotes |= (gather(eq_mask(w, b'"')) as u32) << (8 * k);
        backslashes |= (gather(eq_mask(w, b'\\')) as u32) << (8 * k);
    }
    (quotes, backslashes)
}

pub(super) const ONES: u64 = 0x0101_0101_0101_0101;
const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;

/// High bit set in exactly the bytes of `w` equal to `c` (no false positives: no carry crosses bytes).
#[inline(always)]
pub(super) fn eq_mask(w: u64, c: u8) -> u64 {
    let x = w ^ (ONES * u64::from(c));
    !(((x & LOW7) + LOW7) | x) & !LOW7
}

/// Moves the high bit of each byte of an [`eq_mask`] result into bits 0..8.
#[inline(always)]
pub(super) fn gather(mask: u64) -> u64 {
    (mask >> 7).wrapping_mul(0x0102_0408_1020_4080) >> 56
}

/// SSE2 is part of the x86_64 baseline; 16 bytes per compare instead of 8.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
pub(super) mod sse2 {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_movemask_epi8, _mm_set_epi64x, _mm_set1_epi8,
    };

    #[inline(always)]
    pub(super) fn quote_and_backslash_16(chunk: &[u8; 16]) -> (u32, u32) {
        // SAFETY: this module is only compiled when the target has SSE2 (see the cfg above), so the CPU
        // running this code supports every instruction `quote_and_backslash_16_sse2` uses. It touches no
        // raw pointers.
        unsafe { quote_and_backslash_16_sse2(chunk) }
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
    pub(in super::super) fn load(chunk: &[u8; 16]) -> __m128i {
        let v = u128::from_le_bytes(*chunk);
        _mm_set_epi64x((v >> 64) as i64, v as i64)
    }
}
