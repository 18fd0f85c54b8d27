//! The replay adapter: what the queue's worker needs to deliver a record, built from the [`Forwarder`]
//! and the cache's invalidation, not from the whole proxy.

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, Uri};

use super::forward::Forwarder;
use super::invalidate;
use crate::body::{self, ProxyBody};
use crate::cache::Cache;
use crate::queue::OutboxRecord;
use crate::queue::{Delivery, Outbox, SendError};
use crate::routes::ConflictPolicy;

/// Delivers queued writes.
pub struct Replayer {
    forwarder: Arc<Forwarder>,
    cache: Arc<Cache>,
    outbox: Arc<Outbox>,
}

impl Replayer {
    /// An adapter sending through `forwarder`, invalidating in `cache`, with credentials from `outbox`.
    pub fn new(forwarder: Arc<Forwarder>, cache: Arc<Cache>, outbox: Arc<Outbox>) -> Replayer {
        Replayer {
            forwarder,
            cache,
            outbox,
        }
    }
}

/// A record's method and target, or why they do not parse.
fn target(item: &OutboxRecord) -> Result<(Method, Uri), String> {
    let method = Method::from_bytes(item.method.as_bytes()).map_err(|_| format!("invalid method {:?}", item.method))?;
    let uri: Uri = item
        .uri
        .parse()
        .map_err(|e| format!("invalid request target {:?}: {e}", item.uri))?;
    if !uri.path().starts_with('/') || uri.authority().is_some() {
        return Err(format!("request target {:?} is not a path", item.uri));
    }
    Ok((method, uri))
}

impl Delivery for Replayer {
    fn online(&self, item: &OutboxRecord) -> bool {
        // A record that does not parse is "online" so that the worker reaches it and dead-letters it.
        let Ok((method, uri)) = target(item) else { return true };
        let (_, upstream) = self.forwarder.route(&method, uri.path());
        upstream.connectivity().is_online()
    }

    async fn send(&self, item: &OutboxRecord) -> Result<Response<ProxyBody>, SendError> {
        let (method, uri) = target(item).map_err(SendError::Invalid)?;
        let (route, upstream) = self.forwarder.route(&method, uri.path());
        let mut req = Request::new(body::full(item.body.clone()));
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        for (n, v) in &item.headers {
            if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(n.as_bytes()), HeaderValue::from_bytes(v)) {
                req.headers_mut().append(n, v);
            }
        }
        if let Ok(v) = HeaderValue::from_str(&item.idempotency_key) {
            req.headers_mut().insert(HeaderName::from_static("idempotency-key"), v);
        }
        if let Some(auth) = self.outbox.credential_for(&item.partition) {
            req.headers_mut().insert(header::AUTHORIZATION, auth);
        }
        let peer = SocketAddr::from(([127, 0, 0, 1], 0));
        self.forwarder
            .forward(req, &route, upstream, peer, None)
            .await
            .map_err(|e| SendError::Failed(e.to_string()))
    }

    fn conflict_policy(&self, item: &OutboxRecord) -> ConflictPolicy {
        match target(item) {
            Ok((method, uri)) => self.forwarder.route(&method, uri.path()).0.policy.conflict,
            Err(_) => ConflictPolicy::DeadLetter,
        }
    }

    fn delivered(&self, item: &OutboxRecord) {
        invalidate::path(&self.forwarder, &self.cache, &item.uri, &item.partition);
        for p in &item.invalidates {
            invalidate::path(&self.forwarder, &self.cache, p, &item.partition);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_that_do_not_parse_say_why() {
        let rec = |method: &str, uri: &str| OutboxRecord {
            method: method.into(),
            uri: uri.into(),
            ..Default::default()
        };
        assert!(target(&rec("PUT", "/api/v1/x?y=1")).is_ok());
        assert!(target(&rec("P UT", "/x")).unwrap_err().contains("invalid method"));
        assert!(target(&rec("PUT", "not a target"))
            .unwrap_err()
            .contains("invalid request target"));
        assert!(target(&rec("PUT", "http://elsewhere/x"))
            .unwrap_err()
            .contains("not a path"));
        assert!(target(&rec("PUT", "")).is_err());
    }
}
