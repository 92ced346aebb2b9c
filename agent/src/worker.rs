//! The worker: turns accepted requests into events.
//!
//! It takes accepted requests of script integrations (from ingress after each 202, and from the
//! inbox at start-up for requests a previous process accepted but never processed), runs the
//! script, and records the outcome with [`crate::store::Store::complete`]. Scripts run on the
//! script pool's own threads; this module only awaits them. `create_event` requests do not pass
//! through here: ingress builds their event and stores it straight in the outbox.
//!
//! What it does not do: it never talks to the central (the relay reads the outbox) and never
//! answers HTTP.

use std::sync::Arc;
use std::time::Duration;

use integration::action::{failed, run_action};
use integration::backlog::Backlog;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::live::{LiveConfig, ScriptRunner};
use crate::metrics::Metrics;
use crate::store::{Accepted, Store};

/// One accepted request for the worker. New `create_event` requests never come here (ingress
/// writes their event straight to the outbox); only ones left in the inbox by an older version do.
pub struct Job {
    /// The request as stored in the inbox.
    pub accepted: Accepted,
    /// Its room in the backlog (none for requests resumed at start-up), freed when the job is
    /// dropped after processing.
    pub backlog: Option<OwnedSemaphorePermit>,
}

/// The worker's queue, as ingress and start-up hand it requests. Cheap to clone.
#[derive(Clone)]
pub struct WorkQueue {
    jobs: mpsc::UnboundedSender<Job>,
    /// Room for request bodies accepted and not processed yet (`[scripts] backlog_kib`, fixed
    /// at start): the job queue and sled's copy of the inbox hold them.
    backlog: Backlog,
}

impl WorkQueue {
    /// A queue with `backlog_kib` of room, and the receiving end for [`run`].
    pub fn new(backlog_kib: usize) -> (Self, mpsc::UnboundedReceiver<Job>) {
        let (jobs, receiver) = mpsc::unbounded_channel();
        let queue = Self {
            jobs,
            backlog: Backlog::new(backlog_kib),
        };
        (queue, receiver)
    }

    /// Wait until the backlog has room for a request body of `bytes`, so script integrations
    /// accept no faster than their scripts run; `None`: the caller answers 503. The permit
    /// travels with the [`Job`] and frees its room when the request is processed.
    pub async fn reserve_backlog(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        self.backlog.reserve(bytes).await
    }

    /// Hand an accepted request to the worker.
    pub fn enqueue(&self, job: Job) {
        // A closed channel means shutdown: the entry stays in the inbox for the next start.
        let _ = self.jobs.send(job);
    }
}

/// What the worker uses of the running agent.
pub struct Worker {
    /// Where outcomes are recorded.
    pub store: Store,
    /// The integrations in force.
    pub live: LiveConfig,
    /// The script threads.
    pub scripts: ScriptRunner,
    /// Processed-request counters.
    pub metrics: Arc<Metrics>,
    /// How many requests are processed at once.
    pub concurrency: usize,
    /// Where the activity of the central's integrations goes upstream.
    pub uplink: Arc<crate::managed::ActivityUplink>,
}

/// Process jobs until shutdown, then let in-flight runs finish. Requests not started by then stay
/// in the inbox and are processed at the next start.
pub async fn run(
    worker: Worker,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(worker.concurrency));
    let worker = Arc::new(worker);
    let mut running = JoinSet::new();
    loop {
        let job = tokio::select! {
            job = jobs.recv() => match job { Some(job) => job, None => break },
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let worker = worker.clone();
        let stop = shutdown.clone();
        running.spawn(async move {
            process(&worker, job, stop).await;
            drop(permit);
        });
        while running.try_join_next().is_some() {}
    }
    while running.join_next().await.is_some() {}
}

/// How often a request whose events do not fit the store looks for room again.
const ROOM_POLL: Duration = Duration::from_millis(100);

async fn process(worker: &Worker, job: Job, mut stop: watch::Receiver<bool>) {
    let request = &job.accepted.request;
    let span = tracing::info_span!("process", request_id = %request.request_id, integration = %request.integration_id);
    async {
        let started = std::time::Instant::now();
        let live = worker.live.get();
        let integration = live.integrations.get(&request.integration_id).cloned();
        // Served but not from agent.toml: the central manages it and wants its activity.
        let managed = integration.is_some()
            && !live
                .config
                .integrations
                .contains_key(&request.integration_id);
        drop(live);
        let mut processed = match integration {
            None => failed(request, "the integration is no longer configured".into()),
            Some(integration) => run_action(&worker.scripts, &integration, request).await,
        };
        let failure = processed.failure.clone();
        let events = processed.events.len();
        worker
            .metrics
            .count_processed(failure.is_some(), started.elapsed());
        // The events count against the store's bounds: wait while the relay makes room.
        // A shutdown meanwhile leaves the request in the inbox, to run again at the next start.
        let mut waited = false;
        while !worker.store.has_room_for(&job.accepted, &processed) {
            if !waited {
                tracing::warn!(
                    events,
                    "the store is full; the request's events wait for room"
                );
                waited = true;
            }
            tokio::select! {
                _ = tokio::time::sleep(ROOM_POLL) => {}
                _ = stop.wait_for(|stop| *stop) => return,
            }
        }
        let upstream = managed.then(|| processed.activity.render().clone());
        match worker.store.complete(&job.accepted, processed) {
            Ok(_) => {
                if let Some(entry) = upstream {
                    worker.uplink.offer(entry);
                }
                match failure {
                    Some(reason) => tracing::warn!(%reason, "request failed"),
                    None => tracing::debug!(events, "processed"),
                }
            }
            Err(error) => {
                tracing::error!(%error, "cannot record the outcome; it will be retried at restart")
            }
        }
    }
    .instrument(span)
    .await
}
