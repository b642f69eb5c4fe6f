//! Delays between retries: exponential backoff with full jitter.
//!
//! The `n`th retry of a transient failure waits a uniformly random time up to
//! `min(max, initial · 2^(n-1))` ("full jitter"), so that many clients that failed together
//! do not retry together. The aggregator's uploads and the agent's pushes both retry on
//! this schedule, each with its own bounds.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Delays between attempts: exponential with full jitter for transient errors, about
/// `permanent_max` for permanent ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    /// Upper bound of the first delay (default 200 ms); doubles per attempt.
    pub initial: Duration,
    /// Cap of the transient delay (default 60 s).
    pub max: Duration,
    /// Delay after a permanent error (default 5 min, jittered down to half of it).
    /// Permanent errors keep being retried, slowly, since an operator may fix what is
    /// wrong (a bucket policy, a missing bucket).
    pub permanent_max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(60),
            permanent_max: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    /// Returns the longest delay before retry number `attempt` (1 = after the first
    /// failure) of a transient error: `min(max, initial · 2^(attempt-1))`, with at most 31
    /// doublings.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        self.initial.saturating_mul(1u32 << doublings).min(self.max)
    }

    /// Returns the delay before retry number `attempt` (1 = after the first failure) of a
    /// transient error: uniform in `[0, min(max, initial · 2^(attempt-1))]`.
    pub fn transient_delay(&self, attempt: u32) -> Duration {
        jitter(Duration::ZERO, self.ceiling(attempt))
    }

    /// Returns [`Backoff::transient_delay`], raised to `floor` when it is shorter (or to
    /// the ceiling, when that is below `floor`): retries do not come back within a few
    /// milliseconds.
    pub fn transient_delay_at_least(&self, attempt: u32, floor: Duration) -> Duration {
        let ceiling = self.ceiling(attempt);
        jitter(Duration::ZERO, ceiling).max(floor.min(ceiling))
    }

    /// Returns the delay after a permanent error: uniform in
    /// `[permanent_max / 2, permanent_max]`.
    pub fn permanent_delay(&self) -> Duration {
        jitter(self.permanent_max / 2, self.permanent_max)
    }
}

/// Returns a uniformly random duration in `[low, high]` (nanosecond resolution); `high`
/// when `high <= low`.
pub fn jitter(low: Duration, high: Duration) -> Duration {
    if high <= low {
        return high;
    }
    let span = u64::try_from((high - low).as_nanos()).unwrap_or(u64::MAX);
    let offset = if span == u64::MAX {
        next_random()
    } else {
        next_random() % (span + 1)
    };
    low + Duration::from_nanos(offset)
}

/// A per-thread SplitMix64 generator: jitter only needs to decorrelate retries, not
/// cryptographic quality.
fn next_random() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(random_seed());
    }
    STATE.with(|state| {
        let next = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        state.set(next);
        let mut z = next;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}

/// Seeds from std's per-process random hash keys, the clock, the thread and a counter.
fn random_seed() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u128(nanos);
    hasher.write(format!("{:?}", std::thread::current().id()).as_bytes());
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_delay_grows_and_is_capped() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
            permanent_max: Duration::from_secs(10),
        };
        for attempt in 1..200 {
            let cap = Duration::from_millis(100)
                .saturating_mul(1u32 << (attempt - 1).min(31))
                .min(Duration::from_secs(2));
            assert_eq!(b.ceiling(attempt), cap);
            for _ in 0..20 {
                let d = b.transient_delay(attempt);
                assert!(d <= cap, "attempt {attempt}: {d:?} > {cap:?}");
            }
        }
        // Full jitter: over many draws the delays spread over the range.
        let draws: Vec<Duration> = (0..1000).map(|_| b.transient_delay(30)).collect();
        assert!(draws.iter().any(|d| *d < Duration::from_millis(500)));
        assert!(draws.iter().any(|d| *d > Duration::from_millis(1500)));
    }

    #[test]
    fn attempt_zero_and_huge_attempts_are_bounded() {
        let b = Backoff::default();
        assert_eq!(b.ceiling(0), Duration::from_millis(200));
        assert_eq!(b.ceiling(1), Duration::from_millis(200));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(60));
        let unbounded = Backoff {
            max: Duration::MAX,
            ..Backoff::default()
        };
        assert_eq!(
            unbounded.ceiling(u32::MAX),
            Duration::from_millis(200) * (1u32 << 31)
        );
    }

    #[test]
    fn floor_raises_short_delays_up_to_the_ceiling() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            permanent_max: Duration::from_secs(30),
        };
        let floor = Duration::from_millis(10);
        let draws: Vec<Duration> = (0..2000)
            .map(|_| b.transient_delay_at_least(1, floor))
            .collect();
        assert!(
            draws
                .iter()
                .all(|d| *d >= floor && *d <= Duration::from_millis(100))
        );
        assert!(draws.iter().any(|d| *d > Duration::from_millis(50)));
        // A ceiling below the floor is the delay.
        let tiny = Backoff {
            initial: Duration::from_millis(2),
            max: Duration::from_millis(3),
            ..b
        };
        for _ in 0..100 {
            assert_eq!(
                tiny.transient_delay_at_least(1, floor),
                Duration::from_millis(2)
            );
        }
    }

    #[test]
    fn permanent_delay_is_between_half_and_max() {
        let b = Backoff::default();
        for _ in 0..1000 {
            let d = b.permanent_delay();
            assert!(d >= Duration::from_secs(150) && d <= Duration::from_secs(300));
        }
    }

    #[test]
    fn jitter_stays_in_its_range() {
        let low = Duration::from_millis(5);
        let high = Duration::from_millis(7);
        for _ in 0..1000 {
            let d = jitter(low, high);
            assert!(d >= low && d <= high, "{d:?}");
        }
        assert_eq!(jitter(high, low), low);
        assert_eq!(jitter(Duration::ZERO, Duration::ZERO), Duration::ZERO);
        let d = jitter(Duration::ZERO, Duration::MAX);
        assert!(d <= Duration::from_nanos(u64::MAX));
    }

    #[test]
    fn random_is_not_constant() {
        let a: Vec<u64> = (0..8).map(|_| next_random()).collect();
        let mut dedup = a.clone();
        dedup.sort_unstable();
        dedup.dedup();
        assert_eq!(dedup.len(), a.len());
    }
}
