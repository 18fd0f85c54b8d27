//! Pin sets on disk: which media each list answer (route, user, list URL) pins, so that after a restart
//! pinned media stay protected from eviction before the list is fetched again.
//!
//! One `meta` record per set, under a key hashed from (route, user, list) so that no user id or URL sits
//! in a key in clear; the value (sealed when the data dir is encrypted) names them and the media keys.

use std::collections::HashSet;

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::{Store, StoreError};

const PREFIX: &[u8] = b"pins:";

/// One list answer's pins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinSet {
    /// Route name.
    pub route: String,
    /// User partition.
    pub partition: String,
    /// The list's query (pages of one list pin separately).
    pub list: String,
    /// Primary keys of the pinned media.
    #[serde(with = "keys_b64")]
    pub keys: Vec<Vec<u8>>,
}

mod keys_b64 {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(keys: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        let b64 = base64::engine::general_purpose::STANDARD;
        s.collect_seq(keys.iter().map(|k| b64.encode(k)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        let b64 = base64::engine::general_purpose::STANDARD;
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|s| b64.decode(s).map_err(serde::de::Error::custom))
            .collect()
    }
}

fn record_key(route: &str, partition: &str, list: &str) -> Vec<u8> {
    let mut h = blake3::Hasher::new();
    for part in [route, partition, list] {
        h.update(part.as_bytes());
        h.update(&[0]);
    }
    let mut key = PREFIX.to_vec();
    key.extend_from_slice(h.finalize().to_hex().as_bytes());
    key
}

impl Store {
    /// Replaces one list's pin set (an empty set removes it). Unsynced: a crash loses at most the newest
    /// change, and the list's next answer sets it again.
    pub fn put_pin_set(
        &self,
        route: &str,
        partition: &str,
        list: &str,
        keys: &HashSet<Vec<u8>>,
    ) -> Result<(), StoreError> {
        let key = record_key(route, partition, list);
        if keys.is_empty() {
            self.db.delete_cf(self.cf("meta"), &key)?;
            return Ok(());
        }
        let mut keys: Vec<Vec<u8>> = keys.iter().cloned().collect();
        keys.sort();
        let set = PinSet {
            route: route.into(),
            partition: partition.into(),
            list: list.into(),
            keys,
        };
        let plain = serde_json::to_vec(&set).map_err(|e| StoreError::Corrupt {
            cf: "meta",
            reason: e.to_string(),
        })?;
        let value = self.seal(&key, plain);
        self.db.put_cf(self.cf("meta"), &key, value)?;
        Ok(())
    }

    /// Every stored pin set (records that do not open or parse are skipped: pins are an optimisation).
    pub fn pin_sets(&self) -> Result<Vec<PinSet>, StoreError> {
        let mut out = Vec::new();
        for item in self.db.prefix_iterator_cf(self.cf("meta"), PREFIX) {
            let (k, v) = item?;
            if !k.starts_with(PREFIX) {
                break;
            }
            let Some(plain) = self.unseal(&k, &v) else {
                continue;
            };
            if let Ok(set) = serde_json::from_slice::<PinSet>(&plain) {
                out.push(set);
            }
        }
        Ok(out)
    }

    /// Removes every pin set of a user (logout).
    pub fn remove_pin_sets(&self, partition: &str) -> Result<usize, StoreError> {
        let mine: Vec<PinSet> = self
            .pin_sets()?
            .into_iter()
            .filter(|s| s.partition == partition)
            .collect();
        for s in &mine {
            self.db
                .delete_cf(self.cf("meta"), record_key(&s.route, &s.partition, &s.list))?;
        }
        Ok(mine.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_sets_survive_a_reopen_and_go_with_their_user() {
        let dir = tempfile::tempdir().unwrap();
        let keys: HashSet<Vec<u8>> = [b"anon\0media\0/r/a1.mp3".to_vec(), b"k2".to_vec()].into();
        {
            let store = Store::open(dir.path()).unwrap();
            store.put_pin_set("library", "sub:u1", "", &keys).unwrap();
            store
                .put_pin_set("library", "sub:u1", "page=2", &[b"k3".to_vec()].into())
                .unwrap();
            store
                .put_pin_set("library", "sub:u2", "", &[b"k4".to_vec()].into())
                .unwrap();
            store
                .put_pin_set("library", "sub:u2", "", &[b"k5".to_vec()].into())
                .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let mut sets = store.pin_sets().unwrap();
        sets.sort_by(|a, b| (&a.partition, &a.list).cmp(&(&b.partition, &b.list)));
        assert_eq!(sets.len(), 3);
        assert_eq!(sets[0].keys.iter().cloned().collect::<HashSet<_>>(), keys);
        assert_eq!(sets[1].list, "page=2");
        assert_eq!(sets[2].keys, vec![b"k5".to_vec()], "replaced, not added");
        assert_eq!(store.remove_pin_sets("sub:u1").unwrap(), 2);
        assert_eq!(store.pin_sets().unwrap().len(), 1);
        store.put_pin_set("library", "sub:u2", "", &HashSet::new()).unwrap();
        assert!(store.pin_sets().unwrap().is_empty(), "an empty list unpins");
    }
}
