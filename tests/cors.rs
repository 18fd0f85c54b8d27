//! A web app on another origin, in a real headless Chromium, talking to its API through Outpost: the
//! page's JSON POST needs a preflight. Online, the preflight and the write reach the backend; offline,
//! Chromium's preflight is answered from the one Outpost kept, the write is queued and the page can read
//! its `202`, and an offline miss is a readable `503`, not a network error.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use outpost::body::{self, ProxyBody};
use outpost::config::{Config, Overrides};
use outpost::server::{Server, ShutdownSignal};
use outpost::Outpost;
use tokio::net::TcpListener;

const PAGE: &str = "<!doctype html><title>notes</title><p id=ready>ready</p>";

/// Serves `handler` on 127.0.0.1:0 until the signal triggers.
async fn serve<F, Fut>(handler: F) -> (SocketAddr, ShutdownSignal, Server)
where
    F: Fn(Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = ShutdownSignal::new();
    let server = Server::spawn(
        "test",
        listener,
        stop.clone(),
        Duration::from_millis(200),
        Duration::from_secs(5),
        move |req, _| handler(req),
    );
    (addr, stop, server)
}

/// A Rails-like API with rack-cors: preflights allowed for the page's origin, `max-age=0` so Chromium
/// asks every time.
async fn api(
    req: Request<hyper::body::Incoming>,
    page_origin: String,
    preflights: Arc<AtomicUsize>,
) -> Response<ProxyBody> {
    let origin = req.headers().get(header::ORIGIN).cloned();
    let mut r = match (req.method(), req.uri().path()) {
        (&Method::OPTIONS, _) => {
            preflights.fetch_add(1, Ordering::Relaxed);
            let mut r = Response::new(body::empty());
            *r.status_mut() = StatusCode::NO_CONTENT;
            let h = r.headers_mut();
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, POST"),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("content-type"),
            );
            h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("0"));
            r
        }
        (&Method::POST, "/api/notes") => {
            let mut r = Response::new(body::full(r#"{"saved":true}"#));
            *r.status_mut() = StatusCode::CREATED;
            r
        }
        _ => {
            let mut r = Response::new(body::full(r#"{"notes":[]}"#));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r
        }
    };
    if origin.as_ref().is_some_and(|o| o == page_origin.as_str()) {
        let h = r.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.unwrap());
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    r
}

/// Runs `fetch` in the page and returns `{status, body}` or `{error}`.
async fn page_fetch(browser: &fantoccini::Client, url: &str, method: &str) -> serde_json::Value {
    let script = r#"
        const [url, method, done] = arguments;
        const init = method === 'POST'
            ? {method, headers: {'content-type': 'application/json'}, body: '{"text":"offline note"}'}
            : {method};
        fetch(url, init)
            .then(async r => done({status: r.status, body: await r.text()}))
            .catch(e => done({error: String(e)}));
    "#;
    browser
        .execute_async(script, vec![url.into(), method.into()])
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_app_reads_its_queued_writes_202_and_offline_answers_through_cors() {
    let (page_addr, _page_stop, _page) = serve(|_req| async {
        let mut r = Response::new(body::full(PAGE));
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
        r
    })
    .await;
    let page_origin = format!("http://{page_addr}");
    let preflights = Arc::new(AtomicUsize::new(0));
    let (o, p) = (page_origin.clone(), preflights.clone());
    let (api_addr, api_stop, api_server) = serve(move |req| api(req, o.clone(), p.clone())).await;

    let dir = tempfile::tempdir().unwrap();
    let src = format!(
        "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ndata_dir = {:?}\nshutdown_grace = \"1s\"\n[upstreams.api]\nurl = \"http://{api_addr}\"\nconnect_timeout = \"1s\"\n",
        dir.path().display().to_string()
    );
    let config = Config::from_toml(&src, "cors.toml", &Overrides::default()).unwrap();
    let outpost = Outpost::start(config).await.unwrap();
    let notes = format!("http://{}/api/notes", outpost.addr());

    let browser = common::browser::Browser::start().await;
    let b = &browser.client;
    b.goto(&format!("{page_origin}/")).await.unwrap();

    // Online: Chromium preflights, the backend answers both.
    let r = page_fetch(b, &notes, "POST").await;
    assert_eq!(r["status"], 201, "{r}");
    assert_eq!(
        preflights.load(Ordering::Relaxed),
        1,
        "the preflight reached the backend"
    );
    let r = page_fetch(b, &notes, "GET").await;
    assert_eq!(r["status"], 200, "{r}");

    // Offline: the preflight is answered from what Outpost kept; the page reads its queued 202.
    api_stop.trigger();
    api_server.finished().await;
    let r = page_fetch(b, &notes, "POST").await;
    assert_eq!(r["status"], 202, "the page can read its queued write: {r}");
    assert!(r["body"].as_str().unwrap().contains("queued"), "{r}");
    assert_eq!(outpost.outbox().depth(), 1);
    // An offline miss is a 503 the page can read, not a CORS failure.
    let r = page_fetch(b, &format!("http://{}/api/never-seen", outpost.addr()), "GET").await;
    assert_eq!(r["status"], 503, "{r}");

    // Another origin gets nothing of this one's: no stored preflight, no CORS fields on the error.
    let client = outpost::admin::client::HttpClient::new(Duration::from_secs(5));
    let evil = client
        .call(
            Method::OPTIONS,
            &notes,
            &[
                ("origin", "http://evil.example"),
                ("access-control-request-method", "POST"),
            ],
            None,
        )
        .await
        .unwrap();
    assert!(evil.head.status.is_server_error(), "{}", evil.head.status);
    assert!(!evil.head.headers.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
    browser.client.clone().close().await.unwrap();
    outpost.shutdown().await;
}
