//! The worker: turns accepted requests into events.
//!
//! It takes accepted requests of script integrations (from ingress after each 202, and from the
//! inbox at start-up for requests a previous process accepted but never processed), runs the
//! script, and records the outcome with [`crate::store::Store::complete`]. Scripts run on the
//! script pool's own threads; this module only awaits them. `create_event` requests do not pass
//! through here: ingress builds their event and stores it straight in the outbox.
//!
//! What it does not do: it never talks to the central (the relay reads the outbox) and never
//! answers HTTP.

use std::sync::Arc;

use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::config::{Action, Integration};
use crate::daemon::Shared;
use crate::store::{Accepted, InboundRequest, Processed};

/// Most request bytes copied into an activity-stream entry.
pub(crate) const ACTIVITY_BODY_BYTES: usize = 4096;

/// Interpret a `create_event` body: an object with `properties` is the trigger itself (its
/// `priority`, if not null, must then be LOW, MEDIUM or HIGH in any letter case, as the central
/// requires); any other object becomes the trigger's `properties`. Anything else is refused with
/// the reason.
///
/// Returns the trigger as JSON text. The body is checked in one pass without building a value
/// tree and then embedded as it came, because this runs on every request of the busiest path.
///
/// The check is the one the central applies to every event (`protocol::limits`), so a body
/// accepted here can never be refused there and block the relay.
pub fn trigger_from_body(body: &[u8]) -> Result<String, String> {
    use protocol::limits::{LimitError, MAX_TRIGGER_BYTES};
    let refused = |error: LimitError| match error {
        LimitError::Invalid(reason) => format!("the body is not valid JSON: {reason}"),
        other => format!("the body is outside the limits of an event: {other}"),
    };
    let text =
        std::str::from_utf8(body).map_err(|e| refused(LimitError::Invalid(e.to_string())))?;
    if text.len() + TRIGGER_WRAP_BYTES > MAX_TRIGGER_BYTES {
        return Err(refused(LimitError::TooLarge { bytes: text.len() }));
    }
    let mut reader = serde_json::Deserializer::from_str(text);
    let shape = serde::de::DeserializeSeed::deserialize(body_shape::Shape::TOP, &mut reader)
        .and_then(|shape| reader.end().map(|()| shape))
        .map_err(|e| refused(e.into()))?;
    match shape {
        ("an object", Some("an object"), Err(reason)) => Err(reason),
        ("an object", Some("an object"), Ok(())) => Ok(text.trim().to_owned()),
        ("an object", Some(_), _) => Err("\"properties\" must be a JSON object".into()),
        ("an object", None, _) => {
            let body = text.trim();
            let mut trigger = String::with_capacity(body.len() + TRIGGER_WRAP_BYTES);
            trigger.push_str("{\"properties\":");
            trigger.push_str(body);
            trigger.push('}');
            Ok(trigger)
        }
        (kind, _, _) => Err(format!("the body must be a JSON object, not {kind}")),
    }
}

/// What wrapping a body as `{"properties":...}` adds.
const TRIGGER_WRAP_BYTES: usize = 15;

/// A one-pass check of a body's top-level shape that allocates nothing for the values it skips.
mod body_shape {
    use protocol::limits::Bounded;
    use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
    use std::fmt;

    /// Reads a value completely, checking it against the shared limits (`protocol::limits`), and
    /// answers its JSON kind ("an object", "an array", ...) and, when asked to look, the kind of
    /// its `properties` member and whether its `priority` member is one the central takes (the
    /// last of each, as JSON parsers keep the last of duplicate keys).
    #[derive(Clone, Copy)]
    pub struct Shape {
        look_for_properties: bool,
        bounded: Bounded,
    }

    impl Shape {
        /// For the top level of a body. It counts as one level down, since a body without
        /// `properties` becomes the `properties` of the trigger.
        pub const TOP: Shape = Shape {
            look_for_properties: true,
            bounded: Bounded::top().inner(),
        };
    }

    /// The kind, the kind of `properties` (if looked for and present), and the priority check.
    type Found = (&'static str, Option<&'static str>, Result<(), String>);

    impl<'de> DeserializeSeed<'de> for Shape {
        type Value = Found;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Found, D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Shape {
        type Value = Found;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON value")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Found, A::Error> {
            let inner = self.bounded.nested()?;
            let mut properties = None;
            let mut priority = Ok(());
            let nested = Shape {
                look_for_properties: false,
                bounded: inner,
            };
            while let Some(key) = map.next_key_seed(ReadTopKey)? {
                match key {
                    TopKey::Properties if self.look_for_properties => {
                        properties = Some(map.next_value_seed(nested)?.0);
                    }
                    TopKey::Priority if self.look_for_properties => {
                        priority = map.next_value_seed(Priority(nested))?;
                    }
                    _ => map.next_value_seed(inner)?,
                }
            }
            Ok(("an object", properties, priority))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Found, A::Error> {
            let inner = self.bounded.nested()?;
            while seq.next_element_seed(inner)?.is_some() {}
            Ok(("an array", None, Ok(())))
        }
        fn visit_str<E>(self, _: &str) -> Result<Found, E> {
            Ok(("a string", None, Ok(())))
        }
        fn visit_bool<E>(self, _: bool) -> Result<Found, E> {
            Ok(("a boolean", None, Ok(())))
        }
        fn visit_i64<E>(self, _: i64) -> Result<Found, E> {
            Ok(("a number", None, Ok(())))
        }
        fn visit_u64<E>(self, _: u64) -> Result<Found, E> {
            Ok(("a number", None, Ok(())))
        }
        fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<Found, E> {
            if value.is_finite() {
                Ok(("a number", None, Ok(())))
            } else {
                Err(E::custom("number out of range"))
            }
        }
        fn visit_unit<E>(self) -> Result<Found, E> {
            Ok(("null", None, Ok(())))
        }
    }

    /// A top-level key: the two the check looks at, or another, read without allocating it.
    enum TopKey {
        Properties,
        Priority,
        Other,
    }

    /// Reads a [`TopKey`].
    struct ReadTopKey;

    impl<'de> DeserializeSeed<'de> for ReadTopKey {
        type Value = TopKey;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<TopKey, D::Error> {
            d.deserialize_str(self)
        }
    }

    impl<'de> Visitor<'de> for ReadTopKey {
        type Value = TopKey;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an object key")
        }
        fn visit_str<E>(self, key: &str) -> Result<TopKey, E> {
            Ok(match key {
                "properties" => TopKey::Properties,
                "priority" => TopKey::Priority,
                _ => TopKey::Other,
            })
        }
    }

    /// Reads a trigger's `priority` and answers whether the central takes it (null counts as
    /// absent there); the refusal names what was given. Any other kind of value is read by the
    /// wrapped [`Shape`], so it is checked against the limits like every other value.
    struct Priority(Shape);

    fn not_a_priority(given: &str) -> Result<(), String> {
        Err(format!(
            "\"priority\" must be LOW, MEDIUM or HIGH, not {given}"
        ))
    }

    impl<'de> DeserializeSeed<'de> for Priority {
        type Value = Result<(), String>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Priority {
        type Value = Result<(), String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a priority")
        }
        fn visit_str<E>(self, priority: &str) -> Result<Self::Value, E> {
            let known = ["LOW", "MEDIUM", "HIGH"];
            Ok(
                match known.iter().any(|p| p.eq_ignore_ascii_case(priority)) {
                    true => Ok(()),
                    false => not_a_priority(&format!("{priority:?}")),
                },
            )
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(Ok(()))
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            Ok(not_a_priority(self.0.visit_map(map)?.0))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
            Ok(not_a_priority(self.0.visit_seq(seq)?.0))
        }
        fn visit_bool<E: serde::de::Error>(self, value: bool) -> Result<Self::Value, E> {
            Ok(not_a_priority(self.0.visit_bool(value)?.0))
        }
        fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<Self::Value, E> {
            Ok(not_a_priority(self.0.visit_i64(value)?.0))
        }
        fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<Self::Value, E> {
            Ok(not_a_priority(self.0.visit_u64(value)?.0))
        }
        fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<Self::Value, E> {
            Ok(not_a_priority(self.0.visit_f64(value)?.0))
        }
    }
}

/// One accepted request for the worker. New `create_event` requests never come here (ingress
/// writes their event straight to the outbox); only ones left in the inbox by an older version do.
pub struct Job {
    /// The request as stored in the inbox.
    pub accepted: Accepted,
    /// Its room in the backlog (none for requests resumed at start-up), freed when the job is
    /// dropped after processing.
    pub backlog: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// Process jobs until shutdown, then let in-flight runs finish. Requests not started by then stay
/// in the inbox and are processed at the next start.
pub async fn run(
    shared: Arc<Shared>,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(shared.worker_concurrency));
    let mut running = JoinSet::new();
    loop {
        let job = tokio::select! {
            job = jobs.recv() => match job { Some(job) => job, None => break },
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let shared = shared.clone();
        let stop = shutdown.clone();
        running.spawn(async move {
            process(&shared, job, stop).await;
            drop(permit);
        });
        while running.try_join_next().is_some() {}
    }
    while running.join_next().await.is_some() {}
}

/// How often a request whose events do not fit the store looks for room again.
const ROOM_POLL: std::time::Duration = std::time::Duration::from_millis(100);

async fn process(shared: &Shared, job: Job, mut stop: watch::Receiver<bool>) {
    let request = &job.accepted.request;
    let span = tracing::info_span!("process", request_id = %request.request_id, integration = %request.integration_id);
    async {
        let started = std::time::Instant::now();
        let integration = shared
            .live()
            .config
            .integrations
            .get(&request.integration_id)
            .cloned();
        let processed = match integration {
            None => failed(request, "the integration is no longer configured".into()),
            Some(integration) => run_action(shared, &integration, request).await,
        };
        let failure = processed.failure.clone();
        let events = processed.events.len();
        shared
            .metrics
            .count_processed(failure.is_some(), started.elapsed());
        // The events count against the store's bounds: wait while the relay makes room.
        // A shutdown meanwhile leaves the request in the inbox, to run again at the next start.
        let mut waited = false;
        while !shared.store.has_room_for(&job.accepted, &processed) {
            if !waited {
                tracing::warn!(
                    events,
                    "the store is full; the request's events wait for room"
                );
                waited = true;
            }
            tokio::select! {
                _ = tokio::time::sleep(ROOM_POLL) => {}
                _ = stop.wait_for(|stop| *stop) => return,
            }
        }
        match shared.store.complete(&job.accepted, processed) {
            Ok(_) => match failure {
                Some(reason) => tracing::warn!(%reason, "request failed"),
                None => tracing::debug!(events, "processed"),
            },
            Err(error) => {
                tracing::error!(%error, "cannot record the outcome; it will be retried at restart")
            }
        }
    }
    .instrument(span)
    .await
}

async fn run_action(
    shared: &Shared,
    integration: &Integration,
    request: &InboundRequest,
) -> Processed {
    match (integration.action, &integration.program) {
        (Action::CreateEvent, _) => match trigger_from_body(request.body.as_bytes())
            .and_then(|text| serde_json::from_str(&text).map_err(|e| e.to_string()))
        {
            Ok(trigger) => Processed {
                activity: activity(request, "QUEUED", json!({"events": 1})),
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
            let http = {
                let live = shared.live();
                let mut scope = vec![request.integration_id.clone()];
                if let Some(integration) = live.config.integrations.get(&request.integration_id) {
                    scope.extend(integration.script_events_of.iter().cloned());
                }
                Arc::new(live.endpoints.for_integration(&scope))
            };
            let outcome = shared
                .run_script(program.clone(), script_request, http)
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
            let details = json!({
                "events": posts.len(),
                "log": outcome.logs,
                "http": outcome.http,
                "error": error,
                "durationMs": outcome.duration.as_millis() as u64,
            });
            let details = with_flow(details, flow);
            Processed {
                activity: activity(request, status, details),
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

/// Most bytes of `http_trigger` outputs copied into an activity-stream entry (as JSON text).
const ACTIVITY_OUTPUT_BYTES: usize = 4 * ACTIVITY_BODY_BYTES;

/// The outputs as the activity entry shows them: whole when small, otherwise a note of their
/// size (they may be as large as the run's post budget, and the stream keeps many entries).
fn activity_outputs(outputs: Map<String, Value>) -> Value {
    let size = serde_json::to_string(&outputs).map_or(usize::MAX, |text| text.len());
    if size <= ACTIVITY_OUTPUT_BYTES {
        Value::Object(outputs)
    } else {
        json!({ "omitted": format!("{size} bytes of outputs; the activity stream keeps up to {ACTIVITY_OUTPUT_BYTES}") })
    }
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

fn failed(request: &InboundRequest, reason: String) -> Processed {
    Processed {
        activity: activity(
            request,
            "FAILED",
            json!({"events": 0, "error": {"message": reason}}),
        ),
        events: Vec::new(),
        failure: Some(reason),
    }
}

/// The activity-stream entry of one request: what came in (credentials redacted, body truncated)
/// and what the action made of it.
pub fn activity(request: &InboundRequest, status: &str, details: Value) -> Value {
    let truncated = request.body.len() > ACTIVITY_BODY_BYTES;
    let mut cut = ACTIVITY_BODY_BYTES.min(request.body.len());
    while !request.body.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut entry = Map::new();
    entry.insert("requestId".into(), json!(request.request_id));
    entry.insert("integrationId".into(), json!(request.integration_id));
    entry.insert("status".into(), json!(status));
    entry.insert("created".into(), json!(request.received_at));
    entry.insert("completed".into(), json!(server::http_util::now_rfc3339()));
    entry.insert("principal".into(), json!(request.principal));
    entry.insert(
        "request".into(),
        json!({
            "method": request.method,
            "headers": request.headers.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
            "parameters": request.query,
            "body": &request.body[..cut],
            "bodyTruncated": truncated,
            "remoteAddress": request.remote_address,
        }),
    );
    if let Value::Object(details) = details {
        entry.extend(details);
    }
    Value::Object(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_with_properties_is_the_trigger() {
        let t = trigger_from_body(br#"{"properties":{"a":1},"priority":"HIGH"}"#).unwrap();
        let t: Value = serde_json::from_str(&t).unwrap();
        assert_eq!(t, json!({"properties": {"a": 1}, "priority": "HIGH"}));
    }

    /// Found by the `create_event_body` fuzz target: a body with `properties` and a priority the
    /// central refuses got 202 and was dead-lettered later; it is now a 400 with the reason.
    #[test]
    fn a_priority_the_central_refuses_is_refused_at_ingress() {
        for bad in [r#""HIspecGH""#, "3", "true", "[]", r#"{"a":1}"#] {
            let body = format!(r#"{{"properties":{{}},"priority":{bad}}}"#);
            let reason = trigger_from_body(body.as_bytes()).expect_err(&body);
            assert!(reason.contains("LOW, MEDIUM or HIGH"), "{reason}");
        }
        for good in [
            r#""high""#,
            r#""Low""#,
            "null",
            r#""x","priority":"MEDIUM""#,
        ] {
            let body = format!(r#"{{"properties":{{}},"priority":{good}}}"#);
            trigger_from_body(body.as_bytes()).expect(&body);
        }
        // Without `properties` the body is the properties: its priority is just a property.
        trigger_from_body(br#"{"priority":"URGENT"}"#).expect("a property");
    }

    #[test]
    fn other_objects_become_properties() {
        let t = trigger_from_body(br#"{"host":"db1","severity":"critical"}"#).unwrap();
        let t: Value = serde_json::from_str(&t).unwrap();
        assert_eq!(
            t,
            json!({"properties": {"host": "db1", "severity": "critical"}})
        );
    }

    #[test]
    fn non_objects_are_refused_with_the_reason() {
        assert!(trigger_from_body(b"[1,2]")
            .unwrap_err()
            .contains("an array"));
        assert!(trigger_from_body(b"not json")
            .unwrap_err()
            .contains("not valid JSON"));
        assert!(trigger_from_body(br#"{"properties": 3}"#)
            .unwrap_err()
            .contains("properties"));
        assert!(trigger_from_body(b"").is_err());
        assert!(trigger_from_body(b"{} trailing")
            .unwrap_err()
            .contains("not valid JSON"));
        assert!(trigger_from_body(b"\xff")
            .unwrap_err()
            .contains("not valid JSON"));
        assert!(trigger_from_body(b"null").unwrap_err().contains("null"));
        // The last of duplicate keys counts, as for any JSON parser.
        assert!(trigger_from_body(br#"{"properties": {}, "properties": 1}"#).is_err());
        assert!(trigger_from_body(br#"{"properties": 1, "properties": {}}"#).is_ok());
    }

    #[test]
    fn large_outputs_are_summarised_in_the_activity_stream() {
        let small = json!({"Summary": "x"}).as_object().cloned().unwrap();
        assert_eq!(activity_outputs(small.clone()), Value::Object(small));
        let big = json!({"Details": "y".repeat(ACTIVITY_OUTPUT_BYTES)})
            .as_object()
            .cloned()
            .unwrap();
        let shown = activity_outputs(big);
        assert!(
            shown["omitted"]
                .as_str()
                .unwrap()
                .contains("bytes of outputs"),
            "{shown}"
        );
    }

    #[test]
    fn activity_truncates_on_a_char_boundary() {
        let request = InboundRequest {
            request_id: "r".into(),
            integration_id: "i".into(),
            method: "POST".into(),
            headers: vec![],
            query: String::new(),
            body: "é".repeat(ACTIVITY_BODY_BYTES),
            principal: crate::store::PrincipalRecord {
                user: "u".into(),
                method: "basic".into(),
            },
            remote_address: "127.0.0.1".into(),
            received_at: "now".into(),
        };
        let entry = activity(&request, "QUEUED", json!({}));
        assert_eq!(entry["request"]["bodyTruncated"], json!(true));
        assert!(entry["request"]["body"].as_str().unwrap().len() <= ACTIVITY_BODY_BYTES);
    }
}
