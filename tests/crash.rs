//! Crash testing: Outpost runs as a real process under a mixed load (hits, misses, audio fills, range
//! reads, offline enqueues, replays) and is SIGKILLed at random moments, then restarted on the same data
//! dir. Checked every cycle: it starts again (RocksDB opens, the lock is free) and every body it served is
//! the origin's bytes. Checked at the end: every write it acknowledged reached the backend exactly once,
//! and `outpost verify` finds nothing wrong.
//!
//! 50 kills by default (and 25 more with encryption at rest on); `CRASHTEST_RUNS=500 cargo test --release
//! --test crash` for the long run (both variants).

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outpost::admin::client::{get_json, HttpClient};
use outpost::demo::{audio_bytes, DemoBackend, DemoOptions, Fault};
use rand::Rng;

const AUDIO: usize = 256 * 1024;

struct Running {
    child: Child,
    addr: String,
    admin: std::net::SocketAddr,
}

fn start(config: &std::path::Path) -> Running {
    let mut child = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn outpost");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the listening line");
    // "outpost listening on http://A (admin http://B)"
    let mut parts = line.split("http://").skip(1);
    let addr = parts.next().and_then(|p| p.split_whitespace().next()).unwrap_or("");
    let admin = parts.next().map(|p| p.trim().trim_end_matches(')')).unwrap_or("");
    assert!(!addr.is_empty(), "outpost did not start: {line:?}");
    Running {
        child,
        addr: addr.to_string(),
        admin: admin.parse().expect("admin address"),
    }
}

fn kill(mut r: Running) {
    let _ = r.child.kill(); // SIGKILL
    let _ = r.child.wait();
}

/// What the load saw: acknowledged write keys, and bodies that were not the origin's.
#[derive(Default)]
struct Seen {
    acked: HashSet<String>,
    sent: HashSet<String>,
    bad_bodies: Vec<String>,
    served: u64,
}

async fn load(
    base: String,
    client: HttpClient,
    cycle: usize,
    snapshots: Arc<HashMap<String, Vec<u8>>>,
    seen: Arc<Mutex<Seen>>,
) {
    // A JoinSet aborts its tasks when dropped, i.e. when this load is aborted at the kill.
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..4 {
        let base = base.clone();
        let client = client.clone();
        let snapshots = snapshots.clone();
        let seen = seen.clone();
        tasks.spawn(async move {
            for n in 0.. {
                let pick = rand::rng().random_range(0..10);
                if worker == 0 && pick < 6 {
                    let key = format!("crash-{cycle}-{n}");
                    seen.lock().unwrap().sent.insert(key.clone());
                    let body = format!(r#"{{"text":"{key}"}}"#).into_bytes();
                    let r = client
                        .call(
                            http::Method::POST,
                            &format!("{base}/api/v1/threads/t1/messages"),
                            &[("idempotency-key", key.as_str()), ("content-type", "application/json")],
                            Some(body),
                        )
                        .await;
                    if let Ok(r) = r {
                        if r.head.status.is_success() {
                            seen.lock().unwrap().acked.insert(key);
                        }
                    }
                    continue;
                }
                let id = format!("a{}", rand::rng().random_range(1..=6));
                let want: Vec<u8> = audio_bytes(&id, AUDIO).flat_map(|c| c.to_vec()).collect();
                let (path, range, expect): (String, Option<String>, Vec<u8>) = match pick {
                    0..=3 => (format!("/media/s3/renders/{id}.mp3"), None, want),
                    4..=6 => {
                        let a = rand::rng().random_range(0..AUDIO - 1);
                        let b = (a + rand::rng().random_range(1..65536)).min(AUDIO - 1);
                        (
                            format!("/media/s3/renders/{id}.mp3"),
                            Some(format!("bytes={a}-{b}")),
                            want[a..=b].to_vec(),
                        )
                    }
                    _ => {
                        let t = rand::rng().random_range(1..=3);
                        let m = rand::rng().random_range(1..=4);
                        let p = format!("/api/v1/threads/t{t}/messages/t{t}-m{m}/snapshot");
                        let e = snapshots[&p].clone();
                        (p, None, e)
                    }
                };
                let headers: Vec<(&str, &str)> = range.iter().map(|r| ("range", r.as_str())).collect();
                let Ok(r) = client
                    .call(http::Method::GET, &format!("{base}{path}"), &headers, None)
                    .await
                else {
                    continue;
                };
                let status = r.head.status.as_u16();
                if status == 200 || status == 206 {
                    let mut s = seen.lock().unwrap();
                    s.served += 1;
                    let ok = if status == 206 || range.is_none() {
                        r.body == expect
                    } else {
                        // A 200 to a range request carries the whole object.
                        r.body.len() == AUDIO
                    };
                    if !ok {
                        s.bad_bodies
                            .push(format!("{path} {range:?} -> {status}, {} bytes", r.body.len()));
                    }
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

fn config(dir: &std::path::Path, backend: &DemoBackend, encrypt: bool) -> std::path::PathBuf {
    let mut src = format!(
        r#"listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
data_dir = {data:?}
default_upstream = "api"
max_size = "3MB"

[upstreams.api]
url = "{api}"
connect_timeout = "300ms"
first_byte_timeout = "2s"
probe_interval = "200ms"
probe_path = "/api/v1/health"

[upstreams.media]
url = "{media}"
connect_timeout = "300ms"
first_byte_timeout = "2s"

[queue]
backoff_base = "50ms"
backoff_cap = "500ms"

[[routes]]
name = "messages"
path = "/api/v1/threads/{{thread_id}}/messages"
kind = "messages"

[[routes]]
name = "snapshots"
path = "/api/v1/threads/{{thread_id}}/messages/{{message_id}}/snapshot"
kind = "snapshots"
retain = {{ group = "{{thread_id}}", keep_last = 2 }}

[[routes]]
name = "media"
prefix = "/media/s3/"
strip_prefix = "/media/s3"
upstream = "media"
kind = "audio"
ignore_query = ["X-Amz-*"]
"#,
        data = dir.join("data").display().to_string(),
        api = backend.api_url(),
        media = backend.media_url(),
    );
    if encrypt {
        let key = dir.join("key");
        std::fs::write(&key, "5e".repeat(32)).unwrap();
        src.push_str(&format!("\n[encryption]\nkey_file = {:?}\n", key.display().to_string()));
    }
    let path = dir.join("outpost.toml");
    std::fs::write(&path, src).unwrap();
    path
}

fn runs(default: usize) -> usize {
    std::env::var("CRASHTEST_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_no_acknowledged_write_and_serves_only_origin_bytes() {
    crash_run(runs(50), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_encryption_at_rest_loses_nothing_and_serves_only_origin_bytes() {
    crash_run(runs(25), true).await;
}

async fn crash_run(runs: usize, encrypt: bool) {
    let backend = DemoBackend::start(DemoOptions {
        audio_size: AUDIO,
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &backend, encrypt);
    let client = HttpClient::new(Duration::from_secs(5));
    let mut snapshots = HashMap::new();
    for t in 1..=3 {
        for m in 1..=4 {
            let p = format!("/api/v1/threads/t{t}/messages/t{t}-m{m}/snapshot");
            let r = client
                .call(http::Method::GET, &format!("{}{p}", backend.api_url()), &[], None)
                .await
                .unwrap();
            snapshots.insert(p, r.body.to_vec());
        }
    }
    let snapshots = Arc::new(snapshots);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let started = Instant::now();
    for cycle in 0..runs {
        // Half the cycles run with the backend down: writes queue, reads come from the store.
        let down = rand::rng().random_bool(0.5);
        backend.set_fault(if down { Fault::Down } else { Fault::Up });
        let running = start(&cfg);
        let base = format!("http://{}", running.addr);
        let work = tokio::spawn(load(base, client.clone(), cycle, snapshots.clone(), seen.clone()));
        tokio::time::sleep(Duration::from_millis(rand::rng().random_range(20..400))).await;
        kill(running);
        work.abort();
        let _ = work.await;
    }
    // Last start with the backend up: everything acknowledged must drain to the backend.
    backend.set_fault(Fault::Up);
    let running = start(&cfg);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let q = get_json(
            running.admin,
            "/api/queue",
            &common::admin_token(&dir.path().join("data")),
        )
        .await
        .unwrap();
        if q["depth"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the queue never drained: {q}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(running.child.id().to_string())
        .status();
    let mut child = running.child;
    let _ = child.wait();

    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let mut applied: HashMap<String, usize> = HashMap::new();
    for m in backend.state().mutations() {
        if let Some(k) = m.idempotency_key {
            if k.starts_with("crash-") {
                *applied.entry(k).or_default() += 1;
            }
        }
    }
    let lost: Vec<_> = seen.acked.iter().filter(|k| !applied.contains_key(*k)).collect();
    let twice: Vec<_> = applied.iter().filter(|(_, n)| **n > 1).collect();
    let unknown: Vec<_> = applied.keys().filter(|k| !seen.sent.contains(*k)).collect();
    eprintln!(
        "crashtest{}: {runs} kills in {:.1}s, {} writes acknowledged, {} applied, {} bodies served and checked",
        if encrypt { " (encrypted)" } else { "" },
        started.elapsed().as_secs_f64(),
        seen.acked.len(),
        applied.len(),
        seen.served
    );
    assert!(
        seen.bad_bodies.is_empty(),
        "bodies that are not the origin's: {:?}",
        seen.bad_bodies
    );
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    assert!(twice.is_empty(), "writes applied twice: {twice:?}");
    assert!(unknown.is_empty(), "writes nobody sent: {unknown:?}");
    assert!(
        seen.acked.len() > runs / 4,
        "the load acknowledged too few writes to mean anything"
    );
    assert!(
        seen.served > runs as u64,
        "the load was served too few bodies to mean anything"
    );

    let mut verify = Command::new(env!("CARGO_BIN_EXE_outpost"));
    verify.arg("verify").arg("--data-dir").arg(dir.path().join("data"));
    if encrypt {
        verify.arg("--key-file").arg(dir.path().join("key"));
    }
    let out = verify.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // Keep the evidence: the data dir stays for `outpost verify` and a look by hand.
        let kept = dir.keep();
        panic!(
            "verify after the crashes (data dir kept at {}):\n{text}{}",
            kept.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let tmp = std::fs::read_dir(dir.path().join("data/blobs/tmp"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(tmp, 0, "temp files left behind");
    backend.stop().await;
}
