//! The `create_event` body check (`agent::worker::trigger_from_body`), run on every request of
//! the busiest path before the 202, and what the central makes of the frame the agent sends.
//!
//! Invariants: nothing panics; a body is accepted exactly when it is a JSON object whose
//! `properties` (if any) is an object, as a full JSON parser reads it; the accepted trigger
//! means the body (itself, or wrapped as `properties`); and the central stores the
//! `event.create` frame the agent builds from it: an accepted request can never be refused
//! downstream or poison the relay.
#![no_main]

use central::ws::fuzzing::{read_text_frame, Verdict};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|body: &[u8]| {
    let accepted = agent::worker::trigger_from_body(body);
    let parsed = serde_json::from_slice::<Value>(body);
    let trigger = match (accepted, parsed) {
        (Ok(trigger), Ok(value)) => {
            let Value::Object(object) = &value else {
                panic!("a non-object body was accepted: {value}");
            };
            let expected = match object.get("properties") {
                Some(Value::Object(_)) => value.clone(),
                Some(other) => panic!("a body with properties {other} was accepted"),
                None => serde_json::json!({ "properties": value }),
            };
            let read: Value = serde_json::from_str(&trigger).expect("the trigger is JSON");
            assert_eq!(read, expected);
            trigger
        }
        (Ok(trigger), Err(error)) => {
            panic!("accepted but not JSON to a full parser ({error}): {trigger}")
        }
        (Err(reason), Ok(value)) => {
            let properties_ok = value
                .get("properties")
                .is_none_or(|properties| properties.is_object());
            assert!(
                !value.is_object() || !properties_ok,
                "a valid object body was refused ({reason}): {value}"
            );
            return;
        }
        (Err(_), Err(_)) => return,
    };
    // The frame as the agent's store writes it: the trigger text embedded as it came.
    let frame = format!(
        r#"{{"type":"event.create","requestId":"r","index":0,"integrationId":"i","trigger":{trigger},"seq":7}}"#
    );
    match read_text_frame(&frame) {
        Verdict::Stored { seq: 7, event } => {
            serde_json::from_slice::<Value>(&event).expect("the stored event is JSON");
        }
        other => panic!("the central does not store what the agent accepted: {other:?}"),
    }
});
