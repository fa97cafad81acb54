//! The compact opt-out set: sharded open-addressing tables keyed by raw UID2 bytes, looked up by the
//! base64 text without decoding it on a miss (see the module docs of `optout`). One `unsafe` call: the
//! x86_64 prefetch instruction (`core::arch`), a hint that never faults.

use std::fmt;

use super::OptOutLookup;
use super::records::{OptOutRecord, RAW_UID2_TEXT_LEN, RawUid2};

/// Shards of the set: each grows on its own, and each has its own lock in
/// [`LiveOptOuts`](super::LiveOptOuts).
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
pub(super) const HASHED: usize = 9;

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
pub(super) fn hash_key(key: &[u8]) -> u64 {
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
pub(super) fn text_prefix(text: &str) -> Option<([u8; HASHED], bool)> {
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
pub(super) fn split_hash(h: u64) -> (usize, u8, u32) {
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
pub(super) struct Table<const N: usize> {
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
    pub(super) fn hint(&self) -> (*const u8, *const u8, usize) {
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

    pub(super) fn iter(&self) -> impl Iterator<Item = (&[u8; N], u32)> {
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
pub(super) struct Shard {
    pub(super) short: Table<32>,
    pub(super) long: Table<33>,
}

impl Shard {
    /// The time of the key in the 33-byte table if `long`, else in the 32-byte one.
    #[inline]
    pub(super) fn get(
        &self,
        long: bool,
        tag: u8,
        low: u32,
        is_key: impl FnMut(&[u8]) -> bool,
    ) -> Option<u32> {
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

    pub(super) fn insert(&mut self, key: &RawUid2, tag: u8, low: u32, secs: u32) -> Applied {
        if key.len == 32 {
            match key.bytes.first_chunk::<32>() {
                Some(k) => self.short.insert(k, tag, low, secs),
                None => Applied::Unchanged,
            }
        } else {
            self.long.insert(&key.bytes, tag, low, secs)
        }
    }

    pub(super) fn len(&self) -> usize {
        self.short.len + self.long.len
    }

    pub(super) fn bytes(&self) -> usize {
        self.short.bytes() + self.long.bytes()
    }
}

/// Raw UID2 → latest opt-out time (Unix seconds). Single-owner; see [`LiveOptOuts`](super::LiveOptOuts)
/// for the shared form.
#[derive(Clone)]
pub struct OptOutSet {
    pub(super) shards: Vec<Shard>,
    pub(super) len: usize,
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
pub(super) fn lookup_text(shard: &Shard, text: &str, at: TextPosition) -> Option<u32> {
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
pub(super) struct TextPosition {
    pub(super) shard: usize,
    tag: u8,
    low: u32,
    pub(super) long: bool,
}

/// `None` for a text that cannot be a raw UID2 (see [`text_prefix`]).
#[inline]
pub(super) fn text_position(text: &str) -> Option<TextPosition> {
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
pub(super) fn prefetch_table(at: TextPosition, (tags, slots, cap): (*const u8, *const u8, usize)) {
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
