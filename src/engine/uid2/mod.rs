//! The UID2 token engine: everything needed to decrypt (and, for tests and the sharing sender, encrypt)
//! UID2/EUID advertising tokens exactly as the official Java/.NET SDKs do.
//!
//! Pure: no I/O, no clock reads, no environment. `now` is always an argument in milliseconds since the
//! Unix epoch, and keys arrive as an immutable [`KeySet`]. Between them, its modules depend on std and
//! `core::arch`, aes, aes-gcm, cbc, base64, base64-simd, bytemuck, serde/serde_json and thiserror only.

pub mod cipher;
pub mod decrypt;
pub mod encrypt;
pub mod envelope;
mod keys;
mod raw_uid;
mod token_text;
pub mod wire;

pub use decrypt::{ClientMode, Decryption, decrypt};
pub use keys::{Key, KeySet, KeysError};
pub use raw_uid::RawUidText;
pub use wire::{IdentityScope, IdentityType, TokenVersion};

use std::fmt;

/// The outcome of decrypting one token. Names and meaning follow the Java SDK's `DecryptionStatus`
/// (see `../shared/spec/uid2-tokens.md` §5.1); [`Status::OptedOut`] is the enricher's own, applied after a
/// successful decryption when the opt-out set says so.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Status {
    Success,
    NotAuthorizedForMasterKey,
    NotAuthorizedForKey,
    NotInitialized,
    InvalidPayload,
    ExpiredToken,
    KeysNotSynced,
    VersionNotSupported,
    InvalidIdentityScope,
    InvalidTokenLifetime,
    DomainOrAppNameCheckFailed,
    OptedOut,
}

impl Status {
    /// Every status, in the order of ARCHITECTURE.md; handy for metrics and summaries.
    pub const ALL: [Status; 12] = [
        Status::Success,
        Status::NotAuthorizedForMasterKey,
        Status::NotAuthorizedForKey,
        Status::NotInitialized,
        Status::InvalidPayload,
        Status::ExpiredToken,
        Status::KeysNotSynced,
        Status::VersionNotSupported,
        Status::InvalidIdentityScope,
        Status::InvalidTokenLifetime,
        Status::DomainOrAppNameCheckFailed,
        Status::OptedOut,
    ];

    /// The snake_case name used in the enrichment member, the `uid2-status` header and the CLI.
    pub const fn as_str(self) -> &'static str {
        match self {
            Status::Success => "success",
            Status::NotAuthorizedForMasterKey => "not_authorized_for_master_key",
            Status::NotAuthorizedForKey => "not_authorized_for_key",
            Status::NotInitialized => "not_initialized",
            Status::InvalidPayload => "invalid_payload",
            Status::ExpiredToken => "expired_token",
            Status::KeysNotSynced => "keys_not_synced",
            Status::VersionNotSupported => "version_not_supported",
            Status::InvalidIdentityScope => "invalid_identity_scope",
            Status::InvalidTokenLifetime => "invalid_token_lifetime",
            Status::DomainOrAppNameCheckFailed => "domain_or_app_name_check_failed",
            Status::OptedOut => "opted_out",
        }
    }

    /// Parses the snake_case name back; `None` for anything else.
    pub fn from_name(name: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
