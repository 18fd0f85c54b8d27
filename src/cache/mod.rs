//! The HTTP cache: what is stored for a request and what it is worth ([`Hit`], [`decide::Stored`]),
//! the decision of what to do ([`decide`]), serving stored responses, collapsing concurrent misses, and
//! filling the store from upstream answers while they stream to the client ([`Cache::tee`]). Storage
//! is reached only through the [`Storage`] seam, so the same code runs on the data directory and, in
//! tests, in memory.
//!
//! Promises: a body is committed only when it arrived whole (no upstream error, length as announced)
//! and it is durable; a body is verified (size + BLAKE3) before its first use after start, and on
//! every use with `verify_on_read`, and one that fails is dropped with its entry, never served;
//! concurrent misses for one key make one upstream request (the others wait for that fill).

pub mod decide;
mod fill;
pub mod key;
pub mod policy;
pub mod range;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use tokio::sync::watch;

pub use decide::{decide, Directives, Outcome, Plan, Stored};

use crate::body::{self, ProxyBody};
use crate::clock::{from_ms, to_ms};
use crate::server::ShutdownSignal;
use crate::store::{Budget, Entry, Lookup, RetainDrop, Storage, StoreError};
use policy::{CacheControl, CacheRole, ExchangeTimes, Freshness};

/// Cache failures; none of them reaches a client as such (the flow falls back to the network).
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored body failed verification or could not be read.
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
    /// The stored head and body reference (shared with the store's hot records).
    pub entry: Arc<Entry>,
}

/// What a stored head says about its freshness, read once per stored head and shared by every hit on
/// it (parsing `Cache-Control`, `Date` and `Age` on every hit was about 4 % of a hit's CPU).
#[derive(Debug, Clone)]
struct HeadFacts {
    cc: CacheControl,
    date: Option<SystemTime>,
    age_value: Duration,
}

impl Hit {
    fn facts(&self) -> HeadFacts {
        self.entry.headers.derived(|h| HeadFacts {
            cc: CacheControl::of_response(h),
            date: policy::date_header(h, header::DATE),
            age_value: policy::age_value(h),
        })
    }

    /// §4.2.3 current age at `now`.
    pub fn age(&self, now: SystemTime) -> Duration {
        self.age_with(&self.facts(), now)
    }

    fn age_with(&self, facts: &HeadFacts, now: SystemTime) -> Duration {
        policy::current_age_of(facts.age_value, facts.date, self.times(), now)
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
        let facts = self.facts();
        let lifetime = policy::freshness_lifetime_of(&facts.cc, role, status, headers, ttl);
        policy::evaluate_of(req_headers, lifetime, self.age_with(&facts, now), &facts.cc)
    }

    /// What this stored response is worth for a request at `now` (the input of [`decide`]).
    pub fn state(&self, role: CacheRole, ttl: Option<Duration>, req_headers: &HeaderMap, now: SystemTime) -> Stored {
        if self.entry.invalidated {
            Stored::Invalidated
        } else if self.freshness(role, ttl, req_headers, now) == Freshness::Fresh {
            Stored::Fresh
        } else {
            Stored::Stale
        }
    }

    /// True when the origin said the stored response must not be served stale once it was checked
    /// and found failing (`must-revalidate`): a 5xx on revalidation is passed on, not covered.
    pub fn must_revalidate(&self) -> bool {
        self.facts().cc.must_revalidate
    }
}

/// Response extension: the answer is being stored (for `Cache-Status: ...; stored`).
#[derive(Debug, Clone, Copy)]
pub struct Storing;

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

/// The cache engine.
pub struct Cache {
    storage: Arc<dyn Storage>,
    budget: Arc<dyn Budget>,
    role: CacheRole,
    verify_on_read: bool,
    verified: Mutex<HashSet<String>>,
    inflight: Mutex<HashMap<Vec<u8>, watch::Receiver<FillState>>>,
    /// Fills nobody reads any more stop when this fires.
    shutdown: ShutdownSignal,
    partitioner: key::Partitioner,
    offline_stale: crate::routes::OfflineStale,
}

impl Cache {
    /// A cache over `storage`, reporting to `budget`.
    pub fn new(
        storage: Arc<dyn Storage>,
        budget: Arc<dyn Budget>,
        role: CacheRole,
        verify_on_read: bool,
        shutdown: ShutdownSignal,
    ) -> Cache {
        Cache {
            storage,
            budget,
            role,
            verify_on_read,
            verified: Mutex::new(HashSet::new()),
            inflight: Mutex::new(HashMap::new()),
            shutdown,
            partitioner: key::Partitioner::default(),
            offline_stale: crate::routes::OfflineStale::Always,
        }
    }

    /// Private or shared rules.
    pub fn role(&self) -> CacheRole {
        self.role
    }

    /// Whether stale answers the origin forbade may answer offline (`[cache] offline_stale`).
    pub fn with_offline_stale(mut self, mode: crate::routes::OfflineStale) -> Cache {
        self.offline_stale = mode;
        self
    }

    /// True when a stale `hit` must not be served on this route: `offline_stale = "rfc"` (the route's,
    /// else the cache's) and the origin forbade it (§4.2.4).
    pub fn stale_forbidden(&self, hit: &Hit, route_mode: Option<crate::routes::OfflineStale>) -> bool {
        route_mode.unwrap_or(self.offline_stale) == crate::routes::OfflineStale::Rfc
            && policy::stale_prohibited(self.role, hit.entry.headers.map())
    }

    /// Tells users apart with `partitioner` instead of the default rules.
    pub fn with_partitioner(mut self, partitioner: key::Partitioner) -> Cache {
        self.partitioner = partitioner;
        self
    }

    /// Who a request belongs to.
    pub fn partition(&self, headers: &HeaderMap) -> String {
        self.partitioner.of(headers)
    }

    /// The stored response for a request, following `Vary`.
    pub fn lookup(&self, primary: &[u8], req_headers: &HeaderMap) -> Result<Option<Hit>, CacheError> {
        match self.storage.lookup(primary)? {
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
                    .storage
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
        let Some(id) = self.storage.media_alias_of(primary)? else {
            return Ok(None);
        };
        for other in self.storage.media_alias_keys(&id)? {
            if other == primary {
                continue;
            }
            let Some(hit) = self.lookup(&other, &HeaderMap::new())? else {
                continue;
            };
            let mut entry = Entry::clone(&hit.entry);
            entry.group = None;
            entry.invalidated = false;
            self.storage.link(primary, &entry)?;
            self.budget.committed(primary, 0);
            tracing::debug!(media_id = %id, "served from another URL of the same media (alias)");
            return Ok(Some(Hit {
                key: primary.to_vec(),
                entry: Arc::new(entry),
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
        Ok(self.storage.invalidate(primary)?)
    }

    /// Applies a 304's header fields to a stored response (§4.3.4), marks it just received and valid
    /// again, and stores the new head.
    pub fn refreshed(&self, mut hit: Hit, not_modified: &HeaderMap) -> Hit {
        let mut headers = hit.entry.header_map();
        let mut fresh_headers = not_modified.clone();
        crate::headers::strip_hop_by_hop(&mut fresh_headers);
        fresh_headers.remove(header::VIA);
        fresh_headers.remove("x-outpost-cache");
        fresh_headers.remove(header::SET_COOKIE);
        policy::update_from_304(&mut headers, &fresh_headers);
        let entry = Arc::make_mut(&mut hit.entry);
        entry.set_headers(&headers);
        let now = to_ms(crate::clock::now());
        entry.request_time_ms = now;
        entry.response_time_ms = now;
        entry.invalidated = false;
        if let Err(e) = self.storage.update_entry(&hit.key, &hit.entry) {
            tracing::warn!(error = %e, "updating a revalidated entry failed");
        }
        hit
    }

    /// True when `hit`'s body may be served without checking it first: a body kept with its entry was
    /// checked against its hash when the record was read, a file once per run; with `verify_on_read`
    /// the file is checked on every use all the same.
    fn known_good(&self, hit: &Hit) -> bool {
        let known = hit.entry.inline.is_some()
            || self
                .verified
                .lock()
                .map(|s| s.contains(&hit.entry.blob))
                .unwrap_or(false);
        known && !self.verify_on_read
    }

    /// Checks the body of `hit` if this process has not yet (or always with `verify_on_read`). A body
    /// that fails is deleted along with the entry, and the hit becomes a miss.
    async fn ensure_verified(&self, hit: &Hit) -> Result<(), CacheError> {
        if self.known_good(hit) {
            return Ok(());
        }
        let hash = &hit.entry.blob;
        let storage = self.storage.clone();
        let (key, entry) = (hit.key.clone(), hit.entry.clone());
        let blob_err = |reason: String| CacheError::Blob {
            hash: hash.clone(),
            reason,
        };
        let ok = tokio::task::spawn_blocking(move || storage.verify_body(&key, &entry))
            .await
            .map_err(|e| blob_err(e.to_string()))?
            .map_err(|e| blob_err(e.to_string()))?;
        if !ok {
            return Err(blob_err("size or hash mismatch".into()));
        }
        if let Ok(mut s) = self.verified.lock() {
            s.insert(hash.clone());
        }
        Ok(())
    }

    /// Builds the response for a stored entry: stored head, `Age`, and the body from storage (none for
    /// HEAD; the requested range for a `Range` request). A matching `If-None-Match` gets a 304.
    pub async fn respond(
        &self,
        hit: &Hit,
        req_headers: &HeaderMap,
        head_only: bool,
        now: SystemTime,
    ) -> Result<Response<ProxyBody>, CacheError> {
        if let Some(answer) = self.respond_now(hit, req_headers, head_only, now) {
            return answer;
        }
        self.ensure_verified(hit).await?;
        self.respond_checked(hit, req_headers, head_only, now)
    }

    /// [`Cache::respond`] without waiting: `None` when the body must be checked first (then
    /// `respond` does it). Most hits take this path, and a request's future then holds no state for it.
    pub fn respond_now(
        &self,
        hit: &Hit,
        req_headers: &HeaderMap,
        head_only: bool,
        now: SystemTime,
    ) -> Option<Result<Response<ProxyBody>, CacheError>> {
        if let Some(resp) = not_modified_for_client(hit, req_headers) {
            return Some(Ok(resp));
        }
        self.known_good(hit)
            .then(|| self.respond_checked(hit, req_headers, head_only, now))
    }

    /// The answer from a stored entry whose body is known good.
    fn respond_checked(
        &self,
        hit: &Hit,
        req_headers: &HeaderMap,
        head_only: bool,
        now: SystemTime,
    ) -> Result<Response<ProxyBody>, CacheError> {
        self.budget.touch(&hit.key);
        let headers = hit.entry.header_map();
        let age = hit.age(now);
        let size = hit.entry.size;
        // A range of coded bytes is useless to a client that does not accept the coding: it gets the
        // whole answer, which the proxy decodes as it streams.
        let answer = if hit.entry.status == 200 && crate::encoding::must_decode(&headers, req_headers).is_none() {
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
        let body = if head_only {
            body::empty()
        } else {
            self.storage
                .read_body(&hit.entry, start, len)
                .map_err(|e| CacheError::Blob {
                    hash: hit.entry.blob.clone(),
                    reason: e.to_string(),
                })?
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
}

/// §13.1.2 weak comparison of the client's If-None-Match against the stored ETag (200s only).
fn not_modified_for_client(hit: &Hit, req_headers: &HeaderMap) -> Option<Response<ProxyBody>> {
    if hit.entry.status != 200 {
        return None;
    }
    let inm = req_headers.get(header::IF_NONE_MATCH)?.to_str().ok()?;
    let stored = hit.entry.headers.map();
    let etag = stored.get(header::ETAG)?.to_str().ok()?;
    let weak = |t: &str| t.trim().trim_start_matches("W/").to_string();
    let matches = inm.trim() == "*" || inm.split(',').any(|t| weak(t) == weak(etag));
    if !matches {
        return None;
    }
    let mut resp = Response::new(body::empty());
    *resp.status_mut() = StatusCode::NOT_MODIFIED;
    for name in [
        header::ETAG,
        header::CACHE_CONTROL,
        header::DATE,
        header::EXPIRES,
        header::VARY,
        header::CONTENT_LOCATION,
        header::LAST_MODIFIED,
    ] {
        for v in stored.get_all(&name) {
            resp.headers_mut().append(name.clone(), v.clone());
        }
    }
    Some(resp)
}
