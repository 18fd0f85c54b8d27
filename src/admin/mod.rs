//! The admin API on its own (loopback by default) port: health and status for people and tools.
//!
//! Read-only for now; state-changing calls arrive with the cache and queue features and will require the
//! admin token.

pub mod client;

use std::sync::Arc;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use serde_json::json;

use crate::body::{self, ProxyBody};
use crate::config::Config;
use crate::proxy::json_error;
use crate::upstream::Upstreams;

/// Admin request handler.
pub struct Admin {
    upstreams: Arc<Upstreams>,
    config: Arc<Config>,
}

impl Admin {
    /// Builds the handler.
    pub fn new(upstreams: Arc<Upstreams>, config: Arc<Config>) -> Admin {
        Admin { upstreams, config }
    }

    /// Answers one admin request.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<ProxyBody> {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/healthz") => json_ok(json!({"ok": true})),
            (&Method::GET, "/api/status") => {
                let ups: Vec<_> = self.upstreams.iter().map(|u| u.connectivity().snapshot()).collect();
                json_ok(json!({
                    "version": env!("CARGO_PKG_VERSION"),
                    "listen": self.config.listen.to_string(),
                    "data_dir": self.config.data_dir.display().to_string(),
                    "max_size": self.config.max_size,
                    "upstreams": ups,
                }))
            }
            (_, "/healthz") | (_, "/api/status") => {
                json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed", None)
            }
            _ => json_error(StatusCode::NOT_FOUND, "no such admin endpoint", None),
        }
    }
}

fn json_ok(v: serde_json::Value) -> Response<ProxyBody> {
    let mut resp = Response::new(body::full(v.to_string()));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}
