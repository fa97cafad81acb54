//! The opt-out set shared between the pipeline's lookups and the inserts of the topic follower and the
//! webhook: each shard of the compact set behind its own `RwLock`, with a lock-free hint of where its
//! tables are for prefetching.

use std::fmt;
use std::sync::RwLock;
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use super::OptOutLookup;
use super::records::RawUid2;
use super::set::{
    Applied, OptOutSet, Shard, hash_key, lookup_text, prefetch_table, split_hash, text_position,
};

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
