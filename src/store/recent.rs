//! Recently read records of the `entries` family, decoded, bounded by an estimate of their memory
//! (five eighths of `[cache] memory`): a hot answer costs no RocksDB read and no decoding.

use super::entry::Record;

/// Recently read records, so a hot answer costs no RocksDB read and no decoding. Every write to
/// `entries` goes through [`super::Store`], which forgets what it wrote; `gen` keeps a read that raced a
/// write from putting the old record back. Bounded by an estimate of the memory its records take.
pub(super) struct RecordCache {
    pub(super) map: lru::LruCache<Vec<u8>, (Record, usize)>,
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

/// What a record held in memory costs, roughly (the key, the strings, each header and the structs).
fn weight(key: &[u8], r: &Record) -> usize {
    let body = match r {
        Record::Entry(e) => {
            let headers: usize = e
                .headers
                .map()
                .iter()
                .map(|(n, v)| n.as_str().len() + v.len() + 48)
                .sum();
            let inline = e.inline.as_ref().map_or(0, |b| b.len());
            headers + inline + e.blob.len() + e.kind.len() + e.route.len() + e.url.len() + 256
        }
        Record::Vary(fields) => fields.iter().map(|f| f.len() + 32).sum::<usize>() + 64,
    };
    key.len() + body + 64
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
    pub(super) fn put(&mut self, key: Vec<u8>, r: Record) -> Vec<Record> {
        let w = weight(&key, &r);
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

    fn shrink(&mut self, out: &mut Vec<Record>) {
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
        let rec = || Record::Entry(entry(&blob));
        let one = weight(b"key-0000", &rec());
        let mut c = RecordCache::new(one * 10);
        for i in 0..100 {
            c.put(format!("key-{i:04}").into_bytes(), rec());
            assert!(c.bytes <= c.cap, "{} > {}", c.bytes, c.cap);
        }
        assert_eq!(c.map.len(), 10);
        assert!(c.map.contains(&b"key-0099".to_vec()) && !c.map.contains(&b"key-0089".to_vec()));
        c.resize(one * 3);
        assert_eq!((c.map.len(), c.bytes), (3, one * 3));
        c.pop(b"key-0099");
        c.put(b"key-0099".to_vec(), rec());
        c.put(b"key-0099".to_vec(), rec());
        assert_eq!((c.map.len(), c.bytes), (3, one * 3), "a record put twice counts once");
        c.clear();
        assert_eq!((c.map.len(), c.bytes), (0, 0));
    }
}
