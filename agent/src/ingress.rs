//! The HTTP front door: routes, status codes, authentication, and the hand-off to the store.
//!
//! The order of checks on a trigger is deliberate: (in `server::serve`: no Host 400, long target
//! 414, big headers 431) → route (404/405) → declared length (413) → credentials (401/403, 429
//! when throttled) → the integration's rate limit (429) → body read with the limit (413) →
//! action-specific validation (400) → durable store (503) → 202. Cheap refusals come first, and
//! nothing is stored for a refused request. The checks up to the body are the ones the central's
//! hosted integrations make too (`integration::http::admit`).
//!
//! What it does not do: it never runs scripts or talks to the central; the worker and relay do.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;
use server::http_util;
use server::serve::Body;
use tracing::Instrument;

use integration::auth::{AdminCaller, AuthMode, IntegrationAuth, SecretDigest};
use integration::http::{
    accepted, admit, auth_failure, method_not_allowed, token, Admitted, LOGS_PREFIX, TOKEN_PATH,
    TRIGGER_PREFIX,
};
use integration::request::{principal_record, query_param, InboundRequest};

use crate::live::{Live, LiveConfig};
use crate::metrics::Metrics;
use crate::relay::RelayStatus;
use crate::store::{Store, StoreError};
use crate::worker::{Job, WorkQueue};

pub mod admin;

/// The HTTP equivalent of `xmagent request ID`.
pub const REQUESTS_PREFIX: &str = "/api/agent/1/requests/";
/// The dead-letter list behind `xmagent dead-letters`.
pub const DEAD_LETTERS_PATH: &str = "/api/agent/1/dead-letters";

/// What ingress and the admin endpoints use of the running agent: narrow handles, not the
/// daemon's state.
pub struct Ingress {
    /// The configuration in force.
    pub live: LiveConfig,
    /// Where accepted requests go.
    pub store: Store,
    /// Response counters and latencies.
    pub metrics: Arc<Metrics>,
    /// The CLI's credential for the admin endpoints (the file is in the data directory).
    pub admin_token: SecretDigest,
    /// The worker's queue (script integrations).
    pub work: WorkQueue,
    /// What the daemon reports about itself.
    pub state: Arc<dyn AgentState>,
}

/// What the daemon reports about itself on `/readyz`, `/metrics` and `xmagent status`: the
/// daemon implements it, so ingress needs no daemon type.
pub trait AgentState: Send + Sync {
    /// `/readyz`.
    fn readiness(&self) -> Response<Body>;
    /// `/metrics`.
    fn metrics_response(&self) -> Response<Body>;
    /// Time since start.
    fn uptime(&self) -> std::time::Duration;
    /// The relay's current state.
    fn relay_status(&self) -> RelayStatus;
    /// Why the last reload was refused, if it was.
    fn reload_error(&self) -> Option<String>;
    /// Keys changed in the file that need a restart to take effect.
    fn restart_needed(&self) -> Vec<&'static str>;
}

/// Answer one HTTP request.
pub async fn handle(
    ingress: Arc<Ingress>,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let path = request.uri().path().to_owned();
    let started = std::time::Instant::now();
    let response = route(&ingress, request, peer, &path).await;
    let integration = path
        .strip_prefix(TRIGGER_PREFIX)
        .and_then(|rest| rest.strip_suffix("/triggers"));
    let known = integration.map(|id| (id, ingress.live.get().integrations.contains_key(id)));
    ingress
        .metrics
        .count_response(known, response.status(), started.elapsed());
    if let Some(integration) = integration {
        // One line per trigger outcome, for people tailing the log (its own target, so
        // `RUST_LOG=info,xmagent::access=warn` silences it on a very busy agent).
        let request_id = response
            .extensions()
            .get::<AcceptedId>()
            .map(|id| id.0.as_str());
        tracing::info!(
            target: "xmagent::access",
            request_id = request_id.unwrap_or("-"),
            integration,
            status = response.status().as_u16(),
            duration_ms = started.elapsed().as_millis() as u64,
            "trigger answered"
        );
    }
    response
}

/// The requestId of a 202, carried to the outcome log line in the response's extensions.
#[derive(Clone)]
struct AcceptedId(String);

async fn route(
    ingress: &Arc<Ingress>,
    request: Request<Incoming>,
    peer: SocketAddr,
    path: &str,
) -> Response<Body> {
    if let Some(rest) = path.strip_prefix(TRIGGER_PREFIX) {
        return match rest.strip_suffix("/triggers") {
            Some(id) if !id.is_empty() && !id.contains('/') => {
                let id = id.to_owned();
                trigger(ingress, request, peer, id).await
            }
            _ => not_found(path),
        };
    }
    match (path, request.method()) {
        ("/healthz", &Method::GET) => plain(StatusCode::OK, "ok\n"),
        ("/readyz", &Method::GET) => ingress.state.readiness(),
        ("/metrics", &Method::GET) => ingress.state.metrics_response(),
        (TOKEN_PATH, &Method::POST) => {
            let authenticator = ingress.live.get().config.authenticator.clone();
            token(&authenticator, request, peer.ip()).await
        }
        ("/healthz" | "/readyz" | "/metrics", _) => method_not_allowed("GET"),
        (TOKEN_PATH, _) => method_not_allowed("POST"),
        (DEAD_LETTERS_PATH, &Method::GET) => {
            admin(ingress, &request, peer, |s, caller| {
                let live = s.live.get();
                let mut list = s.store.dead_letters()?;
                list.retain(|d| may_see(caller, &live, &d.entry.integration_id));
                Ok(Some(json!({"count": list.len(), "data": list})))
            })
            .await
        }
        _ if admin::serves(path) => admin::handle(ingress, request, peer, path).await,
        _ => {
            if let Some(id) = path.strip_prefix(REQUESTS_PREFIX) {
                if request.method() != Method::GET {
                    return method_not_allowed("GET");
                }
                let id = id.to_owned();
                let caller = match authorize_admin(ingress, request.headers(), peer).await {
                    Ok(caller) => caller,
                    Err(response) => return *response,
                };
                return match ingress.store.request(&id) {
                    Ok(Some(record))
                        if may_see(&caller, &ingress.live.get(), &record.integration_id) =>
                    {
                        http_util::json(StatusCode::OK, &record)
                    }
                    // A record the caller may not see is answered like a missing one, so its
                    // existence is not revealed either.
                    Ok(_) => http_util::error(StatusCode::NOT_FOUND, format!("no request {id:?}")),
                    Err(error) => store_failure(error),
                };
            }
            if let Some(id) = path
                .strip_prefix(LOGS_PREFIX)
                .and_then(|r| r.strip_suffix("/logs"))
            {
                if request.method() != Method::GET {
                    return method_not_allowed("GET");
                }
                let limit = query_param(request.uri().query(), "limit")
                    .and_then(|l| l.parse().ok())
                    .unwrap_or(100usize)
                    .min(1000);
                let id = id.to_owned();
                return admin(ingress, &request, peer, |s, caller| {
                    if !may_see(caller, &s.live.get(), &id) {
                        return Ok(None);
                    }
                    let mut entries = s.store.activity(&id, limit)?;
                    // An entry is written when the request is processed; show where the request
                    // is now (DELIVERED, with the central's event ids) rather than that snapshot.
                    for entry in &mut entries {
                        let request_id = entry["requestId"].as_str().unwrap_or("").to_owned();
                        if let Some(record) = s.store.request(&request_id)? {
                            entry["status"] = json!(record.status);
                            entry["eventIds"] = json!(record
                                .events
                                .iter()
                                .filter_map(|e| e.event_id.clone())
                                .collect::<Vec<_>>());
                            // Why it failed, e.g. the central refused the sender for the form.
                            if let Some(reason) = &record.reason {
                                entry["reason"] = json!(reason);
                            }
                        }
                    }
                    Ok(Some(
                        json!({"count": entries.len(), "total": entries.len(), "data": entries}),
                    ))
                })
                .await;
            }
            not_found(path)
        }
    }
}

/// Run `body` for an authorized operator (see [`authorize_admin`]); `Ok(None)` from `body` means
/// the caller may not see what it asked for, answered 403.
async fn admin(
    ingress: &Arc<Ingress>,
    request: &Request<Incoming>,
    peer: SocketAddr,
    body: impl FnOnce(&Ingress, &AdminCaller) -> Result<Option<serde_json::Value>, StoreError>,
) -> Response<Body> {
    let caller = match authorize_admin(ingress, request.headers(), peer).await {
        Ok(caller) => caller,
        Err(response) => return *response,
    };
    match body(ingress, &caller) {
        Ok(Some(value)) => http_util::json(StatusCode::OK, &value),
        Ok(None) => http_util::error(
            StatusCode::FORBIDDEN,
            "this user may not see this integration's data",
        ),
        Err(error) => store_failure(error),
    }
}

/// The one admin-authorization check every admin endpoint calls: the admin token (written to the
/// data directory for the CLI) or a configured user holding the `Agent Administrator` role. A
/// valid user without the role gets 403, a wrong credential 401, a throttled one 429.
pub async fn authorize_admin(
    ingress: &Ingress,
    headers: &hyper::HeaderMap,
    peer: SocketAddr,
) -> Result<AdminCaller, Box<Response<Body>>> {
    let authenticator = ingress.live.get().config.authenticator.clone();
    authenticator
        .authenticate_admin(headers, peer.ip(), &ingress.admin_token)
        .await
        .map_err(|error| {
            tracing::info!(%peer, reason = %error, "admin request refused");
            Box::new(auth_failure(&error, AuthMode::Any))
        })
}

/// Whether `caller` may see the data of `integration_id`: its `allowed_users` in the live config
/// hold for admin users too.
pub(crate) fn may_see(caller: &AdminCaller, live: &Live, integration_id: &str) -> bool {
    let unlisted = IntegrationAuth::default();
    let policy = live
        .integrations
        .get(integration_id)
        .map_or(&unlisted, |i| &i.auth);
    caller.may_see(policy)
}

async fn trigger(
    ingress: &Arc<Ingress>,
    request: Request<Incoming>,
    peer: SocketAddr,
    id: String,
) -> Response<Body> {
    let live = ingress.live.get();
    let admitted = admit(
        &live.integrations,
        &live.config.authenticator,
        live.config.max_body_bytes,
        &id,
        request,
        peer.ip(),
    )
    .await;
    drop(live);
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
    let request_id = uuid::Uuid::new_v4().to_string();
    let received_at = server::http_util::now_rfc3339();
    let bytes = body.len();
    // What scripts and the activity stream see of the request, given the body (or the part of
    // it that will be shown). Built on demand: the activity entry of a create_event request is
    // rendered only if it is among the newest ones kept, which under load is a small share.
    let inbound = {
        let (request_id, integration_id) = (request_id.clone(), id.clone());
        let (received_at, principal) = (received_at.clone(), principal_record(&principal));
        move |body: &[u8]| {
            InboundRequest::new(
                request_id,
                integration_id,
                &parts,
                body,
                principal,
                peer.ip(),
                received_at,
            )
        }
    };
    let span = tracing::info_span!("trigger", request_id = %request_id, integration = %id);
    async move {
        if let Some(trigger) = trigger {
            // create_event needs no worker: its one event goes straight to the outbox, durably,
            // before the 202 (one sled write on the durable path instead of inbox → worker → outbox).
            let started = std::time::Instant::now();
            // Only what the entry can show is kept (one byte more, so it still knows it was
            // cut): up to `activity_per_integration` entries wait in memory.
            let shown = body[..bytes.min(integration::activity::ACTIVITY_BODY_BYTES + 1)].to_vec();
            let activity = move || {
                integration::activity::activity(&inbound(&shown), "QUEUED", json!({"events": 1}))
            };
            let accepted = ingress
                .store
                .accept_event(
                    &request_id,
                    &id,
                    &received_at,
                    &integration.routing(&principal.user),
                    &trigger,
                    activity,
                )
                .await;
            return match accepted {
                Ok(_) => {
                    ingress.metrics.count_processed(false, started.elapsed());
                    tracing::debug!(user = %principal.user, bytes, "accepted");
                    accepted_response(&request_id)
                }
                Err(error) => store_failure(error),
            };
        }
        let Some(backlog) = ingress.work.reserve_backlog(bytes).await else {
            return busy();
        };
        match ingress.store.accept(inbound(&body)).await {
            Ok(accepted) => {
                ingress.work.enqueue(Job {
                    accepted,
                    backlog: Some(backlog),
                });
                tracing::debug!(user = %principal.user, bytes, "accepted");
                accepted_response(&request_id)
            }
            Err(error) => store_failure(error),
        }
    }
    .instrument(span)
    .await
}

pub(crate) fn store_failure(error: StoreError) -> Response<Body> {
    tracing::warn!(%error, "store refused the request");
    unavailable(error.to_string())
}

/// When the scripts are so far behind that a request waited too long for backlog room.
fn busy() -> Response<Body> {
    tracing::warn!("the script backlog is full; request refused");
    unavailable("the agent is still processing earlier requests; retry later".to_owned())
}

/// 503 with a `Retry-After`: nothing was kept, the client should send the request again.
fn unavailable(message: String) -> Response<Body> {
    let mut response = http_util::error(StatusCode::SERVICE_UNAVAILABLE, message);
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("5"));
    response
}

fn not_found(path: &str) -> Response<Body> {
    http_util::error(StatusCode::NOT_FOUND, format!("nothing at {path}"))
}

/// The 202 answer, carrying its requestId to the outcome log line.
fn accepted_response(request_id: &str) -> Response<Body> {
    let mut response = accepted(request_id);
    response
        .extensions_mut()
        .insert(AcceptedId(request_id.to_owned()));
    response
}

/// A text/plain response (health checks).
pub fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = Response::new(http_util::full(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
