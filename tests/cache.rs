//! The persistent cache over real sockets: strategies online and offline, partitions, presigned URLs,
//! truncated bodies, restart persistence, collapsing, corruption, black holes; and HTTP caching to the
//! letter (targeted fields, Age, Cache-Status, offline_stale, purge).

mod common;

use std::time::{Duration, Instant};

use common::TestEnv;
use http::Method;
use outpost::admin::client::Collected;
use outpost::demo::{make_token, Fault};
use outpost::routes::Strategy;

async fn get_h(env: &TestEnv, path: &str, headers: &[(&str, &str)]) -> Collected {
    env.client
        .call(Method::GET, &env.url(path), headers, None)
        .await
        .expect("request")
}

fn cache_of(r: &Collected) -> &str {
    r.header("x-outpost-cache").unwrap_or("-")
}

/// Waits until the probe has seen the upstream come back.
/// Waits until every upstream (the API and the media host) is seen online again.
async fn wait_online(env: &TestEnv) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !env.outpost.upstreams().iter().all(|u| u.connectivity().is_online()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn route_mut<'a>(c: &'a mut outpost::config::Config, name: &str) -> &'a mut outpost::routes::RouteConfig {
    c.routes.iter_mut().find(|r| r.name == name).expect("route")
}

fn set_strategy(c: &mut outpost::config::Config, route: &str, s: Strategy) {
    for r in &mut c.routes {
        if r.name == route {
            r.policy.strategy = s;
        }
    }
}

const MESSAGES: &str = "/api/v1/threads/t1/messages";

#[tokio::test]
async fn http_strategy_serves_header_less_json_offline_after_one_visit() {
    let env = TestEnv::start().await;
    let first = env.get(MESSAGES).await;
    assert_eq!((first.head.status.as_u16(), cache_of(&first)), (200, "MISS"));
    // No cache headers: never fresh, so online it goes to the network again.
    let second = env.get(MESSAGES).await;
    assert_eq!(cache_of(&second), "MISS");
    assert_eq!(env.backend.state().request_count(MESSAGES), 2);
    env.backend.set_fault(Fault::Down);
    let t = Instant::now();
    let offline = env.get(MESSAGES).await;
    assert_eq!((offline.head.status.as_u16(), cache_of(&offline)), (200, "OFFLINE"));
    assert!(offline.header("age").is_some(), "stored answers carry Age");
    assert_eq!(offline.json()["messages"].as_array().map(Vec::len), Some(4));
    // Now the upstream is known to be offline: straight from the store.
    let again = env.get(MESSAGES).await;
    assert_eq!(cache_of(&again), "OFFLINE");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let miss = env.get("/api/v1/threads/t2/messages").await;
    assert_eq!(miss.head.status, 503, "never seen: offline miss");
    assert_eq!(miss.json()["error"], "offline");
    env.stop().await;
}

#[tokio::test]
async fn route_ttl_makes_header_less_responses_fresh() {
    let env = TestEnv::start_with(|c| route_mut(c, "messages").policy.ttl = Some(Duration::from_secs(60))).await;
    assert_eq!(cache_of(&env.get(MESSAGES).await), "MISS");
    let hit = env.get(MESSAGES).await;
    assert_eq!(cache_of(&hit), "HIT");
    assert_eq!(env.backend.state().request_count(MESSAGES), 1);
    // §5.2.1.4: the client can still insist on the origin.
    let forced = get_h(&env, MESSAGES, &[("cache-control", "no-cache")]).await;
    assert_eq!(cache_of(&forced), "MISS");
    assert_eq!(env.backend.state().request_count(MESSAGES), 2);
    env.stop().await;
}

#[tokio::test]
async fn cache_first_answers_from_the_store_once_filled() {
    let env = TestEnv::start_with(|c| set_strategy(c, "messages", Strategy::CacheFirst)).await;
    assert_eq!(cache_of(&env.get(MESSAGES).await), "MISS");
    assert_eq!(cache_of(&env.get(MESSAGES).await), "STALE");
    assert_eq!(env.backend.state().request_count(MESSAGES), 1);
    env.backend.set_fault(Fault::Down);
    assert_eq!(env.get(MESSAGES).await.head.status, 200);
    env.stop().await;
}

#[tokio::test]
async fn stale_while_revalidate_answers_at_once_and_refreshes_in_the_background() {
    let env = TestEnv::start_with(|c| set_strategy(c, "messages", Strategy::StaleWhileRevalidate)).await;
    assert_eq!(cache_of(&env.get(MESSAGES).await), "MISS");
    env.backend.set_fault(Fault::Slow { delay_ms: 500 });
    let t = Instant::now();
    let r = env.get(MESSAGES).await;
    assert_eq!(cache_of(&r), "STALE");
    assert!(
        t.elapsed() < Duration::from_millis(400),
        "did not wait for the slow upstream: {:?}",
        t.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while env.backend.state().request_count(MESSAGES) < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        env.backend.state().request_count(MESSAGES),
        2,
        "background refresh reached the upstream"
    );
    env.stop().await;
}

#[tokio::test]
async fn network_first_uses_the_network_and_falls_back_when_it_times_out() {
    let env = TestEnv::start_with(|c| {
        set_strategy(c, "messages", Strategy::NetworkFirst);
        route_mut(c, "messages").policy.network_timeout = Duration::from_millis(300);
    })
    .await;
    assert_eq!(cache_of(&env.get(MESSAGES).await), "MISS");
    assert_eq!(cache_of(&env.get(MESSAGES).await), "MISS");
    env.backend.set_fault(Fault::BlackHole);
    let t = Instant::now();
    let r = env.get(MESSAGES).await;
    assert_eq!((r.head.status.as_u16(), cache_of(&r)), (200, "OFFLINE"));
    assert!(
        t.elapsed() < Duration::from_millis(1000),
        "bounded by network_timeout: {:?}",
        t.elapsed()
    );
    env.stop().await;
}

#[tokio::test]
async fn network_only_never_stores_and_cache_only_never_asks() {
    let env = TestEnv::start_with(|c| set_strategy(c, "messages", Strategy::NetworkOnly)).await;
    assert_eq!(cache_of(&env.get(MESSAGES).await), "BYPASS");
    env.backend.set_fault(Fault::Down);
    assert_eq!(env.get(MESSAGES).await.head.status, 502);
    env.stop().await;

    let env = TestEnv::start_with(|c| set_strategy(c, "messages", Strategy::CacheOnly)).await;
    let r = env.get(MESSAGES).await;
    assert_eq!(r.head.status, 504);
    assert_eq!(env.backend.state().request_count(MESSAGES), 0);
    env.stop().await;
}

#[tokio::test]
async fn only_if_cached_gets_a_504_on_a_miss_rfc9111_5_2_1_7() {
    let env = TestEnv::start().await;
    let r = get_h(&env, MESSAGES, &[("cache-control", "only-if-cached")]).await;
    assert_eq!(r.head.status, 504);
    env.get(MESSAGES).await;
    let r = get_h(&env, MESSAGES, &[("cache-control", "only-if-cached")]).await;
    assert_eq!(r.head.status, 200);
    assert_eq!(env.backend.state().request_count(MESSAGES), 1);
    env.stop().await;
}

#[tokio::test]
async fn users_never_see_each_others_responses_and_keep_theirs_after_a_token_refresh() {
    let env = TestEnv::start().await;
    let alice1 = format!("Bearer {}", make_token("alice", 1));
    let alice2 = format!("Bearer {}", make_token("alice", 2));
    let bob = format!("Bearer {}", make_token("bob", 1));
    assert_eq!(
        get_h(&env, "/api/v1/library", &[("authorization", &alice1)])
            .await
            .head
            .status,
        200
    );
    env.backend.set_fault(Fault::Down);
    let b = get_h(&env, "/api/v1/library", &[("authorization", &bob)]).await;
    assert_eq!(b.head.status, 503, "bob must not get alice's library");
    let anon = env.get("/api/v1/library").await;
    assert_eq!(anon.head.status, 503, "nor an anonymous client");
    let a = get_h(&env, "/api/v1/library", &[("authorization", &alice2)]).await;
    assert_eq!(
        (a.head.status.as_u16(), cache_of(&a)),
        (200, "OFFLINE"),
        "alice after a token refresh"
    );
    env.stop().await;
}

#[tokio::test]
async fn presigned_urls_of_one_object_share_one_entry() {
    let env = TestEnv::start().await;
    let a = env
        .get("/media/s3/renders/a4.mp3?X-Amz-Signature=aaa&X-Amz-Expires=60")
        .await;
    assert_eq!(cache_of(&a), "MISS");
    let b = env
        .get("/media/s3/renders/a4.mp3?X-Amz-Signature=bbb&X-Amz-Expires=30")
        .await;
    // The media host sends max-age=3600: fresh.
    assert_eq!(cache_of(&b), "HIT");
    assert_eq!(a.body, b.body);
    assert_eq!(env.backend.state().request_count("/renders/a4.mp3"), 1);
    env.stop().await;
}

#[tokio::test]
async fn a_truncated_upstream_body_is_never_stored() {
    let env = TestEnv::start().await;
    env.backend.set_fault(Fault::ResetMidBody);
    let r = env
        .client
        .call(Method::GET, &env.url("/media/s3/renders/a2.mp3"), &[], None)
        .await;
    assert!(r.is_err(), "client sees the break");
    env.backend.set_fault(Fault::Up);
    // The fill task notices the break and drops the partial blob.
    let tmp = env.dir.path().join("blobs/tmp");
    common::wait_until("the partial blob to go", 10, || {
        std::fs::read_dir(&tmp).map(|d| d.count() == 0).unwrap_or(false)
    })
    .await;
    let r = get_h(&env, "/media/s3/renders/a2.mp3", &[("cache-control", "only-if-cached")]).await;
    assert_eq!(r.head.status, 504, "nothing stored");
    assert_eq!(
        std::fs::read_dir(env.dir.path().join("blobs/tmp")).unwrap().count(),
        0,
        "temp file removed"
    );
    let full = env.get("/media/s3/renders/a2.mp3").await;
    assert_eq!(full.body.len(), 1 << 20);
    env.stop().await;
}

#[tokio::test]
async fn the_cache_survives_a_restart() {
    let env = TestEnv::start().await;
    let online = env.get(MESSAGES).await;
    let snap = env.get("/api/v1/threads/t1/messages/t1-m2/snapshot").await;
    assert_eq!(snap.head.status, 200);
    let env = env
        .restart(|backend, _| {
            backend.set_fault(Fault::Down);
        })
        .await;
    let offline = env.get(MESSAGES).await;
    assert_eq!((offline.head.status.as_u16(), cache_of(&offline)), (200, "OFFLINE"));
    // Same stored body (media URLs are rewritten to each instance's own address, which changed).
    let texts = |c: &Collected| -> Vec<String> {
        c.json()["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["text"].to_string())
            .collect()
    };
    assert_eq!(texts(&offline), texts(&online));
    let s2 = env.get("/api/v1/threads/t1/messages/t1-m2/snapshot").await;
    assert_eq!(
        s2.body,
        snap.body,
        "a {} KB snapshot comes back byte for byte",
        snap.body.len() / 1024
    );
    env.stop().await;
}

#[tokio::test]
async fn fifty_concurrent_misses_make_one_upstream_request() {
    let env = TestEnv::start().await;
    env.backend.set_fault(Fault::Slow { delay_ms: 200 });
    let path = "/api/v1/threads/t3/messages/t3-m4/snapshot";
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let client = env.client.clone();
        let url = env.url(path);
        tasks.push(tokio::spawn(
            async move { client.call(Method::GET, &url, &[], None).await },
        ));
    }
    let mut bodies = Vec::new();
    for t in tasks {
        let r = t.await.unwrap().unwrap();
        assert_eq!(r.head.status, 200);
        bodies.push(r.body);
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "everyone got the same bytes");
    assert_eq!(env.backend.state().request_count(path), 1);
    env.stop().await;
}

#[tokio::test]
async fn a_corrupted_blob_is_never_served() {
    let env = TestEnv::start().await;
    let good = env.get("/media/s3/renders/a1.mp3").await;
    assert_eq!(good.body.len(), 1 << 20);
    let hash = blake3::hash(&good.body).to_hex().to_string();
    let path = env
        .dir
        .path()
        .join("blobs")
        .join(&hash[0..2])
        .join(&hash[2..4])
        .join(&hash);
    let env = env
        .restart(|backend, _| {
            // Flip one byte in the middle of the stored file.
            let mut bytes = std::fs::read(&path).unwrap();
            bytes[1000] ^= 0xff;
            std::fs::write(&path, bytes).unwrap();
            backend.set_fault(Fault::Down);
        })
        .await;
    let r = env.get("/media/s3/renders/a1.mp3").await;
    assert_ne!(r.head.status, 200, "corrupt bytes must not be served");
    assert!(!path.exists(), "the corrupt blob is dropped");
    env.backend.set_fault(Fault::Up);
    wait_online(&env).await;
    let again = env.get("/media/s3/renders/a1.mp3").await;
    assert_eq!((again.head.status.as_u16(), cache_of(&again)), (200, "MISS"));
    assert_eq!(again.body, good.body, "refetched when online");
    env.stop().await;
}

#[tokio::test]
async fn black_holed_upstream_second_request_answers_from_cache_in_milliseconds() {
    let env =
        TestEnv::start_with(|c| route_mut(c, "messages").policy.network_timeout = Duration::from_millis(500)).await;
    env.get(MESSAGES).await;
    env.backend.set_fault(Fault::BlackHole);
    let first = env.get(MESSAGES).await;
    assert_eq!(cache_of(&first), "OFFLINE");
    let t = Instant::now();
    let second = env.get(MESSAGES).await;
    let took = t.elapsed();
    assert_eq!((second.head.status.as_u16(), cache_of(&second)), (200, "OFFLINE"));
    assert!(took < Duration::from_millis(100), "second request took {took:?}");
    env.stop().await;
}

#[tokio::test]
async fn conditional_revalidation_uses_validators_and_a_304_rfc9111_4_3() {
    let env = TestEnv::start().await;
    let path = "/media/s3/renders/a3.mp3";
    assert_eq!(cache_of(&env.get(path).await), "MISS");
    // §5.2.1.4 no-cache from the client forces revalidation; the media host answers 304 to If-None-Match.
    let r = get_h(&env, path, &[("cache-control", "no-cache")]).await;
    assert_eq!((r.head.status.as_u16(), cache_of(&r)), (200, "REVALIDATED"));
    assert_eq!(r.body.len(), 1 << 20);
    assert_eq!(env.backend.state().request_count("/renders/a3.mp3"), 2);
    // A client's own validator is answered 304 from the store.
    let etag = r.header("etag").unwrap().to_string();
    let r = get_h(&env, path, &[("if-none-match", &etag)]).await;
    assert_eq!((r.head.status.as_u16(), cache_of(&r)), (304, "HIT"));
    env.stop().await;
}

#[tokio::test]
async fn head_is_answered_from_a_stored_get() {
    let env = TestEnv::start().await;
    env.get("/media/s3/renders/a5.mp3").await;
    let r = env
        .client
        .call(Method::HEAD, &env.url("/media/s3/renders/a5.mp3"), &[], None)
        .await
        .unwrap();
    assert_eq!((r.head.status.as_u16(), cache_of(&r)), (200, "HIT"));
    assert_eq!(r.header("content-length"), Some("1048576"));
    assert!(r.body.is_empty());
    assert_eq!(env.backend.state().request_count("/renders/a5.mp3"), 1);
    env.stop().await;
}

#[tokio::test]
async fn a_successful_post_invalidates_the_stored_get_rfc9111_4_4() {
    let env = TestEnv::start_with(|c| {
        set_strategy(c, "messages", Strategy::CacheFirst);
    })
    .await;
    env.get(MESSAGES).await;
    assert_eq!(cache_of(&env.get(MESSAGES).await), "STALE");
    let post = env
        .client
        .call(
            Method::POST,
            &env.url(MESSAGES),
            &[("content-type", "application/json")],
            Some(br#"{"text":"hi"}"#.to_vec()),
        )
        .await
        .unwrap();
    assert_eq!(post.head.status, 201);
    // cache-first would answer from the store; invalidation forces a trip that sees the new message.
    let after = env.get(MESSAGES).await;
    assert_eq!(cache_of(&after), "MISS");
    assert_eq!(after.json()["messages"].as_array().map(Vec::len), Some(5));
    env.stop().await;
}

#[tokio::test]
async fn vary_keeps_one_variant_per_request_header_value_rfc9111_4_1() {
    let env = TestEnv::start().await;
    let path = "/api/v1/greeting";
    let en = get_h(&env, path, &[("accept-language", "en")]).await;
    let de = get_h(&env, path, &[("accept-language", "de")]).await;
    assert_eq!((cache_of(&en), cache_of(&de)), ("MISS", "MISS"));
    let en2 = get_h(&env, path, &[("accept-language", "en")]).await;
    let de2 = get_h(&env, path, &[("accept-language", "de")]).await;
    assert_eq!((cache_of(&en2), en2.json()["text"].as_str()), ("HIT", Some("Hello")));
    assert_eq!((cache_of(&de2), de2.json()["text"].as_str()), ("HIT", Some("Hallo")));
    assert_eq!(env.backend.state().request_count(path), 2);
    let fr = get_h(&env, path, &[("accept-language", "fr")]).await;
    assert_eq!(cache_of(&fr), "MISS", "a new value is a new variant");
    env.stop().await;
}

/// HTTP caching to the letter, against an origin that sends what the test names: targeted cache fields
/// (RFC 9213), `Age` parsing (RFC 9111 §5.1), `Cache-Status` (RFC 9211), `offline_stale = "rfc"`
/// (RFC 9111 §4.2.4) and purging one URL (admin API, CLI, `PURGE`).
mod rfc9111 {
    use std::net::SocketAddr;
    use std::time::Duration;

    use http::{Method, Request, Response};
    use outpost::admin::client::{admin_call, Collected, HttpClient};
    use outpost::body::{self, ProxyBody};
    use outpost::config::{Config, Overrides};
    use outpost::Outpost;

    /// The origin's answer: its headers come from the request's query, `?h=Name:Value|Name:Value`.
    async fn answer(req: Request<hyper::body::Incoming>, _me: SocketAddr) -> Response<ProxyBody> {
        let query = req.uri().query().unwrap_or("").to_string();
        let mut resp = Response::new(body::full(format!("{{\"path\":\"{}\"}}", req.uri().path())));
        resp.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        for (name, spec) in form_urlencoded::parse(query.as_bytes()) {
            if name != "h" {
                continue;
            }
            for field in spec.split('|') {
                if let Some((n, v)) = field.split_once(':') {
                    resp.headers_mut()
                        .append(http::HeaderName::from_bytes(n.as_bytes()).unwrap(), v.parse().unwrap());
                }
            }
        }
        resp
    }

    fn config(origin: SocketAddr, dir: &std::path::Path) -> Config {
        crate::common::init_logs();
        let src = format!(
            r#"
    listen = "127.0.0.1:0"
    admin_listen = "127.0.0.1:0"
    data_dir = {dir:?}
    default_upstream = "api"
    shutdown_grace = "1s"

    [cache]
    allow_purge = true

    [upstreams.api]
    url = "http://{origin}"
    connect_timeout = "500ms"
    first_byte_timeout = "2s"

    [[routes]]
    name = "strict"
    prefix = "/strict/"
    offline_stale = "rfc"
    "#,
            dir = dir.display().to_string()
        );
        Config::from_toml(&src, "rfc9111.toml", &Overrides::default()).unwrap()
    }

    use crate::common::Origin;

    struct Env {
        origin: Origin,
        outpost: Outpost,
        client: HttpClient,
        dir: tempfile::TempDir,
    }

    impl Env {
        async fn start() -> Env {
            let origin = Origin::start(answer).await;
            let dir = tempfile::tempdir().unwrap();
            let outpost = Outpost::start(config(origin.addr, dir.path())).await.unwrap();
            Env {
                origin,
                outpost,
                client: HttpClient::new(Duration::from_secs(10)),
                dir,
            }
        }

        async fn call(&self, method: Method, path: &str, headers: &[(&str, &str)]) -> Collected {
            let url = format!("http://{}{path}", self.outpost.addr());
            self.client.call(method, &url, headers, None).await.unwrap()
        }

        async fn get(&self, path: &str) -> Collected {
            self.call(Method::GET, path, &[]).await
        }

        async fn get_as(&self, path: &str, auth: &str) -> Collected {
            self.call(Method::GET, path, &[("authorization", auth)]).await
        }

        /// Two GETs; true when the second was answered from the store without the origin.
        async fn second_is_a_hit(&self, path: &str) -> bool {
            let count = || self.outpost.store().entry_keys_where(None, None).unwrap().len();
            let stored = count();
            self.get(path).await;
            // A fill commits after its answer is sent: give it up to a second to land (an answer that
            // must not be stored never does, and then the wait runs out).
            let deadline = std::time::Instant::now() + Duration::from_secs(1);
            while count() == stored && std::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let before = self.origin.hits();
            let r = self.get(path).await;
            r.header("x-outpost-cache") == Some("HIT") && self.origin.hits() == before
        }

        async fn admin(&self, method: Method, path: &str) -> serde_json::Value {
            let token = crate::common::admin_token(self.dir.path());
            admin_call(self.outpost.admin_addr(), method, path, &token)
                .await
                .unwrap()
        }

        async fn stop(mut self) {
            self.outpost.shutdown().await;
            self.origin.stop().await;
        }
    }

    /// RFC 9213 §2.2: the most specific targeted field present wins and `Cache-Control` is then ignored
    /// entirely; an invalid targeted field is ignored as if absent.
    #[tokio::test]
    async fn targeted_cache_fields_take_precedence_rfc9213() {
        let env = Env::start().await;
        // Outpost-Cache-Control lets the backend cache for the sidecar what browsers must not store.
        assert!(
            env.second_is_a_hit("/t1?h=Cache-Control:no-store|Outpost-Cache-Control:max-age=60")
                .await
        );
        // CDN-Cache-Control applies when there is no Outpost-specific field.
        assert!(
            !env.second_is_a_hit("/t2?h=Cache-Control:max-age=60|CDN-Cache-Control:no-store")
                .await
        );
        assert!(
            env.second_is_a_hit("/t3?h=Cache-Control:no-store|CDN-Cache-Control:max-age=60")
                .await
        );
        // The most specific wins over the CDN field.
        assert!(
            env.second_is_a_hit(
                "/t4?h=Cache-Control:no-store|CDN-Cache-Control:no-store|Outpost-Cache-Control:max-age=60"
            )
            .await
        );
        // Not a dictionary (upper-case key): ignored, Cache-Control governs.
        assert!(
            env.second_is_a_hit("/t5?h=Cache-Control:max-age=60|Outpost-Cache-Control:No-Store")
                .await
        );
        env.stop().await;
    }

    /// RFC 9111 §5.1: an `Age` that is not one non-negative integer makes the stored answer stale.
    #[tokio::test]
    async fn an_invalid_age_makes_the_answer_stale_rfc9111_5_1() {
        let env = Env::start().await;
        assert!(env.second_is_a_hit("/age-ok?h=Cache-Control:max-age=60|Age:5").await);
        assert!(
            !env.second_is_a_hit("/age-list?h=Cache-Control:max-age=60|Age:old%2C%200")
                .await
        );
        assert!(!env.second_is_a_hit("/age-neg?h=Cache-Control:max-age=60|Age:-1").await);
        env.stop().await;
    }

    /// RFC 9211 members next to X-Outpost-Cache, after any the origin's own caches added.
    #[tokio::test]
    async fn cache_status_uses_the_rfc9211_vocabulary() {
        let mut env = Env::start().await;
        let path = "/cs?h=Cache-Control:max-age=0|ETag:%22v1%22";
        let r = env.get(path).await;
        assert_eq!(
            r.header("cache-status"),
            Some("Outpost; fwd=uri-miss; fwd-status=200; stored")
        );
        let r = env
            .get("/cs-fresh?h=Cache-Control:max-age=60|Cache-Status:CDN;%20hit")
            .await;
        assert_eq!(
            r.header("cache-status"),
            Some("CDN; hit, Outpost; fwd=uri-miss; fwd-status=200; stored")
        );
        let r = env
            .get("/cs-fresh?h=Cache-Control:max-age=60|Cache-Status:CDN;%20hit")
            .await;
        assert_eq!(
            r.header("cache-status"),
            Some("Outpost; hit"),
            "a stored member is not replayed"
        );
        let r = env.get("/nostore?h=Cache-Control:no-store").await;
        assert_eq!(r.header("cache-status"), Some("Outpost; fwd=uri-miss; fwd-status=200"));
        env.origin.stop().await;
        let r = env.get(path).await;
        assert_eq!(r.header("cache-status"), Some("Outpost; hit; detail=offline"));
        let r = env.get("/never-seen").await;
        assert_eq!(r.head.status, 503);
        assert_eq!(r.header("cache-status"), Some("Outpost; fwd=uri-miss; detail=offline"));
        env.outpost.shutdown().await;
    }

    /// RFC 9111 §4.2.4: with `offline_stale = "rfc"` a stale answer whose origin said must-revalidate or
    /// no-cache is never served, not even disconnected (504); the default route keeps serving it offline,
    /// which is what offline-first apps want from Rails' `max-age=0, private, must-revalidate`.
    #[tokio::test]
    async fn rfc_routes_never_serve_prohibited_stale_answers_and_others_do_offline() {
        let mut env = Env::start().await;
        let rails = "?h=Cache-Control:max-age=0%2C%20private%2C%20must-revalidate";
        let lax = format!("/lax{rails}");
        let strict = format!("/strict/x{rails}");
        let strict_no_cache = "/strict/nc?h=Cache-Control:no-cache";
        let strict_plain = "/strict/plain?h=Cache-Control:max-age=0";
        for p in [lax.as_str(), strict.as_str(), strict_no_cache, strict_plain] {
            assert_eq!(env.get(p).await.head.status, 200);
        }
        env.origin.stop().await;
        let r = env.get(&lax).await;
        assert_eq!(
            (r.head.status.as_u16(), r.header("x-outpost-cache")),
            (200, Some("OFFLINE"))
        );
        for p in [strict.as_str(), strict_no_cache] {
            let r = env.get(p).await;
            assert_eq!(r.head.status, 504, "{p}");
            assert!(
                String::from_utf8_lossy(&r.body).contains("offline_stale"),
                "{}",
                String::from_utf8_lossy(&r.body)
            );
            assert_eq!(
                r.header("cache-status"),
                Some("Outpost; fwd=uri-miss; detail=stale-forbidden")
            );
        }
        // Stale without a prohibition is still served on an rfc route (§4.2.4 allows it disconnected).
        let r = env.get(strict_plain).await;
        assert_eq!(
            (r.head.status.as_u16(), r.header("x-outpost-cache")),
            (200, Some("OFFLINE"))
        );
        env.outpost.shutdown().await;
    }

    /// Purge one URL: every Vary variant, every user or one; `PURGE` from the app removes only its own.
    #[tokio::test]
    async fn purge_removes_one_url_for_every_user_or_one() {
        let env = Env::start().await;
        let path = "/p?h=Cache-Control:max-age=60|Vary:Accept-Language";
        for (auth, lang) in [
            ("Bearer alice-token", "en"),
            ("Bearer alice-token", "de"),
            ("Bearer bob-token", "en"),
        ] {
            env.call(Method::GET, path, &[("authorization", auth), ("accept-language", lang)])
                .await;
        }
        env.get_as("/q?h=Cache-Control:max-age=60", "Bearer alice-token").await;
        let encoded: String = form_urlencoded::byte_serialize(path.as_bytes()).collect();
        let v = env
            .admin(Method::DELETE, &format!("/api/cache?url={encoded}&partition=nobody"))
            .await;
        assert_eq!(v["purged_entries"], 0);
        let v = env.admin(Method::DELETE, &format!("/api/cache?url={encoded}")).await;
        assert_eq!(v["purged_entries"], 3, "{v}");
        let r = env
            .call(
                Method::GET,
                path,
                &[("authorization", "Bearer bob-token"), ("accept-language", "en")],
            )
            .await;
        assert_eq!(r.header("x-outpost-cache"), Some("MISS"));
        // Other URLs stay.
        let r = env.get_as("/q?h=Cache-Control:max-age=60", "Bearer alice-token").await;
        assert_eq!(r.header("x-outpost-cache"), Some("HIT"));
        // PURGE from an app: only the caller's answers.
        env.get_as("/q?h=Cache-Control:max-age=60", "Bearer bob-token").await;
        let r = env
            .call(
                Method::from_bytes(b"PURGE").unwrap(),
                "/q?h=Cache-Control:max-age=60",
                &[("authorization", "Bearer alice-token")],
            )
            .await;
        assert_eq!(r.head.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["purged_entries"], 1);
        let r = env.get_as("/q?h=Cache-Control:max-age=60", "Bearer bob-token").await;
        assert_eq!(r.header("x-outpost-cache"), Some("HIT"), "bob's answer stays");
        let r = env.get_as("/q?h=Cache-Control:max-age=60", "Bearer alice-token").await;
        assert_eq!(r.header("x-outpost-cache"), Some("MISS"));
        // The CLI says the same through the admin API.
        // Options after the subcommand, as people type them.
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_outpost"));
        cmd.args(["cache", "purge", "/q?h=Cache-Control:max-age=60"])
            .arg("--admin")
            .arg(env.outpost.admin_addr().to_string())
            .arg("--data-dir")
            .arg(env.dir.path());
        let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
        assert!(text.contains("purged 2 entries"), "{text}");
        // `cache clear` without a selector refuses; an unknown kind is named with the known ones.
        env.get_as("/q?h=Cache-Control:max-age=60", "Bearer bob-token").await;
        let admin = env.outpost.admin_addr().to_string();
        let dir = env.dir.path().to_path_buf();
        let run = move |args: &[&str]| {
            let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_outpost"));
            cmd.args(args).args(["--admin", &admin]).arg("--data-dir").arg(&dir);
            cmd
        };
        let (mut bare, mut typo) = (run(&["cache", "clear"]), run(&["cache", "clear", "--kind", "audoi"]));
        let mut wrong = run(&["cache", "stats", "--token", "wrong"]);
        let (bare, typo, wrong) = tokio::task::spawn_blocking(move || {
            (bare.output().unwrap(), typo.output().unwrap(), wrong.output().unwrap())
        })
        .await
        .unwrap();
        // A refusal is worded as one, not as "nothing answering".
        let why = String::from_utf8_lossy(&wrong.stderr);
        assert!(
            why.contains("refused: 401") && !why.contains("no Outpost answering"),
            "{why}"
        );
        assert!(!bare.status.success());
        assert!(String::from_utf8_lossy(&bare.stderr).contains("--all"));
        assert!(!typo.status.success());
        let why = String::from_utf8_lossy(&typo.stderr);
        assert!(
            why.contains("unknown kind \"audoi\"") && why.contains("known: other"),
            "{why}"
        );
        let r = env.get_as("/q?h=Cache-Control:max-age=60", "Bearer bob-token").await;
        assert_eq!(r.header("x-outpost-cache"), Some("HIT"), "nothing was cleared");
        env.stop().await;
    }

    /// `PURGE` is refused unless `[cache] allow_purge` is on.
    #[tokio::test]
    async fn purge_from_apps_is_off_by_default() {
        let env = crate::common::TestEnv::start().await;
        let r = env
            .client
            .call(
                Method::from_bytes(b"PURGE").unwrap(),
                &env.url("/api/v1/library"),
                &[],
                None,
            )
            .await
            .unwrap();
        assert_eq!(r.head.status, 405);
        env.stop().await;
    }
}
