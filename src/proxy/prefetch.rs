//! Prefetch: media a pinning route lists are downloaded into the store in the background, through the
//! cache flow like any GET (so concurrent requests collapse onto the same fill).

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use http::Uri;
use tokio::sync::Semaphore;

use super::flow::{drain, Flow, RequestHead};
use super::forward::Forwarder;
use crate::cache::key;
use crate::server::ShutdownSignal;

/// Background media downloads at once.
const PREFETCH_CONCURRENCY: usize = 2;

/// How often a prefetch waiting for its upstream looks again.
const OFFLINE_RECHECK: Duration = Duration::from_millis(500);

/// Runs prefetches with bounded concurrency.
pub struct Prefetcher {
    slots: Arc<Semaphore>,
    shutdown: ShutdownSignal,
}

impl Prefetcher {
    /// A prefetcher that stops when `shutdown` fires.
    pub fn new(shutdown: ShutdownSignal) -> Prefetcher {
        Prefetcher {
            slots: Arc::new(Semaphore::new(PREFETCH_CONCURRENCY)),
            shutdown,
        }
    }

    /// Downloads one media object into the store in the background (waits while its upstream is
    /// offline; skips what is already stored; gives up at shutdown).
    pub fn spawn(&self, flow: &Arc<Flow>, forwarder: &Arc<Forwarder>, uri: Uri) {
        // Waiting tasks hold only weak references, so they never keep the store open.
        let (flow, forwarder): (Weak<Flow>, Weak<Forwarder>) = (Arc::downgrade(flow), Arc::downgrade(forwarder));
        let slots = self.slots.clone();
        let stop = self.shutdown.triggered();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop => {}
                _ = prefetch(flow, forwarder, slots, uri) => {}
            }
        });
    }
}

async fn prefetch(flow: Weak<Flow>, forwarder: Weak<Forwarder>, slots: Arc<Semaphore>, uri: Uri) {
    let Ok(_permit) = slots.acquire().await else {
        return;
    };
    loop {
        {
            let (Some(flow), Some(forwarder)) = (flow.upgrade(), forwarder.upgrade()) else {
                return;
            };
            let (route, upstream) = forwarder.route(&http::Method::GET, uri.path());
            let primary = key::primary_key(key::ANONYMOUS, upstream.name(), &uri, &route.policy.ignore_query);
            let head = RequestHead::get(uri.clone());
            if flow.stored(&head, &primary).is_some() {
                return;
            }
            if upstream.connectivity().is_online() {
                let upstream = upstream.clone();
                let peer = SocketAddr::from(([127, 0, 0, 1], 0));
                match flow.run(head, &route, &upstream, peer).await {
                    Ok((resp, outcome)) => {
                        drain(resp).await;
                        tracing::debug!(%uri, outcome = outcome.as_str(), "prefetched");
                    }
                    Err(e) => tracing::debug!(%uri, error = %e, "prefetch failed"),
                }
                return;
            }
        }
        // Offline: wait without holding the flow (and so the store).
        tokio::time::sleep(OFFLINE_RECHECK).await;
    }
}
