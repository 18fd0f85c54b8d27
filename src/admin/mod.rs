//! The admin API on its own (loopback by default) port: status, the queue, and (later) the cache.
//!
//! Promises: every state-changing call needs the admin token (created on first start in the data dir
//! with mode 0600, compared in constant time, sent as `Authorization: Bearer <token>` or
//! `X-Outpost-Token`; no cookies, so no CSRF); a missing or wrong token is a JSON 401.

pub mod client;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use crate::body::{self, ProxyBody};
use crate::config::Config;
use crate::proxy::json_error;
use crate::store::Store;
use crate::sync::{Outbox, QueueError};
use crate::upstream::Upstreams;

/// File name of the admin token inside the data dir.
pub const TOKEN_FILE: &str = "admin.token";

/// Reads the admin token, creating it (0600) on first start.
pub fn load_or_create_token(data_dir: &Path) -> std::io::Result<String> {
    let path = data_dir.join(TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) if t.trim().len() >= 32 => return Ok(t.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let token = format!("{:032x}{:032x}", rand::random::<u128>(), rand::random::<u128>());
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&path)?;
    std::io::Write::write_all(&mut f, token.as_bytes())?;
    f.sync_all()?;
    Ok(token)
}

/// Where the token of a data dir lives.
pub fn token_path(data_dir: &Path) -> PathBuf {
    data_dir.join(TOKEN_FILE)
}

/// Constant-time comparison: the time taken does not depend on where the inputs differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Admin request handler.
pub struct Admin {
    upstreams: Arc<Upstreams>,
    config: Arc<Config>,
    outbox: Arc<Outbox>,
    store: Arc<Store>,
    token: String,
}

impl Admin {
    /// Builds the handler.
    pub fn new(
        upstreams: Arc<Upstreams>,
        config: Arc<Config>,
        outbox: Arc<Outbox>,
        store: Arc<Store>,
        token: String,
    ) -> Admin {
        Admin {
            upstreams,
            config,
            outbox,
            store,
            token,
        }
    }

    fn authorized<B>(&self, req: &Request<B>) -> bool {
        let presented = req
            .headers()
            .get("x-outpost-token")
            .and_then(|v| v.to_str().ok())
            .or_else(|| {
                req.headers()
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
            });
        presented.is_some_and(|p| same(p.trim().as_bytes(), self.token.as_bytes()))
    }

    /// Answers one admin request.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<ProxyBody> {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        if method != Method::GET && method != Method::HEAD && !self.authorized(&req) {
            return json_error(
                StatusCode::UNAUTHORIZED,
                "admin token required (Authorization: Bearer <token>, see `outpost status`)",
                None,
            );
        }
        match (&method, segs.as_slice()) {
            (&Method::GET, ["healthz"]) => json_ok(json!({"ok": true})),
            (&Method::GET, ["api", "status"]) => json_ok(self.status()),
            (&Method::GET, ["api", "queue"]) => match self.outbox.list() {
                Ok(items) => {
                    let items: Vec<Value> = items.iter().map(item_json).collect();
                    json_ok(json!({"state": self.outbox.state(), "depth": self.outbox.depth(), "items": items}))
                }
                Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string(), None),
            },
            (&Method::POST, ["api", "queue", "pause"]) => {
                self.outbox.set_paused(true);
                json_ok(json!({"state": self.outbox.state()}))
            }
            (&Method::POST, ["api", "queue", "resume"]) => {
                self.outbox.set_paused(false);
                json_ok(json!({"state": self.outbox.state()}))
            }
            (&Method::POST, ["api", "queue", "retry-dead"]) => {
                queue_result(self.outbox.retry_dead_letters().map(|n| json!({"retried": n})))
            }
            (&Method::POST, ["api", "queue", id, "retry"]) => {
                queue_result(self.outbox.retry(id).map(|_| json!({"retried": id})))
            }
            (&Method::DELETE, ["api", "queue", id]) => {
                queue_result(self.outbox.drop_item(id).map(|_| json!({"dropped": id})))
            }
            (_, ["healthz"]) | (_, ["api", "status"]) | (_, ["api", "queue", ..]) => {
                json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed", None)
            }
            _ => json_error(StatusCode::NOT_FOUND, "no such admin endpoint", None),
        }
    }

    fn status(&self) -> Value {
        let ups: Vec<_> = self.upstreams.iter().map(|u| u.connectivity().snapshot()).collect();
        let (entries, bytes) = self.store.usage().unwrap_or((0, 0));
        let saved = self.store.dedup_saved().unwrap_or(0);
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "listen": self.config.listen.to_string(),
            "data_dir": self.config.data_dir.display().to_string(),
            "max_size": self.config.max_size,
            "upstreams": ups,
            "queue": {"state": self.outbox.state(), "depth": self.outbox.depth()},
            "cache": {"entries": entries, "bytes": bytes, "dedup_saved_bytes": saved},
            "admin_token_file": token_path(&self.config.data_dir).display().to_string(),
        })
    }
}

fn item_json(i: &crate::store::OutboxRecord) -> Value {
    json!({
        "id": i.id,
        "method": i.method,
        "uri": i.uri,
        "route": i.route,
        "state": i.state.as_str(),
        "attempts": i.attempts,
        "next_try_ms": i.next_try_ms,
        "enqueued_ms": i.enqueued_ms,
        "last_error": i.last_error,
        "response": i.response.as_ref().map(|(s, b)| json!({"status": s, "body": b})),
        "idempotency_key": i.idempotency_key,
        "ordering_key": i.ordering_key,
        "priority": i.priority,
        "body_bytes": i.body.len(),
    })
}

fn queue_result(r: Result<Value, QueueError>) -> Response<ProxyBody> {
    match r {
        Ok(v) => json_ok(v),
        Err(QueueError::NotFound(id)) => json_error(StatusCode::NOT_FOUND, &format!("no queued item {id}"), None),
        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string(), None),
    }
}

fn json_ok(v: Value) -> Response<ProxyBody> {
    let mut resp = Response::new(body::full(v.to_string()));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_created_once_with_owner_only_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create_token(dir.path()).unwrap();
        let b = load_or_create_token(dir.path()).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(token_path(dir.path())).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(same(b"abc", b"abc") && !same(b"abc", b"abd") && !same(b"abc", b"ab"));
    }
}
