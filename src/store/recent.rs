//! Recently read records of the `entries` family, decoded, bounded by an estimate of their memory
//! (five eighths of `[cache] memory`): a hot answer costs no RocksDB read and no decoding.

use std::sync::Arc;

use super::entry::{Entry, Record};

/// A record as hot records hold it: an entry is shared, so a hit takes it with one reference count
/// instead of copying its strings (no speed change measured at 100,000 URLs, see docs/benchmarks.md;
/// kept as the simpler hit path).
#[derive(Clone)]
pub(super) enum Hot {
    Entry(Arc<Entry>),
    Vary(Vec<String>),
}

impl From<Record> for Hot {
    fn from(r: Record) -> Hot {
        match r {
            Record::Entry(e) => Hot::Entry(Arc::new(e)),
            Record::Vary(f) => Hot::Vary(f),
        }
    }
}

/// Recently read records, so a hot answer costs no RocksDB read and no decoding. Every write to
/// `entries` goes through [`super::Store`], which forgets what it wrote; `gen` keeps a read that raced a
/// write from putting the old record back. Bounded by an estimate of the memory its records take.
pub(super) struct RecordCache {
    pub(super) map: lru::LruCache<Vec<u8>, (Hot, usize)>,
    pub(super) gen: u64,
    bytes: usize,
    cap: usize,
    /// Keys read from RocksDB lately, one bit per hash (a "doorkeeper", as in TinyLFU): a record is
    /// kept only when read a second time while its bit is set, so a working set larger than the cache
    /// does not replace a record on every read (measured at 100k distinct URLs: keeping every read
    /// record cost about 5 % of a hit's CPU and kept no more of them warm).
    seen: Vec<u64>,
    /// Bits set since `seen` was last cleared (cleared when an eighth are set, so it stays selective).
    seen_set: usize,
    hasher: hashbrown::DefaultHashBuilder,
}

/// Bits in the doorkeeper (128 KiB).
const SEEN_BITS: usize = 1 << 20;

/// What a record held in memory costs: for an entry, `held`, the bytes of the read value it keeps alive
/// (header values and the inline body are slices of one copy of it), plus its structures; a `Vary` list
/// keeps only its own strings. Counted from their layout, not
/// guessed per field: a first estimate that summed field lengths was a third below what the process
/// measured (RSS over 100,000 hot records, see docs/benchmarks.md); a `HeaderMap` holds a power of two of
/// slots, each larger than the field in it.
fn weight(key: &[u8], r: &Hot, held: usize) -> usize {
    use std::mem::size_of;
    // One entry slot of a `HeaderMap`: name, value, hash and links.
    const SLOT: usize = size_of::<http::HeaderName>() + size_of::<http::HeaderValue>() + 32;
    // Each heap block costs its allocator header and rounding, about this much on average.
    const BLOCK: usize = 16;
    let body = match r {
        Hot::Entry(e) => {
            let map = e.headers.map();
            // A map has `capacity` entry slots and a power of two of 4-byte indices, a quarter more.
            let indices = (map.capacity() + map.capacity() / 3).next_power_of_two() * 4;
            let strings = [&e.blob, &e.kind, &e.route, &e.url]
                .iter()
                .map(|s| s.capacity() + BLOCK)
                .sum::<usize>();
            let vary = e
                .vary
                .iter()
                .map(|(a, b)| a.capacity() + b.capacity() + 48 + 2 * BLOCK)
                .sum::<usize>();
            let group = e.group.as_ref().map_or(0, |g| g.capacity() + BLOCK);
            // The entry and its `Arc`, the shared head with its derived facts, the map's two tables.
            let fixed = size_of::<Entry>() + 16 + 256 + 4 * BLOCK;
            held + BLOCK + map.capacity() * SLOT + indices + strings + vary + group + fixed
        }
        Hot::Vary(fields) => fields.iter().map(|f| f.capacity() + 24 + BLOCK).sum::<usize>() + 64,
    };
    // The key and the cache's node for it (links, hash slot, the value's tuple), and what the layouts
    // above miss (table growth, allocator slack): calibrated so 100,000 hot 1 KiB answers count what the
    // process measured for them, 3.2 KB each (docs/benchmarks.md, 2026-12-05).
    key.len() + BLOCK + body + 416
}

impl RecordCache {
    pub(super) fn new(cap_bytes: usize) -> RecordCache {
        RecordCache {
            map: lru::LruCache::unbounded(),
            gen: 0,
            bytes: 0,
            cap: cap_bytes,
            seen: vec![0; SEEN_BITS / 64],
            seen_set: 0,
            hasher: Default::default(),
        }
    }

    /// Bytes counted for the records held.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// The bound on [`RecordCache::bytes`].
    pub(super) fn cap(&self) -> usize {
        self.cap
    }

    /// Whether a record just read from RocksDB should be kept: true when `key` was read lately too.
    pub(super) fn admit(&mut self, key: &[u8]) -> bool {
        use std::hash::BuildHasher;
        let bit = self.hasher.hash_one(key) as usize % SEEN_BITS;
        let (word, mask) = (bit / 64, 1u64 << (bit % 64));
        if self.seen[word] & mask != 0 {
            return true;
        }
        if self.seen_set >= SEEN_BITS / 8 {
            self.seen.fill(0);
            self.seen_set = 0;
        }
        self.seen[word] |= mask;
        self.seen_set += 1;
        false
    }

    /// Bounds the cache to `cap_bytes`, dropping the least recently used records beyond it.
    pub(super) fn resize(&mut self, cap_bytes: usize) {
        self.cap = cap_bytes;
        self.shrink(&mut Vec::new());
    }

    /// Keeps `r`; returns what it pushed out (for the caller to free after releasing the lock).
    /// `held`: the bytes of the stored value the record keeps alive (see [`weight`]).
    pub(super) fn put(&mut self, key: Vec<u8>, r: Hot, held: usize) -> Vec<Hot> {
        let w = weight(&key, &r, held);
        if w > self.cap {
            return Vec::new();
        }
        let mut out = Vec::new();
        if let Some((old, w_old)) = self.map.put(key, (r, w)) {
            self.bytes -= w_old;
            out.push(old);
        }
        self.bytes += w;
        self.shrink(&mut out);
        out
    }

    fn shrink(&mut self, out: &mut Vec<Hot>) {
        while self.bytes > self.cap {
            match self.map.pop_lru() {
                Some((_, (r, w))) => {
                    self.bytes -= w;
                    out.push(r);
                }
                None => break,
            }
        }
    }

    pub(super) fn pop(&mut self, key: &[u8]) {
        if let Some((_, w)) = self.map.pop(key) {
            self.bytes -= w;
        }
    }

    pub(super) fn clear(&mut self) {
        self.map.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{BlobId, Entry};

    fn entry(blob: &BlobId) -> Entry {
        let names = ("audio".into(), "media".into(), "/x".into());
        Entry::stored(200, &http::HeaderMap::new(), blob, 0, names)
    }

    #[test]
    fn a_record_is_admitted_on_its_second_read_and_the_doorkeeper_forgets_in_time() {
        let mut c = RecordCache::new(1 << 20);
        assert!(!c.admit(b"a"), "first read: only remembered");
        assert!(c.admit(b"a"), "second read: kept");
        assert!(!c.admit(b"b"));
        // Once an eighth of the bits are set, it starts over.
        for i in 0..SEEN_BITS {
            c.admit(format!("k{i}").as_bytes());
            assert!(c.seen_set <= SEEN_BITS / 8);
        }
        assert!(c.seen_set < SEEN_BITS / 8);
    }

    #[test]
    fn the_record_cache_stays_within_its_bytes_keeping_the_recent_ones() {
        let blob = BlobId {
            hash: "ab".repeat(32),
            size: 1,
        };
        let rec = || Hot::from(Record::Entry(entry(&blob)));
        let one = weight(b"key-0000", &rec(), 100);
        let mut c = RecordCache::new(one * 10);
        for i in 0..100 {
            c.put(format!("key-{i:04}").into_bytes(), rec(), 100);
            assert!(c.bytes <= c.cap, "{} > {}", c.bytes, c.cap);
        }
        assert_eq!(c.map.len(), 10);
        assert!(c.map.contains(&b"key-0099".to_vec()) && !c.map.contains(&b"key-0089".to_vec()));
        c.resize(one * 3);
        assert_eq!((c.map.len(), c.bytes), (3, one * 3));
        c.pop(b"key-0099");
        c.put(b"key-0099".to_vec(), rec(), 100);
        c.put(b"key-0099".to_vec(), rec(), 100);
        assert_eq!((c.map.len(), c.bytes), (3, one * 3), "a record put twice counts once");
        c.clear();
        assert_eq!((c.map.len(), c.bytes), (0, 0));
    }
}
