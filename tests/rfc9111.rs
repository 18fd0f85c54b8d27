//! HTTP caching to the letter, against an origin that sends what the test names: targeted cache fields
//! (RFC 9213), `Age` parsing (RFC 9111 §5.1), `Cache-Status` (RFC 9211), `offline_stale = "rfc"`
//! (RFC 9111 §4.2.4) and purging one URL (admin API, CLI, `PURGE`).

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response};
use outpost::admin::client::{admin_call, Collected, HttpClient};
use outpost::body::{self, ProxyBody};
use outpost::config::{Config, Overrides};
use outpost::server::{Server, ShutdownSignal};
use outpost::Outpost;
use tokio::net::TcpListener;

/// An origin whose answer headers come from the request's query: `?h=Name:Value|Name:Value`.
struct Origin {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    stop: ShutdownSignal,
    server: Option<Server>,
}

impl Origin {
    async fn start() -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let stop = ShutdownSignal::new();
        let h = hits.clone();
        let server = Server::spawn(
            "origin",
            listener,
            stop.clone(),
            Duration::from_millis(100),
            Duration::from_secs(5),
            move |req, _| {
                h.fetch_add(1, Ordering::Relaxed);
                answer(req)
            },
        );
        Origin {
            addr,
            hits,
            stop,
            server: Some(server),
        }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::Relaxed)
    }

    async fn stop(&mut self) {
        self.stop.trigger();
        if let Some(s) = self.server.take() {
            s.finished().await;
        }
    }
}

async fn answer(req: Request<hyper::body::Incoming>) -> Response<ProxyBody> {
    let query = req.uri().query().unwrap_or("").to_string();
    let mut resp = Response::new(body::full(format!("{{\"path\":\"{}\"}}", req.uri().path())));
    resp.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    for (name, spec) in form_urlencoded::parse(query.as_bytes()) {
        if name != "h" {
            continue;
        }
        for field in spec.split('|') {
            if let Some((n, v)) = field.split_once(':') {
                resp.headers_mut()
                    .append(http::HeaderName::from_bytes(n.as_bytes()).unwrap(), v.parse().unwrap());
            }
        }
    }
    resp
}

fn config(origin: SocketAddr, dir: &std::path::Path) -> Config {
    common::init_logs();
    let src = format!(
        r#"
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
data_dir = {dir:?}
default_upstream = "api"
shutdown_grace = "1s"

[cache]
allow_purge = true

[upstreams.api]
url = "http://{origin}"
connect_timeout = "500ms"
first_byte_timeout = "2s"

[[routes]]
name = "strict"
prefix = "/strict/"
offline_stale = "rfc"
"#,
        dir = dir.display().to_string()
    );
    Config::from_toml(&src, "rfc9111.toml", &Overrides::default()).unwrap()
}

struct Env {
    origin: Origin,
    outpost: Outpost,
    client: HttpClient,
    dir: tempfile::TempDir,
}

impl Env {
    async fn start() -> Env {
        let origin = Origin::start().await;
        let dir = tempfile::tempdir().unwrap();
        let outpost = Outpost::start(config(origin.addr, dir.path())).await.unwrap();
        Env {
            origin,
            outpost,
            client: HttpClient::new(Duration::from_secs(10)),
            dir,
        }
    }

    async fn call(&self, method: Method, path: &str, headers: &[(&str, &str)]) -> Collected {
        let url = format!("http://{}{path}", self.outpost.addr());
        self.client.call(method, &url, headers, None).await.unwrap()
    }

    async fn get(&self, path: &str) -> Collected {
        self.call(Method::GET, path, &[]).await
    }

    async fn get_as(&self, path: &str, auth: &str) -> Collected {
        self.call(Method::GET, path, &[("authorization", auth)]).await
    }

    /// Two GETs; true when the second was answered from the store without the origin.
    async fn second_is_a_hit(&self, path: &str) -> bool {
        self.get(path).await;
        let before = self.origin.hits();
        let r = self.get(path).await;
        r.header("x-outpost-cache") == Some("HIT") && self.origin.hits() == before
    }

    async fn admin(&self, method: Method, path: &str) -> serde_json::Value {
        let token = common::admin_token(self.dir.path());
        admin_call(self.outpost.admin_addr(), method, path, &token)
            .await
            .unwrap()
    }

    async fn stop(mut self) {
        self.outpost.shutdown().await;
        self.origin.stop().await;
    }
}

/// RFC 9213 §2.2: the most specific targeted field present wins and `Cache-Control` is then ignored
/// entirely; an invalid targeted field is ignored as if absent.
#[tokio::test]
async fn targeted_cache_fields_take_precedence_rfc9213() {
    let env = Env::start().await;
    // Outpost-Cache-Control lets the backend cache for the sidecar what browsers must not store.
    assert!(
        env.second_is_a_hit("/t1?h=Cache-Control:no-store|Outpost-Cache-Control:max-age=60")
            .await
    );
    // CDN-Cache-Control applies when there is no Outpost-specific field.
    assert!(
        !env.second_is_a_hit("/t2?h=Cache-Control:max-age=60|CDN-Cache-Control:no-store")
            .await
    );
    assert!(
        env.second_is_a_hit("/t3?h=Cache-Control:no-store|CDN-Cache-Control:max-age=60")
            .await
    );
    // The most specific wins over the CDN field.
    assert!(
        env.second_is_a_hit("/t4?h=Cache-Control:no-store|CDN-Cache-Control:no-store|Outpost-Cache-Control:max-age=60")
            .await
    );
    // Not a dictionary (upper-case key): ignored, Cache-Control governs.
    assert!(
        env.second_is_a_hit("/t5?h=Cache-Control:max-age=60|Outpost-Cache-Control:No-Store")
            .await
    );
    env.stop().await;
}

/// RFC 9111 §5.1: an `Age` that is not one non-negative integer makes the stored answer stale.
#[tokio::test]
async fn an_invalid_age_makes_the_answer_stale_rfc9111_5_1() {
    let env = Env::start().await;
    assert!(env.second_is_a_hit("/age-ok?h=Cache-Control:max-age=60|Age:5").await);
    assert!(
        !env.second_is_a_hit("/age-list?h=Cache-Control:max-age=60|Age:old%2C%200")
            .await
    );
    assert!(!env.second_is_a_hit("/age-neg?h=Cache-Control:max-age=60|Age:-1").await);
    env.stop().await;
}

/// RFC 9211 members next to X-Outpost-Cache, after any the origin's own caches added.
#[tokio::test]
async fn cache_status_uses_the_rfc9211_vocabulary() {
    let mut env = Env::start().await;
    let path = "/cs?h=Cache-Control:max-age=0|ETag:%22v1%22";
    let r = env.get(path).await;
    assert_eq!(
        r.header("cache-status"),
        Some("Outpost; fwd=uri-miss; fwd-status=200; stored")
    );
    let r = env
        .get("/cs-fresh?h=Cache-Control:max-age=60|Cache-Status:CDN;%20hit")
        .await;
    assert_eq!(
        r.header("cache-status"),
        Some("CDN; hit, Outpost; fwd=uri-miss; fwd-status=200; stored")
    );
    let r = env
        .get("/cs-fresh?h=Cache-Control:max-age=60|Cache-Status:CDN;%20hit")
        .await;
    assert_eq!(
        r.header("cache-status"),
        Some("Outpost; hit"),
        "a stored member is not replayed"
    );
    let r = env.get("/nostore?h=Cache-Control:no-store").await;
    assert_eq!(r.header("cache-status"), Some("Outpost; fwd=uri-miss; fwd-status=200"));
    env.origin.stop().await;
    let r = env.get(path).await;
    assert_eq!(r.header("cache-status"), Some("Outpost; hit; detail=offline"));
    let r = env.get("/never-seen").await;
    assert_eq!(r.head.status, 503);
    assert_eq!(r.header("cache-status"), Some("Outpost; fwd=uri-miss; detail=offline"));
    env.outpost.shutdown().await;
}

/// RFC 9111 §4.2.4: with `offline_stale = "rfc"` a stale answer whose origin said must-revalidate or
/// no-cache is never served, not even disconnected (504); the default route keeps serving it offline,
/// which is what offline-first apps want from Rails' `max-age=0, private, must-revalidate`.
#[tokio::test]
async fn rfc_routes_never_serve_prohibited_stale_answers_and_others_do_offline() {
    let mut env = Env::start().await;
    let rails = "?h=Cache-Control:max-age=0%2C%20private%2C%20must-revalidate";
    let lax = format!("/lax{rails}");
    let strict = format!("/strict/x{rails}");
    let strict_no_cache = "/strict/nc?h=Cache-Control:no-cache";
    let strict_plain = "/strict/plain?h=Cache-Control:max-age=0";
    for p in [lax.as_str(), strict.as_str(), strict_no_cache, strict_plain] {
        assert_eq!(env.get(p).await.head.status, 200);
    }
    env.origin.stop().await;
    let r = env.get(&lax).await;
    assert_eq!(
        (r.head.status.as_u16(), r.header("x-outpost-cache")),
        (200, Some("OFFLINE"))
    );
    for p in [strict.as_str(), strict_no_cache] {
        let r = env.get(p).await;
        assert_eq!(r.head.status, 504, "{p}");
        assert!(
            String::from_utf8_lossy(&r.body).contains("offline_stale"),
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(
            r.header("cache-status"),
            Some("Outpost; fwd=uri-miss; detail=stale-forbidden")
        );
    }
    // Stale without a prohibition is still served on an rfc route (§4.2.4 allows it disconnected).
    let r = env.get(strict_plain).await;
    assert_eq!(
        (r.head.status.as_u16(), r.header("x-outpost-cache")),
        (200, Some("OFFLINE"))
    );
    env.outpost.shutdown().await;
}

/// Purge one URL: every Vary variant, every user or one; `PURGE` from the app removes only its own.
#[tokio::test]
async fn purge_removes_one_url_for_every_user_or_one() {
    let env = Env::start().await;
    let path = "/p?h=Cache-Control:max-age=60|Vary:Accept-Language";
    for (auth, lang) in [
        ("Bearer alice-token", "en"),
        ("Bearer alice-token", "de"),
        ("Bearer bob-token", "en"),
    ] {
        env.call(Method::GET, path, &[("authorization", auth), ("accept-language", lang)])
            .await;
    }
    env.get_as("/q?h=Cache-Control:max-age=60", "Bearer alice-token").await;
    let encoded: String = form_urlencoded::byte_serialize(path.as_bytes()).collect();
    let v = env
        .admin(Method::DELETE, &format!("/api/cache?url={encoded}&partition=nobody"))
        .await;
    assert_eq!(v["purged_entries"], 0);
    let v = env.admin(Method::DELETE, &format!("/api/cache?url={encoded}")).await;
    assert_eq!(v["purged_entries"], 3, "{v}");
    let r = env
        .call(
            Method::GET,
            path,
            &[("authorization", "Bearer bob-token"), ("accept-language", "en")],
        )
        .await;
    assert_eq!(r.header("x-outpost-cache"), Some("MISS"));
    // Other URLs stay.
    let r = env.get_as("/q?h=Cache-Control:max-age=60", "Bearer alice-token").await;
    assert_eq!(r.header("x-outpost-cache"), Some("HIT"));
    // PURGE from an app: only the caller's answers.
    env.get_as("/q?h=Cache-Control:max-age=60", "Bearer bob-token").await;
    let r = env
        .call(
            Method::from_bytes(b"PURGE").unwrap(),
            "/q?h=Cache-Control:max-age=60",
            &[("authorization", "Bearer alice-token")],
        )
        .await;
    assert_eq!(r.head.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["purged_entries"], 1);
    let r = env.get_as("/q?h=Cache-Control:max-age=60", "Bearer bob-token").await;
    assert_eq!(r.header("x-outpost-cache"), Some("HIT"), "bob's answer stays");
    let r = env.get_as("/q?h=Cache-Control:max-age=60", "Bearer alice-token").await;
    assert_eq!(r.header("x-outpost-cache"), Some("MISS"));
    // The CLI says the same through the admin API.
    // Options after the subcommand, as people type them.
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_outpost"));
    cmd.args(["cache", "purge", "/q?h=Cache-Control:max-age=60"])
        .arg("--admin")
        .arg(env.outpost.admin_addr().to_string())
        .arg("--data-dir")
        .arg(env.dir.path());
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("purged 2 entries"), "{text}");
    env.stop().await;
}

/// `PURGE` is refused unless `[cache] allow_purge` is on.
#[tokio::test]
async fn purge_from_apps_is_off_by_default() {
    let env = common::TestEnv::start().await;
    let r = env
        .client
        .call(
            Method::from_bytes(b"PURGE").unwrap(),
            &env.url("/api/v1/library"),
            &[],
            None,
        )
        .await
        .unwrap();
    assert_eq!(r.head.status, 405);
    env.stop().await;
}
