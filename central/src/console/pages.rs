//! The console's HTML, as maud templates: checked when the central compiles, and every value
//! written into them is escaped unless a template says otherwise (none does).
//!
//! Pages link one stylesheet and one script, both served by the central itself; there is no
//! inline script or style, so the Content-Security-Policy can forbid both. Forms have labels,
//! tables have headers, and the navigation is a list of links, so every page works with the
//! keyboard alone.
//!
//! What it does NOT do: read data or decide status codes (see [`super`]).

use maud::{html, Markup, DOCTYPE};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::Value;

use super::presence::AgentPresence;
use super::report::ReportForm;
use super::session::Session;
use super::source::{ActivityEntry, HostedIntegration, NotificationView};
use super::summary::{AgentSummary, IntegrationSummary, PerMinute, Summary, WINDOW};
use super::{chart, ASSET_CSS, ASSET_JS, PREFIX};
use crate::event::Status;
use crate::hosted::HOSTED_AGENT_ID;
use crate::store::Page;

/// The longest property value shown whole; longer ones are cut.
const VALUE_SHOWN: usize = 300;

/// The sections of the navigation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// The picture.
    Overview,
    /// The events report and event pages.
    Events,
    /// Integrations and their activity streams.
    Integrations,
    /// Connected agents.
    Agents,
    /// Login, errors.
    None,
}

/// What a path segment keeps unencoded: the unreserved characters of RFC 3986.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// A path segment, percent-encoded for a link.
pub fn segment(text: &str) -> String {
    utf8_percent_encode(text, SEGMENT).to_string()
}

/// `2024-05-01 13:30:05 UTC` from an RFC 3339 UTC time; other text is shown as is.
pub fn when(rfc3339: &str) -> String {
    let Some((date, rest)) = rfc3339.split_once('T') else {
        return rfc3339.to_owned();
    };
    let clock = rest.split(['.', 'Z', '+']).next().unwrap_or(rest);
    format!("{date} {clock} UTC")
}

fn field<'a>(event: &'a Value, name: &str) -> &'a str {
    event.get(name).and_then(Value::as_str).unwrap_or("")
}

/// A JSON value as text: strings as they are, other values as JSON; cut past [`VALUE_SHOWN`].
fn shown(value: &Value) -> String {
    let text = match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    match text.char_indices().nth(VALUE_SHOWN) {
        Some((cut, _)) => format!(
            "{}… ({} characters in all)",
            &text[..cut],
            text.chars().count()
        ),
        None => text,
    }
}

/// The page frame: head, navigation (when logged in), main content.
pub fn layout(title: &str, session: Option<&Session>, section: Section, main: Markup) -> Markup {
    let nav = [
        (Section::Overview, "Overview", PREFIX.to_owned()),
        (Section::Events, "Events", format!("{PREFIX}/events")),
        (
            Section::Integrations,
            "Integrations",
            format!("{PREFIX}/integrations"),
        ),
        (Section::Agents, "Agents", format!("{PREFIX}/agents")),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · xmcentral console" }
                link rel="stylesheet" href=(ASSET_CSS);
                script src=(ASSET_JS) defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header {
                    span.brand { "xmcentral" }
                    @if let Some(session) = session {
                        nav aria-label="Console" {
                            ul {
                                @for (target, label, href) in &nav {
                                    li {
                                        @if *target == section {
                                            a href=(href) aria-current="page" { (label) }
                                        } @else {
                                            a href=(href) { (label) }
                                        }
                                    }
                                }
                            }
                        }
                        form.logout method="post" action=(format!("{PREFIX}/logout")) {
                            input type="hidden" name="csrf" value=(session.csrf);
                            span { "Signed in as " strong { (session.user) } " " }
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main #main { h1 { (title) } (main) }
            }
        }
    }
}

/// The login form. `form_token` pairs it with its cookie (CSRF before a session exists).
pub fn login(form_token: &str, error: Option<&str>) -> Markup {
    layout(
        "Log in",
        None,
        Section::None,
        html! {
            @if let Some(error) = error {
                p.error role="alert" #login-error { (error) }
            }
            form.login method="post" action=(format!("{PREFIX}/login")) {
                input type="hidden" name="csrf" value=(form_token);
                label for="user" { "User name" }
                input #user type="text" name="user" autocomplete="username" required autofocus;
                label for="password" { "Password" }
                input #password type="password" name="password" autocomplete="current-password" required;
                button type="submit" { "Log in" }
            }
            p.hint { "Use a REST user of this central (a user with the role REST Web Service User)." }
        },
    )
}

/// A page that only says something went wrong (or was refused).
pub fn message(session: Option<&Session>, title: &str, text: &str) -> Markup {
    layout(
        title,
        session,
        Section::None,
        html! {
            p.error role="alert" { (text) }
            p { a href=(PREFIX) { "Back to the console" } }
        },
    )
}

/// The overview: the picture of events (and notifications, when tracked) per minute.
pub fn overview(session: &Session, summary: &Summary, notifications: Option<&PerMinute>) -> Markup {
    layout(
        "Overview",
        Some(session),
        Section::Overview,
        html! {
            h2 { "Events per minute, by integration (last 3 hours, UTC)" }
            (chart::stacked_bars("Events per minute by integration", &summary.per_minute))
            h2 { "Notifications per minute, by integration: delivered and suppressed (last 3 hours, UTC)" }
            @match notifications {
                Some(counts) if counts.total() == 0 => p.empty { "No notification was delivered or held back by flood control in the last 3 hours." },
                Some(counts) => (chart::stacked_bars("Notifications per minute by integration, delivered and suppressed", counts)),
                None => p.empty { "This central does not track notifications, so there is nothing to draw." },
            }
            (truncation_note(summary))
        },
    )
}

fn truncation_note(summary: &Summary) -> Markup {
    html! {
        @if summary.truncated {
            p.hint { "Only the newest " (super::summary::MAX_EVENTS) " events were read; older activity is not counted here." }
        }
    }
}

/// Rows of the events table (the live updates send the same rows).
pub fn event_rows(events: &[Value]) -> Markup {
    html! {
        @for event in events {
            @let id = field(event, "id");
            tr data-id=(id) {
                td { (when(field(event, "created"))) }
                td { a href=(format!("{PREFIX}/events/{}", segment(id))) { code { (id) } } }
                td { span class=(format!("status {}", field(event, "status").to_ascii_lowercase())) { (field(event, "status")) } }
                td { (field(event, "priority")) }
                td { a href=(format!("{PREFIX}/integrations/{}", segment(field(event, "integrationId")))) { (field(event, "integrationId")) } }
                td { (field(event, "agentId")) }
                td { code.request-id { (field(event, "requestId")) } }
            }
        }
    }
}

/// The events report: the search form, one page of events newest first, paging links. The
/// first page updates itself as events arrive.
pub fn events_report(
    session: &Session,
    form: &ReportForm,
    page: Option<&Page>,
    error: Option<&str>,
) -> Markup {
    let statuses = [Status::Active, Status::Suspended, Status::Terminated];
    html! {
        (layout("Events", Some(session), Section::Events, html! {
            form.search method="get" action=(format!("{PREFIX}/events")) role="search" {
                div { label for="requestId" { "Request id" } input #requestId name="requestId" value=(form.request_id); }
                div {
                    label for="status" { "Status" }
                    select #status name="status" {
                        option value="" selected[form.status.is_empty()] { "Any" }
                        @for status in statuses {
                            option value=(status.as_str()) selected[form.status.eq_ignore_ascii_case(status.as_str())] { (status.as_str()) }
                        }
                    }
                }
                div { label for="propertyName" { "Property" } input #propertyName name="propertyName" value=(form.property_name); }
                div { label for="propertyValue" { "Value" } input #propertyValue name="propertyValue" value=(form.property_value); }
                div { label for="from" { "From (UTC)" } input #from type="datetime-local" step="1" name="from" value=(form.from); }
                div { label for="to" { "To (UTC)" } input #to type="datetime-local" step="1" name="to" value=(form.to); }
                button type="submit" { "Search" }
            }
            @if let Some(error) = error {
                p.error role="alert" { (error) }
            }
            @if let Some(page) = page {
                p #result-count data-total=(page.total) {
                    @if page.total == 1 { "1 event matches." } @else { (page.total) " events match." }
                }
                table.events {
                    caption.visually-hidden { "Events, newest first" }
                    thead { tr {
                        th scope="col" { "Created (UTC)" } th scope="col" { "Event" } th scope="col" { "Status" }
                        th scope="col" { "Priority" } th scope="col" { "Integration" } th scope="col" { "Agent" }
                        th scope="col" { "Request id" }
                    } }
                    @if form.offset == 0 {
                        tbody #events data-live-url=(format!("{PREFIX}/events/live?{}", form.link(0))) data-live-status="live-status" data-live-count="result-count" {
                            (event_rows(&page.events))
                        }
                    } @else {
                        tbody #events { (event_rows(&page.events)) }
                    }
                }
                @if form.offset == 0 {
                    p.live #live-status aria-live="polite" { "New events appear here as they arrive." }
                }
                nav.paging aria-label="Pages" {
                    @if form.offset > 0 {
                        a rel="prev" href=(format!("{PREFIX}/events?{}", form.link(form.offset.saturating_sub(super::report::PAGE_SIZE)))) { "← Newer" }
                    }
                    @if form.offset + page.events.len() < page.total {
                        a rel="next" href=(format!("{PREFIX}/events?{}", form.link(form.offset + page.events.len()))) { "Older →" }
                    }
                }
            }
        }))
    }
}

/// One event: its fields, properties, recipients, notifications and the terminate button.
pub fn event_page(
    session: &Session,
    event: &Value,
    notifications: Option<&Result<Vec<NotificationView>, String>>,
) -> Markup {
    let id = field(event, "id");
    let status = field(event, "status");
    let created = when(field(event, "created"));
    let fields = [
        ("Status", status),
        ("Priority", field(event, "priority")),
        ("Created", &created),
        ("Request id", field(event, "requestId")),
        ("Integration", field(event, "integrationId")),
        ("Agent", field(event, "agentId")),
    ];
    let form = event
        .get("form")
        .and_then(|form| form.get("name"))
        .and_then(Value::as_str);
    html! {
        (layout(&format!("Event {id}"), Some(session), Section::Events, html! {
            dl.fields {
                @for (name, value) in fields {
                    dt { (name) }
                    dd { @if name == "Status" { span #event-status class=(format!("status {}", value.to_ascii_lowercase())) { (value) } } @else { (value) } }
                }
                dt { "Form" } dd { (form.unwrap_or("—")) }
            }
            @if status != Status::Terminated.as_str() {
                form.terminate method="post" action=(format!("{PREFIX}/events/{}/terminate", segment(id))) {
                    input type="hidden" name="csrf" value=(session.csrf);
                    button #terminate type="submit" { "Terminate event" }
                }
            }
            h2 { "Properties" }
            @match event.get("properties").and_then(Value::as_object) {
                Some(properties) if !properties.is_empty() => table.properties {
                    thead { tr { th scope="col" { "Name" } th scope="col" { "Value" } } }
                    tbody { @for (name, value) in properties { tr { th scope="row" { (name) } td { (shown(value)) } } } }
                },
                _ => p.empty { "No properties." },
            }
            h2 { "Recipients" }
            @match event.get("recipients").and_then(Value::as_array) {
                Some(recipients) if !recipients.is_empty() => ul {
                    @for recipient in recipients {
                        li { (recipient.get("targetName").and_then(Value::as_str).map_or_else(|| shown(recipient), str::to_owned)) }
                    }
                },
                _ => p.empty { "No recipients named." },
            }
            h2 { "Notifications" }
            @if let Some(suppressed) = event.get("suppressed") {
                p.suppressed #rate-filtered {
                    "Suppressed by the " (field(suppressed, "rule")) " rule, so it notified nobody: " (field(suppressed, "reason"))
                }
            }
            (notification_table(notifications))
        }))
    }
}

fn notification_table(notifications: Option<&Result<Vec<NotificationView>, String>>) -> Markup {
    html! {
        @match notifications {
            None => p.empty { "This central does not track notifications." },
            Some(Err(error)) => p.error role="alert" { "Notifications cannot be read: " (error) },
            Some(Ok(list)) if list.is_empty() => p.empty { "No notifications for this event." },
            Some(Ok(list)) => table.notifications {
                thead { tr {
                    th scope="col" { "Recipient" } th scope="col" { "Device (type)" } th scope="col" { "Status" }
                    th scope="col" { "Flood control rule" } th scope="col" { "When (UTC)" }
                } }
                tbody { @for n in list { tr {
                    td { (n.recipient) } td { (n.device) }
                    td { span class=(format!("status {}", n.status.to_ascii_lowercase())) { (n.status) } }
                    td { (n.rule.as_deref().unwrap_or("—")) }
                    td { (n.at.as_deref().map(when).unwrap_or_default()) }
                } } }
            },
        }
    }
}

/// One row of the agents page.
#[derive(Debug, Clone)]
pub struct AgentRow {
    /// The configured agent id.
    pub id: String,
    /// What the websocket saw of it since the central started.
    pub presence: Option<AgentPresence>,
    /// Its events within the summary window.
    pub summary: Option<AgentSummary>,
    /// The integrations `central.toml` has it run (`run_on`), shown until it reports its own.
    pub run_on: Vec<String>,
}

fn rfc3339(at: time::OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// A duration for people: `under 1 s`, `42 s`, `3 min 5 s`, `2 h 10 min`, `4 d 3 h`.
pub fn age(millis: u64) -> String {
    let secs = millis / 1000;
    match secs {
        0 => "under 1 s".to_owned(),
        1..=59 => format!("{secs} s"),
        60..=3599 => format!("{} min {} s", secs / 60, secs % 60),
        3600..=86_399 => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
        _ => format!("{} d {} h", secs / 86_400, secs % 86_400 / 3600),
    }
}

/// Links to the activity streams of `ids`, comma-separated.
fn integration_links(ids: &[String]) -> Markup {
    html! {
        @for (i, id) in ids.iter().enumerate() {
            @if i > 0 { ", " }
            a href=(format!("{PREFIX}/integrations/{}", segment(id))) { (id) }
        }
    }
}

/// The agents page: every configured agent, connected or not, with what it last reported.
pub fn agents(session: &Session, rows: &[AgentRow], now: time::OffsetDateTime) -> Markup {
    html! {
        (layout("Agents", Some(session), Section::Agents, html! {
            @if rows.is_empty() {
                p.empty { "No agents are configured." }
            } @else {
                table.agents {
                    thead { tr {
                        th scope="col" { "Agent" } th scope="col" { "Connected" } th scope="col" { "Last seen (UTC)" }
                        th scope="col" { "Version" } th scope="col" { "Queue depth" } th scope="col" { "Oldest pending" }
                        th scope="col" { "Dead letters" } th scope="col" { "Reported" } th scope="col" { "Integrations" }
                        th scope="col" { "Events (24 h)" }
                    } }
                    tbody { @for row in rows {
                        @let presence = row.presence.as_ref();
                        @let status = presence.and_then(|p| p.status.as_ref());
                        tr data-agent=(row.id) {
                            th scope="row" { (row.id) }
                            td { @match presence.filter(|p| p.connections > 0) {
                                Some(p) => {
                                    span.status.connected { "connected" } " since " (p.connected_since.map(|at| when(&rfc3339(at))).unwrap_or_default())
                                    @if let Some(peer) = p.peer { " from " (peer.to_string()) }
                                },
                                None => span.status.disconnected { "not connected" },
                            } }
                            td { (presence.and_then(|p| p.last_seen).map_or_else(|| "never since the central started".to_owned(), |at| when(&rfc3339(at)))) }
                            td.version {
                                @match presence.and_then(|p| p.software_version.as_deref()) {
                                    Some(version) => code { (version) },
                                    None => span.hint { "not reported" },
                                }
                                @if let Some(protocol) = presence.and_then(|p| p.protocol_version) {
                                    br; span.hint { "protocol " (protocol) }
                                }
                            }
                            @match status {
                                Some(status) => {
                                    td.queue-depth { (status.figures.queue_depth) }
                                    td.oldest-pending { (status.figures.oldest_pending_ms.map_or_else(|| "none".to_owned(), age)) }
                                    td.dead-letters { (status.figures.dead_letters) }
                                    td.reported {
                                        (age(u64::try_from((now - status.at).whole_milliseconds()).unwrap_or(0))) " ago"
                                        @if status.is_stale(now) { " " span.status.stale title="The agent has not reported for over a minute: these figures may no longer hold." { "stale" } }
                                    }
                                },
                                None => { td.queue-depth { "—" } td.oldest-pending { "—" } td.dead-letters { "—" } td.reported { span.hint { "never" } } },
                            }
                            td.integrations { @match status {
                                Some(status) => {
                                    (integration_links(&status.figures.integrations))
                                    @if status.integrations_left_out > 0 { " and " (status.integrations_left_out) " more" }
                                },
                                None if !row.run_on.is_empty() => {
                                    (integration_links(&row.run_on))
                                    " " span.hint { "(run_on in central.toml; not reported)" }
                                },
                                None => span.hint { "not reported" },
                            } }
                            td { (row.summary.as_ref().map_or(0, |s| s.events)) }
                        }
                    } }
                }
            }
            p.hint {
                "Agents name their software version when they connect and report their queue right after, "
                "every 10 s and soon after it changes; a report older than a minute is marked stale. "
                "Agents older than this central report neither: run "
                code { "xmagent status" } " and " code { "xmagent queue" } " on the agent's host."
            }
        }))
    }
}

/// The integrations page: integrations seen through their events, and hosted ones.
pub fn integrations(
    session: &Session,
    summary: &Summary,
    hosted: Option<&[HostedIntegration]>,
) -> Markup {
    html! {
        (layout("Integrations", Some(session), Section::Integrations, html! {
            h2 { "Running on agents" }
            @if summary.integrations.is_empty() {
                p.empty { "No agent integration created an event in the last " (WINDOW.as_secs() / 3600) " hours." }
            } @else {
                table.integrations {
                    thead { tr {
                        th scope="col" { "Integration" } th scope="col" { "Runs on" }
                        th scope="col" { "Events (24 h)" } th scope="col" { "Last activity (UTC)" }
                    } }
                    tbody { @for (id, integration) in &summary.integrations {
                        (integration_row(id, integration))
                    } }
                }
                p.hint { "An agent's integration is known here by the events it creates; its action, authentication and trigger URL live in the agent's configuration." }
            }
            (truncation_note(summary))
            h2 { "Hosted by this central" }
            @match hosted {
                None => p.empty { "This central does not host integrations." },
                Some([]) => p.empty { "No hosted integrations are configured." },
                Some(list) => table.hosted {
                    thead { tr {
                        th scope="col" { "Integration" } th scope="col" { "Action" } th scope="col" { "Authentication" }
                        th scope="col" { "Flood control" } th scope="col" { "Trigger URL" } th scope="col" { "Last activity (UTC)" }
                    } }
                    tbody { @for integration in list { tr {
                        th scope="row" { a href=(format!("{PREFIX}/integrations/{}", segment(&integration.id))) { (integration.name) } }
                        td { (integration.action) } td { (integration.auth) }
                        td { @if integration.flood_control { "on" } @else { "off" } }
                        td { input.copy type="text" readonly value=(integration.trigger_url) aria-label=(format!("Trigger URL of {}", integration.name)); }
                        td { (integration.last_activity.as_deref().map(when).unwrap_or_default()) }
                    } } }
                },
            }
        }))
    }
}

/// Where an integration runs, by the agents that relayed its events: the central's own hosted
/// integrations (the pseudo-agent [`HOSTED_AGENT_ID`]) read "cloud", not as an agent.
fn runs_on(agents: &std::collections::BTreeSet<String>) -> String {
    agents
        .iter()
        .map(|agent| {
            if agent == HOSTED_AGENT_ID {
                "cloud"
            } else {
                agent.as_str()
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn integration_row(id: &str, integration: &IntegrationSummary) -> Markup {
    html! {
        tr {
            th scope="row" { a href=(format!("{PREFIX}/integrations/{}", segment(id))) { (id) } }
            td { (runs_on(&integration.agents)) }
            td { (integration.events) }
            td { (integration.last_activity.as_deref().map(when).unwrap_or_default()) }
        }
    }
}

/// Items of an activity stream (the live updates send the same items).
pub fn activity_items(events: &[Value]) -> Markup {
    html! {
        @for event in events {
            @let id = field(event, "id");
            li data-id=(id) {
                details {
                    summary {
                        (when(field(event, "created"))) " · "
                        span class=(format!("status {}", field(event, "status").to_ascii_lowercase())) { (field(event, "status")) }
                        " · request " code.request-id { (field(event, "requestId")) }
                    }
                    ol.steps {
                        @if field(event, "agentId") == HOSTED_AGENT_ID {
                            li { "Received by the central itself (cloud) (request " (field(event, "requestId")) ")" }
                        } @else {
                            li { "Received from agent " strong { (field(event, "agentId")) } " (request " (field(event, "requestId")) ")" }
                        }
                        li { "Event created: " a href=(format!("{PREFIX}/events/{}", segment(id))) { code { (id) } } ", priority " (field(event, "priority")) }
                        @if let Some(properties) = event.get("properties").and_then(Value::as_object) {
                            li { "Properties: "
                                @for (i, (name, value)) in properties.iter().enumerate() {
                                    @if i > 0 { "; " }
                                    (name) " = " (shown(value))
                                }
                            }
                        }
                        li { "Status now " (field(event, "status")) }
                    }
                }
            }
        }
    }
}

/// The activity stream of one integration: what the central received for it, newest first,
/// live; and the hosted integration's own request log when it is one.
pub fn activity(
    session: &Session,
    id: &str,
    integration: Option<&IntegrationSummary>,
    outcome: &str,
    events: &[Value],
    hosted: Option<&Result<Vec<ActivityEntry>, String>>,
) -> Markup {
    let base = format!("{PREFIX}/integrations/{}", segment(id));
    let mut live = form_urlencoded::Serializer::new(String::new());
    if !outcome.is_empty() {
        live.append_pair("status", outcome);
    }
    let live = live.finish();
    html! {
        (layout(&format!("Activity of {id}"), Some(session), Section::Integrations, html! {
            @if let Some(integration) = integration {
                p { "Runs on " (runs_on(&integration.agents))
                    "; " (integration.events) " events in the last 24 hours." }
            }
            @if let Some(entries) = hosted {
                h2 { "Requests to the hosted integration" }
                @match entries {
                    Err(error) => p.error role="alert" { "The activity cannot be read: " (error) },
                    Ok(entries) if entries.is_empty() => p.empty { "No requests yet." },
                    Ok(entries) => ol.activity.hosted { @for entry in entries { li { details {
                        summary { (when(&entry.at)) " · " span class=(format!("status {}", entry.outcome.to_ascii_lowercase())) { (entry.outcome) } " · request " code.request-id { (entry.request_id) } }
                        ol.steps { @for (step, detail) in &entry.steps { li { strong { (step) } ": " (detail) } } }
                    } } } },
                }
            }
            h2 { "Events received" }
            form.search method="get" action=(base) {
                div {
                    label for="status" { "Outcome" }
                    select #status name="status" {
                        option value="" selected[outcome.is_empty()] { "Any" }
                        @for status in [Status::Active, Status::Suspended, Status::Terminated] {
                            option value=(status.as_str()) selected[outcome.eq_ignore_ascii_case(status.as_str())] { (status.as_str()) }
                        }
                    }
                }
                button type="submit" { "Filter" }
            }
            ol.activity #activity data-live-url=(format!("{base}/live?{live}")) data-live-status="live-status" {
                (activity_items(events))
            }
            @if events.is_empty() {
                p.empty #activity-empty { "No events yet. New ones appear here as they arrive." }
            }
            p.live #live-status aria-live="polite" { "Newest first; new requests appear as they arrive." }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn session() -> Session {
        Session {
            user: "admin".into(),
            csrf: "csrf-token".into(),
        }
    }

    fn hostile_event() -> Value {
        json!({
            "id": "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", "status": "ACTIVE", "priority": "HIGH",
            "created": "2024-05-01T13:30:05.123Z", "requestId": "<script>alert(1)</script>",
            "integrationId": "a/b <i>", "agentId": "agent\"", "form": {"name": "F&F"},
            "properties": {"<img src=x onerror=alert(1)>": "\"><script>x()</script>", "long": "x".repeat(500)},
            "recipients": [{"targetName": "<ops>"}]
        })
    }

    #[test]
    fn everything_from_events_is_escaped() {
        let page = event_page(&session(), &hostile_event(), None).into_string();
        assert!(!page.contains("<script>alert"), "{page}");
        assert!(!page.contains("<img"), "{page}");
        assert!(!page.contains("<i>"));
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(page.contains("&lt;ops&gt;"));
        assert!(
            page.contains("(500 characters in all)"),
            "long values are cut"
        );
        assert!(
            page.contains("name=\"csrf\" value=\"csrf-token\""),
            "forms carry the token"
        );
        assert!(page.contains("This central does not track notifications."));
        assert_eq!(
            page.matches("<script").count(),
            1,
            "only the console's script file"
        );
        assert!(page.contains("src=\"/console/assets/console.js\""));

        let rows = event_rows(&[hostile_event()]).into_string();
        assert!(
            rows.contains("/console/integrations/a%2Fb%20%3Ci%3E"),
            "{rows}"
        );
        let items = activity_items(&[hostile_event()]).into_string();
        assert!(!items.contains("<script>") && !items.contains("<img"));
    }

    #[test]
    fn terminated_events_have_no_terminate_button() {
        let mut event = hostile_event();
        assert!(event_page(&session(), &event, None)
            .into_string()
            .contains("id=\"terminate\""));
        event["status"] = json!("TERMINATED");
        assert!(!event_page(&session(), &event, None)
            .into_string()
            .contains("id=\"terminate\""));
    }

    #[test]
    fn notifications_render_with_their_flood_control_rule() {
        let list = vec![
            NotificationView {
                recipient: "mmcbride".into(),
                device: "Email".into(),
                status: "DELIVERED".into(),
                rule: None,
                at: Some("2024-05-01T13:30:06Z".into()),
            },
            NotificationView {
                recipient: "mmcbride".into(),
                device: "SMS".into(),
                status: "SUPPRESSED".into(),
                rule: Some("same host <5 min>".into()),
                at: None,
            },
        ];
        let page = event_page(&session(), &hostile_event(), Some(&Ok(list))).into_string();
        assert!(page.contains("SUPPRESSED"));
        assert!(page.contains("same host &lt;5 min&gt;"));
        assert!(page.contains("2024-05-01 13:30:06 UTC"));
        let mut filtered = hostile_event();
        filtered["suppressed"] =
            json!({"rule": "Alert Rate Filter", "reason": "more than 2 <event(s)>"});
        let page = event_page(&session(), &filtered, Some(&Ok(Vec::new()))).into_string();
        assert!(
            page.contains("Suppressed by the Alert Rate Filter rule, so it notified nobody: more than 2 &lt;event(s)&gt;"),
            "{page}"
        );
        assert!(page.contains("No notifications for this event."));
        let failing = Err("notifications store unavailable".to_owned());
        assert!(event_page(&session(), &hostile_event(), Some(&failing))
            .into_string()
            .contains("Notifications cannot be read: notifications store unavailable"));
    }

    #[test]
    fn ages_read_as_people_say_them() {
        assert_eq!(age(400), "under 1 s");
        assert_eq!(age(42_000), "42 s");
        assert_eq!(age(185_000), "3 min 5 s");
        assert_eq!(age(7_800_000), "2 h 10 min");
        assert_eq!(age(356_400_000), "4 d 3 h");
    }

    #[test]
    fn agents_show_what_they_reported_escaped_and_stale_when_old() {
        use super::super::presence::{AgentPresence, ReportedStatus};
        let now = time::OffsetDateTime::now_utc();
        let presence = |status: Option<ReportedStatus>, version: Option<&str>| AgentPresence {
            connections: 1,
            connected_since: Some(now),
            last_seen: Some(now),
            peer: Some("127.0.0.1:4000".parse().unwrap()),
            protocol_version: Some(1),
            software_version: version.map(str::to_owned),
            status,
        };
        let report = |at| ReportedStatus {
            figures: protocol::AgentStatus {
                queue_depth: 17,
                dead_letters: 2,
                oldest_pending_ms: Some(185_000),
                integrations: vec!["<b>dc</b>".into(), "ops".into()],
            },
            at,
            integrations_left_out: 0,
        };
        let rows = [
            AgentRow {
                id: "fresh".into(),
                presence: Some(presence(Some(report(now)), Some("0.9.<i>"))),
                summary: None,
                run_on: vec!["not-shown".into()],
            },
            AgentRow {
                id: "old".into(),
                presence: Some(presence(
                    Some(report(now - time::Duration::minutes(5))),
                    None,
                )),
                summary: None,
                run_on: Vec::new(),
            },
            AgentRow {
                id: "silent".into(),
                presence: None,
                summary: None,
                run_on: vec!["managed-1".into()],
            },
        ];
        let page = agents(&session(), &rows, now).into_string();
        assert!(
            page.contains("0.9.&lt;i&gt;") && !page.contains("<i>"),
            "{page}"
        );
        assert!(page.contains("&lt;b&gt;dc&lt;/b&gt;") && !page.contains("<b>dc"));
        assert!(
            page.contains(">17<") && page.contains("3 min 5 s"),
            "{page}"
        );
        assert!(
            !page.contains("not-shown"),
            "a report replaces the run_on sets"
        );
        assert!(page.contains("managed-1") && page.contains("run_on in central.toml"));
        assert_eq!(
            page.matches(">stale<").count(),
            1,
            "only the old report is stale"
        );
        assert!(page.contains("5 min 0 s ago"), "{page}");
        assert!(!page.contains("protocol version 1 carries"));
    }

    #[test]
    fn the_central_itself_runs_as_cloud_not_as_an_agent() {
        let agents = [HOSTED_AGENT_ID.to_owned(), "agent-01".to_owned()].into();
        assert_eq!(runs_on(&agents), "agent-01, cloud");
        let mut hosted = hostile_event();
        hosted["agentId"] = serde_json::json!(HOSTED_AGENT_ID);
        let items = activity_items(&[hosted]).into_string();
        assert!(
            items.contains("Received by the central itself (cloud)"),
            "{items}"
        );
        assert!(!items.contains("Received from agent"));
    }

    #[test]
    fn hosted_integrations_show_their_trigger_url_and_activity() {
        let summary = Summary::from_events(&[], 0);
        let hosted = [HostedIntegration {
            id: "cloud-1".into(),
            name: "Cloud <one>".into(),
            action: "run_script".into(),
            auth: "basic".into(),
            flood_control: true,
            trigger_url: "https://central/api/integration/1/functions/cloud-1/triggers".into(),
            last_activity: None,
        }];
        let page = integrations(&session(), &summary, Some(&hosted)).into_string();
        assert!(page.contains("Cloud &lt;one&gt;"));
        assert!(
            page.contains("value=\"https://central/api/integration/1/functions/cloud-1/triggers\"")
        );
        let without = integrations(&session(), &summary, None).into_string();
        assert!(without.contains("This central does not host integrations."));

        let entries = Ok(vec![ActivityEntry {
            request_id: "r-1".into(),
            at: "2024-05-01T13:30:05Z".into(),
            outcome: "FAILED".into(),
            steps: vec![("error".into(), "script threw <x>".into())],
        }]);
        let page = activity(&session(), "cloud-1", None, "", &[], Some(&entries)).into_string();
        assert!(page.contains("script threw &lt;x&gt;"));
        assert!(
            page.contains("data-live-url=\"/console/integrations/cloud-1/live?\""),
            "{page}"
        );
    }

    #[test]
    fn the_overview_draws_notifications_per_integration_or_says_there_were_none() {
        let summary = Summary::from_events(&[], 0);
        let mut counts = PerMinute::ending_at(0);
        counts.add("flood-demo delivered", 0, 4);
        counts.add("flood-demo suppressed", 0, 2);
        let page = overview(&session(), &summary, Some(&counts)).into_string();
        assert!(page.contains("flood-demo suppressed"), "{page}");
        assert!(page.contains("Notifications per minute by integration, delivered and suppressed"));
        let none = overview(&session(), &summary, Some(&PerMinute::ending_at(0))).into_string();
        assert!(none.contains("No notification was delivered or held back by flood control"));
        let untracked = overview(&session(), &summary, None).into_string();
        assert!(untracked.contains("This central does not track notifications"));
    }

    #[test]
    fn times_are_shown_in_utc() {
        assert_eq!(when("2024-05-01T13:30:05.123Z"), "2024-05-01 13:30:05 UTC");
        assert_eq!(when("2024-05-01T13:30:05Z"), "2024-05-01 13:30:05 UTC");
        assert_eq!(when("t"), "t");
    }
}
