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
    get_json(
        env.outpost.admin_addr(),
        "/api/stats",
        &common::admin_token(env.dir.path()),
    )
    .await
    .unwrap()
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
    let metrics = format!("http://{}/metrics", env.outpost.admin_addr());
    let no_token = env.client.call(Method::GET, &metrics, &[], None).await.unwrap();
    assert_eq!(
        no_token.head.status, 401,
        "metrics need the token unless public_metrics"
    );
    let bearer = format!("Bearer {}", common::admin_token(env.dir.path()));
    let m = env
        .client
        .call(Method::GET, &metrics, &[("authorization", &bearer)], None)
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
    // Prometheus habits: counters end in _total and exist from the start at 0.
    for line in [
        "outpost_evictions_total{reason=\"size\"} 0",
        "outpost_evicted_bytes_total{reason=\"retention\"} 0",
        "outpost_store_write_errors_total 0",
        "outpost_dead_letters 0",
        "outpost_store_writable 1",
        "outpost_replays_total{result=\"delivered\"} 0",
        "outpost_replays_total{result=\"not_backend\"} 0",
        &format!("outpost_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION")),
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }
    // The counts behind the hit rate survive a restart.
    let env = env.restart(|_, _| {}).await;
    env.get("/media/s3/renders/a1.mp3").await;
    let s = stats(&env).await;
    assert_eq!(
        (
            s["kinds"]["audio"]["miss"].as_u64(),
            s["kinds"]["audio"]["hit"].as_u64()
        ),
        (Some(1), Some(2)),
        "{s}"
    );
    env.stop().await;
}

/// `[budget] audio = "2.5MiB"`: audio stays under its own limit, least recently used audio first,
/// while other kinds are left alone and the global budget is far away.
#[tokio::test]
async fn a_kind_with_its_own_budget_stays_under_it_and_leaves_other_kinds_alone() {
    let env = TestEnv::start_with(|c| {
        c.kind_limits.insert("audio".into(), 2 * MB + MB / 2);
    })
    .await;
    env.get("/api/v1/threads/t1/messages").await;
    for id in ["a1", "a2"] {
        env.get(&format!("/media/s3/renders/{id}.mp3")).await;
    }
    // a1 is used again: a2 is now the least recently used audio.
    assert!(stored(&env, "/media/s3/renders/a1.mp3").await);
    env.get("/media/s3/renders/a3.mp3").await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while stats(&env).await["kinds"]["audio"]["bytes"].as_u64().unwrap() > 2 * MB + MB / 2 {
        assert!(Instant::now() < deadline, "audio never came under its limit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!stored(&env, "/media/s3/renders/a2.mp3").await, "the LRU audio goes");
    assert!(stored(&env, "/media/s3/renders/a1.mp3").await);
    assert!(stored(&env, "/media/s3/renders/a3.mp3").await);
    assert!(stored(&env, "/api/v1/threads/t1/messages").await, "other kinds stay");
    let s = stats(&env).await;
    assert_eq!(s["kinds"]["audio"]["limit"], 2 * MB + MB / 2, "{s}");
    assert_eq!(s["kinds"]["messages"]["limit"], serde_json::Value::Null, "{s}");
    assert_eq!(s["evictions"]["kind_limit"]["count"], 1, "{s}");
    assert_eq!(s["evictions"]["size"]["count"].as_u64().unwrap_or(0), 0, "{s}");
    let rendered = outpost::admin::client::render_stats(&s);
    assert!(rendered.contains("2.1 MB of 2.6 MB"), "{rendered}");
    let bearer = format!("Bearer {}", common::admin_token(env.dir.path()));
    let m = env
        .client
        .call(
            Method::GET,
            &format!("http://{}/metrics", env.outpost.admin_addr()),
            &[("authorization", &bearer)],
            None,
        )
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&m.body);
    assert!(
        text.lines()
            .any(|l| l == "outpost_cache_kind_limit_bytes{kind=\"audio\"} 2621440"),
        "{text}"
    );
    env.stop().await;
}

#[test]
fn kind_budgets_name_known_kinds_and_fit_in_max_size() {
    let base =
        "max_size = \"1GB\"\n[upstreams.api]\nurl = \"http://a\"\n[[routes]]\nprefix = \"/m\"\nkind = \"audio\"\n";
    let ok = outpost::config::Config::from_toml(
        &format!("{base}[budget]\naudio = \"500MB\"\n"),
        "t.toml",
        &Default::default(),
    )
    .unwrap();
    assert_eq!(ok.kind_limits["audio"], 500_000_000);
    let err = |extra: &str| {
        outpost::config::Config::from_toml(&format!("{base}[budget]\n{extra}\n"), "t.toml", &Default::default())
            .unwrap_err()
            .to_string()
    };
    let e = err("audoi = \"5MB\"");
    assert!(
        e.starts_with("t.toml:8: budget.audoi: no route stores answers of kind \"audoi\""),
        "{e}"
    );
    assert!(e.contains("audio"), "{e}");
    let e = err("audio = \"2GB\"");
    assert!(e.contains("budget.audio: 2GB is more than max_size"), "{e}");
}

// `max_unused` expiry is tested on tokio's paused clock in `src/evict.rs` (no real waiting).

fn blob_bytes_on_disk(env: &TestEnv) -> u64 {
    common::walk(&env.dir.path().join("blobs"))
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

async fn wait_under_budget(env: &TestEnv, max: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while stats(env).await["size_bytes"].as_u64().unwrap() > max {
        assert!(
            Instant::now() < deadline,
            "eviction never brought the cache under budget"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn mixed_kinds_past_the_budget_stay_under_it_on_disk_keeping_pins_and_lru_order() {
    let max = 4 * MB + MB / 2;
    let env = TestEnv::start_with(|c| c.max_size = max).await;
    // The library pins a1 and a5 and prefetches them (2 MiB that must never go).
    env.get("/api/v1/library").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(stored(&env, "/media/s3/renders/a1.mp3").await && stored(&env, "/media/s3/renders/a5.mp3").await) {
        assert!(Instant::now() < deadline, "prefetch never finished");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    env.get("/media/s3/renders/a2.mp3").await;
    env.get("/media/s3/renders/a3.mp3").await;
    env.get("/api/v1/threads/t1/messages").await;
    // a2 is used again: a3 is now the least recently used audio.
    assert!(stored(&env, "/media/s3/renders/a2.mp3").await);
    env.get("/media/s3/renders/a4.mp3").await;
    wait_under_budget(&env, max).await;
    assert!(!stored(&env, "/media/s3/renders/a3.mp3").await, "the LRU audio went");
    assert!(
        stored(&env, "/media/s3/renders/a2.mp3").await,
        "the recently used audio stayed"
    );
    // More of every kind.
    for t in ["t1", "t2", "t3"] {
        env.get(&format!("/api/v1/threads/{t}/messages")).await;
        for m in 1..=4 {
            env.get(&format!("/api/v1/threads/{t}/messages/{t}-m{m}/snapshot"))
                .await;
        }
    }
    env.get("/media/s3/renders/a6.mp3").await;
    env.get("/api/v1/threads/t3/messages/t3-m4/snapshot").await;
    wait_under_budget(&env, max).await;
    let on_disk = blob_bytes_on_disk(&env);
    assert!(on_disk <= max, "{on_disk} bytes of blob files on disk > budget {max}");
    for pinned in ["a1", "a5"] {
        assert!(
            stored(&env, &format!("/media/s3/renders/{pinned}.mp3")).await,
            "pinned {pinned}"
        );
    }
    assert!(
        stored(&env, "/api/v1/threads/t3/messages/t3-m4/snapshot").await,
        "the newest stays"
    );
    let s = stats(&env).await;
    assert_eq!(
        s["size_bytes"].as_u64(),
        Some(on_disk),
        "stats agree with the filesystem: {s}"
    );
    env.stop().await;
}

#[tokio::test]
async fn retention_keeps_the_newest_50_snapshot_bodies_per_thread() {
    let opts = outpost::demo::DemoOptions {
        messages_per_thread: 67,
        ..Default::default()
    };
    // The demo config says: retain = { group = "{thread_id}", keep_last = 50, drop = "body" }.
    let env = TestEnv::start_full(opts, |_| {}).await;
    let snap = |t: &str, m: usize| format!("/api/v1/threads/{t}/messages/{t}-m{m}/snapshot");
    let mut sizes = std::collections::HashMap::new();
    let plan = [("t1", 67), ("t2", 67), ("t3", 66)];
    for (t, n) in plan {
        for m in 1..=n {
            let r = env.get(&snap(t, m)).await;
            assert_eq!(r.head.status, 200);
            sizes.insert(snap(t, m), r.body.len() as u64);
        }
    }
    assert_eq!(sizes.len(), 200);
    let mut kept_bytes = 0;
    for (t, n) in plan {
        for m in 1..=n {
            let keep = m > n - 50;
            assert_eq!(stored(&env, &snap(t, m)).await, keep, "{t} m{m} of {n}");
            if keep {
                kept_bytes += sizes[&snap(t, m)];
            }
        }
    }
    let s = stats(&env).await;
    assert_eq!(
        s["kinds"]["snapshots"]["entries"], 200,
        "older heads are kept as metadata: {s}"
    );
    assert_eq!(s["kinds"]["snapshots"]["bytes"].as_u64(), Some(kept_bytes), "{s}");
    assert_eq!(s["evictions"]["retention"]["count"], 50, "{s}");
    assert_eq!(
        blob_bytes_on_disk(&env),
        kept_bytes,
        "dropped bodies are gone from the disk"
    );
    // A dropped one asked for again comes from the network and pushes out its thread's oldest.
    let again = env.get(&snap("t1", 1)).await;
    assert_eq!(again.header("x-outpost-cache"), Some("MISS"));
    assert_eq!(again.body.len() as u64, sizes[&snap("t1", 1)]);
    assert!(stored(&env, &snap("t1", 1)).await);
    assert!(!stored(&env, &snap("t1", 18)).await, "t1's oldest kept body made room");
    assert!(stored(&env, &snap("t2", 18)).await, "other threads are untouched");
    // Offline, a dropped body is never answered with something else.
    env.backend.set_fault(outpost::demo::Fault::Down);
    let off = env.get(&snap("t2", 3)).await;
    assert!(off.head.status.is_server_error(), "{}", off.head.status);
    let ok = env.get(&snap("t2", 60)).await;
    assert_eq!(ok.head.status, 200);
    assert_eq!(ok.body.len() as u64, sizes[&snap("t2", 60)]);
    env.stop().await;
}
