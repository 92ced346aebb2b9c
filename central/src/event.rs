//! The event model: turning an agent's `event.create` trigger into an event in xMatters' JSON
//! shape, and the status values REST may set.
//!
//! Validation lives here, apart from storage and transport, so the websocket path and any future
//! REST creation path refuse the same triggers for the same reasons.

use serde_json::{json, Map, Value};

/// The lifecycle states of an xMatters event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Notifications are (or would be) going out; every new event starts here.
    Active,
    /// Paused by an operator; may be resumed.
    Suspended,
    /// Ended; final.
    Terminated,
}

impl Status {
    /// Parse a status case-insensitively, as xMatters accepts `active` as well as `ACTIVE`.
    pub fn parse(text: &str) -> Option<Self> {
        match text.to_ascii_uppercase().as_str() {
            "ACTIVE" => Some(Self::Active),
            "SUSPENDED" => Some(Self::Suspended),
            "TERMINATED" => Some(Self::Terminated),
            _ => None,
        }
    }

    /// The wire spelling (upper case), used in stored events and REST answers.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "ACTIVE",
            Self::Suspended => "SUSPENDED",
            Self::Terminated => "TERMINATED",
        }
    }
}

/// Why a trigger cannot become an event. Every variant is permanent: resending the same
/// trigger cannot succeed, so the agent dead-letters it (`reject{retryable:false, status:400}`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TriggerError {
    /// The trigger is not a JSON object.
    #[error("trigger must be a JSON object, got {0}")]
    NotAnObject(&'static str),
    /// `priority` is not one of LOW, MEDIUM, HIGH.
    #[error("trigger.priority must be one of LOW, MEDIUM, HIGH, got {0}")]
    BadPriority(String),
    /// `properties` is present but not an object.
    #[error("trigger.properties must be a JSON object, got {0}")]
    BadProperties(&'static str),
}

/// The identity and provenance of an event, filled in by the central (never by the trigger).
#[derive(Debug, Clone)]
pub struct Origin<'a> {
    /// The new event's UUID (both `id` and `eventId`).
    pub event_id: &'a str,
    /// The inbound request at the agent that produced the event.
    pub request_id: &'a str,
    /// The agent that relayed it.
    pub agent_id: &'a str,
    /// The integration that handled the request.
    pub integration_id: &'a str,
    /// The form the event is created from, if any.
    pub form: Option<&'a str>,
    /// Creation time, RFC 3339 UTC.
    pub created: &'a str,
}

/// Check a trigger and build the event JSON from it.
///
/// Fields the trigger carries that the central does not interpret (`responses`, `conferences`,
/// `expirationInMinutes`, ...) are kept as they are; fields the central owns (`id`, `status`,
/// `created`, `links`, ...) are always the central's, whatever the trigger says. `null` for
/// `priority` or `properties` counts as absent.
pub fn build(trigger: &Value, origin: &Origin<'_>) -> Result<Value, TriggerError> {
    let Value::Object(fields) = trigger else {
        return Err(TriggerError::NotAnObject(crate::http_util::json_kind(
            trigger,
        )));
    };
    let priority = match fields.get("priority") {
        None | Some(Value::Null) => "MEDIUM".to_owned(),
        Some(Value::String(text)) => {
            let upper = text.to_ascii_uppercase();
            if !matches!(upper.as_str(), "LOW" | "MEDIUM" | "HIGH") {
                return Err(TriggerError::BadPriority(format!("\"{}\"", truncate(text))));
            }
            upper
        }
        Some(other) => {
            return Err(TriggerError::BadPriority(
                crate::http_util::json_kind(other).to_owned(),
            ))
        }
    };
    let properties = match fields.get("properties") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(value @ Value::Object(_)) => value.clone(),
        Some(other) => {
            return Err(TriggerError::BadProperties(crate::http_util::json_kind(
                other,
            )))
        }
    };
    let recipients = match fields.get("recipients") {
        None | Some(Value::Null) => Value::Array(Vec::new()),
        Some(value) => value.clone(),
    };

    let mut event = fields.clone();
    let owned = [
        ("id", json!(origin.event_id)),
        ("eventId", json!(origin.event_id)),
        ("status", json!(Status::Active.as_str())),
        ("priority", json!(priority)),
        ("properties", properties),
        ("recipients", recipients),
        (
            "form",
            origin
                .form
                .map_or(Value::Null, |name| json!({ "name": name })),
        ),
        ("plan", event.get("plan").cloned().unwrap_or(Value::Null)),
        ("requestId", json!(origin.request_id)),
        ("created", json!(origin.created)),
        ("floodControl", json!(false)),
        (
            "links",
            json!({ "self": format!("/api/xm/1/events/{}", origin.event_id) }),
        ),
        ("integrationId", json!(origin.integration_id)),
        ("agentId", json!(origin.agent_id)),
    ];
    for (key, value) in owned {
        event.insert(key.to_owned(), value);
    }
    Ok(Value::Object(event))
}

/// Shorten user text before echoing it in an error, so a huge value cannot bloat a reject.
fn truncate(text: &str) -> String {
    const MAX: usize = 40;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Whether `event` has a property named `name` (case-insensitive, any `#locale` suffix on the
/// stored name ignored) whose value, as text, equals `value`.
///
/// xMatters addresses form properties as `Name#en`; callers strip the suffix from the query and
/// this function strips it from stored names, so both spellings meet.
pub fn property_matches(event: &Value, name: &str, value: &str) -> bool {
    let Some(Value::Object(properties)) = event.get("properties") else {
        return false;
    };
    properties.iter().any(|(stored, stored_value)| {
        strip_locale(stored).eq_ignore_ascii_case(name)
            && match stored_value {
                Value::Array(items) => items.iter().any(|item| scalar_is(item, value)),
                other => scalar_is(other, value),
            }
    })
}

/// Whether a stored property value reads as `value`: strings as they are, numbers and booleans
/// in their JSON spelling (query strings carry only text).
fn scalar_is(stored: &Value, value: &str) -> bool {
    match stored {
        Value::String(text) => text == value,
        Value::Number(_) | Value::Bool(_) => {
            let spelled = stored.to_string();
            spelled == value
        }
        Value::Null | Value::Array(_) | Value::Object(_) => false,
    }
}

/// `Name#en` → `Name`; names without a suffix are returned as they are.
pub fn strip_locale(name: &str) -> &str {
    name.rsplit_once('#').map_or(name, |(base, _)| base)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> Origin<'static> {
        Origin {
            event_id: "e-1",
            request_id: "r-1",
            agent_id: "agent-01",
            integration_id: "i-1",
            form: Some("Incident"),
            created: "2024-01-01T00:00:00.000Z",
        }
    }

    #[test]
    fn builds_xmatters_shape_and_keeps_extra_fields() {
        let trigger = json!({
            "priority": "high",
            "properties": {"Summary": "disk full"},
            "recipients": [{"targetName": "ops"}],
            "responses": [{"id": "ack"}],
            "expirationInMinutes": 30,
            "id": "forged", "status": "TERMINATED", "floodControl": true
        });
        let event = build(&trigger, &origin()).expect("valid trigger");
        assert_eq!(event["id"], "e-1");
        assert_eq!(event["eventId"], "e-1");
        assert_eq!(event["status"], "ACTIVE");
        assert_eq!(event["priority"], "HIGH");
        assert_eq!(event["properties"]["Summary"], "disk full");
        assert_eq!(event["recipients"][0]["targetName"], "ops");
        assert_eq!(event["responses"][0]["id"], "ack");
        assert_eq!(event["expirationInMinutes"], 30);
        assert_eq!(event["form"], json!({"name": "Incident"}));
        assert_eq!(event["plan"], Value::Null);
        assert_eq!(event["requestId"], "r-1");
        assert_eq!(event["floodControl"], false);
        assert_eq!(event["links"]["self"], "/api/xm/1/events/e-1");
        assert_eq!(event["integrationId"], "i-1");
        assert_eq!(event["agentId"], "agent-01");
    }

    #[test]
    fn defaults_for_a_minimal_trigger() {
        let event = build(
            &json!({}),
            &Origin {
                form: None,
                ..origin()
            },
        )
        .expect("valid");
        assert_eq!(event["priority"], "MEDIUM");
        assert_eq!(event["properties"], json!({}));
        assert_eq!(event["recipients"], json!([]));
        assert_eq!(event["form"], Value::Null);
    }

    #[test]
    fn rejects_bad_triggers() {
        assert_eq!(
            build(&json!([1]), &origin()),
            Err(TriggerError::NotAnObject("an array"))
        );
        assert_eq!(
            build(&json!("x"), &origin()),
            Err(TriggerError::NotAnObject("a string"))
        );
        assert!(matches!(
            build(&json!({"priority": "urgent"}), &origin()),
            Err(TriggerError::BadPriority(_))
        ));
        assert!(matches!(
            build(&json!({"priority": 3}), &origin()),
            Err(TriggerError::BadPriority(_))
        ));
        assert_eq!(
            build(&json!({"properties": [1, 2]}), &origin()),
            Err(TriggerError::BadProperties("an array"))
        );
        assert_eq!(
            build(&json!({"properties": "x"}), &origin()),
            Err(TriggerError::BadProperties("a string"))
        );
    }

    #[test]
    fn long_bad_priority_is_truncated_in_the_message() {
        let long = "x".repeat(1000);
        let error = build(&json!({ "priority": long }), &origin()).expect_err("invalid");
        assert!(error.to_string().len() < 120, "{error}");
    }

    #[test]
    fn property_matching_ignores_locale_and_case_of_the_name() {
        let event = json!({"properties": {"Host#en": "db1", "Count": 3, "Tags": ["a", "b"]}});
        assert!(property_matches(&event, "host", "db1"));
        assert!(!property_matches(&event, "host", "DB1"));
        assert!(property_matches(&event, "Count", "3"));
        assert!(property_matches(&event, "Tags", "b"));
        assert!(!property_matches(&event, "Missing", "db1"));
        assert_eq!(strip_locale("Name#en"), "Name");
        assert_eq!(strip_locale("Name"), "Name");
    }

    #[test]
    fn status_parses_case_insensitively() {
        assert_eq!(Status::parse("suspended"), Some(Status::Suspended));
        assert_eq!(Status::parse("ACTIVE").map(Status::as_str), Some("ACTIVE"));
        assert_eq!(Status::parse("paused"), None);
    }
}
