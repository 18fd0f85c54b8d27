//! The HTTP cache: looks up stored responses, serves them from blob files, and fills the store from
//! upstream responses while they stream to the client (tee).
//!
//! Promises: a body is committed only when it arrived whole (no upstream error, length as announced)
//! and its blob is durable; a blob is verified (size + BLAKE3) before its first use after start, and on
//! every use with `verify_on_read`, and a blob that fails is dropped with its entries, never served;
//! concurrent misses for one key make one upstream request (the others wait for that fill).

pub mod key;
pub mod policy;
pub mod range;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::stream;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use tokio::sync::{mpsc, watch};

use crate::body::{self, BoxError, ProxyBody};
use crate::evict::Evictor;
use crate::store::{Entry, Lookup, RetainDrop, Store, StoreError};
use policy::{CacheRole, ExchangeTimes, Freshness};

/// Cache failures; none of them reaches a client as such (the proxy falls back to the network).
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A blob failed verification or could not be read.
    #[error("blob {hash}: {reason}")]
    Blob {
        /// Blob hash.
        hash: String,
        /// What is wrong.
        reason: String,
    },
}

/// A stored response found for a request.
#[derive(Debug, Clone)]
pub struct Hit {
    /// Its key (primary or variant).
    pub key: Vec<u8>,
    /// The stored head and body reference.
    pub entry: Entry,
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn from_ms(v: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(v)
}

impl Hit {
    /// §4.2.3 current age at `now`.
    pub fn age(&self, headers: &HeaderMap, now: SystemTime) -> Duration {
        policy::current_age(headers, self.times(), now)
    }

    /// When the exchange happened.
    pub fn times(&self) -> ExchangeTimes {
        ExchangeTimes {
            request_time: from_ms(self.entry.request_time_ms),
            response_time: from_ms(self.entry.response_time_ms),
        }
    }

    /// Fresh or stale for this request (an invalidated entry is always stale).
    pub fn freshness(
        &self,
        role: CacheRole,
        ttl: Option<Duration>,
        req_headers: &HeaderMap,
        now: SystemTime,
    ) -> Freshness {
        if self.entry.invalidated {
            return Freshness::Stale;
        }
        let headers = self.entry.headers.map();
        let status = StatusCode::from_u16(self.entry.status).unwrap_or(StatusCode::OK);
        let lifetime = policy::freshness_lifetime(role, status, headers, ttl);
        policy::evaluate(req_headers, lifetime, self.age(headers, now), headers)
    }
}

/// State of an in-flight fill, watched by collapsed requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FillState {
    /// Still streaming.
    Running,
    /// Committed: look the key up again.
    Done,
    /// Not stored (error, truncated, not storable).
    Failed,
}

/// The right to fill one primary key; dropping it without completing reports `Failed` to followers.
pub struct FillGuard {
    cache: Arc<Cache>,
    primary: Vec<u8>,
    tx: watch::Sender<FillState>,
}

impl FillGuard {
    fn complete(self, state: FillState) {
        self.tx.send_replace(state);
    }
}

impl Drop for FillGuard {
    fn drop(&mut self) {
        if *self.tx.borrow() == FillState::Running {
            self.tx.send_replace(FillState::Failed);
        }
        if let Ok(mut m) = self.cache.inflight.lock() {
            m.remove(&self.primary);
        }
    }
}

/// Either fill the key yourself or wait for the request already filling it.
pub enum FillSlot {
    /// This request fetches and fills.
    Leader(FillGuard),
    /// Another request is fetching; wait on this.
    Follower(watch::Receiver<FillState>),
}

/// What to record with a committed response.
pub struct FillInfo {
    /// Primary key.
    pub primary: Vec<u8>,
    /// The request's headers (for Vary).
    pub req_headers: HeaderMap,
    /// When the request was sent.
    pub request_time: SystemTime,
    /// When the response head arrived.
    pub response_time: SystemTime,
    /// Route kind.
    pub kind: String,
    /// Route name.
    pub route: String,
    /// Request target.
    pub url: String,
    /// Retention group and its rule (`keep_last`, what to drop), from the route's `retain`.
    pub retain: Option<(String, usize, RetainDrop)>,
}

/// Sealed answers up to this size are decrypted in one go on the request's task; larger ones stream
/// through the blocking pool a few chunks at a time.
const SMALL_BODY: u64 = 256 * 1024;

/// Plain blobs larger than this are answered as slices of a map of their file, which the proxy's
/// connections send with `sendfile(2)` (no copy); smaller ones come from memory.
const MAPPED_MIN: u64 = 32 * 1024;

/// The cache engine.
pub struct Cache {
    store: Arc<Store>,
    evictor: Arc<Evictor>,
    role: CacheRole,
    verify_on_read: bool,
    verified: Mutex<HashSet<String>>,
    inflight: Mutex<HashMap<Vec<u8>, watch::Receiver<FillState>>>,
}

impl Cache {
    /// A cache over `store`.
    pub fn new(store: Arc<Store>, evictor: Arc<Evictor>, role: CacheRole, verify_on_read: bool) -> Cache {
        Cache {
            store,
            evictor,
            role,
            verify_on_read,
            verified: Mutex::new(HashSet::new()),
            inflight: Mutex::new(HashMap::new()),
        }
    }

    /// Private or shared rules.
    pub fn role(&self) -> CacheRole {
        self.role
    }

    /// The size budget keeper.
    pub fn evictor(&self) -> &Arc<Evictor> {
        &self.evictor
    }

    /// The store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The stored response for a request, following `Vary`.
    pub fn lookup(&self, primary: &[u8], req_headers: &HeaderMap) -> Result<Option<Hit>, CacheError> {
        match self.store.lookup(primary)? {
            Lookup::Miss => Ok(None),
            // A head kept by retention without its body is metadata, not something to serve.
            Lookup::Entry(entry) if entry.body_dropped => Ok(None),
            Lookup::Entry(entry) => Ok(Some(Hit {
                key: primary.to_vec(),
                entry,
            })),
            Lookup::Vary(fields) => {
                let values = policy::vary_values(&fields, req_headers);
                let key = key::variant_key(primary, &values);
                Ok(self
                    .store
                    .entry(&key)?
                    .filter(|e| !e.body_dropped)
                    .map(|entry| Hit { key, entry }))
            }
        }
    }

    /// On a miss at `primary`: when a `media_alias` rule said the object at `primary` is media id X and
    /// another URL of X is stored, the stored body is linked to `primary` (one more reference to the
    /// same blob, no download) and returned.
    pub fn lookup_alias(&self, primary: &[u8]) -> Result<Option<Hit>, CacheError> {
        let Some(id) = self.store.media_alias_of(primary)? else {
            return Ok(None);
        };
        for other in self.store.media_alias_keys(&id)? {
            if other == primary {
                continue;
            }
            let Some(hit) = self.lookup(&other, &HeaderMap::new())? else {
                continue;
            };
            let mut entry = hit.entry.clone();
            entry.group = None;
            entry.invalidated = false;
            let blob = crate::store::BlobId {
                hash: entry.blob.clone(),
                size: entry.size,
            };
            self.store.commit_entry(primary, primary, &[], &entry, &blob)?;
            self.evictor.committed(primary, 0);
            tracing::debug!(media_id = %id, "served from another URL of the same media (alias)");
            return Ok(Some(Hit {
                key: primary.to_vec(),
                entry,
            }));
        }
        Ok(None)
    }

    /// Claims the fill of `primary`, or joins the one in flight.
    pub fn claim(self: &Arc<Self>, primary: &[u8]) -> FillSlot {
        let mut m = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rx) = m.get(primary) {
            return FillSlot::Follower(rx.clone());
        }
        let (tx, rx) = watch::channel(FillState::Running);
        m.insert(primary.to_vec(), rx);
        FillSlot::Leader(FillGuard {
            cache: self.clone(),
            primary: primary.to_vec(),
            tx,
        })
    }

    /// Marks stored responses for `primary` invalidated (RFC 9111 §4.4).
    pub fn invalidate(&self, primary: &[u8]) -> Result<usize, CacheError> {
        Ok(self.store.invalidate(primary)?)
    }

    /// Checks the blob of `entry` if this process has not yet (or always with `verify_on_read`). A blob
    /// that fails is deleted along with the entry, and the hit becomes a miss.
    async fn ensure_verified(&self, hit: &Hit) -> Result<(), CacheError> {
        let hash = &hit.entry.blob;
        if !self.verify_on_read && self.verified.lock().map(|s| s.contains(hash)).unwrap_or(false) {
            return Ok(());
        }
        let store = self.store.clone();
        let id = crate::store::BlobId {
            hash: hash.clone(),
            size: hit.entry.size,
        };
        let key = hit.key.clone();
        let ok = tokio::task::spawn_blocking(move || {
            let ok = store.blobs().verify(&id)?;
            if !ok {
                tracing::error!(blob = %id.hash, "blob failed verification; dropping it and its entry");
                store.remove_entry(&key).map_err(std::io::Error::other)?;
                store.blobs().remove(&id.hash)?;
            }
            Ok::<bool, std::io::Error>(ok)
        })
        .await
        .map_err(|e| CacheError::Blob {
            hash: hash.clone(),
            reason: e.to_string(),
        })?
        .map_err(|e| CacheError::Blob {
            hash: hash.clone(),
            reason: e.to_string(),
        })?;
        if !ok {
            return Err(CacheError::Blob {
                hash: hash.clone(),
                reason: "size or hash mismatch".into(),
            });
        }
        if let Ok(mut s) = self.verified.lock() {
            s.insert(hash.clone());
        }
        Ok(())
    }

    /// Builds the response for a stored entry: stored head, `Age`, and the body streamed from its blob
    /// (none for HEAD).
    pub async fn respond(
        &self,
        hit: &Hit,
        req_headers: &HeaderMap,
        head_only: bool,
        now: SystemTime,
    ) -> Result<Response<ProxyBody>, CacheError> {
        self.ensure_verified(hit).await?;
        self.evictor.touch(&hit.key);
        let headers = hit.entry.header_map();
        let age = hit.age(&headers, now);
        let size = hit.entry.size;
        let answer = if hit.entry.status == 200 {
            range::decide(req_headers, &headers, size)
        } else {
            range::RangeAnswer::Full
        };
        let (status, start, len) = match answer {
            range::RangeAnswer::Full => (
                StatusCode::from_u16(hit.entry.status).unwrap_or(StatusCode::OK),
                0,
                size,
            ),
            range::RangeAnswer::Partial { start, end } => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
            range::RangeAnswer::Unsatisfiable => {
                let mut resp = Response::new(body::empty());
                *resp.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    resp.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                return Ok(resp);
            }
        };
        let blob_err = |e: std::io::Error| CacheError::Blob {
            hash: hit.entry.blob.clone(),
            reason: e.to_string(),
        };
        let sealed = self.store.blobs().sealed();
        let body = if head_only || len == 0 {
            body::empty()
        } else if size <= MAPPED_MIN || (sealed && size <= crate::store::HOT_BLOB_MAX) {
            // Small answers come from memory once read (content-addressed bytes never change).
            let all = self.store.blobs().read_small(&hit.entry.blob, size).map_err(blob_err)?;
            let end = (start + len).min(all.len() as u64);
            body::full(all.slice(start.min(end) as usize..end as usize))
        } else if !sealed {
            // A slice of the file's map: sent from the page cache by the connection, whatever its length.
            body::full(
                self.store
                    .blobs()
                    .read_range(&hit.entry.blob, start, len as usize)
                    .map_err(blob_err)?,
            )
        } else if len <= SMALL_BODY {
            body::full(
                self.store
                    .blobs()
                    .read_range(&hit.entry.blob, start, len as usize)
                    .map_err(blob_err)?,
            )
        } else {
            sealed_body(self.store.clone(), hit.entry.blob.clone(), start, len)
        };
        let mut resp = Response::new(body);
        *resp.status_mut() = status;
        *resp.headers_mut() = headers;
        resp.headers_mut().insert(header::AGE, HeaderValue::from(age.as_secs()));
        if hit.entry.status != 204 {
            resp.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        }
        if hit.entry.status == 200 {
            resp.headers_mut()
                .insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        }
        if status == StatusCode::PARTIAL_CONTENT {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{size}", start + len - 1)) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
        }
        Ok(resp)
    }

    /// Streams `resp` to the client while writing its body to a new blob; commits the entry when the
    /// body ended whole. The fill continues if the client goes away. `guard` is released when done.
    pub fn tee(
        self: &Arc<Self>,
        info: FillInfo,
        resp: Response<ProxyBody>,
        guard: Option<FillGuard>,
    ) -> Response<ProxyBody> {
        let (parts, mut upstream_body) = resp.into_parts();
        let announced: Option<u64> = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let resp_headers = parts.headers.clone();
        let status = parts.status;
        let (tx, rx) = mpsc::channel::<Result<Bytes, BoxError>>(16);
        let cache = self.clone();
        tokio::spawn(async move {
            let mut writer = if !cache.evictor.accepting() {
                tracing::debug!(url = %info.url, "cache full (over budget with only pins, or auto_evict off); not stored");
                None
            } else {
                match cache.store.blobs().begin() {
                    Ok(w) => Some(w),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot start a blob; response not stored");
                        cache.store.note_write_error();
                        None
                    }
                }
            };
            let mut client = Some(tx);
            // The last chunk is held back until the commit: a client that has read the whole body (hyper
            // counts Content-Length) can rely on it being stored, e.g. when going offline right after.
            let mut held: Option<Bytes> = None;
            let mut whole = true;
            while let Some(frame) = upstream_body.frame().await {
                let data = match frame {
                    Err(e) => {
                        tracing::warn!(url = %info.url, error = %e, "upstream body failed; not stored");
                        if let Some(tx) = &client {
                            if let Some(d) = held.take() {
                                let _ = tx.send(Ok(d)).await;
                            }
                            let _ = tx.send(Err(e)).await;
                        }
                        client = None;
                        whole = false;
                        break;
                    }
                    Ok(frame) => match frame.into_data() {
                        Ok(d) => d,
                        Err(_) => continue,
                    },
                };
                if let Some(w) = &mut writer {
                    if let Err(e) = w.write(&data) {
                        tracing::warn!(error = %e, "blob write failed; response not stored");
                        cache.store.note_write_error();
                        writer = None;
                    }
                }
                let previous = held.replace(data);
                if let (Some(tx), Some(p)) = (&client, previous) {
                    if tx.send(Ok(p)).await.is_err() {
                        client = None;
                    }
                }
                if writer.is_none() && client.is_none() {
                    whole = false;
                    break;
                }
            }
            let state = match writer {
                Some(w) if whole && announced.is_none_or(|n| n == w.len()) => {
                    let store = cache.store.clone();
                    let evictor = cache.evictor.clone();
                    let committed = tokio::task::spawn_blocking(move || {
                        let retain = info.retain.clone();
                        let done = commit(&store, info, status, &resp_headers, w)?;
                        if let Some((group, keep, drop)) = retain {
                            evictor.retain(&group, keep, drop)?;
                        }
                        Ok::<_, CacheError>(done)
                    })
                    .await;
                    match committed {
                        Ok(Ok((key, new_bytes))) => {
                            cache.evictor.committed(&key, new_bytes);
                            FillState::Done
                        }
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "storing a response failed");
                            cache.store.note_write_error();
                            FillState::Failed
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "storing a response panicked");
                            FillState::Failed
                        }
                    }
                }
                Some(w) if whole => {
                    tracing::warn!(url = %info.url, got = w.len(), ?announced, "truncated upstream body; not stored");
                    FillState::Failed
                }
                _ => FillState::Failed,
            };
            if let (Some(tx), Some(d)) = (&client, held.take()) {
                let _ = tx.send(Ok(d)).await;
            }
            drop(client);
            if let Some(g) = guard {
                g.complete(state);
            }
        });
        Response::from_parts(parts, channel_body(rx))
    }
}

/// Makes the blob durable, then commits the entry (blocking).
fn commit(
    store: &Store,
    info: FillInfo,
    status: StatusCode,
    resp_headers: &HeaderMap,
    w: crate::store::BlobWriter,
) -> Result<(Vec<u8>, u64), CacheError> {
    let blob = store.blobs().finish(w).map_err(|e| CacheError::Blob {
        hash: "-".into(),
        reason: e.to_string(),
    })?;
    let fields = policy::vary_fields(resp_headers);
    let (key, vary) = if fields.is_empty() {
        (info.primary.clone(), Vec::new())
    } else {
        let values = policy::vary_values(&fields, &info.req_headers);
        (key::variant_key(&info.primary, &values), values)
    };
    let mut entry = Entry::stored(
        status.as_u16(),
        &storable_headers(resp_headers),
        &blob,
        ms(info.response_time),
        (info.kind, info.route, info.url),
    );
    entry.request_time_ms = ms(info.request_time);
    entry.vary = vary;
    entry.group = info.retain.map(|(g, _, _)| g);
    let new_blob = store.commit_entry(&info.primary, &key, &fields, &entry, &blob)?;
    Ok((key, if new_blob { blob.size } else { 0 }))
}

/// Headers kept with a stored response: connection-specific and per-hop fields are not (RFC 9111 §3.1).
fn storable_headers(h: &HeaderMap) -> HeaderMap {
    let mut out = h.clone();
    crate::proxy::strip_hop_by_hop(&mut out);
    for name in ["x-outpost-cache", "x-outpost-pending"] {
        out.remove(name);
    }
    out
}

/// A body fed by the fill task; ends with the upstream's error if it had one.
fn channel_body(rx: mpsc::Receiver<Result<Bytes, BoxError>>) -> ProxyBody {
    let s = stream::unfold(rx, |mut rx| async move {
        let item = rx.recv().await?;
        Some((item.map(Frame::data), rx))
    });
    StreamBody::new(s).boxed()
}

/// Streams plaintext bytes `start..start+len` of a sealed blob, a few chunks per blocking read (each
/// chunk is authenticated before any of its bytes are sent).
fn sealed_body(store: Arc<Store>, hash: String, start: u64, len: u64) -> ProxyBody {
    const STEP: u64 = 4 * crate::store::SEALED_CHUNK as u64;
    let s = stream::unfold((store, hash, start, start + len), |(store, hash, at, end)| async move {
        if at >= end {
            return None;
        }
        // Ends on a chunk boundary, so no chunk is opened twice.
        let n = ((at / STEP + 1) * STEP).min(end) - at;
        let (st, h) = (store.clone(), hash.clone());
        let read = tokio::task::spawn_blocking(move || st.blobs().read_range(&h, at, n as usize)).await;
        match read {
            Ok(Ok(b)) => Some((Ok(Frame::data(b)), (store, hash, at + n, end))),
            Ok(Err(e)) => Some((Err(Box::new(e) as BoxError), (store, hash, end, end))),
            Err(e) => Some((Err(Box::new(e) as BoxError), (store, hash, end, end))),
        }
    });
    StreamBody::new(s).boxed()
}
