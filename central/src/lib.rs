//! The reference xMatters-compatible central endpoint.
//!
//! Agents connect over a websocket ([`protocol::CONNECT_PATH`]) and create events idempotently;
//! operators and integration scripts read and steer those events through xMatters-shaped REST
//! calls, and it hosts integrations "in the cloud" ([`hosted`]). [`start`] runs it all on one
//! listener; the `xmcentral` binary, `xmagent dev`, the
//! end-to-end tests and the benchmark all go through it.
//!
//! The server plumbing it shares with `xmagent` (accept loop, TLS, HTTP helpers, logging, exit
//! codes, credential checks) lives in the `server` crate.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod access;
pub mod alert_rate;
pub mod catalog;
pub mod config;
pub mod console;
pub mod directory;
pub mod event;
pub mod flood;
pub mod hosted;
pub mod manage;
pub mod metrics;
pub mod notify;
pub mod report;
pub mod rest;
pub mod store;
pub mod ws;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::CentralConfig;

/// How long agent websockets get to close after shutdown was requested.
const WS_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything a request handler needs, shared by all connections.
pub struct State {
    /// The validated configuration (credentials are digests only).
    pub config: CentralConfig,
    /// The event store.
    pub store: store::Store,
    /// Notifications: the directory and flood control in force, records, delivery queue.
    pub notifier: Arc<notify::Notifier>,
    /// Counters for `/metrics`.
    pub metrics: metrics::Metrics,
    /// Turns true when the central should stop; websockets watch it to close themselves.
    pub shutdown: watch::Receiver<bool>,
    /// Live websocket tasks, waited for at shutdown.
    pub ws_tracker: Arc<ws::Tracker>,
    /// Checks REST credentials (argon2 off the async runtime).
    pub access: access::Access,
    /// The web console's sessions, agent presence and optional data sources.
    pub console: console::Console,
    /// Cloud-hosted integrations, when the configuration has any.
    pub hosted: Option<hosted::Hosted>,
    /// The integrations each agent runs for the central (`run_on`), sent over its websocket.
    pub agent_integrations: Arc<ws::AgentIntegrations>,
}

/// A central that is listening. Returned by [`start`] so embedders learn the bound port (when
/// configured with port 0) and can wait for a clean stop.
#[derive(Debug)]
pub struct RunningCentral {
    /// The address the listener is bound to.
    pub addr: SocketAddr,
    /// Ends after `shutdown` turned true, connections drained and the store flushed.
    pub task: JoinHandle<()>,
    /// Takes a reloaded configuration's directory, flood control and delivery settings.
    pub notifier: Arc<notify::Notifier>,
    /// Takes a reloaded configuration's `run_on` integrations and sends connected agents theirs.
    pub agent_integrations: Arc<ws::AgentIntegrations>,
}

/// Open the store under `config.data_dir`, bind `config.listen` and serve until `shutdown`
/// turns true.
///
/// Returns once the listener accepts connections, so callers can connect right away. Errors
/// (store cannot be opened, address in use) are returned here, not from the task.
pub async fn start(
    mut config: CentralConfig,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<RunningCentral> {
    let data_dir = config.data_dir.clone();
    let store = tokio::task::spawn_blocking(move || store::Store::open(&data_dir))
        .await
        .context("the store-opening task failed")?
        .with_context(|| {
            format!(
                "cannot open the event store in {}",
                config.data_dir.display()
            )
        })?;
    let (notifier, queue) = notify::Notifier::open(store.clone(), config.notifications.clone())
        .context("cannot open the notification store")?;
    let tls = match &config.tls {
        Some(files) => Some(server::tls::acceptor(files).context("cannot set up TLS")?),
        None => None,
    };
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener
        .local_addr()
        .context("cannot read the bound address")?;
    tracing::info!(
        data_dir = %config.data_dir.display(),
        agents = config.agents.len(),
        users = config.users.len(),
        tls = tls.is_some(),
        "listening on {addr}"
    );

    let delivery = tokio::spawn(notify::deliver::run(
        Arc::clone(&notifier),
        queue,
        shutdown.clone(),
    ));
    let agent_integrations = Arc::new(ws::AgentIntegrations::new(config.hosted.as_ref()));
    let hosted = match config.hosted.clone() {
        Some(hosting) => {
            // Hosted scripts reach the central's REST API with credentials derived from this
            // key, as an agent's scripts do from their agent's token; it never leaves the process.
            let script_key = hex::encode(rand::random::<[u8; 32]>());
            config.agents.push(config::AgentCredential::new(
                hosted::HOSTED_AGENT_ID,
                &script_key,
            ));
            let hosted = hosted::Hosted::start(hosting, &store, addr, script_key)
                .context("cannot start the hosted integrations")?;
            Some(hosted)
        }
        None => None,
    };
    let mut console = console::Console::default();
    console.sources.notifications = Some(Arc::clone(&notifier) as _);
    if let Some(hosted) = &hosted {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let view = hosted.console_view(format!("{scheme}://{addr}"));
        console.sources.hosted = Some(Arc::new(view));
    }
    let state = Arc::new(State {
        agent_integrations: Arc::clone(&agent_integrations),
        config,
        hosted,
        store,
        notifier: Arc::clone(&notifier),
        metrics: metrics::Metrics::default(),
        shutdown: shutdown.clone(),
        ws_tracker: Arc::default(),
        access: access::Access::default(),
        console,
    });
    let handler = {
        let state = Arc::clone(&state);
        move |request, peer| rest::route(Arc::clone(&state), request, peer)
    };
    let task = tokio::spawn(async move {
        server::serve::serve(listener, tls, handler, shutdown).await;
        if tokio::time::timeout(WS_DRAIN_TIMEOUT, state.ws_tracker.wait_idle())
            .await
            .is_err()
        {
            tracing::warn!("some agent connections did not close within {WS_DRAIN_TIMEOUT:?}");
        }
        // Ends at shutdown; a delivery in flight finishes its attempt first.
        let _ = delivery.await;
        match state.store.flush().await {
            Ok(()) => tracing::info!("central stopped; store flushed"),
            Err(error) => tracing::error!(%error, "final flush of the event store failed"),
        }
    });
    Ok(RunningCentral {
        addr,
        task,
        notifier,
        agent_integrations,
    })
}
