//! Retry timing: capped exponential backoff with full jitter, and `Retry-After`.
//!
//! Full jitter (a uniform delay in `[0, min(cap, base·2^attempt)]`) spreads retries of many devices
//! coming back online at once, instead of synchronising them.

use std::time::{Duration, SystemTime};

use http::{header, HeaderMap};
use rand::Rng;

/// The ceiling of the delay before attempt `attempt + 1` (0-based count of failures so far).
pub fn ceiling(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let factor = 1u64.checked_shl(attempt.min(63)).unwrap_or(u64::MAX);
    let ms = (base.as_millis() as u64).saturating_mul(factor);
    Duration::from_millis(ms).min(cap)
}

/// A full-jitter delay for `attempt`.
pub fn delay(attempt: u32, base: Duration, cap: Duration, rng: &mut impl Rng) -> Duration {
    let max = ceiling(attempt, base, cap).as_millis() as u64;
    Duration::from_millis(rng.random_range(0..=max))
}

/// `Retry-After` as delta-seconds or an HTTP date (RFC 9110 §10.2.3), relative to `now`.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let v = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn the_ceiling_doubles_until_the_cap() {
        let base = Duration::from_secs(1);
        let cap = Duration::from_secs(60);
        let got: Vec<u64> = (0..9).map(|a| ceiling(a, base, cap).as_secs()).collect();
        assert_eq!(got, vec![1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(ceiling(200, base, cap), cap, "no overflow at huge attempt counts");
    }

    #[test]
    fn full_jitter_stays_within_the_ceiling_and_spreads() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(10);
        for attempt in 0..12 {
            let samples: Vec<Duration> = (0..200).map(|_| delay(attempt, base, cap, &mut rng)).collect();
            let ceil = ceiling(attempt, base, cap);
            assert!(samples.iter().all(|d| *d <= ceil), "attempt {attempt}");
            let distinct: std::collections::HashSet<_> = samples.iter().collect();
            assert!(distinct.len() > 20, "attempt {attempt}: jitter spreads the retries");
        }
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut h = HeaderMap::new();
        h.insert(header::RETRY_AFTER, "120".parse().unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(120)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        h.insert(header::RETRY_AFTER, later.parse().unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(30)));
        h.insert(header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h, now), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_schedule_under_a_paused_clock_waits_exactly_its_delays() {
        // The replay worker sleeps on tokio time; with the clock paused, the schedule is exact.
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let base = Duration::from_secs(1);
        let cap = Duration::from_secs(30);
        let start = tokio::time::Instant::now();
        let mut expected = Duration::ZERO;
        for attempt in 0..6 {
            let d = delay(attempt, base, cap, &mut rng);
            expected += d;
            tokio::time::sleep(d).await;
        }
        assert_eq!(tokio::time::Instant::now() - start, expected);
        assert!(expected <= Duration::from_secs(1 + 2 + 4 + 8 + 16 + 30));
    }
}
