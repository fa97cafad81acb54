//! A bounded decrypt-result cache shared across threads (moka). Real traffic repeats tokens (a user's
//! token rides on every request for up to a day), so the second sighting can skip base64 and two AES-GCM
//! opens.
//!
//! Correctness never depends on moka's own clock: each entry records the key-set generation, the client
//! mode, the domain (when the result depends on it) and the window of `now` values over which the
//! decryption is known to give the same answer. A lookup outside that window, or with another key set,
//! recomputes. So a cached result never outlives its token's expiry, a key refresh invalidates
//! everything, and replays with captured times (`--now capture`, which can go backwards) stay exact.
//! Depends on moka, foldhash (the cache's hasher) and the token engine.

use std::sync::Arc;

use crate::engine::uid2::decrypt::{ClientMode, Decryption, decrypt_with_name};
use crate::engine::uid2::{KeySet, Status, TokenVersion};

/// Default bound on cached tokens: an entry (token, result, moka bookkeeping) takes ~300-600 bytes, so
/// 200,000 entries stay near 100 MB, inside the stage's 256 MB budget.
pub const DEFAULT_MAX_ENTRIES: u64 = 200_000;

struct Entry {
    generation: u64,
    mode: ClientMode,
    /// The result depends on the name (a CSTG token in bidstream mode): then `domain` must match too.
    domain_dependent: bool,
    domain: Option<Box<str>>,
    valid_from_ms: i64,
    valid_until_ms: i64,
    result: Decryption,
}

/// Thread-safe; clone the `Arc` or share a reference.
pub struct DecryptCache {
    entries: moka::sync::Cache<Box<str>, Arc<Entry>, foldhash::fast::RandomState>,
}

impl std::fmt::Debug for DecryptCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecryptCache")
            .field("entries", &self.entries.entry_count())
            .finish()
    }
}

impl DecryptCache {
    pub fn new(max_entries: u64) -> DecryptCache {
        DecryptCache {
            entries: moka::sync::Cache::builder()
                .max_capacity(max_entries)
                .build_with_hasher(foldhash::fast::RandomState::default()),
        }
    }

    /// Decrypts `token` as [`decrypt`](crate::engine::uid2::decrypt()) would, answering from the cache when a stored result provably
    /// holds for these arguments.
    pub fn decrypt(
        &self,
        token: &str,
        keys: Option<&KeySet>,
        mode: ClientMode,
        domain_or_app_name: Option<&str>,
        now_ms: i64,
    ) -> Decryption {
        self.decrypt_with_name(token, keys, mode, &|| domain_or_app_name, now_ms)
    }

    /// [`DecryptCache::decrypt`] with the name supplied on demand, as in [`decrypt_with_name`]: it is asked
    /// for only when the answer depends on it (a CSTG token in bidstream mode), so callers should memoise
    /// it.
    pub fn decrypt_with_name<'n>(
        &self,
        token: &str,
        keys: Option<&KeySet>,
        mode: ClientMode,
        domain_or_app_name: &dyn Fn() -> Option<&'n str>,
        now_ms: i64,
    ) -> Decryption {
        let Some(key_set) = keys else {
            return decrypt_with_name(token, keys, mode, domain_or_app_name, now_ms);
        };
        if let Some(entry) = self.entries.get(token) {
            // The name last: it is derived only when the rest already matches.
            if entry.generation == key_set.generation()
                && entry.mode == mode
                && (entry.valid_from_ms..=entry.valid_until_ms).contains(&now_ms)
                && (!entry.domain_dependent || entry.domain.as_deref() == domain_or_app_name())
            {
                return entry.result.clone();
            }
        }
        let result = decrypt_with_name(token, keys, mode, domain_or_app_name, now_ms);
        if let Some((valid_from_ms, valid_until_ms)) = validity_window(&result, key_set, mode) {
            let domain_dependent = mode == ClientMode::Bidstream && result.cstg == Some(true);
            let entry = Entry {
                generation: key_set.generation(),
                mode,
                domain_dependent,
                domain: domain_dependent
                    .then(|| domain_or_app_name().map(Box::from))
                    .flatten(),
                valid_from_ms,
                valid_until_ms,
                result: result.clone(),
            };
            self.entries.insert(token.into(), Arc::new(entry));
        }
        result
    }

    /// Drops every entry (the generation check already ignores stale ones; this frees their memory).
    pub fn invalidate_all(&self) {
        self.entries.invalidate_all();
    }

    /// Entries currently held (approximate: moka applies writes lazily).
    pub fn entry_count(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.entry_count()
    }
}

/// The inclusive range of `now` over which `decrypt` with the same token, key set, mode and domain returns
/// this same result, or `None` when it is not worth caching. Mirrors the time checks of
/// `uid2::decrypt` (spec §5.2 steps 2, 8 and 11).
fn validity_window(result: &Decryption, keys: &KeySet, mode: ClientMode) -> Option<(i64, i64)> {
    // The container stays valid while now < latest expiry.
    let keys_valid_until = keys.latest_expiry_ms()?.checked_sub(1)?;
    match result.status {
        // Decided before any time check: only the container's validity bounds them.
        Status::InvalidPayload
        | Status::VersionNotSupported
        | Status::InvalidIdentityScope
        | Status::NotAuthorizedForMasterKey
        | Status::NotAuthorizedForKey => Some((i64::MIN, keys_valid_until)),
        Status::ExpiredToken => Some((result.expires_ms?.checked_add(1)?, keys_valid_until)),
        // The domain check precedes the lifetime check, so only expiry can change this answer.
        Status::DomainOrAppNameCheckFailed => {
            Some((i64::MIN, result.expires_ms?.min(keys_valid_until)))
        }
        Status::Success => {
            let expires = result.expires_ms?;
            let max_lifetime_s = match mode {
                ClientMode::Bidstream => keys.max_bidstream_lifetime_seconds,
                ClientMode::Sharing => keys.max_sharing_lifetime_seconds,
            };
            let ms = |seconds: i64| i128::from(seconds) * 1000;
            let from = if result.token_version == Some(TokenVersion::V2) {
                // v2 bounds the remaining lifetime: expires - now <= max.
                i128::from(expires) - ms(max_lifetime_s)
            } else {
                // generated - now <= skew.
                i128::from(result.generated_ms?) - ms(keys.allow_clock_skew_seconds)
            };
            let from = i64::try_from(from.max(i128::from(i64::MIN))).ok()?;
            Some((from, expires.min(keys_valid_until)))
        }
        // Lifetime failures depend on now in both directions and are rare: recompute them.
        Status::InvalidTokenLifetime
        | Status::NotInitialized
        | Status::KeysNotSynced
        | Status::OptedOut => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::uid2::cipher::Secret;
    use crate::engine::uid2::decrypt;
    use crate::engine::uid2::encrypt::{TokenSpec, generate};
    use crate::engine::uid2::{IdentityScope, IdentityType};

    const NOW: i64 = 1_767_225_600_000;
    const SECRET_B64: &str = "o8HsvkwJ5Ulnrd0uui3GpukpwDapj+JLqb7qfN/GJKo=";

    fn keys(expires_s: i64) -> KeySet {
        let json = format!(
            r#"{{"max_bidstream_lifetime_seconds":259200,"keys":[{{"id":1,"created":0,"activates":0,"expires":{expires_s},"secret":"{SECRET_B64}"}}],
            "site_data":[{{"id":9000,"domain_names":["example.com"]}}]}}"#
        );
        KeySet::parse_json(json.as_bytes()).unwrap()
    }

    fn token(
        version: TokenVersion,
        expires_ms: i64,
        generated_ms: i64,
        privacy_bits: i32,
    ) -> String {
        let secret = Secret::new(
            crate::engine::uid2::wire::decode_standard(SECRET_B64)
                .unwrap()
                .try_into()
                .unwrap(),
        );
        generate(&TokenSpec {
            version,
            raw_uid2: "ywsvDNINiZOVSsfkHpLpSJzXzhr6Jx9Z/4Q0+lsEUvM=",
            scope: IdentityScope::Uid2,
            identity_type: IdentityType::Email,
            prefix_override: None,
            master_key_id: 1,
            master_secret: &secret,
            site_key_id: 1,
            site_secret: &secret,
            site_id: 9000,
            publisher_id: 0,
            client_key_id: 0,
            privacy_bits,
            expires_ms,
            generated_ms,
            established_ms: generated_ms,
            refreshed_ms: generated_ms,
            operator_site_id: 0,
            operator_type: 1,
            operator_version: 0,
            operator_key_id: 0,
            master_nonce: [1; 16],
            site_nonce: [2; 16],
        })
        .unwrap()
    }

    /// The cache must agree with a fresh decryption at every instant around every boundary.
    #[test]
    fn cached_answers_equal_fresh_answers_across_time_boundaries() {
        let key_set = keys(NOW / 1000 + 10 * 86_400);
        let hour = 3_600_000;
        for version in [TokenVersion::V2, TokenVersion::V3, TokenVersion::V4] {
            for bits in [0, 2] {
                let expires = NOW + 2 * hour;
                let generated = NOW - hour;
                let t = token(version, expires, generated, bits);
                let cache = DecryptCache::new(100);
                let probes = [
                    i64::MIN,
                    generated - 1_800_001,
                    generated - 1_800_000,
                    NOW,
                    expires - 1,
                    expires,
                    expires + 1,
                    expires + 3 * 86_400_000,
                    key_set.latest_expiry_ms().unwrap() - 1,
                    key_set.latest_expiry_ms().unwrap(),
                ];
                // Visit the instants forwards, backwards and shuffled so every entry gets reused out of order.
                let mut order: Vec<i64> =
                    probes.iter().chain(probes.iter().rev()).copied().collect();
                order.extend([NOW, expires + 1, generated - 1_800_001, NOW, expires]);
                for now in order {
                    for domain in [Some("example.com"), Some("foo.com"), None] {
                        let fresh = decrypt(&t, Some(&key_set), ClientMode::Bidstream, domain, now);
                        let cached =
                            cache.decrypt(&t, Some(&key_set), ClientMode::Bidstream, domain, now);
                        assert_eq!(
                            cached, fresh,
                            "{version:?} bits={bits} now={now} domain={domain:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_new_key_set_invalidates_entries() {
        let t = token(TokenVersion::V4, NOW + 1000, NOW - 1000, 0);
        let cache = DecryptCache::new(100);
        let first = keys(NOW / 1000 + 86_400);
        assert_eq!(
            cache
                .decrypt(&t, Some(&first), ClientMode::Bidstream, None, NOW)
                .status,
            Status::Success
        );
        // Same JSON, new generation: a refreshed set whose keys could differ.
        let wrong = KeySet::parse_json(
            br#"{"keys":[{"id":1,"created":0,"activates":0,"expires":4000000000,"secret":"DD67xF8OFmbJ1/lMPQ6fGRDbJOT4kXErrYWcKdFfCUE="}]}"#,
        )
        .unwrap();
        assert_eq!(
            cache
                .decrypt(&t, Some(&wrong), ClientMode::Bidstream, None, NOW)
                .status,
            Status::InvalidPayload
        );
        assert_eq!(
            cache
                .decrypt(&t, None, ClientMode::Bidstream, None, NOW)
                .status,
            Status::NotInitialized
        );
        assert_eq!(
            cache
                .decrypt(&t, Some(&first), ClientMode::Sharing, None, NOW)
                .status,
            Status::Success
        );
        assert!(cache.entry_count() >= 1);
        cache.invalidate_all();
        assert_eq!(cache.entry_count(), 0);
    }

    /// The name is derived only for a CSTG token in bidstream mode, by the plain and the cached path alike,
    /// and the answers equal those of `decrypt` with the name given up front.
    #[test]
    fn the_name_is_asked_for_only_when_the_domain_check_runs() {
        use std::cell::Cell;
        let key_set = keys(NOW / 1000 + 86_400);
        let cache = DecryptCache::new(100);
        for version in [TokenVersion::V2, TokenVersion::V3, TokenVersion::V4] {
            for bits in [0, 2] {
                let t = token(version, NOW + 3_600_000, NOW - 1000, bits);
                for mode in [ClientMode::Bidstream, ClientMode::Sharing] {
                    for name in [Some("example.com"), Some("other.com"), None] {
                        let asked = Cell::new(0);
                        let lazy = || {
                            asked.set(asked.get() + 1);
                            name
                        };
                        let eager = decrypt(&t, Some(&key_set), mode, name, NOW);
                        let plain = decrypt_with_name(&t, Some(&key_set), mode, &lazy, NOW);
                        assert_eq!(plain, eager);
                        let needed = bits == 2 && mode == ClientMode::Bidstream;
                        assert_eq!(asked.get(), usize::from(needed), "{version:?} {mode:?}");
                        for _ in 0..2 {
                            asked.set(0);
                            let cached =
                                cache.decrypt_with_name(&t, Some(&key_set), mode, &lazy, NOW);
                            assert_eq!(cached, eager);
                            if !needed {
                                assert_eq!(asked.get(), 0, "{version:?} {mode:?} cached");
                            }
                        }
                    }
                }
            }
        }
    }
}
