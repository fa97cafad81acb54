//! Token text and byte layouts: the base64 variants, version detection, and a bounds-checked big-endian
//! reader/writer for the payloads. Layouts are in `../shared/spec/uid2-tokens.md` §2. Pure; depends on std
//! and base64 only.

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

/// Token format version. v3 and v4 share one byte layout; v4 is written in base64url.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokenVersion {
    V2,
    V3,
    V4,
}

impl TokenVersion {
    /// The number the SDKs report as `advertisingTokenVersion` (Java/.NET: 2, 3, 4).
    pub const fn number(self) -> u8 {
        match self {
            TokenVersion::V2 => 2,
            TokenVersion::V3 => 3,
            TokenVersion::V4 => 4,
        }
    }
}

/// UID2 or EUID (`identity_scope` in the key JSON, bit 4 of a v3/v4 token's first byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IdentityScope {
    Uid2,
    Euid,
}

impl IdentityScope {
    pub const fn as_str(self) -> &'static str {
        match self {
            IdentityScope::Uid2 => "UID2",
            IdentityScope::Euid => "EUID",
        }
    }
    pub(crate) const fn bit(self) -> u8 {
        match self {
            IdentityScope::Uid2 => 0,
            IdentityScope::Euid => 1,
        }
    }
}

/// Email or phone (bits 2–3 of a v3/v4 token's first byte; v2 tokens carry none).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IdentityType {
    Email,
    Phone,
}

impl IdentityType {
    pub const fn as_str(self) -> &'static str {
        match self {
            IdentityType::Email => "email",
            IdentityType::Phone => "phone",
        }
    }
}

/// Byte 1 of a v3 token.
pub const V3_VERSION_BYTE: u8 = 112;
/// Byte 1 of a v4 token.
pub const V4_VERSION_BYTE: u8 = 128;
/// Byte 0 of a v2 token.
pub const V2_VERSION_BYTE: u8 = 2;

/// Scope and type encoded in byte 0 of a v3/v4 token. The low two bits are not checked: the cross-SDK
/// vector has `0x00` there (spec §2.1).
pub fn decode_prefix(b0: u8) -> (IdentityScope, IdentityType) {
    let scope = if (b0 >> 4) & 1 == 1 {
        IdentityScope::Euid
    } else {
        IdentityScope::Uid2
    };
    // Java, .NET and Python all treat any non-zero type value as Phone.
    let kind = if (b0 & 0x0f) >> 2 == 0 {
        IdentityType::Email
    } else {
        IdentityType::Phone
    };
    (scope, kind)
}

/// Byte 0 as the current operator writes it: `scope << 4 | type << 2 | 3`, so the second base64
/// character of the token equals the version digit.
pub const fn encode_prefix(scope: IdentityScope, kind: IdentityType) -> u8 {
    let t = match kind {
        IdentityType::Email => 0,
        IdentityType::Phone => 1,
    };
    (scope.bit() << 4) | (t << 2) | 0b11
}

// Java's and Python's decoders accept a missing `=` and ignore non-zero trailing bits; so do we, or a
// tampered last character would give a different status here than in the SDKs.
const LENIENT: GeneralPurposeConfig = GeneralPurposeConfig::new()
    .with_decode_padding_mode(DecodePaddingMode::Indifferent)
    .with_decode_allow_trailing_bits(true);
pub(crate) const STANDARD_LENIENT: GeneralPurpose =
    GeneralPurpose::new(&alphabet::STANDARD, LENIENT);
pub(crate) const URL_SAFE_LENIENT: GeneralPurpose =
    GeneralPurpose::new(&alphabet::URL_SAFE, LENIENT);

/// Standard base64 with padding: raw UID2s, key secrets, the API envelope, v2/v3 tokens.
pub const STANDARD: GeneralPurpose = base64::engine::general_purpose::STANDARD;
/// base64url without padding: v4 tokens.
pub const URL_SAFE_NO_PAD: GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Why a token's text could not be turned into bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DetectError {
    /// Shorter than 4 characters, or not base64 (the SDKs' INVALID_PAYLOAD).
    InvalidPayload,
    /// Decodes, but neither v2, v3 nor v4 (VERSION_NOT_SUPPORTED).
    VersionNotSupported,
}

/// Tells the version from the first four characters, exactly as every SDK does (spec §2.1): `-` or `_`
/// among them means base64url; byte 0 == 2 is v2; then byte 1 tells v3 from v4.
pub fn detect_version(token: &str) -> Result<TokenVersion, DetectError> {
    let head: [u8; 4] = token
        .as_bytes()
        .get(..4)
        .and_then(|h| h.try_into().ok())
        .ok_or(DetectError::InvalidPayload)?;
    // Java decodes the head as base64url when it holds `-` or `_` (mapping them to `+`/`/` first) and as
    // standard base64 otherwise; a table accepting both alphabets gives the same three bytes for every
    // head either path accepts, and rejects the rest (padding included: the head must give 3 bytes).
    let [a, b, c, d] = head.map(|ch| BASE64_EITHER[usize::from(ch)]);
    if [a, b, c, d].contains(&INVALID_SEXTET) {
        return Err(DetectError::InvalidPayload);
    }
    let header = [(a << 2) | (b >> 4), (b << 4) | (c >> 2), (c << 6) | d];
    if header[0] == V2_VERSION_BYTE {
        Ok(TokenVersion::V2)
    } else if header[1] == V3_VERSION_BYTE {
        Ok(TokenVersion::V3)
    } else if header[1] == V4_VERSION_BYTE {
        Ok(TokenVersion::V4)
    } else {
        Err(DetectError::VersionNotSupported)
    }
}

/// The scope a v3 or v4 token declares in its first byte, read as [`detect_version`] reads the head;
/// `None` for a v2 token (which declares none) and for anything that is not a token.
pub fn declared_scope(token: &str) -> Option<IdentityScope> {
    match detect_version(token).ok()? {
        TokenVersion::V2 => None,
        TokenVersion::V3 | TokenVersion::V4 => {
            let [a, b] = [*token.as_bytes().first()?, *token.as_bytes().get(1)?]
                .map(|ch| BASE64_EITHER[usize::from(ch)]);
            Some(decode_prefix((a << 2) | (b >> 4)).0)
        }
    }
}

const INVALID_SEXTET: u8 = 0xff;

/// Sextet of each byte in standard base64 or base64url (`+`/`-` → 62, `/`/`_` → 63), 0xff otherwise.
const BASE64_EITHER: [u8; 256] = {
    let mut t = [INVALID_SEXTET; 256];
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut i = 0;
    while i < 64 {
        t[alphabet[i] as usize] = i as u8;
        i += 1;
    }
    t[b'-' as usize] = 62;
    t[b'_' as usize] = 63;
    t
};

/// Decodes a whole token into `out` (cleared first). v2/v3 are standard base64; v4 is base64url, but a v4
/// token written in standard base64 is accepted too, as the SDKs map `-`/`_` first (spec §2.1).
pub fn decode_token(
    token: &str,
    version: TokenVersion,
    out: &mut Vec<u8>,
) -> Result<(), DetectError> {
    out.clear();
    let text = token.as_bytes();
    let ok = match version {
        TokenVersion::V2 | TokenVersion::V3 => STANDARD_LENIENT.decode_vec(text, out).is_ok(),
        TokenVersion::V4 => {
            URL_SAFE_LENIENT.decode_vec(text, out).is_ok() || {
                out.clear();
                let mapped: Vec<u8> = text
                    .iter()
                    .map(|&c| match c {
                        b'-' => b'+',
                        b'_' => b'/',
                        c => c,
                    })
                    .collect();
                STANDARD_LENIENT.decode_vec(&mapped, out).is_ok()
            }
        }
    };
    if ok {
        Ok(())
    } else {
        Err(DetectError::InvalidPayload)
    }
}

/// Encodes token bytes as the SDKs write them for `version`.
pub fn encode_token(bytes: &[u8], version: TokenVersion) -> String {
    match version {
        TokenVersion::V2 | TokenVersion::V3 => STANDARD.encode(bytes),
        TokenVersion::V4 => URL_SAFE_NO_PAD.encode(bytes),
    }
}

/// Decodes standard base64 (padding optional, as in Java), used for raw UID2s and key secrets.
pub fn decode_standard(text: &str) -> Option<Vec<u8>> {
    STANDARD_LENIENT.decode(text.as_bytes()).ok()
}

/// A bounds-checked big-endian cursor. Every read returns `None` past the end, so a short or hostile
/// payload becomes INVALID_PAYLOAD instead of a panic.
pub struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, pos: 0 }
    }
    pub fn position(&self) -> usize {
        self.pos
    }
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let slice = self.bytes.get(self.pos..end)?;
        self.pos = end;
        Some(slice)
    }
    pub fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
    pub fn u8(&mut self) -> Option<u8> {
        Some(self.array::<1>()?[0])
    }
    pub fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.array()?))
    }
    pub fn i32(&mut self) -> Option<i32> {
        Some(i32::from_be_bytes(self.array()?))
    }
    pub fn i64(&mut self) -> Option<i64> {
        Some(i64::from_be_bytes(self.array()?))
    }
    pub fn rest(&mut self) -> &'a [u8] {
        let rest = self.bytes.get(self.pos..).unwrap_or_default();
        self.pos = self.bytes.len();
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_scope_reads_the_first_byte_of_v3_and_v4_tokens() {
        use base64::Engine as _;
        let engines = [
            base64::engine::general_purpose::STANDARD,
            base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ];
        for scope in [IdentityScope::Uid2, IdentityScope::Euid] {
            for kind in [IdentityType::Email, IdentityType::Phone] {
                for (version, engine) in [V3_VERSION_BYTE, V4_VERSION_BYTE]
                    .into_iter()
                    .zip(engines.iter())
                {
                    let head = [encode_prefix(scope, kind), version, 0xab, 0xcd, 0xef, 0x01];
                    assert_eq!(declared_scope(&engine.encode(head)), Some(scope));
                }
            }
        }
        // v2 declares no scope; neither does a non-token.
        let v2 = base64::engine::general_purpose::STANDARD.encode([V2_VERSION_BYTE, 1, 2, 3, 4, 5]);
        assert_eq!(declared_scope(&v2), None);
        assert_eq!(declared_scope("not a token"), None);
        assert_eq!(declared_scope(""), None);
    }

    #[test]
    fn base64url_vectors_shared_by_the_sdks() {
        // Java EncryptionV4Tests / Python tests (spec §1).
        let cases: [(&[u8], &str); 3] = [
            (&[0xff, 0xe0, 0x88, 0xff, 0xee, 0x99, 0x99], "_-CI_-6ZmQ"),
            (
                &[0xff, 0xe0, 0x88, 0xff, 0xee, 0x99, 0x99, 0x99],
                "_-CI_-6ZmZk",
            ),
            (&[0xff, 0xe0, 0x88, 0xff, 0xee, 0x99], "_-CI_-6Z"),
        ];
        for (bytes, text) in cases {
            assert_eq!(URL_SAFE_NO_PAD.encode(bytes), text);
            let mut out = Vec::new();
            URL_SAFE_LENIENT.decode_vec(text, &mut out).unwrap();
            assert_eq!(out, bytes);
        }
    }

    #[test]
    fn version_detection_follows_the_first_four_characters() {
        assert_eq!(detect_version("AgAAAAN6"), Ok(TokenVersion::V2));
        assert_eq!(detect_version("A3AAAABl"), Ok(TokenVersion::V3));
        assert_eq!(detect_version("A4AAAABl"), Ok(TokenVersion::V4));
        assert_eq!(detect_version("AIAAAACk"), Ok(TokenVersion::V4));
        assert_eq!(detect_version("AHAAAACk"), Ok(TokenVersion::V3));
        assert_eq!(detect_version("E4AAAABl"), Ok(TokenVersion::V4));
        assert_eq!(detect_version("abc"), Err(DetectError::InvalidPayload));
        assert_eq!(detect_version(""), Err(DetectError::InvalidPayload));
        assert_eq!(detect_version("!!!!AAAA"), Err(DetectError::InvalidPayload));
        assert_eq!(
            detect_version("AAAAAAAA"),
            Err(DetectError::VersionNotSupported)
        );
        // A multi-byte character straddling the fourth byte must not panic.
        assert_eq!(detect_version("AAé"), Err(DetectError::InvalidPayload));
    }

    #[test]
    fn prefix_bits_round_trip_and_ignore_low_bits() {
        for scope in [IdentityScope::Uid2, IdentityScope::Euid] {
            for kind in [IdentityType::Email, IdentityType::Phone] {
                assert_eq!(decode_prefix(encode_prefix(scope, kind)), (scope, kind));
            }
        }
        assert_eq!(
            decode_prefix(0x00),
            (IdentityScope::Uid2, IdentityType::Email)
        );
        assert_eq!(
            encode_prefix(IdentityScope::Uid2, IdentityType::Email),
            0x03
        );
        assert_eq!(
            encode_prefix(IdentityScope::Euid, IdentityType::Phone),
            0x17
        );
    }

    #[test]
    fn v4_in_standard_alphabet_decodes_to_the_same_bytes() {
        let bytes: Vec<u8> = (0..=255u8).collect();
        let url = URL_SAFE_NO_PAD.encode(&bytes);
        let std = STANDARD.encode(&bytes);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        decode_token(&url, TokenVersion::V4, &mut a).unwrap();
        decode_token(&std, TokenVersion::V4, &mut b).unwrap();
        assert_eq!(a, bytes);
        assert_eq!(b, bytes);
    }

    /// The table-driven head decoding agrees with decoding the head the way the SDKs do (base64url when it
    /// holds `-` or `_`, standard otherwise) on every head of the two alphabets, `=` and a stray character.
    #[test]
    fn table_head_decoding_matches_the_sdk_rule() {
        let chars: Vec<u8> = b"AEIgw4/+_-=*".to_vec();
        for &a in &chars {
            for &b in &chars {
                for &c in &chars {
                    for &d in &chars {
                        let head = [a, b, c, d];
                        let engine = if head.iter().any(|&x| x == b'-' || x == b'_') {
                            &URL_SAFE_LENIENT
                        } else {
                            &STANDARD_LENIENT
                        };
                        let mut mapped = head;
                        if head.iter().any(|&x| x == b'-' || x == b'_') {
                            mapped = head.map(|x| match x {
                                b'-' => b'+',
                                b'_' => b'/',
                                x => x,
                            });
                        }
                        let mut out = [0u8; 3];
                        let sdk = match (
                            engine.decode_slice(head, &mut out),
                            STANDARD_LENIENT.decode_slice(mapped, &mut out),
                        ) {
                            (Ok(3), _) | (_, Ok(3)) => {
                                if out[0] == V2_VERSION_BYTE {
                                    Ok(TokenVersion::V2)
                                } else if out[1] == V3_VERSION_BYTE {
                                    Ok(TokenVersion::V3)
                                } else if out[1] == V4_VERSION_BYTE {
                                    Ok(TokenVersion::V4)
                                } else {
                                    Err(DetectError::VersionNotSupported)
                                }
                            }
                            _ => Err(DetectError::InvalidPayload),
                        };
                        let text = std::str::from_utf8(&head).unwrap();
                        assert_eq!(detect_version(text), sdk, "{text}");
                    }
                }
            }
        }
    }

    #[test]
    fn reader_never_reads_past_the_end() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.u32(), None);
        assert_eq!(r.u8(), Some(1));
        assert_eq!(r.take(usize::MAX), None);
        assert_eq!(r.rest(), &[2, 3]);
        assert_eq!(r.u8(), None);
    }
}
