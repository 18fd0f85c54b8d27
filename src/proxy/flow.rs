//! The cache flow: looks up what is stored, asks [`crate::cache::decide`] for a [`Plan`], and carries
//! the plan out (serve, refresh behind, revalidate within a bound, fill with collapsing, pass a range
//! through while filling behind, offline and only-if-cached answers). This is the one executor of
//! plans; it lives with the proxy because carrying a plan out needs the [`Forwarder`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;

use super::error::ProxyError;
use super::forward::Forwarder;
use crate::body::{self, ProxyBody};
use crate::cache::policy::{self, CacheControl};
use crate::cache::{
    decide, key, Cache, Directives, FillGuard, FillInfo, FillSlot, FillState, Hit, Outcome, Plan, Stored,
};
use crate::clock;
use crate::routes::RouteMatch;
use crate::server::ShutdownSignal;
use crate::upstream::{Upstream, UpstreamError};

/// The parts of a request needed again after its body is gone (revalidation, background refresh).
#[derive(Debug, Clone)]
pub struct RequestHead {
    /// GET or HEAD.
    pub method: Method,
    /// Target.
    pub uri: Uri,
    /// Client's HTTP version.
    pub version: http::Version,
    /// Client's fields.
    pub headers: HeaderMap,
}

impl RequestHead {
    /// The head of a read, its body dropped.
    pub fn of<B>(req: http::Request<B>) -> RequestHead {
        let (parts, _body) = req.into_parts();
        RequestHead {
            method: parts.method,
            uri: parts.uri,
            version: parts.version,
            headers: parts.headers,
        }
    }

    /// A plain GET with no fields (prefetch).
    pub fn get(uri: Uri) -> RequestHead {
        RequestHead {
            method: Method::GET,
            uri,
            version: http::Version::HTTP_11,
            headers: HeaderMap::new(),
        }
    }

    /// The bodiless request to send upstream, with `headers`.
    fn request(&self, headers: HeaderMap) -> Request<ProxyBody> {
        let mut out = Request::new(body::empty());
        *out.method_mut() = self.method.clone();
        *out.uri_mut() = self.uri.clone();
        *out.version_mut() = self.version;
        *out.headers_mut() = headers;
        out
    }
}

/// A network answer for a cacheable request.
enum Fetched {
    /// The upstream confirmed the stored response.
    NotModified(Response<ProxyBody>),
    /// A full answer (already being stored if storable).
    Full(Response<ProxyBody>),
}

type Answer = Result<(Response<ProxyBody>, Outcome), ProxyError>;

/// The cache flow.
pub struct Flow {
    forwarder: Arc<Forwarder>,
    cache: Arc<Cache>,
    shutdown: ShutdownSignal,
}

impl Flow {
    /// A flow over `cache`, fetching through `forwarder`; background work stops on `shutdown`.
    pub fn new(forwarder: Arc<Forwarder>, cache: Arc<Cache>, shutdown: ShutdownSignal) -> Flow {
        Flow {
            forwarder,
            cache,
            shutdown,
        }
    }

    /// The cache.
    pub fn cache(&self) -> &Arc<Cache> {
        &self.cache
    }

    /// What is stored for a request (following `Vary`, then media aliases), if anything.
    pub fn stored(&self, req: &RequestHead, primary: &[u8]) -> Option<Hit> {
        match self.cache.lookup(primary, &req.headers) {
            Ok(None) if req.method == Method::GET => self.cache.lookup_alias(primary).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "alias lookup failed; going to the network");
                None
            }),
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cache lookup failed; going to the network");
                None
            }
        }
    }

    /// Who a request belongs to on this route (everyone alike on a route with `partition = "none"`).
    pub fn partition(&self, headers: &http::HeaderMap, route: &RouteMatch<'_>) -> String {
        if route.policy.per_user {
            self.cache.partition(headers)
        } else {
            key::ANONYMOUS.to_string()
        }
    }

    /// GET/HEAD through the cache, per the route's strategy.
    pub async fn run(
        self: &Arc<Self>,
        req: RequestHead,
        route: &RouteMatch<'_>,
        upstream: &Arc<Upstream>,
        peer: SocketAddr,
    ) -> Answer {
        let partition = self.partition(&req.headers, route);
        let primary = key::primary_key(&partition, upstream.name(), &req.uri, &route.policy.ignore_query);
        let now = clock::now();
        // Network-only routes never use the store: no lookup.
        let hit = if route.policy.strategy == crate::routes::Strategy::NetworkOnly {
            None
        } else {
            self.stored(&req, &primary)
        };
        let stored = hit.as_ref().map_or(Stored::Nothing, |h| {
            h.state(self.cache.role(), route.policy.ttl, &req.headers, now)
        });
        let directives = Directives {
            only_if_cached: CacheControl::parse(&req.headers).only_if_cached,
            head: req.method == Method::HEAD,
            range: req.headers.contains_key(header::RANGE),
            stale_forbidden: hit
                .as_ref()
                .is_some_and(|h| self.cache.stale_forbidden(h, route.policy.offline_stale)),
        };
        let online = upstream.connectivity().is_online();
        let plan = decide(stored, route.policy.strategy, online, directives);
        // Slow paths are boxed, so this future (part of every request's) stays small.
        match (plan, hit) {
            // The common hit is answered without waiting: nothing of it is kept in this future.
            (Plan::Serve(outcome), Some(hit)) => {
                let head = req.method == Method::HEAD;
                match self.cache.respond_now(&hit, &req.headers, head, now) {
                    Some(Ok(resp)) => Ok((resp, outcome)),
                    // A body to check first, or one that failed: the full path (it falls back too).
                    _ => Box::pin(self.serve(hit, &req, outcome, route, upstream, peer)).await,
                }
            }
            (Plan::ServeStaleAndRefresh, Some(hit)) => {
                self.refresh_in_background(req.clone(), upstream.clone(), hit.clone(), peer);
                Box::pin(self.serve(hit, &req, Outcome::Stale, route, upstream, peer)).await
            }
            (Plan::Revalidate, Some(hit)) => Box::pin(self.revalidate(hit, req, route, upstream, peer)).await,
            (Plan::NotCached, _) => Err(ProxyError::NotCached {
                upstream: upstream.name().to_string(),
            }),
            (Plan::StaleForbidden, _) => Err(ProxyError::StaleForbidden {
                upstream: upstream.name().to_string(),
                detail: None,
            }),
            (Plan::OfflineMiss, _) => Err(ProxyError::Offline {
                upstream: upstream.name().to_string(),
                detail: None,
            }),
            (Plan::Forward, _) => Box::pin(self.pass(&req, route, upstream, peer)).await,
            (Plan::Bypass, _) => {
                let out = req.request(req.headers.clone());
                let resp = Box::pin(self.forwarder.forward(out, route, upstream, peer, None)).await?;
                Ok((resp, Outcome::Bypass))
            }
            (Plan::FillBehindRange, _) => {
                // A player seeking on a miss must not wait for the whole file: its range is passed
                // through while one background request fills the whole object (however many ranges
                // arrive meanwhile).
                if let FillSlot::Leader(guard) = self.cache.claim(&primary) {
                    let mut full = req.clone();
                    full.headers.remove(header::RANGE);
                    full.headers.remove(header::IF_RANGE);
                    self.fill_in_background(full, upstream.clone(), guard, peer);
                }
                Box::pin(self.pass(&req, route, upstream, peer)).await
            }
            // Plans that serve from the store always come with a stored response; anything else fills.
            (Plan::Fill, _) | (Plan::Serve(_) | Plan::ServeStaleAndRefresh | Plan::Revalidate, None) => {
                Box::pin(self.fill(&req, &primary, route, upstream, peer)).await
            }
        }
    }

    /// Fetch without a stored response to fall back on; the answer is stored when storable.
    async fn pass(
        &self,
        req: &RequestHead,
        route: &RouteMatch<'_>,
        upstream: &Arc<Upstream>,
        peer: SocketAddr,
    ) -> Answer {
        match self.fetch(req, route, upstream, None, None, None, peer).await {
            Ok(Fetched::Full(resp)) | Ok(Fetched::NotModified(resp)) => Ok((resp, Outcome::Miss)),
            Err(e) => Err(ProxyError::miss(e)),
        }
    }

    /// Collapse concurrent misses: one request fetches, the others wait for its fill.
    async fn fill(
        &self,
        req: &RequestHead,
        primary: &[u8],
        route: &RouteMatch<'_>,
        upstream: &Arc<Upstream>,
        peer: SocketAddr,
    ) -> Answer {
        match self.cache.claim(primary) {
            FillSlot::Leader(guard) => match self.fetch(req, route, upstream, None, None, Some(guard), peer).await {
                Ok(Fetched::Full(resp)) | Ok(Fetched::NotModified(resp)) => Ok((resp, Outcome::Miss)),
                Err(e) => Err(ProxyError::miss(e)),
            },
            FillSlot::Follower(mut rx) => {
                let cfg = upstream.config();
                let wait = cfg.connect_timeout + cfg.first_byte_timeout + cfg.idle_timeout;
                let state = tokio::time::timeout(wait, rx.wait_for(|s| *s != FillState::Running))
                    .await
                    .ok()
                    .and_then(|r| r.ok().map(|s| *s));
                if state == Some(FillState::Done) {
                    if let Ok(Some(hit)) = self.cache.lookup(primary, &req.headers) {
                        if let Ok(resp) = self.respond(&hit, req).await {
                            return Ok((resp, Outcome::Miss));
                        }
                    }
                }
                if !upstream.connectivity().is_online() {
                    return Err(ProxyError::Offline {
                        upstream: upstream.name().to_string(),
                        detail: None,
                    });
                }
                self.pass(req, route, upstream, peer).await
            }
        }
    }

    async fn respond(&self, hit: &Hit, req: &RequestHead) -> Result<Response<ProxyBody>, crate::cache::CacheError> {
        self.cache
            .respond(hit, &req.headers, req.method == Method::HEAD, clock::now())
            .await
    }

    /// Serves a stored response. A body that fails verification (or cannot be read) is gone from the
    /// store by then: the request turns into a network fetch, or an offline miss when the upstream is
    /// unreachable.
    async fn serve(
        &self,
        hit: Hit,
        req: &RequestHead,
        outcome: Outcome,
        route: &RouteMatch<'_>,
        upstream: &Arc<Upstream>,
        peer: SocketAddr,
    ) -> Answer {
        match self.respond(&hit, req).await {
            Ok(resp) => Ok((resp, outcome)),
            Err(e) => {
                tracing::warn!(error = %e, "stored response unusable; going to the network");
                if !upstream.connectivity().is_online() {
                    return Err(ProxyError::Offline {
                        upstream: upstream.name().to_string(),
                        detail: Some(format!("the stored copy is unusable ({e})")),
                    });
                }
                let primary = key::primary_key(
                    &self.partition(&req.headers, route),
                    upstream.name(),
                    &req.uri,
                    &route.policy.ignore_query,
                );
                Box::pin(self.fill(req, &primary, route, upstream, peer)).await
            }
        }
    }

    /// Stale (or network-first): ask the upstream, bounded by the route's network timeout because the
    /// stored response can answer if it does not.
    async fn revalidate(
        &self,
        hit: Hit,
        req: RequestHead,
        route: &RouteMatch<'_>,
        upstream: &Arc<Upstream>,
        peer: SocketAddr,
    ) -> Answer {
        let limit = route.policy.network_timeout;
        let forbidden = self.cache.stale_forbidden(&hit, route.policy.offline_stale);
        match self
            .fetch(&req, route, upstream, Some(&hit), Some(limit), None, peer)
            .await
        {
            Ok(Fetched::NotModified(resp304)) => {
                let hit = self.cache.refreshed(hit, resp304.headers());
                self.serve(hit, &req, Outcome::Revalidated, route, upstream, peer).await
            }
            // A 5xx storm is an outage as far as the user is concerned: keep answering with what is
            // stored (stale-if-error, RFC 5861 §4), unless the origin said must-revalidate or the route
            // keeps to the RFC for an answer that forbids it.
            Ok(Fetched::Full(resp))
                if matches!(resp.status().as_u16(), 500 | 502 | 503 | 504) && !hit.must_revalidate() && !forbidden =>
            {
                tracing::debug!(status = %resp.status(), "upstream error on revalidation; serving the stored response");
                self.serve(hit, &req, Outcome::Stale, route, upstream, peer).await
            }
            Ok(Fetched::Full(resp)) => Ok((resp, Outcome::Miss)),
            Err(e) if forbidden => Err(ProxyError::StaleForbidden {
                upstream: upstream.name().to_string(),
                detail: Some(e.to_string()),
            }),
            Err(e) => {
                tracing::debug!(error = %e, "revalidation failed; serving the stored response");
                self.serve(hit, &req, Outcome::Offline, route, upstream, peer).await
            }
        }
    }

    /// One network exchange for a cacheable request: adds validators when a stored response exists, and
    /// tees a storable answer into the store.
    #[allow(clippy::too_many_arguments)]
    async fn fetch(
        &self,
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
        if let (Some(hit), true) = (stored, we_validate) {
            for (name, value) in policy::conditional_headers(hit.entry.headers.map()) {
                headers.insert(name, value);
            }
        }
        let out = req.request(headers);
        let request_time = clock::now();
        let resp = self.forwarder.forward(out, route, upstream, peer, limit).await?;
        let response_time = clock::now();
        if we_validate && resp.status() == StatusCode::NOT_MODIFIED {
            return Ok(Fetched::NotModified(resp));
        }
        let role = self.cache.role();
        if let Err(why) = policy::storable(role, &req.method, &req.headers, resp.status(), resp.headers()) {
            tracing::debug!(?why, url = %req.uri, "response not stored");
            return Ok(Fetched::Full(resp));
        }
        let partition = self.partition(&req.headers, route);
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

    /// Fetches the whole object for `req` and drains it into the store, holding `guard` until done.
    fn fill_in_background(
        self: &Arc<Self>,
        req: RequestHead,
        upstream: Arc<Upstream>,
        guard: FillGuard,
        peer: SocketAddr,
    ) {
        let flow = self.clone();
        tokio::spawn(async move {
            let work = async {
                let (route, _) = flow.forwarder.route(&req.method, req.uri.path());
                match flow.fetch(&req, &route, &upstream, None, None, Some(guard), peer).await {
                    Ok(Fetched::Full(resp)) | Ok(Fetched::NotModified(resp)) => drain(resp).await,
                    Err(e) => tracing::debug!(error = %e, "background fill failed"),
                }
            };
            tokio::select! {
                _ = work => {}
                _ = flow.shutdown.triggered() => {}
            }
        });
    }

    /// stale-while-revalidate: refresh a stale entry without holding up the client.
    fn refresh_in_background(self: &Arc<Self>, req: RequestHead, upstream: Arc<Upstream>, hit: Hit, peer: SocketAddr) {
        let flow = self.clone();
        tokio::spawn(async move {
            let work = async {
                let (route, _) = flow.forwarder.route(&req.method, req.uri.path());
                match flow.fetch(&req, &route, &upstream, Some(&hit), None, None, peer).await {
                    Ok(Fetched::NotModified(resp)) => {
                        flow.cache.refreshed(hit, resp.headers());
                    }
                    // Drain so the tee completes the fill.
                    Ok(Fetched::Full(resp)) => drain(resp).await,
                    Err(e) => tracing::debug!(error = %e, "background refresh failed"),
                }
            };
            tokio::select! {
                _ = work => {}
                _ = flow.shutdown.triggered() => {}
            }
        });
    }
}

/// Reads a body to its end (so a tee completes its fill).
pub(crate) async fn drain(resp: Response<ProxyBody>) {
    let mut body = resp.into_body();
    while let Some(Ok(_)) = body.frame().await {}
}
