//! Accept loops with graceful shutdown, shared by the proxy, the admin API and the demo backend.
//!
//! Promises: after the shutdown signal no new connection is accepted; connections in flight are told to
//! finish (HTTP/1 keep-alive closed after the current response, HTTP/2 GOAWAY) and are dropped when the
//! grace period ends.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::body::ProxyBody;
use crate::sendfile::{ConnIo, FileRegions};

/// One signal every task watches; triggering it starts shutdown everywhere.
#[derive(Clone)]
pub struct ShutdownSignal {
    tx: watch::Sender<bool>,
}

impl Default for ShutdownSignal {
    fn default() -> Self {
        Self::new()
    }
}

impl ShutdownSignal {
    /// A signal not yet triggered.
    pub fn new() -> ShutdownSignal {
        ShutdownSignal {
            tx: watch::Sender::new(false),
        }
    }

    /// Starts shutdown.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    /// Resolves once shutdown has been triggered.
    pub fn triggered(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.tx.subscribe();
        async move {
            // An error means the sender is gone, which also means shutting down.
            let _ = rx.wait_for(|v| *v).await;
        }
    }
}

/// What one accept loop bounds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Drain time at shutdown.
    pub grace: Duration,
    /// A request head must arrive within this time, also the first one on a new connection: a
    /// connection that sends nothing is closed after it.
    pub header_read_timeout: Duration,
    /// Connections open at once; the next one waits in the listen backlog until one closes.
    pub max_connections: usize,
}

/// Connections open at once when the caller sets no limit.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// A running accept loop.
pub struct Server {
    task: JoinHandle<()>,
}

impl Server {
    /// Serves `listener` with `handler` until `shutdown` triggers, then drains for up to `grace`.
    pub fn spawn<H, F>(
        name: &'static str,
        listener: TcpListener,
        shutdown: ShutdownSignal,
        grace: Duration,
        header_read_timeout: Duration,
        handler: H,
    ) -> Server
    where
        H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<ProxyBody>> + Send + 'static,
    {
        let limits = Limits {
            grace,
            header_read_timeout,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        };
        Self::spawn_with_regions(name, listener, shutdown, limits, None, handler)
    }

    /// Same, sending response bytes that lie in `regions` with `sendfile(2)` (see [`crate::sendfile`]).
    pub fn spawn_with_regions<H, F>(
        name: &'static str,
        listener: TcpListener,
        shutdown: ShutdownSignal,
        limits: Limits,
        regions: Option<Arc<FileRegions>>,
        handler: H,
    ) -> Server
    where
        H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<ProxyBody>> + Send + 'static,
    {
        let task = tokio::spawn(async move {
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                // Slowloris: a client must finish its request head within this time.
                .header_read_timeout(limits.header_read_timeout)
                .max_buf_size(256 * 1024);
            let graceful = GracefulShutdown::new();
            let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
            let stop = shutdown.triggered();
            tokio::pin!(stop);
            loop {
                let slot = tokio::select! {
                    _ = &mut stop => break,
                    s = slots.clone().acquire_owned() => match s {
                        Ok(s) => s,
                        Err(_) => break,
                    },
                };
                let (stream, peer) = tokio::select! {
                    _ = &mut stop => break,
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // EMFILE and friends: back off instead of spinning.
                            tracing::warn!(server = name, error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let _ = stream.set_nodelay(true);
                let handler = handler.clone();
                let svc = service_fn(move |req| {
                    // Boxed: hyper keeps the request's future in its connection and moves it there; a
                    // pointer is cheaper to move than a state machine of a few KiB (docs/benchmarks.md).
                    let fut = Box::pin(handler(req, peer));
                    async move { Ok::<_, std::convert::Infallible>(fut.await) }
                });
                let (builder, watcher, regions) = (builder.clone(), graceful.watcher(), regions.clone());
                let first_byte = limits.header_read_timeout;
                tokio::spawn(async move {
                    let _slot = slot;
                    // hyper's header timer starts with a request's first byte: a connection that never
                    // sends one would hold its slot for ever.
                    let mut one = [0u8; 1];
                    if !matches!(
                        tokio::time::timeout(first_byte, stream.peek(&mut one)).await,
                        Ok(Ok(1..))
                    ) {
                        tracing::debug!(server = name, %peer, "closed: nothing sent within header_read_timeout");
                        return;
                    }
                    let io = TokioIo::new(ConnIo::new(stream, regions));
                    let conn = builder.serve_connection_with_upgrades(io, svc).into_owned();
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(server = name, %peer, error = %e, "connection ended with an error");
                    }
                });
            }
            drop(listener);
            let grace = limits.grace;
            tokio::select! {
                _ = graceful.shutdown() => {}
                _ = tokio::time::sleep(grace) => {
                    tracing::warn!(server = name, ?grace, "grace period over; dropping connections still open");
                }
            }
        });
        Server { task }
    }

    /// Waits until the loop has drained.
    pub async fn finished(self) {
        let _ = self.task.await;
    }
}
