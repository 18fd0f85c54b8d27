//! Counters and gauges: Prometheus text at `/metrics` (prometheus-client, names `outpost_*`) and the
//! per-kind hit/miss numbers behind `/api/stats`.
//!
//! Recording is a few atomic adds and one short mutex per request; nothing touches the store.

use std::collections::BTreeMap;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    outcome: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabel {
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

/// One route's metric handles.
struct RouteHandles {
    latency: Histogram,
    requests: std::collections::HashMap<(&'static str, &'static str), Counter>,
}

/// Everything Outpost counts.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabel, Histogram>,
    cache_bytes: Gauge,
    queue_depth: Gauge,
    upstream_online: Family<UpstreamLabel, Gauge>,
    store_writable: Gauge,
    evictions: Family<ReasonLabel, Counter>,
    evicted_bytes: Family<ReasonLabel, Counter>,
    store_write_errors: Counter,
    dead_letters: Gauge,
    replays: Family<ResultLabel, Counter>,
    kind_limits: Family<KindLabel, Gauge>,
    by_kind: Mutex<BTreeMap<(String, &'static str), u64>>,
    /// Per route: its latency histogram and request counters, resolved once (metric handles share their
    /// atomics), so recording a request allocates nothing.
    hot: Mutex<std::collections::HashMap<String, RouteHandles>>,
}

/// What a scrape reads from the rest of Outpost.
pub struct Scrape<'a> {
    /// Bytes of blobs on disk.
    pub cache_bytes: u64,
    /// Queued writes waiting.
    pub queue_depth: usize,
    /// Dead letters.
    pub dead_letters: u64,
    /// (upstream, online).
    pub upstreams: &'a [(String, bool)],
    /// Evictions by reason: (count, bytes) since start.
    pub evictions: &'a BTreeMap<&'static str, (u64, u64)>,
    /// Writes the store did not take since start.
    pub store_write_errors: u64,
    /// Replay attempts by result since start.
    pub replays: &'a [(&'static str, u64)],
    /// Budgets of single kinds.
    pub kind_limits: &'a BTreeMap<String, u64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "outpost_requests",
            "Requests by route, cache outcome and status class",
            requests.clone(),
        );
        let latency = Family::<RouteLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register(
            "outpost_request_duration_seconds",
            "Time to the response head, by route",
            latency.clone(),
        );
        let cache_bytes = Gauge::default();
        registry.register("outpost_cache_bytes", "Bytes of blobs on disk", cache_bytes.clone());
        let queue_depth = Gauge::default();
        registry.register(
            "outpost_queue_depth",
            "Queued writes waiting for replay",
            queue_depth.clone(),
        );
        let upstream_online = Family::<UpstreamLabel, Gauge>::default();
        registry.register(
            "outpost_upstream_online",
            "1 when the upstream is reachable",
            upstream_online.clone(),
        );
        let store_writable = Gauge::default();
        registry.register(
            "outpost_store_writable",
            "1 while the data dir takes writes, 0 while it does not (disk full, I/O errors)",
            store_writable.clone(),
        );
        // Counters (`_total` on the wire) that exist from the start, at 0.
        let evictions = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "outpost_evictions",
            "Evictions since start, by reason",
            evictions.clone(),
        );
        let evicted_bytes = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "outpost_evicted_bytes",
            "Bytes freed by eviction since start, by reason",
            evicted_bytes.clone(),
        );
        for reason in crate::evict::EvictReason::ALL {
            let l = ReasonLabel {
                reason: reason.as_str().to_string(),
            };
            evictions.get_or_create(&l).inc_by(0);
            evicted_bytes.get_or_create(&l).inc_by(0);
        }
        let store_write_errors = Counter::default();
        registry.register(
            "outpost_store_write_errors",
            "Writes the data dir did not take since start (fills, queue bookkeeping)",
            store_write_errors.clone(),
        );
        let dead_letters = Gauge::default();
        registry.register(
            "outpost_dead_letters",
            "Queued writes that stopped for good and wait for the app or the user",
            dead_letters.clone(),
        );
        let replays = Family::<ResultLabel, Counter>::default();
        registry.register(
            "outpost_replays",
            "Replay attempts of queued writes since start, by result",
            replays.clone(),
        );
        for result in crate::queue::events::ReplayCounts::RESULTS {
            replays
                .get_or_create(&ResultLabel {
                    result: result.to_string(),
                })
                .inc_by(0);
        }
        let kind_limits = Family::<KindLabel, Gauge>::default();
        registry.register(
            "outpost_cache_kind_limit_bytes",
            "The size budget of one kind ([budget] in the config)",
            kind_limits.clone(),
        );
        registry.register(
            "outpost_build",
            "Outpost's version",
            prometheus_client::metrics::info::Info::new(VersionLabel {
                version: env!("CARGO_PKG_VERSION").to_string(),
            }),
        );
        Metrics {
            registry,
            requests,
            latency,
            cache_bytes,
            queue_depth,
            upstream_online,
            store_writable,
            evictions,
            evicted_bytes,
            store_write_errors,
            dead_letters,
            replays,
            kind_limits,
            by_kind: Mutex::new(BTreeMap::new()),
            hot: Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Records one answered request.
    pub fn request(&self, route: &str, kind: &str, outcome: &'static str, status: u16, seconds: f64) {
        let class = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        if let Ok(mut hot) = self.hot.lock() {
            if !hot.contains_key(route) {
                let latency = self
                    .latency
                    .get_or_create(&RouteLabel {
                        route: route.to_string(),
                    })
                    .clone();
                hot.insert(
                    route.to_string(),
                    RouteHandles {
                        latency,
                        requests: std::collections::HashMap::new(),
                    },
                );
            }
            if let Some(h) = hot.get_mut(route) {
                h.latency.observe(seconds);
                h.requests
                    .entry((outcome, class))
                    .or_insert_with(|| {
                        self.requests
                            .get_or_create(&RequestLabels {
                                route: route.to_string(),
                                outcome: outcome.to_string(),
                                status: class.to_string(),
                            })
                            .clone()
                    })
                    .inc();
            }
        }
        if let Ok(mut m) = self.by_kind.lock() {
            match m.iter_mut().find(|((k, o), _)| k == kind && *o == outcome) {
                Some((_, n)) => *n += 1,
                None => {
                    m.insert((kind.to_string(), outcome), 1);
                }
            }
        }
    }

    /// Per kind: outcome → count.
    pub fn outcomes_by_kind(&self) -> BTreeMap<String, BTreeMap<&'static str, u64>> {
        let mut out: BTreeMap<String, BTreeMap<&'static str, u64>> = BTreeMap::new();
        if let Ok(m) = self.by_kind.lock() {
            for ((kind, outcome), n) in m.iter() {
                out.entry(kind.clone()).or_default().insert(outcome, *n);
            }
        }
        out
    }

    /// The counts behind the hit rates, as JSON (`{"kind": {"HIT": n, ...}}`), to keep across restarts.
    pub fn outcomes_json(&self) -> String {
        serde_json::to_string(&self.outcomes_by_kind()).unwrap_or_default()
    }

    /// Adds counts saved by [`Metrics::outcomes_json`] (at start; unknown outcome labels are skipped).
    pub fn restore_outcomes(&self, saved: &str) {
        let Ok(saved) = serde_json::from_str::<BTreeMap<String, BTreeMap<String, u64>>>(saved) else {
            tracing::warn!("saved hit-rate counts are unreadable; starting from 0");
            return;
        };
        let Ok(mut m) = self.by_kind.lock() else { return };
        for (kind, outcomes) in saved {
            for (label, n) in outcomes {
                if let Some(o) = crate::cache::Outcome::ALL.iter().find(|o| o.as_str() == label) {
                    *m.entry((kind.clone(), o.as_str())).or_default() += n;
                }
            }
        }
    }

    /// Whether the data dir takes writes (read at scrape time).
    pub fn set_store_writable(&self, writable: bool) {
        self.store_writable.set(i64::from(writable));
    }

    /// Sets the values read at scrape time and renders the text format.
    pub fn render(&self, s: &Scrape<'_>) -> String {
        self.cache_bytes.set(s.cache_bytes as i64);
        self.queue_depth.set(s.queue_depth as i64);
        self.dead_letters.set(s.dead_letters as i64);
        // Counted elsewhere (monotonic since start); the counters catch up.
        let catch_up = |c: &Counter, total: u64| {
            c.inc_by(total.saturating_sub(c.get()));
        };
        catch_up(&self.store_write_errors, s.store_write_errors);
        for (name, online) in s.upstreams {
            self.upstream_online
                .get_or_create(&UpstreamLabel { upstream: name.clone() })
                .set(i64::from(*online));
        }
        for (reason, (n, bytes)) in s.evictions {
            let l = ReasonLabel {
                reason: reason.to_string(),
            };
            catch_up(&self.evictions.get_or_create(&l), *n);
            catch_up(&self.evicted_bytes.get_or_create(&l), *bytes);
        }
        for (result, n) in s.replays {
            let l = ResultLabel {
                result: result.to_string(),
            };
            catch_up(&self.replays.get_or_create(&l), *n);
        }
        self.kind_limits.clear();
        for (kind, limit) in s.kind_limits {
            self.kind_limits
                .get_or_create(&KindLabel { kind: kind.clone() })
                .set(i64::try_from(*limit).unwrap_or(i64::MAX));
        }
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}
