//! Actions: what an integration does with one accepted request. `create_event` turns the body
//! into one event; `transform`, `run_script` and `http_trigger` run the script on the host's
//! script pool and turn its `form.post` calls (or a Flow trigger's outputs) into events. The
//! result is a [`Processed`]: the events to create, the failure if any, and the activity entry.
//!
//! Both hosts call [`run_action`]: the agent's worker records the result in its store, the
//! central's hosted integrations create the events directly.
//!
//! What it does not do: store anything, answer HTTP or send frames.

use std::future::Future;
use std::sync::Arc;

use serde_json::{json, Map, Value};

use crate::activity::{activity, activity_outputs, deferred_activity, Activity};
use crate::definition::{Action, Integration};
use crate::request::InboundRequest;
use crate::trigger::trigger_from_body;

/// Where the central files an event and who sends it: the `event.create` members beside the
/// trigger. The central checks the form and the sender's permission to send it, and applies
/// notification flood control when the integration enables it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routing {
    /// The form the event is created from.
    pub form: Option<String>,
    /// The communication plan of the form.
    pub plan: Option<String>,
    /// The integration's authenticating user (URL, API key) or the caller (Basic, OAuth).
    pub sender: Option<String>,
    /// Whether the integration enables notification flood control.
    pub flood_control: bool,
}

impl Routing {
    /// The routing an `event.create` frame carried (a dead letter's retry sends it again).
    pub fn of(create: &protocol::EventCreate) -> Self {
        Self {
            form: create.form.clone(),
            plan: create.plan.clone(),
            sender: create.sender.clone(),
            flood_control: create.flood_control,
        }
    }
}

/// The result of processing one inbound request.
#[derive(Debug)]
pub struct Processed {
    /// Event triggers to send, each with its routing (form, plan, sender, flood control).
    pub events: Vec<(Routing, serde_json::Value)>,
    /// `Some(reason)` when processing failed (no events are sent then).
    pub failure: Option<String>,
    /// The activity-stream entry for this request (a JSON object once rendered).
    pub activity: Activity,
}

/// What an action needs from its host: a script run. Each host owns its script pool, counts the
/// runs in its own metrics and gives the run the HTTP client of the integration's endpoints.
pub trait ScriptHost {
    /// Run `program` for `request` of `integration` and answer the outcome.
    fn run_script(
        &self,
        integration: &Integration,
        program: Arc<scripts::Program>,
        request: scripts::ScriptRequest,
    ) -> impl Future<Output = scripts::Outcome> + Send;
}

/// Run `integration`'s action for `request`.
pub async fn run_action(
    host: &impl ScriptHost,
    integration: &Integration,
    request: &InboundRequest,
) -> Processed {
    match (integration.action, &integration.program) {
        (Action::CreateEvent, _) => match trigger_from_body(request.body.as_bytes())
            .and_then(|text| serde_json::from_str(&text).map_err(|e| e.to_string()))
        {
            Ok(trigger) => Processed {
                activity: activity(request, "QUEUED", json!({"events": 1})).into(),
                events: vec![(integration.routing(&request.principal.user), trigger)],
                failure: None,
            },
            Err(reason) => failed(request, reason),
        },
        (_, Some(program)) => {
            let content_type = request
                .headers
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case("content-type"))
                .map(|(_, value)| value.as_str());
            let script_request = scripts::ScriptRequest {
                method: request.method.clone(),
                headers: request.headers.clone(),
                parameters: scripts::ScriptRequest::parameters_from(
                    &request.query,
                    content_type,
                    &request.body,
                ),
                body: request.body.clone(),
                request_id: request.request_id.clone(),
                integration_uuid: request.integration_id.clone(),
                remote_address: request.remote_address.clone(),
            };
            let outcome = host
                .run_script(integration, program.clone(), script_request)
                .await;
            let (outcome, flow) = flow_trigger(integration, outcome);
            let mut error = outcome
                .error
                .as_ref()
                .map(|e| json!({"kind": e.kind, "message": e.message, "line": e.line}));
            let mut failure = outcome.error.as_ref().map(|e| e.to_string());
            let mut posts = outcome.posts;
            if failure.is_none() {
                if let Some(reason) = unsendable_post(&posts) {
                    error = Some(json!({"kind": "limit", "message": reason}));
                    failure = Some(reason);
                }
            }
            if failure.is_some() {
                // A failed run creates no events, so its activity does not report any.
                posts.clear();
            }
            let status = match (&failure, posts.is_empty()) {
                (Some(_), _) => "FAILED",
                (None, true) => "COMPLETED",
                (None, false) => "QUEUED",
            };
            let events = posts.len();
            let (logs, http, duration) = (outcome.logs, outcome.http, outcome.duration);
            let details = move || {
                let details = json!({
                    "events": events,
                    "log": logs,
                    "http": http,
                    "error": error,
                    "durationMs": duration.as_millis() as u64,
                });
                with_flow(details, flow)
            };
            Processed {
                activity: deferred_activity(request, status, details),
                events: posts
                    .into_iter()
                    .map(|post| (integration.routing(&request.principal.user), post))
                    .collect(),
                failure,
            }
        }
        (_, None) => failed(request, "the integration has no script".into()),
    }
}

/// The first `form.post` of a run the central could not take (`protocol::limits`), as the
/// reason the request fails: sending it would only earn a reject, and the run's other events
/// would be half of what the script meant to create.
fn unsendable_post(posts: &[serde_json::Value]) -> Option<String> {
    posts.iter().enumerate().find_map(|(index, post)| {
        protocol::limits::check_value(post)
            .err()
            .map(|error| format!("form.post call {} cannot be sent: {error}", index + 1))
    })
}

/// An `http_trigger` run that succeeded: the event its outputs describe joins the run's posts
/// (so it is checked and sent like any posted event). Answers what the activity entry adds:
/// the outputs, and `skipped` naming the output that asked for no event. Other runs pass
/// through unchanged.
fn flow_trigger(
    integration: &Integration,
    mut outcome: scripts::Outcome,
) -> (scripts::Outcome, Map<String, Value>) {
    let mut said = Map::new();
    if integration.action != Action::HttpTrigger || !outcome.is_ok() {
        return (outcome, said);
    }
    match integration.event.event(&outcome.outputs) {
        scripts::flow::FlowEvent::Create(trigger) => outcome.posts.push(trigger),
        scripts::flow::FlowEvent::Skipped { output } => {
            said.insert(
                "skipped".into(),
                json!(format!("output {output:?} is true")),
            );
        }
    }
    let outputs = std::mem::take(&mut outcome.outputs);
    said.insert("outputs".into(), activity_outputs(outputs));
    (outcome, said)
}

/// The activity details with what [`flow_trigger`] said added.
fn with_flow(mut details: Value, flow: Map<String, Value>) -> Value {
    if let Value::Object(fields) = &mut details {
        fields.extend(flow);
    }
    details
}

/// A request that failed before or instead of its action, with the reason as its activity says it.
pub fn failed(request: &InboundRequest, reason: String) -> Processed {
    Processed {
        activity: activity(
            request,
            "FAILED",
            json!({"events": 0, "error": {"message": reason}}),
        )
        .into(),
        events: Vec::new(),
        failure: Some(reason),
    }
}
