//! `event.create` frames with the trigger kept as JSON text ([`serde_json::value::RawValue`]):
//! how both daemons write and read the frame on the hot path without building a value tree for
//! the trigger. The wire shape is the one of [`crate::AgentFrame::EventCreate`].
//!
//! What it does not do: check the trigger against the limits ([`crate::limits`]) or read any
//! other frame.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

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
/// and its trigger as the JSON text it came as.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventCreateText<'a> {
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
    /// See [`crate::EventCreate::trigger`].
    #[serde(borrow)]
    pub trigger: &'a RawValue,
    /// See [`crate::EventCreate::seq`].
    pub seq: u64,
}
