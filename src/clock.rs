//! The one wall clock Outpost reads: freshness, ages, queue times, backoff, `max_unused` and retention
//! all take "now" from here, never from `SystemTime::now()` directly.
//!
//! Promise: in a normal run this is the system's wall clock. Under tokio's paused clock (tests built with
//! `tokio/test-util` that call `tokio::time::pause()` or use `start_paused`), wall time stands still
//! with tokio's time and moves by exactly what `tokio::time::advance` (or auto-advance) adds, so tests
//! of expiry and backoff wait for no real time. The offset is tokio's `Instant` minus std's `Instant`,
//! which is zero (to within the two reads) whenever the clock is not paused.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The current wall time.
pub fn now() -> SystemTime {
    let real = SystemTime::now();
    let std_now = std::time::Instant::now();
    let tokio_now = tokio::time::Instant::now().into_std();
    if tokio_now >= std_now {
        real + (tokio_now - std_now)
    } else {
        real.checked_sub(std_now - tokio_now).unwrap_or(real)
    }
}

/// The current wall time in Unix milliseconds.
pub fn now_ms() -> u64 {
    to_ms(now())
}

/// A wall time in Unix milliseconds (0 before 1970).
pub fn to_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Unix milliseconds as a wall time.
pub fn from_ms(v: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_a_paused_runtime_it_is_the_system_clock() {
        let a = SystemTime::now();
        let n = now();
        let b = SystemTime::now();
        assert!(n >= a.checked_sub(Duration::from_millis(5)).unwrap() && n <= b + Duration::from_millis(5));
        assert_eq!(from_ms(to_ms(from_ms(1234))), from_ms(1234));
    }

    #[tokio::test(start_paused = true)]
    async fn under_a_paused_runtime_wall_time_moves_only_with_tokio_time() {
        let t0 = now();
        std::thread::sleep(Duration::from_millis(30));
        let t1 = now();
        assert!(
            t1.duration_since(t0).unwrap_or_default() < Duration::from_millis(5),
            "real time leaked in"
        );
        tokio::time::advance(Duration::from_secs(3600)).await;
        let t2 = now();
        let moved = t2.duration_since(t1).unwrap();
        assert!(
            moved >= Duration::from_secs(3600) && moved < Duration::from_secs(3601),
            "{moved:?}"
        );
    }
}
