//! Superseding queued writes: on a route with `supersede = true`, a new PUT or DELETE to a target whose
//! earlier PUT or PATCH (same user, same route) is still waiting takes that write's place in its ordering
//! line, and the earlier one is kept as a `superseded` record naming its successor. Replay then sends one
//! request where the app made several, and the server ends in the state the last one asks for (a PUT or a
//! DELETE replaces the whole resource, so what came before it to the same target cannot matter). POSTs
//! never supersede and are never superseded. A merge PATCH (RFC 7396) to a target whose waiting write is
//! a merge PATCH takes its place the same way, carrying one patch that does what both do in turn
//! ([`merge::combine`]); where no single patch can, or their preconditions differ, both stay queued.
//!
//! Promises: the item the replay worker is sending is never superseded (it is marked in flight, under the
//! same lock enqueues decide under), so a delivery can never remove a record whose content it did not send.

use serde_json::Value;

use super::{ItemState, Outbox, OutboxRecord, QueueError};
use crate::media::merge;

/// What a write targets: (user partition, route, request target).
pub(super) type Target = (String, String, String);

/// The target of a write that a later one may supersede: a pending PUT or PATCH on a superseding route.
pub(super) fn target_of(item: &OutboxRecord) -> Option<Target> {
    (item.supersede && item.state == ItemState::Pending && matches!(item.method.as_str(), "PUT" | "PATCH"))
        .then(|| (item.partition.clone(), item.route.clone(), item.uri.clone()))
}

/// Preconditions that tie a request to the state before it; writes carrying different ones are not merged.
const PRECONDITIONS: [&str; 3] = ["if-match", "if-unmodified-since", "if-none-match"];

/// The body of one merge patch doing what `old` then `new` do (both merge PATCHes), when there is one
/// (see [`merge::combine`]) and both stand on the same preconditions.
fn combined_patch(old: &OutboxRecord, new: &OutboxRecord) -> Option<Vec<u8>> {
    if !old.is_merge_patch() || PRECONDITIONS.iter().any(|h| old.header(h) != new.header(h)) {
        return None;
    }
    let first: Value = serde_json::from_slice(&old.body).ok()?;
    let second: Value = serde_json::from_slice(&new.body).ok()?;
    serde_json::to_vec(&merge::combine(&first, &second)?).ok()
}

impl Outbox {
    /// For each new record (a PUT, DELETE or merge PATCH on a superseding route) whose target has a
    /// waiting PUT or PATCH not being sent (for a PATCH: a merge PATCH it combines with): the new record takes the old one's place (its key and line position) and
    /// the old one moves to the new record's key as `superseded`. Returns (old as it was, old as it is
    /// kept) for each replaced one. Called by the group-commit leader, under the order lock.
    pub(super) fn supersede(&self, records: &mut [OutboxRecord]) -> Vec<(OutboxRecord, OutboxRecord)> {
        let mut replaced: Vec<(OutboxRecord, OutboxRecord)> = Vec::new();
        for new in records.iter_mut() {
            let patching = new.is_merge_patch();
            if !new.supersede || !(patching || matches!(new.method.as_str(), "PUT" | "DELETE")) {
                continue;
            }
            let target = (new.partition.clone(), new.route.clone(), new.uri.clone());
            let Some(old_seq) = self.index_target(&target) else {
                continue;
            };
            // Sending now, or already taken by an earlier write of this batch (which then goes first).
            if self.in_flight().contains(&old_seq) || replaced.iter().any(|(o, _)| o.seq == old_seq) {
                continue;
            }
            let old = match self.store.outbox_get(old_seq) {
                Ok(Some(bytes)) => match OutboxRecord::decode(old_seq, &bytes) {
                    Some(r) if r.state == ItemState::Pending => r,
                    _ => continue,
                },
                _ => continue,
            };
            if patching {
                // Two merge patches become one where a single patch says what both say in turn.
                let Some(body) = combined_patch(&old, new) else {
                    continue;
                };
                new.body = body.into();
                // The stored length was the app's; the body's own length goes out with it.
                new.headers.retain(|(n, _)| !n.eq_ignore_ascii_case("content-length"));
            }
            let mut kept = old.clone();
            kept.seq = new.seq;
            kept.state = ItemState::Superseded;
            kept.superseded_by = Some(new.id.clone());
            kept.last_error = Some(format!("superseded by {}", new.id));
            // History only: the body is not needed any more.
            kept.body.clear();
            kept.body_file = None;
            new.seq = old.seq;
            new.enqueued_ms = old.enqueued_ms;
            replaced.push((old, kept));
        }
        replaced
    }

    fn index_target(&self, target: &Target) -> Option<u64> {
        let ix = self.index.lock().unwrap_or_else(|p| p.into_inner());
        ix.targets.get(target).copied()
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<u64>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The replay worker is about to send the item at `seq`: marks it in flight and returns it as stored
    /// now (`None` when it is no longer a waiting item: superseded, removed or stopped meanwhile).
    pub(crate) fn begin_send(&self, seq: u64) -> Result<Option<OutboxRecord>, QueueError> {
        let _order = self.order_lock.lock().unwrap_or_else(|p| p.into_inner());
        let Some(bytes) = self.store.outbox_get(seq)? else {
            return Ok(None);
        };
        match OutboxRecord::decode(seq, &bytes) {
            Some(r) if r.state == ItemState::Pending => {
                self.in_flight().insert(seq);
                Ok(Some(r))
            }
            _ => Ok(None),
        }
    }

    /// The worker is done with the item at `seq` (its outcome is written or held).
    pub(crate) fn end_send(&self, seq: u64) {
        self.in_flight().remove(&seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::QueueSettings;
    use crate::store::Store;
    use std::sync::Arc;

    fn put(uri: &str, body: &str, supersede: bool) -> OutboxRecord {
        OutboxRecord {
            method: "PUT".into(),
            uri: uri.into(),
            body: bytes::Bytes::copy_from_slice(body.as_bytes()),
            partition: "sub:alice".into(),
            route: "notes".into(),
            supersede,
            ..Default::default()
        }
    }

    fn states(outbox: &Outbox) -> Vec<(String, &'static str, String)> {
        outbox
            .list()
            .unwrap()
            .into_iter()
            .map(|i| {
                (
                    i.id.clone(),
                    i.state.as_str(),
                    String::from_utf8_lossy(&i.body).into_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn a_newer_put_takes_the_waiting_ones_place_but_never_the_one_being_sent() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let outbox = Outbox::open(store.clone(), QueueSettings::default()).unwrap();
        let (a, _) = outbox.enqueue(put("/n/1", "a", true)).unwrap();
        outbox.enqueue(put("/n/2", "other", true)).unwrap();
        let (b, _) = outbox.enqueue(put("/n/1", "b", true)).unwrap();
        // b sits where a was (before /n/2's write); a is kept as superseded by b.
        let heads = outbox.line_heads().unwrap();
        assert_eq!(heads.len(), 1);
        assert_eq!((heads[0].id.as_str(), &heads[0].body[..]), (b.as_str(), &b"b"[..]));
        let all = states(&outbox);
        assert!(all.contains(&(a.clone(), "superseded", String::new())), "{all:?}");
        assert_eq!(outbox.depth(), 2);

        // While b is being sent, a newer PUT queues behind it instead of replacing it.
        let sending = outbox.begin_send(heads[0].seq).unwrap().unwrap();
        assert_eq!(sending.id, b);
        let (c, _) = outbox.enqueue(put("/n/1", "c", true)).unwrap();
        assert_eq!(outbox.depth(), 3);
        outbox.end_send(heads[0].seq);
        // Once b is done, d supersedes c (the newest waiting one), not b.
        let (d, _) = outbox.enqueue(put("/n/1", "d", true)).unwrap();
        let all = states(&outbox);
        assert!(all.contains(&(c.clone(), "superseded", String::new())), "{all:?}");
        assert!(all.contains(&(b.clone(), "pending", "b".into())), "{all:?}");
        assert!(all.contains(&(d.clone(), "pending", "d".into())), "{all:?}");
        let kept = outbox.list().unwrap().into_iter().find(|i| i.id == c).unwrap();
        assert_eq!(kept.superseded_by.as_deref(), Some(d.as_str()));
        assert!(
            matches!(outbox.retry(&c), Err(QueueError::Refused(_))),
            "a superseded write is not revived"
        );

        // Without the route's opt-in, and for POSTs, nothing is superseded; the same after a restart.
        outbox.enqueue(put("/n/9", "x", false)).unwrap();
        outbox.enqueue(put("/n/9", "y", false)).unwrap();
        let post = |b: &str| OutboxRecord {
            method: "POST".into(),
            ..put("/n", b, true)
        };
        outbox.enqueue(post("p1")).unwrap();
        outbox.enqueue(post("p2")).unwrap();
        assert_eq!(outbox.depth(), 3 + 4);
        drop(outbox);
        let outbox = Outbox::open(store, QueueSettings::default()).unwrap();
        assert_eq!(outbox.depth(), 7);
        let (e, _) = outbox.enqueue(put("/n/1", "e", true)).unwrap();
        let all = states(&outbox);
        assert!(all.contains(&(d, "superseded", String::new())), "{all:?}");
        assert!(all.contains(&(e, "pending", "e".into())), "{all:?}");
    }

    #[test]
    fn merge_patches_to_one_target_combine_into_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let outbox = Outbox::open(store, QueueSettings::default()).unwrap();
        let patch = |body: &str, extra: &[(&str, &str)]| {
            let mut headers = vec![
                ("content-type".to_string(), b"application/merge-patch+json".to_vec()),
                ("content-length".to_string(), body.len().to_string().into_bytes()),
            ];
            headers.extend(extra.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())));
            OutboxRecord {
                method: "PATCH".into(),
                headers,
                ..put("/n/1", body, true)
            }
        };
        let (a, _) = outbox.enqueue(patch(r#"{"title":"a","tags":{"x":1}}"#, &[])).unwrap();
        let (b, _) = outbox.enqueue(patch(r#"{"tags":{"y":2},"n":null}"#, &[])).unwrap();
        assert_eq!(outbox.depth(), 1);
        let head = outbox.line_heads().unwrap().remove(0);
        assert_eq!(head.id, b);
        let body: Value = serde_json::from_slice(&head.body).unwrap();
        assert_eq!(body, serde_json::json!({"title":"a","tags":{"x":1,"y":2},"n":null}));
        assert_eq!(
            head.header("content-length"),
            None,
            "the app's length was for its own body"
        );
        let kept = outbox.list().unwrap().into_iter().find(|i| i.id == a).unwrap();
        assert_eq!(kept.superseded_by.as_deref(), Some(b.as_str()));

        // No single patch can say "delete tags, then build a new tags object": both stay.
        outbox.enqueue(patch(r#"{"tags":null}"#, &[])).unwrap();
        assert_eq!(outbox.depth(), 1, "a deletion combines");
        outbox.enqueue(patch(r#"{"tags":{"z":3}}"#, &[])).unwrap();
        assert_eq!(outbox.depth(), 2);
        // Another precondition, or another kind of patch: queued behind, not merged.
        outbox.enqueue(patch(r#"{"n":1}"#, &[("if-match", "\"v7\"")])).unwrap();
        assert_eq!(outbox.depth(), 3);
        let json_patch = OutboxRecord {
            headers: vec![("content-type".into(), b"application/json-patch+json".to_vec())],
            ..patch("[]", &[])
        };
        outbox.enqueue(json_patch).unwrap();
        outbox.enqueue(patch(r#"{"n":2}"#, &[])).unwrap();
        assert_eq!(outbox.depth(), 5);
        // A PUT still takes a merge patch's place.
        outbox.enqueue(put("/n/1", "{}", true)).unwrap();
        assert_eq!(outbox.depth(), 5);
    }
}
