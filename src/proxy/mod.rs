//! The request pipeline: check → route → dispatch (cache flow for GET/HEAD, write path for queueing
//! writes, plain forward for the rest) → response hooks (media) → log and metrics.
//!
//! Promises: bodies are streamed, never collected, except a write's body up to the route's `max_body`
//! (to queue it) and a JSON answer up to `rewrite_max` on media routes; hop-by-hop headers (RFC 9110
//! §7.6.1, including those named in `Connection`) never cross; `Via` and `X-Forwarded-For`/`-Proto` are
//! added; every failure is a [`ProxyError`] turned into an answer in one place (an unreachable upstream
//! gives a JSON 502, or 504 when it accepted but did not answer, within the configured timeouts).
//!
//! Rooms: [`forward`] (the [`Forwarder`]: routes + upstream clients + header rules), [`flow`] (the cache
//! flow, executor of [`crate::cache::Plan`]s), [`write`] (forward-or-queue), [`replay`] (the queue
//! worker's adapter), [`tunnel`] (protocol switches: WebSockets), [`invalidate`] (what a write makes
//! stale), [`prefetch`], [`error`].

pub mod cors;
pub mod error;
pub mod flow;
pub mod forward;
mod invalidate;
mod overlay;
mod prefetch;
pub mod replay;
pub mod reqlog;
pub mod tunnel;
mod write;

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};

pub use error::{Fault, ProxyError};
pub use flow::{Flow, RequestHead};
pub use forward::Forwarder;
pub use replay::Replayer;

use crate::admin::metrics::Metrics;
use crate::body::{self, ProxyBody};
use crate::cache::policy;
use crate::cache::{key, Outcome};
use crate::encoding::{self, ContentCoding};
use crate::evict::{EvictReason, Evictor};
use crate::media::{Asked, MediaHooks, MediaRules};
use crate::queue::Outbox;
use crate::routes::RouteMatch;
use crate::server::ShutdownSignal;
use crate::store::Store;
use crate::upstream::Upstream;

/// The proxy's shared state.
pub struct Proxy {
    forwarder: Arc<Forwarder>,
    flow: Arc<Flow>,
    outbox: Arc<Outbox>,
    media: MediaHooks,
    prefetch: prefetch::Prefetcher,
    tunnels: tunnel::Tunnels,
    cors: cors::Cors,
    /// Longest pause inside a request body; longest read of a write body in all.
    body_read_timeout: std::time::Duration,
    /// `PURGE` from apps is honoured (`[cache] allow_purge`).
    allow_purge: bool,
    /// Query parameters shown as `REDACTED` in the request log.
    log_redact: Vec<String>,
    /// Bytes of write bodies held while they are read to be queued (one permit per byte).
    buffered: Arc<tokio::sync::Semaphore>,
    /// Blocking disk work of the write path (spool pieces, queue commits) running at once: each waiting
    /// one would otherwise hold a thread of the blocking pool (its stack and allocator cache), and 300
    /// uploads at once took 300 threads and ~800 MiB.
    disk: Arc<tokio::sync::Semaphore>,
    store: Arc<Store>,
    evictor: Arc<Evictor>,
    metrics: Arc<Metrics>,
}

impl Proxy {
    /// Builds the request handler.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        forwarder: Arc<Forwarder>,
        flow: Arc<Flow>,
        outbox: Arc<Outbox>,
        store: Arc<Store>,
        evictor: Arc<Evictor>,
        metrics: Arc<Metrics>,
        shutdown: ShutdownSignal,
    ) -> Proxy {
        Proxy {
            media: MediaHooks::new(store.clone(), evictor.clone()),
            prefetch: prefetch::Prefetcher::new(shutdown.clone()),
            tunnels: tunnel::Tunnels::new(shutdown),
            cors: cors::Cors::new(store.clone()),
            body_read_timeout: std::time::Duration::from_secs(30),
            allow_purge: false,
            log_redact: reqlog::DEFAULT_REDACT.iter().map(|s| s.to_string()).collect(),
            buffered: Arc::new(tokio::sync::Semaphore::new(64 << 20)),
            disk: Arc::new(tokio::sync::Semaphore::new(write::DISK_TASKS)),
            forwarder,
            flow,
            outbox,
            store,
            evictor,
            metrics,
        }
    }

    /// Bounds what a client can make the proxy hold: `body_read_timeout` and `max_buffered_bodies`.
    pub fn with_limits(mut self, body_read_timeout: std::time::Duration, max_buffered_bodies: u64) -> Proxy {
        self.body_read_timeout = body_read_timeout;
        let permits = usize::try_from(max_buffered_bodies)
            .unwrap_or(usize::MAX)
            .min(tokio::sync::Semaphore::MAX_PERMITS);
        self.buffered = Arc::new(tokio::sync::Semaphore::new(permits));
        self
    }

    /// Query parameters whose values the request log replaces by `REDACTED`.
    pub fn with_log_redact(mut self, names: Vec<String>) -> Proxy {
        self.log_redact = names;
        self
    }

    /// Honours `PURGE` requests (the caller's own stored answers for the URL).
    pub fn with_purge(mut self, allow: bool) -> Proxy {
        self.allow_purge = allow;
        self
    }

    /// `PURGE url`: removes the caller's stored answers for the URL (every `Vary` variant in the
    /// caller's partition; other users' answers are the admin API's business). Off unless configured.
    async fn purge(&self, headers: &http::HeaderMap, uri: &Uri, route: &RouteMatch<'_>) -> Response<ProxyBody> {
        if !self.allow_purge {
            return body::json_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "PURGE is off on this Outpost ([cache] allow_purge = true turns it on)",
                None,
            );
        }
        let partition = self.flow.partition(headers, route);
        let key = self.forwarder.key_of(&partition, uri);
        let url_key = key[partition.len()..].to_vec();
        let evictor = self.evictor.clone();
        let done = tokio::task::spawn_blocking(move || evictor.purge(&url_key, Some(&partition))).await;
        match done {
            Ok(Ok((entries, freed))) => {
                let v = serde_json::json!({"purged_entries": entries, "freed_bytes": freed});
                let mut r = Response::new(body::full(v.to_string()));
                r.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                r
            }
            Ok(Err(e)) => body::json_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string(), None),
            Err(e) => body::json_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string(), None),
        }
    }

    /// The outbox.
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// Handles one client request end to end; never fails (errors become responses).
    pub async fn handle<B>(self: Arc<Self>, mut req: Request<B>, peer: SocketAddr) -> Response<ProxyBody>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + Sync + 'static,
        B::Error: Into<body::BoxError>,
    {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let seen = reqlog::Seen::new(&method, req.uri().clone(), req.headers_mut());
        let started = seen.started();
        if let Err(e) = check_request(&req) {
            let mut resp = e.into_response();
            resp.headers_mut().insert(reqlog::REQUEST_ID, seen.id().clone());
            seen.log(&self.log_redact, "-", "-", resp.status(), Outcome::Bypass);
            return resp;
        }
        let (route, upstream) = self.forwarder.route(&method, &path);
        if method.as_str() == "PURGE" {
            let mut resp = Box::pin(self.purge(req.headers(), req.uri(), &route)).await;
            resp.headers_mut().insert(reqlog::REQUEST_ID, seen.id().clone());
            seen.log(
                &self.log_redact,
                route.name,
                upstream.name(),
                resp.status(),
                Outcome::Bypass,
            );
            return resp;
        }
        let upstream = upstream.clone();
        let read = method == Method::GET || method == Method::HEAD;
        let cacheable = read && route.policy.strategy != crate::routes::Strategy::NetworkOnly;
        let authorization = req.headers().get(header::AUTHORIZATION).cloned();
        let mut accept_encoding = http::HeaderMap::new();
        for v in req.headers().get_all(header::ACCEPT_ENCODING) {
            accept_encoding.append(header::ACCEPT_ENCODING, v.clone());
        }
        let origin = req
            .headers()
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let preflight = cors::is_preflight(&method, req.headers());
        let media = media_rules(&route);
        let dead_letters = self.outbox.has_dead_letters();
        let waiting_auth = self.outbox.waiting_for_credentials();
        let pending_check = cacheable && self.outbox.depth() > 0;
        let partition =
            if route.policy.pins.is_some() || route.policy.logout || dead_letters || waiting_auth || pending_check {
                self.flow.partition(req.headers(), &route)
            } else {
                String::new()
            };
        // Only the list itself (the route's exact path; each query its own list) sets pins.
        let pin_list = (route.policy.pins.is_some() && route.pattern.is_some_and(|p| p.matches_exactly(&path)))
            .then(|| req.uri().query().unwrap_or("").to_string());
        let local_base = (!route.policy.rewrite.is_empty())
            .then(|| {
                req.headers()
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(|h| format!("http://{h}"))
            })
            .flatten();
        // A request body may not pause longer than body_read_timeout (a byte now and then must not hold a
        // connection and its buffers for ever).
        let idle = self.body_read_timeout;
        let req = req.map(|b| {
            // Most reads have no body at all: nothing to time.
            if http_body::Body::is_end_stream(&b) {
                body::boxed(b)
            } else {
                body::boxed(body::IdleTimeout::new(body::boxed(b), idle))
            }
        });
        // Read your own writes: this user's queued writes to this very resource, on routes that opt in.
        let overlay_writes = if read && pending_check && route.policy.overlay {
            self.outbox.pending_writes_to(&partition, &path)
        } else {
            Vec::new()
        };
        // ... and to a collection's items, on routes with `overlay_list`.
        let list = match &route.policy.overlay_list {
            Some(l) if read && pending_check && overlay_writes.is_empty() => l.items_base(&path).map(|b| (l, b)),
            _ => None,
        };
        let list_writes = match &list {
            Some((_, items_at)) => self.outbox.pending_list_writes(&partition, items_at),
            None => Vec::new(),
        };
        let overlaid = !overlay_writes.is_empty() || !list_writes.is_empty();
        // Every branch but the cache flow is boxed: a future is as large as its largest branch, and a
        // request's future is moved into hyper's dispatcher on every request (it was 7.7 KiB).
        let answer = if !overlay_writes.is_empty() {
            Box::pin(self.overlaid(RequestHead::of(req), &route, &upstream, peer, &overlay_writes)).await
        } else if let (Some((list, items_at)), false) = (&list, list_writes.is_empty()) {
            let head = RequestHead::of(req);
            Box::pin(self.overlaid_list(head, &route, &upstream, peer, (list, items_at), &list_writes)).await
        } else if route.policy.upgrade && tunnel::wants_upgrade(req.headers()) {
            let tunnelled = self.tunnels.open_tunnel(req, &self.forwarder, &route, &upstream, peer);
            Box::pin(tunnelled).await.map(|r| (r, Outcome::Bypass))
        } else if read {
            self.flow.run(RequestHead::of(req), &route, &upstream, peer).await
        } else if policy::is_unsafe(&method) && route.policy.queue {
            Box::pin(self.write(req, &route, &upstream, peer)).await
        } else {
            Box::pin(self.pass(req, &route, &upstream, peer)).await
        };
        // Why Outpost answered itself, for Cache-Status (`detail`).
        let failed = match &answer {
            Ok((r, _)) if overlaid && r.headers().contains_key("x-outpost-overlay") => Some("overlay"),
            Ok(_) => None,
            Err(ProxyError::Offline { .. }) => Some("offline"),
            Err(ProxyError::StaleForbidden { .. }) => Some("stale-forbidden"),
            Err(_) => Some("error"),
        };
        // `made_here`: an answer of Outpost's own (errors, queued writes), which gets CORS fields.
        let (mut resp, outcome, made_here) = match (answer, origin.as_deref()) {
            (Ok((r, outcome)), None) => (r, outcome, false),
            (Ok((r, outcome)), Some(origin)) => {
                if matches!(outcome, Outcome::Miss | Outcome::Revalidated | Outcome::Bypass) {
                    self.cors.learn(upstream.name(), route.name, origin, preflight, &r);
                }
                (r, outcome, outcome == Outcome::Queued)
            }
            (Err(e), origin) => {
                let outcome = if cacheable { Outcome::Miss } else { Outcome::Bypass };
                tracing::debug!(fault = ?e.fault(), error = %e, "request failed");
                let stored = match origin {
                    Some(o) if preflight && e.fault() == Fault::Upstream => {
                        self.cors.preflight(upstream.name(), route.name, o)
                    }
                    _ => None,
                };
                match stored {
                    // A page's preflight while the upstream is away: what it said last time.
                    Some(r) => (r, Outcome::Hit, false),
                    None => (e.into_response(), outcome, true),
                }
            }
        };
        if let (Some(o), true) = (origin.as_deref(), made_here) {
            self.cors.decorate(upstream.name(), o, &mut resp);
        }
        resp.headers_mut().insert(
            HeaderName::from_static("x-outpost-cache"),
            HeaderValue::from_static(outcome.as_str()),
        );
        cache_status(&mut resp, outcome, failed);
        if let Some(auth) = &authorization {
            // A paused queue (401/403 on replay) resumes once the upstream accepts newer credentials.
            if resp.status().is_success() && matches!(outcome, Outcome::Miss | Outcome::Revalidated | Outcome::Bypass) {
                self.outbox.credentials_accepted(&partition, auth);
            }
        }
        if media.any() && method == Method::GET && resp.status() == StatusCode::OK {
            let fwd = &self.forwarder;
            // Players fetch media without credentials: media lives in the anonymous partition.
            let key_of = |uri: &Uri| fwd.key_of(key::ANONYMOUS, uri);
            let hooked = Box::pin(self.media.on_answer(
                resp,
                &media,
                &Asked {
                    from_network: outcome.from_network(),
                    partition: &partition,
                    // An answer with queued writes in it is not what the server lists.
                    list: pin_list.as_deref().filter(|_| !overlaid),
                    local_base: local_base.as_deref(),
                },
                &key_of,
            ))
            .await;
            match hooked {
                Ok((hooked, prefetch)) => {
                    resp = hooked;
                    for uri in prefetch {
                        self.prefetch.spawn(&self.flow, &self.forwarder, uri);
                    }
                }
                Err(e) => {
                    let e = ProxyError::Garbage {
                        upstream: upstream.name().to_string(),
                        reason: e,
                    };
                    tracing::warn!(path, error = %e, "upstream answer refused");
                    resp = e.into_response();
                }
            }
        }
        adapt_coding(&mut resp, &accept_encoding, &method);
        if route.policy.logout && resp.status().is_success() && partition != key::ANONYMOUS {
            self.clear_partition(&partition);
            self.media.forget_user(&partition);
        }
        if dead_letters {
            // The channel an unmodified app (or its developer) can see: this user's writes that stopped
            // for good, until they are retried or dropped on the dashboard.
            let n = self.outbox.dead_letters_for(&partition);
            if n > 0 {
                resp.headers_mut()
                    .insert(HeaderName::from_static("x-outpost-dead-letters"), HeaderValue::from(n));
            }
        }
        if pending_check {
            let pending = self.outbox.pending_for(&partition, &path).max(list_writes.len());
            if pending > 0 {
                resp.headers_mut()
                    .insert(HeaderName::from_static("x-outpost-pending"), HeaderValue::from(pending));
            }
        }
        // Ours, also over an id a stored answer carries from the request that filled it.
        resp.headers_mut().insert(reqlog::REQUEST_ID, seen.id().clone());
        seen.log(&self.log_redact, route.name, upstream.name(), resp.status(), outcome);
        self.metrics.request(
            route.name,
            &route.policy.kind,
            outcome.as_str(),
            resp.status().as_u16(),
            started.elapsed().as_secs_f64(),
        );
        resp
    }

    /// A request that is neither cacheable nor queued: forwarded as it is; a successful unsafe one
    /// invalidates what it changed.
    async fn pass<B>(
        &self,
        req: Request<B>,
        route: &RouteMatch<'_>,
        upstream: &Arc<Upstream>,
        peer: SocketAddr,
    ) -> Result<(Response<ProxyBody>, Outcome), ProxyError>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + Sync + 'static,
        B::Error: Into<body::BoxError>,
    {
        let target = policy::is_unsafe(req.method()).then(|| {
            let host = req
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string);
            (req.uri().clone(), host, self.flow.partition(req.headers(), route))
        });
        let resp = self
            .forwarder
            .forward(req.map(body::boxed), route, upstream, peer, None)
            .await?;
        if let Some((uri, host, partition)) = target {
            if resp.status().is_success() || resp.status().is_redirection() {
                let cache = self.flow.cache();
                let target = (&uri, host.as_deref());
                invalidate::after_unsafe(&self.forwarder, cache, target, &partition, resp.headers(), upstream);
            }
        }
        Ok((resp, Outcome::Bypass))
    }

    /// Logout: everything stored for this user goes.
    fn clear_partition(&self, partition: &str) {
        match self.store.entry_keys_where(None, Some(partition)) {
            Ok(keys) => {
                for k in &keys {
                    if let Err(e) = self.evictor.remove_entry(k, EvictReason::Cleared) {
                        tracing::warn!(error = %e, "clearing at logout failed");
                    }
                }
                tracing::info!(partition, entries = keys.len(), "logout: partition cleared");
            }
            Err(e) => tracing::warn!(error = %e, "clearing at logout failed"),
        }
    }
}

/// Stored and forwarded answers keep the coding the upstream chose; a client that does not accept it
/// gets the body decoded as it streams (a `HEAD` gets the head it would get for a `GET`). Answers with
/// a body in a coding Outpost can decode also say `Vary: Accept-Encoding`. Partial answers (`206`) pass as
/// they are: the store answers a client that would need decoding with the whole body instead.
fn adapt_coding(resp: &mut Response<ProxyBody>, accept: &http::HeaderMap, method: &Method) {
    if resp.status() != StatusCode::OK {
        return;
    }
    let Some(coding) = encoding::must_decode(resp.headers(), accept) else {
        if matches!(encoding::content_coding(resp.headers()), ContentCoding::Known(_)) {
            encoding::add_vary_accept_encoding(resp.headers_mut());
        }
        return;
    };
    encoding::mark_decoded(resp.headers_mut());
    if method != Method::HEAD {
        let body = std::mem::replace(resp.body_mut(), body::empty());
        *resp.body_mut() = encoding::decode_body(coding, body);
    }
}

fn media_rules<'a>(route: &RouteMatch<'a>) -> MediaRules<'a> {
    let p = route.policy;
    MediaRules {
        route: route.name,
        rewrite: &p.rewrite,
        max: p.rewrite_max,
        pins: p.pins.as_ref(),
        prefetch: p.prefetch,
        alias: p.media_alias.as_ref(),
    }
}

/// Requests we refuse before routing (RFC 9112 §3.2: origin-form is what a reverse proxy serves).
fn check_request<B>(req: &Request<B>) -> Result<(), ProxyError> {
    if req.method() == Method::CONNECT {
        return Err(ProxyError::BadRequest(
            "CONNECT is not supported: Outpost is a reverse proxy",
        ));
    }
    if !req.uri().path().starts_with('/') {
        return Err(ProxyError::BadRequest(
            "request target must be a path starting with '/'",
        ));
    }
    if has_dot_dot(req.uri().path()) {
        return Err(ProxyError::BadRequest(
            "request path must not contain '..' segments (also percent-encoded or with '\\')",
        ));
    }
    Ok(())
}

/// True when a path has a `..` segment once `%2e`, `%2f` and `%5c` are decoded and `\` counts as a
/// separator (some upstreams and file servers treat them so: `/%2e%2e/`, `..\`).
fn has_dot_dot(path: &str) -> bool {
    // Most paths have no dot and no escape: nothing to decode (this runs on every request).
    if !path.bytes().any(|b| matches!(b, b'.' | b'%' | b'\\')) {
        return false;
    }
    let lower = path.to_ascii_lowercase();
    let decoded = lower
        .replace("%2e", ".")
        .replace("%2f", "/")
        .replace("%5c", "/")
        .replace('\\', "/");
    decoded.split('/').any(|seg| seg == "..")
}

/// Adds Outpost's member to `Cache-Status` (RFC 9211), after any an upstream cache put there.
fn cache_status(resp: &mut Response<ProxyBody>, outcome: Outcome, failed: Option<&str>) {
    let stored = resp.extensions().get::<crate::cache::Storing>().is_some();
    let fwd_status = failed.is_none().then(|| resp.status().as_u16());
    let ours = outcome.cache_status(fwd_status, stored, failed);
    let name = HeaderName::from_static("cache-status");
    let value = match resp.headers().get(&name).and_then(|v| v.to_str().ok()) {
        Some(up) if !up.trim().is_empty() => format!("{up}, {ours}"),
        _ => ours,
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        resp.headers_mut().insert(name, v);
    }
}
