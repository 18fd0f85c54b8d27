//! The outbox record format: one queued request with its delivery state, stored through the store's
//! synced, optionally sealed `outbox` records as a JSON head followed by the body's raw bytes (framed by
//! `store::frame_outbox_record`). The body is never base64'd or copied into a JSON string: a 256 KiB body
//! costs one value of that size, built in one allocation. Records written before this format (JSON with
//! the body as base64) read the same.

use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize};

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
    /// Request body (empty when it is spooled). Shared, so cloning a record copies no body. Not in the
    /// JSON head: it follows it raw (older records carry it there as base64).
    #[serde(default, skip_serializing, deserialize_with = "de_b64")]
    pub body: bytes::Bytes,
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

fn de_b64<'de, D: Deserializer<'de>>(d: D) -> Result<bytes::Bytes, D::Error> {
    let s = String::deserialize(d)?;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map(bytes::Bytes::from)
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

    /// The stored form: the JSON head (everything but the body) and the raw body, framed by the store.
    fn encode(&self) -> Result<Vec<u8>, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt { cf: "outbox", reason };
        let head = serde_json::to_vec(self).map_err(|e| corrupt(e.to_string()))?;
        crate::store::frame_outbox_record(&head, &self.body).ok_or_else(|| corrupt("record head over 4 GiB".into()))
    }

    pub(super) fn decode(seq: u64, bytes: &[u8]) -> Option<OutboxRecord> {
        let parsed = match crate::store::split_outbox_record(bytes) {
            Some((head, Some(body))) => serde_json::from_slice::<OutboxRecord>(head)
                .map(|r| OutboxRecord {
                    body: bytes::Bytes::copy_from_slice(body),
                    ..r
                })
                .map_err(|e| e.to_string()),
            Some((all, None)) => serde_json::from_slice(all).map_err(|e| e.to_string()),
            None => Err(format!("record of {} bytes cut inside its head", bytes.len())),
        };
        match parsed {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn item(body: &[u8]) -> OutboxRecord {
        OutboxRecord {
            id: "q7".into(),
            seq: 7,
            method: "POST".into(),
            uri: "/api/v1/takes".into(),
            headers: vec![("content-type".into(), b"audio/wav".to_vec())],
            body: bytes::Bytes::copy_from_slice(body),
            idempotency_key: "k".into(),
            ..Default::default()
        }
    }

    #[test]
    fn records_keep_their_raw_body_after_a_json_head_and_older_base64_records_still_read() {
        let body: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
        let it = item(&body);
        let stored = it.encode().unwrap();
        assert_eq!(stored[0], 0xB1);
        assert!(
            stored.len() < body.len() + 1_000,
            "the body is stored once, raw: {}",
            stored.len()
        );
        assert_eq!(OutboxRecord::decode(7, &stored).unwrap(), it);
        assert_eq!(
            OutboxRecord::decode(7, &item(b"").encode().unwrap()).unwrap(),
            item(b"")
        );

        // A record as earlier versions wrote it: JSON, the body as base64.
        let mut old = serde_json::to_value(&it).unwrap();
        old["body"] = base64::engine::general_purpose::STANDARD.encode(&body).into();
        let old = serde_json::to_vec(&old).unwrap();
        assert_eq!(OutboxRecord::decode(7, &old).unwrap(), it);

        // Cut inside the tag, the length or the head: skipped, never a panic.
        for cut in [1, 3, 5, 20] {
            assert!(OutboxRecord::decode(7, &stored[..cut]).is_none(), "cut at {cut}");
        }
    }
}
