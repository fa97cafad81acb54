//! Key material and token builders shared by the integration tests: the cross-SDK test keys of
//! `../shared/spec/uid2-tokens.md` §7 (master 164, site 165, site 9000).
#![allow(dead_code)]

pub mod broker;
pub mod operator;
pub mod sdk;

use uid2_enricher::uid2::cipher::Secret;
use uid2_enricher::uid2::encrypt::{self, TokenSpec};
use uid2_enricher::uid2::{IdentityScope, IdentityType, KeySet, TokenVersion};

pub const MASTER_KEY_ID: u32 = 164;
pub const SITE_KEY_ID: u32 = 165;
pub const MASTER_SECRET_HEX: &str =
    "8b25f1ad125c24e8a5a8171226c37b5ca088b9285bada5dda810a9a4268b089b";
pub const SITE_SECRET_HEX: &str =
    "20fb07c2849afa56ca74681d83c08bd730a40b41e26ea70e6c33fe7d41181785";
pub const SITE_ID: i32 = 9000;
pub const RAW_UID2: &str = "ywsvDNINiZOVSsfkHpLpSJzXzhr6Jx9Z/4Q0+lsEUvM=";
pub const RAW_UID2_PHONE_V3: &str = "BFOsW2SkK0egqbfyiALtpti5G/cG+PcEvjkoHl56rEV8";
/// 2026-01-01T00:00:00Z.
pub const NOW: i64 = 1_767_225_600_000;
pub const DAY_MS: i64 = 86_400_000;
pub const MAX_LIFETIME_S: i64 = 3 * 86_400;

pub fn secret(hex: &str) -> Secret {
    Secret::new(hex::decode(hex).unwrap().try_into().unwrap())
}
pub fn master_secret() -> Secret {
    secret(MASTER_SECRET_HEX)
}
pub fn site_secret() -> Secret {
    secret(SITE_SECRET_HEX)
}
fn b64(hex_text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(hex::decode(hex_text).unwrap())
}

/// A `/v2/key/bidstream`-shaped body as the SDK test suites use it (Java `keyBidstreamResponse`):
/// lifetime max 3 days, skew 1800 s, sites 9000 and 2 with names.
pub fn bidstream_keys_json(scope: &str, max_lifetime_s: i64) -> String {
    format!(
        r#"{{"body":{{"max_bidstream_lifetime_seconds":{max_lifetime_s},"identity_scope":"{scope}","allow_clock_skew_seconds":1800,
        "keys":[{{"id":{MASTER_KEY_ID},"created":1609459200,"activates":1609459200,"expires":2556144000,"secret":"{m}"}},
                {{"id":{SITE_KEY_ID},"created":1609459200,"activates":1609459200,"expires":2556144000,"secret":"{s}"}}],
        "site_data":[{{"id":9000,"domain_names":["example.com","example.org","com.123.Game.App.android","123456789"]}},
                     {{"id":2,"domain_names":["example.net","example.edu"]}}],
        "unexpected_field":{{"a":[1]}}}},"status":"success"}}"#,
        m = b64(MASTER_SECRET_HEX),
        s = b64(SITE_SECRET_HEX)
    )
}

/// Writes [`bidstream_keys_json`] (UID2, the SDKs' maximum lifetime) to `path`, for a `--keys` or
/// `[keys] file` argument, and returns the path.
pub fn write_bidstream_keys(path: std::path::PathBuf) -> std::path::PathBuf {
    std::fs::write(&path, bidstream_keys_json("UID2", MAX_LIFETIME_S)).unwrap();
    path
}

/// The smallest site request carrying `token` in `user.eids` (site domain example.com, site 9000's).
pub fn site_request_with(token: &str) -> String {
    format!(
        r#"{{"id":"r1","site":{{"domain":"example.com"}},"user":{{"eids":[{{"source":"uidapi.com","uids":[{{"id":"{token}"}}]}}]}}}}"#
    )
}

/// A `/v2/key/sharing`-shaped body: master keyset 9999999, default keyset 99 holding the site key.
pub fn sharing_keys_json(scope: &str, max_lifetime_s: i64) -> String {
    format!(
        r#"{{"body":{{"caller_site_id":{SITE_ID},"master_keyset_id":9999999,"default_keyset_id":99,"token_expiry_seconds":"172800",
        "max_sharing_lifetime_seconds":{max_lifetime_s},"identity_scope":"{scope}","allow_clock_skew_seconds":1800,
        "keys":[{{"id":{MASTER_KEY_ID},"keyset_id":9999999,"created":1609459200,"activates":1609459200,"expires":2556144000,"secret":"{m}"}},
                {{"id":{SITE_KEY_ID},"keyset_id":99,"created":1609459200,"activates":1609459200,"expires":2556144000,"secret":"{s}"}}]}},
        "status":"success"}}"#,
        m = b64(MASTER_SECRET_HEX),
        s = b64(SITE_SECRET_HEX)
    )
}

pub fn bidstream_keys() -> KeySet {
    KeySet::parse_json(bidstream_keys_json("UID2", MAX_LIFETIME_S).as_bytes()).unwrap()
}
pub fn sharing_keys() -> KeySet {
    KeySet::parse_json(sharing_keys_json("UID2", MAX_LIFETIME_S).as_bytes()).unwrap()
}

/// Token parameters with sane defaults: issued an hour ago, valid for another day.
#[derive(Clone, Debug)]
pub struct Token {
    pub version: TokenVersion,
    pub raw_uid2: String,
    pub scope: IdentityScope,
    pub identity_type: IdentityType,
    pub master_key_id: u32,
    pub site_key_id: u32,
    pub master_secret: Option<Secret>,
    pub site_secret: Option<Secret>,
    pub site_id: i32,
    pub privacy_bits: i32,
    pub expires_ms: i64,
    pub generated_ms: i64,
    pub established_ms: i64,
    pub prefix_override: Option<u8>,
    pub nonce_seed: u8,
}

impl Token {
    pub fn new(version: TokenVersion) -> Token {
        Token {
            version,
            raw_uid2: RAW_UID2.to_string(),
            scope: IdentityScope::Uid2,
            identity_type: IdentityType::Email,
            master_key_id: MASTER_KEY_ID,
            site_key_id: SITE_KEY_ID,
            master_secret: None,
            site_secret: None,
            site_id: SITE_ID,
            privacy_bits: 0,
            expires_ms: NOW + DAY_MS,
            generated_ms: NOW - 3_600_000,
            established_ms: NOW - 30 * DAY_MS,
            prefix_override: None,
            nonce_seed: 1,
        }
    }
    pub fn build(&self) -> String {
        let master = self.master_secret.clone().unwrap_or_else(master_secret);
        let site = self.site_secret.clone().unwrap_or_else(site_secret);
        encrypt::generate(&TokenSpec {
            version: self.version,
            raw_uid2: &self.raw_uid2,
            scope: self.scope,
            identity_type: self.identity_type,
            prefix_override: self.prefix_override,
            master_key_id: self.master_key_id,
            master_secret: &master,
            site_key_id: self.site_key_id,
            site_secret: &site,
            site_id: self.site_id,
            publisher_id: 0,
            client_key_id: 0,
            privacy_bits: self.privacy_bits,
            expires_ms: self.expires_ms,
            generated_ms: self.generated_ms,
            established_ms: self.established_ms,
            refreshed_ms: self.generated_ms,
            operator_site_id: 0,
            operator_type: 1,
            operator_version: 0,
            operator_key_id: 0,
            master_nonce: [self.nonce_seed; 16],
            site_nonce: [self.nonce_seed.wrapping_add(1); 16],
        })
        .unwrap()
    }
}

pub const ALL_VERSIONS: [TokenVersion; 3] = [TokenVersion::V2, TokenVersion::V3, TokenVersion::V4];

/// Undoes the enricher's splice: removes the member, or a whole `ext` the enricher created, and returns
/// the result only if it is the input again (the only bytes the enricher may add).
pub fn strip_member(output: &str, member: &str, input: &str) -> String {
    // Only the bytes the enricher adds may differ: the member, or a whole `ext` it created.
    let m = format!("\"uid2_enrichment\":{member}");
    let candidates = [
        format!(",{m}"),
        m.clone(),
        format!(",\"ext\":{{{m}}}"),
        format!("\"ext\":{{{m}}}"),
    ];
    candidates
        .iter()
        .filter(|pattern| output.matches(pattern.as_str()).count() == 1)
        .map(|pattern| output.replacen(pattern.as_str(), "", 1))
        .find(|stripped| stripped == input)
        .unwrap_or_else(|| {
            panic!("removing the member does not give the input back:\n{output}\n{input}")
        })
}
