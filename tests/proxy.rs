//! The foundation: a transparent streaming reverse proxy, over real sockets against the demo backend.

mod common;

use std::time::{Duration, Instant};

use common::{rss_bytes, TestEnv};
use futures_util::stream;
use http::{Method, Request};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use outpost::demo::{audio_bytes, Fault};

#[tokio::test]
async fn every_method_is_forwarded_with_its_body() {
    let env = TestEnv::start().await;
    for method in ["POST", "PUT", "PATCH", "DELETE"] {
        let m = Method::from_bytes(method.as_bytes()).unwrap();
        let r = env
            .client
            .call(
                m,
                &env.url("/api/v1/echo"),
                &[("content-type", "application/json")],
                Some(br#"{"n":1}"#.to_vec()),
            )
            .await
            .unwrap();
        assert_eq!(r.head.status, 200, "{method}");
        assert_eq!(r.json()["method"], method);
        assert_eq!(r.json()["body"]["n"], 1, "{method} body must reach the upstream");
    }
    for method in ["GET", "HEAD", "OPTIONS"] {
        let m = Method::from_bytes(method.as_bytes()).unwrap();
        let r = env.client.call(m, &env.url("/api/v1/echo"), &[], None).await.unwrap();
        if method == "OPTIONS" {
            // The demo has no OPTIONS handler for echo; what matters is that the upstream answered.
            assert_eq!(r.head.status, 404);
        } else {
            assert_eq!(r.head.status, 200, "{method}");
        }
    }
    env.stop().await;
}

#[tokio::test]
async fn proxy_headers_are_rewritten_and_hop_by_hop_fields_dropped() {
    let env = TestEnv::start().await;
    let r = env
        .client
        .call(
            Method::GET,
            &env.url("/api/v1/echo?x=1"),
            &[
                ("connection", "x-private"),
                ("x-private", "secret"),
                ("keep-alive", "timeout=5"),
                ("x-app", "kept"),
                ("x-forwarded-for", "10.0.0.9"),
                ("via", "1.1 app-proxy"),
                ("x-forwarded-host", "evil.example"),
                ("forwarded", "host=evil.example"),
                ("x-original-url", "/admin"),
            ],
            None,
        )
        .await
        .unwrap();
    assert_eq!(r.head.status, 200);
    let seen = r.json();
    let h = &seen["headers"];
    assert_eq!(h["x-app"][0], "kept");
    assert!(
        h.get("x-private").is_none(),
        "header named in Connection must not cross: {h}"
    );
    assert!(h.get("keep-alive").is_none());
    assert_eq!(
        h["host"][0],
        env.backend.api_addr().to_string(),
        "Host is the upstream's"
    );
    assert_eq!(h["x-forwarded-for"][0], "10.0.0.9, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"][0], "http");
    assert_eq!(h["via"][0], "1.1 app-proxy, 1.1 outpost");
    assert_eq!(seen["uri"], "/api/v1/echo?x=1");
    for name in ["x-forwarded-host", "forwarded", "x-original-url"] {
        assert!(
            h.get(name).is_none(),
            "{name} is not in the cache key, so it does not cross: {h}"
        );
    }
    assert!(r.header("via").unwrap().contains("outpost"), "responses carry Via too");
    env.stop().await;
}

#[tokio::test]
async fn preserve_host_forwards_the_clients_host() {
    let env = TestEnv::start_with(|c| c.upstreams[0].preserve_host = true).await;
    let r = env
        .client
        .call(Method::GET, &env.url("/api/v1/echo"), &[("host", "app.example")], None)
        .await
        .unwrap();
    assert_eq!(r.json()["headers"]["host"][0], "app.example");
    env.stop().await;
}

#[tokio::test]
async fn routes_pick_the_upstream_and_strip_their_prefix() {
    let env = TestEnv::start().await;
    let r = env
        .client
        .call(
            Method::GET,
            &env.url("/media/s3/renders/a2.mp3?X-Amz-Signature=x"),
            &[("range", "bytes=10-19")],
            None,
        )
        .await
        .unwrap();
    assert_eq!(r.head.status, 206);
    assert_eq!(r.header("content-range"), Some("bytes 10-19/1048576"));
    let want: Vec<u8> = audio_bytes("a2", 1 << 20)
        .flat_map(|c| c.to_vec())
        .skip(10)
        .take(10)
        .collect();
    assert_eq!(r.body.as_ref(), want.as_slice());
    assert!(env.backend.state().request_count("/renders/a2.mp3") >= 1);
    env.stop().await;
}

#[tokio::test]
async fn a_200_mb_response_streams_with_flat_memory() {
    let env = TestEnv::start().await;
    let size: usize = 200 * 1024 * 1024;
    let resp = env
        .client
        .send(
            Request::get(env.url(&format!("/api/v1/big/{size}")))
                .body(outpost::body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let before = rss_bytes();
    let mut peak = before;
    let mut body = resp.into_body();
    let mut hasher = blake3::Hasher::new();
    let mut n = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("body frame");
        if let Some(d) = frame.data_ref() {
            n += d.len();
            hasher.update(d);
        }
        if n % (16 << 20) < 65536 {
            peak = peak.max(rss_bytes());
        }
    }
    assert_eq!(n, size);
    let mut want = blake3::Hasher::new();
    for c in audio_bytes("big", size) {
        want.update(&c);
    }
    assert_eq!(hasher.finalize(), want.finalize(), "bytes arrive unchanged");
    let growth = peak.saturating_sub(before);
    assert!(
        growth < 64 << 20,
        "RSS grew by {} MiB while streaming 200 MiB",
        growth >> 20
    );
    env.stop().await;
}

#[tokio::test]
async fn a_200_mb_request_body_streams_to_the_upstream() {
    let env = TestEnv::start().await;
    let size: usize = 200 * 1024 * 1024;
    let chunks = audio_bytes("upload", size).map(|c| Ok::<_, outpost::body::BoxError>(Frame::data(c)));
    let body = StreamBody::new(stream::iter(chunks)).boxed();
    let before = rss_bytes();
    let resp = env
        .client
        .send(Request::post(env.url("/api/v1/upload")).body(body).unwrap())
        .await
        .unwrap();
    let after = rss_bytes();
    assert_eq!(resp.status(), 200);
    let got: serde_json::Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    let mut want = blake3::Hasher::new();
    for c in audio_bytes("upload", size) {
        want.update(&c);
    }
    assert_eq!(got["bytes"], size as u64);
    assert_eq!(got["blake3"], want.finalize().to_hex().to_string());
    assert!(
        after.saturating_sub(before) < 64 << 20,
        "RSS grew by {} MiB",
        after.saturating_sub(before) >> 20
    );
    env.stop().await;
}

#[tokio::test]
async fn upstream_down_is_a_quick_offline_503_for_reads_and_a_json_502_for_unqueued_writes() {
    let env = TestEnv::start().await;
    env.backend.set_fault(Fault::Down);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let t = Instant::now();
    let r = env
        .client
        .call(Method::POST, &env.url("/api/v1/auth/refresh"), &[], None)
        .await
        .unwrap();
    assert_eq!(r.head.status, 502);
    assert!(t.elapsed() < Duration::from_secs(2), "took {:?}", t.elapsed());
    assert_eq!(r.json()["upstream"], "api");
    assert!(
        r.json()["error"].as_str().unwrap().contains("cannot connect"),
        "{}",
        r.json()
    );
    assert!(!env.outpost.upstreams().get(0).connectivity().is_online());
    // A read that was never cached: an immediate 503 "offline" with Retry-After.
    let t = Instant::now();
    let r = env.get("/api/v1/threads").await;
    assert_eq!(r.head.status, 503);
    assert!(t.elapsed() < Duration::from_millis(200), "took {:?}", t.elapsed());
    assert_eq!(r.json()["error"], "offline");
    assert_eq!(r.header("retry-after"), Some("5"));
    // The probe notices the upstream is back.
    env.backend.set_fault(Fault::Up);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !env.outpost.upstreams().get(0).connectivity().is_online() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(env.get("/api/v1/threads").await.head.status, 200);
    env.stop().await;
}

#[tokio::test]
async fn black_holed_upstream_is_a_504_for_writes_after_the_first_byte_timeout() {
    let env = TestEnv::start_with(|c| c.upstreams[0].first_byte_timeout = Duration::from_millis(300)).await;
    env.backend.set_fault(Fault::BlackHole);
    let t = Instant::now();
    let r = env
        .client
        .call(Method::POST, &env.url("/api/v1/echo"), &[], Some(b"{}".to_vec()))
        .await
        .unwrap();
    let took = t.elapsed();
    assert_eq!(r.head.status, 504);
    assert_eq!(r.json()["upstream"], "api");
    // connect_timeout (1s) + first_byte_timeout bound the wait; the connect itself succeeds at once here.
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    env.stop().await;
}

#[tokio::test]
async fn upstream_5xx_and_broken_bodies_pass_through_as_they_are() {
    let env = TestEnv::start().await;
    env.backend.set_fault(Fault::Error { status: 503 });
    let r = env.get("/api/v1/threads").await;
    assert_eq!(r.head.status, 503);
    assert_eq!(
        r.json()["error"],
        "injected fault",
        "the upstream's own 503 passes through"
    );
    env.backend.set_fault(Fault::ResetMidBody);
    let r = env
        .client
        .call(Method::GET, &env.url("/media/s3/renders/a3.mp3"), &[], None)
        .await;
    assert!(
        r.is_err(),
        "a body cut by the upstream must reach the client as a broken body, got {r:?}"
    );
    env.stop().await;
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    let env = TestEnv::start().await;
    env.backend.set_fault(Fault::Slow { delay_ms: 400 });
    let url = env.url("/api/v1/threads");
    let client = env.client.clone();
    let inflight = tokio::spawn(async move { client.call(Method::GET, &url, &[], None).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let TestEnv { outpost, backend, .. } = env;
    let addr = outpost.addr();
    outpost.shutdown().await;
    let r = inflight.await.unwrap().expect("in-flight request completes");
    assert_eq!(r.head.status, 200);
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
    backend.stop().await;
}

/// One grace period for everything: requests still open and background work (a fill behind a range
/// miss) hear the same signal (it used to be one grace for requests and then another for background work:
/// a 3 s grace took about 6 s).
#[tokio::test]
async fn shutdown_takes_one_grace_period_even_with_background_fills_in_flight() {
    let grace = Duration::from_secs(2);
    let env = TestEnv::start_with(|c| c.shutdown_grace = grace).await;
    env.backend.set_fault(Fault::BlackHole);
    let url = env.url("/media/s3/renders/a3.mp3");
    let client = env.client.clone();
    // A range on a miss: passed through (hangs on the black hole) while a background fill starts.
    let _inflight = tokio::spawn(async move { client.call(Method::GET, &url, &[("range", "bytes=0-99")], None).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let TestEnv { outpost, backend, .. } = env;
    let t = Instant::now();
    outpost.shutdown().await;
    let took = t.elapsed();
    eprintln!("shutdown took {took:?} with a grace of {grace:?}");
    assert!(
        took < grace + grace / 2,
        "shutdown took {took:?} with a grace of {grace:?}"
    );
    backend.stop().await;
}

#[tokio::test]
async fn malformed_requests_get_a_4xx() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = TestEnv::start().await;
    for raw in [
        "GET /../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /%2e%2e/etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /media/s3/%2E%2E/secret HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /api/..%2fadmin HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /api/..%5cadmin HTTP/1.1\r\nHost: x\r\n\r\n",
        "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        "BAD REQUEST LINE\r\n\r\n",
    ] {
        let mut s = tokio::net::TcpStream::connect(env.outpost.addr()).await.unwrap();
        s.write_all(raw.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        let head = String::from_utf8_lossy(&buf[..n]);
        assert!(n == 0 || head.starts_with("HTTP/1.1 4"), "{raw:?} -> {head}");
    }
    // CL + TE: hyper frames by Transfer-Encoding (RFC 9112 §6.3) and Outpost re-frames the body towards the
    // upstream, so the upstream never sees the conflicting pair.
    let raw = "POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n";
    let mut s = tokio::net::TcpStream::connect(env.outpost.addr()).await.unwrap();
    s.write_all(raw.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 2048];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(
        head.starts_with("HTTP/1.1 4") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    assert_eq!(
        env.backend.state().mutations().last().map(|m| m.body.clone()),
        Some(serde_json::json!({}))
    );
    // The proxy still serves after all that.
    assert_eq!(env.get("/api/v1/threads").await.head.status, 200);
    env.stop().await;
}

#[tokio::test]
async fn a_second_instance_on_the_same_data_dir_is_refused() {
    let env = TestEnv::start().await;
    let err = outpost::Outpost::start(env.config.clone())
        .await
        .err()
        .expect("second start must fail");
    assert!(err.to_string().contains("in use by another Outpost"), "{err}");
    env.stop().await;
}

#[tokio::test]
async fn the_demo_story_has_no_failed_step() {
    let report = outpost::demo::story::run(false).await.unwrap();
    assert_eq!(report.failed, 0, "{report:?}");
    assert!(report.passed >= 6, "{report:?}");
}

/// One id per request: the app's `X-Request-Id` is kept, a missing one is made; either goes upstream and
/// back to the app, and a stored answer is served with the id of the request that asked for it.
#[tokio::test]
async fn every_request_has_one_id_upstream_and_back() {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let s = seen.clone();
    let origin = common::Origin::start(move |req, _| {
        let s = s.clone();
        async move {
            let id = req
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            s.lock().unwrap().push(id.clone());
            let mut r = http::Response::new(outpost::body::full("hello"));
            r.headers_mut()
                .insert("cache-control", http::HeaderValue::from_static("max-age=60"));
            // An origin that echoes the id: stored with the answer, it must not reach the next request.
            r.headers_mut()
                .insert("x-request-id", http::HeaderValue::from_str(&id).unwrap());
            r
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = common::config_from(&format!(
        "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n[upstreams.api]\nurl = \"{}\"\n",
        dir.path().display(),
        origin.url()
    ));
    let outpost = outpost::Outpost::start(config).await.unwrap();
    let client = outpost::admin::client::HttpClient::new(Duration::from_secs(10));
    let url = format!("http://{}/r", outpost.addr());
    let first = client
        .call(Method::GET, &url, &[("x-request-id", "app-1")], None)
        .await
        .unwrap();
    assert_eq!(first.header("x-request-id"), Some("app-1"));
    let made = client.call(Method::GET, &format!("{url}2"), &[], None).await.unwrap();
    let id = made.header("x-request-id").unwrap().to_string();
    assert_eq!(id.len(), 16, "{id}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    assert_eq!(*seen.lock().unwrap(), vec!["app-1".to_string(), id]);
    // The fill commits behind the first answer: ask until the answer comes from the store.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let hit = client
            .call(Method::GET, &url, &[("x-request-id", "app-2")], None)
            .await
            .unwrap();
        assert_eq!(hit.header("x-request-id"), Some("app-2"));
        if hit.header("x-outpost-cache") == Some("HIT") {
            break;
        }
        assert!(Instant::now() < deadline, "never stored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    outpost.shutdown().await;
}
