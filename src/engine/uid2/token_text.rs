//! Decoding a token's base64 text with AVX2, 32 characters a step, for [`super::decrypt`]. Pure;
//! depends on `core::arch` and bytemuck.
//!
//! # Why not only `base64-simd`
//! A v4 token is about 218 characters. `base64-simd` runs its vector loop in steps of 32 and leaves the
//! rest (26 characters of a v4 token) to a scalar loop that cost nearly as much as the vector part: ~455
//! instructions a token in all, ~225 here (callgrind). Here the last step is padded with `A` (a zero
//! sextet), whose bits land only in bytes past the decoded length.
//! The method is Muła and Lemire's ("Faster Base64 Encoding and Decoding Using AVX2 Instructions",
//! 2018): a character is valid when the table entries of its two nibbles share no bit, the sextet is
//! the character plus an offset chosen by its high nibble, and two multiply-adds pack four sextets into
//! three bytes.
//!
//! The tables were derived for each alphabet from the valid characters per high nibble (the comments
//! at `STANDARD` and `URL_SAFE` say how). The test `every_byte_at_every_position_agrees_with_the_alphabet`
//! checks all 256 byte values at each of 48 positions (both lanes of a whole step and a padded last
//! step), and `texts_decode_as_the_lenient_engine_does` whole texts, valid and damaged.
//!
//! What this accepts decodes exactly as the SDK-compatible lenient decoder would: non-zero trailing bits
//! are ignored, padding is optional for the standard alphabet and absent for base64url. Anything else
//! (a character outside the alphabet, a misplaced `=`, a length of 4k+1) returns `None`, and the caller
//! takes its general path; so do CPUs without AVX2.

/// Which of the two base64 alphabets the text is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alphabet {
    /// `+` and `/`, optional `=` padding: v2 and v3 tokens.
    Standard,
    /// `-` and `_`, no padding: v4 tokens.
    UrlSafe,
}

/// How much longer than the decoded bytes `out` must be: every step stores 2 × 16 bytes of which 24
/// count.
pub const SLACK: usize = 32;

/// Decodes `text` into `out` and returns the decoded length, or `None` if the text is not plain base64
/// of `alphabet`, if `out` is too short (it needs the decoded length plus [`SLACK`]), or if the CPU
/// lacks AVX2. `out` may have been written to either way.
pub fn decode(text: &[u8], alphabet: Alphabet, out: &mut [u8]) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 was detected just above.
            return unsafe { avx2::decode(text, alphabet, out) };
        }
    }
    let _ = (text, alphabet, out);
    None
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use core::arch::x86_64::{
        __m256i, _mm256_add_epi8, _mm256_and_si256, _mm256_castsi256_si128, _mm256_cmpeq_epi8,
        _mm256_extracti128_si256, _mm256_madd_epi16, _mm256_maddubs_epi16, _mm256_movemask_epi8,
        _mm256_or_si256, _mm256_set1_epi8, _mm256_set1_epi32, _mm256_setzero_si256,
        _mm256_shuffle_epi8, _mm256_srli_epi32,
    };

    use super::Alphabet;

    /// The tables of one alphabet.
    struct Tables {
        /// Per low nibble, the classes of high nibble for which it is invalid (one bit per class).
        invalid_low: [u8; 16],
        /// Per high nibble, its class bit (every bit of `invalid_low` that applies to it).
        invalid_high: [u8; 16],
        /// Per offset index, what to add to a character to get its sextet. The index is the high
        /// nibble, or `high | 8` for the one character (`/` or `_`) whose offset differs from the
        /// other valid characters of its high nibble; `8 | 2` and `8 | 5` are not high nibbles of
        /// any valid character.
        offsets: [i8; 16],
        /// The character that takes index `high | 8`.
        odd_one: u8,
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

    #[target_feature(enable = "avx2")]
    pub(super) fn decode(text: &[u8], alphabet: Alphabet, out: &mut [u8]) -> Option<usize> {
        let (tables, text) = match alphabet {
            Alphabet::Standard => (&STANDARD, strip_padding(text)?),
            Alphabet::UrlSafe => (&URL_SAFE, text),
        };
        let decoded_len = match text.len() % 4 {
            0 => text.len() / 4 * 3,
            1 => return None,
            partial => text.len() / 4 * 3 + partial - 1,
        };
        // `pshufb` looks up within each 16-byte lane, so each table is in both lanes.
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
        let mut step = |characters: [u8; 32], at: usize| -> Option<()> {
            let characters: __m256i = bytemuck::cast(characters);
            let high = _mm256_and_si256(_mm256_srli_epi32::<4>(characters), nibble);
            let low = _mm256_and_si256(characters, nibble);
            // A character is valid when the classes of its two nibbles share no bit. Bytes from 0x80
            // have high nibbles 8–15, all of class 0x01; both indices are masked to four bits.
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
            // Within each 32-bit lane: a·64 + b and c·64 + d, then (a·64 + b)·4096 + c·64 + d, whose
            // three low bytes, most significant first, are the decoded bytes.
            let pairs = _mm256_maddubs_epi16(sextets, _mm256_set1_epi32(0x0140_0140));
            let triples = _mm256_madd_epi16(pairs, _mm256_set1_epi32(0x0001_1000));
            let bytes = _mm256_shuffle_epi8(triples, order);
            // Each 16-byte lane holds 12 bytes then 4 zeros: the second store covers the first's zeros.
            let first: [u8; 16] = bytemuck::cast(_mm256_castsi256_si128(bytes));
            let second: [u8; 16] = bytemuck::cast(_mm256_extracti128_si256::<1>(bytes));
            out.get_mut(at..at + 16)?.copy_from_slice(&first);
            out.get_mut(at + 12..at + 28)?.copy_from_slice(&second);
            Some(())
        };
        let (chunks, tail) = text.as_chunks::<32>();
        let mut at = 0;
        for chunk in chunks {
            step(*chunk, at)?;
            at += 24;
        }
        if !tail.is_empty() {
            let mut padded = [b'A'; 32];
            padded.get_mut(..tail.len())?.copy_from_slice(tail);
            step(padded, at)?;
        }
        // The steps' verdicts are gathered and looked at once: valid text is the case worth a
        // straight line.
        let valid = _mm256_cmpeq_epi8(classes, _mm256_setzero_si256());
        (_mm256_movemask_epi8(valid) == -1).then_some(decoded_len)
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
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use super::*;
    use crate::engine::uid2::wire::{STANDARD_LENIENT, URL_SAFE_LENIENT};

    const STANDARD_CHARS: &[u8] =
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const URL_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

    fn available() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx2")
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    /// Each of the 256 byte values at each of 48 positions among valid characters (both lanes of a whole
    /// step, and a last step padded with `A`): accepted exactly when it is in the alphabet, and then decoded
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
                    let got = decode(&text, alphabet, &mut out);
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
            let got = decode(&text_bytes, alphabet, &mut out).map(|n| out[..n].to_vec());
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
