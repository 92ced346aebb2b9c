//! Central frames as the agent's relay reads them: the first frame through its `welcome` check,
//! later ones through the protocol's `CentralFrame`.
//!
//! Invariants: nothing panics; a frame that parses re-encodes to the same frame; the welcome
//! check passes exactly for a `welcome` of this protocol version, whatever agent id it names.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::{CentralFrame, PROTOCOL_VERSION};

fuzz_target!(|text: &str| {
    let parsed = serde_json::from_str::<CentralFrame>(text);
    if let Ok(frame) = &parsed {
        let again = serde_json::from_str::<CentralFrame>(&frame.to_text()).expect("re-reads");
        assert_eq!(&again, frame);
    }
    let welcomed = agent::fuzzing::welcome(text, "fuzz-agent");
    let expected =
        matches!(parsed, Ok(CentralFrame::Welcome { version, .. }) if version == PROTOCOL_VERSION);
    assert_eq!(welcomed.is_ok(), expected, "{welcomed:?} for {text}");
    if let Err(reason) = welcomed {
        assert!(!reason.is_empty());
    }
});
