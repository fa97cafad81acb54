//! Making tokens: a generator that writes v2/v3/v4 tokens with every field chosen (for tests, benchmarks
//! and `gen`), and the sharing sender that turns a raw UID2 into a v4 token with the caller's default
//! keyset (`SharingClient.encrypt_raw_uid_into_token`, spec §6). Pure: nonces and `now` are arguments,
//! so every token is reproducible. Depends on the sibling `wire`, `cipher` and `keys` modules, base64 and
//! thiserror.

use super::cipher::{CBC_IV_LEN, GCM_NONCE_LEN, Secret};
use super::keys::KeySet;
use super::wire::{self, IdentityScope, IdentityType, TokenVersion};

/// Why a token could not be made.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum EncryptError {
    #[error("keys not initialized")]
    NotInitialized,
    #[error(
        "no keys available or all keys have expired; refresh the latest keys from the UID2 service"
    )]
    KeysNotSynced,
    #[error("no active master key (master_keyset_id) at this time")]
    NotAuthorizedForMasterKey,
    #[error("no active key in the default keyset (default_keyset_id) at this time")]
    NotAuthorizedForKey,
    #[error("the key set has no caller_site_id, so the token's site cannot be set")]
    NoCallerSiteId,
    #[error("raw UID2 is not standard base64 of 32 or 33 bytes")]
    InvalidRawUid,
}

/// Every field of a token. `raw_uid2` is the base64 text as the SDKs take it: v2 carries the text itself,
/// v3/v4 carry its decoded bytes.
#[derive(Clone, Debug)]
pub struct TokenSpec<'a> {
    pub version: TokenVersion,
    pub raw_uid2: &'a str,
    pub scope: IdentityScope,
    pub identity_type: IdentityType,
    /// Byte 0 of a v3/v4 token; `None` writes the current operator's `scope<<4 | type<<2 | 3`.
    pub prefix_override: Option<u8>,
    pub master_key_id: u32,
    pub master_secret: &'a Secret,
    pub site_key_id: u32,
    pub site_secret: &'a Secret,
    pub site_id: i32,
    pub publisher_id: i64,
    pub client_key_id: i32,
    pub privacy_bits: i32,
    pub expires_ms: i64,
    /// v3/v4 only (v2 has no generated time).
    pub generated_ms: i64,
    pub established_ms: i64,
    /// v3/v4 only.
    pub refreshed_ms: i64,
    pub operator_site_id: i32,
    pub operator_type: u8,
    pub operator_version: i32,
    pub operator_key_id: i32,
    /// The master layer's nonce: the first 12 bytes for GCM, all 16 as the CBC IV of v2.
    pub master_nonce: [u8; 16],
    /// The site/identity layer's nonce, likewise.
    pub site_nonce: [u8; 16],
}

fn gcm_nonce(n: &[u8; 16]) -> [u8; GCM_NONCE_LEN] {
    let mut out = [0u8; GCM_NONCE_LEN];
    out.copy_from_slice(&n[..GCM_NONCE_LEN]);
    out
}

/// Writes the token described by `spec`.
///
/// # Errors
/// [`EncryptError::InvalidRawUid`] when a v3/v4 raw UID2 is not standard base64 (v2 carries any text).
pub fn generate(spec: &TokenSpec<'_>) -> Result<String, EncryptError> {
    let bytes = match spec.version {
        TokenVersion::V2 => generate_v2(spec),
        TokenVersion::V3 | TokenVersion::V4 => {
            let raw = wire::decode_standard(spec.raw_uid2).ok_or(EncryptError::InvalidRawUid)?;
            generate_v3(spec, &raw)
        }
    };
    Ok(wire::encode_token(&bytes, spec.version))
}

fn generate_v2(spec: &TokenSpec<'_>) -> Vec<u8> {
    let id = spec.raw_uid2.as_bytes();
    let mut identity = Vec::with_capacity(20 + id.len());
    identity.extend_from_slice(&spec.site_id.to_be_bytes());
    identity.extend_from_slice(&i32::try_from(id.len()).unwrap_or(i32::MAX).to_be_bytes());
    identity.extend_from_slice(id);
    identity.extend_from_slice(&spec.privacy_bits.to_be_bytes());
    identity.extend_from_slice(&spec.established_ms.to_be_bytes());

    let mut master = Vec::with_capacity(28 + identity.len() + 16);
    master.extend_from_slice(&spec.expires_ms.to_be_bytes());
    master.extend_from_slice(&spec.site_key_id.to_be_bytes());
    master.extend_from_slice(&spec.site_nonce);
    spec.site_secret
        .cbc_seal(&spec.site_nonce, &identity, &mut master);

    let mut token = Vec::with_capacity(1 + 4 + CBC_IV_LEN + master.len() + 16);
    token.push(wire::V2_VERSION_BYTE);
    token.extend_from_slice(&spec.master_key_id.to_be_bytes());
    token.extend_from_slice(&spec.master_nonce);
    spec.master_secret
        .cbc_seal(&spec.master_nonce, &master, &mut token);
    token
}

fn generate_v3(spec: &TokenSpec<'_>, raw_uid: &[u8]) -> Vec<u8> {
    let mut site = Vec::with_capacity(36 + raw_uid.len());
    site.extend_from_slice(&spec.site_id.to_be_bytes());
    site.extend_from_slice(&spec.publisher_id.to_be_bytes());
    site.extend_from_slice(&spec.client_key_id.to_be_bytes());
    site.extend_from_slice(&spec.privacy_bits.to_be_bytes());
    site.extend_from_slice(&spec.established_ms.to_be_bytes());
    site.extend_from_slice(&spec.refreshed_ms.to_be_bytes());
    site.extend_from_slice(raw_uid);

    let mut master = Vec::with_capacity(33 + 28 + site.len());
    master.extend_from_slice(&spec.expires_ms.to_be_bytes());
    master.extend_from_slice(&spec.generated_ms.to_be_bytes());
    master.extend_from_slice(&spec.operator_site_id.to_be_bytes());
    master.push(spec.operator_type);
    master.extend_from_slice(&spec.operator_version.to_be_bytes());
    master.extend_from_slice(&spec.operator_key_id.to_be_bytes());
    master.extend_from_slice(&spec.site_key_id.to_be_bytes());
    spec.site_secret
        .gcm_seal(&gcm_nonce(&spec.site_nonce), &site, &mut master);

    let mut token = Vec::with_capacity(6 + 28 + master.len());
    token.push(
        spec.prefix_override
            .unwrap_or_else(|| wire::encode_prefix(spec.scope, spec.identity_type)),
    );
    token.push(match spec.version {
        TokenVersion::V3 => wire::V3_VERSION_BYTE,
        _ => wire::V4_VERSION_BYTE,
    });
    token.extend_from_slice(&spec.master_key_id.to_be_bytes());
    spec.master_secret
        .gcm_seal(&gcm_nonce(&spec.master_nonce), &master, &mut token);
    token
}

/// The identity type the SDK senders write for a raw UID2: Phone when the text starts with `B` or `F`
/// (a v3 raw UID's phone prefix), Email otherwise. This mirrors a known SDK quirk (spec §2.4).
pub fn sender_identity_type(raw_uid2: &str) -> IdentityType {
    match raw_uid2.as_bytes().first() {
        Some(b'B' | b'F') => IdentityType::Phone,
        _ => IdentityType::Email,
    }
}

/// The sharing sender: encrypts `raw_uid2` into a v4 token with the active master key and the active key
/// of the caller's default keyset, as `SharingClient.encrypt_raw_uid_into_token` does. Unlike the SDKs,
/// which read the wall clock for `generated`/`established`, every time here is `now_ms`.
///
/// # Errors
/// The SDK's encryption statuses, plus [`EncryptError::InvalidRawUid`] for input that is not base64 of
/// 32 or 33 bytes (the SDKs would encrypt whatever bytes decode).
pub fn encrypt_raw_uid_into_token(
    raw_uid2: &str,
    keys: Option<&KeySet>,
    now_ms: i64,
    nonces: [u8; 24],
) -> Result<String, EncryptError> {
    let keys = keys.ok_or(EncryptError::NotInitialized)?;
    if !keys.is_valid(now_ms) {
        return Err(EncryptError::KeysNotSynced);
    }
    let master = keys
        .active_master_key(now_ms)
        .ok_or(EncryptError::NotAuthorizedForMasterKey)?;
    let site = keys
        .active_default_key(now_ms)
        .ok_or(EncryptError::NotAuthorizedForKey)?;
    let site_id = keys.caller_site_id.ok_or(EncryptError::NoCallerSiteId)?;
    let raw = wire::decode_standard(raw_uid2).ok_or(EncryptError::InvalidRawUid)?;
    if !(32..=33).contains(&raw.len()) {
        return Err(EncryptError::InvalidRawUid);
    }
    let mut master_nonce = [0u8; 16];
    master_nonce[..12].copy_from_slice(&nonces[..12]);
    let mut site_nonce = [0u8; 16];
    site_nonce[..12].copy_from_slice(&nonces[12..]);
    let expires_ms = now_ms.saturating_add(keys.token_expiry_seconds.saturating_mul(1000));
    let spec = TokenSpec {
        version: TokenVersion::V4,
        raw_uid2,
        scope: keys.identity_scope,
        identity_type: sender_identity_type(raw_uid2),
        prefix_override: None,
        master_key_id: master.id,
        master_secret: &master.secret,
        site_key_id: site.id,
        site_secret: &site.secret,
        site_id,
        publisher_id: 0,
        client_key_id: 0,
        privacy_bits: 0,
        expires_ms,
        generated_ms: now_ms,
        established_ms: now_ms,
        refreshed_ms: now_ms,
        operator_site_id: 0,
        operator_type: 1,
        operator_version: 0,
        operator_key_id: 0,
        master_nonce,
        site_nonce,
    };
    Ok(wire::encode_token(
        &generate_v3(&spec, &raw),
        TokenVersion::V4,
    ))
}

/// A raw UID2 as the enricher accepts it on input (opt-outs, tokenization): standard base64 with padding
/// of 32 bytes (a v2 raw UID) or 33 bytes (v3/v4), i.e. exactly 44 characters. Returns the bytes.
pub fn parse_raw_uid2(text: &str) -> Option<Vec<u8>> {
    if text.len() != 44 {
        return None;
    }
    let bytes = base64::Engine::decode(&wire::STANDARD, text).ok()?;
    (32..=33).contains(&bytes.len()).then_some(bytes)
}
