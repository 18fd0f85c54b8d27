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

/// Why a replayed write's answer looks like a Wi-Fi login page rather than the backend: an HTML page
/// (2xx, or a redirect carrying one) to a request that did not ask for HTML. With `probe_expect` on the
/// upstream this is caught earlier and for every request; this rule needs no configuration.
fn portal_like<B>(item: &OutboxRecord, resp: &Response<B>) -> Option<String> {
    let status = resp.status();
    if !(status.is_success() || status.is_redirection()) {
        return None;
    }
    let html = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.trim_start().to_ascii_lowercase().starts_with("text/html"));
    let asked_for_html = item.headers.iter().any(|(n, v)| {
        n.eq_ignore_ascii_case("accept") && String::from_utf8_lossy(v).to_ascii_lowercase().contains("html")
    });
    (html && !asked_for_html).then(|| {
        format!("the answer ({status}, text/html) does not look like the backend's (captive portal?); the write stays queued")
    })
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
        let body = match &item.body_file {
            None => body::full(item.body.clone()),
            // A spooled body is streamed from its file, whole on every attempt.
            Some(name) => {
                let path = self
                    .outbox
                    .spool()
                    .and_then(|s| s.path(name))
                    .ok_or_else(|| SendError::Invalid(format!("spool file {name:?} is not a spool file name")))?;
                body::file(&path).await.map_err(|e| {
                    let why = format!("the spooled body {} cannot be read: {e}", path.display());
                    // A missing file will not come back; anything else may pass.
                    if e.kind() == std::io::ErrorKind::NotFound {
                        SendError::Invalid(why)
                    } else {
                        SendError::Failed(why)
                    }
                })?
            }
        };
        let mut req = Request::new(body);
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
        let resp = self
            .forwarder
            .forward(req, &route, upstream, peer, None)
            .await
            .map_err(|e| SendError::Failed(e.to_string()))?;
        if let Some(why) = portal_like(item, &resp) {
            // Counting this as delivery would lose the write: keep it queued and wait for the backend.
            upstream.connectivity().mark_offline(&why);
            return Err(SendError::NotBackend(why));
        }
        Ok(resp)
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

/// The replayer of the config in force: a reload swaps it, and the worker's next attempt uses the new
/// routes and upstreams (an attempt already sent finishes on the old ones).
impl Delivery for arc_swap::ArcSwap<Replayer> {
    fn online(&self, item: &OutboxRecord) -> bool {
        self.load().online(item)
    }

    async fn send(&self, item: &OutboxRecord) -> Result<Response<ProxyBody>, SendError> {
        let current = self.load_full();
        current.send(item).await
    }

    fn conflict_policy(&self, item: &OutboxRecord) -> ConflictPolicy {
        self.load().conflict_policy(item)
    }

    fn delivered(&self, item: &OutboxRecord) {
        self.load().delivered(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A login page's `200 text/html` (or its redirect) is not delivery of a JSON write; the backend's
    /// JSON, an HTML answer the app asked for, and errors are judged as before.
    #[test]
    fn a_portal_page_is_not_delivery() {
        let rec = |accept: Option<&str>| OutboxRecord {
            method: "PUT".into(),
            uri: "/api/v1/x".into(),
            headers: accept
                .map(|a| vec![("accept".to_string(), a.as_bytes().to_vec())])
                .unwrap_or_default(),
            ..Default::default()
        };
        let resp = |status: u16, ct: &str| {
            let mut r = Response::new(());
            *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
            r.headers_mut().insert(header::CONTENT_TYPE, ct.parse().unwrap());
            r
        };
        assert!(portal_like(&rec(None), &resp(200, "text/html; charset=utf-8")).is_some());
        assert!(portal_like(&rec(Some("application/json")), &resp(302, "text/html")).is_some());
        assert!(portal_like(&rec(None), &resp(200, "application/json")).is_none());
        assert!(portal_like(&rec(Some("text/html,*/*")), &resp(200, "text/html")).is_none());
        assert!(portal_like(&rec(None), &resp(500, "text/html")).is_none());
    }

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
