//! Shared test builders: the demo backend and Outpost on 127.0.0.1:0 with a temp data dir.
#![allow(dead_code)]

pub mod browser;

use std::time::Duration;

use outpost::admin::client::{Collected, HttpClient};
use outpost::config::{Config, Overrides};
use outpost::demo::{DemoBackend, DemoOptions};
use outpost::Outpost;

pub struct TestEnv {
    pub backend: DemoBackend,
    pub outpost: Outpost,
    pub client: HttpClient,
    pub dir: tempfile::TempDir,
    pub config: Config,
}

impl TestEnv {
    /// Demo backend + Outpost with the demo's routes.
    pub async fn start() -> TestEnv {
        Self::start_with(|_| {}).await
    }

    /// Same, letting the test adjust the config before start.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestEnv {
        Self::start_full(DemoOptions::default(), adjust).await
    }

    /// Same, with a demo backend shaped by `opts`.
    pub async fn start_full(opts: DemoOptions, adjust: impl FnOnce(&mut Config)) -> TestEnv {
        init_logs();
        let backend = DemoBackend::start(opts).await.expect("demo backend");
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = outpost::demo::story::demo_config(&backend, dir.path()).expect("demo config");
        adjust(&mut config);
        let outpost = Outpost::start(config.clone()).await.expect("outpost");
        TestEnv {
            backend,
            outpost,
            client: HttpClient::new(Duration::from_secs(20)),
            dir,
            config,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.outpost.addr(), path)
    }

    pub async fn get(&self, path: &str) -> Collected {
        self.client
            .call(http::Method::GET, &self.url(path), &[], None)
            .await
            .expect("request")
    }

    /// Stops Outpost, runs `between` (with the backend and the data dir), and starts it again on the same
    /// config and data dir.
    pub async fn restart(self, between: impl FnOnce(&DemoBackend, &std::path::Path)) -> TestEnv {
        let stopped = self.stop_outpost().await;
        between(&stopped.backend, stopped.dir.path());
        stopped.start().await
    }

    /// Stops Outpost only; the backend, client, data dir and config stay.
    pub async fn stop_outpost(self) -> Stopped {
        let TestEnv {
            backend,
            outpost,
            client,
            dir,
            config,
        } = self;
        outpost.shutdown().await;
        Stopped {
            backend,
            client,
            dir,
            config,
        }
    }

    /// True when `path` is answered from the store alone (`only-if-cached`).
    pub async fn is_stored(&self, path: &str) -> bool {
        let r = self
            .client
            .call(
                http::Method::GET,
                &self.url(path),
                &[("cache-control", "only-if-cached")],
                None,
            )
            .await
            .expect("request");
        r.head.status == 200
    }

    pub async fn stop(self) {
        self.outpost.shutdown().await;
        self.backend.stop().await;
    }
}

/// A [`TestEnv`] whose Outpost is stopped.
pub struct Stopped {
    pub backend: DemoBackend,
    pub client: HttpClient,
    pub dir: tempfile::TempDir,
    pub config: Config,
}

impl Stopped {
    /// Starts Outpost again on the same config and data dir.
    pub async fn start(self) -> TestEnv {
        let outpost = Outpost::start(self.config.clone()).await.expect("restart");
        TestEnv {
            backend: self.backend,
            outpost,
            client: self.client,
            dir: self.dir,
            config: self.config,
        }
    }
}

/// Polls `f` every 20 ms until it holds; fails the test after `secs`.
pub async fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls an async check every 20 ms until it holds; fails the test after `secs` (for waits on
/// background work, never for time to pass: that uses tokio's paused clock).
pub async fn eventually<F, Fut>(what: &str, secs: u64, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Config from TOML text with no overrides.
/// The admin token of a data dir.
pub fn admin_token(dir: &std::path::Path) -> String {
    std::fs::read_to_string(outpost::admin::token_path(dir))
        .expect("admin token")
        .trim()
        .to_string()
}

/// Test logs through `RUST_LOG` (once per test binary).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

pub fn config_from(src: &str) -> Config {
    Config::from_toml(src, "test.toml", &Overrides::default()).expect("config")
}

/// Resident memory of this process in bytes (Linux).
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Every file under `dir`, recursively.
pub fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// An origin of the test's own on 127.0.0.1:0: `handler` gets each request and the origin's address;
/// requests are counted; `stop` closes it (connections are refused from then on).
pub struct Origin {
    pub addr: std::net::SocketAddr,
    pub hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: outpost::server::ShutdownSignal,
    server: Option<outpost::server::Server>,
}

impl Origin {
    pub async fn start<H, F>(handler: H) -> Origin
    where
        H: Fn(http::Request<hyper::body::Incoming>, std::net::SocketAddr) -> F + Clone + Send + Sync + 'static,
        F: std::future::Future<Output = http::Response<outpost::body::ProxyBody>> + Send + 'static,
    {
        Origin::start_at("127.0.0.1:0".parse().unwrap(), handler).await
    }

    /// An origin on `addr` (one that was stopped coming back where the proxy expects it).
    pub async fn start_at<H, F>(addr: std::net::SocketAddr, handler: H) -> Origin
    where
        H: Fn(http::Request<hyper::body::Incoming>, std::net::SocketAddr) -> F + Clone + Send + Sync + 'static,
        F: std::future::Future<Output = http::Response<outpost::body::ProxyBody>> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = outpost::server::ShutdownSignal::new();
        let h = hits.clone();
        let server = outpost::server::Server::spawn(
            "origin",
            listener,
            stop.clone(),
            Duration::from_millis(100),
            Duration::from_secs(5),
            move |req, _| {
                h.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                handler(req, addr)
            },
        );
        Origin {
            addr,
            hits,
            stop,
            server: Some(server),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub async fn stop(&mut self) {
        self.stop.trigger();
        if let Some(s) = self.server.take() {
            s.finished().await;
        }
    }
}

/// RFC 7396 JSON Merge Patch as a test backend applies it (written here, independently of Outpost's own,
/// so that a backend never checks Outpost against itself).
pub fn merge_patch(target: &mut serde_json::Value, patch: &serde_json::Value) {
    let serde_json::Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = serde_json::json!({});
    }
    let t = target.as_object_mut().unwrap();
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(serde_json::Value::Null), v);
        }
    }
}

/// The start of a config for offline-write tests: loopback ports, `dir` as the data dir, quick replay
/// backoff, and one upstream `api` at `url` probed every 100 ms. Routes follow.
pub fn offline_config_head(dir: &std::path::Path, url: &str) -> String {
    format!(
        r#"
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
data_dir = {dir:?}
shutdown_grace = "1s"
[queue]
backoff_base = "20ms"
backoff_cap = "200ms"
[upstreams.api]
url = "{url}"
connect_timeout = "500ms"
probe_interval = "100ms"
"#,
        dir = dir.display().to_string()
    )
}
