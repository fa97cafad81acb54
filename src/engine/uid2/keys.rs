//! The key container: parses what `/v2/key/bidstream`, `/v2/key/sharing` and the legacy `/v2/key/latest`
//! return (with or without the `{"body":…}` wrapper) into an immutable [`KeySet`], with the SDKs' defaults
//! (`../shared/spec/uid2-tokens.md` §3). Key schedules are prepared here, once per key. Pure; depends on
//! serde_json, thiserror and the sibling `cipher`/`wire` modules.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Map, Value};

use super::cipher::Secret;
use super::wire::{self, IdentityScope};

/// `token_expiry_seconds` when the field is missing, null or 0 (all SDKs).
pub const DEFAULT_TOKEN_EXPIRY_SECONDS: i64 = 30 * 24 * 3600;
/// `allow_clock_skew_seconds` when missing (all SDKs).
pub const DEFAULT_ALLOW_CLOCK_SKEW_SECONDS: i64 = 1800;

/// A key set that cannot be used, with the field at fault.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum KeysError {
    #[error("key JSON is not valid JSON: {0}")]
    NotJson(String),
    #[error(
        "key JSON has an unexpected shape: {0} (expected the body of /v2/key/bidstream, /v2/key/sharing or /v2/key/latest, optionally wrapped as {{\"body\": …}})"
    )]
    Shape(&'static str),
    #[error("key JSON field `{field}`: {problem}")]
    Field { field: String, problem: String },
}

fn field_error(field: impl Into<String>, problem: impl Into<String>) -> KeysError {
    KeysError::Field {
        field: field.into(),
        problem: problem.into(),
    }
}

/// One key as the operator sends it. Times are kept in milliseconds since the epoch.
#[derive(Clone, Debug)]
pub struct Key {
    pub id: u32,
    /// Present only on the caller's own keysets and on master keys (sharing endpoint).
    pub keyset_id: Option<i64>,
    /// The legacy `/v2/key/latest` site id; 0 for new-format keys, as in Java.
    pub site_id: i32,
    pub created_ms: i64,
    pub activates_ms: i64,
    pub expires_ms: i64,
    pub secret: Secret,
}

impl Key {
    /// Active means `activates <= now < expires` (used only to pick encryption keys).
    pub fn is_active(&self, now_ms: i64) -> bool {
        self.activates_ms <= now_ms && now_ms < self.expires_ms
    }
}

/// Key ids are small integers chosen by the operator, so hashing them through SipHash is wasted work on
/// the per-token path; a multiplicative hash spreads them well enough for a map of a few thousand keys.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type IdMap<V> = HashMap<u32, V, BuildHasherDefault<IdHasher>>;

/// Which endpoint shape the key set came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeySetFormat {
    /// `/v2/key/bidstream` or `/v2/key/sharing`: an object with `keys`.
    Current,
    /// `/v2/key/latest`: an array of keys that carry `site_id`.
    Legacy,
}

/// An immutable snapshot of the keys and settings a DSP may use. Cheap to share behind an `Arc`.
#[derive(Clone, Debug)]
pub struct KeySet {
    pub format: KeySetFormat,
    pub identity_scope: IdentityScope,
    pub caller_site_id: Option<i32>,
    pub master_keyset_id: Option<i64>,
    pub default_keyset_id: Option<i64>,
    pub token_expiry_seconds: i64,
    pub max_bidstream_lifetime_seconds: i64,
    pub max_sharing_lifetime_seconds: i64,
    pub allow_clock_skew_seconds: i64,
    keys: IdMap<Key>,
    /// Key ids per keyset, sorted by activation time (stable, so ties keep JSON order as in Java).
    keysets: HashMap<i64, Vec<u32>>,
    /// Allowed domain and app names per site, lower-cased once here.
    sites: HashMap<i32, Vec<String>>,
    latest_expiry_ms: Option<i64>,
    generation: u64,
}

/// Every parsed key set gets a distinct number, so caches can tell a refreshed set from the one their
/// entries were computed with (an `Arc` address could be reused after a free).
static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

impl KeySet {
    /// Parses a key-endpoint response body (or a whole `{"body":…,"status":"success"}` document).
    ///
    /// # Errors
    /// Malformed JSON, a body that is neither an object with `keys` nor an array, or a key whose id,
    /// times or secret cannot be used (a secret must be standard base64 of 32 bytes).
    pub fn parse_json(text: &[u8]) -> Result<KeySet, KeysError> {
        let doc: Value =
            serde_json::from_slice(text).map_err(|e| KeysError::NotJson(e.to_string()))?;
        let body = match &doc {
            Value::Object(map) => match map.get("body") {
                Some(body) => body,
                None if map.contains_key("keys") => &doc,
                None => return Err(KeysError::Shape("an object with neither `body` nor `keys`")),
            },
            Value::Array(_) => &doc,
            _ => return Err(KeysError::Shape("neither an object nor an array")),
        };
        match body {
            Value::Object(map) => Self::parse_current(map),
            Value::Array(items) => Self::parse_legacy(items),
            _ => Err(KeysError::Shape("`body` is neither an object nor an array")),
        }
    }

    fn parse_current(body: &Map<String, Value>) -> Result<KeySet, KeysError> {
        let keys_json = match body.get("keys") {
            Some(Value::Array(items)) => items.as_slice(),
            Some(Value::Null) | None => &[],
            Some(_) => return Err(field_error("keys", "must be an array")),
        };
        let mut keys = Vec::with_capacity(keys_json.len());
        for (i, item) in keys_json.iter().enumerate() {
            let obj = item
                .as_object()
                .ok_or_else(|| field_error(format!("keys[{i}]"), "must be an object"))?;
            keys.push(parse_key(obj, &format!("keys[{i}]"), false)?);
        }
        let mut sites = HashMap::new();
        if let Some(site_data) = body.get("site_data").filter(|v| !v.is_null()) {
            let items = site_data
                .as_array()
                .ok_or_else(|| field_error("site_data", "must be an array"))?;
            for (i, site) in items.iter().enumerate() {
                let path = format!("site_data[{i}]");
                let obj = site
                    .as_object()
                    .ok_or_else(|| field_error(&path, "must be an object"))?;
                let id = opt_int(obj, "id", &path)?
                    .ok_or_else(|| field_error(format!("{path}.id"), "is missing"))?;
                // Java skips site 0: it is not a real site.
                if id == 0 {
                    continue;
                }
                let id = i32::try_from(id)
                    .map_err(|_| field_error(format!("{path}.id"), "is out of range"))?;
                let names = match obj.get("domain_names") {
                    Some(Value::Array(names)) => names
                        .iter()
                        .filter_map(Value::as_str)
                        .map(str::to_lowercase)
                        .collect::<Vec<_>>(),
                    Some(Value::Null) | None => Vec::new(),
                    Some(_) => {
                        return Err(field_error(
                            format!("{path}.domain_names"),
                            "must be an array",
                        ));
                    }
                };
                sites.entry(id).or_insert_with(Vec::new).extend(names);
            }
        }
        let token_expiry_seconds = match opt_int(body, "token_expiry_seconds", "")? {
            None | Some(0) => DEFAULT_TOKEN_EXPIRY_SECONDS,
            Some(n) => n,
        };
        Ok(Self::assemble(
            KeySetFormat::Current,
            Settings {
                identity_scope: parse_scope(body),
                caller_site_id: opt_int(body, "caller_site_id", "")?
                    .map(|n| {
                        i32::try_from(n)
                            .map_err(|_| field_error("caller_site_id", "is out of range"))
                    })
                    .transpose()?,
                master_keyset_id: opt_int(body, "master_keyset_id", "")?,
                default_keyset_id: opt_int(body, "default_keyset_id", "")?,
                token_expiry_seconds,
                max_bidstream_lifetime_seconds: opt_int(
                    body,
                    "max_bidstream_lifetime_seconds",
                    "",
                )?
                .unwrap_or(i64::MAX),
                max_sharing_lifetime_seconds: opt_int(body, "max_sharing_lifetime_seconds", "")?
                    .unwrap_or(i64::MAX),
                allow_clock_skew_seconds: opt_int(body, "allow_clock_skew_seconds", "")?
                    .unwrap_or(DEFAULT_ALLOW_CLOCK_SKEW_SECONDS),
            },
            keys,
            sites,
        ))
    }

    fn parse_legacy(items: &[Value]) -> Result<KeySet, KeysError> {
        let mut keys = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let obj = item
                .as_object()
                .ok_or_else(|| field_error(format!("body[{i}]"), "must be an object"))?;
            keys.push(parse_key(obj, &format!("body[{i}]"), true)?);
        }
        Ok(Self::assemble(
            KeySetFormat::Legacy,
            Settings::default(),
            keys,
            HashMap::new(),
        ))
    }

    fn assemble(
        format: KeySetFormat,
        s: Settings,
        keys: Vec<Key>,
        sites: HashMap<i32, Vec<String>>,
    ) -> KeySet {
        let latest_expiry_ms = keys.iter().map(|k| k.expires_ms).max();
        let mut keysets: HashMap<i64, Vec<&Key>> = HashMap::new();
        for key in &keys {
            if let Some(keyset) = key.keyset_id {
                keysets.entry(keyset).or_default().push(key);
            }
        }
        let keysets = keysets
            .into_iter()
            .map(|(id, mut members)| {
                members.sort_by_key(|k| k.activates_ms);
                (id, members.into_iter().map(|k| k.id).collect())
            })
            .collect();
        KeySet {
            format,
            identity_scope: s.identity_scope,
            caller_site_id: s.caller_site_id,
            master_keyset_id: s.master_keyset_id,
            default_keyset_id: s.default_keyset_id,
            token_expiry_seconds: s.token_expiry_seconds,
            max_bidstream_lifetime_seconds: s.max_bidstream_lifetime_seconds,
            max_sharing_lifetime_seconds: s.max_sharing_lifetime_seconds,
            allow_clock_skew_seconds: s.allow_clock_skew_seconds,
            // A later duplicate id replaces an earlier one, as a map insert does in every SDK.
            keys: keys.into_iter().map(|k| (k.id, k)).collect(),
            keysets,
            sites,
            latest_expiry_ms,
            generation: NEXT_GENERATION.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// A number unique to this parsed key set within the process.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Looks a key up by id. Like the SDKs, no activation, expiry or keyset check: a token names its keys.
    #[inline]
    pub fn key(&self, id: u32) -> Option<&Key> {
        self.keys.get(&id)
    }

    /// Number of keys in the set.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// All keys, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = &Key> {
        self.keys.values()
    }

    /// The container is usable until its last key expires (strict); an empty set never is (KEYS_NOT_SYNCED).
    pub fn is_valid(&self, now_ms: i64) -> bool {
        self.latest_expiry_ms.is_some_and(|latest| now_ms < latest)
    }

    /// When the last key expires, if there is any key.
    pub fn latest_expiry_ms(&self) -> Option<i64> {
        self.latest_expiry_ms
    }

    /// The key an encrypter must use for `keyset_id` at `now`: among keys activated by now, the latest
    /// activated one that has not expired (Java `getActiveKeysetKey`).
    pub fn active_key(&self, keyset_id: i64, now_ms: i64) -> Option<&Key> {
        let ids = self.keysets.get(&keyset_id)?;
        let activated =
            ids.partition_point(|id| self.keys.get(id).is_some_and(|k| k.activates_ms <= now_ms));
        ids[..activated]
            .iter()
            .rev()
            .filter_map(|id| self.keys.get(id))
            .find(|k| k.is_active(now_ms))
    }

    /// The sharing sender's master key: the active key of `master_keyset_id`.
    pub fn active_master_key(&self, now_ms: i64) -> Option<&Key> {
        self.active_key(self.master_keyset_id?, now_ms)
    }

    /// The sharing sender's site key: the active key of `default_keyset_id`.
    pub fn active_default_key(&self, now_ms: i64) -> Option<&Key> {
        self.active_key(self.default_keyset_id?, now_ms)
    }

    /// The CSTG check (Java `isDomainOrAppNameAllowedForSite`): an exact, case-insensitive match against
    /// the site's `domain_names`. No name, or a site without data, fails.
    pub fn is_domain_or_app_name_allowed(&self, site_id: i32, name: Option<&str>) -> bool {
        let (Some(name), Some(allowed)) = (name, self.sites.get(&site_id)) else {
            return false;
        };
        if name.is_ascii() {
            allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
        } else {
            let lower = name.to_lowercase();
            allowed.contains(&lower)
        }
    }

    /// Site ids with domain/app data, for diagnostics.
    pub fn site_count(&self) -> usize {
        self.sites.len()
    }
}

struct Settings {
    identity_scope: IdentityScope,
    caller_site_id: Option<i32>,
    master_keyset_id: Option<i64>,
    default_keyset_id: Option<i64>,
    token_expiry_seconds: i64,
    max_bidstream_lifetime_seconds: i64,
    max_sharing_lifetime_seconds: i64,
    allow_clock_skew_seconds: i64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            identity_scope: IdentityScope::Uid2,
            caller_site_id: None,
            master_keyset_id: None,
            default_keyset_id: None,
            token_expiry_seconds: DEFAULT_TOKEN_EXPIRY_SECONDS,
            max_bidstream_lifetime_seconds: i64::MAX,
            max_sharing_lifetime_seconds: i64::MAX,
            allow_clock_skew_seconds: DEFAULT_ALLOW_CLOCK_SKEW_SECONDS,
        }
    }
}

fn parse_scope(body: &Map<String, Value>) -> IdentityScope {
    // "EUID" selects EUID; anything else, or nothing, is UID2 (all SDKs).
    match body.get("identity_scope").and_then(Value::as_str) {
        Some("EUID") => IdentityScope::Euid,
        _ => IdentityScope::Uid2,
    }
}

/// Reads an integer that may be written as a number or a numeric string (the operator writes
/// `token_expiry_seconds` as a string; Gson, behind the Java SDK, accepts either everywhere).
fn opt_int(obj: &Map<String, Value>, name: &str, path: &str) -> Result<Option<i64>, KeysError> {
    let full = || {
        if path.is_empty() {
            name.to_string()
        } else {
            format!("{path}.{name}")
        }
    };
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e18)
                    .map(|f| f as i64)
            })
            .map(Some)
            .ok_or_else(|| field_error(full(), format!("{n} is not an integer"))),
        Some(Value::String(s)) => s
            .trim()
            .parse::<i64>()
            .map(Some)
            .map_err(|_| field_error(full(), format!("{s:?} is not an integer"))),
        Some(other) => Err(field_error(
            full(),
            format!("expected an integer, found {other}"),
        )),
    }
}

fn parse_key(obj: &Map<String, Value>, path: &str, legacy: bool) -> Result<Key, KeysError> {
    let required = |name: &str| -> Result<i64, KeysError> {
        opt_int(obj, name, path)?.ok_or_else(|| field_error(format!("{path}.{name}"), "is missing"))
    };
    let id = u32::try_from(required("id")?)
        .map_err(|_| field_error(format!("{path}.id"), "is not a u32"))?;
    let seconds_to_ms = |name: &str| -> Result<i64, KeysError> {
        required(name)?
            .checked_mul(1000)
            .ok_or_else(|| field_error(format!("{path}.{name}"), "is out of range"))
    };
    let secret_text = obj
        .get("secret")
        .and_then(Value::as_str)
        .ok_or_else(|| field_error(format!("{path}.secret"), "is missing or not a string"))?;
    let secret_bytes = wire::decode_standard(secret_text)
        .ok_or_else(|| field_error(format!("{path}.secret"), "is not standard base64"))?;
    let secret: [u8; 32] = secret_bytes.as_slice().try_into().map_err(|_| {
        field_error(
            format!("{path}.secret"),
            format!("is {} bytes; AES-256 keys are 32", secret_bytes.len()),
        )
    })?;
    let site_id = if legacy {
        opt_int(obj, "site_id", path)?
            .map(|n| {
                i32::try_from(n)
                    .map_err(|_| field_error(format!("{path}.site_id"), "is out of range"))
            })
            .transpose()?
            .unwrap_or(0)
    } else {
        0
    };
    Ok(Key {
        id,
        keyset_id: if legacy {
            None
        } else {
            opt_int(obj, "keyset_id", path)?
        },
        site_id,
        created_ms: seconds_to_ms("created")?,
        activates_ms: seconds_to_ms("activates")?,
        expires_ms: seconds_to_ms("expires")?,
        secret: Secret::new(secret),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Java KeyParserTests / .NET KeyParserTests / Python test_key_parse (spec §7).
    const SHARING_VECTOR: &str = r#"{"body":{"caller_site_id":11,"master_keyset_id":1,"default_keyset_id":99999,
        "token_expiry_seconds":1728000,"unexpected_header_field":"x",
        "keys":[
          {"id":3,"keyset_id":99999,"created":1609459200,"activates":1609459210,"expires":1893456000,
           "secret":"o8HsvkwJ5Ulnrd0uui3GpukpwDapj+JLqb7qfN/GJKo=","unexpected_key_field":[1,2]},
          {"id":2,"keyset_id":1,"created":1609458200,"activates":1609459220,"expires":1893457000,
           "secret":"DD67xF8OFmbJ1/lMPQ6fGRDbJOT4kXErrYWcKdFfCUE="}
        ]},"status":"success"}"#;

    const NOW_2021: i64 = 1_609_459_300_000;

    #[test]
    fn cross_sdk_key_parser_vector() {
        let set = KeySet::parse_json(SHARING_VECTOR.as_bytes()).unwrap();
        assert_eq!(set.caller_site_id, Some(11));
        assert_eq!(set.master_keyset_id, Some(1));
        assert_eq!(set.default_keyset_id, Some(99999));
        assert_eq!(set.token_expiry_seconds, 1_728_000);
        assert_eq!(set.identity_scope, IdentityScope::Uid2);
        assert_eq!(set.allow_clock_skew_seconds, 1800);
        assert_eq!(set.max_bidstream_lifetime_seconds, i64::MAX);
        assert_eq!(set.active_master_key(NOW_2021).unwrap().id, 2);
        assert_eq!(set.active_default_key(NOW_2021).unwrap().id, 3);
        let key3 = set.key(3).unwrap();
        assert_eq!(key3.activates_ms, 1_609_459_210_000);
        assert_eq!(key3.secret.bytes()[..3], [0xa3, 0xc1, 0xec]);
        assert_eq!(key3.site_id, 0);
        assert!(set.is_valid(NOW_2021));
        assert!(!set.is_valid(1_893_457_000_000));
        assert!(set.is_valid(1_893_456_999_999));
    }

    #[test]
    fn bare_body_and_string_expiry_are_accepted() {
        let bare = r#"{"token_expiry_seconds":"2592000","identity_scope":"EUID","keys":[],"extra":{"x":1}}"#;
        let set = KeySet::parse_json(bare.as_bytes()).unwrap();
        assert_eq!(set.token_expiry_seconds, 2_592_000);
        assert_eq!(set.identity_scope, IdentityScope::Euid);
        assert!(set.is_empty());
        assert!(!set.is_valid(0), "an empty key set is never valid");
        for missing in [
            r#"{"keys":[]}"#,
            r#"{"keys":[],"token_expiry_seconds":null}"#,
            r#"{"keys":[],"token_expiry_seconds":0}"#,
        ] {
            assert_eq!(
                KeySet::parse_json(missing.as_bytes())
                    .unwrap()
                    .token_expiry_seconds,
                DEFAULT_TOKEN_EXPIRY_SECONDS
            );
        }
        let other_scope = r#"{"keys":[],"identity_scope":"euid"}"#;
        assert_eq!(
            KeySet::parse_json(other_scope.as_bytes())
                .unwrap()
                .identity_scope,
            IdentityScope::Uid2
        );
    }

    #[test]
    fn legacy_latest_array_keeps_site_ids() {
        let legacy = r#"{"body":[{"id":1,"site_id":-1,"created":1,"activates":1,"expires":2000000000,
            "secret":"o8HsvkwJ5Ulnrd0uui3GpukpwDapj+JLqb7qfN/GJKo="},
            {"id":2,"site_id":9000,"created":1,"activates":1,"expires":2000000000,
            "secret":"DD67xF8OFmbJ1/lMPQ6fGRDbJOT4kXErrYWcKdFfCUE="}],"status":"success"}"#;
        let set = KeySet::parse_json(legacy.as_bytes()).unwrap();
        assert_eq!(set.format, KeySetFormat::Legacy);
        assert_eq!(set.key(2).unwrap().site_id, 9000);
        assert_eq!(set.key(1).unwrap().site_id, -1);
        let bare: Value = serde_json::from_str(legacy).unwrap();
        let bare = serde_json::to_vec(&bare["body"]).unwrap();
        assert_eq!(KeySet::parse_json(&bare).unwrap().len(), 2);
    }

    #[test]
    fn domain_names_match_case_insensitively_and_exactly() {
        let json = r#"{"keys":[],"site_data":[{"id":9000,"domain_names":["example.com","Example.org","com.123.Game.App.android","123456789"]},
            {"id":2,"domain_names":["example.net"]},{"id":0,"domain_names":["ignored.com"]}]}"#;
        let set = KeySet::parse_json(json.as_bytes()).unwrap();
        assert!(set.is_domain_or_app_name_allowed(9000, Some("EXAMPLE.com")));
        assert!(set.is_domain_or_app_name_allowed(9000, Some("example.org")));
        assert!(set.is_domain_or_app_name_allowed(9000, Some("com.123.game.app.android")));
        assert!(!set.is_domain_or_app_name_allowed(9000, Some("sub.example.com")));
        assert!(!set.is_domain_or_app_name_allowed(9000, Some("example.net")));
        assert!(!set.is_domain_or_app_name_allowed(9000, None));
        assert!(!set.is_domain_or_app_name_allowed(0, Some("ignored.com")));
        assert!(!set.is_domain_or_app_name_allowed(77, Some("example.com")));
        assert!(!set.is_domain_or_app_name_allowed(9000, Some("ëxample.com")));
    }

    #[test]
    fn active_key_picks_latest_activated_unexpired() {
        let key = |id: u32, activates: i64, expires: i64| {
            format!(
                r#"{{"id":{id},"keyset_id":7,"created":0,"activates":{activates},"expires":{expires},"secret":"o8HsvkwJ5Ulnrd0uui3GpukpwDapj+JLqb7qfN/GJKo="}}"#
            )
        };
        let json = format!(
            r#"{{"keys":[{},{},{},{}]}}"#,
            key(4, 300, 400),
            key(1, 100, 1000),
            key(2, 200, 250),
            key(3, 500, 600)
        );
        let set = KeySet::parse_json(json.as_bytes()).unwrap();
        let pick = |now_s: i64| set.active_key(7, now_s * 1000).map(|k| k.id);
        assert_eq!(pick(50), None);
        assert_eq!(pick(150), Some(1));
        assert_eq!(pick(220), Some(2));
        assert_eq!(
            pick(260),
            Some(1),
            "key 2 expired, fall back to the earlier active one"
        );
        assert_eq!(pick(350), Some(4));
        assert_eq!(pick(550), Some(3));
        assert_eq!(pick(700), Some(1));
        assert_eq!(pick(1000), None);
        assert_eq!(set.active_key(8, 150_000).map(|k| k.id), None);
    }

    #[test]
    fn unusable_keys_are_rejected_with_the_field_name() {
        let cases = [
            ("not json", "not valid JSON"),
            ("42", "unexpected shape"),
            (r#"{"status":"success"}"#, "unexpected shape"),
            (r#"{"keys":{}}"#, "`keys`"),
            (
                r#"{"keys":[{"id":1,"created":0,"activates":0,"expires":1,"secret":"AAAA"}]}"#,
                "keys[0].secret",
            ),
            (
                r#"{"keys":[{"id":1,"created":0,"activates":0,"expires":1,"secret":"!!"}]}"#,
                "not standard base64",
            ),
            (
                r#"{"keys":[{"id":-5,"created":0,"activates":0,"expires":1,"secret":"AAAA"}]}"#,
                "keys[0].id",
            ),
            (
                r#"{"keys":[{"id":1,"activates":0,"expires":1,"secret":"o8HsvkwJ5Ulnrd0uui3GpukpwDapj+JLqb7qfN/GJKo="}]}"#,
                "keys[0].created",
            ),
            (
                r#"{"keys":[{"id":1,"created":"soon","activates":0,"expires":1,"secret":"o8HsvkwJ5Ulnrd0uui3GpukpwDapj+JLqb7qfN/GJKo="}]}"#,
                "not an integer",
            ),
            (
                r#"{"keys":[],"site_data":[{"domain_names":[]}]}"#,
                "site_data[0].id",
            ),
        ];
        for (json, needle) in cases {
            let err = KeySet::parse_json(json.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(needle), "{json}: {err}");
        }
    }
}
