//! The route table: request path → route (upstream + policy), first match wins.
//!
//! Patterns are written per segment: literal segments, and `{name}` segments that match any one
//! non-empty segment and capture it (`/api/v1/threads/{thread_id}/messages`). An exact pattern (`path`)
//! matches only paths with the same number of segments; a prefix pattern (`prefix`) matches paths that
//! start with its segments. A path that matches no route goes to the default upstream with the default
//! policy. Matching allocates nothing unless the route has parameters.

use std::time::Duration;

use serde::Serialize;

use crate::media::{JsonPath, MediaAlias, MediaRewrite};
use crate::units::{ser_duration, ser_methods, ser_opt_duration};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

/// A parsed route pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePattern {
    source: String,
    segments: Vec<Segment>,
    prefix: bool,
    /// A prefix pattern like `/media/` (trailing slash) also matches deeper paths only.
    trailing_slash: bool,
}

impl Serialize for RoutePattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.prefix {
            s.collect_str(&format_args!("prefix {}", self.source))
        } else {
            s.collect_str(&format_args!("path {}", self.source))
        }
    }
}

impl RoutePattern {
    /// A pattern that must match the whole path.
    pub fn exact(src: &str) -> Result<RoutePattern, String> {
        Self::parse(src, false)
    }

    /// A pattern that matches any path starting with its segments.
    pub fn prefix(src: &str) -> Result<RoutePattern, String> {
        Self::parse(src, true)
    }

    fn parse(src: &str, prefix: bool) -> Result<RoutePattern, String> {
        if !src.starts_with('/') {
            return Err(format!("pattern {src:?} must start with '/'"));
        }
        let mut segments = Vec::new();
        let mut names = Vec::new();
        for seg in src[1..].split('/') {
            if seg.is_empty() {
                continue;
            }
            if let Some(inner) = seg.strip_prefix('{') {
                let name = inner
                    .strip_suffix('}')
                    .ok_or_else(|| format!("pattern {src:?}: segment {seg:?} opens '{{' without closing it"))?;
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(format!(
                        "pattern {src:?}: parameter {seg:?} must be {{name}} with letters, digits or '_'"
                    ));
                }
                if names.contains(&name) {
                    return Err(format!("pattern {src:?}: parameter {{{name}}} appears twice"));
                }
                names.push(name);
                segments.push(Segment::Param(name.to_string()));
            } else if seg.contains('{') || seg.contains('}') {
                return Err(format!(
                    "pattern {src:?}: a parameter must fill a whole segment, found {seg:?}"
                ));
            } else {
                segments.push(Segment::Literal(seg.to_string()));
            }
        }
        Ok(RoutePattern {
            source: src.to_string(),
            segments,
            prefix,
            trailing_slash: prefix && src.len() > 1 && src.ends_with('/'),
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// True when the pattern captures `{name}`.
    pub fn has_param(&self, name: &str) -> bool {
        self.segments
            .iter()
            .any(|s| matches!(s, Segment::Param(p) if p == name))
    }

    /// The literal text before the first parameter (used to validate `strip_prefix`).
    pub fn literal_prefix(&self) -> &str {
        match self.source.find('{') {
            Some(i) => &self.source[..i],
            None => &self.source,
        }
    }

    /// True when `path` matches with nothing below it: for a prefix pattern, the prefix itself (a list
    /// such as `/api/v1/library`, not an item under it).
    pub fn matches_exactly(&self, path: &str) -> bool {
        let depth = path.split('/').filter(|s| !s.is_empty()).count();
        depth == self.segments.len() && self.matches(path).is_some()
    }

    /// Matches `path`; on success returns the captured parameters in pattern order.
    pub fn matches(&self, path: &str) -> Option<Vec<(String, String)>> {
        let mut rest = path.strip_prefix('/')?;
        let mut params = Vec::new();
        for seg in &self.segments {
            let (head, tail) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, ""),
            };
            if head.is_empty() {
                return None;
            }
            match seg {
                Segment::Literal(l) if l == head => {}
                Segment::Literal(_) => return None,
                Segment::Param(name) => params.push((name.clone(), head.to_string())),
            }
            // Remember whether anything followed this segment, for the trailing-slash rule.
            rest = if tail.is_empty() && rest.len() > head.len() {
                "/"
            } else {
                tail
            };
        }
        let rest = rest.trim_start_matches('/');
        let leftover_ok = if self.prefix {
            !self.trailing_slash || !rest.is_empty() || path.ends_with('/')
        } else {
            rest.is_empty()
        };
        leftover_ok.then_some(params)
    }
}

/// Whether a stale stored answer whose origin forbade serving it stale (RFC 9111 §4.2.4:
/// `must-revalidate`, `no-cache`; in a shared cache also `proxy-revalidate`, `s-maxage`) may still
/// answer when the origin cannot be asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OfflineStale {
    /// The offline-first default: the user's data beats an error page (Rails sends
    /// `max-age=0, private, must-revalidate` on everything).
    #[default]
    Always,
    /// To the letter: never; a 504 instead, online or offline.
    Rfc,
}

/// How a route answers GETs .
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// RFC 9111 rules; stale served when the upstream is unreachable.
    Http,
    /// Answer from cache at once, refresh in the background.
    StaleWhileRevalidate,
    /// Cache if present, else network.
    CacheFirst,
    /// Network with a timeout, then cache.
    NetworkFirst,
    /// Never cache.
    NetworkOnly,
    /// Never contact the upstream.
    CacheOnly,
}

impl Strategy {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Http => "http",
            Strategy::StaleWhileRevalidate => "stale-while-revalidate",
            Strategy::CacheFirst => "cache-first",
            Strategy::NetworkFirst => "network-first",
            Strategy::NetworkOnly => "network-only",
            Strategy::CacheOnly => "cache-only",
        }
    }

    /// Every strategy, in documentation order.
    pub const ALL: [Strategy; 6] = [
        Strategy::Http,
        Strategy::StaleWhileRevalidate,
        Strategy::CacheFirst,
        Strategy::NetworkFirst,
        Strategy::NetworkOnly,
        Strategy::CacheOnly,
    ];
}

/// Per-route behaviour; later features read their knobs from here.
#[derive(Debug, Clone, Serialize)]
pub struct RoutePolicy {
    /// Caching strategy for GET/HEAD.
    pub strategy: Strategy,
    /// Content kind for stats and clearing (`messages`, `snapshots`, `audio`, `library`, ...).
    pub kind: String,
    /// Freshness lifetime for responses without cache headers.
    #[serde(serialize_with = "ser_opt_duration")]
    pub ttl: Option<Duration>,
    /// Network timeout of the `network-first` strategy.
    #[serde(serialize_with = "ser_duration")]
    pub network_timeout: Duration,
    /// Query parameter names (trailing `*` = prefix) left out of the cache key.
    pub ignore_query: Vec<String>,
    /// Queue mutating requests while the upstream is unreachable.
    pub queue: bool,
    /// A queued PUT or DELETE replaces a waiting PUT/PATCH to the same target (see `queue::supersede`).
    pub supersede: bool,
    /// A GET of a resource with queued writes answers what they will make of it (`proxy::overlay`).
    pub overlay: bool,
    /// A collection whose answer shows this user's queued POSTs of items and writes to items.
    pub overlay_list: Option<OverlayList>,
    /// Largest request body that can be queued.
    pub max_body: u64,
    /// What a replay answered 409/412 does.
    pub conflict: ConflictPolicy,
    /// Template over the route's `{params}`: items with different keys replay independently.
    pub ordering_key: Option<String>,
    /// Higher replays first (among items whose turn it is).
    pub priority: i32,
    /// GET paths (may use the route's `{params}`) invalidated when a write on this route succeeds.
    pub invalidates: Vec<String>,
    /// Media rewriting: absolute URLs of these upstreams inside this route's JSON responses become
    /// local URLs through the prefix route that serves each upstream.
    pub rewrite: Vec<MediaRewrite>,
    /// JSON bodies larger than this are passed through unrewritten.
    pub rewrite_max: u64,
    /// JSON path (`items[*].url`) of media URLs in this route's answers that are pinned (never evicted
    /// while the latest answer lists them).
    pub pins: Option<JsonPath>,
    /// Download pinned media in the background.
    pub prefetch: bool,
    /// Media identity inside this route's JSON answers: a new URL for a known id is served from the
    /// blob already stored for that id.
    pub media_alias: Option<MediaAlias>,
    /// Per-group retention of stored answers.
    pub retain: Option<Retention>,
    /// A successful request on this route logs the user out: their partition is cleared.
    pub logout: bool,
    /// Answers are told apart by user (`partition = "user"`, the default); `false` (`"none"`): the same for
    /// everyone (media objects whose URL is the capability), keyed like requests without credentials.
    pub per_user: bool,
    /// Requests asking for a protocol switch (`Connection: upgrade`, e.g. WebSocket handshakes) are
    /// tunnelled to the upstream; `false` forwards them as plain requests without the `Upgrade` field.
    pub upgrade: bool,
    /// `offline_stale` for this route; `None` takes `[cache] offline_stale`.
    pub offline_stale: Option<OfflineStale>,
    /// Instead of 202, answer queued writes with this status and `queued_body`.
    pub queued_status: Option<u16>,
    /// Body template for `queued_status`: `{body}` is the request body, `{id}` the queue id.
    pub queued_body: Option<String>,
}

/// `overlay_list = { path = "/api/v1/library", items = "items", id = "id" }`: a GET of `path` (any query)
/// while this user's writes to it or to `path/{id}` are queued answers the list they will make: a POSTed
/// item appended, a PUT item replaced (or added), a merge-patched item patched, a deleted item gone.
#[derive(Debug, Clone, Serialize)]
pub struct OverlayList {
    /// The collection's path (may use `{params}`).
    pub path: RoutePattern,
    /// Where the array of items is in the answer; `None`: the answer is the array.
    pub items: Option<JsonPath>,
    /// The member of an item that is its id (the last path segment of the item's own URL).
    pub id: String,
    /// New items go first (`add = "first"`, newest-first lists) instead of last.
    pub add_first: bool,
    /// Where items are written when not at `path` (`item_path = "/api/v1/library/items"`: POST there adds
    /// one, PUT/PATCH/DELETE `item_path/{id}` change one); may use `path`'s `{params}`.
    pub item_path: Option<String>,
}

/// The id of the item that `path` names under a collection whose items are written at `items_at`
/// (`items_at/{id}`, one segment), if it names one.
pub fn list_item<'a>(items_at: &str, path: &'a str) -> Option<&'a str> {
    path.strip_prefix(items_at)
        .and_then(|r| r.strip_prefix('/'))
        .filter(|id| !id.is_empty() && !id.contains('/'))
}

impl OverlayList {
    /// When `path` is this list: where its items are written.
    pub fn items_base(&self, path: &str) -> Option<String> {
        let params = self.path.matches(path)?;
        let Some(t) = &self.item_path else {
            return Some(path.trim_end_matches('/').to_string());
        };
        let mut out = t.clone();
        for (k, v) in params {
            out = out.replace(&format!("{{{k}}}"), &v);
        }
        Some(out.trim_end_matches('/').to_string())
    }
}

/// `retain = { group = "{thread_id}", keep_last = 50, drop = "body" }`.
#[derive(Debug, Clone, Serialize)]
pub struct Retention {
    /// Template over the route's `{params}`; answers with the same expansion (per user) form a group.
    pub group: String,
    /// How many of the newest stored answers per group keep their bodies.
    pub keep_last: usize,
    /// `true`: drop the whole entry; `false`: drop the body, keep the head as metadata.
    pub drop_entry: bool,
}

/// What a replay that meets a conflict (409/412) does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConflictPolicy {
    /// Drop the write and record it among the dead letters as overridden by the server.
    ServerWins,
    /// Keep retrying with backoff.
    Retry,
    /// Stop and keep it as a dead letter for the user to decide.
    DeadLetter,
}

impl Default for RoutePolicy {
    fn default() -> Self {
        RoutePolicy {
            strategy: Strategy::Http,
            kind: "other".to_string(),
            ttl: None,
            network_timeout: Duration::from_secs(3),
            ignore_query: Vec::new(),
            queue: true,
            supersede: false,
            overlay: false,
            overlay_list: None,
            max_body: 1 << 20,
            conflict: ConflictPolicy::DeadLetter,
            ordering_key: None,
            priority: 0,
            invalidates: Vec::new(),
            queued_status: None,
            queued_body: None,
            rewrite: Vec::new(),
            rewrite_max: 4 << 20,
            pins: None,
            prefetch: false,
            media_alias: None,
            retain: None,
            logout: false,
            upgrade: true,
            per_user: true,
            offline_stale: None,
        }
    }
}

/// One `[[routes]]` entry, checked.
#[derive(Debug, Clone, Serialize)]
pub struct RouteConfig {
    /// Name for logs and metrics (defaults to `route<N>`).
    pub name: String,
    /// What request paths it matches.
    pub pattern: RoutePattern,
    /// Index into [`Config::upstreams`].
    #[serde(skip)]
    pub upstream: usize,
    /// Upstream name (for display).
    #[serde(rename = "upstream")]
    pub upstream_name: String,
    /// Leading path removed before forwarding.
    pub strip_prefix: Option<String>,
    /// Methods it applies to; empty = all.
    #[serde(serialize_with = "ser_methods")]
    pub methods: Vec<http::Method>,
    /// Policy knobs.
    pub policy: RoutePolicy,
}

/// Which route answered, with its captured parameters.
#[derive(Debug, Clone)]
pub struct RouteMatch<'a> {
    /// Route name (`default` when none matched).
    pub name: &'a str,
    /// Index into the config's upstreams.
    pub upstream: usize,
    /// Leading path removed before forwarding.
    pub strip_prefix: Option<&'a str>,
    /// The route's policy.
    pub policy: &'a RoutePolicy,
    /// `{name}` captures.
    pub params: Vec<(String, String)>,
    /// The route's pattern (`None` for the default route).
    pub pattern: Option<&'a RoutePattern>,
}

impl RouteMatch<'_> {
    /// Fills `{name}` placeholders from the captured parameters (unknown names stay as written).
    pub fn expand(&self, template: &str) -> String {
        let mut out = template.to_string();
        for (k, v) in &self.params {
            out = out.replace(&format!("{{{k}}}"), v);
        }
        out
    }
}

/// Routes in order plus the default.
#[derive(Debug, Clone)]
pub struct RouteTable {
    routes: Vec<RouteConfig>,
    default_upstream: usize,
    default_policy: RoutePolicy,
}

impl RouteTable {
    /// Builds the table; `default_upstream` serves unmatched paths.
    pub fn new(routes: Vec<RouteConfig>, default_upstream: usize) -> RouteTable {
        RouteTable {
            routes,
            default_upstream,
            default_policy: RoutePolicy::default(),
        }
    }

    /// The local path that reaches `upstream_path` on upstream `upstream` (a path below the upstream's
    /// base URL, with its query): through the first route to that upstream whose prefix, put back in front,
    /// routes a GET to the same upstream with the same prefix stripped. `None` when no route serves it.
    pub fn local_path(&self, upstream: usize, upstream_path: &str) -> Option<String> {
        let path_only = upstream_path.split('?').next().unwrap_or(upstream_path);
        let candidates = self
            .routes
            .iter()
            .filter(|r| r.upstream == upstream)
            .map(|r| r.strip_prefix.as_deref())
            .chain((self.default_upstream == upstream).then_some(None));
        for strip in candidates {
            let prefix = strip.map_or("", |s| s.trim_end_matches('/'));
            let local = format!("{prefix}{path_only}");
            let m = self.route(&http::Method::GET, &local);
            if m.upstream == upstream && m.strip_prefix == strip {
                return Some(format!("{prefix}{upstream_path}"));
            }
        }
        None
    }

    /// The configured routes, in order.
    pub fn routes(&self) -> &[RouteConfig] {
        &self.routes
    }

    /// The first route matching method and path, or the default route.
    pub fn route(&self, method: &http::Method, path: &str) -> RouteMatch<'_> {
        for r in &self.routes {
            if !r.methods.is_empty() && !r.methods.contains(method) {
                continue;
            }
            if let Some(params) = r.pattern.matches(path) {
                return RouteMatch {
                    name: &r.name,
                    upstream: r.upstream,
                    strip_prefix: r.strip_prefix.as_deref(),
                    policy: &r.policy,
                    params,
                    pattern: Some(&r.pattern),
                };
            }
        }
        RouteMatch {
            name: "default",
            upstream: self.default_upstream,
            strip_prefix: None,
            policy: &self.default_policy,
            params: Vec::new(),
            pattern: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(params: &[(&str, &str)]) -> Option<Vec<(String, String)>> {
        Some(params.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect())
    }

    #[test]
    fn exact_patterns() {
        let pat = RoutePattern::exact("/api/v1/threads/{thread_id}/messages").unwrap();
        type Case = (&'static str, Option<Vec<(String, String)>>);
        let cases: &[Case] = &[
            ("/api/v1/threads/t1/messages", p(&[("thread_id", "t1")])),
            ("/api/v1/threads/t1/messages/", p(&[("thread_id", "t1")])),
            ("/api/v1/threads//messages", None),
            ("/api/v1/threads/t1/messages/m1", None),
            ("/api/v1/threads/t1", None),
            ("/api/v2/threads/t1/messages", None),
            ("api/v1/threads/t1/messages", None),
        ];
        for (path, want) in cases {
            assert_eq!(&pat.matches(path), want, "{path}");
        }
    }

    #[test]
    fn prefix_patterns() {
        let pat = RoutePattern::prefix("/media/").unwrap();
        assert_eq!(pat.matches("/media/s3/a.mp3"), p(&[]));
        assert_eq!(pat.matches("/media/"), p(&[]));
        assert_eq!(pat.matches("/media"), None);
        assert_eq!(pat.matches("/mediax/a"), None);
        let pat = RoutePattern::prefix("/api").unwrap();
        assert_eq!(pat.matches("/api"), p(&[]));
        assert_eq!(pat.matches("/api/v1/x"), p(&[]));
        assert_eq!(pat.matches("/apix"), None);
        let pat = RoutePattern::prefix("/api/v1/threads/{thread_id}/").unwrap();
        assert_eq!(pat.matches("/api/v1/threads/9/snapshot"), p(&[("thread_id", "9")]));
        let all = RoutePattern::prefix("/").unwrap();
        assert_eq!(all.matches("/anything/at/all"), p(&[]));
        assert_eq!(all.matches("/"), p(&[]));
    }

    #[test]
    fn bad_patterns_are_rejected() {
        for bad in ["api", "/a/{x", "/a/x{y}", "/a/{}", "/a/{x}/{x}", "/a/{x-y}"] {
            assert!(RoutePattern::exact(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn literal_prefix_stops_at_first_param() {
        assert_eq!(
            RoutePattern::prefix("/media/{host}/").unwrap().literal_prefix(),
            "/media/"
        );
        assert_eq!(RoutePattern::prefix("/media/").unwrap().literal_prefix(), "/media/");
    }
}
