//! Outpost: an offline-first caching HTTP reverse proxy that runs beside an unmodified app.
//!
//! # Layout
//! Modules from the top of the request path down; each imports only modules listed after it (no
//! module imports one that imports it back).
//! - [`proxy`]: the pipeline (check → route → cache flow | write path | forward → media hooks → log),
//!   the [`proxy::Forwarder`], the cache flow that carries out [`cache::Plan`]s, the replay adapter, and
//!   the one error type turned into answers in one place.
//! - [`admin`]: the admin API on its own loopback port, metrics, the dashboard.
//! - [`import`]: `outpost import`, moving an existing audio cache into the store.
//! - [`demo`]: the demo backend shaped like the product's API, with fault knobs; used by `demo` and tests.
//! - [`queue`]: the durable outbox of offline writes and the replay worker (order, backoff, conflicts),
//!   which delivers through a [`queue::Delivery`] it is handed.
//! - [`upstream`]: pooled rustls clients per named upstream, timeouts, connectivity state.
//! - [`config`]: TOML + flags → a checked [`config::Config`]; every error names file, line, key, reason.
//! - [`cache`]: RFC 9111 rules, keys and user partitions, the pure [`cache::decide`] → [`cache::Plan`],
//!   serving stored responses and filling through the [`store::Storage`] seam.
//! - [`routes`]: the route table (path patterns with `{params}` → upstream + policy) and route types.
//! - [`media`]: JSON rewriting, JSON paths, pins and aliases (response hooks).
//! - [`evict`]: the size budget: LRU eviction in the background, pins, usage.
//! - [`store`]: the data directory: RocksDB column families and content-addressed blob files, optionally
//!   encrypted at rest; the storage seam and its in-memory implementation.
//! - [`server`]: accept loops and graceful shutdown shared by the proxy, the admin API and the demo backend.
//! - [`sendfile`]: stored bodies sent from the blob file to the socket with `sendfile(2)` (no copy).
//! - [`platform`]: everything that differs between Linux, macOS and Windows, each with a portable fallback.
//! - [`logbuf`]: the log writer `outpost serve` logs through: lines appended, written out in batches.
//! - [`body`], [`headers`], [`clock`], [`units`]: the streamed body type and small JSON answers,
//!   hop-by-hop rules, the one wall clock (pausable in tests), sizes and durations.
//!
//! [`Outpost::start`] is the embeddable entry point: no globals, everything hangs off the returned handle.

// One audited exception: read-only maps of write-once blob files (`store::blob`).
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod body;
pub mod cache;
pub mod clock;
pub mod config;
pub mod demo;
pub mod encoding;
pub mod evict;
pub mod headers;
pub mod import;
pub mod logbuf;
pub mod media;
pub mod platform;
pub mod proxy;
pub mod queue;
pub mod routes;
pub mod sendfile;
pub mod server;
pub mod store;
pub mod units;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;

use crate::admin::metrics::Metrics;
use crate::cache::policy::CacheRole;
use crate::cache::Cache;
use crate::config::Config;
use crate::evict::Evictor;
use crate::proxy::{Flow, Forwarder, Proxy, Replayer};
use crate::queue::{Outbox, QueueError, ReplayWorker};
use crate::server::{Server, ShutdownSignal};
use crate::store::{DiskStorage, Store, StoreError};
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
    live: Arc<Live>,
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
        evictor.set_kind_limits(config.kind_limits.clone());
        store.set_memory(usize::try_from(config.cache.memory).unwrap_or(usize::MAX));
        let evict_task = tokio::spawn(evictor.clone().run(shutdown.triggered()));
        // A store that stopped taking writes (disk full) is probed until it takes them again.
        tokio::spawn(store::watch_health(store.clone(), shutdown.triggered()));
        evictor.wake();
        let metrics = Arc::new(Metrics::new());
        // The counts behind the hit rates survive restarts: restored here, saved every 30 s and at stop.
        if let Some(saved) = store.setting(HIT_COUNTS)? {
            metrics.restore_outcomes(&saved);
        }
        tokio::spawn(keep_hit_counts(store.clone(), metrics.clone(), shutdown.triggered()));
        let outbox = Arc::new(Outbox::open(store.clone(), config.queue)?);
        let kept = Kept {
            store: store.clone(),
            evictor: evictor.clone(),
            metrics: metrics.clone(),
            outbox: outbox.clone(),
            shutdown: shutdown.clone(),
        };
        let first = Pipeline::build(&config, upstreams.clone(), &kept);
        let live = Arc::new(Live {
            proxy: ArcSwap::new(first.proxy),
            replayer: Arc::new(ArcSwap::new(first.replayer)),
            upstreams: Arc::new(ArcSwap::new(upstreams.clone())),
            config: Arc::new(ArcSwap::from_pointee(config.clone())),
            probes: std::sync::Mutex::new(first.probes),
            kept,
        });
        let replay = tokio::spawn(ReplayWorker::new(outbox.clone(), live.replayer.clone()).run(shutdown.triggered()));
        // Sealed blobs are decrypted in memory, so only plain ones can go from file to socket.
        let regions = (!store.encrypted() && platform::ZERO_COPY && config.zero_copy).then(|| store.blobs().regions());
        let handler = live.clone();
        let proxy_server = Server::spawn_with_regions(
            "proxy",
            listener,
            shutdown.clone(),
            server::Limits {
                grace: config.shutdown_grace,
                header_read_timeout: config.header_read_timeout,
                max_connections: config.max_connections,
            },
            regions,
            move |req, peer| {
                // The pipeline in force when the request arrived serves it to the end, across a reload.
                // (The future is the handler's own: no wrapping future to move it into.)
                handler.proxy.load_full().handle(req, peer)
            },
        );
        let token = admin::load_or_create_token(&config.data_dir).map_err(|e| {
            StartError::Store(StoreError::DataDir {
                dir: config.data_dir.clone(),
                reason: format!("cannot create the admin token: {e}"),
            })
        })?;
        let admin = Arc::new(
            admin::Admin::new(
                live.upstreams.clone(),
                live.config.clone(),
                outbox.clone(),
                store.clone(),
                evictor.clone(),
                metrics,
                token,
            )
            .with_shutdown(shutdown.clone()),
        );
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
            live,
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

    /// The upstream clients in force and their connectivity.
    pub fn upstreams(&self) -> Arc<Upstreams> {
        self.live.upstreams.load_full()
    }

    /// The config in force (the last one [`Outpost::reload`] took).
    pub fn config(&self) -> Arc<Config> {
        self.live.config.load_full()
    }

    /// Swaps in `config` (already checked: see [`Config::load`]) for new requests and replay attempts:
    /// routes, policies, upstreams (TLS read again), cache and limit settings, the size budget unless
    /// the admin API set one. Requests in flight finish on the config they started with. What only a
    /// restart can change (listen addresses, data dir, encryption...) is named in the answer and kept.
    /// On an error nothing changes.
    pub fn reload(&self, config: Config) -> Result<Reloaded, TlsSetupError> {
        let live = &self.live;
        let old = live.config.load_full();
        let upstreams = Arc::new(live.upstreams.load().renewed(&config.upstreams)?);
        let next = Pipeline::build(&config, upstreams.clone(), &live.kept);
        let restart_needed = restart_needed(&old, &config);
        let evictor = &live.kept.evictor;
        let store = &live.kept.store;
        // A budget set through the admin API stays until it is reset there, as at start.
        let max_size = match store.setting("max_size") {
            Ok(Some(v)) => v.parse().unwrap_or(config.max_size),
            _ => config.max_size,
        };
        let auto_evict = match store.setting("auto_evict") {
            Ok(Some(v)) => v == "true",
            _ => config.cache.auto_evict,
        };
        evictor.configure(max_size, auto_evict);
        evictor.set_kind_limits(config.kind_limits.clone());
        store.set_memory(usize::try_from(config.cache.memory).unwrap_or(usize::MAX));
        live.upstreams.store(upstreams);
        live.replayer.store(next.replayer);
        live.proxy.store(next.proxy);
        live.config.store(Arc::new(config));
        let retired = std::mem::replace(&mut *live.probes.lock().unwrap_or_else(|p| p.into_inner()), next.probes);
        retired.trigger();
        evictor.wake();
        live.kept.outbox.wake();
        tracing::info!(
            routes = live.config.load().routes.len(),
            ?restart_needed,
            "config reloaded"
        );
        Ok(Reloaded { restart_needed })
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
        // One deadline for everything: requests, background fills, prefetches and the replay worker
        // all hear the same signal and share the same grace period.
        let deadline = tokio::time::Instant::now() + self.grace;
        self.shutdown.trigger();
        self.proxy_server.finished().await;
        self.admin_server.finished().await;
        let _ = self.replay.await;
        let _ = self.evict_task.await;
        let Outpost {
            store, outbox, live, ..
        } = self;
        drop(outbox);
        drop(live);
        // Background work stops at the signal; what still holds the store is finishing a commit.
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

/// The parts of a running Outpost that a reload swaps, and those it keeps.
struct Live {
    /// The request pipeline new connections' requests go to.
    proxy: ArcSwap<Proxy>,
    /// What the replay worker delivers through.
    replayer: Arc<ArcSwap<Replayer>>,
    upstreams: Arc<ArcSwap<Upstreams>>,
    config: Arc<ArcSwap<Config>>,
    /// Ends the probe loops of the upstreams in force; triggered when a reload replaces them.
    probes: std::sync::Mutex<ShutdownSignal>,
    kept: Kept,
}

/// What every pipeline shares: the store and what counts in it, the outbox, the shutdown signal.
struct Kept {
    store: Arc<Store>,
    evictor: Arc<Evictor>,
    metrics: Arc<Metrics>,
    outbox: Arc<Outbox>,
    shutdown: ShutdownSignal,
}

/// Everything built from routes, policies, upstreams and cache settings.
struct Pipeline {
    proxy: Arc<Proxy>,
    replayer: Arc<Replayer>,
    probes: ShutdownSignal,
}

impl Pipeline {
    /// Builds the request pipeline and replayer for `config` over `upstreams`, and starts the upstreams'
    /// probe loops (until shutdown or until the pipeline is replaced).
    fn build(config: &Config, upstreams: Arc<Upstreams>, kept: &Kept) -> Pipeline {
        let role = if config.cache.shared {
            CacheRole::Shared
        } else {
            CacheRole::Private
        };
        let cache = Arc::new(
            Cache::new(
                Arc::new(DiskStorage(kept.store.clone())),
                kept.evictor.clone(),
                role,
                config.cache.verify_on_read,
                kept.shutdown.clone(),
            )
            .with_partitioner(config.cache.partitioner.clone())
            .with_offline_stale(config.cache.offline_stale),
        );
        let probes = ShutdownSignal::new();
        for upstream in upstreams.iter() {
            let (stop, retired) = (kept.shutdown.triggered(), probes.triggered());
            tokio::spawn(upstream.clone().probe_loop(async move {
                tokio::select! {
                    _ = stop => {}
                    _ = retired => {}
                }
            }));
        }
        let forwarder = Arc::new(Forwarder::new(config.route_table(), upstreams));
        let flow = Arc::new(Flow::new(forwarder.clone(), cache.clone(), kept.shutdown.clone()));
        let replayer = Arc::new(Replayer::new(forwarder.clone(), cache, kept.outbox.clone()));
        let proxy = Arc::new(
            Proxy::new(
                forwarder,
                flow,
                kept.outbox.clone(),
                kept.store.clone(),
                kept.evictor.clone(),
                kept.metrics.clone(),
                kept.shutdown.clone(),
            )
            .with_limits(config.body_read_timeout, config.max_buffered_bodies)
            .with_purge(config.cache.allow_purge)
            .with_log_redact(config.log_redact.clone()),
        );
        Pipeline {
            proxy,
            replayer,
            probes,
        }
    }
}

/// What a reload did not change because only a restart can.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// Settings that differ in the new config but keep their old values until a restart.
    pub restart_needed: Vec<&'static str>,
}

/// The settings bound at start (listeners, the data dir and what was opened from it, the worker's
/// settings) that differ between `old` and `new`.
fn restart_needed(old: &Config, new: &Config) -> Vec<&'static str> {
    fn json<T: serde::Serialize>(v: &T) -> String {
        serde_json::to_string(v).unwrap_or_default()
    }
    let mut out = Vec::new();
    let mut check = |name: &'static str, a: String, b: String| {
        if a != b {
            out.push(name);
        }
    };
    check("listen", old.listen.to_string(), new.listen.to_string());
    check(
        "admin_listen",
        old.admin_listen.to_string(),
        new.admin_listen.to_string(),
    );
    check("data_dir", json(&old.data_dir), json(&new.data_dir));
    check("encryption", json(&old.encryption), json(&new.encryption));
    check("shutdown_grace", json(&old.shutdown_grace), json(&new.shutdown_grace));
    check(
        "header_read_timeout",
        json(&old.header_read_timeout),
        json(&new.header_read_timeout),
    );
    check(
        "max_connections",
        json(&old.max_connections),
        json(&new.max_connections),
    );
    check("log_format", json(&old.log_format), json(&new.log_format));
    check("zero_copy", json(&old.zero_copy), json(&new.zero_copy));
    check("queue", json(&old.queue), json(&new.queue));
    check(
        "cache.max_unused",
        json(&old.cache.max_unused),
        json(&new.cache.max_unused),
    );
    out
}

/// Setting under which the hit-rate counts are kept.
const HIT_COUNTS: &str = "hit_counts";

/// Saves the hit-rate counts every 30 s and once more when `stop` resolves.
async fn keep_hit_counts(store: Arc<Store>, metrics: Arc<Metrics>, stop: impl std::future::Future<Output = ()>) {
    tokio::pin!(stop);
    loop {
        let stopping = tokio::select! {
            _ = &mut stop => true,
            _ = tokio::time::sleep(std::time::Duration::from_secs(30)) => false,
        };
        let json = metrics.outcomes_json();
        let s = store.clone();
        let saved = tokio::task::spawn_blocking(move || s.set_setting(HIT_COUNTS, Some(&json))).await;
        if let Ok(Err(e)) = saved {
            tracing::debug!(error = %e, "saving hit-rate counts failed");
        }
        if stopping {
            return;
        }
    }
}
