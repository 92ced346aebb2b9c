//! Request routing and the xMatters-shaped REST API: the events report, single events, status
//! changes, plus health, readiness and metrics; hosted integrations' trigger URLs, token
//! endpoint and activity streams are routed to [`crate::hosted`].
//!
//! Authentication and scope come from [`crate::access`]: Basic for configured REST users (every
//! event), `Authorization: Bearer <agent token>` (that agent's events), or a script credential
//! (the built-in `xMatters` endpoint of one integration: that integration's events). An event
//! outside the caller's scope is answered like a missing one. Health, readiness and metrics are
//! open, as load balancers and scrapers expect.

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{HeaderValue, ALLOW, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;

use crate::access::{Caller, Refusal};
use crate::event::Status;
use crate::metrics::Metrics;
use crate::store::{Query, StatusChange, StoreError};
use crate::{ws, State};
use server::http_util::{self, BodyError};
use server::serve::Body;

/// Prefix of the events API.
const EVENTS_PATH: &str = "/api/xm/1/events";

/// Default and maximum page sizes of the events report, as in xMatters.
pub const DEFAULT_LIMIT: usize = 100;
/// The largest `limit` accepted.
pub const MAX_LIMIT: usize = 1000;

/// The largest REST request body accepted (status changes are tiny).
const BODY_LIMIT: usize = 64 * 1024;

/// Dispatch one HTTP request.
pub async fn route(
    state: Arc<State>,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    match path.as_str() {
        protocol::CONNECT_PATH => match method {
            Method::GET => ws::upgrade(state, request, peer),
            _ => not_allowed("GET"),
        },
        "/healthz" => match method {
            Method::GET => text(StatusCode::OK, "ok\n"),
            _ => not_allowed("GET"),
        },
        "/readyz" => match method {
            Method::GET if *state.shutdown.borrow() => {
                text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
            }
            Method::GET => text(StatusCode::OK, "ready\n"),
            _ => not_allowed("GET"),
        },
        "/metrics" => match method {
            Method::GET => {
                let mut response = text(
                    StatusCode::OK,
                    state.metrics.render(&state.notifier.metrics),
                );
                response.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                response
            }
            _ => not_allowed("GET"),
        },
        EVENTS_PATH => {
            if method != Method::GET && method != Method::POST {
                return not_allowed("GET, POST");
            }
            let caller = match caller(&state, &request, peer).await {
                Ok(caller) => caller,
                Err(refusal) => return refusal,
            };
            if method == Method::GET {
                list_events(&state, &caller, request.uri().query()).await
            } else {
                change_status(&state, &caller, request).await
            }
        }
        integration::http::TOKEN_PATH => match (method, &state.hosted) {
            (Method::POST, Some(hosted)) => {
                integration::http::token(hosted.authenticator(), request, peer.ip()).await
            }
            (Method::POST, None) => http_util::error(
                StatusCode::NOT_FOUND,
                "this central hosts no integrations, so it issues no tokens",
            ),
            _ => not_allowed("POST"),
        },
        other if integration::http::trigger_id(other).is_some() => {
            let id = integration::http::trigger_id(other).unwrap_or_default();
            match &state.hosted {
                Some(hosted) => hosted.trigger(&state, request, peer, id).await,
                None => http_util::error(
                    StatusCode::NOT_FOUND,
                    format!("no integration with id {id:?}"),
                ),
            }
        }
        other if integration::http::logs_id(other).is_some() => {
            let id = integration::http::logs_id(other).unwrap_or_default();
            if method != Method::GET {
                return not_allowed("GET");
            }
            let caller = match caller(&state, &request, peer).await {
                Ok(caller) => caller,
                Err(refusal) => return refusal,
            };
            match &state.hosted {
                Some(hosted) => hosted.logs(&caller, id, request.uri().query()),
                None => http_util::error(
                    StatusCode::NOT_FOUND,
                    format!("no integration with id {id:?}"),
                ),
            }
        }
        console if crate::console::owns(console) => {
            crate::console::route(state, request, peer).await
        }
        other => {
            // GET-only resources: one event, the directory, an event's notifications.
            let event_id = other
                .strip_prefix(EVENTS_PATH)
                .and_then(|rest| rest.strip_prefix('/'))
                .filter(|id| !id.is_empty() && !id.contains('/'));
            let resource = crate::report::Resource::of(other);
            if event_id.is_none() && resource.is_none() {
                return http_util::error(StatusCode::NOT_FOUND, format!("no resource at {other}"));
            }
            if method != Method::GET {
                return not_allowed("GET");
            }
            let caller = match caller(&state, &request, peer).await {
                Ok(caller) => caller,
                Err(refusal) => return refusal,
            };
            let query = request.uri().query();
            match (event_id, resource) {
                (Some(id), _) => get_event(&state, &caller, id, query),
                (None, Some(resource)) => {
                    crate::report::get(&state, &caller, &resource, other, query)
                }
                (None, None) => {
                    http_util::error(StatusCode::NOT_FOUND, format!("no resource at {other}"))
                }
            }
        }
    }
}

/// The REST caller of `request` ([`crate::access`]), or the refusal to answer.
async fn caller(
    state: &State,
    request: &Request<Incoming>,
    peer: SocketAddr,
) -> Result<Caller, Response<Body>> {
    state
        .access
        .caller(&state.config, request.headers(), peer.ip())
        .await
        .map_err(|refusal| refused(&refusal))
}

fn text(status: StatusCode, body: impl Into<bytes::Bytes>) -> Response<Body> {
    let mut response = Response::new(http_util::full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn not_allowed(allow: &'static str) -> Response<Body> {
    let mut response = http_util::error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("allowed methods: {allow}"),
    );
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    response
}

/// 401 with a challenge, 403, or 429 with `Retry-After`, each with a JSON message.
fn refused(refusal: &Refusal) -> Response<Body> {
    let status = match refusal {
        Refusal::Unauthorized => StatusCode::UNAUTHORIZED,
        Refusal::Forbidden(_) => StatusCode::FORBIDDEN,
        Refusal::Busy | Refusal::Throttled(_) => StatusCode::TOO_MANY_REQUESTS,
    };
    let mut response = http_util::error(status, refusal.to_string());
    let headers = response.headers_mut();
    if *refusal == Refusal::Unauthorized {
        headers.insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"xmcentral\""),
        );
    }
    if let Some(secs) = refusal.retry_after_secs() {
        headers.insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

/// 503 with `Retry-After` for a store failure (logged here, never shown to the caller).
pub(crate) fn store_failure(error: &StoreError) -> Response<Body> {
    tracing::error!(%error, "event store failure while serving REST");
    let mut response = http_util::error(
        StatusCode::SERVICE_UNAVAILABLE,
        "the event store is unavailable",
    );
    response
        .headers_mut()
        .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// Parse the events-report query string. Unknown parameters are ignored, as xMatters ignores
/// parameters it does not support for a resource.
pub fn parse_query(raw: Option<&str>) -> Result<Query, String> {
    let mut query = Query {
        limit: DEFAULT_LIMIT,
        ..Query::default()
    };
    let mut property_name = None;
    let mut property_value = None;
    for (key, value) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        match key.as_ref() {
            "requestId" => query.request_id = Some(value.into_owned()),
            "status" => {
                query.status = Some(Status::parse(&value).ok_or_else(|| {
                    format!("status must be ACTIVE, SUSPENDED or TERMINATED, got `{value}`")
                })?)
            }
            "propertyName" => {
                property_name = Some(crate::event::strip_locale(&value).to_owned());
            }
            "propertyValue" => property_value = Some(value.into_owned()),
            "from" => query.created_from_ms = Some(parse_time("from", &value)?),
            "to" => query.created_until_ms = Some(parse_time("to", &value)?),
            "offset" => query.offset = parse_offset(&value)?,
            "limit" => query.limit = parse_limit(&value)?,
            _ => {}
        }
    }
    query.property = match (property_name, property_value) {
        (Some(name), Some(value)) => Some((name, value)),
        (None, None) => None,
        _ => return Err("propertyName and propertyValue must be used together".to_owned()),
    };
    Ok(query)
}

/// The `offset` of a list: how many items to skip.
pub(crate) fn parse_offset(value: &str) -> Result<usize, String> {
    value
        .parse()
        .map_err(|_| format!("offset must be a non-negative integer, got `{value}`"))
}

/// The `limit` of a list: 1 to [`MAX_LIMIT`].
pub(crate) fn parse_limit(value: &str) -> Result<usize, String> {
    value
        .parse()
        .ok()
        .filter(|limit| (1..=MAX_LIMIT).contains(limit))
        .ok_or_else(|| format!("limit must be an integer from 1 to {MAX_LIMIT}, got `{value}`"))
}

/// A `from`/`to` time, RFC 3339 / ISO 8601 with an offset (e.g. `2026-01-31T08:00:00Z`), in
/// Unix milliseconds (times before 1970 count as 0).
fn parse_time(name: &str, value: &str) -> Result<u64, String> {
    let time = time::OffsetDateTime::parse(value, &Rfc3339).map_err(|_| {
        format!("{name} must be an ISO 8601 UTC time like 2026-01-31T08:00:00Z, got `{value}`")
    })?;
    Ok(u64::try_from(time.unix_timestamp_nanos() / 1_000_000).unwrap_or(0))
}

/// Unix milliseconds as the RFC 3339 text `parse_time` reads.
fn time_text(millis: u64) -> Option<String> {
    let nanos = i128::from(millis) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()?
        .format(&Rfc3339)
        .ok()
}

/// The `links.self` (and `next`) of a page: the query, normalized, with its paging.
fn page_link(query: &Query, offset: usize) -> String {
    let mut params = form_urlencoded::Serializer::new(String::new());
    if let Some(request_id) = &query.request_id {
        params.append_pair("requestId", request_id);
    }
    if let Some(status) = query.status {
        params.append_pair("status", status.as_str());
    }
    if let Some((name, value)) = &query.property {
        params.append_pair("propertyName", name);
        params.append_pair("propertyValue", value);
    }
    for (name, millis) in [
        ("from", query.created_from_ms),
        ("to", query.created_until_ms),
    ] {
        if let Some(text) = millis.and_then(time_text) {
            params.append_pair(name, &text);
        }
    }
    params.append_pair("offset", &offset.to_string());
    params.append_pair("limit", &query.limit.to_string());
    format!("{EVENTS_PATH}?{}", params.finish())
}

async fn list_events(state: &State, caller: &Caller, raw_query: Option<&str>) -> Response<Body> {
    let mut query = match parse_query(raw_query) {
        Ok(query) => query,
        Err(message) => return http_util::error(StatusCode::BAD_REQUEST, message),
    };
    let (agent, integrations) = caller.scope();
    query.agent_id = agent.map(str::to_owned);
    query.integration_ids = integrations.map(<[String]>::to_vec);
    let store = state.store.clone();
    let lookup = query.clone();
    let page = match tokio::task::spawn_blocking(move || store.query(&lookup)).await {
        Ok(Ok(page)) => page,
        Ok(Err(error)) => return store_failure(&error),
        Err(error) => return store_failure(&StoreError::Task(error.to_string())),
    };
    let count = page.events.len();
    let mut links = json!({ "self": page_link(&query, query.offset) });
    if query.offset.saturating_add(count) < page.total {
        links["next"] = Value::from(page_link(&query, query.offset + count));
    }
    http_util::json(
        StatusCode::OK,
        &json!({ "count": count, "total": page.total, "data": page.events, "links": links }),
    )
}

/// One event. `embed=recipients` lists its recipients as xMatters does (`{count, total, data}`
/// with each target's `recipientType`); properties are always included.
fn get_event(state: &State, caller: &Caller, id: &str, query: Option<&str>) -> Response<Body> {
    let embeds_recipients = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .any(|(key, value)| key == "embed" && value.split(',').any(|v| v.trim() == "recipients"));
    match state.store.get(id) {
        Ok(Some(mut event)) if caller.may_touch(&event) => {
            if embeds_recipients {
                let policy = state.notifier.policy();
                event["recipients"] =
                    crate::report::recipients_list(&event["recipients"], &policy.directory);
            }
            http_util::json(StatusCode::OK, &event)
        }
        Ok(_) => http_util::error(StatusCode::NOT_FOUND, format!("no event with id {id}")),
        Err(error) => store_failure(&error),
    }
}

async fn change_status(
    state: &State,
    caller: &Caller,
    request: Request<Incoming>,
) -> Response<Body> {
    let body = match http_util::read_body(request.into_body(), BODY_LIMIT).await {
        Ok(body) => body,
        Err(error @ BodyError::TooLarge { .. }) => {
            return http_util::error(StatusCode::PAYLOAD_TOO_LARGE, error.to_string())
        }
        Err(error) => return http_util::error(StatusCode::BAD_REQUEST, error.to_string()),
    };
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return http_util::error(StatusCode::BAD_REQUEST, "the body must be a JSON object");
    };
    let Some(id) = body
        .get("id")
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
    else {
        return http_util::error(StatusCode::BAD_REQUEST, "`id` (the event id) is required");
    };
    let Some(status_text) = body.get("status").and_then(Value::as_str) else {
        return http_util::error(
            StatusCode::BAD_REQUEST,
            "`status` is required (ACTIVE, SUSPENDED or TERMINATED); this central does not create \
             events through REST",
        );
    };
    let Some(status) = Status::parse(status_text) else {
        return http_util::error(
            StatusCode::BAD_REQUEST,
            format!("unknown status `{status_text}`: use ACTIVE, SUSPENDED or TERMINATED"),
        );
    };
    // Outside the caller's scope, the event does not exist for them.
    let visible = match state.store.get(id) {
        Ok(event) => event.is_some_and(|event| caller.may_touch(&event)),
        Err(error) => return store_failure(&error),
    };
    if !visible {
        return http_util::error(StatusCode::NOT_FOUND, format!("no event with id {id}"));
    }
    let changed = match apply_status(state, id, status).await {
        Ok(StatusChange::Changed(event)) => event,
        Ok(StatusChange::NotFound) => {
            return http_util::error(StatusCode::NOT_FOUND, format!("no event with id {id}"))
        }
        Ok(StatusChange::Terminated(_)) => {
            return http_util::error(
                StatusCode::CONFLICT,
                format!("event {id} is terminated; a terminated event cannot change status"),
            )
        }
        Err(error) => return store_failure(&error),
    };
    http_util::json(StatusCode::ACCEPTED, &changed)
}

/// Change event `id` to `status` and wait until the change is durable: the one path for REST
/// and the console's terminate button. A terminated or suspended event notifies nobody more:
/// its PENDING notifications are cancelled in the same flush. The caller checked that the event
/// is in scope.
pub async fn apply_status(
    state: &State,
    id: &str,
    status: Status,
) -> Result<StatusChange, StoreError> {
    let change = state.store.set_status(id, status)?;
    if let StatusChange::Changed(_) = change {
        if status != Status::Active {
            state.notifier.cancel(id)?;
        }
        state.store.wait_durable().await?;
        Metrics::add(&state.metrics.status_changes, 1);
        tracing::info!(event = %id, status = status.as_str(), "event status changed");
    }
    Ok(change)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing() {
        let query = parse_query(Some(
            "requestId=r%201&status=active&propertyName=Host%23en&propertyValue=db%231&offset=5&limit=7&embed=x",
        ))
        .expect("valid");
        assert_eq!(query.request_id.as_deref(), Some("r 1"));
        assert_eq!(query.status, Some(Status::Active));
        assert_eq!(query.property, Some(("Host".into(), "db#1".into())));
        assert_eq!((query.offset, query.limit), (5, 7));

        let defaults = parse_query(None).expect("valid");
        assert_eq!((defaults.offset, defaults.limit), (0, DEFAULT_LIMIT));

        for bad in [
            "status=paused",
            "limit=0",
            "limit=1001",
            "limit=x",
            "offset=-1",
            "propertyName=Host",
            "propertyValue=x",
            "from=yesterday",
            "to=2026-01-01",
        ] {
            assert!(parse_query(Some(bad)).is_err(), "{bad}");
        }
        assert_eq!(
            parse_query(Some("limit=1000")).expect("valid").limit,
            MAX_LIMIT
        );
    }

    #[test]
    fn page_links_round_trip_through_the_parser() {
        let query = parse_query(Some("requestId=a%26b&propertyName=N%23en&propertyValue=v"))
            .expect("valid");
        let link = page_link(&query, 100);
        let (_, raw) = link.split_once('?').expect("has a query");
        let back = parse_query(Some(raw)).expect("valid");
        assert_eq!(back.request_id.as_deref(), Some("a&b"));
        assert_eq!(back.property, query.property);
        assert_eq!(back.offset, 100);

        let timed = parse_query(Some(
            "from=2026-01-31T08%3A00%3A00Z&to=2026-02-01T00:00:00%2B01:00",
        ))
        .expect("valid");
        let link = page_link(&timed, 0);
        let back = parse_query(link.split_once('?').map(|(_, raw)| raw)).expect("valid");
        assert_eq!(back.created_from_ms, timed.created_from_ms);
        assert_eq!(back.created_until_ms, timed.created_until_ms);
        assert_eq!(timed.created_from_ms, Some(1_769_846_400_000));
        assert_eq!(
            timed.created_until_ms,
            Some(1_769_900_400_000),
            "the offset counts"
        );
    }
}
