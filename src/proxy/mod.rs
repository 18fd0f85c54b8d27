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
//! worker's adapter), [`invalidate`] (what a write makes stale), [`prefetch`], [`error`].

pub mod error;
pub mod flow;
pub mod forward;
mod invalidate;
mod prefetch;
pub mod replay;
mod write;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

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
use crate::evict::{EvictReason, Evictor};
use crate::media::{MediaHooks, MediaRules};
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
            prefetch: prefetch::Prefetcher::new(shutdown),
            forwarder,
            flow,
            outbox,
            store,
            evictor,
            metrics,
        }
    }

    /// The outbox.
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
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
        if let Err(e) = check_request(&req) {
            let resp = e.into_response();
            log_line(&method, &path, "-", "-", resp.status(), Outcome::Bypass, started);
            return resp;
        }
        let (route, upstream) = self.forwarder.route(&method, &path);
        let upstream = upstream.clone();
        let read = method == Method::GET || method == Method::HEAD;
        let cacheable = read && route.policy.strategy != crate::routes::Strategy::NetworkOnly;
        let authorization = req.headers().get(header::AUTHORIZATION).cloned();
        let media = media_rules(&route);
        let partition = if route.policy.pins.is_some() || route.policy.logout {
            key::partition(req.headers())
        } else {
            String::new()
        };
        let local_base = (!route.policy.rewrite.is_empty())
            .then(|| {
                req.headers()
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(|h| format!("http://{h}"))
            })
            .flatten();
        let answer = if read {
            let (parts, _body) = req.into_parts();
            let head = RequestHead {
                method: parts.method,
                uri: parts.uri,
                version: parts.version,
                headers: parts.headers,
            };
            self.flow.run(head, &route, &upstream, peer).await
        } else if policy::is_unsafe(&method) && route.policy.queue {
            self.write(req, &route, &upstream, peer).await
        } else {
            self.pass(req, &route, &upstream, peer).await
        };
        let (mut resp, outcome) = match answer {
            Ok(a) => a,
            Err(e) => {
                let outcome = if cacheable { Outcome::Miss } else { Outcome::Bypass };
                tracing::debug!(fault = ?e.fault(), error = %e, "request failed");
                (e.into_response(), outcome)
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
        if media.any() && method == Method::GET && resp.status() == StatusCode::OK {
            let fwd = &self.forwarder;
            // Players fetch media without credentials: media lives in the anonymous partition.
            let key_of = |uri: &Uri| fwd.key_of(key::ANONYMOUS, uri);
            let (hooked, prefetch) = self
                .media
                .on_answer(
                    resp,
                    &media,
                    outcome.from_network(),
                    &partition,
                    local_base.as_deref(),
                    &key_of,
                )
                .await;
            resp = hooked;
            for uri in prefetch {
                self.prefetch.spawn(&self.flow, &self.forwarder, uri);
            }
        }
        if route.policy.logout && resp.status().is_success() && partition != key::ANONYMOUS {
            self.clear_partition(&partition);
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
        let target = policy::is_unsafe(req.method()).then(|| (req.uri().clone(), key::partition(req.headers())));
        let resp = self
            .forwarder
            .forward(req.map(body::boxed), route, upstream, peer, None)
            .await?;
        if let Some((uri, partition)) = target {
            if resp.status().is_success() || resp.status().is_redirection() {
                let cache = self.flow.cache();
                invalidate::after_unsafe(&self.forwarder, cache, &uri, &partition, resp.headers(), upstream);
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
    if req.uri().path().split('/').any(|seg| seg == "..") {
        return Err(ProxyError::BadRequest("request path must not contain '..' segments"));
    }
    Ok(())
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
