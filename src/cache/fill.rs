//! Filling the store from an upstream answer while it streams to the client (tee).

use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream;
use http::{header, HeaderMap, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use tokio::sync::mpsc;

use super::{key, policy, Cache, CacheError, FillGuard, FillInfo, FillState};
use crate::body::{BoxError, ProxyBody};
use crate::clock::to_ms;
use crate::encoding::{self, ContentCoding};
use crate::store::{Commit, Entry, FillSink, StoreError};

impl Cache {
    /// Streams `resp` to the client while writing its body to the store; commits the entry when the
    /// body ended whole. The fill continues if the client goes away, until shutdown. `guard` is
    /// released when done.
    pub fn tee(
        self: &Arc<Self>,
        info: FillInfo,
        resp: Response<ProxyBody>,
        guard: Option<FillGuard>,
    ) -> Response<ProxyBody> {
        let (mut parts, mut upstream_body) = resp.into_parts();
        let announced: Option<u64> = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let resp_headers = parts.headers.clone();
        let status = parts.status;
        let (tx, rx) = mpsc::channel::<Result<Bytes, BoxError>>(16);
        let mut writer = if !self.budget.accepting() {
            tracing::debug!(url = %info.url, "cache full (over budget with only pins, or auto_evict off); not stored");
            None
        } else if self.storage.troubled() {
            tracing::debug!(url = %info.url, "the data dir does not take writes (disk full?); not stored");
            None
        } else {
            match self.storage.begin_fill() {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start a blob; response not stored");
                    self.storage.note_write_error(&e);
                    None
                }
            }
        };
        if writer.is_some() {
            // Cache-Status says `stored` (RFC 9211 §2.7).
            parts.extensions.insert(super::Storing);
        }
        let cache = self.clone();
        tokio::spawn(async move {
            let mut client = Some(tx);
            // With a Content-Length, the last chunk is held back until the commit: a client that has read
            // the whole body (hyper counts Content-Length) can rely on it being stored, e.g. when going
            // offline right after. Without one (chunked, e.g. server-sent events) every chunk goes out as
            // it arrives: the client sees the end only when this task closes the channel, after the
            // commit, so holding a chunk back would only delay a stream by one event.
            let hold_last = announced.is_some();
            // A coded body (gzip, br, ...) is stored as it came, but only once it decodes without
            // error or bomb-like inflation (upstream garbage is never stored).
            let mut check = match encoding::content_coding(&resp_headers) {
                ContentCoding::Known(c) if writer.is_some() => Some(encoding::Check::spawn(c)),
                _ => None,
            };
            let mut held: Option<Bytes> = None;
            let mut whole = true;
            let mut shutdown = std::pin::pin!(cache.shutdown.triggered());
            loop {
                let frame = if client.is_none() {
                    // Nobody reads any more: the fill goes on only until shutdown.
                    tokio::select! {
                        f = upstream_body.frame() => f,
                        _ = &mut shutdown => {
                            whole = false;
                            break;
                        }
                    }
                } else {
                    upstream_body.frame().await
                };
                let Some(frame) = frame else { break };
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
                if let Some(c) = &mut check {
                    if !c.feed(data.clone()).await {
                        let why = check.take().map(encoding::Check::finish);
                        let why = match why {
                            Some(f) => f.await.err().unwrap_or_default(),
                            None => String::new(),
                        };
                        tracing::warn!(url = %info.url, error = %why, "coded upstream body refused; not stored");
                        if let Some(tx) = &client {
                            let _ = tx.send(Err(why.into())).await;
                        }
                        client = None;
                        whole = false;
                        break;
                    }
                }
                if let Some(w) = &mut writer {
                    if let Err(e) = w.write(&data) {
                        tracing::warn!(error = %e, "blob write failed; response not stored");
                        cache.storage.note_write_error(&StoreError::Blob(e));
                        writer = None;
                    }
                }
                let previous = if hold_last { held.replace(data) } else { Some(data) };
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
            if let (Some(c), true) = (check, whole) {
                if let Err(why) = c.finish().await {
                    tracing::warn!(url = %info.url, error = %why, "coded upstream body refused; not stored");
                    if let Some(tx) = &client {
                        let _ = tx.send(Err(why.into())).await;
                    }
                    held = None;
                    client = None;
                    whole = false;
                }
            }
            let state = match writer {
                Some(w) if whole && announced.is_none_or(|n| n == w.len()) => {
                    cache.commit_in_background(info, status, resp_headers, w).await
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

    async fn commit_in_background(
        self: &Arc<Self>,
        info: FillInfo,
        status: StatusCode,
        resp_headers: HeaderMap,
        w: Box<dyn FillSink>,
    ) -> FillState {
        let cache = self.clone();
        let committed = tokio::task::spawn_blocking(move || {
            let retain = info.retain.clone();
            let done = commit(&cache, info, status, &resp_headers, w)?;
            if let Some((group, keep, drop)) = retain {
                cache.budget.retain(&group, keep, drop)?;
            }
            Ok::<_, CacheError>(done)
        })
        .await;
        match committed {
            Ok(Ok((key, new_bytes))) => {
                self.budget.committed(&key, new_bytes);
                FillState::Done
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "storing a response failed");
                match &e {
                    CacheError::Store(se) => self.storage.note_write_error(se),
                    other => self
                        .storage
                        .note_write_error(&StoreError::Blob(std::io::Error::other(other.to_string()))),
                }
                FillState::Failed
            }
            Err(e) => {
                tracing::warn!(error = %e, "storing a response panicked");
                FillState::Failed
            }
        }
    }
}

/// Makes the body durable, then commits the entry (blocking).
fn commit(
    cache: &Cache,
    info: FillInfo,
    status: StatusCode,
    resp_headers: &HeaderMap,
    w: Box<dyn FillSink>,
) -> Result<(Vec<u8>, u64), CacheError> {
    let fields = policy::vary_fields(resp_headers);
    let (key, vary) = if fields.is_empty() {
        (info.primary.clone(), Vec::new())
    } else {
        let values = policy::vary_values(&fields, &info.req_headers);
        (key::variant_key(&info.primary, &values), values)
    };
    let placeholder = crate::store::BlobId {
        hash: String::new(),
        size: 0,
    };
    let mut entry = Entry::stored(
        status.as_u16(),
        &storable_headers(resp_headers),
        &placeholder,
        to_ms(info.response_time),
        (info.kind, info.route, info.url),
    );
    entry.request_time_ms = to_ms(info.request_time);
    entry.vary = vary;
    entry.group = info.retain.map(|(g, _, _)| g);
    let new_bytes = cache.storage.commit_fill(
        w,
        Commit {
            primary: &info.primary,
            key: &key,
            vary_fields: &fields,
            entry,
        },
    )?;
    Ok((key, new_bytes))
}

/// Headers kept with a stored response: connection-specific and per-hop fields are not (RFC 9111 §3.1),
/// nor `Set-Cookie` (a session cookie set for one request is never replayed to another; the request
/// that fetched the answer gets it).
fn storable_headers(h: &HeaderMap) -> HeaderMap {
    let mut out = h.clone();
    crate::headers::strip_hop_by_hop(&mut out);
    for name in [
        "x-outpost-cache",
        "x-outpost-pending",
        "cache-status",
        "x-outpost-dead-letters",
        "set-cookie",
    ] {
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
