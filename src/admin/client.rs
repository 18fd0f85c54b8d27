//! A tiny loopback HTTP client for the CLI (`outpost status`) and the demo story.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::body::{self, ProxyBody};

/// A client error, for people.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No answer (refused, timed out, broken).
    #[error("{0}")]
    Transport(String),
    /// The answer was not the JSON expected.
    #[error("bad answer: {0}")]
    Answer(String),
}

/// A plain-HTTP client with a per-request timeout.
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpConnector, ProxyBody>,
    timeout: Duration,
}

/// A whole response, read into memory (only for small answers in the CLI, demo and tests).
#[derive(Debug)]
pub struct Collected {
    /// Status and headers.
    pub head: http::response::Parts,
    /// The body.
    pub body: Bytes,
}

impl Collected {
    /// The body parsed as JSON (null when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl HttpClient {
    /// A client whose requests give up after `timeout`.
    pub fn new(timeout: Duration) -> HttpClient {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(timeout));
        HttpClient {
            inner: Client::builder(TokioExecutor::new()).build(http),
            timeout,
        }
    }

    /// Sends `req` and returns the response head with a streaming body.
    pub async fn send(&self, req: Request<ProxyBody>) -> Result<Response<hyper::body::Incoming>, ClientError> {
        match tokio::time::timeout(self.timeout, self.inner.request(req)).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(ClientError::Transport(crate::upstream::error_chain(&e))),
            Err(_) => Err(ClientError::Transport(format!("no answer within {:?}", self.timeout))),
        }
    }

    /// Sends a request and reads the whole answer.
    pub async fn call(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body_bytes: Option<Vec<u8>>,
    ) -> Result<Collected, ClientError> {
        let mut b = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b
            .body(body_bytes.map(body::full).unwrap_or_else(body::empty))
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        let resp = self.send(req).await?;
        let (head, incoming) = resp.into_parts();
        let body = tokio::time::timeout(self.timeout, incoming.collect())
            .await
            .map_err(|_| ClientError::Transport("body timed out".into()))?
            .map_err(|e| ClientError::Transport(crate::upstream::error_chain(&e)))?
            .to_bytes();
        Ok(Collected { head, body })
    }
}

/// GET a JSON document from the admin API at `addr` with the admin token.
pub async fn get_json(addr: SocketAddr, path: &str, token: &str) -> Result<Value, ClientError> {
    send_admin(addr, Method::GET, path, token, None).await
}

/// Sends an admin call with the token and returns the JSON answer (errors carry the server's message).
pub async fn admin_call(addr: SocketAddr, method: Method, path: &str, token: &str) -> Result<Value, ClientError> {
    send_admin(addr, method, path, token, None).await
}

/// Like [`admin_call`] with a JSON body.
pub async fn admin_call_body(
    addr: SocketAddr,
    method: Method,
    path: &str,
    token: &str,
    body: &Value,
) -> Result<Value, ClientError> {
    send_admin(addr, method, path, token, Some(body)).await
}

async fn send_admin(
    addr: SocketAddr,
    method: Method,
    path: &str,
    token: &str,
    body: Option<&Value>,
) -> Result<Value, ClientError> {
    let c = HttpClient::new(Duration::from_secs(30));
    let auth = format!("Bearer {token}");
    let r = c
        .call(
            method,
            &format!("http://{addr}{path}"),
            &[("authorization", &auth), ("content-type", "application/json")],
            body.map(|b| b.to_string().into_bytes()),
        )
        .await?;
    let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    if !r.head.status.is_success() {
        return Err(ClientError::Answer(format!(
            "{}: {}",
            r.head.status,
            v["error"].as_str().unwrap_or("?")
        )));
    }
    Ok(v)
}

/// `/api/stats` for people.
pub fn render_stats(v: &Value) -> String {
    use crate::units::human_size;
    let n = |x: &Value| x.as_u64().unwrap_or(0);
    let mut out = format!(
        "cache: {} of {} ({}), dedup saved {}, queue {} pending\n",
        human_size(n(&v["size_bytes"])),
        human_size(n(&v["max_size"])),
        if v["storing"].as_bool().unwrap_or(true) {
            "storing"
        } else {
            "FULL: not storing"
        },
        human_size(n(&v["dedup_saved_bytes"])),
        n(&v["queue_depth"])
    );
    let rows: Vec<[String; 8]> = v["kinds"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, s)| {
            let size = match s["limit"].as_u64() {
                Some(limit) => format!("{} of {}", human_size(n(&s["bytes"])), human_size(limit)),
                None => human_size(n(&s["bytes"])),
            };
            [
                k.clone(),
                n(&s["entries"]).to_string(),
                size,
                n(&s["hit"]).to_string(),
                n(&s["miss"]).to_string(),
                n(&s["stale"]).to_string(),
                n(&s["offline"]).to_string(),
                format!("{:.0}%", s["hit_rate"].as_f64().unwrap_or(0.0) * 100.0),
            ]
        })
        .collect();
    let head = ["kind", "entries", "size", "hit", "miss", "stale", "offline", "hit rate"].map(String::from);
    let widths: Vec<usize> = (0..8)
        .map(|c| {
            std::iter::once(&head)
                .chain(&rows)
                .map(|r| r[c].len())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in std::iter::once(&head).chain(&rows) {
        let mut line = format!("{:<w$}", row[0], w = widths[0]);
        for c in 1..8 {
            line.push_str(&format!("  {:>w$}", row[c], w = widths[c]));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    for (r, e) in v["evictions"].as_object().into_iter().flatten() {
        if n(&e["count"]) > 0 {
            out.push_str(&format!(
                "evicted ({r}): {} items, {}\n",
                n(&e["count"]),
                human_size(n(&e["bytes"]))
            ));
        }
    }
    out
}

/// `/api/status` as a one-screen summary.
pub fn render_status(v: &Value) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "outpost {}  listening on {}  data {}\n",
        v["version"].as_str().unwrap_or("?"),
        v["listen"].as_str().unwrap_or("?"),
        v["data_dir"].as_str().unwrap_or("?")
    ));
    out.push_str(&format!(
        "cache: {} entries, {} bytes of {} allowed\n",
        v["cache"]["entries"], v["cache"]["bytes"], v["max_size"]
    ));
    out.push_str(&format!(
        "queue: {} pending, state {}\n",
        v["queue"]["depth"],
        v["queue"]["state"]["state"].as_str().unwrap_or("?")
    ));
    out.push_str("upstreams:\n");
    for u in v["upstreams"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  {:<12} {}{}\n",
            u["upstream"].as_str().unwrap_or("?"),
            if u["online"].as_bool().unwrap_or(false) {
                "online"
            } else {
                "OFFLINE"
            },
            u["last_error"]
                .as_str()
                .map(|e| format!("  (last error: {e})"))
                .unwrap_or_default()
        ));
    }
    out.push_str(&format!(
        "admin token file: {}\n",
        v["admin_token_file"].as_str().unwrap_or("?")
    ));
    out
}
