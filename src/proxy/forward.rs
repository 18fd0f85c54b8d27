//! Forwarding: a request and its route become an upstream exchange with the proxy's header rules
//! (hop-by-hop fields removed both ways, `Via`, `X-Forwarded-For`/`-Proto`, Host) applied.
//!
//! Answers keep the client on Outpost and on its own protocol: the response carries the HTTP version the
//! client spoke (an HTTP/1.0 origin must not downgrade an HTTP/1.1 app's keep-alive connection; `Via`
//! still names the version received from the upstream, RFC 9110 §7.6.3), and `Location`,
//! `Content-Location` and `Link` URLs that name a configured upstream are rewritten to the Outpost URL
//! that serves them (like nginx's `proxy_redirect default`), so a redirect never leads the app around
//! the proxy.
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
        let (req, client) = outbound(req, route, upstream, peer);
        let mut resp = match limit {
            Some(l) => upstream.send_within(req, l).await?,
            None => upstream.send(req).await?,
        };
        strip_hop_by_hop(resp.headers_mut());
        self.inbound(&mut resp, route.upstream, &client);
        Ok(resp)
    }

    /// Sends a protocol-switch request (`Connection: upgrade` + `Upgrade`) over HTTP/1.1 with the same
    /// header rules, keeping the two fields the switch needs on the way out and, on a `101`, on the way
    /// back. The caller joins the two upgraded connections.
    pub async fn forward_upgrade(
        &self,
        req: Request<ProxyBody>,
        route: &RouteMatch<'_>,
        upstream: &Upstream,
        peer: SocketAddr,
    ) -> Result<Response<ProxyBody>, UpstreamError> {
        let protocol = req.headers().get(header::UPGRADE).cloned();
        let (mut req, client) = outbound(req, route, upstream, peer);
        if let Some(p) = protocol {
            req.headers_mut().insert(header::UPGRADE, p);
            req.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        let mut resp = upstream.send_upgrade(req).await?;
        let switched = resp.headers().get(header::UPGRADE).cloned();
        strip_hop_by_hop(resp.headers_mut());
        if let (http::StatusCode::SWITCHING_PROTOCOLS, Some(p)) = (resp.status(), switched) {
            resp.headers_mut().insert(header::UPGRADE, p);
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        self.inbound(&mut resp, route.upstream, &client);
        Ok(resp)
    }

    /// Response rules: `Via` with the version received, the client's own version, URLs kept on Outpost.
    fn inbound(&self, resp: &mut Response<ProxyBody>, upstream: usize, client: &ClientSide) {
        let received = resp.version();
        append_via(resp.headers_mut(), received);
        *resp.version_mut() = client.version;
        let base = client
            .host
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .map(|h| format!("http://{h}"));
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            let Some(v) = resp.headers().get(&name).and_then(|v| v.to_str().ok()) else {
                continue;
            };
            if let Some(local) = self.local_url(v, upstream, base.as_deref()) {
                if let Ok(v) = HeaderValue::from_str(&local) {
                    resp.headers_mut().insert(name, v);
                }
            }
        }
        let links: Vec<HeaderValue> = resp
            .headers()
            .get_all(header::LINK)
            .iter()
            .map(|v| match v.to_str() {
                Ok(s) => rewrite_link(s, |u| self.local_url(u, upstream, base.as_deref()))
                    .and_then(|s| HeaderValue::from_str(&s).ok())
                    .unwrap_or_else(|| v.clone()),
                Err(_) => v.clone(),
            })
            .collect();
        if !links.is_empty() {
            resp.headers_mut().remove(header::LINK);
            for v in links {
                resp.headers_mut().append(header::LINK, v);
            }
        }
    }

    /// The Outpost URL for a URL an upstream sent (`answered_by` for path-absolute ones), when a route
    /// serves it; `base` is `http://<the client's Host>` (without it the answer is a path).
    pub fn local_url(&self, url: &str, answered_by: usize, base: Option<&str>) -> Option<String> {
        // (upstream, path below its base URL) for every upstream the URL may belong to, the longest base
        // path first (an API at `/` and a media bucket at `/bucket` on one host).
        let mut candidates: Vec<(usize, String, usize)> = Vec::new();
        if url.starts_with('/') && !url.starts_with("//") {
            let base_path = self
                .upstreams
                .get(answered_by)
                .config()
                .url
                .path()
                .trim_end_matches('/');
            candidates.push((answered_by, url.strip_prefix(base_path)?.to_string(), 0));
        } else {
            let target: Uri = url.parse().ok()?;
            let (scheme, host) = (target.scheme_str()?, target.host()?);
            let port = target.port_u16().or_else(|| default_port(scheme))?;
            for (ix, up) in self.upstreams.iter().enumerate() {
                let u = &up.config().url;
                let same = u.scheme_str() == Some(scheme)
                    && u.host().is_some_and(|h| h.eq_ignore_ascii_case(host))
                    && u.port_u16().or_else(|| default_port(scheme)) == Some(port);
                let base_path = u.path().trim_end_matches('/');
                let Some(rest) = target.path().strip_prefix(base_path).filter(|_| same) else {
                    continue;
                };
                let rest = match target.query() {
                    Some(q) => format!("{rest}?{q}"),
                    None => rest.to_string(),
                };
                candidates.push((ix, rest, base_path.len()));
            }
            candidates.sort_by_key(|c| std::cmp::Reverse(c.2));
        }
        candidates.into_iter().find_map(|(ix, rest, _)| {
            let rest = match rest.chars().next() {
                None => "/".to_string(),
                Some('/') => rest,
                Some('?') => format!("/{rest}"),
                Some(_) => return None,
            };
            let local = self.routes.local_path(ix, &rest)?;
            Some(format!("{}{local}", base.unwrap_or("")))
        })
    }
}

/// What the response rules need to know of the client's request.
struct ClientSide {
    version: http::Version,
    host: Option<HeaderValue>,
}

/// Request rules: target on the upstream, hop-by-hop fields out, Host, `Via`, `X-Forwarded-*`.
fn outbound(
    req: Request<ProxyBody>,
    route: &RouteMatch<'_>,
    upstream: &Upstream,
    peer: SocketAddr,
) -> (Request<ProxyBody>, ClientSide) {
    let cfg = upstream.config();
    let (mut parts, body) = req.into_parts();
    let client = ClientSide {
        version: parts.version,
        host: parts.headers.get(header::HOST).cloned(),
    };
    parts.uri = upstream_uri(&cfg.url, &parts.uri, route.strip_prefix);
    strip_hop_by_hop(&mut parts.headers);
    // Fields that make some backends (and frameworks) answer for another host or path: the cache key does
    // not see them, so a client could store a different answer under this URL. Outpost is the only proxy
    // in front of the upstream, so nothing legitimate sends them.
    for name in [
        "forwarded",
        "x-forwarded-host",
        "x-forwarded-port",
        "x-original-url",
        "x-rewrite-url",
    ] {
        parts.headers.remove(name);
    }
    if !cfg.preserve_host {
        if let Some(authority) = cfg.url.authority() {
            if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
                parts.headers.insert(header::HOST, v);
            }
        }
    } else if let Some(h) = &client.host {
        parts.headers.insert(header::HOST, h.clone());
    }
    append_via(&mut parts.headers, client.version);
    append_forwarded_for(&mut parts.headers, peer);
    parts.headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static("http"),
    );
    // The upstream connection picks its own version (HTTP/2 by ALPN or HTTP/1.1).
    parts.version = http::Version::HTTP_11;
    (Request::from_parts(parts, body), client)
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

/// A `Link` field value (RFC 8288) with each `<URI-Reference>` passed through `map` (kept when it
/// returns `None`); `None` when nothing changed.
fn rewrite_link(value: &str, map: impl Fn(&str) -> Option<String>) -> Option<String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    let mut changed = false;
    while let Some(open) = rest.find('<') {
        let Some(close) = rest[open..].find('>').map(|c| c + open) else {
            break;
        };
        out.push_str(&rest[..=open]);
        let target = &rest[open + 1..close];
        match map(target) {
            Some(local) => {
                out.push_str(&local);
                changed = true;
            }
            None => out.push_str(target),
        }
        out.push('>');
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    changed.then_some(out)
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
    fn link_targets_are_mapped_and_parameters_kept() {
        let map = |u: &str| u.strip_prefix("http://up").map(|r| format!("http://127.0.0.1:8787{r}"));
        assert_eq!(
            rewrite_link(
                r#"<http://up/items?page=2>; rel="next", <http://other/x>; rel="help""#,
                map
            )
            .unwrap(),
            r#"<http://127.0.0.1:8787/items?page=2>; rel="next", <http://other/x>; rel="help""#
        );
        assert_eq!(rewrite_link("<http://other/x>; rel=next", map), None);
        assert_eq!(rewrite_link("<broken", map), None);
    }

    #[test]
    fn via_is_appended() {
        let mut h = HeaderMap::new();
        h.insert(header::VIA, HeaderValue::from_static("1.0 fred"));
        append_via(&mut h, http::Version::HTTP_11);
        assert_eq!(h[header::VIA], "1.0 fred, 1.1 outpost");
    }
}
