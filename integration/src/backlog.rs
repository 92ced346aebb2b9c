//! The bound on request bodies accepted for scripts and not processed yet (`[scripts]
//! backlog_kib`): ingress can take requests faster than scripts run, and without a bound the
//! difference piles up in memory for as long as the load lasts. A request waits for room (the
//! client sees the wait as latency) and gets 503 when none comes in time.
//!
//! What it does not do: queue the requests themselves (each host keeps its own).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a request waits for backlog room before it is refused.
pub const BACKLOG_WAIT: Duration = Duration::from_secs(10);

/// Room for request bodies, in KiB. Cheap to clone; clones share the room.
#[derive(Clone)]
pub struct Backlog {
    room: Arc<Semaphore>,
    kib: usize,
}

impl Backlog {
    /// `kib` of room.
    pub fn new(kib: usize) -> Self {
        Self {
            room: Arc::new(Semaphore::new(kib)),
            kib,
        }
    }

    /// Wait until there is room for a body of `bytes` (a body larger than the whole backlog
    /// waits for all of it); `None` after [`BACKLOG_WAIT`]. The permit frees the room when
    /// dropped, after processing.
    pub async fn reserve(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let kib = (bytes / 1024 + 1).min(self.kib) as u32;
        let acquire = self.room.clone().acquire_many_owned(kib);
        tokio::time::timeout(BACKLOG_WAIT, acquire).await.ok()?.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn room_is_shared_and_freed() {
        let backlog = Backlog::new(2);
        let first = backlog.reserve(1500).await.expect("room for 2 KiB");
        // No room left: the request waits (here cut short after 50 ms).
        let waiting = tokio::time::timeout(Duration::from_millis(50), backlog.reserve(10)).await;
        assert!(waiting.is_err(), "a full backlog gave room");
        drop(first);
        // Larger than the whole backlog: it takes all of it.
        assert!(backlog.clone().reserve(1 << 20).await.is_some());
    }
}
