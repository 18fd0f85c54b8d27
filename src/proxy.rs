//! The request path: classify the request, pick its route and upstream, forward it with streamed bodies,
//! and turn failures into clear answers.
//!
//! Promises: bodies are never collected in memory; hop-by-hop headers (RFC 9110 §7.6.1, including those
//! named in `Connection`) never cross; `Via` and `X-Forwarded-For`/`-Proto` are added; an unreachable
//! upstream gives a JSON 502 (504 when it accepted but did not answer) within the configured timeouts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::{stream, StreamExt};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use serde_json::json;

use crate::body::{self, ProxyBody};
use crate::cache::key;
use crate::cache::policy::{self, CacheControl, Freshness};
use crate::cache::{Cache, FillGuard, FillInfo, FillSlot, FillState, Hit};
use crate::config::{ConflictPolicy, Strategy};
use crate::routes::{RouteMatch, RouteTable};
use crate::store::OutboxRecord;
use crate::sync::Outbox;
use crate::upstream::{Upstream, UpstreamError, Upstreams};

/// `Via` pseudonym (RFC 9110 §7.6.3).
const VIA_NAME: &str = "outpost";

/// Pinned media keys per (pinning route, user partition).
type PinSets = std::collections::HashMap<(String, String), std::collections::HashSet<Vec<u8>>>;

/// Background media downloads at once.
const PREFETCH_CONCURRENCY: usize = 2;

/// Seconds a client is told to wait before retrying an offline miss.
const OFFLINE_RETRY_AFTER: &str = "5";

/// How a request was answered; the `X-Outpost-Cache` header, the log line and metrics use the same label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Fresh stored response, no upstream contact.
    Hit,
    /// Answered by the upstream (and stored if storable).
    Miss,
    /// Stored response served stale by policy (stale-while-revalidate, cache-first, cache-only).
    Stale,
    /// Stored response confirmed by a 304.
    Revalidated,
    /// Stored response served because the upstream is unreachable.
    Offline,
    /// Not a cacheable exchange (mutations, network-only routes, errors before routing).
    Bypass,
}

impl Outcome {
    /// Stable label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit => "HIT",
            Outcome::Miss => "MISS",
            Outcome::Stale => "STALE",
            Outcome::Revalidated => "REVALIDATED",
            Outcome::Offline => "OFFLINE",
            Outcome::Bypass => "BYPASS",
        }
    }
}

/// The parts of a request needed again after its body is gone (revalidation, background refresh).
#[derive(Debug, Clone)]
struct RequestHead {
    method: Method,
    uri: Uri,
    version: http::Version,
    headers: HeaderMap,
}

/// A network answer for a cacheable request.
enum Fetched {
    /// The upstream confirmed the stored response.
    NotModified(Response<ProxyBody>),
    /// A full answer (already being stored if storable).
    Full(Response<ProxyBody>),
}

/// The proxy's shared state: route table, upstream clients and the cache.
pub struct Proxy {
    routes: RouteTable,
    upstreams: Arc<Upstreams>,
    cache: Arc<Cache>,
    outbox: Arc<Outbox>,
    metrics: Arc<crate::admin::metrics::Metrics>,
    /// Pinned media keys per (pinning route, user partition).
    pins: std::sync::Mutex<PinSets>,
    prefetch_slots: Arc<tokio::sync::Semaphore>,
}

impl Proxy {
    /// Builds the request handler.
    pub fn new(
        routes: RouteTable,
        upstreams: Arc<Upstreams>,
        cache: Arc<Cache>,
        outbox: Arc<Outbox>,
        metrics: Arc<crate::admin::metrics::Metrics>,
    ) -> Proxy {
        Proxy {
            routes,
            upstreams,
            cache,
            outbox,
            metrics,
            pins: std::sync::Mutex::new(std::collections::HashMap::new()),
            prefetch_slots: Arc::new(tokio::sync::Semaphore::new(PREFETCH_CONCURRENCY)),
        }
    }

    /// Handles one client request end to end; never fails (errors become responses).
    pub async fn handle<B>(self: &Arc<Self>, req: Request<B>, peer: SocketAddr) -> Response<ProxyBody>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + Sync + 'static,
        B::Error: Into<body::BoxError>,
    {
        let started = Instant::now();
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        if let Err(reason) = check_request(&req) {
            let mut resp = json_error(StatusCode::BAD_REQUEST, reason, None);
            // Whatever follows on this connection cannot be trusted to start where we think it does.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            log_line(&method, &path, "-", "-", resp.status(), Outcome::Bypass, started);
            return resp;
        }
        let route = self.routes.route(&method, &path);
        let upstream = self.upstreams.get(route.upstream).clone();
        let cacheable =
            (method == Method::GET || method == Method::HEAD) && route.policy.strategy != Strategy::NetworkOnly;
        let authorization = req.headers().get(header::AUTHORIZATION).cloned();
        let request_partition = if route.policy.pins.is_some() || route.policy.logout {
            key::partition(req.headers())
        } else {
            String::new()
        };
        let rewrite_base = (!route.policy.rewrite.is_empty())
            .then(|| {
                req.headers()
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(|h| format!("http://{h}"))
            })
            .flatten();
        let (mut resp, outcome) = if cacheable {
            let (parts, _body) = req.into_parts();
            self.cached(head_of(parts), &route, &upstream, peer).await
        } else if policy::is_unsafe(&method) && route.policy.queue {
            self.write(req, &route, &upstream, peer).await
        } else {
            let unsafe_method = policy::is_unsafe(&method);
            let target = unsafe_method.then(|| (req.uri().clone(), key::partition(req.headers())));
            match self.forward(req.map(body::boxed), &route, &upstream, peer, None).await {
                Ok(resp) => {
                    if let Some((uri, partition)) = target {
                        if resp.status().is_success() || resp.status().is_redirection() {
                            self.invalidate_after_unsafe(&uri, &partition, resp.headers(), &upstream);
                        }
                    }
                    (resp, Outcome::Bypass)
                }
                Err(e) => (upstream_failure(&e), Outcome::Bypass),
            }
        };
        resp.headers_mut().insert(
            HeaderName::from_static("x-outpost-cache"),
            HeaderValue::from_static(outcome.as_str()),
        );
        if let Some(auth) = &authorization {
            // A paused queue (401/403 on replay) resumes once the upstream accepts newer credentials.
            if resp.status().is_success() && matches!(outcome, Outcome::Miss | Outcome::Revalidated | Outcome::Bypass) {
                self.outbox.credentials_accepted(auth);
            }
        }
        let wants_json = rewrite_base.is_some() || route.policy.pins.is_some() || route.policy.media_alias.is_some();
        if wants_json && method == Method::GET && resp.status() == StatusCode::OK {
            resp = match crate::rewrite::buffer_json(resp, route.policy.rewrite_max).await {
                Err(untouched) => untouched,
                Ok((parts, bytes)) => {
                    if let Some(alias) = &route.policy.media_alias {
                        self.record_media_aliases(&route, alias, &bytes);
                    }
                    if let Some(pins) = &route.policy.pins {
                        self.update_pins(&route, pins, &request_partition, &bytes);
                    }
                    match &rewrite_base {
                        Some(base) => crate::rewrite::rewritten(parts, bytes, &route.policy.rewrite, base),
                        None => Response::from_parts(parts, body::full(bytes)),
                    }
                }
            };
        }
        if route.policy.logout && resp.status().is_success() && request_partition != key::ANONYMOUS {
            self.clear_partition(&request_partition);
        }
        if cacheable {
            let pending = self.outbox.pending_for(&path);
            if pending > 0 {
                resp.headers_mut()
                    .insert(HeaderName::from_static("x-outpost-pending"), HeaderValue::from(pending));
            }
        }
        log_line(
            &method,
            &path,
            route.name,
            upstream.name(),
            resp.status(),
            outcome,
            started,
        );
        self.metrics.request(
            route.name,
            &route.policy.kind,
            outcome.as_str(),
            resp.status().as_u16(),
            started.elapsed().as_secs_f64(),
        );
        resp
    }

    /// A mutating request on a queueing route: forwarded when the upstream can take it, otherwise stored
    /// durably and acknowledged with 202. The body is read first (up to `max_body`) so that a failed
    /// attempt can still be queued.
    async fn write<B>(
        self: &Arc<Self>,
        req: Request<B>,
        route: &RouteMatch<'_>,
        upstream: &Arc<Upstream>,
        peer: SocketAddr,
    ) -> (Response<ProxyBody>, Outcome)
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + Sync + 'static,
        B::Error: Into<body::BoxError>,
    {
        let max = route.policy.max_body;
        let online = upstream.connectivity().is_online();
        let declared: Option<u64> = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        if let Some(n) = declared.filter(|n| *n > max) {
            if !online {
                let msg = format!(
                    "the upstream is offline and this {n}-byte body is larger than the route's max_body ({max} bytes), so it cannot be queued"
                );
                return (
                    json_error(StatusCode::SERVICE_UNAVAILABLE, &msg, Some(upstream.name())),
                    Outcome::Bypass,
                );
            }
            return match self.forward(req.map(body::boxed), route, upstream, peer, None).await {
                Ok(resp) => (resp, Outcome::Bypass),
                Err(e) if e.not_sent() => {
                    let msg = format!("{e}; this {n}-byte body is larger than the route's max_body ({max} bytes), so it cannot be queued");
                    (
                        json_error(StatusCode::SERVICE_UNAVAILABLE, &msg, Some(upstream.name())),
                        Outcome::Bypass,
                    )
                }
                Err(e) => (upstream_failure(&e), Outcome::Bypass),
            };
        }
        let (parts, body) = req.into_parts();
        let mut body = body::boxed(body);
        // Read up to max_body; a longer body without a declared length is streamed on, unqueueable.
        let mut buf = bytes::BytesMut::new();
        let mut overflow = None;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => {
                    if let Ok(d) = f.into_data() {
                        if buf.len() + d.len() > max as usize {
                            overflow = Some(d);
                            break;
                        }
                        buf.extend_from_slice(&d);
                    }
                }
                Err(_) => {
                    return (
                        json_error(StatusCode::BAD_REQUEST, "request body could not be read", None),
                        Outcome::Bypass,
                    )
                }
            }
        }
        if let Some(next) = overflow {
            let head = stream::iter([Ok(Frame::data(buf.freeze())), Ok(Frame::data(next))]);
            let rest = http_body_util::BodyStream::new(body);
            let streamed = BodyExt::boxed(StreamBody::new(head.chain(rest)));
            let req = Request::from_parts(parts, streamed);
            return match self.forward(req, route, upstream, peer, None).await {
                Ok(resp) => (resp, Outcome::Bypass),
                Err(e) if e.not_sent() => {
                    let msg = format!(
                        "{e}; this body is larger than the route's max_body ({max} bytes), so it cannot be queued"
                    );
                    (
                        json_error(StatusCode::SERVICE_UNAVAILABLE, &msg, Some(upstream.name())),
                        Outcome::Bypass,
                    )
                }
                Err(e) => (upstream_failure(&e), Outcome::Bypass),
            };
        }
        let bytes = buf.freeze();
        let app_key = parts.headers.get("idempotency-key").cloned();
        let key = app_key
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .unwrap_or_else(new_idempotency_key);
        let mut headers = parts.headers.clone();
        if let Ok(v) = HeaderValue::from_str(&key) {
            headers.insert(HeaderName::from_static("idempotency-key"), v);
        }
        let ordering_key = route.policy.ordering_key.as_ref().map(|t| route.expand(t));
        let new_item = || OutboxRecord {
            method: parts.method.to_string(),
            uri: parts
                .uri
                .path_and_query()
                .map(|pq| pq.as_str().to_string())
                .unwrap_or_else(|| "/".into()),
            headers: headers
                .iter()
                .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
                .collect(),
            body: bytes.to_vec(),
            idempotency_key: key.clone(),
            partition: key::partition(&parts.headers),
            route: route.name.to_string(),
            ordering_key: ordering_key.clone(),
            priority: route.policy.priority,
            invalidates: route.policy.invalidates.iter().map(|t| route.expand(t)).collect(),
            ..Default::default()
        };
        let enqueue = |why: &'static str| {
            self.queue_write(
                new_item(),
                why.to_string(),
                route,
                bytes.clone(),
                upstream,
                &parts.method,
                &parts.uri,
            )
        };
        if !online {
            return enqueue("upstream offline").await;
        }
        if self.outbox.has_pending_in_line(&ordering_key) {
            // Earlier writes of this line are still queued: going first would reorder them.
            return enqueue("behind earlier queued writes").await;
        }
        let mut out = Request::new(body::full(bytes.clone()));
        *out.method_mut() = parts.method.clone();
        *out.uri_mut() = parts.uri.clone();
        *out.version_mut() = parts.version;
        *out.headers_mut() = headers.clone();
        match self.forward(out, route, upstream, peer, None).await {
            Ok(resp) => {
                if resp.status().is_success() || resp.status().is_redirection() {
                    let partition = key::partition(&parts.headers);
                    self.invalidate_after_unsafe(&parts.uri, &partition, resp.headers(), upstream);
                    self.invalidate_related(route, &partition);
                }
                (resp, Outcome::Bypass)
            }
            Err(e) if e.not_sent() => enqueue("upstream unreachable").await,
            // The outcome is unknown: replaying is only safe when the app gave its own key.
            Err(e) if app_key.is_some() => {
                let why = format!("outcome unknown ({e}); the app's key makes a replay safe");
                self.queue_write(
                    new_item(),
                    why,
                    route,
                    bytes.clone(),
                    upstream,
                    &parts.method,
                    &parts.uri,
                )
                .await
            }
            Err(e) => (upstream_failure(&e), Outcome::Bypass),
        }
    }

    /// Stores a write in the outbox (off the runtime threads: the synced group commit blocks) and answers
    /// 202 (or the route's `queued_status`), or 503 when it could not be stored.
    #[allow(clippy::too_many_arguments)]
    async fn queue_write(
        &self,
        item: OutboxRecord,
        why: String,
        route: &RouteMatch<'_>,
        bytes: bytes::Bytes,
        upstream: &Arc<Upstream>,
        method: &Method,
        uri: &Uri,
    ) -> (Response<ProxyBody>, Outcome) {
        let outbox = self.outbox.clone();
        let stored = match tokio::task::spawn_blocking(move || outbox.enqueue(item)).await {
            Ok(r) => r,
            Err(e) => Err(crate::sync::QueueError::Batch(e.to_string())),
        };
        match stored {
            Ok((id, position)) => {
                tracing::info!(%id, position, why, %method, %uri, "write queued");
                (queued_response(route, &id, position, &bytes), Outcome::Bypass)
            }
            Err(e) => {
                tracing::error!(error = %e, "queueing a write failed");
                let msg = format!("the upstream is unreachable and the write could not be queued: {e}");
                (
                    json_error(StatusCode::SERVICE_UNAVAILABLE, &msg, Some(upstream.name())),
                    Outcome::Bypass,
                )
            }
        }
    }

    /// GET paths a route's `invalidates` names, in `partition`.
    fn invalidate_related(&self, route: &RouteMatch<'_>, partition: &str) {
        for t in &route.policy.invalidates {
            self.invalidate_path(&route.expand(t), partition);
        }
    }

    fn invalidate_path(&self, path: &str, partition: &str) {
        let Ok(uri) = path.parse::<Uri>() else { return };
        let route = self.routes.route(&Method::GET, uri.path());
        let up = self.upstreams.get(route.upstream);
        let primary = key::primary_key(partition, up.name(), &uri, &route.policy.ignore_query);
        if let Err(e) = self.cache.invalidate(&primary) {
            tracing::warn!(error = %e, "invalidation failed");
        }
    }

    /// Sends a queued item to its upstream (the worker calls this), with the newest known credentials.
    pub(crate) async fn replay(&self, item: &OutboxRecord) -> Result<Response<ProxyBody>, UpstreamError> {
        let uri: Uri = item.uri.parse().unwrap_or_else(|_| Uri::from_static("/"));
        let method = Method::from_bytes(item.method.as_bytes()).unwrap_or(Method::POST);
        let route = self.routes.route(&method, uri.path());
        let upstream = self.upstreams.get(route.upstream).clone();
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
        self.forward(req, &route, &upstream, peer, None).await
    }

    /// After a replay succeeded: invalidate what it changed (RFC 9111 §4.4 plus the route's `invalidates`).
    pub(crate) fn after_replay(&self, item: &OutboxRecord) {
        self.invalidate_path(&item.uri, &item.partition);
        for p in &item.invalidates {
            self.invalidate_path(p, &item.partition);
        }
    }

    fn route_of(&self, item: &OutboxRecord) -> RouteMatch<'_> {
        let path = item.uri.split('?').next().unwrap_or("/");
        let method = Method::from_bytes(item.method.as_bytes()).unwrap_or(Method::POST);
        self.routes.route(&method, path)
    }

    /// Whether a queued item's upstream is reachable.
    pub(crate) fn upstream_online_for(&self, item: &OutboxRecord) -> bool {
        self.upstreams
            .get(self.route_of(item).upstream)
            .connectivity()
            .is_online()
    }

    /// The conflict policy of a queued item's route.
    pub(crate) fn conflict_policy(&self, item: &OutboxRecord) -> ConflictPolicy {
        self.route_of(item).policy.conflict
    }

    /// Remembers which media id each media URL in a JSON answer stands for, so that a later URL of the
    /// same id is answered from the blob already stored (`media_alias`).
    fn record_media_aliases(&self, route: &RouteMatch<'_>, rule: &crate::config::MediaAlias, json: &[u8]) {
        let Ok(objects) = crate::rewrite::JsonPath::parse(&rule.objects) else {
            return;
        };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(json) else {
            return;
        };
        let mut pairs = Vec::new();
        for obj in objects.values(&v) {
            let id = match obj.get(&rule.id) {
                Some(serde_json::Value::String(s)) if !s.is_empty() => s.clone(),
                Some(serde_json::Value::Number(n)) => n.to_string(),
                _ => continue,
            };
            let Some(url) = obj.get(&rule.url).and_then(serde_json::Value::as_str) else {
                continue;
            };
            let Some(target) = crate::rewrite::local_target(url, &route.policy.rewrite) else {
                continue;
            };
            let Ok(uri) = target.parse::<Uri>() else { continue };
            let media_route = self.routes.route(&Method::GET, uri.path());
            let up = self.upstreams.get(media_route.upstream);
            pairs.push((
                id,
                key::primary_key(key::ANONYMOUS, up.name(), &uri, &media_route.policy.ignore_query),
            ));
        }
        if !pairs.is_empty() {
            if let Err(e) = self.cache.store().put_media_aliases(&pairs) {
                tracing::warn!(error = %e, "recording media aliases failed");
            }
        }
    }

    /// The latest answer of a pinning route lists the media to keep: that set replaces the route's pins
    /// for this user (a removed item unpins), and with `prefetch` the missing ones are downloaded.
    fn update_pins(self: &Arc<Self>, route: &RouteMatch<'_>, path: &str, partition: &str, json: &[u8]) {
        let Ok(jp) = crate::rewrite::JsonPath::parse(path) else {
            return;
        };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(json) else {
            return;
        };
        let targets: Vec<String> = jp
            .strings(&v)
            .into_iter()
            .filter_map(|u| crate::rewrite::local_target(u, &route.policy.rewrite))
            .collect();
        let mut keys = std::collections::HashSet::new();
        let mut wanted = Vec::new();
        for t in targets {
            let Ok(uri) = t.parse::<Uri>() else { continue };
            let media_route = self.routes.route(&Method::GET, uri.path());
            let up = self.upstreams.get(media_route.upstream);
            // Players fetch media without credentials: media lives in the anonymous partition.
            keys.insert(key::primary_key(
                key::ANONYMOUS,
                up.name(),
                &uri,
                &media_route.policy.ignore_query,
            ));
            wanted.push(uri);
        }
        let all = {
            let mut pins = self.pins.lock().unwrap_or_else(|p| p.into_inner());
            pins.insert((route.name.to_string(), partition.to_string()), keys);
            pins.values().flatten().cloned().collect()
        };
        self.cache.evictor().set_pins(all);
        if route.policy.prefetch {
            for uri in wanted {
                self.prefetch(uri);
            }
        }
    }

    /// Downloads one media object into the store in the background (bounded concurrency; waits while
    /// its upstream is offline; skips what is already stored).
    fn prefetch(self: &Arc<Self>, uri: Uri) {
        // Waiting tasks hold only a weak reference, so a shutdown (which drops the proxy and with it the
        // store) is never held up by prefetches waiting for a slot or for the upstream.
        let weak = Arc::downgrade(self);
        let slots = self.prefetch_slots.clone();
        tokio::spawn(async move {
            let Ok(_permit) = slots.acquire().await else {
                return;
            };
            loop {
                let Some(proxy) = weak.upgrade() else { return };
                let route = proxy.routes.route(&Method::GET, uri.path());
                let upstream = proxy.upstreams.get(route.upstream).clone();
                let primary = key::primary_key(key::ANONYMOUS, upstream.name(), &uri, &route.policy.ignore_query);
                if matches!(proxy.cache.lookup(&primary, &HeaderMap::new()), Ok(Some(_)))
                    || matches!(proxy.cache.lookup_alias(&primary), Ok(Some(_)))
                {
                    return;
                }
                if !upstream.connectivity().is_online() {
                    drop(proxy);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                let head = RequestHead {
                    method: Method::GET,
                    uri: uri.clone(),
                    version: http::Version::HTTP_11,
                    headers: HeaderMap::new(),
                };
                let peer = SocketAddr::from(([127, 0, 0, 1], 0));
                let (resp, outcome) = proxy.cached(head, &route, &upstream, peer).await;
                let mut body = resp.into_body();
                while let Some(Ok(_)) = body.frame().await {}
                tracing::debug!(%uri, outcome = outcome.as_str(), "prefetched");
                return;
            }
        });
    }

    /// Logout: everything stored for this user goes.
    fn clear_partition(&self, partition: &str) {
        match self.cache.store().entry_keys_where(None, Some(partition)) {
            Ok(keys) => {
                for k in &keys {
                    if let Err(e) = self.cache.evictor().remove_entry(k, crate::evict::EvictReason::Cleared) {
                        tracing::warn!(error = %e, "clearing at logout failed");
                    }
                }
                tracing::info!(partition, entries = keys.len(), "logout: partition cleared");
            }
            Err(e) => tracing::warn!(error = %e, "clearing at logout failed"),
        }
    }

    /// The outbox.
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// GET/HEAD through the cache, per the route's strategy.
    async fn cached(
        self: &Arc<Self>,
        req: RequestHead,
        route: &RouteMatch<'_>,
        upstream: &Arc<Upstream>,
        peer: SocketAddr,
    ) -> (Response<ProxyBody>, Outcome) {
        let partition = key::partition(&req.headers);
        let primary = key::primary_key(&partition, upstream.name(), &req.uri, &route.policy.ignore_query);
        let now = SystemTime::now();
        let head_only = req.method == Method::HEAD;
        let stored = match self.cache.lookup(&primary, &req.headers) {
            Ok(None) if req.method == Method::GET => self.cache.lookup_alias(&primary).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "alias lookup failed; going to the network");
                None
            }),
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cache lookup failed; going to the network");
                None
            }
        };
        let req_cc = CacheControl::parse(&req.headers);
        let strategy = route.policy.strategy;
        let online = upstream.connectivity().is_online();
        let fresh = stored
            .as_ref()
            .map(|h| h.freshness(self.cache.role(), route.policy.ttl, &req.headers, now) == Freshness::Fresh);

        if req_cc.only_if_cached || strategy == Strategy::CacheOnly {
            // §5.2.1.7: answer from the store or 504, never the network.
            return match stored {
                Some(hit) => {
                    let outcome = if fresh == Some(true) {
                        Outcome::Hit
                    } else {
                        Outcome::Stale
                    };
                    self.serve(&hit, &req, outcome).await
                }
                None => (
                    json_error(
                        StatusCode::GATEWAY_TIMEOUT,
                        "not in the cache (only-if-cached / cache-only)",
                        Some(upstream.name()),
                    ),
                    Outcome::Miss,
                ),
            };
        }

        if let Some(hit) = stored {
            let fresh = fresh == Some(true);
            // An entry invalidated by a write (§4.4) is not answered from while the upstream is reachable.
            let answer_now = !hit.entry.invalidated
                && match strategy {
                    Strategy::CacheFirst | Strategy::StaleWhileRevalidate => true,
                    Strategy::NetworkFirst => false,
                    _ => fresh,
                };
            if answer_now || !online {
                if !fresh && online && strategy == Strategy::StaleWhileRevalidate {
                    self.refresh_in_background(req.clone(), route, upstream.clone(), hit.clone(), peer);
                }
                let outcome = match (fresh, online) {
                    (true, _) => Outcome::Hit,
                    (false, false) => Outcome::Offline,
                    (false, true) => Outcome::Stale,
                };
                return self.serve(&hit, &req, outcome).await;
            }
            // Stale (or network-first): ask the upstream, bounded by the route's network timeout because
            // the stored response can answer if it does not.
            let limit = route.policy.network_timeout;
            return match self
                .fetch(&req, route, upstream, Some(&hit), Some(limit), None, peer)
                .await
            {
                Ok(Fetched::NotModified(resp304)) => self.revalidated(hit, resp304, &req).await,
                // A 5xx storm is an outage as far as the user is concerned: keep answering with what is
                // stored (stale-if-error, RFC 5861 §4), unless the origin said must-revalidate.
                Ok(Fetched::Full(resp))
                    if matches!(resp.status().as_u16(), 500 | 502 | 503 | 504)
                        && !CacheControl::parse(hit.entry.headers.map()).must_revalidate =>
                {
                    tracing::debug!(status = %resp.status(), "upstream error on revalidation; serving the stored response");
                    self.serve(&hit, &req, Outcome::Stale).await
                }
                Ok(Fetched::Full(resp)) => (resp, Outcome::Miss),
                Err(e) => {
                    tracing::debug!(error = %e, "revalidation failed; serving the stored response");
                    self.serve(&hit, &req, Outcome::Offline).await
                }
            };
        }

        if !online {
            return (offline_miss(upstream.name()), Outcome::Miss);
        }
        if head_only {
            return match self.fetch(&req, route, upstream, None, None, None, peer).await {
                Ok(Fetched::Full(resp)) | Ok(Fetched::NotModified(resp)) => (resp, Outcome::Miss),
                Err(e) => (miss_failure(&e), Outcome::Miss),
            };
        }
        if req.headers.contains_key(header::RANGE) {
            // A player seeking on a miss must not wait for the whole file: its range is passed through
            // while one background request fills the whole object (however many ranges arrive meanwhile).
            if let FillSlot::Leader(guard) = self.cache.claim(&primary) {
                let mut full = req.clone();
                full.headers.remove(header::RANGE);
                full.headers.remove(header::IF_RANGE);
                self.fill_in_background(full, upstream.clone(), guard, peer);
            }
            return match self.fetch(&req, route, upstream, None, None, None, peer).await {
                Ok(Fetched::Full(resp)) | Ok(Fetched::NotModified(resp)) => (resp, Outcome::Miss),
                Err(e) => (miss_failure(&e), Outcome::Miss),
            };
        }
        // Collapse concurrent misses: one request fetches, the others wait for its fill.
        match self.cache.claim(&primary) {
            FillSlot::Leader(guard) => match self.fetch(&req, route, upstream, None, None, Some(guard), peer).await {
                Ok(Fetched::Full(resp)) | Ok(Fetched::NotModified(resp)) => (resp, Outcome::Miss),
                Err(e) => (miss_failure(&e), Outcome::Miss),
            },
            FillSlot::Follower(mut rx) => {
                let cfg = upstream.config();
                let wait = cfg.connect_timeout + cfg.first_byte_timeout + cfg.idle_timeout;
                let state = tokio::time::timeout(wait, rx.wait_for(|s| *s != FillState::Running))
                    .await
                    .ok()
                    .and_then(|r| r.ok().map(|s| *s));
                if state == Some(FillState::Done) {
                    if let Ok(Some(hit)) = self.cache.lookup(&primary, &req.headers) {
                        let (resp, _) = self.serve(&hit, &req, Outcome::Miss).await;
                        return (resp, Outcome::Miss);
                    }
                }
                if !upstream.connectivity().is_online() {
                    return (offline_miss(upstream.name()), Outcome::Miss);
                }
                match self.fetch(&req, route, upstream, None, None, None, peer).await {
                    Ok(Fetched::Full(resp)) | Ok(Fetched::NotModified(resp)) => (resp, Outcome::Miss),
                    Err(e) => (miss_failure(&e), Outcome::Miss),
                }
            }
        }
    }

    /// Serves a stored response; a blob that fails verification turns into a network fetch (or an offline
    /// miss). A matching `If-None-Match` from the client gets a 304.
    async fn serve(&self, hit: &Hit, req: &RequestHead, outcome: Outcome) -> (Response<ProxyBody>, Outcome) {
        if let Some(resp) = client_not_modified(hit, &req.headers) {
            return (resp, outcome);
        }
        match self
            .cache
            .respond(hit, &req.headers, req.method == Method::HEAD, SystemTime::now())
            .await
        {
            Ok(resp) => (resp, outcome),
            Err(e) => {
                tracing::warn!(error = %e, "stored response unusable");
                (offline_miss("cache"), Outcome::Miss)
            }
        }
    }

    /// Applies a 304 to the stored entry and serves it.
    async fn revalidated(
        &self,
        mut hit: Hit,
        not_modified: Response<ProxyBody>,
        req: &RequestHead,
    ) -> (Response<ProxyBody>, Outcome) {
        let mut headers = hit.entry.header_map();
        let mut fresh_headers = not_modified.headers().clone();
        strip_hop_by_hop(&mut fresh_headers);
        fresh_headers.remove(header::VIA);
        fresh_headers.remove("x-outpost-cache");
        policy::update_from_304(&mut headers, &fresh_headers);
        hit.entry.set_headers(&headers);
        let now = SystemTime::now();
        let ms = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        hit.entry.request_time_ms = ms;
        hit.entry.response_time_ms = ms;
        hit.entry.invalidated = false;
        if let Err(e) = self.cache.store().update_entry(&hit.key, &hit.entry) {
            tracing::warn!(error = %e, "updating a revalidated entry failed");
        }
        self.serve(&hit, req, Outcome::Revalidated).await
    }

    /// One network exchange for a cacheable request: adds validators when a stored response exists, and
    /// tees a storable answer into the store.
    #[allow(clippy::too_many_arguments)]
    async fn fetch(
        self: &Arc<Self>,
        req: &RequestHead,
        route: &RouteMatch<'_>,
        upstream: &Arc<Upstream>,
        stored: Option<&Hit>,
        limit: Option<Duration>,
        guard: Option<FillGuard>,
        peer: SocketAddr,
    ) -> Result<Fetched, UpstreamError> {
        let mut headers = req.headers.clone();
        let client_conditional =
            headers.contains_key(header::IF_NONE_MATCH) || headers.contains_key(header::IF_MODIFIED_SINCE);
        let we_validate = stored.is_some() && !client_conditional;
        if we_validate {
            if let Some(hit) = stored {
                for (name, value) in policy::conditional_headers(hit.entry.headers.map()) {
                    headers.insert(name, value);
                }
            }
        }
        let mut out = Request::new(body::empty());
        *out.method_mut() = req.method.clone();
        *out.uri_mut() = req.uri.clone();
        *out.version_mut() = req.version;
        *out.headers_mut() = headers;
        let request_time = SystemTime::now();
        let resp = self.forward(out, route, upstream, peer, limit).await?;
        let response_time = SystemTime::now();
        if we_validate && resp.status() == StatusCode::NOT_MODIFIED {
            return Ok(Fetched::NotModified(resp));
        }
        let role = self.cache.role();
        let storable = policy::storable(role, &req.method, &req.headers, resp.status(), resp.headers());
        match storable {
            Ok(()) => {
                let partition = key::partition(&req.headers);
                let retain = route.policy.retain.as_ref().map(|r| {
                    // Groups are per route and per user, so one user's answers never push out another's.
                    let group = format!("{}\u{1f}{partition}\u{1f}{}", route.name, route.expand(&r.group));
                    let drop = if r.drop_entry {
                        crate::store::RetainDrop::Entry
                    } else {
                        crate::store::RetainDrop::Body
                    };
                    (group, r.keep_last, drop)
                });
                let info = FillInfo {
                    primary: key::primary_key(&partition, upstream.name(), &req.uri, &route.policy.ignore_query),
                    retain,
                    req_headers: req.headers.clone(),
                    request_time,
                    response_time,
                    kind: route.policy.kind.clone(),
                    route: route.name.to_string(),
                    url: req.uri.to_string(),
                };
                Ok(Fetched::Full(self.cache.tee(info, resp, guard)))
            }
            Err(why) => {
                tracing::debug!(?why, url = %req.uri, "response not stored");
                Ok(Fetched::Full(resp))
            }
        }
    }

    /// Fetches the whole object for `req` and drains it into the store, holding `guard` until done.
    fn fill_in_background(
        self: &Arc<Self>,
        req: RequestHead,
        upstream: Arc<Upstream>,
        guard: FillGuard,
        peer: SocketAddr,
    ) {
        let proxy = self.clone();
        tokio::spawn(async move {
            let route = proxy.routes.route(&req.method, req.uri.path());
            match proxy
                .fetch(&req, &route, &upstream, None, None, Some(guard), peer)
                .await
            {
                Ok(Fetched::Full(resp)) | Ok(Fetched::NotModified(resp)) => {
                    let mut body = resp.into_body();
                    while let Some(Ok(_)) = body.frame().await {}
                }
                Err(e) => tracing::debug!(error = %e, "background fill failed"),
            }
        });
    }

    /// stale-while-revalidate: refresh a stale entry without holding up the client.
    fn refresh_in_background(
        self: &Arc<Self>,
        req: RequestHead,
        route: &RouteMatch<'_>,
        upstream: Arc<Upstream>,
        hit: Hit,
        peer: SocketAddr,
    ) {
        let proxy = self.clone();
        let route_name = route.name.to_string();
        let path = req.uri.path().to_string();
        tokio::spawn(async move {
            let route = proxy.routes.route(&req.method, &path);
            debug_assert_eq!(route.name, route_name);
            match proxy.fetch(&req, &route, &upstream, Some(&hit), None, None, peer).await {
                Ok(Fetched::NotModified(resp)) => {
                    let _ = proxy.revalidated(hit, resp, &req).await;
                }
                Ok(Fetched::Full(resp)) => {
                    // Drain so the tee completes the fill.
                    let mut body = resp.into_body();
                    while let Some(Ok(_)) = body.frame().await {}
                }
                Err(e) => tracing::debug!(error = %e, "background refresh failed"),
            }
        });
    }

    /// RFC 9111 §4.4: a successful unsafe request invalidates the target URI and the URIs in Location
    /// and Content-Location (when they are on the same upstream), in the request's partition.
    fn invalidate_after_unsafe(&self, target: &Uri, partition: &str, resp_headers: &HeaderMap, upstream: &Upstream) {
        let mut uris = vec![target.clone()];
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            let Some(v) = resp_headers.get(name).and_then(|v| v.to_str().ok()) else {
                continue;
            };
            let Ok(u) = v.parse::<Uri>() else { continue };
            let same_origin = u.authority().is_none() || u.authority() == upstream.config().url.authority();
            if same_origin && u.path().starts_with('/') {
                uris.push(u);
            }
        }
        for uri in uris {
            let route = self.routes.route(&Method::GET, uri.path());
            let up = self.upstreams.get(route.upstream);
            let primary = key::primary_key(partition, up.name(), &uri, &route.policy.ignore_query);
            match self.cache.invalidate(&primary) {
                Ok(n) if n > 0 => {
                    tracing::debug!(uri = %uri, entries = n, "invalidated after unsafe request")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "invalidation failed"),
            }
        }
    }

    /// Sends the request to the route's upstream and returns its response with proxy headers fixed.
    async fn forward(
        &self,
        req: Request<ProxyBody>,
        route: &RouteMatch<'_>,
        upstream: &Upstream,
        peer: SocketAddr,
        limit: Option<Duration>,
    ) -> Result<Response<ProxyBody>, UpstreamError> {
        let cfg = upstream.config();
        let (mut parts, body) = req.into_parts();
        let version = parts.version;
        let uri = upstream_uri(&cfg.url, &parts.uri, route.strip_prefix);
        let client_host = parts.headers.get(header::HOST).cloned();
        strip_hop_by_hop(&mut parts.headers);
        if !cfg.preserve_host {
            if let Some(authority) = cfg.url.authority() {
                if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
                    parts.headers.insert(header::HOST, v);
                }
            }
        } else if let Some(h) = client_host {
            parts.headers.insert(header::HOST, h);
        }
        append_via(&mut parts.headers, version);
        append_forwarded_for(&mut parts.headers, peer);
        parts.headers.insert(
            HeaderName::from_static("x-forwarded-proto"),
            HeaderValue::from_static("http"),
        );
        parts.uri = uri;
        // The upstream connection picks its own version (HTTP/2 by ALPN or HTTP/1.1).
        parts.version = http::Version::HTTP_11;
        let req = Request::from_parts(parts, body);
        let mut resp = match limit {
            Some(l) => upstream.send_within(req, l).await?,
            None => upstream.send(req).await?,
        };
        strip_hop_by_hop(resp.headers_mut());
        let version = resp.version();
        append_via(resp.headers_mut(), version);
        Ok(resp)
    }
}

fn head_of(parts: http::request::Parts) -> RequestHead {
    RequestHead {
        method: parts.method,
        uri: parts.uri,
        version: parts.version,
        headers: parts.headers,
    }
}

/// §13.1.2 weak comparison of the client's If-None-Match against the stored ETag (200s only).
fn client_not_modified(hit: &Hit, req_headers: &HeaderMap) -> Option<Response<ProxyBody>> {
    if hit.entry.status != 200 {
        return None;
    }
    let inm = req_headers.get(header::IF_NONE_MATCH)?.to_str().ok()?;
    let stored = hit.entry.headers.map();
    let etag = stored.get(header::ETAG)?.to_str().ok()?;
    let weak = |t: &str| t.trim().trim_start_matches("W/").to_string();
    let matches = inm.trim() == "*" || inm.split(',').any(|t| weak(t) == weak(etag));
    if !matches {
        return None;
    }
    let mut resp = Response::new(body::empty());
    *resp.status_mut() = StatusCode::NOT_MODIFIED;
    for name in [
        header::ETAG,
        header::CACHE_CONTROL,
        header::DATE,
        header::EXPIRES,
        header::VARY,
        header::CONTENT_LOCATION,
        header::LAST_MODIFIED,
    ] {
        for v in stored.get_all(&name) {
            resp.headers_mut().append(name.clone(), v.clone());
        }
    }
    Some(resp)
}

/// A fresh random Idempotency-Key (128 bits, hex).
fn new_idempotency_key() -> String {
    let v: u128 = rand::random();
    format!("outpost-{v:032x}")
}

/// The answer to a queued write: 202 with the queue position, or the route's synthetic answer.
fn queued_response(route: &RouteMatch<'_>, id: &str, position: usize, body_bytes: &[u8]) -> Response<ProxyBody> {
    let mut resp = match route.policy.queued_status {
        Some(status) => {
            let template = route.policy.queued_body.as_deref().unwrap_or("{body}");
            let text = template
                .replace("{body}", &String::from_utf8_lossy(body_bytes))
                .replace("{id}", id);
            let mut r = Response::new(body::full(text));
            *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::ACCEPTED);
            r
        }
        None => {
            let v = json!({"queued": true, "id": id, "position": position});
            let mut r = Response::new(body::full(v.to_string()));
            *r.status_mut() = StatusCode::ACCEPTED;
            r
        }
    };
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Ok(v) = HeaderValue::from_str(id) {
        resp.headers_mut()
            .insert(HeaderName::from_static("x-outpost-queued"), v);
    }
    resp
}

/// A miss while the upstream is unreachable: an immediate, explicit 503.
fn offline_miss(upstream: &str) -> Response<ProxyBody> {
    let mut resp = json_error(StatusCode::SERVICE_UNAVAILABLE, "offline", Some(upstream));
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static(OFFLINE_RETRY_AFTER));
    resp
}

/// A miss whose fetch failed: unreachable → offline 503, otherwise the usual 502.
fn miss_failure(e: &UpstreamError) -> Response<ProxyBody> {
    match e {
        UpstreamError::Connect { .. } | UpstreamError::Timeout { .. } => {
            let mut resp = offline_miss(e.upstream());
            let v = json!({"error": "offline", "upstream": e.upstream(), "detail": e.to_string()});
            *resp.body_mut() = body::full(v.to_string());
            resp
        }
        UpstreamError::Broken { .. } => upstream_failure(e),
    }
}

/// Requests we refuse before routing (RFC 9112 §3.2: origin-form is what a reverse proxy serves).
fn check_request<B>(req: &Request<B>) -> Result<(), &'static str> {
    if req.method() == Method::CONNECT {
        return Err("CONNECT is not supported: Outpost is a reverse proxy");
    }
    if !req.uri().path().starts_with('/') {
        return Err("request target must be a path starting with '/'");
    }
    if req.uri().path().split('/').any(|seg| seg == "..") {
        return Err("request path must not contain '..' segments");
    }
    Ok(())
}

/// upstream base URL + (client path minus strip_prefix) + client query.
fn upstream_uri(base: &Uri, client: &Uri, strip_prefix: Option<&str>) -> Uri {
    let mut path = client.path();
    if let Some(prefix) = strip_prefix {
        if let Some(rest) = path.strip_prefix(prefix.trim_end_matches('/')) {
            path = rest;
        }
    }
    let base_path = base.path().trim_end_matches('/');
    let mut pq = String::with_capacity(base_path.len() + path.len() + 1 + client.query().map_or(0, str::len));
    pq.push_str(base_path);
    if !path.starts_with('/') {
        pq.push('/');
    }
    pq.push_str(path);
    if let Some(q) = client.query() {
        pq.push('?');
        pq.push_str(q);
    }
    let mut parts = http::uri::Parts::default();
    parts.scheme = base.scheme().cloned();
    parts.authority = base.authority().cloned();
    parts.path_and_query = pq.parse().ok();
    Uri::from_parts(parts).unwrap_or_else(|_| base.clone())
}

/// Removes RFC 9110 §7.6.1 connection-specific fields, including those the `Connection` field names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

fn append_via(headers: &mut HeaderMap, version: http::Version) {
    let proto = match version {
        http::Version::HTTP_09 => "0.9",
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    };
    let ours = format!("{proto} {VIA_NAME}");
    let value = match headers.get(header::VIA).and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {ours}"),
        None => ours,
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(header::VIA, v);
    }
}

fn append_forwarded_for(headers: &mut HeaderMap, peer: SocketAddr) {
    let name = HeaderName::from_static("x-forwarded-for");
    let ip = peer.ip().to_string();
    let value = match headers.get(&name).and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {ip}"),
        None => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(name, v);
    }
}

/// The answer to a failed upstream exchange: 504 when it accepted and went silent, else 502.
fn upstream_failure(e: &UpstreamError) -> Response<ProxyBody> {
    let status = match e {
        UpstreamError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::BAD_GATEWAY,
    };
    json_error(status, &e.to_string(), Some(e.upstream()))
}

/// A small JSON error answer: `{"error": ..., "upstream": ...}`.
pub fn json_error(status: StatusCode, error: &str, upstream: Option<&str>) -> Response<ProxyBody> {
    let mut v = json!({ "error": error });
    if let Some(u) = upstream {
        v["upstream"] = json!(u);
    }
    let mut resp = Response::new(body::full(v.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn log_line(
    method: &Method,
    path: &str,
    route: &str,
    upstream: &str,
    status: StatusCode,
    outcome: Outcome,
    started: Instant,
) {
    tracing::info!(
        target: "outpost::request",
        %method,
        path,
        route,
        upstream,
        status = status.as_u16(),
        cache = outcome.as_str(),
        ms = started.elapsed().as_secs_f64() * 1000.0,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_fields_are_removed_including_connection_named_ones() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("close, X-Secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn upstream_uri_joins_base_path_strips_prefix_and_keeps_query() {
        let base: Uri = "https://media.example.com/bucket".parse().unwrap();
        let client: Uri = "/media/s3/r/1.mp3?X-Amz-Signature=abc".parse().unwrap();
        assert_eq!(
            upstream_uri(&base, &client, Some("/media/s3/")).to_string(),
            "https://media.example.com/bucket/r/1.mp3?X-Amz-Signature=abc"
        );
        let base: Uri = "http://127.0.0.1:9/".parse().unwrap();
        let client: Uri = "/api/v1/threads".parse().unwrap();
        assert_eq!(
            upstream_uri(&base, &client, None).to_string(),
            "http://127.0.0.1:9/api/v1/threads"
        );
    }

    #[test]
    fn via_is_appended() {
        let mut h = HeaderMap::new();
        h.insert(header::VIA, HeaderValue::from_static("1.0 fred"));
        append_via(&mut h, http::Version::HTTP_11);
        assert_eq!(h[header::VIA], "1.0 fred, 1.1 outpost");
    }
}
