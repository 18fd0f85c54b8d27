//! `outpost verify`: a clean store passes; corrupt, missing and orphan blobs are found (exit 1), repaired
//! (exit 0), and the repaired store serves only the origin's bytes.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{walk, TestEnv};
use outpost::demo::audio_bytes;
use outpost::Outpost;

fn verify(dir: &Path, repair: bool) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_outpost"));
    cmd.arg("verify").arg("--data-dir").arg(dir);
    if repair {
        cmd.arg("--repair");
    }
    let out = cmd.output().expect("run outpost verify");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn blob_files(dir: &Path) -> Vec<PathBuf> {
    let tmp = dir.join("blobs").join("tmp");
    walk(&dir.join("blobs"))
        .into_iter()
        .filter(|p| !p.starts_with(&tmp))
        .collect()
}

fn count(out: &str, what: &str) -> u64 {
    out.lines()
        .find(|l| l.trim_start().starts_with(what))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {what:?} line in:\n{out}"))
}

#[tokio::test]
async fn verify_finds_corrupt_missing_and_orphan_blobs_and_repair_fixes_them() {
    let env = TestEnv::start().await;
    let audio = |id: &str| format!("/media/s3/renders/{id}.mp3");
    for id in ["a1", "a2", "a3"] {
        env.get(&audio(id)).await;
    }
    env.get("/api/v1/threads/t1/messages").await;
    let size = env.backend.state().audio_size();
    let a1: Vec<u8> = audio_bytes("a1", size).flat_map(|c| c.to_vec()).collect();
    let a2: Vec<u8> = audio_bytes("a2", size).flat_map(|c| c.to_vec()).collect();
    let hash = |b: &[u8]| blake3::hash(b).to_hex().to_string();
    let (h1, h2) = (hash(&a1), hash(&a2));
    let (code, out) = verify(env.dir.path(), false);
    assert_ne!(code, 0, "a running Outpost's data dir is refused");
    assert!(out.contains("in use"), "{out}");
    let env = env
        .restart(|_, dir| {
            let (code, out) = verify(dir, false);
            assert_eq!(code, 0, "{out}");
            assert!(out.contains("clean"), "{out}");
            let files = blob_files(dir);
            let find = |h: &str| {
                files
                    .iter()
                    .find(|p| p.ends_with(h))
                    .unwrap_or_else(|| panic!("no blob {h} in {files:?}"))
                    .clone()
            };
            // a1 corrupted in place (same size), a2 gone, and a file nobody knows.
            let p1 = find(&h1);
            let mut bytes = std::fs::read(&p1).unwrap();
            bytes[1000] ^= 0xff;
            std::fs::write(&p1, bytes).unwrap();
            std::fs::remove_file(find(&h2)).unwrap();
            let orphan_hash = hash(b"nobody");
            let orphan = p1.parent().unwrap().join(&orphan_hash);
            std::fs::write(&orphan, b"nobody").unwrap();

            let (code, out) = verify(dir, false);
            assert_eq!(code, 1, "{out}");
            assert_eq!(count(&out, "corrupt blobs"), 1, "{out}");
            assert_eq!(count(&out, "missing blobs"), 1, "{out}");
            assert_eq!(count(&out, "orphan blob files"), 1, "{out}");
            assert_eq!(count(&out, "entries without a body"), 2, "{out}");
            assert!(orphan.exists(), "verify without --repair changes nothing");

            let (code, out) = verify(dir, true);
            assert_eq!(code, 0, "{out}");
            assert!(out.contains("now clean"), "{out}");
            assert!(!orphan.exists());
            let (code, out) = verify(dir, false);
            assert_eq!(code, 0, "{out}");
        })
        .await;
    // The repaired store never serves the damaged bytes: a1 and a2 come from the origin again, a3 and the
    // messages are still stored.
    assert!(!env.is_stored(&audio("a1")).await);
    assert!(!env.is_stored(&audio("a2")).await);
    assert!(env.is_stored(&audio("a3")).await);
    assert!(env.is_stored("/api/v1/threads/t1/messages").await);
    let r = env.get(&audio("a1")).await;
    assert_eq!(r.header("x-outpost-cache"), Some("MISS"));
    assert_eq!(r.body, a1);
    env.stop().await;
}

#[test]
fn verify_needs_a_data_dir() {
    let out = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .arg("verify")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--data-dir"));
}

/// A truncated table file (a disk fault or a copy cut short): serving and plain verify refuse the data
/// dir and say what to run; `verify --repair` rebuilds what can be read, after which verify is clean and
/// Outpost starts and serves again.
#[tokio::test]
async fn a_truncated_table_file_is_salvaged_by_verify_repair() {
    let env = TestEnv::start().await;
    for id in ["a1", "a2", "a3"] {
        env.get(&format!("/media/s3/renders/{id}.mp3")).await;
    }
    for t in ["t1", "t2", "t3"] {
        env.get(&format!("/api/v1/threads/{t}/messages")).await;
    }
    // Shutdown flushes everything into table files.
    let stopped = env.stop_outpost().await;
    let dir = stopped.dir.path().to_path_buf();
    let mut tables: Vec<PathBuf> = walk(&dir.join("db"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "sst"))
        .collect();
    tables.sort_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0));
    let victim = tables.last().expect("a table file").clone();
    let len = std::fs::metadata(&victim).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&victim).unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);

    let refused = Outpost::start(stopped.config.clone())
        .await
        .err()
        .expect("a damaged dir is refused");
    let why = refused.to_string();
    assert!(why.contains("damaged") && why.contains("verify --repair"), "{why}");
    let (code, out) = verify(&dir, false);
    assert_ne!(code, 0);
    assert!(out.contains("verify --repair"), "{out}");

    let (code, out) = verify(&dir, true);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("salvaging") && out.contains("set aside"), "{out}");
    let (code, out) = verify(&dir, false);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("clean"), "{out}");
    let env = stopped.start().await;
    let r = env.get("/media/s3/renders/a1.mp3").await;
    assert_eq!(r.head.status, 200);
    let r = env.get("/api/v1/threads/t1/messages").await;
    assert_eq!(r.head.status, 200);
    env.stop().await;
}
