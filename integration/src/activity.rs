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
    let cut = body_cut(&request.body);
    render(
        request,
        &request.body[..cut],
        cut < request.body.len(),
        status,
        server::http_util::now_rfc3339(),
        details,
    )
}

/// The activity entry of a request that `render_details` completes, built only when someone asks
/// (see [`Activity`]). Keeps a copy of the request with the part of the body an entry shows.
pub fn deferred_activity(
    request: &InboundRequest,
    status: &'static str,
    render_details: impl FnOnce() -> Value + Send + 'static,
) -> Activity {
    let cut = body_cut(&request.body);
    let truncated = cut < request.body.len();
    let shown = InboundRequest {
        request_id: request.request_id.clone(),
        integration_id: request.integration_id.clone(),
        method: request.method.clone(),
        headers: request.headers.clone(),
        query: request.query.clone(),
        body: request.body[..cut].to_owned(),
        principal: request.principal.clone(),
        remote_address: request.remote_address.clone(),
        received_at: request.received_at.clone(),
    };
    let completed = server::http_util::now_rfc3339();
    Activity::deferred(move || {
        render(
            &shown,
            &shown.body,
            truncated,
            status,
            completed,
            render_details(),
        )
    })
}

/// Where an entry cuts the body: at most [`ACTIVITY_BODY_BYTES`], on a character boundary.
fn body_cut(body: &str) -> usize {
    let mut cut = ACTIVITY_BODY_BYTES.min(body.len());
    while !body.is_char_boundary(cut) {
        cut -= 1;
    }
    cut
}

fn render(
    request: &InboundRequest,
    body: &str,
    truncated: bool,
    status: &str,
    completed: String,
    details: Value,
) -> Value {
    let mut entry = Map::new();
    entry.insert("requestId".into(), json!(request.request_id));
    entry.insert("integrationId".into(), json!(request.integration_id));
    entry.insert("status".into(), json!(status));
    entry.insert("created".into(), json!(request.received_at));
    entry.insert("completed".into(), json!(completed));
    entry.insert("principal".into(), json!(request.principal));
    entry.insert(
        "request".into(),
        json!({
            "method": request.method,
            "headers": request.headers.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
            "parameters": request.query,
            "body": body,
            "bodyTruncated": truncated,
            "remoteAddress": request.remote_address,
        }),
    );
    if let Value::Object(details) = details {
        entry.extend(details);
    }
    Value::Object(entry)
}

/// An activity entry as a host buffers it: rendered to JSON only when first read or written.
/// Under load a host's buffer of newest entries pushes most entries out before anyone reads
/// them, and an entry never rendered costs neither its JSON nor the freeing of it.
pub struct Activity(Entry);

enum Entry {
    Ready(Value),
    Deferred(Box<dyn FnOnce() -> Value + Send>),
}

impl Activity {
    /// An entry rendered when first needed.
    pub fn deferred(render: impl FnOnce() -> Value + Send + 'static) -> Self {
        Self(Entry::Deferred(Box::new(render)))
    }

    /// The entry, rendered now if it was not yet.
    pub fn render(&mut self) -> &Value {
        if let Entry::Deferred(_) = self.0 {
            let Entry::Deferred(render) = std::mem::replace(&mut self.0, Entry::Ready(Value::Null))
            else {
                unreachable!("matched just above")
            };
            self.0 = Entry::Ready(render());
        }
        match &self.0 {
            Entry::Ready(value) => value,
            Entry::Deferred(_) => unreachable!("rendered just above"),
        }
    }

    /// The entry as JSON, rendered now if it was not yet.
    pub fn into_value(self) -> Value {
        match self.0 {
            Entry::Ready(value) => value,
            Entry::Deferred(render) => render(),
        }
    }
}

impl From<Value> for Activity {
    fn from(value: Value) -> Self {
        Self(Entry::Ready(value))
    }
}

impl std::fmt::Debug for Activity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Entry::Ready(value) => f.debug_tuple("Activity").field(value).finish(),
            Entry::Deferred(_) => f.write_str("Activity(<not rendered yet>)"),
        }
    }
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

    fn request(body: String) -> InboundRequest {
        InboundRequest {
            request_id: "r".into(),
            integration_id: "i".into(),
            method: "POST".into(),
            headers: vec![],
            query: String::new(),
            body,
            principal: crate::request::PrincipalRecord {
                user: "u".into(),
                method: "basic".into(),
            },
            remote_address: "127.0.0.1".into(),
            received_at: "now".into(),
        }
    }

    #[test]
    fn activity_truncates_on_a_char_boundary() {
        let request = request("é".repeat(ACTIVITY_BODY_BYTES));
        let entry = activity(&request, "QUEUED", json!({}));
        assert_eq!(entry["request"]["bodyTruncated"], json!(true));
        assert!(entry["request"]["body"].as_str().unwrap().len() <= ACTIVITY_BODY_BYTES);
    }

    /// A deferred entry renders nothing until asked, and then shows what an eager one shows
    /// (the completion time is taken when the entry is made, not when it is rendered).
    #[test]
    fn a_deferred_entry_renders_like_an_eager_one_when_asked() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        for body in ["short".to_owned(), "é".repeat(ACTIVITY_BODY_BYTES)] {
            let request = request(body);
            let rendered = Arc::new(AtomicBool::new(false));
            let flag = rendered.clone();
            let mut deferred = deferred_activity(&request, "QUEUED", move || {
                flag.store(true, Ordering::SeqCst);
                json!({"events": 1})
            });
            assert!(
                !rendered.load(Ordering::SeqCst),
                "rendered before it was asked for"
            );
            let mut eager = activity(&request, "QUEUED", json!({"events": 1}));
            let mut lazy = deferred.render().clone();
            assert!(rendered.load(Ordering::SeqCst));
            eager["completed"] = Value::Null;
            lazy["completed"] = Value::Null;
            assert_eq!(lazy, eager);
            assert_eq!(deferred.into_value()["events"], json!(1));
        }
    }
}
