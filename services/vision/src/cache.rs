//! The soft-token cache: an LRU map from "these decoded pixels, preprocessed this way, through
//! these weights" to the encoder's output, bounded by bytes (`--cache-bytes`).
//!
//! The same image is often asked about many times (several prompts per picture, retries, a
//! detection followed by a caption). A hit skips resize, normalisation and the whole SigLIP
//! forward; only the decode (needed to compute the key) is paid again. Keys hash the *decoded*
//! pixels rather than the file bytes so that re-encoded copies of one picture (same pixels,
//! different PNG compression or metadata) share an entry.
//!
//! Entries hold the encoder output as `f32` (exact for f32 and bf16 models), so a hit packs to
//! the wire exactly as the miss that filled it did: hits are bit-identical.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use paligemma_image::{PreprocessorConfig, RgbImage};
use xxhash_rust::xxh3::Xxh3;

/// One image's encoder output: `rows × cols` values, row-major (`[N, D]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    /// Soft tokens (N).
    pub rows: usize,
    /// Width of each soft token (D).
    pub cols: usize,
    /// `rows * cols` values.
    pub values: Vec<f32>,
}

impl Features {
    /// Bytes this entry accounts for in the cache's bound (the values plus a fixed overhead
    /// for the map entry, so that many tiny entries cannot exceed the bound either).
    pub fn cost(&self) -> usize {
        self.values.len() * size_of::<f32>() + ENTRY_OVERHEAD
    }
}

/// Per-entry bookkeeping charged against the byte bound.
const ENTRY_OVERHEAD: usize = 128;

/// What identifies a cached encoding: 128 bits of xxh3 over the weights fingerprint, the
/// preprocessing settings, the decoded image's size and its pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey(u128);

impl CacheKey {
    /// The key of `image` encoded by the weights with `fingerprint` after preprocessing `cfg`.
    pub fn new(fingerprint: &str, cfg: &PreprocessorConfig, image: &RgbImage) -> Self {
        let mut h = Xxh3::new();
        // Length-prefixed so that no two (fingerprint, config) pairs hash the same stream.
        let settings = format!("{cfg:?}");
        for part in [fingerprint.as_bytes(), settings.as_bytes()] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part);
        }
        h.update(&image.width().to_le_bytes());
        h.update(&image.height().to_le_bytes());
        h.update(image.as_raw());
        Self(h.digest128())
    }
}

/// Counters and occupancy of a [`SoftTokenCache`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    /// Lookups that found an entry.
    pub hits: u64,
    /// Lookups that found none.
    pub misses: u64,
    /// Entries dropped to make room.
    pub evictions: u64,
    /// Entries held now.
    pub entries: u64,
    /// Bytes held now (see [`Features::cost`]); never above `capacity_bytes`.
    pub bytes: u64,
    /// The bound (`--cache-bytes`); 0 disables the cache.
    pub capacity_bytes: u64,
}

/// A byte-bounded LRU of encoder outputs, shared by all requests of a replica.
#[derive(Debug)]
pub struct SoftTokenCache {
    capacity: usize,
    hits: AtomicU64,
    misses: AtomicU64,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<CacheKey, Entry>,
    /// Last-use tick → key; the first entry is the least recently used.
    recency: BTreeMap<u64, CacheKey>,
    tick: u64,
    bytes: usize,
    evictions: u64,
}

#[derive(Debug)]
struct Entry {
    features: Arc<Features>,
    tick: u64,
}

impl SoftTokenCache {
    /// An empty cache holding at most `capacity` bytes; 0 turns it off (every lookup misses and
    /// nothing is stored).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            state: Mutex::new(State::default()),
        }
    }

    /// Whether the cache stores anything at all.
    pub fn is_enabled(&self) -> bool {
        self.capacity > 0
    }

    /// The entry for `key`, marking it most recently used, and counts the hit or miss.
    pub fn get(&self, key: &CacheKey) -> Option<Arc<Features>> {
        if !self.is_enabled() {
            return None;
        }
        let found = {
            let mut state = self.lock();
            let tick = state.next_tick();
            let State {
                entries, recency, ..
            } = &mut *state;
            entries.get_mut(key).map(|entry| {
                recency.remove(&entry.tick);
                recency.insert(tick, *key);
                entry.tick = tick;
                Arc::clone(&entry.features)
            })
        };
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Stores `features` under `key` as the most recently used entry, evicting least recently
    /// used entries until the bound holds. An entry larger than the whole bound is not stored.
    pub fn insert(&self, key: CacheKey, features: Arc<Features>) {
        let cost = features.cost();
        if cost > self.capacity {
            return;
        }
        let mut state = self.lock();
        state.remove(&key);
        while state.bytes + cost > self.capacity {
            if !state.evict_oldest() {
                break;
            }
        }
        let tick = state.next_tick();
        state.recency.insert(tick, key);
        state.entries.insert(key, Entry { features, tick });
        state.bytes += cost;
    }

    /// Current counters and occupancy.
    pub fn stats(&self) -> CacheStats {
        let state = self.lock();
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: state.evictions,
            entries: state.entries.len() as u64,
            bytes: state.bytes as u64,
            capacity_bytes: self.capacity as u64,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is consistent after every statement that can panic, so a poisoned lock
        // (a panic elsewhere while holding it) leaves nothing half-updated.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    fn remove(&mut self, key: &CacheKey) {
        if let Some(old) = self.entries.remove(key) {
            self.recency.remove(&old.tick);
            self.bytes -= old.features.cost();
        }
    }

    /// Drops the least recently used entry; false when empty.
    fn evict_oldest(&mut self) -> bool {
        let Some((_, key)) = self.recency.pop_first() else {
            return false;
        };
        if let Some(old) = self.entries.remove(&key) {
            self.bytes -= old.features.cost();
            self.evictions += 1;
        }
        true
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn features(n: usize, fill: f32) -> Arc<Features> {
        Arc::new(Features {
            rows: 1,
            cols: n,
            values: vec![fill; n],
        })
    }

    fn key(i: u128) -> CacheKey {
        CacheKey(i)
    }

    #[test]
    fn byte_bound_holds_and_least_recently_used_goes_first() {
        let one = features(100, 0.0).cost();
        let cache = SoftTokenCache::new(3 * one);
        for i in 0..3 {
            cache.insert(key(i), features(100, i as f32));
        }
        // Touch 0 so that 1 is now the oldest.
        assert!(cache.get(&key(0)).is_some());
        cache.insert(key(3), features(100, 3.0));
        assert!(cache.get(&key(1)).is_none(), "LRU entry evicted");
        for i in [0, 2, 3] {
            assert_eq!(cache.get(&key(i)).unwrap().values[0], i as f32);
        }
        let stats = cache.stats();
        assert_eq!((stats.entries, stats.evictions), (3, 1));
        assert_eq!(stats.bytes, 3 * one as u64);
        assert_eq!((stats.hits, stats.misses), (4, 1));
    }

    #[test]
    fn bound_holds_under_many_mixed_sizes() {
        let capacity = 10_000;
        let cache = SoftTokenCache::new(capacity);
        for i in 0..500u128 {
            cache.insert(key(i % 37), features(1 + (i as usize * 7919) % 900, 1.0));
            let stats = cache.stats();
            assert!(stats.bytes <= capacity as u64, "{stats:?}");
        }
        let stats = cache.stats();
        let held: usize = (0..37)
            .filter_map(|i| cache.get(&key(i)))
            .map(|f| f.cost())
            .sum();
        assert_eq!(held as u64, stats.bytes, "accounting matches the entries");
    }

    #[test]
    fn oversized_entries_are_not_stored_and_zero_capacity_disables() {
        let cache = SoftTokenCache::new(1000);
        cache.insert(key(1), features(1000, 1.0));
        assert!(cache.get(&key(1)).is_none());
        assert_eq!(cache.stats().bytes, 0);

        let off = SoftTokenCache::new(0);
        assert!(!off.is_enabled());
        off.insert(key(1), features(1, 1.0));
        assert!(off.get(&key(1)).is_none());
        assert_eq!(off.stats(), CacheStats::default());
    }

    #[test]
    fn replacing_a_key_keeps_the_accounting_exact() {
        let cache = SoftTokenCache::new(100_000);
        cache.insert(key(7), features(10, 1.0));
        cache.insert(key(7), features(20, 2.0));
        let stats = cache.stats();
        assert_eq!(stats.entries, 1);
        assert_eq!(stats.bytes, features(20, 0.0).cost() as u64);
        assert_eq!(cache.get(&key(7)).unwrap().values, vec![2.0; 20]);
    }

    #[test]
    fn keys_depend_on_pixels_size_weights_and_settings() {
        let cfg = PreprocessorConfig::square(224);
        let a = RgbImage::from_raw(2, 1, vec![1, 2, 3, 4, 5, 6]).unwrap();
        let b = RgbImage::from_raw(2, 1, vec![1, 2, 3, 4, 5, 7]).unwrap();
        let c = RgbImage::from_raw(1, 2, vec![1, 2, 3, 4, 5, 6]).unwrap();
        let base = CacheKey::new("xxh3:1", &cfg, &a);
        assert_eq!(base, CacheKey::new("xxh3:1", &cfg, &a.clone()));
        assert_ne!(base, CacheKey::new("xxh3:1", &cfg, &b));
        assert_ne!(base, CacheKey::new("xxh3:1", &cfg, &c));
        assert_ne!(base, CacheKey::new("xxh3:2", &cfg, &a));
        assert_ne!(
            base,
            CacheKey::new("xxh3:1", &PreprocessorConfig::square(448), &a)
        );
    }
}
