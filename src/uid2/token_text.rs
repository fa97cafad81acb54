//! Decoding a token's base64 text with SIMD, for [`super::decrypt`]: 32 characters a step with AVX2,
//! then 16 with SSSE3. Pure; depends on `core::arch` and bytemuck.
//!
//! # Why not only `base64-simd`
//! A v4 token is about 218 characters. `base64-simd` runs its vector loop in steps of 32 and leaves the
//! rest (26 characters of a v4 token) to a scalar loop that cost nearly as much as the vector part: ~455
//! instructions a token in all, ~365 here (callgrind). Here the last steps are 16 characters, the very
//! last padded with `A` (a zero sextet), whose bits land only in bytes past the decoded length.
//! The method is Muła and Lemire's ("Faster Base64 Encoding and Decoding Using AVX2 Instructions",
//! 2018): a character is valid when the table entries of its two nibbles share no bit, the sextet is
//! the character plus an offset chosen by its high nibble, and two multiply-adds pack four sextets into
//! three bytes.
//!
//! The tables were derived for each alphabet from the valid characters per high nibble (the comments
//! at `STANDARD` and `URL_SAFE` say how). The test `every_byte_at_every_position_agrees_with_the_alphabet`
//! checks all 256 byte values at each of 48 positions (both AVX2 lanes and an SSSE3 step), and
//! `texts_decode_as_the_lenient_engine_does` whole texts, valid and damaged; both run
//! with and without the AVX2 steps.
//!
//! What this accepts decodes exactly as the SDK-compatible lenient decoder would: non-zero trailing bits
//! are ignored, padding is optional for the standard alphabet and absent for base64url. Anything else
//! (a character outside the alphabet, a misplaced `=`, a length of 4k+1) returns `None`, and the caller
//! takes its general path.

/// Which of the two base64 alphabets the text is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alphabet {
    /// `+` and `/`, optional `=` padding: v2 and v3 tokens.
    Standard,
    /// `-` and `_`, no padding: v4 tokens.
    UrlSafe,
}

/// How much longer than the decoded bytes `out` must be: every step stores 16 bytes of which 12 count.
pub const SLACK: usize = 16;

/// Decodes `text` into `out` and returns the decoded length, or `None` if the text is not plain base64
/// of `alphabet`, if `out` is too short (it needs the decoded length plus [`SLACK`]), or if the CPU
/// lacks SSSE3. `out` may have been written to either way.
pub fn decode(text: &[u8], alphabet: Alphabet, out: &mut [u8]) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("ssse3") {
            let avx2 = std::arch::is_x86_feature_detected!("avx2");
            // SAFETY: SSSE3 was detected just above, and `avx2` says whether AVX2 was.
            return unsafe { ssse3::decode(text, alphabet, out, avx2) };
        }
    }
    let _ = (text, alphabet, out);
    None
}

#[cfg(target_arch = "x86_64")]
mod ssse3 {
    use core::arch::x86_64::{
        __m128i, _mm_add_epi8, _mm_and_si128, _mm_cmpeq_epi8, _mm_madd_epi16, _mm_maddubs_epi16,
        _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8, _mm_set1_epi32, _mm_setzero_si128,
        _mm_shuffle_epi8, _mm_srli_epi32,
    };

    use super::Alphabet;

    /// The tables of one alphabet.
    pub(super) struct Tables {
        /// Per low nibble, the classes of high nibble for which it is invalid (one bit per class).
        pub(super) invalid_low: [u8; 16],
        /// Per high nibble, its class bit (every bit of `invalid_low` that applies to it).
        pub(super) invalid_high: [u8; 16],
        /// Per offset index, what to add to a character to get its sextet. The index is the high
        /// nibble, or `high | 8` for the one character (`/` or `_`) whose offset differs from the
        /// other valid characters of its high nibble; `8 | 2` and `8 | 5` are not high nibbles of
        /// any valid character.
        pub(super) offsets: [i8; 16],
        /// The character that takes index `high | 8`.
        pub(super) odd_one: u8,
    }

    // Classes (bits), standard alphabet: 0x01 high nibbles with no valid character (0, 1, 8–15);
    // 0x02 high nibble 2, valid only `+` (low 0xb) and `/` (0xf); 0x04 high nibble 3, `0`–`9`; 0x08
    // high nibbles 4 and 6, invalid only at low 0 (`@`, `` ` ``); 0x10 high nibbles 5 and 7, valid up
    // to low 0xa (`Z`, `z`).
    const STANDARD: Tables = Tables {
        invalid_low: [
            0x0b, 0x03, 0x03, 0x03, 0x03, 0x03, 0x03, 0x03, 0x03, 0x03, 0x07, 0x15, 0x17, 0x17,
            0x17, 0x15,
        ],
        invalid_high: [
            0x01, 0x01, 0x02, 0x04, 0x08, 0x10, 0x08, 0x10, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01,
            0x01, 0x01,
        ],
        // `+` 43 → 62: +19; `/` 47 → 63: +16 (index 2 | 8); digits 48 → 52: +4; `A` 65 → 0: −65;
        // `a` 97 → 26: −71.
        offsets: [0, 0, 19, 4, -65, -65, -71, -71, 0, 0, 16, 0, 0, 0, 0, 0],
        odd_one: b'/',
    };

    // Classes, base64url: 0x01 as above; 0x02 high nibble 2, valid only `-` (low 0xd); 0x04 high
    // nibble 3, `0`–`9`; 0x08 high nibbles 4 and 6, invalid only at low 0; 0x10 high nibble 5, valid
    // up to low 0xa (`Z`) and at 0xf (`_`); 0x20 high nibble 7, valid up to low 0xa (`z`).
    const URL_SAFE: Tables = Tables {
        invalid_low: [
            0x0b, 0x03, 0x03, 0x03, 0x03, 0x03, 0x03, 0x03, 0x03, 0x03, 0x07, 0x37, 0x37, 0x35,
            0x37, 0x27,
        ],
        invalid_high: [
            0x01, 0x01, 0x02, 0x04, 0x08, 0x10, 0x08, 0x20, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01,
            0x01, 0x01,
        ],
        // `-` 45 → 62: +17; digits +4; `A` −65; `_` 95 → 63: −32 (index 5 | 8); `a` −71.
        offsets: [0, 0, 17, 4, -65, -65, -71, -71, 0, 0, 0, 0, 0, -32, 0, 0],
        odd_one: b'_',
    };

    /// # Safety
    /// With `avx2`, the CPU must have AVX2.
    #[target_feature(enable = "ssse3")]
    pub(super) unsafe fn decode(
        text: &[u8],
        alphabet: Alphabet,
        out: &mut [u8],
        avx2: bool,
    ) -> Option<usize> {
        let (tables, text) = match alphabet {
            Alphabet::Standard => (&STANDARD, strip_padding(text)?),
            Alphabet::UrlSafe => (&URL_SAFE, text),
        };
        let decoded_len = match text.len() % 4 {
            0 => text.len() / 4 * 3,
            1 => return None,
            partial => text.len() / 4 * 3 + partial - 1,
        };
        // With AVX2, 32 characters a step as long as 32 are left; then 16.
        let (done, mut at, mut classes) = if avx2 {
            // SAFETY: the caller says the CPU has AVX2.
            unsafe { super::avx2::steps(tables, text, out)? }
        } else {
            (0, 0, _mm_setzero_si128())
        };
        let text = text.get(done..)?;
        let steps = Steps::new(tables);
        let mut step = |characters: [u8; 16], at: usize| -> Option<()> {
            let (bytes, step_classes) = steps.decode(bytemuck::cast(characters));
            classes = _mm_or_si128(classes, step_classes);
            let bytes: [u8; 16] = bytemuck::cast(bytes);
            out.get_mut(at..at + 16)?.copy_from_slice(&bytes);
            Some(())
        };
        let (chunks, tail) = text.as_chunks::<16>();
        for chunk in chunks {
            step(*chunk, at)?;
            at += 12;
        }
        if !tail.is_empty() {
            let mut padded = [b'A'; 16];
            padded.get_mut(..tail.len())?.copy_from_slice(tail);
            step(padded, at)?;
        }
        // The steps' verdicts are gathered and looked at once: valid text is the case worth a
        // straight line.
        let valid = _mm_cmpeq_epi8(classes, _mm_setzero_si128());
        (_mm_movemask_epi8(valid) == 0xffff).then_some(decoded_len)
    }

    /// The text without one or two final `=`, which must then complete a quantum of four.
    fn strip_padding(text: &[u8]) -> Option<&[u8]> {
        match text {
            [rest @ .., b'=', b'='] if text.len().is_multiple_of(4) => Some(rest),
            [rest @ .., b'='] if text.len().is_multiple_of(4) => Some(rest),
            _ => Some(text),
        }
        .filter(|rest| !rest.ends_with(b"="))
    }

    /// The tables as registers.
    struct Steps {
        invalid_low: __m128i,
        invalid_high: __m128i,
        offsets: __m128i,
        odd_one: __m128i,
    }

    impl Steps {
        #[target_feature(enable = "ssse3")]
        fn new(tables: &Tables) -> Steps {
            Steps {
                invalid_low: bytemuck::cast(tables.invalid_low),
                invalid_high: bytemuck::cast(tables.invalid_high),
                offsets: bytemuck::cast(tables.offsets),
                odd_one: _mm_set1_epi8(tables.odd_one as i8),
            }
        }

        /// The 12 bytes of 16 characters (in the low 12 of the result), and the characters' classes:
        /// non-zero where a character is not in the alphabet.
        #[inline]
        #[target_feature(enable = "ssse3")]
        fn decode(&self, characters: __m128i) -> (__m128i, __m128i) {
            let nibble = _mm_set1_epi8(0x0f);
            let high = _mm_and_si128(_mm_srli_epi32::<4>(characters), nibble);
            let low = _mm_and_si128(characters, nibble);
            // Bytes from 0x80 have high nibbles 8–15, all of class 0x01, and `pshufb` looks up only
            // the four nibble bits because both indices were masked.
            let classes = _mm_and_si128(
                _mm_shuffle_epi8(self.invalid_low, low),
                _mm_shuffle_epi8(self.invalid_high, high),
            );
            let odd_one = _mm_and_si128(_mm_cmpeq_epi8(characters, self.odd_one), _mm_set1_epi8(8));
            let offset = _mm_shuffle_epi8(self.offsets, _mm_or_si128(high, odd_one));
            let sextets = _mm_add_epi8(characters, offset);
            // Within each 32-bit lane: a·64 + b and c·64 + d, then (a·64 + b)·4096 + c·64 + d, whose
            // three low bytes, most significant first, are the decoded bytes.
            let pairs = _mm_maddubs_epi16(sextets, _mm_set1_epi32(0x0140_0140));
            let triples = _mm_madd_epi16(pairs, _mm_set1_epi32(0x0001_1000));
            let order: __m128i = bytemuck::cast([
                2u8, 1, 0, 6, 5, 4, 10, 9, 8, 14, 13, 12, 0x80, 0x80, 0x80, 0x80,
            ]);
            (_mm_shuffle_epi8(triples, order), classes)
        }
    }
}

/// The same steps as `ssse3`, 32 characters at a time in two 16-byte lanes.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use core::arch::x86_64::{
        __m128i, __m256i, _mm_or_si128, _mm256_add_epi8, _mm256_and_si256, _mm256_castsi256_si128,
        _mm256_cmpeq_epi8, _mm256_extracti128_si256, _mm256_madd_epi16, _mm256_maddubs_epi16,
        _mm256_or_si256, _mm256_set1_epi8, _mm256_set1_epi32, _mm256_setzero_si256,
        _mm256_shuffle_epi8, _mm256_srli_epi32,
    };

    use super::ssse3::Tables;

    /// Decodes the whole 32-character chunks of `text` into `out`; returns the characters consumed,
    /// the bytes written (12 per 16 characters) and the characters' classes folded to 16 bytes.
    #[target_feature(enable = "avx2")]
    pub(super) fn steps(
        tables: &Tables,
        text: &[u8],
        out: &mut [u8],
    ) -> Option<(usize, usize, __m128i)> {
        let both = |table: [u8; 16]| -> __m256i { bytemuck::cast([table, table]) };
        let invalid_low = both(tables.invalid_low);
        let invalid_high = both(tables.invalid_high);
        let offsets = both(bytemuck::cast(tables.offsets));
        let odd_one = _mm256_set1_epi8(tables.odd_one as i8);
        let order = both([
            2, 1, 0, 6, 5, 4, 10, 9, 8, 14, 13, 12, 0x80, 0x80, 0x80, 0x80,
        ]);
        let nibble = _mm256_set1_epi8(0x0f);

        let mut classes = _mm256_setzero_si256();
        let (chunks, _) = text.as_chunks::<32>();
        let mut at = 0;
        for chunk in chunks {
            let characters: __m256i = bytemuck::cast(*chunk);
            let high = _mm256_and_si256(_mm256_srli_epi32::<4>(characters), nibble);
            let low = _mm256_and_si256(characters, nibble);
            classes = _mm256_or_si256(
                classes,
                _mm256_and_si256(
                    _mm256_shuffle_epi8(invalid_low, low),
                    _mm256_shuffle_epi8(invalid_high, high),
                ),
            );
            let odd = _mm256_and_si256(_mm256_cmpeq_epi8(characters, odd_one), _mm256_set1_epi8(8));
            let offset = _mm256_shuffle_epi8(offsets, _mm256_or_si256(high, odd));
            let sextets = _mm256_add_epi8(characters, offset);
            let pairs = _mm256_maddubs_epi16(sextets, _mm256_set1_epi32(0x0140_0140));
            let triples = _mm256_madd_epi16(pairs, _mm256_set1_epi32(0x0001_1000));
            let bytes = _mm256_shuffle_epi8(triples, order);
            // Each lane holds 12 bytes then 4 zeros: the second store covers the first's zeros.
            let first: [u8; 16] = bytemuck::cast(_mm256_castsi256_si128(bytes));
            let second: [u8; 16] = bytemuck::cast(_mm256_extracti128_si256::<1>(bytes));
            out.get_mut(at..at + 16)?.copy_from_slice(&first);
            out.get_mut(at + 12..at + 28)?.copy_from_slice(&second);
            at += 24;
        }
        let folded = _mm_or_si128(
            _mm256_castsi256_si128(classes),
            _mm256_extracti128_si256::<1>(classes),
        );
        Some((chunks.len() * 32, at, folded))
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use super::*;
    use crate::uid2::wire::{STANDARD_LENIENT, URL_SAFE_LENIENT};

    const STANDARD_CHARS: &[u8] =
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const URL_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

    fn available() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("ssse3")
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    /// [`decode`], checked to give the same result with and without the AVX2 steps where the CPU has
    /// AVX2.
    fn decode_both(text: &[u8], alphabet: Alphabet, out: &mut [u8]) -> Option<usize> {
        let got = decode(text, alphabet, out);
        #[cfg(target_arch = "x86_64")]
        {
            let mut narrow = vec![0u8; out.len()];
            // SAFETY: `available()` was checked by the caller: SSSE3 is there; no AVX2 is asked for.
            let without_avx2 = unsafe { ssse3::decode(text, alphabet, &mut narrow, false) };
            assert_eq!(got, without_avx2, "with and without AVX2");
            if let Some(n) = got {
                assert_eq!(out[..n], narrow[..n], "with and without AVX2");
            }
        }
        got
    }

    /// Each of the 256 byte values at each of 48 positions among valid characters (the AVX2 step's two
    /// lanes and a 16-character step): accepted exactly when it is in the alphabet, and then decoded
    /// to its index.
    #[test]
    fn every_byte_at_every_position_agrees_with_the_alphabet() {
        if !available() {
            return;
        }
        for (alphabet, chars) in [
            (Alphabet::Standard, STANDARD_CHARS),
            (Alphabet::UrlSafe, URL_CHARS),
        ] {
            for position in 0..48 {
                for byte in 0..=255u8 {
                    let mut text = [b'A'; 48];
                    text[position] = byte;
                    let mut out = [0u8; 36 + SLACK];
                    let got = decode_both(&text, alphabet, &mut out);
                    if alphabet == Alphabet::Standard && byte == b'=' && position == 47 {
                        assert_eq!(got, Some(35), "padding");
                        continue;
                    }
                    match chars.iter().position(|&c| c == byte) {
                        Some(sextet) => {
                            assert_eq!(got, Some(36), "{alphabet:?} {byte:#x} at {position}");
                            let mut expected = [0u8; 36];
                            let bit = 6 * position;
                            for k in 0..6 {
                                if sextet >> (5 - k) & 1 == 1 {
                                    expected[(bit + k) / 8] |= 0x80 >> ((bit + k) % 8);
                                }
                            }
                            assert_eq!(out[..36], expected, "{byte:#x} at {position}");
                        }
                        None => assert_eq!(got, None, "{alphabet:?} {byte:#x} at {position}"),
                    }
                }
            }
        }
    }

    /// Random texts of every length up to 300, valid and damaged, in both alphabets, with and without
    /// padding: whatever this accepts, the lenient engine decodes to the same bytes.
    #[test]
    fn texts_decode_as_the_lenient_engine_does() {
        if !available() {
            return;
        }
        let mut rng = fastrand::Rng::with_seed(0x7474);
        let mut accepted = 0;
        for case in 0..30_000 {
            let bytes: Vec<u8> = (0..rng.usize(..=225)).map(|_| rng.u8(..)).collect();
            let (alphabet, mut text, engine) = if case % 2 == 0 {
                (
                    Alphabet::UrlSafe,
                    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes),
                    &URL_SAFE_LENIENT,
                )
            } else if case % 4 == 1 {
                (
                    Alphabet::Standard,
                    base64::engine::general_purpose::STANDARD.encode(&bytes),
                    &STANDARD_LENIENT,
                )
            } else {
                (
                    Alphabet::Standard,
                    base64::engine::general_purpose::STANDARD_NO_PAD.encode(&bytes),
                    &STANDARD_LENIENT,
                )
            };
            let mut text_bytes = std::mem::take(&mut text).into_bytes();
            match case % 7 {
                0 if !text_bytes.is_empty() => {
                    // a character replaced by any byte
                    let at = rng.usize(..text_bytes.len());
                    text_bytes[at] = rng.u8(..);
                }
                1 if !text_bytes.is_empty() => {
                    text_bytes.truncate(rng.usize(..text_bytes.len()));
                }
                2 => text_bytes.push(b'='),
                _ => {}
            }
            let mut out = vec![0u8; text_bytes.len() / 4 * 3 + 3 + SLACK];
            let got = decode_both(&text_bytes, alphabet, &mut out).map(|n| out[..n].to_vec());
            let lenient = engine.decode(&text_bytes).ok();
            if let Some(got) = got {
                accepted += 1;
                assert_eq!(
                    Some(got),
                    lenient,
                    "{alphabet:?} {:?}",
                    String::from_utf8_lossy(&text_bytes)
                );
            } else if case % 7 > 2 {
                panic!(
                    "unchanged canonical text refused: {:?}",
                    String::from_utf8_lossy(&text_bytes)
                );
            }
        }
        assert!(accepted > 15_000, "{accepted}");
    }
}
