//! CORS for answers Outpost makes itself, so a web app on another origin can read them: its queued
//! write's `202`, an offline `503`, a `504` for only-if-cached, a `502`/`504` upstream error. Outpost
//! has no CORS policy of its own: it repeats what the upstream last said to that `Origin`.
//!
//! - From every upstream answer to a request with `Origin` that carries `Access-Control-Allow-Origin`,
//!   the answer's CORS fields are remembered per (upstream, origin) and added to Outpost's own answers
//!   to that origin (never to an upstream answer that left them out: that is the upstream's call).
//! - From every successful preflight (`OPTIONS` with `Access-Control-Request-Method`), its status and
//!   CORS fields are remembered per (upstream, route, origin); while the upstream cannot be reached, the
//!   preflight is answered from them, so the page can send the write that Outpost then queues.
//!
//! Both are kept in the data dir (written only when they change), so they hold after a restart.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use serde::{Deserialize, Serialize};

use crate::body::{self, ProxyBody};
use crate::store::Store;

/// Fields an actual answer's CORS consists of.
const ANSWER_FIELDS: [HeaderName; 3] = [
    header::ACCESS_CONTROL_ALLOW_ORIGIN,
    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
    header::ACCESS_CONTROL_EXPOSE_HEADERS,
];

/// Fields a preflight answer's CORS consists of.
const PREFLIGHT_FIELDS: [HeaderName; 6] = [
    header::ACCESS_CONTROL_ALLOW_ORIGIN,
    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
    header::ACCESS_CONTROL_ALLOW_METHODS,
    header::ACCESS_CONTROL_ALLOW_HEADERS,
    header::ACCESS_CONTROL_MAX_AGE,
    header::VARY,
];

/// What was learned for one key: a status (preflights) and the fields, as text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Learned {
    status: u16,
    fields: Vec<(String, String)>,
}

/// True for a CORS preflight request.
pub fn is_preflight(method: &http::Method, headers: &HeaderMap) -> bool {
    method == http::Method::OPTIONS
        && headers.contains_key(header::ORIGIN)
        && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// The remembered CORS answers.
pub struct Cors {
    store: Arc<Store>,
    known: Mutex<HashMap<String, Option<Learned>>>,
}

impl Cors {
    /// Remembers into (and recalls from) `store`.
    pub fn new(store: Arc<Store>) -> Cors {
        Cors {
            store,
            known: Mutex::new(HashMap::new()),
        }
    }

    fn recall(&self, key: &str) -> Option<Learned> {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = known.get(key) {
            return v.clone();
        }
        let stored = self
            .store
            .setting(key)
            .ok()
            .flatten()
            .and_then(|s| serde_json::from_str::<Learned>(&s).ok());
        known.insert(key.to_string(), stored.clone());
        stored
    }

    fn remember(&self, key: String, status: StatusCode, headers: &HeaderMap, names: &[HeaderName]) {
        let fields: Vec<(String, String)> = names
            .iter()
            .flat_map(|n| headers.get_all(n).iter().map(move |v| (n, v)))
            .filter_map(|(n, v)| Some((n.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect();
        let learned = Learned {
            status: status.as_u16(),
            fields,
        };
        if self.recall(&key).as_ref() == Some(&learned) {
            return;
        }
        if let Ok(text) = serde_json::to_string(&learned) {
            if let Err(e) = self.store.set_setting(&key, Some(&text)) {
                tracing::debug!(error = %e, "storing CORS fields failed; kept in memory");
            }
        }
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, Some(learned));
    }

    /// Learns from an upstream answer to a request from `origin`.
    pub fn learn(&self, upstream: &str, route: &str, origin: &str, preflight: bool, resp: &Response<ProxyBody>) {
        if !resp.headers().contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN) {
            return;
        }
        if preflight {
            if resp.status().is_success() {
                let key = format!("cors-preflight:{upstream}\0{route}\0{origin}");
                self.remember(key, resp.status(), resp.headers(), &PREFLIGHT_FIELDS);
            }
        } else {
            let key = format!("cors:{upstream}\0{origin}");
            self.remember(key, resp.status(), resp.headers(), &ANSWER_FIELDS);
        }
    }

    /// The remembered preflight answer for this upstream, route and origin.
    pub fn preflight(&self, upstream: &str, route: &str, origin: &str) -> Option<Response<ProxyBody>> {
        let learned = self.recall(&format!("cors-preflight:{upstream}\0{route}\0{origin}"))?;
        let mut r = Response::new(body::empty());
        *r.status_mut() = StatusCode::from_u16(learned.status).unwrap_or(StatusCode::NO_CONTENT);
        add_fields(r.headers_mut(), &learned.fields);
        Some(r)
    }

    /// Adds the remembered CORS fields to an answer Outpost made itself.
    pub fn decorate(&self, upstream: &str, origin: &str, resp: &mut Response<ProxyBody>) {
        if resp.headers().contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN) {
            return;
        }
        if let Some(learned) = self.recall(&format!("cors:{upstream}\0{origin}")) {
            add_fields(resp.headers_mut(), &learned.fields);
            resp.headers_mut()
                .append(header::VARY, HeaderValue::from_static("Origin"));
        }
    }
}

fn add_fields(headers: &mut HeaderMap, fields: &[(String, String)]) {
    for (n, v) in fields {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(n.as_bytes()), HeaderValue::from_str(v)) {
            headers.append(n, v);
        }
    }
}
