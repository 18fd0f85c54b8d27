//! Faults around Outpost: a full disk under it (injected, and a real tmpfs filled to the last byte), and a
//! backend flapping up and down every 200 ms.

mod common;

use std::time::{Duration, Instant};

use common::{wait_until, TestEnv};
use outpost::admin::client::get_json;
use outpost::demo::{audio_bytes, Fault};

#[tokio::test]
async fn a_full_disk_keeps_serving_stores_nothing_partial_reports_and_recovers() {
    let env = TestEnv::start().await;
    let size = env.backend.state().audio_size();
    let bytes = |id: &str| -> Vec<u8> { audio_bytes(id, size).flat_map(|c| c.to_vec()).collect() };
    assert_eq!(env.get("/media/s3/renders/a1.mp3").await.body, bytes("a1"));
    env.outpost.store().blobs().inject_write_failures(true);
    // Misses are still answered with the origin's bytes, just not stored.
    let r = env.get("/media/s3/renders/a2.mp3").await;
    assert_eq!(r.head.status, 200);
    assert_eq!(r.body, bytes("a2"));
    let r = env.get("/api/v1/threads/t2/messages").await;
    assert_eq!(r.head.status, 200);
    assert!(!env.is_stored("/media/s3/renders/a2.mp3").await);
    assert!(!env.is_stored("/api/v1/threads/t2/messages").await);
    let stats = get_json(
        env.outpost.admin_addr(),
        "/api/stats",
        &common::admin_token(env.dir.path()),
    )
    .await
    .unwrap();
    // The first failure marks the store as not taking writes; later fills are not even attempted.
    assert!(stats["store_write_errors"].as_u64().unwrap() >= 1, "{stats}");
    let status = get_json(
        env.outpost.admin_addr(),
        "/api/status",
        &common::admin_token(env.dir.path()),
    )
    .await
    .unwrap();
    assert_eq!(status["store"]["writable"], false, "{status}");
    assert_eq!(status["store"]["disk_full"], true, "{status}");
    // Not ready (no token needed, like /healthz): the store does not take writes.
    let readyz = format!("http://{}/readyz", env.outpost.admin_addr());
    let r = env.client.call(http::Method::GET, &readyz, &[], None).await.unwrap();
    assert_eq!(r.head.status, 503);
    assert_eq!(r.json()["store"]["writable"], false);
    assert_eq!(r.json()["replay_worker"], "running");
    let tmp = std::fs::read_dir(env.dir.path().join("blobs/tmp")).unwrap().count();
    assert_eq!(tmp, 0, "no partial blob left behind");
    // What was stored before is still served, offline too.
    env.backend.set_fault(Fault::Down);
    let r = env.get("/media/s3/renders/a1.mp3").await;
    assert_eq!(r.body, bytes("a1"));
    env.backend.set_fault(Fault::Up);
    // The disk has room again: stored without a restart.
    env.outpost.store().blobs().inject_write_failures(false);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        env.get("/media/s3/renders/a2.mp3").await;
        if env.is_stored("/media/s3/renders/a2.mp3").await {
            break;
        }
        assert!(Instant::now() < deadline, "never stored again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = env.client.call(http::Method::GET, &readyz, &[], None).await.unwrap();
    assert_eq!(r.head.status, 200, "ready again: {}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["ready"], true);
    env.stop().await;
}

#[tokio::test]
async fn a_flapping_backend_loses_no_write_and_serves_only_whole_bodies() {
    let env = TestEnv::start().await;
    let size = env.backend.state().audio_size();
    let a1: Vec<u8> = audio_bytes("a1", size).flat_map(|c| c.to_vec()).collect();
    env.get("/media/s3/renders/a1.mp3").await;
    env.get("/api/v1/threads/t1/messages").await;
    let stop = Instant::now() + Duration::from_secs(3);
    let mut acked = Vec::new();
    let mut served = 0;
    let mut up = true;
    let mut flip = Instant::now() + Duration::from_millis(200);
    let mut n = 0;
    while Instant::now() < stop {
        if Instant::now() >= flip {
            up = !up;
            env.backend.set_fault(if up { Fault::Up } else { Fault::Down });
            flip = Instant::now() + Duration::from_millis(200);
        }
        n += 1;
        let key = format!("flap-{n}");
        let r = env
            .client
            .call(
                http::Method::POST,
                &env.url("/api/v1/threads/t1/messages"),
                &[("idempotency-key", key.as_str()), ("content-type", "application/json")],
                Some(format!(r#"{{"text":"{key}"}}"#).into_bytes()),
            )
            .await
            .unwrap();
        if r.head.status.is_success() {
            acked.push(key);
        }
        let r = env.get("/media/s3/renders/a1.mp3").await;
        if r.head.status == 200 {
            assert_eq!(r.body, a1, "a whole, correct body or none");
            served += 1;
        }
        let r = env.get("/api/v1/threads/t1/messages").await;
        assert!(r.head.status == 200 || r.head.status == 503, "{}", r.head.status);
    }
    env.backend.set_fault(Fault::Up);
    wait_until("the queue to drain", 30, || env.outpost.outbox().depth() == 0).await;
    let applied: Vec<String> = env
        .backend
        .state()
        .mutations()
        .into_iter()
        .filter_map(|m| m.idempotency_key)
        .filter(|k| k.starts_with("flap-"))
        .collect();
    for k in &acked {
        assert_eq!(applied.iter().filter(|a| *a == k).count(), 1, "{k} applied once");
    }
    assert!(
        acked.len() > 10 && served > 10,
        "{} acked, {served} served",
        acked.len()
    );
    env.stop().await;
}

#[tokio::test]
async fn a_5xx_storm_keeps_the_stored_answers_coming() {
    let env = TestEnv::start().await;
    let first = env.get("/api/v1/threads/t1/messages").await;
    assert_eq!(first.head.status, 200);
    for status in [500u16, 502, 503, 504] {
        env.backend.set_fault(Fault::Error { status });
        for _ in 0..5 {
            let r = env.get("/api/v1/threads/t1/messages").await;
            assert_eq!(r.head.status, 200, "stored answer during a {status} storm");
            assert_eq!(r.header("x-outpost-cache"), Some("STALE"));
            assert_eq!(r.body, first.body);
        }
    }
    // Without a stored answer the upstream's own error passes through.
    let miss = env.get("/api/v1/threads/t2/messages").await;
    assert_eq!(miss.head.status, 504);
    env.backend.set_fault(Fault::Up);
    let r = env.get("/api/v1/threads/t1/messages").await;
    assert_eq!(r.header("x-outpost-cache"), Some("MISS"), "fresh from the origin again");
    env.stop().await;
}

/// A real full disk under the data dir: a small tmpfs filled to the last byte while Outpost runs.
///
/// Needs permission to mount (root, as in CI). Elsewhere the test prints why it did not run and passes;
/// the same behaviour is covered with injected faults in `faults.rs` and the replay worker's unit tests.
#[cfg(target_os = "linux")]
mod real_full_disk {
    use std::io::Write;
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::time::Duration;

    use crate::common::{eventually, wait_until};
    use http::Method;
    use outpost::admin::client::{get_json, HttpClient};
    use outpost::demo::{DemoBackend, DemoOptions, Fault};
    use outpost::Outpost;

    /// A tmpfs mounted for the test, unmounted when dropped.
    struct Tmpfs {
        dir: tempfile::TempDir,
    }

    impl Tmpfs {
        fn mount(size: &str) -> Result<Tmpfs, String> {
            let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
            let out = Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(dir.path())
                .output()
                .map_err(|e| format!("cannot run mount: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "mount -t tmpfs failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            Ok(Tmpfs { dir })
        }

        fn path(&self) -> &Path {
            self.dir.path()
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
        }
    }

    /// Writes a file until the filesystem refuses more; returns its path.
    fn fill(dir: &Path) -> PathBuf {
        let path = dir.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![7u8; 64 * 1024];
        loop {
            if f.write_all(&chunk).and_then(|_| f.sync_data()).is_err() {
                break;
            }
        }
        // What is left is smaller than a chunk; take it too.
        for _ in 0..64 * 1024 {
            if f.write_all(&[7u8]).and_then(|_| f.sync_data()).is_err() {
                break;
            }
        }
        path
    }

    async fn status(outpost: &Outpost, token: &str) -> serde_json::Value {
        get_json(outpost.admin_addr(), "/api/status", token).await.unwrap()
    }

    /// The issue's sequence on a real filesystem: the disk fills while the app keeps writing offline. What
    /// is stored keeps being served; writes that cannot be made durable get a 507 naming the data dir
    /// (never a 202); replay that cannot record its own progress holds back instead of re-sending; and
    /// once space returns, the store takes writes again without a restart and every acknowledged write
    /// reaches the backend exactly once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_real_full_disk_refuses_writes_clearly_holds_replay_back_and_heals_without_a_restart() {
        crate::common::init_logs();
        let fs = match Tmpfs::mount("48m") {
            Ok(fs) => fs,
            Err(why) => {
                eprintln!("SKIPPED: needs a real small filesystem ({why}); run as root to include it");
                return;
            }
        };
        let backend = DemoBackend::start(DemoOptions::default()).await.unwrap();
        let data = fs.path().join("data");
        let mut config = outpost::demo::story::demo_config(&backend, &data).unwrap();
        config.queue.backoff_base = Duration::from_millis(20);
        config.queue.backoff_cap = Duration::from_millis(200);
        let outpost = Outpost::start(config).await.unwrap();
        let token = crate::common::admin_token(&data);
        let client = HttpClient::new(Duration::from_secs(20));
        let url = |p: &str| format!("http://{}{p}", outpost.addr());
        let get = |p: String| {
            let client = &client;
            async move { client.call(Method::GET, &p, &[], None).await.unwrap() }
        };
        let post = |key: String| {
            let client = &client;
            let u = url("/api/v1/echo");
            async move {
                let body = format!(r#"{{"key":"{key}","pad":"{}"}}"#, "x".repeat(64 * 1024));
                client
                    .call(
                        Method::POST,
                        &u,
                        &[("content-type", "application/json"), ("idempotency-key", &key)],
                        Some(body.into_bytes()),
                    )
                    .await
                    .unwrap()
            }
        };
        let library = get(url("/api/v1/library")).await;
        assert_eq!(library.head.status, 200);

        backend.set_fault(Fault::Down);
        // Three writes queued while there is room, then the disk fills.
        let mut accepted = Vec::new();
        for i in 0..3 {
            let key = format!("before{i}");
            let r = post(key.clone()).await;
            assert_eq!(r.head.status, 202, "{}", String::from_utf8_lossy(&r.body));
            accepted.push(key);
        }
        let filler = fill(fs.path());
        // Offline writes until the disk says no: each answer is either durable (202) or a clear 507.
        let mut refused = None;
        for i in 0..400 {
            let key = format!("k{i}");
            let r = post(key.clone()).await;
            match r.head.status.as_u16() {
                202 => accepted.push(key),
                507 => {
                    refused = Some(r);
                    break;
                }
                s => panic!("write {i}: {s} {}", String::from_utf8_lossy(&r.body)),
            }
        }
        let refused = refused.expect("the full disk never refused a write");
        let why = refused.json()["error"].as_str().unwrap_or("").to_string();
        assert!(
            why.contains(&data.display().to_string()) && why.contains("full"),
            "{why}"
        );
        assert!(refused.header("retry-after").is_some());
        for i in 0..3 {
            let r = post(format!("late{i}")).await;
            assert_eq!(r.head.status, 507, "still full: never a 202 it cannot keep");
        }
        eprintln!("{} writes acknowledged before the disk filled", accepted.len());
        let s = status(&outpost, &token).await;
        assert_eq!(s["store"]["writable"], false, "{s}");
        assert_eq!(s["store"]["disk_full"], true, "{s}");
        // What is stored is still served.
        let r = get(url("/api/v1/library")).await;
        assert_eq!((r.head.status.as_u16(), &r.body), (200, &library.body));

        // The backend is back while the disk is still full: the first write is delivered, its removal
        // is not stored, and it must not be sent again and again (578 arrivals in 10 s before the fix).
        backend.set_fault(Fault::Up);
        wait_until("the first replay", 20, || {
            backend.state().request_count("/api/v1/echo") >= 1
        })
        .await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let arrivals = backend.state().request_count("/api/v1/echo");
        assert_eq!(
            arrivals, 1,
            "arrivals while the store could not record the first delivery"
        );
        assert_eq!(
            outpost.outbox().depth(),
            accepted.len(),
            "nothing removed, nothing lost"
        );
        // Online GETs still work while nothing can be stored.
        wait_until("the upstream to be online", 20, || {
            outpost.upstreams().iter().all(|u| u.connectivity().is_online())
        })
        .await;
        let r = get(url("/api/v1/threads/t2/messages")).await;
        assert_eq!(r.head.status, 200);

        // Space comes back: the store heals by itself and the queue drains, each write once.
        std::fs::remove_file(&filler).unwrap();
        if std::env::var("DISK_FULL_DEBUG").is_ok() {
            tokio::time::sleep(Duration::from_secs(15)).await;
            let log = std::fs::read_to_string(data.join("db/LOG")).unwrap_or_default();
            for l in log
                .lines()
                .filter(|l| l.contains("rror") || l.contains("ecover") || l.contains("space"))
            {
                eprintln!("LOG: {l}");
            }
        }
        eventually("the store to take writes again", 60, || async {
            status(&outpost, &token).await["store"]["writable"] == true
        })
        .await;
        wait_until("the queue to drain", 60, || outpost.outbox().depth() == 0).await;
        let applied: Vec<String> = backend
            .state()
            .mutations()
            .iter()
            .filter_map(|m| m.idempotency_key.clone())
            .collect();
        assert_eq!(
            applied, accepted,
            "every acknowledged write, in order, and nothing else"
        );
        assert_eq!(
            backend.state().request_count("/api/v1/echo"),
            accepted.len() as u64,
            "each sent once"
        );
        // Fills are stored again, and offline writes are acknowledged again.
        eventually("a fill to be stored again", 20, || async {
            get(url("/api/v1/threads/t3/messages")).await;
            let r = client
                .call(
                    Method::GET,
                    &url("/api/v1/threads/t3/messages"),
                    &[("cache-control", "only-if-cached")],
                    None,
                )
                .await
                .unwrap();
            r.head.status == 200
        })
        .await;
        backend.set_fault(Fault::Down);
        let r = post("after".to_string()).await;
        assert_eq!(r.head.status, 202, "{}", String::from_utf8_lossy(&r.body));
        outpost.shutdown().await;
        backend.stop().await;
    }
}
