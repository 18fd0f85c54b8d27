//! `outpost import`: moves an existing on-disk audio cache (the app's old `AudioCacheService` files) into
//! the store, so nothing has to be downloaded again after switching to Outpost.
//!
//! Promises: idempotent (importing twice changes nothing: same URL → same key, same bytes → same blob);
//! identical files under different URLs become one blob; a bad row is reported and skipped, never aborts
//! the rest; each entry is committed only after its blob is durable, like any fill.

use std::path::{Path, PathBuf};

use http::header;
use serde::Serialize;

use crate::cache::key;
use crate::config::Config;
use crate::store::{Entry, Lookup, Store, StoreError};

/// One url → file pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapRow {
    /// The media URL as the app knew it.
    pub url: String,
    /// The file holding its bytes.
    pub file: PathBuf,
}

/// What an import did.
#[derive(Debug, Default, Serialize)]
pub struct ImportReport {
    /// Rows imported now.
    pub imported: u64,
    /// Rows already present with the same bytes.
    pub unchanged: u64,
    /// Rows whose bytes matched another row's (one file on disk).
    pub duplicates: u64,
    /// Bytes not stored twice because of those duplicates.
    pub bytes_saved: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Rows skipped, with the reason.
    pub errors: Vec<String>,
}

/// Import failures that stop everything (the mapping unreadable, the store not openable).
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The mapping file.
    #[error("{0}: {1}")]
    Map(PathBuf, String),
    /// The store.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Reads a mapping: CSV lines `url,file` (a header line is skipped), or JSON (`[{"url":..,"file":..}]`
/// or `{"url": "file"}`). Relative files are relative to `dir`. Unparseable lines become errors.
pub fn read_map(path: &Path, dir: &Path) -> Result<(Vec<MapRow>, Vec<String>), ImportError> {
    let text = std::fs::read_to_string(path).map_err(|e| ImportError::Map(path.to_path_buf(), e.to_string()))?;
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    let resolve = |f: &str| {
        let p = PathBuf::from(f.trim());
        if p.is_absolute() {
            p
        } else {
            dir.join(p)
        }
    };
    if text.trim_start().starts_with(['[', '{']) {
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ImportError::Map(path.to_path_buf(), format!("invalid JSON: {e}")))?;
        match v {
            serde_json::Value::Array(items) => {
                for (i, it) in items.iter().enumerate() {
                    match (it["url"].as_str(), it["file"].as_str()) {
                        (Some(u), Some(f)) => rows.push(MapRow {
                            url: u.to_string(),
                            file: resolve(f),
                        }),
                        _ => errors.push(format!("item {i}: needs \"url\" and \"file\" strings")),
                    }
                }
            }
            serde_json::Value::Object(map) => {
                for (u, f) in map {
                    match f.as_str() {
                        Some(f) => rows.push(MapRow {
                            url: u,
                            file: resolve(f),
                        }),
                        None => errors.push(format!("{u}: the file must be a string")),
                    }
                }
            }
            _ => {
                return Err(ImportError::Map(
                    path.to_path_buf(),
                    "expected an array or an object".into(),
                ))
            }
        }
    } else {
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || (n == 0 && line.eq_ignore_ascii_case("url,file")) {
                continue;
            }
            match line.split_once(',') {
                Some((u, f)) if !u.trim().is_empty() && !f.trim().is_empty() => rows.push(MapRow {
                    url: u.trim().to_string(),
                    file: resolve(f),
                }),
                _ => errors.push(format!("line {}: expected url,file", n + 1)),
            }
        }
    }
    Ok((rows, errors))
}

/// Where a media URL lives in the cache: the key the proxy will look up for it.
fn key_for(config: &Config, url: &str) -> Option<(Vec<u8>, String, String)> {
    let rules: Vec<_> = config
        .routes
        .iter()
        .flat_map(|r| r.policy.rewrite.iter().cloned())
        .collect();
    let target = crate::media::local_target(url, &rules)?;
    let uri: http::Uri = target.parse().ok()?;
    let table = config.route_table();
    let route = table.route(&http::Method::GET, uri.path());
    let upstream = &config.upstreams[route.upstream].name;
    let k = key::primary_key(key::ANONYMOUS, upstream, &uri, &route.policy.ignore_query);
    Some((k, route.policy.kind.clone(), route.name.to_string()))
}

fn content_type(file: &Path) -> &'static str {
    match file
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("mp3") => "audio/mpeg",
        Some("m4a") | Some("mp4") | Some("aac") => "audio/mp4",
        Some("wav") => "audio/wav",
        Some("ogg") | Some("oga") => "audio/ogg",
        Some("flac") => "audio/flac",
        _ => "application/octet-stream",
    }
}

/// Imports `rows` into the data dir of `config` (no Outpost may be running on it). `progress` is told
/// bytes and rows as they go.
pub fn import(config: &Config, rows: &[MapRow], progress: &dyn Fn(u64)) -> Result<ImportReport, ImportError> {
    let store = Store::open_with_key(&config.data_dir, config.encryption.as_ref().map(|k| k.bytes()))?;
    let mut report = ImportReport::default();
    for row in rows {
        let Some((k, kind, route)) = key_for(config, &row.url) else {
            report.errors.push(format!(
                "{}: no route serves this URL (add a rewrite/strip_prefix route for its host)",
                row.url
            ));
            continue;
        };
        let result = (|| -> Result<(), String> {
            let mut f = std::fs::File::open(&row.file).map_err(|e| format!("{}: {e}", row.file.display()))?;
            let meta = f.metadata().map_err(|e| e.to_string())?;
            let mut w = store.blobs().begin().map_err(|e| e.to_string())?;
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = std::io::Read::read(&mut f, &mut buf).map_err(|e| e.to_string())?;
                if n == 0 {
                    break;
                }
                w.write(&buf[..n]).map_err(|e| e.to_string())?;
                progress(n as u64);
            }
            report.bytes += w.len();
            let inline = w.take_inline();
            let blob = store.blobs().finish(w).map_err(|e| e.to_string())?;
            if let Ok(Lookup::Entry(e)) = store.lookup(&k) {
                if e.blob == blob.hash {
                    report.unchanged += 1;
                    return Ok(());
                }
            }
            let now = crate::clock::now();
            let mtime = meta.modified().unwrap_or(now);
            let ms = crate::clock::to_ms(now);
            let mut h = http::HeaderMap::new();
            h.insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static(content_type(&row.file)),
            );
            h.insert(header::CONTENT_LENGTH, http::HeaderValue::from(blob.size));
            // Date and Last-Modified give heuristic freshness (RFC 9111 §4.2.2) to files that had no headers.
            if let Ok(v) = http::HeaderValue::from_str(&httpdate::fmt_http_date(now)) {
                h.insert(header::DATE, v);
            }
            if let Ok(v) = http::HeaderValue::from_str(&httpdate::fmt_http_date(mtime)) {
                h.insert(header::LAST_MODIFIED, v);
            }
            let mut entry = Entry::stored(200, &h, &blob, ms, (kind.clone(), route.clone(), row.url.clone()));
            entry.inline = inline;
            let new_blob = store
                .commit_entry(&k, &k, &[], &entry, &blob)
                .map_err(|e| e.to_string())?;
            if !new_blob {
                report.duplicates += 1;
                report.bytes_saved += blob.size;
            }
            report.imported += 1;
            Ok(())
        })();
        if let Err(e) = result {
            report.errors.push(format!("{}: {e}", row.url));
        }
    }
    store.flush()?;
    Ok(report)
}
