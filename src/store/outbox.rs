//! The durable outbox: queued mutating requests in the `outbox` column family, keyed by sequence number.
//!
//! Every write here is synced: a request is acknowledged to the app only after `outbox_put` returned.

use base64::Engine;
use rocksdb::WriteOptions;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Store, StoreError};

/// Where an item stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemState {
    /// Waiting for its turn or its next try.
    #[default]
    Pending,
    /// Stopped: the backend refused it (kept with the response) or it ran out of attempts/age.
    DeadLetter,
    /// Dropped by the `server-wins` conflict policy; kept as a record.
    Overridden,
}

impl ItemState {
    /// Stable label.
    pub fn as_str(self) -> &'static str {
        match self {
            ItemState::Pending => "pending",
            ItemState::DeadLetter => "dead_letter",
            ItemState::Overridden => "overridden",
        }
    }
}

/// One queued request (a new one is built with `..Default::default()` for the fields the queue assigns).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct OutboxRecord {
    /// Public id (`q<seq>`).
    pub id: String,
    /// Position in the global order.
    pub seq: u64,
    /// HTTP method.
    pub method: String,
    /// Client request target (path and query).
    pub uri: String,
    /// Request headers as sent by the app (plus the Idempotency-Key).
    pub headers: Vec<(String, Vec<u8>)>,
    /// Request body.
    #[serde(serialize_with = "ser_b64", deserialize_with = "de_b64")]
    pub body: Vec<u8>,
    /// Sent on every attempt.
    pub idempotency_key: String,
    /// User partition of the request's credentials.
    pub partition: String,
    /// Route name.
    pub route: String,
    /// Items with different keys replay independently (`None` = the global line).
    pub ordering_key: Option<String>,
    /// Higher first.
    pub priority: i32,
    /// GET paths to invalidate once it succeeds.
    pub invalidates: Vec<String>,
    /// Unix ms when queued.
    pub enqueued_ms: u64,
    /// Attempts so far.
    pub attempts: u32,
    /// Unix ms of the next attempt.
    pub next_try_ms: u64,
    /// Last failure.
    pub last_error: Option<String>,
    /// State.
    pub state: ItemState,
    /// Status and (start of the) body of the answer that stopped it.
    pub response: Option<(u16, String)>,
}

fn ser_b64<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
}

fn de_b64<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let s = String::deserialize(d)?;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(serde::de::Error::custom)
}

fn synced() -> WriteOptions {
    let mut wo = WriteOptions::default();
    wo.set_sync(true);
    wo
}

impl Store {
    /// An item as stored (sealed when encrypted: it holds the app's headers, credentials included).
    fn encode_item(&self, item: &OutboxRecord) -> Result<Vec<u8>, StoreError> {
        let v = serde_json::to_vec(item).map_err(|e| StoreError::Corrupt {
            cf: "outbox",
            reason: e.to_string(),
        })?;
        Ok(self.seal(&item.seq.to_be_bytes(), v))
    }

    /// An item read back.
    pub(super) fn decode_item(&self, key: &[u8], stored: &[u8]) -> Result<OutboxRecord, String> {
        let plain = self.unseal(key, stored).ok_or("failed authentication")?;
        serde_json::from_slice(&plain).map_err(|e| e.to_string())
    }

    /// Writes (inserts or replaces) an item durably.
    pub fn outbox_put(&self, item: &OutboxRecord) -> Result<(), StoreError> {
        let v = self.encode_item(item)?;
        self.db
            .put_cf_opt(self.cf("outbox"), item.seq.to_be_bytes(), v, &synced())?;
        Ok(())
    }

    /// Writes several new items in one synced batch (group commit: one fsync for all).
    pub fn outbox_put_all(&self, items: &[OutboxRecord]) -> Result<(), StoreError> {
        let mut batch = rocksdb::WriteBatch::default();
        for item in items {
            let v = self.encode_item(item)?;
            batch.put_cf(self.cf("outbox"), item.seq.to_be_bytes(), v);
        }
        self.db.write_opt(batch, &synced())?;
        Ok(())
    }

    /// Deletes an item durably.
    pub fn outbox_delete(&self, seq: u64) -> Result<(), StoreError> {
        self.db.delete_cf_opt(self.cf("outbox"), seq.to_be_bytes(), &synced())?;
        Ok(())
    }

    /// Every item in sequence order (undecodable records are reported and skipped).
    pub fn outbox_all(&self) -> Result<Vec<OutboxRecord>, StoreError> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf("outbox"), rocksdb::IteratorMode::Start) {
            let (k, v) = item?;
            match self.decode_item(&k, &v) {
                Ok(r) => out.push(r),
                Err(e) => tracing::error!(key = ?k, error = %e, "undecodable outbox record skipped"),
            }
        }
        Ok(out)
    }

    /// One item by sequence number (`None` when absent or undecodable).
    pub fn outbox_get(&self, seq: u64) -> Result<Option<OutboxRecord>, StoreError> {
        let Some(v) = self.db.get_pinned_cf(self.cf("outbox"), seq.to_be_bytes())? else {
            return Ok(None);
        };
        match self.decode_item(&seq.to_be_bytes(), &v) {
            Ok(r) => Ok(Some(r)),
            Err(e) => {
                tracing::error!(seq, error = %e, "undecodable outbox record skipped");
                Ok(None)
            }
        }
    }

    /// The highest sequence number in use (0 when empty).
    pub fn outbox_last_seq(&self) -> Result<u64, StoreError> {
        let mut it = self.db.iterator_cf(self.cf("outbox"), rocksdb::IteratorMode::End);
        match it.next() {
            Some(item) => {
                let (k, _) = item?;
                let mut b = [0u8; 8];
                if k.len() == 8 {
                    b.copy_from_slice(&k);
                }
                Ok(u64::from_be_bytes(b))
            }
            None => Ok(0),
        }
    }
}
