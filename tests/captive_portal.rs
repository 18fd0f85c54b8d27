//! A Wi-Fi login page between Outpost and the backend: it answers every request with `200 text/html`.
//! Queued writes must not count as delivered (they were lost before: "queued write delivered", never
//! applied), and with `probe_expect` the portal's pages are never taken for the backend's answers.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::wait_until;
use http::{Method, Request, Response};
use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use outpost::admin::client::{get_json, Collected, HttpClient};
use outpost::body::{self, ProxyBody};
use outpost::config::{Config, Overrides};
use outpost::Outpost;
use tokio::net::TcpListener;

const UP: u8 = 0;
const RESET: u8 = 1;
const PORTAL: u8 = 2;

/// The backend (JSON, `x-api-version` on every answer, records the writes it applies), or a connection
/// reset, or a login page, as `mode` says.
struct Origin {
    addr: SocketAddr,
    mode: Arc<AtomicU8>,
    portal_hits: Arc<AtomicUsize>,
    applied: Arc<Mutex<Vec<String>>>,
}

impl Origin {
    async fn start() -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(AtomicU8::new(UP));
        let portal_hits = Arc::new(AtomicUsize::new(0));
        let applied = Arc::new(Mutex::new(Vec::new()));
        let (m, p, a) = (mode.clone(), portal_hits.clone(), applied.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                if m.load(Ordering::Relaxed) == RESET {
                    drop(stream);
                    continue;
                }
                let (m, p, a) = (m.clone(), p.clone(), a.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| answer(req, m.clone(), p.clone(), a.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Origin {
            addr,
            mode,
            portal_hits,
            applied,
        }
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::Relaxed);
    }

    fn applied(&self) -> Vec<String> {
        self.applied.lock().unwrap().clone()
    }
}

async fn answer(
    req: Request<hyper::body::Incoming>,
    mode: Arc<AtomicU8>,
    portal_hits: Arc<AtomicUsize>,
    applied: Arc<Mutex<Vec<String>>>,
) -> Result<Response<ProxyBody>, std::convert::Infallible> {
    if mode.load(Ordering::Relaxed) != UP {
        portal_hits.fetch_add(1, Ordering::Relaxed);
        let mut r = Response::new(body::full("<html><body>Welcome to Hotel Wi-Fi. Log in.</body></html>"));
        r.headers_mut()
            .insert("content-type", "text/html; charset=utf-8".parse().unwrap());
        return Ok(r);
    }
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let key = req
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut r = if method == Method::GET {
        Response::new(body::full(r#"{"items":[{"id":"i1"}]}"#))
    } else {
        let mut applied = applied.lock().unwrap();
        // Deduplicated by Idempotency-Key, as a careful backend does; each key is listed once.
        if !applied.iter().any(|a| a.ends_with(&format!("#{key}"))) {
            applied.push(format!("{method} {path} {}#{key}", String::from_utf8_lossy(&body)));
        }
        Response::new(body::full(r#"{"ok":true}"#))
    };
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r.headers_mut().insert("x-api-version", "7".parse().unwrap());
    Ok(r)
}

fn config(origin: SocketAddr, dir: &std::path::Path, expect: bool) -> Config {
    common::init_logs();
    let expect = if expect {
        r#"probe_expect = { status = 200, header = "x-api-version" }"#
    } else {
        ""
    };
    let src = format!(
        r#"
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
data_dir = {dir:?}
default_upstream = "api"
shutdown_grace = "1s"

[queue]
backoff_base = "20ms"
backoff_cap = "200ms"
max_attempts = 10

[upstreams.api]
url = "http://{origin}"
connect_timeout = "500ms"
first_byte_timeout = "2s"
probe_interval = "100ms"
{expect}
"#,
        dir = dir.display().to_string()
    );
    Config::from_toml(&src, "portal.toml", &Overrides::default()).unwrap()
}

/// A PUT with the app's own Idempotency-Key (what makes a write whose outcome is unknown safe to queue).
async fn put(client: &HttpClient, outpost: &Outpost, path: &str, body: &str) -> Collected {
    let key = format!("app-{path}");
    client
        .call(
            Method::PUT,
            &format!("http://{}{path}", outpost.addr()),
            &[("content-type", "application/json"), ("idempotency-key", &key)],
            Some(body.as_bytes().to_vec()),
        )
        .await
        .unwrap()
}

/// Without any configuration: writes queued while the backend was away are not "delivered" to a login
/// page (and do not use up their attempts there); once the backend is back they arrive, once each.
#[tokio::test]
async fn queued_writes_are_not_delivered_to_a_login_page() {
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let outpost = Outpost::start(config(origin.addr, dir.path(), false)).await.unwrap();
    let client = HttpClient::new(Duration::from_secs(10));
    origin.set(RESET);
    for (i, body) in [r#"{"n":1}"#, r#"{"n":2}"#].iter().enumerate() {
        let r = put(&client, &outpost, &format!("/api/items/i{i}"), body).await;
        assert_eq!(r.head.status, 202, "{}", String::from_utf8_lossy(&r.body));
    }
    origin.set(PORTAL);
    // Long enough for many replay attempts at this backoff (20-200 ms), more than max_attempts.
    wait_until("replays to meet the portal", 10, || {
        origin.portal_hits.load(Ordering::Relaxed) >= 8
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(origin.applied().is_empty());
    assert_eq!(outpost.outbox().depth(), 2, "both writes still queued");
    let items = outpost.outbox().list().unwrap();
    assert!(
        items
            .iter()
            .all(|i| i.state == outpost::queue::ItemState::Pending && i.attempts < 10),
        "the portal used up no attempts: {items:?}"
    );
    origin.set(UP);
    wait_until("the queue to drain", 15, || outpost.outbox().depth() == 0).await;
    let applied = origin.applied();
    assert_eq!(applied.len(), 2, "{applied:?}");
    assert!(applied[0].starts_with(r#"PUT /api/items/i0 {"n":1}"#), "{applied:?}");
    assert!(applied[1].starts_with(r#"PUT /api/items/i1 {"n":2}"#), "{applied:?}");
    outpost.shutdown().await;
}

/// With `probe_expect`: a portal page never counts as the backend's answer, for reads too: the stored
/// JSON keeps being served (never replaced by the portal's HTML), writes are queued, and the probe keeps
/// the upstream offline until the backend answers again.
#[tokio::test]
async fn with_probe_expect_a_portal_is_offline_for_reads_writes_and_the_probe() {
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let outpost = Outpost::start(config(origin.addr, dir.path(), true)).await.unwrap();
    let client = HttpClient::new(Duration::from_secs(10));
    let url = format!("http://{}/api/items", outpost.addr());
    let first = client.call(Method::GET, &url, &[], None).await.unwrap();
    assert_eq!(first.head.status, 200);
    origin.set(PORTAL);
    let r = client.call(Method::GET, &url, &[], None).await.unwrap();
    assert_eq!(r.head.status, 200);
    assert_eq!(r.body, first.body, "the stored JSON, not the login page");
    assert_eq!(r.header("x-outpost-cache"), Some("OFFLINE"));
    let token = common::admin_token(dir.path());
    let status = get_json(outpost.admin_addr(), "/api/status", &token).await.unwrap();
    let up = &status["upstreams"][0];
    assert_eq!(up["online"], false, "{status}");
    assert!(
        up["last_error"].as_str().unwrap_or("").contains("captive portal"),
        "{status}"
    );
    let w = put(&client, &outpost, "/api/items/i1", r#"{"n":1}"#).await;
    assert_eq!(w.head.status, 202);
    // The probe meets the portal again and again; the upstream stays offline.
    let hits = origin.portal_hits.load(Ordering::Relaxed);
    wait_until("probes to meet the portal", 10, || {
        origin.portal_hits.load(Ordering::Relaxed) >= hits + 3
    })
    .await;
    assert!(!outpost.upstreams().iter().next().unwrap().connectivity().is_online());
    assert!(origin.applied().is_empty());
    origin.set(UP);
    wait_until("the queue to drain", 15, || outpost.outbox().depth() == 0).await;
    assert_eq!(origin.applied().len(), 1);
    let r = client.call(Method::GET, &url, &[], None).await.unwrap();
    assert_eq!(r.body, first.body);
    outpost.shutdown().await;
}
