//! The write path: a mutating request on a queueing route is forwarded when the upstream can take it,
//! otherwise stored durably in the outbox and acknowledged (202 or the route's `queued_status`).
//!
//! Promises: a 202 is sent only after the outbox's synced write; a write whose outcome is unknown is
//! queued only when the app gave its own `Idempotency-Key` (a replay is then safe); a write behind
//! queued writes of its ordering line is queued, never sent ahead of them.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{stream, StreamExt};
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use serde_json::json;

use super::error::ProxyError;
use super::{invalidate, Proxy};
use crate::body::{self, ProxyBody};
use crate::cache::Outcome;
use crate::queue::spool::SpoolWriter;
use crate::queue::OutboxRecord;
use crate::queue::QueueError;
use crate::routes::RouteMatch;
use crate::upstream::Upstream;

type Answer = Result<(Response<ProxyBody>, Outcome), ProxyError>;

impl Proxy {
    /// A mutating request on a queueing route. The body is read first (up to `max_body`) so that a
    /// failed attempt can still be queued.
    pub(super) async fn write<B>(
        self: &Arc<Self>,
        req: Request<B>,
        route: &RouteMatch<'_>,
        upstream: &Arc<Upstream>,
        peer: SocketAddr,
    ) -> Answer
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + Sync + 'static,
        B::Error: Into<body::BoxError>,
    {
        let max = route.policy.max_body;
        let online = upstream.connectivity().is_online();
        let declared: Option<u64> = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let too_big = |why: String| ProxyError::Unqueueable {
            upstream: upstream.name().to_string(),
            reason: why,
        };
        if let Some(n) = declared.filter(|n| *n > max) {
            if !online {
                return Err(too_big(format!(
                    "the upstream is offline and this {n}-byte body is larger than the route's max_body ({max} bytes), so it cannot be queued"
                )));
            }
            return match self
                .forwarder
                .forward(req.map(body::boxed), route, upstream, peer, None)
                .await
            {
                Ok(resp) => Ok((resp, Outcome::Bypass)),
                Err(e) if e.not_sent() => Err(too_big(format!(
                    "{e}; this {n}-byte body is larger than the route's max_body ({max} bytes), so it cannot be queued"
                ))),
                Err(e) => Err(e.into()),
            };
        }
        let (parts, body) = req.into_parts();
        let mut body = body::boxed(body);
        // Read up to max_body; a longer body without a declared length is streamed on, unqueueable. A body
        // longer than SPOOL_OVER goes to a spool file as it arrives (from its first byte when its length
        // says so), so memory holds one piece at most; so does a body that finds `max_buffered_bodies`
        // taken by others: it spills to disk rather than being refused (refused, 503, only without a
        // spool: with encryption at rest).
        let spool = self.outbox.spool();
        let can_spool = spool.is_some();
        let mut to_spool = can_spool && declared.is_some_and(|d| d > SPOOL_OVER as u64);
        let mut buf = bytes::BytesMut::new();
        let mut spooled: Option<SpoolWriter> = None;
        let mut total: u64 = 0;
        let mut overflow = None;
        // What the buffer holds counts against max_buffered_bodies until it is spooled or answered. A
        // declared length is taken whole before reading, so no body holds part of the room while it
        // waits for the rest.
        let mut held: Option<tokio::sync::OwnedSemaphorePermit> = None;
        let reserved = match declared.filter(|_| !to_spool) {
            Some(d) => match self.reserve(d) {
                Some(p) => {
                    held = Some(p);
                    buf.reserve(d as usize);
                    true
                }
                None if can_spool => {
                    to_spool = true;
                    false
                }
                None => return Err(ProxyError::Overloaded),
            },
            None => false,
        };
        let deadline = tokio::time::Instant::now() + self.body_read_timeout;
        let spool_failed = |e: std::io::Error| self.spool_failed(upstream, e);
        loop {
            // The whole-body deadline bounds how long memory is held; a spooled body holds none, so only
            // the pause limit (the IdleTimeout around the body) bounds it from then on.
            let next = match to_spool {
                false => tokio::time::timeout_at(deadline, body.frame()).await,
                true => Ok(body.frame().await),
            };
            let frame = match next {
                Err(_) => return Err(ProxyError::BodyTimeout),
                Ok(None) => break,
                Ok(Some(frame)) => frame,
            };
            let f = frame.map_err(|e| {
                if e.is::<body::BodyStalled>() {
                    ProxyError::BodyTimeout
                } else {
                    ProxyError::BodyUnreadable
                }
            })?;
            if let Ok(d) = f.into_data() {
                if total + d.len() as u64 > max {
                    overflow = Some(d);
                    break;
                }
                total += d.len() as u64;
                if !to_spool && !reserved {
                    match self.reserve(d.len() as u64) {
                        Some(p) => match &mut held {
                            Some(h) => h.merge(p),
                            None => held = Some(p),
                        },
                        None if can_spool => to_spool = true,
                        None => return Err(ProxyError::Overloaded),
                    }
                }
                to_spool |= can_spool && buf.len() + d.len() >= SPOOL_OVER;
                // A large piece going to disk is written as it came (no copy); small ones are gathered.
                let direct = to_spool && buf.is_empty() && d.len() >= SPOOL_PIECE;
                let d = match direct {
                    true => Some(d),
                    false => {
                        buf.extend_from_slice(&d);
                        None
                    }
                };
                if let (true, Some(spool)) = (to_spool && (direct || buf.len() >= SPOOL_PIECE), spool) {
                    let mut w = match spooled.take() {
                        Some(w) => w,
                        None => spool.begin().map_err(spool_failed)?,
                    };
                    let piece = d.unwrap_or_else(|| buf.split().freeze());
                    let w = self.on_disk(move || w.write(&piece).map(|_| w)).await;
                    spooled = Some(w.map_err(spool_failed)?);
                    held = None;
                }
            }
        }
        if let (true, None, Some(spool)) = (to_spool, &spooled, spool) {
            // Spilled to disk with less than one piece read: the file is made below.
            spooled = Some(spool.begin().map_err(spool_failed)?);
        }
        // A spooled body is made durable under its final name; from here on it is sent from the file.
        let file = match spooled {
            None => None,
            Some(w) => {
                let rest = buf.split().freeze();
                let done = self
                    .on_disk(move || {
                        let mut w = w;
                        w.write(&rest)?;
                        w.finish()
                    })
                    .await;
                let (name, _) = done.map_err(spool_failed)?;
                Some(name)
            }
        };
        let spool_path = |name: &str| spool.and_then(|s| s.path(name));
        let open_body = |bytes: Bytes| {
            let path = file.as_deref().and_then(spool_path);
            async move {
                match path {
                    Some(p) => body::file(&p).await,
                    None => Ok(body::full(bytes)),
                }
            }
        };
        let forget_file = || {
            if let (Some(spool), Some(name)) = (spool, file.as_deref()) {
                spool.remove(name);
            }
        };
        if let Some(next) = overflow {
            let head = open_body(buf.freeze()).await.map_err(spool_failed)?;
            let head = http_body_util::BodyStream::new(head);
            let more = stream::iter([Ok(Frame::data(next))]);
            let rest = http_body_util::BodyStream::new(body);
            let streamed = BodyExt::boxed(StreamBody::new(head.chain(more).chain(rest)));
            let req = Request::from_parts(parts, streamed);
            let sent = self.forwarder.forward(req, route, upstream, peer, None).await;
            forget_file();
            return match sent {
                Ok(resp) => Ok((resp, Outcome::Bypass)),
                Err(e) if e.not_sent() => Err(too_big(format!(
                    "{e}; this body is larger than the route's max_body ({max} bytes), so it cannot be queued"
                ))),
                Err(e) => Err(e.into()),
            };
        }
        let bytes = buf.freeze();
        let app_key = parts.headers.get("idempotency-key").cloned();
        let key = app_key
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .unwrap_or_else(new_idempotency_key);
        let mut headers = parts.headers.clone();
        if let Ok(v) = HeaderValue::from_str(&key) {
            headers.insert(HeaderName::from_static("idempotency-key"), v);
        }
        let partition = self.flow.partition(&parts.headers, route);
        let ordering_key = route.policy.ordering_key.as_ref().map(|t| route.expand(t));
        let record = || OutboxRecord {
            method: parts.method.to_string(),
            uri: parts
                .uri
                .path_and_query()
                .map(|pq| pq.as_str().to_string())
                .unwrap_or_else(|| "/".into()),
            headers: headers
                .iter()
                .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
                .collect(),
            body: bytes.clone(),
            body_file: file.clone(),
            supersede: route.policy.supersede,
            idempotency_key: key.clone(),
            partition: partition.clone(),
            route: route.name.to_string(),
            ordering_key: ordering_key.clone(),
            priority: route.policy.priority,
            invalidates: route.policy.invalidates.iter().map(|t| route.expand(t)).collect(),
            ..Default::default()
        };
        let queued =
            |why: String| self.enqueue(record(), why, route, bytes.clone(), upstream, &parts.method, &parts.uri);
        if !online {
            return queued("upstream offline".into()).await;
        }
        if self.outbox.has_pending_in_line(&partition, &ordering_key) {
            // Earlier writes of this line are still queued: going first would reorder them.
            return queued("behind earlier queued writes".into()).await;
        }
        let mut out = Request::new(open_body(bytes.clone()).await.map_err(spool_failed)?);
        *out.method_mut() = parts.method.clone();
        *out.uri_mut() = parts.uri.clone();
        *out.version_mut() = parts.version;
        *out.headers_mut() = headers.clone();
        let answer = match self.forwarder.forward(out, route, upstream, peer, None).await {
            Ok(resp) => {
                if resp.status().is_success() || resp.status().is_redirection() {
                    let cache = self.flow.cache();
                    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
                    let target = (&parts.uri, host);
                    invalidate::after_unsafe(&self.forwarder, cache, target, &partition, resp.headers(), upstream);
                    invalidate::related(&self.forwarder, cache, route, &partition);
                }
                Ok((resp, Outcome::Bypass))
            }
            Err(e) if e.not_sent() => return queued("upstream unreachable".into()).await,
            // The outcome is unknown: replaying is only safe when the app gave its own key.
            Err(e) if app_key.is_some() => {
                return queued(format!("outcome unknown ({e}); the app's key makes a replay safe")).await
            }
            Err(e) => Err(e.into()),
        };
        // Sent (or refused for good): the spooled copy is not needed.
        forget_file();
        answer
    }

    /// Runs blocking disk work of the write path off the runtime threads, at most [`DISK_TASKS`] at once
    /// (the others wait here, as tasks, not as threads).
    async fn on_disk<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    ) -> std::io::Result<T> {
        let _permit = self.disk.acquire().await.map_err(std::io::Error::other)?;
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?
    }

    /// Takes `n` bytes of `max_buffered_bodies`, when that much is free.
    fn reserve(&self, n: u64) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let n = u32::try_from(n).ok()?;
        self.buffered.clone().try_acquire_many_owned(n).ok()
    }

    /// A body that could not be spooled: the write is not queued, and the answer says why.
    fn spool_failed(&self, upstream: &Upstream, e: std::io::Error) -> ProxyError {
        let full = e.kind() == std::io::ErrorKind::StorageFull
            || e.raw_os_error().is_some_and(crate::platform::is_disk_full_code);
        tracing::error!(error = %e, "spooling a write body failed");
        ProxyError::Storage {
            upstream: upstream.name().to_string(),
            reason: format!(
                "the write was NOT queued: its body could not be written to Outpost's data dir ({}): {e}",
                self.outbox.data_dir().display()
            ),
            full,
        }
    }

    /// Stores a write in the outbox (off the runtime threads: the synced group commit blocks) and answers
    /// 202 (or the route's `queued_status`); a write that could not be stored is a 503.
    #[allow(clippy::too_many_arguments)]
    async fn enqueue(
        &self,
        item: OutboxRecord,
        why: String,
        route: &RouteMatch<'_>,
        bytes: bytes::Bytes,
        upstream: &Arc<Upstream>,
        method: &Method,
        uri: &Uri,
    ) -> Answer {
        let outbox = self.outbox.clone();
        let file = item.body_file.clone();
        let stored = match self.on_disk(move || Ok(outbox.enqueue(item))).await {
            Ok(r) => r,
            Err(e) => Err(QueueError::Batch(e.to_string())),
        };
        match stored {
            Ok((id, position)) => {
                tracing::info!(%id, position, why, %method, %uri, "write queued");
                Ok((queued_response(route, &id, position, &bytes), Outcome::Queued))
            }
            Err(e) => {
                tracing::error!(error = %e, "queueing a write failed");
                if let (Some(spool), Some(name)) = (self.outbox.spool(), file.as_deref()) {
                    spool.remove(name);
                }
                // The store noted why; a full disk is named as such, with where it is.
                let full = self.outbox.store_trouble().is_some_and(|t| t.full);
                let dir = self.outbox.data_dir().display();
                let reason = if full {
                    format!(
                        "the upstream is unreachable and the write was NOT queued: the disk holding \
                         Outpost's data dir ({dir}) is full; free space there and retry ({e})"
                    )
                } else {
                    format!(
                        "the upstream is unreachable and the write was NOT queued: Outpost's data dir \
                         ({dir}) did not take it; retry ({e})"
                    )
                };
                Err(ProxyError::Storage {
                    upstream: upstream.name().to_string(),
                    reason,
                    full,
                })
            }
        }
    }
}

/// Bodies longer than this go to a spool file as they arrive (a recorded take, an exported mix): a
/// RocksDB value of its own would be copied several times on its way to disk (the batch, the memtable),
/// and many at once would take hundreds of MiB.
const SPOOL_OVER: usize = 256 << 10;

/// Blocking disk tasks of the write path at once (see `Proxy::disk`). Queue commits group the writes
/// that wait for the commit lock, so this many writers still fill a batch.
pub(super) const DISK_TASKS: usize = 32;

/// A body going to a spool file is written in pieces of about this size (one piece in memory at most).
const SPOOL_PIECE: usize = 64 << 10;

/// A fresh random Idempotency-Key (128 bits, hex).
fn new_idempotency_key() -> String {
    let v: u128 = rand::random();
    format!("outpost-{v:032x}")
}

/// The answer to a queued write: 202 with the queue position, or the route's synthetic answer.
fn queued_response(route: &RouteMatch<'_>, id: &str, position: usize, body_bytes: &[u8]) -> Response<ProxyBody> {
    let mut resp = match route.policy.queued_status {
        Some(status) => {
            let template = route.policy.queued_body.as_deref().unwrap_or("{body}");
            let text = template
                .replace("{body}", &String::from_utf8_lossy(body_bytes))
                .replace("{id}", id);
            let mut r = Response::new(body::full(text));
            *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::ACCEPTED);
            r
        }
        None => {
            let v = json!({"queued": true, "id": id, "position": position});
            let mut r = Response::new(body::full(v.to_string()));
            *r.status_mut() = StatusCode::ACCEPTED;
            r
        }
    };
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Ok(v) = HeaderValue::from_str(id) {
        resp.headers_mut()
            .insert(HeaderName::from_static("x-outpost-queued"), v);
    }
    resp
}
