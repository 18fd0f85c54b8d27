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
        Self::spawn_with_regions(name, listener, shutdown, grace, header_read_timeout, None, handler)
    }

    /// Same, sending response bytes that lie in `regions` with `sendfile(2)` (see [`crate::sendfile`]).
    pub fn spawn_with_regions<H, F>(
        name: &'static str,
        listener: TcpListener,
        shutdown: ShutdownSignal,
        grace: Duration,
        header_read_timeout: Duration,
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
                .header_read_timeout(header_read_timeout)
                .max_buf_size(256 * 1024);
            let graceful = GracefulShutdown::new();
            let stop = shutdown.triggered();
            tokio::pin!(stop);
            loop {
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
                    let fut = handler(req, peer);
                    async move { Ok::<_, std::convert::Infallible>(fut.await) }
                });
                let io = TokioIo::new(ConnIo::new(stream, regions.clone()));
                let conn = builder.serve_connection_with_upgrades(io, svc).into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(server = name, %peer, error = %e, "connection ended with an error");
                    }
                });
            }
            drop(listener);
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
