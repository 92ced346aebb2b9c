//! A per-integration request rate limit (the integration's `rate_limit_per_minute`), so one noisy
//! caller cannot fill the store or the script backlog.
//!
//! A token bucket: it holds up to the per-minute number of requests and refills evenly over the
//! minute, so a burst up to the limit passes and a steady rate above it is cut to the limit. A
//! refused request gets how long until the next one would pass (ingress answers 429 with
//! `Retry-After`, having stored nothing).
//!
//! What it does NOT do: limit per caller or per source (the auth throttle limits failed
//! credentials per source), or survive a config reload (a reload starts full buckets).

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The bucket of one integration.
#[derive(Debug)]
pub struct RateLimit {
    per_minute: u32,
    bucket: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled_at: Instant,
}

impl RateLimit {
    /// Allow `per_minute` requests a minute (at least one), starting with a full bucket.
    pub fn per_minute(per_minute: u32, now: Instant) -> Self {
        let per_minute = per_minute.max(1);
        Self {
            per_minute,
            bucket: Mutex::new(Bucket {
                tokens: f64::from(per_minute),
                refilled_at: now,
            }),
        }
    }

    /// The configured requests a minute, so the definition can be sent on unchanged.
    pub fn requests_per_minute(&self) -> u32 {
        self.per_minute
    }

    /// Take one request's worth, or say how long until one is available.
    pub fn try_acquire(&self, now: Instant) -> Result<(), Duration> {
        let capacity = f64::from(self.per_minute);
        let per_second = capacity / 60.0;
        let mut bucket = self.bucket.lock().unwrap_or_else(PoisonError::into_inner);
        let elapsed = now.saturating_duration_since(bucket.refilled_at);
        bucket.tokens = (bucket.tokens + elapsed.as_secs_f64() * per_second).min(capacity);
        bucket.refilled_at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / per_second))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_a_burst_up_to_the_limit_then_refills_over_the_minute() {
        let t0 = Instant::now();
        let limit = RateLimit::per_minute(3, t0);
        for _ in 0..3 {
            assert!(limit.try_acquire(t0).is_ok());
        }
        let wait = limit
            .try_acquire(t0)
            .expect_err("fourth in the same instant");
        assert!(
            wait > Duration::from_secs(19) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        assert!(limit.try_acquire(t0 + Duration::from_secs(20)).is_ok());
        assert!(limit.try_acquire(t0 + Duration::from_secs(21)).is_err());
        // A long pause refills to the limit, not beyond.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert!(limit.try_acquire(later).is_ok());
        }
        assert!(limit.try_acquire(later).is_err());
    }
}
