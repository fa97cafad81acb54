//! The standard base64 text of a raw UID2 (32 bytes, or 33 for newer raw UIDs: 44 characters either
//! way), as every v3/v4 token decryption returns it, and [`RawUidText`], which holds it without an
//! allocation. Pure; depends on `core::arch`, bytemuck, base64-simd and serde.
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
//! 2018: the `pshufb`/multiply split and the "improved" `pshufb` lookup), each read straight from the
//! plaintext (the last step ends at its last byte), and the three blocks of characters go from the
//! registers into the result: no staging buffer. Other lengths, and CPUs without SSSE3, take
//! `base64-simd`. `raw_uid_text_matches_base64_simd` compares the two.

use std::fmt;
use std::ops::Deref;

/// The longest text kept inline: the base64 of a 32- or 33-byte raw UID is 44 characters, and the
/// encoder writes three whole 16-byte blocks.
pub const INLINE_LEN: usize = 48;

/// A raw UID2's text as a decryption returns it: the standard base64 of the raw UID (v3/v4), or the
/// identity string as carried (v2). Reads as a `&str` (`Deref`, `as_str`). It has no `Display`, so
/// that a raw UID2 does not end up in a log line by a stray `{}`.
#[derive(Clone)]
pub struct RawUidText(Repr);

#[derive(Clone)]
enum Repr {
    /// The first `len` bytes of `text` are the text, valid UTF-8: every constructor copies a whole
    /// `&str` or checks that the encoder's characters are ASCII.
    Inline {
        len: u8,
        text: [u8; INLINE_LEN],
    },
    Heap(Box<str>),
}

impl RawUidText {
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Inline { len, text } => {
                let bytes = text.get(..usize::from(*len)).unwrap_or_default();
                // SAFETY: `Repr::Inline` holds valid UTF-8 in its first `len` bytes (see the variant).
                unsafe { std::str::from_utf8_unchecked(bytes) }
            }
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
        let mut inline = [0; INLINE_LEN];
        match (inline.get_mut(..text.len()), u8::try_from(text.len())) {
            (Some(prefix), Ok(len)) => {
                prefix.copy_from_slice(text.as_bytes());
                RawUidText(Repr::Inline { len, text: inline })
            }
            _ => RawUidText(Repr::Heap(text.into())),
        }
    }
}

impl From<String> for RawUidText {
    fn from(text: String) -> RawUidText {
        if text.len() <= INLINE_LEN {
            RawUidText::from(text.as_str())
        } else {
            RawUidText(Repr::Heap(text.into_boxed_str()))
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
    use core::arch::x86_64::{
        __m128i, _mm_add_epi8, _mm_and_si128, _mm_cmpgt_epi8, _mm_movemask_epi8, _mm_mulhi_epu16,
        _mm_mullo_epi16, _mm_or_si128, _mm_set1_epi8, _mm_set1_epi32, _mm_shuffle_epi8,
        _mm_subs_epu8, _mm_xor_si128,
    };

    use super::{RawUidText, Repr};

    /// Per 32-bit lane, the three bytes of one group as b1 b0 b2 b1, for the twelve bytes of a block
    /// from its start.
    const GROUPS: [u8; 16] = [1, 0, 2, 1, 4, 3, 5, 4, 7, 6, 8, 7, 10, 9, 11, 10];
    /// The same for bytes 24.. of 32 bytes read as bytes 16..32 (0x80 reads as a zero byte).
    const TAIL_OF_32: [u8; 16] = [
        9, 8, 10, 9, 12, 11, 13, 12, 15, 14, 0x80, 15, 0x80, 0x80, 0x80, 0x80,
    ];
    /// The same for bytes 24.. of 33 bytes read as bytes 17..33.
    const TAIL_OF_33: [u8; 16] = [
        8, 7, 9, 8, 11, 10, 12, 11, 14, 13, 15, 14, 0x80, 0x80, 0x80, 0x80,
    ];

    /// The text of 32 bytes: 10 groups of three and a group of two, with one `=`.
    pub(super) fn encode_32(bytes: &[u8; 32]) -> Option<RawUidText> {
        encode_44(bytes, TAIL_OF_32, true)
    }

    /// The text of 33 bytes: 11 groups of three, no padding.
    pub(super) fn encode_33(bytes: &[u8; 33]) -> Option<RawUidText> {
        encode_44(bytes, TAIL_OF_33, false)
    }

    /// The 44 characters of 32 or 33 bytes, read as three blocks of 16 (the last one ending at the
    /// last byte) and kept in registers until they are stored in the result. The version before wrote
    /// them to a buffer, stored the `=` into it and read it back for the ASCII check and again for the
    /// copy into the result, each read crossing stores that had just been made.
    fn encode_44<const N: usize>(
        bytes: &[u8; N],
        tail_order: [u8; 16],
        padded: bool,
    ) -> Option<RawUidText> {
        if !std::arch::is_x86_feature_detected!("ssse3") {
            return None;
        }
        let first: [u8; 16] = *bytes.first_chunk()?;
        let second: [u8; 16] = *bytes.get(12..)?.first_chunk()?;
        let third: [u8; 16] = *bytes.last_chunk()?;
        let multipliers = Multipliers::new();
        // SAFETY: SSSE3 was detected above; `characters` and `finish` need nothing else.
        unsafe {
            finish(
                characters(first, GROUPS, multipliers),
                characters(second, GROUPS, multipliers),
                characters(third, tail_order, multipliers),
                padded,
            )
        }
    }

    /// The two multipliers that move each group's sextets into place. LLVM sees that each 16-bit
    /// lane is multiplied by a power of two and replaces each multiply with the shifts, blends and
    /// packs that emulate a per-lane shift (SSE has none): 13 instructions for 2. Passed through
    /// `black_box`, they are values it cannot see, for one store and two loads a text.
    #[derive(Clone, Copy)]
    struct Multipliers {
        high: __m128i,
        low: __m128i,
    }

    impl Multipliers {
        fn new() -> Multipliers {
            let [high, low] = std::hint::black_box([0x0400_0040u32, 0x0100_0010]);
            Multipliers {
                high: bytemuck::cast([high; 4]),
                low: bytemuck::cast([low; 4]),
            }
        }
    }

    /// The text of three blocks of characters, the last one's twelfth (character 43) made `=` when
    /// `padded`; `None` if any character is not ASCII, which the encoder never gives.
    #[target_feature(enable = "ssse3")]
    fn finish(first: __m128i, second: __m128i, third: __m128i, padded: bool) -> Option<RawUidText> {
        let mut padding = [0u8; 16];
        padding[11] = if padded { b'=' ^ b'A' } else { 0 };
        // A zero sextet gave `A` there, and `A ^ (= ^ A)` is `=`.
        let third = _mm_xor_si128(third, bytemuck::cast(padding));
        // The check keeps `Repr::Inline` valid UTF-8 without trusting the tables: ASCII is all it needs.
        if _mm_movemask_epi8(_mm_or_si128(first, _mm_or_si128(second, third))) != 0 {
            return None;
        }
        Some(RawUidText(Repr::Inline {
            len: 44,
            text: bytemuck::cast([first, second, third]),
        }))
    }

    /// The 16 characters of the four groups of three bytes that `order` picks from `chunk`.
    #[target_feature(enable = "ssse3")]
    fn characters(chunk: [u8; 16], order: [u8; 16], multipliers: Multipliers) -> __m128i {
        let input: __m128i = bytemuck::cast(chunk);
        // Each 32-bit lane gets the three bytes of one group as b1 b0 b2 b1, then the four sextets are
        // moved into the lane's four bytes with two masked multiplies.
        let spread = _mm_shuffle_epi8(input, bytemuck::cast(order));
        let high = _mm_mulhi_epu16(
            _mm_and_si128(spread, _mm_set1_epi32(0x0fc0_fc00)),
            multipliers.high,
        );
        let low = _mm_mullo_epi16(
            _mm_and_si128(spread, _mm_set1_epi32(0x003f_03f0)),
            multipliers.low,
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
        _mm_add_epi8(_mm_shuffle_epi8(offsets, range), sextets)
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
        assert!(matches!(short.0, Repr::Inline { .. }));
        // Up to 48 bytes stay inline, multi-byte characters included, and read back whole.
        let widest = "é".repeat(24);
        let inline = RawUidText::from(widest.as_str());
        assert!(matches!(inline.0, Repr::Inline { len: 48, .. }));
        assert_eq!(inline.as_str(), widest);
        let past = RawUidText::from(format!("{widest}x"));
        assert!(matches!(past.0, Repr::Heap(_)));
        assert_eq!(past.as_str(), format!("{widest}x"));
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
