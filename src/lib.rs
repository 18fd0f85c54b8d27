//! Outpost: an offline-first caching HTTP reverse proxy that runs beside an unmodified app.
//!
//! # Layout
//! - [`config`]: TOML + flags → a checked [`config::Config`]; every error names file, line, key, reason.
//! - [`routes`]: the route table (path patterns with `{params}` → upstream + policy), first match wins.
//! - [`proxy`]: the request path: classify, route, forward with streamed bodies, answer errors.
//! - [`rewrite`]: media URLs inside JSON answers turned into Outpost URLs (audio flows through the cache).
//! - [`upstream`]: pooled rustls clients per named upstream, timeouts, connectivity state.
//! - [`cache`]: RFC 9111 rules, cache keys and user partitions, serving from and filling the store.
//! - [`sync`]: the durable outbox of offline writes and the replay worker (order, backoff, conflicts).
//! - [`evict`]: the size budget: LRU eviction in the background, pins, usage.
//! - [`import`]: `outpost import`, moving an existing audio cache into the store.
//! - [`store`]: the data directory: RocksDB column families and content-addressed blob files, optionally
//!   encrypted at rest.
//! - [`sendfile`]: stored bodies sent from the blob file to the socket with `sendfile(2)` (no copy).
//! - [`admin`]: the admin API on its own loopback port.
//! - [`server`]: accept loops and graceful shutdown shared by the proxy, the admin API and the demo backend.
//! - [`demo`]: the demo backend shaped like the product's API, with fault knobs; used by `demo` and tests.
//! - [`body`]: the streamed body type everything passes around.
//!
//! [`Outpost::start`] is the embeddable entry point: no globals, everything hangs off the returned handle.

// One audited exception: read-only maps of write-once blob files (`store::blob`).
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod body;
pub mod cache;
pub mod config;
pub mod demo;
pub mod evict;
pub mod import;
pub mod proxy;
pub mod rewrite;
pub mod routes;
pub mod sendfile;
pub mod server;
pub mod store;
pub mod sync;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::admin::metrics::Metrics;
use crate::cache::policy::CacheRole;
use crate::cache::Cache;
use crate::config::Config;
use crate::evict::Evictor;
use crate::proxy::Proxy;
use crate::server::{Server, ShutdownSignal};
use crate::store::{Store, StoreError};
use crate::sync::{Outbox, QueueError, ReplayWorker};
use crate::upstream::{TlsSetupError, Upstreams};

/// Why Outpost could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listen address could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// `proxy` or `admin`.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The data directory could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An upstream's TLS setup failed.
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    /// The outbox could not be read.
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// A running Outpost instance.
pub struct Outpost {
    addr: SocketAddr,
    admin_addr: SocketAddr,
    shutdown: ShutdownSignal,
    proxy_server: Server,
    admin_server: Server,
    store: Arc<Store>,
    upstreams: Arc<Upstreams>,
    outbox: Arc<Outbox>,
    replay: tokio::task::JoinHandle<()>,
    evict_task: tokio::task::JoinHandle<()>,
    grace: std::time::Duration,
}

impl Outpost {
    /// Opens the data directory, binds both listeners and starts serving.
    pub async fn start(config: Config) -> Result<Outpost, StartError> {
        let store = Arc::new(Store::open_with_key(
            &config.data_dir,
            config.encryption.as_ref().map(|k| k.bytes()),
        )?);
        let upstreams = Arc::new(Upstreams::new(&config.upstreams)?);
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.listen,
                what: "proxy",
                source,
            })?;
        let admin_listener = TcpListener::bind(config.admin_listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.admin_listen,
                what: "admin",
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen,
            what: "proxy",
            source,
        })?;
        let admin_addr = admin_listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.admin_listen,
            what: "admin",
            source,
        })?;

        let shutdown = ShutdownSignal::new();
        let role = if config.cache.shared {
            CacheRole::Shared
        } else {
            CacheRole::Private
        };
        // Settings changed at run time (admin API) override the file until reset.
        let max_size = store
            .setting("max_size")?
            .and_then(|v| v.parse().ok())
            .unwrap_or(config.max_size);
        let auto_evict = store
            .setting("auto_evict")?
            .map(|v| v == "true")
            .unwrap_or(config.cache.auto_evict);
        let evictor = Arc::new(Evictor::open(
            store.clone(),
            max_size,
            auto_evict,
            config.cache.max_unused,
        )?);
        let evict_task = tokio::spawn(evictor.clone().run(shutdown.triggered()));
        evictor.wake();
        let metrics = Arc::new(Metrics::new());
        let cache = Arc::new(Cache::new(
            store.clone(),
            evictor.clone(),
            role,
            config.cache.verify_on_read,
        ));
        for upstream in upstreams.iter() {
            tokio::spawn(upstream.clone().probe_loop(shutdown.triggered()));
        }
        let outbox = Arc::new(Outbox::open(store.clone(), config.queue)?);
        let proxy = Arc::new(Proxy::new(
            config.route_table(),
            upstreams.clone(),
            cache,
            outbox.clone(),
            metrics.clone(),
        ));
        let replay = tokio::spawn(ReplayWorker::new(outbox.clone(), proxy.clone()).run(shutdown.triggered()));
        // Sealed blobs are decrypted in memory, so only plain ones can go from file to socket.
        let regions = (!store.encrypted()).then(|| store.blobs().regions());
        let proxy_server = Server::spawn_with_regions(
            "proxy",
            listener,
            shutdown.clone(),
            config.shutdown_grace,
            config.header_read_timeout,
            regions,
            move |req, peer| {
                let proxy = proxy.clone();
                async move { proxy.handle(req, peer).await }
            },
        );
        let token = admin::load_or_create_token(&config.data_dir).map_err(|e| {
            StartError::Store(StoreError::DataDir {
                dir: config.data_dir.clone(),
                reason: format!("cannot create the admin token: {e}"),
            })
        })?;
        let admin = Arc::new(admin::Admin::new(
            upstreams.clone(),
            Arc::new(config.clone()),
            outbox.clone(),
            store.clone(),
            evictor.clone(),
            metrics,
            token,
        ));
        let admin_server = Server::spawn(
            "admin",
            admin_listener,
            shutdown.clone(),
            config.shutdown_grace,
            config.header_read_timeout,
            move |req, _peer| {
                let admin = admin.clone();
                async move { admin.handle(req).await }
            },
        );
        tracing::info!(%addr, %admin_addr, data_dir = %config.data_dir.display(), "outpost started");
        Ok(Outpost {
            addr,
            admin_addr,
            shutdown,
            proxy_server,
            admin_server,
            store,
            upstreams,
            outbox,
            replay,
            evict_task,
            grace: config.shutdown_grace,
        })
    }

    /// Where apps connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the admin API listens.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The upstream clients and their connectivity.
    pub fn upstreams(&self) -> &Arc<Upstreams> {
        &self.upstreams
    }

    /// The outbox of queued writes.
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// The store (for fault injection and inspection; a reference, so shutdown is never held up).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Stops accepting, lets in-flight requests finish up to the grace period, then flushes the store.
    pub async fn shutdown(self) {
        self.shutdown.trigger();
        self.proxy_server.finished().await;
        self.admin_server.finished().await;
        let _ = self.replay.await;
        let _ = self.evict_task.await;
        let Outpost {
            store, outbox, grace, ..
        } = self;
        drop(outbox);
        // Background fills and revalidations still hold the store; let them finish (they are bounded by
        // the upstream timeouts) so the data dir is released when this returns.
        let deadline = tokio::time::Instant::now() + grace;
        while Arc::strong_count(&store) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        if Arc::strong_count(&store) > 1 {
            tracing::warn!("background work still holds the store after the grace period");
        }
        if let Err(e) = store.flush() {
            tracing::error!(error = %e, "flushing the store at shutdown failed");
        }
        tracing::info!("outpost stopped");
    }
}
