//! `event.create` frames read and written in one pass, without building a value tree for the
//! trigger: [`EventCreateText`] takes the trigger as a type of the caller's choosing (the agent
//! writes a [`serde_json::value::RawValue`], the text it checked at ingress; the central reads its
//! own canonical form straight from the frame). The wire shape is the one of
//! [`crate::AgentFrame::EventCreate`].
//!
//! What it does not do: check the trigger against the limits ([`crate::limits`]) or read any
//! other frame.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// The `type` member of an `event.create` frame: it writes `"event.create"` and reads nothing
/// else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventCreateTag;

impl Serialize for EventCreateTag {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(EVENT_CREATE)
    }
}

impl<'de> Deserialize<'de> for EventCreateTag {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let tag = Cow::<'de, str>::deserialize(deserializer)?;
        if tag == EVENT_CREATE {
            Ok(EventCreateTag)
        } else {
            Err(serde::de::Error::custom("not an event.create frame"))
        }
    }
}

/// The value of an `event.create` frame's `type`.
pub const EVENT_CREATE: &str = "event.create";

/// One `event.create` frame, its strings borrowed from the text where they need no unescaping
/// and its trigger a `T` (`&RawValue` for the JSON text as it is).
///
/// Unknown members are refused (unlike [`crate::AgentFrame`], which skips them): serde skips an
/// unknown member without checking its numbers, so a frame the protocol's types refuse could be
/// taken here. A reader falls back to [`crate::AgentFrame`] for such frames; a member added to
/// [`crate::EventCreate`] belongs here too.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventCreateText<'a, T> {
    /// Always `event.create`.
    #[serde(rename = "type")]
    pub kind: EventCreateTag,
    /// See [`crate::EventCreate::request_id`].
    #[serde(borrow)]
    pub request_id: Cow<'a, str>,
    /// See [`crate::EventCreate::index`].
    pub index: u32,
    /// See [`crate::EventCreate::integration_id`].
    #[serde(borrow)]
    pub integration_id: Cow<'a, str>,
    /// See [`crate::EventCreate::form`].
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub form: Option<Cow<'a, str>>,
    /// See [`crate::EventCreate::plan`].
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub plan: Option<Cow<'a, str>>,
    /// See [`crate::EventCreate::sender`].
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub sender: Option<Cow<'a, str>>,
    /// See [`crate::EventCreate::flood_control`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub flood_control: bool,
    /// See [`crate::EventCreate::trigger`].
    pub trigger: T,
    /// See [`crate::EventCreate::seq`].
    pub seq: u64,
}

/// The frame as the agent writes it: the trigger as checked JSON text.
pub type EventCreateRaw<'a> = EventCreateText<'a, &'a serde_json::value::RawValue>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AgentFrame, EventCreate};
    use serde_json::value::RawValue;

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).expect("JSON")
    }

    #[test]
    fn a_written_frame_is_what_the_protocol_types_read() {
        let trigger = raw(r#"{"properties":{"a":"é\n"},"priority":"HIGH"}"#);
        let frame = EventCreateRaw {
            kind: EventCreateTag,
            request_id: "r-\"1".into(),
            index: 2,
            integration_id: "i".into(),
            form: Some("Form".into()),
            plan: Some("Plan".into()),
            sender: Some("svc".into()),
            flood_control: true,
            trigger: &trigger,
            seq: 9,
        };
        let text = serde_json::to_string(&frame).unwrap();
        let AgentFrame::EventCreate(read) = serde_json::from_str(&text).unwrap() else {
            panic!("not an event.create: {text}");
        };
        assert_eq!(
            read,
            EventCreate {
                seq: 9,
                request_id: "r-\"1".into(),
                index: 2,
                integration_id: "i".into(),
                form: Some("Form".into()),
                plan: Some("Plan".into()),
                sender: Some("svc".into()),
                flood_control: true,
                trigger: serde_json::from_str(trigger.get()).unwrap(),
            }
        );
    }

    #[test]
    fn a_frame_is_read_with_the_trigger_as_text_and_strings_borrowed() {
        let text = r#"{"type":"event.create","seq":3,"requestId":"r","index":0,"integrationId":"i","trigger":{"properties":{}}}"#;
        let frame: EventCreateRaw<'_> = serde_json::from_str(text).unwrap();
        assert_eq!(frame.trigger.get(), r#"{"properties":{}}"#);
        assert!(matches!(frame.request_id, Cow::Borrowed("r")));
        assert_eq!((frame.seq, frame.index, frame.form), (3, 0, None));
    }

    #[test]
    fn other_frames_and_unknown_members_are_refused() {
        for text in [
            r#"{"type":"hello","seq":3,"requestId":"r","index":0,"integrationId":"i","trigger":{}}"#,
            r#"{"type":"event.create","seq":3,"requestId":"r","index":0,"integrationId":"i","trigger":{},"x":1}"#,
            r#"{"type":"event.create","seq":3,"seq":4,"requestId":"r","index":0,"integrationId":"i","trigger":{}}"#,
            r#"{"type":"event.create","requestId":"r","index":0,"integrationId":"i","trigger":{}}"#,
        ] {
            assert!(
                serde_json::from_str::<EventCreateRaw<'_>>(text).is_err(),
                "{text}"
            );
        }
    }
}
