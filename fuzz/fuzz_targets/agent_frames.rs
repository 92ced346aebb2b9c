//! Agent frames as the central reads them after `hello` (`central::ws` classification, the
//! direct one-pass `event.create` reader and the trigger check).
//!
//! Invariants: nothing panics; the direct reader accepts a frame only when the protocol's types
//! read it as an `event.create` with the same seq; every frame the protocol's types read as an
//! `event.create` is answered for itself (stored or rejected, with its seq) and never drops the
//! connection; only `activity` and `status` frames go unanswered; what is stored is a JSON object
//! carrying the event's id.
#![no_main]

use central::ws::fuzzing::{direct_reader_seq, read_text_frame, Verdict};
use libfuzzer_sys::fuzz_target;
use protocol::AgentFrame;

fuzz_target!(|text: &str| {
    let by_protocol = match serde_json::from_str::<AgentFrame>(text) {
        Ok(AgentFrame::EventCreate(create)) => Some(create.seq),
        _ => None,
    };
    if let Some(seq) = direct_reader_seq(text) {
        assert_eq!(by_protocol, Some(seq), "read directly only: {text}");
    }
    match read_text_frame(text) {
        Verdict::Stored { seq, event } => {
            assert_eq!(by_protocol, Some(seq), "stored: {text}");
            let event: serde_json::Value =
                serde_json::from_slice(&event).expect("the stored event is JSON");
            assert!(event["id"].is_string(), "{event}");
        }
        Verdict::Rejected { seq, message } => {
            if let Some(expected) = by_protocol {
                assert_eq!(seq, expected, "{message}");
            }
            assert!(!message.is_empty());
        }
        Verdict::Ignored => assert!(
            matches!(
                serde_json::from_str::<AgentFrame>(text),
                Ok(AgentFrame::Activity { .. } | AgentFrame::Status(_))
            ),
            "a text frame other than activity or status was ignored: {text}"
        ),
        Verdict::Closed(reason) => {
            assert_eq!(
                by_protocol, None,
                "an event.create dropped the connection ({reason})"
            )
        }
    }
});
