//! RFC 9111 decisions as pure functions over headers and times: may this response be stored, how long is
//! it fresh, how old is it, may this request be answered from a stored response, and how a 304 updates it.
//!
//! No I/O and no clock reads here: callers pass `now`, so every rule is table-tested with fixed times.
//! Deviations, on purpose: responses with no explicit freshness are still *stored* (never fresh unless
//! the route gives a `ttl`) so that they can be served when the upstream is unreachable (§4.2.4 allows
//! serving stale when disconnected); `must-revalidate`/`no-cache` responses are never served stale while
//! the upstream is reachable, but are while it is not (the user's data beats an error page offline,
//! unless the route's strategy says otherwise).

use std::time::{Duration, SystemTime};

use http::{header, HeaderMap, Method, StatusCode};

/// Parsed `Cache-Control` directives we act on (RFC 9111 §5.2).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CacheControl {
    /// `max-age=N`
    pub max_age: Option<u64>,
    /// `s-maxage=N`
    pub s_maxage: Option<u64>,
    /// `max-stale[=N]` (request); `Some(u64::MAX)` when given without a value.
    pub max_stale: Option<u64>,
    /// `min-fresh=N` (request)
    pub min_fresh: Option<u64>,
    /// `no-cache` (with or without field names; a qualified no-cache is treated as unqualified).
    pub no_cache: bool,
    /// `no-store`
    pub no_store: bool,
    /// `private` (field names treated as unqualified)
    pub private: bool,
    /// `public`
    pub public: bool,
    /// `must-revalidate`
    pub must_revalidate: bool,
    /// `proxy-revalidate`
    pub proxy_revalidate: bool,
    /// `only-if-cached` (request)
    pub only_if_cached: bool,
    /// `stale-while-revalidate=N` (RFC 5861)
    pub stale_while_revalidate: Option<u64>,
    /// `stale-if-error=N` (RFC 5861)
    pub stale_if_error: Option<u64>,
    /// `immutable` (RFC 8246)
    pub immutable: bool,
}

/// Delta-seconds per §1.2.2: digits only; overflow saturates; anything else is invalid (`None`).
fn delta_seconds(v: &str) -> Option<u64> {
    let v = v.trim().trim_matches('"');
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(v.parse::<u64>().unwrap_or(u64::MAX))
}

impl CacheControl {
    /// Parses every `Cache-Control` field line in `headers` (§5.2: directives are case-insensitive,
    /// repeated lines combine; an invalid value for a freshness directive makes it count as 0 — stale).
    pub fn parse(headers: &HeaderMap) -> CacheControl {
        let mut cc = CacheControl::default();
        for line in headers.get_all(header::CACHE_CONTROL) {
            let Ok(line) = line.to_str() else { continue };
            for directive in split_directives(line) {
                let (name, value) = match directive.split_once('=') {
                    Some((n, v)) => (n.trim(), Some(v.trim())),
                    None => (directive.trim(), None),
                };
                let secs = || value.and_then(delta_seconds);
                match name.to_ascii_lowercase().as_str() {
                    // §4.2.1: an invalid max-age means stale, not "no max-age".
                    "max-age" => cc.max_age = Some(secs().unwrap_or(0)),
                    "s-maxage" => cc.s_maxage = Some(secs().unwrap_or(0)),
                    "max-stale" => cc.max_stale = Some(value.map_or(Some(u64::MAX), |_| secs()).unwrap_or(0)),
                    "min-fresh" => cc.min_fresh = Some(secs().unwrap_or(0)),
                    "no-cache" => cc.no_cache = true,
                    "no-store" => cc.no_store = true,
                    "private" => cc.private = true,
                    "public" => cc.public = true,
                    "must-revalidate" => cc.must_revalidate = true,
                    "proxy-revalidate" => cc.proxy_revalidate = true,
                    "only-if-cached" => cc.only_if_cached = true,
                    "stale-while-revalidate" => cc.stale_while_revalidate = secs(),
                    "stale-if-error" => cc.stale_if_error = secs(),
                    "immutable" => cc.immutable = true,
                    _ => {}
                }
            }
        }
        cc
    }
}

/// Response fields targeted at Outpost (RFC 9213), most specific first: `Outpost-Cache-Control` for this
/// sidecar alone, then `CDN-Cache-Control` (Outpost is the gateway cache in front of the app).
pub const TARGETED_FIELDS: [&str; 2] = ["outpost-cache-control", "cdn-cache-control"];

impl CacheControl {
    /// The directives that govern a stored response (RFC 9213 §2.2): those of the most specific
    /// targeted field present and valid, else `Cache-Control`. A targeted field in use makes
    /// `Cache-Control` count for nothing (freshness, `private`, `no-cache`, `no-store` alike); an invalid
    /// one (not a structured-field dictionary) is ignored as if absent.
    pub fn of_response(headers: &HeaderMap) -> CacheControl {
        for name in TARGETED_FIELDS {
            let lines: Vec<&str> = match headers
                .get_all(name)
                .iter()
                .map(|v| v.to_str())
                .collect::<Result<Vec<_>, _>>()
            {
                Ok(l) if !l.is_empty() => l,
                _ => continue,
            };
            if lines.iter().all(|l| is_dictionary(l)) {
                let mut only = HeaderMap::new();
                for l in lines {
                    if let Ok(v) = header::HeaderValue::from_str(l) {
                        only.append(header::CACHE_CONTROL, v);
                    }
                }
                return CacheControl::parse(&only);
            }
        }
        CacheControl::parse(headers)
    }
}

/// Enough of RFC 8941 §3.2 to tell a dictionary from something else: members are lowercase keys
/// (`[a-z*][a-z0-9_.*-]*`), each bare or `=` an integer, a token or a quoted string.
fn is_dictionary(line: &str) -> bool {
    split_directives(line).into_iter().all(|member| {
        let (key, value) = match member.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (member.trim(), None),
        };
        let mut chars = key.chars();
        let key_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase() || c == '*')
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-.*".contains(c));
        let value_ok = match value {
            None => true,
            Some(v) if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') => true,
            Some(v) => {
                !v.is_empty()
                    && (v.bytes().all(|b| b.is_ascii_digit() || b == b'-')
                        || v.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&b)))
            }
        };
        key_ok && value_ok
    })
}

/// Splits on commas outside quoted strings (`no-cache="a, b", max-age=5`).
fn split_directives(line: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&line[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&line[start..]);
    out.into_iter().map(str::trim).filter(|d| !d.is_empty()).collect()
}

/// Cache role: private (one user's device, the default) or shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheRole {
    /// A user agent's cache (§1: may store `private` responses).
    Private,
    /// A shared cache (honours `s-maxage`, refuses `private`, restricts `Authorization`).
    Shared,
}

/// Status codes heuristically cacheable (RFC 9110 §15.1).
pub fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Statuses whose meaning we understand well enough to store (§3: "the response status code is final
/// and understood"). 206 is left to the range-aware audio path; 304 updates, it is never stored.
fn understood(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 302 | 303 | 307 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Why a response is not stored (for logs and stats).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStorable {
    /// Method other than GET (HEAD responses have no body to keep).
    Method,
    /// Status not final/understood.
    Status,
    /// `no-store` in the request or the response.
    NoStore,
    /// `private` in a shared cache.
    Private,
    /// `Authorization` in a shared cache without public/s-maxage/must-revalidate.
    Authorization,
    /// `Vary: *` can never match.
    VaryStar,
}

/// RFC 9111 §3: may this response be stored? `heuristic_ok` is whether, lacking explicit freshness,
/// we still store (the offline-first default: yes).
pub fn storable(
    role: CacheRole,
    method: &Method,
    req_headers: &HeaderMap,
    status: StatusCode,
    resp_headers: &HeaderMap,
) -> Result<(), NotStorable> {
    if method != Method::GET {
        return Err(NotStorable::Method);
    }
    if !understood(status) {
        return Err(NotStorable::Status);
    }
    let req_cc = CacheControl::parse(req_headers);
    let cc = CacheControl::of_response(resp_headers);
    if cc.no_store || req_cc.no_store {
        return Err(NotStorable::NoStore);
    }
    if role == CacheRole::Shared {
        if cc.private {
            return Err(NotStorable::Private);
        }
        // §3.5
        if req_headers.contains_key(header::AUTHORIZATION)
            && !(cc.public || cc.s_maxage.is_some() || cc.must_revalidate)
        {
            return Err(NotStorable::Authorization);
        }
    }
    if resp_headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|f| f.trim() == "*"))
    {
        return Err(NotStorable::VaryStar);
    }
    // Redirects other than 301/308 need explicit freshness to be worth keeping.
    if matches!(status.as_u16(), 302 | 303 | 307)
        && cc.max_age.is_none()
        && cc.s_maxage.is_none()
        && !resp_headers.contains_key(header::EXPIRES)
    {
        return Err(NotStorable::Status);
    }
    Ok(())
}

/// The HTTP-date in field `name`, if there is a valid one.
pub fn date_header(headers: &HeaderMap, name: header::HeaderName) -> Option<SystemTime> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| httpdate::parse_http_date(s).ok())
}

/// §4.2.1 freshness lifetime. `ttl` is the route's lifetime for responses without explicit freshness;
/// without it, heuristic freshness (§4.2.2: 10% of the time since Last-Modified, at most a day) applies
/// to heuristically cacheable statuses.
pub fn freshness_lifetime(role: CacheRole, status: StatusCode, headers: &HeaderMap, ttl: Option<Duration>) -> Duration {
    freshness_lifetime_of(&CacheControl::of_response(headers), role, status, headers, ttl)
}

/// [`freshness_lifetime`] with the response's directives already read (a hit reads them once).
pub fn freshness_lifetime_of(
    cc: &CacheControl,
    role: CacheRole,
    status: StatusCode,
    headers: &HeaderMap,
    ttl: Option<Duration>,
) -> Duration {
    if role == CacheRole::Shared {
        if let Some(s) = cc.s_maxage {
            return Duration::from_secs(s);
        }
    }
    if let Some(s) = cc.max_age {
        return Duration::from_secs(s);
    }
    if headers.contains_key(header::EXPIRES) {
        // An invalid Expires (e.g. "0") means already expired (§5.3).
        let Some(expires) = date_header(headers, header::EXPIRES) else {
            return Duration::ZERO;
        };
        let date = date_header(headers, header::DATE);
        return match date {
            Some(d) => expires.duration_since(d).unwrap_or(Duration::ZERO),
            None => Duration::ZERO,
        };
    }
    if let Some(ttl) = ttl {
        return ttl;
    }
    if heuristically_cacheable(status) || cc.public {
        if let (Some(lm), Some(date)) = (
            date_header(headers, header::LAST_MODIFIED),
            date_header(headers, header::DATE),
        ) {
            let age = date.duration_since(lm).unwrap_or(Duration::ZERO);
            return (age / 10).min(Duration::from_secs(86_400));
        }
    }
    Duration::ZERO
}

/// Times recorded when a response was received (§4.2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExchangeTimes {
    /// When the request was sent.
    pub request_time: SystemTime,
    /// When the response head arrived.
    pub response_time: SystemTime,
}

/// §4.2.3 current_age.
pub fn current_age(headers: &HeaderMap, times: ExchangeTimes, now: SystemTime) -> Duration {
    current_age_of(age_value(headers), date_header(headers, header::DATE), times, now)
}

/// §4.2.3 current_age from the stored `Age` (as [`age_value`] reads it) and `Date` values.
pub fn current_age_of(
    age_value: Duration,
    date: Option<SystemTime>,
    times: ExchangeTimes,
    now: SystemTime,
) -> Duration {
    let date_value = date.unwrap_or(times.response_time);
    let apparent_age = times.response_time.duration_since(date_value).unwrap_or(Duration::ZERO);
    let response_delay = times
        .response_time
        .duration_since(times.request_time)
        .unwrap_or(Duration::ZERO);
    let corrected_age_value = age_value.saturating_add(response_delay);
    let corrected_initial_age = apparent_age.max(corrected_age_value);
    let resident_time = now.duration_since(times.response_time).unwrap_or(Duration::ZERO);
    corrected_initial_age.saturating_add(resident_time)
}

/// An age past any freshness lifetime, for an `Age` that cannot be trusted.
const UNTRUSTED_AGE: Duration = Duration::from_secs(u32::MAX as u64);

/// §5.1 `Age`: one non-negative integer. Absent is 0; a list (`old, 0`), repeated lines, a sign or
/// anything else is invalid, and an invalid Age makes the response stale rather than fresh.
pub fn age_value(headers: &HeaderMap) -> Duration {
    let mut lines = headers.get_all(header::AGE).iter();
    let Some(first) = lines.next() else {
        return Duration::ZERO;
    };
    if lines.next().is_some() {
        return UNTRUSTED_AGE;
    }
    first
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .map(|v| Duration::from_secs(v.parse::<u64>().unwrap_or(u64::MAX).min(UNTRUSTED_AGE.as_secs())))
        .unwrap_or(UNTRUSTED_AGE)
}

/// What the stored response allows for this request, before any network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// May be served without contacting the origin.
    Fresh,
    /// Must be revalidated (or served only when the origin is unreachable).
    Stale,
}

/// §4.2.4: the origin forbade serving this response stale, even disconnected: `must-revalidate`
/// (§5.2.2.2), `no-cache` (§5.2.2.4), and in a shared cache `proxy-revalidate` (§5.2.2.8) or `s-maxage`
/// (§5.2.2.10). Read through the targeted field when there is one (RFC 9213).
pub fn stale_prohibited(role: CacheRole, resp_headers: &HeaderMap) -> bool {
    let cc = CacheControl::of_response(resp_headers);
    cc.must_revalidate || cc.no_cache || (role == CacheRole::Shared && (cc.proxy_revalidate || cc.s_maxage.is_some()))
}

/// §4.2 + §5.2.1: is the stored response usable as-is for this request?
pub fn evaluate(req_headers: &HeaderMap, lifetime: Duration, age: Duration, resp_headers: &HeaderMap) -> Freshness {
    evaluate_of(req_headers, lifetime, age, &CacheControl::of_response(resp_headers))
}

/// [`evaluate`] with the response's directives already read.
pub fn evaluate_of(req_headers: &HeaderMap, lifetime: Duration, age: Duration, resp: &CacheControl) -> Freshness {
    let req = CacheControl::parse(req_headers);
    // §5.4: Pragma: no-cache only when there is no Cache-Control in the request.
    let pragma_no_cache = !req_headers.contains_key(header::CACHE_CONTROL)
        && req_headers
            .get_all(header::PRAGMA)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.to_ascii_lowercase().contains("no-cache"));
    if req.no_cache || pragma_no_cache || resp.no_cache {
        return Freshness::Stale;
    }
    let mut lifetime = lifetime;
    if let Some(max_age) = req.max_age {
        if age > Duration::from_secs(max_age) {
            return Freshness::Stale;
        }
    }
    if let Some(min_fresh) = req.min_fresh {
        lifetime = lifetime.saturating_sub(Duration::from_secs(min_fresh));
    }
    if age < lifetime {
        return Freshness::Fresh;
    }
    // §5.2.1.2 max-stale: the client accepts a stale response, unless the response forbids it.
    if let Some(max_stale) = req.max_stale {
        if !resp.must_revalidate && age.saturating_sub(lifetime) <= Duration::from_secs(max_stale) {
            return Freshness::Fresh;
        }
    }
    Freshness::Stale
}

/// §4.3.4: the fields a 304 must not overwrite in the stored response.
pub fn update_from_304(stored: &mut HeaderMap, not_modified: &HeaderMap) {
    for (name, _) in not_modified.iter() {
        if name == header::CONTENT_LENGTH
            || name == header::CONTENT_ENCODING
            || name == header::TRANSFER_ENCODING
            || name == header::CONTENT_RANGE
        {
            continue;
        }
        // Replace every line of this field with the new lines.
        stored.remove(name);
    }
    for (name, value) in not_modified.iter() {
        if name == header::CONTENT_LENGTH
            || name == header::CONTENT_ENCODING
            || name == header::TRANSFER_ENCODING
            || name == header::CONTENT_RANGE
        {
            continue;
        }
        stored.append(name.clone(), value.clone());
    }
}

/// The validators to send when revalidating a stored response (§4.3.1).
pub fn conditional_headers(stored: &HeaderMap) -> Vec<(header::HeaderName, header::HeaderValue)> {
    let mut out = Vec::new();
    if let Some(etag) = stored.get(header::ETAG) {
        out.push((header::IF_NONE_MATCH, etag.clone()));
    }
    if let Some(lm) = stored.get(header::LAST_MODIFIED) {
        out.push((header::IF_MODIFIED_SINCE, lm.clone()));
    }
    out
}

/// The header field names a stored response varies on (lower-case, sorted, deduplicated).
/// `Accept-Encoding` is not one of them: Outpost decodes a stored coded body for a client that does not
/// accept its coding (see [`crate::encoding`]), so one stored answer serves every client, also offline.
pub fn vary_fields(resp_headers: &HeaderMap) -> Vec<String> {
    let mut names: Vec<String> = resp_headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|f| f.trim().to_ascii_lowercase())
        .filter(|f| !f.is_empty() && f != "accept-encoding")
        .collect();
    names.sort();
    names.dedup();
    names
}

/// §4.1: the request's values of the `Vary` fields, normalised (whitespace around commas collapsed)
/// so that equivalent requests match.
pub fn vary_values(fields: &[String], req_headers: &HeaderMap) -> Vec<(String, String)> {
    fields
        .iter()
        .map(|f| {
            let joined = req_headers
                .get_all(f.as_str())
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .collect::<Vec<_>>()
                .join(",");
            (f.clone(), joined)
        })
        .collect()
}

/// §4.4: methods whose success invalidates stored responses.
pub fn is_unsafe(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    type Fields = &'static [(&'static str, &'static str)];

    /// RFC 9213 §2.2 precedence, table-tested: (fields, expected max-age, no-store).
    #[test]
    fn targeted_fields_rfc9213_2_2() {
        #[rustfmt::skip]
        let table: &[(Fields, Option<u64>, bool)] = &[
            (&[("cache-control", "max-age=5")], Some(5), false),
            // A targeted field present: Cache-Control is ignored entirely.
            (&[("cache-control", "no-store"), ("cdn-cache-control", "max-age=60")], Some(60), false),
            (&[("cache-control", "max-age=5"), ("cdn-cache-control", "no-store")], None, true),
            // The most specific (Outpost's own) wins over the CDN one.
            (&[("cdn-cache-control", "no-store"), ("outpost-cache-control", "max-age=9")], Some(9), false),
            // Invalid dictionaries are ignored as if absent (RFC 9213 §2.1).
            (&[("cache-control", "max-age=5"), ("outpost-cache-control", "Max-Age=9")], Some(5), false),
            (&[("cache-control", "max-age=5"), ("cdn-cache-control", "max-age=9 9")], Some(5), false),
            // Repeated lines of a targeted field combine.
            (&[("cdn-cache-control", "max-age=9"), ("cdn-cache-control", "no-store")], Some(9), true),
        ];
        for (fields, max_age, no_store) in table {
            let cc = CacheControl::of_response(&h(fields));
            assert_eq!((cc.max_age, cc.no_store), (*max_age, *no_store), "{fields:?}");
        }
    }

    /// RFC 9111 §5.1: Age is one non-negative integer; anything else makes the response stale.
    #[test]
    fn age_must_be_one_non_negative_integer_rfc9111_5_1() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let times = ExchangeTimes {
            request_time: at,
            response_time: at,
        };
        let lifetime = Duration::from_secs(60);
        let fresh = |age: &[&str]| {
            let mut pairs = vec![("date", "Mon, 12 Jan 1970 13:46:40 GMT")];
            pairs.extend(age.iter().map(|a| ("age", *a)));
            current_age(&h(&pairs), times, at) < lifetime
        };
        assert!(fresh(&[]));
        assert!(fresh(&["5"]));
        assert!(fresh(&[" 7 "]), "optional whitespace around the value");
        assert!(!fresh(&["old, 0"]));
        assert!(!fresh(&["-1"]));
        assert!(!fresh(&["1.5"]));
        assert!(!fresh(&["5", "0"]), "repeated lines");
        assert!(
            !fresh(&["99999999999999999999999"]),
            "overflow saturates (stale), no panic"
        );
    }

    /// §4.2.4: what forbids serving stale, per role (§5.2.2.2, .4, .8, .10).
    #[test]
    fn stale_prohibitions_by_role_rfc9111_4_2_4() {
        use CacheRole::{Private as P, Shared as S};
        #[rustfmt::skip]
        let table: &[(&str, CacheRole, bool)] = &[
            ("max-age=0, private, must-revalidate", P, true),
            ("no-cache", P, true),
            ("max-age=0", P, false),
            ("proxy-revalidate", P, false), ("proxy-revalidate", S, true),
            ("s-maxage=5", P, false),       ("s-maxage=5", S, true),
        ];
        for (cc, role, want) in table {
            assert_eq!(
                stale_prohibited(*role, &h(&[("cache-control", cc)])),
                *want,
                "{cc} {role:?}"
            );
        }
        // Through the targeted field.
        let f = h(&[
            ("cache-control", "must-revalidate"),
            ("outpost-cache-control", "max-age=0"),
        ]);
        assert!(!stale_prohibited(P, &f));
    }

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn date(secs: u64) -> String {
        httpdate::fmt_http_date(at(secs))
    }

    #[test]
    fn cache_control_parsing_rfc9111_5_2() {
        let cases: &[(&str, CacheControl)] = &[
            (
                "max-age=60",
                CacheControl {
                    max_age: Some(60),
                    ..Default::default()
                },
            ),
            (
                "MAX-AGE=60, Public",
                CacheControl {
                    max_age: Some(60),
                    public: true,
                    ..Default::default()
                },
            ),
            // §4.2.1: invalid max-age → treat as stale (0).
            (
                "max-age=abc",
                CacheControl {
                    max_age: Some(0),
                    ..Default::default()
                },
            ),
            (
                "max-age=\"30\"",
                CacheControl {
                    max_age: Some(30),
                    ..Default::default()
                },
            ),
            (
                "no-cache=\"set-cookie, x\", max-age=5",
                CacheControl {
                    no_cache: true,
                    max_age: Some(5),
                    ..Default::default()
                },
            ),
            (
                "max-stale",
                CacheControl {
                    max_stale: Some(u64::MAX),
                    ..Default::default()
                },
            ),
            (
                "max-stale=10, min-fresh=3",
                CacheControl {
                    max_stale: Some(10),
                    min_fresh: Some(3),
                    ..Default::default()
                },
            ),
            (
                "private, no-store",
                CacheControl {
                    private: true,
                    no_store: true,
                    ..Default::default()
                },
            ),
            (
                "s-maxage=99999999999999999999999",
                CacheControl {
                    s_maxage: Some(u64::MAX),
                    ..Default::default()
                },
            ),
            (
                "stale-while-revalidate=30, stale-if-error=60, immutable",
                CacheControl {
                    stale_while_revalidate: Some(30),
                    stale_if_error: Some(60),
                    immutable: true,
                    ..Default::default()
                },
            ),
            (
                ",,only-if-cached,,",
                CacheControl {
                    only_if_cached: true,
                    ..Default::default()
                },
            ),
        ];
        for (line, want) in cases {
            assert_eq!(&CacheControl::parse(&h(&[("cache-control", line)])), want, "{line}");
        }
        // Several field lines combine (§5.2).
        let cc = CacheControl::parse(&h(&[
            ("cache-control", "max-age=5"),
            ("cache-control", "must-revalidate"),
        ]));
        assert!(cc.must_revalidate && cc.max_age == Some(5));
    }

    #[test]
    fn storability_rfc9111_3() {
        use CacheRole::*;
        let get = Method::GET;
        let none = h(&[]);
        let auth = h(&[("authorization", "Bearer x")]);
        let req_no_store = h(&[("cache-control", "no-store")]);
        type Case<'a> = (
            &'a str,
            CacheRole,
            &'a Method,
            &'a HeaderMap,
            u16,
            HeaderMap,
            Result<(), NotStorable>,
        );
        let cases: Vec<Case> = vec![
            (
                "plain 200 with no cache headers is stored for offline use",
                Private,
                &get,
                &none,
                200,
                h(&[]),
                Ok(()),
            ),
            (
                "POST responses are not stored",
                Private,
                &Method::POST,
                &none,
                200,
                h(&[]),
                Err(NotStorable::Method),
            ),
            (
                "206 is left to the range path",
                Private,
                &get,
                &none,
                206,
                h(&[]),
                Err(NotStorable::Status),
            ),
            (
                "500 is not stored",
                Private,
                &get,
                &none,
                500,
                h(&[]),
                Err(NotStorable::Status),
            ),
            (
                "404 is heuristically cacheable",
                Private,
                &get,
                &none,
                404,
                h(&[]),
                Ok(()),
            ),
            (
                "§5.2.2.5 response no-store",
                Private,
                &get,
                &none,
                200,
                h(&[("cache-control", "no-store")]),
                Err(NotStorable::NoStore),
            ),
            (
                "§5.2.1.5 request no-store",
                Private,
                &get,
                &req_no_store,
                200,
                h(&[]),
                Err(NotStorable::NoStore),
            ),
            (
                "§5.2.2.7 private ok in a private cache",
                Private,
                &get,
                &none,
                200,
                h(&[("cache-control", "private")]),
                Ok(()),
            ),
            (
                "§5.2.2.7 private refused by a shared cache",
                Shared,
                &get,
                &none,
                200,
                h(&[("cache-control", "private")]),
                Err(NotStorable::Private),
            ),
            (
                "§3.5 Authorization refused by a shared cache",
                Shared,
                &get,
                &auth,
                200,
                h(&[]),
                Err(NotStorable::Authorization),
            ),
            (
                "§3.5 Authorization + public ok when shared",
                Shared,
                &get,
                &auth,
                200,
                h(&[("cache-control", "public")]),
                Ok(()),
            ),
            (
                "§3.5 Authorization + s-maxage ok when shared",
                Shared,
                &get,
                &auth,
                200,
                h(&[("cache-control", "s-maxage=5")]),
                Ok(()),
            ),
            (
                "Authorization fine in a private cache",
                Private,
                &get,
                &auth,
                200,
                h(&[]),
                Ok(()),
            ),
            (
                "§4.1 Vary: * never matches",
                Private,
                &get,
                &none,
                200,
                h(&[("vary", "Accept, *")]),
                Err(NotStorable::VaryStar),
            ),
            (
                "302 without freshness is not kept",
                Private,
                &get,
                &none,
                302,
                h(&[]),
                Err(NotStorable::Status),
            ),
            (
                "302 with max-age is kept",
                Private,
                &get,
                &none,
                302,
                h(&[("cache-control", "max-age=60")]),
                Ok(()),
            ),
        ];
        for (name, role, m, req, status, resp, want) in cases {
            assert_eq!(
                storable(role, m, req, StatusCode::from_u16(status).unwrap(), &resp),
                want,
                "{name}"
            );
        }
    }

    #[test]
    fn freshness_lifetime_rfc9111_4_2_1() {
        use CacheRole::*;
        let ok = StatusCode::OK;
        let d = date(0);
        let cases: Vec<(&str, CacheRole, HeaderMap, Option<Duration>, u64)> = vec![
            ("max-age", Private, h(&[("cache-control", "max-age=60")]), None, 60),
            (
                "s-maxage ignored by a private cache",
                Private,
                h(&[("cache-control", "s-maxage=5, max-age=60")]),
                None,
                60,
            ),
            (
                "s-maxage wins in a shared cache",
                Shared,
                h(&[("cache-control", "s-maxage=5, max-age=60")]),
                None,
                5,
            ),
            (
                "max-age beats Expires",
                Private,
                h(&[("cache-control", "max-age=7"), ("date", &d), ("expires", &date(100))]),
                None,
                7,
            ),
            (
                "Expires - Date",
                Private,
                h(&[("date", &d), ("expires", &date(100))]),
                None,
                100,
            ),
            (
                "§5.3 invalid Expires is already expired",
                Private,
                h(&[("date", &d), ("expires", "0")]),
                None,
                0,
            ),
            (
                "Expires before Date",
                Private,
                h(&[("date", &date(100)), ("expires", &d)]),
                None,
                0,
            ),
            (
                "route ttl for header-less responses",
                Private,
                h(&[]),
                Some(Duration::from_secs(30)),
                30,
            ),
            (
                "explicit beats ttl",
                Private,
                h(&[("cache-control", "max-age=2")]),
                Some(Duration::from_secs(30)),
                2,
            ),
            (
                "§4.2.2 heuristic: 10% of Date - Last-Modified",
                Private,
                h(&[("date", &date(1000)), ("last-modified", &d)]),
                None,
                100,
            ),
            (
                "heuristic capped at one day",
                Private,
                h(&[("date", &date(10_000_000)), ("last-modified", &d)]),
                None,
                86_400,
            ),
            ("no information: zero", Private, h(&[]), None, 0),
        ];
        for (name, role, headers, ttl, want) in cases {
            assert_eq!(
                freshness_lifetime(role, ok, &headers, ttl),
                Duration::from_secs(want),
                "{name}"
            );
        }
    }

    #[test]
    fn age_calculation_rfc9111_4_2_3() {
        let times = ExchangeTimes {
            request_time: at(10),
            response_time: at(12),
        };
        // Date 0, received at 12 → apparent age 12; Age 5 + delay 2 = 7; max = 12; resident 8 → 20.
        let headers = h(&[("date", &date(0)), ("age", "5")]);
        assert_eq!(current_age(&headers, times, at(20)), Duration::from_secs(20));
        // Age larger than apparent age wins.
        let headers = h(&[("date", &date(12)), ("age", "100")]);
        assert_eq!(current_age(&headers, times, at(12)), Duration::from_secs(102));
        // No Date: apparent age 0.
        assert_eq!(current_age(&h(&[]), times, at(15)), Duration::from_secs(5));
    }

    #[test]
    fn request_directives_rfc9111_5_2_1() {
        let none = h(&[]);
        let s = Duration::from_secs;
        let cases: Vec<(&str, HeaderMap, u64, u64, HeaderMap, Freshness)> = vec![
            ("fresh", h(&[]), 60, 10, none.clone(), Freshness::Fresh),
            ("expired", h(&[]), 60, 60, none.clone(), Freshness::Stale),
            (
                "§5.2.1.4 request no-cache",
                h(&[("cache-control", "no-cache")]),
                60,
                10,
                none.clone(),
                Freshness::Stale,
            ),
            (
                "§5.4 Pragma: no-cache without Cache-Control",
                h(&[("pragma", "no-cache")]),
                60,
                10,
                none.clone(),
                Freshness::Stale,
            ),
            (
                "§5.4 Pragma ignored when Cache-Control present",
                h(&[("pragma", "no-cache"), ("cache-control", "max-stale=0")]),
                60,
                10,
                none.clone(),
                Freshness::Fresh,
            ),
            (
                "§5.2.1.1 max-age exceeded",
                h(&[("cache-control", "max-age=5")]),
                60,
                10,
                none.clone(),
                Freshness::Stale,
            ),
            (
                "§5.2.1.1 max-age ok",
                h(&[("cache-control", "max-age=15")]),
                60,
                10,
                none.clone(),
                Freshness::Fresh,
            ),
            (
                "§5.2.1.3 min-fresh not met",
                h(&[("cache-control", "min-fresh=55")]),
                60,
                10,
                none.clone(),
                Freshness::Stale,
            ),
            (
                "§5.2.1.2 max-stale within",
                h(&[("cache-control", "max-stale=30")]),
                60,
                80,
                none.clone(),
                Freshness::Fresh,
            ),
            (
                "§5.2.1.2 max-stale beyond",
                h(&[("cache-control", "max-stale=10")]),
                60,
                80,
                none.clone(),
                Freshness::Stale,
            ),
            (
                "§5.2.1.2 max-stale unbounded",
                h(&[("cache-control", "max-stale")]),
                60,
                100_000,
                none.clone(),
                Freshness::Fresh,
            ),
            (
                "§5.2.2.2 must-revalidate beats max-stale",
                h(&[("cache-control", "max-stale")]),
                60,
                80,
                h(&[("cache-control", "must-revalidate")]),
                Freshness::Stale,
            ),
            (
                "§5.2.2.4 response no-cache always revalidates",
                h(&[]),
                60,
                1,
                h(&[("cache-control", "no-cache")]),
                Freshness::Stale,
            ),
            (
                "§5.2.2.4 no-cache not relaxed by max-stale",
                h(&[("cache-control", "max-stale")]),
                60,
                1,
                h(&[("cache-control", "no-cache")]),
                Freshness::Stale,
            ),
        ];
        for (name, req, lifetime, age, resp, want) in cases {
            assert_eq!(evaluate(&req, s(lifetime), s(age), &resp), want, "{name}");
        }
    }

    #[test]
    fn not_modified_updates_headers_rfc9111_4_3_4() {
        let mut stored = h(&[
            ("etag", "\"a\""),
            ("cache-control", "max-age=1"),
            ("content-length", "10"),
            ("x-keep", "1"),
        ]);
        let fresh = h(&[
            ("etag", "\"a\""),
            ("cache-control", "max-age=600"),
            ("content-length", "0"),
        ]);
        update_from_304(&mut stored, &fresh);
        assert_eq!(stored["cache-control"], "max-age=600");
        assert_eq!(
            stored["content-length"], "10",
            "Content-Length of the stored body stays"
        );
        assert_eq!(stored["x-keep"], "1");
    }

    #[test]
    fn vary_fields_and_values_rfc9111_4_1() {
        let resp = h(&[("vary", "Accept-Encoding, accept"), ("vary", "X-Lang")]);
        let fields = vary_fields(&resp);
        assert_eq!(
            fields,
            vec!["accept", "x-lang"],
            "Accept-Encoding is adapted, not matched"
        );
        let a = vary_values(&fields, &h(&[("accept", "a/b,  c/d"), ("accept-encoding", "gzip")]));
        let b = vary_values(
            &fields,
            &h(&[("accept", "a/b"), ("accept", "c/d"), ("accept-encoding", "gzip")]),
        );
        assert_eq!(a, b, "whitespace and line splits normalise away");
    }
}
