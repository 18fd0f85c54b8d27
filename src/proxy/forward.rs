//! Forwarding: a request and its route become an upstream exchange with the proxy's header rules
//! (hop-by-hop fields removed both ways, `Via`, `X-Forwarded-For`/`-Proto`, Host) applied.
//!
//! The [`Forwarder`] is what everything that talks to upstreams holds: the request pipeline, the cache
//! flow, and the replay adapter (which needs nothing else of the proxy).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, Uri};

use crate::body::ProxyBody;
use crate::cache::key;
use crate::headers::strip_hop_by_hop;
use crate::routes::{RouteMatch, RouteTable};
use crate::upstream::{Upstream, UpstreamError, Upstreams};

/// `Via` pseudonym (RFC 9110 §7.6.3).
const VIA_NAME: &str = "outpost";

/// Routes plus upstream clients: where a request goes and how it is sent.
pub struct Forwarder {
    routes: RouteTable,
    upstreams: Arc<Upstreams>,
}

impl Forwarder {
    /// A forwarder over a route table and its upstreams.
    pub fn new(routes: RouteTable, upstreams: Arc<Upstreams>) -> Forwarder {
        Forwarder { routes, upstreams }
    }

    /// The route for a request, and its upstream.
    pub fn route(&self, method: &Method, path: &str) -> (RouteMatch<'_>, &Arc<Upstream>) {
        let route = self.routes.route(method, path);
        let upstream = self.upstreams.get(route.upstream);
        (route, upstream)
    }

    /// The primary cache key a GET of `uri` has in `partition` (media, invalidation targets).
    pub fn key_of(&self, partition: &str, uri: &Uri) -> Vec<u8> {
        let (route, upstream) = self.route(&Method::GET, uri.path());
        key::primary_key(partition, upstream.name(), uri, &route.policy.ignore_query)
    }

    /// Sends the request to the route's upstream and returns its response with proxy headers fixed.
    pub async fn forward(
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

/// upstream base URL + (client path minus strip_prefix) + client query.
pub(crate) fn upstream_uri(base: &Uri, client: &Uri, strip_prefix: Option<&str>) -> Uri {
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

#[cfg(test)]
mod tests {
    use super::*;

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
