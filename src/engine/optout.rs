//! The opt-out rule (UID2 DSP guide, `../shared/spec/openrtb.md` §5.2): a successfully decrypted token
//! whose raw UID2 opted out *after* the token's identity was established must not be used. This module
//! holds the rule, the lookup interface the enricher calls, the compact opt-out set (built for tens of
//! millions of entries), its concurrently readable form, and the pure parsers of opt-out records (webhook
//! parameters, CSV and JSON Lines files). Where opt-outs come from (webhook, Kafka topic, a replay file)
//! is the shell's business (`optout_feed`). Pure: no I/O, clock or randomness; depends on std,
//! base64-simd, serde and serde_json. One `unsafe` call: the x86_64 prefetch instruction (a hint that
//! never faults).
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

use std::fmt;
use std::sync::RwLock;
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};

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

// ------------------------------------------------------------------------------------------------
// Raw UID2s and opt-out times
// ------------------------------------------------------------------------------------------------

/// A raw UID2 in binary: 32 bytes (v2) or 33 bytes (v3/v4). `Debug` never shows the bytes (raw UID2s
/// are not logged).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RawUid2 {
    bytes: [u8; 33],
    len: u8,
}

impl fmt::Debug for RawUid2 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RawUid2(<{} bytes>)", self.len)
    }
}

/// Characters of a raw UID2 in standard base64 (32 bytes with one `=`, or 33 bytes without padding).
pub const RAW_UID2_TEXT_LEN: usize = 44;

impl RawUid2 {
    /// 32 or 33 bytes; anything else is not a raw UID2.
    pub fn from_bytes(bytes: &[u8]) -> Option<RawUid2> {
        if !(32..=33).contains(&bytes.len()) {
            return None;
        }
        let mut out = [0u8; 33];
        out.get_mut(..bytes.len())?.copy_from_slice(bytes);
        Some(RawUid2 {
            bytes: out,
            len: bytes.len() as u8,
        })
    }

    /// Standard base64 with padding, exactly 44 characters, of 32 or 33 bytes — the form the UID2
    /// service sends and the SDKs return. Allocation-free (it runs once per decrypted token).
    pub fn parse(text: &str) -> Option<RawUid2> {
        Self::parse_detailed(text).ok()
    }

    /// As [`RawUid2::parse`], saying what is wrong.
    pub fn parse_detailed(text: &str) -> Result<RawUid2, RawUid2Error> {
        if text.len() != RAW_UID2_TEXT_LEN {
            return Err(RawUid2Error::Length(text.len()));
        }
        let mut buf = [0u8; 33];
        let decoded = base64_simd::STANDARD
            .decode(text.as_bytes(), base64_simd::Out::from_slice(&mut buf))
            .map_err(|_| RawUid2Error::NotBase64)?;
        let len = decoded.len();
        if !(32..=33).contains(&len) {
            return Err(RawUid2Error::Length(text.len()));
        }
        Ok(RawUid2 {
            bytes: buf,
            len: len as u8,
        })
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..usize::from(self.len)).unwrap_or(&[])
    }

    /// The canonical text: standard base64 with padding.
    pub fn to_base64(&self) -> String {
        base64_simd::STANDARD.encode_to_string(self.as_bytes())
    }
}

/// Why a text is not a raw UID2.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RawUid2Error {
    #[error(
        "is {0} characters long; a raw UID2 is 44 characters of standard base64 (32 or 33 bytes)"
    )]
    Length(usize),
    #[error("is not standard base64 (A–Z a–z 0–9 + / with = padding) of 32 or 33 bytes")]
    NotBase64,
}

/// Earliest opt-out time accepted: 2020-01-01T00:00:00Z (UID2 launched in 2021).
pub const MIN_OPTOUT_SECS: i64 = 1_577_836_800;
/// Opt-out times must be before 2100-01-01T00:00:00Z.
pub const MAX_OPTOUT_SECS: i64 = 4_102_444_800;

/// Why an opt-out time is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OptOutTimeError {
    #[error("is not a whole number of Unix seconds")]
    NotANumber,
    #[error("{0} looks like milliseconds; opt-out times are Unix seconds")]
    Milliseconds(i64),
    #[error("{0} is before 2020-01-01 ({MIN_OPTOUT_SECS}); opt-out times are Unix seconds")]
    TooEarly(i64),
    #[error("{0} is after 2100-01-01 ({MAX_OPTOUT_SECS})")]
    TooLate(i64),
    #[error("{secs} is more than a day after the receiver's clock ({now_secs})")]
    InTheFuture { secs: i64, now_secs: i64 },
}

/// Checks an opt-out time in Unix seconds and narrows it to what the set stores.
pub fn check_optout_secs(secs: i64) -> Result<u32, OptOutTimeError> {
    if secs >= 100_000_000_000 {
        return Err(OptOutTimeError::Milliseconds(secs));
    }
    if secs < MIN_OPTOUT_SECS {
        return Err(OptOutTimeError::TooEarly(secs));
    }
    if secs >= MAX_OPTOUT_SECS {
        return Err(OptOutTimeError::TooLate(secs));
    }
    u32::try_from(secs).map_err(|_| OptOutTimeError::TooLate(secs))
}

/// Parses decimal Unix seconds (ASCII digits only) and checks them.
pub fn parse_optout_secs(text: &str) -> Result<u32, OptOutTimeError> {
    let text = text.trim();
    if text.is_empty() || text.len() > 18 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(OptOutTimeError::NotANumber);
    }
    let secs: i64 = text.parse().map_err(|_| OptOutTimeError::NotANumber)?;
    check_optout_secs(secs)
}

/// One opt-out: this raw UID2 opted out at `secs` (Unix seconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptOutRecord {
    pub raw_uid2: RawUid2,
    pub secs: u32,
}

/// Why one opt-out record (a webhook call, a batch item, a file line, a topic record) is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OptOutRecordError {
    #[error("the raw UID2 {0}")]
    RawUid2(#[from] RawUid2Error),
    #[error("the opt-out time {0}")]
    Time(#[from] OptOutTimeError),
    #[error("missing `{0}`")]
    Missing(&'static str),
    #[error("{0}")]
    Shape(String),
}

/// Builds a record from the webhook's text fields (`user`, `optouttime`).
pub fn parse_record(raw_uid2: &str, secs: &str) -> Result<OptOutRecord, OptOutRecordError> {
    let raw_uid2 = RawUid2::parse_detailed(raw_uid2.trim())?;
    let secs = parse_optout_secs(secs)?;
    Ok(OptOutRecord { raw_uid2, secs })
}

/// A JSON opt-out object: `{"user":…,"optouttime":…}` (the webhook's names) or
/// `{"raw_uid2":…,"unix_seconds":…}`; the time as a number or a string of digits.
#[derive(serde::Deserialize)]
struct JsonRecord {
    #[serde(alias = "raw_uid2")]
    user: Option<String>,
    #[serde(alias = "unix_seconds")]
    optouttime: Option<serde_json::Value>,
}

impl JsonRecord {
    fn into_record(self) -> Result<OptOutRecord, OptOutRecordError> {
        let user = self.user.ok_or(OptOutRecordError::Missing("user"))?;
        let raw_uid2 = RawUid2::parse_detailed(&user)?;
        let secs = match self.optouttime {
            None => return Err(OptOutRecordError::Missing("optouttime")),
            Some(serde_json::Value::Number(n)) => {
                check_optout_secs(n.as_i64().ok_or(OptOutTimeError::NotANumber)?)?
            }
            Some(serde_json::Value::String(s)) => parse_optout_secs(&s)?,
            Some(_) => return Err(OptOutTimeError::NotANumber.into()),
        };
        Ok(OptOutRecord { raw_uid2, secs })
    }
}

/// Parses a webhook batch: a JSON array of opt-out objects. Every item is checked before any is used,
/// so a batch is taken whole or not at all; the error names the item (0-based).
pub fn parse_json_batch(body: &[u8]) -> Result<Vec<OptOutRecord>, BatchError> {
    let items: Vec<serde_json::Value> =
        serde_json::from_slice(body).map_err(|e| BatchError::NotAnArray(e.to_string()))?;
    if items.is_empty() {
        return Err(BatchError::Empty);
    }
    if items.len() > MAX_BATCH {
        return Err(BatchError::TooLarge(items.len()));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(index, item)| {
            serde_json::from_value::<JsonRecord>(item)
                .map_err(|e| OptOutRecordError::Shape(format!("is not an opt-out object: {e}")))
                .and_then(JsonRecord::into_record)
                .map_err(|error| BatchError::Item { index, error })
        })
        .collect()
}

/// Most records one webhook batch may carry.
pub const MAX_BATCH: usize = 10_000;

/// Why a webhook batch is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("the body is not a JSON array of {{\"user\":…,\"optouttime\":…}} objects ({0})")]
    NotAnArray(String),
    #[error("the batch is empty")]
    Empty,
    #[error("the batch has {0} items; at most {MAX_BATCH} are taken per call")]
    TooLarge(usize),
    #[error("item {index}: {error}")]
    Item {
        index: usize,
        error: OptOutRecordError,
    },
}

/// An opt-out file's line format, decided by its first non-blank line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineFormat {
    /// `raw_uid2,unix_seconds`, an optional header line first.
    Csv,
    /// One JSON object a line.
    JsonLines,
}

impl LineFormat {
    /// JSON Lines when the line starts with `{`, else CSV.
    pub fn detect(first_line: &str) -> LineFormat {
        if first_line.trim_start().starts_with('{') {
            LineFormat::JsonLines
        } else {
            LineFormat::Csv
        }
    }
}

/// Parses one line of an opt-out file. `Ok(None)` for a blank line, and for a CSV header when
/// `first` (the first non-blank line) holds column names rather than a record.
pub fn parse_line(
    format: LineFormat,
    line: &str,
    first: bool,
) -> Result<Option<OptOutRecord>, OptOutRecordError> {
    let line = line.trim();
    if line.is_empty() {
        return Ok(None);
    }
    match format {
        LineFormat::JsonLines => serde_json::from_str::<JsonRecord>(line)
            .map_err(|e| {
                OptOutRecordError::Shape(format!(
                    "is not a JSON object with `user` and `optouttime`: {e}"
                ))
            })?
            .into_record()
            .map(Some),
        LineFormat::Csv => {
            let mut fields = line.split(',');
            let (Some(uid), Some(secs), None) = (fields.next(), fields.next(), fields.next())
            else {
                return Err(OptOutRecordError::Shape(
                    "is not two comma-separated fields `raw_uid2,unix_seconds`".to_string(),
                ));
            };
            let is_name = |f: &str| {
                let f = f.trim().trim_matches('"');
                // Column names: a word that is neither a raw UID2 (44 characters) nor a number.
                !f.is_empty()
                    && f.len() < RAW_UID2_TEXT_LEN
                    && f.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    && !f.bytes().all(|b| b.is_ascii_digit())
            };
            if first && is_name(uid) && is_name(secs) {
                return Ok(None);
            }
            parse_record(uid.trim().trim_matches('"'), secs.trim().trim_matches('"')).map(Some)
        }
    }
}

// ------------------------------------------------------------------------------------------------
// The compact set
// ------------------------------------------------------------------------------------------------

/// Shards of the set: each grows on its own, and each has its own lock in [`LiveOptOuts`].
pub const SHARDS: usize = 1024;
const SHARD_BITS: u32 = SHARDS.trailing_zeros();
/// Tables grow when this full (in 1/1000): linear probing stays short and misses scan one tag line.
const MAX_LOAD_PER_MILLE: usize = 800;
const MIN_CAPACITY: usize = 16;
/// Tags a lookup reads at once.
const GROUP: usize = 8;
const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// Bytes of a raw UID2 its hash is taken from: the first nine, which are exactly the first twelve
/// characters of its base64 text, so a lookup finds its table position without decoding the rest, and a
/// miss (the common case) never decodes it.
const HASHED: usize = 9;

/// The hash of a raw UID2's first [`HASHED`] bytes. Raw UID2s are SHA-256 output (a 33-byte one after its
/// metadata byte), so those bytes carry 64 random bits; the splitmix64 finaliser spreads structured test
/// keys too. Inserts come only from trusted sources, so keys chosen to collide are not a concern.
#[inline]
fn hash_prefix(prefix: &[u8; HASHED]) -> u64 {
    let [b0, b1, b2, b3, b4, b5, b6, b7, b8] = *prefix;
    let mut h = u64::from_le_bytes([b0, b1, b2, b3, b4, b5, b6, b7])
        ^ u64::from(b8).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    h ^ (h >> 31)
}

#[inline]
fn hash_key(key: &[u8]) -> u64 {
    key.first_chunk::<HASHED>().map_or(0, hash_prefix)
}

/// Standard base64's value of each character; 0xFF for what is not one.
const SEXTETS: [u8; 256] = {
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut table = [0xFF; 256];
    let mut i = 0;
    while i < alphabet.len() {
        table[alphabet[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// The first [`HASHED`] bytes of a raw UID2 from the first twelve characters of its 44-character base64
/// text, and whether it is a 33-byte one (no `=` at the end). `None` when the text is not 44 characters
/// or those twelve are not base64: the full decode refuses such a text too. A text that passes here but
/// not the full decode is found only if a tag matches, and then the full decode refuses it.
#[inline]
fn text_prefix(text: &str) -> Option<([u8; HASHED], bool)> {
    let text = text.as_bytes();
    if text.len() != RAW_UID2_TEXT_LEN {
        return None;
    }
    let head = text.first_chunk::<12>()?;
    let mut prefix = [0u8; HASHED];
    for (chars, bytes) in head.chunks_exact(4).zip(prefix.chunks_exact_mut(3)) {
        let (mut value, mut invalid) = (0u32, 0u8);
        for &c in chars {
            let sextet = SEXTETS.get(usize::from(c)).copied().unwrap_or(0xFF);
            invalid |= sextet;
            value = value << 6 | u32::from(sextet & 0x3F);
        }
        if invalid & 0x80 != 0 {
            return None;
        }
        let [_, b0, b1, b2] = value.to_be_bytes();
        bytes.copy_from_slice(&[b0, b1, b2]);
    }
    Some((prefix, text.last() != Some(&b'=')))
}

/// Shard from the top bits, tag from the next 7 (high bit set: 0 means empty), slot from the low half.
#[inline]
fn split_hash(h: u64) -> (usize, u8, u32) {
    let shard = (h >> (64 - SHARD_BITS)) as usize;
    let tag = 0x80 | ((h >> (56 - SHARD_BITS)) as u8 & 0x7F);
    (shard, tag, h as u32)
}

/// Asks the CPU to bring the cache line holding `at` into cache and goes on at once. Unlike a load, a
/// prefetch retires immediately, so the work after it is not held up behind the memory access.
#[inline(always)]
fn prefetch_line(at: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `_mm_prefetch` needs SSE, which every x86_64 CPU has. A prefetch is a hint: it reads
    // nothing into the program, writes nothing, and never faults, whatever the address (it may be a
    // table that a writer has just replaced and freed).
    unsafe {
        use core::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T0>(at.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

/// Where a lookup starting at `low` begins in a table of `cap` home positions: maps the 32-bit hash onto
/// any capacity (not only powers of two) without a division.
#[inline]
fn start_of(low: u32, cap: usize) -> usize {
    ((u64::from(low) * cap as u64) >> 32) as usize
}

#[derive(Clone, Copy)]
struct Slot<const N: usize> {
    key: [u8; N],
    secs: u32,
}

impl<const N: usize> Slot<N> {
    const EMPTY: Slot<N> = Slot {
        key: [0; N],
        secs: 0,
    };
}

/// One open-addressing table for keys of `N` bytes.
#[derive(Clone, Default)]
struct Table<const N: usize> {
    /// Home positions; the arrays hold a tail of more, so probes never wrap around.
    cap: usize,
    tags: Vec<u8>,
    slots: Vec<Slot<N>>,
    len: usize,
}

/// What an insert did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The raw UID2 was not in the set.
    New,
    /// It was, with an earlier time, which the later one replaced.
    Later,
    /// It was, with this time or a later one: nothing changed.
    Unchanged,
}

impl<const N: usize> Table<N> {
    #[inline]
    fn cap(&self) -> usize {
        self.cap
    }

    #[inline]
    fn start(&self, low: u32) -> usize {
        start_of(low, self.cap())
    }

    /// Probes eight tags at a time (SWAR): a miss usually finds an empty tag in its first group and no
    /// candidate, so it takes one well-predicted branch, and the CPU can overlap the cache misses of
    /// consecutive lookups instead of flushing them on a mispredicted per-tag branch.
    /// `is_key` compares a candidate slot's key with the one looked up; it runs only when a tag matches.
    #[inline]
    fn get(&self, tag: u8, low: u32, mut is_key: impl FnMut(&[u8]) -> bool) -> Option<u32> {
        if self.len == 0 {
            return None;
        }
        let mut i = self.start(low);
        // Load the first candidate slot together with its tags: a hit then waits for one memory
        // access, not for the tags and then the slot. (A miss reads only the tag line.)
        std::hint::black_box(self.slots.get(i).map(|s| s.secs));
        loop {
            let group = self
                .tags
                .get(i..i + GROUP)
                .and_then(|g| <[u8; GROUP]>::try_from(g).ok())
                .map(u64::from_le_bytes)?;
            let x = group ^ (LO * u64::from(tag));
            // High bit of each byte equal to `tag` (and, rarely, a false candidate next to one).
            let mut candidates = x.wrapping_sub(LO) & !x & HI;
            // Occupied tags have their high bit set.
            let empties = !group & HI;
            if empties != 0 {
                // The key's run ends at the first empty tag.
                candidates &= (1u64 << empties.trailing_zeros()).wrapping_sub(1);
            }
            while candidates != 0 {
                let j = i + (candidates.trailing_zeros() / 8) as usize;
                if let Some(slot) = self.slots.get(j)
                    && is_key(&slot.key)
                {
                    return Some(slot.secs);
                }
                candidates &= candidates - 1;
            }
            if empties != 0 {
                return None;
            }
            i += GROUP;
        }
    }

    /// Where the table is, for [`prefetch_at`].
    fn hint(&self) -> (*const u8, *const u8, usize) {
        let cap = if self.len == 0 { 0 } else { self.cap };
        (self.tags.as_ptr(), self.slots.as_ptr().cast(), cap)
    }

    fn insert(&mut self, key: &[u8; N], tag: u8, low: u32, secs: u32) -> Applied {
        if (self.len + 1) * 1000 > self.cap() * MAX_LOAD_PER_MILLE {
            self.grow();
        }
        loop {
            // The last GROUP tags stay empty, so every group read of a lookup is in bounds and ends.
            let limit = self.tags.len().saturating_sub(GROUP);
            let mut i = self.start(low);
            while i < limit {
                match self.tags.get(i).copied() {
                    Some(0) => {
                        if let (Some(t), Some(slot)) = (self.tags.get_mut(i), self.slots.get_mut(i))
                        {
                            *t = tag;
                            *slot = Slot { key: *key, secs };
                            self.len += 1;
                        }
                        return Applied::New;
                    }
                    Some(t) if t == tag => {
                        if let Some(slot) = self.slots.get_mut(i)
                            && slot.key == *key
                        {
                            if secs > slot.secs {
                                slot.secs = secs;
                                return Applied::Later;
                            }
                            return Applied::Unchanged;
                        }
                        i += 1;
                    }
                    _ => i += 1,
                }
            }
            // The run reached the tail: rare; a larger table spreads it.
            self.grow();
        }
    }

    fn grow(&mut self) {
        let cap = (self.cap + self.cap / 2).max(MIN_CAPACITY);
        // Runs that pass the last home position continue in the tail (an eighth, 16 to 64 slots).
        let tail = (cap / 8).clamp(2 * GROUP, 64);
        self.cap = cap;
        let old_tags = std::mem::replace(&mut self.tags, vec![0; cap + tail]);
        let old_slots = std::mem::replace(&mut self.slots, vec![Slot::EMPTY; cap + tail]);
        self.len = 0;
        for (tag, slot) in old_tags.into_iter().zip(old_slots) {
            if tag != 0 {
                let (_, tag, low) = split_hash(hash_key(&slot.key));
                self.insert(&slot.key, tag, low, slot.secs);
            }
        }
    }

    fn bytes(&self) -> usize {
        self.tags.capacity() + self.slots.capacity() * std::mem::size_of::<Slot<N>>()
    }

    fn iter(&self) -> impl Iterator<Item = (&[u8; N], u32)> {
        self.tags
            .iter()
            .zip(&self.slots)
            .filter(|(t, _)| **t != 0)
            .map(|(_, s)| (&s.key, s.secs))
    }
}

/// Prefetches what [`Table::get`] reads first in a table of `Slot<N>` at `tags`/`slots` with `cap` home
/// positions: the tag group (which may straddle two lines) and the first candidate slot's time. Only
/// address arithmetic, no access: the table may have moved since the hint was read.
#[inline]
fn prefetch_at<const N: usize>(tags: *const u8, slots: *const u8, cap: usize, low: u32) {
    if cap == 0 {
        return;
    }
    let i = start_of(low, cap);
    prefetch_line(tags.wrapping_add(i));
    prefetch_line(tags.wrapping_add(i + GROUP - 1));
    prefetch_line(
        slots
            .wrapping_add(i * std::mem::size_of::<Slot<N>>() + std::mem::offset_of!(Slot<N>, secs)),
    );
}

/// One shard: 32-byte keys (v2 raw UIDs) and 33-byte keys (v3/v4) in tables of their own, so the
/// common 32-byte entry takes 36 bytes, not 40.
#[derive(Clone, Default)]
struct Shard {
    short: Table<32>,
    long: Table<33>,
}

impl Shard {
    /// The time of the key in the 33-byte table if `long`, else in the 32-byte one.
    #[inline]
    fn get(&self, long: bool, tag: u8, low: u32, is_key: impl FnMut(&[u8]) -> bool) -> Option<u32> {
        if long {
            self.long.get(tag, low, is_key)
        } else {
            self.short.get(tag, low, is_key)
        }
    }

    /// Where the 33-byte table is if `long`, else the 32-byte one, for [`prefetch_table`].
    fn hint(&self, long: bool) -> (*const u8, *const u8, usize) {
        if long {
            self.long.hint()
        } else {
            self.short.hint()
        }
    }

    /// Reads the tag a lookup of `key` starts at, so a following insert finds it in cache.
    #[inline]
    fn touch(&self, key: &RawUid2, low: u32) {
        let tag = if key.len == 32 {
            self.short.tags.get(self.short.start(low))
        } else {
            self.long.tags.get(self.long.start(low))
        };
        std::hint::black_box(tag.copied());
    }

    fn insert(&mut self, key: &RawUid2, tag: u8, low: u32, secs: u32) -> Applied {
        if key.len == 32 {
            match key.bytes.first_chunk::<32>() {
                Some(k) => self.short.insert(k, tag, low, secs),
                None => Applied::Unchanged,
            }
        } else {
            self.long.insert(&key.bytes, tag, low, secs)
        }
    }

    fn len(&self) -> usize {
        self.short.len + self.long.len
    }

    fn bytes(&self) -> usize {
        self.short.bytes() + self.long.bytes()
    }
}

/// Raw UID2 → latest opt-out time (Unix seconds). Single-owner; see [`LiveOptOuts`] for the shared form.
#[derive(Clone)]
pub struct OptOutSet {
    shards: Vec<Shard>,
    len: usize,
}

impl Default for OptOutSet {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for OptOutSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OptOutSet({} entries)", self.len)
    }
}

impl OptOutSet {
    pub fn new() -> OptOutSet {
        OptOutSet {
            shards: vec![Shard::default(); SHARDS],
            len: 0,
        }
    }

    /// Records an opt-out, keeping the later time when the raw UID2 is already in the set.
    pub fn insert(&mut self, raw_uid2: &RawUid2, secs: u32) -> Applied {
        let (shard, tag, low) = split_hash(hash_key(raw_uid2.as_bytes()));
        let applied = match self.shards.get_mut(shard) {
            Some(s) => s.insert(raw_uid2, tag, low, secs),
            None => Applied::Unchanged,
        };
        if applied == Applied::New {
            self.len += 1;
        }
        applied
    }

    /// The opt-out time in Unix seconds, if the raw UID2 opted out.
    #[inline]
    pub fn get(&self, raw_uid2: &RawUid2) -> Option<u32> {
        let key = raw_uid2.as_bytes();
        let (shard, tag, low) = split_hash(hash_key(key));
        self.shards
            .get(shard)?
            .get(key.len() == 33, tag, low, |k| k == key)
    }

    /// Inserts many opt-outs, calling `applied` with what each insert did. Faster than one by one on a
    /// large set: the tag lines of the whole batch are read first, so their cache misses overlap instead
    /// of each insert waiting for its own.
    pub fn insert_batch(&mut self, batch: &[OptOutRecord], mut applied: impl FnMut(Applied)) {
        for chunk in batch.chunks(256) {
            for r in chunk {
                let (shard, _, low) = split_hash(hash_key(r.raw_uid2.as_bytes()));
                if let Some(s) = self.shards.get(shard) {
                    s.touch(&r.raw_uid2, low);
                }
            }
            for r in chunk {
                applied(self.insert(&r.raw_uid2, r.secs));
            }
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Heap bytes held by the tables.
    pub fn heap_bytes(&self) -> usize {
        self.shards.iter().map(Shard::bytes).sum::<usize>()
            + self.shards.capacity() * std::mem::size_of::<Shard>()
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = OptOutRecord> + '_ {
        self.shards.iter().flat_map(|s| {
            let short = s.short.iter().filter_map(|(k, secs)| {
                Some(OptOutRecord {
                    raw_uid2: RawUid2::from_bytes(k)?,
                    secs,
                })
            });
            let long = s.long.iter().filter_map(|(k, secs)| {
                Some(OptOutRecord {
                    raw_uid2: RawUid2::from_bytes(k)?,
                    secs,
                })
            });
            short.chain(long)
        })
    }
}

/// A lookup by text: the table position from the first twelve characters; the whole text is decoded only
/// when a tag matches, to compare keys.
#[inline]
fn lookup_text(shard: &Shard, text: &str, at: TextPosition) -> Option<u32> {
    let mut parsed: Option<Option<RawUid2>> = None;
    shard.get(at.long, at.tag, at.low, |k| {
        parsed
            .get_or_insert_with(|| RawUid2::parse(text))
            .as_ref()
            .is_some_and(|key| key.as_bytes() == k)
    })
}

/// Where a lookup by text goes: its shard, tag and home position, and which of the shard's two tables.
#[derive(Clone, Copy)]
struct TextPosition {
    shard: usize,
    tag: u8,
    low: u32,
    long: bool,
}

/// `None` for a text that cannot be a raw UID2 (see [`text_prefix`]).
#[inline]
fn text_position(text: &str) -> Option<TextPosition> {
    let (prefix, long) = text_prefix(text)?;
    let (shard, tag, low) = split_hash(hash_prefix(&prefix));
    Some(TextPosition {
        shard,
        tag,
        low,
        long,
    })
}

/// Prefetches what a lookup at `at` reads first, in the table described by its [`Table::hint`].
#[inline]
fn prefetch_table(at: TextPosition, (tags, slots, cap): (*const u8, *const u8, usize)) {
    if at.long {
        prefetch_at::<33>(tags, slots, cap, at.low);
    } else {
        prefetch_at::<32>(tags, slots, cap, at.low);
    }
}

impl OptOutLookup for OptOutSet {
    #[inline]
    fn opted_out_at_ms(&self, raw_uid2: &str) -> Option<i64> {
        let at = text_position(raw_uid2)?;
        lookup_text(self.shards.get(at.shard)?, raw_uid2, at).map(|secs| i64::from(secs) * 1000)
    }

    #[inline]
    fn prefetch(&self, raw_uid2: &str) {
        if let Some(at) = text_position(raw_uid2)
            && let Some(shard) = self.shards.get(at.shard)
        {
            prefetch_table(at, shard.hint(at.long));
        }
    }
}

/// A shard and its lock, on a cache line of its own so readers of neighbouring shards do not contend, and
/// where its two tables are ([`Hint`], 32-byte keys first).
#[repr(align(128))]
#[derive(Default)]
struct LockedShard(RwLock<Shard>, [Hint; 2]);

impl LockedShard {
    fn new(shard: Shard) -> LockedShard {
        let locked = LockedShard(RwLock::default(), Default::default());
        locked.publish(&shard);
        *locked.0.write().unwrap_or_else(|e| e.into_inner()) = shard;
        locked
    }

    /// Updates the hints; called with the write lock held, after anything that may move a table.
    fn publish(&self, shard: &Shard) {
        let [short, long] = &self.1;
        short.set(shard.short.hint());
        long.set(shard.long.hint());
    }
}

/// Where a table is, for [`OptOutLookup::prefetch`] to read without taking the lock (a lock's atomic
/// read-modify-write would hold the CPU up when the lock's line is not in cache, which is what the
/// prefetch is there to avoid). The three values are stored and loaded without ordering: a stale or
/// mixed hint only prefetches a useless line; it never changes an answer.
#[derive(Default)]
struct Hint {
    tags: AtomicPtr<u8>,
    slots: AtomicPtr<u8>,
    cap: AtomicUsize,
}

impl Hint {
    fn set(&self, (tags, slots, cap): (*const u8, *const u8, usize)) {
        self.tags.store(tags.cast_mut(), Ordering::Relaxed);
        self.slots.store(slots.cast_mut(), Ordering::Relaxed);
        self.cap.store(cap, Ordering::Relaxed);
    }

    #[inline]
    fn get(&self) -> (*const u8, *const u8, usize) {
        (
            self.tags.load(Ordering::Relaxed),
            self.slots.load(Ordering::Relaxed),
            self.cap.load(Ordering::Relaxed),
        )
    }
}

/// The opt-out set shared by the pipeline (lookups) and the topic follower and webhook (inserts): one
/// `RwLock` per shard, so an insert blocks only the lookups of 1/1024 of the keys, for as long as one
/// insert (or, rarely, one shard's growth) takes.
pub struct LiveOptOuts {
    shards: Vec<LockedShard>,
    len: AtomicU64,
}

impl Default for LiveOptOuts {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for LiveOptOuts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LiveOptOuts({} entries)", self.len())
    }
}

impl From<OptOutSet> for LiveOptOuts {
    fn from(set: OptOutSet) -> Self {
        LiveOptOuts {
            len: AtomicU64::new(set.len as u64),
            shards: set.shards.into_iter().map(LockedShard::new).collect(),
        }
    }
}

impl LiveOptOuts {
    pub fn new() -> LiveOptOuts {
        OptOutSet::new().into()
    }

    /// Records an opt-out, keeping the later time when the raw UID2 is already in the set.
    pub fn insert(&self, raw_uid2: &RawUid2, secs: u32) -> Applied {
        let (shard, tag, low) = split_hash(hash_key(raw_uid2.as_bytes()));
        let Some(lock) = self.shards.get(shard) else {
            return Applied::Unchanged;
        };
        // A panic while holding the lock cannot leave a table half-written in a way lookups trip
        // over (tags and slots are written together), so a poisoned lock is used as it is.
        let mut shard = lock.0.write().unwrap_or_else(|e| e.into_inner());
        let applied = shard.insert(raw_uid2, tag, low, secs);
        lock.publish(&shard);
        drop(shard);
        if applied == Applied::New {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
        applied
    }

    /// The opt-out time in Unix seconds, if the raw UID2 opted out.
    #[inline]
    pub fn get(&self, raw_uid2: &RawUid2) -> Option<u32> {
        let key = raw_uid2.as_bytes();
        let (shard, tag, low) = split_hash(hash_key(key));
        self.shards
            .get(shard)?
            .0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(key.len() == 33, tag, low, |k| k == key)
    }

    pub fn len(&self) -> u64 {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Moves a set built on its own (the initial load) in, shard by shard, keeping whatever was inserted
    /// here meanwhile (the later time wins). Each shard is locked only while its contents are swapped.
    pub fn absorb(&self, set: OptOutSet) {
        for (lock, built) in self.shards.iter().zip(set.shards) {
            let mut shard = lock.0.write().unwrap_or_else(|e| e.into_inner());
            let meanwhile = std::mem::replace(&mut *shard, built);
            for (key, secs) in meanwhile.short.iter() {
                if let Some(raw) = RawUid2::from_bytes(key) {
                    let (_, tag, low) = split_hash(hash_key(raw.as_bytes()));
                    shard.insert(&raw, tag, low, secs);
                }
            }
            for (key, secs) in meanwhile.long.iter() {
                if let Some(raw) = RawUid2::from_bytes(key) {
                    let (_, tag, low) = split_hash(hash_key(raw.as_bytes()));
                    shard.insert(&raw, tag, low, secs);
                }
            }
            lock.publish(&shard);
        }
        let total: usize = self
            .shards
            .iter()
            .map(|s| s.0.read().unwrap_or_else(|e| e.into_inner()).len())
            .sum();
        self.len.store(total as u64, Ordering::Relaxed);
    }

    /// Heap bytes held by the tables.
    pub fn heap_bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.0.read().unwrap_or_else(|e| e.into_inner()).bytes())
            .sum::<usize>()
            + self.shards.capacity() * std::mem::size_of::<LockedShard>()
    }

    /// Entries per shard, smallest and largest (for tests of the spread).
    pub fn shard_len_range(&self) -> (usize, usize) {
        self.shards
            .iter()
            .map(|s| s.0.read().unwrap_or_else(|e| e.into_inner()).len())
            .fold((usize::MAX, 0), |(lo, hi), n| (lo.min(n), hi.max(n)))
    }
}

impl OptOutLookup for LiveOptOuts {
    #[inline]
    fn opted_out_at_ms(&self, raw_uid2: &str) -> Option<i64> {
        let at = text_position(raw_uid2)?;
        let shard = self
            .shards
            .get(at.shard)?
            .0
            .read()
            .unwrap_or_else(|e| e.into_inner());
        lookup_text(&shard, raw_uid2, at).map(|secs| i64::from(secs) * 1000)
    }

    /// Reads the shard's [`Hint`], not its lock.
    #[inline]
    fn prefetch(&self, raw_uid2: &str) {
        if let Some(at) = text_position(raw_uid2)
            && let Some(hint) = self
                .shards
                .get(at.shard)
                .and_then(|s| s.1.get(usize::from(at.long)))
        {
            prefetch_table(at, hint.get());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const UID_32: &str = "ywsvDNINiZOVSsfkHpLpSJzXzhr6Jx9Z/4Q0+lsEUvM=";
    const UID_33: &str = "BFOsW2SkK0egqbfyiALtpti5G/cG+PcEvjkoHl56rEV8";
    const T: u32 = 1_767_225_600;

    fn key(i: u64, len: usize) -> RawUid2 {
        // Deliberately structured keys (a counter in the hashed bytes, after a 33-byte key's metadata
        // byte), not random ones: the hash must spread them.
        let mut b = [0u8; 33];
        b[len - 32..len - 24].copy_from_slice(&i.to_be_bytes());
        RawUid2::from_bytes(&b[..len]).unwrap()
    }

    #[test]
    fn only_opt_outs_after_establishment_count() {
        let set: HashMap<String, i64> = [("u".to_string(), 1_000)].into();
        assert!(is_opted_out(&set, "u", 999));
        assert!(
            !is_opted_out(&set, "u", 1_000),
            "established at the opt-out instant: not before it"
        );
        assert!(!is_opted_out(&set, "u", 1_001));
        assert!(!is_opted_out(&set, "other", 0));
        assert!(!is_opted_out(&NoOptOuts, "u", 0));
    }

    #[test]
    fn raw_uid2_text_round_trips_and_rejects_what_is_not_one() {
        for text in [UID_32, UID_33] {
            let k = RawUid2::parse(text).unwrap();
            assert_eq!(k.to_base64(), text);
            assert_eq!(
                k.as_bytes(),
                crate::engine::uid2::encrypt::parse_raw_uid2(text).unwrap()
            );
        }
        assert_eq!(RawUid2::parse(UID_32).unwrap().as_bytes().len(), 32);
        assert_eq!(RawUid2::parse(UID_33).unwrap().as_bytes().len(), 33);
        assert_eq!(
            RawUid2::parse_detailed(&UID_32[..43]),
            Err(RawUid2Error::Length(43))
        );
        let bad = UID_32.replace('/', "_");
        assert_eq!(RawUid2::parse_detailed(&bad), Err(RawUid2Error::NotBase64));
        // 31 bytes in 44 characters does not exist; 30 bytes is 40 characters.
        assert!(RawUid2::from_bytes(&[0; 31]).is_none());
        assert!(RawUid2::from_bytes(&[0; 34]).is_none());
        assert!(!format!("{:?}", RawUid2::parse(UID_32).unwrap()).contains("ywsv"));
    }

    #[test]
    fn times_must_be_sane_unix_seconds() {
        assert_eq!(parse_optout_secs("1767225600"), Ok(T));
        assert_eq!(parse_optout_secs(" 1767225600 "), Ok(T));
        assert_eq!(
            parse_optout_secs("1767225600000"),
            Err(OptOutTimeError::Milliseconds(1_767_225_600_000))
        );
        assert_eq!(parse_optout_secs("12"), Err(OptOutTimeError::TooEarly(12)));
        assert_eq!(
            parse_optout_secs("4102444800"),
            Err(OptOutTimeError::TooLate(4_102_444_800))
        );
        for bad in [
            "",
            "-1",
            "1.5",
            "0x10",
            "17672256OO",
            "99999999999999999999",
        ] {
            assert_eq!(
                parse_optout_secs(bad),
                Err(OptOutTimeError::NotANumber),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn set_keeps_the_latest_time_and_tells_keys_apart() {
        let mut set = OptOutSet::new();
        let (a, b) = (
            RawUid2::parse(UID_32).unwrap(),
            RawUid2::parse(UID_33).unwrap(),
        );
        assert_eq!(set.insert(&a, T), Applied::New);
        assert_eq!(set.insert(&a, T - 5), Applied::Unchanged);
        assert_eq!(set.get(&a), Some(T));
        assert_eq!(set.insert(&a, T + 5), Applied::Later);
        assert_eq!(set.get(&a), Some(T + 5));
        assert_eq!(set.get(&b), None);
        assert_eq!(set.insert(&b, T), Applied::New);
        assert_eq!(set.len(), 2);
        // A 32-byte key and a 33-byte key sharing their first 32 bytes are different raw UID2s.
        let mut long = [0u8; 33];
        long[..32].copy_from_slice(a.as_bytes());
        let a33 = RawUid2::from_bytes(&long).unwrap();
        assert_eq!(set.get(&a33), None);
        assert_eq!(set.opted_out_at_ms(UID_32), Some(i64::from(T + 5) * 1000));
        assert_eq!(set.opted_out_at_ms("not a uid"), None);
        assert!(is_opted_out(&set, UID_33, i64::from(T) * 1000 - 1));
        assert!(!is_opted_out(&set, UID_33, i64::from(T) * 1000));
    }

    #[test]
    fn set_agrees_with_a_hash_map_through_many_growths() {
        let mut set = OptOutSet::new();
        let mut model: HashMap<Vec<u8>, u32> = HashMap::new();
        let mut rng = fastrand::Rng::with_seed(7);
        for i in 0..200_000u64 {
            let len = if i % 5 == 0 { 33 } else { 32 };
            let k = key(rng.u64(0..150_000), len);
            let secs = T + rng.u32(0..1000);
            let expected = match model.get(k.as_bytes()) {
                None => Applied::New,
                Some(&old) if secs > old => Applied::Later,
                Some(_) => Applied::Unchanged,
            };
            assert_eq!(set.insert(&k, secs), expected);
            let e = model.entry(k.as_bytes().to_vec()).or_insert(secs);
            *e = (*e).max(secs);
        }
        assert_eq!(set.len(), model.len());
        for (k, secs) in &model {
            assert_eq!(set.get(&RawUid2::from_bytes(k).unwrap()), Some(*secs));
        }
        for i in 150_000..160_000u64 {
            assert_eq!(set.get(&key(i, 32)), None);
            assert_eq!(set.get(&key(i, 33)), None);
        }
        let listed: HashMap<Vec<u8>, u32> = set
            .iter()
            .map(|r| (r.raw_uid2.as_bytes().to_vec(), r.secs))
            .collect();
        assert_eq!(listed, model);
        let per_entry = set.heap_bytes() as f64 / set.len() as f64;
        assert!(per_entry < 80.0, "{per_entry:.1} bytes per entry");
    }

    #[test]
    fn lookups_by_text_agree_with_lookups_by_bytes() {
        let mut rng = fastrand::Rng::with_seed(11);
        let mut set = OptOutSet::new();
        let mut keys = Vec::new();
        for i in 0..20_000u32 {
            let len = if i % 3 == 0 { 33 } else { 32 };
            let mut b = [0u8; 33];
            rng.fill(&mut b);
            let k = RawUid2::from_bytes(&b[..len]).unwrap();
            if i % 2 == 0 {
                set.insert(&k, T + i);
            }
            keys.push(k);
        }
        let live = LiveOptOuts::from(set.clone());
        for k in &keys {
            let text = k.to_base64();
            let (prefix, long) = text_prefix(&text).unwrap();
            assert_eq!(&prefix[..], &k.as_bytes()[..HASHED]);
            assert_eq!(long, k.as_bytes().len() == 33);
            let expected = set.get(k).map(|secs| i64::from(secs) * 1000);
            assert_eq!(set.opted_out_at_ms(&text), expected);
            assert_eq!(live.opted_out_at_ms(&text), expected);
            set.prefetch(&text);
            live.prefetch(&text);
            // A listed key whose text is spoiled after the hashed prefix, or shortened, is not found.
            let mut spoiled = text.clone().into_bytes();
            spoiled[30] = b'*';
            let spoiled = String::from_utf8(spoiled).unwrap();
            assert_eq!(live.opted_out_at_ms(&spoiled), None);
            assert_eq!(set.opted_out_at_ms(&text[..43]), None);
            live.prefetch(&spoiled);
            live.prefetch(&text[..43]);
        }
        for bad in [
            "",
            "*BFOsW2SkK0egqbfyiALtpti5G/cG+PcEvjkoHl56rEV8",
            "BFOsW2SkK0-g",
        ] {
            assert_eq!(text_prefix(bad), None);
            assert_eq!(live.opted_out_at_ms(bad), None);
        }
        // Hints follow the tables as they grow.
        let grown = LiveOptOuts::new();
        for k in &keys {
            grown.insert(k, T);
        }
        for k in &keys {
            assert_eq!(
                grown.opted_out_at_ms(&k.to_base64()),
                Some(i64::from(T) * 1000)
            );
        }
    }

    #[test]
    fn batches_and_absorbing_agree_with_single_inserts() {
        let records: Vec<OptOutRecord> = (0..5_000u64)
            .map(|i| OptOutRecord {
                raw_uid2: key(i % 3_000, if i % 7 == 0 { 33 } else { 32 }),
                secs: T + (i as u32 % 13),
            })
            .collect();
        let (mut one, mut batched) = (OptOutSet::new(), OptOutSet::new());
        let mut expected = Vec::new();
        for r in &records {
            expected.push(one.insert(&r.raw_uid2, r.secs));
        }
        let mut got = Vec::new();
        batched.insert_batch(&records, |a| got.push(a));
        assert_eq!(got, expected);
        assert_eq!(batched.len(), one.len());
        // Absorbing keeps what the live set received meanwhile, latest time winning.
        let live = LiveOptOuts::new();
        live.insert(&key(1, 32), T + 100);
        live.insert(&key(999_999, 32), T);
        live.absorb(batched);
        assert_eq!(live.len(), one.len() as u64 + 1);
        assert_eq!(live.get(&key(1, 32)), Some(T + 100));
        assert_eq!(live.get(&key(999_999, 32)), Some(T));
        assert_eq!(live.get(&key(2, 32)), one.get(&key(2, 32)));
    }

    #[test]
    fn live_set_takes_inserts_while_others_read() {
        let live = std::sync::Arc::new(LiveOptOuts::new());
        let writer = {
            let live = live.clone();
            std::thread::spawn(move || {
                for i in 0..50_000u64 {
                    live.insert(&key(i, 32), T);
                }
            })
        };
        let reader = {
            let live = live.clone();
            std::thread::spawn(move || {
                // Once seen, an entry stays: the reader never sees an insert undone by a growth.
                let mut seen = 0u64;
                while seen < 50_000 {
                    if live.get(&key(seen, 32)).is_some() {
                        seen += 1;
                    } else {
                        for j in 0..seen {
                            assert_eq!(live.get(&key(j, 32)), Some(T));
                        }
                        std::thread::yield_now();
                    }
                }
            })
        };
        writer.join().unwrap();
        reader.join().unwrap();
        assert_eq!(live.len(), 50_000);
        let (lo, hi) = live.shard_len_range();
        assert!(lo > 0 && hi < 200, "shards hold {lo}..{hi} of 50,000");
        let moved: LiveOptOuts = {
            let mut s = OptOutSet::new();
            s.insert(&key(1, 33), T);
            s.into()
        };
        assert_eq!(moved.len(), 1);
        assert_eq!(moved.get(&key(1, 33)), Some(T));
    }

    #[test]
    fn csv_lines_with_an_optional_header() {
        let f = LineFormat::detect("raw_uid2,unix_seconds");
        assert_eq!(f, LineFormat::Csv);
        assert_eq!(parse_line(f, "raw_uid2,unix_seconds", true), Ok(None));
        assert_eq!(parse_line(f, "user,optouttime\r", true), Ok(None));
        assert_eq!(parse_line(f, "   ", false), Ok(None));
        let r = parse_line(f, &format!("{UID_32},{T}\r"), true)
            .unwrap()
            .unwrap();
        assert_eq!((r.raw_uid2.to_base64(), r.secs), (UID_32.to_string(), T));
        let r = parse_line(f, &format!("\"{UID_33}\", {T}"), false)
            .unwrap()
            .unwrap();
        assert_eq!(r.raw_uid2.as_bytes().len(), 33);
        // A header is only a header on the first line.
        assert!(parse_line(f, "raw_uid2,unix_seconds", false).is_err());
        assert!(matches!(
            parse_line(f, &format!("{UID_32},{T},x"), false),
            Err(OptOutRecordError::Shape(_))
        ));
        assert!(matches!(
            parse_line(f, &format!("{UID_32};{T}"), false),
            Err(OptOutRecordError::Shape(_))
        ));
        assert!(matches!(
            parse_line(f, &format!("{UID_32},{}000", T), false),
            Err(OptOutRecordError::Time(OptOutTimeError::Milliseconds(_)))
        ));
        assert!(matches!(
            parse_line(f, &format!("abc,{T}"), false),
            Err(OptOutRecordError::RawUid2(RawUid2Error::Length(3)))
        ));
    }

    #[test]
    fn json_lines_with_either_names() {
        let f = LineFormat::detect(" {\"user\":1}");
        assert_eq!(f, LineFormat::JsonLines);
        for line in [
            format!(r#"{{"user":"{UID_32}","optouttime":{T}}}"#),
            format!(r#"{{"raw_uid2":"{UID_32}","unix_seconds":"{T}","extra":[1]}}"#),
        ] {
            let r = parse_line(f, &line, false).unwrap().unwrap();
            assert_eq!((r.raw_uid2.to_base64(), r.secs), (UID_32.to_string(), T));
        }
        assert_eq!(
            parse_line(f, &format!(r#"{{"user":"{UID_32}"}}"#), false),
            Err(OptOutRecordError::Missing("optouttime"))
        );
        assert_eq!(
            parse_line(f, &format!(r#"{{"optouttime":{T}}}"#), false),
            Err(OptOutRecordError::Missing("user"))
        );
        assert_eq!(
            parse_line(
                f,
                &format!(r#"{{"user":"{UID_32}","optouttime":1.5}}"#),
                false
            ),
            Err(OptOutRecordError::Time(OptOutTimeError::NotANumber))
        );
        assert!(matches!(
            parse_line(f, "{not json", false),
            Err(OptOutRecordError::Shape(_))
        ));
    }

    #[test]
    fn batches_are_taken_whole_or_not_at_all() {
        let ok = format!(
            r#"[{{"user":"{UID_32}","optouttime":{T}}},{{"raw_uid2":"{UID_33}","unix_seconds":"{T}"}}]"#
        );
        assert_eq!(parse_json_batch(ok.as_bytes()).unwrap().len(), 2);
        let bad = format!(
            r#"[{{"user":"{UID_32}","optouttime":{T}}},{{"user":"{UID_33}","optouttime":5}}]"#
        );
        assert_eq!(
            parse_json_batch(bad.as_bytes()),
            Err(BatchError::Item {
                index: 1,
                error: OptOutRecordError::Time(OptOutTimeError::TooEarly(5))
            })
        );
        assert_eq!(parse_json_batch(b"[]"), Err(BatchError::Empty));
        assert!(matches!(
            parse_json_batch(b"{\"user\":1}"),
            Err(BatchError::NotAnArray(_))
        ));
        assert!(matches!(
            parse_json_batch(b"[1]"),
            Err(BatchError::Item { index: 0, .. })
        ));
        let many = format!("[{}]", vec!["{}"; MAX_BATCH + 1].join(","));
        assert_eq!(
            parse_json_batch(many.as_bytes()),
            Err(BatchError::TooLarge(MAX_BATCH + 1))
        );
    }
}
