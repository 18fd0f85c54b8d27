//! Faults around Outpost: a full disk under it, and a backend flapping up and down every 200 ms.

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
