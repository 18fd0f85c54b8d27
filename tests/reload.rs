//! Config reload: `Outpost::reload` swaps routes and upstreams for new requests while requests in flight
//! finish on the old ones, and `SIGHUP` to `outpost serve` reads the file again (a broken file leaves
//! the running config in place and says where it is broken).

mod common;

use std::io::BufRead;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{config_from, Origin};
use http::{Method, Response};
use outpost::admin::client::HttpClient;
use outpost::body::{self, ProxyBody};
use outpost::Outpost;

/// An origin answering `name` to everything (never stored), after `delay` on `/slow`.
async fn origin(name: &'static str) -> Origin {
    Origin::start(move |req, _| async move {
        if req.uri().path() == "/slow" {
            tokio::time::sleep(Duration::from_millis(800)).await;
        }
        let mut r: Response<ProxyBody> = Response::new(body::full(name));
        r.headers_mut()
            .insert(http::header::CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
        r
    })
    .await
}

fn toml(upstream: &str, dir: &std::path::Path, extra: &str) -> String {
    format!(
        "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n{extra}\n\
         [upstreams.api]\nurl = \"{upstream}\"\n",
        dir.display()
    )
}

async fn body_of(client: &HttpClient, url: &str) -> String {
    let r = client.call(Method::GET, url, &[], None).await.expect("request");
    String::from_utf8_lossy(&r.body).into_owned()
}

#[tokio::test]
async fn a_reload_serves_new_requests_with_the_new_config_and_lets_old_ones_finish() {
    let (a, b) = (origin("A").await, origin("B").await);
    let dir = tempfile::tempdir().unwrap();
    let outpost = Outpost::start(config_from(&toml(&a.url(), dir.path(), "")))
        .await
        .unwrap();
    let base = format!("http://{}", outpost.addr());
    let client = HttpClient::new(Duration::from_secs(10));
    assert_eq!(body_of(&client, &format!("{base}/x")).await, "A");

    // A request in flight when the config changes finishes on the upstream it started with.
    let slow = {
        let (client, url) = (client.clone(), format!("{base}/slow"));
        tokio::spawn(async move { body_of(&client, &url).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let reloaded = outpost.reload(config_from(&toml(&b.url(), dir.path(), ""))).unwrap();
    assert!(reloaded.restart_needed.is_empty(), "{reloaded:?}");
    assert_eq!(body_of(&client, &format!("{base}/x")).await, "B");
    assert_eq!(slow.await.unwrap(), "A");
    assert!(outpost.config().upstreams[0]
        .url
        .to_string()
        .contains(&b.addr.to_string()));

    // What only a restart can change is named, and kept.
    let moved = toml(&b.url(), dir.path(), "").replacen("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:1\"", 1);
    let r = outpost.reload(config_from(&moved)).unwrap();
    assert_eq!(r.restart_needed, vec!["listen"]);
    assert_eq!(body_of(&client, &format!("{base}/x")).await, "B");
    outpost.shutdown().await;
}

#[tokio::test]
async fn a_reload_keeps_knowing_that_an_upstream_is_down() {
    let mut a = origin("A").await;
    let dir = tempfile::tempdir().unwrap();
    let src = toml(&a.url(), dir.path(), "");
    let outpost = Outpost::start(config_from(&src)).await.unwrap();
    let base = format!("http://{}", outpost.addr());
    let client = HttpClient::new(Duration::from_secs(10));
    a.stop().await;
    let r = client.call(Method::GET, &format!("{base}/x"), &[], None).await.unwrap();
    assert_eq!(r.head.status, 503, "offline, nothing stored for /x");
    assert!(!outpost.upstreams().get(0).connectivity().is_online());
    // Same name and URL: the new clients start from what the old ones knew.
    outpost
        .reload(config_from(
            &src.replace("[upstreams.api]", "max_size = \"20MB\"\n[upstreams.api]"),
        ))
        .unwrap();
    assert!(!outpost.upstreams().get(0).connectivity().is_online());
    outpost.shutdown().await;
}

/// The whole path a user takes: edit the file, `kill -HUP`, and the running process follows.
#[tokio::test(flavor = "multi_thread")]
async fn sighup_reads_the_file_again_and_a_broken_file_changes_nothing() {
    let (a, b) = (origin("A").await, origin("B").await);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("outpost.toml");
    let data = dir.path().join("data");
    std::fs::write(&file, toml(&a.url(), &data, "")).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["serve", "--config"])
        .arg(&file)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        line
    })
    .await
    .unwrap();
    let addr = line
        .strip_prefix("outpost listening on http://")
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("{line}"))
        .to_string();
    let stderr = Arc::new(Mutex::new(String::new()));
    {
        let (err, pipe) = (stderr.clone(), child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                err.lock().unwrap().push_str(&(l + "\n"));
            }
        });
    }
    let hup = || {
        std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
    };
    let client = HttpClient::new(Duration::from_secs(10));
    let url = format!("http://{addr}/x");
    assert_eq!(body_of(&client, &url).await, "A");

    // The request log line: the app's request id, the query with its signature hidden.
    let r = client
        .call(
            Method::GET,
            &format!("{url}?X-Amz-Signature=secret123&page=2"),
            &[("x-request-id", "app-req-7")],
            None,
        )
        .await
        .unwrap();
    assert_eq!(r.header("x-request-id"), Some("app-req-7"));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = stderr.lock().unwrap().clone();
        if s.contains("app-req-7") && s.contains("/x?X-Amz-Signature=REDACTED&page=2") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no request line in:\n{s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!stderr.lock().unwrap().contains("secret123"));

    std::fs::write(&file, toml(&b.url(), &data, "")).unwrap();
    hup();
    common::eventually("the reloaded upstream answers", 10, || {
        let (client, url) = (client.clone(), url.clone());
        async move { body_of(&client, &url).await == "B" }
    })
    .await;

    // A broken file: logged with file, line and key; the process keeps running on the last good config.
    std::fs::write(&file, toml(&a.url(), &data, "max_size = \"lots\"")).unwrap();
    hup();
    let file_name = file.display().to_string();
    common::eventually("the refusal is logged", 10, || {
        let s = stderr.lock().unwrap().clone();
        let f = file_name.clone();
        async move { s.contains("config reload refused") && s.contains(&format!("{f}:4")) && s.contains("max_size") }
    })
    .await;
    assert_eq!(body_of(&client, &url).await, "B");
    assert!(child.try_wait().unwrap().is_none(), "still running after a bad reload");

    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}: {}", stderr.lock().unwrap());
}
