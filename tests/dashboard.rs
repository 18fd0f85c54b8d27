//! The dashboard in a real headless Chromium (chromedriver + fantoccini): with the backend down it shows
//! the pending writes and what each one's user reads meanwhile; after the backend is back, pressing Retry
//! drains the count to 0.
//! `.ci/run` installs Debian's `chromium chromium-driver`; without them this test fails, it does not skip.

mod common;

use std::time::{Duration, Instant};

use common::TestEnv;
use fantoccini::Locator;
use http::Method;
use outpost::demo::Fault;

async fn text_of(c: &fantoccini::Client, css: &str) -> String {
    c.find(Locator::Css(css)).await.unwrap().text().await.unwrap()
}

async fn wait_text(c: &fantoccini::Client, css: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = text_of(c, css).await;
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{css} shows {got:?}, wanted {want:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_pending_writes_and_retry_drains_them() {
    let env = TestEnv::start_with(|c| {
        // A failed replay waits a long time: only the Retry button brings it back quickly.
        c.queue.backoff_base = Duration::from_secs(120);
        c.queue.backoff_cap = Duration::from_secs(120);
    })
    .await;
    env.backend.set_fault(Fault::Down);
    for body in [r#"{"audio_file_id":"a6"}"#, r#"{"audio_file_id":"a2"}"#] {
        let r = env
            .client
            .call(
                Method::POST,
                &env.url("/api/v1/library/items"),
                &[("content-type", "application/json")],
                Some(body.as_bytes().to_vec()),
            )
            .await
            .unwrap();
        assert_eq!(r.head.status, 202);
    }

    let started = common::browser::Browser::start().await;
    let browser = started.client.clone();
    let admin = env.outpost.admin_addr();
    browser.goto(&format!("http://{admin}/")).await.unwrap();
    let token = std::fs::read_to_string(env.dir.path().join("admin.token")).unwrap();
    browser
        .find(Locator::Css("#token"))
        .await
        .unwrap()
        .send_keys(token.trim())
        .await
        .unwrap();
    wait_text(&browser, "#pending-count", "2").await;
    // Each pending write says what its user reads meanwhile (the library lists the new items).
    let queue = text_of(&browser, "#queue").await;
    assert_eq!(
        queue
            .matches("meanwhile: GET /api/v1/library lists this new item")
            .count(),
        2,
        "{queue}"
    );
    let upstreams = text_of(&browser, "#upstreams").await;
    assert!(upstreams.contains("api offline"), "{upstreams}");

    // The backend comes back but answers 503 once: the replay backs off for two minutes.
    env.backend.set_fault(Fault::Error { status: 503 });
    let t = Instant::now();
    while env.outpost.outbox().list().unwrap().iter().all(|i| i.attempts == 0) {
        assert!(t.elapsed() < Duration::from_secs(10), "no replay attempt");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    env.backend.set_fault(Fault::Up);
    wait_text(&browser, "#pending-count", "2").await;
    // Press Retry on each item (keyboard-reachable buttons in the queue table).
    let deadline = Instant::now() + Duration::from_secs(20);
    while text_of(&browser, "#pending-count").await != "0" {
        assert!(Instant::now() < deadline, "the count never drained");
        if let Ok(b) = browser.find(Locator::Css("#queue button[data-retry]")).await {
            let _ = b.click().await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let png = browser.screenshot().await.unwrap();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("dashboard.png"), &png).unwrap();
    assert!(png.len() > 1000);
    let lib = env.backend.state().library_audio_ids();
    assert!(
        lib.contains(&"a6".to_string()) && lib.contains(&"a2".to_string()),
        "{lib:?}"
    );
    browser.close().await.unwrap();
    drop(started);
    env.stop().await;
}
