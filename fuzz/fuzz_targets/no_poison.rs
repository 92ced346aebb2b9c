//! No request can poison the relay: whatever the agent's `create_event` body check accepts (and
//! answers 202 for), the central's frame reader accepts and stores. A frame the central could
//! not read would be resent after every reconnect and hold up every event behind it.
//!
//! Invariants: nothing panics; the `event.create` frame the agent's store writes for an accepted
//! body (the trigger text embedded as it came) is stored by the central, with the trigger's
//! properties, never rejected and never a reason to close the connection. Numbers may differ in
//! their last bit: serde_json (without `float_roundtrip`) can read a re-written float one ulp off.
#![no_main]

use central::ws::fuzzing::{read_text_frame, Verdict};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|body: &[u8]| {
    let Ok(trigger) = integration::trigger::trigger_from_body(body) else {
        return;
    };
    // The frame as the agent's store writes it (`outbox_value_head` + `finish_outbox_value`).
    let frame = format!(
        r#"{{"type":"event.create","requestId":"r","index":0,"integrationId":"i","trigger":{trigger},"seq":7}}"#
    );
    match read_text_frame(&frame) {
        Verdict::Stored { seq: 7, event } => {
            let event: Value = serde_json::from_slice(&event).expect("the stored event is JSON");
            let trigger: Value = serde_json::from_str(&trigger).expect("the trigger is JSON");
            assert!(
                same(&event["properties"], &trigger["properties"]),
                "{event} from {trigger}"
            );
        }
        other => panic!("the central does not store what the agent accepted: {other:?}"),
    }
});

/// Equal JSON, with floats allowed to differ by rounding (see the module docs).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x != y => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => (x - y).abs() <= f64::EPSILON * 4.0 * x.abs().max(y.abs()),
            _ => false,
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}
