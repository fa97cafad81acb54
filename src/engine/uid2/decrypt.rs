//! Token decryption with the Java/.NET SDKs' check order and statuses, for the bidstream and sharing
//! clients (`../shared/spec/uid2-tokens.md` §5.2). Pure: `now` and the key set are arguments. Depends on
//! `uid2`'s `Status`, the sibling `wire`, `cipher`, `keys`, `raw_uid` and `token_text` modules, base64
//! (the lenient decoders of `wire`) and base64-simd.
//!
//! Where the SDKs disagree, this follows Java/.NET, with one documented choice: the lifetime and clock-skew
//! limits are compared in milliseconds (fractional seconds, as .NET and Python do), not after truncating to
//! whole seconds as Java's `Duration.getSeconds()` does.

use base64::Engine as _;

use super::Status;
use super::cipher::CBC_IV_LEN;
use super::keys::KeySet;
use super::raw_uid::RawUidText;
use super::token_text;
use super::wire::{self, IdentityScope, IdentityType, Reader, TokenVersion};

/// Which SDK client's rules apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum ClientMode {
    /// A DSP decrypting bid-stream tokens: CSTG domain/app check, `max_bidstream_lifetime_seconds`.
    #[default]
    Bidstream,
    /// A sharing receiver: no domain check, `max_sharing_lifetime_seconds`.
    Sharing,
}

impl ClientMode {
    pub const fn as_str(self) -> &'static str {
        match self {
            ClientMode::Bidstream => "bidstream",
            ClientMode::Sharing => "sharing",
        }
    }
}

/// Privacy bit 1: the token was generated client-side (CSTG), which subjects it to the domain/app check.
/// Java, .NET and the operator use mask 0x2; Python's 0x40000000 is a known bug (spec §2.5).
pub const PRIVACY_BIT_CSTG: i32 = 0x2;

/// Everything the SDKs return for a token. On a failure after the payloads were read (expired, domain
/// check, lifetime), the fields are still filled in, as in Java/.NET, but `raw_uid2` is `None`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decryption {
    pub status: Status,
    /// Standard base64 of the raw UID (v3/v4), or the identity string as carried (v2).
    pub raw_uid2: Option<RawUidText>,
    pub established_ms: Option<i64>,
    /// The publisher site that generated the token (from the site payload).
    pub site_id: Option<i32>,
    /// The site id of the site key: 0 for current-format keys (Java), the key's `site_id` for legacy keys.
    pub site_key_site_id: Option<i32>,
    /// `None` for v2 tokens, which carry no type.
    pub identity_type: Option<IdentityType>,
    pub token_version: Option<TokenVersion>,
    pub cstg: Option<bool>,
    pub expires_ms: Option<i64>,
    /// v3/v4: when the token was generated or last refreshed (the SDKs read it for the lifetime check but
    /// do not return it; caches need it to know how long a result holds).
    pub generated_ms: Option<i64>,
    /// The token's scope for v3/v4; the key set's scope for v2, which carries none.
    pub scope: Option<IdentityScope>,
}

impl Decryption {
    /// A bare status: the token was rejected before its payloads could be read.
    pub const fn error(status: Status) -> Decryption {
        Decryption {
            status,
            raw_uid2: None,
            established_ms: None,
            site_id: None,
            site_key_site_id: None,
            identity_type: None,
            token_version: None,
            cstg: None,
            expires_ms: None,
            generated_ms: None,
            scope: None,
        }
    }

    pub fn is_success(&self) -> bool {
        self.status == Status::Success
    }
}

/// Tokens up to this many bytes are decoded on the stack; real tokens are 133–164 bytes.
const STACK_TOKEN_BYTES: usize = 256;

/// Decrypts `token` as the SDK client for `mode` would at `now_ms`.
///
/// `keys` is `None` before the first key set was loaded (NOT_INITIALIZED). `domain_or_app_name` is the
/// bid request's registrable domain or app name; it matters only for client-side-generated tokens in
/// bidstream mode.
pub fn decrypt(
    token: &str,
    keys: Option<&KeySet>,
    mode: ClientMode,
    domain_or_app_name: Option<&str>,
    now_ms: i64,
) -> Decryption {
    decrypt_with_name(token, keys, mode, &|| domain_or_app_name, now_ms)
}

/// [`decrypt`] with the domain or app name supplied on demand: `domain_or_app_name` is called only for a
/// client-side-generated token in bidstream mode that got as far as the domain check (at most once), so a
/// caller whose name is costly to derive (a public-suffix lookup) pays for it only then. The checks and
/// their order are those of [`decrypt`].
pub fn decrypt_with_name<'n>(
    token: &str,
    keys: Option<&KeySet>,
    mode: ClientMode,
    domain_or_app_name: &dyn Fn() -> Option<&'n str>,
    now_ms: i64,
) -> Decryption {
    // One result, filled in where each field becomes known. Built from parts and returned up the calls,
    // the result and the raw UID's text in it went through several copies on the stack, some reading
    // the text across the stores that had just written it (which waits for them to reach the cache);
    // one copy is left, into the caller's.
    let mut out = Decryption::error(Status::InvalidPayload);
    out.status = decrypt_into(token, keys, mode, domain_or_app_name, now_ms, &mut out);
    out
}

/// [`decrypt_with_name`] into `out`, which comes in as [`Decryption::error`]: fills in the fields it
/// reads and returns the status.
fn decrypt_into<'n>(
    token: &str,
    keys: Option<&KeySet>,
    mode: ClientMode,
    domain_or_app_name: &dyn Fn() -> Option<&'n str>,
    now_ms: i64,
    out: &mut Decryption,
) -> Status {
    let Some(keys) = keys else {
        return Status::NotInitialized;
    };
    if !keys.is_valid(now_ms) {
        return Status::KeysNotSynced;
    }
    let version = match wire::detect_version(token) {
        Ok(v) => v,
        Err(wire::DetectError::InvalidPayload) => return Status::InvalidPayload,
        Err(wire::DetectError::VersionNotSupported) => return Status::VersionNotSupported,
    };
    let ctx = Context {
        keys,
        mode,
        domain_or_app_name,
        now_ms,
    };
    // Real tokens fit on the stack; a 100 KB hostile "token" takes the heap path and fails like any other.
    let max_decoded = token.len() / 4 * 3 + 3;
    if max_decoded <= STACK_TOKEN_BYTES {
        let mut stack = [0u8; STACK_TOKEN_BYTES + token_text::SLACK];
        match decode_into(token, version, &mut stack) {
            Some(n) => ctx.decrypt_bytes(version, &mut stack[..n], out),
            None => Status::InvalidPayload,
        }
    } else {
        let mut heap = Vec::new();
        match wire::decode_token(token, version, &mut heap) {
            Ok(()) => ctx.decrypt_bytes(version, &mut heap, out),
            Err(_) => Status::InvalidPayload,
        }
    }
}

fn decode_into(token: &str, version: TokenVersion, out: &mut [u8]) -> Option<usize> {
    // Text in the version's alphabet takes `token_text` (AVX2, 32 characters a step). Then canonical
    // text takes base64-simd (CPUs without AVX2), and anything both reject takes the lenient path the
    // SDKs' decoders imply (missing padding, non-zero trailing bits, a v4 token in standard
    // base64). What the first two accept is always what the lenient decoder would give.
    let alphabet = match version {
        TokenVersion::V4 => token_text::Alphabet::UrlSafe,
        TokenVersion::V2 | TokenVersion::V3 => token_text::Alphabet::Standard,
    };
    if let Some(decoded) = token_text::decode(token.as_bytes(), alphabet, out) {
        return Some(decoded);
    }
    let simd = match version {
        TokenVersion::V4 => &base64_simd::URL_SAFE_NO_PAD,
        TokenVersion::V2 | TokenVersion::V3 => &base64_simd::STANDARD,
    };
    if let Ok(decoded) = simd.decode(token.as_bytes(), base64_simd::Out::from_slice(out)) {
        return Some(decoded.len());
    }
    let engine = match version {
        TokenVersion::V4 => &wire::URL_SAFE_LENIENT,
        TokenVersion::V2 | TokenVersion::V3 => &wire::STANDARD_LENIENT,
    };
    match engine.decode_slice(token.as_bytes(), out) {
        Ok(n) => Some(n),
        Err(_) => {
            let mut heap = Vec::new();
            wire::decode_token(token, version, &mut heap).ok()?;
            let dst = out.get_mut(..heap.len())?;
            dst.copy_from_slice(&heap);
            Some(heap.len())
        }
    }
}

struct Context<'a, 'n> {
    keys: &'a KeySet,
    mode: ClientMode,
    domain_or_app_name: &'a dyn Fn() -> Option<&'n str>,
    now_ms: i64,
}

/// The fields read from a token's payloads, before the time and domain checks.
struct Payload<'a> {
    raw_uid2: RawUid<'a>,
    established_ms: i64,
    site_id: i32,
    site_key_site_id: i32,
    identity_type: Option<IdentityType>,
    version: TokenVersion,
    privacy_bits: i32,
    expires_ms: i64,
    /// v3/v4: the master payload's "generated" time. v2 has none and the lifetime check uses `now`.
    generated_ms: Option<i64>,
    scope: IdentityScope,
}

/// The raw UID as the payload holds it. Turned into text only for a token that passes the checks, and
/// then right where the result is built: the text is written once, in place, instead of being moved
/// through the payload into the result.
enum RawUid<'a> {
    /// v3/v4: the raw UID's bytes, returned as standard base64.
    Bytes(&'a [u8]),
    /// v2: the identity string, as carried.
    Text(RawUidText),
}

impl RawUid<'_> {
    fn into_text(self) -> RawUidText {
        match self {
            RawUid::Bytes(bytes) => super::raw_uid::encode(bytes),
            RawUid::Text(text) => text,
        }
    }
}

/// A failure while reading the payloads: a bare status with no fields.
type Early = Status;

impl Context<'_, '_> {
    /// Reads and checks the token's bytes into `out` (a bare error so far) and returns the status.
    fn decrypt_bytes(
        &self,
        version: TokenVersion,
        bytes: &mut [u8],
        out: &mut Decryption,
    ) -> Status {
        let payload = match version {
            TokenVersion::V2 => self.read_v2(bytes),
            TokenVersion::V3 | TokenVersion::V4 => self.read_v3(version, bytes),
        };
        match payload {
            Ok(payload) => self.check(payload, out),
            Err(status) => status,
        }
    }

    /// v2: AES-256-CBC, layout in spec §2.2.
    fn read_v2(&self, bytes: &mut [u8]) -> Result<Payload<'static>, Early> {
        let mut r = Reader::new(bytes);
        if r.u8() != Some(wire::V2_VERSION_BYTE) {
            return Err(Status::VersionNotSupported);
        }
        // Java looks the master key up before reading the IV, so a short token with an unknown key is
        // NOT_AUTHORIZED_FOR_MASTER_KEY, not INVALID_PAYLOAD.
        let master_key_id = r.u32().ok_or(Status::InvalidPayload)?;
        let master_key = self
            .keys
            .key(master_key_id)
            .ok_or(Status::NotAuthorizedForMasterKey)?;
        let master_iv: [u8; CBC_IV_LEN] = r.array().ok_or(Status::InvalidPayload)?;
        let master_blob = bytes
            .get_mut(1 + 4 + CBC_IV_LEN..)
            .ok_or(Status::InvalidPayload)?;
        let master = master_key
            .secret
            .cbc_open(&master_iv, master_blob)
            .map_err(|_| Status::InvalidPayload)?;

        let mut r = Reader::new(master);
        let expires_ms = r.i64().ok_or(Status::InvalidPayload)?;
        let site_key_id = r.u32().ok_or(Status::InvalidPayload)?;
        let site_key = self
            .keys
            .key(site_key_id)
            .ok_or(Status::NotAuthorizedForKey)?;
        let identity_iv: [u8; CBC_IV_LEN] = r.array().ok_or(Status::InvalidPayload)?;
        // The master plaintext is borrowed immutably from `bytes`; the identity layer needs its own buffer.
        let mut identity_blob = r.rest().to_vec();
        let identity = site_key
            .secret
            .cbc_open(&identity_iv, &mut identity_blob)
            .map_err(|_| Status::InvalidPayload)?;

        let mut r = Reader::new(identity);
        let site_id = r.i32().ok_or(Status::InvalidPayload)?;
        let id_len = usize::try_from(r.i32().ok_or(Status::InvalidPayload)?)
            .map_err(|_| Status::InvalidPayload)?;
        // Java decodes the identity bytes as UTF-8, replacing what is malformed.
        let raw_uid2 = RawUid::Text(RawUidText::from(&*String::from_utf8_lossy(
            r.take(id_len).ok_or(Status::InvalidPayload)?,
        )));
        let privacy_bits = r.i32().ok_or(Status::InvalidPayload)?;
        let established_ms = r.i64().ok_or(Status::InvalidPayload)?;
        Ok(Payload {
            raw_uid2,
            established_ms,
            site_id,
            site_key_site_id: site_key.site_id,
            identity_type: None,
            version: TokenVersion::V2,
            privacy_bits,
            expires_ms,
            generated_ms: None,
            scope: self.keys.identity_scope,
        })
    }

    /// v3/v4: AES-256-GCM twice, layout in spec §2.3. Decrypts in place, without an allocation.
    fn read_v3<'b>(
        &self,
        version: TokenVersion,
        bytes: &'b mut [u8],
    ) -> Result<Payload<'b>, Early> {
        let (header, master_blob) = bytes
            .split_at_mut_checked(6)
            .ok_or(Status::InvalidPayload)?;
        let mut r = Reader::new(header);
        let (scope, identity_type) = wire::decode_prefix(r.u8().ok_or(Status::InvalidPayload)?);
        if scope != self.keys.identity_scope {
            return Err(Status::InvalidIdentityScope);
        }
        r.u8(); // version byte, already checked by detection
        let master_key_id = r.u32().ok_or(Status::InvalidPayload)?;
        let master_key = self
            .keys
            .key(master_key_id)
            .ok_or(Status::NotAuthorizedForMasterKey)?;
        let master = master_key
            .secret
            .gcm_open(master_blob)
            .map_err(|_| Status::InvalidPayload)?;

        let (master_fields, site_blob) = master
            .split_at_mut_checked(33)
            .ok_or(Status::InvalidPayload)?;
        let mut r = Reader::new(master_fields);
        let expires_ms = r.i64().ok_or(Status::InvalidPayload)?;
        let generated_ms = r.i64().ok_or(Status::InvalidPayload)?;
        // Then operator site id (4), operator type (1), operator version (4) and operator key id (4),
        // not used, and the site key id.
        let site_key_id = site_key_id(master_fields).ok_or(Status::InvalidPayload)?;
        let site_key = self
            .keys
            .key(site_key_id)
            .ok_or(Status::NotAuthorizedForKey)?;
        let site = site_key
            .secret
            .gcm_open(site_blob)
            .map_err(|_| Status::InvalidPayload)?;

        let mut r = Reader::new(site);
        let site_id = r.i32().ok_or(Status::InvalidPayload)?;
        // publisher id (8) and client key id (4): not used.
        r.take(12).ok_or(Status::InvalidPayload)?;
        let privacy_bits = r.i32().ok_or(Status::InvalidPayload)?;
        let established_ms = r.i64().ok_or(Status::InvalidPayload)?;
        let _refreshed_ms = r.i64().ok_or(Status::InvalidPayload)?;
        let raw_uid2 = RawUid::Bytes(r.rest());
        Ok(Payload {
            raw_uid2,
            established_ms,
            site_id,
            site_key_site_id: site_key.site_id,
            identity_type: Some(identity_type),
            version,
            privacy_bits,
            expires_ms,
            generated_ms: Some(generated_ms),
            scope,
        })
    }

    /// Steps 8–12 of spec §5.2: expiry, CSTG domain/app check (bidstream only), lifetime and clock skew.
    fn check(&self, p: Payload, out: &mut Decryption) -> Status {
        let cstg = p.privacy_bits & PRIVACY_BIT_CSTG != 0;
        let status = if p.expires_ms < self.now_ms {
            Status::ExpiredToken
        } else if cstg
            && self.mode == ClientMode::Bidstream
            && !self
                .keys
                .is_domain_or_app_name_allowed(p.site_id, (self.domain_or_app_name)())
        {
            Status::DomainOrAppNameCheckFailed
        } else if !self.lifetime_is_valid(p.generated_ms.unwrap_or(self.now_ms), p.expires_ms) {
            Status::InvalidTokenLifetime
        } else {
            Status::Success
        };
        out.established_ms = Some(p.established_ms);
        out.site_id = Some(p.site_id);
        out.site_key_site_id = Some(p.site_key_site_id);
        out.identity_type = p.identity_type;
        out.token_version = Some(p.version);
        out.cstg = Some(cstg);
        out.expires_ms = Some(p.expires_ms);
        out.generated_ms = p.generated_ms;
        out.scope = Some(p.scope);
        if status == Status::Success {
            out.raw_uid2 = Some(p.raw_uid2.into_text());
        }
        status
    }

    fn lifetime_is_valid(&self, generated_ms: i64, expires_ms: i64) -> bool {
        let max_lifetime_s = match self.mode {
            ClientMode::Bidstream => self.keys.max_bidstream_lifetime_seconds,
            ClientMode::Sharing => self.keys.max_sharing_lifetime_seconds,
        };
        // i128: the defaults are i64::MAX seconds, and hostile tokens carry any i64 timestamps.
        let lifetime_ms = i128::from(expires_ms) - i128::from(generated_ms);
        let skew_ms = i128::from(generated_ms) - i128::from(self.now_ms);
        lifetime_ms <= i128::from(max_lifetime_s) * 1000
            && skew_ms <= i128::from(self.keys.allow_clock_skew_seconds) * 1000
    }
}

/// The site key id, the big-endian `u32` at master plaintext bytes 29..33, which `gcm_open` has just
/// written as 16-byte blocks (bytes 16..32 and 32..48). A 4-byte load across two stores cannot be
/// forwarded from them: it waits until both reach the cache, on the way to the site key. So bytes
/// 24..32 and byte 32 are read, each within one store.
fn site_key_id(master_fields: &[u8]) -> Option<u32> {
    let head = u64::from_be_bytes(*master_fields.get(24..32)?.first_chunk()?);
    let last = *master_fields.get(32)?;
    Some(((head as u32) << 8) | u32::from(last))
}
