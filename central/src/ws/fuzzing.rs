//! The websocket reader's verdict on one text frame, for the fuzz targets in `fuzz/`.
//!
//! It forwards to the same private functions the connection loop uses ([`super::classify`], the
//! direct [`super::frame::Create`] reader, [`crate::event::check`] and the event builder) and
//! reports what the central would do with the frame. It deliberately does not touch a store or a
//! socket, and it is no API: it exists so the fuzzers reach the real code, not a copy of it.

use tokio_tungstenite::tungstenite::Message;

use crate::event;

/// What the central does with one text frame after `hello`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// An `event.create` whose trigger passed the check: it would be stored as `event` (JSON).
    Stored {
        /// The frame's seq, answered with an ack.
        seq: u64,
        /// The event the central would store.
        event: Vec<u8>,
    },
    /// Refused for this frame alone (`reject{retryable:false}`); the connection stays open.
    Rejected {
        /// The frame's seq.
        seq: u64,
        /// The reason sent to the agent.
        message: String,
    },
    /// Not answered at all (control frames, `activity`, `status`).
    Ignored,
    /// The connection is closed with this reason.
    Closed(String),
}

/// Classify `text` as the connection loop does after `hello`, then check and build its event.
pub fn read_text_frame(text: &str) -> Verdict {
    match super::classify(Message::text(text.to_owned())) {
        super::Inbound::Create(create) => match event::check(&create.trigger) {
            Ok(checked) => Verdict::Stored {
                seq: create.seq,
                event: checked.to_json(&event::Origin {
                    event_id: "00000000-0000-0000-0000-000000000000",
                    request_id: &create.request_id,
                    agent_id: "fuzz-agent",
                    integration_id: &create.integration_id,
                    form: create.form.as_deref(),
                    plan: create.plan.as_deref(),
                    flood_control: create.flood_control,
                    suppressed: None,
                    created: "1970-01-01T00:00:00Z",
                }),
            },
            Err(error) => Verdict::Rejected {
                seq: create.seq,
                message: error.to_string(),
            },
        },
        super::Inbound::Malformed { seq, message } => Verdict::Rejected { seq, message },
        super::Inbound::Ignore | super::Inbound::Activity(_) | super::Inbound::Status(_) => {
            Verdict::Ignored
        }
        super::Inbound::Closed => Verdict::Closed("closed by the agent".to_owned()),
        super::Inbound::Fatal(_, reason) => Verdict::Closed(reason),
    }
}

/// Whether the direct one-pass reader takes `text` as an `event.create`, and with which seq.
/// The fuzzers compare it with the protocol crate's types, which must agree.
pub fn direct_reader_seq(text: &str) -> Option<u64> {
    super::frame::Create::parse(text)
        .ok()
        .map(|create| create.seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CREATE: &str = r#"{"type":"event.create","seq":3,"requestId":"r","index":0,"integrationId":"i","trigger":{"properties":{"a":1}}}"#;

    #[test]
    fn a_valid_create_is_stored_and_read_directly() {
        match read_text_frame(CREATE) {
            Verdict::Stored { seq: 3, event } => {
                let event: serde_json::Value = serde_json::from_slice(&event).expect("event JSON");
                assert_eq!(event["properties"]["a"], 1);
            }
            other => panic!("not stored: {other:?}"),
        }
        assert_eq!(direct_reader_seq(CREATE), Some(3));
    }

    #[test]
    fn a_bad_trigger_is_rejected_and_garbage_closes() {
        let bad = CREATE.replace(r#"{"properties":{"a":1}}"#, r#"{"priority":"URGENT"}"#);
        assert!(matches!(
            read_text_frame(&bad),
            Verdict::Rejected { seq: 3, .. }
        ));
        assert!(matches!(read_text_frame("not json"), Verdict::Closed(_)));
        assert_eq!(direct_reader_seq("not json"), None);
    }
}
