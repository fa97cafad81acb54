//! The opt-out rule (UID2 DSP guide, `../shared/spec/openrtb.md` §5.2): a successfully decrypted token
//! whose raw UID2 opted out *after* the token's identity was established must not be used. This module
//! holds the rule, the lookup interface the enricher calls, the compact opt-out set (built for tens of
//! millions of entries), its concurrently readable form, and the pure parsers of opt-out records (webhook
//! parameters, CSV and JSON Lines files). Where opt-outs come from (webhook, Kafka topic, a replay file)
//! is the shell's business (`optout_feed`). Pure: no I/O, clock or randomness.
//!
//! This file holds the rule and the lookup interface; `records` the raw UID2, opt-out times and the
//! record parsers; `set` the compact set; `live` its concurrently readable form.
//!
//! # The set
//! [`OptOutSet`] maps a raw UID2 — 32 bytes (v2) or 33 bytes (v3/v4: a metadata byte, then the 32-byte
//! hash), never its base64 text — to the latest opt-out time in Unix seconds (`u32`, good until 2106).
//! It is split into [`SHARDS`] open-addressing tables with linear probing (runs continue into a tail of
//! spare slots rather than wrapping): a one-byte tag array that a miss (the common case at bid time)
//! probes eight tags at a time within one cache line, and a slot array of `(key, seconds)`,
//! 36 bytes for a 32-byte key. Tables grow by half when 80 % full, so the set costs 45–70 bytes per entry
//! and growing never doubles the whole set at once. Raw UID2s are SHA-256 output, so the hash is a cheap
//! mix of the key's first nine bytes (the first twelve characters of its base64 text) rather than a keyed
//! hash: a lookup by text finds its table position without decoding the rest, and decodes it only when a
//! tag matches. Inserts come only from authenticated or trusted sources (webhook with a bearer token, the
//! topic, a file), never from bid traffic.
//!
//! [`OptOutLookup::prefetch`] lets the enricher request a user's table line as soon as the token
//! decrypts and check the rule after other work, so the memory access (a cache miss in a large set)
//! overlaps that work.
//!
//! [`LiveOptOuts`] puts each shard behind its own `RwLock`: the pipeline's lookups take a shard's read
//! lock for tens of nanoseconds while the topic follower inserts into another (or the same) shard. Its
//! prefetch reads a lock-free hint of where the shard's tables are instead of the lock.

mod live;
mod records;
mod set;

pub use live::LiveOptOuts;
pub use records::{
    BatchError, LineFormat, MAX_BATCH, MAX_OPTOUT_SECS, MIN_OPTOUT_SECS, OptOutRecord,
    OptOutRecordError, OptOutTimeError, RAW_UID2_TEXT_LEN, RawUid2, RawUid2Error,
    check_optout_secs, parse_json_batch, parse_line, parse_optout_secs, parse_record,
};
pub use set::{Applied, OptOutSet, SHARDS};

/// Answers "when did this raw UID2 opt out?" in milliseconds since the epoch, if it did.
pub trait OptOutLookup: Sync {
    fn opted_out_at_ms(&self, raw_uid2: &str) -> Option<i64>;

    /// Starts loading the memory a later `opted_out_at_ms(raw_uid2)` reads, without waiting for it. A
    /// user's table line in a large set is usually not in cache (one DRAM access); a caller that has other
    /// work to do before it needs the answer overlaps that access with the work. Only a hint: it changes
    /// nothing, and the default does nothing.
    #[inline]
    fn prefetch(&self, _raw_uid2: &str) {}
}

/// The lookup to use when no opt-outs are loaded.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoOptOuts;

impl OptOutLookup for NoOptOuts {
    fn opted_out_at_ms(&self, _raw_uid2: &str) -> Option<i64> {
        None
    }
}

impl<S: std::hash::BuildHasher + Sync> OptOutLookup for std::collections::HashMap<String, i64, S> {
    fn opted_out_at_ms(&self, raw_uid2: &str) -> Option<i64> {
        self.get(raw_uid2).copied()
    }
}

/// The rule: opted out when the opt-out is later than the token's `established` time. A token whose
/// identity was established after the opt-out (the user came back) is used.
pub fn is_opted_out(lookup: &dyn OptOutLookup, raw_uid2: &str, established_ms: i64) -> bool {
    lookup
        .opted_out_at_ms(raw_uid2)
        .is_some_and(|optout_ms| optout_ms > established_ms)
}

#[cfg(test)]
mod tests;
