//! Protocol switches (`Connection: upgrade` + `Upgrade`, RFC 9110 §7.8), WebSocket handshakes above all:
//! the handshake goes to the upstream over HTTP/1.1, its `101` comes back, and from then on the bytes of
//! both connections are copied both ways until either side closes. Outpost reads no frame: pings, pongs
//! and close frames pass like any other bytes, so keep-alive is the app's and the upstream's business.
//!
//! Promises: a handshake while the upstream is known to be offline is answered at once with `503` and
//! `Retry-After` (and so is one that cannot connect), so the app's reconnect logic runs instead of
//! waiting; at most [`MAX_TUNNELS`] tunnels are open at once (more get a `503`); tunnels close when
//! Outpost shuts down.

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{self, HeaderMap};
use http::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::Semaphore;

use super::{Forwarder, ProxyError};
use crate::body::{self, ProxyBody};
use crate::routes::RouteMatch;
use crate::server::ShutdownSignal;
use crate::upstream::Upstream;

/// Open tunnels at most (each holds two sockets for as long as the app keeps it).
pub const MAX_TUNNELS: usize = 512;

/// True when the request asks to switch protocols (`Connection` lists `upgrade` and `Upgrade` is set).
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Joins upgraded client and upstream connections.
pub struct Tunnels {
    slots: Arc<Semaphore>,
    shutdown: ShutdownSignal,
}

impl Tunnels {
    /// No tunnel open yet.
    pub fn new(shutdown: ShutdownSignal) -> Tunnels {
        Tunnels {
            slots: Arc::new(Semaphore::new(MAX_TUNNELS)),
            shutdown,
        }
    }

    /// Forwards the handshake; on `101` spawns the byte copy and returns the `101` for the client.
    pub async fn open_tunnel<B>(
        &self,
        mut req: Request<B>,
        forwarder: &Forwarder,
        route: &RouteMatch<'_>,
        upstream: &Upstream,
        peer: SocketAddr,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let offline = |detail: String| ProxyError::Offline {
            upstream: upstream.name().to_string(),
            detail: Some(detail),
        };
        if !upstream.connectivity().is_online() {
            return Err(offline("upstream is offline; reconnect later".into()));
        }
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            return Err(offline(format!("{MAX_TUNNELS} tunnels are open")));
        };
        let client_side = hyper::upgrade::on(&mut req);
        // A handshake carries no body (RFC 6455 §4.1); anything sent after it belongs to the tunnel.
        let (parts, _body) = req.into_parts();
        let out = Request::from_parts(parts, body::empty());
        let mut resp = forwarder
            .forward_upgrade(out, route, upstream, peer)
            .await
            .map_err(ProxyError::miss)?;
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Ok(resp);
        }
        let upstream_side = hyper::upgrade::on(&mut resp);
        let stop = self.shutdown.triggered();
        let name = upstream.name().to_string();
        tokio::spawn(async move {
            let _permit = permit;
            let (client, server) = match tokio::try_join!(client_side, upstream_side) {
                Ok(both) => both,
                Err(e) => {
                    tracing::debug!(upstream = %name, error = %e, "upgrade did not complete");
                    return;
                }
            };
            let (mut client, mut server) = (TokioIo::new(client), TokioIo::new(server));
            tokio::select! {
                r = tokio::io::copy_bidirectional(&mut client, &mut server) => match r {
                    Ok((up, down)) => tracing::debug!(upstream = %name, up, down, "tunnel closed"),
                    Err(e) => tracing::debug!(upstream = %name, error = %e, "tunnel broke"),
                },
                _ = stop => tracing::debug!(upstream = %name, "tunnel closed at shutdown"),
            }
        });
        let (parts, _) = resp.into_parts();
        Ok(Response::from_parts(parts, body::empty()))
    }
}
