//! The offline mutation queue over real sockets: durable 202s, ordered exactly-once replay, conflicts,
//! 401 pauses, the admin API, a SIGKILL right after the 202, and captive portals.

mod common;

use std::time::{Duration, Instant};

use common::{wait_until, TestEnv};
use http::Method;
use outpost::admin::client::Collected;
use outpost::demo::{make_token, Fault};
use outpost::routes::ConflictPolicy;

fn fast_backoff(c: &mut outpost::config::Config) {
    c.queue.backoff_base = Duration::from_millis(20);
    c.queue.backoff_cap = Duration::from_millis(200);
}

/// A GET as the user of `auth` (`Bearer ...`).
async fn get_as(env: &TestEnv, path: &str, auth: &str) -> Collected {
    env.client
        .call(Method::GET, &env.url(path), &[("authorization", auth)], None)
        .await
        .expect("request")
}

async fn post(env: &TestEnv, path: &str, body: &str, headers: &[(&str, &str)]) -> Collected {
    let mut h = vec![("content-type", "application/json")];
    h.extend_from_slice(headers);
    env.client
        .call(Method::POST, &env.url(path), &h, Some(body.as_bytes().to_vec()))
        .await
        .expect("request")
}

#[tokio::test]
async fn offline_writes_survive_a_restart_and_replay_in_order_exactly_once() {
    let env = TestEnv::start_with(fast_backoff).await;
    env.get("/api/v1/library").await;
    env.backend.set_fault(Fault::Down);
    let a = post(&env, "/api/v1/library/items", r#"{"audio_file_id":"a3"}"#, &[]).await;
    assert_eq!(a.head.status, 202);
    assert_eq!(a.json()["queued"], true);
    assert_eq!(a.json()["position"], 1);
    let id = a.header("x-outpost-queued").unwrap().to_string();
    assert_eq!(a.json()["id"], id.as_str());
    let b = env
        .client
        .call(Method::DELETE, &env.url("/api/v1/library/items/l1"), &[], None)
        .await
        .unwrap();
    assert_eq!((b.head.status.as_u16(), b.json()["position"].as_u64()), (202, Some(2)));
    let c = post(
        &env,
        "/api/v1/threads/t2/messages",
        r#"{"text":"written offline"}"#,
        &[("idempotency-key", "app-key-1")],
    )
    .await;
    assert_eq!(c.head.status, 202);
    let lib = env.get("/api/v1/library").await;
    assert_eq!(
        lib.header("x-outpost-pending"),
        Some("2"),
        "the library has two writes pending"
    );

    let env = env.restart(|_, _| {}).await;
    assert_eq!(env.outpost.outbox().depth(), 3, "the queue survived the restart");
    env.backend.set_fault(Fault::Up);
    wait_until("the queue to drain", 15, || env.outpost.outbox().depth() == 0).await;

    let log = env.backend.state().mutations();
    let order: Vec<(String, String)> = log.iter().map(|m| (m.method.clone(), m.path.clone())).collect();
    assert_eq!(
        order,
        vec![
            ("POST".to_string(), "/api/v1/library/items".to_string()),
            ("DELETE".to_string(), "/api/v1/library/items/l1".to_string()),
            ("POST".to_string(), "/api/v1/threads/t2/messages".to_string()),
        ],
        "the app's order"
    );
    assert_eq!(
        log[2].idempotency_key.as_deref(),
        Some("app-key-1"),
        "the app's own key is kept"
    );
    assert!(
        log[0]
            .idempotency_key
            .as_deref()
            .is_some_and(|k| k.starts_with("outpost-")),
        "a generated key otherwise"
    );
    let lib = env.backend.state().library_audio_ids();
    assert!(
        lib.contains(&"a3".to_string()) && !lib.contains(&"a1".to_string()),
        "{lib:?}"
    );
    // The stored library was invalidated by the replay: the next read goes to the backend.
    let after = env.get("/api/v1/library").await;
    assert_eq!(after.header("x-outpost-cache"), Some("MISS"));
    assert!(after.header("x-outpost-pending").is_none());
    env.stop().await;
}

#[tokio::test]
async fn a_replay_whose_answer_was_lost_is_sent_again_with_the_same_key_and_applied_once() {
    let env = TestEnv::start_with(fast_backoff).await;
    env.backend.set_fault(Fault::Down);
    assert_eq!(
        post(&env, "/api/v1/library/items", r#"{"audio_file_id":"a4"}"#, &[])
            .await
            .head
            .status,
        202
    );
    // The backend applies the write but the answer breaks on the way back.
    env.backend.set_fault(Fault::ResetMidBody);
    wait_until("a first delivery", 10, || !env.backend.state().mutations().is_empty()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    env.backend.set_fault(Fault::Up);
    wait_until("the queue to drain", 10, || env.outpost.outbox().depth() == 0).await;
    let log = env.backend.state().mutations();
    assert_eq!(log.len(), 1, "applied exactly once: {log:?}");
    assert_eq!(
        env.backend
            .state()
            .library_audio_ids()
            .iter()
            .filter(|a| *a == "a4")
            .count(),
        1
    );
    env.stop().await;
}

#[tokio::test]
async fn a_write_while_earlier_ones_are_queued_queues_behind_them() {
    let env = TestEnv::start_with(fast_backoff).await;
    env.outpost.outbox().set_paused(true);
    env.backend.set_fault(Fault::Down);
    assert_eq!(
        post(&env, "/api/v1/library/items", r#"{"audio_file_id":"a6"}"#, &[])
            .await
            .head
            .status,
        202
    );
    env.backend.set_fault(Fault::Up);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Online now, but going first would reorder: this one queues too.
    let r = env
        .client
        .call(Method::DELETE, &env.url("/api/v1/library/items/a6"), &[], None)
        .await
        .unwrap();
    assert_eq!(r.head.status, 202);
    env.outpost.outbox().set_paused(false);
    wait_until("the queue to drain", 10, || env.outpost.outbox().depth() == 0).await;
    let methods: Vec<String> = env
        .backend
        .state()
        .mutations()
        .iter()
        .map(|m| m.method.clone())
        .collect();
    assert_eq!(methods, vec!["POST", "DELETE"]);
    assert!(!env.backend.state().library_audio_ids().contains(&"a6".to_string()));
    env.stop().await;
}

#[tokio::test]
async fn a_conflict_under_server_wins_is_dropped_and_recorded() {
    let env = TestEnv::start_with(|c| {
        fast_backoff(c);
        for r in &mut c.routes {
            if r.name == "library" {
                r.policy.conflict = ConflictPolicy::ServerWins;
            }
        }
    })
    .await;
    env.backend.set_fault(Fault::Down);
    // a1 is already in the demo library: the backend will answer 409.
    assert_eq!(
        post(&env, "/api/v1/library/items", r#"{"audio_file_id":"a1"}"#, &[])
            .await
            .head
            .status,
        202
    );
    env.backend.set_fault(Fault::Up);
    wait_until("the queue to drain", 10, || env.outpost.outbox().depth() == 0).await;
    let items = env.outpost.outbox().list().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].state.as_str(), "overridden");
    assert_eq!(items[0].response.as_ref().map(|r| r.0), Some(409));
    env.stop().await;
}

#[tokio::test]
async fn other_4xx_answers_become_dead_letters_that_can_be_retried() {
    let env = TestEnv::start_with(fast_backoff).await;
    env.backend.set_fault(Fault::Down);
    assert_eq!(
        post(&env, "/api/v1/library/items", r#"{"title":"no id"}"#, &[])
            .await
            .head
            .status,
        202
    );
    env.backend.set_fault(Fault::Up);
    wait_until("the queue to drain", 10, || env.outpost.outbox().depth() == 0).await;
    let items = env.outpost.outbox().list().unwrap();
    assert_eq!(items[0].state.as_str(), "dead_letter");
    let (status, body) = items[0].response.clone().unwrap();
    assert_eq!(status, 400);
    assert!(body.contains("audio_file_id is required"), "the answer is kept: {body}");
    env.stop().await;
}

#[tokio::test]
async fn a_401_pauses_only_that_users_writes_until_the_app_uses_a_refreshed_token() {
    let env = TestEnv::start_with(fast_backoff).await;
    let old = format!("Bearer {}", make_token("alice", 1));
    let bob_token = make_token("bob", 1);
    let bob = format!("Bearer {bob_token}");
    env.backend.state().accept_token(&bob_token);
    env.backend.set_fault(Fault::Down);
    // Alice's write first: in one shared line it would hold Bob's back.
    for (auth, id) in [(&old, "a6"), (&bob, "a9")] {
        let body = format!(r#"{{"audio_file_id":"{id}"}}"#);
        let r = post(&env, "/api/v1/library/items", &body, &[("authorization", auth)]).await;
        assert_eq!(r.head.status, 202);
    }
    // Without credentials a 401 cannot be cured by newer ones: a dead letter with the answer kept.
    let anon = post(&env, "/api/v1/library/items", r#"{"audio_file_id":"a4"}"#, &[]).await;
    assert_eq!(anon.head.status, 202);
    env.backend.set_fault(Fault::Unauthorized);
    wait_until("Alice to wait and the others to be done", 10, || {
        env.outpost.outbox().waiting_users() == ["sub:alice"] && env.outpost.outbox().depth() == 1
    })
    .await;
    assert_eq!(env.outpost.outbox().state(), outpost::queue::QueueState::Running);
    assert!(
        env.backend.state().library_audio_ids().contains(&"a9".to_string()),
        "Bob's write went on"
    );
    let items = env.outpost.outbox().list().unwrap();
    let dead: Vec<_> = items.iter().filter(|i| i.state.as_str() == "dead_letter").collect();
    assert_eq!(dead.len(), 1, "{items:?}");
    assert_eq!(dead[0].response.as_ref().map(|r| r.0), Some(401));
    assert_eq!(
        env.outpost.outbox().depth(),
        1,
        "nothing of Alice's lost while she waits"
    );
    // The app refreshes its token (not queued: the auth route has queue = false) and uses it.
    let refreshed = post(&env, "/api/v1/auth/refresh", "{}", &[]).await;
    assert_eq!(refreshed.head.status, 200);
    let new = format!("Bearer {}", refreshed.json()["token"].as_str().unwrap());
    let ok = get_as(&env, "/api/v1/threads", &new).await;
    assert_eq!(ok.head.status, 200);
    wait_until("the queue to drain", 10, || env.outpost.outbox().depth() == 0).await;
    assert!(env.backend.state().library_audio_ids().contains(&"a6".to_string()));
    assert!(env.outpost.outbox().waiting_users().is_empty());
    env.stop().await;
}

#[tokio::test]
async fn the_admin_api_lists_pauses_retries_and_drops_with_the_token_only() {
    let env = TestEnv::start_with(fast_backoff).await;
    env.backend.set_fault(Fault::Down);
    post(&env, "/api/v1/library/items", r#"{"audio_file_id":"a6"}"#, &[]).await;
    post(&env, "/api/v1/library/items", r#"{"audio_file_id":"a2"}"#, &[]).await;
    let admin = env.outpost.admin_addr();
    let token = std::fs::read_to_string(env.dir.path().join("admin.token")).unwrap();
    let list = outpost::admin::client::get_json(admin, "/api/queue", token.trim())
        .await
        .unwrap();
    assert_eq!(list["depth"], 2);
    assert_eq!(list["items"][0]["method"], "POST");
    // Reads need the token too (queued URLs and kept answers may hold secrets), and a page reaching the
    // port through DNS rebinding (a foreign Host) is refused even with it; the page itself and healthz
    // are open.
    for path in ["/api/queue", "/api/status", "/api/stats", "/metrics", "/api/events"] {
        let r = env
            .client
            .call(Method::GET, &format!("http://{admin}{path}"), &[], None)
            .await
            .unwrap();
        assert_eq!(r.head.status, 401, "{path} without the token");
    }
    let bearer = format!("Bearer {}", token.trim());
    let rebound = env
        .client
        .call(
            Method::GET,
            &format!("http://{admin}/api/queue"),
            &[("host", "evil.example:8788"), ("authorization", &bearer)],
            None,
        )
        .await
        .unwrap();
    assert_eq!(rebound.head.status, 403);
    for path in ["/", "/healthz"] {
        let r = env
            .client
            .call(Method::GET, &format!("http://{admin}{path}"), &[], None)
            .await
            .unwrap();
        assert_eq!(r.head.status, 200, "{path} is open");
    }
    let local = env
        .client
        .call(
            Method::GET,
            &format!("http://{admin}/api/queue"),
            &[
                ("host", &format!("localhost:{}", admin.port())),
                ("authorization", &bearer),
            ],
            None,
        )
        .await
        .unwrap();
    assert_eq!(local.head.status, 200, "localhost is a loopback name");
    let no = env
        .client
        .call(Method::POST, &format!("http://{admin}/api/queue/pause"), &[], None)
        .await
        .unwrap();
    assert_eq!(no.head.status, 401);
    let wrong = env
        .client
        .call(
            Method::POST,
            &format!("http://{admin}/api/queue/pause"),
            &[("authorization", "Bearer nope")],
            None,
        )
        .await
        .unwrap();
    assert_eq!(wrong.head.status, 401);
    use outpost::admin::client::admin_call;
    admin_call(admin, Method::POST, "/api/queue/pause", &token)
        .await
        .unwrap();
    let id = list["items"][1]["id"].as_str().unwrap().to_string();
    admin_call(admin, Method::DELETE, &format!("/api/queue/{id}"), &token)
        .await
        .unwrap();
    assert!(admin_call(admin, Method::DELETE, "/api/queue/q999", &token)
        .await
        .is_err());
    env.backend.set_fault(Fault::Up);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(env.outpost.outbox().depth(), 1, "paused: nothing replays");
    admin_call(admin, Method::POST, "/api/queue/resume", &token)
        .await
        .unwrap();
    wait_until("the queue to drain", 10, || env.outpost.outbox().depth() == 0).await;
    let lib = env.backend.state().library_audio_ids();
    assert!(
        lib.contains(&"a6".to_string()) && !lib.contains(&"a2".to_string()),
        "{lib:?}"
    );
    env.stop().await;
}

#[tokio::test]
async fn a_synthetic_answer_replaces_the_202_when_configured() {
    let env = TestEnv::start_with(|c| {
        for r in &mut c.routes {
            if r.name == "messages" {
                r.policy.queued_status = Some(201);
                r.policy.queued_body = Some(r#"{"pending_id":"{id}","message":{body}}"#.to_string());
            }
        }
    })
    .await;
    env.backend.set_fault(Fault::Down);
    let r = post(&env, "/api/v1/threads/t1/messages", r#"{"text":"hi"}"#, &[]).await;
    assert_eq!(r.head.status, 201);
    assert_eq!(r.json()["message"]["text"], "hi");
    assert_eq!(r.json()["pending_id"], r.header("x-outpost-queued").unwrap());
    env.stop().await;
}

#[tokio::test]
async fn a_body_over_max_body_is_refused_clearly_while_offline() {
    let env = TestEnv::start_with(|c| {
        for r in &mut c.routes {
            r.policy.max_body = 16;
        }
    })
    .await;
    env.backend.set_fault(Fault::Down);
    let r = post(
        &env,
        "/api/v1/threads/t1/messages",
        r#"{"text":"this is longer than sixteen bytes"}"#,
        &[],
    )
    .await;
    assert_eq!(r.head.status, 503);
    assert!(r.json()["error"].as_str().unwrap().contains("max_body"), "{}", r.json());
    assert_eq!(env.outpost.outbox().depth(), 0);
    env.stop().await;
}

#[tokio::test]
async fn a_process_killed_right_after_its_202_still_delivers_after_restart() {
    let backend = outpost::demo::DemoBackend::start(Default::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("outpost.toml");
    let port = |l: std::net::TcpListener| l.local_addr().unwrap().port();
    let listen = port(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    let admin = port(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    std::fs::write(
        &cfg_path,
        format!(
            "listen = \"127.0.0.1:{listen}\"\nadmin_listen = \"127.0.0.1:{admin}\"\ndata_dir = {:?}\n[queue]\nbackoff_base = \"50ms\"\nbackoff_cap = \"200ms\"\n[upstreams.api]\nurl = \"{}\"\nprobe_interval = \"100ms\"\n",
            dir.path().join("data").display().to_string(),
            backend.api_url()
        ),
    )
    .unwrap();
    let spawn = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_outpost"))
            .args(["serve", "--config"])
            .arg(&cfg_path)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let wait_ready = |child: &mut std::process::Child| {
        let mut line = String::new();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        assert!(line.contains("listening"), "{line}");
    };
    backend.set_fault(Fault::Down);
    let mut child = spawn();
    wait_ready(&mut child);
    let client = outpost::admin::client::HttpClient::new(Duration::from_secs(10));
    let r = client
        .call(
            Method::POST,
            &format!("http://127.0.0.1:{listen}/api/v1/library/items"),
            &[("content-type", "application/json")],
            Some(br#"{"audio_file_id":"a6"}"#.to_vec()),
        )
        .await
        .unwrap();
    assert_eq!(r.head.status, 202);
    // SIGKILL: no shutdown, no flush beyond what the 202 already promised.
    child.kill().unwrap();
    child.wait().unwrap();
    backend.set_fault(Fault::Up);
    let mut child = spawn();
    wait_ready(&mut child);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !backend.state().library_audio_ids().contains(&"a6".to_string()) {
        assert!(Instant::now() < deadline, "the acknowledged write never arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(backend.state().mutations().len(), 1);
    child.kill().unwrap();
    child.wait().unwrap();
    backend.stop().await;
}

/// Reads server-sent events from an open response body until `n` events (comments skipped) arrived.
async fn read_events(body: &mut hyper::body::Incoming, n: usize) -> Vec<(String, serde_json::Value)> {
    use http_body_util::BodyExt;
    let mut text = String::new();
    let mut out = Vec::new();
    while out.len() < n {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("an event within 10 s")
            .expect("stream open")
            .expect("frame");
        if let Ok(d) = frame.into_data() {
            text.push_str(&String::from_utf8_lossy(&d));
        }
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            let event = block.lines().find_map(|l| l.strip_prefix("event: "));
            let data = block.lines().find_map(|l| l.strip_prefix("data: "));
            if let (Some(e), Some(d)) = (event, data) {
                out.push((e.to_string(), serde_json::from_str(d).unwrap()));
            }
        }
    }
    out
}

#[tokio::test]
async fn the_app_learns_of_writes_that_failed_for_good_by_header_and_event_stream() {
    let env = TestEnv::start_with(fast_backoff).await;
    // An app that opted in listens on the admin port.
    let tcp = tokio::net::TcpStream::connect(env.outpost.admin_addr()).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http1::handshake::<_, outpost::body::ProxyBody>(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/api/events")
        .header("host", env.outpost.admin_addr().to_string())
        .header(
            "authorization",
            format!("Bearer {}", common::admin_token(env.dir.path())),
        )
        .body(outpost::body::empty())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut events = resp.into_body();

    let ann = format!("Bearer {}", make_token("ann", 1));
    let bob = format!("Bearer {}", make_token("bob", 1));
    env.backend.set_fault(Fault::Down);
    let bad = post(
        &env,
        "/api/v1/library/items",
        r#"{"title":"no id"}"#,
        &[("authorization", &ann)],
    )
    .await;
    assert_eq!(bad.head.status, 202);
    let good = post(
        &env,
        "/api/v1/library/items",
        r#"{"audio_file_id":"a9"}"#,
        &[("authorization", &bob)],
    )
    .await;
    assert_eq!(good.head.status, 202);
    env.backend.set_fault(Fault::Up);

    let seen = read_events(&mut events, 4).await;
    let names: Vec<&str> = seen.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(names, ["queued", "queued", "dead_letter", "delivered"], "{seen:?}");
    assert_eq!(seen[2].1["status"], 400);
    assert_eq!(seen[2].1["uri"], "/api/v1/library/items");
    let dead_id = seen[2].1["id"].as_str().unwrap().to_string();

    // Any answer to the user whose write died says so; the other user's answers do not.
    // (While the writes were queued, only their own user saw them as pending: checked below.)
    let a = get_as(&env, "/api/v1/library", &ann).await;
    assert_eq!(a.head.headers["x-outpost-dead-letters"], "1");
    let b = get_as(&env, "/api/v1/library", &bob).await;
    assert!(
        !b.head.headers.contains_key("x-outpost-dead-letters"),
        "not another user's"
    );
    // Dropped on the dashboard: the header goes.
    env.outpost.outbox().drop_item(&dead_id).unwrap();
    let a = get_as(&env, "/api/v1/library", &ann).await;
    assert!(!a.head.headers.contains_key("x-outpost-dead-letters"));
    env.stop().await;
}

#[tokio::test]
async fn pending_writes_are_shown_to_their_own_user_only() {
    let env = TestEnv::start_with(fast_backoff).await;
    let ann = format!("Bearer {}", make_token("ann", 1));
    let bob = format!("Bearer {}", make_token("bob", 1));
    for auth in [&ann, &bob] {
        let r = get_as(&env, "/api/v1/library", auth).await;
        assert_eq!(r.head.status, 200);
    }
    env.backend.set_fault(Fault::Down);
    let q = post(
        &env,
        "/api/v1/library/items",
        r#"{"audio_file_id":"a9"}"#,
        &[("authorization", &ann)],
    )
    .await;
    assert_eq!(q.head.status, 202);
    let pending = |auth: String| {
        let env = &env;
        async move {
            let r = get_as(env, "/api/v1/library", &auth).await;
            r.head
                .headers
                .get("x-outpost-pending")
                .map(|v| v.to_str().unwrap().to_string())
        }
    };
    assert_eq!(pending(ann.clone()).await.as_deref(), Some("1"));
    assert_eq!(
        pending(bob.clone()).await,
        None,
        "Bob's library is not waiting on Ann's write"
    );
    env.stop().await;
}

/// A Wi-Fi login page between Outpost and the backend: it answers every request with `200 text/html`.
/// Queued writes must not count as delivered (they were lost before: "queued write delivered", never
/// applied), and with `probe_expect` the portal's pages are never taken for the backend's answers.
mod captive_portal {
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use crate::common::wait_until;
    use http::{Method, Request, Response};
    use http_body_util::BodyExt;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use outpost::admin::client::{get_json, Collected, HttpClient};
    use outpost::body::{self, ProxyBody};
    use outpost::config::{Config, Overrides};
    use outpost::Outpost;
    use tokio::net::TcpListener;

    const UP: u8 = 0;
    const RESET: u8 = 1;
    const PORTAL: u8 = 2;

    /// The backend (JSON, `x-api-version` on every answer, records the writes it applies), or a connection
    /// reset, or a login page, as `mode` says.
    struct Origin {
        addr: SocketAddr,
        mode: Arc<AtomicU8>,
        portal_hits: Arc<AtomicUsize>,
        applied: Arc<Mutex<Vec<String>>>,
    }

    impl Origin {
        async fn start() -> Origin {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let mode = Arc::new(AtomicU8::new(UP));
            let portal_hits = Arc::new(AtomicUsize::new(0));
            let applied = Arc::new(Mutex::new(Vec::new()));
            let (m, p, a) = (mode.clone(), portal_hits.clone(), applied.clone());
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    if m.load(Ordering::Relaxed) == RESET {
                        drop(stream);
                        continue;
                    }
                    let (m, p, a) = (m.clone(), p.clone(), a.clone());
                    tokio::spawn(async move {
                        let svc = service_fn(move |req| answer(req, m.clone(), p.clone(), a.clone()));
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
            });
            Origin {
                addr,
                mode,
                portal_hits,
                applied,
            }
        }

        fn set(&self, mode: u8) {
            self.mode.store(mode, Ordering::Relaxed);
        }

        fn applied(&self) -> Vec<String> {
            self.applied.lock().unwrap().clone()
        }
    }

    async fn answer(
        req: Request<hyper::body::Incoming>,
        mode: Arc<AtomicU8>,
        portal_hits: Arc<AtomicUsize>,
        applied: Arc<Mutex<Vec<String>>>,
    ) -> Result<Response<ProxyBody>, std::convert::Infallible> {
        if mode.load(Ordering::Relaxed) != UP {
            portal_hits.fetch_add(1, Ordering::Relaxed);
            let mut r = Response::new(body::full("<html><body>Welcome to Hotel Wi-Fi. Log in.</body></html>"));
            r.headers_mut()
                .insert("content-type", "text/html; charset=utf-8".parse().unwrap());
            return Ok(r);
        }
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let key = req
            .headers()
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let mut r = if method == Method::GET {
            Response::new(body::full(r#"{"items":[{"id":"i1"}]}"#))
        } else {
            let mut applied = applied.lock().unwrap();
            // Deduplicated by Idempotency-Key, as a careful backend does; each key is listed once.
            if !applied.iter().any(|a| a.ends_with(&format!("#{key}"))) {
                applied.push(format!("{method} {path} {}#{key}", String::from_utf8_lossy(&body)));
            }
            Response::new(body::full(r#"{"ok":true}"#))
        };
        r.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        r.headers_mut().insert("x-api-version", "7".parse().unwrap());
        Ok(r)
    }

    fn config(origin: SocketAddr, dir: &std::path::Path, expect: bool) -> Config {
        crate::common::init_logs();
        let expect = if expect {
            r#"probe_expect = { status = 200, header = "x-api-version" }"#
        } else {
            ""
        };
        let src = format!(
            r#"
    listen = "127.0.0.1:0"
    admin_listen = "127.0.0.1:0"
    data_dir = {dir:?}
    default_upstream = "api"
    shutdown_grace = "1s"

    [queue]
    backoff_base = "20ms"
    backoff_cap = "200ms"
    max_attempts = 10

    [upstreams.api]
    url = "http://{origin}"
    connect_timeout = "500ms"
    first_byte_timeout = "2s"
    probe_interval = "100ms"
    {expect}
    "#,
            dir = dir.display().to_string()
        );
        Config::from_toml(&src, "portal.toml", &Overrides::default()).unwrap()
    }

    /// A PUT with the app's own Idempotency-Key (what makes a write whose outcome is unknown safe to queue).
    async fn put(client: &HttpClient, outpost: &Outpost, path: &str, body: &str) -> Collected {
        let key = format!("app-{path}");
        client
            .call(
                Method::PUT,
                &format!("http://{}{path}", outpost.addr()),
                &[("content-type", "application/json"), ("idempotency-key", &key)],
                Some(body.as_bytes().to_vec()),
            )
            .await
            .unwrap()
    }

    /// Without any configuration: writes queued while the backend was away are not "delivered" to a login
    /// page (and do not use up their attempts there); once the backend is back they arrive, once each.
    #[tokio::test]
    async fn queued_writes_are_not_delivered_to_a_login_page() {
        let origin = Origin::start().await;
        let dir = tempfile::tempdir().unwrap();
        let outpost = Outpost::start(config(origin.addr, dir.path(), false)).await.unwrap();
        let client = HttpClient::new(Duration::from_secs(10));
        origin.set(RESET);
        for (i, body) in [r#"{"n":1}"#, r#"{"n":2}"#].iter().enumerate() {
            let r = put(&client, &outpost, &format!("/api/items/i{i}"), body).await;
            assert_eq!(r.head.status, 202, "{}", String::from_utf8_lossy(&r.body));
        }
        origin.set(PORTAL);
        // Long enough for many replay attempts at this backoff (20-200 ms), more than max_attempts.
        wait_until("replays to meet the portal", 10, || {
            origin.portal_hits.load(Ordering::Relaxed) >= 8
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(origin.applied().is_empty());
        assert_eq!(outpost.outbox().depth(), 2, "both writes still queued");
        let items = outpost.outbox().list().unwrap();
        assert!(
            items
                .iter()
                .all(|i| i.state == outpost::queue::ItemState::Pending && i.attempts < 10),
            "the portal used up no attempts: {items:?}"
        );
        origin.set(UP);
        wait_until("the queue to drain", 15, || outpost.outbox().depth() == 0).await;
        let applied = origin.applied();
        assert_eq!(applied.len(), 2, "{applied:?}");
        assert!(applied[0].starts_with(r#"PUT /api/items/i0 {"n":1}"#), "{applied:?}");
        assert!(applied[1].starts_with(r#"PUT /api/items/i1 {"n":2}"#), "{applied:?}");
        outpost.shutdown().await;
    }

    /// With `probe_expect`: a portal page never counts as the backend's answer, for reads too: the stored
    /// JSON keeps being served (never replaced by the portal's HTML), writes are queued, and the probe keeps
    /// the upstream offline until the backend answers again.
    #[tokio::test]
    async fn with_probe_expect_a_portal_is_offline_for_reads_writes_and_the_probe() {
        let origin = Origin::start().await;
        let dir = tempfile::tempdir().unwrap();
        let outpost = Outpost::start(config(origin.addr, dir.path(), true)).await.unwrap();
        let client = HttpClient::new(Duration::from_secs(10));
        let url = format!("http://{}/api/items", outpost.addr());
        let first = client.call(Method::GET, &url, &[], None).await.unwrap();
        assert_eq!(first.head.status, 200);
        origin.set(PORTAL);
        let r = client.call(Method::GET, &url, &[], None).await.unwrap();
        assert_eq!(r.head.status, 200);
        assert_eq!(r.body, first.body, "the stored JSON, not the login page");
        assert_eq!(r.header("x-outpost-cache"), Some("OFFLINE"));
        let token = crate::common::admin_token(dir.path());
        let status = get_json(outpost.admin_addr(), "/api/status", &token).await.unwrap();
        let up = &status["upstreams"][0];
        assert_eq!(up["online"], false, "{status}");
        assert!(
            up["last_error"].as_str().unwrap_or("").contains("captive portal"),
            "{status}"
        );
        let w = put(&client, &outpost, "/api/items/i1", r#"{"n":1}"#).await;
        assert_eq!(w.head.status, 202);
        // The probe meets the portal again and again; the upstream stays offline.
        let hits = origin.portal_hits.load(Ordering::Relaxed);
        wait_until("probes to meet the portal", 10, || {
            origin.portal_hits.load(Ordering::Relaxed) >= hits + 3
        })
        .await;
        assert!(!outpost.upstreams().iter().next().unwrap().connectivity().is_online());
        assert!(origin.applied().is_empty());
        origin.set(UP);
        wait_until("the queue to drain", 15, || outpost.outbox().depth() == 0).await;
        assert_eq!(origin.applied().len(), 1);
        let r = client.call(Method::GET, &url, &[], None).await.unwrap();
        assert_eq!(r.body, first.body);
        outpost.shutdown().await;
    }
}
