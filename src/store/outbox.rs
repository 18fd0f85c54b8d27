//! The durable outbox's storage: queued requests in the `outbox` column family, keyed by sequence number,
//! as records framed here ([`frame_outbox_record`]: a head, whose JSON belongs to `queue`, and the raw
//! body). Every write here is synced: a request is acknowledged to the app only after `outbox_put`
//! returned.

use rocksdb::WriteOptions;

use super::{Store, StoreError};

/// `meta` key of the highest outbox sequence number given out.
const SEQ_MARK: &[u8] = b"outbox-seq-high";

/// First byte of a record framed as head + raw body (records written before are all JSON: `{`).
const FRAMED: u8 = 0xB1;

/// Frames an outbox record in one allocation of its exact size: [`FRAMED`], the head's length (u32,
/// little-endian), the head, the body. The body is never base64'd or copied into the head. `None` for a
/// head over 4 GiB.
pub fn frame_outbox_record(head: &[u8], body: &[u8]) -> Option<Vec<u8>> {
    super::frame::frame(FRAMED, head, body)
}

/// A stored record's head and raw body; a record of the older form is all head (its body inside, as
/// base64). `None` when the record is cut inside its tag, length or head.
pub fn split_outbox_record(plain: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
    super::frame::split(FRAMED, plain)
}

fn synced() -> WriteOptions {
    let mut wo = WriteOptions::default();
    wo.set_sync(true);
    wo
}

impl Store {
    /// Writes (inserts or replaces) a record durably; sealed when encrypted (it holds the app's
    /// headers, credentials included).
    pub fn outbox_put(&self, seq: u64, record: Vec<u8>) -> Result<(), StoreError> {
        self.injected_queue_failure()?;
        let key = seq.to_be_bytes();
        let v = self.seal(&key, record);
        let r = self.db.put_cf_opt(self.cf("outbox"), key, v, &synced());
        self.watched(r)
    }

    /// Writes several new records in one synced batch (group commit: one fsync for all), with the highest
    /// sequence number ever given out, so that numbers (and queue ids) never repeat, even after the
    /// outbox drained and the process restarted.
    pub fn outbox_put_all(&self, records: Vec<(u64, Vec<u8>)>) -> Result<(), StoreError> {
        self.injected_queue_failure()?;
        let mut batch = rocksdb::WriteBatch::default();
        let mut high = 0;
        for (seq, record) in records {
            high = high.max(seq);
            let key = seq.to_be_bytes();
            let v = self.seal(&key, record);
            batch.put_cf(self.cf("outbox"), key, v);
        }
        batch.put_cf(self.cf("meta"), SEQ_MARK, high.to_be_bytes());
        let r = self.db.write_opt(batch, &synced());
        self.watched(r)
    }

    /// Deletes a record durably.
    pub fn outbox_delete(&self, seq: u64) -> Result<(), StoreError> {
        self.injected_queue_failure()?;
        let r = self.db.delete_cf_opt(self.cf("outbox"), seq.to_be_bytes(), &synced());
        self.watched(r)
    }

    /// A write's result, with a failure noted in the store's health (the queue's writes are the ones
    /// an app was or will be told about).
    fn watched(&self, r: Result<(), rocksdb::Error>) -> Result<(), StoreError> {
        r.map_err(|e| {
            let e = StoreError::Db(e);
            self.note_failure(&e);
            e
        })
    }

    /// A stored value opened (unsealed); `Err` when it fails authentication.
    pub(super) fn open_outbox_value<'a>(
        &self,
        key: &[u8],
        stored: &'a [u8],
    ) -> Result<std::borrow::Cow<'a, [u8]>, String> {
        self.unseal(key, stored)
            .ok_or_else(|| "failed authentication".to_string())
    }

    /// Every record in sequence order (records that fail authentication are reported and skipped).
    pub fn outbox_all(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        for item in self.scan("outbox") {
            let (k, v) = item?;
            match self.open_outbox_value(&k, &v) {
                Ok(r) => out.push((seq_of(&k), r.into_owned())),
                Err(e) => tracing::error!(key = ?k, error = %e, "unreadable outbox record skipped"),
            }
        }
        Ok(out)
    }

    /// One record by sequence number (`None` when absent or unreadable).
    pub fn outbox_get(&self, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(v) = self.db.get_pinned_cf(self.cf("outbox"), seq.to_be_bytes())? else {
            return Ok(None);
        };
        match self.open_outbox_value(&seq.to_be_bytes(), &v) {
            Ok(r) => Ok(Some(r.into_owned())),
            Err(e) => {
                tracing::error!(seq, error = %e, "unreadable outbox record skipped");
                Ok(None)
            }
        }
    }

    /// The highest sequence number ever given out (0 for a new data dir): the larger of the last record
    /// and the high-water mark (data dirs from before the mark have only the records).
    pub fn outbox_last_seq(&self) -> Result<u64, StoreError> {
        let mut it = self.db.iterator_cf(self.cf("outbox"), rocksdb::IteratorMode::End);
        let last = match it.next() {
            Some(item) => seq_of(&item?.0),
            None => 0,
        };
        let mark = self
            .db
            .get_pinned_cf(self.cf("meta"), SEQ_MARK)?
            .map_or(0, |v| seq_of(&v));
        Ok(last.max(mark))
    }
}

fn seq_of(key: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    if key.len() == 8 {
        b.copy_from_slice(key);
    }
    u64::from_be_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_never_repeat_after_a_drain_and_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            assert_eq!(store.outbox_last_seq().unwrap(), 0);
            store
                .outbox_put_all(vec![(1, b"a".to_vec()), (2, b"b".to_vec())])
                .unwrap();
            store.outbox_delete(1).unwrap();
            store.outbox_delete(2).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert!(store.outbox_all().unwrap().is_empty());
        assert_eq!(
            store.outbox_last_seq().unwrap(),
            2,
            "the drained queue's ids are not given out again"
        );
    }
}
