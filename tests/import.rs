//! `outpost import`: an existing audio cache moves into the store, deduplicated, idempotently.

mod common;

use std::process::Command;

use common::walk;
use std::time::Duration;

use http::Method;
use outpost::admin::client::HttpClient;
use outpost::config::{Config, Overrides};
use outpost::demo::{DemoBackend, Fault};

#[tokio::test]
async fn import_twice_dedups_skips_bad_rows_and_serves_offline() {
    let backend = DemoBackend::start(Default::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let old_cache = dir.path().join("old-cache");
    std::fs::create_dir_all(&old_cache).unwrap();
    std::fs::write(old_cache.join("one.mp3"), vec![1u8; 300_000]).unwrap();
    std::fs::write(old_cache.join("copy-of-one.mp3"), vec![1u8; 300_000]).unwrap();
    std::fs::write(old_cache.join("two.mp3"), vec![2u8; 100_000]).unwrap();
    let media = backend.media_url();
    std::fs::write(
        dir.path().join("map.csv"),
        format!(
            "url,file\n{media}/renders/a1.mp3?X-Amz-Signature=old,one.mp3\n{media}/renders/a2.mp3,copy-of-one.mp3\n{media}/renders/a3.mp3,two.mp3\n{media}/renders/a4.mp3,missing.mp3\nnot a row\nhttps://unknown.example/x.mp3,two.mp3\n"
        ),
    )
    .unwrap();
    let cfg = dir.path().join("outpost.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ndata_dir = {:?}\ndefault_upstream = \"api\"\n[upstreams.api]\nurl = \"{}\"\n[upstreams.media]\nurl = \"{media}\"\n[[routes]]\nname = \"messages\"\nprefix = \"/api/\"\nrewrite = [\"media\"]\n[[routes]]\nname = \"media\"\nprefix = \"/media/s3/\"\nstrip_prefix = \"/media/s3\"\nupstream = \"media\"\nkind = \"audio\"\nignore_query = [\"X-Amz-*\"]\n",
            dir.path().join("data").display().to_string(),
            backend.api_url()
        ),
    )
    .unwrap();
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_outpost"))
            .arg("import")
            .arg(&old_cache)
            .arg("--map")
            .arg(dir.path().join("map.csv"))
            .arg("--config")
            .arg(&cfg)
            .output()
            .unwrap()
    };
    let first = run();
    let out = String::from_utf8_lossy(&first.stdout).to_string();
    let err = String::from_utf8_lossy(&first.stderr).to_string();
    assert!(out.contains("imported 3 files"), "{out}");
    assert!(out.contains("1 duplicates (300000 bytes saved)"), "{out}");
    assert!(out.contains("3 skipped"), "{out}");
    assert!(
        err.contains("missing.mp3") && err.contains("line 6") && err.contains("no route serves"),
        "{err}"
    );
    assert_eq!(first.status.code(), Some(2), "skipped rows make a non-zero exit");
    let second = run();
    let out2 = String::from_utf8_lossy(&second.stdout).to_string();
    assert!(
        out2.contains("imported 0 files") && out2.contains("3 already present"),
        "idempotent: {out2}"
    );
    let blobs = walk(&dir.path().join("data/blobs"))
        .into_iter()
        .filter(|p| !p.starts_with(dir.path().join("data/blobs/tmp")))
        .count();
    assert_eq!(blobs, 2, "two distinct contents, two files");

    backend.set_fault(Fault::Down);
    let config = Config::load(&cfg, &Overrides::default()).unwrap();
    let outpost = outpost::Outpost::start(config).await.unwrap();
    let client = HttpClient::new(Duration::from_secs(5));
    let r = client
        .call(
            Method::GET,
            &format!("http://{}/media/s3/renders/a1.mp3?X-Amz-Signature=new", outpost.addr()),
            &[],
            None,
        )
        .await
        .unwrap();
    assert_eq!(r.head.status, 200);
    assert_eq!(r.body.len(), 300_000);
    assert_eq!(r.header("content-type"), Some("audio/mpeg"));
    outpost.shutdown().await;
    backend.stop().await;
}
