//! The running configuration and the script threads, as small handles that ingress, the worker
//! and the daemon share without sharing the daemon's state: [`LiveConfig`] (the snapshot in
//! force, swapped whole on SIGHUP) and [`ScriptRunner`] (the script pool in force, counted for
//! `/metrics` and the watchdog; it is the agent's [`ScriptHost`]).
//!
//! What it does not do: load or validate the configuration (`config`) or decide when to reload
//! (`daemon`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use integration::action::ScriptHost;
use integration::definition::Integration;
use integration::endpoints::Endpoints;

use crate::config::Loaded;
use crate::metrics::Metrics;

/// The configuration currently served, with what was built from it. Replaced whole on reload.
pub struct Live {
    /// The resolved configuration.
    pub config: Arc<Loaded>,
    /// The HTTP client scripts use, built from `config.endpoints`.
    pub endpoints: Arc<Endpoints>,
    /// Every integration served: those of `config` and those the central sent (see
    /// `crate::managed::merge`).
    pub integrations: HashMap<String, Arc<Integration>>,
}

/// The snapshot in force. Cheap to clone; every clone sees a reload.
#[derive(Clone)]
pub struct LiveConfig(Arc<RwLock<Arc<Live>>>);

impl LiveConfig {
    /// A handle serving `live` until the first [`LiveConfig::replace`].
    pub fn new(live: Live) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(live))))
    }

    /// The snapshot now; a request keeps the one it started with.
    pub fn get(&self) -> Arc<Live> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Serve `live` from now on (reload).
    pub fn replace(&self, live: Live) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(live);
    }
}

/// The script threads in force, and the endpoints each run may reach. Cheap to clone.
#[derive(Clone)]
pub struct ScriptRunner {
    pool: Arc<RwLock<Arc<scripts::ScriptPool>>>,
    live: LiveConfig,
    metrics: Arc<Metrics>,
}

impl ScriptRunner {
    /// Runs on `pool`, with the endpoints of `live`, counted in `metrics`.
    pub fn new(pool: scripts::ScriptPool, live: LiveConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            pool: Arc::new(RwLock::new(Arc::new(pool))),
            live,
            metrics,
        }
    }

    /// Run on `pool` from now on; runs in progress finish on the old one (reload of
    /// `[scripts]`).
    pub fn replace_pool(&self, pool: scripts::ScriptPool) {
        *self.pool.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(pool);
    }
}

/// Counts a script run as finished when dropped.
struct FinishedRun<'a>(&'a AtomicU64);

impl Drop for FinishedRun<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

impl ScriptHost for ScriptRunner {
    /// Runs on the pool in force (a reload may replace it; a run keeps the one it started on),
    /// with the integration's endpoints (its built-in `xMatters` credential covers its own
    /// events and those of `script_events_of`), counted for the watchdog and `/metrics`.
    async fn run_script(
        &self,
        integration: &Integration,
        program: Arc<scripts::Program>,
        request: scripts::ScriptRequest,
    ) -> scripts::Outcome {
        let http = Arc::new(
            self.live
                .get()
                .endpoints
                .for_integration(&integration.script_scope()),
        );
        let pool = self.pool.read().unwrap_or_else(|p| p.into_inner()).clone();
        let runs = &self.metrics.script_runs;
        runs.started.fetch_add(1, Ordering::Relaxed);
        // Counted as finished however the run ends (even if this future is dropped).
        let _finished = FinishedRun(&runs.finished);
        let outcome = pool.run(program, request, http).await;
        self.metrics
            .observe_script(outcome.duration, outcome.error.as_ref().map(|e| e.kind));
        outcome
    }
}
