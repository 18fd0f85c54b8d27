//! Audio through Outpost: ranges from the store and on misses, one file per content, URL rewriting.

mod common;

use std::time::{Duration, Instant};

use common::{walk, TestEnv};
use http::Method;
use outpost::admin::client::Collected;
use outpost::demo::{audio_bytes, Fault};

const SIZE: usize = 1 << 20;

fn bytes_of(id: &str) -> Vec<u8> {
    audio_bytes(id, SIZE).flat_map(|c| c.to_vec()).collect()
}

async fn range(env: &TestEnv, path: &str, spec: &str, extra: &[(&str, &str)]) -> Collected {
    let mut h = vec![("range", spec)];
    h.extend_from_slice(extra);
    env.client
        .call(Method::GET, &env.url(path), &h, None)
        .await
        .expect("request")
}

async fn wait_stored(env: &TestEnv, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = range(env, path, "bytes=0-0", &[("cache-control", "only-if-cached")]).await;
        if r.head.status == 206 {
            return;
        }
        assert!(Instant::now() < deadline, "{path} never got stored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn every_range_form_is_served_from_a_stored_file_even_offline() {
    ranges_from_a_stored_file(true).await;
}

/// The portable path (`zero_copy = false`: what macOS and Windows always take) answers the same bytes.
#[tokio::test]
async fn every_range_form_is_served_the_same_without_zero_copy() {
    ranges_from_a_stored_file(false).await;
}

async fn ranges_from_a_stored_file(zero: bool) {
    let env = TestEnv::start_with(|c| c.zero_copy = zero).await;
    let path = "/media/s3/renders/a2.mp3?X-Amz-Signature=one";
    let full = env.get(path).await;
    assert_eq!(full.body.len(), SIZE);
    env.backend.set_fault(Fault::Down);
    let want = bytes_of("a2");
    let etag = full.header("etag").unwrap().to_string();
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, u16, Option<(usize, usize)>);
    let cases: Vec<Case> = vec![
        ("bytes=0-99", vec![], 206, Some((0, 100))),
        ("bytes=1000-", vec![], 206, Some((1000, SIZE))),
        ("bytes=-500", vec![], 206, Some((SIZE - 500, SIZE))),
        ("bytes=65536-131071", vec![], 206, Some((65536, 131072))),
        ("bytes=2000000-", vec![], 416, None),
        ("bytes=0-1,10-20", vec![], 200, Some((0, SIZE))),
        ("bytes=5-9", vec![("if-range", etag.as_str())], 206, Some((5, 10))),
        ("bytes=5-9", vec![("if-range", "\"other\"")], 200, Some((0, SIZE))),
    ];
    let zero_copy = || async {
        outpost::admin::client::get_json(
            env.outpost.admin_addr(),
            "/api/stats",
            &common::admin_token(env.dir.path()),
        )
        .await
        .unwrap()["zero_copy_bytes"]
            .as_u64()
            .unwrap()
    };
    let before = zero_copy().await;
    let mut sent = 0;
    for (spec, extra, status, slice) in cases {
        let r = range(&env, "/media/s3/renders/a2.mp3?X-Amz-Signature=two", spec, &extra).await;
        sent += r.body.len() as u64;
        assert_eq!(r.head.status.as_u16(), status, "{spec} {extra:?}");
        match slice {
            Some((a, b)) => assert_eq!(r.body.as_ref(), &want[a..b], "{spec}"),
            None => assert_eq!(r.header("content-range"), Some("bytes */1048576")),
        }
        if status == 206 {
            let (a, b) = slice.unwrap();
            assert_eq!(
                r.header("content-range").unwrap(),
                format!("bytes {a}-{}/{SIZE}", b - 1)
            );
            assert_eq!(r.header("accept-ranges"), Some("bytes"));
        }
    }
    // With zero copy, every body byte above went from the blob file to the socket with sendfile(2), on
    // kept-alive connections whose next answers still parsed; without it none did.
    assert_eq!(zero_copy().await - before, if zero { sent } else { 0 });
    env.stop().await;
}

#[tokio::test]
async fn a_range_on_a_miss_answers_at_once_and_the_whole_file_fills_behind_it() {
    let env = TestEnv::start().await;
    let path = "/media/s3/renders/a3.mp3?X-Amz-Signature=x";
    let want = bytes_of("a3");
    let t = Instant::now();
    let first = range(&env, path, "bytes=524288-589823", &[]).await;
    assert_eq!(first.head.status, 206);
    assert_eq!(first.body.as_ref(), &want[524_288..589_824]);
    // A seek while the fill runs gets its own bytes too.
    let seek = range(&env, path, "bytes=100-199", &[]).await;
    assert_eq!(seek.body.as_ref(), &want[100..200]);
    assert!(t.elapsed() < Duration::from_secs(2));
    wait_stored(&env, path).await;
    env.backend.set_fault(Fault::Down);
    let offline = range(&env, path, "bytes=-1000", &[]).await;
    assert_eq!(offline.head.status, 206);
    assert_eq!(offline.body.as_ref(), &want[SIZE - 1000..]);
    env.stop().await;
}

#[tokio::test]
async fn the_same_bytes_under_two_urls_are_one_file_on_disk() {
    let env = TestEnv::start().await;
    // `v` is not an ignored parameter: two cache entries, one content.
    let a = env.get("/media/s3/renders/a4.mp3?v=1").await;
    let b = env.get("/media/s3/renders/a4.mp3?v=2").await;
    assert_eq!(
        (a.header("x-outpost-cache"), b.header("x-outpost-cache")),
        (Some("MISS"), Some("MISS"))
    );
    assert_eq!(a.body, b.body);
    let hash = blake3::hash(&a.body).to_hex().to_string();
    let files: Vec<_> = walk(&env.dir.path().join("blobs"))
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy() == hash))
        .collect();
    assert_eq!(files.len(), 1, "one file for both URLs");
    let status = outpost::admin::client::get_json(
        env.outpost.admin_addr(),
        "/api/status",
        &common::admin_token(env.dir.path()),
    )
    .await
    .unwrap();
    assert_eq!(status["cache"]["dedup_saved_bytes"], SIZE as u64);
    env.stop().await;
}

#[tokio::test]
async fn media_urls_inside_json_are_rewritten_to_outpost_and_other_bodies_are_untouched() {
    let env = TestEnv::start().await;
    let base = format!("http://{}", env.outpost.addr());
    let msgs = env.get("/api/v1/threads/t1/messages").await;
    let url = msgs.json()["messages"][0]["renders"][0]["url"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(url.starts_with(&format!("{base}/media/s3/renders/")), "{url}");
    assert!(url.contains("X-Amz-Signature="), "query kept: {url}");
    assert_eq!(msgs.header("content-length").unwrap(), msgs.body.len().to_string());
    // The rewritten URL works, and the stored copy stays the origin's (rewritten again when served).
    let audio = env.client.call(Method::GET, &url, &[], None).await.unwrap();
    assert_eq!(audio.body.len(), SIZE);
    // A route without rewrite rules (snapshots) is passed as the origin sent it.
    let snap = env.get("/api/v1/threads/t1/messages/t1-m1/snapshot").await;
    assert!(
        snap.header("etag").is_some_and(|e| !e.starts_with("W/")),
        "{:?}",
        snap.head.headers
    );
    env.backend.set_fault(Fault::Down);
    let offline = env.get("/api/v1/threads/t1/messages").await;
    assert_eq!(offline.header("x-outpost-cache"), Some("OFFLINE"));
    let url2 = offline.json()["messages"][0]["renders"][0]["url"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(url2.starts_with(&format!("{base}/media/s3/")), "{url2}");
    let audio = env.client.call(Method::GET, &url2, &[], None).await.unwrap();
    assert_eq!(
        (audio.head.status.as_u16(), audio.body.len()),
        (200, SIZE),
        "played offline from the rewritten URL"
    );
    env.stop().await;
}

async fn wait_until_stored(env: &TestEnv, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = env
            .client
            .call(
                Method::GET,
                &env.url(path),
                &[("cache-control", "only-if-cached")],
                None,
            )
            .await
            .unwrap();
        if r.head.status == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "{path} was never prefetched");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_library_is_prefetched_and_plays_offline() {
    let env = TestEnv::start().await;
    let lib = env.get("/api/v1/library").await;
    let urls: Vec<String> = lib.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["url"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(urls.len(), 2);
    wait_until_stored(&env, "/media/s3/renders/a1.mp3").await;
    wait_until_stored(&env, "/media/s3/renders/a5.mp3").await;
    env.backend.set_fault(Fault::Down);
    for u in urls {
        let r = env.client.call(Method::GET, &u, &[], None).await.unwrap();
        assert_eq!((r.head.status.as_u16(), r.body.len()), (200, SIZE), "{u} plays offline");
    }
    env.stop().await;
}

#[tokio::test]
async fn pinned_library_audio_survives_eviction_pressure_until_it_leaves_the_library() {
    let env = TestEnv::start_with(|c| c.max_size = 2 * SIZE as u64 + SIZE as u64 / 2).await;
    env.get("/api/v1/library").await;
    wait_until_stored(&env, "/media/s3/renders/a1.mp3").await;
    wait_until_stored(&env, "/media/s3/renders/a5.mp3").await;
    for id in ["a2", "a3", "a4"] {
        env.get(&format!("/media/s3/renders/{id}.mp3")).await;
    }
    let stored = |path: &'static str| {
        let env = &env;
        async move {
            env.client
                .call(
                    Method::GET,
                    &env.url(path),
                    &[("cache-control", "only-if-cached")],
                    None,
                )
                .await
                .unwrap()
                .head
                .status
                == 200
        }
    };
    common::eventually("eviction of the LRU unpinned audio", 10, || async {
        !stored("/media/s3/renders/a2.mp3").await
    })
    .await;
    assert!(stored("/media/s3/renders/a1.mp3").await, "pinned");
    assert!(stored("/media/s3/renders/a5.mp3").await, "pinned");
    // a1 leaves the library: the next library answer unpins it, and pressure can take it.
    let del = env
        .client
        .call(Method::DELETE, &env.url("/api/v1/library/items/l1"), &[], None)
        .await
        .unwrap();
    assert_eq!(del.head.status, 200);
    env.get("/api/v1/library").await;
    env.get("/media/s3/renders/a2.mp3").await;
    env.get("/media/s3/renders/a3.mp3").await;
    common::eventually("a1, unpinned after its removal, to be evicted", 10, || async {
        !stored("/media/s3/renders/a1.mp3").await
    })
    .await;
    assert!(stored("/media/s3/renders/a5.mp3").await, "still pinned");
    env.stop().await;
}

/// The path and query of the rewritten media URL of `aid` in a JSON list at `items`.
fn media_path(json: &[u8], aid: &str) -> String {
    let v: serde_json::Value = serde_json::from_slice(json).expect("JSON");
    let url = v["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|i| i["audio_file_id"] == aid)
        .and_then(|i| i["url"].as_str())
        .expect("item with a url")
        .to_string();
    let rest = url.strip_prefix("http://").expect("rewritten to Outpost");
    rest[rest.find('/').expect("path")..].to_string()
}

#[tokio::test]
async fn a_new_url_for_a_known_audio_file_id_is_answered_from_the_stored_copy() {
    let env = TestEnv::start().await;
    let lib = env.get("/api/v1/library").await;
    let old = media_path(&lib.body, "a1");
    assert!(old.starts_with("/media/s3/renders/a1.mp3?"), "{old}");
    assert_eq!(env.get(&old).await.body, bytes_of("a1"));
    wait_stored(&env, &media_path(&lib.body, "a5")).await;

    // The bucket moves: every media URL changes; the bytes and the audio_file_ids do not.
    env.backend.state().move_media();
    let lib = env.get("/api/v1/library").await;
    let new = media_path(&lib.body, "a1");
    assert!(new.starts_with("/media/s3/renders/v1/a1.mp3?"), "{new}");
    let r = env.get(&new).await;
    assert_eq!(r.head.status, 200);
    assert_eq!(
        r.header("x-outpost-cache"),
        Some("HIT"),
        "answered from the stored copy"
    );
    assert_eq!(r.body, bytes_of("a1"));
    // Ranges work on the linked entry too, and offline.
    env.backend.set_fault(Fault::Down);
    let part = range(&env, &new, "bytes=100-199", &[]).await;
    assert_eq!(part.head.status, 206);
    assert_eq!(part.body, bytes_of("a1")[100..200]);
    env.backend.set_fault(Fault::Up);
    // Prefetch of the pinned library saw the new URLs too and did not download anything either.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(env.is_stored(&media_path(&lib.body, "a5")).await);
    let state = env.backend.state();
    assert_eq!(
        state.request_count("/renders/v1/a1.mp3"),
        0,
        "no download for a known id"
    );
    assert_eq!(
        state.request_count("/renders/v1/a5.mp3"),
        0,
        "no download for a known id"
    );
    // One file per content on disk: exactly the two audio files.
    let audio_files = walk(&env.dir.path().join("blobs"))
        .into_iter()
        .filter(|p| std::fs::metadata(p).map(|m| m.len() == SIZE as u64).unwrap_or(false))
        .count();
    assert_eq!(audio_files, 2);
    let stats: serde_json::Value = outpost::admin::client::get_json(
        env.outpost.admin_addr(),
        "/api/stats",
        &common::admin_token(env.dir.path()),
    )
    .await
    .unwrap();
    assert!(
        stats["dedup_saved_bytes"].as_u64().unwrap_or(0) >= 2 * SIZE as u64,
        "{stats}"
    );
    env.stop().await;
}
