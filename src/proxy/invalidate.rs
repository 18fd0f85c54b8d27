//! What a successful write makes stale: RFC 9111 §4.4 (the target, and `Location`/`Content-Location`
//! on the same upstream) plus the route's `invalidates` paths, always in the writer's partition.

use http::header::{self, HeaderMap};
use http::Uri;

use super::forward::Forwarder;
use crate::cache::Cache;
use crate::routes::RouteMatch;
use crate::upstream::Upstream;

/// RFC 9111 §4.4: a successful unsafe request invalidates the target URI and the URIs in Location and
/// Content-Location (when they are on the same upstream), in the request's partition. The forwarder has
/// already turned upstream URLs in those fields into Outpost URLs on the client's `Host`
/// (`client_host`), so those count as the same origin too.
pub(crate) fn after_unsafe(
    fwd: &Forwarder,
    cache: &Cache,
    (target, client_host): (&Uri, Option<&str>),
    partition: &str,
    resp_headers: &HeaderMap,
    upstream: &Upstream,
) {
    let mut uris = vec![target.clone()];
    for name in [header::LOCATION, header::CONTENT_LOCATION] {
        let Some(v) = resp_headers.get(name).and_then(|v| v.to_str().ok()) else {
            continue;
        };
        let Ok(u) = v.parse::<Uri>() else { continue };
        let same_origin = match u.authority() {
            None => true,
            Some(a) => Some(a) == upstream.config().url.authority() || Some(a.as_str()) == client_host,
        };
        if same_origin && u.path().starts_with('/') {
            uris.push(u);
        }
    }
    for uri in uris {
        match cache.invalidate(&fwd.key_of(partition, &uri)) {
            Ok(n) if n > 0 => tracing::debug!(uri = %uri, entries = n, "invalidated after unsafe request"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "invalidation failed"),
        }
    }
}

/// GET paths a route's `invalidates` names, in `partition`.
pub(crate) fn related(fwd: &Forwarder, cache: &Cache, route: &RouteMatch<'_>, partition: &str) {
    for t in &route.policy.invalidates {
        path(fwd, cache, &route.expand(t), partition);
    }
}

/// One GET path, in `partition`.
pub(crate) fn path(fwd: &Forwarder, cache: &Cache, path: &str, partition: &str) {
    let Ok(uri) = path.parse::<Uri>() else { return };
    if let Err(e) = cache.invalidate(&fwd.key_of(partition, &uri)) {
        tracing::warn!(error = %e, "invalidation failed");
    }
}
