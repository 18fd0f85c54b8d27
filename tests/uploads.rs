//! Large offline uploads (a recorded take, an exported mix): spooled to a file of their own and fsynced
//! before the 202, replayed as a stream with their original headers, memory flat all along; a replay cut
//! off mid-body is sent again whole with the same Idempotency-Key; a kill -9 while spooling leaves no
//! item and no file behind.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{stream, StreamExt};
use http::{Method, Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use outpost::admin::client::{get_json, HttpClient};
use outpost::body::{self, ProxyBody};
use outpost::config::{Config, Overrides};
use outpost::Outpost;
use tokio::net::TcpListener;

const SIZE: u64 = 200_000_000;
const CHUNK: usize = 256 << 10;

/// Chunk `i` of the upload: bytes that differ per position, so a reordered or lost chunk shows.
fn chunk(i: usize, len: usize) -> Bytes {
    Bytes::from((0..len).map(|j| ((i * 131 + j * 7) % 251) as u8).collect::<Vec<u8>>())
}

fn chunks(total: u64) -> impl Iterator<Item = Bytes> {
    let n = total.div_ceil(CHUNK as u64) as usize;
    (0..n).map(move |i| {
        let len = (total - (i * CHUNK) as u64).min(CHUNK as u64) as usize;
        chunk(i, len)
    })
}

fn hash_of(total: u64) -> String {
    let mut h = blake3::Hasher::new();
    for c in chunks(total) {
        h.update(&c);
    }
    h.finalize().to_hex().to_string()
}

/// What the backend applied: (Idempotency-Key, content type, bytes, BLAKE3 of the bytes).
type Applied = Arc<Mutex<Vec<(String, String, u64, String)>>>;

/// A backend that hashes upload bodies as they stream in (never holding them). It listens only once
/// `up` is called (before, connections are refused, as with a backend that is away); with `cut` set it
/// drops the next upload's connection after 10 MB.
struct Backend {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    applied: Applied,
}

impl Backend {
    async fn start() -> Backend {
        // A port nobody listens on until `up`.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        Backend {
            addr,
            cut: Arc::new(AtomicBool::new(false)),
            applied: Arc::default(),
        }
    }

    async fn up(&self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        let (c, a) = (self.cut.clone(), self.applied.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (c, a) = (c.clone(), a.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| answer(req, c.clone(), a.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
    }

    fn applied(&self) -> Vec<(String, String, u64, String)> {
        self.applied.lock().unwrap().clone()
    }
}

async fn answer(
    req: Request<hyper::body::Incoming>,
    cut: Arc<AtomicBool>,
    applied: Applied,
) -> Result<Response<ProxyBody>, std::io::Error> {
    let header = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let (key, ct) = (header("idempotency-key"), header("content-type"));
    if req.method() == Method::GET {
        return Ok(Response::new(body::full("{}")));
    }
    let mut body = req.into_body();
    let mut h = blake3::Hasher::new();
    let mut n = 0u64;
    let cut_now = cut.swap(false, Ordering::Relaxed);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(std::io::Error::other)?;
        if let Ok(d) = frame.into_data() {
            h.update(&d);
            n += d.len() as u64;
            if cut_now && n > 10_000_000 {
                // The connection goes away mid-body: nothing is applied.
                return Err(std::io::Error::other("cut"));
            }
        }
    }
    applied
        .lock()
        .unwrap()
        .push((key, ct, n, h.finalize().to_hex().to_string()));
    let mut r = Response::new(body::full(r#"{"ok":true}"#));
    *r.status_mut() = http::StatusCode::CREATED;
    Ok(r)
}

fn config(backend: SocketAddr, dir: &std::path::Path) -> Config {
    let src = common::offline_config_head(dir, &format!("http://{backend}"))
        + r#"
[[routes]]
name = "takes"
prefix = "/api/v1/takes"
max_body = "1GB"
"#;
    Config::from_toml(&src, "uploads.toml", &Overrides::default()).unwrap()
}

/// Streams a `total`-byte upload (generated as it goes: the test holds no copy).
async fn upload(outpost: &Outpost, total: u64) -> (http::StatusCode, String) {
    let frames = stream::iter(chunks(total)).map(|c| Ok::<_, std::io::Error>(Frame::data(c)));
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{}/api/v1/takes", outpost.addr()))
        .header("content-type", "audio/wav")
        .header("content-length", total.to_string())
        .body(body::boxed(StreamBody::new(frames)))
        .unwrap();
    let client = HttpClient::new(Duration::from_secs(120));
    let resp = client.send(req).await.unwrap();
    let status = resp.status();
    let text = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&text).into_owned())
}

fn spool_files(dir: &std::path::Path) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = std::fs::read_dir(dir.join("spool"))
        .map(|r| {
            r.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .map(|e| {
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        e.metadata().unwrap().len(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

async fn queue(outpost: &Outpost, dir: &std::path::Path) -> serde_json::Value {
    get_json(outpost.admin_addr(), "/api/queue", &common::admin_token(dir))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mb_upload_offline_is_spooled_replayed_whole_and_memory_stays_flat() {
    let backend = Backend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let want = hash_of(SIZE);
    let outpost = Outpost::start(config(backend.addr, dir.path())).await.unwrap();
    let before = common::rss_bytes();

    let (status, text) = upload(&outpost, SIZE).await;
    assert_eq!(status, 202, "{text}");
    let spooled = spool_files(dir.path());
    assert_eq!(spooled.len(), 1, "{spooled:?}");
    assert_eq!(spooled[0].1, SIZE, "the whole body is on disk before the 202");
    let q = queue(&outpost, dir.path()).await;
    assert_eq!(q["items"][0]["spooled"], true, "{q}");
    assert_eq!(q["items"][0]["body_bytes"], SIZE, "{q}");
    let grown = common::rss_bytes().saturating_sub(before);
    assert!(grown < 64 << 20, "RSS grew by {} MiB while spooling", grown >> 20);

    // The item and its file survive a restart.
    outpost.shutdown().await;
    let outpost = Outpost::start(config(backend.addr, dir.path())).await.unwrap();
    assert_eq!(spool_files(dir.path()), spooled);

    // The first replay is cut off after 10 MB; the next sends it whole, with the same key.
    backend.cut.store(true, Ordering::Relaxed);
    backend.up().await;
    common::eventually("the upload is delivered", 120, || {
        let o = &outpost;
        async move { o.outbox().depth() == 0 }
    })
    .await;
    let applied = backend.applied();
    assert_eq!(applied.len(), 1, "{applied:?}");
    let (key, ct, n, hash) = &applied[0];
    assert!(key.starts_with("outpost-"), "{key}");
    assert_eq!(ct, "audio/wav", "original headers");
    assert_eq!(*n, SIZE);
    assert_eq!(hash, &want, "byte-exact");
    assert!(!backend.cut.load(Ordering::Relaxed), "the cut happened");
    common::eventually("the spool file is removed", 10, || {
        let d = dir.path().to_path_buf();
        async move { spool_files(&d).is_empty() }
    })
    .await;
    let grown = common::rss_bytes().saturating_sub(before);
    assert!(grown < 64 << 20, "RSS grew by {} MiB by the replay", grown >> 20);

    // Online, a large upload is also sent whole from its spool file (and the file goes after).
    let (status, text) = upload(&outpost, 5_000_000).await;
    assert_eq!(status, 201, "{text}");
    assert_eq!(backend.applied()[1].3, hash_of(5_000_000));
    assert!(spool_files(dir.path()).is_empty());
    outpost.shutdown().await;
}

/// `outpost serve` killed with SIGKILL in the middle of receiving a large upload: after a restart there
/// is no queued item (it was never acknowledged) and no spool file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_during_spooling_leaves_no_item_and_no_file() {
    let backend = Backend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("outpost.toml");
    let data = dir.path().join("data");
    let src = format!(
        "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n\
         [upstreams.api]\nurl = \"http://{}\"\n[[routes]]\nprefix = \"/api/v1/takes\"\nmax_body = \"1GB\"\n",
        data.display().to_string(),
        backend.addr
    );
    std::fs::write(&file, &src).unwrap();
    let start = |file: std::path::PathBuf| {
        tokio::task::spawn_blocking(move || {
            let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_outpost"))
                .args(["serve", "--config"])
                .arg(&file)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let mut line = String::new();
            std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
            let addr: SocketAddr = line
                .strip_prefix("outpost listening on http://")
                .and_then(|r| r.split_whitespace().next())
                .unwrap()
                .parse()
                .unwrap();
            let admin: SocketAddr = line
                .split("(admin http://")
                .nth(1)
                .and_then(|r| r.strip_suffix(")\n"))
                .unwrap()
                .parse()
                .unwrap();
            (child, addr, admin)
        })
    };
    let (mut child, addr, _) = start(file.clone()).await.unwrap();
    // Half of a 200 MB body, then the client waits.
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    use tokio::io::AsyncWriteExt;
    conn.write_all(
        format!("POST /api/v1/takes HTTP/1.1\r\nhost: x\r\ncontent-type: audio/wav\r\ncontent-length: {SIZE}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    for c in chunks(SIZE / 2) {
        conn.write_all(&c).await.unwrap();
    }
    let tmp = data.join("spool/tmp");
    common::eventually("spooling is under way", 30, || {
        let tmp = tmp.clone();
        async move {
            std::fs::read_dir(&tmp)
                .map(|r| r.flatten().any(|e| e.metadata().is_ok_and(|m| m.len() > 10_000_000)))
                .unwrap_or(false)
        }
    })
    .await;
    child.kill().unwrap();
    let _ = child.wait();
    drop(conn);

    let (mut child, _, admin) = start(file.clone()).await.unwrap();
    let q = get_json(admin, "/api/queue", &common::admin_token(&data))
        .await
        .unwrap();
    assert_eq!(q["items"].as_array().map(Vec::len), Some(0), "{q}");
    assert!(spool_files(&data).is_empty());
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "the partial file is removed at start"
    );
    child.kill().unwrap();
    let _ = child.wait();
}
