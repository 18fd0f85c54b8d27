//! The cache flow over the in-memory storage seam (no data dir): a real origin on 127.0.0.1:0, the real
//! forwarder and upstream client, `MemoryStorage` behind the cache. Each test drives `Flow::run` the
//! way the proxy does and checks the outcome, what reached the origin, and what was stored.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use outpost::body::{self, ProxyBody};
use outpost::cache::policy::CacheRole;
use outpost::cache::{Cache, Outcome};
use outpost::config::{Config, Overrides};
use outpost::proxy::{Flow, Forwarder, ProxyError, RequestHead};
use outpost::server::{Server, ShutdownSignal};
use outpost::store::{MemoryStorage, Unbounded};
use outpost::upstream::Upstreams;

/// What the origin answers per path: status, headers, body. `If-None-Match` matching the `etag`
/// header gets a 304.
type Script = Arc<Mutex<HashMap<String, (u16, Vec<(&'static str, String)>, Vec<u8>)>>>;

/// Streamed answers: the test feeds the body chunk by chunk.
type Streams = Arc<Mutex<HashMap<String, tokio::sync::mpsc::Receiver<bytes::Bytes>>>>;

struct Origin {
    addr: SocketAddr,
    script: Script,
    streams: Streams,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    delay_ms: Arc<AtomicUsize>,
    _server: Server,
    _stop: ShutdownSignal,
}

impl Origin {
    async fn start() -> Origin {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let script: Script = Arc::default();
        let streams: Streams = Arc::default();
        let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let delay_ms = Arc::new(AtomicUsize::new(0));
        let stop = ShutdownSignal::new();
        let (s, h, d, st) = (script.clone(), hits.clone(), delay_ms.clone(), streams.clone());
        let server = Server::spawn(
            "origin",
            listener,
            stop.clone(),
            Duration::from_secs(1),
            Duration::from_secs(5),
            move |req: Request<hyper::body::Incoming>, _| {
                let (s, h, d, st) = (s.clone(), h.clone(), d.clone(), st.clone());
                async move {
                    let path = req.uri().path().to_string();
                    *h.lock().unwrap().entry(path.clone()).or_default() += 1;
                    if let Some(rx) = st.lock().unwrap().remove(&path) {
                        let chunks = futures_util::stream::unfold(rx, |mut rx| async move {
                            let b = rx.recv().await?;
                            Some((Ok::<_, outpost::body::BoxError>(http_body::Frame::data(b)), rx))
                        });
                        let mut r = Response::new(http_body_util::StreamBody::new(chunks).boxed());
                        r.headers_mut()
                            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
                        return r;
                    }
                    let delay = d.load(Ordering::Relaxed);
                    if delay > 0 {
                        tokio::time::sleep(Duration::from_millis(delay as u64)).await;
                    }
                    let Some((status, headers, body)) = s.lock().unwrap().get(&path).cloned() else {
                        let mut r = Response::new(body::full("no such path"));
                        *r.status_mut() = StatusCode::NOT_FOUND;
                        return r;
                    };
                    let etag = headers.iter().find(|(n, _)| *n == "etag").map(|(_, v)| v.clone());
                    let inm = req.headers().get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok());
                    let not_modified = etag.is_some() && inm == etag.as_deref();
                    let range = req
                        .headers()
                        .get(header::RANGE)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    let mut r = if not_modified {
                        let mut r = Response::new(body::empty());
                        *r.status_mut() = StatusCode::NOT_MODIFIED;
                        r
                    } else if let Some(range) = range {
                        // Only `bytes=a-b` is needed here.
                        let (a, b) = range.trim_start_matches("bytes=").split_once('-').unwrap();
                        let (a, b): (usize, usize) = (a.parse().unwrap(), b.parse().unwrap());
                        let mut r = Response::new(body::full(body[a..=b].to_vec()));
                        *r.status_mut() = StatusCode::PARTIAL_CONTENT;
                        r.headers_mut().insert(
                            header::CONTENT_RANGE,
                            HeaderValue::from_str(&format!("bytes {a}-{b}/{}", body.len())).unwrap(),
                        );
                        r
                    } else {
                        let mut r = Response::new(body::full(body.clone()));
                        *r.status_mut() = StatusCode::from_u16(status).unwrap();
                        r
                    };
                    for (n, v) in headers {
                        r.headers_mut().insert(n, HeaderValue::from_str(&v).unwrap());
                    }
                    r
                }
            },
        );
        Origin {
            addr,
            script,
            streams,
            hits,
            delay_ms,
            _server: server,
            _stop: stop,
        }
    }

    fn answer(&self, path: &str, status: u16, headers: &[(&'static str, &str)], body: &[u8]) {
        self.script.lock().unwrap().insert(
            path.to_string(),
            (
                status,
                headers.iter().map(|(n, v)| (*n, v.to_string())).collect(),
                body.to_vec(),
            ),
        );
    }

    fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

struct Env {
    origin: Origin,
    storage: Arc<MemoryStorage>,
    forwarder: Arc<Forwarder>,
    flow: Arc<Flow>,
}

impl Env {
    async fn start(routes: &str) -> Env {
        let origin = Origin::start().await;
        let src = format!(
            "[upstreams.api]\nurl = \"http://{}\"\nfirst_byte_timeout = \"2s\"\n{routes}",
            origin.addr
        );
        let config = Config::from_toml(&src, "flow.toml", &Overrides::default()).unwrap();
        let upstreams = Arc::new(Upstreams::new(&config.upstreams).unwrap());
        let storage = Arc::new(MemoryStorage::new());
        let shutdown = ShutdownSignal::new();
        let cache = Arc::new(Cache::new(
            storage.clone(),
            Arc::new(Unbounded),
            CacheRole::Private,
            false,
            shutdown.clone(),
        ));
        let forwarder = Arc::new(Forwarder::new(config.route_table(), upstreams));
        let flow = Arc::new(Flow::new(forwarder.clone(), cache, shutdown));
        Env {
            origin,
            storage,
            forwarder,
            flow,
        }
    }

    async fn run(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<(u16, Outcome, HeaderMap, Vec<u8>), ProxyError> {
        let uri: Uri = path.parse().unwrap();
        let mut h = HeaderMap::new();
        for (n, v) in headers {
            h.insert(
                http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let head = RequestHead {
            method: method.clone(),
            uri: uri.clone(),
            version: http::Version::HTTP_11,
            headers: h,
        };
        let (route, upstream) = self.forwarder.route(&method, uri.path());
        let upstream = upstream.clone();
        let peer = SocketAddr::from(([127, 0, 0, 1], 1));
        let (resp, outcome) = self.flow.run(head, &route, &upstream, peer).await?;
        let (parts, body): (_, ProxyBody) = resp.into_parts();
        let bytes = body.collect().await.map(|c| c.to_bytes().to_vec()).unwrap_or_default();
        Ok((parts.status.as_u16(), outcome, parts.headers, bytes))
    }

    async fn get(&self, path: &str) -> (u16, Outcome, Vec<u8>) {
        let (s, o, _, b) = self.run(Method::GET, path, &[]).await.expect("answer");
        (s, o, b)
    }

    fn offline(&self) {
        let (_, up) = self.forwarder.route(&Method::GET, "/");
        up.connectivity().mark_offline("test");
    }

    /// The fill commits after the client has the whole body; wait for it (bounded, no fixed sleep).
    async fn wait_stored(&self, n: usize) {
        for _ in 0..500 {
            if self.storage.entries() >= n {
                return;
            }
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        panic!("{n} entries never stored (have {})", self.storage.entries());
    }
}

const FRESH: (&str, &str) = ("cache-control", "max-age=600");
const STALE: (&str, &str) = ("cache-control", "max-age=0");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_answer_is_stored_once_and_then_served_without_the_origin() {
    let env = Env::start("").await;
    env.origin.answer("/a", 200, &[FRESH], b"alpha");
    assert_eq!(env.get("/a").await, (200, Outcome::Miss, b"alpha".to_vec()));
    env.wait_stored(1).await;
    assert_eq!(env.get("/a").await, (200, Outcome::Hit, b"alpha".to_vec()));
    assert_eq!(env.origin.hits("/a"), 1);
    // HEAD is answered from the stored GET.
    let (status, outcome, headers, body) = env.run(Method::HEAD, "/a", &[]).await.unwrap();
    assert_eq!((status, outcome, body.len()), (200, Outcome::Hit, 0));
    assert_eq!(headers[header::CONTENT_LENGTH], "5");
    assert_eq!(env.origin.hits("/a"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_answer_is_revalidated_with_its_etag_and_refreshed_by_a_304() {
    let env = Env::start("").await;
    env.origin.answer("/r", 200, &[STALE, ("etag", "\"v1\"")], b"one");
    assert_eq!(env.get("/r").await.1, Outcome::Miss);
    env.wait_stored(1).await;
    assert_eq!(env.get("/r").await, (200, Outcome::Revalidated, b"one".to_vec()));
    assert_eq!(env.origin.hits("/r"), 2);
    // A changed answer replaces the stored one.
    env.origin.answer("/r", 200, &[STALE, ("etag", "\"v2\"")], b"two");
    assert_eq!(env.get("/r").await, (200, Outcome::Miss, b"two".to_vec()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_stored_answers_are_served_and_misses_get_503_with_retry_after() {
    let env = Env::start("").await;
    env.origin.answer("/s", 200, &[STALE], b"kept");
    env.get("/s").await;
    env.wait_stored(1).await;
    env.offline();
    assert_eq!(env.get("/s").await, (200, Outcome::Offline, b"kept".to_vec()));
    let err = env.run(Method::GET, "/never", &[]).await.unwrap_err();
    let resp = err.into_response();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()[header::RETRY_AFTER], "5");
    assert_eq!(
        env.origin.hits("/never"),
        0,
        "offline misses do not wait for the network"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_if_cached_is_answered_from_the_store_or_504() {
    let env = Env::start("").await;
    env.origin.answer("/o", 200, &[STALE], b"x");
    let err = env
        .run(Method::GET, "/o", &[("cache-control", "only-if-cached")])
        .await
        .unwrap_err();
    assert_eq!(err.into_response().status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(env.origin.hits("/o"), 0);
    env.get("/o").await;
    env.wait_stored(1).await;
    let (s, o, _, b) = env
        .run(Method::GET, "/o", &[("cache-control", "only-if-cached")])
        .await
        .unwrap();
    assert_eq!((s, o, b), (200, Outcome::Stale, b"x".to_vec()));
    assert_eq!(env.origin.hits("/o"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_collapse_onto_one_fill() {
    let env = Arc::new(Env::start("").await);
    env.origin.answer("/c", 200, &[FRESH], &vec![7u8; 100_000]);
    env.origin.delay_ms.store(200, Ordering::Relaxed);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let env = env.clone();
        tasks.push(tokio::spawn(async move { env.get("/c").await }));
    }
    for t in tasks {
        let (status, outcome, body) = t.await.unwrap();
        assert_eq!((status, outcome, body.len()), (200, Outcome::Miss, 100_000));
    }
    assert_eq!(env.origin.hits("/c"), 1, "one upstream request for eight clients");
}

/// The bug this seam was built to test: a stored body that fails verification while the upstream is
/// online turns into a network fetch (it used to be a 503 "offline" naming `cache`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_stored_body_turns_into_a_network_fetch_or_an_offline_miss_naming_the_upstream() {
    let env = Env::start("").await;
    env.origin.answer("/v", 200, &[FRESH], b"verified");
    env.get("/v").await;
    env.wait_stored(1).await;
    env.storage.corrupt_bodies();
    assert_eq!(env.get("/v").await, (200, Outcome::Miss, b"verified".to_vec()));
    assert_eq!(env.origin.hits("/v"), 2);
    env.wait_stored(1).await;
    assert_eq!(
        env.get("/v").await.1,
        Outcome::Hit,
        "the refetched body was stored again"
    );
    // Offline, the same fault is an offline miss that names the upstream, not "cache". (A body is
    // verified before its first use after start; /w has not been served from the store yet.)
    env.origin.answer("/w", 200, &[FRESH], b"other bytes");
    env.get("/w").await;
    env.wait_stored(2).await;
    env.storage.corrupt_bodies();
    env.offline();
    let resp = env.run(Method::GET, "/w", &[]).await.unwrap_err().into_response();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["upstream"], "api");
    assert_eq!(env.origin.hits("/w"), 1);
    assert_eq!(env.storage.entries(), 1, "the corrupt body was dropped, never served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_on_revalidation_serves_the_stored_answer_unless_must_revalidate() {
    let env = Env::start("").await;
    env.origin.answer("/e", 200, &[STALE], b"old");
    env.origin
        .answer("/m", 200, &[("cache-control", "max-age=0, must-revalidate")], b"strict");
    env.get("/e").await;
    env.get("/m").await;
    env.wait_stored(2).await;
    env.origin.answer("/e", 503, &[], b"down");
    env.origin.answer("/m", 503, &[], b"down");
    assert_eq!(env.get("/e").await, (200, Outcome::Stale, b"old".to_vec()));
    assert_eq!(env.get("/m").await, (503, Outcome::Miss, b"down".to_vec()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strategies_over_the_seam() {
    let env = Env::start(
        r#"
[[routes]]
path = "/swr"
strategy = "stale-while-revalidate"
[[routes]]
path = "/nf"
strategy = "network-first"
[[routes]]
path = "/no"
strategy = "network-only"
[[routes]]
path = "/co"
strategy = "cache-only"
"#,
    )
    .await;
    for p in ["/swr", "/nf", "/no", "/co"] {
        env.origin.answer(p, 200, &[STALE], p.as_bytes());
    }
    // stale-while-revalidate: stale now, refreshed behind.
    env.get("/swr").await;
    env.wait_stored(1).await;
    assert_eq!(env.get("/swr").await.1, Outcome::Stale);
    // network-first asks every time while online.
    env.get("/nf").await;
    env.wait_stored(2).await;
    assert_eq!(env.get("/nf").await.1, Outcome::Miss);
    assert_eq!(env.origin.hits("/nf"), 2);
    // network-only never stores.
    assert_eq!(env.get("/no").await.1, Outcome::Bypass);
    assert_eq!(env.get("/no").await.1, Outcome::Bypass);
    // cache-only never asks.
    assert!(env.run(Method::GET, "/co", &[]).await.is_err());
    assert_eq!(env.origin.hits("/co"), 0);
    // The background refresh of /swr reached the origin.
    for _ in 0..500 {
        if env.origin.hits("/swr") == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(env.origin.hits("/swr"), 2);
    assert_eq!(env.storage.entries(), 2, "only /swr and /nf are stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_on_a_miss_is_passed_through_while_the_whole_object_fills_behind() {
    let env = Env::start("").await;
    let audio: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    env.origin.answer("/audio", 200, &[FRESH], &audio);
    let (s, o, _, b) = env
        .run(Method::GET, "/audio", &[("range", "bytes=1000-1999")])
        .await
        .unwrap();
    assert_eq!((s, o), (206, Outcome::Miss));
    assert_eq!(b, audio[1000..2000]);
    env.wait_stored(1).await;
    env.offline();
    let (s, o, h, b) = env
        .run(Method::GET, "/audio", &[("range", "bytes=150000-150099")])
        .await
        .unwrap();
    assert_eq!((s, o), (206, Outcome::Hit));
    assert_eq!(h[header::CONTENT_RANGE], "bytes 150000-150099/200000");
    assert_eq!(b, audio[150000..150100]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_that_cannot_be_stored_still_answers_and_is_counted() {
    let env = Env::start("").await;
    env.origin.answer("/f", 200, &[FRESH], b"body");
    env.storage.fail_fills(true);
    assert_eq!(env.get("/f").await, (200, Outcome::Miss, b"body".to_vec()));
    assert_eq!(env.storage.entries(), 0);
    assert_eq!(env.storage.write_errors(), 1);
    env.storage.fail_fills(false);
    env.get("/f").await;
    env.wait_stored(1).await;
    assert_eq!(env.get("/f").await.1, Outcome::Hit);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vary_keeps_one_variant_per_request_value() {
    let env = Env::start("").await;
    env.origin
        .answer("/lang", 200, &[FRESH, ("vary", "accept-language")], b"hello");
    env.run(Method::GET, "/lang", &[("accept-language", "en")])
        .await
        .unwrap();
    env.wait_stored(1).await;
    let (_, o, _, _) = env
        .run(Method::GET, "/lang", &[("accept-language", "en")])
        .await
        .unwrap();
    assert_eq!(o, Outcome::Hit);
    let (_, o, _, _) = env
        .run(Method::GET, "/lang", &[("accept-language", "fr")])
        .await
        .unwrap();
    assert_eq!(o, Outcome::Miss, "another language is another variant");
    env.wait_stored(2).await;
    assert_eq!(env.storage.bodies(), 1, "two variants, one copy of the same bytes");
}

/// Server-sent events through a storing route: each event reaches the client when the origin sends it,
/// not when the next one arrives (a fill used to hold the last chunk back until the next).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_answer_flows_as_it_arrives_even_while_it_is_stored() {
    let env = Env::start("").await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    env.origin.streams.lock().unwrap().insert("/events".into(), rx);
    let (route, upstream) = env.forwarder.route(&Method::GET, "/events");
    let upstream = upstream.clone();
    let head = RequestHead::get("/events".parse().unwrap());
    let (resp, outcome) = env
        .flow
        .run(head, &route, &upstream, SocketAddr::from(([127, 0, 0, 1], 1)))
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Miss);
    let mut body = resp.into_body();
    for event in ["data: one\n\n", "data: two\n\n"] {
        tx.send(bytes::Bytes::from(event)).await.unwrap();
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("the event arrives before the next one is sent")
            .unwrap()
            .unwrap();
        assert_eq!(frame.into_data().unwrap(), event.as_bytes());
    }
    drop(tx);
    assert!(body.frame().await.is_none(), "the stream ends when the origin's does");
    // Ended whole, so it was stored (and could be answered offline).
    env.wait_stored(1).await;
}
