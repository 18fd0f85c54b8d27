//! The one body type that flows through Outpost, and small constructors for it.
//!
//! Request and response bodies are streamed as `BoxBody<Bytes, BoxError>`: whatever produced them (a
//! client connection, an upstream response, a cached blob, a queued request) they look alike to the
//! code that moves them, and nothing here collects a body into memory.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full};
use tokio::time::{Instant, Sleep};

/// Errors carried inside bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The streamed body type used everywhere.
pub type ProxyBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// A body with no bytes.
pub fn empty() -> ProxyBody {
    Empty::<Bytes>::new().map_err(|never| match never {}).boxed()
}

/// A body holding `bytes` (for small, generated answers only).
pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

/// A small JSON answer: `{"error": ..., "upstream": ...}` (the shape every generated error has).
pub fn json_error(status: http::StatusCode, error: &str, upstream: Option<&str>) -> http::Response<ProxyBody> {
    let mut v = serde_json::json!({ "error": error });
    if let Some(u) = upstream {
        v["upstream"] = serde_json::json!(u);
    }
    let mut resp = http::Response::new(full(v.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// Any `hyper::body::Incoming`-like body, boxed.
pub fn boxed<B>(body: B) -> ProxyBody
where
    B: Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed()
}

/// A file's bytes from its start, read 256 KiB at a time, with its length as the exact size (a spooled
/// upload sent from disk).
pub struct FileBody {
    inner: tokio_util::io::ReaderStream<tokio::fs::File>,
    len: u64,
    sent: u64,
}

/// The body of the file at `path`.
pub async fn file(path: &std::path::Path) -> std::io::Result<ProxyBody> {
    let f = tokio::fs::File::open(path).await?;
    let len = f.metadata().await?.len();
    Ok(FileBody {
        inner: tokio_util::io::ReaderStream::with_capacity(f, 256 << 10),
        len,
        sent: 0,
    }
    .boxed())
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        use futures_util::Stream;
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(Some(Ok(b))) => {
                self.sent += b.len() as u64;
                Poll::Ready(Some(Ok(Frame::data(b))))
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len.saturating_sub(self.sent))
    }
}

/// The error an [`IdleTimeout`] body yields when its inner body stalls.
#[derive(Debug, thiserror::Error)]
#[error("body stalled: no data for {0:?}")]
pub struct BodyStalled(pub Duration);

/// Fails a body that produces no frame for `idle` (a stalled upstream must not hold a client forever).
/// The timer is armed the first time the body has nothing ready, so a body read at once, or never,
/// costs no timer.
pub struct IdleTimeout {
    inner: ProxyBody,
    idle: Duration,
    timer: Option<Pin<Box<Sleep>>>,
}

impl IdleTimeout {
    /// Wraps `inner`.
    pub fn new(inner: ProxyBody, idle: Duration) -> IdleTimeout {
        IdleTimeout {
            inner,
            idle,
            timer: None,
        }
    }
}

impl Body for IdleTimeout {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some(timer) = &mut this.timer {
                    timer.as_mut().reset(Instant::now() + this.idle);
                }
                Poll::Ready(frame)
            }
            Poll::Pending => {
                let idle = this.idle;
                let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyStalled(idle))))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
