//! Outbound tokenization, the sharing sender's side: raw UID2s at configured JSON pointers become v4
//! tokens made with the sender's default keyset (`SharingClient.encrypt_raw_uid_into_token`,
//! `../shared/spec/uid2-tokens.md` §6), so that data can leave the DSP without a raw UID2 in it.
//!
//! Every other byte stays as it came (the string is swapped in place; see `formats::event`). A record
//! with no raw UID2 at those places passes unchanged (`no_raw_uid2`); a string there that is not a raw
//! UID2 is [`Malformed`] (`invalid_raw_uid2`, for the dead-letter topic) rather than passed on, since it
//! may be a raw identifier in another spelling. Keys that cannot encrypt are a [`TokenizeError::Keys`],
//! never a pass-through: the caller must hold the record (and stop being ready) until keys can encrypt.
//!
//! Pure: keys, `now` and the nonces are arguments. Depends on the token engine, `formats::event`, the
//! `Malformed` type of `enrich`, and thiserror.

use std::borrow::Cow;
use std::ops::Range;

use crate::engine::enrich::Malformed;
use crate::engine::formats::event::{self, JsonPointer};
use crate::engine::uid2::KeySet;
use crate::engine::uid2::encrypt::{self, EncryptError};

/// The default place of the raw UID2 in an outbound event.
pub const DEFAULT_POINTER: &str = "/uid2";

/// What a stage does with its records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Direction {
    /// Decrypt tokens and add the result (`enrich::enrich`).
    #[default]
    Enrich,
    /// Replace raw UID2s by tokens ([`tokenize`]).
    Tokenize,
}

/// Keys and time for one record.
#[derive(Clone, Copy, Debug)]
pub struct TokenizeContext<'a> {
    /// A sharing key set (`/v2/key/sharing`) with `default_keyset_id`, `master_keyset_id` and
    /// `caller_site_id`.
    pub keys: Option<&'a KeySet>,
    pub now_ms: i64,
}

/// Where raw UID2s are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenizePolicy {
    pub pointers: Vec<JsonPointer>,
}

impl Default for TokenizePolicy {
    /// `/uid2`.
    fn default() -> TokenizePolicy {
        TokenizePolicy {
            pointers: JsonPointer::parse(DEFAULT_POINTER).into_iter().collect(),
        }
    }
}

/// What became of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokenizeStatus {
    /// At least one raw UID2 was replaced by a token.
    Tokenized,
    /// No raw UID2 at any pointer: the record passes byte for byte.
    NoRawUid2,
}

impl TokenizeStatus {
    /// The `uid2-status` header value.
    pub const fn as_str(self) -> &'static str {
        match self {
            TokenizeStatus::Tokenized => "tokenized",
            TokenizeStatus::NoRawUid2 => "no_raw_uid2",
        }
    }
}

/// A tokenized record.
#[derive(Clone, Debug)]
pub struct Tokenized<'a> {
    /// Borrowed (byte-identical) when nothing was replaced.
    pub output: Cow<'a, [u8]>,
    pub status: TokenizeStatus,
    /// Raw UID2 strings replaced.
    pub replaced: usize,
}

/// Why a record was not tokenized.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenizeError {
    /// The record cannot be tokenized as it is: dead-letter it.
    #[error(transparent)]
    Malformed(#[from] Malformed),
    /// The keys cannot encrypt now: hold the record and wait for keys (never emit it raw).
    #[error("the keys cannot encrypt: {0}")]
    Keys(EncryptError),
}

/// Replaces every raw UID2 string at `policy.pointers` with a fresh v4 token. `nonces` supplies the 24
/// random bytes of each token (12 for each GCM layer).
///
/// # Errors
/// [`TokenizeError::Malformed`] when the input is not a JSON object (the JSON reasons of bid requests) or
/// a string at a pointer is not a raw UID2 (`invalid_raw_uid2`); [`TokenizeError::Keys`] when there is a
/// raw UID2 and the keys cannot encrypt it.
pub fn tokenize<'a>(
    payload: &'a [u8],
    ctx: &TokenizeContext<'_>,
    policy: &TokenizePolicy,
    nonces: &mut dyn FnMut() -> [u8; 24],
) -> Result<Tokenized<'a>, TokenizeError> {
    // No enrichment member is involved; an empty name matches no member that matters here.
    let scan = event::scan(payload, &policy.pointers, "").map_err(Malformed::from)?;
    let mut edits: Vec<(Range<usize>, String)> = Vec::new();
    for found in &scan.found {
        if found.text.is_empty() || edits.iter().any(|(span, _)| *span == found.span) {
            continue;
        }
        if encrypt::parse_raw_uid2(&found.text).is_none() {
            let pointer = policy
                .pointers
                .get(found.pointer_index)
                .map_or("?", JsonPointer::as_str);
            // The value itself is never put in the detail: it may be a raw identifier.
            return Err(Malformed {
                reason: "invalid_raw_uid2",
                detail: format!(
                    "the string at {pointer} ({} characters) is not a raw UID2 (standard base64 of 32 or 33 bytes, 44 characters)",
                    found.text.chars().count()
                ),
            }
            .into());
        }
        let token =
            encrypt::encrypt_raw_uid_into_token(&found.text, ctx.keys, ctx.now_ms, nonces())
                .map_err(|e| match e {
                    EncryptError::InvalidRawUid => TokenizeError::Malformed(Malformed {
                        reason: "invalid_raw_uid2",
                        detail: e.to_string(),
                    }),
                    other => TokenizeError::Keys(other),
                })?;
        edits.push((found.span.clone(), token));
    }
    if edits.is_empty() {
        return Ok(Tokenized {
            output: Cow::Borrowed(payload),
            status: TokenizeStatus::NoRawUid2,
            replaced: 0,
        });
    }
    let refs: Vec<(Range<usize>, &str)> = edits
        .iter()
        .map(|(span, token)| (span.clone(), token.as_str()))
        .collect();
    let output = event::replace_strings(payload, &refs).ok_or_else(|| Malformed {
        reason: "malformed_json",
        detail: "string positions outside the input".into(),
    })?;
    Ok(Tokenized {
        output: Cow::Owned(output),
        status: TokenizeStatus::Tokenized,
        replaced: edits.len(),
    })
}

/// Whether `keys` can make tokens at `now_ms`: loaded, not expired, with an active master key, an active
/// key in the default keyset and a caller site id. Answers exactly as a real encryption would, because
/// it is one (of a fixed raw UID2, with zero nonces, thrown away).
///
/// # Errors
/// The [`EncryptError`] the sharing sender would return.
pub fn can_encrypt(keys: Option<&KeySet>, now_ms: i64) -> Result<(), EncryptError> {
    const PROBE: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    encrypt::encrypt_raw_uid_into_token(PROBE, keys, now_ms, [0; 24]).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::uid2::{ClientMode, Status, decrypt};

    const NOW: i64 = 1_767_225_600_000;
    const RAW: &str = "ywsvDO4i2mFAD5Y0Uc5+FTWAfTdhgFIijeNrS3fZ7q0=";

    fn keys(default_keyset: bool) -> KeySet {
        let default = if default_keyset {
            r#""default_keyset_id":99999,"#
        } else {
            ""
        };
        let json = format!(
            r#"{{"body":{{"caller_site_id":9000,"master_keyset_id":9999999,{default}"token_expiry_seconds":"2592000","identity_scope":"UID2","keys":[
            {{"id":1,"created":1700000000,"activates":1700000000,"expires":1900000000,"secret":"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=","keyset_id":9999999}},
            {{"id":2,"created":1700000000,"activates":1700000000,"expires":1900000000,"secret":"AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=","keyset_id":99999}}]}},"status":"success"}}"#
        );
        KeySet::parse_json(json.as_bytes()).unwrap()
    }

    fn counter() -> impl FnMut() -> [u8; 24] {
        let mut n = 0u8;
        move || {
            n = n.wrapping_add(1);
            [n; 24]
        }
    }

    #[test]
    fn replaces_raw_uid2s_and_they_decrypt_back() {
        let k = keys(true);
        let ctx = TokenizeContext {
            keys: Some(&k),
            now_ms: NOW,
        };
        let policy = TokenizePolicy {
            pointers: vec![
                JsonPointer::parse("/uid2").unwrap(),
                JsonPointer::parse("/to/0/id").unwrap(),
            ],
        };
        let input = format!(r#"{{"ev": "seg", "uid2":"{RAW}","to":[{{"id":"{RAW}"}}],"n":1.50}}"#);
        let out = tokenize(input.as_bytes(), &ctx, &policy, &mut counter()).unwrap();
        assert_eq!(out.status, TokenizeStatus::Tokenized);
        assert_eq!(out.replaced, 2);
        let text = std::str::from_utf8(&out.output).unwrap();
        assert!(!text.contains(RAW));
        assert!(
            text.starts_with(r#"{"ev": "seg", "uid2":"A4"#) && text.ends_with(r#""}],"n":1.50}"#)
        );
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        for token in [&v["uid2"], &v["to"][0]["id"]] {
            let d = decrypt(
                token.as_str().unwrap(),
                Some(&k),
                ClientMode::Sharing,
                None,
                NOW,
            );
            assert_eq!(d.status, Status::Success);
            assert_eq!(d.raw_uid2.as_deref(), Some(RAW));
        }
    }

    #[test]
    fn no_raw_uid2_passes_and_invalid_one_is_malformed() {
        let k = keys(true);
        let ctx = TokenizeContext {
            keys: Some(&k),
            now_ms: NOW,
        };
        let policy = TokenizePolicy::default();
        for input in [
            r#"{"a":1}"#,
            r#"{"uid2":null}"#,
            r#"{"uid2":""}"#,
            r#"{"uid2":{"x":"y"}}"#,
        ] {
            let out = tokenize(input.as_bytes(), &ctx, &policy, &mut counter()).unwrap();
            assert_eq!(out.status, TokenizeStatus::NoRawUid2, "{input}");
            assert!(matches!(out.output, Cow::Borrowed(b) if b == input.as_bytes()));
        }
        for bad in [
            r#"{"uid2":"not-a-uid"}"#,
            r#"{"uid2":"ywsvDO4i2mFAD5Y0Uc5+FTWAfTdhgFIijeNrS3fZ7q0"}"#,
        ] {
            match tokenize(bad.as_bytes(), &ctx, &policy, &mut counter()) {
                Err(TokenizeError::Malformed(m)) => {
                    assert_eq!(m.reason, "invalid_raw_uid2");
                    assert!(!m.detail.contains("not-a-uid"));
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn keys_that_cannot_encrypt_are_a_keys_error() {
        let no_default = keys(false);
        assert_eq!(
            can_encrypt(Some(&no_default), NOW),
            Err(EncryptError::NotAuthorizedForKey)
        );
        assert_eq!(can_encrypt(None, NOW), Err(EncryptError::NotInitialized));
        let k = keys(true);
        assert_eq!(can_encrypt(Some(&k), NOW), Ok(()));
        assert_eq!(
            can_encrypt(Some(&k), 1_900_000_000_000),
            Err(EncryptError::KeysNotSynced)
        );
        let ctx = TokenizeContext {
            keys: Some(&no_default),
            now_ms: NOW,
        };
        let input = format!(r#"{{"uid2":"{RAW}"}}"#);
        let got = tokenize(
            input.as_bytes(),
            &ctx,
            &TokenizePolicy::default(),
            &mut counter(),
        );
        assert_eq!(
            got.unwrap_err(),
            TokenizeError::Keys(EncryptError::NotAuthorizedForKey)
        );
    }
}
