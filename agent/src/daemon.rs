//! The running agent: wires config, store, ingress, worker, script pool and relay together, and
//! owns start-up, reload (SIGHUP), the health checks behind the systemd watchdog, and graceful
//! shutdown.
//!
//! Reload applies every section it can while requests flow: users, integrations, scripts and
//! libraries, endpoints, `[scripts]` limits and threads (a new script pool; runs in progress
//! finish on the old one), `[store]` bounds, `[central]` (the relay reconnects when the section
//! changed). Keys that only a restart can change ([`RESTART_ONLY`]) keep their running value;
//! reload logs them and `xmagent status` says "restart needed".
//!
//! Integrations the central sends ([`crate::managed`]) are validated off the runtime, kept in
//! the data directory and served next to the `agent.toml` ones; a set that does not validate is
//! refused with a logged reason and the previous one keeps serving. The kept set is served at
//! start, before the relay connects.
//!
//! Shutdown order matters for invariant 1 and 2: stop accepting (in-flight requests still get
//! their flush and their 202), stop the worker (running scripts finish; unstarted requests stay in
//! the inbox), stop the relay (it waits briefly for outstanding acks), flush the store.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use anyhow::Context;
use hyper::{Response, StatusCode};
use server::exit::ConfigError;
use server::http_util;
use server::serve::Body;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use integration::auth::SecretDigest;
use integration::definition::{self, Integration};
use integration::endpoints::{BuiltinXmatters, Endpoints};
use protocol::ManagedIntegrations;

use crate::config::{self, Loaded};
use crate::ingress::{AgentState, Ingress};
use crate::live::{Live, LiveConfig, ScriptRunner};
use crate::managed;
use crate::metrics::{Gauge, Metrics};
use crate::relay::{self, RelayStatus};
use crate::store::{Recovery, Store};
use crate::worker::{Job, WorkQueue, Worker};

/// The daemon's own state: what reload, the watchdog and shutdown need. Ingress and the worker
/// get narrow handles instead ([`Ingress`], [`Worker`]).
pub struct Shared {
    live: LiveConfig,
    /// The durable store.
    pub store: Store,
    /// The script threads; the pool is replaced when a reload changes `[scripts]`.
    scripts: ScriptRunner,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    relay_status: watch::Receiver<RelayStatus>,
    relay_status_tx: watch::Sender<RelayStatus>,
    /// The running relay task; replaced when a reload changes `[central]`.
    relay: tokio::sync::Mutex<Option<RelayTask>>,
    /// The `[central]` table the running relay was started from, to notice a change on reload.
    central_section: Mutex<Option<toml::Value>>,
    /// Keys changed in the file that keep their running value until a restart.
    restart_needed: Mutex<Vec<&'static str>>,
    /// Why the last reload was refused (cleared by a successful one).
    reload_error: Mutex<Option<String>>,
    started: Instant,
    /// The script threads' last sign of progress (watchdog).
    script_progress: Mutex<ScriptProgress>,
    /// The integrations the central sent that this agent serves.
    managed: Mutex<ManagedSet>,
    /// Where the relay hands over the integrations the central sends.
    managed_sink: Arc<relay::IntegrationsSink>,
    /// The activity of the central's integrations, on its way to the central.
    uplink: Arc<managed::ActivityUplink>,
    /// Signalled when the integrations in force change, so the relay reports them soon.
    integrations_changed: Arc<tokio::sync::Notify>,
}

/// The central's set in force: as sent, and resolved against the running configuration.
#[derive(Default)]
struct ManagedSet {
    sent: Option<Arc<ManagedIntegrations>>,
    resolved: HashMap<String, Arc<Integration>>,
}

impl Shared {
    /// The current configuration snapshot.
    pub fn live(&self) -> Arc<Live> {
        self.live.get()
    }

    /// Serve `config` with the central's integrations of `managed` next to its own.
    fn serve(&self, config: Arc<Loaded>, endpoints: Arc<Endpoints>, managed: &ManagedSet) {
        let integrations = managed::merge(&config.integrations, &managed.resolved);
        self.live.replace(Live {
            config,
            endpoints,
            integrations,
        });
        self.integrations_changed.notify_one();
    }

    /// Validate the central's `set` (scripts compiled) and serve it instead of the previous one,
    /// keeping it in the data directory first when `keep`. A set that does not validate is
    /// refused with the reason logged, and the previous one keeps serving. Blocking (it
    /// compiles scripts): call it off the async runtime.
    fn apply_managed(&self, set: Arc<ManagedIntegrations>, keep: bool) {
        let mut managed = self.managed.lock().unwrap_or_else(|p| p.into_inner());
        if managed
            .sent
            .as_ref()
            .is_some_and(|running| running.version == set.version)
        {
            tracing::debug!(version = %set.version, "the central's integrations are unchanged");
            return;
        }
        let running = managed
            .sent
            .as_ref()
            .map_or("none", |sent| sent.version.as_str());
        let live = self.live();
        let resolved = match definition::managed(&set, &live.config.authenticator) {
            Ok(resolved) => resolved,
            Err(error) => {
                tracing::error!(version = %set.version, running, %error, "refused the integrations the central sent; the running version keeps serving");
                return;
            }
        };
        if keep {
            if let Err(error) = managed::save(&live.config.data_dir, &set) {
                tracing::error!(version = %set.version, %error, "cannot keep the central's integrations on disk; serving them until the next restart");
            }
        }
        let ids: Vec<&str> = set.integrations.iter().map(|i| i.id.as_str()).collect();
        tracing::info!(version = %set.version, previous = running, integrations = ?ids, "serving the integrations the central sent");
        let resolved_set = ManagedSet {
            sent: Some(set.clone()),
            resolved,
        };
        self.serve(live.config.clone(), live.endpoints.clone(), &resolved_set);
        *managed = resolved_set;
    }
}

/// Apply every set of integrations the relay hands over, until the agent is gone.
fn apply_sent_integrations(shared: Weak<Shared>) {
    let Some(mut sent) = shared
        .upgrade()
        .map(|shared| shared.managed_sink.subscribe())
    else {
        return;
    };
    tokio::spawn(async move {
        while sent.changed().await.is_ok() {
            let Some(set) = sent.borrow_and_update().clone() else {
                continue;
            };
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let applied = tokio::task::spawn_blocking(move || shared.apply_managed(set, true));
            if let Err(error) = applied.await {
                tracing::error!(%error, "applying the central's integrations failed");
            }
        }
    });
}

impl AgentState for Shared {
    /// The relay's current state (connected, last error, counters).
    fn relay_status(&self) -> RelayStatus {
        self.relay_status.borrow().clone()
    }

    /// Time since start.
    fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Why the last reload was refused, if it was (the running configuration stayed).
    fn reload_error(&self) -> Option<String> {
        self.reload_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Keys changed in the configuration file that need a restart to take effect.
    fn restart_needed(&self) -> Vec<&'static str> {
        self.restart_needed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// `/readyz`: ready when the store has room and the relay is connected.
    fn readiness(&self) -> Response<Body> {
        let status = self.relay_status.borrow().clone();
        let (entries, bytes) = self.store.pending();
        let config = &self.live().config.store;
        let disk = self.store.disk_has_room();
        let broken = self.store.broken().borrow().clone();
        let room = entries < config.max_entries && bytes < config.max_bytes && disk;
        let code = if room && broken.is_none() && status.connected {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        http_util::json(
            code,
            &serde_json::json!({
                "ready": code == StatusCode::OK,
                "store": {
                    "pendingEntries": entries,
                    "pendingBytes": bytes,
                    "hasRoom": room,
                    "diskHasRoom": disk,
                    "failed": broken,
                },
                "relay": status,
            }),
        )
    }

    /// `/metrics` in the Prometheus text format: the counters and histograms of [`Metrics`]
    /// plus the state of the store and the relay now.
    fn metrics_response(&self) -> Response<Body> {
        let status = self.relay_status();
        let (entries, bytes) = self.store.pending();
        let oldest_age = crate::ingress::admin::QueueFigures::read(&self.store)
            .ok()
            .and_then(|figures| figures.oldest_pending_age(time::OffsetDateTime::now_utc()))
            .map_or(0.0, |age| age.as_seconds_f64());
        #[rustfmt::skip]
        let gauges = [
            Gauge { name: "xmagent_store_pending_entries", kind: "gauge", help: "Inbox plus outbox entries.", value: entries as f64 },
            Gauge { name: "xmagent_store_pending_bytes", kind: "gauge", help: "Inbox plus outbox bytes.", value: bytes as f64 },
            Gauge { name: "xmagent_outbox_entries", kind: "gauge", help: "Events waiting for the central.", value: self.store.outbox_len() as f64 },
            Gauge { name: "xmagent_queue_oldest_age_seconds", kind: "gauge", help: "Age of the oldest pending request (0 when none).", value: oldest_age },
            Gauge { name: "xmagent_dead_letters", kind: "gauge", help: "Events the central refused for good, kept for `xmagent queue`.", value: self.store.dead_letter_count() as f64 },
            Gauge { name: "xmagent_store_flushes_total", kind: "counter", help: "Group-commit flushes (writes per flush show the batching).", value: self.store.flushes() as f64 },
            Gauge { name: "xmagent_relay_connected", kind: "gauge", help: "1 when the websocket to the central is up.", value: u8::from(status.connected).into() },
            Gauge { name: "xmagent_relay_in_flight", kind: "gauge", help: "Events sent and not answered yet.", value: status.in_flight as f64 },
            Gauge { name: "xmagent_relay_acked_total", kind: "counter", help: "Events the central acknowledged.", value: status.acked_total as f64 },
            Gauge { name: "xmagent_relay_rejected_total", kind: "counter", help: "Events the central refused for good.", value: status.rejected_total as f64 },
            Gauge { name: "xmagent_relay_reconnects_total", kind: "counter", help: "Websocket reconnects.", value: status.reconnects as f64 },
            Gauge { name: "xmagent_restart_needed", kind: "gauge", help: "1 when the file changed keys that apply only at restart.", value: u8::from(!self.restart_needed().is_empty()).into() },
        ];
        let mut response = Response::new(http_util::full(
            self.metrics.render(&gauges, self.store.flush_latency()),
        ));
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        response
    }
}

/// The script threads' last sign of progress, for the watchdog. They are stuck when runs are
/// in progress and none finished for longer than the stall limit (two script time limits plus
/// a margin): every run is bounded by the time limit, so a working thread finishes one at least
/// that often. Requests waiting for anything else, such as room in the store, are not script
/// runs and do not count.
struct ScriptProgress {
    /// Runs finished at the last sign of progress.
    finished: u64,
    /// When that was.
    since: Instant,
}

impl ScriptProgress {
    fn new(now: Instant) -> Self {
        ScriptProgress {
            finished: 0,
            since: now,
        }
    }

    /// Look at the run counters at `now`: `Err(why)` when the threads are stuck.
    fn observe(
        &mut self,
        started: u64,
        finished: u64,
        now: Instant,
        stall_limit: Duration,
    ) -> Result<(), String> {
        let running = started.saturating_sub(finished);
        if finished != self.finished || running == 0 {
            *self = ScriptProgress {
                finished,
                since: now,
            };
            return Ok(());
        }
        let stalled = now.saturating_duration_since(self.since);
        if stalled > stall_limit {
            return Err(format!(
                "script threads: {running} run(s) in progress, none finished for {}s",
                stalled.as_secs()
            ));
        }
        Ok(())
    }
}

impl Shared {
    /// [`ScriptProgress::observe`] with the live counters and the configured time limit.
    fn check_script_progress(&self) -> Result<(), String> {
        let runs = &self.metrics.script_runs;
        let stall_limit = self.live().config.limits.timeout * 2 + Duration::from_secs(30);
        self.script_progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .observe(
                runs.started.load(Ordering::Relaxed),
                runs.finished.load(Ordering::Relaxed),
                Instant::now(),
                stall_limit,
            )
    }
}

impl crate::notify::Health for Shared {
    fn status_line(&self) -> String {
        let relay = self.relay_status();
        let (pending, _) = self.store.pending();
        let outbox = self.store.outbox_len();
        let central = if relay.connected {
            "central connected".to_owned()
        } else {
            match &relay.last_error {
                Some(error) => format!("central NOT connected ({error})"),
                None => "central NOT connected".to_owned(),
            }
        };
        let mut line = format!(
            "{central}; queue {pending} ({} accepted, {outbox} waiting for the central)",
            pending.saturating_sub(outbox)
        );
        if !self.restart_needed().is_empty() {
            line.push_str("; restart needed");
        }
        if self.reload_error().is_some() {
            line.push_str("; last reload refused");
        }
        line
    }

    async fn check(&self, deadline: Duration) -> Result<(), String> {
        match tokio::time::timeout(deadline, self.store.flush()).await {
            Err(_) => {
                return Err(format!(
                    "store flusher: no flush within {}s",
                    deadline.as_secs()
                ))
            }
            // A failing disk is reported by the requests that hit it; restarting does not help.
            Ok(Err(error)) => tracing::warn!(%error, "watchdog flush failed"),
            Ok(Ok(())) => {}
        }
        self.check_script_progress()?;
        match &*self.relay.lock().await {
            Some(relay) if !relay.alive.load(Ordering::SeqCst) => {
                Err("relay: its task ended".to_owned())
            }
            Some(relay) => match relay.heartbeat.overdue() {
                Some(late) => Err(format!(
                    "relay: no progress, {}s past the time it promised to be back",
                    late.as_secs()
                )),
                None => Ok(()),
            },
            None => Ok(()),
        }
    }
}

/// A started agent.
pub struct RunningAgent {
    /// Where ingress listens (useful with port 0).
    pub addr: SocketAddr,
    /// Ends after shutdown completed.
    pub task: JoinHandle<anyhow::Result<()>>,
    /// Reload control.
    pub handle: AgentHandle,
}

/// What the signal handler needs to reload a running agent.
#[derive(Clone)]
pub struct AgentHandle {
    shared: Arc<Shared>,
    config_path: PathBuf,
}

impl AgentHandle {
    /// Reload the configuration file and apply every section that can change live (see the
    /// module docs); requests in flight finish with the snapshot they started with. An invalid
    /// file is refused whole and the running configuration stays; `xmagent status` shows why
    /// until a reload succeeds.
    pub async fn reload(&self) -> Result<(), ConfigError> {
        let result = self.apply_reload().await;
        *self
            .shared
            .reload_error
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = result.as_ref().err().map(ToString::to_string);
        result
    }

    async fn apply_reload(&self) -> Result<(), ConfigError> {
        let path = self.config_path.clone();
        let mut loaded = tokio::task::spawn_blocking(move || config::load(&path))
            .await
            .map_err(|e| {
                ConfigError::new(self.config_path.display(), "(reload)", e.to_string())
            })??;
        let endpoints = build_endpoints(&loaded)?;
        let shared = &self.shared;
        let old = shared.live();
        let pending = keep_restart_only_values(&mut loaded, &old.config);
        for key in &pending {
            tracing::warn!(
                key,
                "this setting changes only at restart; the running value stays"
            );
        }
        *shared
            .restart_needed
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = pending;
        shared.store.set_bounds(&loaded.store);
        if loaded.limits != old.config.limits
            || loaded.script_threads != old.config.script_threads
            || loaded.script_share != old.config.script_share
        {
            let pool = scripts::ScriptPool::new(
                loaded.script_threads,
                loaded.script_share,
                loaded.limits.clone(),
            );
            shared.scripts.replace_pool(pool);
            tracing::info!(
                threads = loaded.script_threads,
                "script limits changed: new script threads started"
            );
        }
        let central = central_section(&loaded.file);
        let central_changed = {
            let mut running = shared
                .central_section
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let changed = *running != central;
            *running = central;
            changed
        };
        let relay = loaded.relay.clone();
        let integrations = loaded.integrations.len();
        {
            let mut managed = shared.managed.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(sent) = managed.sent.clone() {
                // The users changed perhaps: check the central's integrations against them again.
                match definition::managed(&sent, &loaded.authenticator) {
                    Ok(resolved) => managed.resolved = resolved,
                    Err(error) => {
                        tracing::error!(version = %sent.version, %error, "the central's integrations do not validate against the reloaded users; serving them as resolved before")
                    }
                }
            }
            shared.serve(Arc::new(loaded), endpoints, &managed);
        }
        if central_changed {
            tracing::info!("[central] changed: reconnecting to the central");
            let mut running = shared.relay.lock().await;
            if let Some(old_task) = running.take() {
                old_task.stop().await;
            }
            *running = Some(RelayTask::spawn(shared, relay));
        }
        tracing::info!(integrations, "configuration reloaded");
        Ok(())
    }

    /// What the watchdog and the admin endpoints look at.
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }
}

/// Keys read once at start (they size or locate things that exist once per process).
pub const RESTART_ONLY: [&str; 7] = [
    "agent.id",
    "agent.listen",
    "agent.data_dir",
    "scripts.backlog_kib",
    "store.cache_mib",
    "store.group_commit_wait_us",
    "store.max_request_records",
];

/// Put the running value of every [`RESTART_ONLY`] key back into `new` and return the keys
/// whose value in the file differs.
fn keep_restart_only_values(new: &mut Loaded, running: &Loaded) -> Vec<&'static str> {
    let changed = [
        new.agent_id != running.agent_id,
        new.listen != running.listen,
        new.data_dir != running.data_dir,
        new.script_backlog_kib != running.script_backlog_kib,
        new.store.cache_mib != running.store.cache_mib,
        new.store.group_commit_wait_us != running.store.group_commit_wait_us,
        new.store.max_request_records != running.store.max_request_records,
    ];
    new.agent_id.clone_from(&running.agent_id);
    new.listen = running.listen;
    new.data_dir.clone_from(&running.data_dir);
    new.script_backlog_kib = running.script_backlog_kib;
    new.store.cache_mib = running.store.cache_mib;
    new.store.group_commit_wait_us = running.store.group_commit_wait_us;
    new.store.max_request_records = running.store.max_request_records;
    RESTART_ONLY
        .into_iter()
        .zip(changed)
        .filter_map(|(key, changed)| changed.then_some(key))
        .collect()
}

/// The `[central]` table of the file as written (None when unreadable: the file was just
/// loaded, so that only happens when it changes again in between, and the next reload sees it).
fn central_section(path: &Path) -> Option<toml::Value> {
    let text = std::fs::read_to_string(path).ok()?;
    toml::from_str::<toml::Table>(&text).ok()?.remove("central")
}

/// What the relay reports in `status` frames: the queue figures `xmagent status` shows and the
/// ids of the integrations in force (local and the central's).
struct StatusReport {
    store: Store,
    live: LiveConfig,
    integrations_changed: Arc<tokio::sync::Notify>,
}

impl relay::StatusSource for StatusReport {
    fn status(&self) -> Option<protocol::AgentStatus> {
        let figures = match crate::ingress::admin::QueueFigures::read(&self.store) {
            Ok(figures) => figures,
            Err(error) => {
                tracing::debug!(%error, "the queue figures cannot be read; no status reported");
                return None;
            }
        };
        let mut integrations: Vec<String> = self.live.get().integrations.keys().cloned().collect();
        integrations.sort_unstable();
        Some(figures.to_protocol(integrations, time::OffsetDateTime::now_utc()))
    }

    fn changed(&self) -> &tokio::sync::Notify {
        &self.integrations_changed
    }
}

/// A running relay and how to stop it.
struct RelayTask {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    /// False once the relay task ended (or panicked) while it should run.
    alive: Arc<AtomicBool>,
    /// Overdue when the task lives but stopped making progress.
    heartbeat: Arc<relay::Heartbeat>,
}

/// Sets the flag to false when the relay task ends, however it ends (a panic included).
struct AliveFlag(Arc<AtomicBool>);

impl Drop for AliveFlag {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl RelayTask {
    fn spawn(shared: &Arc<Shared>, settings: relay::RelaySettings) -> RelayTask {
        let (stop, stop_rx) = watch::channel(false);
        let alive = Arc::new(AtomicBool::new(true));
        let flag = AliveFlag(alive.clone());
        let agent_id = shared.live().config.agent_id.clone();
        let heartbeat = Arc::new(relay::Heartbeat::default());
        let relay = relay::run(
            settings
                .with_ack_latency(shared.metrics.ack_latency.clone())
                .with_heartbeat(heartbeat.clone())
                .with_integrations_sink(shared.managed_sink.clone())
                .with_activity_uplink(shared.uplink.clone())
                .with_status_source(Arc::new(StatusReport {
                    store: shared.store.clone(),
                    live: shared.live.clone(),
                    integrations_changed: shared.integrations_changed.clone(),
                })),
            agent_id,
            Arc::new(shared.store.clone()),
            shared.relay_status_tx.clone(),
            stop_rx,
        );
        let task = tokio::spawn(async move {
            let _flag = flag;
            relay.await;
        });
        RelayTask {
            stop,
            task,
            alive,
            heartbeat,
        }
    }

    /// Stop the relay (it waits briefly for outstanding acks; unanswered entries are resent by
    /// the next relay).
    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

fn build_endpoints(config: &Loaded) -> Result<Arc<Endpoints>, ConfigError> {
    let builtin = BuiltinXmatters {
        base_url: config.relay.rest_base_url(),
        bearer_token: config.relay.token().to_owned(),
        tls: config.relay.tls(),
        proxy: config.relay.proxy(),
    };
    Endpoints::new(
        &config.endpoints,
        &config.base_dir,
        Some(builtin),
        tokio::runtime::Handle::current(),
    )
    .map(Arc::new)
    .map_err(|reason| ConfigError::new(config.file.display(), "endpoints", reason))
}

/// How the CLI reaches the running agent: its bound address and a fresh random admin token,
/// written to `data_dir/admin.json` (mode 0600) at every start.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct AdminAccess {
    /// The address ingress is bound to (the real port when the config says 0).
    pub addr: SocketAddr,
    /// Bearer token for the admin endpoints.
    pub token: String,
}

impl AdminAccess {
    /// Where the file lives.
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("admin.json")
    }

    /// Read the file the running agent wrote.
    pub fn read(data_dir: &Path) -> anyhow::Result<AdminAccess> {
        let path = Self::path(data_dir);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is not valid", path.display()))
    }

    /// Create a new token for `addr` and write it; returns the token's digest for ingress.
    fn write_new(data_dir: &Path, addr: SocketAddr) -> anyhow::Result<SecretDigest> {
        let access = AdminAccess {
            addr,
            token: integration::auth::generate_key(),
        };
        let path = Self::path(data_dir);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        use std::io::Write;
        options
            .open(&path)
            .and_then(|mut file| file.write_all(serde_json::to_string(&access)?.as_bytes()))
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(SecretDigest::new(&access.token))
    }
}

/// The agent stopped because its store failed; a restart (by the service manager) reopens it.
#[derive(Debug, thiserror::Error)]
#[error("stopped because the store failed ({0}); restart the agent to go on")]
pub struct StoreBroken(pub String);

/// A shutdown signal that also fires when the store breaks: it can take nothing more, and
/// serving 503s forever would hide that a restart is all it needs.
fn stop_on_store_failure(
    mut shutdown: watch::Receiver<bool>,
    mut broken: watch::Receiver<Option<String>>,
) -> watch::Receiver<bool> {
    let (stop_tx, stop) = watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => {}
            Ok(reason) = broken.wait_for(Option::is_some) => {
                tracing::error!(
                    reason = reason.as_deref().unwrap_or_default(),
                    "the store failed: refusing requests (503) and stopping so that a restart \
                     can reopen it; writes whose flush failed are not kept"
                );
            }
        }
        let _ = stop_tx.send(true);
    });
    stop
}

/// Start everything and return once ingress listens.
pub async fn start(
    config_path: &Path,
    config: Loaded,
    shutdown: watch::Receiver<bool>,
    recovery: Recovery,
) -> anyhow::Result<RunningAgent> {
    crate::tls::install_crypto_provider();
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;
    let store = Store::open_with(&config.store_dir(), config.store.clone(), recovery)
        .with_context(|| format!("cannot open the store in {}", config.store_dir().display()))?;
    let shutdown = stop_on_store_failure(shutdown, store.broken());
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let admin_token = AdminAccess::write_new(&config.data_dir, addr)?;
    let endpoints = build_endpoints(&config)?;
    let (status_tx, status_rx) = watch::channel(RelayStatus::default());
    let (work, work_rx) = WorkQueue::new(config.script_backlog_kib);
    let script_threads = config.script_threads;
    let central = central_section(&config.file);
    let pool = scripts::ScriptPool::new(script_threads, config.script_share, config.limits.clone());
    let kept = match managed::load(&config.data_dir) {
        Ok(kept) => kept,
        Err(error) => {
            tracing::error!(%error, "cannot read the integrations the central sent before; serving without them until it sends them again");
            None
        }
    };
    let live = LiveConfig::new(Live {
        integrations: config.integrations.clone(),
        config: Arc::new(config),
        endpoints,
    });
    let metrics = Arc::new(Metrics::default());
    let shared = Arc::new(Shared {
        scripts: ScriptRunner::new(pool, live.clone(), metrics.clone()),
        store: store.clone(),
        metrics: metrics.clone(),
        relay_status: status_rx,
        relay_status_tx: status_tx,
        relay: tokio::sync::Mutex::new(None),
        central_section: Mutex::new(central),
        restart_needed: Mutex::new(Vec::new()),
        reload_error: Mutex::new(None),
        started: Instant::now(),
        script_progress: Mutex::new(ScriptProgress::new(Instant::now())),
        live: live.clone(),
        managed: Mutex::new(ManagedSet::default()),
        managed_sink: Arc::new(watch::Sender::new(None)),
        uplink: Arc::default(),
        integrations_changed: Arc::default(),
    });
    if let Some(kept) = kept {
        let shared = shared.clone();
        tokio::task::spawn_blocking(move || shared.apply_managed(Arc::new(kept), false))
            .await
            .context("applying the kept integrations failed")?;
    }
    apply_sent_integrations(Arc::downgrade(&shared));
    // Requests a previous process accepted but did not finish.
    let leftovers = store.inbox()?;
    if !leftovers.is_empty() {
        tracing::info!(
            count = leftovers.len(),
            "resuming requests accepted before the last stop"
        );
    }
    for accepted in leftovers {
        work.enqueue(Job {
            accepted,
            backlog: None,
        });
    }

    let (worker_stop_tx, worker_stop_rx) = watch::channel(false);
    let relay_settings = shared.live().config.relay.clone();
    *shared.relay.lock().await = Some(RelayTask::spawn(&shared, relay_settings));
    let worker = Worker {
        store: store.clone(),
        live: live.clone(),
        scripts: shared.scripts.clone(),
        metrics: metrics.clone(),
        concurrency: script_threads * 4,
        uplink: shared.uplink.clone(),
    };
    let worker_task = tokio::spawn(crate::worker::run(worker, work_rx, worker_stop_rx));
    let ingress = Arc::new(Ingress {
        live,
        store: store.clone(),
        metrics,
        admin_token,
        work,
        state: shared.clone(),
    });
    let handler = move |request, peer| crate::ingress::handle(ingress.clone(), request, peer);
    tracing::info!("listening on {addr}");
    let task_shared = shared.clone();
    let task = tokio::spawn(async move {
        server::serve::serve(listener, None, handler, shutdown).await;
        tracing::info!("ingress stopped; finishing running requests");
        let _ = worker_stop_tx.send(true);
        let _ = worker_task.await;
        if let Some(relay) = task_shared.relay.lock().await.take() {
            relay.stop().await;
        }
        if let Some(reason) = task_shared.store.broken().borrow().clone() {
            return Err(StoreBroken(reason).into());
        }
        task_shared.store.flush().await.context("final flush")?;
        tracing::info!("stopped cleanly");
        Ok(())
    });
    Ok(RunningAgent {
        addr,
        task,
        handle: AgentHandle {
            shared,
            config_path: config_path.to_path_buf(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(40);

    #[test]
    fn script_threads_are_stuck_only_when_runs_wait_and_none_finishes_past_the_limit() {
        let start = Instant::now();
        let mut progress = ScriptProgress::new(start);
        // Idle for an hour: nothing running is never stuck.
        let idle = start + Duration::from_secs(3600);
        assert_eq!(progress.observe(5, 5, idle, LIMIT), Ok(()));
        // Runs in progress and finishing: progress.
        let busy = idle + Duration::from_secs(30);
        assert_eq!(progress.observe(9, 6, busy, LIMIT), Ok(()));
        // Runs in progress, none finished, but within the limit.
        let waiting = busy + LIMIT;
        assert_eq!(progress.observe(9, 6, waiting, LIMIT), Ok(()));
        // Past the limit: stuck, and it says how many runs and for how long.
        let stuck = busy + LIMIT + Duration::from_secs(1);
        let error = progress.observe(9, 6, stuck, LIMIT).unwrap_err();
        assert!(error.contains("3 run(s) in progress"), "{error}");
        assert!(error.contains("none finished for 41s"), "{error}");
        // One run finishes: healthy again, and the clock starts over.
        assert_eq!(progress.observe(9, 7, stuck, LIMIT), Ok(()));
        assert_eq!(progress.observe(9, 7, stuck + LIMIT, LIMIT), Ok(()));
    }
}
