//! A small, bounded pool of OS threads for argon2 verifications.
//!
//! An argon2 check costs tens of milliseconds of CPU and ~19 MiB of memory. Run on a tokio worker
//! it stalls every other request on that worker; run on tokio's blocking pool it grows up to 512
//! threads under a flood of wrong passwords. This pool keeps both bounded: a fixed number of
//! threads (default: the number of cores) and a bounded queue; work beyond the queue is refused at
//! once ([`PoolBusy`]) so ingress can answer 429 instead of piling up.
//!
//! What it does NOT do: decide what to verify or cache results (the authenticator does), or
//! prioritise callers.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};

type Work = Box<dyn FnOnce() + Send>;

/// The pool's queue was full (or its threads are gone): the caller should answer 429.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many credential checks in progress")]
pub struct PoolBusy;

/// Fixed threads fed by a bounded queue. Dropping the pool (a config reload builds a new one)
/// closes the queue; the threads finish the queued work and exit.
pub struct VerifyPool {
    sender: SyncSender<Work>,
    threads: usize,
    queue: usize,
}

impl std::fmt::Debug for VerifyPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyPool")
            .field("threads", &self.threads)
            .field("queue", &self.queue)
            .finish()
    }
}

impl VerifyPool {
    /// Start `threads` threads (at least one) taking work from a queue of `queue` slots.
    pub fn new(threads: usize, queue: usize) -> Self {
        let threads = threads.max(1);
        let (sender, receiver) = sync_channel::<Work>(queue);
        let receiver = Arc::new(Mutex::new(receiver));
        for n in 0..threads {
            let receiver = Arc::clone(&receiver);
            let spawned = std::thread::Builder::new()
                .name(format!("xmagent-verify-{n}"))
                .spawn(move || work_loop(&receiver));
            if let Err(error) = spawned {
                tracing::error!(%error, "could not start a credential verification thread");
            }
        }
        Self {
            sender,
            threads,
            queue,
        }
    }

    /// Run `work` on a pool thread and wait for its result without blocking the async runtime.
    /// Refused with [`PoolBusy`] when the queue is full rather than waiting for room.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, PoolBusy> {
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Work = Box::new(move || {
            let _ = done.send(work());
        });
        match self.sender.try_send(job) {
            Ok(()) => result.await.map_err(|_| PoolBusy),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => Err(PoolBusy),
        }
    }
}

fn work_loop(receiver: &Mutex<Receiver<Work>>) {
    loop {
        let next = receiver
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .recv();
        match next {
            Ok(work) => work(),
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn runs_work_and_returns_its_result() {
        let pool = VerifyPool::new(2, 4);
        assert_eq!(pool.run(|| 6 * 7).await, Ok(42));
    }

    #[tokio::test]
    async fn refuses_work_beyond_the_queue_instead_of_waiting() {
        let pool = Arc::new(VerifyPool::new(1, 1));
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let gate = Arc::new(Mutex::new(gate));
        // One job occupies the thread, one fills the queue slot.
        let mut held = Vec::new();
        for _ in 0..2 {
            let (pool, gate) = (Arc::clone(&pool), Arc::clone(&gate));
            held.push(tokio::spawn(async move {
                pool.run(move || {
                    let _ = gate.lock().unwrap().recv_timeout(Duration::from_secs(5));
                })
                .await
            }));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(pool.run(|| ()).await, Err(PoolBusy));
        release.send(()).unwrap();
        release.send(()).unwrap();
        for job in held {
            assert_eq!(job.await.unwrap(), Ok(()));
        }
        assert_eq!(
            pool.run(|| 1).await,
            Ok(1),
            "room again once the work is done"
        );
    }
}
