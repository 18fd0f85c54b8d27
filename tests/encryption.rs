//! Encryption at rest over real sockets: with a key, no cached body, response text, queued request body
//! or credential is found in any file of the data dir (the same scan finds them all without a key); the
//! encrypted store still serves the origin's bytes offline after a restart and replays the queue; a wrong
//! or missing key is refused with a clear error before anything is served; `outpost verify` needs the key.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{wait_until, walk, Stopped, TestEnv};
use http::Method;
use outpost::config::{Config, EncryptionKey};
use outpost::demo::{audio_bytes, make_token, Fault};
use outpost::Outpost;

/// The user id in the queued write's token. No four bytes of it occur elsewhere in the record: once the
/// record sits in an LZ4-compressed table (after the restart's recovery flush, before any replay attempt
/// rewrites it in the log), LZ4 stores a repeated 4-byte run as a back-reference, and an id like
/// `secret-user-77` could be split where a run of it (`user`, `ret-`) repeats earlier text, and the control
/// scan missed it in one CI run.
const USER: &str = "Qz7XvKp9Wm4J";

const NOTE: &str = r#"{"text":"SECRET-OFFLINE-NOTE-42 written on the train"}"#;

fn key_file(dir: &Path, name: &str, hex_byte: &str) -> EncryptionKey {
    let path = dir.join(name);
    std::fs::write(&path, hex_byte.repeat(32) + "\n").unwrap();
    EncryptionKey::from_file(&path).unwrap()
}

/// Fills the store (messages JSON, an audio file, an offline write with a bearer token), stops Outpost
/// and returns, per marker, whether any file of the data dir contains it.
async fn fill_and_scan(key: Option<EncryptionKey>) -> (Stopped, Vec<(&'static str, bool)>) {
    let env = TestEnv::start_with(|c| {
        c.encryption = key;
        c.queue.backoff_base = Duration::from_millis(20);
        c.queue.backoff_cap = Duration::from_millis(200);
    })
    .await;
    let msgs = env.get("/api/v1/threads/t1/messages").await;
    assert_eq!(msgs.head.status, 200);
    let text = msgs.json()["messages"][0]["text"].as_str().unwrap().to_string();
    assert!(text.len() >= 16, "a distinctive message text: {text:?}");
    let audio = env.get("/media/s3/renders/a1.mp3").await;
    let size = env.backend.state().audio_size();
    let a1: Vec<u8> = audio_bytes("a1", size).flat_map(|c| c.to_vec()).collect();
    assert_eq!(audio.body, a1);

    env.backend.set_fault(Fault::Down);
    let token = make_token(USER, 1);
    let auth = format!("Bearer {token}");
    let q = env
        .client
        .call(
            Method::POST,
            &env.url("/api/v1/threads/t1/messages"),
            &[("content-type", "application/json"), ("authorization", &auth)],
            Some(NOTE.as_bytes().to_vec()),
        )
        .await
        .unwrap();
    assert_eq!(q.head.status, 202, "queued durably");
    let env = env.restart(|_, _| {}).await.stop_outpost().await;

    let mid = a1.len() / 2;
    let markers: Vec<(&'static str, Vec<u8>)> = vec![
        ("message text", text.into_bytes()),
        ("audio bytes", a1[mid..mid + 64].to_vec()),
        // The outbox keeps a body raw after its record's head (the marker has no 4-byte run that repeats
        // earlier text, so LZ4 keeps it whole).
        ("queued body", b"SECRET-OFFLINE-NOTE-42".to_vec()),
        // The header values (the token itself) are kept as number arrays that LZ4 compresses past any
        // scan; the user id read from the token sits in the same record, as a plain string.
        ("token's user", USER.as_bytes().to_vec()),
    ];
    let files: Vec<Vec<u8>> = walk(env.dir.path())
        .iter()
        .filter_map(|p| std::fs::read(p).ok())
        .collect();
    let found = markers
        .iter()
        .map(|(name, m)| {
            (
                *name,
                files.iter().any(|f| f.windows(m.len()).any(|w| w == m.as_slice())),
            )
        })
        .collect();
    (env, found)
}

async fn start_err(config: &Config) -> String {
    match Outpost::start(config.clone()).await {
        Ok(o) => {
            o.shutdown().await;
            panic!("Outpost started on {}", config.data_dir.display());
        }
        Err(e) => e.to_string(),
    }
}

fn verify(dir: &Path, key: Option<&Path>) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_outpost"));
    cmd.arg("verify").arg("--data-dir").arg(dir);
    if let Some(k) = key {
        cmd.arg("--key-file").arg(k);
    }
    let out = cmd.output().expect("run outpost verify");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test]
async fn without_a_key_the_scan_finds_every_marker_in_the_data_dir() {
    // The control for the test below: the scan does see bodies, texts, queued requests and tokens.
    let (env, found) = fill_and_scan(None).await;
    for (name, hit) in &found {
        assert!(hit, "{name} is in the plain data dir: {found:?}");
    }
    env.backend.stop().await;
}

#[tokio::test]
async fn an_encrypted_data_dir_holds_no_plaintext_and_refuses_wrong_or_missing_keys() {
    let keys = tempfile::tempdir().unwrap();
    let good = key_file(keys.path(), "good.key", "a7");
    let (env, found) = fill_and_scan(Some(good.clone())).await;
    for (name, hit) in &found {
        assert!(!hit, "{name} found in clear in the encrypted data dir");
    }

    // Wrong key, no key, and a key on a dir written without one: refused before anything is served.
    let mut wrong = env.config.clone();
    wrong.encryption = Some(key_file(keys.path(), "wrong.key", "b8"));
    let e = start_err(&wrong).await;
    assert!(
        e.contains("does not match the key this data dir was written with"),
        "{e}"
    );
    let mut none = env.config.clone();
    none.encryption = None;
    let e = start_err(&none).await;
    assert!(
        e.contains("is encrypted at rest") && e.contains("encryption.key_file"),
        "{e}"
    );
    let plain = tempfile::tempdir().unwrap();
    drop(outpost::store::Store::open(plain.path()).unwrap());
    let mut on_plain = env.config.clone();
    on_plain.data_dir = plain.path().to_path_buf();
    let e = start_err(&on_plain).await;
    assert!(e.contains("was written without encryption"), "{e}");

    // `outpost verify` needs the key and finds the sealed store clean with it.
    let (code, out) = verify(env.dir.path(), None);
    assert_ne!(code, 0);
    assert!(out.contains("is encrypted at rest"), "{out}");
    let (code, out) = verify(env.dir.path(), Some(&keys.path().join("wrong.key")));
    assert_ne!(code, 0);
    assert!(out.contains("does not match"), "{out}");
    let (code, out) = verify(env.dir.path(), Some(&keys.path().join("good.key")));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("clean"), "{out}");

    // The right key: offline, the store serves the origin's bytes (whole and by range), then the queued
    // write replays exactly once when the backend is back.
    let outpost = Outpost::start(env.config.clone()).await.expect("restart with the key");
    let client = &env.client;
    let url = |p: &str| format!("http://{}{}", outpost.addr(), p);
    let size = env.backend.state().audio_size();
    let a1: Vec<u8> = audio_bytes("a1", size).flat_map(|c| c.to_vec()).collect();
    let whole = client
        .call(Method::GET, &url("/media/s3/renders/a1.mp3"), &[], None)
        .await
        .unwrap();
    assert_eq!(whole.head.status, 200);
    assert_eq!(whole.body, a1, "the origin's bytes, decrypted");
    let (start, end) = (65_000usize, 200_000usize);
    let range = format!("bytes={start}-{end}");
    let part = client
        .call(
            Method::GET,
            &url("/media/s3/renders/a1.mp3"),
            &[("range", range.as_str())],
            None,
        )
        .await
        .unwrap();
    assert_eq!(part.head.status, 206);
    assert_eq!(part.body, &a1[start..=end], "a range across sealed chunks");
    let msgs = client
        .call(Method::GET, &url("/api/v1/threads/t1/messages"), &[], None)
        .await
        .unwrap();
    assert_eq!(msgs.head.status, 200);
    assert!(msgs.json()["messages"].as_array().is_some_and(|a| !a.is_empty()));
    assert_eq!(outpost.outbox().depth(), 1);
    let stats =
        outpost::admin::client::get_json(outpost.admin_addr(), "/api/stats", &common::admin_token(env.dir.path()))
            .await
            .unwrap();
    assert_eq!(stats["encrypted_at_rest"], true);

    env.backend.set_fault(Fault::Up);
    wait_until("the queue to drain", 15, || outpost.outbox().depth() == 0).await;
    let delivered: Vec<_> = env
        .backend
        .state()
        .mutations()
        .into_iter()
        .filter(|m| {
            m.body["text"]
                .as_str()
                .is_some_and(|t| t.starts_with("SECRET-OFFLINE-NOTE-42"))
        })
        .collect();
    assert_eq!(delivered.len(), 1, "delivered once, decrypted: {delivered:?}");
    outpost.shutdown().await;
    env.backend.stop().await;
}

/// With encryption at rest there is no spool (bodies stay in sealed records), so a write body that
/// finds `max_buffered_bodies` taken is refused with a 503 and Retry-After rather than held.
#[tokio::test]
async fn encrypted_writes_beyond_the_buffered_bodies_bound_are_refused_with_retry_after() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let keys = tempfile::tempdir().unwrap();
    let key = key_file(keys.path(), "k.key", "c4");
    let env = TestEnv::start_with(|c| {
        c.encryption = Some(key);
        c.max_buffered_bodies = 1 << 20;
    })
    .await;
    env.backend.set_fault(Fault::Down);
    let head = |len: usize| {
        format!(
            "POST /api/v1/library/items HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {len}\r\nConnection: close\r\n\r\n"
        )
    };
    // Two unfinished 500 KB bodies take the room (each reserved whole before it is read).
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(env.outpost.addr()).await.unwrap();
        s.write_all(head(500_000).as_bytes()).await.unwrap();
        s.write_all(&vec![b' '; 100_000]).await.unwrap();
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut s = tokio::net::TcpStream::connect(env.outpost.addr()).await.unwrap();
    s.write_all(head(100_000).as_bytes()).await.unwrap();
    let _ = s.write_all(&vec![b' '; 100_000]).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let answer = String::from_utf8_lossy(&out);
    assert!(
        answer.starts_with("HTTP/1.1 503"),
        "{}",
        &answer[..answer.len().min(300)]
    );
    assert!(answer.to_ascii_lowercase().contains("retry-after: 1"), "{answer}");
    // Once the room is free again (the held connections closed), a write is queued.
    drop(held);
    let mut status = 0;
    for _ in 0..50 {
        let q = env
            .client
            .call(
                Method::POST,
                &env.url("/api/v1/library/items"),
                &[("content-type", "application/json")],
                Some(br#"{"id":"x1"}"#.to_vec()),
            )
            .await
            .unwrap();
        status = q.head.status.as_u16();
        if status == 202 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 202);
    env.stop().await;
}
