//! Upstreams: one pooled HTTP/1.1 + HTTP/2 client per named upstream (rustls for https), the timeouts that
//! bound every exchange, and each upstream's connectivity state.
//!
//! Promises: no exchange waits longer than `connect_timeout` for a connection or `first_byte_timeout` for
//! a response head, and no body pauses longer than `idle_timeout` (a `text/event-stream` body: longer
//! than `stream_idle_timeout`, unlimited by default, since event streams may be quiet for long). A connect error or timeout marks the
//! upstream offline at once (passive detection); any answer marks it online again.

mod connectivity;

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

pub use connectivity::{Connectivity, ConnectivitySnapshot};

use crate::body::{IdleTimeout, ProxyBody};
use crate::config::{Roots, UpstreamConfig};

/// Why an exchange with an upstream failed; the variant decides the answer (stale, 502, 504, queue).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made: the request certainly did not reach the upstream.
    #[error("cannot connect to upstream {upstream}: {reason}")]
    Connect {
        /// Upstream name.
        upstream: String,
        /// Cause, for humans.
        reason: String,
    },
    /// Connected, but no response head within `first_byte_timeout`: the outcome is unknown.
    #[error("upstream {upstream} sent no response within {after:?}")]
    Timeout {
        /// Upstream name.
        upstream: String,
        /// The timeout that expired.
        after: Duration,
    },
    /// The connection broke after the request was (maybe) sent: the outcome is unknown.
    #[error("upstream {upstream} failed mid-exchange: {reason}")]
    Broken {
        /// Upstream name.
        upstream: String,
        /// Cause, for humans.
        reason: String,
    },
}

impl UpstreamError {
    /// True when the request surely never reached the upstream (safe to queue without a key).
    pub fn not_sent(&self) -> bool {
        matches!(self, UpstreamError::Connect { .. })
    }

    /// Upstream name.
    pub fn upstream(&self) -> &str {
        match self {
            UpstreamError::Connect { upstream, .. }
            | UpstreamError::Timeout { upstream, .. }
            | UpstreamError::Broken { upstream, .. } => upstream,
        }
    }
}

/// Building the clients failed (bad CA file, no roots).
#[derive(Debug, thiserror::Error)]
#[error("upstream {upstream}: {reason}")]
pub struct TlsSetupError {
    /// Upstream name.
    pub upstream: String,
    /// What went wrong.
    pub reason: String,
}

type HttpClient = Client<HttpsConnector<HttpConnector>, ProxyBody>;

/// One upstream: its config, its pooled clients and its connectivity.
pub struct Upstream {
    config: UpstreamConfig,
    client: HttpClient,
    /// HTTP/1.1 only: a protocol switch (`Upgrade`, RFC 9110 §7.8) exists only there, and an https
    /// upstream would otherwise pick HTTP/2 by ALPN.
    upgrade_client: HttpClient,
    /// Shared with the upstream of the same name and URL that a config reload replaced.
    connectivity: Arc<Connectivity>,
}

impl Upstream {
    /// Builds the clients (TLS roots, timeouts, pool) for `config`.
    pub fn new(config: UpstreamConfig) -> Result<Upstream, TlsSetupError> {
        let connectivity = Arc::new(Connectivity::new(&config.name));
        Upstream::with_connectivity(config, connectivity)
    }

    /// Same, keeping `connectivity` (what a reload carries over from the upstream it replaces).
    fn with_connectivity(config: UpstreamConfig, connectivity: Arc<Connectivity>) -> Result<Upstream, TlsSetupError> {
        let tls = tls_config(&config)?;
        let connector = |http2: bool| {
            let mut http = HttpConnector::new();
            http.enforce_http(false);
            http.set_connect_timeout(Some(config.connect_timeout));
            http.set_nodelay(true);
            http.set_keepalive(Some(Duration::from_secs(30)));
            let builder = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls.clone())
                .https_or_http()
                .enable_http1();
            if http2 {
                builder.enable_http2().wrap_connector(http)
            } else {
                builder.wrap_connector(http)
            }
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(config.idle_timeout)
            .pool_max_idle_per_host(config.pool_max_idle)
            .timer(hyper_util::rt::TokioTimer::new())
            .build(connector(true));
        // An upgraded connection leaves the pool for good; nothing idles here.
        let upgrade_client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .timer(hyper_util::rt::TokioTimer::new())
            .build(connector(false));
        Ok(Upstream {
            connectivity,
            config,
            client,
            upgrade_client,
        })
    }

    /// The upstream's configuration.
    pub fn config(&self) -> &UpstreamConfig {
        &self.config
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Its connectivity state.
    pub fn connectivity(&self) -> &Connectivity {
        &self.connectivity
    }

    /// Sends `req` (absolute URI already set) and waits for the response head within the timeouts.
    /// The response body is wrapped so that a stall longer than `idle_timeout` ends it with an error.
    pub async fn send(&self, req: Request<ProxyBody>) -> Result<Response<ProxyBody>, UpstreamError> {
        // The connect timeout lives in the connector; this one bounds connect + TLS + response head.
        self.send_within(req, self.config.connect_timeout + self.config.first_byte_timeout)
            .await
    }

    /// Like [`Upstream::send`] with a shorter bound on the response head (used when a stored response
    /// can answer instead). Expiry marks the upstream offline like any timeout.
    pub async fn send_within(
        &self,
        req: Request<ProxyBody>,
        limit: Duration,
    ) -> Result<Response<ProxyBody>, UpstreamError> {
        self.exchange(&self.client, req, limit, false).await
    }

    /// Sends a protocol-switch request over HTTP/1.1 within the same bounds as [`Upstream::send`]; on a
    /// `101` the connection is the caller's through `hyper::upgrade::on(&mut response)`.
    pub async fn send_upgrade(&self, req: Request<ProxyBody>) -> Result<Response<ProxyBody>, UpstreamError> {
        let limit = self.config.connect_timeout + self.config.first_byte_timeout;
        self.exchange(&self.upgrade_client, req, limit, false).await
    }

    async fn exchange(
        &self,
        client: &HttpClient,
        req: Request<ProxyBody>,
        limit: Duration,
        probe: bool,
    ) -> Result<Response<ProxyBody>, UpstreamError> {
        let name = &self.config.name;
        match tokio::time::timeout(limit, client.request(req)).await {
            Ok(Ok(resp)) => {
                if let Some(why) = self.not_the_backend(&resp, probe) {
                    // A captive portal (or anything else in the way) answered: the backend is not
                    // reachable, whatever the status says.
                    self.connectivity.mark_offline(&why);
                    return Err(UpstreamError::Connect {
                        upstream: name.clone(),
                        reason: why,
                    });
                }
                self.connectivity.mark_online();
                let event_stream = resp
                    .headers()
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|ct| ct.trim_start().to_ascii_lowercase().starts_with("text/event-stream"));
                let idle = if event_stream {
                    self.config.stream_idle_timeout
                } else {
                    Some(self.config.idle_timeout)
                };
                Ok(match idle {
                    Some(idle) => resp.map(|b| crate::body::boxed(IdleTimeout::new(crate::body::boxed(b), idle))),
                    None => resp.map(crate::body::boxed),
                })
            }
            Ok(Err(e)) => {
                let reason = error_chain(&e);
                if e.is_connect() {
                    self.connectivity.mark_offline(&reason);
                    Err(UpstreamError::Connect {
                        upstream: name.clone(),
                        reason,
                    })
                } else {
                    Err(UpstreamError::Broken {
                        upstream: name.clone(),
                        reason,
                    })
                }
            }
            Err(_) => {
                let reason = format!("no response within {limit:?}");
                self.connectivity.mark_offline(&reason);
                Err(UpstreamError::Timeout {
                    upstream: name.clone(),
                    after: limit,
                })
            }
        }
    }
}

impl Upstream {
    /// Why an answer is not the backend's, by `probe_expect` (its field on every answer; its status on
    /// the probe's).
    fn not_the_backend<B>(&self, resp: &Response<B>, probe: bool) -> Option<String> {
        let mark = self.config.expect.as_ref()?;
        if let Some(h) = &mark.header {
            if !resp.headers().contains_key(h.as_str()) {
                return Some(format!(
                    "an answer without {h} is not the backend's (captive portal?): status {}",
                    resp.status()
                ));
            }
        }
        match mark.status {
            Some(want) if probe && resp.status().as_u16() != want => Some(format!(
                "the probe got {} instead of {want} (captive portal?)",
                resp.status()
            )),
            _ => None,
        }
    }

    /// While the upstream is offline, asks `probe_path` every `probe_interval`; any answer marks it online
    /// (through [`Upstream::send_within`]). Ends when `stop` resolves.
    pub async fn probe_loop(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(self.config.probe_interval) => {}
            }
            if self.connectivity.is_online() {
                continue;
            }
            let url = format!(
                "{}://{}{}",
                self.config.url.scheme_str().unwrap_or("http"),
                self.config.url.authority().map(|a| a.as_str()).unwrap_or(""),
                self.config.probe_path
            );
            let req = match Request::get(url).body(crate::body::empty()) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(upstream = %self.config.name, error = %e, "probe URL is invalid; probing stops");
                    return;
                }
            };
            match self.exchange(&self.client, req, self.config.probe_timeout, true).await {
                Ok(resp) => {
                    tracing::debug!(upstream = %self.config.name, status = %resp.status(), "probe answered");
                }
                // Connected, then broken: the network path is up, which is what the probe asks.
                Err(UpstreamError::Broken { .. }) => self.connectivity.mark_online(),
                Err(e) => tracing::debug!(upstream = %self.config.name, error = %e, "probe failed"),
            }
        }
    }
}

/// All upstreams, indexed as in [`crate::config::Config::upstreams`].
pub struct Upstreams {
    list: Vec<Arc<Upstream>>,
}

impl Upstreams {
    /// Builds every upstream's client.
    pub fn new(configs: &[UpstreamConfig]) -> Result<Upstreams, TlsSetupError> {
        let list = configs
            .iter()
            .map(|c| Upstream::new(c.clone()).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Upstreams { list })
    }

    /// New clients for `configs` (a config reload: TLS roots and CA files are read again), each keeping
    /// the connectivity of the current upstream with the same name and URL, so a reload neither forgets
    /// that the backend is down nor sends the first request after it into a connect timeout.
    pub fn renewed(&self, configs: &[UpstreamConfig]) -> Result<Upstreams, TlsSetupError> {
        let list = configs
            .iter()
            .map(|c| {
                let same = self
                    .list
                    .iter()
                    .find(|u| u.config.name == c.name && u.config.url == c.url);
                let connectivity = match same {
                    Some(u) => u.connectivity.clone(),
                    None => Arc::new(Connectivity::new(&c.name)),
                };
                Upstream::with_connectivity(c.clone(), connectivity).map(Arc::new)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Upstreams { list })
    }

    /// The upstream at `ix`.
    pub fn get(&self, ix: usize) -> &Arc<Upstream> {
        &self.list[ix]
    }

    /// All of them.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Upstream>> {
        self.list.iter()
    }
}

fn tls_config(cfg: &UpstreamConfig) -> Result<rustls::ClientConfig, TlsSetupError> {
    let fail = |reason: String| TlsSetupError {
        upstream: cfg.name.clone(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    match cfg.roots {
        Roots::Webpki => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Roots::System => {
            let found = rustls_native_certs::load_native_certs();
            if found.certs.is_empty() {
                return Err(fail(format!("no system CA certificates found ({:?})", found.errors)));
            }
            roots.add_parsable_certificates(found.certs);
        }
        Roots::None => {}
    }
    if let Some(path) = &cfg.ca_file {
        use rustls_pki_types::pem::PemObject;
        let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
            .map_err(|e| fail(format!("ca_file {}: {e}", path.display())))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| fail(format!("ca_file {}: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(fail(format!("ca_file {}: no PEM certificates in it", path.display())));
        }
        for c in certs {
            roots
                .add(c)
                .map_err(|e| fail(format!("ca_file {}: {e}", path.display())))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// "outer: inner: innermost" — hyper's Display alone hides the useful part.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = inner.source();
    }
    s
}
