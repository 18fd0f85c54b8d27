//! Malformed and hostile HTTP over raw sockets: each gets a 4xx or a closed connection, never a panic, a
//! hang or an unbounded buffer; Outpost keeps serving afterwards.

mod common;

use std::time::{Duration, Instant};

use common::TestEnv;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends raw bytes and returns what came back before the server closed (or 5 s passed).
async fn raw(env: &TestEnv, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(env.outpost.addr()).await.expect("connect");
    // The server may close before reading everything (e.g. after an oversized head): that is fine.
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn status(answer: &str) -> Option<u16> {
    answer
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
}

#[tokio::test]
async fn malformed_requests_get_a_4xx_or_a_closed_connection() {
    let env = TestEnv::start_with(|c| c.header_read_timeout = Duration::from_secs(1)).await;
    let huge_header = format!(
        "GET /api/v1/threads HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(512 * 1024)
    );
    let many_headers = format!(
        "GET /api/v1/threads HTTP/1.1\r\nHost: x\r\n{}\r\n",
        (0..500).map(|i| format!("X-H{i}: v\r\n")).collect::<String>()
    );
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("oversized header", huge_header.into_bytes()),
        ("too many headers", many_headers.into_bytes()),
        (
            "bad Content-Length",
            b"POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n".to_vec(),
        ),
        (
            "two different Content-Lengths",
            b"POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde".to_vec(),
        ),
        (
            "CL + TE smuggling",
            b"POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /api/v1/library HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        (
            "bad chunk size",
            b"POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n".to_vec(),
        ),
        ("invalid method", b"G@T /api/v1/threads HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("invalid URI", b"GET /api/v1/thr eads HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("absolute-form elsewhere", b"GET http://evil.example/ HTTP/1.1\r\nHost: evil.example\r\n\r\n".to_vec()),
        ("path traversal", b"GET /media/s3/../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("CONNECT", b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n".to_vec()),
        ("binary garbage", vec![0u8, 159, 146, 150, 255, 13, 10, 13, 10]),
        ("HTTP/0.9", b"GET /\r\n".to_vec()),
    ];
    for (what, bytes) in cases {
        let answer = raw(&env, &bytes).await;
        match status(&answer) {
            // A closed connection without an answer is also fine for garbage.
            None => assert!(answer.is_empty(), "{what}: unexpected answer {answer:?}"),
            // CL + TE: hyper reads the body as chunked (TE wins, RFC 9112 §6.1), answers, and closes the
            // connection, so the smuggled request behind it is never read.
            Some(200) if what == "CL + TE smuggling" => {
                assert!(
                    answer.contains("connection: close"),
                    "{what}: kept the connection: {answer}"
                )
            }
            Some(code) => assert!(
                (400..500).contains(&code) || (what == "absolute-form elsewhere" && code == 502),
                "{what}: got {code}: {}",
                answer.lines().next().unwrap_or("")
            ),
        }
        // The smuggled second request must never have been answered.
        assert!(
            answer.matches("HTTP/1.1").count() <= 1,
            "{what}: more than one answer: {answer}"
        );
    }
    // Slowloris: a head that never finishes is dropped after header_read_timeout.
    let mut s = TcpStream::connect(env.outpost.addr()).await.unwrap();
    s.write_all(b"GET /api/v1/threads HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let t = Instant::now();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "slow head kept open for {:?}",
        t.elapsed()
    );
    // Still serving.
    assert_eq!(env.get("/api/v1/threads").await.head.status, 200);
    env.stop().await;
}

#[tokio::test]
async fn users_are_isolated_through_refresh_and_logout() {
    use outpost::demo::make_token;
    let env = TestEnv::start().await;
    // A GET as `token` (None: no credentials), from the store only when `cached_only`.
    let get = |token: Option<String>, method: http::Method, path: &'static str, cached_only: bool| {
        let url = env.url(path);
        let client = env.client.clone();
        async move {
            let auth = token.map(|t| format!("Bearer {t}"));
            let mut headers: Vec<(&str, &str)> = Vec::new();
            if let Some(a) = &auth {
                headers.push(("authorization", a));
            }
            if cached_only {
                headers.push(("cache-control", "only-if-cached"));
            }
            let body = (method == http::Method::POST).then(Vec::new);
            client.call(method, &url, &headers, body).await.unwrap().head.status
        }
    };
    let call = |token: String, path: &'static str| get(Some(token), http::Method::GET, path, true);
    let alice = make_token("alice", 1);
    let bob = make_token("bob", 1);
    // Alice's library is stored in her partition.
    assert_eq!(
        get(Some(alice.clone()), http::Method::GET, "/api/v1/library", false).await,
        200
    );
    assert_eq!(call(alice.clone(), "/api/v1/library").await, 200);
    // Bob never sees it, nor does a request without credentials.
    assert_eq!(call(bob.clone(), "/api/v1/library").await, 504);
    assert_eq!(get(None, http::Method::GET, "/api/v1/library", true).await, 504);
    // A refreshed token of the same user keeps her partition.
    assert_eq!(call(make_token("alice", 2), "/api/v1/library").await, 200);
    // Bob's own answers, then Alice logs out: her partition is cleared, his is not.
    assert_eq!(
        get(Some(bob.clone()), http::Method::GET, "/api/v1/library", false).await,
        200
    );
    let logout = get(
        Some(make_token("alice", 2)),
        http::Method::POST,
        "/api/v1/auth/logout",
        false,
    );
    assert_eq!(logout.await, 200);
    assert_eq!(call(alice.clone(), "/api/v1/library").await, 504, "cleared at logout");
    assert_eq!(
        call(bob.clone(), "/api/v1/library").await,
        200,
        "other users keep theirs"
    );
    env.stop().await;
}

/// Reads until the server closes the connection; returns what came and when it closed (or `None` after
/// `within`).
async fn closed_within(s: &mut TcpStream, within: Duration) -> Option<(Duration, String)> {
    let started = Instant::now();
    let mut out = Vec::new();
    match tokio::time::timeout(within, s.read_to_end(&mut out)).await {
        Ok(_) => Some((started.elapsed(), String::from_utf8_lossy(&out).into_owned())),
        Err(_) => None,
    }
}

#[tokio::test]
async fn silent_and_slow_clients_are_cut_and_connections_and_buffered_bodies_are_bounded() {
    let env = TestEnv::start_with(|c| {
        c.header_read_timeout = Duration::from_secs(1);
        c.body_read_timeout = Duration::from_secs(1);
        c.max_connections = 8;
        c.max_buffered_bodies = 1 << 20;
    })
    .await;
    let addr = env.outpost.addr();

    // Connections that send nothing, or nothing more after an answer, are closed.
    let mut silent = Vec::new();
    for _ in 0..8 {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    // All 8 slots are held: a 9th client waits in the backlog until the silent ones are cut.
    let started = Instant::now();
    let waiting = tokio::spawn(async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /api/v1/threads HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        closed_within(&mut s, Duration::from_secs(10)).await
    });
    for (i, s) in silent.iter_mut().enumerate() {
        let (after, got) = closed_within(s, Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("silent {i} still open"));
        assert!(got.is_empty(), "{got}");
        assert!(after <= Duration::from_secs(3), "silent {i} closed after {after:?}");
    }
    let (_, answer) = waiting
        .await
        .unwrap()
        .expect("the 9th client is served once slots free up");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    println!(
        "9th client served after {:?} (8 silent connections held every slot)",
        started.elapsed()
    );
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /api/v1/threads HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (after, got) = closed_within(&mut idle, Duration::from_secs(5))
        .await
        .expect("an idle keep-alive connection is closed");
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    println!("idle keep-alive connection closed after {after:?}");

    // A write body trickling in (a byte every 300 ms, never pausing a whole second) is cut with a 408.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"POST /api/v1/library/items HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n")
        .await
        .unwrap();
    let trickle = tokio::spawn(async move {
        for _ in 0..20 {
            if slow.write_all(b" ").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    });
    let answer = trickle.await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    // Unfinished write bodies may hold 1 MiB of memory in all: each small one takes its declared length
    // before it is read, so four 250 KB bodies take the room; the next ones spill to a spool file instead
    // of being refused. (Bodies over 256 KiB never take room: they are spooled from their first byte.)
    let mut held = Vec::new();
    for _ in 0..5 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /api/v1/library/items HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 250000\r\n\r\n")
            .await
            .unwrap();
        s.write_all(&vec![b' '; 100_000]).await.unwrap();
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    env.backend.set_fault(outpost::demo::Fault::Down);
    let answer = raw(
        &env,
        &[
            b"POST /api/v1/library/items HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 200000\r\nConnection: close\r\n\r\n".as_slice(),
            &vec![b' '; 200_000],
        ]
        .concat(),
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 202"),
        "{}",
        &answer[..answer.len().min(300)]
    );
    let token = common::admin_token(env.dir.path());
    let q = outpost::admin::client::get_json(env.outpost.admin_addr(), "/api/queue", &token)
        .await
        .unwrap();
    let items = q["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{q}");
    assert_eq!(
        items[0]["spooled"], true,
        "it found no room in memory and went to disk: {q}"
    );
    env.backend.set_fault(outpost::demo::Fault::Up);
    drop(held);
    assert_eq!(env.get("/api/v1/threads").await.head.status, 200, "still serving");
    env.stop().await;
}
