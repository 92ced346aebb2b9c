//! Flow Designer HTTP triggers: how the `output` a trigger script fills becomes an event.
//!
//! In xMatters a Flow Designer HTTP trigger's script does not post events itself: it reads
//! `request` and sets `output['Name'] = value`, and the flow decides what to do with the outputs.
//! The agent has no flow canvas, so an `http_trigger` integration carries an [`EventMapping`]
//! (`[integrations.event]` in the agent's config): which event property each output fills, which
//! outputs hold the recipients and the priority, and which output, when true, means "no event".
//!
//! What it deliberately does not do: it runs no flow steps after the trigger (switches, custom
//! steps, HTTP steps), and it does not check property names against the form: the central does.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// How one `http_trigger` integration turns outputs into the event it creates.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventMapping {
    /// Event property name ← output name. Empty: every output becomes a property of its own name,
    /// except the outputs named by `recipients`, `priority` and `skip_if`.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// The output holding the recipients: a comma-separated string, an array of names, or an
    /// array of recipient objects (`{targetName: ...}`).
    pub recipients: Option<String>,
    /// The output holding the event priority (`LOW`, `MEDIUM`, `HIGH`, any letter case).
    pub priority: Option<String>,
    /// The output that, when true (`true`, `"true"`, `"yes"`, `"1"` or a non-zero number), means
    /// the request creates no event; a filter flag, as a flow's first switch step would test.
    pub skip_if: Option<String>,
}

/// What the outputs of one run amount to.
#[derive(Debug, Clone, PartialEq)]
pub enum FlowEvent {
    /// Create this event (the trigger object, as `form.post` would have received it).
    Create(Value),
    /// Create nothing: the named output said so.
    Skipped {
        /// The `skip_if` output.
        output: String,
    },
}

/// Whether an output value reads as "yes".
fn is_true(value: &Value) -> bool {
    match value {
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|n| n != 0.0),
        Value::String(s) => {
            let s = s.trim();
            s.eq_ignore_ascii_case("true") || s.eq_ignore_ascii_case("yes") || s == "1"
        }
        _ => false,
    }
}

/// Recipients in the shape the event API takes: `[{"targetName": ...}, ...]`.
fn recipients(value: &Value) -> Option<Value> {
    let target = |name: &str| {
        let name = name.trim();
        (!name.is_empty()).then(|| json!({ "targetName": name }))
    };
    let list: Vec<Value> = match value {
        Value::String(s) => s.split(',').filter_map(target).collect(),
        Value::Array(items) => items
            .iter()
            .filter_map(|item| match item {
                Value::String(s) => target(s),
                Value::Object(_) => Some(item.clone()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    (!list.is_empty()).then_some(Value::Array(list))
}

impl EventMapping {
    /// The event the outputs describe, or why there is none. Outputs the mapping names but the
    /// script did not set are left out of the event.
    pub fn event(&self, outputs: &Map<String, Value>) -> FlowEvent {
        if let Some(flag) = &self.skip_if {
            if outputs.get(flag).is_some_and(is_true) {
                return FlowEvent::Skipped {
                    output: flag.clone(),
                };
            }
        }
        let mut properties = Map::new();
        if self.properties.is_empty() {
            let special = [&self.recipients, &self.priority, &self.skip_if];
            for (name, value) in outputs {
                if !special.iter().any(|s| s.as_deref() == Some(name.as_str())) {
                    properties.insert(name.clone(), value.clone());
                }
            }
        } else {
            for (property, output) in &self.properties {
                if let Some(value) = outputs.get(output) {
                    properties.insert(property.clone(), value.clone());
                }
            }
        }
        let mut trigger = Map::new();
        trigger.insert("properties".into(), Value::Object(properties));
        let from = |name: &Option<String>| name.as_ref().and_then(|n| outputs.get(n));
        if let Some(list) = from(&self.recipients).and_then(recipients) {
            trigger.insert("recipients".into(), list);
        }
        if let Some(priority) = from(&self.priority).and_then(Value::as_str) {
            trigger.insert("priority".into(), json!(priority.trim().to_uppercase()));
        }
        FlowEvent::Create(Value::Object(trigger))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outputs(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap()
    }

    #[test]
    fn mapped_outputs_fill_properties_recipients_and_priority() {
        let mapping = EventMapping {
            properties: BTreeMap::from([
                ("Summary".to_owned(), "summary".to_owned()),
                ("Missing".to_owned(), "not set".to_owned()),
            ]),
            recipients: Some("who".into()),
            priority: Some("prio".into()),
            skip_if: None,
        };
        let event = mapping.event(&outputs(json!({
            "summary": "CPU high", "who": "ops, dba ,", "prio": "high", "extra": 1
        })));
        assert_eq!(
            event,
            FlowEvent::Create(json!({
                "properties": {"Summary": "CPU high"},
                "recipients": [{"targetName": "ops"}, {"targetName": "dba"}],
                "priority": "HIGH"
            }))
        );
    }

    #[test]
    fn without_a_property_table_every_other_output_is_a_property() {
        let mapping = EventMapping {
            recipients: Some("who".into()),
            skip_if: Some("skip".into()),
            ..EventMapping::default()
        };
        let event = mapping.event(&outputs(json!({
            "a": "x", "n": 3, "who": ["ops", {"targetName": "dba", "recipientType": "GROUP"}, 7],
            "skip": false
        })));
        assert_eq!(
            event,
            FlowEvent::Create(json!({
                "properties": {"a": "x", "n": 3},
                "recipients": [{"targetName": "ops"}, {"targetName": "dba", "recipientType": "GROUP"}]
            }))
        );
    }

    #[test]
    fn a_true_skip_flag_creates_no_event() {
        let mapping = EventMapping {
            skip_if: Some("skip".into()),
            ..EventMapping::default()
        };
        for yes in [
            json!(true),
            json!("TRUE"),
            json!("yes"),
            json!("1"),
            json!(2),
        ] {
            assert_eq!(
                mapping.event(&outputs(json!({ "skip": yes }))),
                FlowEvent::Skipped {
                    output: "skip".into()
                }
            );
        }
        for no in [
            json!(false),
            json!("false"),
            json!(""),
            json!(0),
            json!(null),
        ] {
            assert!(matches!(
                mapping.event(&outputs(json!({ "skip": no }))),
                FlowEvent::Create(_)
            ));
        }
    }
}
