//! The running agent: wires config, store, ingress, worker, script pool and relay together, and
//! owns start-up, reload (SIGHUP) and graceful shutdown.
//!
//! Shutdown order matters for invariant 1 and 2: stop accepting (in-flight requests still get
//! their flush and their 202), stop the worker (running scripts finish; unstarted requests stay in
//! the inbox), stop the relay (it waits briefly for outstanding acks), flush the store.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use central::exit::ConfigError;
use central::http_util;
use central::serve::Body;
use hyper::{Response, StatusCode};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::auth::SecretDigest;
use crate::config::{self, Loaded};
use crate::endpoints::{BuiltinXmatters, Endpoints};
use crate::relay::{self, RelayStatus};
use crate::store::Store;
use crate::worker::Job;

/// The configuration currently served, with what was built from it. Replaced whole on reload.
pub struct Live {
    /// The resolved configuration.
    pub config: Loaded,
    /// The HTTP client scripts use, built from `config.endpoints`.
    pub endpoints: Arc<Endpoints>,
}

/// State shared by ingress, worker and the admin endpoints.
pub struct Shared {
    live: RwLock<Arc<Live>>,
    /// The durable store.
    pub store: Store,
    /// The script threads.
    pub scripts: scripts::ScriptPool,
    /// Counters for `/metrics`.
    pub metrics: Metrics,
    /// The CLI's credential for the admin endpoints (the file is in the data directory).
    pub admin_token: SecretDigest,
    /// How many requests the worker processes at once.
    pub worker_concurrency: usize,
    relay_status: watch::Receiver<RelayStatus>,
    work: mpsc::UnboundedSender<Job>,
    /// Room for request bodies accepted and not processed yet, in KiB (`[scripts] backlog_kib`,
    /// fixed at start); see [`Shared::reserve_backlog`]. Ingress can store requests faster than
    /// scripts run; without a bound the difference piles up in memory (the job queue and sled's
    /// copy of the inbox) for as long as the load lasts.
    backlog: Arc<Semaphore>,
    backlog_kib: usize,
}

/// How long a request waits for backlog room before it gets a 503.
const BACKLOG_WAIT: Duration = Duration::from_secs(10);

impl Shared {
    /// The current configuration snapshot.
    pub fn live(&self) -> Arc<Live> {
        self.live.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Wait until the worker's backlog has room for a request body of `bytes`, so script
    /// integrations accept no faster than their scripts run (the client sees the wait as
    /// latency). `None` after [`BACKLOG_WAIT`]: the caller answers 503. The permit travels with
    /// the [`Job`] and frees its room when the request is processed.
    pub async fn reserve_backlog(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let kib = (bytes / 1024 + 1).min(self.backlog_kib) as u32;
        let acquire = self.backlog.clone().acquire_many_owned(kib);
        tokio::time::timeout(BACKLOG_WAIT, acquire).await.ok()?.ok()
    }

    /// Hand an accepted request to the worker.
    pub fn enqueue(&self, job: Job) {
        // A closed channel means shutdown: the entry stays in the inbox for the next start.
        let _ = self.work.send(job);
    }

    /// `/readyz`: ready when the store has room and the relay is connected.
    pub fn readiness(&self) -> Response<Body> {
        let status = self.relay_status.borrow().clone();
        let (entries, bytes) = self.store.pending();
        let config = &self.live().config.store;
        let room = entries < config.max_entries && bytes < config.max_bytes;
        let code = if room && status.connected {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        http_util::json(
            code,
            &serde_json::json!({
                "ready": code == StatusCode::OK,
                "store": {"pendingEntries": entries, "pendingBytes": bytes, "hasRoom": room},
                "relay": status,
            }),
        )
    }

    /// `/metrics` in the Prometheus text format.
    pub fn metrics_response(&self) -> Response<Body> {
        let status = self.relay_status.borrow().clone();
        let (entries, bytes) = self.store.pending();
        let m = &self.metrics;
        #[rustfmt::skip]
        let series: [(&str, &str, &str, u64); 14] = [
            ("xmagent_requests_accepted_total", "counter", "Triggers answered 202.", m.accepted.load(Ordering::Relaxed)),
            ("xmagent_responses_client_error_total", "counter", "Responses with a 4xx status.", m.client_errors.load(Ordering::Relaxed)),
            ("xmagent_responses_unavailable_total", "counter", "Responses with a 503 status.", m.unavailable.load(Ordering::Relaxed)),
            ("xmagent_requests_processed_total", "counter", "Requests the worker finished.", m.processed.load(Ordering::Relaxed)),
            ("xmagent_requests_failed_total", "counter", "Requests whose action failed.", m.failed.load(Ordering::Relaxed)),
            ("xmagent_processing_micros_total", "counter", "Time spent processing requests.", m.processing_micros.load(Ordering::Relaxed)),
            ("xmagent_store_pending_entries", "gauge", "Inbox plus outbox entries.", entries),
            ("xmagent_store_pending_bytes", "gauge", "Inbox plus outbox bytes.", bytes),
            ("xmagent_outbox_entries", "gauge", "Events waiting for the central.", self.store.outbox_len()),
            ("xmagent_store_flushes_total", "counter", "Group-commit flushes (writes per flush show the batching).", self.store.flushes()),
            ("xmagent_relay_connected", "gauge", "1 when the websocket to the central is up.", status.connected as u64),
            ("xmagent_relay_acked_total", "counter", "Events the central acknowledged.", status.acked_total),
            ("xmagent_relay_rejected_total", "counter", "Events the central refused for good.", status.rejected_total),
            ("xmagent_relay_reconnects_total", "counter", "Websocket reconnects.", status.reconnects),
        ];
        let mut text = String::new();
        for (name, kind, help, value) in series {
            text.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            ));
        }
        let mut response = Response::new(http_util::full(text));
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        response
    }
}

/// Counters for `/metrics`.
#[derive(Default)]
pub struct Metrics {
    accepted: AtomicU64,
    client_errors: AtomicU64,
    unavailable: AtomicU64,
    processed: AtomicU64,
    failed: AtomicU64,
    processing_micros: AtomicU64,
}

impl Metrics {
    /// Count one ingress response.
    pub fn count_response(&self, status: StatusCode) {
        let counter = match status.as_u16() {
            202 => &self.accepted,
            503 => &self.unavailable,
            400..=499 => &self.client_errors,
            _ => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Count one processed request.
    pub fn count_processed(&self, failed: bool, took: Duration) {
        self.processed.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        self.processing_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
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
    /// Reload the configuration file: scripts, libraries, users, integrations and endpoints are
    /// replaced atomically; requests in flight finish with the snapshot they started with. An
    /// invalid file is refused and the old configuration keeps running.
    pub async fn reload(&self) -> Result<(), ConfigError> {
        let path = self.config_path.clone();
        let loaded = tokio::task::spawn_blocking(move || config::load(&path))
            .await
            .map_err(|e| {
                ConfigError::new(self.config_path.display(), "(reload)", e.to_string())
            })??;
        let old = self.shared.live();
        for (what, changed) in [
            ("agent.listen", loaded.listen != old.config.listen),
            ("agent.data_dir", loaded.data_dir != old.config.data_dir),
            ("agent.id", loaded.agent_id != old.config.agent_id),
        ] {
            if changed {
                tracing::warn!(key = what, "this setting changes only at restart");
            }
        }
        let endpoints = build_endpoints(&loaded)?;
        *self.shared.live.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Live {
            config: loaded,
            endpoints,
        });
        tracing::info!(
            integrations = self.shared.live().config.integrations.len(),
            "configuration reloaded"
        );
        Ok(())
    }
}

fn build_endpoints(config: &Loaded) -> Result<Arc<Endpoints>, ConfigError> {
    let builtin = BuiltinXmatters {
        base_url: config.relay.rest_base_url(),
        bearer_token: config.relay.token().to_owned(),
        tls: config.relay.tls(),
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
            token: crate::auth::generate_key(),
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

/// Start everything and return once ingress listens.
pub async fn start(
    config_path: &Path,
    config: Loaded,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<RunningAgent> {
    crate::tls::install_crypto_provider();
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;
    let store = Store::open(&config.store_dir(), config.store.clone())
        .with_context(|| format!("cannot open the store in {}", config.store_dir().display()))?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let admin_token = AdminAccess::write_new(&config.data_dir, addr)?;
    let endpoints = build_endpoints(&config)?;
    let (status_tx, status_rx) = watch::channel(RelayStatus::default());
    let (work_tx, work_rx) = mpsc::unbounded_channel();
    let script_threads = config.script_threads;
    let shared = Arc::new(Shared {
        scripts: scripts::ScriptPool::new(script_threads, config.limits.clone()),
        worker_concurrency: script_threads * 4,
        store: store.clone(),
        metrics: Metrics::default(),
        admin_token,
        relay_status: status_rx,
        work: work_tx,
        backlog: Arc::new(Semaphore::new(config.script_backlog_kib)),
        backlog_kib: config.script_backlog_kib,
        live: RwLock::new(Arc::new(Live { config, endpoints })),
    });
    // Requests a previous process accepted but did not finish.
    let leftovers = store.inbox()?;
    if !leftovers.is_empty() {
        tracing::info!(
            count = leftovers.len(),
            "resuming requests accepted before the last stop"
        );
    }
    for accepted in leftovers {
        shared.enqueue(Job {
            accepted,
            backlog: None,
        });
    }

    let (relay_stop_tx, relay_stop_rx) = watch::channel(false);
    let (worker_stop_tx, worker_stop_rx) = watch::channel(false);
    let live = shared.live();
    let relay_task = tokio::spawn(relay::run(
        live.config.relay.clone(),
        live.config.agent_id.clone(),
        Arc::new(store.clone()),
        status_tx,
        relay_stop_rx,
    ));
    drop(live);
    let worker_task = tokio::spawn(crate::worker::run(shared.clone(), work_rx, worker_stop_rx));
    let handler_shared = shared.clone();
    let handler =
        move |request, peer| crate::ingress::handle(handler_shared.clone(), request, peer);
    tracing::info!("listening on {addr}");
    let task_shared = shared.clone();
    let task = tokio::spawn(async move {
        central::serve::serve(listener, None, handler, shutdown).await;
        tracing::info!("ingress stopped; finishing running requests");
        let _ = worker_stop_tx.send(true);
        let _ = worker_task.await;
        let _ = relay_stop_tx.send(true);
        let _ = relay_task.await;
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
