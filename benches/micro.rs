//! Micro-benchmarks of the request path's parts: cache key derivation, entry lookup in RocksDB, reading a
//! stored blob range, and a durable (synced) enqueue. `cargo bench --bench micro`.
//!
//! Timings live here and in benches/load.sh, never in pass/fail tests.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Uri};
use outpost::cache::key;
use outpost::config::QueueSettings;
use outpost::queue::Outbox;
use outpost::queue::OutboxRecord;
use outpost::store::{Entry, Store};

fn entry_for(blob: &outpost::store::BlobId, url: &str) -> Entry {
    let mut h = HeaderMap::new();
    h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(http::header::CACHE_CONTROL, HeaderValue::from_static("max-age=3600"));
    h.insert(http::header::ETAG, HeaderValue::from_static("\"abc\""));
    Entry::stored(200, &h, blob, 0, ("api".into(), "api".into(), url.into()))
}

fn keys(c: &mut Criterion) {
    let uri: Uri = "/api/v1/threads/t1/messages?b=2&a=1&X-Amz-Signature=f00"
        .parse()
        .unwrap();
    let ignore = vec!["X-Amz-*".to_string()];
    let mut h = HeaderMap::new();
    // A JWT with sub=alice: the partition is read from its payload.
    h.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {}", outpost::demo::make_token("alice", 1))).unwrap(),
    );
    c.bench_function("key: partition (JWT sub) + primary key", |b| {
        b.iter(|| {
            let p = key::partition(black_box(&h));
            black_box(key::primary_key(&p, "api", black_box(&uri), &ignore))
        })
    });
}

fn store(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut w = store.blobs().begin().unwrap();
    w.write(&vec![7u8; 1 << 20]).unwrap();
    let blob = store.blobs().finish(w).unwrap();
    let mut keys = Vec::new();
    for i in 0..10_000 {
        let url = format!("/api/v1/sized/1024?i={i}");
        let k = key::primary_key(key::ANONYMOUS, "api", &url.parse().unwrap(), &[]);
        store.commit_entry(&k, &k, &[], &entry_for(&blob, &url), &blob).unwrap();
        keys.push(k);
    }
    store.flush().unwrap();
    let mut i = 0;
    c.bench_function("store: entry lookup among 10k", |b| {
        b.iter(|| {
            i = (i + 7919) % keys.len();
            black_box(store.lookup(&keys[i]).unwrap())
        })
    });
    let file = store.blobs().open_blob(&blob.hash).unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut off = 0u64;
    c.bench_function("blob: 64 KiB positioned read of a 1 MiB blob", |b| {
        b.iter(|| {
            off = (off + 65_536 * 3) % (1_048_576 - 65_536);
            outpost::platform::read_exact_at(&file, &mut buf, off).unwrap();
            black_box(&buf);
        })
    });

    // The same read from an encrypted data dir: one 64 KiB chunk read and authenticated-decrypted.
    let sealed_dir = tempfile::tempdir().unwrap();
    let sealed = Store::open_with_key(sealed_dir.path(), Some(&[9u8; 32])).unwrap();
    let mut w = sealed.blobs().begin().unwrap();
    w.write(&vec![7u8; 1 << 20]).unwrap();
    let sealed_blob = sealed.blobs().finish(w).unwrap();
    let mut chunk = 0u64;
    c.bench_function("blob: 64 KiB read of a 1 MiB blob, encrypted at rest", |b| {
        b.iter(|| {
            chunk = (chunk + 3) % 16;
            black_box(
                sealed
                    .blobs()
                    .read_range(&sealed_blob.hash, chunk * 65_536, 65_536)
                    .unwrap(),
            )
        })
    });
}

fn enqueue(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let outbox = Outbox::open(store, QueueSettings::default()).unwrap();
    let mut n = 0u64;
    c.bench_function("outbox: one durable enqueue (synced write)", |b| {
        b.iter(|| {
            n += 1;
            black_box(
                outbox
                    .enqueue(OutboxRecord {
                        method: "POST".into(),
                        uri: "/api/v1/threads/t1/messages".into(),
                        headers: vec![("content-type".into(), b"application/json".to_vec())],
                        body: bytes::Bytes::from_static(br#"{"text":"offline take"}"#),
                        idempotency_key: format!("k{n}"),
                        partition: "anon".into(),
                        route: "messages".into(),
                        ordering_key: Some("t1".into()),
                        priority: 0,
                        invalidates: vec![],
                        ..Default::default()
                    })
                    .unwrap(),
            )
        })
    });
}

criterion_group!(benches, keys, store, enqueue);
criterion_main!(benches);
