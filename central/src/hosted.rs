//! Cloud-hosted integrations: the `[[integrations]]` of `central.toml`, served at the central's
//! own `POST /api/integration/1/functions/{id}/triggers` with the same keys, checks and actions
//! as on an agent (the `integration` crate), plus the OAuth token endpoint and the activity
//! stream at `GET /api/xm/1/integrations/{id}/logs`.
//!
//! The central runs a hosted request's action before it answers: the events it creates and its
//! activity entry are written to the event store and made durable by one flush
//! ([`crate::store::Store::wait_durable`], `durable::DiskSync`), and only then is the 202 sent.
//! A 202 therefore means the events are on stable storage; a crash before it leaves nothing the
//! caller was promised, and the caller sends the request again. Scripts run on a `ScriptPool` of
//! the central's own; their built-in `xMatters` endpoint reaches the central itself over loopback,
//! with a credential scoped to the integration (events of hosted integrations are created as the
//! pseudo-agent [`HOSTED_AGENT_ID`]).
//!
//! Integrations with `run_on` are parsed and validated here but not served: the agents they name
//! run them.
//!
//! What it does not do: queue requests for later (there is no inbox: the caller waits for the
//! action), or send integrations to agents.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};
use server::http_util;
use server::serve::Body;

use integration::action::{run_action, ScriptHost};
use integration::auth::Authenticator;
use integration::backlog::Backlog;
use integration::definition::{Integration, ScriptSettings};
use integration::endpoints::{BuiltinXmatters, EndpointConfig, Endpoints};
use integration::http::{accepted, admit, Admitted};
use integration::request::{principal_record, query_param, InboundRequest};

use crate::access::Caller;
use crate::store::{Store, StoreError};
use crate::ws::HostedRefusal;
use crate::State;

mod console;

pub use console::ConsoleView;

/// The agent id recorded on the events of hosted integrations (no configured agent may use it),
/// so the events report and script credentials tell them apart from agent-relayed events.
pub const HOSTED_AGENT_ID: &str = "xmcentral";

/// Newest activity entries kept per hosted integration.
pub const ACTIVITY_KEEP: usize = 1000;

/// The sled tree of the activity entries, in the event store's database.
const ACTIVITY_TREE: &str = "hosted_activity";

/// The hosting part of `central.toml`, validated: who may call, the integrations, the sandbox.
#[derive(Clone)]
pub struct HostedConfig {
    /// Users, API keys and OAuth tokens of the trigger URLs.
    pub authenticator: Authenticator,
    /// Every `[[integrations]]` entry by id, including those with `run_on`.
    pub integrations: HashMap<String, Arc<Integration>>,
    /// `[scripts]`.
    pub scripts: ScriptSettings,
    /// `[[endpoints]]` as written.
    pub endpoints: Vec<EndpointConfig>,
    /// The directory relative paths resolve against.
    pub base_dir: PathBuf,
    /// `[central] max_body_bytes`: the largest trigger body.
    pub max_body_bytes: usize,
}

impl std::fmt::Debug for HostedConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut ids: Vec<&String> = self.integrations.keys().collect();
        ids.sort();
        f.debug_struct("HostedConfig")
            .field("integrations", &ids)
            .finish_non_exhaustive()
    }
}

/// The running hosting: the configuration, the script threads and the endpoints scripts reach.
pub struct Hosted {
    config: HostedConfig,
    pool: scripts::ScriptPool,
    endpoints: Arc<Endpoints>,
    activity: sled::Tree,
    /// Bodies waiting for a script (`[scripts] backlog_kib`): each waits for its run here.
    backlog: Backlog,
    /// Orders activity entries (with the start time, so keys keep growing across restarts).
    next_entry: AtomicU64,
}

impl Hosted {
    /// Start the script threads and the endpoints of `config`; the built-in `xMatters` endpoint
    /// reaches the central at `addr` with credentials derived from `script_key` (the secret of
    /// the [`HOSTED_AGENT_ID`] credential). Returns `None` without hosted integrations.
    pub fn start(
        config: HostedConfig,
        store: &Store,
        addr: SocketAddr,
        script_key: String,
    ) -> anyhow::Result<Self> {
        let builtin = BuiltinXmatters {
            base_url: format!("http://{}", loopback(addr)),
            bearer_token: script_key,
            tls: None,
            proxy: None,
        };
        let endpoints = Endpoints::new(
            &config.endpoints,
            &config.base_dir,
            Some(builtin),
            tokio::runtime::Handle::current(),
        )
        .map_err(|reason| anyhow::anyhow!("endpoints: {reason}"))?;
        let pool = scripts::ScriptPool::new(
            config.scripts.threads,
            config.scripts.share,
            config.scripts.limits.clone(),
        );
        let activity = store.open_tree(ACTIVITY_TREE)?;
        let started = time::OffsetDateTime::now_utc().unix_timestamp_nanos() as u64;
        let backlog = Backlog::new(config.scripts.backlog_kib);
        Ok(Self {
            config,
            pool,
            endpoints: Arc::new(endpoints),
            activity,
            backlog,
            next_entry: AtomicU64::new(started),
        })
    }

    /// `POST /api/integration/1/functions/{id}/triggers`.
    pub async fn trigger(
        &self,
        state: &State,
        request: Request<Incoming>,
        peer: SocketAddr,
        id: &str,
    ) -> Response<Body> {
        let admitted = admit(
            &self.config.integrations,
            &self.config.authenticator,
            self.config.max_body_bytes,
            id,
            request,
            peer.ip(),
        )
        .await;
        let Admitted {
            integration,
            principal,
            parts,
            body,
            trigger,
        } = match admitted {
            Ok(admitted) => admitted,
            Err(refusal) => return refusal,
        };
        // Script runs wait for room in the backlog, so memory does not grow with a load the
        // scripts cannot follow; create_event needs no script.
        let _room = match trigger {
            Some(_) => None,
            None => match self.backlog.reserve(body.len()).await {
                Some(room) => Some(room),
                None => {
                    tracing::warn!(integration = %id, "the script backlog is full; request refused");
                    return unavailable(
                        "the central is still running earlier scripts; retry later",
                    );
                }
            },
        };
        let inbound = InboundRequest::new(
            uuid::Uuid::new_v4().to_string(),
            integration.id.clone(),
            &parts,
            &body,
            principal_record(&principal),
            peer.ip(),
            http_util::now_rfc3339(),
        );
        let processed = run_action(self, &integration, &inbound).await;
        match self.record(state, &integration, &inbound, processed).await {
            Ok(()) => accepted(&inbound.request_id),
            Err(error) => {
                tracing::error!(%error, integration = %id, "cannot store a hosted request");
                unavailable("the event store is unavailable; retry later")
            }
        }
    }

    /// Create the events of `processed` (through [`crate::ws::create_hosted`], the agents' path:
    /// one refused event fails the whole request) and write its activity entry, then wait for
    /// the flush that makes both durable.
    async fn record(
        &self,
        state: &State,
        integration: &Integration,
        request: &InboundRequest,
        processed: integration::action::Processed,
    ) -> Result<(), StoreError> {
        let mut activity = processed.activity.into_value();
        let mut failure = processed.failure;
        let mut event_ids = Vec::new();
        if failure.is_none() && !processed.events.is_empty() {
            match crate::ws::create_hosted(
                state,
                &request.request_id,
                &integration.id,
                &processed.events,
            ) {
                Ok(ids) => event_ids = ids,
                Err(HostedRefusal::Refused(reason)) => failure = Some(reason),
                Err(HostedRefusal::Unavailable) => {
                    return Err(StoreError::Task("the events could not be stored".into()))
                }
            }
        }
        let status = match (&failure, event_ids.is_empty()) {
            (Some(_), _) => "FAILED",
            (None, true) => "COMPLETED",
            (None, false) => "DELIVERED",
        };
        activity["status"] = json!(status);
        activity["eventIds"] = json!(event_ids);
        if let Some(reason) = &failure {
            activity["events"] = json!(0);
            if activity.get("error").is_none_or(Value::is_null) {
                activity["error"] = json!({ "message": reason });
            }
            tracing::warn!(request_id = %request.request_id, %reason, "hosted request failed");
        }
        self.keep_activity(&integration.id, &activity)?;
        let started = std::time::Instant::now();
        let flushed = state.store.wait_durable().await;
        state.metrics.store_flush.observe(started.elapsed());
        flushed
    }

    /// Keep the activity `entries` an agent reported for the integrations it runs for the
    /// central (best effort: an entry for an integration whose `run_on` does not name the agent
    /// is dropped, so an agent cannot write into another integration's stream).
    pub fn keep_agent_activity(&self, agent_id: &str, entries: Vec<Value>) {
        for mut entry in entries {
            let id = entry["integrationId"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let runs_it = self
                .config
                .integrations
                .get(&id)
                .is_some_and(|integration| integration.run_on().iter().any(|a| a == agent_id));
            if !runs_it {
                tracing::debug!(agent = %agent_id, integration = %id, "dropped an activity entry of an integration the agent does not run");
                continue;
            }
            entry["agentId"] = json!(agent_id);
            if let Err(error) = self.keep_activity(&id, &entry) {
                tracing::warn!(%error, "cannot keep an agent's activity entry");
            }
        }
    }

    /// Store one activity entry under `id\0<order>` and drop the oldest beyond
    /// [`ACTIVITY_KEEP`] now and then.
    fn keep_activity(&self, id: &str, entry: &Value) -> Result<(), StoreError> {
        let order = self.next_entry.fetch_add(1, Ordering::Relaxed);
        let mut key = activity_prefix(id);
        key.extend_from_slice(&order.to_be_bytes());
        self.activity
            .insert(key, serde_json::to_vec(entry).unwrap_or_default())?;
        if order % 64 == 0 {
            let stale: Vec<sled::IVec> = self
                .activity
                .scan_prefix(activity_prefix(id))
                .rev()
                .skip(ACTIVITY_KEEP)
                .filter_map(Result::ok)
                .map(|(key, _)| key)
                .collect();
            for key in stale {
                self.activity.remove(key)?;
            }
        }
        Ok(())
    }

    /// `GET /api/xm/1/integrations/{id}/logs?limit=N`: the newest entries first, for REST users
    /// (agents and scripts are refused: the entries show request bodies of every caller).
    pub fn logs(&self, caller: &Caller, id: &str, query: Option<&str>) -> Response<Body> {
        if !self.config.integrations.contains_key(id) {
            return http_util::error(
                StatusCode::NOT_FOUND,
                format!("no integration with id {id:?}"),
            );
        }
        if !matches!(caller, Caller::User(_)) {
            return http_util::error(
                StatusCode::FORBIDDEN,
                "only REST users may read an integration's activity stream",
            );
        }
        let limit = query_param(query, "limit")
            .and_then(|l| l.parse().ok())
            .unwrap_or(100usize)
            .min(ACTIVITY_KEEP);
        let entries: Result<Vec<Value>, sled::Error> = self
            .activity
            .scan_prefix(activity_prefix(id))
            .rev()
            .take(limit)
            .map(|item| {
                item.map(|(_, value)| serde_json::from_slice(&value).unwrap_or(Value::Null))
            })
            .collect();
        match entries {
            Ok(entries) => http_util::json(
                StatusCode::OK,
                &json!({"count": entries.len(), "data": entries}),
            ),
            Err(error) => {
                tracing::error!(%error, "cannot read the activity stream");
                http_util::error(StatusCode::SERVICE_UNAVAILABLE, "the store is unavailable")
            }
        }
    }

    /// What the web console shows of the integrations this central serves; trigger URLs start
    /// with `base_url`.
    pub fn console_view(&self, base_url: String) -> ConsoleView {
        let served = self
            .config
            .integrations
            .values()
            .filter(|integration| integration.served_here())
            .cloned()
            .collect();
        ConsoleView::new(served, self.activity.clone(), base_url)
    }

    /// The authenticator of the trigger URLs (the OAuth token endpoint issues its tokens).
    pub fn authenticator(&self) -> &Authenticator {
        &self.config.authenticator
    }
}

impl ScriptHost for Hosted {
    async fn run_script(
        &self,
        integration: &Integration,
        program: Arc<scripts::Program>,
        request: scripts::ScriptRequest,
    ) -> scripts::Outcome {
        let http = Arc::new(self.endpoints.for_integration(&integration.script_scope()));
        self.pool.run(program, request, http).await
    }
}

/// 503 with `Retry-After`.
fn unavailable(message: &str) -> Response<Body> {
    let mut response = http_util::error(StatusCode::SERVICE_UNAVAILABLE, message);
    response.headers_mut().insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("5"),
    );
    response
}

fn activity_prefix(id: &str) -> Vec<u8> {
    let mut prefix = id.as_bytes().to_vec();
    prefix.push(0);
    prefix
}

/// Where the central reaches itself: its own port on loopback when it listens on every address.
fn loopback(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => {
            SocketAddr::from(([127, 0, 0, 1], addr.port()))
        }
        ip if ip.is_unspecified() => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port())),
        _ => addr,
    }
}
