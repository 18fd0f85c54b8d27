//! The admin API on its own (loopback by default) port: the dashboard page at `/`, status, stats, metrics,
//! the queue (and its event stream, [`events`]), the cache and settings.
//!
//! Promises: every call but the dashboard page itself, `/healthz` and `/readyz` (and `/metrics` with
//! `public_metrics = true`) needs the admin token — reads too, since queued URLs and kept dead-letter
//! bodies may hold secrets (created on first start in the data dir with mode 0600, compared in constant
//! time, sent as `Authorization: Bearer <token>` or `X-Outpost-Token`; no cookies, so no CSRF); a missing
//! or wrong token is a JSON 401. A `Host` that is not a loopback name or the admin address is refused with
//! 403, so a web page cannot reach the API through DNS rebinding.

pub mod client;
mod effects;
pub mod events;
pub mod metrics;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use crate::body::{self, json_error, ProxyBody};
use crate::config::{parse_size, Config};
use crate::evict::{EvictReason, Evictor};
use crate::queue::{Outbox, QueueError};
use crate::server::ShutdownSignal;
use crate::store::Store;
use crate::upstream::Upstreams;

/// The dashboard page, embedded at build time (plain HTML/CSS/JS, no build step).
const DASHBOARD: &str = include_str!("dashboard.html");

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
    let mut f = crate::platform::private_file_options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)?;
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
    /// The upstreams and config in force (a reload swaps both).
    upstreams: Arc<ArcSwap<Upstreams>>,
    config: Arc<ArcSwap<Config>>,
    outbox: Arc<Outbox>,
    store: Arc<Store>,
    evictor: Arc<Evictor>,
    metrics: Arc<metrics::Metrics>,
    token: String,
    shutdown: ShutdownSignal,
}

impl Admin {
    /// Builds the handler.
    pub fn new(
        upstreams: Arc<ArcSwap<Upstreams>>,
        config: Arc<ArcSwap<Config>>,
        outbox: Arc<Outbox>,
        store: Arc<Store>,
        evictor: Arc<Evictor>,
        metrics: Arc<metrics::Metrics>,
        token: String,
    ) -> Admin {
        Admin {
            upstreams,
            config,
            outbox,
            store,
            evictor,
            metrics,
            token,
            shutdown: ShutdownSignal::new(),
        }
    }

    /// Ends long-lived answers (the event stream) when `shutdown` triggers.
    pub fn with_shutdown(mut self, shutdown: ShutdownSignal) -> Admin {
        self.shutdown = shutdown;
        self
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

    /// True for a `Host` naming loopback or the admin address (or no `Host` at all: not a browser).
    fn host_allowed<B>(&self, req: &Request<B>) -> bool {
        let Some(host) = req.headers().get(header::HOST) else {
            return true;
        };
        let Ok(host) = host.to_str() else { return false };
        let name = match host.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(""),
            None => host.rsplit_once(':').map_or(host, |(h, _)| h),
        };
        name.eq_ignore_ascii_case("localhost")
            || name
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback() || ip == self.config.load().admin_listen.ip())
    }

    /// Answers one admin request.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<ProxyBody>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<crate::body::BoxError>,
    {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        if !self.host_allowed(&req) {
            return json_error(
                StatusCode::FORBIDDEN,
                "Host not allowed: the admin API answers loopback names and its own address only",
                None,
            );
        }
        let read = method == Method::GET || method == Method::HEAD;
        let open = read
            && match segs.as_slice() {
                [""] | ["index.html"] | ["healthz"] | ["readyz"] => true,
                ["metrics"] => self.config.load().public_metrics,
                _ => false,
            };
        if !open && !self.authorized(&req) {
            return json_error(
                StatusCode::UNAUTHORIZED,
                "admin token required (Authorization: Bearer <token>, see `outpost status`)",
                None,
            );
        }
        match (&method, segs.as_slice()) {
            (&Method::GET, [""]) | (&Method::GET, ["index.html"]) => {
                let mut r = Response::new(body::full(DASHBOARD));
                let h = r.headers_mut();
                h.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                );
                h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                // The page only talks to this origin; no framing (clickjacking of the buttons).
                h.insert(
                    header::CONTENT_SECURITY_POLICY,
                    HeaderValue::from_static("default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; frame-ancestors 'none'"),
                );
                h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
                r
            }
            (&Method::GET, ["healthz"]) => json_ok(json!({"ok": true})),
            (&Method::GET, ["readyz"]) => self.readyz(),
            (&Method::GET, ["api", "status"]) => json_ok(self.status()),
            (&Method::GET, ["api", "stats"]) => json_ok(self.stats()),
            (&Method::GET, ["api", "events"]) => events::stream(self.outbox.subscribe(), &self.shutdown),
            (&Method::GET, ["metrics"]) => {
                let ups: Vec<(String, bool)> = self
                    .upstreams
                    .load()
                    .iter()
                    .map(|u| (u.name().to_string(), u.connectivity().is_online()))
                    .collect();
                self.metrics.set_store_writable(!self.store.troubled());
                let evictions = self.evictor.counts().by_reason;
                let replays = self.outbox.replay_counts();
                let kind_limits = self.evictor.kind_limits();
                let text = self.metrics.render(&metrics::Scrape {
                    cache_bytes: self.evictor.used(),
                    queue_depth: self.outbox.depth(),
                    dead_letters: self.outbox.dead_letters(),
                    upstreams: &ups,
                    evictions: &evictions,
                    store_write_errors: self.store.write_errors(),
                    replays: &replays,
                    kind_limits: &kind_limits,
                });
                let mut r = Response::new(body::full(text));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
                );
                r
            }
            (&Method::POST, ["api", "cache", "clear"]) => match read_json(req).await {
                Ok(v) => self.clear(&v),
                Err(resp) => resp,
            },
            (&Method::PUT, ["api", "settings"]) => match read_json(req).await {
                Ok(v) => self.put_settings(&v),
                Err(resp) => resp,
            },
            (&Method::GET, ["api", "queue"]) => match self.outbox.list() {
                Ok(items) => {
                    let table = self.config.load().route_table();
                    let items: Vec<Value> = items.iter().map(|i| item_json(i, &self.outbox, &table)).collect();
                    json_ok(json!({
                        "state": self.outbox.state(),
                        "depth": self.outbox.depth(),
                        "waiting_for_credentials": self.outbox.waiting_users(),
                        "items": items,
                    }))
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
            (&Method::DELETE, ["api", "cache"]) => self.purge(req.uri().query().unwrap_or("")),
            (&Method::DELETE, ["api", "queue", id]) => {
                queue_result(self.outbox.drop_item(id).map(|_| json!({"dropped": id})))
            }
            (_, ["healthz"])
            | (_, ["readyz"])
            | (_, ["api", "status"])
            | (_, ["api", "queue", ..])
            | (_, ["api", "stats"])
            | (_, ["api", "events"])
            | (_, ["metrics"])
            | (_, ["api", "cache", ..])
            | (_, ["api", "settings"]) => json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed", None),
            _ => json_error(StatusCode::NOT_FOUND, "no such admin endpoint", None),
        }
    }

    fn stats(&self) -> Value {
        let kinds = self.store.kind_usage().unwrap_or_default();
        let outcomes = self.metrics.outcomes_by_kind();
        let mut per_kind = serde_json::Map::new();
        let limits = self.evictor.kind_limits();
        let names: std::collections::BTreeSet<String> = kinds
            .keys()
            .cloned()
            .chain(outcomes.keys().cloned())
            .chain(limits.keys().cloned())
            .collect();
        for k in names {
            let (count, bytes) = kinds.get(&k).copied().unwrap_or((0, 0));
            let limit = limits.get(&k).copied();
            let o = outcomes.get(&k).cloned().unwrap_or_default();
            let get = |n: &str| o.get(n).copied().unwrap_or(0);
            let served_from_cache = get("HIT") + get("STALE") + get("REVALIDATED") + get("OFFLINE");
            let lookups = served_from_cache + get("MISS");
            per_kind.insert(
                k,
                json!({
                    "entries": count, "bytes": bytes, "limit": limit,
                    "hit": get("HIT"), "miss": get("MISS"), "stale": get("STALE"),
                    "revalidated": get("REVALIDATED"), "offline": get("OFFLINE"), "queued": get("QUEUED"), "bypass": get("BYPASS"),
                    "hit_rate": if lookups == 0 { 0.0 } else { served_from_cache as f64 / lookups as f64 },
                }),
            );
        }
        let evictions: serde_json::Map<String, Value> = self
            .evictor
            .counts()
            .by_reason
            .iter()
            .map(|(r, (n, b))| (r.to_string(), json!({"count": n, "bytes": b})))
            .collect();
        let (hot, hot_bytes, hot_limit) = self.store.hot_records();
        json!({
            "size_bytes": self.evictor.used(),
            "max_size": self.evictor.max_size(),
            "auto_evict": self.evictor.auto_evict(),
            "storing": self.evictor.accepting(),
            "dedup_saved_bytes": self.store.dedup_saved().unwrap_or(0),
            "store_write_errors": self.store.write_errors(),
            "encrypted_at_rest": self.store.encrypted(),
            "zero_copy_bytes": self.store.blobs().regions().sent_bytes(),
            "hot_records": {"count": hot, "bytes": hot_bytes, "limit": hot_limit},
            "kinds": per_kind,
            "evictions": evictions,
            "queue_depth": self.outbox.depth(),
        })
    }

    fn clear(&self, v: &Value) -> Response<ProxyBody> {
        let kind = v.get("kind").and_then(Value::as_str);
        let partition = v.get("partition").and_then(Value::as_str);
        let all = v.get("all").and_then(Value::as_bool).unwrap_or(false);
        if kind.is_none() && partition.is_none() && !all {
            return json_error(
                StatusCode::BAD_REQUEST,
                "say what to clear: {\"all\": true}, {\"kind\": \"audio\"} or {\"partition\": \"sub:alice\"}",
                None,
            );
        }
        if let Some(k) = kind {
            // A typo must not clear nothing and say "0 cleared" as if that were the answer.
            let mut known: std::collections::BTreeSet<String> = self
                .config
                .load()
                .routes
                .iter()
                .map(|r| r.policy.kind.clone())
                .collect();
            known.insert(crate::routes::RoutePolicy::default().kind);
            known.extend(self.store.kind_usage().unwrap_or_default().into_keys());
            if !known.contains(k) {
                let list: Vec<&str> = known.iter().map(String::as_str).collect();
                return json_error(
                    StatusCode::BAD_REQUEST,
                    &format!("unknown kind {k:?} (known: {})", list.join(", ")),
                    None,
                );
            }
        }
        let keys = match self.store.entry_keys_where(kind, partition) {
            Ok(k) => k,
            Err(e) => return json_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string(), None),
        };
        let mut freed = 0;
        for k in &keys {
            match self.evictor.remove_entry(k, EvictReason::Cleared) {
                Ok(b) => freed += b,
                Err(e) => return json_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string(), None),
            }
        }
        json_ok(json!({"cleared_entries": keys.len(), "freed_bytes": freed}))
    }

    /// `DELETE /api/cache?url=URL[&partition=P]`: every stored answer for the URL (as the app asks for
    /// it: a path with its query, or an absolute URL on Outpost), all `Vary` variants, in one user
    /// partition or in all.
    fn purge(&self, query: &str) -> Response<ProxyBody> {
        let mut url = None;
        let mut partition = None;
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "url" => url = Some(v.into_owned()),
                "partition" => partition = Some(v.into_owned()),
                _ => {}
            }
        }
        let Some(url) = url else {
            return json_error(StatusCode::BAD_REQUEST, "say which URL: ?url=/api/v1/library", None);
        };
        let Some(url_key) = url_key(&self.config.load(), &url) else {
            return json_error(
                StatusCode::BAD_REQUEST,
                &format!("{url:?} is not a URL path (e.g. /api/v1/library?page=2)"),
                None,
            );
        };
        match self.evictor.purge(&url_key, partition.as_deref()) {
            Ok((entries, freed)) => json_ok(json!({"url": url, "purged_entries": entries, "freed_bytes": freed})),
            Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string(), None),
        }
    }

    /// `/readyz`: ready when the store takes writes and the replay worker runs (200, else 503); the
    /// upstreams' reachability is in the body but does not decide it (offline is normal for a sidecar).
    fn readyz(&self) -> Response<ProxyBody> {
        let trouble = self.store.trouble();
        let replay = self.outbox.replay_running();
        let ready = trouble.is_none() && replay;
        let ups: Vec<Value> = self
            .upstreams
            .load()
            .iter()
            .map(|u| json!({"upstream": u.name(), "online": u.connectivity().is_online()}))
            .collect();
        let v = json!({
            "ready": ready,
            "store": {"writable": trouble.is_none(), "disk_full": trouble.as_ref().is_some_and(|t| t.full)},
            "replay_worker": if replay { "running" } else { "stopped" },
            "upstreams": ups,
        });
        let mut r = json_ok(v);
        if !ready {
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        }
        r
    }

    fn put_settings(&self, v: &Value) -> Response<ProxyBody> {
        if v.get("reset").and_then(Value::as_bool) == Some(true) {
            let _ = self.store.set_setting("max_size", None);
            let _ = self.store.set_setting("auto_evict", None);
            self.evictor
                .configure(self.config.load().max_size, self.config.load().cache.auto_evict);
            return json_ok(json!({"max_size": self.evictor.max_size(), "auto_evict": self.evictor.auto_evict()}));
        }
        let mut max = self.evictor.max_size();
        let mut auto = self.evictor.auto_evict();
        if let Some(m) = v.get("max_size") {
            let parsed = match m {
                Value::Number(n) => n
                    .as_u64()
                    .ok_or_else(|| "max_size must be a positive integer".to_string()),
                Value::String(s) => parse_size(s),
                _ => Err("max_size must be a number of bytes or a size like \"500MB\"".to_string()),
            };
            match parsed {
                Ok(n) if n > 0 => max = n,
                Ok(_) => return json_error(StatusCode::BAD_REQUEST, "max_size must be greater than 0", None),
                Err(e) => return json_error(StatusCode::BAD_REQUEST, &e, None),
            }
        }
        if let Some(a) = v.get("auto_evict") {
            match a.as_bool() {
                Some(b) => auto = b,
                None => return json_error(StatusCode::BAD_REQUEST, "auto_evict must be true or false", None),
            }
        }
        let saved = self
            .store
            .set_setting("max_size", Some(&max.to_string()))
            .and_then(|_| {
                self.store
                    .set_setting("auto_evict", Some(if auto { "true" } else { "false" }))
            });
        if let Err(e) = saved {
            return json_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string(), None);
        }
        self.evictor.configure(max, auto);
        json_ok(json!({"max_size": max, "auto_evict": auto}))
    }

    fn status(&self) -> Value {
        let ups: Vec<_> = self
            .upstreams
            .load()
            .iter()
            .map(|u| u.connectivity().snapshot())
            .collect();
        let (entries, bytes) = self.store.usage().unwrap_or((0, 0));
        let saved = self.store.dedup_saved().unwrap_or(0);
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "listen": self.config.load().listen.to_string(),
            "data_dir": self.config.load().data_dir.display().to_string(),
            "max_size": self.config.load().max_size,
            "upstreams": ups,
            "queue": {
                "state": self.outbox.state(),
                "depth": self.outbox.depth(),
                "waiting_for_credentials": self.outbox.waiting_users(),
            },
            "cache": {"entries": entries, "bytes": bytes, "dedup_saved_bytes": saved},
            "store": match self.store.trouble() {
                None => json!({"writable": true, "write_errors": self.store.write_errors()}),
                Some(t) => json!({
                    "writable": false, "disk_full": t.full, "reason": t.reason, "since_ms": t.since_ms,
                    "write_errors": self.store.write_errors(),
                }),
            },
            "admin_token_file": token_path(&self.config.load().data_dir).display().to_string(),
        })
    }
}

/// A URL as the app asks for it (a path with its query, or an absolute URL on Outpost) as a primary
/// key without its partition (`\0upstream\0path?query`): what every user's entries for it share.
fn url_key(config: &crate::config::Config, url: &str) -> Option<Vec<u8>> {
    let uri: http::Uri = url.parse().ok()?;
    let pq = uri.path_and_query()?;
    if !pq.path().starts_with('/') {
        return None;
    }
    let uri: http::Uri = pq.as_str().parse().ok()?;
    let table = config.route_table();
    let route = table.route(&http::Method::GET, uri.path());
    let upstream = &config.upstreams.get(route.upstream)?.name;
    Some(crate::cache::key::primary_key(
        "",
        upstream,
        &uri,
        &route.policy.ignore_query,
    ))
}

fn item_json(i: &crate::queue::OutboxRecord, outbox: &Outbox, table: &crate::routes::RouteTable) -> Value {
    // A spooled body's size is its file's.
    let spooled = i.body_file.as_deref().and_then(|f| outbox.spool()?.path(f));
    let body_bytes = match &spooled {
        Some(p) => std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
        None => i.body.len() as u64,
    };
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
        "body_bytes": body_bytes,
        "spooled": spooled.is_some(),
        "superseded_by": i.superseded_by,
        "overlay": effects::overlay_effects(i, table),
    })
}

/// Reads a small JSON request body (64 KiB at most); errors are ready-made 400 answers.
async fn read_json<B>(req: Request<B>) -> Result<Value, Response<ProxyBody>>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<crate::body::BoxError>,
{
    use http_body_util::BodyExt;
    let limited = http_body_util::Limited::new(req.into_body(), 64 * 1024);
    let bytes = match limited.collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            return Err(json_error(
                StatusCode::BAD_REQUEST,
                &format!("cannot read the body: {e}"),
                None,
            ))
        }
    };
    if bytes.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(&bytes).map_err(|e| json_error(StatusCode::BAD_REQUEST, &format!("invalid JSON: {e}"), None))
}

fn queue_result(r: Result<Value, QueueError>) -> Response<ProxyBody> {
    match r {
        Ok(v) => json_ok(v),
        Err(QueueError::NotFound(id)) => json_error(StatusCode::NOT_FOUND, &format!("no queued item {id}"), None),
        Err(QueueError::Refused(why)) => json_error(StatusCode::CONFLICT, &why, None),
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
