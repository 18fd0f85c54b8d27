//! Traffic shaped like real apps and backends, over real sockets: a backend of the tests' own that
//! compresses JSON the way nginx and Rack do (`gzip` when asked, `Vary: Accept-Encoding`, also `br`,
//! `zstd`, `deflate`), redirects with absolute URLs of itself, an HTTP/1.0 origin, a WebSocket echo
//! server, and a gzip bomb. Clients are an OkHttp-like one (`Accept-Encoding: gzip`), one that accepts
//! nothing, a raw HTTP/1.1 keep-alive connection and a real WebSocket client.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_compression::tokio::bufread::{BrotliEncoder, GzipEncoder, ZlibEncoder, ZstdEncoder};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use outpost::admin::client::{Collected, HttpClient};
use outpost::body::{self, ProxyBody};
use outpost::config::{Config, Overrides};
use outpost::Outpost;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

async fn encode(coding: &str, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match coding {
        "gzip" => GzipEncoder::new(data).read_to_end(&mut out).await,
        "br" => BrotliEncoder::new(data).read_to_end(&mut out).await,
        "zstd" => ZstdEncoder::new(data).read_to_end(&mut out).await,
        "deflate" => ZlibEncoder::new(data).read_to_end(&mut out).await,
        other => panic!("{other}"),
    }
    .unwrap();
    out
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let rt = tokio::runtime::Handle::current();
    let data = data.to_vec();
    std::thread::spawn(move || {
        rt.block_on(async move {
            let mut out = Vec::new();
            async_compression::tokio::bufread::GzipDecoder::new(&data[..])
                .read_to_end(&mut out)
                .await
                .unwrap();
            out
        })
    })
    .join()
    .unwrap()
}

fn audio(id: &str) -> Vec<u8> {
    (0..96 * 1024)
        .map(|i| (i as u8).wrapping_mul(31) ^ id.as_bytes()[1])
        .collect()
}

/// The JSON answers the backend has; big enough that nginx would compress them.
fn library(media: &str) -> serde_json::Value {
    let items: Vec<_> = ["a1", "a2"]
        .iter()
        .map(|id| serde_json::json!({"audio_file_id": id, "url": format!("{media}/r/{id}.mp3?X-Amz-Signature=s1"), "title": "x".repeat(600)}))
        .collect();
    let next = media.replace("/bucket", "/api/library?page=2");
    serde_json::json!({ "items": items, "next": next })
}

fn snapshot() -> Vec<u8> {
    let events: Vec<_> = (0..4000)
        .map(|i| serde_json::json!({"t": i, "note": format!("n{}", i % 97), "vel": i % 127}))
        .collect();
    serde_json::to_vec(&serde_json::json!({ "events": events })).unwrap()
}

type Backend = common::Origin;

/// nginx-like: JSON is compressed with the coding named in `?c=` (default gzip) when the request
/// accepts it, with `Vary: Accept-Encoding` and a strong ETag; media bytes are not compressed.
async fn answer(req: Request<hyper::body::Incoming>, me: SocketAddr) -> Response<ProxyBody> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let cookie = req
        .headers()
        .get(header::COOKIE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let accept = req
        .headers()
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let json = |body: Vec<u8>, cacheable: bool| async move {
        let coding = query.strip_prefix("c=").unwrap_or("gzip").to_string();
        let mut r = if accept.split(',').any(|t| t.trim() == coding) {
            let mut r = Response::new(body::full(encode(&coding, &body).await));
            r.headers_mut()
                .insert(header::CONTENT_ENCODING, HeaderValue::from_str(&coding).unwrap());
            r
        } else {
            Response::new(body::full(body))
        };
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        r.headers_mut()
            .insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        r.headers_mut().insert(header::ETAG, HeaderValue::from_static("\"v1\""));
        if cacheable {
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=60"));
        }
        r
    };
    let media = format!("http://{me}/bucket");
    match path.as_str() {
        "/api/library" => json(serde_json::to_vec(&library(&media)).unwrap(), true).await,
        "/api/snapshot" => json(snapshot(), true).await,
        p if p.starts_with("/api/library/") => {
            // An item under the list: no `items` in it.
            let id = p.trim_start_matches("/api/library/");
            let item = serde_json::json!({"audio_file_id": id, "url": format!("{media}/r/{id}.mp3")});
            json(serde_json::to_vec(&item).unwrap(), true).await
        }
        "/api/bomb" | "/api/feed-bomb" => {
            // 256 MiB of spaces inside a JSON string, gzipped to a few hundred KiB.
            let mut text = b"{\"pad\":\"".to_vec();
            text.resize(256 << 20, b' ');
            text.extend_from_slice(b"\"}");
            let mut r = Response::new(body::full(encode("gzip", &text).await));
            r.headers_mut()
                .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r
        }
        "/api/me" => {
            // Rails-style cookie session: who you are comes from the cookie; private; sets a cookie.
            let user = cookie
                .split(';')
                .find_map(|c| c.trim().strip_prefix("session="))
                .unwrap_or("nobody")
                .to_string();
            let mut r = Response::new(body::full(format!("{{\"user\":\"{user}\"}}")));
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=60"));
            r.headers_mut().insert(
                header::SET_COOKIE,
                HeaderValue::from_str(&format!("last_seen={user}; Path=/")).unwrap(),
            );
            r
        }
        "/api/old-place" => {
            let mut r = Response::new(body::empty());
            *r.status_mut() = StatusCode::FOUND;
            let h = r.headers_mut();
            h.insert(
                header::LOCATION,
                HeaderValue::from_str(&format!("http://{me}/api/new-place?x=1")).unwrap(),
            );
            h.insert(header::CONTENT_LOCATION, HeaderValue::from_static("/api/old-place"));
            h.append(
                header::LINK,
                HeaderValue::from_str(&format!("<http://{me}/api/library?page=2>; rel=\"next\"")).unwrap(),
            );
            h.append(
                header::LINK,
                HeaderValue::from_static("<https://docs.example.com/x>; rel=\"help\""),
            );
            r
        }
        "/api/to-media" => {
            let mut r = Response::new(body::empty());
            *r.status_mut() = StatusCode::TEMPORARY_REDIRECT;
            r.headers_mut().insert(
                header::LOCATION,
                HeaderValue::from_str(&format!("{media}/r/a2.mp3")).unwrap(),
            );
            r
        }
        p if p.starts_with("/bucket/r/") => {
            let id = p.trim_start_matches("/bucket/r/").trim_end_matches(".mp3");
            let mut r = Response::new(body::full(audio(id)));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("audio/mpeg"));
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=3600"));
            r
        }
        _ => {
            let mut r = Response::new(body::full("not here"));
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
    }
}

/// The test config; `extra` holds more upstreams and routes (matched first), `top` top-level keys.
fn config_with(backend: &str, top: &str, extra: &str, dir: &std::path::Path) -> Config {
    common::init_logs();
    let src = format!(
        r#"
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
data_dir = {dir:?}
default_upstream = "api"
shutdown_grace = "1s"
{top}

[upstreams.api]
url = "{backend}"
connect_timeout = "1s"
first_byte_timeout = "5s"

[upstreams.media]
url = "{backend}/bucket"
connect_timeout = "1s"

{extra}

[[routes]]
name = "library"
prefix = "/api/library"
kind = "library"
rewrite = ["api", "media"]
pins = "items[*].url"
prefetch = true
media_alias = {{ objects = "items[*]", id = "audio_file_id", url = "url" }}

[[routes]]
name = "bomb"
path = "/api/bomb"
rewrite = ["media"]

[[routes]]
name = "media"
prefix = "/media/s3/"
strip_prefix = "/media/s3"
upstream = "media"
kind = "audio"
ignore_query = ["X-Amz-*"]
"#,
        dir = dir.display().to_string()
    );
    Config::from_toml(&src, "real_apps.toml", &Overrides::default()).unwrap()
}

fn config(backend: &str, extra: &str, dir: &std::path::Path) -> Config {
    config_with(backend, "", extra, dir)
}

async fn call(client: &HttpClient, url: &str, headers: &[(&str, &str)]) -> Collected {
    client.call(Method::GET, url, headers, None).await.expect("request")
}

/// True when Outpost has `url` stored (asked with `only-if-cached`, so nothing is fetched).
async fn cached(client: &HttpClient, url: &str) -> bool {
    call(client, url, &[("cache-control", "only-if-cached")])
        .await
        .head
        .status
        == 200
}

async fn wait_cached(client: &HttpClient, url: &str) {
    common::eventually(&format!("{url} stored"), 10, || cached(client, url)).await;
}

const OKHTTP: &[(&str, &str)] = &[("accept-encoding", "gzip")];
const PLAIN: &[(&str, &str)] = &[];

#[tokio::test]
async fn compressed_json_is_rewritten_pinned_stored_compressed_and_served_offline_to_any_client() {
    let mut backend = Backend::start(answer).await;
    let dir = tempfile::tempdir().unwrap();
    let outpost = Outpost::start(config(&backend.url(), "", dir.path())).await.unwrap();
    let client = HttpClient::new(Duration::from_secs(20));
    let base = format!("http://{}", outpost.addr());
    let local_media = format!("{base}/media/s3/r/a1.mp3?X-Amz-Signature=s1");

    // Every coding a backend may choose: the hooks see the JSON, the app gets it decoded and rewritten.
    for coding in ["gzip", "br", "zstd", "deflate"] {
        let accept = format!("gzip, deflate, br, zstd;q=0.9, {coding}");
        let r = call(
            &client,
            &format!("{base}/api/library?c={coding}"),
            &[("accept-encoding", &accept)],
        )
        .await;
        assert_eq!(r.head.status, 200, "{coding}");
        assert!(
            !r.head.headers.contains_key(header::CONTENT_ENCODING),
            "{coding}: rewritten JSON goes out decoded"
        );
        let v: serde_json::Value = serde_json::from_slice(&r.body)
            .unwrap_or_else(|e| panic!("{coding}: not JSON ({e}): {:?}", String::from_utf8_lossy(&r.body[..40])));
        assert_eq!(
            v["items"][0]["url"],
            local_media.as_str(),
            "{coding}: media URL rewritten"
        );
        assert_eq!(
            v["next"],
            format!("{base}/api/library?page=2").as_str(),
            "{coding}: the API's own link too"
        );
        assert_eq!(
            r.head.headers[header::CONTENT_LENGTH],
            r.body.len().to_string().as_str()
        );
        assert_eq!(
            r.head.headers[header::ETAG],
            "W/\"v1\"",
            "{coding}: transformed, so weak"
        );
        assert!(r
            .head
            .headers
            .get_all(header::VARY)
            .iter()
            .any(|v| v == "Accept-Encoding"));
    }
    // The app's own call (OkHttp: gzip), stored as the backend sent it.
    let lib = call(&client, &format!("{base}/api/library"), OKHTTP).await;
    assert_eq!(
        lib.json()["items"][1]["url"],
        format!("{base}/media/s3/r/a2.mp3?X-Amz-Signature=s1").as_str()
    );
    // Pins and prefetch worked from the compressed answer: both media are stored without being asked for.
    for id in ["a1", "a2"] {
        wait_cached(&client, &format!("{base}/media/s3/r/{id}.mp3?X-Amz-Signature=other")).await;
    }

    // A big snapshot sent gzipped is stored at its compressed size, and each client gets what it accepts.
    let raw = snapshot();
    let before = outpost.store().blob_bytes().unwrap();
    let gz = call(&client, &format!("{base}/api/snapshot"), OKHTTP).await;
    assert_eq!(gz.head.status, 200);
    assert_eq!(
        gz.head.headers[header::CONTENT_ENCODING],
        "gzip",
        "an app that accepts gzip gets it"
    );
    assert_eq!(gunzip(&gz.body), raw);
    wait_cached(&client, &format!("{base}/api/snapshot")).await;
    let stored = outpost.store().blob_bytes().unwrap() - before;
    println!(
        "snapshot: {} bytes as JSON, {} gzipped, {stored} stored",
        raw.len(),
        gz.body.len()
    );
    assert!(
        stored <= gz.body.len() as u64 + 4096,
        "stored {stored} for {} gzipped",
        gz.body.len()
    );
    assert!(
        stored * 4 < raw.len() as u64,
        "stored compressed, not as {} bytes of JSON",
        raw.len()
    );

    // Offline: the stored gzip answer serves a client that accepts nothing (decoded) and one that
    // accepts gzip (as stored); the library and the media keep working.
    let hits = backend.hits.load(Ordering::Relaxed);
    backend.stop().await;
    let plain = call(&client, &format!("{base}/api/snapshot"), PLAIN).await;
    assert_eq!(plain.head.status, 200);
    assert!(
        !plain.head.headers.contains_key(header::CONTENT_ENCODING),
        "never gzip to an app that did not ask"
    );
    assert_eq!(plain.body.as_ref(), raw.as_slice());
    assert_eq!(plain.head.headers[header::ETAG], "W/\"v1\"");
    let ranged = call(&client, &format!("{base}/api/snapshot"), &[("range", "bytes=0-99")]).await;
    assert_eq!(
        ranged.head.status, 200,
        "a range of gzip bytes is no use to this client: the whole, decoded"
    );
    assert_eq!(ranged.body.as_ref(), raw.as_slice());
    let ranged = call(
        &client,
        &format!("{base}/api/snapshot"),
        &[("range", "bytes=0-99"), ("accept-encoding", "gzip")],
    )
    .await;
    assert_eq!(
        ranged.head.status, 206,
        "one that accepts gzip gets the range of the stored bytes"
    );
    assert_eq!(ranged.body.len(), 100);
    let gz = call(&client, &format!("{base}/api/snapshot"), OKHTTP).await;
    assert_eq!(gz.head.headers[header::CONTENT_ENCODING], "gzip");
    assert_eq!(gunzip(&gz.body), raw);
    let head = client
        .call(Method::HEAD, &format!("{base}/api/snapshot"), PLAIN, None)
        .await
        .unwrap();
    assert!(
        !head.head.headers.contains_key(header::CONTENT_ENCODING),
        "HEAD says what GET would send"
    );

    let lib = call(&client, &format!("{base}/api/library"), PLAIN).await;
    assert_eq!(lib.head.status, 200);
    assert_eq!(lib.json()["items"][0]["url"], local_media.as_str());
    let seek = call(&client, &local_media, &[("range", "bytes=1000-1999")]).await;
    assert_eq!(seek.head.status, 206, "audio seeks offline");
    assert_eq!(seek.body.as_ref(), &audio("a1")[1000..2000]);
    assert_eq!(backend.hits.load(Ordering::Relaxed), hits, "all of it from the store");
    outpost.shutdown().await;
}

#[tokio::test]
async fn a_zip_bomb_is_a_502_on_json_routes_an_aborted_body_elsewhere_and_never_stored() {
    let mut backend = Backend::start(answer).await;
    let dir = tempfile::tempdir().unwrap();
    let outpost = Outpost::start(config(&backend.url(), "", dir.path())).await.unwrap();
    let client = HttpClient::new(Duration::from_secs(60));
    let base = format!("http://{}", outpost.addr());

    let r = call(&client, &format!("{base}/api/bomb"), OKHTTP).await;
    assert_eq!(r.head.status, 502, "{}", String::from_utf8_lossy(&r.body));
    assert!(String::from_utf8_lossy(&r.body).contains("inflates past"));

    // Not a JSON route: the app that accepts gzip gets the bytes as they come until the check stops it;
    // one that does not gets them decoded until the ratio guard stops it. Neither is stored.
    for headers in [OKHTTP, PLAIN] {
        let r = client
            .call(Method::GET, &format!("{base}/api/feed-bomb"), headers, None)
            .await;
        assert!(
            r.is_err(),
            "{headers:?}: the body ends with an error, not a whole answer"
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    backend.stop().await;
    for path in ["/api/bomb", "/api/feed-bomb"] {
        let r = call(&client, &format!("{base}{path}"), OKHTTP).await;
        assert_eq!(r.head.status, 503, "{path} was not stored: an offline miss");
    }
    outpost.shutdown().await;
}

#[tokio::test]
async fn redirects_and_links_to_an_upstream_stay_on_outpost() {
    let backend = Backend::start(answer).await;
    let dir = tempfile::tempdir().unwrap();
    let outpost = Outpost::start(config(&backend.url(), "", dir.path())).await.unwrap();
    let client = HttpClient::new(Duration::from_secs(20));
    let base = format!("http://{}", outpost.addr());

    let r = call(&client, &format!("{base}/api/old-place"), PLAIN).await;
    assert_eq!(r.head.status, 302);
    assert_eq!(
        r.head.headers[header::LOCATION],
        format!("{base}/api/new-place?x=1").as_str()
    );
    assert_eq!(
        r.head.headers[header::CONTENT_LOCATION],
        format!("{base}/api/old-place").as_str()
    );
    let links: Vec<_> = r.head.headers.get_all(header::LINK).iter().collect();
    assert_eq!(
        links,
        [
            format!("<{base}/api/library?page=2>; rel=\"next\"").as_str(),
            "<https://docs.example.com/x>; rel=\"help\""
        ]
    );
    // A redirect to the media host lands on the route that serves it.
    let r = call(&client, &format!("{base}/api/to-media"), PLAIN).await;
    assert_eq!(r.head.status, 307);
    assert_eq!(
        r.head.headers[header::LOCATION],
        format!("{base}/media/s3/r/a2.mp3").as_str()
    );
    outpost.shutdown().await;
}

/// An HTTP/1.0 origin that closes after each answer (no Content-Length, no keep-alive).
async fn http10_origin() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nCache-Control: max-age=60\r\n\r\n{\"old\":true}")
                    .await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_http_10_origin_does_not_downgrade_the_apps_keep_alive_connection() {
    let origin = http10_origin().await;
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "[upstreams.legacy]\nurl = \"http://{origin}\"\n\n[[routes]]\nname = \"legacy\"\nprefix = \"/legacy/\"\nupstream = \"legacy\"\n"
    );
    let outpost = Outpost::start(config("http://127.0.0.1:9", &extra, dir.path()))
        .await
        .unwrap();

    // One keep-alive HTTP/1.1 connection, three requests: a miss from the 1.0 origin, then hits.
    let tcp = tokio::net::TcpStream::connect(outpost.addr()).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake::<_, ProxyBody>(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    for (i, path) in ["/legacy/a", "/legacy/a", "/legacy/b"].iter().enumerate() {
        send.ready()
            .await
            .unwrap_or_else(|e| panic!("request {i}: connection closed: {e}"));
        let req = Request::get(*path)
            .header(header::HOST, outpost.addr().to_string())
            .body(body::empty())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(
            resp.version(),
            http::Version::HTTP_11,
            "request {i}: the app's own version"
        );
        let via = resp.headers()[header::VIA].to_str().unwrap().to_string();
        let status = resp.status();
        let b = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!((status, b), (StatusCode::OK, Bytes::from_static(b"{\"old\":true}")));
        assert_eq!(
            via, "1.0 outpost",
            "request {i}: Via names the protocol received from the origin"
        );
    }
    assert!(!conn.is_finished(), "the connection stays open");
    outpost.shutdown().await;
}

/// A WebSocket echo server; `up` false makes it refuse nothing but exist no more (listener dropped).
async fn ws_echo(up: Arc<AtomicBool>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            if !up.load(Ordering::Relaxed) {
                return;
            }
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_websocket_is_tunnelled_both_ways_and_refused_fast_while_offline() {
    let up = Arc::new(AtomicBool::new(true));
    let ws = ws_echo(up.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "[upstreams.live]\nurl = \"http://{ws}\"\nconnect_timeout = \"1s\"\n\n[[routes]]\nname = \"live\"\nprefix = \"/live/\"\nupstream = \"live\"\nstrategy = \"network-only\"\nqueue = false\n"
    );
    let outpost = Outpost::start(config("http://127.0.0.1:9", &extra, dir.path()))
        .await
        .unwrap();
    let url = format!("ws://{}/live/socket", outpost.addr());

    let (mut socket, resp) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .expect("handshake through Outpost");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    for i in 0..20 {
        let text = format!("new message {i}");
        socket.send(Message::text(text.clone())).await.unwrap();
        assert_eq!(socket.next().await.unwrap().unwrap(), Message::text(text));
    }
    let big = vec![7u8; 1 << 20];
    socket.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(socket.next().await.unwrap().unwrap(), Message::binary(big));
    socket.send(Message::Ping(Bytes::from_static(b"p"))).await.unwrap();
    assert_eq!(
        socket.next().await.unwrap().unwrap(),
        Message::Pong(Bytes::from_static(b"p"))
    );
    socket.close(None).await.unwrap();

    // The upstream goes away: the handshake gets a 503 with Retry-After at once, so the app's
    // reconnect logic runs.
    up.store(false, Ordering::Relaxed);
    let _ = tokio::net::TcpStream::connect(ws).await; // the echo server's loop ends on this one
    tokio::time::sleep(Duration::from_millis(100)).await;
    for attempt in 0..2 {
        let started = Instant::now();
        let err = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect_err("no tunnel while offline");
        let took = started.elapsed();
        let tokio_tungstenite::tungstenite::Error::Http(resp) = err else {
            panic!("attempt {attempt}: {err}");
        };
        println!("offline handshake {attempt}: {} in {took:?}", resp.status());
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(resp.headers().contains_key(header::RETRY_AFTER));
        assert!(took < Duration::from_secs(1), "attempt {attempt}: {took:?}");
    }
    outpost.shutdown().await;
}

#[tokio::test]
async fn pins_last_across_a_restart_under_budget_pressure_and_only_the_list_sets_them() {
    let mut backend = Backend::start(answer).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(&backend.url(), "max_size = \"450KB\"", "", dir.path());
    let outpost = Outpost::start(config.clone()).await.unwrap();
    let client = HttpClient::new(Duration::from_secs(20));
    let base = format!("http://{}", outpost.addr());
    let audio_url = |base: &str, id: &str| format!("{base}/media/s3/r/{id}.mp3");

    // The library screen pins a1 and a2 (prefetched); an item screen under the same prefix changes nothing.
    assert_eq!(
        call(&client, &format!("{base}/api/library"), OKHTTP).await.head.status,
        200
    );
    for id in ["a1", "a2"] {
        wait_cached(&client, &audio_url(&base, id)).await;
    }
    let item = call(&client, &format!("{base}/api/library/a1"), OKHTTP).await;
    assert_eq!(item.head.status, 200);
    outpost.shutdown().await;

    // After a restart, before the library is opened again, other audio pushes past the budget.
    let outpost = Outpost::start(config).await.unwrap();
    let base = format!("http://{}", outpost.addr());
    for i in 3..10 {
        let r = call(&client, &format!("{base}/media/s3/r/a{i}.mp3"), PLAIN).await;
        assert_eq!(r.head.status, 200);
    }
    common::eventually("the evictor brings the store under the budget", 10, || {
        let used = outpost.store().blob_bytes().unwrap();
        async move { used <= 450_000 }
    })
    .await;
    backend.stop().await;
    let mut evicted = Vec::new();
    for i in 3..10 {
        if !cached(&client, &audio_url(&base, &format!("a{i}"))).await {
            evicted.push(i);
        }
    }
    println!("evicted under pressure: {evicted:?}");
    assert!(!evicted.is_empty(), "the budget pushed something out");
    for id in ["a1", "a2"] {
        assert!(
            cached(&client, &audio_url(&base, id)).await,
            "pinned {id} survived the restart and the pressure"
        );
        let r = call(&client, &format!("{base}/media/s3/r/{id}.mp3"), PLAIN).await;
        assert_eq!(r.body.as_ref(), audio(id).as_slice());
    }
    outpost.shutdown().await;
}

#[tokio::test]
async fn interim_1xx_answers_are_dropped_and_the_final_answer_is_forwarded_and_stored() {
    // An origin that sends 103 Early Hints before its 200 (as Rails with early hints on does).
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let mut seen = Vec::new();
                loop {
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    seen.clear();
                    let answer = b"HTTP/1.1 103 Early Hints\r\nLink: </app.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: max-age=60\r\nContent-Length: 11\r\n\r\n{\"final\":1}";
                    if s.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let extra = format!("[upstreams.hints]\nurl = \"http://{origin}\"\n\n[[routes]]\nname = \"hints\"\nprefix = \"/hints/\"\nupstream = \"hints\"\n");
    let outpost = Outpost::start(config("http://127.0.0.1:9", &extra, dir.path()))
        .await
        .unwrap();
    let client = HttpClient::new(Duration::from_secs(10));
    let url = format!("http://{}/hints/page", outpost.addr());
    let r = call(&client, &url, PLAIN).await;
    assert_eq!(r.head.status, 200);
    assert_eq!(r.body.as_ref(), b"{\"final\":1}");
    assert!(
        !r.head.headers.contains_key(header::LINK),
        "the hint's fields are not the answer's"
    );
    let hit = call(&client, &url, &[("cache-control", "only-if-cached")]).await;
    assert_eq!(
        (hit.head.status.as_u16(), hit.body.as_ref()),
        (200, b"{\"final\":1}".as_ref())
    );
    outpost.shutdown().await;
}

#[tokio::test]
async fn cookie_sessions_are_kept_apart_and_a_stored_set_cookie_is_never_replayed() {
    let mut backend = Backend::start(answer).await;
    let dir = tempfile::tempdir().unwrap();
    let outpost = Outpost::start(config(&backend.url(), "", dir.path())).await.unwrap();
    let client = HttpClient::new(Duration::from_secs(10));
    let me = format!("http://{}/api/me", outpost.addr());
    let who = |r: &Collected| r.json()["user"].as_str().unwrap_or("?").to_string();

    let alice = call(&client, &me, &[("cookie", "session=alice; theme=dark")]).await;
    assert_eq!(who(&alice), "alice");
    assert_eq!(
        alice.head.headers[header::SET_COOKIE],
        "last_seen=alice; Path=/",
        "the fetching request gets it"
    );
    let bob = call(&client, &me, &[("cookie", "session=bob; theme=dark")]).await;
    assert_eq!(who(&bob), "bob", "not Alice's stored answer");
    let nobody = call(&client, &me, PLAIN).await;
    assert_eq!(who(&nobody), "nobody", "no credentials: not Alice's either");

    backend.stop().await;
    for (cookie, user) in [
        ("theme=dark; session=alice", "alice"),
        ("session=bob; theme=dark", "bob"),
    ] {
        let r = call(&client, &me, &[("cookie", cookie)]).await;
        assert_eq!(
            (r.head.status.as_u16(), who(&r)),
            (200, user.to_string()),
            "offline, {user}"
        );
        assert!(
            !r.head.headers.contains_key(header::SET_COOKIE),
            "a stored Set-Cookie is not replayed"
        );
    }
    let r = call(&client, &me, &[("cookie", "session=mallory")]).await;
    assert_eq!(r.head.status, 503, "an unknown session gets nobody's answer offline");
    outpost.shutdown().await;
}
