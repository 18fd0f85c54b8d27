//! The cache's decision for one GET/HEAD: from what is stored, the route's strategy, whether the
//! upstream is reachable and the request's directives, a [`Plan`]. Pure: no I/O, no clock (freshness is
//! evaluated at "now" before, by [`crate::cache::Hit::state`]), so every combination is a table test.
//! The proxy's cache flow carries the plan out and reports an [`Outcome`].

use crate::routes::Strategy;

/// How a request was answered; `X-Outpost-Cache`, the log line and metrics use the same label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Fresh stored response, no upstream contact.
    Hit,
    /// Answered by the upstream (and stored if storable).
    Miss,
    /// Stored response served stale by policy (stale-while-revalidate, cache-first, cache-only,
    /// stale-if-error).
    Stale,
    /// Stored response confirmed by a 304.
    Revalidated,
    /// Stored response served because the upstream is unreachable.
    Offline,
    /// A write stored in the outbox and acknowledged (202 or the route's `queued_status`).
    Queued,
    /// Not a cacheable exchange (writes sent upstream, network-only routes, errors before routing).
    Bypass,
}

impl Outcome {
    /// Every outcome.
    pub const ALL: [Outcome; 7] = [
        Outcome::Hit,
        Outcome::Miss,
        Outcome::Stale,
        Outcome::Revalidated,
        Outcome::Offline,
        Outcome::Queued,
        Outcome::Bypass,
    ];

    /// Stable label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit => "HIT",
            Outcome::Miss => "MISS",
            Outcome::Stale => "STALE",
            Outcome::Revalidated => "REVALIDATED",
            Outcome::Offline => "OFFLINE",
            Outcome::Queued => "QUEUED",
            Outcome::Bypass => "BYPASS",
        }
    }

    /// Outpost's `Cache-Status` member (RFC 9211 §2): `hit` when no request went upstream (with
    /// `detail=stale` or `detail=offline` for stale answers served by policy or because the upstream is
    /// unreachable), `fwd=uri-miss` / `fwd=stale` / `fwd=bypass` with the upstream's `fwd-status`
    /// otherwise, `stored` when the answer is being stored; `failed` names why Outpost answered itself.
    pub fn cache_status(self, fwd_status: Option<u16>, stored: bool, failed: Option<&str>) -> String {
        let mut v = String::from("Outpost; ");
        v.push_str(match self {
            Outcome::Hit => "hit",
            Outcome::Stale => "hit; detail=stale",
            Outcome::Offline => "hit; detail=offline",
            Outcome::Revalidated => "fwd=stale",
            Outcome::Miss => "fwd=uri-miss",
            Outcome::Queued => "fwd=bypass; detail=queued",
            Outcome::Bypass => "fwd=bypass",
        });
        let went_upstream = matches!(self, Outcome::Miss | Outcome::Bypass);
        match (self, fwd_status) {
            (Outcome::Revalidated, _) => v.push_str("; fwd-status=304"),
            (_, Some(s)) if went_upstream => v.push_str(&format!("; fwd-status={s}")),
            _ => {}
        }
        if stored {
            v.push_str("; stored");
        }
        if let Some(why) = failed {
            v.push_str("; detail=");
            v.push_str(why);
        }
        v
    }

    /// True when the body came from the upstream in this exchange (what response hooks learn from).
    pub fn from_network(self) -> bool {
        matches!(self, Outcome::Miss | Outcome::Revalidated)
    }
}

/// What the stored response for a request is worth at the time of the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Nothing usable is stored.
    Nothing,
    /// Fresh (RFC 9111 §4.2, with the request's own directives).
    Fresh,
    /// Stale.
    Stale,
    /// Marked invalid by a successful write (§4.4): never answered while the upstream is reachable.
    Invalidated,
}

/// The request's directives that change the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Directives {
    /// `Cache-Control: only-if-cached` (§5.2.1.7).
    pub only_if_cached: bool,
    /// A HEAD request.
    pub head: bool,
    /// The request has a `Range` field.
    pub range: bool,
    /// The stored response may not be served stale (`offline_stale = "rfc"` and §4.2.4).
    pub stale_forbidden: bool,
}

/// What to do for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Answer from the store without contacting the upstream, labelled with this outcome.
    Serve(Outcome),
    /// Answer the stale stored response now and refresh it in the background (stale-while-revalidate).
    ServeStaleAndRefresh,
    /// Ask the upstream (conditionally), within the route's `network_timeout`: a 304 refreshes the
    /// stored response, a new answer replaces it, a failure or a 5xx answers from the store.
    Revalidate,
    /// Fetch and store; concurrent requests for the same key collapse onto one fill and wait for it.
    Fill,
    /// A `Range` on a miss: the range is passed through at once while one background request fills
    /// the whole object.
    FillBehindRange,
    /// Forward on a miss; the answer is not stored (HEAD).
    Forward,
    /// Not a cache exchange at all (network-only routes): forwarded as it is, labelled `BYPASS`.
    Bypass,
    /// Nothing stored and the upstream unreachable: an immediate 503.
    OfflineMiss,
    /// Nothing stored and the network is not allowed (only-if-cached, cache-only): 504.
    NotCached,
    /// Only a stale answer is stored, its origin forbade serving it stale, the route keeps to the RFC
    /// (`offline_stale = "rfc"`), and the origin cannot be asked: 504 (§4.2.4).
    StaleForbidden,
}

/// The decision. `online` is the upstream's connectivity as last observed.
pub fn decide(stored: Stored, strategy: Strategy, online: bool, d: Directives) -> Plan {
    if strategy == Strategy::NetworkOnly {
        return Plan::Bypass;
    }
    if d.only_if_cached || strategy == Strategy::CacheOnly {
        return match stored {
            Stored::Nothing => Plan::NotCached,
            Stored::Fresh => Plan::Serve(Outcome::Hit),
            Stored::Stale | Stored::Invalidated if d.stale_forbidden => Plan::StaleForbidden,
            Stored::Stale | Stored::Invalidated => Plan::Serve(Outcome::Stale),
        };
    }
    let fresh = match stored {
        Stored::Nothing => {
            return match (online, d.head, d.range) {
                (false, _, _) => Plan::OfflineMiss,
                (true, true, _) => Plan::Forward,
                (true, false, true) => Plan::FillBehindRange,
                (true, false, false) => Plan::Fill,
            }
        }
        Stored::Fresh => true,
        Stored::Stale | Stored::Invalidated => false,
    };
    if !fresh && d.stale_forbidden {
        return if online { Plan::Revalidate } else { Plan::StaleForbidden };
    }
    let answer_now = stored != Stored::Invalidated
        && match strategy {
            Strategy::CacheFirst | Strategy::StaleWhileRevalidate => true,
            Strategy::NetworkFirst => false,
            _ => fresh,
        };
    if !online {
        return Plan::Serve(if fresh { Outcome::Hit } else { Outcome::Offline });
    }
    if !answer_now {
        return Plan::Revalidate;
    }
    match (fresh, strategy) {
        (true, _) => Plan::Serve(Outcome::Hit),
        (false, Strategy::StaleWhileRevalidate) => Plan::ServeStaleAndRefresh,
        (false, _) => Plan::Serve(Outcome::Stale),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Outcome::*;
    use Plan::Bypass;
    use Plan::*;
    use Strategy::*;

    const PLAIN: Directives = Directives {
        only_if_cached: false,
        head: false,
        range: false,
        stale_forbidden: false,
    };

    /// Every strategy × stored state × connectivity, for a plain GET.
    #[test]
    fn every_strategy_by_stored_state_and_connectivity() {
        use Stored::{Fresh as F, Invalidated as I, Nothing as N, Stale as S};
        #[rustfmt::skip]
        let table: &[(Strategy, Stored, bool, Plan)] = &[
            // RFC 9111 rules: fresh is served, stale is revalidated; offline anything stored is served.
            (Http, F, true, Serve(Hit)),          (Http, F, false, Serve(Hit)),
            (Http, S, true, Revalidate),          (Http, S, false, Serve(Offline)),
            (Http, I, true, Revalidate),          (Http, I, false, Serve(Offline)),
            (Http, N, true, Fill),                (Http, N, false, OfflineMiss),
            // stale-while-revalidate: stale answers at once and refreshes behind.
            (StaleWhileRevalidate, F, true, Serve(Hit)),   (StaleWhileRevalidate, F, false, Serve(Hit)),
            (StaleWhileRevalidate, S, true, ServeStaleAndRefresh), (StaleWhileRevalidate, S, false, Serve(Offline)),
            (StaleWhileRevalidate, I, true, Revalidate),   (StaleWhileRevalidate, I, false, Serve(Offline)),
            (StaleWhileRevalidate, N, true, Fill),         (StaleWhileRevalidate, N, false, OfflineMiss),
            // cache-first: anything stored is answered without asking, unless a write invalidated it.
            (CacheFirst, F, true, Serve(Hit)),    (CacheFirst, F, false, Serve(Hit)),
            (CacheFirst, S, true, Serve(Stale)),  (CacheFirst, S, false, Serve(Offline)),
            (CacheFirst, I, true, Revalidate),    (CacheFirst, I, false, Serve(Offline)),
            (CacheFirst, N, true, Fill),          (CacheFirst, N, false, OfflineMiss),
            // network-first: always asks while online, the store answers when it cannot.
            (NetworkFirst, F, true, Revalidate),  (NetworkFirst, F, false, Serve(Hit)),
            (NetworkFirst, S, true, Revalidate),  (NetworkFirst, S, false, Serve(Offline)),
            (NetworkFirst, I, true, Revalidate),  (NetworkFirst, I, false, Serve(Offline)),
            (NetworkFirst, N, true, Fill),        (NetworkFirst, N, false, OfflineMiss),
            // network-only: never the store.
            (NetworkOnly, F, true, Bypass),       (NetworkOnly, F, false, Bypass),
            (NetworkOnly, S, true, Bypass),       (NetworkOnly, N, false, Bypass),
            // cache-only: never the network.
            (CacheOnly, F, true, Serve(Hit)),     (CacheOnly, F, false, Serve(Hit)),
            (CacheOnly, S, true, Serve(Stale)),   (CacheOnly, S, false, Serve(Stale)),
            (CacheOnly, I, true, Serve(Stale)),   (CacheOnly, I, false, Serve(Stale)),
            (CacheOnly, N, true, NotCached),      (CacheOnly, N, false, NotCached),
        ];
        for &(strategy, stored, online, want) in table {
            assert_eq!(
                decide(stored, strategy, online, PLAIN),
                want,
                "{strategy:?} {stored:?} online={online}"
            );
        }
        // The table covers every strategy.
        for s in Strategy::ALL {
            assert!(table.iter().any(|row| row.0 == s), "{s:?} missing");
        }
    }

    /// §5.2.1.7: only-if-cached answers from the store or 504, whatever the strategy and connectivity.
    #[test]
    fn only_if_cached_never_uses_the_network() {
        let d = Directives {
            only_if_cached: true,
            ..PLAIN
        };
        for s in [Http, StaleWhileRevalidate, CacheFirst, NetworkFirst, CacheOnly] {
            for online in [true, false] {
                assert_eq!(decide(Stored::Nothing, s, online, d), NotCached);
                assert_eq!(decide(Stored::Fresh, s, online, d), Serve(Hit));
                assert_eq!(decide(Stored::Stale, s, online, d), Serve(Stale));
                assert_eq!(decide(Stored::Invalidated, s, online, d), Serve(Stale));
            }
        }
    }

    #[test]
    fn misses_of_heads_and_ranges() {
        let head = Directives { head: true, ..PLAIN };
        let range = Directives { range: true, ..PLAIN };
        assert_eq!(decide(Stored::Nothing, Http, true, head), Forward);
        assert_eq!(decide(Stored::Nothing, Http, false, head), OfflineMiss);
        assert_eq!(decide(Stored::Nothing, Http, true, range), FillBehindRange);
        assert_eq!(decide(Stored::Nothing, Http, false, range), OfflineMiss);
        // A stored object answers ranges and HEADs like any other request.
        assert_eq!(decide(Stored::Fresh, Http, true, range), Serve(Hit));
        assert_eq!(decide(Stored::Stale, Http, false, head), Serve(Offline));
    }

    /// RFC 9111 §4.2.4 with `offline_stale = "rfc"`: a cache MUST NOT serve a stale response its origin
    /// prohibited (must-revalidate, no-cache, ...), "even when disconnected": online it asks, offline and
    /// cache-only it answers 504. Fresh answers are unaffected; with the default (`always`) the stored
    /// answer is served offline (the table above).
    #[test]
    fn rfc_mode_never_serves_a_prohibited_stale_answer_even_disconnected() {
        let d = Directives {
            stale_forbidden: true,
            ..PLAIN
        };
        for s in [Http, StaleWhileRevalidate, CacheFirst, NetworkFirst] {
            for stored in [Stored::Stale, Stored::Invalidated] {
                assert_eq!(decide(stored, s, true, d), Revalidate, "{s:?} {stored:?}");
                assert_eq!(decide(stored, s, false, d), StaleForbidden, "{s:?} {stored:?}");
            }
            assert_eq!(decide(Stored::Fresh, s, false, d), Serve(Hit));
        }
        assert_eq!(decide(Stored::Stale, CacheOnly, true, d), StaleForbidden);
        let oic = Directives {
            only_if_cached: true,
            ..d
        };
        assert_eq!(decide(Stored::Stale, Http, false, oic), StaleForbidden);
        assert_eq!(decide(Stored::Fresh, Http, false, oic), Serve(Hit));
    }

    /// RFC 9211 vocabulary for each outcome.
    #[test]
    fn cache_status_members() {
        assert_eq!(Hit.cache_status(Some(200), false, None), "Outpost; hit");
        assert_eq!(
            Offline.cache_status(Some(200), false, None),
            "Outpost; hit; detail=offline"
        );
        assert_eq!(Stale.cache_status(Some(200), false, None), "Outpost; hit; detail=stale");
        assert_eq!(
            Miss.cache_status(Some(200), true, None),
            "Outpost; fwd=uri-miss; fwd-status=200; stored"
        );
        assert_eq!(
            Revalidated.cache_status(Some(200), false, None),
            "Outpost; fwd=stale; fwd-status=304"
        );
        assert_eq!(
            Miss.cache_status(None, false, Some("offline")),
            "Outpost; fwd=uri-miss; detail=offline"
        );
        assert_eq!(
            Queued.cache_status(Some(202), false, None),
            "Outpost; fwd=bypass; detail=queued"
        );
    }

    #[test]
    fn labels_are_stable() {
        let all = [Hit, Miss, Stale, Revalidated, Offline, Queued, Outcome::Bypass];
        let labels: Vec<_> = all.iter().map(|o| o.as_str()).collect();
        assert_eq!(
            labels,
            ["HIT", "MISS", "STALE", "REVALIDATED", "OFFLINE", "QUEUED", "BYPASS"]
        );
        assert!(Miss.from_network() && Revalidated.from_network());
        assert!(!Hit.from_network() && !Stale.from_network() && !Offline.from_network());
    }
}
