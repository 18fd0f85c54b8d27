//! `GET /api/events`: what happens to queued writes as server-sent events, for apps that opt in
//! (`event: queued|delivered|dead_letter|overridden`, `data:` the item as JSON). A comment line every
//! [`HEARTBEAT`] keeps idle connections from being cut by timeouts in between; a listener too slow to
//! keep up is told how many events it missed. The stream ends when Outpost shuts down.

use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http::header::{self, HeaderValue};
use http::Response;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use tokio::sync::broadcast::{self, error::RecvError};

use crate::body::{BoxError, ProxyBody};
use crate::queue::QueueEvent;
use crate::server::ShutdownSignal;

/// Interval of the keep-alive comment.
pub const HEARTBEAT: Duration = Duration::from_secs(15);

/// The SSE answer over a subscription.
pub fn stream(rx: broadcast::Receiver<QueueEvent>, shutdown: &ShutdownSignal) -> Response<ProxyBody> {
    let stop = Box::pin(shutdown.triggered());
    let ticks = tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
    let first = Some(Bytes::from_static(b": outpost queue events\n\n"));
    let s = stream::unfold(
        (rx, ticks, stop, first),
        |(mut rx, mut ticks, mut stop, first)| async move {
            if let Some(hello) = first {
                return Some((Ok::<_, BoxError>(Frame::data(hello)), (rx, ticks, stop, None)));
            }
            let text = tokio::select! {
                _ = &mut stop => return None,
                _ = ticks.tick() => ": keep-alive\n\n".to_string(),
                ev = rx.recv() => match ev {
                    Ok(ev) => format!(
                        "event: {}\ndata: {}\n\n",
                        ev.event,
                        serde_json::to_string(&ev).unwrap_or_else(|_| "{}".into())
                    ),
                    Err(RecvError::Lagged(n)) => format!("event: missed\ndata: {{\"missed\":{n}}}\n\n"),
                    Err(RecvError::Closed) => return None,
                },
            };
            Some((Ok(Frame::data(Bytes::from(text))), (rx, ticks, stop, None)))
        },
    );
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(s)));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
