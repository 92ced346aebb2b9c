//! The `create_event` body check (`integration::trigger::trigger_from_body`), run on every request of
//! the busiest path before the 202.
//!
//! Invariants: nothing panics; a body is accepted exactly when it is a JSON object whose
//! `properties` (if any) is an object and whose `priority` (then) is one the central takes, as a
//! full JSON parser reads it, and the trigger is within the shared limits
//! (`protocol::limits::check_json`); the accepted trigger means the body (itself, or wrapped as
//! `properties`). What the central makes of it is the `no_poison` target's concern.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// Whether the central takes this `priority` member (absent and null count as absent).
fn priority_ok(priority: Option<&Value>) -> bool {
    match priority {
        None | Some(Value::Null) => true,
        Some(Value::String(text)) => ["LOW", "MEDIUM", "HIGH"]
            .iter()
            .any(|known| known.eq_ignore_ascii_case(text)),
        Some(_) => false,
    }
}

fuzz_target!(|body: &[u8]| {
    let accepted = integration::trigger::trigger_from_body(body);
    let parsed = serde_json::from_slice::<Value>(body);
    match (accepted, parsed) {
        (Ok(trigger), Ok(value)) => {
            let Value::Object(object) = &value else {
                panic!("a non-object body was accepted: {value}");
            };
            let expected = match object.get("properties") {
                Some(Value::Object(_)) => {
                    assert!(
                        priority_ok(object.get("priority")),
                        "priority accepted: {value}"
                    );
                    value.clone()
                }
                Some(other) => panic!("a body with properties {other} was accepted"),
                None => serde_json::json!({ "properties": value }),
            };
            let read: Value = serde_json::from_str(&trigger).expect("the trigger is JSON");
            assert_eq!(read, expected);
            protocol::limits::check_json(&trigger).expect("the trigger is within the limits");
        }
        (Ok(trigger), Err(error)) => {
            panic!("accepted but not JSON to a full parser ({error}): {trigger}")
        }
        (Err(reason), Ok(value)) => {
            let Value::Object(object) = &value else {
                return;
            };
            let text = std::str::from_utf8(body).expect("JSON is UTF-8");
            let (shape_ok, trigger) = match object.get("properties") {
                Some(Value::Object(_)) => (priority_ok(object.get("priority")), text.to_owned()),
                Some(_) => (false, String::new()),
                None => (true, format!("{{\"properties\":{text}}}")),
            };
            assert!(
                !shape_ok || protocol::limits::check_json(&trigger).is_err(),
                "a valid object body within the limits was refused ({reason}): {value}"
            );
        }
        (Err(_), Err(_)) => {}
    }
});
