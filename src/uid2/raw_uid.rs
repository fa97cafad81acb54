//! The standard base64 text of a raw UID2 (32 bytes, or 33 for newer raw UIDs: 44 characters either
//! way), as every v3/v4 token decryption returns it, and [`RawUidText`], which holds it without an
//! allocation. Pure; depends on `core::arch`, arrayvec, bytemuck, base64-simd and serde.
//!
//! # Why not `String`
//! A `String` per decryption was a `malloc` and a `free`, about 130 of a v4 token's 1,700 instructions
//! (callgrind), and another pair for every clone the decrypt cache hands out. The text is 44 bytes, so
//! it is kept inline; only a longer v2 identity (which carries whatever string the token holds) goes to
//! the heap.
//!
//! # Why not only `base64-simd`
//! Its vector paths start at longer inputs, so a 32-byte raw UID went through its scalar loop, about 175
//! instructions a token (callgrind). Here the 32 or 33 bytes are three SSSE3 steps of 12 bytes to 16
//! characters (W. Muła and D. Lemire, "Faster Base64 Encoding and Decoding Using AVX2 Instructions",
//! 2018: the `pshufb`/multiply split and the "improved" `pshufb` lookup). Other lengths, and CPUs
//! without SSSE3, take `base64-simd`. `raw_uid_text_matches_base64_simd` compares the two.

use std::fmt;
use std::ops::Deref;

use arrayvec::ArrayString;

/// The longest text kept inline: the base64 of a 32- or 33-byte raw UID.
pub const INLINE_LEN: usize = 44;

/// A raw UID2's text as a decryption returns it: the standard base64 of the raw UID (v3/v4), or the
/// identity string as carried (v2). Reads as a `&str` (`Deref`, `as_str`). It has no `Display`, so
/// that a raw UID2 does not end up in a log line by a stray `{}`.
#[derive(Clone)]
pub struct RawUidText(Repr);

#[derive(Clone)]
enum Repr {
    Inline(ArrayString<INLINE_LEN>),
    Heap(Box<str>),
}

impl RawUidText {
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Inline(text) => text.as_str(),
            Repr::Heap(text) => text,
        }
    }
}

impl Deref for RawUidText {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for RawUidText {
    fn from(text: &str) -> RawUidText {
        match ArrayString::from(text) {
            Ok(inline) => RawUidText(Repr::Inline(inline)),
            Err(_) => RawUidText(Repr::Heap(text.into())),
        }
    }
}

impl From<String> for RawUidText {
    fn from(text: String) -> RawUidText {
        match ArrayString::from(&text) {
            Ok(inline) => RawUidText(Repr::Inline(inline)),
            Err(_) => RawUidText(Repr::Heap(text.into_boxed_str())),
        }
    }
}

impl PartialEq for RawUidText {
    fn eq(&self, other: &RawUidText) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for RawUidText {}

impl fmt::Debug for RawUidText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl serde::Serialize for RawUidText {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// `bytes` in standard base64 with padding.
pub fn encode(bytes: &[u8]) -> RawUidText {
    #[cfg(target_arch = "x86_64")]
    if let Ok(raw_uid) = <&[u8; 32]>::try_from(bytes) {
        if let Some(text) = ssse3::encode_32(raw_uid) {
            return text;
        }
    } else if let Ok(raw_uid) = <&[u8; 33]>::try_from(bytes)
        && let Some(text) = ssse3::encode_33(raw_uid)
    {
        return text;
    }
    base64_simd::STANDARD.encode_to_string(bytes).into()
}

#[cfg(target_arch = "x86_64")]
mod ssse3 {
    use arrayvec::ArrayString;
    use core::arch::x86_64::{
        __m128i, _mm_add_epi8, _mm_and_si128, _mm_cmpgt_epi8, _mm_mulhi_epu16, _mm_mullo_epi16,
        _mm_or_si128, _mm_set1_epi8, _mm_set1_epi32, _mm_shuffle_epi8, _mm_subs_epu8,
    };

    /// The text of 32 bytes: 10 groups of three and a group of two, with one `=`.
    pub(super) fn encode_32(bytes: &[u8; 32]) -> Option<super::RawUidText> {
        let mut text = encode_36(bytes)?;
        text[43] = b'=';
        finish(&text)
    }

    /// The text of 33 bytes: 11 groups of three, no padding.
    pub(super) fn encode_33(bytes: &[u8; 33]) -> Option<super::RawUidText> {
        finish(&encode_36(bytes)?)
    }

    /// 44 characters of the 32 or 33 bytes, as if zero bytes followed them to 36.
    fn encode_36<const N: usize>(bytes: &[u8; N]) -> Option<[u8; 48]> {
        if !std::arch::is_x86_feature_detected!("ssse3") {
            return None;
        }
        let first: [u8; 16] = bytes.get(..16)?.try_into().ok()?;
        let second: [u8; 16] = bytes.get(12..28)?.try_into().ok()?;
        let mut third = [0u8; 16];
        third.get_mut(..N - 24)?.copy_from_slice(bytes.get(24..)?);
        // SAFETY: SSSE3 was detected above; `characters` needs nothing else.
        let chunks = unsafe { [first, second, third].map(|chunk| characters(chunk)) };
        let mut text = [0u8; 48];
        for (out, chunk) in text.chunks_exact_mut(16).zip(chunks) {
            out.copy_from_slice(&chunk);
        }
        Some(text)
    }

    fn finish(text: &[u8; 48]) -> Option<super::RawUidText> {
        let text = text.get(..super::INLINE_LEN)?;
        // `str::from_utf8` cost more than the encoding itself (~110 instructions for 44 bytes); an
        // ASCII check is a few word compares and is all UTF-8 needs here.
        if !text.is_ascii() {
            return None;
        }
        // SAFETY: every byte is ASCII (checked just above), so the bytes are valid UTF-8.
        let text = unsafe { std::str::from_utf8_unchecked(text) };
        Some(super::RawUidText(super::Repr::Inline(
            ArrayString::from(text).ok()?,
        )))
    }

    /// The 16 characters of the first 12 bytes of `chunk`.
    #[target_feature(enable = "ssse3")]
    fn characters(chunk: [u8; 16]) -> [u8; 16] {
        let input: __m128i = bytemuck::cast(chunk);
        // Each 32-bit lane gets the three bytes of one group as b1 b0 b2 b1, then the four sextets are
        // moved into the lane's four bytes with two masked multiplies.
        let order: __m128i = bytemuck::cast([1u8, 0, 2, 1, 4, 3, 5, 4, 7, 6, 8, 7, 10, 9, 11, 10]);
        let spread = _mm_shuffle_epi8(input, order);
        let high = _mm_mulhi_epu16(
            _mm_and_si128(spread, _mm_set1_epi32(0x0fc0_fc00)),
            _mm_set1_epi32(0x0400_0040),
        );
        let low = _mm_mullo_epi16(
            _mm_and_si128(spread, _mm_set1_epi32(0x003f_03f0)),
            _mm_set1_epi32(0x0100_0010),
        );
        let sextets = _mm_or_si128(high, low);
        // Sextet to character: an offset per range, chosen by a 16-entry table. 0..=51 map to 0 by the
        // saturating subtraction, 52..=61 to 1..=10, 62 to 11, 63 to 12; then 0..=25 are moved to 13.
        let mut range = _mm_subs_epu8(sextets, _mm_set1_epi8(51));
        let capitals = _mm_cmpgt_epi8(_mm_set1_epi8(26), sextets);
        range = _mm_or_si128(range, _mm_and_si128(capitals, _mm_set1_epi8(13)));
        let digit = (b'0' as i8).wrapping_sub(52);
        let offsets: __m128i = bytemuck::cast([
            (b'a' as i8).wrapping_sub(26),
            digit,
            digit,
            digit,
            digit,
            digit,
            digit,
            digit,
            digit,
            digit,
            digit,
            (b'+' as i8).wrapping_sub(62),
            (b'/' as i8).wrapping_sub(63),
            b'A' as i8,
            0,
            0,
        ]);
        bytemuck::cast(_mm_add_epi8(_mm_shuffle_epi8(offsets, range), sextets))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_uid_text_matches_base64_simd() {
        let mut rng = fastrand::Rng::with_seed(0x7569);
        for case in 0..20_000 {
            let len = match case % 4 {
                0 => 32,
                1 => 33,
                _ => rng.usize(..=40),
            };
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    if case % 3 == 0 {
                        // runs of the extreme sextets (0, 63, 62, 61, 52, 51, 26, 25)
                        [0x00, 0xff, 0xfb, 0xef, 0xbe, 0x04, 0xd3, 0x66][rng.usize(..8)]
                    } else {
                        rng.u8(..)
                    }
                })
                .collect();
            assert_eq!(
                encode(&bytes).as_str(),
                base64_simd::STANDARD.encode_to_string(&bytes),
                "{bytes:?}"
            );
        }
    }

    #[test]
    fn raw_uid_text_is_inline_up_to_44_bytes_and_compares_as_its_text() {
        let short = RawUidText::from("ywsvDNINiZOVSsfkHpLpSJzXzhr6Jx9Z/4Q0+lsEUvM=");
        assert!(matches!(short.0, Repr::Inline(_)));
        let long_text = "é".repeat(30);
        let long = RawUidText::from(long_text.clone());
        assert!(matches!(long.0, Repr::Heap(_)));
        assert_eq!(long, RawUidText::from(long_text.as_str()));
        assert_eq!(long.as_str(), long_text);
        assert_eq!(
            short.as_str(),
            "ywsvDNINiZOVSsfkHpLpSJzXzhr6Jx9Z/4Q0+lsEUvM="
        );
        assert_eq!(short.len(), 44);
        assert_eq!(
            serde_json::to_string(&short).unwrap(),
            "\"ywsvDNINiZOVSsfkHpLpSJzXzhr6Jx9Z/4Q0+lsEUvM=\""
        );
    }
}
