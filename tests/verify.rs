//! `outpost verify`: a clean store passes; corrupt, missing and orphan blobs are found (exit 1), repaired
//! (exit 0), and the repaired store serves only the origin's bytes; a damaged database is salvaged; and
//! verify stays clean after random sequences of normal store operations.

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

/// `outpost verify` is clean after any sequence of normal operations: seeded random sequences of what
/// the cache and the budget do to the store (fills with shared bodies, answers that start or stop
/// varying, links, head updates, invalidation, retention, eviction, clearing a user, a corrupt blob
/// found while serving, orphan sweeps, restarts), each followed by a full verify that must find
/// nothing, and a check that every stored entry still reads back the body it was filled with.
///
/// A failing seed is printed; `STORE_OPS_SEED=n` replays just that one, `STORE_OPS_SEEDS=n` runs more.
mod store_ops {
    use std::collections::HashMap;
    use std::sync::Arc;

    use outpost::evict::{EvictReason, Evictor};
    use outpost::store::{BlobId, Commit, DiskStorage, Entry, RetainDrop, Storage, Store, VARIANT_SEP};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    const PATHS: usize = 10;
    const BODIES: usize = 6;
    const USERS: [&str; 3] = ["anon", "sub:alice", "sub:bob"];

    fn body(n: usize) -> Vec<u8> {
        // Some small (served from memory), some over the mapped threshold (served from the file).
        let len = if n.is_multiple_of(2) {
            100 + n
        } else {
            40_000 + n * 1000
        };
        (0..len).map(|i| (i * 7 + n * 13) as u8).collect()
    }

    fn primary(user: &str, path: usize) -> Vec<u8> {
        format!("{user}\0api\0/p/{path}").into_bytes()
    }

    fn variant(primary: &[u8], lang: &str) -> Vec<u8> {
        let mut k = primary.to_vec();
        k.push(VARIANT_SEP);
        k.extend_from_slice(format!("accept-language={lang}").as_bytes());
        k
    }

    struct World {
        dir: tempfile::TempDir,
        store: Arc<Store>,
        evictor: Arc<Evictor>,
        /// Key → body number it was last filled or linked with.
        bodies: HashMap<Vec<u8>, usize>,
    }

    impl World {
        fn open(dir: tempfile::TempDir) -> World {
            let store = Arc::new(Store::open(dir.path()).unwrap());
            let evictor = Arc::new(Evictor::open(store.clone(), 1 << 30, true, None).unwrap());
            World {
                dir,
                store,
                evictor,
                bodies: HashMap::new(),
            }
        }

        fn disk(&self) -> DiskStorage {
            DiskStorage(self.store.clone())
        }

        fn fill(&mut self, primary: &[u8], key: &[u8], vary: &[String], n: usize, group: Option<String>) {
            let disk = self.disk();
            let mut sink = disk.begin_fill().unwrap();
            let b = body(n);
            for chunk in b.chunks(8192) {
                sink.write(chunk).unwrap();
            }
            let placeholder = BlobId {
                hash: String::new(),
                size: 0,
            };
            let mut entry = Entry::stored(
                200,
                &http::HeaderMap::new(),
                &placeholder,
                1_000_000,
                ("api".into(), "api".into(), String::from_utf8_lossy(key).into_owned()),
            );
            entry.group = group;
            let grew = disk
                .commit_fill(
                    sink,
                    Commit {
                        primary,
                        key,
                        vary_fields: vary,
                        entry,
                    },
                )
                .unwrap();
            self.evictor.committed(key, grew);
            self.bodies.insert(key.to_vec(), n);
        }

        fn stored_keys(&self) -> Vec<Vec<u8>> {
            self.store.entry_keys_where(None, None).unwrap()
        }

        fn step(&mut self, rng: &mut StdRng, log: &mut Vec<String>) {
            let user = USERS[rng.random_range(0..USERS.len())];
            let p = primary(user, rng.random_range(0..PATHS));
            let n = rng.random_range(0..BODIES);
            match rng.random_range(0..100) {
                // A plain fill (replacing whatever was there, a varying answer included).
                0..=29 => {
                    log.push(format!("fill {} body {n}", String::from_utf8_lossy(&p)));
                    let group = rng.random_bool(0.3).then(|| format!("g{}", rng.random_range(0..2)));
                    self.fill(&p, &p, &[], n, group);
                }
                // An answer that varies (or starts to).
                30..=44 => {
                    let lang = ["en", "de", "fr"][rng.random_range(0..3)];
                    log.push(format!(
                        "fill variant {lang} of {} body {n}",
                        String::from_utf8_lossy(&p)
                    ));
                    let k = variant(&p, lang);
                    self.fill(&p, &k, &["accept-language".to_string()], n, None);
                }
                // The same body under another key.
                45..=51 => {
                    let keys = self.stored_keys();
                    if let Some(src) = pick(rng, &keys) {
                        if let Some(e) = self.store.entry(src).unwrap() {
                            let to = primary(user, PATHS + rng.random_range(0..3));
                            log.push(format!(
                                "link {} -> {}",
                                String::from_utf8_lossy(src),
                                String::from_utf8_lossy(&to)
                            ));
                            if !e.body_dropped {
                                self.disk().link(&to, &e).unwrap();
                                let n = self.bodies.get(src).copied();
                                if let Some(n) = n {
                                    self.bodies.insert(to, n);
                                }
                            }
                        }
                    }
                }
                // A revalidation rewrites the head.
                52..=59 => {
                    let keys = self.stored_keys();
                    if let Some(k) = pick(rng, &keys) {
                        if let Some(e) = self.store.entry(k).unwrap() {
                            let mut e = outpost::store::Entry::clone(&e);
                            log.push(format!("update {}", String::from_utf8_lossy(k)));
                            e.response_time_ms += 1000;
                            self.disk().update_entry(k, &e).unwrap();
                        }
                    }
                }
                60..=66 => {
                    log.push(format!("invalidate {}", String::from_utf8_lossy(&p)));
                    self.disk().invalidate(&p).unwrap();
                }
                67..=72 => {
                    let keys = self.stored_keys();
                    if let Some(k) = pick(rng, &keys) {
                        log.push(format!("evict {}", String::from_utf8_lossy(k)));
                        self.evictor.remove_entry(k, EvictReason::Size).unwrap();
                    }
                }
                73..=77 => {
                    let g = format!("g{}", rng.random_range(0..2));
                    let keep = rng.random_range(0..3);
                    let drop = if rng.random_bool(0.5) {
                        RetainDrop::Body
                    } else {
                        RetainDrop::Entry
                    };
                    log.push(format!("retain {g} keep {keep} {drop:?}"));
                    self.evictor.retain(&g, keep, drop).unwrap();
                }
                78..=81 => {
                    log.push("evict to a small budget".to_string());
                    self.evictor.configure(200_000, true);
                    while self.evictor.used() > 200_000 {
                        if self.evictor.evict_once().unwrap() == 0 {
                            break;
                        }
                    }
                    self.evictor.configure(1 << 30, true);
                }
                82..=84 => {
                    log.push(format!("clear user {user}"));
                    for k in self.store.entry_keys_where(None, Some(user)).unwrap() {
                        self.evictor.remove_entry(&k, EvictReason::Cleared).unwrap();
                    }
                }
                // A body found corrupt while serving takes every entry using it.
                85..=88 => {
                    let keys = self.stored_keys();
                    if let Some(k) = pick(rng, &keys) {
                        if let Some(e) = self.store.entry(k).unwrap().filter(|e| !e.body_dropped) {
                            log.push(format!("corrupt the body of {}", String::from_utf8_lossy(k)));
                            let path = self.store.blobs().path(&e.blob).unwrap();
                            let mut bytes = std::fs::read(&path).unwrap();
                            bytes[0] ^= 0xff;
                            std::fs::write(&path, bytes).unwrap();
                            assert!(!self.disk().verify_body(k, &e).unwrap());
                        }
                    }
                }
                89..=92 => {
                    log.push("sweep unreferenced blobs".to_string());
                    for (hash, _) in self.store.unreferenced_blobs().unwrap() {
                        self.store.delete_blob(&hash).unwrap();
                    }
                }
                93..=95 => {
                    log.push("remove orphan blob files".to_string());
                    self.store.remove_orphan_blobs(std::time::SystemTime::now()).unwrap();
                }
                _ => {
                    log.push("restart".to_string());
                    let World {
                        dir,
                        store,
                        evictor,
                        bodies,
                    } = std::mem::replace(self, World::placeholder());
                    drop(evictor);
                    store.flush().unwrap();
                    drop(store);
                    *self = World::open(dir);
                    self.bodies = bodies;
                }
            }
        }

        /// A stand-in while the real one is reopened (never used).
        fn placeholder() -> World {
            World::open(tempfile::tempdir().unwrap())
        }

        fn check(&self, seed: u64, log: &[String]) {
            let report = self.store.verify(false).unwrap();
            assert_eq!(
                report.problems(),
                0,
                "seed {seed}: verify found {report:?} after:\n{}",
                log.join("\n")
            );
            for k in self.stored_keys() {
                let Some(e) = self.store.entry(&k).unwrap() else {
                    continue;
                };
                if e.body_dropped {
                    continue;
                }
                let want = self.bodies.get(&k).map(|n| body(*n));
                let got = self.store.blobs().read_range(&e.blob, 0, e.size as usize).unwrap();
                assert_eq!(
                    Some(got.to_vec()),
                    want,
                    "seed {seed}: {} reads another body",
                    String::from_utf8_lossy(&k)
                );
            }
        }
    }

    fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> Option<&'a T> {
        (!items.is_empty()).then(|| &items[rng.random_range(0..items.len())])
    }

    #[test]
    fn verify_is_clean_after_any_sequence_of_normal_operations() {
        let seeds: Vec<u64> = match std::env::var("STORE_OPS_SEED") {
            Ok(s) => vec![s.parse().expect("STORE_OPS_SEED")],
            Err(_) => {
                let n = std::env::var("STORE_OPS_SEEDS")
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(24u64);
                (0..n).collect()
            }
        };
        // Replaying one seed checks after every step, so the failure names the step that caused it.
        let every = if std::env::var("STORE_OPS_SEED").is_ok() { 1 } else { 25 };
        for seed in seeds {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut world = World::open(tempfile::tempdir().unwrap());
            let mut log = Vec::new();
            for i in 0..150 {
                world.step(&mut rng, &mut log);
                if (i + 1) % every == 0 {
                    world.check(seed, &log);
                }
            }
            world.check(seed, &log);
        }
    }
}
