//! The cache budget and its management: LRU eviction, auto_evict off, settings, clearing, stats, metrics.

mod common;

use std::time::{Duration, Instant};

use common::TestEnv;
use http::Method;
use outpost::admin::client::{admin_call, get_json};

const MB: u64 = 1 << 20;

async fn stored(env: &TestEnv, path: &str) -> bool {
    env.is_stored(path).await
}

async fn stats(env: &TestEnv) -> serde_json::Value {
    get_json(env.outpost.admin_addr(), "/api/stats").await.unwrap()
}

fn token(env: &TestEnv) -> String {
    std::fs::read_to_string(env.dir.path().join("admin.token")).unwrap()
}

#[tokio::test]
async fn over_the_budget_the_least_recently_used_audio_goes_first() {
    let env = TestEnv::start_with(|c| c.max_size = 3 * MB + MB / 2).await;
    for id in ["a1", "a2", "a3"] {
        assert_eq!(
            env.get(&format!("/media/s3/renders/{id}.mp3")).await.body.len() as u64,
            MB
        );
    }
    // a1 is used again: a2 is now the least recently used.
    assert!(stored(&env, "/media/s3/renders/a1.mp3").await);
    env.get("/media/s3/renders/a4.mp3").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while stats(&env).await["size_bytes"].as_u64().unwrap() > 3 * MB + MB / 2 {
        assert!(
            Instant::now() < deadline,
            "eviction never brought the cache under budget"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!stored(&env, "/media/s3/renders/a2.mp3").await, "LRU victim");
    assert!(stored(&env, "/media/s3/renders/a1.mp3").await, "recently used survives");
    assert!(stored(&env, "/media/s3/renders/a4.mp3").await, "the newest survives");
    let s = stats(&env).await;
    assert!(s["evictions"]["size"]["count"].as_u64().unwrap() >= 1, "{s}");
    assert!(s["evictions"]["size"]["bytes"].as_u64().unwrap() >= MB, "{s}");
    env.stop().await;
}

#[tokio::test]
async fn with_auto_evict_off_fills_beyond_the_budget_are_served_but_not_stored() {
    let env = TestEnv::start_with(|c| {
        c.max_size = MB + MB / 2;
        c.cache.auto_evict = false;
    })
    .await;
    env.get("/media/s3/renders/a1.mp3").await;
    env.get("/media/s3/renders/a2.mp3").await;
    let third = env.get("/media/s3/renders/a3.mp3").await;
    assert_eq!(third.body.len() as u64, MB, "still served");
    assert!(stored(&env, "/media/s3/renders/a1.mp3").await, "nothing evicted");
    assert!(!stored(&env, "/media/s3/renders/a3.mp3").await, "not stored");
    assert_eq!(stats(&env).await["storing"], false);
    env.stop().await;
}

#[tokio::test]
async fn settings_are_validated_persisted_and_reset() {
    let env = TestEnv::start().await;
    let admin = env.outpost.admin_addr();
    let t = token(&env);
    let bad = env
        .client
        .call(
            Method::PUT,
            &format!("http://{admin}/api/settings"),
            &[("authorization", &format!("Bearer {t}"))],
            Some(br#"{"max_size":"lots"}"#.to_vec()),
        )
        .await
        .unwrap();
    assert_eq!(bad.head.status, 400);
    assert!(bad.json()["error"].as_str().unwrap().contains("invalid size"));
    let unauth = env
        .client
        .call(
            Method::PUT,
            &format!("http://{admin}/api/settings"),
            &[],
            Some(br#"{"max_size":"1GB"}"#.to_vec()),
        )
        .await
        .unwrap();
    assert_eq!(unauth.head.status, 401);
    let ok = env
        .client
        .call(
            Method::PUT,
            &format!("http://{admin}/api/settings"),
            &[("authorization", &format!("Bearer {t}"))],
            Some(br#"{"max_size":"2GB","auto_evict":false}"#.to_vec()),
        )
        .await
        .unwrap();
    assert_eq!(ok.head.status, 200);
    let env = env.restart(|_, _| {}).await;
    let s = stats(&env).await;
    assert_eq!(
        (s["max_size"].as_u64(), s["auto_evict"].as_bool()),
        (Some(2_000_000_000), Some(false)),
        "survives restart"
    );
    admin_call(env.outpost.admin_addr(), Method::PUT, "/api/settings", &t)
        .await
        .ok();
    let reset = env
        .client
        .call(
            Method::PUT,
            &format!("http://{}/api/settings", env.outpost.admin_addr()),
            &[("authorization", &format!("Bearer {t}"))],
            Some(br#"{"reset":true}"#.to_vec()),
        )
        .await
        .unwrap();
    assert_eq!(reset.json()["max_size"], env.config.max_size, "back to the TOML value");
    env.stop().await;
}

#[tokio::test]
async fn clearing_by_kind_removes_only_that_kind_and_frees_its_files() {
    let env = TestEnv::start().await;
    env.get("/media/s3/renders/a1.mp3").await;
    env.get("/api/v1/threads/t1/messages").await;
    let t = token(&env);
    let admin = env.outpost.admin_addr();
    let r = env
        .client
        .call(
            Method::POST,
            &format!("http://{admin}/api/cache/clear"),
            &[("authorization", &format!("Bearer {t}"))],
            Some(br#"{"kind":"audio"}"#.to_vec()),
        )
        .await
        .unwrap();
    assert_eq!(r.head.status, 200);
    assert_eq!(r.json()["cleared_entries"], 1);
    assert_eq!(r.json()["freed_bytes"], MB);
    assert!(!stored(&env, "/media/s3/renders/a1.mp3").await);
    assert!(stored(&env, "/api/v1/threads/t1/messages").await);
    env.stop().await;
}

#[tokio::test]
async fn stats_and_metrics_count_outcomes_per_kind() {
    let env = TestEnv::start().await;
    env.get("/media/s3/renders/a1.mp3").await;
    env.get("/media/s3/renders/a1.mp3").await;
    env.get("/api/v1/threads/t1/messages").await;
    let s = stats(&env).await;
    assert_eq!(s["kinds"]["audio"]["miss"], 1);
    assert_eq!(s["kinds"]["audio"]["hit"], 1);
    assert_eq!(s["kinds"]["audio"]["hit_rate"], 0.5);
    assert_eq!(s["kinds"]["audio"]["bytes"], MB);
    assert_eq!(s["kinds"]["messages"]["entries"], 1);
    let m = env
        .client
        .call(
            Method::GET,
            &format!("http://{}/metrics", env.outpost.admin_addr()),
            &[],
            None,
        )
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&m.body);
    assert!(
        text.contains("outpost_requests_total{route=\"media\",outcome=\"HIT\",status=\"2xx\"} 1"),
        "{text}"
    );
    assert!(text.contains("outpost_cache_bytes"), "{text}");
    assert!(text.contains("outpost_upstream_online{upstream=\"api\"} 1"), "{text}");
    assert!(text.contains("outpost_request_duration_seconds_bucket"), "{text}");
    env.stop().await;
}

#[tokio::test]
async fn entries_unused_for_max_unused_expire() {
    let env = TestEnv::start_with(|c| c.cache.max_unused = Some(Duration::from_secs(1))).await;
    env.get("/media/s3/renders/a1.mp3").await;
    assert!(stored(&env, "/media/s3/renders/a1.mp3").await);
    let deadline = Instant::now() + Duration::from_secs(10);
    // only-if-cached lookups that miss do not touch the entry, so it ages out.
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let s = stats(&env).await;
        if s["evictions"]["unused"]["count"].as_u64().unwrap_or(0) >= 1 {
            break;
        }
        assert!(Instant::now() < deadline, "never expired: {s}");
    }
    assert!(!stored(&env, "/media/s3/renders/a1.mp3").await);
    env.stop().await;
}
