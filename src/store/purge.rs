//! Finding every stored answer for one URL: all `Vary` variants, in one user partition or in all of
//! them (for `outpost cache purge`, `DELETE /api/cache` and `PURGE`).

use super::{Store, StoreError, VARIANT_SEP};

impl Store {
    /// Keys of the entries (and `Vary` records) for `url_key`, a primary key without its partition
    /// (`\0upstream\0path?query`), in `partition` or, with `None`, in every partition. Scans the
    /// entries when every partition is asked for (an admin operation, not a request-path one).
    pub fn url_keys(&self, url_key: &[u8], partition: Option<&str>) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut out = Vec::new();
        let entries = self.cf("entries");
        let of_url = |k: &[u8]| -> bool {
            let Some(rest) = k.iter().position(|&b| b == 0).map(|i| &k[i..]) else {
                return false;
            };
            rest.starts_with(url_key) && (rest.len() == url_key.len() || rest[url_key.len()] == VARIANT_SEP)
        };
        match partition {
            Some(p) => {
                let primary = [p.as_bytes(), url_key].concat();
                for item in self.db.prefix_iterator_cf(entries, &primary) {
                    let (k, _) = item?;
                    if !k.starts_with(&primary) {
                        break;
                    }
                    if of_url(&k) {
                        out.push(k.to_vec());
                    }
                }
            }
            None => {
                for item in self.db.iterator_cf(entries, rocksdb::IteratorMode::Start) {
                    let (k, _) = item?;
                    if of_url(&k) {
                        out.push(k.to_vec());
                    }
                }
            }
        }
        Ok(out)
    }
}
