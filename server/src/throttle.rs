//! Remembers failed credential checks per (source address, user name) and refuses further tries
//! for a while once a pair has failed too often.
//!
//! Without it, one client can make the agent compute argon2 hashes as fast as it can send wrong
//! passwords, and guess passwords at that rate too. A throttled pair is refused before any hash is
//! computed (ingress answers 429 + `Retry-After`). Keying on the pair, not on the name alone,
//! means an attacker cannot lock a real user out from another address.
//!
//! What it does NOT do: remember the names or addresses themselves (keys are SHA-256 digests), or
//! grow without bound (at most [`CAPACITY`] pairs; the oldest windows are forgotten first).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// How many (source, name) pairs are remembered at most.
pub const CAPACITY: usize = 10_000;

/// Failure counts per (source, name) within a sliding-start window.
#[derive(Debug)]
pub struct FailureThrottle {
    max_failures: u32,
    window: Duration,
    pairs: Mutex<HashMap<[u8; 32], Failures>>,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    since: Instant,
}

impl FailureThrottle {
    /// Allow `max_failures` failed checks per pair within `window`; after that the pair is
    /// refused until the window (counted from its first failure) has passed.
    pub fn new(max_failures: u32, window: Duration) -> Self {
        Self {
            max_failures: max_failures.max(1),
            window,
            pairs: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(retry_after)` if the pair has used up its failures in the current window.
    pub fn check(&self, source: IpAddr, name: &str, now: Instant) -> Result<(), Duration> {
        let key = pair_key(source, name);
        let pairs = lock(&self.pairs);
        match pairs.get(&key) {
            Some(f) if f.count >= self.max_failures => {
                let elapsed = now.saturating_duration_since(f.since);
                if elapsed < self.window {
                    Err(self.window - elapsed)
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }

    /// Count one failed check of the pair.
    pub fn failed(&self, source: IpAddr, name: &str, now: Instant) {
        let key = pair_key(source, name);
        let mut pairs = lock(&self.pairs);
        if pairs.len() >= CAPACITY && !pairs.contains_key(&key) {
            let window = self.window;
            pairs.retain(|_, f| now.saturating_duration_since(f.since) < window);
            if pairs.len() >= CAPACITY {
                let mut starts: Vec<Instant> = pairs.values().map(|f| f.since).collect();
                let cut = (CAPACITY / 8).min(starts.len().saturating_sub(1));
                let (_, threshold, _) = starts.select_nth_unstable(cut);
                let threshold = *threshold;
                pairs.retain(|_, f| f.since > threshold);
            }
        }
        let entry = pairs.entry(key).or_insert(Failures {
            count: 0,
            since: now,
        });
        if now.saturating_duration_since(entry.since) >= self.window {
            *entry = Failures {
                count: 0,
                since: now,
            };
        }
        entry.count = entry.count.saturating_add(1);
    }

    /// Forget the pair's failures after a successful check.
    pub fn succeeded(&self, source: IpAddr, name: &str) {
        lock(&self.pairs).remove(&pair_key(source, name));
    }

    /// How many pairs are remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.pairs).len()
    }
}

/// Every critical section leaves the map consistent, so a poisoned lock is still usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn pair_key(source: IpAddr, name: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(source.to_string().as_bytes());
    hasher.update([0u8]);
    hasher.update(name.as_bytes());
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn throttles_a_pair_after_its_failures_until_the_window_passes() {
        let throttle = FailureThrottle::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(throttle.check(A, "alice", t0).is_ok());
            throttle.failed(A, "alice", t0);
        }
        let retry = throttle.check(A, "alice", t0 + Duration::from_secs(10));
        assert_eq!(retry, Err(Duration::from_secs(50)));
        assert!(
            throttle.check(B, "alice", t0).is_ok(),
            "other sources unaffected"
        );
        assert!(
            throttle.check(A, "bob", t0).is_ok(),
            "other names unaffected"
        );
        assert!(throttle
            .check(A, "alice", t0 + Duration::from_secs(60))
            .is_ok());
    }

    #[test]
    fn success_forgets_the_failures() {
        let throttle = FailureThrottle::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        throttle.failed(A, "alice", t0);
        throttle.succeeded(A, "alice");
        throttle.failed(A, "alice", t0);
        assert!(throttle.check(A, "alice", t0).is_ok());
    }

    #[test]
    fn stays_bounded() {
        let throttle = FailureThrottle::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..CAPACITY + 100 {
            throttle.failed(A, &format!("user{i}"), t0 + Duration::from_millis(i as u64));
        }
        assert!(throttle.len() <= CAPACITY);
    }
}
