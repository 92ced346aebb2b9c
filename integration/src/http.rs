//! The HTTP side of an integration both hosts share: admitting a trigger request (the order of
//! checks of DESIGN §3 invariant 6 up to the body), the OAuth token endpoint, and the answers
//! for refused requests, so the agent and the central refuse the same request the same way.
//!
//! The order of checks: (in `server::serve`: no Host 400, long target 414, big headers 431) →
//! integration (404) → method (405) → declared length (413) → credentials (401/403, 429 when
//! throttled) → the integration's rate limit (429) → body read with the limit (413) →
//! `create_event` body check (400). Cheap refusals come first.
//!
//! What it does not do: route, store the request or run its action.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{
    HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_LENGTH, PRAGMA, RETRY_AFTER, WWW_AUTHENTICATE,
};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;
use server::http_util::{self, read_body, BodyError};
use server::serve::Body;

use crate::auth::{AuthError, AuthMode, Authenticator, Principal};
use crate::definition::{Action, Integration};
use crate::request::query_param;
use crate::trigger::trigger_from_body;

/// Where triggers are posted: `{TRIGGER_PREFIX}{id}/triggers`.
pub const TRIGGER_PREFIX: &str = "/api/integration/1/functions/";
/// The OAuth token endpoint.
pub const TOKEN_PATH: &str = "/api/xm/1/oauth2/token";
/// Where the activity streams live: `{LOGS_PREFIX}{id}/logs`.
pub const LOGS_PREFIX: &str = "/api/xm/1/integrations/";

/// The integration id of a trigger path, if it is one.
pub fn trigger_id(path: &str) -> Option<&str> {
    path.strip_prefix(TRIGGER_PREFIX)?.strip_suffix("/triggers")
}

/// The integration id of an activity-stream path, if it is one.
pub fn logs_id(path: &str) -> Option<&str> {
    path.strip_prefix(LOGS_PREFIX)?.strip_suffix("/logs")
}

/// A trigger request that passed every check up to its body.
pub struct Admitted {
    /// The integration it is for.
    pub integration: Arc<Integration>,
    /// Who sent it.
    pub principal: Principal,
    /// The request head.
    pub parts: http::request::Parts,
    /// The body, within the limit.
    pub body: Bytes,
    /// For `create_event`: the trigger of its one event, as JSON text.
    pub trigger: Option<String>,
}

/// Check a trigger request for integration `id` in the order of the module docs; the refusal is
/// the answer to send.
pub async fn admit(
    integrations: &HashMap<String, Arc<Integration>>,
    authenticator: &Authenticator,
    max_body_bytes: usize,
    id: &str,
    request: Request<Incoming>,
    peer: IpAddr,
) -> Result<Admitted, Response<Body>> {
    let Some(integration) = integrations.get(id).filter(|i| i.served_here()).cloned() else {
        return Err(http_util::error(
            StatusCode::NOT_FOUND,
            format!("no integration with id {id:?}"),
        ));
    };
    if request.method() != Method::POST {
        return Err(method_not_allowed("POST"));
    }
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max_body_bytes as u64) {
        return Err(body_failure(BodyError::TooLarge {
            limit: max_body_bytes,
        }));
    }
    let (parts, body) = request.into_parts();
    let api_key = query_param(parts.uri.query(), "apiKey");
    let principal = authenticator
        .authenticate(&integration.auth, &parts.headers, api_key.as_deref(), peer)
        .await
        .map_err(|error| {
            tracing::info!(integration = %id, %peer, reason = %error, "trigger refused");
            auth_failure(&error, integration.auth.mode)
        })?;
    if let Some(rate_limit) = &integration.rate_limit {
        if let Err(wait) = rate_limit.try_acquire(std::time::Instant::now()) {
            tracing::info!(integration = %id, %peer, "trigger refused: rate limit");
            let mut response = http_util::error(
                StatusCode::TOO_MANY_REQUESTS,
                format!("integration {id:?} is over its rate limit; retry later"),
            );
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(secs));
            return Err(response);
        }
    }
    let body = read_body(body, max_body_bytes)
        .await
        .map_err(body_failure)?;
    let trigger = match integration.action {
        Action::CreateEvent => Some(
            trigger_from_body(&body)
                .map_err(|reason| http_util::error(StatusCode::BAD_REQUEST, reason))?,
        ),
        Action::Transform | Action::RunScript | Action::HttpTrigger => None,
    };
    Ok(Admitted {
        integration,
        principal,
        parts,
        body,
        trigger,
    })
}

/// `POST /api/xm/1/oauth2/token`: the form body read with a small limit, the grant answered
/// (RFC 6749 §5.1: never cached).
pub async fn token(
    authenticator: &Authenticator,
    request: Request<Incoming>,
    peer: IpAddr,
) -> Response<Body> {
    let body = match read_body(request.into_body(), 64 * 1024).await {
        Ok(body) => body,
        Err(error) => return body_failure(error),
    };
    let mut response = match authenticator.token(&body, peer).await {
        Ok(token) => http_util::json(StatusCode::OK, &token),
        Err(error) => {
            let mut response = http_util::json(
                error.status,
                &json!({"error": error.error, "error_description": error.description}),
            );
            if let Some(secs) = error.retry_after_secs {
                response
                    .headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(secs));
            }
            response
        }
    };
    let headers = response.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

/// The 202 answer, as xMatters words it.
pub fn accepted(request_id: &str) -> Response<Body> {
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Accepted<'a> {
        request_id: &'a str,
    }
    http_util::json(StatusCode::ACCEPTED, &Accepted { request_id })
}

/// 401 (with the challenge of `mode`), 403 or 429 (with `Retry-After`).
pub fn auth_failure(error: &AuthError, mode: AuthMode) -> Response<Body> {
    let status = match error {
        AuthError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
        AuthError::Forbidden { .. } | AuthError::NotAdmin { .. } => StatusCode::FORBIDDEN,
        AuthError::Throttled { .. } | AuthError::Busy => StatusCode::TOO_MANY_REQUESTS,
    };
    let mut response = http_util::error(status, error.to_string());
    if let Some(secs) = error.retry_after_secs() {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    if let Some(challenge) = error.www_authenticate(mode) {
        response
            .headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    }
    response
}

/// 413 for a body over the limit, 400 for one that could not be read.
pub fn body_failure(error: BodyError) -> Response<Body> {
    match error {
        BodyError::TooLarge { .. } => {
            http_util::error(StatusCode::PAYLOAD_TOO_LARGE, error.to_string())
        }
        BodyError::Io(_) => http_util::error(StatusCode::BAD_REQUEST, error.to_string()),
    }
}

/// 405 with `Allow`.
pub fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut response = http_util::error(StatusCode::METHOD_NOT_ALLOWED, format!("use {allow}"));
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    response
}
