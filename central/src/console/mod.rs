//! The web console under `/console` on the central's listener: login, the events report and
//! event pages (with a terminate button), agents, integrations with their activity streams, and
//! a picture of events per minute.
//!
//! Pages are rendered on the server ([`pages`], maud templates). Every response carries a strict
//! Content-Security-Policy: scripts, styles and fetches only from the central itself, no inline
//! script or style, no framing. The one script ([`ASSET_JS`], embedded in the binary) keeps the
//! first page of the events report and the activity streams live: it asks the central for the
//! rows newer than the newest one shown and inserts them, without reloading the page.
//!
//! Users are the central's REST users (argon2 on the bounded pool, failures throttled per source
//! and name, exactly as for the API: [`crate::access::Access::user`]). A login starts a session
//! ([`session`]); pages without a session redirect to the login form, other requests without
//! one get 403. Every POST carries the session's CSRF token (the login form its own, paired
//! with a cookie), checked in constant time.
//!
//! What it does NOT do: serve the REST API, store anything (sessions live in memory), or show
//! data the central does not have: notifications (set at start-up from the central's
//! [`crate::notify::Notifier`]) and hosted integrations come through [`source::Sources`]; a
//! source left `None` shows an empty state that says so.

pub mod chart;
pub mod pages;
pub mod presence;
pub mod report;
pub mod session;
pub mod source;
pub mod summary;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use http::header::{
    HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE, LOCATION, RETRY_AFTER, SET_COOKIE,
};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use maud::Markup;
use percent_encoding::percent_decode_str;
use serde_json::Value;

use crate::access::{Caller, Refusal};
use crate::event::Status;
use crate::store::{Query, StatusChange, StoreError};
use crate::State;
use pages::AgentRow;
use report::{ReportForm, PAGE_SIZE};
use server::http_util::{self, BodyError};
use server::serve::Body;
use session::{Session, LOGIN_COOKIE, SESSION_COOKIE};
use summary::{PerMinute, Summary};

/// Where the console lives on the central's listener.
pub const PREFIX: &str = "/console";
/// The stylesheet's path.
pub const ASSET_CSS: &str = "/console/assets/console.css";
/// The live-update script's path.
pub const ASSET_JS: &str = "/console/assets/console.js";

/// The policy every console response carries: nothing from elsewhere, no inline script or
/// style, no plugins, no framing, forms only to the central.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; \
    frame-ancestors 'none'; base-uri 'none'";

/// The largest form body read (login, terminate, logout are a few fields).
const FORM_LIMIT: usize = 4 * 1024;

const STYLESHEET: &str = include_str!("../../assets/console.css");
const SCRIPT: &str = include_str!("../../assets/console.js");

/// The console's state; one per running central.
#[derive(Debug, Default)]
pub struct Console {
    /// Logged-in users.
    pub sessions: session::Sessions,
    /// Agents' connections, written by the websocket.
    pub presence: presence::Presence,
    /// Notifications and hosted integrations, when the central has them.
    pub sources: source::Sources,
}

/// Whether `path` belongs to the console.
pub fn owns(path: &str) -> bool {
    path == PREFIX
        || path
            .strip_prefix(PREFIX)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Answer one console request, with the security headers every console response carries.
pub async fn route(
    state: Arc<State>,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let mut response = dispatch(&state, request, peer).await;
    let headers = response.headers_mut();
    for (name, value) in [
        ("content-security-policy", CONTENT_SECURITY_POLICY),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers
        .entry(CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// What a path asks for once its segments are decoded.
async fn dispatch(
    state: &Arc<State>,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let method = request.method().clone();
    let rest = request.uri().path().strip_prefix(PREFIX).unwrap_or("");
    let Some(segments) = rest
        .split('/')
        .filter(|segment| !segment.is_empty())
        .map(|segment| {
            percent_decode_str(segment)
                .decode_utf8()
                .ok()
                .map(|s| s.into_owned())
        })
        .collect::<Option<Vec<String>>>()
    else {
        return html(
            StatusCode::BAD_REQUEST,
            pages::message(None, "Bad request", "The path is not valid UTF-8."),
        );
    };
    let parts: Vec<&str> = segments.iter().map(String::as_str).collect();
    let query = request.uri().query().map(str::to_owned);
    match parts.as_slice() {
        ["assets", name] => return asset(&method, name),
        ["login"] => {
            return match method {
                Method::GET => login_form(state, &request),
                Method::POST => login(state, request, peer).await,
                _ => not_allowed("GET, POST"),
            }
        }
        _ => {}
    }
    let allowed = match parts.as_slice() {
        [] | ["events"] | ["events", _] | ["agents"] | ["integrations"] | ["integrations", _] => {
            "GET"
        }
        ["integrations", _, "live"] => "GET",
        ["events", _, "terminate"] | ["logout"] => "POST",
        _ => {
            return html(
                StatusCode::NOT_FOUND,
                pages::message(None, "Not found", "There is no console page here."),
            )
        }
    };
    let token = session::cookie_value(request.headers(), SESSION_COOKIE);
    let session = token
        .as_deref()
        .and_then(|token| state.console.sessions.get(token, Instant::now()));
    let Some(session) = session else {
        let live = parts.last() == Some(&"live");
        return if method == Method::GET && !live {
            redirect(&format!("{PREFIX}/login"))
        } else {
            html(
                StatusCode::FORBIDDEN,
                pages::message(
                    None,
                    "Not logged in",
                    "Your session has ended: log in again.",
                ),
            )
        };
    };
    if method.as_str() != allowed {
        return not_allowed(allowed);
    }
    match parts.as_slice() {
        [] => overview(state, &session).await,
        ["events"] => events_report(state, &session, query.as_deref()).await,
        ["events", "live"] => live_events(state, query.as_deref()).await,
        ["events", id] => event_page(state, &session, id),
        ["events", id, "terminate"] => terminate(state, &session, id, request).await,
        ["agents"] => agents(state, &session).await,
        ["integrations"] => integrations(state, &session).await,
        ["integrations", id] => activity(state, &session, id, query.as_deref()).await,
        ["integrations", id, "live"] => live_activity(state, id, query.as_deref()).await,
        ["logout"] => logout(state, &session, token.as_deref().unwrap_or(""), request).await,
        _ => unreachable!("every path was matched above"),
    }
}

fn html(status: StatusCode, markup: Markup) -> Response<Body> {
    let mut response = Response::new(http_util::full(markup.into_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

fn redirect(location: &str) -> Response<Body> {
    let mut response = Response::new(http_util::full(""));
    *response.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(location) = HeaderValue::from_str(location) {
        response.headers_mut().insert(LOCATION, location);
    }
    response
}

fn not_allowed(allow: &'static str) -> Response<Body> {
    let mut response = html(
        StatusCode::METHOD_NOT_ALLOWED,
        pages::message(
            None,
            "Method not allowed",
            &format!("Allowed methods: {allow}."),
        ),
    );
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    response
}

fn set_cookie(response: &mut Response<Body>, cookie: &str) {
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().append(SET_COOKIE, value);
    }
}

fn store_failure(session: &Session, error: &StoreError) -> Response<Body> {
    tracing::error!(%error, "event store failure while serving the console");
    let mut response = html(
        StatusCode::SERVICE_UNAVAILABLE,
        pages::message(
            Some(session),
            "Unavailable",
            "The event store is unavailable; try again shortly.",
        ),
    );
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

fn asset(method: &Method, name: &str) -> Response<Body> {
    if *method != Method::GET {
        return not_allowed("GET");
    }
    let (body, kind) = match name {
        "console.css" => (STYLESHEET, "text/css; charset=utf-8"),
        "console.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        _ => {
            return html(
                StatusCode::NOT_FOUND,
                pages::message(None, "Not found", "There is no such asset."),
            )
        }
    };
    let mut response = Response::new(http_util::full(body));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(kind));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// The pairs of a form body, read up to [`FORM_LIMIT`].
async fn form_fields(
    request: Request<Incoming>,
) -> Result<Vec<(String, String)>, Box<Response<Body>>> {
    match http_util::read_body(request.into_body(), FORM_LIMIT).await {
        Ok(body) => Ok(form_urlencoded::parse(&body).into_owned().collect()),
        Err(error @ BodyError::TooLarge { .. }) => Err(Box::new(html(
            StatusCode::PAYLOAD_TOO_LARGE,
            pages::message(None, "Too large", &error.to_string()),
        ))),
        Err(error) => Err(Box::new(html(
            StatusCode::BAD_REQUEST,
            pages::message(None, "Bad request", &error.to_string()),
        ))),
    }
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

/// Read a state-changing form of `session`: 403 unless it carries the session's CSRF token.
async fn checked_form(
    session: &Session,
    request: Request<Incoming>,
) -> Result<Vec<(String, String)>, Box<Response<Body>>> {
    let fields = form_fields(request).await?;
    if field(&fields, "csrf").is_some_and(|given| session.csrf_matches(given)) {
        return Ok(fields);
    }
    tracing::warn!(user = %session.user, "console form refused: missing or wrong CSRF token");
    Err(Box::new(html(
        StatusCode::FORBIDDEN,
        pages::message(
            Some(session),
            "Refused",
            "The form's security token is missing or out of date; reload the page and try again.",
        ),
    )))
}

fn login_form(state: &State, request: &Request<Incoming>) -> Response<Body> {
    let logged_in = session::cookie_value(request.headers(), SESSION_COOKIE)
        .is_some_and(|token| state.console.sessions.get(&token, Instant::now()).is_some());
    if logged_in {
        return redirect(PREFIX);
    }
    login_page(state, None, StatusCode::OK)
}

/// The login form with a fresh CSRF token, paired with its cookie.
fn login_page(state: &State, error: Option<&str>, status: StatusCode) -> Response<Body> {
    let token = session::random_token();
    let mut response = html(status, pages::login(&token, error));
    set_cookie(
        &mut response,
        &session::login_cookie(&token, state.config.tls.is_some()),
    );
    response
}

async fn login(state: &State, request: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let paired = session::cookie_value(request.headers(), LOGIN_COOKIE);
    let fields = match form_fields(request).await {
        Ok(fields) => fields,
        Err(response) => return *response,
    };
    let form = |error: &str, status| login_page(state, Some(error), status);
    if !session::login_form_matches(paired.as_deref(), field(&fields, "csrf")) {
        tracing::warn!(%peer, "console login refused: missing or wrong login form token");
        return form(
            "The login form expired or was not sent from this console; try again.",
            StatusCode::FORBIDDEN,
        );
    }
    let name = field(&fields, "user").unwrap_or("").to_owned();
    let password = field(&fields, "password").unwrap_or("").to_owned();
    match state
        .access
        .user(&state.config, name, password, peer.ip())
        .await
    {
        Ok(Caller::User(user)) => {
            let (token, _) = state.console.sessions.create(&user, Instant::now());
            tracing::info!(%user, %peer, "console login");
            let secure = state.config.tls.is_some();
            let mut response = redirect(PREFIX);
            set_cookie(&mut response, &session::session_cookie(&token, secure));
            set_cookie(
                &mut response,
                &session::set_cookie(LOGIN_COOKIE, "", None, secure),
            );
            response
        }
        Ok(_) | Err(Refusal::Unauthorized) => {
            tracing::warn!(%peer, "console login refused: wrong user name or password");
            form("Wrong user name or password.", StatusCode::UNAUTHORIZED)
        }
        Err(refusal @ Refusal::Forbidden(_)) => form(&refusal.to_string(), StatusCode::FORBIDDEN),
        Err(refusal) => {
            let mut response = form(&refusal.to_string(), StatusCode::TOO_MANY_REQUESTS);
            if let Some(secs) = refusal.retry_after_secs() {
                response
                    .headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(secs));
            }
            response
        }
    }
}

async fn logout(
    state: &State,
    session: &Session,
    token: &str,
    request: Request<Incoming>,
) -> Response<Body> {
    if let Err(refused) = checked_form(session, request).await {
        return *refused;
    }
    state.console.sessions.end(token);
    tracing::info!(user = %session.user, "console logout");
    let mut response = redirect(&format!("{PREFIX}/login"));
    set_cookie(
        &mut response,
        &session::set_cookie(SESSION_COOKIE, "", None, state.config.tls.is_some()),
    );
    response
}

/// Run a blocking store read off the async runtime.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| StoreError::Task(error.to_string()))?
}

async fn summary(state: &State) -> Result<Summary, StoreError> {
    let store = state.store.clone();
    let now = now_ms();
    blocking(move || Summary::load(&store, now)).await
}

async fn overview(state: &State, session: &Session) -> Response<Body> {
    let summary = match summary(state).await {
        Ok(summary) => summary,
        Err(error) => return store_failure(session, &error),
    };
    let notifications = match state.console.sources.notifications.clone() {
        Some(source) => {
            let counted = blocking(move || {
                let mut counts = PerMinute::ending_at(now_ms());
                for minute in source.per_minute(counts.start_ms) {
                    let integration = &minute.integration;
                    let delivered = format!("{integration} delivered");
                    counts.add(&delivered, minute.minute_ms, minute.delivered);
                    let suppressed = format!("{integration} suppressed");
                    counts.add(&suppressed, minute.minute_ms, minute.suppressed);
                }
                Ok(counts)
            })
            .await;
            match counted {
                Ok(counts) => Some(counts),
                Err(error) => return store_failure(session, &error),
            }
        }
        None => None,
    };
    html(
        StatusCode::OK,
        pages::overview(session, &summary, notifications.as_ref()),
    )
}

async fn query_events(state: &State, query: Query) -> Result<crate::store::Page, StoreError> {
    let store = state.store.clone();
    blocking(move || store.query(&query)).await
}

async fn events_report(state: &State, session: &Session, raw: Option<&str>) -> Response<Body> {
    let form = ReportForm::parse(raw);
    let query = match form.query() {
        Ok(query) => query,
        Err(error) => {
            return html(
                StatusCode::BAD_REQUEST,
                pages::events_report(session, &form, None, Some(&error)),
            )
        }
    };
    match query_events(state, query).await {
        Ok(page) => html(
            StatusCode::OK,
            pages::events_report(session, &form, Some(&page), None),
        ),
        Err(error) => store_failure(session, &error),
    }
}

/// The events of `page` newer than `after` (ids are time-ordered and spelled alike, so their
/// text orders them).
fn newer_than(events: Vec<Value>, after: &str) -> Vec<Value> {
    events
        .into_iter()
        .filter(|event| {
            event
                .get("id")
                .and_then(Value::as_str)
                .is_some_and(|id| id > after)
        })
        .collect()
}

/// A fragment for the script: the rows of the first page newer than `after`.
fn fragment(result: Result<Vec<Value>, String>, render: fn(&[Value]) -> Markup) -> Response<Body> {
    match result {
        Ok(events) => html(StatusCode::OK, render(&events)),
        Err(error) => html(
            StatusCode::BAD_REQUEST,
            pages::message(None, "Bad request", &error),
        ),
    }
}

async fn live_events(state: &State, raw: Option<&str>) -> Response<Body> {
    let form = ReportForm::parse(raw);
    let mut query = match form.query() {
        Ok(query) => query,
        Err(error) => return fragment(Err(error), pages::event_rows),
    };
    query.offset = 0;
    match query_events(state, query).await {
        Ok(page) => fragment(Ok(newer_than(page.events, &form.after)), pages::event_rows),
        Err(error) => fragment(Err(error.to_string()), pages::event_rows),
    }
}

fn event_page(state: &State, session: &Session, id: &str) -> Response<Body> {
    match state.store.get(id) {
        Ok(Some(event)) => {
            let notifications = state
                .console
                .sources
                .notifications
                .as_ref()
                .map(|source| source.of_event(id));
            html(
                StatusCode::OK,
                pages::event_page(session, &event, notifications.as_ref()),
            )
        }
        Ok(None) => no_event(session, id),
        Err(error) => store_failure(session, &error),
    }
}

fn no_event(session: &Session, id: &str) -> Response<Body> {
    html(
        StatusCode::NOT_FOUND,
        pages::message(
            Some(session),
            "Not found",
            &format!("There is no event with id {id}."),
        ),
    )
}

async fn terminate(
    state: &State,
    session: &Session,
    id: &str,
    request: Request<Incoming>,
) -> Response<Body> {
    if let Err(refused) = checked_form(session, request).await {
        return *refused;
    }
    match crate::rest::apply_status(state, id, Status::Terminated).await {
        Ok(StatusChange::Changed(_) | StatusChange::Terminated(_)) => {
            tracing::info!(user = %session.user, event = %id, "event terminated from the console");
            redirect(&format!("{PREFIX}/events/{}", pages::segment(id)))
        }
        Ok(StatusChange::NotFound) => no_event(session, id),
        Err(error) => store_failure(session, &error),
    }
}

async fn agents(state: &State, session: &Session) -> Response<Body> {
    let summary = match summary(state).await {
        Ok(summary) => summary,
        Err(error) => return store_failure(session, &error),
    };
    let rows: Vec<AgentRow> = state
        .config
        .agents
        .iter()
        .map(|agent| AgentRow {
            id: agent.id.clone(),
            presence: state.console.presence.of(&agent.id),
            summary: summary.agents.get(&agent.id).cloned(),
            run_on: state.agent_integrations.ids_of(&agent.id),
        })
        .collect();
    html(
        StatusCode::OK,
        pages::agents(session, &rows, time::OffsetDateTime::now_utc()),
    )
}

async fn integrations(state: &State, session: &Session) -> Response<Body> {
    let summary = match summary(state).await {
        Ok(summary) => summary,
        Err(error) => return store_failure(session, &error),
    };
    let hosted = state
        .console
        .sources
        .hosted
        .as_ref()
        .map(|source| source.list());
    html(
        StatusCode::OK,
        pages::integrations(session, &summary, hosted.as_deref()),
    )
}

/// The activity query of integration `id`: `status` filters the outcome, `after` asks for
/// what is newer than the newest item shown.
fn activity_query(id: &str, raw: Option<&str>) -> Result<(Query, String, String), String> {
    let mut outcome = String::new();
    let mut after = String::new();
    for (key, value) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        match key.as_ref() {
            "status" => outcome = value.trim().to_owned(),
            "after" => after = value.into_owned(),
            _ => {}
        }
    }
    let status = match outcome.as_str() {
        "" => None,
        text => Some(Status::parse(text).ok_or_else(|| {
            format!("the outcome must be ACTIVE, SUSPENDED or TERMINATED, got `{text}`")
        })?),
    };
    let query = Query {
        status,
        integration_ids: Some(vec![id.to_owned()]),
        newest_first: true,
        limit: PAGE_SIZE,
        ..Query::default()
    };
    Ok((query, outcome, after))
}

async fn activity(state: &State, session: &Session, id: &str, raw: Option<&str>) -> Response<Body> {
    let (query, outcome, _) = match activity_query(id, raw) {
        Ok(parsed) => parsed,
        Err(error) => {
            return html(
                StatusCode::BAD_REQUEST,
                pages::message(Some(session), "Bad request", &error),
            )
        }
    };
    let (page, summary) = match tokio::try_join!(query_events(state, query), summary(state)) {
        Ok(both) => both,
        Err(error) => return store_failure(session, &error),
    };
    let hosted = state
        .console
        .sources
        .hosted
        .as_ref()
        .and_then(|source| source.activity(id, PAGE_SIZE));
    html(
        StatusCode::OK,
        pages::activity(
            session,
            id,
            summary.integrations.get(id),
            &outcome,
            &page.events,
            hosted.as_ref(),
        ),
    )
}

async fn live_activity(state: &State, id: &str, raw: Option<&str>) -> Response<Body> {
    let (query, _, after) = match activity_query(id, raw) {
        Ok(parsed) => parsed,
        Err(error) => return fragment(Err(error), pages::activity_items),
    };
    match query_events(state, query).await {
        Ok(page) => fragment(Ok(newer_than(page.events, &after)), pages::activity_items),
        Err(error) => fragment(Err(error.to_string()), pages::activity_items),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_owns_its_prefix_only() {
        assert!(owns("/console"));
        assert!(owns("/console/"));
        assert!(owns("/console/events/x"));
        assert!(!owns("/consoles"));
        assert!(!owns("/api/xm/1/events"));
    }

    #[test]
    fn the_policy_forbids_inline_script_and_foreign_sources() {
        assert!(CONTENT_SECURITY_POLICY.contains("default-src 'none'"));
        assert!(CONTENT_SECURITY_POLICY.contains("script-src 'self';"));
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));
        assert!(!SCRIPT.contains("eval("), "the script evaluates no strings");
    }

    #[test]
    fn live_updates_only_send_newer_events() {
        let events = vec![
            serde_json::json!({"id": "0190a1b2-0000-7000-8000-000000000003"}),
            serde_json::json!({"id": "0190a1b2-0000-7000-8000-000000000002"}),
            serde_json::json!({"id": "0190a1b2-0000-7000-8000-000000000001"}),
        ];
        let newer = newer_than(events.clone(), "0190a1b2-0000-7000-8000-000000000002");
        assert_eq!(newer, events[..1]);
        assert_eq!(newer_than(events.clone(), "").len(), 3);
    }

    #[test]
    fn activity_filters_are_checked() {
        let (query, outcome, after) =
            activity_query("alerts", Some("status=terminated&after=x")).expect("valid");
        assert_eq!(query.status, Some(Status::Terminated));
        assert_eq!(query.integration_ids, Some(vec!["alerts".to_owned()]));
        assert_eq!((outcome.as_str(), after.as_str()), ("terminated", "x"));
        let error = activity_query("alerts", Some("status=done")).expect_err("bad outcome");
        assert!(error.contains("`done`"));
    }
}
