//! The demo backend: an API shaped like the product's (threads, messages with audio renders, heavy
//! snapshots, the user's library, audio records) on one port, audio files on a separate "media host"
//! port, and a control port with fault knobs. Used by `outpost demo`, `outpost demo-backend` and the tests.
//!
//! Promises: everything is deterministic except the presigned-style query on media URLs, which changes on
//! every response as S3's does; every applied mutation is recorded with its `Idempotency-Key`, and a key
//! seen before is answered from the record without applying the change again (so tests can assert
//! exactly-once effects); faults apply to the API and media ports, never to the control port.

mod api;
mod content;
pub mod story;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::body::ProxyBody;
use crate::server::{Server, ShutdownSignal};

pub use api::{DemoState, Mutation};
pub use content::{audio_bytes, make_token};

/// A fault the backend injects on its API and media ports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Fault {
    /// Normal service.
    #[default]
    Up,
    /// Refuse connections (listeners closed, open connections dropped).
    Down,
    /// Accept connections, never answer.
    BlackHole,
    /// Delay every response head by `delay_ms`.
    Slow {
        /// Delay in milliseconds.
        delay_ms: u64,
    },
    /// Answer every request with `status` (a 5xx storm).
    Error {
        /// Status code to answer with.
        status: u16,
    },
    /// Send the head and half of every body, then reset the connection.
    ResetMidBody,
    /// Answer 401 to any bearer token but the one `POST /api/v1/auth/refresh` hands out next.
    Unauthorized,
}

/// Where the demo backend listens.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// API port.
    pub api: SocketAddr,
    /// Media ("S3") port.
    pub media: SocketAddr,
    /// Control port.
    pub control: SocketAddr,
    /// Size of every audio file in bytes.
    pub audio_size: usize,
    /// Messages (each with a snapshot) in each of the three threads.
    pub messages_per_thread: usize,
}

impl Default for DemoOptions {
    fn default() -> Self {
        let any: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 0));
        DemoOptions {
            api: any,
            media: any,
            control: any,
            audio_size: 1 << 20,
            messages_per_thread: 4,
        }
    }
}

/// A running demo backend.
pub struct DemoBackend {
    api_addr: SocketAddr,
    media_addr: SocketAddr,
    control_addr: SocketAddr,
    state: Arc<DemoState>,
    fault_tx: watch::Sender<Fault>,
    shutdown: ShutdownSignal,
    tasks: Vec<JoinHandle<()>>,
    control: Server,
}

impl DemoBackend {
    /// Starts on the given addresses (port 0 = pick a free one).
    pub async fn start(opts: DemoOptions) -> std::io::Result<DemoBackend> {
        let api_l = TcpListener::bind(opts.api).await?;
        let media_l = TcpListener::bind(opts.media).await?;
        let control_l = TcpListener::bind(opts.control).await?;
        let api_addr = api_l.local_addr()?;
        let media_addr = media_l.local_addr()?;
        let control_addr = control_l.local_addr()?;
        let (fault_tx, fault_rx) = watch::channel(Fault::Up);
        let state = Arc::new(DemoState::new(
            format!("http://{media_addr}"),
            opts.audio_size,
            opts.messages_per_thread,
            fault_rx.clone(),
        ));
        let shutdown = ShutdownSignal::new();
        let mut tasks = Vec::new();
        for (listener, media) in [(api_l, false), (media_l, true)] {
            let state = state.clone();
            let rx = fault_rx.clone();
            let stop = shutdown.clone();
            tasks.push(tokio::spawn(faulty_accept_loop(listener, rx, stop, move |req| {
                let state = state.clone();
                async move {
                    if media {
                        state.handle_media(req).await
                    } else {
                        state.handle_api(req).await
                    }
                }
            })));
        }
        let control_state = state.clone();
        let control_tx = fault_tx.clone();
        let control = Server::spawn(
            "demo-control",
            control_l,
            shutdown.clone(),
            Duration::from_secs(1),
            Duration::from_secs(30),
            move |req, _| {
                let state = control_state.clone();
                let tx = control_tx.clone();
                async move { state.handle_control(req, &tx).await }
            },
        );
        Ok(DemoBackend {
            api_addr,
            media_addr,
            control_addr,
            state,
            fault_tx,
            shutdown,
            tasks,
            control,
        })
    }

    /// `http://127.0.0.1:PORT` of the API.
    pub fn api_url(&self) -> String {
        format!("http://{}", self.api_addr)
    }

    /// `http://127.0.0.1:PORT` of the media host.
    pub fn media_url(&self) -> String {
        format!("http://{}", self.media_addr)
    }

    /// `http://127.0.0.1:PORT` of the control port.
    pub fn control_url(&self) -> String {
        format!("http://{}", self.control_addr)
    }

    /// API address.
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// Sets the current fault.
    pub fn set_fault(&self, fault: Fault) {
        self.fault_tx.send_replace(fault);
    }

    /// The backend's state (mutations, request counts, library...).
    pub fn state(&self) -> &Arc<DemoState> {
        &self.state
    }

    /// Stops all listeners.
    pub async fn stop(self) {
        self.shutdown.trigger();
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
        self.control.finished().await;
    }
}

/// Serves `listener` but obeys the fault knob: closes the listener while `Down` (and rebinds the same
/// address when back up), holds connections unanswered while `BlackHole`.
async fn faulty_accept_loop<H, F>(
    listener: TcpListener,
    mut fault: watch::Receiver<Fault>,
    stop: ShutdownSignal,
    handler: H,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "demo listener has no address");
            return;
        }
    };
    let mut listener = Some(listener);
    let stopped = stop.triggered();
    tokio::pin!(stopped);
    let conns: Arc<Mutex<HashMap<u64, JoinHandle<()>>>> = Arc::default();
    let mut next_id = 0u64;
    loop {
        let current = fault.borrow_and_update().clone();
        if current == Fault::Down {
            listener = None;
            for (_, c) in conns.lock().map(|mut m| std::mem::take(&mut *m)).unwrap_or_default() {
                c.abort();
            }
        } else if listener.is_none() {
            match TcpListener::bind(addr).await {
                Ok(l) => listener = Some(l),
                Err(e) => {
                    tracing::warn!(%addr, error = %e, "demo backend cannot rebind; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        }
        let accepted = async {
            match &listener {
                Some(l) => l.accept().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut stopped => break,
            changed = fault.changed() => {
                if changed.is_err() { break; }
            }
            res = accepted => {
                let Ok((stream, _)) = res else { continue };
                let handler = handler.clone();
                let mut conn_fault = fault.clone();
                let id = next_id;
                next_id += 1;
                let registry = conns.clone();
                let task = tokio::spawn(async move {
                    // A black hole keeps the socket open and silent until the fault changes.
                    if *conn_fault.borrow() == Fault::BlackHole {
                        let _keep = stream;
                        let _ = conn_fault.wait_for(|f| *f != Fault::BlackHole).await;
                        return;
                    }
                    let svc = service_fn(move |req| {
                        let fut = handler(req);
                        async move { Ok::<_, std::convert::Infallible>(fut.await) }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                    if let Ok(mut m) = registry.lock() {
                        m.remove(&id);
                    }
                });
                if let Ok(mut m) = conns.lock() {
                    m.retain(|_, t| !t.is_finished());
                    m.insert(id, task);
                }
            }
        }
    }
    for (_, c) in conns.lock().map(|mut m| std::mem::take(&mut *m)).unwrap_or_default() {
        c.abort();
    }
}
