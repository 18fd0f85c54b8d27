//! The per-request log line and the request id.
//!
//! Every request gets one id: the app's `X-Request-Id` when it sent a usable one, else a new random one.
//! It goes upstream with the request (and with a queued write when it is replayed), back to the app on
//! the answer, and into the log line. The line shows the path with its query, secret query parameters
//! (presigned URL signatures, API keys: `log_redact`) replaced by `REDACTED`, so logs can be shared.

use std::time::Instant;

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode, Uri};

use crate::cache::Outcome;

/// The header carrying the request id.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub use crate::config::DEFAULT_REDACT;

/// What the log line of one request says about the request itself.
pub struct Seen {
    method: Method,
    /// The request target (cloning a `Uri` shares its bytes); redacted only when the line is written.
    uri: Uri,
    /// The request id (also on the request and the answer).
    id: HeaderValue,
    started: Instant,
}

impl Seen {
    /// Notes the request; takes its `X-Request-Id` or sets a new one in `headers`.
    pub fn new(method: &Method, uri: Uri, headers: &mut HeaderMap) -> Seen {
        let id = match headers.get(&REQUEST_ID) {
            Some(v) if usable(v) => v.clone(),
            _ => {
                let id = new_id();
                headers.insert(REQUEST_ID, id.clone());
                id
            }
        };
        Seen {
            method: method.clone(),
            uri,
            id,
            started: Instant::now(),
        }
    }

    /// The request id, for the answer's `X-Request-Id`.
    pub fn id(&self) -> &HeaderValue {
        &self.id
    }

    /// When the request arrived.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The path with its query, the values of `redact`'s parameters replaced.
    fn target(&self, redact: &[String]) -> String {
        match self.uri.query() {
            Some(q) => format!("{}?{}", self.uri.path(), redacted(q, redact)),
            None => self.uri.path().to_string(),
        }
    }

    /// Writes the request's log line (nothing is formatted when the level leaves it out).
    pub fn log(&self, redact: &[String], route: &str, upstream: &str, status: StatusCode, outcome: Outcome) {
        if !tracing::enabled!(target: "outpost::request", tracing::Level::INFO) {
            return;
        }
        tracing::info!(
            target: "outpost::request",
            id = self.id.to_str().unwrap_or("-"),
            method = %self.method,
            path = self.target(redact).as_str(),
            route,
            upstream,
            status = status.as_u16(),
            cache = outcome.as_str(),
            ms = ms_2dp(self.started.elapsed()),
        );
    }
}

/// An id the app sent is kept when it is short, visible ASCII (it goes into logs and upstream as is).
fn usable(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic())
}

fn new_id() -> HeaderValue {
    let mut buf = [0u8; 16];
    let n: u64 = rand::random();
    for (i, b) in buf.iter_mut().enumerate() {
        *b = b"0123456789abcdef"[((n >> (60 - 4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&buf).unwrap_or(HeaderValue::from_static("-"))
}

/// `query` with the value of every parameter named in `secrets` (ASCII case-insensitive, as written or
/// percent-decoded) replaced by `REDACTED`.
pub fn redacted(query: &str, secrets: &[String]) -> String {
    let mut out = String::with_capacity(query.len());
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        let (name, value) = match pair.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (pair, None),
        };
        let decoded: String = form_urlencoded::parse(name.as_bytes())
            .next()
            .map(|(n, _)| n.into_owned())
            .unwrap_or_default();
        let secret = secrets
            .iter()
            .any(|s| s.eq_ignore_ascii_case(name) || s.eq_ignore_ascii_case(&decoded));
        match (secret, value) {
            (true, Some(_)) => {
                out.push_str(name);
                out.push_str("=REDACTED");
            }
            _ => out.push_str(pair),
        }
    }
    out
}

/// Milliseconds with two decimals (`ms=1.25`, a number in JSON logs too): rounding the value is cheaper
/// than formatting it, and nobody reads nanoseconds in a request log.
fn ms_2dp(d: std::time::Duration) -> f64 {
    (d.as_micros() as f64 / 10.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn request_log_durations_have_two_decimals() {
        assert_eq!(ms_2dp(Duration::from_micros(1254)), 1.25);
        assert_eq!(ms_2dp(Duration::from_micros(1256)), 1.26);
        assert_eq!(ms_2dp(Duration::from_nanos(999)), 0.0);
        assert_eq!(ms_2dp(Duration::from_secs(2)), 2000.0);
    }

    #[test]
    fn secret_query_parameters_are_redacted() {
        let secrets: Vec<String> = DEFAULT_REDACT.iter().map(|s| s.to_string()).collect();
        let q = "X-Amz-Algorithm=AWS4&X-Amz-Credential=AKIA%2F2026&X-Amz-Signature=abc123&page=2";
        assert_eq!(
            redacted(q, &secrets),
            "X-Amz-Algorithm=AWS4&X-Amz-Credential=REDACTED&X-Amz-Signature=REDACTED&page=2"
        );
        assert_eq!(
            redacted("api%5Fkey=s3cret&flag&x=", &secrets),
            "api%5Fkey=REDACTED&flag&x="
        );
        assert_eq!(
            redacted("token&a=b", &secrets),
            "token&a=b",
            "a bare name has no value to hide"
        );
        assert_eq!(redacted("mine=1", &["MINE".to_string()]), "mine=REDACTED");
    }

    #[test]
    fn a_usable_request_id_is_kept_and_a_missing_or_odd_one_replaced() {
        let mut h = HeaderMap::new();
        h.insert(REQUEST_ID, HeaderValue::from_static("app-42"));
        let seen = Seen::new(&Method::GET, Uri::from_static("/a"), &mut h);
        assert_eq!(seen.id(), "app-42");
        let mut h = HeaderMap::new();
        h.insert(REQUEST_ID, HeaderValue::from_static("has space"));
        let seen = Seen::new(&Method::GET, Uri::from_static("/a?k=v&token=t"), &mut h);
        assert_eq!(seen.id().len(), 16);
        assert_eq!(h.get(REQUEST_ID), Some(seen.id()), "the new id goes upstream");
        assert_eq!(seen.target(&["token".to_string()]), "/a?k=v&token=REDACTED");
    }
}
