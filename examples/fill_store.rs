//! Builds a data directory for the cold-start benchmark without any HTTP: `entries` cached answers of
//! `/api/v1/sized/1024?i=N` (1 KiB bodies, 1,000 distinct contents) plus `big` distinct 5 MiB blobs under
//! `/api/v1/sized/5242880?i=N`, all fresh for a day, keyed exactly as `outpost serve` keys them for an
//! upstream named `api` and a request without credentials.
//!
//! `cargo run --release --example fill_store -- DATA_DIR [ENTRIES] [BIG]` (defaults 100000 and 200: 1 GiB).

use std::time::{SystemTime, UNIX_EPOCH};

use outpost::cache::key;
use outpost::store::{Entry, Store};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().ok_or("usage: fill_store DATA_DIR [ENTRIES] [BIG]")?;
    let entries: usize = args.next().map(|v| v.parse()).transpose()?.unwrap_or(100_000);
    let big: usize = args.next().map(|v| v.parse()).transpose()?.unwrap_or(200);
    let store = Store::open(std::path::Path::new(&dir))?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
    let mut small = Vec::new();
    for c in 0..1000 {
        let body = format!("{{\"pad\":\"{c:0>1014}\"}}");
        let mut w = store.blobs().begin()?;
        w.write(body.as_bytes())?;
        let inline = w.take_inline();
        small.push((store.blobs().finish(w)?, inline));
    }
    let mut bigs: Vec<(outpost::store::BlobId, Option<bytes::Bytes>)> = Vec::new();
    for b in 0..big {
        let mut w = store.blobs().begin()?;
        let chunk = blake3::hash(&(b as u64).to_le_bytes())
            .to_hex()
            .to_string()
            .into_bytes();
        let mut left = 5 << 20;
        while left > 0 {
            let n = left.min(chunk.len());
            w.write(&chunk[..n])?;
            left -= n;
        }
        bigs.push((store.blobs().finish(w)?, None));
    }
    let total = entries.max(big);
    for i in 0..total {
        let (path, (blob, inline)) = if i < big {
            (format!("/api/v1/sized/5242880?i={i}"), &bigs[i])
        } else {
            (format!("/api/v1/sized/1024?i={i}"), &small[i % small.len()])
        };
        let uri: http::Uri = path.parse()?;
        let k = key::primary_key(key::ANONYMOUS, "api", &uri, &[]);
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        h.insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("public, max-age=86400"),
        );
        h.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(blob.size));
        // A fill keeps a small body's copy with its entry; so does this.
        let mut entry = Entry::stored(200, &h, blob, now, ("api".into(), "api".into(), path.clone()));
        entry.inline = inline.clone();
        store.commit_entry(&k, &k, &[], &entry, blob)?;
    }
    store.flush()?;
    println!("{dir}: {total} entries, {} small and {big} 5 MiB blobs", small.len());
    Ok(())
}
