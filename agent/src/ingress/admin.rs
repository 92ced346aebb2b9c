//! The operator's admin endpoints behind `xmagent status` and `xmagent queue ...`: the agent's
//! state at a glance, the queue listing, sending dead letters again and purging them.
//!
//! Every endpoint first passes `ingress::authorize_admin`, the one place that decides what counts
//! as the admin credential (the admin token or the `Agent Administrator` role; an integration's
//! URL key never does), and the queue listing shows an admin user only the integrations whose
//! `allowed_users` admit them. It does not decide what may be
//! removed: the store only lets dead letters go (`store::operations`); a pending entry leaves
//! only when the central acknowledged it.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::json;
use server::http_util;
use server::serve::Body;

use integration::auth::AdminCaller;
use integration::request::query_param;

use integration::http::method_not_allowed;

use super::{authorize_admin, may_see, store_failure, Ingress};
use crate::relay::RelayStatus;
use crate::store::{QueueEntry, QueueState};

/// `xmagent status`.
pub const STATUS_PATH: &str = "/api/agent/1/status";
/// `xmagent queue list`: `?state=accepted|queued|dead&integration=ID&limit=N`.
pub const QUEUE_PATH: &str = "/api/agent/1/queue";
/// `xmagent queue retry`: POST `?id=N` or `?allDead=true`.
pub const RETRY_PATH: &str = "/api/agent/1/queue/retry";
/// `xmagent queue purge --dead --yes`: POST `?dead=true&confirm=yes`.
pub const PURGE_PATH: &str = "/api/agent/1/queue/purge";

/// Most entries of each queue one listing returns (the default is 100).
const MAX_LISTED: usize = 10_000;

/// Whether `path` is one of these endpoints (ingress routes it here).
pub fn serves(path: &str) -> bool {
    [STATUS_PATH, QUEUE_PATH, RETRY_PATH, PURGE_PATH].contains(&path)
}

/// What `xmagent status` shows.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    /// The agent's version.
    pub version: String,
    /// Seconds since start.
    pub uptime_secs: u64,
    /// The connection to the central.
    pub central: RelayStatus,
    /// Requests accepted and not processed yet.
    pub accepted: u64,
    /// Events waiting for the central's acknowledgement.
    pub waiting_for_central: u64,
    /// When the oldest pending request was accepted (RFC 3339), if any is pending.
    pub oldest_pending: Option<String>,
    /// Events the central refused for good, kept for `queue retry` / `queue purge`.
    pub dead_letters: usize,
    /// Configuration keys changed in the file that take effect only at the next restart.
    pub restart_needed: Vec<String>,
    /// Why the last reload was refused (the running configuration stayed), if it was.
    pub reload_error: Option<String>,
}

/// Answer one admin request (after the admin check).
pub async fn handle(
    ingress: &Arc<Ingress>,
    request: Request<Incoming>,
    peer: std::net::SocketAddr,
    path: &str,
) -> Response<Body> {
    let caller = match authorize_admin(ingress, request.headers(), peer).await {
        Ok(caller) => caller,
        Err(response) => return *response,
    };
    let query = request.uri().query();
    match (path, request.method()) {
        (STATUS_PATH, &Method::GET) => status(ingress),
        (QUEUE_PATH, &Method::GET) => list(ingress, &caller, query),
        (RETRY_PATH, &Method::POST) => retry(ingress, query).await,
        (PURGE_PATH, &Method::POST) => purge(ingress, query).await,
        (STATUS_PATH | QUEUE_PATH, _) => method_not_allowed("GET"),
        _ => method_not_allowed("POST"),
    }
}

/// The queue at a glance, read from the counts the store keeps (and its oldest entry of each
/// queue): `xmagent status` shows it, and the relay reports it to the central in `status`
/// frames (through the daemon), so both say the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueFigures {
    /// Requests accepted and not processed yet.
    pub accepted: u64,
    /// Events waiting for the central's acknowledgement.
    pub waiting_for_central: u64,
    /// When the oldest pending request was accepted (RFC 3339), if any is pending.
    pub oldest_pending: Option<String>,
    /// Events the central refused for good.
    pub dead_letters: usize,
}

impl QueueFigures {
    /// Read the figures now.
    pub fn read(store: &crate::store::Store) -> Result<Self, crate::store::StoreError> {
        let oldest_pending = store
            .queue_entries(1)?
            .into_iter()
            .filter_map(|e| e.received_at)
            .min();
        let (pending, _) = store.pending();
        let waiting = store.outbox_len();
        Ok(QueueFigures {
            accepted: pending.saturating_sub(waiting),
            waiting_for_central: waiting,
            oldest_pending,
            dead_letters: store.dead_letter_count(),
        })
    }

    /// How long the oldest pending request has waited at `now`; `None` when none is pending.
    pub fn oldest_pending_age(&self, now: time::OffsetDateTime) -> Option<time::Duration> {
        let rfc3339 = &time::format_description::well_known::Rfc3339;
        let at = time::OffsetDateTime::parse(self.oldest_pending.as_deref()?, rfc3339).ok()?;
        Some((now - at).max(time::Duration::ZERO))
    }

    /// The protocol's `status` figures at `now`, with the `integrations` the agent serves.
    pub fn to_protocol(
        &self,
        integrations: Vec<String>,
        now: time::OffsetDateTime,
    ) -> protocol::AgentStatus {
        let oldest_pending_ms = self
            .oldest_pending_age(now)
            .map(|age| u64::try_from(age.whole_milliseconds()).unwrap_or(0));
        protocol::AgentStatus {
            queue_depth: self.accepted + self.waiting_for_central,
            dead_letters: self.dead_letters as u64,
            oldest_pending_ms,
            integrations,
        }
    }
}

fn status(ingress: &Ingress) -> Response<Body> {
    let figures = match QueueFigures::read(&ingress.store) {
        Ok(figures) => figures,
        Err(error) => return store_failure(error),
    };
    let status = AgentStatus {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime_secs: ingress.state.uptime().as_secs(),
        central: ingress.state.relay_status(),
        accepted: figures.accepted,
        waiting_for_central: figures.waiting_for_central,
        oldest_pending: figures.oldest_pending,
        dead_letters: figures.dead_letters,
        restart_needed: ingress
            .state
            .restart_needed()
            .into_iter()
            .map(str::to_owned)
            .collect(),
        reload_error: ingress.state.reload_error(),
    };
    http_util::json(StatusCode::OK, &status)
}

fn list(ingress: &Ingress, caller: &AdminCaller, query: Option<&str>) -> Response<Body> {
    let state = match query_param(query, "state") {
        None => None,
        Some(name) => match <QueueState as clap::ValueEnum>::from_str(&name, true) {
            Ok(state) => Some(state),
            Err(_) => {
                return http_util::error(
                    StatusCode::BAD_REQUEST,
                    "state must be accepted, queued or dead",
                )
            }
        },
    };
    let integration = query_param(query, "integration");
    let limit = match query_param(query, "limit").map(|l| l.parse::<usize>()) {
        None => 100,
        Some(Ok(limit)) => limit.min(MAX_LISTED),
        Some(Err(_)) => return http_util::error(StatusCode::BAD_REQUEST, "limit must be a number"),
    };
    match ingress.store.queue_entries(MAX_LISTED) {
        Ok(entries) => {
            let live = ingress.live.get();
            let data: Vec<QueueEntry> = entries
                .into_iter()
                .filter(|e| may_see(caller, &live, &e.integration_id))
                .filter(|e| state.is_none_or(|s| e.state == s))
                .filter(|e| integration.as_ref().is_none_or(|i| &e.integration_id == i))
                .take(limit)
                .collect();
            http_util::json(StatusCode::OK, &json!({"count": data.len(), "data": data}))
        }
        Err(error) => store_failure(error),
    }
}

async fn retry(ingress: &Ingress, query: Option<&str>) -> Response<Body> {
    let ids = if query_param(query, "allDead").as_deref() == Some("true") {
        match ingress.store.dead_letter_ids() {
            Ok(ids) => ids,
            Err(error) => return store_failure(error),
        }
    } else {
        match query_param(query, "id").map(|id| id.parse::<u64>()) {
            Some(Ok(id)) => vec![id],
            _ => {
                return http_util::error(
                    StatusCode::BAD_REQUEST,
                    "give ?id=N (a dead letter's id from `xmagent queue list --state dead`) or ?allDead=true",
                )
            }
        }
    };
    let mut retried = Vec::new();
    for id in ids {
        match ingress.store.retry_dead_letter(id).await {
            Ok(true) => retried.push(id),
            Ok(false) => {
                return http_util::error(StatusCode::NOT_FOUND, format!("no dead letter {id}"))
            }
            Err(error) => return store_failure(error),
        }
    }
    tracing::info!(count = retried.len(), "dead letters queued again");
    http_util::json(
        StatusCode::OK,
        &json!({"retried": retried.len(), "ids": retried}),
    )
}

async fn purge(ingress: &Ingress, query: Option<&str>) -> Response<Body> {
    if query_param(query, "dead").as_deref() != Some("true")
        || query_param(query, "confirm").as_deref() != Some("yes")
    {
        return http_util::error(
            StatusCode::BAD_REQUEST,
            "only dead letters can be purged: give ?dead=true&confirm=yes",
        );
    }
    match ingress.store.purge_dead_letters().await {
        Ok(purged) => {
            tracing::info!(purged, "dead letters purged");
            http_util::json(StatusCode::OK, &json!({"purged": purged}))
        }
        Err(error) => store_failure(error),
    }
}
