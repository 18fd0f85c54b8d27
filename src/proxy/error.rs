//! The proxy's one error type, and the one place it becomes an answer.
//!
//! Every failure on the request path says where it came from: the client (downstream: a request we
//! refuse), the upstream (unreachable, silent, broken), or Outpost itself (internal: the outbox could
//! not store a write). [`ProxyError::into_response`] is the only code that turns one into a status and a
//! JSON body.

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use serde_json::json;

use crate::body::{json_error, ProxyBody};
use crate::upstream::UpstreamError;

/// Seconds a client is told to wait before retrying an offline miss.
const OFFLINE_RETRY_AFTER: &str = "5";

/// Seconds a client is told to wait when the data dir did not take a write (space must be freed).
const STORAGE_RETRY_AFTER: &str = "30";

/// Who a failure is attributed to (for logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The client's request.
    Downstream,
    /// The upstream (or the network to it).
    Upstream,
    /// Outpost's own storage.
    Internal,
}

/// A failed request.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The request is refused before routing; the connection is closed after the answer (what follows
    /// on it cannot be trusted to start where we think it does).
    #[error("{0}")]
    BadRequest(&'static str),
    /// The request body broke while being read.
    #[error("request body could not be read")]
    BodyUnreadable,
    /// The request body paused longer than `body_read_timeout`, or a write body took longer than that in
    /// all: 408, connection closed.
    #[error("request body too slow: not sent within body_read_timeout")]
    BodyTimeout,
    /// Outpost holds as many unfinished write bodies as `max_buffered_bodies` allows: 503 + Retry-After.
    #[error("too many unfinished write bodies at once; retry shortly")]
    Overloaded,
    /// An exchange with the upstream failed: 504 when it accepted and went silent, else 502.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The upstream answered with a body Outpost refuses to pass or store (a coded body that does not
    /// decode, or inflates like a bomb): 502.
    #[error("upstream {upstream} sent an unusable answer: {reason}")]
    Garbage {
        /// Upstream name.
        upstream: String,
        /// Why, in full.
        reason: String,
    },
    /// A cacheable request with nothing stored while the upstream is unreachable: 503 + Retry-After.
    #[error("offline")]
    Offline {
        /// Upstream name.
        upstream: String,
        /// Why it is considered unreachable, when known.
        detail: Option<String>,
    },
    /// only-if-cached or cache-only with nothing stored: 504.
    #[error("not in the cache (only-if-cached / cache-only)")]
    NotCached {
        /// Upstream name.
        upstream: String,
    },
    /// Only a stale answer is stored, its origin forbade serving it stale and the route keeps to the
    /// RFC (`offline_stale = "rfc"`), and the origin could not be asked: 504.
    #[error("the stored answer is stale and its origin forbids serving it stale (offline_stale = \"rfc\")")]
    StaleForbidden {
        /// Upstream name.
        upstream: String,
        /// Why the origin could not be asked, when known.
        detail: Option<String>,
    },
    /// A write that can neither be sent nor queued (too large to queue while offline): 503.
    #[error("{reason}")]
    Unqueueable {
        /// Upstream name.
        upstream: String,
        /// Why, in full.
        reason: String,
    },
    /// The data dir did not take a write that had to be durable: 507 when its disk is full, else 503;
    /// both with Retry-After. The write was not queued.
    #[error("{reason}")]
    Storage {
        /// Upstream name.
        upstream: String,
        /// Why, in full (naming the data dir).
        reason: String,
        /// The disk is full.
        full: bool,
    },
}

impl ProxyError {
    /// The miss answer for a failed fetch: unreachable becomes an offline 503, anything else a 502/504.
    pub fn miss(e: UpstreamError) -> ProxyError {
        match e {
            UpstreamError::Connect { .. } | UpstreamError::Timeout { .. } => ProxyError::Offline {
                upstream: e.upstream().to_string(),
                detail: Some(e.to_string()),
            },
            UpstreamError::Broken { .. } => ProxyError::Upstream(e),
        }
    }

    /// Where the failure came from.
    pub fn fault(&self) -> Fault {
        match self {
            ProxyError::BadRequest(_) | ProxyError::BodyUnreadable | ProxyError::BodyTimeout => Fault::Downstream,
            ProxyError::Overloaded => Fault::Internal,
            ProxyError::Upstream(_)
            | ProxyError::Garbage { .. }
            | ProxyError::Offline { .. }
            | ProxyError::NotCached { .. }
            | ProxyError::StaleForbidden { .. } => Fault::Upstream,
            ProxyError::Unqueueable { .. } => Fault::Upstream,
            ProxyError::Storage { .. } => Fault::Internal,
        }
    }

    /// The answer.
    pub fn into_response(self) -> Response<ProxyBody> {
        match self {
            ProxyError::BadRequest(reason) => {
                let mut resp = json_error(StatusCode::BAD_REQUEST, reason, None);
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                resp
            }
            ProxyError::BodyUnreadable => json_error(StatusCode::BAD_REQUEST, "request body could not be read", None),
            ProxyError::BodyTimeout => {
                let mut resp = json_error(StatusCode::REQUEST_TIMEOUT, &self.to_string(), None);
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                resp
            }
            ProxyError::Overloaded => {
                let mut resp = json_error(StatusCode::SERVICE_UNAVAILABLE, &self.to_string(), None);
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                resp
            }
            ProxyError::Upstream(e) => {
                let status = match e {
                    UpstreamError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
                    _ => StatusCode::BAD_GATEWAY,
                };
                json_error(status, &e.to_string(), Some(e.upstream()))
            }
            ProxyError::Garbage { upstream, reason } => json_error(
                StatusCode::BAD_GATEWAY,
                &format!("unusable upstream answer: {reason}"),
                Some(&upstream),
            ),
            ProxyError::Offline { upstream, detail } => {
                let mut resp = json_error(StatusCode::SERVICE_UNAVAILABLE, "offline", Some(&upstream));
                if let Some(detail) = detail {
                    let v = json!({"error": "offline", "upstream": upstream, "detail": detail});
                    *resp.body_mut() = crate::body::full(v.to_string());
                }
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static(OFFLINE_RETRY_AFTER));
                resp
            }
            ProxyError::StaleForbidden {
                ref upstream,
                ref detail,
            } => {
                let mut v = json!({"error": self.to_string(), "upstream": upstream});
                if let Some(d) = detail {
                    v["detail"] = json!(d);
                }
                let mut resp = json_error(StatusCode::GATEWAY_TIMEOUT, "", Some(upstream));
                *resp.body_mut() = crate::body::full(v.to_string());
                resp
            }
            ProxyError::NotCached { upstream } => json_error(
                StatusCode::GATEWAY_TIMEOUT,
                "not in the cache (only-if-cached / cache-only)",
                Some(&upstream),
            ),
            ProxyError::Storage { upstream, reason, full } => {
                let status = if full {
                    StatusCode::INSUFFICIENT_STORAGE
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                let mut resp = json_error(status, &reason, Some(&upstream));
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static(STORAGE_RETRY_AFTER));
                resp
            }
            ProxyError::Unqueueable { upstream, reason } => {
                json_error(StatusCode::SERVICE_UNAVAILABLE, &reason, Some(&upstream))
            }
        }
    }
}
