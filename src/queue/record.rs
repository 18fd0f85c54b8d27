//! The outbox record format: one queued request with its delivery state, stored as JSON (the body as
//! base64) through the store's opaque, synced, optionally sealed `outbox` records.

use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::store::{Store, StoreError};

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
    /// Replaced by a newer write to the same target (`supersede = true`); kept as a record, never sent.
    Superseded,
}

impl ItemState {
    /// Stable label.
    pub fn as_str(self) -> &'static str {
        match self {
            ItemState::Pending => "pending",
            ItemState::DeadLetter => "dead_letter",
            ItemState::Overridden => "overridden",
            ItemState::Superseded => "superseded",
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
    /// Request body (empty when it is spooled).
    #[serde(serialize_with = "ser_b64", deserialize_with = "de_b64")]
    pub body: Vec<u8>,
    /// A later PUT or DELETE to the same target replaces this one while it waits (route `supersede`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub supersede: bool,
    /// The id of the write that replaced this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded_by: Option<String>,
    /// The spool file holding a large body (see [`crate::queue::spool`]), instead of `body`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_file: Option<String>,
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

impl OutboxRecord {
    /// The first request header called `name` (any case), when it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// True for a PATCH whose body is a JSON Merge Patch (RFC 7396) held in the record.
    pub fn is_merge_patch(&self) -> bool {
        self.method == "PATCH"
            && self.body_file.is_none()
            && self
                .header("content-type")
                .is_some_and(crate::media::merge::is_merge_patch_type)
    }

    fn encode(&self) -> Result<Vec<u8>, StoreError> {
        serde_json::to_vec(self).map_err(|e| StoreError::Corrupt {
            cf: "outbox",
            reason: e.to_string(),
        })
    }

    pub(super) fn decode(seq: u64, bytes: &[u8]) -> Option<OutboxRecord> {
        match serde_json::from_slice(bytes) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::error!(seq, error = %e, "undecodable outbox record skipped");
                None
            }
        }
    }
}

/// Writes a record durably.
pub(super) fn put(store: &Store, item: &OutboxRecord) -> Result<(), StoreError> {
    store.outbox_put(item.seq, item.encode()?)
}

/// Writes new records in one synced batch.
pub(super) fn put_all(store: &Store, items: &[OutboxRecord]) -> Result<(), StoreError> {
    let encoded = items
        .iter()
        .map(|i| Ok((i.seq, i.encode()?)))
        .collect::<Result<Vec<_>, StoreError>>()?;
    store.outbox_put_all(encoded)
}

/// Every record that decodes, in sequence order.
pub(super) fn all(store: &Store) -> Result<Vec<OutboxRecord>, StoreError> {
    Ok(store
        .outbox_all()?
        .into_iter()
        .filter_map(|(seq, bytes)| OutboxRecord::decode(seq, &bytes))
        .collect())
}

/// One record.
pub(super) fn get(store: &Store, seq: u64) -> Result<Option<OutboxRecord>, StoreError> {
    Ok(store
        .outbox_get(seq)?
        .and_then(|bytes| OutboxRecord::decode(seq, &bytes)))
}
