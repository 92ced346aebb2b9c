//! Activity-stream entries: what the stream at `GET /api/xm/1/integrations/{id}/logs` shows of
//! one request (what came in, credentials already redacted and the body cut, and what the action
//! made of it).
//!
//! What it does not do: keep entries (each host stores and prunes its own) or decide a request's
//! later status (the host overlays where the request is now when it answers the stream).

use serde_json::{json, Map, Value};

use crate::request::InboundRequest;

/// Most request bytes copied into an activity-stream entry.
pub const ACTIVITY_BODY_BYTES: usize = 4096;

/// Most bytes of `http_trigger` outputs copied into an activity-stream entry (as JSON text).
const ACTIVITY_OUTPUT_BYTES: usize = 4 * ACTIVITY_BODY_BYTES;

/// The outputs as the activity entry shows them: whole when small, otherwise a note of their
/// size (they may be as large as the run's post budget, and the stream keeps many entries).
pub(crate) fn activity_outputs(outputs: Map<String, Value>) -> Value {
    let size = serde_json::to_string(&outputs).map_or(usize::MAX, |text| text.len());
    if size <= ACTIVITY_OUTPUT_BYTES {
        Value::Object(outputs)
    } else {
        json!({ "omitted": format!("{size} bytes of outputs; the activity stream keeps up to {ACTIVITY_OUTPUT_BYTES}") })
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
            principal: crate::request::PrincipalRecord {
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
