//! The demo backend's routes and data.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::content::{
    audio_bytes, json_resp, make_token, parse_single_range, slice_chunks, snapshot, stream_body, truncate,
};
use super::Fault;
use crate::body::{self, ProxyBody};

/// Number of demo threads.
const THREADS: usize = 3;
/// Messages per thread at start.
/// Fixed Last-Modified of every audio file.
const AUDIO_LAST_MODIFIED: &str = "Mon, 02 Nov 2026 10:00:00 GMT";

/// One mutation the backend applied (or recognised as a replay).
#[derive(Debug, Clone, Serialize)]
pub struct Mutation {
    /// Order of application.
    pub seq: u64,
    /// HTTP method.
    pub method: String,
    /// Request path.
    pub path: String,
    /// The request's `Idempotency-Key`, if any.
    pub idempotency_key: Option<String>,
    /// Parsed JSON body (or null).
    pub body: Value,
    /// Status answered.
    pub status: u16,
}

#[derive(Debug, Clone, Serialize)]
struct Message {
    id: String,
    thread_id: String,
    text: String,
    audio_file_id: String,
}

#[derive(Debug, Clone, Serialize)]
struct LibraryItem {
    id: String,
    audio_file_id: String,
    title: String,
}

struct Data {
    messages: BTreeMap<String, Vec<Message>>,
    library: Vec<LibraryItem>,
    audio: BTreeMap<String, Value>,
    next_id: u64,
    mutations: Vec<Mutation>,
    /// Idempotency-Key → (status, body) of the first application.
    replies: HashMap<String, (u16, Value)>,
    /// Token accepted while the `Unauthorized` fault is on.
    valid_token: Option<String>,
    token_version: u64,
    /// More tokens accepted while the `Unauthorized` fault is on.
    also_valid: Vec<String>,
}

/// Everything the demo backend knows; shared by its ports.
pub struct DemoState {
    media_base: String,
    audio_size: usize,
    fault: watch::Receiver<Fault>,
    data: Mutex<Data>,
    requests: Mutex<HashMap<String, u64>>,
    signature: AtomicU64,
    /// Storage layout generation: 0 serves `/renders/{id}.mp3`, n > 0 `/renders/v{n}/{id}.mp3` (a
    /// bucket migration: every media URL changes, the bytes and `audio_file_id`s do not).
    media_generation: AtomicU64,
}

impl DemoState {
    pub(super) fn new(
        media_base: String,
        audio_size: usize,
        messages_per_thread: usize,
        fault: watch::Receiver<Fault>,
    ) -> DemoState {
        let mut messages = BTreeMap::new();
        let mut audio = BTreeMap::new();
        for t in 1..=THREADS {
            let tid = format!("t{t}");
            let list = (1..=messages_per_thread)
                .map(|m| {
                    // Threads share renders: message m of every thread uses audio file a{m}.
                    let aid = format!("a{m}");
                    Message {
                        id: format!("{tid}-m{m}"),
                        thread_id: tid.clone(),
                        text: format!("Take {m} of thread {t}"),
                        audio_file_id: aid,
                    }
                })
                .collect();
            messages.insert(tid, list);
        }
        for m in 1..=messages_per_thread + 2 {
            let aid = format!("a{m}");
            audio.insert(
                aid.clone(),
                json!({"id": aid, "format": "mp3", "bitrate": 320, "size_bytes": audio_size, "duration": 30}),
            );
        }
        let library = vec![
            LibraryItem {
                id: "l1".into(),
                audio_file_id: "a1".into(),
                title: "Take 1".into(),
            },
            LibraryItem {
                id: "l2".into(),
                audio_file_id: "a5".into(),
                title: "Bonus".into(),
            },
        ];
        DemoState {
            media_base,
            audio_size,
            fault,
            data: Mutex::new(Data {
                messages,
                library,
                audio,
                next_id: 100,
                mutations: Vec::new(),
                replies: HashMap::new(),
                valid_token: None,
                token_version: 1,
                also_valid: Vec::new(),
            }),
            requests: Mutex::new(HashMap::new()),
            media_generation: AtomicU64::new(0),
            signature: AtomicU64::new(1),
        }
    }

    /// Every mutation applied so far, in order.
    pub fn mutations(&self) -> Vec<Mutation> {
        self.data.lock().map(|d| d.mutations.clone()).unwrap_or_default()
    }

    /// How many requests reached `path` (API and media ports).
    pub fn request_count(&self, path: &str) -> u64 {
        self.requests
            .lock()
            .ok()
            .and_then(|m| m.get(path).copied())
            .unwrap_or(0)
    }

    /// Under the `Unauthorized` fault, `token` is accepted too (another user whose session is still good).
    pub fn accept_token(&self, token: &str) {
        if let Ok(mut d) = self.data.lock() {
            d.also_valid.push(token.to_string());
        }
    }

    /// Audio file ids in the library, in order.
    pub fn library_audio_ids(&self) -> Vec<String> {
        self.data
            .lock()
            .map(|d| d.library.iter().map(|i| i.audio_file_id.clone()).collect())
            .unwrap_or_default()
    }

    /// Moves every render to a new path (`/renders/v{n}/…`); old paths keep working.
    pub fn move_media(&self) -> u64 {
        self.media_generation.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Size of each audio file.
    pub fn audio_size(&self) -> usize {
        self.audio_size
    }

    fn media_url(&self, audio_file_id: &str) -> String {
        // Presigned-style: a fresh signature on every response, like S3.
        let sig = self.signature.fetch_add(1, Ordering::Relaxed);
        let dir = match self.media_generation.load(Ordering::Relaxed) {
            0 => String::new(),
            n => format!("v{n}/"),
        };
        format!(
            "{}/renders/{dir}{audio_file_id}.mp3?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Expires=3600&X-Amz-Signature={:016x}",
            self.media_base,
            blake3::hash(&sig.to_le_bytes()).as_bytes()[..8]
                .iter()
                .fold(0u64, |a, &b| (a << 8) | u64::from(b))
        )
    }

    fn count(&self, path: &str) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry(path.to_string()).or_default() += 1;
        }
    }

    /// Applies the current fault before a normal answer; `Some` means the fault answered.
    async fn fault_gate(&self, req_auth: Option<&HeaderValue>) -> (Option<Response<ProxyBody>>, bool) {
        let fault = self.fault.borrow().clone();
        match fault {
            Fault::Up | Fault::Down => (None, false),
            Fault::BlackHole => {
                // Requests on connections opened before the fault hang too, until it is lifted.
                let mut rx = self.fault.clone();
                let _ = rx.wait_for(|f| *f != Fault::BlackHole).await;
                (None, false)
            }
            Fault::Slow { delay_ms } => {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                (None, false)
            }
            Fault::Error { status } => {
                let s = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                (Some(json_resp(s, &json!({"error": "injected fault"}))), false)
            }
            Fault::ResetMidBody => (None, true),
            Fault::Unauthorized => {
                let (valid, also) = self
                    .data
                    .lock()
                    .map(|d| (d.valid_token.clone(), d.also_valid.clone()))
                    .unwrap_or_default();
                let presented = req_auth
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "));
                match (valid, presented) {
                    (Some(v), Some(p)) if v == p => (None, false),
                    (_, Some(p)) if also.iter().any(|t| t == p) => (None, false),
                    _ => (
                        Some(json_resp(StatusCode::UNAUTHORIZED, &json!({"error": "token expired"}))),
                        false,
                    ),
                }
            }
        }
    }

    /// The API port.
    pub(super) async fn handle_api(&self, req: Request<hyper::body::Incoming>) -> Response<ProxyBody> {
        let path = req.uri().path().to_string();
        self.count(&path);
        let is_refresh = path == "/api/v1/auth/refresh";
        let (answered, reset) = if is_refresh {
            (None, false)
        } else {
            self.fault_gate(req.headers().get(header::AUTHORIZATION)).await
        };
        if let Some(r) = answered {
            return r;
        }
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        let req_query = req.uri().query().unwrap_or("").to_string();
        let method = req.method().clone();
        let resp = match (&method, segs.as_slice()) {
            (&Method::GET, ["api", "v1", "health"]) => json_resp(StatusCode::OK, &json!({"ok": true})),
            (&Method::GET, ["api", "v1", "threads"]) => {
                let d = self.lock();
                let threads: Vec<_> = d
                    .messages
                    .iter()
                    .map(|(id, m)| json!({"id": id, "title": format!("Thread {id}"), "messages": m.len()}))
                    .collect();
                json_resp(StatusCode::OK, &json!({ "threads": threads }))
            }
            (&Method::GET, ["api", "v1", "threads", tid, "messages"]) => {
                let d = self.lock();
                match d.messages.get(*tid) {
                    None => json_resp(StatusCode::NOT_FOUND, &json!({"error": "no such thread"})),
                    Some(list) => {
                        let msgs: Vec<_> = list.iter().map(|m| self.message_json(m)).collect();
                        json_resp(StatusCode::OK, &json!({ "thread_id": tid, "messages": msgs }))
                    }
                }
            }
            (&Method::GET, ["api", "v1", "threads", tid, "messages", mid, "snapshot"]) => {
                let exists = self
                    .lock()
                    .messages
                    .get(*tid)
                    .is_some_and(|l| l.iter().any(|m| m.id == *mid));
                if exists {
                    snapshot(tid, mid)
                } else {
                    json_resp(StatusCode::NOT_FOUND, &json!({"error": "no such message"}))
                }
            }
            (&Method::GET, ["api", "v1", "greeting"]) => {
                // Content negotiation, for Vary: one representation per Accept-Language.
                let lang = req
                    .headers()
                    .get(header::ACCEPT_LANGUAGE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("en");
                let text = if lang.starts_with("de") { "Hallo" } else { "Hello" };
                let mut r = json_resp(StatusCode::OK, &json!({ "text": text }));
                r.headers_mut()
                    .insert(header::VARY, HeaderValue::from_static("Accept-Language"));
                r.headers_mut()
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=60"));
                r
            }
            (&Method::GET, ["api", "v1", "library"]) => {
                let d = self.lock();
                let items: Vec<_> = d
                    .library
                    .iter()
                    .map(|i| json!({"id": i.id, "audio_file_id": i.audio_file_id, "title": i.title, "url": self.media_url(&i.audio_file_id)}))
                    .collect();
                json_resp(StatusCode::OK, &json!({ "items": items }))
            }
            (&Method::GET, ["api", "v1", "audio", id]) => match self.lock().audio.get(*id) {
                Some(a) => {
                    let mut a = a.clone();
                    a["url"] = json!(self.media_url(id));
                    json_resp(StatusCode::OK, &a)
                }
                None => json_resp(StatusCode::NOT_FOUND, &json!({"error": "no such audio file"})),
            },
            (&Method::GET, ["api", "v1", "echo"]) | (&Method::HEAD, ["api", "v1", "echo"]) => {
                let headers: BTreeMap<String, Vec<String>> = req
                    .headers()
                    .keys()
                    .map(|k| {
                        (
                            k.to_string(),
                            req.headers()
                                .get_all(k)
                                .iter()
                                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                                .collect(),
                        )
                    })
                    .collect();
                json_resp(
                    StatusCode::OK,
                    &json!({"method": method.as_str(), "uri": req.uri().to_string(), "headers": headers}),
                )
            }
            (_, ["api", "v1", "upload"]) => {
                // Hashes a streamed request body without keeping it (for the large-body test).
                let mut body = req.into_body();
                let mut hasher = blake3::Hasher::new();
                let mut n = 0u64;
                while let Some(frame) = body.frame().await {
                    match frame {
                        Ok(f) => {
                            if let Some(d) = f.data_ref() {
                                n += d.len() as u64;
                                hasher.update(d);
                            }
                        }
                        Err(e) => return json_resp(StatusCode::BAD_REQUEST, &json!({"error": e.to_string()})),
                    }
                }
                json_resp(
                    StatusCode::OK,
                    &json!({"method": method.as_str(), "bytes": n, "blake3": hasher.finalize().to_hex().to_string()}),
                )
            }
            (&Method::GET, ["api", "v1", "sized", n]) => match n.parse::<usize>() {
                // A JSON body of exactly n bytes (n ≥ 10), cacheable for `max_age` seconds (default an hour):
                // the benchmarks' 1 KiB and 200 KiB answers.
                Ok(n) if (10..=64 << 20).contains(&n) => {
                    let max_age = req_query
                        .split('&')
                        .find_map(|kv| kv.strip_prefix("max_age="))
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(3600);
                    // `i=K` makes each URL's body its own (same size): a working set of distinct objects,
                    // not one deduplicated blob.
                    let tag = req_query
                        .split('&')
                        .find_map(|kv| kv.strip_prefix("i="))
                        .filter(|t| t.len() <= n - 10 && t.bytes().all(|b| b.is_ascii_alphanumeric()))
                        .unwrap_or("");
                    let body = format!("{{\"pad\":\"{tag}{}\"}}", "x".repeat(n - 10 - tag.len()));
                    let mut r = json_resp(StatusCode::OK, &json!(null));
                    *r.body_mut() = body::full(body);
                    let h = r.headers_mut();
                    h.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
                    if let Ok(v) = HeaderValue::from_str(&format!("public, max-age={max_age}")) {
                        h.insert(header::CACHE_CONTROL, v);
                    }
                    if let Ok(v) = HeaderValue::from_str(&format!("\"sized-{n}-{tag}\"")) {
                        h.insert(header::ETAG, v);
                    }
                    r
                }
                _ => json_resp(
                    StatusCode::BAD_REQUEST,
                    &json!({"error": "size must be a number from 10 to 64 MiB"}),
                ),
            },
            (&Method::GET, ["api", "v1", "big", n]) => match n.parse::<usize>() {
                Ok(n) => {
                    let mut r = Response::new(stream_body(audio_bytes("big", n), None));
                    r.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(n));
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/octet-stream"),
                    );
                    r
                }
                Err(_) => json_resp(StatusCode::BAD_REQUEST, &json!({"error": "size must be a number"})),
            },
            (&Method::POST, ["api", "v1", "auth", "logout"]) => json_resp(StatusCode::OK, &json!({"ok": true})),
            (&Method::POST, ["api", "v1", "auth", "refresh"]) => {
                let mut d = self.lock();
                d.token_version += 1;
                let token = make_token("alice", d.token_version);
                d.valid_token = Some(token.clone());
                json_resp(StatusCode::OK, &json!({"token": token}))
            }
            (m, _) if m == Method::POST || m == Method::PUT || m == Method::PATCH || m == Method::DELETE => {
                let key = req
                    .headers()
                    .get("idempotency-key")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let bytes = match req.into_body().collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(e) => return json_resp(StatusCode::BAD_REQUEST, &json!({"error": e.to_string()})),
                };
                let body: Value = if bytes.is_empty() {
                    Value::Null
                } else {
                    match serde_json::from_slice(&bytes) {
                        Ok(v) => v,
                        Err(e) => {
                            return json_resp(StatusCode::BAD_REQUEST, &json!({"error": format!("invalid JSON: {e}")}))
                        }
                    }
                };
                let (status, reply) = self.mutate(&method, &segs, key, body);
                json_resp(status, &reply)
            }
            _ => json_resp(StatusCode::NOT_FOUND, &json!({"error": "no such route", "path": path})),
        };
        if reset {
            return truncate(resp);
        }
        resp
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Data> {
        // A poisoned lock only means a handler panicked mid-update; the demo keeps serving.
        self.data.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn message_json(&self, m: &Message) -> Value {
        json!({
            "id": m.id,
            "thread_id": m.thread_id,
            "text": m.text,
            "renders": [{"audio_file_id": m.audio_file_id, "url": self.media_url(&m.audio_file_id)}],
        })
    }

    /// Applies a mutation once per Idempotency-Key.
    fn mutate(&self, method: &Method, segs: &[&str], key: Option<String>, body: Value) -> (StatusCode, Value) {
        let mut d = self.lock();
        if let Some((status, reply)) = key.as_ref().and_then(|k| d.replies.get(k)) {
            return (StatusCode::from_u16(*status).unwrap_or(StatusCode::OK), reply.clone());
        }
        d.next_id += 1;
        let id = d.next_id;
        let (status, reply) = match (method, segs) {
            (&Method::POST, ["api", "v1", "threads", tid, "messages"]) => {
                let text = body.get("text").and_then(Value::as_str).unwrap_or("").to_string();
                let aid = body
                    .get("audio_file_id")
                    .and_then(Value::as_str)
                    .unwrap_or("a1")
                    .to_string();
                match d.messages.get_mut(*tid) {
                    None => (StatusCode::NOT_FOUND, json!({"error": "no such thread"})),
                    Some(list) => {
                        let m = Message {
                            id: format!("{tid}-m{id}"),
                            thread_id: tid.to_string(),
                            text,
                            audio_file_id: aid,
                        };
                        list.push(m.clone());
                        (StatusCode::CREATED, self.message_json(&m))
                    }
                }
            }
            (&Method::POST, ["api", "v1", "library", "items"]) => {
                match body.get("audio_file_id").and_then(Value::as_str) {
                    None => (StatusCode::BAD_REQUEST, json!({"error": "audio_file_id is required"})),
                    Some(aid) if d.library.iter().any(|i| i.audio_file_id == aid) => (
                        StatusCode::CONFLICT,
                        json!({"error": "already in the library", "audio_file_id": aid}),
                    ),
                    Some(aid) => {
                        let item = LibraryItem {
                            id: format!("l{id}"),
                            audio_file_id: aid.to_string(),
                            title: body
                                .get("title")
                                .and_then(Value::as_str)
                                .unwrap_or("Untitled")
                                .to_string(),
                        };
                        d.library.push(item.clone());
                        (
                            StatusCode::CREATED,
                            json!({"id": item.id, "audio_file_id": item.audio_file_id, "title": item.title}),
                        )
                    }
                }
            }
            (&Method::DELETE, ["api", "v1", "library", "items", item]) => {
                let before = d.library.len();
                d.library.retain(|i| i.id != *item && i.audio_file_id != *item);
                if d.library.len() < before {
                    (StatusCode::OK, json!({"deleted": item}))
                } else {
                    (StatusCode::NOT_FOUND, json!({"error": "no such library item"}))
                }
            }
            (&Method::POST, ["api", "v1", "audio"]) => {
                let aid = format!("a{id}");
                let rec =
                    json!({"id": aid, "format": "mp3", "bitrate": 320, "size_bytes": self.audio_size, "duration": 30});
                d.audio.insert(aid, rec.clone());
                (StatusCode::CREATED, rec)
            }
            (_, ["api", "v1", "echo"]) => (StatusCode::OK, json!({"method": method.as_str(), "body": body})),
            _ => (StatusCode::NOT_FOUND, json!({"error": "no such route"})),
        };
        let seq = d.mutations.len() as u64 + 1;
        d.mutations.push(Mutation {
            seq,
            method: method.to_string(),
            path: format!("/{}", segs.join("/")),
            idempotency_key: key.clone(),
            body,
            status: status.as_u16(),
        });
        if let Some(k) = key {
            d.replies.insert(k, (status.as_u16(), reply.clone()));
        }
        (status, reply)
    }

    /// The media port: `GET /renders/{id}.mp3` with Range, ETag and Last-Modified.
    pub(super) async fn handle_media(&self, req: Request<hyper::body::Incoming>) -> Response<ProxyBody> {
        let path = req.uri().path().to_string();
        self.count(&path);
        let (answered, reset) = self.fault_gate(None).await;
        if let Some(r) = answered {
            return r;
        }
        let id = path.strip_prefix("/renders/").map(|p| match p.split_once('/') {
            Some((v, rest)) if v.starts_with('v') && v[1..].parse::<u64>().is_ok() => rest,
            _ => p,
        });
        let Some(id) = id.and_then(|p| p.strip_suffix(".mp3")) else {
            return json_resp(StatusCode::NOT_FOUND, &json!({"error": "no such object"}));
        };
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return json_resp(StatusCode::METHOD_NOT_ALLOWED, &json!({"error": "read-only"}));
        }
        if !self.lock().audio.contains_key(id) {
            return json_resp(StatusCode::NOT_FOUND, &json!({"error": "no such object"}));
        }
        let size = self.audio_size;
        let etag = format!("\"{id}-{size}\"");
        if req.headers().get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) == Some(etag.as_str()) {
            let mut r = Response::new(body::empty());
            *r.status_mut() = StatusCode::NOT_MODIFIED;
            r.headers_mut().insert(
                header::ETAG,
                HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"x\"")),
            );
            return r;
        }
        let range = req
            .headers()
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_single_range(v, size));
        let (status, start, end) = match range {
            Some(Ok((s, e))) => (StatusCode::PARTIAL_CONTENT, s, e),
            Some(Err(())) => {
                let mut r = json_resp(StatusCode::RANGE_NOT_SATISFIABLE, &json!({"error": "range"}));
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    r.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                return r;
            }
            None => (StatusCode::OK, 0, size),
        };
        let len = end - start;
        let body = if req.method() == Method::HEAD {
            body::empty()
        } else {
            stream_body(
                slice_chunks(audio_bytes(id, size), start, end),
                reset.then_some(len / 2),
            )
        };
        let mut r = Response::new(body);
        *r.status_mut() = status;
        let h = r.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("audio/mpeg"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        h.insert(header::LAST_MODIFIED, HeaderValue::from_static(AUDIO_LAST_MODIFIED));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=3600"));
        if let Ok(v) = HeaderValue::from_str(&etag) {
            h.insert(header::ETAG, v);
        }
        if status == StatusCode::PARTIAL_CONTENT {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{size}", end - 1)) {
                h.insert(header::CONTENT_RANGE, v);
            }
        }
        r
    }

    /// The control port: faults, mutation log, request counts.
    pub(super) async fn handle_control(
        &self,
        req: Request<hyper::body::Incoming>,
        fault_tx: &watch::Sender<Fault>,
    ) -> Response<ProxyBody> {
        match (req.method().clone(), req.uri().path()) {
            (Method::GET, "/faults") => json_resp(StatusCode::OK, &json!(*fault_tx.borrow())),
            (Method::PUT, "/faults") | (Method::POST, "/faults") => {
                let bytes = match req.into_body().collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(e) => return json_resp(StatusCode::BAD_REQUEST, &json!({"error": e.to_string()})),
                };
                match serde_json::from_slice::<Fault>(&bytes) {
                    Ok(f) => {
                        fault_tx.send_replace(f.clone());
                        json_resp(StatusCode::OK, &json!(f))
                    }
                    Err(e) => json_resp(
                        StatusCode::BAD_REQUEST,
                        &json!({"error": format!("{e}; expected {{\"mode\": \"up|down|black_hole|slow|error|reset_mid_body|unauthorized\"}}")}),
                    ),
                }
            }
            (Method::GET, "/mutations") => json_resp(StatusCode::OK, &json!(self.mutations())),
            (Method::POST, "/media/move") => json_resp(StatusCode::OK, &json!({"generation": self.move_media()})),
            (Method::GET, "/library") => json_resp(StatusCode::OK, &json!(self.library_audio_ids())),
            (Method::GET, "/requests") => {
                let m = self.requests.lock().map(|m| m.clone()).unwrap_or_default();
                json_resp(StatusCode::OK, &json!(m))
            }
            _ => json_resp(
                StatusCode::NOT_FOUND,
                &json!({"error": "control routes: GET/PUT /faults, GET /mutations, /library, /requests, POST /media/move"}),
            ),
        }
    }
}
